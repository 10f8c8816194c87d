/* The reference evaluator: the oracle every compiled result is checked against.
 * It is deliberately plain — one loop per op over multi-indices, float math in
 * double, integer math in 64 bits with explicit wrap-around — so that it is
 * obviously right rather than fast. Semantics that the op table leaves to the
 * implementation (integer division by zero, float->int saturation, NaN in
 * max/min) are defined here and codegen follows them. */
#include <math.h>
#include <string.h>
#include "ir/ir.h"
#include "runtime/tensor_impl.h"

static double getf(const kiln_tensor *t, int64_t i) { return kiln_tensor_get_f64(t, i); }

static int64_t geti(const kiln_tensor *t, int64_t i) {
  switch (t->dtype) {
  case KILN_I32: return ((const int32_t *)t->data)[i];
  case KILN_I64: return ((const int64_t *)t->data)[i];
  case KILN_BOOL: return ((const uint8_t *)t->data)[i];
  default: return (int64_t)getf(t, i);
  }
}

static void setf(kiln_tensor *t, int64_t i, double v) {
  if (t->dtype == KILN_F32) ((float *)t->data)[i] = (float)v;
  else ((double *)t->data)[i] = v;
}

/* Integers wrap to their width (two's complement), like the generated code. */
static void seti(kiln_tensor *t, int64_t i, int64_t v) {
  switch (t->dtype) {
  case KILN_I32: ((int32_t *)t->data)[i] = (int32_t)(uint32_t)(uint64_t)v; break;
  case KILN_I64: ((int64_t *)t->data)[i] = v; break;
  case KILN_BOOL: ((uint8_t *)t->data)[i] = v != 0; break;
  default: setf(t, i, (double)v);
  }
}

/* Stores a double (a fill or pad value) into any dtype, converting like a cast. */
static void set_value(kiln_tensor *t, int64_t i, double v) {
  if (kiln_dtype_is_float(t->dtype)) setf(t, i, v);
  else seti(t, i, kiln_dtype_is_int(t->dtype) ? kiln_float_to_int(v, t->dtype) : v != 0);
}

static int64_t wrap_add(int64_t a, int64_t b) { return (int64_t)((uint64_t)a + (uint64_t)b); }
static int64_t wrap_sub(int64_t a, int64_t b) { return (int64_t)((uint64_t)a - (uint64_t)b); }
static int64_t wrap_mul(int64_t a, int64_t b) { return (int64_t)((uint64_t)a * (uint64_t)b); }
static int64_t int_div(int64_t a, int64_t b, kiln_dtype t) {
  if (b == 0) return 0;
  if (b == -1) return wrap_sub(0, a); /* INT_MIN / -1 wraps instead of trapping */
  (void)t;
  return a / b;
}

static double unary_f(kiln_op op, double x) {
  switch (op) {
  case KILN_OP_NEG: return -x;
  case KILN_OP_ABS: return fabs(x);
  case KILN_OP_EXP: return exp(x);
  case KILN_OP_LOG: return log(x);
  case KILN_OP_SQRT: return sqrt(x);
  case KILN_OP_RSQRT: return 1.0 / sqrt(x);
  case KILN_OP_TANH: return tanh(x);
  case KILN_OP_SIGMOID: return 1.0 / (1.0 + exp(-x));
  case KILN_OP_RELU: return x > 0 ? x : 0.0;
  case KILN_OP_SIN: return sin(x);
  case KILN_OP_COS: return cos(x);
  case KILN_OP_FLOOR: return floor(x);
  case KILN_OP_CEIL: return ceil(x);
  case KILN_OP_SIGN: return x > 0 ? 1.0 : x < 0 ? -1.0 : x;
  default: KILN_ASSERT(!"not a float unary op"); return 0;
  }
}

static int64_t unary_i(kiln_op op, int64_t x) {
  switch (op) {
  case KILN_OP_NEG: return wrap_sub(0, x);
  case KILN_OP_ABS: return x < 0 ? wrap_sub(0, x) : x;
  case KILN_OP_RELU: return x > 0 ? x : 0;
  case KILN_OP_SIGN: return (x > 0) - (x < 0);
  case KILN_OP_NOT: return !x;
  default: KILN_ASSERT(!"not an integer unary op"); return 0;
  }
}

static double binary_f(kiln_op op, double a, double b) {
  switch (op) {
  case KILN_OP_ADD: return a + b;
  case KILN_OP_SUB: return a - b;
  case KILN_OP_MUL: return a * b;
  case KILN_OP_DIV: return a / b;
  case KILN_OP_POW: return pow(a, b);
  case KILN_OP_MAX: return fmax(a, b);
  case KILN_OP_MIN: return fmin(a, b);
  case KILN_OP_EQUAL: return a == b;
  case KILN_OP_LESS: return a < b;
  case KILN_OP_GREATER: return a > b;
  default: KILN_ASSERT(!"not a float binary op"); return 0;
  }
}

static int64_t binary_i(kiln_op op, int64_t a, int64_t b, kiln_dtype t) {
  switch (op) {
  case KILN_OP_ADD: return wrap_add(a, b);
  case KILN_OP_SUB: return wrap_sub(a, b);
  case KILN_OP_MUL: return wrap_mul(a, b);
  case KILN_OP_DIV: return int_div(a, b, t);
  case KILN_OP_MAX: return a > b ? a : b;
  case KILN_OP_MIN: return a < b ? a : b;
  case KILN_OP_EQUAL: return a == b;
  case KILN_OP_LESS: return a < b;
  case KILN_OP_GREATER: return a > b;
  case KILN_OP_AND: return a && b;
  case KILN_OP_OR: return a || b;
  default: KILN_ASSERT(!"not an integer binary op"); return 0;
  }
}

static void unravel(int64_t i, int rank, const int64_t *dims, int64_t *idx) {
  for (int d = rank - 1; d >= 0; d--) {
    idx[d] = dims[d] ? i % dims[d] : 0;
    i = dims[d] ? i / dims[d] : 0;
  }
}

static void copy_elem(kiln_tensor *o, int64_t oi, const kiln_tensor *x, int64_t xi) {
  size_t es = kiln_dtype_size(o->dtype);
  memcpy((char *)o->data + (size_t)oi * es, (const char *)x->data + (size_t)xi * es, es);
}

typedef struct {
  const kiln_graph *g;
  const kiln_node *n;
  kiln_tensor *out;
  kiln_tensor *const *in; /* input values of this node */
} ev;

static void eval_source(ev *e) {
  const kiln_node *n = e->n;
  kiln_tensor *o = e->out;
  switch ((kiln_op)n->op) {
  case KILN_OP_CONST:
    if (n->data) {
      memcpy(o->data, n->data, n->nbytes);
    } else {
      double v = kiln_attr_float(n, KILN_ATTR_VALUE, 0);
      for (int64_t i = 0; i < o->numel; i++) set_value(o, i, v);
    }
    return;
  case KILN_OP_IOTA: {
    int64_t axis = kiln_attr_int(n, KILN_ATTR_AXIS, 0), idx[KILN_MAX_RANK];
    for (int64_t i = 0; i < o->numel; i++) {
      unravel(i, o->rank, o->dims, idx);
      if (kiln_dtype_is_float(o->dtype)) setf(o, i, (double)idx[axis]);
      else seti(o, i, idx[axis]);
    }
    return;
  }
  case KILN_OP_RNG_UNIFORM:
  case KILN_OP_RNG_NORMAL: {
    uint64_t seed = kiln_rng_stream((uint64_t)kiln_attr_int(n, KILN_ATTR_SEED, 0), geti(e->in[0], 0));
    double lo = kiln_attr_float(n, KILN_ATTR_LOW, 0), hi = kiln_attr_float(n, KILN_ATTR_HIGH, 1);
    for (int64_t i = 0; i < o->numel; i++) {
      double v;
      if (n->op == KILN_OP_RNG_UNIFORM) {
        v = lo + (hi - lo) * kiln_rng_uniform01(seed, (uint64_t)i);
      } else {
        double u1 = kiln_rng_uniform01(seed, 2 * (uint64_t)i), u2 = kiln_rng_uniform01(seed, 2 * (uint64_t)i + 1);
        v = lo + hi * (sqrt(-2.0 * log(1.0 - u1)) * cos(6.283185307179586 * u2));
      }
      setf(o, i, v);
    }
    return;
  }
  default: KILN_ASSERT(!"not a source");
  }
}

static void eval_elementwise(ev *e) {
  kiln_op op = (kiln_op)e->n->op;
  kiln_tensor *o = e->out;
  const kiln_tensor *a = e->in[0];
  if (op == KILN_OP_SELECT) {
    for (int64_t i = 0; i < o->numel; i++) copy_elem(o, i, geti(a, i) ? e->in[1] : e->in[2], i);
    return;
  }
  if (op == KILN_OP_CAST) {
    for (int64_t i = 0; i < o->numel; i++) {
      if (o->dtype == KILN_BOOL) seti(o, i, kiln_dtype_is_float(a->dtype) ? getf(a, i) != 0 : geti(a, i) != 0);
      else if (kiln_dtype_is_float(o->dtype)) setf(o, i, getf(a, i));
      else if (kiln_dtype_is_float(a->dtype)) seti(o, i, kiln_float_to_int(getf(a, i), o->dtype));
      else seti(o, i, geti(a, i));
    }
    return;
  }
  bool fl = kiln_dtype_is_float(a->dtype);
  for (int64_t i = 0; i < o->numel; i++) {
    if (e->n->ninputs == 1) {
      if (fl) setf(o, i, unary_f(op, getf(a, i)));
      else seti(o, i, unary_i(op, geti(a, i)));
    } else if (fl) {
      double r = binary_f(op, getf(a, i), getf(e->in[1], i));
      if (o->dtype == KILN_BOOL) seti(o, i, r != 0);
      else setf(o, i, r);
    } else {
      seti(o, i, binary_i(op, geti(a, i), geti(e->in[1], i), a->dtype));
    }
  }
}

static kiln_status eval_reduce(ev *e) {
  const kiln_node *n = e->n;
  const kiln_tensor *x = e->in[0];
  kiln_tensor *o = e->out;
  bool red[KILN_MAX_RANK] = {0};
  int64_t axes[KILN_MAX_RANK];
  if (n->op == KILN_OP_ARGMAX) {
    red[kiln_attr_int(n, KILN_ATTR_AXIS, 0)] = true;
  } else {
    int na = kiln_attr_ints(n, KILN_ATTR_AXES, axes);
    for (int i = 0; i < na; i++) red[axes[i]] = true;
  }
  /* Output index of an input index: drop (or zero) the reduced dims. */
  int64_t kept_dims[KILN_MAX_RANK], kst[KILN_MAX_RANK];
  int kr = 0;
  for (int d = 0; d < x->rank; d++) kept_dims[kr++] = red[d] ? 1 : x->dims[d];
  kiln_strides(kr, kept_dims, kst);
  int64_t count = 1;
  for (int d = 0; d < x->rank; d++)
    if (red[d]) count *= x->dims[d];
  bool fl = kiln_dtype_is_float(x->dtype);
  double *accf = calloc((size_t)o->numel + 1, sizeof(double));
  int64_t *acci = calloc((size_t)o->numel + 1, sizeof(int64_t));
  int64_t *arg = calloc((size_t)o->numel + 1, sizeof(int64_t));
  bool *seen = calloc((size_t)o->numel + 1, 1);
  if (!accf || !acci || !arg || !seen) {
    free(accf), free(acci), free(arg), free(seen);
    return kiln_set_error(KILN_ERR_NOMEM, "evaluate: out of memory reducing %s", kiln_ops[n->op].name);
  }
  kiln_op op = (kiln_op)n->op;
  int64_t imin = x->dtype == KILN_I32 ? INT32_MIN : INT64_MIN, imax = x->dtype == KILN_I32 ? INT32_MAX : INT64_MAX;
  for (int64_t j = 0; j < o->numel; j++) {
    accf[j] = op == KILN_OP_REDUCE_MAX || op == KILN_OP_ARGMAX ? -INFINITY : op == KILN_OP_REDUCE_MIN ? INFINITY : 0;
    acci[j] = op == KILN_OP_REDUCE_MAX || op == KILN_OP_ARGMAX ? imin : op == KILN_OP_REDUCE_MIN ? imax : 0;
    arg[j] = 0;
  }
  int64_t idx[KILN_MAX_RANK], redpos[KILN_MAX_RANK];
  for (int64_t i = 0; i < x->numel; i++) {
    unravel(i, x->rank, x->dims, idx);
    int64_t j = 0;
    for (int d = 0; d < x->rank; d++) {
      redpos[d] = idx[d];
      if (!red[d]) j += idx[d] * kst[d];
    }
    double vf = fl ? getf(x, i) : 0;
    int64_t vi = fl ? 0 : geti(x, i);
    switch (op) {
    case KILN_OP_REDUCE_SUM:
    case KILN_OP_REDUCE_MEAN:
      if (fl) accf[j] += vf;
      else acci[j] = wrap_add(acci[j], vi);
      break;
    case KILN_OP_REDUCE_MAX:
      if (fl) accf[j] = fmax(accf[j], vf);
      else acci[j] = vi > acci[j] ? vi : acci[j];
      break;
    case KILN_OP_REDUCE_MIN:
      if (fl) accf[j] = fmin(accf[j], vf);
      else acci[j] = vi < acci[j] ? vi : acci[j];
      break;
    default: { /* ARGMAX: strictly greater keeps the first maximum */
      int64_t axis = kiln_attr_int(n, KILN_ATTR_AXIS, 0);
      bool better = fl ? (!seen[j] || vf > accf[j]) : (!seen[j] || vi > acci[j]);
      if (better) {
        accf[j] = vf;
        acci[j] = vi;
        arg[j] = redpos[axis];
      }
      seen[j] = true;
    }
    }
  }
  for (int64_t j = 0; j < o->numel; j++) {
    if (op == KILN_OP_ARGMAX) seti(o, j, arg[j]);
    else if (op == KILN_OP_REDUCE_MEAN) {
      if (fl) setf(o, j, accf[j] / (double)count);
      else seti(o, j, int_div(acci[j], count, x->dtype));
    } else if (fl) setf(o, j, accf[j]);
    else seti(o, j, acci[j]);
  }
  free(accf);
  free(acci);
  free(arg);
  free(seen);
  return KILN_OK;
}

static void eval_matmul(ev *e) {
  const kiln_tensor *a = e->in[0], *b = e->in[1];
  kiln_tensor *o = e->out;
  int r = a->rank;
  bool ta = kiln_attr_int(e->n, KILN_ATTR_TRANSPOSE_A, 0), tb = kiln_attr_int(e->n, KILN_ATTR_TRANSPOSE_B, 0);
  int64_t M = o->dims[r - 2], N = o->dims[r - 1], K = a->dims[ta ? r - 2 : r - 1];
  if (!M || !N) return;
  int64_t batch = kiln_shape_numel(r - 2, o->dims);
  bool fl = kiln_dtype_is_float(o->dtype);
  for (int64_t bi = 0; bi < batch; bi++)
    for (int64_t i = 0; i < M; i++)
      for (int64_t j = 0; j < N; j++) {
        double sf = 0;
        int64_t si = 0;
        for (int64_t k = 0; k < K; k++) {
          int64_t ai = bi * M * K + (ta ? k * M + i : i * K + k);
          int64_t bj = bi * K * N + (tb ? j * K + k : k * N + j);
          if (fl) sf += getf(a, ai) * getf(b, bj);
          else si = wrap_add(si, wrap_mul(geti(a, ai), geti(b, bj)));
        }
        int64_t oi = (bi * M + i) * N + j;
        if (fl) setf(o, oi, sf);
        else seti(o, oi, si);
      }
}

static void eval_window(ev *e) {
  const kiln_node *n = e->n;
  const kiln_tensor *x = e->in[0];
  kiln_tensor *o = e->out;
  int64_t s[2], d[2] = {1, 1}, p[4], k[2];
  kiln_attr_ints(n, KILN_ATTR_STRIDES, s);
  kiln_attr_ints(n, KILN_ATTR_PADS, p);
  bool conv = n->op == KILN_OP_CONV2D;
  const kiln_tensor *w = conv ? e->in[1] : NULL;
  int64_t groups = 1;
  if (conv) {
    kiln_attr_ints(n, KILN_ATTR_DILATIONS, d);
    k[0] = w->dims[0];
    k[1] = w->dims[1];
    groups = kiln_attr_int(n, KILN_ATTR_GROUPS, 1);
  } else {
    kiln_attr_ints(n, KILN_ATTR_WINDOW, k);
  }
  int64_t N = x->dims[0], H = x->dims[1], W = x->dims[2], C = x->dims[3];
  int64_t OH = o->dims[1], OW = o->dims[2], OC = o->dims[3];
  int64_t icg = conv ? w->dims[2] : 1, ocg = OC / groups;
  for (int64_t b = 0; b < N; b++)
    for (int64_t oh = 0; oh < OH; oh++)
      for (int64_t ow = 0; ow < OW; ow++)
        for (int64_t oc = 0; oc < OC; oc++) {
          double acc = n->op == KILN_OP_MAX_POOL2D ? -INFINITY : 0;
          int64_t cnt = 0;
          for (int64_t kh = 0; kh < k[0]; kh++)
            for (int64_t kw = 0; kw < k[1]; kw++) {
              int64_t ih = oh * s[0] + kh * d[0] - p[0], iw = ow * s[1] + kw * d[1] - p[1];
              if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
              int64_t base = ((b * H + ih) * W + iw) * C;
              if (conv) {
                int64_t g = oc / ocg;
                for (int64_t ic = 0; ic < icg; ic++)
                  acc += getf(x, base + g * icg + ic) * getf(w, ((kh * k[1] + kw) * icg + ic) * OC + oc);
              } else if (n->op == KILN_OP_MAX_POOL2D) {
                acc = fmax(acc, getf(x, base + oc));
              } else {
                acc += getf(x, base + oc);
              }
              cnt++;
            }
          if (n->op == KILN_OP_AVG_POOL2D) acc /= (double)cnt;
          setf(o, ((b * OH + oh) * OW + ow) * OC + oc, acc);
        }
}

/* dw[kh, kw, ic, oc] = sum over (b, oh, ow) of x[b, ih, iw, g*icg + ic] * dy[b, oh, ow, oc]. */
static void eval_conv_filter_grad(ev *e) {
  const kiln_node *n = e->n;
  const kiln_tensor *x = e->in[0], *dy = e->in[1];
  kiln_tensor *o = e->out;
  int64_t s[2], d[2], p[4];
  kiln_attr_ints(n, KILN_ATTR_STRIDES, s);
  kiln_attr_ints(n, KILN_ATTR_DILATIONS, d);
  kiln_attr_ints(n, KILN_ATTR_PADS, p);
  int64_t H = x->dims[1], W = x->dims[2], C = x->dims[3], OH = dy->dims[1], OW = dy->dims[2], OC = dy->dims[3];
  int64_t KH = o->dims[0], KW = o->dims[1], icg = o->dims[2], ocg = OC / kiln_attr_int(n, KILN_ATTR_GROUPS, 1);
  for (int64_t kh = 0; kh < KH; kh++)
    for (int64_t kw = 0; kw < KW; kw++)
      for (int64_t ic = 0; ic < icg; ic++)
        for (int64_t oc = 0; oc < OC; oc++) {
          double acc = 0;
          for (int64_t b = 0; b < x->dims[0]; b++)
            for (int64_t oh = 0; oh < OH; oh++)
              for (int64_t ow = 0; ow < OW; ow++) {
                int64_t ih = oh * s[0] + kh * d[0] - p[0], iw = ow * s[1] + kw * d[1] - p[1];
                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                acc += getf(x, ((b * H + ih) * W + iw) * C + oc / ocg * icg + ic) * getf(dy, ((b * OH + oh) * OW + ow) * OC + oc);
              }
          setf(o, ((kh * KW + kw) * icg + ic) * OC + oc, acc);
        }
}

/* Each window's dy goes to the first of its taps (row-major, padding taps being
 * -inf) equal to its maximum; a padding tap's share is dropped. */
static void eval_max_pool_grad(ev *e) {
  const kiln_node *n = e->n;
  const kiln_tensor *x = e->in[0], *dy = e->in[1];
  kiln_tensor *o = e->out;
  int64_t s[2], p[4], k[2];
  kiln_attr_ints(n, KILN_ATTR_STRIDES, s);
  kiln_attr_ints(n, KILN_ATTR_PADS, p);
  kiln_attr_ints(n, KILN_ATTR_WINDOW, k);
  int64_t H = x->dims[1], W = x->dims[2], C = x->dims[3], OH = dy->dims[1], OW = dy->dims[2];
  for (int64_t i = 0; i < kiln_shape_numel(4, o->dims); i++) setf(o, i, 0);
  for (int64_t b = 0; b < x->dims[0]; b++)
    for (int64_t oh = 0; oh < OH; oh++)
      for (int64_t ow = 0; ow < OW; ow++)
        for (int64_t c = 0; c < C; c++) {
          double m = -INFINITY;
          for (int64_t kh = 0; kh < k[0]; kh++)
            for (int64_t kw = 0; kw < k[1]; kw++) {
              int64_t ih = oh * s[0] + kh - p[0], iw = ow * s[1] + kw - p[1];
              if (ih >= 0 && ih < H && iw >= 0 && iw < W) m = fmax(m, getf(x, ((b * H + ih) * W + iw) * C + c));
            }
          for (int64_t t = 0; t < k[0] * k[1]; t++) {
            int64_t ih = oh * s[0] + t / k[1] - p[0], iw = ow * s[1] + t % k[1] - p[1];
            bool in = ih >= 0 && ih < H && iw >= 0 && iw < W;
            if ((in ? getf(x, ((b * H + ih) * W + iw) * C + c) : -INFINITY) != m) continue;
            if (in) {
              int64_t i = ((b * H + ih) * W + iw) * C + c;
              setf(o, i, getf(o, i) + getf(dy, ((b * OH + oh) * OW + ow) * C + c));
            }
            break;
          }
        }
}

/* Offset (strides st) of position idx of a slice starting at first with the given steps. */
static int64_t strided_offset(int rank, const int64_t *idx, const int64_t *first, const int64_t *step, const int64_t *st) {
  int64_t off = 0;
  for (int d = 0; d < rank; d++) off += (first[d] + idx[d] * step[d]) * st[d];
  return off;
}

static void eval_movement(ev *e) {
  const kiln_node *n = e->n;
  kiln_tensor *o = e->out;
  const kiln_tensor *x = e->in[0];
  int64_t idx[KILN_MAX_RANK], xst[KILN_MAX_RANK], a[KILN_MAX_RANK], c[KILN_MAX_RANK];
  kiln_strides(x->rank, x->dims, xst);
  switch ((kiln_op)n->op) {
  case KILN_OP_RESHAPE:
    memcpy(o->data, x->data, o->nbytes);
    return;
  case KILN_OP_TRANSPOSE: {
    /* constant folding moves every weight of an OIHW model through here */
    kiln_attr_ints(n, KILN_ATTR_PERM, a);
    int64_t step[KILN_MAX_RANK];
    for (int d = 0; d < o->rank; d++) step[d] = xst[a[d]];
    kiln_permute_copy(o->data, x->data, kiln_dtype_size(o->dtype), o->rank, o->dims, step);
    return;
  }
  case KILN_OP_BROADCAST_TO: {
    int64_t step[KILN_MAX_RANK];
    for (int od = 0; od < o->rank; od++) {
      int d = od - (o->rank - x->rank);
      step[od] = d < 0 || x->dims[d] == 1 ? 0 : xst[d];
    }
    kiln_permute_copy(o->data, x->data, kiln_dtype_size(o->dtype), o->rank, o->dims, step);
    return;
  }
  case KILN_OP_CONCAT: {
    int64_t axis = kiln_attr_int(n, KILN_ATTR_AXIS, 0), off = 0;
    for (uint32_t k = 0; k < n->ninputs; k++) {
      const kiln_tensor *y = e->in[k];
      int64_t ost[KILN_MAX_RANK];
      kiln_strides(o->rank, o->dims, ost);
      for (int64_t i = 0; i < y->numel; i++) {
        unravel(i, y->rank, y->dims, idx);
        idx[axis] += off;
        int64_t oi = 0;
        for (int d = 0; d < o->rank; d++) oi += idx[d] * ost[d];
        copy_elem(o, oi, y, i);
      }
      off += y->dims[axis];
    }
    return;
  }
  case KILN_OP_SLICE:
    kiln_slice_map(n, x->rank, x->dims, a, c);
    for (int64_t i = 0; i < o->numel; i++) {
      unravel(i, o->rank, o->dims, idx);
      copy_elem(o, i, x, strided_offset(o->rank, idx, a, c, xst));
    }
    return;
  case KILN_OP_PAD: {
    kiln_attr_ints(n, KILN_ATTR_PADS_LO, a);
    double v = kiln_attr_float(n, KILN_ATTR_VALUE, 0);
    for (int64_t i = 0; i < o->numel; i++) {
      unravel(i, o->rank, o->dims, idx);
      int64_t xi = 0;
      bool inside = true;
      for (int d = 0; d < o->rank; d++) {
        int64_t q = idx[d] - a[d];
        inside &= q >= 0 && q < x->dims[d];
        xi += q * xst[d];
      }
      if (inside) copy_elem(o, i, x, xi);
      else set_value(o, i, v);
    }
    return;
  }
  default: KILN_ASSERT(!"not a movement op");
  }
}

/* Gather and scatter_add address a tensor of shape dims (strides st) at position idx of their
 * output / updates: dim `axis` comes from the indices tensor at idx[axis..], the others from
 * idx. A bad index is reported instead of read or written out of bounds. */
static kiln_status indexed_offset(ev *e, const kiln_tensor *ix, const int64_t *idx, int64_t axis, int rank,
                                  const int64_t *dims, const int64_t *st, int64_t *q) {
  int64_t ii = 0, ist[KILN_MAX_RANK];
  kiln_strides(ix->rank, ix->dims, ist);
  for (int d = 0; d < ix->rank; d++) ii += idx[axis + d] * ist[d];
  int64_t v = geti(ix, ii);
  if (v < 0) v += dims[axis];
  if (v < 0 || v >= dims[axis])
    return kiln_set_error(KILN_ERR_RUNTIME, "%s (node %%%u): index %lld is out of range for axis %lld of size %lld",
                          kiln_ops[e->n->op].name, (unsigned)(e->n - e->g->nodes), (long long)geti(ix, ii),
                          (long long)axis, (long long)dims[axis]);
  *q = v * st[axis];
  for (int d = 0; d < axis; d++) *q += idx[d] * st[d];
  for (int d = (int)axis + 1; d < rank; d++) *q += idx[d + ix->rank - 1] * st[d];
  return KILN_OK;
}

static kiln_status eval_gather(ev *e) {
  const kiln_tensor *x = e->in[0], *ix = e->in[1];
  kiln_tensor *o = e->out;
  int64_t axis = kiln_attr_int(e->n, KILN_ATTR_AXIS, 0), idx[KILN_MAX_RANK], xst[KILN_MAX_RANK], q;
  kiln_strides(x->rank, x->dims, xst);
  for (int64_t i = 0; i < o->numel; i++) {
    unravel(i, o->rank, o->dims, idx);
    kiln_status st = indexed_offset(e, ix, idx, axis, x->rank, x->dims, xst, &q);
    if (st != KILN_OK) return st;
    copy_elem(o, i, x, q);
  }
  return KILN_OK;
}

/* Output starts as zeros (kiln_tensor_new); slice's index map, storing instead of loading. */
static void eval_unslice(ev *e) {
  const kiln_tensor *x = e->in[0];
  kiln_tensor *o = e->out;
  int64_t idx[KILN_MAX_RANK], ost[KILN_MAX_RANK], first[KILN_MAX_RANK], step[KILN_MAX_RANK];
  kiln_strides(o->rank, o->dims, ost);
  kiln_slice_map(e->n, o->rank, o->dims, first, step);
  for (int64_t i = 0; i < x->numel; i++) {
    unravel(i, x->rank, x->dims, idx);
    copy_elem(o, strided_offset(o->rank, idx, first, step, ost), x, i);
  }
}

static kiln_status eval_scatter_add(ev *e) {
  const kiln_tensor *ix = e->in[0], *u = e->in[1];
  kiln_tensor *o = e->out;
  int64_t axis = kiln_attr_int(e->n, KILN_ATTR_AXIS, 0), idx[KILN_MAX_RANK], ost[KILN_MAX_RANK], q;
  kiln_strides(o->rank, o->dims, ost);
  for (int64_t i = 0; i < u->numel; i++) {
    unravel(i, u->rank, u->dims, idx);
    kiln_status st = indexed_offset(e, ix, idx, axis, o->rank, o->dims, ost, &q);
    if (st != KILN_OK) return st;
    if (kiln_dtype_is_float(o->dtype)) setf(o, q, getf(o, q) + getf(u, i));
    else seti(o, q, wrap_add(geti(o, q), geti(u, i)));
  }
  return KILN_OK;
}

static void eval_one_hot(ev *e) {
  const kiln_tensor *ix = e->in[0];
  kiln_tensor *o = e->out;
  int64_t depth = o->dims[o->rank - 1];
  for (int64_t i = 0; i < o->numel; i++) {
    int64_t v = geti(ix, i / (depth ? depth : 1)), hot = (v == i % depth);
    if (kiln_dtype_is_float(o->dtype)) setf(o, i, (double)hot);
    else seti(o, i, hot);
  }
}

kiln_status kiln_check_inputs(const kiln_graph *g, const kiln_tensor *const *inputs, size_t nin, int64_t *batch) {
  uint32_t np = kiln_graph_num_params(g);
  *batch = -1;
  if (nin != np) return kiln_set_error(KILN_ERR_INVALID, "the graph has %u inputs, %zu given", np, nin);
  if (nin && !inputs) return kiln_set_error(KILN_ERR_INVALID, "the inputs array is NULL");
  size_t k = 0;
  for (uint32_t i = 0; i < g->nnodes; i++) {
    const kiln_node *n = &g->nodes[i];
    if (n->op != KILN_OP_PARAM) continue;
    const kiln_tensor *t = inputs[k++];
    char want[128], got[128];
    kiln_shape_str(want, sizeof want, n->rank, n->dims);
    if (!t) return kiln_set_error(KILN_ERR_INVALID, "input '%s' is NULL", n->name);
    kiln_shape_str(got, sizeof got, t->rank, t->dims);
    if (t->dtype != n->dtype)
      return kiln_set_error(KILN_ERR_INVALID, "input '%s': expected %s%s, got %s%s", n->name,
                            kiln_dtype_name(n->dtype), want, kiln_dtype_name(t->dtype), got);
    bool ok = t->rank == n->rank;
    for (int d = 0; ok && d < n->rank; d++) {
      if (n->dims[d] >= 0) ok = n->dims[d] == t->dims[d];
      else if (*batch < 0) *batch = t->dims[d];
      else ok = *batch == t->dims[d];
    }
    if (!ok)
      return kiln_set_error(KILN_ERR_INVALID, "input '%s': expected shape %s%s, got %s", n->name, want,
                            *batch >= 0 ? " (? = the batch size, the same in every input)" : "", got);
  }
  return KILN_OK;
}

kiln_status kiln_eval_graph(const kiln_graph *g, const kiln_tensor *const *inputs, size_t nin, kiln_tensor **outputs,
                            size_t nout) {
  kiln_tensor **vals = calloc(g->nnodes + 1, sizeof *vals);
  if (!vals) return kiln_set_error(KILN_ERR_NOMEM, "evaluate: out of memory");
  kiln_status st = KILN_OK;
  size_t k = 0;
  (void)nin;
  for (uint32_t i = 0; i < g->nnodes && st == KILN_OK; i++) {
    const kiln_node *n = &g->nodes[i];
    /* constant data and inputs fill their values whole: no zeros first */
    bool filled = (n->op == KILN_OP_CONST && n->data) || n->op == KILN_OP_PARAM;
    const void *fill = !filled ? NULL : n->op == KILN_OP_PARAM ? inputs[k]->data : n->data;
    size_t fill_bytes = !filled ? 0 : n->op == KILN_OP_PARAM ? inputs[k]->nbytes : n->nbytes;
    vals[i] = filled ? kiln_tensor_from_data((kiln_dtype)n->dtype, n->rank, n->dims, fill, fill_bytes)
                     : kiln_tensor_new((kiln_dtype)n->dtype, n->rank, n->dims);
    kiln_tensor *ins[KILN_MAX_RANK * 4];
    kiln_tensor **inp = n->ninputs <= sizeof ins / sizeof ins[0] ? ins : malloc(sizeof(kiln_tensor *) * n->ninputs);
    if (!vals[i] || !inp) {
      if (inp && inp != ins) free(inp);
      st = kiln_set_error(KILN_ERR_NOMEM, "evaluate: out of memory at %%%u (%s)", i, kiln_ops[n->op].name);
      break;
    }
    for (uint32_t j = 0; j < n->ninputs; j++) inp[j] = vals[n->inputs[j]];
    ev e = {g, n, vals[i], inp};
    unsigned f = kiln_ops[n->op].flags;
    if (filled) k += n->op == KILN_OP_PARAM; /* already its value */
    else if (f & SRC) eval_source(&e);
    else if (f & EW) eval_elementwise(&e);
    else if (f & RED) st = eval_reduce(&e);
    else if (n->op == KILN_OP_MATMUL) eval_matmul(&e);
    else if (n->op == KILN_OP_CONV2D || n->op == KILN_OP_MAX_POOL2D || n->op == KILN_OP_AVG_POOL2D) eval_window(&e);
    else if (n->op == KILN_OP_CONV2D_FILTER_GRAD) eval_conv_filter_grad(&e);
    else if (n->op == KILN_OP_MAX_POOL2D_GRAD) eval_max_pool_grad(&e);
    else if (n->op == KILN_OP_GATHER) st = eval_gather(&e);
    else if (n->op == KILN_OP_ONE_HOT) eval_one_hot(&e);
    else if (n->op == KILN_OP_UNSLICE) eval_unslice(&e);
    else if (n->op == KILN_OP_SCATTER_ADD) st = eval_scatter_add(&e);
    else if (f & MOV) eval_movement(&e);
    else st = kiln_set_error(KILN_ERR_UNSUPPORTED, "evaluate: no reference for op %s", kiln_ops[n->op].name);
    if (inp != ins) free(inp);
  }
  for (size_t j = 0; j < nout; j++) outputs[j] = NULL;
  if (st == KILN_OK) {
    /* each value goes to its first output as it is; a repeated output is a copy */
    for (size_t j = 0; j < nout && j < g->noutputs && st == KILN_OK; j++) {
      uint32_t node = g->outputs[j].node;
      kiln_tensor *v = vals[node];
      for (size_t q = 0; !v && q < j; q++)
        if (g->outputs[q].node == node) v = outputs[q];
      outputs[j] = vals[node] ? vals[node] : kiln_tensor_from_data(v->dtype, v->rank, v->dims, v->data, v->nbytes);
      vals[node] = NULL;
      if (!outputs[j]) st = KILN_ERR_NOMEM;
    }
  }
  if (st != KILN_OK)
    for (size_t j = 0; j < nout; j++) kiln_tensor_free(outputs[j]), outputs[j] = NULL;
  for (uint32_t i = 0; i < g->nnodes; i++) kiln_tensor_free(vals[i]);
  free(vals);
  return st;
}

kiln_status kiln_evaluate(const kiln_graph *g, const kiln_tensor *const *inputs, size_t nin, kiln_tensor **outputs,
                          size_t nout) {
  if (!g) return kiln_set_error(KILN_ERR_INVALID, "evaluate: null graph");
  if (g->status != KILN_OK) return kiln_set_error(g->status, "%s", g->errmsg);
  if (nout != g->noutputs)
    return kiln_set_error(KILN_ERR_INVALID, "evaluate: the graph has %u outputs, %zu requested", g->noutputs, nout);
  if (!outputs) return kiln_set_error(KILN_ERR_INVALID, "evaluate: the outputs array is NULL");
  for (size_t j = 0; j < nout; j++) outputs[j] = NULL;
  uint32_t np = kiln_graph_num_params(g);
  const kiln_tensor **full = calloc(np + 1, sizeof *full);
  kiln_tensor **all = calloc(g->noutputs + g->nassigns + 1, sizeof *all);
  if (!full || !all) {
    free(full);
    free(all);
    return kiln_set_error(KILN_ERR_NOMEM, "evaluate: out of memory");
  }
  int64_t batch;
  kiln_graph *s = NULL;
  kiln_status st = kiln_bind_inputs(g, inputs, nin, full);
  if (st == KILN_OK) st = kiln_check_inputs(g, full, np, &batch);
  if (st == KILN_OK && !(s = kiln_graph_for_run(g, batch < 0 ? 1 : batch))) st = KILN_ERR_INVALID;
  if (st == KILN_OK) st = kiln_eval_graph(s, full, np, all, s->noutputs);
  if (st == KILN_OK) st = kiln_apply_assigns(g, all + nout);
  for (size_t j = 0; j < nout; j++) outputs[j] = st == KILN_OK ? all[j] : (kiln_tensor_free(all[j]), NULL);
  for (uint32_t j = 0; j < g->nassigns; j++) kiln_tensor_free(all[nout + j]);
  kiln_graph_free(s);
  free(full);
  free(all);
  return st;
}

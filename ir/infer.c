/* Shape and dtype inference, one rule per op group. It runs inside kiln_node_make,
 * so a bad graph is rejected at the builder call that made it, with a message that
 * names the op, its inputs' types and the rule broken.
 *
 * Symbolic dims: -1 in a shape is the batch size, a single symbol per graph. Rules
 * keep it exact — an output dim is -1 only when it provably equals the batch size —
 * so specialisation (g->batch >= 0) can substitute it everywhere. */
#include <stdarg.h>
#include <string.h>
#include "ir/ir.h"

static bool fail(kiln_graph *g, const kiln_node *n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static bool fail(kiln_graph *g, const kiln_node *n, const char *fmt, ...) {
  char desc[512], rule[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(rule, sizeof rule, fmt, ap);
  va_end(ap);
  kiln_graph_fail(g, KILN_ERR_INVALID, "%s: %s", kiln_node_describe(g, n, desc, sizeof desc), rule);
  return false;
}

static const kiln_node *in(const kiln_graph *g, const kiln_node *n, int i) { return &g->nodes[n->inputs[i]]; }

static void set_type(kiln_node *n, int dtype, int rank, const int64_t *dims) {
  n->dtype = (uint8_t)dtype;
  n->rank = (uint8_t)rank;
  memset(n->dims, 0, sizeof n->dims);
  if (rank) memcpy(n->dims, dims, sizeof(int64_t) * (size_t)rank);
}

/* A shape attribute, with -1 meaning the batch size (bound when specialising). */
/* Element counts past KILN_MAX_NUMEL (a symbolic dim counted as 1) would overflow
 * the byte sizes computed from them. */
static bool numel_ok(kiln_graph *g, const kiln_node *n, int rank, const int64_t *dims) {
  int64_t numel = 1;
  for (int i = 0; i < rank; i++)
    if (__builtin_mul_overflow(numel, dims[i] < 0 ? 1 : dims[i], &numel) || numel > KILN_MAX_NUMEL) {
      char s[128];
      return fail(g, n, "shape %s has more than 2^60 elements", kiln_shape_str(s, sizeof s, rank, dims));
    }
  return true;
}

static bool shape_attr(kiln_graph *g, kiln_node *n, int *rank, int64_t *dims) {
  const kiln_attr *a = kiln_attr_find(n, KILN_ATTR_SHAPE);
  if (!a) return fail(g, n, "missing attribute 'shape'");
  *rank = a->n;
  for (int i = 0; i < a->n; i++) {
    dims[i] = a->v.i[i];
    if (dims[i] < -1) return fail(g, n, "shape dim %d is %lld; dims are >= 0 or ? (batch)", i, (long long)dims[i]);
    if (dims[i] == -1 && g->batch >= 0) dims[i] = g->batch;
  }
  return numel_ok(g, n, *rank, dims);
}

static bool dtype_attr(kiln_graph *g, kiln_node *n, int *dtype) {
  int64_t t = kiln_attr_int(n, KILN_ATTR_DTYPE, -1);
  if (t < 0 || t >= KILN_DTYPE_COUNT) return fail(g, n, "missing or invalid attribute 'dtype'");
  *dtype = (int)t;
  return true;
}

static bool infer_source(kiln_graph *g, kiln_node *n) {
  int dtype = 0, rank = 0;
  int64_t dims[KILN_MAX_RANK];
  if (!dtype_attr(g, n, &dtype) || !shape_attr(g, n, &rank, dims)) return false;
  set_type(n, dtype, rank, dims);
  switch ((kiln_op)n->op) {
  case KILN_OP_PARAM:
    if (!n->name || !*n->name) return fail(g, n, "a placeholder needs a name");
    return true;
  case KILN_OP_CONST:
    if (n->data) {
      int64_t numel = kiln_shape_numel(rank, dims);
      if (numel < 0) return fail(g, n, "a constant with data cannot have a symbolic dim");
      if ((size_t)numel * kiln_dtype_size((kiln_dtype)dtype) != n->nbytes)
        return fail(g, n, "data has %zu bytes, the shape needs %lld", n->nbytes,
                    (long long)numel * (long long)kiln_dtype_size((kiln_dtype)dtype));
    } else if (!kiln_attr_find(n, KILN_ATTR_VALUE)) {
      return fail(g, n, "a constant needs data or a fill 'value'");
    }
    return true;
  case KILN_OP_IOTA: {
    int64_t axis = kiln_attr_int(n, KILN_ATTR_AXIS, -1);
    if (axis < 0 || axis >= rank) return fail(g, n, "axis %lld out of range for rank %d", (long long)axis, rank);
    if (dtype == KILN_BOOL) return fail(g, n, "iota is not defined for bool");
    return true;
  }
  default:
    if (!kiln_dtype_is_float((kiln_dtype)dtype)) return fail(g, n, "random values must be f32 or f64");
    if (!kiln_dtype_is_int((kiln_dtype)in(g, n, 0)->dtype) || in(g, n, 0)->rank != 0)
      return fail(g, n, "the key (input 0) must be an integer scalar");
    return true;
  }
}

static bool same_dims(const kiln_node *a, const kiln_node *b) { return kiln_same_shape(a->rank, a->dims, b->rank, b->dims); }

static bool check_operand_dtype(kiln_graph *g, kiln_node *n, kiln_dtype t) {
  unsigned f = kiln_ops[n->op].flags;
  if ((f & FLT) && !kiln_dtype_is_float(t)) return fail(g, n, "needs f32 or f64 operands, got %s", kiln_dtype_name(t));
  if ((f & BOOLIN) && t != KILN_BOOL) return fail(g, n, "needs bool operands, got %s", kiln_dtype_name(t));
  if (!(f & (BOOLIN | CMP)) && n->op != KILN_OP_SELECT && n->op != KILN_OP_CAST && t == KILN_BOOL)
    return fail(g, n, "is not defined for bool (cast first)");
  return true;
}

static bool infer_elementwise(kiln_graph *g, kiln_node *n) {
  const kiln_node *a = in(g, n, 0);
  if (n->op == KILN_OP_CAST) {
    int dtype = 0;
    if (!dtype_attr(g, n, &dtype)) return false;
    set_type(n, dtype, a->rank, a->dims);
    return true;
  }
  uint32_t first = 0;
  if (n->op == KILN_OP_SELECT) {
    if (a->dtype != KILN_BOOL) return fail(g, n, "the condition must be bool, got %s", kiln_dtype_name(a->dtype));
    first = 1;
  }
  const kiln_node *x = in(g, n, (int)first);
  for (uint32_t i = 0; i < n->ninputs; i++) {
    const kiln_node *b = in(g, n, (int)i);
    if (!same_dims(a, b)) return fail(g, n, "operands must have equal shapes (broadcast them first)");
    if (i > first && b->dtype != x->dtype)
      return fail(g, n, "operands must have equal dtypes, got %s and %s", kiln_dtype_name(x->dtype),
                  kiln_dtype_name(b->dtype));
  }
  if (!check_operand_dtype(g, n, (kiln_dtype)x->dtype)) return false;
  set_type(n, (kiln_ops[n->op].flags & CMP) ? KILN_BOOL : x->dtype, a->rank, a->dims);
  return true;
}

static bool infer_reduce(kiln_graph *g, kiln_node *n) {
  const kiln_node *x = in(g, n, 0);
  if (x->dtype == KILN_BOOL) return fail(g, n, "is not defined for bool (cast first)");
  bool keep = kiln_attr_int(n, KILN_ATTR_KEEPDIMS, 0) != 0;
  bool reduced[KILN_MAX_RANK] = {0};
  if (n->op == KILN_OP_ARGMAX) {
    int64_t axis = kiln_attr_int(n, KILN_ATTR_AXIS, -1);
    if (axis < 0 || axis >= x->rank) return fail(g, n, "axis %lld out of range for rank %d", (long long)axis, x->rank);
    if (x->dims[axis] == 0) return fail(g, n, "argmax over an empty axis");
    reduced[axis] = true;
  } else {
    int64_t axes[KILN_MAX_RANK];
    int na = kiln_attr_ints(n, KILN_ATTR_AXES, axes);
    for (int i = 0; i < na; i++) {
      if (axes[i] < 0 || axes[i] >= x->rank)
        return fail(g, n, "axis %lld out of range for rank %d", (long long)axes[i], x->rank);
      if (reduced[axes[i]]) return fail(g, n, "axis %lld listed twice", (long long)axes[i]);
      if (i && axes[i] < axes[i - 1]) return fail(g, n, "axes must be sorted");
      reduced[axes[i]] = true;
    }
  }
  int64_t dims[KILN_MAX_RANK];
  int r = 0;
  for (int i = 0; i < x->rank; i++) {
    if (!reduced[i])
      dims[r++] = x->dims[i];
    else if (keep)
      dims[r++] = 1;
  }
  set_type(n, n->op == KILN_OP_ARGMAX ? KILN_I64 : x->dtype, r, dims);
  return true;
}

static bool infer_matmul(kiln_graph *g, kiln_node *n) {
  const kiln_node *a = in(g, n, 0), *b = in(g, n, 1);
  if (a->dtype != b->dtype) return fail(g, n, "operands must have equal dtypes");
  if (a->dtype == KILN_BOOL) return fail(g, n, "is not defined for bool");
  if (a->rank < 2 || a->rank != b->rank) return fail(g, n, "operands must have equal ranks >= 2");
  int r = a->rank;
  for (int i = 0; i < r - 2; i++)
    if (a->dims[i] != b->dims[i]) return fail(g, n, "batch dim %d differs", i);
  bool ta = kiln_attr_int(n, KILN_ATTR_TRANSPOSE_A, 0), tb = kiln_attr_int(n, KILN_ATTR_TRANSPOSE_B, 0);
  int64_t m = a->dims[r - 2 + ta], ka = a->dims[r - 1 - ta];
  int64_t kb = b->dims[r - 2 + tb], nn = b->dims[r - 1 - tb];
  /* K may be the batch symbol (weight gradients contract over the batch); both sides then bind it. */
  if (ka != kb)
    return fail(g, n, "contraction dims differ: a has K=%lld, b has K=%lld%s", (long long)ka, (long long)kb,
                ta || tb ? " (after transposes)" : "");
  if (nn < 0) return fail(g, n, "b's column dim cannot be the batch dim");
  int64_t dims[KILN_MAX_RANK];
  memcpy(dims, a->dims, sizeof(int64_t) * (size_t)r);
  dims[r - 2] = m;
  dims[r - 1] = nn;
  set_type(n, a->dtype, r, dims);
  return true;
}

int64_t kiln_window_out(int64_t inn, int64_t k, int64_t stride, int64_t dil, int64_t lo, int64_t hi) {
  int64_t span, padded;
  if (__builtin_mul_overflow(k - 1, dil, &span) || __builtin_add_overflow(span, 1, &span) ||
      __builtin_add_overflow(inn, lo, &padded) || __builtin_add_overflow(padded, hi, &padded))
    return -2;
  return padded < span ? -1 : (padded - span) / stride + 1;
}

/* Conv and pool share the window attributes: strides, dilations, pads (t,l,b,r). */
static bool window_attrs(kiln_graph *g, kiln_node *n, int64_t *strides, int64_t *dil, int64_t *pads) {
  if (kiln_attr_ints_cap(n, KILN_ATTR_STRIDES, strides, 2) != 2) return fail(g, n, "needs 2 strides");
  if (kiln_attr_ints_cap(n, KILN_ATTR_PADS, pads, 4) != 4) return fail(g, n, "needs 4 pads (top, left, bottom, right)");
  if (n->op == KILN_OP_CONV2D || n->op == KILN_OP_CONV2D_FILTER_GRAD) {
    if (kiln_attr_ints_cap(n, KILN_ATTR_DILATIONS, dil, 2) != 2) return fail(g, n, "needs 2 dilations");
  } else {
    dil[0] = dil[1] = 1;
  }
  for (int i = 0; i < 2; i++)
    if (strides[i] < 1 || dil[i] < 1) return fail(g, n, "strides and dilations must be >= 1");
  for (int i = 0; i < 4; i++)
    if (pads[i] < 0) return fail(g, n, "pads must be >= 0");
  return true;
}

static bool infer_window(kiln_graph *g, kiln_node *n) {
  const kiln_node *x = in(g, n, 0);
  if (x->rank != 4) return fail(g, n, "input must be rank 4 (NHWC)");
  if (x->dtype == KILN_BOOL || kiln_dtype_is_int((kiln_dtype)x->dtype))
    return fail(g, n, "needs f32 or f64 input, got %s", kiln_dtype_name(x->dtype));
  if (x->dims[1] < 0 || x->dims[2] < 0 || x->dims[3] < 0) return fail(g, n, "only the batch dim may be symbolic");
  int64_t s[2], d[2], p[4], k[2], oc;
  if (!window_attrs(g, n, s, d, p)) return false;
  if (n->op == KILN_OP_CONV2D) {
    const kiln_node *w = in(g, n, 1);
    if (w->rank != 4) return fail(g, n, "filter must be rank 4 (HWIO)");
    if (w->dtype != x->dtype) return fail(g, n, "input and filter dtypes differ");
    int64_t groups = kiln_attr_int(n, KILN_ATTR_GROUPS, 1);
    int64_t in_channels;
    if (groups < 1) return fail(g, n, "groups must be >= 1");
    if (__builtin_mul_overflow(w->dims[2], groups, &in_channels) || in_channels != x->dims[3])
      return fail(g, n, "filter in-channels %lld x groups %lld != input channels %lld", (long long)w->dims[2],
                  (long long)groups, (long long)x->dims[3]);
    if (w->dims[3] % groups) return fail(g, n, "filter out-channels %lld not divisible by groups %lld",
                                         (long long)w->dims[3], (long long)groups);
    k[0] = w->dims[0];
    k[1] = w->dims[1];
    oc = w->dims[3];
  } else {
    if (kiln_attr_ints(n, KILN_ATTR_WINDOW, k) != 2) return fail(g, n, "needs a 2-d window");
    if (k[0] < 1 || k[1] < 1) return fail(g, n, "window must be >= 1");
    if (p[0] >= k[0] || p[2] >= k[0] || p[1] >= k[1] || p[3] >= k[1])
      return fail(g, n, "pads must be smaller than the window");
    oc = x->dims[3];
  }
  int64_t oh = kiln_window_out(x->dims[1], k[0], s[0], d[0], p[0], p[2]);
  int64_t ow = kiln_window_out(x->dims[2], k[1], s[1], d[1], p[1], p[3]);
  if (oh == -2 || ow == -2) return fail(g, n, "window, dilations or pads overflow int64");
  if (oh < 0 || ow < 0) return fail(g, n, "window is larger than the padded input");
  set_type(n, x->dtype, 4, (int64_t[]){x->dims[0], oh, ow, oc});
  return true;
}

/* max_pool2d_grad(x, dy): dy must be the shape max_pool2d(x) has; the result is x's. */
static bool infer_max_pool_grad(kiln_graph *g, kiln_node *n) {
  if (!infer_window(g, n)) return false; /* n's type is now the pooling's output */
  const kiln_node *x = in(g, n, 0), *dy = in(g, n, 1);
  if (dy->rank != 4 || dy->dtype != x->dtype) return fail(g, n, "output gradient must be %s of rank 4", kiln_dtype_name(x->dtype));
  for (int i = 0; i < 4; i++)
    if (dy->dims[i] != n->dims[i]) {
      char a[96], b[96];
      return fail(g, n, "output gradient is %s, the pooling's output %s", kiln_shape_str(a, sizeof a, 4, dy->dims),
                  kiln_shape_str(b, sizeof b, 4, n->dims));
    }
  set_type(n, x->dtype, 4, x->dims);
  return true;
}

/* conv2d_filter_grad(x, dy): dy must be the shape conv2d(x, w) has for a `window` filter. */
static bool infer_conv_filter_grad(kiln_graph *g, kiln_node *n) {
  const kiln_node *x = in(g, n, 0), *dy = in(g, n, 1);
  if (x->rank != 4 || dy->rank != 4) return fail(g, n, "input and output gradient must be rank 4 (NHWC)");
  if (x->dtype == KILN_BOOL || kiln_dtype_is_int((kiln_dtype)x->dtype))
    return fail(g, n, "needs f32 or f64 input, got %s", kiln_dtype_name(x->dtype));
  if (dy->dtype != x->dtype) return fail(g, n, "input and output gradient dtypes differ");
  for (int i = 1; i < 4; i++)
    if (x->dims[i] < 0 || dy->dims[i] < 0) return fail(g, n, "only the batch dim may be symbolic");
  if (x->dims[0] != dy->dims[0])
    return fail(g, n, "input batch %lld != output gradient batch %lld", (long long)x->dims[0], (long long)dy->dims[0]);
  int64_t s[2], d[2], p[4], k[2];
  if (!window_attrs(g, n, s, d, p)) return false;
  if (kiln_attr_ints(n, KILN_ATTR_WINDOW, k) != 2 || k[0] < 1 || k[1] < 1) return fail(g, n, "needs a 2-d filter `window` >= 1");
  int64_t groups = kiln_attr_int(n, KILN_ATTR_GROUPS, 1);
  if (groups < 1) return fail(g, n, "groups must be >= 1");
  if (x->dims[3] % groups || dy->dims[3] % groups)
    return fail(g, n, "input channels %lld and output channels %lld must be divisible by groups %lld",
                (long long)x->dims[3], (long long)dy->dims[3], (long long)groups);
  int64_t oh = kiln_window_out(x->dims[1], k[0], s[0], d[0], p[0], p[2]);
  int64_t ow = kiln_window_out(x->dims[2], k[1], s[1], d[1], p[1], p[3]);
  if (oh == -2 || ow == -2) return fail(g, n, "window, dilations or pads overflow int64");
  if (oh < 0 || ow < 0) return fail(g, n, "window is larger than the padded input");
  if (oh != dy->dims[1] || ow != dy->dims[2])
    return fail(g, n, "output gradient is %lldx%lld, the convolution's output %lldx%lld", (long long)dy->dims[1],
                (long long)dy->dims[2], (long long)oh, (long long)ow);
  set_type(n, x->dtype, 4, (int64_t[]){k[0], k[1], x->dims[3] / groups, dy->dims[3]});
  return true;
}

static bool infer_reshape(kiln_graph *g, kiln_node *n) {
  const kiln_node *x = in(g, n, 0);
  int64_t dims[KILN_MAX_RANK];
  int r = kiln_attr_ints(n, KILN_ATTR_SHAPE, dims);
  if (!kiln_attr_find(n, KILN_ATTR_SHAPE)) return fail(g, n, "missing attribute 'shape'");
  int infer_at = -1;
  int64_t known_out = 1, known_in = 1;
  bool sym_in = false;
  for (int i = 0; i < r; i++) {
    if (dims[i] == -1) {
      if (infer_at >= 0) return fail(g, n, "at most one dim may be -1");
      infer_at = i;
    } else if (dims[i] < 0) {
      return fail(g, n, "dim %d is %lld", i, (long long)dims[i]);
    } else if (__builtin_mul_overflow(known_out, dims[i], &known_out)) {
      return fail(g, n, "the target shape has more than 2^63 elements");
    }
  }
  for (int i = 0; i < x->rank; i++) {
    if (x->dims[i] < 0)
      sym_in = true;
    else
      known_in *= x->dims[i];
  }
  char s[128];
  if (sym_in) {
    /* The -1 must absorb exactly the batch symbol, or later dims would not be the batch. */
    if (infer_at < 0 || known_in != known_out)
      return fail(g, n, "cannot reshape a batch-dynamic tensor to %s: the -1 dim must equal the batch size",
                  kiln_shape_str(s, sizeof s, r, dims));
  } else if (infer_at >= 0) {
    if (known_out == 0 || known_in % known_out)
      return fail(g, n, "%lld elements cannot be reshaped to %s", (long long)known_in,
                  kiln_shape_str(s, sizeof s, r, dims));
    dims[infer_at] = known_in / known_out;
  } else if (known_in != known_out) {
    return fail(g, n, "%lld elements cannot be reshaped to %s (%lld elements)", (long long)known_in,
                kiln_shape_str(s, sizeof s, r, dims), (long long)known_out);
  }
  set_type(n, x->dtype, r, dims);
  return true;
}

static bool infer_transpose(kiln_graph *g, kiln_node *n) {
  const kiln_node *x = in(g, n, 0);
  int64_t perm[KILN_MAX_RANK], dims[KILN_MAX_RANK];
  int r = kiln_attr_ints(n, KILN_ATTR_PERM, perm);
  if (r != x->rank) return fail(g, n, "perm has %d entries for rank %d", r, x->rank);
  bool seen[KILN_MAX_RANK] = {0};
  for (int i = 0; i < r; i++) {
    if (perm[i] < 0 || perm[i] >= r || seen[perm[i]]) return fail(g, n, "perm is not a permutation");
    seen[perm[i]] = true;
    dims[i] = x->dims[perm[i]];
  }
  set_type(n, x->dtype, r, dims);
  return true;
}

static bool infer_broadcast(kiln_graph *g, kiln_node *n) {
  const kiln_node *x = in(g, n, 0);
  int r = 0;
  int64_t dims[KILN_MAX_RANK];
  if (!shape_attr(g, n, &r, dims)) return false;
  if (x->rank > r) return fail(g, n, "cannot broadcast rank %d to rank %d", x->rank, r);
  for (int i = 0; i < x->rank; i++) {
    int64_t a = x->dims[i], b = dims[r - x->rank + i];
    if (a != b && a != 1) {
      char from[128], to[128];
      return fail(g, n, "shape %s cannot broadcast to %s (dim %d)", kiln_shape_str(from, sizeof from, x->rank, x->dims),
                  kiln_shape_str(to, sizeof to, r, dims), i);
    }
  }
  set_type(n, x->dtype, r, dims);
  return true;
}

static bool infer_concat(kiln_graph *g, kiln_node *n) {
  const kiln_node *x = in(g, n, 0);
  int64_t axis = kiln_attr_int(n, KILN_ATTR_AXIS, -1);
  if (axis < 0 || axis >= x->rank) return fail(g, n, "axis %lld out of range for rank %d", (long long)axis, x->rank);
  int64_t dims[KILN_MAX_RANK];
  memcpy(dims, x->dims, sizeof dims);
  dims[axis] = 0;
  for (uint32_t i = 0; i < n->ninputs; i++) {
    const kiln_node *y = in(g, n, (int)i);
    if (y->dtype != x->dtype) return fail(g, n, "inputs must have equal dtypes");
    if (y->rank != x->rank) return fail(g, n, "inputs must have equal ranks");
    for (int d = 0; d < x->rank; d++)
      if (d != axis && y->dims[d] != x->dims[d]) return fail(g, n, "input %u differs in dim %d", i, d);
    if (y->dims[axis] < 0) return fail(g, n, "cannot concatenate along the batch dim");
    dims[axis] += y->dims[axis];
  }
  set_type(n, x->dtype, x->rank, dims);
  return true;
}

int64_t kiln_slice_dim(int64_t dim, int64_t start, int64_t end, int64_t step, int64_t *first) {
  /* NumPy: negative bounds count from the end, then clamp to the valid range for the step's direction. */
  if (start < 0) start += dim;
  if (end < 0 && end > INT64_MIN / 2) end += dim;
  if (step > 0) {
    start = start < 0 ? 0 : start > dim ? dim : start;
    end = end < 0 ? 0 : end > dim ? dim : end;
    *first = start;
    return end > start ? (end - start + step - 1) / step : 0;
  }
  start = start < -1 ? -1 : start > dim - 1 ? dim - 1 : start;
  end = end < -1 ? -1 : end > dim - 1 ? dim - 1 : end;
  *first = start;
  return start > end ? (start - end - step - 1) / -step : 0;
}

void kiln_slice_map(const kiln_node *n, int rank, const int64_t *full, int64_t *first, int64_t *step) {
  int64_t st[KILN_MAX_RANK], en[KILN_MAX_RANK];
  kiln_attr_ints(n, KILN_ATTR_STARTS, st);
  kiln_attr_ints(n, KILN_ATTR_ENDS, en);
  kiln_attr_ints_cap(n, KILN_ATTR_STEPS, step, KILN_MAX_RANK); /* step: the caller's KILN_MAX_RANK */
  for (int d = 0; d < rank; d++) kiln_slice_dim(full[d], st[d], en[d], step[d], &first[d]);
}

static bool infer_slice(kiln_graph *g, kiln_node *n) {
  const kiln_node *x = in(g, n, 0);
  int64_t st[KILN_MAX_RANK], en[KILN_MAX_RANK], sp[KILN_MAX_RANK], dims[KILN_MAX_RANK];
  int a = kiln_attr_ints(n, KILN_ATTR_STARTS, st), b = kiln_attr_ints(n, KILN_ATTR_ENDS, en),
      c = kiln_attr_ints(n, KILN_ATTR_STEPS, sp);
  if (a != x->rank || b != x->rank || c != x->rank) return fail(g, n, "starts, ends and steps need %d entries each", x->rank);
  for (int i = 0; i < x->rank; i++) {
    if (sp[i] == 0) return fail(g, n, "step of dim %d is 0", i);
    if (x->dims[i] < 0) {
      if (st[i] != 0 || en[i] < INT64_MAX / 2 || sp[i] != 1) return fail(g, n, "the batch dim can only be kept whole");
      dims[i] = -1;
      continue;
    }
    int64_t first;
    dims[i] = kiln_slice_dim(x->dims[i], st[i], en[i], sp[i], &first);
  }
  set_type(n, x->dtype, x->rank, dims);
  return true;
}

static bool infer_pad(kiln_graph *g, kiln_node *n) {
  const kiln_node *x = in(g, n, 0);
  int64_t lo[KILN_MAX_RANK], hi[KILN_MAX_RANK], dims[KILN_MAX_RANK];
  if (kiln_attr_ints(n, KILN_ATTR_PADS_LO, lo) != x->rank || kiln_attr_ints(n, KILN_ATTR_PADS_HI, hi) != x->rank)
    return fail(g, n, "pads_lo and pads_hi need %d entries each", x->rank);
  for (int i = 0; i < x->rank; i++) {
    if (lo[i] < 0 || hi[i] < 0) return fail(g, n, "pads must be >= 0");
    if (x->dims[i] < 0 && (lo[i] || hi[i])) return fail(g, n, "the batch dim cannot be padded");
    dims[i] = x->dims[i] < 0 ? -1 : x->dims[i] + lo[i] + hi[i];
  }
  set_type(n, x->dtype, x->rank, dims);
  return true;
}

static bool infer_gather(kiln_graph *g, kiln_node *n) {
  const kiln_node *x = in(g, n, 0), *idx = in(g, n, 1);
  if (!kiln_dtype_is_int((kiln_dtype)idx->dtype)) return fail(g, n, "indices must be i32 or i64");
  int64_t axis = kiln_attr_int(n, KILN_ATTR_AXIS, -1);
  if (axis < 0 || axis >= x->rank) return fail(g, n, "axis %lld out of range for rank %d", (long long)axis, x->rank);
  if (x->rank - 1 + idx->rank > KILN_MAX_RANK) return fail(g, n, "result rank exceeds %d", KILN_MAX_RANK);
  if (x->dims[axis] < 0) return fail(g, n, "cannot gather along the batch dim");
  int64_t dims[KILN_MAX_RANK];
  int r = 0;
  for (int i = 0; i < axis; i++) dims[r++] = x->dims[i];
  for (int i = 0; i < idx->rank; i++) dims[r++] = idx->dims[i];
  for (int i = (int)axis + 1; i < x->rank; i++) dims[r++] = x->dims[i];
  set_type(n, x->dtype, r, dims);
  return true;
}

static bool infer_one_hot(kiln_graph *g, kiln_node *n) {
  const kiln_node *idx = in(g, n, 0);
  if (!kiln_dtype_is_int((kiln_dtype)idx->dtype)) return fail(g, n, "indices must be i32 or i64");
  if (idx->rank + 1 > KILN_MAX_RANK) return fail(g, n, "result rank exceeds %d", KILN_MAX_RANK);
  int64_t depth = kiln_attr_int(n, KILN_ATTR_DEPTH, -1);
  if (depth < 0) return fail(g, n, "depth must be >= 0");
  int dtype = 0;
  if (!dtype_attr(g, n, &dtype)) return false;
  int64_t dims[KILN_MAX_RANK];
  memcpy(dims, idx->dims, sizeof dims);
  dims[idx->rank] = depth;
  set_type(n, dtype, idx->rank + 1, dims);
  return true;
}

static bool infer_unslice(kiln_graph *g, kiln_node *n) {
  const kiln_node *x = in(g, n, 0);
  int r = 0;
  int64_t dims[KILN_MAX_RANK], st[KILN_MAX_RANK], en[KILN_MAX_RANK], sp[KILN_MAX_RANK];
  if (!shape_attr(g, n, &r, dims)) return false;
  if (kiln_attr_ints(n, KILN_ATTR_STARTS, st) != r || kiln_attr_ints(n, KILN_ATTR_ENDS, en) != r ||
      kiln_attr_ints(n, KILN_ATTR_STEPS, sp) != r)
    return fail(g, n, "starts, ends and steps need %d entries each", r);
  if (x->rank != r) return fail(g, n, "input rank %d differs from the rank %d of 'shape'", x->rank, r);
  for (int i = 0; i < r; i++) {
    if (sp[i] == 0) return fail(g, n, "step of dim %d is 0", i);
    int64_t first, want = -1;
    if (dims[i] < 0) {
      if (st[i] != 0 || en[i] < INT64_MAX / 2 || sp[i] != 1) return fail(g, n, "the batch dim can only be kept whole");
    } else {
      want = kiln_slice_dim(dims[i], st[i], en[i], sp[i], &first);
    }
    if (x->dims[i] != want)
      return fail(g, n, "input dim %d is %lld but the slice of the output holds %lld", i, (long long)x->dims[i],
                  (long long)want);
  }
  set_type(n, x->dtype, r, dims);
  return true;
}

/* The updates have exactly the shape gather would produce from the output. */
static bool infer_scatter_add(kiln_graph *g, kiln_node *n) {
  const kiln_node *idx = in(g, n, 0), *u = in(g, n, 1);
  if (!kiln_dtype_is_int((kiln_dtype)idx->dtype)) return fail(g, n, "indices must be i32 or i64");
  if (u->dtype == KILN_BOOL) return fail(g, n, "is not defined for bool (cast first)");
  int r = 0;
  int64_t dims[KILN_MAX_RANK], want[KILN_MAX_RANK];
  if (!shape_attr(g, n, &r, dims)) return false;
  int64_t axis = kiln_attr_int(n, KILN_ATTR_AXIS, -1);
  if (axis < 0 || axis >= r) return fail(g, n, "axis %lld out of range for rank %d", (long long)axis, r);
  if (dims[axis] < 0) return fail(g, n, "cannot scatter along the batch dim");
  if (r - 1 + idx->rank > KILN_MAX_RANK) return fail(g, n, "updates rank exceeds %d", KILN_MAX_RANK);
  int wr = 0;
  for (int i = 0; i < axis; i++) want[wr++] = dims[i];
  for (int i = 0; i < idx->rank; i++) want[wr++] = idx->dims[i];
  for (int i = (int)axis + 1; i < r; i++) want[wr++] = dims[i];
  if (u->rank != wr || memcmp(u->dims, want, sizeof(int64_t) * (size_t)wr)) {
    char s[128];
    return fail(g, n, "updates must have shape %s (shape[:axis] + indices.shape + shape[axis+1:])",
                kiln_shape_str(s, sizeof s, wr, want));
  }
  set_type(n, u->dtype, r, dims);
  return true;
}

static bool infer_rule(kiln_graph *g, kiln_node *n);

bool kiln_infer(kiln_graph *g, kiln_node *n) { return infer_rule(g, n) && numel_ok(g, n, n->rank, n->dims); }

static bool infer_rule(kiln_graph *g, kiln_node *n) {
  unsigned f = kiln_ops[n->op].flags;
  if (f & SRC) return infer_source(g, n);
  if (f & EW) return infer_elementwise(g, n);
  if (f & RED) return infer_reduce(g, n);
  switch ((kiln_op)n->op) {
  case KILN_OP_MATMUL: return infer_matmul(g, n);
  case KILN_OP_CONV2D:
  case KILN_OP_MAX_POOL2D:
  case KILN_OP_AVG_POOL2D: return infer_window(g, n);
  case KILN_OP_CONV2D_FILTER_GRAD: return infer_conv_filter_grad(g, n);
  case KILN_OP_MAX_POOL2D_GRAD: return infer_max_pool_grad(g, n);
  case KILN_OP_RESHAPE: return infer_reshape(g, n);
  case KILN_OP_TRANSPOSE: return infer_transpose(g, n);
  case KILN_OP_BROADCAST_TO: return infer_broadcast(g, n);
  case KILN_OP_CONCAT: return infer_concat(g, n);
  case KILN_OP_SLICE: return infer_slice(g, n);
  case KILN_OP_PAD: return infer_pad(g, n);
  case KILN_OP_GATHER: return infer_gather(g, n);
  case KILN_OP_ONE_HOT: return infer_one_hot(g, n);
  case KILN_OP_UNSLICE: return infer_unslice(g, n);
  case KILN_OP_SCATTER_ADD: return infer_scatter_add(g, n);
  default: return fail(g, n, "no shape inference rule");
  }
}

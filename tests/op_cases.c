/* Random graph builders for every op; see op_cases.h. */
#include <string.h>
#include "op_cases.h"

static kiln_value ph(tc *c, kiln_dtype t, int rank, const int64_t *dims, double lo, double hi) {
  char name[16];
  snprintf(name, sizeof name, "in%d", c->nin);
  assert_true(c->nin < 8);
  c->in[c->nin++] = random_tensor(c->r, t, rank, dims, lo, hi);
  kiln_shape s = {.rank = rank};
  if (rank) memcpy(s.dims, dims, sizeof(int64_t) * (size_t)rank);
  return kiln_placeholder(c->g, name, t, s);
}

static const int64_t SIZES[] = {1, 2, 3, 5, 7, 16, 17, 33};

/* Random shape; occasionally one dim is 0 when allow_empty. */
static int rshape(tc *c, int minr, int maxr, bool allow_empty, int64_t *dims) {
  int rank = (int)trng_int(c->r, minr, maxr);
  for (int i = 0; i < rank; i++) dims[i] = trng_pick(c->r, SIZES, 8);
  if (allow_empty && rank && trng_int(c->r, 0, 9) == 0) dims[trng_int(c->r, 0, rank - 1)] = 0;
  /* Keep tensors small enough for the reference evaluator. */
  while (kiln_shape_numel(rank, dims) > 4000)
    for (int i = 0; i < rank; i++) dims[i] = (dims[i] + 1) / 2;
  return rank;
}

/* A shape that broadcasts to (rank, dims): drop leading dims, set some to 1. */
static int bshape(tc *c, int rank, const int64_t *dims, int64_t *out) {
  int r = rank - (int)trng_int(c->r, 0, rank);
  for (int i = 0; i < r; i++) out[i] = trng_int(c->r, 0, 3) == 0 ? 1 : dims[rank - r + i];
  return r;
}

static void range_of(kiln_op op, kiln_dtype t, double *lo, double *hi) {
  *lo = -10;
  *hi = 10;
  if (!kiln_dtype_is_float(t)) *lo = -100, *hi = 100;
  switch (op) {
  case KILN_OP_LOG: case KILN_OP_SQRT: case KILN_OP_RSQRT: *lo = 0.01; *hi = 50; break;
  case KILN_OP_EXP: *lo = -30; *hi = 30; break;
  case KILN_OP_POW: *lo = 0.1; *hi = 4; break;
  default: break;
  }
}

static kiln_value b_param(tc *c, kiln_op op) {
  int64_t d[8];
  int r = rshape(c, 0, 3, true, d);
  return ph(c, c->t, r, d, -5, 5);
}

static kiln_value b_const(tc *c, kiln_op op) {
  int64_t d[8];
  int r = rshape(c, 0, 3, true, d);
  if (trng_int(c->r, 0, 1)) return kiln_fill(c->g, c->t, (kiln_shape){r, {d[0], d[1], d[2]}}, trng_real(c->r, -5, 5));
  kiln_tensor *t = random_tensor(c->r, c->t, r, d, -50, 50);
  kiln_value v = kiln_constant(c->g, c->t, (kiln_shape){r, {d[0], d[1], d[2]}}, kiln_tensor_cdata(t));
  kiln_tensor_free(t);
  return v;
}

static kiln_value b_iota(tc *c, kiln_op op) {
  int64_t d[8];
  int r = rshape(c, 1, 3, true, d);
  return kiln_iota(c->g, c->t, (kiln_shape){r, {d[0], d[1], d[2]}}, (int)trng_int(c->r, 0, r - 1));
}

static kiln_value b_rng(tc *c, kiln_op op) {
  int64_t d[8];
  int r = rshape(c, 0, 3, true, d);
  kiln_shape s = {r, {d[0], d[1], d[2]}};
  uint64_t seed = trng_next(c->r);
  if (trng_int(c->r, 0, 1)) /* a run-time key, as dropout uses */
    return op == KILN_OP_RNG_UNIFORM
               ? kiln_random_uniform_stream(c->g, c->t, s, seed, ph(c, KILN_I64, 0, NULL, -1e6, 1e6), -2, 3)
               : kiln_random_normal_stream(c->g, c->t, s, seed, ph(c, KILN_I32, 0, NULL, -1e6, 1e6), 1, 2);
  return op == KILN_OP_RNG_UNIFORM ? kiln_random_uniform(c->g, c->t, s, seed, -2, 3)
                                   : kiln_random_normal(c->g, c->t, s, seed, 1, 2);
}

static kiln_value b_unary(tc *c, kiln_op op) {
  int64_t d[8];
  int r = rshape(c, 0, 4, true, d);
  double lo, hi;
  range_of(op, c->t, &lo, &hi);
  kiln_value x = ph(c, c->t, r, d, lo, hi);
  uint32_t id = x.id;
  return kiln_node_make(c->g, op, &id, 1, NULL, NULL, NULL, 0);
}

static kiln_value b_binary(tc *c, kiln_op op) {
  int64_t d[8], da[8], db[8];
  int r = rshape(c, 0, 4, true, d);
  int ra = bshape(c, r, d, da), rb = bshape(c, r, d, db);
  if (trng_int(c->r, 0, 1)) ra = r, memcpy(da, d, sizeof d);
  double lo, hi;
  range_of(op, c->t, &lo, &hi);
  kiln_value a = ph(c, c->t, ra, da, lo, hi);
  double blo = lo, bhi = hi;
  if (op == KILN_OP_POW) blo = -3, bhi = 3;
  if (op == KILN_OP_DIV && kiln_dtype_is_float(c->t)) blo = 0.5, bhi = 5;
  if (op == KILN_OP_DIV && !kiln_dtype_is_float(c->t)) blo = -3, bhi = 3; /* includes x/0 and x/-1 */
  kiln_value b = ph(c, c->t, rb, db, blo, bhi);
  /* Equal values make EQUAL interesting: sometimes compare a with itself. */
  if (op == KILN_OP_EQUAL && trng_int(c->r, 0, 2) == 0) b = a;
  switch (op) {
  case KILN_OP_ADD: return kiln_add(c->g, a, b);
  case KILN_OP_SUB: return kiln_sub(c->g, a, b);
  case KILN_OP_MUL: return kiln_mul(c->g, a, b);
  case KILN_OP_DIV: return kiln_div(c->g, a, b);
  case KILN_OP_POW: return kiln_pow(c->g, a, b);
  case KILN_OP_MAX: return kiln_maximum(c->g, a, b);
  case KILN_OP_MIN: return kiln_minimum(c->g, a, b);
  case KILN_OP_EQUAL: return kiln_equal(c->g, a, b);
  case KILN_OP_LESS: return kiln_less(c->g, a, b);
  case KILN_OP_GREATER: return kiln_greater(c->g, a, b);
  case KILN_OP_AND: return kiln_logical_and(c->g, a, b);
  default: return kiln_logical_or(c->g, a, b);
  }
}

static kiln_value b_select(tc *c, kiln_op op) {
  int64_t d[8], da[8], db[8], dc[8];
  int r = rshape(c, 0, 4, true, d);
  int ra = bshape(c, r, d, da), rb = bshape(c, r, d, db), rc = bshape(c, r, d, dc);
  if (trng_int(c->r, 0, 1)) rc = r, memcpy(dc, d, sizeof d);
  kiln_value cond = ph(c, KILN_BOOL, rc, dc, 0, 1);
  return kiln_select(c->g, cond, ph(c, c->t, ra, da, -9, 9), ph(c, c->t, rb, db, -9, 9));
}

static kiln_value b_cast(tc *c, kiln_op op) {
  int64_t d[8];
  int r = rshape(c, 0, 3, true, d);
  /* Floats outside the i32 range test saturation; NaN-free so both sides agree. */
  double big = kiln_dtype_is_float(c->t) ? 5e9 : c->t == KILN_I64 ? 9e15 : 2e9;
  kiln_value x = ph(c, c->t, r, d, c->t == KILN_BOOL ? 0 : -big, c->t == KILN_BOOL ? 1 : big);
  return kiln_cast(c->g, x, (kiln_dtype)trng_int(c->r, 0, KILN_DTYPE_COUNT - 1));
}

static kiln_value b_reduce(tc *c, kiln_op op) {
  int64_t d[8], axes[8];
  int r = rshape(c, 0, 4, true, d), na = 0;
  if (op == KILN_OP_ARGMAX) {
    for (int i = 0; i < r; i++)
      if (!d[i]) d[i] = 3;
    if (!r) d[0] = 4, r = 1;
  }
  double lo = kiln_dtype_is_float(c->t) ? -10 : -5, hi = -lo; /* small ints: ties for argmax */
  kiln_value x = ph(c, c->t, r, d, lo, hi);
  bool keep = trng_int(c->r, 0, 1);
  if (op == KILN_OP_ARGMAX) return kiln_argmax(c->g, x, (int)trng_int(c->r, -r, r - 1), keep);
  for (int i = 0; i < r; i++)
    if (trng_int(c->r, 0, 1)) axes[na++] = trng_int(c->r, 0, 1) ? i : i - r;
  const int64_t *ax = trng_int(c->r, 0, 4) == 0 ? NULL : axes;
  switch (op) {
  case KILN_OP_REDUCE_SUM: return kiln_reduce_sum(c->g, x, ax, na, keep);
  case KILN_OP_REDUCE_MEAN: return kiln_reduce_mean(c->g, x, ax, na, keep);
  case KILN_OP_REDUCE_MAX: return kiln_reduce_max(c->g, x, ax, na, keep);
  default: return kiln_reduce_min(c->g, x, ax, na, keep);
  }
}

static const int64_t MM[] = {1, 2, 5, 6, 7, 12, 13, 31, 32, 33, 64, 65};

static kiln_value b_matmul(tc *c, kiln_op op) {
  int64_t M = trng_pick(c->r, MM, 12), K = trng_pick(c->r, MM, 12), N = trng_pick(c->r, MM, 12);
  if (trng_int(c->r, 0, 9) == 0) K = 0;
  bool ta = trng_int(c->r, 0, 1), tb = trng_int(c->r, 0, 1);
  int batch_rank = (int)trng_int(c->r, 0, 2);
  int64_t da[8], db[8];
  for (int i = 0; i < batch_rank; i++) da[i] = db[i] = trng_int(c->r, 1, 3);
  if (batch_rank && trng_int(c->r, 0, 1)) db[0] = 1; /* broadcast batch dim */
  int rb = batch_rank + 2;
  if (batch_rank && trng_int(c->r, 0, 2) == 0) rb = 2; /* weights shared across the batch */
  da[batch_rank] = ta ? K : M, da[batch_rank + 1] = ta ? M : K;
  db[rb - 2] = tb ? N : K, db[rb - 1] = tb ? K : N;
  double lim = kiln_dtype_is_float(c->t) ? 1 : 9;
  kiln_value a = ph(c, c->t, batch_rank + 2, da, -lim, lim), b = ph(c, c->t, rb, db, -lim, lim);
  if (trng_int(c->r, 0, 7) == 0) { /* NumPy vector forms */
    int64_t v[1] = {ta ? da[batch_rank] : da[batch_rank + 1]};
    kiln_value vec = ph(c, c->t, 1, v, -lim, lim);
    return kiln_matmul(c->g, a, vec, ta, false);
  }
  return kiln_matmul(c->g, a, b, ta, tb);
}

/* A random convolution: strides, dilations, padding modes, groups, layouts, and
 * sometimes the pointwise fast path. */
typedef struct {
  kiln_conv2d_opts o;
  int64_t xd[4], wd[4], k[2];
} conv_case;

static conv_case conv_config(tc *c) {
  int64_t groups = trng_int(c->r, 1, 2), k[2] = {trng_int(c->r, 1, 3), trng_int(c->r, 1, 3)};
  int64_t s[2] = {trng_int(c->r, 1, 2), trng_int(c->r, 1, 2)}, dl[2] = {trng_int(c->r, 1, 2), trng_int(c->r, 1, 2)};
  static const int64_t OC[] = {1, 2, 4, 8, 32, 34};
  int64_t N = trng_int(c->r, 1, 2), C = groups * trng_int(c->r, 1, 3), O = groups * trng_pick(c->r, OC, 6) / (groups == 2 && trng_int(c->r, 0, 1) ? 1 : 1);
  if (O % groups) O *= groups;
  int64_t H = (k[0] - 1) * dl[0] + trng_int(c->r, 1, 8), W = (k[1] - 1) * dl[1] + trng_int(c->r, 1, 8);
  kiln_conv2d_opts o = {.layout = trng_int(c->r, 0, 3) == 0 ? KILN_NCHW : KILN_NHWC, .groups = groups};
  o.strides[0] = s[0], o.strides[1] = s[1], o.dilations[0] = dl[0], o.dilations[1] = dl[1];
  o.padding = (kiln_padding)trng_int(c->r, 0, 2);
  for (int i = 0; i < 4; i++) o.pads[i] = trng_int(c->r, 0, 2);
  if (trng_int(c->r, 0, 4) == 0) { /* pointwise fast path */
    k[0] = k[1] = 1, o.strides[0] = o.strides[1] = 1, o.padding = KILN_PAD_VALID, o.groups = groups = 1;
    O = trng_pick(c->r, OC, 6);
  }
  bool nchw = o.layout == KILN_NCHW;
  int64_t xd[4] = {N, nchw ? C : H, nchw ? H : W, nchw ? W : C};
  int64_t wd[4] = {nchw ? O : k[0], nchw ? C / groups : k[1], nchw ? k[0] : C / groups, nchw ? k[1] : O};
  return (conv_case){.o = o, .xd = {xd[0], xd[1], xd[2], xd[3]}, .wd = {wd[0], wd[1], wd[2], wd[3]}, .k = {k[0], k[1]}};
}

static kiln_value b_conv(tc *c, kiln_op op) {
  conv_case q = conv_config(c);
  return kiln_conv2d(c->g, ph(c, c->t, 4, q.xd, -1, 1), ph(c, c->t, 4, q.wd, -1, 1), &q.o);
}

/* dy has the shape of the convolution's output, found by building it on the side. */
static kiln_value b_conv_filter_grad(tc *c, kiln_op op) {
  conv_case q = conv_config(c);
  kiln_graph *side = kiln_graph_new();
  kiln_shape xs = {4, {q.xd[0], q.xd[1], q.xd[2], q.xd[3]}}, ws = {4, {q.wd[0], q.wd[1], q.wd[2], q.wd[3]}};
  kiln_value y = kiln_conv2d(side, kiln_placeholder(side, "x", c->t, xs), kiln_placeholder(side, "w", c->t, ws), &q.o);
  kiln_shape ys = kiln_value_shape(side, y);
  assert_int_equal(kiln_graph_status(side), KILN_OK);
  kiln_graph_free(side);
  kiln_value x = ph(c, c->t, 4, q.xd, -1, 1);
  return kiln_conv2d_filter_grad(c->g, x, ph(c, c->t, 4, ys.dims, -1, 1), q.k[0], q.k[1], &q.o);
}

static kiln_value b_pool(tc *c, kiln_op op) {
  kiln_pool2d_opts o = {.layout = trng_int(c->r, 0, 3) == 0 ? KILN_NCHW : KILN_NHWC};
  o.window[0] = trng_int(c->r, 1, 3), o.window[1] = trng_int(c->r, 1, 3);
  o.strides[0] = trng_int(c->r, 0, 3), o.strides[1] = trng_int(c->r, 0, 3);
  o.padding = (kiln_padding)trng_int(c->r, 0, 1);
  int64_t N = trng_int(c->r, 1, 2), C = trng_pick(c->r, SIZES, 8), H = o.window[0] + trng_int(c->r, 0, 7),
          W = o.window[1] + trng_int(c->r, 0, 7);
  bool nchw = o.layout == KILN_NCHW;
  int64_t xd[4] = {N, nchw ? C : H, nchw ? H : W, nchw ? W : C};
  kiln_value x = ph(c, c->t, 4, xd, -5, 5);
  if (op == KILN_OP_MAX_POOL2D_GRAD) { /* dy has the pooling's output shape, found by building it on the side */
    kiln_graph *side = kiln_graph_new();
    kiln_shape xs = {4, {xd[0], xd[1], xd[2], xd[3]}};
    kiln_shape ys = kiln_value_shape(side, kiln_max_pool2d(side, kiln_placeholder(side, "x", c->t, xs), &o));
    assert_int_equal(kiln_graph_status(side), KILN_OK);
    kiln_graph_free(side);
    return kiln_max_pool2d_grad(c->g, x, ph(c, c->t, 4, ys.dims, -1, 1), &o);
  }
  return op == KILN_OP_MAX_POOL2D ? kiln_max_pool2d(c->g, x, &o) : kiln_avg_pool2d(c->g, x, &o);
}

static kiln_value b_movement(tc *c, kiln_op op) {
  int64_t d[8], e[8];
  int r = rshape(c, 1, 4, true, d);
  double lo = c->t == KILN_BOOL ? 0 : -9, hi = c->t == KILN_BOOL ? 1 : 9;
  switch (op) {
  case KILN_OP_RESHAPE: {
    kiln_value x = ph(c, c->t, r, d, lo, hi);
    int64_t n = kiln_shape_numel(r, d);
    int64_t f = n && n % 2 == 0 ? 2 : 1;
    return trng_int(c->r, 0, 1) ? kiln_reshape(c->g, x, KILN_SHAPE(-1)) : kiln_reshape(c->g, x, KILN_SHAPE(f, n / f, 1));
  }
  case KILN_OP_TRANSPOSE: {
    int64_t perm[8];
    for (int i = 0; i < r; i++) perm[i] = i;
    for (int i = r - 1; i > 0; i--) {
      int j = (int)trng_int(c->r, 0, i);
      int64_t t = perm[i];
      perm[i] = perm[j], perm[j] = t;
    }
    return kiln_transpose(c->g, ph(c, c->t, r, d, lo, hi), perm, r);
  }
  case KILN_OP_BROADCAST_TO: {
    int re = bshape(c, r, d, e);
    kiln_shape s = {.rank = r};
    memcpy(s.dims, d, sizeof(int64_t) * (size_t)r);
    return kiln_broadcast_to(c->g, ph(c, c->t, re, e, lo, hi), s);
  }
  case KILN_OP_CONCAT: {
    int axis = (int)trng_int(c->r, 0, r - 1), n = (int)trng_int(c->r, 2, 3);
    kiln_value xs[3];
    for (int i = 0; i < n; i++) {
      memcpy(e, d, sizeof e);
      e[axis] = trng_int(c->r, 0, 4);
      xs[i] = ph(c, c->t, r, e, lo, hi);
    }
    return kiln_concat(c->g, xs, n, axis - (trng_int(c->r, 0, 1) ? r : 0));
  }
  case KILN_OP_SLICE: {
    int64_t st[8], en[8], sp[8];
    static const int64_t STEPS[] = {1, 1, 2, 3, -1, -2};
    for (int i = 0; i < r; i++) {
      st[i] = trng_int(c->r, -d[i] - 2, d[i] + 2);
      en[i] = trng_int(c->r, -d[i] - 2, d[i] + 2);
      sp[i] = trng_pick(c->r, STEPS, 6);
    }
    return kiln_slice(c->g, ph(c, c->t, r, d, lo, hi), st, en, sp, (int)trng_int(c->r, 0, r));
  }
  case KILN_OP_PAD: {
    int64_t plo[8], phi[8];
    for (int i = 0; i < r; i++) plo[i] = trng_int(c->r, 0, 2), phi[i] = trng_int(c->r, 0, 2);
    return kiln_pad(c->g, ph(c, c->t, r, d, lo, hi), plo, phi, c->t == KILN_BOOL ? 1 : -3.5);
  }
  case KILN_OP_GATHER: {
    int axis = (int)trng_int(c->r, 0, r - 1);
    if (!d[axis]) d[axis] = 3;
    int ri = rshape(c, 0, 2, true, e);
    kiln_value x = ph(c, c->t, r, d, lo, hi);
    kiln_value ix = ph(c, trng_int(c->r, 0, 1) ? KILN_I32 : KILN_I64, ri, e, (double)-d[axis], (double)(d[axis] - 1));
    return kiln_gather(c->g, x, ix, axis);
  }
  case KILN_OP_UNSLICE: {
    int64_t st[8], en[8], sp[8], xd[8];
    static const int64_t STEPS[] = {1, 1, 2, 3, -1, -2};
    for (int i = 0; i < r; i++) {
      st[i] = trng_int(c->r, -d[i] - 2, d[i] + 2);
      en[i] = trng_int(c->r, -d[i] - 2, d[i] + 2);
      sp[i] = trng_pick(c->r, STEPS, 6);
      int64_t first;
      xd[i] = kiln_slice_dim(d[i], st[i], en[i], sp[i], &first);
    }
    kiln_shape s = {.rank = r};
    memcpy(s.dims, d, sizeof(int64_t) * (size_t)r);
    return kiln_unslice(c->g, ph(c, c->t, r, xd, lo, hi), s, st, en, sp, r);
  }
  case KILN_OP_SCATTER_ADD: {
    /* Few rows and many indices, so repeated indices accumulate. */
    int axis = (int)trng_int(c->r, 0, r - 1);
    if (!d[axis]) d[axis] = 3;
    d[axis] = d[axis] > 4 ? 4 : d[axis];
    int ri = rshape(c, 0, 2, true, e), ur = 0;
    int64_t ud[8];
    for (int i = 0; i < axis; i++) ud[ur++] = d[i];
    for (int i = 0; i < ri; i++) ud[ur++] = e[i];
    for (int i = axis + 1; i < r; i++) ud[ur++] = d[i];
    while (kiln_shape_numel(ur, ud) > 4000)
      for (int i = 0; i < ur; i++) ud[i] = (ud[i] + 1) / 2;
    for (int i = 0; i < ri; i++) e[i] = ud[axis + i];
    for (int i = 0; i < axis; i++) d[i] = ud[i];
    for (int i = axis + 1; i < r; i++) d[i] = ud[i + ri - 1];
    kiln_value ix = ph(c, trng_int(c->r, 0, 1) ? KILN_I32 : KILN_I64, ri, e, (double)-d[axis], (double)(d[axis] - 1));
    kiln_shape s = {.rank = r};
    memcpy(s.dims, d, sizeof(int64_t) * (size_t)r);
    return kiln_scatter_add(c->g, ix, ph(c, c->t, ur, ud, lo, hi), s, axis - (trng_int(c->r, 0, 1) ? r : 0));
  }
  default: { /* ONE_HOT */
    int64_t depth = trng_int(c->r, 0, 6);
    kiln_value ix = ph(c, c->t, r, d, -1, (double)depth);
    return kiln_one_hot(c->g, ix, depth, (kiln_dtype)trng_int(c->r, 0, KILN_DTYPE_COUNT - 1));
  }
  }
}

const op_case CASES[KILN_OP_COUNT] = {
    [KILN_OP_PARAM] = {b_param, ALL, 0, 0},
    [KILN_OP_CONST] = {b_const, ALL, 0, 0},
    [KILN_OP_IOTA] = {b_iota, NUMS, 0, 0},
    [KILN_OP_RNG_UNIFORM] = {b_rng, FLOATS, 0, 0},
    [KILN_OP_RNG_NORMAL] = {b_rng, FLOATS, 1e-6, 1e-6},
    [KILN_OP_NEG] = {b_unary, NUMS, 0, 0},
    [KILN_OP_ABS] = {b_unary, NUMS, 0, 0},
    [KILN_OP_EXP] = {b_unary, FLOATS, 3e-7, 0},
    [KILN_OP_LOG] = {b_unary, FLOATS, 3e-7, 2e-7},
    [KILN_OP_SQRT] = {b_unary, FLOATS, 1e-7, 0},
    [KILN_OP_RSQRT] = {b_unary, FLOATS, 2e-7, 0},
    [KILN_OP_TANH] = {b_unary, FLOATS, 3e-7, 3e-7},
    [KILN_OP_SIGMOID] = {b_unary, FLOATS, 3e-7, 3e-7},
    [KILN_OP_RELU] = {b_unary, NUMS, 0, 0},
    [KILN_OP_SIN] = {b_unary, FLOATS, 2e-7, 2e-7},
    [KILN_OP_COS] = {b_unary, FLOATS, 2e-7, 2e-7},
    [KILN_OP_FLOOR] = {b_unary, FLOATS, 0, 0},
    [KILN_OP_CEIL] = {b_unary, FLOATS, 0, 0},
    [KILN_OP_SIGN] = {b_unary, NUMS, 0, 0},
    [KILN_OP_NOT] = {b_unary, DBOOL, 0, 0},
    [KILN_OP_ADD] = {b_binary, NUMS, 1e-7, 0},
    [KILN_OP_SUB] = {b_binary, NUMS, 1e-7, 0},
    [KILN_OP_MUL] = {b_binary, NUMS, 1e-7, 0},
    [KILN_OP_DIV] = {b_binary, NUMS, 1e-7, 0},
    [KILN_OP_POW] = {b_binary, FLOATS, 3e-7, 0},
    [KILN_OP_MAX] = {b_binary, NUMS, 0, 0},
    [KILN_OP_MIN] = {b_binary, NUMS, 0, 0},
    [KILN_OP_EQUAL] = {b_binary, ALL, 0, 0},
    [KILN_OP_LESS] = {b_binary, ALL, 0, 0},
    [KILN_OP_GREATER] = {b_binary, ALL, 0, 0},
    [KILN_OP_AND] = {b_binary, DBOOL, 0, 0},
    [KILN_OP_OR] = {b_binary, DBOOL, 0, 0},
    [KILN_OP_SELECT] = {b_select, ALL, 0, 0},
    [KILN_OP_CAST] = {b_cast, ALL, 1e-7, 0},
    /* f32 sums of up to 4000 values in [-10, 10] may cancel: the absolute tolerance
     * follows the summands' magnitude (n * eps * max|x| ~ 4000 * 6e-8 * 10), not the result's. */
    [KILN_OP_REDUCE_SUM] = {b_reduce, NUMS, 1e-5, 5e-4},
    [KILN_OP_REDUCE_MEAN] = {b_reduce, NUMS, 1e-5, 1e-5},
    [KILN_OP_REDUCE_MAX] = {b_reduce, NUMS, 0, 0},
    [KILN_OP_REDUCE_MIN] = {b_reduce, NUMS, 0, 0},
    [KILN_OP_ARGMAX] = {b_reduce, NUMS, 0, 0},
    [KILN_OP_MATMUL] = {b_matmul, NUMS, 1e-5, 1e-5},
    [KILN_OP_CONV2D] = {b_conv, FLOATS, 1e-5, 1e-5},
    /* a sum over every output pixel (up to ~340): f32 error up to pixels * eps */
    [KILN_OP_CONV2D_FILTER_GRAD] = {b_conv_filter_grad, FLOATS, 1e-5, 3e-5},
    [KILN_OP_MAX_POOL2D] = {b_pool, FLOATS, 0, 0},
    [KILN_OP_AVG_POOL2D] = {b_pool, FLOATS, 1e-6, 1e-6},
    [KILN_OP_MAX_POOL2D_GRAD] = {b_pool, FLOATS, 1e-6, 1e-6},
    [KILN_OP_RESHAPE] = {b_movement, ALL, 0, 0},
    [KILN_OP_TRANSPOSE] = {b_movement, ALL, 0, 0},
    [KILN_OP_BROADCAST_TO] = {b_movement, ALL, 0, 0},
    [KILN_OP_CONCAT] = {b_movement, ALL, 0, 0},
    [KILN_OP_SLICE] = {b_movement, ALL, 0, 0},
    [KILN_OP_PAD] = {b_movement, ALL, 0, 0},
    [KILN_OP_GATHER] = {b_movement, ALL, 0, 0},
    [KILN_OP_ONE_HOT] = {b_movement, INTS, 0, 0},
    [KILN_OP_UNSLICE] = {b_movement, ALL, 0, 0},
    /* f32 sums of repeated indices: the evaluator adds in the same order, so exact. */
    [KILN_OP_SCATTER_ADD] = {b_movement, NUMS, 0, 0},
};


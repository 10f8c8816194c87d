/* The public graph-builder API. Each call normalises its arguments (negative
 * axes, NumPy broadcasting, "same" padding, NCHW layouts, rank-1 matmul) into
 * the primitive ops of ir/ops.def, so the IR, autodiff and codegen see only
 * canonical forms. Composites (softmax, log_softmax) are built here too. */
#include <math.h>
#include <string.h>
#include "ir/ir.h"

static kiln_value make(kiln_graph *g, kiln_op op, const uint32_t *in, uint32_t nin, const kiln_attrs *a) {
  return kiln_node_make(g, op, in, nin, a, NULL, NULL, 0);
}

/* A builder call with an invalid input fails quietly: the first error is already on the graph. */
static bool valid(kiln_graph *g, kiln_value v, const char *op) {
  if (!g) return false;
  if (g->status != KILN_OK) return false;
  if (v.id >= g->nnodes) {
    kiln_graph_fail(g, KILN_ERR_INVALID, "%s: operand is not a value of this graph", op);
    return false;
  }
  return true;
}

static const kiln_node *node(kiln_graph *g, kiln_value v) { return &g->nodes[v.id]; }

static bool shape_ok(kiln_graph *g, kiln_shape s, const char *op) {
  if (s.rank < 0 || s.rank > KILN_MAX_RANK) {
    kiln_graph_fail(g, KILN_ERR_INVALID, "%s: rank %d is outside 0..%d", op, s.rank, KILN_MAX_RANK);
    return false;
  }
  return true;
}

static kiln_value source(kiln_graph *g, kiln_op op, kiln_dtype t, kiln_shape s, kiln_attrs *a, const char *name,
                         const void *data, size_t nbytes) {
  if (!g || g->status != KILN_OK || !shape_ok(g, s, kiln_ops[op].name)) return (kiln_value){KILN_NONE};
  kiln_attrs_int(a, KILN_ATTR_DTYPE, t);
  kiln_attrs_ints(a, KILN_ATTR_SHAPE, s.dims, s.rank);
  return kiln_node_make(g, op, NULL, 0, a, name, data, nbytes);
}

kiln_value kiln_placeholder(kiln_graph *g, const char *name, kiln_dtype t, kiln_shape s) {
  kiln_attrs a = {0};
  return source(g, KILN_OP_PARAM, t, s, &a, name ? name : "", NULL, 0);
}

kiln_value kiln_constant(kiln_graph *g, kiln_dtype t, kiln_shape s, const void *data) {
  kiln_attrs a = {0};
  if (!g || g->status != KILN_OK || !shape_ok(g, s, "const")) return (kiln_value){KILN_NONE};
  int64_t n = kiln_shape_numel(s.rank, s.dims);
  if (n < 0) return kiln_graph_fail(g, KILN_ERR_INVALID, "const: a constant with data cannot have a symbolic dim");
  if (!data) return kiln_graph_fail(g, KILN_ERR_INVALID, "const: data is NULL");
  return source(g, KILN_OP_CONST, t, s, &a, NULL, data, (size_t)n * kiln_dtype_size(t));
}

kiln_value kiln_fill(kiln_graph *g, kiln_dtype t, kiln_shape s, double v) {
  kiln_attrs a = {0};
  kiln_attrs_float(&a, KILN_ATTR_VALUE, v);
  return source(g, KILN_OP_CONST, t, s, &a, NULL, NULL, 0);
}

kiln_value kiln_scalar(kiln_graph *g, kiln_dtype t, double v) { return kiln_fill(g, t, KILN_SCALAR, v); }

kiln_value kiln_iota(kiln_graph *g, kiln_dtype t, kiln_shape s, int axis) {
  kiln_attrs a = {0};
  kiln_attrs_int(&a, KILN_ATTR_AXIS, axis < 0 ? axis + s.rank : axis);
  return source(g, KILN_OP_IOTA, t, s, &a, NULL, NULL, 0);
}

static kiln_value rng(kiln_graph *g, kiln_op op, kiln_dtype t, kiln_shape s, uint64_t seed, kiln_value key, double lo,
                      double hi) {
  if (!g || g->status != KILN_OK || !shape_ok(g, s, kiln_ops[op].name)) return (kiln_value){KILN_NONE};
  if (key.id == KILN_NONE) key = kiln_scalar(g, KILN_I64, 0);
  kiln_attrs a = {0};
  kiln_attrs_int(&a, KILN_ATTR_SEED, (int64_t)seed);
  kiln_attrs_float(&a, KILN_ATTR_LOW, lo);
  kiln_attrs_float(&a, KILN_ATTR_HIGH, hi);
  kiln_attrs_int(&a, KILN_ATTR_DTYPE, t);
  kiln_attrs_ints(&a, KILN_ATTR_SHAPE, s.dims, s.rank);
  return kiln_node_make(g, op, &key.id, 1, &a, NULL, NULL, 0);
}

kiln_value kiln_random_uniform(kiln_graph *g, kiln_dtype t, kiln_shape s, uint64_t seed, double low, double high) {
  return rng(g, KILN_OP_RNG_UNIFORM, t, s, seed, (kiln_value){KILN_NONE}, low, high);
}
kiln_value kiln_random_normal(kiln_graph *g, kiln_dtype t, kiln_shape s, uint64_t seed, double mean, double sd) {
  return rng(g, KILN_OP_RNG_NORMAL, t, s, seed, (kiln_value){KILN_NONE}, mean, sd);
}
kiln_value kiln_random_uniform_stream(kiln_graph *g, kiln_dtype t, kiln_shape s, uint64_t seed, kiln_value key,
                                      double low, double high) {
  return rng(g, KILN_OP_RNG_UNIFORM, t, s, seed, key, low, high);
}
kiln_value kiln_random_normal_stream(kiln_graph *g, kiln_dtype t, kiln_shape s, uint64_t seed, kiln_value key,
                                     double mean, double sd) {
  return rng(g, KILN_OP_RNG_NORMAL, t, s, seed, key, mean, sd);
}

/* ---- broadcasting ---- */

kiln_value kiln_broadcast_to(kiln_graph *g, kiln_value x, kiln_shape s) {
  if (!valid(g, x, "broadcast_to") || !shape_ok(g, s, "broadcast_to")) return (kiln_value){KILN_NONE};
  const kiln_node *n = node(g, x);
  if (n->rank == s.rank && !memcmp(n->dims, s.dims, sizeof(int64_t) * (size_t)s.rank)) return x;
  kiln_attrs a = {0};
  kiln_attrs_ints(&a, KILN_ATTR_SHAPE, s.dims, s.rank);
  return make(g, KILN_OP_BROADCAST_TO, &x.id, 1, &a);
}

/* NumPy's rule over n shapes: align trailing dims; each dim is equal or 1. */
static bool broadcast_shapes(kiln_graph *g, const char *op, const kiln_shape *ss, const kiln_dtype *ts, int n,
                             kiln_shape *out) {
  out->rank = 0;
  for (int i = 0; i < n; i++)
    if (ss[i].rank > out->rank) out->rank = ss[i].rank;
  for (int d = 0; d < out->rank; d++) out->dims[d] = 1;
  for (int i = 0; i < n; i++) {
    for (int d = 0; d < ss[i].rank; d++) {
      int64_t *o = &out->dims[out->rank - ss[i].rank + d], v = ss[i].dims[d];
      if (v == *o || v == 1) continue;
      if (*o == 1) {
        *o = v;
        continue;
      }
      char desc[512];
      size_t k = 0;
      desc[0] = 0;
      for (int j = 0; j < n && k < sizeof desc; j++) {
        char sh[128];
        k += (size_t)snprintf(desc + k, sizeof desc - k, "%s%s%s", j ? ", " : "", ts ? kiln_dtype_name(ts[j]) : "",
                              kiln_shape_str(sh, sizeof sh, ss[j].rank, ss[j].dims));
      }
      kiln_graph_fail(g, KILN_ERR_INVALID,
                      "%s(%s): shapes are not broadcast-compatible (NumPy rule: trailing dims must be equal or 1)",
                      op, desc);
      return false;
    }
  }
  return true;
}

static kiln_value nary(kiln_graph *g, kiln_op op, kiln_value *xs, int n) {
  for (int i = 0; i < n; i++)
    if (!valid(g, xs[i], kiln_ops[op].name)) return (kiln_value){KILN_NONE};
  kiln_shape s, ss[3];
  kiln_dtype ts[3];
  for (int i = 0; i < n; i++) {
    ss[i] = kiln_value_shape(g, xs[i]);
    ts[i] = (kiln_dtype)node(g, xs[i])->dtype;
  }
  if (!broadcast_shapes(g, kiln_ops[op].name, ss, ts, n, &s)) return (kiln_value){KILN_NONE};
  uint32_t ids[3];
  for (int i = 0; i < n; i++) ids[i] = kiln_broadcast_to(g, xs[i], s).id;
  return make(g, op, ids, (uint32_t)n, NULL);
}

static kiln_value unary(kiln_graph *g, kiln_op op, kiln_value x) { return nary(g, op, &x, 1); }
static kiln_value binary(kiln_graph *g, kiln_op op, kiln_value a, kiln_value b) {
  kiln_value xs[2] = {a, b};
  return nary(g, op, xs, 2);
}

#define UNARY(fn, OP) \
  kiln_value kiln_##fn(kiln_graph *g, kiln_value x) { return unary(g, KILN_OP_##OP, x); }
#define BINARY(fn, OP) \
  kiln_value kiln_##fn(kiln_graph *g, kiln_value a, kiln_value b) { return binary(g, KILN_OP_##OP, a, b); }
UNARY(neg, NEG)
UNARY(abs, ABS)
UNARY(exp, EXP)
UNARY(log, LOG)
UNARY(sqrt, SQRT)
UNARY(rsqrt, RSQRT)
UNARY(tanh, TANH)
UNARY(sigmoid, SIGMOID)
UNARY(relu, RELU)
UNARY(sin, SIN)
UNARY(cos, COS)
UNARY(floor, FLOOR)
UNARY(ceil, CEIL)
UNARY(sign, SIGN)
UNARY(logical_not, NOT)
BINARY(add, ADD)
BINARY(sub, SUB)
BINARY(mul, MUL)
BINARY(div, DIV)
BINARY(pow, POW)
BINARY(maximum, MAX)
BINARY(minimum, MIN)
BINARY(equal, EQUAL)
BINARY(less, LESS)
BINARY(greater, GREATER)
BINARY(logical_and, AND)
BINARY(logical_or, OR)
#undef UNARY
#undef BINARY

kiln_value kiln_select(kiln_graph *g, kiln_value c, kiln_value a, kiln_value b) {
  kiln_value xs[3] = {c, a, b};
  return nary(g, KILN_OP_SELECT, xs, 3);
}

kiln_value kiln_cast(kiln_graph *g, kiln_value x, kiln_dtype t) {
  if (!valid(g, x, "cast")) return (kiln_value){KILN_NONE};
  if (node(g, x)->dtype == t) return x;
  kiln_attrs a = {0};
  kiln_attrs_int(&a, KILN_ATTR_DTYPE, t);
  return make(g, KILN_OP_CAST, &x.id, 1, &a);
}

/* ---- reductions ---- */

static bool norm_axis(kiln_graph *g, const char *op, int64_t axis, int rank, int64_t *out) {
  int64_t a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= rank) {
    kiln_graph_fail(g, KILN_ERR_INVALID, "%s: axis %lld out of range for rank %d", op, (long long)axis, rank);
    return false;
  }
  *out = a;
  return true;
}

static kiln_value reduce(kiln_graph *g, kiln_op op, kiln_value x, const int64_t *axes, int naxes, bool keep) {
  const char *name = kiln_ops[op].name;
  if (!valid(g, x, name)) return (kiln_value){KILN_NONE};
  int rank = node(g, x)->rank;
  bool on[KILN_MAX_RANK] = {0};
  if (!axes) {
    for (int i = 0; i < rank; i++) on[i] = true;
  } else {
    if (naxes < 0 || naxes > KILN_MAX_RANK) return kiln_graph_fail(g, KILN_ERR_INVALID, "%s: bad axis count %d", name, naxes);
    for (int i = 0; i < naxes; i++) {
      int64_t a;
      if (!norm_axis(g, name, axes[i], rank, &a)) return (kiln_value){KILN_NONE};
      if (on[a]) return kiln_graph_fail(g, KILN_ERR_INVALID, "%s: axis %lld listed twice", name, (long long)axes[i]);
      on[a] = true;
    }
  }
  int64_t sorted[KILN_MAX_RANK];
  int n = 0;
  for (int i = 0; i < rank; i++)
    if (on[i]) sorted[n++] = i;
  kiln_attrs a = {0};
  kiln_attrs_ints(&a, KILN_ATTR_AXES, sorted, n);
  kiln_attrs_int(&a, KILN_ATTR_KEEPDIMS, keep);
  return make(g, op, &x.id, 1, &a);
}

kiln_value kiln_reduce_sum(kiln_graph *g, kiln_value x, const int64_t *axes, int n, bool k) {
  return reduce(g, KILN_OP_REDUCE_SUM, x, axes, n, k);
}
kiln_value kiln_reduce_mean(kiln_graph *g, kiln_value x, const int64_t *axes, int n, bool k) {
  return reduce(g, KILN_OP_REDUCE_MEAN, x, axes, n, k);
}
kiln_value kiln_reduce_max(kiln_graph *g, kiln_value x, const int64_t *axes, int n, bool k) {
  return reduce(g, KILN_OP_REDUCE_MAX, x, axes, n, k);
}
kiln_value kiln_reduce_min(kiln_graph *g, kiln_value x, const int64_t *axes, int n, bool k) {
  return reduce(g, KILN_OP_REDUCE_MIN, x, axes, n, k);
}

kiln_value kiln_argmax(kiln_graph *g, kiln_value x, int axis, bool keep) {
  if (!valid(g, x, "argmax")) return (kiln_value){KILN_NONE};
  int64_t a;
  if (!norm_axis(g, "argmax", axis, node(g, x)->rank, &a)) return (kiln_value){KILN_NONE};
  kiln_attrs at = {0};
  kiln_attrs_int(&at, KILN_ATTR_AXIS, a);
  kiln_attrs_int(&at, KILN_ATTR_KEEPDIMS, keep);
  return make(g, KILN_OP_ARGMAX, &x.id, 1, &at);
}

/* ---- movement ---- */

kiln_value kiln_reshape(kiln_graph *g, kiln_value x, kiln_shape s) {
  if (!valid(g, x, "reshape") || !shape_ok(g, s, "reshape")) return (kiln_value){KILN_NONE};
  const kiln_node *n = node(g, x);
  if (n->rank == s.rank && !memcmp(n->dims, s.dims, sizeof(int64_t) * (size_t)s.rank) &&
      kiln_shape_numel(s.rank, s.dims) >= 0)
    return x;
  kiln_attrs a = {0};
  kiln_attrs_ints(&a, KILN_ATTR_SHAPE, s.dims, s.rank);
  return make(g, KILN_OP_RESHAPE, &x.id, 1, &a);
}

kiln_value kiln_transpose(kiln_graph *g, kiln_value x, const int64_t *perm, int n) {
  if (!valid(g, x, "transpose")) return (kiln_value){KILN_NONE};
  if (n < 0 || n > KILN_MAX_RANK || !perm) return kiln_graph_fail(g, KILN_ERR_INVALID, "transpose: bad perm");
  bool identity = true;
  for (int i = 0; i < n; i++) identity &= perm[i] == i;
  if (identity && n == node(g, x)->rank) return x;
  kiln_attrs a = {0};
  kiln_attrs_ints(&a, KILN_ATTR_PERM, perm, n);
  return make(g, KILN_OP_TRANSPOSE, &x.id, 1, &a);
}

kiln_value kiln_concat(kiln_graph *g, const kiln_value *xs, int n, int axis) {
  if (!g || g->status != KILN_OK) return (kiln_value){KILN_NONE};
  if (n < 1 || !xs) return kiln_graph_fail(g, KILN_ERR_INVALID, "concat: needs at least one input");
  uint32_t *ids = kiln_arena_alloc(&g->arena, sizeof(uint32_t) * (size_t)n);
  if (!ids) return kiln_graph_fail(g, KILN_ERR_NOMEM, "concat: out of memory");
  for (int i = 0; i < n; i++) {
    if (!valid(g, xs[i], "concat")) return (kiln_value){KILN_NONE};
    ids[i] = xs[i].id;
  }
  if (n == 1) return xs[0];
  int64_t a;
  if (!norm_axis(g, "concat", axis, node(g, xs[0])->rank, &a)) return (kiln_value){KILN_NONE};
  kiln_attrs at = {0};
  kiln_attrs_int(&at, KILN_ATTR_AXIS, a);
  return make(g, KILN_OP_CONCAT, ids, (uint32_t)n, &at);
}

/* starts/ends/steps of a slice of a tensor of shape full; false on a 0 step. */
static bool slice_attrs(kiln_graph *g, const char *op, kiln_shape full, const int64_t *starts, const int64_t *ends,
                        const int64_t *steps, int n, kiln_attrs *a) {
  if (n < 0 || n > full.rank) {
    kiln_graph_fail(g, KILN_ERR_INVALID, "%s: %d dims given for rank %d", op, n, full.rank);
    return false;
  }
  int64_t st[KILN_MAX_RANK], en[KILN_MAX_RANK], sp[KILN_MAX_RANK];
  for (int i = 0; i < full.rank; i++) {
    st[i] = i < n && starts ? starts[i] : 0;
    en[i] = i < n && ends ? ends[i] : INT64_MAX;
    sp[i] = i < n && steps ? steps[i] : 1;
    if (sp[i] == 0) {
      kiln_graph_fail(g, KILN_ERR_INVALID, "%s: step of dim %d is 0", op, i);
      return false;
    }
    /* Canonical form for whole dims, so x[:] slices dedup and the batch dim can be kept. */
    int64_t d = full.dims[i], first;
    if (d >= 0 && sp[i] == 1 && kiln_slice_dim(d, st[i], en[i], 1, &first) == d) {
      st[i] = 0;
      en[i] = INT64_MAX;
    }
  }
  kiln_attrs_ints(a, KILN_ATTR_STARTS, st, full.rank);
  kiln_attrs_ints(a, KILN_ATTR_ENDS, en, full.rank);
  kiln_attrs_ints(a, KILN_ATTR_STEPS, sp, full.rank);
  return true;
}

kiln_value kiln_slice(kiln_graph *g, kiln_value x, const int64_t *starts, const int64_t *ends, const int64_t *steps,
                      int n) {
  if (!valid(g, x, "slice")) return (kiln_value){KILN_NONE};
  kiln_attrs a = {0};
  if (!slice_attrs(g, "slice", kiln_value_shape(g, x), starts, ends, steps, n, &a)) return (kiln_value){KILN_NONE};
  return make(g, KILN_OP_SLICE, &x.id, 1, &a);
}

kiln_value kiln_unslice(kiln_graph *g, kiln_value x, kiln_shape s, const int64_t *starts, const int64_t *ends,
                        const int64_t *steps, int n) {
  if (!valid(g, x, "unslice") || !shape_ok(g, s, "unslice")) return (kiln_value){KILN_NONE};
  kiln_attrs a = {0};
  if (!slice_attrs(g, "unslice", s, starts, ends, steps, n, &a)) return (kiln_value){KILN_NONE};
  kiln_attrs_ints(&a, KILN_ATTR_SHAPE, s.dims, s.rank);
  return make(g, KILN_OP_UNSLICE, &x.id, 1, &a);
}

kiln_value kiln_pad(kiln_graph *g, kiln_value x, const int64_t *lo, const int64_t *hi, double value) {
  if (!valid(g, x, "pad")) return (kiln_value){KILN_NONE};
  if (!lo || !hi) return kiln_graph_fail(g, KILN_ERR_INVALID, "pad: pads are NULL");
  kiln_attrs a = {0};
  int r = node(g, x)->rank;
  kiln_attrs_ints(&a, KILN_ATTR_PADS_LO, lo, r);
  kiln_attrs_ints(&a, KILN_ATTR_PADS_HI, hi, r);
  kiln_attrs_float(&a, KILN_ATTR_VALUE, value);
  return make(g, KILN_OP_PAD, &x.id, 1, &a);
}

kiln_value kiln_gather(kiln_graph *g, kiln_value x, kiln_value idx, int axis) {
  if (!valid(g, x, "gather") || !valid(g, idx, "gather")) return (kiln_value){KILN_NONE};
  int64_t a;
  if (!norm_axis(g, "gather", axis, node(g, x)->rank, &a)) return (kiln_value){KILN_NONE};
  kiln_attrs at = {0};
  kiln_attrs_int(&at, KILN_ATTR_AXIS, a);
  uint32_t ids[2] = {x.id, idx.id};
  return make(g, KILN_OP_GATHER, ids, 2, &at);
}

kiln_value kiln_scatter_add(kiln_graph *g, kiln_value idx, kiln_value updates, kiln_shape s, int axis) {
  if (!valid(g, idx, "scatter_add") || !valid(g, updates, "scatter_add") || !shape_ok(g, s, "scatter_add"))
    return (kiln_value){KILN_NONE};
  int64_t a;
  if (!norm_axis(g, "scatter_add", axis, s.rank, &a)) return (kiln_value){KILN_NONE};
  kiln_attrs at = {0};
  kiln_attrs_int(&at, KILN_ATTR_AXIS, a);
  kiln_attrs_ints(&at, KILN_ATTR_SHAPE, s.dims, s.rank);
  uint32_t ids[2] = {idx.id, updates.id};
  return make(g, KILN_OP_SCATTER_ADD, ids, 2, &at);
}

kiln_value kiln_one_hot(kiln_graph *g, kiln_value idx, int64_t depth, kiln_dtype t) {
  if (!valid(g, idx, "one_hot")) return (kiln_value){KILN_NONE};
  kiln_attrs a = {0};
  kiln_attrs_int(&a, KILN_ATTR_DEPTH, depth);
  kiln_attrs_int(&a, KILN_ATTR_DTYPE, t);
  return make(g, KILN_OP_ONE_HOT, &idx.id, 1, &a);
}

/* ---- matmul ---- */

/* Shape with symbolic dims written as -1, so kiln_reshape keeps the batch symbol. */
static kiln_shape reshape_target(kiln_shape s) {
  for (int i = 0; i < s.rank; i++)
    if (s.dims[i] < 0) s.dims[i] = -1;
  return s;
}

kiln_value kiln_matmul(kiln_graph *g, kiln_value a, kiln_value b, bool ta, bool tb) {
  if (!valid(g, a, "matmul") || !valid(g, b, "matmul")) return (kiln_value){KILN_NONE};
  kiln_shape sa = kiln_value_shape(g, a), sb = kiln_value_shape(g, b);
  if (sa.rank == 0 || sb.rank == 0) return kiln_graph_fail(g, KILN_ERR_INVALID, "matmul: operands must have rank >= 1");
  /* NumPy: a rank-1 a is a row vector, a rank-1 b a column vector; the added dim is dropped after. */
  bool a_vec = sa.rank == 1, b_vec = sb.rank == 1;
  if (a_vec) a = kiln_reshape(g, a, KILN_SHAPE(1, sa.dims[0])), ta = false;
  if (b_vec) b = kiln_reshape(g, b, KILN_SHAPE(sb.dims[0], 1)), tb = false;
  if (g->status != KILN_OK) return (kiln_value){KILN_NONE};
  sa = kiln_value_shape(g, a);
  sb = kiln_value_shape(g, b);
  kiln_attrs at = {0};
  kiln_attrs_int(&at, KILN_ATTR_TRANSPOSE_A, ta);
  kiln_attrs_int(&at, KILN_ATTR_TRANSPOSE_B, tb);
  kiln_value out;
  if (sb.rank == 2 && sa.rank > 2 && !ta && kiln_shape_numel(sa.rank, sa.dims) > 0) {
    /* [..., M, K] x [K, N]: fold the batch dims into M rather than broadcast the weights
     * (not for empty a, where reshape(-1, K) would be ambiguous). */
    uint32_t ids[2] = {kiln_reshape(g, a, KILN_SHAPE(-1, sa.dims[sa.rank - 1])).id, b.id};
    if (g->status != KILN_OK) return (kiln_value){KILN_NONE};
    out = make(g, KILN_OP_MATMUL, ids, 2, &at);
    if (g->status != KILN_OK) return (kiln_value){KILN_NONE};
    kiln_shape so = sa;
    so.dims[so.rank - 1] = node(g, out)->dims[1];
    out = kiln_reshape(g, out, so);
  } else {
    /* Broadcast the batch (leading) dims of both operands to a common shape. */
    kiln_shape ba = sa, bb = sb, bs;
    ba.rank -= 2;
    bb.rank -= 2;
    kiln_shape both[2] = {ba, bb};
    if (!broadcast_shapes(g, "matmul", both, NULL, 2, &bs)) return (kiln_value){KILN_NONE};
    kiln_shape fa = bs, fb = bs;
    fa.rank = fb.rank = bs.rank + 2;
    fa.dims[bs.rank] = sa.dims[sa.rank - 2];
    fa.dims[bs.rank + 1] = sa.dims[sa.rank - 1];
    fb.dims[bs.rank] = sb.dims[sb.rank - 2];
    fb.dims[bs.rank + 1] = sb.dims[sb.rank - 1];
    uint32_t ids[2] = {kiln_broadcast_to(g, a, fa).id, kiln_broadcast_to(g, b, fb).id};
    if (g->status != KILN_OK) return (kiln_value){KILN_NONE};
    out = make(g, KILN_OP_MATMUL, ids, 2, &at);
  }
  if (g->status != KILN_OK) return (kiln_value){KILN_NONE};
  if (a_vec || b_vec) {
    kiln_shape s = kiln_value_shape(g, out);
    if (b_vec) s.rank--;               /* drop N = 1 */
    if (a_vec) {                       /* drop M = 1 */
      if (!b_vec) s.dims[s.rank - 2] = s.dims[s.rank - 1];
      s.rank--;
    }
    out = kiln_reshape(g, out, reshape_target(s));
  }
  return out;
}

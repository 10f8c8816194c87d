/* Gradient rules for elementwise ops, reductions, matmul and movement.
 * Conventions follow TensorFlow's registered gradients: ties in max/min send the
 * gradient to the first operand, reduce_max splits it evenly among tied maxima,
 * relu'(0) = 0, and pow's exponent gradient is 0 where the base is <= 0. */
#include <string.h>
#include "frontend/grad.h"

static kiln_graph *G(grad_ctx *c) { return c->g; }
static kiln_dtype T(grad_ctx *c) { return (kiln_dtype)c->n.dtype; }
static kiln_value sc(grad_ctx *c, double v) { return kiln_scalar(c->g, T(c), v); }
static kiln_value zero_where(grad_ctx *c, kiln_value cond, kiln_value v, bool keep_if) {
  return keep_if ? kiln_select(G(c), cond, v, sc(c, 0)) : kiln_select(G(c), cond, sc(c, 0), v);
}
static const kiln_node *node_of(grad_ctx *c, kiln_value v) { return &c->g->nodes[v.id]; }

/* ---- elementwise ---- */

static void g_neg(grad_ctx *c, kiln_value *dx) { dx[0] = kiln_neg(G(c), c->dy); }
static void g_abs(grad_ctx *c, kiln_value *dx) { dx[0] = kiln_mul(G(c), c->dy, kiln_sign(G(c), grad_input(c, 0))); }
static void g_exp(grad_ctx *c, kiln_value *dx) { dx[0] = kiln_mul(G(c), c->dy, c->y); }
static void g_log(grad_ctx *c, kiln_value *dx) { dx[0] = kiln_div(G(c), c->dy, grad_input(c, 0)); }
static void g_sqrt(grad_ctx *c, kiln_value *dx) {
  dx[0] = kiln_div(G(c), c->dy, kiln_mul(G(c), sc(c, 2), c->y));
}
/* d/dx x^-1/2 = -1/2 x^-3/2 = -1/2 y^3 */
static void g_rsqrt(grad_ctx *c, kiln_value *dx) {
  kiln_value y3 = kiln_mul(G(c), kiln_mul(G(c), c->y, c->y), c->y);
  dx[0] = kiln_mul(G(c), c->dy, kiln_mul(G(c), sc(c, -0.5), y3));
}
static void g_tanh(grad_ctx *c, kiln_value *dx) {
  dx[0] = kiln_mul(G(c), c->dy, kiln_sub(G(c), sc(c, 1), kiln_mul(G(c), c->y, c->y)));
}
static void g_sigmoid(grad_ctx *c, kiln_value *dx) {
  dx[0] = kiln_mul(G(c), c->dy, kiln_mul(G(c), c->y, kiln_sub(G(c), sc(c, 1), c->y)));
}
/* From the output (y > 0 exactly where x > 0), as tanh and sigmoid do: the forward
 * pre-activation then has no reader but relu and fuses into the matmul/conv before it. */
static void g_relu(grad_ctx *c, kiln_value *dx) {
  dx[0] = zero_where(c, kiln_greater(G(c), c->y, sc(c, 0)), c->dy, true);
}
static void g_sin(grad_ctx *c, kiln_value *dx) { dx[0] = kiln_mul(G(c), c->dy, kiln_cos(G(c), grad_input(c, 0))); }
static void g_cos(grad_ctx *c, kiln_value *dx) {
  dx[0] = kiln_neg(G(c), kiln_mul(G(c), c->dy, kiln_sin(G(c), grad_input(c, 0))));
}

static void g_add(grad_ctx *c, kiln_value *dx) { dx[0] = dx[1] = c->dy; }
static void g_sub(grad_ctx *c, kiln_value *dx) {
  dx[0] = c->dy;
  dx[1] = kiln_neg(G(c), c->dy);
}
static void g_mul(grad_ctx *c, kiln_value *dx) {
  dx[0] = kiln_mul(G(c), c->dy, grad_input(c, 1));
  dx[1] = kiln_mul(G(c), c->dy, grad_input(c, 0));
}
/* y = a / b: da = dy / b, db = -dy * y / b */
static void g_div(grad_ctx *c, kiln_value *dx) {
  kiln_value b = grad_input(c, 1);
  dx[0] = kiln_div(G(c), c->dy, b);
  dx[1] = kiln_neg(G(c), kiln_div(G(c), kiln_mul(G(c), c->dy, c->y), b));
}
static void g_pow(grad_ctx *c, kiln_value *dx) {
  kiln_value a = grad_input(c, 0), b = grad_input(c, 1);
  dx[0] = kiln_mul(G(c), c->dy, kiln_mul(G(c), b, kiln_pow(G(c), a, kiln_sub(G(c), b, sc(c, 1)))));
  kiln_value loga = zero_where(c, kiln_greater(G(c), a, sc(c, 0)), kiln_log(G(c), a), true);
  dx[1] = kiln_mul(G(c), c->dy, kiln_mul(G(c), c->y, loga));
}
static void g_max(grad_ctx *c, kiln_value *dx) {
  kiln_value first = kiln_logical_not(G(c), kiln_less(G(c), grad_input(c, 0), grad_input(c, 1)));
  dx[0] = zero_where(c, first, c->dy, true);
  dx[1] = zero_where(c, first, c->dy, false);
}
static void g_min(grad_ctx *c, kiln_value *dx) {
  kiln_value first = kiln_logical_not(G(c), kiln_greater(G(c), grad_input(c, 0), grad_input(c, 1)));
  dx[0] = zero_where(c, first, c->dy, true);
  dx[1] = zero_where(c, first, c->dy, false);
}
static void g_select(grad_ctx *c, kiln_value *dx) {
  kiln_value cond = grad_input(c, 0);
  dx[1] = zero_where(c, cond, c->dy, true);
  dx[2] = zero_where(c, cond, c->dy, false);
}
static void g_cast(grad_ctx *c, kiln_value *dx) {
  dx[0] = kiln_cast(G(c), c->dy, (kiln_dtype)node_of(c, grad_input(c, 0))->dtype);
}

/* ---- reductions ---- */

/* x's shape with the reduced axes set to 1, and whether each axis is reduced. */
static kiln_shape kept_shape(grad_ctx *c, bool *reduced) {
  const kiln_node *x = node_of(c, grad_input(c, 0));
  kiln_shape s = grad_node_shape(x);
  int64_t axes[KILN_MAX_RANK];
  int na = kiln_attr_ints(&c->n, KILN_ATTR_AXES, axes);
  memset(reduced, 0, sizeof(bool) * KILN_MAX_RANK);
  for (int i = 0; i < na; i++) reduced[axes[i]] = true;
  for (int d = 0; d < s.rank; d++)
    if (reduced[d]) s.dims[d] = 1;
  return s;
}

/* v (shaped like y) reshaped to keepdims form and broadcast back to x's shape. */
static kiln_value spread(grad_ctx *c, kiln_value v, kiln_shape kept) {
  const kiln_node *x = node_of(c, grad_input(c, 0));
  return kiln_broadcast_to(G(c), kiln_reshape(G(c), v, kept), grad_node_shape(x));
}

static void g_reduce_sum(grad_ctx *c, kiln_value *dx) {
  bool red[KILN_MAX_RANK];
  kiln_shape kept = kept_shape(c, red);
  dx[0] = spread(c, c->dy, kept);
}

/* The element count may involve the batch symbol, so it is computed in the graph
 * (a reduce_sum of ones, which constant folding turns into a number). */
static void g_reduce_mean(grad_ctx *c, kiln_value *dx) {
  bool red[KILN_MAX_RANK];
  kiln_shape kept = kept_shape(c, red);
  const kiln_node *x = node_of(c, grad_input(c, 0));
  kiln_shape rs = {0};
  for (int d = 0; d < x->rank; d++)
    if (red[d]) rs.dims[rs.rank++] = x->dims[d];
  kiln_value count = kiln_reduce_sum(G(c), kiln_fill(G(c), T(c), rs, 1), NULL, 0, false);
  dx[0] = spread(c, kiln_div(G(c), c->dy, count), kept);
}

/* Ties share the gradient evenly, as in TensorFlow. */
static void g_reduce_extreme(grad_ctx *c, kiln_value *dx) {
  bool red[KILN_MAX_RANK];
  kiln_shape kept = kept_shape(c, red);
  int64_t axes[KILN_MAX_RANK];
  int na = kiln_attr_ints(&c->n, KILN_ATTR_AXES, axes);
  kiln_value x = grad_input(c, 0);
  kiln_value hit = kiln_cast(G(c), kiln_equal(G(c), x, spread(c, c->y, kept)), T(c));
  kiln_value count = kiln_reduce_sum(G(c), hit, axes, na, true);
  dx[0] = kiln_mul(G(c), hit, kiln_broadcast_to(G(c), kiln_div(G(c), kiln_reshape(G(c), c->dy, kept), count),
                                                 grad_node_shape(node_of(c, x))));
}

/* ---- matmul: with A' = op(A), B' = op(B): dA' = dC B'^T, dB' = A'^T dC ---- */

static kiln_value mm(grad_ctx *c, kiln_value a, kiln_value b, bool ta, bool tb) {
  kiln_attrs at = {0};
  kiln_attrs_int(&at, KILN_ATTR_TRANSPOSE_A, ta);
  kiln_attrs_int(&at, KILN_ATTR_TRANSPOSE_B, tb);
  uint32_t ids[2] = {a.id, b.id};
  return kiln_node_make(c->g, KILN_OP_MATMUL, ids, 2, &at, NULL, NULL, 0);
}

static void g_matmul(grad_ctx *c, kiln_value *dx) {
  bool ta = kiln_attr_int(&c->n, KILN_ATTR_TRANSPOSE_A, 0), tb = kiln_attr_int(&c->n, KILN_ATTR_TRANSPOSE_B, 0);
  kiln_value a = grad_input(c, 0), b = grad_input(c, 1), d = c->dy;
  if (!ta && !tb) dx[0] = mm(c, d, b, false, true), dx[1] = mm(c, a, d, true, false);
  else if (ta && !tb) dx[0] = mm(c, b, d, false, true), dx[1] = mm(c, a, d, false, false);
  else if (!ta && tb) dx[0] = mm(c, d, b, false, false), dx[1] = mm(c, d, a, true, false);
  else dx[0] = mm(c, b, d, true, true), dx[1] = mm(c, d, a, true, true);
}

/* ---- movement ---- */

static void g_reshape(grad_ctx *c, kiln_value *dx) {
  dx[0] = kiln_reshape(G(c), c->dy, grad_node_shape(node_of(c, grad_input(c, 0))));
}

static void g_transpose(grad_ctx *c, kiln_value *dx) {
  int64_t perm[KILN_MAX_RANK], inv[KILN_MAX_RANK];
  int r = kiln_attr_ints(&c->n, KILN_ATTR_PERM, perm);
  for (int i = 0; i < r; i++) inv[perm[i]] = i;
  dx[0] = kiln_transpose(G(c), c->dy, inv, r);
}

/* Sum over the dims broadcasting created: leading ones and size-1 dims that grew. */
static void g_broadcast_to(grad_ctx *c, kiln_value *dx) {
  const kiln_node *x = node_of(c, grad_input(c, 0));
  kiln_shape xs = grad_node_shape(x);
  int lead = c->n.rank - x->rank, na = 0;
  int64_t axes[KILN_MAX_RANK];
  for (int d = 0; d < c->n.rank; d++)
    if (d < lead || (x->dims[d - lead] == 1 && c->n.dims[d] != 1)) axes[na++] = d;
  dx[0] = kiln_reshape(G(c), kiln_reduce_sum(G(c), c->dy, axes, na, false), xs);
}

static void g_concat(grad_ctx *c, kiln_value *dx) {
  int64_t axis = kiln_attr_int(&c->n, KILN_ATTR_AXIS, 0), off = 0;
  for (uint32_t i = 0; i < c->n.ninputs; i++) {
    int64_t len = node_of(c, grad_input(c, i))->dims[axis];
    int64_t st[KILN_MAX_RANK] = {0}, en[KILN_MAX_RANK], sp[KILN_MAX_RANK];
    for (int d = 0; d < c->n.rank; d++) en[d] = INT64_MAX, sp[d] = 1;
    st[axis] = off;
    en[axis] = off + len;
    dx[i] = kiln_slice(G(c), c->dy, st, en, sp, c->n.rank);
    off += len;
  }
}

/* slice and unslice are each other's transpose and share their attributes. */
static kiln_value reslice(grad_ctx *c, kiln_op op, const kiln_node *shape_from) {
  kiln_attrs a = {0};
  int64_t v[KILN_MAX_RANK];
  static const kiln_attr_key keys[3] = {KILN_ATTR_STARTS, KILN_ATTR_ENDS, KILN_ATTR_STEPS};
  for (int k = 0; k < 3; k++) kiln_attrs_ints(&a, keys[k], v, kiln_attr_ints(&c->n, keys[k], v));
  if (op == KILN_OP_UNSLICE) {
    kiln_shape s = grad_node_shape(shape_from);
    kiln_attrs_ints(&a, KILN_ATTR_SHAPE, s.dims, s.rank);
  }
  return kiln_node_make(c->g, op, &c->dy.id, 1, &a, NULL, NULL, 0);
}
static void g_slice(grad_ctx *c, kiln_value *dx) { dx[0] = reslice(c, KILN_OP_UNSLICE, node_of(c, grad_input(c, 0))); }
static void g_unslice(grad_ctx *c, kiln_value *dx) { dx[0] = reslice(c, KILN_OP_SLICE, NULL); }

static void g_pad(grad_ctx *c, kiln_value *dx) {
  const kiln_node *x = node_of(c, grad_input(c, 0));
  int64_t lo[KILN_MAX_RANK], st[KILN_MAX_RANK], en[KILN_MAX_RANK];
  kiln_attr_ints(&c->n, KILN_ATTR_PADS_LO, lo);
  for (int d = 0; d < x->rank; d++) {
    st[d] = x->dims[d] < 0 ? 0 : lo[d];
    en[d] = x->dims[d] < 0 ? INT64_MAX : lo[d] + x->dims[d];
  }
  dx[0] = kiln_slice(G(c), c->dy, st, en, NULL, x->rank);
}

static void g_gather(grad_ctx *c, kiln_value *dx) {
  const kiln_node *x = node_of(c, grad_input(c, 0));
  dx[0] = kiln_scatter_add(G(c), grad_input(c, 1), c->dy, grad_node_shape(x), (int)kiln_attr_int(&c->n, KILN_ATTR_AXIS, 0));
}

static void g_scatter_add(grad_ctx *c, kiln_value *dx) {
  dx[1] = kiln_gather(G(c), c->dy, grad_input(c, 0), (int)kiln_attr_int(&c->n, KILN_ATTR_AXIS, 0));
}

const kiln_grad_rule kiln_grad_rules[KILN_OP_COUNT] = {
    [KILN_OP_NEG] = g_neg,         [KILN_OP_ABS] = g_abs,
    [KILN_OP_EXP] = g_exp,         [KILN_OP_LOG] = g_log,
    [KILN_OP_SQRT] = g_sqrt,       [KILN_OP_RSQRT] = g_rsqrt,
    [KILN_OP_TANH] = g_tanh,       [KILN_OP_SIGMOID] = g_sigmoid,
    [KILN_OP_RELU] = g_relu,       [KILN_OP_SIN] = g_sin,
    [KILN_OP_COS] = g_cos,         [KILN_OP_ADD] = g_add,
    [KILN_OP_SUB] = g_sub,         [KILN_OP_MUL] = g_mul,
    [KILN_OP_DIV] = g_div,         [KILN_OP_POW] = g_pow,
    [KILN_OP_MAX] = g_max,         [KILN_OP_MIN] = g_min,
    [KILN_OP_SELECT] = g_select,   [KILN_OP_CAST] = g_cast,
    [KILN_OP_REDUCE_SUM] = g_reduce_sum,
    [KILN_OP_REDUCE_MEAN] = g_reduce_mean,
    [KILN_OP_REDUCE_MAX] = g_reduce_extreme,
    [KILN_OP_REDUCE_MIN] = g_reduce_extreme,
    [KILN_OP_MATMUL] = g_matmul,
    [KILN_OP_CONV2D] = kiln_grad_conv2d,
    [KILN_OP_CONV2D_FILTER_GRAD] = kiln_grad_conv2d_filter_grad,
    [KILN_OP_MAX_POOL2D] = kiln_grad_max_pool2d,
    [KILN_OP_MAX_POOL2D_GRAD] = kiln_grad_max_pool2d_grad,
    [KILN_OP_AVG_POOL2D] = kiln_grad_avg_pool2d,
    [KILN_OP_RESHAPE] = g_reshape, [KILN_OP_TRANSPOSE] = g_transpose,
    [KILN_OP_BROADCAST_TO] = g_broadcast_to,
    [KILN_OP_CONCAT] = g_concat,   [KILN_OP_SLICE] = g_slice,
    [KILN_OP_PAD] = g_pad,         [KILN_OP_GATHER] = g_gather,
    [KILN_OP_UNSLICE] = g_unslice, [KILN_OP_SCATTER_ADD] = g_scatter_add,
};

bool kiln_grad_flows(kiln_op op, uint32_t i) {
  if (!(kiln_ops[op].flags & DIFF)) return false;
  if (op == KILN_OP_SELECT) return i > 0;
  if (op == KILN_OP_GATHER) return i == 0;
  if (op == KILN_OP_SCATTER_ADD) return i == 1;
  if (op == KILN_OP_MAX_POOL2D_GRAD) return i == 1; /* piecewise constant in x */
  return true;
}

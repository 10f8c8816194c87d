/* Builder calls for neural-network ops: convolution and pooling (normalising
 * layouts and "same" padding to the NHWC/HWIO primitives) and the softmax
 * composites. */
#include <string.h>
#include "ir/ir.h"

static const int64_t TO_NHWC[4] = {0, 2, 3, 1}, TO_NCHW[4] = {0, 3, 1, 2}, OIHW_TO_HWIO[4] = {2, 3, 1, 0};

static int64_t or_one(int64_t v) { return v ? v : 1; }

/* TensorFlow's "same": output = ceil(in / stride), padding split with the extra at the end. */
static void same_pads(const int64_t *in_hw, const int64_t *k, const int64_t *s, const int64_t *d, int64_t *pads) {
  for (int i = 0; i < 2; i++) {
    int64_t out = (in_hw[i] + s[i] - 1) / s[i];
    int64_t total = (out - 1) * s[i] + (k[i] - 1) * d[i] + 1 - in_hw[i];
    if (total < 0) total = 0;
    pads[i] = total / 2;
    pads[i + 2] = total - total / 2;
  }
}

static bool resolve_pads(kiln_graph *g, const char *op, kiln_padding p, const int64_t *explicit_pads,
                         const int64_t *in_hw, const int64_t *k, const int64_t *s, const int64_t *d, int64_t *pads) {
  switch (p) {
  case KILN_PAD_VALID: memset(pads, 0, 4 * sizeof(int64_t)); return true;
  case KILN_PAD_SAME: same_pads(in_hw, k, s, d, pads); return true;
  case KILN_PAD_EXPLICIT: memcpy(pads, explicit_pads, 4 * sizeof(int64_t)); return true;
  }
  kiln_graph_fail(g, KILN_ERR_INVALID, "%s: unknown padding mode %d", op, (int)p);
  return false;
}

static bool rank4(kiln_graph *g, kiln_value v, const char *op, const char *what) {
  if (g->status != KILN_OK) return false;
  if (v.id >= g->nnodes) {
    kiln_graph_fail(g, KILN_ERR_INVALID, "%s: %s is not a value of this graph", op, what);
    return false;
  }
  if (g->nodes[v.id].rank != 4) {
    char s[128];
    const kiln_node *n = &g->nodes[v.id];
    kiln_graph_fail(g, KILN_ERR_INVALID, "%s: %s must be rank 4, got %s%s", op, what, kiln_dtype_name(n->dtype),
                    kiln_shape_str(s, sizeof s, n->rank, n->dims));
    return false;
  }
  return true;
}

/* conv2d's window attributes for an NHWC input x and a kh x kw filter. */
static bool conv_attrs(kiln_graph *g, const char *op, kiln_value x, const int64_t k[2], const kiln_conv2d_opts *o,
                       kiln_attrs *a) {
  const kiln_node *xn = &g->nodes[x.id];
  int64_t s[2] = {or_one(o->strides[0]), or_one(o->strides[1])};
  int64_t d[2] = {or_one(o->dilations[0]), or_one(o->dilations[1])}, pads[4];
  if (!resolve_pads(g, op, o->padding, o->pads, xn->dims + 1, k, s, d, pads)) return false;
  kiln_attrs_ints(a, KILN_ATTR_STRIDES, s, 2);
  kiln_attrs_ints(a, KILN_ATTR_DILATIONS, d, 2);
  kiln_attrs_ints(a, KILN_ATTR_PADS, pads, 4);
  kiln_attrs_int(a, KILN_ATTR_GROUPS, or_one(o->groups));
  return true;
}

kiln_value kiln_conv2d(kiln_graph *g, kiln_value x, kiln_value w, const kiln_conv2d_opts *o) {
  kiln_conv2d_opts def = {0};
  if (!o) o = &def;
  if (!g || !rank4(g, x, "conv2d", "input") || !rank4(g, w, "conv2d", "filter")) return (kiln_value){KILN_NONE};
  bool nchw = o->layout == KILN_NCHW;
  if (nchw) {
    x = kiln_transpose(g, x, TO_NHWC, 4);
    w = kiln_transpose(g, w, OIHW_TO_HWIO, 4);
  }
  if (g->status != KILN_OK) return (kiln_value){KILN_NONE};
  const kiln_node *wn = &g->nodes[w.id];
  kiln_attrs a = {0};
  if (!conv_attrs(g, "conv2d", x, (int64_t[]){wn->dims[0], wn->dims[1]}, o, &a)) return (kiln_value){KILN_NONE};
  uint32_t ids[2] = {x.id, w.id};
  kiln_value y = kiln_node_make(g, KILN_OP_CONV2D, ids, 2, &a, NULL, NULL, 0);
  return nchw ? kiln_transpose(g, y, TO_NCHW, 4) : y;
}

kiln_value kiln_conv2d_filter_grad(kiln_graph *g, kiln_value x, kiln_value dy, int64_t kh, int64_t kw,
                                   const kiln_conv2d_opts *o) {
  kiln_conv2d_opts def = {0};
  if (!o) o = &def;
  const char *op = "conv2d_filter_grad";
  if (!g || !rank4(g, x, op, "input") || !rank4(g, dy, op, "output gradient")) return (kiln_value){KILN_NONE};
  if (kh < 1 || kw < 1) return kiln_graph_fail(g, KILN_ERR_INVALID, "%s: filter size %lldx%lld must be >= 1", op, (long long)kh, (long long)kw);
  bool nchw = o->layout == KILN_NCHW;
  if (nchw) {
    x = kiln_transpose(g, x, TO_NHWC, 4);
    dy = kiln_transpose(g, dy, TO_NHWC, 4);
  }
  if (g->status != KILN_OK) return (kiln_value){KILN_NONE};
  int64_t k[2] = {kh, kw};
  kiln_attrs a = {0};
  if (!conv_attrs(g, op, x, k, o, &a)) return (kiln_value){KILN_NONE};
  kiln_attrs_ints(&a, KILN_ATTR_WINDOW, k, 2);
  uint32_t ids[2] = {x.id, dy.id};
  kiln_value dw = kiln_node_make(g, KILN_OP_CONV2D_FILTER_GRAD, ids, 2, &a, NULL, NULL, 0);
  static const int64_t HWIO_TO_OIHW[4] = {3, 2, 0, 1};
  return nchw ? kiln_transpose(g, dw, HWIO_TO_OIHW, 4) : dw;
}

/* A pooling window's attributes for an NHWC input x. */
static bool pool_attrs(kiln_graph *g, const char *name, kiln_value x, const kiln_pool2d_opts *o, kiln_attrs *a) {
  int64_t k[2] = {o->window[0], o->window[1]};
  int64_t s[2] = {o->strides[0] ? o->strides[0] : k[0], o->strides[1] ? o->strides[1] : k[1]};
  int64_t d[2] = {1, 1}, pads[4];
  if (!resolve_pads(g, name, o->padding, o->pads, g->nodes[x.id].dims + 1, k, s, d, pads)) return false;
  kiln_attrs_ints(a, KILN_ATTR_WINDOW, k, 2);
  kiln_attrs_ints(a, KILN_ATTR_STRIDES, s, 2);
  kiln_attrs_ints(a, KILN_ATTR_PADS, pads, 4);
  return true;
}

static kiln_value pool(kiln_graph *g, kiln_op op, kiln_value x, const kiln_pool2d_opts *o) {
  const char *name = kiln_ops[op].name;
  if (!g || !rank4(g, x, name, "input")) return (kiln_value){KILN_NONE};
  if (!o) return kiln_graph_fail(g, KILN_ERR_INVALID, "%s: options are required (window size)", name);
  bool nchw = o->layout == KILN_NCHW;
  if (nchw) x = kiln_transpose(g, x, TO_NHWC, 4);
  if (g->status != KILN_OK) return (kiln_value){KILN_NONE};
  kiln_attrs a = {0};
  if (!pool_attrs(g, name, x, o, &a)) return (kiln_value){KILN_NONE};
  kiln_value y = kiln_node_make(g, op, &x.id, 1, &a, NULL, NULL, 0);
  return nchw ? kiln_transpose(g, y, TO_NCHW, 4) : y;
}

kiln_value kiln_max_pool2d(kiln_graph *g, kiln_value x, const kiln_pool2d_opts *o) {
  return pool(g, KILN_OP_MAX_POOL2D, x, o);
}
kiln_value kiln_avg_pool2d(kiln_graph *g, kiln_value x, const kiln_pool2d_opts *o) {
  return pool(g, KILN_OP_AVG_POOL2D, x, o);
}

kiln_value kiln_max_pool2d_grad(kiln_graph *g, kiln_value x, kiln_value dy, const kiln_pool2d_opts *o) {
  const char *name = "max_pool2d_grad";
  if (!g || !rank4(g, x, name, "input") || !rank4(g, dy, name, "output gradient")) return (kiln_value){KILN_NONE};
  if (!o) return kiln_graph_fail(g, KILN_ERR_INVALID, "%s: options are required (window size)", name);
  bool nchw = o->layout == KILN_NCHW;
  if (nchw) {
    x = kiln_transpose(g, x, TO_NHWC, 4);
    dy = kiln_transpose(g, dy, TO_NHWC, 4);
  }
  if (g->status != KILN_OK) return (kiln_value){KILN_NONE};
  kiln_attrs a = {0};
  if (!pool_attrs(g, name, x, o, &a)) return (kiln_value){KILN_NONE};
  uint32_t ids[2] = {x.id, dy.id};
  kiln_value dx = kiln_node_make(g, KILN_OP_MAX_POOL2D_GRAD, ids, 2, &a, NULL, NULL, 0);
  return nchw ? kiln_transpose(g, dx, TO_NCHW, 4) : dx;
}

/* x - max(x) keeps exp() in range; the max is along the same axis. */
static kiln_value shifted(kiln_graph *g, kiln_value x, int axis) {
  int64_t ax = axis;
  return kiln_sub(g, x, kiln_reduce_max(g, x, &ax, 1, true));
}

kiln_value kiln_square(kiln_graph *g, kiln_value x) { return kiln_mul(g, x, x); }

kiln_value kiln_softmax(kiln_graph *g, kiln_value x, int axis) {
  int64_t ax = axis;
  kiln_value e = kiln_exp(g, shifted(g, x, axis));
  return kiln_div(g, e, kiln_reduce_sum(g, e, &ax, 1, true));
}

/* Is v (seen through its broadcast back) a reduction of `of` over exactly the last axis? */
static bool reduces_last(const kiln_graph *g, const kiln_node *v, kiln_op op, uint32_t of) {
  int64_t axes[KILN_MAX_RANK];
  if (v && v->op == KILN_OP_BROADCAST_TO) v = kiln_node_get(g, (kiln_value){v->inputs[0]});
  return v && v->op == op && v->inputs[0] == of && kiln_attr_int(v, KILN_ATTR_KEEPDIMS, 0) &&
         kiln_attr_ints(v, KILN_ATTR_AXES, axes) == 1 && axes[0] == kiln_node_get(g, (kiln_value){of})->rank - 1;
}

kiln_value kiln_softmax_logits(const kiln_graph *g, kiln_value p) {
  const kiln_value none = {KILN_NONE};
  const kiln_node *div = kiln_node_get(g, p);
  if (!div || div->op != KILN_OP_DIV) return none;
  const kiln_node *e = kiln_node_get(g, (kiln_value){div->inputs[0]});
  if (!e || e->op != KILN_OP_EXP || !reduces_last(g, kiln_node_get(g, (kiln_value){div->inputs[1]}), KILN_OP_REDUCE_SUM, div->inputs[0]))
    return none;
  const kiln_node *z = kiln_node_get(g, (kiln_value){e->inputs[0]});
  if (!z || z->op != KILN_OP_SUB || !reduces_last(g, kiln_node_get(g, (kiln_value){z->inputs[1]}), KILN_OP_REDUCE_MAX, z->inputs[0]))
    return none;
  return (kiln_value){z->inputs[0]};
}

kiln_value kiln_log_softmax(kiln_graph *g, kiln_value x, int axis) {
  int64_t ax = axis;
  kiln_value z = shifted(g, x, axis);
  return kiln_sub(g, z, kiln_log(g, kiln_reduce_sum(g, kiln_exp(g, z), &ax, 1, true)));
}

/* Horner's rule: c[0] + x*(c[1] + x*(...)) with n coefficients. */
static kiln_value polynomial(kiln_graph *g, kiln_value x, const double *c, int n) {
  kiln_dtype t = kiln_value_dtype(g, x);
  kiln_value acc = kiln_scalar(g, t, c[n - 1]);
  for (int i = n - 2; i >= 0; i--) acc = kiln_add(g, kiln_mul(g, acc, x), kiln_scalar(g, t, c[i]));
  return acc;
}

kiln_value kiln_erf(kiln_graph *g, kiln_value x) {
  static const double alpha[7] = {-1.60960333262415e-02, -2.95459980854025e-03, -7.34990630326855e-04, -5.69250639462346e-05,
                                  -2.10102402082508e-06, 2.77068142495902e-08,  -2.72614225801306e-10};
  static const double beta[5] = {-1.42647390514189e-02, -7.37332916720468e-03, -1.68282697438203e-03,
                                 -2.13374055278905e-04, -1.45660718464996e-05};
  kiln_dtype t = kiln_value_dtype(g, x);
  kiln_value xc = kiln_minimum(g, kiln_maximum(g, x, kiln_scalar(g, t, -4)), kiln_scalar(g, t, 4));
  kiln_value x2 = kiln_mul(g, xc, xc);
  return kiln_div(g, kiln_mul(g, xc, polynomial(g, x2, alpha, 7)), polynomial(g, x2, beta, 5));
}

kiln_value kiln_atan(kiln_graph *g, kiln_value x) {
  static const double p[5] = {1, -3.33329491539e-1, 1.99777106478e-1, -1.38776856032e-1, 8.05374449538e-2};
  kiln_dtype t = kiln_value_dtype(g, x);
#define C(v) kiln_scalar(g, t, (v))
  kiln_value a = kiln_abs(g, x);
  /* |x| > tan(3pi/8): pi/2 - atan(1/|x|); |x| > tan(pi/8): pi/4 + atan((|x|-1)/(|x|+1)) */
  kiln_value big = kiln_greater(g, a, C(2.414213562373095)), mid = kiln_greater(g, a, C(0.4142135623730950));
  kiln_value r = kiln_select(g, big, kiln_div(g, C(-1), a),
                             kiln_select(g, mid, kiln_div(g, kiln_sub(g, a, C(1)), kiln_add(g, a, C(1))), a));
  kiln_value base = kiln_select(g, big, C(1.5707963267948966), kiln_select(g, mid, C(0.7853981633974483), C(0)));
  kiln_value y = kiln_add(g, base, kiln_mul(g, r, polynomial(g, kiln_mul(g, r, r), p, 5)));
  return kiln_mul(g, kiln_sign(g, x), y);
#undef C
}

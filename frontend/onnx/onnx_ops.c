/* ONNX operators as compositions of kiln primitives, one table. Each handler
 * follows the operator's ONNX spec for opsets 7..17 (attributes that became
 * inputs are read from either); anything outside what a handler implements is
 * an error naming the attribute, never a silent approximation. */
#include <math.h>
#include <string.h>
#include "frontend/onnx/onnx_impl.h"
#include "runtime/tensor_impl.h"

/* Reads constant input i as integers; fails when it is not known at import time. */
kiln_status onnx_const_ints(onnx_ctx *c, const Onnx__NodeProto *n, size_t i, int64_t *out, int cap, int *count) {
  const kiln_tensor *t = onnx_const_input(c, n, i);
  if (!t) return onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "input %zu must be a constant (computed at run time here)", i);
  int64_t k = kiln_tensor_numel(t);
  if (k > cap) return onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "input %zu has %lld values (at most %d)", i, (long long)k, cap);
  for (int64_t j = 0; j < k; j++) {
    double v = kiln_tensor_get_f64(t, j);
    if (!(v >= -9.2e18 && v <= 9.2e18)) /* NaN or beyond int64: converting would be undefined */
      return onnx_fail(c, n, KILN_ERR_INVALID, "input %zu holds %g, not an integer in range", i, v);
    out[j] = (int64_t)v;
  }
  *count = (int)k;
  return KILN_OK;
}

/* ---- elementwise ---- */

#define UNARY(name, expr)                                                                                     \
  static kiln_status op_##name(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin,      \
                               kiln_value *out) {                                                            \
    kiln_value x = in[0];                                                                                     \
    out[0] = (expr);                                                                                          \
    return KILN_OK;                                                                                           \
  }
UNARY(Abs, kiln_abs(G, x))
UNARY(Neg, kiln_neg(G, x))
UNARY(Exp, kiln_exp(G, x))
UNARY(Log, kiln_log(G, x))
UNARY(Sqrt, kiln_sqrt(G, x))
UNARY(Tanh, kiln_tanh(G, x))
UNARY(Sigmoid, kiln_sigmoid(G, x))
UNARY(Relu, kiln_relu(G, x))
UNARY(Floor, kiln_floor(G, x))
UNARY(Ceil, kiln_ceil(G, x))
UNARY(Sin, kiln_sin(G, x))
UNARY(Cos, kiln_cos(G, x))
UNARY(Sign, kiln_sign(G, x))
UNARY(Not, kiln_logical_not(G, x))
UNARY(Identity, x)
UNARY(Reciprocal, kiln_div(G, scalar_like(c, x, 1), x))
UNARY(Softsign, kiln_div(G, x, kiln_add(G, scalar_like(c, x, 1), kiln_abs(G, x))))
/* log(1 + e^x) = max(x, 0) + log(1 + e^-|x|): no overflow for large x */
UNARY(Softplus, kiln_add(G, kiln_relu(G, x), kiln_log(G, kiln_add(G, scalar_like(c, x, 1), kiln_exp(G, kiln_neg(G, kiln_abs(G, x)))))))
UNARY(Tan, kiln_div(G, kiln_sin(G, x), kiln_cos(G, x)))
UNARY(Erf, kiln_erf(G, x))
UNARY(Atan, kiln_atan(G, x))
/* asin x = atan(x / sqrt(1 - x^2)); at |x| = 1 the quotient is +-inf and atan gives +-pi/2 */
UNARY(Asin, kiln_atan(G, kiln_div(G, x, kiln_sqrt(G, kiln_sub(G, scalar_like(c, x, 1), kiln_mul(G, x, x))))))
UNARY(Acos, kiln_sub(G, scalar_like(c, x, M_PI / 2),
                     kiln_atan(G, kiln_div(G, x, kiln_sqrt(G, kiln_sub(G, scalar_like(c, x, 1), kiln_mul(G, x, x)))))))
UNARY(Sinh, kiln_mul(G, scalar_like(c, x, 0.5), kiln_sub(G, kiln_exp(G, x), kiln_exp(G, kiln_neg(G, x)))))
UNARY(Cosh, kiln_mul(G, scalar_like(c, x, 0.5), kiln_add(G, kiln_exp(G, x), kiln_exp(G, kiln_neg(G, x)))))
UNARY(Asinh, kiln_log(G, kiln_add(G, x, kiln_sqrt(G, kiln_add(G, kiln_mul(G, x, x), scalar_like(c, x, 1))))))
UNARY(Acosh, kiln_log(G, kiln_add(G, x, kiln_sqrt(G, kiln_sub(G, kiln_mul(G, x, x), scalar_like(c, x, 1))))))
UNARY(Atanh, kiln_mul(G, scalar_like(c, x, 0.5),
                      kiln_log(G, kiln_div(G, kiln_add(G, scalar_like(c, x, 1), x), kiln_sub(G, scalar_like(c, x, 1), x)))))
UNARY(IsNaN, kiln_logical_not(G, kiln_equal(G, x, x)))

/* Half to even: floor(x + 0.5), minus one where x was exactly halfway to an odd result. */
static kiln_status op_Round(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  kiln_value x = in[0], half = scalar_like(c, x, 0.5), two = scalar_like(c, x, 2);
  kiln_value r = kiln_floor(G, kiln_add(G, x, half));
  kiln_value tie = kiln_equal(G, kiln_sub(G, r, x), half);
  kiln_value odd = kiln_equal(G, kiln_sub(G, r, kiln_mul(G, two, kiln_floor(G, kiln_div(G, r, two)))), scalar_like(c, x, 1));
  out[0] = kiln_select(G, kiln_logical_and(G, tie, odd), kiln_sub(G, r, scalar_like(c, x, 1)), r);
  return KILN_OK;
}

static kiln_status op_IsInf(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  kiln_value x = in[0], inf = scalar_like(c, x, INFINITY);
  kiln_value pos = kiln_equal(G, x, inf), neg = kiln_equal(G, x, kiln_neg(G, inf));
  bool want_pos = onnx_attr_int(n, "detect_positive", 1), want_neg = onnx_attr_int(n, "detect_negative", 1);
  out[0] = want_pos && want_neg ? kiln_logical_or(G, pos, neg) : want_pos ? pos : want_neg ? neg : kiln_logical_and(G, pos, neg);
  return KILN_OK;
}

static kiln_status op_Shrink(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  kiln_value x = in[0];
  double lambd = onnx_attr_float(n, "lambd", 0.5), bias = onnx_attr_float(n, "bias", 0);
  kiln_value lo = kiln_less(G, x, scalar_like(c, x, -lambd)), hi = kiln_greater(G, x, scalar_like(c, x, lambd));
  kiln_value y = kiln_select(G, hi, kiln_sub(G, x, scalar_like(c, x, bias)), scalar_like(c, x, 0));
  out[0] = kiln_select(G, lo, kiln_add(G, x, scalar_like(c, x, bias)), y);
  return KILN_OK;
}

/* fmod=1: C's fmod (sign of the dividend); fmod=0 (integers): Python's (sign of the divisor). */
static kiln_status op_Mod(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  kiln_value a = in[0], b = in[1], zero = scalar_like(c, a, 0);
  bool flt = kiln_dtype_is_float(type_of(c, a));
  if (flt && !onnx_attr_int(n, "fmod", 0)) return onnx_fail(c, n, KILN_ERR_INVALID, "fmod=0 on floating-point inputs");
  kiln_value q = kiln_div(G, a, b);
  if (flt) q = kiln_mul(G, kiln_sign(G, q), kiln_floor(G, kiln_abs(G, q))); /* truncate */
  kiln_value r = kiln_sub(G, a, kiln_mul(G, q, b));
  if (!onnx_attr_int(n, "fmod", 0)) {
    kiln_value differ = kiln_logical_not(G, kiln_equal(G, kiln_less(G, r, zero), kiln_less(G, b, zero)));
    r = kiln_select(G, kiln_logical_and(G, kiln_logical_not(G, kiln_equal(G, r, zero)), differ), kiln_add(G, r, b), r);
  }
  out[0] = r;
  return KILN_OK;
}

static kiln_status op_LeakyRelu(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  kiln_value x = in[0], a = scalar_like(c, x, onnx_attr_float(n, "alpha", 0.01));
  out[0] = kiln_select(G, kiln_less(G, x, scalar_like(c, x, 0)), kiln_mul(G, a, x), x);
  return KILN_OK;
}

/* alpha * (e^x - 1) for x < 0 (Elu: scaled by 1; Selu: by gamma, and x by gamma) */
static kiln_value elu(onnx_ctx *c, kiln_value x, double alpha) {
  kiln_value neg = kiln_mul(G, scalar_like(c, x, alpha), kiln_sub(G, kiln_exp(G, kiln_minimum(G, x, scalar_like(c, x, 0))), scalar_like(c, x, 1)));
  return kiln_select(G, kiln_less(G, x, scalar_like(c, x, 0)), neg, x);
}
static kiln_status op_Elu(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  out[0] = elu(c, in[0], onnx_attr_float(n, "alpha", 1.0));
  return KILN_OK;
}
static kiln_status op_Selu(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  double alpha = onnx_attr_float(n, "alpha", 1.67326319217681884765625), gamma = onnx_attr_float(n, "gamma", 1.05070102214813232421875);
  out[0] = kiln_mul(G, scalar_like(c, in[0], gamma), elu(c, in[0], alpha));
  return KILN_OK;
}
static kiln_status op_Celu(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  double alpha = onnx_attr_float(n, "alpha", 1.0);
  kiln_value x = in[0];
  out[0] = elu(c, kiln_div(G, x, scalar_like(c, x, alpha)), 1.0);
  out[0] = kiln_select(G, kiln_less(G, x, scalar_like(c, x, 0)), kiln_mul(G, scalar_like(c, x, alpha), out[0]), x);
  return KILN_OK;
}
static kiln_status op_HardSigmoid(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  kiln_value x = in[0];
  kiln_value y = kiln_add(G, kiln_mul(G, scalar_like(c, x, onnx_attr_float(n, "alpha", 0.2)), x), scalar_like(c, x, onnx_attr_float(n, "beta", 0.5)));
  out[0] = kiln_maximum(G, scalar_like(c, x, 0), kiln_minimum(G, scalar_like(c, x, 1), y));
  return KILN_OK;
}
static kiln_status op_HardSwish(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  kiln_value x = in[0];
  kiln_value y = kiln_add(G, kiln_mul(G, scalar_like(c, x, 1.0 / 6), x), scalar_like(c, x, 0.5));
  out[0] = kiln_mul(G, x, kiln_maximum(G, scalar_like(c, x, 0), kiln_minimum(G, scalar_like(c, x, 1), y)));
  return KILN_OK;
}
static kiln_status op_ThresholdedRelu(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  kiln_value x = in[0];
  out[0] = kiln_select(G, kiln_greater(G, x, scalar_like(c, x, onnx_attr_float(n, "alpha", 1.0))), x, scalar_like(c, x, 0));
  return KILN_OK;
}
static kiln_value per_channel(onnx_ctx *c, kiln_value p, int rank);
static kiln_status op_PRelu(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  kiln_value x = in[0], slope = in[1];
  kiln_shape xs = kiln_value_shape(G, x), ss = kiln_value_shape(G, slope);
  /* before opset 7 a slope of C values is per channel (axis 1) */
  if (c->opset < 7 && ss.rank == 1 && ss.dims[0] > 1 && xs.rank > 2) slope = per_channel(c, slope, xs.rank);
  out[0] = kiln_select(G, kiln_less(G, x, scalar_like(c, x, 0)), kiln_mul(G, slope, x), x);
  return KILN_OK;
}
static kiln_status op_Clip(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  kiln_value x = in[0];
  if (c->opset < 11) {
    out[0] = kiln_minimum(G, kiln_maximum(G, x, scalar_like(c, x, onnx_attr_float(n, "min", -INFINITY))),
                          scalar_like(c, x, onnx_attr_float(n, "max", INFINITY)));
    return KILN_OK;
  }
  /* min > max gives max, as ONNX's reference does (max applied last) */
  if (HAS(1)) x = kiln_maximum(G, x, in[1]);
  if (HAS(2)) x = kiln_minimum(G, x, in[2]);
  out[0] = x;
  return KILN_OK;
}

/* Opset < 7 broadcasts only with broadcast=1, aligning B's dims at `axis` of A
 * (NumPy's trailing alignment when axis is absent). */
static kiln_value legacy_b(onnx_ctx *c, const Onnx__NodeProto *n, kiln_value a, kiln_value b) {
  if (c->opset >= 7 || !onnx_attr_int(n, "broadcast", 0) || !onnx_attr(n, "axis")) return b;
  kiln_shape as = kiln_value_shape(G, a), bs = kiln_value_shape(G, b), s = {.rank = as.rank};
  int axis = norm_axis(onnx_attr_int(n, "axis", 0), as.rank);
  for (int i = 0; i < s.rank; i++) s.dims[i] = i >= axis && i - axis < bs.rank ? bs.dims[i - axis] : 1;
  return kiln_reshape(G, b, s);
}

#define BINARY(name, fn)                                                                                      \
  static kiln_status op_##name(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin,      \
                               kiln_value *out) {                                                            \
    out[0] = fn(G, in[0], legacy_b(c, n, in[0], in[1]));                                                      \
    return KILN_OK;                                                                                           \
  }
BINARY(Add, kiln_add)
BINARY(Sub, kiln_sub)
BINARY(Mul, kiln_mul)
BINARY(Div, kiln_div)
BINARY(Equal, kiln_equal)
BINARY(Less, kiln_less)
BINARY(Greater, kiln_greater)
BINARY(And, kiln_logical_and)
BINARY(Or, kiln_logical_or)

/* The result has the base's type; integer powers go through f64 (exact for the
 * magnitudes where int results are exact) and truncate back. */
static kiln_status op_Pow(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  kiln_dtype t = type_of(c, in[0]);
  if (t == KILN_F32 || t == KILN_F64) {
    kiln_value e = type_of(c, in[1]) == t ? in[1] : kiln_cast(G, in[1], t);
    out[0] = kiln_pow(G, in[0], legacy_b(c, n, in[0], e));
  } else {
    kiln_value p = kiln_pow(G, kiln_cast(G, in[0], KILN_F64), kiln_cast(G, legacy_b(c, n, in[0], in[1]), KILN_F64));
    out[0] = kiln_cast(G, p, t);
  }
  return KILN_OK;
}
static kiln_status op_Xor(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  out[0] = kiln_logical_not(G, kiln_equal(G, in[0], in[1]));
  return KILN_OK;
}
static kiln_status op_LessOrEqual(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  out[0] = kiln_logical_not(G, kiln_greater(G, in[0], in[1]));
  return KILN_OK;
}
static kiln_status op_GreaterOrEqual(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  out[0] = kiln_logical_not(G, kiln_less(G, in[0], in[1]));
  return KILN_OK;
}
static kiln_status op_Where(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  out[0] = kiln_select(G, in[0], in[1], in[2]);
  return KILN_OK;
}

#define VARIADIC(name, fn, finish)                                                                            \
  static kiln_status op_##name(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin,      \
                               kiln_value *out) {                                                            \
    kiln_value acc = in[0];                                                                                   \
    for (size_t i = 1; i < nin; i++) acc = fn(G, acc, in[i]);                                                 \
    out[0] = (finish);                                                                                        \
    return KILN_OK;                                                                                           \
  }
VARIADIC(Max, kiln_maximum, acc)
VARIADIC(Min, kiln_minimum, acc)
VARIADIC(Sum, kiln_add, acc)
VARIADIC(Mean, kiln_add, kiln_div(G, acc, scalar_like(c, acc, (double)nin)))

static kiln_status op_CastLike(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  out[0] = kiln_cast(G, in[0], type_of(c, in[1]));
  return KILN_OK;
}

static kiln_status op_Cast(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  int64_t to = onnx_attr_int(n, "to", 0);
  int t = onnx_kiln_dtype(to);
  if (t < 0) return onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "cast to ONNX data type %lld", (long long)to);
  out[0] = kiln_cast(G, in[0], (kiln_dtype)t);
  return KILN_OK;
}

/* ---- contractions and windows ---- */

static kiln_status op_MatMul(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  out[0] = kiln_matmul(G, in[0], in[1], false, false);
  return KILN_OK;
}

static kiln_status op_Gemm(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  double alpha = onnx_attr_float(n, "alpha", 1), beta = onnx_attr_float(n, "beta", 1);
  kiln_value y = kiln_matmul(G, in[0], in[1], onnx_attr_int(n, "transA", 0), onnx_attr_int(n, "transB", 0));
  if (alpha != 1) y = kiln_mul(G, scalar_like(c, y, alpha), y);
  if (HAS(2)) y = kiln_add(G, y, beta != 1 ? kiln_mul(G, scalar_like(c, y, beta), in[2]) : in[2]);
  out[0] = y;
  return KILN_OK;
}

static kiln_value spatial_axes(onnx_ctx *c, kiln_value x, bool max) {
  int r = rank_of(c, x);
  int64_t axes[KILN_MAX_RANK];
  for (int i = 2; i < r; i++) axes[i - 2] = i;
  return max ? kiln_reduce_max(G, x, axes, r - 2, true) : kiln_reduce_mean(G, x, axes, r - 2, true);
}
static kiln_status op_GlobalAveragePool(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  out[0] = spatial_axes(c, in[0], false);
  return KILN_OK;
}
static kiln_status op_GlobalMaxPool(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  out[0] = spatial_axes(c, in[0], true);
  return KILN_OK;
}

/* Per-channel (axis 1) parameter p reshaped to broadcast against x. */
static kiln_value per_channel(onnx_ctx *c, kiln_value p, int rank) {
  kiln_shape s = {.rank = rank};
  for (int i = 0; i < rank; i++) s.dims[i] = 1;
  s.dims[1] = kiln_value_shape(G, p).dims[0];
  return kiln_reshape(G, p, s);
}

static kiln_status op_BatchNormalization(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  if (onnx_attr_int(n, "training_mode", 0) || (n->n_output > 1 && *n->output[1]))
    return onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "training mode (only inference is imported)");
  kiln_value x = in[0];
  int r = rank_of(c, x);
  kiln_value inv = kiln_rsqrt(G, kiln_add(G, per_channel(c, in[4], r), scalar_like(c, x, onnx_attr_float(n, "epsilon", 1e-5))));
  kiln_value y = kiln_mul(G, kiln_sub(G, x, per_channel(c, in[3], r)), kiln_mul(G, inv, per_channel(c, in[1], r)));
  out[0] = kiln_add(G, y, per_channel(c, in[2], r));
  return KILN_OK;
}

/* Mean and InvStdDev (outputs 1 and 2) keep the normalized axes as 1s. */
static kiln_status op_LayerNormalization(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  kiln_value x = in[0];
  int r = rank_of(c, x), axis = norm_axis(onnx_attr_int(n, "axis", -1), r);
  if (axis < 0 || axis >= r) return onnx_fail(c, n, KILN_ERR_INVALID, "axis out of range for rank %d", r);
  int64_t axes[KILN_MAX_RANK];
  for (int i = axis; i < r; i++) axes[i - axis] = i;
  kiln_value mean = kiln_reduce_mean(G, x, axes, r - axis, true), d = kiln_sub(G, x, mean);
  kiln_value var = kiln_reduce_mean(G, kiln_mul(G, d, d), axes, r - axis, true);
  kiln_value inv = kiln_rsqrt(G, kiln_add(G, var, scalar_like(c, x, onnx_attr_float(n, "epsilon", 1e-5))));
  kiln_value y = kiln_mul(G, kiln_mul(G, d, inv), in[1]);
  out[0] = HAS(2) ? kiln_add(G, y, in[2]) : y;
  out[1] = mean;
  out[2] = inv;
  return KILN_OK;
}

/* Before opset 13 softmax flattens to [prod(dims[:axis]), prod(dims[axis:])] (default axis 1). */
static kiln_status softmax(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, kiln_value *out, bool log) {
  kiln_value x = in[0];
  kiln_shape s = kiln_value_shape(G, x);
  int axis = norm_axis(onnx_attr_int(n, "axis", c->opset < 13 ? 1 : -1), s.rank);
  if (c->opset >= 13) {
    out[0] = log ? kiln_log_softmax(G, x, axis) : kiln_softmax(G, x, axis);
    return KILN_OK;
  }
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < s.rank; i++) *(i < axis ? &outer : &inner) *= s.dims[i];
  kiln_value f = kiln_reshape(G, x, KILN_SHAPE(outer, inner));
  out[0] = kiln_reshape(G, log ? kiln_log_softmax(G, f, 1) : kiln_softmax(G, f, 1), s);
  return KILN_OK;
}
static kiln_status op_Softmax(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  return softmax(c, n, in, out, false);
}
static kiln_status op_LogSoftmax(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  return softmax(c, n, in, out, true);
}

/* ---- reductions ---- */

static kiln_status reduce(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out,
                          kiln_value (*fn)(kiln_graph *, kiln_value, const int64_t *, int, bool), bool axes_input) {
  int64_t axes[KILN_MAX_RANK];
  int na = -1;
  if (axes_input && HAS(1)) {
    kiln_status st = onnx_const_ints(c, n, 1, axes, KILN_MAX_RANK, &na);
    if (st != KILN_OK) return st;
  } else {
    na = onnx_attr_ints(n, "axes", axes, KILN_MAX_RANK);
  }
  bool keep = onnx_attr_int(n, "keepdims", 1) != 0;
  if (na <= 0) {
    if (na == 0 && onnx_attr_int(n, "noop_with_empty_axes", 0)) {
      out[0] = in[0];
      return KILN_OK;
    }
    out[0] = fn(G, in[0], NULL, 0, keep);
  } else {
    out[0] = fn(G, in[0], axes, na, keep);
  }
  return KILN_OK;
}
#define REDUCE(name, fn, since)                                                                               \
  static kiln_status op_##name(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin,      \
                               kiln_value *out) {                                                            \
    return reduce(c, n, in, nin, out, fn, c->opset >= (since));                                               \
  }
static kiln_value reduce_l1(kiln_graph *g, kiln_value x, const int64_t *a, int n, bool k) {
  return kiln_reduce_sum(g, kiln_abs(g, x), a, n, k);
}
static kiln_value reduce_sum_square(kiln_graph *g, kiln_value x, const int64_t *a, int n, bool k) {
  return kiln_reduce_sum(g, kiln_mul(g, x, x), a, n, k);
}
static kiln_value reduce_l2(kiln_graph *g, kiln_value x, const int64_t *a, int n, bool k) {
  kiln_dtype t = kiln_value_dtype(g, x);
  kiln_value s = reduce_sum_square(g, kiln_dtype_is_float(t) ? x : kiln_cast(g, x, KILN_F64), a, n, k);
  return kiln_dtype_is_float(t) ? kiln_sqrt(g, s) : kiln_cast(g, kiln_sqrt(g, s), t);
}
static kiln_value reduce_log_sum(kiln_graph *g, kiln_value x, const int64_t *a, int n, bool k) {
  return kiln_log(g, kiln_reduce_sum(g, x, a, n, k));
}
/* max + log(sum(exp(x - max))): no overflow */
static kiln_value reduce_log_sum_exp(kiln_graph *g, kiln_value x, const int64_t *a, int n, bool k) {
  kiln_value m = kiln_reduce_max(g, x, a, n, true);
  kiln_value s = kiln_log(g, kiln_reduce_sum(g, kiln_exp(g, kiln_sub(g, x, m)), a, n, true));
  kiln_value r = kiln_add(g, s, m);
  return k ? r : kiln_reshape(g, r, kiln_value_shape(g, kiln_reduce_sum(g, x, a, n, false)));
}
/* exp(sum log|x|), with the sign from the parity of negatives and 0 when any is 0;
 * integers go through f64 (exact while the product fits 53 bits). */
static kiln_value reduce_prod(kiln_graph *g, kiln_value x, const int64_t *a, int n, bool k) {
  kiln_dtype t = kiln_value_dtype(g, x);
  kiln_value f = t == KILN_F32 || t == KILN_F64 ? x : kiln_cast(g, x, KILN_F64);
  kiln_dtype ft = kiln_value_dtype(g, f);
  kiln_value zero = kiln_scalar(g, ft, 0), one = kiln_scalar(g, ft, 1), two = kiln_scalar(g, ft, 2);
  kiln_value mag = kiln_exp(g, kiln_reduce_sum(g, kiln_log(g, kiln_abs(g, f)), a, n, k));
  kiln_value negs = kiln_reduce_sum(g, kiln_cast(g, kiln_less(g, f, zero), ft), a, n, k);
  kiln_value odd = kiln_sub(g, negs, kiln_mul(g, two, kiln_floor(g, kiln_div(g, negs, two))));
  kiln_value p = kiln_mul(g, mag, kiln_sub(g, one, kiln_mul(g, two, odd)));
  kiln_value any_zero = kiln_greater(g, kiln_reduce_max(g, kiln_cast(g, kiln_equal(g, f, zero), ft), a, n, k), zero);
  p = kiln_select(g, any_zero, zero, p);
  if (ft != t) p = kiln_cast(g, kiln_floor(g, kiln_add(g, p, kiln_scalar(g, ft, 0.5))), t);
  return p;
}

REDUCE(ReduceSum, kiln_reduce_sum, 13)
REDUCE(ReduceL1, reduce_l1, 18)
REDUCE(ReduceL2, reduce_l2, 18)
REDUCE(ReduceSumSquare, reduce_sum_square, 18)
REDUCE(ReduceLogSum, reduce_log_sum, 18)
REDUCE(ReduceLogSumExp, reduce_log_sum_exp, 18)
REDUCE(ReduceProd, reduce_prod, 18)
REDUCE(ReduceMean, kiln_reduce_mean, 18)
REDUCE(ReduceMax, kiln_reduce_max, 18)
REDUCE(ReduceMin, kiln_reduce_min, 18)

/* kiln's argmax takes the first maximum; select_last_index reverses the axis and maps back. */
static kiln_status arg_extreme(onnx_ctx *c, const Onnx__NodeProto *n, kiln_value x, kiln_value *out) {
  kiln_shape s = kiln_value_shape(G, x);
  int axis = norm_axis(onnx_attr_int(n, "axis", 0), s.rank);
  bool keep = onnx_attr_int(n, "keepdims", 1) != 0;
  if (axis < 0 || axis >= s.rank) return onnx_fail(c, n, KILN_ERR_INVALID, "axis out of range for rank %d", s.rank);
  if (!onnx_attr_int(n, "select_last_index", 0)) {
    out[0] = kiln_argmax(G, x, axis, keep);
    return KILN_OK;
  }
  kiln_value r = kiln_argmax(G, slice_axis(c, x, axis, -1, INT64_MIN, -1), axis, keep);
  out[0] = kiln_sub(G, kiln_scalar(G, type_of(c, r), (double)(s.dims[axis] - 1)), r);
  return KILN_OK;
}
static kiln_status op_ArgMax(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  return arg_extreme(c, n, in[0], out);
}
static kiln_status op_ArgMin(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  return arg_extreme(c, n, kiln_neg(G, in[0]), out);
}

/* ---- movement ---- */

static kiln_status op_Reshape(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  int64_t v[KILN_MAX_RANK];
  int k;
  kiln_status st = c->opset < 5 ? KILN_OK : onnx_const_ints(c, n, 1, v, KILN_MAX_RANK, &k);
  if (st != KILN_OK) return st;
  kiln_shape xs = kiln_value_shape(G, in[0]), s = {.rank = k};
  bool allowzero = onnx_attr_int(n, "allowzero", 0) != 0;
  for (int i = 0; i < k; i++) s.dims[i] = v[i] == 0 && !allowzero ? xs.dims[i] : v[i];
  out[0] = kiln_reshape(G, in[0], s);
  return KILN_OK;
}

static kiln_status op_Flatten(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  kiln_shape s = kiln_value_shape(G, in[0]);
  int axis = norm_axis(onnx_attr_int(n, "axis", 1), s.rank);
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < s.rank; i++) *(i < axis ? &outer : &inner) *= s.dims[i];
  out[0] = kiln_reshape(G, in[0], KILN_SHAPE(outer, inner));
  return KILN_OK;
}

static kiln_status op_Transpose(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  int r = rank_of(c, in[0]);
  int64_t perm[KILN_MAX_RANK];
  if (onnx_attr_ints(n, "perm", perm, KILN_MAX_RANK) < 0)
    for (int i = 0; i < r; i++) perm[i] = r - 1 - i;
  out[0] = kiln_transpose(G, in[0], perm, r);
  return KILN_OK;
}

/* Squeeze/Unsqueeze axes: an attribute before opset 13, an input since. */
static kiln_status axes_of(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, int64_t *axes, int *na) {
  if (c->opset >= 13) {
    if (!HAS(1)) return *na = -1, KILN_OK;
    return onnx_const_ints(c, n, 1, axes, KILN_MAX_RANK, na);
  }
  *na = onnx_attr_ints(n, "axes", axes, KILN_MAX_RANK);
  return KILN_OK;
}

static kiln_status op_Squeeze(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  int64_t axes[KILN_MAX_RANK];
  int na;
  kiln_status st = axes_of(c, n, in, nin, axes, &na);
  if (st != KILN_OK) return st;
  kiln_shape xs = kiln_value_shape(G, in[0]), s = {0};
  for (int i = 0; i < xs.rank; i++) {
    bool drop = na < 0 && xs.dims[i] == 1;
    for (int j = 0; j < na; j++) drop |= norm_axis(axes[j], xs.rank) == i;
    if (drop && xs.dims[i] != 1) return onnx_fail(c, n, KILN_ERR_INVALID, "axis %d has size %lld, not 1", i, (long long)xs.dims[i]);
    if (!drop) s.dims[s.rank++] = xs.dims[i];
  }
  out[0] = kiln_reshape(G, in[0], s);
  return KILN_OK;
}

static kiln_status op_Unsqueeze(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  int64_t axes[KILN_MAX_RANK];
  int na;
  kiln_status st = axes_of(c, n, in, nin, axes, &na);
  if (st != KILN_OK) return st;
  kiln_shape xs = kiln_value_shape(G, in[0]), s = {.rank = xs.rank + (na > 0 ? na : 0)};
  if (na <= 0 || s.rank > KILN_MAX_RANK) return onnx_fail(c, n, KILN_ERR_INVALID, "bad axes");
  bool ins[KILN_MAX_RANK] = {0};
  for (int j = 0; j < na; j++) {
    int a = norm_axis(axes[j], s.rank);
    if (a < 0 || a >= s.rank || ins[a])
      return onnx_fail(c, n, KILN_ERR_INVALID, "axis %lld is out of range for rank %d or repeated", (long long)axes[j], s.rank);
    ins[a] = true;
  }
  for (int i = 0, k = 0; i < s.rank; i++) s.dims[i] = ins[i] ? 1 : xs.dims[k++];
  out[0] = kiln_reshape(G, in[0], s);
  return KILN_OK;
}

static kiln_status op_Concat(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  out[0] = kiln_concat(G, in, (int)nin, norm_axis(onnx_attr_int(n, "axis", 0), rank_of(c, in[0])));
  return KILN_OK;
}

static kiln_status op_Gather(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  out[0] = kiln_gather(G, in[0], in[1], norm_axis(onnx_attr_int(n, "axis", 0), rank_of(c, in[0])));
  return KILN_OK;
}

static kiln_status op_Slice(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  int r = rank_of(c, in[0]);
  int64_t st_[KILN_MAX_RANK], en[KILN_MAX_RANK], ax[KILN_MAX_RANK], sp[KILN_MAX_RANK];
  int ns, ne, na = -1, np = -1;
  kiln_status st;
  if (c->opset < 10) {
    ns = onnx_attr_ints(n, "starts", st_, KILN_MAX_RANK);
    ne = onnx_attr_ints(n, "ends", en, KILN_MAX_RANK);
    na = onnx_attr_ints(n, "axes", ax, KILN_MAX_RANK);
  } else {
    if ((st = onnx_const_ints(c, n, 1, st_, KILN_MAX_RANK, &ns)) != KILN_OK) return st;
    if ((st = onnx_const_ints(c, n, 2, en, KILN_MAX_RANK, &ne)) != KILN_OK) return st;
    if (HAS(3) && (st = onnx_const_ints(c, n, 3, ax, KILN_MAX_RANK, &na)) != KILN_OK) return st;
    if (HAS(4) && (st = onnx_const_ints(c, n, 4, sp, KILN_MAX_RANK, &np)) != KILN_OK) return st;
  }
  if (ns != ne || (na >= 0 && na != ns) || (np >= 0 && np != ns)) return onnx_fail(c, n, KILN_ERR_INVALID, "starts/ends/axes/steps differ in length");
  int64_t S[KILN_MAX_RANK], E[KILN_MAX_RANK], P[KILN_MAX_RANK];
  kiln_shape xs = kiln_value_shape(G, in[0]);
  for (int d = 0; d < r; d++) S[d] = 0, E[d] = xs.dims[d], P[d] = 1;
  for (int j = 0; j < ns; j++) {
    int d = na >= 0 ? norm_axis(ax[j], r) : j;
    if (d < 0 || d >= r) return onnx_fail(c, n, KILN_ERR_INVALID, "axis %lld out of range", (long long)ax[j]);
    P[d] = np >= 0 ? sp[j] : 1;
    /* ONNX clamps huge sentinels (INT64_MAX/MIN); kiln's slice clamps the same way */
    S[d] = st_[j] > xs.dims[d] ? xs.dims[d] : st_[j] < -xs.dims[d] - 1 ? -xs.dims[d] - 1 : st_[j];
    E[d] = en[j] > xs.dims[d] ? xs.dims[d] : en[j] < -xs.dims[d] - 1 ? -xs.dims[d] - 1 : en[j];
  }
  out[0] = kiln_slice(G, in[0], S, E, P, r);
  return KILN_OK;
}

static kiln_status op_Pad(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  const char *mode = onnx_attr_string(n, "mode", "constant");
  bool reflect = !strcmp(mode, "reflect"), edge = !strcmp(mode, "edge");
  if (!reflect && !edge && strcmp(mode, "constant")) return onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "mode=%s", mode);
  int r = rank_of(c, in[0]), np;
  int64_t pads[2 * KILN_MAX_RANK];
  double value = 0;
  if (c->opset < 11) {
    np = onnx_attr_ints(n, "pads", pads, 2 * KILN_MAX_RANK);
    value = onnx_attr_float(n, "value", 0);
  } else {
    kiln_status st = onnx_const_ints(c, n, 1, pads, 2 * KILN_MAX_RANK, &np);
    if (st != KILN_OK) return st;
    if (HAS(2)) {
      const kiln_tensor *v = onnx_const_input(c, n, 2);
      if (!v) return onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "a run-time pad value");
      value = kiln_tensor_get_f64(v, 0);
    }
    if (HAS(3)) return onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "the axes input");
  }
  if (np != 2 * r) return onnx_fail(c, n, KILN_ERR_INVALID, "%d pads for rank %d", np, r);
  for (int i = 0; i < 2 * r; i++)
    if (pads[i] < 0) return onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "negative pads (cropping)");
  if (!reflect && !edge) {
    out[0] = kiln_pad(G, in[0], pads, pads + r, value);
    return KILN_OK;
  }
  /* edge repeats the border element, reflect mirrors without repeating it: slices + concat per axis */
  kiln_value x = in[0];
  for (int a = 0; a < r; a++) {
    kiln_shape s = kiln_value_shape(G, x);
    int64_t len = s.dims[a];
    if (!pads[a] && !pads[r + a]) continue;
    if (len < 1 || (reflect && (pads[a] >= len || pads[r + a] >= len)))
      return onnx_fail(c, n, KILN_ERR_INVALID, "axis %d of size %lld cannot be %s-padded by %lld/%lld", a, (long long)len, mode,
                       (long long)pads[a], (long long)pads[r + a]);
    kiln_value parts[3];
    int np2 = 0;
    for (int side = 0; side < 2; side++) {
      int64_t k = pads[side * r + a];
      if (side == 1) parts[np2++] = x;
      if (!k) continue;
      if (edge) {
        int64_t at = side ? len - 1 : 0;
        kiln_shape bs = s;
        bs.dims[a] = k;
        parts[np2++] = kiln_broadcast_to(G, slice_axis(c, x, a, at, at + 1, 1), bs);
      } else { /* before: x[k], ..., x[1]; after: x[len-2], ..., x[len-1-k] */
        int64_t end = side ? (len - 2 - k >= 0 ? len - 2 - k : -len - 1) : 0;
        parts[np2++] = slice_axis(c, x, a, side ? len - 2 : k, end, -1);
      }
    }
    x = kiln_concat(G, parts, np2, a);
  }
  out[0] = x;
  return KILN_OK;
}

static kiln_status op_Expand(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  int64_t v[KILN_MAX_RANK];
  int k;
  kiln_status st = onnx_const_ints(c, n, 1, v, KILN_MAX_RANK, &k);
  if (st != KILN_OK) return st;
  kiln_shape xs = kiln_value_shape(G, in[0]), s = {.rank = k > xs.rank ? k : xs.rank};
  /* the bidirectional broadcast of x's shape and the given one */
  for (int i = 0; i < s.rank; i++) {
    int a = i - (s.rank - xs.rank), b = i - (s.rank - k);
    int64_t da = a >= 0 ? xs.dims[a] : 1, db = b >= 0 ? v[b] : 1;
    s.dims[i] = da == 1 ? db : da;
  }
  out[0] = kiln_broadcast_to(G, in[0], s);
  return KILN_OK;
}

static kiln_status op_Shape(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  kiln_shape s = kiln_value_shape(G, in[0]);
  int r = s.rank;
  int64_t start = norm_axis(onnx_attr_int(n, "start", 0), r), end = onnx_attr(n, "end") ? norm_axis(onnx_attr_int(n, "end", r), r) : r;
  if (start < 0) start = 0;
  if (end > r) end = r;
  int64_t d[KILN_MAX_RANK];
  int k = 0;
  for (int64_t i = start; i < end; i++) {
    if (s.dims[i] < 0) return onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "the shape of a dynamic dimension");
    d[k++] = s.dims[i];
  }
  out[0] = kiln_constant(G, KILN_I64, KILN_SHAPE(k), d);
  return KILN_OK;
}

static kiln_status op_ConstantOfShape(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  int64_t v[KILN_MAX_RANK];
  int k;
  kiln_status st = onnx_const_ints(c, n, 0, v, KILN_MAX_RANK, &k);
  if (st != KILN_OK) return st;
  kiln_shape s = {.rank = k};
  memcpy(s.dims, v, sizeof(int64_t) * (size_t)k);
  const Onnx__AttributeProto *a = onnx_attr(n, "value");
  kiln_tensor *t = NULL;
  if (a && a->t && (st = onnx_tensor_from_proto(a->t, ".", &t)) != KILN_OK) return onnx_fail(c, n, st, "%s", kiln_errmsg());
  out[0] = kiln_fill(G, t ? kiln_tensor_dtype(t) : KILN_F32, s, t ? kiln_tensor_get_f64(t, 0) : 0.0);
  kiln_tensor_free(t);
  return KILN_OK;
}

static kiln_status op_Constant(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  const Onnx__AttributeProto *a;
  if ((a = onnx_attr(n, "value")) && a->t) {
    kiln_tensor *t;
    kiln_status st = onnx_tensor_from_proto(a->t, ".", &t);
    if (st != KILN_OK) return onnx_fail(c, n, st, "%s", kiln_errmsg());
    kiln_shape s = {.rank = kiln_tensor_rank(t)};
    memcpy(s.dims, kiln_tensor_dims(t), sizeof(int64_t) * (size_t)s.rank);
    out[0] = kiln_constant(G, kiln_tensor_dtype(t), s, kiln_tensor_cdata(t));
    kiln_tensor_free(t);
  } else if ((a = onnx_attr(n, "value_float"))) {
    float f = a->f;
    out[0] = kiln_constant(G, KILN_F32, KILN_SCALAR, &f);
  } else if ((a = onnx_attr(n, "value_int"))) {
    out[0] = kiln_constant(G, KILN_I64, KILN_SCALAR, &a->i);
  } else if ((a = onnx_attr(n, "value_floats"))) {
    float *f = malloc(sizeof *f * (a->n_floats + 1));
    if (!f) return onnx_fail(c, n, KILN_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < a->n_floats; i++) f[i] = a->floats[i];
    out[0] = kiln_constant(G, KILN_F32, KILN_SHAPE((int64_t)a->n_floats), f);
    free(f);
  } else if ((a = onnx_attr(n, "value_ints"))) {
    out[0] = kiln_constant(G, KILN_I64, KILN_SHAPE((int64_t)a->n_ints), a->ints);
  } else {
    return onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "a Constant without a tensor, float or int value");
  }
  return KILN_OK;
}

static kiln_status op_Dropout(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  if (HAS(2)) {
    const kiln_tensor *t = onnx_const_input(c, n, 2);
    if (!t || kiln_tensor_get_f64(t, 0) != 0) return onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "training_mode (inference only)");
  }
  out[0] = in[0];
  if (n->n_output > 1) out[1] = kiln_fill(G, KILN_BOOL, kiln_value_shape(G, in[0]), 1);
  return KILN_OK;
}

static kiln_status op_Split(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out) {
  kiln_shape s = kiln_value_shape(G, in[0]);
  int axis = norm_axis(onnx_attr_int(n, "axis", 0), s.rank), k = (int)n->n_output, ns = -1;
  int64_t sizes[16];
  if (c->opset >= 13 && HAS(1)) {
    kiln_status st = onnx_const_ints(c, n, 1, sizes, 16, &ns);
    if (st != KILN_OK) return st;
  } else if (c->opset < 13) {
    ns = onnx_attr_ints(n, "split", sizes, 16);
  }
  if (ns < 0) {
    if (s.dims[axis] % k) return onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "uneven split of %lld into %d", (long long)s.dims[axis], k);
    for (int i = 0; i < k; i++) sizes[i] = s.dims[axis] / k;
  } else if (ns != k) {
    return onnx_fail(c, n, KILN_ERR_INVALID, "%d split sizes for %d outputs", ns, k);
  }
  int64_t start = 0;
  for (int i = 0; i < k; i++) {
    out[i] = slice_axis(c, in[0], axis, start, start + sizes[i], 1);
    start += sizes[i];
  }
  return KILN_OK;
}

static const onnx_op ops[] = {
#define OP(name) {#name, op_##name}
    OP(Abs), OP(Neg), OP(Exp), OP(Log), OP(Sqrt), OP(Tanh), OP(Sigmoid), OP(Relu), OP(Floor), OP(Ceil), OP(Sin),
    OP(Cos), OP(Tan), OP(Sign), OP(Not), OP(Identity), OP(Reciprocal), OP(Softsign), OP(Softplus), OP(LeakyRelu),
    OP(Elu), OP(Selu), OP(Celu), OP(HardSigmoid), OP(HardSwish), OP(ThresholdedRelu), OP(PRelu), OP(Clip), OP(Add),
    OP(Sub), OP(Mul), OP(Div), OP(Pow), OP(Equal), OP(Less), OP(Greater), OP(LessOrEqual), OP(GreaterOrEqual),
    OP(And), OP(Or), OP(Xor), OP(Where), OP(Max), OP(Min), OP(Sum), OP(Mean), OP(Cast), OP(MatMul), OP(Gemm),
    OP(GlobalAveragePool), OP(GlobalMaxPool), OP(BatchNormalization),
    OP(LayerNormalization), OP(Softmax), OP(LogSoftmax), OP(ReduceSum), OP(ReduceMean), OP(ReduceMax),
    OP(ReduceMin), OP(ArgMax), OP(ArgMin), OP(Reshape), OP(Flatten), OP(Transpose), OP(Squeeze), OP(Unsqueeze),
    OP(Concat), OP(Gather), OP(Slice), OP(Pad), OP(Expand), OP(Shape), OP(ConstantOfShape), OP(Constant),
    OP(Dropout), OP(Split), OP(Erf), OP(Atan), OP(Asin), OP(Acos), OP(Sinh), OP(Cosh), OP(Asinh), OP(Acosh),
    OP(Atanh), OP(IsNaN), OP(IsInf), OP(Round), OP(Shrink), OP(Mod), OP(CastLike), OP(ReduceL1), OP(ReduceL2),
    OP(ReduceSumSquare), OP(ReduceLogSum), OP(ReduceLogSumExp), OP(ReduceProd),
#undef OP
#define EXTERN_OP(name) {#name, onnx_op_##name},
    ONNX_EXTERN_OPS(EXTERN_OP)
#undef EXTERN_OP
};

const onnx_op *onnx_find_op(const char *name) {
  for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
    if (!strcmp(ops[i].name, name)) return &ops[i];
  return NULL;
}

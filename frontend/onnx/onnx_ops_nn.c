/* ONNX neural-network operators that are not single kiln kernels: normalizations,
 * the two ONNX losses, ConvTranspose (a convolution of the zero-upsampled input
 * with the flipped kernel), Resize (per-axis gathers with interpolation weights
 * computed while importing) and the recurrent layers (unrolled over the static
 * sequence length). */
#include <math.h>
#include <string.h>
#include "frontend/onnx/onnx_impl.h"
#include "runtime/tensor_impl.h"

static kiln_shape shape_of(onnx_ctx *c, kiln_value v) { return kiln_value_shape(G, v); }

/* The parameter p [C] shaped to broadcast along axis 1 of a rank-r tensor. */
static kiln_value channel_param(onnx_ctx *c, kiln_value p, int r) {
  kiln_shape s = {.rank = r};
  for (int i = 0; i < r; i++) s.dims[i] = 1;
  s.dims[1] = shape_of(c, p).dims[0];
  return kiln_reshape(G, p, s);
}

/* (x - mean) * rsqrt(var + eps) over the given axes. */
static kiln_value normalize(onnx_ctx *c, kiln_value x, const int64_t *axes, int na, double eps) {
  kiln_value d = kiln_sub(G, x, kiln_reduce_mean(G, x, axes, na, true));
  kiln_value var = kiln_reduce_mean(G, kiln_mul(G, d, d), axes, na, true);
  return kiln_mul(G, d, kiln_rsqrt(G, kiln_add(G, var, scalar_like(c, x, eps))));
}

ONNX_HANDLER(InstanceNormalization) {
  kiln_value x = in[0];
  int r = rank_of(c, x);
  int64_t axes[KILN_MAX_RANK];
  for (int i = 2; i < r; i++) axes[i - 2] = i;
  kiln_value y = normalize(c, x, axes, r - 2, onnx_attr_float(n, "epsilon", 1e-5));
  out[0] = kiln_add(G, kiln_mul(G, y, channel_param(c, in[1], r)), channel_param(c, in[2], r));
  return KILN_OK;
}

/* The spec's function: (x - mean) / (sqrt(var) + 1e-9). */
ONNX_HANDLER(MeanVarianceNormalization) {
  kiln_value x = in[0];
  int64_t axes[KILN_MAX_RANK] = {0, 2, 3};
  int na = onnx_attr_ints(n, "axes", axes, KILN_MAX_RANK);
  if (na < 0) na = 3;
  for (int i = 0; i < na; i++) axes[i] = norm_axis(axes[i], rank_of(c, x));
  kiln_value d = kiln_sub(G, x, kiln_reduce_mean(G, x, axes, na, true));
  kiln_value sd = kiln_sqrt(G, kiln_reduce_mean(G, kiln_mul(G, d, d), axes, na, true));
  out[0] = kiln_div(G, d, kiln_add(G, sd, scalar_like(c, x, 1e-9)));
  return KILN_OK;
}

/* x / (bias + alpha / size * sum of squares over a window of channels)^beta */
ONNX_HANDLER(LRN) {
  kiln_value x = in[0];
  kiln_shape s = shape_of(c, x);
  int64_t size = onnx_attr_int(n, "size", 0);
  if (size <= 0 || s.rank < 3) return onnx_fail(c, n, KILN_ERR_INVALID, "size %lld on rank %d", (long long)size, s.rank);
  int64_t lo[KILN_MAX_RANK] = {0}, hi[KILN_MAX_RANK] = {0};
  lo[1] = (size - 1) / 2, hi[1] = size - 1 - lo[1];
  kiln_value sq = kiln_pad(G, kiln_mul(G, x, x), lo, hi, 0), sum = {KILN_NONE};
  for (int64_t k = 0; k < size; k++) {
    kiln_value part = slice_axis(c, sq, 1, k, k + s.dims[1], 1);
    sum = k ? kiln_add(G, sum, part) : part;
  }
  double alpha = onnx_attr_float(n, "alpha", 1e-4), beta = onnx_attr_float(n, "beta", 0.75), bias = onnx_attr_float(n, "bias", 1);
  kiln_value base = kiln_add(G, scalar_like(c, x, bias), kiln_mul(G, scalar_like(c, x, alpha / (double)size), sum));
  out[0] = kiln_div(G, x, kiln_pow(G, base, scalar_like(c, x, beta)));
  return KILN_OK;
}

/* ---- losses ---- */

/* -logp[n, target, d...] * weight[target], zero where target == ignore_index, reduced
 * by none / sum / mean (the mean divides by the summed weights, as the spec's
 * reference does). logp is [N, C, d...], target [N, d...]. */
static kiln_status nll(onnx_ctx *c, const Onnx__NodeProto *n, kiln_value logp, kiln_value target, kiln_value weight,
                       kiln_value *out) {
  kiln_shape ls = shape_of(c, logp);
  if (ls.rank < 2) return onnx_fail(c, n, KILN_ERR_INVALID, "input of rank %d (at least 2)", ls.rank);
  int64_t classes = ls.dims[1];
  kiln_dtype t = type_of(c, logp);
  kiln_value tgt = kiln_cast(G, target, KILN_I64), zero_i = kiln_scalar(G, KILN_I64, 0);
  kiln_value keep = kiln_fill(G, KILN_BOOL, shape_of(c, tgt), 1);
  const Onnx__AttributeProto *ig = onnx_attr(n, "ignore_index");
  if (ig) keep = kiln_logical_not(G, kiln_equal(G, tgt, kiln_scalar(G, KILN_I64, (double)ig->i)));
  kiln_value safe = kiln_select(G, keep, tgt, zero_i);
  /* classes last, then pick with a one-hot mask */
  int64_t perm[KILN_MAX_RANK];
  perm[0] = 0;
  for (int i = 2; i < ls.rank; i++) perm[i - 1] = i;
  perm[ls.rank - 1] = 1;
  kiln_value lt = kiln_transpose(G, logp, perm, ls.rank);
  kiln_value picked = kiln_reduce_sum(G, kiln_mul(G, lt, kiln_one_hot(G, safe, classes, t)), (int64_t[]){-1}, 1, false);
  kiln_value w = weight.id != KILN_NONE ? kiln_gather(G, weight, safe, 0) : kiln_fill(G, t, shape_of(c, tgt), 1);
  w = kiln_select(G, keep, w, scalar_like(c, picked, 0));
  kiln_value loss = kiln_neg(G, kiln_mul(G, picked, w));
  const char *red = onnx_attr_string(n, "reduction", "mean");
  if (!strcmp(red, "none")) out[0] = loss;
  else if (!strcmp(red, "sum")) out[0] = kiln_reduce_sum(G, loss, NULL, 0, false);
  else if (!strcmp(red, "mean")) out[0] = kiln_div(G, kiln_reduce_sum(G, loss, NULL, 0, false), kiln_reduce_sum(G, w, NULL, 0, false));
  else return onnx_fail(c, n, KILN_ERR_INVALID, "reduction=%s", red);
  return KILN_OK;
}

ONNX_HANDLER(NegativeLogLikelihoodLoss) { return nll(c, n, in[0], in[1], HAS(2) ? in[2] : (kiln_value){KILN_NONE}, out); }

ONNX_HANDLER(SoftmaxCrossEntropyLoss) {
  kiln_value logp = kiln_log_softmax(G, in[0], 1);
  kiln_status st = nll(c, n, logp, in[1], HAS(2) ? in[2] : (kiln_value){KILN_NONE}, out);
  if (n->n_output > 1) out[1] = logp;
  return st;
}

/* ---- ConvTranspose ---- */

/* x [N, C, L...] with s-1 zeros between neighbours along each spatial axis. */
static kiln_value insert_zeros(onnx_ctx *c, kiln_value x, const int64_t *strides) {
  kiln_shape s = shape_of(c, x);
  for (int a = 2; a < s.rank; a++) {
    int64_t st = strides[a - 2], len = s.dims[a];
    if (st == 1) continue;
    kiln_shape e = {.rank = s.rank + 1};
    for (int i = 0, j = 0; i < e.rank; i++) e.dims[i] = i == a + 1 ? 1 : s.dims[j++];
    int64_t lo[KILN_MAX_RANK] = {0}, hi[KILN_MAX_RANK] = {0};
    hi[a + 1] = st - 1;
    x = kiln_pad(G, kiln_reshape(G, x, e), lo, hi, 0);
    s.dims[a] = len * st;
    x = slice_axis(c, kiln_reshape(G, x, s), a, 0, (len - 1) * st + 1, 1);
    s.dims[a] = (len - 1) * st + 1;
  }
  return x;
}

ONNX_HANDLER(ConvTranspose) {
  kiln_value x = in[0], w = in[1];
  kiln_shape xs = shape_of(c, x), ws = shape_of(c, w);
  int sp = xs.rank - 2;
  if (sp < 1 || sp > 2 || ws.rank != xs.rank)
    return onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "%d-D input: only 1-D and 2-D transposed convolutions", sp);
  int64_t g = onnx_attr_int(n, "group", 1), k[2], st[2] = {1, 1}, dil[2] = {1, 1}, pads[4] = {0}, opad[2] = {0}, oshape[2];
  int64_t v[8];
  for (int i = 0; i < sp; i++) k[i] = ws.dims[2 + i];
  if (onnx_attr_ints(n, "strides", v, 8) == sp) memcpy(st, v, sizeof(int64_t) * (size_t)sp);
  if (onnx_attr_ints(n, "dilations", v, 8) == sp) memcpy(dil, v, sizeof(int64_t) * (size_t)sp);
  if (onnx_attr_ints(n, "output_padding", v, 8) == sp) memcpy(opad, v, sizeof(int64_t) * (size_t)sp);
  if (onnx_attr_ints(n, "pads", v, 8) == 2 * sp)
    for (int i = 0; i < sp; i++) pads[i] = v[i], pads[2 + i] = v[sp + i];
  const char *ap = onnx_attr_string(n, "auto_pad", "NOTSET");
  bool have_shape = onnx_attr_ints(n, "output_shape", v, 8) >= sp;
  if (have_shape) memcpy(oshape, v + (onnx_attr_ints(n, "output_shape", v, 8) - sp), sizeof(int64_t) * (size_t)sp);
  else if (strcmp(ap, "NOTSET") && strcmp(ap, "VALID"))
    for (int i = 0; i < sp; i++) oshape[i] = xs.dims[2 + i] * st[i], have_shape = true;
  if (have_shape) /* the spec's split of the total padding */
    for (int i = 0; i < sp; i++) {
      int64_t total = st[i] * (xs.dims[2 + i] - 1) + opad[i] + (k[i] - 1) * dil[i] + 1 - oshape[i];
      bool upper = !strcmp(ap, "SAME_UPPER");
      int64_t half = total >= 0 ? total / 2 : -((-total + 1) / 2); /* floor: a negative total grows the end */
      pads[i] = upper ? half : total - half;
      pads[2 + i] = total - pads[i];
    }
  /* 1-D runs as 2-D with a unit height */
  if (sp == 1) {
    x = kiln_reshape(G, x, KILN_SHAPE(xs.dims[0], xs.dims[1], 1, xs.dims[2]));
    w = kiln_reshape(G, w, KILN_SHAPE(ws.dims[0], ws.dims[1], 1, ws.dims[2]));
    k[1] = k[0], k[0] = 1, st[1] = st[0], st[0] = 1, dil[1] = dil[0], dil[0] = 1, opad[1] = opad[0], opad[0] = 0;
    pads[3] = pads[2], pads[1] = pads[0], pads[0] = pads[2] = 0;
  }
  int64_t cin = ws.dims[0], cout_g = ws.dims[1];
  if (cin % g) return onnx_fail(c, n, KILN_ERR_INVALID, "%lld input channels in %lld groups", (long long)cin, (long long)g);
  /* [Cin, Cout/g, kh, kw] -> [Cout, Cin/g, kh, kw], spatially flipped */
  kiln_value wt = kiln_reshape(G, w, KILN_SHAPE(g, cin / g, cout_g, k[0], k[1]));
  wt = kiln_reshape(G, kiln_transpose(G, wt, (int64_t[]){0, 2, 1, 3, 4}, 5), KILN_SHAPE(g * cout_g, cin / g, k[0], k[1]));
  wt = kiln_slice(G, wt, (int64_t[]){0, 0, -1, -1}, (int64_t[]){g * cout_g, cin / g, INT64_MIN, INT64_MIN},
                  (int64_t[]){1, 1, -1, -1}, 4);
  kiln_value u = insert_zeros(c, x, st);
  /* full padding (k-1)*d minus the given pads, output_padding at the end; negative crops */
  int64_t lo[4] = {0}, hi[4] = {0}, crop_lo[2], crop_hi[2];
  for (int i = 0; i < 2; i++) {
    int64_t full = (k[i] - 1) * dil[i], a = full - pads[i], b = full - pads[2 + i] + opad[i];
    lo[2 + i] = a > 0 ? a : 0, hi[2 + i] = b > 0 ? b : 0;
    crop_lo[i] = a < 0 ? -a : 0, crop_hi[i] = b < 0 ? -b : 0;
  }
  u = kiln_pad(G, u, lo, hi, 0);
  kiln_shape us = shape_of(c, u);
  u = kiln_slice(G, u, (int64_t[]){0, 0, crop_lo[0], crop_lo[1]},
                 (int64_t[]){us.dims[0], us.dims[1], us.dims[2] - crop_hi[0], us.dims[3] - crop_hi[1]}, (int64_t[]){1, 1, 1, 1}, 4);
  kiln_conv2d_opts o = {.layout = KILN_NCHW, .padding = KILN_PAD_EXPLICIT, .groups = g};
  o.strides[0] = o.strides[1] = 1;
  o.dilations[0] = dil[0], o.dilations[1] = dil[1];
  kiln_value y = kiln_conv2d(G, u, wt, &o);
  if (HAS(2)) y = kiln_add(G, y, kiln_reshape(G, in[2], KILN_SHAPE(1, g * cout_g, 1, 1)));
  if (sp == 1) {
    kiln_shape ys = shape_of(c, y);
    y = kiln_reshape(G, y, KILN_SHAPE(ys.dims[0], ys.dims[1], ys.dims[3]));
  }
  out[0] = y;
  return KILN_OK;
}

/* ---- Resize ---- */

typedef struct resize_mode {
  enum { NEAREST, LINEAR, CUBIC } kind;
  const char *coord, *nearest;
  double cubic_a, extrapolation;
  bool exclude_outside;
} resize_mode;

/* The source coordinate of output index x along an axis (ONNX's coordinate modes);
 * *outside is set where tf_crop_and_resize reads outside the input. */
static double source_coord(const resize_mode *m, double x, double scale, int64_t in, double out_width, const double *roi,
                           bool *outside) {
  *outside = false;
  if (!strcmp(m->coord, "align_corners")) return out_width == 1 ? 0 : x * (double)(in - 1) / (out_width - 1);
  if (!strcmp(m->coord, "asymmetric")) return x / scale;
  if (!strcmp(m->coord, "tf_half_pixel_for_nn")) return (x + 0.5) / scale;
  if (!strcmp(m->coord, "pytorch_half_pixel")) return out_width == 1 ? -0.5 : (x + 0.5) / scale - 0.5;
  if (!strcmp(m->coord, "tf_crop_and_resize")) {
    double o = out_width == 1 ? (roi[1] - roi[0]) * (double)(in - 1) / 2 : x * (roi[1] - roi[0]) * (double)(in - 1) / (out_width - 1);
    o += roi[0] * (double)(in - 1);
    *outside = o < 0 || o > (double)(in - 1);
    return o;
  }
  return (x + 0.5) / scale - 0.5; /* half_pixel */
}

/* Weights for taps at floor(x) - 1 .. floor(x) + 2 (cubic), floor(x) .. +1 (linear or nearest). */
static int taps(const resize_mode *m, double x, double *w, int64_t *first) {
  double f = floor(x), r = x - f;
  if (m->kind == NEAREST) {
    bool up;
    if (r == 0) up = false;
    else if (!strcmp(m->nearest, "floor")) up = false;
    else if (!strcmp(m->nearest, "ceil")) up = true;
    else if (!strcmp(m->nearest, "round_prefer_ceil")) up = r >= 0.5;
    else up = r > 0.5; /* round_prefer_floor */
    *first = (int64_t)f + up;
    w[0] = 1;
    return 1;
  }
  if (m->kind == LINEAR) {
    *first = (int64_t)f;
    w[0] = 1 - r, w[1] = r;
    return 2;
  }
  double A = m->cubic_a, a = r + 1, b = r, c1 = 1 - r, d = 2 - r;
  w[0] = ((A * a - 5 * A) * a + 8 * A) * a - 4 * A;
  w[1] = ((A + 2) * b - (A + 3)) * b * b + 1;
  w[2] = ((A + 2) * c1 - (A + 3)) * c1 * c1 + 1;
  w[3] = ((A * d - 5 * A) * d + 8 * A) * d - 4 * A;
  *first = (int64_t)f - 1;
  return 4;
}

/* Resizes one axis: out = sum over taps of gather(x, idx_t) * weight_t, both computed here. */
static kiln_status resize_axis(onnx_ctx *c, kiln_value *x, int axis, int64_t out_len, double scale, const double *roi,
                               const resize_mode *m) {
  kiln_shape s = shape_of(c, *x);
  int64_t in = s.dims[axis];
  double out_width = scale * (double)in;
  int64_t *idx = calloc((size_t)(4 * out_len), sizeof *idx);
  double *wt = calloc((size_t)(4 * out_len), sizeof *wt);
  uint8_t *outside = calloc((size_t)out_len, 1);
  if (!idx || !wt || !outside) {
    free(idx), free(wt), free(outside);
    return kiln_set_error(KILN_ERR_NOMEM, "resize: out of memory");
  }
  int nt = 1;
  bool any_outside = false;
  for (int64_t o = 0; o < out_len; o++) {
    bool off;
    double w[4], src = source_coord(m, (double)o, scale, in, out_width, roi, &off);
    int64_t first;
    nt = taps(m, src, w, &first);
    double total = 0;
    for (int t = 0; t < nt; t++) {
      int64_t i = first + t;
      if (m->exclude_outside && (i < 0 || i >= in)) w[t] = 0;
      total += w[t];
      idx[t * out_len + o] = i < 0 ? 0 : i >= in ? in - 1 : i;
    }
    for (int t = 0; t < nt; t++) wt[t * out_len + o] = m->exclude_outside && total != 0 ? w[t] / total : w[t];
    outside[o] = off;
    any_outside |= off;
  }
  kiln_dtype ty = type_of(c, *x);
  kiln_shape ws = {.rank = s.rank};
  for (int d = 0; d < s.rank; d++) ws.dims[d] = d == axis ? out_len : 1;
  kiln_value acc = {KILN_NONE};
  for (int t = 0; t < nt; t++) {
    kiln_value taken = kiln_gather(G, *x, kiln_constant(G, KILN_I64, KILN_SHAPE(out_len), idx + t * out_len), axis);
    if (m->kind != NEAREST) {
      kiln_value wc = kiln_cast(G, kiln_constant(G, KILN_F64, ws, wt + t * out_len), ty);
      taken = kiln_mul(G, taken, wc);
    }
    acc = t ? kiln_add(G, acc, taken) : taken;
  }
  if (any_outside) {
    kiln_value mask = kiln_constant(G, KILN_BOOL, ws, outside);
    acc = kiln_select(G, mask, kiln_scalar(G, ty, m->extrapolation), acc);
  }
  free(idx), free(wt), free(outside);
  *x = acc;
  return KILN_OK;
}

/* scales (or sizes) per axis, then one resize_axis per axis that changes. */
static kiln_status resize(onnx_ctx *c, const Onnx__NodeProto *n, kiln_value x, const double *scales, const int64_t *sizes,
                          const double *roi, const resize_mode *m, kiln_value *out) {
  kiln_shape s = shape_of(c, x);
  for (int a = 0; a < s.rank; a++) {
    double scale = sizes ? (double)sizes[a] / (double)s.dims[a] : scales[a];
    int64_t len = sizes ? sizes[a] : (int64_t)floor(scale * (double)s.dims[a]);
    if (!(scale > 0) || len <= 0) return onnx_fail(c, n, KILN_ERR_INVALID, "axis %d: scale %g gives %lld elements", a, scale, (long long)len);
    double r2[2] = {roi ? roi[a] : 0, roi ? roi[s.rank + a] : 1};
    if (len == s.dims[a] && scale == 1 && strcmp(m->coord, "tf_crop_and_resize")) continue;
    kiln_status st = resize_axis(c, &x, a, len, scale, r2, m);
    if (st != KILN_OK) return st;
  }
  out[0] = x;
  return KILN_OK;
}

/* Reads a constant float input into out (at most cap values); -1 when absent or empty. */
static int const_floats(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, size_t i, double *out, int cap) {
  if (!HAS(i)) return -1;
  const kiln_tensor *t = onnx_const_input(c, n, i);
  if (!t) return -2;
  int64_t k = kiln_tensor_numel(t);
  if (k == 0) return -1;
  if (k > cap) return -2;
  for (int64_t j = 0; j < k; j++) out[j] = kiln_tensor_get_f64(t, j);
  return (int)k;
}

static kiln_status resize_mode_of(onnx_ctx *c, const Onnx__NodeProto *n, resize_mode *m) {
  const char *mode = onnx_attr_string(n, "mode", "nearest");
  m->kind = !strcmp(mode, "nearest") ? NEAREST : (!strcmp(mode, "linear") || !strcmp(mode, "bilinear")) ? LINEAR
          : !strcmp(mode, "cubic") ? CUBIC : -1;
  if ((int)m->kind < 0) return onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "mode=%s", mode);
  /* opset 10 Resize and Upsample: asymmetric coordinates, nearest rounds down */
  bool legacy = c->opset < 11 || !strcmp(n->op_type, "Upsample");
  static _Thread_local char coord[40], nearest[40];
  snprintf(coord, sizeof coord, "%s", legacy ? "asymmetric" : onnx_attr_string(n, "coordinate_transformation_mode", "half_pixel"));
  snprintf(nearest, sizeof nearest, "%s", legacy ? "floor" : onnx_attr_string(n, "nearest_mode", "round_prefer_floor"));
  m->coord = coord, m->nearest = nearest;
  m->cubic_a = onnx_attr_float(n, "cubic_coeff_a", -0.75);
  m->exclude_outside = onnx_attr_int(n, "exclude_outside", 0) != 0;
  m->extrapolation = onnx_attr_float(n, "extrapolation_value", 0);
  if (onnx_attr(n, "antialias") && onnx_attr_int(n, "antialias", 0)) return onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "antialias=1");
  return KILN_OK;
}

ONNX_HANDLER(Resize) {
  resize_mode m;
  kiln_status st = resize_mode_of(c, n, &m);
  if (st != KILN_OK) return st;
  int r = rank_of(c, in[0]);
  double scales[KILN_MAX_RANK], roi[2 * KILN_MAX_RANK];
  int64_t sizes[KILN_MAX_RANK];
  size_t scales_at = c->opset < 11 ? 1 : 2;
  int ns = const_floats(c, n, in, nin, scales_at, scales, KILN_MAX_RANK), nr = -1, nz = -1;
  if (c->opset >= 11) {
    nr = const_floats(c, n, in, nin, 1, roi, 2 * KILN_MAX_RANK);
    double z[KILN_MAX_RANK];
    nz = const_floats(c, n, in, nin, 3, z, KILN_MAX_RANK);
    for (int i = 0; i < nz; i++) sizes[i] = (int64_t)z[i];
  }
  if (ns == -2 || nz == -2 || nr == -2) return onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "scales, sizes and roi must be constants");
  if (ns != r && nz != r) return onnx_fail(c, n, KILN_ERR_INVALID, "needs %d scales or sizes", r);
  if (!strcmp(m.coord, "tf_crop_and_resize") && nr != 2 * r) return onnx_fail(c, n, KILN_ERR_INVALID, "needs a roi of %d values", 2 * r);
  return resize(c, n, in[0], scales, nz == r ? sizes : NULL, nr == 2 * r ? roi : NULL, &m, out);
}

ONNX_HANDLER(Upsample) {
  resize_mode m;
  kiln_status st = resize_mode_of(c, n, &m);
  if (st != KILN_OK) return st;
  int r = rank_of(c, in[0]);
  double scales[KILN_MAX_RANK];
  int ns = const_floats(c, n, in, nin, 1, scales, KILN_MAX_RANK);
  if (ns < 0) {
    const Onnx__AttributeProto *a = onnx_attr(n, "scales");
    ns = a ? (int)a->n_floats : 0;
    for (int i = 0; i < ns && i < KILN_MAX_RANK; i++) scales[i] = a->floats[i];
  }
  if (ns != r) return onnx_fail(c, n, KILN_ERR_INVALID, "needs %d constant scales", r);
  return resize(c, n, in[0], scales, NULL, NULL, &m, out);
}

/* ---- recurrent layers ---- */

typedef enum { ACT_SIGMOID, ACT_TANH, ACT_RELU } rnn_act;

static kiln_value apply(onnx_ctx *c, rnn_act a, kiln_value x) {
  return a == ACT_SIGMOID ? kiln_sigmoid(G, x) : a == ACT_TANH ? kiln_tanh(G, x) : kiln_relu(G, x);
}

typedef struct rnn_spec {
  int gates;        /* LSTM 4 (i o f c), GRU 3 (z r h), RNN 1 */
  rnn_act act[6];   /* per direction: f, g, h */
  int64_t hidden, seq, batch, dirs;
  double clip;      /* 0: none */
  bool linear_before_reset, input_forget;
} rnn_spec;

static kiln_status rnn_spec_of(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, int gates, int nact,
                               rnn_spec *s) {
  memset(s, 0, sizeof *s);
  s->gates = gates;
  kiln_shape xs = shape_of(c, in[0]);
  if (xs.rank != 3) return onnx_fail(c, n, KILN_ERR_INVALID, "X of rank %d (must be 3)", xs.rank);
  s->seq = xs.dims[0], s->batch = xs.dims[1];
  s->hidden = onnx_attr_int(n, "hidden_size", shape_of(c, in[2]).dims[2]);
  const char *dir = onnx_attr_string(n, "direction", "forward");
  s->dirs = !strcmp(dir, "bidirectional") ? 2 : 1;
  s->clip = onnx_attr_float(n, "clip", 0);
  s->linear_before_reset = onnx_attr_int(n, "linear_before_reset", 0) != 0;
  s->input_forget = onnx_attr_int(n, "input_forget", 0) != 0;
  for (int d = 0; d < s->dirs; d++) {
    s->act[3 * d] = gates == 1 ? ACT_TANH : ACT_SIGMOID;
    s->act[3 * d + 1] = s->act[3 * d + 2] = ACT_TANH;
  }
  const Onnx__AttributeProto *a = onnx_attr(n, "activations");
  if (a) {
    if ((int64_t)a->n_strings != nact * s->dirs) return onnx_fail(c, n, KILN_ERR_INVALID, "%zu activations", a->n_strings);
    for (size_t i = 0; i < a->n_strings; i++) {
      char name[32];
      size_t k = a->strings[i].len < sizeof name - 1 ? a->strings[i].len : sizeof name - 1;
      memcpy(name, a->strings[i].data, k);
      name[k] = 0;
      int which = !strcmp(name, "Sigmoid") ? ACT_SIGMOID : !strcmp(name, "Tanh") ? ACT_TANH : !strcmp(name, "Relu") ? ACT_RELU : -1;
      if (which < 0) return onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "activation %s", name);
      s->act[3 * (i / (size_t)nact) + i % (size_t)nact] = (rnn_act)which;
    }
  }
  if (HAS(4)) { /* sequence_lens: only the full length is supported */
    const kiln_tensor *t = onnx_const_input(c, n, 4);
    for (int64_t i = 0; t && i < kiln_tensor_numel(t); i++)
      if ((int64_t)kiln_tensor_get_f64(t, i) != s->seq) t = NULL;
    if (!t) return onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "sequence_lens shorter than the sequence");
  }
  return KILN_OK;
}

static kiln_value clipped(onnx_ctx *c, const rnn_spec *s, kiln_value x) {
  if (s->clip <= 0) return x;
  return kiln_minimum(G, kiln_maximum(G, x, scalar_like(c, x, -s->clip)), scalar_like(c, x, s->clip));
}

/* Row d of a [dirs, ...] parameter, without the leading axis. */
static kiln_value take_dir(onnx_ctx *c, kiln_value p, int64_t d) {
  kiln_shape s = shape_of(c, p), r = {.rank = s.rank - 1};
  if (s.rank < 1 || s.dims[0] <= d) /* a malformed W, R or B (or an earlier failure) */
    return kiln_graph_fail(G, KILN_ERR_INVALID, "recurrent op: a parameter of shape rank %d has no row for direction %lld",
                           s.rank, (long long)d);
  memcpy(r.dims, s.dims + 1, sizeof(int64_t) * (size_t)r.rank);
  return kiln_reshape(G, slice_axis(c, p, 0, d, d + 1, 1), r);
}

/* Gate k of a [batch, gates * hidden] value. */
static kiln_value gate(onnx_ctx *c, kiln_value v, int k, int64_t hidden) { return slice_axis(c, v, 1, k * hidden, (k + 1) * hidden, 1); }

/* Direction d of the layer (its parameters' row; backward runs from the last step);
 * ys[t] gets H_t in time order, *h and *cell the final states. */
static void run_direction(onnx_ctx *c, const rnn_spec *s, const kiln_value *in, size_t nin, int64_t d, bool backward,
                          kiln_value *ys, kiln_value *h, kiln_value *cell) {
  kiln_dtype t = type_of(c, in[0]);
  int64_t H = s->hidden, B = s->batch, GH = s->gates * H;
  kiln_value W = take_dir(c, in[1], d), R = take_dir(c, in[2], d);
  kiln_value wb = {KILN_NONE}, rb = {KILN_NONE};
  if (HAS(3)) {
    kiln_value b = take_dir(c, in[3], d);
    wb = slice_axis(c, b, 0, 0, GH, 1), rb = slice_axis(c, b, 0, GH, 2 * GH, 1);
  }
  *h = HAS(5) ? take_dir(c, in[5], d) : kiln_fill(G, t, KILN_SHAPE(B, H), 0);
  *cell = s->gates == 4 && HAS(6) ? take_dir(c, in[6], d) : kiln_fill(G, t, KILN_SHAPE(B, H), 0);
  kiln_value P = s->gates == 4 && HAS(7) ? take_dir(c, in[7], d) : (kiln_value){KILN_NONE};
  /* X W^T (+ Wb, and Rb unless GRU's reset gate needs it apart) for all steps at once */
  kiln_shape xs = shape_of(c, in[0]);
  kiln_value xw = kiln_matmul(G, kiln_reshape(G, in[0], KILN_SHAPE(xs.dims[0] * B, xs.dims[2])), W, false, true);
  if (wb.id != KILN_NONE) xw = kiln_add(G, xw, wb);
  const rnn_act *act = s->act + 3 * d;
  for (int64_t step = 0; step < s->seq; step++) {
    int64_t ti = backward ? s->seq - 1 - step : step;
    kiln_value x = slice_axis(c, xw, 0, ti * B, (ti + 1) * B, 1);
    kiln_value hr = kiln_matmul(G, *h, R, false, true);
    if (s->gates == 4) {
      kiln_value z = kiln_add(G, x, hr);
      if (rb.id != KILN_NONE) z = kiln_add(G, z, rb);
      kiln_value zi = gate(c, z, 0, H), zo = gate(c, z, 1, H), zf = gate(c, z, 2, H), zc = gate(c, z, 3, H);
      if (P.id != KILN_NONE) {
        zi = kiln_add(G, zi, kiln_mul(G, slice_axis(c, P, 0, 0, H, 1), *cell));
        zf = kiln_add(G, zf, kiln_mul(G, slice_axis(c, P, 0, 2 * H, 3 * H, 1), *cell));
      }
      kiln_value i = apply(c, act[0], clipped(c, s, zi));
      kiln_value f = s->input_forget ? kiln_sub(G, scalar_like(c, i, 1), i) : apply(c, act[0], clipped(c, s, zf));
      kiln_value g = apply(c, act[1], clipped(c, s, zc));
      *cell = kiln_add(G, kiln_mul(G, f, *cell), kiln_mul(G, i, g));
      if (P.id != KILN_NONE) zo = kiln_add(G, zo, kiln_mul(G, slice_axis(c, P, 0, H, 2 * H, 1), *cell));
      kiln_value o = apply(c, act[0], clipped(c, s, zo));
      *h = kiln_mul(G, o, apply(c, act[2], *cell));
    } else if (s->gates == 3) {
      kiln_value rz = kiln_add(G, slice_axis(c, x, 1, 0, 2 * H, 1), slice_axis(c, hr, 1, 0, 2 * H, 1));
      if (rb.id != KILN_NONE) rz = kiln_add(G, rz, slice_axis(c, rb, 0, 0, 2 * H, 1));
      kiln_value z = apply(c, act[0], clipped(c, s, gate(c, rz, 0, H))), r = apply(c, act[0], clipped(c, s, gate(c, rz, 1, H)));
      kiln_value rbh = rb.id != KILN_NONE ? slice_axis(c, rb, 0, 2 * H, 3 * H, 1) : (kiln_value){KILN_NONE};
      kiln_value hh;
      if (s->linear_before_reset) {
        hh = gate(c, hr, 2, H);
        if (rbh.id != KILN_NONE) hh = kiln_add(G, hh, rbh);
        hh = kiln_mul(G, r, hh);
      } else {
        hh = kiln_matmul(G, kiln_mul(G, r, *h), slice_axis(c, R, 0, 2 * H, 3 * H, 1), false, true);
        if (rbh.id != KILN_NONE) hh = kiln_add(G, hh, rbh);
      }
      kiln_value cand = apply(c, act[1], clipped(c, s, kiln_add(G, gate(c, x, 2, H), hh)));
      *h = kiln_add(G, kiln_mul(G, kiln_sub(G, scalar_like(c, z, 1), z), cand), kiln_mul(G, z, *h));
    } else {
      kiln_value z = kiln_add(G, x, hr);
      if (rb.id != KILN_NONE) z = kiln_add(G, z, rb);
      *h = apply(c, act[0], clipped(c, s, z));
    }
    ys[ti] = *h;
  }
}

static kiln_status recurrent_seq_first(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin,
                                       kiln_value *out, int gates, int nact);

/* Y [seq, dirs, batch, hidden], Y_h [dirs, batch, hidden], Y_c (LSTM). */
static kiln_status recurrent(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in_, size_t nin, kiln_value *out,
                             int gates, int nact) {
  /* layout=1 (batch first): X and the initial states transposed in, the outputs back */
  bool batch_first = onnx_attr_int(n, "layout", 0) != 0;
  kiln_value in[8];
  for (size_t i = 0; i < 8; i++) in[i] = i < nin ? in_[i] : (kiln_value){KILN_NONE};
  nin = 8;
  if (batch_first) {
    static const int64_t swap01[3] = {1, 0, 2};
    in[0] = kiln_transpose(G, in[0], swap01, 3);
    for (size_t i = 5; i < 7; i++)
      if (in[i].id != KILN_NONE) in[i] = kiln_transpose(G, in[i], swap01, 3);
  }
  kiln_status st = recurrent_seq_first(c, n, in, nin, out, gates, nact);
  if (st == KILN_OK && batch_first) {
    out[0] = kiln_transpose(G, out[0], (int64_t[]){2, 0, 1, 3}, 4); /* [seq, dirs, batch, h] -> [batch, seq, dirs, h] */
    for (int i = 1; i < (gates == 4 ? 3 : 2); i++) out[i] = kiln_transpose(G, out[i], (int64_t[]){1, 0, 2}, 3);
  }
  return st;
}

static kiln_status recurrent_seq_first(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin,
                                       kiln_value *out, int gates, int nact) {
  rnn_spec s;
  kiln_status st = rnn_spec_of(c, n, in, nin, gates, nact, &s);
  if (st != KILN_OK) return st;
  if (s.seq <= 0 || s.seq > 4096) return onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "sequence length %lld", (long long)s.seq);
  const char *dir = onnx_attr_string(n, "direction", "forward");
  bool reverse = !strcmp(dir, "reverse");
  kiln_value *ys = calloc((size_t)(s.seq * s.dirs), sizeof *ys);
  if (!ys) return kiln_set_error(KILN_ERR_NOMEM, "onnx: out of memory");
  kiln_value hs[2], cs[2];
  for (int64_t d = 0; d < s.dirs; d++) {
    run_direction(c, &s, in, nin, d, reverse || d == 1, ys + d * s.seq, &hs[d], &cs[d]);
  }
  int64_t B = s.batch, H = s.hidden;
  kiln_value *steps = calloc((size_t)s.seq, sizeof *steps);
  if (!steps) {
    free(ys);
    return kiln_set_error(KILN_ERR_NOMEM, "onnx: out of memory");
  }
  for (int64_t t = 0; t < s.seq; t++) {
    kiln_value per_dir[2];
    for (int64_t d = 0; d < s.dirs; d++) per_dir[d] = kiln_reshape(G, ys[d * s.seq + t], KILN_SHAPE(1, 1, B, H));
    steps[t] = s.dirs == 2 ? kiln_concat(G, per_dir, 2, 1) : per_dir[0];
  }
  out[0] = kiln_concat(G, steps, (int)s.seq, 0);
  kiln_value fin[2], fc[2];
  for (int64_t d = 0; d < s.dirs; d++) {
    fin[d] = kiln_reshape(G, hs[d], KILN_SHAPE(1, B, H));
    fc[d] = kiln_reshape(G, cs[d], KILN_SHAPE(1, B, H));
  }
  out[1] = s.dirs == 2 ? kiln_concat(G, fin, 2, 0) : fin[0];
  if (gates == 4) out[2] = s.dirs == 2 ? kiln_concat(G, fc, 2, 0) : fc[0];
  free(ys);
  free(steps);
  return KILN_OK;
}

ONNX_HANDLER(RNN) { return recurrent(c, n, in, nin, out, 1, 1); }
ONNX_HANDLER(GRU) { return recurrent(c, n, in, nin, out, 3, 2); }
ONNX_HANDLER(LSTM) { return recurrent(c, n, in, nin, out, 4, 3); }

/* ---- signal windows: a0 - a1 cos(2 pi n / N') + a2 cos(4 pi n / N'), N' = N (periodic) or N - 1 ---- */

static kiln_status window_fn(onnx_ctx *c, const Onnx__NodeProto *n, double a0, double a1, double a2, kiln_value *out) {
  const kiln_tensor *t = onnx_const_input(c, n, 0);
  if (!t) return onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "input 0 must be a constant (computed at run time here)");
  int64_t size = (int64_t)kiln_tensor_get_f64(t, 0);
  if (size < 0 || size > (1 << 24)) return onnx_fail(c, n, KILN_ERR_INVALID, "size %lld", (long long)size);
  int64_t type = onnx_attr_int(n, "output_datatype", ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT);
  int dt = onnx_kiln_dtype(type);
  if (dt < 0 || dt == KILN_BOOL) return onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "output_datatype %lld", (long long)type);
  double denom = (double)(onnx_attr_int(n, "periodic", 1) ? size : size - 1);
  double *v = malloc(sizeof *v * (size_t)(size ? size : 1));
  if (!v) return kiln_set_error(KILN_ERR_NOMEM, "onnx: out of memory");
  for (int64_t i = 0; i < size; i++) {
    double x = 2 * M_PI * (double)i / denom;
    v[i] = a0 - a1 * cos(x) + a2 * cos(2 * x);
  }
  out[0] = kiln_cast(G, kiln_constant(G, KILN_F64, KILN_SHAPE(size), v), (kiln_dtype)dt);
  free(v);
  return KILN_OK;
}

ONNX_HANDLER(HannWindow) { return window_fn(c, n, 0.5, 0.5, 0, out); }
ONNX_HANDLER(HammingWindow) { return window_fn(c, n, 25.0 / 46, 21.0 / 46, 0, out); }
ONNX_HANDLER(BlackmanWindow) { return window_fn(c, n, 0.42, 0.5, 0.08, out); }

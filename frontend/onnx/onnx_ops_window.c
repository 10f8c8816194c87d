/* ONNX Conv, MaxPool and AveragePool over 1, 2 or 3 spatial dims (NCHW-style
 * layouts). 2-D maps onto kiln's conv2d / pool kernels; 1-D runs as 2-D with a unit
 * height; 3-D convolution is a sum over kernel depth of 2-D convolutions with the
 * output depth folded into the batch; pools the kernels cannot express (3-D,
 * dilated, ceil_mode) are a max or sum over strided slices of the padded input. */
#include <math.h>
#include <string.h>
#include "frontend/onnx/onnx_impl.h"

#define MAX_SP 3

typedef struct window {
  int sp;                                              /* spatial dims */
  int64_t in[MAX_SP], k[MAX_SP], s[MAX_SP], d[MAX_SP], lo[MAX_SP], hi[MAX_SP];
  bool ceil;
} window;

static kiln_shape shape_of(onnx_ctx *c, kiln_value v) { return kiln_value_shape(G, v); }

/* Reads kernel_shape / strides / dilations / pads / auto_pad for input x; kernel
 * dims come from k when the attribute is absent (Conv's weights). */
static kiln_status window_of(onnx_ctx *c, const Onnx__NodeProto *n, kiln_value x, const int64_t *k, window *w) {
  kiln_shape xs = shape_of(c, x);
  memset(w, 0, sizeof *w);
  w->sp = xs.rank - 2;
  if (w->sp < 1 || w->sp > MAX_SP) return onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "input of rank %d (1 to 3 spatial dims)", xs.rank);
  int64_t v[2 * MAX_SP];
  for (int i = 0; i < w->sp; i++) w->in[i] = xs.dims[2 + i], w->s[i] = w->d[i] = 1, w->k[i] = k ? k[i] : 0;
  if (onnx_attr_ints(n, "kernel_shape", v, 2 * MAX_SP) == w->sp) memcpy(w->k, v, sizeof(int64_t) * (size_t)w->sp);
  if (onnx_attr_ints(n, "strides", v, 2 * MAX_SP) == w->sp) memcpy(w->s, v, sizeof(int64_t) * (size_t)w->sp);
  if (onnx_attr_ints(n, "dilations", v, 2 * MAX_SP) == w->sp) memcpy(w->d, v, sizeof(int64_t) * (size_t)w->sp);
  if (onnx_attr_ints(n, "pads", v, 2 * MAX_SP) == 2 * w->sp)
    for (int i = 0; i < w->sp; i++) w->lo[i] = v[i], w->hi[i] = v[w->sp + i];
  w->ceil = onnx_attr_int(n, "ceil_mode", 0) != 0;
  for (int i = 0; i < w->sp; i++)
    if (w->k[i] <= 0 || w->s[i] <= 0 || w->d[i] <= 0 || w->lo[i] < 0 || w->hi[i] < 0)
      return onnx_fail(c, n, KILN_ERR_INVALID, "bad kernel, stride, dilation or pads on spatial axis %d", i);
  const char *ap = onnx_attr_string(n, "auto_pad", "NOTSET");
  if (!strcmp(ap, "VALID")) {
    memset(w->lo, 0, sizeof w->lo), memset(w->hi, 0, sizeof w->hi);
  } else if (!strcmp(ap, "SAME_UPPER") || !strcmp(ap, "SAME_LOWER")) {
    /* output = ceil(in / stride); the odd padding at the end (upper) or the start */
    for (int i = 0; i < w->sp; i++) {
      int64_t o = (w->in[i] + w->s[i] - 1) / w->s[i];
      int64_t total = (o - 1) * w->s[i] + (w->k[i] - 1) * w->d[i] + 1 - w->in[i];
      if (total < 0) total = 0;
      int64_t small = total / 2, big = total - small;
      bool lower = !strcmp(ap, "SAME_LOWER");
      w->lo[i] = lower ? big : small, w->hi[i] = lower ? small : big;
    }
  } else if (strcmp(ap, "NOTSET")) {
    return onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "auto_pad=%s", ap);
  }
  return KILN_OK;
}

static int64_t out_len(const window *w, int i) {
  int64_t span = w->in[i] + w->lo[i] + w->hi[i] - ((w->k[i] - 1) * w->d[i] + 1);
  if (span < 0) return 0;
  int64_t o = (w->ceil ? (span + w->s[i] - 1) / w->s[i] : span / w->s[i]) + 1;
  /* ceil_mode: a last window starting in the end padding is dropped (PyTorch's rule, ONNX's reference) */
  if (w->ceil && (o - 1) * w->s[i] >= w->in[i] + w->lo[i]) o--;
  return o;
}

static kiln_value conv2d(onnx_ctx *c, kiln_value x, kiln_value wt, const window *w, int64_t groups, int from) {
  kiln_conv2d_opts o = {.layout = KILN_NCHW, .padding = KILN_PAD_EXPLICIT, .groups = groups};
  for (int i = 0; i < 2; i++) {
    o.strides[i] = w->s[from + i], o.dilations[i] = w->d[from + i];
    o.pads[i] = w->lo[from + i], o.pads[2 + i] = w->hi[from + i];
  }
  return kiln_conv2d(G, x, wt, &o);
}

/* A copy of w as 2-D, a unit first axis in front of a 1-D window. */
static window as_2d(const window *w) {
  window r = *w;
  if (w->sp == 1) {
    r.sp = 2;
    r.in[0] = r.k[0] = r.s[0] = r.d[0] = 1, r.lo[0] = r.hi[0] = 0;
    r.in[1] = w->in[0], r.k[1] = w->k[0], r.s[1] = w->s[0], r.d[1] = w->d[0], r.lo[1] = w->lo[0], r.hi[1] = w->hi[0];
  }
  return r;
}

ONNX_HANDLER(Conv) {
  kiln_value x = in[0], wt = in[1];
  kiln_shape xs = shape_of(c, x), ws = shape_of(c, wt);
  if (ws.rank != xs.rank) return onnx_fail(c, n, KILN_ERR_INVALID, "weights of rank %d for input of rank %d", ws.rank, xs.rank);
  window w;
  kiln_status st = window_of(c, n, x, ws.dims + 2, &w);
  if (st != KILN_OK) return st;
  int64_t groups = onnx_attr_int(n, "group", 1), O = ws.dims[0];
  kiln_value y;
  if (w.sp == 2) {
    y = conv2d(c, x, wt, &w, groups, 0);
  } else if (w.sp == 1) {
    window w2 = as_2d(&w);
    x = kiln_reshape(G, x, KILN_SHAPE(xs.dims[0], xs.dims[1], 1, xs.dims[2]));
    wt = kiln_reshape(G, wt, KILN_SHAPE(O, ws.dims[1], 1, ws.dims[2]));
    y = conv2d(c, x, wt, &w2, groups, 0);
    kiln_shape ys = shape_of(c, y);
    y = kiln_reshape(G, y, KILN_SHAPE(ys.dims[0], ys.dims[1], ys.dims[3]));
  } else { /* 3-D: depth taps j, each a 2-D conv over [N * Dout, C, H, W] */
    int64_t N = xs.dims[0], C = xs.dims[1], D = out_len(&w, 0);
    int64_t lo[5] = {0, 0, w.lo[0], 0, 0}, hi[5] = {0, 0, w.hi[0], 0, 0};
    kiln_value xp = kiln_pad(G, x, lo, hi, 0);
    window hw = w;
    memmove(hw.in, w.in + 1, 2 * sizeof(int64_t)), memmove(hw.k, w.k + 1, 2 * sizeof(int64_t));
    memmove(hw.s, w.s + 1, 2 * sizeof(int64_t)), memmove(hw.d, w.d + 1, 2 * sizeof(int64_t));
    memmove(hw.lo, w.lo + 1, 2 * sizeof(int64_t)), memmove(hw.hi, w.hi + 1, 2 * sizeof(int64_t));
    y = (kiln_value){KILN_NONE};
    for (int64_t j = 0; j < w.k[0]; j++) {
      int64_t s0 = j * w.d[0];
      kiln_value xj = kiln_slice(G, xp, (int64_t[]){0, 0, s0, 0, 0}, (int64_t[]){N, C, s0 + (D - 1) * w.s[0] + 1, xs.dims[3], xs.dims[4]},
                                 (int64_t[]){1, 1, w.s[0], 1, 1}, 5);
      xj = kiln_reshape(G, kiln_transpose(G, xj, (int64_t[]){0, 2, 1, 3, 4}, 5), KILN_SHAPE(N * D, C, xs.dims[3], xs.dims[4]));
      kiln_value wj = kiln_slice(G, wt, (int64_t[]){0, 0, j, 0, 0}, (int64_t[]){O, ws.dims[1], j + 1, ws.dims[3], ws.dims[4]},
                                 (int64_t[]){1, 1, 1, 1, 1}, 5);
      wj = kiln_reshape(G, wj, KILN_SHAPE(O, ws.dims[1], ws.dims[3], ws.dims[4]));
      kiln_value part = conv2d(c, xj, wj, &hw, groups, 0);
      y = j ? kiln_add(G, y, part) : part;
    }
    kiln_shape ys = shape_of(c, y);
    y = kiln_reshape(G, y, KILN_SHAPE(N, D, O, ys.dims[2], ys.dims[3]));
    y = kiln_transpose(G, y, (int64_t[]){0, 2, 1, 3, 4}, 5);
  }
  if (HAS(2)) {
    kiln_shape bs = {.rank = xs.rank};
    for (int i = 0; i < bs.rank; i++) bs.dims[i] = 1;
    bs.dims[1] = O;
    y = kiln_add(G, y, kiln_reshape(G, in[2], bs));
  }
  out[0] = y;
  return KILN_OK;
}

/* How many taps of each window along axis i fall inside [from, to) of the unpadded
 * input's coordinates. */
static void tap_counts(const window *w, int i, int64_t from, int64_t to, double *cnt) {
  for (int64_t o = 0; o < out_len(w, i); o++) {
    int64_t k = 0;
    for (int64_t t = 0; t < w->k[i]; t++) {
      int64_t at = o * w->s[i] - w->lo[i] + t * w->d[i];
      k += at >= from && at < to;
    }
    cnt[o] = (double)k;
  }
}

/* Max or mean over strided slices of the padded input, one slice per kernel tap. */
static kiln_status pool_by_slices(onnx_ctx *c, const Onnx__NodeProto *n, kiln_value x, const window *w, bool max,
                                  bool include_pad, kiln_value *out) {
  kiln_shape xs = shape_of(c, x);
  int r = xs.rank;
  int64_t lo[KILN_MAX_RANK] = {0}, hi[KILN_MAX_RANK] = {0}, o[MAX_SP], taps = 1;
  for (int i = 0; i < w->sp; i++) {
    o[i] = out_len(w, i);
    if (o[i] <= 0) return onnx_fail(c, n, KILN_ERR_INVALID, "the window is larger than the padded input");
    lo[2 + i] = w->lo[i];
    /* room for every tap of the last window (ceil_mode may reach past the end padding) */
    int64_t need = (o[i] - 1) * w->s[i] + (w->k[i] - 1) * w->d[i] + 1 - w->in[i] - w->lo[i];
    hi[2 + i] = need > w->hi[i] ? need : w->hi[i];
    taps *= w->k[i];
  }
  kiln_value xp = kiln_pad(G, x, lo, hi, max ? -INFINITY : 0), acc = {KILN_NONE};
  for (int64_t t = 0; t < taps; t++) {
    int64_t S[KILN_MAX_RANK] = {0}, E[KILN_MAX_RANK], P[KILN_MAX_RANK], rest = t;
    for (int d = 0; d < r; d++) E[d] = xs.dims[d] + lo[d] + hi[d], P[d] = 1;
    for (int i = w->sp - 1; i >= 0; i--) {
      int64_t tap = rest % w->k[i];
      rest /= w->k[i];
      S[2 + i] = tap * w->d[i], E[2 + i] = S[2 + i] + (o[i] - 1) * w->s[i] + 1, P[2 + i] = w->s[i];
    }
    kiln_value part = kiln_slice(G, xp, S, E, P, r);
    acc = t ? (max ? kiln_maximum(G, acc, part) : kiln_add(G, acc, part)) : part;
  }
  if (!max) { /* divide by the taps counted: inside the input, or inside input + pads */
    kiln_value count = {KILN_NONE};
    for (int i = 0; i < w->sp; i++) {
      double *cnt = malloc(sizeof *cnt * (size_t)o[i]);
      if (!cnt) return kiln_set_error(KILN_ERR_NOMEM, "onnx: out of memory");
      tap_counts(w, i, include_pad ? -w->lo[i] : 0, include_pad ? w->in[i] + w->hi[i] : w->in[i], cnt);
      kiln_shape cs = {.rank = r};
      for (int d = 0; d < r; d++) cs.dims[d] = d == 2 + i ? o[i] : 1;
      kiln_value ci = kiln_cast(G, kiln_constant(G, KILN_F64, cs, cnt), type_of(c, x));
      free(cnt);
      count = i ? kiln_mul(G, count, ci) : ci;
    }
    acc = kiln_div(G, acc, count);
  }
  out[0] = acc;
  return KILN_OK;
}

static kiln_status pool(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, kiln_value *out, bool max) {
  window w;
  kiln_status st = window_of(c, n, in[0], NULL, &w);
  if (st != KILN_OK) return st;
  if (max && n->n_output > 1 && *n->output[1]) return onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "the Indices output");
  if (onnx_attr_int(n, "storage_order", 0)) return onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "storage_order=1");
  bool include_pad = !max && onnx_attr_int(n, "count_include_pad", 0);
  kiln_value x = in[0];
  if (max && w.sp == 2 && !w.ceil && (w.d[0] > 1 || w.d[1] > 1) && w.s[0] % w.d[0] == 0 && w.s[1] % w.d[1] == 0) {
    /* every tap lands on the padded grid's multiples of the dilation: pool that
     * subsampled grid with stride s / d and no dilation */
    int64_t lo[4] = {0, 0, w.lo[0], w.lo[1]}, hi[4] = {0, 0, w.hi[0], w.hi[1]};
    kiln_shape xs = kiln_value_shape(G, x);
    x = kiln_pad(G, x, lo, hi, -INFINITY);
    x = kiln_slice(G, x, (int64_t[]){0, 0, 0, 0}, (int64_t[]){xs.dims[0], xs.dims[1], INT64_MAX, INT64_MAX},
                   (int64_t[]){1, 1, w.d[0], w.d[1]}, 4);
    for (int i = 0; i < 2; i++) {
      w.in[i] = kiln_value_shape(G, x).dims[2 + i];
      w.s[i] /= w.d[i], w.d[i] = 1, w.lo[i] = w.hi[i] = 0;
    }
  }
  bool plain = w.sp == 2 && !w.ceil && w.d[0] == 1 && w.d[1] == 1;
  if (!plain) {
    int64_t taps = 1;
    for (int i = 0; i < w.sp; i++) taps *= w.k[i];
    if (taps > 1024) return onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "a %lld-tap window with dilation or ceil_mode", (long long)taps);
    return pool_by_slices(c, n, x, &w, max, include_pad, out);
  }
  /* kiln pools NHWC: transpose around them */
  x = kiln_transpose(G, x, (int64_t[]){0, 2, 3, 1}, 4);
  kiln_pool2d_opts o = {.window = {w.k[0], w.k[1]}, .strides = {w.s[0], w.s[1]}, .padding = KILN_PAD_EXPLICIT};
  if (include_pad) { /* zeros that count in the mean */
    x = kiln_pad(G, x, (int64_t[]){0, w.lo[0], w.lo[1], 0}, (int64_t[]){0, w.hi[0], w.hi[1], 0}, 0);
  } else {
    o.pads[0] = w.lo[0], o.pads[1] = w.lo[1], o.pads[2] = w.hi[0], o.pads[3] = w.hi[1];
  }
  out[0] = kiln_transpose(G, max ? kiln_max_pool2d(G, x, &o) : kiln_avg_pool2d(G, x, &o), (int64_t[]){0, 3, 1, 2}, 4);
  return KILN_OK;
}

ONNX_HANDLER(MaxPool) { return pool(c, n, in, out, true); }
ONNX_HANDLER(AveragePool) { return pool(c, n, in, out, false); }

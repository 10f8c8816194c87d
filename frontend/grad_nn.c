/* Gradients of conv2d and pooling:
 *  - conv input gradient: the incoming gradient, spread out by the strides
 *    (unslice), convolved with the spatially flipped filter whose in/out channels
 *    are swapped per group;
 *  - conv filter gradient: its own op, conv2d_filter_grad (a contraction over
 *    every output position of every image that a composition would have to
 *    materialise as a whole-batch im2col); its gradients are a conv2d (for dy)
 *    and a conv input gradient (for x);
 *  - max pooling: its own op, max_pool2d_grad (each window's gradient goes to its
 *    first maximum, row-major, like TensorFlow and PyTorch), whose gradient for dy
 *    gathers G at those maxima through one strided slice per window tap;
 *  - average pooling: one strided slice per window tap; each tap's share of dy is
 *    unsliced back into the padded input. */
#include <math.h>
#include <string.h>
#include "frontend/grad.h"

#define END INT64_MAX

typedef struct window {
  int64_t k[2], s[2], d[2], pads[4]; /* pads: top, left, bottom, right */
  int64_t in[2], out[2];             /* spatial sizes of x and y */
} window;

static window window_of(grad_ctx *c, const kiln_node *x) {
  window w = {.d = {1, 1}};
  kiln_attr_ints(&c->n, KILN_ATTR_STRIDES, w.s);
  kiln_attr_ints(&c->n, KILN_ATTR_PADS, w.pads);
  const kiln_node *y = &c->n;
  if (c->n.op == KILN_OP_CONV2D) {
    const kiln_node *f = &c->g->nodes[c->n.inputs[1]];
    kiln_attr_ints(&c->n, KILN_ATTR_DILATIONS, w.d);
    w.k[0] = f->dims[0], w.k[1] = f->dims[1];
  } else {
    if (c->n.op == KILN_OP_CONV2D_FILTER_GRAD) kiln_attr_ints(&c->n, KILN_ATTR_DILATIONS, w.d);
    /* a gradient op's forward output has dy's shape */
    if (c->n.op == KILN_OP_CONV2D_FILTER_GRAD || c->n.op == KILN_OP_MAX_POOL2D_GRAD) y = &c->g->nodes[c->n.inputs[1]];
    kiln_attr_ints(&c->n, KILN_ATTR_WINDOW, w.k);
  }
  w.in[0] = x->dims[1], w.in[1] = x->dims[2];
  w.out[0] = y->dims[1], w.out[1] = y->dims[2];
  return w;
}

/* The strided slice of the padded input that window tap (a, b) reads for every output. */
static void tap_slice(const window *w, int64_t a, int64_t b, int64_t *st, int64_t *en, int64_t *sp) {
  int64_t off[2] = {a * w->d[0], b * w->d[1]};
  st[0] = 0, en[0] = END, sp[0] = 1;
  st[3] = 0, en[3] = END, sp[3] = 1;
  for (int i = 0; i < 2; i++) {
    st[i + 1] = off[i];
    en[i + 1] = off[i] + (w->out[i] - 1) * w->s[i] + 1;
    sp[i + 1] = w->s[i];
  }
}

static kiln_value pad_spatial(kiln_graph *g, kiln_value x, const window *w, double value) {
  int64_t lo[4] = {0, w->pads[0], w->pads[1], 0}, hi[4] = {0, w->pads[2], w->pads[3], 0};
  if (!w->pads[0] && !w->pads[1] && !w->pads[2] && !w->pads[3]) return x;
  return kiln_pad(g, x, lo, hi, value);
}

static kiln_value unpad_spatial(kiln_graph *g, kiln_value xp, const window *w) {
  int64_t st[4] = {0, w->pads[0], w->pads[1], 0}, en[4] = {END, w->pads[0] + w->in[0], w->pads[1] + w->in[1], END};
  return kiln_slice(g, xp, st, en, NULL, 4);
}

static kiln_shape padded_shape(const kiln_node *x, const window *w) {
  kiln_shape s = grad_node_shape(x);
  s.dims[1] += w->pads[0] + w->pads[2];
  s.dims[2] += w->pads[1] + w->pads[3];
  return s;
}

/* ---- conv2d ---- */

/* The filter of conv2d's input gradient: spatially flipped, each group's in and out
 * channels swapped (HWIO with cout_g inputs per group). */
static kiln_value flipped_filter(kiln_graph *g, const window *w, kiln_value filter, int64_t cin_g, int64_t cout_g,
                                 int64_t groups) {
  int64_t fst[4] = {-1, -1, 0, 0}, fen[4] = {INT64_MIN, INT64_MIN, END, END}, fsp[4] = {-1, -1, 1, 1};
  kiln_value wf = kiln_slice(g, filter, fst, fen, fsp, 4);
  int64_t kh = w->k[0], kw = w->k[1];
  wf = kiln_reshape(g, wf, (kiln_shape){5, {kh, kw, cin_g, groups, cout_g}});
  wf = kiln_transpose(g, wf, (int64_t[]){0, 1, 4, 3, 2}, 5);
  return kiln_reshape(g, wf, (kiln_shape){4, {kh, kw, cout_g, cin_g * groups}});
}

/* The input gradient of a strided, undilated convolution, phase by phase. Input
 * pixel i = s*u + r (per axis) meets dy only through the filter taps k = k0 + s*t
 * (k0 = (r + pad) mod s), at dy pixels u + c - t: for each phase (r_h, r_w) a
 * stride-1 convolution of dy with that strided subset of the flipped filter gives
 * the phase's pixels, and the phases interleave into dx. The arithmetic is the
 * forward pass's, where the convolution of dy spread out with zeros (the general
 * path below) multiplies stride^2 times as many taps, most of them zeros.
 * wf: the flipped filter (flipped_filter); NONE when the strides are too many. */
enum { MAX_PHASES = 16 };
static kiln_value phase_input_grad(kiln_graph *g, const window *w, kiln_value dy, kiln_value wf, int64_t cin,
                                   int64_t groups) {
  const kiln_node *d = &g->nodes[dy.id];
  int64_t batch = d->dims[0], sh = w->s[0], sw = w->s[1], U[2], ho[2] = {d->dims[1], d->dims[2]};
  if (sh * sw > MAX_PHASES) return (kiln_value){KILN_NONE};
  for (int i = 0; i < 2; i++) U[i] = (w->in[i] + w->s[i] - 1) / w->s[i];
  kiln_value phases[MAX_PHASES];
  for (int64_t rh = 0; rh < sh; rh++)
    for (int64_t rw = 0; rw < sw; rw++) {
      int64_t r[2] = {rh, rw}, taps[2], fst[4] = {0, 0, 0, 0}, fen[4] = {0, 0, END, END}, fsp[4] = {sh, sw, 1, 1};
      int64_t st[4] = {0, 0, 0, 0}, en[4] = {END, END, END, END}, plo[2], phi[2];
      bool empty = false;
      for (int i = 0; i < 2; i++) {
        int64_t s = w->s[i], k0 = (r[i] + w->pads[i]) % s, c = (r[i] + w->pads[i] - k0) / s;
        taps[i] = k0 < w->k[i] ? (w->k[i] - k0 + s - 1) / s : 0;
        fst[i] = w->k[i] - 1 - k0 - s * (taps[i] - 1);
        fen[i] = fst[i] + s * (taps[i] - 1) + 1;
        plo[i] = taps[i] - 1 - c;
        phi[i] = U[i] - ho[i] - plo[i] + taps[i] - 1;
        /* dy rows no output of the phase reaches are cropped */
        st[i + 1] = plo[i] < 0 ? -plo[i] : 0;
        en[i + 1] = phi[i] < 0 ? ho[i] + phi[i] : END;
        empty |= !taps[i] || (phi[i] < 0 ? ho[i] + phi[i] : ho[i]) <= st[i + 1];
        plo[i] = plo[i] < 0 ? 0 : plo[i], phi[i] = phi[i] < 0 ? 0 : phi[i];
      }
      kiln_value p;
      if (empty) { /* no tap of the filter meets dy */
        p = kiln_fill(g, (kiln_dtype)d->dtype, (kiln_shape){4, {batch, U[0], U[1], cin}}, 0);
      } else {
        kiln_value z = st[1] || st[2] || en[1] != END || en[2] != END ? kiln_slice(g, dy, st, en, NULL, 4) : dy;
        kiln_conv2d_opts o = {.layout = KILN_NHWC, .padding = KILN_PAD_EXPLICIT, .groups = groups,
                              .strides = {1, 1}, .dilations = {1, 1}, .pads = {plo[0], plo[1], phi[0], phi[1]}};
        p = kiln_conv2d(g, z, kiln_slice(g, wf, fst, fen, fsp, 4), &o);
      }
      phases[rh * sw + rw] = kiln_reshape(g, p, (kiln_shape){5, {batch, U[0], U[1], 1, cin}});
    }
  /* [batch, U_h, U_w, s_h * s_w, cin] -> [batch, U_h, s_h, U_w, s_w, cin]: dx, then its first in_h x in_w */
  kiln_value all = kiln_concat(g, phases, (int)(sh * sw), 3);
  all = kiln_reshape(g, all, (kiln_shape){6, {batch, U[0], U[1], sh, sw, cin}});
  all = kiln_transpose(g, all, (int64_t[]){0, 1, 3, 2, 4, 5}, 6);
  all = kiln_reshape(g, all, (kiln_shape){4, {batch, U[0] * sh, U[1] * sw, cin}});
  if (U[0] * sh == w->in[0] && U[1] * sw == w->in[1]) return all;
  return kiln_slice(g, all, (int64_t[]){0, 0, 0, 0}, (int64_t[]){END, w->in[0], w->in[1], END}, NULL, 4);
}

/* dL/dx of y = conv2d(x, filter) given dy = dL/dy; filter is HWIO with cin_g inputs per group. */
static kiln_value conv_input_grad(kiln_graph *g, const window *w, kiln_value dy, kiln_value filter, int64_t cin_g,
                                  int64_t cout, int64_t groups) {
  int64_t cout_g = cout / groups, batch = g->nodes[dy.id].dims[0];
  kiln_value wf = flipped_filter(g, w, filter, cin_g, cout_g, groups);
  kiln_conv2d_opts o = {.layout = KILN_NHWC, .padding = KILN_PAD_EXPLICIT, .groups = groups};
  o.strides[0] = o.strides[1] = 1;
  /* A strided 1x1 convolution (a ResNet shortcut): each dy pixel goes back to one
   * input pixel, so the channel mix runs on dy's pixels and only its result is
   * spread out, instead of mixing a stride^2 times larger map of mostly zeros. */
  bool strided = w->s[0] > 1 || w->s[1] > 1;
  if (strided && w->k[0] == 1 && w->k[1] == 1 && !w->pads[0] && !w->pads[1] && (w->out[0] - 1) * w->s[0] < w->in[0] &&
      (w->out[1] - 1) * w->s[1] < w->in[1]) {
    int64_t st[4] = {0}, en[4] = {END, END, END, END}, sp[4] = {1, w->s[0], w->s[1], 1};
    return kiln_unslice(g, kiln_conv2d(g, dy, wf, &o), (kiln_shape){4, {batch, w->in[0], w->in[1], cin_g * groups}}, st,
                        en, sp, 4);
  }
  /* a depthwise layer's kernel reads the spread dy in place (passes/fuse.c) */
  bool depthwise = cin_g == 1 && cout_g == 1 && groups > 1, dilated = w->d[0] > 1 || w->d[1] > 1;
  if (strided && !depthwise && !dilated) {
    kiln_value dx = phase_input_grad(g, w, dy, wf, cin_g * groups, groups);
    if (dx.id != KILN_NONE) return dx;
  }
  /* z: dy with (stride - 1) zeros between rows and columns. */
  int64_t len[2], plo[2], phi[2];
  kiln_value z = dy;
  for (int i = 0; i < 2; i++) {
    len[i] = (w->out[i] - 1) * w->s[i] + 1;
    plo[i] = (w->k[i] - 1) * w->d[i] - w->pads[i];
    phi[i] = w->in[i] + w->pads[i] - len[i];
  }
  if (strided) {
    int64_t st[4] = {0}, en[4] = {END, END, END, END}, sp[4] = {1, w->s[0], w->s[1], 1};
    z = kiln_unslice(g, z, (kiln_shape){4, {batch, len[0], len[1], cout}}, st, en, sp, 4);
  }
  /* Padding wider than the filter span leaves rows of z that touch no input: crop them. */
  if (plo[0] < 0 || plo[1] < 0 || phi[0] < 0 || phi[1] < 0) {
    int64_t st[4] = {0}, en[4] = {END, END, END, END};
    for (int i = 0; i < 2; i++) {
      st[i + 1] = plo[i] < 0 ? -plo[i] : 0;
      en[i + 1] = phi[i] < 0 ? len[i] + phi[i] : END;
      plo[i] = plo[i] < 0 ? 0 : plo[i];
      phi[i] = phi[i] < 0 ? 0 : phi[i];
    }
    z = kiln_slice(g, z, st, en, NULL, 4);
  }
  o.dilations[0] = w->d[0], o.dilations[1] = w->d[1];
  o.pads[0] = plo[0], o.pads[1] = plo[1], o.pads[2] = phi[0], o.pads[3] = phi[1];
  return kiln_conv2d(g, z, wf, &o);
}

/* The options of the convolution a conv2d or conv2d_filter_grad node describes. */
static kiln_conv2d_opts conv_opts(const window *w, int64_t groups) {
  kiln_conv2d_opts o = {.layout = KILN_NHWC, .padding = KILN_PAD_EXPLICIT, .groups = groups};
  for (int i = 0; i < 2; i++) o.strides[i] = w->s[i], o.dilations[i] = w->d[i];
  memcpy(o.pads, w->pads, sizeof o.pads);
  return o;
}

void kiln_grad_conv2d(grad_ctx *c, kiln_value *dx) {
  const kiln_node *x = &c->g->nodes[c->n.inputs[0]];
  window w = window_of(c, x);
  kiln_node f = c->g->nodes[c->n.inputs[1]];
  int64_t groups = kiln_attr_int(&c->n, KILN_ATTR_GROUPS, 1);
  kiln_conv2d_opts o = conv_opts(&w, groups);
  dx[0] = conv_input_grad(c->g, &w, c->dy, grad_input(c, 1), f.dims[2], f.dims[3], groups);
  dx[1] = kiln_conv2d_filter_grad(c->g, grad_input(c, 0), c->dy, w.k[0], w.k[1], &o);
}

/* dw = F(x, dy) is bilinear: with G = dL/ddw, dL/ddy = conv2d(x, G) and dL/dx is
 * conv2d's input gradient for filter G and output gradient dy. */
void kiln_grad_conv2d_filter_grad(grad_ctx *c, kiln_value *dx) {
  const kiln_node *x = &c->g->nodes[c->n.inputs[0]];
  window w = window_of(c, x);
  int64_t groups = kiln_attr_int(&c->n, KILN_ATTR_GROUPS, 1);
  kiln_conv2d_opts o = conv_opts(&w, groups);
  dx[0] = conv_input_grad(c->g, &w, grad_input(c, 1), c->dy, c->n.dims[2], c->n.dims[3], groups);
  dx[1] = kiln_conv2d(c->g, grad_input(c, 0), c->dy, &o);
}

/* ---- pooling ---- */

static kiln_pool2d_opts pool_opts(const window *w) {
  kiln_pool2d_opts o = {.layout = KILN_NHWC, .padding = KILN_PAD_EXPLICIT};
  for (int i = 0; i < 2; i++) o.window[i] = w->k[i], o.strides[i] = w->s[i];
  memcpy(o.pads, w->pads, sizeof o.pads);
  return o;
}

void kiln_grad_max_pool2d(grad_ctx *c, kiln_value *dx) {
  kiln_node x = c->g->nodes[c->n.inputs[0]];
  window w = window_of(c, &x);
  kiln_pool2d_opts o = pool_opts(&w);
  dx[0] = kiln_max_pool2d_grad(c->g, grad_input(c, 0), c->dy, &o);
}

/* dx = max_pool2d_grad(x, dy) is linear in dy: with G = dL/ddx, each window's dL/ddy
 * is G at the window's first maximum, the tap whose x equals max_pool2d(x) first. */
void kiln_grad_max_pool2d_grad(grad_ctx *c, kiln_value *dx) {
  kiln_graph *g = c->g;
  kiln_node x = g->nodes[c->n.inputs[0]];
  window w = window_of(c, &x);
  kiln_pool2d_opts o = pool_opts(&w);
  kiln_value y = kiln_max_pool2d(g, grad_input(c, 0), &o);
  kiln_value xp = pad_spatial(g, grad_input(c, 0), &w, -INFINITY), gp = pad_spatial(g, c->dy, &w, 0);
  kiln_value zero = kiln_scalar(g, (kiln_dtype)x.dtype, 0);
  kiln_value taken = {KILN_NONE}, acc = {KILN_NONE};
  for (int64_t a = 0; a < w.k[0]; a++)
    for (int64_t b = 0; b < w.k[1]; b++) {
      int64_t st[4], en[4], sp[4];
      tap_slice(&w, a, b, st, en, sp);
      kiln_value hit = kiln_equal(g, kiln_slice(g, xp, st, en, sp, 4), y);
      if (taken.id != KILN_NONE) {
        hit = kiln_logical_and(g, hit, kiln_logical_not(g, taken));
        taken = kiln_logical_or(g, taken, hit);
      } else {
        taken = hit;
      }
      kiln_value share = kiln_select(g, hit, kiln_slice(g, gp, st, en, sp, 4), zero);
      acc = acc.id == KILN_NONE ? share : kiln_add(g, acc, share);
    }
  dx[1] = acc;
}

void kiln_grad_avg_pool2d(grad_ctx *c, kiln_value *dx) {
  kiln_graph *g = c->g;
  kiln_node x = g->nodes[c->n.inputs[0]];
  window w = window_of(c, &x);
  kiln_shape ps = padded_shape(&x, &w);
  /* Each output divides by its window's count of non-padding inputs. */
  int64_t oh = w.out[0], ow = w.out[1];
  size_t cells = (size_t)(oh * ow) + 1;
  double *count = malloc(sizeof(double) * cells);
  float *count32 = malloc(sizeof(float) * cells);
  if (!count || !count32) {
    free(count);
    free(count32);
    dx[0] = kiln_graph_fail(g, KILN_ERR_NOMEM, "avg_pool2d gradient: out of memory");
    return;
  }
  for (int64_t i = 0; i < oh; i++)
    for (int64_t j = 0; j < ow; j++) {
      int64_t n[2], pos[2] = {i, j};
      for (int k = 0; k < 2; k++) {
        int64_t lo = pos[k] * w.s[k] - w.pads[k], hi = lo + w.k[k];
        n[k] = (hi < w.in[k] ? hi : w.in[k]) - (lo > 0 ? lo : 0);
      }
      count[i * ow + j] = (double)(n[0] * n[1]);
      count32[i * ow + j] = (float)count[i * ow + j];
    }
  kiln_dtype t = (kiln_dtype)x.dtype;
  kiln_value cnt = kiln_constant(g, t, (kiln_shape){4, {1, oh, ow, 1}}, t == KILN_F32 ? (void *)count32 : (void *)count);
  free(count);
  free(count32);
  kiln_value share = kiln_div(g, c->dy, cnt), acc = {KILN_NONE};
  for (int64_t a = 0; a < w.k[0]; a++)
    for (int64_t b = 0; b < w.k[1]; b++) {
      int64_t st[4], en[4], sp[4];
      tap_slice(&w, a, b, st, en, sp);
      kiln_value part = kiln_unslice(g, share, ps, st, en, sp, 4);
      acc = acc.id == KILN_NONE ? part : kiln_add(g, acc, part);
    }
  dx[0] = unpad_spatial(g, acc, &w);
}

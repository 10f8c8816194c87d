/* Depthwise convolution: every group one input and one output channel (groups =
 * C = OC), MobileNet's 3x3 layers. Through im2col this is C GEMMs of one column
 * and K = kh*kw, all packing and no arithmetic; here the channels, contiguous in
 * NHWC, are the vector lanes, and the taps are unrolled:
 *  - conv2d: per output row, blocks of PIXELS output pixels x `nv` channel
 *    vectors of sums stay in registers while each tap's weight vectors (loaded
 *    once per tap, used for every pixel of the block) multiply the input vectors
 *    at the tap; rows are the tasks.
 *  - conv2d_filter_grad: per part of the pixels (conv.h), taps x `nv` vector sums
 *    stay in registers while each pixel adds its input vectors at every tap times
 *    its dy vectors.
 * The input gradient is a depthwise convolution too (autodiff builds it so).
 * There is no padded copy of the input (for a depthwise layer it would move as
 * many bytes as the convolution): output pixels whose window lies inside the
 * image (the interior, a range of rows and columns known from the shapes) load
 * every tap at a constant offset from the window's corner; the border pixels
 * check each tap and read zeros outside. */
#include <stdio.h>
#include "codegen/conv.h"

enum { MAX_TAPS = 49, MAX_VECTORS = 32, PIXELS = 4 };

static LLVMValueRef add(cg *c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildAdd(c->b, a, b, ""); }
static LLVMValueRef mul(cg *c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildMul(c->b, a, b, ""); }
static LLVMValueRef imm(cg *c, int64_t v) { return cg_i64(c, v); }
static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
static int64_t pow2_floor(int64_t n) {
  int64_t p = 1;
  while (2 * p <= n) p *= 2;
  return p;
}
static int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
static int64_t lanes_of(cg *c, const conv_geom *q) { return c->vec_bytes / (int64_t)kiln_dtype_size(q->t); }
static int64_t taps_of(const conv_geom *q) { return q->KH * q->KW; }
/* Vector registers: 32 with AVX-512, 16 below; a few stay free for operands. */
static int64_t free_regs(cg *c) { return (c->vec_bytes >= 64 ? 32 : 16) - 4; }

bool cg_conv_depthwise_fits(cg *c, const conv_geom *q) {
  (void)c;
  return kiln_dtype_is_float(q->t) && q->groups > 1 && q->icg == 1 && q->C == q->groups && q->OC == q->groups &&
         taps_of(q) <= MAX_TAPS;
}

uint64_t cg_conv_depthwise_scratch_bytes(cg *c, const conv_geom *q, bool filter_grad) {
  (void)c;
  conv_parts parts = cg_conv_parts(q, cg_conv_fgrad_parts(q));
  return filter_grad ? cg_conv_parts_bytes(&parts) : 0;
}

/* Output positions [lo, hi) along one spatial axis whose window is inside the
 * input: in = o*stride - pad + k*dilation in [0, size) for every k < taps. */
typedef struct {
  int64_t lo, hi;
} interior;
static interior interior_of(int64_t out, int64_t size, int64_t taps, int64_t stride, int64_t dilation, int64_t pad) {
  int64_t lo = ceil_div(pad, stride), hi = floor_div(size - 1 - (taps - 1) * dilation + pad, stride) + 1;
  if (hi > out) hi = out;
  if (lo > out) lo = out;
  return (interior){lo, hi < lo ? lo : hi};
}
static interior rows_inside(const conv_geom *q) { return interior_of(q->OH, q->H, q->KH, q->s[0], q->d[0], q->p[0]); }
static interior cols_inside(const conv_geom *q) { return interior_of(q->OW, q->W, q->KW, q->s[1], q->d[1], q->p[1]); }

/* A run of channels: `nv` vectors of `lanes` from channel `first`. */
typedef struct {
  LLVMValueRef first;
  int64_t nv, lanes;
} channels;

typedef void (*channels_fn)(cg *c, void *ctx, channels ch);
/* Calls emit for every run of `per` whole vectors of lanes, the shorter last
 * run, and the channels left over (fewer than a vector: one narrower vector). */
static void for_channels(cg *c, const conv_geom *q, int64_t per, channels_fn emit, void *ctx) {
  int64_t lanes = lanes_of(c, q), all = q->C / lanes, whole = all / per * per;
  if (whole > 0) {
    cg_loop lb;
    LLVMValueRef v = cg_loop_begin(c, &lb, imm(c, 0), imm(c, whole * lanes), imm(c, per * lanes));
    emit(c, ctx, (channels){v, per, lanes});
    cg_loop_end(c, &lb);
  }
  if (whole < all) emit(c, ctx, (channels){imm(c, whole * lanes), all - whole, lanes});
  if (q->C % lanes) emit(c, ctx, (channels){imm(c, all * lanes), 1, q->C % lanes});
}

/* The input under the windows of a few output pixels (n, oh, ow + p), p < pixels. */
typedef struct {
  const conv_geom *q;
  LLVMValueRef x, oh, ow; /* the image is in corner */
  LLVMValueRef corner; /* the first window's corner in x (outside the image for some border pixels) */
  bool checked;        /* border pixels (one at a time): each tap checks it is inside the image */
} window;

static window window_at(cg *c, const conv_geom *q, LLVMValueRef x, LLVMValueRef n, LLVMValueRef oh, LLVMValueRef ow,
                        bool checked) {
  window win = {.q = q, .x = x, .oh = oh, .ow = ow, .checked = checked};
  LLVMValueRef ih = LLVMBuildSub(c->b, mul(c, oh, imm(c, q->s[0])), imm(c, q->p[0]), "");
  LLVMValueRef iw = LLVMBuildSub(c->b, mul(c, ow, imm(c, q->s[1])), imm(c, q->p[1]), "");
  win.corner = mul(c, add(c, mul(c, add(c, mul(c, n, imm(c, q->H)), ih), imm(c, q->W)), iw), imm(c, q->C));
  return win;
}

/* Whether tap t of the window's first pixel is inside the image. */
static LLVMValueRef tap_inside(cg *c, const window *win, int64_t t) {
  const conv_geom *q = win->q;
  int64_t kh = t / q->KW, kw = t % q->KW;
  LLVMValueRef ih = add(c, mul(c, win->oh, imm(c, q->s[0])), imm(c, kh * q->d[0] - q->p[0]));
  LLVMValueRef iw = add(c, mul(c, win->ow, imm(c, q->s[1])), imm(c, kw * q->d[1] - q->p[1]));
  /* unsigned compares fold the < 0 and >= size checks into one */
  return LLVMBuildAnd(c->b, LLVMBuildICmp(c->b, LLVMIntULT, ih, imm(c, q->H), ""),
                      LLVMBuildICmp(c->b, LLVMIntULT, iw, imm(c, q->W), ""), "");
}

/* The vector of channels ch.first + v*lanes at tap t of pixel p; zeros outside the image. */
static LLVMValueRef tap_load(cg *c, const window *win, LLVMTypeRef vt, channels ch, int64_t t, int64_t p, int64_t v) {
  const conv_geom *q = win->q;
  int64_t kh = t / q->KW, kw = t % q->KW;
  int64_t off = (kh * q->d[0] * q->W + kw * q->d[1] + p * q->s[1]) * q->C + v * ch.lanes;
  LLVMValueRef idx = add(c, add(c, win->corner, ch.first), imm(c, off));
  if (!win->checked) return cg_conv_vload(c, q, vt, win->x, idx);
  LLVMValueRef ok = tap_inside(c, win, t);
  LLVMValueRef safe = add(c, ch.first, imm(c, v * ch.lanes)); /* pixel 0's channels: inside x */
  LLVMValueRef l = cg_conv_vload(c, q, vt, win->x, LLVMBuildSelect(c->b, ok, idx, safe, ""));
  return LLVMBuildSelect(c->b, ok, l, LLVMConstNull(vt), "");
}

/* ---- conv2d ---- */

/* The forward pass's arithmetic is in functions shared by every depthwise layer
 * of the module with the same tap grid and block shape (noinline, so LLVM
 * optimises and compiles each once; MobileNetV2's 17 layers need a handful):
 *   block(x, w, out, safe, blocks, tap_row, tap_col, pixel_step, w_row, w_col, out_step, mask)
 * sums `pixels` output pixels x nv vectors of channels over a th x tw grid of
 * taps, for `blocks` runs of nv vectors: x is the first pixel's first tap, tap
 * (i, j) is at i*tap_row + j*tap_col, the next pixel's taps pixel_step further;
 * tap (i, j)'s weights are at i*w_row + j*w_col in w; out's pixels are out_step
 * apart. The border variant (one pixel) reads tap t = i*tw + j only if bit t of
 * mask is set (else a zero; the load goes to `safe`, inside x). A convolution's
 * grid is its filter; the input gradient of a strided one (conv_geom.up) runs
 * one grid per output phase, a strided subset of the filter. */
enum { FA_X, FA_W, FA_OUT, FA_SAFE, FA_BLOCKS, FA_TAP_ROW, FA_TAP_COL, FA_PIXEL, FA_W_ROW, FA_W_COL, FA_OUT_STEP, FA_MASK,
       FA_COUNT };

static LLVMTypeRef block_fn_type(cg *c) {
  LLVMTypeRef ps[FA_COUNT] = {c->ptr, c->ptr, c->ptr, c->ptr, c->i64, c->i64, c->i64, c->i64, c->i64, c->i64, c->i64, c->i64};
  return LLVMFunctionType(c->void_t, ps, FA_COUNT, 0);
}

typedef struct {
  int64_t th, tw;
} tap_grid;

/* q: for its dtype only; the grid and strides are what differ between callers */
static LLVMValueRef block_fn(cg *c, const conv_geom *q, tap_grid grid, int64_t pixels, channels ch, bool border) {
  char name[80];
  snprintf(name, sizeof name, "kiln_depthwise_%s_%lldx%lld_%lldx%lldx%lld%s", kiln_dtype_name(q->t), (long long)grid.th,
           (long long)grid.tw, (long long)pixels, (long long)ch.nv, (long long)ch.lanes, border ? "_border" : "");
  LLVMValueRef fn = cg_shared_fn(c, name);
  if (fn) return fn;
  cg_fn_pos sp;
  fn = cg_begin_shared_fn(c, name, block_fn_type(c), &sp);
  LLVMValueRef a[FA_COUNT];
  for (unsigned i = 0; i < FA_COUNT; i++) a[i] = LLVMGetParam(fn, i);
  LLVMTypeRef et = cg_type(c, q->t), vt = LLVMVectorType(et, (unsigned)ch.lanes);
  cg_loop lb;
  LLVMValueRef b = cg_loop_begin(c, &lb, imm(c, 0), a[FA_BLOCKS], imm(c, 1));
  LLVMValueRef first = mul(c, b, imm(c, ch.nv * ch.lanes)), acc[PIXELS][MAX_VECTORS];
  for (int64_t p = 0; p < pixels; p++)
    for (int64_t v = 0; v < ch.nv; v++) acc[p][v] = LLVMConstNull(vt);
  for (int64_t t = 0; t < grid.th * grid.tw; t++) {
    LLVMValueRef i = imm(c, t / grid.tw), j = imm(c, t % grid.tw);
    LLVMValueRef tap = add(c, mul(c, i, a[FA_TAP_ROW]), mul(c, j, a[FA_TAP_COL]));
    LLVMValueRef wrow = add(c, first, add(c, mul(c, i, a[FA_W_ROW]), mul(c, j, a[FA_W_COL]))), wv[MAX_VECTORS], ok = NULL;
    for (int64_t v = 0; v < ch.nv; v++) wv[v] = cg_conv_vload(c, q, vt, a[FA_W], add(c, wrow, imm(c, v * ch.lanes)));
    if (border)
      ok = LLVMBuildTrunc(c->b, LLVMBuildLShr(c->b, a[FA_MASK], imm(c, t), ""), c->i1, "");
    for (int64_t p = 0; p < pixels; p++)
      for (int64_t v = 0; v < ch.nv; v++) {
        LLVMValueRef idx = add(c, add(c, first, tap), add(c, mul(c, imm(c, p), a[FA_PIXEL]), imm(c, v * ch.lanes)));
        LLVMValueRef src = cg_gep(c, et, a[FA_X], idx);
        if (border) src = LLVMBuildSelect(c->b, ok, src, cg_gep(c, et, a[FA_SAFE], add(c, first, imm(c, v * ch.lanes))), "");
        LLVMValueRef xv = LLVMBuildLoad2(c->b, vt, src, "");
        LLVMSetAlignment(xv, (unsigned)kiln_dtype_size(q->t));
        if (border) xv = LLVMBuildSelect(c->b, ok, xv, LLVMConstNull(vt), "");
        acc[p][v] = cg_conv_vfma(c, xv, wv[v], acc[p][v]);
      }
  }
  for (int64_t p = 0; p < pixels; p++)
    for (int64_t v = 0; v < ch.nv; v++)
      cg_conv_vstore(c, q, acc[p][v], a[FA_OUT], add(c, first, add(c, mul(c, imm(c, p), a[FA_OUT_STEP]), imm(c, v * ch.lanes))));
  cg_loop_end_scalar(c, &lb);
  LLVMBuildRetVoid(c->b);
  cg_end_fn(c, &sp);
  return fn;
}

/* A run of output pixels for the block functions: where their taps and weights are
 * (element offsets without the channel) and how the pixels step. */
typedef struct {
  const conv_geom *q;
  LLVMValueRef x, w, out;
  tap_grid grid;
  LLVMValueRef corner;  /* in x: the first pixel's first tap */
  LLVMValueRef out_at;  /* in out: the first pixel */
  int64_t tap_row, tap_col, pixel_step, w_first, w_row, w_col, out_step;
  bool checked;
  LLVMValueRef mask; /* border pixels: the taps inside the image */
  int64_t pixels;
} fwd_ctx;

/* Calls the block function on `blocks` runs of ch.nv vectors from channel ch.first. */
static void fwd_call(cg *c, fwd_ctx *m, channels ch, int64_t blocks) {
  LLVMTypeRef et = cg_type(c, m->q->t);
  LLVMValueRef args[FA_COUNT] = {cg_gep(c, et, m->x, add(c, m->corner, ch.first)),
                                 cg_gep(c, et, m->w, add(c, imm(c, m->w_first), ch.first)),
                                 cg_gep(c, et, m->out, add(c, m->out_at, ch.first)),
                                 cg_gep(c, et, m->x, ch.first),
                                 imm(c, blocks),
                                 imm(c, m->tap_row),
                                 imm(c, m->tap_col),
                                 imm(c, m->pixel_step),
                                 imm(c, m->w_row),
                                 imm(c, m->w_col),
                                 imm(c, m->out_step),
                                 m->mask ? m->mask : imm(c, -1)};
  LLVMBuildCall2(c->b, block_fn_type(c), block_fn(c, m->q, m->grid, m->pixels, ch, m->checked), args, FA_COUNT, "");
}

/* The whole blocks of `per` vectors (one call for them all), the rest in blocks
 * of per/2, per/4, ... vectors (per is a power of two, so every layer shares the
 * same few block functions), and the channels left over (fewer than a vector:
 * one narrower vector). */
static void fwd_channels(cg *c, fwd_ctx *m, int64_t per) {
  const conv_geom *q = m->q;
  int64_t lanes = lanes_of(c, q), all = q->C / lanes, whole = all / per, done = whole * per;
  if (whole > 0) fwd_call(c, m, (channels){imm(c, 0), per, lanes}, whole);
  for (int64_t nv = per / 2; nv > 0; nv /= 2)
    if (all - done >= nv) {
      fwd_call(c, m, (channels){imm(c, done * lanes), nv, lanes}, 1);
      done += nv;
    }
  if (q->C % lanes) fwd_call(c, m, (channels){imm(c, all * lanes), 1, q->C % lanes}, 1);
}

/* Where the pixel at `at` (a run's index along the row) has its taps, and its
 * output: set by the caller for its kind of run. */
typedef void (*place_fn)(cg *c, fwd_ctx *m, void *ctx, LLVMValueRef at);
/* Whether tap t of the pixel at `at` is inside the input. */
typedef LLVMValueRef (*inside_fn)(cg *c, fwd_ctx *m, void *ctx, LLVMValueRef at, int64_t t);

/* Pixels [at0, at1) of a run, `pixels` at a time (at1 - at0 a multiple of them). */
static void fwd_pixels(cg *c, fwd_ctx *m, LLVMValueRef at0, LLVMValueRef at1, int64_t pixels, bool checked, place_fn place,
                       inside_fn inside, void *ctx) {
  cg_loop lw;
  LLVMValueRef at = cg_loop_begin(c, &lw, at0, at1, imm(c, pixels));
  place(c, m, ctx, at);
  m->pixels = pixels;
  m->checked = checked;
  m->mask = NULL;
  if (checked) {
    m->mask = imm(c, 0);
    for (int64_t t = 0; t < m->grid.th * m->grid.tw; t++)
      m->mask = LLVMBuildOr(c->b, m->mask, LLVMBuildShl(c->b, LLVMBuildZExt(c->b, inside(c, m, ctx, at, t), c->i64, ""),
                                                         imm(c, t), ""), "");
  }
  fwd_channels(c, m, pow2_floor(free_regs(c) / (pixels + 1)));
  cg_loop_end_scalar(c, &lw);
}

/* A run of n pixels: [0, lo) and [hi, n) one at a time and checked, [lo, hi) in
 * blocks of PIXELS as far as they go (unchecked), the rest checked. */
static void fwd_run(cg *c, fwd_ctx *m, LLVMValueRef lo, LLVMValueRef hi, LLVMValueRef n, place_fn place, inside_fn inside,
                    void *ctx) {
  LLVMValueRef blocks_end = add(c, lo, mul(c, LLVMBuildSDiv(c->b, LLVMBuildSub(c->b, hi, lo, ""), imm(c, PIXELS), ""), imm(c, PIXELS)));
  fwd_pixels(c, m, imm(c, 0), lo, 1, true, place, inside, ctx);
  fwd_pixels(c, m, lo, blocks_end, PIXELS, false, place, inside, ctx);
  fwd_pixels(c, m, blocks_end, n, 1, true, place, inside, ctx);
}

/* The rows [r0, r1) of the output (image * OH + row) as a task, then ep over each. */
typedef void (*row_fn)(cg *c, const conv_geom *q, fwd_ctx *m, LLVMValueRef n, LLVMValueRef oh);

static void fwd_rows(cg *c, const conv_geom *q, LLVMValueRef out, const LLVMValueRef *in, const cg_epilogue *ep, row_fn row) {
  bool threaded = cg_conv_worth_threads(c, q);
  /* output rows in chunks: a few per thread so a slow one does not hold the rest up */
  int64_t rows = q->N * q->OH, chunks = threaded ? 4 * c->threads : 1, per_chunk = ceil_div(rows, chunks);
  chunks = ceil_div(rows, per_chunk);
  char name[48];
  snprintf(name, sizeof name, "kiln_conv%u_depthwise_task", c->ntask_fns++);
  cg_fn_pos sp;
  LLVMValueRef v[CG_TASK_CTX_MAX] = {in[0], in[1], out}, chunk, worker;
  unsigned nctx = cg_epilogue_ctx(ep, v, 3);
  LLVMValueRef ctx = cg_task_ctx(c, v, nctx);
  LLVMValueRef fn = cg_task_begin(c, name, nctx, 1 << 2, &sp, v, &chunk, &worker);
  LLVMValueRef r0, r1 = cg_task_range(c, chunk, per_chunk, rows, &r0);
  cg_loop lr;
  LLVMValueRef r = cg_loop_begin(c, &lr, r0, r1, imm(c, 1));
  fwd_ctx m = {.q = q, .x = v[0], .w = v[1], .out = v[2]};
  row(c, q, &m, LLVMBuildSDiv(c->b, r, imm(c, q->OH), ""), LLVMBuildSRem(c->b, r, imm(c, q->OH), ""));
  if (ep) { /* the row is final, and still cached */
    cg_epilogue in_task = cg_epilogue_in_task(ep, v + 3);
    LLVMValueRef first = mul(c, mul(c, r, imm(c, q->OW)), imm(c, q->C));
    in_task.apply(c, &in_task, v[2], first, add(c, first, imm(c, q->OW * q->C)));
  }
  cg_loop_end(c, &lr);
  cg_task_end(c, &sp);
  cg_parallel_for(c, fn, ctx, chunks, threaded);
}

/* ---- a convolution's rows: the filter's taps, the input read in place ---- */

typedef struct {
  LLVMValueRef n, oh;
  window win; /* the current pixel's, set by place_conv for inside_conv */
} conv_row;

static void place_conv(cg *c, fwd_ctx *m, void *ctx, LLVMValueRef ow) {
  conv_row *r = ctx;
  r->win = window_at(c, m->q, m->x, r->n, r->oh, ow, false);
  m->corner = r->win.corner;
  m->out_at = mul(c, add(c, mul(c, add(c, mul(c, r->n, imm(c, m->q->OH)), r->oh), imm(c, m->q->OW)), ow), imm(c, m->q->C));
}

static LLVMValueRef inside_conv(cg *c, fwd_ctx *m, void *ctx, LLVMValueRef ow, int64_t t) {
  (void)m, (void)ow; /* place_conv saw the same pixel */
  return tap_inside(c, &((const conv_row *)ctx)->win, t);
}

static void conv_row_body(cg *c, const conv_geom *q, fwd_ctx *m, LLVMValueRef n, LLVMValueRef oh) {
  m->grid = (tap_grid){q->KH, q->KW};
  m->tap_row = q->d[0] * q->W * q->C, m->tap_col = q->d[1] * q->C, m->pixel_step = q->s[1] * q->C;
  m->w_first = 0, m->w_row = q->KW * q->C, m->w_col = q->C, m->out_step = q->C;
  /* the unchecked columns: the interior's, in a row of the interior; none in other rows */
  interior ri = rows_inside(q), ci = cols_inside(q);
  LLVMValueRef inside = LLVMBuildICmp(c->b, LLVMIntULT, LLVMBuildSub(c->b, oh, imm(c, ri.lo), ""), imm(c, ri.hi - ri.lo), "");
  LLVMValueRef lo = LLVMBuildSelect(c->b, inside, imm(c, ci.lo), imm(c, q->OW), "");
  LLVMValueRef hi = LLVMBuildSelect(c->b, inside, imm(c, ci.hi), imm(c, q->OW), "");
  conv_row r = {.n = n, .oh = oh};
  fwd_run(c, m, lo, hi, imm(c, q->OW), place_conv, inside_conv, &r);
}

/* ---- the input gradient of a strided layer: dy read in place, phase by phase ---- *
 *
 * The input is dy with (up - 1) zeros between its pixels (conv_geom.up), and the
 * convolution has stride 1. Output row oh meets a pixel of dy only through the
 * filter rows kh = kh0 + up*i, kh0 fixed by oh's phase (the rows between meet
 * zeros), and they meet dy rows r0 + i; likewise columns. So each output row runs,
 * per column phase kw0, its pixels ow0, ow0 + up, ... over a grid of the taps that
 * meet dy, whose pixels are consecutive pixels of dy: the arithmetic of a stride-1
 * convolution of dy, without the zeros or a buffer for them. */

typedef struct {
  LLVMValueRef n, oh, r0; /* r0: the dy row of filter row kh0 */
  int64_t c_base, ow0;    /* the dy column of the run's pixel 0 at filter column kw0; its output column */
} up_run;

static void place_up(cg *c, fwd_ctx *m, void *ctx, LLVMValueRef j) {
  const up_run *u = ctx;
  const conv_geom *q = m->q;
  LLVMValueRef col = add(c, imm(c, u->c_base), j);
  m->corner = mul(c, add(c, mul(c, add(c, mul(c, u->n, imm(c, q->HD)), u->r0), imm(c, q->WD)), col), imm(c, q->C));
  LLVMValueRef ow = add(c, imm(c, u->ow0), mul(c, j, imm(c, q->up[1])));
  m->out_at = mul(c, add(c, mul(c, add(c, mul(c, u->n, imm(c, q->OH)), u->oh), imm(c, q->OW)), ow), imm(c, q->C));
}

static LLVMValueRef inside_up(cg *c, fwd_ctx *m, void *ctx, LLVMValueRef j, int64_t t) {
  const up_run *u = ctx;
  const conv_geom *q = m->q;
  LLVMValueRef row = add(c, u->r0, imm(c, t / m->grid.tw)), col = add(c, imm(c, u->c_base + t % m->grid.tw), j);
  return LLVMBuildAnd(c->b, LLVMBuildICmp(c->b, LLVMIntULT, row, imm(c, q->HD), ""),
                      LLVMBuildICmp(c->b, LLVMIntULT, col, imm(c, q->WD), ""), "");
}

/* Output row oh, whose dy rows come from filter rows kh0, kh0 + up[0], ... */
static void up_row_phase(cg *c, const conv_geom *q, fwd_ctx *m, LLVMValueRef n, LLVMValueRef oh, LLVMValueRef e, int64_t kh0) {
  int64_t sh = q->up[0], sw = q->up[1], th = kh0 < q->KH ? ceil_div(q->KH - kh0, sh) : 0;
  LLVMValueRef r0 = LLVMBuildSDiv(c->b, add(c, e, imm(c, kh0)), imm(c, sh), ""); /* exact */
  LLVMValueRef row_in = LLVMBuildAnd(c->b, LLVMBuildICmp(c->b, LLVMIntSGE, r0, imm(c, 0), ""),
                                     LLVMBuildICmp(c->b, LLVMIntSLT, add(c, r0, imm(c, th - 1)), imm(c, q->HD), ""), "");
  LLVMTypeRef et = cg_type(c, q->t);
  for (int64_t kw0 = 0; kw0 < sw; kw0++) {
    int64_t tw = kw0 < q->KW ? ceil_div(q->KW - kw0, sw) : 0;
    /* the output columns of this phase: ow = ow0 + sw*j, dy column c_base + j at kw0 */
    int64_t ow0 = ((q->up_lo[1] + q->p[1] - kw0) % sw + sw) % sw;
    int64_t runs = ow0 < q->OW ? ceil_div(q->OW - ow0, sw) : 0;
    if (!runs) continue;
    up_run u = {n, oh, r0, (ow0 - q->p[1] - q->up_lo[1] + kw0) / sw, ow0};
    if (!th || !tw) { /* no tap meets dy: zeros */
      cg_loop lj;
      LLVMValueRef j = cg_loop_begin(c, &lj, imm(c, 0), imm(c, runs), imm(c, 1));
      place_up(c, m, &u, j);
      LLVMBuildMemSet(c->b, cg_gep(c, et, m->out, m->out_at), LLVMConstInt(c->i8, 0, 0),
                      imm(c, q->C * (int64_t)kiln_dtype_size(q->t)), (unsigned)kiln_dtype_size(q->t));
      cg_loop_end(c, &lj);
      continue;
    }
    m->grid = (tap_grid){th, tw};
    m->tap_row = q->WD * q->C, m->tap_col = q->C, m->pixel_step = q->C;
    m->w_first = (kh0 * q->KW + kw0) * q->C, m->w_row = sh * q->KW * q->C, m->w_col = sw * q->C, m->out_step = sw * q->C;
    /* unchecked: the runs whose dy columns c_base + j .. + tw - 1 lie in dy, in a row whose taps do */
    int64_t jlo = u.c_base < 0 ? -u.c_base : 0, jhi = q->WD - tw + 1 - u.c_base;
    jlo = jlo < runs ? jlo : runs;
    jhi = jhi > runs ? runs : jhi < jlo ? jlo : jhi;
    LLVMValueRef lo = LLVMBuildSelect(c->b, row_in, imm(c, jlo), imm(c, runs), "");
    LLVMValueRef hi = LLVMBuildSelect(c->b, row_in, imm(c, jhi), imm(c, runs), "");
    fwd_run(c, m, lo, hi, imm(c, runs), place_up, inside_up, &u);
  }
}

static void up_row_body(cg *c, const conv_geom *q, fwd_ctx *m, LLVMValueRef n, LLVMValueRef oh) {
  /* e = oh - pad - first: the input row of filter row 0, relative to dy's first; the
   * filter rows that meet dy are those with e + kh a multiple of up[0] */
  int64_t sh = q->up[0];
  LLVMValueRef e = LLVMBuildSub(c->b, oh, imm(c, q->p[0] + q->up_lo[0]), "");
  LLVMValueRef phase = LLVMBuildSRem(c->b, LLVMBuildSub(c->b, imm(c, 0), e, ""), imm(c, sh), "");
  phase = LLVMBuildSRem(c->b, add(c, phase, imm(c, sh)), imm(c, sh), "");
  LLVMBasicBlockRef done = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "phase.done");
  LLVMValueRef sw = LLVMBuildSwitch(c->b, phase, done, (unsigned)sh);
  for (int64_t kh0 = 0; kh0 < sh; kh0++) {
    LLVMBasicBlockRef bb = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "phase");
    LLVMAddCase(sw, imm(c, kh0), bb);
    LLVMPositionBuilderAtEnd(c->b, bb);
    up_row_phase(c, q, m, n, oh, e, kh0);
    LLVMBuildBr(c->b, done);
  }
  LLVMPositionBuilderAtEnd(c->b, done);
}

void cg_conv_depthwise(cg *c, const conv_geom *q, LLVMValueRef out, const LLVMValueRef *in, LLVMValueRef scratch,
                       const cg_epilogue *ep) {
  (void)scratch;
  fwd_rows(c, q, out, in, ep, q->up[0] ? up_row_body : conv_row_body);
}

/* ---- conv2d_filter_grad ---- */

typedef struct {
  const conv_geom *q;
  LLVMValueRef x, dy, acc_out, p0, p1;
} fgrad_ctx;

/* slot[t][v] += the input at tap t times d[v], for the pixel under win. */
static void fgrad_pixel(cg *c, const window *win, LLVMTypeRef vt, channels ch, LLVMValueRef slot[][MAX_VECTORS],
                        const LLVMValueRef *d) {
  for (int64_t t = 0; t < taps_of(win->q); t++)
    for (int64_t v = 0; v < ch.nv; v++) {
      LLVMValueRef sum = cg_conv_vfma(c, tap_load(c, win, vt, ch, t, 0, v), d[v], LLVMBuildLoad2(c->b, vt, slot[t][v], ""));
      LLVMBuildStore(c->b, sum, slot[t][v]);
    }
}

static void fgrad_block(cg *c, void *vctx, channels ch) {
  fgrad_ctx *m = vctx;
  const conv_geom *q = m->q;
  LLVMTypeRef vt = LLVMVectorType(cg_type(c, q->t), (unsigned)ch.lanes);
  int64_t taps = taps_of(q);
  /* sums live in allocas across the pixel loop; mem2reg makes them registers */
  LLVMValueRef slot[MAX_TAPS][MAX_VECTORS];
  for (int64_t t = 0; t < taps; t++)
    for (int64_t v = 0; v < ch.nv; v++) {
      slot[t][v] = cg_entry_alloca(c, vt, 64);
      LLVMBuildStore(c->b, LLVMConstNull(vt), slot[t][v]);
    }
  cg_loop lp;
  LLVMValueRef p = cg_loop_begin(c, &lp, m->p0, m->p1, imm(c, 1)), d[MAX_VECTORS];
  LLVMValueRef dbase = add(c, mul(c, p, imm(c, q->C)), ch.first);
  for (int64_t v = 0; v < ch.nv; v++) d[v] = cg_conv_vload(c, q, vt, m->dy, add(c, dbase, imm(c, v * ch.lanes)));
  int64_t per_image = q->OH * q->OW;
  LLVMValueRef n = LLVMBuildSDiv(c->b, p, imm(c, per_image), ""), rem = LLVMBuildSRem(c->b, p, imm(c, per_image), "");
  LLVMValueRef oh = LLVMBuildSDiv(c->b, rem, imm(c, q->OW), ""), ow = LLVMBuildSRem(c->b, rem, imm(c, q->OW), "");
  interior ri = rows_inside(q), ci = cols_inside(q);
  LLVMValueRef inside = LLVMBuildAnd(
      c->b, LLVMBuildICmp(c->b, LLVMIntULT, LLVMBuildSub(c->b, oh, imm(c, ri.lo), ""), imm(c, ri.hi - ri.lo), ""),
      LLVMBuildICmp(c->b, LLVMIntULT, LLVMBuildSub(c->b, ow, imm(c, ci.lo), ""), imm(c, ci.hi - ci.lo), ""), "");
  LLVMBasicBlockRef fast = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "interior"),
                    border = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "border"),
                    join = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "pixel.done");
  LLVMBuildCondBr(c->b, inside, fast, border);
  for (int checked = 0; checked < 2; checked++) {
    LLVMPositionBuilderAtEnd(c->b, checked ? border : fast);
    window win = window_at(c, q, m->x, n, oh, ow, checked);
    fgrad_pixel(c, &win, vt, ch, slot, d);
    LLVMBuildBr(c->b, join);
  }
  LLVMPositionBuilderAtEnd(c->b, join);
  cg_loop_end(c, &lp);
  for (int64_t t = 0; t < taps; t++)
    for (int64_t v = 0; v < ch.nv; v++)
      cg_conv_vstore(c, q, LLVMBuildLoad2(c->b, vt, slot[t][v], ""), m->acc_out, add(c, ch.first, imm(c, t * q->C + v * ch.lanes)));
}

void cg_conv_depthwise_filter_grad(cg *c, const conv_geom *q, LLVMValueRef out, const LLVMValueRef *in,
                                   LLVMValueRef scratch) {
  bool threaded = cg_conv_worth_threads(c, q);
  conv_parts parts = cg_conv_parts(q, cg_conv_fgrad_parts(q));
  int64_t per_part = ceil_div(q->pixels, parts.n);
  char name[56];
  snprintf(name, sizeof name, "kiln_conv%u_depthwise_filter_grad_task", c->ntask_fns++);
  cg_fn_pos sp;
  LLVMValueRef v[4], part, worker;
  LLVMValueRef fn = cg_task_begin(c, name, 4, 1 << 2 | 1 << 3, &sp, v, &part, &worker);
  LLVMValueRef p0, p1 = cg_task_range(c, part, per_part, q->pixels, &p0);
  fgrad_ctx m = {.q = q, .x = v[0], .dy = v[1], .acc_out = cg_conv_part_buffer(c, &parts, v[2], v[3], part), .p0 = p0,
                 .p1 = p1};
  int64_t per = free_regs(c) / taps_of(q);
  for_channels(c, q, per < 1 ? 1 : per, fgrad_block, &m);
  cg_task_end(c, &sp);
  cg_parallel_for(c, fn, cg_task_ctx(c, (LLVMValueRef[]){in[0], in[1], out, scratch}, 4), parts.n, threaded);
  cg_conv_add_parts(c, q, &parts, out, scratch);
}

/* Kernels for contractions and windows.
 *
 * Matmul maps onto gemm.c with strides for the transposes and the batch.
 * Conv2d: NHWC input, HWIO filter. 1x1/stride-1/unpadded convolutions are a
 * single GEMM over every pixel; the rest gather the im2col panel of a chunk of
 * images per group into scratch (the GEMM's packing buffers follow it) and run
 * one GEMM on it.
 * Pooling loops over output pixels with the channel loop innermost, so it
 * vectorizes over channels. */
#include "codegen/cg.h"

static LLVMValueRef add(cg *c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildAdd(c->b, a, b, ""); }
static LLVMValueRef mul(cg *c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildMul(c->b, a, b, ""); }
static uint64_t align64(uint64_t x) { return (x + 63) & ~(uint64_t)63; }
static LLVMValueRef offset(cg *c, kiln_dtype t, LLVMValueRef base, LLVMValueRef elems) {
  return cg_gep(c, cg_type(c, t), base, elems);
}

static cg_gemm matmul_gemm(cg *c, const kiln_node *n) {
  const kiln_node *a = &c->g->nodes[n->inputs[0]];
  int r = n->rank;
  bool ta = kiln_attr_int(n, KILN_ATTR_TRANSPOSE_A, 0), tb = kiln_attr_int(n, KILN_ATTR_TRANSPOSE_B, 0);
  int64_t M = n->dims[r - 2], N = n->dims[r - 1], K = a->dims[ta ? r - 2 : r - 1];
  return (cg_gemm){.t = (kiln_dtype)n->dtype, .batch = kiln_shape_numel(r - 2, n->dims), .M = M, .N = N, .K = K,
                   .rsa = ta ? 1 : K, .csa = ta ? M : 1, .rsb = tb ? 1 : N, .csb = tb ? K : 1, .ldc = N,
                   .bsa = M * K, .bsb = K * N, .bsc = M * N};
}

typedef struct {
  int64_t H, W, C, icg, KH, KW, s[2], d[2], p[4], OH, OW, OC, groups, Kc;
  bool pointwise;
} conv_geom;

static conv_geom conv_geometry(cg *c, const kiln_node *n) {
  const kiln_node *x = &c->g->nodes[n->inputs[0]], *w = &c->g->nodes[n->inputs[1]];
  conv_geom q = {.H = x->dims[1], .W = x->dims[2], .C = x->dims[3], .icg = w->dims[2], .KH = w->dims[0], .KW = w->dims[1],
                 .OH = n->dims[1], .OW = n->dims[2], .OC = n->dims[3], .groups = kiln_attr_int(n, KILN_ATTR_GROUPS, 1)};
  kiln_attr_ints(n, KILN_ATTR_STRIDES, q.s);
  kiln_attr_ints(n, KILN_ATTR_DILATIONS, q.d);
  kiln_attr_ints(n, KILN_ATTR_PADS, q.p);
  q.Kc = q.KH * q.KW * q.icg;
  q.pointwise = q.KH == 1 && q.KW == 1 && q.s[0] == 1 && q.s[1] == 1 && !q.p[0] && !q.p[1] && !q.p[2] && !q.p[3] &&
                q.groups == 1;
  return q;
}

/* Non-pointwise convolutions gather the im2col rows of several images at once, up
 * to this many bytes, so one GEMM has enough rows to block and to split between
 * threads (one 28x28 image with a 3x3x1 filter is a 784x9 panel). */
enum { IM2COL_BYTES = 2 << 20 };

static int64_t conv_images_per_chunk(const kiln_node *n, const conv_geom *q) {
  int64_t per_image = q->OH * q->OW * q->Kc * (int64_t)kiln_dtype_size((kiln_dtype)n->dtype);
  int64_t k = per_image > 0 ? IM2COL_BYTES / per_image : 1;
  return k < 1 ? 1 : k > n->dims[0] ? n->dims[0] : k;
}

/* The GEMM a convolution runs: every pixel of the batch at once when pointwise,
 * else one group of `images` images' im2col panel. */
static cg_gemm conv_gemm(const kiln_node *n, const conv_geom *q, int64_t images) {
  kiln_dtype t = (kiln_dtype)n->dtype;
  if (q->pointwise)
    return (cg_gemm){.t = t, .batch = 1, .M = n->dims[0] * q->H * q->W, .N = q->OC, .K = q->C, .rsa = q->C, .csa = 1,
                     .rsb = q->OC, .csb = 1, .ldc = q->OC};
  /* Serial: threaded GEMMs between serial im2col runs made 2-thread convolutions
   * slower than 1-thread ones (measured: CNN conv2 8.3 vs 4.9 ms); until chunks run
   * in parallel, each with its own im2col, these convolutions use one thread. */
  return (cg_gemm){.t = t, .batch = 1, .M = images * q->OH * q->OW, .N = q->OC / q->groups, .K = q->Kc, .rsa = q->Kc,
                   .csa = 1, .rsb = q->OC, .csb = 1, .ldc = q->OC, .serial = true};
}

uint64_t cg_scratch_bytes(cg *c, const kiln_node *n) {
  if (n->op == KILN_OP_MATMUL) {
    cg_gemm g = matmul_gemm(c, n);
    return cg_gemm_scratch_bytes(c, &g);
  }
  if (n->op == KILN_OP_CONV2D) {
    conv_geom q = conv_geometry(c, n);
    int64_t images = conv_images_per_chunk(n, &q);
    cg_gemm full = conv_gemm(n, &q, images), rest = conv_gemm(n, &q, n->dims[0] % images);
    uint64_t col = q.pointwise ? 0 : align64((uint64_t)(images * q.OH * q.OW * q.Kc) * kiln_dtype_size((kiln_dtype)n->dtype));
    uint64_t a = cg_gemm_scratch_bytes(c, &full), b = cg_gemm_scratch_bytes(c, &rest);
    return col + (a > b ? a : b);
  }
  return 0;
}

void cg_matmul(cg *c, const kiln_node *n, LLVMValueRef out, const LLVMValueRef *in, LLVMValueRef scratch) {
  cg_gemm g = matmul_gemm(c, n);
  cg_gemm_emit(c, &g, in[0], in[1], out, scratch);
}

/* ---- convolution ---- */

typedef struct {
  kiln_dtype t;
  LLVMValueRef x, col, n, g;
  int64_t H, W, C, icg, KW, s[2], d[2], p[4], OW, Kc;
} im2col_ctx;

/* col[oh*OW + ow, (kh*KW + kw)*icg + ic] = x[n, ih, iw, g*icg + ic], or 0 in the padding. */
static void im2col_body(cg *c, const LLVMValueRef *ivs, void *vctx) {
  im2col_ctx *q = vctx;
  LLVMValueRef oh = ivs[0], ow = ivs[1], kh = ivs[2], kw = ivs[3];
  LLVMValueRef ih = LLVMBuildSub(c->b, add(c, mul(c, oh, cg_i64(c, q->s[0])), mul(c, kh, cg_i64(c, q->d[0]))), cg_i64(c, q->p[0]), "");
  LLVMValueRef iw = LLVMBuildSub(c->b, add(c, mul(c, ow, cg_i64(c, q->s[1])), mul(c, kw, cg_i64(c, q->d[1]))), cg_i64(c, q->p[1]), "");
  /* Unsigned compare folds the < 0 and >= size checks into one. */
  LLVMValueRef ok = LLVMBuildAnd(c->b, LLVMBuildICmp(c->b, LLVMIntULT, ih, cg_i64(c, q->H), ""),
                                 LLVMBuildICmp(c->b, LLVMIntULT, iw, cg_i64(c, q->W), ""), "");
  LLVMValueRef row = add(c, mul(c, oh, cg_i64(c, q->OW)), ow);
  LLVMValueRef cbase = add(c, mul(c, row, cg_i64(c, q->Kc)), mul(c, add(c, mul(c, kh, cg_i64(c, q->KW)), kw), cg_i64(c, q->icg)));
  LLVMValueRef xbase = add(c, mul(c, add(c, mul(c, add(c, mul(c, q->n, cg_i64(c, q->H)), ih), cg_i64(c, q->W)), iw), cg_i64(c, q->C)),
                           mul(c, q->g, cg_i64(c, q->icg)));
  LLVMBasicBlockRef then = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "in"),
                    els = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "pad"),
                    join = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "join");
  LLVMBuildCondBr(c->b, ok, then, els);
  cg_loop l;
  LLVMPositionBuilderAtEnd(c->b, then);
  LLVMValueRef ic = cg_loop_begin(c, &l, cg_i64(c, 0), cg_i64(c, q->icg), cg_i64(c, 1));
  cg_store(c, q->t, cg_load(c, q->t, q->x, add(c, xbase, ic)), q->col, add(c, cbase, ic));
  cg_loop_end(c, &l);
  LLVMBuildBr(c->b, join);
  LLVMPositionBuilderAtEnd(c->b, els);
  ic = cg_loop_begin(c, &l, cg_i64(c, 0), cg_i64(c, q->icg), cg_i64(c, 1));
  cg_store(c, q->t, cg_const(c, q->t, 0), q->col, add(c, cbase, ic));
  cg_loop_end(c, &l);
  LLVMBuildBr(c->b, join);
  LLVMPositionBuilderAtEnd(c->b, join);
}

/* im2col of images [first, first + count) and group by group their GEMM. */
static void conv_chunk(cg *c, const kiln_node *n, const conv_geom *g, im2col_ctx *q, LLVMValueRef first, int64_t count,
                       LLVMValueRef w, LLVMValueRef out, LLVMValueRef col, LLVMValueRef ws) {
  kiln_dtype t = (kiln_dtype)n->dtype;
  int64_t ocg = g->OC / g->groups, pixels = g->OH * g->OW;
  cg_gemm mm = conv_gemm(n, g, count);
  cg_loop lg, li;
  q->g = cg_loop_begin(c, &lg, cg_i64(c, 0), cg_i64(c, g->groups), cg_i64(c, 1));
  LLVMValueRef i = cg_loop_begin(c, &li, cg_i64(c, 0), cg_i64(c, count), cg_i64(c, 1));
  q->n = add(c, first, i);
  q->col = offset(c, t, col, mul(c, i, cg_i64(c, pixels * g->Kc)));
  cg_nest(c, 4, (int64_t[]){g->OH, g->OW, g->KH, g->KW}, im2col_body, q);
  cg_loop_end(c, &li);
  LLVMValueRef B = offset(c, t, w, mul(c, q->g, cg_i64(c, ocg)));
  LLVMValueRef C = offset(c, t, out, add(c, mul(c, first, cg_i64(c, pixels * g->OC)), mul(c, q->g, cg_i64(c, ocg))));
  cg_gemm_emit(c, &mm, col, B, C, ws);
  cg_loop_end(c, &lg);
}

void cg_conv2d(cg *c, const kiln_node *n, LLVMValueRef out, const LLVMValueRef *in, LLVMValueRef scratch) {
  kiln_dtype t = (kiln_dtype)n->dtype;
  conv_geom g = conv_geometry(c, n);
  if (kiln_shape_numel(4, n->dims) == 0) return;
  if (g.pointwise) {
    cg_gemm mm = conv_gemm(n, &g, 0);
    cg_gemm_emit(c, &mm, in[0], in[1], out, scratch);
    return;
  }
  im2col_ctx q = {.t = t, .x = in[0], .H = g.H, .W = g.W, .C = g.C, .icg = g.icg, .KW = g.KW,
                  .s = {g.s[0], g.s[1]}, .d = {g.d[0], g.d[1]}, .p = {g.p[0], g.p[1], g.p[2], g.p[3]}, .OW = g.OW, .Kc = g.Kc};
  int64_t images = conv_images_per_chunk(n, &g), N = n->dims[0], full = N / images * images;
  LLVMValueRef ws = LLVMBuildGEP2(c->b, c->i8, scratch,
                                  (LLVMValueRef[]){cg_i64(c, (int64_t)align64((uint64_t)(images * g.OH * g.OW * g.Kc) * kiln_dtype_size(t)))}, 1, "");
  cg_loop lc;
  LLVMValueRef first = cg_loop_begin(c, &lc, cg_i64(c, 0), cg_i64(c, full), cg_i64(c, images));
  conv_chunk(c, n, &g, &q, first, images, in[1], out, scratch, ws);
  cg_loop_end(c, &lc);
  if (full < N) conv_chunk(c, n, &g, &q, cg_i64(c, full), N - full, in[1], out, scratch, ws);
}

/* ---- pooling ---- */

typedef struct {
  const kiln_node *n;
  kiln_dtype t;
  LLVMValueRef x, out;
  int64_t H, W, C, k[2], s[2], p[4];
} pool_ctx;

static LLVMValueRef smin(cg *c, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildSelect(c->b, LLVMBuildICmp(c->b, LLVMIntSLT, a, b, ""), a, b, "");
}
static LLVMValueRef smax(cg *c, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildSelect(c->b, LLVMBuildICmp(c->b, LLVMIntSGT, a, b, ""), a, b, "");
}

static void pool_body(cg *c, const LLVMValueRef *ivs, void *vctx) {
  pool_ctx *q = vctx;
  bool is_max = q->n->op == KILN_OP_MAX_POOL2D;
  LLVMValueRef nb = ivs[0], oh = ivs[1], ow = ivs[2], one = cg_i64(c, 1), zero = cg_i64(c, 0);
  int64_t OH = q->n->dims[1], OW = q->n->dims[2];
  LLVMValueRef obase = mul(c, add(c, mul(c, add(c, mul(c, nb, cg_i64(c, OH)), oh), cg_i64(c, OW)), ow), cg_i64(c, q->C));
  /* The window clipped to the input: [h0, h1) x [w0, w1). */
  LLVMValueRef hs = LLVMBuildSub(c->b, mul(c, oh, cg_i64(c, q->s[0])), cg_i64(c, q->p[0]), "");
  LLVMValueRef ws = LLVMBuildSub(c->b, mul(c, ow, cg_i64(c, q->s[1])), cg_i64(c, q->p[1]), "");
  LLVMValueRef h0 = smax(c, hs, zero), h1 = smin(c, add(c, hs, cg_i64(c, q->k[0])), cg_i64(c, q->H));
  LLVMValueRef w0 = smax(c, ws, zero), w1 = smin(c, add(c, ws, cg_i64(c, q->k[1])), cg_i64(c, q->W));
  cg_loop l, lh, lw;
  LLVMValueRef ch = cg_loop_begin(c, &l, zero, cg_i64(c, q->C), one);
  cg_store(c, q->t, cg_const(c, q->t, is_max ? -__builtin_inf() : 0.0), q->out, add(c, obase, ch));
  cg_loop_end(c, &l);
  LLVMValueRef ih = cg_loop_begin(c, &lh, h0, h1, one);
  LLVMValueRef iw = cg_loop_begin(c, &lw, w0, w1, one);
  LLVMValueRef ibase = mul(c, add(c, mul(c, add(c, mul(c, nb, cg_i64(c, q->H)), ih), cg_i64(c, q->W)), iw), cg_i64(c, q->C));
  ch = cg_loop_begin(c, &l, zero, cg_i64(c, q->C), one);
  LLVMValueRef oi = add(c, obase, ch), v = cg_load(c, q->t, q->x, add(c, ibase, ch)), o = cg_load(c, q->t, q->out, oi);
  cg_store(c, q->t, cg_binary(c, is_max ? KILN_OP_MAX : KILN_OP_ADD, q->t, o, v), q->out, oi);
  cg_loop_end(c, &l);
  cg_loop_end(c, &lw);
  cg_loop_end(c, &lh);
  if (!is_max) {
    LLVMValueRef cnt = mul(c, LLVMBuildSub(c->b, h1, h0, ""), LLVMBuildSub(c->b, w1, w0, ""));
    LLVMValueRef cf = LLVMBuildSIToFP(c->b, cnt, cg_type(c, q->t), "");
    ch = cg_loop_begin(c, &l, zero, cg_i64(c, q->C), one);
    oi = add(c, obase, ch);
    cg_store(c, q->t, LLVMBuildFDiv(c->b, cg_load(c, q->t, q->out, oi), cf, ""), q->out, oi);
    cg_loop_end(c, &l);
  }
}

void cg_pool2d(cg *c, const kiln_node *n, LLVMValueRef out, const LLVMValueRef *in) {
  const kiln_node *x = &c->g->nodes[n->inputs[0]];
  pool_ctx q = {.n = n, .t = (kiln_dtype)n->dtype, .x = in[0], .out = out, .H = x->dims[1], .W = x->dims[2], .C = x->dims[3]};
  kiln_attr_ints(n, KILN_ATTR_WINDOW, q.k);
  kiln_attr_ints(n, KILN_ATTR_STRIDES, q.s);
  kiln_attr_ints(n, KILN_ATTR_PADS, q.p);
  cg_nest(c, 3, n->dims, pool_body, &q);
}

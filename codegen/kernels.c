/* Kernels for contractions and windows.
 *
 * Matmul maps onto gemm.c with strides for the transposes and the batch.
 * Conv2d: NHWC input, HWIO filter. 1x1/stride-1/unpadded convolutions are a
 * single GEMM over every pixel; the rest are tasks over chunks of output pixels,
 * each gathering its chunk's im2col panel per group into its worker's scratch
 * (the GEMM's packing buffers follow it) and running one serial GEMM on it.
 * Pooling loops over output pixels with the channel loop innermost, so it
 * vectorizes over channels. */
#include <stdio.h>
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

/* Non-pointwise convolutions cut the batch's output pixels into chunks of rows;
 * a task gathers its chunk's im2col rows (at most this many bytes: they stay in
 * L2/L3 for the GEMM that follows) into its worker's scratch and runs a serial
 * GEMM on them. Chunks span image boundaries, so one 28x28 image's 784x9 panel
 * still joins its neighbours in one GEMM with rows enough to block. */
enum { IM2COL_BYTES = 2 << 20, CONV_CHUNK_ALIGN = 12 };
/* Below this much arithmetic a convolution is not worth waking the other threads. */
#define CONV_THREADED_FLOPS 2e6

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* The GEMM a convolution runs: every pixel of the batch at once when pointwise,
 * else one chunk of `rows` output pixels' im2col panel. Chunk GEMMs are serial
 * (the chunks are the parallelism) and always packed, so that bits do not depend
 * on where the thread count puts chunk boundaries. */
static cg_gemm conv_gemm(const kiln_node *n, const conv_geom *q, int64_t rows) {
  kiln_dtype t = (kiln_dtype)n->dtype;
  if (q->pointwise)
    return (cg_gemm){.t = t, .batch = 1, .M = n->dims[0] * q->H * q->W, .N = q->OC, .K = q->C, .rsa = q->C, .csa = 1,
                     .rsb = q->OC, .csb = 1, .ldc = q->OC};
  return (cg_gemm){.t = t, .batch = 1, .M = rows, .N = q->OC / q->groups, .K = q->Kc, .rsa = q->Kc, .csa = 1,
                   .rsb = q->OC, .csb = 1, .ldc = q->OC, .serial = true, .packed = true};
}

/* Chunks of `rows` output pixels: nfull whole ones, then one of `rest` if nonzero. */
typedef struct {
  int64_t pixels, rows, nfull, rest, ntasks;
  bool threaded;
  uint64_t col_bytes, worker_bytes;
} conv_plan;

static conv_plan plan_conv(cg *c, const kiln_node *n, const conv_geom *q) {
  conv_plan p = {.pixels = n->dims[0] * q->OH * q->OW};
  int64_t es = (int64_t)kiln_dtype_size((kiln_dtype)n->dtype);
  int64_t max_rows = IM2COL_BYTES / (q->Kc * es);
  if (max_rows < CONV_CHUNK_ALIGN) max_rows = CONV_CHUNK_ALIGN;
  int64_t chunks = ceil_div(p.pixels, max_rows);
  p.threaded = c->threads > 1 && 2.0 * (double)p.pixels * (double)q->Kc * (double)q->OC >= CONV_THREADED_FLOPS;
  if (p.threaded) chunks = ceil_div(chunks, c->threads) * c->threads; /* an equal share per thread */
  p.rows = ceil_div(ceil_div(p.pixels, chunks), CONV_CHUNK_ALIGN) * CONV_CHUNK_ALIGN;
  p.nfull = p.pixels / p.rows;
  p.rest = p.pixels % p.rows;
  p.ntasks = p.nfull + (p.rest > 0);
  cg_gemm full = conv_gemm(n, q, p.rows), rest = conv_gemm(n, q, p.rest);
  uint64_t a = cg_gemm_scratch_bytes(c, &full), b = cg_gemm_scratch_bytes(c, &rest);
  p.col_bytes = align64((uint64_t)(p.rows * q->Kc * es));
  p.worker_bytes = p.col_bytes + align64(a > b ? a : b);
  return p;
}

uint64_t cg_scratch_bytes(cg *c, const kiln_node *n) {
  if (n->op == KILN_OP_MATMUL) {
    cg_gemm g = matmul_gemm(c, n);
    return cg_gemm_scratch_bytes(c, &g);
  }
  if (n->op == KILN_OP_CONV2D) {
    conv_geom q = conv_geometry(c, n);
    if (q.pointwise) {
      cg_gemm g = conv_gemm(n, &q, 0);
      return cg_gemm_scratch_bytes(c, &g);
    }
    conv_plan p = plan_conv(c, n, &q);
    return p.worker_bytes * (uint64_t)(p.threaded ? c->threads : 1);
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
  LLVMValueRef x, col, n, oh, ow, g;
  int64_t H, W, C, icg, KW, s[2], d[2], p[4], Kc;
} im2col_ctx;

/* col[(kh*KW + kw)*icg + ic] = x[n, ih, iw, g*icg + ic], or 0 in the padding: one
 * output pixel's row. */
static void im2col_body(cg *c, const LLVMValueRef *ivs, void *vctx) {
  im2col_ctx *q = vctx;
  LLVMValueRef kh = ivs[0], kw = ivs[1];
  LLVMValueRef ih = LLVMBuildSub(c->b, add(c, mul(c, q->oh, cg_i64(c, q->s[0])), mul(c, kh, cg_i64(c, q->d[0]))), cg_i64(c, q->p[0]), "");
  LLVMValueRef iw = LLVMBuildSub(c->b, add(c, mul(c, q->ow, cg_i64(c, q->s[1])), mul(c, kw, cg_i64(c, q->d[1]))), cg_i64(c, q->p[1]), "");
  /* Unsigned compare folds the < 0 and >= size checks into one. */
  LLVMValueRef ok = LLVMBuildAnd(c->b, LLVMBuildICmp(c->b, LLVMIntULT, ih, cg_i64(c, q->H), ""),
                                 LLVMBuildICmp(c->b, LLVMIntULT, iw, cg_i64(c, q->W), ""), "");
  LLVMValueRef cbase = mul(c, add(c, mul(c, kh, cg_i64(c, q->KW)), kw), cg_i64(c, q->icg));
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

/* The task context: what every chunk reads and writes. */
enum { CONV_X, CONV_W, CONV_OUT, CONV_SCRATCH, CONV_CTX_FIELDS };

/* Task i: output pixels [i*rows, min((i+1)*rows, pixels)), group by group their
 * im2col rows into the worker's scratch, then their GEMM. */
static LLVMValueRef conv_task_fn(cg *c, const kiln_node *n, const conv_geom *g, const conv_plan *p) {
  kiln_dtype t = (kiln_dtype)n->dtype;
  char name[48];
  snprintf(name, sizeof name, "kiln_conv%u_task", c->nconv++);
  cg_fn_pos sp;
  LLVMValueRef fn = cg_begin_fn(c, name, cg_task_type(c), &sp), v[CONV_CTX_FIELDS];
  cg_task_ctx_load(c, LLVMGetParam(fn, 0), CONV_CTX_FIELDS, v);
  LLVMValueRef task = LLVMGetParam(fn, 1), worker = LLVMBuildSExt(c->b, LLVMGetParam(fn, 2), c->i64, "");
  LLVMValueRef col = LLVMBuildGEP2(c->b, c->i8, v[CONV_SCRATCH], (LLVMValueRef[]){mul(c, worker, cg_i64(c, (int64_t)p->worker_bytes))}, 1, "");
  LLVMValueRef ws = LLVMBuildGEP2(c->b, c->i8, col, (LLVMValueRef[]){cg_i64(c, (int64_t)p->col_bytes)}, 1, "");
  LLVMValueRef r0 = mul(c, task, cg_i64(c, p->rows));
  LLVMValueRef left = LLVMBuildSub(c->b, cg_i64(c, p->pixels), r0, "");
  LLVMValueRef count = LLVMBuildSelect(c->b, LLVMBuildICmp(c->b, LLVMIntSLT, left, cg_i64(c, p->rows), ""), left, cg_i64(c, p->rows), "");
  int64_t ocg = g->OC / g->groups, per_image = g->OH * g->OW;
  im2col_ctx q = {.t = t, .x = v[CONV_X], .H = g->H, .W = g->W, .C = g->C, .icg = g->icg, .KW = g->KW,
                  .s = {g->s[0], g->s[1]}, .d = {g->d[0], g->d[1]}, .p = {g->p[0], g->p[1], g->p[2], g->p[3]}, .Kc = g->Kc};
  cg_loop lg, li;
  q.g = cg_loop_begin(c, &lg, cg_i64(c, 0), cg_i64(c, g->groups), cg_i64(c, 1));
  LLVMValueRef i = cg_loop_begin(c, &li, cg_i64(c, 0), count, cg_i64(c, 1));
  LLVMValueRef pixel = add(c, r0, i), in_image = LLVMBuildSRem(c->b, pixel, cg_i64(c, per_image), "");
  q.n = LLVMBuildSDiv(c->b, pixel, cg_i64(c, per_image), "");
  q.oh = LLVMBuildSDiv(c->b, in_image, cg_i64(c, g->OW), "");
  q.ow = LLVMBuildSRem(c->b, in_image, cg_i64(c, g->OW), "");
  q.col = offset(c, t, col, mul(c, i, cg_i64(c, g->Kc)));
  cg_nest(c, 2, (int64_t[]){g->KH, g->KW}, im2col_body, &q);
  cg_loop_end(c, &li);
  LLVMValueRef B = offset(c, t, v[CONV_W], mul(c, q.g, cg_i64(c, ocg)));
  LLVMValueRef C = offset(c, t, v[CONV_OUT], add(c, mul(c, r0, cg_i64(c, g->OC)), mul(c, q.g, cg_i64(c, ocg))));
  cg_gemm full = conv_gemm(n, g, p->rows), rest = conv_gemm(n, g, p->rest);
  if (p->nfull && p->rest) {
    LLVMBasicBlockRef whole = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "whole"),
                      last = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "last"),
                      join = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "chunk.done");
    LLVMBuildCondBr(c->b, LLVMBuildICmp(c->b, LLVMIntSLT, task, cg_i64(c, p->nfull), ""), whole, last);
    LLVMPositionBuilderAtEnd(c->b, whole);
    cg_gemm_emit(c, &full, col, B, C, ws);
    LLVMBuildBr(c->b, join);
    LLVMPositionBuilderAtEnd(c->b, last);
    cg_gemm_emit(c, &rest, col, B, C, ws);
    LLVMBuildBr(c->b, join);
    LLVMPositionBuilderAtEnd(c->b, join);
  } else {
    cg_gemm_emit(c, p->nfull ? &full : &rest, col, B, C, ws);
  }
  cg_loop_end(c, &lg);
  LLVMBuildRetVoid(c->b);
  cg_end_fn(c, &sp);
  return fn;
}

void cg_conv2d(cg *c, const kiln_node *n, LLVMValueRef out, const LLVMValueRef *in, LLVMValueRef scratch) {
  conv_geom g = conv_geometry(c, n);
  if (kiln_shape_numel(4, n->dims) == 0) return;
  if (g.pointwise) {
    cg_gemm mm = conv_gemm(n, &g, 0);
    cg_gemm_emit(c, &mm, in[0], in[1], out, scratch);
    return;
  }
  conv_plan p = plan_conv(c, n, &g);
  LLVMValueRef task = conv_task_fn(c, n, &g, &p);
  LLVMValueRef vals[CONV_CTX_FIELDS] = {in[0], in[1], out, scratch};
  cg_parallel_for(c, task, cg_task_ctx(c, vals, CONV_CTX_FIELDS), p.ntasks, p.threaded);
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

/* Convolution kernels: conv2d and its filter gradient, NHWC input, HWIO filter.
 *
 * Both are im2col + GEMM over chunks of output pixels. A chunk gathers its rows
 * of the im2col panel (one row per output pixel: the kh x kw x in-channel
 * window it reads, zeros in the padding) into its worker's scratch, at most
 * IM2COL_BYTES so they are still cached for the GEMM that follows, then runs a
 * serial GEMM on them. Chunks span image boundaries, so one 28x28 image's 784x9
 * panel still joins its neighbours in one GEMM with rows enough to block.
 *  - conv2d: out[chunk rows] = col * w, group by group; chunks are independent
 *    tasks. 1x1/stride-1/unpadded convolutions skip im2col: one GEMM over every
 *    pixel.
 *  - conv2d_filter_grad: dw = sum over chunks of col^T * dy[chunk rows]. The
 *    chunks are grouped into parts, one per 256 pixels (conv.h); a task
 *    accumulates its part's chunks in order into the part's buffer. 256 pixels
 *    or fewer are one GEMM over the whole panel (fgrad_wide).
 * Small filters (a first layer's) take the direct kernels of conv_direct.c,
 * depthwise convolutions those of conv_depthwise.c.
 * Chunk GEMMs are always packed: the direct path groups K differently, and a
 * chunk's row count (conv2d) depends on the thread count. */
#include <stdio.h>
#include "codegen/conv.h"

enum { IM2COL_BYTES = 512 << 10, WIDE_IM2COL_BYTES = 2 << 20, CHUNK_ALIGN = 12 };

static LLVMValueRef add(cg *c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildAdd(c->b, a, b, ""); }
static LLVMValueRef mul(cg *c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildMul(c->b, a, b, ""); }
static LLVMValueRef offset(cg *c, kiln_dtype t, LLVMValueRef base, LLVMValueRef elems) {
  return cg_gep(c, cg_type(c, t), base, elems);
}
static LLVMValueRef byte_offset(cg *c, LLVMValueRef base, LLVMValueRef bytes) {
  return LLVMBuildGEP2(c->b, c->i8, base, &bytes, 1, "");
}
static uint64_t align64(uint64_t x) { return (x + 63) & ~(uint64_t)63; }
static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

conv_geom cg_conv_geometry(cg *c, const kiln_node *n) {
  bool fgrad = n->op == KILN_OP_CONV2D_FILTER_GRAD;
  const kiln_node *x = &c->g->nodes[n->inputs[0]];
  const kiln_node *w = fgrad ? n : &c->g->nodes[n->inputs[1]], *y = fgrad ? &c->g->nodes[n->inputs[1]] : n;
  conv_geom q = {.t = (kiln_dtype)n->dtype, .N = x->dims[0], .H = x->dims[1], .W = x->dims[2], .C = x->dims[3], .icg = w->dims[2],
                 .KH = w->dims[0], .KW = w->dims[1], .OH = y->dims[1], .OW = y->dims[2], .OC = y->dims[3],
                 .groups = kiln_attr_int(n, KILN_ATTR_GROUPS, 1)};
  kiln_attr_ints(n, KILN_ATTR_STRIDES, q.s);
  kiln_attr_ints(n, KILN_ATTR_DILATIONS, q.d);
  kiln_attr_ints(n, KILN_ATTR_PADS, q.p);
  q.Kc = q.KH * q.KW * q.icg;
  /* Rows a multiple of 512 bytes apart fall into few L1 sets: 7x7x512's 18 KiB rows
   * put the 12 rows a micro-kernel reads into two, and the GEMM ran at 60 % of its
   * speed on other layers. One more cache line per row spreads them. */
  int64_t line = 64 / (int64_t)kiln_dtype_size(q.t);
  q.col_ld = (q.Kc * (int64_t)kiln_dtype_size(q.t)) % 512 == 0 ? q.Kc + line : q.Kc;
  q.pixels = x->dims[0] * q.OH * q.OW;
  q.pointwise = !fgrad && q.KH == 1 && q.KW == 1 && q.s[0] == 1 && q.s[1] == 1 && !q.p[0] && !q.p[1] && !q.p[2] &&
                !q.p[3] && q.groups == 1;
  q.b_prepacked = !fgrad && c->b_prepacked && c->b_prepacked[n - c->g->nodes];
  if (!fgrad && x->op == KILN_OP_UNSLICE && c->inlined && c->inlined[n->inputs[0]]) {
    int64_t first[4], step[KILN_MAX_RANK];
    kiln_slice_map(x, 4, x->dims, first, step);
    const kiln_node *src = &c->g->nodes[x->inputs[0]];
    q.up[0] = step[1], q.up[1] = step[2], q.up_lo[0] = first[1], q.up_lo[1] = first[2];
    q.HD = src->dims[1], q.WD = src->dims[2];
  }
  return q;
}

static int64_t max_chunk_rows(const conv_geom *q) {
  int64_t rows = IM2COL_BYTES / (q->col_ld * (int64_t)kiln_dtype_size(q->t));
  return rows < CHUNK_ALIGN ? CHUNK_ALIGN : rows;
}

/* A forward chunk's GEMM packs the whole filter again, so a chunk may grow past
 * IM2COL_BYTES to as many rows as the filter has columns (its panel then no larger
 * than the filter, up to WIDE_IM2COL_BYTES): ResNet's 7x7x512 layers packed their
 * 9.4 MB filter twice per image for 49 pixels, in chunks of 36 and 13. */
static int64_t max_fwd_chunk_rows(const conv_geom *q) {
  int64_t row_bytes = q->col_ld * (int64_t)kiln_dtype_size(q->t);
  int64_t filter_rows = min64(min64(q->OC / q->groups, q->pixels), WIDE_IM2COL_BYTES / row_bytes);
  int64_t rows = max_chunk_rows(q);
  return rows < filter_rows ? filter_rows : rows;
}

bool cg_conv_worth_threads(cg *c, const conv_geom *q) {
  return c->threads > 1 && 2.0 * (double)q->pixels * (double)q->Kc * (double)q->OC >= CG_THREADED_FLOPS;
}

/* Chunks of `rows` output pixels: nfull whole ones, then one of `rest` if nonzero. */
typedef struct {
  int64_t rows, nfull, rest, nchunks;
  uint64_t col_bytes;
} chunking;

static chunking chunks_of(const conv_geom *q, int64_t rows, int64_t align) {
  int64_t step = align > 0 ? align : CHUNK_ALIGN;
  chunking k = {.rows = ceil_div(rows, step) * step};
  k.nfull = q->pixels / k.rows;
  k.rest = q->pixels % k.rows;
  k.nchunks = k.nfull + (k.rest > 0);
  k.col_bytes = align64((uint64_t)(k.rows * q->col_ld) * kiln_dtype_size(q->t));
  return k;
}

/* ---- im2col ---- */

typedef struct {
  const conv_geom *q;
  LLVMValueRef x, col, n, oh, ow, g;
} im2col_ctx;

/* col[(kh*KW + kw)*icg + ic] = x[n, ih, iw, g*icg + ic], or 0 in the padding: one
 * output pixel's row. */
/* The input row that the pixel's filter row kh reads. */
static LLVMValueRef im2col_ih(cg *c, const im2col_ctx *m, LLVMValueRef kh) {
  const conv_geom *q = m->q;
  return LLVMBuildSub(c->b, add(c, mul(c, m->oh, cg_i64(c, q->s[0])), mul(c, kh, cg_i64(c, q->d[0]))), cg_i64(c, q->p[0]), "");
}

/* Where input pixel (ih, iw) of the pixel's image starts in x. */
static LLVMValueRef im2col_x_at(cg *c, const im2col_ctx *m, LLVMValueRef ih, LLVMValueRef iw) {
  const conv_geom *q = m->q;
  return mul(c, add(c, mul(c, add(c, mul(c, m->n, cg_i64(c, q->H)), ih), cg_i64(c, q->W)), iw), cg_i64(c, q->C));
}

static void im2col_body(cg *c, const LLVMValueRef *ivs, void *vctx) {
  im2col_ctx *m = vctx;
  const conv_geom *q = m->q;
  LLVMValueRef kh = ivs[0], kw = ivs[1];
  LLVMValueRef ih = im2col_ih(c, m, kh);
  LLVMValueRef iw = LLVMBuildSub(c->b, add(c, mul(c, m->ow, cg_i64(c, q->s[1])), mul(c, kw, cg_i64(c, q->d[1]))), cg_i64(c, q->p[1]), "");
  /* Unsigned compare folds the < 0 and >= size checks into one. */
  LLVMValueRef ok = LLVMBuildAnd(c->b, LLVMBuildICmp(c->b, LLVMIntULT, ih, cg_i64(c, q->H), ""),
                                 LLVMBuildICmp(c->b, LLVMIntULT, iw, cg_i64(c, q->W), ""), "");
  LLVMValueRef cbase = mul(c, add(c, mul(c, kh, cg_i64(c, q->KW)), kw), cg_i64(c, q->icg));
  LLVMValueRef xbase = add(c, im2col_x_at(c, m, ih, iw), mul(c, m->g, cg_i64(c, q->icg)));
  LLVMBasicBlockRef then = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "in"),
                    els = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "pad"),
                    join = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "join");
  LLVMBuildCondBr(c->b, ok, then, els);
  cg_loop l;
  LLVMPositionBuilderAtEnd(c->b, then);
  LLVMValueRef ic = cg_loop_begin(c, &l, cg_i64(c, 0), cg_i64(c, q->icg), cg_i64(c, 1));
  cg_store(c, q->t, cg_load(c, q->t, m->x, add(c, xbase, ic)), m->col, add(c, cbase, ic));
  cg_loop_end(c, &l);
  LLVMBuildBr(c->b, join);
  LLVMPositionBuilderAtEnd(c->b, els);
  ic = cg_loop_begin(c, &l, cg_i64(c, 0), cg_i64(c, q->icg), cg_i64(c, 1));
  cg_store(c, q->t, cg_const(c, q->t, 0), m->col, add(c, cbase, ic));
  cg_loop_end(c, &l);
  LLVMBuildBr(c->b, join);
  LLVMPositionBuilderAtEnd(c->b, join);
}

/* One kh of a row whose kw taps are adjacent pixels (one group, no dilation across
 * w): when all KW lie inside the image, their KW x C values are contiguous in x and
 * in the row, and go as one copy (ResNet's 7x7x3 stem: 7 copies of 21 values instead
 * of 49 of 3); at the image's borders, tap by tap. */
static void im2col_kh_body(cg *c, const LLVMValueRef *ivs, void *vctx) {
  im2col_ctx *m = vctx;
  const conv_geom *q = m->q;
  LLVMValueRef kh = ivs[0], ih = im2col_ih(c, m, kh);
  LLVMValueRef iw0 = LLVMBuildSub(c->b, mul(c, m->ow, cg_i64(c, q->s[1])), cg_i64(c, q->p[1]), "");
  LLVMValueRef inside = LLVMBuildAnd(c->b, LLVMBuildICmp(c->b, LLVMIntULT, ih, cg_i64(c, q->H), ""),
                                     LLVMBuildICmp(c->b, LLVMIntULE, iw0, cg_i64(c, q->W - q->KW), ""), "");
  LLVMBasicBlockRef whole = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "row.in"),
                    taps = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "row.edge"),
                    join = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "row.join");
  LLVMBuildCondBr(c->b, inside, whole, taps);
  LLVMPositionBuilderAtEnd(c->b, whole);
  int64_t span = q->KW * q->C;
  LLVMValueRef xbase = im2col_x_at(c, m, ih, iw0), cbase = mul(c, kh, cg_i64(c, span));
  cg_loop l;
  LLVMValueRef e = cg_loop_begin(c, &l, cg_i64(c, 0), cg_i64(c, span), cg_i64(c, 1));
  cg_store(c, q->t, cg_load(c, q->t, m->x, add(c, xbase, e)), m->col, add(c, cbase, e));
  cg_loop_end(c, &l);
  LLVMBuildBr(c->b, join);
  LLVMPositionBuilderAtEnd(c->b, taps);
  LLVMValueRef kw = cg_loop_begin(c, &l, cg_i64(c, 0), cg_i64(c, q->KW), cg_i64(c, 1));
  im2col_body(c, (LLVMValueRef[]){kh, kw}, m);
  cg_loop_end_scalar(c, &l);
  LLVMBuildBr(c->b, join);
  LLVMPositionBuilderAtEnd(c->b, join);
}

/* col[i] = the im2col row of output pixel r0 + i for group g, i < count. */
static void im2col_rows(cg *c, const conv_geom *q, LLVMValueRef x, LLVMValueRef col, LLVMValueRef g, LLVMValueRef r0,
                        LLVMValueRef count) {
  int64_t per_image = q->OH * q->OW;
  im2col_ctx m = {.q = q, .x = x, .g = g};
  cg_loop li;
  LLVMValueRef i = cg_loop_begin(c, &li, cg_i64(c, 0), count, cg_i64(c, 1));
  LLVMValueRef pixel = add(c, r0, i), in_image = LLVMBuildSRem(c->b, pixel, cg_i64(c, per_image), "");
  m.n = LLVMBuildSDiv(c->b, pixel, cg_i64(c, per_image), "");
  m.oh = LLVMBuildSDiv(c->b, in_image, cg_i64(c, q->OW), "");
  m.ow = LLVMBuildSRem(c->b, in_image, cg_i64(c, q->OW), "");
  m.col = offset(c, q->t, col, mul(c, i, cg_i64(c, q->col_ld)));
  if (q->groups == 1 && q->d[1] == 1 && q->W >= q->KW) cg_nest(c, 1, (int64_t[]){q->KH}, im2col_kh_body, &m);
  else cg_nest(c, 2, (int64_t[]){q->KH, q->KW}, im2col_body, &m);
  cg_loop_end(c, &li);
}

/* Runs gemm(whole) for chunk index < nfull, else gemm(rest), on the same operands. */
static void chunk_gemm(cg *c, const chunking *k, LLVMValueRef chunk, const cg_gemm *whole, const cg_gemm *rest,
                       LLVMValueRef A, LLVMValueRef B, LLVMValueRef C, LLVMValueRef ws) {
  if (!k->nfull || !k->rest) {
    cg_gemm_emit(c, k->nfull ? whole : rest, A, B, C, ws);
    return;
  }
  LLVMBasicBlockRef full = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "whole"),
                    last = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "last"),
                    join = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "chunk.done");
  LLVMBuildCondBr(c->b, LLVMBuildICmp(c->b, LLVMIntSLT, chunk, cg_i64(c, k->nfull), ""), full, last);
  LLVMPositionBuilderAtEnd(c->b, full);
  cg_gemm_emit(c, whole, A, B, C, ws);
  LLVMBuildBr(c->b, join);
  LLVMPositionBuilderAtEnd(c->b, last);
  cg_gemm_emit(c, rest, A, B, C, ws);
  LLVMBuildBr(c->b, join);
  LLVMPositionBuilderAtEnd(c->b, join);
}

/* Rows [r0, r0 + count) of chunk `chunk`: count = min(rows, pixels - r0). */
static LLVMValueRef chunk_rows(cg *c, const conv_geom *q, const chunking *k, LLVMValueRef r0) {
  return cg_smin(c, LLVMBuildSub(c->b, cg_i64(c, q->pixels), r0, ""), cg_i64(c, k->rows));
}

/* The task's worker: its im2col rows, then its GEMM packing buffers. */
static LLVMValueRef worker_scratch(cg *c, LLVMValueRef base, LLVMValueRef worker, uint64_t worker_bytes) {
  return byte_offset(c, base, mul(c, LLVMBuildSExt(c->b, worker, c->i64, ""), cg_i64(c, (int64_t)worker_bytes)));
}

/* The task context: what every chunk reads and writes. */
enum { CTX_X, CTX_Y, CTX_OUT, CTX_SCRATCH, CTX_FIELDS, CTX_WRITTEN = 1 << CTX_OUT | 1 << CTX_SCRATCH };

/* ---- conv2d ---- */

/* out[chunk rows, group columns] = col * w[:, group columns]. */
static cg_gemm fwd_gemm(const conv_geom *q, int64_t rows) {
  if (q->pointwise)
    return (cg_gemm){.t = q->t, .batch = 1, .M = q->pixels, .N = q->OC, .K = q->C, .rsa = q->C, .csa = 1, .rsb = q->OC,
                     .csb = 1, .ldc = q->OC, .b_prepacked = q->b_prepacked};
  return (cg_gemm){.t = q->t, .batch = 1, .M = rows, .N = q->OC / q->groups, .K = q->Kc, .rsa = q->col_ld, .csa = 1,
                   .rsb = q->OC, .csb = 1, .ldc = q->OC, .serial = true, .packed = true, .b_prepacked = q->b_prepacked};
}

typedef struct {
  chunking k;
  bool threaded;
  uint64_t worker_bytes;
  uint64_t private_bytes; /* per worker, after every worker's scratch: a chunk's output for a fused pool */
} fwd_plan;

/* As many chunks as fit IM2COL_BYTES, rounded up to a multiple of the threads;
 * chunks of whole groups of `align` pixels for a fused pool (0: none). */
static fwd_plan plan_fwd(cg *c, const conv_geom *q, int64_t align) {
  fwd_plan p = {.threaded = cg_conv_worth_threads(c, q)};
  int64_t chunks = ceil_div(q->pixels, max_fwd_chunk_rows(q));
  if (p.threaded) chunks = ceil_div(chunks, c->threads) * c->threads;
  p.k = chunks_of(q, ceil_div(q->pixels, chunks), align);
  cg_gemm whole = fwd_gemm(q, p.k.rows), rest = fwd_gemm(q, p.k.rest);
  uint64_t a = cg_gemm_scratch_bytes(c, &whole), b = cg_gemm_scratch_bytes(c, &rest);
  p.worker_bytes = p.k.col_bytes + align64(a > b ? a : b);
  if (align > 0) p.private_bytes = align64((uint64_t)(p.k.rows * q->OC) * kiln_dtype_size(q->t));
  return p;
}

static int64_t fwd_workers(cg *c, const fwd_plan *p) { return p->threaded ? c->threads : 1; }

/* Task i: chunk i, group by group its im2col rows, then their GEMM. */
static LLVMValueRef fwd_task(cg *c, const conv_geom *q, const fwd_plan *p, const cg_epilogue *ep) {
  char name[48];
  snprintf(name, sizeof name, "kiln_conv%u_task", c->ntask_fns++);
  cg_fn_pos sp;
  LLVMValueRef v[CG_TASK_CTX_MAX], chunk, worker;
  unsigned nctx = CTX_FIELDS + (ep ? ep->nptrs : 0);
  LLVMValueRef fn = cg_task_begin(c, name, nctx, CTX_WRITTEN, &sp, v, &chunk, &worker);
  LLVMValueRef col = worker_scratch(c, v[CTX_SCRATCH], worker, p->worker_bytes);
  LLVMValueRef ws = byte_offset(c, col, cg_i64(c, (int64_t)p->k.col_bytes));
  LLVMValueRef r0 = mul(c, chunk, cg_i64(c, p->k.rows)), count = chunk_rows(c, q, &p->k, r0);
  LLVMValueRef lo = mul(c, r0, cg_i64(c, q->OC)), out = v[CTX_OUT];
  if (ep && ep->private_out) { /* the chunk's rows in the worker's buffer, at their flat indices */
    LLVMValueRef mine = worker_scratch(c, byte_offset(c, v[CTX_SCRATCH], cg_i64(c, (int64_t)p->worker_bytes * fwd_workers(c, p))),
                                       worker, p->private_bytes);
    out = offset(c, q->t, mine, LLVMBuildNeg(c->b, lo, ""));
  }
  int64_t ocg = q->OC / q->groups;
  cg_gemm whole = fwd_gemm(q, p->k.rows), rest = fwd_gemm(q, p->k.rest);
  cg_loop lg;
  LLVMValueRef g = cg_loop_begin(c, &lg, cg_i64(c, 0), cg_i64(c, q->groups), cg_i64(c, 1));
  im2col_rows(c, q, v[CTX_X], col, g, r0, count);
  LLVMValueRef B = offset(c, q->t, v[CTX_Y], mul(c, g, cg_i64(c, ocg)));
  LLVMValueRef C = offset(c, q->t, out, add(c, lo, mul(c, g, cg_i64(c, ocg))));
  chunk_gemm(c, &p->k, chunk, &whole, &rest, col, B, C, ws);
  cg_loop_end(c, &lg);
  if (ep) { /* the chunk's rows are final, and still cached */
    cg_epilogue in_task = cg_epilogue_in_task(ep, v + CTX_FIELDS);
    in_task.apply(c, &in_task, out, lo, add(c, lo, mul(c, count, cg_i64(c, q->OC))));
  }
  cg_task_end(c, &sp);
  return fn;
}

/* ---- conv2d with few pixels ---- */

/* A layer with fewer pixels than one chunk per thread (ResNet's last stages at batch
 * 1: 49 or 196 pixels, 2.4-9.4 MB filters) would give each thread a few rows and the
 * whole filter to stream and pack; instead the threads build the im2col panel of
 * every pixel together, then run one GEMM over it, which splits the filter's columns
 * between them. A packed GEMM sums K in the same slices whatever its split, so the
 * bits equal the chunked path's on one thread. */
static bool wide_fits(cg *c, const conv_geom *q, const cg_epilogue *ep) {
  if (!cg_conv_worth_threads(c, q) || q->groups != 1 || (ep && ep->private_out)) return false;
  uint64_t col = (uint64_t)(q->pixels * q->col_ld) * kiln_dtype_size(q->t);
  return ceil_div(q->pixels, max_fwd_chunk_rows(q)) < c->threads && col <= WIDE_IM2COL_BYTES;
}

static cg_gemm wide_gemm(const conv_geom *q, const cg_epilogue *ep) {
  return (cg_gemm){.t = q->t, .batch = 1, .M = q->pixels, .N = q->OC, .K = q->Kc, .rsa = q->col_ld, .csa = 1,
                   .rsb = q->OC, .csb = 1, .ldc = q->OC, .packed = true, .b_prepacked = q->b_prepacked,
                   .a_rows_by_thread = true, .epilogue = ep};
}

static uint64_t wide_col_bytes(const conv_geom *q) { return align64((uint64_t)(q->pixels * q->col_ld) * kiln_dtype_size(q->t)); }

static uint64_t wide_scratch_bytes(cg *c, const conv_geom *q) {
  cg_gemm g = wide_gemm(q, NULL);
  return wide_col_bytes(q) + cg_gemm_scratch_bytes(c, &g);
}

/* The whole im2col panel of x at col, `per` pixels a task, ntasks tasks (rounded up
 * ranges: the last ones may have none). */
static void im2col_panel(cg *c, const conv_geom *q, LLVMValueRef x, LLVMValueRef col, int64_t per, int64_t ntasks,
                         bool threaded) {
  char name[48];
  snprintf(name, sizeof name, "kiln_conv%u_im2col_task", c->ntask_fns++);
  cg_fn_pos sp;
  LLVMValueRef v[2], task, worker;
  LLVMValueRef fn = cg_task_begin(c, name, 2, 1 << 1, &sp, v, &task, &worker);
  LLVMValueRef r0, r1 = cg_task_range(c, task, per, q->pixels, &r0);
  r0 = cg_smin(c, r0, r1);
  im2col_rows(c, q, v[0], offset(c, q->t, v[1], mul(c, r0, cg_i64(c, q->col_ld))), cg_i64(c, 0), r0,
              LLVMBuildSub(c->b, r1, r0, ""));
  cg_task_end(c, &sp);
  cg_parallel_for(c, fn, cg_task_ctx(c, (LLVMValueRef[]){x, col}, 2), ntasks, threaded);
}

static void conv_wide(cg *c, const conv_geom *q, LLVMValueRef out, const LLVMValueRef *in, LLVMValueRef scratch,
                      const cg_epilogue *ep) {
  cg_gemm g = wide_gemm(q, ep);
  /* each thread's rows of the panel are the ones its GEMM task reads */
  im2col_panel(c, q, in[0], scratch, cg_gemm_thread_rows(c, &g), c->threads, true);
  cg_gemm_emit(c, &g, scratch, in[1], out, byte_offset(c, scratch, cg_i64(c, (int64_t)wide_col_bytes(q))));
}

void cg_conv2d(cg *c, const kiln_node *n, LLVMValueRef out, const LLVMValueRef *in, LLVMValueRef scratch,
               const cg_epilogue *ep) {
  conv_geom q = cg_conv_geometry(c, n);
  if (kiln_shape_numel(4, n->dims) == 0) return;
  if (q.pointwise) {
    KILN_ASSERT(!(ep && ep->private_out) && "cg_conv_can_pool is false for pointwise convolutions");
    cg_gemm mm = fwd_gemm(&q, 0);
    mm.epilogue = ep;
    cg_gemm_emit(c, &mm, in[0], in[1], out, scratch);
    return;
  }
  KILN_ASSERT((!q.up[0] || cg_conv_depthwise_fits(c, &q)) && "fuse.c fuses an unslice only into a depthwise convolution");
  if (cg_conv_depthwise_fits(c, &q)) {
    KILN_ASSERT(!(ep && ep->private_out) && "cg_conv_can_pool is false for depthwise convolutions");
    cg_conv_depthwise(c, &q, out, in, scratch, ep);
    return;
  }
  if (cg_conv_direct_fits(c, &q)) {
    cg_conv_direct(c, &q, out, in, scratch, ep);
    return;
  }
  if (wide_fits(c, &q, ep)) {
    conv_wide(c, &q, out, in, scratch, ep);
    return;
  }
  fwd_plan p = plan_fwd(c, &q, ep ? ep->align_pixels : 0);
  if (ep && ep->private_out) out = LLVMConstPointerNull(c->ptr); /* never written */
  LLVMValueRef vals[CG_TASK_CTX_MAX] = {in[0], in[1], out, scratch};
  unsigned nctx = cg_epilogue_ctx(ep, vals, CTX_FIELDS);
  cg_parallel_for(c, fwd_task(c, &q, &p, ep), cg_task_ctx(c, vals, nctx), p.k.nchunks, p.threaded);
}

/* ---- conv2d_filter_grad ---- */

/* part[:, group columns] += col^T * dy[chunk rows, group columns]. */
static cg_gemm fgrad_gemm(const conv_geom *q, int64_t rows) {
  return (cg_gemm){.t = q->t, .batch = 1, .M = q->Kc, .N = q->OC / q->groups, .K = rows, .rsa = 1, .csa = q->col_ld,
                   .rsb = q->OC, .csb = 1, .ldc = q->OC, .serial = true, .packed = true, .accumulate = true};
}

typedef struct {
  chunking k;
  int64_t per_part;
  conv_parts parts;
  bool threaded;
  uint64_t worker_bytes;
} fgrad_plan;

/* Scratch: parts 1.. (part 0 is the output), then each worker's. A part per 256
 * pixels, rounded up (cg_conv_fgrad_parts): its buffer is as large as the filter, and
 * ResNet's batch-1 7x7x512 layer, in five parts of 12 pixels, spent nearly all of
 * its 8.8 ms zeroing and adding 9.4 MB buffers. */
static fgrad_plan plan_fgrad(cg *c, const conv_geom *q) {
  fgrad_plan p = {.threaded = cg_conv_worth_threads(c, q)};
  int64_t parts = cg_conv_fgrad_parts(q);
  p.k = chunks_of(q, min64(max_chunk_rows(q), ceil_div(q->pixels, parts)), 0);
  p.per_part = ceil_div(p.k.nchunks, parts);
  p.parts = cg_conv_parts(q, ceil_div(p.k.nchunks, p.per_part));
  cg_gemm whole = fgrad_gemm(q, p.k.rows), rest = fgrad_gemm(q, p.k.rest);
  uint64_t a = cg_gemm_scratch_bytes(c, &whole), b = cg_gemm_scratch_bytes(c, &rest);
  p.worker_bytes = p.k.col_bytes + align64(a > b ? a : b);
  return p;
}

conv_parts cg_conv_parts(const conv_geom *q, int64_t n) {
  return (conv_parts){.n = n, .bytes = align64((uint64_t)(q->Kc * q->OC) * kiln_dtype_size(q->t))};
}

uint64_t cg_conv_parts_bytes(const conv_parts *p) { return (uint64_t)(p->n - 1) * p->bytes; }

LLVMValueRef cg_conv_part_buffer(cg *c, const conv_parts *p, LLVMValueRef out, LLVMValueRef scratch, LLVMValueRef part) {
  LLVMValueRef first = LLVMBuildICmp(c->b, LLVMIntEQ, part, cg_i64(c, 0), "");
  LLVMValueRef other = byte_offset(c, scratch, mul(c, LLVMBuildSub(c->b, part, cg_i64(c, 1), ""), cg_i64(c, (int64_t)p->bytes)));
  return LLVMBuildSelect(c->b, first, out, other, "");
}

void cg_conv_add_parts(cg *c, const conv_geom *q, const conv_parts *p, LLVMValueRef out, LLVMValueRef scratch) {
  int64_t elems = q->Kc * q->OC;
  cg_loop lp, le;
  LLVMValueRef part = cg_loop_begin(c, &lp, cg_i64(c, 1), cg_i64(c, p->n), cg_i64(c, 1));
  LLVMValueRef src = cg_conv_part_buffer(c, p, out, scratch, part);
  LLVMValueRef e = cg_loop_begin(c, &le, cg_i64(c, 0), cg_i64(c, elems), cg_i64(c, 1));
  cg_store(c, q->t, cg_binary(c, KILN_OP_ADD, q->t, cg_load(c, q->t, out, e), cg_load(c, q->t, src, e)), out, e);
  cg_loop_end(c, &le);
  cg_loop_end(c, &lp);
}

/* Task i: part i, zeroed, then += each of its chunks in order, group by group. */
static LLVMValueRef fgrad_task(cg *c, const conv_geom *q, const fgrad_plan *p) {
  char name[48];
  snprintf(name, sizeof name, "kiln_conv%u_filter_grad_task", c->ntask_fns++);
  cg_fn_pos sp;
  LLVMValueRef v[CTX_FIELDS], part, worker;
  LLVMValueRef fn = cg_task_begin(c, name, CTX_FIELDS, CTX_WRITTEN, &sp, v, &part, &worker);
  LLVMValueRef col = worker_scratch(c, byte_offset(c, v[CTX_SCRATCH], cg_i64(c, (int64_t)cg_conv_parts_bytes(&p->parts))),
                                    worker, p->worker_bytes);
  LLVMValueRef ws = byte_offset(c, col, cg_i64(c, (int64_t)p->k.col_bytes));
  LLVMValueRef acc = cg_conv_part_buffer(c, &p->parts, v[CTX_OUT], v[CTX_SCRATCH], part);
  LLVMBuildMemSet(c->b, acc, LLVMConstInt(c->i8, 0, 0), cg_i64(c, q->Kc * q->OC * (int64_t)kiln_dtype_size(q->t)), 4);
  LLVMValueRef first, end = cg_task_range(c, part, p->per_part, p->k.nchunks, &first);
  int64_t ocg = q->OC / q->groups;
  cg_gemm whole = fgrad_gemm(q, p->k.rows), rest = fgrad_gemm(q, p->k.rest);
  cg_loop lc, lg;
  LLVMValueRef chunk = cg_loop_begin(c, &lc, first, end, cg_i64(c, 1));
  LLVMValueRef r0 = mul(c, chunk, cg_i64(c, p->k.rows)), count = chunk_rows(c, q, &p->k, r0);
  LLVMValueRef g = cg_loop_begin(c, &lg, cg_i64(c, 0), cg_i64(c, q->groups), cg_i64(c, 1));
  im2col_rows(c, q, v[CTX_X], col, g, r0, count);
  LLVMValueRef B = offset(c, q->t, v[CTX_Y], add(c, mul(c, r0, cg_i64(c, q->OC)), mul(c, g, cg_i64(c, ocg))));
  LLVMValueRef C = offset(c, q->t, acc, mul(c, g, cg_i64(c, ocg)));
  chunk_gemm(c, &p->k, chunk, &whole, &rest, col, B, C, ws);
  cg_loop_end(c, &lg);
  cg_loop_end(c, &lc);
  cg_task_end(c, &sp);
  return fn;
}

/* ---- conv2d_filter_grad of few pixels ---- */

/* One part's worth of pixels (batch 1 past the first stages: 49 or 196) sums in
 * one GEMM over the whole im2col panel, which the threads build together and
 * whose filter rows the GEMM splits between them: one part would leave the other
 * threads idle. The GEMM sums its K (the pixels) in slices fixed by the shapes, so
 * any thread count gives the same bits. */
static bool fgrad_wide_fits(const conv_geom *q) {
  return q->groups == 1 && cg_conv_fgrad_parts(q) == 1 &&
         (uint64_t)(q->pixels * q->col_ld) * kiln_dtype_size(q->t) <= WIDE_IM2COL_BYTES;
}

/* dw = col^T * dy */
static cg_gemm fgrad_wide_gemm(const conv_geom *q) {
  return (cg_gemm){.t = q->t, .batch = 1, .M = q->Kc, .N = q->OC, .K = q->pixels, .rsa = 1, .csa = q->col_ld,
                   .rsb = q->OC, .csb = 1, .ldc = q->OC, .packed = true};
}

static uint64_t fgrad_wide_scratch_bytes(cg *c, const conv_geom *q) {
  cg_gemm g = fgrad_wide_gemm(q);
  return wide_col_bytes(q) + cg_gemm_scratch_bytes(c, &g);
}

static void fgrad_wide(cg *c, const conv_geom *q, LLVMValueRef out, const LLVMValueRef *in, LLVMValueRef scratch) {
  int64_t tasks = cg_conv_worth_threads(c, q) ? c->threads : 1, per = ceil_div(q->pixels, tasks);
  im2col_panel(c, q, in[0], scratch, per, ceil_div(q->pixels, per), tasks > 1);
  cg_gemm g = fgrad_wide_gemm(q);
  cg_gemm_emit(c, &g, scratch, in[1], out, byte_offset(c, scratch, cg_i64(c, (int64_t)wide_col_bytes(q))));
}

void cg_conv2d_filter_grad(cg *c, const kiln_node *n, LLVMValueRef out, const LLVMValueRef *in, LLVMValueRef scratch) {
  conv_geom q = cg_conv_geometry(c, n);
  int64_t elems = kiln_shape_numel(4, n->dims);
  if (elems == 0) return;
  if (q.pixels == 0) { /* an empty batch: an empty sum */
    LLVMBuildMemSet(c->b, out, LLVMConstInt(c->i8, 0, 0), cg_i64(c, elems * (int64_t)kiln_dtype_size(q.t)), 4);
    return;
  }
  if (cg_conv_depthwise_fits(c, &q)) {
    cg_conv_depthwise_filter_grad(c, &q, out, in, scratch);
    return;
  }
  if (cg_conv_direct_fits(c, &q)) {
    cg_conv_direct_filter_grad(c, &q, out, in, scratch);
    return;
  }
  if (fgrad_wide_fits(&q)) {
    fgrad_wide(c, &q, out, in, scratch);
    return;
  }
  fgrad_plan p = plan_fgrad(c, &q);
  LLVMValueRef vals[CTX_FIELDS] = {in[0], in[1], out, scratch};
  cg_parallel_for(c, fgrad_task(c, &q, &p), cg_task_ctx(c, vals, CTX_FIELDS), p.parts.n, p.threaded);
  cg_conv_add_parts(c, &q, &p.parts, out, scratch);
}

uint64_t cg_conv_scratch_bytes(cg *c, const kiln_node *n) {
  conv_geom q = cg_conv_geometry(c, n);
  if (kiln_shape_numel(4, n->dims) == 0 || q.pixels == 0) return 0;
  bool fgrad = n->op == KILN_OP_CONV2D_FILTER_GRAD;
  if (cg_conv_depthwise_fits(c, &q)) return cg_conv_depthwise_scratch_bytes(c, &q, fgrad);
  if (cg_conv_direct_fits(c, &q)) return cg_conv_direct_scratch_bytes(c, &q, fgrad);
  if (fgrad && fgrad_wide_fits(&q)) return fgrad_wide_scratch_bytes(c, &q);
  if (fgrad) {
    fgrad_plan p = plan_fgrad(c, &q);
    return cg_conv_parts_bytes(&p.parts) + p.worker_bytes * (uint64_t)(p.threaded ? c->threads : 1);
  }
  if (q.pointwise) {
    cg_gemm g = fwd_gemm(&q, 0);
    return cg_gemm_scratch_bytes(c, &g);
  }
  if (wide_fits(c, &q, NULL)) return wide_scratch_bytes(c, &q);
  fwd_plan p = plan_fwd(c, &q, 0);
  return p.worker_bytes * (uint64_t)fwd_workers(c, &p);
}

bool cg_conv_prepack_layout(cg *c, const kiln_node *n, cg_prepack *p) {
  conv_geom q = cg_conv_geometry(c, n);
  q.b_prepacked = false;
  if (q.groups != 1 || kiln_shape_numel(4, n->dims) == 0 || cg_conv_depthwise_fits(c, &q) || cg_conv_direct_fits(c, &q))
    return false;
  /* every path's GEMMs read the filter with the same K, N and strides */
  cg_gemm g = q.pointwise ? fwd_gemm(&q, 0) : fwd_gemm(&q, max_fwd_chunk_rows(&q));
  return cg_gemm_prepack_layout(c, &g, p);
}

bool cg_conv_can_pool(cg *c, const kiln_node *n) {
  conv_geom q = cg_conv_geometry(c, n);
  return n->op == KILN_OP_CONV2D && !q.pointwise && !cg_conv_depthwise_fits(c, &q);
}

uint64_t cg_conv_pooled_scratch_bytes(cg *c, const kiln_node *n, int64_t align_pixels) {
  conv_geom q = cg_conv_geometry(c, n);
  if (kiln_shape_numel(4, n->dims) == 0) return 0;
  if (cg_conv_direct_fits(c, &q)) return cg_conv_direct_pooled_scratch_bytes(c, &q, align_pixels);
  fwd_plan p = plan_fwd(c, &q, align_pixels);
  return (p.worker_bytes + p.private_bytes) * (uint64_t)fwd_workers(c, &p);
}

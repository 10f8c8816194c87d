/* Kernels for matmul and pooling (convolutions: conv.c).
 *
 * Matmul maps onto gemm.c with strides for the transposes and the batch.
 * Pooling loops over output pixels with the channel loop innermost, so it
 * vectorizes over channels; a window inside the input keeps its taps in registers,
 * and runs of output rows are the tasks. */
#include <stdio.h>
#include "codegen/cg.h"

/* Pooling kernels smaller than this are not worth waking the other threads for. */
enum { POOL_THREADED_ELEMS = 1 << 16, POOL_TASKS_PER_THREAD = 4, POOL_REGISTER_TAPS = 64 };

static LLVMValueRef add(cg *c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildAdd(c->b, a, b, ""); }
static LLVMValueRef mul(cg *c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildMul(c->b, a, b, ""); }

static cg_gemm matmul_gemm(cg *c, const kiln_node *n) {
  const kiln_node *a = &c->g->nodes[n->inputs[0]];
  int r = n->rank;
  bool ta = kiln_attr_int(n, KILN_ATTR_TRANSPOSE_A, 0), tb = kiln_attr_int(n, KILN_ATTR_TRANSPOSE_B, 0);
  int64_t M = n->dims[r - 2], N = n->dims[r - 1], K = a->dims[ta ? r - 2 : r - 1];
  return (cg_gemm){.t = (kiln_dtype)n->dtype, .batch = kiln_shape_numel(r - 2, n->dims), .M = M, .N = N, .K = K,
                   .rsa = ta ? 1 : K, .csa = ta ? M : 1, .rsb = tb ? 1 : N, .csb = tb ? K : 1, .ldc = N,
                   .bsa = M * K, .bsb = K * N, .bsc = M * N};
}

uint64_t cg_scratch_bytes(cg *c, const kiln_node *n) {
  if (n->op == KILN_OP_MATMUL) {
    cg_gemm g = matmul_gemm(c, n);
    return cg_gemm_scratch_bytes(c, &g);
  }
  if (n->op == KILN_OP_CONV2D || n->op == KILN_OP_CONV2D_FILTER_GRAD) return cg_conv_scratch_bytes(c, n);
  return 0;
}

bool cg_prepack_layout_of(cg *c, const kiln_node *n, cg_prepack *p) {
  if (n->op == KILN_OP_CONV2D) return cg_conv_prepack_layout(c, n, p);
  if (n->op != KILN_OP_MATMUL) return false;
  cg_gemm g = matmul_gemm(c, n);
  return cg_gemm_prepack_layout(c, &g, p);
}

void cg_matmul(cg *c, const kiln_node *n, LLVMValueRef out, const LLVMValueRef *in, LLVMValueRef scratch,
               const cg_epilogue *ep) {
  cg_gemm g = matmul_gemm(c, n);
  g.epilogue = ep;
  g.b_prepacked = c->b_prepacked && c->b_prepacked[n - c->g->nodes];
  cg_gemm_emit(c, &g, in[0], in[1], out, scratch);
}

/* ---- pooling ---- */

typedef struct {
  const kiln_node *n;
  kiln_dtype t;
  LLVMValueRef x, out, image;
  int64_t H, W, C, k[2], s[2], p[4];
} pool_ctx;


/* out[obase + ch] for every channel ch: pool n's window whose first tap is at corner
 * in x (W pixels a row), its taps in registers and the channels as vectors. */
static void pool_window(cg *c, const kiln_node *n, int64_t W, LLVMValueRef x, LLVMValueRef corner, LLVMValueRef out,
                        LLVMValueRef obase) {
  kiln_dtype t = (kiln_dtype)n->dtype;
  bool is_max = n->op == KILN_OP_MAX_POOL2D;
  int64_t k[2], C = n->dims[3];
  kiln_attr_ints(n, KILN_ATTR_WINDOW, k);
  cg_loop lc;
  LLVMValueRef ch = cg_loop_begin(c, &lc, cg_i64(c, 0), cg_i64(c, C), cg_i64(c, 1));
  LLVMValueRef acc = cg_const(c, t, is_max ? -__builtin_inf() : 0.0);
  for (int64_t i = 0; i < k[0]; i++)
    for (int64_t j = 0; j < k[1]; j++) {
      LLVMValueRef v = cg_load(c, t, x, add(c, add(c, corner, cg_i64(c, (i * W + j) * C)), ch));
      acc = cg_binary(c, is_max ? KILN_OP_MAX : KILN_OP_ADD, t, acc, v);
    }
  if (!is_max) acc = LLVMBuildFDiv(c->b, acc, cg_const(c, t, (double)(k[0] * k[1])), "");
  cg_store(c, t, acc, out, add(c, obase, ch));
  cg_loop_end_vector(c, &lc);
}

static void pool_body(cg *c, const LLVMValueRef *ivs, void *vctx) {
  pool_ctx *q = vctx;
  bool is_max = q->n->op == KILN_OP_MAX_POOL2D;
  LLVMValueRef nb = q->image, oh = ivs[0], ow = ivs[1], one = cg_i64(c, 1), zero = cg_i64(c, 0);
  int64_t OH = q->n->dims[1], OW = q->n->dims[2];
  LLVMValueRef obase = mul(c, add(c, mul(c, add(c, mul(c, nb, cg_i64(c, OH)), oh), cg_i64(c, OW)), ow), cg_i64(c, q->C));
  /* The window clipped to the input: [h0, h1) x [w0, w1). */
  LLVMValueRef hs = LLVMBuildSub(c->b, mul(c, oh, cg_i64(c, q->s[0])), cg_i64(c, q->p[0]), "");
  LLVMValueRef ws = LLVMBuildSub(c->b, mul(c, ow, cg_i64(c, q->s[1])), cg_i64(c, q->p[1]), "");
  LLVMValueRef h0 = cg_smax(c, hs, zero), h1 = cg_smin(c, add(c, hs, cg_i64(c, q->k[0])), cg_i64(c, q->H));
  LLVMValueRef w0 = cg_smax(c, ws, zero), w1 = cg_smin(c, add(c, ws, cg_i64(c, q->k[1])), cg_i64(c, q->W));
  cg_loop l, lh, lw;
  LLVMBasicBlockRef join = NULL;
  if (q->k[0] * q->k[1] <= POOL_REGISTER_TAPS) {
    /* A window inside the input: its taps in registers, the channels as vectors, one
     * store; the same order of max/add as below, so the same bits. */
    LLVMValueRef inside = LLVMBuildAnd(c->b, LLVMBuildAnd(c->b, LLVMBuildICmp(c->b, LLVMIntEQ, h0, hs, ""),
                                                          LLVMBuildICmp(c->b, LLVMIntEQ, w0, ws, ""), ""),
                                       LLVMBuildAnd(c->b, LLVMBuildICmp(c->b, LLVMIntEQ, h1, add(c, hs, cg_i64(c, q->k[0])), ""),
                                                    LLVMBuildICmp(c->b, LLVMIntEQ, w1, add(c, ws, cg_i64(c, q->k[1])), ""), ""), "");
    LLVMBasicBlockRef fast = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "pool.inside"),
                      edge = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "pool.edge");
    join = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "pool.done");
    LLVMBuildCondBr(c->b, inside, fast, edge);
    LLVMPositionBuilderAtEnd(c->b, fast);
    pool_window(c, q->n, q->W, q->x, mul(c, add(c, mul(c, add(c, mul(c, nb, cg_i64(c, q->H)), hs), cg_i64(c, q->W)), ws), cg_i64(c, q->C)),
                q->out, obase);
    LLVMBuildBr(c->b, join);
    LLVMPositionBuilderAtEnd(c->b, edge);
  }
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
  if (join) {
    LLVMBuildBr(c->b, join);
    LLVMPositionBuilderAtEnd(c->b, join);
  }
}

void cg_pool2d(cg *c, const kiln_node *n, LLVMValueRef out, const LLVMValueRef *in) {
  const kiln_node *x = &c->g->nodes[n->inputs[0]];
  pool_ctx q = {.n = n, .t = (kiln_dtype)n->dtype, .H = x->dims[1], .W = x->dims[2], .C = x->dims[3]};
  kiln_attr_ints(n, KILN_ATTR_WINDOW, q.k);
  kiln_attr_ints(n, KILN_ATTR_STRIDES, q.s);
  kiln_attr_ints(n, KILN_ATTR_PADS, q.p);
  if (kiln_shape_numel(4, n->dims) == 0) return;
  /* runs of output rows are the tasks: one image (batch-1 inference) keeps every thread busy */
  bool threaded = c->threads > 1 && kiln_shape_numel(4, x->dims) >= POOL_THREADED_ELEMS;
  int64_t rows = n->dims[0] * n->dims[1], tasks = threaded ? (int64_t)c->threads * POOL_TASKS_PER_THREAD : 1;
  if (tasks > rows) tasks = rows;
  int64_t per = (rows + tasks - 1) / tasks;
  cg_fn_pos sp;
  char name[48];
  snprintf(name, sizeof name, "kiln_pool%u_task", c->ntask_fns++);
  LLVMValueRef v[2], task, worker;
  LLVMValueRef fn = cg_task_begin(c, name, 2, 1 << 1, &sp, v, &task, &worker);
  q.x = v[0], q.out = v[1];
  cg_loop lr, lw;
  LLVMValueRef lo, hi = cg_task_range(c, task, per, rows, &lo);
  LLVMValueRef r = cg_loop_begin(c, &lr, lo, hi, cg_i64(c, 1));
  q.image = LLVMBuildSDiv(c->b, r, cg_i64(c, n->dims[1]), "");
  LLVMValueRef oh = LLVMBuildSRem(c->b, r, cg_i64(c, n->dims[1]), "");
  LLVMValueRef ow = cg_loop_begin(c, &lw, cg_i64(c, 0), cg_i64(c, n->dims[2]), cg_i64(c, 1));
  pool_body(c, (LLVMValueRef[]){oh, ow}, &q);
  cg_loop_end_scalar(c, &lw);
  cg_loop_end_scalar(c, &lr);
  cg_task_end(c, &sp);
  cg_parallel_for(c, fn, cg_task_ctx(c, (LLVMValueRef[]){in[0], out}, 2), (rows + per - 1) / per, threaded);
}

/* The window's taps in registers, the channel loop vectorized: every output pixel
 * reads its window once, row-major, in the order pool_body adds it (same bits). */
void cg_pool2d_rows(cg *c, const kiln_node *n, LLVMValueRef x, LLVMValueRef out, LLVMValueRef lo, LLVMValueRef hi) {
  int64_t k[2], W = c->g->nodes[n->inputs[0]].dims[2], C = n->dims[3], OW = n->dims[2];
  kiln_attr_ints(n, KILN_ATTR_WINDOW, k);
  LLVMValueRef group = cg_i64(c, k[0] * W * C), one = cg_i64(c, 1);
  cg_loop lg, lw;
  LLVMValueRef g = cg_loop_begin(c, &lg, LLVMBuildSDiv(c->b, lo, group, ""), LLVMBuildSDiv(c->b, hi, group, ""), one);
  LLVMValueRef ow = cg_loop_begin(c, &lw, cg_i64(c, 0), cg_i64(c, OW), one);
  LLVMValueRef corner = add(c, mul(c, g, group), mul(c, ow, cg_i64(c, k[1] * C)));
  pool_window(c, n, W, x, corner, out, mul(c, add(c, mul(c, g, cg_i64(c, OW)), ow), cg_i64(c, C)));
  cg_loop_end(c, &lw);
  cg_loop_end(c, &lg);
}

/* ---- max_pool2d_grad ---- */

/* dx = 0, then per window in order (overlapping windows add up the same way every
 * time), per channel: the window's maximum m over its taps (padding taps are
 * -inf), and dy added to the first tap equal to m. Interior windows read every
 * tap unguarded, so the channel loop vectorizes; border windows guard each tap.
 * Images are independent tasks. */
typedef struct {
  kiln_dtype t;
  LLVMValueRef x, dy, dx, image;
  int64_t H, W, C, OH, OW, k[2], s[2], p[4];
} pool_grad_ctx;

enum { POOL_GRAD_MAX_TAPS = 64 };

static void pool_grad_window(cg *c, const pool_grad_ctx *q, LLVMValueRef oh, LLVMValueRef ow, bool interior) {
  int64_t taps = q->k[0] * q->k[1];
  LLVMValueRef valid[POOL_GRAD_MAX_TAPS], at[POOL_GRAD_MAX_TAPS];
  LLVMValueRef img = mul(c, q->image, cg_i64(c, q->H * q->W * q->C));
  for (int64_t t = 0; t < taps; t++) {
    LLVMValueRef ih = LLVMBuildSub(c->b, add(c, mul(c, oh, cg_i64(c, q->s[0])), cg_i64(c, t / q->k[1])), cg_i64(c, q->p[0]), "");
    LLVMValueRef iw = LLVMBuildSub(c->b, add(c, mul(c, ow, cg_i64(c, q->s[1])), cg_i64(c, t % q->k[1])), cg_i64(c, q->p[1]), "");
    at[t] = add(c, img, mul(c, add(c, mul(c, ih, cg_i64(c, q->W)), iw), cg_i64(c, q->C)));
    valid[t] = NULL;
    if (!interior) {
      valid[t] = LLVMBuildAnd(c->b, LLVMBuildICmp(c->b, LLVMIntULT, ih, cg_i64(c, q->H), ""),
                              LLVMBuildICmp(c->b, LLVMIntULT, iw, cg_i64(c, q->W), ""), "");
      at[t] = LLVMBuildSelect(c->b, valid[t], at[t], img, ""); /* a padding tap reads its image's first pixel */
    }
  }
  LLVMValueRef drow = mul(c, add(c, mul(c, add(c, mul(c, q->image, cg_i64(c, q->OH)), oh), cg_i64(c, q->OW)), ow), cg_i64(c, q->C));
  cg_loop lc;
  LLVMValueRef ch = cg_loop_begin(c, &lc, cg_i64(c, 0), cg_i64(c, q->C), cg_i64(c, 1));
  LLVMValueRef v[POOL_GRAD_MAX_TAPS], m = cg_const(c, q->t, -__builtin_inf());
  for (int64_t t = 0; t < taps; t++) {
    v[t] = cg_load(c, q->t, q->x, add(c, at[t], ch));
    if (valid[t]) v[t] = LLVMBuildSelect(c->b, valid[t], v[t], cg_const(c, q->t, -__builtin_inf()), "");
    m = cg_binary(c, KILN_OP_MAX, q->t, m, v[t]);
  }
  LLVMValueRef g = cg_load(c, q->t, q->dy, add(c, drow, ch)), zero = cg_const(c, q->t, 0);
  LLVMValueRef taken = LLVMConstInt(c->i1, 0, 0);
  for (int64_t t = 0; t < taps; t++) {
    LLVMValueRef hit = LLVMBuildAnd(c->b, LLVMBuildFCmp(c->b, LLVMRealOEQ, v[t], m, ""), LLVMBuildNot(c->b, taken, ""), "");
    taken = LLVMBuildOr(c->b, taken, hit, "");
    if (valid[t]) hit = LLVMBuildAnd(c->b, hit, valid[t], "");
    LLVMValueRef i = add(c, at[t], ch);
    cg_store(c, q->t, LLVMBuildFAdd(c->b, cg_load(c, q->t, q->dx, i), LLVMBuildSelect(c->b, hit, g, zero, ""), ""), q->dx, i);
  }
  cg_loop_end(c, &lc);
}

/* Windows [lo, hi) along one axis lie inside the input: o*s - p >= 0 and o*s - p + k <= size. */
static void interior_range(int64_t size, int64_t outs, int64_t k, int64_t s, int64_t p, int64_t *lo, int64_t *hi) {
  *lo = (p + s - 1) / s;
  *hi = size - k + p >= 0 ? (size - k + p) / s + 1 : 0;
  if (*hi > outs) *hi = outs;
  if (*lo > *hi) *lo = *hi;
}

static void pool_grad_image(cg *c, const pool_grad_ctx *q) {
  int64_t hlo, hhi, wlo, whi;
  interior_range(q->H, q->OH, q->k[0], q->s[0], q->p[0], &hlo, &hhi);
  interior_range(q->W, q->OW, q->k[1], q->s[1], q->p[1], &wlo, &whi);
  int64_t size = (int64_t)kiln_dtype_size(q->t) * q->H * q->W * q->C;
  LLVMValueRef first = cg_gep(c, c->i8, q->dx, mul(c, q->image, cg_i64(c, size)));
  LLVMBuildMemSet(c->b, first, LLVMConstInt(c->i8, 0, 0), cg_i64(c, size), 4);
  cg_loop lh, lw;
  LLVMValueRef oh = cg_loop_begin(c, &lh, cg_i64(c, 0), cg_i64(c, q->OH), cg_i64(c, 1));
  LLVMValueRef ow = cg_loop_begin(c, &lw, cg_i64(c, 0), cg_i64(c, q->OW), cg_i64(c, 1));
  LLVMValueRef in_h = LLVMBuildAnd(c->b, LLVMBuildICmp(c->b, LLVMIntSGE, oh, cg_i64(c, hlo), ""),
                                   LLVMBuildICmp(c->b, LLVMIntSLT, oh, cg_i64(c, hhi), ""), "");
  LLVMValueRef in_w = LLVMBuildAnd(c->b, LLVMBuildICmp(c->b, LLVMIntSGE, ow, cg_i64(c, wlo), ""),
                                   LLVMBuildICmp(c->b, LLVMIntSLT, ow, cg_i64(c, whi), ""), "");
  LLVMBasicBlockRef inside = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "interior"),
                    border = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "border"),
                    join = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "window.done");
  LLVMBuildCondBr(c->b, LLVMBuildAnd(c->b, in_h, in_w, ""), inside, border);
  LLVMPositionBuilderAtEnd(c->b, inside);
  pool_grad_window(c, q, oh, ow, true);
  LLVMBuildBr(c->b, join);
  LLVMPositionBuilderAtEnd(c->b, border);
  pool_grad_window(c, q, oh, ow, false);
  LLVMBuildBr(c->b, join);
  LLVMPositionBuilderAtEnd(c->b, join);
  cg_loop_end(c, &lw);
  cg_loop_end(c, &lh);
}

bool cg_max_pool2d_grad(cg *c, const kiln_node *n, LLVMValueRef out, const LLVMValueRef *in, const cg_epilogue *ep) {
  const kiln_node *dy = &c->g->nodes[n->inputs[1]];
  pool_grad_ctx q = {.t = (kiln_dtype)n->dtype, .H = n->dims[1], .W = n->dims[2], .C = n->dims[3], .OH = dy->dims[1],
                     .OW = dy->dims[2]};
  kiln_attr_ints(n, KILN_ATTR_WINDOW, q.k);
  kiln_attr_ints(n, KILN_ATTR_STRIDES, q.s);
  kiln_attr_ints(n, KILN_ATTR_PADS, q.p);
  if (q.k[0] * q.k[1] > POOL_GRAD_MAX_TAPS) {
    snprintf(c->err, sizeof c->err, "codegen: max_pool2d_grad supports windows of at most %d taps, got %lldx%lld",
             POOL_GRAD_MAX_TAPS, (long long)q.k[0], (long long)q.k[1]);
    return false;
  }
  if (kiln_shape_numel(4, n->dims) == 0) return true;
  bool threaded = c->threads > 1 && kiln_shape_numel(4, n->dims) >= POOL_THREADED_ELEMS;
  cg_fn_pos sp;
  char name[48];
  snprintf(name, sizeof name, "kiln_pool%u_grad_task", c->ntask_fns++);
  LLVMValueRef v[CG_TASK_CTX_MAX] = {in[0], in[1], out}, image, worker;
  unsigned nctx = cg_epilogue_ctx(ep, v, 3);
  LLVMValueRef ctx = cg_task_ctx(c, v, nctx);
  LLVMValueRef fn = cg_task_begin(c, name, nctx, 1 << 2, &sp, v, &image, &worker);
  q.x = v[0], q.dy = v[1], q.dx = v[2], q.image = image;
  pool_grad_image(c, &q);
  if (ep) { /* the image's gradient is final */
    cg_epilogue in_task = cg_epilogue_in_task(ep, v + 3);
    LLVMValueRef lo = mul(c, image, cg_i64(c, q.H * q.W * q.C));
    in_task.apply(c, &in_task, q.dx, lo, add(c, lo, cg_i64(c, q.H * q.W * q.C)));
  }
  cg_task_end(c, &sp);
  cg_parallel_for(c, fn, ctx, n->dims[0], threaded);
  return true;
}

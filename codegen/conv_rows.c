/* Convolutions without im2col, a GEMM per output row and filter row.
 *
 * With the input copied inside its padding (NHWC, Hp x Wp pixels per image), the
 * im2col rows of output row (n, oh) for filter row kh are the padded input itself:
 * output pixel ow reads the KW*C contiguous elements from pixel (n, oh*s0 + kh*d0,
 * ow*s1), so its rows are s1*C elements apart, overlapping when s1 < KW. The row's
 * output is then the sum over kh of OW x OC GEMMs that read A in place and B from
 * the filter's kh rows: no panel to write and read back, which was a tenth of a
 * 56x56x64 layer's time (perf, Zen 5) and most of the first layer's.
 *
 * The filter is prepacked with its K slices at filter rows' boundaries
 * (cg_conv_kstep), so each kh's rows are a prepacked B of their own; every other
 * GEMM of the convolution slices K the same way, so the sums run in the same order
 * on every path and any thread count. Tasks are runs of output rows; each row's
 * epilogue runs while the row is still in cache. */
#include <stdio.h>
#include "codegen/conv.h"

/* Narrower rows would leave most of a register tile's rows empty (OW = 14 fills
 * 14 of 24 rows of two 12-row tiles); those layers keep im2col. So do filters whose
 * rows read 256 bytes or more of the input: im2col copies them in whole-row runs,
 * and its GEMM over 227 pixels at a time beat a GEMM per 56-pixel row (ResNet's
 * 56x56x64 and 28x28x128 layers, 5-10 % on Zen 5), while ResNet's first layer (7
 * taps of 3 channels, 84 bytes) took 6 % less time this way on one thread and 20 %
 * less on two. */
enum { ROWS_MIN_WIDTH = 24, ROWS_MAX_ROW_BYTES = 256, ROWS_TASKS_PER_THREAD = 4 };
enum { CTX_X, CTX_W, CTX_OUT, CTX_SCRATCH, CTX_FIELDS };

static LLVMValueRef add(cg *c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildAdd(c->b, a, b, ""); }
static LLVMValueRef mul(cg *c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildMul(c->b, a, b, ""); }
static LLVMValueRef imm(cg *c, int64_t v) { return cg_i64(c, v); }
static uint64_t align64(uint64_t x) { return (x + 63) & ~(uint64_t)63; }
static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool cg_conv_rows_fits(const conv_geom *q) {
  if (q->pointwise || q->groups != 1 || q->d[1] != 1 || q->up[0] || (q->t != KILN_F32 && q->t != KILN_F64) ||
      q->OC < 2 || q->OW < ROWS_MIN_WIDTH)
    return false;
  int64_t row_k = q->KW * q->C;
  return row_k * (int64_t)kiln_dtype_size(q->t) < ROWS_MAX_ROW_BYTES && row_k % cg_gemm_default_kstep(row_k) == 0;
}

int64_t cg_conv_kstep(const conv_geom *q) { return cg_conv_rows_fits(q) ? cg_gemm_default_kstep(q->KW * q->C) : 0; }

/* Output row (n, oh) for filter row kh: C[OW x OC] (+)= A (the padded input, rows s1*C apart) * w[kh rows]. */
static cg_gemm row_gemm(const conv_geom *q, bool accumulate) {
  return (cg_gemm){.t = q->t, .batch = 1, .M = q->OW, .N = q->OC, .K = q->KW * q->C, .rsa = q->s[1] * q->C, .csa = 1,
                   .rsb = q->OC, .csb = 1, .ldc = q->OC, .serial = true, .packed = true, .accumulate = accumulate,
                   .b_prepacked = true, .kstep = cg_conv_kstep(q)};
}

typedef struct {
  int64_t rows, per, ntasks;
  bool threaded;
  uint64_t padded_bytes, worker_bytes;
} rows_plan;

static rows_plan plan_rows(cg *c, const conv_geom *q) {
  rows_plan p = {.rows = q->N * q->OH, .threaded = cg_conv_worth_threads(c, q), .padded_bytes = cg_conv_padded_bytes(q)};
  cg_gemm g = row_gemm(q, true);
  p.worker_bytes = align64(cg_gemm_scratch_bytes(c, &g));
  int64_t tasks = p.threaded ? (int64_t)c->threads * ROWS_TASKS_PER_THREAD : 1;
  p.per = ceil_div(p.rows, tasks < p.rows ? tasks : p.rows);
  p.ntasks = ceil_div(p.rows, p.per);
  return p;
}

uint64_t cg_conv_rows_scratch_bytes(cg *c, const conv_geom *q) {
  rows_plan p = plan_rows(c, q);
  return p.padded_bytes + p.worker_bytes * (uint64_t)(p.threaded ? c->threads : 1);
}

/* Task i: output rows [i*per, (i+1)*per), each the sum of its KH GEMMs, then its epilogue. */
static LLVMValueRef rows_task(cg *c, const conv_geom *q, const rows_plan *p, const cg_epilogue *ep) {
  char name[48];
  snprintf(name, sizeof name, "kiln_conv%u_rows_task", c->ntask_fns++);
  cg_fn_pos sp;
  LLVMValueRef v[CG_TASK_CTX_MAX], task, worker;
  unsigned nctx = CTX_FIELDS + (ep ? ep->nptrs : 0);
  LLVMValueRef fn = cg_task_begin(c, name, nctx, 1 << CTX_OUT | 1 << CTX_SCRATCH, &sp, v, &task, &worker);
  LLVMValueRef x = p->padded_bytes ? v[CTX_SCRATCH] : v[CTX_X];
  LLVMValueRef bytes = mul(c, LLVMBuildSExt(c->b, worker, c->i64, ""), imm(c, (int64_t)p->worker_bytes));
  bytes = add(c, bytes, imm(c, (int64_t)p->padded_bytes));
  LLVMValueRef ws = LLVMBuildGEP2(c->b, c->i8, v[CTX_SCRATCH], &bytes, 1, "");
  cg_gemm first = row_gemm(q, false), rest = row_gemm(q, true);
  cg_prepack layout;
  bool packed = cg_gemm_prepack_layout(c, &rest, &layout);
  KILN_ASSERT(packed && "a row GEMM is packed");
  int64_t hp = cg_conv_padded_h(q), wp = cg_conv_padded_w(q), row_k = q->KW * q->C;
  int64_t w_step = row_k * ceil_div(q->OC, layout.nr) * layout.nr, out_row = q->OW * q->OC;
  cg_epilogue in_task = {0};
  if (ep) in_task = cg_epilogue_in_task(ep, v + CTX_FIELDS);
  cg_loop lr, lk;
  LLVMValueRef r0, r1 = cg_task_range(c, task, p->per, p->rows, &r0);
  LLVMValueRef r = cg_loop_begin(c, &lr, r0, r1, imm(c, 1));
  LLVMValueRef n = LLVMBuildSDiv(c->b, r, imm(c, q->OH), ""), oh = LLVMBuildSRem(c->b, r, imm(c, q->OH), "");
  LLVMValueRef top = add(c, mul(c, n, imm(c, hp)), mul(c, oh, imm(c, q->s[0])));
  LLVMValueRef a0 = mul(c, top, imm(c, wp * q->C)), out = cg_gep(c, cg_type(c, q->t), v[CTX_OUT], mul(c, r, imm(c, out_row)));
  cg_gemm_emit(c, &first, cg_gep(c, cg_type(c, q->t), x, a0), v[CTX_W], out, ws);
  if (q->KH > 1) {
    LLVMValueRef kh = cg_loop_begin(c, &lk, imm(c, 1), imm(c, q->KH), imm(c, 1));
    LLVMValueRef a = add(c, a0, mul(c, kh, imm(c, q->d[0] * wp * q->C)));
    LLVMValueRef b = cg_gep(c, cg_type(c, q->t), v[CTX_W], mul(c, kh, imm(c, w_step)));
    cg_gemm_emit(c, &rest, cg_gep(c, cg_type(c, q->t), x, a), b, out, ws);
    cg_loop_end_scalar(c, &lk);
  }
  if (ep) { /* the row is final, and still cached */
    LLVMValueRef lo = mul(c, r, imm(c, out_row));
    in_task.apply(c, &in_task, v[CTX_OUT], lo, add(c, lo, imm(c, out_row)));
  }
  cg_loop_end_scalar(c, &lr);
  cg_task_end(c, &sp);
  return fn;
}

void cg_conv_rows(cg *c, const conv_geom *q, LLVMValueRef out, const LLVMValueRef *in, LLVMValueRef scratch,
                  const cg_epilogue *ep) {
  KILN_ASSERT(q->b_prepacked && cg_conv_rows_fits(q) && !(ep && (ep->private_out || ep->align_pixels > 0)));
  rows_plan p = plan_rows(c, q);
  if (p.padded_bytes) cg_conv_pad_input(c, q, in[0], scratch, p.threaded);
  LLVMValueRef vals[CG_TASK_CTX_MAX] = {in[0], in[1], out, scratch};
  unsigned nctx = cg_epilogue_ctx(ep, vals, CTX_FIELDS);
  cg_parallel_for(c, rows_task(c, q, &p, ep), cg_task_ctx(c, vals, nctx), p.ntasks, p.threaded);
}

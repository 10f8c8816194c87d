/* GEMM code generation: C[b] = A[b] * B[b] for every batch entry b, shapes static.
 *
 * The work is cut into tasks, each a block of C rows x columns of one batch entry,
 * run serially or through kiln_parallel (runtime/thread_pool.h). Every element's
 * sum over K runs in the same order whatever the cut, so any thread count gives
 * identical bits. One task function per dtype and module does either:
 *
 * - packed (the general case, Goto/BLIS style): for each KC slice of K, the task
 *   packs its B block into NR-column panels (k-major, zero padded: L2 resident),
 *   then per MR-row strip packs A into an MR-row panel (L1 resident) and runs the
 *   register-blocked micro-kernel over the B panels: MR rows x NV host vectors of
 *   accumulators, one broadcast of A and NV aligned vector loads of B per k, all
 *   FMAs. Edge tiles compute on the zero padding and store only what is in C.
 *   Packing makes every transpose the same speed inside the micro-kernel.
 * - direct (a few rows, B rows contiguous: MLP inference at small batch): no
 *   packing, whose cost would match the arithmetic; DR x NV tiles read B in place.
 * - dot (one column, A rows and B's column contiguous: a Dense(1) layer, the input
 *   gradient of a one-channel convolution): each element is a dot product
 *   vectorized over K, DOT_ROWS rows sharing each load of B; a 16-column
 *   register tile would compute 15 columns of padding.
 *
 * Packing buffers are per worker, in the kernel's scratch: `threads` copies. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "codegen/cg.h"

enum { NV = 2, DR = 6, KC = 256, NC_BYTES = 1024 * 1024, CTX_FIELDS = 4, DOT_ROWS = 4 };
/* A single row of C (batch-1 inference) takes tiles this many vectors wide, so each
 * k streams a long contiguous run of B's row instead of hopping between rows. */
enum { ROW_NV = 8, TILE_NV = ROW_NV };

/* What a task reads from its context; everything else is a constant of the call site. */
enum { F_A, F_B, F_C, F_WS };

typedef struct {
  bool direct, dot;
  int64_t mc, nc, mt, nt, ntasks;
  uint64_t worker_bytes;
} gemm_plan;

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
static int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }
static int64_t vec_w(cg *c, kiln_dtype t) { return c->vec_bytes / (int64_t)kiln_dtype_size(t); }
static int64_t mr_of(cg *c) { return c->vec_bytes >= 64 ? 12 : 6; }
/* A ragged last strip of at most MR - SR rows runs in SR-row sub-strips: a batch of
 * 32 rows is 12 + 12 + 8, whose last strip would otherwise pay for 12. SR keeps 6 or
 * more independent FMA chains with NV vectors per row. */
static int64_t sr_of(cg *c) { return c->vec_bytes >= 64 ? 4 : 3; }
static int64_t nr_of(cg *c, kiln_dtype t) { return NV * vec_w(c, t); }

/* With A's rows in the caches of the threads that wrote them (a_rows_by_thread),
 * cutting C by columns has every thread read the others' rows of A from their
 * caches, which costs several times a byte of B streamed from memory: a cut by rows
 * (every thread streams all of B) measured 15-20 % faster on Zen 5 for convolutions
 * with B up to 5 times A (N <= 5 M), equal at 5-6 times, and 25 % slower at 10. */
enum { A_IN_PLACE_WORTH = 5 };

/* A small GEMM stays on the calling thread (CG_THREADED_FLOPS). Large weights are
 * worth splitting even for one row: batch-1 inference is memory-bound, and two cores
 * stream faster. */
#define THREADED_B_BYTES (256 << 10)
static int threads_of(const cg *c, const cg_gemm *g) {
  if (c->threads < 2 || g->serial) return 1;
  double b_bytes = (double)g->batch * (double)g->K * (double)g->N * (double)kiln_dtype_size(g->t);
  bool worth = 2.0 * (double)g->batch * (double)g->M * (double)g->N * (double)g->K >= CG_THREADED_FLOPS || b_bytes >= THREADED_B_BYTES;
  return worth ? c->threads : 1;
}

/* Rows split between the threads when the batch does not occupy them. */
static gemm_plan plan_dot(cg *c, const cg_gemm *g) {
  gemm_plan p = {.dot = true, .mc = g->M, .nc = 1, .nt = 1};
  int threads = threads_of(c, g);
  if (g->batch < threads) p.mc = round_up(ceil_div(g->M, ceil_div(threads, g->batch)), DOT_ROWS);
  p.mt = ceil_div(g->M, p.mc);
  p.ntasks = g->batch * p.mt;
  if (getenv("KILN_GEMM_DEBUG"))
    fprintf(stderr, "gemm %lldx1x%lld batch %lld: dot mc %lld\n", (long long)g->M, (long long)g->K, (long long)g->batch,
            (long long)p.mc);
  return p;
}

/* How many tasks and of what size: whole rows and columns per task unless the
 * threads need more tasks; then the cut (rows or columns) that leaves the busiest
 * thread the fewest register tiles. */
static gemm_plan plan_gemm(cg *c, const cg_gemm *g) {
  if (g->N == 1 && g->csa == 1 && g->rsb == 1 && !g->accumulate && !g->b_prepacked) return plan_dot(c, g);
  gemm_plan p = {0};
  int64_t es = (int64_t)kiln_dtype_size(g->t), MR = mr_of(c), NR = nr_of(c, g->t);
  p.direct = g->M < 2 * DR && g->csb == 1 && !g->packed && !g->accumulate && !g->b_prepacked;
  int64_t mstep = p.direct ? g->M : MR;
  int64_t nc_max = p.direct ? round_up(g->N, NR) : (NC_BYTES / (KC * es)) / NR * NR;
  p.mc = p.direct ? g->M : round_up(g->M, MR);
  int threads = threads_of(c, g);
  /* Column blocks of equal width, as many as the threads share evenly: 1280 columns
   * (MobileNetV2's last 1x1 conv) were a 1024- and a 256-column task, and one of two
   * threads did four fifths of the work. */
  int64_t ncols = round_up(g->N, NR), nblocks = ceil_div(ncols, nc_max);
  if (nblocks > 1 && g->batch == 1) nblocks = round_up(nblocks, threads);
  p.nc = round_up(ceil_div(ncols, nblocks), NR);
  int64_t base = g->batch * ceil_div(g->N, p.nc);
  if (base < threads) {
    /* cost = register tiles in the busiest thread; rows win ties (each A strip
     * then meets the whole B block) */
    int64_t want = ceil_div(threads, base), best = INT64_MAX, mc0 = p.mc, nc0 = p.nc;
    bool rows_only = !p.direct && g->a_rows_by_thread && g->N <= A_IN_PLACE_WORTH * g->M;
    for (int by_cols = p.direct ? 1 : 0; by_cols < 2 - rows_only; by_cols++) {
      int64_t extent = by_cols ? nc0 : g->M, step = by_cols ? NR : mstep;
      int64_t size = round_up(ceil_div(extent, want), step);
      int64_t tiles = by_cols ? ceil_div(mc0, MR) * (size / NR) : (size / MR) * ceil_div(nc0, NR);
      int64_t span = ceil_div(base * ceil_div(extent, size), threads) * tiles;
      if (span < best) {
        best = span;
        p.mc = by_cols ? mc0 : size;
        p.nc = by_cols ? size : nc0;
      }
    }
  }
  p.mt = ceil_div(g->M, p.mc);
  if (getenv("KILN_GEMM_DEBUG"))
    fprintf(stderr, "gemm %lldx%lldx%lld batch %lld: %s mc %lld nc %lld\n", (long long)g->M, (long long)g->N,
            (long long)g->K, (long long)g->batch, p.direct ? "direct" : "packed", (long long)p.mc, (long long)p.nc);
  p.nt = ceil_div(g->N, p.nc);
  p.ntasks = g->batch * p.mt * p.nt;
  p.worker_bytes = p.direct ? 0 : (uint64_t)((KC * MR + KC * round_up(p.nc, NR)) * es);
  return p;
}

int64_t cg_gemm_thread_rows(cg *c, const cg_gemm *g) {
  gemm_plan p = plan_gemm(c, g);
  return p.mt > 1 ? p.mc : ceil_div(g->M, c->threads);
}

/* K in equal slices of at most KC: no short last slice paying a full pass over C */
static int64_t kstep_of(const cg_gemm *g) { return ceil_div(g->K, ceil_div(g->K, KC)); }

bool cg_gemm_prepack_layout(cg *c, const cg_gemm *g, cg_prepack *p) {
  if (g->batch != 1 || g->M == 0 || g->N == 0 || g->K == 0) return false;
  gemm_plan plan = plan_gemm(c, g);
  *p = (cg_prepack){.t = g->t, .K = g->K, .N = g->N, .rsb = g->rsb, .csb = g->csb, .kstep = kstep_of(g), .nr = nr_of(c, g->t)};
  return !plan.direct && !plan.dot;
}

uint64_t cg_prepack_bytes(const cg_prepack *p) {
  return (uint64_t)(p->K * round_up(p->N, p->nr)) * kiln_dtype_size(p->t);
}

void cg_prepack_run(const cg_prepack *p, const void *B, void *out) {
  size_t es = kiln_dtype_size(p->t);
  int64_t npad = round_up(p->N, p->nr);
  const char *b = B;
  char *o = out;
  if (npad != p->N) memset(out, 0, cg_prepack_bytes(p)); /* the last panel's padding columns */
  for (int64_t pc = 0; pc < p->K; pc += p->kstep) {
    int64_t kc = p->K - pc < p->kstep ? p->K - pc : p->kstep;
    for (int64_t k = 0; k < kc; k++)
      for (int64_t j0 = 0; j0 < p->N; j0 += p->nr) {
        int64_t dst = pc * npad + j0 * kc + k * p->nr, cols = p->N - j0 < p->nr ? p->N - j0 : p->nr;
        const char *src = b + (size_t)((pc + k) * p->rsb + j0 * p->csb) * es;
        if (p->csb == 1) { /* a row of B: the panel's row in one copy */
          memcpy(o + (size_t)dst * es, src, (size_t)cols * es);
          continue;
        }
        for (int64_t j = 0; j < cols; j++) memcpy(o + (size_t)(dst + j) * es, src + (size_t)(j * p->csb) * es, es);
      }
  }
}

typedef struct {
  const cg_prepack_job *jobs;
  size_t n, *next;
} prepack_crew;

static void *prepack_worker(void *arg) {
  prepack_crew *w = arg;
  for (size_t j; (j = __atomic_fetch_add(w->next, 1, __ATOMIC_RELAXED)) < w->n;)
    cg_prepack_run(w->jobs[j].layout, w->jobs[j].B, w->jobs[j].out);
  return NULL;
}

void cg_prepack_run_all(const cg_prepack_job *jobs, size_t n, int threads) {
  size_t next = 0;
  prepack_crew w = {jobs, n, &next};
  cg_run_workers((size_t)threads < n ? threads : (int)n, prepack_worker, &w, 0); /* all share one crew */
}

uint64_t cg_gemm_scratch_bytes(cg *c, const cg_gemm *g) {
  if (g->M == 0 || g->N == 0 || g->K == 0 || g->batch == 0) return 0;
  gemm_plan p = plan_gemm(c, g);
  return p.worker_bytes * (uint64_t)threads_of(c, g);
}

/* ---- IR helpers ---- */

static LLVMValueRef add(cg *c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildAdd(c->b, a, b, ""); }
static LLVMValueRef sub(cg *c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildSub(c->b, a, b, ""); }
static LLVMValueRef mul(cg *c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildMul(c->b, a, b, ""); }
static LLVMValueRef imm(cg *c, int64_t v) { return cg_i64(c, v); }
static LLVMValueRef at(cg *c, kiln_dtype t, LLVMValueRef base, LLVMValueRef idx) { return cg_gep(c, cg_type(c, t), base, idx); }

static LLVMValueRef vload(cg *c, LLVMTypeRef vt, kiln_dtype t, LLVMValueRef base, LLVMValueRef idx, unsigned align) {
  LLVMValueRef l = LLVMBuildLoad2(c->b, vt, at(c, t, base, idx), "");
  LLVMSetAlignment(l, align);
  return l;
}
static void vstore(cg *c, kiln_dtype t, LLVMValueRef v, LLVMValueRef base, LLVMValueRef idx) {
  LLVMSetAlignment(LLVMBuildStore(c->b, v, at(c, t, base, idx)), (unsigned)kiln_dtype_size(t));
}

/* acc + a * b, fused for floats. */
static LLVMValueRef madd(cg *c, kiln_dtype t, LLVMValueRef a, LLVMValueRef b, LLVMValueRef acc) {
  if (kiln_dtype_is_float(t)) {
    LLVMValueRef args[3] = {a, b, acc};
    return cg_call_intrinsic(c, "llvm.fma", LLVMTypeOf(acc), args, 3);
  }
  return add(c, mul(c, a, b), acc);
}
static LLVMValueRef plus(cg *c, kiln_dtype t, LLVMValueRef a, LLVMValueRef b) {
  return kiln_dtype_is_float(t) ? LLVMBuildFAdd(c->b, a, b, "") : add(c, a, b);
}

/* if (cond) { then() } at the builder's position. */
typedef struct {
  LLVMBasicBlockRef then, join;
} cg_if;
static void if_begin(cg *c, cg_if *f, LLVMValueRef cond) {
  f->then = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "then");
  f->join = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "join");
  LLVMBuildCondBr(c->b, cond, f->then, f->join);
  LLVMPositionBuilderAtEnd(c->b, f->then);
}
static void if_end(cg *c, cg_if *f) {
  LLVMBuildBr(c->b, f->join);
  LLVMPositionBuilderAtEnd(c->b, f->join);
}

/* ---- register tiles ---- */

/* acc[r][v] over k in [0, K): acc += a(r, k) * b(v, k), with a and b supplied by
 * the caller's loaders. Returns the sums in fin. */
typedef LLVMValueRef (*tile_load_a)(cg *c, void *ctx, LLVMValueRef k, int r);
typedef LLVMValueRef (*tile_load_b)(cg *c, void *ctx, LLVMValueRef k, int v);
static void tile_sum(cg *c, kiln_dtype t, unsigned w, int rows, int nv, bool unroll, LLVMValueRef K, tile_load_a la,
                     tile_load_b lb, void *ctx, LLVMValueRef fin[][TILE_NV]) {
  LLVMTypeRef vt = LLVMVectorType(cg_type(c, t), w);
  LLVMValueRef zerov = LLVMConstNull(vt), acc[16][TILE_NV], next[16][TILE_NV];
  cg_loop lk;
  LLVMValueRef k = cg_loop_begin(c, &lk, imm(c, 0), K, imm(c, 1));
  for (int r = 0; r < rows; r++)
    for (int v = 0; v < nv; v++) {
      acc[r][v] = LLVMBuildPhi(c->b, vt, "acc");
      LLVMAddIncoming(acc[r][v], &zerov, &lk.pre, 1);
    }
  LLVMValueRef bv[TILE_NV];
  for (int v = 0; v < nv; v++) bv[v] = lb(c, ctx, k, v);
  for (int r = 0; r < rows; r++) {
    LLVMValueRef av = cg_splat(c, la(c, ctx, k, r), w);
    for (int v = 0; v < nv; v++) next[r][v] = madd(c, t, av, bv[v], acc[r][v]);
  }
  LLVMBasicBlockRef latch = LLVMGetInsertBlock(c->b);
  for (int r = 0; r < rows; r++)
    for (int v = 0; v < nv; v++) LLVMAddIncoming(acc[r][v], &next[r][v], &latch, 1);
  if (unroll) cg_loop_end_free(c, &lk);
  else cg_loop_end_scalar(c, &lk);
  for (int r = 0; r < rows; r++) /* exit phis must head the block */
    for (int v = 0; v < nv; v++) {
      fin[r][v] = LLVMBuildPhi(c->b, vt, "");
      LLVMValueRef vals[2] = {zerov, next[r][v]};
      LLVMBasicBlockRef from[2] = {lk.pre, latch};
      LLVMAddIncoming(fin[r][v], vals, from, 2);
    }
}

/* ---- the packed micro-kernel ---- */

/* A stride: the constant 1 when unit (contiguous loads), else parameter i. */
static LLVMValueRef stride_arg(cg *c, LLVMValueRef fn, unsigned i, bool unit) {
  return unit ? imm(c, 1) : LLVMGetParam(fn, i);
}

typedef struct {
  kiln_dtype t;
  LLVMTypeRef vt;
  LLVMValueRef A, Bp, a_rs, a_cs;
  int64_t NR, w;
  int64_t prefetch; /* k steps ahead */
} packed_ctx;

/* B panels prepacked at compile time (batch-1 inference) come from memory, and the
 * first strip of rows to meet a panel waits on it: prefetching the panel this many
 * FMA cycles ahead (with two FMA pipes) brought ResNet's batch-1 7x7x512 layer from
 * 1.43 to 1.32 ms on Zen 5, and costs nothing measurable on panels already in cache. */
enum { PREFETCH_CYCLES = 384 };
static int64_t prefetch_steps(int64_t rows, int nv) { return PREFETCH_CYCLES / (rows * nv / 2 > 0 ? rows * nv / 2 : 1); }

static LLVMValueRef packed_a(cg *c, void *vctx, LLVMValueRef k, int r) {
  packed_ctx *q = vctx;
  return cg_load(c, q->t, q->A, add(c, mul(c, k, q->a_cs), mul(c, imm(c, r), q->a_rs)));
}
static LLVMValueRef packed_b(cg *c, void *vctx, LLVMValueRef k, int v) {
  packed_ctx *q = vctx;
  int64_t es = (int64_t)kiln_dtype_size(q->t);
  if (v * q->w * es % 64 == 0) { /* once per cache line */
    LLVMValueRef ahead = at(c, q->t, q->Bp, add(c, mul(c, add(c, k, imm(c, q->prefetch)), imm(c, q->NR)), imm(c, v * q->w)));
    LLVMValueRef args[4] = {ahead, LLVMConstInt(c->i32, 0, 0), LLVMConstInt(c->i32, 3, 0), LLVMConstInt(c->i32, 1, 0)};
    cg_call_intrinsic(c, "llvm.prefetch", c->ptr, args, 4); /* read, keep in all levels, data */
  }
  return vload(c, q->vt, q->t, q->Bp, add(c, mul(c, k, imm(c, q->NR)), imm(c, v * q->w)), (unsigned)c->vec_bytes);
}

enum { MICRO_ARGS = 10 };
static LLVMTypeRef micro_type(cg *c) {
  LLVMTypeRef ps[MICRO_ARGS] = {c->i64, c->ptr, c->ptr, c->ptr, c->i64, c->i64, c->i1, c->i64, c->i64, c->i64};
  return LLVMFunctionType(c->void_t, ps, MICRO_ARGS, 0);
}

/* micro(kc, A, Bp, C, mr, nr, accumulate, ldc, a_rs, a_cs): C[mr x nr] (+)= A panel
 * * Bp panel, where A[r][k] is at r*a_rs + k*a_cs: the matrix itself (no packing)
 * or a zero-padded packed panel. Strides other than 1 are arguments, not constants:
 * the k loop is FMA-bound, so a stride in a register costs nothing there, and every
 * GEMM of a module with the same A orientation shares one function (LLVM optimises
 * and compiles each micro-kernel once; they are most of a module's code). C's row
 * stride is an argument for the same reason. */
static LLVMValueRef micro_fn(cg *c, kiln_dtype t, int64_t MR, int64_t a_rs, int64_t a_cs, int nv) {
  char name[96];
  snprintf(name, sizeof name, "kiln_micro_%s_%lldx%d%s%s", kiln_dtype_name(t), (long long)MR, nv, a_rs == 1 ? "_r1" : "",
           a_cs == 1 ? "_c1" : "");
  LLVMValueRef fn = cg_shared_fn(c, name);
  if (fn) return fn;
  cg_fn_pos sp;
  fn = cg_begin_shared_fn(c, name, micro_type(c), &sp);
  int64_t NR = nr_of(c, t), w = vec_w(c, t);
  LLVMValueRef kc = LLVMGetParam(fn, 0), C = LLVMGetParam(fn, 3), ldc = LLVMGetParam(fn, 7), mr = LLVMGetParam(fn, 4),
               nr = LLVMGetParam(fn, 5), accum = LLVMGetParam(fn, 6);
  packed_ctx q = {t, LLVMVectorType(cg_type(c, t), (unsigned)w), LLVMGetParam(fn, 1), LLVMGetParam(fn, 2),
                  stride_arg(c, fn, 8, a_rs == 1), stride_arg(c, fn, 9, a_cs == 1), NR, w, prefetch_steps(MR, nv)};
  LLVMValueRef fin[16][TILE_NV];
  /* Packed tiles are FMA-bound with 6 or more chains: unrolling their k loop buys
   * nothing and multiplies the module's largest functions. */
  tile_sum(c, t, (unsigned)w, (int)MR, nv, false, kc, packed_a, packed_b, &q, fin);

  LLVMBasicBlockRef full = LLVMAppendBasicBlockInContext(c->ctx, fn, "full"),
                    edge = LLVMAppendBasicBlockInContext(c->ctx, fn, "edge");
  LLVMValueRef is_full = LLVMBuildAnd(c->b, LLVMBuildICmp(c->b, LLVMIntEQ, mr, imm(c, MR), ""),
                                      LLVMBuildICmp(c->b, LLVMIntEQ, nr, imm(c, nv * w), ""), "");
  LLVMBuildCondBr(c->b, is_full, full, edge);

  LLVMPositionBuilderAtEnd(c->b, full);
  LLVMBasicBlockRef assign = LLVMAppendBasicBlockInContext(c->ctx, fn, "assign"),
                    accumulate = LLVMAppendBasicBlockInContext(c->ctx, fn, "accumulate");
  LLVMBuildCondBr(c->b, accum, accumulate, assign);
  LLVMPositionBuilderAtEnd(c->b, assign);
  for (int r = 0; r < MR; r++)
    for (int v = 0; v < nv; v++) vstore(c, t, fin[r][v], C, add(c, mul(c, imm(c, r), ldc), imm(c, v * w)));
  LLVMBuildRetVoid(c->b);
  LLVMPositionBuilderAtEnd(c->b, accumulate);
  for (int r = 0; r < MR; r++)
    for (int v = 0; v < nv; v++) {
      LLVMValueRef idx = add(c, mul(c, imm(c, r), ldc), imm(c, v * w));
      vstore(c, t, plus(c, t, vload(c, q.vt, t, C, idx, (unsigned)kiln_dtype_size(t)), fin[r][v]), C, idx);
    }
  LLVMBuildRetVoid(c->b);

  /* Edge tiles go through a stack tile and store only the mr x nr corner. */
  LLVMPositionBuilderAtEnd(c->b, edge);
  LLVMValueRef tile = cg_entry_alloca(c, LLVMArrayType(cg_type(c, t), (unsigned)(MR * NR)), 64);
  for (int r = 0; r < MR; r++)
    for (int v = 0; v < nv; v++) vstore(c, t, fin[r][v], tile, imm(c, r * NR + v * w));
  cg_loop lr, lj;
  LLVMValueRef r = cg_loop_begin(c, &lr, imm(c, 0), mr, imm(c, 1));
  LLVMValueRef j = cg_loop_begin(c, &lj, imm(c, 0), nr, imm(c, 1));
  LLVMValueRef ci = add(c, mul(c, r, ldc), j);
  LLVMValueRef val = cg_load(c, t, tile, add(c, mul(c, r, imm(c, NR)), j));
  LLVMValueRef old = cg_load(c, t, C, ci);
  cg_store(c, t, LLVMBuildSelect(c->b, accum, plus(c, t, old, val), val, ""), C, ci);
  cg_loop_end_scalar(c, &lj);
  cg_loop_end_scalar(c, &lr);
  LLVMBuildRetVoid(c->b);
  cg_end_fn(c, &sp);
  return fn;
}

/* ---- packing ---- */

/* Packing is memory-bound and its loops are written as they should run: rows of B
 * with contiguous columns copy as NV vectors per k; any other stride copies element
 * by element in the order that reads memory contiguously. Every loop is closed with
 * cg_loop_end_scalar: LLVM's vectorizer would otherwise turn the strided copies into
 * gathers, and the pack functions cost a quarter of a small model's compile time. */
static bool is_one(LLVMValueRef v) { return LLVMIsAConstantInt(v) && LLVMConstIntGetSExtValue(v) == 1; }

/* Bp[q][k][cc] = B[k*rsb + (j0 + q*NR + cc)*csb] for columns in [j0, j1), 0 past j1. */
static void pack_b(cg *c, kiln_dtype t, int64_t NR, LLVMValueRef Bp, LLVMValueRef B, LLVMValueRef rsb, LLVMValueRef csb,
                   LLVMValueRef j0, LLVMValueRef j1, LLVMValueRef kc) {
  int64_t w = vec_w(c, t), es = (int64_t)kiln_dtype_size(t);
  LLVMTypeRef vt = LLVMVectorType(cg_type(c, t), (unsigned)w);
  LLVMValueRef cols = sub(c, j1, j0), nfull = LLVMBuildSDiv(c->b, cols, imm(c, NR), "");
  LLVMValueRef pstride = mul(c, kc, imm(c, NR));
  cg_loop lq, lk, lc;
  LLVMValueRef qi = cg_loop_begin(c, &lq, imm(c, 0), nfull, imm(c, 1));
  LLVMValueRef col0 = add(c, j0, mul(c, qi, imm(c, NR))), panel = mul(c, qi, pstride);
  if (is_one(csb)) { /* k by k, the panel's row as NV vectors */
    LLVMValueRef k = cg_loop_begin(c, &lk, imm(c, 0), kc, imm(c, 1));
    LLVMValueRef src = add(c, mul(c, k, rsb), col0), dst = add(c, panel, mul(c, k, imm(c, NR)));
    for (int64_t v = 0; v < NR / w; v++)
      vstore(c, t, vload(c, vt, t, B, add(c, src, imm(c, v * w)), (unsigned)es), Bp, add(c, dst, imm(c, v * w)));
    cg_loop_end_scalar(c, &lk);
  } else { /* column by column, down k: B's columns are where it is contiguous, if anywhere */
    LLVMValueRef cc = cg_loop_begin(c, &lc, imm(c, 0), imm(c, NR), imm(c, 1));
    LLVMValueRef src = mul(c, add(c, col0, cc), csb), dst = add(c, panel, cc);
    LLVMValueRef k = cg_loop_begin(c, &lk, imm(c, 0), kc, imm(c, 1));
    cg_store(c, t, cg_load(c, t, B, add(c, src, mul(c, k, rsb))), Bp, add(c, dst, mul(c, k, imm(c, NR))));
    cg_loop_end_scalar(c, &lk);
    cg_loop_end_scalar(c, &lc);
  }
  cg_loop_end_scalar(c, &lq);
  LLVMValueRef rem = sub(c, cols, mul(c, nfull, imm(c, NR)));
  cg_if f;
  if_begin(c, &f, LLVMBuildICmp(c->b, LLVMIntSGT, rem, imm(c, 0), ""));
  LLVMValueRef k = cg_loop_begin(c, &lk, imm(c, 0), kc, imm(c, 1));
  LLVMValueRef src = add(c, mul(c, k, rsb), mul(c, add(c, j0, mul(c, nfull, imm(c, NR))), csb));
  LLVMValueRef dst = add(c, mul(c, nfull, pstride), mul(c, k, imm(c, NR)));
  LLVMValueRef cc = cg_loop_begin(c, &lc, imm(c, 0), rem, imm(c, 1));
  cg_store(c, t, cg_load(c, t, B, add(c, src, mul(c, cc, csb))), Bp, add(c, dst, cc));
  cg_loop_end_scalar(c, &lc);
  cc = cg_loop_begin(c, &lc, rem, imm(c, NR), imm(c, 1));
  cg_store(c, t, cg_const(c, t, 0), Bp, add(c, dst, cc));
  cg_loop_end_scalar(c, &lc);
  cg_loop_end_scalar(c, &lk);
  if_end(c, &f);
}

/* Ap[k][r] = A[r*rsa + k*csa] for r < mr, 0 for mr <= r < MR. */
static void pack_a(cg *c, kiln_dtype t, int64_t MR, LLVMValueRef Ap, LLVMValueRef A, LLVMValueRef rsa, LLVMValueRef csa,
                   LLVMValueRef mr, LLVMValueRef kc) {
  cg_loop lr, lk;
  if (is_one(rsa)) { /* A's columns are contiguous: k by k, down the strip's rows */
    LLVMValueRef k = cg_loop_begin(c, &lk, imm(c, 0), kc, imm(c, 1));
    LLVMValueRef r = cg_loop_begin(c, &lr, imm(c, 0), mr, imm(c, 1));
    cg_store(c, t, cg_load(c, t, A, add(c, r, mul(c, k, csa))), Ap, add(c, mul(c, k, imm(c, MR)), r));
    cg_loop_end_scalar(c, &lr);
    cg_loop_end_scalar(c, &lk);
  } else {
    LLVMValueRef r = cg_loop_begin(c, &lr, imm(c, 0), mr, imm(c, 1));
    LLVMValueRef k = cg_loop_begin(c, &lk, imm(c, 0), kc, imm(c, 1));
    cg_store(c, t, cg_load(c, t, A, add(c, mul(c, r, rsa), mul(c, k, csa))), Ap, add(c, mul(c, k, imm(c, MR)), r));
    cg_loop_end_scalar(c, &lk);
    cg_loop_end_scalar(c, &lr);
  }
  LLVMValueRef r = cg_loop_begin(c, &lr, mr, imm(c, MR), imm(c, 1));
  LLVMValueRef k = cg_loop_begin(c, &lk, imm(c, 0), kc, imm(c, 1));
  cg_store(c, t, cg_const(c, t, 0), Ap, add(c, mul(c, k, imm(c, MR)), r));
  cg_loop_end_scalar(c, &lk);
  cg_loop_end_scalar(c, &lr);
}

/* The packing loops as functions shared by the module's call sites: packing is
 * memory-bound, so only a unit stride (contiguous vector copies) is worth a
 * constant; other strides are arguments. */
enum { PACK_ARGS = 7 };
static LLVMTypeRef pack_type(cg *c) {
  LLVMTypeRef ps[PACK_ARGS] = {c->ptr, c->ptr, c->i64, c->i64, c->i64, c->i64, c->i64};
  return LLVMFunctionType(c->void_t, ps, PACK_ARGS, 0);
}

/* The shared function's body: pack_b or pack_a over its parameters, a unit stride
 * made a constant. */
typedef void (*pack_body)(cg *c, kiln_dtype t, int64_t R, LLVMValueRef fn, LLVMValueRef rs, LLVMValueRef cs);
/* (Bp, B, rsb, csb, j0, j1, kc) */
static void pack_b_body(cg *c, kiln_dtype t, int64_t NR, LLVMValueRef fn, LLVMValueRef rs, LLVMValueRef cs) {
  pack_b(c, t, NR, LLVMGetParam(fn, 0), LLVMGetParam(fn, 1), rs, cs, LLVMGetParam(fn, 4), LLVMGetParam(fn, 5),
         LLVMGetParam(fn, 6));
}
/* (Ap, A, rsa, csa, mr, kc, unused) */
static void pack_a_body(cg *c, kiln_dtype t, int64_t MR, LLVMValueRef fn, LLVMValueRef rs, LLVMValueRef cs) {
  pack_a(c, t, MR, LLVMGetParam(fn, 0), LLVMGetParam(fn, 1), rs, cs, LLVMGetParam(fn, 4), LLVMGetParam(fn, 5));
}

/* Calls the module's `what` packing function for dtype t, panel size R and strides
 * rs, cs (emitting it first if needed; a unit stride selects the variant where it is
 * a constant) with args, whose [2] and [3] become the strides. */
static void call_pack(cg *c, const char *what, pack_body body, kiln_dtype t, int64_t R, bool rs_unit, bool cs_unit,
                      LLVMValueRef rs, LLVMValueRef cs, LLVMValueRef *args) {
  char name[64];
  snprintf(name, sizeof name, "kiln_pack_%s_%s_%lld%s%s", what, kiln_dtype_name(t), (long long)R, rs_unit ? "_r1" : "",
           cs_unit ? "_c1" : "");
  LLVMValueRef fn = cg_shared_fn(c, name);
  if (!fn) {
    cg_fn_pos sp;
    fn = cg_begin_shared_fn(c, name, pack_type(c), &sp);
    cg_mark_light(c, fn);
    body(c, t, R, fn, stride_arg(c, fn, 2, rs_unit), stride_arg(c, fn, 3, cs_unit));
    LLVMBuildRetVoid(c->b);
    cg_end_fn(c, &sp);
  }
  args[2] = rs, args[3] = cs;
  LLVMBuildCall2(c->b, pack_type(c), fn, args, PACK_ARGS, "");
}

/* ---- the direct (unpacked) path ---- */

typedef struct {
  kiln_dtype t;
  LLVMTypeRef vt;
  LLVMValueRef A, B, rsa, csa, rsb, i, j;
  int64_t w;
} direct_ctx;

static LLVMValueRef direct_a(cg *c, void *vctx, LLVMValueRef k, int r) {
  direct_ctx *q = vctx;
  return cg_load(c, q->t, q->A, add(c, mul(c, add(c, q->i, imm(c, r)), q->rsa), mul(c, k, q->csa)));
}
static LLVMValueRef direct_b(cg *c, void *vctx, LLVMValueRef k, int v) {
  direct_ctx *q = vctx;
  return vload(c, q->vt, q->t, q->B, add(c, add(c, mul(c, k, q->rsb), q->j), imm(c, v * q->w)), (unsigned)kiln_dtype_size(q->t));
}

/* The last columns [ja, jb), fewer than NR, row by row as NV vectors whose lanes past
 * jb are masked off: B's ragged columns of the batch-1 MLP's 784x300 layer (12 of
 * them) went through C in memory at every k, a quarter of that GEMV's time. */
typedef struct {
  direct_ctx d;
  LLVMValueRef mask[NV];
} ragged_ctx;

static LLVMValueRef ragged_b(cg *c, void *vctx, LLVMValueRef k, int v) {
  ragged_ctx *q = vctx;
  LLVMValueRef p = at(c, q->d.t, q->d.B, add(c, add(c, mul(c, k, q->d.rsb), q->d.j), imm(c, v * q->d.w)));
  LLVMValueRef args[4] = {p, LLVMConstInt(c->i32, kiln_dtype_size(q->d.t), 0), q->mask[v], LLVMConstNull(q->d.vt)};
  return cg_call_intrinsic2(c, "llvm.masked.load", q->d.vt, c->ptr, args, 4);
}

static void direct_ragged(cg *c, direct_ctx *d, LLVMValueRef K, LLVMValueRef C, LLVMValueRef ldc, LLVMValueRef ia,
                          LLVMValueRef ib, LLVMValueRef ja, LLVMValueRef jb) {
  ragged_ctx q = {.d = *d};
  q.d.j = ja;
  LLVMValueRef rem = LLVMBuildTrunc(c->b, sub(c, jb, ja), c->i32, "");
  for (int v = 0; v < NV; v++) {
    LLVMValueRef lanes[64];
    for (int64_t l = 0; l < d->w; l++) lanes[l] = LLVMConstInt(c->i32, (unsigned long long)(v * d->w + l), 0);
    q.mask[v] = LLVMBuildICmp(c->b, LLVMIntULT, LLVMConstVector(lanes, (unsigned)d->w), cg_splat(c, rem, (unsigned)d->w), "");
  }
  cg_loop li;
  q.d.i = cg_loop_begin(c, &li, ia, ib, imm(c, 1));
  LLVMValueRef fin[1][TILE_NV];
  tile_sum(c, d->t, (unsigned)d->w, 1, NV, true, K, direct_a, ragged_b, &q, fin);
  for (int v = 0; v < NV; v++) {
    LLVMValueRef p = at(c, d->t, C, add(c, add(c, mul(c, q.d.i, ldc), ja), imm(c, v * d->w)));
    LLVMValueRef args[4] = {fin[0][v], p, LLVMConstInt(c->i32, kiln_dtype_size(d->t), 0), q.mask[v]};
    cg_call_intrinsic2(c, "llvm.masked.store", d->vt, c->ptr, args, 4);
  }
  cg_loop_end(c, &li);
}

/* Tiles of `rows` x nv vectors over rows [ia, ib) and columns [ja, jb), both whole multiples. */
static void direct_tiles(cg *c, direct_ctx *q, int rows, int nv, LLVMValueRef K, LLVMValueRef C, LLVMValueRef ldc,
                         LLVMValueRef ia, LLVMValueRef ib, LLVMValueRef ja, LLVMValueRef jb) {
  cg_loop li, lj;
  q->i = cg_loop_begin(c, &li, ia, ib, imm(c, rows));
  q->j = cg_loop_begin(c, &lj, ja, jb, imm(c, nv * q->w));
  LLVMValueRef fin[DR][TILE_NV];
  /* fewer than 12 independent FMA chains (one-row tiles: batch-1 GEMV) gain from unrolling */
  tile_sum(c, q->t, (unsigned)q->w, rows, nv, rows * nv < 12, K, direct_a, direct_b, q, fin);
  for (int r = 0; r < rows; r++)
    for (int v = 0; v < nv; v++)
      vstore(c, q->t, fin[r][v], C, add(c, add(c, mul(c, add(c, q->i, imm(c, r)), ldc), q->j), imm(c, v * q->w)));
  cg_loop_end(c, &lj);
  cg_loop_end(c, &li);
}

/* Columns [j0, j0 + (j1 - j0) / step * step): where whole tiles of `step` end. */
static LLVMValueRef whole(cg *c, LLVMValueRef j0, LLVMValueRef j1, int64_t step) {
  return add(c, j0, mul(c, LLVMBuildSDiv(c->b, sub(c, j1, j0), imm(c, step), ""), imm(c, step)));
}

/* Full DR-row by NR-column tiles over [i0, i1) x [j0, j1); the last rows one at a
 * time in ROW_NV-vector tiles, then NR-column ones; the ragged columns as masked
 * vectors, row by row. */
static void direct_block(cg *c, kiln_dtype t, LLVMValueRef A, LLVMValueRef rsa, LLVMValueRef csa, LLVMValueRef B,
                         LLVMValueRef rsb, LLVMValueRef C, LLVMValueRef ldc, LLVMValueRef K, LLVMValueRef i0,
                         LLVMValueRef i1, LLVMValueRef j0, LLVMValueRef j1) {
  int64_t w = vec_w(c, t), NR = nr_of(c, t);
  LLVMValueRef jfull = whole(c, j0, j1, NR), ifull = whole(c, i0, i1, DR);
  direct_ctx q = {t, LLVMVectorType(cg_type(c, t), (unsigned)w), A, B, rsa, csa, rsb, NULL, NULL, w};
  direct_tiles(c, &q, DR, NV, K, C, ldc, i0, ifull, j0, jfull);
  LLVMValueRef jwide = whole(c, j0, jfull, ROW_NV * w);
  direct_tiles(c, &q, 1, ROW_NV, K, C, ldc, ifull, i1, j0, jwide);
  direct_tiles(c, &q, 1, NV, K, C, ldc, ifull, i1, jwide, jfull);
  cg_if f;
  if_begin(c, &f, LLVMBuildICmp(c->b, LLVMIntSLT, jfull, j1, ""));
  direct_ragged(c, &q, K, C, ldc, i0, i1, jfull, j1);
  if_end(c, &f);
}

/* ---- the dot path ---- */

/* C[i, 0] = sum over k of A[i, k] * B[k, 0] for i in [ia, ib), `rows` rows at a
 * time: one vector accumulator per row over whole vectors of K, reduced, then the
 * remaining K scalar. A row sums the same way whichever group it is in. */
static void dot_rows(cg *c, kiln_dtype t, int rows, LLVMValueRef A, int64_t rsa, LLVMValueRef B, LLVMValueRef C,
                     int64_t ldc, int64_t K, LLVMValueRef ia, LLVMValueRef ib) {
  int64_t w = vec_w(c, t), kv = K / w * w;
  LLVMTypeRef vt = LLVMVectorType(cg_type(c, t), (unsigned)w);
  unsigned align = (unsigned)kiln_dtype_size(t);
  bool fl = kiln_dtype_is_float(t);
  cg_loop li, lk;
  LLVMValueRef i = cg_loop_begin(c, &li, ia, ib, imm(c, rows));
  LLVMValueRef sum[DOT_ROWS];
  if (kv > 0) {
    LLVMValueRef acc_slot[DOT_ROWS];
    for (int r = 0; r < rows; r++) {
      acc_slot[r] = cg_entry_alloca(c, vt, 64);
      LLVMBuildStore(c->b, LLVMConstNull(vt), acc_slot[r]);
    }
    LLVMValueRef k = cg_loop_begin(c, &lk, imm(c, 0), imm(c, kv), imm(c, w));
    LLVMValueRef b = vload(c, vt, t, B, k, align);
    for (int r = 0; r < rows; r++) {
      LLVMValueRef a = vload(c, vt, t, A, add(c, mul(c, add(c, i, imm(c, r)), imm(c, rsa)), k), align);
      LLVMBuildStore(c->b, madd(c, t, a, b, LLVMBuildLoad2(c->b, vt, acc_slot[r], "")), acc_slot[r]);
    }
    cg_loop_end(c, &lk);
    for (int r = 0; r < rows; r++) {
      LLVMValueRef acc = LLVMBuildLoad2(c->b, vt, acc_slot[r], "");
      sum[r] = fl ? cg_fast(cg_call_intrinsic(c, "llvm.vector.reduce.fadd", vt, (LLVMValueRef[]){cg_const(c, t, 0), acc}, 2), true)
                  : cg_call_intrinsic(c, "llvm.vector.reduce.add", vt, &acc, 1);
    }
  } else {
    for (int r = 0; r < rows; r++) sum[r] = cg_const(c, t, 0);
  }
  for (int64_t k = kv; k < K; k++) /* fewer than one vector: unrolled */
    for (int r = 0; r < rows; r++) {
      LLVMValueRef a = cg_load(c, t, A, add(c, mul(c, add(c, i, imm(c, r)), imm(c, rsa)), imm(c, k)));
      sum[r] = madd(c, t, a, cg_load(c, t, B, imm(c, k)), sum[r]);
    }
  for (int r = 0; r < rows; r++) cg_store(c, t, sum[r], C, mul(c, add(c, i, imm(c, r)), imm(c, ldc)));
  cg_loop_end(c, &li);
}

/* ---- the task ---- */

/* The epilogue over rows [i0, i1) x columns [j0, j1) of batch entry bi, out being
 * C's base: one range when tasks hold whole rows. */
static void finish_rows(cg *c, const cg_gemm *g, const gemm_plan *p, const cg_epilogue *ep, LLVMValueRef out,
                        LLVMValueRef bi, LLVMValueRef i0, LLVMValueRef i1, LLVMValueRef j0, LLVMValueRef j1) {
  KILN_ASSERT(g->ldc == g->N && (g->batch == 1 || g->bsc == g->M * g->N));
  LLVMValueRef base = mul(c, bi, imm(c, g->bsc));
  if (p->nt == 1) {
    ep->apply(c, ep, out, add(c, base, mul(c, i0, imm(c, g->N))), add(c, base, mul(c, i1, imm(c, g->N))));
    return;
  }
  cg_loop lr;
  LLVMValueRef r = cg_loop_begin(c, &lr, i0, i1, imm(c, 1));
  LLVMValueRef lo = add(c, add(c, base, mul(c, r, imm(c, g->N))), j0);
  ep->apply(c, ep, out, lo, add(c, lo, sub(c, j1, j0)));
  cg_loop_end(c, &lr);
}

/* The unit strides of a GEMM, which pick the packing and micro-kernel variants. */
typedef struct {
  bool rsa, csa, rsb, csb;
} unit_strides;

/* driver(A, B, C, ws, i0, i1, j0, j1, K, kstep, rsa, csa, rsb, csb, ldc, accumulate,
 * epilogue, epilogue_args, bi): the packed path over C's block [i0, i1) x [j0, j1).
 * One function per dtype and unit strides, shared by every packed GEMM of the
 * module: sizes and strides are arguments (they bound outer loops; the work is in
 * the micro-kernels), so a module compiles this control flow once, not once per
 * call site. `epilogue` (NULL: none) runs over each row strip once it is final. */
enum { DRIVER_ARGS = 19 };
static LLVMTypeRef driver_type(cg *c) {
  LLVMTypeRef ps[DRIVER_ARGS] = {c->ptr, c->ptr, c->ptr, c->ptr, c->i64, c->i64, c->i64, c->i64, c->i64, c->i64,
                                 c->i64, c->i64, c->i64, c->i64, c->i64, c->i1, c->ptr, c->ptr, c->i64};
  return LLVMFunctionType(c->void_t, ps, DRIVER_ARGS, 0);
}
/* epilogue(args, bi, i0, i1, j0, j1) */
static LLVMTypeRef epilogue_type(cg *c) {
  LLVMTypeRef ps[6] = {c->ptr, c->i64, c->i64, c->i64, c->i64, c->i64};
  return LLVMFunctionType(c->void_t, ps, 6, 0);
}

/* prepacked: B is in cg_prepack's layout, and rsb (the argument) is its row of
 * panels, round_up(N, NR) elements; csb is unused. */
static LLVMValueRef driver_fn(cg *c, kiln_dtype t, unit_strides u, bool prepacked) {
  char name[64];
  if (prepacked) u.rsb = u.csb = false;
  snprintf(name, sizeof name, "kiln_gemm_%s%s%s%s%s%s", kiln_dtype_name(t), u.rsa ? "_ra" : "", u.csa ? "_ca" : "",
           u.rsb ? "_rb" : "", u.csb ? "_cb" : "", prepacked ? "_pb" : "");
  LLVMValueRef fn = cg_shared_fn(c, name);
  if (fn) return fn;
  int64_t MR = mr_of(c), SR = sr_of(c), NR = nr_of(c, t), w = vec_w(c, t);
  /* micro[kind][narrow]: A in place, packed, or packed in SR-row sub-strips; NV
   * vectors wide or one (the last, narrow column panel, which would otherwise
   * compute mostly padding) */
  enum { IN_PLACE, PACKED, SUB_STRIPS };
  LLVMValueRef micro[3][2];
  for (int narrow = 0; narrow < 2; narrow++) {
    micro[IN_PLACE][narrow] = micro_fn(c, t, MR, u.rsa ? 1 : 0, u.csa ? 1 : 0, narrow ? 1 : NV);
    micro[PACKED][narrow] = micro_fn(c, t, MR, 1, 0, narrow ? 1 : NV);
    micro[SUB_STRIPS][narrow] = micro_fn(c, t, SR, 1, 0, narrow ? 1 : NV);
  }
  cg_fn_pos sp;
  fn = cg_begin_shared_fn(c, name, driver_type(c), &sp);
  cg_mark_light(c, fn);
  LLVMValueRef P[DRIVER_ARGS];
  for (unsigned i = 0; i < DRIVER_ARGS; i++) P[i] = LLVMGetParam(fn, i);
  LLVMValueRef A = P[0], B = P[1], C = P[2], ws = P[3], i0 = P[4], i1 = P[5], j0 = P[6], j1 = P[7], K = P[8], kstep = P[9];
  LLVMValueRef rsa = u.rsa ? imm(c, 1) : P[10], csa = u.csa ? imm(c, 1) : P[11], rsb = u.rsb ? imm(c, 1) : P[12],
               csb = u.csb ? imm(c, 1) : P[13], ldc = P[14], epilogue = P[16];
  LLVMValueRef Ap = ws, Bp = at(c, t, ws, imm(c, KC * MR));
  LLVMTypeRef mty = micro_type(c);
  cg_loop lp, li, lj;
  LLVMValueRef pc = cg_loop_begin(c, &lp, imm(c, 0), K, kstep);
  LLVMValueRef kc = cg_smin(c, kstep, sub(c, K, pc));
  if (prepacked) /* the slice's panels from j0 on, packed at compile time */
    Bp = at(c, t, B, add(c, mul(c, pc, rsb), mul(c, LLVMBuildSDiv(c->b, j0, imm(c, NR), ""), mul(c, kc, imm(c, NR)))));
  else
    call_pack(c, "b", pack_b_body, t, NR, u.rsb, u.csb, rsb, csb,
              (LLVMValueRef[PACK_ARGS]){Bp, at(c, t, B, mul(c, pc, rsb)), NULL, NULL, j0, j1, kc});
  LLVMValueRef accum = LLVMBuildOr(c->b, P[15], LLVMBuildICmp(c->b, LLVMIntSGT, pc, imm(c, 0), ""), "");
  LLVMValueRef i = cg_loop_begin(c, &li, i0, i1, imm(c, MR));
  LLVMValueRef mr = cg_smin(c, imm(c, MR), sub(c, i1, i));
  LLVMValueRef Ai = at(c, t, A, add(c, mul(c, i, rsa), mul(c, pc, csa)));
  /* Full strips read A in place; the ragged last one is packed with zero rows. So
   * are strips whose rows lie a multiple of 2 KiB apart (K = 512, 1024 floats):
   * their MR rows would share a few L1 sets and evict each other. */
  LLVMValueRef full = LLVMBuildICmp(c->b, LLVMIntEQ, mr, imm(c, MR), "");
  if (!u.rsa) {
    LLVMValueRef row_bytes = mul(c, rsa, imm(c, (int64_t)kiln_dtype_size(t)));
    LLVMValueRef spread = LLVMBuildICmp(c->b, LLVMIntNE, LLVMBuildSRem(c->b, row_bytes, imm(c, 2048), ""), imm(c, 0), "");
    full = LLVMBuildAnd(c->b, full, spread, "");
  }
  cg_if f;
  if_begin(c, &f, LLVMBuildNot(c->b, full, ""));
  call_pack(c, "a", pack_a_body, t, MR, u.rsa, u.csa, rsa, csa, (LLVMValueRef[PACK_ARGS]){Ap, Ai, NULL, NULL, mr, kc, imm(c, 0)});
  if_end(c, &f);
  LLVMValueRef j = cg_loop_begin(c, &lj, j0, j1, imm(c, NR));
  LLVMValueRef nr = cg_smin(c, imm(c, NR), sub(c, j1, j));
  LLVMValueRef panel = mul(c, LLVMBuildSDiv(c->b, sub(c, j, j0), imm(c, NR), ""), mul(c, kc, imm(c, NR)));
  LLVMValueRef Cij = at(c, t, C, add(c, mul(c, i, ldc), j)), Bpj = at(c, t, Bp, panel);
  LLVMValueRef narrow = LLVMBuildICmp(c->b, LLVMIntSLE, nr, imm(c, w), "");
  LLVMValueRef few = LLVMBuildICmp(c->b, LLVMIntSLE, mr, imm(c, MR - SR), "");
  LLVMValueRef kind_is[3] = {full, LLVMBuildAnd(c->b, LLVMBuildNot(c->b, full, ""), LLVMBuildNot(c->b, few, ""), ""),
                             LLVMBuildAnd(c->b, LLVMBuildNot(c->b, full, ""), few, "")};
  for (int kind = 0; kind < 3; kind++)
    for (int nw = 0; nw < 2; nw++) {
      cg_if f2;
      if_begin(c, &f2, LLVMBuildAnd(c->b, kind_is[kind], nw ? narrow : LLVMBuildNot(c->b, narrow, ""), ""));
      if (kind == IN_PLACE) {
        LLVMValueRef margs[MICRO_ARGS] = {kc, Ai, Bpj, Cij, mr, nr, accum, ldc, rsa, csa};
        LLVMBuildCall2(c->b, mty, micro[kind][nw], margs, MICRO_ARGS, "");
      } else if (kind == PACKED) {
        LLVMValueRef margs[MICRO_ARGS] = {kc, Ap, Bpj, Cij, mr, nr, accum, ldc, imm(c, 1), imm(c, MR)};
        LLVMBuildCall2(c->b, mty, micro[kind][nw], margs, MICRO_ARGS, "");
      } else { /* rows s .. s + SR of the packed panel (zeros past mr) */
        cg_loop ls;
        LLVMValueRef s0 = cg_loop_begin(c, &ls, imm(c, 0), mr, imm(c, SR));
        LLVMValueRef margs[MICRO_ARGS] = {kc, at(c, t, Ap, s0), Bpj, at(c, t, Cij, mul(c, s0, ldc)),
                                          cg_smin(c, imm(c, SR), sub(c, mr, s0)), nr, accum, ldc, imm(c, 1), imm(c, MR)};
        LLVMBuildCall2(c->b, mty, micro[kind][nw], margs, MICRO_ARGS, "");
        cg_loop_end_scalar(c, &ls);
      }
      if_end(c, &f2);
    }
  cg_loop_end(c, &lj);
  /* the strip is final after the last K slice */
  cg_if last;
  if_begin(c, &last, LLVMBuildAnd(c->b, LLVMBuildIsNotNull(c->b, epilogue, ""),
                                  LLVMBuildICmp(c->b, LLVMIntEQ, add(c, pc, kc), K, ""), ""));
  LLVMBuildCall2(c->b, epilogue_type(c), epilogue, (LLVMValueRef[]){P[17], P[18], i, add(c, i, mr), j0, j1}, 6, "");
  if_end(c, &last);
  cg_loop_end(c, &li);
  cg_loop_end(c, &lp);
  LLVMBuildRetVoid(c->b);
  cg_end_fn(c, &sp);
  return fn;
}

/* The call site's epilogue for the driver: args holds C's base and the epilogue's
 * pointers, as the task body received them. */
static LLVMValueRef epilogue_fn(cg *c, const cg_gemm *g, const gemm_plan *p, unsigned id) {
  char name[48];
  snprintf(name, sizeof name, "kiln_gemm%u_epilogue", id);
  cg_fn_pos sp;
  LLVMValueRef fn = cg_begin_fn(c, name, epilogue_type(c), &sp);
  LLVMValueRef ptrs[CG_EPILOGUE_PTRS + 1];
  for (unsigned i = 0; i <= g->epilogue->nptrs; i++)
    ptrs[i] = LLVMBuildLoad2(c->b, c->ptr, cg_gep(c, c->ptr, LLVMGetParam(fn, 0), imm(c, i)), "");
  cg_epilogue ep = cg_epilogue_in_task(g->epilogue, ptrs + 1);
  finish_rows(c, g, p, &ep, ptrs[0], LLVMGetParam(fn, 1), LLVMGetParam(fn, 2), LLVMGetParam(fn, 3), LLVMGetParam(fn, 4),
              LLVMGetParam(fn, 5));
  LLVMBuildRetVoid(c->b);
  cg_end_fn(c, &sp);
  return fn;
}

/* The call site's task function: its block of C, then the dot, direct or packed path. */
static LLVMValueRef task_fn(cg *c, const cg_gemm *g, const gemm_plan *p) {
  kiln_dtype t = g->t;
  char name[48];
  unsigned id = c->ngemm++;
  bool packed = !p->direct && !p->dot;
  unit_strides u = {g->rsa == 1, g->csa == 1, g->rsb == 1, g->csb == 1};
  LLVMValueRef driver = packed ? driver_fn(c, t, u, g->b_prepacked) : NULL;
  LLVMValueRef epilogue = packed && g->epilogue ? epilogue_fn(c, g, p, id) : NULL;
  snprintf(name, sizeof name, "kiln_gemm%u_task", id);
  cg_fn_pos sp;
  LLVMValueRef task, worker, v[CG_TASK_CTX_MAX];
  unsigned nctx = CTX_FIELDS + (g->epilogue ? g->epilogue->nptrs : 0);
  LLVMValueRef fn = cg_task_begin(c, name, nctx, 1 << F_C | 1 << F_WS, &sp, v, &task, &worker);
  cg_epilogue ep = {0};
  if (g->epilogue) ep = cg_epilogue_in_task(g->epilogue, v + CTX_FIELDS);
  LLVMValueRef per_batch = imm(c, p->mt * p->nt), nt = imm(c, p->nt);
  LLVMValueRef bi = LLVMBuildSDiv(c->b, task, per_batch, ""), rest = LLVMBuildSRem(c->b, task, per_batch, "");
  LLVMValueRef i0 = mul(c, LLVMBuildSDiv(c->b, rest, nt, ""), imm(c, p->mc));
  LLVMValueRef j0 = mul(c, LLVMBuildSRem(c->b, rest, nt, ""), imm(c, p->nc));
  LLVMValueRef i1 = cg_smin(c, imm(c, g->M), add(c, i0, imm(c, p->mc))), j1 = cg_smin(c, imm(c, g->N), add(c, j0, imm(c, p->nc)));
  LLVMValueRef A = at(c, t, v[F_A], mul(c, bi, imm(c, g->bsa))), B = at(c, t, v[F_B], mul(c, bi, imm(c, g->bsb))),
               C = at(c, t, v[F_C], mul(c, bi, imm(c, g->bsc)));
  LLVMValueRef rsa = imm(c, g->rsa), csa = imm(c, g->csa), rsb = imm(c, g->rsb), ldc = imm(c, g->ldc);
  if (p->dot) {
    LLVMValueRef ifull = whole(c, i0, i1, DOT_ROWS);
    dot_rows(c, t, DOT_ROWS, A, g->rsa, B, C, g->ldc, g->K, i0, ifull);
    dot_rows(c, t, 1, A, g->rsa, B, C, g->ldc, g->K, ifull, i1);
    if (g->epilogue) finish_rows(c, g, p, &ep, v[F_C], bi, i0, i1, j0, j1);
    cg_task_end(c, &sp);
    return fn;
  }
  if (p->direct) {
    direct_block(c, t, A, rsa, csa, B, rsb, C, ldc, imm(c, g->K), i0, i1, j0, j1);
    if (g->epilogue) finish_rows(c, g, p, &ep, v[F_C], bi, i0, i1, j0, j1);
    cg_task_end(c, &sp);
    return fn;
  }
  LLVMValueRef ws = LLVMBuildGEP2(c->b, c->i8, v[F_WS],
                                  (LLVMValueRef[]){mul(c, LLVMBuildSExt(c->b, worker, c->i64, ""), imm(c, (int64_t)p->worker_bytes))}, 1, "");
  LLVMValueRef epi_args = LLVMConstPointerNull(c->ptr);
  if (epilogue) {
    unsigned n = 1 + g->epilogue->nptrs;
    epi_args = cg_entry_alloca(c, LLVMArrayType(c->ptr, n), 8);
    LLVMBuildStore(c->b, v[F_C], epi_args);
    for (unsigned i = 1; i < n; i++) LLVMBuildStore(c->b, v[CTX_FIELDS + i - 1], cg_gep(c, c->ptr, epi_args, imm(c, i)));
  }
  int64_t kstep = kstep_of(g);
  if (g->b_prepacked) rsb = imm(c, round_up(g->N, nr_of(c, t)));
  LLVMValueRef args[DRIVER_ARGS] = {A, B, C, ws, i0, i1, j0, j1, imm(c, g->K), imm(c, kstep), rsa, csa, rsb,
                                    imm(c, g->csb), ldc, LLVMConstInt(c->i1, g->accumulate, 0),
                                    epilogue ? epilogue : LLVMConstPointerNull(c->ptr), epi_args, bi};
  LLVMBuildCall2(c->b, driver_type(c), driver, args, DRIVER_ARGS, "");
  cg_task_end(c, &sp);
  return fn;
}

void cg_gemm_emit(cg *c, const cg_gemm *g, LLVMValueRef A, LLVMValueRef B, LLVMValueRef C, LLVMValueRef scratch) {
  kiln_dtype t = g->t;
  if (g->M == 0 || g->N == 0 || g->batch == 0) return;
  if (g->K == 0 && g->accumulate) return; /* C += nothing */
  if (g->K == 0) { /* an empty sum */
    cg_loop lb, li, lj;
    LLVMValueRef b = cg_loop_begin(c, &lb, imm(c, 0), imm(c, g->batch), imm(c, 1));
    LLVMValueRef i = cg_loop_begin(c, &li, imm(c, 0), imm(c, g->M), imm(c, 1));
    LLVMValueRef j = cg_loop_begin(c, &lj, imm(c, 0), imm(c, g->N), imm(c, 1));
    cg_store(c, t, cg_const(c, t, 0), C, add(c, add(c, mul(c, b, imm(c, g->bsc)), mul(c, i, imm(c, g->ldc))), j));
    cg_loop_end(c, &lj);
    cg_loop_end(c, &li);
    cg_loop_end(c, &lb);
    if (g->epilogue) g->epilogue->apply(c, g->epilogue, C, imm(c, 0), imm(c, g->batch * g->M * g->N));
    return;
  }
  gemm_plan p = plan_gemm(c, g);
  LLVMValueRef task = task_fn(c, g, &p);
  LLVMValueRef vals[CG_TASK_CTX_MAX] = {A, B, C, scratch ? scratch : LLVMConstPointerNull(c->ptr)};
  unsigned nctx = cg_epilogue_ctx(g->epilogue, vals, CTX_FIELDS);
  cg_parallel_for(c, task, cg_task_ctx(c, vals, nctx), p.ntasks, threads_of(c, g) > 1);
}

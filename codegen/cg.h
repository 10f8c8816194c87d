/* Codegen internals: lowering a (specialised, fully static) graph to an LLVM
 * module through the C API. Grouped by defining file. */
#ifndef KILN_CG_H
#define KILN_CG_H

#include <llvm-c/Core.h>
#include <llvm-c/Error.h>
#include <llvm-c/TargetMachine.h>
#include "ir/ir.h"

typedef struct cg {
  LLVMContextRef ctx;
  LLVMModuleRef mod;
  LLVMBuilderRef b;
  LLVMTypeRef i1, i8, i32, i64, f32, f64, ptr, void_t;
  int vec_bytes;           /* widest vector register: 64 (AVX-512), 32 (AVX2) or 16 */
  const kiln_graph *g;
  LLVMValueRef fn;         /* function being emitted */
  int threads;             /* workers the kernels may use (per-worker scratch); 1: serial code */
  unsigned ngemm;          /* GEMM call sites emitted (each gets its own task function) */
  unsigned ntask_fns;      /* task functions emitted outside gemm.c (names stay unique) */
  LLVMValueRef par;        /* in a kernel with threads > 1: its kiln_parallel pointer (may be NULL at run time) */
  bool no_memory_plan;     /* a buffer per node (the "memory-plan" pass disabled) */
  bool no_fusion;          /* a kernel per node (the "fuse" pass disabled) */
  bool no_epilogue;        /* no element-wise nodes fused after matmul/conv/pool-gradient kernels ("epilogue" off) */
  /* JIT: constants larger than CG_CONST_EMBED_MAX bytes are entry arguments (after
   * the workspace and the kiln_parallel), not data in the module: the code then does
   * not depend on weights, LLVM never copies or emits them, and compiled code can be
   * cached by the module's contents. AOT objects embed every constant. */
  bool const_args;
  /* JIT profiling: the entry adds each kernel's nanoseconds (read with profile_clock,
   * a host function) and calls to profile[2k] and profile[2k + 1]. NULL: off. */
  uint64_t *profile;
  uint64_t (*profile_clock)(void);
  /* Per node: a matmul or conv2d whose constant B (weights, filter) is stored packed
   * in the GEMM's panel layout (cg_prepack), set by lower.c; NULL: none. */
  const bool *b_prepacked;
  /* Per node: computed inside the kernels that read it (the schedule's), while
   * lowering; NULL otherwise. */
  const bool *inlined;
  char err[512];
} cg;

/* How the compiled entry point sees a node's storage. */
typedef enum { BUF_INPUT, BUF_OUTPUT, BUF_CONST, BUF_WORK } buf_kind;
enum { CG_CONST_EMBED_MAX = 64 };
typedef struct {
  buf_kind kind;
  uint32_t index;   /* input/output slot; a constant argument's number (global NULL) */
  uint64_t offset;  /* workspace offset */
  LLVMValueRef global;
} buf_loc;

/* The lowering's result: what kiln_exec needs to call the entry point. */
typedef struct cg_plan {
  uint32_t nin, nout;
  uint32_t nconst_args;    /* constants passed at run time (cg.const_args) */
  /* per constant argument: what to pass, the node's data or, for weights a GEMM reads
   * prepacked, a 64-byte aligned copy in its panel layout (owned: const_owned) */
  const void **const_data;
  bool *const_owned;
  uint64_t workspace;      /* bytes */
  uint64_t buffers_unplanned; /* intermediate bytes without memory planning (for stats) */
  size_t kernels;          /* node functions emitted */
  size_t fused;            /* nodes computed inside the kernels that read them */
  uint64_t bytes_moved;    /* per run: every kernel's output plus the buffers it reads, once each */
  buf_loc *locs;           /* per node */
  int32_t *out_node;       /* per output: node index */
  bool *out_direct;        /* per output: written by generated code */
  uint32_t *kernel_node;   /* per kernel, in call order: its node */
  uint32_t *kernel_host;   /* per kernel: the matmul/conv/pool gradient it runs first, or UINT32_MAX */
} cg_plan;

/* ---- llvm_util.c ---- */
KILN_INTERNAL void cg_init_types(cg *c);
KILN_INTERNAL LLVMTypeRef cg_type(cg *c, kiln_dtype t); /* bool is i8 in memory */
KILN_INTERNAL LLVMValueRef cg_i64(cg *c, int64_t v);
KILN_INTERNAL LLVMValueRef cg_const(cg *c, kiln_dtype t, double v);
KILN_INTERNAL LLVMValueRef cg_gep(cg *c, LLVMTypeRef elem, LLVMValueRef base, LLVMValueRef index);
KILN_INTERNAL LLVMValueRef cg_load(cg *c, kiln_dtype t, LLVMValueRef base, LLVMValueRef index);
KILN_INTERNAL void cg_store(cg *c, kiln_dtype t, LLVMValueRef v, LLVMValueRef base, LLVMValueRef index);
/* Calls llvm.<name> overloaded on `overload` (and on `overload2` when not NULL). */
KILN_INTERNAL LLVMValueRef cg_call_intrinsic(cg *c, const char *name, LLVMTypeRef overload, LLVMValueRef *args,
                                             unsigned nargs);
KILN_INTERNAL LLVMValueRef cg_call_intrinsic2(cg *c, const char *name, LLVMTypeRef overload, LLVMTypeRef overload2,
                                              LLVMValueRef *args, unsigned nargs);
KILN_INTERNAL LLVMValueRef cg_call_libm(cg *c, const char *name, LLVMTypeRef t, LLVMValueRef *args, unsigned nargs);
/* Counted loop: for (iv = start; iv < end; iv += step). Trip counts may be dynamic.
 * cg_loop_end keeps loops of more than 16 (or unknown) iterations from being
 * unrolled (llvm_util.c says why). */
typedef struct {
  int64_t trips; /* -1: not a constant */
  LLVMValueRef iv, end, step;
  LLVMBasicBlockRef head, exit;
  LLVMValueRef phi;
  LLVMBasicBlockRef pre;
} cg_loop;
KILN_INTERNAL LLVMValueRef cg_loop_begin(cg *c, cg_loop *l, LLVMValueRef start, LLVMValueRef end, LLVMValueRef step);
KILN_INTERNAL void cg_loop_end(cg *c, cg_loop *l);
/* cg_loop_end for a short inner loop with a constant trip count that must stay the
 * loop LLVM vectorizes: not unrolled away first (which would leave the loop around
 * it to be vectorized with gathers). */
KILN_INTERNAL void cg_loop_end_vector(cg *c, cg_loop *l);
/* cg_loop_end for a loop that is already as wide as it should be (a register tile's
 * k loop) or too rare to be worth more code (edge tiles): neither unrolled nor
 * vectorized, which also keeps compile time down. */
KILN_INTERNAL void cg_loop_end_scalar(cg *c, cg_loop *l);
/* cg_loop_end leaving unrolling to LLVM whatever the trip count: for latency-bound
 * loops with few independent chains (a one-row register tile), where unrolling pays. */
KILN_INTERNAL void cg_loop_end_free(cg *c, cg_loop *l);
/* Nested loops over dims (row-major, last innermost); ivs receives the induction values. */
typedef void (*cg_nest_body)(cg *c, const LLVMValueRef *ivs, void *ctx);
KILN_INTERNAL void cg_nest(cg *c, int rank, const int64_t *dims, cg_nest_body body, void *ctx);
/* Row-major linear index of ivs in dims. */
KILN_INTERNAL LLVMValueRef cg_linear(cg *c, int rank, const int64_t *dims, const LLVMValueRef *ivs);
KILN_INTERNAL LLVMValueRef cg_splat(cg *c, LLVMValueRef scalar, unsigned n);
/* Signed minimum / maximum of two integers. */
KILN_INTERNAL LLVMValueRef cg_smin(cg *c, LLVMValueRef a, LLVMValueRef b);
KILN_INTERNAL LLVMValueRef cg_smax(cg *c, LLVMValueRef a, LLVMValueRef b);
/* Marks fp ops as contractable (FMA) and, with reassoc, reorderable (vectorizable reductions). */
KILN_INTERNAL LLVMValueRef cg_fast(LLVMValueRef inst, bool reassoc);

/* ---- math.c: scalar semantics shared by every kernel ---- */
KILN_INTERNAL LLVMValueRef cg_unary(cg *c, kiln_op op, kiln_dtype t, LLVMValueRef x);
KILN_INTERNAL LLVMValueRef cg_binary(cg *c, kiln_op op, kiln_dtype t, LLVMValueRef a, LLVMValueRef b);
KILN_INTERNAL LLVMValueRef cg_cast(cg *c, kiln_dtype from, kiln_dtype to, LLVMValueRef x);
KILN_INTERNAL LLVMValueRef cg_exp_f32(cg *c, LLVMValueRef x);
KILN_INTERNAL LLVMValueRef cg_log_f32(cg *c, LLVMValueRef x);
/* Converts a double constant fill value to dtype t like the evaluator does. */
KILN_INTERNAL LLVMValueRef cg_fill_value(cg *c, kiln_dtype t, double v);

/* ---- parallel.c: task functions and their dispatch ---- */
/* An alloca in c->fn's entry block, so loops around the use do not grow the stack. */
KILN_INTERNAL LLVMValueRef cg_entry_alloca(cg *c, LLVMTypeRef ty, unsigned align);
/* Starts an internal function (c->fn, with c->par NULL inside); cg_end_fn returns
 * to the caller's function and insertion point. */
typedef struct {
  LLVMBasicBlockRef block;
  LLVMValueRef fn, par;
} cg_fn_pos;
KILN_INTERNAL LLVMValueRef cg_begin_fn(cg *c, const char *name, LLVMTypeRef fty, cg_fn_pos *saved);
KILN_INTERNAL void cg_end_fn(cg *c, const cg_fn_pos *saved);
/* A helper shared by every kernel that needs it (GEMM micro-kernels, packing): the
 * module's function `name` if there is one; else NULL, and the caller emits it with
 * cg_begin_shared_fn, which marks it noinline so that LLVM optimises and compiles it
 * once per module instead of once per call site. */
KILN_INTERNAL LLVMValueRef cg_shared_fn(cg *c, const char *name);
KILN_INTERNAL LLVMValueRef cg_begin_shared_fn(cg *c, const char *name, LLVMTypeRef fty, cg_fn_pos *saved);
/* A shared function whose code is calls and copies (GEMM drivers, packing): compiled
 * on its own (compile_parts.c), it gets cg_light_pipeline instead of default<O3>. */
KILN_INTERNAL void cg_mark_light(cg *c, LLVMValueRef fn);
KILN_INTERNAL bool cg_is_light(LLVMValueRef fn);
/* void task(ptr ctx, i64 task, i32 worker) */
KILN_INTERNAL LLVMTypeRef cg_task_type(cg *c);
/* A task context: n pointers in a struct on the kernel's stack. */
enum { CG_TASK_CTX_MAX = 72 };
KILN_INTERNAL LLVMValueRef cg_task_ctx(cg *c, const LLVMValueRef *ptrs, unsigned n);
/* Starts a task function `name` over an n-pointer context and returns it; the
 * builder is left in its body, which gets the pointers as arguments (ptrs), the
 * task index and the worker. Pointers whose bit is set in `written` are noalias:
 * the kernel writes only through them, to memory no other pointer reaches, which
 * lets LLVM keep loads in registers and vectorize copies. cg_task_end closes it. */
KILN_INTERNAL LLVMValueRef cg_task_begin(cg *c, const char *name, unsigned n, unsigned written, cg_fn_pos *saved,
                                         LLVMValueRef *ptrs, LLVMValueRef *index, LLVMValueRef *worker);
KILN_INTERNAL void cg_task_end(cg *c, const cg_fn_pos *saved);
/* Task `task`'s piece of [0, n) cut into pieces of `per`: [*lo, the result). */
KILN_INTERNAL LLVMValueRef cg_task_range(cg *c, LLVMValueRef task, int64_t per, int64_t n, LLVMValueRef *lo);
/* Runs task(ctx, i, worker) for i < ntasks: through the kernel's kiln_parallel when
 * threaded and there is one at run time, else in order on worker 0. */
KILN_INTERNAL void cg_parallel_for(cg *c, LLVMValueRef task, LLVMValueRef ctx, int64_t ntasks, bool threaded);
/* Below this much arithmetic a GEMM or convolution runs on the calling thread: waking
 * the pool costs microseconds, far more when another process holds the other CPU (a
 * spinning caller then waits for a descheduled worker). */
#define CG_THREADED_FLOPS 2e6

/* An epilogue: what a matmul or convolution kernel runs over each piece of its
 * output once the piece is final, while it is still in cache (lower.c builds it
 * from the element-wise nodes fused after the product): out[i] = f(out[i], the
 * buffers in ptrs at i) for flat indices i in [lo, hi). Kernels that run tasks
 * pass ptrs through the task context. */
enum { CG_EPILOGUE_PTRS = 33 }; /* a kernel's reads and a fused pool's output */
typedef struct cg_epilogue cg_epilogue;
struct cg_epilogue {
  void (*apply)(cg *c, const cg_epilogue *e, LLVMValueRef out, LLVMValueRef lo, LLVMValueRef hi);
  const void *ctx;
  unsigned nptrs;
  LLVMValueRef ptrs[CG_EPILOGUE_PTRS];
  /* A pool fused after a convolution (lower.c) reads whole windows of rows: > 0, the
   * convolution hands apply only runs of whole groups of this many output pixels,
   * starting at multiples of it. */
  int64_t align_pixels;
  /* Only apply reads the host's output: the host has no output buffer of its own
   * (its `out` is unused) and computes each piece into a per-worker buffer after its
   * own scratch (cg_conv_pooled_scratch_bytes), which it passes to apply as `out`,
   * offset so that flat indices stay those of the whole output. */
  bool private_out;
};
/* Appends e's pointers (none when e is NULL) to the n context pointers in ptrs; returns the new count. */
KILN_INTERNAL unsigned cg_epilogue_ctx(const cg_epilogue *e, LLVMValueRef *ptrs, unsigned n);
/* e as a task body sees it: its pointers are the body's arguments from args on. */
KILN_INTERNAL cg_epilogue cg_epilogue_in_task(const cg_epilogue *e, const LLVMValueRef *args);

/* ---- gemm.c ---- */
/* C[b] = A[b] * B[b] for b < batch, all strides in elements: A[b][i][k] is at
 * b*bsa + i*rsa + k*csa, B[b][k][j] at b*bsb + k*rsb + j*csb, C[b][i][j] at b*bsc + i*ldc + j. */
typedef struct cg_gemm {
  kiln_dtype t;
  int64_t batch, M, N, K;
  int64_t rsa, csa, rsb, csb, ldc;
  int64_t bsa, bsb, bsc;
  bool serial; /* plan and run for one thread even when the module has more */
  /* Never the direct (unpacked) path, whose sums group K differently: for GEMMs
   * over a slice of rows whose size depends on the thread count. */
  bool packed;
  bool accumulate; /* C[b] += A[b] * B[b] (always packed) */
  /* B is stored in the packed path's panel layout (cg_prepack): constant weights
   * packed once at compile time instead of at every call (always packed). */
  bool b_prepacked;
  /* A's rows were just written by the threads in the ranges cg_gemm_thread_rows
   * gives, each range in its writer's cache: a cut of C by rows reads them there,
   * one by columns reads the other threads' rows from their caches (plan_gemm). */
  bool a_rows_by_thread;
  /* Run over rows of C as they are finished; C is then the epilogue's out, whole
   * (ldc == N, bsc == M * N). NULL: none. */
  const cg_epilogue *epilogue;
} cg_gemm;
KILN_INTERNAL uint64_t cg_gemm_scratch_bytes(cg *c, const cg_gemm *g);
/* The rows of A (and C) each thread's task covers when g cuts C by rows; else
 * M split evenly. */
KILN_INTERNAL int64_t cg_gemm_thread_rows(cg *c, const cg_gemm *g);
/* A B operand in the packed path's layout: per K slice (kstep deep, the last shorter),
 * panels of nr columns over the columns rounded up to nr, each k-major and zero
 * padded; slice s starts at element s * kstep * round_up(N, nr). */
typedef struct {
  kiln_dtype t;
  int64_t K, N, rsb, csb, kstep, nr;
} cg_prepack;
/* Whether g (batch 1) runs the packed path anyway, so that a constant B is worth
 * prepacking; *p gets the layout. */
KILN_INTERNAL bool cg_gemm_prepack_layout(cg *c, const cg_gemm *g, cg_prepack *p);
KILN_INTERNAL uint64_t cg_prepack_bytes(const cg_prepack *p);
KILN_INTERNAL void cg_prepack_run(const cg_prepack *p, const void *B, void *out); /* host code */
typedef struct {
  const cg_prepack *layout;
  const void *B;
  void *out;
} cg_prepack_job;
/* The jobs on up to `threads` threads: every compile packs its constant weights, a
 * warm one too, and their first writes to fresh pages are most of that time. */
KILN_INTERNAL void cg_prepack_run_all(const cg_prepack_job *jobs, size_t n, int threads);
KILN_INTERNAL void cg_gemm_emit(cg *c, const cg_gemm *g, LLVMValueRef A, LLVMValueRef B, LLVMValueRef C, LLVMValueRef scratch);

/* ---- kernels.c: matmul, pooling and its gradient ---- */
KILN_INTERNAL void cg_matmul(cg *c, const kiln_node *n, LLVMValueRef out, const LLVMValueRef *in, LLVMValueRef scratch,
                             const cg_epilogue *ep);
KILN_INTERNAL void cg_pool2d(cg *c, const kiln_node *n, LLVMValueRef out, const LLVMValueRef *in);
/* Pool n (window = strides, no padding) over the whole window rows of its input x
 * held in flat elements [lo, hi) (multiples of window height x input width x
 * channels), reading x, writing out: the pool fused after a convolution. */
KILN_INTERNAL void cg_pool2d_rows(cg *c, const kiln_node *n, LLVMValueRef x, LLVMValueRef out, LLVMValueRef lo, LLVMValueRef hi);
/* false (c->err set) for a window too large to unroll */
KILN_INTERNAL bool cg_max_pool2d_grad(cg *c, const kiln_node *n, LLVMValueRef out, const LLVMValueRef *in,
                                      const cg_epilogue *ep);
/* Scratch bytes a node needs beyond its output (packing, im2col). */
KILN_INTERNAL uint64_t cg_scratch_bytes(cg *c, const kiln_node *n);
/* A matmul or conv2d whose B (input 1) would be read prepacked if constant: its layout. */
KILN_INTERNAL bool cg_prepack_layout_of(cg *c, const kiln_node *n, cg_prepack *p);

/* ---- conv.c: conv2d and conv2d_filter_grad ---- */
KILN_INTERNAL void cg_conv2d(cg *c, const kiln_node *n, LLVMValueRef out, const LLVMValueRef *in, LLVMValueRef scratch,
                             const cg_epilogue *ep);
KILN_INTERNAL void cg_conv2d_filter_grad(cg *c, const kiln_node *n, LLVMValueRef out, const LLVMValueRef *in,
                                         LLVMValueRef scratch);
KILN_INTERNAL uint64_t cg_conv_scratch_bytes(cg *c, const kiln_node *n);
/* conv2d n's filter as its GEMMs would read it prepacked (cg_prepack_layout_of). */
KILN_INTERNAL bool cg_conv_prepack_layout(cg *c, const kiln_node *n, cg_prepack *p);
/* conv2d n computed for a fused pool (cg_epilogue.private_out) with runs of
 * align_pixels: whether its kernel can, and the scratch it then needs. */
KILN_INTERNAL bool cg_conv_can_pool(cg *c, const kiln_node *n);
KILN_INTERNAL uint64_t cg_conv_pooled_scratch_bytes(cg *c, const kiln_node *n, int64_t align_pixels);

/* ---- target.c ---- */
/* triple NULL: the host; cpu "native" (host CPU and features, host only), "generic", or
 * an LLVM CPU name. *vec_bytes gets the vector width our kernels should use. */
KILN_INTERNAL LLVMTargetMachineRef cg_target_machine(const char *triple, const char *cpu, int *vec_bytes);
/* Verifies mod, sets its target and data layout from tm, optimises it (default<O3>). */
KILN_INTERNAL kiln_status cg_finish_module(LLVMModuleRef mod, LLVMTargetMachineRef tm);
/* cg_finish_module in three steps: verify, set the target, optimise. */
KILN_INTERNAL kiln_status cg_verify_module(LLVMModuleRef mod);
KILN_INTERNAL kiln_status cg_target_module(LLVMModuleRef mod, LLVMTargetMachineRef tm);
KILN_INTERNAL kiln_status cg_optimize_module(LLVMModuleRef mod, LLVMTargetMachineRef tm, const char *pipeline);
KILN_INTERNAL const char *cg_pipeline(void); /* the LLVM pass pipeline every module gets */
/* The pipeline of a light shared function compiled on its own (cg_mark_light). */
KILN_INTERNAL const char *cg_light_pipeline(void);
/* Functions with a body and their instructions. */
KILN_INTERNAL void cg_module_size(LLVMModuleRef mod, size_t *functions, size_t *instructions);
KILN_INTERNAL size_t cg_fn_instructions(LLVMValueRef fn); /* 0 for a declaration */
KILN_INTERNAL kiln_status cg_llvm_error(LLVMErrorRef e, const char *what);

/* ---- compile_parts.c ---- */
/* Threads a compile may use: KILN_COMPILE_THREADS, else the CPUs online (at most 8). */
KILN_INTERNAL int cg_compile_threads(void);
/* fn(args + w * stride) for each worker w < n (at most 8): worker 0 on this thread,
 * the others on threads of their own (one that cannot start runs here afterwards).
 * Workers that pull jobs from a shared counter thus share the jobs whatever starts. */
KILN_INTERNAL void cg_run_workers(int n, void *(*fn)(void *), void *args, size_t stride);
/* Optimises mod (prepared for tm) and emits its machine code into *obj (the caller's),
 * split over up to `threads` threads when it is large enough, its shared functions
 * from (and into) the compile cache as `functions` says; *obj is then several
 * objects in one buffer (cg_objects_*). t gets the LLVM steps' wall times and how
 * many shared functions came from the cache. */
typedef enum {
  CG_FUNCTIONS_INLINE,  /* shared functions compiled with the rest, no cache */
  CG_FUNCTIONS_REUSE,   /* taken from the cache when there, else compiled and stored */
  CG_FUNCTIONS_REFRESH, /* compiled and stored over what the cache has (which did not load) */
} cg_function_cache;
KILN_INTERNAL kiln_status cg_compile_parts(LLVMModuleRef mod, LLVMTargetMachineRef tm, bool generic_cpu, int threads,
                                           cg_function_cache functions, kiln_exec_stats *t, LLVMMemoryBufferRef *obj);
/* How many objects a compile result holds (1 for a plain object), -1 if malformed. */
KILN_INTERNAL int cg_objects_count(const void *data, size_t size);
/* Object q of a well-formed compile result. */
KILN_INTERNAL void cg_objects_get(const void *data, size_t size, int q, const void **obj, size_t *obj_size);
/* Optimises mod with `pipeline` and emits one object (*obj, the caller's) with tm;
 * times into t. */
KILN_INTERNAL kiln_status cg_emit_object(LLVMModuleRef mod, LLVMTargetMachineRef tm, const char *pipeline,
                                         kiln_exec_stats *t, LLVMMemoryBufferRef *obj);

/* ---- compile_cache.c: machine code on disk, keyed by the module (see the file) ---- */
typedef struct {
  uint64_t lo, hi;
} cg_cache_key;
KILN_INTERNAL bool cg_cache_enabled(void); /* KILN_CACHE is not 0 */
/* The key of mod (not yet optimised) compiled by tm through `pipeline`. */
KILN_INTERNAL kiln_status cg_cache_key_of(LLVMModuleRef mod, LLVMTargetMachineRef tm, const char *pipeline,
                                          cg_cache_key *key);
/* The same from the module's bitcode. */
KILN_INTERNAL void cg_cache_key_of_bitcode(const void *bitcode, size_t size, LLVMTargetMachineRef tm,
                                           const char *pipeline, cg_cache_key *key);
/* What an entry holds: a whole module's objects (NAME.kjit, counted as hits, misses
 * and stores) or one shared function's (NAME.kfn, counted as functions reused and
 * stored). */
typedef enum { CG_ENTRY_MODULE, CG_ENTRY_FUNCTION } cg_entry_kind;
/* true: *data (the caller's, free) holds the object stored under key. A corrupt entry
 * is removed with one line on stderr and counted as rejected. */
KILN_INTERNAL bool cg_cache_load(cg_entry_kind kind, cg_cache_key key, void **data, size_t *size);
KILN_INTERNAL void cg_cache_store(cg_entry_kind kind, cg_cache_key key, const void *data, size_t size);
/* An entry that loaded but that the JIT could not link: removed like a corrupt one. */
KILN_INTERNAL void cg_cache_reject(cg_entry_kind kind, cg_cache_key key, const char *why);
KILN_INTERNAL void cg_cache_count_miss(void);

/* ---- lower.c ---- */
/* Emits `int32_t kiln_entry(void **args)` (args: inputs, outputs, workspace, kiln_parallel,
 * constant arguments) into c->mod.
 * Returns 0 (ok) or a status with c->err set. */
KILN_INTERNAL kiln_status cg_lower(cg *c, const char *entry_name, cg_plan *plan);
KILN_INTERNAL void cg_plan_free(cg_plan *p);

/* ---- profile.c ---- */
/* The profile of plan's kernels from counters (cg.profile's layout) as a table, slowest first. */
KILN_INTERNAL kiln_status cg_profile_text(const kiln_graph *g, const cg_plan *plan, const uint64_t *counters, char **text);

#endif

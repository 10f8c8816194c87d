/* kiln compilation and execution.
 *
 *   kiln_exec *e;
 *   if (kiln_compile(g, NULL, &e) != KILN_OK) fprintf(stderr, "%s\n", kiln_errmsg());
 *   kiln_tensor *y;
 *   kiln_exec_run(e, (const kiln_tensor *[]){x}, 1, &y, 1);   // y is the caller's
 *   kiln_exec_free(e);
 *
 * Inputs are given in placeholder creation order, outputs in kiln_output order.
 * A graph with a KILN_DYN batch dim is specialised (and JIT-compiled) once per
 * batch size seen. A kiln_exec runs one call at a time: a kiln_exec_run from a second
 * thread while one is in progress returns KILN_ERR_INVALID (compile one kiln_exec per
 * thread; with a warm compile cache that costs milliseconds). */
#ifndef KILN_EXEC_H
#define KILN_EXEC_H

#include "kiln/graph.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kiln_exec kiln_exec;

typedef struct kiln_compile_options {
  const char *cpu;      /* NULL or "native": host CPU and features; "generic": portable */
  bool keep_ir;         /* keep the optimized LLVM IR text (kiln_exec_llvm_ir) */
  /* Comma-separated passes to skip, for comparisons: "fold" (constant folding),
   * "simplify" (the algebraic rules), "layout" (transposes around NCHW convolutions
   * stay where the model put them), "fuse" (one kernel per node, every
   * intermediate stored), "epilogue" (only the fusion of element-wise nodes into the
   * matmul/convolution they follow) and "memory-plan" (every intermediate buffer gets
   * its own bytes). NULL: all passes run. */
  const char *disable_passes;
  /* Threads the generated kernels use (the caller's plus a pool's); 0: $KILN_NUM_THREADS,
   * else every CPU this process may run on. Results are bit-identical for any count. */
  int threads;
  /* Time every kernel of every run (kiln_exec_profile). The environment variable
   * KILN_PROFILE=1 turns it on for every compile (models and kiln_function too) and
   * prints each profile to stderr when its kiln_exec is freed. */
  bool profile;
  /* Skip the persistent compile cache for this compile (see kiln_cache_stats). */
  bool no_cache;
} kiln_compile_options;

/* The persistent compile cache. Machine code of every JIT compile is kept on disk
 * and reused by later compiles of the same code in any process: the key hashes the
 * lowered module (shapes, kernels, tiles, threads; not the weights, which the code
 * takes at run time), LLVM's version and the target CPU and features. Where:
 * $KILN_CACHE_DIR, else $XDG_CACHE_HOME/kiln, else ~/.cache/kiln; KILN_CACHE=0 turns it
 * off; KILN_CACHE_MAX_MB bounds it (default 1024, least recently used entries go
 * first). Entries are written atomically; one that fails its checksum or does not
 * load is recompiled and replaced (one line on stderr). Compiles with profiling or
 * keep_ir bypass it. */
typedef enum { KILN_CACHE_OFF = 0, KILN_CACHE_MISS = 1, KILN_CACHE_HIT = 2 } kiln_cache_outcome;
typedef struct kiln_cache_stats {
  uint64_t hits;     /* compiles served from the cache */
  uint64_t misses;   /* compiles that looked and compiled */
  uint64_t stores;   /* entries written */
  uint64_t rejected; /* entries that failed their checks or did not load */
  /* Shared functions (GEMM micro-kernels and drivers, packing, depthwise blocks) are
   * also kept one by one, so that a compile that misses still takes those an earlier
   * compile of any graph made: */
  uint64_t functions_reused; /* shared functions taken from the cache by compiles that missed */
  uint64_t functions_stored; /* shared functions written */
} kiln_cache_stats;
/* Counters of this process since it started (global, updated atomically). */
KILN_API void kiln_cache_get_stats(kiln_cache_stats *out);

/* What the compiler produced for the most recently compiled specialization. */
typedef struct kiln_exec_stats {
  size_t kernels;           /* generated kernel functions */
  size_t fused_nodes;       /* nodes computed inside the kernels that read them */
  uint64_t workspace_bytes; /* intermediate buffers + kernel scratch, as allocated */
  uint64_t unplanned_bytes; /* intermediate buffers if each had its own bytes */
  uint64_t bytes_moved;     /* per run, estimated: each kernel's output plus every buffer it reads once */
  /* Compile time of that specialization, milliseconds: kiln's graph passes, lowering
   * to LLVM IR (fusion and memory planning included), LLVM's optimisation pipeline,
   * machine-code generation, loading into the JIT; all of it in compile_ms. A cache
   * hit spends no time in the two LLVM steps. */
  double passes_ms, lower_ms, llvm_opt_ms, llvm_codegen_ms, jit_load_ms, compile_ms;
  size_t llvm_functions, llvm_instructions; /* the module as lowered, before optimisation */
  uint64_t object_bytes;                    /* machine code and its data */
  kiln_cache_outcome cache;
  size_t functions_from_cache; /* on a miss: shared functions whose code the cache had */
} kiln_exec_stats;
/* KILN_ERR_INVALID while nothing is compiled yet (a symbolic batch before its first run). */
KILN_API kiln_status kiln_exec_get_stats(const kiln_exec *e, kiln_exec_stats *out);

/* What kiln_compile would emit for g (a symbolic batch taken as 1), as text: the
 * graph after folding and simplification (text IR), "N kernels, M nodes fused", then
 * per kernel "kernel %i op fuses %j op, ...; reads %k, ..." with that graph's node
 * numbers. *text is the caller's (free). */
KILN_API kiln_status kiln_schedule_text(const kiln_graph *g, const char *disable_passes, char **text);
/* The same graph in Graphviz dot, each kernel a cluster of its node and the nodes
 * fused into it (with "fuse" disabled: one node per cluster, before fusion). */
KILN_API kiln_status kiln_graph_to_dot(const kiln_graph *g, const char *disable_passes, char **text);

/* Compiles a copy of g: the caller may free g afterwards. */
KILN_API kiln_status kiln_compile(const kiln_graph *g, const kiln_compile_options *opts, kiln_exec **out);
KILN_API void kiln_exec_free(kiln_exec *e);
/* outputs[i] receive new tensors owned by the caller. An exec without variable
 * assignments (inference) may be run from several threads at once; one that assigns
 * variables or profiles refuses a call while another is running (KILN_ERR_INVALID). */
KILN_API kiln_status kiln_exec_run(kiln_exec *e, const kiln_tensor *const *inputs, size_t nin,
                                   kiln_tensor **outputs, size_t nout);
/* The same into the caller's tensors (dtype and shape must match the outputs), so a
 * loop allocates nothing per run. On failure their contents are unspecified. */
KILN_API kiln_status kiln_exec_run_into(kiln_exec *e, const kiln_tensor *const *inputs, size_t nin,
                                        kiln_tensor *const *outputs, size_t nout);
KILN_API size_t kiln_exec_num_inputs(const kiln_exec *e);
KILN_API size_t kiln_exec_num_outputs(const kiln_exec *e);
KILN_API const char *kiln_exec_input_name(const kiln_exec *e, size_t i);
KILN_API const char *kiln_exec_output_name(const kiln_exec *e, size_t i);
/* Where the runs' time went (needs profile): for the most recently compiled
 * specialization, "kiln profile: N kernels, R runs, T ms per run in kernels" and a
 * line per kernel, slowest first: milliseconds per run, share, node, op (with the
 * matmul/convolution it runs first), output type. *text is the caller's (free). */
KILN_API kiln_status kiln_exec_profile(const kiln_exec *e, char **text);
/* Optimized LLVM IR of the most recent specialization (needs keep_ir), or NULL. */
KILN_API const char *kiln_exec_llvm_ir(const kiln_exec *e);

/* The reference evaluator: plain C, same calling convention as kiln_exec_run. */
KILN_API kiln_status kiln_evaluate(const kiln_graph *g, const kiln_tensor *const *inputs, size_t nin,
                                   kiln_tensor **outputs, size_t nout);

#ifdef __cplusplus
}
#endif
#endif

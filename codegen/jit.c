/* JIT compilation and kiln_exec.
 *
 * kiln_compile keeps a copy of the (possibly batch-symbolic) graph. The first
 * run with a given batch size specialises it, lowers it (lower.c), verifies the
 * module, optimises it with the new pass manager (default<O3>, host CPU and
 * features unless asked for a generic target) and hands it to an ORC LLJIT; the
 * result is cached per batch size, like tf.function's per-signature traces. */
#include <llvm-c/Error.h>
#include <llvm-c/LLJIT.h>
#include <llvm-c/Orc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <string.h>
#include "codegen/cg.h"
#include "passes/passes.h"
#include "runtime/tensor_impl.h"
#include "runtime/thread_pool.h"

typedef int32_t (*entry_fn)(void **args);

typedef struct spec {
  int64_t batch;
  kiln_graph *g;
  LLVMOrcLLJITRef jit;
  entry_fn entry;
  cg_plan plan;
  void *workspace;
  bool workspace_busy; /* a run holds workspace; a concurrent one allocates its own */
  uint64_t *profile; /* per kernel: nanoseconds, calls (when profiling) */
  kiln_exec_stats times; /* the compile's timings, size and cache outcome */
} spec;

struct kiln_exec {
  kiln_graph *g;
  bool generic_cpu, keep_ir, use_cache;
  bool running; /* an exclusive run is in progress (exec_run) */
  bool concurrent; /* no assignments, no profile: runs from several threads may overlap */
  bool pool_busy;  /* a run holds the thread pool; a concurrent one runs its tasks itself */
  pthread_mutex_t specs_lock; /* specs, nspecs, last_spec; held while a specialisation compiles */
  bool profile, print_profile; /* print_profile: KILN_PROFILE asked, report at free */
  kiln_pass_switches passes;
  size_t last_spec; /* the most recently built, for kiln_exec_get_stats */
  int threads;
  kiln_pool *pool;  /* NULL when single-threaded */
  kiln_parallel par;
  spec **specs; /* pointers: a run keeps its spec while another thread adds one */
  size_t nspecs;
  char *ir;
  const char **in_names;
  uint32_t nuser_out; /* e->g's outputs are the user's, then one per variable assignment */
};

/* A workspace for the specialisation's plan (aligned_alloc wants a multiple of 64). */
static void *workspace_new(const spec *s) { return aligned_alloc(64, (s->plan.workspace + 63) & ~(uint64_t)63); }

static void spec_free(spec *s) {
  if (s->jit) LLVMOrcDisposeLLJIT(s->jit);
  cg_plan_free(&s->plan);
  kiln_graph_free(s->g);
  free(s->workspace);
  free(s->profile);
}

static uint64_t clock_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* An LLJIT holding the objects of `obj` (a compile result, consumed), resolving
 * libc/libm from the process, and its entry. */
static kiln_status load_object(LLVMTargetMachineRef tm, LLVMMemoryBufferRef obj, LLVMOrcLLJITRef *jit, entry_fn *entry) {
  *jit = NULL;
  const char *data = LLVMGetBufferStart(obj);
  size_t size = LLVMGetBufferSize(obj);
  int nobj = cg_objects_count(data, size);
  if (nobj < 1) {
    LLVMDisposeMemoryBuffer(obj);
    LLVMDisposeTargetMachine(tm);
    return kiln_set_error(KILN_ERR_BACKEND, "compile: a malformed set of objects");
  }
  LLVMOrcLLJITBuilderRef jb = LLVMOrcCreateLLJITBuilder();
  LLVMOrcLLJITBuilderSetJITTargetMachineBuilder(jb, LLVMOrcJITTargetMachineBuilderCreateFromTargetMachine(tm));
  LLVMErrorRef err = LLVMOrcCreateLLJIT(jit, jb);
  if (err) {
    LLVMDisposeMemoryBuffer(obj);
    return cg_llvm_error(err, "LLJIT");
  }
  LLVMOrcJITDylibRef dylib = LLVMOrcLLJITGetMainJITDylib(*jit);
  LLVMOrcDefinitionGeneratorRef gen;
  err = LLVMOrcCreateDynamicLibrarySearchGeneratorForProcess(&gen, LLVMOrcLLJITGetGlobalPrefix(*jit), NULL, NULL);
  if (err) {
    LLVMDisposeMemoryBuffer(obj);
    return cg_llvm_error(err, "LLJIT process symbols");
  }
  LLVMOrcJITDylibAddGenerator(dylib, gen);
  for (int q = 0; q < nobj; q++) { /* the JIT takes each buffer it is given */
    const void *o;
    size_t osize;
    cg_objects_get(data, size, q, &o, &osize);
    if ((err = LLVMOrcLLJITAddObjectFile(*jit, dylib, LLVMCreateMemoryBufferWithMemoryRangeCopy(o, osize, "kiln")))) {
      LLVMDisposeMemoryBuffer(obj);
      return cg_llvm_error(err, "LLJIT add object");
    }
  }
  LLVMDisposeMemoryBuffer(obj);
  LLVMOrcExecutorAddress addr;
  if ((err = LLVMOrcLLJITLookup(*jit, &addr, "kiln_entry"))) return cg_llvm_error(err, "LLJIT lookup");
  *entry = (entry_fn)(uintptr_t)addr;
  return KILN_OK;
}

kiln_status cg_emit_object(LLVMModuleRef mod, LLVMTargetMachineRef tm, const char *pipeline, kiln_exec_stats *t,
                           LLVMMemoryBufferRef *obj) {
  double t0 = kiln_pass_clock_ms();
  kiln_status st = cg_optimize_module(mod, tm, pipeline);
  double t1 = kiln_pass_clock_ms();
  t->llvm_opt_ms = t1 - t0;
  if (st != KILN_OK) return st;
  char *msg = NULL;
  if (LLVMTargetMachineEmitToMemoryBuffer(tm, mod, LLVMObjectFile, &msg, obj)) {
    st = kiln_set_error(KILN_ERR_BACKEND, "LLVM code generation: %s", msg ? msg : "failed");
    LLVMDisposeMessage(msg);
    return st;
  }
  t->llvm_codegen_ms = kiln_pass_clock_ms() - t1;
  return KILN_OK;
}

/* Optimises mod and emits its machine code (*obj, the caller's): on the compile
 * threads, except when the optimised IR is wanted as text (one module to print). */
static kiln_status compile_object(const kiln_exec *e, LLVMModuleRef mod, LLVMTargetMachineRef tm, int threads,
                                  cg_function_cache functions, kiln_exec_stats *t, LLVMMemoryBufferRef *obj) {
  if (e->keep_ir) return cg_emit_object(mod, tm, cg_pipeline(), t, obj);
  return cg_compile_parts(mod, tm, e->generic_cpu, threads, functions, t, obj);
}

/* compile_object, the IR text when asked for, and the object stored under *key (NULL: no cache). */
static kiln_status compile_and_store(kiln_exec *e, LLVMModuleRef mod, LLVMTargetMachineRef tm, int threads,
                                     const cg_cache_key *key, cg_function_cache functions, kiln_exec_stats *t,
                                     LLVMMemoryBufferRef *obj) {
  kiln_status st = compile_object(e, mod, tm, threads, key ? functions : CG_FUNCTIONS_INLINE, t, obj);
  if (st == KILN_OK && e->keep_ir) {
    char *ir = LLVMPrintModuleToString(mod);
    free(e->ir);
    e->ir = strdup(ir);
    LLVMDisposeMessage(ir);
  }
  if (st == KILN_OK && key) cg_cache_store(CG_ENTRY_MODULE, *key, LLVMGetBufferStart(*obj), LLVMGetBufferSize(*obj));
  return st;
}

/* obj (consumed) into s's JIT, which gets its own target machine configured like the
 * one used for optimisation. */
static kiln_status jit_load(const kiln_exec *e, LLVMMemoryBufferRef obj, spec *s) {
  LLVMTargetMachineRef jit_tm = cg_target_machine(NULL, e->generic_cpu ? "generic" : "native", NULL);
  if (!jit_tm) {
    LLVMDisposeMemoryBuffer(obj);
    return KILN_ERR_BACKEND;
  }
  return load_object(jit_tm, obj, &s->jit, &s->entry);
}

static void print_compile_stats(const spec *s) {
  const kiln_exec_stats *t = &s->times;
  static const char *const outcome[] = {"off", "miss", "hit"};
  char shared[64] = "";
  if (t->functions_from_cache) snprintf(shared, sizeof shared, " (%zu shared functions from it)", t->functions_from_cache);
  fprintf(stderr, "kiln: compile: %.1f ms (passes %.1f, lower %.1f, llvm opt %.1f, codegen %.1f, jit load %.1f); "
                  "%zu functions, %zu instructions, %llu bytes of code; cache %s%s\n",
          t->compile_ms, t->passes_ms, t->lower_ms, t->llvm_opt_ms, t->llvm_codegen_ms, t->jit_load_ms,
          t->llvm_functions, t->llvm_instructions, (unsigned long long)t->object_bytes, outcome[t->cache], shared);
}

/* threads: how many the compile may use (cg_compile_threads, or fewer ahead of use). */
static kiln_status build_spec(kiln_exec *e, int64_t batch, int threads, spec *s) {
  memset(s, 0, sizeof *s);
  s->batch = batch;
  kiln_exec_stats *t = &s->times;
  double t0 = kiln_pass_clock_ms();
  s->g = kiln_optimize_graph(kiln_graph_specialize(e->g, batch), &e->passes);
  if (!s->g) return KILN_ERR_INVALID;
  for (uint32_t i = 0; i < s->g->nnodes; i++)
    if (kiln_shape_numel(s->g->nodes[i].rank, s->g->nodes[i].dims) < 0)
      return kiln_set_error(KILN_ERR_INVALID, "compile: %%%u has a symbolic dim that no input binds", i);
  double t1 = kiln_pass_clock_ms();
  t->passes_ms = t1 - t0;

  if (e->profile && !(s->profile = calloc(2 * ((size_t)s->g->nnodes + 1), sizeof *s->profile)))
    return kiln_set_error(KILN_ERR_NOMEM, "compile: out of memory");
  cg c = {.g = s->g, .no_memory_plan = e->passes.no_memory_plan, .no_fusion = e->passes.no_fusion,
          .no_epilogue = e->passes.no_epilogue, .const_args = true, .threads = e->threads, .profile = s->profile,
          .profile_clock = s->profile ? clock_ns : NULL};
  LLVMTargetMachineRef tm = cg_target_machine(NULL, e->generic_cpu ? "generic" : "native", &c.vec_bytes);
  if (!tm) return KILN_ERR_BACKEND;
  LLVMContextRef ctx = LLVMContextCreate();
  c.ctx = ctx;
  c.mod = LLVMModuleCreateWithNameInContext("kiln", c.ctx);
  c.b = LLVMCreateBuilderInContext(c.ctx);
  cg_init_types(&c);
  kiln_status st = cg_lower(&c, "kiln_entry", &s->plan);
  LLVMDisposeBuilder(c.b);
  if (st == KILN_OK) st = cg_target_module(c.mod, tm);
  double t2 = kiln_pass_clock_ms();
  t->lower_ms = t2 - t1;
  cg_module_size(c.mod, &t->llvm_functions, &t->llvm_instructions);

  /* Host addresses in profiling code and the IR text asked for rule the cache out. */
  bool use_cache = st == KILN_OK && e->use_cache && !s->profile && !e->keep_ir;
  cg_cache_key key = {0, 0};
  if (use_cache && cg_cache_key_of(c.mod, tm, cg_pipeline(), &key) != KILN_OK) use_cache = false;
  t->cache = use_cache ? KILN_CACHE_MISS : KILN_CACHE_OFF;
  LLVMMemoryBufferRef obj = NULL;
  void *cached = NULL;
  size_t cached_size = 0;
  if (use_cache && cg_cache_load(CG_ENTRY_MODULE, key, &cached, &cached_size)) {
    obj = LLVMCreateMemoryBufferWithMemoryRangeCopy(cached, cached_size, "kiln_entry");
    free(cached);
    t->cache = KILN_CACHE_HIT;
  } else if (st == KILN_OK) {
    /* Only a miss verifies: a hit's bitcode, the key, was verified when it was compiled
     * (a sixth of a warm cnn-train compile). */
    if (use_cache) cg_cache_count_miss();
    st = cg_verify_module(c.mod);
    if (st == KILN_OK) st = compile_and_store(e, c.mod, tm, threads, use_cache ? &key : NULL, CG_FUNCTIONS_REUSE, t, &obj);
  }
  double t3 = kiln_pass_clock_ms();
  if (st == KILN_OK) {
    t->object_bytes = LLVMGetBufferSize(obj);
    st = jit_load(e, obj, s);
  }
  if (st != KILN_OK && (t->cache == KILN_CACHE_HIT || t->functions_from_cache)) {
    /* an entry that passed its checksum but does not link: compile it afresh, and
     * the shared functions too, over what the cache has */
    if (t->cache == KILN_CACHE_HIT) cg_cache_reject(CG_ENTRY_MODULE, key, "does not load");
    else fprintf(stderr, "kiln: shared functions from the compile cache do not load; recompiling them\n");
    if (s->jit) LLVMOrcDisposeLLJIT(s->jit), s->jit = NULL;
    t->cache = KILN_CACHE_MISS;
    t->functions_from_cache = 0;
    st = cg_verify_module(c.mod);
    if (st == KILN_OK) st = compile_and_store(e, c.mod, tm, threads, &key, CG_FUNCTIONS_REFRESH, t, &obj);
    if (st == KILN_OK) t->object_bytes = LLVMGetBufferSize(obj), st = jit_load(e, obj, s);
  }
  LLVMDisposeModule(c.mod);
  LLVMContextDispose(ctx);
  LLVMDisposeTargetMachine(tm);
  if (st != KILN_OK) return st;
  double t4 = kiln_pass_clock_ms();
  t->jit_load_ms = t4 - t3;
  t->compile_ms = t4 - t0;
  if (kiln_pass_stats_on()) print_compile_stats(s);
  s->workspace = workspace_new(s);
  if (!s->workspace)
    return kiln_set_error(KILN_ERR_NOMEM, "compile: cannot allocate a workspace of %llu bytes", (unsigned long long)s->plan.workspace);
  return KILN_OK;
}

static kiln_status add_spec(kiln_exec *e, int64_t batch, int threads, spec **out);

kiln_status kiln_compile(const kiln_graph *g, const kiln_compile_options *opts, kiln_exec **out) {
  if (!out) return kiln_set_error(KILN_ERR_INVALID, "compile: out is NULL");
  *out = NULL;
  if (!g) return kiln_set_error(KILN_ERR_INVALID, "compile: null graph");
  if (g->status != KILN_OK) return kiln_set_error(g->status, "%s", g->errmsg);
  if (g->noutputs == 0) return kiln_set_error(KILN_ERR_INVALID, "compile: the graph has no outputs (use kiln_output)");
  kiln_status st = kiln_graph_verify(g);
  if (st != KILN_OK) return st;
  kiln_exec *e = calloc(1, sizeof *e);
  if (!e) return kiln_set_error(KILN_ERR_NOMEM, "compile: out of memory");
  pthread_mutex_init(&e->specs_lock, NULL);
  e->g = kiln_graph_for_run(g, -1);
  e->nuser_out = g->noutputs;
  if (!e->g) {
    free(e);
    return KILN_ERR_INVALID;
  }
  const char *env = getenv("KILN_PROFILE");
  e->print_profile = env && *env && strcmp(env, "0");
  e->profile = e->print_profile || (opts && opts->profile);
  e->use_cache = cg_cache_enabled() && !(opts && opts->no_cache);
  /* Assignments change variables after a run; two runs at once would race on them. */
  e->concurrent = !e->profile && e->g->noutputs == e->nuser_out;
  if (opts) {
    e->keep_ir = opts->keep_ir;
    if (opts->cpu && strcmp(opts->cpu, "native")) {
      if (strcmp(opts->cpu, "generic")) {
        kiln_exec_free(e);
        return kiln_set_error(KILN_ERR_INVALID, "compile: cpu must be \"native\" or \"generic\", got \"%s\"", opts->cpu);
      }
      e->generic_cpu = true;
    }
  }
  /* an unknown pass name is an error rather than a silent full pipeline */
  if ((st = kiln_passes_disabled(opts ? opts->disable_passes : NULL, &e->passes)) != KILN_OK ||
      (st = kiln_thread_count(opts ? opts->threads : 0, &e->threads)) != KILN_OK) {
    kiln_exec_free(e);
    return kiln_set_error(st, "compile: %s", kiln_errmsg());
  }
  if (e->threads > 1) {
    if (!(e->pool = kiln_pool_new(e->threads))) {
      kiln_exec_free(e);
      return KILN_ERR_RUNTIME;
    }
    e->par = kiln_pool_parallel(e->pool);
  }
  uint32_t np = (uint32_t)kiln_graph_num_inputs(e->g), k = 0;
  e->in_names = calloc(np + 1, sizeof *e->in_names);
  if (!e->in_names) {
    kiln_exec_free(e);
    return kiln_set_error(KILN_ERR_NOMEM, "compile: out of memory");
  }
  bool symbolic = false;
  for (uint32_t i = 0; i < e->g->nnodes; i++) {
    const kiln_node *n = &e->g->nodes[i];
    if (n->op == KILN_OP_PARAM && !kiln_node_is_variable(n)) {
      e->in_names[k++] = n->name;
      for (int d = 0; d < n->rank; d++) symbolic |= n->dims[d] < 0;
    }
  }
  /* A static graph is compiled now, so compile errors surface from kiln_compile. */
  if (!symbolic) {
    spec *s;
    if ((st = add_spec(e, -1, cg_compile_threads(), &s)) != KILN_OK) {
      kiln_exec_free(e);
      return st;
    }
  }
  *out = e;
  return KILN_OK;
}

void kiln_exec_free(kiln_exec *e) {
  if (!e) return;
  for (size_t i = 0; e->print_profile && i < e->nspecs; i++) {
    char *text = NULL;
    if (cg_profile_text(e->specs[i]->g, &e->specs[i]->plan, e->specs[i]->profile, &text) == KILN_OK)
      fprintf(stderr, "%s", text);
    free(text);
  }
  for (size_t i = 0; i < e->nspecs; i++) spec_free(e->specs[i]), free(e->specs[i]);
  free(e->specs);
  pthread_mutex_destroy(&e->specs_lock);
  free(e->ir);
  free(e->in_names);
  kiln_pool_free(e->pool);
  kiln_graph_free(e->g);
  free(e);
}

size_t kiln_exec_num_inputs(const kiln_exec *e) { return kiln_graph_num_inputs(e->g); }
size_t kiln_exec_num_outputs(const kiln_exec *e) { return e->nuser_out; }
const char *kiln_exec_input_name(const kiln_exec *e, size_t i) {
  return i < kiln_exec_num_inputs(e) ? e->in_names[i] : NULL;
}
const char *kiln_exec_output_name(const kiln_exec *e, size_t i) {
  return i < e->nuser_out ? e->g->outputs[i].name : NULL;
}
const char *kiln_exec_llvm_ir(const kiln_exec *e) { return e->ir; }

kiln_status kiln_exec_get_stats(const kiln_exec *e, kiln_exec_stats *out) {
  if (!e || !out) return kiln_set_error(KILN_ERR_INVALID, "exec_get_stats: NULL argument");
  if (!e->nspecs) return kiln_set_error(KILN_ERR_INVALID, "exec_get_stats: nothing compiled yet (the batch size is not known before a run)");
  pthread_mutex_lock((pthread_mutex_t *)&e->specs_lock);
  const cg_plan *p = &e->specs[e->last_spec]->plan;
  *out = e->specs[e->last_spec]->times;
  pthread_mutex_unlock((pthread_mutex_t *)&e->specs_lock);
  out->kernels = p->kernels, out->fused_nodes = p->fused, out->workspace_bytes = p->workspace;
  out->unplanned_bytes = p->buffers_unplanned, out->bytes_moved = p->bytes_moved;
  return KILN_OK;
}

kiln_status kiln_exec_profile(const kiln_exec *e, char **text) {
  if (!e || !text) return kiln_set_error(KILN_ERR_INVALID, "exec_profile: NULL argument");
  *text = NULL;
  if (!e->profile) return kiln_set_error(KILN_ERR_INVALID, "exec_profile: compiled without profile (kiln_compile_options.profile or KILN_PROFILE=1)");
  if (!e->nspecs) return kiln_set_error(KILN_ERR_INVALID, "exec_profile: nothing compiled yet (the batch size is not known before a run)");
  const spec *s = e->specs[e->last_spec];
  return cg_profile_text(s->g, &s->plan, s->profile, text);
}

/* Compiles the specialisation for batch and appends it (specs_lock held or no other thread). */
static kiln_status add_spec(kiln_exec *e, int64_t batch, int threads, spec **out) {
  spec *s = calloc(1, sizeof *s), **ns = s ? realloc(e->specs, sizeof *ns * (e->nspecs + 1)) : NULL;
  if (ns) e->specs = ns;
  if (!ns) {
    free(s);
    return kiln_set_error(KILN_ERR_NOMEM, "run: out of memory");
  }
  kiln_status st = build_spec(e, batch, threads, s);
  if (st != KILN_OK) {
    spec_free(s);
    free(s);
    return st;
  }
  e->last_spec = e->nspecs;
  e->specs[e->nspecs++] = s;
  *out = s;
  return KILN_OK;
}

/* threads: for a compile, if one is needed; 0 for cg_compile_threads, which reads
 * /sys (5-7 us on our VMs: as much as a small model's whole run) and so is asked
 * only then. */
static kiln_status find_spec(kiln_exec *e, int64_t batch, int threads, spec **out) {
  pthread_mutex_lock(&e->specs_lock);
  kiln_status st = KILN_OK;
  *out = NULL;
  for (size_t i = 0; i < e->nspecs && !*out; i++)
    if (e->specs[i]->batch == batch) *out = e->specs[i];
  if (!*out) st = add_spec(e, batch, threads > 0 ? threads : cg_compile_threads(), out);
  pthread_mutex_unlock(&e->specs_lock);
  return st;
}

kiln_status kiln_exec_batch_of(kiln_exec *e, const kiln_tensor *const *inputs, size_t nin, int64_t *batch) {
  uint32_t np = kiln_graph_num_params(e->g);
  const kiln_tensor **full = calloc(np + 1, sizeof *full);
  if (!full) return kiln_set_error(KILN_ERR_NOMEM, "compile: out of memory");
  kiln_status st = kiln_bind_inputs(e->g, inputs, nin, full);
  if (st == KILN_OK) st = kiln_check_inputs(e->g, full, np, batch);
  free(full);
  return st;
}

int kiln_exec_spare_threads(const kiln_exec *e) { return cg_compile_threads() - e->threads; }

kiln_status kiln_exec_compile_ahead(kiln_exec *e, int64_t batch) {
  int threads = kiln_exec_spare_threads(e);
  spec *s;
  return find_spec(e, batch, threads < 1 ? 1 : threads, &s);
}

/* Runs with every param bound (inputs) and every output, assignments included, requested. */
/* outputs[j] for j < given are the caller's tensors, checked against the graph; the rest are made here. */
static kiln_status run_bound(kiln_exec *e, const kiln_tensor *const *inputs, size_t nin, kiln_tensor **outputs,
                             size_t nout, size_t given) {
  int64_t batch;
  kiln_status st = kiln_check_inputs(e->g, inputs, nin, &batch);
  if (st != KILN_OK) return st;
  spec *s = NULL;
  st = find_spec(e, batch, 0, &s);
  if (st != KILN_OK) return st;
  const kiln_graph *g = s->g;
  void **args = calloc(nin + nout + 2 + s->plan.nconst_args, sizeof *args);
  if (!args) return kiln_set_error(KILN_ERR_NOMEM, "run: out of memory");
  for (size_t i = 0; i < nin; i++) args[i] = inputs[i]->data;
  for (size_t j = 0; j < nout && st == KILN_OK; j++) {
    const kiln_node *n = &g->nodes[g->outputs[j].node];
    if (j < given) {
      const kiln_tensor *o = outputs[j];
      char want[96];
      if (!o || o->dtype != n->dtype || o->rank != n->rank || memcmp(o->dims, n->dims, sizeof(int64_t) * (size_t)n->rank))
        st = kiln_set_error(KILN_ERR_INVALID, "run: output %zu must be a %s tensor of shape %s", j,
                            kiln_dtype_name((kiln_dtype)n->dtype), kiln_shape_str(want, sizeof want, n->rank, n->dims));
      /* not zeroed first: the kernels write every element, which the test suite keeps
       * true by running with KILN_POISON_OUTPUTS=1 (outputs start as 0xff bytes, NaN) */
    } else if (!(outputs[j] = kiln_tensor_uninit((kiln_dtype)n->dtype, n->rank, n->dims))) {
      st = KILN_ERR_NOMEM;
    } else if (getenv("KILN_POISON_OUTPUTS")) {
      memset(outputs[j]->data, 0xff, outputs[j]->nbytes);
    }
    if (st == KILN_OK) args[nin + j] = outputs[j]->data;
  }
  /* A concurrent run gets its own workspace (one allocation per such run) and runs
   * its tasks on its own thread when another run holds the pool. */
  bool own_ws = !__atomic_exchange_n(&s->workspace_busy, true, __ATOMIC_ACQUIRE);
  void *ws = own_ws ? s->workspace : workspace_new(s);
  bool own_pool = e->pool && !__atomic_exchange_n(&e->pool_busy, true, __ATOMIC_ACQUIRE);
  if (!ws) st = kiln_set_error(KILN_ERR_NOMEM, "run: cannot allocate a workspace of %llu bytes", (unsigned long long)s->plan.workspace);
  args[nin + nout] = ws;
  args[nin + nout + 1] = own_pool ? &e->par : NULL;
  for (uint32_t k = 0; k < s->plan.nconst_args; k++) args[nin + nout + 2 + k] = (void *)s->plan.const_data[k]; /* read only */
  if (st == KILN_OK) {
    int32_t rc = s->entry(args);
    if (rc) {
      const kiln_node *n = &g->nodes[rc - 1];
      const kiln_node *x = &g->nodes[n->inputs[0]];
      int64_t axis = kiln_attr_int(n, KILN_ATTR_AXIS, 0);
      int64_t size = n->op == KILN_OP_GATHER ? x->dims[axis] : n->dims[axis];
      st = kiln_set_error(KILN_ERR_RUNTIME, "%s (node %%%d): an index is out of range for axis %lld of size %lld",
                          kiln_ops[n->op].name, rc - 1, (long long)axis, (long long)size);
    }
  }
  if (own_pool) __atomic_store_n(&e->pool_busy, false, __ATOMIC_RELEASE);
  if (own_ws) __atomic_store_n(&s->workspace_busy, false, __ATOMIC_RELEASE);
  else free(ws);
  /* Outputs the generated code does not write: params, constants, repeated values. */
  for (size_t j = 0; j < nout && st == KILN_OK; j++) {
    if (s->plan.out_direct[j]) continue;
    uint32_t node = g->outputs[j].node;
    const kiln_node *n = &g->nodes[node];
    const buf_loc *l = &s->plan.locs[node];
    const void *src = NULL;
    if (l->kind == BUF_INPUT) src = inputs[l->index]->data;
    else if (l->kind == BUF_CONST) src = n->data;
    else if (l->kind == BUF_OUTPUT) src = outputs[l->index]->data;
    KILN_ASSERT(src);
    memcpy(outputs[j]->data, src, outputs[j]->nbytes);
  }
  free(args);
  if (st != KILN_OK)
    for (size_t j = given; j < nout; j++) kiln_tensor_free(outputs[j]), outputs[j] = NULL;
  return st;
}

static kiln_status exec_run_owned(kiln_exec *e, const kiln_tensor *const *inputs, size_t nin, kiln_tensor **outputs,
                                  size_t nout, size_t given);

/* An inference exec runs from any number of threads at once (the first run holds the
 * workspace and the pool, later ones allocate a workspace and run serially). An exec
 * that assigns variables or profiles runs one call at a time: a second thread gets an
 * error instead of a data race. */
static kiln_status exec_run(kiln_exec *e, const kiln_tensor *const *inputs, size_t nin, kiln_tensor **outputs,
                            size_t nout, size_t given) {
  if (!e) return kiln_set_error(KILN_ERR_INVALID, "run: null exec");
  if (e->concurrent) return exec_run_owned(e, inputs, nin, outputs, nout, given);
  if (__atomic_exchange_n(&e->running, true, __ATOMIC_ACQUIRE))
    return kiln_set_error(KILN_ERR_INVALID, "run: this kiln_exec is already running on another thread; a kiln_exec "
                                            "that assigns variables (a train step) or profiles runs one call at a time "
                                            "(compile one per thread, or serialize the calls)");
  kiln_status st = exec_run_owned(e, inputs, nin, outputs, nout, given);
  __atomic_store_n(&e->running, false, __ATOMIC_RELEASE);
  return st;
}

/* outputs[0, given) are the caller's tensors; the rest are made here. */
static kiln_status exec_run_owned(kiln_exec *e, const kiln_tensor *const *inputs, size_t nin, kiln_tensor **outputs,
                                  size_t nout, size_t given) {
  if (nout != e->nuser_out)
    return kiln_set_error(KILN_ERR_INVALID, "run: the graph has %u outputs, %zu requested", e->nuser_out, nout);
  if (!outputs) return kiln_set_error(KILN_ERR_INVALID, "run: the outputs array is NULL");
  for (size_t j = given; j < nout; j++) outputs[j] = NULL;
  uint32_t np = kiln_graph_num_params(e->g), nall = e->g->noutputs;
  const kiln_tensor **full = calloc(np + 1, sizeof *full);
  kiln_tensor **all = calloc(nall + 1, sizeof *all);
  kiln_status st = full && all ? KILN_OK : kiln_set_error(KILN_ERR_NOMEM, "run: out of memory");
  if (st == KILN_OK) memcpy(all, outputs, given * sizeof *all);
  if (st == KILN_OK) st = kiln_bind_inputs(e->g, inputs, nin, full);
  if (st == KILN_OK) st = run_bound(e, full, np, all, nall, given);
  /* Variables change only after the whole step succeeded. */
  if (st == KILN_OK) st = kiln_apply_assigns(e->g, all + nout);
  for (size_t j = 0; all && j < nall; j++) {
    if (j < given) continue;
    if (j < nout && st == KILN_OK) outputs[j] = all[j];
    else kiln_tensor_free(all[j]);
  }
  free(full);
  free(all);
  return st;
}

kiln_status kiln_exec_run(kiln_exec *e, const kiln_tensor *const *inputs, size_t nin, kiln_tensor **outputs, size_t nout) {
  return exec_run(e, inputs, nin, outputs, nout, 0);
}

kiln_status kiln_exec_run_given(kiln_exec *e, const kiln_tensor *const *inputs, size_t nin, kiln_tensor **outputs,
                                size_t nout, size_t given) {
  return exec_run(e, inputs, nin, outputs, nout, given < nout ? given : nout);
}

kiln_status kiln_exec_run_into(kiln_exec *e, const kiln_tensor *const *inputs, size_t nin, kiln_tensor *const *outputs,
                               size_t nout) {
  return exec_run(e, inputs, nin, (kiln_tensor **)outputs, nout, nout);
}

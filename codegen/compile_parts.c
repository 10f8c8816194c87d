/* One module compiled on several threads.
 *
 * LLVM's optimiser and code generator run per context, and a context belongs to
 * one thread, so the module goes through bitcode into one fresh context per part.
 * Each part keeps the bodies of its share of the functions and declares the rest;
 * the parts' objects are linked by the JIT like a program's objects.
 *
 * The units (assign_parts): kiln_entry, each kernel it calls, each shared noinline
 * function (micro-kernels, packing, GEMM drivers, depthwise blocks), each with the
 * helpers only it uses. Units go to parts largest first, each to the least loaded
 * part (by instruction count). A unit called from another part loses internal
 * linkage (hidden visibility keeps the call direct) and with it being inlined: a
 * call per kernel per run, and nothing the kernels' loops depend on.
 *
 * Shared functions come from the compile cache when an earlier compile, of any
 * graph, made them (cg_function_cache): each is cut out into a module of its own
 * (strip_to_unit: its body, declarations of what it calls in name order, nothing
 * else), keyed by that module's bitcode, so the same micro-kernel or GEMM driver
 * lowered for another graph finds the same entry; the rest of the module declares
 * it. Evaluation after a train step, another variant of a model, a layer resized:
 * only their own kernels reach LLVM. Missing ones compile as jobs beside the parts
 * and are stored.
 *
 * The objects travel as one buffer (cg_objects_*) so that the compile cache and the
 * JIT see one result whatever the number of parts. */
#include <llvm-c/BitReader.h>
#include <llvm-c/BitWriter.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "codegen/cg.h"
#include "passes/passes.h"

/* Below this many instructions a module compiles in a few tens of milliseconds and
 * the bitcode round trip and thread start would eat the gain. */
enum { PARTS_MIN_INSTRUCTIONS = 1500, PARTS_MAX = 8, OBJECTS_MAX = 256 };
/* owner[] of a function compiled in a shared function's own object */
enum { OWNED_BY_SHARED = -2 };

static const char objects_magic[8] = {'K', 'I', 'L', 'N', 'O', 'B', 'J', 'S'};

int cg_compile_threads(void) {
  const char *env = getenv("KILN_COMPILE_THREADS");
  long n = env && *env ? strtol(env, NULL, 10) : sysconf(_SC_NPROCESSORS_ONLN);
  return n < 1 ? 1 : n > PARTS_MAX ? PARTS_MAX : (int)n;
}

static bool is_noinline(LLVMValueRef fn) {
  return LLVMGetEnumAttributeAtIndex(fn, LLVMAttributeFunctionIndex, LLVMGetEnumAttributeKindForName("noinline", 8)) != NULL;
}

/* One compile job: a part of the module (owner: the functions it compiles), or one
 * shared function (unit >= 0: the root of its unit), looked up in the cache first. */
typedef struct {
  int index;
  const int *owner;     /* per function in module order: its part, -1 for declarations, OWNED_BY_SHARED */
  const bool *exported; /* per function: called from outside its part or unit */
  const long *root;     /* per function: its unit's root */
  long unit;
  bool reuse; /* a shared function: take it from the cache when there */
  size_t nfns;
  LLVMMemoryBufferRef bitcode; /* the module's, read only */
  size_t instructions;         /* for ordering the jobs, largest first */
  LLVMMemoryBufferRef obj;
  bool from_cache;
  kiln_status st;
  char err[512];
  char name[64]; /* the shared function's, for KILN_PASS_STATS=jobs */
  double read_ms, opt_ms, codegen_ms;
} part;

/* fn's calls go to a declaration of the same name from now on; fn is gone. */
static bool make_declaration(LLVMModuleRef m, LLVMValueRef fn) {
  size_t len;
  char *name = strdup(LLVMGetValueName2(fn, &len));
  if (!name) return false;
  LLVMValueRef decl = LLVMAddFunction(m, "", LLVMGlobalGetValueType(fn));
  LLVMSetVisibility(decl, LLVMHiddenVisibility); /* defined in another part: a direct call */
  LLVMReplaceAllUsesWith(fn, decl);
  LLVMDeleteFunction(fn);
  LLVMSetValueName2(decl, name, strlen(name));
  free(name);
  return true;
}

static kiln_status fail_part(part *p, kiln_status st) {
  snprintf(p->err, sizeof p->err, "%s", kiln_errmsg());
  return p->st = st;
}

/* The function containing instruction-user `user`, as an index into fns; -1 if none. */
static long user_fn(LLVMValueRef user, LLVMValueRef *fns, size_t nfns) {
  if (!LLVMIsAInstruction(user)) return -1;
  LLVMValueRef by = LLVMGetBasicBlockParent(LLVMGetInstructionParent(user));
  for (size_t j = 0; j < nfns; j++)
    if (fns[j] == by) return (long)j;
  return -1;
}

/* root[i]: the unit function i belongs to (index into fns), -1 for declarations.
 * Units: kiln_entry, each kernel it calls and each shared noinline function, with
 * the helpers (task bodies, epilogues) only their unit uses. */
static void unit_roots(LLVMValueRef *fns, size_t nfns, long *root) {
  size_t entry = SIZE_MAX;
  for (size_t i = 0; i < nfns; i++) {
    size_t len;
    if (!strcmp(LLVMGetValueName2(fns[i], &len), "kiln_entry")) entry = i;
  }
  for (size_t i = 0; i < nfns; i++) {
    root[i] = LLVMIsDeclaration(fns[i]) ? -1 : (long)i;
    if (root[i] < 0 || is_noinline(fns[i]) || i == entry) continue;
    LLVMUseRef u = LLVMGetFirstUse(fns[i]);
    long by = u ? user_fn(LLVMGetUser(u), fns, nfns) : -1;
    if (by >= 0 && (size_t)by != entry) root[i] = by; /* a helper: resolved to its unit below */
  }
  for (size_t i = 0; i < nfns; i++) {
    long r = root[i];
    for (int hops = 0; r >= 0 && root[r] != r && hops < 64; hops++) r = root[r];
    root[i] = root[i] >= 0 ? r : -1;
  }
}

/* owner[i] for the functions into nparts parts, and which of them other parts call
 * (exported[i]); returns how many parts got work. Units whose root is marked in
 * `apart` are compiled on their own: OWNED_BY_SHARED. Kernels are called once, so
 * leaving them out of line in another part costs a call per run. */
static int assign_parts(LLVMValueRef *fns, const long *root, const bool *apart, int nparts, int *owner, bool *exported,
                        size_t nfns) {
  size_t *weight = calloc(nfns, sizeof *weight), load[PARTS_MAX] = {0};
  int used = 0;
  if (!weight) return 0;
  for (size_t i = 0; i < nfns; i++) {
    owner[i] = -1;
    if (root[i] >= 0 && !apart[root[i]]) weight[root[i]] += cg_fn_instructions(fns[i]);
  }
  /* largest unit first, each to the least loaded part */
  for (;;) {
    size_t best = SIZE_MAX, wmax = 0;
    for (size_t i = 0; i < nfns; i++)
      if (weight[i] > wmax) wmax = weight[i], best = i;
    if (best == SIZE_MAX) break;
    int lightest = 0;
    for (int q = 1; q < nparts; q++)
      if (load[q] < load[lightest]) lightest = q;
    owner[best] = lightest;
    load[lightest] += weight[best];
    weight[best] = 0;
  }
  for (size_t i = 0; i < nfns; i++)
    if (root[i] >= 0) owner[i] = apart[root[i]] ? OWNED_BY_SHARED : owner[root[i]] < 0 ? 0 : owner[root[i]];
  /* which definitions another part or shared function refers to: those lose internal linkage */
  for (size_t i = 0; i < nfns; i++) {
    exported[i] = false;
    if (root[i] < 0) continue;
    for (LLVMUseRef u = LLVMGetFirstUse(fns[i]); u && !exported[i]; u = LLVMGetNextUse(u)) {
      long by = user_fn(LLVMGetUser(u), fns, nfns);
      exported[i] = by < 0 || (apart[root[i]] || apart[root[by]] ? root[by] != root[i] : owner[by] != owner[i]);
    }
  }
  for (int q = 0; q < nparts; q++) used += load[q] > 0;
  free(weight);
  return used;
}

/* Declarations in name order, after the definitions: a shared function's module then
 * does not depend on the order in which the graph's lowering first used them. */
static bool sort_declarations(LLVMModuleRef m) {
  size_t n = 0, cap = 16;
  LLVMValueRef *decl = malloc(cap * sizeof *decl);
  for (LLVMValueRef f = LLVMGetFirstFunction(m); f && decl; f = LLVMGetNextFunction(f)) {
    if (!LLVMIsDeclaration(f)) continue;
    if (n == cap) {
      LLVMValueRef *nd = realloc(decl, (cap *= 2) * sizeof *decl);
      if (!nd) free(decl);
      decl = nd;
      if (!decl) break;
    }
    decl[n++] = f;
  }
  if (!decl) return false;
  for (size_t i = 1; i < n; i++) /* insertion sort by name: a handful */
    for (size_t j = i; j > 0; j--) {
      size_t la, lb;
      const char *a = LLVMGetValueName2(decl[j - 1], &la), *b = LLVMGetValueName2(decl[j], &lb);
      if (strcmp(a, b) <= 0) break;
      LLVMValueRef t = decl[j - 1];
      decl[j - 1] = decl[j], decl[j] = t;
    }
  bool ok = true;
  for (size_t i = 0; i < n && ok; i++) {
    size_t len;
    char *name = strdup(LLVMGetValueName2(decl[i], &len));
    ok = name != NULL;
    if (!ok) break;
    LLVMSetValueName2(decl[i], "", 0);
    /* made under its name: an intrinsic gets its attributes from it */
    LLVMValueRef nf = LLVMAddFunction(m, name, LLVMGlobalGetValueType(decl[i]));
    free(name);
    LLVMSetVisibility(nf, LLVMGetVisibility(decl[i]));
    unsigned nparams = LLVMCountParams(decl[i]);
    for (long idx = -1; idx <= (long)nparams; idx++) {
      LLVMAttributeIndex ai = idx < 0 ? (LLVMAttributeIndex)LLVMAttributeFunctionIndex : (LLVMAttributeIndex)idx;
      unsigned na = LLVMGetAttributeCountAtIndex(decl[i], ai);
      LLVMAttributeRef attrs[64];
      if (na > 64) na = 0; /* never seen: keep LLVM's defaults */
      if (na) LLVMGetAttributesAtIndex(decl[i], ai, attrs);
      for (unsigned k = 0; k < na; k++) LLVMAddAttributeAtIndex(nf, ai, attrs[k]);
    }
    LLVMReplaceAllUsesWith(decl[i], nf);
    LLVMDeleteFunction(decl[i]);
  }
  free(decl);
  return ok;
}

/* m (a shared function's unit, the rest declared) without what only the rest used,
 * its declarations in name order: the same function lowered for another graph gives
 * the same bitcode, hence the same cache key. */
static void strip_to_unit(LLVMModuleRef m) {
  for (LLVMValueRef f = LLVMGetFirstFunction(m), next; f; f = next) {
    next = LLVMGetNextFunction(f);
    if (LLVMIsDeclaration(f) && !LLVMGetFirstUse(f)) LLVMDeleteFunction(f);
  }
  for (LLVMValueRef gl = LLVMGetFirstGlobal(m), next; gl; gl = next) {
    next = LLVMGetNextGlobal(gl);
    if (!LLVMGetFirstUse(gl)) LLVMDeleteGlobal(gl);
  }
  sort_declarations(m); /* on failure only the key differs: a miss */
}

/* The shared function's key; its object from the cache into p->obj when there (and
 * p->reuse); else true: compile and store it under *key. */
static bool from_cache_or_store(part *p, LLVMModuleRef m, LLVMTargetMachineRef tm, const char *pipeline,
                                cg_cache_key *key) {
  LLVMMemoryBufferRef bc = LLVMWriteBitcodeToMemoryBuffer(m);
  if (!bc) return false;
  cg_cache_key_of_bitcode(LLVMGetBufferStart(bc), LLVMGetBufferSize(bc), tm, pipeline, key);
  LLVMDisposeMemoryBuffer(bc);
  void *data;
  size_t size;
  if (p->reuse && cg_cache_load(CG_ENTRY_FUNCTION, *key, &data, &size)) {
    p->obj = LLVMCreateMemoryBufferWithMemoryRangeCopy(data, size, "kiln shared function");
    free(data);
    p->from_cache = p->obj != NULL;
    return false;
  }
  return true;
}

static void compile_part(part *p, LLVMTargetMachineRef tm) {
  double t0 = kiln_pass_clock_ms();
  LLVMContextRef ctx = LLVMContextCreate();
  LLVMModuleRef m = NULL;
  if (LLVMParseBitcodeInContext2(ctx, p->bitcode, &m)) {
    fail_part(p, kiln_set_error(KILN_ERR_BACKEND, "compile part %d: cannot read the module's bitcode", p->index));
    LLVMContextDispose(ctx);
    return;
  }
  /* Collect first: make_declaration changes the function list. */
  LLVMValueRef *fns = malloc((p->nfns + 1) * sizeof *fns);
  size_t n = 0;
  for (LLVMValueRef f = LLVMGetFirstFunction(m); f && fns; f = LLVMGetNextFunction(f))
    if (n++ < p->nfns) fns[n - 1] = f;
  bool ok = fns && n == p->nfns;
  if (!ok)
    fail_part(p, kiln_set_error(fns ? KILN_ERR_BACKEND : KILN_ERR_NOMEM, "compile part %d: %s", p->index,
                                fns ? "the bitcode's functions differ from the module's" : "out of memory"));
  for (size_t i = 0; i < n && ok; i++) {
    if (LLVMIsDeclaration(fns[i])) continue;
    if (p->unit >= 0 ? p->root[i] != p->unit : p->owner[i] != p->index) {
      ok = make_declaration(m, fns[i]);
      if (!ok) fail_part(p, kiln_set_error(KILN_ERR_NOMEM, "compile part %d: out of memory", p->index));
    } else if (p->exported[i]) {
      LLVMSetLinkage(fns[i], LLVMExternalLinkage);
      LLVMSetVisibility(fns[i], LLVMHiddenVisibility);
    }
  }
  if (ok && p->unit >= 0) {
    size_t len;
    snprintf(p->name, sizeof p->name, "%s", LLVMGetValueName2(fns[p->unit], &len));
  }
  cg_cache_key key;
  bool store = false;
  const char *pipeline = ok && p->unit >= 0 && cg_is_light(fns[p->unit]) ? cg_light_pipeline() : cg_pipeline();
  if (ok && p->unit >= 0) {
    strip_to_unit(m);
    store = from_cache_or_store(p, m, tm, pipeline, &key);
  }
  p->read_ms = kiln_pass_clock_ms() - t0; /* the bitcode read, cut to this job and, for a shared function, looked up */
  if (ok && !p->obj) {
    kiln_exec_stats t = {0};
    if (cg_emit_object(m, tm, pipeline, &t, &p->obj) != KILN_OK) fail_part(p, KILN_ERR_BACKEND);
    p->opt_ms = t.llvm_opt_ms, p->codegen_ms = t.llvm_codegen_ms;
    if (p->obj && store) cg_cache_store(CG_ENTRY_FUNCTION, key, LLVMGetBufferStart(p->obj), LLVMGetBufferSize(p->obj));
  }
  free(fns);
  LLVMDisposeModule(m);
  LLVMContextDispose(ctx);
}

void cg_run_workers(int n, void *(*fn)(void *), void *args, size_t stride) {
  pthread_t tid[PARTS_MAX];
  bool started[PARTS_MAX] = {false};
  if (n > PARTS_MAX) n = PARTS_MAX;
  for (int w = 1; w < n; w++) started[w] = !pthread_create(&tid[w], NULL, fn, (char *)args + (size_t)w * stride);
  if (n > 0) fn(args);
  for (int w = 1; w < n; w++) {
    if (started[w]) pthread_join(tid[w], NULL);
    else fn((char *)args + (size_t)w * stride);
  }
}

/* Threads take jobs in order until none is left; each has its own target machine
 * (the caller's is the calling thread's). */
typedef struct {
  part *jobs;
  int njobs, *next;
  bool generic_cpu;
  LLVMTargetMachineRef tm;   /* NULL: the worker makes its own */
  double opt_ms, codegen_ms; /* this worker's sums */
} crew;

static void *worker(void *arg) {
  crew *w = arg;
  LLVMTargetMachineRef tm = w->tm ? w->tm : cg_target_machine(NULL, w->generic_cpu ? "generic" : "native", NULL);
  for (int j; (j = __atomic_fetch_add(w->next, 1, __ATOMIC_RELAXED)) < w->njobs;) {
    part *p = &w->jobs[j];
    if (!tm) {
      fail_part(p, KILN_ERR_BACKEND);
      continue;
    }
    compile_part(p, tm);
    w->opt_ms += p->opt_ms, w->codegen_ms += p->codegen_ms;
  }
  if (tm && !w->tm) LLVMDisposeTargetMachine(tm);
  return NULL;
}

/* All jobs' objects as one buffer: magic, count, sizes, then the objects. */
static LLVMMemoryBufferRef pack_objects(part *jobs, int n) {
  size_t total = sizeof objects_magic + 8 + 8 * (size_t)n;
  for (int q = 0; q < n; q++) total += LLVMGetBufferSize(jobs[q].obj);
  char *buf = malloc(total);
  if (!buf) return NULL;
  memcpy(buf, objects_magic, sizeof objects_magic);
  uint64_t count = (uint64_t)n;
  memcpy(buf + 8, &count, 8);
  size_t at = 16 + 8 * (size_t)n;
  for (int q = 0; q < n; q++) {
    uint64_t size = LLVMGetBufferSize(jobs[q].obj);
    memcpy(buf + 16 + 8 * q, &size, 8);
    memcpy(buf + at, LLVMGetBufferStart(jobs[q].obj), size);
    at += size;
  }
  LLVMMemoryBufferRef out = LLVMCreateMemoryBufferWithMemoryRangeCopy(buf, total, "kiln objects");
  free(buf);
  return out;
}

/* KILN_PASS_STATS=jobs: a line per compile job, to see where LLVM's time goes. */
static bool jobs_stats_on(void) {
  const char *v = getenv("KILN_PASS_STATS");
  return v && !strcmp(v, "jobs");
}

static void print_jobs(const part *jobs, int njobs) {
  for (int j = 0; j < njobs; j++) {
    const part *p = &jobs[j];
    char what[80];
    if (p->unit >= 0) snprintf(what, sizeof what, "%s", p->name);
    else snprintf(what, sizeof what, "part %d (kernels)", p->index);
    fprintf(stderr, "kiln: compile job %-32s %6zu instructions, read %.1f ms, llvm opt %.1f, codegen %.1f%s\n", what,
            p->instructions, p->read_ms, p->opt_ms, p->codegen_ms, p->from_cache ? " (from the cache)" : "");
  }
}

static int larger_first(const void *a, const void *b) {
  size_t x = ((const part *)a)->instructions, y = ((const part *)b)->instructions;
  return x < y ? 1 : x > y ? -1 : 0;
}

kiln_status cg_compile_parts(LLVMModuleRef mod, LLVMTargetMachineRef tm, bool generic_cpu, int threads,
                             cg_function_cache functions, kiln_exec_stats *t, LLVMMemoryBufferRef *obj) {
  *obj = NULL;
  size_t nfns = 0, ninstr = 0;
  for (LLVMValueRef f = LLVMGetFirstFunction(mod); f; f = LLVMGetNextFunction(f)) nfns++, ninstr += cg_fn_instructions(f);
  if (threads > PARTS_MAX) threads = PARTS_MAX;
  bool split = threads > 1 && ninstr >= PARTS_MIN_INSTRUCTIONS;
  if (!split && functions == CG_FUNCTIONS_INLINE) /* the module as it is */
    return cg_emit_object(mod, tm, cg_pipeline(), t, obj);

  kiln_status st = KILN_OK;
  LLVMValueRef *fns = malloc((nfns + 1) * sizeof *fns);
  long *root = malloc((nfns + 1) * sizeof *root);
  int *owner = malloc((nfns + 1) * sizeof *owner);
  bool *exported = malloc(nfns + 1), *apart = calloc(nfns + 1, 1);
  part *jobs = calloc(OBJECTS_MAX, sizeof *jobs);
  LLVMMemoryBufferRef bitcode = LLVMWriteBitcodeToMemoryBuffer(mod);
  int njobs = 0, next = 0;
  if (!fns || !root || !owner || !exported || !apart || !jobs || !bitcode) {
    st = kiln_set_error(KILN_ERR_NOMEM, "compile: out of memory");
    goto done;
  }
  size_t i = 0;
  for (LLVMValueRef f = LLVMGetFirstFunction(mod); f; f = LLVMGetNextFunction(f)) fns[i++] = f;
  unit_roots(fns, nfns, root);
  for (size_t r = 0; functions != CG_FUNCTIONS_INLINE && r < nfns && njobs < OBJECTS_MAX - PARTS_MAX; r++) {
    if (root[r] != (long)r || !is_noinline(fns[r])) continue;
    apart[r] = true;
    size_t instructions = 0;
    for (i = 0; i < nfns; i++) instructions += root[i] == (long)r ? cg_fn_instructions(fns[i]) : 0;
    jobs[njobs++] = (part){.index = njobs, .owner = owner, .exported = exported, .root = root, .unit = (long)r,
                           .reuse = functions == CG_FUNCTIONS_REUSE, .nfns = nfns, .bitcode = bitcode,
                           .instructions = instructions};
  }
  int nparts = assign_parts(fns, root, apart, split ? threads : 1, owner, exported, nfns);
  for (int q = 0; q < nparts; q++) {
    size_t instructions = 0;
    for (i = 0; i < nfns; i++) instructions += owner[i] == q ? cg_fn_instructions(fns[i]) : 0;
    jobs[njobs++] = (part){.index = q, .owner = owner, .exported = exported, .root = root, .unit = -1, .nfns = nfns,
                           .bitcode = bitcode, .instructions = instructions};
  }
  qsort(jobs, (size_t)njobs, sizeof *jobs, larger_first);
  int nworkers = threads < njobs ? threads : njobs;
  crew crews[PARTS_MAX];
  for (int w = 0; w < nworkers; w++)
    crews[w] = (crew){.jobs = jobs, .njobs = njobs, .next = &next, .generic_cpu = generic_cpu, .tm = w ? NULL : tm};
  cg_run_workers(nworkers, worker, crews, sizeof *crews);
  t->llvm_opt_ms = t->llvm_codegen_ms = 0;
  for (int w = 0; w < nworkers; w++) {
    /* wall time: the workers run side by side, the slowest decides */
    if (crews[w].opt_ms > t->llvm_opt_ms) t->llvm_opt_ms = crews[w].opt_ms;
    if (crews[w].codegen_ms > t->llvm_codegen_ms) t->llvm_codegen_ms = crews[w].codegen_ms;
  }
  if (jobs_stats_on()) print_jobs(jobs, njobs);
  t->functions_from_cache = 0;
  for (int j = 0; j < njobs; j++) {
    t->functions_from_cache += jobs[j].from_cache;
    if (jobs[j].st != KILN_OK && st == KILN_OK) st = kiln_set_error(jobs[j].st, "%s", jobs[j].err);
  }
  if (st == KILN_OK && !(*obj = pack_objects(jobs, njobs))) st = kiln_set_error(KILN_ERR_NOMEM, "compile: out of memory");
done:
  for (int j = 0; jobs && j < njobs; j++)
    if (jobs[j].obj) LLVMDisposeMemoryBuffer(jobs[j].obj);
  if (bitcode) LLVMDisposeMemoryBuffer(bitcode);
  free(fns), free(root), free(owner), free(exported), free(apart), free(jobs);
  return st;
}

/* A buffer of several objects, rather than one object (which starts "\177ELF"). */
static bool is_object_set(const void *data, size_t size) {
  return size >= 16 && !memcmp(data, objects_magic, sizeof objects_magic);
}

int cg_objects_count(const void *data, size_t size) {
  if (!is_object_set(data, size)) return 1;
  uint64_t n;
  memcpy(&n, (const char *)data + 8, 8);
  if (n < 1 || n > OBJECTS_MAX || size < 16 + 8 * n) return -1;
  uint64_t total = 16 + 8 * n;
  for (uint64_t q = 0; q < n; q++) {
    uint64_t s;
    memcpy(&s, (const char *)data + 16 + 8 * q, 8);
    if (s > size - total) return -1;
    total += s;
  }
  return total == size ? (int)n : -1;
}

void cg_objects_get(const void *data, size_t size, int q, const void **obj, size_t *obj_size) {
  if (!is_object_set(data, size)) {
    *obj = data, *obj_size = size;
    return;
  }
  uint64_t n, s, at;
  memcpy(&n, (const char *)data + 8, 8);
  at = 16 + 8 * n;
  for (int i = 0; i < q; i++) memcpy(&s, (const char *)data + 16 + 8 * i, 8), at += s;
  memcpy(&s, (const char *)data + 16 + 8 * q, 8);
  *obj = (const char *)data + at, *obj_size = s;
}

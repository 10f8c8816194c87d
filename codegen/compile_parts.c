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

/* Below this many instructions a module compiles in a few tens of milliseconds and
 * the bitcode round trip and thread start would eat the gain. */
enum { PARTS_MIN_INSTRUCTIONS = 1500, PARTS_MAX = 8 };

static const char objects_magic[8] = {'K', 'I', 'L', 'N', 'O', 'B', 'J', 'S'};

int cg_compile_threads(void) {
  const char *env = getenv("KILN_COMPILE_THREADS");
  long n = env && *env ? strtol(env, NULL, 10) : sysconf(_SC_NPROCESSORS_ONLN);
  return n < 1 ? 1 : n > PARTS_MAX ? PARTS_MAX : (int)n;
}

static bool is_noinline(LLVMValueRef fn) {
  return LLVMGetEnumAttributeAtIndex(fn, LLVMAttributeFunctionIndex, LLVMGetEnumAttributeKindForName("noinline", 8)) != NULL;
}

typedef struct {
  int index;
  const int *owner;     /* per function in module order: its part, -1 for declarations */
  const bool *exported; /* per function: called from another part */
  size_t nfns;
  LLVMMemoryBufferRef bitcode; /* shared, read only */
  bool generic_cpu;
  LLVMTargetMachineRef tm; /* the caller's for part 0; the others make their own */
  LLVMMemoryBufferRef obj;
  kiln_status st;
  char err[512];
  double opt_ms, codegen_ms;
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

static void *compile_part(void *arg) {
  part *p = arg;
  LLVMContextRef ctx = LLVMContextCreate();
  LLVMModuleRef m = NULL;
  if (LLVMParseBitcodeInContext2(ctx, p->bitcode, &m)) {
    fail_part(p, kiln_set_error(KILN_ERR_BACKEND, "compile part %d: cannot read the module's bitcode", p->index));
    LLVMContextDispose(ctx);
    return NULL;
  }
  /* Collect first: make_declaration changes the function list. */
  LLVMValueRef *fns = malloc(p->nfns * sizeof *fns);
  size_t n = 0;
  for (LLVMValueRef f = LLVMGetFirstFunction(m); f && fns; f = LLVMGetNextFunction(f))
    if (n++ < p->nfns) fns[n - 1] = f;
  if (!fns || n != p->nfns) {
    fail_part(p, kiln_set_error(fns ? KILN_ERR_BACKEND : KILN_ERR_NOMEM, "compile part %d: %s", p->index,
                                fns ? "the bitcode's functions differ from the module's" : "out of memory"));
  } else {
    bool ok = true;
    for (size_t i = 0; i < n && ok; i++) {
      if (p->owner[i] < 0) continue;
      if (p->owner[i] != p->index) {
        ok = make_declaration(m, fns[i]);
      } else if (p->exported[i]) {
        LLVMSetLinkage(fns[i], LLVMExternalLinkage);
        LLVMSetVisibility(fns[i], LLVMHiddenVisibility);
      }
    }
    LLVMTargetMachineRef tm = !ok ? NULL : p->tm ? p->tm : cg_target_machine(NULL, p->generic_cpu ? "generic" : "native", NULL);
    if (!ok) {
      fail_part(p, kiln_set_error(KILN_ERR_NOMEM, "compile part %d: out of memory", p->index));
    } else if (!tm) {
      fail_part(p, KILN_ERR_BACKEND);
    } else {
      kiln_exec_stats t = {0};
      if (cg_emit_object(m, tm, &t, &p->obj) != KILN_OK) fail_part(p, KILN_ERR_BACKEND);
      p->opt_ms = t.llvm_opt_ms, p->codegen_ms = t.llvm_codegen_ms;
      if (!p->tm) LLVMDisposeTargetMachine(tm);
    }
  }
  free(fns);
  LLVMDisposeModule(m);
  LLVMContextDispose(ctx);
  return NULL;
}

/* The function containing instruction-user `user`, as an index into fns; -1 if none. */
static long user_fn(LLVMValueRef user, LLVMValueRef *fns, size_t nfns) {
  if (!LLVMIsAInstruction(user)) return -1;
  LLVMValueRef by = LLVMGetBasicBlockParent(LLVMGetInstructionParent(user));
  for (size_t j = 0; j < nfns; j++)
    if (fns[j] == by) return (long)j;
  return -1;
}

/* owner[i] for mod's functions into nparts parts, and which of them other parts
 * call (exported[i]); returns how many parts got work.
 *
 * Units: kiln_entry, each kernel it calls and each shared noinline function, with
 * the helpers (task bodies, epilogues) only their unit uses. Kernels are called
 * once, so leaving them out of line in another part costs a call per run. */
static int assign_parts(LLVMModuleRef mod, int nparts, int *owner, bool *exported, size_t nfns) {
  LLVMValueRef *fns = malloc(nfns * sizeof *fns);
  long *root = malloc(nfns * sizeof *root);
  size_t *weight = calloc(nfns, sizeof *weight), load[PARTS_MAX] = {0};
  int used = 0;
  if (!fns || !root || !weight) goto done;
  size_t i = 0, entry = SIZE_MAX;
  for (LLVMValueRef f = LLVMGetFirstFunction(mod); f; f = LLVMGetNextFunction(f)) {
    size_t len;
    if (!strcmp(LLVMGetValueName2(f, &len), "kiln_entry")) entry = i;
    fns[i++] = f;
  }
  for (i = 0; i < nfns; i++) {
    root[i] = LLVMIsDeclaration(fns[i]) ? -1 : (long)i;
    if (root[i] < 0 || is_noinline(fns[i]) || i == entry) continue;
    LLVMUseRef u = LLVMGetFirstUse(fns[i]);
    long by = u ? user_fn(LLVMGetUser(u), fns, nfns) : -1;
    if (by >= 0 && (size_t)by != entry) root[i] = by; /* a helper: resolved to its unit below */
  }
  for (i = 0; i < nfns; i++) {
    long r = root[i];
    for (int hops = 0; r >= 0 && root[r] != r && hops < 64; hops++) r = root[r];
    if (root[i] >= 0) weight[r] += cg_fn_instructions(fns[i]);
    owner[i] = -1;
    root[i] = root[i] >= 0 ? r : -1;
  }
  /* largest unit first, each to the least loaded part */
  for (;;) {
    size_t best = SIZE_MAX, wmax = 0;
    for (i = 0; i < nfns; i++)
      if (weight[i] > wmax) wmax = weight[i], best = i;
    if (best == SIZE_MAX) break;
    int lightest = 0;
    for (int q = 1; q < nparts; q++)
      if (load[q] < load[lightest]) lightest = q;
    owner[best] = lightest;
    load[lightest] += weight[best];
    weight[best] = 0;
  }
  for (i = 0; i < nfns; i++)
    if (root[i] >= 0) owner[i] = owner[root[i]] < 0 ? 0 : owner[root[i]];
  /* which definitions another part refers to: those lose internal linkage */
  for (i = 0; i < nfns; i++) {
    exported[i] = false;
    if (owner[i] < 0) continue;
    for (LLVMUseRef u = LLVMGetFirstUse(fns[i]); u && !exported[i]; u = LLVMGetNextUse(u)) {
      long by = user_fn(LLVMGetUser(u), fns, nfns);
      exported[i] = by < 0 || owner[by] != owner[i];
    }
  }
  for (int q = 0; q < nparts; q++) used += load[q] > 0;
done:
  free(fns), free(root), free(weight);
  return used;
}

/* All parts' objects as one buffer: magic, count, sizes, then the objects. */
static LLVMMemoryBufferRef pack_objects(part *parts, int n) {
  size_t total = sizeof objects_magic + 8 + 8 * (size_t)n;
  for (int q = 0; q < n; q++) total += LLVMGetBufferSize(parts[q].obj);
  char *buf = malloc(total);
  if (!buf) return NULL;
  memcpy(buf, objects_magic, sizeof objects_magic);
  uint64_t count = (uint64_t)n;
  memcpy(buf + 8, &count, 8);
  size_t at = 16 + 8 * (size_t)n;
  for (int q = 0; q < n; q++) {
    uint64_t size = LLVMGetBufferSize(parts[q].obj);
    memcpy(buf + 16 + 8 * q, &size, 8);
    memcpy(buf + at, LLVMGetBufferStart(parts[q].obj), size);
    at += size;
  }
  LLVMMemoryBufferRef out = LLVMCreateMemoryBufferWithMemoryRangeCopy(buf, total, "kiln objects");
  free(buf);
  return out;
}

kiln_status cg_compile_parts(LLVMModuleRef mod, LLVMTargetMachineRef tm, bool generic_cpu, int threads, kiln_exec_stats *t, LLVMMemoryBufferRef *obj) {
  *obj = NULL;
  size_t nfns = 0, ninstr = 0;
  for (LLVMValueRef f = LLVMGetFirstFunction(mod); f; f = LLVMGetNextFunction(f)) nfns++, ninstr += cg_fn_instructions(f);
  if (threads > PARTS_MAX) threads = PARTS_MAX;
  int *owner = threads > 1 && ninstr >= PARTS_MIN_INSTRUCTIONS ? malloc(nfns * sizeof *owner) : NULL;
  bool *exported = owner ? malloc(nfns * sizeof *exported) : NULL;
  int nparts = exported ? assign_parts(mod, threads, owner, exported, nfns) : 0;
  if (nparts < 2) { /* one part: the module as it is */
    free(owner), free(exported);
    return cg_emit_object(mod, tm, t, obj);
  }
  part parts[PARTS_MAX];
  pthread_t tid[PARTS_MAX];
  bool started[PARTS_MAX] = {false};
  LLVMMemoryBufferRef bitcode = LLVMWriteBitcodeToMemoryBuffer(mod);
  for (int q = 0; q < nparts; q++)
    parts[q] = (part){.index = q, .owner = owner, .exported = exported, .nfns = nfns, .bitcode = bitcode,
                      .generic_cpu = generic_cpu, .tm = q ? NULL : tm, .st = KILN_OK};
  /* part 0 on this thread; a thread that cannot start runs its part here too */
  for (int q = 1; q < nparts; q++) started[q] = !pthread_create(&tid[q], NULL, compile_part, &parts[q]);
  compile_part(&parts[0]);
  kiln_status st = KILN_OK;
  t->llvm_opt_ms = t->llvm_codegen_ms = 0;
  for (int q = 1; q < nparts; q++) {
    if (started[q]) pthread_join(tid[q], NULL);
    else compile_part(&parts[q]);
  }
  for (int q = 0; q < nparts; q++) {
    /* wall time: the parts run side by side, the slowest decides */
    if (parts[q].opt_ms > t->llvm_opt_ms) t->llvm_opt_ms = parts[q].opt_ms;
    if (parts[q].codegen_ms > t->llvm_codegen_ms) t->llvm_codegen_ms = parts[q].codegen_ms;
    if (parts[q].st != KILN_OK && st == KILN_OK) st = kiln_set_error(parts[q].st, "%s", parts[q].err);
  }
  if (st == KILN_OK && !(*obj = pack_objects(parts, nparts))) st = kiln_set_error(KILN_ERR_NOMEM, "compile: out of memory");
  for (int q = 0; q < nparts; q++)
    if (parts[q].obj) LLVMDisposeMemoryBuffer(parts[q].obj);
  LLVMDisposeMemoryBuffer(bitcode);
  free(owner), free(exported);
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
  if (n < 1 || n > PARTS_MAX || size < 16 + 8 * n) return -1;
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

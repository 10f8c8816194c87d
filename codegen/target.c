/* Target machines and the module pipeline shared by the JIT and AOT: every
 * module is verified, given its target's triple and data layout, and optimised
 * with the new pass manager's default<O3>. */
#include <llvm-c/Support.h>
#include <llvm-c/Analysis.h>
#include <llvm-c/Error.h>
#include <llvm-c/Target.h>
#include <llvm-c/Transforms/PassBuilder.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "codegen/cg.h"

static pthread_once_t native_once = PTHREAD_ONCE_INIT, all_once = PTHREAD_ONCE_INIT;
/* KILN_LLVM_ARGS: options for LLVM itself, as `llc` spells them (-time-passes shows
 * where a compile's time goes), read once per process: LLVM keeps them globally. */
static void llvm_args(void) {
  const char *env = getenv("KILN_LLVM_ARGS");
  static char buf[1024];
  const char *argv[17] = {"kiln"};
  int argc = 1;
  if (!env || !*env || strlen(env) >= sizeof buf) return;
  strcpy(buf, env);
  for (char *save = NULL, *a = strtok_r(buf, " ", &save); a && argc < 17; a = strtok_r(NULL, " ", &save)) argv[argc++] = a;
  LLVMParseCommandLineOptions(argc, argv, "kiln");
}

static void init_native(void) {
  LLVMInitializeNativeTarget();
  llvm_args();
  LLVMInitializeNativeAsmPrinter();
}
static void init_all(void) {
  LLVMInitializeAllTargetInfos();
  LLVMInitializeAllTargets();
  LLVMInitializeAllTargetMCs();
  LLVMInitializeAllAsmPrinters();
}

kiln_status cg_llvm_error(LLVMErrorRef e, const char *what) {
  char *m = LLVMGetErrorMessage(e);
  kiln_status st = kiln_set_error(KILN_ERR_BACKEND, "%s: %s", what, m);
  LLVMDisposeErrorMessage(m);
  return st;
}

LLVMTargetMachineRef cg_target_machine(const char *triple_in, const char *cpu_in, int *vec_bytes) {
  pthread_once(&native_once, init_native);
  char *host = LLVMGetDefaultTargetTriple();
  const char *triple = triple_in ? triple_in : host;
  bool is_host = !strcmp(triple, host);
  bool native = !cpu_in || !strcmp(cpu_in, "native");
  if (!is_host) pthread_once(&all_once, init_all);
  LLVMTargetMachineRef tm = NULL;
  if (native && !is_host) {
    kiln_set_error(KILN_ERR_INVALID, "cpu \"native\" describes this machine, not target %s; use \"generic\" or a CPU name", triple);
    LLVMDisposeMessage(host);
    return NULL;
  }
  char *cpu = native ? LLVMGetHostCPUName() : NULL, *feat = native ? LLVMGetHostCPUFeatures() : NULL;
  /* KILN_VECTOR_BYTES=32 or 16 narrows the host: code as for an AVX2-only (or
   * SSE) x86 CPU, kernels tiled for its width and registers, so that one machine
   * can test and measure the paths another host would take. */
  const char *narrow = native ? getenv("KILN_VECTOR_BYTES") : NULL;
  char *narrowed = NULL;
  if (narrow && *narrow && strcmp(narrow, "64")) {
    const char *off = !strcmp(narrow, "32") ? ",-avx512f" : !strcmp(narrow, "16") ? ",-avx" : NULL;
    if (!off) {
      kiln_set_error(KILN_ERR_INVALID, "KILN_VECTOR_BYTES must be 16, 32 or 64, got \"%s\"", narrow);
      LLVMDisposeMessage(host), LLVMDisposeMessage(cpu), LLVMDisposeMessage(feat);
      return NULL;
    }
    narrowed = malloc(strlen(feat) + strlen(off) + 1);
    if (!narrowed) {
      kiln_set_error(KILN_ERR_NOMEM, "target machine: out of memory");
      LLVMDisposeMessage(host), LLVMDisposeMessage(cpu), LLVMDisposeMessage(feat);
      return NULL;
    }
    strcat(strcpy(narrowed, feat), off);
  }
  const char *features = narrowed ? narrowed : feat;
  LLVMTargetRef t;
  char *err = NULL;
  if (LLVMGetTargetFromTriple(triple, &t, &err)) {
    kiln_set_error(KILN_ERR_INVALID, "unknown LLVM target '%s': %s", triple, err);
    LLVMDisposeMessage(err);
  } else {
    const char *cpu_name = native ? cpu : cpu_in && strcmp(cpu_in, "generic") ? cpu_in : "generic";
    tm = LLVMCreateTargetMachine(t, triple, cpu_name, native ? features : "", LLVMCodeGenLevelAggressive, LLVMRelocPIC,
                                 LLVMCodeModelDefault);
    if (!tm) kiln_set_error(KILN_ERR_INVALID, "LLVM cannot make a target machine for %s (cpu %s)", triple, cpu_name);
    /* Only the host's features are known here; other CPUs get 16-byte vectors in our
     * kernels (LLVM's vectorisers still use whatever the CPU has). */
    if (vec_bytes) {
      *vec_bytes = 16;
      bool avx512 = native && strstr(feat, "+avx512f"), avx2 = native && strstr(feat, "+avx2");
      int cap = narrow && !strcmp(narrow, "32") ? 32 : narrow && !strcmp(narrow, "16") ? 16 : 64;
      if (avx512 && cap >= 64) *vec_bytes = 64;
      else if ((avx512 || avx2) && cap >= 32) *vec_bytes = 32;
    }
  }
  LLVMDisposeMessage(host);
  if (cpu) LLVMDisposeMessage(cpu);
  if (feat) LLVMDisposeMessage(feat);
  free(narrowed);
  return tm;
}

/* KILN_LLVM_PIPELINE (a pass pipeline as `opt -passes=` takes it) is for comparing
 * pipelines; the compile cache keys on the one used. */
static const char *pipeline_or(const char *dflt) {
  const char *env = getenv("KILN_LLVM_PIPELINE");
  return env && *env ? env : dflt;
}
const char *cg_pipeline(void) { return pipeline_or("default<O3>"); }

/* GEMM drivers and packing loops are calls and explicit copies: default<O1> compiles
 * them in half the time of default<O3> (MLP train step: 26 -> 16 ms per driver, on
 * Zen 5), and the train steps of kiln bench mlp-train and cnn-train ran as fast. The
 * micro-kernels keep O3: at O1 the MLP's train step ran 15 % slower. */
const char *cg_light_pipeline(void) { return pipeline_or("default<O1>"); }

kiln_status cg_verify_module(LLVMModuleRef mod) {
  char *msg = NULL;
  kiln_status st = KILN_OK;
  if (LLVMVerifyModule(mod, LLVMReturnStatusAction, &msg))
    st = kiln_set_error(KILN_ERR_BACKEND, "codegen produced invalid LLVM IR: %.400s", msg);
  if (msg) LLVMDisposeMessage(msg);
  return st;
}

kiln_status cg_target_module(LLVMModuleRef mod, LLVMTargetMachineRef tm) {
  char *triple = LLVMGetTargetMachineTriple(tm);
  LLVMSetTarget(mod, triple);
  LLVMDisposeMessage(triple);
  LLVMTargetDataRef dl = LLVMCreateTargetDataLayout(tm);
  LLVMSetModuleDataLayout(mod, dl);
  LLVMDisposeTargetData(dl);
  /* Generated code never throws or unwinds: nounwind lets LLVM leave out unwind
   * tables, so the JIT has no frames to register with libgcc, whose frame registry
   * deadlocks when an allocation made under its lock unwinds (ASan's slow unwinder). */
  LLVMAttributeRef nounwind = LLVMCreateEnumAttribute(LLVMGetModuleContext(mod), LLVMGetEnumAttributeKindForName("nounwind", 8), 0);
  for (LLVMValueRef f = LLVMGetFirstFunction(mod); f; f = LLVMGetNextFunction(f))
    if (!LLVMIsDeclaration(f)) LLVMAddAttributeAtIndex(f, LLVMAttributeFunctionIndex, nounwind);
  return KILN_OK;
}

kiln_status cg_optimize_module(LLVMModuleRef mod, LLVMTargetMachineRef tm, const char *pipeline) {
  LLVMPassBuilderOptionsRef po = LLVMCreatePassBuilderOptions();
  LLVMErrorRef err = LLVMRunPasses(mod, pipeline, tm, po);
  LLVMDisposePassBuilderOptions(po);
  return err ? cg_llvm_error(err, "LLVM optimisation") : KILN_OK;
}

kiln_status cg_finish_module(LLVMModuleRef mod, LLVMTargetMachineRef tm) {
  kiln_status st = cg_verify_module(mod);
  if (st == KILN_OK) st = cg_target_module(mod, tm);
  return st == KILN_OK ? cg_optimize_module(mod, tm, cg_pipeline()) : st;
}

size_t cg_fn_instructions(LLVMValueRef fn) {
  size_t n = 0;
  for (LLVMBasicBlockRef bb = LLVMGetFirstBasicBlock(fn); bb; bb = LLVMGetNextBasicBlock(bb))
    for (LLVMValueRef i = LLVMGetFirstInstruction(bb); i; i = LLVMGetNextInstruction(i)) n++;
  return n;
}

void cg_module_size(LLVMModuleRef mod, size_t *functions, size_t *instructions) {
  *functions = *instructions = 0;
  for (LLVMValueRef f = LLVMGetFirstFunction(mod); f; f = LLVMGetNextFunction(f)) {
    if (LLVMIsDeclaration(f)) continue;
    ++*functions;
    *instructions += cg_fn_instructions(f);
  }
}

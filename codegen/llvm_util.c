/* Thin helpers over the LLVM C API: types, constants, element access, loops.
 * Trip counts of graph kernels are mostly compile-time constants, so LLVM sees
 * simple counted loops it can vectorize (and, when short, unroll: cg_loop_end). */
#include <string.h>
#include <llvm-c/DebugInfo.h>
#include "codegen/cg.h"

void cg_init_types(cg *c) {
  c->i1 = LLVMInt1TypeInContext(c->ctx);
  c->i8 = LLVMInt8TypeInContext(c->ctx);
  c->i32 = LLVMInt32TypeInContext(c->ctx);
  c->i64 = LLVMInt64TypeInContext(c->ctx);
  c->f32 = LLVMFloatTypeInContext(c->ctx);
  c->f64 = LLVMDoubleTypeInContext(c->ctx);
  c->ptr = LLVMPointerTypeInContext(c->ctx, 0);
  c->void_t = LLVMVoidTypeInContext(c->ctx);
}

LLVMTypeRef cg_type(cg *c, kiln_dtype t) {
  switch (t) {
  case KILN_F32: return c->f32;
  case KILN_F64: return c->f64;
  case KILN_I32: return c->i32;
  case KILN_I64: return c->i64;
  default: return c->i8;
  }
}

LLVMValueRef cg_i64(cg *c, int64_t v) { return LLVMConstInt(c->i64, (unsigned long long)v, 1); }

LLVMValueRef cg_const(cg *c, kiln_dtype t, double v) {
  if (kiln_dtype_is_float(t)) return LLVMConstReal(cg_type(c, t), v);
  return LLVMConstInt(cg_type(c, t), (unsigned long long)(int64_t)v, 1);
}

LLVMValueRef cg_gep(cg *c, LLVMTypeRef elem, LLVMValueRef base, LLVMValueRef index) {
  return LLVMBuildGEP2(c->b, elem, base, &index, 1, "");
}

LLVMValueRef cg_load(cg *c, kiln_dtype t, LLVMValueRef base, LLVMValueRef index) {
  LLVMTypeRef ty = cg_type(c, t);
  return LLVMBuildLoad2(c->b, ty, cg_gep(c, ty, base, index), "");
}

void cg_store(cg *c, kiln_dtype t, LLVMValueRef v, LLVMValueRef base, LLVMValueRef index) {
  LLVMBuildStore(c->b, v, cg_gep(c, cg_type(c, t), base, index));
}

LLVMValueRef cg_call_intrinsic2(cg *c, const char *name, LLVMTypeRef overload, LLVMTypeRef overload2,
                                LLVMValueRef *args, unsigned nargs) {
  unsigned id = LLVMLookupIntrinsicID(name, strlen(name));
  KILN_ASSERT(id != 0);
  LLVMTypeRef ov[2] = {overload, overload2};
  size_t nov = overload2 ? 2 : overload ? 1 : 0;
  LLVMValueRef fn = LLVMGetIntrinsicDeclaration(c->mod, id, ov, nov);
  LLVMTypeRef fty = LLVMIntrinsicGetType(c->ctx, id, ov, nov);
  return LLVMBuildCall2(c->b, fty, fn, args, nargs, "");
}

LLVMValueRef cg_call_intrinsic(cg *c, const char *name, LLVMTypeRef overload, LLVMValueRef *args, unsigned nargs) {
  return cg_call_intrinsic2(c, name, overload, NULL, args, nargs);
}

/* A direct call to a C math library function (f64 paths), resolved by the JIT from
 * the process and by the linker (-lm) for AOT objects. */
LLVMValueRef cg_call_libm(cg *c, const char *name, LLVMTypeRef t, LLVMValueRef *args, unsigned nargs) {
  LLVMTypeRef params[3] = {t, t, t};
  LLVMTypeRef fty = LLVMFunctionType(t, params, nargs, 0);
  LLVMValueRef fn = LLVMGetNamedFunction(c->mod, name);
  if (!fn) fn = LLVMAddFunction(c->mod, name, fty);
  return LLVMBuildCall2(c->b, fty, fn, args, nargs, "");
}

LLVMValueRef cg_loop_begin(cg *c, cg_loop *l, LLVMValueRef start, LLVMValueRef end, LLVMValueRef step) {
  l->trips = -1;
  if (LLVMIsAConstantInt(start) && LLVMIsAConstantInt(end) && LLVMIsAConstantInt(step)) {
    int64_t a = LLVMConstIntGetSExtValue(start), b = LLVMConstIntGetSExtValue(end), s = LLVMConstIntGetSExtValue(step);
    l->trips = b <= a || s <= 0 ? 0 : (b - a + s - 1) / s;
  }
  l->end = end;
  l->step = step;
  l->pre = LLVMGetInsertBlock(c->b);
  l->head = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "loop");
  l->exit = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "loop.exit");
  LLVMBuildCondBr(c->b, LLVMBuildICmp(c->b, LLVMIntSLT, start, end, ""), l->head, l->exit);
  LLVMPositionBuilderAtEnd(c->b, l->head);
  l->phi = LLVMBuildPhi(c->b, c->i64, "i");
  LLVMAddIncoming(l->phi, &start, &l->pre, 1);
  l->iv = l->phi;
  return l->iv;
}

static LLVMValueRef loop_latch(cg *c, cg_loop *l) {
  LLVMValueRef next = LLVMBuildAdd(c->b, l->phi, l->step, "");
  LLVMBasicBlockRef latch = LLVMGetInsertBlock(c->b);
  LLVMAddIncoming(l->phi, &next, &latch, 1);
  LLVMValueRef br = LLVMBuildCondBr(c->b, LLVMBuildICmp(c->b, LLVMIntSLT, next, l->end, ""), l->head, l->exit);
  LLVMPositionBuilderAtEnd(c->b, l->exit);
  return br;
}

/* !llvm.loop !0, !0 = distinct !{!0, !{!"llvm.loop.unroll.disable"}, ...}: a loop must
 * name itself, hence the temporary node replaced by the loop's own */
static void loop_hints(cg *c, LLVMValueRef br, bool no_vectorize) {
  static const char unroll[] = "llvm.loop.unroll.disable", vectorize[] = "llvm.loop.vectorize.enable";
  LLVMMetadataRef self = LLVMTemporaryMDNode(c->ctx, NULL, 0);
  LLVMMetadataRef hint = LLVMMDStringInContext2(c->ctx, unroll, sizeof unroll - 1);
  LLVMMetadataRef off[2] = {LLVMMDStringInContext2(c->ctx, vectorize, sizeof vectorize - 1),
                            LLVMValueAsMetadata(LLVMConstInt(c->i1, 0, 0))};
  LLVMMetadataRef ops[3] = {self, LLVMMDNodeInContext2(c->ctx, &hint, 1), LLVMMDNodeInContext2(c->ctx, off, 2)};
  LLVMMetadataRef loop = LLVMMDNodeInContext2(c->ctx, ops, no_vectorize ? 3 : 2);
  LLVMMetadataReplaceAllUsesWith(self, loop);
  LLVMSetMetadata(br, LLVMGetMDKindIDInContext(c->ctx, "llvm.loop", 9), LLVMMetadataAsValue(c->ctx, loop));
}

/* Loops with more than this many iterations, or an unknown count, are not unrolled:
 * the vectorizer's interleaving already gives vector loops their parallelism, and
 * fully unrolled long loops (a 1,280-element scale becomes 20 copies of a 64-lane
 * body) cost compile time for nothing. Short constant loops (filter taps, tile rows)
 * stay LLVM's to unroll. */
enum { UNROLL_MAX_TRIPS = 16 };

void cg_loop_end(cg *c, cg_loop *l) {
  LLVMValueRef br = loop_latch(c, l);
  if (l->trips < 0 || l->trips > UNROLL_MAX_TRIPS) loop_hints(c, br, false);
}

void cg_loop_end_free(cg *c, cg_loop *l) { loop_latch(c, l); }
void cg_loop_end_vector(cg *c, cg_loop *l) { loop_hints(c, loop_latch(c, l), false); }
void cg_loop_end_scalar(cg *c, cg_loop *l) { loop_hints(c, loop_latch(c, l), true); }

static void nest_rec(cg *c, int d, int rank, const int64_t *dims, LLVMValueRef *ivs, cg_nest_body body, void *ctx) {
  if (d == rank) {
    body(c, ivs, ctx);
    return;
  }
  cg_loop l;
  ivs[d] = cg_loop_begin(c, &l, cg_i64(c, 0), cg_i64(c, dims[d]), cg_i64(c, 1));
  nest_rec(c, d + 1, rank, dims, ivs, body, ctx);
  cg_loop_end(c, &l);
}

void cg_nest(cg *c, int rank, const int64_t *dims, cg_nest_body body, void *ctx) {
  LLVMValueRef ivs[KILN_MAX_RANK * 2 + 4];
  if (kiln_shape_numel(rank, dims) == 0) return;
  nest_rec(c, 0, rank, dims, ivs, body, ctx);
}

LLVMValueRef cg_linear(cg *c, int rank, const int64_t *dims, const LLVMValueRef *ivs) {
  LLVMValueRef idx = cg_i64(c, 0);
  for (int d = 0; d < rank; d++) idx = LLVMBuildAdd(c->b, LLVMBuildMul(c->b, idx, cg_i64(c, dims[d]), ""), ivs[d], "");
  return idx;
}

LLVMValueRef cg_smin(cg *c, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildSelect(c->b, LLVMBuildICmp(c->b, LLVMIntSLT, a, b, ""), a, b, "");
}
LLVMValueRef cg_smax(cg *c, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildSelect(c->b, LLVMBuildICmp(c->b, LLVMIntSGT, a, b, ""), a, b, "");
}

LLVMValueRef cg_splat(cg *c, LLVMValueRef scalar, unsigned n) {
  LLVMTypeRef vt = LLVMVectorType(LLVMTypeOf(scalar), n);
  LLVMValueRef v = LLVMBuildInsertElement(c->b, LLVMGetUndef(vt), scalar, LLVMConstInt(c->i32, 0, 0), "");
  LLVMValueRef mask = LLVMConstNull(LLVMVectorType(c->i32, n));
  return LLVMBuildShuffleVector(c->b, v, LLVMGetUndef(vt), mask, "");
}

LLVMValueRef cg_fast(LLVMValueRef inst, bool reassoc) {
  if (LLVMCanValueUseFastMathFlags(inst))
    LLVMSetFastMathFlags(inst, LLVMFastMathAllowContract | (reassoc ? LLVMFastMathAllowReassoc : 0));
  return inst;
}

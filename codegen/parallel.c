/* Task functions and their dispatch, shared by the kernels that cut their work
 * into tasks (GEMM blocks, convolution chunks).
 *
 * A task function is `void task(ctx, int64 task, int32 worker)`, the signature of
 * kiln_parallel's run (runtime/thread_pool.h); ctx is a struct of pointers on the
 * kernel's stack. The worker index selects the task's private scratch. */
#include <stdio.h>
#include "codegen/cg.h"

LLVMValueRef cg_entry_alloca(cg *c, LLVMTypeRef ty, unsigned align) {
  LLVMBuilderRef eb = LLVMCreateBuilderInContext(c->ctx);
  LLVMBasicBlockRef entry = LLVMGetEntryBasicBlock(c->fn);
  LLVMValueRef first = LLVMGetFirstInstruction(entry);
  if (first) LLVMPositionBuilderBefore(eb, first);
  else LLVMPositionBuilderAtEnd(eb, entry);
  LLVMValueRef a = LLVMBuildAlloca(eb, ty, "");
  LLVMSetAlignment(a, align);
  LLVMDisposeBuilder(eb);
  return a;
}

LLVMValueRef cg_begin_fn(cg *c, const char *name, LLVMTypeRef fty, cg_fn_pos *saved) {
  saved->block = LLVMGetInsertBlock(c->b);
  saved->fn = c->fn;
  saved->par = c->par;
  LLVMValueRef fn = LLVMAddFunction(c->mod, name, fty);
  LLVMSetLinkage(fn, LLVMInternalLinkage);
  c->fn = fn;
  c->par = NULL; /* the kernel's kiln_parallel is not visible in here */
  LLVMPositionBuilderAtEnd(c->b, LLVMAppendBasicBlockInContext(c->ctx, fn, "entry"));
  return fn;
}

LLVMValueRef cg_shared_fn(cg *c, const char *name) { return LLVMGetNamedFunction(c->mod, name); }

LLVMValueRef cg_begin_shared_fn(cg *c, const char *name, LLVMTypeRef fty, cg_fn_pos *saved) {
  LLVMValueRef fn = cg_begin_fn(c, name, fty, saved);
  LLVMAddAttributeAtIndex(fn, LLVMAttributeFunctionIndex,
                          LLVMCreateEnumAttribute(c->ctx, LLVMGetEnumAttributeKindForName("noinline", 8), 0));
  return fn;
}

static const char light_attr[] = "kiln-light";
void cg_mark_light(cg *c, LLVMValueRef fn) {
  LLVMAddAttributeAtIndex(fn, LLVMAttributeFunctionIndex,
                          LLVMCreateStringAttribute(c->ctx, light_attr, sizeof light_attr - 1, "", 0));
}
bool cg_is_light(LLVMValueRef fn) {
  return LLVMGetStringAttributeAtIndex(fn, LLVMAttributeFunctionIndex, light_attr, sizeof light_attr - 1) != NULL;
}

void cg_end_fn(cg *c, const cg_fn_pos *saved) {
  c->fn = saved->fn;
  c->par = saved->par;
  if (saved->block) LLVMPositionBuilderAtEnd(c->b, saved->block);
}

LLVMTypeRef cg_task_type(cg *c) {
  LLVMTypeRef ps[3] = {c->ptr, c->i64, c->i32};
  return LLVMFunctionType(c->void_t, ps, 3, 0);
}

static LLVMTypeRef ctx_type(cg *c, unsigned n) {
  LLVMTypeRef f[CG_TASK_CTX_MAX];
  for (unsigned i = 0; i < n; i++) f[i] = c->ptr;
  return LLVMStructTypeInContext(c->ctx, f, n, 0);
}

LLVMValueRef cg_task_ctx(cg *c, const LLVMValueRef *ptrs, unsigned n) {
  LLVMTypeRef ty = ctx_type(c, n);
  LLVMValueRef ctx = cg_entry_alloca(c, ty, 8);
  for (unsigned i = 0; i < n; i++) LLVMBuildStore(c->b, ptrs[i], LLVMBuildStructGEP2(c->b, ty, ctx, i, ""));
  return ctx;
}

LLVMValueRef cg_task_begin(cg *c, const char *name, unsigned n, unsigned written, cg_fn_pos *saved, LLVMValueRef *ptrs,
                           LLVMValueRef *index, LLVMValueRef *worker) {
  /* The thunk: void name(ctx, task, worker) { name_body(ctx[0], ..., ctx[n-1], task, worker); } */
  LLVMValueRef thunk = cg_begin_fn(c, name, cg_task_type(c), saved);
  LLVMTypeRef ps[CG_TASK_CTX_MAX + 2], ty = ctx_type(c, n);
  LLVMValueRef args[CG_TASK_CTX_MAX + 2];
  for (unsigned i = 0; i < n; i++) {
    ps[i] = c->ptr;
    args[i] = LLVMBuildLoad2(c->b, c->ptr, LLVMBuildStructGEP2(c->b, ty, LLVMGetParam(thunk, 0), i, ""), "");
  }
  ps[n] = c->i64, ps[n + 1] = c->i32;
  args[n] = LLVMGetParam(thunk, 1), args[n + 1] = LLVMGetParam(thunk, 2);
  char body_name[96];
  snprintf(body_name, sizeof body_name, "%s_body", name);
  LLVMTypeRef bty = LLVMFunctionType(c->void_t, ps, n + 2, 0);
  LLVMValueRef body = LLVMAddFunction(c->mod, body_name, bty);
  LLVMSetLinkage(body, LLVMInternalLinkage);
  unsigned noalias = LLVMGetEnumAttributeKindForName("noalias", 7);
  for (unsigned i = 0; i < n; i++)
    if (written & (1u << i)) LLVMAddAttributeAtIndex(body, i + 1, LLVMCreateEnumAttribute(c->ctx, noalias, 0));
  LLVMBuildCall2(c->b, bty, body, args, n + 2, "");
  LLVMBuildRetVoid(c->b);
  c->fn = body;
  LLVMPositionBuilderAtEnd(c->b, LLVMAppendBasicBlockInContext(c->ctx, body, "entry"));
  for (unsigned i = 0; i < n; i++) ptrs[i] = LLVMGetParam(body, i);
  *index = LLVMGetParam(body, n);
  *worker = LLVMGetParam(body, n + 1);
  return thunk;
}

void cg_task_end(cg *c, const cg_fn_pos *saved) {
  LLVMBuildRetVoid(c->b);
  cg_end_fn(c, saved);
}

LLVMValueRef cg_task_range(cg *c, LLVMValueRef task, int64_t per, int64_t n, LLVMValueRef *lo) {
  *lo = LLVMBuildMul(c->b, task, cg_i64(c, per), "");
  return cg_smin(c, LLVMBuildAdd(c->b, *lo, cg_i64(c, per), ""), cg_i64(c, n));
}

static void serial_tasks(cg *c, LLVMValueRef task, LLVMValueRef ctx, int64_t ntasks) {
  cg_loop lt;
  LLVMValueRef ti = cg_loop_begin(c, &lt, cg_i64(c, 0), cg_i64(c, ntasks), cg_i64(c, 1));
  LLVMBuildCall2(c->b, cg_task_type(c), task, (LLVMValueRef[]){ctx, ti, LLVMConstInt(c->i32, 0, 0)}, 3, "");
  cg_loop_end(c, &lt);
}

void cg_parallel_for(cg *c, LLVMValueRef task, LLVMValueRef ctx, int64_t ntasks, bool threaded) {
  if (!threaded || !c->par || ntasks < 2) {
    serial_tasks(c, task, ctx, ntasks);
    return;
  }
  /* par->run(par->pool, task, ctx, ntasks), or serially when par is NULL at run time */
  LLVMBasicBlockRef pool = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "threaded"),
                    alone = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "serial"),
                    join = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "tasks.done");
  LLVMBuildCondBr(c->b, LLVMBuildIsNotNull(c->b, c->par, ""), pool, alone);
  LLVMPositionBuilderAtEnd(c->b, pool);
  LLVMValueRef run = LLVMBuildLoad2(c->b, c->ptr, c->par, "");
  LLVMValueRef pp = LLVMBuildLoad2(c->b, c->ptr, cg_gep(c, c->ptr, c->par, cg_i64(c, 1)), "");
  LLVMTypeRef rps[4] = {c->ptr, c->ptr, c->ptr, c->i64};
  LLVMBuildCall2(c->b, LLVMFunctionType(c->void_t, rps, 4, 0), run, (LLVMValueRef[]){pp, task, ctx, cg_i64(c, ntasks)}, 4, "");
  LLVMBuildBr(c->b, join);
  LLVMPositionBuilderAtEnd(c->b, alone);
  serial_tasks(c, task, ctx, ntasks);
  LLVMBuildBr(c->b, join);
  LLVMPositionBuilderAtEnd(c->b, join);
}

unsigned cg_epilogue_ctx(const cg_epilogue *e, LLVMValueRef *ptrs, unsigned n) {
  for (unsigned i = 0; e && i < e->nptrs; i++) ptrs[n++] = e->ptrs[i];
  return n;
}

cg_epilogue cg_epilogue_in_task(const cg_epilogue *e, const LLVMValueRef *args) {
  cg_epilogue in = *e;
  for (unsigned i = 0; i < e->nptrs; i++) in.ptrs[i] = args[i];
  return in;
}

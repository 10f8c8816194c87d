/* Kernels for contractions and windows.
 *
 * GEMM: one helper function per dtype and module, C = A * B with A addressed by
 * (row, column) strides (so transposed A costs nothing) and B row-contiguous.
 * Full MR x NR tiles run a register-blocked micro-kernel: MR rows times two
 * host-width vectors of accumulators, one broadcast of A and two vector loads
 * of B per k, all FMAs (llvm.fma on vector types). Edge rows and columns use a
 * row-wise loop the vectorizer handles. Packing, cache blocking and threading
 * are the fast-kernels issue's job; this is the correct, vectorized baseline.
 *
 * Conv2d: NHWC input, HWIO filter. 1x1/stride-1/unpadded convolutions are a
 * single GEMM; the rest gather an im2col panel per image and group into
 * scratch and run GEMM on it. Pooling loops over output pixels with the channel
 * loop innermost, so it vectorizes over channels. */
#include "codegen/cg.h"

enum { GEMM_MR = 6 };

static LLVMValueRef add(cg *c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildAdd(c->b, a, b, ""); }
static LLVMValueRef mul(cg *c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildMul(c->b, a, b, ""); }

static void set_noalias(cg *c, LLVMValueRef fn, unsigned param) {
  unsigned kind = LLVMGetEnumAttributeKindForName("noalias", 7);
  LLVMAddAttributeAtIndex(fn, param + 1, LLVMCreateEnumAttribute(c->ctx, kind, 0));
}

static LLVMTypeRef gemm_type(cg *c) {
  LLVMTypeRef p[10] = {c->i64, c->i64, c->i64, c->ptr, c->i64, c->i64, c->ptr, c->i64, c->ptr, c->i64};
  return LLVMFunctionType(c->void_t, p, 10, 0);
}

static LLVMValueRef muladd(cg *c, kiln_dtype t, LLVMValueRef a, LLVMValueRef b, LLVMValueRef acc) {
  if (kiln_dtype_is_float(t)) return cg_fast(LLVMBuildFAdd(c->b, cg_fast(LLVMBuildFMul(c->b, a, b, ""), false), acc, ""), false);
  return LLVMBuildAdd(c->b, LLVMBuildMul(c->b, a, b, ""), acc, "");
}

/* C[i, j0:j1] = A[i, :] * B[:, j0:j1], vectorizable over j. */
static void gemm_row(cg *c, kiln_dtype t, LLVMValueRef *p, LLVMValueRef i, LLVMValueRef j0, LLVMValueRef j1) {
  LLVMValueRef K = p[2], A = p[3], rsa = p[4], csa = p[5], B = p[6], ldb = p[7], C = p[8], ldc = p[9];
  LLVMValueRef crow = mul(c, i, ldc), zero = cg_i64(c, 0), one = cg_i64(c, 1);
  cg_loop lj, lk, lj2;
  LLVMValueRef j = cg_loop_begin(c, &lj, j0, j1, one);
  cg_store(c, t, cg_const(c, t, 0), C, add(c, crow, j));
  cg_loop_end(c, &lj);
  LLVMValueRef k = cg_loop_begin(c, &lk, zero, K, one);
  LLVMValueRef a = cg_load(c, t, A, add(c, mul(c, i, rsa), mul(c, k, csa)));
  LLVMValueRef brow = mul(c, k, ldb);
  j = cg_loop_begin(c, &lj2, j0, j1, one);
  LLVMValueRef ci = add(c, crow, j);
  cg_store(c, t, muladd(c, t, a, cg_load(c, t, B, add(c, brow, j)), cg_load(c, t, C, ci)), C, ci);
  cg_loop_end(c, &lj2);
  cg_loop_end(c, &lk);
}

static LLVMValueRef vload(cg *c, LLVMTypeRef vt, kiln_dtype t, LLVMValueRef base, LLVMValueRef idx) {
  LLVMValueRef l = LLVMBuildLoad2(c->b, vt, cg_gep(c, cg_type(c, t), base, idx), "");
  LLVMSetAlignment(l, (unsigned)kiln_dtype_size(t));
  return l;
}

/* The MR x (2 vectors) register tile at (i0, j0), accumulated over all of K. */
static void gemm_micro(cg *c, kiln_dtype t, LLVMValueRef *p, LLVMValueRef i0, LLVMValueRef j0, unsigned w) {
  LLVMValueRef K = p[2], A = p[3], rsa = p[4], csa = p[5], B = p[6], ldb = p[7], C = p[8], ldc = p[9];
  LLVMTypeRef vt = LLVMVectorType(cg_type(c, t), w);
  LLVMValueRef zerov = LLVMConstNull(vt), acc[GEMM_MR][2], next[GEMM_MR][2];
  cg_loop lk;
  LLVMValueRef k = cg_loop_begin(c, &lk, cg_i64(c, 0), K, cg_i64(c, 1));
  for (int r = 0; r < GEMM_MR; r++)
    for (int v = 0; v < 2; v++) {
      acc[r][v] = LLVMBuildPhi(c->b, vt, "acc");
      LLVMAddIncoming(acc[r][v], &zerov, &lk.pre, 1);
    }
  LLVMValueRef brow = add(c, mul(c, k, ldb), j0);
  LLVMValueRef b0 = vload(c, vt, t, B, brow), b1 = vload(c, vt, t, B, add(c, brow, cg_i64(c, w)));
  LLVMValueRef kcol = mul(c, k, csa);
  for (int r = 0; r < GEMM_MR; r++) {
    LLVMValueRef a = cg_load(c, t, A, add(c, mul(c, add(c, i0, cg_i64(c, r)), rsa), kcol));
    LLVMValueRef av = cg_splat(c, a, w);
    LLVMValueRef args0[3] = {av, b0, acc[r][0]}, args1[3] = {av, b1, acc[r][1]};
    next[r][0] = cg_call_intrinsic(c, "llvm.fma", vt, args0, 3);
    next[r][1] = cg_call_intrinsic(c, "llvm.fma", vt, args1, 3);
  }
  LLVMBasicBlockRef latch = LLVMGetInsertBlock(c->b);
  for (int r = 0; r < GEMM_MR; r++)
    for (int v = 0; v < 2; v++) LLVMAddIncoming(acc[r][v], &next[r][v], &latch, 1);
  cg_loop_end(c, &lk);
  LLVMValueRef fin[GEMM_MR][2];
  for (int r = 0; r < GEMM_MR; r++) /* exit phis first: they must head the block */
    for (int v = 0; v < 2; v++) {
      fin[r][v] = LLVMBuildPhi(c->b, vt, "");
      LLVMValueRef vals[2] = {zerov, next[r][v]};
      LLVMBasicBlockRef from[2] = {lk.pre, latch};
      LLVMAddIncoming(fin[r][v], vals, from, 2);
    }
  for (int r = 0; r < GEMM_MR; r++)
    for (int v = 0; v < 2; v++) {
      LLVMValueRef ci = add(c, add(c, mul(c, add(c, i0, cg_i64(c, r)), ldc), j0), cg_i64(c, v * (int)w));
      LLVMValueRef st = LLVMBuildStore(c->b, fin[r][v], cg_gep(c, cg_type(c, t), C, ci));
      LLVMSetAlignment(st, (unsigned)kiln_dtype_size(t));
    }
}

static LLVMValueRef gemm_fn(cg *c, kiln_dtype t) {
  if (c->gemm[t]) return c->gemm[t];
  LLVMBasicBlockRef saved_block = LLVMGetInsertBlock(c->b);
  LLVMValueRef saved_fn = c->fn;
  char name[32];
  snprintf(name, sizeof name, "kiln_gemm_%s", kiln_dtype_name(t));
  LLVMValueRef fn = LLVMAddFunction(c->mod, name, gemm_type(c));
  LLVMSetLinkage(fn, LLVMInternalLinkage);
  set_noalias(c, fn, 8);
  c->fn = fn;
  LLVMPositionBuilderAtEnd(c->b, LLVMAppendBasicBlockInContext(c->ctx, fn, "entry"));
  LLVMValueRef p[10];
  for (int i = 0; i < 10; i++) p[i] = LLVMGetParam(fn, (unsigned)i);
  LLVMValueRef M = p[0], N = p[1], one = cg_i64(c, 1), zero = cg_i64(c, 0);
  unsigned w = (unsigned)(c->vec_bytes / (int)kiln_dtype_size(t));
  LLVMValueRef Mfull = zero, Nfull = zero;
  if (kiln_dtype_is_float(t)) {
    Mfull = LLVMBuildSub(c->b, M, LLVMBuildSRem(c->b, M, cg_i64(c, GEMM_MR), ""), "");
    Nfull = LLVMBuildSub(c->b, N, LLVMBuildSRem(c->b, N, cg_i64(c, 2 * w), ""), "");
    cg_loop li, lj, lr;
    LLVMValueRef i0 = cg_loop_begin(c, &li, zero, Mfull, cg_i64(c, GEMM_MR));
    LLVMValueRef j0 = cg_loop_begin(c, &lj, zero, Nfull, cg_i64(c, 2 * w));
    gemm_micro(c, t, p, i0, j0, w);
    cg_loop_end(c, &lj);
    LLVMValueRef i = cg_loop_begin(c, &lr, i0, add(c, i0, cg_i64(c, GEMM_MR)), one);
    gemm_row(c, t, p, i, Nfull, N);
    cg_loop_end(c, &lr);
    cg_loop_end(c, &li);
  }
  cg_loop lm;
  LLVMValueRef i = cg_loop_begin(c, &lm, Mfull, M, one);
  gemm_row(c, t, p, i, zero, N);
  cg_loop_end(c, &lm);
  LLVMBuildRetVoid(c->b);
  c->fn = saved_fn;
  LLVMPositionBuilderAtEnd(c->b, saved_block);
  return c->gemm[t] = fn;
}

static void call_gemm(cg *c, kiln_dtype t, int64_t M, int64_t N, int64_t K, LLVMValueRef A, LLVMValueRef rsa,
                      LLVMValueRef csa, LLVMValueRef B, int64_t ldb, LLVMValueRef C, int64_t ldc) {
  LLVMValueRef fn = gemm_fn(c, t);
  LLVMValueRef args[10] = {cg_i64(c, M), cg_i64(c, N), cg_i64(c, K), A, rsa, csa, B, cg_i64(c, ldb), C, cg_i64(c, ldc)};
  LLVMBuildCall2(c->b, gemm_type(c), fn, args, 10, "");
}

static LLVMValueRef offset(cg *c, kiln_dtype t, LLVMValueRef base, LLVMValueRef elems) {
  return cg_gep(c, cg_type(c, t), base, elems);
}

uint64_t cg_scratch_bytes(const kiln_graph *g, const kiln_node *n) {
  size_t es = kiln_dtype_size((kiln_dtype)n->dtype);
  if (n->op == KILN_OP_MATMUL && kiln_attr_int(n, KILN_ATTR_TRANSPOSE_B, 0)) {
    const kiln_node *b = &g->nodes[n->inputs[1]];
    return (uint64_t)(b->dims[b->rank - 1] * b->dims[b->rank - 2]) * es;
  }
  if (n->op == KILN_OP_CONV2D) {
    const kiln_node *w = &g->nodes[n->inputs[1]];
    return (uint64_t)(n->dims[1] * n->dims[2] * w->dims[0] * w->dims[1] * w->dims[2]) * es;
  }
  return 0;
}

typedef struct {
  kiln_dtype t;
  LLVMValueRef src, dst;
  int64_t K, N;
} pack_ctx;

/* dst[k, j] = src[j, k] (transposed B into a row-contiguous panel). */
static void pack_body(cg *c, const LLVMValueRef *ivs, void *vctx) {
  pack_ctx *p = vctx;
  LLVMValueRef k = ivs[0], j = ivs[1];
  LLVMValueRef v = cg_load(c, p->t, p->src, add(c, mul(c, j, cg_i64(c, p->K)), k));
  cg_store(c, p->t, v, p->dst, add(c, mul(c, k, cg_i64(c, p->N)), j));
}

void cg_matmul(cg *c, const kiln_node *n, LLVMValueRef out, const LLVMValueRef *in, LLVMValueRef scratch) {
  const kiln_node *a = &c->g->nodes[n->inputs[0]];
  kiln_dtype t = (kiln_dtype)n->dtype;
  int r = n->rank;
  bool ta = kiln_attr_int(n, KILN_ATTR_TRANSPOSE_A, 0), tb = kiln_attr_int(n, KILN_ATTR_TRANSPOSE_B, 0);
  int64_t M = n->dims[r - 2], N = n->dims[r - 1], K = a->dims[ta ? r - 2 : r - 1];
  int64_t batch = kiln_shape_numel(r - 2, n->dims);
  if (M == 0 || N == 0 || batch == 0) return;
  cg_loop lb;
  LLVMValueRef bi = cg_loop_begin(c, &lb, cg_i64(c, 0), cg_i64(c, batch), cg_i64(c, 1));
  LLVMValueRef A = offset(c, t, in[0], mul(c, bi, cg_i64(c, M * K)));
  LLVMValueRef B = offset(c, t, in[1], mul(c, bi, cg_i64(c, K * N)));
  LLVMValueRef C = offset(c, t, out, mul(c, bi, cg_i64(c, M * N)));
  if (tb) {
    pack_ctx p = {t, B, scratch, K, N};
    cg_nest(c, 2, (int64_t[]){K, N}, pack_body, &p);
    B = scratch;
  }
  LLVMValueRef rsa = cg_i64(c, ta ? 1 : K), csa = cg_i64(c, ta ? M : 1);
  call_gemm(c, t, M, N, K, A, rsa, csa, B, N, C, N);
  cg_loop_end(c, &lb);
}

/* ---- convolution ---- */

typedef struct {
  kiln_dtype t;
  LLVMValueRef x, col, n, g;
  int64_t H, W, C, icg, KW, s[2], d[2], p[4], OW, Kc;
} im2col_ctx;

/* col[oh*OW + ow, (kh*KW + kw)*icg + ic] = x[n, ih, iw, g*icg + ic], or 0 in the padding. */
static void im2col_body(cg *c, const LLVMValueRef *ivs, void *vctx) {
  im2col_ctx *q = vctx;
  LLVMValueRef oh = ivs[0], ow = ivs[1], kh = ivs[2], kw = ivs[3];
  LLVMValueRef ih = LLVMBuildSub(c->b, add(c, mul(c, oh, cg_i64(c, q->s[0])), mul(c, kh, cg_i64(c, q->d[0]))), cg_i64(c, q->p[0]), "");
  LLVMValueRef iw = LLVMBuildSub(c->b, add(c, mul(c, ow, cg_i64(c, q->s[1])), mul(c, kw, cg_i64(c, q->d[1]))), cg_i64(c, q->p[1]), "");
  /* Unsigned compare folds the < 0 and >= size checks into one. */
  LLVMValueRef ok = LLVMBuildAnd(c->b, LLVMBuildICmp(c->b, LLVMIntULT, ih, cg_i64(c, q->H), ""),
                                 LLVMBuildICmp(c->b, LLVMIntULT, iw, cg_i64(c, q->W), ""), "");
  LLVMValueRef row = add(c, mul(c, oh, cg_i64(c, q->OW)), ow);
  LLVMValueRef cbase = add(c, mul(c, row, cg_i64(c, q->Kc)), mul(c, add(c, mul(c, kh, cg_i64(c, q->KW)), kw), cg_i64(c, q->icg)));
  LLVMValueRef xbase = add(c, mul(c, add(c, mul(c, add(c, mul(c, q->n, cg_i64(c, q->H)), ih), cg_i64(c, q->W)), iw), cg_i64(c, q->C)),
                           mul(c, q->g, cg_i64(c, q->icg)));
  LLVMBasicBlockRef then = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "in"),
                    els = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "pad"),
                    join = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "join");
  LLVMBuildCondBr(c->b, ok, then, els);
  cg_loop l;
  LLVMPositionBuilderAtEnd(c->b, then);
  LLVMValueRef ic = cg_loop_begin(c, &l, cg_i64(c, 0), cg_i64(c, q->icg), cg_i64(c, 1));
  cg_store(c, q->t, cg_load(c, q->t, q->x, add(c, xbase, ic)), q->col, add(c, cbase, ic));
  cg_loop_end(c, &l);
  LLVMBuildBr(c->b, join);
  LLVMPositionBuilderAtEnd(c->b, els);
  ic = cg_loop_begin(c, &l, cg_i64(c, 0), cg_i64(c, q->icg), cg_i64(c, 1));
  cg_store(c, q->t, cg_const(c, q->t, 0), q->col, add(c, cbase, ic));
  cg_loop_end(c, &l);
  LLVMBuildBr(c->b, join);
  LLVMPositionBuilderAtEnd(c->b, join);
}

void cg_conv2d(cg *c, const kiln_node *n, LLVMValueRef out, const LLVMValueRef *in, LLVMValueRef scratch) {
  const kiln_node *x = &c->g->nodes[n->inputs[0]], *w = &c->g->nodes[n->inputs[1]];
  kiln_dtype t = (kiln_dtype)n->dtype;
  im2col_ctx q = {.t = t, .x = in[0], .col = scratch};
  kiln_attr_ints(n, KILN_ATTR_STRIDES, q.s);
  kiln_attr_ints(n, KILN_ATTR_DILATIONS, q.d);
  kiln_attr_ints(n, KILN_ATTR_PADS, q.p);
  int64_t groups = kiln_attr_int(n, KILN_ATTR_GROUPS, 1);
  int64_t N = x->dims[0], OH = n->dims[1], OW = n->dims[2], OC = n->dims[3], KH = w->dims[0];
  q.H = x->dims[1], q.W = x->dims[2], q.C = x->dims[3], q.icg = w->dims[2], q.KW = w->dims[1], q.OW = OW;
  q.Kc = KH * q.KW * q.icg;
  int64_t ocg = OC / groups;
  if (kiln_shape_numel(4, n->dims) == 0) return;
  bool pointwise = KH == 1 && q.KW == 1 && q.s[0] == 1 && q.s[1] == 1 && !q.p[0] && !q.p[1] && !q.p[2] && !q.p[3] && groups == 1;
  if (pointwise) {
    call_gemm(c, t, N * q.H * q.W, OC, q.C, in[0], cg_i64(c, q.C), cg_i64(c, 1), in[1], OC, out, OC);
    return;
  }
  cg_loop ln, lg;
  q.n = cg_loop_begin(c, &ln, cg_i64(c, 0), cg_i64(c, N), cg_i64(c, 1));
  q.g = cg_loop_begin(c, &lg, cg_i64(c, 0), cg_i64(c, groups), cg_i64(c, 1));
  cg_nest(c, 4, (int64_t[]){OH, OW, KH, q.KW}, im2col_body, &q);
  LLVMValueRef B = offset(c, t, in[1], mul(c, q.g, cg_i64(c, ocg)));
  LLVMValueRef C = offset(c, t, out, add(c, mul(c, q.n, cg_i64(c, OH * OW * OC)), mul(c, q.g, cg_i64(c, ocg))));
  call_gemm(c, t, OH * OW, ocg, q.Kc, scratch, cg_i64(c, q.Kc), cg_i64(c, 1), B, OC, C, OC);
  cg_loop_end(c, &lg);
  cg_loop_end(c, &ln);
}

/* ---- pooling ---- */

typedef struct {
  const kiln_node *n;
  kiln_dtype t;
  LLVMValueRef x, out;
  int64_t H, W, C, k[2], s[2], p[4];
} pool_ctx;

static LLVMValueRef smin(cg *c, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildSelect(c->b, LLVMBuildICmp(c->b, LLVMIntSLT, a, b, ""), a, b, "");
}
static LLVMValueRef smax(cg *c, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildSelect(c->b, LLVMBuildICmp(c->b, LLVMIntSGT, a, b, ""), a, b, "");
}

static void pool_body(cg *c, const LLVMValueRef *ivs, void *vctx) {
  pool_ctx *q = vctx;
  bool is_max = q->n->op == KILN_OP_MAX_POOL2D;
  LLVMValueRef nb = ivs[0], oh = ivs[1], ow = ivs[2], one = cg_i64(c, 1), zero = cg_i64(c, 0);
  int64_t OH = q->n->dims[1], OW = q->n->dims[2];
  LLVMValueRef obase = mul(c, add(c, mul(c, add(c, mul(c, nb, cg_i64(c, OH)), oh), cg_i64(c, OW)), ow), cg_i64(c, q->C));
  /* The window clipped to the input: [h0, h1) x [w0, w1). */
  LLVMValueRef hs = LLVMBuildSub(c->b, mul(c, oh, cg_i64(c, q->s[0])), cg_i64(c, q->p[0]), "");
  LLVMValueRef ws = LLVMBuildSub(c->b, mul(c, ow, cg_i64(c, q->s[1])), cg_i64(c, q->p[1]), "");
  LLVMValueRef h0 = smax(c, hs, zero), h1 = smin(c, add(c, hs, cg_i64(c, q->k[0])), cg_i64(c, q->H));
  LLVMValueRef w0 = smax(c, ws, zero), w1 = smin(c, add(c, ws, cg_i64(c, q->k[1])), cg_i64(c, q->W));
  cg_loop l, lh, lw;
  LLVMValueRef ch = cg_loop_begin(c, &l, zero, cg_i64(c, q->C), one);
  cg_store(c, q->t, cg_const(c, q->t, is_max ? -__builtin_inf() : 0.0), q->out, add(c, obase, ch));
  cg_loop_end(c, &l);
  LLVMValueRef ih = cg_loop_begin(c, &lh, h0, h1, one);
  LLVMValueRef iw = cg_loop_begin(c, &lw, w0, w1, one);
  LLVMValueRef ibase = mul(c, add(c, mul(c, add(c, mul(c, nb, cg_i64(c, q->H)), ih), cg_i64(c, q->W)), iw), cg_i64(c, q->C));
  ch = cg_loop_begin(c, &l, zero, cg_i64(c, q->C), one);
  LLVMValueRef oi = add(c, obase, ch), v = cg_load(c, q->t, q->x, add(c, ibase, ch)), o = cg_load(c, q->t, q->out, oi);
  cg_store(c, q->t, cg_binary(c, is_max ? KILN_OP_MAX : KILN_OP_ADD, q->t, o, v), q->out, oi);
  cg_loop_end(c, &l);
  cg_loop_end(c, &lw);
  cg_loop_end(c, &lh);
  if (!is_max) {
    LLVMValueRef cnt = mul(c, LLVMBuildSub(c->b, h1, h0, ""), LLVMBuildSub(c->b, w1, w0, ""));
    LLVMValueRef cf = LLVMBuildSIToFP(c->b, cnt, cg_type(c, q->t), "");
    ch = cg_loop_begin(c, &l, zero, cg_i64(c, q->C), one);
    oi = add(c, obase, ch);
    cg_store(c, q->t, LLVMBuildFDiv(c->b, cg_load(c, q->t, q->out, oi), cf, ""), q->out, oi);
    cg_loop_end(c, &l);
  }
}

void cg_pool2d(cg *c, const kiln_node *n, LLVMValueRef out, const LLVMValueRef *in) {
  const kiln_node *x = &c->g->nodes[n->inputs[0]];
  pool_ctx q = {.n = n, .t = (kiln_dtype)n->dtype, .x = in[0], .out = out, .H = x->dims[1], .W = x->dims[2], .C = x->dims[3]};
  kiln_attr_ints(n, KILN_ATTR_WINDOW, q.k);
  kiln_attr_ints(n, KILN_ATTR_STRIDES, q.s);
  kiln_attr_ints(n, KILN_ATTR_PADS, q.p);
  cg_nest(c, 3, n->dims, pool_body, &q);
}

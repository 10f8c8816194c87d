/* Kernels for matmul and pooling (convolutions: conv.c).
 *
 * Matmul maps onto gemm.c with strides for the transposes and the batch.
 * Pooling loops over output pixels with the channel loop innermost, so it
 * vectorizes over channels. */
#include "codegen/cg.h"

static LLVMValueRef add(cg *c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildAdd(c->b, a, b, ""); }
static LLVMValueRef mul(cg *c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildMul(c->b, a, b, ""); }

static cg_gemm matmul_gemm(cg *c, const kiln_node *n) {
  const kiln_node *a = &c->g->nodes[n->inputs[0]];
  int r = n->rank;
  bool ta = kiln_attr_int(n, KILN_ATTR_TRANSPOSE_A, 0), tb = kiln_attr_int(n, KILN_ATTR_TRANSPOSE_B, 0);
  int64_t M = n->dims[r - 2], N = n->dims[r - 1], K = a->dims[ta ? r - 2 : r - 1];
  return (cg_gemm){.t = (kiln_dtype)n->dtype, .batch = kiln_shape_numel(r - 2, n->dims), .M = M, .N = N, .K = K,
                   .rsa = ta ? 1 : K, .csa = ta ? M : 1, .rsb = tb ? 1 : N, .csb = tb ? K : 1, .ldc = N,
                   .bsa = M * K, .bsb = K * N, .bsc = M * N};
}

uint64_t cg_scratch_bytes(cg *c, const kiln_node *n) {
  if (n->op == KILN_OP_MATMUL) {
    cg_gemm g = matmul_gemm(c, n);
    return cg_gemm_scratch_bytes(c, &g);
  }
  if (n->op == KILN_OP_CONV2D || n->op == KILN_OP_CONV2D_FILTER_GRAD) return cg_conv_scratch_bytes(c, n);
  return 0;
}

void cg_matmul(cg *c, const kiln_node *n, LLVMValueRef out, const LLVMValueRef *in, LLVMValueRef scratch) {
  cg_gemm g = matmul_gemm(c, n);
  cg_gemm_emit(c, &g, in[0], in[1], out, scratch);
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

/* What conv.c (im2col + GEMM) and conv_direct.c (small filters) share. */
#ifndef KILN_CODEGEN_CONV_H
#define KILN_CODEGEN_CONV_H

#include "codegen/cg.h"

typedef struct {
  kiln_dtype t;
  int64_t N, H, W, C, icg, KH, KW, s[2], d[2], p[4], OH, OW, OC, groups, Kc;
  int64_t col_ld; /* the im2col panel's row stride, Kc or a little more */
  int64_t pixels; /* output pixels of the batch: im2col rows */
  bool pointwise;
  bool b_prepacked; /* the filter is stored in its GEMMs' panel layout (cg.b_prepacked) */
  /* up[0] > 0: the input is an unslice fused into this (depthwise) convolution: x is
   * its source, HD x WD pixels, whose pixel (r, s) is the input's (up_lo[0] + up[0]*r,
   * up_lo[1] + up[1]*s); every other input pixel is zero. */
  int64_t up[2], up_lo[2], HD, WD;
} conv_geom;

/* conv2d(x, w) -> y, or conv2d_filter_grad(x, dy) -> dw: the same convolution. */
KILN_INTERNAL conv_geom cg_conv_geometry(cg *c, const kiln_node *n);

/* A filter gradient is a sum over every output pixel. So that its bits do not
 * depend on the thread count, the pixels are cut into `n` parts by the shapes
 * alone; each part sums into its own filter-sized buffer (part 0: the output,
 * the rest `bytes` apart at the scratch's start), and the parts are added in
 * order at the end. */
enum { CONV_FGRAD_PARTS = 8 };
typedef struct {
  int64_t n;
  uint64_t bytes;
} conv_parts;
KILN_INTERNAL conv_parts cg_conv_parts(const conv_geom *q, int64_t n);
/* Scratch bytes before anything else the kernel keeps there. */
KILN_INTERNAL uint64_t cg_conv_parts_bytes(const conv_parts *p);
KILN_INTERNAL LLVMValueRef cg_conv_part_buffer(cg *c, const conv_parts *p, LLVMValueRef out, LLVMValueRef scratch,
                                               LLVMValueRef part);
/* out += part 1, part 2, ... */
KILN_INTERNAL void cg_conv_add_parts(cg *c, const conv_geom *q, const conv_parts *p, LLVMValueRef out, LLVMValueRef scratch);

/* conv_direct.c: filters of at most a few dozen taps x channels (a first layer
 * on grey or RGB images), for which im2col + GEMM is all copying. */
KILN_INTERNAL bool cg_conv_direct_fits(cg *c, const conv_geom *q);
KILN_INTERNAL uint64_t cg_conv_direct_scratch_bytes(cg *c, const conv_geom *q, bool filter_grad);
KILN_INTERNAL uint64_t cg_conv_direct_pooled_scratch_bytes(cg *c, const conv_geom *q, int64_t align);
KILN_INTERNAL void cg_conv_direct(cg *c, const conv_geom *q, LLVMValueRef out, const LLVMValueRef *in, LLVMValueRef scratch,
                                  const cg_epilogue *ep);
KILN_INTERNAL void cg_conv_direct_filter_grad(cg *c, const conv_geom *q, LLVMValueRef out, const LLVMValueRef *in,
                                              LLVMValueRef scratch);
/* The input copied inside its zero padding (conv_direct.c), so that every tap of
 * every output pixel is a load at a constant offset from the pixel's window
 * corner: NHWC with padded_h x padded_w pixels per image, padded_bytes in all (0
 * when there is no padding: the input is used as it is). pad_input fills it, a
 * task per image. */
static inline int64_t cg_conv_padded_h(const conv_geom *q) { return q->H + q->p[0] + q->p[2]; }
static inline int64_t cg_conv_padded_w(const conv_geom *q) { return q->W + q->p[1] + q->p[3]; }
KILN_INTERNAL uint64_t cg_conv_padded_bytes(const conv_geom *q);
KILN_INTERNAL void cg_conv_pad_input(cg *c, const conv_geom *q, LLVMValueRef x, LLVMValueRef xp, bool threaded);
/* Parts of a filter gradient's pixel sum: one per 256 pixels, at most CONV_FGRAD_PARTS. */
KILN_INTERNAL int64_t cg_conv_fgrad_parts(const conv_geom *q);

/* conv_depthwise.c: one input channel per group and one output channel per group
 * (MobileNet's depthwise layers), channels in vector lanes instead of one
 * one-column GEMM per channel. */
KILN_INTERNAL bool cg_conv_depthwise_fits(cg *c, const conv_geom *q);
KILN_INTERNAL uint64_t cg_conv_depthwise_scratch_bytes(cg *c, const conv_geom *q, bool filter_grad);
KILN_INTERNAL void cg_conv_depthwise(cg *c, const conv_geom *q, LLVMValueRef out, const LLVMValueRef *in,
                                     LLVMValueRef scratch, const cg_epilogue *ep);
KILN_INTERNAL void cg_conv_depthwise_filter_grad(cg *c, const conv_geom *q, LLVMValueRef out, const LLVMValueRef *in,
                                                 LLVMValueRef scratch);

/* Vector loads and stores of q's dtype at base[idx] (aligned to the element only)
 * and fused multiply-adds, for the direct and depthwise kernels. */
static inline LLVMValueRef cg_conv_vload(cg *c, const conv_geom *q, LLVMTypeRef vt, LLVMValueRef base, LLVMValueRef idx) {
  LLVMValueRef l = LLVMBuildLoad2(c->b, vt, cg_gep(c, cg_type(c, q->t), base, idx), "");
  LLVMSetAlignment(l, (unsigned)kiln_dtype_size(q->t));
  return l;
}
static inline void cg_conv_vstore(cg *c, const conv_geom *q, LLVMValueRef v, LLVMValueRef base, LLVMValueRef idx) {
  LLVMSetAlignment(LLVMBuildStore(c->b, v, cg_gep(c, cg_type(c, q->t), base, idx)), (unsigned)kiln_dtype_size(q->t));
}
static inline LLVMValueRef cg_conv_vfma(cg *c, LLVMValueRef a, LLVMValueRef b, LLVMValueRef acc) {
  return cg_call_intrinsic(c, "llvm.fma", LLVMTypeOf(acc), (LLVMValueRef[]){a, b, acc}, 3);
}

/* Below this much arithmetic a convolution is not worth waking the other threads. */
KILN_INTERNAL bool cg_conv_worth_threads(cg *c, const conv_geom *q);

#endif

/* Direct convolution for small filters: kh*kw*in-channels (Kc) of at most
 * DIRECT_REGS, one group, out-channels a whole number of vectors. A first layer
 * on grey images (Kc = 9) would otherwise spend its time building a 9-column
 * im2col panel and packing it for a GEMM whose register tile it fills to 75%.
 *
 * The input is first copied with its zero padding (per image, in parallel), so
 * every tap of every output pixel is a load at a constant offset from the
 * pixel's corner. Then:
 *  - conv2d: per block of out-channel vectors, the block's weights stay in
 *    registers (Kc x block vectors) while each output pixel sums Kc broadcast
 *    input values times them; pixels are independent, so chunks of pixels are
 *    the tasks;
 *  - conv2d_filter_grad: per part of the pixels (conv.h), Kc x block vector
 *    accumulators stay in registers while each pixel adds its broadcast input
 *    values times its dy vectors. */
#include <stdio.h>
#include "codegen/conv.h"

enum { DIRECT_REGS = 24, EPILOGUE_PIXELS = 256 };

static LLVMValueRef add(cg *c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildAdd(c->b, a, b, ""); }
static LLVMValueRef mul(cg *c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildMul(c->b, a, b, ""); }
static LLVMValueRef imm(cg *c, int64_t v) { return cg_i64(c, v); }
static uint64_t align64(uint64_t x) { return (x + 63) & ~(uint64_t)63; }
static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
static int64_t vec_w(cg *c, const conv_geom *q) { return c->vec_bytes / (int64_t)kiln_dtype_size(q->t); }
static bool padded(const conv_geom *q) { return q->p[0] || q->p[1] || q->p[2] || q->p[3]; }
static int64_t hp_of(const conv_geom *q) { return cg_conv_padded_h(q); }
static int64_t wp_of(const conv_geom *q) { return cg_conv_padded_w(q); }
static uint64_t xp_bytes(const conv_geom *q) { return cg_conv_padded_bytes(q); }

uint64_t cg_conv_padded_bytes(const conv_geom *q) {
  return padded(q) ? align64((uint64_t)(q->N * hp_of(q) * wp_of(q) * q->C) * kiln_dtype_size(q->t)) : 0;
}
/* Out-channel vectors whose weights or sums fit in registers next to Kc taps. */
static int64_t block_vectors(cg *c, const conv_geom *q) {
  int64_t fit = DIRECT_REGS / q->Kc, all = q->OC / vec_w(c, q);
  return fit < all ? fit : all;
}

bool cg_conv_direct_fits(cg *c, const conv_geom *q) {
  return kiln_dtype_is_float(q->t) && q->groups == 1 && !q->pointwise && q->Kc <= DIRECT_REGS &&
         q->OC % vec_w(c, q) == 0;
}

int64_t cg_conv_fgrad_parts(const conv_geom *q) {
  int64_t n = ceil_div(q->pixels, 256);
  return n < CONV_FGRAD_PARTS ? n : CONV_FGRAD_PARTS;
}

uint64_t cg_conv_direct_scratch_bytes(cg *c, const conv_geom *q, bool filter_grad) {
  (void)c;
  conv_parts parts = cg_conv_parts(q, cg_conv_fgrad_parts(q));
  return xp_bytes(q) + (filter_grad ? cg_conv_parts_bytes(&parts) : 0);
}

/* ---- the padded copy ---- */

typedef struct {
  const conv_geom *q;
  LLVMValueRef x, xp, n;
} pad_ctx;

static void pad_body(cg *c, const LLVMValueRef *ivs, void *vctx) {
  pad_ctx *m = vctx;
  const conv_geom *q = m->q;
  LLVMValueRef ih = LLVMBuildSub(c->b, ivs[0], imm(c, q->p[0]), ""), iw = LLVMBuildSub(c->b, ivs[1], imm(c, q->p[1]), "");
  LLVMValueRef ok = LLVMBuildAnd(c->b, LLVMBuildICmp(c->b, LLVMIntULT, ih, imm(c, q->H), ""),
                                 LLVMBuildICmp(c->b, LLVMIntULT, iw, imm(c, q->W), ""), "");
  LLVMValueRef src = add(c, mul(c, add(c, mul(c, add(c, mul(c, m->n, imm(c, q->H)), ih), imm(c, q->W)), iw), imm(c, q->C)), ivs[2]);
  LLVMValueRef v = cg_load(c, q->t, m->x, LLVMBuildSelect(c->b, ok, src, imm(c, 0), ""));
  LLVMValueRef dst = add(c, mul(c, add(c, mul(c, add(c, mul(c, m->n, imm(c, hp_of(q))), ivs[0]), imm(c, wp_of(q))), ivs[1]), imm(c, q->C)), ivs[2]);
  cg_store(c, q->t, LLVMBuildSelect(c->b, ok, v, cg_const(c, q->t, 0), ""), m->xp, dst);
}

void cg_conv_pad_input(cg *c, const conv_geom *q, LLVMValueRef x, LLVMValueRef xp, bool threaded) {
  char name[48];
  snprintf(name, sizeof name, "kiln_conv%u_pad_task", c->ntask_fns++);
  cg_fn_pos sp;
  LLVMValueRef v[2], image, worker;
  LLVMValueRef fn = cg_task_begin(c, name, 2, 1 << 1, &sp, v, &image, &worker);
  pad_ctx m = {.q = q, .x = v[0], .xp = v[1], .n = image};
  cg_nest(c, 3, (int64_t[]){hp_of(q), wp_of(q), q->C}, pad_body, &m);
  cg_task_end(c, &sp);
  cg_parallel_for(c, fn, cg_task_ctx(c, (LLVMValueRef[]){x, xp}, 2), q->N, threaded);
}

/* ---- per pixel ---- */

/* The offset of output pixel p's window corner in the padded input. */
static LLVMValueRef corner(cg *c, const conv_geom *q, LLVMValueRef p) {
  int64_t per_image = q->OH * q->OW;
  LLVMValueRef n = LLVMBuildSDiv(c->b, p, imm(c, per_image), ""), r = LLVMBuildSRem(c->b, p, imm(c, per_image), "");
  LLVMValueRef oh = LLVMBuildSDiv(c->b, r, imm(c, q->OW), ""), ow = LLVMBuildSRem(c->b, r, imm(c, q->OW), "");
  LLVMValueRef row = add(c, mul(c, n, imm(c, hp_of(q))), mul(c, oh, imm(c, q->s[0])));
  return mul(c, add(c, mul(c, row, imm(c, wp_of(q))), mul(c, ow, imm(c, q->s[1]))), imm(c, q->C));
}

/* Input value of tap t (kh, kw, ic order: the filter's row order) at a corner, in every lane. */
static LLVMValueRef tap(cg *c, const conv_geom *q, LLVMValueRef xp, LLVMValueRef base, int64_t t, int64_t w) {
  int64_t kh = t / (q->KW * q->C), kw = t / q->C % q->KW, ic = t % q->C;
  int64_t off = (kh * q->d[0] * wp_of(q) + kw * q->d[1]) * q->C + ic;
  return cg_splat(c, cg_load(c, q->t, xp, add(c, base, imm(c, off))), (unsigned)w);
}

/* Calls emit(first vector, vectors) for every block of `per` out-channel vectors and the short last one. */
typedef void (*block_fn)(cg *c, void *ctx, LLVMValueRef first, int64_t vectors);
static void for_blocks(cg *c, int64_t all, int64_t per, block_fn emit, void *ctx) {
  int64_t whole = all / per * per;
  if (whole > 0) {
    cg_loop lb;
    LLVMValueRef b = cg_loop_begin(c, &lb, imm(c, 0), imm(c, whole), imm(c, per));
    emit(c, ctx, b, per);
    cg_loop_end(c, &lb);
  }
  if (whole < all) emit(c, ctx, imm(c, whole), all - whole);
}

/* ---- conv2d ---- */

typedef struct {
  const conv_geom *q;
  LLVMValueRef xp, w, out, p0, p1;
  int64_t w_lanes;
} fwd_ctx;

static void fwd_block(cg *c, void *vctx, LLVMValueRef first, int64_t nv) {
  fwd_ctx *m = vctx;
  const conv_geom *q = m->q;
  int64_t w = m->w_lanes;
  LLVMTypeRef vt = LLVMVectorType(cg_type(c, q->t), (unsigned)w);
  LLVMValueRef col = mul(c, first, imm(c, w)), wv[DIRECT_REGS][DIRECT_REGS];
  for (int64_t t = 0; t < q->Kc; t++)
    for (int64_t v = 0; v < nv; v++) wv[t][v] = cg_conv_vload(c, q, vt, m->w, add(c, col, imm(c, t * q->OC + v * w)));
  cg_loop lp;
  LLVMValueRef p = cg_loop_begin(c, &lp, m->p0, m->p1, imm(c, 1));
  LLVMValueRef base = corner(c, q, p), acc[DIRECT_REGS];
  for (int64_t v = 0; v < nv; v++) acc[v] = LLVMConstNull(vt);
  for (int64_t t = 0; t < q->Kc; t++) {
    LLVMValueRef a = tap(c, q, m->xp, base, t, w);
    for (int64_t v = 0; v < nv; v++) acc[v] = cg_conv_vfma(c, a, wv[t][v], acc[v]);
  }
  LLVMValueRef o = add(c, mul(c, p, imm(c, q->OC)), col);
  for (int64_t v = 0; v < nv; v++) cg_conv_vstore(c, q, acc[v], m->out, add(c, o, imm(c, v * w)));
  cg_loop_end(c, &lp);
}

/* Pixels per chunk (a task) and per piece (what an epilogue finishes while it is
 * cached), whole groups of `align` pixels each for a fused pool (0: none). */
typedef struct {
  int64_t chunks, rows, piece;
  uint64_t private_bytes; /* per worker, after the padded copy: a piece's output for a fused pool */
} direct_plan;

static direct_plan plan_direct(cg *c, const conv_geom *q, bool threaded, bool epilogue, int64_t align) {
  int64_t step = align > 0 ? align : 1;
  /* a few chunks per thread so a slow one does not hold the rest up */
  direct_plan p = {.chunks = threaded ? 4 * c->threads : 1};
  p.rows = ceil_div(ceil_div(q->pixels, p.chunks), step) * step;
  p.chunks = ceil_div(q->pixels, p.rows);
  p.piece = epilogue ? ceil_div(EPILOGUE_PIXELS, step) * step : p.rows;
  if (align > 0) p.private_bytes = align64((uint64_t)(p.piece * q->OC) * kiln_dtype_size(q->t));
  return p;
}

uint64_t cg_conv_direct_pooled_scratch_bytes(cg *c, const conv_geom *q, int64_t align) {
  bool threaded = cg_conv_worth_threads(c, q);
  direct_plan p = plan_direct(c, q, threaded, true, align);
  return xp_bytes(q) + p.private_bytes * (uint64_t)(threaded ? c->threads : 1);
}

void cg_conv_direct(cg *c, const conv_geom *q, LLVMValueRef out, const LLVMValueRef *in, LLVMValueRef scratch,
                    const cg_epilogue *ep) {
  bool threaded = cg_conv_worth_threads(c, q), private_out = ep && ep->private_out;
  LLVMValueRef xp = in[0];
  if (padded(q)) cg_conv_pad_input(c, q, in[0], xp = scratch, threaded);
  direct_plan dp = plan_direct(c, q, threaded, ep != NULL, ep ? ep->align_pixels : 0);
  char name[48];
  snprintf(name, sizeof name, "kiln_conv%u_direct_task", c->ntask_fns++);
  cg_fn_pos sp;
  /* the workers' private pieces follow the padded copy */
  enum { V_XP, V_W, V_OUT, V_PRIVATE, V_FIELDS };
  LLVMValueRef priv = private_out ? LLVMBuildGEP2(c->b, c->i8, scratch, (LLVMValueRef[]){imm(c, (int64_t)xp_bytes(q))}, 1, "")
                                  : LLVMConstPointerNull(c->ptr);
  LLVMValueRef v[CG_TASK_CTX_MAX] = {xp, in[1], private_out ? LLVMConstPointerNull(c->ptr) : out, priv}, chunk, worker;
  unsigned nctx = cg_epilogue_ctx(ep, v, V_FIELDS);
  LLVMValueRef ctx = cg_task_ctx(c, v, nctx);
  LLVMValueRef fn = cg_task_begin(c, name, nctx, 1 << V_OUT | 1 << V_PRIVATE, &sp, v, &chunk, &worker);
  LLVMValueRef p0, p1 = cg_task_range(c, chunk, dp.rows, q->pixels, &p0);
  LLVMValueRef mine = NULL;
  if (private_out)
    mine = LLVMBuildGEP2(c->b, c->i8, v[V_PRIVATE],
                         (LLVMValueRef[]){mul(c, LLVMBuildSExt(c->b, worker, c->i64, ""), imm(c, (int64_t)dp.private_bytes))}, 1, "");
  /* with an epilogue, pieces of the chunk small enough to finish while cached */
  cg_loop lp;
  LLVMValueRef s0 = cg_loop_begin(c, &lp, p0, p1, imm(c, dp.piece));
  LLVMValueRef s1 = cg_smin(c, add(c, s0, imm(c, dp.piece)), p1);
  /* a private piece sits at the start of the worker's buffer, flat indices kept */
  LLVMValueRef piece_out = private_out ? cg_gep(c, cg_type(c, q->t), mine, LLVMBuildNeg(c->b, mul(c, s0, imm(c, q->OC)), "")) : v[V_OUT];
  fwd_ctx m = {.q = q, .xp = v[V_XP], .w = v[V_W], .out = piece_out, .p0 = s0, .p1 = s1, .w_lanes = vec_w(c, q)};
  for_blocks(c, q->OC / m.w_lanes, block_vectors(c, q), fwd_block, &m);
  if (ep) {
    cg_epilogue in_task = cg_epilogue_in_task(ep, v + V_FIELDS);
    in_task.apply(c, &in_task, piece_out, mul(c, s0, imm(c, q->OC)), mul(c, s1, imm(c, q->OC)));
  }
  cg_loop_end(c, &lp);
  cg_task_end(c, &sp);
  cg_parallel_for(c, fn, ctx, dp.chunks, threaded);
}

/* ---- conv2d_filter_grad ---- */

typedef struct {
  const conv_geom *q;
  LLVMValueRef xp, dy, acc_out, p0, p1;
  int64_t w_lanes;
} fgrad_ctx;

static void fgrad_block(cg *c, void *vctx, LLVMValueRef first, int64_t nv) {
  fgrad_ctx *m = vctx;
  const conv_geom *q = m->q;
  int64_t w = m->w_lanes;
  LLVMTypeRef vt = LLVMVectorType(cg_type(c, q->t), (unsigned)w);
  LLVMValueRef col = mul(c, first, imm(c, w)), slot[DIRECT_REGS][DIRECT_REGS];
  for (int64_t t = 0; t < q->Kc; t++)
    for (int64_t v = 0; v < nv; v++) {
      slot[t][v] = cg_entry_alloca(c, vt, 64);
      LLVMBuildStore(c->b, LLVMConstNull(vt), slot[t][v]);
    }
  cg_loop lp;
  LLVMValueRef p = cg_loop_begin(c, &lp, m->p0, m->p1, imm(c, 1));
  LLVMValueRef base = corner(c, q, p), d[DIRECT_REGS], row = add(c, mul(c, p, imm(c, q->OC)), col);
  for (int64_t v = 0; v < nv; v++) d[v] = cg_conv_vload(c, q, vt, m->dy, add(c, row, imm(c, v * w)));
  for (int64_t t = 0; t < q->Kc; t++) {
    LLVMValueRef a = tap(c, q, m->xp, base, t, w);
    for (int64_t v = 0; v < nv; v++)
      LLVMBuildStore(c->b, cg_conv_vfma(c, a, d[v], LLVMBuildLoad2(c->b, vt, slot[t][v], "")), slot[t][v]);
  }
  cg_loop_end(c, &lp);
  for (int64_t t = 0; t < q->Kc; t++)
    for (int64_t v = 0; v < nv; v++)
      cg_conv_vstore(c, q, LLVMBuildLoad2(c->b, vt, slot[t][v], ""), m->acc_out, add(c, col, imm(c, t * q->OC + v * w)));
}

void cg_conv_direct_filter_grad(cg *c, const conv_geom *q, LLVMValueRef out, const LLVMValueRef *in,
                                LLVMValueRef scratch) {
  bool threaded = cg_conv_worth_threads(c, q);
  conv_parts parts = cg_conv_parts(q, cg_conv_fgrad_parts(q));
  LLVMValueRef xp = in[0];
  if (padded(q)) {
    xp = LLVMBuildGEP2(c->b, c->i8, scratch, (LLVMValueRef[]){imm(c, (int64_t)cg_conv_parts_bytes(&parts))}, 1, "");
    cg_conv_pad_input(c, q, in[0], xp, threaded);
  }
  int64_t per_part = ceil_div(q->pixels, parts.n);
  char name[48];
  snprintf(name, sizeof name, "kiln_conv%u_direct_filter_grad_task", c->ntask_fns++);
  cg_fn_pos sp;
  LLVMValueRef v[4], part, worker;
  LLVMValueRef fn = cg_task_begin(c, name, 4, 1 << 2 | 1 << 3, &sp, v, &part, &worker);
  LLVMValueRef p0, p1 = cg_task_range(c, part, per_part, q->pixels, &p0);
  fgrad_ctx m = {.q = q, .xp = v[0], .dy = v[1], .acc_out = cg_conv_part_buffer(c, &parts, v[2], v[3], part), .p0 = p0,
                 .p1 = p1, .w_lanes = vec_w(c, q)};
  for_blocks(c, q->OC / m.w_lanes, block_vectors(c, q), fgrad_block, &m);
  cg_task_end(c, &sp);
  cg_parallel_for(c, fn, cg_task_ctx(c, (LLVMValueRef[]){xp, in[1], out, scratch}, 4), parts.n, threaded);
  cg_conv_add_parts(c, q, &parts, out, scratch);
}

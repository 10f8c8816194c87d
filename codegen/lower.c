/* Lowering a specialised graph (all shapes static) to one LLVM module.
 *
 * The schedule (passes/schedule.c) says which nodes are kernels; each becomes an
 * internal function
 *     i32 node<id>_<op>(ptr noalias out, ptr read0, ..., ptr scratch [, ptr parallel])
 * whose reads are the stored buffers it needs, the nodes fused into it being
 * computed element by element where they are read (value_of). It returns 0, or
 * id+1 when it detects bad data at run time (a gather index out of range). The
 * exported entry point
 *     i32 <entry>(ptr args)    ; args = [inputs..., outputs..., workspace, parallel]
 * calls the kernels in node order. The `parallel` slot (runtime/thread_pool.h's
 * kiln_parallel, NULL to run serially) is read only by code compiled for more
 * than one thread. Storage: params read the caller's input
 * buffers, constants with data are read-only globals, a kernel that is a graph
 * output writes the caller's output buffer directly, and the other kernels get
 * workspace offsets from memory planning (passes/memory_plan.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "codegen/cg.h"
#include "passes/passes.h"

#define MAX_LEAVES KILN_MAX_READS

/* One kernel being emitted: node n, plus the nodes fused into it (inlined), whose
 * stored inputs ("leaves") are the kernel's pointer parameters. */
typedef struct {
  const kiln_node *n;
  uint32_t id;
  LLVMValueRef out, scratch;
  LLVMValueRef in[64];    /* n's inputs as pointers (for the matmul/conv/pool kernels) */
  const bool *inlined;    /* per node */
  uint32_t host;          /* the matmul/conv/pool gradient the kernel runs into out first, or UINT32_MAX */
  /* inner > 0: flat loops run as rows of `inner` elements (the output's last dim), so
   * that broadcasts find their source from the row (hoisted) and the column (a
   * contiguous run) instead of dividing every index; at flat index flat_i they set
   * row and col. */
  int64_t inner;
  LLVMValueRef flat_i, row, col;
  uint32_t nleaves;
  uint32_t leaf[MAX_LEAVES];
  LLVMValueRef leaf_ptr[MAX_LEAVES];
} node_ctx;

static LLVMValueRef add(cg *c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildAdd(c->b, a, b, ""); }
static LLVMValueRef mul(cg *c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildMul(c->b, a, b, ""); }

/* A flat loop over n elements; body gets the index. Every element is independent
 * (a pure function of its index and the kernel's reads), so large loops are cut
 * into ranges that the threads run: a few per thread, whole cache lines each. */
typedef void (*flat_body)(cg *c, node_ctx *k, LLVMValueRef i);
enum { FLAT_THREADED_ELEMS = 1 << 16, FLAT_TASKS_PER_THREAD = 4, FLAT_ALIGN = 16 };

static void flat_range(cg *c, node_ctx *k, LLVMValueRef lo, LLVMValueRef hi, flat_body body) {
  cg_loop l;
  if (!k->inner) {
    LLVMValueRef i = cg_loop_begin(c, &l, lo, hi, cg_i64(c, 1));
    body(c, k, i);
    cg_loop_end(c, &l);
    return;
  }
  /* Whole rows [f0, f1) with a constant inner trip count (vectorized without
   * remainders), then the pieces of rows before and after them: [lo, f0 * inner) and
   * [f1 * inner, hi), or [lo, hi) alone when it lies inside one row. */
  LLVMValueRef inner = cg_i64(c, k->inner), one = cg_i64(c, 1);
  LLVMValueRef f0 = LLVMBuildSDiv(c->b, add(c, lo, cg_i64(c, k->inner - 1)), inner, ""), f1 = LLVMBuildSDiv(c->b, hi, inner, "");
  node_ctx t = *k;
  cg_loop lr, ls;
  t.row = cg_loop_begin(c, &lr, f0, cg_smax(c, f0, f1), one);
  LLVMValueRef base = mul(c, t.row, inner);
  t.col = cg_loop_begin(c, &l, cg_i64(c, 0), inner, one);
  t.flat_i = add(c, base, t.col);
  body(c, &t, t.flat_i);
  cg_loop_end_vector(c, &l);
  cg_loop_end(c, &lr);
  LLVMValueRef head_end = cg_smin(c, hi, mul(c, f0, inner));
  LLVMValueRef s = cg_loop_begin(c, &ls, cg_i64(c, 0), cg_i64(c, 2), one);
  LLVMValueRef tail = LLVMBuildICmp(c->b, LLVMIntEQ, s, one, "");
  LLVMValueRef a = LLVMBuildSelect(c->b, tail, cg_smax(c, mul(c, f1, inner), head_end), lo, "");
  LLVMValueRef b = LLVMBuildSelect(c->b, tail, hi, head_end, "");
  t.row = LLVMBuildSDiv(c->b, a, inner, "");
  base = mul(c, t.row, inner);
  t.col = cg_loop_begin(c, &l, LLVMBuildSub(c->b, a, base, ""), LLVMBuildSub(c->b, b, base, ""), one);
  t.flat_i = add(c, base, t.col);
  body(c, &t, t.flat_i);
  cg_loop_end(c, &l);
  cg_loop_end(c, &ls);
}

/* A task function for kernel k whose body sees the kernel's output (and scratch,
 * when asked) and reads as its own arguments: *t is k rebound to them, and the
 * builder is left in the body. node_task_run closes it and runs ntasks tasks. */
typedef struct {
  cg_fn_pos sp;
  LLVMValueRef fn, index;
  bool scratch;
} node_task;

static unsigned node_task_ptrs(const node_ctx *k, bool scratch, LLVMValueRef *ptrs) {
  unsigned n = 0;
  ptrs[n++] = k->out;
  if (scratch) ptrs[n++] = k->scratch;
  for (uint32_t l = 0; l < k->nleaves; l++) ptrs[n++] = k->leaf_ptr[l];
  return n;
}

static node_task node_task_begin(cg *c, const node_ctx *k, bool scratch, node_ctx *t) {
  node_task nt = {.scratch = scratch};
  LLVMValueRef ptrs[CG_TASK_CTX_MAX], v[CG_TASK_CTX_MAX], worker;
  unsigned n = node_task_ptrs(k, scratch, ptrs);
  char name[48];
  snprintf(name, sizeof name, "node%u_task%u", k->id, c->ntask_fns++);
  /* out and scratch are the only buffers the kernel writes */
  nt.fn = cg_task_begin(c, name, n, scratch ? 1 << 0 | 1 << 1 : 1 << 0, &nt.sp, v, &nt.index, &worker);
  *t = *k;
  t->out = v[0];
  if (scratch) t->scratch = v[1];
  for (uint32_t l = 0; l < k->nleaves; l++) t->leaf_ptr[l] = v[l + 1 + scratch];
  return nt;
}

static void node_task_run(cg *c, const node_ctx *k, node_task *nt, int64_t ntasks, bool threaded) {
  cg_task_end(c, &nt->sp);
  LLVMValueRef ptrs[CG_TASK_CTX_MAX];
  unsigned n = node_task_ptrs(k, nt->scratch, ptrs);
  cg_parallel_for(c, nt->fn, cg_task_ctx(c, ptrs, n), ntasks, threaded);
}

static void flat(cg *c, node_ctx *k, int64_t n, flat_body body) {
  if (n <= 0) return;
  if (c->threads < 2 || !c->par || n < FLAT_THREADED_ELEMS || k->nleaves + 1 > CG_TASK_CTX_MAX) {
    flat_range(c, k, cg_i64(c, 0), cg_i64(c, n), body);
    return;
  }
  int64_t tasks = (int64_t)c->threads * FLAT_TASKS_PER_THREAD;
  int64_t per = ((n + tasks - 1) / tasks + FLAT_ALIGN - 1) / FLAT_ALIGN * FLAT_ALIGN;
  tasks = (n + per - 1) / per;
  node_ctx t;
  node_task nt = node_task_begin(c, k, false, &t);
  LLVMValueRef lo, hi = cg_task_range(c, nt.index, per, n, &lo);
  flat_range(c, &t, lo, hi, body);
  node_task_run(c, k, &nt, tasks, true);
}

static kiln_dtype dt(const kiln_node *n) { return (kiln_dtype)n->dtype; }
static const kiln_node *input(cg *c, node_ctx *k, int i) { return &c->g->nodes[k->n->inputs[i]]; }

/* ---- elementwise ---- */

/* An element-wise op applied to its operands' values. */
static LLVMValueRef ew_apply(cg *c, const kiln_node *n, const LLVMValueRef *v) {
  kiln_op op = (kiln_op)n->op;
  kiln_dtype in0 = (kiln_dtype)c->g->nodes[n->inputs[0]].dtype;
  LLVMValueRef r;
  if (op == KILN_OP_SELECT)
    r = LLVMBuildSelect(c->b, LLVMBuildICmp(c->b, LLVMIntNE, v[0], LLVMConstInt(c->i8, 0, 0), ""), v[1], v[2], "");
  else if (op == KILN_OP_CAST)
    r = cg_cast(c, in0, dt(n), v[0]);
  else if (n->ninputs == 1)
    r = cg_unary(c, op, dt(n), v[0]);
  else
    r = cg_binary(c, op, in0, v[0], v[1]);
  KILN_ASSERT(r);
  return r;
}

static LLVMValueRef iota_at(cg *c, const kiln_node *n, LLVMValueRef i) {
  int64_t axis = kiln_attr_int(n, KILN_ATTR_AXIS, 0), st[KILN_MAX_RANK];
  kiln_strides(n->rank, n->dims, st);
  LLVMValueRef v = LLVMBuildSRem(c->b, LLVMBuildSDiv(c->b, i, cg_i64(c, st[axis]), ""), cg_i64(c, n->dims[axis]), "");
  return cg_cast(c, KILN_I64, dt(n), v);
}

/* The flat index into broadcast_to n's input of n's element i (kernel k's rows
 * when i is their flat index and n's rows are as long). */
static LLVMValueRef broadcast_source(cg *c, const node_ctx *k, const kiln_node *n, LLVMValueRef i) {
  const kiln_node *x = &c->g->nodes[n->inputs[0]];
  int64_t ost[KILN_MAX_RANK], xst[KILN_MAX_RANK];
  kiln_strides(n->rank, n->dims, ost);
  kiln_strides(x->rank, x->dims, xst);
  bool rows = k->inner && i == k->flat_i && n->dims[n->rank - 1] == k->inner;
  LLVMValueRef xi = cg_i64(c, 0);
  for (int d = 0; d < x->rank; d++) {
    int od = n->rank - x->rank + d;
    if (x->dims[d] == 1) continue;
    LLVMValueRef iv;
    if (rows && od == n->rank - 1) iv = k->col;
    else if (rows) iv = LLVMBuildURem(c->b, LLVMBuildUDiv(c->b, k->row, cg_i64(c, ost[od] / k->inner), ""), cg_i64(c, n->dims[od]), "");
    else iv = LLVMBuildURem(c->b, LLVMBuildUDiv(c->b, i, cg_i64(c, ost[od]), ""), cg_i64(c, n->dims[od]), "");
    xi = add(c, xi, mul(c, iv, cg_i64(c, xst[d])));
  }
  return xi;
}

/* Whether node id's value in kernel k goes through a fused broadcast that divides
 * the index (not one of a scalar). */
static bool fuses_broadcast(cg *c, const node_ctx *k, uint32_t id) {
  const kiln_node *n = &c->g->nodes[id];
  for (uint32_t j = 0; j < n->ninputs; j++) {
    uint32_t p = n->inputs[j];
    if (!k->inlined || !k->inlined[p] || p == k->host) continue;
    const kiln_node *b = &c->g->nodes[p];
    if (b->op == KILN_OP_BROADCAST_TO && kiln_shape_numel(c->g->nodes[b->inputs[0]].rank, c->g->nodes[b->inputs[0]].dims) > 1)
      return true;
    if (fuses_broadcast(c, k, p)) return true;
  }
  return false;
}

/* Rows for kernel k's flat loops when it broadcasts along rows of at least a vector. */
static void use_rows(cg *c, node_ctx *k) {
  const kiln_node *n = k->n;
  int64_t last = n->rank ? n->dims[n->rank - 1] : 0;
  if (n->rank >= 2 && last >= c->vec_bytes / (int64_t)kiln_dtype_size(dt(n)) && fuses_broadcast(c, k, k->id)) k->inner = last;
}

/* Kernel k's pointer to stored node id, or NULL when id is not among its reads. */
static LLVMValueRef leaf_ptr_of(const node_ctx *k, uint32_t id) {
  for (uint32_t l = 0; l < k->nleaves; l++)
    if (k->leaf[l] == id) return k->leaf_ptr[l];
  return NULL;
}

/* A matmul/conv/pool kernel's pointer to its input id: the buffer; for a fused
 * reshape (a view, passes/fuse.c) its source's; for an unslice fused into a depthwise
 * convolution (conv_geom.up) the unslice's source. */
static LLVMValueRef operand_ptr(cg *c, const node_ctx *k, uint32_t id) {
  const kiln_node *n = &c->g->nodes[id];
  if ((n->op == KILN_OP_UNSLICE || n->op == KILN_OP_RESHAPE) && k->inlined && k->inlined[id])
    return leaf_ptr_of(k, n->inputs[0]);
  return leaf_ptr_of(k, id);
}

/* The value of node id at flat index i inside kernel k: loaded from a leaf buffer,
 * or computed when the node is fused into the kernel. */
static LLVMValueRef value_of(cg *c, node_ctx *k, uint32_t id, LLVMValueRef i) {
  const kiln_node *n = &c->g->nodes[id];
  if (id == k->host) return cg_load(c, dt(n), k->out, i); /* the epilogue runs in place */
  if (!k->inlined || !k->inlined[id]) {
    LLVMValueRef p = leaf_ptr_of(k, id);
    KILN_ASSERT(p && "a kernel reads a node that is neither fused nor among its parameters");
    return cg_load(c, dt(n), p, i);
  }
  switch ((kiln_op)n->op) {
  case KILN_OP_CONST: return cg_fill_value(c, dt(n), kiln_attr_float(n, KILN_ATTR_VALUE, 0));
  case KILN_OP_IOTA: return iota_at(c, n, i);
  case KILN_OP_RESHAPE: return value_of(c, k, n->inputs[0], i);
  case KILN_OP_BROADCAST_TO: return value_of(c, k, n->inputs[0], broadcast_source(c, k, n, i));
  default: {
    LLVMValueRef v[3];
    for (uint32_t j = 0; j < n->ninputs; j++) v[j] = value_of(c, k, n->inputs[j], i);
    return ew_apply(c, n, v);
  }
  }
}

static LLVMValueRef load_in(cg *c, node_ctx *k, int j, LLVMValueRef i) { return value_of(c, k, k->n->inputs[j], i); }

static void ew_body(cg *c, node_ctx *k, LLVMValueRef i) {
  LLVMValueRef v[3];
  for (uint32_t j = 0; j < k->n->ninputs; j++) v[j] = load_in(c, k, (int)j, i);
  cg_store(c, dt(k->n), ew_apply(c, k->n, v), k->out, i);
}

/* ---- sources ---- */

static void fill_body(cg *c, node_ctx *k, LLVMValueRef i) {
  cg_store(c, dt(k->n), cg_fill_value(c, dt(k->n), kiln_attr_float(k->n, KILN_ATTR_VALUE, 0)), k->out, i);
}

static void iota_body(cg *c, node_ctx *k, LLVMValueRef i) { cg_store(c, dt(k->n), iota_at(c, k->n, i), k->out, i); }

/* The same SplitMix64 finaliser as ir/rng.c, on i64 values. */
static LLVMValueRef rng_uniform01(cg *c, LLVMValueRef seed_term, LLVMValueRef counter) {
  LLVMValueRef z = add(c, mul(c, counter, LLVMConstInt(c->i64, 0xD1B54A32D192ED03ull, 0)), seed_term);
  z = mul(c, LLVMBuildXor(c->b, z, LLVMBuildLShr(c->b, z, cg_i64(c, 30), ""), ""), LLVMConstInt(c->i64, 0xBF58476D1CE4E5B9ull, 0));
  z = mul(c, LLVMBuildXor(c->b, z, LLVMBuildLShr(c->b, z, cg_i64(c, 27), ""), ""), LLVMConstInt(c->i64, 0x94D049BB133111EBull, 0));
  z = LLVMBuildXor(c->b, z, LLVMBuildLShr(c->b, z, cg_i64(c, 31), ""), "");
  LLVMValueRef u = LLVMBuildUIToFP(c->b, LLVMBuildLShr(c->b, z, cg_i64(c, 11), ""), c->f64, "");
  return LLVMBuildFMul(c->b, u, LLVMConstReal(c->f64, 0x1.0p-53), "");
}

static void rng_body(cg *c, node_ctx *k, LLVMValueRef i) {
  const kiln_node *n = k->n;
  /* seed' * phi + c with seed' = kiln_rng_stream(seed, key), as in ir/rng.c */
  uint64_t seed = (uint64_t)kiln_attr_int(n, KILN_ATTR_SEED, 0);
  LLVMValueRef key = cg_cast(c, dt(input(c, k, 0)), KILN_I64, load_in(c, k, 0, cg_i64(c, 0)));
  LLVMValueRef stream = add(c, LLVMConstInt(c->i64, seed, 0), mul(c, key, LLVMConstInt(c->i64, 0xA0761D6478BD642Full, 0)));
  LLVMValueRef seed_term = add(c, mul(c, stream, LLVMConstInt(c->i64, 0x9E3779B97F4A7C15ull, 0)),
                               LLVMConstInt(c->i64, 0x8CB92BA72F3D8DD7ull, 0));
  double lo = kiln_attr_float(n, KILN_ATTR_LOW, 0), hi = kiln_attr_float(n, KILN_ATTR_HIGH, 1);
  LLVMValueRef v;
  if (n->op == KILN_OP_RNG_UNIFORM) {
    v = LLVMBuildFMul(c->b, LLVMConstReal(c->f64, hi - lo), rng_uniform01(c, seed_term, i), "");
    v = LLVMBuildFAdd(c->b, LLVMConstReal(c->f64, lo), v, "");
  } else {
    LLVMValueRef i2 = mul(c, i, cg_i64(c, 2));
    LLVMValueRef u1 = rng_uniform01(c, seed_term, i2), u2 = rng_uniform01(c, seed_term, add(c, i2, cg_i64(c, 1)));
    LLVMValueRef l = LLVMBuildFSub(c->b, LLVMConstReal(c->f64, 1.0), u1, "");
    l = cg_call_libm(c, "log", c->f64, &l, 1);
    LLVMValueRef r = LLVMBuildFMul(c->b, LLVMConstReal(c->f64, -2.0), l, "");
    r = cg_call_intrinsic(c, "llvm.sqrt", c->f64, &r, 1);
    LLVMValueRef a = LLVMBuildFMul(c->b, LLVMConstReal(c->f64, 6.283185307179586), u2, "");
    v = LLVMBuildFMul(c->b, r, cg_call_libm(c, "cos", c->f64, &a, 1), "");
    v = LLVMBuildFAdd(c->b, LLVMConstReal(c->f64, lo), LLVMBuildFMul(c->b, LLVMConstReal(c->f64, hi), v, ""), "");
  }
  cg_store(c, dt(n), cg_cast(c, KILN_F64, dt(n), v), k->out, i);
}

/* ---- reductions ---- */

typedef struct {
  node_ctx *k;
  bool red[KILN_MAX_RANK];
  int64_t kept_st[KILN_MAX_RANK];
  kiln_dtype xt;
} red_ctx;

static void red_body(cg *c, const LLVMValueRef *ivs, void *vctx) {
  red_ctx *r = vctx;
  const kiln_node *n = r->k->n, *x = &c->g->nodes[n->inputs[0]];
  LLVMValueRef j = cg_i64(c, 0);
  for (int d = 0; d < x->rank; d++)
    if (!r->red[d]) j = add(c, j, mul(c, ivs[d], cg_i64(c, r->kept_st[d])));
  LLVMValueRef v = load_in(c, r->k, 0, cg_linear(c, x->rank, x->dims, ivs));
  if (n->op == KILN_OP_ARGMAX) {
    LLVMValueRef pos = ivs[kiln_attr_int(n, KILN_ATTR_AXIS, 0)];
    LLVMValueRef best = cg_load(c, r->xt, r->k->scratch, j);
    LLVMValueRef gt = kiln_dtype_is_float(r->xt) ? LLVMBuildFCmp(c->b, LLVMRealOGT, v, best, "")
                                                 : LLVMBuildICmp(c->b, LLVMIntSGT, v, best, "");
    LLVMValueRef take = LLVMBuildOr(c->b, LLVMBuildICmp(c->b, LLVMIntEQ, pos, cg_i64(c, 0), ""), gt, "");
    cg_store(c, r->xt, LLVMBuildSelect(c->b, take, v, best, ""), r->k->scratch, j);
    cg_store(c, KILN_I64, LLVMBuildSelect(c->b, take, pos, cg_load(c, KILN_I64, r->k->out, j), ""), r->k->out, j);
    return;
  }
  LLVMValueRef acc = cg_load(c, r->xt, r->k->out, j), res;
  if (n->op == KILN_OP_REDUCE_MAX) res = cg_binary(c, KILN_OP_MAX, r->xt, acc, v);
  else if (n->op == KILN_OP_REDUCE_MIN) res = cg_binary(c, KILN_OP_MIN, r->xt, acc, v);
  else if (kiln_dtype_is_float(r->xt)) res = cg_fast(LLVMBuildFAdd(c->b, acc, v, ""), true);
  else res = add(c, acc, v);
  cg_store(c, r->xt, res, r->k->out, j);
}

static double identity_of(kiln_op op, kiln_dtype t) {
  bool fl = kiln_dtype_is_float(t);
  if (op == KILN_OP_REDUCE_MAX) return fl ? -__builtin_inf() : t == KILN_I32 ? (double)INT32_MIN : (double)INT64_MIN;
  if (op == KILN_OP_REDUCE_MIN) return fl ? __builtin_inf() : t == KILN_I32 ? (double)INT32_MAX : (double)INT64_MAX;
  return 0;
}

static void red_init_body(cg *c, node_ctx *k, LLVMValueRef i) {
  kiln_dtype xt = dt(&c->g->nodes[k->n->inputs[0]]);
  LLVMValueRef v = k->n->op == KILN_OP_ARGMAX ? cg_i64(c, 0) : cg_fill_value(c, xt, identity_of((kiln_op)k->n->op, xt));
  cg_store(c, dt(k->n), v, k->out, i);
}

static void mean_body(cg *c, node_ctx *k, LLVMValueRef i) {
  const kiln_node *n = k->n, *x = input(c, k, 0);
  /* Only called when the output is non-empty; an empty reduced axis gives 0/0 like the evaluator. */
  int64_t count = kiln_shape_numel(x->rank, x->dims) / kiln_shape_numel(n->rank, n->dims);
  LLVMValueRef v = cg_load(c, dt(n), k->out, i);
  v = kiln_dtype_is_float(dt(n)) ? LLVMBuildFDiv(c->b, v, LLVMConstReal(cg_type(c, dt(n)), (double)count), "")
                                 : cg_binary(c, KILN_OP_DIV, dt(n), v, LLVMConstInt(cg_type(c, dt(n)), (unsigned long long)count, 1));
  cg_store(c, dt(n), v, k->out, i);
}

/* Large reductions split the input's first dim into at most RED_PARTS parts, by
 * the shapes alone, so that a build for any thread count (AOT objects included)
 * sums in the same order. When that dim is kept, the parts own disjoint outputs
 * and each output sums exactly as a single loop would; when it is reduced, part p
 * accumulates into its own buffer (part 0: the output, the rest in scratch) and
 * the parts are combined in order at the end. */
enum { RED_PARTS = 8, RED_SPLIT_ELEMS = 1 << 16 };

static int64_t red_parts(const kiln_node *n, const kiln_node *x) {
  if (n->op == KILN_OP_ARGMAX || x->rank == 0 || kiln_shape_numel(x->rank, x->dims) < RED_SPLIT_ELEMS || x->dims[0] < 2)
    return 1;
  int64_t per = (x->dims[0] + RED_PARTS - 1) / RED_PARTS;
  return (x->dims[0] + per - 1) / per;
}

static bool red_first_dim_reduced(const kiln_node *n) {
  int64_t axes[KILN_MAX_RANK];
  int na = kiln_attr_ints(n, KILN_ATTR_AXES, axes);
  for (int i = 0; i < na; i++)
    if (axes[i] == 0) return true;
  return false;
}

static uint64_t red_scratch_bytes(const kiln_node *n, const kiln_node *x) {
  int64_t parts = red_parts(n, x);
  if (parts < 2 || !red_first_dim_reduced(n)) return 0;
  return (uint64_t)(parts - 1) * (uint64_t)kiln_shape_numel(n->rank, n->dims) * kiln_dtype_size((kiln_dtype)n->dtype);
}

/* cg_nest over dims with the first dim limited to [lo, hi). */
typedef struct {
  LLVMValueRef first;
  int rank;
  cg_nest_body body;
  void *ctx;
} nest_rest_ctx;
static void nest_rest_body(cg *c, const LLVMValueRef *ivs, void *vctx) {
  nest_rest_ctx *m = vctx;
  LLVMValueRef all[KILN_MAX_RANK];
  all[0] = m->first;
  for (int d = 1; d < m->rank; d++) all[d] = ivs[d - 1];
  m->body(c, all, m->ctx);
}
static void nest_from(cg *c, int rank, const int64_t *dims, LLVMValueRef lo, LLVMValueRef hi, cg_nest_body body, void *ctx) {
  cg_loop l;
  nest_rest_ctx m = {.rank = rank, .body = body, .ctx = ctx};
  m.first = cg_loop_begin(c, &l, lo, hi, cg_i64(c, 1));
  if (rank > 1) cg_nest(c, rank - 1, dims + 1, nest_rest_body, &m);
  else body(c, &m.first, ctx);
  cg_loop_end(c, &l);
}

static void reduce_in_parts(cg *c, node_ctx *k, red_ctx *r, int64_t parts) {
  const kiln_node *n = k->n, *x = input(c, k, 0);
  bool own_buffers = red_first_dim_reduced(n);
  int64_t on = kiln_shape_numel(n->rank, n->dims), per = (x->dims[0] + parts - 1) / parts;
  int64_t part_bytes = on * (int64_t)kiln_dtype_size(dt(n));
  node_ctx t;
  node_task nt = node_task_begin(c, k, true, &t);
  LLVMValueRef part = nt.index;
  if (own_buffers) { /* parts after the first start from the identity in scratch */
    LLVMValueRef mine = LLVMBuildGEP2(c->b, c->i8, t.scratch, (LLVMValueRef[]){mul(c, LLVMBuildSub(c->b, part, cg_i64(c, 1), ""), cg_i64(c, part_bytes))}, 1, "");
    t.out = LLVMBuildSelect(c->b, LLVMBuildICmp(c->b, LLVMIntEQ, part, cg_i64(c, 0), ""), t.out, mine, "");
    LLVMBasicBlockRef init = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "part.init"),
                      go = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "part.sum");
    LLVMBuildCondBr(c->b, LLVMBuildICmp(c->b, LLVMIntSGT, part, cg_i64(c, 0), ""), init, go);
    LLVMPositionBuilderAtEnd(c->b, init);
    flat_range(c, &t, cg_i64(c, 0), cg_i64(c, on), red_init_body);
    LLVMBuildBr(c->b, go);
    LLVMPositionBuilderAtEnd(c->b, go);
  }
  red_ctx rt = *r;
  rt.k = &t;
  LLVMValueRef lo, hi = cg_task_range(c, part, per, x->dims[0], &lo);
  nest_from(c, x->rank, x->dims, lo, hi, red_body, &rt);
  node_task_run(c, k, &nt, parts, c->threads > 1);
  if (!own_buffers) return;
  /* out = combine(out, part 1), then part 2, ... */
  kiln_op combine = n->op == KILN_OP_REDUCE_MAX ? KILN_OP_MAX : n->op == KILN_OP_REDUCE_MIN ? KILN_OP_MIN : KILN_OP_ADD;
  cg_loop lp, le;
  LLVMValueRef p = cg_loop_begin(c, &lp, cg_i64(c, 1), cg_i64(c, parts), cg_i64(c, 1));
  LLVMValueRef src = LLVMBuildGEP2(c->b, c->i8, k->scratch, (LLVMValueRef[]){mul(c, LLVMBuildSub(c->b, p, cg_i64(c, 1), ""), cg_i64(c, part_bytes))}, 1, "");
  LLVMValueRef e = cg_loop_begin(c, &le, cg_i64(c, 0), cg_i64(c, on), cg_i64(c, 1));
  cg_store(c, dt(n), cg_binary(c, combine, dt(n), cg_load(c, dt(n), k->out, e), cg_load(c, dt(n), src, e)), k->out, e);
  cg_loop_end(c, &le);
  cg_loop_end(c, &lp);
}

static void lower_reduce(cg *c, node_ctx *k) {
  const kiln_node *n = k->n, *x = input(c, k, 0);
  red_ctx r = {.k = k, .xt = dt(x)};
  int64_t axes[KILN_MAX_RANK], kept[KILN_MAX_RANK];
  if (n->op == KILN_OP_ARGMAX) {
    r.red[kiln_attr_int(n, KILN_ATTR_AXIS, 0)] = true;
  } else {
    int na = kiln_attr_ints(n, KILN_ATTR_AXES, axes);
    for (int i = 0; i < na; i++) r.red[axes[i]] = true;
  }
  for (int d = 0; d < x->rank; d++) kept[d] = r.red[d] ? 1 : x->dims[d];
  kiln_strides(x->rank, kept, r.kept_st);
  int64_t on = kiln_shape_numel(n->rank, n->dims), parts = red_parts(n, x);
  flat(c, k, on, red_init_body);
  if (parts > 1 && on > 0 && k->nleaves + 2 <= CG_TASK_CTX_MAX) reduce_in_parts(c, k, &r, parts);
  else cg_nest(c, x->rank, x->dims, red_body, &r);
  if (n->op == KILN_OP_REDUCE_MEAN) flat(c, k, on, mean_body);
}

/* ---- movement ---- */

typedef struct {
  node_ctx *k;
  int64_t st[KILN_MAX_RANK]; /* input strides */
  int64_t a[KILN_MAX_RANK], b[KILN_MAX_RANK], s[KILN_MAX_RANK];
  int64_t offset;            /* concat */
  uint32_t which;            /* concat input */
  LLVMBasicBlockRef fail;    /* gather */
} mov_ctx;

static void copy_body(cg *c, node_ctx *k, LLVMValueRef i) { cg_store(c, dt(k->n), load_in(c, k, 0, i), k->out, i); }

static void transpose_body(cg *c, const LLVMValueRef *ivs, void *vctx) {
  mov_ctx *m = vctx;
  const kiln_node *n = m->k->n;
  LLVMValueRef xi = cg_i64(c, 0);
  for (int d = 0; d < n->rank; d++) xi = add(c, xi, mul(c, ivs[d], cg_i64(c, m->st[m->a[d]])));
  cg_store(c, dt(n), load_in(c, m->k, 0, xi), m->k->out, cg_linear(c, n->rank, n->dims, ivs));
}

static void broadcast_body(cg *c, const LLVMValueRef *ivs, void *vctx) {
  mov_ctx *m = vctx;
  const kiln_node *n = m->k->n, *x = input(c, m->k, 0);
  LLVMValueRef xi = cg_i64(c, 0);
  for (int d = 0; d < x->rank; d++)
    if (x->dims[d] != 1) xi = add(c, xi, mul(c, ivs[n->rank - x->rank + d], cg_i64(c, m->st[d])));
  cg_store(c, dt(n), load_in(c, m->k, 0, xi), m->k->out, cg_linear(c, n->rank, n->dims, ivs));
}

static void concat_body(cg *c, const LLVMValueRef *ivs, void *vctx) {
  mov_ctx *m = vctx;
  const kiln_node *n = m->k->n, *x = input(c, m->k, (int)m->which);
  int64_t axis = kiln_attr_int(n, KILN_ATTR_AXIS, 0);
  LLVMValueRef oivs[KILN_MAX_RANK];
  for (int d = 0; d < n->rank; d++) oivs[d] = d == axis ? add(c, ivs[d], cg_i64(c, m->offset)) : ivs[d];
  LLVMValueRef v = load_in(c, m->k, (int)m->which, cg_linear(c, x->rank, x->dims, ivs));
  cg_store(c, dt(n), v, m->k->out, cg_linear(c, n->rank, n->dims, oivs));
}

/* Offset (strides m->st) of position ivs of a slice starting at m->a with steps m->s. */
static LLVMValueRef strided_offset(cg *c, const mov_ctx *m, int rank, const LLVMValueRef *ivs) {
  LLVMValueRef off = cg_i64(c, 0);
  for (int d = 0; d < rank; d++)
    off = add(c, off, mul(c, add(c, cg_i64(c, m->a[d]), mul(c, ivs[d], cg_i64(c, m->s[d]))), cg_i64(c, m->st[d])));
  return off;
}

static void slice_body(cg *c, const LLVMValueRef *ivs, void *vctx) {
  mov_ctx *m = vctx;
  const kiln_node *n = m->k->n;
  LLVMValueRef xi = strided_offset(c, m, n->rank, ivs);
  cg_store(c, dt(n), load_in(c, m->k, 0, xi), m->k->out, cg_linear(c, n->rank, n->dims, ivs));
}

/* Loads from a clamped index and selects the pad value, so the loop stays branch-free. */
static void pad_body(cg *c, const LLVMValueRef *ivs, void *vctx) {
  mov_ctx *m = vctx;
  const kiln_node *n = m->k->n, *x = input(c, m->k, 0);
  LLVMValueRef xi = cg_i64(c, 0), inside = LLVMConstInt(c->i1, 1, 0);
  for (int d = 0; d < n->rank; d++) {
    LLVMValueRef q = LLVMBuildSub(c->b, ivs[d], cg_i64(c, m->a[d]), "");
    LLVMValueRef ok = LLVMBuildICmp(c->b, LLVMIntULT, q, cg_i64(c, x->dims[d]), "");
    inside = LLVMBuildAnd(c->b, inside, ok, "");
    xi = add(c, xi, mul(c, LLVMBuildSelect(c->b, ok, q, cg_i64(c, 0), ""), cg_i64(c, m->st[d])));
  }
  LLVMValueRef pv = cg_fill_value(c, dt(n), kiln_attr_float(n, KILN_ATTR_VALUE, 0));
  LLVMValueRef v = kiln_shape_numel(x->rank, x->dims) ? LLVMBuildSelect(c->b, inside, load_in(c, m->k, 0, xi), pv, "") : pv;
  cg_store(c, dt(n), v, m->k->out, cg_linear(c, n->rank, n->dims, ivs));
}

/* Gather and scatter_add address a tensor of `rank` dims (strides m->st) whose dim `axis` has
 * `size` entries: the index is loaded from indices at ivs[axis..], negatives wrap, anything
 * outside [0, size) branches to m->fail; the other dims come from ivs. Returns the offset. */
static LLVMValueRef indexed_offset(cg *c, mov_ctx *m, const kiln_node *ix, int ix_input, const LLVMValueRef *ivs,
                                   int64_t axis, int rank, int64_t size) {
  LLVMValueRef v = cg_cast(c, dt(ix), KILN_I64, load_in(c, m->k, ix_input, cg_linear(c, ix->rank, ix->dims, ivs + axis)));
  LLVMValueRef neg = LLVMBuildICmp(c->b, LLVMIntSLT, v, cg_i64(c, 0), "");
  v = LLVMBuildSelect(c->b, neg, add(c, v, cg_i64(c, size)), v, "");
  LLVMBasicBlockRef ok = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "idx.ok");
  LLVMBuildCondBr(c->b, LLVMBuildICmp(c->b, LLVMIntULT, v, cg_i64(c, size), ""), ok, m->fail);
  LLVMPositionBuilderAtEnd(c->b, ok);
  LLVMValueRef off = cg_i64(c, 0);
  for (int d = 0; d < rank; d++) {
    LLVMValueRef iv = d < axis ? ivs[d] : d == axis ? v : ivs[d + ix->rank - 1];
    off = add(c, off, mul(c, iv, cg_i64(c, m->st[d])));
  }
  return off;
}

static void gather_body(cg *c, const LLVMValueRef *ivs, void *vctx) {
  mov_ctx *m = vctx;
  const kiln_node *n = m->k->n, *x = input(c, m->k, 0), *ix = input(c, m->k, 1);
  int64_t axis = kiln_attr_int(n, KILN_ATTR_AXIS, 0);
  LLVMValueRef xi = indexed_offset(c, m, ix, 1, ivs, axis, x->rank, x->dims[axis]);
  cg_store(c, dt(n), load_in(c, m->k, 0, xi), m->k->out, cg_linear(c, n->rank, n->dims, ivs));
}

static void zero_body(cg *c, node_ctx *k, LLVMValueRef i) { cg_store(c, dt(k->n), cg_fill_value(c, dt(k->n), 0), k->out, i); }

/* Slice's index map with load and store swapped; m->st holds the output's strides. */
static void unslice_body(cg *c, const LLVMValueRef *ivs, void *vctx) {
  mov_ctx *m = vctx;
  const kiln_node *n = m->k->n, *x = input(c, m->k, 0);
  LLVMValueRef oi = strided_offset(c, m, n->rank, ivs);
  cg_store(c, dt(n), load_in(c, m->k, 0, cg_linear(c, x->rank, x->dims, ivs)), m->k->out, oi);
}

static void scatter_add_body(cg *c, const LLVMValueRef *ivs, void *vctx) {
  mov_ctx *m = vctx;
  const kiln_node *n = m->k->n, *ix = input(c, m->k, 0), *u = input(c, m->k, 1);
  int64_t axis = kiln_attr_int(n, KILN_ATTR_AXIS, 0);
  LLVMValueRef oi = indexed_offset(c, m, ix, 0, ivs, axis, n->rank, n->dims[axis]);
  LLVMValueRef x = load_in(c, m->k, 1, cg_linear(c, u->rank, u->dims, ivs));
  LLVMValueRef acc = cg_load(c, dt(n), m->k->out, oi);
  cg_store(c, dt(n), cg_binary(c, KILN_OP_ADD, dt(n), acc, x), m->k->out, oi);
}

/* Index checks branch to a block returning node id + 1, which the entry passes on. */
static LLVMBasicBlockRef fail_block(cg *c, node_ctx *k) {
  LLVMBasicBlockRef fail = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "bad.index");
  LLVMBasicBlockRef here = LLVMGetInsertBlock(c->b);
  LLVMPositionBuilderAtEnd(c->b, fail);
  LLVMBuildRet(c->b, LLVMConstInt(c->i32, k->id + 1, 0));
  LLVMPositionBuilderAtEnd(c->b, here);
  return fail;
}

static void one_hot_body(cg *c, node_ctx *k, LLVMValueRef i) {
  const kiln_node *n = k->n, *ix = input(c, k, 0);
  LLVMValueRef depth = cg_i64(c, n->dims[n->rank - 1]);
  LLVMValueRef v = cg_cast(c, dt(ix), KILN_I64, load_in(c, k, 0, LLVMBuildSDiv(c->b, i, depth, "")));
  LLVMValueRef hot = LLVMBuildICmp(c->b, LLVMIntEQ, v, LLVMBuildSRem(c->b, i, depth, ""), "");
  cg_store(c, dt(n), cg_cast(c, KILN_BOOL, dt(n), LLVMBuildZExt(c->b, hot, c->i8, "")), k->out, i);
}

/* A gather-style movement (each output element read from one place) over dims:
 * large ones run ranges of the first dim on the threads; m->k is rebound to the
 * task's arguments inside. */
/* A movement kernel's loops, the first over [lo, hi) (NULL: its whole extent), with m. */
typedef void (*mov_loops)(cg *c, mov_ctx *m, LLVMValueRef lo, LLVMValueRef hi, void *ctx);

/* loops on the thread pool, their first loop (extent iterations, cut at multiples of
 * step) split into tasks, when the kernel is large enough to be worth it. */
static void movement_tasks(cg *c, node_ctx *k, mov_ctx *m, int64_t numel, int64_t extent, int64_t step, mov_loops loops,
                           void *ctx) {
  if (c->threads < 2 || !c->par || extent < 2 * step || numel < FLAT_THREADED_ELEMS || k->nleaves + 1 > CG_TASK_CTX_MAX) {
    loops(c, m, NULL, NULL, ctx);
    return;
  }
  int64_t tasks = (int64_t)c->threads * FLAT_TASKS_PER_THREAD, per = (extent + tasks - 1) / tasks;
  per = (per + step - 1) / step * step;
  tasks = (extent + per - 1) / per;
  node_ctx t;
  node_task nt = node_task_begin(c, k, false, &t);
  mov_ctx mt = *m;
  mt.k = &t;
  LLVMValueRef lo, hi = cg_task_range(c, nt.index, per, extent, &lo);
  loops(c, &mt, lo, hi, ctx);
  node_task_run(c, k, &nt, tasks, true);
}

typedef struct {
  int rank;
  const int64_t *dims;
  cg_nest_body body;
} plain_nest;

static void plain_loops(cg *c, mov_ctx *m, LLVMValueRef lo, LLVMValueRef hi, void *ctx) {
  const plain_nest *p = ctx;
  if (lo) nest_from(c, p->rank, p->dims, lo, hi, p->body, m);
  else cg_nest(c, p->rank, p->dims, p->body, m);
}

static void movement_nest(cg *c, node_ctx *k, mov_ctx *m, int rank, const int64_t *dims, cg_nest_body body) {
  plain_nest p = {rank, dims, body};
  movement_tasks(c, k, m, kiln_shape_numel(rank, dims), rank ? dims[0] : 0, 1, plain_loops, &p);
}

/* A transpose that moves the input's contiguous dimension (a filter's in and out
 * channels swapped for an input gradient) reads one element per cache line along the
 * output's rows; in T x T tiles of those two dimensions the T lines it reads serve T
 * output rows while still cached: a 512x4608 transpose 3.0 -> 1.3 ms, 2048x2048
 * 31 -> 11 ms, ResNet's 3x3x512x512 filter (in/out swapped) 3.3 -> 2.6 ms (Zen 5). */
enum { TRANSPOSE_TILE_BYTES = 64 };

typedef struct {
  cg_nest_body body;
  mov_ctx *m;
  int rank, src, last; /* output dims: the one that walks the input's last, the output's last */
  const int64_t *dims;
  int64_t tile;
  LLVMValueRef lo, hi; /* the first loop's range (a task's share), or NULL */
  bool x;              /* whole tiles as vectors (vector_tile): the input is a stored buffer */
} tiled_nest;

/* A whole tile: W x W blocks (W the vector's elements) loaded as W vectors along the
 * input's contiguous dimension, transposed in registers and stored as W vectors along
 * the output's: level by level, each pair of rows b apart swaps its off-diagonal
 * blocks of b elements (b = W/2, ..., 1), W log2 W two-source shuffles in all. An
 * element at a time, a 3x3x512x512 filter's channel swap ran at 10 GB/s (1.9 ms on
 * Zen 5) beside 40 GB/s for a copy of the same size. */
static void vector_tile(cg *c, tiled_nest *t, const LLVMValueRef *ivs, LLVMValueRef bs, LLVMValueRef bl) {
  mov_ctx *m = t->m;
  const kiln_node *n = m->k->n;
  kiln_dtype ty = dt(n);
  int64_t es = (int64_t)kiln_dtype_size(ty), W = c->vec_bytes / es, ost[KILN_MAX_RANK];
  LLVMTypeRef vt = LLVMVectorType(cg_type(c, ty), (unsigned)W);
  kiln_strides(n->rank, n->dims, ost);
  LLVMValueRef in_base = cg_i64(c, 0), out_base = cg_i64(c, 0);
  for (int d = 0; d < n->rank; d++)
    if (d != t->src && d != t->last) {
      in_base = add(c, in_base, mul(c, ivs[d], cg_i64(c, m->st[m->a[d]])));
      out_base = add(c, out_base, mul(c, ivs[d], cg_i64(c, ost[d])));
    }
  int64_t in_l = m->st[m->a[t->last]], out_s = ost[t->src];
  LLVMValueRef x = operand_ptr(c, m->k, n->inputs[0]), rows[64], mask[64];
  for (int64_t sb = 0; sb < t->tile; sb += W)
    for (int64_t lb = 0; lb < t->tile; lb += W) {
      LLVMValueRef s0 = add(c, bs, cg_i64(c, sb)), l0 = add(c, bl, cg_i64(c, lb));
      for (int64_t j = 0; j < W; j++) {
        LLVMValueRef at = add(c, add(c, in_base, mul(c, add(c, l0, cg_i64(c, j)), cg_i64(c, in_l))), s0);
        rows[j] = LLVMBuildLoad2(c->b, vt, cg_gep(c, cg_type(c, ty), x, at), "");
        LLVMSetAlignment(rows[j], (unsigned)es);
      }
      for (int64_t b = W / 2; b >= 1; b /= 2)
        for (int64_t i = 0; i < W; i++) {
          if (i / b % 2) continue;
          LLVMValueRef lo_m, hi_m;
          for (int64_t j = 0; j < W; j++) mask[j] = LLVMConstInt(c->i32, (unsigned long long)(j / b % 2 ? W + j - b : j), 0);
          lo_m = LLVMConstVector(mask, (unsigned)W);
          for (int64_t j = 0; j < W; j++) mask[j] = LLVMConstInt(c->i32, (unsigned long long)(j / b % 2 ? W + j : j + b), 0);
          hi_m = LLVMConstVector(mask, (unsigned)W);
          LLVMValueRef lo_v = LLVMBuildShuffleVector(c->b, rows[i], rows[i + b], lo_m, "");
          rows[i + b] = LLVMBuildShuffleVector(c->b, rows[i], rows[i + b], hi_m, "");
          rows[i] = lo_v;
        }
      for (int64_t i = 0; i < W; i++) {
        LLVMValueRef at = add(c, add(c, out_base, mul(c, add(c, s0, cg_i64(c, i)), cg_i64(c, out_s))), l0);
        LLVMSetAlignment(LLVMBuildStore(c->b, rows[i], cg_gep(c, cg_type(c, ty), m->k->out, at)), (unsigned)es);
      }
    }
}

static void tiled_rec(cg *c, tiled_nest *t, int d, LLVMValueRef *ivs, bool first) {
  cg_loop l;
  while (d < t->rank && (d == t->src || d == t->last)) d++;
  LLVMValueRef lo = first && t->lo ? t->lo : cg_i64(c, 0);
  if (d < t->rank) { /* the dimensions outside the tile, in output order */
    ivs[d] = cg_loop_begin(c, &l, lo, first && t->hi ? t->hi : cg_i64(c, t->dims[d]), cg_i64(c, 1));
    tiled_rec(c, t, d + 1, ivs, false);
    cg_loop_end(c, &l);
    return;
  }
  cg_loop lbs, lbl, ls, ll;
  int64_t T = t->tile, ds = t->dims[t->src], dl = t->dims[t->last];
  LLVMValueRef bs = cg_loop_begin(c, &lbs, lo, first && t->hi ? t->hi : cg_i64(c, ds), cg_i64(c, T));
  LLVMValueRef bl = cg_loop_begin(c, &lbl, cg_i64(c, 0), cg_i64(c, dl), cg_i64(c, T));
  LLVMBasicBlockRef join = NULL;
  if (t->x) { /* whole tiles in registers, the ragged ones element by element */
    LLVMValueRef whole = LLVMBuildAnd(c->b, LLVMBuildICmp(c->b, LLVMIntSLE, add(c, bs, cg_i64(c, T)), cg_i64(c, ds), ""),
                                      LLVMBuildICmp(c->b, LLVMIntSLE, add(c, bl, cg_i64(c, T)), cg_i64(c, dl), ""), "");
    LLVMBasicBlockRef vec = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "tile.vec"),
                      ragged = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "tile.ragged");
    join = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "tile.done");
    LLVMBuildCondBr(c->b, whole, vec, ragged);
    LLVMPositionBuilderAtEnd(c->b, vec);
    vector_tile(c, t, ivs, bs, bl);
    LLVMBuildBr(c->b, join);
    LLVMPositionBuilderAtEnd(c->b, ragged);
  }
  ivs[t->src] = cg_loop_begin(c, &ls, bs, cg_smin(c, add(c, bs, cg_i64(c, T)), cg_i64(c, ds)), cg_i64(c, 1));
  ivs[t->last] = cg_loop_begin(c, &ll, bl, cg_smin(c, add(c, bl, cg_i64(c, T)), cg_i64(c, dl)), cg_i64(c, 1));
  t->body(c, ivs, t->m);
  if (join) {
    cg_loop_end_scalar(c, &ll);
    cg_loop_end_scalar(c, &ls);
    LLVMBuildBr(c->b, join);
    LLVMPositionBuilderAtEnd(c->b, join);
  } else {
    cg_loop_end_free(c, &ll);
    cg_loop_end_free(c, &ls);
  }
  cg_loop_end_scalar(c, &lbl);
  cg_loop_end_scalar(c, &lbs);
}

/* Whether the transpose moves the input's last dimension, and which output dimension walks it. */
static int transpose_tiled_src(const kiln_node *n, const int64_t *perm, int64_t tile) {
  int r = n->rank, src = -1;
  for (int d = 0; d < r; d++)
    if (perm[d] == r - 1) src = d;
  return r >= 2 && src >= 0 && src != r - 1 && n->dims[src] >= tile && n->dims[r - 1] >= tile ? src : -1;
}

static void tiled_loops(cg *c, mov_ctx *m, LLVMValueRef lo, LLVMValueRef hi, void *ctx) {
  tiled_nest *t = ctx;
  LLVMValueRef ivs[KILN_MAX_RANK];
  t->m = m, t->lo = lo, t->hi = hi;
  tiled_rec(c, t, 0, ivs, true);
}

static void lower_transpose(cg *c, node_ctx *k, mov_ctx *m) {
  const kiln_node *n = k->n;
  int64_t tile = TRANSPOSE_TILE_BYTES / (int64_t)kiln_dtype_size(dt(n));
  int src = transpose_tiled_src(n, m->a, tile);
  if (src < 0) {
    movement_nest(c, k, m, n->rank, n->dims, transpose_body);
    return;
  }
  int64_t es = (int64_t)kiln_dtype_size(dt(n)), w = c->vec_bytes / es;
  bool vec = (es == 4 || es == 8) && w >= 2 && w <= 64 && tile % w == 0 && operand_ptr(c, k, n->inputs[0]);
  tiled_nest t = {.body = transpose_body, .rank = n->rank, .src = src, .last = n->rank - 1, .dims = n->dims, .tile = tile,
                  .x = vec};
  int outer = 0; /* the first loop of the tiled order: split between the threads */
  while (outer == src || outer == n->rank - 1) outer++;
  bool tiles_first = outer >= n->rank;
  movement_tasks(c, k, m, kiln_shape_numel(n->rank, n->dims), tiles_first ? n->dims[src] : n->dims[outer],
                 tiles_first ? tile : 1, tiled_loops, &t);
}

static void lower_movement(cg *c, node_ctx *k) {
  const kiln_node *n = k->n, *x = input(c, k, 0);
  mov_ctx m = {.k = k};
  kiln_strides(x->rank, x->dims, m.st);
  int64_t numel = kiln_shape_numel(n->rank, n->dims);
  switch ((kiln_op)n->op) {
  case KILN_OP_RESHAPE: flat(c, k, numel, copy_body); return;
  case KILN_OP_TRANSPOSE:
    kiln_attr_ints(n, KILN_ATTR_PERM, m.a);
    lower_transpose(c, k, &m);
    return;
  case KILN_OP_BROADCAST_TO: movement_nest(c, k, &m, n->rank, n->dims, broadcast_body); return;
  case KILN_OP_CONCAT: {
    int64_t axis = kiln_attr_int(n, KILN_ATTR_AXIS, 0);
    for (m.which = 0; m.which < n->ninputs; m.which++) {
      const kiln_node *y = input(c, k, (int)m.which);
      cg_nest(c, y->rank, y->dims, concat_body, &m);
      m.offset += y->dims[axis];
    }
    return;
  }
  case KILN_OP_SLICE:
    kiln_slice_map(n, x->rank, x->dims, m.a, m.s);
    movement_nest(c, k, &m, n->rank, n->dims, slice_body);
    return;
  case KILN_OP_PAD:
    kiln_attr_ints(n, KILN_ATTR_PADS_LO, m.a);
    movement_nest(c, k, &m, n->rank, n->dims, pad_body);
    return;
  case KILN_OP_GATHER:
    m.fail = fail_block(c, k);
    cg_nest(c, n->rank, n->dims, gather_body, &m);
    return;
  case KILN_OP_UNSLICE:
    kiln_slice_map(n, n->rank, n->dims, m.a, m.s);
    kiln_strides(n->rank, n->dims, m.st);
    flat(c, k, numel, zero_body);
    cg_nest(c, x->rank, x->dims, unslice_body, &m);
    return;
  case KILN_OP_SCATTER_ADD: {
    const kiln_node *u = input(c, k, 1);
    kiln_strides(n->rank, n->dims, m.st);
    m.fail = fail_block(c, k);
    flat(c, k, numel, zero_body);
    cg_nest(c, u->rank, u->dims, scatter_add_body, &m);
    return;
  }
  default: KILN_ASSERT(!"not a movement op");
  }
}

/* ---- epilogues ---- */

/* Kernel k's element-wise body over [lo, hi), run in place on the host's result
 * (cg_epilogue): e->ctx is k, e->ptrs its leaves as the caller sees them. */
static void epilogue_apply(cg *c, const cg_epilogue *e, LLVMValueRef out, LLVMValueRef lo, LLVMValueRef hi) {
  node_ctx t = *(const node_ctx *)e->ctx;
  t.out = out;
  for (uint32_t l = 0; l < t.nleaves; l++) t.leaf_ptr[l] = e->ptrs[l];
  flat_range(c, &t, lo, hi, ew_body);
}

/* A pool kernel hosting the convolution before it (passes/fuse.c): each piece of
 * the convolution, in a per-worker buffer, is finished by the element-wise chain
 * between them (when there is one) in place, then pooled into the kernel's output
 * while it is still cached. e->ptrs: the kernel's reads, then its output. */
typedef struct {
  node_ctx chain; /* the pool's input computed on the host's result */
  bool has_chain;
  const kiln_node *pool;
} pooled_ctx;

static void pooled_apply(cg *c, const cg_epilogue *e, LLVMValueRef out, LLVMValueRef lo, LLVMValueRef hi) {
  const pooled_ctx *pc = e->ctx;
  node_ctx t = pc->chain;
  t.out = out;
  for (uint32_t l = 0; l < t.nleaves; l++) t.leaf_ptr[l] = e->ptrs[l];
  if (pc->has_chain) flat_range(c, &t, lo, hi, ew_body);
  cg_pool2d_rows(c, pc->pool, out, e->ptrs[t.nleaves], lo, hi);
}

/* A pool kernel with a host: the convolution it runs before pooling (passes/fuse.c). */
static bool hosts_pooled(const kiln_node *n, uint32_t host) {
  return (n->op == KILN_OP_MAX_POOL2D || n->op == KILN_OP_AVG_POOL2D) && host != UINT32_MAX;
}

static int64_t pool_align_pixels(cg *c, const kiln_node *pool) {
  int64_t window[2];
  kiln_attr_ints(pool, KILN_ATTR_WINDOW, window);
  return window[0] * c->g->nodes[pool->inputs[0]].dims[2];
}

static bool lower_pooled(cg *c, node_ctx *k) {
  const kiln_node *h = &c->g->nodes[k->host];
  if (h->op != KILN_OP_CONV2D || !cg_conv_can_pool(c, h)) {
    snprintf(c->err, sizeof c->err, "codegen: %%%u %s cannot run %%%u %s before it", k->id, kiln_ops[k->n->op].name, k->host,
             kiln_ops[h->op].name);
    return false;
  }
  uint32_t src = k->n->inputs[0];
  pooled_ctx pc = {.chain = *k, .has_chain = src != k->host, .pool = k->n};
  pc.chain.n = &c->g->nodes[src];
  pc.chain.id = src;
  pc.chain.inner = 0;
  if (pc.has_chain) use_rows(c, &pc.chain);
  cg_epilogue ep = {.apply = pooled_apply, .ctx = &pc, .nptrs = k->nleaves + 1, .align_pixels = pool_align_pixels(c, k->n),
                    .private_out = true};
  memcpy(ep.ptrs, k->leaf_ptr, sizeof(LLVMValueRef) * k->nleaves);
  ep.ptrs[k->nleaves] = k->out;
  LLVMValueRef in[2] = {operand_ptr(c, k, h->inputs[0]), operand_ptr(c, k, h->inputs[1])};
  KILN_ASSERT(in[0] && in[1] && "a host's inputs are among its kernel's reads");
  cg_conv2d(c, h, NULL, in, k->scratch, &ep);
  return true;
}

/* Kernel k = its host (a matmul, convolution or max-pool gradient) into k->out,
 * finished by k's element-wise nodes piece by piece; false (c->err set) when the
 * host has no lowering. */
static bool lower_hosted(cg *c, node_ctx *k) {
  _Static_assert(KILN_MAX_EPILOGUE_READS < CG_EPILOGUE_PTRS, "an epilogue carries every read of its kernel and a pool's output");
  if (hosts_pooled(k->n, k->host)) return lower_pooled(c, k);
  const kiln_node *h = &c->g->nodes[k->host];
  cg_epilogue ep = {.apply = epilogue_apply, .ctx = k, .nptrs = k->nleaves};
  memcpy(ep.ptrs, k->leaf_ptr, sizeof(LLVMValueRef) * k->nleaves);
  LLVMValueRef in[2] = {operand_ptr(c, k, h->inputs[0]), operand_ptr(c, k, h->inputs[1])};
  KILN_ASSERT(in[0] && in[1] && "a host's inputs are among its kernel's reads");
  switch ((kiln_op)h->op) {
  case KILN_OP_MATMUL: cg_matmul(c, h, k->out, in, k->scratch, &ep); return true;
  case KILN_OP_CONV2D: cg_conv2d(c, h, k->out, in, k->scratch, &ep); return true;
  case KILN_OP_MAX_POOL2D_GRAD: return cg_max_pool2d_grad(c, h, k->out, in, &ep);
  default: KILN_ASSERT(!"not a host op"); return false;
  }
}

/* Emits node k's body; false if the op has no lowering (reported, never silent). */
static bool lower_node(cg *c, node_ctx *k) {
  const kiln_node *n = k->n;
  unsigned f = kiln_ops[n->op].flags;
  int64_t numel = kiln_shape_numel(n->rank, n->dims);
  if (f & EW) use_rows(c, k);
  if (k->host != UINT32_MAX) return lower_hosted(c, k);
  switch ((kiln_op)n->op) {
  case KILN_OP_CONST: flat(c, k, numel, fill_body); return true;
  case KILN_OP_IOTA: flat(c, k, numel, iota_body); return true;
  case KILN_OP_RNG_UNIFORM:
  case KILN_OP_RNG_NORMAL: flat(c, k, numel, rng_body); return true;
  case KILN_OP_MATMUL: cg_matmul(c, n, k->out, k->in, k->scratch, NULL); return true;
  case KILN_OP_CONV2D: cg_conv2d(c, n, k->out, k->in, k->scratch, NULL); return true;
  case KILN_OP_CONV2D_FILTER_GRAD: cg_conv2d_filter_grad(c, n, k->out, k->in, k->scratch); return true;
  case KILN_OP_MAX_POOL2D:
  case KILN_OP_AVG_POOL2D: cg_pool2d(c, n, k->out, k->in); return true;
  case KILN_OP_MAX_POOL2D_GRAD: return cg_max_pool2d_grad(c, n, k->out, k->in, NULL);
  case KILN_OP_ONE_HOT: flat(c, k, numel, one_hot_body); return true;
  default: break;
  }
  if (f & EW) {
    flat(c, k, numel, ew_body);
    return true;
  }
  if (f & RED) {
    lower_reduce(c, k);
    return true;
  }
  if (f & MOV) {
    lower_movement(c, k);
    return true;
  }
  snprintf(c->err, sizeof c->err, "codegen: no lowering for op '%s'", kiln_ops[n->op].name);
  return false;
}

static uint64_t scratch_bytes(cg *c, const kiln_node *n) {
  if (n->op == KILN_OP_ARGMAX)
    return (uint64_t)kiln_shape_numel(n->rank, n->dims) * kiln_dtype_size((kiln_dtype)c->g->nodes[n->inputs[0]].dtype);
  if (kiln_ops[n->op].flags & RED) return red_scratch_bytes(n, &c->g->nodes[n->inputs[0]]);
  return cg_scratch_bytes(c, n);
}

/* ---- profiling (JIT only: host addresses are constants of the code) ---- */

static LLVMValueRef host_ptr(cg *c, const void *p) { return LLVMConstIntToPtr(cg_i64(c, (int64_t)(uintptr_t)p), c->ptr); }

static LLVMValueRef profile_clock(cg *c, LLVMBuilderRef b) {
  LLVMTypeRef ty = LLVMFunctionType(c->i64, NULL, 0, 0);
  return LLVMBuildCall2(b, ty, host_ptr(c, (const void *)(uintptr_t)c->profile_clock), NULL, 0, "");
}

/* profile[2k] += now - t0, profile[2k + 1] += 1 */
static void profile_add(cg *c, LLVMBuilderRef b, size_t k, LLVMValueRef t0) {
  LLVMValueRef spent = LLVMBuildSub(b, profile_clock(c, b), t0, "");
  for (int f = 0; f < 2; f++) {
    LLVMValueRef slot = host_ptr(c, c->profile + 2 * k + (size_t)f);
    LLVMValueRef old = LLVMBuildLoad2(b, c->i64, slot, "");
    LLVMBuildStore(b, LLVMBuildAdd(b, old, f ? cg_i64(c, 1) : spent, ""), slot);
  }
}

static uint64_t align64(uint64_t x) { return (x + 63) & ~(uint64_t)63; }
static uint64_t node_bytes(const kiln_node *n) {
  return (uint64_t)kiln_shape_numel(n->rank, n->dims) * kiln_dtype_size((kiln_dtype)n->dtype);
}

/* Constant weights that only a matmul's or convolution's GEMM reads as its B are
 * stored packed in the layout its packed path reads (cg_prepack), once at compile
 * time instead of at every call: streaming a 9.4 MB filter into panels took a third
 * of ResNet-18's 7x7x512 layers at batch 1. Not for weights that something else
 * reads too or that are outputs: those need the plain layout. */
typedef struct {
  bool *prepacked;    /* per node: a matmul/conv2d reading its B prepacked (cg.b_prepacked) */
  cg_prepack *layout; /* per node: a constant stored packed has its layout (nr > 0) */
} prepack_choice;

static void prepack_choice_free(prepack_choice *p) { free(p->prepacked), free(p->layout); }

/* cg_lower's exit: what it held while emitting released, st passed on. */
static kiln_status lower_done(cg *c, prepack_choice *pre, kiln_schedule *sched, kiln_status st) {
  c->b_prepacked = NULL;
  c->inlined = NULL;
  prepack_choice_free(pre);
  kiln_schedule_free(sched);
  return st;
}

static kiln_status choose_prepacked(cg *c, const bool *live, prepack_choice *p) {
  const kiln_graph *g = c->g;
  uint32_t *readers = calloc(g->nnodes + 1, sizeof *readers);
  *p = (prepack_choice){calloc(g->nnodes + 1, 1), calloc(g->nnodes + 1, sizeof *p->layout)};
  if (!readers || !p->prepacked || !p->layout) {
    free(readers), prepack_choice_free(p);
    return kiln_set_error(KILN_ERR_NOMEM, "codegen: out of memory");
  }
  for (uint32_t i = 0; i < g->nnodes; i++)
    for (uint32_t j = 0; live[i] && j < g->nodes[i].ninputs; j++) readers[g->nodes[i].inputs[j]]++;
  for (uint32_t j = 0; j < g->noutputs; j++) readers[g->outputs[j].node] += 2; /* an output keeps its layout */
  for (uint32_t i = 0; i < g->nnodes; i++) {
    const kiln_node *n = &g->nodes[i];
    if (!live[i] || (n->op != KILN_OP_MATMUL && n->op != KILN_OP_CONV2D) || n->ninputs < 2) continue;
    uint32_t b = n->inputs[1];
    const kiln_node *w = &g->nodes[b];
    cg_prepack layout;
    if (w->op != KILN_OP_CONST || !w->data || readers[b] != 1 || n->inputs[0] == b || !cg_prepack_layout_of(c, n, &layout))
      continue;
    p->prepacked[i] = true;
    p->layout[b] = layout;
  }
  free(readers);
  return KILN_OK;
}

void cg_plan_free(cg_plan *p) {
  free(p->locs);
  free(p->out_node);
  free(p->out_direct);
  free(p->kernel_node);
  free(p->kernel_host);
  for (uint32_t k = 0; p->const_owned && k < p->nconst_args; k++)
    if (p->const_owned[k]) free((void *)p->const_data[k]);
  free((void *)p->const_data);
  free(p->const_owned);
  memset(p, 0, sizeof *p);
}

kiln_status cg_lower(cg *c, const char *entry_name, cg_plan *plan) {
  const kiln_graph *g = c->g;
  memset(plan, 0, sizeof *plan);
  plan->nin = kiln_graph_num_params(g);
  plan->nout = g->noutputs;
  plan->locs = calloc(g->nnodes + 1, sizeof *plan->locs);
  plan->out_node = calloc(g->noutputs + 1, sizeof *plan->out_node);
  plan->out_direct = calloc(g->noutputs + 1, sizeof *plan->out_direct);
  plan->kernel_node = calloc(g->nnodes + 1, sizeof *plan->kernel_node);
  plan->kernel_host = calloc(g->nnodes + 1, sizeof *plan->kernel_host);
  plan->const_data = calloc(g->nnodes + 1, sizeof *plan->const_data);
  plan->const_owned = calloc(g->nnodes + 1, sizeof *plan->const_owned);
  kiln_schedule sched;
  if (!plan->locs || !plan->out_node || !plan->out_direct || !plan->kernel_node || !plan->kernel_host || !plan->const_data ||
      !plan->const_owned)
    return kiln_set_error(KILN_ERR_NOMEM, "codegen: out of memory");
  double t0 = kiln_pass_clock_ms();
  kiln_status sst = kiln_schedule_build(g, !c->no_fusion, !c->no_epilogue, &sched);
  if (sst != KILN_OK) return sst;
  double t_fuse = kiln_pass_clock_ms() - t0;
  if (kiln_pass_dump_after("fuse")) {
    char *text;
    if (kiln_schedule_to_text(g, &sched, &text) == KILN_OK) fprintf(stderr, "--- after fuse:\n%s", text), free(text);
  }
  const bool *live = sched.live, *inlined = sched.inlined;
  plan->fused = sched.fused;
  c->inlined = inlined;

  prepack_choice pre;
  kiln_status pre_st = choose_prepacked(c, live, &pre);
  if (pre_st != KILN_OK) {
    kiln_schedule_free(&sched);
    return pre_st;
  }
  c->b_prepacked = pre.prepacked;
  uint32_t pi = 0;
  uint64_t ws = 0, scratch = 0;
  /* weights passed as arguments are packed after this loop, on the compile threads */
  cg_prepack_job *jobs = malloc(sizeof *jobs * (g->nnodes + 1));
  size_t njobs = 0;
  if (!jobs) pre_st = kiln_set_error(KILN_ERR_NOMEM, "codegen: out of memory");
  for (uint32_t i = 0; i < g->nnodes && pre_st == KILN_OK; i++) {
    const kiln_node *n = &g->nodes[i];
    buf_loc *l = &plan->locs[i];
    void *packed = NULL;
    uint64_t packed_bytes = n->op == KILN_OP_CONST && pre.layout[i].nr ? cg_prepack_bytes(&pre.layout[i]) : 0;
    if (packed_bytes && !(packed = kiln_alloc_large(packed_bytes))) {
      pre_st = kiln_set_error(KILN_ERR_NOMEM, "codegen: out of memory packing the weights of %%%u", i);
      break;
    }
    bool argument = n->op == KILN_OP_CONST && n->data && c->const_args && (n->nbytes > CG_CONST_EMBED_MAX || packed);
    if (packed && argument) jobs[njobs++] = (cg_prepack_job){&pre.layout[i], n->data, packed};
    else if (packed) cg_prepack_run(&pre.layout[i], n->data, packed);
    if (n->op == KILN_OP_PARAM) {
      l->kind = BUF_INPUT;
      l->index = pi++;
    } else if (argument) {
      l->kind = BUF_CONST;
      l->index = plan->nconst_args;
      plan->const_data[plan->nconst_args] = packed ? packed : n->data;
      plan->const_owned[plan->nconst_args++] = packed != NULL;
    } else if (n->op == KILN_OP_CONST && n->data) {
      const void *bytes = packed ? packed : n->data;
      unsigned nbytes = (unsigned)(packed ? packed_bytes : n->nbytes);
      l->kind = BUF_CONST;
      l->global = LLVMAddGlobal(c->mod, LLVMArrayType(c->i8, nbytes), "");
      LLVMSetInitializer(l->global, LLVMConstStringInContext(c->ctx, bytes, nbytes, 1));
      free(packed);
      LLVMSetGlobalConstant(l->global, 1);
      LLVMSetLinkage(l->global, LLVMPrivateLinkage);
      LLVMSetUnnamedAddress(l->global, LLVMGlobalUnnamedAddr);
      LLVMSetAlignment(l->global, 64);
    } else {
      l->kind = BUF_WORK;
    }
  }
  if (pre_st == KILN_OK) cg_prepack_run_all(jobs, njobs, cg_compile_threads());
  free(jobs);
  if (pre_st != KILN_OK) return lower_done(c, &pre, &sched, pre_st);
  for (uint32_t j = 0; j < g->noutputs; j++) {
    uint32_t node = g->outputs[j].node;
    plan->out_node[j] = (int32_t)node;
    buf_loc *l = &plan->locs[node];
    if (l->kind == BUF_WORK) {
      l->kind = BUF_OUTPUT;
      l->index = j;
      plan->out_direct[j] = true;
    }
  }
  /* intermediate buffers, placed by their last readers in the schedule */
  uint64_t *bytes = calloc(g->nnodes + 1, sizeof *bytes), *offsets = calloc(g->nnodes + 1, sizeof *offsets);
  kiln_memory_stats mem = {0};
  kiln_status pst = bytes && offsets ? KILN_OK : kiln_set_error(KILN_ERR_NOMEM, "codegen: out of memory");
  for (uint32_t i = 0; i < g->nnodes && pst == KILN_OK; i++)
    if (sched.kernel_of[i] != UINT32_MAX && plan->locs[i].kind == BUF_WORK) bytes[i] = node_bytes(&g->nodes[i]);
  t0 = kiln_pass_clock_ms();
  if (pst == KILN_OK) pst = kiln_plan_memory(g, bytes, sched.last, !c->no_memory_plan, offsets, &mem);
  double t_plan = kiln_pass_clock_ms() - t0;
  if (pst == KILN_OK && kiln_pass_dump_after("memory-plan")) {
    fprintf(stderr, "--- after memory-plan: %llu bytes of intermediates\n", (unsigned long long)mem.peak);
    for (uint32_t i = 0; i < g->nnodes; i++)
      if (bytes[i]) fprintf(stderr, "%%%u %s: offset %llu, %llu bytes\n", i, kiln_ops[g->nodes[i].op].name,
                            (unsigned long long)offsets[i], (unsigned long long)bytes[i]);
  }
  if (pst == KILN_OK && kiln_pass_stats_on())
    fprintf(stderr, "kiln: fuse: %zu kernels, %zu nodes fused (%.3f ms); memory-plan: %llu bytes, %llu without reuse (%.3f ms)\n",
            sched.nkernels, sched.fused, t_fuse, (unsigned long long)mem.peak, (unsigned long long)mem.unplanned, t_plan);
  for (uint32_t i = 0; i < g->nnodes && pst == KILN_OK; i++)
    if (bytes[i]) plan->locs[i].offset = offsets[i];
  free(bytes), free(offsets);
  if (pst != KILN_OK) {
    return lower_done(c, &pre, &sched, pst);
  }
  ws = mem.peak;
  plan->buffers_unplanned = mem.unplanned;
  for (uint32_t i = 0; i < g->nnodes; i++)
    if (live[i] && (!inlined[i] || kiln_can_host((kiln_op)g->nodes[i].op))) {
      uint64_t s = scratch_bytes(c, &g->nodes[i]); /* hosts' scratch too */
      if (!inlined[i] && hosts_pooled(&g->nodes[i], sched.host[i]))
        s = cg_conv_pooled_scratch_bytes(c, &g->nodes[sched.host[i]], pool_align_pixels(c, &g->nodes[i]));
      if (s > scratch) scratch = s;
    }
  uint64_t scratch_off = ws;
  plan->workspace = align64(ws + scratch) + 64;

  /* The entry function. */
  LLVMTypeRef entry_ty = LLVMFunctionType(c->i32, &c->ptr, 1, 0);
  LLVMValueRef entry = LLVMAddFunction(c->mod, entry_name, entry_ty);
  LLVMBasicBlockRef entry_bb = LLVMAppendBasicBlockInContext(c->ctx, entry, "entry");
  LLVMValueRef *ptrs = calloc(g->nnodes + 1, sizeof *ptrs);
  if (!ptrs) {
    return lower_done(c, &pre, &sched, kiln_set_error(KILN_ERR_NOMEM, "codegen: out of memory"));
  }
  LLVMBuilderRef eb = LLVMCreateBuilderInContext(c->ctx);
  LLVMPositionBuilderAtEnd(eb, entry_bb);
  LLVMValueRef args = LLVMGetParam(entry, 0);
#define ARG(k) LLVMBuildLoad2(eb, c->ptr, LLVMBuildGEP2(eb, c->ptr, args, (LLVMValueRef[]){cg_i64(c, (int64_t)(k))}, 1, ""), "")
  LLVMValueRef wsp = ARG(plan->nin + plan->nout);
  LLVMValueRef scratch_p = LLVMBuildGEP2(eb, c->i8, wsp, (LLVMValueRef[]){cg_i64(c, (int64_t)scratch_off)}, 1, "");
  bool threaded = c->threads > 1;
  LLVMValueRef par_p = threaded ? ARG(plan->nin + plan->nout + 1) : NULL;
  kiln_status st = KILN_OK;
  for (uint32_t i = 0; i < g->nnodes && st == KILN_OK; i++) {
    const kiln_node *n = &g->nodes[i];
    buf_loc *l = &plan->locs[i];
    if (!live[i] || inlined[i]) continue;
    switch (l->kind) {
    case BUF_INPUT: ptrs[i] = ARG(l->index); break;
    case BUF_OUTPUT: ptrs[i] = ARG(plan->nin + l->index); break;
    case BUF_CONST: ptrs[i] = l->global ? l->global : ARG(plan->nin + plan->nout + 2 + l->index); break;
    case BUF_WORK: ptrs[i] = LLVMBuildGEP2(eb, c->i8, wsp, (LLVMValueRef[]){cg_i64(c, (int64_t)l->offset)}, 1, ""); break;
    }
    if (l->kind == BUF_INPUT || l->kind == BUF_CONST) continue;
    /* The kernel: out, the buffers it reads, scratch (and the kiln_parallel). */
    const kiln_kernel *kern = &sched.kernels[sched.kernel_of[i]];
    LLVMTypeRef params[66];
    unsigned np = kern->nreads + 2 + threaded;
    for (unsigned j = 0; j < np; j++) params[j] = c->ptr;
    LLVMTypeRef fty = LLVMFunctionType(c->i32, params, np, 0);
    char name[64];
    snprintf(name, sizeof name, "node%u_%s", i, kiln_ops[n->op].name);
    LLVMValueRef fn = LLVMAddFunction(c->mod, name, fty);
    LLVMSetLinkage(fn, LLVMInternalLinkage);
    unsigned noalias = LLVMGetEnumAttributeKindForName("noalias", 7);
    LLVMAddAttributeAtIndex(fn, 1, LLVMCreateEnumAttribute(c->ctx, noalias, 0));
    LLVMAddAttributeAtIndex(fn, kern->nreads + 2, LLVMCreateEnumAttribute(c->ctx, noalias, 0));
    c->fn = fn;
    LLVMPositionBuilderAtEnd(c->b, LLVMAppendBasicBlockInContext(c->ctx, fn, "entry"));
    unsigned scratch_arg = kern->nreads + 1;
    c->par = threaded ? LLVMGetParam(fn, scratch_arg + 1) : NULL;
    node_ctx k = {.n = n, .id = i, .out = LLVMGetParam(fn, 0), .scratch = LLVMGetParam(fn, scratch_arg), .inlined = inlined,
                  .host = sched.host[i], .nleaves = kern->nreads};
    memcpy(k.leaf, kern->reads, sizeof(uint32_t) * kern->nreads);
    for (uint32_t q = 0; q < k.nleaves; q++) k.leaf_ptr[q] = LLVMGetParam(fn, q + 1);
    for (uint32_t j = 0; j < n->ninputs; j++) k.in[j] = operand_ptr(c, &k, n->inputs[j]); /* NULL when fused */
    if (!lower_node(c, &k)) {
      st = kiln_set_error(KILN_ERR_UNSUPPORTED, "%s", c->err);
      break;
    }
    LLVMBuildRet(c->b, LLVMConstInt(c->i32, 0, 0));
    plan->kernel_node[plan->kernels] = i;
    plan->kernel_host[plan->kernels] = sched.host[i];
    plan->kernels++;
    plan->bytes_moved += node_bytes(n);
    for (uint32_t q = 0; q < k.nleaves; q++) plan->bytes_moved += node_bytes(&g->nodes[k.leaf[q]]);
    LLVMValueRef cargs[66];
    cargs[0] = ptrs[i];
    for (uint32_t q = 0; q < k.nleaves; q++) cargs[q + 1] = ptrs[k.leaf[q]];
    cargs[scratch_arg] = scratch_p;
    if (threaded) cargs[scratch_arg + 1] = par_p;
    LLVMValueRef started = c->profile ? profile_clock(c, eb) : NULL;
    LLVMValueRef rc = LLVMBuildCall2(eb, fty, fn, cargs, np, "");
    if (c->profile) profile_add(c, eb, plan->kernels - 1, started);
    if (n->op == KILN_OP_GATHER || n->op == KILN_OP_SCATTER_ADD) {
      LLVMBasicBlockRef bad = LLVMAppendBasicBlockInContext(c->ctx, entry, "fail"),
                        good = LLVMAppendBasicBlockInContext(c->ctx, entry, "ok");
      LLVMBuildCondBr(eb, LLVMBuildICmp(eb, LLVMIntNE, rc, LLVMConstInt(c->i32, 0, 0), ""), bad, good);
      LLVMPositionBuilderAtEnd(eb, bad);
      LLVMBuildRet(eb, rc);
      LLVMPositionBuilderAtEnd(eb, good);
    }
  }
#undef ARG
  c->par = NULL;
  LLVMBuildRet(eb, LLVMConstInt(c->i32, 0, 0));
  LLVMDisposeBuilder(eb);
  free(ptrs);
  return lower_done(c, &pre, &sched, st);
}

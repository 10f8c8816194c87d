/* Layout choice for convolutions. conv2d and the pooling ops compute NHWC with HWIO
 * filters; a model written NCHW (PyTorch style, every ONNX model) gets a transpose
 * into NHWC before each of them and one back after (frontend/nn.c), so every
 * activation between two convolutions would cross memory twice more, and the bias
 * and activation after a convolution could not ride on it as an epilogue.
 *
 * This pass keeps such stretches NHWC: the graph is rebuilt node by node, and a
 * transpose is sunk below each op that does not care about layout — element-wise
 * ops, reductions (their axes renamed), concat, slice and pad (their per-dim
 * attributes permuted) — until it meets its inverse (the two cancel) or an op that
 * does care (conv2d, matmul, reshape, an output), where it stays. A transpose moves
 * below an element-wise op only when the op's other operands are free or cheap to
 * permute the other way: transposes by the same permutation, fills, broadcasts of
 * tensors at most 1/16 of the result, anything whose permutation moves only size-1
 * dims (a reshape). So a move never adds a transpose of a full tensor, and a sunk
 * transpose inlines the ops it passed (fusion), never costing a kernel. */
#include <stdlib.h>
#include <string.h>
#include "passes/passes.h"

enum { CHEAP_RATIO = 16 };

typedef struct lay {
  kiln_graph *g;
  kiln_layout_stats *stats;
} lay;

static const kiln_node *nd(lay *L, uint32_t id) { return &L->g->nodes[id]; }

static kiln_shape shape_of(const kiln_node *n) {
  kiln_shape s = {.rank = n->rank};
  memcpy(s.dims, n->dims, sizeof(int64_t) * (size_t)n->rank);
  return s;
}

/* s with its dims permuted: out[i] = s[perm[i]] (a transpose's output shape). */
static kiln_shape permute_shape(kiln_shape s, const int64_t *perm) {
  kiln_shape o = {.rank = s.rank};
  for (int i = 0; i < s.rank; i++) o.dims[i] = s.dims[perm[i]];
  return o;
}

static void inverse(const int64_t *p, int k, int64_t *inv) {
  for (int i = 0; i < k; i++) inv[p[i]] = i;
}

static int64_t size_of(const kiln_node *n) { /* a symbolic dim counts as 1 on both sides of a ratio */
  int64_t e = 1;
  for (int d = 0; d < n->rank; d++) e *= n->dims[d] > 0 ? n->dims[d] : 1;
  return e;
}

/* Does transposing dims by perm keep the elements in order (only size-1 dims move)? */
static bool order_kept(int rank, const int64_t *dims, const int64_t *perm) {
  int64_t last = -1;
  for (int i = 0; i < rank; i++) {
    if (dims[perm[i]] < 0) return false; /* no reshape of a symbolic shape */
    if (dims[perm[i]] == 1) continue;
    if (perm[i] < last) return false;
    last = perm[i];
  }
  return true;
}

/* The transpose perm of v, or false. */
static bool transpose_perm(lay *L, uint32_t v, int64_t *perm) {
  return nd(L, v)->op == KILN_OP_TRANSPOSE && kiln_attr_ints_cap(nd(L, v), KILN_ATTR_PERM, perm, KILN_MAX_RANK) == nd(L, v)->rank;
}

/* v transposed by perm (v.rank entries), composed with a transpose v already is,
 * and as a reshape when that keeps the element order. */
static uint32_t transposed(lay *L, uint32_t v, const int64_t *perm) {
  const kiln_node *n = nd(L, v);
  int k = n->rank;
  int64_t p[KILN_MAX_RANK], c[KILN_MAX_RANK];
  if (transpose_perm(L, v, p)) {
    /* transpose(transpose(x, p), perm) = transpose(x, p[perm[d]]) */
    bool identity = true;
    for (int d = 0; d < k; d++) c[d] = p[perm[d]], identity &= c[d] == d;
    if (identity) return n->inputs[0];
    return transposed(L, n->inputs[0], c);
  }
  kiln_shape out = permute_shape(shape_of(n), perm);
  if (n->op == KILN_OP_CONST && !n->data) return kiln_fill(L->g, (kiln_dtype)n->dtype, out, kiln_attr_float(n, KILN_ATTR_VALUE, 0)).id;
  if (order_kept(n->rank, n->dims, perm)) {
    uint32_t src = n->op == KILN_OP_RESHAPE ? n->inputs[0] : v;
    return kiln_reshape(L->g, (kiln_value){src}, out).id;
  }
  kiln_attrs a = {0};
  kiln_attrs_ints(&a, KILN_ATTR_PERM, perm, k);
  return kiln_node_make(L->g, KILN_OP_TRANSPOSE, &v, 1, &a, NULL, NULL, 0).id;
}

/* A broadcast's source at the broadcast's rank (leading 1s, as NumPy aligns). */
static uint32_t at_rank(lay *L, uint32_t v, int rank) {
  const kiln_node *n = nd(L, v);
  if (n->rank == rank) return v;
  kiln_shape s = {.rank = rank};
  for (int d = 0; d < rank; d++) s.dims[d] = d < rank - n->rank ? 1 : n->dims[d - (rank - n->rank)];
  return kiln_reshape(L->g, (kiln_value){v}, s).id;
}

/* Is transposing v by perm free or cheap (see the top)? */
static bool cheap(lay *L, uint32_t v, const int64_t *perm) {
  const kiln_node *n = nd(L, v);
  int64_t p[KILN_MAX_RANK];
  if (transpose_perm(L, v, p)) {
    for (int d = 0; d < n->rank; d++)
      if (p[perm[d]] != d) return false;
    return true;
  }
  if ((n->op == KILN_OP_CONST && !n->data) || order_kept(n->rank, n->dims, perm)) return true;
  if (n->op != KILN_OP_BROADCAST_TO) return false;
  const kiln_node *s = nd(L, n->inputs[0]);
  if (s->rank == n->rank) return cheap(L, n->inputs[0], perm) || size_of(s) * CHEAP_RATIO <= size_of(n);
  int64_t dims[KILN_MAX_RANK]; /* the source at the broadcast's rank (at_rank) */
  for (int d = 0; d < n->rank; d++) dims[d] = d < n->rank - s->rank ? 1 : s->dims[d - (n->rank - s->rank)];
  return order_kept(n->rank, dims, perm) || size_of(s) * CHEAP_RATIO <= size_of(n);
}

/* v transposed by perm, a broadcast by transposing its (smaller) source. */
static uint32_t permuted(lay *L, uint32_t v, const int64_t *perm) {
  const kiln_node *n = nd(L, v);
  if (n->op != KILN_OP_BROADCAST_TO || n->rank == 0) return transposed(L, v, perm);
  kiln_shape out = permute_shape(shape_of(n), perm);
  const kiln_node *s = nd(L, n->inputs[0]);
  uint32_t src = kiln_shape_numel(s->rank, s->dims) == 1 ? n->inputs[0] : transposed(L, at_rank(L, n->inputs[0], n->rank), perm);
  return kiln_broadcast_to(L->g, (kiln_value){src}, out).id;
}

static uint32_t make_like(lay *L, const kiln_node *n, const uint32_t *in, const kiln_attrs *a) {
  return kiln_node_make(L->g, (kiln_op)n->op, in, n->ninputs, a, NULL, NULL, 0).id;
}

/* Element-wise n on in[] where some operand is a transpose and the rest are cheap
 * to permute back: the op on untransposed operands, transposed after. */
static uint32_t sink_elementwise(lay *L, const kiln_node *n, const uint32_t *in) {
  int64_t p[KILN_MAX_RANK], inv[KILN_MAX_RANK];
  uint32_t j = 0;
  while (j < n->ninputs && !transpose_perm(L, in[j], p)) j++;
  if (j == n->ninputs || n->rank == 0) return KILN_NONE;
  inverse(p, n->rank, inv);
  uint32_t x[3];
  for (j = 0; j < n->ninputs; j++)
    if (!cheap(L, in[j], inv)) return KILN_NONE;
  for (j = 0; j < n->ninputs; j++) x[j] = permuted(L, in[j], inv);
  kiln_attrs a;
  kiln_attrs_of(n, &a);
  L->stats->moved++;
  return transposed(L, make_like(L, n, x, &a), p);
}

/* Reduction n of transpose(x, p): reduce x over the renamed axes; what stays is the
 * kept dims in x's order, transposed back into n's order. */
static uint32_t sink_reduction(lay *L, const kiln_node *n, uint32_t t) {
  int64_t p[KILN_MAX_RANK];
  if (!transpose_perm(L, t, p)) return KILN_NONE;
  const kiln_node *tn = nd(L, t);
  int k = tn->rank;
  bool keep = kiln_attr_int(n, KILN_ATTR_KEEPDIMS, 0) != 0, reduced[KILN_MAX_RANK] = {0}, xreduced[KILN_MAX_RANK] = {0};
  int64_t axes[KILN_MAX_RANK], xaxes[KILN_MAX_RANK];
  int na = 0, m = 0;
  kiln_attr_key key = n->op == KILN_OP_ARGMAX ? KILN_ATTR_AXIS : KILN_ATTR_AXES;
  if (n->op == KILN_OP_ARGMAX) axes[na++] = kiln_attr_int(n, KILN_ATTR_AXIS, -1);
  else na = kiln_attr_ints(n, KILN_ATTR_AXES, axes);
  for (int i = 0; i < na; i++) {
    if (axes[i] < 0 || axes[i] >= k) return KILN_NONE;
    reduced[axes[i]] = true;
  }
  for (int i = 0; i < k; i++) xreduced[p[i]] = reduced[i];
  for (int d = 0; d < k; d++)
    if (xreduced[d]) xaxes[m++] = d;
  kiln_attrs a = {0};
  for (int i = 0; i < (int)n->nattrs; i++)
    if (n->attrs[i].key != (int32_t)key) a.a[a.n++] = n->attrs[i];
  if (n->op == KILN_OP_ARGMAX) kiln_attrs_int(&a, KILN_ATTR_AXIS, xaxes[0]);
  else if (na) kiln_attrs_ints(&a, KILN_ATTR_AXES, xaxes, m);
  uint32_t x = tn->inputs[0];
  uint32_t r = kiln_node_make(L->g, (kiln_op)n->op, &x, 1, &a, NULL, NULL, 0).id;
  L->stats->moved++;
  if (keep) return transposed(L, r, p);
  /* q[o] = the position among x's kept dims of the o-th kept dim of n's input */
  int64_t rank_in_x[KILN_MAX_RANK], q[KILN_MAX_RANK];
  int kept = 0, o = 0;
  for (int d = 0; d < k; d++) rank_in_x[d] = xreduced[d] ? -1 : kept++;
  for (int i = 0; i < k; i++)
    if (!reduced[i]) q[o++] = rank_in_x[p[i]];
  return o ? transposed(L, r, q) : r;
}

/* slice, pad (per-dim attributes) and concat (an axis) of transposes by one perm p. */
static uint32_t sink_movement(lay *L, const kiln_node *n, const uint32_t *in) {
  int64_t p[KILN_MAX_RANK], q[KILN_MAX_RANK], inv[KILN_MAX_RANK];
  if (n->ninputs > 64 || !transpose_perm(L, in[0], p)) return KILN_NONE;
  int k = n->rank;
  uint32_t x[64];
  for (uint32_t j = 0; j < n->ninputs; j++) {
    if (!transpose_perm(L, in[j], q) || memcmp(p, q, sizeof(int64_t) * (size_t)k)) return KILN_NONE;
    x[j] = nd(L, in[j])->inputs[0];
  }
  inverse(p, k, inv);
  kiln_attrs a;
  kiln_attrs_of(n, &a);
  for (int i = 0; i < a.n; i++) {
    kiln_attr *at = &a.a[i];
    if (at->key == KILN_ATTR_AXIS) at->v.i[0] = p[at->v.i[0]];
    if (at->key == KILN_ATTR_STARTS || at->key == KILN_ATTR_ENDS || at->key == KILN_ATTR_STEPS ||
        at->key == KILN_ATTR_PADS_LO || at->key == KILN_ATTR_PADS_HI) {
      if (at->n != k) return KILN_NONE;
      int64_t old[KILN_MAX_RANK];
      memcpy(old, at->v.i, sizeof old);
      for (int d = 0; d < k; d++) at->v.i[d] = old[inv[d]];
    }
  }
  L->stats->moved++;
  return transposed(L, make_like(L, n, x, &a), p);
}

/* matmul(reshape(transpose(x, p) to [B, F]), w) with p keeping the batch first and
 * w stored weights [F, N] = matmul(reshape(x to [B, F]), w'), w' being w's rows in x's
 * order, permuted here once: an NCHW model's Flatten before its first Dense (every
 * ONNX CNN) would otherwise transpose the activations back to NCHW at every run. */
static uint32_t flatten_into_weights(lay *L, const kiln_node *n, const uint32_t *in) {
  int64_t p[KILN_MAX_RANK];
  const kiln_node *a = nd(L, in[0]), *w = nd(L, in[1]);
  if (n->ninputs != 2 || kiln_attr_int(n, KILN_ATTR_TRANSPOSE_A, 0) || kiln_attr_int(n, KILN_ATTR_TRANSPOSE_B, 0) ||
      a->op != KILN_OP_RESHAPE || a->rank != 2 || w->op != KILN_OP_CONST || !w->data || w->rank != 2 ||
      !transpose_perm(L, a->inputs[0], p))
    return KILN_NONE;
  const kiln_node *t = nd(L, a->inputs[0]), *x = nd(L, t->inputs[0]);
  int rank = t->rank;
  if (p[0] != 0 || t->dims[0] != a->dims[0] || w->dims[0] != a->dims[1]) return KILN_NONE;
  int64_t rows = w->dims[0], row_bytes = w->dims[1] * (int64_t)kiln_dtype_size((kiln_dtype)w->dtype);
  unsigned char *data = malloc((size_t)(rows * row_bytes));
  if (!data) return KILN_NONE;
  const unsigned char *src = w->data;
  /* row r of w' is x's index (i_1 .. i_{rank-1}); w's row for it is t's index i_{p[1]} .. */
  int64_t idx[KILN_MAX_RANK] = {0};
  for (int64_t r = 0; r < rows; r++) {
    int64_t from = 0;
    for (int k = 1; k < rank; k++) from = from * t->dims[k] + idx[p[k]];
    memcpy(data + r * row_bytes, src + from * row_bytes, (size_t)row_bytes);
    for (int d = rank - 1; d >= 1 && ++idx[d] == x->dims[d]; d--) idx[d] = 0;
  }
  uint32_t w2 = kiln_constant(L->g, (kiln_dtype)w->dtype, shape_of(w), data).id;
  free(data);
  uint32_t a2 = kiln_reshape(L->g, (kiln_value){t->inputs[0]}, shape_of(a)).id;
  if (w2 == KILN_NONE || a2 == KILN_NONE) return KILN_NONE;
  L->stats->moved++;
  return kiln_copy_node(L->g, n, (uint32_t[]){a2, w2});
}

static uint32_t sink(lay *L, const kiln_node *n, const uint32_t *in) {
  kiln_op op = (kiln_op)n->op;
  int64_t p[KILN_MAX_RANK];
  if (op == KILN_OP_TRANSPOSE) {
    int64_t q[KILN_MAX_RANK];
    if (!transpose_perm(L, in[0], p)) return KILN_NONE;
    kiln_attr_ints(n, KILN_ATTR_PERM, q);
    bool identity = true;
    for (int d = 0; d < n->rank; d++) identity &= p[q[d]] == d;
    L->stats->cancelled += identity;
    return transposed(L, in[0], q);
  }
  if (kiln_ops[op].flags & EW) return sink_elementwise(L, n, in);
  if (kiln_ops[op].flags & RED) return sink_reduction(L, n, in[0]);
  if (op == KILN_OP_CONCAT || op == KILN_OP_SLICE || op == KILN_OP_PAD) return sink_movement(L, n, in);
  if (op == KILN_OP_MATMUL) return flatten_into_weights(L, n, in);
  return KILN_NONE;
}

/* Transposes in g and the elements they move. */
static void count_transposes(const kiln_graph *g, size_t *count, int64_t *elements) {
  *count = 0, *elements = 0;
  for (uint32_t i = 0; i < g->nnodes; i++)
    if (g->nodes[i].op == KILN_OP_TRANSPOSE) ++*count, *elements += size_of(&g->nodes[i]);
}

static uint32_t layout_node(void *ctx, kiln_graph *dst, const kiln_node *n, const uint32_t *in) {
  lay *L = ctx;
  L->g = dst;
  return sink(L, n, in);
}

kiln_graph *kiln_choose_layout(const kiln_graph *src, kiln_layout_stats *stats) {
  kiln_layout_stats local;
  lay L = {.stats = stats ? stats : &local};
  memset(L.stats, 0, sizeof *L.stats);
  count_transposes(src, &L.stats->before, &L.stats->elements_before);
  size_t removed;
  kiln_graph *live = kiln_rebuild(src, "layout", layout_node, &L, &removed);
  if (live) count_transposes(live, &L.stats->after, &L.stats->elements_after);
  return live;
}

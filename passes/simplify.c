/* Constant folding and algebraic simplification: the graph is rebuilt node by node
 * (inputs keep their order, outputs and assignments their names); each node is
 * first offered to the rule table, then folded when all its inputs are constants,
 * else copied. Folding runs the reference evaluator on the node; a uniform result
 * becomes a fill (which fusion inlines), a small one a constant with data, and a
 * large non-uniform one is left to run. Nodes nothing reads any more are dropped
 * at the end (dead-code elimination). */
#include <string.h>
#include "passes/passes.h"
#include "runtime/tensor_impl.h"

#define FOLD_MAX_ELEMS 4096

typedef struct rw {
  kiln_graph *g;
  kiln_simplify_stats *stats;
  const uint32_t *readers; /* per source node: how many nodes read it */
  const uint32_t *transposed_b_readers; /* ... of them, matmuls reading it as a transposed b */
} rw;

static const kiln_node *nd(rw *r, uint32_t id) { return &r->g->nodes[id]; }

/* Is id a scalar constant (a fill, a broadcast of one, or one value with data)? */
static bool scalar_value(rw *r, uint32_t id, double *v) {
  const kiln_node *n = nd(r, id);
  if (n->op == KILN_OP_BROADCAST_TO) n = nd(r, n->inputs[0]);
  if (n->op != KILN_OP_CONST) return false;
  if (!n->data) return *v = kiln_attr_float(n, KILN_ATTR_VALUE, 0), true;
  if (kiln_shape_numel(n->rank, n->dims) != 1) return false;
  kiln_tensor *t = kiln_tensor_from_data((kiln_dtype)n->dtype, 0, NULL, n->data, n->nbytes);
  if (!t) return false;
  *v = kiln_tensor_get_f64(t, 0);
  kiln_tensor_free(t);
  return true;
}

static bool is_value(rw *r, uint32_t id, double want) {
  double v;
  return scalar_value(r, id, &v) && v == want;
}

static uint32_t make(rw *r, kiln_op op, const uint32_t *in, uint32_t nin, const kiln_attrs *a) {
  return kiln_node_make(r->g, op, in, nin, a, NULL, NULL, 0).id;
}

void kiln_attrs_of(const kiln_node *n, kiln_attrs *a) {
  a->n = (int)n->nattrs;
  if (n->nattrs) memcpy(a->a, n->attrs, sizeof(kiln_attr) * n->nattrs);
}

uint32_t kiln_copy_node(kiln_graph *dst, const kiln_node *n, const uint32_t *in) {
  kiln_attrs a;
  kiln_attrs_of(n, &a);
  return kiln_node_make_like(dst, n, in, &a).id;
}

kiln_status kiln_copy_ports(kiln_graph *dst, const kiln_graph *src, const uint32_t *map) {
  kiln_status st = KILN_OK;
  for (uint32_t j = 0; j < src->noutputs && st == KILN_OK; j++)
    st = kiln_graph_add_output(dst, src->outputs[j].name, (kiln_value){map[src->outputs[j].node]});
  for (uint32_t j = 0; j < src->nassigns && st == KILN_OK; j++)
    st = kiln_graph_add_assign(dst, src->assigns[j].name, map[src->assigns[j].node]);
  dst->vars = src->vars;
  return st;
}

/* A fill (no data) of n's shape with fill a's value. */
static uint32_t reshaped_fill(rw *r, const kiln_node *a, const kiln_node *n) {
  kiln_shape sh = {.rank = n->rank};
  memcpy(sh.dims, n->dims, sizeof(int64_t) * (size_t)n->rank);
  return kiln_fill(r->g, (kiln_dtype)a->dtype, sh, kiln_attr_float(a, KILN_ATTR_VALUE, 0)).id;
}

/* matmul(a, b, transpose_b) with b stored weights that only such matmuls read:
 * matmul(a, b') with b' the weights transposed once, here (one constant for
 * every reader: equal constants are one node, as an LSTM's recurrent weights
 * read at every step). An ONNX Gemm keeps
 * its weights [N, K]; every GEMM path reads B row-major fastest, and the few-row
 * path (batch-1 inference) would otherwise stride through B column by column. */
static uint32_t untransposed_b(rw *r, const kiln_node *n, const uint32_t *in) {
  const kiln_node *b = nd(r, in[1]);
  int rank = b->rank;
  int64_t rows = b->dims[rank - 2], cols = b->dims[rank - 1], per = rows * cols;
  if (per == 0) return KILN_NONE;
  int64_t mats = kiln_shape_numel(rank, b->dims) / per;
  size_t es = kiln_dtype_size((kiln_dtype)b->dtype);
  unsigned char *t = malloc(b->nbytes);
  if (!t) return KILN_NONE;
  const unsigned char *src = b->data;
  for (int64_t m = 0; m < mats; m++)
    for (int64_t i = 0; i < rows; i++)
      for (int64_t j = 0; j < cols; j++)
        memcpy(t + ((m * cols + j) * rows + i) * es, src + ((m * rows + i) * cols + j) * es, es);
  kiln_shape sh = {.rank = rank};
  memcpy(sh.dims, b->dims, sizeof(int64_t) * (size_t)rank);
  sh.dims[rank - 2] = cols, sh.dims[rank - 1] = rows;
  uint32_t c = kiln_constant(r->g, (kiln_dtype)b->dtype, sh, t).id;
  free(t);
  if (c == KILN_NONE) return KILN_NONE;
  kiln_attrs at;
  kiln_attrs_of(n, &at);
  for (int i = 0; i < at.n; i++)
    if (at.a[i].key == KILN_ATTR_TRANSPOSE_B) at.a[i].v.i[0] = 0;
  return make(r, KILN_OP_MATMUL, (uint32_t[]){in[0], c}, 2, &at);
}

/* The rule table: returns the replacement of (op, in, attrs) of old node n, or KILN_NONE. */
static uint32_t rewrite(rw *r, const kiln_node *n, const uint32_t *in) {
  kiln_op op = (kiln_op)n->op;
  const kiln_node *a = n->ninputs > 0 ? nd(r, in[0]) : NULL, *b = n->ninputs > 1 ? nd(r, in[1]) : NULL;
#define RULE(name, cond, result)                                                                              \
  if (cond) {                                                                                                 \
    r->stats->rewrites++;                                                                                     \
    r->stats->by_rule[name]++;                                                                                \
    return (result);                                                                                          \
  }
  switch (op) {
  case KILN_OP_MUL:
    RULE(RULE_MUL_ONE, is_value(r, in[1], 1) && kiln_same_shape(a->rank, a->dims, n->rank, n->dims), in[0]);
    RULE(RULE_MUL_ONE, is_value(r, in[0], 1) && kiln_same_shape(b->rank, b->dims, n->rank, n->dims), in[1]);
    break;
  case KILN_OP_ADD:
    RULE(RULE_ADD_ZERO, is_value(r, in[1], 0) && kiln_same_shape(a->rank, a->dims, n->rank, n->dims), in[0]);
    RULE(RULE_ADD_ZERO, is_value(r, in[0], 0) && kiln_same_shape(b->rank, b->dims, n->rank, n->dims), in[1]);
    break;
  case KILN_OP_SUB: RULE(RULE_ADD_ZERO, is_value(r, in[1], 0) && kiln_same_shape(a->rank, a->dims, n->rank, n->dims), in[0]); break;
  case KILN_OP_DIV: RULE(RULE_MUL_ONE, is_value(r, in[1], 1) && kiln_same_shape(a->rank, a->dims, n->rank, n->dims), in[0]); break;
  case KILN_OP_MATMUL:
    RULE(RULE_WEIGHTS_LAYOUT,
         kiln_attr_int(n, KILN_ATTR_TRANSPOSE_B, 0) && b->op == KILN_OP_CONST && b->data &&
             r->readers[n->inputs[1]] == r->transposed_b_readers[n->inputs[1]],
         untransposed_b(r, n, in));
    break;
  case KILN_OP_NEG: RULE(RULE_NEG_NEG, a->op == KILN_OP_NEG, a->inputs[0]); break;
  case KILN_OP_LOG: RULE(RULE_LOG_EXP, a->op == KILN_OP_EXP, a->inputs[0]); break;
  case KILN_OP_CAST: RULE(RULE_NOOP, a->dtype == n->dtype, in[0]); break;
  case KILN_OP_RESHAPE:
    RULE(RULE_NOOP, kiln_same_shape(a->rank, a->dims, n->rank, n->dims), in[0]);
    RULE(RULE_FILL, a->op == KILN_OP_CONST && !a->data, reshaped_fill(r, a, n));
    RULE(RULE_CHAIN, a->op == KILN_OP_RESHAPE, kiln_copy_node(r->g, n, &a->inputs[0]));
    break;
  case KILN_OP_BROADCAST_TO:
    RULE(RULE_NOOP, kiln_same_shape(a->rank, a->dims, n->rank, n->dims), in[0]);
    RULE(RULE_FILL, a->op == KILN_OP_CONST && !a->data && a->rank > 0, reshaped_fill(r, a, n));
    RULE(RULE_CHAIN, a->op == KILN_OP_BROADCAST_TO, kiln_copy_node(r->g, n, &a->inputs[0]));
    break;
  case KILN_OP_TRANSPOSE: {
    int64_t q[KILN_MAX_RANK], p[KILN_MAX_RANK], c[KILN_MAX_RANK];
    int k = kiln_attr_ints(n, KILN_ATTR_PERM, q);
    bool identity = true;
    for (int d = 0; d < k; d++) identity &= q[d] == d;
    RULE(RULE_NOOP, identity, in[0]);
    if (a->op == KILN_OP_TRANSPOSE && kiln_attr_ints(a, KILN_ATTR_PERM, p) == k) {
      /* transpose(transpose(x, p), q) = transpose(x, p[q[d]]) */
      identity = true;
      for (int d = 0; d < k; d++) c[d] = p[q[d]], identity &= c[d] == d;
      RULE(RULE_CHAIN, identity, a->inputs[0]);
      kiln_attrs at = {0};
      kiln_attrs_ints(&at, KILN_ATTR_PERM, c, k);
      RULE(RULE_CHAIN, true, make(r, KILN_OP_TRANSPOSE, &a->inputs[0], 1, &at));
    }
    break;
  }
  default: break;
  }
#undef RULE
  return KILN_NONE;
}

/* n's attributes with a shape attribute's batch symbol (-1) replaced by n's own
 * dims (the shape attribute is the output shape): the evaluator binds the batch
 * from inputs, and a folded node has none. */
static void concrete_attrs(const kiln_node *n, kiln_attrs *at) {
  kiln_attrs_of(n, at);
  for (int i = 0; i < at->n; i++)
    if (at->a[i].key == KILN_ATTR_SHAPE)
      for (int d = 0; d < at->a[i].n && d < n->rank; d++) at->a[i].v.i[d] = n->dims[d];
}

/* Stored data c under n's layout, written once into a blob of its own (a reshape's is
 * c's): through the evaluator, ResNet-18's 45 MB of OIHW filters were copied in, an
 * output zeroed, moved element by element and copied out, at every compile. */
static uint32_t relayout_data(rw *r, const kiln_node *n, const kiln_node *c) {
  /* all one value (zero biases of a model exported from eval mode): a fill, which the
   * rules then take out of the adds (x + 0) */
  size_t es = kiln_dtype_size((kiln_dtype)n->dtype), numel = c->nbytes / es, i = 1;
  const char *bytes = c->data;
  while (i < numel && !memcmp(bytes + i * es, bytes, es)) i++;
  if (numel && i == numel) {
    kiln_shape sh = {.rank = n->rank};
    memcpy(sh.dims, n->dims, sizeof(int64_t) * (size_t)n->rank);
    kiln_tensor *first = kiln_tensor_from_data((kiln_dtype)n->dtype, 0, NULL, bytes, es);
    uint32_t out = first ? kiln_fill(r->g, (kiln_dtype)n->dtype, sh, kiln_tensor_get_f64(first, 0)).id : KILN_NONE;
    kiln_tensor_free(first);
    return out;
  }
  if (n->op == KILN_OP_RESHAPE)
    return kiln_constant_blob(r->g, (kiln_dtype)n->dtype, n->rank, n->dims, c->data).id;
  int64_t perm[KILN_MAX_RANK], cst[KILN_MAX_RANK], step[KILN_MAX_RANK];
  kiln_attr_ints(n, KILN_ATTR_PERM, perm);
  kiln_strides(c->rank, c->dims, cst);
  for (int d = 0; d < n->rank; d++) step[d] = cst[perm[d]];
  size_t nbytes = c->nbytes;
  void *data = kiln_blob_new(nbytes);
  if (!data) return KILN_NONE;
  kiln_permute_copy(data, c->data, es, n->rank, n->dims, step);
  int64_t recipe[2 * KILN_MAX_RANK];
  memcpy(recipe, n->dims, sizeof(int64_t) * (size_t)n->rank);
  memcpy(recipe + n->rank, step, sizeof(int64_t) * (size_t)n->rank);
  kiln_blob_seal(data, nbytes, c->data, recipe, sizeof(int64_t) * 2 * (size_t)n->rank);
  uint32_t out = kiln_constant_blob(r->g, (kiln_dtype)n->dtype, n->rank, n->dims, data).id;
  kiln_blob_release(data);
  return out;
}

/* Old node n on the constant new nodes in[]: its value as a fill or a constant, or KILN_NONE. */
static uint32_t fold(rw *r, const kiln_node *n, const uint32_t *in) {
  kiln_op op = (kiln_op)n->op;
  if (op == KILN_OP_PARAM || op == KILN_OP_CONST || op == KILN_OP_RNG_UNIFORM || op == KILN_OP_RNG_NORMAL ||
      op == KILN_OP_BROADCAST_TO || op == KILN_OP_IOTA || n->ninputs == 0)
    return KILN_NONE;
  for (uint32_t j = 0; j < n->ninputs; j++)
    if (nd(r, in[j])->op != KILN_OP_CONST) return KILN_NONE;
  int64_t numel = kiln_shape_numel(n->rank, n->dims);
  if (numel < 0) return KILN_NONE;
  /* a big result from stored data (weights) folds only when it takes their place: a
   * transpose, reshape or slice that is their only reader stores them in the layout
   * their reader wants (an ONNX model's OIHW filters become HWIO once, not per run) */
  bool relayout = (op == KILN_OP_TRANSPOSE || op == KILN_OP_RESHAPE || op == KILN_OP_SLICE) && r->readers[n->inputs[0]] == 1;
  for (uint32_t j = 0; numel > FOLD_MAX_ELEMS && j < n->ninputs; j++)
    if (nd(r, in[j])->data && !relayout) return KILN_NONE;
  if (relayout && op != KILN_OP_SLICE && nd(r, in[0])->data) {
    uint32_t out = relayout_data(r, n, nd(r, in[0]));
    if (out != KILN_NONE) r->stats->folded++;
    return out;
  }
  /* evaluate in a scratch graph */
  kiln_graph *s = kiln_graph_new();
  kiln_tensor *y = NULL;
  uint32_t sin[64];
  bool ok = s && n->ninputs <= 64;
  for (uint32_t j = 0; ok && j < n->ninputs; j++) {
    const kiln_node *c = nd(r, in[j]);
    kiln_attrs at;
    concrete_attrs(c, &at);
    sin[j] = (c->data ? kiln_node_make_like(s, c, NULL, &at) : kiln_node_make(s, KILN_OP_CONST, NULL, 0, &at, NULL, NULL, 0)).id;
    ok = sin[j] != KILN_NONE;
  }
  if (ok) {
    kiln_attrs at;
    concrete_attrs(n, &at);
    kiln_value v = kiln_node_make(s, op, sin, n->ninputs, &at, NULL, NULL, 0);
    ok = v.id != KILN_NONE && kiln_graph_add_output(s, "y", v) == KILN_OK && kiln_evaluate(s, NULL, 0, &y, 1) == KILN_OK;
  }
  kiln_graph_free(s);
  if (!ok) { /* anything the evaluator rejects is left for the run to report */
    kiln_tensor_free(y);
    return KILN_NONE;
  }
  bool uniform = true;
  double first = numel ? kiln_tensor_get_f64(y, 0) : 0;
  for (int64_t i = 1; i < numel && uniform; i++) {
    double v = kiln_tensor_get_f64(y, i);
    uniform = v == first || (v != v && first != first);
  }
  uint32_t out = KILN_NONE;
  kiln_shape sh = {.rank = n->rank};
  memcpy(sh.dims, n->dims, sizeof(int64_t) * (size_t)n->rank);
  if (uniform) out = kiln_fill(r->g, (kiln_dtype)n->dtype, sh, first).id;
  else if (numel <= FOLD_MAX_ELEMS || relayout) out = kiln_constant(r->g, (kiln_dtype)n->dtype, sh, kiln_tensor_cdata(y)).id;
  kiln_tensor_free(y);
  if (out != KILN_NONE) r->stats->folded++;
  return out;
}

kiln_graph *kiln_without_dead(const kiln_graph *g, size_t *removed) {
  uint32_t n = g->nnodes;
  bool *live = calloc(n + 1, 1);
  uint32_t *map = calloc(n + 1, sizeof *map);
  kiln_graph *out = kiln_graph_new();
  if (!live || !map || !out) {
    free(live), free(map), kiln_graph_free(out);
    kiln_set_error(KILN_ERR_NOMEM, "simplify: out of memory");
    return NULL;
  }
  out->batch = g->batch;
  for (uint32_t j = 0; j < g->noutputs; j++) live[g->outputs[j].node] = true;
  for (uint32_t j = 0; j < g->nassigns; j++) live[g->assigns[j].node] = true;
  for (uint32_t i = n; i-- > 0;)
    if (live[i] || g->nodes[i].op == KILN_OP_PARAM)
      for (uint32_t j = 0; j < g->nodes[i].ninputs; j++) live[g->nodes[i].inputs[j]] = true;
  kiln_status st = KILN_OK;
  *removed = 0;
  for (uint32_t i = 0; i < n && st == KILN_OK; i++) {
    const kiln_node *nd0 = &g->nodes[i];
    if (!live[i] && nd0->op != KILN_OP_PARAM) {
      (*removed)++;
      continue;
    }
    uint32_t in[64];
    for (uint32_t j = 0; j < nd0->ninputs && j < 64; j++) in[j] = map[nd0->inputs[j]];
    map[i] = kiln_copy_node(out, nd0, in);
    if (map[i] == KILN_NONE) st = kiln_set_error(KILN_ERR_INVALID, "simplify: %s", out->errmsg);
  }
  if (st == KILN_OK) st = kiln_copy_ports(out, g, map);
  free(live), free(map);
  if (st != KILN_OK) {
    kiln_graph_free(out);
    return NULL;
  }
  return out;
}

kiln_graph *kiln_rebuild(const kiln_graph *src, const char *pass, kiln_rewrite_fn replace, void *ctx, size_t *removed) {
  kiln_graph *dst = kiln_graph_new();
  uint32_t *map = calloc(src->nnodes + 1, sizeof *map);
  if (!dst || !map) {
    kiln_graph_free(dst);
    free(map);
    kiln_set_error(KILN_ERR_NOMEM, "%s: out of memory", pass);
    return NULL;
  }
  dst->batch = src->batch;
  kiln_status st = KILN_OK;
  for (uint32_t i = 0; i < src->nnodes && st == KILN_OK; i++) {
    const kiln_node *n = &src->nodes[i];
    uint32_t in[64];
    if (n->ninputs > 64) {
      st = kiln_set_error(KILN_ERR_UNSUPPORTED, "%s: %u inputs", pass, n->ninputs);
      break;
    }
    for (uint32_t j = 0; j < n->ninputs; j++) in[j] = map[n->inputs[j]];
    uint32_t v = n->op == KILN_OP_PARAM ? KILN_NONE : replace(ctx, dst, n, in);
    if (v == KILN_NONE && dst->status == KILN_OK) v = kiln_copy_node(dst, n, in);
    if (v == KILN_NONE || dst->status != KILN_OK) st = kiln_set_error(KILN_ERR_INVALID, "%s: %s", pass, dst->errmsg);
    map[i] = v;
  }
  if (st == KILN_OK) st = kiln_copy_ports(dst, src, map);
  free(map);
  if (st != KILN_OK) {
    kiln_graph_free(dst);
    return NULL;
  }
  kiln_graph *live = kiln_without_dead(dst, removed);
  kiln_graph_free(dst);
  return live;
}

typedef struct simplify_ctx {
  rw r;
  bool fold_constants, rules;
} simplify_ctx;

static uint32_t simplify_node(void *ctx, kiln_graph *dst, const kiln_node *n, const uint32_t *in) {
  simplify_ctx *s = ctx;
  s->r.g = dst;
  uint32_t v = s->rules ? rewrite(&s->r, n, in) : KILN_NONE;
  return v == KILN_NONE && s->fold_constants ? fold(&s->r, n, in) : v;
}

kiln_graph *kiln_simplify(const kiln_graph *src, bool fold_constants, bool rules, kiln_simplify_stats *stats) {
  kiln_simplify_stats local;
  uint32_t *readers = calloc(2 * ((size_t)src->nnodes + 1), sizeof *readers), *tb = readers + src->nnodes + 1;
  simplify_ctx s = {.r = {.stats = stats ? stats : &local, .readers = readers, .transposed_b_readers = tb},
                    .fold_constants = fold_constants, .rules = rules};
  memset(s.r.stats, 0, sizeof *s.r.stats);
  if (!readers) {
    kiln_set_error(KILN_ERR_NOMEM, "simplify: out of memory");
    return NULL;
  }
  for (uint32_t i = 0; i < src->nnodes; i++)
    for (uint32_t j = 0; j < src->nodes[i].ninputs; j++) {
      const kiln_node *n = &src->nodes[i];
      readers[n->inputs[j]]++;
      tb[n->inputs[j]] += n->op == KILN_OP_MATMUL && j == 1 && kiln_attr_int(n, KILN_ATTR_TRANSPOSE_B, 0);
    }
  for (uint32_t j = 0; j < src->noutputs; j++) readers[src->outputs[j].node]++;
  for (uint32_t j = 0; j < src->nassigns; j++) readers[src->assigns[j].node]++;
  kiln_graph *out = kiln_rebuild(src, "simplify", simplify_node, &s, &s.r.stats->removed);
  free(readers);
  return out;
}

static const char *const RULE_NAMES[RULE_COUNT] = {"x*1, x/1", "x+0, x-0", "-(-x)", "log(exp(x))",
                                                   "no-op reshape/broadcast/transpose/cast",
                                                   "reshape, broadcast or transpose chain", "reshaped fill",
                                                   "matmul weights stored untransposed"};
const char *kiln_rule_name(int rule) { return rule >= 0 && rule < RULE_COUNT ? RULE_NAMES[rule] : "?"; }

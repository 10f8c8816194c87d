/* Graph construction. kiln_node_make is the only way a node comes to exist: it
 * checks arity, copies inputs and attributes into the arena and data into a shared
 * blob, runs shape inference,
 * and looks the node up in the dedup table first, so building the same expression
 * twice yields the same index (CSE for free). Sources with names (params) are keyed
 * by name, so a second placeholder with the same name is an error, not a merge. */
#include <stdarg.h>
#include <string.h>
#include "ir/ir.h"

const kiln_op_info kiln_ops[KILN_OP_COUNT] = {
#define KILN_OP(e, name, arity, flags, doc) [KILN_OP_##e] = {#name, arity, flags, doc},
#include "ir/ops.def"
#undef KILN_OP
};

const kiln_attr_info kiln_attrs_info[KILN_ATTR_COUNT] = {
#define KILN_ATTR(e, name, kind) [KILN_ATTR_##e] = {#name, KILN_AK_##kind},
#include "ir/attrs.def"
#undef KILN_ATTR
};

/* Constant data lives in reference-counted blobs that every graph made from another
 * (specialisation, each pass's rebuild) shares instead of copying: ResNet-18's 45 MB
 * of weights were copied and hashed through six rebuilds per compile, most of a
 * compile's own time and all of a warm one's. The blob is immutable; its header
 * keeps the data's hash. */
typedef struct {
  uint64_t refs, hash;
  char pad[64 - 16];
} blob;
_Static_assert(sizeof(blob) == 64, "data after the header stays 64-byte aligned (vector loads of weights)");

static blob *blob_of(const void *data) { return (blob *)((char *)(uintptr_t)data - sizeof(blob)); }

void *kiln_blob_new(size_t nbytes) {
  blob *b = kiln_alloc_large(sizeof *b + nbytes);
  if (!b) return NULL;
  b->refs = 1, b->hash = 0;
  return b + 1;
}

static void *blob_new(const void *data, size_t nbytes, uint64_t hash) {
  void *d = kiln_blob_new(nbytes);
  if (!d) return NULL;
  blob_of(d)->hash = hash;
  if (nbytes) memcpy(d, data, nbytes);
  return d;
}

static void blob_unref(const void *data) {
  blob *b = blob_of(data);
  if (__atomic_sub_fetch(&b->refs, 1, __ATOMIC_ACQ_REL) == 0) free(b);
}

void kiln_blob_release(void *data) {
  if (data) blob_unref(data);
}

kiln_graph *kiln_graph_new(void) {
  kiln_graph *g = calloc(1, sizeof *g);
  if (!g) {
    kiln_set_error(KILN_ERR_NOMEM, "kiln_graph_new: out of memory");
    return NULL;
  }
  g->batch = -1;
  return g;
}

void kiln_graph_free(kiln_graph *g) {
  if (!g) return;
  for (uint32_t i = 0; i < g->nnodes; i++)
    if (g->nodes[i].data) blob_unref(g->nodes[i].data);
  kiln_arena_free(&g->arena);
  free(g->nodes);
  free(g->table);
  free(g->outputs);
  free(g->assigns);
  free(g);
}

kiln_status kiln_graph_status(const kiln_graph *g) { return g ? g->status : KILN_ERR_INVALID; }
const char *kiln_graph_errmsg(const kiln_graph *g) { return g ? g->errmsg : "null graph"; }

kiln_value kiln_graph_fail(kiln_graph *g, kiln_status s, const char *fmt, ...) {
  if (g->status == KILN_OK) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g->errmsg, sizeof g->errmsg, fmt, ap);
    va_end(ap);
    g->status = s;
  }
  kiln_set_error(g->status, "%s", g->errmsg);
  return (kiln_value){KILN_NONE};
}

const kiln_node *kiln_node_get(const kiln_graph *g, kiln_value v) {
  return g && v.id < g->nnodes ? &g->nodes[v.id] : NULL;
}

kiln_dtype kiln_value_dtype(const kiln_graph *g, kiln_value v) {
  const kiln_node *n = kiln_node_get(g, v);
  return n ? (kiln_dtype)n->dtype : KILN_DTYPE_COUNT;
}

kiln_shape kiln_value_shape(const kiln_graph *g, kiln_value v) {
  kiln_shape s = {0};
  const kiln_node *n = kiln_node_get(g, v);
  if (n) {
    s.rank = n->rank;
    memcpy(s.dims, n->dims, sizeof s.dims);
  }
  return s;
}

/* ---- attributes ---- */

const kiln_attr *kiln_attr_find(const kiln_node *n, kiln_attr_key k) {
  for (uint32_t i = 0; i < n->nattrs; i++)
    if (n->attrs[i].key == (int32_t)k) return &n->attrs[i];
  return NULL;
}

int64_t kiln_attr_int(const kiln_node *n, kiln_attr_key k, int64_t dflt) {
  const kiln_attr *a = kiln_attr_find(n, k);
  return a ? a->v.i[0] : dflt;
}

double kiln_attr_float(const kiln_node *n, kiln_attr_key k, double dflt) {
  const kiln_attr *a = kiln_attr_find(n, k);
  return a ? a->v.f : dflt;
}

int kiln_attr_ints_cap(const kiln_node *n, kiln_attr_key k, int64_t *out, size_t cap) {
  const kiln_attr *a = kiln_attr_find(n, k);
  if (!a) return 0;
  memcpy(out, a->v.i, sizeof(int64_t) * ((size_t)a->n < cap ? (size_t)a->n : cap));
  return a->n;
}

static kiln_attr *attrs_slot(kiln_attrs *a, kiln_attr_key k) {
  KILN_ASSERT(a->n < (int)(sizeof a->a / sizeof a->a[0]));
  kiln_attr *s = &a->a[a->n++];
  memset(s, 0, sizeof *s);
  s->key = (int32_t)k;
  s->n = 1;
  return s;
}

void kiln_attrs_int(kiln_attrs *a, kiln_attr_key k, int64_t v) { attrs_slot(a, k)->v.i[0] = v; }
void kiln_attrs_float(kiln_attrs *a, kiln_attr_key k, double v) { attrs_slot(a, k)->v.f = v; }
void kiln_attrs_ints(kiln_attrs *a, kiln_attr_key k, const int64_t *v, int n) {
  KILN_ASSERT(n >= 0 && n <= KILN_MAX_RANK);
  kiln_attr *s = attrs_slot(a, k);
  s->n = n;
  if (n) memcpy(s->v.i, v, sizeof(int64_t) * (size_t)n);
}

/* ---- node creation and dedup ---- */

static uint64_t data_hash(const void *data, size_t nbytes) { return kiln_hash_words(0x9e3779b97f4a7c15ull, data, nbytes); }

void kiln_blob_seal(void *data, size_t nbytes, const void *from, const void *how, size_t how_bytes) {
  /* data made from another blob by a known recipe hashes as the pair: equal data so
   * made hash equal, and nodes compare data before they merge, so a collision with
   * data made otherwise costs at most a missed merge, never a wrong one */
  blob_of(data)->hash = from ? kiln_hash_words(blob_of(from)->hash, how, how_bytes) : data_hash(data, nbytes);
}

/* data_h: the data's hash (data_hash), when there is data */
static uint32_t node_hash(const kiln_node *n, uint64_t data_h) {
  uint64_t h = 0xcbf29ce484222325ull;
  h = kiln_hash_bytes(h, &n->op, sizeof n->op);
  /* A param is identified by its name alone, so a second one with that name is found (and refused). */
  if (n->op == KILN_OP_PARAM) return (uint32_t)kiln_hash_bytes(h, n->name, strlen(n->name));
  h = kiln_hash_bytes(h, n->inputs, sizeof(uint32_t) * n->ninputs);
  h = kiln_hash_bytes(h, n->attrs, sizeof(kiln_attr) * n->nattrs);
  if (n->data) h = kiln_hash_bytes(h, &data_h, sizeof data_h);
  return (uint32_t)(h ^ (h >> 32));
}

/* Params are equal when their names are; everything else by full content. */
static bool node_equal(const kiln_node *a, const kiln_node *b) {
  if (a->op != b->op || a->hash != b->hash) return false;
  if (a->op == KILN_OP_PARAM) return !strcmp(a->name, b->name);
  if (a->ninputs != b->ninputs || a->nattrs != b->nattrs || a->nbytes != b->nbytes) return false;
  if (a->ninputs && memcmp(a->inputs, b->inputs, sizeof(uint32_t) * a->ninputs)) return false;
  if (a->nattrs && memcmp(a->attrs, b->attrs, sizeof(kiln_attr) * a->nattrs)) return false;
  if ((a->data == NULL) != (b->data == NULL)) return false;
  return !a->data || a->data == b->data || !memcmp(a->data, b->data, a->nbytes);
}

static bool table_grow(kiln_graph *g) {
  uint32_t cap = g->table_cap ? g->table_cap * 2 : 256;
  uint32_t *t = calloc(cap, sizeof *t);
  if (!t) return false;
  for (uint32_t i = 0; i < g->nnodes; i++) {
    uint32_t h = g->nodes[i].hash & (cap - 1);
    while (t[h]) h = (h + 1) & (cap - 1);
    t[h] = i + 1;
  }
  free(g->table);
  g->table = t;
  g->table_cap = cap;
  return true;
}

static int attr_cmp(const void *a, const void *b) {
  return ((const kiln_attr *)a)->key - ((const kiln_attr *)b)->key;
}

/* shared: data is another node's (a blob), referenced rather than copied */
static kiln_value node_make(kiln_graph *g, kiln_op op, const uint32_t *inputs, uint32_t nin, const kiln_attrs *attrs,
                            const char *name, const void *data, size_t nbytes, bool shared) {
  if (!g) return (kiln_value){KILN_NONE};
  if (g->status != KILN_OK) return (kiln_value){KILN_NONE};
  const kiln_op_info *info = &kiln_ops[op];
  if (op == KILN_OP_PARAM && !name) return kiln_graph_fail(g, KILN_ERR_INVALID, "param: a graph input needs a name");
  if (info->arity >= 0 ? nin != (uint32_t)info->arity : nin == 0)
    return kiln_graph_fail(g, KILN_ERR_INVALID, "%s: takes %d inputs, got %u", info->name, info->arity, nin);
  for (uint32_t i = 0; i < nin; i++)
    if (inputs[i] >= g->nnodes)
      return kiln_graph_fail(g, KILN_ERR_INVALID, "%s: input %u is not a value of this graph", info->name, i);

  kiln_attrs sorted = {0};
  if (attrs) sorted = *attrs;
  qsort(sorted.a, (size_t)sorted.n, sizeof(kiln_attr), attr_cmp);
  for (int i = 1; i < sorted.n; i++)
    if (sorted.a[i].key == sorted.a[i - 1].key)
      return kiln_graph_fail(g, KILN_ERR_INVALID, "%s: attribute '%s' given twice", info->name,
                             kiln_attrs_info[sorted.a[i].key].name);

  kiln_node n = {.op = (uint16_t)op, .ninputs = nin, .nattrs = (uint32_t)sorted.n, .nbytes = data ? nbytes : 0};
  n.inputs = inputs;
  n.attrs = sorted.a;
  n.name = name;
  n.data = data;
  uint64_t data_h = !data ? 0 : shared ? blob_of(data)->hash : data_hash(data, nbytes);
  n.hash = node_hash(&n, data_h);

  if (g->nnodes + 1 > g->table_cap / 2 && !table_grow(g))
    return kiln_graph_fail(g, KILN_ERR_NOMEM, "%s: out of memory", info->name);
  uint32_t h = n.hash & (g->table_cap - 1);
  for (; g->table[h]; h = (h + 1) & (g->table_cap - 1)) {
    const kiln_node *m = &g->nodes[g->table[h] - 1];
    if (node_equal(&n, m)) {
      if (op == KILN_OP_PARAM)
        return kiln_graph_fail(g, KILN_ERR_INVALID, "param: a placeholder named '%s' already exists", name);
      return (kiln_value){g->table[h] - 1};
    }
  }

  if (!kiln_infer(g, &n)) return (kiln_value){KILN_NONE};

  /* Persist the variable-size parts in the arena only once the node is new and valid. */
  uint32_t *in = nin ? kiln_arena_alloc(&g->arena, sizeof(uint32_t) * nin) : NULL;
  kiln_attr *at = sorted.n ? kiln_arena_alloc(&g->arena, sizeof(kiln_attr) * (size_t)sorted.n) : NULL;
  char *nm = name ? kiln_arena_strdup(&g->arena, name) : NULL;
  if ((nin && !in) || (sorted.n && !at) || (name && !nm))
    return kiln_graph_fail(g, KILN_ERR_NOMEM, "%s: out of memory", info->name);
  if (g->nnodes == g->cap) {
    uint32_t cap = g->cap ? g->cap * 2 : 64;
    kiln_node *nodes = realloc(g->nodes, sizeof *nodes * cap);
    if (!nodes) return kiln_graph_fail(g, KILN_ERR_NOMEM, "%s: out of memory", info->name);
    g->nodes = nodes;
    g->cap = cap;
  }
  /* 64-aligned like tensors: generated code reads constants (weights) with full-width vector loads */
  const void *dt = NULL;
  if (data && shared) {
    __atomic_add_fetch(&blob_of(data)->refs, 1, __ATOMIC_RELAXED);
    dt = data;
  } else if (data && !(dt = blob_new(data, nbytes, data_h))) {
    return kiln_graph_fail(g, KILN_ERR_NOMEM, "%s: out of memory", info->name);
  }
  if (nin) memcpy(in, inputs, sizeof(uint32_t) * nin);
  if (sorted.n) memcpy(at, sorted.a, sizeof(kiln_attr) * (size_t)sorted.n);
  n.inputs = in;
  n.attrs = at;
  n.name = nm;
  n.data = dt;

  g->nodes[g->nnodes] = n;
  g->table[h] = g->nnodes + 1;
  return (kiln_value){g->nnodes++};
}

kiln_value kiln_node_make(kiln_graph *g, kiln_op op, const uint32_t *inputs, uint32_t nin, const kiln_attrs *attrs,
                          const char *name, const void *data, size_t nbytes) {
  return node_make(g, op, inputs, nin, attrs, name, data, nbytes, false);
}

kiln_value kiln_node_make_like(kiln_graph *g, const kiln_node *n, const uint32_t *inputs, const kiln_attrs *attrs) {
  return node_make(g, (kiln_op)n->op, inputs, n->ninputs, attrs, n->name, n->data, n->nbytes, n->data != NULL);
}

kiln_value kiln_constant_blob(kiln_graph *g, kiln_dtype t, int rank, const int64_t *dims, const void *data) {
  if (!g || g->status != KILN_OK) return (kiln_value){KILN_NONE};
  kiln_attrs a = {0};
  kiln_attrs_int(&a, KILN_ATTR_DTYPE, t);
  kiln_attrs_ints(&a, KILN_ATTR_SHAPE, dims, rank);
  size_t nbytes = (size_t)kiln_shape_numel(rank, dims) * kiln_dtype_size(t);
  return node_make(g, KILN_OP_CONST, NULL, 0, &a, NULL, data, nbytes, true);
}

/* Internal outputs (variable updates) are named "=var", which users cannot choose. */
kiln_status kiln_output(kiln_graph *g, const char *name, kiln_value v) {
  if (g && g->status == KILN_OK && name && name[0] == '=') {
    kiln_graph_fail(g, KILN_ERR_INVALID, "output '%s': names cannot start with '='", name);
    return g->status;
  }
  return kiln_graph_add_output(g, name, v);
}

/* Outputs and assignments are both lists of (unique name, node), with names in the arena. */
static kiln_status add_def(kiln_graph *g, kiln_output_def **list, uint32_t *n, uint32_t *cap, const char *what,
                           const char *name, uint32_t node) {
  if (g->status != KILN_OK) return kiln_set_error(g->status, "%s", g->errmsg);
  if (!name || !*name) {
    kiln_graph_fail(g, KILN_ERR_INVALID, "%s: a name is required", what);
    return g->status;
  }
  if (node >= g->nnodes) {
    kiln_graph_fail(g, KILN_ERR_INVALID, "%s '%s': not a value of this graph", what, name);
    return g->status;
  }
  for (uint32_t i = 0; i < *n; i++)
    if (!strcmp((*list)[i].name, name)) {
      kiln_graph_fail(g, KILN_ERR_INVALID, "%s '%s': given twice in one graph", what, name);
      return g->status;
    }
  if (*n == *cap) {
    uint32_t c = *cap ? *cap * 2 : 8;
    kiln_output_def *l = realloc(*list, sizeof *l * c);
    if (!l) {
      kiln_graph_fail(g, KILN_ERR_NOMEM, "%s: out of memory", what);
      return g->status;
    }
    *list = l;
    *cap = c;
  }
  char *nm = kiln_arena_strdup(&g->arena, name);
  if (!nm) {
    kiln_graph_fail(g, KILN_ERR_NOMEM, "%s: out of memory", what);
    return g->status;
  }
  (*list)[(*n)++] = (kiln_output_def){nm, node};
  return KILN_OK;
}

kiln_status kiln_graph_add_output(kiln_graph *g, const char *name, kiln_value v) {
  if (!g) return kiln_set_error(KILN_ERR_INVALID, "kiln_output: null graph");
  return add_def(g, &g->outputs, &g->noutputs, &g->outputs_cap, "output", name, v.id);
}

uint32_t kiln_graph_num_params(const kiln_graph *g) {
  uint32_t n = 0;
  for (uint32_t i = 0; i < g->nnodes; i++) n += g->nodes[i].op == KILN_OP_PARAM;
  return n;
}

bool kiln_node_is_variable(const kiln_node *n) {
  return n->op == KILN_OP_PARAM && kiln_attr_int(n, KILN_ATTR_VARIABLE, 0) != 0;
}

static bool is_input(const kiln_node *n) { return n->op == KILN_OP_PARAM && !kiln_node_is_variable(n); }

size_t kiln_graph_num_inputs(const kiln_graph *g) {
  size_t n = 0;
  for (uint32_t i = 0; g && i < g->nnodes; i++) n += is_input(&g->nodes[i]);
  return n;
}

kiln_value kiln_graph_input(const kiln_graph *g, size_t k) {
  for (uint32_t i = 0; g && i < g->nnodes; i++)
    if (is_input(&g->nodes[i]) && k-- == 0) return (kiln_value){i};
  return (kiln_value){KILN_NONE};
}

kiln_status kiln_graph_add_assign(kiln_graph *g, const char *name, uint32_t node) {
  return add_def(g, &g->assigns, &g->nassigns, &g->assigns_cap, "assign", name, node);
}

kiln_graph *kiln_graph_for_run(const kiln_graph *g, int64_t batch) {
  kiln_graph *s = kiln_graph_specialize(g, batch);
  if (!s) return NULL;
  /* '=' cannot start a name kiln_output accepts from users, so these never collide. */
  for (uint32_t i = 0; i < g->nassigns; i++) {
    char name[300];
    snprintf(name, sizeof name, "=%s", g->assigns[i].name);
    if (kiln_graph_add_output(s, name, (kiln_value){g->assigns[i].node}) != KILN_OK) {
      kiln_graph_free(s);
      return NULL;
    }
  }
  return s;
}

/* Rebuilding node by node re-runs inference with the new batch binding; indices are
 * preserved because the source graph is already deduplicated and topologically sorted. */
kiln_graph *kiln_graph_specialize(const kiln_graph *src, int64_t batch) {
  kiln_graph *g = kiln_graph_new();
  if (!g) return NULL;
  g->batch = batch;
  for (uint32_t i = 0; i < src->nnodes; i++) {
    const kiln_node *n = &src->nodes[i];
    kiln_attrs a = {.n = (int)n->nattrs};
    if (n->nattrs) memcpy(a.a, n->attrs, sizeof(kiln_attr) * n->nattrs);
    kiln_value v = kiln_node_make_like(g, n, n->inputs, &a);
    if (v.id != i) {
      if (g->status == KILN_OK) kiln_graph_fail(g, KILN_ERR_INVALID, "specialize: node %u changed index", i);
      kiln_set_error(g->status, "%s", g->errmsg);
      kiln_graph_free(g);
      return NULL;
    }
  }
  for (uint32_t i = 0; i < src->noutputs; i++)
    if (kiln_graph_add_output(g, src->outputs[i].name, (kiln_value){src->outputs[i].node}) != KILN_OK) {
      kiln_graph_free(g);
      return NULL;
    }
  for (uint32_t i = 0; i < src->nassigns; i++)
    if (kiln_graph_add_assign(g, src->assigns[i].name, src->assigns[i].node) != KILN_OK) {
      kiln_graph_free(g);
      return NULL;
    }
  g->vars = src->vars;
  return g;
}

const char *kiln_node_describe(const kiln_graph *g, const kiln_node *n, char *buf, size_t cap) {
  size_t o = (size_t)snprintf(buf, cap, "%s(", kiln_ops[n->op].name);
  for (uint32_t i = 0; i < n->ninputs && o < cap; i++) {
    const kiln_node *in = &g->nodes[n->inputs[i]];
    char s[128];
    o += (size_t)snprintf(buf + o, cap - o, "%s%%%u: %s%s", i ? ", " : "", n->inputs[i],
                          kiln_dtype_name((kiln_dtype)in->dtype), kiln_shape_str(s, sizeof s, in->rank, in->dims));
  }
  if (o < cap) snprintf(buf + o, cap - o, ")");
  return buf;
}

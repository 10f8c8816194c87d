/* Variables: named tensors owned by a store, initialised reproducibly.
 * Each random initializer draws from the counter RNG of ir/rng.c keyed by a hash
 * of (store seed, variable name), so values do not depend on creation order and
 * match across runs and machines. */
#include <math.h>
#include <string.h>
#include "ir/ir.h"
#include "runtime/tensor_impl.h"

struct kiln_variable {
  char *name;
  kiln_tensor *value;
  bool trainable;
  kiln_variables *store;
};

struct kiln_variables {
  uint64_t seed;
  kiln_variable **items;
  size_t n, cap;
};

kiln_variables *kiln_variables_new(uint64_t seed) {
  kiln_variables *vs = calloc(1, sizeof *vs);
  if (!vs) kiln_set_error(KILN_ERR_NOMEM, "kiln_variables_new: out of memory");
  else vs->seed = seed;
  return vs;
}

void kiln_variables_free(kiln_variables *vs) {
  if (!vs) return;
  for (size_t i = 0; i < vs->n; i++) {
    kiln_tensor_free(vs->items[i]->value);
    free(vs->items[i]->name);
    free(vs->items[i]);
  }
  free(vs->items);
  free(vs);
}

/* Keras' compute_fans: receptive field = product of all but the last two dims. */
static void fans(const kiln_tensor *t, double *fan_in, double *fan_out) {
  if (t->rank == 0) {
    *fan_in = *fan_out = 1;
  } else if (t->rank == 1) {
    *fan_in = *fan_out = (double)t->dims[0];
  } else {
    double receptive = 1;
    for (int i = 0; i < t->rank - 2; i++) receptive *= (double)t->dims[i];
    *fan_in = (double)t->dims[t->rank - 2] * receptive;
    *fan_out = (double)t->dims[t->rank - 1] * receptive;
  }
}

typedef struct draw {
  uint64_t seed, counter;
} draw;
static double uniform01(draw *d) { return kiln_rng_uniform01(d->seed, d->counter++); }
static double normal01(draw *d) {
  double u1 = uniform01(d), u2 = uniform01(d);
  return sqrt(-2.0 * log(1.0 - u1)) * cos(6.283185307179586 * u2);
}

/* Orthonormal columns by modified Gram-Schmidt of a normal [big, small] matrix: the
 * Q of its QR with R's diagonal made positive, which is what Keras' sign fix gives. */
static kiln_status orthogonal(kiln_tensor *t, draw *d) {
  int64_t cols = t->rank ? t->dims[t->rank - 1] : 1, rows = cols ? t->numel / cols : 0;
  int64_t big = rows > cols ? rows : cols, small = rows > cols ? cols : rows;
  double *q = malloc(sizeof *q * (size_t)(big * small + 1));
  if (!q) return kiln_set_error(KILN_ERR_NOMEM, "orthogonal initializer: out of memory");
  for (int64_t i = 0; i < big * small; i++) q[i] = normal01(d);
  for (int64_t j = 0; j < small; j++) { /* column j of q[big][small] */
    for (int64_t k = 0; k < j; k++) {
      double dot = 0;
      for (int64_t i = 0; i < big; i++) dot += q[i * small + j] * q[i * small + k];
      for (int64_t i = 0; i < big; i++) q[i * small + j] -= dot * q[i * small + k];
    }
    double norm = 0;
    for (int64_t i = 0; i < big; i++) norm += q[i * small + j] * q[i * small + j];
    norm = sqrt(norm);
    for (int64_t i = 0; i < big; i++) q[i * small + j] = norm > 0 ? q[i * small + j] / norm : 0;
  }
  for (int64_t r = 0; r < rows; r++) /* rows < cols: the transpose */
    for (int64_t c = 0; c < cols; c++) {
      double v = rows >= cols ? q[r * small + c] : q[c * small + r];
      if (t->dtype == KILN_F32) ((float *)t->data)[r * cols + c] = (float)v;
      else ((double *)t->data)[r * cols + c] = v;
    }
  free(q);
  return KILN_OK;
}

static kiln_status initialize(kiln_tensor *t, kiln_initializer init, uint64_t seed) {
  draw d = {seed, 0};
  if (init.kind == KILN_INIT_ORTHOGONAL) {
    if (!kiln_dtype_is_float(t->dtype)) return kiln_set_error(KILN_ERR_INVALID, "orthogonal initializer: needs f32 or f64");
    return orthogonal(t, &d);
  }
  double fan_in, fan_out;
  fans(t, &fan_in, &fan_out);
  for (int64_t i = 0; i < t->numel; i++) {
    double v;
    switch (init.kind) {
    case KILN_INIT_ZEROS: v = 0; break;
    case KILN_INIT_ONES: v = 1; break;
    case KILN_INIT_CONSTANT: v = init.a; break;
    case KILN_INIT_UNIFORM: v = init.a + (init.b - init.a) * uniform01(&d); break;
    case KILN_INIT_NORMAL: v = init.a + init.b * normal01(&d); break;
    case KILN_INIT_GLOROT_UNIFORM: {
      double limit = sqrt(6.0 / fmax(1.0, fan_in + fan_out));
      v = -limit + 2 * limit * uniform01(&d);
      break;
    }
    case KILN_INIT_HE_NORMAL: {
      /* 0.87962566103423978 is the sd of a unit normal truncated to [-2, 2]. */
      double sd = sqrt(2.0 / fmax(1.0, fan_in)) / 0.87962566103423978;
      do v = normal01(&d);
      while (fabs(v) > 2.0);
      v *= sd;
      break;
    }
    default: return kiln_set_error(KILN_ERR_INVALID, "variable: unknown initializer %d", (int)init.kind);
    }
    kiln_tensor_set_f64(t, i, v);
  }
  return KILN_OK;
}

kiln_status kiln_variable_new(kiln_variables *vs, const char *name, kiln_dtype t, kiln_shape s, kiln_initializer init,
                              bool trainable, kiln_variable **out) {
  if (out) *out = NULL;
  if (!vs || !out) return kiln_set_error(KILN_ERR_INVALID, "variable: store or out is NULL");
  if (!name || !*name) return kiln_set_error(KILN_ERR_INVALID, "variable: a name is required");
  if (kiln_variables_find(vs, name)) return kiln_set_error(KILN_ERR_INVALID, "variable '%s' already exists", name);
  if (s.rank < 0 || s.rank > KILN_MAX_RANK)
    return kiln_set_error(KILN_ERR_INVALID, "variable '%s': rank %d is outside 0..%d", name, s.rank, KILN_MAX_RANK);
  for (int i = 0; i < s.rank; i++)
    if (s.dims[i] < 0) return kiln_set_error(KILN_ERR_INVALID, "variable '%s': dims must be static and >= 0", name);
  if (!kiln_dtype_is_float(t) && init.kind >= KILN_INIT_UNIFORM)
    return kiln_set_error(KILN_ERR_INVALID, "variable '%s': random initializers need f32 or f64", name);
  kiln_variable *v = calloc(1, sizeof *v);
  if (!v) return kiln_set_error(KILN_ERR_NOMEM, "variable '%s': out of memory", name);
  v->name = strdup(name);
  v->value = kiln_tensor_new(t, s.rank, s.dims);
  v->trainable = trainable;
  v->store = vs;
  kiln_status st = v->name && v->value ? KILN_OK : kiln_set_error(KILN_ERR_NOMEM, "variable '%s': out of memory", name);
  if (st == KILN_OK) st = initialize(v->value, init, kiln_hash_bytes(vs->seed * 0x9E3779B97F4A7C15ull, name, strlen(name)));
  if (st == KILN_OK && vs->n == vs->cap) {
    size_t cap = vs->cap ? vs->cap * 2 : 16;
    kiln_variable **items = realloc(vs->items, sizeof *items * cap);
    if (!items) st = kiln_set_error(KILN_ERR_NOMEM, "variable '%s': out of memory", name);
    else vs->items = items, vs->cap = cap;
  }
  if (st != KILN_OK) {
    kiln_tensor_free(v->value);
    free(v->name);
    free(v);
    return st;
  }
  vs->items[vs->n++] = v;
  *out = v;
  return KILN_OK;
}

kiln_variable *kiln_variables_find(const kiln_variables *vs, const char *name) {
  if (!vs || !name) return NULL;
  for (size_t i = 0; i < vs->n; i++)
    if (!strcmp(vs->items[i]->name, name)) return vs->items[i];
  return NULL;
}

kiln_variables *kiln_variable_store(const kiln_variable *v) { return v ? v->store : NULL; }
size_t kiln_variables_count(const kiln_variables *vs) { return vs ? vs->n : 0; }
kiln_variable *kiln_variables_at(const kiln_variables *vs, size_t i) { return vs && i < vs->n ? vs->items[i] : NULL; }
const char *kiln_variable_name(const kiln_variable *v) { return v ? v->name : NULL; }
kiln_tensor *kiln_variable_value(kiln_variable *v) { return v ? v->value : NULL; }
bool kiln_variable_trainable(const kiln_variable *v) { return v && v->trainable; }
void kiln_variable_set_trainable(kiln_variable *v, bool trainable) {
  if (v) v->trainable = trainable;
}

static bool same_type(const kiln_tensor *a, const kiln_tensor *b) {
  return a->dtype == b->dtype && kiln_same_shape(a->rank, a->dims, b->rank, b->dims);
}

kiln_status kiln_variable_set(kiln_variable *v, const kiln_tensor *t) {
  if (!v || !t) return kiln_set_error(KILN_ERR_INVALID, "variable_set: NULL argument");
  if (!same_type(v->value, t)) {
    char a[160], b[160];
    return kiln_set_error(KILN_ERR_INVALID, "variable '%s' is %s, the value is %s", v->name,
                          kiln_type_str(a, sizeof a, v->value->dtype, v->value->rank, v->value->dims),
                          kiln_type_str(b, sizeof b, t->dtype, t->rank, t->dims));
  }
  memcpy(v->value->data, t->data, t->nbytes);
  return KILN_OK;
}

/* ---- variables in graphs ---- */

static bool use_store(kiln_graph *g, kiln_variables *vs, const char *op) {
  if (g->vars && g->vars != vs) {
    kiln_graph_fail(g, KILN_ERR_INVALID, "%s: the graph already uses variables of another store", op);
    return false;
  }
  g->vars = vs;
  return true;
}

kiln_value kiln_variable_read(kiln_graph *g, kiln_variable *v) {
  if (!g || g->status != KILN_OK) return (kiln_value){KILN_NONE};
  if (!v) return kiln_graph_fail(g, KILN_ERR_INVALID, "variable_read: null variable");
  if (!use_store(g, v->store, "variable_read")) return (kiln_value){KILN_NONE};
  /* Reading twice finds the first read's node (params are keyed by name). */
  for (uint32_t i = 0; i < g->nnodes; i++) {
    const kiln_node *n = &g->nodes[i];
    if (n->op == KILN_OP_PARAM && !strcmp(n->name, v->name)) {
      if (!kiln_node_is_variable(n))
        return kiln_graph_fail(g, KILN_ERR_INVALID, "variable_read: a placeholder named '%s' already exists", v->name);
      return (kiln_value){i};
    }
  }
  kiln_attrs a = {0};
  kiln_attrs_int(&a, KILN_ATTR_DTYPE, v->value->dtype);
  kiln_attrs_ints(&a, KILN_ATTR_SHAPE, v->value->dims, v->value->rank);
  kiln_attrs_int(&a, KILN_ATTR_VARIABLE, 1);
  return kiln_node_make(g, KILN_OP_PARAM, NULL, 0, &a, v->name, NULL, 0);
}

kiln_status kiln_variable_assign(kiln_graph *g, kiln_variable *v, kiln_value x) {
  if (!g) return kiln_set_error(KILN_ERR_INVALID, "variable_assign: null graph");
  if (g->status != KILN_OK) return kiln_set_error(g->status, "%s", g->errmsg);
  if (!v) {
    kiln_graph_fail(g, KILN_ERR_INVALID, "variable_assign: null variable");
    return g->status;
  }
  const kiln_node *n = kiln_node_get(g, x);
  if (!n) {
    kiln_graph_fail(g, KILN_ERR_INVALID, "variable_assign '%s': not a value of this graph", v->name);
    return g->status;
  }
  if (n->dtype != v->value->dtype || !kiln_same_shape(n->rank, n->dims, v->value->rank, v->value->dims)) {
    char a[160], b[160];
    kiln_graph_fail(g, KILN_ERR_INVALID, "variable_assign: variable '%s' is %s, the value is %s", v->name,
                    kiln_type_str(a, sizeof a, v->value->dtype, v->value->rank, v->value->dims),
                    kiln_type_str(b, sizeof b, (kiln_dtype)n->dtype, n->rank, n->dims));
    return g->status;
  }
  if (!use_store(g, v->store, "variable_assign")) return g->status;
  return kiln_graph_add_assign(g, v->name, x.id);
}

kiln_status kiln_graph_bind_variables(kiln_graph *g, kiln_variables *vs) {
  if (!g || !vs) return kiln_set_error(KILN_ERR_INVALID, "bind_variables: NULL argument");
  g->vars = vs;
  return KILN_OK;
}

/* ---- binding a run ---- */

static kiln_status lookup(const kiln_graph *g, const char *name, const kiln_node *want, kiln_variable **out) {
  kiln_variable *v = kiln_variables_find(g->vars, name);
  if (!v) {
    if (!g->vars) return kiln_set_error(KILN_ERR_INVALID, "the graph uses variable '%s' but no variable store is bound", name);
    return kiln_set_error(KILN_ERR_INVALID, "variable '%s' is not in the bound store", name);
  }
  if (want && (v->value->dtype != want->dtype || !kiln_same_shape(v->value->rank, v->value->dims, want->rank, want->dims))) {
    char a[160], b[160];
    return kiln_set_error(KILN_ERR_INVALID, "variable '%s' is %s but the graph expects %s", name,
                          kiln_type_str(a, sizeof a, v->value->dtype, v->value->rank, v->value->dims),
                          kiln_type_str(b, sizeof b, (kiln_dtype)want->dtype, want->rank, want->dims));
  }
  *out = v;
  return KILN_OK;
}

kiln_status kiln_bind_inputs(const kiln_graph *g, const kiln_tensor *const *user, size_t nuser, const kiln_tensor **full) {
  uint32_t want = (uint32_t)kiln_graph_num_inputs(g);
  if (nuser != want) return kiln_set_error(KILN_ERR_INVALID, "the graph has %u inputs, %zu given", want, nuser);
  if (nuser && !user) return kiln_set_error(KILN_ERR_INVALID, "the inputs array is NULL");
  size_t k = 0, j = 0;
  for (uint32_t i = 0; i < g->nnodes; i++) {
    const kiln_node *n = &g->nodes[i];
    if (n->op != KILN_OP_PARAM) continue;
    if (!kiln_node_is_variable(n)) {
      full[j++] = user[k++];
      continue;
    }
    kiln_variable *v;
    kiln_status st = lookup(g, n->name, n, &v);
    if (st != KILN_OK) return st;
    full[j++] = v->value;
  }
  return KILN_OK;
}

kiln_status kiln_apply_assigns(const kiln_graph *g, kiln_tensor *const *vals) {
  /* Look everything up first, so a failure changes no variable. */
  for (uint32_t i = 0; i < g->nassigns; i++) {
    kiln_variable *v;
    kiln_status st = lookup(g, g->assigns[i].name, NULL, &v);
    if (st != KILN_OK) return st;
    if (!same_type(v->value, vals[i])) return kiln_set_error(KILN_ERR_INVALID, "assign '%s': type changed", v->name);
  }
  for (uint32_t i = 0; i < g->nassigns; i++) {
    kiln_variable *v = kiln_variables_find(g->vars, g->assigns[i].name);
    memcpy(v->value->data, vals[i]->data, vals[i]->nbytes);
  }
  return KILN_OK;
}

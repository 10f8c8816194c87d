/* Models as a graph of layer applications (Keras' functional API), of which a
 * Sequential model is the special case chained at build time from its first input
 * shape. Layers are built when first applied, from the shapes their inputs have
 * then, by tracing the call into a scratch graph. */
#include <ctype.h>
#include <stdarg.h>
#include <string.h>
#include "frontend/model_impl.h"

#define KT_NONE ((kiln_ktensor){-1})

static kiln_model *model_new(const char *name, const char *dflt, uint64_t seed, bool sequential) {
  kiln_model *m = calloc(1, sizeof *m);
  if (m) {
    m->name = strdup(name && *name ? name : dflt);
    m->vars = kiln_variables_new(seed);
    m->seed = seed;
    m->sequential = sequential;
  }
  if (!m || !m->name || !m->vars) {
    if (m) kiln_variables_free(m->vars), free(m->name), free(m);
    kiln_set_error(KILN_ERR_NOMEM, "model_new: out of memory");
    return NULL;
  }
  return m;
}

kiln_model *kiln_sequential_new(const char *name, uint64_t seed) { return model_new(name, "sequential", seed, true); }
kiln_model *kiln_model_new(const char *name, uint64_t seed) { return model_new(name, "functional", seed, false); }

static void free_ports(model_port *p, size_t n) {
  for (size_t i = 0; i < n; i++) free(p[i].name);
  free(p);
}

void kiln_model_drop_compiled(kiln_model *m) {
  for (size_t i = 0; i < m->nheads; i++) free(m->heads[i].key);
  for (size_t i = 0; i < m->nmetrics; i++) free(m->metrics[i].key);
  for (size_t i = 0; i < m->nresults; i++) free(m->result_names[i]);
  free(m->heads);
  free(m->metrics);
  free(m->result_names);
  m->heads = NULL, m->metrics = NULL, m->result_names = NULL;
  m->nheads = m->nmetrics = m->nresults = 0;
  kiln_function_free(m->train_fn);
  kiln_function_free(m->eval_fn);
  kiln_function_free(m->grads_fn);
  kiln_function_free(m->apply_fn);
  m->train_fn = m->eval_fn = m->grads_fn = m->apply_fn = NULL;
  m->rows_train = m->rows_eval = ROWS_UNKNOWN;
  kiln_optimizer_free(m->opt);
  m->opt = NULL;
  m->compiled = false;
}

static void drop_graph(kiln_model *m) {
  for (size_t i = 0; i < m->nnodes; i++) free(m->nodes[i].in);
  m->nnodes = m->nkts = 0;
  free_ports(m->inputs, m->ninputs);
  free_ports(m->outputs, m->noutputs);
  m->inputs = m->outputs = NULL;
  m->ninputs = m->noutputs = 0;
}

void kiln_model_free(kiln_model *m) {
  if (!m) return;
  kiln_model_drop_compiled(m);
  drop_graph(m);
  for (size_t i = 0; i < m->nlayers; i++) kiln_layer_free(m->layers[i]);
  free(m->layers);
  free(m->kts);
  free(m->nodes);
  kiln_function_free(m->predict_fn);
  kiln_graph_free(m->loaded);
  kiln_variables_free(m->vars);
  free(m->errmsg);
  free(m->name);
  free(m);
}

kiln_variables *kiln_model_variables(kiln_model *m) { return m ? m->vars : NULL; }
size_t kiln_model_num_layers(const kiln_model *m) { return m ? m->nlayers : 0; }
kiln_layer *kiln_model_layer(const kiln_model *m, size_t i) { return m && i < m->nlayers ? m->layers[i] : NULL; }
size_t kiln_model_num_inputs(const kiln_model *m) { return m ? m->ninputs : 0; }
size_t kiln_model_num_outputs(const kiln_model *m) { return m ? m->noutputs : 0; }
const char *kiln_model_input_name(const kiln_model *m, size_t i) { return m && i < m->ninputs ? m->inputs[i].name : NULL; }
const char *kiln_model_output_name(const kiln_model *m, size_t i) {
  return m && i < m->noutputs ? m->outputs[i].name : NULL;
}
size_t kiln_model_num_results(const kiln_model *m) { return m ? m->nresults : 0; }
const char *kiln_model_result_name(const kiln_model *m, size_t i) {
  return m && i < m->nresults ? m->result_names[i] : NULL;
}

bool kiln_model_is_weight(const kiln_variable *v, void *ud) {
  return strncmp(kiln_variable_name(v), "optimizer/", 10) != 0;
}

kiln_layer *kiln_model_find_layer(const kiln_model *m, const char *name) {
  for (size_t i = 0; m && name && i < m->nlayers; i++)
    if (!strcmp(m->layers[i]->name, name)) return m->layers[i];
  return NULL;
}

/* The first error while assembling a functional model sticks, like a graph's. */
static kiln_ktensor model_fail(kiln_model *m, kiln_status st, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (m->error == KILN_OK) {
    m->error = st;
    m->errmsg = strdup(msg);
  }
  kiln_set_error(st, "model '%s': %s", m->name, msg);
  return KT_NONE;
}

static kiln_status model_error(const kiln_model *m) {
  return kiln_set_error(m->error, "model '%s': %s", m->name, m->errmsg ? m->errmsg : "out of memory");
}

/* ---- layers ---- */

/* Keras' automatic names: "MaxPooling2D" -> "max_pooling2d", then "_1", "_2" for repeats. */
static char *auto_name(const kiln_model *m, const char *type) {
  char base[128], name[160];
  kiln_layer_type_base(type, base, sizeof base);
  snprintf(name, sizeof name, "%s", base);
  for (int n = 1; kiln_model_find_layer(m, name); n++) snprintf(name, sizeof name, "%s_%d", base, n);
  return strdup(name);
}

static bool owns(const kiln_model *m, const kiln_layer *l) {
  for (size_t i = 0; i < m->nlayers; i++)
    if (m->layers[i] == l) return true;
  return false;
}

static bool grow(void **p, size_t *cap, size_t n, size_t size) {
  if (n < *cap) return true;
  size_t c = *cap ? *cap * 2 : 8;
  void *q = realloc(*p, size * c);
  if (!q) return false;
  *p = q, *cap = c;
  return true;
}

/* Takes ownership of l, also on failure. */
static kiln_status adopt(kiln_model *m, kiln_layer *l, const char *what) {
  kiln_status st = KILN_OK;
  if (l->vars) st = kiln_set_error(KILN_ERR_INVALID, "%s: layer '%s' belongs to another model", what, l->name);
  else if (l->name && kiln_model_find_layer(m, l->name))
    st = kiln_set_error(KILN_ERR_INVALID, "%s: a layer named '%s' exists", what, l->name);
  if (st == KILN_OK && !l->name && !(l->name = auto_name(m, l->cls->type)))
    st = kiln_set_error(KILN_ERR_NOMEM, "%s: out of memory", what);
  if (st == KILN_OK && !grow((void **)&m->layers, &m->cap, m->nlayers, sizeof *m->layers))
    st = kiln_set_error(KILN_ERR_NOMEM, "%s: out of memory", what);
  if (st != KILN_OK) {
    if (!l->vars) kiln_layer_free(l);
    return st;
  }
  l->vars = m->vars;
  l->seed = m->seed ^ kiln_layer_name_hash(l->name);
  m->layers[m->nlayers++] = l;
  return kiln_layer_bind_children(l);
}

kiln_status kiln_model_add(kiln_model *m, kiln_layer *l) {
  if (!m || !l) {
    kiln_layer_free(l);
    return kiln_set_error(KILN_ERR_INVALID, "model_add: %s is NULL%s", m ? "the layer" : "the model",
                          m ? " (did its constructor fail? see the previous error)" : "");
  }
  if (!m->sequential || m->built) {
    if (!l->vars) kiln_layer_free(l);
    return kiln_set_error(KILN_ERR_INVALID, "model_add: model '%s' %s", m->name,
                          m->sequential ? "is already built" : "is functional (use kiln_model_apply)");
  }
  return adopt(m, l, "model_add");
}

/* ---- the functional graph ---- */

static int32_t new_kt(kiln_model *m, int32_t node, kiln_dtype t, kiln_shape s) {
  if (!grow((void **)&m->kts, &m->kts_cap, m->nkts, sizeof *m->kts)) return -1;
  m->kts[m->nkts] = (model_kt){node, t, s};
  return (int32_t)m->nkts++;
}

static bool add_port(model_port **ports, size_t *n, const char *name, int32_t kt) {
  model_port *p = realloc(*ports, sizeof *p * (*n + 1));
  if (!p) return false;
  *ports = p;
  if (!(p[*n].name = strdup(name))) return false;
  p[*n].kt = kt;
  (*n)++;
  return true;
}

static bool port_named(const model_port *p, size_t n, const char *name) {
  for (size_t i = 0; i < n; i++)
    if (!strcmp(p[i].name, name)) return true;
  return false;
}

kiln_ktensor kiln_model_input(kiln_model *m, const char *name, kiln_dtype t, kiln_shape shape) {
  if (!m) return KT_NONE;
  if (m->error != KILN_OK) return KT_NONE;
  if (m->sequential && !m->built && m->nnodes)
    return model_fail(m, KILN_ERR_INVALID, "input: a Sequential model has one input, created by build");
  if (!name || !*name) return model_fail(m, KILN_ERR_INVALID, "input: a name is required");
  if (port_named(m->inputs, m->ninputs, name)) return model_fail(m, KILN_ERR_INVALID, "input '%s' exists", name);
  if ((unsigned)t >= KILN_DTYPE_COUNT || shape.rank < 0 || shape.rank + 1 > KILN_MAX_RANK)
    return model_fail(m, KILN_ERR_INVALID, "input '%s': bad dtype or rank", name);
  kiln_shape s = {.rank = shape.rank + 1, .dims = {KILN_DYN}};
  for (int i = 0; i < shape.rank; i++) {
    if (shape.dims[i] < 0) return model_fail(m, KILN_ERR_INVALID, "input '%s': dim %d is not static", name, i);
    s.dims[i + 1] = shape.dims[i];
  }
  int32_t kt = new_kt(m, -1, t, s);
  if (kt < 0 || !add_port(&m->inputs, &m->ninputs, name, kt)) return model_fail(m, KILN_ERR_NOMEM, "out of memory");
  return (kiln_ktensor){kt};
}

kiln_ktensor kiln_model_apply(kiln_model *m, kiln_layer *l, const kiln_ktensor *in, size_t n) {
  if (!m) {
    if (l && !l->vars) kiln_layer_free(l);
    return KT_NONE;
  }
  if (!l) return model_fail(m, KILN_ERR_INVALID, "apply: the layer is NULL (did its constructor fail?)");
  if (m->sequential && (m->built || !m->ninputs)) {
    if (!owns(m, l) && !l->vars) kiln_layer_free(l);
    return model_fail(m, KILN_ERR_INVALID, "apply: model is Sequential (use kiln_model_add)");
  }
  if (!owns(m, l) && adopt(m, l, "apply") != KILN_OK) return model_fail(m, KILN_ERR_INVALID, "%s", kiln_errmsg());
  if (m->error != KILN_OK) return KT_NONE;
  int want = l->cls->ninputs;
  if (!in || n == 0 || n > 64 || (want >= 0 && n != (size_t)(want ? want : 1)) || (want < 0 && n < 2))
    return model_fail(m, KILN_ERR_INVALID, "layer '%s' (%s) takes %s input%s, got %zu", l->name, l->cls->type,
                      want < 0 ? "two or more" : "1", want < 0 ? "s" : "", n);
  for (size_t i = 0; i < n; i++)
    if (in[i].id < 0 || (size_t)in[i].id >= m->nkts)
      return model_fail(m, KILN_ERR_INVALID, "layer '%s': input %zu is not a tensor of this model", l->name, i);
  /* Trace the call alone to build the layer and learn the output's type. */
  kiln_graph *g = kiln_graph_new();
  kiln_value xs[64];
  for (size_t i = 0; i < n; i++) {
    char name[16];
    snprintf(name, sizeof name, "in%zu", i);
    xs[i] = kiln_placeholder(g, name, m->kts[in[i].id].dtype, m->kts[in[i].id].shape);
  }
  kiln_value y = kiln_layer_invoke(l, g, xs, n, false);
  kiln_dtype t = kiln_value_dtype(g, y);
  kiln_shape s = kiln_value_shape(g, y);
  if (kiln_graph_status(g) != KILN_OK) {
    kiln_ktensor r = model_fail(m, kiln_graph_status(g), "%s", kiln_graph_errmsg(g));
    kiln_graph_free(g);
    return r;
  }
  kiln_graph_free(g);
  int32_t *ins = malloc(sizeof *ins * n);
  int32_t kt = new_kt(m, (int32_t)m->nnodes, t, s);
  if (!ins || kt < 0 || !grow((void **)&m->nodes, &m->nodes_cap, m->nnodes, sizeof *m->nodes)) {
    free(ins);
    return model_fail(m, KILN_ERR_NOMEM, "out of memory");
  }
  for (size_t i = 0; i < n; i++) ins[i] = in[i].id;
  m->nodes[m->nnodes++] = (model_node){l, ins, n, kt};
  if (l->out_shape.rank == 0) l->out_shape = s;
  return (kiln_ktensor){kt};
}

kiln_ktensor kiln_model_apply1(kiln_model *m, kiln_layer *l, kiln_ktensor in) { return kiln_model_apply(m, l, &in, 1); }

kiln_model *kiln_model_subclassed(const char *name, uint64_t seed, kiln_layer *body, const kiln_input_spec *inputs,
                                  size_t ninputs, const char *output) {
  kiln_model *m = kiln_model_new(name, seed);
  if (!m || !body || (ninputs && !inputs) || ninputs > 64) {
    if (m && body) kiln_set_error(KILN_ERR_INVALID, "model_subclassed: %s", ninputs > 64 ? "at most 64 inputs" : "inputs is NULL");
    else if (m) kiln_set_error(KILN_ERR_INVALID, "model_subclassed: the body layer is NULL (did its constructor fail?)");
    kiln_model_free(m);
    if (!m || !body) kiln_layer_free(body);
    return NULL;
  }
  /* Like keras.Model subclassing: the body's weights are "<model>/<sub-layer>/<weight>". */
  if (!body->name && !(body = kiln_layer_named(body, m->name))) {
    kiln_model_free(m);
    return NULL;
  }
  kiln_ktensor in[64];
  for (size_t i = 0; i < ninputs; i++) in[i] = kiln_model_input(m, inputs[i].name, inputs[i].dtype, inputs[i].shape);
  kiln_ktensor y = kiln_model_apply(m, body, in, ninputs);
  if (kiln_model_output(m, output, y) != KILN_OK) { /* the first error of the inputs or the body, set by it */
    kiln_model_free(m);
    return NULL;
  }
  return m;
}

kiln_status kiln_model_output(kiln_model *m, const char *name, kiln_ktensor t) {
  if (!m) return kiln_set_error(KILN_ERR_INVALID, "model_output: null model");
  if (m->error != KILN_OK) return model_error(m);
  if (t.id < 0 || (size_t)t.id >= m->nkts || m->kts[t.id].node < 0)
    return model_fail(m, KILN_ERR_INVALID, "output: not a layer's result in this model"), m->error;
  if (!name) name = m->nodes[m->kts[t.id].node].layer->name;
  if (port_named(m->outputs, m->noutputs, name)) return model_fail(m, KILN_ERR_INVALID, "output '%s' exists", name), m->error;
  if (!add_port(&m->outputs, &m->noutputs, name, t.id)) return model_fail(m, KILN_ERR_NOMEM, "out of memory"), m->error;
  m->built = !m->sequential;
  if (!m->sequential && m->compiled) kiln_model_drop_compiled(m); /* heads name outputs: compile again */
  kiln_function_free(m->predict_fn);
  m->predict_fn = NULL;
  m->rows_predict = ROWS_UNKNOWN;
  return KILN_OK;
}

kiln_status kiln_model_build(kiln_model *m, kiln_dtype t, kiln_shape input) {
  if (!m) return kiln_set_error(KILN_ERR_INVALID, "model_build: null model");
  if (m->error != KILN_OK) return model_error(m);
  if (!m->sequential) {
    if (!m->noutputs) return kiln_set_error(KILN_ERR_INVALID, "model '%s' has no outputs (kiln_model_output)", m->name);
    return KILN_OK;
  }
  if (m->built) {
    const model_kt *k = &m->kts[m->inputs[0].kt];
    if (k->dtype == t && kiln_same_shape(k->shape.rank - 1, k->shape.dims + 1, input.rank, input.dims)) return KILN_OK;
    char a[160], b[160];
    return kiln_set_error(KILN_ERR_INVALID, "model '%s' was built for inputs %s, got %s", m->name,
                          kiln_type_str(a, sizeof a, k->dtype, k->shape.rank - 1, k->shape.dims + 1),
                          kiln_type_str(b, sizeof b, t, input.rank, input.dims));
  }
  if (!m->nlayers) return kiln_set_error(KILN_ERR_INVALID, "model '%s' has no layers", m->name);
  kiln_ktensor x = kiln_model_input(m, "input", t, input);
  for (size_t i = 0; i < m->nlayers; i++) x = kiln_model_apply1(m, m->layers[i], x);
  kiln_status st = m->error == KILN_OK ? kiln_model_output(m, m->layers[m->nlayers - 1]->name, x) : m->error;
  if (st != KILN_OK) { /* a Sequential model may be built again, e.g. with other shapes */
    st = model_error(m);
    drop_graph(m);
    m->error = KILN_OK;
    free(m->errmsg);
    m->errmsg = NULL;
    return st;
  }
  m->built = true;
  return KILN_OK;
}

kiln_status kiln_model_ensure_built(kiln_model *m, const kiln_tensor *const *x, size_t nx) {
  if (m->error != KILN_OK) return model_error(m);
  for (size_t i = 0; i < nx; i++)
    if (!x[i]) return kiln_set_error(KILN_ERR_INVALID, "model '%s': input %zu is NULL", m->name, i);
  if (m->sequential && nx == 1 && !m->built) {
    kiln_shape s = {.rank = kiln_tensor_rank(x[0]) - 1};
    if (s.rank < 0) return kiln_set_error(KILN_ERR_INVALID, "model '%s': x needs a batch dim", m->name);
    memcpy(s.dims, kiln_tensor_dims(x[0]) + 1, sizeof(int64_t) * (size_t)s.rank);
    kiln_status st = kiln_model_build(m, kiln_tensor_dtype(x[0]), s);
    if (st != KILN_OK) return st;
  }
  if (!m->built) return kiln_model_build(m, KILN_F32, KILN_SCALAR);
  if (nx != m->ninputs)
    return kiln_set_error(KILN_ERR_INVALID, "model '%s' has %zu inputs, got %zu tensors", m->name, m->ninputs, nx);
  for (size_t i = 0; i < nx; i++) {
    const model_kt *k = &m->kts[m->inputs[i].kt];
    int r = kiln_tensor_rank(x[i]);
    if (r < 1 || kiln_tensor_dtype(x[i]) != k->dtype ||
        !kiln_same_shape(k->shape.rank - 1, k->shape.dims + 1, r - 1, kiln_tensor_dims(x[i]) + 1)) {
      char a[160], b[160];
      return kiln_set_error(KILN_ERR_INVALID, "model '%s': input '%s' takes examples of %s, got %s", m->name,
                            m->inputs[i].name, kiln_type_str(a, sizeof a, k->dtype, k->shape.rank - 1, k->shape.dims + 1),
                            kiln_type_str(b, sizeof b, kiln_tensor_dtype(x[i]), r > 0 ? r - 1 : 0,
                                          kiln_tensor_dims(x[i]) + (r > 0)));
    }
  }
  return KILN_OK;
}

/* A loaded model's graph copied into g, its placeholders replaced by x. */
static kiln_status inline_loaded(kiln_model *m, kiln_graph *g, const kiln_value *x, kiln_value *y) {
  const kiln_graph *src = m->loaded;
  uint32_t *map = malloc(sizeof *map * (src->nnodes + 1)), nparams = 0;
  if (!map) return kiln_graph_fail(g, KILN_ERR_NOMEM, "model_call: out of memory"), KILN_ERR_NOMEM;
  for (uint32_t i = 0; i < src->nnodes && kiln_graph_status(g) == KILN_OK; i++) {
    const kiln_node *n = &src->nodes[i];
    if (n->op == KILN_OP_PARAM && kiln_node_is_variable(n)) {
      kiln_variable *v = kiln_variables_find(m->vars, n->name);
      map[i] = v ? kiln_variable_read(g, v).id : kiln_graph_fail(g, KILN_ERR_INVALID, "model '%s': no weight '%s'", m->name, n->name).id;
    } else if (n->op == KILN_OP_PARAM) {
      map[i] = x[nparams++].id;
    } else {
      uint32_t ins[64];
      for (uint32_t j = 0; j < n->ninputs && j < 64; j++) ins[j] = map[n->inputs[j]];
      kiln_attrs a = {.n = (int)n->nattrs};
      if (n->nattrs) memcpy(a.a, n->attrs, sizeof(kiln_attr) * n->nattrs);
      map[i] = kiln_node_make_like(g, n, ins, &a).id;
    }
  }
  for (size_t i = 0; kiln_graph_status(g) == KILN_OK && i < m->noutputs; i++) y[i] = (kiln_value){map[src->outputs[i].node]};
  free(map);
  return kiln_graph_status(g);
}

kiln_status kiln_model_call_multi(kiln_model *m, kiln_graph *g, const kiln_value *x, kiln_value *y, bool training) {
  if (!m || !g || !x || !y) return kiln_set_error(KILN_ERR_INVALID, "model_call: NULL argument");
  if (!m->built) return kiln_set_error(KILN_ERR_INVALID, "model_call: model '%s' is not built", m->name);
  if (m->loaded) return inline_loaded(m, g, x, y);
  kiln_value *v = malloc(sizeof *v * (m->nkts + 1));
  if (!v) return kiln_graph_fail(g, KILN_ERR_NOMEM, "model_call: out of memory"), KILN_ERR_NOMEM;
  for (size_t i = 0; i < m->ninputs; i++) v[m->inputs[i].kt] = x[i];
  for (size_t i = 0; i < m->nnodes && kiln_graph_status(g) == KILN_OK; i++) {
    const model_node *nd = &m->nodes[i];
    kiln_value ins[64];
    for (size_t j = 0; j < nd->nin; j++) ins[j] = v[nd->in[j]];
    v[nd->out] = kiln_layer_invoke(nd->layer, g, ins, nd->nin, training);
  }
  for (size_t i = 0; i < m->noutputs; i++) y[i] = v[m->outputs[i].kt];
  free(v);
  return kiln_graph_status(g);
}

kiln_value kiln_model_call(kiln_model *m, kiln_graph *g, kiln_value x, bool training) {
  kiln_value y = {KILN_NONE};
  if (m && g && m->sequential && !m->built) {
    kiln_shape s = kiln_value_shape(g, x);
    if (s.rank < 1) return kiln_graph_fail(g, KILN_ERR_INVALID, "model_call: x needs a batch dim");
    kiln_shape per = {.rank = s.rank - 1};
    memcpy(per.dims, s.dims + 1, sizeof(int64_t) * (size_t)per.rank);
    if (kiln_model_build(m, kiln_value_dtype(g, x), per) != KILN_OK)
      return kiln_graph_fail(g, KILN_ERR_INVALID, "%s", kiln_errmsg());
  }
  if (m && (m->ninputs != 1 || m->noutputs != 1))
    return kiln_graph_fail(g, KILN_ERR_INVALID, "model_call: model '%s' has %zu inputs and %zu outputs; use kiln_model_call_multi",
                           m->name, m->ninputs, m->noutputs);
  if (kiln_model_call_multi(m, g, &x, &y, training) != KILN_OK && kiln_graph_status(g) == KILN_OK)
    kiln_graph_fail(g, KILN_ERR_INVALID, "%s", kiln_errmsg());
  return y;
}

kiln_graph *kiln_model_inference_graph(kiln_model *m) {
  kiln_graph *g = kiln_graph_new();
  kiln_value x[64], y[64];
  if (!g || m->ninputs > 64 || m->noutputs > 64) {
    kiln_graph_free(g);
    kiln_set_error(KILN_ERR_INVALID, "model '%s': at most 64 inputs and outputs", m->name);
    return NULL;
  }
  for (size_t i = 0; i < m->ninputs; i++)
    x[i] = kiln_placeholder(g, m->inputs[i].name, m->kts[m->inputs[i].kt].dtype, m->kts[m->inputs[i].kt].shape);
  if (kiln_model_call_multi(m, g, x, y, false) == KILN_OK)
    for (size_t i = 0; i < m->noutputs; i++) kiln_output(g, m->outputs[i].name, y[i]);
  if (kiln_graph_status(g) != KILN_OK) {
    kiln_set_error(kiln_graph_status(g), "model '%s': %s", m->name, kiln_graph_errmsg(g));
    kiln_graph_free(g);
    return NULL;
  }
  return g;
}

kiln_status kiln_model_from_graph(const char *name, kiln_graph *g, kiln_variables *vars, kiln_model **out) {
  kiln_model *m = model_new(name, "model", 0, false);
  if (!m) {
    kiln_graph_free(g);
    kiln_variables_free(vars);
    return KILN_ERR_NOMEM;
  }
  kiln_variables_free(m->vars);
  m->vars = vars;
  m->loaded = g;
  for (uint32_t i = 0; i < g->nnodes && m->error == KILN_OK; i++) {
    const kiln_node *n = &g->nodes[i];
    if (n->op != KILN_OP_PARAM || kiln_node_is_variable(n)) continue;
    kiln_shape s = {.rank = n->rank};
    memcpy(s.dims, n->dims, sizeof(int64_t) * (size_t)n->rank);
    if (n->rank < 1 || n->dims[0] != KILN_DYN)
      model_fail(m, KILN_ERR_INVALID, "input '%s' has no batch dim ('?' first)", n->name);
    int32_t kt = new_kt(m, -1, (kiln_dtype)n->dtype, s);
    if (kt < 0 || !add_port(&m->inputs, &m->ninputs, n->name, kt)) model_fail(m, KILN_ERR_NOMEM, "out of memory");
  }
  for (uint32_t i = 0; i < g->noutputs && m->error == KILN_OK; i++) {
    const kiln_node *n = &g->nodes[g->outputs[i].node];
    kiln_shape s = {.rank = n->rank};
    memcpy(s.dims, n->dims, sizeof(int64_t) * (size_t)n->rank);
    int32_t kt = new_kt(m, -1, (kiln_dtype)n->dtype, s);
    if (kt < 0 || !add_port(&m->outputs, &m->noutputs, g->outputs[i].name, kt)) model_fail(m, KILN_ERR_NOMEM, "out of memory");
  }
  if (m->error == KILN_OK && (!m->ninputs || !m->noutputs)) model_fail(m, KILN_ERR_INVALID, "the graph needs inputs and outputs");
  if (m->error != KILN_OK) {
    kiln_status st = model_error(m);
    kiln_model_free(m);
    return st;
  }
  m->built = true;
  *out = m;
  return KILN_OK;
}

/* ---- summary ---- */

/* Keras counts float weights; step counters (dropout's RNG state) are not parameters. */
static int64_t weight_count(const kiln_layer *l, int64_t *trainable) {
  int64_t n = 0;
  for (size_t i = 0; i < l->nweights; i++) {
    const kiln_tensor *t = kiln_variable_value(l->weights[i]);
    if (!kiln_dtype_is_float(kiln_tensor_dtype(t))) continue;
    n += kiln_tensor_numel(t);
    if (kiln_variable_trainable(l->weights[i])) *trainable += kiln_tensor_numel(t);
  }
  return n;
}

static const char *shape_text(char *buf, size_t cap, kiln_shape s) {
  size_t k = (size_t)snprintf(buf, cap, "(None");
  for (int d = 1; d < s.rank && k < cap; d++) k += (size_t)snprintf(buf + k, cap - k, ", %lld", (long long)s.dims[d]);
  if (k < cap) snprintf(buf + k, cap - k, ")");
  return buf;
}

static const char *producer_name(const kiln_model *m, int32_t kt) {
  int32_t node = m->kts[kt].node;
  if (node >= 0) return m->nodes[node].layer->name;
  for (size_t i = 0; i < m->ninputs; i++)
    if (m->inputs[i].kt == kt) return m->inputs[i].name;
  return "?";
}

static void summary_row(FILE *out, bool functional, const char *name, const char *type, kiln_shape s, int64_t params,
                        const char *connected);

/* Sub-layers under their parent, indented by depth; their parameters are already in
 * the parent's count. */
static void summary_children(FILE *out, bool functional, const kiln_layer *l, int depth) {
  for (size_t i = 0; i < l->nchildren; i++) {
    const kiln_layer *c = l->children[i];
    char name[160];
    int64_t unused = 0;
    snprintf(name, sizeof name, "%*s%s", 2 * depth, "", c->local);
    summary_row(out, functional, name, c->cls->type, c->out_shape, weight_count(c, &unused), "");
    summary_children(out, functional, c, depth + 1);
  }
}

static void summary_row(FILE *out, bool functional, const char *name, const char *type, kiln_shape s, int64_t params,
                        const char *connected) {
  char col[160], shape[128];
  snprintf(col, sizeof col, " %s (%s)", name, type);
  fprintf(out, "%-28s %-25s ", col, shape_text(shape, sizeof shape, s)); /* long names push, never touch */
  if (functional) fprintf(out, "%-10lld %s\n", (long long)params, connected);
  else fprintf(out, "%lld\n", (long long)params);
}

kiln_status kiln_model_summary(kiln_model *m, FILE *out) {
  if (!m || !out) return kiln_set_error(KILN_ERR_INVALID, "summary: NULL argument");
  if (!m->built) return kiln_set_error(KILN_ERR_INVALID, "summary: model '%s' is not built yet (call kiln_model_build or fit)", m->name);
  if (m->loaded) {
    int64_t total = 0, trainable = 0;
    for (size_t i = 0; i < kiln_variables_count(m->vars); i++) {
      kiln_variable *v = kiln_variables_at(m->vars, i);
      const kiln_tensor *t = kiln_variable_value(v);
      if (!kiln_dtype_is_float(kiln_tensor_dtype(t)) || !kiln_model_is_weight(v, NULL)) continue;
      total += kiln_tensor_numel(t);
      trainable += kiln_variable_trainable(v) ? kiln_tensor_numel(t) : 0;
    }
    fprintf(out, "Model: \"%s\" (loaded: a graph of %u ops)\n", m->name, m->loaded->nnodes);
    for (size_t i = 0; i < m->ninputs + m->noutputs; i++) {
      const model_port *p = i < m->ninputs ? &m->inputs[i] : &m->outputs[i - m->ninputs];
      char shape[128];
      fprintf(out, " %-7s %-20s %s\n", i < m->ninputs ? "input" : "output", p->name, shape_text(shape, sizeof shape, m->kts[p->kt].shape));
    }
    fprintf(out, "Total params: %lld\nTrainable params: %lld\nNon-trainable params: %lld\n", (long long)total,
            (long long)trainable, (long long)(total - trainable));
    return KILN_OK;
  }
  bool fn = !m->sequential;
  const char *rule = fn ? "____________________________________________________________________________________\n"
                        : "_________________________________________________________________\n";
  const char *dbl = fn ? "====================================================================================\n"
                       : "=================================================================\n";
  fprintf(out, "Model: \"%s\"\n%s", m->name, rule);
  fprintf(out, "%-28s %-25s %-10s%s\n%s", " Layer (type)", "Output Shape", "Param #", fn ? " Connected to" : "", dbl);
  int64_t total = 0, trainable = 0;
  size_t rows = 0;
  if (fn)
    for (size_t i = 0; i < m->ninputs; i++, rows++)
      summary_row(out, fn, m->inputs[i].name, "InputLayer", m->kts[m->inputs[i].kt].shape, 0, "-");
  for (size_t i = 0; i < m->nlayers; i++) {
    kiln_layer *l = m->layers[i];
    char connected[512] = "";
    size_t k = 0;
    for (size_t n = 0; n < m->nnodes; n++) /* every call of a shared layer */
      for (size_t j = 0; m->nodes[n].layer == l && j < m->nodes[n].nin && k < sizeof connected; j++)
        k += (size_t)snprintf(connected + k, sizeof connected - k, "%s%s", k ? ", " : "", producer_name(m, m->nodes[n].in[j]));
    int64_t n = weight_count(l, &trainable);
    total += n;
    fprintf(out, "%s", rows++ ? "\n" : "");
    summary_row(out, fn, l->name, l->cls->type, l->out_shape, n, connected);
    summary_children(out, fn, l, 1);
  }
  fprintf(out, "%s", dbl);
  fprintf(out, "Total params: %lld\nTrainable params: %lld\nNon-trainable params: %lld\n%s", (long long)total,
          (long long)trainable, (long long)(total - trainable), rule);
  return KILN_OK;
}

/* Sequential models: layers in order, built lazily from the first input shape;
 * summary; compile, and the three compiled functions fit/evaluate/predict use. */
#include <ctype.h>
#include <string.h>
#include "frontend/model_impl.h"

kiln_model *kiln_sequential_new(const char *name, uint64_t seed) {
  kiln_model *m = calloc(1, sizeof *m);
  if (m) {
    m->name = strdup(name && *name ? name : "sequential");
    m->vars = kiln_variables_new(seed);
    m->seed = seed;
  }
  if (!m || !m->name || !m->vars) {
    if (m) kiln_variables_free(m->vars), free(m->name), free(m);
    kiln_set_error(KILN_ERR_NOMEM, "sequential_new: out of memory");
    return NULL;
  }
  return m;
}

void kiln_model_free(kiln_model *m) {
  if (!m) return;
  for (size_t i = 0; i < m->nlayers; i++) kiln_layer_free(m->layers[i]);
  free(m->layers);
  for (size_t i = 0; i < m->nmetrics; i++) free(m->metric_names[i]);
  kiln_function_free(m->train_fn);
  kiln_function_free(m->eval_fn);
  kiln_function_free(m->predict_fn);
  kiln_optimizer_free(m->opt);
  kiln_variables_free(m->vars);
  free(m->name);
  free(m);
}

kiln_variables *kiln_model_variables(kiln_model *m) { return m ? m->vars : NULL; }
size_t kiln_model_num_layers(const kiln_model *m) { return m ? m->nlayers : 0; }
kiln_layer *kiln_model_layer(const kiln_model *m, size_t i) { return m && i < m->nlayers ? m->layers[i] : NULL; }

/* Keras' automatic names: "MaxPooling2D" -> "max_pooling2d", then "_1", "_2" for repeats. */
static bool name_taken(const kiln_model *m, const char *name) {
  for (size_t i = 0; i < m->nlayers; i++)
    if (!strcmp(m->layers[i]->name, name)) return true;
  return false;
}

static char *auto_name(const kiln_model *m, const char *type) {
  char base[128], name[160];
  size_t k = 0;
  for (size_t i = 0; type[i] && k + 2 < sizeof base; i++) {
    if (isupper((unsigned char)type[i]) && i && islower((unsigned char)type[i - 1])) base[k++] = '_';
    base[k++] = (char)tolower((unsigned char)type[i]);
  }
  base[k] = 0;
  snprintf(name, sizeof name, "%s", base);
  for (int n = 1; name_taken(m, name); n++) snprintf(name, sizeof name, "%s_%d", base, n);
  return strdup(name);
}

kiln_status kiln_model_add(kiln_model *m, kiln_layer *l) {
  if (!m || !l) {
    kiln_layer_free(l);
    return kiln_set_error(KILN_ERR_INVALID, "model_add: %s is NULL%s", m ? "the layer" : "the model",
                          m ? " (did its constructor fail? see the previous error)" : "");
  }
  kiln_status st = KILN_OK;
  if (m->built) st = kiln_set_error(KILN_ERR_INVALID, "model_add: model '%s' is already built", m->name);
  else if (l->vars) st = kiln_set_error(KILN_ERR_INVALID, "model_add: layer '%s' belongs to another model", l->name);
  else if (l->name && name_taken(m, l->name)) st = kiln_set_error(KILN_ERR_INVALID, "model_add: a layer named '%s' exists", l->name);
  if (st == KILN_OK && !l->name && !(l->name = auto_name(m, l->cls->type)))
    st = kiln_set_error(KILN_ERR_NOMEM, "model_add: out of memory");
  if (st == KILN_OK && m->nlayers == m->cap) {
    size_t cap = m->cap ? m->cap * 2 : 8;
    kiln_layer **ls = realloc(m->layers, sizeof *ls * cap);
    if (!ls) st = kiln_set_error(KILN_ERR_NOMEM, "model_add: out of memory");
    else m->layers = ls, m->cap = cap;
  }
  if (st != KILN_OK) {
    if (!l->vars) kiln_layer_free(l);
    return st;
  }
  l->vars = m->vars;
  m->layers[m->nlayers++] = l;
  return KILN_OK;
}

kiln_value kiln_model_call(kiln_model *m, kiln_graph *g, kiln_value x, bool training) {
  for (size_t i = 0; i < m->nlayers && kiln_graph_status(g) == KILN_OK; i++) {
    kiln_layer *l = m->layers[i];
    if (!l->built) {
      if (l->cls->build && l->cls->build(l, kiln_value_shape(g, x)) != KILN_OK)
        return kiln_graph_fail(g, KILN_ERR_INVALID, "%s", kiln_errmsg());
      l->built = true;
    }
    x = l->cls->call(l, g, x, training);
    if (kiln_graph_status(g) == KILN_OK) l->out_shape = kiln_value_shape(g, x);
  }
  return x;
}

kiln_status kiln_model_build(kiln_model *m, kiln_dtype t, kiln_shape input) {
  if (!m) return kiln_set_error(KILN_ERR_INVALID, "model_build: null model");
  if (m->built) {
    if (m->in_dtype == t && kiln_same_shape(m->in_shape.rank, m->in_shape.dims, input.rank, input.dims)) return KILN_OK;
    char a[160], b[160];
    return kiln_set_error(KILN_ERR_INVALID, "model '%s' was built for inputs %s, got %s", m->name,
                          kiln_type_str(a, sizeof a, m->in_dtype, m->in_shape.rank, m->in_shape.dims),
                          kiln_type_str(b, sizeof b, t, input.rank, input.dims));
  }
  if (!m->nlayers) return kiln_set_error(KILN_ERR_INVALID, "model '%s' has no layers", m->name);
  if (input.rank + 1 > KILN_MAX_RANK) return kiln_set_error(KILN_ERR_INVALID, "model_build: input rank too large");
  kiln_graph *g = kiln_graph_new();
  kiln_shape s = {.rank = input.rank + 1, .dims = {KILN_DYN}};
  memcpy(s.dims + 1, input.dims, sizeof(int64_t) * (size_t)input.rank);
  kiln_model_call(m, g, kiln_placeholder(g, "x", t, s), false);
  kiln_status st = kiln_graph_status(g);
  if (st != KILN_OK) st = kiln_set_error(st, "model '%s': %s", m->name, kiln_graph_errmsg(g));
  kiln_graph_free(g);
  if (st == KILN_OK) {
    m->built = true;
    m->in_dtype = t;
    m->in_shape = input;
  }
  return st;
}

kiln_status kiln_model_ensure_built(kiln_model *m, const kiln_tensor *x) {
  if (!x) return kiln_set_error(KILN_ERR_INVALID, "model '%s': x is NULL", m->name);
  kiln_shape s = {.rank = kiln_tensor_rank(x) - 1};
  if (s.rank < 0) return kiln_set_error(KILN_ERR_INVALID, "model '%s': x needs a batch dim", m->name);
  memcpy(s.dims, kiln_tensor_dims(x) + 1, sizeof(int64_t) * (size_t)s.rank);
  return kiln_model_build(m, kiln_tensor_dtype(x), s);
}

static int64_t weight_count(const kiln_layer *l, bool *all_trainable, int64_t *trainable) {
  int64_t n = 0;
  for (size_t i = 0; i < l->nweights; i++) {
    int64_t k = kiln_tensor_numel(kiln_variable_value(l->weights[i]));
    n += k;
    if (kiln_variable_trainable(l->weights[i])) *trainable += k;
    else *all_trainable = false;
  }
  return n;
}

kiln_status kiln_model_summary(kiln_model *m, FILE *out) {
  if (!m || !out) return kiln_set_error(KILN_ERR_INVALID, "summary: NULL argument");
  if (!m->built) return kiln_set_error(KILN_ERR_INVALID, "summary: model '%s' is not built yet (call kiln_model_build or fit)", m->name);
  const char *rule = "_________________________________________________________________\n";
  fprintf(out, "Model: \"%s\"\n%s", m->name, rule);
  fprintf(out, "%-28s %-25s %s\n", " Layer (type)", "Output Shape", "Param #");
  fprintf(out, "=================================================================\n");
  int64_t total = 0, trainable = 0;
  for (size_t i = 0; i < m->nlayers; i++) {
    kiln_layer *l = m->layers[i];
    char col[96], shape[128] = "(None";
    size_t k = strlen(shape);
    for (int d = 1; d < l->out_shape.rank; d++) k += (size_t)snprintf(shape + k, sizeof shape - k, ", %lld", (long long)l->out_shape.dims[d]);
    snprintf(shape + k, sizeof shape - k, ")");
    snprintf(col, sizeof col, " %s (%s)", l->name, l->cls->type);
    bool all = true;
    int64_t n = weight_count(l, &all, &trainable);
    total += n;
    fprintf(out, "%-28s %-25s %lld\n", col, shape, (long long)n); /* long names push, never touch */
    fprintf(out, "%s", i + 1 < m->nlayers ? "\n" : "");
  }
  fprintf(out, "=================================================================\n");
  fprintf(out, "Total params: %lld\nTrainable params: %lld\nNon-trainable params: %lld\n%s", (long long)total,
          (long long)trainable, (long long)(total - trainable), rule);
  return KILN_OK;
}

kiln_status kiln_model_compile(kiln_model *m, const kiln_model_compile_options *o) {
  if (!m || !o) return kiln_set_error(KILN_ERR_INVALID, "compile: NULL argument");
  kiln_optimizer_config oc;
  if (o->optimizer_config) {
    oc = *o->optimizer_config;
  } else {
    kiln_optimizer_kind k;
    kiln_status st = kiln_optimizer_kind_from_name(o->optimizer ? o->optimizer : "rmsprop", &k);
    if (st != KILN_OK) return st;
    oc = kiln_optimizer_defaults(k);
  }
  loss_kind loss;
  kiln_status st = kiln_loss_from_name(o->loss, &loss);
  if (st != KILN_OK) return st;
  if (o->nmetrics > 8) return kiln_set_error(KILN_ERR_INVALID, "compile: at most 8 metrics");
  metric_kind mk[8];
  const char *names[8];
  for (size_t i = 0; i < o->nmetrics; i++)
    if ((st = kiln_metric_from_name(o->metrics[i], loss, &mk[i], &names[i])) != KILN_OK) return st;
  kiln_optimizer *opt;
  if ((st = kiln_optimizer_new(&oc, "optimizer", &opt)) != KILN_OK) return st;
  /* Recompiling keeps the weights and drops the compiled functions. */
  kiln_optimizer_free(m->opt);
  for (size_t i = 0; i < m->nmetrics; i++) free(m->metric_names[i]);
  kiln_function_free(m->train_fn);
  kiln_function_free(m->eval_fn);
  m->train_fn = m->eval_fn = NULL;
  m->opt = opt;
  m->loss = loss;
  m->from_logits = o->from_logits;
  m->nmetrics = o->nmetrics;
  for (size_t i = 0; i < o->nmetrics; i++) {
    m->metrics[i] = mk[i];
    m->metric_names[i] = strdup(names[i]);
    if (!m->metric_names[i]) return kiln_set_error(KILN_ERR_NOMEM, "compile: out of memory");
  }
  m->compiled = true;
  return KILN_OK;
}

/* ---- the compiled functions ---- */

static void metric_outputs(kiln_model *m, kiln_graph *g, kiln_value y, kiln_value pred) {
  for (size_t i = 0; i < m->nmetrics; i++) {
    char name[32];
    snprintf(name, sizeof name, "metric%zu", i);
    kiln_output(g, name, kiln_metric_sum(g, m->metrics[i], y, pred));
  }
}

/* in: x, y. Outputs: the batch's mean loss, then each metric's sum over the batch. */
static void trace_train(kiln_graph *g, const kiln_value *in, size_t nin, void *ud) {
  kiln_model *m = ud;
  kiln_value pred = kiln_model_call(m, g, in[0], true);
  kiln_value loss = kiln_reduce_mean(g, kiln_loss_per_example(g, m->loss, m->from_logits, in[1], pred), NULL, 0, false);
  size_t nv = kiln_variables_count(m->vars), n = 0;
  kiln_variable **vars = calloc(nv + 1, sizeof *vars);
  kiln_value *reads = calloc(nv + 1, sizeof *reads), *grads = calloc(nv + 1, sizeof *grads);
  if (!vars || !reads || !grads) {
    kiln_graph_fail(g, KILN_ERR_NOMEM, "train step: out of memory");
  } else {
    for (size_t l = 0; l < m->nlayers; l++)
      for (size_t w = 0; w < m->layers[l]->nweights; w++) {
        kiln_variable *v = m->layers[l]->weights[w];
        if (!kiln_variable_trainable(v)) continue;
        vars[n] = v;
        reads[n++] = kiln_variable_read(g, v);
      }
    if (n && kiln_gradients(g, loss, reads, n, grads) != KILN_OK) kiln_graph_fail(g, KILN_ERR_INVALID, "%s", kiln_errmsg());
    if (n && kiln_graph_status(g) == KILN_OK && kiln_optimizer_apply(m->opt, g, vars, grads, n) != KILN_OK)
      kiln_graph_fail(g, KILN_ERR_INVALID, "%s", kiln_errmsg());
  }
  free(vars);
  free(reads);
  free(grads);
  kiln_output(g, "loss", loss);
  metric_outputs(m, g, in[1], pred);
}

/* in: x, y. Outputs: the loss summed over the batch, then each metric's sum. */
static void trace_eval(kiln_graph *g, const kiln_value *in, size_t nin, void *ud) {
  kiln_model *m = ud;
  kiln_value pred = kiln_model_call(m, g, in[0], false);
  kiln_output(g, "loss", kiln_reduce_sum(g, kiln_loss_per_example(g, m->loss, m->from_logits, in[1], pred), NULL, 0, false));
  metric_outputs(m, g, in[1], pred);
}

static void trace_predict(kiln_graph *g, const kiln_value *in, size_t nin, void *ud) {
  kiln_output(g, "y", kiln_model_call(ud, g, in[0], false));
}

kiln_status kiln_model_ensure_functions(kiln_model *m) {
  kiln_function_options fo = {.dynamic_batch = true};
  if (!m->predict_fn && !(m->predict_fn = kiln_function_new(trace_predict, m, &fo))) return KILN_ERR_NOMEM;
  if (!m->compiled) return KILN_OK;
  if (!m->train_fn && !(m->train_fn = kiln_function_new(trace_train, m, &fo))) return KILN_ERR_NOMEM;
  if (!m->eval_fn && !(m->eval_fn = kiln_function_new(trace_eval, m, &fo))) return KILN_ERR_NOMEM;
  return KILN_OK;
}

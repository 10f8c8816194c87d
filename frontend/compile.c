/* compile: the optimizer, a loss per output ("head") and metrics, and the three
 * compiled functions fit / evaluate / predict run. The train and eval functions
 * take (inputs..., targets per head..., example weights [batch]) and return the
 * weighted loss summed over the batch, each head's loss sum (several heads), and
 * each metric's accumulator vector; the host sums those over batches. */
#include <string.h>
#include "frontend/model_impl.h"

static char *joined(const char *a, const char *sep, const char *b) {
  size_t n = strlen(a) + strlen(sep) + strlen(b) + 1;
  char *s = malloc(n);
  if (s) snprintf(s, n, "%s%s%s", a, sep, b);
  return s;
}

/* The spec naming output i, by name or by position. */
static const kiln_output_loss *spec_for(const kiln_model_compile_options *o, const char *const *names, size_t i) {
  for (size_t j = 0; j < o->noutputs; j++)
    if (o->outputs[j].output ? !strcmp(o->outputs[j].output, names[i]) : j == i) return &o->outputs[j];
  return NULL;
}

static kiln_status add_metric(kiln_model *m, const char *const *names, size_t head, const char *name, size_t *cap) {
  metric_kind k;
  int64_t topk;
  const char *display;
  kiln_status st = kiln_metric_from_name(name, m->heads[head].loss, &k, &topk, &display);
  if (st != KILN_OK) return st;
  if (m->nmetrics == *cap) {
    *cap = *cap ? *cap * 2 : 8;
    model_metric *mm = realloc(m->metrics, sizeof *mm * *cap);
    if (!mm) return kiln_set_error(KILN_ERR_NOMEM, "compile: out of memory");
    m->metrics = mm;
  }
  char *key = m->nheads > 1 ? joined(names[m->heads[head].output], "_", display) : strdup(display);
  if (!key) return kiln_set_error(KILN_ERR_NOMEM, "compile: out of memory");
  m->metrics[m->nmetrics++] = (model_metric){k, head, topk, key};
  return KILN_OK;
}

/* names: the model's output names (a Sequential model not built yet: its last layer's). */
static kiln_status compile_heads(kiln_model *m, const kiln_model_compile_options *o, const char *const *names, size_t nout) {
  for (size_t j = 0; j < o->noutputs; j++) {
    const char *out = o->outputs[j].output;
    bool known = out ? false : j < nout;
    for (size_t i = 0; out && i < nout; i++) known |= !strcmp(out, names[i]);
    if (!known)
      return kiln_set_error(KILN_ERR_INVALID, "compile: model '%s' has no output %s%s", m->name,
                            out ? "named " : "number ", out ? out : "(position too large)");
  }
  if (!(m->heads = calloc(nout + 1, sizeof *m->heads))) return kiln_set_error(KILN_ERR_NOMEM, "compile: out of memory");
  for (size_t i = 0; i < nout; i++) {
    const kiln_output_loss *sp = spec_for(o, names, i);
    kiln_loss_fn fn = sp && (sp->loss_fn.fn || sp->loss) ? sp->loss_fn : o->loss_fn;
    const char *loss = sp && (sp->loss_fn.fn || sp->loss) ? sp->loss : o->loss;
    if (!loss && !fn.fn) continue;
    model_head *h = &m->heads[m->nheads];
    h->custom = fn;
    h->loss = LOSS_MSE; /* what "accuracy" resolves against for a custom loss */
    kiln_status st = fn.fn ? KILN_OK : kiln_loss_from_name(loss, &h->loss);
    if (st != KILN_OK) return st;
    h->output = i;
    h->weight = sp && sp->weight != 0 ? sp->weight : 1;
    h->from_logits = sp ? sp->from_logits : o->from_logits;
    if (!(h->key = joined(names[i], "_", "loss"))) return kiln_set_error(KILN_ERR_NOMEM, "compile: out of memory");
    m->nheads++;
  }
  if (!m->nheads) return kiln_set_error(KILN_ERR_INVALID, "compile: no loss given for any output of model '%s'", m->name);
  size_t cap = 0;
  for (size_t h = 0; h < m->nheads; h++) {
    const kiln_output_loss *sp = spec_for(o, names, m->heads[h].output);
    for (size_t i = 0; i < o->nmetrics; i++) {
      kiln_status st = add_metric(m, names, h, o->metrics[i], &cap);
      if (st != KILN_OK) return st;
    }
    for (size_t i = 0; sp && i < sp->nmetrics; i++) {
      kiln_status st = add_metric(m, names, h, sp->metrics[i], &cap);
      if (st != KILN_OK) return st;
    }
  }
  size_t nres = 1 + (m->nheads > 1 ? m->nheads : 0) + m->nmetrics;
  if (!(m->result_names = calloc(nres, sizeof *m->result_names))) return kiln_set_error(KILN_ERR_NOMEM, "compile: out of memory");
  m->result_names[m->nresults++] = strdup("loss");
  for (size_t h = 0; m->nheads > 1 && h < m->nheads; h++) m->result_names[m->nresults++] = strdup(m->heads[h].key);
  for (size_t i = 0; i < m->nmetrics; i++) m->result_names[m->nresults++] = strdup(m->metrics[i].key);
  for (size_t i = 0; i < m->nresults; i++)
    if (!m->result_names[i]) return kiln_set_error(KILN_ERR_NOMEM, "compile: out of memory");
  return KILN_OK;
}

kiln_status kiln_model_compile(kiln_model *m, const kiln_model_compile_options *o) {
  if (!m || !o) return kiln_set_error(KILN_ERR_INVALID, "compile: NULL argument");
  if (m->error != KILN_OK) return kiln_set_error(m->error, "model '%s': %s", m->name, m->errmsg);
  if (o->noutputs && !o->outputs) return kiln_set_error(KILN_ERR_INVALID, "compile: outputs is NULL");
  if (o->nmetrics && !o->metrics) return kiln_set_error(KILN_ERR_INVALID, "compile: metrics is NULL");
  kiln_optimizer_config oc;
  if (o->optimizer_config) {
    oc = *o->optimizer_config;
  } else {
    kiln_optimizer_kind k;
    kiln_status st = kiln_optimizer_kind_from_name(o->optimizer ? o->optimizer : "rmsprop", &k);
    if (st != KILN_OK) return st;
    oc = kiln_optimizer_defaults(k);
  }
  kiln_optimizer *opt;
  kiln_status st = kiln_optimizer_new(&oc, "optimizer", &opt);
  if (st != KILN_OK) return st;
  /* Recompiling keeps the weights and drops the compiled functions. */
  kiln_model_drop_compiled(m);
  m->opt = opt;
  const char *names[64];
  size_t nout = m->sequential && !m->built ? (m->nlayers ? 1 : 0) : m->noutputs;
  if (nout > 64) st = kiln_set_error(KILN_ERR_INVALID, "compile: at most 64 outputs");
  for (size_t i = 0; st == KILN_OK && i < nout; i++)
    names[i] = m->sequential && !m->built ? m->layers[m->nlayers - 1]->name : m->outputs[i].name;
  if (st == KILN_OK && !nout) st = kiln_set_error(KILN_ERR_INVALID, "compile: model '%s' has no %s", m->name, m->sequential ? "layers" : "outputs");
  if (st == KILN_OK) st = compile_heads(m, o, names, nout);
  if (st != KILN_OK) kiln_model_drop_compiled(m);
  else m->compiled = true;
  return st;
}

/* ---- the compiled functions ---- */

/* Per-example losses of rank > 1 (sequence outputs) are averaged down to [batch]. */
static kiln_value per_example(kiln_graph *g, kiln_value l) {
  int r = kiln_value_shape(g, l).rank;
  if (r <= 1) return l;
  int64_t axes[KILN_MAX_RANK];
  for (int i = 1; i < r; i++) axes[i - 1] = i;
  return kiln_reduce_mean(g, l, axes, r - 1, false);
}

/* Folds one trace's verdict on values (ir/rows.c) into *v. */
static void note_rows(rows_verdict *v, kiln_graph *g, const uint32_t *values, size_t n) {
  if (kiln_graph_status(g) == KILN_OK && kiln_graph_rows_independent(g, values, n)) {
    if (*v == ROWS_UNKNOWN) *v = ROWS_APART;
  } else {
    *v = ROWS_MIXED;
  }
}

/* What one batch computes: the weighted mean loss (what training minimises), the
 * weighted loss sum, each head's sum and each metric's accumulator vector. */
typedef struct objective {
  kiln_value mean, sum, heads[64], metrics[256];
} objective;

/* in: inputs..., a target per head, example weights. */
static objective objectives(kiln_model *m, kiln_graph *g, const kiln_value *in, bool training) {
  objective o = {.mean = {KILN_NONE}, .sum = {KILN_NONE}};
  kiln_value pred[64];
  if (m->noutputs > 64 || m->nheads > 64 || m->nmetrics > 256) {
    kiln_graph_fail(g, KILN_ERR_INVALID, "model: at most 64 outputs and 256 metrics");
    return o;
  }
  if (kiln_model_call_multi(m, g, in, pred, training) != KILN_OK) return o;
  kiln_value w = in[m->ninputs + m->nheads];
  uint32_t rows[128];
  for (size_t h = 0; h < m->nheads; h++) {
    const model_head *hd = &m->heads[h];
    kiln_value p = pred[hd->output];
    kiln_dtype t = kiln_value_dtype(g, p);
    kiln_value yt = in[m->ninputs + h];
    kiln_value l = per_example(g, hd->custom.fn ? hd->custom.fn(g, yt, p, hd->custom.ud)
                                                : kiln_loss_per_example(g, hd->loss, hd->from_logits, yt, p));
    kiln_value wl = kiln_mul(g, l, kiln_cast(g, w, t)), c = kiln_scalar(g, t, hd->weight);
    rows[2 * h] = p.id, rows[2 * h + 1] = l.id;
    o.heads[h] = kiln_reduce_sum(g, wl, NULL, 0, false);
    kiln_value hs = kiln_mul(g, c, o.heads[h]), hm = kiln_mul(g, c, kiln_reduce_mean(g, wl, NULL, 0, false));
    o.sum = h ? kiln_add(g, o.sum, hs) : hs;
    o.mean = h ? kiln_add(g, o.mean, hm) : hm;
  }
  /* Metrics are built-in sums over rows of predictions and targets; the head's
   * prediction and per-example loss (a custom one too) decide. */
  note_rows(training ? &m->rows_train : &m->rows_eval, g, rows, 2 * m->nheads);
  for (size_t i = 0; i < m->nmetrics; i++) {
    const model_metric *mt = &m->metrics[i];
    o.metrics[i] = kiln_metric_accumulate(g, mt, in[m->ninputs + mt->head], pred[m->heads[mt->head].output], w);
  }
  return o;
}

/* The outputs described at the top: the loss sum, head sums (several heads), metrics. */
static void emit_results(kiln_model *m, kiln_graph *g, const objective *o) {
  if (kiln_graph_status(g) != KILN_OK) return;
  kiln_output(g, "loss", o->sum);
  for (size_t h = 0; m->nheads > 1 && h < m->nheads; h++) {
    char name[32];
    snprintf(name, sizeof name, "head%zu", h);
    kiln_output(g, name, o->heads[h]);
  }
  for (size_t i = 0; i < m->nmetrics; i++) {
    char name[32];
    snprintf(name, sizeof name, "metric%zu", i);
    kiln_output(g, name, o->metrics[i]);
  }
}

/* The weights training updates: trainable layer weights in layer order, or a loaded
 * model's trainable weights in store order. vars has room for every variable. */
static size_t trainable_weights(kiln_model *m, kiln_variable **vars) {
  size_t n = 0;
  for (size_t l = 0; l < m->nlayers; l++)
    for (size_t w = 0; w < m->layers[l]->nweights; w++)
      if (kiln_variable_trainable(m->layers[l]->weights[w])) vars[n++] = m->layers[l]->weights[w];
  for (size_t i = 0; m->loaded && i < kiln_variables_count(m->vars); i++) {
    kiln_variable *v = kiln_variables_at(m->vars, i);
    if (kiln_variable_trainable(v) && kiln_model_is_weight(v, NULL)) vars[n++] = v;
  }
  return n;
}

/* The gradient of loss for every trainable weight; then, when `apply`, the optimizer's
 * update of each, otherwise the gradients as outputs "grad<i>" (the distributed step). */
static void train_updates(kiln_model *m, kiln_graph *g, kiln_value loss, bool apply) {
  size_t nv = kiln_variables_count(m->vars), n = 0;
  kiln_variable **vars = calloc(nv + 1, sizeof *vars);
  kiln_value *reads = calloc(nv + 1, sizeof *reads), *grads = calloc(nv + 1, sizeof *grads);
  if (!vars || !reads || !grads) {
    kiln_graph_fail(g, KILN_ERR_NOMEM, "train step: out of memory");
  } else if (kiln_graph_status(g) == KILN_OK) {
    n = trainable_weights(m, vars);
    for (size_t i = 0; i < n; i++) reads[i] = kiln_variable_read(g, vars[i]);
    if (n && kiln_gradients(g, loss, reads, n, grads) != KILN_OK) kiln_graph_fail(g, KILN_ERR_INVALID, "%s", kiln_errmsg());
    if (apply && n && kiln_graph_status(g) == KILN_OK && kiln_optimizer_apply(m->opt, g, vars, grads, n) != KILN_OK)
      kiln_graph_fail(g, KILN_ERR_INVALID, "%s", kiln_errmsg());
    for (size_t i = 0; !apply && i < n && kiln_graph_status(g) == KILN_OK; i++) {
      char name[32];
      snprintf(name, sizeof name, "grad%zu", i);
      kiln_output(g, name, grads[i]);
    }
  }
  free(vars);
  free(reads);
  free(grads);
}

static void trace_train(kiln_graph *g, const kiln_value *in, size_t nin, void *ud) {
  objective o = objectives(ud, g, in, true);
  emit_results(ud, g, &o);
  train_updates(ud, g, o.mean, true);
}

/* Gradients first: the distributed step has them written into its allreduce buffer. */
static void trace_grads(kiln_graph *g, const kiln_value *in, size_t nin, void *ud) {
  objective o = objectives(ud, g, in, true);
  train_updates(ud, g, o.mean, false);
  emit_results(ud, g, &o);
}

/* in: one gradient per trainable weight, in trainable_weights' order. */
static void trace_apply(kiln_graph *g, const kiln_value *in, size_t nin, void *ud) {
  kiln_model *m = ud;
  kiln_variable **vars = calloc(kiln_variables_count(m->vars) + 1, sizeof *vars);
  size_t n = vars ? trainable_weights(m, vars) : 0;
  if (!vars) kiln_graph_fail(g, KILN_ERR_NOMEM, "apply step: out of memory");
  else if (n != nin) kiln_graph_fail(g, KILN_ERR_INVALID, "apply step: %zu gradients for %zu trainable weights", nin, n);
  else if (n && kiln_optimizer_apply(m->opt, g, vars, in, n) != KILN_OK) kiln_graph_fail(g, KILN_ERR_INVALID, "%s", kiln_errmsg());
  else kiln_output(g, "iterations", kiln_variable_read(g, kiln_optimizer_iterations(m->opt)));
  free(vars);
}

size_t kiln_model_trainable_weights(kiln_model *m, kiln_variable **vars) { return trainable_weights(m, vars); }

static void trace_eval(kiln_graph *g, const kiln_value *in, size_t nin, void *ud) {
  objective o = objectives(ud, g, in, false);
  emit_results(ud, g, &o);
}

kiln_graph *kiln_model_train_graph(kiln_model *m) {
  if (!m->compiled) {
    kiln_set_error(KILN_ERR_INVALID, "model '%s' is not compiled: its optimizer and loss make the train step", m->name);
    return NULL;
  }
  kiln_value in[130];
  if (m->ninputs + m->nheads + 1 > 130) {
    kiln_set_error(KILN_ERR_INVALID, "model '%s': at most 64 inputs and outputs", m->name);
    return NULL;
  }
  kiln_graph *g = kiln_graph_new();
  if (!g) return NULL;
  for (size_t i = 0; i < m->ninputs; i++)
    in[i] = kiln_placeholder(g, m->inputs[i].name, m->kts[m->inputs[i].kt].dtype, m->kts[m->inputs[i].kt].shape);
  for (size_t h = 0; h < m->nheads; h++) {
    const model_port *p = &m->outputs[m->heads[h].output];
    kiln_shape s = m->kts[p->kt].shape;
    kiln_dtype t = m->kts[p->kt].dtype;
    if (m->heads[h].loss == LOSS_SCCE && !m->heads[h].custom.fn) s.rank--, t = KILN_I32; /* class ids */
    char name[300];
    snprintf(name, sizeof name, "%s:target", p->name);
    in[m->ninputs + h] = kiln_placeholder(g, name, t, s);
  }
  in[m->ninputs + m->nheads] = kiln_fill(g, KILN_F32, KILN_SHAPE(KILN_DYN), 1.0);
  kiln_value loss = objectives(m, g, in, true).mean;
  kiln_output(g, "loss", loss);
  if (kiln_graph_status(g) == KILN_OK) train_updates(m, g, loss, true);
  if (kiln_graph_status(g) != KILN_OK) {
    kiln_set_error(kiln_graph_status(g), "model '%s': %s", m->name, kiln_graph_errmsg(g));
    kiln_graph_free(g);
    return NULL;
  }
  return g;
}

static void trace_predict(kiln_graph *g, const kiln_value *in, size_t nin, void *ud) {
  kiln_model *m = ud;
  kiln_value y[64];
  if (m->noutputs > 64) {
    kiln_graph_fail(g, KILN_ERR_INVALID, "model: at most 64 outputs");
    return;
  }
  if (kiln_model_call_multi(m, g, in, y, false) != KILN_OK) return;
  uint32_t rows[64];
  for (size_t i = 0; i < m->noutputs; i++) rows[i] = y[i].id;
  note_rows(&m->rows_predict, g, rows, m->noutputs);
  for (size_t i = 0; i < m->noutputs; i++) {
    char name[32];
    snprintf(name, sizeof name, "out%zu", i);
    kiln_output(g, name, y[i]);
  }
}

kiln_status kiln_model_ensure_functions(kiln_model *m) {
  kiln_function_options fo = {.dynamic_batch = true};
  if (!m->predict_fn && !(m->predict_fn = kiln_function_new(trace_predict, m, &fo))) return KILN_ERR_NOMEM;
  if (!m->compiled) return KILN_OK;
  if (!m->train_fn && !(m->train_fn = kiln_function_new(trace_train, m, &fo))) return KILN_ERR_NOMEM;
  if (!m->eval_fn && !(m->eval_fn = kiln_function_new(trace_eval, m, &fo))) return KILN_ERR_NOMEM;
  return KILN_OK;
}

kiln_status kiln_model_ensure_split_step(kiln_model *m) {
  kiln_function_options batched = {.dynamic_batch = true}, fixed = {0};
  if (!m->grads_fn && !(m->grads_fn = kiln_function_new(trace_grads, m, &batched))) return KILN_ERR_NOMEM;
  if (!m->apply_fn && !(m->apply_fn = kiln_function_new(trace_apply, m, &fixed))) return KILN_ERR_NOMEM;
  return KILN_OK;
}

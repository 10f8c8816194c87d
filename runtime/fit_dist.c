/* fit's data-parallel train step (Horovod's design): every rank runs the gradients
 * half of the train step on its shard of the global batch, the gradients (each
 * scaled by shard / global batch, so their sum is the global batch's mean gradient
 * whatever the rank count) and the forward pass's assigned state go through one
 * fused allreduce, and every rank runs the same compiled optimizer update. */
#include <string.h>
#include "runtime/dist_impl.h"
#include "runtime/fit_impl.h"
#include "runtime/tensor_impl.h"

void kiln_fit_dist_shard(const dist_fit *df, int64_t n, int64_t *lo, int64_t *hi) {
  *lo = n * df->rank / df->size;
  *hi = n * (df->rank + 1) / df->size;
}

kiln_status kiln_fit_dist_begin(dist_fit *df, kiln_model *m, kiln_dist *d, const int64_t *facts, const char *const *names,
                                size_t nfacts, bool has_callbacks) {
  memset(df, 0, sizeof *df);
  df->d = d;
  df->rank = kiln_dist_rank(d);
  df->size = kiln_dist_size(d);
  kiln_status st = kiln_model_ensure_split_step(m);
  if (st != KILN_OK) return kiln_set_error(st, "fit: out of memory");
  size_t nv = kiln_variables_count(m->vars);
  df->weights = calloc(nv + 1, sizeof *df->weights);
  df->state = calloc(nv + 1, sizeof *df->state);
  df->grads = calloc(nv + 1, sizeof *df->grads);
  if (!df->weights || !df->state || !df->grads) return kiln_set_error(KILN_ERR_NOMEM, "fit: out of memory");
  df->nweights = kiln_model_trainable_weights(m, df->weights);
  for (size_t i = 0; i < df->nweights; i++) {
    const kiln_tensor *v = kiln_variable_value(df->weights[i]);
    if (v->dtype != KILN_F32 && v->dtype != KILN_F64)
      return kiln_set_error(KILN_ERR_UNSUPPORTED, "fit: distributed training reduces f32 and f64 gradients; '%s' is %s",
                            kiln_variable_name(df->weights[i]), kiln_dtype_name(v->dtype));
  }
  int64_t all[16];
  if (nfacts + 2 > 16) return kiln_set_error(KILN_ERR_INVALID, "fit: too many facts to agree on");
  const char *allnames[16];
  memcpy(all, facts, sizeof *facts * nfacts);
  memcpy(allnames, names, sizeof *names * nfacts);
  all[nfacts] = (int64_t)nv, allnames[nfacts] = "variable count";
  all[nfacts + 1] = (int64_t)kiln_variables_signature(m->vars), allnames[nfacts + 1] = "model (its variables' names, dtypes or shapes)";
  if ((st = kiln_dist_check_same(d, all, allnames, nfacts + 2, 1, "distributed")) != KILN_OK) return st;
  if ((st = kiln_dist_broadcast_variables(d, m->vars, 0)) != KILN_OK) return st;
  bool stop_each = has_callbacks;
  if ((st = kiln_dist_bcast(d, &stop_each, sizeof stop_each, 0)) != KILN_OK) return st;
  df->stop_each_step = stop_each;
  return KILN_OK;
}

void kiln_fit_dist_end(dist_fit *df) {
  for (size_t i = 0; df->grads && i < df->nweights; i++) kiln_tensor_free(df->grads[i]);
  free(df->grads);
  free(df->weights);
  free(df->state);
  free(df->b32);
  free(df->b64);
  memset(df, 0, sizeof *df);
}

/* Once grads_fn is traced: the float variables its run assigns, and the buffers. */
static kiln_status plan_buffers(dist_fit *df, kiln_model *m) {
  const kiln_graph *g = kiln_function_graph(m->grads_fn);
  if (!g) return kiln_set_error(KILN_ERR_INVALID, "fit: the gradients step was not traced");
  for (uint32_t i = 0; i < g->nassigns; i++) {
    kiln_variable *v = kiln_variables_find(m->vars, g->assigns[i].name);
    const kiln_tensor *t = v ? kiln_variable_value(v) : NULL;
    if (t && (t->dtype == KILN_F32 || t->dtype == KILN_F64)) df->state[df->nstate++] = v;
  }
  for (size_t i = 0; i < df->nweights + df->nstate; i++) {
    const kiln_tensor *t = kiln_variable_value(i < df->nweights ? df->weights[i] : df->state[i - df->nweights]);
    *(t->dtype == KILN_F32 ? &df->n32 : &df->n64) += (size_t)t->numel;
  }
  df->b32 = malloc(sizeof *df->b32 * (df->n32 + 1));
  df->b64 = malloc(sizeof *df->b64 * (df->n64 + 1));
  if (!df->b32 || !df->b64) return kiln_set_error(KILN_ERR_NOMEM, "fit: out of memory");
  return KILN_OK;
}

/* Gradients then state into the buffers, times scale; a rank with no rows adds zeros. */
static void pack(dist_fit *df, double scale, bool have) {
  size_t k32 = 0, k64 = 0;
  for (size_t i = 0; i < df->nweights + df->nstate; i++) {
    const kiln_tensor *t = i < df->nweights ? df->grads[i] : kiln_variable_value(df->state[i - df->nweights]);
    for (int64_t j = 0; j < t->numel; j++)
      if (t->dtype == KILN_F32) df->b32[k32++] = have ? (float)(((const float *)t->data)[j] * scale) : 0.0f;
      else df->b64[k64++] = have ? ((const double *)t->data)[j] * scale : 0.0;
  }
}

static void unpack(dist_fit *df) {
  size_t k32 = 0, k64 = 0;
  for (size_t i = 0; i < df->nweights + df->nstate; i++) {
    kiln_tensor *t = i < df->nweights ? df->grads[i] : kiln_variable_value(df->state[i - df->nweights]);
    if (t->dtype == KILN_F32) memcpy(t->data, df->b32 + k32, t->nbytes), k32 += (size_t)t->numel;
    else memcpy(t->data, df->b64 + k64, t->nbytes), k64 += (size_t)t->numel;
  }
}

kiln_status kiln_fit_dist_step(dist_fit *df, kiln_model *m, const feed *f, const int64_t *idx, int64_t n, double *acc) {
  int64_t lo, hi;
  kiln_fit_dist_shard(df, n, &lo, &hi);
  kiln_status st = KILN_OK;
  for (size_t i = 0; i < df->nweights; i++) kiln_tensor_free(df->grads[i]), df->grads[i] = NULL;
  if (hi > lo) st = kiln_fit_run_batch(m, m->grads_fn, f, idx + lo, hi - lo, acc, df->grads, df->nweights);
  if (st == KILN_OK && !df->b32) {
    if (hi == lo) /* the first step gives every rank a row, so it traces grads_fn everywhere */
      return kiln_set_error(KILN_ERR_INVALID, "fit: distributed: a batch of %lld rows for %d ranks", (long long)n, df->size);
    st = plan_buffers(df, m);
  }
  if (st != KILN_OK) return st;
  pack(df, (double)(hi - lo) / (double)n, hi > lo);
  if ((st = kiln_dist_sum(df->d, df->b32, df->n32, df->b64, df->n64, true)) != KILN_OK) return st;
  for (size_t i = 0; i < df->nweights; i++) {
    if (df->grads[i]) continue;
    const kiln_tensor *v = kiln_variable_value(df->weights[i]);
    if (!(df->grads[i] = kiln_tensor_new(v->dtype, v->rank, v->dims))) return kiln_set_error(KILN_ERR_NOMEM, "fit: out of memory");
  }
  unpack(df);
  kiln_tensor *iterations = NULL;
  st = kiln_function_call(m->apply_fn, (const kiln_tensor *const *)df->grads, df->nweights, &iterations, 1);
  kiln_tensor_free(iterations);
  return st;
}

kiln_status kiln_fit_dist_sum_acc(dist_fit *df, double *acc, size_t n) { return kiln_dist_sum(df->d, NULL, 0, acc, n, false); }

kiln_status kiln_fit_dist_agree_stop(dist_fit *df, kiln_model *m) {
  bool stop = m->stop_training;
  kiln_status st = kiln_dist_bcast(df->d, &stop, sizeof stop, 0);
  m->stop_training = stop;
  return st;
}

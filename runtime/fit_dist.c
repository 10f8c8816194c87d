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

/* The gradients' views into the buffers, sized for gradients then state. */
static kiln_status layout(dist_fit *df) {
  size_t n32 = 0, n64 = 0;
  for (size_t i = 0; i < df->nweights + df->nstate; i++) {
    const kiln_tensor *t = kiln_variable_value(i < df->nweights ? df->weights[i] : df->state[i - df->nweights]);
    *(t->dtype == KILN_F32 ? &n32 : &n64) += (size_t)t->numel;
  }
  float *b32 = realloc(df->b32, sizeof *b32 * (n32 + 1));
  if (b32) df->b32 = b32;
  double *b64 = b32 ? realloc(df->b64, sizeof *b64 * (n64 + 1)) : NULL;
  if (b64) df->b64 = b64;
  if (!b32 || !b64) return kiln_set_error(KILN_ERR_NOMEM, "fit: out of memory");
  df->n32 = n32, df->n64 = n64;
  size_t k32 = 0, k64 = 0;
  for (size_t i = 0; i < df->nweights; i++) {
    kiln_tensor *v = &df->views[i];
    *v = *kiln_variable_value(df->weights[i]);
    v->data = v->dtype == KILN_F32 ? (void *)(df->b32 + k32) : (void *)(df->b64 + k64);
    *(v->dtype == KILN_F32 ? &k32 : &k64) += (size_t)v->numel;
    df->view_ptrs[i] = v;
  }
  df->g32 = k32, df->g64 = k64;
  return KILN_OK;
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
  df->views = calloc(nv + 1, sizeof *df->views);
  df->view_ptrs = calloc(nv + 1, sizeof *df->view_ptrs);
  if (!df->weights || !df->state || !df->views || !df->view_ptrs) return kiln_set_error(KILN_ERR_NOMEM, "fit: out of memory");
  df->nweights = kiln_model_trainable_weights(m, df->weights);
  for (size_t i = 0; i < df->nweights; i++) {
    const kiln_tensor *v = kiln_variable_value(df->weights[i]);
    if (v->dtype != KILN_F32 && v->dtype != KILN_F64)
      return kiln_set_error(KILN_ERR_UNSUPPORTED, "fit: distributed training reduces f32 and f64 gradients; '%s' is %s",
                            kiln_variable_name(df->weights[i]), kiln_dtype_name(v->dtype));
  }
  if ((st = layout(df)) != KILN_OK) return st;
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
  free(df->views);
  free(df->view_ptrs);
  free(df->weights);
  free(df->state);
  free(df->b32);
  free(df->b64);
  memset(df, 0, sizeof *df);
}

/* Once grads_fn is traced: the float variables its run assigns get room after the gradients. */
static kiln_status add_state(dist_fit *df, kiln_model *m) {
  const kiln_graph *g = kiln_function_graph(m->grads_fn);
  for (uint32_t i = 0; g && i < g->nassigns; i++) {
    kiln_variable *v = kiln_variables_find(m->vars, g->assigns[i].name);
    const kiln_tensor *t = v ? kiln_variable_value(v) : NULL;
    if (t && (t->dtype == KILN_F32 || t->dtype == KILN_F64)) df->state[df->nstate++] = v;
  }
  df->state_known = true;
  return df->nstate ? layout(df) : KILN_OK;
}

static void scale_in_place(void *buf, size_t n, bool f32, double scale) {
  if (scale == 1) return;
  if (scale == 0) {
    memset(buf, 0, n * (f32 ? sizeof(float) : sizeof(double)));
  } else if (f32) {
    float *restrict b = buf, s = (float)scale;
    for (size_t j = 0; j < n; j++) b[j] *= s;
  } else {
    double *restrict b = buf;
    for (size_t j = 0; j < n; j++) b[j] *= scale;
  }
}

/* Gradients (in place) and state, times scale; a rank with no rows adds zeros. */
static void scale_and_pack(dist_fit *df, double scale) {
  size_t g32 = df->g32, g64 = df->g64;
  scale_in_place(df->b32, g32, true, scale);
  scale_in_place(df->b64, g64, false, scale);
  for (size_t i = 0; i < df->nstate; i++) {
    const kiln_tensor *t = kiln_variable_value(df->state[i]);
    bool f32 = t->dtype == KILN_F32;
    void *dst = f32 ? (void *)(df->b32 + g32) : (void *)(df->b64 + g64);
    memcpy(dst, t->data, t->nbytes);
    scale_in_place(dst, (size_t)t->numel, f32, scale);
    *(f32 ? &g32 : &g64) += (size_t)t->numel;
  }
}

static void unpack_state(dist_fit *df) {
  size_t k32 = df->g32, k64 = df->g64;
  for (size_t i = 0; i < df->nstate; i++) {
    kiln_tensor *t = kiln_variable_value(df->state[i]);
    if (t->dtype == KILN_F32) memcpy(t->data, df->b32 + k32, t->nbytes), k32 += (size_t)t->numel;
    else memcpy(t->data, df->b64 + k64, t->nbytes), k64 += (size_t)t->numel;
  }
}

kiln_status kiln_fit_dist_step(dist_fit *df, kiln_model *m, const feed *f, const int64_t *idx, int64_t n, double *acc) {
  int64_t lo, hi;
  kiln_fit_dist_shard(df, n, &lo, &hi);
  kiln_status st = KILN_OK;
  kiln_tensor **views = df->view_ptrs;
  if (hi > lo) st = kiln_fit_run_batch(m, m->grads_fn, f, idx + lo, hi - lo, hi - lo, false, acc, views, df->nweights);
  if (st == KILN_OK && !df->state_known) {
    if (hi == lo) /* the first step gives every rank a row, so it traces grads_fn everywhere */
      st = kiln_set_error(KILN_ERR_INVALID, "fit: distributed: a batch of %lld rows for %d ranks", (long long)n, df->size);
    else
      st = add_state(df, m);
  }
  if (st == KILN_OK) {
    scale_and_pack(df, (double)(hi - lo) / (double)n);
    st = kiln_dist_sum(df->d, df->b32, df->n32, df->b64, df->n64, true);
  }
  if (st == KILN_OK) {
    unpack_state(df);
    kiln_tensor *iterations = NULL;
    st = kiln_function_call(m->apply_fn, (const kiln_tensor *const *)views, df->nweights, &iterations, 1);
    kiln_tensor_free(iterations);
  }
  return st;
}

kiln_status kiln_fit_dist_sum_acc(dist_fit *df, double *acc, size_t n) { return kiln_dist_sum(df->d, NULL, 0, acc, n, false); }

kiln_status kiln_fit_dist_agree_stop(dist_fit *df, kiln_model *m) {
  bool stop = m->stop_training;
  kiln_status st = kiln_dist_bcast(df->d, &stop, sizeof stop, 0);
  m->stop_training = stop;
  return st;
}

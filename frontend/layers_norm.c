/* Layers whose training behaviour differs from inference: Dropout and
 * BatchNormalization; and LayerNormalization, which normalises the same way in both.
 * Their state updates (dropout's step counter, batch norm's moving statistics) are
 * variable assignments in the train step, so they are checkpointed like weights. */
#include <string.h>
#include "frontend/model_impl.h"

/* ---- Dropout ---- */

typedef struct dropout {
  double rate;
  kiln_variable *step;
} dropout;

static kiln_status dropout_build(kiln_layer *l, const kiln_shape *in, size_t n) {
  dropout *d = l->state;
  return kiln_layer_add_weight(l, "rng_step", KILN_I64, KILN_SCALAR, KILN_ZEROS, false, &d->step);
}

static kiln_value dropout_call(kiln_layer *l, kiln_graph *g, const kiln_value *in, size_t n, bool training) {
  dropout *d = l->state;
  kiln_value x = in[0];
  if (!training || d->rate == 0) return x;
  kiln_dtype t = kiln_value_dtype(g, x);
  kiln_value step = kiln_variable_read(g, d->step);
  kiln_variable_assign(g, d->step, kiln_add(g, step, kiln_scalar(g, KILN_I64, 1)));
  kiln_value u = kiln_random_uniform_stream(g, t, kiln_value_shape(g, x), l->seed, step, 0, 1);
  kiln_value kept = kiln_mul(g, x, kiln_scalar(g, t, 1 / (1 - d->rate)));
  return kiln_select(g, kiln_less(g, u, kiln_scalar(g, t, d->rate)), kiln_fill(g, t, KILN_SCALAR, 0), kept);
}

static const kiln_layer_class DROPOUT = {"Dropout", 0, dropout_build, dropout_call, free};

kiln_layer *kiln_layer_dropout(double rate) {
  if (!(rate >= 0 && rate < 1)) {
    kiln_set_error(KILN_ERR_INVALID, "Dropout: rate must be in [0, 1), got %g", rate);
    return NULL;
  }
  dropout d = {rate, NULL};
  return kiln_layer_with_state(&DROPOUT, &d, sizeof d, "Dropout");
}

/* ---- normalisation ---- */

#define NORM_EPS 1e-3
#define BN_MOMENTUM 0.99

typedef struct norm {
  bool batch; /* BatchNormalization; else LayerNormalization */
  kiln_variable *gamma, *beta, *moving_mean, *moving_var;
} norm;

static kiln_status norm_build(kiln_layer *l, const kiln_shape *in, size_t n) {
  norm *p = l->state;
  int64_t ch = in[0].rank ? in[0].dims[in[0].rank - 1] : -1;
  if (in[0].rank < 2 || ch < 0)
    return kiln_set_error(KILN_ERR_INVALID, "%s '%s': needs inputs [batch, ..., features]", l->cls->type, l->name);
  kiln_status st = kiln_layer_add_weight(l, "gamma", KILN_F32, KILN_SHAPE(ch), KILN_ONES, true, &p->gamma);
  if (st == KILN_OK) st = kiln_layer_add_weight(l, "beta", KILN_F32, KILN_SHAPE(ch), KILN_ZEROS, true, &p->beta);
  if (st == KILN_OK && p->batch)
    st = kiln_layer_add_weight(l, "moving_mean", KILN_F32, KILN_SHAPE(ch), KILN_ZEROS, false, &p->moving_mean);
  if (st == KILN_OK && p->batch)
    st = kiln_layer_add_weight(l, "moving_variance", KILN_F32, KILN_SHAPE(ch), KILN_ONES, false, &p->moving_var);
  return st;
}

/* gamma * (x - mean) / sqrt(var + eps) + beta */
static kiln_value normalize(kiln_graph *g, const norm *p, kiln_value x, kiln_value mean, kiln_value var) {
  kiln_dtype t = kiln_value_dtype(g, x);
  kiln_value inv = kiln_rsqrt(g, kiln_add(g, var, kiln_scalar(g, t, NORM_EPS)));
  kiln_value scale = kiln_mul(g, inv, kiln_cast(g, kiln_variable_read(g, p->gamma), t));
  return kiln_add(g, kiln_mul(g, kiln_sub(g, x, mean), scale), kiln_cast(g, kiln_variable_read(g, p->beta), t));
}

/* moving = moving * momentum + batch * (1 - momentum) */
static void update_moving(kiln_graph *g, kiln_variable *v, kiln_value batch) {
  kiln_value old = kiln_variable_read(g, v);
  kiln_dtype t = kiln_value_dtype(g, old);
  kiln_value b = kiln_cast(g, kiln_reshape(g, batch, kiln_value_shape(g, old)), t);
  kiln_variable_assign(g, v, kiln_add(g, kiln_mul(g, old, kiln_scalar(g, t, BN_MOMENTUM)),
                                      kiln_mul(g, b, kiln_scalar(g, t, 1 - BN_MOMENTUM))));
}

static kiln_value norm_call(kiln_layer *l, kiln_graph *g, const kiln_value *in, size_t n, bool training) {
  const norm *p = l->state;
  kiln_value x = in[0];
  int r = kiln_value_shape(g, x).rank;
  if (!p->batch) {
    kiln_value mean = kiln_reduce_mean(g, x, (int64_t[]){-1}, 1, true);
    kiln_value var = kiln_reduce_mean(g, kiln_square(g, kiln_sub(g, x, mean)), (int64_t[]){-1}, 1, true);
    return normalize(g, p, x, mean, var);
  }
  if (!training || l->frozen) { /* Keras: a frozen BatchNormalization runs in inference mode */
    kiln_dtype t = kiln_value_dtype(g, x);
    return normalize(g, p, x, kiln_cast(g, kiln_variable_read(g, p->moving_mean), t),
                     kiln_cast(g, kiln_variable_read(g, p->moving_var), t));
  }
  int64_t axes[KILN_MAX_RANK];
  for (int i = 0; i < r - 1; i++) axes[i] = i;
  kiln_value mean = kiln_reduce_mean(g, x, axes, r - 1, true);
  kiln_value var = kiln_reduce_mean(g, kiln_square(g, kiln_sub(g, x, mean)), axes, r - 1, true);
  update_moving(g, p->moving_mean, mean);
  update_moving(g, p->moving_var, var);
  return normalize(g, p, x, mean, var);
}

static const kiln_layer_class BATCHNORM = {"BatchNormalization", 0, norm_build, norm_call, free};
static const kiln_layer_class LAYERNORM = {"LayerNormalization", 0, norm_build, norm_call, free};

kiln_layer *kiln_layer_batch_normalization(void) {
  norm p = {.batch = true};
  return kiln_layer_with_state(&BATCHNORM, &p, sizeof p, "BatchNormalization");
}
kiln_layer *kiln_layer_layer_normalization(void) {
  norm p = {.batch = false};
  return kiln_layer_with_state(&LAYERNORM, &p, sizeof p, "LayerNormalization");
}

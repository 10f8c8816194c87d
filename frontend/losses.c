/* Losses and metrics as graph builders, with Keras' formulas: probabilities are
 * clipped to [1e-7, 1 - 1e-7] before the log, logits go through log_softmax /
 * a stable sigmoid cross-entropy. Losses are per example (mean over the last axis
 * for regression); metrics return their sum over the batch, so the loop can form
 * exact epoch means. */
#include <string.h>
#include "frontend/model_impl.h"

#define EPS 1e-7

static const struct {
  const char *name;
  loss_kind kind;
} LOSSES[] = {
    {"sparse_categorical_crossentropy", LOSS_SCCE}, {"categorical_crossentropy", LOSS_CCE},
    {"binary_crossentropy", LOSS_BCE},              {"mean_squared_error", LOSS_MSE},
    {"mse", LOSS_MSE},                              {"mean_absolute_error", LOSS_MAE},
    {"mae", LOSS_MAE},
};

kiln_status kiln_loss_from_name(const char *name, loss_kind *out) {
  for (size_t i = 0; name && i < sizeof LOSSES / sizeof LOSSES[0]; i++)
    if (!strcmp(name, LOSSES[i].name)) {
      *out = LOSSES[i].kind;
      return KILN_OK;
    }
  return kiln_set_error(KILN_ERR_INVALID, "unknown loss '%s'", name ? name : "(null)");
}

/* "accuracy" means what Keras makes of it for the compiled loss. */
kiln_status kiln_metric_from_name(const char *name, loss_kind loss, metric_kind *k, const char **display) {
  if (!name) return kiln_set_error(KILN_ERR_INVALID, "metric name is NULL");
  *display = name;
  if (!strcmp(name, "accuracy") || !strcmp(name, "acc")) {
    *display = "accuracy";
    *k = loss == LOSS_SCCE ? MET_SPARSE_ACC : loss == LOSS_CCE ? MET_CAT_ACC : MET_BIN_ACC;
  } else if (!strcmp(name, "sparse_categorical_accuracy")) *k = MET_SPARSE_ACC;
  else if (!strcmp(name, "categorical_accuracy")) *k = MET_CAT_ACC;
  else if (!strcmp(name, "binary_accuracy")) *k = MET_BIN_ACC;
  else if (!strcmp(name, "mse") || !strcmp(name, "mean_squared_error")) *k = MET_MSE;
  else if (!strcmp(name, "mae") || !strcmp(name, "mean_absolute_error")) *k = MET_MAE;
  else return kiln_set_error(KILN_ERR_INVALID, "unknown metric '%s'", name);
  return KILN_OK;
}

static int64_t last_dim(kiln_graph *g, kiln_value v) {
  kiln_shape s = kiln_value_shape(g, v);
  return s.rank ? s.dims[s.rank - 1] : 1;
}

static kiln_value mean_last(kiln_graph *g, kiln_value v) { return kiln_reduce_mean(g, v, (int64_t[]){-1}, 1, false); }

kiln_value kiln_loss_per_example(kiln_graph *g, loss_kind k, bool from_logits, kiln_value y_true, kiln_value y_pred) {
  kiln_dtype t = kiln_value_dtype(g, y_pred);
  kiln_value yt = y_true;
  if (k == LOSS_SCCE) yt = kiln_one_hot(g, kiln_cast(g, y_true, KILN_I64), last_dim(g, y_pred), t);
  else yt = kiln_cast(g, y_true, t);
  switch (k) {
  case LOSS_SCCE:
  case LOSS_CCE: {
    kiln_value logp;
    if (from_logits) {
      logp = kiln_log_softmax(g, y_pred, -1);
    } else {
      kiln_value p = kiln_div(g, y_pred, kiln_reduce_sum(g, y_pred, (int64_t[]){-1}, 1, true));
      p = kiln_minimum(g, kiln_maximum(g, p, kiln_scalar(g, t, EPS)), kiln_scalar(g, t, 1 - EPS));
      logp = kiln_log(g, p);
    }
    return kiln_neg(g, kiln_reduce_sum(g, kiln_mul(g, yt, logp), (int64_t[]){-1}, 1, false));
  }
  case LOSS_BCE: {
    kiln_value per;
    if (from_logits) { /* max(x, 0) - x*y + log(1 + exp(-|x|)) */
      kiln_value x = y_pred;
      per = kiln_add(g, kiln_sub(g, kiln_relu(g, x), kiln_mul(g, x, yt)),
                     kiln_log(g, kiln_add(g, kiln_scalar(g, t, 1), kiln_exp(g, kiln_neg(g, kiln_abs(g, x))))));
    } else {
      kiln_value p = kiln_minimum(g, kiln_maximum(g, y_pred, kiln_scalar(g, t, EPS)), kiln_scalar(g, t, 1 - EPS));
      kiln_value one = kiln_scalar(g, t, 1);
      per = kiln_neg(g, kiln_add(g, kiln_mul(g, yt, kiln_log(g, p)),
                                 kiln_mul(g, kiln_sub(g, one, yt), kiln_log(g, kiln_sub(g, one, p)))));
    }
    return mean_last(g, per);
  }
  case LOSS_MSE: return mean_last(g, kiln_square(g, kiln_sub(g, y_pred, yt)));
  default: return mean_last(g, kiln_abs(g, kiln_sub(g, y_pred, yt)));
  }
}

kiln_value kiln_metric_sum(kiln_graph *g, metric_kind k, kiln_value y_true, kiln_value y_pred) {
  kiln_dtype t = kiln_value_dtype(g, y_pred);
  kiln_value hit;
  switch (k) {
  case MET_SPARSE_ACC:
    hit = kiln_equal(g, kiln_argmax(g, y_pred, -1, false), kiln_cast(g, y_true, KILN_I64));
    break;
  case MET_CAT_ACC:
    hit = kiln_equal(g, kiln_argmax(g, y_pred, -1, false), kiln_argmax(g, y_true, -1, false));
    break;
  case MET_BIN_ACC: {
    kiln_value pred = kiln_greater(g, y_pred, kiln_scalar(g, t, 0.5));
    hit = kiln_equal(g, pred, kiln_greater(g, kiln_cast(g, y_true, t), kiln_scalar(g, t, 0.5)));
    return kiln_reduce_sum(g, mean_last(g, kiln_cast(g, hit, t)), NULL, 0, false);
  }
  case MET_MSE:
    return kiln_reduce_sum(g, kiln_loss_per_example(g, LOSS_MSE, false, y_true, y_pred), NULL, 0, false);
  default:
    return kiln_reduce_sum(g, kiln_loss_per_example(g, LOSS_MAE, false, y_true, y_pred), NULL, 0, false);
  }
  return kiln_reduce_sum(g, kiln_cast(g, hit, t), NULL, 0, false);
}

/* Losses and metrics as graph builders, with Keras' formulas: probabilities are
 * clipped to [1e-7, 1 - 1e-7] before the log, logits go through log_softmax /
 * a stable sigmoid cross-entropy. Losses are per example (mean over the last axis
 * for regression). Metrics are streaming like Keras': each emits an accumulator
 * vector (weighted sums, or confusion counts) that the loop sums over batches, and
 * the value comes from the totals, so epoch figures are exact. */
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
    {"mae", LOSS_MAE},                              {"huber", LOSS_HUBER},
    {"kl_divergence", LOSS_KLD},                    {"kld", LOSS_KLD},
    {"cosine_similarity", LOSS_COSINE},
};

kiln_status kiln_loss_from_name(const char *name, loss_kind *out) {
  for (size_t i = 0; name && i < sizeof LOSSES / sizeof LOSSES[0]; i++)
    if (!strcmp(name, LOSSES[i].name)) {
      *out = LOSSES[i].kind;
      return KILN_OK;
    }
  return kiln_set_error(KILN_ERR_INVALID, "unknown loss '%s'", name ? name : "(null)");
}

static const struct {
  const char *name;
  metric_kind kind;
} METRICS[] = {
    {"sparse_categorical_accuracy", MET_SPARSE_ACC},
    {"categorical_accuracy", MET_CAT_ACC},
    {"binary_accuracy", MET_BIN_ACC},
    {"top_k_categorical_accuracy", MET_TOP_K},
    {"sparse_top_k_categorical_accuracy", MET_SPARSE_TOP_K},
    {"auc", MET_AUC},
    {"precision", MET_PRECISION},
    {"recall", MET_RECALL},
    {"mse", MET_MSE},
    {"mean_squared_error", MET_MSE},
    {"mae", MET_MAE},
    {"mean_absolute_error", MET_MAE},
};

/* "accuracy" means what Keras makes of it for the compiled loss; "...top_k...@3" sets k. */
kiln_status kiln_metric_from_name(const char *name, loss_kind loss, metric_kind *k, int64_t *topk, const char **display) {
  if (!name) return kiln_set_error(KILN_ERR_INVALID, "metric name is NULL");
  *display = name;
  *topk = 5;
  if (!strcmp(name, "accuracy") || !strcmp(name, "acc")) {
    *display = "accuracy";
    *k = loss == LOSS_SCCE ? MET_SPARSE_ACC : loss == LOSS_CCE ? MET_CAT_ACC : MET_BIN_ACC;
    return KILN_OK;
  }
  const char *at = strchr(name, '@');
  size_t len = at ? (size_t)(at - name) : strlen(name);
  for (size_t i = 0; i < sizeof METRICS / sizeof METRICS[0]; i++) {
    if (strlen(METRICS[i].name) != len || strncmp(name, METRICS[i].name, len)) continue;
    *k = METRICS[i].kind;
    if (!at) return KILN_OK;
    char *end;
    long long v = strtoll(at + 1, &end, 10);
    if ((*k == MET_TOP_K || *k == MET_SPARSE_TOP_K) && !*end && v >= 1) {
      *topk = v;
      return KILN_OK;
    }
    break;
  }
  return kiln_set_error(KILN_ERR_INVALID, "unknown metric '%s'", name);
}

static int64_t last_dim(kiln_graph *g, kiln_value v) {
  kiln_shape s = kiln_value_shape(g, v);
  return s.rank ? s.dims[s.rank - 1] : 1;
}

static kiln_value sum_last(kiln_graph *g, kiln_value v) { return kiln_reduce_sum(g, v, (int64_t[]){-1}, 1, false); }
static kiln_value mean_last(kiln_graph *g, kiln_value v) { return kiln_reduce_mean(g, v, (int64_t[]){-1}, 1, false); }
static kiln_value clip(kiln_graph *g, kiln_value v, double lo, double hi) {
  kiln_dtype t = kiln_value_dtype(g, v);
  return kiln_minimum(g, kiln_maximum(g, v, kiln_scalar(g, t, lo)), kiln_scalar(g, t, hi));
}

/* Integer labels as i64 with the prediction's rank minus one ([batch, 1] -> [batch]). */
static kiln_value sparse_labels(kiln_graph *g, kiln_value y_true, kiln_value y_pred) {
  kiln_shape ys = kiln_value_shape(g, y_true), ps = kiln_value_shape(g, y_pred);
  if (ys.rank == ps.rank && ys.rank > 1 && ys.dims[ys.rank - 1] == 1) ys.rank--, y_true = kiln_reshape(g, y_true, ys);
  return kiln_cast(g, y_true, KILN_I64);
}

/* Targets [batch] for predictions [batch, 1] get the trailing 1 (Keras squeezes or
 * expands the same way), instead of broadcasting to [batch, batch]. */
static kiln_value dense_targets(kiln_graph *g, kiln_value y_true, kiln_value y_pred) {
  kiln_shape ys = kiln_value_shape(g, y_true), ps = kiln_value_shape(g, y_pred);
  kiln_value y = kiln_cast(g, y_true, kiln_value_dtype(g, y_pred));
  if (ys.rank + 1 == ps.rank && ps.dims[ps.rank - 1] == 1) y = kiln_reshape(g, y, ps);
  return y;
}

/* x / sqrt(max(sum(x^2), 1e-12)) along the last axis. */
static kiln_value l2_normalize(kiln_graph *g, kiln_value x) {
  kiln_dtype t = kiln_value_dtype(g, x);
  kiln_value ss = kiln_reduce_sum(g, kiln_square(g, x), (int64_t[]){-1}, 1, true);
  return kiln_mul(g, x, kiln_rsqrt(g, kiln_maximum(g, ss, kiln_scalar(g, t, 1e-12))));
}

kiln_value kiln_loss_per_example(kiln_graph *g, loss_kind k, bool from_logits, kiln_value y_true, kiln_value y_pred) {
  kiln_dtype t = kiln_value_dtype(g, y_pred);
  kiln_value yt = k == LOSS_SCCE ? kiln_one_hot(g, sparse_labels(g, y_true, y_pred), last_dim(g, y_pred), t)
                                 : dense_targets(g, y_true, y_pred);
  kiln_value one = kiln_scalar(g, t, 1);
  switch (k) {
  case LOSS_SCCE:
  case LOSS_CCE: {
    kiln_value logp, logits = from_logits ? y_pred : kiln_softmax_logits(g, y_pred);
    if (logits.id != KILN_NONE) {
      logp = kiln_log_softmax(g, logits, -1);
    } else {
      kiln_value p = kiln_div(g, y_pred, kiln_reduce_sum(g, y_pred, (int64_t[]){-1}, 1, true));
      logp = kiln_log(g, clip(g, p, EPS, 1 - EPS));
    }
    return kiln_neg(g, sum_last(g, kiln_mul(g, yt, logp)));
  }
  case LOSS_BCE: {
    kiln_value per;
    if (from_logits) { /* max(x, 0) - x*y + log(1 + exp(-|x|)) */
      kiln_value x = y_pred;
      per = kiln_add(g, kiln_sub(g, kiln_relu(g, x), kiln_mul(g, x, yt)),
                     kiln_log(g, kiln_add(g, one, kiln_exp(g, kiln_neg(g, kiln_abs(g, x))))));
    } else {
      kiln_value p = clip(g, y_pred, EPS, 1 - EPS);
      per = kiln_neg(g, kiln_add(g, kiln_mul(g, yt, kiln_log(g, p)),
                                 kiln_mul(g, kiln_sub(g, one, yt), kiln_log(g, kiln_sub(g, one, p)))));
    }
    return mean_last(g, per);
  }
  case LOSS_MSE: return mean_last(g, kiln_square(g, kiln_sub(g, y_pred, yt)));
  case LOSS_MAE: return mean_last(g, kiln_abs(g, kiln_sub(g, y_pred, yt)));
  case LOSS_HUBER: { /* delta 1: 0.5 e^2 where |e| <= 1, else |e| - 0.5 */
    kiln_value e = kiln_abs(g, kiln_sub(g, y_pred, yt)), half = kiln_scalar(g, t, 0.5);
    kiln_value q = kiln_minimum(g, e, one); /* quadratic part, then the linear rest */
    return mean_last(g, kiln_add(g, kiln_mul(g, half, kiln_square(g, q)), kiln_sub(g, e, q)));
  }
  case LOSS_KLD: {
    kiln_value a = clip(g, yt, EPS, 1), b = clip(g, y_pred, EPS, 1);
    return sum_last(g, kiln_mul(g, a, kiln_log(g, kiln_div(g, a, b))));
  }
  default: /* cosine similarity, negated so that minimising aligns the vectors */
    return kiln_neg(g, sum_last(g, kiln_mul(g, l2_normalize(g, yt), l2_normalize(g, y_pred))));
  }
}

/* ---- metrics ---- */

#define AUC_THRESHOLDS 200

int64_t kiln_metric_acc_size(metric_kind k) {
  return k == MET_AUC ? 2 * AUC_THRESHOLDS + 2 : 2;
}

/* w [batch] reshaped to broadcast against v's shape. */
static kiln_value weights_like(kiln_graph *g, kiln_value w, kiln_value v) {
  kiln_shape s = kiln_value_shape(g, v), ws = {.rank = s.rank};
  for (int i = 0; i < s.rank; i++) ws.dims[i] = i ? 1 : s.dims[0];
  return kiln_cast(g, kiln_reshape(g, w, ws), kiln_value_dtype(g, v));
}

static kiln_value total(kiln_graph *g, kiln_value v) { return kiln_reduce_sum(g, v, NULL, 0, false); }

/* [sum of w * v, sum of w] for a per-example value v [batch, ...]. */
static kiln_value weighted_mean_acc(kiln_graph *g, kiln_value v, kiln_value w) {
  kiln_shape s = kiln_value_shape(g, v);
  if (s.rank > 1) {
    int64_t axes[KILN_MAX_RANK];
    for (int i = 1; i < s.rank; i++) axes[i - 1] = i;
    v = kiln_reduce_mean(g, v, axes, s.rank - 1, false);
  }
  kiln_value wt = kiln_cast(g, w, kiln_value_dtype(g, v));
  kiln_value parts[2] = {kiln_reshape(g, total(g, kiln_mul(g, v, wt)), KILN_SHAPE(1)),
                         kiln_reshape(g, total(g, wt), KILN_SHAPE(1))};
  return kiln_concat(g, parts, 2, 0);
}

/* Whether the true class is among the k largest predictions (ties count as in). */
static kiln_value in_top_k(kiln_graph *g, kiln_value pred, kiln_value label, int64_t k) {
  kiln_dtype t = kiln_value_dtype(g, pred);
  kiln_value p_true = kiln_reduce_sum(g, kiln_mul(g, kiln_one_hot(g, label, last_dim(g, pred), t), pred),
                                      (int64_t[]){-1}, 1, true);
  kiln_value above = sum_last(g, kiln_cast(g, kiln_greater(g, pred, p_true), t));
  return kiln_less(g, above, kiln_scalar(g, t, (double)k));
}

/* Thresholded counts, each element weighted by its example's weight: precision
 * [tp, fp], recall [tp, fn], AUC [tp per threshold, fp per threshold, positives,
 * negatives] at Keras' 200 thresholds {-eps, 1/199, ..., 198/199, 1 + eps}. */
static kiln_value confusion_acc(kiln_graph *g, metric_kind k, kiln_value y_true, kiln_value y_pred, kiln_value w) {
  kiln_dtype t = kiln_value_dtype(g, y_pred);
  kiln_value wt = weights_like(g, w, y_pred), half = kiln_scalar(g, t, 0.5);
  kiln_value pos = kiln_mul(g, kiln_cast(g, kiln_greater(g, dense_targets(g, y_true, y_pred), half), t), wt);
  kiln_value neg = kiln_sub(g, wt, pos);
  if (k != MET_AUC) {
    kiln_value pred_pos = kiln_cast(g, kiln_greater(g, y_pred, half), t);
    kiln_value tp = total(g, kiln_mul(g, pred_pos, pos));
    kiln_value other = k == MET_PRECISION ? total(g, kiln_mul(g, pred_pos, neg)) /* fp */
                                          : kiln_sub(g, total(g, pos), tp);  /* fn */
    kiln_value parts[2] = {kiln_reshape(g, tp, KILN_SHAPE(1)), kiln_reshape(g, other, KILN_SHAPE(1))};
    return kiln_concat(g, parts, 2, 0);
  }
  double th[AUC_THRESHOLDS];
  th[0] = -EPS, th[AUC_THRESHOLDS - 1] = 1 + EPS;
  for (int i = 1; i < AUC_THRESHOLDS - 1; i++) th[i] = (double)i / (AUC_THRESHOLDS - 1);
  /* [batch, ..., 1] against [T]: a count per threshold, summed over all else. */
  kiln_shape ps = kiln_value_shape(g, y_pred);
  int64_t axes[KILN_MAX_RANK];
  for (int i = 0; i < ps.rank; i++) axes[i] = i;
  ps.dims[ps.rank++] = 1;
  kiln_value thv = kiln_cast(g, kiln_constant(g, KILN_F64, KILN_SHAPE(AUC_THRESHOLDS), th), t);
  kiln_value above = kiln_cast(g, kiln_greater(g, kiln_reshape(g, y_pred, ps), thv), t);
  kiln_value parts[4] = {kiln_reduce_sum(g, kiln_mul(g, above, kiln_reshape(g, pos, ps)), axes, ps.rank - 1, false),
                         kiln_reduce_sum(g, kiln_mul(g, above, kiln_reshape(g, neg, ps)), axes, ps.rank - 1, false),
                         kiln_reshape(g, total(g, pos), KILN_SHAPE(1)), kiln_reshape(g, total(g, neg), KILN_SHAPE(1))};
  return kiln_concat(g, parts, 4, 0);
}

kiln_value kiln_metric_accumulate(kiln_graph *g, const model_metric *mt, kiln_value y_true, kiln_value y_pred,
                                  kiln_value w) {
  kiln_dtype t = kiln_value_dtype(g, y_pred);
  kiln_value v;
  switch (mt->kind) {
  case MET_SPARSE_ACC:
    v = kiln_equal(g, kiln_argmax(g, y_pred, -1, false), sparse_labels(g, y_true, y_pred));
    break;
  case MET_CAT_ACC: v = kiln_equal(g, kiln_argmax(g, y_pred, -1, false), kiln_argmax(g, y_true, -1, false)); break;
  case MET_BIN_ACC: {
    kiln_value half = kiln_scalar(g, t, 0.5);
    v = mean_last(g, kiln_cast(g, kiln_equal(g, kiln_greater(g, y_pred, half), kiln_greater(g, dense_targets(g, y_true, y_pred), half)), t));
    break;
  }
  case MET_TOP_K: v = in_top_k(g, y_pred, kiln_argmax(g, y_true, -1, false), mt->k); break;
  case MET_SPARSE_TOP_K: v = in_top_k(g, y_pred, sparse_labels(g, y_true, y_pred), mt->k); break;
  case MET_MSE: v = kiln_loss_per_example(g, LOSS_MSE, false, y_true, y_pred); break;
  case MET_MAE: v = kiln_loss_per_example(g, LOSS_MAE, false, y_true, y_pred); break;
  default: return confusion_acc(g, mt->kind, y_true, y_pred, w);
  }
  return weighted_mean_acc(g, kiln_cast(g, v, t), w);
}

static double ratio(double a, double b) { return b > 0 ? a / b : 0; }

double kiln_metric_finalize(metric_kind k, const double *acc) {
  switch (k) {
  case MET_PRECISION: return ratio(acc[0], acc[0] + acc[1]);
  case MET_RECALL: return ratio(acc[0], acc[0] + acc[1]);
  case MET_AUC: { /* ROC by the trapezoidal rule; false-positive rates fall as thresholds rise */
    const double *tp = acc, *fp = acc + AUC_THRESHOLDS, pos = acc[2 * AUC_THRESHOLDS], neg = acc[2 * AUC_THRESHOLDS + 1];
    double auc = 0;
    for (int i = 0; i + 1 < AUC_THRESHOLDS; i++)
      auc += (ratio(fp[i], neg) - ratio(fp[i + 1], neg)) * (ratio(tp[i], pos) + ratio(tp[i + 1], pos)) / 2;
    return auc;
  }
  default: return ratio(acc[0], acc[1]);
  }
}

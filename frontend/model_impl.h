/* Internal structure of layers and models, shared by frontend/ (layers, model
 * building, losses) and runtime/fit.c (the training loop). */
#ifndef KILN_FRONTEND_MODEL_IMPL_H
#define KILN_FRONTEND_MODEL_IMPL_H

#include "ir/ir.h"
#include "kiln/model.h"

struct kiln_layer {
  const kiln_layer_class *cls;
  char *name;
  void *state;
  kiln_variables *vars; /* the model's store, set when added */
  kiln_variable **weights;
  size_t nweights, cap;
  bool built, frozen;
  kiln_shape out_shape; /* recorded by kiln_model_build */
};

typedef enum loss_kind { LOSS_SCCE, LOSS_CCE, LOSS_BCE, LOSS_MSE, LOSS_MAE } loss_kind;
typedef enum metric_kind { MET_SPARSE_ACC, MET_CAT_ACC, MET_BIN_ACC, MET_MSE, MET_MAE } metric_kind;

struct kiln_model {
  char *name;
  uint64_t seed;
  kiln_variables *vars;
  kiln_layer **layers;
  size_t nlayers, cap;
  bool built;
  kiln_dtype in_dtype;
  kiln_shape in_shape; /* per example */
  /* compile */
  bool compiled;
  kiln_optimizer *opt;
  loss_kind loss;
  bool from_logits;
  metric_kind metrics[8];
  char *metric_names[8];
  size_t nmetrics;
  kiln_function *train_fn, *eval_fn, *predict_fn;
  bool stop_training;
};

/* losses.c: per-example loss [batch] and per-metric sums over the batch. */
KILN_INTERNAL kiln_status kiln_loss_from_name(const char *name, loss_kind *out);
KILN_INTERNAL kiln_status kiln_metric_from_name(const char *name, loss_kind loss, metric_kind *k, const char **display);
KILN_INTERNAL kiln_value kiln_loss_per_example(kiln_graph *g, loss_kind k, bool from_logits, kiln_value y_true,
                                               kiln_value y_pred);
KILN_INTERNAL kiln_value kiln_metric_sum(kiln_graph *g, metric_kind k, kiln_value y_true, kiln_value y_pred);

/* runtime/checkpoint.c: all variables with the optimizer's step, the seed and `epoch` epochs done. */
KILN_INTERNAL kiln_status kiln_model_save(kiln_model *m, const char *path, int64_t epoch);

/* model.c */
KILN_INTERNAL kiln_status kiln_model_ensure_built(kiln_model *m, const kiln_tensor *x);
KILN_INTERNAL kiln_status kiln_model_ensure_functions(kiln_model *m);
#endif

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
  uint64_t seed;        /* the model's seed mixed with the layer's name (dropout) */
  kiln_variable **weights;
  size_t nweights, cap;
  bool built, frozen;
  kiln_shape out_shape; /* of its first call */
  /* A layer made of layers: sub-layers are owned by their parent, named
   * "<parent>/<local>" once the parent is in a model, and their weights are listed in
   * every ancestor's weights too (training, freezing and summary see them there). */
  kiln_layer *parent;
  kiln_layer **children;
  size_t nchildren, children_cap;
  char *local; /* a sub-layer's name inside its parent */
};

typedef enum loss_kind { LOSS_SCCE, LOSS_CCE, LOSS_BCE, LOSS_MSE, LOSS_MAE, LOSS_HUBER, LOSS_KLD, LOSS_COSINE } loss_kind;
typedef enum metric_kind {
  MET_SPARSE_ACC, MET_CAT_ACC, MET_BIN_ACC, MET_TOP_K, MET_SPARSE_TOP_K, MET_AUC, MET_PRECISION, MET_RECALL,
  MET_MSE, MET_MAE
} metric_kind;

/* A compiled metric: which head it watches; its graph emits an accumulator vector
 * (summed over batches on the host) from which finalize computes the value. */
typedef struct model_metric {
  metric_kind kind;
  size_t head;
  int64_t k; /* top-k */
  char *key; /* History key: "accuracy", or "<output>_accuracy" with several heads */
} model_metric;

/* An output with a loss. */
typedef struct model_head {
  size_t output;
  loss_kind loss;
  kiln_loss_fn custom; /* used when custom.fn is set */
  double weight;
  bool from_logits;
  char *key; /* "<output>_loss" */
} model_head;

/* ktensor ids index kts; node i applies layers[layer] to kts in[] giving kt out. */
typedef struct model_kt {
  int32_t node; /* -1: a model input */
  kiln_dtype dtype;
  kiln_shape shape; /* with the batch dim */
} model_kt;

typedef struct model_node {
  kiln_layer *layer;
  int32_t *in;
  size_t nin;
  int32_t out;
} model_node;

typedef struct model_port {
  char *name;
  int32_t kt;
} model_port;

typedef enum { ROWS_UNKNOWN, ROWS_APART, ROWS_MIXED } rows_verdict;

struct kiln_model {
  char *name;
  uint64_t seed;
  kiln_variables *vars;
  bool sequential; /* layers are chained at build time */
  kiln_layer **layers; /* owned, unique, in order of first use */
  size_t nlayers, cap;
  model_kt *kts;
  size_t nkts, kts_cap;
  model_node *nodes;
  size_t nnodes, nodes_cap;
  model_port *inputs, *outputs;
  size_t ninputs, noutputs;
  kiln_graph *loaded; /* a model read from a model file: its inference graph, no layers */
  kiln_status error; /* first error while building a functional model */
  char *errmsg;
  bool built;
  /* compile */
  bool compiled;
  kiln_optimizer *opt;
  model_head *heads;
  size_t nheads;
  model_metric *metrics;
  size_t nmetrics;
  char **result_names; /* "loss", head losses (several heads), metrics */
  size_t nresults;
  kiln_function *train_fn, *eval_fn, *predict_fn;
  kiln_function *grads_fn, *apply_fn; /* the train step split around an allreduce */
  /* Whether the traced train / eval / predict functions keep rows apart (ir/rows.c),
   * so fit pads a short last batch instead of compiling for its size: unknown before
   * the first trace, then the verdict of every trace so far. */
  rows_verdict rows_train, rows_eval, rows_predict;
  bool stop_training;
};

/* losses.c: per-example loss [batch]; metric accumulators [acc_size] summed over the
 * batch with example weights w [batch]; the metric's value from summed accumulators. */
KILN_INTERNAL kiln_status kiln_loss_from_name(const char *name, loss_kind *out);
KILN_INTERNAL kiln_status kiln_metric_from_name(const char *name, loss_kind loss, metric_kind *k, int64_t *topk,
                                                const char **display);
/* The x of a value built by kiln_softmax(g, x, -1), or KILN_NONE. Like Keras for a
 * Softmax output, cross-entropy on such probabilities is computed from x (log_softmax):
 * clipping saturated probabilities would zero their gradient. */
KILN_INTERNAL kiln_value kiln_softmax_logits(const kiln_graph *g, kiln_value p);
KILN_INTERNAL kiln_value kiln_loss_per_example(kiln_graph *g, loss_kind k, bool from_logits, kiln_value y_true,
                                               kiln_value y_pred);
KILN_INTERNAL int64_t kiln_metric_acc_size(metric_kind k);
KILN_INTERNAL kiln_value kiln_metric_accumulate(kiln_graph *g, const model_metric *mt, kiln_value y_true,
                                                kiln_value y_pred, kiln_value w);
KILN_INTERNAL double kiln_metric_finalize(metric_kind k, const double *acc);

/* runtime/checkpoint.c: all variables with the optimizer's step, the seed and `epoch` epochs done. */
KILN_INTERNAL kiln_status kiln_model_save_checkpoint(kiln_model *m, const char *path, int64_t epoch);

/* model.c */
KILN_INTERNAL kiln_status kiln_model_ensure_built(kiln_model *m, const kiln_tensor *const *x, size_t nx);
KILN_INTERNAL kiln_status kiln_model_ensure_functions(kiln_model *m);
KILN_INTERNAL void kiln_model_drop_compiled(kiln_model *m);
/* compile.c: the train step in two functions for data-parallel training. grads_fn takes
 * what train_fn takes and returns the gradient of the mean loss for each weight of
 * kiln_model_trainable_weights, then train_fn's results; apply_fn takes those
 * gradients and runs the optimizer's update. */
KILN_INTERNAL kiln_status kiln_model_ensure_split_step(kiln_model *m);
/* The weights training updates, in the order of grads_fn's outputs; vars has room for
 * every variable of the store. */
KILN_INTERNAL size_t kiln_model_trainable_weights(kiln_model *m, kiln_variable **vars);
/* A model weight, as opposed to the compiled optimizer's state ("optimizer/..."); the
 * signature of kiln_pack_store's filter. */
KILN_INTERNAL bool kiln_model_is_weight(const kiln_variable *v, void *ud);
/* The inference graph: placeholders named like the inputs, outputs like the outputs. */
KILN_INTERNAL kiln_graph *kiln_model_inference_graph(kiln_model *m);
/* compile.c: the training step as one graph (symbolic batch): placeholders for the inputs
 * and a target per head ("<output>:target"; class ids for sparse losses), examples
 * weighted 1, output "loss" the mean loss, updates as variable assignments. */
KILN_INTERNAL kiln_graph *kiln_model_train_graph(kiln_model *m);
/* A model whose forward pass is graph g (taken over; variables in vars, taken over too). */
KILN_INTERNAL kiln_status kiln_model_from_graph(const char *name, kiln_graph *g, kiln_variables *vars, kiln_model **out);
/* layers.c: helpers of the built-in layers. A glorot_uniform kernel and a zero bias;
 * bias + activation after the op; a layer owning a copy of `state`. */
KILN_INTERNAL kiln_status kiln_layer_kernel_and_bias(kiln_layer *l, kiln_shape kernel, int64_t units, kiln_variable **k,
                                                     kiln_variable **b);
KILN_INTERNAL kiln_value kiln_layer_bias_act(kiln_graph *g, kiln_value y, kiln_variable *bias, kiln_activation act);
KILN_INTERNAL kiln_layer *kiln_layer_with_state(const kiln_layer_class *cls, void *state, size_t size, const char *what);
/* layers.c: FNV-1a of a layer's name, mixed into its seed (the model's, or its parent's). */
KILN_INTERNAL uint64_t kiln_layer_name_hash(const char *s);
/* layers.c: Keras' automatic name base of a layer type ("MaxPooling2D" -> "max_pooling2d"). */
KILN_INTERNAL void kiln_layer_type_base(const char *type, char *base, size_t cap);
/* layers.c: gives l's sub-layers (recursively) their names, store and seeds; l must have
 * its own (a layer just adopted by a model, or a bound parent). */
KILN_INTERNAL kiln_status kiln_layer_bind_children(kiln_layer *l);
/* layers.c: build on first use, then call; failures go to g. */
KILN_INTERNAL kiln_value kiln_layer_invoke(kiln_layer *l, kiln_graph *g, const kiln_value *x, size_t n, bool training);
#endif

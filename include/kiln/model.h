/* kiln Keras-style models: layers, Sequential models, compile / fit / evaluate / predict.
 *
 *   kiln_model *m = kiln_sequential_new("mlp", 42);
 *   kiln_model_add(m, kiln_layer_flatten());
 *   kiln_model_add(m, kiln_layer_dense(300, KILN_ACT_RELU));
 *   kiln_model_add(m, kiln_layer_dense(10, KILN_ACT_SOFTMAX));
 *   kiln_model_compile(m, &(kiln_model_compile_options){.optimizer = "sgd",
 *                          .loss = "sparse_categorical_crossentropy", .metrics = (const char *[]){"accuracy"},
 *                          .nmetrics = 1});
 *   kiln_fit_options fo = kiln_fit_defaults();
 *   fo.epochs = 10;
 *   kiln_history *h;
 *   kiln_model_fit(m, x_train, y_train, &fo, &h);
 *
 * Layers create their weights lazily from the first input shape they see (Keras'
 * build), as variables of the model's store named "<layer>/<weight>". The model
 * owns its layers, variables and optimizer. Each of fit's train step, evaluate and
 * predict is one compiled function, traced once with a symbolic batch dim and
 * compiled per batch size; a short last batch (of fit, its validation, evaluate or
 * predict) runs through the full batch's code, padded with rows of weight zero, when
 * no row depends on another (no batch statistics), and compiles its own size otherwise. */
#ifndef KILN_MODEL_H
#define KILN_MODEL_H

#include <stdio.h>
#include "kiln/distributed.h"
#include "kiln/train.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- activations ---- */

typedef enum kiln_activation {
  KILN_ACT_LINEAR = 0,
  KILN_ACT_RELU,
  KILN_ACT_SIGMOID,
  KILN_ACT_TANH,
  KILN_ACT_SOFTMAX,    /* over the last axis */
  KILN_ACT_ELU,        /* alpha 1 */
  KILN_ACT_SELU,
  KILN_ACT_LEAKY_RELU, /* negative slope 0.2, as keras.activations.leaky_relu */
  KILN_ACT_GELU,       /* tanh approximation */
  KILN_ACT_SWISH,      /* x * sigmoid(x) */
  KILN_ACT_COUNT
} kiln_activation;

KILN_API kiln_value kiln_activate(kiln_graph *g, kiln_value x, kiln_activation a);
/* Keras names: "relu", "softmax", "linear", ... */
KILN_API kiln_status kiln_activation_from_name(const char *name, kiln_activation *out);

/* ---- layers ---- */

typedef struct kiln_layer kiln_layer;

/* A custom layer is a class of three functions plus private state:
 *   build: create weights with kiln_layer_add_weight from the input shapes (dim 0 is
 *          the batch, KILN_DYN); called once, before the first call;
 *   call:  the forward computation in graph g; `training` selects training behaviour
 *          (dropout, batch statistics); may assign non-trainable weights in training;
 *   destroy: free the state (may be NULL).
 * ninputs: tensors per call; 0 means 1, -1 means two or more (merge layers). */
typedef struct kiln_layer_class {
  const char *type; /* shown by summary and used for automatic names ("Dense" -> "dense_1") */
  int ninputs;
  kiln_status (*build)(kiln_layer *l, const kiln_shape *in, size_t n);
  kiln_value (*call)(kiln_layer *l, kiln_graph *g, const kiln_value *x, size_t n, bool training);
  void (*destroy)(void *state);
} kiln_layer_class;

/* name NULL: named automatically when added to a model. The layer owns state. */
KILN_API kiln_layer *kiln_layer_new(const kiln_layer_class *cls, const char *name, void *state);
KILN_API void *kiln_layer_state(kiln_layer *l);
KILN_API const char *kiln_layer_name(const kiln_layer *l);
/* Sets the name of a layer not yet in a model (Keras' name=...). Returns l; NULL (and
 * frees l) on failure. */
KILN_API kiln_layer *kiln_layer_named(kiln_layer *l, const char *name);
/* Inside build: a weight "<layer>/<name>" in the model's store. */
KILN_API kiln_status kiln_layer_add_weight(kiln_layer *l, const char *name, kiln_dtype t, kiln_shape s,
                                           kiln_initializer init, bool trainable, kiln_variable **out);
/* Freezes (false) or unfreezes every weight of the layer, now and when built later.
 * A frozen BatchNormalization also runs in inference mode, as in Keras. */
KILN_API void kiln_layer_set_trainable(kiln_layer *l, bool trainable);
KILN_API bool kiln_layer_trainable(const kiln_layer *l);
/* Only for a layer that was never added to a model (or tracked by another layer). */
KILN_API void kiln_layer_free(kiln_layer *l);

/* Layers made of layers (a Keras layer whose __init__ or build creates layers): in the
 * state's constructor or in build, kiln_layer_track(l, child) makes child a sub-layer of
 * l, owned by l and named "<l>/<child>" (automatic names per type inside l: "dense",
 * "dense_1"), so its weights are "<l>/<child>/kernel"; they count as l's weights too, so
 * training updates them, freezing l freezes them and summary shows the sub-layers under
 * l. In l's call, kiln_layer_call(child, ...) builds child on first use and applies it.
 * Returns child, or NULL (child freed) on failure. */
KILN_API kiln_layer *kiln_layer_track(kiln_layer *l, kiln_layer *child);
KILN_API kiln_value kiln_layer_call(kiln_layer *l, kiln_graph *g, const kiln_value *x, size_t n, bool training);

/* Built-in layers (Keras defaults: glorot_uniform kernels, zero biases). NULL on bad
 * arguments, with the reason in kiln_errmsg(). Spatial layers take channels-last input. */
KILN_API kiln_layer *kiln_layer_dense(int64_t units, kiln_activation act);
KILN_API kiln_layer *kiln_layer_flatten(void);
KILN_API kiln_layer *kiln_layer_activation(kiln_activation act);
/* x * scale + offset (Keras' Rescaling): puts preprocessing such as standardization
 * ((x - mean) / std: scale 1/std, offset -mean/std) inside the model, so a saved or
 * compiled model takes raw data. */
KILN_API kiln_layer *kiln_layer_rescaling(double scale, double offset);
/* Per-example target shape (the batch dim is kept), e.g. KILN_SHAPE(28, 28, 1). */
KILN_API kiln_layer *kiln_layer_reshape(kiln_shape target);
/* Zeroes a fraction `rate` of the inputs while training and scales the rest by
 * 1/(1-rate); identity at inference. A fresh mask every step (its step counter is a
 * non-trainable weight, so checkpoints carry the RNG state). */
KILN_API kiln_layer *kiln_layer_dropout(double rate);
/* Over the last (channels) axis; momentum 0.99, epsilon 1e-3, gamma/beta, moving
 * mean/variance updated while training. */
KILN_API kiln_layer *kiln_layer_batch_normalization(void);
/* Over the last axis; epsilon 1e-3, gamma/beta. */
KILN_API kiln_layer *kiln_layer_layer_normalization(void);
/* Stride 1, "valid" or "same" padding. Conv1D input [batch, steps, channels]. */
KILN_API kiln_layer *kiln_layer_conv1d(int64_t filters, int64_t k, kiln_padding padding, kiln_activation act);
KILN_API kiln_layer *kiln_layer_conv2d(int64_t filters, int64_t kh, int64_t kw, kiln_padding padding,
                                       kiln_activation act);
/* Window = strides = pool size, valid padding. */
KILN_API kiln_layer *kiln_layer_max_pooling1d(int64_t pool);
KILN_API kiln_layer *kiln_layer_max_pooling2d(int64_t ph, int64_t pw);
KILN_API kiln_layer *kiln_layer_average_pooling2d(int64_t ph, int64_t pw);
/* Over all spatial axes: [batch, ..., channels] -> [batch, channels]. */
KILN_API kiln_layer *kiln_layer_global_max_pooling1d(void);
KILN_API kiln_layer *kiln_layer_global_max_pooling2d(void);
KILN_API kiln_layer *kiln_layer_global_average_pooling1d(void);
KILN_API kiln_layer *kiln_layer_global_average_pooling2d(void);
/* Integer ids [batch, ...] -> [batch, ..., dim]; uniform(-0.05, 0.05) init. An id
 * outside [0, vocab) makes the run fail with an error naming it. */
KILN_API kiln_layer *kiln_layer_embedding(int64_t vocab, int64_t dim);
/* Recurrent layers over [batch, time, features] (time static), unrolled; Keras'
 * initializers (glorot_uniform kernel, orthogonal-free: glorot_uniform recurrent
 * kernel), tanh / sigmoid activations, GRU with reset_after. return_sequences gives
 * [batch, time, units], otherwise the last output [batch, units]. */
KILN_API kiln_layer *kiln_layer_simple_rnn(int64_t units, bool return_sequences);
KILN_API kiln_layer *kiln_layer_lstm(int64_t units, bool return_sequences);
KILN_API kiln_layer *kiln_layer_gru(int64_t units, bool return_sequences);
/* Merge layers (two or more inputs). Concatenate joins along `axis` (-1 = last). */
KILN_API kiln_layer *kiln_layer_concatenate(int axis);
KILN_API kiln_layer *kiln_layer_add(void);
KILN_API kiln_layer *kiln_layer_multiply(void);

/* ---- models ---- */

typedef struct kiln_model kiln_model;

/* A symbolic tensor of a functional model under construction (Keras' KerasTensor).
 * Operations on an invalid one (from an earlier failure) stay invalid; the first
 * error is reported by kiln_model_output, compile or fit. */
typedef struct kiln_ktensor {
  int32_t id;
} kiln_ktensor;

/* seed drives weight initialisation, dropout and shuffling. */
KILN_API kiln_model *kiln_sequential_new(const char *name, uint64_t seed);
/* A functional model: declare inputs, apply layers to ktensors, declare outputs:
 *   kiln_model *m = kiln_model_new("qa", 1);
 *   kiln_ktensor q = kiln_model_input(m, "question", KILN_I32, KILN_SHAPE(20));
 *   kiln_ktensor h = kiln_model_apply1(m, kiln_layer_embedding(1000, 32), q);
 *   ...
 *   kiln_model_output(m, "answer", y);
 * A layer applied twice shares its weights. */
KILN_API kiln_model *kiln_model_new(const char *name, uint64_t seed);
/* shape: per example (no batch dim). */
KILN_API kiln_ktensor kiln_model_input(kiln_model *m, const char *name, kiln_dtype t, kiln_shape shape);
/* The model takes ownership of l the first time it is applied (also on failure). */
KILN_API kiln_ktensor kiln_model_apply(kiln_model *m, kiln_layer *l, const kiln_ktensor *in, size_t n);
KILN_API kiln_ktensor kiln_model_apply1(kiln_model *m, kiln_layer *l, kiln_ktensor in);
/* name NULL: the producing layer's name. */
KILN_API kiln_status kiln_model_output(kiln_model *m, const char *name, kiln_ktensor t);

/* Keras model subclassing: a model whose forward pass is the layer `body` — a class that
 * tracks its sub-layers (kiln_layer_track) and composes them in its call — applied to
 * inputs of these names, dtypes and per-example shapes; its output is named `output`
 * (NULL: the body's name, which defaults to the model's, so weights are
 * "<model>/<sub-layer>/<weight>"). It compiles, fits, evaluates, predicts, checkpoints,
 * saves and compiles to a .o like a functional model. Takes body, also on failure;
 * NULL with the reason in kiln_errmsg() on failure. */
typedef struct kiln_input_spec {
  const char *name;
  kiln_dtype dtype;
  kiln_shape shape; /* per example */
} kiln_input_spec;
KILN_API kiln_model *kiln_model_subclassed(const char *name, uint64_t seed, kiln_layer *body,
                                           const kiln_input_spec *inputs, size_t ninputs, const char *output);

KILN_API void kiln_model_free(kiln_model *m);
/* Sequential models: append a layer. The model takes ownership of l, also when this fails. */
KILN_API kiln_status kiln_model_add(kiln_model *m, kiln_layer *l);
/* Builds a Sequential model for inputs of dtype t and per-example shape `input` (no
 * batch dim); fit/evaluate/predict build from their data when this was not called. */
KILN_API kiln_status kiln_model_build(kiln_model *m, kiln_dtype t, kiln_shape input);
/* Keras' table: layer (type), output shape, params (and "connected to" for functional
 * models); totals, trainable and not. */
KILN_API kiln_status kiln_model_summary(kiln_model *m, FILE *out);
KILN_API kiln_variables *kiln_model_variables(kiln_model *m);
KILN_API size_t kiln_model_num_layers(const kiln_model *m);
KILN_API kiln_layer *kiln_model_layer(const kiln_model *m, size_t i);
KILN_API kiln_layer *kiln_model_find_layer(const kiln_model *m, const char *name);
KILN_API size_t kiln_model_num_inputs(const kiln_model *m);
KILN_API size_t kiln_model_num_outputs(const kiln_model *m);
KILN_API const char *kiln_model_input_name(const kiln_model *m, size_t i);
KILN_API const char *kiln_model_output_name(const kiln_model *m, size_t i);
/* The model's forward pass inside a graph (e.g. a custom train step): x has one value
 * per input, y receives one per output. */
KILN_API kiln_status kiln_model_call_multi(kiln_model *m, kiln_graph *g, const kiln_value *x, kiln_value *y,
                                           bool training);
/* Single input and output. */
KILN_API kiln_value kiln_model_call(kiln_model *m, kiln_graph *g, kiln_value x, bool training);

/* A loss as an object: the per-example loss [batch] of predictions y_pred given
 * targets y_true, built from graph ops (kiln_reduce_mean over the last axis, ...). */
typedef struct kiln_loss_fn {
  kiln_value (*fn)(kiln_graph *g, kiln_value y_true, kiln_value y_pred, void *ud);
  void *ud;
} kiln_loss_fn;

/* Loss and metrics of one output, by position (output NULL) or by output name. */
typedef struct kiln_output_loss {
  const char *output;
  const char *loss;
  kiln_loss_fn loss_fn; /* instead of a name */
  double weight; /* loss weight; 0 means 1 */
  bool from_logits;
  const char *const *metrics;
  size_t nmetrics;
} kiln_output_loss;

typedef struct kiln_model_compile_options {
  /* By Keras name with its defaults ("sgd", "adam", ...), or a full config (wins if set). */
  const char *optimizer;
  const kiln_optimizer_config *optimizer_config;
  /* For every output: "sparse_categorical_crossentropy", "categorical_crossentropy",
   * "binary_crossentropy", "mean_squared_error" ("mse"), "mean_absolute_error" ("mae"),
   * "huber", "kl_divergence" ("kld"), "cosine_similarity". */
  const char *loss;
  kiln_loss_fn loss_fn; /* or a custom loss (wins if set) */
  bool from_logits; /* predictions are logits, not probabilities */
  /* For every output: "accuracy" (chosen from the loss like Keras), "sparse_categorical_accuracy",
   * "categorical_accuracy", "binary_accuracy", "top_k_categorical_accuracy",
   * "sparse_top_k_categorical_accuracy" (k = 5; "..._accuracy@3" for k = 3), "auc",
   * "precision", "recall", "mse", "mae". */
  const char *const *metrics;
  size_t nmetrics;
  /* Per output (overrides loss/metrics above for the outputs it names). An output
   * with no loss is not trained and takes no y. */
  const kiln_output_loss *outputs;
  size_t noutputs;
} kiln_model_compile_options;
KILN_API kiln_status kiln_model_compile(kiln_model *m, const kiln_model_compile_options *o);
/* After compile: names of evaluate's results ("loss", per-output losses when there are
 * several, metrics), which are also fit's History keys (and "val_" + each). */
KILN_API size_t kiln_model_num_results(const kiln_model *m);
KILN_API const char *kiln_model_result_name(const kiln_model *m, size_t i);

/* ---- callbacks ---- */

typedef enum kiln_callback_event {
  KILN_ON_TRAIN_BEGIN = 0,
  KILN_ON_TRAIN_END,
  KILN_ON_EPOCH_BEGIN,
  KILN_ON_EPOCH_END, /* logs: "loss", metrics, "val_..." for the epoch */
  KILN_ON_BATCH_BEGIN,
  KILN_ON_BATCH_END  /* logs: running "loss" and metrics of the epoch so far */
} kiln_callback_event;

typedef struct kiln_callback_info {
  kiln_callback_event event;
  kiln_model *model;
  int epoch;     /* 0-based */
  int64_t batch; /* 0-based within the epoch */
  const char *const *keys;
  const double *values;
  size_t nvalues;
} kiln_callback_info;

/* A callback is a function plus its state; returning an error aborts fit with it. */
typedef struct kiln_callback {
  kiln_status (*fn)(const kiln_callback_info *info, void *state);
  void *state;
  void (*destroy)(void *state); /* called by kiln_callback_free */
} kiln_callback;
KILN_API void kiln_callback_free(kiln_callback *cb);
/* The value of key in info's logs, or NaN. */
KILN_API double kiln_callback_log(const kiln_callback_info *info, const char *key);
/* Asks fit to stop after the current batch/epoch (Keras' model.stop_training = True). */
KILN_API void kiln_model_stop_training(kiln_model *m);
/* The learning-rate variable of the compiled optimizer (NULL before the first fit step). */
KILN_API kiln_variable *kiln_model_learning_rate(kiln_model *m);

/* Keras' built-in callbacks. monitor NULL means "val_loss"; a monitored name containing
 * "acc" or "auc" is maximised, anything else minimised (Keras' mode "auto"). */
KILN_API kiln_callback kiln_early_stopping(const char *monitor, double min_delta, int patience,
                                           bool restore_best_weights);
/* path may contain {epoch} or {epoch:02d} (1-based); a path ending in ".kiln" saves
 * model files (kiln_model_save), anything else checkpoints. */
KILN_API kiln_callback kiln_model_checkpoint(const char *path, const char *monitor, bool save_best_only);
KILN_API kiln_callback kiln_reduce_lr_on_plateau(const char *monitor, double factor, int patience, double min_lr);
KILN_API kiln_callback kiln_lr_scheduler(double (*schedule)(int epoch, double lr, void *ud), void *ud);
KILN_API kiln_callback kiln_csv_logger(const char *path);
KILN_API kiln_callback kiln_terminate_on_nan(void);
/* TensorBoard event files under log_dir/train and log_dir/validation: "epoch_<key>"
 * scalars per epoch (and the learning rate), "batch_<key>" every update_freq batches
 * when update_freq > 0. View with `tensorboard --logdir log_dir`. */
KILN_API kiln_callback kiln_tensorboard(const char *log_dir, int update_freq);

/* Data for a model with several inputs/outputs: one tensor per input, in declaration
 * order, one target per output that has a loss, optional per-example weights [n]. */
typedef struct kiln_arrays {
  const kiln_tensor *const *x;
  size_t nx;
  const kiln_tensor *const *y;
  size_t ny;
  const kiln_tensor *sample_weight;
} kiln_arrays;

typedef struct kiln_fit_options {
  const kiln_callback *callbacks;
  size_t ncallbacks;
  int epochs;
  int initial_epoch;
  int64_t batch_size;
  bool shuffle;
  double validation_split;        /* the last fraction of the data, taken before shuffling */
  const kiln_tensor *validation_x; /* or explicit validation data (wins) */
  const kiln_tensor *validation_y;
  const kiln_arrays *validation;  /* the same for several inputs/outputs */
  const kiln_tensor *sample_weight; /* [n] per-example loss weights (kiln_model_fit only) */
  /* class_weight[c] multiplies the weight of examples of class c (labels of the first
   * output: integer ids or one-hot rows). */
  const double *class_weight;
  size_t nclass_weight;
  int verbose; /* 0 silent, 1 progress bar (one line per epoch when stderr is not a terminal), 2 one line per epoch */
  /* Data-parallel training over MPI (kiln/distributed.h): batch_size is per rank, the
   * global batch batch_size * ranks; NULL trains in this process alone. */
  kiln_dist *distributed;
} kiln_fit_options;
/* Keras' defaults: 1 epoch, batch 32, shuffle, verbose 1. */
KILN_API kiln_fit_options kiln_fit_defaults(void);

/* Per-epoch results: each of kiln_model_result_name, and "val_..." with validation data. */
typedef struct kiln_history kiln_history;
KILN_API size_t kiln_history_epochs(const kiln_history *h);
KILN_API size_t kiln_history_num_keys(const kiln_history *h);
KILN_API const char *kiln_history_key(const kiln_history *h, size_t i);
/* kiln_history_epochs(h) values, or NULL for an unknown key. */
KILN_API const double *kiln_history_get(const kiln_history *h, const char *key);
KILN_API void kiln_history_free(kiln_history *h);

/* y: labels (i32/i64) for sparse losses, otherwise targets shaped like the output. */
KILN_API kiln_status kiln_model_fit(kiln_model *m, const kiln_tensor *x, const kiln_tensor *y,
                                    const kiln_fit_options *o, kiln_history **history);
KILN_API kiln_status kiln_model_fit_arrays(kiln_model *m, const kiln_arrays *data, const kiln_fit_options *o,
                                           kiln_history **history);
/* results[i] is kiln_model_result_name(m, i); nresults may be smaller. */
KILN_API kiln_status kiln_model_evaluate(kiln_model *m, const kiln_tensor *x, const kiln_tensor *y,
                                         int64_t batch_size, double *results, size_t nresults);
KILN_API kiln_status kiln_model_evaluate_arrays(kiln_model *m, const kiln_arrays *data, int64_t batch_size,
                                                double *results, size_t nresults);
KILN_API kiln_status kiln_model_predict(kiln_model *m, const kiln_tensor *x, int64_t batch_size, kiln_tensor **out);
/* out receives one new tensor per output (nout = kiln_model_num_outputs). */
KILN_API kiln_status kiln_model_predict_arrays(kiln_model *m, const kiln_tensor *const *x, size_t nx,
                                               int64_t batch_size, kiln_tensor **out, size_t nout);

/* All the model's variables, optimizer state included (see kiln_checkpoint_save). */
KILN_API kiln_status kiln_model_save_weights(kiln_model *m, const char *path);
/* Needs a built model; restores optimizer state too, so training continues exactly. */
KILN_API kiln_status kiln_model_load_weights(kiln_model *m, const char *path);

/* Model files ("m.kiln"): the inference graph and the weights, so another program can
 * kiln_model_load and predict (or compile and fit further) without the code that
 * built the model. Written atomically; a damaged file is rejected with the reason. */
KILN_API kiln_status kiln_model_save(kiln_model *m, const char *path);
KILN_API kiln_status kiln_model_load(const char *path, kiln_model **out);

#ifdef __cplusplus
}
#endif
#endif

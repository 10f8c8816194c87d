/* kiln training API: variables, tf.function-style tracing, optimizers.
 *
 *   kiln_variables *vars = kiln_variables_new(42);             // seeds every initializer
 *   kiln_variable *w, *b;
 *   kiln_variable_new(vars, "w", KILN_F32, KILN_SHAPE(4, 1), KILN_GLOROT_UNIFORM, true, &w);
 *   kiln_variable_new(vars, "b", KILN_F32, KILN_SHAPE(1), KILN_ZEROS, true, &b);
 *   kiln_optimizer *opt;
 *   kiln_optimizer_config oc = kiln_optimizer_defaults(KILN_OPT_ADAM);
 *   kiln_optimizer_new(&oc, "adam", &opt);
 *
 *   // Traced once per input signature, like a @tf.function train step:
 *   static void train_step(kiln_graph *g, const kiln_value *in, size_t nin, void *ud) {
 *     struct model *m = ud;
 *     kiln_value params[2] = {kiln_variable_read(g, m->w), kiln_variable_read(g, m->b)}, grads[2];
 *     kiln_value pred = kiln_add(g, kiln_matmul(g, in[0], params[0], false, false), params[1]);
 *     kiln_value loss = kiln_reduce_mean(g, kiln_square(g, kiln_sub(g, pred, in[1])), NULL, 0, false);
 *     kiln_gradients(g, loss, params, 2, grads);
 *     kiln_optimizer_apply(m->opt, g, m->vars_list, grads, 2);  // in-graph update
 *     kiln_output(g, "loss", loss);
 *   }
 *   kiln_function *step = kiln_function_new(train_step, &model, NULL);
 *   kiln_function_call(step, (const kiln_tensor *[]){x, y}, 2, &loss, 1);
 *
 * Variables live in a store that owns them; graphs read them by name, and every
 * assignment a graph makes is applied after its run, so all reads in one run see
 * the values from before it. The store must outlive graphs, execs and functions
 * that use it. */
#ifndef KILN_TRAIN_H
#define KILN_TRAIN_H

#include <stdbool.h>
#include "kiln/exec.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- variables ---- */

typedef struct kiln_variables kiln_variables;
typedef struct kiln_variable kiln_variable;

typedef enum kiln_init_kind {
  KILN_INIT_ZEROS = 0,
  KILN_INIT_ONES,
  KILN_INIT_CONSTANT,       /* a */
  KILN_INIT_UNIFORM,        /* [a, b) */
  KILN_INIT_NORMAL,         /* mean a, standard deviation b */
  KILN_INIT_GLOROT_UNIFORM, /* Keras: U(-l, l), l = sqrt(6 / (fan_in + fan_out)) */
  KILN_INIT_HE_NORMAL,      /* Keras: normal truncated at 2 sd, sd = sqrt(2 / fan_in) / .8796 */
  KILN_INIT_ORTHOGONAL,     /* Keras: Q of the QR of a normal [prod(dims[:-1]), dims[-1]] matrix */
} kiln_init_kind;

/* Fans follow Keras: [in, out] for matrices, HWIO filters multiply by kh*kw. */
typedef struct kiln_initializer {
  kiln_init_kind kind;
  double a, b;
} kiln_initializer;
#define KILN_ZEROS ((kiln_initializer){KILN_INIT_ZEROS, 0, 0})
#define KILN_ONES ((kiln_initializer){KILN_INIT_ONES, 0, 0})
#define KILN_CONSTANT(v) ((kiln_initializer){KILN_INIT_CONSTANT, (v), 0})
#define KILN_UNIFORM(lo, hi) ((kiln_initializer){KILN_INIT_UNIFORM, (lo), (hi)})
#define KILN_NORMAL(mean, sd) ((kiln_initializer){KILN_INIT_NORMAL, (mean), (sd)})
#define KILN_GLOROT_UNIFORM ((kiln_initializer){KILN_INIT_GLOROT_UNIFORM, 0, 0})
#define KILN_HE_NORMAL ((kiln_initializer){KILN_INIT_HE_NORMAL, 0, 0})
#define KILN_ORTHOGONAL ((kiln_initializer){KILN_INIT_ORTHOGONAL, 0, 0})

/* Random initializers draw from a counter RNG keyed by (seed, variable name), so
 * a variable's initial value does not depend on creation order. */
KILN_API kiln_variables *kiln_variables_new(uint64_t seed);
KILN_API void kiln_variables_free(kiln_variables *vs);
/* Names are unique in a store. *out is owned by the store. */
KILN_API kiln_status kiln_variable_new(kiln_variables *vs, const char *name, kiln_dtype t, kiln_shape s,
                                       kiln_initializer init, bool trainable, kiln_variable **out);
KILN_API kiln_variable *kiln_variables_find(const kiln_variables *vs, const char *name); /* NULL if absent */
KILN_API size_t kiln_variables_count(const kiln_variables *vs);
KILN_API kiln_variable *kiln_variables_at(const kiln_variables *vs, size_t i); /* creation order */
KILN_API const char *kiln_variable_name(const kiln_variable *v);
/* The variable's current value, owned by the variable; callers may read and write its data. */
KILN_API kiln_tensor *kiln_variable_value(kiln_variable *v);
KILN_API bool kiln_variable_trainable(const kiln_variable *v);
/* Frozen variables (trainable = false) are skipped by optimizers, like Keras' layer.trainable. */
KILN_API void kiln_variable_set_trainable(kiln_variable *v, bool trainable);
/* Copies t (same dtype and shape) into the variable. */
KILN_API kiln_status kiln_variable_set(kiln_variable *v, const kiln_tensor *t);

/* In a graph: the variable's value at the start of the run. */
KILN_API kiln_value kiln_variable_read(kiln_graph *g, kiln_variable *v);
/* In a graph: give the variable value x (same dtype and shape) once the run has finished. */
KILN_API kiln_status kiln_variable_assign(kiln_graph *g, kiln_variable *v, kiln_value x);
/* Binds a graph that reads variables by name (e.g. one parsed from text) to a store. */
KILN_API kiln_status kiln_graph_bind_variables(kiln_graph *g, kiln_variables *vs);

/* ---- checkpoints ---- */

typedef struct kiln_checkpoint_info {
  int64_t step;  /* optimizer iterations */
  int64_t epoch; /* epochs completed */
  uint64_t seed;
} kiln_checkpoint_info;

/* Writes every variable of vs (with CRC32C checksums) atomically: a crash leaves
 * the previous file or the new one. info may be NULL. */
KILN_API kiln_status kiln_checkpoint_save(const kiln_variables *vs, const char *path, const kiln_checkpoint_info *info);
/* Restores vs from path. Nothing changes unless the whole file checks out: bad magic,
 * truncation, checksum failures, and variables of vs missing from the file or
 * differing in dtype/shape are errors naming them. Variables in the file that vs
 * lacks are created (optimizer slots not made yet), or are errors when strict. */
KILN_API kiln_status kiln_checkpoint_restore(kiln_variables *vs, const char *path, bool strict,
                                             kiln_checkpoint_info *info);

/* ---- tf.function: trace once per input signature, compile, cache ---- */

typedef struct kiln_function kiln_function;
/* Builds the graph from placeholders `in` (one per call input); declares outputs with
 * kiln_output. Runs once per new signature, not once per call. */
typedef void (*kiln_trace_fn)(kiln_graph *g, const kiln_value *in, size_t nin, void *userdata);

typedef struct kiln_function_options {
  /* Trace dim 0 of every input as the symbolic batch dim, so batch sizes share one
   * trace (each size is still specialised by the JIT). */
  bool dynamic_batch;
  kiln_compile_options compile;
} kiln_function_options;

KILN_API kiln_function *kiln_function_new(kiln_trace_fn fn, void *userdata, const kiln_function_options *opts);
KILN_API void kiln_function_free(kiln_function *f);
/* Traces and compiles on the first call with this signature (dtypes and shapes of
 * inputs), then runs; outputs[i] are new tensors owned by the caller. */
KILN_API kiln_status kiln_function_call(kiln_function *f, const kiln_tensor *const *inputs, size_t nin,
                                        kiln_tensor **outputs, size_t nout);
/* How many times fn has been traced (one per distinct signature). */
KILN_API size_t kiln_function_trace_count(const kiln_function *f);
/* The graph traced for the most recent call's signature, or NULL. */
KILN_API const kiln_graph *kiln_function_graph(const kiln_function *f);

/* ---- optimizers: the update is part of the compiled step ---- */

typedef enum kiln_optimizer_kind {
  KILN_OPT_SGD = 0,
  KILN_OPT_RMSPROP,
  KILN_OPT_ADAM,
  KILN_OPT_ADAMW,
  KILN_OPT_ADAGRAD,
  KILN_OPT_ADADELTA,
  KILN_OPT_NADAM,
  KILN_OPT_COUNT
} kiln_optimizer_kind;

typedef enum kiln_lr_schedule {
  KILN_LR_CONSTANT = 0,
  KILN_LR_EXPONENTIAL, /* lr * decay_rate ^ (step / decay_steps), floored exponent if staircase */
  KILN_LR_STEP,        /* lr * decay_rate ^ floor(step / decay_steps) */
} kiln_lr_schedule;

/* Start from kiln_optimizer_defaults(kind): Keras' defaults for that optimizer. */
typedef struct kiln_optimizer_config {
  kiln_optimizer_kind kind;
  double learning_rate;
  double momentum;     /* SGD, RMSprop */
  bool nesterov;       /* SGD */
  double rho;          /* RMSprop, Adadelta */
  double beta_1, beta_2;
  double epsilon;
  double weight_decay; /* AdamW (decoupled) */
  double initial_accumulator_value; /* Adagrad */
  /* At most one clipping mode (0 = off): each gradient's norm, all gradients' joint norm, or each value. */
  double clipnorm, global_clipnorm, clipvalue;
  kiln_lr_schedule schedule;
  double decay_steps, decay_rate;
  bool staircase;
} kiln_optimizer_config;

typedef struct kiln_optimizer kiln_optimizer;

KILN_API kiln_optimizer_config kiln_optimizer_defaults(kiln_optimizer_kind kind);
/* Kinds by Keras name: "sgd", "rmsprop", "adam", "adamw", "adagrad", "adadelta", "nadam". */
KILN_API kiln_status kiln_optimizer_kind_from_name(const char *name, kiln_optimizer_kind *out);
/* name prefixes the optimizer's variables ("<name>/iterations", "<name>/<var>/m", ...). */
KILN_API kiln_status kiln_optimizer_new(const kiln_optimizer_config *cfg, const char *name, kiln_optimizer **out);
KILN_API void kiln_optimizer_free(kiln_optimizer *o);
KILN_API const kiln_optimizer_config *kiln_optimizer_config_of(const kiln_optimizer *o);
/* In a graph: updates each trainable vars[i] from grads[i] (frozen ones are skipped)
 * and advances the iteration counter, all as variable assignments. Slots (moments,
 * accumulators), the counter and the learning rate are variables in vars[0]'s store,
 * created on first use, so checkpoints hold them. */
KILN_API kiln_status kiln_optimizer_apply(kiln_optimizer *o, kiln_graph *g, kiln_variable *const *vars,
                                          const kiln_value *grads, size_t n);
/* The learning-rate variable (the base rate before any schedule); NULL before the first apply. */
KILN_API kiln_variable *kiln_optimizer_learning_rate(const kiln_optimizer *o);
KILN_API kiln_variable *kiln_optimizer_iterations(const kiln_optimizer *o);

#ifdef __cplusplus
}
#endif
#endif

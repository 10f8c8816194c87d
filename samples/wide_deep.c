/* Seed 002's Wide & Deep model on the housing table (samples/housing.h), three ways:
 *  1. functional: two inputs (wide = the first 5 features, deep = the other 8), the deep
 *     path Dense 30 relu -> Dense 30 relu, concatenated with the wide input -> Dense 1;
 *  2. the same with an auxiliary output on the deep path and loss weights 0.9 / 0.1;
 *  3. subclassed (keras.Model subclassing): a WideDeepModel layer class that creates
 *     its sub-layers in build and composes them in call, wrapped by kiln_model_subclassed.
 * Forms 1 and 3 are the same model: with the functional layers given the subclassed
 * model's weight names they start from the same weights and train to the same result.
 *   wide_deep [--epochs N] [--seed S] [--data CSV] */
#include <kiln/kiln.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "housing.h"

#define WIDE 5
#define DEEP (HOUSING_FEATURES - WIDE)

static int fail(const char *what) {
  fprintf(stderr, "wide_deep: %s: %s\n", what, kiln_errmsg());
  return 1;
}

/* Columns [from, to) of x [rows, features]. */
static kiln_tensor *columns(const kiln_tensor *x, int64_t from, int64_t to) {
  int64_t rows = kiln_tensor_dims(x)[0], f = kiln_tensor_dims(x)[1];
  kiln_tensor *t = kiln_tensor_new(KILN_F32, 2, (int64_t[]){rows, to - from});
  for (int64_t r = 0; t && r < rows; r++)
    memcpy((float *)kiln_tensor_data(t) + r * (to - from), (const float *)kiln_tensor_cdata(x) + r * f + from,
           sizeof(float) * (size_t)(to - from));
  return t;
}

/* ---- form 3: the subclassed model ---- */

typedef struct wide_deep {
  kiln_layer *hidden1, *hidden2, *concat, *main;
} wide_deep;

static kiln_status wide_deep_build(kiln_layer *l, const kiln_shape *in, size_t n) {
  wide_deep *w = kiln_layer_state(l);
  w->hidden1 = kiln_layer_track(l, kiln_layer_named(kiln_layer_dense(30, KILN_ACT_RELU), "hidden1"));
  w->hidden2 = kiln_layer_track(l, kiln_layer_named(kiln_layer_dense(30, KILN_ACT_RELU), "hidden2"));
  w->concat = kiln_layer_track(l, kiln_layer_concatenate(-1));
  w->main = kiln_layer_track(l, kiln_layer_named(kiln_layer_dense(1, KILN_ACT_LINEAR), "main"));
  return w->hidden1 && w->hidden2 && w->concat && w->main ? KILN_OK : KILN_ERR_NOMEM;
}

static kiln_value wide_deep_call(kiln_layer *l, kiln_graph *g, const kiln_value *x, size_t n, bool training) {
  wide_deep *w = kiln_layer_state(l);
  kiln_value h = kiln_layer_call(w->hidden1, g, &x[1], 1, training);
  h = kiln_layer_call(w->hidden2, g, &h, 1, training);
  kiln_value both[2] = {x[0], h};
  kiln_value c = kiln_layer_call(w->concat, g, both, 2, training);
  return kiln_layer_call(w->main, g, &c, 1, training);
}

static const kiln_layer_class WIDE_DEEP = {"WideDeepModel", 2, wide_deep_build, wide_deep_call, free};

/* ---- forms 1 and 2: functional ---- */

static kiln_model *functional(unsigned long long seed, bool aux) {
  kiln_model *m = kiln_model_new("wide_deep", seed);
  kiln_ktensor wide = kiln_model_input(m, "wide", KILN_F32, KILN_SHAPE(WIDE));
  kiln_ktensor deep = kiln_model_input(m, "deep", KILN_F32, KILN_SHAPE(DEEP));
  /* the subclassed model's weight names, so both forms start from the same weights */
  kiln_ktensor h = kiln_model_apply1(m, kiln_layer_named(kiln_layer_dense(30, KILN_ACT_RELU), "wide_deep/hidden1"), deep);
  h = kiln_model_apply1(m, kiln_layer_named(kiln_layer_dense(30, KILN_ACT_RELU), "wide_deep/hidden2"), h);
  kiln_ktensor both[2] = {wide, h};
  kiln_ktensor c = kiln_model_apply(m, kiln_layer_concatenate(-1), both, 2);
  kiln_model_output(m, "output", kiln_model_apply1(m, kiln_layer_named(kiln_layer_dense(1, KILN_ACT_LINEAR), "wide_deep/main"), c));
  if (aux) kiln_model_output(m, "aux_output", kiln_model_apply1(m, kiln_layer_dense(1, KILN_ACT_LINEAR), h));
  return m;
}

/* Fits with EarlyStopping and returns the test MSE of the main output. */
static int train(kiln_model *m, bool aux, const kiln_tensor *const *x_train, const kiln_tensor *y_train,
                 const kiln_tensor *const *x_valid, const kiln_tensor *y_valid, const kiln_tensor *const *x_test,
                 const kiln_tensor *y_test, int epochs, double *mse) {
  kiln_optimizer_config oc = kiln_optimizer_defaults(KILN_OPT_SGD);
  oc.learning_rate = 1e-3;
  kiln_output_loss heads[2] = {{.output = "output", .loss = "mse", .weight = 0.9},
                               {.output = "aux_output", .loss = "mse", .weight = 0.1}};
  kiln_model_compile_options co = {.optimizer_config = &oc, .loss = "mse"};
  if (aux) co.outputs = heads, co.noutputs = 2;
  if (!m || kiln_model_compile(m, &co) != KILN_OK) return fail("compile");
  const kiln_tensor *ys[2] = {y_train, y_train}, *yv[2] = {y_valid, y_valid}, *yt[2] = {y_test, y_test};
  kiln_arrays train = {x_train, 2, ys, aux ? 2 : 1, NULL}, valid = {x_valid, 2, yv, aux ? 2 : 1, NULL};
  kiln_arrays test = {x_test, 2, yt, aux ? 2 : 1, NULL};
  kiln_callback stop = kiln_early_stopping("val_loss", 0, 10, true);
  kiln_fit_options fo = kiln_fit_defaults();
  fo.epochs = epochs, fo.verbose = 0, fo.validation = &valid, fo.callbacks = &stop, fo.ncallbacks = 1;
  kiln_history *h = NULL;
  kiln_status st = kiln_model_fit_arrays(m, &train, &fo, &h);
  double res[3];
  if (st == KILN_OK) st = kiln_model_evaluate_arrays(m, &test, 32, res, aux ? 3 : 1);
  *mse = aux ? res[1] : res[0]; /* with two heads: loss, output_loss, aux_output_loss */
  if (st == KILN_OK) printf("  %zu epochs", kiln_history_epochs(h));
  kiln_history_free(h);
  kiln_callback_free(&stop);
  return st != KILN_OK ? fail("fit") : 0;
}

int main(int argc, char **argv) {
  int epochs = 300;
  unsigned long long seed = 42;
  const char *path = NULL;
  if (!housing_args(argc, argv, "wide_deep", &epochs, &seed, &path)) return 2;
  housing d;
  if (housing_load(path, seed, &d) != KILN_OK) return fail("load (apt-get install python3-sklearn)");
  kiln_tensor *xs[6] = {columns(d.x_train, 0, WIDE), columns(d.x_train, WIDE, HOUSING_FEATURES),
                        columns(d.x_valid, 0, WIDE), columns(d.x_valid, WIDE, HOUSING_FEATURES),
                        columns(d.x_test, 0, WIDE),  columns(d.x_test, WIDE, HOUSING_FEATURES)};
  const kiln_tensor *tr[2] = {xs[0], xs[1]}, *va[2] = {xs[2], xs[3]}, *te[2] = {xs[4], xs[5]};
  double mse[3];
  int rc = 0;
  for (int form = 0; form < 3 && !rc; form++) {
    kiln_model *m;
    if (form < 2) {
      m = functional(seed, form == 1);
    } else {
      kiln_input_spec in[2] = {{"wide", KILN_F32, KILN_SHAPE(WIDE)}, {"deep", KILN_F32, KILN_SHAPE(DEEP)}};
      m = kiln_model_subclassed("wide_deep", seed, kiln_layer_new(&WIDE_DEEP, NULL, calloc(1, sizeof(wide_deep))), in, 2,
                                "output");
    }
    static const char *names[3] = {"functional", "functional + auxiliary output (0.9 / 0.1)", "subclassed"};
    printf("%s:", names[form]);
    rc = train(m, form == 1, tr, d.y_train, va, d.y_valid, te, d.y_test, epochs, &mse[form]);
    if (!rc) printf(", test MSE %.4f\n", mse[form]);
    if (form == 2 && !rc) kiln_model_summary(m, stdout);
    kiln_model_free(m);
  }
  if (!rc) printf("functional and subclassed forms agree: %s\n", mse[0] == mse[2] ? "yes (bit for bit)" : "NO");
  for (int i = 0; i < 6; i++) kiln_tensor_free(xs[i]);
  housing_free(&d);
  return rc || mse[0] != mse[2];
}

/* Seed 002's housing regression in C: the housing table (samples/housing.h: split with
 * a seed, standardized per feature on the training split), an MLP (Dense 30 relu -> Dense 1) trained with SGD on the mean
 * squared error with EarlyStopping on the validation loss, and its test MSE printed
 * beside a plain linear least-squares fit of the same training split.
 *   regression [--epochs N] [--seed S] [--data CSV] */
#include <kiln/kiln.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "housing.h"

static int fail(const char *what) {
  fprintf(stderr, "regression: %s: %s\n", what, kiln_errmsg());
  return 1;
}

/* Least squares with an intercept, by the normal equations (14 unknowns: Gaussian
 * elimination with partial pivoting is plenty); returns the test MSE. */
static double linear_baseline(const kiln_tensor *xtr, const kiln_tensor *ytr, const kiln_tensor *xte, const kiln_tensor *yte) {
  enum { F = HOUSING_FEATURES, K = F + 1 };
  double a[K][K + 1] = {{0}};
  const float *x = kiln_tensor_cdata(xtr), *y = kiln_tensor_cdata(ytr);
  int64_t n = kiln_tensor_dims(xtr)[0];
  for (int64_t r = 0; r < n; r++) {
    double row[K];
    for (int j = 0; j < F; j++) row[j] = x[r * F + j];
    row[F] = 1;
    for (int i = 0; i < K; i++) {
      for (int j = 0; j < K; j++) a[i][j] += row[i] * row[j];
      a[i][K] += row[i] * y[r];
    }
  }
  for (int c = 0; c < K; c++) {
    int p = c;
    for (int r = c + 1; r < K; r++)
      if (fabs(a[r][c]) > fabs(a[p][c])) p = r;
    for (int j = 0; j <= K; j++) {
      double t = a[c][j];
      a[c][j] = a[p][j], a[p][j] = t;
    }
    for (int r = 0; r < K; r++)
      if (r != c) {
        double f = a[r][c] / a[c][c];
        for (int j = c; j <= K; j++) a[r][j] -= f * a[c][j];
      }
  }
  const float *xt = kiln_tensor_cdata(xte), *yt = kiln_tensor_cdata(yte);
  int64_t m = kiln_tensor_dims(xte)[0];
  double se = 0;
  for (int64_t r = 0; r < m; r++) {
    double pred = a[F][K] / a[F][F];
    for (int j = 0; j < F; j++) pred += xt[r * F + j] * a[j][K] / a[j][j];
    se += (pred - yt[r]) * (pred - yt[r]);
  }
  return se / (double)m;
}

int main(int argc, char **argv) {
  int epochs = 300;
  unsigned long long seed = 42;
  const char *path = NULL;
  if (!housing_args(argc, argv, "regression", &epochs, &seed, &path)) return 2;
  housing d;
  if (housing_load(path, seed, &d) != KILN_OK) return fail("load (apt-get install python3-sklearn)");
  kiln_tensor *x_train = d.x_train, *y_train = d.y_train, *x_test = d.x_test, *y_test = d.y_test;
  kiln_model *m = kiln_sequential_new("housing", seed);
  kiln_model_add(m, kiln_layer_dense(30, KILN_ACT_RELU));
  kiln_model_add(m, kiln_layer_dense(1, KILN_ACT_LINEAR));
  kiln_optimizer_config oc = kiln_optimizer_defaults(KILN_OPT_SGD);
  oc.learning_rate = 1e-3;
  kiln_model_compile_options mc = {.optimizer_config = &oc, .loss = "mse"};
  if (kiln_model_compile(m, &mc) != KILN_OK) return fail("compile");
  kiln_callback stop = kiln_early_stopping("val_loss", 0, 10, true);
  kiln_fit_options fo = kiln_fit_defaults();
  fo.epochs = epochs, fo.verbose = 0, fo.validation_x = d.x_valid, fo.validation_y = d.y_valid;
  fo.callbacks = &stop, fo.ncallbacks = 1;
  kiln_history *h;
  if (kiln_model_fit(m, x_train, y_train, &fo, &h) != KILN_OK) return fail("fit");
  double mse;
  if (kiln_model_evaluate(m, x_test, y_test, 32, &mse, 1) != KILN_OK) return fail("evaluate");
  size_t ran = kiln_history_epochs(h);
  double best = INFINITY;
  for (size_t e = 0; e < ran; e++) best = fmin(best, kiln_history_get(h, "val_loss")[e]);
  printf("%lld train, %lld validation, %lld test rows; %zu epochs (early stopping), best val_loss %.3f\n",
         (long long)kiln_tensor_dims(x_train)[0], (long long)kiln_tensor_dims(d.x_valid)[0],
         (long long)kiln_tensor_dims(x_test)[0], ran, best);
  printf("test MSE: MLP %.3f, linear least squares %.3f\n", mse, linear_baseline(x_train, y_train, x_test, y_test));
  kiln_history_free(h);
  kiln_callback_free(&stop);
  kiln_model_free(m);
  housing_free(&d);
  return 0;
}

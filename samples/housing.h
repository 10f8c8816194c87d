/* The housing table of seed 002, shared by samples/regression.c, wide_deep.c and
 * hparam_search.c: Debian's python3-sklearn ships the Boston housing prices CSV (506
 * rows, 13 features, the median value as target). Split as the tutorial does — 20 %
 * test, then 20 % of the rest for validation — with a seed, and standardized per
 * feature on the training split. */
#ifndef KILN_SAMPLES_HOUSING_H
#define KILN_SAMPLES_HOUSING_H
#include <kiln/kiln.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HOUSING_CSV "/usr/lib/python3/dist-packages/sklearn/datasets/data/boston_house_prices.csv"
#define HOUSING_FEATURES 13

typedef struct housing {
  kiln_tensor *x_train, *y_train, *x_valid, *y_valid, *x_test, *y_test; /* y: [rows, 1] */
} housing;

/* The options of regression and wide_deep: --epochs N, --seed S, --data CSV. False
 * (after printing the usage) on anything else. */
static inline bool housing_args(int argc, char **argv, const char *prog, int *epochs, unsigned long long *seed, const char **path) {
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--epochs") && i + 1 < argc) *epochs = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--seed") && i + 1 < argc) *seed = strtoull(argv[++i], NULL, 10);
    else if (!strcmp(argv[i], "--data") && i + 1 < argc) *path = argv[++i];
    else return fprintf(stderr, "usage: %s [--epochs N] [--seed S] [--data CSV]\n", prog), false;
  }
  return true;
}

static inline void housing_free(housing *h) {
  kiln_tensor *all[] = {h->x_train, h->y_train, h->x_valid, h->y_valid, h->x_test, h->y_test};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) kiln_tensor_free(all[i]);
}

static inline kiln_status housing_load(const char *path, unsigned long long seed, housing *h) {
  /* The file's first line is a preamble ("506,13,..."), the second the column names. */
  kiln_csv_options co = {.header = true, .skip_lines = 1, .label_column = HOUSING_FEATURES, .label_dtype = KILN_F32};
  kiln_tensor *x, *y;
  kiln_status st = kiln_csv_load(path ? path : HOUSING_CSV, &co, &x, &y);
  if (st != KILN_OK) return st;
  int64_t n = kiln_tensor_dims(x)[0], test = n / 5, valid = (n - test) / 5;
  kiln_tensor *y2 = kiln_tensor_from_data(KILN_F32, 2, (int64_t[]){n, 1}, kiln_tensor_cdata(y), kiln_tensor_nbytes(y));
  *h = (housing){kiln_tensor_shuffled_rows(x, seed, test + valid, n), kiln_tensor_shuffled_rows(y2, seed, test + valid, n),
                 kiln_tensor_shuffled_rows(x, seed, test, test + valid), kiln_tensor_shuffled_rows(y2, seed, test, test + valid),
                 kiln_tensor_shuffled_rows(x, seed, 0, test),            kiln_tensor_shuffled_rows(y2, seed, 0, test)};
  kiln_tensor_free(x);
  kiln_tensor_free(y);
  kiln_tensor_free(y2);
  kiln_scaler *s = NULL;
  st = h->x_train && h->y_train && h->x_valid && h->y_valid && h->x_test && h->y_test ? kiln_scaler_fit(h->x_train, &s)
                                                                                     : KILN_ERR_NOMEM;
  if (st == KILN_OK) st = kiln_scaler_apply(s, h->x_train);
  if (st == KILN_OK) st = kiln_scaler_apply(s, h->x_valid);
  if (st == KILN_OK) st = kiln_scaler_apply(s, h->x_test);
  kiln_scaler_free(s);
  if (st != KILN_OK) housing_free(h);
  return st;
}
#endif

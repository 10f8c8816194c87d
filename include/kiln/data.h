/* kiln data loading: IDX files (MNIST, Fashion-MNIST) and standardization.
 *
 *   kiln_tensor *x, *y;
 *   kiln_idx_load("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz", KILN_F32, &x);
 *   kiln_idx_load("/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz", KILN_I32, &y);
 *   kiln_standardizer s;
 *   kiln_standardizer_fit(x, &s);        // on the training set only
 *   kiln_standardizer_apply(&s, x);      // and the same s on validation and test sets */
#ifndef KILN_DATA_H
#define KILN_DATA_H

#include "kiln/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Reads an IDX file, gzip-compressed or raw, converting its elements to dtype t.
 * Malformed headers, unknown element types, truncated or oversized data are errors
 * that name the file and the problem. */
KILN_API kiln_status kiln_idx_load(const char *path, kiln_dtype t, kiln_tensor **out);

/* CSV of numbers: x receives the feature columns as f32 [rows, cols]; with
 * label_column >= 0 that column goes to y instead, as label_dtype [rows] (NULL y
 * otherwise). Empty lines are skipped; a ragged row or a cell that is not a number
 * is an error naming the line and column. */
typedef struct kiln_csv_options {
  char delimiter;        /* 0 means ',' */
  bool header;           /* skip the first line */
  int label_column;      /* -1: none (0 with designated initializers means column 0) */
  kiln_dtype label_dtype;
  int skip_lines;        /* lines before the header (or the data): a file's preamble */
} kiln_csv_options;
KILN_API kiln_status kiln_csv_load(const char *path, const kiln_csv_options *o, kiln_tensor **x, kiln_tensor **y);

/* One mean and standard deviation over all elements (like StandardScaler on x.reshape(-1, 1)). */
typedef struct kiln_standardizer {
  double mean, std;
} kiln_standardizer;
KILN_API kiln_status kiln_standardizer_fit(const kiln_tensor *x, kiln_standardizer *s);
/* x = (x - mean) / std in place (x is f32 or f64; std 0 leaves x - mean). */
KILN_API kiln_status kiln_standardizer_apply(const kiln_standardizer *s, kiln_tensor *x);

/* A mean and standard deviation per feature (the last axis), like scikit-learn's
 * StandardScaler: fit on the training split, apply to every split. */
typedef struct kiln_scaler kiln_scaler;
KILN_API kiln_status kiln_scaler_fit(const kiln_tensor *x, kiln_scaler **out);
/* x = (x - mean) / std per feature, in place; x has the fitted feature count. A feature
 * with std 0 is only centred. */
KILN_API kiln_status kiln_scaler_apply(const kiln_scaler *s, kiln_tensor *x);
KILN_API void kiln_scaler_free(kiln_scaler *s);

/* Rows [from, to) of t after a shuffle of its rows seeded by `seed` (the same order for
 * every tensor with as many rows), as a new tensor: train_test_split's pieces, e.g.
 * x_test = kiln_tensor_shuffled_rows(x, 42, 0, n / 5), x_train = ...(x, 42, n / 5, n).
 * NULL with the reason in kiln_errmsg() on bad arguments. */
KILN_API kiln_tensor *kiln_tensor_shuffled_rows(const kiln_tensor *t, uint64_t seed, int64_t from, int64_t to);

#ifdef __cplusplus
}
#endif
#endif

/* A short last batch (fit, validation, evaluate, predict) runs through the code
 * compiled for the full batch, padded with rows of weight zero, when the model keeps
 * rows apart; its results equal the reference evaluator run at the short size. A model
 * with batch statistics compiles the short size instead, with the same results. */
#include <math.h>
#include <string.h>
#include "frontend/model_impl.h"
#include "harness.h"

enum { NTRAIN = 84, NVAL = 50, BATCH = 32 }; /* batches of 32, 32 and 20; 32 and 18 */

static void blobs(uint64_t seed, int64_t n, kiln_tensor **x, kiln_tensor **y) {
  trng r = {seed};
  *x = kiln_tensor_new(KILN_F32, 2, (int64_t[]){n, 3});
  *y = kiln_tensor_new(KILN_I32, 1, (int64_t[]){n});
  float *xd = kiln_tensor_data(*x);
  int32_t *yd = kiln_tensor_data(*y);
  for (int64_t i = 0; i < n; i++) {
    yd[i] = (int32_t)(i % 3);
    for (int k = 0; k < 3; k++) xd[3 * i + k] = (float)((k == yd[i] ? 1.5 : 0) + trng_real(&r, -1, 1));
  }
}

static kiln_model *model(bool batch_norm) {
  kiln_model *m = kiln_sequential_new("short", 41);
  kiln_model_add(m, kiln_layer_dense(8, KILN_ACT_RELU));
  if (batch_norm) kiln_model_add(m, kiln_layer_batch_normalization());
  kiln_model_add(m, kiln_layer_dense(3, KILN_ACT_SOFTMAX));
  kiln_model_compile_options o = {.optimizer = "adam", .loss = "sparse_categorical_crossentropy",
                                  .metrics = (const char *[]){"accuracy"}, .nmetrics = 1};
  assert_int_equal(kiln_model_compile(m, &o), KILN_OK);
  assert_int_equal(kiln_model_build(m, KILN_F32, KILN_SHAPE(3)), KILN_OK);
  return m;
}

/* JIT compiles so far: every one looks in the cache, which the tests keep on. */
static uint64_t compiles(void) {
  kiln_cache_stats s;
  kiln_cache_get_stats(&s);
  return s.hits + s.misses;
}

static kiln_tensor *rows(const kiln_tensor *t, int64_t lo, int64_t hi) {
  int64_t dims[KILN_MAX_RANK];
  memcpy(dims, kiln_tensor_dims(t), sizeof(int64_t) * (size_t)kiln_tensor_rank(t));
  size_t row = kiln_tensor_nbytes(t) / (size_t)dims[0];
  dims[0] = hi - lo;
  return kiln_tensor_from_data(kiln_tensor_dtype(t), kiln_tensor_rank(t), dims,
                               (const char *)kiln_tensor_cdata(t) + (size_t)lo * row, (size_t)(hi - lo) * row);
}

static void assert_close(const char *what, double got, double want) {
  if (fabs(got - want) > 1e-5 * (1 + fabs(want))) fail_msg("%s: %.9g, the evaluator %.9g", what, got, want);
}

/* One epoch of fit (validation included) against the evaluator replaying the train
 * graph batch by batch on an identical model; returns fit's compile count. */
static uint64_t fit_matches_evaluator(bool batch_norm, kiln_model **trained) {
  kiln_tensor *x, *y, *vx, *vy;
  blobs(3, NTRAIN, &x, &y);
  blobs(4, NVAL, &vx, &vy);
  kiln_model *m = model(batch_norm), *ref = model(batch_norm);
  kiln_fit_options fo = kiln_fit_defaults();
  fo.batch_size = BATCH;
  fo.shuffle = false;
  fo.verbose = 0;
  fo.validation_x = vx, fo.validation_y = vy;
  kiln_history *h;
  uint64_t before = compiles();
  if (kiln_model_fit(m, x, y, &fo, &h) != KILN_OK) fail_msg("%s", kiln_errmsg());
  uint64_t n = compiles() - before;

  kiln_graph *g = kiln_model_train_graph(ref);
  assert_non_null(g);
  double loss = 0;
  for (int64_t lo = 0; lo < NTRAIN; lo += BATCH) {
    int64_t hi = lo + BATCH < NTRAIN ? lo + BATCH : NTRAIN;
    kiln_tensor *bx = rows(x, lo, hi), *by = rows(y, lo, hi), *l;
    if (kiln_evaluate(g, (const kiln_tensor *[]){bx, by}, 2, &l, 1) != KILN_OK) fail_msg("%s", kiln_errmsg());
    loss += *(const float *)kiln_tensor_cdata(l) * (double)(hi - lo);
    kiln_tensor_free(bx), kiln_tensor_free(by), kiln_tensor_free(l);
  }
  kiln_graph_free(g);
  assert_close("epoch loss", kiln_history_get(h, "loss")[0], loss / NTRAIN);
  kiln_variables *a = kiln_model_variables(m), *b = kiln_model_variables(ref);
  assert_int_equal(kiln_variables_count(a), kiln_variables_count(b));
  for (size_t i = 0; i < kiln_variables_count(a); i++) {
    kiln_variable *va = kiln_variables_at(a, i), *vb = kiln_variables_find(b, kiln_variable_name(va));
    assert_non_null(vb);
    if (kiln_tensor_dtype(kiln_variable_value(va)) != KILN_F32) continue;
    assert_int_equal(compare_tensors(kiln_variable_name(va), kiln_variable_value(va), kiln_variable_value(vb), 1e-5, 1e-6), 0);
  }
  /* validation: the identical weights evaluated in one batch of 50 */
  double res[2];
  assert_int_equal(kiln_model_evaluate(ref, vx, vy, NVAL, res, 2), KILN_OK);
  assert_close("val_loss", kiln_history_get(h, "val_loss")[0], res[0]);
  assert_close("val_accuracy", kiln_history_get(h, "val_accuracy")[0], res[1]);
  printf("    %s: fit compiled %llu functions; loss %.6f, val_loss %.6f\n", batch_norm ? "with batch norm" : "dense",
         (unsigned long long)n, loss / NTRAIN, res[0]);

  /* evaluate and predict with short last batches against one batch of the whole set */
  kiln_tensor *p, *want;
  assert_int_equal(kiln_model_predict(ref, vx, NVAL, &want), KILN_OK);
  before = compiles();
  double short_res[2];
  assert_int_equal(kiln_model_evaluate(m, vx, vy, BATCH, short_res, 2), KILN_OK);
  assert_close("evaluate, batches of 32", short_res[0], res[0]);
  assert_close("evaluate accuracy", short_res[1], res[1]);
  assert_int_equal(kiln_model_predict(m, vx, BATCH, &p), KILN_OK);
  assert_int_equal(kiln_tensor_dims(p)[0], NVAL);
  assert_int_equal(compare_tensors("predict", p, want, 1e-5, 1e-6), 0);
  /* predict's function at 32, which its last 18 rows reuse; evaluate reuses fit's
   * (inference uses batch norm's moving statistics, which keep rows apart) */
  assert_int_equal(compiles() - before, 1);

  kiln_tensor_free(p), kiln_tensor_free(want);
  kiln_history_free(h);
  kiln_model_free(ref);
  kiln_tensor_free(x), kiln_tensor_free(y), kiln_tensor_free(vx), kiln_tensor_free(vy);
  *trained = m;
  return n;
}

static void test_short_batches_reuse_the_full_batch_code(void **state) {
  kiln_model *m;
  assert_int_equal(fit_matches_evaluator(false, &m), 2); /* the train step and evaluation, at 32 */
  assert_int_equal(m->rows_train, ROWS_APART);
  assert_int_equal(m->rows_eval, ROWS_APART);
  assert_int_equal(m->rows_predict, ROWS_APART);
  kiln_model_free(m);
}

static void test_batch_statistics_compile_the_short_size(void **state) {
  kiln_model *m;
  assert_int_equal(fit_matches_evaluator(true, &m), 3); /* train step at 32 and 20; evaluation uses moving stats */
  assert_int_equal(m->rows_train, ROWS_MIXED);
  assert_int_equal(m->rows_eval, ROWS_APART);
  kiln_model_free(m);
}

int main(void) {
  setenv("KILN_CACHE", "1", 1); /* compiles are counted through the cache's counters */
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_short_batches_reuse_the_full_batch_code),
      cmocka_unit_test(test_batch_statistics_compile_the_short_size),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

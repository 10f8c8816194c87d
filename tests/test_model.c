/* Keras-style API: IDX loading, standardization, layers, activations, losses and
 * metrics against hand-computed values, summary, fit/evaluate/predict and their
 * errors. */
#include <math.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>
#include "frontend/model_impl.h"
#include "harness.h"

/* ---- IDX ---- */

static void write_file(const char *path, const void *data, size_t n, bool gz) {
  if (gz) {
    gzFile f = gzopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(gzwrite(f, data, (unsigned)n), (int)n);
    gzclose(f);
  } else {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    fclose(f);
  }
}

static void test_idx(void **state) {
  /* 2 x 3 u8 */
  unsigned char ok[] = {0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 250, 0, 7};
  char path[] = "/tmp/kiln_idx_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  for (int gz = 0; gz < 2; gz++) {
    write_file(path, ok, sizeof ok, gz);
    kiln_tensor *t;
    assert_int_equal(kiln_idx_load(path, KILN_F32, &t), KILN_OK);
    assert_int_equal(kiln_tensor_rank(t), 2);
    assert_int_equal(kiln_tensor_dims(t)[1], 3);
    assert_true(((float *)kiln_tensor_data(t))[3] == 250.0f);
    kiln_tensor_free(t);
    /* Truncated data, trailing data, a bad magic: errors naming the file. */
    write_file(path, ok, sizeof ok - 1, gz);
    assert_int_equal(kiln_idx_load(path, KILN_F32, &t), KILN_ERR_PARSE);
    assert_non_null(strstr(kiln_errmsg(), "truncated"));
    assert_non_null(strstr(kiln_errmsg(), path));
    assert_null(t);
    unsigned char longer[sizeof ok + 1];
    memcpy(longer, ok, sizeof ok);
    longer[sizeof ok] = 9;
    write_file(path, longer, sizeof longer, gz);
    assert_int_equal(kiln_idx_load(path, KILN_F32, &t), KILN_ERR_PARSE);
    assert_non_null(strstr(kiln_errmsg(), "past"));
    unsigned char bad[sizeof ok];
    memcpy(bad, ok, sizeof ok);
    bad[2] = 0x42;
    write_file(path, bad, sizeof bad, gz);
    assert_int_equal(kiln_idx_load(path, KILN_F32, &t), KILN_ERR_PARSE);
    assert_non_null(strstr(kiln_errmsg(), "not an IDX file"));
  }
  unlink(path);
  kiln_tensor *t;
  assert_int_equal(kiln_idx_load("/nonexistent/x.idx", KILN_F32, &t), KILN_ERR_IO);
  /* The real dataset, when installed: its first training label is 9 (ankle boot). */
  const char *labels = "/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz";
  if (access(labels, R_OK) == 0) {
    assert_int_equal(kiln_idx_load(labels, KILN_I32, &t), KILN_OK);
    assert_int_equal(kiln_tensor_dims(t)[0], 60000);
    assert_int_equal(((int32_t *)kiln_tensor_data(t))[0], 9);
    kiln_tensor_free(t);
  }
}

static void test_standardizer(void **state) {
  float v[4] = {1, 2, 3, 6};
  kiln_tensor *t = kiln_tensor_from_data(KILN_F32, 1, (int64_t[]){4}, v, sizeof v);
  kiln_standardizer s;
  assert_int_equal(kiln_standardizer_fit(t, &s), KILN_OK);
  assert_true(fabs(s.mean - 3) < 1e-12 && fabs(s.std - sqrt(3.5)) < 1e-12); /* population sd, like StandardScaler */
  assert_int_equal(kiln_standardizer_apply(&s, t), KILN_OK);
  assert_true(fabs(((float *)kiln_tensor_data(t))[3] - 3 / sqrt(3.5)) < 1e-6);
  kiln_tensor_free(t);
}

/* ---- activations ---- */

static void test_activations(void **state) {
  double xs[3] = {-1.5, 0.0, 2.0};
  struct {
    kiln_activation a;
    double want[3];
  } cases[] = {
      {KILN_ACT_RELU, {0, 0, 2}},
      {KILN_ACT_ELU, {exp(-1.5) - 1, 0, 2}},
      {KILN_ACT_SELU, {1.0507009873554805 * 1.6732632423543772 * (exp(-1.5) - 1), 0, 1.0507009873554805 * 2}},
      {KILN_ACT_LEAKY_RELU, {-0.3, 0, 2}},
      {KILN_ACT_SWISH, {-1.5 / (1 + exp(1.5)), 0, 2 / (1 + exp(-2.0))}},
      {KILN_ACT_GELU,
       {0.5 * -1.5 * (1 + tanh(0.7978845608028654 * (-1.5 + 0.044715 * -3.375))), 0,
        0.5 * 2 * (1 + tanh(0.7978845608028654 * (2 + 0.044715 * 8)))}},
      {KILN_ACT_SIGMOID, {1 / (1 + exp(1.5)), 0.5, 1 / (1 + exp(-2.0))}},
      {KILN_ACT_LINEAR, {-1.5, 0, 2}},
  };
  kiln_tensor *x = kiln_tensor_from_data(KILN_F64, 1, (int64_t[]){3}, xs, sizeof xs);
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    kiln_graph *g = kiln_graph_new();
    kiln_output(g, "y", kiln_activate(g, kiln_placeholder(g, "x", KILN_F64, KILN_SHAPE(3)), cases[c].a));
    kiln_tensor *y;
    assert_int_equal(kiln_evaluate(g, (const kiln_tensor *const *)&x, 1, &y, 1), KILN_OK);
    for (int i = 0; i < 3; i++)
      if (fabs(((double *)kiln_tensor_data(y))[i] - cases[c].want[i]) > 1e-12)
        fail_msg("activation %d at %g: %.15g, want %.15g", (int)cases[c].a, xs[i], ((double *)kiln_tensor_data(y))[i],
                 cases[c].want[i]);
    assert_int_equal(check_graph("activation", g, &x, 1, 1e-12, 1e-12), 0);
    kiln_tensor_free(y);
    kiln_graph_free(g);
  }
  kiln_activation a;
  assert_int_equal(kiln_activation_from_name("softmax", &a), KILN_OK);
  assert_int_equal(a, KILN_ACT_SOFTMAX);
  assert_int_equal(kiln_activation_from_name("softplus2", &a), KILN_ERR_INVALID);
  kiln_tensor_free(x);
}

/* ---- losses and metrics: a model that passes its input through evaluates y_pred itself ---- */

static void eval_identity(const char *loss, bool logits, const char *metric, const float *pred, int64_t n, int64_t c,
                          const kiln_tensor *y, double *res) {
  kiln_model *m = kiln_sequential_new("id", 0);
  assert_int_equal(kiln_model_add(m, kiln_layer_activation(KILN_ACT_LINEAR)), KILN_OK);
  kiln_model_compile_options o = {.optimizer = "sgd", .loss = loss, .from_logits = logits,
                                  .metrics = (const char *[]){metric}, .nmetrics = metric ? 1 : 0};
  assert_int_equal(kiln_model_compile(m, &o), KILN_OK);
  kiln_tensor *x = kiln_tensor_from_data(KILN_F32, 2, (int64_t[]){n, c}, pred, sizeof(float) * (size_t)(n * c));
  if (kiln_model_evaluate(m, x, y, 2, res, 2) != KILN_OK) fail_msg("%s", kiln_errmsg());
  kiln_tensor_free(x);
  kiln_model_free(m);
}

/* Cross-entropy on a softmax layer's output is computed from its logits, like Keras:
 * a saturated probability (e^-40) is not clipped to 1e-7, so the loss (and its gradient)
 * stays informative. */
static void test_cross_entropy_on_softmax_uses_logits(void **state) {
  (void)state;
  kiln_model *m = kiln_sequential_new("sm", 0);
  assert_int_equal(kiln_model_add(m, kiln_layer_activation(KILN_ACT_SOFTMAX)), KILN_OK);
  kiln_model_compile_options o = {.optimizer = "sgd", .loss = "sparse_categorical_crossentropy"};
  assert_int_equal(kiln_model_compile(m, &o), KILN_OK);
  float logits[3] = {40, 0, 0};
  int32_t label = 1;
  kiln_tensor *x = kiln_tensor_from_data(KILN_F32, 2, (int64_t[]){1, 3}, logits, sizeof logits);
  kiln_tensor *y = kiln_tensor_from_data(KILN_I32, 1, (int64_t[]){1}, &label, sizeof label);
  double r[1];
  assert_int_equal(kiln_model_evaluate(m, x, y, 1, r, 1), KILN_OK);
  double want = 40 + log(1 + 2 * exp(-40.0)); /* -log_softmax(logits)[1]; clipped would be 16.1 */
  if (fabs(r[0] - want) > 1e-4) fail_msg("loss %.6f, want %.6f", r[0], want);
  kiln_tensor_free(x);
  kiln_tensor_free(y);
  kiln_model_free(m);
}

static void test_losses_and_metrics(void **state) {
  float probs[6] = {0.7f, 0.2f, 0.1f, 0.1f, 0.3f, 0.6f};
  int32_t labels[2] = {0, 1};
  kiln_tensor *y = kiln_tensor_from_data(KILN_I32, 1, (int64_t[]){2}, labels, sizeof labels);
  double r[2];
  eval_identity("sparse_categorical_crossentropy", false, "accuracy", probs, 2, 3, y, r);
  assert_true(fabs(r[0] - (-log(0.7) - log(0.3)) / 2) < 1e-6);
  assert_true(r[1] == 0.5); /* first right, second predicts class 2 */
  float logits[6] = {2, 1, 0, 0, 1, 3};
  eval_identity("sparse_categorical_crossentropy", true, "accuracy", logits, 2, 3, y, r);
  double l0 = -(2 - log(exp(2) + exp(1) + 1)), l1 = -(1 - log(1 + exp(1) + exp(3)));
  assert_true(fabs(r[0] - (l0 + l1) / 2) < 1e-6);
  kiln_tensor_free(y);

  float onehot[6] = {1, 0, 0, 0, 1, 0};
  y = kiln_tensor_from_data(KILN_F32, 2, (int64_t[]){2, 3}, onehot, sizeof onehot);
  eval_identity("categorical_crossentropy", false, "accuracy", probs, 2, 3, y, r);
  assert_true(fabs(r[0] - (-log(0.7) - log(0.3)) / 2) < 1e-6);
  assert_true(r[1] == 0.5);
  eval_identity("mse", false, "mae", probs, 2, 3, y, r);
  double se = 0.09 + 0.04 + 0.01 + 0.01 + 0.49 + 0.36, ae = 0.3 + 0.2 + 0.1 + 0.1 + 0.7 + 0.6;
  assert_true(fabs(r[0] - se / 6) < 1e-6 && fabs(r[1] - ae / 6) < 1e-6);
  eval_identity("binary_crossentropy", false, "binary_accuracy", probs, 2, 3, y, r);
  double bce = 0;
  for (int i = 0; i < 6; i++) bce -= onehot[i] * log(probs[i]) + (1 - onehot[i]) * log(1 - probs[i]);
  assert_true(fabs(r[0] - bce / 6) < 1e-6);
  assert_true(fabs(r[1] - 4.0 / 6) < 1e-6); /* 0.7>.5 right, .2 .1 right, .1 right, .3 wrong, .6 wrong */
  eval_identity("binary_crossentropy", true, NULL, logits, 2, 3, y, r);
  double bl = 0;
  for (int i = 0; i < 6; i++) {
    double p = 1 / (1 + exp(-logits[i]));
    bl -= onehot[i] * log(p) + (1 - onehot[i]) * log(1 - p);
  }
  assert_true(fabs(r[0] - bl / 6) < 1e-6);
  kiln_tensor_free(y);
}

/* ---- layers, summary, fit ---- */

static void test_dense_forward_and_summary(void **state) {
  kiln_model *m = kiln_sequential_new("tiny", 1);
  assert_int_equal(kiln_model_add(m, kiln_layer_dense(2, KILN_ACT_RELU)), KILN_OK);
  assert_int_equal(kiln_model_build(m, KILN_F32, KILN_SHAPE(3)), KILN_OK);
  kiln_variable *k = kiln_variables_find(kiln_model_variables(m), "dense/kernel");
  kiln_variable *b = kiln_variables_find(kiln_model_variables(m), "dense/bias");
  assert_non_null(k);
  assert_non_null(b);
  float kv[6] = {1, -1, 2, 0, 0.5f, 1}, bv[2] = {0.25f, -10};
  memcpy(kiln_tensor_data(kiln_variable_value(k)), kv, sizeof kv);
  memcpy(kiln_tensor_data(kiln_variable_value(b)), bv, sizeof bv);
  float xv[3] = {1, 2, 4};
  kiln_tensor *x = kiln_tensor_from_data(KILN_F32, 2, (int64_t[]){1, 3}, xv, sizeof xv), *y;
  assert_int_equal(kiln_model_predict(m, x, 32, &y), KILN_OK);
  /* [1 2 4] . [[1 -1] [2 0] [.5 1]] = [7, 3]; + bias = [7.25, -7]; relu = [7.25, 0] */
  assert_true(((float *)kiln_tensor_data(y))[0] == 7.25f && ((float *)kiln_tensor_data(y))[1] == 0);
  kiln_tensor_free(y);
  char *buf = model_summary_text(m);
  assert_non_null(strstr(buf, " dense (Dense)               (None, 2)                 8"));
  assert_non_null(strstr(buf, "Total params: 8"));
  free(buf);
  /* Frozen layers count as non-trainable. */
  kiln_layer_set_trainable(kiln_model_layer(m, 0), false);
  buf = model_summary_text(m);
  assert_non_null(strstr(buf, "Non-trainable params: 8"));
  free(buf);
  /* Errors: a different input shape, fit before compile, mismatched x and y. */
  assert_int_equal(kiln_model_build(m, KILN_F32, KILN_SHAPE(4)), KILN_ERR_INVALID);
  assert_non_null(strstr(kiln_errmsg(), "built for inputs f32[3]"));
  kiln_tensor *y2 = kiln_tensor_new(KILN_I32, 1, (int64_t[]){2});
  assert_int_equal(kiln_model_fit(m, x, y2, NULL, NULL), KILN_ERR_INVALID);
  assert_non_null(strstr(kiln_errmsg(), "1 examples but y[0] has 2"));
  kiln_tensor_free(y2);
  y2 = kiln_tensor_new(KILN_I32, 1, (int64_t[]){1});
  assert_int_equal(kiln_model_fit(m, x, y2, NULL, NULL), KILN_ERR_INVALID);
  assert_non_null(strstr(kiln_errmsg(), "compile"));
  kiln_model_compile_options bad = {.optimizer = "sgd", .loss = "hinge_squared"};
  assert_int_equal(kiln_model_compile(m, &bad), KILN_ERR_INVALID);
  assert_non_null(strstr(kiln_errmsg(), "hinge_squared"));
  kiln_tensor_free(y2);
  kiln_tensor_free(x);
  kiln_model_free(m);
  assert_null(kiln_layer_dense(0, KILN_ACT_RELU));
  assert_non_null(strstr(kiln_errmsg(), "units"));
}

/* Every built-in layer in one model: predict (JIT, batched) equals the reference
 * evaluator on the same forward graph. */
static void test_layers_jit_vs_reference(void **state) {
  kiln_model *m = kiln_sequential_new("all", 4);
  kiln_model_add(m, kiln_layer_reshape(KILN_SHAPE(6, 6, 1)));
  kiln_model_add(m, kiln_layer_conv2d(4, 3, 3, KILN_PAD_SAME, KILN_ACT_RELU));
  kiln_model_add(m, kiln_layer_max_pooling2d(2, 2));
  kiln_model_add(m, kiln_layer_conv2d(3, 2, 2, KILN_PAD_VALID, KILN_ACT_TANH));
  kiln_model_add(m, kiln_layer_flatten());
  kiln_model_add(m, kiln_layer_dense(5, KILN_ACT_SELU));
  kiln_model_add(m, kiln_layer_activation(KILN_ACT_SOFTMAX));
  assert_int_equal(kiln_model_build(m, KILN_F32, KILN_SHAPE(36)), KILN_OK);
  trng r = {2};
  kiln_tensor *x = random_tensor(&r, KILN_F32, 2, (int64_t[]){7, 36}, -2, 2), *jit, *ref;
  assert_int_equal(kiln_model_predict(m, x, 3, &jit), KILN_OK); /* batches 3, 3, 1 */
  kiln_graph *g = kiln_graph_new();
  kiln_output(g, "y", kiln_model_call(m, g, kiln_placeholder(g, "x", KILN_F32, KILN_SHAPE(KILN_DYN, 36)), false));
  assert_int_equal(kiln_evaluate(g, (const kiln_tensor *[]){x}, 1, &ref, 1), KILN_OK);
  assert_int_equal(kiln_tensor_dims(jit)[1], 5);
  assert_int_equal(compare_tensors("layers", jit, ref, 1e-5, 1e-6), 0);
  char *buf = model_summary_text(m);
  /* conv 3x3x1x4 + 4 = 40; conv 2x2x4x3 + 3 = 51; dense 12x5 + 5 = 65 */
  assert_non_null(strstr(buf, " conv2d (Conv2D)             (None, 6, 6, 4)           40"));
  assert_non_null(strstr(buf, " conv2d_1 (Conv2D)           (None, 2, 2, 3)           51"));
  assert_non_null(strstr(buf, " max_pooling2d (MaxPooling2D) (None, 3, 3, 4)           0"));
  assert_non_null(strstr(buf, "Total params: 156"));
  free(buf);
  kiln_graph_free(g);
  kiln_tensor_free(x);
  kiln_tensor_free(jit);
  kiln_tensor_free(ref);
  kiln_model_free(m);
}

/* Three Gaussian blobs; a small MLP must separate them, and fit's bookkeeping must add up. */
static void test_fit_blobs(void **state) {
  trng r = {5};
  int64_t n = 600;
  kiln_tensor *x = kiln_tensor_new(KILN_F32, 2, (int64_t[]){n, 2}), *y = kiln_tensor_new(KILN_I32, 1, (int64_t[]){n});
  float *xd = kiln_tensor_data(x);
  int32_t *yd = kiln_tensor_data(y);
  double cx[3] = {-2, 2, 0}, cy[3] = {0, 0, 2.5};
  for (int64_t i = 0; i < n; i++) {
    int c = (int)(i % 3);
    yd[i] = c;
    xd[2 * i] = (float)(cx[c] + trng_real(&r, -0.7, 0.7));
    xd[2 * i + 1] = (float)(cy[c] + trng_real(&r, -0.7, 0.7));
  }
  kiln_model *m = kiln_sequential_new("blobs", 3);
  kiln_model_add(m, kiln_layer_dense(16, KILN_ACT_TANH));
  kiln_model_add(m, kiln_layer_dense(3, KILN_ACT_LINEAR));
  kiln_model_compile_options o = {.optimizer = "adam", .loss = "sparse_categorical_crossentropy", .from_logits = true,
                                  .metrics = (const char *[]){"accuracy"}, .nmetrics = 1};
  assert_int_equal(kiln_model_compile(m, &o), KILN_OK);
  kiln_fit_options fo = kiln_fit_defaults();
  fo.epochs = 15;
  fo.batch_size = 50;
  fo.validation_split = 0.2;
  fo.verbose = 0;
  kiln_history *h;
  if (kiln_model_fit(m, x, y, &fo, &h) != KILN_OK) fail_msg("%s", kiln_errmsg());
  assert_int_equal(kiln_history_epochs(h), 15);
  assert_int_equal(kiln_history_num_keys(h), 4);
  const double *loss = kiln_history_get(h, "loss"), *acc = kiln_history_get(h, "val_accuracy");
  assert_non_null(acc);
  assert_true(loss[14] < loss[0]);
  assert_true(acc[14] >= 0.98);
  /* 480 training examples at batch 50: 10 steps per epoch. */
  kiln_variable *it = kiln_variables_find(kiln_model_variables(m), "optimizer/iterations");
  assert_int_equal(*(int64_t *)kiln_tensor_data(kiln_variable_value(it)), 15 * 10);
  double res[2];
  assert_int_equal(kiln_model_evaluate(m, x, y, 64, res, 2), KILN_OK);
  assert_true(res[1] >= 0.98);
  kiln_tensor *p;
  assert_int_equal(kiln_model_predict(m, x, 64, &p), KILN_OK);
  assert_int_equal(kiln_tensor_dims(p)[0], n);
  assert_int_equal(kiln_tensor_dims(p)[1], 3);
  kiln_tensor_free(p);
  kiln_history_free(h);
  kiln_model_free(m);
  kiln_tensor_free(x);
  kiln_tensor_free(y);
}


/* ---- callbacks and checkpoints ---- */

static void blobs(int64_t n, kiln_tensor **x, kiln_tensor **y) {
  trng r = {9};
  *x = kiln_tensor_new(KILN_F32, 2, (int64_t[]){n, 2});
  *y = kiln_tensor_new(KILN_I32, 1, (int64_t[]){n});
  float *xd = kiln_tensor_data(*x);
  int32_t *yd = kiln_tensor_data(*y);
  for (int64_t i = 0; i < n; i++) {
    yd[i] = (int32_t)(i % 2);
    xd[2 * i] = (float)((i % 2 ? 1.5 : -1.5) + trng_real(&r, -1, 1));
    xd[2 * i + 1] = (float)trng_real(&r, -1, 1);
  }
}

static kiln_model *small_model(const char *opt, double lr) {
  kiln_model *m = kiln_sequential_new("small", 77);
  kiln_model_add(m, kiln_layer_dense(8, KILN_ACT_RELU));
  kiln_model_add(m, kiln_layer_dense(2, KILN_ACT_SOFTMAX));
  kiln_optimizer_kind k;
  kiln_optimizer_kind_from_name(opt, &k);
  kiln_optimizer_config oc = kiln_optimizer_defaults(k);
  if (lr >= 0) oc.learning_rate = lr;
  kiln_model_compile_options o = {.optimizer_config = &oc, .loss = "sparse_categorical_crossentropy",
                                  .metrics = (const char *[]){"accuracy"}, .nmetrics = 1};
  assert_int_equal(kiln_model_compile(m, &o), KILN_OK);
  assert_int_equal(kiln_model_build(m, KILN_F32, KILN_SHAPE(2)), KILN_OK);
  return m;
}

typedef struct counts {
  int train_begin, epoch_end, batch_end, train_end;
} counts;
static kiln_status count_events(const kiln_callback_info *info, void *state) {
  counts *c = state;
  c->train_begin += info->event == KILN_ON_TRAIN_BEGIN;
  c->epoch_end += info->event == KILN_ON_EPOCH_END;
  c->batch_end += info->event == KILN_ON_BATCH_END;
  c->train_end += info->event == KILN_ON_TRAIN_END;
  if (info->event == KILN_ON_EPOCH_END) assert_false(isnan(kiln_callback_log(info, "val_accuracy")));
  return KILN_OK;
}

/* With a zero learning rate nothing improves: EarlyStopping(patience 2) must stop after epoch 3. */
static void test_early_stopping(void **state) {
  kiln_tensor *x, *y;
  blobs(200, &x, &y);
  kiln_model *m = small_model("sgd", 0);
  counts c = {0};
  kiln_callback cbs[2] = {kiln_early_stopping("loss", 1e-3, 2, false), {count_events, &c, NULL}};
  kiln_fit_options fo = kiln_fit_defaults();
  fo.epochs = 20;
  fo.verbose = 0;
  fo.validation_split = 0.25;
  fo.callbacks = cbs;
  fo.ncallbacks = 2;
  kiln_history *h;
  assert_int_equal(kiln_model_fit(m, x, y, &fo, &h), KILN_OK);
  assert_int_equal(kiln_history_epochs(h), 3);
  assert_int_equal(c.train_begin, 1);
  assert_int_equal(c.epoch_end, 3);
  assert_int_equal(c.batch_end, 3 * 5); /* 150 examples in batches of 32 */
  assert_int_equal(c.train_end, 1);
  kiln_history_free(h);
  kiln_model_free(m);
  /* A learning model is not stopped early: val_loss keeps improving for 8 epochs. */
  m = small_model("adam", 0.01);
  fo.epochs = 8;
  kiln_callback_free(&cbs[0]);
  cbs[0] = kiln_early_stopping(NULL, 0, 3, true);
  assert_int_equal(kiln_model_fit(m, x, y, &fo, &h), KILN_OK);
  assert_int_equal(kiln_history_epochs(h), 8);
  kiln_history_free(h);
  /* A monitor that is not logged is an error naming it. */
  kiln_callback_free(&cbs[0]);
  cbs[0] = kiln_early_stopping("val_auc", 0, 3, false);
  assert_int_equal(kiln_model_fit(m, x, y, &fo, NULL), KILN_ERR_INVALID);
  assert_non_null(strstr(kiln_errmsg(), "val_auc"));
  kiln_callback_free(&cbs[0]);
  /* A diverged run logs NaN: it never improves, so training stops after `patience`
   * epochs (Keras), instead of failing as if the value were not logged. */
  cbs[0] = kiln_early_stopping("loss", 0, 2, false);
  const char *keys[] = {"loss"};
  double nan_loss[] = {NAN};
  int stops = 0;
  for (int epoch = 0; epoch < 5; epoch++) {
    kiln_callback_info info = {KILN_ON_EPOCH_END, m, epoch, 0, keys, nan_loss, 1};
    if (epoch == 0) {
      kiln_callback_info begin = {KILN_ON_TRAIN_BEGIN, m, 0, 0, keys, NULL, 0};
      assert_int_equal(cbs[0].fn(&begin, cbs[0].state), KILN_OK);
    }
    assert_int_equal(cbs[0].fn(&info, cbs[0].state), KILN_OK);
    stops += m->stop_training;
  }
  assert_true(stops > 0);
  kiln_callback_free(&cbs[0]);
  kiln_model_free(m);
  kiln_tensor_free(x);
  kiln_tensor_free(y);
}

static bool same_variables(kiln_variables *a, kiln_variables *b) {
  if (kiln_variables_count(a) != kiln_variables_count(b)) return false;
  for (size_t i = 0; i < kiln_variables_count(a); i++) {
    kiln_variable *va = kiln_variables_at(a, i), *vb = kiln_variables_find(b, kiln_variable_name(va));
    if (!vb) return false;
    const kiln_tensor *ta = kiln_variable_value(va), *tb = kiln_variable_value(vb);
    if (kiln_tensor_nbytes(ta) != kiln_tensor_nbytes(tb) || memcmp(kiln_tensor_cdata(ta), kiln_tensor_cdata(tb), kiln_tensor_nbytes(ta))) {
      printf("variable %s differs\n", kiln_variable_name(va));
      return false;
    }
  }
  return true;
}

/* Training 2 epochs equals training 1, checkpointing, restoring into a fresh model and
 * training the second: bit for bit, optimizer state included. */
static void test_checkpoint_resume_is_bit_identical(void **state) {
  kiln_tensor *x, *y;
  blobs(300, &x, &y);
  char dir[] = "/tmp/kiln_ckpt_XXXXXX", path[128], pattern[128], first[128];
  assert_non_null(mkdtemp(dir));
  snprintf(path, sizeof path, "%s/weights.ckpt", dir);
  snprintf(pattern, sizeof pattern, "%s/epoch-{epoch:02d}.ckpt", dir);
  snprintf(first, sizeof first, "%s/epoch-01.ckpt", dir);
  kiln_fit_options fo = kiln_fit_defaults();
  fo.verbose = 0;
  fo.epochs = 2;
  kiln_model *a = small_model("adam", -1);
  assert_int_equal(kiln_model_fit(a, x, y, &fo, NULL), KILN_OK);

  kiln_model *b = small_model("adam", -1);
  kiln_callback ck = kiln_model_checkpoint(pattern, NULL, false);
  fo.epochs = 1;
  fo.callbacks = &ck;
  fo.ncallbacks = 1;
  assert_int_equal(kiln_model_fit(b, x, y, &fo, NULL), KILN_OK);
  kiln_callback_free(&ck);
  assert_int_equal(access(first, R_OK), 0);

  kiln_model *c = small_model("adam", -1);
  assert_int_equal(kiln_model_load_weights(c, first), KILN_OK);
  assert_true(same_variables(kiln_model_variables(b), kiln_model_variables(c)));
  fo.callbacks = NULL;
  fo.ncallbacks = 0;
  fo.initial_epoch = 1;
  fo.epochs = 2;
  assert_int_equal(kiln_model_fit(c, x, y, &fo, NULL), KILN_OK);
  assert_true(same_variables(kiln_model_variables(a), kiln_model_variables(c)));

  /* Corrupt files are rejected by name and change nothing. */
  assert_int_equal(kiln_model_save_weights(a, path), KILN_OK);
  FILE *f = fopen(path, "rb");
  unsigned char buf[1 << 16];
  size_t n = fread(buf, 1, sizeof buf, f);
  fclose(f);
  assert_true(n > 100 && n < sizeof buf);
  char bad[160];
  snprintf(bad, sizeof bad, "%s/bad.ckpt", dir);
  write_file(bad, buf, n - 10, false);
  assert_int_equal(kiln_model_load_weights(c, bad), KILN_ERR_PARSE);
  assert_non_null(strstr(kiln_errmsg(), "truncated"));
  buf[n / 2] ^= 0x10;
  write_file(bad, buf, n, false);
  assert_int_equal(kiln_model_load_weights(c, bad), KILN_ERR_PARSE);
  assert_non_null(strstr(kiln_errmsg(), "checksum"));
  assert_true(same_variables(kiln_model_variables(a), kiln_model_variables(c)));
  /* A checkpoint of another architecture names what does not fit. */
  kiln_model *other = kiln_sequential_new("other", 1);
  kiln_model_add(other, kiln_layer_dense(3, KILN_ACT_RELU));
  kiln_model_build(other, KILN_F32, KILN_SHAPE(2));
  assert_int_equal(kiln_model_load_weights(other, path), KILN_ERR_INVALID);
  assert_non_null(strstr(kiln_errmsg(), "'dense/kernel'"));
  kiln_model_free(other);
  /* A save that fails (the target is a directory) leaves no temporary file behind. */
  assert_int_equal(kiln_model_save_weights(a, dir), KILN_ERR_IO);
  char cmd[256];
  snprintf(cmd, sizeof cmd, "ls %s | grep -c tmp", dir);
  FILE *p = popen(cmd, "r");
  int tmps = -1;
  assert_int_equal(fscanf(p, "%d", &tmps), 1);
  pclose(p);
  assert_int_equal(tmps, 0);
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  assert_int_equal(system(cmd), 0);
  kiln_model_free(a);
  kiln_model_free(b);
  kiln_model_free(c);
  kiln_tensor_free(x);
  kiln_tensor_free(y);
}

static double halve(int epoch, double lr, void *ud) { return epoch ? lr / 2 : lr; }

static void test_lr_callbacks_and_csv(void **state) {
  kiln_tensor *x, *y;
  blobs(100, &x, &y);
  kiln_model *m = small_model("sgd", 0.1);
  char csvp[] = "/tmp/kiln_csv_XXXXXX";
  int fd = mkstemp(csvp);
  close(fd);
  kiln_callback cbs[3] = {kiln_lr_scheduler(halve, NULL), kiln_csv_logger(csvp), kiln_terminate_on_nan()};
  kiln_fit_options fo = kiln_fit_defaults();
  fo.verbose = 0;
  fo.epochs = 3;
  fo.callbacks = cbs;
  fo.ncallbacks = 3;
  assert_int_equal(kiln_model_fit(m, x, y, &fo, NULL), KILN_OK);
  assert_true(*(double *)kiln_tensor_data(kiln_variable_value(kiln_model_learning_rate(m))) == 0.025);
  char *text = read_text_file(csvp);
  assert_true(!strncmp(text, "epoch,loss,accuracy\n0,", 22));
  assert_non_null(strstr(text, "\n2,"));
  free(text);
  unlink(csvp);
  for (int i = 0; i < 3; i++) kiln_callback_free(&cbs[i]);
  /* ReduceLROnPlateau: with a tiny lr the loss never improves by min_delta, so patience 1
   * cuts lr 10x after epochs 2 and 3. */
  kiln_model_free(m);
  m = small_model("sgd", 1e-9);
  cbs[0] = kiln_reduce_lr_on_plateau("loss", 0.1, 1, 0);
  fo.callbacks = cbs;
  fo.ncallbacks = 1;
  assert_int_equal(kiln_model_fit(m, x, y, &fo, NULL), KILN_OK);
  assert_true(fabs(*(double *)kiln_tensor_data(kiln_variable_value(kiln_model_learning_rate(m))) - 1e-11) < 1e-20);
  kiln_callback_free(&cbs[0]);
  kiln_model_free(m);
  kiln_tensor_free(x);
  kiln_tensor_free(y);
}

/* ---- TensorBoard: decoded with an independent TFRecord + protobuf wire reader ---- */

static uint32_t crc32c_bitwise(const uint8_t *p, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; i++) {
    c ^= p[i];
    for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
  }
  return ~c;
}
static uint32_t masked(const uint8_t *p, size_t n) {
  uint32_t c = crc32c_bitwise(p, n);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}
static uint64_t le(const uint8_t *p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
  return v;
}
static uint64_t varint(const uint8_t **p) {
  uint64_t v = 0;
  for (int s = 0;; s += 7) {
    uint8_t b = *(*p)++;
    v |= (uint64_t)(b & 0x7f) << s;
    if (!(b & 0x80)) return v;
  }
}

typedef struct scalar {
  int64_t step;
  char tag[64];
  float value;
} scalar;

/* Events of one file: the version string and up to cap scalars. */
static int read_events(const char *path, char *version, scalar *out, int cap) {
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  static uint8_t buf[1 << 16];
  size_t n = fread(buf, 1, sizeof buf, f);
  fclose(f);
  int ns = 0;
  for (size_t at = 0; at < n;) {
    uint64_t len = le(buf + at, 8);
    assert_true(le(buf + at + 8, 4) == masked(buf + at, 8));
    const uint8_t *ev = buf + at + 12, *end = ev + len;
    assert_true(le(end, 4) == masked(ev, len));
    at += 12 + len + 4;
    int64_t step = 0;
    while (ev < end) {
      uint64_t key = varint(&ev);
      if (key == (1 << 3 | 1)) ev += 8;            /* wall_time, fixed64 */
      else if (key == (2 << 3 | 0)) step = (int64_t)varint(&ev);
      else if (key == (3 << 3 | 2)) {              /* file_version */
        uint64_t l = varint(&ev);
        memcpy(version, ev, l), version[l] = 0, ev += l;
      } else if (key == (5 << 3 | 2)) {            /* summary { repeated value = 1 } */
        const uint8_t *se = ev + varint(&ev);
        while (ev < se) {
          assert_true(varint(&ev) == (1 << 3 | 2));
          const uint8_t *ve = ev + varint(&ev);
          scalar sc = {.step = step};
          while (ev < ve) {
            uint64_t k = varint(&ev);
            if (k == (1 << 3 | 2)) {
              uint64_t l = varint(&ev);
              memcpy(sc.tag, ev, l), sc.tag[l] = 0, ev += l;
            } else {
              assert_true(k == (2 << 3 | 5)); /* simple_value, fixed32 float */
              uint32_t bits = (uint32_t)le(ev, 4);
              memcpy(&sc.value, &bits, 4), ev += 4;
            }
          }
          if (ns < cap) out[ns++] = sc;
        }
      } else {
        fail_msg("unexpected field key %llu", (unsigned long long)key);
      }
    }
  }
  return ns;
}

static void only_file(const char *dir, char *path, size_t cap) {
  char cmd[600];
  snprintf(cmd, sizeof cmd, "ls %s/events.out.tfevents.* 2>/dev/null", dir);
  FILE *p = popen(cmd, "r");
  assert_non_null(p);
  assert_non_null(fgets(path, (int)cap, p));
  path[strcspn(path, "\n")] = 0;
  char extra[600];
  assert_null(fgets(extra, sizeof extra, p)); /* exactly one */
  pclose(p);
}

static void test_tensorboard_events(void **state) {
  kiln_tensor *x, *y;
  blobs(120, &x, &y);
  kiln_model *m = small_model("sgd", 0.1);
  char dir[] = "/tmp/kiln_tb_XXXXXX";
  assert_non_null(mkdtemp(dir));
  kiln_callback cb = kiln_tensorboard(dir, 2);
  kiln_fit_options fo = kiln_fit_defaults();
  fo.verbose = 0;
  fo.epochs = 3;
  fo.batch_size = 32;
  fo.validation_split = 0.25; /* 90 train examples: 3 batches per epoch */
  fo.callbacks = &cb;
  fo.ncallbacks = 1;
  kiln_history *h;
  assert_int_equal(kiln_model_fit(m, x, y, &fo, &h), KILN_OK);
  kiln_callback_free(&cb);
  char sub[128], path[600], version[64] = "";
  scalar sc[64];
  snprintf(sub, sizeof sub, "%s/train", dir);
  only_file(sub, path, sizeof path);
  int n = read_events(path, version, sc, 64);
  assert_string_equal(version, "brain.Event:2");
  int epochs_seen = 0, batches_seen = 0, lr_seen = 0;
  for (int i = 0; i < n; i++) {
    if (!strcmp(sc[i].tag, "epoch_loss")) {
      assert_true(sc[i].value == (float)kiln_history_get(h, "loss")[sc[i].step]);
      assert_int_equal(sc[i].step, epochs_seen++);
    }
    batches_seen += !strcmp(sc[i].tag, "batch_loss");
    lr_seen += !strcmp(sc[i].tag, "epoch_learning_rate") && fabsf(sc[i].value - 0.1f) < 1e-7f;
  }
  assert_int_equal(epochs_seen, 3);
  assert_int_equal(batches_seen, 4); /* 9 batches, every 2nd */
  assert_int_equal(lr_seen, 3);
  snprintf(sub, sizeof sub, "%s/validation", dir);
  only_file(sub, path, sizeof path);
  n = read_events(path, version, sc, 64);
  int val_acc = 0;
  for (int i = 0; i < n; i++)
    if (!strcmp(sc[i].tag, "epoch_accuracy")) {
      assert_true(sc[i].value == (float)kiln_history_get(h, "val_accuracy")[sc[i].step]);
      val_acc++;
    }
  assert_int_equal(val_acc, 3);
  char cmd[200];
  snprintf(cmd, sizeof cmd, "rm -r %s", dir);
  assert_int_equal(system(cmd), 0);
  kiln_history_free(h);
  kiln_model_free(m);
  kiln_tensor_free(x);
  kiln_tensor_free(y);
}

static void test_csv(void **state) {
  char path[] = "/tmp/kiln_csv_in_XXXXXX";
  close(mkstemp(path));
  const char *good = "a,b,label\n1.5, 2,0\n\n-3,4e2,2\r\n";
  write_file(path, good, strlen(good), false);
  kiln_tensor *x, *y;
  kiln_csv_options o = {.header = true, .label_column = 2, .label_dtype = KILN_I32};
  assert_int_equal(kiln_csv_load(path, &o, &x, &y), KILN_OK);
  assert_int_equal(kiln_tensor_dims(x)[0], 2);
  assert_int_equal(kiln_tensor_dims(x)[1], 2);
  const float *xd = kiln_tensor_cdata(x);
  assert_true(xd[0] == 1.5f && xd[1] == 2 && xd[2] == -3 && xd[3] == 400);
  assert_true(((const int32_t *)kiln_tensor_cdata(y))[1] == 2);
  kiln_tensor_free(x);
  kiln_tensor_free(y);
  const char *bad[] = {"1,2\n3\n", "1,2\n3,x\n", "1,,2\n", "1,2.5\n"};
  const char *why[] = {":2: column 1: row has 1 cells, the first row 2", ":2: column 2: not a number", ":1: column 2: empty cell",
                       "label 2.5 is not an integer"};
  for (int i = 0; i < 4; i++) {
    write_file(path, bad[i], strlen(bad[i]), false);
    kiln_csv_options b = {.label_column = i == 3 ? 1 : -1, .label_dtype = KILN_I64};
    x = y = (kiln_tensor *)1;
    assert_int_equal(kiln_csv_load(path, &b, &x, &y), KILN_ERR_PARSE);
    assert_null(x);
    if (!strstr(kiln_errmsg(), why[i])) fail_msg("case %d: %s", i, kiln_errmsg());
  }
  unlink(path);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_idx),
      cmocka_unit_test(test_standardizer),
      cmocka_unit_test(test_csv),
      cmocka_unit_test(test_activations),
      cmocka_unit_test(test_losses_and_metrics),
      cmocka_unit_test(test_cross_entropy_on_softmax_uses_logits),
      cmocka_unit_test(test_dense_forward_and_summary),
      cmocka_unit_test(test_layers_jit_vs_reference),
      cmocka_unit_test(test_fit_blobs),
      cmocka_unit_test(test_early_stopping),
      cmocka_unit_test(test_checkpoint_resume_is_bit_identical),
      cmocka_unit_test(test_lr_callbacks_and_csv),
      cmocka_unit_test(test_tensorboard_events),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

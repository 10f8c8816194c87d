/* Layers and functional models: every layer's forward against hand-computed values
 * and (in training and inference mode) JIT against the reference evaluator; merge
 * layers; the tutorials' multi-input and multi-output models training on random data;
 * the losses and streaming metrics added with them. */
#include <math.h>
#include <string.h>
#include <unistd.h>
#include "harness.h"
#include "kiln/kiln.h"

static void set_weight(kiln_model *m, const char *name, const float *v) {
  kiln_variable *var = kiln_variables_find(kiln_model_variables(m), name);
  if (!var) fail_msg("no variable %s", name);
  kiln_tensor *t = kiln_variable_value(var);
  memcpy(kiln_tensor_data(t), v, kiln_tensor_nbytes(t));
}

/* One layer as a Sequential model on per-example shape `in`; its prediction of x. */
static kiln_tensor *apply_layer(kiln_layer *l, kiln_dtype t, kiln_shape in, const kiln_tensor *x, kiln_model **keep) {
  kiln_model *m = kiln_sequential_new("one", 1);
  assert_int_equal(kiln_model_add(m, l), KILN_OK);
  assert_int_equal(kiln_model_build(m, t, in), KILN_OK);
  kiln_tensor *y = NULL;
  if (keep) {
    *keep = m;
    return NULL;
  }
  if (kiln_model_predict(m, x, 32, &y) != KILN_OK) fail_msg("%s", kiln_errmsg());
  kiln_model_free(m);
  return y;
}

static kiln_tensor *predict(kiln_model *m, const kiln_tensor *x) {
  kiln_tensor *y = NULL;
  if (kiln_model_predict(m, x, 32, &y) != KILN_OK) fail_msg("%s", kiln_errmsg());
  return y;
}

static void expect(const char *what, const kiln_tensor *y, const double *want, int64_t n, double tol) {
  assert_int_equal(kiln_tensor_numel(y), n);
  const float *d = kiln_tensor_cdata(y);
  for (int64_t i = 0; i < n; i++)
    if (fabs(d[i] - want[i]) > tol) fail_msg("%s[%lld] = %.7g, want %.7g", what, (long long)i, d[i], want[i]);
}

static kiln_tensor *f32(int rank, const int64_t *dims, const float *v) {
  int64_t n = 1;
  for (int i = 0; i < rank; i++) n *= dims[i];
  return kiln_tensor_from_data(KILN_F32, rank, dims, v, sizeof(float) * (size_t)n);
}

static kiln_tensor *copy_of(const kiln_tensor *t) {
  return kiln_tensor_from_data(kiln_tensor_dtype(t), kiln_tensor_rank(t), kiln_tensor_dims(t), kiln_tensor_cdata(t),
                               kiln_tensor_nbytes(t));
}

static double sigm(double x) { return 1 / (1 + exp(-x)); }

/* ---- hand-computed forwards ---- */

static void test_conv_pool_norm_by_hand(void **state) {
  /* Conv1D k=2, 1 channel -> 1 filter, weights [1, -1], bias 0.5, valid: x[t] - x[t+1] + .5 */
  kiln_model *m;
  apply_layer(kiln_layer_conv1d(1, 2, KILN_PAD_VALID, KILN_ACT_LINEAR), KILN_F32, KILN_SHAPE(4, 1), NULL, &m);
  set_weight(m, "conv1d/kernel", (float[]){1, -1});
  set_weight(m, "conv1d/bias", (float[]){0.5f});
  kiln_tensor *x = f32(3, (int64_t[]){1, 4, 1}, (float[]){1, 4, 2, 8}), *y = predict(m, x);
  expect("conv1d", y, (double[]){-2.5, 2.5, -5.5}, 3, 1e-6);
  kiln_tensor_free(y);
  kiln_model_free(m);
  /* MaxPooling1D(2) and the global pools over steps */
  y = apply_layer(kiln_layer_max_pooling1d(2), KILN_F32, KILN_SHAPE(4, 1), x, NULL);
  expect("max_pooling1d", y, (double[]){4, 8}, 2, 0);
  kiln_tensor_free(y);
  y = apply_layer(kiln_layer_global_average_pooling1d(), KILN_F32, KILN_SHAPE(4, 1), x, NULL);
  expect("global_average_pooling1d", y, (double[]){3.75}, 1, 1e-6);
  kiln_tensor_free(y);
  y = apply_layer(kiln_layer_global_max_pooling1d(), KILN_F32, KILN_SHAPE(4, 1), x, NULL);
  expect("global_max_pooling1d", y, (double[]){8}, 1, 0);
  kiln_tensor_free(y);
  kiln_tensor_free(x);
  /* 2x2 image, 2 channels: AveragePooling2D(2,2) and global pools per channel */
  x = f32(4, (int64_t[]){1, 2, 2, 2}, (float[]){1, 10, 2, 20, 3, 30, 6, 40});
  y = apply_layer(kiln_layer_average_pooling2d(2, 2), KILN_F32, KILN_SHAPE(2, 2, 2), x, NULL);
  expect("average_pooling2d", y, (double[]){3, 25}, 2, 1e-6);
  kiln_tensor_free(y);
  y = apply_layer(kiln_layer_global_average_pooling2d(), KILN_F32, KILN_SHAPE(2, 2, 2), x, NULL);
  expect("global_average_pooling2d", y, (double[]){3, 25}, 2, 1e-6);
  kiln_tensor_free(y);
  y = apply_layer(kiln_layer_global_max_pooling2d(), KILN_F32, KILN_SHAPE(2, 2, 2), x, NULL);
  expect("global_max_pooling2d", y, (double[]){6, 40}, 2, 0);
  kiln_tensor_free(y);
  kiln_tensor_free(x);
  /* LayerNormalization of [1, 2, 3]: (x - 2) / sqrt(2/3 + 1e-3) */
  x = f32(2, (int64_t[]){1, 3}, (float[]){1, 2, 3});
  y = apply_layer(kiln_layer_layer_normalization(), KILN_F32, KILN_SHAPE(3), x, NULL);
  double s = 1 / sqrt(2.0 / 3 + 1e-3);
  expect("layer_normalization", y, (double[]){-s, 0, s}, 3, 1e-6);
  kiln_tensor_free(y);
  /* BatchNormalization at inference: moving statistics, gamma, beta */
  apply_layer(kiln_layer_batch_normalization(), KILN_F32, KILN_SHAPE(3), NULL, &m);
  set_weight(m, "batch_normalization/moving_mean", (float[]){1, 1, 1});
  set_weight(m, "batch_normalization/moving_variance", (float[]){4, 4, 4});
  set_weight(m, "batch_normalization/gamma", (float[]){1, 2, 3});
  set_weight(m, "batch_normalization/beta", (float[]){0, 0, 1});
  y = predict(m, x);
  double d = 1 / sqrt(4 + 1e-3);
  expect("batch_normalization", y, (double[]){0, 2 * d, 3 * 2 * d + 1}, 3, 1e-6);
  kiln_tensor_free(y);
  kiln_model_free(m);
  kiln_tensor_free(x);
}

static void test_embedding_and_merge_by_hand(void **state) {
  /* Rescaling: x * scale + offset; integer input is refused with the reason */
  kiln_tensor *rx = f32(2, (int64_t[]){2, 2}, (float[]){0, 255, 72.5f, -10});
  kiln_tensor *ry = apply_layer(kiln_layer_rescaling(1 / 90.0, -72.5 / 90.0), KILN_F32, KILN_SHAPE(2), rx, NULL);
  expect("rescaling", ry, (double[]){-72.5 / 90, 182.5 / 90, 0, -82.5 / 90}, 4, 1e-6);
  kiln_tensor_free(rx);
  kiln_tensor_free(ry);
  kiln_model *m = kiln_sequential_new("bad", 1);
  assert_int_equal(kiln_model_add(m, kiln_layer_rescaling(2, 0)), KILN_OK);
  assert_int_not_equal(kiln_model_build(m, KILN_I32, KILN_SHAPE(2)), KILN_OK);
  assert_non_null(strstr(kiln_errmsg(), "Rescaling: input must be float"));
  kiln_model_free(m);
  assert_null(kiln_layer_rescaling(NAN, 0));

  apply_layer(kiln_layer_embedding(3, 2), KILN_I32, KILN_SHAPE(2), NULL, &m);
  set_weight(m, "embedding/embeddings", (float[]){0, 1, 10, 11, 20, 21});
  int32_t ids[4] = {2, 0, 1, 1};
  kiln_tensor *x = kiln_tensor_from_data(KILN_I32, 2, (int64_t[]){2, 2}, ids, sizeof ids), *y = predict(m, x);
  assert_int_equal(kiln_tensor_rank(y), 3);
  expect("embedding", y, (double[]){20, 21, 0, 1, 10, 11, 10, 11}, 8, 0);
  kiln_tensor_free(y);
  /* ids outside [0, vocab) fail the run with a message, negative ones too */
  for (int bad = 0; bad < 2; bad++) {
    ((int32_t *)kiln_tensor_data(x))[1] = bad ? -1 : 3;
    y = NULL;
    assert_int_not_equal(kiln_model_predict(m, x, 32, &y), KILN_OK);
    assert_null(y);
    assert_non_null(strstr(kiln_errmsg(), "out of range"));
  }
  kiln_tensor_free(x);
  kiln_model_free(m);

  /* Concatenate / Add / Multiply in one functional model; Add broadcasts [b,1] */
  m = kiln_model_new("merge", 1);
  kiln_ktensor a = kiln_model_input(m, "a", KILN_F32, KILN_SHAPE(2)), b = kiln_model_input(m, "b", KILN_F32, KILN_SHAPE(2));
  kiln_ktensor c = kiln_model_input(m, "c", KILN_F32, KILN_SHAPE(1));
  kiln_ktensor cat = kiln_model_apply(m, kiln_layer_concatenate(-1), (kiln_ktensor[]){a, b}, 2);
  kiln_ktensor sum = kiln_model_apply(m, kiln_layer_add(), (kiln_ktensor[]){a, b, c}, 3);
  kiln_ktensor prod = kiln_model_apply(m, kiln_layer_multiply(), (kiln_ktensor[]){a, b}, 2);
  assert_int_equal(kiln_model_output(m, "cat", cat), KILN_OK);
  assert_int_equal(kiln_model_output(m, "sum", sum), KILN_OK);
  assert_int_equal(kiln_model_output(m, "prod", prod), KILN_OK);
  kiln_tensor *xa = f32(2, (int64_t[]){1, 2}, (float[]){1, 2}), *xb = f32(2, (int64_t[]){1, 2}, (float[]){3, 5});
  kiln_tensor *xc = f32(2, (int64_t[]){1, 1}, (float[]){100}), *out[3];
  assert_int_equal(kiln_model_predict_arrays(m, (const kiln_tensor *[]){xa, xb, xc}, 3, 8, out, 3), KILN_OK);
  expect("concatenate", out[0], (double[]){1, 2, 3, 5}, 4, 0);
  expect("add", out[1], (double[]){104, 107}, 2, 0);
  expect("multiply", out[2], (double[]){3, 10}, 2, 0);
  for (int i = 0; i < 3; i++) kiln_tensor_free(out[i]);
  /* a mis-shaped concatenation names the layer and shapes */
  kiln_ktensor bad = kiln_model_apply(m, kiln_layer_concatenate(1), (kiln_ktensor[]){a, kiln_model_input(m, "d", KILN_F32, KILN_SHAPE(2, 2))}, 2);
  assert_true(bad.id < 0);
  assert_non_null(strstr(kiln_errmsg(), "concatenate_1"));
  assert_int_equal(kiln_model_output(m, "x", bad), KILN_ERR_INVALID);
  kiln_tensor_free(xa);
  kiln_tensor_free(xb);
  kiln_tensor_free(xc);
  kiln_model_free(m);
}

/* Independent scalar implementations of Keras' recurrences, units = features = 1. */
static void test_recurrent_by_hand(void **state) {
  const float xs[3] = {0.5f, -1.0f, 2.0f};
  kiln_tensor *x = f32(3, (int64_t[]){1, 3, 1}, xs);
  kiln_model *m;
  /* SimpleRNN: h = tanh(w x + u h + b) */
  apply_layer(kiln_layer_simple_rnn(1, true), KILN_F32, KILN_SHAPE(3, 1), NULL, &m);
  set_weight(m, "simple_rnn/kernel", (float[]){0.7f});
  set_weight(m, "simple_rnn/recurrent_kernel", (float[]){-0.4f});
  set_weight(m, "simple_rnn/bias", (float[]){0.1f});
  kiln_tensor *y = predict(m, x);
  double h = 0, want[3];
  for (int t = 0; t < 3; t++) want[t] = h = tanh(0.7 * xs[t] - 0.4 * h + 0.1);
  expect("simple_rnn", y, want, 3, 1e-6);
  kiln_tensor_free(y);
  kiln_model_free(m);
  /* LSTM, gates i f c o; the forget bias starts at 1 */
  apply_layer(kiln_layer_lstm(1, false), KILN_F32, KILN_SHAPE(3, 1), NULL, &m);
  const float *b0 = kiln_tensor_cdata(kiln_variable_value(kiln_variables_find(kiln_model_variables(m), "lstm/bias")));
  assert_true(b0[0] == 0 && b0[1] == 1 && b0[2] == 0 && b0[3] == 0);
  float W[4] = {0.3f, -0.2f, 0.5f, 0.8f}, U[4] = {0.1f, 0.4f, -0.6f, 0.2f}, B[4] = {0.05f, 1, -0.1f, 0.2f};
  set_weight(m, "lstm/kernel", W);
  set_weight(m, "lstm/recurrent_kernel", U);
  set_weight(m, "lstm/bias", B);
  y = predict(m, x);
  double c = 0;
  h = 0;
  for (int t = 0; t < 3; t++) {
    double z[4];
    for (int k = 0; k < 4; k++) z[k] = W[k] * xs[t] + U[k] * h + B[k];
    c = sigm(z[1]) * c + sigm(z[0]) * tanh(z[2]);
    h = sigm(z[3]) * tanh(c);
  }
  expect("lstm", y, &h, 1, 1e-6);
  kiln_tensor_free(y);
  kiln_model_free(m);
  /* GRU with reset_after: gates z r h, input and recurrent biases */
  apply_layer(kiln_layer_gru(1, false), KILN_F32, KILN_SHAPE(3, 1), NULL, &m);
  float GW[3] = {0.3f, -0.5f, 0.9f}, GU[3] = {0.2f, 0.7f, -0.3f}, GB[6] = {0.1f, 0, -0.2f, 0.05f, 0.3f, 0.4f};
  set_weight(m, "gru/kernel", GW);
  set_weight(m, "gru/recurrent_kernel", GU);
  set_weight(m, "gru/bias", GB);
  y = predict(m, x);
  h = 0;
  for (int t = 0; t < 3; t++) {
    double xz[3], hz[3];
    for (int k = 0; k < 3; k++) xz[k] = GW[k] * xs[t] + GB[k], hz[k] = GU[k] * h + GB[3 + k];
    double zg = sigm(xz[0] + hz[0]), rg = sigm(xz[1] + hz[1]), cand = tanh(xz[2] + rg * hz[2]);
    h = zg * h + (1 - zg) * cand;
  }
  expect("gru", y, &h, 1, 1e-6);
  kiln_tensor_free(y);
  kiln_model_free(m);
  kiln_tensor_free(x);
}

/* The orthogonal initializer gives orthonormal columns (rows when wider than tall). */
static void test_orthogonal_initializer(void **state) {
  kiln_variables *vs = kiln_variables_new(3);
  int64_t shapes[2][2] = {{7, 4}, {3, 5}};
  for (int s = 0; s < 2; s++) {
    kiln_variable *v;
    assert_int_equal(kiln_variable_new(vs, s ? "wide" : "tall", KILN_F64, KILN_SHAPE(shapes[s][0], shapes[s][1]),
                                       KILN_ORTHOGONAL, true, &v), KILN_OK);
    const double *q = kiln_tensor_cdata(kiln_variable_value(v));
    int64_t r = shapes[s][0], c = shapes[s][1], k = r > c ? c : r;
    for (int64_t a = 0; a < k; a++)
      for (int64_t b = 0; b < k; b++) {
        double dot = 0;
        for (int64_t i = 0; i < (r > c ? r : c); i++)
          dot += r > c ? q[i * c + a] * q[i * c + b] : q[a * c + i] * q[b * c + i];
        assert_true(fabs(dot - (a == b)) < 1e-12);
      }
  }
  kiln_variables_free(vs);
}

/* ---- JIT vs reference, both modes ---- */

static kiln_model *all_layers_model(void) {
  kiln_model *m = kiln_model_new("everything", 11);
  kiln_ktensor ids = kiln_model_input(m, "ids", KILN_I32, KILN_SHAPE(6));
  kiln_ktensor img = kiln_model_input(m, "img", KILN_F32, KILN_SHAPE(6, 6, 2));
  kiln_ktensor e = kiln_model_apply1(m, kiln_layer_embedding(9, 4), ids);
  kiln_ktensor s1 = kiln_model_apply1(m, kiln_layer_conv1d(5, 3, KILN_PAD_SAME, KILN_ACT_RELU), e);
  s1 = kiln_model_apply1(m, kiln_layer_max_pooling1d(2), s1);
  kiln_ktensor r1 = kiln_model_apply1(m, kiln_layer_lstm(3, false), s1);
  kiln_ktensor r2 = kiln_model_apply1(m, kiln_layer_gru(3, false), kiln_model_apply1(m, kiln_layer_simple_rnn(4, true), e));
  kiln_ktensor g1 = kiln_model_apply1(m, kiln_layer_global_max_pooling1d(), s1);
  kiln_ktensor g2 = kiln_model_apply1(m, kiln_layer_global_average_pooling1d(), e);
  kiln_ktensor c = kiln_model_apply1(m, kiln_layer_conv2d(3, 3, 3, KILN_PAD_VALID, KILN_ACT_ELU), img);
  c = kiln_model_apply1(m, kiln_layer_batch_normalization(), c);
  kiln_ktensor p = kiln_model_apply1(m, kiln_layer_average_pooling2d(2, 2), c);
  kiln_ktensor g3 = kiln_model_apply1(m, kiln_layer_global_average_pooling2d(), p);
  kiln_ktensor g4 = kiln_model_apply1(m, kiln_layer_global_max_pooling2d(), c);
  kiln_ktensor cat = kiln_model_apply(m, kiln_layer_concatenate(-1), (kiln_ktensor[]){r1, r2, g3, g4}, 4);
  kiln_ktensor d = kiln_model_apply1(m, kiln_layer_dense(3, KILN_ACT_SWISH), cat);
  kiln_ktensor ln = kiln_model_apply1(m, kiln_layer_layer_normalization(), kiln_model_apply1(m, kiln_layer_dropout(0.4), d));
  kiln_ktensor gate = kiln_model_apply1(m, kiln_layer_dense(1, KILN_ACT_SIGMOID), g1);
  kiln_ktensor mul = kiln_model_apply(m, kiln_layer_multiply(), (kiln_ktensor[]){ln, gate}, 2);
  kiln_ktensor sum = kiln_model_apply(m, kiln_layer_add(), (kiln_ktensor[]){mul, kiln_model_apply1(m, kiln_layer_dense(3, KILN_ACT_LINEAR), g2)}, 2);
  assert_int_equal(kiln_model_output(m, "y", sum), KILN_OK);
  assert_int_equal(kiln_model_output(m, "features", cat), KILN_OK);
  return m;
}

static void test_all_layers_jit_vs_reference(void **state) {
  kiln_model *m = all_layers_model();
  trng r = {8};
  kiln_tensor *ids = random_tensor(&r, KILN_I32, 2, (int64_t[]){5, 6}, 0, 8.99);
  kiln_tensor *img = random_tensor(&r, KILN_F32, 4, (int64_t[]){5, 6, 6, 2}, -1, 1);
  const kiln_tensor *in[2] = {ids, img};
  kiln_variables *vs = kiln_model_variables(m);
  /* give batch norm's moving statistics non-trivial values */
  set_weight(m, "batch_normalization/moving_mean", (float[]){0.1f, -0.2f, 0.3f});
  set_weight(m, "batch_normalization/moving_variance", (float[]){0.5f, 2, 1.5f});
  for (int training = 0; training < 2; training++) {
    kiln_graph *g = kiln_graph_new();
    kiln_value x[2] = {kiln_placeholder(g, "ids", KILN_I32, KILN_SHAPE(KILN_DYN, 6)),
                       kiln_placeholder(g, "img", KILN_F32, KILN_SHAPE(KILN_DYN, 6, 6, 2))},
               y[2];
    assert_int_equal(kiln_model_call_multi(m, g, x, y, training), KILN_OK);
    kiln_output(g, "y", y[0]);
    kiln_output(g, "features", y[1]);
    /* both runs start from the same state; the assignments (dropout's step, moving
     * statistics) they make must agree too */
    kiln_tensor *saved[64];
    size_t nv = kiln_variables_count(vs);
    for (size_t i = 0; i < nv; i++) saved[i] = copy_of(kiln_variable_value(kiln_variables_at(vs, i)));
    kiln_tensor *ref[2], *jit[2], *after_ref[64];
    if (kiln_evaluate(g, in, 2, ref, 2) != KILN_OK) fail_msg("%s", kiln_errmsg());
    for (size_t i = 0; i < nv; i++) {
      after_ref[i] = copy_of(kiln_variable_value(kiln_variables_at(vs, i)));
      kiln_variable_set(kiln_variables_at(vs, i), saved[i]);
    }
    kiln_exec *e;
    if (kiln_compile(g, NULL, &e) != KILN_OK) fail_msg("%s", kiln_errmsg());
    if (kiln_exec_run(e, in, 2, jit, 2) != KILN_OK) fail_msg("%s", kiln_errmsg());
    assert_int_equal(compare_tensors(training ? "train y" : "y", jit[0], ref[0], 1e-4, 1e-5), 0);
    assert_int_equal(compare_tensors("features", jit[1], ref[1], 1e-4, 1e-5), 0);
    for (size_t i = 0; i < nv; i++) {
      kiln_variable *v = kiln_variables_at(vs, i);
      assert_int_equal(compare_tensors(kiln_variable_name(v), kiln_variable_value(v), after_ref[i], 1e-5, 1e-6), 0);
      bool changed = memcmp(kiln_tensor_cdata(saved[i]), kiln_tensor_cdata(after_ref[i]), kiln_tensor_nbytes(saved[i])) != 0;
      /* only training changes state, and exactly the step counter and the moving statistics */
      bool stateful = strstr(kiln_variable_name(v), "rng_step") || strstr(kiln_variable_name(v), "moving_");
      if (changed != (training && stateful)) fail_msg("%s changed=%d in mode %d", kiln_variable_name(v), changed, training);
      kiln_tensor_free(saved[i]);
      kiln_tensor_free(after_ref[i]);
    }
    for (int i = 0; i < 2; i++) kiln_tensor_free(ref[i]), kiln_tensor_free(jit[i]);
    kiln_exec_free(e);
    kiln_graph_free(g);
  }
  /* the functional summary lists inputs and connections */
  char *buf = model_summary_text(m);
  assert_non_null(strstr(buf, " ids (InputLayer)"));
  assert_non_null(strstr(buf, "lstm, gru, global_average_pooling2d, global_max_pooling2d"));
  assert_non_null(strstr(buf, " embedding (Embedding)       (None, 6, 4)              36"));
  assert_non_null(strstr(buf, " lstm (LSTM)                 (None, 3)                 108")); /* 4*3*(5+3+1) */
  free(buf);
  kiln_tensor_free(ids);
  kiln_tensor_free(img);
  kiln_model_free(m);
}

/* Dropout: a fresh mask each training step, the kept fraction and scale right,
 * identity at inference. BatchNorm in training normalises with batch statistics. */
static void test_dropout_and_batchnorm_training(void **state) {
  kiln_model *m = kiln_sequential_new("drop", 5);
  assert_int_equal(kiln_model_add(m, kiln_layer_dropout(0.25)), KILN_OK);
  assert_int_equal(kiln_model_add(m, kiln_layer_batch_normalization()), KILN_OK);
  assert_int_equal(kiln_model_build(m, KILN_F32, KILN_SHAPE(1000)), KILN_OK);
  kiln_graph *g = kiln_graph_new();
  kiln_output(g, "y", kiln_model_call(m, g, kiln_placeholder(g, "x", KILN_F32, KILN_SHAPE(KILN_DYN, 1000)), true));
  kiln_exec *e;
  assert_int_equal(kiln_compile(g, NULL, &e), KILN_OK);
  float *ones = malloc(sizeof(float) * 4000);
  for (int i = 0; i < 4000; i++) ones[i] = (float)(1 + i / 1000); /* rows of 1, 2, 3, 4 */
  kiln_tensor *x = f32(2, (int64_t[]){4, 1000}, ones), *y1, *y2;
  assert_int_equal(kiln_exec_run(e, (const kiln_tensor *[]){x}, 1, &y1, 1), KILN_OK);
  assert_int_equal(kiln_exec_run(e, (const kiln_tensor *[]){x}, 1, &y2, 1), KILN_OK);
  const float *a = kiln_tensor_cdata(y1), *b = kiln_tensor_cdata(y2);
  /* per feature, batch norm of {0 or 1/.75*row}: count dropped entries via the values */
  int64_t same = 0;
  for (int i = 0; i < 4000; i++) same += a[i] == b[i];
  assert_true(same < 3800); /* different masks */
  kiln_variable *step = kiln_variables_find(kiln_model_variables(m), "dropout/rng_step");
  assert_int_equal(*(const int64_t *)kiln_tensor_cdata(kiln_variable_value(step)), 2);
  /* moving mean after two updates from zero: 1 - 0.99^2 of the batch means */
  const float *mm = kiln_tensor_cdata(kiln_variable_value(kiln_variables_find(kiln_model_variables(m), "batch_normalization/moving_mean")));
  double mean_mm = 0;
  for (int i = 0; i < 1000; i++) mean_mm += mm[i] / 1000;
  /* E[batch mean] = 2.5 (dropout keeps the expectation) */
  assert_true(fabs(mean_mm - 0.0199 * 2.5) < 0.0199 * 2.5 * 0.1);
  /* each feature's column of y has mean 0 over the batch */
  for (int j = 0; j < 1000; j += 97) {
    double s = 0;
    for (int i = 0; i < 4; i++) s += a[i * 1000 + j];
    assert_true(fabs(s) < 1e-4);
  }
  kiln_tensor_free(y1);
  kiln_tensor_free(y2);
  kiln_exec_free(e);
  kiln_graph_free(g);
  /* inference: dropout is the identity; the fraction dropped in training is ~rate */
  kiln_model *d = kiln_sequential_new("d", 9);
  assert_int_equal(kiln_model_add(d, kiln_layer_dropout(0.25)), KILN_OK);
  assert_int_equal(kiln_model_build(d, KILN_F32, KILN_SHAPE(1000)), KILN_OK);
  kiln_tensor *yi = predict(d, x);
  assert_int_equal(compare_tensors("dropout inference", yi, x, 0, 0), 0);
  kiln_tensor_free(yi);
  g = kiln_graph_new();
  kiln_output(g, "y", kiln_model_call(d, g, kiln_placeholder(g, "x", KILN_F32, KILN_SHAPE(KILN_DYN, 1000)), true));
  assert_int_equal(kiln_evaluate(g, (const kiln_tensor *[]){x}, 1, &yi, 1), KILN_OK);
  int64_t zeros = 0;
  for (int i = 0; i < 4000; i++) {
    float v = ((const float *)kiln_tensor_cdata(yi))[i];
    zeros += v == 0;
    assert_true(v == 0 || fabs(v - ones[i] / 0.75) < 1e-5);
  }
  assert_true(zeros > 900 && zeros < 1100); /* 1000 expected, sd 27 */
  kiln_tensor_free(yi);
  kiln_graph_free(g);
  kiln_model_free(d);
  free(ones);
  kiln_tensor_free(x);
  kiln_model_free(m);
}

/* ---- the tutorials' functional models on random data ---- */

/* Question answering: two token sequences, Embedding + LSTM each, concatenated, softmax
 * over answers. The answer is a function of the tokens, so the loss must fall. */
static void test_multi_input_model_trains(void **state) {
  enum { N = 256, T = 6, VOCAB = 12, ANSWERS = 4 };
  kiln_model *m = kiln_model_new("qa", 2);
  kiln_ktensor text = kiln_model_input(m, "text", KILN_I32, KILN_SHAPE(T));
  kiln_ktensor question = kiln_model_input(m, "question", KILN_I32, KILN_SHAPE(T));
  kiln_ktensor a = kiln_model_apply1(m, kiln_layer_lstm(16, false), kiln_model_apply1(m, kiln_layer_embedding(VOCAB, 8), text));
  kiln_ktensor b = kiln_model_apply1(m, kiln_layer_lstm(8, false), kiln_model_apply1(m, kiln_layer_embedding(VOCAB, 8), question));
  kiln_ktensor cat = kiln_model_apply(m, kiln_layer_concatenate(-1), (kiln_ktensor[]){a, b}, 2);
  kiln_ktensor ans = kiln_model_apply1(m, kiln_layer_dense(ANSWERS, KILN_ACT_SOFTMAX), cat);
  assert_int_equal(kiln_model_output(m, "answer", ans), KILN_OK);
  kiln_model_compile_options co = {.optimizer = "adam", .loss = "sparse_categorical_crossentropy",
                                   .metrics = (const char *[]){"accuracy"}, .nmetrics = 1};
  assert_int_equal(kiln_model_compile(m, &co), KILN_OK);
  trng r = {4};
  kiln_tensor *xt = random_tensor(&r, KILN_I32, 2, (int64_t[]){N, T}, 0, VOCAB - 0.01);
  kiln_tensor *xq = random_tensor(&r, KILN_I32, 2, (int64_t[]){N, T}, 0, VOCAB - 0.01);
  kiln_tensor *y = kiln_tensor_new(KILN_I32, 1, (int64_t[]){N});
  const int32_t *t = kiln_tensor_cdata(xt), *q = kiln_tensor_cdata(xq);
  for (int i = 0; i < N; i++) /* one bit from each sequence's last token */
    ((int32_t *)kiln_tensor_data(y))[i] = 2 * (t[i * T + T - 1] % 2) + q[i * T + T - 1] % 2;
  kiln_arrays data = {(const kiln_tensor *[]){xt, xq}, 2, (const kiln_tensor *[]){y}, 1, NULL};
  kiln_fit_options fo = kiln_fit_defaults();
  fo.epochs = 25;
  fo.batch_size = 32;
  fo.verbose = 0;
  kiln_history *h;
  if (kiln_model_fit_arrays(m, &data, &fo, &h) != KILN_OK) fail_msg("%s", kiln_errmsg());
  const double *loss = kiln_history_get(h, "loss"), *acc = kiln_history_get(h, "accuracy");
  assert_non_null(acc);
  if (!(loss[24] < 0.5 * loss[0] && acc[24] > 0.7)) fail_msg("loss %g -> %g, accuracy %g", loss[0], loss[24], acc[24]);
  kiln_history_free(h);
  /* wrong number of inputs is an error that says so */
  kiln_arrays one = {(const kiln_tensor *[]){xt}, 1, (const kiln_tensor *[]){y}, 1, NULL};
  assert_int_equal(kiln_model_fit_arrays(m, &one, &fo, NULL), KILN_ERR_INVALID);
  assert_non_null(strstr(kiln_errmsg(), "has 2 inputs, got 1"));
  kiln_tensor_free(xt);
  kiln_tensor_free(xq);
  kiln_tensor_free(y);
  kiln_model_free(m);
}

/* Age (regression), income (classes) and gender (binary) from one trunk, with loss
 * weights and per-output metrics given by output name. */
static void test_multi_output_model_trains(void **state) {
  enum { N = 400, F = 6 };
  kiln_model *m = kiln_model_new("person", 3);
  kiln_ktensor x = kiln_model_input(m, "features", KILN_F32, KILN_SHAPE(F));
  kiln_ktensor h = kiln_model_apply1(m, kiln_layer_dense(32, KILN_ACT_RELU), x);
  h = kiln_model_apply1(m, kiln_layer_batch_normalization(), h);
  assert_int_equal(kiln_model_output(m, "age", kiln_model_apply1(m, kiln_layer_dense(1, KILN_ACT_LINEAR), h)), KILN_OK);
  assert_int_equal(kiln_model_output(m, "income", kiln_model_apply1(m, kiln_layer_dense(3, KILN_ACT_SOFTMAX), h)), KILN_OK);
  assert_int_equal(kiln_model_output(m, "gender", kiln_model_apply1(m, kiln_layer_dense(1, KILN_ACT_SIGMOID), h)), KILN_OK);
  kiln_output_loss heads[3] = {
      {.output = "gender", .loss = "binary_crossentropy", .weight = 10, .metrics = (const char *[]){"accuracy", "auc"}, .nmetrics = 2},
      {.output = "age", .loss = "mse", .weight = 0.25, .metrics = (const char *[]){"mae"}, .nmetrics = 1},
      {.output = "income", .loss = "sparse_categorical_crossentropy", .weight = 1, .metrics = (const char *[]){"accuracy"}, .nmetrics = 1}};
  kiln_model_compile_options co = {.optimizer = "adam", .outputs = heads, .noutputs = 3};
  assert_int_equal(kiln_model_compile(m, &co), KILN_OK);
  const char *names[] = {"loss", "age_loss", "income_loss", "gender_loss", "age_mae", "income_accuracy",
                         "gender_accuracy", "gender_auc"};
  assert_int_equal(kiln_model_num_results(m), 8);
  for (size_t i = 0; i < 8; i++) assert_string_equal(kiln_model_result_name(m, i), names[i]);
  trng r = {6};
  kiln_tensor *xs = random_tensor(&r, KILN_F32, 2, (int64_t[]){N, F}, -1, 1);
  kiln_tensor *age = kiln_tensor_new(KILN_F32, 2, (int64_t[]){N, 1}), *income = kiln_tensor_new(KILN_I64, 1, (int64_t[]){N});
  kiln_tensor *gender = kiln_tensor_new(KILN_F32, 1, (int64_t[]){N}); /* [N] against [N, 1]: Keras squeezes */
  const float *xd = kiln_tensor_cdata(xs);
  for (int i = 0; i < N; i++) {
    const float *v = xd + i * F;
    ((float *)kiln_tensor_data(age))[i] = 3 + 2 * v[0] - v[1];
    ((int64_t *)kiln_tensor_data(income))[i] = v[2] + v[3] > 0.5 ? 2 : v[2] + v[3] > -0.5 ? 1 : 0;
    ((float *)kiln_tensor_data(gender))[i] = v[4] * v[5] > 0;
  }
  kiln_arrays data = {(const kiln_tensor *[]){xs}, 1, (const kiln_tensor *[]){age, income, gender}, 3, NULL};
  kiln_fit_options fo = kiln_fit_defaults();
  fo.epochs = 40;
  fo.validation_split = 0.2;
  fo.verbose = 0;
  kiln_history *hist;
  if (kiln_model_fit_arrays(m, &data, &fo, &hist) != KILN_OK) fail_msg("%s", kiln_errmsg());
  assert_non_null(kiln_history_get(hist, "val_gender_auc"));
  const double *al = kiln_history_get(hist, "age_loss"), *il = kiln_history_get(hist, "income_loss");
  const double *gl = kiln_history_get(hist, "gender_loss"), *tot = kiln_history_get(hist, "loss");
  int last = (int)kiln_history_epochs(hist) - 1;
  assert_int_equal(last, 39);
  if (!(al[last] < 0.1 * al[0] && il[last] < 0.6 * il[0] && gl[last] < 0.8 * gl[0]))
    fail_msg("age %g -> %g, income %g -> %g, gender %g -> %g", al[0], al[last], il[0], il[last], gl[0], gl[last]);
  /* the total is the weighted sum of the heads */
  assert_true(fabs(tot[last] - (0.25 * al[last] + il[last] + 10 * gl[last])) < 1e-4 * tot[last]);
  assert_true(kiln_history_get(hist, "val_income_accuracy")[last] > 0.7);
  kiln_history_free(hist);
  /* predict returns the three outputs in declaration order */
  kiln_tensor *out[3];
  assert_int_equal(kiln_model_predict_arrays(m, (const kiln_tensor *[]){xs}, 1, 64, out, 3), KILN_OK);
  assert_int_equal(kiln_tensor_dims(out[1])[1], 3);
  for (int i = 0; i < 3; i++) kiln_tensor_free(out[i]);
  /* naming an output that does not exist is a compile error */
  kiln_output_loss bad = {.output = "salary", .loss = "mse"};
  co = (kiln_model_compile_options){.optimizer = "adam", .outputs = &bad, .noutputs = 1};
  assert_int_equal(kiln_model_compile(m, &co), KILN_ERR_INVALID);
  assert_non_null(strstr(kiln_errmsg(), "no output named salary"));
  kiln_tensor_free(xs);
  kiln_tensor_free(age);
  kiln_tensor_free(income);
  kiln_tensor_free(gender);
  kiln_model_free(m);
}

/* ---- losses and metrics with hand-computed values ---- */

/* evaluate() of an identity model: the data is the prediction. */
static void evaluate_identity(const char *loss, const char *metric, const kiln_tensor *pred, const kiln_tensor *y,
                              const kiln_tensor *w, double *res) {
  kiln_model *m = kiln_sequential_new("id", 0);
  assert_int_equal(kiln_model_add(m, kiln_layer_activation(KILN_ACT_LINEAR)), KILN_OK);
  kiln_model_compile_options o = {.optimizer = "sgd", .loss = loss, .metrics = (const char *[]){metric}, .nmetrics = metric ? 1 : 0};
  assert_int_equal(kiln_model_compile(m, &o), KILN_OK);
  kiln_arrays d = {(const kiln_tensor *[]){pred}, 1, (const kiln_tensor *[]){y}, 1, w};
  if (kiln_model_evaluate_arrays(m, &d, 2, res, 2) != KILN_OK) fail_msg("%s", kiln_errmsg());
  kiln_model_free(m);
}

static void test_new_losses_and_metrics(void **state) {
  double r[2];
  kiln_tensor *p = f32(2, (int64_t[]){2, 2}, (float[]){0.5f, 3, -1, 0.2f});
  kiln_tensor *t = f32(2, (int64_t[]){2, 2}, (float[]){0, 1, 1, 0.2f});
  /* Huber: errors .5, 2, 2, 0 -> .125, 1.5, 1.5, 0 */
  evaluate_identity("huber", NULL, p, t, NULL, r);
  assert_true(fabs(r[0] - (0.125 + 1.5) / 2 / 2 - 1.5 / 2 / 2) < 1e-6);
  /* cosine: -cos of each row pair */
  evaluate_identity("cosine_similarity", NULL, p, t, NULL, r);
  double c0 = 3 / sqrt(0.25 + 9), c1 = (-1 + 0.04) / (sqrt(1 + 0.04) * sqrt(1 + 0.04));
  assert_true(fabs(r[0] + (c0 + c1) / 2) < 1e-6);
  kiln_tensor_free(p);
  kiln_tensor_free(t);
  /* KL divergence of distributions */
  p = f32(2, (int64_t[]){1, 3}, (float[]){0.2f, 0.3f, 0.5f});
  t = f32(2, (int64_t[]){1, 3}, (float[]){0.5f, 0.5f, 0});
  evaluate_identity("kld", NULL, p, t, NULL, r);
  assert_true(fabs(r[0] - (0.5 * log(0.5 / 0.2) + 0.5 * log(0.5 / 0.3) + 1e-7 * log(1e-7 / 0.5))) < 1e-6);
  kiln_tensor_free(p);
  kiln_tensor_free(t);
  /* Top-k over 4 classes and 3 examples: the true class ranks 1st, 3rd, 4th */
  p = f32(2, (int64_t[]){3, 4}, (float[]){0.4f, 0.3f, 0.2f, 0.1f, 0.1f, 0.5f, 0.3f, 0.1f, 0.1f, 0.2f, 0.3f, 0.4f});
  int32_t lab[3] = {0, 3, 0};
  kiln_tensor *sy = kiln_tensor_from_data(KILN_I32, 1, (int64_t[]){3}, lab, sizeof lab);
  evaluate_identity("sparse_categorical_crossentropy", "sparse_top_k_categorical_accuracy@2", p, sy, NULL, r);
  assert_true(fabs(r[1] - 1.0 / 3) < 1e-7);
  evaluate_identity("sparse_categorical_crossentropy", "sparse_top_k_categorical_accuracy@3", p, sy, NULL, r);
  assert_true(fabs(r[1] - 2.0 / 3) < 1e-7); /* class 3 of row 1 ties for 3rd: in; row 2 ranks 4th */
  float oh[12] = {1, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0};
  kiln_tensor *ohy = f32(2, (int64_t[]){3, 4}, oh);
  evaluate_identity("categorical_crossentropy", "top_k_categorical_accuracy", p, ohy, NULL, r); /* k = 5: all */
  assert_true(r[1] == 1);
  /* sample weights: a weighted mean of the accuracies and the loss over n */
  kiln_tensor *w = f32(1, (int64_t[]){3}, (float[]){1, 2, 0.5f});
  evaluate_identity("sparse_categorical_crossentropy", "accuracy", p, sy, w, r);
  assert_true(fabs(r[1] - 1.0 / 3.5) < 1e-7);
  assert_true(fabs(r[0] - (-log(0.4) - 2 * log(0.1) - 0.5 * log(0.1)) / 3) < 1e-5);
  kiln_tensor_free(w);
  kiln_tensor_free(ohy);
  kiln_tensor_free(sy);
  kiln_tensor_free(p);
  /* precision, recall, AUC of scores against labels */
  float sc[6] = {0.9f, 0.8f, 0.6f, 0.4f, 0.3f, 0.1f}, lb[6] = {1, 0, 1, 1, 0, 0};
  p = f32(2, (int64_t[]){6, 1}, sc);
  t = f32(2, (int64_t[]){6, 1}, lb);
  evaluate_identity("binary_crossentropy", "precision", p, t, NULL, r);
  assert_true(fabs(r[1] - 2.0 / 3) < 1e-7); /* predicted positive: .9 .8 .6, of which 2 true */
  evaluate_identity("binary_crossentropy", "recall", p, t, NULL, r);
  assert_true(fabs(r[1] - 2.0 / 3) < 1e-7); /* positives .9 .6 .4, 2 found */
  evaluate_identity("binary_crossentropy", "auc", p, t, NULL, r);
  /* exact ROC AUC = P(score of a positive > a negative) = 7/9; 200 thresholds resolve it here */
  assert_true(fabs(r[1] - 7.0 / 9) < 1e-6);
  kiln_tensor_free(p);
  kiln_tensor_free(t);
}

/* class_weight multiplies each example's loss by its class's weight. */
static void test_class_weight(void **state) {
  kiln_model *m = kiln_sequential_new("cw", 1);
  assert_int_equal(kiln_model_add(m, kiln_layer_dense(2, KILN_ACT_SOFTMAX)), KILN_OK);
  kiln_model_compile_options co = {.optimizer = "sgd", .loss = "sparse_categorical_crossentropy"};
  assert_int_equal(kiln_model_compile(m, &co), KILN_OK);
  kiln_tensor *x = f32(2, (int64_t[]){2, 1}, (float[]){1, 2});
  int32_t lab[2] = {0, 1};
  kiln_tensor *y = kiln_tensor_from_data(KILN_I32, 1, (int64_t[]){2}, lab, sizeof lab);
  assert_int_equal(kiln_model_build(m, KILN_F32, KILN_SHAPE(1)), KILN_OK);
  double plain[1];
  assert_int_equal(kiln_model_evaluate(m, x, y, 8, plain, 1), KILN_OK);
  kiln_tensor *pred;
  assert_int_equal(kiln_model_predict(m, x, 8, &pred), KILN_OK);
  const float *pp = kiln_tensor_cdata(pred);
  double l0 = -log(pp[0]), l1 = -log(pp[3]);
  assert_true(fabs(plain[0] - (l0 + l1) / 2) < 1e-6);
  /* one epoch, one batch, sgd: the reported loss is the pre-update weighted loss */
  kiln_fit_options fo = kiln_fit_defaults();
  fo.verbose = 0;
  fo.class_weight = (double[]){3, 0.5};
  fo.nclass_weight = 2;
  fo.shuffle = false;
  kiln_history *h;
  assert_int_equal(kiln_model_fit(m, x, y, &fo, &h), KILN_OK);
  assert_true(fabs(kiln_history_get(h, "loss")[0] - (3 * l0 + 0.5 * l1) / 2) < 1e-6);
  kiln_history_free(h);
  /* ModelCheckpoint with a ".kiln" path saves model files */
  kiln_callback cb = kiln_model_checkpoint("/tmp/kiln_cw_{epoch}.kiln", "loss", false);
  fo.callbacks = &cb, fo.ncallbacks = 1;
  assert_int_equal(kiln_model_fit(m, x, y, &fo, NULL), KILN_OK);
  kiln_callback_free(&cb);
  fo.callbacks = NULL, fo.ncallbacks = 0;
  kiln_model *saved;
  if (kiln_model_load("/tmp/kiln_cw_1.kiln", &saved) != KILN_OK) fail_msg("%s", kiln_errmsg());
  kiln_tensor *p2, *p3;
  assert_int_equal(kiln_model_predict(m, x, 8, &p2), KILN_OK);
  assert_int_equal(kiln_model_predict(saved, x, 8, &p3), KILN_OK);
  assert_int_equal(compare_tensors("checkpointed model", p3, p2, 0, 0), 0);
  kiln_tensor_free(p2);
  kiln_tensor_free(p3);
  kiln_model_free(saved);
  unlink("/tmp/kiln_cw_1.kiln");
  fo.nclass_weight = 1; /* label 1 has no weight */
  assert_int_equal(kiln_model_fit(m, x, y, &fo, NULL), KILN_ERR_INVALID);
  assert_non_null(strstr(kiln_errmsg(), "class 1 but class_weight has 1"));
  kiln_tensor_free(pred);
  kiln_tensor_free(x);
  kiln_tensor_free(y);
  kiln_model_free(m);
}

/* ---- model files ---- */

static void test_model_file_round_trip(void **state) {
  kiln_model *m = all_layers_model();
  trng r = {12};
  kiln_tensor *ids = random_tensor(&r, KILN_I32, 2, (int64_t[]){7, 6}, 0, 8.99);
  kiln_tensor *img = random_tensor(&r, KILN_F32, 4, (int64_t[]){7, 6, 6, 2}, -1, 1);
  const kiln_tensor *in[2] = {ids, img};
  char path[] = "/tmp/kiln_model_XXXXXX";
  close(mkstemp(path));
  assert_int_equal(kiln_model_save(m, path), KILN_OK);
  kiln_model *l;
  if (kiln_model_load(path, &l) != KILN_OK) fail_msg("%s", kiln_errmsg());
  assert_int_equal(kiln_model_num_inputs(l), 2);
  assert_string_equal(kiln_model_input_name(l, 1), "img");
  assert_string_equal(kiln_model_output_name(l, 1), "features");
  kiln_tensor *a[2], *b[2];
  assert_int_equal(kiln_model_predict_arrays(m, in, 2, 4, a, 2), KILN_OK);
  assert_int_equal(kiln_model_predict_arrays(l, in, 2, 4, b, 2), KILN_OK);
  for (int i = 0; i < 2; i++) {
    assert_int_equal(compare_tensors("loaded", b[i], a[i], 0, 0), 0); /* the same graph, bit for bit */
    kiln_tensor_free(a[i]);
    kiln_tensor_free(b[i]);
  }
  /* a loaded model compiles and trains further: one SGD epoch lowers its loss */
  kiln_output_loss heads[1] = {{.output = "y", .loss = "mse"}};
  kiln_model_compile_options co = {.optimizer = "sgd", .outputs = heads, .noutputs = 1};
  assert_int_equal(kiln_model_compile(l, &co), KILN_OK);
  kiln_tensor *target = kiln_tensor_new(KILN_F32, 2, (int64_t[]){7, 3});
  kiln_arrays d = {in, 2, (const kiln_tensor *[]){target}, 1, NULL};
  double before, after;
  assert_int_equal(kiln_model_evaluate_arrays(l, &d, 8, &before, 1), KILN_OK);
  kiln_fit_options fo = kiln_fit_defaults();
  fo.verbose = 0;
  fo.epochs = 5;
  if (kiln_model_fit_arrays(l, &d, &fo, NULL) != KILN_OK) fail_msg("%s", kiln_errmsg());
  assert_int_equal(kiln_model_evaluate_arrays(l, &d, 8, &after, 1), KILN_OK);
  assert_true(after < before);
  kiln_tensor_free(target);
  kiln_model_free(l);
  /* damage: one flipped bit, or a cut, is rejected with the reason; nothing is loaded */
  unsigned char *bytes;
  size_t len;
  assert_int_equal(kiln_read_file(path, &bytes, &len), KILN_OK);
  for (int damage = 0; damage < 2; damage++) {
    FILE *f = fopen(path, "wb");
    if (damage == 0) bytes[len / 2] ^= 0x10;
    fwrite(bytes, 1, damage ? len - 9 : len, f);
    fclose(f);
    l = (kiln_model *)1;
    assert_int_equal(kiln_model_load(path, &l), KILN_ERR_PARSE);
    assert_null(l);
    assert_non_null(strstr(kiln_errmsg(), damage ? "truncated" : "checksum mismatch"));
    if (damage == 0) bytes[len / 2] ^= 0x10;
  }
  /* a checkpoint is not a model file */
  assert_int_equal(kiln_model_save_weights(m, path), KILN_OK);
  assert_int_equal(kiln_model_load(path, &l), KILN_ERR_PARSE);
  assert_non_null(strstr(kiln_errmsg(), "not a kiln model file"));
  free(bytes);
  unlink(path);
  kiln_tensor_free(ids);
  kiln_tensor_free(img);
  kiln_model_free(m);
}

/* A loss given as an object: a user's 4th-power error, against the same by hand. */
static kiln_value quartic(kiln_graph *g, kiln_value y_true, kiln_value y_pred, void *ud) {
  kiln_value e2 = kiln_square(g, kiln_sub(g, y_pred, y_true));
  *(int *)ud += 1;
  return kiln_reduce_mean(g, kiln_square(g, e2), (int64_t[]){-1}, 1, false);
}

static void test_custom_loss(void **state) {
  kiln_model *m = kiln_sequential_new("id", 0);
  assert_int_equal(kiln_model_add(m, kiln_layer_activation(KILN_ACT_LINEAR)), KILN_OK);
  int traced = 0;
  kiln_model_compile_options o = {.optimizer = "sgd", .loss_fn = {quartic, &traced}, .metrics = (const char *[]){"mae"}, .nmetrics = 1};
  assert_int_equal(kiln_model_compile(m, &o), KILN_OK);
  kiln_tensor *p = f32(2, (int64_t[]){2, 2}, (float[]){1, 2, 3, 4}), *t = f32(2, (int64_t[]){2, 2}, (float[]){0, 0, 1, 5});
  double r[2];
  assert_int_equal(kiln_model_evaluate(m, p, t, 8, r, 2), KILN_OK);
  assert_true(fabs(r[0] - ((1 + 16) / 2.0 + (16 + 1) / 2.0) / 2) < 1e-6);
  assert_true(fabs(r[1] - (1 + 2 + 2 + 1) / 4.0) < 1e-6);
  assert_int_equal(traced, 1);
  kiln_tensor_free(p);
  kiln_tensor_free(t);
  kiln_model_free(m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_conv_pool_norm_by_hand),
      cmocka_unit_test(test_embedding_and_merge_by_hand),
      cmocka_unit_test(test_recurrent_by_hand),
      cmocka_unit_test(test_orthogonal_initializer),
      cmocka_unit_test(test_all_layers_jit_vs_reference),
      cmocka_unit_test(test_dropout_and_batchnorm_training),
      cmocka_unit_test(test_multi_input_model_trains),
      cmocka_unit_test(test_multi_output_model_trains),
      cmocka_unit_test(test_new_losses_and_metrics),
      cmocka_unit_test(test_class_weight),
      cmocka_unit_test(test_custom_loss),
      cmocka_unit_test(test_model_file_round_trip),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

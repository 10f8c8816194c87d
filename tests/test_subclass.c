/* Layers made of layers and subclassed models (seed 002's WideDeepModel): sub-layers
 * are named under their parent, trained, frozen, checkpointed, saved and summarised
 * with it; a subclassed model trains and predicts like the functional model it equals. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "harness.h"

/* WideDeep: deep = hidden2(hidden1(x_deep)); out = main(concat(x_wide, deep)). Its
 * sub-layers are created in build, as Keras' __init__ would. */
typedef struct wide_deep {
  int64_t units;
  kiln_layer *hidden1, *hidden2, *concat, *out;
} wide_deep;

static kiln_status wide_deep_build(kiln_layer *l, const kiln_shape *in, size_t n) {
  wide_deep *w = kiln_layer_state(l);
  if (n != 2) return KILN_ERR_INVALID;
  w->hidden1 = kiln_layer_track(l, kiln_layer_dense(w->units, KILN_ACT_RELU));
  w->hidden2 = kiln_layer_track(l, kiln_layer_dense(w->units, KILN_ACT_RELU));
  w->concat = kiln_layer_track(l, kiln_layer_concatenate(-1));
  w->out = kiln_layer_track(l, kiln_layer_named(kiln_layer_dense(1, KILN_ACT_LINEAR), "main"));
  return w->hidden1 && w->hidden2 && w->concat && w->out ? KILN_OK : KILN_ERR_NOMEM;
}

static kiln_value wide_deep_call(kiln_layer *l, kiln_graph *g, const kiln_value *x, size_t n, bool training) {
  wide_deep *w = kiln_layer_state(l);
  kiln_value h = kiln_layer_call(w->hidden1, g, &x[1], 1, training);
  h = kiln_layer_call(w->hidden2, g, &h, 1, training);
  kiln_value both[2] = {x[0], h};
  kiln_value c = kiln_layer_call(w->concat, g, both, 2, training);
  return kiln_layer_call(w->out, g, &c, 1, training);
}

static const kiln_layer_class WIDE_DEEP = {"WideDeepModel", -1, wide_deep_build, wide_deep_call, free};

static kiln_model *subclassed(uint64_t seed) {
  wide_deep *w = calloc(1, sizeof *w);
  w->units = 8;
  kiln_input_spec in[2] = {{"wide", KILN_F32, KILN_SHAPE(5)}, {"deep", KILN_F32, KILN_SHAPE(6)}};
  kiln_model *m = kiln_model_subclassed("wide_deep", seed, kiln_layer_new(&WIDE_DEEP, NULL, w), in, 2, "output");
  if (!m) fail_msg("%s", kiln_errmsg());
  kiln_model_compile_options co = {.optimizer = "adam", .loss = "mse"};
  if (kiln_model_compile(m, &co) != KILN_OK) fail_msg("%s", kiln_errmsg());
  return m;
}

/* A housing-like regression table: y depends on both feature groups. */
static void make_data(kiln_tensor **wide, kiln_tensor **deep, kiln_tensor **y, int64_t rows) {
  trng r = {21};
  *wide = random_tensor(&r, KILN_F32, 2, (int64_t[]){rows, 5}, -1, 1);
  *deep = random_tensor(&r, KILN_F32, 2, (int64_t[]){rows, 6}, -1, 1);
  *y = kiln_tensor_new(KILN_F32, 2, (int64_t[]){rows, 1});
  const float *a = kiln_tensor_cdata(*wide), *b = kiln_tensor_cdata(*deep);
  for (int64_t i = 0; i < rows; i++)
    ((float *)kiln_tensor_data(*y))[i] = 0.5f * a[i * 5] - a[i * 5 + 3] + b[i * 6 + 1] * b[i * 6 + 2] + (b[i * 6 + 4] > 0);
}

static kiln_history *fit(kiln_model *m, kiln_tensor *wide, kiln_tensor *deep, kiln_tensor *y, int epochs) {
  kiln_arrays d = {(const kiln_tensor *const[]){wide, deep}, 2, (const kiln_tensor *const[]){y}, 1, NULL};
  kiln_fit_options fo = kiln_fit_defaults();
  fo.epochs = epochs, fo.verbose = 0;
  kiln_history *h = NULL;
  if (kiln_model_fit_arrays(m, &d, &fo, &h) != KILN_OK) fail_msg("%s", kiln_errmsg());
  return h;
}

static kiln_tensor *predict(kiln_model *m, kiln_tensor *wide, kiln_tensor *deep) {
  kiln_tensor *out = NULL;
  if (kiln_model_predict_arrays(m, (const kiln_tensor *const[]){wide, deep}, 2, 32, &out, 1) != KILN_OK)
    fail_msg("%s", kiln_errmsg());
  return out;
}

static void test_sub_layers_are_named_trained_and_summarised(void **state) {
  kiln_model *m = subclassed(3);
  kiln_tensor *wide, *deep, *y;
  make_data(&wide, &deep, &y, 256);
  kiln_history *h = fit(m, wide, deep, y, 30);
  const double *loss = kiln_history_get(h, "loss");
  printf("    loss %.4f -> %.4f\n", loss[0], loss[29]);
  assert_true(loss[29] < 0.6 * loss[0]);
  kiln_variables *vs = kiln_model_variables(m);
  const char *names[] = {"wide_deep/dense/kernel", "wide_deep/dense/bias", "wide_deep/dense_1/kernel", "wide_deep/main/kernel"};
  for (int i = 0; i < 4; i++)
    if (!kiln_variables_find(vs, names[i])) fail_msg("no variable %s", names[i]);
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  assert_int_equal(kiln_model_summary(m, f), KILN_OK);
  fclose(f);
  printf("%s", text);
  /* 6*8+8 + 8*8+8 + 13*1+1 = 142 parameters, all under the body's row */
  assert_non_null(strstr(text, "wide_deep (WideDeepModel)"));
  assert_non_null(strstr(text, "  dense (Dense)"));
  assert_non_null(strstr(text, "  main (Dense)"));
  assert_non_null(strstr(text, "Total params: 142"));
  free(text);
  kiln_history_free(h);
  kiln_tensor_free(wide), kiln_tensor_free(deep), kiln_tensor_free(y);
  kiln_model_free(m);
}

/* The same architecture built functionally, with the subclassed model's weights, predicts the same. */
static void test_subclassed_equals_functional(void **state) {
  kiln_model *s = subclassed(5);
  kiln_tensor *wide, *deep, *y;
  make_data(&wide, &deep, &y, 64);
  kiln_history_free(fit(s, wide, deep, y, 2));
  kiln_model *f = kiln_model_new("functional", 5);
  kiln_ktensor a = kiln_model_input(f, "wide", KILN_F32, KILN_SHAPE(5)), b = kiln_model_input(f, "deep", KILN_F32, KILN_SHAPE(6));
  kiln_ktensor h = kiln_model_apply1(f, kiln_layer_named(kiln_layer_dense(8, KILN_ACT_RELU), "dense"), b);
  h = kiln_model_apply1(f, kiln_layer_named(kiln_layer_dense(8, KILN_ACT_RELU), "dense_1"), h);
  kiln_ktensor both[2] = {a, h};
  h = kiln_model_apply(f, kiln_layer_concatenate(-1), both, 2);
  assert_int_equal(kiln_model_output(f, "output", kiln_model_apply1(f, kiln_layer_named(kiln_layer_dense(1, KILN_ACT_LINEAR), "main"), h)), KILN_OK);
  kiln_tensor *pf = predict(f, wide, deep); /* builds f's weights */
  kiln_tensor_free(pf);
  kiln_variables *fv = kiln_model_variables(f);
  for (size_t i = 0; i < kiln_variables_count(fv); i++) {
    kiln_variable *v = kiln_variables_at(fv, i);
    char name[256];
    snprintf(name, sizeof name, "wide_deep/%s", kiln_variable_name(v));
    kiln_variable *src = kiln_variables_find(kiln_model_variables(s), name);
    if (!src) fail_msg("subclassed model has no %s", name);
    assert_int_equal(kiln_variable_set(v, kiln_variable_value(src)), KILN_OK);
  }
  kiln_tensor *ps = predict(s, wide, deep);
  pf = predict(f, wide, deep);
  assert_memory_equal(kiln_tensor_cdata(ps), kiln_tensor_cdata(pf), kiln_tensor_nbytes(ps));
  kiln_tensor_free(ps), kiln_tensor_free(pf);
  kiln_tensor_free(wide), kiln_tensor_free(deep), kiln_tensor_free(y);
  kiln_model_free(s);
  kiln_model_free(f);
}

/* Checkpoints restore bit-exactly; a model file predicts the same without this code. */
static void test_checkpoint_and_model_file(void **state) {
  kiln_model *m = subclassed(7);
  kiln_tensor *wide, *deep, *y;
  make_data(&wide, &deep, &y, 96);
  kiln_history_free(fit(m, wide, deep, y, 3));
  char ckpt[] = "/tmp/kiln_subclass_XXXXXX";
  int fd = mkstemp(ckpt);
  assert_true(fd >= 0);
  close(fd);
  assert_int_equal(kiln_model_save_weights(m, ckpt), KILN_OK);
  kiln_tensor *before = predict(m, wide, deep);
  kiln_history_free(fit(m, wide, deep, y, 2)); /* weights move on */
  assert_int_equal(kiln_model_load_weights(m, ckpt), KILN_OK);
  kiln_tensor *restored = predict(m, wide, deep);
  assert_memory_equal(kiln_tensor_cdata(before), kiln_tensor_cdata(restored), kiln_tensor_nbytes(before));
  char path[64];
  snprintf(path, sizeof path, "%s.kiln", ckpt);
  assert_int_equal(kiln_model_save(m, path), KILN_OK);
  kiln_model *loaded = NULL;
  if (kiln_model_load(path, &loaded) != KILN_OK) fail_msg("%s", kiln_errmsg());
  kiln_tensor *again = predict(loaded, wide, deep);
  assert_memory_equal(kiln_tensor_cdata(before), kiln_tensor_cdata(again), kiln_tensor_nbytes(before));
  unlink(ckpt), unlink(path);
  kiln_tensor_free(before), kiln_tensor_free(restored), kiln_tensor_free(again);
  kiln_tensor_free(wide), kiln_tensor_free(deep), kiln_tensor_free(y);
  kiln_model_free(loaded);
  kiln_model_free(m);
}

/* Freezing one nested sub-layer keeps exactly its weights; freezing the body all of them. */
static void test_freezing_a_nested_sub_layer(void **state) {
  kiln_model *m = subclassed(9);
  kiln_tensor *wide, *deep, *y;
  make_data(&wide, &deep, &y, 64);
  kiln_history_free(fit(m, wide, deep, y, 1)); /* builds */
  kiln_layer *body = kiln_model_find_layer(m, "wide_deep");
  assert_non_null(body);
  wide_deep *w = kiln_layer_state(body);
  kiln_layer_set_trainable(w->hidden1, false);
  kiln_model_compile_options co = {.optimizer = "adam", .loss = "mse"}; /* Keras: compile again after freezing */
  assert_int_equal(kiln_model_compile(m, &co), KILN_OK);
  kiln_variables *vs = kiln_model_variables(m);
  const char *frozen = "wide_deep/dense/kernel", *live = "wide_deep/dense_1/kernel";
  kiln_tensor *f0 = kiln_tensor_from_data(KILN_F32, 2, (int64_t[]){6, 8}, kiln_tensor_cdata(kiln_variable_value(kiln_variables_find(vs, frozen))), 6 * 8 * 4);
  kiln_tensor *l0 = kiln_tensor_from_data(KILN_F32, 2, (int64_t[]){8, 8}, kiln_tensor_cdata(kiln_variable_value(kiln_variables_find(vs, live))), 8 * 8 * 4);
  assert_false(kiln_variable_trainable(kiln_variables_find(vs, frozen)));
  kiln_history_free(fit(m, wide, deep, y, 2));
  assert_memory_equal(kiln_tensor_cdata(f0), kiln_tensor_cdata(kiln_variable_value(kiln_variables_find(vs, frozen))), 6 * 8 * 4);
  assert_memory_not_equal(kiln_tensor_cdata(l0), kiln_tensor_cdata(kiln_variable_value(kiln_variables_find(vs, live))), 8 * 8 * 4);
  kiln_layer_set_trainable(body, false);
  assert_false(kiln_variable_trainable(kiln_variables_find(vs, live)));
  assert_false(kiln_variable_trainable(kiln_variables_find(vs, "wide_deep/main/bias")));
  kiln_tensor_free(f0), kiln_tensor_free(l0);
  kiln_tensor_free(wide), kiln_tensor_free(deep), kiln_tensor_free(y);
  kiln_model_free(m);
}

static void test_bad_tracking_is_named(void **state) {
  kiln_layer *a = kiln_layer_dense(3, KILN_ACT_RELU), *b = kiln_layer_dense(3, KILN_ACT_RELU);
  assert_ptr_equal(kiln_layer_track(a, b), b);
  assert_null(kiln_layer_track(a, b)); /* b has a parent already: refused, b stays a's */
  assert_non_null(strstr(kiln_errmsg(), "already has a parent"));
  assert_null(kiln_layer_track(a, kiln_layer_named(kiln_layer_dense(2, KILN_ACT_RELU), "dense")));
  assert_non_null(strstr(kiln_errmsg(), "a sub-layer of that name exists"));
  assert_null(kiln_layer_track(a, NULL));
  kiln_layer_free(a); /* frees b */
  kiln_graph *g = kiln_graph_new();
  kiln_layer *lonely = kiln_layer_dense(2, KILN_ACT_RELU);
  kiln_value x = kiln_placeholder(g, "x", KILN_F32, KILN_SHAPE(1, 2));
  assert_int_equal(kiln_layer_call(lonely, g, &x, 1, false).id, KILN_NONE);
  assert_non_null(strstr(kiln_graph_errmsg(g), "in no model"));
  kiln_layer_free(lonely);
  kiln_graph_free(g);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sub_layers_are_named_trained_and_summarised),
      cmocka_unit_test(test_subclassed_equals_functional),
      cmocka_unit_test(test_checkpoint_and_model_file),
      cmocka_unit_test(test_freezing_a_nested_sub_layer),
      cmocka_unit_test(test_bad_tracking_is_named),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

/* ONNX import details the conformance data does not exercise: initializers in an
 * external data file (and such files truncated or pointing outside the model's
 * directory), inputs frozen as constants, and TensorProto round trips. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "harness.h"
#include "kiln/kiln.h"
#include "onnx/onnx.pb-c.h"
#include "runtime/tensor_impl.h"

#define DATA "/usr/share/libonnx-testdata/data/"

static unsigned char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  *len = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *b = malloc(*len);
  assert_int_equal(fread(b, 1, *len, f), *len);
  fclose(f);
  return b;
}

static void spit(const char *path, const void *data, size_t len) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(data, 1, len, f), len);
  fclose(f);
}

static double max_diff(const kiln_tensor *a, const kiln_tensor *b) {
  assert_int_equal(kiln_tensor_numel(a), kiln_tensor_numel(b));
  double m = 0;
  for (int64_t i = 0; i < kiln_tensor_numel(a); i++) m = fmax(m, fabs(kiln_tensor_get_f64(a, i) - kiln_tensor_get_f64(b, i)));
  return m;
}

/* test_Conv2d with every initializer moved to dir/weights.bin (at increasing offsets). */
static void write_external_model(const char *dir, const char *location) {
  size_t len;
  unsigned char *buf = slurp(DATA "pytorch-converted/test_Conv2d/model.onnx", &len);
  Onnx__ModelProto *m = onnx__model_proto__unpack(NULL, len, buf);
  free(buf);
  assert_non_null(m);
  char path[512];
  snprintf(path, sizeof path, "%s/weights.bin", dir);
  FILE *w = fopen(path, "wb");
  assert_non_null(w);
  long offset = 0;
  static Onnx__StringStringEntryProto entries[16][3];
  static Onnx__StringStringEntryProto *lists[16][3];
  static char numbers[16][2][32];
  assert_true(m->graph->n_initializer <= 16);
  for (size_t i = 0; i < m->graph->n_initializer; i++) {
    Onnx__TensorProto *t = m->graph->initializer[i];
    assert_true(t->has_raw_data);
    assert_int_equal(fwrite(t->raw_data.data, 1, t->raw_data.len, w), t->raw_data.len);
    snprintf(numbers[i][0], sizeof numbers[i][0], "%ld", offset);
    snprintf(numbers[i][1], sizeof numbers[i][1], "%zu", t->raw_data.len);
    offset += (long)t->raw_data.len;
    const char *kv[3][2] = {{"location", location}, {"offset", numbers[i][0]}, {"length", numbers[i][1]}};
    for (int k = 0; k < 3; k++) {
      onnx__string_string_entry_proto__init(&entries[i][k]);
      entries[i][k].key = (char *)kv[k][0], entries[i][k].value = (char *)kv[k][1];
      lists[i][k] = &entries[i][k];
    }
    t->has_raw_data = 0;
    t->has_data_location = 1, t->data_location = ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL;
    t->n_external_data = 3, t->external_data = lists[i];
  }
  fclose(w);
  size_t n = onnx__model_proto__get_packed_size(m);
  unsigned char *out = malloc(n);
  onnx__model_proto__pack(m, out);
  snprintf(path, sizeof path, "%s/model.onnx", dir);
  spit(path, out, n);
  free(out);
  for (size_t i = 0; i < m->graph->n_initializer; i++) /* ours, not protobuf-c's to free */
    m->graph->initializer[i]->n_external_data = 0, m->graph->initializer[i]->external_data = NULL;
  onnx__model_proto__free_unpacked(m, NULL);
}

static void test_external_initializers(void **state) {
  (void)state;
  char dir[] = "/tmp/kiln_onnx_XXXXXX", path[512];
  assert_non_null(mkdtemp(dir));
  write_external_model(dir, "weights.bin");
  snprintf(path, sizeof path, "%s/model.onnx", dir);
  kiln_graph *g;
  if (kiln_onnx_load(path, &g) != KILN_OK) fail_msg("%s", kiln_errmsg());
  kiln_tensor *x, *want, *y;
  assert_int_equal(kiln_onnx_load_tensor(DATA "pytorch-converted/test_Conv2d/test_data_set_0/input_0.pb", &x, NULL), KILN_OK);
  assert_int_equal(kiln_onnx_load_tensor(DATA "pytorch-converted/test_Conv2d/test_data_set_0/output_0.pb", &want, NULL), KILN_OK);
  assert_int_equal(kiln_evaluate(g, (const kiln_tensor *const *)&x, 1, &y, 1), KILN_OK);
  assert_true(max_diff(y, want) < 1e-4);
  kiln_tensor_free(y);
  kiln_graph_free(g);

  /* the data file one byte short: refused, naming the tensor's file */
  char wpath[600];
  snprintf(wpath, sizeof wpath, "%s/weights.bin", dir);
  size_t len;
  unsigned char *w = slurp(wpath, &len);
  spit(wpath, w, len - 1);
  free(w);
  assert_int_equal(kiln_onnx_load(path, &g), KILN_ERR_PARSE);
  assert_non_null(strstr(kiln_errmsg(), "weights.bin is shorter"));

  /* a location outside the model's directory is refused */
  write_external_model(dir, "../weights.bin");
  assert_int_equal(kiln_onnx_load(path, &g), KILN_ERR_PARSE);
  assert_non_null(strstr(kiln_errmsg(), "safe location"));
  unlink(wpath);
  unlink(path);
  rmdir(dir);
  kiln_tensor_free(x);
  kiln_tensor_free(want);
}

/* Reshape's shape comes from a graph input: offered, it becomes a constant. */
static void test_offered_inputs_freeze(void **state) {
  (void)state;
  const char *dir = DATA "node/test_reshape_reordered_all_dims/";
  char path[512];
  kiln_tensor *in[2];
  char *names[2];
  for (int i = 0; i < 2; i++) {
    snprintf(path, sizeof path, "%stest_data_set_0/input_%d.pb", dir, i);
    assert_int_equal(kiln_onnx_load_tensor(path, &in[i], &names[i]), KILN_OK);
  }
  snprintf(path, sizeof path, "%smodel.onnx", dir);
  kiln_graph *g;
  assert_int_equal(kiln_onnx_load(path, &g), KILN_ERR_UNSUPPORTED);
  assert_non_null(strstr(kiln_errmsg(), "(Reshape): input 1 must be a constant"));
  bool frozen[2] = {true, true};
  kiln_onnx_options o = {(const char *const *)names, (const kiln_tensor *const *)in, 2, frozen};
  if (kiln_onnx_load_with(path, &o, &g) != KILN_OK) fail_msg("%s", kiln_errmsg());
  assert_false(frozen[0]); /* data stays an input */
  assert_true(frozen[1]);
  kiln_tensor *y, *want;
  assert_int_equal(kiln_evaluate(g, (const kiln_tensor *const *)in, 1, &y, 1), KILN_OK);
  snprintf(path, sizeof path, "%stest_data_set_0/output_0.pb", dir);
  assert_int_equal(kiln_onnx_load_tensor(path, &want, NULL), KILN_OK);
  assert_true(max_diff(y, want) == 0);
  kiln_tensor_free(y);
  kiln_tensor_free(want);
  kiln_graph_free(g);
  /* a value of the wrong type is refused by name */
  kiln_tensor *bad = kiln_tensor_new(KILN_F32, 1, (int64_t[]){3});
  kiln_onnx_options ob = {(const char *const *)names, (const kiln_tensor *const *)(kiln_tensor *[]){in[0], bad}, 2, NULL};
  snprintf(path, sizeof path, "%smodel.onnx", dir);
  assert_int_equal(kiln_onnx_load_with(path, &ob, &g), KILN_ERR_INVALID);
  assert_non_null(strstr(kiln_errmsg(), "input 'shape'"));
  kiln_tensor_free(bad);
  for (int i = 0; i < 2; i++) kiln_tensor_free(in[i]), free(names[i]);
}

static void test_tensor_round_trip(void **state) {
  (void)state;
  int64_t v[6] = {1, -2, 3, INT64_MAX, INT64_MIN, 0};
  kiln_tensor *t = kiln_tensor_from_data(KILN_I64, 2, (int64_t[]){2, 3}, v, sizeof v), *back;
  char path[] = "/tmp/kiln_tensor_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  assert_int_equal(kiln_onnx_save_tensor(path, t, "ids"), KILN_OK);
  char *name;
  assert_int_equal(kiln_onnx_load_tensor(path, &back, &name), KILN_OK);
  assert_string_equal(name, "ids");
  assert_int_equal(kiln_tensor_rank(back), 2);
  assert_memory_equal(kiln_tensor_cdata(back), v, sizeof v);
  /* a declared shape the file has no values for is refused before allocating */
  size_t len;
  unsigned char *b = slurp(path, &len);
  Onnx__TensorProto *tp = onnx__tensor_proto__unpack(NULL, len, b);
  tp->dims[0] = INT64_C(1) << 40;
  size_t n = onnx__tensor_proto__get_packed_size(tp);
  unsigned char *out = malloc(n);
  onnx__tensor_proto__pack(tp, out);
  spit(path, out, n);
  kiln_tensor *huge;
  assert_int_equal(kiln_onnx_load_tensor(path, &huge, NULL), KILN_ERR_PARSE);
  assert_non_null(strstr(kiln_errmsg(), "the shape needs"));
  onnx__tensor_proto__free_unpacked(tp, NULL);
  free(out), free(b), free(name);
  unlink(path);
  kiln_tensor_free(t);
  kiln_tensor_free(back);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_external_initializers),
      cmocka_unit_test(test_offered_inputs_freeze),
      cmocka_unit_test(test_tensor_round_trip),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

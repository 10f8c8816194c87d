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

/* A value_info of a float tensor [d0, d1]. */
static Onnx__ValueInfoProto *float_info(const char *name, int64_t d0, int64_t d1) {
  Onnx__ValueInfoProto *vi = calloc(1, sizeof *vi);
  Onnx__TypeProto *tp = calloc(1, sizeof *tp);
  Onnx__TypeProto__Tensor *tt = calloc(1, sizeof *tt);
  Onnx__TensorShapeProto *sh = calloc(1, sizeof *sh);
  Onnx__TensorShapeProto__Dimension **dims = calloc(2, sizeof *dims);
  onnx__value_info_proto__init(vi), onnx__type_proto__init(tp), onnx__type_proto__tensor__init(tt);
  onnx__tensor_shape_proto__init(sh);
  int64_t d[2] = {d0, d1};
  for (int i = 0; i < 2; i++) {
    dims[i] = calloc(1, sizeof **dims);
    onnx__tensor_shape_proto__dimension__init(dims[i]);
    dims[i]->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE, dims[i]->dim_value = d[i];
  }
  sh->n_dim = 2, sh->dim = dims;
  tt->has_elem_type = 1, tt->elem_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, tt->shape = sh;
  tp->value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE, tp->tensor_type = tt;
  vi->name = strdup(name), vi->type = tp;
  return vi;
}

/* A float initializer [d0, d1] with value f(i, j), as raw bytes. */
static Onnx__TensorProto *float_initializer(const char *name, int64_t d0, int64_t d1, double (*f)(int64_t, int64_t)) {
  Onnx__TensorProto *t = calloc(1, sizeof *t);
  onnx__tensor_proto__init(t);
  t->name = strdup(name);
  t->has_data_type = 1, t->data_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
  t->n_dims = 2, t->dims = malloc(2 * sizeof *t->dims), t->dims[0] = d0, t->dims[1] = d1;
  float *v = malloc(sizeof *v * (size_t)(d0 * d1));
  for (int64_t i = 0; i < d0; i++)
    for (int64_t j = 0; j < d1; j++) v[i * d1 + j] = (float)f(i, j);
  t->has_raw_data = 1, t->raw_data.len = sizeof *v * (size_t)(d0 * d1), t->raw_data.data = (uint8_t *)v;
  return t;
}

static Onnx__NodeProto *node(const char *op, const char *in0, const char *in1, const char *out) {
  Onnx__NodeProto *n = calloc(1, sizeof *n);
  onnx__node_proto__init(n);
  n->op_type = strdup(op);
  n->n_input = in1 ? 2 : 1, n->input = calloc(2, sizeof *n->input);
  n->input[0] = strdup(in0);
  if (in1) n->input[1] = strdup(in1);
  n->n_output = 1, n->output = calloc(1, sizeof *n->output), n->output[0] = strdup(out);
  return n;
}

static double w1_at(int64_t i, int64_t j) { return sin(0.37 * (double)i + 0.11 * (double)j) / 16; }
static double w2t_at(int64_t i, int64_t j) { return cos(0.23 * (double)i - 0.07 * (double)j) / 16; }

/* Initializers of 64 KiB and more become the graph's constants as protobuf-c read them,
 * with a host copy only when a node folds them: y = (x W1) transpose(W2t), where the
 * Transpose of the 64 KiB W2t folds at import, W1 (128 KiB) is only read by MatMul,
 * and a small initializer takes the copying path; checked against the same sums in C. */
static void test_large_initializers(void **state) {
  (void)state;
  enum { B = 2, K = 256, H = 128 };
  Onnx__ModelProto m = ONNX__MODEL_PROTO__INIT;
  Onnx__GraphProto gp = ONNX__GRAPH_PROTO__INIT;
  Onnx__OperatorSetIdProto opset = ONNX__OPERATOR_SET_ID_PROTO__INIT, *opsets[1] = {&opset};
  opset.has_version = 1, opset.version = 13;
  m.has_ir_version = 1, m.ir_version = 7, m.n_opset_import = 1, m.opset_import = opsets, m.graph = &gp;
  Onnx__TensorProto *inits[3] = {float_initializer("W1", K, H, w1_at), float_initializer("W2t", H, H, w2t_at),
                                 float_initializer("bias", 1, H, w2t_at)};
  Onnx__NodeProto *nodes[4] = {node("MatMul", "x", "W1", "h"), node("Transpose", "W2t", NULL, "W2"),
                               node("MatMul", "h", "W2", "hy"), node("Add", "hy", "bias", "y")};
  Onnx__ValueInfoProto *ins[1] = {float_info("x", B, K)}, *outs[1] = {float_info("y", B, H)};
  gp.name = "large", gp.n_initializer = 3, gp.initializer = inits, gp.n_node = 4, gp.node = nodes;
  gp.n_input = 1, gp.input = ins, gp.n_output = 1, gp.output = outs;
  size_t n = onnx__model_proto__get_packed_size(&m);
  unsigned char *buf = malloc(n);
  onnx__model_proto__pack(&m, buf);
  char path[] = "/tmp/kiln_large_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  spit(path, buf, n);
  free(buf);
  for (int i = 0; i < 3; i++) onnx__tensor_proto__free_unpacked(inits[i], NULL); /* calloc/malloc/strdup: free works */
  for (int i = 0; i < 4; i++) onnx__node_proto__free_unpacked(nodes[i], NULL);
  onnx__value_info_proto__free_unpacked(ins[0], NULL), onnx__value_info_proto__free_unpacked(outs[0], NULL);

  kiln_graph *g;
  if (kiln_onnx_load(path, &g) != KILN_OK) fail_msg("%s", kiln_errmsg());
  unlink(path);
  kiln_tensor *x = kiln_tensor_new(KILN_F32, 2, (int64_t[]){B, K}), *y;
  for (int64_t i = 0; i < B * K; i++) ((float *)kiln_tensor_data(x))[i] = (float)((double)(i % 17) / 8 - 1);
  assert_int_equal(kiln_evaluate(g, (const kiln_tensor *const *)&x, 1, &y, 1), KILN_OK);
  const float *xs = kiln_tensor_cdata(x), *ys = kiln_tensor_cdata(y);
  double worst = 0;
  for (int64_t b = 0; b < B; b++)
    for (int64_t o = 0; o < H; o++) {
      double want = w2t_at(0, o);
      for (int64_t j = 0; j < H; j++) {
        double h = 0;
        for (int64_t k = 0; k < K; k++) h += (double)xs[b * K + k] * (double)(float)w1_at(k, j);
        want += h * (double)(float)w2t_at(o, j); /* W2 = W2t transposed: W2[j][o] = W2t[o][j] */
      }
      worst = fmax(worst, fabs(ys[b * H + o] - want));
    }
  if (worst > 1e-4) fail_msg("largest difference from the C sums: %g", worst);
  kiln_tensor_free(x), kiln_tensor_free(y);
  kiln_graph_free(g);
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
      cmocka_unit_test(test_large_initializers),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

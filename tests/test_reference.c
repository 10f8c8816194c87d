/* The reference evaluator against hand-computed values: it is the oracle for every
 * other test, so it is itself checked against arithmetic done by hand. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "harness.h"

static kiln_tensor *f32(int rank, const int64_t *dims, const float *v) {
  int64_t n = kiln_shape_numel(rank, dims);
  return kiln_tensor_from_data(KILN_F32, rank, dims, v, (size_t)n * 4);
}

/* Evaluates the single output of g on the given inputs. */
static kiln_tensor *eval1(kiln_graph *g, kiln_value y, kiln_tensor **in, size_t nin) {
  assert_int_equal(kiln_output(g, "y", y), KILN_OK);
  kiln_tensor *out = NULL;
  if (kiln_evaluate(g, (const kiln_tensor *const *)in, nin, &out, 1) != KILN_OK) fail_msg("%s", kiln_errmsg());
  return out;
}

static void expect_f32(kiln_tensor *t, const float *want, int64_t n) {
  assert_int_equal(kiln_tensor_numel(t), n);
  const float *d = kiln_tensor_cdata(t);
  for (int64_t i = 0; i < n; i++)
    if (fabsf(d[i] - want[i]) > 1e-6f * (1 + fabsf(want[i]))) fail_msg("element %lld: %g != %g", (long long)i, d[i], want[i]);
  kiln_tensor_free(t);
}

static void test_broadcast_add(void **s) {
  kiln_graph *g = kiln_graph_new();
  kiln_value a = kiln_placeholder(g, "a", KILN_F32, KILN_SHAPE(2, 3));
  kiln_value b = kiln_placeholder(g, "b", KILN_F32, KILN_SHAPE(3));
  kiln_tensor *in[2] = {f32(2, (int64_t[]){2, 3}, (float[]){1, 2, 3, 4, 5, 6}), f32(1, (int64_t[]){3}, (float[]){10, 20, 30})};
  expect_f32(eval1(g, kiln_add(g, a, b), in, 2), (float[]){11, 22, 33, 14, 25, 36}, 6);
  kiln_tensor_free(in[0]), kiln_tensor_free(in[1]);
  kiln_graph_free(g);
}

static void test_matmul_transposes(void **s) {
  /* [[1,2],[3,4]] @ [[5,6],[7,8]] = [[19,22],[43,50]]; with a^T: [[26,30],[38,44]] */
  kiln_graph *g = kiln_graph_new();
  kiln_value a = kiln_constant(g, KILN_F32, KILN_SHAPE(2, 2), (float[]){1, 2, 3, 4});
  kiln_value b = kiln_constant(g, KILN_F32, KILN_SHAPE(2, 2), (float[]){5, 6, 7, 8});
  kiln_output(g, "ab", kiln_matmul(g, a, b, false, false));
  kiln_output(g, "atb", kiln_matmul(g, a, b, true, false));
  kiln_output(g, "abt", kiln_matmul(g, a, b, false, true));
  kiln_tensor *o[3];
  assert_int_equal(kiln_evaluate(g, NULL, 0, o, 3), KILN_OK);
  expect_f32(o[0], (float[]){19, 22, 43, 50}, 4);
  expect_f32(o[1], (float[]){26, 30, 38, 44}, 4);
  expect_f32(o[2], (float[]){17, 23, 39, 53}, 4);
  kiln_graph_free(g);
}

static void test_conv_and_pools(void **s) {
  /* 3x3 image 1..9, 2x2 filter of ones, valid: window sums 12 16 24 28. */
  kiln_graph *g = kiln_graph_new();
  float img[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  kiln_value x = kiln_constant(g, KILN_F32, KILN_SHAPE(1, 3, 3, 1), img);
  kiln_value w = kiln_fill(g, KILN_F32, KILN_SHAPE(2, 2, 1, 1), 1);
  kiln_output(g, "conv", kiln_conv2d(g, x, w, NULL));
  kiln_pool2d_opts p = {.window = {2, 2}, .strides = {1, 1}};
  kiln_output(g, "max", kiln_max_pool2d(g, x, &p));
  p.padding = KILN_PAD_SAME;
  p.strides[0] = p.strides[1] = 2;
  /* same, stride 2 on 3x3: windows {1,2,4,5} {3,6} {7,8} {9}, averaged over real elements only */
  kiln_output(g, "avg", kiln_avg_pool2d(g, x, &p));
  kiln_conv2d_opts co = {.padding = KILN_PAD_SAME};
  /* same padding, 2x2 ones: TF pads bottom/right: sums 12 16 9 / 24 28 15 / 15 17 9 */
  kiln_output(g, "conv_same", kiln_conv2d(g, x, w, &co));
  kiln_tensor *o[4];
  assert_int_equal(kiln_evaluate(g, NULL, 0, o, 4), KILN_OK);
  expect_f32(o[0], (float[]){12, 16, 24, 28}, 4);
  expect_f32(o[1], (float[]){5, 6, 8, 9}, 4);
  expect_f32(o[2], (float[]){3, 4.5f, 7.5f, 9}, 4);
  expect_f32(o[3], (float[]){12, 16, 9, 24, 28, 15, 15, 17, 9}, 9);
  kiln_graph_free(g);
}

static void test_reductions_and_argmax(void **s) {
  kiln_graph *g = kiln_graph_new();
  kiln_value x = kiln_constant(g, KILN_F32, KILN_SHAPE(2, 3), (float[]){1, 5, 5, -2, 0, -7});
  int64_t ax1 = 1, ax0 = 0;
  kiln_output(g, "sum1", kiln_reduce_sum(g, x, &ax1, 1, false));
  kiln_output(g, "mean0", kiln_reduce_mean(g, x, &ax0, 1, true));
  kiln_output(g, "max_all", kiln_reduce_max(g, x, NULL, 0, false));
  kiln_output(g, "argmax1", kiln_cast(g, kiln_argmax(g, x, 1, false), KILN_F32)); /* ties pick the first */
  kiln_tensor *o[4];
  assert_int_equal(kiln_evaluate(g, NULL, 0, o, 4), KILN_OK);
  expect_f32(o[0], (float[]){11, -9}, 2);
  assert_int_equal(kiln_tensor_rank(o[1]), 2);
  expect_f32(o[1], (float[]){-0.5f, 2.5f, -1}, 3);
  assert_int_equal(kiln_tensor_rank(o[2]), 0);
  expect_f32(o[2], (float[]){5}, 1);
  expect_f32(o[3], (float[]){1, 1}, 2);
  kiln_graph_free(g);
}

static void test_integer_semantics(void **s) {
  kiln_graph *g = kiln_graph_new();
  kiln_value a = kiln_constant(g, KILN_I32, KILN_SHAPE(4), (int32_t[]){7, -7, 5, INT32_MIN});
  kiln_value b = kiln_constant(g, KILN_I32, KILN_SHAPE(4), (int32_t[]){2, 2, 0, -1});
  kiln_output(g, "div", kiln_div(g, a, b));
  kiln_value f = kiln_constant(g, KILN_F32, KILN_SHAPE(4), (float[]){3.9f, -3.9f, 1e20f, NAN});
  kiln_output(g, "cast", kiln_cast(g, f, KILN_I32));
  kiln_tensor *o[2];
  assert_int_equal(kiln_evaluate(g, NULL, 0, o, 2), KILN_OK);
  const int32_t *d = kiln_tensor_cdata(o[0]), *c = kiln_tensor_cdata(o[1]);
  assert_int_equal(d[0], 3), assert_int_equal(d[1], -3), assert_int_equal(d[2], 0), assert_int_equal(d[3], INT32_MIN);
  assert_int_equal(c[0], 3), assert_int_equal(c[1], -3), assert_int_equal(c[2], INT32_MAX), assert_int_equal(c[3], 0);
  kiln_tensor_free(o[0]), kiln_tensor_free(o[1]);
  kiln_graph_free(g);
}

static void test_movement(void **s) {
  kiln_graph *g = kiln_graph_new();
  kiln_value x = kiln_constant(g, KILN_F32, KILN_SHAPE(2, 3), (float[]){0, 1, 2, 3, 4, 5});
  kiln_output(g, "t", kiln_transpose(g, x, (int64_t[]){1, 0}, 2));
  /* x[:, ::-2] = [[2,0],[5,3]] */
  kiln_output(g, "s", kiln_slice(g, x, (int64_t[]){0, -1}, (int64_t[]){INT64_MAX, INT64_MIN}, (int64_t[]){1, -2}, 2));
  kiln_output(g, "p", kiln_pad(g, x, (int64_t[]){0, 1}, (int64_t[]){0, 0}, 9));
  kiln_value idx = kiln_constant(g, KILN_I64, KILN_SHAPE(2), (int64_t[]){2, -3});
  kiln_output(g, "g", kiln_gather(g, x, idx, 1));
  kiln_output(g, "c", kiln_concat(g, (kiln_value[]){x, x}, 2, 0));
  kiln_output(g, "oh", kiln_one_hot(g, idx, 3, KILN_F32));
  kiln_tensor *o[6];
  assert_int_equal(kiln_evaluate(g, NULL, 0, o, 6), KILN_OK);
  expect_f32(o[0], (float[]){0, 3, 1, 4, 2, 5}, 6);
  expect_f32(o[1], (float[]){2, 0, 5, 3}, 4);
  expect_f32(o[2], (float[]){9, 0, 1, 2, 9, 3, 4, 5}, 8);
  expect_f32(o[3], (float[]){2, 0, 5, 3}, 4);
  expect_f32(o[4], (float[]){0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5}, 12);
  expect_f32(o[5], (float[]){0, 0, 1, 0, 0, 0}, 6); /* -3 is not a valid one_hot index: all zeros */
  kiln_graph_free(g);
}

/* Transposes of every element size, wider than a cache-line tile (the copy works in
 * tiles of 64 bytes of the output's last dim) and of rank 4, against index arithmetic:
 * evaluated, and compiled from a constant (folded into the weights' new layout). */
static void test_transpose_every_size(void **s) {
  (void)s;
  const int64_t dims[4] = {3, 5, 2, 37}, perm[4] = {3, 1, 0, 2}, out[4] = {37, 5, 3, 2};
  const kiln_dtype types[4] = {KILN_BOOL, KILN_I32, KILN_F32, KILN_F64};
  for (int t = 0; t < 4; t++) {
    size_t es = kiln_dtype_size(types[t]), n = 3 * 5 * 2 * 37;
    unsigned char *x = malloc(n * es);
    for (size_t i = 0; i < n * es; i++) x[i] = (unsigned char)(types[t] == KILN_BOOL ? (i * 7 / 3) & 1 : i * 13 + 1);
    for (int compiled = 0; compiled < 2; compiled++) {
      kiln_graph *g = kiln_graph_new();
      kiln_value c = kiln_constant(g, types[t], (kiln_shape){4, {3, 5, 2, 37}}, x);
      kiln_output(g, "y", kiln_transpose(g, c, perm, 4));
      kiln_tensor *y = NULL;
      if (!compiled) assert_int_equal(kiln_evaluate(g, NULL, 0, &y, 1), KILN_OK);
      else {
        kiln_exec *e;
        assert_int_equal(kiln_compile(g, NULL, &e), KILN_OK);
        assert_int_equal(kiln_exec_run(e, NULL, 0, &y, 1), KILN_OK);
        kiln_exec_free(e);
      }
      const unsigned char *d = kiln_tensor_cdata(y);
      int64_t i = 0, idx[4];
      for (idx[0] = 0; idx[0] < out[0]; idx[0]++)
        for (idx[1] = 0; idx[1] < out[1]; idx[1]++)
          for (idx[2] = 0; idx[2] < out[2]; idx[2]++)
            for (idx[3] = 0; idx[3] < out[3]; idx[3]++, i++) {
              int64_t src[4];
              for (int k = 0; k < 4; k++) src[perm[k]] = idx[k];
              int64_t xi = ((src[0] * dims[1] + src[1]) * dims[2] + src[2]) * dims[3] + src[3];
              if (memcmp(d + i * (int64_t)es, x + xi * (int64_t)es, es))
                fail_msg("%s transpose (%s), element %lld: wrong value", kiln_dtype_name(types[t]),
                         compiled ? "compiled" : "evaluated", (long long)i);
            }
      kiln_tensor_free(y);
      kiln_graph_free(g);
    }
    free(x);
  }
}

static void test_softmax(void **s) {
  kiln_graph *g = kiln_graph_new();
  kiln_value x = kiln_constant(g, KILN_F32, KILN_SHAPE(1, 3), (float[]){1, 2, 3});
  kiln_output(g, "sm", kiln_softmax(g, x, -1));
  kiln_output(g, "lsm", kiln_log_softmax(g, x, -1));
  kiln_tensor *o[2];
  assert_int_equal(kiln_evaluate(g, NULL, 0, o, 2), KILN_OK);
  double z = exp(1) + exp(2) + exp(3);
  expect_f32(o[0], (float[]){(float)(exp(1) / z), (float)(exp(2) / z), (float)(exp(3) / z)}, 3);
  expect_f32(o[1], (float[]){(float)(1 - log(z)), (float)(2 - log(z)), (float)(3 - log(z))}, 3);
  kiln_graph_free(g);
}

static void test_random_is_reproducible(void **s) {
  kiln_graph *g = kiln_graph_new();
  kiln_output(g, "u", kiln_random_uniform(g, KILN_F64, KILN_SHAPE(20000), 42, -1, 1));
  kiln_output(g, "n", kiln_random_normal(g, KILN_F64, KILN_SHAPE(20000), 42, 0, 1));
  kiln_tensor *a[2], *b[2];
  assert_int_equal(kiln_evaluate(g, NULL, 0, a, 2), KILN_OK);
  assert_int_equal(kiln_evaluate(g, NULL, 0, b, 2), KILN_OK);
  assert_memory_equal(kiln_tensor_cdata(a[0]), kiln_tensor_cdata(b[0]), kiln_tensor_nbytes(a[0]));
  /* Moments: uniform(-1,1) has mean 0, var 1/3; normal mean 0, var 1 (4-sigma bounds). */
  const double *u = kiln_tensor_cdata(a[0]), *n = kiln_tensor_cdata(a[1]);
  double mu = 0, vu = 0, mn = 0, vn = 0;
  for (int i = 0; i < 20000; i++) mu += u[i], vu += u[i] * u[i], mn += n[i], vn += n[i] * n[i];
  mu /= 20000, vu /= 20000, mn /= 20000, vn /= 20000;
  assert_true(fabs(mu) < 0.017 && fabs(vu - 1.0 / 3) < 0.012);
  assert_true(fabs(mn) < 0.03 && fabs(vn - 1) < 0.04);
  for (int i = 0; i < 2; i++) kiln_tensor_free(a[i]), kiln_tensor_free(b[i]);
  kiln_graph_free(g);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_broadcast_add),   cmocka_unit_test(test_matmul_transposes),
      cmocka_unit_test(test_conv_and_pools),  cmocka_unit_test(test_reductions_and_argmax),
      cmocka_unit_test(test_integer_semantics), cmocka_unit_test(test_movement),
      cmocka_unit_test(test_softmax),         cmocka_unit_test(test_random_is_reproducible),
      cmocka_unit_test(test_transpose_every_size),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

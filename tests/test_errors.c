/* Bad input gets a clear error naming the problem — never a crash or a silent
 * wrong answer. Each case checks the status and the words the message must hold. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include "harness.h"

static void expect_msg(const char *msg, const char *a, const char *b, const char *c) {
  printf("    message: %s\n", msg);
  if (a) assert_non_null(strstr(msg, a));
  if (b) assert_non_null(strstr(msg, b));
  if (c) assert_non_null(strstr(msg, c));
}

static void test_broadcast_mismatch_names_op_and_shapes(void **s) {
  kiln_graph *g = kiln_graph_new();
  kiln_value a = kiln_placeholder(g, "a", KILN_F32, KILN_SHAPE(2, 3));
  kiln_value b = kiln_placeholder(g, "b", KILN_F32, KILN_SHAPE(4));
  kiln_value y = kiln_add(g, a, b);
  assert_int_equal(y.id, KILN_NONE);
  assert_int_equal(kiln_graph_status(g), KILN_ERR_INVALID);
  expect_msg(kiln_graph_errmsg(g), "add", "[2,3]", "[4]");
  /* Later calls are no-ops and the first error is what compile reports. */
  kiln_value z = kiln_relu(g, kiln_matmul(g, a, a, false, false));
  assert_int_equal(z.id, KILN_NONE);
  assert_int_not_equal(kiln_output(g, "y", y), KILN_OK);
  kiln_exec *e = NULL;
  assert_int_equal(kiln_compile(g, NULL, &e), KILN_ERR_INVALID);
  assert_null(e);
  expect_msg(kiln_errmsg(), "add", "[2,3]", "broadcast");
  kiln_graph_free(g);
}

static void test_shape_rules(void **s) {
  struct {
    const char *words[3];
  } want[6] = {{{"matmul", "K=3", "K=4"}}, {{"reshape", "6 elements", "[4]"}}, {{"conv2d", "in-channels", "input channels"}},
               {{"exp", "f32 or f64", "i32"}}, {{"param", "'x'", "already exists"}}, {{"reduce_sum", "axis 5", "rank 2"}}};
  for (int k = 0; k < 6; k++) {
    kiln_graph *g = kiln_graph_new();
    kiln_value x = kiln_placeholder(g, "x", KILN_F32, KILN_SHAPE(2, 3));
    switch (k) {
    case 0: kiln_matmul(g, x, kiln_placeholder(g, "w", KILN_F32, KILN_SHAPE(4, 5)), false, false); break;
    case 1: kiln_reshape(g, x, KILN_SHAPE(4)); break;
    case 2: kiln_conv2d(g, kiln_reshape(g, x, KILN_SHAPE(1, 2, 3, 1)), kiln_fill(g, KILN_F32, KILN_SHAPE(1, 1, 2, 4), 1), NULL); break;
    case 3: kiln_exp(g, kiln_cast(g, x, KILN_I32)); break;
    case 4: kiln_placeholder(g, "x", KILN_F32, KILN_SHAPE(1)); break;
    case 5: kiln_reduce_sum(g, x, (int64_t[]){5}, 1, false); break;
    }
    assert_int_equal(kiln_graph_status(g), KILN_ERR_INVALID);
    expect_msg(kiln_graph_errmsg(g), want[k].words[0], want[k].words[1], want[k].words[2]);
    kiln_graph_free(g);
  }
}

static void test_run_rejects_wrong_inputs(void **s) {
  kiln_graph *g = kiln_graph_new();
  kiln_value x = kiln_placeholder(g, "x", KILN_F32, KILN_SHAPE(KILN_DYN, 3));
  kiln_output(g, "y", kiln_neg(g, x));
  kiln_exec *e;
  assert_int_equal(kiln_compile(g, NULL, &e), KILN_OK);
  kiln_tensor *bad = kiln_tensor_new(KILN_F32, 2, (int64_t[]){2, 4}), *wrong_type = kiln_tensor_new(KILN_I32, 2, (int64_t[]){2, 3});
  kiln_tensor *out;
  assert_int_equal(kiln_exec_run(e, (const kiln_tensor *[]){bad}, 1, &out, 1), KILN_ERR_INVALID);
  expect_msg(kiln_errmsg(), "'x'", "[?,3]", "[2,4]");
  assert_int_equal(kiln_exec_run(e, (const kiln_tensor *[]){wrong_type}, 1, &out, 1), KILN_ERR_INVALID);
  expect_msg(kiln_errmsg(), "'x'", "f32", "i32");
  assert_int_equal(kiln_exec_run(e, NULL, 0, &out, 1), KILN_ERR_INVALID);
  expect_msg(kiln_errmsg(), "1 inputs", "0 given", NULL);
  kiln_tensor_free(bad), kiln_tensor_free(wrong_type);
  kiln_exec_free(e);
  kiln_graph_free(g);
}

static void test_gather_out_of_range_is_reported(void **s) {
  kiln_graph *g = kiln_graph_new();
  kiln_value x = kiln_placeholder(g, "x", KILN_F32, KILN_SHAPE(4, 2));
  kiln_value i = kiln_placeholder(g, "i", KILN_I64, KILN_SHAPE(3));
  kiln_output(g, "y", kiln_gather(g, x, i, 0));
  kiln_tensor *xs = kiln_tensor_new(KILN_F32, 2, (int64_t[]){4, 2});
  kiln_tensor *is = kiln_tensor_from_data(KILN_I64, 1, (int64_t[]){3}, (int64_t[]){0, 7, 1}, 24);
  kiln_tensor *out = (kiln_tensor *)1;
  kiln_exec *e;
  assert_int_equal(kiln_compile(g, NULL, &e), KILN_OK);
  assert_int_equal(kiln_exec_run(e, (const kiln_tensor *[]){xs, is}, 2, &out, 1), KILN_ERR_RUNTIME);
  assert_null(out);
  expect_msg(kiln_errmsg(), "gather", "out of range", "size 4");
  assert_int_equal(kiln_evaluate(g, (const kiln_tensor *[]){xs, is}, 2, &out, 1), KILN_ERR_RUNTIME);
  expect_msg(kiln_errmsg(), "gather", "index 7", "size 4");
  kiln_tensor_free(xs), kiln_tensor_free(is);
  kiln_exec_free(e);
  kiln_graph_free(g);
}

static void test_compile_needs_outputs(void **s) {
  kiln_graph *g = kiln_graph_new();
  kiln_placeholder(g, "x", KILN_F32, KILN_SHAPE(1));
  kiln_exec *e;
  assert_int_equal(kiln_compile(g, NULL, &e), KILN_ERR_INVALID);
  expect_msg(kiln_errmsg(), "no outputs", NULL, NULL);
  kiln_graph_free(g);
}

static void test_bad_npy_files(void **s) {
  const char *path = "/tmp/kiln_test_bad.npy";
  const char *cases[3] = {"not numpy at all", "\x93NUMPY\x01\x00\x10\x00{'descr': '<f4'", 
                          "\x93NUMPY\x01\x00\x40\x00{'descr': '<f4', 'fortran_order': False, 'shape': (100,), }          \n"};
  size_t lens[3] = {16, 25, 74};
  for (int k = 0; k < 3; k++) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fwrite(cases[k], 1, lens[k], f);
    fclose(f);
    kiln_tensor *t = (kiln_tensor *)1;
    assert_int_not_equal(kiln_npy_load(path, &t), KILN_OK);
    assert_null(t);
    expect_msg(kiln_errmsg(), path, NULL, NULL);
  }
  remove(path);
  kiln_tensor *t;
  assert_int_equal(kiln_npy_load("/nonexistent/x.npy", &t), KILN_ERR_IO);
  expect_msg(kiln_errmsg(), "No such file", NULL, NULL);
}

static void test_parse_errors_name_the_line(void **s) {
  const char *texts[4] = {"kiln 1\n%0 = frob\n", "kiln 1\n%0 = neg %3\n",
                          "kiln 1\n%0 = param \"x\" {dtype=f32, shape=[2]} : f32[3]\n", "%0 = param\n"};
  const char *words[4] = {"unknown op 'frob'", "%3 is not defined", "differs from the inferred", "header"};
  for (int k = 0; k < 4; k++) {
    kiln_graph *g = (kiln_graph *)1;
    assert_int_equal(kiln_graph_parse(texts[k], &g), KILN_ERR_PARSE);
    assert_null(g);
    expect_msg(kiln_errmsg(), "line", words[k], NULL);
  }
}

/* Threads sharing one kiln_exec: every call succeeds with the serial result (or is
 * refused with a message naming the rule); never a race or a wrong answer. */
typedef struct {
  kiln_exec *e;
  const kiln_tensor *x, *want;
  int ok, refused, wrong;
} shared_run;

static void *run_many(void *arg) {
  shared_run *r = arg;
  for (int i = 0; i < 300; i++) {
    kiln_tensor *y = NULL;
    kiln_status st = kiln_exec_run(r->e, &r->x, 1, &y, 1);
    if (st == KILN_OK) {
      __atomic_fetch_add(memcmp(kiln_tensor_cdata(y), kiln_tensor_cdata(r->want), kiln_tensor_nbytes(y)) ? &r->wrong : &r->ok, 1,
                         __ATOMIC_RELAXED);
    } else if (st == KILN_ERR_INVALID && strstr(kiln_errmsg(), "already running on another thread")) {
      __atomic_fetch_add(&r->refused, 1, __ATOMIC_RELAXED);
    } else {
      __atomic_fetch_add(&r->wrong, 1, __ATOMIC_RELAXED);
    }
    kiln_tensor_free(y);
  }
  return NULL;
}

static void test_concurrent_runs_agree(void **state) {
  (void)state;
  kiln_graph *g = kiln_graph_new();
  kiln_value x = kiln_placeholder(g, "x", KILN_F32, KILN_SHAPE(64, 96));
  kiln_value w = kiln_random_normal(g, KILN_F32, KILN_SHAPE(96, 80), 3, 0, 0.5);
  kiln_output(g, "y", kiln_tanh(g, kiln_matmul(g, x, w, false, false)));
  trng rng = {5};
  kiln_tensor *in = random_tensor(&rng, KILN_F32, 2, (int64_t[]){64, 96}, -1, 1), *want = NULL;
  kiln_exec *e;
  assert_int_equal(kiln_compile(g, NULL, &e), KILN_OK);
  assert_int_equal(kiln_exec_run(e, (const kiln_tensor *[]){in}, 1, &want, 1), KILN_OK);
  shared_run r = {e, in, want, 0, 0, 0};
  pthread_t th[8];
  for (int i = 0; i < 8; i++) assert_int_equal(pthread_create(&th[i], NULL, run_many, &r), 0);
  for (int i = 0; i < 8; i++) pthread_join(th[i], NULL);
  assert_int_equal(r.wrong, 0);
  assert_int_equal(r.ok, 8 * 300); /* an inference exec serves concurrent calls (test_concurrency has more) */
  assert_int_equal(r.refused, 0);
  kiln_tensor *y = NULL; /* still usable afterwards */
  assert_int_equal(kiln_exec_run(e, (const kiln_tensor *[]){in}, 1, &y, 1), KILN_OK);
  assert_memory_equal(kiln_tensor_cdata(y), kiln_tensor_cdata(want), kiln_tensor_nbytes(y));
  kiln_tensor_free(y);
  kiln_tensor_free(want);
  kiln_tensor_free(in);
  kiln_exec_free(e);
  kiln_graph_free(g);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_broadcast_mismatch_names_op_and_shapes),
      cmocka_unit_test(test_shape_rules),
      cmocka_unit_test(test_run_rejects_wrong_inputs),
      cmocka_unit_test(test_gather_out_of_range_is_reported),
      cmocka_unit_test(test_compile_needs_outputs),
      cmocka_unit_test(test_bad_npy_files),
      cmocka_unit_test(test_parse_errors_name_the_line),
      cmocka_unit_test(test_concurrent_runs_agree),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

/* One compiled model served from many threads: an inference exec runs calls from 8
 * threads at once, each result bit-equal to the serial one; an exec that assigns
 * variables (a train step) refuses a second concurrent call with a clear error and
 * its variables end as if the accepted calls ran one after another. Built with
 * -DKILN_SANITIZE=thread too (tools/dev.sh test runs it under ThreadSanitizer).
 * KILN_CONCURRENCY_RUNS sets the runs per thread (default 1000). */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include "harness.h"

static int runs_per_thread(void) {
  const char *s = getenv("KILN_CONCURRENCY_RUNS");
  int n = s ? atoi(s) : 0;
  return n > 0 ? n : 1000;
}

/* The Fashion-MNIST CNN's shape at a small width: conv 3x3 -> relu -> max pool ->
 * conv 3x3 -> relu -> pool -> dense 10 -> softmax, NHWC, batch 4. */
static kiln_graph *cnn(void) {
  kiln_graph *g = kiln_graph_new();
  kiln_value x = kiln_placeholder(g, "x", KILN_F32, KILN_SHAPE(4, 28, 28, 1));
  kiln_value f1 = kiln_random_normal(g, KILN_F32, KILN_SHAPE(3, 3, 1, 8), 1, 0, 0.3);
  kiln_value f2 = kiln_random_normal(g, KILN_F32, KILN_SHAPE(3, 3, 8, 16), 2, 0, 0.1);
  kiln_value w = kiln_random_normal(g, KILN_F32, KILN_SHAPE(7 * 7 * 16, 10), 3, 0, 0.05);
  kiln_conv2d_opts same = {.padding = KILN_PAD_SAME};
  kiln_pool2d_opts pool = {.window = {2, 2}};
  kiln_value h = kiln_relu(g, kiln_conv2d(g, x, f1, &same));
  h = kiln_max_pool2d(g, h, &pool);
  h = kiln_relu(g, kiln_conv2d(g, h, f2, &same));
  h = kiln_max_pool2d(g, h, &pool);
  h = kiln_reshape(g, h, KILN_SHAPE(4, 7 * 7 * 16));
  kiln_output(g, "probs", kiln_softmax(g, kiln_matmul(g, h, w, false, false), -1));
  return g;
}

typedef struct {
  kiln_exec *e;
  const kiln_tensor *x, *want;
  int runs, ok, refused, wrong;
} shared_run;

static void *serve(void *arg) {
  shared_run *r = arg;
  for (int i = 0; i < r->runs; i++) {
    kiln_tensor *y = NULL;
    kiln_status st = kiln_exec_run(r->e, &r->x, 1, &y, 1);
    if (st == KILN_OK && (!r->want || !memcmp(kiln_tensor_cdata(y), kiln_tensor_cdata(r->want), kiln_tensor_nbytes(y))))
      __atomic_fetch_add(&r->ok, 1, __ATOMIC_RELAXED);
    else if (st == KILN_ERR_INVALID && strstr(kiln_errmsg(), "already running on another thread"))
      __atomic_fetch_add(&r->refused, 1, __ATOMIC_RELAXED);
    else
      __atomic_fetch_add(&r->wrong, 1, __ATOMIC_RELAXED);
    kiln_tensor_free(y);
  }
  return NULL;
}

static void run_threads(shared_run *r) {
  pthread_t th[8];
  for (int i = 0; i < 8; i++) assert_int_equal(pthread_create(&th[i], NULL, serve, r), 0);
  for (int i = 0; i < 8; i++) pthread_join(th[i], NULL);
}

static void test_cnn_served_from_8_threads(void **state) {
  (void)state;
  for (int threads = 1; threads <= 2; threads++) { /* 2: runs contend for the exec's pool */
    kiln_graph *g = cnn();
    trng rng = {11};
    kiln_tensor *x = random_tensor(&rng, KILN_F32, 4, (int64_t[]){4, 28, 28, 1}, 0, 1), *want = NULL;
    kiln_compile_options o = {.threads = threads};
    kiln_exec *e;
    assert_int_equal(kiln_compile(g, &o, &e), KILN_OK);
    assert_int_equal(kiln_exec_run(e, (const kiln_tensor *[]){x}, 1, &want, 1), KILN_OK);
    shared_run r = {e, x, want, runs_per_thread(), 0, 0, 0};
    run_threads(&r);
    printf("    %d-thread exec: %d of %d concurrent runs equal to the serial result\n", threads, r.ok, 8 * r.runs);
    assert_int_equal(r.wrong, 0);
    assert_int_equal(r.refused, 0);
    assert_int_equal(r.ok, 8 * r.runs);
    kiln_tensor_free(want);
    kiln_tensor_free(x);
    kiln_exec_free(e);
    kiln_graph_free(g);
  }
}

/* counter += x each run: concurrent calls are refused, and the counter counts exactly
 * the accepted ones. */
static void test_train_step_refuses_concurrent_calls(void **state) {
  (void)state;
  kiln_variables *vs = kiln_variables_new(1);
  kiln_variable *v;
  assert_int_equal(kiln_variable_new(vs, "counter", KILN_F64, KILN_SHAPE(1), KILN_ZEROS, false, &v), KILN_OK);
  kiln_graph *g = kiln_graph_new();
  kiln_value x = kiln_placeholder(g, "x", KILN_F64, KILN_SHAPE(1));
  kiln_value next = kiln_add(g, kiln_variable_read(g, v), x);
  assert_int_equal(kiln_variable_assign(g, v, next), KILN_OK);
  kiln_output(g, "next", next);
  kiln_exec *e;
  assert_int_equal(kiln_compile(g, NULL, &e), KILN_OK);
  kiln_tensor *one = kiln_tensor_new(KILN_F64, 1, (int64_t[]){1});
  ((double *)kiln_tensor_data(one))[0] = 1;
  shared_run r = {e, one, NULL, runs_per_thread() / 4 + 1, 0, 0, 0}; /* no want: any result counts */
  run_threads(&r);
  double counter = ((double *)kiln_tensor_data(kiln_variable_value(v)))[0];
  int accepted = r.ok;
  assert_int_equal(r.wrong, 0);
  assert_int_equal(r.ok + r.refused, 8 * r.runs);
  printf("    train step: %d runs accepted, %d refused; counter %.0f\n", accepted, r.refused, counter);
  assert_true(counter == (double)accepted);
  kiln_tensor_free(one);
  kiln_exec_free(e);
  kiln_graph_free(g);
  kiln_variables_free(vs);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cnn_served_from_8_threads),
      cmocka_unit_test(test_train_step_refuses_concurrent_calls),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

/* One compiled model served from many threads: an inference exec runs calls from 8
 * threads at once, each result bit-equal to the serial one; an exec that assigns
 * variables (a train step) refuses a second concurrent call with a clear error and
 * its variables end as if the accepted calls ran one after another. Built with
 * -DKILN_SANITIZE=thread too (tools/dev.sh test runs it under ThreadSanitizer).
 * KILN_CONCURRENCY_RUNS sets the runs per thread (default 1000). */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
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

/* ---- fit's validation function, compiled on another thread during the first epoch ---- */

enum { FIT_ROWS = 600, FIT_VAL = 100, FIT_BATCH = 20 };

static kiln_model *small_classifier(void) {
  kiln_model *m = kiln_sequential_new("ahead", 7);
  kiln_model_add(m, kiln_layer_dense(16, KILN_ACT_RELU));
  kiln_model_add(m, kiln_layer_dense(4, KILN_ACT_SOFTMAX));
  kiln_model_compile_options o = {.optimizer = "adam", .loss = "sparse_categorical_crossentropy",
                                  .metrics = (const char *[]){"accuracy"}, .nmetrics = 1};
  assert_int_equal(kiln_model_compile(m, &o), KILN_OK);
  assert_int_equal(kiln_model_build(m, KILN_F32, KILN_SHAPE(5)), KILN_OK);
  return m;
}

static void four_blobs(uint64_t seed, int64_t n, kiln_tensor **x, kiln_tensor **y) {
  trng r = {seed};
  *x = kiln_tensor_new(KILN_F32, 2, (int64_t[]){n, 5});
  *y = kiln_tensor_new(KILN_I32, 1, (int64_t[]){n});
  for (int64_t i = 0; i < n; i++) {
    ((int32_t *)kiln_tensor_data(*y))[i] = (int32_t)(i % 4);
    for (int k = 0; k < 5; k++)
      ((float *)kiln_tensor_data(*x))[5 * i + k] = (float)((k == i % 4 ? 2.0 : 0) + trng_real(&r, -1, 1));
  }
}

static uint64_t compiles_so_far(void) {
  kiln_cache_stats s;
  kiln_cache_get_stats(&s);
  return s.hits + s.misses;
}

/* At the end of the first epoch's last step: has a second compile (validation's)
 * begun? When expected, waits for it up to a minute: the thread may not have got
 * there yet. */
typedef struct {
  uint64_t before;
  bool wait, ahead;
} ahead_watch;

static kiln_status watch_last_step(const kiln_callback_info *info, void *state) {
  ahead_watch *w = state;
  if (info->event != KILN_ON_BATCH_END || info->epoch != 0 || info->batch + 1 != FIT_ROWS / FIT_BATCH) return KILN_OK;
  for (int ms = 0; ms < 60000 && !w->ahead; ms++) {
    w->ahead = compiles_so_far() - w->before >= 2;
    if (!w->wait) break;
    if (!w->ahead) nanosleep(&(struct timespec){0, 1000000}, NULL);
  }
  return KILN_OK;
}

static kiln_history *fit_two_epochs(bool ahead, bool *began_ahead) {
  setenv("KILN_COMPILE_AHEAD", ahead ? "1" : "0", 1);
  kiln_tensor *x, *y, *vx, *vy;
  four_blobs(1, FIT_ROWS, &x, &y);
  four_blobs(2, FIT_VAL, &vx, &vy);
  kiln_model *m = small_classifier();
  ahead_watch w = {compiles_so_far(), ahead, false};
  kiln_callback cb = {watch_last_step, &w, NULL};
  kiln_fit_options fo = kiln_fit_defaults();
  fo.epochs = 2, fo.batch_size = FIT_BATCH, fo.verbose = 0, fo.shuffle = false;
  fo.validation_x = vx, fo.validation_y = vy;
  fo.callbacks = &cb, fo.ncallbacks = 1;
  kiln_history *h = NULL;
  if (kiln_model_fit(m, x, y, &fo, &h) != KILN_OK) fail_msg("%s", kiln_errmsg());
  *began_ahead = w.ahead;
  kiln_model_free(m);
  kiln_tensor_free(x), kiln_tensor_free(y), kiln_tensor_free(vx), kiln_tensor_free(vy);
  unsetenv("KILN_COMPILE_AHEAD");
  return h;
}

static void test_validation_compiles_during_the_first_epoch(void **state) {
  (void)state;
  /* one model thread, two compile threads: a core to spare, on any host */
  setenv("KILN_NUM_THREADS", "1", 1);
  setenv("KILN_COMPILE_THREADS", "2", 1);
  bool ahead, serial_ahead;
  kiln_history *h = fit_two_epochs(true, &ahead), *serial = fit_two_epochs(false, &serial_ahead);
  unsetenv("KILN_NUM_THREADS"), unsetenv("KILN_COMPILE_THREADS");
  assert_true(ahead);
  assert_false(serial_ahead); /* the watch can tell: without it, validation compiles after the last step */
  static const char *const keys[] = {"loss", "accuracy", "val_loss", "val_accuracy"};
  for (int k = 0; k < 4; k++)
    for (int e = 0; e < 2; e++) {
      double a = kiln_history_get(h, keys[k])[e], b = kiln_history_get(serial, keys[k])[e];
      if (a != b) fail_msg("%s, epoch %d: %.9g with validation compiled ahead, %.9g without", keys[k], e + 1, a, b);
    }
  printf("    val_loss %.6f, %.6f: equal with and without compiling ahead\n", kiln_history_get(h, "val_loss")[0],
         kiln_history_get(h, "val_loss")[1]);
  kiln_history_free(h), kiln_history_free(serial);
}

int main(void) {
  setenv("KILN_CACHE", "1", 1); /* compiles are counted through the cache's counters */
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cnn_served_from_8_threads),
      cmocka_unit_test(test_train_step_refuses_concurrent_calls),
      cmocka_unit_test(test_validation_compiles_during_the_first_epoch),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

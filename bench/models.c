/* Whole models against PyTorch on the CPU: the Fashion-MNIST MLP (SGD) and CNN
 * (Adam) from samples/fashion_mnist.c, built with kiln's Keras-style API, their
 * train step at batch 128 (forward, backward and update; kiln through
 * kiln_model_fit, as a user trains) and inference at batch 1 and 128. PyTorch
 * runs the same models in bench/torch_models.py. Prints kiln's speed-up.
 *
 *   build/bin/bench_models [--threads N] [--rounds R] */
#include <kiln/kiln.h>
#include <stdio.h>
#include <string.h>
#include "bench/bench_util.h"

enum { BATCHES = 20, NCASES = 6 };
static const char *const case_names[NCASES] = {"MLP train step, batch 128", "CNN train step, batch 128",
                                               "MLP inference, batch 1",     "MLP inference, batch 128",
                                               "CNN inference, batch 1",     "CNN inference, batch 128"};

static kiln_model *make_model(bool cnn) {
  kiln_model *m = kiln_sequential_new(cnn ? "cnn" : "mlp", 42);
  if (cnn) {
    kiln_model_add(m, kiln_layer_reshape(KILN_SHAPE(28, 28, 1)));
    kiln_model_add(m, kiln_layer_conv2d(32, 3, 3, KILN_PAD_SAME, KILN_ACT_RELU));
    kiln_model_add(m, kiln_layer_max_pooling2d(2, 2));
    kiln_model_add(m, kiln_layer_conv2d(64, 3, 3, KILN_PAD_SAME, KILN_ACT_RELU));
    kiln_model_add(m, kiln_layer_max_pooling2d(2, 2));
    kiln_model_add(m, kiln_layer_flatten());
    kiln_model_add(m, kiln_layer_dense(128, KILN_ACT_RELU));
  } else {
    kiln_model_add(m, kiln_layer_flatten());
    kiln_model_add(m, kiln_layer_dense(300, KILN_ACT_RELU));
    kiln_model_add(m, kiln_layer_dense(100, KILN_ACT_RELU));
  }
  kiln_model_add(m, kiln_layer_dense(10, KILN_ACT_SOFTMAX));
  kiln_model_compile_options co = {.optimizer = cnn ? "adam" : "sgd", .loss = "sparse_categorical_crossentropy"};
  if (kiln_model_compile(m, &co) != KILN_OK) {
    fprintf(stderr, "kiln: %s\n", kiln_errmsg());
    exit(1);
  }
  return m;
}

typedef struct {
  kiln_model *m;
  kiln_tensor *x, *y;
  int64_t batch;
} model_case;

static void check(kiln_status st) {
  if (st != KILN_OK) {
    fprintf(stderr, "kiln: %s\n", kiln_errmsg());
    exit(1);
  }
}

static void train_epoch(void *v) {
  model_case *c = v;
  kiln_fit_options o = kiln_fit_defaults();
  o.batch_size = 128;
  o.shuffle = false;
  o.verbose = 0;
  kiln_history *h = NULL;
  check(kiln_model_fit(c->m, c->x, c->y, &o, &h));
  kiln_history_free(h);
}

static void predict(void *v) {
  model_case *c = v;
  kiln_tensor *out = NULL;
  check(kiln_model_predict(c->m, c->x, c->batch, &out));
  kiln_tensor_free(out);
}

static kiln_tensor *random_images(int64_t n) {
  kiln_tensor *t = kiln_tensor_new(KILN_F32, 3, (int64_t[]){n, 28, 28});
  bench_fill(kiln_tensor_data(t), n * 784, 3);
  return t;
}

static double time_case(int which) {
  bool cnn = which == 1 || which >= 4;
  model_case c = {.m = make_model(cnn)};
  double t;
  if (which < 2) {
    c.x = random_images(BATCHES * 128);
    c.y = kiln_tensor_new(KILN_I32, 1, (int64_t[]){BATCHES * 128});
    int32_t *y = kiln_tensor_data(c.y);
    for (int i = 0; i < BATCHES * 128; i++) y[i] = (i * 7) % 10;
    t = bench_time(train_epoch, &c) / BATCHES;
  } else {
    c.batch = which == 2 || which == 4 ? 1 : 128;
    c.x = random_images(c.batch);
    t = bench_time(predict, &c);
  }
  kiln_tensor_free(c.x), kiln_tensor_free(c.y);
  kiln_model_free(c.m);
  return t;
}

static int run_contender(const char *who, int threads) {
  if (!strcmp(who, "torch")) {
    char cmd[512];
    /* Debian's interpreter, which python3-torch installs into */
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s/bench/torch_models.py --threads %d", KILN_SOURCE_DIR, threads);
    return system(cmd) == 0 ? 0 : 1;
  }
  char n[16];
  snprintf(n, sizeof n, "%d", threads);
  setenv("KILN_NUM_THREADS", n, 1); /* the models compile with the default thread count */
  for (int i = 0; i < NCASES; i++) {
    printf("%.9e\n", time_case(i));
    fflush(stdout);
  }
  return 0;
}

int main(int argc, char **argv) {
  static const char *const contenders[] = {"kiln", "torch"};
  bench_args a;
  double t[NCASES * 2];
  int status = bench_run(argc, argv, 2, contenders, run_contender, NCASES, t, &a);
  if (status >= 0) return status;
  int threads = a.threads, rounds = a.rounds;
  printf("models vs PyTorch %s, %d thread%s (median of %d rounds)\n", "(Debian python3-torch)", threads,
         threads > 1 ? "s" : "", rounds);
  printf("%-28s %12s %12s %16s\n", "case", "kiln ms", "PyTorch ms", "kiln speed-up");
  for (int i = 0; i < NCASES; i++)
    printf("%-28s %12.3f %12.3f %15.2fx\n", case_names[i], t[i * 2] * 1e3, t[i * 2 + 1] * 1e3, t[i * 2 + 1] / t[i * 2]);
  return 0;
}

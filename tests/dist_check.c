/* The program tests/dist_test.sh starts under mpirun (or alone) to check data-parallel
 * training: it trains a small classifier on a fixed synthetic table and writes what the
 * script compares.
 *
 *   dist_check train [--distributed] --batch B --epochs E [--initial-epoch K] [--resume CKPT]
 *                    [--checkpoint PATTERN] [--hidden H] [--hidden-rank1 H] [--pidfile F]
 *                    [--slow MS] --out PREFIX
 *       writes PREFIX.weights (rank 0: every model weight, raw) and PREFIX.hist.<rank>
 *   dist_check compare A B TOL      weights files equal within TOL (absolute)
 *   dist_check resave CKPT OUT      restore CKPT into the model and save it again
 *   dist_check allreduce            kiln_dist_allreduce of a tensor per rank, checked */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "kiln/kiln.h"

#define ROWS 240
#define FEATURES 8
#define CLASSES 3

static int die(const char *what) {
  fprintf(stderr, "dist_check: %s: %s\n", what, kiln_errmsg());
  return 1;
}

/* Labels from a fixed rule over pseudo-random features, so every rank has the same table. */
static void make_data(kiln_tensor **x, kiln_tensor **y) {
  *x = kiln_tensor_new(KILN_F32, 2, (int64_t[]){ROWS, FEATURES});
  *y = kiln_tensor_new(KILN_I32, 1, (int64_t[]){ROWS});
  float *xv = kiln_tensor_data(*x);
  int32_t *yv = kiln_tensor_data(*y);
  uint32_t s = 12345;
  for (int i = 0; i < ROWS; i++) {
    float sum = 0;
    for (int j = 0; j < FEATURES; j++) {
      s = s * 1664525u + 1013904223u;
      xv[i * FEATURES + j] = (float)(s >> 8) / (float)(1 << 24) * 2 - 1;
      sum += xv[i * FEATURES + j] * (float)(j % 3 - 1);
    }
    yv[i] = sum < -0.3f ? 0 : sum < 0.3f ? 1 : 2;
  }
}

static kiln_model *make_model(int hidden) {
  kiln_model *m = kiln_sequential_new("mlp", 7);
  kiln_model_add(m, kiln_layer_dense(hidden, KILN_ACT_RELU));
  kiln_model_add(m, kiln_layer_dense(CLASSES, KILN_ACT_SOFTMAX));
  kiln_optimizer_config oc = kiln_optimizer_defaults(KILN_OPT_ADAM);
  oc.learning_rate = 0.01;
  kiln_model_compile_options co = {.optimizer_config = &oc, .loss = "sparse_categorical_crossentropy",
                                   .metrics = (const char *[]){"accuracy"}, .nmetrics = 1};
  if (kiln_model_compile(m, &co) != KILN_OK || kiln_model_build(m, KILN_F32, KILN_SHAPE(FEATURES)) != KILN_OK) {
    kiln_model_free(m);
    return NULL;
  }
  return m;
}

static int write_weights(kiln_model *m, const char *path) {
  FILE *f = fopen(path, "wb");
  if (!f) return 1;
  kiln_variables *vs = kiln_model_variables(m);
  for (size_t i = 0; i < kiln_variables_count(vs); i++) {
    kiln_tensor *t = kiln_variable_value(kiln_variables_at(vs, i));
    if (kiln_tensor_dtype(t) != KILN_F32) continue;
    fwrite(kiln_tensor_data(t), sizeof(float), (size_t)kiln_tensor_numel(t), f);
  }
  return fclose(f) != 0;
}

/* A slow step (--slow): gives the kill test time to strike mid-epoch. */
static kiln_status slow_batch(const kiln_callback_info *info, void *state) {
  if (info->event == KILN_ON_BATCH_END) usleep((useconds_t)(*(int *)state * 1000));
  return KILN_OK;
}

static int train(int argc, char **argv) {
  bool distributed = false;
  int batch = 32, epochs = 1, initial = 0, hidden = 16, hidden1 = 0, slow = 0;
  const char *out = NULL, *resume = NULL, *pattern = NULL, *pidfile = NULL;
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
    if (!strcmp(a, "--distributed")) distributed = true;
    else if (!strcmp(a, "--batch")) batch = atoi(v), i++;
    else if (!strcmp(a, "--epochs")) epochs = atoi(v), i++;
    else if (!strcmp(a, "--initial-epoch")) initial = atoi(v), i++;
    else if (!strcmp(a, "--hidden")) hidden = atoi(v), i++;
    else if (!strcmp(a, "--hidden-rank1")) hidden1 = atoi(v), i++;
    else if (!strcmp(a, "--slow")) slow = atoi(v), i++;
    else if (!strcmp(a, "--resume")) resume = v, i++;
    else if (!strcmp(a, "--checkpoint")) pattern = v, i++;
    else if (!strcmp(a, "--pidfile")) pidfile = v, i++;
    else if (!strcmp(a, "--out")) out = v, i++;
    else return fprintf(stderr, "dist_check: unknown option %s\n", a), 2;
  }
  kiln_dist *d = NULL;
  if (distributed && kiln_dist_init(&argc, &argv, &d) != KILN_OK) return die("dist_init");
  int rank = kiln_dist_rank(d);
  if (pidfile && rank == 1) {
    FILE *f = fopen(pidfile, "w");
    if (f) fprintf(f, "%d\n", (int)getpid()), fclose(f);
  }
  kiln_tensor *x, *y;
  make_data(&x, &y);
  kiln_model *m = make_model(rank == 1 && hidden1 ? hidden1 : hidden);
  int rc = 0;
  kiln_callback cbs[2];
  size_t ncb = 0;
  if (pattern) cbs[ncb++] = kiln_model_checkpoint(pattern, "loss", false);
  if (slow) cbs[ncb++] = (kiln_callback){slow_batch, &slow, NULL};
  kiln_history *h = NULL;
  kiln_fit_options fo = kiln_fit_defaults();
  fo.batch_size = batch, fo.epochs = epochs, fo.initial_epoch = initial, fo.verbose = 0;
  fo.callbacks = cbs, fo.ncallbacks = ncb, fo.distributed = d;
  if (!m) rc = die("model");
  else if (resume && kiln_model_load_weights(m, resume) != KILN_OK) rc = die("resume");
  else if (kiln_model_fit(m, x, y, &fo, &h) != KILN_OK) rc = die("fit");
  char path[1024];
  if (!rc && rank == 0) {
    snprintf(path, sizeof path, "%s.weights", out);
    if (write_weights(m, path)) rc = die("writing weights");
  }
  snprintf(path, sizeof path, "%s.hist.%d", out, rank);
  FILE *f = !rc ? fopen(path, "w") : NULL;
  for (size_t k = 0; f && k < kiln_history_num_keys(h); k++) {
    fprintf(f, "%s", kiln_history_key(h, k));
    for (size_t e = 0; e < kiln_history_epochs(h); e++) fprintf(f, " %a", kiln_history_get(h, kiln_history_key(h, k))[e]);
    fprintf(f, "\n");
  }
  if (f) fclose(f);
  kiln_history_free(h);
  for (size_t i = 0; i < ncb; i++) kiln_callback_free(&cbs[i]);
  kiln_model_free(m);
  kiln_tensor_free(x);
  kiln_tensor_free(y);
  kiln_dist_free(d);
  return rc;
}

static int compare(const char *a, const char *b, double tol) {
  FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
  if (!fa || !fb) return fprintf(stderr, "dist_check: cannot open %s or %s\n", a, b), 1;
  float va, vb;
  size_t n = 0;
  double worst = 0;
  int ra, rb;
  while ((ra = (int)fread(&va, sizeof va, 1, fa)) == 1 && (rb = (int)fread(&vb, sizeof vb, 1, fb)) == 1) {
    double diff = fabs((double)va - (double)vb);
    if (!(diff <= worst)) worst = diff;
    n++;
  }
  bool same_len = ra != 1 && fread(&vb, sizeof vb, 1, fb) != 1;
  fclose(fa);
  fclose(fb);
  printf("compare %s %s: %zu weights, largest difference %.3g (tolerance %.3g)\n", a, b, n, worst, tol);
  return !same_len || !n || !(worst <= tol);
}

/* Restore then save with the same step, epoch and seed: the bytes must not change. */
static int resave(const char *ckpt, const char *out) {
  kiln_model *m = make_model(16);
  kiln_checkpoint_info info;
  if (!m || kiln_checkpoint_restore(kiln_model_variables(m), ckpt, false, &info) != KILN_OK) return die("restore");
  kiln_status st = kiln_checkpoint_save(kiln_model_variables(m), out, &info);
  kiln_model_free(m);
  return st != KILN_OK ? die("save") : 0;
}

/* Rank r contributes r + 1 everywhere: the mean is (size + 1) / 2. */
static int allreduce(int argc, char **argv) {
  kiln_dist *d;
  if (kiln_dist_init(&argc, &argv, &d) != KILN_OK) return die("dist_init");
  int r = kiln_dist_rank(d), n = kiln_dist_size(d), bad = 0;
  kiln_tensor *a = kiln_tensor_new(KILN_F32, 1, (int64_t[]){1000}), *b = kiln_tensor_new(KILN_F64, 2, (int64_t[]){3, 5});
  for (int i = 0; i < 1000; i++) ((float *)kiln_tensor_data(a))[i] = (float)(r + 1);
  for (int i = 0; i < 15; i++) ((double *)kiln_tensor_data(b))[i] = (r + 1) * (double)i;
  kiln_status st = kiln_dist_allreduce(d, (kiln_tensor *[]){a, b}, 2, 1.0 / n);
  for (int i = 0; st == KILN_OK && i < 1000; i++) bad += ((float *)kiln_tensor_data(a))[i] != (float)(n + 1) / 2;
  for (int i = 0; st == KILN_OK && i < 15; i++) bad += fabs(((double *)kiln_tensor_data(b))[i] - (n + 1) / 2.0 * i) > 1e-12;
  kiln_tensor *c = kiln_tensor_new(KILN_I32, 1, (int64_t[]){2});
  if (kiln_dist_allreduce(d, &c, 1, 1) != KILN_ERR_UNSUPPORTED) bad++; /* integers are refused, by name */
  kiln_dist_stats s = kiln_dist_get_stats(d);
  printf("rank %d of %d: allreduce %s, %lld bytes in %lld allreduce(s)\n", r, n, st == KILN_OK && !bad ? "ok" : "WRONG",
         (long long)s.bytes, (long long)s.allreduces);
  kiln_tensor_free(a);
  kiln_tensor_free(b);
  kiln_tensor_free(c);
  kiln_dist_free(d);
  return st != KILN_OK || bad || s.allreduces != 1;
}

int main(int argc, char **argv) {
  if (argc >= 2 && !strcmp(argv[1], "train")) return train(argc, argv);
  if (argc == 5 && !strcmp(argv[1], "compare")) return compare(argv[2], argv[3], atof(argv[4]));
  if (argc == 4 && !strcmp(argv[1], "resave")) return resave(argv[2], argv[3]);
  if (argc == 2 && !strcmp(argv[1], "allreduce")) return allreduce(argc, argv);
  fprintf(stderr, "usage: see the top of tests/dist_check.c\n");
  return 2;
}

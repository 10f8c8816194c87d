/* Seed 002's randomized hyper-parameter search (RandomizedSearchCV) on the housing
 * table (samples/housing.h): each trial samples a learning rate (log-uniform in
 * [3e-4, 3e-2]), 1 or 2 hidden layers and 16 or 32 units from its own seed, trains an
 * MLP with SGD and EarlyStopping on the validation split, and reports its best
 * validation loss; the best trial is retrained from its seed and its test MSE printed.
 * Trials are independent and seeded, so `--jobs J` worker processes give exactly the
 * results of one. A trial whose architecture was seen before compiles nothing: its
 * functions are the same code with other weights (a new learning rate is a variable),
 * so the persistent compile cache (kiln/exec.h) hands back the machine code; each trial
 * line shows how many functions it compiled and how many it reused.
 *   hparam_search [--trials N] [--jobs J] [--epochs E] [--seed S] [--data CSV] */
#include <kiln/kiln.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "housing.h"

typedef struct trial {
  double lr;
  int layers, units;
  double val_loss;
  int epochs;
  long compiled, reused;
} trial;

static int fail(const char *what) {
  fprintf(stderr, "hparam_search: %s: %s\n", what, kiln_errmsg());
  return 1;
}

/* splitmix64: the trial's own stream from (seed, trial). */
static double uniform(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return (double)((z ^ (z >> 31)) >> 11) / 9007199254740992.0;
}

static trial sample(unsigned long long seed, int i) {
  uint64_t s = seed * 1000003ull + (uint64_t)i;
  trial t = {0};
  t.lr = exp(log(3e-4) + uniform(&s) * (log(3e-2) - log(3e-4)));
  t.layers = 1 + (uniform(&s) < 0.5);
  t.units = uniform(&s) < 0.5 ? 16 : 32;
  return t;
}

/* Trains the trial's model; returns its best validation loss, and the test MSE if asked. */
static kiln_status run_trial(const housing *d, unsigned long long seed, int i, trial *t, int epochs, double *test_mse) {
  kiln_cache_stats c0, c1;
  kiln_cache_get_stats(&c0);
  kiln_model *m = kiln_sequential_new("mlp", seed + (uint64_t)i);
  for (int l = 0; l < t->layers; l++) kiln_model_add(m, kiln_layer_dense(t->units, KILN_ACT_RELU));
  kiln_model_add(m, kiln_layer_dense(1, KILN_ACT_LINEAR));
  kiln_optimizer_config oc = kiln_optimizer_defaults(KILN_OPT_SGD);
  oc.learning_rate = t->lr;
  kiln_model_compile_options co = {.optimizer_config = &oc, .loss = "mse"};
  kiln_callback stop = kiln_early_stopping("val_loss", 0, 10, true);
  kiln_fit_options fo = kiln_fit_defaults();
  fo.epochs = epochs, fo.verbose = 0, fo.validation_x = d->x_valid, fo.validation_y = d->y_valid;
  fo.callbacks = &stop, fo.ncallbacks = 1;
  kiln_history *h = NULL;
  kiln_status st = kiln_model_compile(m, &co);
  if (st == KILN_OK) st = kiln_model_fit(m, d->x_train, d->y_train, &fo, &h);
  if (st == KILN_OK) {
    t->epochs = (int)kiln_history_epochs(h);
    t->val_loss = INFINITY;
    for (int e = 0; e < t->epochs; e++) t->val_loss = fmin(t->val_loss, kiln_history_get(h, "val_loss")[e]);
    if (!isfinite(t->val_loss)) t->val_loss = 1e30; /* a diverged trial loses, it does not stop the search */
  }
  if (st == KILN_OK && test_mse) st = kiln_model_evaluate(m, d->x_test, d->y_test, 32, test_mse, 1);
  kiln_cache_get_stats(&c1);
  t->compiled = (long)(c1.misses - c0.misses);
  t->reused = (long)(c1.hits - c0.hits);
  kiln_history_free(h);
  kiln_callback_free(&stop);
  kiln_model_free(m);
  return st;
}

/* Worker j of J runs trials j, j + J, ... in a process of its own and sends each result
 * through its pipe; a trial's result depends only on (seed, trial), so J does not matter. */
typedef struct result {
  int i;
  trial t;
} result;

static int run_workers(const housing *d, unsigned long long seed, int trials, int jobs, int epochs, trial *ts) {
  int fds[64][2];
  fflush(stdout);
  for (int j = 0; j < jobs; j++) {
    if (pipe(fds[j])) return -1;
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid) {
      close(fds[j][1]);
      continue;
    }
    close(fds[j][0]);
    /* J processes of a thread per CPU each would oversubscribe the CPUs, and kiln's
     * pool spins on a descheduled worker at every parallel step (14x slower on 2 CPUs) */
    if (!getenv("KILN_NUM_THREADS")) {
      long cpus = sysconf(_SC_NPROCESSORS_ONLN);
      char threads[24];
      snprintf(threads, sizeof threads, "%ld", cpus > jobs ? cpus / jobs : 1);
      setenv("KILN_NUM_THREADS", threads, 1);
    }
    for (int i = j; i < trials; i += jobs) {
      result r = {i, sample(seed, i)};
      if (run_trial(d, seed, i, &r.t, epochs, NULL) != KILN_OK) _exit(fail("trial"));
      if (write(fds[j][1], &r, sizeof r) != (ssize_t)sizeof r) _exit(1);
    }
    _exit(0);
  }
  int got = 0, bad = 0;
  for (int j = 0; j < jobs; j++) {
    result r;
    while (read(fds[j][0], &r, sizeof r) == (ssize_t)sizeof r)
      if (r.i >= 0 && r.i < trials) ts[r.i] = r.t, got++;
    close(fds[j][0]);
  }
  for (int status; wait(&status) > 0;) bad |= !WIFEXITED(status) || WEXITSTATUS(status);
  return got == trials && !bad ? 0 : -1;
}

static void print_trial(int i, const trial *t) {
  printf("trial %2d: lr %.5f, %d x %2d units: best val_loss %.4f after %3d epochs (compiled %ld functions, reused %ld)\n", i,
         t->lr, t->layers, t->units, t->val_loss, t->epochs, t->compiled, t->reused);
}

int main(int argc, char **argv) {
  int trials = 20, jobs = 1, epochs = 200;
  unsigned long long seed = 42;
  const char *path = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--trials") && i + 1 < argc) trials = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--jobs") && i + 1 < argc) jobs = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--epochs") && i + 1 < argc) epochs = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--seed") && i + 1 < argc) seed = strtoull(argv[++i], NULL, 10);
    else if (!strcmp(argv[i], "--data") && i + 1 < argc) path = argv[++i];
    else return fprintf(stderr, "usage: hparam_search [--trials N] [--jobs J] [--epochs E] [--seed S] [--data CSV]\n"), 2;
  }
  if (trials < 1 || jobs < 1 || jobs > 64) return fprintf(stderr, "hparam_search: --trials >= 1, --jobs 1..64\n"), 2;
  housing d;
  if (housing_load(path, seed, &d) != KILN_OK) return fail("load (apt-get install python3-sklearn)");
  trial *ts = calloc((size_t)trials, sizeof *ts);
  if (!ts) return 1;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  if (jobs == 1) {
    for (int i = 0; i < trials; i++) {
      ts[i] = sample(seed, i);
      if (run_trial(&d, seed, i, &ts[i], epochs, NULL) != KILN_OK) return fail("trial");
      print_trial(i, &ts[i]);
    }
  } else if (run_workers(&d, seed, trials, jobs, epochs, ts) != 0) {
    return fail("workers");
  } else {
    for (int i = 0; i < trials; i++) print_trial(i, &ts[i]);
  }
  int best = 0;
  long compiled = 0;
  for (int i = 0; i < trials; i++) {
    compiled += ts[i].compiled;
    if (ts[i].val_loss < ts[best].val_loss) best = i;
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
  printf("%d trials in %.1f s with %d job%s: %ld functions compiled in all\n", trials, secs, jobs, jobs > 1 ? "s" : "",
         compiled);
  trial again = sample(seed, best);
  double test_mse = 0;
  if (run_trial(&d, seed, best, &again, epochs, &test_mse) != KILN_OK) return fail("retrain");
  printf("best: trial %d (lr %.5f, %d x %d units), val_loss %.4f; retrained from its seed: val_loss %.4f, test MSE %.4f\n",
         best, ts[best].lr, ts[best].layers, ts[best].units, ts[best].val_loss, again.val_loss, test_mse);
  int rc = again.val_loss != ts[best].val_loss; /* the search's best is reproducible from its seed */
  free(ts);
  housing_free(&d);
  return rc;
}

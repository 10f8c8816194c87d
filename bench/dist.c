/* Data-parallel scaling on the machine at hand: the Fashion-MNIST MLP (784-300-100-10,
 * SGD) trained on the same global batch by 1 rank and by 2 ranks (one thread each),
 * and by 1 process with 2 threads, each contender in its own mpirun, alternated over
 * rounds; medians, ratios, the allreduce's share of a step and what the bytes per
 * step predict for N machines on a network.
 *   bench_dist [--rounds R] [--batch GLOBAL] [--rows N] [--epochs E]
 * A contender is `mpirun -np P bench_dist --child ...`, printing one line. */
#include "bench/bench_util.h"
#include "kiln/kiln.h"

static int child(int argc, char **argv, int64_t batch, int64_t rows, int epochs, bool local) {
  kiln_dist *d = NULL;
  if (kiln_dist_init(&argc, &argv, &d) != KILN_OK) return fprintf(stderr, "bench_dist: %s\n", kiln_errmsg()), 1;
  int p = kiln_dist_size(d);
  kiln_tensor *x = kiln_tensor_new(KILN_F32, 2, (int64_t[]){rows, 784}), *y = kiln_tensor_new(KILN_I32, 1, (int64_t[]){rows});
  bench_fill(kiln_tensor_data(x), rows * 784, 1);
  for (int64_t i = 0; i < rows; i++) ((int32_t *)kiln_tensor_data(y))[i] = (int32_t)(i * 7 % 10);
  kiln_model *m = kiln_sequential_new("mlp", 1);
  kiln_model_add(m, kiln_layer_dense(300, KILN_ACT_RELU));
  kiln_model_add(m, kiln_layer_dense(100, KILN_ACT_RELU));
  kiln_model_add(m, kiln_layer_dense(10, KILN_ACT_SOFTMAX));
  kiln_model_compile_options co = {.optimizer = "sgd", .loss = "sparse_categorical_crossentropy"};
  kiln_fit_options fo = kiln_fit_defaults();
  fo.batch_size = batch / p, fo.verbose = 0, fo.distributed = local ? NULL : d;
  kiln_status st = kiln_model_compile(m, &co);
  if (st == KILN_OK) st = kiln_model_fit(m, x, y, &fo, NULL); /* compiles; not timed */
  kiln_dist_stats s0 = kiln_dist_get_stats(d);
  double t0 = bench_now();
  fo.epochs = epochs;
  if (st == KILN_OK) st = kiln_model_fit(m, x, y, &fo, NULL);
  double secs = bench_now() - t0;
  kiln_dist_stats s1 = kiln_dist_get_stats(d);
  int64_t steps = epochs * ((rows + batch - 1) / batch);
  if (st != KILN_OK) fprintf(stderr, "bench_dist: %s\n", kiln_errmsg());
  else if (kiln_dist_rank(d) == 0)
    printf("%.6f %.6f %lld\n", secs / (double)steps, (s1.allreduce_seconds - s0.allreduce_seconds) / (double)steps,
           (long long)(s1.allreduces > s0.allreduces ? (s1.bytes - s0.bytes) / (s1.allreduces - s0.allreduces) : 0));
  kiln_model_free(m);
  kiln_tensor_free(x);
  kiln_tensor_free(y);
  kiln_dist_free(d);
  return st != KILN_OK;
}

typedef struct contender {
  const char *name;
  int ranks, threads;
  bool local; /* fit without the distributed strategy: the fused train step */
  double step[64], reduce[64];
  long long bytes;
} contender;

static int run(contender *c, int round, const char *self, int64_t batch, int64_t rows, int epochs) {
  char cmd[2048];
  snprintf(cmd, sizeof cmd, "KILN_NUM_THREADS=%d mpirun -np %d --bind-to none %s --child%s --batch %lld --rows %lld --epochs %d",
           c->threads, c->ranks, self, c->local ? " --local" : "", (long long)batch, (long long)rows, epochs);
  FILE *p = popen(cmd, "r");
  if (!p) return 1;
  int got = fscanf(p, "%lf %lf %lld", &c->step[round], &c->reduce[round], &c->bytes);
  return (pclose(p) != 0) | (got != 3);
}

int main(int argc, char **argv) {
  int rounds = 5, epochs = 2;
  int64_t batch = 64, rows = 8192;
  bool is_child = false, local = false;
  for (int i = 1; i < argc; i++) {
    const char *v = i + 1 < argc ? argv[i + 1] : "0";
    if (!strcmp(argv[i], "--child")) is_child = true;
    else if (!strcmp(argv[i], "--local")) local = true;
    else if (!strcmp(argv[i], "--rounds")) rounds = atoi(v), i++;
    else if (!strcmp(argv[i], "--batch")) batch = atoll(v), i++;
    else if (!strcmp(argv[i], "--rows")) rows = atoll(v), i++;
    else if (!strcmp(argv[i], "--epochs")) epochs = atoi(v), i++;
  }
  if (rounds < 1 || rounds > 64 || batch < 2 || batch % 2 || rows < batch || epochs < 1)
    return fprintf(stderr, "bench_dist: bad arguments\n"), 2;
  if (is_child) return child(argc, argv, batch, rows, epochs, local);
  if (!kiln_dist_available()) return printf("bench_dist: this kiln was built without MPI\n"), 0;
  if (getuid() == 0) setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1), setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
  setenv("OMPI_MCA_rmaps_base_oversubscribe", "1", 1);
  char self[1024];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return 1;
  self[n] = 0;
  contender cs[] = {{"1 process, 1 thread", 1, 1, true, {0}, {0}, 0},
                    {"2 ranks, 1 thread each", 2, 1, false, {0}, {0}, 0},
                    {"1 rank, 1 thread", 1, 1, false, {0}, {0}, 0},
                    {"1 process, 2 threads", 1, 2, true, {0}, {0}, 0}};
  size_t nc = sizeof cs / sizeof *cs;
  for (int r = 0; r < rounds; r++)
    for (size_t c = 0; c < nc; c++)
      if (run(&cs[c], r, self, batch, rows, epochs)) return fprintf(stderr, "bench_dist: %s failed\n", cs[c].name), 1;
  printf("bench_dist: MLP 784-300-100-10, SGD, global batch %lld, %lld rows x %d epochs, median of %d rounds\n",
         (long long)batch, (long long)rows, epochs, rounds);
  double base = 0;
  for (size_t c = 0; c < nc; c++) {
    double step = bench_median(cs[c].step, rounds), red = bench_median(cs[c].reduce, rounds);
    if (!c) base = step;
    printf("  %-24s %7.3f ms/step  %5.2fx  allreduce %6.3f ms/step (%4.1f%%), %lld bytes/step\n", cs[c].name, 1e3 * step,
           base / step, 1e3 * red, 100 * red / step, cs[c].ranks > 1 ? cs[c].bytes : 0);
  }
  /* Ring allreduce: each rank sends and receives 2 (N-1)/N of the buffer per step. */
  double bytes = (double)cs[1].bytes, compute = bench_median(cs[1].step, rounds) - bench_median(cs[1].reduce, rounds);
  printf("  N machines, ring allreduce of %.2f MB/step over a network of G Gbit/s:\n", bytes / 1e6);
  for (int gbit = 1; gbit <= 100; gbit *= 10)
    for (int nodes = 4; nodes <= 16; nodes *= 4) {
      double comm = 2.0 * (nodes - 1) / nodes * bytes / (gbit * 1e9 / 8);
      printf("    %3d Gbit/s, %2d machines: allreduce %.2f ms vs %.2f ms of compute per step: efficiency %.0f%%\n", gbit,
             nodes, 1e3 * comm, 1e3 * compute, 100 * compute / (compute + comm));
    }
  return 0;
}

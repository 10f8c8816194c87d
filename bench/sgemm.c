/* sgemm: kiln's generated GEMM against oneDNN's dnnl_sgemm and OpenBLAS's
 * cblas_sgemm, row-major C = A * B, square sizes and the Fashion-MNIST MLP's
 * shapes, at the thread count asked for. Prints GFLOP/s and kiln's ratio to each.
 *
 *   build/bin/bench_sgemm [--threads N] [--rounds R] */
#include <cblas.h>
#include <kiln/kiln.h>
#include <math.h>
#include <oneapi/dnnl/dnnl.h>
#include <stdio.h>
#include <string.h>
#include "bench/bench_util.h"

void omp_set_num_threads(int n); /* libgomp, which Debian's oneDNN runs on */

static const int64_t shapes[][3] = {{64, 64, 64},       {128, 128, 128},    {256, 256, 256}, {512, 512, 512},
                                    {1024, 1024, 1024}, {2048, 2048, 2048}, {128, 300, 784}, {128, 100, 300},
                                    {1, 300, 784}};
enum { NSHAPES = sizeof shapes / sizeof *shapes };
static const char *const contenders[] = {"kiln", "onednn", "openblas"};

typedef struct {
  int64_t M, N, K;
  float *a, *b, *c;
  kiln_exec *exec;
  kiln_tensor *ta, *tb, *tc;
} gemm_case;

static void run_kiln(void *v) {
  gemm_case *g = v;
  if (kiln_exec_run_into(g->exec, (const kiln_tensor *[]){g->ta, g->tb}, 2, &g->tc, 1) != KILN_OK) {
    fprintf(stderr, "kiln: %s\n", kiln_errmsg());
    exit(1);
  }
}
static void run_dnnl(void *v) {
  gemm_case *g = v;
  dnnl_sgemm('N', 'N', g->M, g->N, g->K, 1.0f, g->a, g->K, g->b, g->N, 0.0f, g->c, g->N);
}
static void run_openblas(void *v) {
  gemm_case *g = v;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)g->M, (int)g->N, (int)g->K, 1.0f, g->a, (int)g->K, g->b,
              (int)g->N, 0.0f, g->c, (int)g->N);
}

static int setup_kiln(gemm_case *g, int threads) {
  kiln_graph *gr = kiln_graph_new();
  kiln_value a = kiln_placeholder(gr, "a", KILN_F32, KILN_SHAPE(g->M, g->K));
  kiln_value b = kiln_placeholder(gr, "b", KILN_F32, KILN_SHAPE(g->K, g->N));
  kiln_output(gr, "c", kiln_matmul(gr, a, b, false, false));
  kiln_compile_options o = {.threads = threads};
  kiln_status st = kiln_compile(gr, &o, &g->exec);
  kiln_graph_free(gr);
  if (st != KILN_OK) return fprintf(stderr, "kiln: %s\n", kiln_errmsg()), -1;
  g->ta = kiln_tensor_from_data(KILN_F32, 2, (int64_t[]){g->M, g->K}, g->a, sizeof(float) * (size_t)(g->M * g->K));
  g->tb = kiln_tensor_from_data(KILN_F32, 2, (int64_t[]){g->K, g->N}, g->b, sizeof(float) * (size_t)(g->K * g->N));
  g->tc = kiln_tensor_new(KILN_F32, 2, (int64_t[]){g->M, g->N});
  return 0;
}

/* 500 entries of kiln's C against double-precision dot products, relative to the
 * largest |entry| (each is a sum of K products). */
static double kiln_error(gemm_case *g) {
  run_kiln(g);
  const float *c = kiln_tensor_cdata(g->tc);
  double maxdiff = 0, maxabs = 1e-30;
  uint64_t s = 12345;
  for (int n = 0; n < 500; n++) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    int64_t i = (int64_t)((s >> 33) % (uint64_t)g->M), j = (int64_t)((s >> 13) % (uint64_t)g->N);
    double ref = 0;
    for (int64_t k = 0; k < g->K; k++) ref += (double)g->a[i * g->K + k] * g->b[k * g->N + j];
    maxdiff = fmax(maxdiff, fabs(ref - c[i * g->N + j]));
    maxabs = fmax(maxabs, fabs(ref));
  }
  return maxdiff / maxabs;
}

/* Child: times one contender on every shape, one line of seconds each. */
static int run_contender(const char *who, int threads) {
  omp_set_num_threads(threads);
  openblas_set_num_threads(threads);
  for (int s = 0; s < NSHAPES; s++) {
    gemm_case g = {.M = shapes[s][0], .N = shapes[s][1], .K = shapes[s][2]};
    g.a = malloc(sizeof(float) * (size_t)(g.M * g.K));
    g.b = malloc(sizeof(float) * (size_t)(g.K * g.N));
    g.c = malloc(sizeof(float) * (size_t)(g.M * g.N));
    bench_fill(g.a, g.M * g.K, 1);
    bench_fill(g.b, g.K * g.N, 2);
    bench_fn fn = !strcmp(who, "kiln") ? run_kiln : !strcmp(who, "onednn") ? run_dnnl : run_openblas;
    if (fn == run_kiln) {
      if (setup_kiln(&g, threads)) return 1;
      double err = kiln_error(&g);
      if (err > 1e-5) return fprintf(stderr, "kiln's %lldx%lldx%lld result is off by %.1e\n", (long long)g.M,
                                     (long long)g.N, (long long)g.K, err), 1;
    }
    printf("%.9e\n", bench_time(fn, &g));
    fflush(stdout);
    kiln_exec_free(g.exec);
    kiln_tensor_free(g.ta), kiln_tensor_free(g.tb), kiln_tensor_free(g.tc);
    free(g.a), free(g.b), free(g.c);
  }
  return 0;
}

int main(int argc, char **argv) {
  bench_fix_openblas(argv);
  bench_args a;
  double t[NSHAPES * 3];
  int status = bench_run(argc, argv, 3, contenders, run_contender, NSHAPES, t, &a);
  if (status >= 0) return status;
  int threads = a.threads, rounds = a.rounds;
  printf("sgemm, %d thread%s: GFLOP/s (median of %d rounds), kiln's speed as a ratio\n", threads, threads > 1 ? "s" : "",
         rounds);
  printf("%6s %6s %6s %9s %9s %9s %12s %14s\n", "M", "N", "K", "kiln", "oneDNN", "OpenBLAS", "kiln/oneDNN",
         "kiln/OpenBLAS");
  for (int s = 0; s < NSHAPES; s++) {
    const double *ts = t + s * 3;
    double flops = 2.0 * (double)shapes[s][0] * (double)shapes[s][1] * (double)shapes[s][2];
    printf("%6lld %6lld %6lld %9.1f %9.1f %9.1f %11.2fx %13.2fx\n", (long long)shapes[s][0], (long long)shapes[s][1],
           (long long)shapes[s][2], flops / ts[0] * 1e-9, flops / ts[1] * 1e-9, flops / ts[2] * 1e-9, ts[1] / ts[0],
           ts[2] / ts[0]);
  }
  return 0;
}

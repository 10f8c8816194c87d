/* kiln's contender in bench/peers/peers.py: bench_peers MODEL.onnx X.npy Y.npy THREADS
 * imports the model, JIT-compiles it for THREADS threads, checks its output on X
 * against PyTorch's Y (relative to Y's largest |entry|), then prints the seconds
 * per call in steady state and, on stderr, the compile time. */
#include <kiln/kiln.h>
#include <kiln/onnx.h>
#include <math.h>
#include <stdio.h>
#include "bench/bench_util.h"

typedef struct {
  kiln_exec *e;
  kiln_tensor *x, *y;
} peer;

static void run(void *v) {
  peer *p = v;
  if (kiln_exec_run_into(p->e, (const kiln_tensor *const *)&p->x, 1, &p->y, 1) != KILN_OK) {
    fprintf(stderr, "bench_peers: %s\n", kiln_errmsg());
    exit(1);
  }
}

int main(int argc, char **argv) {
  if (argc != 5) return fprintf(stderr, "usage: %s MODEL.onnx X.npy Y.npy THREADS\n", argv[0]), 2;
  kiln_graph *g = NULL;
  kiln_tensor *want = NULL;
  peer p = {0};
  if (kiln_onnx_load(argv[1], &g) != KILN_OK || kiln_npy_load(argv[2], &p.x) != KILN_OK ||
      kiln_npy_load(argv[3], &want) != KILN_OK)
    return fprintf(stderr, "bench_peers: %s\n", kiln_errmsg()), 1;
  kiln_compile_options o = {.threads = atoi(argv[4])};
  double t0 = bench_now();
  if (kiln_compile(g, &o, &p.e) != KILN_OK) return fprintf(stderr, "bench_peers: %s\n", kiln_errmsg()), 1;
  if (kiln_exec_run(p.e, (const kiln_tensor *const *)&p.x, 1, &p.y, 1) != KILN_OK)
    return fprintf(stderr, "bench_peers: %s\n", kiln_errmsg()), 1;
  fprintf(stderr, "compile+first run %.1f ms\n", (bench_now() - t0) * 1e3);
  int64_t n = kiln_tensor_numel(want);
  if (kiln_tensor_numel(p.y) != n) return fprintf(stderr, "bench_peers: %s: output size differs from PyTorch's\n", argv[1]), 1;
  const float *got = kiln_tensor_cdata(p.y), *ref = kiln_tensor_cdata(want);
  double maxdiff = 0, maxabs = 1e-30;
  for (int64_t i = 0; i < n; i++) maxdiff = fmax(maxdiff, fabs((double)got[i] - ref[i])), maxabs = fmax(maxabs, fabs((double)ref[i]));
  if (maxdiff / maxabs > 1e-3)
    return fprintf(stderr, "bench_peers: %s: off PyTorch's output by %.2e (relative)\n", argv[1], maxdiff / maxabs), 1;
  printf("%.9e\n", bench_time(run, &p));
  kiln_exec_free(p.e);
  kiln_graph_free(g);
  kiln_tensor_free(p.x), kiln_tensor_free(p.y), kiln_tensor_free(want);
  return 0;
}

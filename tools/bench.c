/* kiln bench NAME|MODEL [--batch N] [--runs R] [--compile]: compiles a built-in graph
 * (or a .kir graph or .onnx model) with every pass
 * and with the fusion-related passes disabled in turn, runs the variants interleaved
 * (round-robin, so machine noise hits all alike) and prints kernels, bytes moved,
 * peak working memory, the median time and the speed-up against the unfused build.
 * --compile times compilation instead: each variant compiled R times past the
 * compile cache, the median of each phase. */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "tools/bench.h"

static const struct {
  const char *name, *disable;
} VARIANTS[] = {
    {"all passes", NULL},
    {"no memory-plan", "memory-plan"},
    {"no layout", "layout"},
    {"no epilogue", "epilogue"},
    {"no fuse", "fuse"},
    {"no passes", "fold,simplify,layout,fuse,memory-plan"},
};
enum { NVAR = sizeof VARIANTS / sizeof VARIANTS[0], BASELINE = 4 };

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static kiln_tensor *random_input(kiln_dtype t, kiln_shape s, unsigned *seed) {
  kiln_tensor *x = kiln_tensor_new(t, s.rank, s.dims);
  if (!x || t != KILN_F32) return x;
  float *d = kiln_tensor_data(x);
  for (int64_t i = 0; i < kiln_tensor_numel(x); i++) d[i] = (float)rand_r(seed) / (float)RAND_MAX * 0.2f - 0.1f;
  return x;
}

/* A .kir graph or .onnx model, its symbolic batch bound to batch (default 1). */
static kiln_status load_model(const char *path, int64_t batch, bench_graph *out) {
  memset(out, 0, sizeof *out);
  kiln_status st = has_ext(path, ".onnx") ? kiln_onnx_load(path, &out->g) : kiln_graph_load(path, &out->g);
  if (st != KILN_OK) return st;
  size_t nin = kiln_graph_num_inputs(out->g), cap = sizeof out->shapes / sizeof out->shapes[0];
  out->ninputs = (int)(nin < cap ? nin : cap + 1); /* more than cap: refused by the caller */
  for (size_t i = 0; i < nin && i < cap; i++) {
    kiln_value v = kiln_graph_input(out->g, i);
    out->shapes[i] = kiln_value_shape(out->g, v);
    out->dtypes[i] = kiln_value_dtype(out->g, v);
    for (int d = 0; d < out->shapes[i].rank; d++)
      if (out->shapes[i].dims[d] == KILN_DYN) out->shapes[i].dims[d] = batch > 0 ? batch : 1;
  }
  return KILN_OK;
}

static void print_mb(uint64_t bytes) { printf(" %10.2f MB", (double)bytes / 1e6); }

static double median(double *t, int n) {
  qsort(t, (size_t)n, sizeof *t, cmp_double);
  return n % 2 ? t[n / 2] : (t[n / 2 - 1] + t[n / 2]) / 2;
}

/* Each variant compiled `runs` times without the cache; medians per phase. */
static int bench_compile(const char *name, const bench_graph *bg, int runs) {
  enum { PHASES = 6 };
  static const char *const phase[PHASES] = {"passes", "lower", "llvm opt", "codegen", "jit load", "total"};
  double *t = calloc((size_t)(PHASES * runs), sizeof *t);
  if (!t) return fprintf(stderr, "kiln: bench: out of memory\n"), 1;
  printf("kiln bench %s --compile: %d compiles per variant past the cache, median ms\n", name, runs);
  printf("%-16s", "variant");
  for (int p = 0; p < PHASES; p++) printf(" %9s", phase[p]);
  printf(" %9s %12s %11s\n", "functions", "instructions", "code bytes");
  int rc = 0;
  for (int v = 0; v < NVAR && !rc; v++) {
    kiln_exec_stats st = {0};
    for (int r = 0; r < runs && !rc; r++) {
      kiln_compile_options o = {.disable_passes = VARIANTS[v].disable, .no_cache = true};
      kiln_exec *e = NULL;
      if (kiln_compile(bg->g, &o, &e) != KILN_OK || kiln_exec_get_stats(e, &st) != KILN_OK) {
        fprintf(stderr, "kiln: bench: %s: %s\n", VARIANTS[v].name, kiln_errmsg());
        rc = 1;
      }
      kiln_exec_free(e);
      double ph[PHASES] = {st.passes_ms, st.lower_ms, st.llvm_opt_ms, st.llvm_codegen_ms, st.jit_load_ms, st.compile_ms};
      for (int p = 0; p < PHASES; p++) t[p * runs + r] = ph[p];
    }
    if (rc) break;
    printf("%-16s", VARIANTS[v].name);
    for (int p = 0; p < PHASES; p++) printf(" %9.1f", median(t + p * runs, runs));
    printf(" %9zu %12zu %11llu\n", st.llvm_functions, st.llvm_instructions, (unsigned long long)st.object_bytes);
  }
  free(t);
  return rc;
}

int cmd_bench(int argc, char **argv) {
  const char *name = NULL;
  int64_t batch = 0;
  int runs = 30;
  bool compile_only = false;
  for (int i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "--batch") && i + 1 < argc) batch = atoll(argv[++i]);
    else if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--compile")) compile_only = true;
    else if (argv[i][0] != '-' && !name) name = argv[i];
    else name = NULL, i = argc;
  }
  if (!name || runs < 1 || runs > 100000 || batch < 0) {
    fprintf(stderr, "usage: kiln bench NAME|MODEL.kir|MODEL.onnx [--batch N] [--runs R] [--compile]; NAME is one of\n");
    bench_list(stderr);
    return 2;
  }
  bench_graph bg;
  kiln_status st = has_ext(name, ".kir") || has_ext(name, ".onnx") ? load_model(name, batch, &bg) : bench_builtin(name, batch, &bg);
  if (st != KILN_OK) {
    kiln_graph_free(bg.g);
    if (st == KILN_ERR_INVALID && !bg.g) {
      fprintf(stderr, "kiln: bench: no built-in named '%s'; the built-ins are\n", name);
      bench_list(stderr);
      return 2;
    }
    fprintf(stderr, "kiln: bench: %s\n", kiln_errmsg());
    return 1;
  }
  if (bg.ninputs > 32) {
    fprintf(stderr, "kiln: bench: %s has more than 32 inputs\n", name);
    kiln_graph_free(bg.g);
    return 1;
  }
  if (compile_only) {
    int crc = bench_compile(name, &bg, runs);
    kiln_graph_free(bg.g);
    return crc;
  }
  kiln_tensor *ins[32] = {0};
  unsigned seed = 1;
  for (int i = 0; i < bg.ninputs; i++) ins[i] = random_input(bg.dtypes[i], bg.shapes[i], &seed);
  kiln_exec *e[NVAR] = {0};
  kiln_exec_stats stats[NVAR];
  size_t nout = 0;
  int rc = 0;
  for (int v = 0; v < NVAR && !rc; v++) {
    kiln_compile_options o = {.disable_passes = VARIANTS[v].disable};
    if (kiln_compile(bg.g, &o, &e[v]) != KILN_OK || kiln_exec_get_stats(e[v], &stats[v]) != KILN_OK) {
      fprintf(stderr, "kiln: bench: %s: %s\n", VARIANTS[v].name, kiln_errmsg());
      rc = 1;
    }
    nout = e[v] ? kiln_exec_num_outputs(e[v]) : 0;
  }
  kiln_tensor **outs = calloc(nout + 1, sizeof *outs);
  double *times = calloc((size_t)(NVAR * (runs + 2)), sizeof *times);
  if (!rc && (!outs || !times)) fprintf(stderr, "kiln: bench: out of memory\n"), rc = 1;
  /* two warm-up rounds, then `runs` timed rounds over all variants in turn */
  for (int r = 0; r < runs + 2 && !rc; r++)
    for (int v = 0; v < NVAR && !rc; v++) {
      double t0 = now_ms();
      if (kiln_exec_run(e[v], (const kiln_tensor *const *)ins, (size_t)bg.ninputs, outs, nout) != KILN_OK) {
        fprintf(stderr, "kiln: bench: run: %s\n", kiln_errmsg());
        rc = 1;
      }
      times[v * (runs + 2) + r] = now_ms() - t0;
      for (size_t j = 0; j < nout; j++) kiln_tensor_free(outs[j]), outs[j] = NULL;
    }
  if (!rc) {
    double med[NVAR];
    for (int v = 0; v < NVAR; v++) med[v] = median(times + v * (runs + 2) + 2, runs);
    printf("kiln bench %s: %d interleaved runs per variant, median wall time\n", name, runs);
    printf("%-16s %8s %7s %13s %13s %11s %9s %11s\n", "variant", "kernels", "fused", "bytes moved", "peak memory",
           "median ms", "speed-up", "compile ms");
    static const char *const outcome[] = {"", " (miss)", " (hit)"}; /* by kiln_cache_outcome */
    for (int v = 0; v < NVAR; v++) {
      printf("%-16s %8zu %7zu", VARIANTS[v].name, stats[v].kernels, stats[v].fused_nodes);
      print_mb(stats[v].bytes_moved);
      print_mb(stats[v].workspace_bytes);
      printf(" %11.3f %8.2fx %11.1f%s\n", med[v], med[BASELINE] / med[v], stats[v].compile_ms,
             outcome[stats[v].cache]);
    }
    printf("speed-up: median time of \"%s\" / the variant's; peak memory: the workspace "
           "(intermediates and kernel scratch); compile ms: with the compile cache's outcome\n", VARIANTS[BASELINE].name);
  }
  free(times);
  free(outs);
  for (int v = 0; v < NVAR; v++) kiln_exec_free(e[v]);
  for (int i = 0; i < bg.ninputs; i++) kiln_tensor_free(ins[i]);
  kiln_graph_free(bg.g);
  return rc;
}

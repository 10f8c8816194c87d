/* Shared by the bench/ programs: a monotonic clock, medians, seeded data and a
 * fair alternation of contenders.
 *
 * The machine is shared and noisy, so no absolute time is trusted: each round
 * runs every contender once, in turn (each in its own process, see
 * bench_alternate_processes); a contender's time is the median over rounds, and
 * what gets reported is the ratio of medians from the same run. */
#ifndef KILN_BENCH_UTIL_H
#define KILN_BENCH_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Debian's OpenBLAS 0.3.21 does not know this machine's CPU model and falls back
 * to generic kernels (about a fifth of its speed); on an AVX-512 CPU we restart
 * with OPENBLAS_CORETYPE=SkylakeX, the kernels it picks on a CPU it knows. The
 * variable must be set before the library loads, hence the exec. */
static inline void bench_fix_openblas(char **argv) {
  if (getenv("OPENBLAS_CORETYPE") || !__builtin_cpu_supports("avx512f")) return;
  setenv("OPENBLAS_CORETYPE", "SkylakeX", 1);
  execv("/proc/self/exe", argv);
}

static inline double bench_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static inline int bench_cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static inline double bench_median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, bench_cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Uniform in [-1, 1), from a fixed seed: every contender gets the same data. */
static inline void bench_fill(float *x, int64_t n, uint64_t seed) {
  for (int64_t i = 0; i < n; i++) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    x[i] = (float)((double)(seed >> 40) / (double)(1ull << 24) * 2.0 - 1.0);
  }
}

typedef void (*bench_fn)(void *ctx);

/* Calls of fn that fill about `seconds`, judged from the fastest of a few warm calls
 * (a cold first call can be a hundred times slower: page faults, sleeping threads). */
static inline int bench_reps(bench_fn fn, void *ctx, double seconds) {
  double best = 1e30;
  for (int i = 0; i < 5; i++) {
    double t0 = bench_now();
    fn(ctx);
    double t = bench_now() - t0;
    if (t < best) best = t;
  }
  int reps = (int)(seconds / (best + 1e-9)) + 1;
  return reps > 100000 ? 100000 : reps;
}

/* Seconds per call of fn in steady state: the median of a few blocks of calls. */
static inline double bench_time(bench_fn fn, void *ctx) {
  int reps = bench_reps(fn, ctx, 0.03);
  double t[5];
  for (int b = 0; b < 5; b++) {
    double t0 = bench_now();
    for (int k = 0; k < reps; k++) fn(ctx);
    t[b] = (bench_now() - t0) / reps;
  }
  return bench_median(t, 5);
}

/* The command line every bench program takes: [--threads N] [--rounds R], and
 * --only CONTENDER in the child processes bench_alternate_processes starts.
 * Returns 0, or 2 (the exit status) after printing what is wrong. */
typedef struct {
  int threads, rounds;
  const char *only;
} bench_args;
static inline int bench_parse_args(int argc, char **argv, bench_args *a) {
  *a = (bench_args){.threads = 1, .rounds = 5};
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--threads") && i + 1 < argc) a->threads = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--rounds") && i + 1 < argc) a->rounds = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--only") && i + 1 < argc) a->only = argv[++i];
    else return fprintf(stderr, "usage: %s [--threads N] [--rounds R]\n", argv[0]), 2;
  }
  if (a->threads < 1 || a->rounds < 1) return fprintf(stderr, "threads and rounds must be positive\n"), 2;
  return 0;
}

/* Contenders run in separate processes, alternated round by round: libraries
 * that share a process disturb each other (idle OpenMP threads spin on the
 * cores kiln's pool needs, for longer than any pause we could afford). The
 * program re-runs itself as `SELF --only CONTENDER --threads N`, which prints one
 * time in seconds per case and line; out[case * n + i] gets contender i's median
 * over the rounds. Returns 0, or -1 when a child failed. */
static inline int bench_alternate_processes(int n, const char *const *contenders, int threads, int ncases, int rounds,
                                            double *out) {
  double *t = calloc((size_t)(n * ncases * rounds), sizeof *t);
  int rc = 0;
  for (int r = 0; r < rounds && !rc; r++)
    for (int i = 0; i < n && !rc; i++) {
      char cmd[1024];
      snprintf(cmd, sizeof cmd, "/proc/%d/exe --only %s --threads %d", (int)getpid(), contenders[i], threads);
      FILE *f = popen(cmd, "r");
      if (!f) return free(t), -1;
      for (int c = 0; c < ncases; c++)
        if (fscanf(f, "%lf", &t[(c * n + i) * rounds + r]) != 1) rc = -1;
      if (pclose(f) != 0) rc = -1;
    }
  for (int c = 0; c < ncases * n && !rc; c++) out[c] = bench_median(t + c * rounds, rounds);
  free(t);
  return rc;
}

/* What every bench program's main does first: parse the command line (*a); as a
 * child, run the one contender asked for; as the parent, time the n contenders
 * alternately into out (as bench_alternate_processes). Returns -1 when the caller
 * should print its table from out, else the exit status. */
typedef int (*bench_contender_fn)(const char *who, int threads);
static inline int bench_run(int argc, char **argv, int n, const char *const *contenders, bench_contender_fn run,
                            int ncases, double *out, bench_args *a) {
  if (bench_parse_args(argc, argv, a)) return 2;
  if (a->only) return run(a->only, a->threads);
  if (bench_alternate_processes(n, contenders, a->threads, ncases, a->rounds, out))
    return fprintf(stderr, "a benchmark process failed\n"), 1;
  return -1;
}

#endif

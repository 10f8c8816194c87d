/* The persistent compile cache: hits and misses as kiln_cache_get_stats counts them,
 * what changes the key and what does not, corrupt entries, eviction, and several
 * processes compiling the same graph at once. Every result is checked against the
 * reference evaluator. */
#define _GNU_SOURCE /* memmem */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "harness.h"

static char dir[256];

/* A fresh, empty cache directory for each test. */
static int fresh_dir(void **state) {
  (void)state;
  static int n;
  snprintf(dir, sizeof dir, "/tmp/kiln_test_cache.%ld.%d", (long)getpid(), n++);
  mkdir(dir, 0700);
  setenv("KILN_CACHE_DIR", dir, 1);
  unsetenv("KILN_CACHE");
  unsetenv("KILN_CACHE_MAX_MB");
  return 0;
}

static int remove_dir(void **state) {
  (void)state;
  DIR *d = opendir(dir);
  struct dirent *de;
  char path[600];
  while (d && (de = readdir(d)))
    if (de->d_name[0] != '.') {
      snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
      unlink(path);
    }
  if (d) closedir(d);
  rmdir(dir);
  return 0;
}

/* Entries (*.kjit) in the cache and their total size; *tmp counts leftovers. */
static int entries(uint64_t *bytes, int *tmp, char *first, size_t cap) {
  DIR *d = opendir(dir);
  assert_non_null(d);
  int n = 0;
  if (bytes) *bytes = 0;
  if (tmp) *tmp = 0;
  struct dirent *de;
  while ((de = readdir(d))) {
    size_t len = strlen(de->d_name);
    if (strstr(de->d_name, ".tmp") && tmp) ++*tmp; /* kiln_write_atomic's NAME.tmp-XXXXXX */
    if (len < 5 || strcmp(de->d_name + len - 5, ".kjit")) continue;
    char path[600];
    snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    if (bytes) *bytes += (uint64_t)st.st_size;
    if (first && n == 0) snprintf(first, cap, "%s", path);
    n++;
  }
  closedir(d);
  return n;
}

/* relu(x @ w + b) with w (cols x units, stored: larger than the embedded-constant
 * bound) drawn from `seed`, so graphs of the same shape differ only in weights. */
static kiln_graph *dense_graph(int64_t rows, int64_t cols, int64_t units, uint64_t seed) {
  kiln_graph *g = kiln_graph_new();
  trng r = {seed};
  kiln_tensor *w = random_tensor(&r, KILN_F32, 2, (int64_t[]){cols, units}, -1, 1);
  kiln_tensor *b = random_tensor(&r, KILN_F32, 1, (int64_t[]){units}, -1, 1);
  kiln_value x = kiln_placeholder(g, "x", KILN_F32, KILN_SHAPE(rows, cols));
  kiln_value y = kiln_matmul(g, x, kiln_constant(g, KILN_F32, KILN_SHAPE(cols, units), kiln_tensor_cdata(w)), false, false);
  kiln_output(g, "y", kiln_relu(g, kiln_add(g, y, kiln_constant(g, KILN_F32, KILN_SHAPE(units), kiln_tensor_cdata(b)))));
  kiln_tensor_free(w);
  kiln_tensor_free(b);
  return g;
}

/* Compiles g with opts, runs it on a random input, compares with the evaluator and
 * returns the compile's cache outcome; *from_cache (if given): shared functions the
 * compile took from the cache. */
static kiln_cache_outcome compile_check_shared(const kiln_graph *g, const kiln_compile_options *opts, size_t *from_cache) {
  const kiln_node *x = &g->nodes[0];
  trng r = {7};
  kiln_tensor *in = random_tensor(&r, KILN_F32, x->rank, x->dims, -1, 1), *got = NULL, *want = NULL;
  kiln_exec *e = NULL;
  if (kiln_compile(g, opts, &e) != KILN_OK) fail_msg("compile: %s", kiln_errmsg());
  kiln_exec_stats st;
  assert_int_equal(kiln_exec_get_stats(e, &st), KILN_OK);
  assert_int_equal(kiln_exec_run(e, (const kiln_tensor *[]){in}, 1, &got, 1), KILN_OK);
  assert_int_equal(kiln_evaluate(g, (const kiln_tensor *[]){in}, 1, &want, 1), KILN_OK);
  assert_int_equal(compare_tensors("cached compile", got, want, 1e-5, 1e-5), 0);
  if (st.cache == KILN_CACHE_HIT) {
    assert_true(st.llvm_opt_ms == 0 && st.llvm_codegen_ms == 0);
  }
  assert_true(st.compile_ms > 0 && st.llvm_instructions > 0 && st.object_bytes > 0);
  if (from_cache) *from_cache = st.functions_from_cache;
  kiln_tensor_free(in);
  kiln_tensor_free(got);
  kiln_tensor_free(want);
  kiln_exec_free(e);
  return st.cache;
}

static kiln_cache_outcome compile_check(const kiln_graph *g, const kiln_compile_options *opts) {
  return compile_check_shared(g, opts, NULL);
}

static void test_second_compile_hits(void **state) {
  (void)state;
  kiln_graph *g = dense_graph(5, 40, 24, 1);
  kiln_cache_stats a, b, c;
  kiln_cache_get_stats(&a);
  assert_int_equal(compile_check(g, NULL), KILN_CACHE_MISS);
  kiln_cache_get_stats(&b);
  assert_int_equal(b.misses, a.misses + 1);
  assert_int_equal(b.stores, a.stores + 1);
  assert_int_equal(entries(NULL, NULL, NULL, 0), 1);
  assert_int_equal(compile_check(g, NULL), KILN_CACHE_HIT);
  kiln_cache_get_stats(&c);
  assert_int_equal(c.hits, b.hits + 1);
  assert_int_equal(c.misses, b.misses);
  /* other weights, same code: the weights are arguments, so this hits and computes with the new ones */
  kiln_graph *g2 = dense_graph(5, 40, 24, 2);
  assert_int_equal(compile_check(g2, NULL), KILN_CACHE_HIT);
  kiln_graph_free(g2);
  kiln_graph_free(g);
}

static void test_changes_miss(void **state) {
  (void)state;
  kiln_graph *g = dense_graph(6, 33, 20, 1);
  assert_int_equal(compile_check(g, &(kiln_compile_options){.threads = 1}), KILN_CACHE_MISS);
  assert_int_equal(compile_check(g, &(kiln_compile_options){.threads = 1}), KILN_CACHE_HIT);
  /* an option that changes the code, the CPU, the thread count, the graph */
  assert_int_equal(compile_check(g, &(kiln_compile_options){.threads = 1, .disable_passes = "fuse"}), KILN_CACHE_MISS);
  assert_int_equal(compile_check(g, &(kiln_compile_options){.threads = 1, .cpu = "generic"}), KILN_CACHE_MISS);
  assert_int_equal(compile_check(g, &(kiln_compile_options){.threads = 2}), KILN_CACHE_MISS);
  kiln_graph *g2 = dense_graph(7, 33, 20, 1);
  assert_int_equal(compile_check(g2, &(kiln_compile_options){.threads = 1}), KILN_CACHE_MISS);
  /* off: by option, by environment; profiling (host addresses in the code) */
  assert_int_equal(compile_check(g, &(kiln_compile_options){.threads = 1, .no_cache = true}), KILN_CACHE_OFF);
  assert_int_equal(compile_check(g, &(kiln_compile_options){.threads = 1, .profile = true}), KILN_CACHE_OFF);
  setenv("KILN_CACHE", "0", 1);
  assert_int_equal(compile_check(g, &(kiln_compile_options){.threads = 1}), KILN_CACHE_OFF);
  unsetenv("KILN_CACHE");
  assert_int_equal(compile_check(g, &(kiln_compile_options){.threads = 1}), KILN_CACHE_HIT);
  kiln_graph_free(g2);
  kiln_graph_free(g);
}

/* relu(... relu(x @ w1 + b1) ... @ wn + bn): a module large enough for the compile
 * to be split over threads (compile_parts.c). */
static kiln_graph *deep_graph(int layers, int64_t rows, int64_t width) {
  kiln_graph *g = kiln_graph_new();
  trng r = {11};
  kiln_value h = kiln_placeholder(g, "x", KILN_F32, KILN_SHAPE(rows, width));
  for (int l = 0; l < layers; l++) {
    kiln_tensor *w = random_tensor(&r, KILN_F32, 2, (int64_t[]){width, width}, -0.2, 0.2);
    kiln_tensor *b = random_tensor(&r, KILN_F32, 1, (int64_t[]){width}, -1, 1);
    h = kiln_matmul(g, h, kiln_constant(g, KILN_F32, KILN_SHAPE(width, width), kiln_tensor_cdata(w)), false, l % 2 == 1);
    h = kiln_relu(g, kiln_add(g, h, kiln_constant(g, KILN_F32, KILN_SHAPE(width), kiln_tensor_cdata(b))));
    kiln_tensor_free(w);
    kiln_tensor_free(b);
  }
  kiln_output(g, "y", kiln_reduce_sum(g, h, (int64_t[]){1}, 1, false));
  return g;
}

static bool file_contains(const char *path, const char *what, size_t n) {
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  static char buf[1 << 20];
  size_t got = fread(buf, 1, sizeof buf, f);
  fclose(f);
  return memmem(buf, got, what, n) != NULL;
}

/* Compiled on four threads: several objects in one entry, which loads back and
 * computes what the one-thread compile of the same module does. */
static void test_compile_on_threads(void **state) {
  (void)state;
  kiln_graph *g = deep_graph(6, 30, 48);
  setenv("KILN_COMPILE_THREADS", "4", 1);
  assert_int_equal(compile_check(g, &(kiln_compile_options){.threads = 1}), KILN_CACHE_MISS);
  char first[600];
  assert_int_equal(entries(NULL, NULL, first, sizeof first), 1);
  assert_true(file_contains(first, "KILNOBJS", 8));
  assert_int_equal(compile_check(g, &(kiln_compile_options){.threads = 1}), KILN_CACHE_HIT);
  setenv("KILN_COMPILE_THREADS", "1", 1);
  assert_int_equal(compile_check(g, &(kiln_compile_options){.threads = 1, .no_cache = true}), KILN_CACHE_OFF);
  unsetenv("KILN_COMPILE_THREADS");
  kiln_graph_free(g);
}

/* A damaged entry is rejected, recompiled and replaced: the next compile hits again. */
static void damage_and_recover(void (*damage)(const char *path, long size)) {
  kiln_graph *g = dense_graph(4, 50, 17, 3);
  assert_int_equal(compile_check(g, NULL), KILN_CACHE_MISS);
  char path[600];
  assert_int_equal(entries(NULL, NULL, path, sizeof path), 1);
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  damage(path, (long)st.st_size);
  kiln_cache_stats a, b;
  kiln_cache_get_stats(&a);
  assert_int_equal(compile_check(g, NULL), KILN_CACHE_MISS);
  kiln_cache_get_stats(&b);
  assert_int_equal(b.rejected, a.rejected + 1);
  assert_int_equal(b.stores, a.stores + 1);
  assert_int_equal(compile_check(g, NULL), KILN_CACHE_HIT);
  kiln_graph_free(g);
}

static void truncate_half(const char *path, long size) { assert_int_equal(truncate(path, size / 2), 0); }
static void flip_a_bit(const char *path, long size) {
  FILE *f = fopen(path, "r+b");
  assert_non_null(f);
  assert_int_equal(fseek(f, size - size / 3, SEEK_SET), 0);
  int ch = fgetc(f);
  assert_int_equal(fseek(f, size - size / 3, SEEK_SET), 0);
  fputc(ch ^ 0x10, f);
  fclose(f);
}
static void empty_file(const char *path, long size) {
  (void)size;
  assert_int_equal(truncate(path, 0), 0);
}

static void test_truncated_entry(void **state) {
  (void)state;
  damage_and_recover(truncate_half);
}
static void test_flipped_entry(void **state) {
  (void)state;
  damage_and_recover(flip_a_bit);
}
static void test_empty_entry(void **state) {
  (void)state;
  damage_and_recover(empty_file);
}

/* A bound of a few entries keeps the cache at or under it, the newest entry kept. */
static void test_eviction(void **state) {
  (void)state;
  kiln_graph *g = dense_graph(3, 30, 10, 1);
  assert_int_equal(compile_check(g, NULL), KILN_CACHE_MISS);
  uint64_t one;
  assert_int_equal(entries(&one, NULL, NULL, 0), 1);
  char bound[32];
  snprintf(bound, sizeof bound, "%.6f", 2.5 * (double)one / (1 << 20)); /* room for two entries of this size */
  setenv("KILN_CACHE_MAX_MB", bound, 1);
  for (int64_t rows = 4; rows < 9; rows++) {
    kiln_graph *h = dense_graph(rows, 30, 10, 1);
    assert_int_equal(compile_check(h, NULL), KILN_CACHE_MISS);
    uint64_t total;
    int n = entries(&total, NULL, NULL, 0);
    assert_true(n >= 1 && n <= 3 && total <= (uint64_t)(2.6 * (double)one));
    assert_int_equal(compile_check(h, NULL), KILN_CACHE_HIT); /* the newest survived */
    kiln_graph_free(h);
  }
  unsetenv("KILN_CACHE_MAX_MB");
  kiln_graph_free(g);
}

/* Processes that compile the same graph at once all succeed, and leave one entry. */
static void test_concurrent_processes(void **state) {
  (void)state;
  enum { PROCS = 3 };
  pid_t pids[PROCS];
  for (int p = 0; p < PROCS; p++) {
    pids[p] = fork();
    assert_true(pids[p] >= 0);
    if (pids[p] == 0) {
      kiln_graph *g = dense_graph(9, 64, 48, 5);
      const kiln_node *x = &g->nodes[0];
      trng r = {7};
      kiln_tensor *in = random_tensor(&r, KILN_F32, x->rank, x->dims, -1, 1), *got = NULL, *want = NULL;
      kiln_exec *e = NULL;
      int bad = kiln_compile(g, NULL, &e) != KILN_OK || kiln_exec_run(e, (const kiln_tensor *[]){in}, 1, &got, 1) != KILN_OK ||
                kiln_evaluate(g, (const kiln_tensor *[]){in}, 1, &want, 1) != KILN_OK ||
                compare_tensors("concurrent", got, want, 1e-5, 1e-5);
      _exit(bad);
    }
  }
  for (int p = 0; p < PROCS; p++) {
    int status;
    assert_int_equal(waitpid(pids[p], &status, 0), pids[p]);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  int tmp;
  assert_int_equal(entries(NULL, &tmp, NULL, 0), 1);
  assert_int_equal(tmp, 0);
  kiln_graph *g = dense_graph(9, 64, 48, 5);
  assert_int_equal(compile_check(g, NULL), KILN_CACHE_HIT);
  kiln_graph_free(g);
}

/* Entries of shared functions (*.kfn), each passed to `damage` when given. */
static int shared_entries(void (*damage)(const char *path, long size)) {
  DIR *d = opendir(dir);
  assert_non_null(d);
  int n = 0;
  struct dirent *de;
  while ((de = readdir(d))) {
    size_t len = strlen(de->d_name);
    if (len < 4 || strcmp(de->d_name + len - 4, ".kfn")) continue;
    char path[600];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
    assert_int_equal(stat(path, &st), 0);
    if (damage) damage(path, (long)st.st_size);
    n++;
  }
  closedir(d);
  return n;
}

/* tanh(x @ w + b) or relu(...): another module with the same GEMM. */
static kiln_graph *dense_tanh_graph(int64_t rows, int64_t cols, int64_t units) {
  kiln_graph *g = kiln_graph_new();
  trng r = {9};
  kiln_tensor *w = random_tensor(&r, KILN_F32, 2, (int64_t[]){cols, units}, -1, 1);
  kiln_value x = kiln_placeholder(g, "x", KILN_F32, KILN_SHAPE(rows, cols));
  kiln_value y = kiln_matmul(g, x, kiln_constant(g, KILN_F32, KILN_SHAPE(cols, units), kiln_tensor_cdata(w)), false, false);
  kiln_output(g, "y", kiln_tanh(g, y));
  kiln_tensor_free(w);
  return g;
}

/* A compile that misses still takes the shared functions (GEMM micro-kernels,
 * driver, packing) an earlier compile of another graph stored, and computes what the
 * evaluator does; without the cache they are compiled with the rest. */
static void test_shared_functions_reused(void **state) {
  (void)state;
  kiln_graph *a = dense_graph(40, 64, 48, 1), *b = dense_tanh_graph(40, 64, 48), *c = dense_tanh_graph(33, 64, 20);
  kiln_cache_stats s0, s1, s2;
  size_t from_cache = 99;
  kiln_cache_get_stats(&s0);
  assert_int_equal(compile_check_shared(a, NULL, &from_cache), KILN_CACHE_MISS);
  assert_int_equal(from_cache, 0);
  int stored = shared_entries(NULL);
  kiln_cache_get_stats(&s1);
  if (stored < 2 || s1.functions_stored != s0.functions_stored + (uint64_t)stored)
    fail_msg("%d shared functions stored, %llu counted", stored, (unsigned long long)(s1.functions_stored - s0.functions_stored));
  assert_int_equal(compile_check_shared(b, NULL, &from_cache), KILN_CACHE_MISS);
  kiln_cache_get_stats(&s2);
  if (from_cache < 2 || s2.functions_reused != s1.functions_reused + from_cache)
    fail_msg("%zu shared functions from the cache, %llu counted", from_cache, (unsigned long long)(s2.functions_reused - s1.functions_reused));
  assert_int_equal(compile_check_shared(c, NULL, &from_cache), KILN_CACHE_MISS);
  assert_true(from_cache >= 2);
  assert_int_equal(compile_check_shared(c, &(kiln_compile_options){.no_cache = true}, &from_cache), KILN_CACHE_OFF);
  assert_int_equal(from_cache, 0);
  kiln_graph_free(a), kiln_graph_free(b), kiln_graph_free(c);
}

/* Damaged shared-function entries are rejected one by one, compiled afresh and
 * stored again; the results stay the evaluator's. */
static void test_damaged_shared_functions(void **state) {
  (void)state;
  kiln_graph *a = dense_graph(40, 64, 48, 1), *b = dense_tanh_graph(40, 64, 48), *c = dense_tanh_graph(35, 64, 48);
  assert_int_equal(compile_check(a, NULL), KILN_CACHE_MISS);
  int n = shared_entries(flip_a_bit);
  assert_true(n >= 2);
  kiln_cache_stats s0, s1;
  size_t from_cache = 99;
  kiln_cache_get_stats(&s0);
  assert_int_equal(compile_check_shared(b, NULL, &from_cache), KILN_CACHE_MISS);
  kiln_cache_get_stats(&s1);
  assert_int_equal(from_cache, 0);
  assert_true(s1.rejected >= s0.rejected + 2 && s1.functions_stored >= s0.functions_stored + 2);
  assert_int_equal(compile_check_shared(c, NULL, &from_cache), KILN_CACHE_MISS);
  assert_true(from_cache >= 2);
  kiln_graph_free(a), kiln_graph_free(b), kiln_graph_free(c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_second_compile_hits, fresh_dir, remove_dir),
      cmocka_unit_test_setup_teardown(test_changes_miss, fresh_dir, remove_dir),
      cmocka_unit_test_setup_teardown(test_compile_on_threads, fresh_dir, remove_dir),
      cmocka_unit_test_setup_teardown(test_truncated_entry, fresh_dir, remove_dir),
      cmocka_unit_test_setup_teardown(test_flipped_entry, fresh_dir, remove_dir),
      cmocka_unit_test_setup_teardown(test_empty_entry, fresh_dir, remove_dir),
      cmocka_unit_test_setup_teardown(test_eviction, fresh_dir, remove_dir),
      cmocka_unit_test_setup_teardown(test_concurrent_processes, fresh_dir, remove_dir),
      cmocka_unit_test_setup_teardown(test_shared_functions_reused, fresh_dir, remove_dir),
      cmocka_unit_test_setup_teardown(test_damaged_shared_functions, fresh_dir, remove_dir),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

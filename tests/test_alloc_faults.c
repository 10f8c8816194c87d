/* Allocation-failure injection (SQLite's faultsim): each scenario runs once to count
 * its allocations, then once per allocation n = 1, 2, ... with the n-th failing. Every
 * run must return (no crash, no abort), a failed run must say why, and under ASan no
 * run may leak (LeakSanitizer is asked after each). User data must survive: a failed
 * checkpoint save leaves the previous file, a failed restore leaves the variables.
 *
 * This program is linked with -Wl,--wrap=malloc,... against libkiln.a, so the
 * allocations counted are kiln's own (and this file's); LLVM and protobuf-c allocate
 * through their shared libraries and are not failed here.
 *   test_alloc_faults [SCENARIO...]   (default: all; KILN_CACHE_DIR keeps compiles warm) */
#include <execinfo.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "kiln/kiln.h"

/* ---- the allocator hook ---- */

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
void *__real_aligned_alloc(size_t align, size_t n);

static atomic_long counted, fail_at; /* fail_at 0: never */
static atomic_bool fired;

static bool should_fail(void) {
  long k = atomic_fetch_add(&counted, 1) + 1;
  long at = atomic_load(&fail_at);
  if (at && k == at) {
    atomic_store(&fired, true);
    if (getenv("KILN_ALLOC_TRACE")) { /* where the failing allocation is, for debugging a finding */
      void *frames[16];
      backtrace_symbols_fd(frames, backtrace(frames, 16), 2);
    }
    return true;
  }
  return false;
}

void *__wrap_malloc(size_t n) { return should_fail() ? NULL : __real_malloc(n); }
void *__wrap_calloc(size_t n, size_t size) { return should_fail() ? NULL : __real_calloc(n, size); }
void *__wrap_realloc(void *p, size_t n) { return should_fail() ? NULL : __real_realloc(p, n); }
void *__wrap_aligned_alloc(size_t align, size_t n) { return should_fail() ? NULL : __real_aligned_alloc(align, n); }
char *__wrap_strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = __wrap_malloc(n);
  return d ? memcpy(d, s, n) : NULL;
}

extern int __lsan_do_recoverable_leak_check(void) __attribute__((weak));

/* ---- scenarios: each builds, uses and frees everything it touches ---- */

static const char *tmpdir;
/* What a scenario computed (a sum of its outputs), so a run that survived a failed
 * allocation is checked against the clean run: recovering must not change results. */
static double result;

static double sum_of(kiln_tensor *t) {
  double s = 0;
  for (int64_t i = 0; t && i < kiln_tensor_numel(t); i++) s += ((const float *)kiln_tensor_data(t))[i] * (double)(i + 1);
  return s;
}

static kiln_status onnx_load(void) {
  kiln_graph *g = NULL;
  kiln_status st = kiln_onnx_load("/usr/share/libonnx-testdata/data/node/test_gemm_default_single_elem_vector_bias/model.onnx", &g);
  kiln_graph_free(g);
  return st;
}

static kiln_graph *small_graph(void) {
  kiln_graph *g = kiln_graph_new();
  if (!g) return NULL;
  kiln_value x = kiln_placeholder(g, "x", KILN_F32, KILN_SHAPE(4, 8));
  float w[8 * 3];
  for (int i = 0; i < 24; i++) w[i] = (float)(i % 5) - 2;
  kiln_value c = kiln_constant(g, KILN_F32, KILN_SHAPE(8, 3), w);
  kiln_output(g, "y", kiln_relu(g, kiln_matmul(g, x, c, false, false)));
  return g;
}

static kiln_status compile_run_with(bool cold) {
  kiln_graph *g = small_graph();
  kiln_exec *e = NULL;
  kiln_tensor *x = kiln_tensor_new(KILN_F32, 2, (int64_t[]){4, 8}), *y = NULL;
  kiln_compile_options o = {.no_cache = cold};
  kiln_status st = g && x ? kiln_compile(g, &o, &e) : KILN_ERR_NOMEM;
  for (int i = 0; x && i < 32; i++) ((float *)kiln_tensor_data(x))[i] = (float)(i % 7) - 3;
  if (st == KILN_OK) st = kiln_exec_run(e, (const kiln_tensor *const[]){x}, 1, &y, 1);
  result = sum_of(y);
  kiln_tensor_free(x);
  kiln_tensor_free(y);
  kiln_exec_free(e);
  kiln_graph_free(g);
  return st;
}

static kiln_status compile_and_run(void) { return compile_run_with(false); }
static kiln_status compile_cold(void) { return compile_run_with(true); } /* lowering and LLVM, no cache */

/* An object and header from the small graph; the result is a checksum of the object's bytes. */
static kiln_status aot_compile(void) {
  char obj[1024], hdr[1024];
  snprintf(obj, sizeof obj, "%s/alloc_faults.o", tmpdir);
  snprintf(hdr, sizeof hdr, "%s/alloc_faults.h", tmpdir);
  remove(obj);
  kiln_graph *g = small_graph();
  kiln_aot_options o = {.name = "faulty", .object_path = obj, .header_path = hdr};
  kiln_status st = g ? kiln_aot_compile(g, &o) : KILN_ERR_NOMEM;
  kiln_graph_free(g);
  result = 0;
  FILE *f = st == KILN_OK ? fopen(obj, "rb") : NULL;
  for (int c, i = 1; f && (c = fgetc(f)) != EOF; i++) result += (double)c * i;
  if (f) fclose(f);
  return st;
}

static kiln_status evaluate(void) {
  kiln_graph *g = small_graph();
  kiln_tensor *x = kiln_tensor_new(KILN_F32, 2, (int64_t[]){4, 8}), *y = NULL;
  for (int i = 0; x && i < 32; i++) ((float *)kiln_tensor_data(x))[i] = (float)(i % 7) - 3;
  kiln_status st = g && x ? kiln_evaluate(g, (const kiln_tensor *const[]){x}, 1, &y, 1) : KILN_ERR_NOMEM;
  result = sum_of(y);
  kiln_tensor_free(x);
  kiln_tensor_free(y);
  kiln_graph_free(g);
  return st;
}

static kiln_model *tiny_model(void) {
  kiln_model *m = kiln_sequential_new("tiny", 1);
  if (!m) return NULL;
  kiln_model_compile_options co = {.optimizer = "adam", .loss = "sparse_categorical_crossentropy",
                                   .metrics = (const char *[]){"accuracy"}, .nmetrics = 1};
  if (kiln_model_add(m, kiln_layer_dense(4, KILN_ACT_RELU)) != KILN_OK ||
      kiln_model_add(m, kiln_layer_dense(2, KILN_ACT_SOFTMAX)) != KILN_OK || kiln_model_compile(m, &co) != KILN_OK ||
      kiln_model_build(m, KILN_F32, KILN_SHAPE(3)) != KILN_OK) {
    kiln_model_free(m);
    return NULL;
  }
  return m;
}

static kiln_status fit_one_epoch(void) {
  kiln_model *m = tiny_model();
  kiln_tensor *x = kiln_tensor_new(KILN_F32, 2, (int64_t[]){16, 3}), *y = kiln_tensor_new(KILN_I32, 1, (int64_t[]){16});
  kiln_status st = m && x && y ? KILN_OK : KILN_ERR_NOMEM;
  for (int i = 0; st == KILN_OK && i < 16; i++) ((int32_t *)kiln_tensor_data(y))[i] = i % 2;
  for (int i = 0; st == KILN_OK && i < 48; i++) ((float *)kiln_tensor_data(x))[i] = (float)(i % 5) * 0.3f;
  kiln_fit_options fo = kiln_fit_defaults();
  fo.batch_size = 8, fo.verbose = 0;
  kiln_history *h = NULL;
  if (st == KILN_OK) st = kiln_model_fit(m, x, y, &fo, &h);
  const double *loss = kiln_history_get(h, "loss"), *acc = kiln_history_get(h, "accuracy");
  result = loss && acc ? loss[0] + 10 * acc[0] : 0;
  kiln_history_free(h);
  kiln_tensor_free(x);
  kiln_tensor_free(y);
  kiln_model_free(m);
  return st;
}

/* The store holds the values of `before` unless the whole restore succeeded. */
static kiln_status checkpoint_save_restore(void) {
  char path[1024];
  snprintf(path, sizeof path, "%s/alloc_faults.ckpt", tmpdir);
  kiln_variables *vs = kiln_variables_new(5);
  kiln_variable *a = NULL, *b = NULL;
  kiln_status st = vs ? kiln_variable_new(vs, "a", KILN_F32, KILN_SHAPE(3, 4), KILN_GLOROT_UNIFORM, true, &a) : KILN_ERR_NOMEM;
  if (st == KILN_OK) st = kiln_variable_new(vs, "b", KILN_F64, KILN_SHAPE(2), KILN_ONES, true, &b);
  if (st == KILN_OK) st = kiln_checkpoint_save(vs, path, NULL);
  if (st == KILN_OK) {
    float *av = kiln_tensor_data(kiln_variable_value(a));
    float saved = av[0];
    av[0] = 1234.5f;
    st = kiln_checkpoint_restore(vs, path, true, NULL);
    if (st == KILN_OK && av[0] != saved) st = KILN_ERR_RUNTIME, fprintf(stderr, "restore did not restore\n");
    if (st != KILN_OK && av[0] != 1234.5f) {
      fprintf(stderr, "FAIL: a failed restore changed variable a\n");
      exit(1);
    }
  }
  kiln_variables_free(vs);
  return st;
}

static char model_path[1024];

static kiln_status model_file_load(void) {
  kiln_model *m = NULL;
  kiln_status st = kiln_model_load(model_path, &m);
  kiln_tensor *x = st == KILN_OK ? kiln_tensor_new(KILN_F32, 2, (int64_t[]){2, 3}) : NULL, *y = NULL;
  for (int i = 0; x && i < 6; i++) ((float *)kiln_tensor_data(x))[i] = (float)i - 2;
  if (st == KILN_OK) st = x ? kiln_model_predict(m, x, 32, &y) : KILN_ERR_NOMEM;
  result = sum_of(y);
  kiln_tensor_free(x);
  kiln_tensor_free(y);
  kiln_model_free(m);
  return st;
}

typedef struct scenario {
  const char *name;
  kiln_status (*run)(void);
} scenario;

static const scenario scenarios[] = {
    {"onnx_load", onnx_load},     {"evaluate", evaluate},
    {"compile_run", compile_and_run}, {"compile_cold", compile_cold}, {"aot_compile", aot_compile},
    {"checkpoint", checkpoint_save_restore},
    {"fit_epoch", fit_one_epoch}, {"model_load", model_file_load},
};

/* Runs s with every allocation failing in turn; returns the number of problems. */
static int walk(const scenario *s) {
  atomic_store(&fail_at, 0);
  atomic_store(&counted, 0);
  result = 0;
  if (s->run() != KILN_OK) return fprintf(stderr, "FAIL %s: fails without faults: %s\n", s->name, kiln_errmsg()), 1;
  long total = atomic_load(&counted);
  double expected = result;
  int problems = 0, failed = 0, survived = 0;
  for (long n = 1; n <= total; n++) {
    atomic_store(&counted, 0);
    atomic_store(&fired, false);
    atomic_store(&fail_at, n);
    kiln_status st = s->run();
    atomic_store(&fail_at, 0);
    if (!atomic_load(&fired)) continue; /* fewer allocations this time (caches) */
    if (st == KILN_OK) {
      survived++; /* the failure was optional (a cache, a faster path) */
      if (result != expected)
        problems++, fprintf(stderr, "FAIL %s: allocation %ld failed, the run succeeded with a different result (%.9g, not %.9g)\n",
                            s->name, n, result, expected);
    } else {
      failed++;
      const char *msg = kiln_errmsg();
      if (!msg || !*msg) problems++, fprintf(stderr, "FAIL %s: allocation %ld failed with status %d and no message\n", s->name, n, st);
    }
    if (__lsan_do_recoverable_leak_check && __lsan_do_recoverable_leak_check())
      problems++, fprintf(stderr, "FAIL %s: a leak after allocation %ld failed (report above)\n", s->name, n);
  }
  printf("%-12s %5ld allocations: %d failed runs returned an error with a message, %d recovered%s%s\n", s->name, total,
         failed, survived, __lsan_do_recoverable_leak_check ? ", no leaks" : "", problems ? " -- PROBLEMS" : "");
  return problems;
}

int main(int argc, char **argv) {
  tmpdir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  snprintf(model_path, sizeof model_path, "%s/alloc_faults.kiln", tmpdir);
  kiln_model *m = tiny_model();
  if (!m || kiln_model_save(m, model_path) != KILN_OK) return fprintf(stderr, "setup: %s\n", kiln_errmsg()), 1;
  kiln_model_free(m);
  int problems = 0;
  for (size_t i = 0; i < sizeof scenarios / sizeof *scenarios; i++) {
    bool wanted = argc < 2;
    for (int a = 1; a < argc; a++) wanted |= !strcmp(argv[a], scenarios[i].name);
    if (wanted) problems += walk(&scenarios[i]);
  }
  printf("alloc faults: %s\n", problems ? "PROBLEMS" : "all scenarios clean");
  return problems != 0;
}

/* ONNX backend conformance: every model under the given directories (the layout of
 * Debian's libonnx-testdata: DIR/test_x/model.onnx + test_data_set_N/{input,output}_K.pb)
 * is imported, JIT-compiled and run on each data set; outputs are compared with the
 * expected ones (rtol 1e-3, atol 1e-5; integers and booleans exactly).
 *   onnx_conformance [--expect FILE] [--write FILE] [-v] DIR...
 * Prints one line per test (pass / fail / unsupported and why) and totals per
 * directory. --expect fails (exit 1) when a test listed in FILE ("dir/test") does not
 * pass; --write writes the passing tests in that form. */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "kiln/kiln.h"

typedef enum { PASS, FAIL, UNSUPPORTED } outcome;

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Sorted entries of dir starting with prefix (NULL: all but dot files). */
static char **list_dir(const char *dir, const char *prefix, size_t *n) {
  DIR *d = opendir(dir);
  char **v = NULL;
  *n = 0;
  if (!d) return NULL;
  size_t cap = 0;
  for (struct dirent *e; (e = readdir(d));) {
    if (e->d_name[0] == '.' || (prefix && strncmp(e->d_name, prefix, strlen(prefix)))) continue;
    if (*n == cap) {
      cap = cap ? 2 * cap : 64;
      char **nv = realloc(v, cap * sizeof *v);
      if (!nv) break;
      v = nv;
    }
    v[(*n)++] = strdup(e->d_name);
  }
  closedir(d);
  if (v) qsort(v, *n, sizeof *v, cmp_str);
  return v;
}

static void free_list(char **v, size_t n) {
  for (size_t i = 0; i < n; i++) free(v[i]);
  free(v);
}

static bool close_enough(const kiln_tensor *got, const kiln_tensor *want, char *why, size_t cap) {
  if (kiln_tensor_dtype(got) != kiln_tensor_dtype(want)) {
    snprintf(why, cap, "dtype %s, expected %s", kiln_dtype_name(kiln_tensor_dtype(got)), kiln_dtype_name(kiln_tensor_dtype(want)));
    return false;
  }
  int r = kiln_tensor_rank(got);
  if (r != kiln_tensor_rank(want) || memcmp(kiln_tensor_dims(got), kiln_tensor_dims(want), sizeof(int64_t) * (size_t)r)) {
    size_t k = (size_t)snprintf(why, cap, "shape [");
    for (int d = 0; d < r && k < cap; d++) k += (size_t)snprintf(why + k, cap - k, "%s%lld", d ? "," : "", (long long)kiln_tensor_dims(got)[d]);
    if (k < cap) k += (size_t)snprintf(why + k, cap - k, "], expected [");
    for (int d = 0; d < kiln_tensor_rank(want) && k < cap; d++)
      k += (size_t)snprintf(why + k, cap - k, "%s%lld", d ? "," : "", (long long)kiln_tensor_dims(want)[d]);
    if (k < cap) snprintf(why + k, cap - k, "]");
    return false;
  }
  int64_t n = kiln_tensor_numel(got);
  const void *a = kiln_tensor_cdata(got), *b = kiln_tensor_cdata(want);
  for (int64_t i = 0; i < n; i++) {
    double x, y;
    switch (kiln_tensor_dtype(got)) {
    case KILN_F32: x = ((const float *)a)[i], y = ((const float *)b)[i]; break;
    case KILN_F64: x = ((const double *)a)[i], y = ((const double *)b)[i]; break;
    case KILN_I32: x = ((const int32_t *)a)[i], y = ((const int32_t *)b)[i]; break;
    case KILN_I64:
      if (((const int64_t *)a)[i] != ((const int64_t *)b)[i]) {
        snprintf(why, cap, "[%lld] = %lld, expected %lld", (long long)i, (long long)((const int64_t *)a)[i], (long long)((const int64_t *)b)[i]);
        return false;
      }
      continue;
    default: x = ((const uint8_t *)a)[i], y = ((const uint8_t *)b)[i];
    }
    if (isnan(x) && isnan(y)) continue;
    if (x == y) continue;
    if (!(fabs(x - y) <= 1e-5 + 1e-3 * fabs(y))) {
      snprintf(why, cap, "[%lld] = %.7g, expected %.7g", (long long)i, x, y);
      return false;
    }
  }
  return true;
}

static outcome run_set(kiln_exec *e, const char *set_dir, char *why, size_t cap) {
  size_t nin = kiln_exec_num_inputs(e), nout = kiln_exec_num_outputs(e);
  kiln_tensor *ins[64] = {0}, *outs[64] = {0}, *want = NULL;
  outcome o = PASS;
  char path[4096];
  if (nin > 64 || nout > 64) return snprintf(why, cap, "too many inputs/outputs"), UNSUPPORTED;
  for (size_t i = 0; i < nin && o == PASS; i++) {
    snprintf(path, sizeof path, "%s/input_%zu.pb", set_dir, i);
    if (kiln_onnx_load_tensor(path, &ins[i], NULL) != KILN_OK) {
      snprintf(why, cap, "input %zu: %s", i, kiln_errmsg());
      o = strstr(kiln_errmsg(), "not supported") ? UNSUPPORTED : FAIL;
    }
  }
  if (o == PASS && kiln_exec_run(e, (const kiln_tensor *const *)ins, nin, outs, nout) != KILN_OK) {
    snprintf(why, cap, "run: %s", kiln_errmsg());
    o = FAIL;
  }
  for (size_t j = 0; j < nout && o == PASS; j++) {
    snprintf(path, sizeof path, "%s/output_%zu.pb", set_dir, j);
    if (kiln_onnx_load_tensor(path, &want, NULL) != KILN_OK) {
      snprintf(why, cap, "expected output %zu: %s", j, kiln_errmsg());
      o = strstr(kiln_errmsg(), "not supported") ? UNSUPPORTED : FAIL;
    } else if (!close_enough(outs[j], want, why, cap)) {
      char tmp[256];
      snprintf(tmp, sizeof tmp, "output %zu %s", j, why);
      snprintf(why, cap, "%s", tmp);
      o = FAIL;
    }
    kiln_tensor_free(want);
    want = NULL;
  }
  for (size_t i = 0; i < 64; i++) kiln_tensor_free(ins[i]), kiln_tensor_free(outs[i]);
  return o;
}

static outcome run_test(const char *test_dir, char *why, size_t cap) {
  char path[4096];
  snprintf(path, sizeof path, "%s/model.onnx", test_dir);
  kiln_graph *g = NULL;
  kiln_status st = kiln_onnx_load(path, &g);
  if (st != KILN_OK) {
    snprintf(why, cap, "%s", kiln_errmsg());
    return st == KILN_ERR_UNSUPPORTED ? UNSUPPORTED : FAIL;
  }
  kiln_exec *e = NULL;
  if (kiln_compile(g, NULL, &e) != KILN_OK) {
    snprintf(why, cap, "compile: %s", kiln_errmsg());
    kiln_graph_free(g);
    return FAIL;
  }
  size_t nsets;
  char **sets = list_dir(test_dir, "test_data_set_", &nsets);
  outcome o = nsets ? PASS : FAIL;
  if (!nsets) snprintf(why, cap, "no test_data_set_*");
  for (size_t i = 0; i < nsets && o == PASS; i++) {
    snprintf(path, sizeof path, "%s/%s", test_dir, sets[i]);
    o = run_set(e, path, why, cap);
  }
  free_list(sets, nsets);
  kiln_exec_free(e);
  kiln_graph_free(g);
  return o;
}

int main(int argc, char **argv) {
  const char *expect = NULL, *write = NULL;
  bool verbose = false;
  const char *dirs[16];
  int ndirs = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--expect") && i + 1 < argc) expect = argv[++i];
    else if (!strcmp(argv[i], "--write") && i + 1 < argc) write = argv[++i];
    else if (!strcmp(argv[i], "-v")) verbose = true;
    else if (argv[i][0] != '-' && ndirs < 16) dirs[ndirs++] = argv[i];
    else {
      fprintf(stderr, "usage: onnx_conformance [--expect FILE] [--write FILE] [-v] DIR...\n");
      return 2;
    }
  }
  /* "dir/test" of every pass, to check against the expected list */
  char **passed = NULL;
  size_t npassed = 0, cap = 0;
  for (int d = 0; d < ndirs; d++) {
    size_t n;
    char **tests = list_dir(dirs[d], "test_", &n);
    if (!tests) {
      fprintf(stderr, "onnx_conformance: cannot read %s\n", dirs[d]);
      return 2;
    }
    const char *base = strrchr(dirs[d], '/') ? strrchr(dirs[d], '/') + 1 : dirs[d];
    size_t count[3] = {0};
    for (size_t t = 0; t < n; t++) {
      char path[4096], why[512] = "";
      snprintf(path, sizeof path, "%s/%s", dirs[d], tests[t]);
      outcome o = run_test(path, why, sizeof why);
      count[o]++;
      if (verbose || o == FAIL)
        printf("%-11s %s/%s%s%s\n", o == PASS ? "pass" : o == FAIL ? "FAIL" : "unsupported", base, tests[t], *why ? ": " : "", why);
      if (o == PASS) {
        if (npassed == cap) {
          cap = cap ? 2 * cap : 256;
          passed = realloc(passed, cap * sizeof *passed);
          if (!passed) return 2;
        }
        size_t len = strlen(base) + strlen(tests[t]) + 2;
        passed[npassed] = malloc(len);
        snprintf(passed[npassed++], len, "%s/%s", base, tests[t]);
      }
    }
    printf("%s: %zu pass, %zu fail, %zu unsupported (of %zu)\n", base, count[PASS], count[FAIL], count[UNSUPPORTED], n);
    free_list(tests, n);
  }
  int rc = 0;
  if (write) {
    FILE *f = fopen(write, "w");
    for (size_t i = 0; f && i < npassed; i++) fprintf(f, "%s\n", passed[i]);
    if (!f || fclose(f)) fprintf(stderr, "onnx_conformance: cannot write %s\n", write), rc = 2;
  }
  if (expect) {
    FILE *f = fopen(expect, "r");
    char line[512];
    size_t regressions = 0, listed = 0;
    if (!f) fprintf(stderr, "onnx_conformance: cannot read %s\n", expect), rc = 2;
    while (f && fgets(line, sizeof line, f)) {
      line[strcspn(line, "\r\n")] = 0;
      if (!*line || *line == '#') continue;
      listed++;
      bool ok = false;
      for (size_t i = 0; i < npassed && !ok; i++) ok = !strcmp(passed[i], line);
      if (!ok) printf("REGRESSION  %s no longer passes\n", line), regressions++;
    }
    if (f) fclose(f);
    printf("%zu of %zu expected passes hold\n", listed - regressions, listed);
    if (regressions) rc = 1;
  }
  free_list(passed, npassed);
  return rc;
}

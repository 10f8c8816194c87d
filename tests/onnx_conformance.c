/* ONNX backend conformance: every model under the given directories (the layout of
 * Debian's libonnx-testdata: DIR/test_x/model.onnx + test_data_set_N/{input,output}_K.pb)
 * is imported (offered the data set's inputs, which it freezes where the model
 * needs constants), JIT-compiled and run on each data set; outputs are compared
 * with the expected ones (rtol 1e-3, atol 1e-5; integers and booleans exactly).
 *   onnx_conformance [--expect FILE] [--write FILE] [-v] DIR...
 * Prints one line per test (pass / FAIL / unsupported / out-of-scope and why) and
 * totals per directory, with the pass rate over the tests in scope. --expect fails (exit 1) when a test listed in FILE ("dir/test") does not
 * pass; --write writes the passing tests in that form. */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "kiln/kiln.h"

typedef enum { PASS, FAIL, UNSUPPORTED, OUT } outcome;

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

/* Tests outside "float ops with a deterministic inference meaning" (the scope the
 * coverage figure is measured on): they need data types kiln has no dtype for
 * (uint8, float16, strings...), sequences or control flow, training-only
 * operators, random outputs, or output shapes that depend on the data. */
static const char *const OUT_OF_SCOPE[] = {
    "ONNX data type", "is not a tensor", "opset 1 is outside", "opset -1 is outside", "operator domain",
    "training_mode", "training mode", "(Bernoulli)", "(RandomUniformLike)", "(RandomNormalLike)", "(NonZero)",
    "(Unique)", "(Compress)", "(NonMaxSuppression)", "(TfIdfVectorizer)", "(DynamicQuantizeLinear)", "(If)",
    "(Loop)", "(Scan)", "(SequenceEmpty)", "(SequenceConstruct)", "(SplitToSequence)", "(StringNormalizer)",
};

static outcome classify_unsupported(const char *why) {
  for (size_t i = 0; i < sizeof OUT_OF_SCOPE / sizeof OUT_OF_SCOPE[0]; i++)
    if (strstr(why, OUT_OF_SCOPE[i])) return OUT;
  return UNSUPPORTED;
}

/* Imports the model offering the set's inputs (needed where the model wants
 * constants), compiles it and feeds the remaining inputs by name. */
static outcome run_set(const char *model, const char *set_dir, char *why, size_t cap) {
  enum { MAX = 64 };
  kiln_tensor *ins[MAX] = {0}, *outs[MAX] = {0}, *want = NULL;
  char *names[MAX] = {0};
  size_t nfiles = 0;
  outcome o = PASS;
  char path[4096];
  for (; nfiles < MAX; nfiles++) {
    snprintf(path, sizeof path, "%s/input_%zu.pb", set_dir, nfiles);
    FILE *f = fopen(path, "rb");
    if (!f) break;
    fclose(f);
    if (kiln_onnx_load_tensor(path, &ins[nfiles], &names[nfiles]) != KILN_OK) {
      snprintf(why, cap, "input %zu: %s", nfiles, kiln_errmsg());
      o = strstr(kiln_errmsg(), "not supported") ? classify_unsupported(why) : FAIL;
      nfiles++;
      /* a sequence or optional input is no TensorProto: the model's own error says why */
      kiln_graph *probe = NULL;
      if (kiln_onnx_load(model, &probe) != KILN_OK) {
        snprintf(why, cap, "%s", kiln_errmsg());
        o = classify_unsupported(why);
      }
      kiln_graph_free(probe);
      break;
    }
  }
  kiln_graph *g = NULL;
  kiln_exec *e = NULL;
  if (o == PASS) {
    kiln_onnx_options opts = {(const char *const *)names, (const kiln_tensor *const *)ins, nfiles, NULL};
    kiln_status st = kiln_onnx_load_with(model, &opts, &g);
    if (st != KILN_OK) {
      snprintf(why, cap, "%s", kiln_errmsg());
      o = st == KILN_ERR_UNSUPPORTED ? classify_unsupported(why) : FAIL;
    } else if (kiln_compile(g, NULL, &e) != KILN_OK) {
      snprintf(why, cap, "compile: %s", kiln_errmsg());
      o = FAIL;
    }
  }
  size_t nin = e ? kiln_exec_num_inputs(e) : 0, nout = e ? kiln_exec_num_outputs(e) : 0;
  const kiln_tensor *feed[MAX];
  if (o == PASS && (nin > MAX || nout > MAX)) snprintf(why, cap, "too many inputs/outputs"), o = FAIL;
  for (size_t i = 0; i < nin && o == PASS; i++) {
    feed[i] = NULL;
    for (size_t k = 0; k < nfiles; k++)
      if (names[k] && !strcmp(names[k], kiln_exec_input_name(e, i))) feed[i] = ins[k];
    if (!feed[i] && i < nfiles && names[i] && !*names[i]) feed[i] = ins[i]; /* unnamed files go by position */
    if (!feed[i]) snprintf(why, cap, "no data for input '%s'", kiln_exec_input_name(e, i)), o = FAIL;
  }
  if (o == PASS && kiln_exec_run(e, feed, nin, outs, nout) != KILN_OK) {
    snprintf(why, cap, "run: %s", kiln_errmsg());
    o = FAIL;
  }
  for (size_t j = 0; j < nout && o == PASS; j++) {
    snprintf(path, sizeof path, "%s/output_%zu.pb", set_dir, j);
    if (kiln_onnx_load_tensor(path, &want, NULL) != KILN_OK) {
      snprintf(why, cap, "expected output %zu: %s", j, kiln_errmsg());
      o = strstr(kiln_errmsg(), "not supported") ? classify_unsupported(why) : FAIL;
    } else if (!close_enough(outs[j], want, why, cap)) {
      char tmp[256];
      snprintf(tmp, sizeof tmp, "output %zu %s", j, why);
      snprintf(why, cap, "%s", tmp);
      o = FAIL;
    }
    kiln_tensor_free(want);
    want = NULL;
  }
  for (size_t i = 0; i < MAX; i++) kiln_tensor_free(ins[i]), kiln_tensor_free(outs[i]), free(names[i]);
  kiln_exec_free(e);
  kiln_graph_free(g);
  return o;
}

static outcome run_test(const char *test_dir, char *why, size_t cap) {
  char model[4096], path[4096];
  snprintf(model, sizeof model, "%s/model.onnx", test_dir);
  size_t nsets;
  char **sets = list_dir(test_dir, "test_data_set_", &nsets);
  outcome o = nsets ? PASS : FAIL;
  if (!nsets) snprintf(why, cap, "no test_data_set_*");
  for (size_t i = 0; i < nsets && o == PASS; i++) {
    snprintf(path, sizeof path, "%s/%s", test_dir, sets[i]);
    o = run_set(model, path, why, cap);
  }
  free_list(sets, nsets);
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
    size_t count[4] = {0};
    for (size_t t = 0; t < n; t++) {
      char path[4096], why[512] = "";
      snprintf(path, sizeof path, "%s/%s", dirs[d], tests[t]);
      outcome o = run_test(path, why, sizeof why);
      count[o]++;
      if (verbose || o == FAIL)
        printf("%-12s %s/%s%s%s\n", o == PASS ? "pass" : o == FAIL ? "FAIL" : o == OUT ? "out-of-scope" : "unsupported", base,
               tests[t], *why ? ": " : "", why);
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
    size_t scope = count[PASS] + count[FAIL] + count[UNSUPPORTED];
    printf("%s: %zu pass, %zu fail, %zu unsupported, %zu out of scope (of %zu); %.1f%% of the %zu in scope pass\n", base,
           count[PASS], count[FAIL], count[UNSUPPORTED], count[OUT], n, scope ? 100.0 * (double)count[PASS] / (double)scope : 0.0,
           scope);
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

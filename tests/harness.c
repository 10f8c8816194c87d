#include <math.h>
#include <string.h>
#include "harness.h"

uint64_t trng_next(trng *r) {
  uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
int64_t trng_int(trng *r, int64_t lo, int64_t hi) { return lo + (int64_t)(trng_next(r) % (uint64_t)(hi - lo + 1)); }
double trng_real(trng *r, double lo, double hi) { return lo + (hi - lo) * ((double)(trng_next(r) >> 11) * 0x1.0p-53); }
int64_t trng_pick(trng *r, const int64_t *vals, int n) { return vals[trng_int(r, 0, n - 1)]; }

kiln_tensor *random_tensor(trng *r, kiln_dtype t, int rank, const int64_t *dims, double lo, double hi) {
  kiln_tensor *x = kiln_tensor_new(t, rank, dims);
  assert_non_null(x);
  void *d = kiln_tensor_data(x);
  for (int64_t i = 0; i < kiln_tensor_numel(x); i++) {
    switch (t) {
    case KILN_F32: ((float *)d)[i] = (float)trng_real(r, lo, hi); break;
    case KILN_F64: ((double *)d)[i] = trng_real(r, lo, hi); break;
    case KILN_I32: ((int32_t *)d)[i] = (int32_t)trng_int(r, (int64_t)lo, (int64_t)hi); break;
    case KILN_I64: ((int64_t *)d)[i] = trng_int(r, (int64_t)lo, (int64_t)hi); break;
    default: ((uint8_t *)d)[i] = (uint8_t)trng_int(r, 0, 1); break;
    }
  }
  return x;
}

static double elem(const kiln_tensor *t, int64_t i) {
  const void *d = kiln_tensor_cdata(t);
  switch (kiln_tensor_dtype(t)) {
  case KILN_F32: return ((const float *)d)[i];
  case KILN_F64: return ((const double *)d)[i];
  case KILN_I32: return ((const int32_t *)d)[i];
  case KILN_I64: return (double)((const int64_t *)d)[i];
  default: return ((const uint8_t *)d)[i];
  }
}

int compare_tensors(const char *what, const kiln_tensor *got, const kiln_tensor *want, double rtol, double atol) {
  if (kiln_tensor_dtype(got) != kiln_tensor_dtype(want) || kiln_tensor_rank(got) != kiln_tensor_rank(want) ||
      memcmp(kiln_tensor_dims(got), kiln_tensor_dims(want), sizeof(int64_t) * (size_t)kiln_tensor_rank(got))) {
    printf("%s: type or shape differs\n", what);
    return 1;
  }
  bool exact = !kiln_dtype_is_float(kiln_tensor_dtype(want));
  if (exact && kiln_tensor_dtype(want) == KILN_I64) {
    if (memcmp(kiln_tensor_cdata(got), kiln_tensor_cdata(want), kiln_tensor_nbytes(want))) {
      printf("%s: i64 values differ\n", what);
      return 1;
    }
    return 0;
  }
  for (int64_t i = 0; i < kiln_tensor_numel(want); i++) {
    double a = elem(got, i), b = elem(want, i);
    if (isnan(a) && isnan(b)) continue;
    if (a == b) continue;
    if (exact || !(fabs(a - b) <= atol + rtol * fabs(b))) {
      printf("%s: element %lld: got %.9g, want %.9g (rtol %g, atol %g)\n", what, (long long)i, a, b, rtol, atol);
      return 1;
    }
  }
  return 0;
}

int check_graph(const char *what, const kiln_graph *g, kiln_tensor **inputs, size_t nin, double rtol, double atol) {
  size_t nout = g->noutputs;
  kiln_tensor *ref[8] = {0}, *jit[8] = {0};
  assert_true(nout <= 8);
  if (kiln_evaluate(g, (const kiln_tensor *const *)inputs, nin, ref, nout) != KILN_OK) {
    printf("%s: reference failed: %s\n", what, kiln_errmsg());
    return 1;
  }
  kiln_exec *e = NULL;
  if (kiln_compile(g, NULL, &e) != KILN_OK || kiln_exec_run(e, (const kiln_tensor *const *)inputs, nin, jit, nout) != KILN_OK) {
    printf("%s: JIT failed: %s\n", what, kiln_errmsg());
    kiln_exec_free(e);
    for (size_t i = 0; i < nout; i++) kiln_tensor_free(ref[i]);
    return 1;
  }
  int bad = 0;
  for (size_t i = 0; i < nout; i++) {
    bad |= compare_tensors(what, jit[i], ref[i], rtol, atol);
    kiln_tensor_free(ref[i]);
    kiln_tensor_free(jit[i]);
  }
  kiln_exec_free(e);
  return bad;
}

char *model_summary_text(kiln_model *m) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  assert_non_null(f);
  assert_int_equal(kiln_model_summary(m, f), KILN_OK);
  fclose(f);
  return buf;
}

char *read_text_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) fail_msg("cannot open %s", path);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *s = malloc((size_t)n + 1);
  assert_non_null(s);
  assert_int_equal(fread(s, 1, (size_t)n, f), (size_t)n);
  s[n] = 0;
  fclose(f);
  return s;
}

/* Differential testing of the optimizing pipeline: random graphs built from the op
 * table's element-wise, broadcast, reduction, movement and matmul ops (seeded; with
 * the patterns the simplifier rewrites) are compiled with every pass (folding,
 * simplification, fusion, memory planning) and compared with the reference
 * evaluator, and with the same graph compiled with all passes off.
 * Values are kept O(1) (sums and matmuls scaled, sin of tanh) so that a difference
 * means a wrong kernel, not an ill-conditioned composition amplifying rounding.
 *   KILN_FUZZ_GRAPHS=N  graphs to run (default 2000; README has the long run)
 *   KILN_FUZZ_SEED=S    first seed (default 1) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "harness.h"

#define POOL 32

typedef struct gen {
  trng r;
  kiln_graph *g;
  kiln_value pool[POOL];
  int n;
  kiln_tensor *inputs[4];
  int nin;
} gen;

static kiln_shape shape(gen *s, kiln_value v) { return kiln_value_shape(s->g, v); }
static kiln_value pick(gen *s) { return s->pool[trng_int(&s->r, 0, s->n - 1)]; }
static void push(gen *s, kiln_value v) {
  if (s->n < POOL) s->pool[s->n++] = v;
  else s->pool[trng_int(&s->r, 0, POOL - 1)] = v;
}

static kiln_value input(gen *s, int rank, const int64_t *dims) {
  char name[16];
  snprintf(name, sizeof name, "in%d", s->nin);
  kiln_shape sh = {.rank = rank};
  memcpy(sh.dims, dims, sizeof(int64_t) * (size_t)rank);
  s->inputs[s->nin++] = random_tensor(&s->r, KILN_F32, rank, dims, -2, 2);
  return kiln_placeholder(s->g, name, KILN_F32, sh);
}

/* A value of the same shape as v from the pool, or v itself. */
static kiln_value partner(gen *s, kiln_value v) {
  kiln_shape a = shape(s, v);
  for (int tries = 0; tries < 8; tries++) {
    kiln_value w = pick(s);
    kiln_shape b = shape(s, w);
    if (b.rank == a.rank && !memcmp(a.dims, b.dims, sizeof(int64_t) * (size_t)a.rank)) return w;
  }
  return v;
}

static kiln_value unary(gen *s, kiln_value x) {
  kiln_graph *g = s->g;
  switch (trng_int(&s->r, 0, 12)) {
  case 0: return kiln_neg(g, x);
  case 1: return kiln_abs(g, x);
  case 2: return kiln_exp(g, kiln_neg(g, kiln_abs(g, x))); /* bounded */
  case 3: return kiln_tanh(g, x);
  case 4: return kiln_sigmoid(g, x);
  case 5: return kiln_relu(g, x);
  case 6: return kiln_sqrt(g, kiln_add(g, kiln_abs(g, x), kiln_scalar(g, KILN_F32, 0.5)));
  case 7: return kiln_sin(g, kiln_tanh(g, x)); /* sin of large values only amplifies rounding */
  case 8: return kiln_log(g, kiln_add(g, kiln_mul(g, x, x), kiln_scalar(g, KILN_F32, 1)));
  /* what the simplifier rewrites: it must not change values */
  case 9: return kiln_neg(g, kiln_neg(g, x));
  case 10: return kiln_mul(g, kiln_add(g, x, kiln_scalar(g, KILN_F32, 0)), kiln_scalar(g, KILN_F32, 1));
  case 11: return kiln_log(g, kiln_exp(g, kiln_tanh(g, x)));
  default: {
    kiln_shape sh = shape(s, x);
    if (sh.rank != 2) return kiln_reshape(g, kiln_reshape(g, x, KILN_SHAPE(1, -1)), sh);
    kiln_value t = kiln_transpose(g, kiln_transpose(g, x, (int64_t[]){1, 0}, 2), (int64_t[]){1, 0}, 2);
    return kiln_reshape(g, kiln_reshape(g, t, KILN_SHAPE(sh.dims[0] * sh.dims[1])), sh);
  }
  }
}

static kiln_value binary(gen *s, kiln_value a) {
  kiln_graph *g = s->g;
  kiln_shape sh = shape(s, a);
  kiln_value b;
  switch (trng_int(&s->r, 0, 3)) {
  case 0: b = kiln_scalar(g, KILN_F32, trng_real(&s->r, -1.5, 1.5)); break;
  case 1: { /* a row or column vector, broadcast */
    kiln_shape v = sh;
    if (sh.rank == 2) v.dims[trng_int(&s->r, 0, 1)] = 1;
    b = kiln_tanh(g, kiln_reduce_mean(g, partner(s, a), sh.rank == 2 ? (int64_t[]){v.dims[0] == 1 ? 0 : 1} : NULL,
                                      sh.rank == 2 ? 1 : 0, sh.rank == 2));
    if (sh.rank != 2) b = kiln_broadcast_to(g, b, sh);
    break;
  }
  default: b = partner(s, a);
  }
  switch (trng_int(&s->r, 0, 5)) {
  case 0: return kiln_add(g, a, b);
  case 1: return kiln_sub(g, a, b);
  case 2: return kiln_mul(g, a, b);
  case 3: return kiln_div(g, a, kiln_add(g, kiln_abs(g, b), kiln_scalar(g, KILN_F32, 1)));
  case 4: return kiln_maximum(g, a, b);
  default: return kiln_select(g, kiln_greater(g, a, b), a, b); /* continuous where a == b: rounding cannot flip it far */
  }
}

static kiln_value structural(gen *s, kiln_value x) {
  kiln_graph *g = s->g;
  kiln_shape sh = shape(s, x);
  if (sh.rank != 2) return kiln_reshape(g, x, KILN_SHAPE(sh.dims[0], 1));
  int64_t ax = trng_int(&s->r, 0, 1);
  switch (trng_int(&s->r, 0, 7)) {
  case 0: /* scaled by 1/n: values stay O(1), so comparisons are about the ops, not conditioning */
    return kiln_mul(g, kiln_reduce_sum(g, x, &ax, 1, trng_int(&s->r, 0, 1)), kiln_scalar(g, KILN_F32, 1.0 / (double)sh.dims[ax]));
  case 1: return kiln_reduce_max(g, x, &ax, 1, true);
  case 2: return kiln_softmax(g, x, (int)ax);
  case 3: return kiln_transpose(g, x, (int64_t[]){1, 0}, 2);
  case 4: return kiln_reshape(g, x, KILN_SHAPE(sh.dims[0] * sh.dims[1]));
  case 5: {
    int64_t lo = trng_int(&s->r, 0, sh.dims[ax] - 1), hi = trng_int(&s->r, lo + 1, sh.dims[ax]);
    int64_t st[2] = {0, 0}, en[2] = {sh.dims[0], sh.dims[1]}, sp[2] = {1, 1};
    st[ax] = lo, en[ax] = hi;
    return kiln_slice(g, x, st, en, sp, 2);
  }
  case 6: return kiln_concat(g, (kiln_value[]){x, partner(s, x)}, 2, (int)ax);
  default: { /* matmul with a fresh weight */
    int64_t k = sh.dims[1], m = trng_int(&s->r, 1, 24);
    kiln_value w = input(s, 2, (int64_t[]){k, m});
    return kiln_mul(g, kiln_matmul(g, x, w, false, false), kiln_scalar(g, KILN_F32, 1.0 / (double)k));
  }
  }
}

/* Graph number `seed`: 1-2 inputs, 3-14 random steps, 1-3 outputs. */
static void build(gen *s, uint64_t seed) {
  memset(s, 0, sizeof *s);
  s->r.s = seed * 0x9E3779B97F4A7C15ull + 1;
  s->g = kiln_graph_new();
  int64_t dims[2] = {trng_int(&s->r, 1, 33), trng_int(&s->r, 1, 40)};
  push(s, input(s, 2, dims));
  if (trng_int(&s->r, 0, 1)) push(s, input(s, 2, dims));
  int steps = (int)trng_int(&s->r, 3, 14);
  for (int i = 0; i < steps && s->nin < 4; i++) {
    kiln_value x = pick(s);
    int64_t kind = trng_int(&s->r, 0, 9);
    push(s, kind < 4 ? unary(s, x) : kind < 7 ? binary(s, x) : structural(s, x));
  }
  int outs = (int)trng_int(&s->r, 1, 3);
  kiln_output(s->g, "out0", s->pool[s->n - 1]);
  for (int i = 1; i < outs; i++) {
    char name[16];
    snprintf(name, sizeof name, "out%d", i);
    kiln_output(s->g, name, pick(s));
  }
}

/* The optimized build against the unoptimized one (passes off). */
static int compare_pipelines(gen *s, const char *what) {
  kiln_compile_options off = {.disable_passes = "fold,simplify,layout,fuse,memory-plan"};
  kiln_exec *a = NULL, *b = NULL;
  kiln_tensor *ya[8] = {0}, *yb[8] = {0};
  size_t nout = s->g->noutputs;
  int bad = kiln_compile(s->g, NULL, &a) != KILN_OK || kiln_compile(s->g, &off, &b) != KILN_OK ||
            kiln_exec_run(a, (const kiln_tensor *const *)s->inputs, (size_t)s->nin, ya, nout) != KILN_OK ||
            kiln_exec_run(b, (const kiln_tensor *const *)s->inputs, (size_t)s->nin, yb, nout) != KILN_OK;
  if (bad) printf("%s: %s\n", what, kiln_errmsg());
  for (size_t i = 0; i < nout && !bad; i++) bad |= compare_tensors(what, ya[i], yb[i], 1e-5, 1e-5);
  for (size_t i = 0; i < nout; i++) kiln_tensor_free(ya[i]), kiln_tensor_free(yb[i]);
  kiln_exec_free(a), kiln_exec_free(b);
  return bad;
}

static void test_random_graphs(void **state) {
  (void)state;
  const char *n_env = getenv("KILN_FUZZ_GRAPHS"), *s_env = getenv("KILN_FUZZ_SEED");
  long count = n_env ? atol(n_env) : 2000;
  uint64_t first = s_env ? strtoull(s_env, NULL, 10) : 1;
  int failures = 0;
  for (long i = 0; i < count; i++) {
    gen s;
    uint64_t seed = first + (uint64_t)i;
    build(&s, seed);
    char what[64];
    snprintf(what, sizeof what, "graph seed %llu", (unsigned long long)seed);
    if (kiln_graph_status(s.g) != KILN_OK) fail_msg("%s: the generator built a bad graph: %s", what, kiln_graph_errmsg(s.g));
    int bad = check_graph(what, s.g, s.inputs, (size_t)s.nin, 1e-4, 1e-5);
    /* every fourth graph also against the build without the passes */
    if (!bad && i % 4 == 0) bad = compare_pipelines(&s, what);
    if (bad) {
      char *text;
      if (kiln_graph_to_text(s.g, &text) == KILN_OK) printf("%s", text), free(text);
      failures++;
    }
    for (int j = 0; j < s.nin; j++) kiln_tensor_free(s.inputs[j]);
    kiln_graph_free(s.g);
    if (failures >= 3) break;
  }
  if (failures) fail_msg("%d random graphs differ (seeds printed above)", failures);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_random_graphs)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}

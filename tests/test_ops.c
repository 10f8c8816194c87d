/* Every op in ir/ops.def, on random shapes (odd sizes, size-1 and broadcast dims,
 * empty tensors) and every dtype it accepts: the JIT must match the reference
 * evaluator within the op's stated tolerance, and each random graph must survive
 * a text round trip unchanged. test_every_op_has_a_case walks the op table, so a
 * new op without a test case fails here. */
#include <string.h>
#include "op_cases.h"

static void test_every_op_has_a_case(void **state) {
  int missing = 0;
  for (int op = 0; op < KILN_OP_COUNT; op++)
    if (!CASES[op].build) {
      printf("op '%s' has no test case in tests/test_ops.c\n", kiln_ops[op].name);
      missing++;
    }
  assert_int_equal(missing, 0);
}

/* Counts how often the built graph really contains the op, so a builder that
 * silently folds the op away cannot pass for a test. */
static bool graph_has_op(const kiln_graph *g, kiln_op op) {
  for (uint32_t i = 0; i < g->nnodes; i++)
    if (g->nodes[i].op == op) return true;
  return false;
}

static int run_op(kiln_op op, uint64_t seed, int rounds) {
  const op_case *oc = &CASES[op];
  int failures = 0, covered = 0;
  trng r = {seed * 7919 + (uint64_t)op};
  for (int t = 0; t < KILN_DTYPE_COUNT; t++) {
    if (!(oc->dtypes & (1u << t))) continue;
    for (int k = 0; k < rounds; k++) {
      tc c = {.g = kiln_graph_new(), .r = &r, .t = (kiln_dtype)t};
      kiln_value y = oc->build(&c, op);
      if (kiln_graph_status(c.g) != KILN_OK) {
        printf("%s/%s round %d: build failed: %s\n", kiln_ops[op].name, kiln_dtype_name(c.t), k, kiln_graph_errmsg(c.g));
        failures++;
      } else {
        kiln_output(c.g, "y", y);
        covered += graph_has_op(c.g, op);
        char what[96];
        snprintf(what, sizeof what, "%s/%s round %d", kiln_ops[op].name, kiln_dtype_name(c.t), k);
        bool f64 = t == KILN_F64;
        bool ew = kiln_ops[op].flags & (EW | SRC | MOV);
        double rtol = f64 ? (ew ? 1e-12 : 1e-10) : oc->rtol, atol = f64 ? (ew ? 1e-12 : 1e-10) : oc->atol;
        failures += check_graph(what, c.g, c.in, (size_t)c.nin, rtol, atol);
        /* Text round trip: print, parse, print again must give the same text. */
        char *t1 = NULL, *t2 = NULL;
        kiln_graph *p = NULL;
        assert_int_equal(kiln_graph_to_text(c.g, &t1), KILN_OK);
        if (kiln_graph_parse(t1, &p) != KILN_OK) {
          printf("%s: parse failed: %s\n%s", what, kiln_errmsg(), t1);
          failures++;
        } else {
          assert_int_equal(kiln_graph_to_text(p, &t2), KILN_OK);
          if (strcmp(t1, t2)) {
            printf("%s: text round trip differs:\n%s---\n%s", what, t1, t2);
            failures++;
          }
        }
        free(t1);
        free(t2);
        kiln_graph_free(p);
      }
      for (int i = 0; i < c.nin; i++) kiln_tensor_free(c.in[i]);
      kiln_graph_free(c.g);
    }
  }
  if (!covered) {
    printf("%s: no generated graph contained the op\n", kiln_ops[op].name);
    failures++;
  }
  return failures;
}

/* KILN_TEST_SEEDS=N runs seeds 1..N (the suite runs seed 1; longer sweeps on demand). */
static void test_all_ops_jit_vs_reference(void **state) {
  int failures = 0, seeds = getenv("KILN_TEST_SEEDS") ? atoi(getenv("KILN_TEST_SEEDS")) : 1;
  for (int seed = 1; seed <= seeds; seed++)
    for (int op = 0; op < KILN_OP_COUNT; op++) {
      if (!CASES[op].build) continue;
      int f = run_op((kiln_op)op, (uint64_t)seed, 12);
      if (f) printf("op %s, seed %d: %d failures\n", kiln_ops[op].name, seed, f);
      failures += f;
    }
  assert_int_equal(failures, 0);
}

/* README's op table must stay true: every op of ir/ops.def is listed. */
static void test_readme_lists_every_op(void **state) {
  char *text = read_text_file("../README.md");
  int missing = 0;
  for (int op = 0; op < KILN_OP_COUNT; op++) {
    char cell[64];
    snprintf(cell, sizeof cell, "| `%s` |", kiln_ops[op].name);
    if (!strstr(text, cell)) printf("README.md does not list op '%s'\n", kiln_ops[op].name), missing++;
  }
  free(text);
  assert_int_equal(missing, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_every_op_has_a_case),
      cmocka_unit_test(test_readme_lists_every_op),
      cmocka_unit_test(test_all_ops_jit_vs_reference),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

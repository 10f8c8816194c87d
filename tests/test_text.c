/* The text format: golden files parse, verify and print back byte for byte, and
 * a parsed graph computes what its text says. (Every op's round trip is in test_ops.) */
#include <string.h>
#include "harness.h"

static void test_golden_round_trip(void **s) {
  const char *files[] = {"golden/mlp.kir"};
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
    kiln_graph *g;
    if (kiln_graph_load(files[i], &g) != KILN_OK) fail_msg("%s", kiln_errmsg());
    assert_int_equal(kiln_graph_verify(g), KILN_OK);
    char *text, *want = read_text_file(files[i]);
    assert_int_equal(kiln_graph_to_text(g, &text), KILN_OK);
    assert_string_equal(text, want);
    free(text);
    free(want);
    kiln_graph_free(g);
  }
}

static void test_parsed_graph_runs(void **s) {
  kiln_graph *g;
  assert_int_equal(kiln_graph_load("golden/mlp.kir", &g), KILN_OK);
  float xs[6] = {1, 2, 3, -1, 0.5f, 4};
  kiln_tensor *x = kiln_tensor_from_data(KILN_F32, 2, (int64_t[]){2, 3}, xs, sizeof xs);
  kiln_tensor *out[2];
  kiln_exec *e;
  assert_int_equal(kiln_compile(g, NULL, &e), KILN_OK);
  assert_int_equal(kiln_exec_run(e, (const kiln_tensor *[]){x}, 1, out, 2), KILN_OK);
  /* relu([1,2,3] W + b) = [0, 2.75]; relu([-1,.5,4] W + b) = [0, 2] (worked by hand) */
  const float *y = kiln_tensor_cdata(out[0]), *t = kiln_tensor_cdata(out[1]);
  assert_true(y[0] == 0 && y[1] == 2.75f && y[2] == 0 && y[3] == 2);
  assert_true(t[0] == 2.75f && t[1] == 2);
  kiln_tensor_free(out[0]), kiln_tensor_free(out[1]), kiln_tensor_free(x);
  kiln_exec_free(e);
  kiln_graph_free(g);
}

static void test_comments_and_dedup(void **s) {
  const char *text = "kiln 1  # header\n\n%5 = param \"a\" {dtype=f64, shape=[2]}\n"
                     "%6 = exp %5\n%7 = exp %5   # same node: deduplicated\nout \"y\" = %7\n";
  kiln_graph *g;
  if (kiln_graph_parse(text, &g) != KILN_OK) fail_msg("%s", kiln_errmsg());
  char *out;
  assert_int_equal(kiln_graph_to_text(g, &out), KILN_OK);
  assert_string_equal(out, "kiln 1\n%0 = param \"a\" {dtype=f64, shape=[2]} : f64[2]\n%1 = exp %0 : f64[2]\nout \"y\" = %1\n");
  free(out);
  kiln_graph_free(g);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_golden_round_trip),
      cmocka_unit_test(test_parsed_graph_runs),
      cmocka_unit_test(test_comments_and_dedup),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

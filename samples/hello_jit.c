/* The smallest complete kiln program: build y = relu(x @ w + b), JIT-compile it,
 * run it on a batch of two rows, and print the result next to the reference
 * evaluator's. */
#include <kiln/kiln.h>
#include <stdio.h>

int main(void) {
  static const float w[3 * 2] = {1, -1, 0.5f, 2, -2, 0.25f}, b[2] = {0.5f, -1};
  kiln_graph *g = kiln_graph_new();
  kiln_value x = kiln_placeholder(g, "x", KILN_F32, KILN_SHAPE(KILN_DYN, 3));
  kiln_value h = kiln_matmul(g, x, kiln_constant(g, KILN_F32, KILN_SHAPE(3, 2), w), false, false);
  kiln_value y = kiln_relu(g, kiln_add(g, h, kiln_constant(g, KILN_F32, KILN_SHAPE(2), b)));
  kiln_output(g, "y", y);

  kiln_exec *exec;
  if (kiln_compile(g, NULL, &exec) != KILN_OK) {
    fprintf(stderr, "compile failed: %s\n", kiln_errmsg());
    return 1;
  }
  const float xs[2 * 3] = {1, 2, 3, -1, 0.5f, 4};
  kiln_tensor *in = kiln_tensor_from_data(KILN_F32, 2, (int64_t[]){2, 3}, xs, sizeof xs), *out, *ref;
  if (kiln_exec_run(exec, (const kiln_tensor *[]){in}, 1, &out, 1) != KILN_OK ||
      kiln_evaluate(g, (const kiln_tensor *[]){in}, 1, &ref, 1) != KILN_OK) {
    fprintf(stderr, "run failed: %s\n", kiln_errmsg());
    return 1;
  }
  const float *o = kiln_tensor_cdata(out), *r = kiln_tensor_cdata(ref);
  for (int i = 0; i < 2; i++) printf("y[%d] = [%g, %g]   (reference [%g, %g])\n", i, o[2 * i], o[2 * i + 1], r[2 * i], r[2 * i + 1]);
  kiln_tensor_free(in);
  kiln_tensor_free(out);
  kiln_tensor_free(ref);
  kiln_exec_free(exec);
  kiln_graph_free(g);
  return 0;
}

#include <kiln/kiln.h>
#include <stdio.h>

int main(void) {
  kiln_graph *g = kiln_graph_new();                     /* owns every node */
  kiln_value x = kiln_placeholder(g, "x", KILN_F32, KILN_SHAPE(KILN_DYN, 4));
  kiln_value w = kiln_random_normal(g, KILN_F32, KILN_SHAPE(4, 3), /*seed*/ 1, 0, 0.5);
  kiln_value y = kiln_softmax(g, kiln_matmul(g, x, w, false, false), -1);
  kiln_output(g, "probs", y);

  kiln_exec *e;                                         /* JIT: LLVM O3 for this CPU */
  if (kiln_compile(g, NULL, &e) != KILN_OK) { fprintf(stderr, "%s\n", kiln_errmsg()); return 1; }
  float data[2 * 4] = {1, 2, 3, 4, -1, 0, 1, 0};
  kiln_tensor *in = kiln_tensor_from_data(KILN_F32, 2, (int64_t[]){2, 4}, data, sizeof data), *out;
  if (kiln_exec_run(e, (const kiln_tensor *[]){in}, 1, &out, 1) != KILN_OK) { fprintf(stderr, "%s\n", kiln_errmsg()); return 1; }
  const float *p = kiln_tensor_cdata(out);
  printf("%.3f %.3f %.3f\n%.3f %.3f %.3f\n", p[0], p[1], p[2], p[3], p[4], p[5]);
  kiln_tensor_free(in); kiln_tensor_free(out); kiln_exec_free(e); kiln_graph_free(g);
  return 0;
}

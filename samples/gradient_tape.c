/* GradientTape's first example: y = x^2 at x = 3, and dy/dx = 6.
 *   x = tf.Variable(3.)
 *   with tf.GradientTape() as tape: y = tf.square(x)
 *   y_grad = tape.gradient(y, x) */
#include <kiln/kiln.h>
#include <stdio.h>

int main(void) {
  kiln_variables *vars = kiln_variables_new(0);
  kiln_variable *x;
  if (kiln_variable_new(vars, "x", KILN_F32, KILN_SCALAR, KILN_CONSTANT(3), true, &x) != KILN_OK) return 1;
  kiln_graph *g = kiln_graph_new();
  kiln_value xv = kiln_variable_read(g, x);
  kiln_value y = kiln_square(g, xv), dy_dx;
  if (kiln_gradients(g, y, &xv, 1, &dy_dx) != KILN_OK) {
    fprintf(stderr, "gradient_tape: %s\n", kiln_errmsg());
    return 1;
  }
  kiln_output(g, "y", y);
  kiln_output(g, "y_grad", dy_dx);
  kiln_exec *e;
  kiln_tensor *out[2];
  if (kiln_compile(g, NULL, &e) != KILN_OK || kiln_exec_run(e, NULL, 0, out, 2) != KILN_OK) {
    fprintf(stderr, "gradient_tape: %s\n", kiln_errmsg());
    return 1;
  }
  printf("y = %g, y_grad = %g\n", *(float *)kiln_tensor_data(out[0]), *(float *)kiln_tensor_data(out[1]));
  kiln_tensor_free(out[0]);
  kiln_tensor_free(out[1]);
  kiln_exec_free(e);
  kiln_graph_free(g);
  kiln_variables_free(vars);
  return 0;
}

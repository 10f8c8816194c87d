/* The TensorFlow tutorial's linear regression, trained from C: fit y = a*X + b to
 * house prices of 2013-2017 (both normalized to [0, 1]) by SGD with learning rate
 * 1e-3 on loss = 0.5 * sum((a*X + b - y)^2), 10000 steps. The step (forward,
 * gradient, SGD update) is one compiled function, traced once.
 * TensorFlow prints a = 0.97637, b = 0.057565. */
#include <kiln/kiln.h>
#include <stdio.h>

typedef struct model {
  kiln_variable *a, *b;
  kiln_optimizer *sgd;
} model;

static void train_step(kiln_graph *g, const kiln_value *in, size_t nin, void *userdata) {
  model *m = userdata;
  kiln_value a = kiln_variable_read(g, m->a), b = kiln_variable_read(g, m->b);
  kiln_value y_pred = kiln_add(g, kiln_mul(g, a, in[0]), b);
  kiln_value loss = kiln_mul(g, kiln_scalar(g, KILN_F32, 0.5),
                             kiln_reduce_sum(g, kiln_square(g, kiln_sub(g, y_pred, in[1])), NULL, 0, false));
  kiln_value params[2] = {a, b}, grads[2];
  kiln_gradients(g, loss, params, 2, grads);                  /* tape.gradient(loss, variables) */
  kiln_optimizer_apply(m->sgd, g, (kiln_variable *[]){m->a, m->b}, grads, 2); /* apply_gradients */
  kiln_output(g, "loss", loss);
}

static int fail(void) {
  fprintf(stderr, "linear_regression: %s\n", kiln_errmsg());
  return 1;
}

int main(void) {
  float x_raw[5] = {2013, 2014, 2015, 2016, 2017}, y_raw[5] = {12000, 14000, 15000, 16500, 17500}, x[5], y[5];
  for (int i = 0; i < 5; i++) {
    x[i] = (x_raw[i] - 2013) / (2017 - 2013);
    y[i] = (y_raw[i] - 12000) / (17500 - 12000);
  }
  kiln_variables *vars = kiln_variables_new(0);
  model m;
  kiln_optimizer_config sgd = kiln_optimizer_defaults(KILN_OPT_SGD);
  sgd.learning_rate = 1e-3;
  if (kiln_variable_new(vars, "a", KILN_F32, KILN_SCALAR, KILN_ZEROS, true, &m.a) != KILN_OK ||
      kiln_variable_new(vars, "b", KILN_F32, KILN_SCALAR, KILN_ZEROS, true, &m.b) != KILN_OK ||
      kiln_optimizer_new(&sgd, "sgd", &m.sgd) != KILN_OK)
    return fail();
  kiln_tensor *xt = kiln_tensor_from_data(KILN_F32, 1, (int64_t[]){5}, x, sizeof x);
  kiln_tensor *yt = kiln_tensor_from_data(KILN_F32, 1, (int64_t[]){5}, y, sizeof y);
  kiln_function *step = kiln_function_new(train_step, &m, NULL);
  for (int e = 0; e < 10000; e++) {
    kiln_tensor *loss;
    if (kiln_function_call(step, (const kiln_tensor *[]){xt, yt}, 2, &loss, 1) != KILN_OK) return fail();
    kiln_tensor_free(loss);
  }
  printf("a = %.5f, b = %.6f (traced %zu time)\n", *(float *)kiln_tensor_data(kiln_variable_value(m.a)),
         *(float *)kiln_tensor_data(kiln_variable_value(m.b)), kiln_function_trace_count(step));
  kiln_function_free(step);
  kiln_tensor_free(xt);
  kiln_tensor_free(yt);
  kiln_optimizer_free(m.sgd);
  kiln_variables_free(vars);
  return 0;
}

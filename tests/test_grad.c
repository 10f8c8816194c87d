/* Reverse-mode autodiff. For every differentiable op of ir/ops.def (walked from
 * the table, so a new op cannot skip it) and random f64 graphs from op_cases —
 * broadcasting, strides, padding, groups, repeated gather indices — the gradient
 * of L = sum(op(x) * R) must match central finite differences of L along random
 * directions, input by input, and the JIT must agree with the reference
 * evaluator on the gradient graph. Further tests: error messages for
 * non-differentiable paths, zero gradients for unconnected inputs, second
 * derivatives, and a symbolic batch dim. */
#include <math.h>
#include <string.h>
#include "frontend/grad.h"
#include "op_cases.h"

static void test_diff_flag_matches_rules(void **state) {
  int bad = 0;
  for (int op = 0; op < KILN_OP_COUNT; op++) {
    bool diff = kiln_ops[op].flags & DIFF, rule = kiln_grad_rules[op] != NULL;
    if (diff != rule) printf("op %s: DIFF flag %d but gradient rule %d\n", kiln_ops[op].name, diff, rule), bad++;
  }
  assert_int_equal(bad, 0);
}

/* Cast's gradient is checked through f64 -> f32 -> f64, where only a large step beats f32 rounding. */
static kiln_value b_cast_roundtrip(tc *c, kiln_op op) {
  int64_t d[3] = {trng_int(c->r, 1, 9), trng_int(c->r, 1, 9), 3};
  kiln_tensor *t = random_tensor(c->r, KILN_F64, 3, d, -5, 5);
  c->in[c->nin++] = t;
  kiln_value x = kiln_placeholder(c->g, "in0", KILN_F64, (kiln_shape){3, {d[0], d[1], d[2]}});
  return kiln_cast(c->g, kiln_cast(c->g, x, KILN_F32), KILN_F64);
}

static double eval_loss(kiln_graph *g, kiln_tensor **in, int nin) {
  kiln_tensor *out[8] = {0};
  size_t nout = g->noutputs;
  assert_int_equal(kiln_evaluate(g, (const kiln_tensor *const *)in, (size_t)nin, out, nout), KILN_OK);
  double l = *(const double *)kiln_tensor_cdata(out[0]);
  for (size_t i = 0; i < nout; i++) kiln_tensor_free(out[i]);
  return l;
}

static double dot_dir(const kiln_tensor *grad, const double *v, double *scale) {
  const double *gd = kiln_tensor_cdata(grad);
  double s = 0;
  for (int64_t i = 0; i < kiln_tensor_numel(grad); i++) s += gd[i] * v[i], *scale += fabs(gd[i] * v[i]);
  return s;
}

/* Checks one random graph; returns the number of failures. */
static int gradcheck(kiln_op op, trng *r, int round) {
  build_fn build = op == KILN_OP_CAST ? b_cast_roundtrip : CASES[op].build;
  double h = op == KILN_OP_CAST ? 0.1 : 1e-6, rtol = op == KILN_OP_CAST ? 1e-3 : 1e-6;
  tc c = {.g = kiln_graph_new(), .r = r, .t = KILN_F64};
  kiln_graph *g = c.g;
  kiln_value y = build(&c, op);
  char what[96];
  snprintf(what, sizeof what, "grad %s round %d", kiln_ops[op].name, round);
  int fails = 0;
  if (kiln_graph_status(g) != KILN_OK) {
    printf("%s: build failed: %s\n", what, kiln_graph_errmsg(g));
    fails = 1;
    goto out;
  }
  /* L = sum(y * R): a random weighting so every output element matters differently. */
  kiln_shape ys = kiln_value_shape(g, y);
  kiln_tensor *rt = random_tensor(r, KILN_F64, ys.rank, ys.dims, -1, 1);
  kiln_value loss = kiln_reduce_sum(g, kiln_mul(g, y, kiln_constant(g, KILN_F64, ys, kiln_tensor_cdata(rt))), NULL, 0, false);
  kiln_tensor_free(rt);
  kiln_value wrt[8], grads[8];
  int nw = 0, which[8];
  for (uint32_t i = 0, k = 0; i < g->nnodes; i++)
    if (g->nodes[i].op == KILN_OP_PARAM) {
      /* max_pool2d_grad is piecewise constant in x (its first input): only dy is checked */
      bool flows = !(op == KILN_OP_MAX_POOL2D_GRAD && k == 0);
      if (g->nodes[i].dtype == KILN_F64 && flows) which[nw] = (int)k, wrt[nw++] = (kiln_value){i};
      k++;
    }
  kiln_output(g, "loss", loss);
  if (kiln_gradients(g, loss, wrt, (size_t)nw, grads) != KILN_OK) {
    printf("%s: gradients failed: %s\n", what, kiln_errmsg());
    fails = 1;
    goto out;
  }
  for (int i = 0; i < nw; i++) {
    char name[16];
    snprintf(name, sizeof name, "d%d", i);
    kiln_output(g, name, grads[i]);
  }
  assert_int_equal(kiln_graph_status(g), KILN_OK);
  fails += check_graph(what, g, c.in, (size_t)c.nin, 1e-10, 1e-10);

  kiln_tensor *out[8] = {0};
  assert_int_equal(kiln_evaluate(g, (const kiln_tensor *const *)c.in, (size_t)c.nin, out, g->noutputs), KILN_OK);
  /* The mean over an empty axis is NaN, and so is every difference of it. */
  bool finite = isfinite(*(const double *)kiln_tensor_cdata(out[0]));
  for (int w = 0; w < nw && finite; w++) {
    kiln_tensor *x = c.in[which[w]];
    int64_t n = kiln_tensor_numel(x);
    double *x0 = malloc(sizeof(double) * (size_t)(n + 1)), *v = malloc(sizeof(double) * (size_t)(n + 1));
    double *xd = kiln_tensor_data(x);
    memcpy(x0, xd, sizeof(double) * (size_t)n);
    for (int dir = 0; dir < 2; dir++) {
      for (int64_t i = 0; i < n; i++) v[i] = trng_int(r, 0, 1) ? 1 : -1;
      for (int64_t i = 0; i < n; i++) xd[i] = x0[i] + h * v[i];
      double lp = eval_loss(g, c.in, c.nin);
      for (int64_t i = 0; i < n; i++) xd[i] = x0[i] - h * v[i];
      double lm = eval_loss(g, c.in, c.nin);
      memcpy(xd, x0, sizeof(double) * (size_t)n);
      double scale = 0, an = dot_dir(out[1 + w], v, &scale), fd = (lp - lm) / (2 * h);
      if (!(fabs(fd - an) <= rtol * scale + 1e-9)) {
        printf("%s: input %d direction %d: analytic %.12g, finite difference %.12g (scale %.3g)\n", what, which[w], dir,
               an, fd, scale);
        fails++;
      }
    }
    free(x0);
    free(v);
  }
  for (size_t i = 0; i < g->noutputs; i++) kiln_tensor_free(out[i]);
out:
  for (int i = 0; i < c.nin; i++) kiln_tensor_free(c.in[i]);
  kiln_graph_free(g);
  return fails;
}

static void test_every_gradient_matches_finite_differences(void **state) {
  int failures = 0, seeds = getenv("KILN_TEST_SEEDS") ? atoi(getenv("KILN_TEST_SEEDS")) : 1;
  for (int seed = 1; seed <= seeds; seed++)
    for (int op = 0; op < KILN_OP_COUNT; op++) {
      if (!(kiln_ops[op].flags & DIFF)) continue;
      trng r = {(uint64_t)seed * 104729 + (uint64_t)op};
      /* Contractions and windows have many configurations (transposes, strides, groups). */
      bool many = kiln_ops[op].arity == 2 && !(kiln_ops[op].flags & (EW | MOV));
      int rounds = many || op == KILN_OP_MAX_POOL2D || op == KILN_OP_AVG_POOL2D ? 12 : 4;
      for (int round = 0; round < rounds; round++) failures += gradcheck((kiln_op)op, &r, round);
    }
  assert_int_equal(failures, 0);
}

static void test_blocked_path_names_the_op(void **state) {
  kiln_graph *g = kiln_graph_new();
  kiln_value x = kiln_placeholder(g, "x", KILN_F32, KILN_SHAPE(4, 3));
  kiln_value idx = kiln_argmax(g, x, 1, false);
  kiln_value loss = kiln_reduce_sum(g, kiln_cast(g, idx, KILN_F32), NULL, 0, false);
  kiln_value d;
  assert_int_equal(kiln_gradients(g, loss, &x, 1, &d), KILN_ERR_INVALID);
  assert_non_null(strstr(kiln_errmsg(), "argmax"));
  assert_non_null(strstr(kiln_errmsg(), "not differentiable"));
  assert_int_equal(d.id, KILN_NONE);

  kiln_value cmp = kiln_reduce_sum(g, kiln_cast(g, kiln_greater(g, x, kiln_scalar(g, KILN_F32, 0)), KILN_F32), NULL, 0, false);
  assert_int_equal(kiln_gradients(g, cmp, &x, 1, &d), KILN_ERR_INVALID);
  assert_non_null(strstr(kiln_errmsg(), "greater"));
  /* Asking for the gradient of an integer, or with respect to one, is refused too. */
  assert_int_equal(kiln_gradients(g, idx, &x, 1, &d), KILN_ERR_INVALID);
  assert_non_null(strstr(kiln_errmsg(), "f32 or f64"));
  assert_int_equal(kiln_gradients(g, loss, &idx, 1, &d), KILN_ERR_INVALID);
  /* The graph stays usable after a refused request. */
  assert_int_equal(kiln_graph_status(g), KILN_OK);
  kiln_graph_free(g);
}

/* relu written as select(x > 0, x, 0): the condition path is skipped, the value path counts. */
static void test_condition_paths_are_skipped_and_unconnected_is_zero(void **state) {
  kiln_graph *g = kiln_graph_new();
  kiln_value x = kiln_placeholder(g, "x", KILN_F64, KILN_SHAPE(4));
  kiln_value u = kiln_placeholder(g, "u", KILN_F64, KILN_SHAPE(2, 2));
  kiln_value zero = kiln_scalar(g, KILN_F64, 0);
  kiln_value y = kiln_select(g, kiln_greater(g, x, zero), x, zero);
  kiln_value loss = kiln_reduce_sum(g, kiln_mul(g, y, y), NULL, 0, false);
  kiln_value wrt[2] = {x, u}, d[2];
  assert_int_equal(kiln_gradients(g, loss, wrt, 2, d), KILN_OK);
  kiln_output(g, "dx", d[0]);
  kiln_output(g, "du", d[1]);
  double xv[4] = {-1, 2, 0.5, -3};
  kiln_tensor *in[2] = {kiln_tensor_from_data(KILN_F64, 1, (int64_t[]){4}, xv, sizeof xv),
                        kiln_tensor_new(KILN_F64, 2, (int64_t[]){2, 2})};
  kiln_tensor *out[2];
  assert_int_equal(kiln_evaluate(g, (const kiln_tensor *const *)in, 2, out, 2), KILN_OK);
  const double *dx = kiln_tensor_cdata(out[0]), *du = kiln_tensor_cdata(out[1]);
  double want[4] = {0, 4, 1, 0};
  for (int i = 0; i < 4; i++) assert_true(dx[i] == want[i]);
  assert_int_equal(kiln_tensor_numel(out[1]), 4);
  for (int i = 0; i < 4; i++) assert_true(du[i] == 0);
  assert_int_equal(check_graph("select relu", g, in, 2, 0, 0), 0);
  for (int i = 0; i < 2; i++) kiln_tensor_free(in[i]), kiln_tensor_free(out[i]);
  kiln_graph_free(g);
}

/* d/dx x^3 = 3x^2 and d2/dx2 = 6x, by differentiating the gradient graph again. */
static void test_second_derivative(void **state) {
  kiln_graph *g = kiln_graph_new();
  kiln_value x = kiln_placeholder(g, "x", KILN_F64, KILN_SCALAR);
  kiln_value y = kiln_mul(g, kiln_mul(g, x, x), x);
  kiln_value d1, d2;
  assert_int_equal(kiln_gradients(g, y, &x, 1, &d1), KILN_OK);
  assert_int_equal(kiln_gradients(g, d1, &x, 1, &d2), KILN_OK);
  kiln_output(g, "d1", d1);
  kiln_output(g, "d2", d2);
  double xv = 1.5;
  kiln_tensor *in = kiln_tensor_from_data(KILN_F64, 0, NULL, &xv, sizeof xv), *out[2];
  assert_int_equal(kiln_evaluate(g, (const kiln_tensor *const *)&in, 1, out, 2), KILN_OK);
  assert_true(fabs(*(const double *)kiln_tensor_cdata(out[0]) - 6.75) < 1e-12);
  assert_true(fabs(*(const double *)kiln_tensor_cdata(out[1]) - 9.0) < 1e-12);
  kiln_tensor_free(out[0]);
  kiln_tensor_free(out[1]);
  kiln_tensor_free(in);
  kiln_graph_free(g);
}

/* A dense layer with a symbolic batch: dW contracts over the batch and the mean
 * over the batch divides by its run-time size. */
static void test_symbolic_batch(void **state) {
  kiln_graph *g = kiln_graph_new();
  kiln_value x = kiln_placeholder(g, "x", KILN_F32, KILN_SHAPE(KILN_DYN, 5));
  kiln_value w = kiln_placeholder(g, "w", KILN_F32, KILN_SHAPE(5, 3));
  kiln_value b = kiln_placeholder(g, "b", KILN_F32, KILN_SHAPE(3));
  kiln_value z = kiln_tanh(g, kiln_add(g, kiln_matmul(g, x, w, false, false), b));
  kiln_value loss = kiln_reduce_mean(g, kiln_mul(g, z, z), NULL, 0, false);
  kiln_value wrt[3] = {x, w, b}, d[3];
  assert_int_equal(kiln_gradients(g, loss, wrt, 3, d), KILN_OK);
  kiln_output(g, "dx", d[0]);
  kiln_output(g, "dw", d[1]);
  kiln_output(g, "db", d[2]);
  trng r = {7};
  for (int64_t batch = 1; batch <= 9; batch += 8) {
    kiln_tensor *in[3] = {random_tensor(&r, KILN_F32, 2, (int64_t[]){batch, 5}, -1, 1),
                          random_tensor(&r, KILN_F32, 2, (int64_t[]){5, 3}, -1, 1),
                          random_tensor(&r, KILN_F32, 1, (int64_t[]){3}, -1, 1)};
    assert_int_equal(check_graph("symbolic batch", g, in, 3, 1e-5, 1e-6), 0);
    for (int i = 0; i < 3; i++) kiln_tensor_free(in[i]);
  }
  kiln_graph_free(g);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_diff_flag_matches_rules),
      cmocka_unit_test(test_blocked_path_names_the_op),
      cmocka_unit_test(test_condition_paths_are_skipped_and_unconnected_is_zero),
      cmocka_unit_test(test_second_derivative),
      cmocka_unit_test(test_symbolic_batch),
      cmocka_unit_test(test_every_gradient_matches_finite_differences),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

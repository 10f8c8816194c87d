/* Training from C with the low-level API: variables, tf.function tracing and
 * retracing, optimizers against hand-written references of Keras' formulas, and a
 * 2-layer MLP that must learn a separable problem. */
#include <math.h>
#include <string.h>
#include "harness.h"

/* ---- optimizers: 5 steps of loss = sum(w * c_t), so the gradient is exactly c_t ---- */

typedef struct opt_case {
  const char *what;
  kiln_optimizer_config cfg;
} opt_case;

static double G_SEQ[5][3] = {{0.5, -1.0, 2.0}, {0.25, 0.75, -3.0}, {-1.5, 0.1, 0.4}, {2.0, -2.0, 0.0}, {0.3, 0.6, -0.9}};
static const double W0[3] = {1.0, -0.5, 0.25};

/* The formulas, written out independently of kiln (Keras 3's update_step of each class). */
static void reference(const kiln_optimizer_config *c, double w_out[5][3]) {
  double w[3], s1[3] = {0}, s2[3] = {0}, uprod = 1;
  memcpy(w, W0, sizeof w);
  if (c->kind == KILN_OPT_ADAGRAD)
    for (int i = 0; i < 3; i++) s1[i] = c->initial_accumulator_value;
  for (int t = 0; t < 5; t++) {
    double g[3], lr = c->learning_rate, norm = 0;
    memcpy(g, G_SEQ[t], sizeof g);
    if (c->schedule == KILN_LR_EXPONENTIAL) lr *= pow(c->decay_rate, c->staircase ? floor(t / c->decay_steps) : t / c->decay_steps);
    if (c->schedule == KILN_LR_STEP) lr *= pow(c->decay_rate, floor(t / c->decay_steps));
    for (int i = 0; i < 3; i++) norm += g[i] * g[i];
    norm = sqrt(norm);
    double clip = c->clipnorm > 0 ? c->clipnorm : c->global_clipnorm;
    for (int i = 0; i < 3; i++) {
      if (clip > 0) g[i] = g[i] * clip / fmax(norm, clip);
      if (c->clipvalue > 0) g[i] = fmin(fmax(g[i], -c->clipvalue), c->clipvalue);
    }
    double ut = 0, ut1 = 0;
    if (c->kind == KILN_OPT_NADAM) {
      ut = c->beta_1 * (1 - 0.5 * pow(0.96, t + 1));
      ut1 = c->beta_1 * (1 - 0.5 * pow(0.96, t + 2));
      uprod *= ut;
    }
    for (int i = 0; i < 3; i++) {
      if (c->weight_decay > 0) w[i] -= w[i] * c->weight_decay * lr;
      switch (c->kind) {
      case KILN_OPT_SGD:
        if (c->momentum == 0) {
          w[i] -= lr * g[i];
        } else {
          s1[i] = c->momentum * s1[i] - lr * g[i];
          w[i] += c->nesterov ? c->momentum * s1[i] - lr * g[i] : s1[i];
        }
        break;
      case KILN_OPT_RMSPROP: {
        s1[i] = c->rho * s1[i] + (1 - c->rho) * g[i] * g[i];
        double inc = lr * g[i] / sqrt(s1[i] + c->epsilon);
        if (c->momentum > 0) inc = s2[i] = c->momentum * s2[i] + inc;
        w[i] -= inc;
        break;
      }
      case KILN_OPT_ADAM:
      case KILN_OPT_ADAMW: {
        s1[i] += (g[i] - s1[i]) * (1 - c->beta_1);
        s2[i] += (g[i] * g[i] - s2[i]) * (1 - c->beta_2);
        double alpha = lr * sqrt(1 - pow(c->beta_2, t + 1)) / (1 - pow(c->beta_1, t + 1));
        w[i] -= s1[i] * alpha / (sqrt(s2[i]) + c->epsilon);
        break;
      }
      case KILN_OPT_NADAM: {
        s1[i] += (g[i] - s1[i]) * (1 - c->beta_1);
        s2[i] += (g[i] * g[i] - s2[i]) * (1 - c->beta_2);
        double mhat = ut1 * s1[i] / (1 - uprod * ut1) + (1 - ut) * g[i] / (1 - uprod);
        double vhat = s2[i] / (1 - pow(c->beta_2, t + 1));
        w[i] -= mhat * lr / (sqrt(vhat) + c->epsilon);
        break;
      }
      case KILN_OPT_ADAGRAD:
        s1[i] += g[i] * g[i];
        w[i] -= lr * g[i] / sqrt(s1[i] + c->epsilon);
        break;
      case KILN_OPT_ADADELTA: {
        s1[i] = c->rho * s1[i] + (1 - c->rho) * g[i] * g[i];
        double delta = -sqrt(s2[i] + c->epsilon) * g[i] / sqrt(s1[i] + c->epsilon);
        s2[i] = c->rho * s2[i] + (1 - c->rho) * delta * delta;
        w[i] += lr * delta;
        break;
      }
      default: fail_msg("no reference for kind %d", (int)c->kind);
      }
    }
    memcpy(w_out[t], w, sizeof w);
  }
}

typedef struct opt_model {
  kiln_variable *w;
  kiln_optimizer *opt;
} opt_model;

static void opt_step(kiln_graph *g, const kiln_value *in, size_t nin, void *ud) {
  opt_model *m = ud;
  kiln_value w = kiln_variable_read(g, m->w), d;
  kiln_value loss = kiln_reduce_sum(g, kiln_mul(g, w, in[0]), NULL, 0, false);
  kiln_gradients(g, loss, &w, 1, &d);
  assert_int_equal(kiln_optimizer_apply(m->opt, g, &m->w, &d, 1), KILN_OK);
  kiln_output(g, "loss", loss);
}

static int run_opt_case(const opt_case *oc, kiln_dtype t) {
  double want[5][3];
  reference(&oc->cfg, want);
  kiln_variables *vs = kiln_variables_new(1);
  opt_model m;
  assert_int_equal(kiln_variable_new(vs, "w", t, KILN_SHAPE(3), KILN_ZEROS, true, &m.w), KILN_OK);
  kiln_tensor *w0 = kiln_tensor_new(KILN_F64, 1, (int64_t[]){3});
  memcpy(kiln_tensor_data(w0), W0, sizeof W0);
  kiln_graph *cg = kiln_graph_new(); /* converts the f64 constants to the variable's dtype */
  kiln_output(cg, "w", kiln_cast(cg, kiln_placeholder(cg, "x", KILN_F64, KILN_SHAPE(3)), t));
  kiln_tensor *wt;
  assert_int_equal(kiln_evaluate(cg, (const kiln_tensor *const *)&w0, 1, &wt, 1), KILN_OK);
  assert_int_equal(kiln_variable_set(m.w, wt), KILN_OK);
  kiln_tensor_free(wt);
  assert_int_equal(kiln_optimizer_new(&oc->cfg, "opt", &m.opt), KILN_OK);
  kiln_function *f = kiln_function_new(opt_step, &m, NULL);
  int bad = 0;
  double tol = t == KILN_F64 ? 1e-12 : 1e-6;
  for (int s = 0; s < 5; s++) {
    memcpy(kiln_tensor_data(w0), G_SEQ[s], sizeof G_SEQ[s]);
    kiln_tensor *gt, *loss;
    assert_int_equal(kiln_evaluate(cg, (const kiln_tensor *const *)&w0, 1, &gt, 1), KILN_OK);
    if (kiln_function_call(f, (const kiln_tensor *[]){gt}, 1, &loss, 1) != KILN_OK) fail_msg("%s: %s", oc->what, kiln_errmsg());
    kiln_tensor *wv = kiln_variable_value(m.w);
    for (int i = 0; i < 3; i++) {
      double got = t == KILN_F64 ? ((double *)kiln_tensor_data(wv))[i] : ((float *)kiln_tensor_data(wv))[i];
      if (!(fabs(got - want[s][i]) <= tol)) {
        printf("%s/%s step %d w[%d]: got %.12g, reference %.12g\n", oc->what, kiln_dtype_name(t), s + 1, i, got,
               want[s][i]);
        bad++;
      }
    }
    kiln_tensor_free(gt);
    kiln_tensor_free(loss);
  }
  int64_t iters = *(const int64_t *)kiln_tensor_cdata(kiln_variable_value(kiln_optimizer_iterations(m.opt)));
  if (iters != 5) printf("%s: iterations = %lld, want 5\n", oc->what, (long long)iters), bad++;
  assert_int_equal(kiln_function_trace_count(f), 1);
  kiln_function_free(f);
  kiln_optimizer_free(m.opt);
  kiln_tensor_free(w0);
  kiln_graph_free(cg);
  kiln_variables_free(vs);
  return bad;
}

static void test_optimizers_match_reference(void **state) {
  opt_case cases[32];
  int n = 0;
  for (int k = 0; k < KILN_OPT_COUNT; k++) {
    cases[n] = (opt_case){"defaults", kiln_optimizer_defaults((kiln_optimizer_kind)k)};
    cases[n].cfg.learning_rate = 0.1; /* big enough that every formula term shows */
    n++;
  }
  const char *names[KILN_OPT_COUNT] = {"sgd", "rmsprop", "adam", "adamw", "adagrad", "adadelta", "nadam"};
  for (int k = 0; k < KILN_OPT_COUNT; k++) cases[k].what = names[k];
  opt_case extra[] = {
      {"sgd momentum", kiln_optimizer_defaults(KILN_OPT_SGD)},
      {"sgd nesterov", kiln_optimizer_defaults(KILN_OPT_SGD)},
      {"rmsprop momentum", kiln_optimizer_defaults(KILN_OPT_RMSPROP)},
      {"adam clipnorm", kiln_optimizer_defaults(KILN_OPT_ADAM)},
      {"sgd global_clipnorm", kiln_optimizer_defaults(KILN_OPT_SGD)},
      {"sgd clipvalue", kiln_optimizer_defaults(KILN_OPT_SGD)},
      {"sgd exponential decay", kiln_optimizer_defaults(KILN_OPT_SGD)},
      {"sgd exponential staircase", kiln_optimizer_defaults(KILN_OPT_SGD)},
      {"adam step decay", kiln_optimizer_defaults(KILN_OPT_ADAM)},
  };
  extra[0].cfg.momentum = 0.9;
  extra[1].cfg.momentum = 0.9, extra[1].cfg.nesterov = true;
  extra[2].cfg.momentum = 0.5;
  extra[3].cfg.clipnorm = 1.0;
  extra[4].cfg.global_clipnorm = 1.5;
  extra[5].cfg.clipvalue = 0.7;
  extra[6].cfg.schedule = KILN_LR_EXPONENTIAL, extra[6].cfg.decay_steps = 2, extra[6].cfg.decay_rate = 0.5;
  extra[7].cfg = extra[6].cfg, extra[7].cfg.staircase = true;
  extra[8].cfg.schedule = KILN_LR_STEP, extra[8].cfg.decay_steps = 2, extra[8].cfg.decay_rate = 0.1;
  for (size_t i = 0; i < sizeof extra / sizeof extra[0]; i++) {
    cases[n] = extra[i];
    cases[n].cfg.learning_rate = 0.1;
    n++;
  }
  int bad = 0;
  for (int i = 0; i < n; i++) bad += run_opt_case(&cases[i], KILN_F64) + run_opt_case(&cases[i], KILN_F32);
  assert_int_equal(bad, 0);
}

static void test_optimizer_config_errors(void **state) {
  kiln_optimizer_config c = kiln_optimizer_defaults(KILN_OPT_SGD);
  kiln_optimizer *o;
  c.clipnorm = 1, c.clipvalue = 1;
  assert_int_equal(kiln_optimizer_new(&c, NULL, &o), KILN_ERR_INVALID);
  assert_non_null(strstr(kiln_errmsg(), "at most one"));
  c = kiln_optimizer_defaults(KILN_OPT_SGD);
  c.schedule = KILN_LR_EXPONENTIAL;
  assert_int_equal(kiln_optimizer_new(&c, NULL, &o), KILN_ERR_INVALID);
  kiln_optimizer_kind k;
  assert_int_equal(kiln_optimizer_kind_from_name("Adam", &k), KILN_OK);
  assert_int_equal(k, KILN_OPT_ADAM);
  assert_int_equal(kiln_optimizer_kind_from_name("adamax", &k), KILN_ERR_INVALID);
  assert_non_null(strstr(kiln_errmsg(), "adamax"));
  /* Keras defaults. */
  assert_true(kiln_optimizer_defaults(KILN_OPT_SGD).learning_rate == 0.01);
  assert_true(kiln_optimizer_defaults(KILN_OPT_ADAM).epsilon == 1e-7);
  assert_true(kiln_optimizer_defaults(KILN_OPT_ADAMW).weight_decay == 0.004);
  assert_true(kiln_optimizer_defaults(KILN_OPT_ADADELTA).rho == 0.95);
}

/* ---- variables ---- */

static void test_variables_init_and_errors(void **state) {
  kiln_variables *a = kiln_variables_new(7), *b = kiln_variables_new(7), *c = kiln_variables_new(8);
  kiln_variable *va, *vb, *vc, *h, *tmp;
  /* Creation order does not matter: b creates another variable first. */
  assert_int_equal(kiln_variable_new(b, "other", KILN_F32, KILN_SHAPE(2), KILN_ONES, true, &tmp), KILN_OK);
  assert_int_equal(kiln_variable_new(a, "dense/kernel", KILN_F32, KILN_SHAPE(300, 100), KILN_GLOROT_UNIFORM, true, &va), KILN_OK);
  assert_int_equal(kiln_variable_new(b, "dense/kernel", KILN_F32, KILN_SHAPE(300, 100), KILN_GLOROT_UNIFORM, true, &vb), KILN_OK);
  assert_int_equal(kiln_variable_new(c, "dense/kernel", KILN_F32, KILN_SHAPE(300, 100), KILN_GLOROT_UNIFORM, true, &vc), KILN_OK);
  const float *pa = kiln_tensor_cdata(kiln_variable_value(va)), *pb = kiln_tensor_cdata(kiln_variable_value(vb)),
              *pc = kiln_tensor_cdata(kiln_variable_value(vc));
  assert_memory_equal(pa, pb, 300 * 100 * sizeof(float));
  assert_memory_not_equal(pa, pc, 300 * 100 * sizeof(float));
  double limit = sqrt(6.0 / 400), mean = 0, var = 0;
  for (int i = 0; i < 30000; i++) {
    assert_true(fabs(pa[i]) <= limit);
    mean += pa[i] / 30000.0;
    var += pa[i] * (double)pa[i] / 30000.0;
  }
  assert_true(fabs(mean) < 0.002 && fabs(var - limit * limit / 3) < 0.05 * limit * limit / 3);
  /* He normal on a 3x3x16x32 filter: fan_in 144, truncated at 2 sd, overall sd sqrt(2/144). */
  assert_int_equal(kiln_variable_new(a, "conv/kernel", KILN_F64, KILN_SHAPE(3, 3, 16, 32), KILN_HE_NORMAL, true, &h), KILN_OK);
  const double *ph = kiln_tensor_cdata(kiln_variable_value(h));
  double sd = sqrt(2.0 / 144) / 0.87962566103423978, s2 = 0;
  for (int i = 0; i < 4608; i++) {
    assert_true(fabs(ph[i]) <= 2 * sd);
    s2 += ph[i] * ph[i] / 4608;
  }
  assert_true(fabs(sqrt(s2) - sqrt(2.0 / 144)) < 0.05 * sqrt(2.0 / 144));

  assert_int_equal(kiln_variable_new(a, "dense/kernel", KILN_F32, KILN_SHAPE(1), KILN_ZEROS, true, &tmp), KILN_ERR_INVALID);
  assert_non_null(strstr(kiln_errmsg(), "already exists"));
  assert_int_equal(kiln_variable_new(a, "i", KILN_I32, KILN_SHAPE(1), KILN_GLOROT_UNIFORM, true, &tmp), KILN_ERR_INVALID);
  kiln_tensor *wrong = kiln_tensor_new(KILN_F32, 2, (int64_t[]){3, 3});
  assert_int_equal(kiln_variable_set(va, wrong), KILN_ERR_INVALID);
  assert_non_null(strstr(kiln_errmsg(), "dense/kernel"));
  kiln_tensor_free(wrong);
  assert_ptr_equal(kiln_variables_find(a, "conv/kernel"), h);
  assert_int_equal(kiln_variables_count(a), 2);

  /* A graph assigning a wrongly shaped value, or mixing stores, is refused. */
  kiln_graph *g = kiln_graph_new();
  kiln_value r = kiln_variable_read(g, va);
  assert_int_equal(kiln_variable_assign(g, va, kiln_reduce_sum(g, r, NULL, 0, false)), KILN_ERR_INVALID);
  assert_non_null(strstr(kiln_errmsg(), "dense/kernel"));
  kiln_graph_free(g);
  g = kiln_graph_new();
  kiln_variable_read(g, va);
  kiln_variable_read(g, vc);
  assert_int_equal(kiln_graph_status(g), KILN_ERR_INVALID);
  assert_non_null(strstr(kiln_graph_errmsg(g), "another store"));
  kiln_graph_free(g);
  kiln_variables_free(a);
  kiln_variables_free(b);
  kiln_variables_free(c);
}

/* All reads in a run see the values from before it; assignments land afterwards,
 * and a graph parsed from text runs once bound to a store. */
static void test_assign_after_run_and_text(void **state) {
  kiln_variables *vs = kiln_variables_new(0);
  kiln_variable *a, *b;
  kiln_variable_new(vs, "a", KILN_F32, KILN_SCALAR, KILN_CONSTANT(1), true, &a);
  kiln_variable_new(vs, "b", KILN_F32, KILN_SCALAR, KILN_CONSTANT(10), true, &b);
  kiln_graph *g = kiln_graph_new();
  kiln_value x = kiln_placeholder(g, "x", KILN_F32, KILN_SCALAR);
  kiln_value ra = kiln_variable_read(g, a), rb = kiln_variable_read(g, b);
  kiln_variable_assign(g, a, kiln_add(g, ra, x)); /* a += x */
  kiln_variable_assign(g, b, kiln_add(g, rb, ra)); /* b += old a */
  kiln_output(g, "sum", kiln_add(g, ra, rb));
  assert_int_equal(kiln_graph_status(g), KILN_OK);
  float xv = 2;
  kiln_tensor *xt = kiln_tensor_from_data(KILN_F32, 0, NULL, &xv, sizeof xv), *out;
  kiln_exec *e;
  assert_int_equal(kiln_compile(g, NULL, &e), KILN_OK);
  assert_int_equal(kiln_exec_num_inputs(e), 1);
  assert_int_equal(kiln_exec_num_outputs(e), 1);
  assert_int_equal(kiln_exec_run(e, (const kiln_tensor *[]){xt}, 1, &out, 1), KILN_OK);
  assert_true(*(float *)kiln_tensor_data(out) == 11);
  assert_true(*(float *)kiln_tensor_data(kiln_variable_value(a)) == 3);
  assert_true(*(float *)kiln_tensor_data(kiln_variable_value(b)) == 11);
  kiln_tensor_free(out);
  /* The evaluator applies the same semantics. */
  assert_int_equal(kiln_evaluate(g, (const kiln_tensor *[]){xt}, 1, &out, 1), KILN_OK);
  assert_true(*(float *)kiln_tensor_data(out) == 14);
  assert_true(*(float *)kiln_tensor_data(kiln_variable_value(a)) == 5);
  assert_true(*(float *)kiln_tensor_data(kiln_variable_value(b)) == 14);
  kiln_tensor_free(out);

  char *text;
  assert_int_equal(kiln_graph_to_text(g, &text), KILN_OK);
  assert_non_null(strstr(text, "assign \"a\" = %"));
  assert_non_null(strstr(text, "variable=1"));
  kiln_graph *p;
  assert_int_equal(kiln_graph_parse(text, &p), KILN_OK);
  assert_int_equal(kiln_evaluate(p, (const kiln_tensor *[]){xt}, 1, &out, 1), KILN_ERR_INVALID);
  assert_non_null(strstr(kiln_errmsg(), "no variable store"));
  assert_int_equal(kiln_graph_bind_variables(p, vs), KILN_OK);
  assert_int_equal(kiln_evaluate(p, (const kiln_tensor *[]){xt}, 1, &out, 1), KILN_OK);
  assert_true(*(float *)kiln_tensor_data(kiln_variable_value(a)) == 7);
  kiln_tensor_free(out);
  /* A failed run (wrong input) changes no variable. */
  kiln_tensor *bad = kiln_tensor_new(KILN_F32, 1, (int64_t[]){2});
  assert_int_equal(kiln_exec_run(e, (const kiln_tensor *[]){bad}, 1, &out, 1), KILN_ERR_INVALID);
  assert_true(*(float *)kiln_tensor_data(kiln_variable_value(a)) == 7);
  kiln_tensor_free(bad);
  free(text);
  kiln_graph_free(p);
  kiln_exec_free(e);
  kiln_tensor_free(xt);
  kiln_graph_free(g);
  kiln_variables_free(vs);
}

/* ---- tf.function retracing ---- */

static int side_effects;
static void double_it(kiln_graph *g, const kiln_value *in, size_t nin, void *ud) {
  side_effects++; /* like a Python print inside @tf.function: runs per trace */
  kiln_output(g, "y", kiln_mul(g, in[0], kiln_scalar(g, kiln_value_dtype(g, in[0]), 2)));
}

static void test_retrace(void **state) {
  side_effects = 0;
  kiln_function *f = kiln_function_new(double_it, NULL, NULL);
  kiln_tensor *a = kiln_tensor_new(KILN_F32, 1, (int64_t[]){3}), *b = kiln_tensor_new(KILN_F32, 1, (int64_t[]){4}),
              *c = kiln_tensor_new(KILN_F64, 1, (int64_t[]){3}), *y;
  ((float *)kiln_tensor_data(a))[1] = 1.5f;
  for (int i = 0; i < 3; i++) {
    assert_int_equal(kiln_function_call(f, (const kiln_tensor *[]){a}, 1, &y, 1), KILN_OK);
    assert_true(((float *)kiln_tensor_data(y))[1] == 3.0f);
    kiln_tensor_free(y);
  }
  assert_int_equal(kiln_function_trace_count(f), 1);
  assert_int_equal(side_effects, 1);
  assert_int_equal(kiln_function_call(f, (const kiln_tensor *[]){b}, 1, &y, 1), KILN_OK);
  kiln_tensor_free(y);
  assert_int_equal(kiln_function_trace_count(f), 2);
  assert_int_equal(kiln_function_call(f, (const kiln_tensor *[]){a}, 1, &y, 1), KILN_OK);
  kiln_tensor_free(y);
  assert_int_equal(kiln_function_trace_count(f), 2);
  assert_int_equal(kiln_function_call(f, (const kiln_tensor *[]){c}, 1, &y, 1), KILN_OK); /* new dtype */
  assert_int_equal(kiln_tensor_dtype(y), KILN_F64);
  kiln_tensor_free(y);
  assert_int_equal(kiln_function_trace_count(f), 3);
  assert_int_equal(side_effects, 3);
  kiln_function_free(f);

  /* With a dynamic batch dim, every batch size shares one trace. */
  kiln_function_options o = {.dynamic_batch = true};
  f = kiln_function_new(double_it, NULL, &o);
  assert_int_equal(kiln_function_call(f, (const kiln_tensor *[]){a}, 1, &y, 1), KILN_OK);
  kiln_tensor_free(y);
  assert_int_equal(kiln_function_call(f, (const kiln_tensor *[]){b}, 1, &y, 1), KILN_OK);
  assert_int_equal(kiln_tensor_dims(y)[0], 4);
  kiln_tensor_free(y);
  assert_int_equal(kiln_function_trace_count(f), 1);
  kiln_function_free(f);
  kiln_tensor_free(a);
  kiln_tensor_free(b);
  kiln_tensor_free(c);
}

/* ---- a 2-layer MLP on a separable problem: quadrant XOR with a margin ---- */

typedef struct mlp {
  kiln_variables *vs;
  kiln_variable *p[4]; /* w1, b1, w2, b2 */
  kiln_optimizer *opt;
} mlp;

static kiln_value mlp_logits(kiln_graph *g, mlp *m, kiln_value x) {
  kiln_value h = kiln_tanh(g, kiln_add(g, kiln_matmul(g, x, kiln_variable_read(g, m->p[0]), false, false),
                                       kiln_variable_read(g, m->p[1])));
  return kiln_add(g, kiln_matmul(g, h, kiln_variable_read(g, m->p[2]), false, false), kiln_variable_read(g, m->p[3]));
}

static void mlp_train_step(kiln_graph *g, const kiln_value *in, size_t nin, void *ud) {
  mlp *m = ud;
  kiln_value logits = mlp_logits(g, m, in[0]);
  kiln_value onehot = kiln_one_hot(g, in[1], 2, KILN_F32);
  kiln_value nll = kiln_neg(g, kiln_reduce_sum(g, kiln_mul(g, onehot, kiln_log_softmax(g, logits, -1)), (int64_t[]){1}, 1, false));
  kiln_value loss = kiln_reduce_mean(g, nll, NULL, 0, false);
  kiln_value params[4], grads[4];
  for (int i = 0; i < 4; i++) params[i] = kiln_variable_read(g, m->p[i]);
  kiln_gradients(g, loss, params, 4, grads);
  kiln_optimizer_apply(m->opt, g, m->p, grads, 4);
  kiln_output(g, "loss", loss);
}

static void mlp_predict(kiln_graph *g, const kiln_value *in, size_t nin, void *ud) {
  kiln_output(g, "class", kiln_argmax(g, mlp_logits(g, ud, in[0]), 1, false));
}

static void make_data(trng *r, int n, kiln_tensor **x, kiln_tensor **y) {
  *x = kiln_tensor_new(KILN_F32, 2, (int64_t[]){n, 2});
  *y = kiln_tensor_new(KILN_I32, 1, (int64_t[]){n});
  float *xd = kiln_tensor_data(*x);
  int32_t *yd = kiln_tensor_data(*y);
  for (int i = 0; i < n;) {
    double a = trng_real(r, -1, 1), b = trng_real(r, -1, 1);
    if (fabs(a) < 0.1 || fabs(b) < 0.1) continue;
    xd[2 * i] = (float)a, xd[2 * i + 1] = (float)b, yd[i] = a * b > 0;
    i++;
  }
}

static void test_mlp_learns_separable_problem(void **state) {
  mlp m = {.vs = kiln_variables_new(3)};
  assert_int_equal(kiln_variable_new(m.vs, "w1", KILN_F32, KILN_SHAPE(2, 16), KILN_GLOROT_UNIFORM, true, &m.p[0]), KILN_OK);
  assert_int_equal(kiln_variable_new(m.vs, "b1", KILN_F32, KILN_SHAPE(16), KILN_ZEROS, true, &m.p[1]), KILN_OK);
  assert_int_equal(kiln_variable_new(m.vs, "w2", KILN_F32, KILN_SHAPE(16, 2), KILN_GLOROT_UNIFORM, true, &m.p[2]), KILN_OK);
  assert_int_equal(kiln_variable_new(m.vs, "b2", KILN_F32, KILN_SHAPE(2), KILN_ZEROS, true, &m.p[3]), KILN_OK);
  kiln_optimizer_config oc = kiln_optimizer_defaults(KILN_OPT_ADAM);
  oc.learning_rate = 0.05;
  assert_int_equal(kiln_optimizer_new(&oc, "adam", &m.opt), KILN_OK);
  kiln_function_options fo = {.dynamic_batch = true};
  kiln_function *step = kiln_function_new(mlp_train_step, &m, &fo), *predict = kiln_function_new(mlp_predict, &m, &fo);
  trng r = {11};
  kiln_tensor *x, *y, *tx, *ty;
  make_data(&r, 512, &x, &y);
  make_data(&r, 1000, &tx, &ty);
  double first = 0, last = 0;
  for (int it = 0; it < 300; it++) {
    kiln_tensor *loss;
    if (kiln_function_call(step, (const kiln_tensor *[]){x, y}, 2, &loss, 1) != KILN_OK) fail_msg("%s", kiln_errmsg());
    last = *(float *)kiln_tensor_data(loss);
    if (!it) first = last;
    kiln_tensor_free(loss);
  }
  kiln_tensor *pred;
  assert_int_equal(kiln_function_call(predict, (const kiln_tensor *[]){tx}, 1, &pred, 1), KILN_OK);
  int correct = 0;
  for (int i = 0; i < 1000; i++) correct += ((int64_t *)kiln_tensor_data(pred))[i] == ((int32_t *)kiln_tensor_data(ty))[i];
  printf("MLP: loss %.4f -> %.4f, test accuracy %.1f%%\n", first, last, correct / 10.0);
  assert_true(correct >= 990);
  assert_int_equal(kiln_function_trace_count(step), 1);
  kiln_tensor_free(pred);

  /* The compiled train step equals the reference evaluator running the same graph
   * (parsed back from text) on an identical copy of the variables. */
  kiln_variables *copy = kiln_variables_new(0);
  for (size_t i = 0; i < kiln_variables_count(m.vs); i++) {
    kiln_variable *v = kiln_variables_at(m.vs, i), *c;
    kiln_tensor *t = kiln_variable_value(v);
    kiln_shape s = {.rank = kiln_tensor_rank(t)};
    memcpy(s.dims, kiln_tensor_dims(t), sizeof(int64_t) * (size_t)s.rank);
    assert_int_equal(kiln_variable_new(copy, kiln_variable_name(v), kiln_tensor_dtype(t), s, KILN_ZEROS, true, &c), KILN_OK);
    assert_int_equal(kiln_variable_set(c, t), KILN_OK);
  }
  char *text;
  kiln_graph *ref;
  assert_int_equal(kiln_graph_to_text(kiln_function_graph(step), &text), KILN_OK);
  assert_int_equal(kiln_graph_parse(text, &ref), KILN_OK);
  kiln_graph_bind_variables(ref, copy);
  kiln_tensor *l1, *l2;
  assert_int_equal(kiln_function_call(step, (const kiln_tensor *[]){x, y}, 2, &l1, 1), KILN_OK);
  assert_int_equal(kiln_evaluate(ref, (const kiln_tensor *[]){x, y}, 2, &l2, 1), KILN_OK);
  assert_int_equal(compare_tensors("loss", l1, l2, 1e-5, 1e-6), 0);
  for (size_t i = 0; i < kiln_variables_count(m.vs); i++) {
    kiln_variable *v = kiln_variables_at(m.vs, i);
    assert_int_equal(compare_tensors(kiln_variable_name(v), kiln_variable_value(v),
                                     kiln_variable_value(kiln_variables_find(copy, kiln_variable_name(v))), 1e-5, 1e-6),
                     0);
  }
  kiln_tensor_free(l1);
  kiln_tensor_free(l2);
  free(text);
  kiln_graph_free(ref);
  kiln_variables_free(copy);

  /* A frozen layer stays put while the rest trains (transfer learning). */
  kiln_variable_set_trainable(m.p[0], false);
  kiln_variable_set_trainable(m.p[1], false);
  kiln_function *step2 = kiln_function_new(mlp_train_step, &m, &fo);
  kiln_tensor *before = kiln_tensor_from_data(KILN_F32, 2, (int64_t[]){2, 16}, kiln_tensor_cdata(kiln_variable_value(m.p[0])), 2 * 16 * 4);
  kiln_tensor *before2 = kiln_tensor_from_data(KILN_F32, 2, (int64_t[]){16, 2}, kiln_tensor_cdata(kiln_variable_value(m.p[2])), 2 * 16 * 4);
  assert_int_equal(kiln_function_call(step2, (const kiln_tensor *[]){x, y}, 2, &l1, 1), KILN_OK);
  assert_int_equal(compare_tensors("frozen w1", kiln_variable_value(m.p[0]), before, 0, 0), 0);
  assert_memory_not_equal(kiln_tensor_cdata(kiln_variable_value(m.p[2])), kiln_tensor_cdata(before2), 2 * 16 * 4);
  kiln_tensor_free(l1);
  kiln_tensor_free(before);
  kiln_tensor_free(before2);
  kiln_function_free(step2);

  kiln_tensor_free(x);
  kiln_tensor_free(y);
  kiln_tensor_free(tx);
  kiln_tensor_free(ty);
  kiln_function_free(step);
  kiln_function_free(predict);
  kiln_optimizer_free(m.opt);
  kiln_variables_free(m.vs);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_variables_init_and_errors),
      cmocka_unit_test(test_assign_after_run_and_text),
      cmocka_unit_test(test_retrace),
      cmocka_unit_test(test_optimizer_config_errors),
      cmocka_unit_test(test_optimizers_match_reference),
      cmocka_unit_test(test_mlp_learns_separable_problem),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

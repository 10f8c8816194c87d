/* Properties of generated code that comparison with the evaluator cannot show:
 * loops vectorize with FMAs, f32 transcendentals meet the error bounds stated in
 * codegen/math.c, and batch-dynamic graphs specialise per batch size. */
#include <math.h>
#include <string.h>
#include "harness.h"

static void test_loops_vectorize_with_fma(void **s) {
  kiln_graph *g = kiln_graph_new();
  kiln_value a = kiln_placeholder(g, "a", KILN_F32, KILN_SHAPE(64, 96));
  kiln_value b = kiln_placeholder(g, "b", KILN_F32, KILN_SHAPE(96, 64));
  kiln_output(g, "y", kiln_add(g, kiln_matmul(g, a, b, false, false), kiln_exp(g, kiln_matmul(g, a, b, false, false))));
  kiln_exec *e;
  kiln_compile_options o = {.keep_ir = true};
  assert_int_equal(kiln_compile(g, &o, &e), KILN_OK);
  const char *ir = kiln_exec_llvm_ir(e);
  assert_non_null(ir);
  /* Vector FMAs in the GEMM micro-kernel and vector float math in the exp loop. */
  bool fma = strstr(ir, "@llvm.fma.v16f32") || strstr(ir, "@llvm.fma.v8f32") || strstr(ir, "@llvm.fma.v4f32");
  bool vec = strstr(ir, "x float>") != NULL;
  printf("    vector fma: %s, vector float ops: %s\n", fma ? "yes" : "no", vec ? "yes" : "no");
  assert_true(fma && vec);
  /* No scalar libm call for exp in f32 code. */
  assert_null(strstr(ir, "@expf"));
  kiln_exec_free(e);
  kiln_graph_free(g);
}

/* Runs op on n points spread over [lo, hi] through the JIT; returns the max error
 * against double-precision libm (relative when rel, else absolute). */
static double max_error(kiln_op op, double lo, double hi, bool rel) {
  enum { N = 200000 };
  kiln_graph *g = kiln_graph_new();
  kiln_value x = kiln_placeholder(g, "x", KILN_F32, KILN_SHAPE(N));
  uint32_t id = x.id;
  kiln_output(g, "y", kiln_node_make(g, op, &id, 1, NULL, NULL, NULL, 0));
  kiln_tensor *xs = kiln_tensor_new(KILN_F32, 1, (int64_t[]){N}), *ys;
  float *xd = kiln_tensor_data(xs);
  for (int i = 0; i < N; i++) xd[i] = (float)(lo + (hi - lo) * i / (N - 1));
  kiln_exec *e;
  assert_int_equal(kiln_compile(g, NULL, &e), KILN_OK);
  assert_int_equal(kiln_exec_run(e, (const kiln_tensor *[]){xs}, 1, &ys, 1), KILN_OK);
  const float *yd = kiln_tensor_cdata(ys);
  double worst = 0;
  for (int i = 0; i < N; i++) {
    double v = xd[i], want = op == KILN_OP_EXP ? exp(v) : op == KILN_OP_LOG ? log(v) : op == KILN_OP_TANH ? tanh(v) : 1 / (1 + exp(-v));
    double err = fabs(yd[i] - want) / (rel ? fabs(want) : 1);
    if (err > worst) worst = err;
  }
  kiln_tensor_free(xs), kiln_tensor_free(ys);
  kiln_exec_free(e);
  kiln_graph_free(g);
  return worst;
}

static void test_transcendental_error_bounds(void **s) {
  double e_exp = max_error(KILN_OP_EXP, -87, 88, true), e_log = max_error(KILN_OP_LOG, 1e-30, 1e30, false);
  double e_log1 = max_error(KILN_OP_LOG, 0.5, 2, false), e_tanh = max_error(KILN_OP_TANH, -20, 20, false);
  double e_sig = max_error(KILN_OP_SIGMOID, -30, 30, false);
  printf("    exp rel %.3g, log abs %.3g (near 1: %.3g), tanh abs %.3g, sigmoid abs %.3g\n", e_exp, e_log, e_log1, e_tanh, e_sig);
  /* The bounds documented in codegen/math.c. */
  assert_true(e_exp <= 1.5e-7);
  assert_true(e_log1 <= 1e-7 && e_log <= 5e-6);
  assert_true(e_tanh <= 1.5e-7);
  assert_true(e_sig <= 1.5e-7);
}

static void test_exp_log_special_values(void **s) {
  kiln_graph *g = kiln_graph_new();
  kiln_value x = kiln_placeholder(g, "x", KILN_F32, KILN_SHAPE(6));
  kiln_output(g, "e", kiln_exp(g, x));
  kiln_output(g, "l", kiln_log(g, x));
  float v[6] = {0.0f, -1.0f, INFINITY, -INFINITY, NAN, 1e-40f};
  kiln_tensor *xs = kiln_tensor_from_data(KILN_F32, 1, (int64_t[]){6}, v, sizeof v), *o[2];
  kiln_exec *e;
  assert_int_equal(kiln_compile(g, NULL, &e), KILN_OK);
  assert_int_equal(kiln_exec_run(e, (const kiln_tensor *[]){xs}, 1, o, 2), KILN_OK);
  const float *ex = kiln_tensor_cdata(o[0]), *lg = kiln_tensor_cdata(o[1]);
  assert_true(ex[0] == 1 && fabsf(ex[1] - 0.36787944f) < 1e-7f && isinf(ex[2]) && ex[3] == 0 && isnan(ex[4]));
  assert_true(isinf(lg[0]) && lg[0] < 0 && isnan(lg[1]) && isinf(lg[2]) && isnan(lg[3]) && isnan(lg[4]));
  assert_true(fabs(lg[5] - log(1e-40)) < 1e-4); /* denormal input */
  kiln_tensor_free(xs), kiln_tensor_free(o[0]), kiln_tensor_free(o[1]);
  kiln_exec_free(e);
  kiln_graph_free(g);
}

static void test_batch_specialisation(void **s) {
  kiln_graph *g = kiln_graph_new();
  kiln_value x = kiln_placeholder(g, "x", KILN_F32, KILN_SHAPE(KILN_DYN, 28, 28));
  kiln_value flat = kiln_reshape(g, x, KILN_SHAPE(-1, 784));
  kiln_value w = kiln_random_normal(g, KILN_F32, KILN_SHAPE(784, 10), 7, 0, 0.05);
  kiln_value logits = kiln_matmul(g, flat, w, false, false);
  kiln_output(g, "p", kiln_softmax(g, logits, -1));
  kiln_output(g, "cls", kiln_argmax(g, logits, -1, false));
  assert_int_equal(kiln_value_shape(g, logits).dims[0], KILN_DYN);
  trng r = {3};
  int64_t batches[3] = {5, 1, 5};
  for (int k = 0; k < 3; k++) {
    kiln_tensor *in = random_tensor(&r, KILN_F32, 3, (int64_t[]){batches[k], 28, 28}, 0, 1);
    char what[32];
    snprintf(what, sizeof what, "batch %lld", (long long)batches[k]);
    assert_int_equal(check_graph(what, g, &in, 1, 1e-5, 1e-6), 0);
    kiln_tensor_free(in);
  }
  kiln_graph_free(g);
}

static void test_generic_cpu(void **s) {
  kiln_graph *g = kiln_graph_new();
  kiln_value a = kiln_placeholder(g, "a", KILN_F32, KILN_SHAPE(13, 40));
  kiln_output(g, "y", kiln_tanh(g, kiln_matmul(g, a, a, false, true)));
  trng r = {5};
  kiln_tensor *in = random_tensor(&r, KILN_F32, 2, (int64_t[]){13, 40}, -1, 1), *ref, *out;
  kiln_exec *e;
  kiln_compile_options o = {.cpu = "generic"};
  assert_int_equal(kiln_compile(g, &o, &e), KILN_OK);
  assert_int_equal(kiln_exec_run(e, (const kiln_tensor *[]){in}, 1, &out, 1), KILN_OK);
  assert_int_equal(kiln_evaluate(g, (const kiln_tensor *[]){in}, 1, &ref, 1), KILN_OK);
  assert_int_equal(compare_tensors("generic cpu", out, ref, 1e-5, 1e-5), 0);
  kiln_exec_free(e);
  o.cpu = "pentium9";
  assert_int_equal(kiln_compile(g, &o, &e), KILN_ERR_INVALID);
  kiln_tensor_free(in), kiln_tensor_free(ref), kiln_tensor_free(out);
  kiln_graph_free(g);
}

/* A chain of element-wise steps with a value read again much later: with memory
 * planning the workspace holds a few buffers instead of one per step, the long-lived
 * value is not overwritten early (results equal the unplanned build bit for bit and
 * the reference evaluator within rounding), and disabling an unknown pass is an error. */
static void test_memory_plan_reuses_buffers(void **s) {
  (void)s;
  kiln_graph *g = kiln_graph_new();
  kiln_value x = kiln_placeholder(g, "x", KILN_F32, KILN_SHAPE(256, 256));
  kiln_value keep = kiln_exp(g, kiln_neg(g, kiln_abs(g, x))), v = keep; /* read again at the end */
  for (int i = 0; i < 12; i++) v = i % 2 ? kiln_sqrt(g, kiln_abs(g, v)) : kiln_add(g, kiln_mul(g, v, v), keep);
  kiln_output(g, "y", kiln_sub(g, v, keep));
  trng r = {7};
  kiln_tensor *in = random_tensor(&r, KILN_F32, 2, (int64_t[]){256, 256}, -2, 2);
  kiln_exec *planned, *plain;
  /* fusion off in both: it would fold the chain into a kernel and leave nothing to plan */
  kiln_compile_options on = {.disable_passes = "fuse"}, off = {.disable_passes = "fuse,memory-plan"},
                       bad = {.disable_passes = "memory-plan,fusion-of-dreams"};
  assert_int_equal(kiln_compile(g, &on, &planned), KILN_OK);
  assert_int_equal(kiln_compile(g, &off, &plain), KILN_OK);
  kiln_exec *e;
  assert_int_equal(kiln_compile(g, &bad, &e), KILN_ERR_INVALID);
  assert_non_null(strstr(kiln_errmsg(), "fusion-of-dreams"));
  kiln_exec_stats a, b;
  assert_int_equal(kiln_exec_get_stats(planned, &a), KILN_OK);
  assert_int_equal(kiln_exec_get_stats(plain, &b), KILN_OK);
  uint64_t buf = 256 * 256 * 4;
  if (b.workspace_bytes < 20 * buf || a.workspace_bytes > 4 * buf + (b.workspace_bytes - b.unplanned_bytes))
    fail_msg("workspace %llu planned vs %llu unplanned", (unsigned long long)a.workspace_bytes, (unsigned long long)b.workspace_bytes);
  assert_int_equal(a.unplanned_bytes, b.unplanned_bytes);
  kiln_tensor *ya, *yb;
  assert_int_equal(kiln_exec_run(planned, (const kiln_tensor *const *)&in, 1, &ya, 1), KILN_OK);
  assert_int_equal(kiln_exec_run(plain, (const kiln_tensor *const *)&in, 1, &yb, 1), KILN_OK);
  assert_memory_equal(kiln_tensor_cdata(ya), kiln_tensor_cdata(yb), kiln_tensor_nbytes(ya));
  assert_int_equal(check_graph("memory plan", g, &in, 1, 1e-5, 1e-5), 0);
  kiln_tensor_free(ya), kiln_tensor_free(yb), kiln_tensor_free(in);
  kiln_exec_free(planned), kiln_exec_free(plain);
  kiln_graph_free(g);
}

/* Fusion: an element-wise chain with broadcast scalars becomes one kernel, a softmax
 * fuses its element-wise producers into the reductions; results match the unfused
 * build and the reference evaluator. */
static void test_fusion_merges_kernels(void **s) {
  (void)s;
  kiln_graph *g = kiln_graph_new();
  kiln_value x = kiln_placeholder(g, "x", KILN_F32, KILN_SHAPE(64, 100));
  kiln_value v = x;
  for (int i = 0; i < 6; i++) v = kiln_tanh(g, kiln_add(g, kiln_mul(g, v, kiln_scalar(g, KILN_F32, 0.9)), kiln_scalar(g, KILN_F32, 0.1)));
  kiln_output(g, "chain", v);
  kiln_output(g, "softmax", kiln_softmax(g, x, -1));
  trng r = {11};
  kiln_tensor *in = random_tensor(&r, KILN_F32, 2, (int64_t[]){64, 100}, -3, 3);
  kiln_exec *fused, *plain;
  kiln_compile_options off = {.disable_passes = "fuse"};
  assert_int_equal(kiln_compile(g, NULL, &fused), KILN_OK);
  assert_int_equal(kiln_compile(g, &off, &plain), KILN_OK);
  kiln_exec_stats a, b;
  assert_int_equal(kiln_exec_get_stats(fused, &a), KILN_OK);
  assert_int_equal(kiln_exec_get_stats(plain, &b), KILN_OK);
  /* chain: 1 kernel; softmax: max, e = exp(x - max) (stored: two readers), sum(e), e / sum */
  if (a.kernels != 5 || b.kernels != 29 || b.fused_nodes != 0 || a.workspace_bytes >= b.workspace_bytes)
    fail_msg("kernels %zu fused (%zu nodes inlined, %llu B) vs %zu unfused (%llu B)", a.kernels, a.fused_nodes,
             (unsigned long long)a.workspace_bytes, b.kernels, (unsigned long long)b.workspace_bytes);
  kiln_tensor *ya[2], *yb[2];
  assert_int_equal(kiln_exec_run(fused, (const kiln_tensor *const *)&in, 1, ya, 2), KILN_OK);
  assert_int_equal(kiln_exec_run(plain, (const kiln_tensor *const *)&in, 1, yb, 2), KILN_OK);
  for (int i = 0; i < 2; i++) assert_int_equal(compare_tensors("fused vs unfused", ya[i], yb[i], 1e-6, 1e-6), 0);
  assert_int_equal(check_graph("fusion", g, &in, 1, 1e-5, 1e-6), 0);
  for (int i = 0; i < 2; i++) kiln_tensor_free(ya[i]), kiln_tensor_free(yb[i]);
  kiln_tensor_free(in);
  kiln_exec_free(fused), kiln_exec_free(plain);
  kiln_graph_free(g);
}

/* The transpose kernels of g's schedule with the passes in `disable` off. */
static int transpose_kernels(const kiln_graph *g, const char *disable) {
  char *text;
  assert_int_equal(kiln_schedule_text(g, disable, &text), KILN_OK);
  int count = 0;
  for (const char *p = text; (p = strstr(p, " transpose;")) != NULL; p++) count++;
  free(text);
  return count;
}

/* An NCHW network's train step (convolutions with bias and ReLU, pooling, a channel
 * concat, a global average, a dense layer, cross-entropy and every gradient): the
 * layout pass keeps the activations NHWC between the convolutions (only the input,
 * the filters, the flatten and their gradients keep transposes) and the results
 * equal the evaluator's and the build without the pass. */
static void test_layout_keeps_conv_chains_nhwc(void **s) {
  (void)s;
  kiln_graph *g = kiln_graph_new();
  kiln_value x = kiln_placeholder(g, "x", KILN_F32, KILN_SHAPE(2, 3, 8, 8));
  kiln_value w[6] = {kiln_placeholder(g, "w1", KILN_F32, KILN_SHAPE(4, 3, 3, 3)), kiln_placeholder(g, "b1", KILN_F32, KILN_SHAPE(4, 1, 1)),
                     kiln_placeholder(g, "w2", KILN_F32, KILN_SHAPE(5, 8, 3, 3)), kiln_placeholder(g, "b2", KILN_F32, KILN_SHAPE(5, 1, 1)),
                     kiln_placeholder(g, "wd", KILN_F32, KILN_SHAPE(25, 3)), kiln_placeholder(g, "labels", KILN_F32, KILN_SHAPE(2, 3))};
  kiln_conv2d_opts co = {.layout = KILN_NCHW, .padding = KILN_PAD_SAME};
  kiln_pool2d_opts po = {.layout = KILN_NCHW, .window = {2, 2}};
  kiln_value h = kiln_relu(g, kiln_add(g, kiln_conv2d(g, x, w[0], &co), w[1]));
  h = kiln_concat(g, (kiln_value[]){h, kiln_sigmoid(g, h)}, 2, 1);
  h = kiln_max_pool2d(g, h, &po);
  h = kiln_tanh(g, kiln_add(g, kiln_conv2d(g, h, w[2], &co), w[3]));
  kiln_value gap = kiln_reduce_mean(g, h, (int64_t[]){2, 3}, 2, false); /* [2, 5] */
  h = kiln_reshape(g, kiln_max_pool2d(g, h, &po), KILN_SHAPE(2, 20));
  kiln_value logits = kiln_matmul(g, kiln_concat(g, (kiln_value[]){h, gap}, 2, 1), w[4], false, false);
  kiln_value loss = kiln_neg(g, kiln_reduce_mean(g, kiln_mul(g, w[5], kiln_log_softmax(g, logits, -1)), NULL, 0, false));
  kiln_value grads[5];
  assert_int_equal(kiln_gradients(g, loss, w, 5, grads), KILN_OK);
  kiln_output(g, "loss", loss);
  const char *names[5] = {"dw1", "db1", "dw2", "db2", "dwd"};
  for (int i = 0; i < 5; i++) kiln_output(g, names[i], grads[i]);
  kiln_output(g, "dx", kiln_tanh(g, h)); /* an activation read after the flatten's transpose */
  assert_int_equal(kiln_graph_status(g), KILN_OK);
  int with = transpose_kernels(g, NULL), without = transpose_kernels(g, "layout");
  printf("    transpose kernels: %d with the layout pass, %d without\n", with, without);
  if (with > 8 || without < 2 * with) fail_msg("layout left %d transpose kernels (%d without)", with, without);
  trng r = {21};
  kiln_tensor *in[7];
  assert_int_equal(kiln_graph_num_inputs(g), 7);
  assert_int_equal(kiln_graph_input(g, 7).id, KILN_NONE);
  for (int i = 0; i < 7; i++) {
    kiln_shape sh = kiln_value_shape(g, kiln_graph_input(g, (size_t)i));
    in[i] = random_tensor(&r, KILN_F32, sh.rank, sh.dims, -1, 1);
  }
  assert_true(kiln_tensor_rank(in[6]) == 2 && kiln_tensor_dims(in[6])[1] == 3); /* the labels */
  assert_int_equal(check_graph("layout", g, in, 7, 1e-4, 1e-5), 0);
  kiln_exec *a, *b;
  kiln_compile_options off = {.disable_passes = "layout"};
  assert_int_equal(kiln_compile(g, NULL, &a), KILN_OK);
  assert_int_equal(kiln_compile(g, &off, &b), KILN_OK);
  kiln_tensor *ya[7], *yb[7];
  assert_int_equal(kiln_exec_run(a, (const kiln_tensor *const *)in, 7, ya, 7), KILN_OK);
  assert_int_equal(kiln_exec_run(b, (const kiln_tensor *const *)in, 7, yb, 7), KILN_OK);
  for (int i = 0; i < 7; i++) assert_int_equal(compare_tensors("layout vs none", ya[i], yb[i], 1e-5, 1e-6), 0);
  for (int i = 0; i < 7; i++) kiln_tensor_free(ya[i]), kiln_tensor_free(yb[i]), kiln_tensor_free(in[i]);
  kiln_exec_free(a), kiln_exec_free(b);
  kiln_graph_free(g);
}

/* Constant OIHW filters (an ONNX model's) too big to fold as values are still stored
 * once in the HWIO layout the convolution reads: no per-run weight transpose. */
static void test_constant_filters_fold_to_hwio(void **s) {
  (void)s;
  trng r = {5};
  kiln_tensor *w = random_tensor(&r, KILN_F32, 4, (int64_t[]){32, 16, 3, 3}, -1, 1);
  kiln_graph *g = kiln_graph_new();
  kiln_value x = kiln_placeholder(g, "x", KILN_F32, KILN_SHAPE(2, 16, 6, 6));
  kiln_conv2d_opts co = {.layout = KILN_NCHW, .padding = KILN_PAD_SAME};
  kiln_output(g, "y", kiln_conv2d(g, x, kiln_constant(g, KILN_F32, KILN_SHAPE(32, 16, 3, 3), kiln_tensor_cdata(w)), &co));
  int folded = transpose_kernels(g, NULL), unfolded = transpose_kernels(g, "fold");
  if (folded != 2 || unfolded != 3) fail_msg("%d transpose kernels (%d without folding): want the input's and the output's", folded, unfolded);
  kiln_tensor *in = random_tensor(&r, KILN_F32, 4, (int64_t[]){2, 16, 6, 6}, -1, 1);
  assert_int_equal(check_graph("constant filters", g, &in, 1, 1e-5, 1e-5), 0);
  kiln_tensor_free(in), kiln_tensor_free(w);
  kiln_graph_free(g);
}

/* Constant weights a matmul reads transposed (an ONNX Gemm's [N, K]) are stored
 * untransposed once, so batch-1 rows read them row-major, also when several such
 * matmuls read them (an LSTM's steps); weights with another reader stay as they
 * are. Against the evaluator at 1 and 5 rows. */
static void test_constant_weights_stored_untransposed(void **s) {
  (void)s;
  trng r = {6};
  kiln_tensor *w = random_tensor(&r, KILN_F32, 2, (int64_t[]){37, 50}, -1, 1);
  for (int shared = 0; shared < 2; shared++)
    for (int64_t m = 1; m <= 5; m += 4) {
      kiln_graph *g = kiln_graph_new();
      kiln_value x = kiln_placeholder(g, "x", KILN_F32, KILN_SHAPE(m, 50));
      kiln_value wc = kiln_constant(g, KILN_F32, KILN_SHAPE(37, 50), kiln_tensor_cdata(w));
      kiln_output(g, "y", kiln_matmul(g, x, wc, false, true));
      kiln_output(g, "y2", kiln_matmul(g, kiln_sin(g, x), wc, false, true));
      if (shared) kiln_output(g, "w2", kiln_mul(g, wc, wc));
      char *text = NULL;
      assert_int_equal(kiln_schedule_text(g, NULL, &text), KILN_OK);
      if ((strstr(text, "transpose_b=1") != NULL) != shared)
        fail_msg("%s weights: transpose_b %s:\n%s", shared ? "shared" : "own", shared ? "dropped" : "kept", text);
      free(text);
      kiln_tensor *in = random_tensor(&r, KILN_F32, 2, (int64_t[]){m, 50}, -1, 1);
      assert_int_equal(check_graph("transposed constant weights", g, &in, 1, 1e-5, 1e-5), 0);
      kiln_tensor_free(in);
      kiln_graph_free(g);
    }
  kiln_tensor_free(w);
}

/* An NCHW convolution's Flatten before a Dense with constant weights (every ONNX CNN):
 * the flatten's transpose back to NCHW moves into the weights' rows, once, so the
 * schedule keeps only the input's transpose; weights that are a run-time input keep
 * it. Against the evaluator at 1 and 3 images. */
static void test_flatten_transpose_moves_into_weights(void **s) {
  (void)s;
  trng r = {8};
  kiln_tensor *wc = random_tensor(&r, KILN_F32, 4, (int64_t[]){6, 2, 3, 3}, -1, 1);
  kiln_tensor *wd = random_tensor(&r, KILN_F32, 2, (int64_t[]){6 * 4 * 5, 7}, -1, 1);
  for (int constant = 0; constant < 2; constant++)
    for (int64_t batch = 1; batch <= 3; batch += 2) {
      kiln_graph *g = kiln_graph_new();
      kiln_value x = kiln_placeholder(g, "x", KILN_F32, KILN_SHAPE(batch, 2, 8, 10));
      kiln_conv2d_opts co = {.layout = KILN_NCHW, .padding = KILN_PAD_SAME};
      kiln_pool2d_opts po = {.layout = KILN_NCHW, .window = {2, 2}};
      kiln_value h = kiln_max_pool2d(g, kiln_relu(g, kiln_conv2d(g, x, kiln_constant(g, KILN_F32, KILN_SHAPE(6, 2, 3, 3), kiln_tensor_cdata(wc)), &co)), &po);
      kiln_value w = constant ? kiln_constant(g, KILN_F32, KILN_SHAPE(120, 7), kiln_tensor_cdata(wd))
                              : kiln_placeholder(g, "wd", KILN_F32, KILN_SHAPE(120, 7));
      kiln_output(g, "y", kiln_matmul(g, kiln_reshape(g, h, KILN_SHAPE(batch, 120)), w, false, false));
      assert_int_equal(kiln_graph_status(g), KILN_OK);
      int transposes = transpose_kernels(g, NULL);
      if (transposes != (constant ? 1 : 2))
        fail_msg("%s weights, batch %lld: %d transpose kernels", constant ? "constant" : "input", (long long)batch, transposes);
      kiln_tensor *in[2] = {random_tensor(&r, KILN_F32, 4, (int64_t[]){batch, 2, 8, 10}, -1, 1), wd};
      assert_int_equal(check_graph("flatten into weights", g, in, constant ? 1 : 2, 1e-5, 1e-5), 0);
      kiln_tensor_free(in[0]);
      kiln_graph_free(g);
    }
  kiln_tensor_free(wc), kiln_tensor_free(wd);
}

/* A profiled exec counts every run of every kernel and names them (the dense layer,
 * an output, is one kernel after its matmul; its row sum another); without profile
 * it is an error. */
static void test_profile_counts_kernels(void **s) {
  (void)s;
  kiln_graph *g = kiln_graph_new();
  kiln_value x = kiln_placeholder(g, "x", KILN_F32, KILN_SHAPE(KILN_DYN, 64)), w = kiln_placeholder(g, "w", KILN_F32, KILN_SHAPE(64, 32));
  kiln_value b = kiln_placeholder(g, "b", KILN_F32, KILN_SHAPE(32));
  kiln_value h = kiln_relu(g, kiln_add(g, kiln_matmul(g, x, w, false, false), kiln_broadcast_to(g, b, KILN_SHAPE(KILN_DYN, 32))));
  kiln_output(g, "h", h);
  kiln_output(g, "s", kiln_reduce_sum(g, h, (int64_t[]){1}, 1, false));
  trng r = {3};
  kiln_tensor *in[3] = {random_tensor(&r, KILN_F32, 2, (int64_t[]){8, 64}, -1, 1), random_tensor(&r, KILN_F32, 2, (int64_t[]){64, 32}, -1, 1),
                        random_tensor(&r, KILN_F32, 1, (int64_t[]){32}, -1, 1)};
  kiln_exec *e = NULL;
  char *text = NULL;
  assert_int_equal(kiln_compile(g, NULL, &e), KILN_OK);
  assert_int_equal(kiln_exec_profile(e, &text), KILN_ERR_INVALID);
  assert_non_null(strstr(kiln_errmsg(), "without profile"));
  kiln_exec_free(e);
  kiln_compile_options o = {.profile = true};
  assert_int_equal(kiln_compile(g, &o, &e), KILN_OK);
  assert_int_equal(kiln_exec_profile(e, &text), KILN_ERR_INVALID); /* batch not known yet */
  for (int i = 0; i < 3; i++) {
    kiln_tensor *y[2] = {NULL, NULL};
    assert_int_equal(kiln_exec_run(e, (const kiln_tensor *const *)in, 3, y, 2), KILN_OK);
    kiln_tensor_free(y[0]), kiln_tensor_free(y[1]);
  }
  assert_int_equal(kiln_exec_profile(e, &text), KILN_OK);
  if (!strstr(text, "kiln profile: 2 kernels, 3 runs") || !strstr(text, " matmul f32[8,32]") || !strstr(text, "relu after %") ||
      !strstr(text, "reduce_sum f32[8]"))
    fail_msg("unexpected profile:\n%s", text);
  free(text);
  for (int i = 0; i < 3; i++) kiln_tensor_free(in[i]);
  kiln_exec_free(e);
  kiln_graph_free(g);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_loops_vectorize_with_fma),
      cmocka_unit_test(test_transcendental_error_bounds),
      cmocka_unit_test(test_exp_log_special_values),
      cmocka_unit_test(test_batch_specialisation),
      cmocka_unit_test(test_generic_cpu),
      cmocka_unit_test(test_memory_plan_reuses_buffers),
      cmocka_unit_test(test_fusion_merges_kernels),
      cmocka_unit_test(test_layout_keeps_conv_chains_nhwc),
      cmocka_unit_test(test_flatten_transpose_moves_into_weights),
      cmocka_unit_test(test_constant_filters_fold_to_hwio),
      cmocka_unit_test(test_constant_weights_stored_untransposed),
      cmocka_unit_test(test_profile_counts_kernels),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

/* GEMM and threading: every transpose combination, batched, on sizes that are not
 * multiples of the register tile (edge rows, edge columns, K not a multiple of
 * the K block, the unpacked few-row path), against the reference evaluator; and
 * bit-identical results for any thread count. */
#include "harness.h"
#include "runtime/thread_pool.h"
#include <stdlib.h>
#include <string.h>

/* Compiles g with `threads` and runs it on inputs; the caller frees *out. */
static void run_threads(const kiln_graph *g, int threads, kiln_tensor **inputs, size_t nin, kiln_tensor **out) {
  kiln_compile_options o = {.threads = threads};
  kiln_exec *e = NULL;
  if (kiln_compile(g, &o, &e) != KILN_OK) fail_msg("compile: %s", kiln_errmsg());
  if (kiln_exec_run(e, (const kiln_tensor *const *)inputs, nin, out, 1) != KILN_OK) fail_msg("run: %s", kiln_errmsg());
  kiln_exec_free(e);
}

static void check_matmul(trng *r, kiln_dtype t, int64_t batch, int64_t M, int64_t N, int64_t K, bool ta, bool tb) {
  char what[128];
  snprintf(what, sizeof what, "%s batch %lld %lldx%lldx%lld ta=%d tb=%d", kiln_dtype_name(t), (long long)batch,
           (long long)M, (long long)N, (long long)K, ta, tb);
  int64_t adims[3] = {batch, ta ? K : M, ta ? M : K}, bdims[3] = {batch, tb ? N : K, tb ? K : N};
  int rank = batch > 1 ? 3 : 2;
  const int64_t *ad = batch > 1 ? adims : adims + 1, *bd = batch > 1 ? bdims : bdims + 1;
  kiln_graph *g = kiln_graph_new();
  kiln_shape as = {.rank = rank}, bs = {.rank = rank};
  memcpy(as.dims, ad, sizeof(int64_t) * (size_t)rank);
  memcpy(bs.dims, bd, sizeof(int64_t) * (size_t)rank);
  kiln_value a = kiln_placeholder(g, "a", t, as), b = kiln_placeholder(g, "b", t, bs);
  kiln_output(g, "c", kiln_matmul(g, a, b, ta, tb));
  assert_int_equal(kiln_graph_status(g), KILN_OK);
  kiln_tensor *in[2] = {random_tensor(r, t, rank, ad, -1, 1), random_tensor(r, t, rank, bd, -1, 1)};
  kiln_tensor *ref = NULL, *one = NULL, *three = NULL;
  assert_int_equal(kiln_evaluate(g, (const kiln_tensor *const *)in, 2, &ref, 1), KILN_OK);
  run_threads(g, 1, in, 2, &one);
  run_threads(g, 3, in, 2, &three); /* an odd split of rows or columns */
  /* f32 sums of K products in another order: a few ulps of the sum's magnitude */
  double tol = t == KILN_F32 ? 1e-5 * (double)(K + 1) : 1e-12 * (double)(K + 1);
  if (compare_tensors(what, one, ref, tol, tol)) fail_msg("%s differs from the reference", what);
  if (memcmp(kiln_tensor_cdata(one), kiln_tensor_cdata(three), kiln_tensor_nbytes(one)))
    fail_msg("%s: 1 and 3 threads do not give identical bits", what);
  kiln_tensor_free(in[0]), kiln_tensor_free(in[1]);
  kiln_tensor_free(ref), kiln_tensor_free(one), kiln_tensor_free(three);
  kiln_graph_free(g);
}

static void test_matmul_edges_and_transposes(void **s) {
  (void)s;
  static const int64_t shapes[][3] = {
      {1, 1, 1},    {1, 300, 784}, {3, 40, 5},     {5, 17, 3},     {11, 33, 7},  {12, 32, 256},
      {13, 31, 257}, {25, 100, 300}, {24, 64, 512}, {130, 65, 513}, {37, 129, 2}, {200, 7, 40}, {7, 260, 33},
      {37, 1, 300}, {5, 1, 7},  {1, 1, 40},   {203, 1, 64}, /* one column: the dot path (K tails, row remainders) */
  };
  trng r = {7};
  for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
    for (int tr = 0; tr < 4; tr++)
      check_matmul(&r, KILN_F32, 1, shapes[i][0], shapes[i][1], shapes[i][2], tr & 1, tr & 2);
  for (int tr = 0; tr < 4; tr++) {
    check_matmul(&r, KILN_F32, 3, 14, 35, 20, tr & 1, tr & 2);
    check_matmul(&r, KILN_F32, 4, 2, 17, 9, tr & 1, tr & 2);
    check_matmul(&r, KILN_F64, 2, 29, 19, 300, tr & 1, tr & 2);
    check_matmul(&r, KILN_I32, 2, 13, 33, 11, tr & 1, tr & 2);
    check_matmul(&r, KILN_F64, 2, 29, 1, 35, tr & 1, tr & 2);
    check_matmul(&r, KILN_I32, 3, 13, 1, 33, tr & 1, tr & 2);
  }
}

/* Runs g on its nin inputs (freed here) on 1, 2 and 3 threads: equal to the reference
 * evaluator and bit-identical across thread counts. */
static void check_inputs_threads(kiln_graph *g, kiln_tensor **in, size_t nin, const char *what, double atol) {
  kiln_tensor *ref = NULL, *one = NULL, *two = NULL, *three = NULL;
  assert_int_equal(kiln_evaluate(g, (const kiln_tensor *const *)in, nin, &ref, 1), KILN_OK);
  run_threads(g, 1, in, nin, &one);
  run_threads(g, 2, in, nin, &two);
  run_threads(g, 3, in, nin, &three);
  assert_int_equal(compare_tensors(what, one, ref, 1e-5, atol), 0);
  assert_memory_equal(kiln_tensor_cdata(one), kiln_tensor_cdata(two), kiln_tensor_nbytes(one));
  assert_memory_equal(kiln_tensor_cdata(one), kiln_tensor_cdata(three), kiln_tensor_nbytes(one));
  for (size_t i = 0; i < nin; i++) kiln_tensor_free(in[i]);
  kiln_tensor_free(ref), kiln_tensor_free(one), kiln_tensor_free(two), kiln_tensor_free(three);
}

/* check_inputs_threads for inputs x and a second operand of shape d1. */
static void check_threads(trng *r, kiln_graph *g, const int64_t xd[4], const int64_t d1[4], const char *what, double atol) {
  kiln_tensor *in[2] = {random_tensor(r, KILN_F32, 4, xd, -1, 1), random_tensor(r, KILN_F32, 4, d1, -1, 1)};
  check_inputs_threads(g, in, 2, what, atol);
}

static kiln_shape shape4(const int64_t d[4]) { return (kiln_shape){.rank = 4, .dims = {d[0], d[1], d[2], d[3]}}; }

/* conv2d(x, w), then its filter gradient for a dy of the output's shape. */
static void check_conv(trng *r, const int64_t xd[4], const int64_t wd[4], const kiln_conv2d_opts *o) {
  kiln_graph *g = kiln_graph_new();
  kiln_value x = kiln_placeholder(g, "x", KILN_F32, shape4(xd)), w = kiln_placeholder(g, "w", KILN_F32, shape4(wd));
  kiln_value y = kiln_conv2d(g, x, w, o);
  kiln_output(g, "y", y);
  assert_int_equal(kiln_graph_status(g), KILN_OK);
  check_threads(r, g, xd, wd, "conv", 1e-5);
  kiln_shape ys = kiln_value_shape(g, y);
  kiln_graph_free(g);
  g = kiln_graph_new();
  x = kiln_placeholder(g, "x", KILN_F32, shape4(xd));
  kiln_value dy = kiln_placeholder(g, "dy", KILN_F32, ys);
  kiln_output(g, "dw", kiln_conv2d_filter_grad(g, x, dy, wd[0], wd[1], o));
  assert_int_equal(kiln_graph_status(g), KILN_OK);
  /* f32 sums of one term per output pixel, each |term| <= 1: error up to pixels * eps */
  double pixels = (double)(ys.dims[0] * ys.dims[1] * ys.dims[2]);
  check_threads(r, g, xd, ys.dims, "conv filter gradient", pixels * 6e-8);
  kiln_graph_free(g);
}

/* Convolutions run im2col + GEMM over chunks of output pixels, as many chunks as
 * the threads need: odd sizes, strides, padding, groups; a 4x32x32 output with a
 * 3x3x16 filter (2.3 MiB of im2col: a whole chunk and a remainder); 74 pixels with
 * K = 576 > one K slice, which 3 threads cut into 36 + 36 + 2 rows (a 2-row GEMM
 * must sum like the 74-row one of 1 thread; 2 and 3 threads build its im2col panel
 * together and split one GEMM by columns). Filter gradients sum chunks in parts, one
 * per 256 pixels, with a short last chunk: 4x32x32 and 64x64 pixels have 8 and 7
 * parts; 231 pixels in 2 groups one; 74 and 49 pixels (one group) are one GEMM over
 * the whole im2col panel, its filter rows split between the threads. */
static void test_conv_threads(void **s) {
  (void)s;
  trng r = {11};
  kiln_conv2d_opts odd = {.strides = {2, 1}, .padding = KILN_PAD_EXPLICIT, .pads = {1, 1, 1, 0}, .groups = 2};
  check_conv(&r, (int64_t[]){3, 13, 11, 6}, (int64_t[]){3, 3, 3, 10}, &odd);
  check_conv(&r, (int64_t[]){4, 34, 34, 16}, (int64_t[]){3, 3, 16, 8}, &(kiln_conv2d_opts){.padding = KILN_PAD_VALID});
  check_conv(&r, (int64_t[]){2, 37, 1, 64}, (int64_t[]){3, 3, 64, 32}, &(kiln_conv2d_opts){.padding = KILN_PAD_SAME});
  check_conv(&r, (int64_t[]){1, 64, 64, 128}, (int64_t[]){3, 3, 128, 4}, &(kiln_conv2d_opts){.padding = KILN_PAD_SAME});
  check_conv(&r, (int64_t[]){1, 7, 7, 64}, (int64_t[]){3, 3, 64, 136}, &(kiln_conv2d_opts){.padding = KILN_PAD_SAME});
}

/* Small filters (kh*kw*in-channels <= 24) convolve directly from a zero-padded copy:
 * a first layer on grey images, stride and dilation with out-channel blocks of 2
 * vectors and a 1-vector tail (48 channels, 9 taps), no padding (no copy), and 24
 * taps (one vector per block). */
static void test_conv_small_filters(void **s) {
  (void)s;
  trng r = {13};
  check_conv(&r, (int64_t[]){9, 28, 28, 1}, (int64_t[]){3, 3, 1, 32}, &(kiln_conv2d_opts){.padding = KILN_PAD_SAME});
  kiln_conv2d_opts strided = {.strides = {2, 1}, .dilations = {1, 2}, .padding = KILN_PAD_EXPLICIT, .pads = {2, 0, 1, 3}};
  check_conv(&r, (int64_t[]){3, 17, 15, 1}, (int64_t[]){3, 3, 1, 48}, &strided);
  check_conv(&r, (int64_t[]){2, 12, 13, 3}, (int64_t[]){2, 3, 3, 16}, &(kiln_conv2d_opts){.padding = KILN_PAD_VALID});
  check_conv(&r, (int64_t[]){2, 9, 10, 6}, (int64_t[]){2, 2, 6, 32}, &(kiln_conv2d_opts){.padding = KILN_PAD_SAME});
}

/* Whether g's schedule has a convolution reading an unslice without storing it. */
static bool conv_reads_unslice(const kiln_graph *g) {
  char *text = NULL;
  assert_int_equal(kiln_schedule_text(g, NULL, &text), KILN_OK);
  bool found = false;
  for (char *line = strtok(text, "\n"); line && !found; line = strtok(NULL, "\n"))
    found = strstr(line, "conv2d fuses") && strstr(line, "unslice");
  free(text);
  return found;
}

/* Whether g's schedule spreads a convolution's result out (an unslice kernel reading a
 * conv2d kernel): a strided 1x1 convolution's input gradient mixes dy's channels first. */
static bool unslice_after_conv(const kiln_graph *g) {
  char *text = NULL, conv[32] = "", want[48];
  assert_int_equal(kiln_schedule_text(g, NULL, &text), KILN_OK);
  unsigned id;
  for (const char *at = strstr(text, "kernel %"); at && !*conv; at = strstr(at + 1, "kernel %"))
    if (sscanf(at, "kernel %%%u conv2d", &id) == 1 && !strncmp(strchr(at + 8, ' '), " conv2d", 7)) snprintf(conv, sizeof conv, "%%%u", id);
  snprintf(want, sizeof want, "unslice; reads %s\n", conv);
  bool found = *conv && strstr(text, want);
  free(text);
  return found;
}

/* The input gradient of conv2d(x, w) for a dy of the output's shape, as autodiff builds it. */
static void check_conv_input_grad(trng *r, const int64_t xd[4], const int64_t wd[4], const kiln_conv2d_opts *o) {
  kiln_graph *g = kiln_graph_new();
  kiln_value x = kiln_placeholder(g, "x", KILN_F32, shape4(xd)), w = kiln_placeholder(g, "w", KILN_F32, shape4(wd));
  kiln_value y = kiln_conv2d(g, x, w, o), dx;
  kiln_shape ys = kiln_value_shape(g, y);
  kiln_value dy = kiln_placeholder(g, "dy", KILN_F32, ys);
  assert_int_equal(kiln_gradients(g, kiln_reduce_sum(g, kiln_mul(g, y, dy), NULL, 0, false), &x, 1, &dx), KILN_OK);
  kiln_output(g, "dx", dx);
  assert_int_equal(kiln_graph_status(g), KILN_OK);
  /* a strided depthwise layer's dy is read in place, phase by phase (conv_depthwise.c) */
  bool depthwise = o->groups > 1 && o->groups == xd[3] && wd[2] == 1, strided = o->strides[0] > 1 || o->strides[1] > 1;
  bool dilated = o->dilations[0] > 1 || o->dilations[1] > 1, pointwise = wd[0] == 1 && wd[1] == 1;
  bool in_place = depthwise && strided && !dilated && !pointwise;
  if (conv_reads_unslice(g) != in_place)
    fail_msg("the depthwise input gradient %s dy's spread copy", in_place ? "stores" : "skips");
  /* (the cases here have no top or left padding at 1x1) */
  if (unslice_after_conv(g) != (strided && pointwise))
    fail_msg("a strided 1x1 input gradient %s", strided && pointwise ? "mixes the spread dy" : "spreads its result");
  /* other strided, undilated ones convolve dy phase by phase: no spread copy at all */
  char *text = NULL;
  assert_int_equal(kiln_schedule_text(g, NULL, &text), KILN_OK);
  bool phases = strided && !dilated && !pointwise && !depthwise;
  if (phases && strstr(text, "unslice")) fail_msg("a strided input gradient spreads dy out:\n%s", text);
  free(text);
  kiln_tensor *in[3] = {random_tensor(r, KILN_F32, 4, xd, -1, 1), random_tensor(r, KILN_F32, 4, wd, -1, 1),
                        random_tensor(r, KILN_F32, 4, ys.dims, -1, 1)};
  check_inputs_threads(g, in, 3, "conv input gradient", 1e-5);
  kiln_graph_free(g);
}

/* Depthwise convolutions (groups = channels) take conv_depthwise.c: channel counts
 * of several vectors, blocks and a part-vector tail (40, 19, 144), strides,
 * dilations and uneven padding, a 5x5 filter (25 taps of sums for the filter
 * gradient), no padding, a 1x1 filter, and output widths with pixel remainders;
 * the input gradient is a depthwise convolution of dy. */
static void test_conv_depthwise(void **s) {
  (void)s;
  trng r = {29};
  kiln_conv2d_opts same = {.padding = KILN_PAD_SAME, .groups = 40};
  check_conv(&r, (int64_t[]){2, 13, 11, 40}, (int64_t[]){3, 3, 1, 40}, &same);
  check_conv_input_grad(&r, (int64_t[]){2, 13, 11, 40}, (int64_t[]){3, 3, 1, 40}, &same);
  kiln_conv2d_opts odd = {.strides = {2, 1}, .dilations = {1, 2}, .padding = KILN_PAD_EXPLICIT, .pads = {2, 0, 1, 3}, .groups = 19};
  check_conv(&r, (int64_t[]){3, 17, 15, 19}, (int64_t[]){3, 3, 1, 19}, &odd);
  check_conv_input_grad(&r, (int64_t[]){3, 17, 15, 19}, (int64_t[]){3, 3, 1, 19}, &odd);
  kiln_conv2d_opts valid = {.padding = KILN_PAD_VALID, .groups = 144};
  check_conv(&r, (int64_t[]){2, 12, 9, 144}, (int64_t[]){5, 5, 1, 144}, &valid);
  kiln_conv2d_opts stride2 = {.strides = {2, 2}, .padding = KILN_PAD_SAME, .groups = 96};
  check_conv(&r, (int64_t[]){4, 28, 28, 96}, (int64_t[]){3, 3, 1, 96}, &stride2);
  check_conv_input_grad(&r, (int64_t[]){4, 28, 28, 96}, (int64_t[]){3, 3, 1, 96}, &stride2);
  check_conv(&r, (int64_t[]){1, 4, 5, 8}, (int64_t[]){1, 1, 1, 8}, &(kiln_conv2d_opts){.padding = KILN_PAD_VALID, .groups = 8});
  /* strided input gradients, read from dy phase by phase: stride 3 with a 5x5 filter
   * (phases of 2 and 1 taps), strides (1, 2) and (2, 3) with uneven padding, no
   * padding, a 1x1 filter at stride 2 (phases that meet no pixel of dy: zeros), a
   * 2x2 filter, and odd sizes whose last output phases are short */
  kiln_conv2d_opts s3 = {.strides = {3, 3}, .padding = KILN_PAD_SAME, .groups = 24};
  check_conv_input_grad(&r, (int64_t[]){2, 16, 17, 24}, (int64_t[]){5, 5, 1, 24}, &s3);
  kiln_conv2d_opts s12 = {.strides = {1, 2}, .padding = KILN_PAD_EXPLICIT, .pads = {0, 2, 1, 0}, .groups = 19};
  check_conv_input_grad(&r, (int64_t[]){3, 9, 14, 19}, (int64_t[]){3, 3, 1, 19}, &s12);
  kiln_conv2d_opts s23 = {.strides = {2, 3}, .padding = KILN_PAD_EXPLICIT, .pads = {1, 0, 2, 2}, .groups = 40};
  check_conv_input_grad(&r, (int64_t[]){2, 11, 13, 40}, (int64_t[]){3, 3, 1, 40}, &s23);
  kiln_conv2d_opts valid2 = {.strides = {2, 2}, .padding = KILN_PAD_VALID, .groups = 144};
  check_conv_input_grad(&r, (int64_t[]){2, 15, 15, 144}, (int64_t[]){3, 3, 1, 144}, &valid2);
  kiln_conv2d_opts one2 = {.strides = {2, 2}, .padding = KILN_PAD_VALID, .groups = 32};
  check_conv_input_grad(&r, (int64_t[]){1, 7, 8, 32}, (int64_t[]){1, 1, 1, 32}, &one2);
  kiln_conv2d_opts two2 = {.strides = {2, 2}, .padding = KILN_PAD_SAME, .groups = 48};
  check_conv_input_grad(&r, (int64_t[]){2, 10, 9, 48}, (int64_t[]){2, 2, 1, 48}, &two2);
}

/* Strided convolutions' input gradients, phase by phase: ResNet's 3x3 stride 2, a
 * 5x5 at stride 3 (phases of 2 and 1 taps), strides (2, 1) with uneven padding,
 * groups, a 2x2 filter at stride 3 (phases no tap meets: zeros), and sizes that are
 * not multiples of the stride (the last phase rows cropped). */
static void test_conv_strided_input_grad(void **s) {
  (void)s;
  trng r = {37};
  kiln_conv2d_opts s2 = {.strides = {2, 2}, .padding = KILN_PAD_SAME};
  check_conv_input_grad(&r, (int64_t[]){2, 14, 14, 32}, (int64_t[]){3, 3, 32, 64}, &s2);
  check_conv_input_grad(&r, (int64_t[]){1, 15, 13, 8}, (int64_t[]){3, 3, 8, 16}, &s2);
  kiln_conv2d_opts s3 = {.strides = {3, 3}, .padding = KILN_PAD_EXPLICIT, .pads = {2, 1, 0, 2}};
  check_conv_input_grad(&r, (int64_t[]){2, 17, 16, 6}, (int64_t[]){5, 5, 6, 10}, &s3);
  kiln_conv2d_opts s21 = {.strides = {2, 1}, .padding = KILN_PAD_EXPLICIT, .pads = {1, 2, 2, 0}, .groups = 2};
  check_conv_input_grad(&r, (int64_t[]){3, 12, 9, 8}, (int64_t[]){3, 3, 4, 12}, &s21);
  kiln_conv2d_opts k2s3 = {.strides = {3, 3}, .padding = KILN_PAD_VALID};
  check_conv_input_grad(&r, (int64_t[]){2, 11, 10, 5}, (int64_t[]){2, 2, 5, 7}, &k2s3);
}

/* A strided 1x1 convolution's input gradient (ResNet's shortcuts) mixes dy's channels,
 * then spreads the result out: odd and even sizes, strides (2, 2) and (3, 2), groups. */
static void test_conv_strided_pointwise_input_grad(void **s) {
  (void)s;
  trng r = {31};
  kiln_conv2d_opts s2 = {.strides = {2, 2}, .padding = KILN_PAD_VALID};
  check_conv_input_grad(&r, (int64_t[]){2, 14, 14, 64}, (int64_t[]){1, 1, 64, 128}, &s2);
  check_conv_input_grad(&r, (int64_t[]){3, 9, 11, 20}, (int64_t[]){1, 1, 20, 36}, &s2);
  kiln_conv2d_opts s32 = {.strides = {3, 2}, .padding = KILN_PAD_SAME, .groups = 4};
  check_conv_input_grad(&r, (int64_t[]){2, 10, 7, 16}, (int64_t[]){1, 1, 4, 24}, &s32);
}

/* Max-pool gradients with ties (x in {0, 1}: the first maximum, row-major, takes the
 * window's gradient), overlapping windows and padding, against the evaluator and
 * across thread counts; a 2x2/2 pooling of a CNN-sized map (large enough for
 * threads); then 3 * it + x, which the compiler runs after each image's gradient (an
 * epilogue, as a ReLU mask is in a train step). Then the same windows' max and average pooling. */
static void check_pool_grad(trng *r, const int64_t xd[4], const kiln_pool2d_opts *o) {
  kiln_graph *side = kiln_graph_new();
  kiln_shape ys = kiln_value_shape(side, kiln_max_pool2d(side, kiln_placeholder(side, "x", KILN_F32, shape4(xd)), o));
  kiln_graph_free(side);
  for (int then = 0; then < 2; then++) { /* then: 3 * the gradient + x, an epilogue */
    kiln_graph *g = kiln_graph_new();
    kiln_value x = kiln_placeholder(g, "x", KILN_F32, shape4(xd)), dy = kiln_placeholder(g, "dy", KILN_F32, ys);
    kiln_value dx = kiln_max_pool2d_grad(g, x, dy, o);
    kiln_output(g, "dx", then ? kiln_add(g, kiln_mul(g, dx, kiln_scalar(g, KILN_F32, 3)), x) : dx);
    assert_int_equal(kiln_graph_status(g), KILN_OK);
    char *text = NULL;
    assert_int_equal(kiln_schedule_text(g, NULL, &text), KILN_OK);
    if (then && !strstr(text, "after %2 max_pool2d_grad")) fail_msg("no epilogue after the pool gradient:\n%s", text);
    free(text);
    int64_t n = xd[0] * xd[1] * xd[2] * xd[3];
    float *xs = malloc(sizeof *xs * (size_t)n);
    for (int64_t i = 0; i < n; i++) xs[i] = (float)trng_int(r, 0, 1);
    kiln_tensor *in[2] = {kiln_tensor_from_data(KILN_F32, 4, xd, xs, sizeof *xs * (size_t)n),
                          random_tensor(r, KILN_F32, 4, ys.dims, -1, 1)};
    free(xs);
    kiln_tensor *ref = NULL, *one = NULL, *two = NULL;
    assert_int_equal(kiln_evaluate(g, (const kiln_tensor *const *)in, 2, &ref, 1), KILN_OK);
    run_threads(g, 1, in, 2, &one);
    run_threads(g, 2, in, 2, &two);
    assert_int_equal(compare_tensors("max_pool2d_grad", one, ref, 1e-6, 1e-6), 0);
    assert_memory_equal(kiln_tensor_cdata(one), kiln_tensor_cdata(two), kiln_tensor_nbytes(one));
    kiln_tensor_free(in[0]), kiln_tensor_free(in[1]);
    kiln_tensor_free(ref), kiln_tensor_free(one), kiln_tensor_free(two);
    kiln_graph_free(g);
  }
  /* the forward poolings: windows inside the input in registers, the others clipped */
  kiln_graph *g = kiln_graph_new();
  kiln_value a = kiln_placeholder(g, "a", KILN_F32, shape4(xd)), b = kiln_placeholder(g, "b", KILN_F32, shape4(xd));
  kiln_output(g, "y", kiln_add(g, kiln_max_pool2d(g, a, o), kiln_avg_pool2d(g, b, o)));
  assert_int_equal(kiln_graph_status(g), KILN_OK);
  check_threads(r, g, xd, xd, "pooling", 1e-6);
  kiln_graph_free(g);
}

static void test_max_pool_grad(void **s) {
  (void)s;
  trng r = {17};
  check_pool_grad(&r, (int64_t[]){3, 9, 8, 5}, &(kiln_pool2d_opts){.window = {3, 3}, .strides = {1, 1}, .padding = KILN_PAD_SAME});
  check_pool_grad(&r, (int64_t[]){2, 7, 9, 3},
                  &(kiln_pool2d_opts){.window = {2, 3}, .strides = {2, 2}, .padding = KILN_PAD_EXPLICIT, .pads = {1, 0, 0, 1}});
  check_pool_grad(&r, (int64_t[]){4, 28, 28, 32}, &(kiln_pool2d_opts){.window = {2, 2}, .strides = {2, 2}});
  /* one image, split by output rows between the threads (ResNet's first pool) */
  check_pool_grad(&r, (int64_t[]){1, 64, 62, 32},
                  &(kiln_pool2d_opts){.window = {3, 3}, .strides = {2, 2}, .padding = KILN_PAD_EXPLICIT, .pads = {1, 1, 1, 1}});
}

/* Large element-wise kernels (a fused chain with a broadcast operand) run as ranges
 * of elements on the threads: 128,000 elements, not a whole number of ranges; large
 * movements as ranges of their first dim. */
static void test_elementwise_threads(void **s) {
  (void)s;
  trng r = {19};
  int64_t xd[4] = {4, 50, 40, 16}, wd[4] = {1, 1, 1, 16};
  kiln_graph *g = kiln_graph_new();
  kiln_value x = kiln_placeholder(g, "x", KILN_F32, shape4(xd)), w = kiln_placeholder(g, "w", KILN_F32, shape4(wd));
  kiln_output(g, "y", kiln_tanh(g, kiln_add(g, kiln_mul(g, x, w), kiln_relu(g, x))));
  assert_int_equal(kiln_graph_status(g), KILN_OK);
  check_threads(&r, g, xd, wd, "element-wise", 1e-6);
  kiln_graph_free(g);
  /* large movements run ranges of their first dim: transpose, strided slice, pad, broadcast */
  for (int kind = 0; kind < 4; kind++) {
    g = kiln_graph_new();
    x = kiln_placeholder(g, "x", KILN_F32, shape4(xd)), w = kiln_placeholder(g, "w", KILN_F32, shape4(wd));
    kiln_value xw = kiln_add(g, x, w), y;
    int64_t st[4] = {1, 3, 0, 2}, en[4] = {4, 50, 40, 16}, sp[4] = {1, 2, 1, 3}, lo[4] = {0, 1, 2, 0}, hi[4] = {1, 0, 3, 1};
    if (kind == 0) y = kiln_transpose(g, xw, (int64_t[]){2, 0, 3, 1}, 4);
    else if (kind == 1) y = kiln_slice(g, xw, st, en, sp, 4);
    else if (kind == 2) y = kiln_pad(g, xw, lo, hi, -1.5);
    else y = kiln_broadcast_to(g, kiln_reduce_sum(g, w, (int64_t[]){0}, 1, false), (kiln_shape){4, {6, 40, 50, 16}});
    kiln_output(g, "y", y);
    assert_int_equal(kiln_graph_status(g), KILN_OK);
    check_threads(&r, g, xd, wd, "movement", 1e-6);
    kiln_graph_free(g);
  }
}

/* Large reductions sum in shape-fixed parts of their first dim: reduced (parts in
 * their own buffers, 9 rows in 5 parts), kept (disjoint outputs), max and mean. */
static void check_reduce(trng *r, const int64_t xd[4], kiln_op op, const int64_t *axes, int naxes) {
  int64_t wd[4] = {1, 1, 1, xd[3]};
  kiln_graph *g = kiln_graph_new();
  kiln_value x = kiln_placeholder(g, "x", KILN_F32, shape4(xd)), w = kiln_placeholder(g, "w", KILN_F32, shape4(wd));
  kiln_value s = kiln_add(g, x, w), y;
  if (op == KILN_OP_REDUCE_SUM) y = kiln_reduce_sum(g, s, axes, naxes, false);
  else if (op == KILN_OP_REDUCE_MAX) y = kiln_reduce_max(g, s, axes, naxes, false);
  else y = kiln_reduce_mean(g, s, axes, naxes, true);
  kiln_output(g, "y", y);
  assert_int_equal(kiln_graph_status(g), KILN_OK);
  double terms = (double)(xd[0] * xd[1] * xd[2] * xd[3]) / (double)kiln_shape_numel(kiln_value_shape(g, y).rank, kiln_value_shape(g, y).dims);
  /* f32 sums of `terms` values of magnitude <= 2: error up to terms * eps * 2 */
  check_threads(r, g, xd, wd, kiln_ops[op].name, terms * 1.2e-7);
  kiln_graph_free(g);
}

static void test_reduce_threads(void **s) {
  (void)s;
  trng r = {23};
  check_reduce(&r, (int64_t[]){4, 50, 40, 16}, KILN_OP_REDUCE_SUM, (int64_t[]){0, 1, 2}, 3);
  check_reduce(&r, (int64_t[]){9, 40, 20, 16}, KILN_OP_REDUCE_SUM, (int64_t[]){0, 2}, 2);
  check_reduce(&r, (int64_t[]){4, 50, 40, 16}, KILN_OP_REDUCE_MAX, (int64_t[]){1, 2}, 2);
  check_reduce(&r, (int64_t[]){9, 40, 20, 16}, KILN_OP_REDUCE_MEAN, (int64_t[]){0, 3}, 2);
}

/* Transposes that move the input's last dimension run in tiles of those two
 * dimensions (lower.c): ragged tiles at both edges, dimensions outside the tile, a
 * 2-D transpose split by tiles between threads, one split by its first dimension,
 * 8-byte elements (tiles of 8), 4-byte integers; whole tiles are transposed in
 * registers, vector by vector. Equal to the evaluator at 1, 2 and 3 threads. */
static void check_transpose(trng *r, kiln_dtype t, int rank, const int64_t *dims, const int64_t *perm) {
  kiln_graph *g = kiln_graph_new();
  kiln_value x = kiln_placeholder(g, "x", t, (kiln_shape){.rank = rank, .dims = {dims[0], dims[1], rank > 2 ? dims[2] : 0, rank > 3 ? dims[3] : 0}});
  kiln_output(g, "y", kiln_transpose(g, x, perm, rank));
  assert_int_equal(kiln_graph_status(g), KILN_OK);
  kiln_tensor *in[1] = {random_tensor(r, t, rank, dims, -1, 1)};
  check_inputs_threads(g, in, 1, "transpose", 0);
  kiln_graph_free(g);
}

static void test_tiled_transposes(void **s) {
  (void)s;
  trng r = {31};
  check_transpose(&r, KILN_F32, 2, (int64_t[]){37, 53}, (int64_t[]){1, 0});
  check_transpose(&r, KILN_F32, 4, (int64_t[]){3, 3, 40, 33}, (int64_t[]){0, 1, 3, 2});
  check_transpose(&r, KILN_F32, 4, (int64_t[]){5, 19, 17, 21}, (int64_t[]){0, 3, 1, 2});
  check_transpose(&r, KILN_F32, 3, (int64_t[]){20, 6, 18}, (int64_t[]){2, 1, 0});
  check_transpose(&r, KILN_F32, 2, (int64_t[]){300, 257}, (int64_t[]){1, 0});
  check_transpose(&r, KILN_F32, 3, (int64_t[]){4, 130, 141}, (int64_t[]){0, 2, 1});
  check_transpose(&r, KILN_F64, 2, (int64_t[]){11, 29}, (int64_t[]){1, 0});
  check_transpose(&r, KILN_I32, 3, (int64_t[]){2, 48, 40}, (int64_t[]){0, 2, 1});
  check_transpose(&r, KILN_F64, 4, (int64_t[]){3, 3, 24, 17}, (int64_t[]){0, 1, 3, 2});
}

/* ---- epilogues ---- */

/* y = relu(p + bias) + 0.5 * res for the product p = matmul(a, b) or conv2d(a, b)
 * (b_dims[rank-1] channels: bias broadcast along the last dim), which the compiler
 * must run as one kernel: the product followed by its epilogue, piece by piece. */
static void check_epilogue(trng *r, int rank, const int64_t *ad, const int64_t *bd, const kiln_conv2d_opts *conv, bool ta,
                           bool tb, const char *what) {
  kiln_graph *g = kiln_graph_new();
  kiln_shape as = {.rank = rank}, bs = {.rank = rank};
  memcpy(as.dims, ad, sizeof(int64_t) * (size_t)rank);
  memcpy(bs.dims, bd, sizeof(int64_t) * (size_t)rank);
  kiln_value a = kiln_placeholder(g, "a", KILN_F32, as), b = kiln_placeholder(g, "b", KILN_F32, bs);
  kiln_value p = conv ? kiln_conv2d(g, a, b, conv) : kiln_matmul(g, a, b, ta, tb);
  kiln_shape ps = kiln_value_shape(g, p);
  int64_t ch = ps.dims[ps.rank - 1];
  kiln_value bias = kiln_placeholder(g, "bias", KILN_F32, KILN_SHAPE(ch)), res = kiln_placeholder(g, "res", KILN_F32, ps);
  kiln_value y = kiln_relu(g, kiln_add(g, p, kiln_broadcast_to(g, bias, ps)));
  kiln_output(g, "y", kiln_add(g, y, kiln_mul(g, res, kiln_scalar(g, KILN_F32, 0.5))));
  assert_int_equal(kiln_graph_status(g), KILN_OK);
  char *text = NULL;
  assert_int_equal(kiln_schedule_text(g, NULL, &text), KILN_OK);
  if (!strstr(text, "1 kernels,") || !strstr(text, conv ? "after %2 conv2d" : "after %2 matmul"))
    fail_msg("%s: not one kernel with an epilogue:\n%s", what, text);
  free(text);
  kiln_tensor *in[4] = {random_tensor(r, KILN_F32, rank, ad, -1, 1), random_tensor(r, KILN_F32, rank, bd, -1, 1),
                        random_tensor(r, KILN_F32, 1, &ch, -1, 1), random_tensor(r, KILN_F32, ps.rank, ps.dims, -1, 1)};
  int64_t k = conv ? bd[0] * bd[1] * bd[2] : (ta ? ad[rank - 2] : ad[rank - 1]);
  check_inputs_threads(g, in, 4, what, 1e-6 * (double)(k + 1));
  kiln_graph_free(g);
}

/* Every GEMM path finishes its pieces: packed strips after the last of several K
 * slices (and column blocks: 2050 columns are 3 tasks' worth), the few-row direct
 * path split by columns, the one-column dot path, batches; convolutions by im2col
 * chunks (groups too), the small-filter direct kernel, the depthwise kernel and
 * the pointwise GEMM; convolutions of too few pixels to chunk for the threads. */
static void test_epilogues(void **s) {
  (void)s;
  trng r = {17};
  static const int64_t mm[][3] = {{130, 65, 513}, {24, 2050, 64}, {5, 300, 40}, {7, 260, 33}, {37, 1, 300}, {1, 1, 3}};
  for (size_t i = 0; i < sizeof mm / sizeof *mm; i++)
    for (int tr = 0; tr < 4; tr++) {
      bool ta = tr & 1, tb = tr & 2;
      int64_t M = mm[i][0], N = mm[i][1], K = mm[i][2];
      check_epilogue(&r, 2, (int64_t[]){ta ? K : M, ta ? M : K}, (int64_t[]){tb ? N : K, tb ? K : N}, NULL, ta, tb, "matmul");
    }
  check_epilogue(&r, 3, (int64_t[]){3, 14, 20}, (int64_t[]){3, 20, 35}, NULL, false, false, "batched matmul");
  kiln_conv2d_opts same = {.padding = KILN_PAD_SAME};
  kiln_conv2d_opts odd = {.strides = {2, 1}, .padding = KILN_PAD_EXPLICIT, .pads = {1, 1, 1, 0}, .groups = 2};
  check_epilogue(&r, 4, (int64_t[]){4, 34, 34, 16}, (int64_t[]){3, 3, 16, 8}, &same, false, false, "conv");
  check_epilogue(&r, 4, (int64_t[]){3, 13, 11, 6}, (int64_t[]){3, 3, 3, 10}, &odd, false, false, "grouped conv");
  check_epilogue(&r, 4, (int64_t[]){9, 28, 28, 1}, (int64_t[]){3, 3, 1, 32}, &same, false, false, "direct conv");
  /* 49 pixels, fewer than a chunk per thread: one GEMM split by filter columns */
  check_epilogue(&r, 4, (int64_t[]){1, 7, 7, 64}, (int64_t[]){3, 3, 64, 136}, &same, false, false, "few-pixel conv");
  /* 15 pixels and a filter no wider than 5 x that: cut by rows of 12, so at 3 threads
   * the last has none */
  check_epilogue(&r, 4, (int64_t[]){1, 3, 5, 128}, (int64_t[]){3, 3, 128, 64}, &same, false, false, "few-pixel conv by rows");
  kiln_conv2d_opts depthwise = {.padding = KILN_PAD_SAME, .groups = 48};
  check_epilogue(&r, 4, (int64_t[]){3, 15, 13, 48}, (int64_t[]){3, 3, 1, 48}, &depthwise, false, false, "depthwise conv");
  check_epilogue(&r, 4, (int64_t[]){2, 9, 7, 16}, (int64_t[]){1, 1, 16, 24}, &same, false, false, "pointwise conv");
}

/* pool(relu(conv(x, w) + bias)) (chain) or pool(conv(x, w)): with windows that tile
 * the output and nothing else reading it, the pool's kernel runs the convolution
 * (passes/fuse.c); equal to the evaluator at 1, 2 and 3 threads and bit-equal to the
 * unfused kernels. `fused`: whether the schedule must show it. */
static void check_pooled_conv(trng *r, const int64_t xd[4], const int64_t wd[4], const kiln_conv2d_opts *conv,
                              const kiln_pool2d_opts *pool, bool avg, bool chain, bool fused, const char *what) {
  kiln_graph *g = kiln_graph_new();
  kiln_value x = kiln_placeholder(g, "x", KILN_F32, shape4(xd)), w = kiln_placeholder(g, "w", KILN_F32, shape4(wd));
  kiln_value y = kiln_conv2d(g, x, w, conv);
  kiln_shape ys = kiln_value_shape(g, y);
  kiln_value bias = kiln_placeholder(g, "bias", KILN_F32, KILN_SHAPE(wd[3]));
  if (chain) y = kiln_relu(g, kiln_add(g, y, kiln_broadcast_to(g, bias, ys)));
  kiln_value p = avg ? kiln_avg_pool2d(g, y, pool) : kiln_max_pool2d(g, y, pool);
  kiln_output(g, "y", p);
  if (!fused) kiln_output(g, "sum", kiln_reduce_sum(g, y, NULL, 0, false)); /* a second reader */
  assert_int_equal(kiln_graph_status(g), KILN_OK);
  char *text = NULL;
  assert_int_equal(kiln_schedule_text(g, NULL, &text), KILN_OK);
  char want[64];
  snprintf(want, sizeof want, "%s after %%2 conv2d", avg ? "avg_pool2d" : "max_pool2d");
  if ((strstr(text, want) != NULL) != fused) fail_msg("%s: the pool %s the convolution:\n%s", what, fused ? "does not host" : "hosts", text);
  free(text);
  kiln_tensor *in[3] = {random_tensor(r, KILN_F32, 4, xd, -1, 1), random_tensor(r, KILN_F32, 4, wd, -1, 1),
                        random_tensor(r, KILN_F32, 1, &wd[3], -1, 1)};
  kiln_tensor *ref[2] = {NULL}, *one[2] = {NULL}, *unfused[2] = {NULL}, *three[2] = {NULL};
  size_t nout = fused ? 1 : 2;
  assert_int_equal(kiln_evaluate(g, (const kiln_tensor *const *)in, 3, ref, nout), KILN_OK);
  kiln_compile_options plain = {.threads = 1, .disable_passes = "epilogue"};
  for (int t = 0; t < 3; t++) {
    kiln_compile_options o = t == 2 ? plain : (kiln_compile_options){.threads = t == 0 ? 1 : 3};
    kiln_exec *e = NULL;
    if (kiln_compile(g, &o, &e) != KILN_OK) fail_msg("%s: compile: %s", what, kiln_errmsg());
    kiln_tensor **out = t == 0 ? one : t == 1 ? three : unfused;
    if (kiln_exec_run(e, (const kiln_tensor *const *)in, 3, out, nout) != KILN_OK) fail_msg("%s: run: %s", what, kiln_errmsg());
    kiln_exec_free(e);
  }
  double atol = 1e-6 * (double)(wd[0] * wd[1] * wd[2] + 1);
  assert_int_equal(compare_tensors(what, one[0], ref[0], 1e-5, atol), 0);
  assert_memory_equal(kiln_tensor_cdata(one[0]), kiln_tensor_cdata(three[0]), kiln_tensor_nbytes(one[0]));
  assert_memory_equal(kiln_tensor_cdata(one[0]), kiln_tensor_cdata(unfused[0]), kiln_tensor_nbytes(one[0]));
  for (size_t i = 0; i < 3; i++) kiln_tensor_free(in[i]);
  for (size_t i = 0; i < nout; i++) kiln_tensor_free(ref[i]), kiln_tensor_free(one[i]), kiln_tensor_free(three[i]), kiln_tensor_free(unfused[i]);
  kiln_graph_free(g);
}

/* Pools fused after convolutions: im2col chunks of whole window rows (28x28 outputs
 * of 16 channels: several chunks per image; a 13x11 grouped, strided one pooled 1x2),
 * the small-filter direct kernel (a first layer; 12x18 outputs pooled 3x3), average
 * pooling, no chain between them; and what must not fuse: a second reader of the
 * pool's input, a pool whose windows overlap and pad (ResNet's stem), a 1x1 GEMM. */
static void test_pooled_convs(void **s) {
  (void)s;
  trng r = {23};
  kiln_conv2d_opts same = {.padding = KILN_PAD_SAME}, valid = {.padding = KILN_PAD_VALID};
  kiln_conv2d_opts odd = {.strides = {2, 1}, .padding = KILN_PAD_EXPLICIT, .pads = {1, 1, 1, 0}, .groups = 2};
  kiln_pool2d_opts two = {.window = {2, 2}}, three = {.window = {3, 3}}, wide = {.window = {1, 2}};
  kiln_pool2d_opts stem = {.window = {3, 3}, .strides = {2, 2}, .padding = KILN_PAD_EXPLICIT, .pads = {1, 1, 1, 1}};
  check_pooled_conv(&r, (int64_t[]){5, 28, 28, 16}, (int64_t[]){3, 3, 16, 24}, &same, &two, false, true, true, "im2col conv, max pool");
  check_pooled_conv(&r, (int64_t[]){3, 13, 11, 6}, (int64_t[]){3, 3, 3, 10}, &odd, &wide, false, true, true, "grouped conv, 1x2 pool");
  check_pooled_conv(&r, (int64_t[]){9, 28, 28, 1}, (int64_t[]){3, 3, 1, 32}, &same, &two, false, true, true, "direct conv, max pool");
  check_pooled_conv(&r, (int64_t[]){5, 14, 20, 1}, (int64_t[]){3, 3, 1, 48}, &valid, &three, true, true, true, "direct conv, avg pool");
  check_pooled_conv(&r, (int64_t[]){4, 16, 16, 8}, (int64_t[]){3, 3, 8, 16}, &same, &two, true, false, true, "conv alone, avg pool");
  check_pooled_conv(&r, (int64_t[]){4, 16, 16, 8}, (int64_t[]){3, 3, 8, 16}, &same, &two, false, true, false, "two readers");
  check_pooled_conv(&r, (int64_t[]){2, 16, 16, 8}, (int64_t[]){3, 3, 8, 16}, &same, &stem, false, true, false, "overlapping windows");
  check_pooled_conv(&r, (int64_t[]){2, 8, 8, 8}, (int64_t[]){1, 1, 8, 16}, &same, &two, false, true, false, "pointwise conv");
}

/* y = matmul(x, w) or conv2d(x, w) with w a graph constant, which the compiler stores
 * packed in the GEMM's panel layout (codegen/lower.c): equal to the evaluator at 1,
 * 2 and 3 threads and bit-equal to the same graph with w a placeholder (packed at
 * run time). */
static void check_constant_b(trng *r, int rank, const int64_t *xd, const int64_t *wd, const kiln_conv2d_opts *conv, bool tb,
                             const char *what) {
  kiln_shape xs = {.rank = rank}, ws = {.rank = rank};
  memcpy(xs.dims, xd, sizeof(int64_t) * (size_t)rank);
  memcpy(ws.dims, wd, sizeof(int64_t) * (size_t)rank);
  kiln_tensor *x = random_tensor(r, KILN_F32, rank, xd, -1, 1), *w = random_tensor(r, KILN_F32, rank, wd, -1, 1);
  kiln_tensor *got[2][3] = {{NULL}}, *ref = NULL;
  for (int form = 0; form < 2; form++) { /* 0: w constant, 1: w a placeholder */
    kiln_graph *g = kiln_graph_new();
    kiln_value xv = kiln_placeholder(g, "x", KILN_F32, xs);
    kiln_value wv = form ? kiln_placeholder(g, "w", KILN_F32, ws) : kiln_constant(g, KILN_F32, ws, kiln_tensor_cdata(w));
    kiln_output(g, "y", kiln_relu(g, conv ? kiln_conv2d(g, xv, wv, conv) : kiln_matmul(g, xv, wv, false, tb)));
    assert_int_equal(kiln_graph_status(g), KILN_OK);
    kiln_tensor *in[2] = {x, w};
    if (!form) assert_int_equal(kiln_evaluate(g, (const kiln_tensor *const *)in, 1, &ref, 1), KILN_OK);
    for (int t = 0; t < 3; t++) run_threads(g, t + 1, in, form ? 2 : 1, &got[form][t]);
    kiln_graph_free(g);
  }
  int64_t k = conv ? wd[0] * wd[1] * wd[2] : (tb ? wd[1] : wd[0]);
  assert_int_equal(compare_tensors(what, got[0][0], ref, 1e-5, 1e-6 * (double)(k + 1)), 0);
  for (int form = 0; form < 2; form++)
    for (int t = 0; t < 3; t++) assert_memory_equal(kiln_tensor_cdata(got[0][0]), kiln_tensor_cdata(got[form][t]), kiln_tensor_nbytes(ref));
  for (int form = 0; form < 2; form++)
    for (int t = 0; t < 3; t++) kiln_tensor_free(got[form][t]);
  kiln_tensor_free(ref), kiln_tensor_free(x), kiln_tensor_free(w);
}

/* Constant weights read prepacked: a matmul over K slices of 151 and 150 with ragged
 * column panels, a transposed B, one row (the direct path: read in place, not prepacked);
 * im2col convolutions in chunks, of few pixels (one GEMM split by columns, or by rows
 * when the filter is small beside the panel) and 1x1. */
static void test_constant_weights(void **s) {
  (void)s;
  trng r = {29};
  kiln_conv2d_opts same = {.padding = KILN_PAD_SAME};
  check_constant_b(&r, 2, (int64_t[]){40, 301}, (int64_t[]){301, 70}, NULL, false, "matmul, constant w");
  check_constant_b(&r, 2, (int64_t[]){64, 513}, (int64_t[]){33, 513}, NULL, true, "matmul, constant w transposed");
  check_constant_b(&r, 2, (int64_t[]){1, 300}, (int64_t[]){300, 100}, NULL, false, "one-row matmul, constant w");
  check_constant_b(&r, 4, (int64_t[]){2, 20, 20, 16}, (int64_t[]){3, 3, 16, 40}, &same, false, "conv, constant filter");
  check_constant_b(&r, 4, (int64_t[]){1, 7, 7, 64}, (int64_t[]){3, 3, 64, 136}, &same, false, "few-pixel conv, constant filter");
  check_constant_b(&r, 4, (int64_t[]){1, 3, 5, 128}, (int64_t[]){3, 3, 128, 64}, &same, false, "few-pixel conv by rows, constant filter");
  check_constant_b(&r, 4, (int64_t[]){2, 9, 7, 16}, (int64_t[]){1, 1, 16, 24}, &same, false, "pointwise conv, constant filter");
}

static void count_task(void *ctx, int64_t i, int32_t worker) {
  int *counts = ctx;
  __atomic_fetch_add(&counts[i], 1 + 1000 * worker, __ATOMIC_RELAXED);
}

/* Every task runs exactly once per run, and the caller is worker 0. */
static void test_pool_runs_each_task_once(void **s) {
  (void)s;
  for (int threads = 1; threads <= 4; threads++) {
    kiln_pool *p = kiln_pool_new(threads);
    assert_non_null(p);
    assert_int_equal(kiln_pool_threads(p), threads);
    for (int run = 0; run < 200; run++) {
      int counts[37] = {0};
      int64_t n = run % 37 + 1;
      kiln_pool_run(p, count_task, counts, n);
      for (int64_t i = 0; i < 37; i++) {
        int c = counts[i];
        if (i < n) assert_true(c % 1000 == 1 && c / 1000 < threads);
        else assert_int_equal(c, 0);
      }
    }
    kiln_pool_free(p);
  }
}

static void test_thread_count_errors(void **s) {
  (void)s;
  int n = 0;
  assert_int_equal(kiln_thread_count(3, &n), KILN_OK);
  assert_int_equal(n, 3);
  setenv("KILN_NUM_THREADS", "2", 1);
  assert_int_equal(kiln_thread_count(0, &n), KILN_OK);
  assert_int_equal(n, 2);
  setenv("KILN_NUM_THREADS", "two", 1);
  assert_int_equal(kiln_thread_count(0, &n), KILN_ERR_INVALID);
  assert_non_null(strstr(kiln_errmsg(), "KILN_NUM_THREADS"));
  kiln_graph *g = kiln_graph_new();
  kiln_output(g, "y", kiln_relu(g, kiln_placeholder(g, "x", KILN_F32, KILN_SHAPE(2))));
  kiln_exec *e = NULL;
  assert_int_equal(kiln_compile(g, NULL, &e), KILN_ERR_INVALID);
  assert_non_null(strstr(kiln_errmsg(), "KILN_NUM_THREADS"));
  unsetenv("KILN_NUM_THREADS");
  kiln_compile_options o = {.threads = 100000};
  assert_int_equal(kiln_compile(g, &o, &e), KILN_ERR_INVALID);
  assert_non_null(strstr(kiln_errmsg(), "threads"));
  char *width = getenv("KILN_VECTOR_BYTES") ? strdup(getenv("KILN_VECTOR_BYTES")) : NULL;
  setenv("KILN_VECTOR_BYTES", "24", 1);
  assert_int_not_equal(kiln_compile(g, &(kiln_compile_options){.no_cache = true}, &e), KILN_OK);
  assert_non_null(strstr(kiln_errmsg(), "KILN_VECTOR_BYTES"));
  if (width) setenv("KILN_VECTOR_BYTES", width, 1);
  else unsetenv("KILN_VECTOR_BYTES");
  free(width);
  kiln_graph_free(g);
}

/* kiln_exec_run_into writes the caller's tensors and refuses a wrong shape. */
static void test_run_into(void **s) {
  (void)s;
  kiln_graph *g = kiln_graph_new();
  kiln_value x = kiln_placeholder(g, "x", KILN_F32, KILN_SHAPE(KILN_DYN, 3));
  kiln_output(g, "y", kiln_mul(g, x, kiln_scalar(g, KILN_F32, 2)));
  kiln_exec *e = NULL;
  assert_int_equal(kiln_compile(g, NULL, &e), KILN_OK);
  const float xs[6] = {1, 2, 3, 4, 5, 6};
  kiln_tensor *in = kiln_tensor_from_data(KILN_F32, 2, (int64_t[]){2, 3}, xs, sizeof xs);
  kiln_tensor *out = kiln_tensor_new(KILN_F32, 2, (int64_t[]){2, 3}), *bad = kiln_tensor_new(KILN_F32, 2, (int64_t[]){3, 2});
  assert_int_equal(kiln_exec_run_into(e, (const kiln_tensor *[]){in}, 1, &out, 1), KILN_OK);
  const float *o = kiln_tensor_cdata(out);
  for (int i = 0; i < 6; i++) assert_true(o[i] == 2 * xs[i]);
  assert_int_equal(kiln_exec_run_into(e, (const kiln_tensor *[]){in}, 1, &bad, 1), KILN_ERR_INVALID);
  assert_non_null(strstr(kiln_errmsg(), "[2,3]"));
  kiln_tensor_free(in), kiln_tensor_free(out), kiln_tensor_free(bad);
  kiln_exec_free(e);
  kiln_graph_free(g);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_matmul_edges_and_transposes), cmocka_unit_test(test_conv_threads), cmocka_unit_test(test_conv_small_filters), cmocka_unit_test(test_conv_depthwise), cmocka_unit_test(test_conv_strided_pointwise_input_grad), cmocka_unit_test(test_conv_strided_input_grad), cmocka_unit_test(test_max_pool_grad), cmocka_unit_test(test_elementwise_threads), cmocka_unit_test(test_reduce_threads), cmocka_unit_test(test_tiled_transposes),
      cmocka_unit_test(test_epilogues),          cmocka_unit_test(test_pooled_convs), cmocka_unit_test(test_constant_weights),
      cmocka_unit_test(test_pool_runs_each_task_once),    cmocka_unit_test(test_thread_count_errors),
      cmocka_unit_test(test_run_into),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Convolutions: kiln against oneDNN, forward and both backward passes (input
 * gradient, filter gradient), on the Fashion-MNIST CNN's two layers (batch 128),
 * ResNet-style layers (56x56x64 -> 64 3x3, and -> 128 at stride 2: 3x3 and the
 * 1x1 shortcut; batch 8) and MobileNetV2-style
 * depthwise 3x3 layers (groups = channels, stride 1 and 2, batch 8); padding
 * K/2 on every side.
 *
 * kiln gets NHWC activations and an HWIO filter and computes the gradients with
 * kiln_gradients, as a training step does. oneDNN gets NHWC activations and
 * picks its own filter layout (format "any", its fastest; the reorder is not
 * timed), so the comparison is against oneDNN at its best. Before timing, the
 * kiln process checks its results against oneDNN run on kiln's own layouts.
 *
 *   build/bin/bench_conv [--threads N] [--rounds R] */
#include <kiln/kiln.h>
#include <math.h>
#include <oneapi/dnnl/dnnl.h>
#include <stdio.h>
#include <string.h>
#include "bench/bench_util.h"

void omp_set_num_threads(int n); /* libgomp, which Debian's oneDNN runs on */

typedef struct {
  const char *name;
  int64_t N, H, W, C, OC, K, groups, stride;
} conv_layer;

static const conv_layer layers[] = {
    {"CNN conv1 128x28x28x1 -> 32", 128, 28, 28, 1, 32, 3, 1, 1},
    {"CNN conv2 128x14x14x32 -> 64", 128, 14, 14, 32, 64, 3, 1, 1},
    {"ResNet 8x56x56x64 -> 64", 8, 56, 56, 64, 64, 3, 1, 1},
    {"ResNet 8x56x56x64 -> 128 /2", 8, 56, 56, 64, 128, 3, 1, 2},
    {"ResNet shortcut 1x1 -> 128 /2", 8, 56, 56, 64, 128, 1, 1, 2},
    {"ResNet b1 1x14x14x256 -> 256", 1, 14, 14, 256, 256, 3, 1, 1},
    {"ResNet b1 1x7x7x512 -> 512", 1, 7, 7, 512, 512, 3, 1, 1},
    {"depthwise 8x56x56x144", 8, 56, 56, 144, 144, 3, 144, 1},
    {"depthwise 8x56x56x144 /2", 8, 56, 56, 144, 144, 3, 144, 2},
    {"depthwise 8x14x14x576", 8, 14, 14, 576, 576, 3, 576, 1},
};
enum { NLAYERS = sizeof layers / sizeof *layers, NPASSES = 3, NCASES = NLAYERS * NPASSES };
typedef enum { FWD, BWD_DATA, BWD_WEIGHTS } conv_pass;
static const char *const pass_names[NPASSES] = {"forward", "input gradient", "filter gradient"};
static const char *const contenders[] = {"kiln", "onednn"};

static int64_t out_size(const conv_layer *l, int64_t in) { return (in + 2 * (l->K / 2) - l->K) / l->stride + 1; }
static int64_t numel_x(const conv_layer *l) { return l->N * l->H * l->W * l->C; }
static int64_t numel_y(const conv_layer *l) { return l->N * out_size(l, l->H) * out_size(l, l->W) * l->OC; }
static int64_t numel_w(const conv_layer *l) { return l->K * l->K * l->C / l->groups * l->OC; }

static void die(const char *what) {
  fprintf(stderr, "bench_conv: %s\n", what);
  exit(1);
}
#define DNNL_CHECK(call)                         \
  do {                                           \
    if ((call) != dnnl_success) die(#call);      \
  } while (0)

/* ---- kiln ---- */

typedef struct {
  kiln_exec *exec;
  kiln_tensor *in[3], *out;
} kiln_case;

/* y = conv(x, w); for a backward pass the output is d(sum(y * dy)) / dx or / dw,
 * which is exactly that pass given the incoming gradient dy. */
static void kiln_setup(kiln_case *k, const conv_layer *l, conv_pass p, int threads, const float *x, const float *w,
                       const float *dy) {
  kiln_graph *g = kiln_graph_new();
  kiln_value vx = kiln_placeholder(g, "x", KILN_F32, KILN_SHAPE(l->N, l->H, l->W, l->C));
  int64_t oh = out_size(l, l->H), ow = out_size(l, l->W), icg = l->C / l->groups, pad = l->K / 2;
  kiln_value vw = kiln_placeholder(g, "w", KILN_F32, KILN_SHAPE(l->K, l->K, icg, l->OC));
  kiln_value vdy = kiln_placeholder(g, "dy", KILN_F32, KILN_SHAPE(l->N, oh, ow, l->OC));
  kiln_conv2d_opts o = {.padding = KILN_PAD_EXPLICIT, .pads = {pad, pad, pad, pad}, .strides = {l->stride, l->stride},
                        .groups = l->groups};
  kiln_value y = kiln_conv2d(g, vx, vw, &o);
  if (p == FWD) {
    kiln_output(g, "y", y);
  } else {
    kiln_value loss = kiln_reduce_sum(g, kiln_mul(g, y, vdy), NULL, 0, false), grad;
    kiln_value wrt = p == BWD_DATA ? vx : vw;
    if (kiln_gradients(g, loss, &wrt, 1, &grad) != KILN_OK) die(kiln_errmsg());
    kiln_output(g, "grad", grad);
  }
  if (kiln_compile(g, &(kiln_compile_options){.threads = threads}, &k->exec) != KILN_OK) die(kiln_errmsg());
  kiln_graph_free(g);
  k->in[0] = kiln_tensor_from_data(KILN_F32, 4, (int64_t[]){l->N, l->H, l->W, l->C}, x, sizeof(float) * (size_t)numel_x(l));
  k->in[1] = kiln_tensor_from_data(KILN_F32, 4, (int64_t[]){l->K, l->K, icg, l->OC}, w, sizeof(float) * (size_t)numel_w(l));
  k->in[2] = kiln_tensor_from_data(KILN_F32, 4, (int64_t[]){l->N, oh, ow, l->OC}, dy, sizeof(float) * (size_t)numel_y(l));
  int64_t out_dims[3][4] = {{l->N, oh, ow, l->OC}, {l->N, l->H, l->W, l->C}, {l->K, l->K, icg, l->OC}};
  k->out = kiln_tensor_new(KILN_F32, 4, out_dims[p]);
}

static void kiln_run(void *v) {
  kiln_case *k = v;
  if (kiln_exec_run_into(k->exec, (const kiln_tensor *const *)k->in, 3, &k->out, 1) != KILN_OK) die(kiln_errmsg());
}

static void kiln_teardown(kiln_case *k) {
  kiln_exec_free(k->exec);
  for (int i = 0; i < 3; i++) kiln_tensor_free(k->in[i]);
  kiln_tensor_free(k->out);
}

/* ---- oneDNN ---- */

typedef struct {
  dnnl_engine_t engine;
  dnnl_stream_t stream;
  dnnl_primitive_t prim;
  dnnl_memory_t mem[3]; /* the pass's two inputs and its output */
  int arg[3];
} dnnl_case;

static dnnl_memory_desc_t md_of(const dnnl_dims_t dims, dnnl_format_tag_t tag) {
  dnnl_memory_desc_t md;
  DNNL_CHECK(dnnl_memory_desc_init_by_tag(&md, 4, dims, dnnl_f32, tag));
  return md;
}

/* The pass's primitive. With `plain` the filter is HWIO (kiln's layout) and the
 * memories wrap x, w, dy and out; otherwise oneDNN picks the filter layout and
 * allocates, and the buffers are filled with values in [-1, 1). */
static void dnnl_setup(dnnl_case *d, const conv_layer *l, conv_pass p, bool plain, float *x, float *w, float *dy,
                       float *out) {
  DNNL_CHECK(dnnl_engine_create(&d->engine, dnnl_cpu, 0));
  DNNL_CHECK(dnnl_stream_create(&d->stream, d->engine, dnnl_stream_default_flags));
  dnnl_dims_t xd = {l->N, l->C, l->H, l->W}, yd = {l->N, l->OC, out_size(l, l->H), out_size(l, l->W)};
  dnnl_dims_t strides = {l->stride, l->stride}, pad = {l->K / 2, l->K / 2};
  dnnl_memory_desc_t xmd = md_of(xd, dnnl_nhwc), ymd = md_of(yd, dnnl_nhwc), wmd;
  if (l->groups == 1) {
    wmd = md_of((dnnl_dims_t){l->OC, l->C, l->K, l->K}, plain ? dnnl_hwio : dnnl_format_tag_any);
  } else { /* goihw dims; kiln's HWIO [K][K][C/G][OC] is hwigo with o = OC/G */
    dnnl_dims_t wd = {l->groups, l->OC / l->groups, l->C / l->groups, l->K, l->K};
    DNNL_CHECK(dnnl_memory_desc_init_by_tag(&wmd, 5, wd, dnnl_f32, plain ? dnnl_hwigo : dnnl_format_tag_any));
  }
  dnnl_convolution_desc_t fd, bd;
  dnnl_primitive_desc_t fwd, pd;
  DNNL_CHECK(dnnl_convolution_forward_desc_init(&fd, dnnl_forward_training, dnnl_convolution_direct, &xmd, &wmd, NULL,
                                                &ymd, strides, pad, pad));
  DNNL_CHECK(dnnl_primitive_desc_create(&fwd, &fd, NULL, d->engine, NULL));
  dnnl_query_t wq = dnnl_query_weights_md;
  float *data[3];
  if (p == FWD) {
    pd = fwd;
    d->arg[0] = DNNL_ARG_SRC, d->arg[1] = DNNL_ARG_WEIGHTS, d->arg[2] = DNNL_ARG_DST;
    data[0] = x, data[1] = w, data[2] = out;
  } else {
    if (p == BWD_DATA) {
      DNNL_CHECK(dnnl_convolution_backward_data_desc_init(&bd, dnnl_convolution_direct, &xmd, &wmd, &ymd, strides, pad, pad));
      d->arg[0] = DNNL_ARG_DIFF_DST, d->arg[1] = DNNL_ARG_WEIGHTS, d->arg[2] = DNNL_ARG_DIFF_SRC;
      data[0] = dy, data[1] = w, data[2] = out;
    } else {
      DNNL_CHECK(dnnl_convolution_backward_weights_desc_init(&bd, dnnl_convolution_direct, &xmd, &wmd, NULL, &ymd, strides,
                                                             pad, pad));
      d->arg[0] = DNNL_ARG_SRC, d->arg[1] = DNNL_ARG_DIFF_DST, d->arg[2] = DNNL_ARG_DIFF_WEIGHTS;
      data[0] = x, data[1] = dy, data[2] = out;
      wq = dnnl_query_diff_weights_md;
    }
    DNNL_CHECK(dnnl_primitive_desc_create(&pd, &bd, NULL, d->engine, fwd));
    DNNL_CHECK(dnnl_primitive_desc_destroy(fwd));
  }
  for (int i = 0; i < 3; i++) {
    bool is_w = d->arg[i] == DNNL_ARG_WEIGHTS || d->arg[i] == DNNL_ARG_DIFF_WEIGHTS;
    const dnnl_memory_desc_t *md = is_w ? dnnl_primitive_desc_query_md(pd, wq, 0)
                                        : d->arg[i] == DNNL_ARG_SRC || d->arg[i] == DNNL_ARG_DIFF_SRC ? &xmd : &ymd;
    DNNL_CHECK(dnnl_memory_create(&d->mem[i], md, d->engine, plain ? (void *)data[i] : DNNL_MEMORY_ALLOCATE));
    if (!plain) {
      void *h;
      DNNL_CHECK(dnnl_memory_get_data_handle(d->mem[i], &h));
      bench_fill(h, (int64_t)(dnnl_memory_desc_get_size(md) / sizeof(float)), (uint64_t)(i + 1));
    }
  }
  DNNL_CHECK(dnnl_primitive_create(&d->prim, pd));
  DNNL_CHECK(dnnl_primitive_desc_destroy(pd));
}

static void dnnl_run(void *v) {
  dnnl_case *d = v;
  dnnl_exec_arg_t args[3];
  for (int i = 0; i < 3; i++) args[i] = (dnnl_exec_arg_t){d->arg[i], d->mem[i]};
  DNNL_CHECK(dnnl_primitive_execute(d->prim, d->stream, 3, args));
  DNNL_CHECK(dnnl_stream_wait(d->stream));
}

static void dnnl_teardown(dnnl_case *d) {
  dnnl_primitive_destroy(d->prim);
  for (int i = 0; i < 3; i++) dnnl_memory_destroy(d->mem[i]);
  dnnl_stream_destroy(d->stream);
  dnnl_engine_destroy(d->engine);
}

/* ---- the contenders' processes ---- */

/* kiln's result against oneDNN's on the same data, relative to the largest |entry|. */
static double kiln_error(const conv_layer *l, conv_pass p, kiln_case *k, float *x, float *w, float *dy) {
  kiln_run(k);
  int64_t n = kiln_tensor_numel(k->out);
  float *ref = malloc(sizeof(float) * (size_t)n);
  dnnl_case d;
  dnnl_setup(&d, l, p, true, x, w, dy, ref);
  dnnl_run(&d);
  dnnl_teardown(&d);
  const float *got = kiln_tensor_cdata(k->out);
  double maxdiff = 0, maxabs = 1e-30;
  for (int64_t i = 0; i < n; i++) {
    maxdiff = fmax(maxdiff, fabs((double)got[i] - ref[i]));
    maxabs = fmax(maxabs, fabs((double)ref[i]));
  }
  free(ref);
  return maxdiff / maxabs;
}

/* Child: times one contender on every case, one line of seconds each. */
static int run_contender(const char *who, int threads) {
  bool kiln = !strcmp(who, "kiln");
  omp_set_num_threads(kiln ? 1 : threads); /* kiln's process uses oneDNN only to check */
  for (int li = 0; li < NLAYERS; li++)
    for (int p = 0; p < NPASSES; p++) {
      const conv_layer *l = &layers[li];
      float *x = malloc(sizeof(float) * (size_t)numel_x(l)), *w = malloc(sizeof(float) * (size_t)numel_w(l)),
            *dy = malloc(sizeof(float) * (size_t)numel_y(l));
      bench_fill(x, numel_x(l), 1), bench_fill(w, numel_w(l), 2), bench_fill(dy, numel_y(l), 3);
      if (kiln) {
        kiln_case k;
        kiln_setup(&k, l, (conv_pass)p, threads, x, w, dy);
        double err = kiln_error(l, (conv_pass)p, &k, x, w, dy);
        if (err > 1e-5)
          return fprintf(stderr, "kiln's %s %s is off by %.1e\n", l->name, pass_names[p], err), 1;
        printf("%.9e\n", bench_time(kiln_run, &k));
        kiln_teardown(&k);
      } else {
        dnnl_case d;
        dnnl_setup(&d, l, (conv_pass)p, false, NULL, NULL, NULL, NULL);
        printf("%.9e\n", bench_time(dnnl_run, &d));
        dnnl_teardown(&d);
      }
      fflush(stdout);
      free(x), free(w), free(dy);
    }
  return 0;
}

int main(int argc, char **argv) {
  bench_args a;
  double t[NCASES * 2];
  int status = bench_run(argc, argv, 2, contenders, run_contender, NCASES, t, &a);
  if (status >= 0) return status;
  int threads = a.threads, rounds = a.rounds;
  printf("conv2d 3x3, padding 1, %d thread%s: ms (median of %d rounds), kiln's speed as a ratio to oneDNN\n", threads,
         threads > 1 ? "s" : "", rounds);
  printf("%-32s %-16s %9s %9s %12s\n", "layer", "pass", "kiln", "oneDNN", "kiln/oneDNN");
  for (int c = 0; c < NCASES; c++)
    printf("%-32s %-16s %9.3f %9.3f %11.2fx\n", layers[c / NPASSES].name, pass_names[c % NPASSES], t[2 * c] * 1e3,
           t[2 * c + 1] * 1e3, t[2 * c + 1] / t[2 * c]);
  return 0;
}

/* The built-in graphs of `kiln bench`: the Fashion-MNIST MLP and CNN (forward, and a
 * train step: forward, loss, gradients and the SGD update of every weight), the CNN
 * also written NCHW as PyTorch and ONNX models are, and a
 * transformer block (layernorm, 4-head self-attention with softmax, GELU MLP,
 * residuals). Weights are graph inputs, so nothing is folded into constants. */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "tools/bench.h"

typedef struct builder {
  kiln_graph *g;
  bench_graph *out;
  kiln_value weights[16];
  int nweights;
  bool nchw; /* convolutions written PyTorch-style: NCHW activations, OIHW filters */
} builder;

static kiln_value input(builder *b, const char *name, kiln_dtype t, kiln_shape s) {
  bench_graph *o = b->out;
  o->shapes[o->ninputs] = s;
  o->dtypes[o->ninputs++] = t;
  return kiln_placeholder(b->g, name, t, s);
}

static kiln_value weight(builder *b, kiln_shape s) {
  char name[16];
  snprintf(name, sizeof name, "w%d", b->nweights);
  kiln_value w = input(b, name, KILN_F32, s);
  b->weights[b->nweights++] = w;
  return w;
}

static kiln_value scalar(builder *b, double v) { return kiln_scalar(b->g, KILN_F32, v); }

static kiln_value dense(builder *b, kiln_value x, int64_t in, int64_t out, bool relu) {
  kiln_value y = kiln_add(b->g, kiln_matmul(b->g, x, weight(b, KILN_SHAPE(in, out)), false, false), weight(b, KILN_SHAPE(out)));
  return relu ? kiln_relu(b->g, y) : y;
}

static kiln_value conv_relu_pool(builder *b, kiln_value x, int64_t cin, int64_t cout) {
  kiln_layout layout = b->nchw ? KILN_NCHW : KILN_NHWC;
  kiln_conv2d_opts co = {.layout = layout, .padding = KILN_PAD_SAME};
  kiln_value y = kiln_conv2d(b->g, x, weight(b, b->nchw ? KILN_SHAPE(cout, cin, 3, 3) : KILN_SHAPE(3, 3, cin, cout)), &co);
  y = kiln_relu(b->g, kiln_add(b->g, y, weight(b, b->nchw ? KILN_SHAPE(cout, 1, 1) : KILN_SHAPE(cout))));
  kiln_pool2d_opts po = {.layout = layout, .window = {2, 2}};
  return kiln_max_pool2d(b->g, y, &po);
}

/* Mean cross-entropy of logits against one-hot labels; then, for a train step, the
 * updated weights w - 0.01 * dloss/dw as outputs. */
static void finish(builder *b, kiln_value logits, int64_t batch, bool train) {
  if (!train) {
    kiln_output(b->g, "probs", kiln_softmax(b->g, logits, -1));
    return;
  }
  kiln_value y = input(b, "labels", KILN_F32, KILN_SHAPE(batch, 10));
  kiln_value per = kiln_reduce_sum(b->g, kiln_mul(b->g, y, kiln_log_softmax(b->g, logits, -1)), (int64_t[]){-1}, 1, false);
  kiln_value loss = kiln_neg(b->g, kiln_reduce_mean(b->g, per, NULL, 0, false));
  kiln_value grads[16];
  if (kiln_gradients(b->g, loss, b->weights, (size_t)b->nweights, grads) != KILN_OK) return;
  kiln_output(b->g, "loss", loss);
  for (int i = 0; i < b->nweights; i++) {
    char name[16];
    snprintf(name, sizeof name, "new_w%d", i);
    kiln_output(b->g, name, kiln_sub(b->g, b->weights[i], kiln_mul(b->g, scalar(b, 0.01), grads[i])));
  }
}

static void mlp(builder *b, int64_t batch, bool train) {
  kiln_value x = input(b, "x", KILN_F32, KILN_SHAPE(batch, 784));
  x = dense(b, dense(b, x, 784, 300, true), 300, 100, true);
  finish(b, dense(b, x, 100, 10, false), batch, train);
}

static void cnn(builder *b, int64_t batch, bool train) {
  kiln_value x = input(b, "x", KILN_F32, b->nchw ? KILN_SHAPE(batch, 1, 28, 28) : KILN_SHAPE(batch, 28, 28, 1));
  x = conv_relu_pool(b, conv_relu_pool(b, x, 1, 32), 32, 64);
  x = kiln_reshape(b->g, x, KILN_SHAPE(batch, 7 * 7 * 64));
  finish(b, dense(b, dense(b, x, 7 * 7 * 64, 128, true), 128, 10, false), batch, train);
}

static kiln_value layernorm(builder *b, kiln_value x, int64_t d) {
  kiln_graph *g = b->g;
  kiln_value mean = kiln_reduce_mean(g, x, (int64_t[]){-1}, 1, true), c = kiln_sub(g, x, mean);
  kiln_value var = kiln_reduce_mean(g, kiln_mul(g, c, c), (int64_t[]){-1}, 1, true);
  kiln_value y = kiln_mul(g, c, kiln_rsqrt(g, kiln_add(g, var, scalar(b, 1e-5))));
  return kiln_add(g, kiln_mul(g, y, weight(b, KILN_SHAPE(d))), weight(b, KILN_SHAPE(d)));
}

/* batch sequences of 64 tokens, width 128, 4 heads of 32, MLP width 512 */
static void transformer(builder *b, int64_t batch, bool train) {
  kiln_graph *g = b->g;
  const int64_t S = 64, D = 128, H = 4, Dh = 32, F = 512;
  kiln_value x = input(b, "x", KILN_F32, KILN_SHAPE(batch, S, D));
  kiln_value h = layernorm(b, x, D);
  kiln_value heads[3];
  for (int i = 0; i < 3; i++) { /* [B, S, D] -> [B, H, S, Dh] */
    kiln_value p = kiln_matmul(g, h, weight(b, KILN_SHAPE(D, D)), false, false);
    heads[i] = kiln_transpose(g, kiln_reshape(g, p, KILN_SHAPE(batch, S, H, Dh)), (int64_t[]){0, 2, 1, 3}, 4);
  }
  kiln_value scores = kiln_mul(g, kiln_matmul(g, heads[0], heads[1], false, true), scalar(b, 1 / sqrt((double)Dh)));
  kiln_value att = kiln_matmul(g, kiln_softmax(g, scores, -1), heads[2], false, false);
  att = kiln_reshape(g, kiln_transpose(g, att, (int64_t[]){0, 2, 1, 3}, 4), KILN_SHAPE(batch, S, D));
  x = kiln_add(g, x, kiln_matmul(g, att, weight(b, KILN_SHAPE(D, D)), false, false));
  h = kiln_matmul(g, layernorm(b, x, D), weight(b, KILN_SHAPE(D, F)), false, false);
  kiln_value inner = kiln_mul(g, scalar(b, 0.7978845608028654), kiln_add(g, h, kiln_mul(g, scalar(b, 0.044715), kiln_mul(g, h, kiln_mul(g, h, h)))));
  h = kiln_mul(g, kiln_mul(g, scalar(b, 0.5), h), kiln_add(g, scalar(b, 1), kiln_tanh(g, inner))); /* GELU */
  x = kiln_add(g, x, kiln_matmul(g, h, weight(b, KILN_SHAPE(F, D)), false, false));
  if (!train) {
    kiln_output(g, "y", x);
    return;
  }
  kiln_value loss = kiln_reduce_mean(g, kiln_mul(g, x, x), NULL, 0, false), grads[16];
  if (kiln_gradients(g, loss, b->weights, (size_t)b->nweights, grads) != KILN_OK) return;
  kiln_output(g, "loss", loss);
  for (int i = 0; i < b->nweights; i++) {
    char name[16];
    snprintf(name, sizeof name, "new_w%d", i);
    kiln_output(g, name, kiln_sub(g, b->weights[i], kiln_mul(g, scalar(b, 0.01), grads[i])));
  }
}

static void cnn_nchw(builder *b, int64_t batch, bool train) {
  b->nchw = true;
  cnn(b, batch, train);
}

static const struct {
  const char *name;
  void (*build)(builder *b, int64_t batch, bool train);
  bool train;
  int64_t batch;
  const char *what;
} BUILTINS[] = {
    {"mlp", mlp, false, 128, "Fashion-MNIST MLP 784-300-100-10, forward"},
    {"mlp-train", mlp, true, 128, "the MLP's train step (cross-entropy, gradients, SGD update)"},
    {"cnn", cnn, false, 128, "Fashion-MNIST CNN (2 x conv 3x3 + pool, dense 128), forward"},
    {"cnn-train", cnn, true, 32, "the CNN's train step"},
    {"cnn-nchw", cnn_nchw, false, 128, "the CNN written NCHW with OIHW filters (as from PyTorch or ONNX), forward"},
    {"cnn-nchw-train", cnn_nchw, true, 32, "the NCHW CNN's train step"},
    {"transformer", transformer, false, 8, "transformer block: 64 tokens x 128, 4 heads, GELU MLP 512"},
    {"transformer-train", transformer, true, 8, "the transformer block's train step (mean-square loss)"},
};

void bench_list(FILE *f) {
  for (size_t i = 0; i < sizeof BUILTINS / sizeof BUILTINS[0]; i++)
    fprintf(f, "  %-18s %s (batch %lld)\n", BUILTINS[i].name, BUILTINS[i].what, (long long)BUILTINS[i].batch);
}

kiln_status bench_builtin(const char *name, int64_t batch, bench_graph *out) {
  memset(out, 0, sizeof *out);
  for (size_t i = 0; i < sizeof BUILTINS / sizeof BUILTINS[0]; i++) {
    if (strcmp(BUILTINS[i].name, name)) continue;
    builder b = {.g = kiln_graph_new(), .out = out};
    if (!b.g) return KILN_ERR_NOMEM;
    BUILTINS[i].build(&b, batch > 0 ? batch : BUILTINS[i].batch, BUILTINS[i].train);
    out->g = b.g;
    return kiln_graph_status(b.g);
  }
  return KILN_ERR_INVALID;
}

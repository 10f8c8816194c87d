/* Convolution and pooling layers, channels last. The 1-D layers run as their 2-D
 * counterparts on [batch, 1, steps, channels], so one primitive (and one set of
 * gradients and kernels) serves both. */
#include <string.h>
#include "frontend/model_impl.h"

typedef struct conv {
  int rank; /* 1 or 2 */
  int64_t filters, kh, kw;
  kiln_padding padding;
  kiln_activation act;
  kiln_variable *kernel, *bias;
} conv;

static const char *conv_type(const conv *c) { return c->rank == 1 ? "Conv1D" : "Conv2D"; }

static kiln_status conv_build(kiln_layer *l, const kiln_shape *in, size_t n) {
  conv *c = l->state;
  int64_t ch = in[0].dims[in[0].rank - 1];
  if (in[0].rank != c->rank + 2 || ch < 0)
    return kiln_set_error(KILN_ERR_INVALID, "%s '%s': needs inputs [batch, %schannels], got rank %d", conv_type(c),
                          l->name, c->rank == 1 ? "steps, " : "h, w, ", in[0].rank);
  /* Keras' kernel shapes: [k, in, filters] and [kh, kw, in, filters] */
  kiln_shape k = c->rank == 1 ? KILN_SHAPE(c->kw, ch, c->filters) : KILN_SHAPE(c->kh, c->kw, ch, c->filters);
  return kiln_layer_kernel_and_bias(l, k, c->filters, &c->kernel, &c->bias);
}

/* [b, steps, c] <-> [b, 1, steps, c]; dim 0 stays the (symbolic) batch. */
static kiln_value as_2d(kiln_graph *g, kiln_value x) {
  kiln_shape s = kiln_value_shape(g, x);
  return kiln_reshape(g, x, KILN_SHAPE(s.dims[0], 1, s.dims[1], s.dims[2]));
}
static kiln_value as_1d(kiln_graph *g, kiln_value x) {
  kiln_shape s = kiln_value_shape(g, x);
  return kiln_reshape(g, x, KILN_SHAPE(s.dims[0], s.dims[2], s.dims[3]));
}

static kiln_value conv_call(kiln_layer *l, kiln_graph *g, const kiln_value *in, size_t n, bool training) {
  conv *c = l->state;
  kiln_conv2d_opts o = {.layout = KILN_NHWC, .padding = c->padding};
  kiln_value w = kiln_variable_read(g, c->kernel), x = in[0];
  if (c->rank == 1) {
    kiln_shape ks = kiln_value_shape(g, w);
    w = kiln_reshape(g, w, KILN_SHAPE(1, ks.dims[0], ks.dims[1], ks.dims[2]));
    return kiln_layer_bias_act(g, as_1d(g, kiln_conv2d(g, as_2d(g, x), w, &o)), c->bias, c->act);
  }
  return kiln_layer_bias_act(g, kiln_conv2d(g, x, w, &o), c->bias, c->act);
}

static const kiln_layer_class CONV1D = {"Conv1D", 0, conv_build, conv_call, free};
static const kiln_layer_class CONV2D = {"Conv2D", 0, conv_build, conv_call, free};

static kiln_layer *new_conv(int rank, int64_t filters, int64_t kh, int64_t kw, kiln_padding padding, kiln_activation act) {
  const char *type = rank == 1 ? "Conv1D" : "Conv2D";
  if (filters < 1 || kh < 1 || kw < 1 || (padding != KILN_PAD_VALID && padding != KILN_PAD_SAME) ||
      (unsigned)act >= KILN_ACT_COUNT) {
    kiln_set_error(KILN_ERR_INVALID, "%s: filters and kernel sizes must be >= 1, padding valid or same", type);
    return NULL;
  }
  conv c = {rank, filters, kh, kw, padding, act, NULL, NULL};
  return kiln_layer_with_state(rank == 1 ? &CONV1D : &CONV2D, &c, sizeof c, type);
}

kiln_layer *kiln_layer_conv1d(int64_t filters, int64_t k, kiln_padding padding, kiln_activation act) {
  return new_conv(1, filters, 1, k, padding, act);
}
kiln_layer *kiln_layer_conv2d(int64_t filters, int64_t kh, int64_t kw, kiln_padding padding, kiln_activation act) {
  return new_conv(2, filters, kh, kw, padding, act);
}

/* ---- pooling ---- */

typedef struct pool {
  int rank;
  bool max;
  int64_t ph, pw;
} pool;

static kiln_status pool_build(kiln_layer *l, const kiln_shape *in, size_t n) {
  const pool *p = l->state;
  if (in[0].rank != p->rank + 2)
    return kiln_set_error(KILN_ERR_INVALID, "%s '%s': needs inputs of rank %d (channels last), got rank %d", l->cls->type,
                          l->name, p->rank + 2, in[0].rank);
  return KILN_OK;
}

static kiln_value pool_call(kiln_layer *l, kiln_graph *g, const kiln_value *in, size_t n, bool training) {
  const pool *p = l->state;
  kiln_pool2d_opts o = {.layout = KILN_NHWC, .window = {p->ph, p->pw}};
  kiln_value x = p->rank == 1 ? as_2d(g, in[0]) : in[0];
  kiln_value y = p->max ? kiln_max_pool2d(g, x, &o) : kiln_avg_pool2d(g, x, &o);
  return p->rank == 1 ? as_1d(g, y) : y;
}

static const kiln_layer_class MAXPOOL1D = {"MaxPooling1D", 0, pool_build, pool_call, free};
static const kiln_layer_class MAXPOOL2D = {"MaxPooling2D", 0, pool_build, pool_call, free};
static const kiln_layer_class AVGPOOL2D = {"AveragePooling2D", 0, pool_build, pool_call, free};

static kiln_layer *new_pool(const kiln_layer_class *cls, int rank, bool max, int64_t ph, int64_t pw) {
  if (ph < 1 || pw < 1) {
    kiln_set_error(KILN_ERR_INVALID, "%s: pool sizes must be >= 1", cls->type);
    return NULL;
  }
  pool p = {rank, max, ph, pw};
  return kiln_layer_with_state(cls, &p, sizeof p, cls->type);
}

kiln_layer *kiln_layer_max_pooling1d(int64_t size) { return new_pool(&MAXPOOL1D, 1, true, 1, size); }
kiln_layer *kiln_layer_max_pooling2d(int64_t ph, int64_t pw) { return new_pool(&MAXPOOL2D, 2, true, ph, pw); }
kiln_layer *kiln_layer_average_pooling2d(int64_t ph, int64_t pw) { return new_pool(&AVGPOOL2D, 2, false, ph, pw); }

/* Global pooling: reduce every axis between the batch and the channels. */
static kiln_value global_call(kiln_layer *l, kiln_graph *g, const kiln_value *in, size_t n, bool training) {
  const pool *p = l->state;
  int64_t axes[KILN_MAX_RANK];
  for (int i = 0; i < p->rank; i++) axes[i] = i + 1;
  return p->max ? kiln_reduce_max(g, in[0], axes, p->rank, false) : kiln_reduce_mean(g, in[0], axes, p->rank, false);
}

static const kiln_layer_class GMAX1D = {"GlobalMaxPooling1D", 0, pool_build, global_call, free};
static const kiln_layer_class GMAX2D = {"GlobalMaxPooling2D", 0, pool_build, global_call, free};
static const kiln_layer_class GAVG1D = {"GlobalAveragePooling1D", 0, pool_build, global_call, free};
static const kiln_layer_class GAVG2D = {"GlobalAveragePooling2D", 0, pool_build, global_call, free};

kiln_layer *kiln_layer_global_max_pooling1d(void) { return new_pool(&GMAX1D, 1, true, 1, 1); }
kiln_layer *kiln_layer_global_max_pooling2d(void) { return new_pool(&GMAX2D, 2, true, 1, 1); }
kiln_layer *kiln_layer_global_average_pooling1d(void) { return new_pool(&GAVG1D, 1, false, 1, 1); }
kiln_layer *kiln_layer_global_average_pooling2d(void) { return new_pool(&GAVG2D, 2, false, 1, 1); }

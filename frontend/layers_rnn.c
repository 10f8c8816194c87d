/* Sequence layers: Embedding, and SimpleRNN / LSTM / GRU unrolled over the (static)
 * time axis with Keras' equations, gate order and initializers (glorot_uniform
 * kernel, orthogonal recurrent kernel, zero bias; LSTM's forget-gate bias starts at
 * 1; GRU with reset_after and a [2, 3*units] bias). */
#include <stdint.h>
#include <string.h>
#include "frontend/model_impl.h"

/* ---- Embedding ---- */

typedef struct embedding {
  int64_t vocab, dim;
  kiln_variable *table;
} embedding;

static kiln_status embedding_build(kiln_layer *l, const kiln_shape *in, size_t n) {
  embedding *e = l->state;
  if (in[0].rank + 1 > KILN_MAX_RANK) return kiln_set_error(KILN_ERR_INVALID, "Embedding '%s': input rank too large", l->name);
  return kiln_layer_add_weight(l, "embeddings", KILN_F32, KILN_SHAPE(e->vocab, e->dim), KILN_UNIFORM(-0.05, 0.05), true,
                               &e->table);
}

static kiln_value embedding_call(kiln_layer *l, kiln_graph *g, const kiln_value *in, size_t n, bool training) {
  embedding *e = l->state;
  kiln_value ids = in[0];
  kiln_dtype t = kiln_value_dtype(g, ids);
  if (!kiln_dtype_is_int(t))
    return kiln_graph_fail(g, KILN_ERR_INVALID, "Embedding '%s': ids must be i32 or i64, got %s", l->name, kiln_dtype_name(t));
  /* gather wraps negative indices; shifting them below -vocab makes them out of range,
   * so a negative id fails the run like a too-large one. */
  ids = kiln_select(g, kiln_less(g, ids, kiln_scalar(g, t, 0)), kiln_sub(g, ids, kiln_scalar(g, t, (double)e->vocab)), ids);
  return kiln_gather(g, kiln_variable_read(g, e->table), ids, 0);
}

static const kiln_layer_class EMBEDDING = {"Embedding", 0, embedding_build, embedding_call, free};

kiln_layer *kiln_layer_embedding(int64_t vocab, int64_t dim) {
  if (vocab < 1 || dim < 1) {
    kiln_set_error(KILN_ERR_INVALID, "Embedding: vocabulary size and dim must be >= 1");
    return NULL;
  }
  embedding e = {vocab, dim, NULL};
  return kiln_layer_with_state(&EMBEDDING, &e, sizeof e, "Embedding");
}

/* ---- recurrent layers ---- */

typedef enum cell_kind { CELL_SIMPLE, CELL_LSTM, CELL_GRU } cell_kind;

typedef struct rnn {
  cell_kind cell;
  int64_t units;
  bool return_sequences;
  kiln_variable *kernel, *recurrent, *bias;
} rnn;

static int gates(const rnn *r) { return r->cell == CELL_LSTM ? 4 : r->cell == CELL_GRU ? 3 : 1; }

static kiln_status rnn_build(kiln_layer *l, const kiln_shape *in, size_t n) {
  rnn *r = l->state;
  if (in[0].rank != 3 || in[0].dims[1] < 1 || in[0].dims[2] < 0)
    return kiln_set_error(KILN_ERR_INVALID, "%s '%s': needs inputs [batch, time, features] with time >= 1", l->cls->type, l->name);
  int64_t width = gates(r) * r->units;
  kiln_status st = kiln_layer_add_weight(l, "kernel", KILN_F32, KILN_SHAPE(in[0].dims[2], width), KILN_GLOROT_UNIFORM, true,
                                         &r->kernel);
  if (st == KILN_OK)
    st = kiln_layer_add_weight(l, "recurrent_kernel", KILN_F32, KILN_SHAPE(r->units, width), KILN_ORTHOGONAL, true,
                               &r->recurrent);
  kiln_shape bs = r->cell == CELL_GRU ? KILN_SHAPE(2, width) : KILN_SHAPE(width);
  if (st == KILN_OK) st = kiln_layer_add_weight(l, "bias", KILN_F32, bs, KILN_ZEROS, true, &r->bias);
  if (st == KILN_OK && r->cell == CELL_LSTM) { /* unit_forget_bias */
    float *b = kiln_tensor_data(kiln_variable_value(r->bias));
    for (int64_t i = r->units; i < 2 * r->units; i++) b[i] = 1.0f;
  }
  return st;
}

/* Columns [k*units, (k+1)*units) of z [batch, gates*units]. */
static kiln_value gate(kiln_graph *g, kiln_value z, int64_t units, int k) {
  return kiln_slice(g, z, (int64_t[]){0, k * units}, (int64_t[]){INT64_MAX, (k + 1) * units}, NULL, 2);
}

/* x[:, t, :] as [batch, features]. */
static kiln_value time_step(kiln_graph *g, kiln_value x, int64_t t) {
  kiln_shape s = kiln_value_shape(g, x);
  kiln_value v = kiln_slice(g, x, (int64_t[]){0, t, 0}, (int64_t[]){INT64_MAX, t + 1, INT64_MAX}, NULL, 3);
  return kiln_reshape(g, v, KILN_SHAPE(s.dims[0], s.dims[2]));
}

static kiln_value rnn_call(kiln_layer *l, kiln_graph *g, const kiln_value *in, size_t n, bool training) {
  const rnn *r = l->state;
  kiln_value x = in[0];
  kiln_shape s = kiln_value_shape(g, x);
  kiln_dtype t = kiln_value_dtype(g, x);
  int64_t u = r->units;
  kiln_value w = kiln_variable_read(g, r->kernel), rw = kiln_variable_read(g, r->recurrent);
  kiln_value b = kiln_variable_read(g, r->bias), b_in = b, b_rec = b;
  if (r->cell == CELL_GRU) {
    b_in = kiln_reshape(g, kiln_slice(g, b, (int64_t[]){0, 0}, (int64_t[]){1, 3 * u}, NULL, 2), KILN_SHAPE(3 * u));
    b_rec = kiln_reshape(g, kiln_slice(g, b, (int64_t[]){1, 0}, (int64_t[]){2, 3 * u}, NULL, 2), KILN_SHAPE(3 * u));
  }
  kiln_value h = kiln_fill(g, t, KILN_SHAPE(s.dims[0], u), 0), c = h;
  kiln_value *seq = r->return_sequences ? calloc((size_t)s.dims[1], sizeof *seq) : NULL;
  if (r->return_sequences && !seq) return kiln_graph_fail(g, KILN_ERR_NOMEM, "%s: out of memory", l->cls->type);
  for (int64_t step = 0; step < s.dims[1] && kiln_graph_status(g) == KILN_OK; step++) {
    kiln_value xz = kiln_add(g, kiln_matmul(g, time_step(g, x, step), w, false, false), b_in);
    kiln_value hz = kiln_matmul(g, h, rw, false, false);
    switch (r->cell) {
    case CELL_SIMPLE: h = kiln_tanh(g, kiln_add(g, xz, hz)); break;
    case CELL_LSTM: {
      kiln_value z = kiln_add(g, xz, hz);
      kiln_value i = kiln_sigmoid(g, gate(g, z, u, 0)), f = kiln_sigmoid(g, gate(g, z, u, 1));
      kiln_value cand = kiln_tanh(g, gate(g, z, u, 2)), o = kiln_sigmoid(g, gate(g, z, u, 3));
      c = kiln_add(g, kiln_mul(g, f, c), kiln_mul(g, i, cand));
      h = kiln_mul(g, o, kiln_tanh(g, c));
      break;
    }
    case CELL_GRU: {
      hz = kiln_add(g, hz, b_rec);
      kiln_value z = kiln_sigmoid(g, kiln_add(g, gate(g, xz, u, 0), gate(g, hz, u, 0)));
      kiln_value rr = kiln_sigmoid(g, kiln_add(g, gate(g, xz, u, 1), gate(g, hz, u, 1)));
      kiln_value cand = kiln_tanh(g, kiln_add(g, gate(g, xz, u, 2), kiln_mul(g, rr, gate(g, hz, u, 2))));
      h = kiln_add(g, kiln_mul(g, z, h), kiln_mul(g, kiln_sub(g, kiln_scalar(g, t, 1), z), cand));
      break;
    }
    }
    if (seq) seq[step] = kiln_reshape(g, h, KILN_SHAPE(s.dims[0], 1, u));
  }
  if (seq) {
    h = kiln_concat(g, seq, (int)s.dims[1], 1);
    free(seq);
  }
  return h;
}

static const kiln_layer_class SIMPLE_RNN = {"SimpleRNN", 0, rnn_build, rnn_call, free};
static const kiln_layer_class LSTM = {"LSTM", 0, rnn_build, rnn_call, free};
static const kiln_layer_class GRU = {"GRU", 0, rnn_build, rnn_call, free};

static kiln_layer *new_rnn(const kiln_layer_class *cls, cell_kind cell, int64_t units, bool return_sequences) {
  if (units < 1) {
    kiln_set_error(KILN_ERR_INVALID, "%s: units must be >= 1", cls->type);
    return NULL;
  }
  rnn r = {cell, units, return_sequences, NULL, NULL, NULL};
  return kiln_layer_with_state(cls, &r, sizeof r, cls->type);
}

kiln_layer *kiln_layer_simple_rnn(int64_t units, bool return_sequences) {
  return new_rnn(&SIMPLE_RNN, CELL_SIMPLE, units, return_sequences);
}
kiln_layer *kiln_layer_lstm(int64_t units, bool return_sequences) { return new_rnn(&LSTM, CELL_LSTM, units, return_sequences); }
kiln_layer *kiln_layer_gru(int64_t units, bool return_sequences) { return new_rnn(&GRU, CELL_GRU, units, return_sequences); }

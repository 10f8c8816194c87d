/* kiln_function: tf.function semantics. The user's trace function builds a graph
 * from placeholders shaped like the call's inputs; the graph is compiled once per
 * input signature (dtypes and shapes, dim 0 symbolic when dynamic_batch is set)
 * and cached, so a Python-style side effect in the trace function runs once per
 * signature, not once per call. */
#include <string.h>
#include "ir/ir.h"
#include "runtime/tensor_impl.h"

typedef struct trace {
  size_t nin;
  kiln_dtype *dtypes;
  kiln_shape *shapes;
  kiln_graph *g;
  kiln_exec *e;
} trace;

struct kiln_function {
  kiln_trace_fn fn;
  void *userdata;
  kiln_function_options opts;
  trace *traces;
  size_t ntraces;
  trace *last;
};

kiln_function *kiln_function_new(kiln_trace_fn fn, void *userdata, const kiln_function_options *opts) {
  if (!fn) {
    kiln_set_error(KILN_ERR_INVALID, "function_new: the trace function is NULL");
    return NULL;
  }
  kiln_function *f = calloc(1, sizeof *f);
  if (!f) {
    kiln_set_error(KILN_ERR_NOMEM, "function_new: out of memory");
    return NULL;
  }
  f->fn = fn;
  f->userdata = userdata;
  if (opts) f->opts = *opts;
  return f;
}

static void trace_free(trace *t) {
  free(t->dtypes);
  free(t->shapes);
  kiln_graph_free(t->g);
  kiln_exec_free(t->e);
}

void kiln_function_free(kiln_function *f) {
  if (!f) return;
  for (size_t i = 0; i < f->ntraces; i++) trace_free(&f->traces[i]);
  free(f->traces);
  free(f);
}

size_t kiln_function_trace_count(const kiln_function *f) { return f ? f->ntraces : 0; }
const kiln_graph *kiln_function_graph(const kiln_function *f) { return f && f->last ? f->last->g : NULL; }

static kiln_shape signature_shape(const kiln_function *f, const kiln_tensor *t) {
  kiln_shape s = {.rank = t->rank};
  memcpy(s.dims, t->dims, sizeof(int64_t) * (size_t)t->rank);
  if (f->opts.dynamic_batch && s.rank > 0) s.dims[0] = KILN_DYN;
  return s;
}

static trace *find_trace(kiln_function *f, const kiln_tensor *const *in, size_t nin) {
  for (size_t i = 0; i < f->ntraces; i++) {
    trace *t = &f->traces[i];
    bool match = t->nin == nin;
    for (size_t k = 0; match && k < nin; k++) {
      kiln_shape s = signature_shape(f, in[k]);
      match = t->dtypes[k] == in[k]->dtype && kiln_same_shape(t->shapes[k].rank, t->shapes[k].dims, s.rank, s.dims);
    }
    if (match) return t;
  }
  return NULL;
}

static kiln_status new_trace(kiln_function *f, const kiln_tensor *const *in, size_t nin, trace **out) {
  trace t = {.nin = nin};
  t.dtypes = calloc(nin + 1, sizeof *t.dtypes);
  t.shapes = calloc(nin + 1, sizeof *t.shapes);
  kiln_value *ph = calloc(nin + 1, sizeof *ph);
  t.g = kiln_graph_new();
  kiln_status st = t.dtypes && t.shapes && ph && t.g ? KILN_OK : kiln_set_error(KILN_ERR_NOMEM, "function: out of memory");
  for (size_t k = 0; k < nin && st == KILN_OK; k++) {
    char name[32];
    snprintf(name, sizeof name, "input%zu", k);
    t.dtypes[k] = in[k]->dtype;
    t.shapes[k] = signature_shape(f, in[k]);
    ph[k] = kiln_placeholder(t.g, name, t.dtypes[k], t.shapes[k]);
  }
  if (st == KILN_OK && t.g->status == KILN_OK) f->fn(t.g, ph, nin, f->userdata);
  if (st == KILN_OK && t.g->status != KILN_OK)
    st = kiln_set_error(t.g->status, "function: tracing failed: %s", t.g->errmsg);
  if (st == KILN_OK) st = kiln_compile(t.g, &f->opts.compile, &t.e);
  trace *ts = st == KILN_OK ? realloc(f->traces, sizeof *ts * (f->ntraces + 1)) : NULL;
  if (st == KILN_OK && !ts) st = kiln_set_error(KILN_ERR_NOMEM, "function: out of memory");
  free(ph);
  if (st != KILN_OK) {
    trace_free(&t);
    return st;
  }
  f->traces = ts;
  f->traces[f->ntraces] = t;
  *out = &f->traces[f->ntraces++];
  return KILN_OK;
}

kiln_status kiln_function_call(kiln_function *f, const kiln_tensor *const *inputs, size_t nin, kiln_tensor **outputs,
                               size_t nout) {
  return kiln_function_call_given(f, inputs, nin, outputs, nout, 0);
}

/* The trace for the inputs' signature, made now if it is new. */
static kiln_status trace_for(kiln_function *f, const kiln_tensor *const *inputs, size_t nin, trace **t) {
  if (!f) return kiln_set_error(KILN_ERR_INVALID, "function_call: null function");
  if (nin && !inputs) return kiln_set_error(KILN_ERR_INVALID, "function_call: the inputs array is NULL");
  for (size_t k = 0; k < nin; k++)
    if (!inputs[k]) return kiln_set_error(KILN_ERR_INVALID, "function_call: input %zu is NULL", k);
  *t = find_trace(f, inputs, nin);
  return *t ? KILN_OK : new_trace(f, inputs, nin, t);
}

kiln_status kiln_function_call_given(kiln_function *f, const kiln_tensor *const *inputs, size_t nin, kiln_tensor **outputs,
                                     size_t nout, size_t given) {
  trace *t;
  kiln_status st = trace_for(f, inputs, nin, &t);
  if (st != KILN_OK) return st;
  f->last = t;
  return kiln_exec_run_given(t->e, inputs, nin, outputs, nout, given);
}

kiln_status kiln_function_exec_for(kiln_function *f, const kiln_tensor *const *inputs, size_t nin, kiln_exec **e,
                                   int64_t *batch) {
  trace *t;
  kiln_status st = trace_for(f, inputs, nin, &t);
  if (st != KILN_OK) return st;
  *e = t->e;
  return kiln_exec_batch_of(t->e, inputs, nin, batch);
}

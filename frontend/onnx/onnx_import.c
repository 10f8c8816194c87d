/* Reading ONNX models (ModelProto via protobuf-c) into kiln graphs.
 *
 * Nodes are visited in file order (ONNX graphs are topologically sorted). Every
 * value is tracked by name with, when known, its value on the host: initializers,
 * Constant nodes, Shape of static tensors, and any node whose inputs are all known
 * (folded by building it in a scratch graph and running the reference evaluator),
 * so shape arithmetic feeding Reshape, Slice or Expand becomes constants. */
#include <libgen.h>
#include <stdarg.h>
#include <string.h>
#include "frontend/onnx/onnx_impl.h"
#include "runtime/checkpoint_impl.h"
#include "runtime/tensor_impl.h"

kiln_status onnx_fail(onnx_ctx *c, const Onnx__NodeProto *n, kiln_status s, const char *fmt, ...) {
  char msg[400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return kiln_set_error(s, "%s: node '%s' (%s): %s", c->path, n->name && *n->name ? n->name : "?", n->op_type, msg);
}

const Onnx__AttributeProto *onnx_attr(const Onnx__NodeProto *n, const char *name) {
  for (size_t i = 0; i < n->n_attribute; i++)
    if (!strcmp(n->attribute[i]->name, name)) return n->attribute[i];
  return NULL;
}

int64_t onnx_attr_int(const Onnx__NodeProto *n, const char *name, int64_t dflt) {
  const Onnx__AttributeProto *a = onnx_attr(n, name);
  return a && a->has_i ? a->i : dflt;
}

double onnx_attr_float(const Onnx__NodeProto *n, const char *name, double dflt) {
  const Onnx__AttributeProto *a = onnx_attr(n, name);
  return a && a->has_f ? a->f : dflt;
}

int onnx_attr_ints(const Onnx__NodeProto *n, const char *name, int64_t *out, int cap) {
  const Onnx__AttributeProto *a = onnx_attr(n, name);
  if (!a) return -1;
  for (size_t i = 0; i < a->n_ints && (int)i < cap; i++) out[i] = a->ints[i];
  return (int)a->n_ints;
}

const char *onnx_attr_string(const Onnx__NodeProto *n, const char *name, const char *dflt) {
  const Onnx__AttributeProto *a = onnx_attr(n, name);
  static _Thread_local char buf[128];
  if (!a || !a->has_s) return dflt;
  size_t k = a->s.len < sizeof buf - 1 ? a->s.len : sizeof buf - 1;
  if (k) memcpy(buf, a->s.data, k);
  buf[k] = 0;
  return buf;
}

/* ---- tensors ---- */

static const struct {
  int64_t onnx;
  kiln_dtype kiln;
} DTYPES[] = {
    {ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, KILN_F32}, {ONNX__TENSOR_PROTO__DATA_TYPE__DOUBLE, KILN_F64},
    {ONNX__TENSOR_PROTO__DATA_TYPE__INT32, KILN_I32}, {ONNX__TENSOR_PROTO__DATA_TYPE__INT64, KILN_I64},
    {ONNX__TENSOR_PROTO__DATA_TYPE__BOOL, KILN_BOOL},
};

int onnx_kiln_dtype(int64_t onnx_type) {
  for (size_t i = 0; i < sizeof DTYPES / sizeof DTYPES[0]; i++)
    if (DTYPES[i].onnx == onnx_type) return (int)DTYPES[i].kiln;
  return -1;
}

static int32_t onnx_type_of(kiln_dtype t) {
  for (size_t i = 0; i < sizeof DTYPES / sizeof DTYPES[0]; i++)
    if (DTYPES[i].kiln == t) return (int32_t)DTYPES[i].onnx;
  return -1;
}

static const char *tensor_name(const Onnx__TensorProto *t) { return t->name ? t->name : ""; }

/* Opens a tensor's external data file positioned at its offset, after checking it
 * holds nbytes there (so nothing is allocated for data that is not on disk). */
static kiln_status open_external(const Onnx__TensorProto *t, const char *dir, uint64_t nbytes, FILE **out) {
  const char *location = NULL;
  long long offset = 0, length = -1;
  for (size_t i = 0; i < t->n_external_data; i++) {
    const char *k = t->external_data[i]->key, *v = t->external_data[i]->value;
    if (!k || !v) continue;
    if (!strcmp(k, "location")) location = v;
    else if (!strcmp(k, "offset")) offset = atoll(v);
    else if (!strcmp(k, "length")) length = atoll(v);
  }
  if (!location || strstr(location, ".."))
    return kiln_set_error(KILN_ERR_PARSE, "tensor '%s': external data without a safe location", tensor_name(t));
  if ((length >= 0 && (uint64_t)length != nbytes) || offset < 0)
    return kiln_set_error(KILN_ERR_PARSE, "tensor '%s': external data at %lld of %lld bytes, the shape needs %llu",
                          tensor_name(t), offset, length, (unsigned long long)nbytes);
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, location);
  FILE *f = fopen(path, "rb");
  if (!f) return kiln_set_error(KILN_ERR_IO, "tensor '%s': cannot open external data %s", tensor_name(t), path);
  long size = fseek(f, 0, SEEK_END) ? -1 : ftell(f);
  if (size < 0 || (uint64_t)size < (uint64_t)offset + nbytes || fseek(f, offset, SEEK_SET)) {
    fclose(f);
    return kiln_set_error(KILN_ERR_PARSE, "tensor '%s': external data %s is shorter than offset %lld + %llu bytes",
                          tensor_name(t), path, offset, (unsigned long long)nbytes);
  }
  *out = f;
  return KILN_OK;
}

/* t's dtype (*dt) and dims, checked, and its size in bytes. */
static kiln_status proto_layout(const Onnx__TensorProto *t, int *dt, int64_t *dims, uint64_t *nbytes) {
  *dt = onnx_kiln_dtype(t->data_type);
  if (*dt < 0) return kiln_set_error(KILN_ERR_UNSUPPORTED, "tensor '%s': ONNX data type %d is not supported", tensor_name(t), t->data_type);
  if (t->n_dims > KILN_MAX_RANK) return kiln_set_error(KILN_ERR_UNSUPPORTED, "tensor '%s': rank %zu", tensor_name(t), t->n_dims);
  uint64_t numel = 1;
  for (size_t i = 0; i < t->n_dims; i++) {
    dims[i] = t->dims[i];
    if (dims[i] < 0 || (dims[i] && numel > (UINT64_MAX >> 8) / (uint64_t)dims[i]))
      return kiln_set_error(KILN_ERR_PARSE, "tensor '%s': bad dimension %lld", tensor_name(t), (long long)dims[i]);
    numel *= (uint64_t)dims[i];
  }
  *nbytes = numel * kiln_dtype_size((kiln_dtype)*dt);
  return KILN_OK;
}

kiln_status onnx_tensor_from_proto(const Onnx__TensorProto *t, const char *dir, kiln_tensor **out) {
  *out = NULL;
  int dt;
  int64_t dims[KILN_MAX_RANK];
  uint64_t want, avail;
  kiln_status lst = proto_layout(t, &dt, dims, &want);
  if (lst != KILN_OK) return lst;
  /* the values must be in the file (or the external file) before anything is allocated */
  bool external = t->has_data_location && t->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL;
  FILE *ext = NULL;
  if (external) {
    kiln_status st = open_external(t, dir, want, &ext);
    if (st != KILN_OK) return st;
    avail = want;
  }
  else if (t->has_raw_data) avail = t->raw_data.len;
  else
    avail = (uint64_t)(dt == KILN_F32 ? t->n_float_data : dt == KILN_F64 ? t->n_double_data : dt == KILN_I64 ? t->n_int64_data
                                                                                                        : t->n_int32_data) *
            kiln_dtype_size((kiln_dtype)dt);
  if (avail != want)
    return kiln_set_error(KILN_ERR_PARSE, "tensor '%s': %llu bytes of values, the shape needs %llu", tensor_name(t),
                          (unsigned long long)avail, (unsigned long long)want);
  kiln_tensor *x = kiln_tensor_new((kiln_dtype)dt, (int)t->n_dims, dims);
  if (!x) {
    if (ext) fclose(ext);
    return kiln_set_error(KILN_ERR_PARSE, "tensor '%s': %s", tensor_name(t), kiln_errmsg());
  }
  size_t n = (size_t)kiln_tensor_numel(x), nbytes = kiln_tensor_nbytes(x);
  void *d = kiln_tensor_data(x);
  kiln_status st = KILN_OK;
  size_t have;
  if (ext) {
    if (fread(d, 1, nbytes, ext) != nbytes) st = kiln_set_error(KILN_ERR_IO, "tensor '%s': reading external data failed", tensor_name(t));
    fclose(ext);
  } else if (t->has_raw_data) {
    if (t->raw_data.len != nbytes)
      st = kiln_set_error(KILN_ERR_PARSE, "tensor '%s': %zu raw bytes, the shape needs %zu", tensor_name(t), t->raw_data.len, nbytes);
    else if (nbytes) memcpy(d, t->raw_data.data, nbytes);
  } else {
    switch (dt) {
    case KILN_F32: have = t->n_float_data; if (have == n && n) memcpy(d, t->float_data, nbytes); break;
    case KILN_F64: have = t->n_double_data; if (have == n && n) memcpy(d, t->double_data, nbytes); break;
    case KILN_I64: have = t->n_int64_data; if (have == n && n) memcpy(d, t->int64_data, nbytes); break;
    case KILN_I32: have = t->n_int32_data; if (have == n && n) memcpy(d, t->int32_data, nbytes); break;
    default: /* bool: one per int32 */
      have = t->n_int32_data;
      for (size_t i = 0; have == n && i < n; i++) ((uint8_t *)d)[i] = t->int32_data[i] != 0;
    }
    if (have != n) st = kiln_set_error(KILN_ERR_PARSE, "tensor '%s': %zu values, the shape needs %zu", tensor_name(t), have, n);
  }
  if (st != KILN_OK) {
    kiln_tensor_free(x);
    return st;
  }
  *out = x;
  return KILN_OK;
}

/* protobuf-c's allocations while reading a model: large ones (an initializer's raw
 * bytes) are kiln blobs, which import_initializer hands to the graph as they are
 * instead of copying; the rest are malloc'd. A tag just before the data says which. */
enum { DIRECT_INITIALIZER_BYTES = 64 << 10 };
static const uint64_t pb_small_tag = 0x6b696c6e2d706273ull, pb_blob_tag = 0x6b696c6e2d70626bull;

static void *pb_alloc(void *ud, size_t size) {
  (void)ud;
  if (size >= DIRECT_INITIALIZER_BYTES) {
    uint64_t *d = kiln_blob_new(size); /* its header's last word is padding */
    if (d) d[-1] = pb_blob_tag;
    return d;
  }
  uint64_t *p = size <= SIZE_MAX - 16 ? malloc(size + 16) : NULL;
  if (!p) return NULL;
  p[1] = pb_small_tag;
  return p + 2;
}

static void pb_free(void *ud, void *data) {
  (void)ud;
  if (!data) return;
  uint64_t *d = data;
  if (d[-1] == pb_blob_tag) kiln_blob_release(data);
  else free(d - 2);
}

static ProtobufCAllocator pb_allocator = {pb_alloc, pb_free, NULL};

/* Whether data came from pb_alloc as a blob, so that the graph may keep it. */
static bool pb_is_blob(const void *data) { return data && ((const uint64_t *)data)[-1] == pb_blob_tag; }

/* *out = the message of type d in file path (free with protobuf_c_message_free_unpacked(.., &pb_allocator)). */
static kiln_status read_message(const char *path, const ProtobufCMessageDescriptor *d, const char *what,
                                ProtobufCMessage **out) {
  unsigned char *buf;
  size_t len;
  kiln_status st = kiln_read_file(path, &buf, &len);
  if (st != KILN_OK) return st;
  *out = protobuf_c_message_unpack(d, &pb_allocator, len, buf);
  free(buf);
  return *out ? KILN_OK : kiln_set_error(KILN_ERR_PARSE, "%s: not %s (the protobuf does not parse)", path, what);
}

kiln_status kiln_onnx_load_tensor(const char *path, kiln_tensor **out, char **name) {
  if (!path || !out) return kiln_set_error(KILN_ERR_INVALID, "onnx_load_tensor: NULL argument");
  *out = NULL;
  if (name) *name = NULL;
  ProtobufCMessage *pm;
  kiln_status st = read_message(path, &onnx__tensor_proto__descriptor, "an ONNX TensorProto", &pm);
  if (st != KILN_OK) return st;
  Onnx__TensorProto *t = (Onnx__TensorProto *)pm;
  char *copy = strdup(path);
  st = copy ? onnx_tensor_from_proto(t, dirname(copy), out) : kiln_set_error(KILN_ERR_NOMEM, "out of memory");
  if (st != KILN_OK && st != KILN_ERR_NOMEM) st = kiln_set_error(st, "%s: %s", path, kiln_errmsg());
  if (st == KILN_OK && name) *name = strdup(t->name ? t->name : "");
  free(copy);
  onnx__tensor_proto__free_unpacked(t, &pb_allocator);
  return st;
}

kiln_status kiln_onnx_save_tensor(const char *path, const kiln_tensor *t, const char *name) {
  if (!path || !t) return kiln_set_error(KILN_ERR_INVALID, "onnx_save_tensor: NULL argument");
  int32_t type = onnx_type_of(kiln_tensor_dtype(t));
  if (type < 0) return kiln_set_error(KILN_ERR_UNSUPPORTED, "onnx_save_tensor: dtype %s has no ONNX type here", kiln_dtype_name(kiln_tensor_dtype(t)));
  Onnx__TensorProto tp = ONNX__TENSOR_PROTO__INIT;
  tp.n_dims = (size_t)kiln_tensor_rank(t);
  tp.dims = (int64_t *)kiln_tensor_dims(t);
  tp.has_data_type = 1, tp.data_type = type;
  tp.name = (char *)(name ? name : "");
  tp.has_raw_data = 1;
  tp.raw_data.len = kiln_tensor_nbytes(t); /* little-endian, as ONNX's raw_data is */
  tp.raw_data.data = (uint8_t *)kiln_tensor_cdata(t);
  size_t len = onnx__tensor_proto__get_packed_size(&tp);
  unsigned char *buf = malloc(len ? len : 1);
  if (!buf) return kiln_set_error(KILN_ERR_NOMEM, "onnx_save_tensor: out of memory");
  onnx__tensor_proto__pack(&tp, buf);
  const unsigned char *parts[1] = {buf};
  kiln_status st = kiln_write_atomic(path, parts, &len, 1);
  free(buf);
  return st;
}

/* ---- values ---- */

static onnx_value *find_value(onnx_ctx *c, const char *name) {
  for (size_t i = c->nvals; i-- > 0;)
    if (!strcmp(c->vals[i].name, name)) return &c->vals[i];
  return NULL;
}

static kiln_status add_value(onnx_ctx *c, const char *name, kiln_value v, kiln_tensor *host, uint64_t deps) {
  if (c->nvals == c->cap) {
    size_t cap = c->cap ? 2 * c->cap : 64;
    onnx_value *nv = realloc(c->vals, cap * sizeof *nv);
    if (!nv) {
      kiln_tensor_free(host);
      return kiln_set_error(KILN_ERR_NOMEM, "onnx: out of memory");
    }
    c->vals = nv, c->cap = cap;
  }
  c->vals[c->nvals++] = (onnx_value){.name = name, .v = v, .host = host, .deps = deps};
  return KILN_OK;
}

static bool constant_node(const kiln_graph *g, kiln_value v) {
  const kiln_node *n = kiln_node_get(g, v);
  return n && n->op == KILN_OP_CONST;
}

/* The host value of a constant node of g, or NULL. */
static kiln_tensor *const_value(const kiln_graph *g, kiln_value v);

/* v's value on the host. A constant without one (a directly imported initializer)
 * gets it the first time it is asked for; c->g is then the values' graph: fold asks
 * for every input before it swaps graphs. */
static kiln_tensor *host_of(onnx_ctx *c, onnx_value *v) {
  if (!v->host && constant_node(c->g, v->v)) v->host = const_value(c->g, v->v);
  return v->host;
}

static long offered_index(const onnx_ctx *c, const char *name) {
  for (size_t k = 0; c->offered && k < c->offered->ninputs; k++)
    if (c->offered->input_names[k] && !strcmp(c->offered->input_names[k], name)) return (long)k;
  return -1;
}

const kiln_tensor *onnx_const_input(onnx_ctx *c, const Onnx__NodeProto *n, size_t i) {
  if (i >= n->n_input || !*n->input[i]) return NULL;
  onnx_value *v = find_value(c, n->input[i]);
  /* computed from offered graph inputs: the next import freezes them */
  for (size_t k = 0; v && !v->host && k < 64 && c->offered && k < c->offered->ninputs; k++)
    if (v->deps >> k & 1) c->wanted[k] = true;
  return v ? host_of(c, v) : NULL;
}

static kiln_tensor *const_value(const kiln_graph *g, kiln_value v) {
  if (!constant_node(g, v)) return NULL;
  const kiln_node *n = kiln_node_get(g, v);
  kiln_tensor *t = kiln_tensor_new((kiln_dtype)n->dtype, n->rank, n->dims);
  if (!t) return NULL;
  if (n->data) memcpy(kiln_tensor_data(t), n->data, kiln_tensor_nbytes(t));
  else
    for (int64_t i = 0; i < kiln_tensor_numel(t); i++) kiln_tensor_set_f64(t, i, kiln_attr_float(n, KILN_ATTR_VALUE, 0));
  return t;
}

static kiln_value constant_of(kiln_graph *g, const kiln_tensor *t) {
  kiln_shape s = {.rank = kiln_tensor_rank(t)};
  memcpy(s.dims, kiln_tensor_dims(t), sizeof(int64_t) * (size_t)s.rank);
  return kiln_constant(g, kiln_tensor_dtype(t), s, kiln_tensor_cdata(t));
}

/* Runs the node on known inputs in a scratch graph; hosts[j] receive its outputs. */
static kiln_status fold(onnx_ctx *c, const onnx_op *op, const Onnx__NodeProto *n, kiln_tensor **hosts) {
  kiln_graph *main_g = c->g, *s = kiln_graph_new();
  if (!s) return kiln_set_error(KILN_ERR_NOMEM, "onnx: out of memory");
  kiln_value in[64], out[16];
  for (size_t i = 0; i < n->n_input; i++) {
    const kiln_tensor *h = onnx_const_input(c, n, i);
    in[i] = h ? constant_of(s, h) : (kiln_value){KILN_NONE};
  }
  c->g = s;
  kiln_status st = op->fn(c, n, in, n->n_input, out);
  c->g = main_g;
  for (size_t j = 0; j < n->n_output && st == KILN_OK; j++) {
    char name[32];
    snprintf(name, sizeof name, "o%zu", j);
    st = kiln_output(s, name, out[j]);
  }
  if (st == KILN_OK) st = kiln_evaluate(s, NULL, 0, hosts, n->n_output);
  if (st != KILN_OK) st = onnx_fail(c, n, st, "folding constants: %s", kiln_errmsg());
  kiln_graph_free(s);
  return st;
}

static kiln_status import_node(onnx_ctx *c, const Onnx__NodeProto *n) {
  if (n->domain && *n->domain && strcmp(n->domain, "ai.onnx"))
    return onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "operator domain '%s' is not supported", n->domain);
  const onnx_op *op = onnx_find_op(n->op_type);
  if (!op) return onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "op %s is not supported", n->op_type);
  if (n->n_input > 64 || n->n_output > 16) return onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "too many inputs or outputs");
  kiln_value in[64], out[16];
  bool known = n->n_input > 0;
  uint64_t deps = 0;
  for (size_t i = 0; i < n->n_input; i++) {
    in[i] = (kiln_value){KILN_NONE};
    if (!*n->input[i]) continue; /* an omitted optional input */
    onnx_value *v = find_value(c, n->input[i]);
    if (!v) return onnx_fail(c, n, KILN_ERR_PARSE, "input '%s' is not produced by any earlier node, input or initializer", n->input[i]);
    in[i] = v->v;
    known &= v->host || constant_node(c->g, v->v);
    deps |= v->deps;
  }
  kiln_tensor *hosts[16] = {0};
  kiln_status st;
  if (known) {
    st = fold(c, op, n, hosts);
    for (size_t j = 0; j < n->n_output && st == KILN_OK; j++) out[j] = constant_of(c->g, hosts[j]);
  } else {
    for (size_t j = 0; j < 16; j++) out[j] = (kiln_value){KILN_NONE};
    st = op->fn(c, n, in, n->n_input, out);
  }
  if (st == KILN_OK && kiln_graph_status(c->g) != KILN_OK) st = onnx_fail(c, n, kiln_graph_status(c->g), "%s", kiln_graph_errmsg(c->g));
  for (size_t j = 0; j < n->n_output && st == KILN_OK; j++) {
    if (!*n->output[j]) continue;
    if (out[j].id == KILN_NONE) {
      st = onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "output %zu ('%s') is not supported", j, n->output[j]);
      break;
    }
    kiln_tensor *h = hosts[j] ? hosts[j] : const_value(c->g, out[j]);
    hosts[j] = NULL;
    st = add_value(c, n->output[j], out[j], h, deps);
  }
  for (size_t j = 0; j < 16; j++) kiln_tensor_free(hosts[j]);
  return st;
}

static kiln_status import_input(onnx_ctx *c, const Onnx__ValueInfoProto *vi) {
  const Onnx__TypeProto *tp = vi->type;
  if (!tp || tp->value_case != ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE || !tp->tensor_type)
    return kiln_set_error(KILN_ERR_UNSUPPORTED, "%s: input '%s' is not a tensor", c->path, vi->name);
  const Onnx__TypeProto__Tensor *tt = tp->tensor_type;
  int dt = onnx_kiln_dtype(tt->elem_type);
  if (dt < 0)
    return kiln_set_error(KILN_ERR_UNSUPPORTED, "%s: input '%s' has ONNX data type %d, which kiln does not support",
                          c->path, vi->name, tt->elem_type);
  kiln_shape s = {0};
  if (!tt->shape) return kiln_set_error(KILN_ERR_UNSUPPORTED, "%s: input '%s' has no shape", c->path, vi->name);
  if (tt->shape->n_dim > KILN_MAX_RANK) return kiln_set_error(KILN_ERR_UNSUPPORTED, "%s: input '%s' has rank %zu", c->path, vi->name, tt->shape->n_dim);
  s.rank = (int)tt->shape->n_dim;
  for (int d = 0; d < s.rank; d++) {
    const Onnx__TensorShapeProto__Dimension *dim = tt->shape->dim[d];
    if (dim->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE) s.dims[d] = dim->dim_value;
    else if (d == 0) s.dims[d] = KILN_DYN; /* a symbolic batch */
    else
      return kiln_set_error(KILN_ERR_UNSUPPORTED, "%s: input '%s': dimension %d is symbolic ('%s'); only the first may be",
                            c->path, vi->name, d, dim->dim_param ? dim->dim_param : "?");
  }
  long k = offered_index(c, vi->name);
  if (k >= 0 && c->frozen[k]) {
    const kiln_tensor *t = c->offered->input_values[k];
    bool fits = t && kiln_tensor_dtype(t) == (kiln_dtype)dt && kiln_tensor_rank(t) == s.rank;
    for (int d = 0; fits && d < s.rank; d++) fits = s.dims[d] < 0 || s.dims[d] == kiln_tensor_dims(t)[d];
    if (!fits) return kiln_set_error(KILN_ERR_INVALID, "%s: the value offered for input '%s' does not match its type", c->path, vi->name);
    kiln_tensor *copy = kiln_tensor_from_data(kiln_tensor_dtype(t), s.rank, kiln_tensor_dims(t), kiln_tensor_cdata(t), kiln_tensor_nbytes(t));
    if (!copy) return kiln_set_error(KILN_ERR_NOMEM, "onnx: out of memory");
    return add_value(c, vi->name, constant_of(c->g, copy), copy, 0);
  }
  uint64_t deps = k >= 0 && k < 64 ? UINT64_C(1) << k : 0;
  return add_value(c, vi->name, kiln_placeholder(c->g, vi->name, (kiln_dtype)dt, s), NULL, deps);
}

/* An initializer of many raw bytes (a layer's weights) becomes the graph's constant
 * data as protobuf-c read it (pb_alloc made it a blob), its host value made only if a
 * node folds it or reads it as a constant (host_of): two copies of the weights fewer
 * on import. */
static kiln_status import_initializer(onnx_ctx *c, const Onnx__TensorProto *t, const char *dir) {
  int dt;
  int64_t dims[KILN_MAX_RANK];
  uint64_t nbytes;
  bool external = t->has_data_location && t->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL;
  kiln_status st = proto_layout(t, &dt, dims, &nbytes);
  if (st == KILN_OK && !external && t->has_raw_data && t->raw_data.len == nbytes && nbytes >= DIRECT_INITIALIZER_BYTES) {
    void *d = pb_is_blob(t->raw_data.data) ? t->raw_data.data : kiln_blob_new(nbytes);
    if (!d) return kiln_set_error(KILN_ERR_NOMEM, "tensor '%s': out of memory", tensor_name(t));
    if (d != t->raw_data.data) memcpy(d, t->raw_data.data, nbytes);
    kiln_blob_seal(d, nbytes, NULL, NULL, 0);
    kiln_value v = kiln_constant_blob(c->g, (kiln_dtype)dt, (int)t->n_dims, dims, d);
    if (d != t->raw_data.data) kiln_blob_release(d); /* else the message's release, when it is freed */
    return add_value(c, t->name, v, NULL, 0); /* host_of makes its host value when needed */
  }
  kiln_tensor *h;
  if ((st = onnx_tensor_from_proto(t, dir, &h)) != KILN_OK) return st;
  return add_value(c, t->name, constant_of(c->g, h), h, 0);
}

static kiln_status import_graph(onnx_ctx *c, const Onnx__GraphProto *gp, const char *dir) {
  kiln_status st = KILN_OK;
  for (size_t i = 0; i < gp->n_initializer && st == KILN_OK; i++) {
    st = import_initializer(c, gp->initializer[i], dir);
    if (st != KILN_OK) st = kiln_set_error(st, "%s: initializer: %s", c->path, kiln_errmsg());
  }
  for (size_t i = 0; i < gp->n_input && st == KILN_OK; i++)
    if (!find_value(c, gp->input[i]->name)) st = import_input(c, gp->input[i]);
  for (size_t i = 0; i < gp->n_node && st == KILN_OK; i++) st = import_node(c, gp->node[i]);
  for (size_t i = 0; i < gp->n_output && st == KILN_OK; i++) {
    onnx_value *v = find_value(c, gp->output[i]->name);
    if (!v) st = kiln_set_error(KILN_ERR_PARSE, "%s: output '%s' is produced by no node", c->path, gp->output[i]->name);
    else st = kiln_graph_add_output(c->g, gp->output[i]->name, v->v);
  }
  if (st == KILN_OK && kiln_graph_status(c->g) != KILN_OK)
    st = kiln_set_error(kiln_graph_status(c->g), "%s: %s", c->path, kiln_graph_errmsg(c->g));
  return st;
}

/* protobuf-c leaves absent proto2 strings NULL: names the importer relies on must be there. */
static kiln_status check_names(const char *path, const Onnx__GraphProto *g) {
  for (size_t i = 0; i < g->n_input; i++)
    if (!g->input[i]->name) return kiln_set_error(KILN_ERR_PARSE, "%s: graph input %zu has no name", path, i);
  for (size_t i = 0; i < g->n_output; i++)
    if (!g->output[i]->name) return kiln_set_error(KILN_ERR_PARSE, "%s: graph output %zu has no name", path, i);
  for (size_t i = 0; i < g->n_initializer; i++)
    if (!g->initializer[i]->name) return kiln_set_error(KILN_ERR_PARSE, "%s: initializer %zu has no name", path, i);
  for (size_t i = 0; i < g->n_node; i++) {
    const Onnx__NodeProto *n = g->node[i];
    if (!n->op_type) return kiln_set_error(KILN_ERR_PARSE, "%s: node %zu has no op_type", path, i);
    for (size_t a = 0; a < n->n_attribute; a++)
      if (!n->attribute[a]->name) return kiln_set_error(KILN_ERR_PARSE, "%s: node %zu (%s): attribute %zu has no name", path, i, n->op_type, a);
  }
  return KILN_OK;
}

/* One import of the parsed model into a new graph. */
static kiln_status import_model(onnx_ctx *c, const Onnx__ModelProto *m, const char *dir) {
  c->g = kiln_graph_new();
  c->nvals = 0;
  if (!c->g) return kiln_set_error(KILN_ERR_NOMEM, "onnx: out of memory");
  kiln_status st = import_graph(c, m->graph, dir);
  for (size_t i = 0; i < c->nvals; i++) kiln_tensor_free(c->vals[i].host);
  c->nvals = 0;
  if (st != KILN_OK) {
    kiln_graph_free(c->g);
    c->g = NULL;
  }
  return st;
}

kiln_status kiln_onnx_load_with(const char *path, const kiln_onnx_options *opts, kiln_graph **out) {
  if (!path || !out) return kiln_set_error(KILN_ERR_INVALID, "onnx_load: NULL argument");
  *out = NULL;
  size_t noff = opts ? opts->ninputs : 0;
  if (noff && (!opts->input_names || !opts->input_values))
    return kiln_set_error(KILN_ERR_INVALID, "onnx_load: %zu offered inputs without names or values", noff);
  ProtobufCMessage *pm;
  kiln_status st = read_message(path, &onnx__model_proto__descriptor, "an ONNX model", &pm);
  if (st != KILN_OK) return st;
  Onnx__ModelProto *m = (Onnx__ModelProto *)pm;
  onnx_ctx c = {.path = path, .opset = -1, .offered = opts};
  for (size_t i = 0; i < m->n_opset_import; i++) {
    const char *d = m->opset_import[i]->domain;
    if (!d || !*d || !strcmp(d, "ai.onnx")) c.opset = m->opset_import[i]->version;
  }
  char *dir = strdup(path);
  c.frozen = calloc(noff + 1, sizeof *c.frozen);
  c.wanted = calloc(noff + 1, sizeof *c.wanted);
  if (!dir || !c.frozen || !c.wanted) st = kiln_set_error(KILN_ERR_NOMEM, "onnx: out of memory");
  else if (!m->graph) st = kiln_set_error(KILN_ERR_PARSE, "%s: the model has no graph", path);
  else if (c.opset < 6 || c.opset > 17) /* 6: what PyTorch's older exporter wrote */
    st = kiln_set_error(KILN_ERR_UNSUPPORTED, "%s: opset %lld is outside the supported 6..17", path, (long long)c.opset);
  else if ((st = check_names(path, m->graph)) == KILN_OK) {
    char *d = dirname(dir);
    /* each round freezes the offered inputs the last one needed as constants */
    for (;;) {
      st = import_model(&c, m, d);
      bool more = false;
      for (size_t k = 0; k < noff; k++)
        if (c.wanted[k] && !c.frozen[k]) c.frozen[k] = more = true;
      if (st == KILN_OK || !more) break;
    }
  }
  for (size_t k = 0; st == KILN_OK && opts && opts->frozen && k < noff; k++) opts->frozen[k] = c.frozen[k];
  free(c.vals);
  free(c.frozen);
  free(c.wanted);
  free(dir);
  onnx__model_proto__free_unpacked(m, &pb_allocator);
  if (st != KILN_OK) return st;
  *out = c.g;
  return KILN_OK;
}

kiln_status kiln_onnx_load(const char *path, kiln_graph **out) { return kiln_onnx_load_with(path, NULL, out); }

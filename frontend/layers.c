/* Layers: the generic layer object (weights, freezing, custom classes),
 * activations, and the built-in layer classes. */
#include <ctype.h>
#include <math.h>
#include <string.h>
#include <strings.h>
#include "frontend/model_impl.h"

/* ---- activations ---- */

static const char *const ACT_NAMES[KILN_ACT_COUNT] = {"linear", "relu", "sigmoid", "tanh", "softmax",
                                                      "elu", "selu", "leaky_relu", "gelu", "swish"};

kiln_status kiln_activation_from_name(const char *name, kiln_activation *out) {
  for (int i = 0; name && i < KILN_ACT_COUNT; i++)
    if (!strcasecmp(name, ACT_NAMES[i])) {
      *out = (kiln_activation)i;
      return KILN_OK;
    }
  return kiln_set_error(KILN_ERR_INVALID, "unknown activation '%s'", name ? name : "(null)");
}

kiln_value kiln_activate(kiln_graph *g, kiln_value x, kiln_activation a) {
  kiln_dtype t = kiln_value_dtype(g, x);
#define C(v) kiln_scalar(g, t, (v))
  switch (a) {
  case KILN_ACT_LINEAR: return x;
  case KILN_ACT_RELU: return kiln_relu(g, x);
  case KILN_ACT_SIGMOID: return kiln_sigmoid(g, x);
  case KILN_ACT_TANH: return kiln_tanh(g, x);
  case KILN_ACT_SOFTMAX: return kiln_softmax(g, x, -1);
  case KILN_ACT_ELU:
  case KILN_ACT_SELU: {
    bool selu = a == KILN_ACT_SELU;
    kiln_value neg = kiln_mul(g, C(selu ? 1.6732632423543772 : 1.0), kiln_sub(g, kiln_exp(g, x), C(1)));
    kiln_value y = kiln_select(g, kiln_greater(g, x, C(0)), x, neg);
    return selu ? kiln_mul(g, C(1.0507009873554805), y) : y;
  }
  case KILN_ACT_LEAKY_RELU: return kiln_select(g, kiln_greater(g, x, C(0)), x, kiln_mul(g, C(0.2), x));
  case KILN_ACT_GELU: {
    kiln_value inner = kiln_mul(g, C(0.7978845608028654), kiln_add(g, x, kiln_mul(g, C(0.044715), kiln_mul(g, x, kiln_square(g, x)))));
    return kiln_mul(g, kiln_mul(g, C(0.5), x), kiln_add(g, C(1), kiln_tanh(g, inner)));
  }
  case KILN_ACT_SWISH: return kiln_mul(g, x, kiln_sigmoid(g, x));
  default: return kiln_graph_fail(g, KILN_ERR_INVALID, "activation: unknown activation %d", (int)a);
  }
#undef C
}

/* ---- the layer object ---- */

kiln_layer *kiln_layer_new(const kiln_layer_class *cls, const char *name, void *state) {
  if (!cls || !cls->call || !cls->type) {
    kiln_set_error(KILN_ERR_INVALID, "layer_new: a layer class needs a type and a call function");
    return NULL;
  }
  kiln_layer *l = calloc(1, sizeof *l);
  if (!l || (name && !(l->name = strdup(name)))) {
    free(l);
    if (cls->destroy) cls->destroy(state);
    kiln_set_error(KILN_ERR_NOMEM, "layer_new: out of memory");
    return NULL;
  }
  l->cls = cls;
  l->state = state;
  return l;
}

void kiln_layer_free(kiln_layer *l) {
  if (!l) return;
  if (l->cls->destroy) l->cls->destroy(l->state);
  for (size_t i = 0; i < l->nchildren; i++) kiln_layer_free(l->children[i]);
  free(l->children);
  free(l->weights);
  free(l->name);
  free(l->local);
  free(l);
}

void kiln_layer_type_base(const char *type, char *base, size_t cap) {
  size_t k = 0;
  for (size_t i = 0; type[i] && k + 2 < cap; i++) {
    if (isupper((unsigned char)type[i]) && i && islower((unsigned char)type[i - 1])) base[k++] = '_';
    base[k++] = (char)tolower((unsigned char)type[i]);
  }
  base[k] = 0;
}

static bool has_child(const kiln_layer *l, const char *local) {
  for (size_t i = 0; i < l->nchildren; i++)
    if (!strcmp(l->children[i]->local, local)) return true;
  return false;
}

uint64_t kiln_layer_name_hash(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

kiln_status kiln_layer_bind_children(kiln_layer *l) {
  for (size_t i = 0; i < l->nchildren; i++) {
    kiln_layer *c = l->children[i];
    if (c->vars) continue;
    size_t n = strlen(l->name) + strlen(c->local) + 2;
    char *full = malloc(n);
    if (!full) return kiln_set_error(KILN_ERR_NOMEM, "layer '%s': out of memory", l->name);
    snprintf(full, n, "%s/%s", l->name, c->local);
    free(c->name);
    c->name = full;
    c->vars = l->vars;
    c->seed = l->seed ^ kiln_layer_name_hash(c->local);
    kiln_status st = kiln_layer_bind_children(c);
    if (st != KILN_OK) return st;
  }
  return KILN_OK;
}

kiln_layer *kiln_layer_track(kiln_layer *l, kiln_layer *child) {
  const char *why = !l || !child ? "NULL layer (did a constructor fail? see the previous error)"
                    : child == l || child->parent || child->vars ? "the layer already has a parent or a model"
                                                                 : NULL;
  char local[160];
  if (!why && child->name && has_child(l, child->name)) why = "a sub-layer of that name exists";
  if (!why && child->name) snprintf(local, sizeof local, "%s", child->name);
  if (!why && !child->name) {
    char base[128];
    kiln_layer_type_base(child->cls->type, base, sizeof base);
    snprintf(local, sizeof local, "%s", base);
    for (int k = 1; has_child(l, local); k++) snprintf(local, sizeof local, "%s_%d", base, k);
  }
  if (!why && l->nchildren == l->children_cap) {
    size_t cap = l->children_cap ? 2 * l->children_cap : 4;
    kiln_layer **c = realloc(l->children, sizeof *c * cap);
    if (c) l->children = c, l->children_cap = cap;
    else why = "out of memory";
  }
  if (!why && !(child->local = strdup(local))) why = "out of memory";
  if (why) {
    kiln_set_error(!l || !child ? KILN_ERR_INVALID : strcmp(why, "out of memory") ? KILN_ERR_INVALID : KILN_ERR_NOMEM,
                   "layer_track: %s", why);
    if (child && !child->parent && !child->vars && child != l) kiln_layer_free(child);
    return NULL;
  }
  child->parent = l;
  child->frozen |= l->frozen;
  l->children[l->nchildren++] = child;
  if (l->vars && kiln_layer_bind_children(l) != KILN_OK) return NULL; /* owned by l now */
  return child;
}

kiln_value kiln_layer_call(kiln_layer *l, kiln_graph *g, const kiln_value *x, size_t n, bool training) {
  if (!l) return kiln_graph_fail(g, KILN_ERR_INVALID, "layer_call: NULL layer");
  if (!l->vars)
    return kiln_graph_fail(g, KILN_ERR_INVALID, "layer_call: layer '%s' is in no model (track it in a layer of one)",
                           l->name ? l->name : l->cls->type);
  kiln_value y = kiln_layer_invoke(l, g, x, n, training);
  if (y.id != KILN_NONE && l->out_shape.rank == 0) l->out_shape = kiln_value_shape(g, y);
  return y;
}

void *kiln_layer_state(kiln_layer *l) { return l ? l->state : NULL; }
const char *kiln_layer_name(const kiln_layer *l) { return l ? l->name : NULL; }
bool kiln_layer_trainable(const kiln_layer *l) { return l && !l->frozen; }

kiln_layer *kiln_layer_named(kiln_layer *l, const char *name) {
  if (!l) return NULL;
  char *copy = name && *name ? strdup(name) : NULL;
  if (l->vars || !copy) {
    kiln_set_error(l->vars ? KILN_ERR_INVALID : KILN_ERR_NOMEM, "layer_named: %s",
                   l->vars ? "the layer is already in a model" : "empty name or out of memory");
    free(copy);
    if (!l->vars) kiln_layer_free(l);
    return NULL;
  }
  free(l->name);
  l->name = copy;
  return l;
}

kiln_value kiln_layer_invoke(kiln_layer *l, kiln_graph *g, const kiln_value *x, size_t n, bool training) {
  if (kiln_graph_status(g) != KILN_OK) return (kiln_value){KILN_NONE};
  if (!l->built) {
    kiln_shape shapes[64];
    for (size_t i = 0; i < n && i < 64; i++) shapes[i] = kiln_value_shape(g, x[i]);
    if (l->cls->build && l->cls->build(l, shapes, n) != KILN_OK) return kiln_graph_fail(g, KILN_ERR_INVALID, "%s", kiln_errmsg());
    l->built = true;
  }
  kiln_value y = l->cls->call(l, g, x, n, training);
  if (kiln_graph_status(g) == KILN_OK && y.id == KILN_NONE)
    return kiln_graph_fail(g, KILN_ERR_INVALID, "layer '%s' (%s) returned no value", l->name, l->cls->type);
  return y;
}

void kiln_layer_set_trainable(kiln_layer *l, bool trainable) {
  if (!l) return;
  l->frozen = !trainable;
  for (size_t i = 0; i < l->nweights; i++) kiln_variable_set_trainable(l->weights[i], trainable);
  for (size_t i = 0; i < l->nchildren; i++) kiln_layer_set_trainable(l->children[i], trainable);
}

static kiln_status list_weight(kiln_layer *l, kiln_variable *v) {
  if (l->nweights == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 4;
    kiln_variable **w = realloc(l->weights, sizeof *w * cap);
    if (!w) return kiln_set_error(KILN_ERR_NOMEM, "layer '%s': out of memory", l->name);
    l->weights = w;
    l->cap = cap;
  }
  l->weights[l->nweights++] = v;
  return KILN_OK;
}

kiln_status kiln_layer_add_weight(kiln_layer *l, const char *name, kiln_dtype t, kiln_shape s, kiln_initializer init,
                                  bool trainable, kiln_variable **out) {
  if (!l || !name || !out) return kiln_set_error(KILN_ERR_INVALID, "layer_add_weight: NULL argument");
  if (!l->vars) return kiln_set_error(KILN_ERR_INVALID, "layer '%s': add it to a model before building", l->name);
  char full[512];
  snprintf(full, sizeof full, "%s/%s", l->name, name);
  kiln_status st = kiln_variable_new(l->vars, full, t, s, init, trainable && !l->frozen, out);
  for (kiln_layer *a = l; st == KILN_OK && a; a = a->parent) st = list_weight(a, *out);
  return st;
}

/* ---- built-in layers ---- */

/* Dense and Conv2D: a glorot_uniform kernel, a zero bias, then bias + activation after the op. */
kiln_status kiln_layer_kernel_and_bias(kiln_layer *l, kiln_shape kernel, int64_t units, kiln_variable **k,
                                       kiln_variable **b) {
  kiln_status st = kiln_layer_add_weight(l, "kernel", KILN_F32, kernel, KILN_GLOROT_UNIFORM, true, k);
  return st == KILN_OK ? kiln_layer_add_weight(l, "bias", KILN_F32, KILN_SHAPE(units), KILN_ZEROS, true, b) : st;
}

kiln_value kiln_layer_bias_act(kiln_graph *g, kiln_value y, kiln_variable *bias, kiln_activation act) {
  return kiln_activate(g, kiln_add(g, y, kiln_variable_read(g, bias)), act);
}

typedef struct dense {
  int64_t units;
  kiln_activation act;
  kiln_variable *kernel, *bias;
} dense;

static kiln_status dense_build(kiln_layer *l, const kiln_shape *ins, size_t n) {
  kiln_shape in = ins[0];
  dense *d = l->state;
  if (in.rank < 2 || in.dims[in.rank - 1] < 0)
    return kiln_set_error(KILN_ERR_INVALID, "Dense '%s': needs inputs [batch, ..., features], got rank %d", l->name, in.rank);
  return kiln_layer_kernel_and_bias(l, KILN_SHAPE(in.dims[in.rank - 1], d->units), d->units, &d->kernel, &d->bias);
}

static kiln_value dense_call(kiln_layer *l, kiln_graph *g, const kiln_value *in, size_t n, bool training) {
  kiln_value x = in[0];
  dense *d = l->state;
  return kiln_layer_bias_act(g, kiln_matmul(g, x, kiln_variable_read(g, d->kernel), false, false), d->bias, d->act);
}

static const kiln_layer_class DENSE = {"Dense", 0, dense_build, dense_call, free};

kiln_layer *kiln_layer_with_state(const kiln_layer_class *cls, void *state, size_t size, const char *what) {
  void *s = malloc(size);
  if (!s) {
    kiln_set_error(KILN_ERR_NOMEM, "%s: out of memory", what);
    return NULL;
  }
  memcpy(s, state, size);
  return kiln_layer_new(cls, NULL, s);
}

kiln_layer *kiln_layer_dense(int64_t units, kiln_activation act) {
  if (units < 1 || (unsigned)act >= KILN_ACT_COUNT) {
    kiln_set_error(KILN_ERR_INVALID, "Dense: units must be >= 1 and the activation valid");
    return NULL;
  }
  dense d = {units, act, NULL, NULL};
  return kiln_layer_with_state(&DENSE, &d, sizeof d, "Dense");
}

static kiln_value flatten_call(kiln_layer *l, kiln_graph *g, const kiln_value *in, size_t n, bool training) {
  kiln_value x = in[0];
  kiln_shape s = kiln_value_shape(g, x);
  int64_t features = 1;
  for (int i = 1; i < s.rank; i++) features *= s.dims[i];
  return kiln_reshape(g, x, KILN_SHAPE(s.rank ? s.dims[0] : 1, features));
}
static const kiln_layer_class FLATTEN = {"Flatten", 0, NULL, flatten_call, NULL};
kiln_layer *kiln_layer_flatten(void) { return kiln_layer_new(&FLATTEN, NULL, NULL); }

static kiln_value activation_call(kiln_layer *l, kiln_graph *g, const kiln_value *in, size_t n, bool training) {
  kiln_value x = in[0];
  return kiln_activate(g, x, *(kiln_activation *)l->state);
}
static const kiln_layer_class ACTIVATION = {"Activation", 0, NULL, activation_call, free};
kiln_layer *kiln_layer_activation(kiln_activation act) {
  if ((unsigned)act >= KILN_ACT_COUNT) {
    kiln_set_error(KILN_ERR_INVALID, "Activation: unknown activation %d", (int)act);
    return NULL;
  }
  return kiln_layer_with_state(&ACTIVATION, &act, sizeof act, "Activation");
}

/* Keras' Rescaling; in a dtype-preserving form so float64 models stay float64. */
static kiln_value rescaling_call(kiln_layer *l, kiln_graph *g, const kiln_value *in, size_t n, bool training) {
  const double *so = l->state;
  kiln_dtype t = kiln_value_dtype(g, in[0]);
  if (t != KILN_F32 && t != KILN_F64)
    return kiln_graph_fail(g, KILN_ERR_INVALID, "Rescaling: input must be float (got %s); cast integer data first",
                           kiln_dtype_name(t));
  return kiln_add(g, kiln_mul(g, in[0], kiln_scalar(g, t, so[0])), kiln_scalar(g, t, so[1]));
}
static const kiln_layer_class RESCALING = {"Rescaling", 0, NULL, rescaling_call, free};
kiln_layer *kiln_layer_rescaling(double scale, double offset) {
  if (!isfinite(scale) || !isfinite(offset)) {
    kiln_set_error(KILN_ERR_INVALID, "Rescaling: scale %g and offset %g must be finite", scale, offset);
    return NULL;
  }
  double so[2] = {scale, offset};
  return kiln_layer_with_state(&RESCALING, so, sizeof so, "Rescaling");
}

static kiln_value reshape_call(kiln_layer *l, kiln_graph *g, const kiln_value *in, size_t n, bool training) {
  kiln_value x = in[0];
  const kiln_shape *target = l->state;
  kiln_shape s = {.rank = target->rank + 1};
  s.dims[0] = kiln_value_shape(g, x).dims[0];
  memcpy(s.dims + 1, target->dims, sizeof(int64_t) * (size_t)target->rank);
  return kiln_reshape(g, x, s);
}
static const kiln_layer_class RESHAPE = {"Reshape", 0, NULL, reshape_call, free};
kiln_layer *kiln_layer_reshape(kiln_shape target) {
  if (target.rank < 0 || target.rank >= KILN_MAX_RANK) {
    kiln_set_error(KILN_ERR_INVALID, "Reshape: target rank %d is outside 0..%d", target.rank, KILN_MAX_RANK - 1);
    return NULL;
  }
  return kiln_layer_with_state(&RESHAPE, &target, sizeof target, "Reshape");
}

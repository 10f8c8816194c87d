/* Merge layers: several inputs in, one out. Add and Multiply broadcast like NumPy
 * (so [batch, 1] gates [batch, n]); Concatenate joins along one axis. */
#include "frontend/model_impl.h"

static kiln_status concat_build(kiln_layer *l, const kiln_shape *in, size_t n) {
  int axis = *(const int *)l->state, r = in[0].rank;
  if (axis < 0) axis += r;
  if (axis < 1 || axis >= r)
    return kiln_set_error(KILN_ERR_INVALID, "Concatenate '%s': axis %d is outside 1..%d for inputs of rank %d", l->name,
                          *(const int *)l->state, r - 1, r);
  for (size_t i = 1; i < n; i++) {
    bool ok = in[i].rank == r;
    for (int d = 1; ok && d < r; d++) ok = d == axis || in[i].dims[d] == in[0].dims[d];
    if (!ok) {
      char a[128], b[128];
      return kiln_set_error(KILN_ERR_INVALID, "Concatenate '%s': input %zu has shape %s, input 0 %s (only axis %d may differ)",
                            l->name, i, kiln_shape_str(b, sizeof b, in[i].rank, in[i].dims),
                            kiln_shape_str(a, sizeof a, r, in[0].dims), axis);
    }
  }
  return KILN_OK;
}

static kiln_value concat_call(kiln_layer *l, kiln_graph *g, const kiln_value *in, size_t n, bool training) {
  int axis = *(const int *)l->state;
  return kiln_concat(g, in, (int)n, axis < 0 ? axis + kiln_value_shape(g, in[0]).rank : axis);
}

static kiln_value add_call(kiln_layer *l, kiln_graph *g, const kiln_value *in, size_t n, bool training) {
  kiln_value y = in[0];
  for (size_t i = 1; i < n; i++) y = kiln_add(g, y, in[i]);
  return y;
}

static kiln_value multiply_call(kiln_layer *l, kiln_graph *g, const kiln_value *in, size_t n, bool training) {
  kiln_value y = in[0];
  for (size_t i = 1; i < n; i++) y = kiln_mul(g, y, in[i]);
  return y;
}

static const kiln_layer_class CONCATENATE = {"Concatenate", -1, concat_build, concat_call, free};
static const kiln_layer_class ADD = {"Add", -1, NULL, add_call, NULL};
static const kiln_layer_class MULTIPLY = {"Multiply", -1, NULL, multiply_call, NULL};

kiln_layer *kiln_layer_concatenate(int axis) { return kiln_layer_with_state(&CONCATENATE, &axis, sizeof axis, "Concatenate"); }
kiln_layer *kiln_layer_add(void) { return kiln_layer_new(&ADD, NULL, NULL); }
kiln_layer *kiln_layer_multiply(void) { return kiln_layer_new(&MULTIPLY, NULL, NULL); }

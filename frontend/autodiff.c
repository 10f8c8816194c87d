/* kiln_gradients: reverse-mode autodiff as a graph-to-graph transformation, like
 * tf.gradients. The backward nodes are appended to the same graph, so forward
 * and backward compile into one function and share the forward values.
 *
 * Gradients flow only along float edges into inputs that kiln_grad_flows allows
 * (not into select conditions, indices or comparison operands). Paths through
 * non-differentiable ops (argmax, floor, comparisons, integer casts) carry zero
 * gradient almost everywhere, so they are skipped — but when such paths are the
 * only connection between x and the loss the caller asked a meaningless question,
 * and gets an error naming the op instead of a silent zero. An x that does not
 * affect the loss at all gets a zero gradient, like unconnected_gradients=ZERO. */
#include <string.h>
#include "frontend/grad.h"
#include "kiln/graph.h"

static bool is_float(const kiln_graph *g, uint32_t v) { return kiln_dtype_is_float((kiln_dtype)g->nodes[v].dtype); }

/* The edge from input k of node i carries a gradient. */
static bool diff_edge(const kiln_graph *g, uint32_t i, uint32_t k) {
  const kiln_node *n = &g->nodes[i];
  return is_float(g, i) && is_float(g, n->inputs[k]) && kiln_grad_flows((kiln_op)n->op, k);
}

/* Marks nodes in [from, upto] that depend on `from`: reach along any edge, dreach along gradient edges. */
static void forward_marks(const kiln_graph *g, uint32_t from, uint32_t upto, bool *reach, bool *dreach) {
  memset(reach + from, 0, upto - from + 1);
  memset(dreach + from, 0, upto - from + 1);
  reach[from] = dreach[from] = true;
  for (uint32_t i = from + 1; i <= upto; i++) {
    const kiln_node *n = &g->nodes[i];
    for (uint32_t k = 0; k < n->ninputs; k++) {
      uint32_t in = n->inputs[k];
      if (in < from) continue;
      reach[i] |= reach[in];
      dreach[i] |= dreach[in] && diff_edge(g, i, k);
    }
  }
}

/* Names the first op on a path from x to the loss that blocks the gradient. */
static kiln_status explain_blocked(kiln_graph *g, uint32_t x, uint32_t loss, const bool *reach, const bool *needed) {
  for (uint32_t i = x + 1; i <= loss; i++) {
    const kiln_node *n = &g->nodes[i];
    if (!reach[i] || !needed[i]) continue;
    for (uint32_t k = 0; k < n->ninputs; k++) {
      uint32_t in = n->inputs[k];
      if (in < x || !reach[in] || diff_edge(g, i, k)) continue;
      char desc[512];
      kiln_node_describe(g, n, desc, sizeof desc);
      const char *why = !(kiln_ops[n->op].flags & DIFF) ? "the op is not differentiable"
                        : !is_float(g, i)              ? "its result is not a float, so no gradient flows through it"
                                                        : "no gradient flows into that operand";
      return kiln_set_error(KILN_ERR_INVALID,
                            "gradients: %%%u reaches the loss %%%u only through %%%u = %s: %s", x, loss, i, desc, why);
    }
  }
  return kiln_set_error(KILN_ERR_INVALID, "gradients: %%%u reaches the loss only through non-differentiable ops", x);
}

static kiln_status graph_error(kiln_graph *g) { return kiln_set_error(g->status, "%s", g->errmsg); }

kiln_status kiln_gradients(kiln_graph *g, kiln_value loss, const kiln_value *wrt, size_t n, kiln_value *grads) {
  if (!g) return kiln_set_error(KILN_ERR_INVALID, "gradients: null graph");
  if (g->status != KILN_OK) return graph_error(g);
  if (n && (!wrt || !grads)) return kiln_set_error(KILN_ERR_INVALID, "gradients: wrt or grads is NULL");
  for (size_t i = 0; i < n; i++) grads[i].id = KILN_NONE;
  if (loss.id >= g->nnodes) return kiln_set_error(KILN_ERR_INVALID, "gradients: the loss is not a value of this graph");
  if (!is_float(g, loss.id))
    return kiln_set_error(KILN_ERR_INVALID, "gradients: the loss must be f32 or f64, got %s",
                          kiln_dtype_name((kiln_dtype)g->nodes[loss.id].dtype));
  for (size_t i = 0; i < n; i++) {
    if (wrt[i].id >= g->nnodes) return kiln_set_error(KILN_ERR_INVALID, "gradients: wrt[%zu] is not a value of this graph", i);
    if (!is_float(g, wrt[i].id))
      return kiln_set_error(KILN_ERR_INVALID, "gradients: wrt[%zu] (%%%u) is %s; gradients exist only for floats", i,
                            wrt[i].id, kiln_dtype_name((kiln_dtype)g->nodes[wrt[i].id].dtype));
  }

  uint32_t nn = loss.id + 1; /* only nodes up to the loss can matter */
  bool *needed = calloc(nn, 1), *reach = calloc(nn, 1), *dreach = calloc(nn, 1), *active = calloc(nn, 1);
  kiln_value *acc = malloc(sizeof *acc * nn);
  kiln_status st = KILN_OK;
  if (!needed || !reach || !dreach || !active || !acc) {
    st = kiln_set_error(KILN_ERR_NOMEM, "gradients: out of memory");
    goto done;
  }
  needed[loss.id] = true;
  for (uint32_t i = nn; i-- > 0;)
    if (needed[i])
      for (uint32_t k = 0; k < g->nodes[i].ninputs; k++) needed[g->nodes[i].inputs[k]] = true;

  /* Per x: is there a gradient path? `active` collects every node on one. */
  uint32_t lowest = loss.id;
  for (size_t i = 0; i < n; i++) {
    uint32_t x = wrt[i].id;
    if (x > loss.id || !needed[x]) continue;
    forward_marks(g, x, loss.id, reach, dreach);
    if (!dreach[loss.id]) {
      st = explain_blocked(g, x, loss.id, reach, needed);
      goto done;
    }
    for (uint32_t j = x; j <= loss.id; j++) active[j] |= dreach[j] && needed[j];
    if (x < lowest) lowest = x;
  }

  for (uint32_t i = 0; i < nn; i++) acc[i].id = KILN_NONE;
  kiln_shape ls = kiln_value_shape(g, loss);
  acc[loss.id] = kiln_fill(g, (kiln_dtype)g->nodes[loss.id].dtype, ls, 1.0);
  for (uint32_t i = loss.id + 1; i-- > lowest;) {
    if (!active[i] || acc[i].id == KILN_NONE) continue;
    kiln_node node = g->nodes[i];
    if (kiln_ops[node.op].flags & SRC) continue;
    kiln_grad_rule rule = kiln_grad_rules[node.op];
    if (!rule) {
      st = kiln_set_error(KILN_ERR_UNSUPPORTED, "gradients: op %s has no gradient rule", kiln_ops[node.op].name);
      goto done;
    }
    kiln_value dx[64];
    if (node.ninputs > 64) {
      st = kiln_set_error(KILN_ERR_UNSUPPORTED, "gradients: %s with %u inputs (max 64)", kiln_ops[node.op].name,
                          node.ninputs);
      goto done;
    }
    for (uint32_t k = 0; k < node.ninputs; k++) dx[k].id = KILN_NONE;
    grad_ctx c = {.g = g, .n = node, .y = {i}, .dy = acc[i]};
    rule(&c, dx);
    if (g->status != KILN_OK) {
      st = graph_error(g);
      goto done;
    }
    for (uint32_t k = 0; k < node.ninputs; k++) {
      uint32_t in = node.inputs[k];
      if (!active[in] || !diff_edge(g, i, k)) continue;
      KILN_ASSERT(dx[k].id != KILN_NONE);
      acc[in] = acc[in].id == KILN_NONE ? dx[k] : kiln_add(g, acc[in], dx[k]);
    }
    if (g->status != KILN_OK) {
      st = graph_error(g);
      goto done;
    }
  }
  for (size_t i = 0; i < n; i++) {
    uint32_t x = wrt[i].id;
    grads[i] = x <= loss.id && acc[x].id != KILN_NONE
                   ? acc[x]
                   : kiln_fill(g, (kiln_dtype)g->nodes[x].dtype, kiln_value_shape(g, wrt[i]), 0.0);
  }
  if (g->status != KILN_OK) st = graph_error(g);
done:
  if (st != KILN_OK)
    for (size_t i = 0; i < n; i++) grads[i].id = KILN_NONE;
  free(needed);
  free(reach);
  free(dreach);
  free(active);
  free(acc);
  return st;
}

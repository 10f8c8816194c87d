/* Reverse-mode autodiff internals: one gradient rule per differentiable op.
 *
 * A rule receives the node (a copy: building nodes may move g->nodes), its
 * output y and the incoming gradient dy (same shape as y), and sets dx[i] for
 * every input i the gradient flows into (kiln_grad_flows). Rules build only
 * primitive ops through the builder, so their results are differentiable in
 * turn and run through the same compiler. */
#ifndef KILN_FRONTEND_GRAD_H
#define KILN_FRONTEND_GRAD_H

#include "ir/ir.h"

typedef struct grad_ctx {
  kiln_graph *g;
  kiln_node n;
  kiln_value y, dy;
} grad_ctx;

typedef void (*kiln_grad_rule)(grad_ctx *c, kiln_value *dx);

/* Indexed by op; NULL for ops without the DIFF flag. */
KILN_INTERNAL extern const kiln_grad_rule kiln_grad_rules[KILN_OP_COUNT];

/* Whether a gradient flows from op's output into its input i (conditions and indices do not). */
KILN_INTERNAL bool kiln_grad_flows(kiln_op op, uint32_t i);

/* grad_nn.c: convolution and pooling. */
KILN_INTERNAL void kiln_grad_conv2d(grad_ctx *c, kiln_value *dx);
KILN_INTERNAL void kiln_grad_conv2d_filter_grad(grad_ctx *c, kiln_value *dx);
KILN_INTERNAL void kiln_grad_max_pool2d(grad_ctx *c, kiln_value *dx);
KILN_INTERNAL void kiln_grad_max_pool2d_grad(grad_ctx *c, kiln_value *dx);
KILN_INTERNAL void kiln_grad_avg_pool2d(grad_ctx *c, kiln_value *dx);

/* Shared helpers. */
static inline kiln_value grad_input(const grad_ctx *c, uint32_t i) { return (kiln_value){c->n.inputs[i]}; }
/* A shape's dims as reshape/broadcast targets: the batch symbol stays -1. */
static inline kiln_shape grad_node_shape(const kiln_node *n) {
  kiln_shape s = {.rank = n->rank};
  for (int d = 0; d < n->rank; d++) s.dims[d] = n->dims[d];
  return s;
}

#endif

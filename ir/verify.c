/* The verifier: checks the invariants every pass must preserve — topological
 * order, attributes sorted and unique, each node's type equal to what inference
 * computes from its inputs now, outputs naming real values. Tests run it after
 * every pass; it never aborts, it reports the first broken invariant. */
#include <string.h>
#include "ir/ir.h"

kiln_status kiln_graph_verify(const kiln_graph *g) {
  if (!g) return kiln_set_error(KILN_ERR_INVALID, "verify: null graph");
  if (g->status != KILN_OK) return kiln_set_error(g->status, "%s", g->errmsg);
  /* Inference writes errors into a graph; use a scratch copy of the header so g stays const. */
  kiln_graph scratch = *g;
  scratch.status = KILN_OK;
  scratch.errmsg[0] = 0;
  uint32_t params = 0;
  for (uint32_t i = 0; i < g->nnodes; i++) {
    const kiln_node *n = &g->nodes[i];
    if (n->op >= KILN_OP_COUNT) return kiln_set_error(KILN_ERR_INVALID, "verify: %%%u has an invalid op", i);
    const kiln_op_info *info = &kiln_ops[n->op];
    if (info->arity >= 0 ? n->ninputs != (uint32_t)info->arity : n->ninputs == 0)
      return kiln_set_error(KILN_ERR_INVALID, "verify: %%%u (%s) has %u inputs", i, info->name, n->ninputs);
    for (uint32_t j = 0; j < n->ninputs; j++)
      if (n->inputs[j] >= i)
        return kiln_set_error(KILN_ERR_INVALID, "verify: %%%u (%s) uses %%%u, which is not defined before it", i,
                              info->name, n->inputs[j]);
    for (uint32_t j = 1; j < n->nattrs; j++)
      if (n->attrs[j].key <= n->attrs[j - 1].key)
        return kiln_set_error(KILN_ERR_INVALID, "verify: %%%u (%s) has unsorted or repeated attributes", i, info->name);
    if (n->op == KILN_OP_PARAM) params++;
    kiln_node copy = *n;
    scratch.nnodes = i; /* inference may only look at earlier nodes */
    scratch.nodes = g->nodes;
    if (!kiln_infer(&scratch, &copy))
      return kiln_set_error(KILN_ERR_INVALID, "verify: %%%u: %s", i, scratch.errmsg);
    if (copy.dtype != n->dtype || copy.rank != n->rank || memcmp(copy.dims, n->dims, sizeof n->dims)) {
      char a[128], b[128];
      return kiln_set_error(KILN_ERR_INVALID, "verify: %%%u (%s) has type %s%s but inference gives %s%s", i, info->name,
                            kiln_dtype_name((kiln_dtype)n->dtype), kiln_shape_str(a, sizeof a, n->rank, n->dims),
                            kiln_dtype_name((kiln_dtype)copy.dtype), kiln_shape_str(b, sizeof b, copy.rank, copy.dims));
    }
  }
  for (uint32_t i = 0; i < g->noutputs; i++)
    if (g->outputs[i].node >= g->nnodes)
      return kiln_set_error(KILN_ERR_INVALID, "verify: output '%s' names a missing value", g->outputs[i].name);
  (void)params;
  return KILN_OK;
}

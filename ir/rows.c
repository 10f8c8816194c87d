/* Row independence: whether row i of a batch-dynamic value depends on row i of the
 * batch inputs alone. When it does, a short batch can run through code compiled for a
 * longer one, padded with rows of weight zero, and its rows come out as a run at the
 * short size would give them (runtime/fit.c pads the last batch so). Ops that mix rows
 * (a reduction or contraction over the batch, a transpose or reshape moving it) make
 * every value after them mixed; an op this file does not know is mixed too. */
#include "ir/ir.h"

typedef enum { INVARIANT, ROWS, MIXED } row_dep;

/* The batch symbol at dim 0 and nowhere else. */
static bool batch_leads(const kiln_node *n) {
  if (n->rank < 1 || n->dims[0] >= 0) return false;
  for (int d = 1; d < n->rank; d++)
    if (n->dims[d] < 0) return false;
  return true;
}

static bool has_batch(const kiln_node *n) {
  for (int d = 0; d < n->rank; d++)
    if (n->dims[d] < 0) return true;
  return false;
}

static bool reduces_batch(const kiln_node *n) {
  if (n->op == KILN_OP_ARGMAX) return kiln_attr_int(n, KILN_ATTR_AXIS, -1) == 0;
  int64_t axes[KILN_MAX_RANK];
  int na = kiln_attr_ints(n, KILN_ATTR_AXES, axes);
  for (int i = 0; i < na; i++)
    if (axes[i] == 0) return true;
  return false;
}

/* n has an input that depends on the batch data, none of them mixed, and its own
 * batch dim leads. */
static row_dep op_dep(const kiln_graph *g, const kiln_node *n, const row_dep *dep) {
  unsigned flags = kiln_ops[n->op].flags;
  if (flags & EW) return ROWS;
  if (flags & RED) return reduces_batch(n) ? MIXED : ROWS;
  row_dep a = dep[n->inputs[0]], b = n->ninputs > 1 ? dep[n->inputs[1]] : INVARIANT;
  switch (n->op) {
  case KILN_OP_MATMUL:
    /* batched matmuls pair rows; a 2-D one keeps a's rows as its own */
    if (n->rank > 2) return ROWS;
    return a == ROWS && b == INVARIANT && !kiln_attr_int(n, KILN_ATTR_TRANSPOSE_A, 0) ? ROWS : MIXED;
  case KILN_OP_CONV2D: return b == INVARIANT ? ROWS : MIXED; /* images are rows; a data-dependent filter mixes */
  case KILN_OP_MAX_POOL2D:
  case KILN_OP_AVG_POOL2D:
  case KILN_OP_MAX_POOL2D_GRAD:
  case KILN_OP_ONE_HOT:
  case KILN_OP_BROADCAST_TO:
  case KILN_OP_RESHAPE: /* the -1 absorbs the batch (ir/infer.c), so a row keeps its elements */
  case KILN_OP_SLICE:   /* the batch dim is kept whole */
  case KILN_OP_PAD:
  case KILN_OP_CONCAT:  /* never along the batch */
  case KILN_OP_GATHER:  /* never along the batch; batch-shaped indices into a table give rows */
    return ROWS;
  case KILN_OP_TRANSPOSE: {
    int64_t perm[KILN_MAX_RANK];
    return kiln_attr_ints(n, KILN_ATTR_PERM, perm) > 0 && perm[0] == 0 ? ROWS : MIXED;
  }
  default: return MIXED;
  }
}

bool kiln_graph_rows_independent(const kiln_graph *g, const uint32_t *values, size_t nvalues) {
  uint32_t last = 0;
  for (size_t i = 0; i < nvalues; i++) last = values[i] > last ? values[i] : last;
  for (uint32_t i = 0; i < g->nassigns; i++) last = g->assigns[i].node > last ? g->assigns[i].node : last;
  if (!g->nnodes || last >= g->nnodes) return false;
  row_dep *dep = calloc((size_t)last + 1, sizeof *dep);
  if (!dep) return false;
  for (uint32_t i = 0; i <= last; i++) {
    const kiln_node *n = &g->nodes[i];
    row_dep worst = INVARIANT;
    for (uint32_t k = 0; k < n->ninputs; k++) worst = dep[n->inputs[k]] > worst ? dep[n->inputs[k]] : worst;
    bool data = n->op == KILN_OP_PARAM && !kiln_node_is_variable(n) && has_batch(n);
    if (worst == MIXED)
      dep[i] = MIXED;
    else if (!has_batch(n))
      dep[i] = worst == INVARIANT ? INVARIANT : MIXED; /* e.g. a sum over the batch */
    else if (!batch_leads(n))
      dep[i] = MIXED;
    else if (data || worst == INVARIANT)
      dep[i] = ROWS; /* a batch input; or fills, iotas, counter-based random numbers: the same per row index */
    else
      dep[i] = op_dep(g, n, dep);
  }
  bool ok = true;
  for (size_t i = 0; i < nvalues; i++) ok &= dep[values[i]] == ROWS;
  /* state written from the batch (moving statistics) would see the padding rows */
  for (uint32_t i = 0; i < g->nassigns; i++) ok &= dep[g->assigns[i].node] == INVARIANT;
  free(dep);
  return ok;
}

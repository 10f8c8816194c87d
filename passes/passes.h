/* Graph passes run before code generation (see passes/). */
#ifndef KILN_PASSES_H
#define KILN_PASSES_H

#include "ir/ir.h"

typedef struct kiln_memory_stats {
  uint64_t peak;      /* workspace bytes of intermediate buffers with the plan */
  uint64_t unplanned; /* the same with a buffer per node */
} kiln_memory_stats;

/* Workspace offsets (offsets[i], 64-byte aligned) for every live node with bytes[i] > 0
 * that needs its own buffer; reuse = false gives each its own bytes (the unplanned
 * layout, for comparison). Nodes run in index order. */
KILN_INTERNAL kiln_status kiln_plan_memory(const kiln_graph *g, const uint64_t *bytes, const bool *live, bool reuse,
                                           uint64_t *offsets, kiln_memory_stats *stats);
#endif

/* Graph passes run before code generation (see passes/). */
#ifndef KILN_PASSES_H
#define KILN_PASSES_H

#include <stdlib.h>
#include "ir/ir.h"

typedef struct kiln_memory_stats {
  uint64_t peak;      /* workspace bytes of intermediate buffers with the plan */
  uint64_t unplanned; /* the same with a buffer per node */
} kiln_memory_stats;

/* Workspace offsets (offsets[i], 64-byte aligned) for every node with bytes[i] > 0;
 * kernels run in node order and last[i] is the last node whose kernel reads i's
 * buffer (i itself when none). reuse = false gives each buffer its own bytes (the
 * unplanned layout, for comparison). */
KILN_INTERNAL kiln_status kiln_plan_memory(const kiln_graph *g, const uint64_t *bytes, const uint32_t *last, bool reuse,
                                           uint64_t *offsets, kiln_memory_stats *stats);

/* Marks inlined[i] for the live nodes computed inside the kernels that read them
 * (never those with stored[i]: inputs, constants with data, outputs), keeping every
 * kernel's distinct buffers at most max_reads; returns how many (passes/fuse.c
 * explains the rules). */
KILN_INTERNAL size_t kiln_fuse(const kiln_graph *g, const bool *live, const bool *stored, uint32_t max_reads,
                               bool *inlined);
#endif

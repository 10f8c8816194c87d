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
 * kernel's distinct buffers at most max_reads; host[k] is the kiln_can_host node
 * (inlined too) that kernel k runs before finishing its output element-wise, or
 * UINT32_MAX (always when host is NULL). Returns how many nodes are inlined (passes/fuse.c explains the rules),
 * SIZE_MAX when out of memory. */
KILN_INTERNAL size_t kiln_fuse(const kiln_graph *g, const bool *live, const bool *stored, uint32_t max_reads,
                               bool *inlined, uint32_t *host);
#define KILN_MAX_EPILOGUE_READS 32 /* buffers a kernel with a host may read (they ride in its task contexts) */
/* Ops whose kernels finish pieces of their output in order and can run an epilogue. */
static inline bool kiln_can_host(kiln_op op) {
  return op == KILN_OP_MATMUL || op == KILN_OP_CONV2D || op == KILN_OP_MAX_POOL2D_GRAD;
}

/* ---- schedule.c ---- */
#define KILN_MAX_READS 62 /* stored buffers one kernel may read */

typedef struct kiln_kernel {
  uint32_t node;                  /* the node the kernel computes */
  uint32_t nreads;
  uint32_t reads[KILN_MAX_READS]; /* the stored buffers it reads, through its fused nodes */
} kiln_kernel;

typedef struct kiln_schedule {
  bool *live;          /* per node: an output depends on it */
  bool *inlined;       /* per node: computed inside the kernels that read it */
  uint32_t *host;      /* per node: the kiln_can_host node its kernel runs first (kiln_fuse), or UINT32_MAX */
  uint32_t *last;      /* per node: the last kernel's node reading its buffer (itself if none) */
  uint32_t *kernel_of; /* per node: its kernel's index, or UINT32_MAX */
  kiln_kernel *kernels; /* in node order */
  size_t nkernels, fused;
} kiln_schedule;

typedef struct kiln_pass_switches {
  bool no_fold, no_simplify, no_layout, no_fusion, no_epilogue, no_memory_plan;
} kiln_pass_switches;

/* ---- simplify.c ---- */
enum { RULE_MUL_ONE, RULE_ADD_ZERO, RULE_NEG_NEG, RULE_LOG_EXP, RULE_NOOP, RULE_CHAIN, RULE_FILL, RULE_WEIGHTS_LAYOUT, RULE_COUNT };
typedef struct kiln_simplify_stats {
  size_t folded;              /* nodes replaced by their constant value */
  size_t rewrites;            /* nodes replaced by a rule */
  size_t by_rule[RULE_COUNT];
  size_t removed;             /* dead nodes dropped */
} kiln_simplify_stats;
/* g rebuilt with constant folding (fold) and the algebraic rules (rules), then
 * without dead nodes; inputs keep their order, outputs and assignments their names.
 * NULL with the error set on failure. */
KILN_INTERNAL kiln_graph *kiln_simplify(const kiln_graph *g, bool fold, bool rules, kiln_simplify_stats *stats);
KILN_INTERNAL const char *kiln_rule_name(int rule);
/* n's attributes as a list to edit and make a node with. */
KILN_INTERNAL void kiln_attrs_of(const kiln_node *n, kiln_attrs *a);
/* n (op, attributes, name, data) made in dst on the inputs in[]. */
KILN_INTERNAL uint32_t kiln_copy_node(kiln_graph *dst, const kiln_node *n, const uint32_t *in);
/* src's outputs and assignments, and its variables, on dst through map (src node -> dst node). */
KILN_INTERNAL kiln_status kiln_copy_ports(kiln_graph *dst, const kiln_graph *src, const uint32_t *map);
/* Dead-code elimination: a copy of g without the nodes no output or assignment reads
 * (inputs all stay: they are positional); *removed counts the dropped nodes. */
KILN_INTERNAL kiln_graph *kiln_without_dead(const kiln_graph *g, size_t *removed);
/* A node's replacement in dst (its inputs in[] already mapped), or KILN_NONE to copy it. */
typedef uint32_t (*kiln_rewrite_fn)(void *ctx, kiln_graph *dst, const kiln_node *n, const uint32_t *in);
/* What simplify and layout share: src rebuilt node by node, every node but the inputs
 * offered to replace first; outputs, assignments and variables carried over, then dead
 * nodes dropped (*removed counts them). NULL with the error set ("PASS: ...") on failure. */
KILN_INTERNAL kiln_graph *kiln_rebuild(const kiln_graph *src, const char *pass, kiln_rewrite_fn replace, void *ctx,
                                       size_t *removed);
/* Parses "fuse,memory-plan"-style lists (kiln_compile_options.disable_passes). */
KILN_INTERNAL kiln_status kiln_passes_disabled(const char *list, kiln_pass_switches *out);

/* ---- layout.c ---- */
typedef struct kiln_layout_stats {
  size_t moved;                           /* transposes sunk below an op */
  size_t cancelled;                       /* transpose pairs that met and cancelled */
  size_t before, after;                   /* transposes in the graph */
  int64_t elements_before, elements_after; /* elements they move per run */
} kiln_layout_stats;
/* g rebuilt with its transposes sunk through layout-agnostic ops (layout.c explains
 * when); NULL with the error set on failure. */
KILN_INTERNAL kiln_graph *kiln_choose_layout(const kiln_graph *g, kiln_layout_stats *stats);

/* ---- pipeline.c ---- */
/* Runs the graph-level passes on g (consumed) and returns the result; NULL with the
 * error set on failure. */
KILN_INTERNAL kiln_graph *kiln_optimize_graph(kiln_graph *g, const kiln_pass_switches *sw);
KILN_INTERNAL double kiln_pass_clock_ms(void);
KILN_INTERNAL bool kiln_pass_dump_after(const char *pass); /* KILN_DUMP lists after:PASS */
KILN_INTERNAL bool kiln_pass_stats_on(void);               /* KILN_PASS_STATS is set */

/* Inputs, constants with data and outputs are stored, whatever fusion decides. */
KILN_INTERNAL bool kiln_node_is_stored(const kiln_graph *g, uint32_t i);
/* fuse: run kiln_fuse; epilogues: let it give kernels hosts. */
KILN_INTERNAL kiln_status kiln_schedule_build(const kiln_graph *g, bool fuse, bool epilogues, kiln_schedule *s);
KILN_INTERNAL void kiln_schedule_free(kiln_schedule *s);
/* "N kernels, M nodes fused" and a line per kernel: "kernel %i op [after %h op] fuses %j op, ...; reads %k, ...". */
KILN_INTERNAL kiln_status kiln_schedule_to_text(const kiln_graph *g, const kiln_schedule *s, char **text);
#endif

/* Memory planning: workspace offsets for the intermediate buffers of a graph run in
 * node order, reusing a buffer's bytes once its last reader has run. Buffers are
 * placed best-fit into the free blocks (coalesced), else at the end; a node's output
 * is placed before its inputs are released, so no kernel writes over what it reads. */
#include <stdlib.h>
#include <string.h>
#include "passes/passes.h"

typedef struct block {
  uint64_t off, size;
} block;

typedef struct free_list {
  block *b;
  size_t n, cap;
} free_list;

static uint64_t align64(uint64_t x) { return (x + 63) & ~(uint64_t)63; }

/* Best fit: the smallest free block that holds size; UINT64_MAX if none. */
static uint64_t take(free_list *f, uint64_t size) {
  size_t best = f->n;
  for (size_t i = 0; i < f->n; i++)
    if (f->b[i].size >= size && (best == f->n || f->b[i].size < f->b[best].size)) best = i;
  if (best == f->n) return UINT64_MAX;
  uint64_t off = f->b[best].off;
  f->b[best].off += size, f->b[best].size -= size;
  if (!f->b[best].size) memmove(f->b + best, f->b + best + 1, (f->n - best - 1) * sizeof *f->b), f->n--;
  return off;
}

/* Returns [off, off + size) to the list (kept sorted by offset), merging neighbours. */
static bool give(free_list *f, uint64_t off, uint64_t size) {
  size_t i = 0;
  while (i < f->n && f->b[i].off < off) i++;
  if (i > 0 && f->b[i - 1].off + f->b[i - 1].size == off) {
    f->b[i - 1].size += size;
    if (i < f->n && off + size == f->b[i].off) {
      f->b[i - 1].size += f->b[i].size;
      memmove(f->b + i, f->b + i + 1, (f->n - i - 1) * sizeof *f->b), f->n--;
    }
    return true;
  }
  if (i < f->n && off + size == f->b[i].off) {
    f->b[i].off = off, f->b[i].size += size;
    return true;
  }
  if (f->n == f->cap) {
    size_t cap = f->cap ? 2 * f->cap : 16;
    block *nb = realloc(f->b, cap * sizeof *nb);
    if (!nb) return false;
    f->b = nb, f->cap = cap;
  }
  memmove(f->b + i + 1, f->b + i, (f->n - i) * sizeof *f->b);
  f->b[i] = (block){off, size};
  f->n++;
  return true;
}

kiln_status kiln_plan_memory(const kiln_graph *g, const uint64_t *bytes, const bool *live, bool reuse, uint64_t *offsets,
                             kiln_memory_stats *stats) {
  uint32_t n = g->nnodes;
  uint32_t *last = malloc(sizeof *last * (n + 1));
  free_list f = {0};
  if (!last) return kiln_set_error(KILN_ERR_NOMEM, "memory plan: out of memory");
  /* the last live reader of each buffer (itself when none) */
  for (uint32_t i = 0; i < n; i++) last[i] = i;
  for (uint32_t i = 0; i < n; i++)
    if (live[i])
      for (uint32_t j = 0; j < g->nodes[i].ninputs; j++) last[g->nodes[i].inputs[j]] = i;
  uint64_t end = 0, total = 0;
  kiln_status st = KILN_OK;
  for (uint32_t i = 0; i < n && st == KILN_OK; i++) {
    if (!live[i] || !bytes[i]) continue;
    uint64_t size = align64(bytes[i]);
    total += size;
    uint64_t off = reuse ? take(&f, size) : UINT64_MAX;
    if (off == UINT64_MAX) off = end, end += size;
    offsets[i] = off;
    if (!reuse) continue;
    /* release what node i was the last to read (and its own buffer when nothing reads it) */
    const kiln_node *nd = &g->nodes[i];
    for (uint32_t j = 0; j <= nd->ninputs && st == KILN_OK; j++) {
      uint32_t b = j < nd->ninputs ? nd->inputs[j] : i;
      bool dup = false; /* an input listed twice is released once */
      for (uint32_t k = 0; k < j && k < nd->ninputs; k++) dup |= nd->inputs[k] == b;
      if (!dup && bytes[b] && last[b] == i && !give(&f, offsets[b], align64(bytes[b])))
        st = kiln_set_error(KILN_ERR_NOMEM, "memory plan: out of memory");
    }
  }
  free(last);
  free(f.b);
  if (stats) stats->peak = end, stats->unplanned = total;
  return st;
}

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

kiln_status kiln_plan_memory(const kiln_graph *g, const uint64_t *bytes, const uint32_t *last, bool reuse, uint64_t *offsets,
                             kiln_memory_stats *stats) {
  uint32_t n = g->nnodes;
  /* the buffers to release after each node's kernel, as linked lists by last reader */
  uint32_t *head = malloc(sizeof *head * (n + 1)), *next = malloc(sizeof *next * (n + 1));
  free_list f = {0};
  kiln_status st = head && next ? KILN_OK : kiln_set_error(KILN_ERR_NOMEM, "memory plan: out of memory");
  for (uint32_t i = 0; i < n && st == KILN_OK; i++) head[i] = UINT32_MAX;
  for (uint32_t i = 0; i < n && st == KILN_OK; i++)
    if (bytes[i]) next[i] = head[last[i]], head[last[i]] = i;
  uint64_t end = 0, total = 0;
  for (uint32_t i = 0; i < n && st == KILN_OK; i++) {
    if (bytes[i]) {
      uint64_t size = align64(bytes[i]);
      total += size;
      uint64_t off = reuse ? take(&f, size) : UINT64_MAX;
      if (off == UINT64_MAX) off = end, end += size;
      offsets[i] = off;
    }
    /* placed before anything node i reads is released: a kernel never writes over its inputs */
    for (uint32_t b = head[i]; reuse && b != UINT32_MAX && st == KILN_OK; b = next[b])
      if (!give(&f, offsets[b], align64(bytes[b]))) st = kiln_set_error(KILN_ERR_NOMEM, "memory plan: out of memory");
  }
  free(head);
  free(next);
  free(f.b);
  if (stats) stats->peak = end, stats->unplanned = total;
  return st;
}

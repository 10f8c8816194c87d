/* The per-kernel profile of a JIT-compiled graph (kiln_compile_options.profile):
 * where a run's time goes, kernel by kernel, for people tuning fusion and kernels. */
#include <stdio.h>
#include <stdlib.h>
#include "codegen/cg.h"

typedef struct {
  size_t kernel;
  uint64_t ns, calls;
} row;

static int slowest_first(const void *a, const void *b) {
  const row *x = a, *y = b;
  return (x->ns < y->ns) - (x->ns > y->ns);
}

kiln_status cg_profile_text(const kiln_graph *g, const cg_plan *plan, const uint64_t *counters, char **text) {
  size_t n = plan->kernels;
  row *rows = calloc(n + 1, sizeof *rows);
  char *buf = NULL;
  size_t len = 0;
  FILE *f = rows ? open_memstream(&buf, &len) : NULL;
  if (!f) {
    free(rows);
    return kiln_set_error(KILN_ERR_NOMEM, "profile: out of memory");
  }
  uint64_t total = 0, runs = 0;
  for (size_t k = 0; k < n; k++) {
    rows[k] = (row){k, counters[2 * k], counters[2 * k + 1]};
    total += rows[k].ns;
    if (rows[k].calls > runs) runs = rows[k].calls;
  }
  qsort(rows, n, sizeof *rows, slowest_first);
  fprintf(f, "kiln profile: %zu kernels, %llu runs, %.3f ms per run in kernels\n", n, (unsigned long long)runs,
          runs ? (double)total / (double)runs * 1e-6 : 0.0);
  fprintf(f, "%10s %7s  %s\n", "ms/run", "share", "kernel");
  for (size_t r = 0; r < n; r++) {
    const kiln_node *nd = &g->nodes[plan->kernel_node[rows[r].kernel]];
    uint32_t host = plan->kernel_host[rows[r].kernel];
    char type[160];
    kiln_type_str(type, sizeof type, (kiln_dtype)nd->dtype, nd->rank, nd->dims);
    fprintf(f, "%10.4f %6.1f%%  %%%u %s", rows[r].calls ? (double)rows[r].ns / (double)rows[r].calls * 1e-6 : 0.0,
            total ? 100.0 * (double)rows[r].ns / (double)total : 0.0, plan->kernel_node[rows[r].kernel], kiln_ops[nd->op].name);
    if (host != UINT32_MAX) fprintf(f, " after %%%u %s", host, kiln_ops[g->nodes[host].op].name);
    fprintf(f, " %s\n", type);
  }
  free(rows);
  if (fclose(f)) {
    free(buf);
    return kiln_set_error(KILN_ERR_NOMEM, "profile: out of memory");
  }
  *text = buf;
  return KILN_OK;
}

/* The pass pipeline, in order:
 *   fold, simplify   constant folding and the algebraic rule table, then dead-code
 *                    elimination (simplify.c)
 *   layout           transposes sunk so convolutions chain NHWC (layout.c)
 *   fuse             which nodes are computed inside their readers (fuse.c, schedule.c)
 *   memory-plan      workspace offsets by liveness (memory_plan.c)
 * The graph-level passes run here; fuse and memory-plan run inside code generation
 * (codegen/lower.c), which reports them the same way. KILN_DUMP=after:PASS prints a
 * pass's result and KILN_PASS_STATS=1 its changes and time, on stderr. */
#include <stdio.h>
#include <string.h>
#include <time.h>
#include "passes/passes.h"

double kiln_pass_clock_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

bool kiln_pass_dump_after(const char *pass) {
  const char *d = getenv("KILN_DUMP");
  char want[40];
  snprintf(want, sizeof want, "after:%s", pass);
  for (const char *p = d; p && *p;) {
    size_t len = strcspn(p, ",");
    if (len == strlen(want) && !strncmp(p, want, len)) return true;
    p += len + (p[len] == ',');
  }
  return false;
}

bool kiln_pass_stats_on(void) { return getenv("KILN_PASS_STATS") != NULL; }

static void dump_after(const char *what, const kiln_graph *g) {
  char *text;
  if (kiln_graph_to_text(g, &text) == KILN_OK) fprintf(stderr, "--- after %s:\n%s", what, text), free(text);
}

static kiln_graph *simplify_step(kiln_graph *g, const kiln_pass_switches *sw) {
  kiln_simplify_stats st;
  double t0 = kiln_pass_clock_ms();
  kiln_graph *out = kiln_simplify(g, !sw->no_fold, !sw->no_simplify, &st);
  double ms = kiln_pass_clock_ms() - t0;
  kiln_graph_free(g);
  if (!out) return NULL;
  if (kiln_pass_stats_on()) {
    fprintf(stderr, "kiln: fold: %zu nodes folded; simplify: %zu rewrites (", st.folded, st.rewrites);
    const char *sep = "";
    for (int r = 0; r < RULE_COUNT; r++)
      if (st.by_rule[r]) fprintf(stderr, "%s%s: %zu", sep, kiln_rule_name(r), st.by_rule[r]), sep = ", ";
    fprintf(stderr, "); dce: %zu nodes removed (%.3f ms)\n", st.removed, ms);
  }
  if (kiln_pass_dump_after("simplify") || kiln_pass_dump_after("fold")) dump_after("fold, simplify", out);
  return out;
}

static kiln_graph *layout_step(kiln_graph *g) {
  kiln_layout_stats st;
  double t0 = kiln_pass_clock_ms();
  kiln_graph *out = kiln_choose_layout(g, &st);
  double ms = kiln_pass_clock_ms() - t0;
  kiln_graph_free(g);
  if (!out) return NULL;
  if (kiln_pass_stats_on())
    fprintf(stderr, "kiln: layout: %zu transposes moved, %zu pairs cancelled; %zu -> %zu transposes moving %lld -> %lld elements (%.3f ms)\n",
            st.moved, st.cancelled, st.before, st.after, (long long)st.elements_before, (long long)st.elements_after, ms);
  if (kiln_pass_dump_after("layout")) dump_after("layout", out);
  return out;
}

kiln_graph *kiln_optimize_graph(kiln_graph *g, const kiln_pass_switches *sw) {
  if (g && !(sw->no_fold && sw->no_simplify)) g = simplify_step(g, sw);
  if (g && !sw->no_layout) g = layout_step(g);
  return g;
}

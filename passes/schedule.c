/* The schedule: which nodes become kernels, which are fused into them, and which
 * stored buffers each kernel reads. Code generation follows it, memory planning
 * takes the buffers' last readers from it, and `kiln dump --kernels` prints it, so
 * the golden tests see exactly the fusion decisions the compiler makes. */
#include <stdio.h>
#include <string.h>
#include "passes/passes.h"

void kiln_schedule_free(kiln_schedule *s) {
  free(s->live), free(s->inlined), free(s->host), free(s->last), free(s->kernel_of), free(s->kernels);
  memset(s, 0, sizeof *s);
}

/* The stored nodes reachable from id's inputs through fused nodes; false past KILN_MAX_READS. */
static bool add_reads(const kiln_graph *g, const bool *inlined, uint32_t id, kiln_kernel *k) {
  const kiln_node *n = &g->nodes[id];
  for (uint32_t j = 0; j < n->ninputs; j++) {
    uint32_t p = n->inputs[j];
    if (inlined[p]) {
      if (!add_reads(g, inlined, p, k)) return false;
      continue;
    }
    bool seen = false;
    for (uint32_t l = 0; l < k->nreads && !seen; l++) seen = k->reads[l] == p;
    if (seen) continue;
    if (k->nreads == KILN_MAX_READS) return false;
    k->reads[k->nreads++] = p;
  }
  return true;
}

bool kiln_node_is_stored(const kiln_graph *g, uint32_t i) {
  const kiln_node *n = &g->nodes[i];
  if (n->op == KILN_OP_PARAM || (n->op == KILN_OP_CONST && n->data)) return true;
  for (uint32_t j = 0; j < g->noutputs; j++)
    if (g->outputs[j].node == i) return true;
  return false;
}

kiln_status kiln_schedule_build(const kiln_graph *g, bool fuse, bool epilogues, kiln_schedule *s) {
  uint32_t n = g->nnodes;
  memset(s, 0, sizeof *s);
  s->live = calloc(n + 1, 1), s->inlined = calloc(n + 1, 1), s->host = calloc(n + 1, sizeof *s->host);
  s->last = calloc(n + 1, sizeof *s->last), s->kernel_of = calloc(n + 1, sizeof *s->kernel_of);
  s->kernels = calloc(n + 1, sizeof *s->kernels);
  bool *stored = calloc(n + 1, 1);
  if (!s->live || !s->inlined || !s->host || !s->last || !s->kernel_of || !s->kernels || !stored) {
    free(stored);
    kiln_schedule_free(s);
    return kiln_set_error(KILN_ERR_NOMEM, "schedule: out of memory");
  }
  /* live: what the outputs depend on (inputs have smaller indices) */
  for (uint32_t j = 0; j < g->noutputs; j++) s->live[g->outputs[j].node] = true;
  for (uint32_t i = n; i-- > 0;)
    if (s->live[i])
      for (uint32_t j = 0; j < g->nodes[i].ninputs; j++) s->live[g->nodes[i].inputs[j]] = true;
  for (uint32_t i = 0; i < n; i++) stored[i] = kiln_node_is_stored(g, i);
  for (uint32_t i = 0; i < n; i++) s->host[i] = UINT32_MAX;
  if (fuse) s->fused = kiln_fuse(g, s->live, stored, KILN_MAX_READS, s->inlined, epilogues ? s->host : NULL);
  kiln_status st = s->fused == SIZE_MAX ? kiln_set_error(KILN_ERR_NOMEM, "fusion: out of memory") : KILN_OK;
  for (uint32_t i = 0; i < n && st == KILN_OK; i++) {
    const kiln_node *nd = &g->nodes[i];
    s->last[i] = i;
    s->kernel_of[i] = UINT32_MAX;
    bool source = nd->op == KILN_OP_PARAM || (nd->op == KILN_OP_CONST && nd->data);
    if (!s->live[i] || s->inlined[i] || source) continue;
    kiln_kernel *k = &s->kernels[s->nkernels];
    k->node = i;
    if (!add_reads(g, s->inlined, i, k))
      st = kiln_set_error(KILN_ERR_UNSUPPORTED, "schedule: %%%u (%s) would read more than %d buffers", i, kiln_ops[nd->op].name,
                          KILN_MAX_READS);
    for (uint32_t l = 0; l < k->nreads; l++) s->last[k->reads[l]] = i;
    s->kernel_of[i] = (uint32_t)s->nkernels++;
  }
  free(stored);
  if (st != KILN_OK) kiln_schedule_free(s);
  return st;
}

/* Nodes fused into kernel root (in index order), appended to buf. */
static void list_fused(const kiln_graph *g, const bool *inlined, uint32_t root, bool *mark) {
  const kiln_node *n = &g->nodes[root];
  for (uint32_t j = 0; j < n->ninputs; j++)
    if (inlined[n->inputs[j]] && !mark[n->inputs[j]]) {
      mark[n->inputs[j]] = true;
      list_fused(g, inlined, n->inputs[j], mark);
    }
}

kiln_status kiln_schedule_to_text(const kiln_graph *g, const kiln_schedule *s, char **text) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  bool *mark = calloc(g->nnodes + 1, 1);
  if (!f || !mark) {
    if (f) fclose(f);
    free(buf), free(mark);
    return kiln_set_error(KILN_ERR_NOMEM, "schedule: out of memory");
  }
  fprintf(f, "%zu kernels, %zu nodes fused\n", s->nkernels, s->fused);
  for (size_t k = 0; k < s->nkernels; k++) {
    const kiln_kernel *kk = &s->kernels[k];
    fprintf(f, "kernel %%%u %s", kk->node, kiln_ops[g->nodes[kk->node].op].name);
    uint32_t host = s->host[kk->node];
    if (host != UINT32_MAX) fprintf(f, " after %%%u %s", host, kiln_ops[g->nodes[host].op].name);
    memset(mark, 0, g->nnodes + 1);
    list_fused(g, s->inlined, kk->node, mark);
    if (host != UINT32_MAX) mark[host] = false;
    const char *sep = " fuses";
    for (uint32_t i = 0; i < g->nnodes; i++)
      if (mark[i]) fprintf(f, "%s %%%u %s", sep, i, kiln_ops[g->nodes[i].op].name), sep = ",";
    sep = "; reads";
    for (uint32_t l = 0; l < kk->nreads; l++) fprintf(f, "%s %%%u", sep, kk->reads[l]), sep = ",";
    fputc('\n', f);
  }
  free(mark);
  if (fclose(f)) {
    free(buf);
    return kiln_set_error(KILN_ERR_NOMEM, "schedule: out of memory");
  }
  *text = buf;
  return KILN_OK;
}

static kiln_status parse_switches(const char *list, kiln_pass_switches *out) {
  for (const char *p = list; p && *p;) {
    size_t len = strcspn(p, ",");
    if (len == 11 && !strncmp(p, "memory-plan", len)) out->no_memory_plan = true;
    else if (len == 4 && !strncmp(p, "fuse", len)) out->no_fusion = true;
    else if (len == 8 && !strncmp(p, "epilogue", len)) out->no_epilogue = true;
    else if (len == 4 && !strncmp(p, "fold", len)) out->no_fold = true;
    else if (len == 8 && !strncmp(p, "simplify", len)) out->no_simplify = true;
    else if (len == 6 && !strncmp(p, "layout", len)) out->no_layout = true;
    else if (len)
      return kiln_set_error(KILN_ERR_INVALID, "no pass named '%.*s' to disable (known: fold, simplify, layout, fuse, epilogue, memory-plan)", (int)len, p);
    p += len + (p[len] == ',');
  }
  return KILN_OK;
}

/* g as code generation sees it: a symbolic batch bound to 1, then the graph passes. */
/* The list given, plus KILN_DISABLE_PASSES for programs that compile through the
 * model or function APIs. */
kiln_status kiln_passes_disabled(const char *list, kiln_pass_switches *out) {
  memset(out, 0, sizeof *out);
  kiln_status st = parse_switches(list, out);
  if (st == KILN_OK) st = parse_switches(getenv("KILN_DISABLE_PASSES"), out);
  return st;
}

static kiln_graph *as_compiled(const kiln_graph *g, const kiln_pass_switches *sw) {
  bool symbolic = false;
  for (uint32_t i = 0; i < g->nnodes; i++)
    for (int d = 0; d < g->nodes[i].rank; d++) symbolic |= g->nodes[i].dims[d] < 0;
  return kiln_optimize_graph(kiln_graph_specialize(g, symbolic ? 1 : -1), sw);
}

/* What the introspection calls share: checks, the compiled graph *use and its
 * schedule s (free both on success). */
static kiln_status compiled_schedule(const kiln_graph *g, const char *disable_passes, char **text, const char *what,
                                     kiln_graph **use, kiln_schedule *s) {
  if (!g || !text) return kiln_set_error(KILN_ERR_INVALID, "%s: NULL argument", what);
  *text = NULL;
  if (g->status != KILN_OK) return kiln_set_error(g->status, "%s", g->errmsg);
  kiln_pass_switches sw;
  kiln_status st = kiln_passes_disabled(disable_passes, &sw);
  if (st != KILN_OK) return st;
  if (!(*use = as_compiled(g, &sw))) return kiln_set_error(KILN_ERR_INVALID, "%s: %s", what, kiln_errmsg());
  st = kiln_schedule_build(*use, !sw.no_fusion, !sw.no_epilogue, s);
  if (st != KILN_OK) kiln_graph_free(*use);
  return st;
}

kiln_status kiln_schedule_text(const kiln_graph *g, const char *disable_passes, char **text) {
  /* the graph codegen sees (specialized, folded and simplified), printed before its kernels */
  kiln_graph *use;
  kiln_schedule s;
  kiln_status st = compiled_schedule(g, disable_passes, text, "schedule_text", &use, &s);
  if (st != KILN_OK) return st;
  char *ir = NULL, *kernels = NULL;
  st = kiln_graph_to_text(use, &ir);
  if (st == KILN_OK) st = kiln_schedule_to_text(use, &s, &kernels);
  kiln_schedule_free(&s);
  if (st == KILN_OK) {
    size_t n = strlen(ir) + strlen(kernels) + 1;
    *text = malloc(n);
    if (*text) snprintf(*text, n, "%s%s", ir, kernels);
    else st = kiln_set_error(KILN_ERR_NOMEM, "schedule_text: out of memory");
  }
  free(ir), free(kernels);
  kiln_graph_free(use);
  return st;
}

/* Graphviz: stored values (inputs, constants, outputs' buffers) as ellipses outside the
 * clusters, each kernel a cluster holding its node and the nodes fused into it. */
static void dot_string(FILE *f, const char *s) { /* a dot string's body: quotes and backslashes escaped */
  for (; *s; s++) {
    if (*s == '"' || *s == '\\') fputc('\\', f);
    fputc(*s == '\n' ? ' ' : *s, f);
  }
}

static void dot_node(FILE *f, const kiln_graph *g, uint32_t i, const char *indent) {
  const kiln_node *n = &g->nodes[i];
  char type[160];
  kiln_type_str(type, sizeof type, (kiln_dtype)n->dtype, n->rank, n->dims);
  fprintf(f, "%sn%u [label=\"%%%u %s", indent, i, i, kiln_ops[n->op].name);
  if (n->name) fputs(" \\\"", f), dot_string(f, n->name), fputs("\\\"", f);
  fprintf(f, "\\n%s\"%s];\n", type, n->op == KILN_OP_PARAM || n->op == KILN_OP_CONST ? ", shape=ellipse" : "");
}

kiln_status kiln_graph_to_dot(const kiln_graph *g_in, const char *disable_passes, char **text) {
  kiln_graph *use;
  kiln_schedule s;
  kiln_status st = compiled_schedule(g_in, disable_passes, text, "graph_to_dot", &use, &s);
  if (st != KILN_OK) return st;
  const kiln_graph *g = use;
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  bool *mark = calloc(g->nnodes + 1, 1), *placed = calloc(g->nnodes + 1, 1);
  if (!f || !mark || !placed) {
    if (f) fclose(f);
    free(buf), free(mark), free(placed);
    kiln_schedule_free(&s);
    kiln_graph_free(use);
    return kiln_set_error(KILN_ERR_NOMEM, "graph_to_dot: out of memory");
  }
  fprintf(f, "digraph kiln {\n  node [shape=box, fontname=\"monospace\", fontsize=10];\n");
  fprintf(f, "  label=\"%zu kernels, %zu nodes fused\";\n", s.nkernels, s.fused);
  for (size_t k = 0; k < s.nkernels; k++) {
    uint32_t root = s.kernels[k].node;
    fprintf(f, "  subgraph cluster_k%zu {\n    label=\"kernel %zu\"; style=rounded; color=steelblue;\n", k, k);
    memset(mark, 0, g->nnodes + 1);
    list_fused(g, s.inlined, root, mark);
    mark[root] = true;
    for (uint32_t i = 0; i < g->nnodes; i++)
      if (mark[i] && !placed[i]) dot_node(f, g, i, "    "), placed[i] = true;
    fprintf(f, "  }\n");
  }
  for (uint32_t i = 0; i < g->nnodes; i++)
    if (s.live[i] && !placed[i]) dot_node(f, g, i, "  "), placed[i] = true; /* inputs, constants, shared fused nodes */
  for (uint32_t i = 0; i < g->nnodes; i++)
    for (uint32_t j = 0; s.live[i] && j < g->nodes[i].ninputs; j++) fprintf(f, "  n%u -> n%u;\n", g->nodes[i].inputs[j], i);
  for (uint32_t j = 0; j < g->noutputs; j++) {
    fprintf(f, "  out%u [label=\"", j);
    dot_string(f, g->outputs[j].name);
    fprintf(f, "\", shape=plaintext];\n  n%u -> out%u;\n", g->outputs[j].node, j);
  }
  fprintf(f, "}\n");
  free(mark), free(placed);
  kiln_schedule_free(&s);
  kiln_graph_free(use);
  if (fclose(f)) {
    free(buf);
    return kiln_set_error(KILN_ERR_NOMEM, "graph_to_dot: out of memory");
  }
  *text = buf;
  return KILN_OK;
}

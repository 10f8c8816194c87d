/* `kiln bench`: built-in graphs (bench_models.c) and the pass comparison (bench.c). */
#ifndef KILN_TOOLS_BENCH_H
#define KILN_TOOLS_BENCH_H

#include <stdio.h>
#include <kiln/kiln.h>

typedef struct bench_graph {
  kiln_graph *g;
  int ninputs;
  kiln_shape shapes[32];
  kiln_dtype dtypes[32];
} bench_graph;

/* Builds built-in `name` (batch <= 0: its default); KILN_ERR_INVALID if unknown. */
kiln_status bench_builtin(const char *name, int64_t batch, bench_graph *out);
void bench_list(FILE *f);
int cmd_bench(int argc, char **argv);
/* Does path end in ext (".onnx")? (tools/kiln.c) */
bool has_ext(const char *path, const char *ext);

#endif

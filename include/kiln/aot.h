/* kiln ahead-of-time compilation: a graph or model becomes a standalone object
 * file and a C header, like tfcompile. The object needs only libc and libm.
 *
 *   kiln_aot_options o = {.name = "fmnist", .object_path = "fmnist.o", .header_path = "fmnist.h"};
 *   if (kiln_aot_compile_model(model, &o) != KILN_OK) fprintf(stderr, "%s\n", kiln_errmsg());
 *
 *   // user program:  gcc main.c fmnist.o -lm
 *   #include "fmnist.h"
 *   float probs[FMNIST_PROBS_SIZE];
 *   fmnist_run(pixels, probs);
 *
 * The header is the object's whole API and documents it: input and output names,
 * shapes and sizes as constants, `NAME_run` (one input, one output),
 * `NAME_run_with` (a struct of pointers per direction, and a caller-owned
 * workspace so threads can share one model), `NAME_workspace_size`, and with
 * `train` the compiled training step; with `threads`, the parallel runner type
 * and an optional pthread pool (`#define NAME_WITH_POOL`, link with -pthread). The same inputs give byte-identical files.
 *
 * Variables whose names start with "optimizer/" (the slots kiln_model_compile's
 * optimizer makes) are optimizer state; all other variables are parameters. */
#ifndef KILN_AOT_H
#define KILN_AOT_H

#include "kiln/model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum kiln_aot_weights {
  KILN_AOT_EMBED = 0, /* parameters are read-only data in the object */
  KILN_AOT_EXTERNAL,  /* parameters are written to weights_path; the program loads them */
} kiln_aot_weights;

typedef struct kiln_aot_options {
  const char *name;         /* prefix of every symbol and macro: a C identifier */
  const char *object_path;  /* the object file to write */
  const char *header_path;  /* the header to write, or NULL */
  const char *target;       /* an LLVM target triple ("aarch64-linux-gnu"); NULL: this machine's */
  const char *cpu;          /* NULL or "generic": any CPU of the target; "native": this one; or an LLVM CPU name */
  int64_t batch;            /* binds the symbolic batch dimension; 0 means 1 */
  kiln_aot_weights weights;
  const char *weights_path; /* KILN_AOT_EXTERNAL: where to write the parameters */
  /* kiln_aot_compile_model: also export NAME_train_step (forward, backward and the
   * optimizer update of the model's kiln_model_compile settings). */
  bool train;
  /* 2 or more: kernels cut their work into tasks for up to this many workers, and
   * the _with functions take a last argument, a NAME_parallel that runs the tasks
   * (the header has a pthread pool for it; NULL runs them on the caller). 0 or 1:
   * serial code and no such argument. Results are bit-identical either way. The
   * object itself never depends on pthreads. */
  int threads;
} kiln_aot_options;

/* Compiles g: inputs are its placeholders, outputs its kiln_output values. Variables
 * the graph reads are parameters (or optimizer state) with their current values;
 * a graph that assigns variables takes them as mutable arguments. */
KILN_API kiln_status kiln_aot_compile(const kiln_graph *g, const kiln_aot_options *o);
/* Compiles m's inference function (and, with o->train, its training step; m must be
 * compiled). Models loaded from model files work the same. */
KILN_API kiln_status kiln_aot_compile_model(kiln_model *m, const kiln_aot_options *o);

#ifdef __cplusplus
}
#endif
#endif

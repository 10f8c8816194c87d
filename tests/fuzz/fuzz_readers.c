/* One fuzz target per reader of outside data, selected at compile time with
 * -DFUZZ_<NAME>: onnx (ModelProto), tensor (ONNX TensorProto), npy, kir (text IR:
 * parse, then evaluate a small input-free graph), checkpoint (restore), model (model
 * file load), idx, csv, weights (the NAME_load_params an AOT header carries, from a
 * header the build generates). Every input must either load or fail with a status and a
 * message (the weights loader: 0 or -1); the sanitizers and libFuzzer catch the rest.
 *
 * Built two ways: with clang's -fsanitize=fuzzer (tools/dev.sh fuzz, coverage-guided)
 * and, with FUZZ_REPLAY, as a plain program that feeds it the files named on its
 * command line (the test suite replays tests/fuzz/regressions and seeds this way). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "mutate.h"
#include "ir/ir.h" /* the graph's outputs, for the kir target */
#ifdef FUZZ_WEIGHTS
#include "fuzzw.h" /* generated: kiln compile tests/golden/small.kiln --weights external */
#endif

/* Readers take paths: the input goes to a file of this process's own. */
static const char *as_file(const uint8_t *data, size_t size) {
  static char path[64];
  if (!path[0]) snprintf(path, sizeof path, "/tmp/kiln_fuzz.%ld", (long)getpid());
  FILE *f = fopen(path, "wb");
  if (!f) abort();
  if (size && fwrite(data, 1, size, f) != size) abort();
  fclose(f);
  return path;
}

/* A failure must leave a message. */
static __attribute__((unused)) void check(kiln_status st) {
  if (st != KILN_OK && !*kiln_errmsg()) {
    fprintf(stderr, "a reader failed (status %d) without a message\n", (int)st);
    abort();
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
#ifndef FUZZ_KIR
  const char *path = as_file(data, size);
#endif
#if defined(FUZZ_ONNX)
  kiln_graph *g = NULL;
  check(kiln_onnx_load(path, &g));
  kiln_graph_free(g);
#elif defined(FUZZ_TENSOR)
  kiln_tensor *t = NULL;
  char *name = NULL;
  check(kiln_onnx_load_tensor(path, &t, &name));
  kiln_tensor_free(t);
  free(name);
#elif defined(FUZZ_NPY)
  kiln_tensor *t = NULL;
  check(kiln_npy_load(path, &t));
  kiln_tensor_free(t);
#elif defined(FUZZ_KIR)
  char *text = malloc(size + 1);
  if (!text) return 0;
  memcpy(text, data, size);
  text[size] = 0;
  kiln_graph *g = NULL;
  kiln_status st = kiln_graph_parse(text, &g);
  check(st);
  free(text);
  /* a graph that parsed and verified runs in the evaluator when it is small and needs no input */
  if (st == KILN_OK && kiln_graph_num_inputs(g) == 0 && g->noutputs <= 8) {
    bool small = true;
    for (uint32_t i = 0; i < g->nnodes && small; i++) {
      int64_t n = kiln_shape_numel(g->nodes[i].rank, g->nodes[i].dims);
      small = n >= 0 && n <= (1 << 16);
    }
    kiln_tensor *outs[8] = {0};
    if (small) check(kiln_evaluate(g, NULL, 0, outs, g->noutputs));
    for (int i = 0; i < 8; i++) kiln_tensor_free(outs[i]);
  }
  kiln_graph_free(g);
#elif defined(FUZZ_CHECKPOINT)
  kiln_variables *vs = kiln_variables_new(1);
  kiln_checkpoint_info info;
  check(kiln_checkpoint_restore(vs, path, false, &info));
  kiln_variables_free(vs);
#elif defined(FUZZ_MODEL)
  kiln_model *m = NULL;
  check(kiln_model_load(path, &m));
  kiln_model_free(m);
#elif defined(FUZZ_IDX)
  kiln_tensor *t = NULL;
  check(kiln_idx_load(path, KILN_F32, &t));
  kiln_tensor_free(t);
#elif defined(FUZZ_CSV)
  kiln_tensor *x = NULL, *y = NULL;
  check(kiln_csv_load(path, &(kiln_csv_options){.header = size && data[0] == 'h', .label_column = (int)(size % 3) - 1},
                      &x, &y));
  kiln_tensor_free(x);
  kiln_tensor_free(y);
#elif defined(FUZZ_WEIGHTS)
  static unsigned char params[FUZZW_PARAMS_SIZE];
  int rc = fuzzw_load_params(path, params);
  if (rc != 0 && rc != -1) abort();
#else
#error "define one FUZZ_<TARGET>"
#endif
  return 0;
}

#ifdef FUZZ_REPLAY
/* --mutations N: after the files themselves, N mutants of them in turn (mutate.h),
 * spliced with the next file, from a fixed seed, so the suite fuzzes every reader for
 * a moment in each build, without libFuzzer. */
int main(int argc, char **argv) {
  int n = 0, first = 1;
  long mutations = 0;
  if (argc > 2 && !strcmp(argv[1], "--mutations")) mutations = strtol(argv[2], NULL, 10), first = 3;
  int files = argc - first;
  uint8_t **bufs = calloc((size_t)(files > 0 ? files : 1), sizeof *bufs);
  size_t *lens = calloc((size_t)(files > 0 ? files : 1), sizeof *lens), longest = 0;
  if (!bufs || !lens) return 1;
  for (int i = 0; i < files; i++) {
    FILE *f = fopen(argv[first + i], "rb");
    if (!f) {
      fprintf(stderr, "cannot read %s\n", argv[first + i]);
      return 1;
    }
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
      if (len == cap && !(buf = realloc(buf, cap = cap ? 2 * cap : 65536))) return 1;
      size_t k = fread(buf + len, 1, cap - len, f);
      if (!k) break;
      len += k;
    }
    fclose(f);
    LLVMFuzzerTestOneInput(buf, len);
    bufs[i] = buf, lens[i] = len, longest = len > longest ? len : longest;
    n++;
  }
  fuzz_rng rng = {1};
  size_t cap = longest + 64;
  uint8_t *mutant = malloc(cap);
  if (!mutant) return 1;
  for (long m = 0; files > 0 && m < mutations; m++) {
    int i = (int)(m % files), other = (i + 1) % files;
    LLVMFuzzerTestOneInput(mutant, fuzz_mutate(&rng, bufs[i], lens[i], bufs[other], lens[other], mutant, cap));
  }
  for (int i = 0; i < files; i++) free(bufs[i]);
  free(bufs), free(lens), free(mutant);
  unlink(as_file(NULL, 0));
  printf("replayed %d inputs and %ld mutants of them\n", n, files > 0 ? mutations : 0L);
  return 0;
}
#endif

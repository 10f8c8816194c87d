/* A seeded mutation fuzzer for the ONNX reader: models and TensorProto files from
 * the ONNX test data are mutated (bit flips, interesting bytes, truncation, deleted
 * and duplicated runs, splices from another file) and fed to kiln_onnx_load and
 * kiln_onnx_load_tensor. A load must either succeed with a graph that verifies or
 * fail with a message; anything else (a crash, a sanitizer report, an error
 * without a message) is a finding. Run under ASan+UBSan (KILN_SANITIZE=ON).
 *   fuzz_onnx [--iterations N] [--seed S] [FILE...]   (default: a few libonnx-testdata files)
 * The test suite runs a few thousand iterations; README documents the long run. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "fuzz/mutate.h"
#include "kiln/kiln.h"

typedef struct blob {
  unsigned char *data;
  size_t len;
  bool tensor; /* a TensorProto file rather than a model */
} blob;

static fuzz_rng rng;

static bool read_all(const char *path, blob *b) {
  FILE *f = fopen(path, "rb");
  if (!f) return false;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  b->data = malloc(n > 0 ? (size_t)n : 1);
  b->len = n > 0 && b->data ? fread(b->data, 1, (size_t)n, f) : 0;
  fclose(f);
  size_t k = strlen(path);
  b->tensor = k > 3 && !strcmp(path + k - 3, ".pb");
  return b->data != NULL;
}

int main(int argc, char **argv) {
  long iterations = 2000;
  uint64_t seed = 1;
  blob files[64];
  int nfiles = 0, argc_files = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--iterations") && i + 1 < argc) iterations = atol(argv[++i]);
    else if (!strcmp(argv[i], "--seed") && i + 1 < argc) seed = strtoull(argv[++i], NULL, 10);
    else if (nfiles < 64 && read_all(argv[i], &files[nfiles])) nfiles++, argc_files++;
    else {
      fprintf(stderr, "fuzz_onnx: cannot read %s\n", argv[i]);
      return 2;
    }
  }
  /* without files: models and a tensor from Debian's libonnx-testdata */
  static const char *const DEFAULT_SEEDS[] = {
      "pytorch-converted/test_Conv2d/model.onnx", "pytorch-converted/test_Conv2d/test_data_set_0/input_0.pb",
      "node/test_lstm_with_peepholes/model.onnx", "node/test_resize_downsample_scales_linear/model.onnx",
      "node/test_gemm_all_attributes/model.onnx", "node/test_reshape_reordered_all_dims/model.onnx",
      "simple/test_single_relu_model/model.onnx"};
  for (size_t i = 0; argc_files == 0 && i < sizeof DEFAULT_SEEDS / sizeof DEFAULT_SEEDS[0]; i++) {
    char path[512];
    snprintf(path, sizeof path, "/usr/share/libonnx-testdata/data/%s", DEFAULT_SEEDS[i]);
    if (!read_all(path, &files[nfiles++])) {
      fprintf(stderr, "fuzz_onnx: cannot read %s (package libonnx-testdata)\n", path);
      return 2;
    }
  }
  if (!nfiles) {
    fprintf(stderr, "usage: fuzz_onnx [--iterations N] [--seed S] [FILE...]\n");
    return 2;
  }
  rng.state = seed;
  char dir[] = "/tmp/kiln_fuzz_XXXXXX";
  if (!mkdtemp(dir)) return perror("mkdtemp"), 2;
  char path[64];
  snprintf(path, sizeof path, "%s/case", dir);
  size_t cap = 0;
  for (int i = 0; i < nfiles; i++) cap = files[i].len + 64 > cap ? files[i].len + 64 : cap;
  unsigned char *buf = malloc(cap);
  long loaded = 0, rejected = 0, findings = 0;
  for (long it = 0; it < iterations && buf; it++) {
    const blob *src = &files[fuzz_below(&rng, (size_t)nfiles)], *other = &files[fuzz_below(&rng, (size_t)nfiles)];
    size_t n = fuzz_mutate(&rng, src->data, src->len, other->data, other->len, buf, cap);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(buf, 1, n, f) != n || fclose(f)) return perror(path), 2;
    kiln_status st;
    kiln_onnx_load(NULL, NULL); /* a known message: a failure below must replace it */
    char sentinel[256];
    snprintf(sentinel, sizeof sentinel, "%s", kiln_errmsg());
    if (src->tensor) {
      kiln_tensor *t = NULL;
      char *name = NULL;
      st = kiln_onnx_load_tensor(path, &t, &name);
      kiln_tensor_free(t);
      free(name);
    } else {
      kiln_graph *g = NULL;
      st = kiln_onnx_load(path, &g);
      if (st == KILN_OK && kiln_graph_verify(g) != KILN_OK) {
        fprintf(stderr, "finding: iteration %ld: an imported graph does not verify: %s\n", it, kiln_errmsg());
        findings++;
      }
      kiln_graph_free(g);
    }
    if (st == KILN_OK) loaded++;
    else if (!strcmp(kiln_errmsg(), sentinel)) fprintf(stderr, "finding: iteration %ld: an error without a message\n", it), findings++;
    else rejected++;
  }
  unlink(path);
  rmdir(dir);
  free(buf);
  for (int i = 0; i < nfiles; i++) free(files[i].data);
  printf("fuzz_onnx: %ld iterations (seed %llu): %ld loaded, %ld rejected with a message, %ld findings\n", iterations,
         (unsigned long long)seed, loaded, rejected, findings);
  return findings ? 1 : 0;
}

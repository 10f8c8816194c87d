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
#include "kiln/kiln.h"

typedef struct blob {
  unsigned char *data;
  size_t len;
  bool tensor; /* a TensorProto file rather than a model */
} blob;

static uint64_t rng_state;
static uint64_t next(void) { /* splitmix64 */
  uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static size_t below(size_t n) { return n ? (size_t)(next() % n) : 0; }

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

/* One to four mutations of src into out (capacity cap); returns the new length. */
static size_t mutate(const blob *src, const blob *other, unsigned char *out, size_t cap) {
  size_t n = src->len < cap ? src->len : cap;
  memcpy(out, src->data, n);
  static const unsigned char interesting[] = {0x00, 0x01, 0x7f, 0x80, 0xff, 0x08, 0x10, 0x12, 0x1a, 0x22, 0x3a, 0x42};
  for (int m = 0, count = 1 + (int)below(4); m < count && n > 0; m++) {
    size_t at = below(n);
    switch (below(6)) {
    case 0: out[at] ^= (unsigned char)(1u << below(8)); break;
    case 1: out[at] = interesting[below(sizeof interesting)]; break;
    case 2: n = at; break; /* truncate */
    case 3: { /* delete a run */
      size_t k = 1 + below(16);
      if (at + k > n) k = n - at;
      memmove(out + at, out + at + k, n - at - k);
      n -= k;
      break;
    }
    case 4: { /* duplicate a run */
      size_t k = 1 + below(32);
      if (at + k > n) k = n - at;
      if (n + k > cap) break;
      memmove(out + at + k, out + at, n - at);
      n += k;
      break;
    }
    default: { /* overwrite with a run of another file */
      if (!other->len) break;
      size_t from = below(other->len), k = 1 + below(64);
      if (from + k > other->len) k = other->len - from;
      if (at + k > n) k = n - at;
      memcpy(out + at, other->data + from, k);
    }
    }
  }
  return n;
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
  rng_state = seed;
  char dir[] = "/tmp/kiln_fuzz_XXXXXX";
  if (!mkdtemp(dir)) return perror("mkdtemp"), 2;
  char path[64];
  snprintf(path, sizeof path, "%s/case", dir);
  size_t cap = 0;
  for (int i = 0; i < nfiles; i++) cap = files[i].len + 64 > cap ? files[i].len + 64 : cap;
  unsigned char *buf = malloc(cap);
  long loaded = 0, rejected = 0, findings = 0;
  for (long it = 0; it < iterations && buf; it++) {
    const blob *src = &files[below((size_t)nfiles)], *other = &files[below((size_t)nfiles)];
    size_t n = mutate(src, other, buf, cap);
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

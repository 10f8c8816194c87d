/* A standalone Fashion-MNIST classifier: the trained model compiled by
 * `kiln compile` into fmnist.o, linked with nothing but libc and libm.
 *   classify IMAGES INDEX     the class of image INDEX, with its probability
 *   classify IMAGES LABELS    accuracy over every image
 * IMAGES and LABELS are uncompressed IDX files (gzip -dc t10k-images-idx3-ubyte.gz). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fmnist.h"

static const char *const classes[10] = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                        "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

/* An IDX file of unsigned bytes: its items (count * item bytes) after the header. */
static unsigned char *read_idx(const char *path, unsigned magic, long *count, long item) {
  FILE *f = fopen(path, "rb");
  unsigned char head[16];
  int dims = (int)(magic & 0xff);
  if (!f || fread(head, 4, (size_t)dims + 1, f) != (size_t)dims + 1) {
    fprintf(stderr, "classify: cannot read %s\n", path);
    exit(1);
  }
  unsigned got = (unsigned)head[0] << 24 | (unsigned)head[1] << 16 | (unsigned)head[2] << 8 | head[3];
  *count = (long)head[4] << 24 | (long)head[5] << 16 | (long)head[6] << 8 | head[7];
  if (got != magic || (dims == 3 && (head[11] != 28 || head[15] != 28))) {
    fprintf(stderr, "classify: %s is not an IDX file of the expected kind\n", path);
    exit(1);
  }
  unsigned char *data = malloc((size_t)(*count * item));
  if (!data || fread(data, (size_t)item, (size_t)*count, f) != (size_t)*count) {
    fprintf(stderr, "classify: %s is truncated\n", path);
    exit(1);
  }
  fclose(f);
  return data;
}

/* Index of the most probable class of one image; *p gets its probability. */
static int classify(const unsigned char *pixels, void *workspace, float *p) {
  float x[FMNIST_IN_INPUT_SIZE], probs[FMNIST_OUT_PROBS_SIZE];
  for (int i = 0; i < FMNIST_IN_INPUT_SIZE; i++) x[i] = pixels[i]; /* raw 0..255: the model standardizes */
  fmnist_inputs in = {x};
  fmnist_outputs out = {probs};
  if (fmnist_run_with(&in, &out, workspace)) {
    fprintf(stderr, "classify: the model failed\n");
    exit(1);
  }
  int best = 0;
  for (int c = 1; c < 10; c++)
    if (probs[c] > probs[best]) best = c;
  *p = probs[best];
  return best;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: classify IMAGES INDEX | classify IMAGES LABELS\n");
    return 2;
  }
  long n, nlabels;
  unsigned char *images = read_idx(argv[1], 0x803, &n, 28 * 28);
  void *workspace = malloc(fmnist_workspace_size()); /* one per thread; reused for every image */
  float p;
  char *end;
  long k = strtol(argv[2], &end, 10);
  if (*end == 0) {
    if (k < 0 || k >= n) {
      fprintf(stderr, "classify: image %ld is outside 0..%ld\n", k, n - 1);
      return 1;
    }
    int c = classify(images + k * 28 * 28, workspace, &p);
    printf("image %ld: %s (%.1f%%)\n", k, classes[c], 100.0 * p);
  } else {
    unsigned char *labels = read_idx(argv[2], 0x801, &nlabels, 1);
    if (nlabels != n) {
      fprintf(stderr, "classify: %ld images but %ld labels\n", n, nlabels);
      return 1;
    }
    long right = 0;
    for (long i = 0; i < n; i++) right += classify(images + i * 28 * 28, workspace, &p) == labels[i];
    printf("accuracy %.4f on %ld images (%s, %s)\n", (double)right / (double)n, n, fmnist_version(), "fmnist.o");
    free(labels);
  }
  free(workspace);
  free(images);
  return 0;
}

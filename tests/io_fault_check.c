/* Disk full in the middle of a write: run by tests/io_fault_test.sh inside a small
 * tmpfs (DIR). For each writer — checkpoint, model file, AOT object and header,
 * TensorBoard events — a first write succeeds, the file system is then filled to all
 * but a few KiB, and the second write must fail with KILN_ERR_IO and a message that
 * names the cause, leave the first file byte for byte as it was, leave no temporary
 * file behind, and leave the model usable (its weights unchanged).
 *   io_fault_check DIR */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "kiln/kiln.h"

static int failures;
#define CHECK(cond, ...)                                    \
  do {                                                      \
    if (!(cond)) {                                          \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
      fprintf(stderr, __VA_ARGS__);                         \
      fprintf(stderr, "\n");                                \
      failures++;                                           \
    }                                                       \
  } while (0)

static unsigned char *slurp(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long len = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *b = malloc((size_t)len + 1);
  *n = b && fread(b, 1, (size_t)len, f) == (size_t)len ? (size_t)len : 0;
  fclose(f);
  return b;
}

/* Fills the file system holding dir until `room` bytes are left. */
static void fill(const char *dir, long room) {
  char path[1100];
  snprintf(path, sizeof path, "%s/filler", dir);
  FILE *f = fopen(path, "wb");
  static char block[4096];
  long written = 0;
  while (f && fwrite(block, 1, sizeof block, f) == sizeof block && fflush(f) == 0) written += (long)sizeof block;
  if (f) fclose(f);
  truncate(path, written > room ? written - room : 0);
}

static void unfill(const char *dir) {
  char path[1100];
  snprintf(path, sizeof path, "%s/filler", dir);
  unlink(path);
}

static int temp_files(const char *dir) {
  DIR *d = opendir(dir);
  int n = 0;
  for (struct dirent *e; d && (e = readdir(d));) n += strstr(e->d_name, ".tmp-") != NULL;
  if (d) closedir(d);
  return n;
}

/* The second write of `what` with the disk full fails cleanly and keeps the first. */
static void check_second_write_fails(const char *dir, const char *path, const char *what, kiln_status st) {
  CHECK(st == KILN_ERR_IO, "%s on a full disk: status %d (%s), want KILN_ERR_IO", what, st, kiln_errmsg());
  CHECK(strstr(kiln_errmsg(), "No space left on device") != NULL, "%s: the message does not name the cause: %s", what,
        kiln_errmsg());
  CHECK(temp_files(dir) == 0, "%s left a temporary file in %s", what, dir);
  (void)path;
}

static kiln_model *make_model(void) {
  kiln_model *m = kiln_sequential_new("mlp", 3);
  kiln_model_add(m, kiln_layer_dense(256, KILN_ACT_RELU));
  kiln_model_add(m, kiln_layer_dense(10, KILN_ACT_SOFTMAX));
  kiln_model_compile_options co = {.optimizer = "adam", .loss = "sparse_categorical_crossentropy"};
  if (kiln_model_compile(m, &co) != KILN_OK || kiln_model_build(m, KILN_F32, KILN_SHAPE(64)) != KILN_OK) return NULL;
  return m;
}

static void weights_snapshot(kiln_model *m, unsigned char *out, size_t cap, size_t *n) {
  kiln_variables *vs = kiln_model_variables(m);
  *n = 0;
  for (size_t i = 0; i < kiln_variables_count(vs); i++) {
    kiln_tensor *t = kiln_variable_value(kiln_variables_at(vs, i));
    size_t b = kiln_tensor_nbytes(t);
    if (*n + b <= cap) memcpy(out + *n, kiln_tensor_data(t), b), *n += b;
  }
}

/* A writer: the same call twice, first with room and then on a full disk. */
typedef kiln_status (*writer)(kiln_model *m, const char *path, void *ud);

static kiln_status save_checkpoint(kiln_model *m, const char *path, void *ud) {
  (void)ud;
  return kiln_model_save_weights(m, path);
}
static kiln_status save_model(kiln_model *m, const char *path, void *ud) {
  (void)ud;
  return kiln_model_save(m, path);
}
static kiln_status save_object(kiln_model *m, const char *path, void *ud) {
  kiln_aot_options o = {.name = "faulty", .object_path = path, .header_path = ud};
  return kiln_aot_compile_model(m, &o);
}

static void scenario(const char *dir, kiln_model *m, const char *file, const char *what, writer w, void *ud) {
  char path[1100];
  snprintf(path, sizeof path, "%s/%s", dir, file);
  kiln_status st = w(m, path, ud);
  CHECK(st == KILN_OK, "%s: the first write failed: %s", what, kiln_errmsg());
  size_t n0 = 0, n1 = 0, w0 = 0, w1 = 0;
  unsigned char *before = slurp(path, &n0);
  static unsigned char wb0[1 << 22], wb1[1 << 22];
  weights_snapshot(m, wb0, sizeof wb0, &w0);
  fill(dir, 8192);
  st = w(m, path, ud);
  check_second_write_fails(dir, path, what, st);
  unsigned char *after = slurp(path, &n1);
  CHECK(before && after && n0 == n1 && n0 > 0 && !memcmp(before, after, n0), "%s: the previous file changed (%zu -> %zu bytes)",
        what, n0, n1);
  weights_snapshot(m, wb1, sizeof wb1, &w1);
  CHECK(w0 == w1 && !memcmp(wb0, wb1, w0), "%s: a failed save changed the weights", what);
  printf("%-22s first write %zu bytes; on a full disk: \"%s\"; previous file intact\n", what, n0, kiln_errmsg());
  free(before);
  free(after);
  unfill(dir);
}

static uint32_t crc32c_masked(const unsigned char *p, size_t n) {
  uint32_t c = 0xffffffffu;
  for (size_t i = 0; i < n; i++) {
    c ^= p[i];
    for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
  }
  c = ~c;
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

static uint32_t le32(const unsigned char *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }

/* Complete TFRecords at the start of every event file under dir/train; a partial
 * last record (the write that failed) is allowed, a bad CRC before it is not. */
static int complete_records(const char *dir) {
  char sub[1200];
  snprintf(sub, sizeof sub, "%s/train", dir);
  DIR *d = opendir(sub);
  int records = 0;
  for (struct dirent *e; d && (e = readdir(d));) {
    if (!strstr(e->d_name, "tfevents")) continue;
    char path[1500];
    snprintf(path, sizeof path, "%s/%s", sub, e->d_name);
    size_t n = 0, at = 0;
    unsigned char *b = slurp(path, &n);
    while (b && at + 12 <= n) {
      uint64_t len = le32(b + at) | (uint64_t)le32(b + at + 4) << 32;
      if (at + 12 + len + 4 > n) break; /* the partial last record */
      CHECK(le32(b + at + 8) == crc32c_masked(b + at, 8) && le32(b + at + 12 + len) == crc32c_masked(b + at + 12, len),
            "TensorBoard: record %d of %s has a bad CRC", records, path);
      at += 12 + len + 4, records++;
    }
    free(b);
  }
  if (d) closedir(d);
  return records;
}

/* TensorBoard appends records: a write error must end fit with the cause, and every
 * record written before it must still read back (length, CRCs). */
static void tensorboard(const char *dir, kiln_model *m) {
  char logdir[1100];
  snprintf(logdir, sizeof logdir, "%s/tb", dir);
  kiln_tensor *x = kiln_tensor_new(KILN_F32, 2, (int64_t[]){256, 64}), *y = kiln_tensor_new(KILN_I32, 1, (int64_t[]){256});
  memset(kiln_tensor_data(x), 0, kiln_tensor_nbytes(x));
  memset(kiln_tensor_data(y), 0, kiln_tensor_nbytes(y));
  kiln_callback cb = kiln_tensorboard(logdir, 1); /* a record per batch: the disk fills during fit */
  kiln_fit_options fo = kiln_fit_defaults();
  fo.epochs = 1000, fo.verbose = 0, fo.callbacks = &cb, fo.ncallbacks = 1;
  fill(dir, 4096);
  kiln_status st = kiln_model_fit(m, x, y, &fo, NULL);
  CHECK(st == KILN_ERR_IO, "TensorBoard on a full disk: status %d (%s), want KILN_ERR_IO", st, kiln_errmsg());
  CHECK(strstr(kiln_errmsg(), "No space left on device") != NULL, "TensorBoard: the message does not name the cause: %s",
        kiln_errmsg());
  int records = complete_records(logdir);
  CHECK(records >= 2, "TensorBoard: %d complete records before the failure", records);
  printf("%-22s fit on a full disk: \"%s\"; %d records before it read back\n", "TensorBoard events", kiln_errmsg(),
         records);
  kiln_callback_free(&cb);
  kiln_tensor_free(x);
  kiln_tensor_free(y);
  unfill(dir);
}

int main(int argc, char **argv) {
  if (argc != 2) return fprintf(stderr, "usage: io_fault_check DIR (a small file system)\n"), 2;
  const char *dir = argv[1];
  kiln_model *m = make_model();
  if (!m) return fprintf(stderr, "io_fault_check: model: %s\n", kiln_errmsg()), 1;
  char header[1100];
  snprintf(header, sizeof header, "%s/faulty.h", dir);
  scenario(dir, m, "weights.ckpt", "checkpoint", save_checkpoint, NULL);
  scenario(dir, m, "model.kiln", "model file", save_model, NULL);
  scenario(dir, m, "faulty.o", "AOT object + header", save_object, header);
  tensorboard(dir, m);
  kiln_model_free(m);
  printf("io faults: %s\n", failures ? "FAILED" : "all checks passed");
  return failures != 0;
}

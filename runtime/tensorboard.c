/* The TensorBoard callback: scalar summaries in TensorFlow's event-file format, as
 * Keras writes them — <log_dir>/train and <log_dir>/validation, one
 * events.out.tfevents.<time>.<host> file each, tags "epoch_loss", "epoch_accuracy",
 * ... with the epoch as step (and "batch_..." every update_freq batches). */
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "frontend/model_impl.h"
#include "runtime/tensor_impl.h"
#include "runtime/proto/event.pb-c.h"

static kiln_status make_dirs(const char *path) {
  char buf[1024];
  snprintf(buf, sizeof buf, "%s", path);
  for (char *p = buf + 1;; p++) {
    bool end = !*p;
    if (*p == '/' || end) {
      *p = 0;
      if (mkdir(buf, 0777) && errno != EEXIST) return kiln_set_error(KILN_ERR_IO, "TensorBoard: cannot create %s: %s", buf, strerror(errno));
      if (end) return KILN_OK;
      *p = '/';
    }
  }
}

static double wall_time(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* One TFRecord: length, its masked CRC, the data, its masked CRC (all little-endian). */
static kiln_status write_record(FILE *f, const uint8_t *data, size_t n) {
  uint8_t head[12];
  uint64_t len = n;
  for (int i = 0; i < 8; i++) head[i] = (uint8_t)(len >> (8 * i));
  uint32_t c1 = kiln_crc32c_masked(head, 8), c2 = kiln_crc32c_masked(data, n);
  for (int i = 0; i < 4; i++) head[8 + i] = (uint8_t)(c1 >> (8 * i));
  uint8_t tail[4];
  for (int i = 0; i < 4; i++) tail[i] = (uint8_t)(c2 >> (8 * i));
  if (fwrite(head, 1, 12, f) != 12 || fwrite(data, 1, n, f) != n || fwrite(tail, 1, 4, f) != 4 || fflush(f))
    return kiln_set_error(KILN_ERR_IO, "TensorBoard: write failed: %s", strerror(errno));
  return KILN_OK;
}

static kiln_status write_event(FILE *f, const Kiln__Tb__Event *ev) {
  size_t n = kiln__tb__event__get_packed_size(ev);
  uint8_t *buf = malloc(n + 1);
  if (!buf) return kiln_set_error(KILN_ERR_NOMEM, "TensorBoard: out of memory");
  kiln__tb__event__pack(ev, buf);
  kiln_status st = write_record(f, buf, n);
  free(buf);
  return st;
}

static kiln_status open_events(const char *dir, FILE **out) {
  kiln_status st = make_dirs(dir);
  if (st != KILN_OK) return st;
  char host[256] = "localhost", path[1400];
  gethostname(host, sizeof host - 1);
  snprintf(path, sizeof path, "%s/events.out.tfevents.%lld.%s.kiln", dir, (long long)time(NULL), host);
  if (!(*out = fopen(path, "wb"))) return kiln_set_error(KILN_ERR_IO, "TensorBoard: cannot write %s: %s", path, strerror(errno));
  Kiln__Tb__Event ev = KILN__TB__EVENT__INIT;
  ev.has_wall_time = true, ev.wall_time = wall_time();
  ev.what_case = KILN__TB__EVENT__WHAT_FILE_VERSION;
  ev.file_version = "brain.Event:2";
  return write_event(*out, &ev);
}

/* Scalars keys[i] (those with or without the "val_" prefix, as `validation` says) as
 * "<prefix>_<key>" at step. */
static kiln_status write_scalars(FILE *f, const char *prefix, int64_t step, const char *const *keys, const double *vals,
                                 size_t n, bool validation) {
  Kiln__Tb__Summary__Value values[64], *ptrs[64];
  char tags[64][160];
  size_t k = 0;
  for (size_t i = 0; i < n && k < 64; i++) {
    bool is_val = !strncmp(keys[i], "val_", 4);
    if (is_val != validation) continue;
    kiln__tb__summary__value__init(&values[k]);
    snprintf(tags[k], sizeof tags[k], "%s_%s", prefix, keys[i] + (is_val ? 4 : 0));
    values[k].tag = tags[k];
    values[k].has_simple_value = true;
    values[k].simple_value = (float)vals[i];
    ptrs[k] = &values[k];
    k++;
  }
  if (!k) return KILN_OK;
  Kiln__Tb__Summary sum = KILN__TB__SUMMARY__INIT;
  sum.n_value = k;
  sum.value = ptrs;
  Kiln__Tb__Event ev = KILN__TB__EVENT__INIT;
  ev.has_wall_time = true, ev.wall_time = wall_time();
  ev.has_step = true, ev.step = step;
  ev.what_case = KILN__TB__EVENT__WHAT_SUMMARY;
  ev.summary = &sum;
  return write_event(f, &ev);
}

typedef struct tensorboard {
  char dir[900];
  int update_freq;
  int64_t batches; /* over the whole run, the step of batch summaries */
  FILE *train, *val;
} tensorboard;

static void close_files(tensorboard *t) {
  if (t->train) fclose(t->train);
  if (t->val) fclose(t->val);
  t->train = t->val = NULL;
}

static kiln_status tensorboard_fn(const kiln_callback_info *info, void *state) {
  tensorboard *t = state;
  char sub[1024];
  kiln_status st = KILN_OK;
  switch (info->event) {
  case KILN_ON_TRAIN_BEGIN:
    close_files(t);
    snprintf(sub, sizeof sub, "%s/train", t->dir);
    return open_events(sub, &t->train);
  case KILN_ON_BATCH_END:
    t->batches++;
    if (t->update_freq > 0 && t->train && t->batches % t->update_freq == 0)
      st = write_scalars(t->train, "batch", t->batches, info->keys, info->values, info->nvalues, false);
    return st;
  case KILN_ON_EPOCH_END: {
    if (!t->train) return KILN_OK;
    st = write_scalars(t->train, "epoch", info->epoch, info->keys, info->values, info->nvalues, false);
    kiln_variable *lr = kiln_model_learning_rate(info->model);
    if (st == KILN_OK && lr) {
      const char *key = "learning_rate";
      double v = kiln_tensor_get_f64(kiln_variable_value(lr), 0);
      st = write_scalars(t->train, "epoch", info->epoch, &key, &v, 1, false);
    }
    bool has_val = false;
    for (size_t i = 0; i < info->nvalues; i++) has_val |= !strncmp(info->keys[i], "val_", 4);
    if (st == KILN_OK && has_val && !t->val) {
      snprintf(sub, sizeof sub, "%s/validation", t->dir);
      st = open_events(sub, &t->val);
    }
    if (st == KILN_OK && has_val) st = write_scalars(t->val, "epoch", info->epoch, info->keys, info->values, info->nvalues, true);
    return st;
  }
  case KILN_ON_TRAIN_END: close_files(t); return KILN_OK;
  default: return KILN_OK;
  }
}

static void tensorboard_free(void *state) {
  close_files(state);
  free(state);
}

kiln_callback kiln_tensorboard(const char *log_dir, int update_freq) {
  tensorboard *t = log_dir && *log_dir && strlen(log_dir) < sizeof t->dir ? calloc(1, sizeof *t) : NULL;
  if (!t) {
    kiln_set_error(KILN_ERR_INVALID, "TensorBoard: log_dir is empty, too long or memory ran out");
    return (kiln_callback){0};
  }
  snprintf(t->dir, sizeof t->dir, "%s", log_dir);
  t->update_freq = update_freq;
  return (kiln_callback){tensorboard_fn, t, tensorboard_free};
}

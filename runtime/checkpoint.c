/* Checkpoints: every variable of a store in one protobuf (runtime/proto/
 * checkpoint.proto), framed with a magic, a length and a CRC so truncation and
 * bit flips are detected before anything is restored. Saving writes a temporary
 * file in the same directory, fsyncs it and renames it over the target, so a
 * crash leaves either the old checkpoint or the new one, never a torn file. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "frontend/model_impl.h"
#include "runtime/proto/checkpoint.pb-c.h"
#include "runtime/tensor_impl.h"

#define MAGIC "KILNCKPT"
#define FORMAT_VERSION 1u
#define HEADER_BYTES (8 + 4 + 8)

static void put_le(unsigned char *p, uint64_t v, int n) {
  for (int i = 0; i < n; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint64_t get_le(const unsigned char *p, int n) {
  uint64_t v = 0;
  for (int i = n; i-- > 0;) v = v << 8 | p[i];
  return v;
}

static bool write_all(int fd, const void *buf, size_t n) {
  const char *p = buf;
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= (size_t)w;
  }
  return true;
}

/* Writes bytes to path atomically: temp file, fsync, rename, fsync of the directory. */
static kiln_status write_atomic(const char *path, const unsigned char *const *parts, const size_t *sizes, int nparts) {
  size_t len = strlen(path);
  char *tmp = malloc(len + 16), *dir = strdup(path);
  if (!tmp || !dir) {
    free(tmp);
    free(dir);
    return kiln_set_error(KILN_ERR_NOMEM, "%s: out of memory", path);
  }
  snprintf(tmp, len + 16, "%s.tmp-XXXXXX", path);
  int fd = mkstemp(tmp);
  kiln_status st = KILN_OK;
  if (fd < 0) {
    st = kiln_set_error(KILN_ERR_IO, "%s: cannot create a temporary file: %s", path, strerror(errno));
  } else {
    for (int i = 0; i < nparts && st == KILN_OK; i++)
      if (!write_all(fd, parts[i], sizes[i])) st = kiln_set_error(KILN_ERR_IO, "%s: write failed: %s", tmp, strerror(errno));
    if (st == KILN_OK && fsync(fd)) st = kiln_set_error(KILN_ERR_IO, "%s: fsync failed: %s", tmp, strerror(errno));
    if (close(fd) && st == KILN_OK) st = kiln_set_error(KILN_ERR_IO, "%s: close failed: %s", tmp, strerror(errno));
    if (st == KILN_OK && rename(tmp, path)) st = kiln_set_error(KILN_ERR_IO, "%s: rename failed: %s", path, strerror(errno));
    if (st != KILN_OK) unlink(tmp);
    else {
      int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY);
      if (dfd >= 0) fsync(dfd), close(dfd);
    }
  }
  free(tmp);
  free(dir);
  return st;
}

kiln_status kiln_checkpoint_save(const kiln_variables *vs, const char *path, const kiln_checkpoint_info *info) {
  if (!vs || !path) return kiln_set_error(KILN_ERR_INVALID, "checkpoint_save: NULL argument");
  size_t n = kiln_variables_count(vs);
  Kiln__Checkpoint ck = KILN__CHECKPOINT__INIT;
  Kiln__Tensor *ts = calloc(n + 1, sizeof *ts);
  Kiln__Tensor **tp = calloc(n + 1, sizeof *tp);
  int64_t *dims = calloc(n * KILN_MAX_RANK + 1, sizeof *dims);
  unsigned char *payload = NULL;
  kiln_status st = ts && tp && dims ? KILN_OK : kiln_set_error(KILN_ERR_NOMEM, "checkpoint_save: out of memory");
  for (size_t i = 0; st == KILN_OK && i < n; i++) {
    kiln_variable *v = kiln_variables_at(vs, i);
    const kiln_tensor *t = kiln_variable_value(v);
    kiln__tensor__init(&ts[i]);
    ts[i].name = (char *)kiln_variable_name(v);
    ts[i].dtype = (int32_t)t->dtype;
    ts[i].n_dims = (size_t)t->rank;
    ts[i].dims = dims + i * KILN_MAX_RANK;
    if (t->rank) memcpy(ts[i].dims, t->dims, sizeof(int64_t) * (size_t)t->rank);
    ts[i].data.data = t->data;
    ts[i].data.len = t->nbytes;
    ts[i].crc32c = kiln_crc32c(t->data, t->nbytes);
    ts[i].has_trainable = true;
    ts[i].trainable = kiln_variable_trainable(v);
    tp[i] = &ts[i];
  }
  ck.n_tensors = n;
  ck.tensors = tp;
  if (info) {
    ck.has_step = ck.has_epoch = ck.has_seed = true;
    ck.step = info->step;
    ck.epoch = info->epoch;
    ck.seed = info->seed;
  }
  size_t plen = st == KILN_OK ? kiln__checkpoint__get_packed_size(&ck) : 0;
  if (st == KILN_OK && !(payload = malloc(plen + 1))) st = kiln_set_error(KILN_ERR_NOMEM, "checkpoint_save: out of memory");
  if (st == KILN_OK) {
    kiln__checkpoint__pack(&ck, payload);
    unsigned char head[HEADER_BYTES], tail[4];
    memcpy(head, MAGIC, 8);
    put_le(head + 8, FORMAT_VERSION, 4);
    put_le(head + 12, plen, 8);
    put_le(tail, kiln_crc32c_masked(payload, plen), 4);
    const unsigned char *parts[3] = {head, payload, tail};
    size_t sizes[3] = {HEADER_BYTES, plen, 4};
    st = write_atomic(path, parts, sizes, 3);
  }
  free(payload);
  free(ts);
  free(tp);
  free(dims);
  return st;
}

static bool tensor_matches(const Kiln__Tensor *t, const kiln_tensor *v) {
  return t->dtype == (int32_t)v->dtype && kiln_same_shape((int)t->n_dims, t->dims, v->rank, v->dims);
}

/* Appends "name" to a comma-separated list, eliding after a few hundred characters. */
static void list_add(char *buf, size_t cap, const char *name) {
  size_t k = strlen(buf);
  if (k > cap - 40) {
    if (!strstr(buf, "...")) snprintf(buf + k, cap - k, ", ...");
    return;
  }
  snprintf(buf + k, cap - k, "%s'%s'", k ? ", " : "", name);
}

kiln_status kiln_checkpoint_restore(kiln_variables *vs, const char *path, bool strict, kiln_checkpoint_info *info) {
  if (!vs || !path) return kiln_set_error(KILN_ERR_INVALID, "checkpoint_restore: NULL argument");
  unsigned char *buf = NULL;
  size_t len = 0;
  kiln_status st = kiln_read_file(path, &buf, &len);
  if (st != KILN_OK) return st;
  Kiln__Checkpoint *ck = NULL;
  uint64_t plen = len >= HEADER_BYTES ? get_le(buf + 12, 8) : 0;
  if (len < HEADER_BYTES || memcmp(buf, MAGIC, 8)) {
    st = kiln_set_error(KILN_ERR_PARSE, "%s: not a kiln checkpoint (bad magic)", path);
  } else if (get_le(buf + 8, 4) != FORMAT_VERSION) {
    st = kiln_set_error(KILN_ERR_PARSE, "%s: checkpoint format version %u is not supported (expected %u)", path,
                        (unsigned)get_le(buf + 8, 4), FORMAT_VERSION);
  } else if (plen > len - HEADER_BYTES || len - HEADER_BYTES - plen != 4) {
    st = kiln_set_error(KILN_ERR_PARSE, "%s: truncated or padded checkpoint: %zu bytes, the header promises %llu", path,
                        len, (unsigned long long)(plen + HEADER_BYTES + 4));
  } else if (get_le(buf + HEADER_BYTES + plen, 4) != kiln_crc32c_masked(buf + HEADER_BYTES, plen)) {
    st = kiln_set_error(KILN_ERR_PARSE, "%s: checksum mismatch: the checkpoint is corrupt", path);
  } else if (!(ck = kiln__checkpoint__unpack(NULL, plen, buf + HEADER_BYTES))) {
    st = kiln_set_error(KILN_ERR_PARSE, "%s: malformed checkpoint contents", path);
  }
  /* Validate everything before changing anything. */
  char missing[400] = "", extra[400] = "", mismatched[400] = "";
  for (size_t i = 0; st == KILN_OK && i < ck->n_tensors; i++) {
    const Kiln__Tensor *t = ck->tensors[i];
    int64_t numel = 1;
    bool ok = t->dtype >= 0 && t->dtype < KILN_DTYPE_COUNT && t->n_dims <= KILN_MAX_RANK;
    for (size_t d = 0; ok && d < t->n_dims; d++) {
      ok = t->dims[d] >= 0 && (t->dims[d] == 0 || numel <= INT64_MAX / 16 / t->dims[d]);
      numel *= ok ? t->dims[d] : 1;
    }
    if (!ok || (uint64_t)numel * kiln_dtype_size((kiln_dtype)t->dtype) != t->data.len)
      st = kiln_set_error(KILN_ERR_PARSE, "%s: tensor '%s' has inconsistent dtype, shape and data size", path, t->name);
    else if (kiln_crc32c(t->data.data, t->data.len) != t->crc32c)
      st = kiln_set_error(KILN_ERR_PARSE, "%s: tensor '%s' fails its checksum", path, t->name);
    if (st != KILN_OK) break;
    kiln_variable *v = kiln_variables_find(vs, t->name);
    if (!v) list_add(extra, sizeof extra, t->name);
    else if (!tensor_matches(t, kiln_variable_value(v))) list_add(mismatched, sizeof mismatched, t->name);
  }
  for (size_t i = 0; st == KILN_OK && i < kiln_variables_count(vs); i++) {
    const char *name = kiln_variable_name(kiln_variables_at(vs, i));
    bool found = false;
    for (size_t j = 0; !found && j < ck->n_tensors; j++) found = !strcmp(ck->tensors[j]->name, name);
    if (!found) list_add(missing, sizeof missing, name);
  }
  if (st == KILN_OK && (*missing || *mismatched || (strict && *extra)))
    st = kiln_set_error(KILN_ERR_INVALID, "%s: does not match the variables:%s%s%s%s%s%s", path,
                        *missing ? " missing from the file: " : "", missing,
                        *mismatched ? "; different dtype or shape: " : "", mismatched,
                        strict && *extra ? "; not in the model: " : "", strict ? extra : "");
  /* Variables the store does not have yet (e.g. optimizer slots created on first use) are created now. */
  for (size_t i = 0; st == KILN_OK && i < ck->n_tensors; i++) {
    const Kiln__Tensor *t = ck->tensors[i];
    kiln_variable *v = kiln_variables_find(vs, t->name);
    if (!v) {
      kiln_shape s = {.rank = (int)t->n_dims};
      if (t->n_dims) memcpy(s.dims, t->dims, sizeof(int64_t) * t->n_dims);
      st = kiln_variable_new(vs, t->name, (kiln_dtype)t->dtype, s, KILN_ZEROS, !t->has_trainable || t->trainable, &v);
    }
    if (st == KILN_OK && t->data.len) memcpy(kiln_variable_value(v)->data, t->data.data, t->data.len);
  }
  if (st == KILN_OK && info) {
    info->step = ck->has_step ? ck->step : 0;
    info->epoch = ck->has_epoch ? ck->epoch : 0;
    info->seed = ck->has_seed ? ck->seed : 0;
  }
  if (ck) kiln__checkpoint__free_unpacked(ck, NULL);
  free(buf);
  return st;
}

kiln_status kiln_model_save(kiln_model *m, const char *path, int64_t epoch) {
  kiln_variable *it = kiln_variables_find(m->vars, "optimizer/iterations");
  kiln_checkpoint_info info = {.step = it ? *(int64_t *)kiln_variable_value(it)->data : 0, .epoch = epoch, .seed = m->seed};
  return kiln_checkpoint_save(m->vars, path, &info);
}

kiln_status kiln_model_save_weights(kiln_model *m, const char *path) {
  if (!m) return kiln_set_error(KILN_ERR_INVALID, "save_weights: null model");
  return kiln_model_save(m, path, 0);
}

kiln_status kiln_model_load_weights(kiln_model *m, const char *path) {
  if (!m) return kiln_set_error(KILN_ERR_INVALID, "load_weights: null model");
  if (!m->built) return kiln_set_error(KILN_ERR_INVALID, "load_weights: build the model first (kiln_model_build)");
  return kiln_checkpoint_restore(m->vars, path, false, NULL);
}

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
#include "runtime/checkpoint_impl.h"
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

/* Writes bytes to path atomically: temp file, fsync (when durable), rename, fsync of the directory. */
static kiln_status write_through_temp(const char *path, const unsigned char *const *parts, const size_t *sizes,
                                      int nparts, bool durable) {
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
    mode_t mask = umask(0); /* mkstemp makes 0600; a saved model is an ordinary file */
    umask(mask);
    if (fchmod(fd, 0666 & ~mask)) st = kiln_set_error(KILN_ERR_IO, "%s: chmod failed: %s", tmp, strerror(errno));
    for (int i = 0; i < nparts && st == KILN_OK; i++)
      if (!write_all(fd, parts[i], sizes[i])) st = kiln_set_error(KILN_ERR_IO, "%s: write failed: %s", tmp, strerror(errno));
    if (st == KILN_OK && durable && fsync(fd)) st = kiln_set_error(KILN_ERR_IO, "%s: fsync failed: %s", tmp, strerror(errno));
    if (close(fd) && st == KILN_OK) st = kiln_set_error(KILN_ERR_IO, "%s: close failed: %s", tmp, strerror(errno));
    if (st == KILN_OK && rename(tmp, path)) st = kiln_set_error(KILN_ERR_IO, "%s: rename failed: %s", path, strerror(errno));
    if (st != KILN_OK) unlink(tmp);
    else if (durable) {
      int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY);
      if (dfd >= 0) fsync(dfd), close(dfd);
    }
  }
  free(tmp);
  free(dir);
  return st;
}

kiln_status kiln_write_atomic(const char *path, const unsigned char *const *parts, const size_t *sizes, int nparts) {
  return write_through_temp(path, parts, sizes, nparts, true);
}

kiln_status kiln_write_replace(const char *path, const unsigned char *const *parts, const size_t *sizes, int nparts) {
  return write_through_temp(path, parts, sizes, nparts, false);
}

/* "magic" | u32 version | u64 payload length | payload | u32 masked CRC32C, atomically. */
kiln_status kiln_framed_write(const char *path, const char *magic, const unsigned char *payload, size_t plen) {
  unsigned char head[HEADER_BYTES], tail[4];
  memcpy(head, magic, 8);
  put_le(head + 8, FORMAT_VERSION, 4);
  put_le(head + 12, plen, 8);
  put_le(tail, kiln_crc32c_masked(payload, plen), 4);
  const unsigned char *parts[3] = {head, payload, tail};
  size_t sizes[3] = {HEADER_BYTES, plen, 4};
  return kiln_write_atomic(path, parts, sizes, 3);
}

/* Reads and checks a framed file; *buf owns the bytes, the payload points into it. */
kiln_status kiln_framed_read(const char *path, const char *magic, const char *what, unsigned char **buf,
                             const unsigned char **payload, size_t *plen_out) {
  size_t len = 0;
  *buf = NULL;
  kiln_status st = kiln_read_file(path, buf, &len);
  if (st != KILN_OK) return st;
  uint64_t plen = len >= HEADER_BYTES ? get_le(*buf + 12, 8) : 0;
  if (len < HEADER_BYTES || memcmp(*buf, magic, 8)) {
    st = kiln_set_error(KILN_ERR_PARSE, "%s: not a kiln %s (bad magic)", path, what);
  } else if (get_le(*buf + 8, 4) != FORMAT_VERSION) {
    st = kiln_set_error(KILN_ERR_PARSE, "%s: %s format version %u is not supported (expected %u)", path, what,
                        (unsigned)get_le(*buf + 8, 4), FORMAT_VERSION);
  } else if (plen > len - HEADER_BYTES || len - HEADER_BYTES - plen != 4) {
    st = kiln_set_error(KILN_ERR_PARSE, "%s: truncated or padded %s: %zu bytes, the header promises %llu", path, what, len,
                        (unsigned long long)(plen + HEADER_BYTES + 4));
  } else if (get_le(*buf + HEADER_BYTES + plen, 4) != kiln_crc32c_masked(*buf + HEADER_BYTES, plen)) {
    st = kiln_set_error(KILN_ERR_PARSE, "%s: checksum mismatch: the %s is corrupt", path, what);
  }
  if (st != KILN_OK) {
    free(*buf);
    *buf = NULL;
    return st;
  }
  *payload = *buf + HEADER_BYTES;
  *plen_out = plen;
  return KILN_OK;
}

void kiln_packed_store_free(kiln_packed_store *p) {
  free(p->tensors);
  free(p->ptrs);
  free(p->dims);
}

/* The variables of vs that keep(v) accepts (all when keep is NULL), as a Checkpoint
 * message pointing at their data. */
kiln_status kiln_pack_store(const kiln_variables *vs, bool (*keep)(const kiln_variable *v, void *ud), void *ud,
                            kiln_packed_store *p) {
  size_t n = kiln_variables_count(vs), k = 0;
  kiln__checkpoint__init(&p->ck);
  p->tensors = calloc(n + 1, sizeof *p->tensors);
  p->ptrs = calloc(n + 1, sizeof *p->ptrs);
  p->dims = calloc(n * KILN_MAX_RANK + 1, sizeof *p->dims);
  if (!p->tensors || !p->ptrs || !p->dims) return kiln_set_error(KILN_ERR_NOMEM, "checkpoint: out of memory");
  for (size_t i = 0; i < n; i++) {
    kiln_variable *v = kiln_variables_at(vs, i);
    if (keep && !keep(v, ud)) continue;
    const kiln_tensor *t = kiln_variable_value(v);
    Kiln__Tensor *ts = &p->tensors[k];
    kiln__tensor__init(ts);
    ts->name = (char *)kiln_variable_name(v);
    ts->dtype = (int32_t)t->dtype;
    ts->n_dims = (size_t)t->rank;
    ts->dims = p->dims + k * KILN_MAX_RANK;
    if (t->rank) memcpy(ts->dims, t->dims, sizeof(int64_t) * (size_t)t->rank);
    ts->data.data = t->data;
    ts->data.len = t->nbytes;
    ts->crc32c = kiln_crc32c(t->data, t->nbytes);
    ts->has_trainable = true;
    ts->trainable = kiln_variable_trainable(v);
    p->ptrs[k++] = ts;
  }
  p->ck.n_tensors = k;
  p->ck.tensors = p->ptrs;
  return KILN_OK;
}

kiln_status kiln_checkpoint_save(const kiln_variables *vs, const char *path, const kiln_checkpoint_info *info) {
  if (!vs || !path) return kiln_set_error(KILN_ERR_INVALID, "checkpoint_save: NULL argument");
  kiln_packed_store p;
  unsigned char *payload = NULL;
  kiln_status st = kiln_pack_store(vs, NULL, NULL, &p);
  if (st == KILN_OK && info) {
    p.ck.has_step = p.ck.has_epoch = p.ck.has_seed = true;
    p.ck.step = info->step;
    p.ck.epoch = info->epoch;
    p.ck.seed = info->seed;
  }
  size_t plen = st == KILN_OK ? kiln__checkpoint__get_packed_size(&p.ck) : 0;
  if (st == KILN_OK && !(payload = malloc(plen + 1))) st = kiln_set_error(KILN_ERR_NOMEM, "checkpoint_save: out of memory");
  if (st == KILN_OK) {
    kiln__checkpoint__pack(&p.ck, payload);
    st = kiln_framed_write(path, MAGIC, payload, plen);
  }
  free(payload);
  kiln_packed_store_free(&p);
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

/* Restores vs from a Checkpoint message, validating every tensor before changing anything. */
kiln_status kiln_restore_store(kiln_variables *vs, const Kiln__Checkpoint *ck, const char *path, bool strict) {
  kiln_status st = KILN_OK;
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
  return st;
}

kiln_status kiln_checkpoint_restore(kiln_variables *vs, const char *path, bool strict, kiln_checkpoint_info *info) {
  if (!vs || !path) return kiln_set_error(KILN_ERR_INVALID, "checkpoint_restore: NULL argument");
  unsigned char *buf;
  const unsigned char *payload;
  size_t plen;
  kiln_status st = kiln_framed_read(path, MAGIC, "checkpoint", &buf, &payload, &plen);
  if (st != KILN_OK) return st;
  Kiln__Checkpoint *ck = kiln__checkpoint__unpack(NULL, plen, payload);
  if (!ck) st = kiln_set_error(KILN_ERR_PARSE, "%s: malformed checkpoint contents", path);
  if (st == KILN_OK) st = kiln_restore_store(vs, ck, path, strict);
  if (st == KILN_OK && info) {
    info->step = ck->has_step ? ck->step : 0;
    info->epoch = ck->has_epoch ? ck->epoch : 0;
    info->seed = ck->has_seed ? ck->seed : 0;
  }
  if (ck) kiln__checkpoint__free_unpacked(ck, NULL);
  free(buf);
  return st;
}

kiln_status kiln_model_save_checkpoint(kiln_model *m, const char *path, int64_t epoch) {
  kiln_variable *it = kiln_variables_find(m->vars, "optimizer/iterations");
  kiln_checkpoint_info info = {.step = it ? *(int64_t *)kiln_variable_value(it)->data : 0, .epoch = epoch, .seed = m->seed};
  return kiln_checkpoint_save(m->vars, path, &info);
}

kiln_status kiln_model_save_weights(kiln_model *m, const char *path) {
  if (!m) return kiln_set_error(KILN_ERR_INVALID, "save_weights: null model");
  return kiln_model_save_checkpoint(m, path, 0);
}

kiln_status kiln_model_load_weights(kiln_model *m, const char *path) {
  if (!m) return kiln_set_error(KILN_ERR_INVALID, "load_weights: null model");
  if (!m->built) return kiln_set_error(KILN_ERR_INVALID, "load_weights: build the model first (kiln_model_build)");
  return kiln_checkpoint_restore(m->vars, path, false, NULL);
}

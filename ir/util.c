/* Small shared helpers: the thread's error message, the graph arena, shape and
 * dtype utilities. The arena is a list of chunks: allocation bumps a pointer,
 * freeing the graph frees every chunk at once. */
#include <stdarg.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include "ir/ir.h"

static _Thread_local char last_error[1024];

const char *kiln_errmsg(void) { return last_error; }
const char *kiln_version(void) { return KILN_VERSION; }

/* Formats through a scratch buffer: callers often wrap the previous message
 * (kiln_set_error(s, "%s: %s", path, kiln_errmsg())), which is last_error itself. */
kiln_status kiln_set_error(kiln_status s, const char *fmt, ...) {
  char msg[sizeof last_error];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  memcpy(last_error, msg, sizeof msg);
  return s;
}

void kiln_assert_fail(const char *file, int line, const char *what) {
  fprintf(stderr, "kiln: internal error at %s:%d: %s\n", file, line, what);
  abort();
}

const char *kiln_status_name(kiln_status s) {
  static const char *names[] = {"ok", "invalid argument", "out of memory", "i/o error", "parse error",
                                "unsupported", "runtime error", "backend error"};
  return (unsigned)s < sizeof names / sizeof names[0] ? names[s] : "unknown status";
}

static const char *dtype_names[KILN_DTYPE_COUNT] = {"f32", "f64", "i32", "i64", "bool"};
static const size_t dtype_sizes[KILN_DTYPE_COUNT] = {4, 8, 4, 8, 1};

const char *kiln_dtype_name(kiln_dtype t) { return (unsigned)t < KILN_DTYPE_COUNT ? dtype_names[t] : "?"; }
size_t kiln_dtype_size(kiln_dtype t) { return (unsigned)t < KILN_DTYPE_COUNT ? dtype_sizes[t] : 0; }
bool kiln_dtype_is_float(kiln_dtype t) { return t == KILN_F32 || t == KILN_F64; }
bool kiln_dtype_is_int(kiln_dtype t) { return t == KILN_I32 || t == KILN_I64; }

int kiln_dtype_from_name(const char *s) {
  for (int i = 0; i < KILN_DTYPE_COUNT; i++)
    if (!strcmp(s, dtype_names[i])) return i;
  return -1;
}

struct kiln_arena_chunk {
  kiln_arena_chunk *next;
  size_t used, cap;
  _Alignas(16) unsigned char mem[];
};

static void *arena_raw(kiln_arena *a, size_t n) {
  n = (n + 15) & ~(size_t)15;
  kiln_arena_chunk *c = a->head;
  if (!c || c->cap - c->used < n) {
    size_t cap = n > 65536 ? n : 65536;
    c = malloc(sizeof *c + cap);
    if (!c) return NULL;
    c->used = 0;
    c->cap = cap;
    c->next = a->head;
    a->head = c;
  }
  void *p = c->mem + c->used;
  c->used += n;
  return p;
}

void *kiln_arena_alloc(kiln_arena *a, size_t n) {
  void *p = arena_raw(a, n);
  if (p) memset(p, 0, n);
  return p;
}

void *kiln_arena_alloc_aligned(kiln_arena *a, size_t n, size_t align) {
  unsigned char *p = arena_raw(a, n + align - 16);
  return p ? (void *)(((uintptr_t)p + align - 1) & ~(uintptr_t)(align - 1)) : NULL;
}

char *kiln_arena_strdup(kiln_arena *a, const char *s) {
  size_t n = strlen(s) + 1;
  char *p = kiln_arena_alloc(a, n);
  if (p) memcpy(p, s, n);
  return p;
}

void kiln_arena_free(kiln_arena *a) {
  while (a->head) {
    kiln_arena_chunk *n = a->head->next;
    free(a->head);
    a->head = n;
  }
}

int64_t kiln_shape_numel(int rank, const int64_t *dims) {
  int64_t n = 1;
  bool over = false;
  for (int i = 0; i < rank; i++) {
    if (dims[i] < 0) return -1;
    over |= __builtin_mul_overflow(n, dims[i], &n);
  }
  return over ? INT64_MAX : n;
}

bool kiln_same_shape(int ra, const int64_t *da, int rb, const int64_t *db) {
  return ra == rb && (ra == 0 || !memcmp(da, db, sizeof(int64_t) * (size_t)ra));
}

const char *kiln_type_str(char *buf, size_t cap, kiln_dtype t, int rank, const int64_t *dims) {
  char shape[128];
  snprintf(buf, cap, "%s%s", kiln_dtype_name(t), kiln_shape_str(shape, sizeof shape, rank, dims));
  return buf;
}

const char *kiln_shape_str(char *buf, size_t cap, int rank, const int64_t *dims) {
  size_t o = 0;
  o += (size_t)snprintf(buf + o, cap - o, "[");
  for (int i = 0; i < rank && o < cap; i++) {
    if (dims[i] < 0)
      o += (size_t)snprintf(buf + o, cap - o, "%s?", i ? "," : "");
    else
      o += (size_t)snprintf(buf + o, cap - o, "%s%lld", i ? "," : "", (long long)dims[i]);
  }
  if (o < cap) snprintf(buf + o, cap - o, "]");
  return buf;
}

uint64_t kiln_hash_bytes(uint64_t h, const void *p, size_t n) {
  const unsigned char *b = p;
  for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull; /* FNV-1a */
  return h;
}

uint64_t kiln_hash_words(uint64_t h, const void *p, size_t n) {
  /* four independent lanes: one chain waited on its multiply every 8 bytes (about
   * 5 GB/s, 9 ms of a warm ResNet-18 compile) */
  const unsigned char *b = p;
  uint64_t lane[4] = {h, h ^ 0x243F6A8885A308D3ull, h ^ 0x13198A2E03707344ull, h ^ 0xA4093822299F31D0ull};
  size_t i = 0;
  for (; i + 32 <= n; i += 32)
    for (int k = 0; k < 4; k++) {
      uint64_t w;
      memcpy(&w, b + i + 8 * k, 8);
      lane[k] = (lane[k] ^ w) * 0x9E3779B97F4A7C15ull;
      lane[k] ^= lane[k] >> 29;
    }
  for (int k = 0; k < 4; k++) h = (h ^ lane[k]) * 0x9E3779B97F4A7C15ull, h ^= h >> 29;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    memcpy(&w, b + i, 8);
    h = (h ^ w) * 0x9E3779B97F4A7C15ull;
    h ^= h >> 29;
  }
  return kiln_hash_bytes(h, b + i, n - i);
}

/* Tiles of the destination's last dimension, one cache line wide, with the other
 * dimensions outside: each tile reads a line-sized run from as many source rows as
 * it has lanes, so the rows stay in cache while the tile walks them (OIHW -> HWIO
 * filters read their source once instead of once per filter tap). */
#define PERMUTE_TILE(T)                                                                                      \
  for (int64_t j0 = 0; j0 < last; j0 += tile)                                                               \
    for (int64_t r = 0, off = 0; r < rows; r++) {                                                            \
      T *o = (T *)dst + r * last;                                                                            \
      const T *x = (const T *)src + off;                                                                     \
      int64_t j1 = j0 + tile < last ? j0 + tile : last;                                                      \
      for (int64_t j = j0; j < j1; j++) o[j] = x[j * step];                                                  \
      for (int d = rank - 2; d >= 0; d--) {                                                                  \
        off += src_strides[d];                                                                               \
        if (++idx[d] < dims[d]) break;                                                                       \
        off -= src_strides[d] * dims[d];                                                                     \
        idx[d] = 0;                                                                                          \
      }                                                                                                      \
    }

void kiln_permute_copy(void *dst, const void *src, size_t es, int rank, const int64_t *dims, const int64_t *src_strides) {
  int64_t numel = kiln_shape_numel(rank, dims);
  if (numel <= 0) return;
  if (rank == 0) {
    memcpy(dst, src, es);
    return;
  }
  int64_t last = dims[rank - 1], step = src_strides[rank - 1], rows = numel / last;
  int64_t tile = step == 1 ? last : 64 / (int64_t)es;
  int64_t idx[KILN_MAX_RANK] = {0};
  switch (es) {
  case 1: PERMUTE_TILE(uint8_t) break;
  case 2: PERMUTE_TILE(uint16_t) break;
  case 4: PERMUTE_TILE(uint32_t) break;
  case 8: PERMUTE_TILE(uint64_t) break;
  default: KILN_ASSERT(!"kiln_permute_copy: element size");
  }
}
#undef PERMUTE_TILE

void kiln_strides(int rank, const int64_t *dims, int64_t *strides) {
  int64_t s = 1;
  for (int i = rank - 1; i >= 0; i--) {
    strides[i] = s;
    s *= dims[i];
  }
}

int64_t kiln_float_to_int(double v, kiln_dtype t) {
  double lo = t == KILN_I32 ? -2147483648.0 : -9223372036854775808.0;
  double hi = t == KILN_I32 ? 2147483647.0 : 9223372036854775807.0;
  if (v != v) return 0;
  if (v <= lo) return t == KILN_I32 ? INT32_MIN : INT64_MIN;
  if (v >= hi) return t == KILN_I32 ? INT32_MAX : INT64_MAX;
  return (int64_t)v;
}

kiln_status kiln_read_file(const char *path, unsigned char **out, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return kiln_set_error(KILN_ERR_IO, "%s: %s", path, strerror(errno));
  unsigned char *buf = NULL;
  size_t n = 0, cap = 0;
  /* A regular file is read into one buffer of its size (+2, and more only if it
   * grows meanwhile): a model's tens of megabytes on huge pages (kiln_alloc_large)
   * instead of a doubling buffer of 4 KiB pages. */
  struct stat sb;
  if (!fstat(fileno(f), &sb) && S_ISREG(sb.st_mode) && sb.st_size > 0 && (uint64_t)sb.st_size < SIZE_MAX / 2) {
    cap = (size_t)sb.st_size + 2; /* a byte more than the file, to meet its end, and the NUL */
    if (!(buf = kiln_alloc_large(cap))) {
      fclose(f);
      return kiln_set_error(KILN_ERR_NOMEM, "%s: out of memory", path);
    }
  }
  for (;;) {
    if (n + 1 >= cap) { /* room for the terminating NUL */
      cap = cap ? cap * 2 : 1 << 16;
      unsigned char *b = realloc(buf, cap);
      if (!b) {
        free(buf);
        fclose(f);
        return kiln_set_error(KILN_ERR_NOMEM, "%s: out of memory", path);
      }
      buf = b;
    }
    size_t r = fread(buf + n, 1, cap - n - 1, f);
    n += r;
    if (r == 0 || feof(f) || ferror(f)) break;
  }
  bool err = ferror(f);
  fclose(f);
  if (err) {
    free(buf);
    return kiln_set_error(KILN_ERR_IO, "%s: read error", path);
  }
  buf[n] = 0;
  *out = buf;
  *len = n;
  return KILN_OK;
}

/* Weights and their packed copies are tens of megabytes written once per compile; on
 * 4 KiB pages each first touch faults (about 7 us each in the VMs we run on: 80 ms for
 * ResNet-18's weights), so large buffers ask for transparent huge pages. */
enum { HUGE_PAGE = 2 << 20 };
void *kiln_alloc_large(size_t n) {
  void *p = NULL;
  size_t align = n >= (size_t)HUGE_PAGE ? HUGE_PAGE : 64;
  if (posix_memalign(&p, align, n ? n : 1)) return NULL;
#ifdef MADV_HUGEPAGE
  if (align == HUGE_PAGE) madvise(p, n / HUGE_PAGE * HUGE_PAGE, MADV_HUGEPAGE); /* advice: failure is harmless */
#endif
  return p;
}

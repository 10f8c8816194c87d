/* IDX reading and standardization. IDX: two zero bytes, an element-type code, the
 * number of dims, then each dim as a big-endian u32, then the elements big-endian.
 * zlib's gz reader passes uncompressed files through unchanged. */
#include <errno.h>
#include <math.h>
#include <string.h>
#include <zlib.h>
#include "ir/ir.h"
#include "runtime/tensor_impl.h"

static size_t idx_elem_size(int code) {
  switch (code) {
  case 0x08: case 0x09: return 1; /* u8, i8 */
  case 0x0B: return 2;            /* i16 */
  case 0x0C: case 0x0D: return 4; /* i32, f32 */
  case 0x0E: return 8;            /* f64 */
  default: return 0;
  }
}

static double idx_elem(const unsigned char *p, int code) {
  uint64_t u = 0;
  for (size_t i = 0; i < idx_elem_size(code); i++) u = u << 8 | p[i];
  switch (code) {
  case 0x08: return (double)(uint8_t)u;
  case 0x09: return (double)(int8_t)u;
  case 0x0B: return (double)(int16_t)u;
  case 0x0C: return (double)(int32_t)u;
  case 0x0D: {
    uint32_t b = (uint32_t)u;
    float f;
    memcpy(&f, &b, 4);
    return f;
  }
  default: {
    double d;
    memcpy(&d, &u, 8);
    return d;
  }
  }
}

/* Reads exactly n bytes; false on a short read. */
static bool read_all(gzFile f, void *buf, size_t n) {
  unsigned char *p = buf;
  while (n) {
    unsigned chunk = n > (1u << 30) ? 1u << 30 : (unsigned)n;
    int r = gzread(f, p, chunk);
    if (r <= 0) return false;
    p += r;
    n -= (size_t)r;
  }
  return true;
}

kiln_status kiln_idx_load(const char *path, kiln_dtype t, kiln_tensor **out) {
  if (!out) return kiln_set_error(KILN_ERR_INVALID, "idx_load: out is NULL");
  *out = NULL;
  if (!path) return kiln_set_error(KILN_ERR_INVALID, "idx_load: path is NULL");
  if ((unsigned)t >= KILN_DTYPE_COUNT) return kiln_set_error(KILN_ERR_INVALID, "idx_load: invalid dtype %d", (int)t);
  gzFile f = gzopen(path, "rb");
  if (!f) return kiln_set_error(KILN_ERR_IO, "%s: %s", path, strerror(errno ? errno : ENOENT));
  unsigned char head[4], dimb[4 * KILN_MAX_RANK];
  kiln_status st = KILN_OK;
  unsigned char *raw = NULL;
  kiln_tensor *x = NULL;
  int64_t dims[KILN_MAX_RANK];
  if (!read_all(f, head, 4)) {
    st = kiln_set_error(KILN_ERR_PARSE, "%s: not an IDX file (shorter than its 4-byte header)", path);
    goto done;
  }
  size_t es = idx_elem_size(head[2]);
  if (head[0] || head[1] || !es) {
    st = kiln_set_error(KILN_ERR_PARSE, "%s: not an IDX file (magic %02x %02x %02x %02x)", path, head[0], head[1],
                        head[2], head[3]);
    goto done;
  }
  int rank = head[3];
  if (rank < 1 || rank > KILN_MAX_RANK) {
    st = kiln_set_error(KILN_ERR_PARSE, "%s: IDX rank %d is outside 1..%d", path, rank, KILN_MAX_RANK);
    goto done;
  }
  if (!read_all(f, dimb, 4 * (size_t)rank)) {
    st = kiln_set_error(KILN_ERR_PARSE, "%s: truncated IDX header", path);
    goto done;
  }
  int64_t n = 1;
  for (int i = 0; i < rank; i++) {
    dims[i] = (int64_t)dimb[4 * i] << 24 | dimb[4 * i + 1] << 16 | dimb[4 * i + 2] << 8 | dimb[4 * i + 3];
    if (dims[i] && n > ((int64_t)1 << 40) / dims[i]) {
      st = kiln_set_error(KILN_ERR_PARSE, "%s: IDX dims are implausibly large", path);
      goto done;
    }
    n *= dims[i];
  }
  /* The buffer grows with the data actually read, so a short (or hostile) file whose
   * header promises gigabytes fails as truncated instead of allocating them. */
  size_t total = (size_t)n * es, have = 0, cap = total < ((size_t)1 << 26) ? total : (size_t)1 << 26;
  for (;;) {
    unsigned char *grown = realloc(raw, cap + 1);
    if (!grown) {
      st = kiln_set_error(KILN_ERR_NOMEM, "%s: out of memory for %lld elements", path, (long long)n);
      goto done;
    }
    raw = grown;
    if (!read_all(f, raw + have, cap - have)) {
      st = kiln_set_error(KILN_ERR_PARSE, "%s: truncated: the header promises %lld elements of %zu bytes", path,
                          (long long)n, es);
      goto done;
    }
    have = cap;
    if (have == total) break;
    cap = total - cap < cap ? total : 2 * cap;
  }
  unsigned char extra;
  if (gzread(f, &extra, 1) > 0) {
    st = kiln_set_error(KILN_ERR_PARSE, "%s: data continues past the %lld elements the header declares", path, (long long)n);
    goto done;
  }
  int gzerr;
  gzerror(f, &gzerr);
  if (gzerr != Z_OK && gzerr != Z_BUF_ERROR) {
    st = kiln_set_error(KILN_ERR_PARSE, "%s: corrupt gzip stream", path);
    goto done;
  }
  x = kiln_tensor_new(t, rank, dims);
  if (!x) {
    st = KILN_ERR_NOMEM;
    goto done;
  }
  for (int64_t i = 0; i < n; i++) {
    double v = idx_elem(raw + (size_t)i * es, head[2]);
    switch (t) {
    case KILN_F32: ((float *)x->data)[i] = (float)v; break;
    case KILN_F64: ((double *)x->data)[i] = v; break;
    case KILN_I32: ((int32_t *)x->data)[i] = (int32_t)kiln_float_to_int(v, KILN_I32); break;
    case KILN_I64: ((int64_t *)x->data)[i] = kiln_float_to_int(v, KILN_I64); break;
    default: ((uint8_t *)x->data)[i] = v != 0; break;
    }
  }
done:
  gzclose(f);
  free(raw);
  if (st != KILN_OK) kiln_tensor_free(x);
  else *out = x;
  return st;
}


kiln_status kiln_standardizer_fit(const kiln_tensor *x, kiln_standardizer *s) {
  if (!x || !s) return kiln_set_error(KILN_ERR_INVALID, "standardizer_fit: NULL argument");
  if (!kiln_dtype_is_float(x->dtype)) return kiln_set_error(KILN_ERR_INVALID, "standardizer_fit: x must be f32 or f64");
  if (!x->numel) return kiln_set_error(KILN_ERR_INVALID, "standardizer_fit: x is empty");
  double mean = 0, m2 = 0;
  for (int64_t i = 0; i < x->numel; i++) { /* Welford: stable for 47M pixels */
    double v = kiln_tensor_get_f64(x, i), d = v - mean;
    mean += d / (double)(i + 1);
    m2 += d * (v - mean);
  }
  s->mean = mean;
  s->std = sqrt(m2 / (double)x->numel);
  return KILN_OK;
}

kiln_status kiln_standardizer_apply(const kiln_standardizer *s, kiln_tensor *x) {
  if (!x || !s) return kiln_set_error(KILN_ERR_INVALID, "standardizer_apply: NULL argument");
  if (!kiln_dtype_is_float(x->dtype)) return kiln_set_error(KILN_ERR_INVALID, "standardizer_apply: x must be f32 or f64");
  double inv = s->std > 0 ? 1.0 / s->std : 1.0;
  for (int64_t i = 0; i < x->numel; i++) {
    double v = (kiln_tensor_get_f64(x, i) - s->mean) * inv;
    if (x->dtype == KILN_F32) ((float *)x->data)[i] = (float)v;
    else ((double *)x->data)[i] = v;
  }
  return KILN_OK;
}

/* ---- per-feature scaling and seeded splits ---- */

struct kiln_scaler {
  int64_t features;
  double *mean, *inv_std;
};

void kiln_scaler_free(kiln_scaler *s) {
  if (!s) return;
  free(s->mean);
  free(s->inv_std);
  free(s);
}

kiln_status kiln_scaler_fit(const kiln_tensor *x, kiln_scaler **out) {
  if (!x || !out) return kiln_set_error(KILN_ERR_INVALID, "scaler_fit: NULL argument");
  *out = NULL;
  if (!kiln_dtype_is_float(x->dtype) || x->rank < 1 || !x->numel)
    return kiln_set_error(KILN_ERR_INVALID, "scaler_fit: x must be a non-empty f32 or f64 tensor");
  int64_t f = x->dims[x->rank - 1], rows = x->numel / f;
  kiln_scaler *s = calloc(1, sizeof *s);
  if (s) s->mean = calloc((size_t)f, sizeof *s->mean), s->inv_std = calloc((size_t)f, sizeof *s->inv_std);
  if (!s || !s->mean || !s->inv_std) {
    kiln_scaler_free(s);
    return kiln_set_error(KILN_ERR_NOMEM, "scaler_fit: out of memory");
  }
  s->features = f;
  for (int64_t j = 0; j < f; j++) { /* Welford per column */
    double mean = 0, m2 = 0;
    for (int64_t i = 0; i < rows; i++) {
      double v = kiln_tensor_get_f64(x, i * f + j), d = v - mean;
      mean += d / (double)(i + 1);
      m2 += d * (v - mean);
    }
    double sd = sqrt(m2 / (double)rows);
    s->mean[j] = mean;
    s->inv_std[j] = sd > 0 ? 1.0 / sd : 1.0;
  }
  *out = s;
  return KILN_OK;
}

kiln_status kiln_scaler_apply(const kiln_scaler *s, kiln_tensor *x) {
  if (!s || !x) return kiln_set_error(KILN_ERR_INVALID, "scaler_apply: NULL argument");
  if (!kiln_dtype_is_float(x->dtype) || x->rank < 1 || x->dims[x->rank - 1] != s->features)
    return kiln_set_error(KILN_ERR_INVALID, "scaler_apply: x must be float with %lld features (the fitted count)",
                          (long long)s->features);
  for (int64_t i = 0; i < x->numel; i++) {
    int64_t j = i % s->features;
    kiln_tensor_set_f64(x, i, (kiln_tensor_get_f64(x, i) - s->mean[j]) * s->inv_std[j]);
  }
  return KILN_OK;
}

kiln_tensor *kiln_tensor_shuffled_rows(const kiln_tensor *t, uint64_t seed, int64_t from, int64_t to) {
  if (!t || t->rank < 1 || from < 0 || to < from || to > t->dims[0]) {
    kiln_set_error(KILN_ERR_INVALID, "shuffled_rows: rows [%lld, %lld) are not within the tensor's %lld", (long long)from,
                   (long long)to, t && t->rank ? (long long)t->dims[0] : 0LL);
    return NULL;
  }
  int64_t n = t->dims[0];
  int64_t *perm = malloc(sizeof *perm * (size_t)(n + 1));
  int64_t dims[KILN_MAX_RANK];
  memcpy(dims, t->dims, sizeof dims);
  dims[0] = to - from;
  kiln_tensor *out = perm ? kiln_tensor_new(t->dtype, t->rank, dims) : NULL;
  if (!out) {
    free(perm);
    kiln_set_error(KILN_ERR_NOMEM, "shuffled_rows: out of memory");
    return NULL;
  }
  for (int64_t i = 0; i < n; i++) perm[i] = i;
  for (int64_t i = n - 1; i > 0; i--) { /* Fisher-Yates from the counter RNG */
    int64_t j = (int64_t)(kiln_rng_uniform01(seed ^ 0x53504c4954ull, (uint64_t)i) * (double)(i + 1));
    int64_t k = perm[i];
    perm[i] = perm[j], perm[j] = k;
  }
  size_t row = n ? t->nbytes / (size_t)n : 0;
  for (int64_t i = from; i < to; i++) memcpy((char *)out->data + (size_t)(i - from) * row, (const char *)t->data + (size_t)perm[i] * row, row);
  free(perm);
  return out;
}

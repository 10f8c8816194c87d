/* NumPy .npy reader and writer (format versions 1.0-3.0). The header is a Python
 * dict literal; we parse just the three keys NumPy writes ('descr',
 * 'fortran_order', 'shape') and reject anything we cannot represent exactly:
 * big-endian data, Fortran order, unknown dtypes, truncated files. */
#include <ctype.h>
#include <errno.h>
#include <string.h>
#include "ir/ir.h"
#include "runtime/tensor_impl.h"

static const char *descr_of(kiln_dtype t) {
  switch (t) {
  case KILN_F32: return "<f4";
  case KILN_F64: return "<f8";
  case KILN_I32: return "<i4";
  case KILN_I64: return "<i8";
  case KILN_BOOL: return "|b1";
  default: return NULL;
  }
}

static int dtype_of(const char *d) {
  for (int t = 0; t < KILN_DTYPE_COUNT; t++)
    if (!strcmp(descr_of((kiln_dtype)t), d)) return t;
  if (!strcmp(d, "|u1") || !strcmp(d, "<b1")) return KILN_BOOL;
  return -1;
}

/* Finds 'key': in the header dict and returns a pointer after the colon. */
static const char *dict_value(const char *h, const char *key) {
  char pat[64];
  snprintf(pat, sizeof pat, "'%s'", key);
  const char *p = strstr(h, pat);
  if (!p) return NULL;
  p = strchr(p + strlen(pat), ':');
  if (!p) return NULL;
  p++;
  while (isspace((unsigned char)*p)) p++;
  return p;
}

kiln_status kiln_npy_load(const char *path, kiln_tensor **out) {
  *out = NULL;
  FILE *f = fopen(path, "rb");
  if (!f) return kiln_set_error(KILN_ERR_IO, "%s: %s", path, strerror(errno));
  unsigned char pre[12];
  kiln_status st = KILN_ERR_PARSE;
  char *hdr = NULL;
  kiln_tensor *t = NULL;
  if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6)) {
    kiln_set_error(st, "%s: not a .npy file (bad magic)", path);
    goto done;
  }
  size_t hlen;
  if (pre[6] == 1) {
    hlen = pre[8] | (size_t)pre[9] << 8;
  } else if (pre[6] == 2 || pre[6] == 3) {
    if (fread(pre + 10, 1, 2, f) != 2) {
      kiln_set_error(st, "%s: truncated header", path);
      goto done;
    }
    hlen = pre[8] | (size_t)pre[9] << 8 | (size_t)pre[10] << 16 | (size_t)pre[11] << 24;
  } else {
    kiln_set_error(st, "%s: unsupported .npy version %d", path, pre[6]);
    goto done;
  }
  if (hlen > (1u << 20)) {
    kiln_set_error(st, "%s: header of %zu bytes is implausible", path, hlen);
    goto done;
  }
  hdr = malloc(hlen + 1);
  if (!hdr || fread(hdr, 1, hlen, f) != hlen) {
    kiln_set_error(st, "%s: truncated header", path);
    goto done;
  }
  hdr[hlen] = 0;
  const char *d = dict_value(hdr, "descr"), *fo = dict_value(hdr, "fortran_order"), *sh = dict_value(hdr, "shape");
  if (!d || !fo || !sh || *d != '\'' || *sh != '(') {
    kiln_set_error(st, "%s: header lacks descr, fortran_order or shape", path);
    goto done;
  }
  char descr[16] = {0};
  const char *e = strchr(d + 1, '\'');
  if (!e || e - d - 1 >= (long)sizeof descr) {
    kiln_set_error(st, "%s: bad descr", path);
    goto done;
  }
  memcpy(descr, d + 1, (size_t)(e - d - 1));
  int dt = dtype_of(descr);
  if (dt < 0) {
    kiln_set_error(KILN_ERR_UNSUPPORTED, "%s: dtype '%s' is not supported (f4 f8 i4 i8 b1, little-endian)", path, descr);
    goto done;
  }
  if (strncmp(fo, "False", 5)) {
    kiln_set_error(KILN_ERR_UNSUPPORTED, "%s: Fortran-order arrays are not supported", path);
    goto done;
  }
  int64_t dims[KILN_MAX_RANK];
  long end_pos = 0;
  int rank = 0;
  const char *p = sh + 1;
  for (;;) {
    while (isspace((unsigned char)*p) || *p == ',') p++;
    if (*p == ')') break;
    if (!isdigit((unsigned char)*p) || rank == KILN_MAX_RANK) {
      kiln_set_error(st, "%s: bad shape in header", path);
      goto done;
    }
    char *end;
    errno = 0;
    long long v = strtoll(p, &end, 10);
    if (errno) {
      kiln_set_error(st, "%s: bad shape in header", path);
      goto done;
    }
    dims[rank++] = v;
    p = end;
  }
  /* the header's size against the bytes the file has, before allocating them */
  uint64_t want = kiln_dtype_size((kiln_dtype)dt);
  bool overflow = false;
  for (int i = 0; i < rank; i++) overflow |= dims[i] && want > UINT64_MAX / (uint64_t)dims[i], want *= (uint64_t)dims[i];
  long here = ftell(f);
  if (here < 0 || fseek(f, 0, SEEK_END) || (end_pos = ftell(f)) < 0 || fseek(f, here, SEEK_SET)) {
    kiln_set_error(KILN_ERR_IO, "%s: cannot seek: %s", path, strerror(errno));
    st = KILN_ERR_IO;
    goto done;
  }
  if (overflow || want > (uint64_t)(end_pos - here)) {
    kiln_set_error(st, "%s: data is truncated (the header's shape needs %s%llu bytes, the file has %lld)", path,
                   overflow ? "more than " : "", (unsigned long long)(overflow ? UINT64_MAX : want), (long long)(end_pos - here));
    goto done;
  }
  t = kiln_tensor_new((kiln_dtype)dt, rank, dims);
  if (!t) {
    st = KILN_ERR_INVALID;
    goto done;
  }
  if (fread(t->data, 1, t->nbytes, f) != t->nbytes) {
    kiln_set_error(st, "%s: data is truncated (expected %zu bytes)", path, t->nbytes);
    goto done;
  }
  *out = t;
  t = NULL;
  st = KILN_OK;
done:
  kiln_tensor_free(t);
  free(hdr);
  fclose(f);
  return st;
}

kiln_status kiln_npy_save(const char *path, const kiln_tensor *t) {
  char hdr[256];
  int n = snprintf(hdr, sizeof hdr, "{'descr': '%s', 'fortran_order': False, 'shape': (", descr_of(t->dtype));
  for (int i = 0; i < t->rank; i++) n += snprintf(hdr + n, sizeof hdr - (size_t)n, "%lld,%s", (long long)t->dims[i], i + 1 < t->rank ? " " : "");
  n += snprintf(hdr + n, sizeof hdr - (size_t)n, "), }");
  int total = 10 + n + 1;
  int padded = (total + 63) / 64 * 64;
  while (n < padded - 10 - 1) hdr[n++] = ' ';
  hdr[n++] = '\n';
  FILE *f = fopen(path, "wb");
  if (!f) return kiln_set_error(KILN_ERR_IO, "%s: %s", path, strerror(errno));
  unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(n & 0xff), (unsigned char)(n >> 8)};
  bool ok = fwrite(pre, 1, 10, f) == 10 && fwrite(hdr, 1, (size_t)n, f) == (size_t)n &&
            fwrite(t->data, 1, t->nbytes, f) == t->nbytes;
  ok = (fclose(f) == 0) && ok;
  return ok ? KILN_OK : kiln_set_error(KILN_ERR_IO, "%s: write failed", path);
}

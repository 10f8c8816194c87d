/* kiln_tensor: a dense row-major buffer with its dtype and shape. Data is
 * 64-byte aligned so generated code may use aligned vector loads. */
#include <string.h>
#include "ir/ir.h"
#include "runtime/tensor_impl.h"

/* zero: the whole buffer; else only the alignment tail past the data (the caller fills the rest) */
static kiln_tensor *tensor_alloc(kiln_dtype dtype, int rank, const int64_t *dims, bool zero) {
  if ((unsigned)dtype >= KILN_DTYPE_COUNT) {
    kiln_set_error(KILN_ERR_INVALID, "kiln_tensor_new: invalid dtype %d", (int)dtype);
    return NULL;
  }
  if (rank < 0 || rank > KILN_MAX_RANK || (rank && !dims)) {
    kiln_set_error(KILN_ERR_INVALID, "kiln_tensor_new: rank %d is outside 0..%d", rank, KILN_MAX_RANK);
    return NULL;
  }
  int64_t n = 1;
  for (int i = 0; i < rank; i++) {
    if (dims[i] < 0) {
      kiln_set_error(KILN_ERR_INVALID, "kiln_tensor_new: dim %d is %lld", i, (long long)dims[i]);
      return NULL;
    }
    if (dims[i] && n > INT64_MAX / 16 / dims[i]) {
      kiln_set_error(KILN_ERR_INVALID, "kiln_tensor_new: shape too large");
      return NULL;
    }
    n *= dims[i];
  }
  kiln_tensor *t = calloc(1, sizeof *t);
  size_t bytes = (size_t)n * kiln_dtype_size(dtype);
  size_t alloc = (bytes + 63) & ~(size_t)63;
  void *data = kiln_alloc_large(alloc ? alloc : 64);
  if (!t || !data) {
    free(t);
    free(data);
    kiln_set_error(KILN_ERR_NOMEM, "kiln_tensor_new: out of memory for %zu bytes", bytes);
    return NULL;
  }
  size_t keep = zero ? 0 : bytes;
  memset((char *)data + keep, 0, (alloc ? alloc : 64) - keep);
  t->dtype = dtype;
  t->rank = rank;
  if (rank) memcpy(t->dims, dims, sizeof(int64_t) * (size_t)rank);
  t->numel = n;
  t->nbytes = bytes;
  t->data = data;
  return t;
}

kiln_tensor *kiln_tensor_new(kiln_dtype dtype, int rank, const int64_t *dims) { return tensor_alloc(dtype, rank, dims, true); }

kiln_tensor *kiln_tensor_uninit(kiln_dtype dtype, int rank, const int64_t *dims) { return tensor_alloc(dtype, rank, dims, false); }

/* not zeroed first: large weights were written twice */
kiln_tensor *kiln_tensor_from_data(kiln_dtype dtype, int rank, const int64_t *dims, const void *data, size_t nbytes) {
  kiln_tensor *t = tensor_alloc(dtype, rank, dims, false);
  if (!t) return NULL;
  if (nbytes != t->nbytes) {
    kiln_set_error(KILN_ERR_INVALID, "kiln_tensor_from_data: %zu bytes given, the shape needs %zu", nbytes, t->nbytes);
    kiln_tensor_free(t);
    return NULL;
  }
  if (nbytes) memcpy(t->data, data, nbytes);
  return t;
}

void kiln_tensor_free(kiln_tensor *t) {
  if (!t) return;
  free(t->data);
  free(t);
}

kiln_dtype kiln_tensor_dtype(const kiln_tensor *t) { return t->dtype; }
int kiln_tensor_rank(const kiln_tensor *t) { return t->rank; }
const int64_t *kiln_tensor_dims(const kiln_tensor *t) { return t->dims; }
int64_t kiln_tensor_numel(const kiln_tensor *t) { return t->numel; }
size_t kiln_tensor_nbytes(const kiln_tensor *t) { return t->nbytes; }
void *kiln_tensor_data(kiln_tensor *t) { return t->data; }
const void *kiln_tensor_cdata(const kiln_tensor *t) { return t->data; }

double kiln_tensor_get_f64(const kiln_tensor *t, int64_t i) {
  switch (t->dtype) {
  case KILN_F32: return ((const float *)t->data)[i];
  case KILN_F64: return ((const double *)t->data)[i];
  case KILN_I32: return ((const int32_t *)t->data)[i];
  case KILN_I64: return (double)((const int64_t *)t->data)[i];
  default: return ((const uint8_t *)t->data)[i];
  }
}

void kiln_tensor_set_f64(kiln_tensor *t, int64_t i, double v) {
  switch (t->dtype) {
  case KILN_F32: ((float *)t->data)[i] = (float)v; break;
  case KILN_F64: ((double *)t->data)[i] = v; break;
  case KILN_I32: ((int32_t *)t->data)[i] = (int32_t)kiln_float_to_int(v, KILN_I32); break;
  case KILN_I64: ((int64_t *)t->data)[i] = kiln_float_to_int(v, KILN_I64); break;
  default: ((uint8_t *)t->data)[i] = v != 0; break;
  }
}

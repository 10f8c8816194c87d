/* The tensor struct, shared by the runtime, the evaluator and the exec. */
#ifndef KILN_TENSOR_IMPL_H
#define KILN_TENSOR_IMPL_H
#include "kiln/core.h"

struct kiln_tensor {
  kiln_dtype dtype;
  int rank;
  int64_t dims[KILN_MAX_RANK];
  int64_t numel;
  size_t nbytes;
  void *data;
};
/* A tensor whose data the caller fills whole (not zeroed first). */
__attribute__((visibility("hidden"))) kiln_tensor *kiln_tensor_uninit(kiln_dtype dtype, int rank, const int64_t *dims);
/* Element i of any dtype as a double (exact for all but i64 beyond 2^53). */
__attribute__((visibility("hidden"))) double kiln_tensor_get_f64(const kiln_tensor *t, int64_t i);
/* Stores v into element i, converted to t's dtype (integers saturate). */
__attribute__((visibility("hidden"))) void kiln_tensor_set_f64(kiln_tensor *t, int64_t i, double v);
#endif

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
#endif

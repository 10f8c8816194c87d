/* kiln core: status codes, dtypes, tensors, error messages.
 *
 * Ownership: every `_new` has a matching `_free`; functions that return a
 * pointer through an out-parameter give the caller ownership of it.
 * Errors: fallible calls return a kiln_status; the message of the last error
 * on the calling thread is kiln_errmsg() (thread-local, like errno — the only
 * global state in kiln). */
#ifndef KILN_CORE_H
#define KILN_CORE_H

#include <stddef.h>
#include <stdint.h>
#include "kiln/version.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define KILN_API __attribute__((visibility("default")))
#else
#define KILN_API
#endif

#define KILN_MAX_RANK 8

typedef enum kiln_status {
  KILN_OK = 0,
  KILN_ERR_INVALID,     /* bad argument: shape, dtype, attribute, unknown name */
  KILN_ERR_NOMEM,
  KILN_ERR_IO,          /* file could not be read or written */
  KILN_ERR_PARSE,       /* malformed text / file contents */
  KILN_ERR_UNSUPPORTED, /* valid request that kiln does not implement */
  KILN_ERR_RUNTIME,     /* error found while running compiled code (e.g. gather index) */
  KILN_ERR_BACKEND      /* LLVM reported an error */
} kiln_status;

typedef enum kiln_dtype {
  KILN_F32 = 0,
  KILN_F64,
  KILN_I32,
  KILN_I64,
  KILN_BOOL, /* one byte per element, 0 or 1 */
  KILN_DTYPE_COUNT
} kiln_dtype;

/* Message of the last failed kiln call on this thread ("" if none). */
KILN_API const char *kiln_errmsg(void);
/* The version of the kiln library in use ("MAJOR.MINOR.PATCH"), which may differ
 * from the headers' KILN_VERSION when a program runs with another libkiln.so. */
KILN_API const char *kiln_version(void);
KILN_API const char *kiln_status_name(kiln_status s);
KILN_API const char *kiln_dtype_name(kiln_dtype t);
/* Bytes per element; 0 for an invalid dtype. */
KILN_API size_t kiln_dtype_size(kiln_dtype t);

/* A dense row-major tensor that owns its data (64-byte aligned). */
typedef struct kiln_tensor kiln_tensor;

/* Zero-filled tensor; NULL with kiln_errmsg() set on bad shape or OOM. */
KILN_API kiln_tensor *kiln_tensor_new(kiln_dtype dtype, int rank, const int64_t *dims);
/* Tensor holding a copy of `data` (nbytes must match the shape). */
KILN_API kiln_tensor *kiln_tensor_from_data(kiln_dtype dtype, int rank, const int64_t *dims,
                                            const void *data, size_t nbytes);
KILN_API void kiln_tensor_free(kiln_tensor *t);
KILN_API kiln_dtype kiln_tensor_dtype(const kiln_tensor *t);
KILN_API int kiln_tensor_rank(const kiln_tensor *t);
KILN_API const int64_t *kiln_tensor_dims(const kiln_tensor *t);
KILN_API int64_t kiln_tensor_numel(const kiln_tensor *t);
KILN_API size_t kiln_tensor_nbytes(const kiln_tensor *t);
KILN_API void *kiln_tensor_data(kiln_tensor *t);
KILN_API const void *kiln_tensor_cdata(const kiln_tensor *t);

/* NumPy .npy files (version 1/2, little-endian, C order; f32 f64 i32 i64 bool). */
KILN_API kiln_status kiln_npy_load(const char *path, kiln_tensor **out);
KILN_API kiln_status kiln_npy_save(const char *path, const kiln_tensor *t);

#ifdef __cplusplus
}
#endif
#endif

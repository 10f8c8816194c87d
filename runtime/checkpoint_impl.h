/* Checkpoint internals shared with model files (runtime/model_file.c): the framed
 * file format and packing a variable store to and from a Checkpoint message. */
#ifndef KILN_CHECKPOINT_IMPL_H
#define KILN_CHECKPOINT_IMPL_H
#include "frontend/model_impl.h"
#include "runtime/proto/checkpoint.pb-c.h"

/* Writes the concatenated parts to path through a temporary file, fsync and rename:
 * a crash leaves the old file or the new one. */
KILN_INTERNAL kiln_status kiln_write_atomic(const char *path, const unsigned char *const *parts, const size_t *sizes,
                                            int nparts);
/* The same without the fsyncs, for files that can be made again and carry their own
 * checksum (compile cache entries): readers still never see half a file, but after a
 * crash an entry may be damaged, and its reader then rejects it. */
KILN_INTERNAL kiln_status kiln_write_replace(const char *path, const unsigned char *const *parts, const size_t *sizes,
                                             int nparts);
KILN_INTERNAL kiln_status kiln_framed_write(const char *path, const char *magic, const unsigned char *payload, size_t plen);
KILN_INTERNAL kiln_status kiln_framed_read(const char *path, const char *magic, const char *what, unsigned char **buf,
                                           const unsigned char **payload, size_t *plen);

typedef struct kiln_packed_store {
  Kiln__Checkpoint ck;
  Kiln__Tensor *tensors, **ptrs;
  int64_t *dims;
} kiln_packed_store;
KILN_INTERNAL kiln_status kiln_pack_store(const kiln_variables *vs, bool (*keep)(const kiln_variable *v, void *ud),
                                          void *ud, kiln_packed_store *p);
KILN_INTERNAL void kiln_packed_store_free(kiln_packed_store *p);
KILN_INTERNAL kiln_status kiln_restore_store(kiln_variables *vs, const Kiln__Checkpoint *ck, const char *path, bool strict);
#endif

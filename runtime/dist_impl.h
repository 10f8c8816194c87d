/* What runtime/fit_dist.c needs of runtime/distributed.c beyond the public API. Every
 * collective waits at most the timeout and, on failure, leaves an error naming this
 * rank, the ranks that did not answer and the step set by kiln_dist_where; after a
 * failure every later collective fails at once (MPI cannot cancel one in flight). */
#ifndef KILN_RUNTIME_DIST_IMPL_H
#define KILN_RUNTIME_DIST_IMPL_H

#include "ir/ir.h"
#include "kiln/distributed.h"

/* Where training is, for error messages: epoch and step are 0-based. */
KILN_INTERNAL void kiln_dist_where(kiln_dist *d, int epoch, int64_t step);
/* In-place sums across ranks, in buckets issued together; n32 floats and n64 doubles
 * (either may be 0). Counted in kiln_dist_stats. */
KILN_INTERNAL kiln_status kiln_dist_sum(kiln_dist *d, float *f32, size_t n32, double *f64, size_t n64, bool counted);
/* Rank root's bytes to every rank. */
KILN_INTERNAL kiln_status kiln_dist_bcast(kiln_dist *d, void *buf, size_t bytes, int root);
/* Every rank's `n` int64 facts, gathered and compared with rank 0's; a rank that
 * differs fails with an error naming it and the first differing fact (names[i]) with
 * both values, except for the last nhashes facts, whose values mean nothing to a user. */
KILN_INTERNAL kiln_status kiln_dist_check_same(kiln_dist *d, const int64_t *facts, const char *const *names, size_t n,
                                               size_t nhashes, const char *what);
/* A hash of the store's variable names, dtypes and shapes (what must agree across ranks). */
KILN_INTERNAL uint64_t kiln_variables_signature(const kiln_variables *vs);
#endif

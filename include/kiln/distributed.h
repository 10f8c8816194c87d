/* Data-parallel training over MPI, Horovod's design: every rank holds the whole
 * model, computes gradients on its shard of each global batch, the gradients are
 * summed by one fused allreduce, and every rank applies the same update.
 *
 *   kiln_dist *d;
 *   if (kiln_dist_init(&argc, &argv, &d) != KILN_OK) die(kiln_errmsg());
 *   kiln_fit_options fo = kiln_fit_defaults();
 *   fo.batch_size = 32;   // per rank: the global batch is 32 * kiln_dist_size(d)
 *   fo.distributed = d;
 *   kiln_model_fit(m, x, y, &fo, &h);   // the same call, the same data, on every rank
 *   kiln_dist_free(d);
 *
 *   mpirun -np 2 ./train                  one machine
 *   mpirun --host a,b -np 2 ./train       two machines (the data and checkpoints at the same path on each)
 *
 * With fo.distributed set, fit broadcasts every variable from rank 0 first (after
 * checking that all ranks built the same model on the same data), takes rows
 * [r*n/P, (r+1)*n/P) of each global batch on rank r, averages gradients by the
 * global batch size (results do not depend on the rank count), reduces losses and
 * metrics so every rank's History is the same, and runs callbacks and the progress
 * bar on rank 0 only (so rank 0 alone writes checkpoints, logs and event files).
 * Variables the forward pass assigns (BatchNormalization's moving statistics) are
 * averaged across ranks after each step.
 *
 * Failures do not hang: every collective waits at most the timeout
 * (KILN_DIST_TIMEOUT seconds, default 120); a rank that died, or a SIGTERM from
 * mpirun after another rank failed, ends fit on every survivor with an error
 * naming the rank(s) and the step.
 *
 * Built without MPI (-DKILN_MPI=OFF, or libopenmpi-dev missing), kiln_dist_init
 * fails with KILN_ERR_UNSUPPORTED and kiln_dist_available() is false. */
#ifndef KILN_DISTRIBUTED_H
#define KILN_DISTRIBUTED_H

#include <stdbool.h>
#include "kiln/train.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kiln_dist kiln_dist;

/* Whether this build of kiln has MPI. */
KILN_API bool kiln_dist_available(void);
/* Joins MPI_COMM_WORLD, initialising MPI unless the program already did; argc and
 * argv may be NULL. One per process. */
KILN_API kiln_status kiln_dist_init(int *argc, char ***argv, kiln_dist **out);
/* Finalises MPI if kiln_dist_init initialised it. */
KILN_API void kiln_dist_free(kiln_dist *d);
KILN_API int kiln_dist_rank(const kiln_dist *d);
KILN_API int kiln_dist_size(const kiln_dist *d);
/* How long one collective waits for the other ranks before failing. */
KILN_API void kiln_dist_set_timeout(kiln_dist *d, double seconds);

/* For train steps written with kiln_function (a gradients function, then an apply
 * function taking the reduced gradients): sums the tensors in place across ranks in
 * one fused allreduce, each scaled by `scale` first (1 / size for the average). */
KILN_API kiln_status kiln_dist_allreduce(kiln_dist *d, kiln_tensor *const *ts, size_t n, double scale);
/* Copies every variable of vs from rank `root` to the others, after checking that
 * every rank holds the same variables (names, dtypes, shapes). */
KILN_API kiln_status kiln_dist_broadcast_variables(kiln_dist *d, kiln_variables *vs, int root);

typedef struct kiln_dist_stats {
  int64_t allreduces;       /* fused allreduces (one per training step) */
  int64_t bytes;            /* bytes this rank contributed to them */
  double allreduce_seconds; /* wall time inside them, waiting for other ranks included */
} kiln_dist_stats;
KILN_API kiln_dist_stats kiln_dist_get_stats(const kiln_dist *d);

#ifdef __cplusplus
}
#endif
#endif

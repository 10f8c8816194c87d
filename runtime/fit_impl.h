/* What the training loop (runtime/fit.c) shares with its data-parallel step
 * (runtime/fit_dist.c). */
#ifndef KILN_RUNTIME_FIT_IMPL_H
#define KILN_RUNTIME_FIT_IMPL_H

#include "frontend/model_impl.h"
#include "kiln/distributed.h"

/* What one compiled call reads: inputs, targets per head, example weights [n] f32. */
typedef struct feed {
  const kiln_tensor *t[72];
  size_t nt; /* inputs + heads; the weights come last */
  kiln_tensor *w;
  int64_t n;
} feed;

/* Accumulators: the loss sum, head loss sums, then each metric's vector. */
KILN_INTERNAL size_t kiln_fit_acc_size(const kiln_model *m);
/* Runs fn on rows idx[0..cnt) of the feed, as a batch of `rows` >= cnt: rows past cnt
 * are padding of weight zero (only for functions that keep rows apart). mean_step: fn
 * minimises the mean over its rows (the train step), so with padding the real rows'
 * weights are scaled up to keep the mean over cnt. Its first ngiven outputs are written
 * into the caller's tensors `given`, the m->nresults after them are added to acc. */
KILN_INTERNAL kiln_status kiln_fit_run_batch(kiln_model *m, kiln_function *fn, const feed *f, const int64_t *idx,
                                             int64_t cnt, int64_t rows, bool mean_step, double *acc,
                                             kiln_tensor *const *given, size_t ngiven);
/* Accumulators of the eval function over rows idx[0..n), in batches of bs. */
KILN_INTERNAL kiln_status kiln_fit_eval_rows(kiln_model *m, const feed *f, const int64_t *idx, int64_t n, int64_t bs,
                                             double *acc);

/* ---- fit_dist.c: the data-parallel train step ---- */

typedef struct dist_fit {
  kiln_dist *d;
  int rank, size;
  kiln_variable **weights; /* trainable, in grads_fn's order */
  size_t nweights;
  kiln_variable **state; /* float variables the forward pass assigns: averaged after each step */
  size_t nstate;
  bool state_known; /* grads_fn has been traced and state listed */
  kiln_tensor *views;      /* one per weight: its gradient, inside b32 or b64 */
  kiln_tensor **view_ptrs; /* &views[i]: grads_fn's given outputs and apply_fn's inputs */
  float *b32;              /* gradients, then state: what the allreduce sums */
  double *b64;
  size_t n32, n64;         /* elements in each */
  size_t g32, g64;         /* of which gradients (the state follows) */
  bool stop_each_step; /* rank 0 has callbacks, which may stop training after any batch */
} dist_fit;

/* Checks that every rank has the same model, data sizes and options (facts), then
 * copies every variable from rank 0. */
KILN_INTERNAL kiln_status kiln_fit_dist_begin(dist_fit *df, kiln_model *m, kiln_dist *d, const int64_t *facts,
                                              const char *const *names, size_t nfacts, bool has_callbacks);
KILN_INTERNAL void kiln_fit_dist_end(dist_fit *df);
/* This rank's share [lo, hi) of n rows. */
KILN_INTERNAL void kiln_fit_dist_shard(const dist_fit *df, int64_t n, int64_t *lo, int64_t *hi);
/* One step over the global batch idx[0..n): gradients of this rank's shard, one
 * fused allreduce (weighted by shard size over n, so the result is the global batch's
 * mean gradient), then the optimizer's update on every rank. */
KILN_INTERNAL kiln_status kiln_fit_dist_step(dist_fit *df, kiln_model *m, const feed *f, const int64_t *idx, int64_t n,
                                             double *acc);
/* Sums accumulators across ranks. */
KILN_INTERNAL kiln_status kiln_fit_dist_sum_acc(dist_fit *df, double *acc, size_t n);
/* Rank 0's stop_training to every rank. */
KILN_INTERNAL kiln_status kiln_fit_dist_agree_stop(dist_fit *df, kiln_model *m);
#endif

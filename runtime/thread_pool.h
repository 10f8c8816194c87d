/* A fixed pool of worker threads that runs one parallel loop at a time.
 *
 * Generated code sees it through kiln_parallel: the compiled entry point gets a
 * pointer to one (or NULL: run serially) and calls run(pool, task, ctx, n), which
 * returns when task(ctx, i, worker) has run for every i < n. `worker` is in
 * [0, threads): the caller is worker 0, so per-worker scratch needs no locking.
 * Which worker runs which task varies; kernels make each task's result
 * independent of that, so any thread count gives identical bits. */
#ifndef KILN_THREAD_POOL_H
#define KILN_THREAD_POOL_H

#include <stdint.h>
#include "ir/ir.h"

typedef void (*kiln_task_fn)(void *ctx, int64_t task, int32_t worker);

/* The layout generated code reads (codegen/gemm.c emits the call). */
typedef struct kiln_parallel {
  void (*run)(void *pool, kiln_task_fn task, void *ctx, int64_t ntasks);
  void *pool;
} kiln_parallel;

typedef struct kiln_pool kiln_pool;

/* threads counts the caller: 2 starts one worker thread. NULL with an error set on failure. */
KILN_INTERNAL kiln_pool *kiln_pool_new(int threads);
KILN_INTERNAL void kiln_pool_free(kiln_pool *p);
KILN_INTERNAL int kiln_pool_threads(const kiln_pool *p);
KILN_INTERNAL void kiln_pool_run(void *pool, kiln_task_fn task, void *ctx, int64_t ntasks);
KILN_INTERNAL kiln_parallel kiln_pool_parallel(kiln_pool *p);

/* The thread count a compile uses: `requested` when > 0, else $KILN_NUM_THREADS, else
 * the online CPUs. An unparsable or out-of-range variable is an error naming it. */
KILN_INTERNAL kiln_status kiln_thread_count(int requested, int *out);

#endif

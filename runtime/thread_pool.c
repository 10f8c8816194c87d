/* The worker pool behind kiln_parallel (see thread_pool.h).
 *
 * One job at a time: the caller publishes (task, ctx, ntasks), bumps the
 * generation and takes tasks itself from a shared counter; every worker checks
 * in once per generation, so a worker that wakes late can never pick up the next
 * job's counter with this job's task. Workers spin for a while (SPIN_NS) before sleeping,
 * because a training step launches kernels a few microseconds apart and a
 * condition-variable wake-up costs tens of them. */
#define _GNU_SOURCE
#include "runtime/thread_pool.h"
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* How long an idle worker (and a waiting caller) spins before sleeping. Waking a
 * sleeping thread costs 40-70 us on this kind of VM, more than many kernels take,
 * and a train step leaves a few hundred microseconds of serial work between its
 * parallel GEMMs; OpenMP runtimes spin for longer still. */
enum { SPIN_NS = 1000000, MAX_THREADS = 256 };

struct kiln_pool {
  int threads;
  pthread_t *tids;
  int started;
  pthread_mutex_t mu;
  pthread_cond_t wake, finished;
  kiln_task_fn task;
  void *ctx;
  int64_t ntasks;
  atomic_int_fast64_t next;
  atomic_uint_fast64_t generation;
  atomic_int busy; /* workers that have not finished the current generation */
  bool stop;
};

typedef struct {
  kiln_pool *p;
  int32_t id;
} worker_arg;

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Spins until *gen differs from seen or SPIN_NS pass; returns the last value read. */
static uint_fast64_t spin_for_generation(kiln_pool *p, uint_fast64_t seen) {
  int64_t start = now_ns();
  uint_fast64_t gen;
  for (unsigned i = 1; (gen = atomic_load_explicit(&p->generation, memory_order_acquire)) == seen; i++) {
    cpu_relax();
    if (i % 64 == 0 && now_ns() - start > SPIN_NS) break;
  }
  return gen;
}

static void run_tasks(kiln_pool *p, int32_t worker) {
  int64_t i;
  while ((i = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed)) < p->ntasks) p->task(p->ctx, i, worker);
}

static void *worker_main(void *varg) {
  worker_arg a = *(worker_arg *)varg;
  free(varg);
  kiln_pool *p = a.p;
  uint_fast64_t seen = 0;
  for (;;) {
    uint_fast64_t gen = spin_for_generation(p, seen);
    if (gen == seen) {
      pthread_mutex_lock(&p->mu);
      while ((gen = atomic_load_explicit(&p->generation, memory_order_acquire)) == seen && !p->stop)
        pthread_cond_wait(&p->wake, &p->mu);
      bool stop = p->stop;
      pthread_mutex_unlock(&p->mu);
      if (stop) return NULL;
    }
    seen = gen;
    run_tasks(p, a.id);
    if (atomic_fetch_sub_explicit(&p->busy, 1, memory_order_acq_rel) == 1) {
      pthread_mutex_lock(&p->mu);
      pthread_cond_signal(&p->finished);
      pthread_mutex_unlock(&p->mu);
    }
  }
}

kiln_pool *kiln_pool_new(int threads) {
  if (threads < 1 || threads > MAX_THREADS) {
    kiln_set_error(KILN_ERR_INVALID, "thread pool: %d threads (1 to %d)", threads, MAX_THREADS);
    return NULL;
  }
  kiln_pool *p = calloc(1, sizeof *p);
  if (!p || !(p->tids = calloc((size_t)threads, sizeof *p->tids))) {
    free(p);
    kiln_set_error(KILN_ERR_NOMEM, "thread pool: out of memory");
    return NULL;
  }
  p->threads = threads;
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->wake, NULL);
  pthread_cond_init(&p->finished, NULL);
  for (int i = 1; i < threads; i++) {
    worker_arg *a = malloc(sizeof *a);
    if (a) *a = (worker_arg){p, i};
    int rc = a ? pthread_create(&p->tids[i], NULL, worker_main, a) : ENOMEM;
    if (rc) {
      free(a);
      kiln_pool_free(p);
      kiln_set_error(KILN_ERR_RUNTIME, "thread pool: cannot start thread %d of %d: %s", i + 1, threads, strerror(rc));
      return NULL;
    }
    p->started = i;
  }
  return p;
}

void kiln_pool_free(kiln_pool *p) {
  if (!p) return;
  pthread_mutex_lock(&p->mu);
  p->stop = true;
  pthread_cond_broadcast(&p->wake);
  pthread_mutex_unlock(&p->mu);
  for (int i = 1; i <= p->started; i++) pthread_join(p->tids[i], NULL);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->wake);
  pthread_cond_destroy(&p->finished);
  free(p->tids);
  free(p);
}

int kiln_pool_threads(const kiln_pool *p) { return p ? p->threads : 1; }

void kiln_pool_run(void *pool, kiln_task_fn task, void *ctx, int64_t ntasks) {
  kiln_pool *p = pool;
  if (!p || p->threads == 1 || ntasks <= 1) {
    for (int64_t i = 0; i < ntasks; i++) task(ctx, i, 0);
    return;
  }
  p->task = task;
  p->ctx = ctx;
  p->ntasks = ntasks;
  atomic_store_explicit(&p->next, 0, memory_order_relaxed);
  atomic_store_explicit(&p->busy, p->threads - 1, memory_order_relaxed);
  pthread_mutex_lock(&p->mu);
  atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
  pthread_cond_broadcast(&p->wake);
  pthread_mutex_unlock(&p->mu);
  run_tasks(p, 0);
  int64_t start = now_ns();
  for (unsigned i = 1; atomic_load_explicit(&p->busy, memory_order_acquire) > 0; i++) {
    cpu_relax();
    if (i % 64 == 0 && now_ns() - start > SPIN_NS) break;
  }
  if (atomic_load_explicit(&p->busy, memory_order_acquire) > 0) {
    pthread_mutex_lock(&p->mu);
    while (atomic_load_explicit(&p->busy, memory_order_acquire) > 0) pthread_cond_wait(&p->finished, &p->mu);
    pthread_mutex_unlock(&p->mu);
  }
}

kiln_parallel kiln_pool_parallel(kiln_pool *p) { return (kiln_parallel){kiln_pool_run, p}; }

kiln_status kiln_thread_count(int requested, int *out) {
  if (requested > 0) {
    if (requested > MAX_THREADS)
      return kiln_set_error(KILN_ERR_INVALID, "threads is %d, at most %d", requested, MAX_THREADS);
    *out = requested;
    return KILN_OK;
  }
  const char *env = getenv("KILN_NUM_THREADS");
  if (env && *env) {
    char *end;
    long v = strtol(env, &end, 10);
    if (*end || v < 1 || v > MAX_THREADS)
      return kiln_set_error(KILN_ERR_INVALID, "KILN_NUM_THREADS is \"%s\": expected a thread count from 1 to %d", env,
                            MAX_THREADS);
    *out = (int)v;
    return KILN_OK;
  }
  cpu_set_t set;
  int n = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : (int)sysconf(_SC_NPROCESSORS_ONLN);
  /* Ranks of an MPI job on this host share its cores (Open MPI, then MPICH's name). */
  const char *local = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  if (!local) local = getenv("MPI_LOCALNRANKS");
  long ranks = local ? strtol(local, NULL, 10) : 1;
  if (ranks > 1) n = (int)(n / ranks);
  *out = n < 1 ? 1 : n > MAX_THREADS ? MAX_THREADS : n;
  return KILN_OK;
}

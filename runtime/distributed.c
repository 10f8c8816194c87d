/* The MPI communicator behind data-parallel training. Collectives are the
 * non-blocking ones (MPI_Iallreduce, MPI_Ibcast, MPI_Iallgather) polled against a
 * deadline, because a blocking one waits forever for a rank that died and Open MPI
 * 4 cannot recover a communicator that lost a member. mpirun answers a rank's death
 * by sending SIGTERM to the others; the handler installed by kiln_dist_init only
 * raises a flag, so the waiting collective can name the step and the dead rank
 * (peers on this host are checked by pid) before the process exits. */
#include <signal.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "runtime/dist_impl.h"
#include "runtime/tensor_impl.h"

uint64_t kiln_variables_signature(const kiln_variables *vs) {
  uint64_t h = 1469598103934665603ull;
#define MIX(v) (h = (h ^ (uint64_t)(v)) * 1099511628211ull)
  for (size_t i = 0; i < kiln_variables_count(vs); i++) {
    kiln_variable *v = kiln_variables_at(vs, i);
    for (const char *c = kiln_variable_name(v); *c; c++) MIX((unsigned char)*c);
    const kiln_tensor *t = kiln_variable_value(v);
    MIX(t->dtype);
    MIX(t->rank);
    for (int d = 0; d < t->rank; d++) MIX(t->dims[d]);
  }
#undef MIX
  return h;
}

#ifndef KILN_HAVE_MPI

bool kiln_dist_available(void) { return false; }
kiln_status kiln_dist_init(int *argc, char ***argv, kiln_dist **out) {
  (void)argc, (void)argv;
  if (out) *out = NULL;
  return kiln_set_error(KILN_ERR_UNSUPPORTED,
                        "distributed training: this kiln was built without MPI (install libopenmpi-dev and configure "
                        "with -DKILN_MPI=ON)");
}
void kiln_dist_free(kiln_dist *d) { (void)d; }
int kiln_dist_rank(const kiln_dist *d) { return (void)d, 0; }
int kiln_dist_size(const kiln_dist *d) { return (void)d, 1; }
void kiln_dist_set_timeout(kiln_dist *d, double seconds) { (void)d, (void)seconds; }
kiln_dist_stats kiln_dist_get_stats(const kiln_dist *d) { return (void)d, (kiln_dist_stats){0}; }
static kiln_status no_mpi(void) { return kiln_dist_init(NULL, NULL, NULL); }
kiln_status kiln_dist_allreduce(kiln_dist *d, kiln_tensor *const *ts, size_t n, double scale) {
  return (void)d, (void)ts, (void)n, (void)scale, no_mpi();
}
kiln_status kiln_dist_broadcast_variables(kiln_dist *d, kiln_variables *vs, int root) {
  return (void)d, (void)vs, (void)root, no_mpi();
}
void kiln_dist_where(kiln_dist *d, int epoch, int64_t step) { (void)d, (void)epoch, (void)step; }
kiln_status kiln_dist_sum(kiln_dist *d, float *f32, size_t n32, double *f64, size_t n64, bool counted) {
  return (void)d, (void)f32, (void)n32, (void)f64, (void)n64, (void)counted, no_mpi();
}
kiln_status kiln_dist_bcast(kiln_dist *d, void *buf, size_t bytes, int root) {
  return (void)d, (void)buf, (void)bytes, (void)root, no_mpi();
}
kiln_status kiln_dist_check_same(kiln_dist *d, const int64_t *facts, const char *const *names, size_t n, size_t nhashes,
                                 const char *what) {
  return (void)d, (void)facts, (void)names, (void)n, (void)nhashes, (void)what, no_mpi();
}

#else
#include <errno.h>
#include <mpi.h>
#include <stdatomic.h>

typedef struct peer {
  int pid;
  char host[60];
} peer;

struct kiln_dist {
  int rank, size;
  bool we_initialised;
  double timeout;
  size_t bucket_elems; /* elements per MPI call of an allreduce */
  peer *peers;
  int epoch;
  int64_t step;
  bool failed;
  char *failure; /* the first failure's message, repeated by every later call */
  kiln_dist_stats stats;
  struct sigaction old_term;
};

static volatile sig_atomic_t terminated;
static atomic_int live_dists; /* kiln_dist_init: one per process */

static void on_sigterm(int sig) {
  (void)sig;
  terminated = 1;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

bool kiln_dist_available(void) { return true; }

static double env_double(const char *name, double dflt) {
  const char *s = getenv(name);
  char *end;
  double v = s ? strtod(s, &end) : 0;
  return s && end != s && v > 0 ? v : dflt;
}

/* Undoes a kiln_dist_init that failed (st is set, with its message); MPI stays as it is:
 * finalising after a failed exchange could wait for a rank that is not there. */
static kiln_status init_failed(kiln_dist *d, kiln_status st) {
  if (d) free(d->peers), free(d);
  atomic_fetch_sub(&live_dists, 1);
  return st;
}

kiln_status kiln_dist_init(int *argc, char ***argv, kiln_dist **out) {
  if (!out) return kiln_set_error(KILN_ERR_INVALID, "dist_init: out is NULL");
  *out = NULL;
  if (atomic_fetch_add(&live_dists, 1))
    return init_failed(NULL, kiln_set_error(KILN_ERR_INVALID, "dist_init: this process already has a kiln_dist"));
  kiln_dist *d = calloc(1, sizeof *d);
  if (!d) return init_failed(NULL, kiln_set_error(KILN_ERR_NOMEM, "dist_init: out of memory"));
  int inited = 0, finalized = 0;
  MPI_Initialized(&inited);
  MPI_Finalized(&finalized);
  if (finalized) return init_failed(d, kiln_set_error(KILN_ERR_INVALID, "dist_init: MPI was already finalised in this process"));
  if (!inited) {
    int provided;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
      return init_failed(d, kiln_set_error(KILN_ERR_RUNTIME, "dist_init: MPI_Init failed"));
    d->we_initialised = true;
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_rank(MPI_COMM_WORLD, &d->rank);
  MPI_Comm_size(MPI_COMM_WORLD, &d->size);
  d->timeout = env_double("KILN_DIST_TIMEOUT", 120);
  d->bucket_elems = (size_t)(env_double("KILN_DIST_BUCKET_MB", 16) * (1 << 20)) / sizeof(float);
  if (d->bucket_elems < 1024) d->bucket_elems = 1024;
  peer me = {.pid = (int)getpid()};
  gethostname(me.host, sizeof me.host - 1);
  if (!(d->peers = calloc((size_t)d->size, sizeof *d->peers)))
    return init_failed(d, kiln_set_error(KILN_ERR_NOMEM, "dist_init: out of memory"));
  if (MPI_Allgather(&me, sizeof me, MPI_BYTE, d->peers, sizeof me, MPI_BYTE, MPI_COMM_WORLD) != MPI_SUCCESS)
    return init_failed(d, kiln_set_error(KILN_ERR_RUNTIME, "dist_init: could not reach the other ranks"));
  /* Only now, so a failed init leaves the program's SIGTERM handler alone. */
  struct sigaction sa = {.sa_handler = on_sigterm};
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, &d->old_term);
  *out = d;
  return KILN_OK;
}

void kiln_dist_free(kiln_dist *d) {
  if (!d) return;
  sigaction(SIGTERM, &d->old_term, NULL);
  /* After a failure MPI_Finalize would wait for the lost rank; exiting is all that is left. */
  if (d->we_initialised && !d->failed) MPI_Finalize();
  free(d->peers);
  free(d->failure);
  free(d);
  atomic_fetch_sub(&live_dists, 1);
}

int kiln_dist_rank(const kiln_dist *d) { return d ? d->rank : 0; }
int kiln_dist_size(const kiln_dist *d) { return d ? d->size : 1; }
void kiln_dist_set_timeout(kiln_dist *d, double seconds) {
  if (d && seconds > 0) d->timeout = seconds;
}
kiln_dist_stats kiln_dist_get_stats(const kiln_dist *d) { return d ? d->stats : (kiln_dist_stats){0}; }
void kiln_dist_where(kiln_dist *d, int epoch, int64_t step) {
  if (d) d->epoch = epoch, d->step = step;
}

/* Peers known to be gone: those on this host whose process no longer exists. */
static void lost_peers(const kiln_dist *d, char *buf, size_t cap) {
  size_t k = 0;
  buf[0] = 0;
  for (int r = 0; r < d->size && k < cap; r++) {
    if (r == d->rank || strcmp(d->peers[r].host, d->peers[d->rank].host)) continue;
    if (kill(d->peers[r].pid, 0) == 0 || errno != ESRCH) continue;
    k += (size_t)snprintf(buf + k, cap - k, "%srank %d (pid %d)", k ? ", " : "", r, d->peers[r].pid);
  }
}

static kiln_status fail(kiln_dist *d, const char *what, const char *why) {
  if (!d->failed) {
    char lost[512], msg[1024];
    lost_peers(d, lost, sizeof lost);
    snprintf(msg, sizeof msg, "distributed: rank %d of %d, epoch %d, step %lld: %s %s; %s%s", d->rank, d->size,
             d->epoch + 1, (long long)d->step, what, why, lost[0] ? lost : "a rank on another host may have failed",
             lost[0] ? " exited" : " (mpirun's report names it)");
    d->failed = true;
    d->failure = strdup(msg);
  }
  return kiln_set_error(KILN_ERR_RUNTIME, "%s", d->failure ? d->failure : "distributed: a collective failed");
}

/* Polls the requests until all complete, the deadline passes, MPI reports an error or
 * mpirun asks the job to end. Spins briefly (a step's allreduce usually completes in
 * microseconds on one host), then sleeps between polls to leave the core to others. */
static kiln_status wait_all(kiln_dist *d, MPI_Request *q, int nq, const char *what) {
  double deadline = now() + d->timeout;
  for (long polls = 0;; polls++) {
    int done = 0, rc = MPI_Testall(nq, q, &done, MPI_STATUSES_IGNORE);
    if (rc != MPI_SUCCESS) {
      char err[MPI_MAX_ERROR_STRING] = "";
      int len = 0;
      MPI_Error_string(rc, err, &len);
      return fail(d, what, err);
    }
    if (done) return KILN_OK;
    if (terminated) return fail(d, what, "was interrupted: mpirun is ending the job (SIGTERM)");
    if (now() > deadline) {
      char why[96];
      snprintf(why, sizeof why, "got no answer from every rank within %.0f s (KILN_DIST_TIMEOUT)", d->timeout);
      return fail(d, what, why);
    }
    if (polls > 20000) nanosleep(&(struct timespec){0, 100000}, NULL);
  }
}

static kiln_status usable(kiln_dist *d, const char *what) {
  if (!d) return kiln_set_error(KILN_ERR_INVALID, "%s: null kiln_dist", what);
  if (d->failed) return kiln_set_error(KILN_ERR_RUNTIME, "%s", d->failure ? d->failure : "distributed: failed before");
  if (terminated) return fail(d, what, "was interrupted: mpirun is ending the job (SIGTERM)");
  return KILN_OK;
}

/* One in-place Iallreduce per bucket of n elements of buf, appended to q[*k]. */
static bool start_buckets(kiln_dist *d, void *buf, size_t n, MPI_Datatype type, size_t elem, MPI_Request *q, size_t *k) {
  for (size_t i = 0; i < n; i += d->bucket_elems) {
    int cnt = (int)(n - i < d->bucket_elems ? n - i : d->bucket_elems);
    if (MPI_Iallreduce(MPI_IN_PLACE, (char *)buf + i * elem, cnt, type, MPI_SUM, MPI_COMM_WORLD, &q[(*k)++]) != MPI_SUCCESS)
      return false;
  }
  return true;
}

kiln_status kiln_dist_sum(kiln_dist *d, float *f32, size_t n32, double *f64, size_t n64, bool counted) {
  kiln_status st = usable(d, "allreduce");
  if (st != KILN_OK) return st;
  double t0 = now();
  size_t nq = (n32 + d->bucket_elems - 1) / d->bucket_elems + (n64 + d->bucket_elems - 1) / d->bucket_elems;
  MPI_Request *q = calloc(nq + 1, sizeof *q);
  if (!q) return kiln_set_error(KILN_ERR_NOMEM, "allreduce: out of memory");
  size_t k = 0;
  bool started = start_buckets(d, f32, n32, MPI_FLOAT, sizeof *f32, q, &k) &&
                 start_buckets(d, f64, n64, MPI_DOUBLE, sizeof *f64, q, &k);
  st = started ? wait_all(d, q, (int)k, "the allreduce") : fail(d, "the gradient allreduce", "could not start");
  free(q);
  if (st == KILN_OK && counted) {
    d->stats.allreduces++;
    d->stats.bytes += (int64_t)(n32 * sizeof(float) + n64 * sizeof(double));
    d->stats.allreduce_seconds += now() - t0;
  }
  return st;
}

kiln_status kiln_dist_bcast(kiln_dist *d, void *buf, size_t bytes, int root) {
  kiln_status st = usable(d, "broadcast");
  if (st != KILN_OK) return st;
  if (root < 0 || root >= d->size) return kiln_set_error(KILN_ERR_INVALID, "broadcast: root %d is not a rank of %d", root, d->size);
  const size_t chunk = (size_t)1 << 30;
  size_t nq = (bytes + chunk - 1) / chunk;
  MPI_Request *q = calloc(nq + 1, sizeof *q);
  if (!q) return kiln_set_error(KILN_ERR_NOMEM, "broadcast: out of memory");
  for (size_t i = 0; i < nq; i++) {
    int cnt = (int)(bytes - i * chunk < chunk ? bytes - i * chunk : chunk);
    if (MPI_Ibcast((char *)buf + i * chunk, cnt, MPI_BYTE, root, MPI_COMM_WORLD, &q[i]) != MPI_SUCCESS) {
      free(q);
      return fail(d, "a broadcast", "could not start");
    }
  }
  st = wait_all(d, q, (int)nq, "a broadcast");
  free(q);
  return st;
}

kiln_status kiln_dist_check_same(kiln_dist *d, const int64_t *facts, const char *const *names, size_t n, size_t nhashes,
                                 const char *what) {
  kiln_status st = usable(d, what);
  if (st != KILN_OK) return st;
  int64_t *all = calloc((size_t)d->size * n + 1, sizeof *all);
  if (!all) return kiln_set_error(KILN_ERR_NOMEM, "%s: out of memory", what);
  MPI_Request q;
  if (MPI_Iallgather(facts, (int)n, MPI_INT64_T, all, (int)n, MPI_INT64_T, MPI_COMM_WORLD, &q) != MPI_SUCCESS)
    st = fail(d, what, "could not start");
  else
    st = wait_all(d, &q, 1, what);
  for (int r = 1; st == KILN_OK && r < d->size; r++)
    for (size_t i = 0; i < n; i++)
      if (all[(size_t)r * n + i] != all[i]) {
        char values[64] = "";
        if (i < n - nhashes) snprintf(values, sizeof values, " (%lld vs %lld)", (long long)all[(size_t)r * n + i], (long long)all[i]);
        st = kiln_set_error(KILN_ERR_INVALID, "%s: rank %d's %s differs from rank 0's%s", what, r, names[i], values);
        break;
      }
  free(all);
  return st;
}

kiln_status kiln_dist_allreduce(kiln_dist *d, kiln_tensor *const *ts, size_t n, double scale) {
  kiln_status st = usable(d, "allreduce");
  if (st != KILN_OK) return st;
  if (n && !ts) return kiln_set_error(KILN_ERR_INVALID, "allreduce: tensors is NULL");
  size_t n32 = 0, n64 = 0;
  for (size_t i = 0; i < n; i++) {
    if (!ts[i]) return kiln_set_error(KILN_ERR_INVALID, "allreduce: tensor %zu is NULL", i);
    if (ts[i]->dtype != KILN_F32 && ts[i]->dtype != KILN_F64)
      return kiln_set_error(KILN_ERR_UNSUPPORTED, "allreduce: tensor %zu is %s; only f32 and f64 are reduced", i,
                            kiln_dtype_name(ts[i]->dtype));
    *(ts[i]->dtype == KILN_F32 ? &n32 : &n64) += (size_t)ts[i]->numel;
  }
  float *b32 = malloc(sizeof *b32 * (n32 + 1));
  double *b64 = malloc(sizeof *b64 * (n64 + 1));
  if (!b32 || !b64) st = kiln_set_error(KILN_ERR_NOMEM, "allreduce: out of memory");
  size_t k32 = 0, k64 = 0;
  for (size_t i = 0; st == KILN_OK && i < n; i++)
    for (int64_t j = 0; j < ts[i]->numel; j++)
      if (ts[i]->dtype == KILN_F32) b32[k32++] = (float)(((const float *)ts[i]->data)[j] * scale);
      else b64[k64++] = ((const double *)ts[i]->data)[j] * scale;
  if (st == KILN_OK) st = kiln_dist_sum(d, b32, n32, b64, n64, true);
  k32 = k64 = 0;
  for (size_t i = 0; st == KILN_OK && i < n; i++)
    if (ts[i]->dtype == KILN_F32) memcpy(ts[i]->data, b32 + k32, ts[i]->nbytes), k32 += (size_t)ts[i]->numel;
    else memcpy(ts[i]->data, b64 + k64, ts[i]->nbytes), k64 += (size_t)ts[i]->numel;
  d->step++;
  free(b32);
  free(b64);
  return st;
}

kiln_status kiln_dist_broadcast_variables(kiln_dist *d, kiln_variables *vs, int root) {
  kiln_status st = usable(d, "broadcast_variables");
  if (st != KILN_OK) return st;
  if (!vs) return kiln_set_error(KILN_ERR_INVALID, "broadcast_variables: null store");
  int64_t facts[2] = {(int64_t)kiln_variables_count(vs), (int64_t)kiln_variables_signature(vs)};
  st = kiln_dist_check_same(d, facts, (const char *const[]){"variable count", "variables (names, dtypes or shapes)"}, 2, 1,
                            "broadcast_variables");
  for (size_t i = 0; st == KILN_OK && i < kiln_variables_count(vs); i++) {
    kiln_tensor *t = kiln_variable_value(kiln_variables_at(vs, i));
    st = kiln_dist_bcast(d, t->data, t->nbytes, root);
  }
  return st;
}
#endif

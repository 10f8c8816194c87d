/* The training loop: fit, evaluate, predict, History and the progress line.
 * Batches are gathered row by row from the caller's tensors through an index
 * permutation, so shuffling never copies the dataset; only one batch is copied
 * per step. Epoch figures are exact sample-weighted means, like Keras' trackers. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "runtime/dist_impl.h"
#include "runtime/fit_impl.h"
#include "runtime/tensor_impl.h"

/* ---- history ---- */

struct kiln_history {
  char **keys;
  double **vals;
  size_t nkeys, epochs, cap;
};

size_t kiln_history_epochs(const kiln_history *h) { return h ? h->epochs : 0; }
size_t kiln_history_num_keys(const kiln_history *h) { return h ? h->nkeys : 0; }
const char *kiln_history_key(const kiln_history *h, size_t i) { return h && i < h->nkeys ? h->keys[i] : NULL; }
const double *kiln_history_get(const kiln_history *h, const char *key) {
  for (size_t i = 0; h && key && i < h->nkeys; i++)
    if (!strcmp(h->keys[i], key)) return h->vals[i];
  return NULL;
}
void kiln_history_free(kiln_history *h) {
  if (!h) return;
  for (size_t i = 0; i < h->nkeys; i++) free(h->keys[i]), free(h->vals[i]);
  free(h->keys);
  free(h->vals);
  free(h);
}

static kiln_status history_new(const char *const *keys, size_t n, size_t epochs, kiln_history **out) {
  kiln_history *h = calloc(1, sizeof *h);
  if (h && (!(h->keys = calloc(n + 1, sizeof *h->keys)) || !(h->vals = calloc(n + 1, sizeof *h->vals)))) {
    kiln_history_free(h);
    h = NULL;
  }
  if (!h) return kiln_set_error(KILN_ERR_NOMEM, "fit: out of memory");
  for (size_t i = 0; i < n; i++) {
    h->keys[i] = strdup(keys[i]);
    h->vals[i] = calloc(epochs + 1, sizeof(double));
    h->nkeys++;
    if (!h->keys[i] || !h->vals[i]) {
      kiln_history_free(h);
      return kiln_set_error(KILN_ERR_NOMEM, "fit: out of memory");
    }
  }
  h->cap = epochs;
  *out = h;
  return KILN_OK;
}

/* ---- data ---- */

static size_t row_bytes(const kiln_tensor *t) { return t->dims[0] ? t->nbytes / (size_t)t->dims[0] : 0; }

/* A tensor holding rows idx[0..n) of t. */
static kiln_tensor *gather_rows(const kiln_tensor *t, const int64_t *idx, int64_t n) {
  int64_t dims[KILN_MAX_RANK];
  memcpy(dims, t->dims, sizeof dims);
  dims[0] = n;
  kiln_tensor *b = kiln_tensor_new(t->dtype, t->rank, dims);
  if (!b) return NULL;
  size_t rb = row_bytes(t);
  for (int64_t i = 0; i < n; i++) memcpy((char *)b->data + (size_t)i * rb, (const char *)t->data + (size_t)idx[i] * rb, rb);
  return b;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}


static kiln_status check_data(kiln_model *m, const kiln_arrays *d, bool targets, const char *what, feed *f) {
  memset(f, 0, sizeof *f);
  if (!d || (d->nx && !d->x) || (d->ny && !d->y)) return kiln_set_error(KILN_ERR_INVALID, "%s: no data", what);
  if (d->nx + d->ny > 71) return kiln_set_error(KILN_ERR_INVALID, "%s: too many tensors", what);
  kiln_status st = kiln_model_ensure_built(m, d->x, d->nx);
  if (st != KILN_OK) return kiln_set_error(st, "%s: %s", what, kiln_errmsg());
  size_t nt = d->nx + (targets ? d->ny : 0);
  for (size_t i = 0; i < nt; i++) {
    const kiln_tensor *t = i < d->nx ? d->x[i] : d->y[i - d->nx];
    const char *kind = i < d->nx ? "x" : "y";
    size_t k = i < d->nx ? i : i - d->nx;
    if (!t) return kiln_set_error(KILN_ERR_INVALID, "%s: %s[%zu] is NULL", what, kind, k);
    if (t->rank < 1) return kiln_set_error(KILN_ERR_INVALID, "%s: %s[%zu] needs a batch dim", what, kind, k);
    if (i && t->dims[0] != f->n)
      return kiln_set_error(KILN_ERR_INVALID, "%s: %s has %lld examples but %s[%zu] has %lld", what, d->nx ? "x[0]" : "y[0]",
                            (long long)f->n, kind, k, (long long)t->dims[0]);
    f->n = t->dims[0];
    f->t[f->nt++] = t;
  }
  if (targets && !m->compiled) return kiln_set_error(KILN_ERR_INVALID, "%s: compile the model first (kiln_model_compile)", what);
  if (targets && d->ny != m->nheads)
    return kiln_set_error(KILN_ERR_INVALID, "%s: model '%s' has %zu output%s with a loss, got %zu target tensors", what,
                          m->name, m->nheads, m->nheads == 1 ? "" : "s", d->ny);
  if (d->sample_weight) {
    const kiln_tensor *w = d->sample_weight;
    if (w->rank != 1 || w->dims[0] != f->n || !kiln_dtype_is_float(w->dtype))
      return kiln_set_error(KILN_ERR_INVALID, "%s: sample_weight must be a float vector of %lld weights", what, (long long)f->n);
  }
  return targets ? kiln_model_ensure_functions(m) : KILN_OK;
}

/* Per-example weights: sample_weight times class_weight[label of head 0], or NULL for ones. */
static kiln_status make_weights(const kiln_arrays *d, const double *cw, size_t ncw, feed *f) {
  if (!d->sample_weight && !ncw) return KILN_OK;
  if (!(f->w = kiln_tensor_new(KILN_F32, 1, (int64_t[]){f->n}))) return kiln_set_error(KILN_ERR_NOMEM, "fit: out of memory");
  float *w = f->w->data;
  const kiln_tensor *sw = d->sample_weight, *y = ncw ? f->t[d->nx] : NULL;
  int64_t classes = y && y->rank > 1 ? y->numel / y->dims[0] : 1;
  for (int64_t i = 0; i < f->n; i++) {
    w[i] = sw ? (float)(sw->dtype == KILN_F32 ? ((const float *)sw->data)[i] : ((const double *)sw->data)[i]) : 1.0f;
    if (!y) continue;
    int64_t label = 0;
    if (classes > 1) { /* one-hot rows: the arg max */
      for (int64_t c = 1; c < classes; c++)
        if (kiln_tensor_get_f64(y, i * classes + c) > kiln_tensor_get_f64(y, i * classes + label)) label = c;
    } else {
      label = (int64_t)kiln_tensor_get_f64(y, i);
    }
    if (label < 0 || (size_t)label >= ncw)
      return kiln_set_error(KILN_ERR_INVALID, "fit: example %lld has class %lld but class_weight has %zu entries",
                            (long long)i, (long long)label, ncw);
    w[i] *= (float)cw[label];
  }
  return KILN_OK;
}

/* ---- accumulators: the loss sum, head loss sums, then each metric's vector ---- */

size_t kiln_fit_acc_size(const kiln_model *m) {
  size_t n = 1 + (m->nheads > 1 ? m->nheads : 0);
  for (size_t i = 0; i < m->nmetrics; i++) n += (size_t)kiln_metric_acc_size(m->metrics[i].kind);
  return n;
}

static void accumulate(double *acc, kiln_tensor **out, size_t nout, double scale) {
  size_t k = 0;
  for (size_t j = 0; j < nout; j++)
    for (int64_t i = 0; i < out[j]->numel; i++) acc[k++] += scale * kiln_tensor_get_f64(out[j], i);
}

/* kiln_model_result_name's values from accumulators over `seen` examples. */
static void results_of(const kiln_model *m, const double *acc, int64_t seen, double *res) {
  size_t r = 0, k = 0, heads = m->nheads > 1 ? m->nheads : 0;
  double n = seen ? (double)seen : 1;
  for (; k < 1 + heads; k++) res[r++] = acc[k] / n;
  for (size_t i = 0; i < m->nmetrics; i++) {
    res[r++] = kiln_metric_finalize(m->metrics[i].kind, acc + k);
    k += (size_t)kiln_metric_acc_size(m->metrics[i].kind);
  }
}

/* The batch a short one runs as: the full batch when the function keeps rows apart
 * and has run (or will run) at that size, so one compile serves both. */
static int64_t padded_rows(rows_verdict v, int64_t cnt, int64_t full, int64_t total) {
  return v == ROWS_APART && cnt < full && total > full ? full : cnt;
}

/* Example weights of rows idx[0..cnt): the feed's or ones, times scale, then zeros up to rows. */
static kiln_tensor *batch_weights(const feed *f, const int64_t *idx, int64_t cnt, int64_t rows, float scale) {
  kiln_tensor *w = kiln_tensor_new(KILN_F32, 1, (int64_t[]){rows});
  if (!w) return NULL;
  float *d = w->data;
  const float *src = f->w ? f->w->data : NULL;
  for (int64_t j = 0; j < rows; j++) d[j] = j < cnt ? (src ? src[idx[j]] : 1.0f) * scale : 0.0f;
  return w;
}

/* fn's inputs for rows idx[0..cnt) padded to `rows` (see kiln_fit_run_batch) into owned[0..nt]. */
static kiln_status batch_inputs(const feed *f, const int64_t *idx, int64_t cnt, int64_t rows, double scale,
                                kiln_tensor **owned) {
  /* padding repeats the first row (finite wherever the data is), weighted zero */
  int64_t *at = rows > cnt ? malloc(sizeof *at * (size_t)rows) : (int64_t *)idx;
  if (!at) return kiln_set_error(KILN_ERR_NOMEM, "out of memory");
  for (int64_t j = 0; at != idx && j < rows; j++) at[j] = idx[j < cnt ? j : 0];
  kiln_status st = KILN_OK;
  for (size_t i = 0; i <= f->nt && st == KILN_OK; i++) {
    if (i < f->nt) owned[i] = gather_rows(f->t[i], at, rows);
    else if (f->w || rows > cnt) owned[i] = batch_weights(f, idx, cnt, rows, (float)scale);
    else if ((owned[i] = kiln_tensor_new(KILN_F32, 1, (int64_t[]){cnt})))
      for (int64_t j = 0; j < cnt; j++) ((float *)owned[i]->data)[j] = 1.0f;
    if (!owned[i]) st = kiln_set_error(KILN_ERR_NOMEM, "out of memory");
  }
  if (at != idx) free(at);
  return st;
}

kiln_status kiln_fit_run_batch(kiln_model *m, kiln_function *fn, const feed *f, const int64_t *idx, int64_t cnt,
                               int64_t rows, bool mean_step, double *acc, kiln_tensor *const *given, size_t ngiven) {
  kiln_tensor *owned[73] = {0}, *out[330] = {0};
  /* a train step minimises the mean over its rows: the real ones count rows/cnt each */
  double scale = mean_step ? (double)rows / (double)cnt : 1;
  kiln_status st = batch_inputs(f, idx, cnt, rows, scale, owned);
  size_t nout = ngiven + m->nresults;
  kiln_tensor **all = nout <= 330 ? out : calloc(nout, sizeof *all);
  if (!all) st = kiln_set_error(KILN_ERR_NOMEM, "out of memory");
  for (size_t j = 0; all && j < ngiven; j++) all[j] = given[j];
  if (st == KILN_OK) st = kiln_function_call_given(fn, (const kiln_tensor *const *)owned, f->nt + 1, all, nout, ngiven);
  /* every result is a sum of weighted rows */
  if (st == KILN_OK) accumulate(acc, all + ngiven, m->nresults, 1 / scale);
  for (size_t i = 0; i <= f->nt; i++) kiln_tensor_free(owned[i]);
  for (size_t j = ngiven; all && j < nout; j++) kiln_tensor_free(all[j]);
  if (all != out) free(all);
  return st;
}

/* Accumulators of the eval function over rows idx[0..n). */
kiln_status kiln_fit_eval_rows(kiln_model *m, const feed *f, const int64_t *idx, int64_t n, int64_t bs, double *acc) {
  memset(acc, 0, sizeof *acc * kiln_fit_acc_size(m));
  for (int64_t start = 0; start < n; start += bs) {
    int64_t cnt = n - start < bs ? n - start : bs;
    kiln_status st = kiln_fit_run_batch(m, m->eval_fn, f, idx + start, cnt, padded_rows(m->rows_eval, cnt, bs, n),
                                        false, acc, NULL, 0);
    if (st != KILN_OK) return st;
  }
  return KILN_OK;
}

/* ---- validation compiled ahead ---- */

/* The first epoch's validation function compiles on another thread while the epoch
 * trains, on the cores the train step leaves free, so that the end of the epoch finds
 * it ready instead of waiting for LLVM. It starts after the first step, whose own
 * compile it would otherwise slow down, and only when the model's threads leave a
 * core idle: on a core they use, it would slow the epoch down as much. The batch is
 * validation's first, whose padded size is known before the function is traced (a
 * full batch, or all of validation). KILN_COMPILE_AHEAD=0 turns it off. */
typedef struct compile_ahead {
  pthread_t tid;
  bool started;
  kiln_exec *e;
  int64_t batch;
} compile_ahead;

static void *compile_ahead_main(void *arg) {
  compile_ahead *a = arg;
  kiln_exec_compile_ahead(a->e, a->batch); /* a failure is met again, and reported, when validation compiles */
  return NULL;
}

static void compile_ahead_start(kiln_model *m, const feed *val, const int64_t *vidx, int64_t nval, int64_t bs,
                                compile_ahead *a) {
  const char *env = getenv("KILN_COMPILE_AHEAD");
  if (!nval || (env && !strcmp(env, "0"))) return;
  kiln_tensor *in[73] = {0};
  int64_t rows = nval < bs ? nval : bs;
  kiln_status st = batch_inputs(val, vidx, rows, rows, 1, in);
  if (st == KILN_OK) st = kiln_function_exec_for(m->eval_fn, (const kiln_tensor *const *)in, val->nt + 1, &a->e, &a->batch);
  for (size_t i = 0; i <= val->nt; i++) kiln_tensor_free(in[i]);
  /* a trace that fails now fails again, with its message, when validation runs */
  if (st == KILN_OK && kiln_exec_spare_threads(a->e) > 0) a->started = !pthread_create(&a->tid, NULL, compile_ahead_main, a);
}

static void compile_ahead_join(compile_ahead *a) {
  if (a->started) pthread_join(a->tid, NULL);
  a->started = false;
}

/* ---- progress ---- */

static void progress(FILE *f, bool tty, int epoch, int epochs, int64_t step, int64_t steps, double secs,
                     const char *figures, bool done) {
  char bar[31];
  int w = steps ? (int)(30 * step / steps) : 30;
  for (int i = 0; i < 30; i++) bar[i] = i < w ? '=' : i == w && !done ? '>' : '.';
  bar[30] = 0;
  /* like Keras: the time per step, in the unit that shows it */
  double per = step ? secs / (double)step : 0;
  char rate[32];
  snprintf(rate, sizeof rate, per >= 1 ? " %.0fs/step" : per >= 1e-3 ? " %.0fms/step" : " %.0fus/step",
           per >= 1 ? per : per >= 1e-3 ? per * 1e3 : per * 1e6);
  if (tty) {
    fprintf(f, "\r%lld/%lld [%s] %.0fs%s%s%s", (long long)step, (long long)steps, bar, secs, done ? rate : "", figures,
            done ? "\n" : "");
  } else {
    fprintf(f, "Epoch %d/%d  %lld/%lld [%s] %.0fs%s%s\n", epoch, epochs, (long long)step, (long long)steps, bar, secs,
            done ? rate : "", figures);
  }
  fflush(f);
}

static void figures(char *buf, size_t cap, const char *const *keys, const double *v, size_t n) {
  size_t k = 0;
  buf[0] = 0;
  for (size_t i = 0; i < n && k < cap; i++) k += (size_t)snprintf(buf + k, cap - k, " - %s: %.4f", keys[i], v[i]);
}

static kiln_status notify(const kiln_fit_options *o, kiln_model *m, kiln_callback_event ev, int epoch, int64_t batch,
                          const char *const *keys, const double *values, size_t n) {
  kiln_callback_info info = {ev, m, epoch, batch, keys, values, n};
  for (size_t i = 0; i < o->ncallbacks; i++) {
    kiln_status st = o->callbacks[i].fn(&info, o->callbacks[i].state);
    if (st != KILN_OK) return st;
  }
  return KILN_OK;
}

kiln_fit_options kiln_fit_defaults(void) {
  return (kiln_fit_options){.epochs = 1, .batch_size = 32, .shuffle = true, .verbose = 1};
}

/* ---- fit ---- */

typedef struct fit_state {
  feed train, val;
  int64_t ntrain, nval, *perm, *vidx;
  char **keys; /* results, then "val_" + results */
  size_t nkeys;
  double *acc, *logs;
  kiln_history *h;
} fit_state;

static void fit_state_free(fit_state *s) {
  kiln_tensor_free(s->train.w);
  kiln_tensor_free(s->val.w);
  free(s->perm);
  free(s->vidx);
  for (size_t i = 0; s->keys && i < s->nkeys; i++) free(s->keys[i]);
  free(s->keys);
  free(s->acc);
  free(s->logs);
}

static kiln_status fit_prepare(kiln_model *m, const kiln_arrays *data, const kiln_fit_options *o, fit_state *s) {
  if (o->batch_size < 1) return kiln_set_error(KILN_ERR_INVALID, "fit: batch_size must be >= 1");
  if (o->epochs < 0 || o->initial_epoch < 0) return kiln_set_error(KILN_ERR_INVALID, "fit: epochs must be >= 0");
  if (!(o->validation_split >= 0 && o->validation_split < 1))
    return kiln_set_error(KILN_ERR_INVALID, "fit: validation_split must be in [0, 1)");
  if (o->ncallbacks && !o->callbacks) return kiln_set_error(KILN_ERR_INVALID, "fit: callbacks is NULL");
  for (size_t i = 0; i < o->ncallbacks; i++)
    if (!o->callbacks[i].fn)
      return kiln_set_error(KILN_ERR_INVALID, "fit: callback %zu has no function (did its constructor fail?)", i);
  if (o->nclass_weight && !o->class_weight) return kiln_set_error(KILN_ERR_INVALID, "fit: class_weight is NULL");
  kiln_status st = check_data(m, data, true, "fit", &s->train);
  if (st == KILN_OK) st = make_weights(data, o->class_weight, o->nclass_weight, &s->train);
  if (st != KILN_OK) return st;
  kiln_arrays vsingle = {(const kiln_tensor *const[]){o->validation_x}, 1, (const kiln_tensor *const[]){o->validation_y}, 1, NULL};
  const kiln_arrays *vd = o->validation ? o->validation : o->validation_x || o->validation_y ? &vsingle : NULL;
  s->ntrain = s->train.n;
  if (vd) {
    if ((st = check_data(m, vd, true, "fit: validation data", &s->val)) != KILN_OK) return st;
    if ((st = make_weights(vd, NULL, 0, &s->val)) != KILN_OK) return st;
    s->nval = s->val.n;
  } else if (o->validation_split > 0) { /* Keras: the last part validates */
    s->ntrain = (int64_t)ceil((double)s->train.n * (1.0 - o->validation_split));
    s->nval = s->train.n - s->ntrain;
    s->val = s->train;
    if (s->train.w && !(s->val.w = kiln_tensor_from_data(KILN_F32, 1, s->train.w->dims, s->train.w->data, s->train.w->nbytes)))
      return kiln_set_error(KILN_ERR_NOMEM, "fit: out of memory");
  }
  if (s->ntrain < 1) return kiln_set_error(KILN_ERR_INVALID, "fit: no training examples");
  if ((st = kiln_optimizer_prepare(m->opt, m->vars)) != KILN_OK) return st;
  size_t nr = m->nresults;
  s->nkeys = nr * (s->nval ? 2 : 1);
  s->perm = malloc(sizeof *s->perm * (size_t)(s->ntrain + 1));
  s->vidx = malloc(sizeof *s->vidx * (size_t)(s->nval + 1));
  s->keys = calloc(s->nkeys, sizeof *s->keys);
  s->acc = calloc(kiln_fit_acc_size(m), sizeof *s->acc);
  s->logs = calloc(s->nkeys, sizeof *s->logs);
  if (!s->perm || !s->vidx || !s->keys || !s->acc || !s->logs) return kiln_set_error(KILN_ERR_NOMEM, "fit: out of memory");
  for (size_t i = 0; i < s->nkeys; i++) {
    size_t len = strlen(m->result_names[i % nr]) + 5;
    if (!(s->keys[i] = malloc(len))) return kiln_set_error(KILN_ERR_NOMEM, "fit: out of memory");
    snprintf(s->keys[i], len, "%s%s", i < nr ? "" : "val_", m->result_names[i % nr]);
  }
  for (int64_t i = 0; i < s->nval; i++) s->vidx[i] = (vd ? 0 : s->ntrain) + i;
  int epochs_run = o->epochs > o->initial_epoch ? o->epochs - o->initial_epoch : 0;
  return history_new((const char *const *)s->keys, s->nkeys, (size_t)epochs_run, &s->h);
}

static void shuffle(const kiln_model *m, int64_t *perm, int64_t n, int epoch, bool on) {
  for (int64_t i = 0; i < n; i++) perm[i] = i;
  if (on) /* Fisher-Yates from the counter RNG: reproducible from (seed, epoch) */
    for (int64_t i = n - 1; i > 0; i--) {
      int64_t j = (int64_t)(kiln_rng_uniform01(m->seed ^ 0x5348554646ull, (uint64_t)epoch * (uint64_t)n + (uint64_t)i) * (double)(i + 1));
      int64_t t = perm[i];
      perm[i] = perm[j], perm[j] = t;
    }
}

/* With o->distributed: every rank checks it trains the same model on the same data,
 * takes weights from rank 0 and then its shard of each global batch; callbacks and
 * the progress bar run on rank 0, whose stop_training every rank follows. */
static kiln_status dist_begin(kiln_model *m, kiln_fit_options *o, const fit_state *s, dist_fit *df) {
  int64_t facts[] = {s->ntrain, s->nval, o->batch_size, o->epochs, o->initial_epoch, o->shuffle, (int64_t)(m->seed >> 1),
                     (int64_t)m->nresults};
  const char *names[] = {"training examples", "validation examples", "batch_size", "epochs", "initial_epoch", "shuffle",
                         "model seed", "number of results"};
  bool has_callbacks = o->ncallbacks > 0;
  if (kiln_dist_rank(o->distributed) != 0) o->ncallbacks = 0, o->verbose = 0;
  kiln_status st = kiln_fit_dist_begin(df, m, o->distributed, facts, names, sizeof facts / sizeof *facts, has_callbacks);
  if (st == KILN_OK && s->ntrain < kiln_dist_size(o->distributed))
    st = kiln_set_error(KILN_ERR_INVALID, "fit: %lld training examples for %d ranks", (long long)s->ntrain,
                        kiln_dist_size(o->distributed));
  return st;
}

/* The epoch's results from its accumulators over `seen` examples (fewer than ntrain if
 * stopped), then validation's. Distributed (df set): accumulators are summed over ranks
 * and each rank validates its share. */
static kiln_status epoch_results(kiln_model *m, dist_fit *df, fit_state *s, int64_t seen, int64_t bs) {
  size_t nr = m->nresults, na = kiln_fit_acc_size(m);
  kiln_status st = df ? kiln_fit_dist_sum_acc(df, s->acc, na) : KILN_OK;
  if (st != KILN_OK) return st;
  results_of(m, s->acc, seen, s->logs);
  if (!s->nval) return KILN_OK;
  int64_t lo = 0, hi = s->nval;
  if (df) kiln_fit_dist_shard(df, s->nval, &lo, &hi);
  if ((st = kiln_fit_eval_rows(m, &s->val, s->vidx + lo, hi - lo, bs, s->acc)) != KILN_OK) return st;
  if (df && (st = kiln_fit_dist_sum_acc(df, s->acc, na)) != KILN_OK) return st;
  results_of(m, s->acc, s->nval, s->logs + nr);
  return KILN_OK;
}

kiln_status kiln_model_fit_arrays(kiln_model *m, const kiln_arrays *data, const kiln_fit_options *opts,
                                  kiln_history **history) {
  if (history) *history = NULL;
  if (!m) return kiln_set_error(KILN_ERR_INVALID, "fit: null model");
  kiln_fit_options o = opts ? *opts : kiln_fit_defaults();
  fit_state s = {0};
  dist_fit df = {0};
  kiln_status st = fit_prepare(m, data, &o, &s);
  kiln_dist *dist = o.distributed;
  if (st == KILN_OK && dist) st = dist_begin(m, &o, &s, &df);
  const char *const *keys = (const char *const *)s.keys;
  size_t nr = m->nresults;
  bool tty = isatty(fileno(stderr)) && o.verbose == 1;
  m->stop_training = false;
  if (st == KILN_OK) st = notify(&o, m, KILN_ON_TRAIN_BEGIN, o.initial_epoch, 0, keys, NULL, 0);
  int64_t global_batch = o.batch_size * (dist ? kiln_dist_size(dist) : 1);
  int64_t steps = (s.ntrain + global_batch - 1) / global_batch;
  char fig[1024];
  compile_ahead ahead = {0};
  for (int epoch = o.initial_epoch; st == KILN_OK && epoch < o.epochs; epoch++) {
    shuffle(m, s.perm, s.ntrain, epoch, o.shuffle);
    if (tty) fprintf(stderr, "Epoch %d/%d\n", epoch + 1, o.epochs);
    if ((st = notify(&o, m, KILN_ON_EPOCH_BEGIN, epoch, 0, keys, NULL, 0)) != KILN_OK) break;
    double t0 = now();
    int64_t seen = 0, seen_all = 0; /* by this rank (its accumulators so far), by all ranks */
    memset(s.acc, 0, sizeof *s.acc * kiln_fit_acc_size(m));
    for (int64_t b = 0; st == KILN_OK && b < steps; b++) {
      int64_t start = b * global_batch, cnt = s.ntrain - start < global_batch ? s.ntrain - start : global_batch;
      if (o.ncallbacks && (st = notify(&o, m, KILN_ON_BATCH_BEGIN, epoch, b, keys, NULL, 0)) != KILN_OK) break;
      if (dist) {
        int64_t lo, hi;
        kiln_dist_where(dist, epoch, b);
        if ((st = kiln_fit_dist_step(&df, m, &s.train, s.perm + start, cnt, s.acc)) != KILN_OK) break;
        kiln_fit_dist_shard(&df, cnt, &lo, &hi);
        seen += hi - lo;
      } else {
        int64_t rows = padded_rows(m->rows_train, cnt, global_batch, s.ntrain);
        if ((st = kiln_fit_run_batch(m, m->train_fn, &s.train, s.perm + start, cnt, rows, true, s.acc, NULL, 0)) != KILN_OK)
          break;
        seen += cnt;
        if (b == 0 && epoch == o.initial_epoch) compile_ahead_start(m, &s.val, s.vidx, s.nval, o.batch_size, &ahead);
      }
      seen_all += cnt;
      if (o.ncallbacks || (tty && (b % 20 == 0 || b + 1 == steps))) results_of(m, s.acc, seen, s.logs);
      if (o.ncallbacks && (st = notify(&o, m, KILN_ON_BATCH_END, epoch, b, keys, s.logs, nr)) != KILN_OK) break;
      if (dist && df.stop_each_step && (st = kiln_fit_dist_agree_stop(&df, m)) != KILN_OK) break;
      if (m->stop_training) break;
      if (tty && (b % 20 == 0 || b + 1 == steps) && b + 1 < steps) {
        figures(fig, sizeof fig, keys, s.logs, nr);
        progress(stderr, true, epoch + 1, o.epochs, b + 1, steps, now() - t0, fig, false);
      }
    }
    if (st != KILN_OK) break;
    if ((st = epoch_results(m, dist ? &df : NULL, &s, seen_all, o.batch_size)) != KILN_OK) break;
    size_t e = (size_t)(epoch - o.initial_epoch);
    for (size_t k = 0; k < s.nkeys; k++) s.h->vals[k][e] = s.logs[k];
    s.h->epochs = e + 1;
    if (o.verbose) {
      figures(fig, sizeof fig, keys, s.logs, s.nkeys);
      progress(stderr, tty, epoch + 1, o.epochs, steps, steps, now() - t0, fig, true);
    }
    if ((st = notify(&o, m, KILN_ON_EPOCH_END, epoch, steps, keys, s.logs, s.nkeys)) != KILN_OK) break;
    if (dist && (st = kiln_fit_dist_agree_stop(&df, m)) != KILN_OK) break;
    if (m->stop_training) break;
  }
  compile_ahead_join(&ahead);
  if (st == KILN_OK) st = notify(&o, m, KILN_ON_TRAIN_END, o.epochs, 0, keys, NULL, 0);
  if (st == KILN_OK && history) *history = s.h;
  else kiln_history_free(s.h);
  if (dist) kiln_fit_dist_end(&df);
  fit_state_free(&s);
  return st;
}

kiln_status kiln_model_fit(kiln_model *m, const kiln_tensor *x, const kiln_tensor *y, const kiln_fit_options *o,
                           kiln_history **history) {
  kiln_arrays d = {(const kiln_tensor *const[]){x}, 1, (const kiln_tensor *const[]){y}, 1, o ? o->sample_weight : NULL};
  return kiln_model_fit_arrays(m, &d, o, history);
}

/* ---- evaluate and predict ---- */

kiln_status kiln_model_evaluate_arrays(kiln_model *m, const kiln_arrays *data, int64_t batch_size, double *results,
                                       size_t nresults) {
  if (!m) return kiln_set_error(KILN_ERR_INVALID, "evaluate: null model");
  if (nresults && !results) return kiln_set_error(KILN_ERR_INVALID, "evaluate: results is NULL");
  if (batch_size < 1) batch_size = 32;
  feed f;
  kiln_status st = check_data(m, data, true, "evaluate", &f);
  if (st == KILN_OK) st = make_weights(data, NULL, 0, &f);
  int64_t *idx = st == KILN_OK ? calloc((size_t)f.n + 1, sizeof *idx) : NULL;
  double *acc = st == KILN_OK ? calloc(kiln_fit_acc_size(m), sizeof *acc) : NULL, *res = st == KILN_OK ? calloc(m->nresults, sizeof *res) : NULL;
  if (st == KILN_OK && (!idx || !acc || !res)) st = kiln_set_error(KILN_ERR_NOMEM, "evaluate: out of memory");
  for (int64_t i = 0; st == KILN_OK && i < f.n; i++) idx[i] = i;
  if (st == KILN_OK) st = kiln_fit_eval_rows(m, &f, idx, f.n, batch_size, acc);
  if (st == KILN_OK) results_of(m, acc, f.n, res);
  for (size_t j = 0; st == KILN_OK && j < nresults && j < m->nresults; j++) results[j] = f.n ? res[j] : NAN;
  kiln_tensor_free(f.w);
  free(idx);
  free(acc);
  free(res);
  return st;
}

kiln_status kiln_model_evaluate(kiln_model *m, const kiln_tensor *x, const kiln_tensor *y, int64_t batch_size,
                                double *results, size_t nresults) {
  kiln_arrays d = {(const kiln_tensor *const[]){x}, 1, (const kiln_tensor *const[]){y}, 1, NULL};
  return kiln_model_evaluate_arrays(m, &d, batch_size, results, nresults);
}

kiln_status kiln_model_predict_arrays(kiln_model *m, const kiln_tensor *const *x, size_t nx, int64_t batch_size,
                                      kiln_tensor **out, size_t nout) {
  if (!out) return kiln_set_error(KILN_ERR_INVALID, "predict: out is NULL");
  for (size_t j = 0; j < nout; j++) out[j] = NULL;
  if (!m) return kiln_set_error(KILN_ERR_INVALID, "predict: null model");
  if (batch_size < 1) batch_size = 32;
  feed f;
  kiln_arrays d = {x, nx, NULL, 0, NULL};
  kiln_status st = check_data(m, &d, false, "predict", &f);
  if (st == KILN_OK) st = kiln_model_ensure_functions(m);
  if (st == KILN_OK && nout != m->noutputs)
    st = kiln_set_error(KILN_ERR_INVALID, "predict: model '%s' has %zu outputs, room for %zu given", m->name, m->noutputs, nout);
  if (st != KILN_OK) return st;
  int64_t *idx = malloc(sizeof *idx * (size_t)(batch_size + 1));
  if (!idx) return kiln_set_error(KILN_ERR_NOMEM, "predict: out of memory");
  for (int64_t start = 0; st == KILN_OK && start < f.n; start += batch_size) {
    int64_t cnt = f.n - start < batch_size ? f.n - start : batch_size;
    int64_t rows = padded_rows(m->rows_predict, cnt, batch_size, f.n); /* padding repeats row `start` */
    for (int64_t i = 0; i < rows; i++) idx[i] = start + (i < cnt ? i : 0);
    kiln_tensor *bx[72] = {0}, *y[64] = {0};
    for (size_t i = 0; i < f.nt && st == KILN_OK; i++)
      if (!(bx[i] = gather_rows(f.t[i], idx, rows))) st = KILN_ERR_NOMEM;
    if (st == KILN_OK) st = kiln_function_call(m->predict_fn, (const kiln_tensor *const *)bx, f.nt, y, nout);
    for (size_t j = 0; st == KILN_OK && j < nout; j++) {
      if (!out[j]) {
        int64_t dims[KILN_MAX_RANK];
        memcpy(dims, y[j]->dims, sizeof dims);
        dims[0] = f.n;
        if (!(out[j] = kiln_tensor_new(y[j]->dtype, y[j]->rank, dims))) st = KILN_ERR_NOMEM;
      }
      if (st == KILN_OK)
        memcpy((char *)out[j]->data + (size_t)start * row_bytes(out[j]), y[j]->data, (size_t)cnt * row_bytes(y[j]));
    }
    for (size_t i = 0; i < f.nt; i++) kiln_tensor_free(bx[i]);
    for (size_t j = 0; j < nout; j++) kiln_tensor_free(y[j]);
  }
  free(idx);
  for (size_t j = 0; st == KILN_OK && j < nout; j++) /* no examples: empty results of the output's type */
    if (!out[j]) {
      const model_kt *k = &m->kts[m->outputs[j].kt];
      int64_t dims[KILN_MAX_RANK];
      memcpy(dims, k->shape.dims, sizeof dims);
      dims[0] = 0;
      if (!(out[j] = kiln_tensor_new(k->dtype, k->shape.rank, dims))) st = KILN_ERR_NOMEM;
    }
  if (st != KILN_OK)
    for (size_t j = 0; j < nout; j++) kiln_tensor_free(out[j]), out[j] = NULL;
  if (st == KILN_ERR_NOMEM) kiln_set_error(st, "predict: out of memory");
  return st;
}

kiln_status kiln_model_predict(kiln_model *m, const kiln_tensor *x, int64_t batch_size, kiln_tensor **out) {
  if (!out) return kiln_set_error(KILN_ERR_INVALID, "predict: out is NULL");
  *out = NULL;
  if (m && m->built && m->noutputs != 1)
    return kiln_set_error(KILN_ERR_INVALID, "predict: model '%s' has %zu outputs; use kiln_model_predict_arrays", m->name, m->noutputs);
  return kiln_model_predict_arrays(m, (const kiln_tensor *const[]){x}, 1, batch_size, out, 1);
}

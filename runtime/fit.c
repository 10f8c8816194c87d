/* The training loop: fit, evaluate, predict, History and the progress line.
 * Batches are gathered row by row from the caller's tensors through an index
 * permutation, so shuffling never copies the dataset; only one batch is copied
 * per step. Epoch figures are exact sample-weighted means, like Keras' trackers. */
#include <math.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "frontend/model_impl.h"
#include "runtime/tensor_impl.h"

/* ---- history ---- */

struct kiln_history {
  char *keys[20];
  double *vals[20];
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
  free(h);
}

static kiln_status history_new(const char *const *keys, size_t n, size_t epochs, kiln_history **out) {
  kiln_history *h = calloc(1, sizeof *h);
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

/* ---- batches ---- */

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

static double scalar_of(const kiln_tensor *t) {
  return t->dtype == KILN_F32 ? *(const float *)t->data : *(const double *)t->data;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static kiln_status check_xy(kiln_model *m, const kiln_tensor *x, const kiln_tensor *y, const char *what) {
  if (!x || !y) return kiln_set_error(KILN_ERR_INVALID, "%s: x or y is NULL", what);
  if (x->rank < 1 || y->rank < 1 || x->dims[0] != y->dims[0])
    return kiln_set_error(KILN_ERR_INVALID, "%s: x has %lld examples but y has %lld", what,
                          (long long)(x->rank ? x->dims[0] : 0), (long long)(y->rank ? y->dims[0] : 0));
  if (!m->compiled) return kiln_set_error(KILN_ERR_INVALID, "%s: compile the model first (kiln_model_compile)", what);
  kiln_status st = kiln_model_ensure_built(m, x);
  return st == KILN_OK ? kiln_model_ensure_functions(m) : st;
}

/* Sums of the loss and metrics over rows idx[0..n) with the eval function. */
static kiln_status eval_rows(kiln_model *m, const kiln_tensor *x, const kiln_tensor *y, const int64_t *idx, int64_t n,
                             int64_t bs, double *sums) {
  size_t no = 1 + m->nmetrics;
  for (size_t j = 0; j < no; j++) sums[j] = 0;
  for (int64_t start = 0; start < n; start += bs) {
    int64_t cnt = n - start < bs ? n - start : bs;
    kiln_tensor *bx = gather_rows(x, idx + start, cnt), *by = gather_rows(y, idx + start, cnt), *out[9] = {0};
    kiln_status st = bx && by ? kiln_function_call(m->eval_fn, (const kiln_tensor *[]){bx, by}, 2, out, no) : KILN_ERR_NOMEM;
    kiln_tensor_free(bx);
    kiln_tensor_free(by);
    if (st != KILN_OK) return st;
    for (size_t j = 0; j < no; j++) sums[j] += scalar_of(out[j]), kiln_tensor_free(out[j]);
  }
  return KILN_OK;
}

/* ---- progress ---- */

static void progress(FILE *f, bool tty, int epoch, int epochs, int64_t step, int64_t steps, double secs,
                     const char *figures, bool done) {
  char bar[31];
  int w = steps ? (int)(30 * step / steps) : 30;
  for (int i = 0; i < 30; i++) bar[i] = i < w ? '=' : i == w && !done ? '>' : '.';
  bar[30] = 0;
  if (tty) {
    fprintf(f, "\r%lld/%lld [%s] %.0fs%s%s", (long long)step, (long long)steps, bar, secs, figures, done ? "\n" : "");
  } else {
    fprintf(f, "Epoch %d/%d  %lld/%lld [%s] %.0fs%s\n", epoch, epochs, (long long)step, (long long)steps, bar, secs, figures);
  }
  fflush(f);
}

static void append_figure(char *buf, size_t cap, const char *prefix, const char *name, double v) {
  size_t k = strlen(buf);
  snprintf(buf + k, cap - k, " - %s%s: %.4f", prefix, name, v);
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

kiln_status kiln_model_fit(kiln_model *m, const kiln_tensor *x, const kiln_tensor *y, const kiln_fit_options *opts,
                           kiln_history **history) {
  if (history) *history = NULL;
  if (!m) return kiln_set_error(KILN_ERR_INVALID, "fit: null model");
  kiln_fit_options o = opts ? *opts : kiln_fit_defaults();
  if (o.batch_size < 1) return kiln_set_error(KILN_ERR_INVALID, "fit: batch_size must be >= 1");
  if (o.epochs < 0 || o.initial_epoch < 0) return kiln_set_error(KILN_ERR_INVALID, "fit: epochs must be >= 0");
  if (!(o.validation_split >= 0 && o.validation_split < 1))
    return kiln_set_error(KILN_ERR_INVALID, "fit: validation_split must be in [0, 1)");
  kiln_status st = check_xy(m, x, y, "fit");
  if (st != KILN_OK) return st;
  const kiln_tensor *vx = o.validation_x, *vy = o.validation_y;
  int64_t n = x->dims[0], ntrain = n, nval = 0;
  if (vx || vy) {
    if ((st = check_xy(m, vx, vy, "fit: validation data")) != KILN_OK) return st;
    nval = vx->dims[0];
  } else if (o.validation_split > 0) {
    ntrain = (int64_t)ceil((double)n * (1.0 - o.validation_split)); /* Keras: the last part validates */
    nval = n - ntrain;
    vx = x, vy = y;
  }
  if (ntrain < 1) return kiln_set_error(KILN_ERR_INVALID, "fit: no training examples");
  if (o.ncallbacks && !o.callbacks) return kiln_set_error(KILN_ERR_INVALID, "fit: callbacks is NULL");
  for (size_t i = 0; i < o.ncallbacks; i++)
    if (!o.callbacks[i].fn)
      return kiln_set_error(KILN_ERR_INVALID, "fit: callback %zu has no function (did its constructor fail?)", i);
  if ((st = kiln_optimizer_prepare(m->opt, m->vars)) != KILN_OK) return st;

  size_t nm = m->nmetrics, nkeys = 0;
  const char *keys[20];
  char valnames[9][80];
  keys[nkeys++] = "loss";
  for (size_t i = 0; i < nm; i++) keys[nkeys++] = m->metric_names[i];
  if (nval) {
    for (size_t i = 0; i <= nm; i++) {
      snprintf(valnames[i], sizeof valnames[i], "val_%s", i ? m->metric_names[i - 1] : "loss");
      keys[nkeys++] = valnames[i];
    }
  }
  kiln_history *h = NULL;
  int epochs_run = o.epochs > o.initial_epoch ? o.epochs - o.initial_epoch : 0;
  if ((st = history_new(keys, nkeys, (size_t)epochs_run, &h)) != KILN_OK) return st;
  int64_t *perm = malloc(sizeof *perm * (size_t)(ntrain + 1)), *vidx = malloc(sizeof *vidx * (size_t)(nval + 1));
  if (!perm || !vidx) st = kiln_set_error(KILN_ERR_NOMEM, "fit: out of memory");
  for (int64_t i = 0; st == KILN_OK && i < nval; i++) vidx[i] = (vx == x ? ntrain : 0) + i;
  bool tty = isatty(fileno(stderr)) && o.verbose == 1;
  m->stop_training = false;
  if (st == KILN_OK) st = notify(&o, m, KILN_ON_TRAIN_BEGIN, o.initial_epoch, 0, keys, NULL, 0);
  int64_t steps = (ntrain + o.batch_size - 1) / o.batch_size;
  for (int epoch = o.initial_epoch; st == KILN_OK && epoch < o.epochs; epoch++) {
    for (int64_t i = 0; i < ntrain; i++) perm[i] = i;
    if (o.shuffle) /* Fisher-Yates from the counter RNG: reproducible from (seed, epoch) */
      for (int64_t i = ntrain - 1; i > 0; i--) {
        int64_t j = (int64_t)(kiln_rng_uniform01(m->seed ^ 0x5348554646ull, (uint64_t)epoch * (uint64_t)ntrain + (uint64_t)i) * (double)(i + 1));
        int64_t t = perm[i];
        perm[i] = perm[j], perm[j] = t;
      }
    if (tty) fprintf(stderr, "Epoch %d/%d\n", epoch + 1, o.epochs);
    if ((st = notify(&o, m, KILN_ON_EPOCH_BEGIN, epoch, 0, keys, NULL, 0)) != KILN_OK) break;
    double t0 = now(), sums[9] = {0};
    int64_t seen = 0;
    char fig[512];
    for (int64_t s = 0; st == KILN_OK && s < steps; s++) {
      int64_t start = s * o.batch_size, cnt = ntrain - start < o.batch_size ? ntrain - start : o.batch_size;
      if (o.ncallbacks && (st = notify(&o, m, KILN_ON_BATCH_BEGIN, epoch, s, keys, NULL, 0)) != KILN_OK) break;
      kiln_tensor *bx = gather_rows(x, perm + start, cnt), *by = gather_rows(y, perm + start, cnt), *out[9] = {0};
      st = bx && by ? kiln_function_call(m->train_fn, (const kiln_tensor *[]){bx, by}, 2, out, 1 + nm) : KILN_ERR_NOMEM;
      kiln_tensor_free(bx);
      kiln_tensor_free(by);
      if (st != KILN_OK) break;
      sums[0] += scalar_of(out[0]) * (double)cnt;
      for (size_t j = 0; j < nm; j++) sums[1 + j] += scalar_of(out[1 + j]);
      for (size_t j = 0; j <= nm; j++) kiln_tensor_free(out[j]);
      seen += cnt;
      if (o.ncallbacks) {
        double running[9];
        for (size_t j = 0; j <= nm; j++) running[j] = sums[j] / (double)seen;
        if ((st = notify(&o, m, KILN_ON_BATCH_END, epoch, s, keys, running, 1 + nm)) != KILN_OK) break;
        if (m->stop_training) break;
      }
      if (tty && (s % 20 == 0 || s + 1 == steps)) {
        fig[0] = 0;
        append_figure(fig, sizeof fig, "", "loss", sums[0] / (double)seen);
        for (size_t j = 0; j < nm; j++) append_figure(fig, sizeof fig, "", m->metric_names[j], sums[1 + j] / (double)seen);
        if (s + 1 < steps) progress(stderr, true, epoch + 1, o.epochs, s + 1, steps, now() - t0, fig, false);
      }
    }
    if (st != KILN_OK) break;
    size_t e = (size_t)(epoch - o.initial_epoch);
    for (size_t j = 0; j <= nm; j++) h->vals[j][e] = sums[j] / (double)(seen ? seen : 1); /* seen < ntrain if stopped */
    if (nval) {
      double vs[9];
      if ((st = eval_rows(m, vx, vy, vidx, nval, o.batch_size, vs)) != KILN_OK) break;
      for (size_t j = 0; j <= nm; j++) h->vals[1 + nm + j][e] = vs[j] / (double)nval;
    }
    h->epochs = e + 1;
    if (o.verbose) {
      fig[0] = 0;
      for (size_t k = 0; k < nkeys; k++) append_figure(fig, sizeof fig, "", keys[k], h->vals[k][e]);
      progress(stderr, tty, epoch + 1, o.epochs, steps, steps, now() - t0, fig, true);
    }
    double logs[20];
    for (size_t k = 0; k < nkeys; k++) logs[k] = h->vals[k][e];
    if ((st = notify(&o, m, KILN_ON_EPOCH_END, epoch, steps, keys, logs, nkeys)) != KILN_OK) break;
    if (m->stop_training) break;
  }
  if (st == KILN_OK) st = notify(&o, m, KILN_ON_TRAIN_END, o.epochs, 0, keys, NULL, 0);
  free(perm);
  free(vidx);
  if (st == KILN_OK && history) *history = h;
  else kiln_history_free(h);
  return st;
}

kiln_status kiln_model_evaluate(kiln_model *m, const kiln_tensor *x, const kiln_tensor *y, int64_t batch_size,
                                double *results, size_t nresults) {
  if (!m) return kiln_set_error(KILN_ERR_INVALID, "evaluate: null model");
  if (batch_size < 1) batch_size = 32;
  kiln_status st = check_xy(m, x, y, "evaluate");
  if (st != KILN_OK) return st;
  int64_t n = x->dims[0];
  int64_t *idx = calloc((size_t)n + 1, sizeof *idx);
  if (!idx) return kiln_set_error(KILN_ERR_NOMEM, "evaluate: out of memory");
  for (int64_t i = 0; i < n; i++) idx[i] = i;
  double sums[9];
  st = eval_rows(m, x, y, idx, n, batch_size, sums);
  free(idx);
  for (size_t j = 0; st == KILN_OK && j < nresults && j <= m->nmetrics; j++) results[j] = n ? sums[j] / (double)n : NAN;
  return st;
}

kiln_status kiln_model_predict(kiln_model *m, const kiln_tensor *x, int64_t batch_size, kiln_tensor **out) {
  if (!out) return kiln_set_error(KILN_ERR_INVALID, "predict: out is NULL");
  *out = NULL;
  if (!m) return kiln_set_error(KILN_ERR_INVALID, "predict: null model");
  if (batch_size < 1) batch_size = 32;
  kiln_status st = kiln_model_ensure_built(m, x);
  if (st == KILN_OK) st = kiln_model_ensure_functions(m);
  if (st != KILN_OK) return st;
  int64_t n = x->dims[0];
  kiln_tensor *res = NULL;
  int64_t *idx = malloc(sizeof *idx * (size_t)(batch_size + 1));
  if (!idx) return kiln_set_error(KILN_ERR_NOMEM, "predict: out of memory");
  for (int64_t start = 0; st == KILN_OK && start < n; start += batch_size) {
    int64_t cnt = n - start < batch_size ? n - start : batch_size;
    for (int64_t i = 0; i < cnt; i++) idx[i] = start + i;
    kiln_tensor *bx = gather_rows(x, idx, cnt), *y = NULL;
    st = bx ? kiln_function_call(m->predict_fn, (const kiln_tensor *[]){bx}, 1, &y, 1) : KILN_ERR_NOMEM;
    kiln_tensor_free(bx);
    if (st != KILN_OK) break;
    if (!res) {
      int64_t dims[KILN_MAX_RANK];
      memcpy(dims, y->dims, sizeof dims);
      dims[0] = n;
      if (!(res = kiln_tensor_new(y->dtype, y->rank, dims))) st = KILN_ERR_NOMEM;
    }
    if (st == KILN_OK) memcpy((char *)res->data + (size_t)start * row_bytes(res), y->data, y->nbytes);
    kiln_tensor_free(y);
  }
  free(idx);
  if (st != KILN_OK) kiln_tensor_free(res);
  else if (!res && !(res = kiln_tensor_new(m->in_dtype, 1, (int64_t[]){0}))) st = KILN_ERR_NOMEM;
  if (st == KILN_OK) *out = res;
  return st;
}

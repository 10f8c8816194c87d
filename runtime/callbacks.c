/* Keras' built-in callbacks, with Keras 3's rules for improvement, patience and
 * cooldown. Each is a state struct plus an event function. */
#include <math.h>
#include <string.h>
#include "frontend/model_impl.h"
#include "runtime/tensor_impl.h"

void kiln_callback_free(kiln_callback *cb) {
  if (cb && cb->destroy) cb->destroy(cb->state);
  if (cb) cb->state = NULL, cb->destroy = NULL;
}

double kiln_callback_log(const kiln_callback_info *info, const char *key) {
  for (size_t i = 0; info && key && i < info->nvalues; i++)
    if (!strcmp(info->keys[i], key)) return info->values[i];
  return NAN;
}

void kiln_model_stop_training(kiln_model *m) {
  if (m) m->stop_training = true;
}

kiln_variable *kiln_model_learning_rate(kiln_model *m) { return m ? kiln_optimizer_learning_rate(m->opt) : NULL; }

/* Keras' mode "auto": accuracies and AUC are maximised. */
typedef struct monitor {
  char name[64];
  bool maximize;
} monitor;

static monitor monitor_of(const char *name) {
  monitor m;
  snprintf(m.name, sizeof m.name, "%s", name ? name : "val_loss");
  m.maximize = strstr(m.name, "acc") || strstr(m.name, "auc");
  return m;
}

static bool improved(const monitor *m, double current, double best, double min_delta) {
  return m->maximize ? current - min_delta > best : current + min_delta < best;
}

/* Absent, not NaN: a diverged run's NaN loss is a value that never improves (Keras). */
static bool logged(const kiln_callback_info *info, const char *key) {
  for (size_t i = 0; info && i < info->nvalues; i++)
    if (!strcmp(info->keys[i], key)) return true;
  return false;
}

static kiln_status missing_monitor(const monitor *m) {
  return kiln_set_error(KILN_ERR_INVALID, "callback: the monitored value '%s' is not in the epoch's logs", m->name);
}

/* ---- EarlyStopping ---- */

typedef struct early {
  monitor mon;
  double min_delta, best;
  int patience, wait;
  bool restore;
  kiln_tensor **best_weights; /* one per variable of the store, in order */
  size_t nbest;
} early;

static void drop_snapshot(early *e) {
  for (size_t i = 0; i < e->nbest; i++) kiln_tensor_free(e->best_weights[i]);
  free(e->best_weights);
  e->best_weights = NULL;
  e->nbest = 0;
}

/* Model weights only (layer variables), like Keras' get_weights. */
static kiln_status snapshot(early *e, kiln_model *m) {
  drop_snapshot(e);
  size_t n = 0;
  for (size_t l = 0; l < m->nlayers; l++) n += m->layers[l]->nweights;
  e->best_weights = calloc(n + 1, sizeof *e->best_weights);
  if (!e->best_weights) return kiln_set_error(KILN_ERR_NOMEM, "EarlyStopping: out of memory");
  for (size_t l = 0; l < m->nlayers; l++)
    for (size_t w = 0; w < m->layers[l]->nweights; w++) {
      const kiln_tensor *t = kiln_variable_value(m->layers[l]->weights[w]);
      if (!(e->best_weights[e->nbest++] = kiln_tensor_from_data(t->dtype, t->rank, t->dims, t->data, t->nbytes)))
        return KILN_ERR_NOMEM;
    }
  return KILN_OK;
}

static void restore_snapshot(early *e, kiln_model *m) {
  size_t k = 0;
  for (size_t l = 0; l < m->nlayers; l++)
    for (size_t w = 0; w < m->layers[l]->nweights && k < e->nbest; w++) kiln_variable_set(m->layers[l]->weights[w], e->best_weights[k++]);
}

static kiln_status early_fn(const kiln_callback_info *info, void *state) {
  early *e = state;
  if (info->event == KILN_ON_TRAIN_BEGIN) {
    e->wait = 0;
    e->best = e->mon.maximize ? -INFINITY : INFINITY;
    drop_snapshot(e);
    return KILN_OK;
  }
  if (info->event != KILN_ON_EPOCH_END) return KILN_OK;
  double current = kiln_callback_log(info, e->mon.name);
  if (!logged(info, e->mon.name)) return missing_monitor(&e->mon);
  e->wait++;
  if (improved(&e->mon, current, e->best, e->min_delta)) {
    e->best = current;
    e->wait = 0;
    return e->restore ? snapshot(e, info->model) : KILN_OK;
  }
  if (e->wait >= e->patience && info->epoch > 0) {
    kiln_model_stop_training(info->model);
    if (e->restore && e->best_weights) restore_snapshot(e, info->model);
  }
  return KILN_OK;
}

static void early_free(void *state) {
  drop_snapshot(state);
  free(state);
}

kiln_callback kiln_early_stopping(const char *monitor_name, double min_delta, int patience, bool restore_best_weights) {
  early *e = calloc(1, sizeof *e);
  if (!e) return (kiln_callback){0};
  e->mon = monitor_of(monitor_name);
  e->min_delta = fabs(min_delta);
  e->patience = patience;
  e->restore = restore_best_weights;
  return (kiln_callback){early_fn, e, early_free};
}

/* ---- ModelCheckpoint ---- */

typedef struct ckpt {
  char path[1024];
  monitor mon;
  bool best_only;
  double best;
} ckpt;

/* Expands {epoch} and {epoch:0Nd}. */
static void format_path(const char *pattern, int epoch, char *out, size_t cap) {
  size_t k = 0;
  for (const char *p = pattern; *p && k + 1 < cap;) {
    int width = 0;
    if (!strncmp(p, "{epoch}", 7) || (sscanf(p, "{epoch:0%dd}", &width) == 1 && strchr(p, '}'))) {
      k += (size_t)snprintf(out + k, cap - k, "%0*d", width, epoch);
      p = strchr(p, '}') + 1;
    } else {
      out[k++] = *p++;
    }
  }
  out[k < cap ? k : cap - 1] = 0;
}

static kiln_status ckpt_fn(const kiln_callback_info *info, void *state) {
  ckpt *c = state;
  if (info->event == KILN_ON_TRAIN_BEGIN) c->best = c->mon.maximize ? -INFINITY : INFINITY;
  if (info->event != KILN_ON_EPOCH_END) return KILN_OK;
  if (c->best_only) {
    double current = kiln_callback_log(info, c->mon.name);
    if (!logged(info, c->mon.name)) return missing_monitor(&c->mon);
    if (!improved(&c->mon, current, c->best, 0)) return KILN_OK;
    c->best = current;
  }
  char path[1100];
  format_path(c->path, info->epoch + 1, path, sizeof path);
  size_t n = strlen(path); /* like Keras' ".keras" vs ".weights.h5": a whole model or a checkpoint */
  if (n > 5 && !strcmp(path + n - 5, ".kiln")) return kiln_model_save(info->model, path);
  return kiln_model_save_checkpoint(info->model, path, info->epoch + 1);
}

kiln_callback kiln_model_checkpoint(const char *path, const char *monitor_name, bool save_best_only) {
  ckpt *c = calloc(1, sizeof *c);
  if (!c || !path) {
    free(c);
    return (kiln_callback){0};
  }
  snprintf(c->path, sizeof c->path, "%s", path);
  c->mon = monitor_of(monitor_name);
  c->best_only = save_best_only;
  return (kiln_callback){ckpt_fn, c, free};
}

/* ---- learning rate ---- */

static double get_lr(kiln_model *m) {
  kiln_variable *v = kiln_model_learning_rate(m);
  return v ? *(double *)kiln_variable_value(v)->data : NAN;
}
static void set_lr(kiln_model *m, double lr) {
  kiln_variable *v = kiln_model_learning_rate(m);
  if (v) *(double *)kiln_variable_value(v)->data = lr;
}

typedef struct plateau {
  monitor mon;
  double factor, min_lr, best;
  int patience, wait;
} plateau;

static kiln_status plateau_fn(const kiln_callback_info *info, void *state) {
  plateau *p = state;
  if (info->event == KILN_ON_TRAIN_BEGIN) p->wait = 0, p->best = p->mon.maximize ? -INFINITY : INFINITY;
  if (info->event != KILN_ON_EPOCH_END) return KILN_OK;
  double current = kiln_callback_log(info, p->mon.name);
  if (!logged(info, p->mon.name)) return missing_monitor(&p->mon);
  if (improved(&p->mon, current, p->best, 1e-4)) {
    p->best = current;
    p->wait = 0;
  } else if (++p->wait >= p->patience) {
    double lr = get_lr(info->model);
    if (lr > p->min_lr) set_lr(info->model, fmax(lr * p->factor, p->min_lr));
    p->wait = 0;
  }
  return KILN_OK;
}

kiln_callback kiln_reduce_lr_on_plateau(const char *monitor_name, double factor, int patience, double min_lr) {
  plateau *p = calloc(1, sizeof *p);
  if (!p) return (kiln_callback){0};
  p->mon = monitor_of(monitor_name);
  p->factor = factor;
  p->patience = patience;
  p->min_lr = min_lr;
  return (kiln_callback){plateau_fn, p, free};
}

typedef struct scheduler {
  double (*schedule)(int, double, void *);
  void *ud;
} scheduler;

static kiln_status scheduler_fn(const kiln_callback_info *info, void *state) {
  scheduler *s = state;
  if (info->event == KILN_ON_EPOCH_BEGIN && kiln_model_learning_rate(info->model))
    set_lr(info->model, s->schedule(info->epoch, get_lr(info->model), s->ud));
  return KILN_OK;
}

kiln_callback kiln_lr_scheduler(double (*schedule)(int epoch, double lr, void *ud), void *ud) {
  scheduler *s = calloc(1, sizeof *s);
  if (!s || !schedule) {
    free(s);
    return (kiln_callback){0};
  }
  s->schedule = schedule;
  s->ud = ud;
  return (kiln_callback){scheduler_fn, s, free};
}

/* ---- CSVLogger, TerminateOnNaN ---- */

typedef struct csv {
  char path[1024];
  FILE *f;
} csv;

static kiln_status csv_fn(const kiln_callback_info *info, void *state) {
  csv *c = state;
  if (info->event == KILN_ON_TRAIN_END && c->f) {
    fclose(c->f);
    c->f = NULL;
  }
  if (info->event != KILN_ON_EPOCH_END) return KILN_OK;
  if (!c->f) {
    if (!(c->f = fopen(c->path, "w"))) return kiln_set_error(KILN_ERR_IO, "CSVLogger: cannot write %s", c->path);
    fprintf(c->f, "epoch");
    for (size_t i = 0; i < info->nvalues; i++) fprintf(c->f, ",%s", info->keys[i]);
    fprintf(c->f, "\n");
  }
  fprintf(c->f, "%d", info->epoch);
  for (size_t i = 0; i < info->nvalues; i++) fprintf(c->f, ",%.17g", info->values[i]);
  fprintf(c->f, "\n");
  fflush(c->f);
  return KILN_OK;
}

static void csv_free(void *state) {
  csv *c = state;
  if (c && c->f) fclose(c->f);
  free(c);
}

kiln_callback kiln_csv_logger(const char *path) {
  csv *c = calloc(1, sizeof *c);
  if (!c || !path) {
    free(c);
    return (kiln_callback){0};
  }
  snprintf(c->path, sizeof c->path, "%s", path);
  return (kiln_callback){csv_fn, c, csv_free};
}

static kiln_status nan_fn(const kiln_callback_info *info, void *state) {
  if (info->event == KILN_ON_BATCH_END && !isfinite(kiln_callback_log(info, "loss"))) {
    fprintf(stderr, "Batch %lld: invalid loss, terminating training\n", (long long)info->batch);
    kiln_model_stop_training(info->model);
  }
  return KILN_OK;
}

kiln_callback kiln_terminate_on_nan(void) { return (kiln_callback){nan_fn, NULL, NULL}; }

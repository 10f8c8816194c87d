/* Optimizers as graph builders: kiln_optimizer_apply appends the update of every
 * trainable variable to the step's graph as variable assignments, so the update
 * is compiled into the same native function as the loss and its gradients.
 * Formulas and defaults are Keras 3's; step t is the iteration counter before
 * the update (Keras' `iterations`), and bias corrections use t + 1. */
#include <math.h>
#include <string.h>
#include <strings.h>
#include "ir/ir.h"

struct kiln_optimizer {
  kiln_optimizer_config cfg;
  char *name;
  kiln_variable *lr, *iterations, *u_product;
};

kiln_optimizer_config kiln_optimizer_defaults(kiln_optimizer_kind kind) {
  kiln_optimizer_config c = {.kind = kind, .learning_rate = 0.001, .beta_1 = 0.9, .beta_2 = 0.999, .epsilon = 1e-7};
  switch (kind) {
  case KILN_OPT_SGD: c.learning_rate = 0.01; break;
  case KILN_OPT_RMSPROP: c.rho = 0.9; break;
  case KILN_OPT_ADAMW: c.weight_decay = 0.004; break;
  case KILN_OPT_ADAGRAD: c.initial_accumulator_value = 0.1; break;
  case KILN_OPT_ADADELTA: c.rho = 0.95; break;
  default: break;
  }
  return c;
}

static const char *const KIND_NAMES[KILN_OPT_COUNT] = {"sgd", "rmsprop", "adam", "adamw", "adagrad", "adadelta", "nadam"};

kiln_status kiln_optimizer_kind_from_name(const char *name, kiln_optimizer_kind *out) {
  for (int k = 0; name && k < KILN_OPT_COUNT; k++)
    if (!strcasecmp(name, KIND_NAMES[k])) {
      *out = (kiln_optimizer_kind)k;
      return KILN_OK;
    }
  return kiln_set_error(KILN_ERR_INVALID, "unknown optimizer '%s' (sgd, rmsprop, adam, adamw, adagrad, adadelta, nadam)",
                        name ? name : "(null)");
}

kiln_status kiln_optimizer_new(const kiln_optimizer_config *cfg, const char *name, kiln_optimizer **out) {
  if (!out) return kiln_set_error(KILN_ERR_INVALID, "optimizer_new: out is NULL");
  *out = NULL;
  if (!cfg) return kiln_set_error(KILN_ERR_INVALID, "optimizer_new: config is NULL");
  if ((unsigned)cfg->kind >= KILN_OPT_COUNT) return kiln_set_error(KILN_ERR_INVALID, "optimizer_new: unknown kind %d", (int)cfg->kind);
  const kiln_optimizer_config *c = cfg;
  if (!(c->learning_rate >= 0)) return kiln_set_error(KILN_ERR_INVALID, "optimizer: learning_rate must be >= 0");
  if (c->momentum < 0 || c->momentum > 1) return kiln_set_error(KILN_ERR_INVALID, "optimizer: momentum must be in [0, 1]");
  if ((c->clipnorm > 0) + (c->global_clipnorm > 0) + (c->clipvalue > 0) > 1)
    return kiln_set_error(KILN_ERR_INVALID, "optimizer: set at most one of clipnorm, global_clipnorm, clipvalue");
  if (c->schedule != KILN_LR_CONSTANT && !(c->decay_steps > 0))
    return kiln_set_error(KILN_ERR_INVALID, "optimizer: a learning-rate schedule needs decay_steps > 0");
  kiln_optimizer *o = calloc(1, sizeof *o);
  if (!o || !(o->name = strdup(name && *name ? name : KIND_NAMES[c->kind]))) {
    free(o);
    return kiln_set_error(KILN_ERR_NOMEM, "optimizer_new: out of memory");
  }
  o->cfg = *c;
  *out = o;
  return KILN_OK;
}

void kiln_optimizer_free(kiln_optimizer *o) {
  if (!o) return;
  free(o->name);
  free(o);
}

const kiln_optimizer_config *kiln_optimizer_config_of(const kiln_optimizer *o) { return o ? &o->cfg : NULL; }
kiln_variable *kiln_optimizer_learning_rate(const kiln_optimizer *o) { return o ? o->lr : NULL; }
kiln_variable *kiln_optimizer_iterations(const kiln_optimizer *o) { return o ? o->iterations : NULL; }

/* A variable of the optimizer (created on first use, found on later traces). */
static kiln_status state_var(kiln_optimizer *o, kiln_variables *vs, const char *var, const char *slot,
                             const kiln_tensor *like, kiln_dtype t, kiln_initializer init, kiln_variable **out) {
  char name[512];
  if (var) snprintf(name, sizeof name, "%s/%s/%s", o->name, var, slot);
  else snprintf(name, sizeof name, "%s/%s", o->name, slot);
  *out = kiln_variables_find(vs, name);
  if (*out) return KILN_OK;
  kiln_shape s = {0};
  if (like) {
    s.rank = kiln_tensor_rank(like);
    memcpy(s.dims, kiln_tensor_dims(like), sizeof(int64_t) * (size_t)s.rank);
    t = kiln_tensor_dtype(like);
  }
  return kiln_variable_new(vs, name, t, s, init, false, out);
}

kiln_status kiln_optimizer_prepare(kiln_optimizer *o, kiln_variables *vs) {
  kiln_status st = state_var(o, vs, NULL, "iterations", NULL, KILN_I64, KILN_ZEROS, &o->iterations);
  if (st == KILN_OK) st = state_var(o, vs, NULL, "learning_rate", NULL, KILN_F64, KILN_CONSTANT(o->cfg.learning_rate), &o->lr);
  if (st == KILN_OK && o->cfg.kind == KILN_OPT_NADAM)
    st = state_var(o, vs, NULL, "u_product", NULL, KILN_F64, KILN_ONES, &o->u_product);
  return st;
}

/* Per-update context: the graph, the variable's dtype and the step's scalars.
 * Scalar factors (schedules, bias corrections) are computed in f64 and rounded
 * once, so f32 training does not lose digits in 1 - beta^t. */
typedef struct upd {
  kiln_graph *g;
  kiln_dtype t;
  kiln_value lr, step; /* in dtype t; step = iterations */
} upd;

static kiln_value S(upd *u, double v) { return kiln_scalar(u->g, u->t, v); }
static kiln_value to_t(upd *u, kiln_value v) { return kiln_cast(u->g, v, u->t); }
static kiln_value add(upd *u, kiln_value a, kiln_value b) { return kiln_add(u->g, a, b); }
static kiln_value sub(upd *u, kiln_value a, kiln_value b) { return kiln_sub(u->g, a, b); }
static kiln_value mul(upd *u, kiln_value a, kiln_value b) { return kiln_mul(u->g, a, b); }
static kiln_value dvd(upd *u, kiln_value a, kiln_value b) { return kiln_div(u->g, a, b); }
static kiln_value sqr(upd *u, kiln_value a) { return kiln_mul(u->g, a, a); }
static kiln_value sqrt_(upd *u, kiln_value a) { return kiln_sqrt(u->g, a); }
/* base ^ (t + k) with t the step */
static kiln_value power(upd *u, double base, double k) { return kiln_pow(u->g, S(u, base), add(u, u->step, S(u, k))); }

static kiln_value schedule(const kiln_optimizer_config *c, upd *u, kiln_value lr) {
  if (c->schedule == KILN_LR_CONSTANT) return lr;
  kiln_value e = dvd(u, u->step, S(u, c->decay_steps));
  if (c->schedule == KILN_LR_STEP || c->staircase) e = kiln_floor(u->g, e);
  return mul(u, lr, kiln_pow(u->g, S(u, c->decay_rate), e));
}

static kiln_value clip_by_norm(upd *u, kiln_value g, kiln_value norm, double clip) {
  return dvd(u, mul(u, g, S(u, clip)), kiln_maximum(u->g, norm, S(u, clip)));
}

/* One variable's update; assigns the slots and returns the variable's new value. */
static kiln_status update(kiln_optimizer *o, upd *u, upd *u64, kiln_variable *v, kiln_value w, kiln_value g,
                          kiln_value *out) {
  const kiln_optimizer_config *c = &o->cfg;
  kiln_variables *vs = kiln_variable_store(v);
  const char *vn = kiln_variable_name(v);
  const kiln_tensor *like = kiln_variable_value(v);
  kiln_variable *s1 = NULL, *s2 = NULL;
  kiln_status st = KILN_OK;
  kiln_graph *G = u->g;
#define SLOT(var, nm, init) \
  if (st == KILN_OK) st = state_var(o, vs, vn, nm, like, 0, init, &var)
  if (c->weight_decay > 0) w = sub(u, w, mul(u, w, mul(u, S(u, c->weight_decay), u->lr)));
  switch (c->kind) {
  case KILN_OPT_SGD:
    if (c->momentum == 0) {
      *out = sub(u, w, mul(u, g, u->lr));
      break;
    }
    SLOT(s1, "momentum", KILN_ZEROS);
    if (st != KILN_OK) return st;
    {
      kiln_value m = sub(u, mul(u, kiln_variable_read(G, s1), S(u, c->momentum)), mul(u, g, u->lr));
      kiln_variable_assign(G, s1, m);
      *out = c->nesterov ? add(u, w, sub(u, mul(u, m, S(u, c->momentum)), mul(u, g, u->lr))) : add(u, w, m);
    }
    break;
  case KILN_OPT_RMSPROP: {
    SLOT(s1, "velocity", KILN_ZEROS);
    if (c->momentum > 0) SLOT(s2, "momentum", KILN_ZEROS);
    if (st != KILN_OK) return st;
    kiln_value vel = add(u, mul(u, S(u, c->rho), kiln_variable_read(G, s1)), mul(u, S(u, 1 - c->rho), sqr(u, g)));
    kiln_variable_assign(G, s1, vel);
    kiln_value inc = dvd(u, mul(u, u->lr, g), sqrt_(u, add(u, vel, S(u, c->epsilon))));
    if (c->momentum > 0) {
      inc = add(u, mul(u, S(u, c->momentum), kiln_variable_read(G, s2)), inc);
      kiln_variable_assign(G, s2, inc);
    }
    *out = sub(u, w, inc);
    break;
  }
  case KILN_OPT_ADAM:
  case KILN_OPT_ADAMW:
  case KILN_OPT_NADAM: {
    SLOT(s1, "momentum", KILN_ZEROS);
    SLOT(s2, "velocity", KILN_ZEROS);
    if (st != KILN_OK) return st;
    kiln_value m0 = kiln_variable_read(G, s1), v0 = kiln_variable_read(G, s2);
    kiln_value m = add(u, m0, mul(u, sub(u, g, m0), S(u, 1 - c->beta_1)));
    kiln_value vel = add(u, v0, mul(u, sub(u, sqr(u, g), v0), S(u, 1 - c->beta_2)));
    kiln_variable_assign(G, s1, m);
    kiln_variable_assign(G, s2, vel);
    upd *d = u64;
    if (c->kind != KILN_OPT_NADAM) {
      kiln_value alpha = dvd(d, mul(d, d->lr, sqrt_(d, sub(d, S(d, 1), power(d, c->beta_2, 1)))),
                             sub(d, S(d, 1), power(d, c->beta_1, 1)));
      *out = sub(u, w, dvd(u, mul(u, m, to_t(u, alpha)), add(u, sqrt_(u, vel), S(u, c->epsilon))));
      break;
    }
    /* Nadam: the momentum schedule mu_t = beta_1 (1 - 0.5 * 0.96^t) and its running product. */
    kiln_value ut = mul(d, S(d, c->beta_1), sub(d, S(d, 1), mul(d, S(d, 0.5), power(d, 0.96, 1))));
    kiln_value ut1 = mul(d, S(d, c->beta_1), sub(d, S(d, 1), mul(d, S(d, 0.5), power(d, 0.96, 2))));
    kiln_value prod_t = mul(d, kiln_variable_read(G, o->u_product), ut), prod_t1 = mul(d, prod_t, ut1);
    kiln_value cm = to_t(u, dvd(d, ut1, sub(d, S(d, 1), prod_t1)));
    kiln_value cg = to_t(u, dvd(d, sub(d, S(d, 1), ut), sub(d, S(d, 1), prod_t)));
    kiln_value mhat = add(u, mul(u, cm, m), mul(u, cg, g));
    kiln_value vhat = dvd(u, vel, to_t(u, sub(d, S(d, 1), power(d, c->beta_2, 1))));
    *out = sub(u, w, dvd(u, mul(u, mhat, u->lr), add(u, sqrt_(u, vhat), S(u, c->epsilon))));
    break;
  }
  case KILN_OPT_ADAGRAD: {
    SLOT(s1, "accumulator", KILN_CONSTANT(c->initial_accumulator_value));
    if (st != KILN_OK) return st;
    kiln_value acc = add(u, kiln_variable_read(G, s1), sqr(u, g));
    kiln_variable_assign(G, s1, acc);
    *out = sub(u, w, dvd(u, mul(u, u->lr, g), sqrt_(u, add(u, acc, S(u, c->epsilon)))));
    break;
  }
  case KILN_OPT_ADADELTA: {
    SLOT(s1, "accumulated_grad", KILN_ZEROS);
    SLOT(s2, "accumulated_delta_var", KILN_ZEROS);
    if (st != KILN_OK) return st;
    kiln_value ag = add(u, mul(u, S(u, c->rho), kiln_variable_read(G, s1)), mul(u, S(u, 1 - c->rho), sqr(u, g)));
    kiln_value ad0 = kiln_variable_read(G, s2);
    kiln_value delta = kiln_neg(G, dvd(u, mul(u, sqrt_(u, add(u, ad0, S(u, c->epsilon))), g),
                                       sqrt_(u, add(u, ag, S(u, c->epsilon)))));
    kiln_variable_assign(G, s1, ag);
    kiln_variable_assign(G, s2, add(u, mul(u, S(u, c->rho), ad0), mul(u, S(u, 1 - c->rho), sqr(u, delta))));
    *out = add(u, w, mul(u, u->lr, delta));
    break;
  }
  default: return kiln_set_error(KILN_ERR_INVALID, "optimizer: unknown kind");
  }
#undef SLOT
  return G->status == KILN_OK ? KILN_OK : kiln_set_error(G->status, "%s", G->errmsg);
}

kiln_status kiln_optimizer_apply(kiln_optimizer *o, kiln_graph *g, kiln_variable *const *vars, const kiln_value *grads,
                                 size_t n) {
  if (!o || !g) return kiln_set_error(KILN_ERR_INVALID, "optimizer_apply: null optimizer or graph");
  if (g->status != KILN_OK) return kiln_set_error(g->status, "%s", g->errmsg);
  if (!n) return kiln_set_error(KILN_ERR_INVALID, "optimizer_apply: no variables");
  if (!vars || !grads) return kiln_set_error(KILN_ERR_INVALID, "optimizer_apply: vars or grads is NULL");
  for (size_t i = 0; i < n; i++) {
    if (!vars[i]) return kiln_set_error(KILN_ERR_INVALID, "optimizer_apply: vars[%zu] is NULL", i);
    const kiln_node *gn = kiln_node_get(g, grads[i]);
    const kiln_tensor *val = kiln_variable_value(vars[i]);
    if (!gn) return kiln_set_error(KILN_ERR_INVALID, "optimizer_apply: the gradient of '%s' is not a value of this graph",
                                   kiln_variable_name(vars[i]));
    bool ok = kiln_dtype_is_float(kiln_tensor_dtype(val)) && gn->dtype == kiln_tensor_dtype(val) &&
              kiln_same_shape(gn->rank, gn->dims, kiln_tensor_rank(val), kiln_tensor_dims(val));
    if (!ok) {
      char a[160], b[160];
      return kiln_set_error(KILN_ERR_INVALID, "optimizer_apply: variable '%s' is %s but its gradient is %s",
                            kiln_variable_name(vars[i]),
                            kiln_type_str(a, sizeof a, kiln_tensor_dtype(val), kiln_tensor_rank(val), kiln_tensor_dims(val)),
                            kiln_type_str(b, sizeof b, (kiln_dtype)gn->dtype, gn->rank, gn->dims));
    }
  }
  const kiln_optimizer_config *c = &o->cfg;
  kiln_status st = kiln_optimizer_prepare(o, kiln_variable_store(vars[0]));
  if (st != KILN_OK) return st;

  kiln_value it = kiln_variable_read(g, o->iterations);
  kiln_value lr64 = kiln_variable_read(g, o->lr);
  /* Global norm over the trainable gradients, computed in f64. */
  kiln_value gnorm = {KILN_NONE};
  if (c->global_clipnorm > 0) {
    kiln_value sum = kiln_scalar(g, KILN_F64, 0);
    for (size_t i = 0; i < n; i++)
      if (kiln_variable_trainable(vars[i]))
        sum = kiln_add(g, sum, kiln_cast(g, kiln_reduce_sum(g, kiln_square(g, grads[i]), NULL, 0, false), KILN_F64));
    gnorm = kiln_sqrt(g, sum);
  }
  if (c->kind == KILN_OPT_NADAM) {
    /* Keras advances u_product before the per-variable updates, with t + 1. */
    upd u64 = {g, KILN_F64, lr64, kiln_cast(g, it, KILN_F64)};
    kiln_value ut = mul(&u64, S(&u64, c->beta_1), sub(&u64, S(&u64, 1), mul(&u64, S(&u64, 0.5), power(&u64, 0.96, 1))));
    kiln_value old = kiln_variable_read(g, o->u_product);
    kiln_variable_assign(g, o->u_product, mul(&u64, old, ut));
  }
  for (size_t i = 0; i < n && st == KILN_OK; i++) {
    if (!kiln_variable_trainable(vars[i])) continue;
    kiln_dtype t = kiln_tensor_dtype(kiln_variable_value(vars[i]));
    upd u64 = {g, KILN_F64, {KILN_NONE}, kiln_cast(g, it, KILN_F64)};
    u64.lr = schedule(c, &u64, lr64);
    upd u = {g, t, kiln_cast(g, u64.lr, t), kiln_cast(g, it, t)};
    kiln_value gr = grads[i];
    if (c->clipnorm > 0) gr = clip_by_norm(&u, gr, kiln_sqrt(g, kiln_reduce_sum(g, sqr(&u, gr), NULL, 0, false)), c->clipnorm);
    else if (c->global_clipnorm > 0) gr = clip_by_norm(&u, gr, kiln_cast(g, gnorm, t), c->global_clipnorm);
    else if (c->clipvalue > 0) gr = kiln_minimum(g, kiln_maximum(g, gr, S(&u, -c->clipvalue)), S(&u, c->clipvalue));
    kiln_value w = kiln_variable_read(g, vars[i]), nw;
    st = update(o, &u, &u64, vars[i], w, gr, &nw);
    if (st == KILN_OK) st = kiln_variable_assign(g, vars[i], nw);
  }
  if (st == KILN_OK) {
    kiln_value one = kiln_scalar(g, KILN_I64, 1);
    st = kiln_variable_assign(g, o->iterations, kiln_add(g, it, one));
  }
  if (st == KILN_OK && g->status != KILN_OK) st = kiln_set_error(g->status, "%s", g->errmsg);
  return st;
}

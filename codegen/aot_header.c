/* The header of an AOT object: the user's whole API, documented in place. */
#include <ctype.h>
#include <stdarg.h>
#include <string.h>
#include "codegen/aot_impl.h"
#include "runtime/checkpoint_impl.h"

const char *kiln_aot_ctype(kiln_dtype t) {
  switch (t) {
  case KILN_F32: return "float";
  case KILN_F64: return "double";
  case KILN_I32: return "int32_t";
  case KILN_I64: return "int64_t";
  default: return "uint8_t"; /* bool: one byte, 0 or 1 */
  }
}

typedef struct out {
  char *buf;
  size_t len, cap;
  bool oom;
} out;

__attribute__((format(printf, 2, 3))) static void put(out *o, const char *fmt, ...) {
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    size_t room = o->cap - o->len;
    int n = o->buf ? vsnprintf(o->buf + o->len, room, fmt, ap) : -1;
    va_end(ap);
    if (n >= 0 && (size_t)n < room) {
      o->len += (size_t)n;
      return;
    }
    size_t cap = o->cap * 2 + (n > 0 ? (size_t)n : 0) + 4096;
    char *b = realloc(o->buf, cap);
    if (!b) {
      o->oom = true;
      return;
    }
    o->buf = b, o->cap = cap;
  }
}

static void upper(char *dst, size_t cap, const char *s) {
  size_t i = 0;
  for (; s[i] && i + 1 < cap; i++) dst[i] = (char)toupper((unsigned char)s[i]);
  dst[i] = 0;
}

static void type_text(char *buf, size_t cap, kiln_dtype t, int rank, const int64_t *dims) {
  size_t k = (size_t)snprintf(buf, cap, "%s", kiln_aot_ctype(t));
  for (int d = 0; d < rank && k < cap; d++) k += (size_t)snprintf(buf + k, cap - k, "[%lld]", (long long)dims[d]);
}

static void port_macros(out *o, const char *NAME, const char *dir, const aot_port *p) {
  char F[80], ty[256];
  upper(F, sizeof F, p->field);
  type_text(ty, sizeof ty, p->dtype, p->rank, p->dims);
  int64_t numel = 1;
  put(o, "/* \"%s\": %s */\n", p->name, ty);
  put(o, "#define %s_%s_%s_NAME \"%s\"\n", NAME, dir, F, p->name);
  put(o, "#define %s_%s_%s_RANK %d\n", NAME, dir, F, p->rank);
  put(o, "#define %s_%s_%s_SHAPE {", NAME, dir, F);
  for (int d = 0; d < p->rank; d++) put(o, "%s%lld", d ? ", " : "", (long long)p->dims[d]), numel *= p->dims[d];
  put(o, "}\n#define %s_%s_%s_SIZE %lld /* elements */\n", NAME, dir, F, (long long)numel);
}

static void port_struct(out *o, const char *name, const char *what, const aot_port *ports, uint32_t n, bool is_const) {
  put(o, "typedef struct %s_%s {\n", name, what);
  for (uint32_t i = 0; i < n; i++)
    put(o, "  %s%s *%s;\n", is_const ? "const " : "", kiln_aot_ctype(ports[i].dtype), ports[i].field);
  put(o, "} %s_%s;\n", name, what);
}

static const aot_entry *find_entry(const aot_unit *u, const char *fn) {
  for (size_t i = 0; i < u->nentries; i++)
    if (!strcmp(u->entries[i].fn, fn)) return &u->entries[i];
  return NULL;
}

static void blob_table(out *o, const aot_unit *u, int blob, const char *NAME, const char *tag) {
  for (size_t i = 0; i < u->nslots; i++) {
    const aot_slot *s = &u->slots[i];
    if (s->blob != blob) continue;
    char F[80], ty[256];
    upper(F, sizeof F, s->field);
    type_text(ty, sizeof ty, s->dtype, s->rank, s->dims);
    put(o, "#define %s_%s_%s_OFFSET %llu /* \"%s\": %s */\n", NAME, tag, F, (unsigned long long)s->offset, s->name, ty);
  }
}

/* A reader for the weights file, so the program needs nothing but libc: kiln's framed
 * format ("KILNWTS1", u32 version 1, u64 length, payload, u32 masked CRC-32C) around
 * the layout fingerprint and the parameter bytes. */
static void weights_loader(out *o, const aot_unit *u, const char *name, const char *NAME) {
  put(o, "#define %s_WEIGHTS_FINGERPRINT 0x%016llxull\n\n", NAME, (unsigned long long)u->fingerprint);
  put(o, "static inline uint32_t %s_crc32c_(uint32_t c, const unsigned char *p, size_t n) {\n"
         "  for (size_t i = 0; i < n; i++) {\n"
         "    c ^= p[i];\n"
         "    for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;\n"
         "  }\n"
         "  return c;\n"
         "}\n\n", name);
  put(o, "/* Reads the parameters `kiln compile --weights external` wrote into params (%s_PARAMS_SIZE\n"
         " * bytes). Returns 0, or -1 when the file is missing, truncated, corrupt or made for\n"
         " * another model; params may then be partly written. */\n", NAME);
  put(o, "static inline int %s_load_params(const char *path, void *params) {\n"
         "  FILE *f = fopen(path, \"rb\");\n"
         "  if (!f) return -1;\n"
         "  unsigned char head[20], fp[8], tail[4];\n"
         "  unsigned long long len = 0, want = (unsigned long long)%s_PARAMS_SIZE + 8, print = 0;\n"
         "  int ok = fread(head, 1, 20, f) == 20 && memcmp(head, \"KILNWTS1\\1\\0\\0\\0\", 12) == 0;\n"
         "  for (int b = 0; ok && b < 8; b++) len |= (unsigned long long)head[12 + b] << (8 * b);\n"
         "  ok = ok && len == want && fread(fp, 1, 8, f) == 8 && fread(params, 1, %s_PARAMS_SIZE, f) == %s_PARAMS_SIZE &&\n"
         "       fread(tail, 1, 4, f) == 4 && fgetc(f) == EOF;\n"
         "  fclose(f);\n"
         "  if (!ok) return -1;\n"
         "  for (int b = 0; b < 8; b++) print |= (unsigned long long)fp[b] << (8 * b);\n"
         "  uint32_t c = %s_crc32c_(0xFFFFFFFFu, fp, 8);\n"
         "  c = %s_crc32c_(c, (const unsigned char *)params, %s_PARAMS_SIZE) ^ 0xFFFFFFFFu;\n"
         "  c = ((c >> 15) | (c << 17)) + 0xa282ead8u;\n"
         "  uint32_t stored = (uint32_t)tail[0] | (uint32_t)tail[1] << 8 | (uint32_t)tail[2] << 16 | (uint32_t)tail[3] << 24;\n"
         "  return c == stored && print == %s_WEIGHTS_FINGERPRINT ? 0 : -1;\n"
         "}\n\n",
      name, NAME, NAME, NAME, name, name, NAME, NAME);
}

/* Threaded objects: the runner type the _with functions take, and a pthread pool
 * behind NAME_WITH_POOL for programs that have no pool of their own. The pool's
 * workers sleep between runs; tasks are claimed one at a time under its lock
 * (a kernel has a few per worker), and a run returns when every worker has
 * finished with it, so the next run cannot start under a worker still busy. */
static void parallel_api(out *o, const aot_unit *u, const char *name, const char *NAME) {
  put(o, "/* ---- threads ---- */\n"
         "#define %s_THREADS %d /* workers the kernels are cut for */\n\n", NAME, u->o->threads);
  put(o, "/* Runs the kernels' tasks: run(pool, task, ctx, n) calls task(ctx, i, worker) once for every\n"
         " * i < n, in any order and on any threads, and returns when all have returned. worker is in\n"
         " * [0, %s_THREADS), and tasks running at the same time have different workers (each has\n"
         " * its own scratch in the workspace). A NULL runner runs the tasks on the caller. */\n", NAME);
  put(o, "typedef struct %s_parallel {\n"
         "  void (*run)(void *pool, void (*task)(void *ctx, int64_t i, int32_t worker), void *ctx, int64_t n);\n"
         "  void *pool;\n"
         "} %s_parallel;\n\n", name, name);
  put(o, "#ifdef %s_WITH_POOL\n"
         "/* A pool of %s_THREADS - 1 threads plus the caller (link with -pthread):\n"
         " *   %s_pool pool;  if (%s_pool_start(&pool)) ...;\n"
         " *   %s_parallel par = %s_pool_parallel(&pool);  ... %s_run_with(..., &par) ...;\n"
         " *   %s_pool_stop(&pool);\n"
         " * One run at a time: give each calling thread its own pool and workspace. */\n"
         "#include <pthread.h>\n\n", NAME, NAME, name, name, name, name, name, name);
  put(o, "typedef struct %s_pool {\n"
         "  pthread_t thread[%s_THREADS];\n"
         "  int started, stop, active;\n"
         "  unsigned long generation;\n"
         "  pthread_mutex_t lock;\n"
         "  pthread_cond_t wake, done;\n"
         "  void (*task)(void *, int64_t, int32_t);\n"
         "  void *ctx;\n"
         "  int64_t next, n;\n"
         "} %s_pool;\n\n", name, NAME, name);
  put(o, "static inline void %s_pool_work_(%s_pool *p, int32_t worker) {\n"
         "  for (;;) {\n"
         "    pthread_mutex_lock(&p->lock);\n"
         "    int64_t i = p->next < p->n ? p->next++ : -1;\n"
         "    pthread_mutex_unlock(&p->lock);\n"
         "    if (i < 0) return;\n"
         "    p->task(p->ctx, i, worker);\n"
         "  }\n"
         "}\n\n", name, name);
  put(o, "typedef struct %s_pool_arg_ {\n  %s_pool *pool;\n  int32_t worker;\n} %s_pool_arg_;\n\n", name, name, name);
  put(o, "static inline void *%s_pool_main_(void *arg) {\n"
         "  %s_pool_arg_ a = *(%s_pool_arg_ *)arg;\n"
         "  %s_pool *p = a.pool;\n"
         "  unsigned long seen = 0;\n"
         "  free(arg);\n"
         "  for (;;) {\n"
         "    pthread_mutex_lock(&p->lock);\n"
         "    while (!p->stop && p->generation == seen) pthread_cond_wait(&p->wake, &p->lock);\n"
         "    if (p->stop) {\n"
         "      pthread_mutex_unlock(&p->lock);\n"
         "      return NULL;\n"
         "    }\n"
         "    seen = p->generation;\n"
         "    pthread_mutex_unlock(&p->lock);\n"
         "    %s_pool_work_(p, a.worker);\n"
         "    pthread_mutex_lock(&p->lock);\n"
         "    if (--p->active == 0) pthread_cond_signal(&p->done);\n"
         "    pthread_mutex_unlock(&p->lock);\n"
         "  }\n"
         "}\n\n", name, name, name, name, name);
  put(o, "static inline void %s_pool_run_(void *pool, void (*task)(void *, int64_t, int32_t), void *ctx, int64_t n) {\n"
         "  %s_pool *p = (%s_pool *)pool;\n"
         "  pthread_mutex_lock(&p->lock);\n"
         "  p->task = task, p->ctx = ctx, p->next = 0, p->n = n;\n"
         "  p->active = p->started;\n"
         "  p->generation++;\n"
         "  pthread_cond_broadcast(&p->wake);\n"
         "  pthread_mutex_unlock(&p->lock);\n"
         "  %s_pool_work_(p, 0);\n"
         "  pthread_mutex_lock(&p->lock);\n"
         "  while (p->active > 0) pthread_cond_wait(&p->done, &p->lock);\n"
         "  pthread_mutex_unlock(&p->lock);\n"
         "}\n\n", name, name, name, name);
  put(o, "static inline void %s_pool_stop(%s_pool *p) {\n"
         "  pthread_mutex_lock(&p->lock);\n"
         "  p->stop = 1;\n"
         "  pthread_cond_broadcast(&p->wake);\n"
         "  pthread_mutex_unlock(&p->lock);\n"
         "  for (int i = 0; i < p->started; i++) pthread_join(p->thread[i], NULL);\n"
         "  pthread_mutex_destroy(&p->lock);\n"
         "  pthread_cond_destroy(&p->wake);\n"
         "  pthread_cond_destroy(&p->done);\n"
         "}\n\n", name, name);
  put(o, "/* Starts the workers; 0 on success, -1 (nothing left running) when a thread could not start. */\n"
         "static inline int %s_pool_start(%s_pool *p) {\n"
         "  memset(p, 0, sizeof *p);\n"
         "  pthread_mutex_init(&p->lock, NULL);\n"
         "  pthread_cond_init(&p->wake, NULL);\n"
         "  pthread_cond_init(&p->done, NULL);\n"
         "  for (int32_t w = 1; w < %s_THREADS; w++) {\n"
         "    %s_pool_arg_ *a = (%s_pool_arg_ *)malloc(sizeof *a);\n"
         "    if (a) a->pool = p, a->worker = w;\n"
         "    if (!a || pthread_create(&p->thread[p->started], NULL, %s_pool_main_, a)) {\n"
         "      free(a);\n"
         "      %s_pool_stop(p);\n"
         "      return -1;\n"
         "    }\n"
         "    p->started++;\n"
         "  }\n"
         "  return 0;\n"
         "}\n\n", name, name, NAME, name, name, name, name);
  put(o, "static inline %s_parallel %s_pool_parallel(%s_pool *p) {\n"
         "  %s_parallel par = {%s_pool_run_, p};\n"
         "  return par;\n"
         "}\n"
         "#endif /* %s_WITH_POOL */\n\n", name, name, name, name, name, NAME);
}

static void signature(out *o, const aot_unit *u, const aot_entry *e, bool with) {
  const char *name = u->o->name;
  bool params_const = !e->writes[AOT_PARAMS];
  put(o, "int %s_%s%s(", name, e->fn, with ? "_with" : "");
  const char *sep = "";
  if (u->params_arg) put(o, "%svoid *params", params_const ? "const " : ""), sep = ", ";
  if (aot_takes_opt(e)) put(o, "%svoid *opt_state", sep), sep = ", ";
  if (with) {
    put(o, "%sconst %s_inputs *in", sep, name);
    if (aot_has_targets(e)) put(o, ", const %s_targets *targets", name);
    if (e->out_direct_arg) put(o, ", %s *%s", kiln_aot_ctype(e->out[0].dtype), e->out[0].field);
    else put(o, ", const %s_outputs *out", name);
    if (kiln_aot_threaded(u)) put(o, ", void *workspace, const %s_parallel *par);\n", name);
    else put(o, ", void *workspace);\n");
    return;
  }
  for (uint32_t i = 0; i < e->nin; i++) put(o, "%sconst %s *%s", sep, kiln_aot_ctype(e->in[i].dtype), e->in[i].field), sep = ", ";
  put(o, "%s%s *%s);\n", sep, kiln_aot_ctype(e->out[0].dtype), e->out[0].field);
}

kiln_status kiln_aot_write_header(const aot_unit *u, const char *path) {
  const char *name = u->o->name, *NAME = u->upper;
  const aot_entry *run = find_entry(u, "run"), *train = find_entry(u, "train_step");
  KILN_ASSERT(run);
  out o = {0};
  put(&o, "/* %s.h: the API of %s.o, generated by kiln %s. Do not edit.\n *\n", name, name, KILN_VERSION);
  put(&o, " * Target %s, CPU %s, batch %lld. Link with: cc main.c %s.o -lm\n", u->triple,
      u->o->cpu ? u->o->cpu : "generic", (long long)(u->o->batch > 0 ? u->o->batch : 1), name);
  if (kiln_aot_threaded(u))
    put(&o, " * Kernels are cut into tasks for %d workers: the _with functions take a %s_parallel\n"
            " * that runs them (\"threads\" below; -pthread for the pool there).\n", u->o->threads, name);
  put(&o, " *\n"
          " * Tensors are dense, row-major arrays of the shapes below. Every function returns 0 on\n"
          " * success, -1 when it could not allocate a workspace (only when `workspace` is NULL),\n"
          " * and a positive number when an index input (gather, embedding) is out of range.\n"
          " * There is no global state: with a NULL workspace (allocated and freed inside the call)\n"
          " * or one workspace per thread, any number of threads may call at once.\n");
  if (u->params_arg)
    put(&o, " *\n * The parameters live in memory the caller owns (%s_PARAMS_SIZE bytes, 64-byte alignment\n"
            " * recommended), filled by %s_%s.\n",
        NAME, name, u->o->weights == KILN_AOT_EXTERNAL ? "load_params from the weights file" : "params_init");
  put(&o, " */\n#ifndef %s_H_\n#define %s_H_\n\n#include <stddef.h>\n#include <stdint.h>\n", NAME, NAME);
  if (u->o->weights == KILN_AOT_EXTERNAL) put(&o, "#include <stdio.h>\n#include <string.h>\n");
  if (kiln_aot_threaded(u)) put(&o, "#include <stdlib.h>\n#include <string.h>\n");
  put(&o, "\n#ifdef __cplusplus\nextern \"C\" {\n#endif\n\n");
  put(&o, "#define %s_VERSION \"kiln %s\"\n#define %s_BATCH %lld\n", NAME, KILN_VERSION, NAME,
      (long long)(u->o->batch > 0 ? u->o->batch : 1));
  put(&o, "#define %s_WORKSPACE_SIZE %llu /* bytes: the most any function here needs */\n\n", NAME,
      (unsigned long long)u->workspace);
  put(&o, "#define %s_NUM_INPUTS %u\n", NAME, run->nin);
  for (uint32_t i = 0; i < run->nin; i++) port_macros(&o, NAME, "IN", &run->in[i]);
  put(&o, "\n#define %s_NUM_OUTPUTS %u\n", NAME, run->nout);
  for (uint32_t i = 0; i < run->nout; i++) port_macros(&o, NAME, "OUT", &run->out[i]);
  put(&o, "\n");
  port_struct(&o, name, "inputs", run->in, run->nin, true);
  port_struct(&o, name, "outputs", run->out, run->nout, false);
  put(&o, "\nconst char *%s_version(void);\n/* Bytes a workspace needs (%s_WORKSPACE_SIZE). */\nsize_t %s_workspace_size(void);\n\n",
      name, NAME, name);
  if (u->params_arg) {
    put(&o, "#define %s_PARAMS_SIZE %llu /* bytes */\n", NAME, (unsigned long long)u->blob_size[AOT_PARAMS]);
    put(&o, "/* Where each parameter sits in the params block (byte offsets). */\n");
    blob_table(&o, u, AOT_PARAMS, NAME, "PARAM");
    put(&o, "\n");
    if (u->o->weights == KILN_AOT_EXTERNAL) weights_loader(&o, u, name, NAME);
    else put(&o, "/* Writes the parameters the model was compiled with into params. */\nvoid %s_params_init(void *params);\n\n", name);
  }
  if (kiln_aot_threaded(u)) parallel_api(&o, u, name, NAME);
  put(&o, "/* Runs the model: in and out point at one array per input and output. */\n");
  signature(&o, u, run, true);
  if (aot_has_simple_form(run)) {
    put(&o, "/* The same for this one-input, one-output model, allocating its workspace. */\n");
    signature(&o, u, run, false);
  }
  if (train) {
    put(&o, "\n/* ---- training ---- */\n");
    put(&o, "#define %s_OPTIMIZER_STATE_SIZE %llu /* bytes */\n", NAME, (unsigned long long)u->blob_size[AOT_OPT]);
    blob_table(&o, u, AOT_OPT, NAME, "OPT");
    put(&o, "/* Sets the optimizer's state to its start (zero moments, step 0, the compiled learning rate). */\n"
            "void %s_optimizer_init(void *opt_state);\n\n", name);
    for (uint32_t i = train->nmain; i < train->nin; i++) port_macros(&o, NAME, "TARGET", &train->in[i]);
    port_struct(&o, name, "targets", train->in + train->nmain, train->nin - train->nmain, true);
    put(&o, "\n/* One optimizer step on a batch: forward, backward and the update of params and\n"
            " * opt_state in place; *%s receives the batch's mean loss before the update. */\n", train->out[0].field);
    signature(&o, u, train, true);
    if (aot_has_simple_form(train)) signature(&o, u, train, false);
  }
  put(&o, "\n#ifdef __cplusplus\n}\n#endif\n#endif\n");
  if (o.oom) {
    free(o.buf);
    return kiln_set_error(KILN_ERR_NOMEM, "aot: out of memory writing the header");
  }
  const unsigned char *part = (const unsigned char *)o.buf;
  kiln_status st = kiln_write_atomic(path, &part, &o.len, 1);
  free(o.buf);
  return st;
}

/* AOT internals shared by the object writer (aot.c), the header writer
 * (aot_header.c) and the model front end (frontend/aot_model.c). */
#ifndef KILN_AOT_IMPL_H
#define KILN_AOT_IMPL_H

#include "codegen/cg.h"
#include "kiln/aot.h"

enum { AOT_PARAMS = 0, AOT_OPT = 1 };

/* A variable's place in one of the two state blobs. */
typedef struct aot_slot {
  const char *name;
  kiln_dtype dtype;
  int rank;
  int64_t dims[KILN_MAX_RANK];
  int blob; /* AOT_PARAMS or AOT_OPT */
  uint64_t offset, nbytes;
  const void *init; /* the variable's current value */
  char field[72];   /* C identifier for the header's offset macros */
} aot_slot;

/* A user-visible input or output. */
typedef struct aot_port {
  const char *name;
  char field[72]; /* C identifier for struct fields and macros */
  kiln_dtype dtype;
  int rank;
  int64_t dims[KILN_MAX_RANK];
} aot_port;

/* What a front end asks for: one exported function from one graph. */
typedef struct aot_request {
  const kiln_graph *g; /* may have a symbolic batch dim and assignments */
  const char *fn;      /* "run" or "train_step" */
  uint32_t nmain;      /* placeholders in the inputs struct; the rest go in the targets struct */
  const char *const *names; /* display names of the placeholders, or NULL for theirs */
  bool out_direct_arg;      /* one output, passed as a bare pointer (train_step's loss) */
} aot_request;

typedef struct aot_entry {
  const char *fn;
  kiln_graph *g; /* specialised, assignments appended as outputs */
  cg_plan plan;
  uint32_t nin, nmain, nout; /* user placeholders, of which nmain are main inputs; user outputs */
  aot_port *in, *out;
  bool out_direct_arg;       /* the one output is passed as a pointer, not in a struct */
  int32_t *param_slot;       /* per graph param: slot index, or -1 - user input index */
  int32_t *assign_slot;      /* per assignment */
  uint64_t *assign_off;      /* per assignment: offset of its staging buffer in the workspace */
  uint64_t workspace;
  bool writes[2], reads[2];  /* blobs assigned / read */
} aot_entry;

/* The entry takes the optimizer state: it reads or assigns a slot of it. */
static inline bool aot_takes_opt(const aot_entry *e) { return e->reads[AOT_OPT] || e->writes[AOT_OPT]; }
/* Some placeholders are targets (train_step), passed in their own struct. */
static inline bool aot_has_targets(const aot_entry *e) { return e->nmain < e->nin; }
/* NAME_run / NAME_train_step with one pointer per port exist for one input, at most
 * one target and one output; the struct forms always do. */
static inline bool aot_has_simple_form(const aot_entry *e) {
  return e->nmain == 1 && e->nin - e->nmain <= 1 && e->nout == 1;
}

typedef struct aot_unit {
  const kiln_aot_options *o;
  char upper[72]; /* NAME in capitals, for macros */
  aot_slot *slots;
  size_t nslots;
  uint64_t blob_size[2];
  uint64_t fingerprint; /* of the parameter layout: a weights file must match it */
  bool params_arg;      /* the run function takes the parameters as an argument */
  uint64_t workspace;   /* the largest entry's */
  aot_entry *entries;
  size_t nentries;
  char triple[128];
} aot_unit;

/* Objects compiled for more than one worker take a NAME_parallel. */
enum { KILN_AOT_MAX_THREADS = 256 };
static inline bool kiln_aot_threaded(const aot_unit *u) { return u->o->threads > 1; }

KILN_INTERNAL kiln_status kiln_aot_compile_requests(const aot_request *req, size_t n, kiln_variables *vs,
                                                    const kiln_aot_options *o);
KILN_INTERNAL kiln_status kiln_aot_write_header(const aot_unit *u, const char *path);
KILN_INTERNAL const char *kiln_aot_ctype(kiln_dtype t);
KILN_INTERNAL void kiln_aot_make_field(char *out, size_t cap, const char *name, const char *taken, size_t stride,
                                       uint32_t n);
/* The AOT weights file: kiln's framed format around the layout fingerprint and the bytes. */
#define KILN_AOT_WEIGHTS_MAGIC "KILNWTS1"

#endif

/* kiln's internal IR. One header for everything inside the library, grouped by
 * the file that defines it (QBE style).
 *
 * A graph is an array of nodes addressed by uint32_t index, in topological
 * order (inputs always have smaller indices). Nodes are immutable once made and
 * deduplicated on creation by (op, inputs, attributes, data), so CSE is a hash
 * lookup. Everything a graph owns lives in its arena except the node array and
 * the dedup table, which grow. */
#ifndef KILN_IR_H
#define KILN_IR_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include "kiln/kiln.h"

#define KILN_INTERNAL __attribute__((visibility("hidden")))

#define KILN_ASSERT(c)                                                                    \
  do {                                                                                    \
    if (!(c)) kiln_assert_fail(__FILE__, __LINE__, #c);                                   \
  } while (0)

enum {
  SRC = 1 << 0,
  EW = 1 << 1,
  RED = 1 << 2,
  MOV = 1 << 3,
  COMM = 1 << 4,
  DIFF = 1 << 5,
  FLT = 1 << 6,
  BOOLIN = 1 << 7,
  CMP = 1 << 8,
};

typedef enum kiln_op {
#define KILN_OP(e, name, arity, flags, doc) KILN_OP_##e,
#include "ir/ops.def"
#undef KILN_OP
  KILN_OP_COUNT
} kiln_op;

typedef struct kiln_op_info {
  const char *name;
  int arity;
  unsigned flags;
  const char *doc;
} kiln_op_info;
extern const kiln_op_info kiln_ops[KILN_OP_COUNT] KILN_INTERNAL;

typedef enum kiln_attr_key {
#define KILN_ATTR(e, name, kind) KILN_ATTR_##e,
#include "ir/attrs.def"
#undef KILN_ATTR
  KILN_ATTR_COUNT
} kiln_attr_key;

typedef enum { KILN_AK_INT, KILN_AK_INTS, KILN_AK_FLOAT, KILN_AK_DTYPE } kiln_attr_kind;
typedef struct kiln_attr_info {
  const char *name;
  kiln_attr_kind kind;
} kiln_attr_info;
extern const kiln_attr_info kiln_attrs_info[KILN_ATTR_COUNT] KILN_INTERNAL;

/* One attribute; fixed size and fully zeroed so attribute lists compare with memcmp. */
typedef struct kiln_attr {
  int32_t key;
  int32_t n; /* number of ints used (INTS); 1 for INT/DTYPE/FLOAT */
  union {
    int64_t i[KILN_MAX_RANK];
    double f;
  } v;
} kiln_attr;

/* A small attribute list built on the stack and copied into a node. */
typedef struct kiln_attrs {
  int n;
  kiln_attr a[12];
} kiln_attrs;

typedef struct kiln_node {
  uint16_t op;
  uint8_t dtype;
  uint8_t rank;
  uint32_t ninputs;
  int64_t dims[KILN_MAX_RANK];
  const uint32_t *inputs;
  const kiln_attr *attrs;
  uint32_t nattrs;
  uint32_t hash;
  const char *name;  /* PARAM */
  const void *data;  /* CONST with data; NULL for a filled constant */
  size_t nbytes;
} kiln_node;

typedef struct kiln_arena_chunk kiln_arena_chunk;
typedef struct kiln_arena {
  kiln_arena_chunk *head;
} kiln_arena;

typedef struct kiln_output_def {
  const char *name;
  uint32_t node;
} kiln_output_def;

struct kiln_graph {
  kiln_arena arena;
  kiln_node *nodes;
  uint32_t nnodes, cap;
  uint32_t *table; /* open-addressing dedup table of node index + 1 */
  uint32_t table_cap;
  kiln_output_def *outputs;
  uint32_t noutputs, outputs_cap;
  /* Variable updates, applied after a run (all reads see the old values); node = new value. */
  kiln_output_def *assigns;
  uint32_t nassigns, assigns_cap;
  kiln_variables *vars; /* borrowed: the store variable params are read from, or NULL */
  int64_t batch; /* binding of KILN_DYN during shape inference; -1 = symbolic */
  kiln_status status;
  char errmsg[512];
};

/* ---- util.c ---- */
KILN_INTERNAL _Noreturn void kiln_assert_fail(const char *file, int line, const char *what);
/* Sets the thread's kiln_errmsg() and returns s. */
KILN_INTERNAL kiln_status kiln_set_error(kiln_status s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
KILN_INTERNAL void *kiln_arena_alloc(kiln_arena *a, size_t n); /* zeroed, 16-aligned; NULL on OOM */
/* Not zeroed (the caller fills it); align: a power of two of at least 16. */
KILN_INTERNAL void *kiln_arena_alloc_aligned(kiln_arena *a, size_t n, size_t align);
KILN_INTERNAL char *kiln_arena_strdup(kiln_arena *a, const char *s);
KILN_INTERNAL void kiln_arena_free(kiln_arena *a);
/* n bytes, 64-byte aligned, on huge pages when large (freed with free); NULL on OOM. */
KILN_INTERNAL void *kiln_alloc_large(size_t n);
/* -1 if any dim is symbolic; INT64_MAX if the count overflows (inference rejects
 * such shapes, see KILN_MAX_NUMEL) */
KILN_INTERNAL int64_t kiln_shape_numel(int rank, const int64_t *dims);
/* The most elements a tensor may have: its size in bytes then fits in int64 and size_t. */
#define KILN_MAX_NUMEL (INT64_MAX / 8)
/* Writes "[2,?,3]" into buf. */
KILN_INTERNAL const char *kiln_shape_str(char *buf, size_t cap, int rank, const int64_t *dims);
/* "f32[2,?,3]" */
KILN_INTERNAL const char *kiln_type_str(char *buf, size_t cap, kiln_dtype t, int rank, const int64_t *dims);
KILN_INTERNAL bool kiln_same_shape(int ra, const int64_t *da, int rb, const int64_t *db);
/* The whole file, NUL-terminated (not counted in *len); caller frees *out. */
KILN_INTERNAL kiln_status kiln_read_file(const char *path, unsigned char **out, size_t *len);
KILN_INTERNAL bool kiln_dtype_is_float(kiln_dtype t);
KILN_INTERNAL bool kiln_dtype_is_int(kiln_dtype t);
KILN_INTERNAL int kiln_dtype_from_name(const char *s); /* -1 if unknown */
KILN_INTERNAL uint64_t kiln_hash_bytes(uint64_t h, const void *p, size_t n);
/* A hash of n bytes eight at a time, for large buffers (constants' data) whose hash
 * nothing stores: kiln_hash_bytes, byte by byte, also seeds variables, so its
 * values must not change. */
KILN_INTERNAL uint64_t kiln_hash_words(uint64_t h, const void *p, size_t n);
/* dst (row-major over dims) from src read at the given element strides: transposes,
 * broadcasts (stride 0) and strided slices of any element size up to 8. */
KILN_INTERNAL void kiln_permute_copy(void *dst, const void *src, size_t es, int rank, const int64_t *dims,
                                     const int64_t *src_strides);
/* Row-major strides (in elements) of a shape. */
KILN_INTERNAL void kiln_strides(int rank, const int64_t *dims, int64_t *strides);
/* Float to integer dtype t: truncate toward zero, saturate, NaN -> 0 (as llvm.fptosi.sat). */
KILN_INTERNAL int64_t kiln_float_to_int(double v, kiln_dtype t);

/* ---- graph.c ---- */
/* Records the graph's first error (later ones are ignored); returns KILN_NONE. */
KILN_INTERNAL kiln_value kiln_graph_fail(kiln_graph *g, kiln_status s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Makes (or finds) a node; runs shape inference; KILN_NONE on error. */
KILN_INTERNAL kiln_value kiln_node_make(kiln_graph *g, kiln_op op, const uint32_t *inputs, uint32_t nin,
                                        const kiln_attrs *attrs, const char *name, const void *data,
                                        size_t nbytes);
/* A node like n (op, name, data: shared with n's graph, not copied) on other inputs
 * and attributes: for rebuilding one graph from another. */
KILN_INTERNAL kiln_value kiln_node_make_like(kiln_graph *g, const kiln_node *n, const uint32_t *inputs,
                                             const kiln_attrs *attrs);
/* Constant data written in place instead of copied in (folded weights): kiln_blob_new
 * gives nbytes to fill, kiln_blob_seal hashes them once filled (from the blob `from`
 * they were made of and the recipe `how`, when given: no pass over the data),
 * kiln_blob_release drops the caller's reference. kiln_constant_blob makes a constant
 * of a sealed blob (also another node's data, under another shape), holding a
 * reference of its own. */
KILN_INTERNAL void *kiln_blob_new(size_t nbytes);
KILN_INTERNAL void kiln_blob_seal(void *data, size_t nbytes, const void *from, const void *how, size_t how_bytes);
KILN_INTERNAL void kiln_blob_release(void *data);
KILN_INTERNAL kiln_value kiln_constant_blob(kiln_graph *g, kiln_dtype t, int rank, const int64_t *dims,
                                            const void *data);
KILN_INTERNAL const kiln_node *kiln_node_get(const kiln_graph *g, kiln_value v); /* NULL if invalid */
KILN_INTERNAL const kiln_attr *kiln_attr_find(const kiln_node *n, kiln_attr_key k);
KILN_INTERNAL int64_t kiln_attr_int(const kiln_node *n, kiln_attr_key k, int64_t dflt);
KILN_INTERNAL double kiln_attr_float(const kiln_node *n, kiln_attr_key k, double dflt);
/* Copies n values of attribute k into out (returns count, 0 if absent). */
/* The attribute's values (count returned), at most cap of them copied into out: a
 * parsed graph may carry any number, so callers compare the count with what they need. */
KILN_INTERNAL int kiln_attr_ints_cap(const kiln_node *n, kiln_attr_key k, int64_t *out, size_t cap);
/* kiln_attr_ints_cap into an array, its length taken from its type (pointers refused at compile time). */
#define kiln_attr_ints(n, k, out)                                                                                      \
  kiln_attr_ints_cap(n, k, out,                                                                                        \
                     sizeof(out) / sizeof((out)[0]) +                                                                  \
                         0 * sizeof(struct {                                                                           \
                           _Static_assert(!__builtin_types_compatible_p(__typeof__(out), __typeof__(&(out)[0])),       \
                                          "kiln_attr_ints needs an array, not a pointer");                             \
                           int unused;                                                                                 \
                         }))
KILN_INTERNAL void kiln_attrs_int(kiln_attrs *a, kiln_attr_key k, int64_t v);
KILN_INTERNAL void kiln_attrs_ints(kiln_attrs *a, kiln_attr_key k, const int64_t *v, int n);
KILN_INTERNAL void kiln_attrs_float(kiln_attrs *a, kiln_attr_key k, double v);
/* A copy of g with KILN_DYN bound to batch (-1 keeps it symbolic); NULL on error. */
KILN_INTERNAL kiln_graph *kiln_graph_specialize(const kiln_graph *g, int64_t batch);
/* Describes node v for error messages: "add(%3: f32[2,3], %4: f32[3])". */
KILN_INTERNAL const char *kiln_node_describe(const kiln_graph *g, const kiln_node *n, char *buf, size_t cap);

/* ---- infer.c ---- */
/* Fills n->dtype, rank, dims from inputs and attributes; on error records it on g. */
KILN_INTERNAL bool kiln_infer(kiln_graph *g, kiln_node *n);
/* NumPy slice normalisation of one dim; returns the output length. */
KILN_INTERNAL int64_t kiln_slice_dim(int64_t dim, int64_t start, int64_t end, int64_t step, int64_t *first);
/* For a slice/unslice node over a tensor of shape `full`: each dim's first index and step. */
KILN_INTERNAL void kiln_slice_map(const kiln_node *n, int rank, const int64_t *full, int64_t *first, int64_t *step);
/* Output size of a conv/pool window along one dim; -1 if the window does not fit,
 * -2 if the sizes overflow int64. */
KILN_INTERNAL int64_t kiln_window_out(int64_t in, int64_t k, int64_t stride, int64_t dil, int64_t lo, int64_t hi);

/* ---- rng.c: counter-based random numbers shared by evaluator and codegen ---- */
KILN_INTERNAL uint64_t kiln_rng_bits(uint64_t seed, uint64_t counter);
KILN_INTERNAL double kiln_rng_uniform01(uint64_t seed, uint64_t counter); /* [0,1) with 53 bits */
KILN_INTERNAL uint64_t kiln_rng_stream(uint64_t seed, int64_t key); /* the seed of stream `key` */

/* ---- eval.c ---- */
KILN_INTERNAL kiln_status kiln_eval_graph(const kiln_graph *g, const kiln_tensor *const *inputs, size_t nin,
                                          kiln_tensor **outputs, size_t nout);
/* Checks inputs against the graph's params; sets *batch to the bound batch size (or -1). */
KILN_INTERNAL kiln_status kiln_check_inputs(const kiln_graph *g, const kiln_tensor *const *inputs, size_t nin,
                                            int64_t *batch);
KILN_INTERNAL uint32_t kiln_graph_num_params(const kiln_graph *g);

/* ---- rows.c ---- */
/* Whether row i of each of values (dim 0 the batch) depends only on row i of the batch
 * inputs, and no assignment made so far depends on the batch data at all: then a short
 * batch may run padded to a longer one. */
KILN_INTERNAL bool kiln_graph_rows_independent(const kiln_graph *g, const uint32_t *values, size_t nvalues);

/* ---- graph.c: variables in graphs ---- */
/* A param with attribute variable=1 reads the variable of that name. */
KILN_INTERNAL bool kiln_node_is_variable(const kiln_node *n);
/* kiln_output without the reserved-name check. */
KILN_INTERNAL kiln_status kiln_graph_add_output(kiln_graph *g, const char *name, kiln_value v);
KILN_INTERNAL kiln_status kiln_graph_add_assign(kiln_graph *g, const char *name, uint32_t node);
/* Specialises g to batch and appends its assignments as outputs after the user's. */
KILN_INTERNAL kiln_graph *kiln_graph_for_run(const kiln_graph *g, int64_t batch);

/* ---- runtime/optimizer.c ---- */
/* Creates (or finds) the optimizer's counter and learning-rate variables in vs. */
KILN_INTERNAL kiln_status kiln_optimizer_prepare(kiln_optimizer *o, kiln_variables *vs);

/* ---- runtime/crc32c.c ---- */
KILN_INTERNAL uint32_t kiln_crc32c(const void *data, size_t n);
KILN_INTERNAL uint32_t kiln_crc32c_masked(const void *data, size_t n); /* TFRecord's masked form */

/* ---- runtime/variables.c: running graphs that read and assign variables ---- */
KILN_INTERNAL kiln_variables *kiln_variable_store(const kiln_variable *v);
/* All params' tensors in order: the caller's inputs, and variables looked up in g->vars.
 * full has kiln_graph_num_params(g) entries. */
KILN_INTERNAL kiln_status kiln_bind_inputs(const kiln_graph *g, const kiln_tensor *const *user, size_t nuser,
                                           const kiln_tensor **full);
/* Copies vals[i] (the value of assignment i) into its variable. */
KILN_INTERNAL kiln_status kiln_apply_assigns(const kiln_graph *g, kiln_tensor *const *vals);
/* kiln_exec_run / kiln_function_call with outputs[0, given) the caller's tensors
 * (dtype and shape of those outputs), written in place; the rest are new. */
KILN_INTERNAL kiln_status kiln_exec_run_given(kiln_exec *e, const kiln_tensor *const *inputs, size_t nin,
                                              kiln_tensor **outputs, size_t nout, size_t given);
KILN_INTERNAL kiln_status kiln_function_call_given(kiln_function *f, const kiln_tensor *const *inputs, size_t nin,
                                                   kiln_tensor **outputs, size_t nout, size_t given);
/* The exec that a call with these inputs runs (traced now when the signature is new)
 * and the batch size it would specialise for; nothing compiles or runs. */
KILN_INTERNAL kiln_status kiln_function_exec_for(kiln_function *f, const kiln_tensor *const *inputs, size_t nin,
                                                 kiln_exec **e, int64_t *batch);
KILN_INTERNAL kiln_status kiln_exec_batch_of(kiln_exec *e, const kiln_tensor *const *inputs, size_t nin, int64_t *batch);
/* Compiles e's specialisation for batch now, if missing, as a run would, but with the
 * compile threads that e's own runs leave free: for a thread that prepares a function
 * while another exec runs. Runs of e that need it meanwhile wait for it. */
KILN_INTERNAL kiln_status kiln_exec_compile_ahead(kiln_exec *e, int64_t batch);
/* Cores (compile threads) that e's runs leave idle: 0 or less when they take all. */
KILN_INTERNAL int kiln_exec_spare_threads(const kiln_exec *e);

#endif

/* ONNX importer internals: the import context (onnx_import.c) and the table of op
 * decompositions (onnx_ops.c). */
#ifndef KILN_ONNX_IMPL_H
#define KILN_ONNX_IMPL_H

#include "ir/ir.h"
#include "kiln/onnx.h"
#include "onnx/onnx.pb-c.h"

typedef struct onnx_value {
  const char *name;
  kiln_value v;
  kiln_tensor *host; /* its value when known while importing (constants, folded shapes) */
  uint64_t deps;     /* the offered graph inputs (bit k: the k-th, k < 64) it is computed from */
} onnx_value;

typedef struct onnx_ctx {
  kiln_graph *g; /* the graph being built, or a scratch graph while folding constants */
  int64_t opset;
  const char *path;
  onnx_value *vals;
  size_t nvals, cap;
  const kiln_onnx_options *offered; /* values offered for graph inputs */
  bool *frozen, *wanted;            /* per offered input: imported as a constant / needed as one */
} onnx_ctx;

/* Builds the node's outputs in c->g from its inputs (KILN_NONE for omitted optional
 * ones); returns KILN_OK or an error status with the message set. */
typedef kiln_status (*onnx_op_fn)(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin,
                                  kiln_value *out);
typedef struct onnx_op {
  const char *name;
  onnx_op_fn fn;
} onnx_op;

/* onnx_ops.c */
KILN_INTERNAL const onnx_op *onnx_find_op(const char *name);
/* Reads constant input i as integers; fails when it is not known at import time. */
KILN_INTERNAL kiln_status onnx_const_ints(onnx_ctx *c, const Onnx__NodeProto *n, size_t i, int64_t *out, int cap,
                                          int *count);

/* Handlers defined outside onnx_ops.c, listed in its one table. */
#define ONNX_HANDLER(name)                                                                                    \
  kiln_status onnx_op_##name(onnx_ctx *c, const Onnx__NodeProto *n, const kiln_value *in, size_t nin, kiln_value *out)
#define ONNX_EXTERN_OPS(X)                                                                                    \
  X(Size) X(Hardmax) X(CumSum) X(Trilu) X(OneHot) X(EyeLike) X(Range) X(Tile) X(DepthToSpace) X(SpaceToDepth)  \
  X(GatherElements) X(ScatterElements) X(Scatter) X(ScatterND) X(GatherND) X(Einsum)                            \
  X(InstanceNormalization) X(LRN) X(MeanVarianceNormalization) X(NegativeLogLikelihoodLoss)                     \
  X(SoftmaxCrossEntropyLoss) X(ConvTranspose) X(Resize) X(Upsample) X(RNN) X(GRU) X(LSTM) X(Conv) X(MaxPool)      \
  X(AveragePool) X(HannWindow) X(HammingWindow) X(BlackmanWindow)
#define ONNX_DECLARE(name) KILN_INTERNAL ONNX_HANDLER(name);
ONNX_EXTERN_OPS(ONNX_DECLARE)
#undef ONNX_DECLARE

/* Helpers for the handlers: c is the import context in scope. */
#define G (c->g)
#define HAS(i) ((i) < nin && in[i].id != KILN_NONE)
static inline int rank_of(onnx_ctx *c, kiln_value v) { return kiln_value_shape(G, v).rank; }
static inline kiln_dtype type_of(onnx_ctx *c, kiln_value v) { return kiln_value_dtype(G, v); }
static inline kiln_value scalar_like(onnx_ctx *c, kiln_value x, double v) { return kiln_scalar(G, type_of(c, x), v); }
static inline int norm_axis(int64_t axis, int rank) { return (int)(axis < 0 ? axis + rank : axis); }
/* x[..., start:end:step, ...] along one axis, all of every other axis. */
static inline kiln_value slice_axis(onnx_ctx *c, kiln_value x, int axis, int64_t start, int64_t end, int64_t step) {
  kiln_shape s = kiln_value_shape(G, x);
  int64_t S[KILN_MAX_RANK] = {0}, E[KILN_MAX_RANK], P[KILN_MAX_RANK];
  for (int d = 0; d < s.rank; d++) E[d] = s.dims[d], P[d] = 1;
  S[axis] = start, E[axis] = end, P[axis] = step;
  return kiln_slice(G, x, S, E, P, s.rank);
}

/* onnx_import.c: what the op handlers use */
KILN_INTERNAL const Onnx__AttributeProto *onnx_attr(const Onnx__NodeProto *n, const char *name);
KILN_INTERNAL int64_t onnx_attr_int(const Onnx__NodeProto *n, const char *name, int64_t dflt);
KILN_INTERNAL double onnx_attr_float(const Onnx__NodeProto *n, const char *name, double dflt);
/* Copies up to cap ints; returns how many the attribute has (-1 when absent). */
KILN_INTERNAL int onnx_attr_ints(const Onnx__NodeProto *n, const char *name, int64_t *out, int cap);
KILN_INTERNAL const char *onnx_attr_string(const Onnx__NodeProto *n, const char *name, const char *dflt);
/* The value of input i when it is known while importing (an initializer or a folded
 * computation), or NULL. */
KILN_INTERNAL const kiln_tensor *onnx_const_input(onnx_ctx *c, const Onnx__NodeProto *n, size_t i);
/* Fails naming the node: "node 'name' (OpType): ...". */
KILN_INTERNAL kiln_status onnx_fail(onnx_ctx *c, const Onnx__NodeProto *n, kiln_status s, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The kiln dtype of an ONNX TensorProto data type, or -1 when kiln has none. */
KILN_INTERNAL int onnx_kiln_dtype(int64_t onnx_type);
KILN_INTERNAL kiln_status onnx_tensor_from_proto(const Onnx__TensorProto *t, const char *dir, kiln_tensor **out);
#endif

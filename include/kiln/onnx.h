/* ONNX import: a model trained elsewhere becomes a kiln graph, which the JIT runs
 * and `kiln compile` turns into an object file.
 *
 *   kiln_graph *g;
 *   if (kiln_onnx_load("model.onnx", &g) != KILN_OK) fprintf(stderr, "%s\n", kiln_errmsg());
 *
 * Graph inputs that are not initializers become placeholders (a symbolic first
 * dimension becomes kiln's batch dimension), initializers become constants, and
 * each ONNX node is decomposed into kiln primitives; shape computations on
 * constants (Shape, ConstantOfShape, ...) are folded while importing. An
 * unsupported op, attribute value or data type is an error naming the node. */
#ifndef KILN_ONNX_H
#define KILN_ONNX_H

#include "kiln/graph.h"

#ifdef __cplusplus
extern "C" {
#endif

KILN_API kiln_status kiln_onnx_load(const char *path, kiln_graph **out);

/* Values offered for graph inputs. kiln compiles static shapes, so an input the
 * model uses where a constant is needed (a Reshape's shape, Resize's scales, a
 * Range's bounds, a Slice's starts...) can only be imported with its value known:
 * such an input, when offered here, becomes a constant with that value and is no
 * longer an input of the graph (the graph is specialized to it). Offered inputs
 * that are not needed as constants stay inputs. The tensors are copied. */
typedef struct kiln_onnx_options {
  const char *const *input_names;
  const kiln_tensor *const *input_values;
  size_t ninputs;
  bool *frozen; /* optional, ninputs entries: set where the offered input became a constant */
} kiln_onnx_options;
KILN_API kiln_status kiln_onnx_load_with(const char *path, const kiln_onnx_options *opts, kiln_graph **out);
/* Writes t as an ONNX TensorProto file named `name` (atomically). */
KILN_API kiln_status kiln_onnx_save_tensor(const char *path, const kiln_tensor *t, const char *name);
/* An ONNX TensorProto file (the ONNX test data's input_0.pb, ...); *name may be NULL. */
KILN_API kiln_status kiln_onnx_load_tensor(const char *path, kiln_tensor **out, char **name);

#ifdef __cplusplus
}
#endif
#endif

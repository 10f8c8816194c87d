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
/* An ONNX TensorProto file (the ONNX test data's input_0.pb, ...); *name may be NULL. */
KILN_API kiln_status kiln_onnx_load_tensor(const char *path, kiln_tensor **out, char **name);

#ifdef __cplusplus
}
#endif
#endif

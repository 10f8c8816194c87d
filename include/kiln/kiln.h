/* Everything public in kiln. See graph.h for a worked example. */
#ifndef KILN_KILN_H
#define KILN_KILN_H
#include "kiln/core.h"
#include "kiln/graph.h"
#include "kiln/exec.h"
#include "kiln/train.h"
#include "kiln/data.h"
#include "kiln/distributed.h"
#include "kiln/model.h"
#include "kiln/aot.h"
#include "kiln/onnx.h"
#endif

/* Random test graphs for every op in ir/ops.def, shared by test_ops (JIT vs
 * reference) and test_grad (gradients vs finite differences). A builder makes
 * random inputs (recorded in tc.in) and returns the op's result. */
#ifndef KILN_TEST_OP_CASES_H
#define KILN_TEST_OP_CASES_H
#include "harness.h"

enum { DF32 = 1 << KILN_F32, DF64 = 1 << KILN_F64, DI32 = 1 << KILN_I32, DI64 = 1 << KILN_I64, DBOOL = 1 << KILN_BOOL };
enum { FLOATS = DF32 | DF64, INTS = DI32 | DI64, NUMS = FLOATS | INTS, ALL = NUMS | DBOOL };

typedef struct tc {
  kiln_graph *g;
  trng *r;
  kiln_dtype t;
  kiln_tensor *in[8];
  int nin;
} tc;

typedef kiln_value (*build_fn)(tc *c, kiln_op op);
typedef struct {
  build_fn build;
  unsigned dtypes;
  double rtol, atol; /* for f32; f64 uses 1e-12 for elementwise ops, 1e-10 otherwise */
} op_case;

extern const op_case CASES[KILN_OP_COUNT];
#endif

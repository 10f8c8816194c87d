/* kiln graph builder: build a dataflow graph of tensor ops, like tf.function traces.
 *
 *   kiln_graph *g = kiln_graph_new();
 *   kiln_value x = kiln_placeholder(g, "x", KILN_F32, KILN_SHAPE(KILN_DYN, 4));
 *   kiln_value w = kiln_constant(g, KILN_F32, KILN_SHAPE(4, 2), weights);
 *   kiln_value y = kiln_relu(g, kiln_matmul(g, x, w, false, false));
 *   kiln_output(g, "y", y);
 *   if (kiln_graph_status(g) != KILN_OK) puts(kiln_graph_errmsg(g));
 *   ...
 *   kiln_graph_free(g);   // frees every node, shape and name in one call
 *
 * Builder calls need no error checks: the first error (bad shape, dtype,
 * attribute) is recorded on the graph with a message naming the op, its
 * input shapes and the rule broken; later calls return an invalid value and
 * do nothing. kiln_graph_status() / kiln_compile() report it.
 *
 * Binary ops broadcast like NumPy/ONNX and require equal dtypes (use
 * kiln_cast). A dimension may be KILN_DYN: the symbolic batch size, bound
 * when the compiled graph is run. */
#ifndef KILN_GRAPH_H
#define KILN_GRAPH_H

#include <stdbool.h>
#include <stdio.h>
#include "kiln/core.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KILN_DYN (-1) /* symbolic (batch) dimension */

typedef struct kiln_shape {
  int rank;
  int64_t dims[KILN_MAX_RANK];
} kiln_shape;

/* KILN_SHAPE(2, 3) is a rank-2 shape; KILN_SCALAR is rank 0. */
#define KILN_SHAPE(...)                                                                   \
  ((kiln_shape){.rank = (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), \
                .dims = {__VA_ARGS__}})
#define KILN_SCALAR ((kiln_shape){.rank = 0})

typedef struct kiln_graph kiln_graph;
/* A value produced by a node of a graph; id KILN_NONE when a builder call failed. */
typedef struct kiln_value {
  uint32_t id;
} kiln_value;
#define KILN_NONE UINT32_MAX

KILN_API kiln_graph *kiln_graph_new(void);
KILN_API void kiln_graph_free(kiln_graph *g);
/* KILN_OK, or the status of the graph's first builder error. */
KILN_API kiln_status kiln_graph_status(const kiln_graph *g);
KILN_API const char *kiln_graph_errmsg(const kiln_graph *g);
KILN_API kiln_dtype kiln_value_dtype(const kiln_graph *g, kiln_value v);
KILN_API kiln_shape kiln_value_shape(const kiln_graph *g, kiln_value v);
/* The placeholders a caller passes to a run, in order (variables excluded): their
 * count, and the i-th (KILN_NONE past the end); kiln_value_shape gives its signature. */
KILN_API size_t kiln_graph_num_inputs(const kiln_graph *g);
KILN_API kiln_value kiln_graph_input(const kiln_graph *g, size_t i);
/* Check structural invariants (types, shapes, topological order, outputs). */
KILN_API kiln_status kiln_graph_verify(const kiln_graph *g);

/* ---- sources ---- */
KILN_API kiln_value kiln_placeholder(kiln_graph *g, const char *name, kiln_dtype t, kiln_shape s);
/* Copies `data` (row-major, dtype-sized elements). */
KILN_API kiln_value kiln_constant(kiln_graph *g, kiln_dtype t, kiln_shape s, const void *data);
KILN_API kiln_value kiln_scalar(kiln_graph *g, kiln_dtype t, double v);
/* Tensor of shape s filled with v (a broadcast scalar: no data stored). */
KILN_API kiln_value kiln_fill(kiln_graph *g, kiln_dtype t, kiln_shape s, double v);
KILN_API kiln_value kiln_iota(kiln_graph *g, kiln_dtype t, kiln_shape s, int axis);
/* Counter-based random numbers: the same seed and shape give the same tensor everywhere. */
KILN_API kiln_value kiln_random_uniform(kiln_graph *g, kiln_dtype t, kiln_shape s, uint64_t seed,
                                        double low, double high);
KILN_API kiln_value kiln_random_normal(kiln_graph *g, kiln_dtype t, kiln_shape s, uint64_t seed,
                                       double mean, double stddev);
/* The same, from stream `key` (an integer scalar computed at run time, e.g. a step
 * counter): one traced graph draws fresh numbers on every run. */
KILN_API kiln_value kiln_random_uniform_stream(kiln_graph *g, kiln_dtype t, kiln_shape s, uint64_t seed, kiln_value key,
                                               double low, double high);
KILN_API kiln_value kiln_random_normal_stream(kiln_graph *g, kiln_dtype t, kiln_shape s, uint64_t seed, kiln_value key,
                                              double mean, double stddev);

/* ---- elementwise ---- */
KILN_API kiln_value kiln_neg(kiln_graph *g, kiln_value x);
KILN_API kiln_value kiln_abs(kiln_graph *g, kiln_value x);
KILN_API kiln_value kiln_exp(kiln_graph *g, kiln_value x);
KILN_API kiln_value kiln_log(kiln_graph *g, kiln_value x);
KILN_API kiln_value kiln_sqrt(kiln_graph *g, kiln_value x);
KILN_API kiln_value kiln_rsqrt(kiln_graph *g, kiln_value x);
KILN_API kiln_value kiln_tanh(kiln_graph *g, kiln_value x);
KILN_API kiln_value kiln_sigmoid(kiln_graph *g, kiln_value x);
KILN_API kiln_value kiln_relu(kiln_graph *g, kiln_value x);
KILN_API kiln_value kiln_sin(kiln_graph *g, kiln_value x);
KILN_API kiln_value kiln_cos(kiln_graph *g, kiln_value x);
KILN_API kiln_value kiln_floor(kiln_graph *g, kiln_value x);
KILN_API kiln_value kiln_ceil(kiln_graph *g, kiln_value x);
KILN_API kiln_value kiln_sign(kiln_graph *g, kiln_value x);
KILN_API kiln_value kiln_logical_not(kiln_graph *g, kiln_value x);

KILN_API kiln_value kiln_add(kiln_graph *g, kiln_value a, kiln_value b);
KILN_API kiln_value kiln_sub(kiln_graph *g, kiln_value a, kiln_value b);
KILN_API kiln_value kiln_mul(kiln_graph *g, kiln_value a, kiln_value b);
/* Integer division truncates; x / 0 is 0 for integers. */
KILN_API kiln_value kiln_div(kiln_graph *g, kiln_value a, kiln_value b);
KILN_API kiln_value kiln_pow(kiln_graph *g, kiln_value a, kiln_value b);
KILN_API kiln_value kiln_maximum(kiln_graph *g, kiln_value a, kiln_value b);
KILN_API kiln_value kiln_minimum(kiln_graph *g, kiln_value a, kiln_value b);
KILN_API kiln_value kiln_equal(kiln_graph *g, kiln_value a, kiln_value b);
KILN_API kiln_value kiln_less(kiln_graph *g, kiln_value a, kiln_value b);
KILN_API kiln_value kiln_greater(kiln_graph *g, kiln_value a, kiln_value b);
KILN_API kiln_value kiln_logical_and(kiln_graph *g, kiln_value a, kiln_value b);
KILN_API kiln_value kiln_logical_or(kiln_graph *g, kiln_value a, kiln_value b);
/* cond ? a : b, elementwise with broadcasting; cond is bool. */
KILN_API kiln_value kiln_select(kiln_graph *g, kiln_value cond, kiln_value a, kiln_value b);
/* Float to integer truncates toward zero and saturates (NaN becomes 0). */
KILN_API kiln_value kiln_cast(kiln_graph *g, kiln_value x, kiln_dtype t);

/* ---- reductions: axes NULL means all axes; negative axes count from the end ---- */
KILN_API kiln_value kiln_reduce_sum(kiln_graph *g, kiln_value x, const int64_t *axes, int naxes, bool keepdims);
KILN_API kiln_value kiln_reduce_mean(kiln_graph *g, kiln_value x, const int64_t *axes, int naxes, bool keepdims);
KILN_API kiln_value kiln_reduce_max(kiln_graph *g, kiln_value x, const int64_t *axes, int naxes, bool keepdims);
KILN_API kiln_value kiln_reduce_min(kiln_graph *g, kiln_value x, const int64_t *axes, int naxes, bool keepdims);
/* Index (i64) of the first maximum along axis. */
KILN_API kiln_value kiln_argmax(kiln_graph *g, kiln_value x, int axis, bool keepdims);

/* ---- linear algebra, convolution, pooling ---- */
/* a[..., M, K] x b[..., K, N] (after optional transposes of the last two dims);
 * leading (batch) dims broadcast; rank-1 operands are treated like NumPy does. */
KILN_API kiln_value kiln_matmul(kiln_graph *g, kiln_value a, kiln_value b, bool transpose_a, bool transpose_b);

typedef enum kiln_layout { KILN_NHWC = 0, KILN_NCHW } kiln_layout;
typedef enum kiln_padding { KILN_PAD_VALID = 0, KILN_PAD_SAME, KILN_PAD_EXPLICIT } kiln_padding;

/* Zero-initialised options mean: NHWC, stride 1, dilation 1, valid padding, 1 group.
 * Filters are HWIO [kh, kw, in/groups, out] for NHWC and OIHW for NCHW. */
typedef struct kiln_conv2d_opts {
  kiln_layout layout;
  int64_t strides[2];   /* 0 means 1 */
  int64_t dilations[2]; /* 0 means 1 */
  kiln_padding padding;
  int64_t pads[4];      /* KILN_PAD_EXPLICIT: top, left, bottom, right */
  int64_t groups;       /* 0 means 1 */
} kiln_conv2d_opts;
KILN_API kiln_value kiln_conv2d(kiln_graph *g, kiln_value x, kiln_value w, const kiln_conv2d_opts *o);
/* The filter gradient of y = conv2d(x, w, o) for a kh x kw filter: dL/dw from x and
 * dy = dL/dy (TensorFlow's conv2d_backprop_filter); a filter in o's layout. */
KILN_API kiln_value kiln_conv2d_filter_grad(kiln_graph *g, kiln_value x, kiln_value dy, int64_t kh, int64_t kw,
                                            const kiln_conv2d_opts *o);

typedef struct kiln_pool2d_opts {
  kiln_layout layout;
  int64_t window[2];
  int64_t strides[2]; /* 0 means the window size */
  kiln_padding padding;
  int64_t pads[4];
} kiln_pool2d_opts;
/* The input gradient of y = max_pool2d(x, o) given dy = dL/dy (TensorFlow's max_pool_grad):
 * each window's dy goes to its first maximum, row-major. */
KILN_API kiln_value kiln_max_pool2d_grad(kiln_graph *g, kiln_value x, kiln_value dy, const kiln_pool2d_opts *o);
/* Average pooling divides by the number of non-padding elements in each window. */
KILN_API kiln_value kiln_max_pool2d(kiln_graph *g, kiln_value x, const kiln_pool2d_opts *o);
KILN_API kiln_value kiln_avg_pool2d(kiln_graph *g, kiln_value x, const kiln_pool2d_opts *o);

/* ---- movement ---- */
/* One dim of `s` may be -1 (inferred from the element count). */
KILN_API kiln_value kiln_reshape(kiln_graph *g, kiln_value x, kiln_shape s);
KILN_API kiln_value kiln_transpose(kiln_graph *g, kiln_value x, const int64_t *perm, int n);
KILN_API kiln_value kiln_broadcast_to(kiln_graph *g, kiln_value x, kiln_shape s);
KILN_API kiln_value kiln_concat(kiln_graph *g, const kiln_value *xs, int n, int axis);
/* NumPy slicing x[starts[i]:ends[i]:steps[i]] for the first n dims; negative values
 * count from the end, out-of-range bounds clamp, steps may be negative (not 0). */
KILN_API kiln_value kiln_slice(kiln_graph *g, kiln_value x, const int64_t *starts, const int64_t *ends,
                               const int64_t *steps, int n);
KILN_API kiln_value kiln_pad(kiln_graph *g, kiln_value x, const int64_t *lo, const int64_t *hi, double value);
/* out = x.shape[:axis] + idx.shape + x.shape[axis+1:]; negative indices count from the
 * end; an index out of range makes kiln_exec_run fail with a message. */
KILN_API kiln_value kiln_gather(kiln_graph *g, kiln_value x, kiln_value indices, int axis);
/* The transpose of kiln_slice: zeros of shape s with x written where
 * kiln_slice(zeros(s), starts, ends, steps, n) would read (x has that slice's shape). */
KILN_API kiln_value kiln_unslice(kiln_graph *g, kiln_value x, kiln_shape s, const int64_t *starts,
                                 const int64_t *ends, const int64_t *steps, int n);
/* The transpose of kiln_gather: zeros of shape s, then out[.., indices[j], ..] += updates[.., j, ..]
 * along axis; updates has the shape gather(zeros(s), indices, axis) would have. Repeated
 * indices accumulate; an index out of range makes kiln_exec_run fail. */
KILN_API kiln_value kiln_scatter_add(kiln_graph *g, kiln_value indices, kiln_value updates, kiln_shape s, int axis);
/* Appends a last axis of size depth: 1 where the index matches, else 0. */
KILN_API kiln_value kiln_one_hot(kiln_graph *g, kiln_value indices, int64_t depth, kiln_dtype t);

/* ---- composites (built from the primitives above) ---- */
KILN_API kiln_value kiln_square(kiln_graph *g, kiln_value x); /* x * x */
KILN_API kiln_value kiln_softmax(kiln_graph *g, kiln_value x, int axis);
KILN_API kiln_value kiln_log_softmax(kiln_graph *g, kiln_value x, int axis);
/* The error function as a rational approximation (Eigen's, |error| < 2e-7 in f32);
 * saturates to +-1 beyond |x| = 4. */
KILN_API kiln_value kiln_erf(kiln_graph *g, kiln_value x);
/* atan(x) with Cephes' range reduction and polynomial (about 1e-7 relative error). */
KILN_API kiln_value kiln_atan(kiln_graph *g, kiln_value x);

/* ---- autodiff ---- */
/* Appends to g the gradient of sum(loss) with respect to each wrt[i] (like
 * tf.gradients) and stores it in grads[i], shaped like wrt[i]. Gradients flow
 * through float values only; an x the loss does not depend on gets zeros, and an
 * x connected to the loss only through non-differentiable ops (argmax,
 * comparisons, floor, integer casts) is an error naming that op. The appended
 * nodes are ordinary ops, so gradients can be differentiated again. */
KILN_API kiln_status kiln_gradients(kiln_graph *g, kiln_value loss, const kiln_value *wrt, size_t n,
                                    kiln_value *grads);

/* ---- outputs ---- */
KILN_API kiln_status kiln_output(kiln_graph *g, const char *name, kiln_value v);

/* ---- text format (.kir) ---- */
/* Exact round trip: print(parse(print(g))) == print(g). Caller frees *text with free(). */
KILN_API kiln_status kiln_graph_to_text(const kiln_graph *g, char **text);
KILN_API kiln_status kiln_graph_parse(const char *text, kiln_graph **out);
KILN_API kiln_status kiln_graph_load(const char *path, kiln_graph **out);

#ifdef __cplusplus
}
#endif
#endif

/* Fusion: which nodes are computed inside the kernels that read them instead of
 * being written to memory. Every kernel emitted by codegen/lower.c (all but the
 * matmul / convolution / pooling kernels) reads its inputs element by element, so a
 * producer it reads can be evaluated at that element on the fly:
 *  - constant fills, iotas, broadcasts and reshapes (of what is not itself fused)
 *    cost an index computation and are inlined into every such reader; a reshape of
 *    a stored buffer is a view of it for every reader, by pointer too;
 *  - element-wise ops and reshapes with a single reader node that visits each
 *    element once (element-wise, reshape, reductions, transpose, slice, concat; x * x
 *    counts as one reader: LLVM computes the repeated value once) are inlined,
 *    so chains become one loop nest and element-wise producers fuse into reductions;
 *    with several readers they are computed once and stored;
 *  - a matmul, convolution or max-pool gradient whose only reader is such a chain
 *    (element-wise ops and reshapes up to an element-wise kernel of the same dtype)
 *    is that kernel's host: the kernel runs it into its own output and finishes
 *    each piece in place while it is still in cache (bias, activation, residual
 *    add, scale, the ReLU mask of a backward pass: the epilogue), so the host's
 *    result is never stored;
 *  - a max or average pool with windows that tile its input (window = strides, no
 *    padding) whose input is a convolution, or such a chain after one, read by
 *    nothing else (inference: training also keeps the input for the gradient) hosts
 *    that convolution: the pool's kernel computes the convolution a few window rows
 *    at a time into a small buffer, finishes them with the chain and pools them while
 *    they are cached, so the convolution's output is never stored. Convolutions
 *    computed as one GEMM over every pixel (1x1) or channel by channel (depthwise)
 *    are not cut into window rows and stay kernels of their own;
 *  - the zeros that autodiff spreads between the pixels of a strided depthwise
 *    layer's dy (an unslice, for the input gradient's stride-1 convolution) are not
 *    stored: the depthwise kernel reads dy itself and runs, per output phase, only
 *    the taps that meet a pixel of dy (codegen/conv_depthwise.c). */
#include "passes/passes.h"

static bool reads_by_element(kiln_op op) {
  return op != KILN_OP_MATMUL && op != KILN_OP_CONV2D && op != KILN_OP_CONV2D_FILTER_GRAD && op != KILN_OP_MAX_POOL2D &&
         op != KILN_OP_AVG_POOL2D && op != KILN_OP_MAX_POOL2D_GRAD;
}

static bool visits_once(kiln_op op) {
  if (kiln_ops[op].flags & (EW | RED)) return true;
  return op == KILN_OP_RESHAPE || op == KILN_OP_TRANSPOSE || op == KILN_OP_SLICE || op == KILN_OP_CONCAT;
}

static bool keeps_index(kiln_op op) { return (kiln_ops[op].flags & EW) || op == KILN_OP_RESHAPE; }

/* A conv2d with one input and one output channel per group. */
static bool is_depthwise(const kiln_graph *g, const kiln_node *conv) {
  const kiln_node *x = &g->nodes[conv->inputs[0]], *w = &g->nodes[conv->inputs[1]];
  int64_t groups = kiln_attr_int(conv, KILN_ATTR_GROUPS, 1);
  return groups > 1 && w->dims[2] == 1 && x->dims[3] == groups && conv->dims[3] == groups;
}

/* Whether conv reads unslice u (its input) as conv_depthwise.c can without storing
 * it: a depthwise stride-1 convolution of zeros spread between dy's pixels. */
static bool depthwise_reads_unslice(const kiln_graph *g, const kiln_node *conv, const kiln_node *u) {
  if (conv->op != KILN_OP_CONV2D || u->op != KILN_OP_UNSLICE || &g->nodes[conv->inputs[0]] != u || u->rank != 4 ||
      !kiln_dtype_is_float((kiln_dtype)conv->dtype))
    return false;
  const kiln_node *w = &g->nodes[conv->inputs[1]], *src = &g->nodes[u->inputs[0]];
  int64_t strides[2], dil[2], first[4], step[KILN_MAX_RANK];
  kiln_attr_ints(conv, KILN_ATTR_STRIDES, strides);
  kiln_attr_ints(conv, KILN_ATTR_DILATIONS, dil);
  kiln_slice_map(u, 4, u->dims, first, step);
  /* codegen/conv_depthwise.c's cg_conv_depthwise_fits, on the graph */
  bool depthwise = is_depthwise(g, conv) && w->dims[0] * w->dims[1] <= 49;
  return depthwise && strides[0] == 1 && strides[1] == 1 && dil[0] == 1 && dil[1] == 1 && first[0] == 0 &&
         first[3] == 0 && step[0] == 1 && step[3] == 1 && src->dims[0] == u->dims[0] && src->dims[3] == u->dims[3] &&
         step[1] >= 1 && step[2] >= 1 && (step[1] > 1 || step[2] > 1);
}

/* Makes matmuls, convolutions and max-pool gradients the hosts of the element-wise kernels that are
 * their only readers (see the top), within the epilogue's bound on reads. */
static void choose_hosts(const kiln_graph *g, const bool *stored, const uint32_t *uses, const uint32_t *reader,
                         bool *inlined, uint32_t *host) {
  for (uint32_t i = 0; i < g->nnodes; i++) host[i] = UINT32_MAX;
  for (uint32_t i = 0; i < g->nnodes; i++) {
    kiln_op op = (kiln_op)g->nodes[i].op;
    if (!kiln_can_host(op) || stored[i] || reader[i] == UINT32_MAX) continue;
    uint32_t root = reader[i];
    bool ok = keeps_index((kiln_op)g->nodes[root].op);
    while (ok && inlined[root]) {
      root = reader[root];
      ok = root != UINT32_MAX && keeps_index((kiln_op)g->nodes[root].op);
    }
    if (!ok || !(kiln_ops[g->nodes[root].op].flags & EW) || g->nodes[root].dtype != g->nodes[i].dtype ||
        host[root] != UINT32_MAX || uses[root] + g->nodes[i].ninputs - 1 > KILN_MAX_EPILOGUE_READS)
      continue;
    host[root] = i;
    inlined[i] = true;
  }
}

static bool pool_tiles_input(const kiln_graph *g, const kiln_node *p) {
  if ((p->op != KILN_OP_MAX_POOL2D && p->op != KILN_OP_AVG_POOL2D) || !kiln_dtype_is_float((kiln_dtype)p->dtype)) return false;
  int64_t window[2], strides[2], pads[4];
  if (kiln_attr_ints(p, KILN_ATTR_WINDOW, window) != 2 || kiln_attr_ints(p, KILN_ATTR_STRIDES, strides) != 2 ||
      kiln_attr_ints(p, KILN_ATTR_PADS, pads) != 4)
    return false;
  const kiln_node *x = &g->nodes[p->inputs[0]];
  return window[0] == strides[0] && window[1] == strides[1] && !pads[0] && !pads[1] && !pads[2] && !pads[3] &&
         window[0] * window[1] <= 16 && x->rank == 4 && x->dims[1] % window[0] == 0 && x->dims[2] % window[1] == 0;
}

/* What codegen/conv.c runs in chunks of output pixels (cg_conv_can_pool). */
static bool conv_in_pixel_chunks(const kiln_graph *g, const kiln_node *n) {
  if (n->op != KILN_OP_CONV2D) return false;
  const kiln_node *w = &g->nodes[n->inputs[1]];
  int64_t strides[2], pads[4], groups = kiln_attr_int(n, KILN_ATTR_GROUPS, 1);
  kiln_attr_ints(n, KILN_ATTR_STRIDES, strides);
  kiln_attr_ints(n, KILN_ATTR_PADS, pads);
  bool pointwise = w->dims[0] == 1 && w->dims[1] == 1 && strides[0] == 1 && strides[1] == 1 && !pads[0] && !pads[1] &&
                   !pads[2] && !pads[3] && groups == 1;
  return !pointwise && !is_depthwise(g, n);
}

static void choose_pooled_hosts(const kiln_graph *g, const bool *live, const bool *stored, const uint32_t *reader,
                                bool *inlined, uint32_t *host) {
  for (uint32_t i = 0; i < g->nnodes; i++) {
    const kiln_node *p = &g->nodes[i];
    if (!live[i] || inlined[i] || !pool_tiles_input(g, p)) continue;
    uint32_t src = p->inputs[0];
    if (stored[src] || inlined[src] || reader[src] != i) continue;
    uint32_t conv = host[src] != UINT32_MAX ? host[src] : src;
    if (!conv_in_pixel_chunks(g, &g->nodes[conv]) || g->nodes[conv].dtype != p->dtype) continue;
    host[src] = UINT32_MAX;
    host[i] = conv;
    inlined[src] = inlined[conv] = true;
  }
}

size_t kiln_fuse(const kiln_graph *g, const bool *live, const bool *stored, uint32_t max_reads, bool *inlined,
                 uint32_t *host) {
  uint32_t n = g->nnodes;
  uint32_t *uses = calloc(n + 1, sizeof *uses), *reader = malloc((n + 1) * sizeof *reader);
  bool *all_by_element = malloc(n + 1), *once = malloc(n + 1), *index_only = malloc(n + 1);
  size_t count = 0;
  if (!uses || !reader || !all_by_element || !once || !index_only) {
    free(uses), free(reader), free(all_by_element), free(once), free(index_only);
    /* An error rather than unfused code: the same graph must compile to the same code
     * (AOT objects are byte-identical), or not at all. */
    return SIZE_MAX;
  }
  for (uint32_t i = 0; i < n; i++) all_by_element[i] = once[i] = true, reader[i] = UINT32_MAX;
  for (uint32_t i = 0; i < n; i++) {
    if (!live[i]) continue;
    const kiln_node *c = &g->nodes[i];
    for (uint32_t j = 0; j < c->ninputs; j++) {
      uint32_t p = c->inputs[j];
      bool again = false; /* x * x reads x once per element: one reader */
      for (uint32_t q = 0; q < j; q++) again |= c->inputs[q] == p;
      if (again) continue;
      uses[p]++;
      reader[p] = uses[p] == 1 ? i : UINT32_MAX; /* the only reader, while there is one */
      all_by_element[p] &= reads_by_element((kiln_op)c->op);
      once[p] &= visits_once((kiln_op)c->op);
    }
  }
  for (uint32_t i = 0; i < n; i++) {
    const kiln_node *p = &g->nodes[i];
    kiln_op op = (kiln_op)p->op;
    /* a reshape is an index remap: free in any number of readers unless it would
     * recompute a fused producer in each */
    bool cheap = (op == KILN_OP_CONST && !p->data) || op == KILN_OP_IOTA || op == KILN_OP_BROADCAST_TO ||
                 (op == KILN_OP_RESHAPE && (!inlined[p->inputs[0]] || index_only[p->inputs[0]]));
    index_only[i] = cheap;
    bool single = ((kiln_ops[op].flags & EW) || op == KILN_OP_RESHAPE) && uses[i] == 1 && once[i];
    inlined[i] = live[i] && !stored[i] && uses[i] > 0 && all_by_element[i] && (cheap || single);
  }
  /* a kernel takes at most max_reads buffers: bound what each node pulls in through
   * its fused producers (uses[] is reused for the bound) and store the producer that
   * pulls in most until the bound fits */
  for (uint32_t i = 0; i < n; i++) {
    const kiln_node *c = &g->nodes[i];
    for (;;) {
      uint32_t bound = 0, worst = UINT32_MAX;
      for (uint32_t j = 0; j < c->ninputs; j++) {
        uint32_t p = c->inputs[j];
        bound += inlined[p] ? uses[p] : 1;
        if (inlined[p] && (worst == UINT32_MAX || uses[p] > uses[worst])) worst = p;
      }
      uses[i] = bound;
      if (bound <= max_reads || worst == UINT32_MAX) break;
      inlined[worst] = false;
    }
  }
  for (uint32_t i = 0; i < n; i++) {
    const kiln_node *u = &g->nodes[i];
    if (live[i] && !stored[i] && u->op == KILN_OP_UNSLICE && reader[i] != UINT32_MAX && !inlined[u->inputs[0]] &&
        depthwise_reads_unslice(g, &g->nodes[reader[i]], u))
      inlined[i] = true;
  }
  if (host) {
    choose_hosts(g, stored, uses, reader, inlined, host);
    choose_pooled_hosts(g, live, stored, reader, inlined, host);
  }
  /* A reshape of a stored buffer is a view of it: every kernel reads it through its
   * source (codegen/lower.c's value_of and operand_ptr), so it is never copied, not
   * even for a matmul, convolution or pool reading it by pointer (a Flatten before a
   * Dense layer; the flipped filter of a convolution's input gradient). */
  for (uint32_t i = 0; i < n; i++) {
    const kiln_node *r = &g->nodes[i];
    if (r->op == KILN_OP_RESHAPE && live[i] && !stored[i] && !inlined[i] && !inlined[r->inputs[0]]) inlined[i] = true;
  }
  for (uint32_t i = 0; i < n; i++) count += inlined[i];
  free(uses), free(reader), free(all_by_element), free(once), free(index_only);
  return count;
}

/* ONNX indexing and data-movement operators as kiln compositions: element-wise
 * gathers and scatters go through flat indices (sum of coordinate * stride) into
 * kiln's 1-D gather / scatter_add; masks (Trilu, EyeLike, CumSum's triangle) come
 * from iota comparisons. */
#include <math.h>
#include <string.h>
#include "frontend/onnx/onnx_impl.h"
#include "runtime/tensor_impl.h"

static kiln_shape shape_of(onnx_ctx *c, kiln_value v) { return kiln_value_shape(G, v); }

static int64_t numel(kiln_shape s) {
  int64_t k = 1;
  for (int i = 0; i < s.rank; i++) k *= s.dims[i];
  return k;
}

static bool static_shape(kiln_shape s) {
  for (int i = 0; i < s.rank; i++)
    if (s.dims[i] < 0) return false;
  return true;
}

/* Moves axis `from` of x to position `to`. */
static kiln_value move_axis(onnx_ctx *c, kiln_value x, int from, int to) {
  int r = rank_of(c, x);
  if (from == to) return x;
  int64_t perm[KILN_MAX_RANK];
  for (int i = 0, k = 0; i < r; i++) {
    if (i == to) perm[i] = from;
    else {
      if (k == from) k++;
      perm[i] = k++;
    }
  }
  return kiln_transpose(G, x, perm, r);
}

/* Indices made non-negative: i < 0 counts from the end of a dimension of size dim. */
static kiln_value wrap_index(onnx_ctx *c, kiln_value idx, int64_t dim) {
  kiln_value i64 = kiln_cast(G, idx, KILN_I64), zero = kiln_scalar(G, KILN_I64, 0);
  return kiln_select(G, kiln_less(G, i64, zero), kiln_add(G, i64, kiln_scalar(G, KILN_I64, (double)dim)), i64);
}

ONNX_HANDLER(Size) {
  kiln_shape s = shape_of(c, in[0]);
  if (!static_shape(s)) return onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "the size of a tensor with a dynamic dimension");
  int64_t k = numel(s);
  out[0] = kiln_constant(G, KILN_I64, KILN_SCALAR, &k);
  return KILN_OK;
}

/* 1 at the first maximum along the axis (before opset 13: of the flattened [outer, inner]). */
ONNX_HANDLER(Hardmax) {
  kiln_value x = in[0];
  kiln_shape s = shape_of(c, x);
  int axis = norm_axis(onnx_attr_int(n, "axis", c->opset < 13 ? 1 : -1), s.rank);
  if (axis < 0 || axis >= s.rank) return onnx_fail(c, n, KILN_ERR_INVALID, "axis out of range for rank %d", s.rank);
  if (c->opset < 13) {
    int64_t outer = 1, inner = 1;
    for (int i = 0; i < s.rank; i++) *(i < axis ? &outer : &inner) *= s.dims[i];
    kiln_value f = kiln_reshape(G, x, KILN_SHAPE(outer, inner));
    out[0] = kiln_reshape(G, kiln_one_hot(G, kiln_argmax(G, f, 1, false), inner, type_of(c, x)), s);
    return KILN_OK;
  }
  kiln_value oh = kiln_one_hot(G, kiln_argmax(G, x, axis, false), s.dims[axis], type_of(c, x));
  out[0] = move_axis(c, oh, s.rank - 1, axis);
  return KILN_OK;
}

/* A [len, len] 0/1 matrix M with M[j][i] = 1 where element j counts toward result i. */
static kiln_value cumsum_matrix(onnx_ctx *c, int64_t len, bool exclusive, bool reverse, kiln_dtype t) {
  kiln_value j = kiln_iota(G, KILN_I64, KILN_SHAPE(len, len), 0), i = kiln_iota(G, KILN_I64, KILN_SHAPE(len, len), 1);
  kiln_value m = reverse ? (exclusive ? kiln_greater(G, j, i) : kiln_logical_not(G, kiln_less(G, j, i)))
                         : (exclusive ? kiln_less(G, j, i) : kiln_logical_not(G, kiln_greater(G, j, i)));
  return kiln_cast(G, m, t);
}

/* A matrix product with a triangle of ones; integers are summed in f64 (exact below 2^53). */
ONNX_HANDLER(CumSum) {
  int64_t ax;
  int k;
  kiln_status st = onnx_const_ints(c, n, 1, &ax, 1, &k);
  if (st != KILN_OK) return st;
  kiln_value x = in[0];
  kiln_shape s = shape_of(c, x);
  int axis = norm_axis(ax, s.rank);
  if (k != 1 || axis < 0 || axis >= s.rank) return onnx_fail(c, n, KILN_ERR_INVALID, "axis out of range for rank %d", s.rank);
  kiln_dtype t = type_of(c, x), ft = kiln_dtype_is_float(t) ? t : KILN_F64;
  kiln_value xt = move_axis(c, ft == t ? x : kiln_cast(G, x, ft), axis, s.rank - 1);
  kiln_value m = cumsum_matrix(c, s.dims[axis], onnx_attr_int(n, "exclusive", 0), onnx_attr_int(n, "reverse", 0), ft);
  kiln_value y = move_axis(c, kiln_matmul(G, xt, m, false, false), s.rank - 1, axis);
  out[0] = ft == t ? y : kiln_cast(G, y, t);
  return KILN_OK;
}

/* The [rows, cols] offset col - row, for triangle and diagonal masks. */
static kiln_value diagonal_offset(onnx_ctx *c, int64_t rows, int64_t cols) {
  return kiln_sub(G, kiln_iota(G, KILN_I64, KILN_SHAPE(rows, cols), 1), kiln_iota(G, KILN_I64, KILN_SHAPE(rows, cols), 0));
}

ONNX_HANDLER(Trilu) {
  int64_t k = 0;
  int nk;
  if (HAS(1)) {
    kiln_status st = onnx_const_ints(c, n, 1, &k, 1, &nk);
    if (st != KILN_OK) return st;
  }
  kiln_value x = in[0];
  kiln_shape s = shape_of(c, x);
  if (s.rank < 2) return onnx_fail(c, n, KILN_ERR_INVALID, "input of rank %d (at least 2)", s.rank);
  kiln_value d = diagonal_offset(c, s.dims[s.rank - 2], s.dims[s.rank - 1]), kk = kiln_scalar(G, KILN_I64, (double)k);
  kiln_value keep = onnx_attr_int(n, "upper", 1) ? kiln_logical_not(G, kiln_less(G, d, kk)) : kiln_logical_not(G, kiln_greater(G, d, kk));
  out[0] = kiln_select(G, keep, x, scalar_like(c, x, 0));
  return KILN_OK;
}

ONNX_HANDLER(EyeLike) {
  kiln_shape s = shape_of(c, in[0]);
  if (s.rank != 2) return onnx_fail(c, n, KILN_ERR_INVALID, "input of rank %d (must be 2)", s.rank);
  kiln_dtype t = type_of(c, in[0]);
  int64_t want = onnx_attr_int(n, "dtype", -1);
  if (want >= 0) {
    int k = onnx_kiln_dtype(want);
    if (k < 0) return onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "dtype %lld", (long long)want);
    t = (kiln_dtype)k;
  }
  kiln_value d = diagonal_offset(c, s.dims[0], s.dims[1]);
  out[0] = kiln_cast(G, kiln_equal(G, d, kiln_scalar(G, KILN_I64, (double)onnx_attr_int(n, "k", 0))), t);
  return KILN_OK;
}

/* off + one_hot * (on - off), the new axis moved to `axis`; negative indices count from depth. */
ONNX_HANDLER(OneHot) {
  const kiln_tensor *dt = onnx_const_input(c, n, 1);
  if (!dt) return onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "input 1 must be a constant (computed at run time here)");
  int64_t depth = (int64_t)kiln_tensor_get_f64(dt, 0);
  if (depth <= 0) return onnx_fail(c, n, KILN_ERR_INVALID, "depth %lld", (long long)depth);
  kiln_value idx = in[0], values = in[2];
  int r = rank_of(c, idx) + 1, axis = norm_axis(onnx_attr_int(n, "axis", -1), r);
  if (axis < 0 || axis >= r) return onnx_fail(c, n, KILN_ERR_INVALID, "axis out of range for rank %d", r);
  kiln_dtype t = type_of(c, values);
  kiln_value off = slice_axis(c, values, 0, 0, 1, 1), on = slice_axis(c, values, 0, 1, 2, 1);
  kiln_value oh = kiln_one_hot(G, wrap_index(c, idx, depth), depth, t);
  kiln_value y = kiln_add(G, off, kiln_mul(G, oh, kiln_sub(G, on, off)));
  out[0] = move_axis(c, y, r - 1, axis);
  return KILN_OK;
}

/* start + delta * iota(n), n = max(ceil((limit - start) / delta), 0); the bounds must be known. */
ONNX_HANDLER(Range) {
  const kiln_tensor *t[3];
  for (int i = 0; i < 3; i++)
    if (!(t[i] = onnx_const_input(c, n, (size_t)i)))
      return onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "input %d must be a constant (computed at run time here)", i);
  double start = kiln_tensor_get_f64(t[0], 0), limit = kiln_tensor_get_f64(t[1], 0), delta = kiln_tensor_get_f64(t[2], 0);
  if (delta == 0) return onnx_fail(c, n, KILN_ERR_INVALID, "delta is 0");
  double steps = ceil((limit - start) / delta);
  int64_t k = steps > 0 ? (int64_t)steps : 0;
  kiln_dtype ty = kiln_tensor_dtype(t[0]);
  kiln_value i = kiln_iota(G, ty, KILN_SHAPE(k), 0);
  out[0] = kiln_add(G, kiln_scalar(G, ty, start), kiln_mul(G, i, kiln_scalar(G, ty, delta)));
  return KILN_OK;
}

/* Per axis: insert a dimension of size reps before it, broadcast, merge. */
ONNX_HANDLER(Tile) {
  int64_t reps[KILN_MAX_RANK];
  int k;
  kiln_status st = onnx_const_ints(c, n, 1, reps, KILN_MAX_RANK, &k);
  if (st != KILN_OK) return st;
  kiln_value x = in[0];
  kiln_shape s = shape_of(c, x);
  if (k != s.rank) return onnx_fail(c, n, KILN_ERR_INVALID, "%d repeats for rank %d", k, s.rank);
  if (s.rank >= KILN_MAX_RANK) return onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "rank %d", s.rank);
  for (int a = 0; a < s.rank; a++) {
    if (reps[a] < 0) return onnx_fail(c, n, KILN_ERR_INVALID, "negative repeat %lld", (long long)reps[a]);
    if (reps[a] == 1) continue;
    kiln_shape e = {.rank = s.rank + 1};
    for (int i = 0, j = 0; i < e.rank; i++) e.dims[i] = i == a ? 1 : s.dims[j++];
    x = kiln_reshape(G, x, e);
    e.dims[a] = reps[a];
    x = kiln_broadcast_to(G, x, e);
    s.dims[a] *= reps[a];
    x = kiln_reshape(G, x, s);
  }
  out[0] = x;
  return KILN_OK;
}

ONNX_HANDLER(DepthToSpace) {
  kiln_shape s = shape_of(c, in[0]);
  int64_t b = onnx_attr_int(n, "blocksize", 0);
  if (s.rank != 4 || b <= 0 || s.dims[1] % (b * b))
    return onnx_fail(c, n, KILN_ERR_INVALID, "needs NCHW input with C divisible by blocksize^2");
  int64_t N = s.dims[0], C = s.dims[1] / (b * b), H = s.dims[2], W = s.dims[3];
  bool crd = !strcmp(onnx_attr_string(n, "mode", "DCR"), "CRD");
  kiln_value x = kiln_reshape(G, in[0], crd ? KILN_SHAPE(N, C, b, b, H, W) : KILN_SHAPE(N, b, b, C, H, W));
  x = kiln_transpose(G, x, crd ? (int64_t[]){0, 1, 4, 2, 5, 3} : (int64_t[]){0, 3, 4, 1, 5, 2}, 6);
  out[0] = kiln_reshape(G, x, KILN_SHAPE(N, C, H * b, W * b));
  return KILN_OK;
}

ONNX_HANDLER(SpaceToDepth) {
  kiln_shape s = shape_of(c, in[0]);
  int64_t b = onnx_attr_int(n, "blocksize", 0);
  if (s.rank != 4 || b <= 0 || s.dims[2] % b || s.dims[3] % b)
    return onnx_fail(c, n, KILN_ERR_INVALID, "needs NCHW input with H and W divisible by blocksize");
  int64_t N = s.dims[0], C = s.dims[1], H = s.dims[2] / b, W = s.dims[3] / b;
  kiln_value x = kiln_reshape(G, in[0], KILN_SHAPE(N, C, H, b, W, b));
  x = kiln_transpose(G, x, (int64_t[]){0, 3, 5, 1, 2, 4}, 6);
  out[0] = kiln_reshape(G, x, KILN_SHAPE(N, C * b * b, H, W));
  return KILN_OK;
}

/* ---- element-wise gathers and scatters through flat indices ---- */

/* The flat offsets into a tensor of shape `data` of the elements addressed by
 * `idx` along `axis`, every other coordinate being the element's own (shape of idx). */
static kiln_value flat_elements(onnx_ctx *c, kiln_value idx, kiln_shape data, int axis) {
  kiln_shape is = shape_of(c, idx);
  int64_t stride[KILN_MAX_RANK];
  kiln_strides(data.rank, data.dims, stride);
  kiln_value flat = kiln_mul(G, wrap_index(c, idx, data.dims[axis]), kiln_scalar(G, KILN_I64, (double)stride[axis]));
  for (int d = 0; d < is.rank; d++)
    if (d != axis) flat = kiln_add(G, flat, kiln_mul(G, kiln_iota(G, KILN_I64, is, d), kiln_scalar(G, KILN_I64, (double)stride[d])));
  return kiln_reshape(G, flat, KILN_SHAPE(numel(is)));
}

ONNX_HANDLER(GatherElements) {
  kiln_shape ds = shape_of(c, in[0]), is = shape_of(c, in[1]);
  int axis = norm_axis(onnx_attr_int(n, "axis", 0), ds.rank);
  if (is.rank != ds.rank || axis < 0 || axis >= ds.rank || !static_shape(ds))
    return onnx_fail(c, n, KILN_ERR_INVALID, "indices and data must have the same rank and a valid axis");
  kiln_value flat = kiln_reshape(G, in[0], KILN_SHAPE(numel(ds)));
  out[0] = kiln_reshape(G, kiln_gather(G, flat, flat_elements(c, in[1], ds, axis), 0), is);
  return KILN_OK;
}

/* data with the updates at flat offsets `at`: replaced (reduction none; duplicate offsets
 * are undefined in ONNX) or added. */
static kiln_status scatter_flat(onnx_ctx *c, const Onnx__NodeProto *n, kiln_value data, kiln_value at, kiln_value updates,
                                kiln_value *out) {
  const char *red = onnx_attr_string(n, "reduction", "none");
  kiln_shape ds = shape_of(c, data);
  int64_t total = numel(ds), k = numel(shape_of(c, at));
  kiln_shape flat_s = KILN_SHAPE(total);
  kiln_value sum = kiln_scatter_add(G, at, kiln_reshape(G, updates, KILN_SHAPE(k)), flat_s, 0);
  kiln_value flat = kiln_reshape(G, data, flat_s);
  if (!strcmp(red, "add")) {
    out[0] = kiln_reshape(G, kiln_add(G, flat, sum), ds);
  } else if (!strcmp(red, "none")) {
    kiln_value hit = kiln_scatter_add(G, at, kiln_fill(G, KILN_F32, KILN_SHAPE(k), 1), flat_s, 0);
    out[0] = kiln_reshape(G, kiln_select(G, kiln_greater(G, hit, kiln_scalar(G, KILN_F32, 0)), sum, flat), ds);
  } else {
    return onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "reduction=%s (none and add are supported)", red);
  }
  return KILN_OK;
}

ONNX_HANDLER(ScatterElements) {
  kiln_shape ds = shape_of(c, in[0]), is = shape_of(c, in[1]);
  int axis = norm_axis(onnx_attr_int(n, "axis", 0), ds.rank);
  if (is.rank != ds.rank || axis < 0 || axis >= ds.rank || !static_shape(ds))
    return onnx_fail(c, n, KILN_ERR_INVALID, "indices and data must have the same rank and a valid axis");
  return scatter_flat(c, n, in[0], flat_elements(c, in[1], ds, axis), in[2], out);
}

ONNX_HANDLER(Scatter) { return onnx_op_ScatterElements(c, n, in, nin, out); }

/* Offsets into data's first b + k dims (flattened) of the index tuples in idx [..., k],
 * the first b (batch) dims of idx and data being shared; shape idx.shape[:-1]. */
static kiln_value flat_tuples(onnx_ctx *c, kiln_value idx, kiln_shape data, int b, int k) {
  kiln_shape is = shape_of(c, idx), lead = {.rank = is.rank - 1};
  memcpy(lead.dims, is.dims, sizeof(int64_t) * (size_t)lead.rank);
  int64_t stride[KILN_MAX_RANK];
  kiln_strides(b + k, data.dims, stride);
  kiln_value flat = kiln_fill(G, KILN_I64, lead, 0);
  for (int d = 0; d < b; d++)
    flat = kiln_add(G, flat, kiln_mul(G, kiln_iota(G, KILN_I64, lead, d), kiln_scalar(G, KILN_I64, (double)stride[d])));
  for (int j = 0; j < k; j++) {
    kiln_value comp = kiln_reshape(G, slice_axis(c, idx, is.rank - 1, j, j + 1, 1), lead);
    flat = kiln_add(G, flat, kiln_mul(G, wrap_index(c, comp, data.dims[b + j]), kiln_scalar(G, KILN_I64, (double)stride[b + j])));
  }
  return flat;
}

/* data as [prod(dims[:m]), dims[m:]...] */
static kiln_value merge_leading(onnx_ctx *c, kiln_value x, int m) {
  kiln_shape s = shape_of(c, x), r = {.rank = s.rank - m + 1};
  r.dims[0] = 1;
  for (int i = 0; i < m; i++) r.dims[0] *= s.dims[i];
  for (int i = m; i < s.rank; i++) r.dims[i - m + 1] = s.dims[i];
  return kiln_reshape(G, x, r);
}

ONNX_HANDLER(GatherND) {
  kiln_shape ds = shape_of(c, in[0]), is = shape_of(c, in[1]);
  int b = (int)onnx_attr_int(n, "batch_dims", 0), k = is.rank ? (int)is.dims[is.rank - 1] : -1;
  if (k < 1 || b < 0 || b + k > ds.rank || b >= is.rank || !static_shape(ds) || !static_shape(is))
    return onnx_fail(c, n, KILN_ERR_INVALID, "indices of shape [..., %d] do not fit data of rank %d with batch_dims %d", k, ds.rank, b);
  kiln_value at = flat_tuples(c, in[1], ds, b, k);
  out[0] = kiln_gather(G, merge_leading(c, in[0], b + k), at, 0);
  return KILN_OK;
}

ONNX_HANDLER(ScatterND) {
  kiln_shape ds = shape_of(c, in[0]), is = shape_of(c, in[1]);
  int k = is.rank ? (int)is.dims[is.rank - 1] : -1;
  if (k < 1 || k > ds.rank || !static_shape(ds) || !static_shape(is))
    return onnx_fail(c, n, KILN_ERR_INVALID, "indices of shape [..., %d] do not fit data of rank %d", k, ds.rank);
  /* a tuple addresses a whole slice of data: offsets of every element in it */
  kiln_value at = kiln_reshape(G, flat_tuples(c, in[1], ds, 0, k), KILN_SHAPE(numel(is) / k, 1));
  int64_t inner = 1;
  for (int i = k; i < ds.rank; i++) inner *= ds.dims[i];
  at = kiln_add(G, kiln_mul(G, at, kiln_scalar(G, KILN_I64, (double)inner)), kiln_iota(G, KILN_I64, KILN_SHAPE(1, inner), 1));
  return scatter_flat(c, n, in[0], kiln_reshape(G, at, KILN_SHAPE(numel(is) / k * inner)), in[2], out);
}

/* ---- Einsum: broadcast products and sums over a shared letter order ---- */

typedef struct term {
  char letters[KILN_MAX_RANK + 1];
  int rank;
} term;

/* Parses one term, expanding "..." to the uppercase letters A, B, ... (one per
 * ellipsis dimension; every input's ellipsis must cover as many dims). rank < 0:
 * the output term, whose ellipsis takes *ell dims. */
static bool parse_term(const char *p, size_t len, int rank, int *ell, term *t) {
  int named = 0;
  for (size_t i = 0; i < len; i++) named += p[i] >= 'a' && p[i] <= 'z';
  t->rank = 0;
  for (size_t i = 0; i < len; i++) {
    if (p[i] == '.' && i + 3 <= len && !strncmp(p + i, "...", 3)) {
      int k = rank >= 0 ? rank - named : (*ell > 0 ? *ell : 0);
      if (k < 0 || (rank >= 0 && *ell >= 0 && *ell != k) || t->rank + k > KILN_MAX_RANK) return false;
      if (rank >= 0) *ell = k;
      for (int e = 0; e < k; e++) t->letters[t->rank++] = (char)('A' + e);
      i += 2;
    } else if (p[i] >= 'a' && p[i] <= 'z') {
      if (t->rank >= KILN_MAX_RANK) return false;
      t->letters[t->rank++] = p[i];
    } else if (p[i] != ' ') {
      return false;
    }
  }
  t->letters[t->rank] = 0;
  return true;
}

/* Removes a repeated letter (a diagonal) by masking with the identity and summing. */
static kiln_value take_diagonals(onnx_ctx *c, kiln_value x, term *t) {
  for (int p = 0; p < t->rank; p++)
    for (int q = p + 1; q < t->rank; q++) {
      if (t->letters[p] != t->letters[q]) continue;
      kiln_shape s = shape_of(c, x);
      kiln_value eye = kiln_cast(G, kiln_equal(G, kiln_iota(G, KILN_I64, s, p), kiln_iota(G, KILN_I64, s, q)), type_of(c, x));
      x = kiln_reduce_sum(G, kiln_mul(G, x, eye), (int64_t[]){q}, 1, false);
      memmove(t->letters + q, t->letters + q + 1, (size_t)(t->rank - q));
      t->rank--;
      q = p;
    }
  return x;
}

ONNX_HANDLER(Einsum) {
  const char *eq = onnx_attr_string(n, "equation", "");
  const char *arrow = strstr(eq, "->");
  size_t lhs_len = arrow ? (size_t)(arrow - eq) : strlen(eq);
  term terms[8], res;
  int ell = -1, nt = 0;
  const char *p = eq;
  while (p < eq + lhs_len) {
    const char *comma = memchr(p, ',', (size_t)(eq + lhs_len - p));
    size_t len = comma ? (size_t)(comma - p) : (size_t)(eq + lhs_len - p);
    if (nt >= 8 || (size_t)nt >= nin || !parse_term(p, len, rank_of(c, in[nt]), &ell, &terms[nt]) ||
        terms[nt].rank != rank_of(c, in[nt]))
      return onnx_fail(c, n, KILN_ERR_INVALID, "equation '%s' does not match the inputs", eq);
    nt++;
    p += len + (comma != NULL);
  }
  if ((size_t)nt != nin) return onnx_fail(c, n, KILN_ERR_INVALID, "equation '%s' names %d inputs, the node has %zu", eq, nt, nin);
  if (arrow) {
    if (!parse_term(arrow + 2, strlen(arrow + 2), -1, &ell, &res)) return onnx_fail(c, n, KILN_ERR_INVALID, "bad output in '%s'", eq);
  } else { /* implicit: the ellipsis dims, then the letters used once, alphabetically */
    res.rank = 0;
    for (int e = 0; e < (ell > 0 ? ell : 0); e++) res.letters[res.rank++] = (char)('A' + e);
    for (char ch = 'a'; ch <= 'z'; ch++) {
      int uses = 0;
      for (int i = 0; i < nt; i++)
        for (int j = 0; j < terms[i].rank; j++) uses += terms[i].letters[j] == ch;
      if (uses == 1 && res.rank < KILN_MAX_RANK) res.letters[res.rank++] = ch;
    }
    res.letters[res.rank] = 0;
  }
  /* the shared order: output letters, then the contracted ones */
  char order[KILN_MAX_RANK + 1];
  int no = res.rank;
  memcpy(order, res.letters, (size_t)no);
  for (int i = 0; i < nt; i++)
    for (int j = 0; j < terms[i].rank; j++)
      if (!memchr(order, terms[i].letters[j], (size_t)no)) {
        if (no >= KILN_MAX_RANK) return onnx_fail(c, n, KILN_ERR_UNSUPPORTED, "more than %d distinct indices", KILN_MAX_RANK);
        order[no++] = terms[i].letters[j];
      }
  kiln_value acc = {KILN_NONE};
  for (int i = 0; i < nt; i++) {
    kiln_value x = take_diagonals(c, in[i], &terms[i]);
    kiln_shape s = shape_of(c, x), full = {.rank = no};
    int64_t perm[KILN_MAX_RANK];
    int k = 0;
    for (int o = 0; o < no; o++) {
      const char *at = memchr(terms[i].letters, order[o], (size_t)terms[i].rank);
      full.dims[o] = at ? s.dims[at - terms[i].letters] : 1;
      if (at) perm[k++] = at - terms[i].letters;
    }
    x = kiln_reshape(G, kiln_transpose(G, x, perm, k), full);
    acc = i ? kiln_mul(G, acc, x) : x;
  }
  int64_t axes[KILN_MAX_RANK];
  for (int o = res.rank; o < no; o++) axes[o - res.rank] = o;
  out[0] = no > res.rank ? kiln_reduce_sum(G, acc, axes, no - res.rank, false) : acc;
  return KILN_OK;
}

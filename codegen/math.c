/* Scalar semantics of every elementwise op, as LLVM IR. Kernels call these on
 * scalars inside loops; the loop vectorizer widens them, which is why f32
 * transcendentals are written out as branch-free polynomials (Cephes' single
 * precision approximations) instead of calls to libm, which would stay scalar.
 *
 * Accuracy, measured against double-precision libm on 200,000 points per range by
 * tests/test_codegen.c, which asserts these bounds:
 *   exp     f32: max relative error 1.5e-7 on [-87, 88] (measured 8.1e-8); 0 below -104, inf above 88.73
 *   log     f32: max absolute error 1e-7 on [0.5, 2] (measured 3.9e-8), 5e-6 on [1e-30, 1e30]
 *                (measured 3.8e-6, i.e. 5.5e-8 relative); denormals, 0, inf, NaN handled
 *   tanh    f32: max absolute error 1.5e-7 on [-20, 20] (measured 6.8e-8)
 *   sigmoid f32: max absolute error 1.5e-7 on [-30, 30] (measured 8.9e-8)
 * f64 transcendentals call the C library (exp, log, tanh, sin, cos, pow) and
 * f32 sin/cos/pow use LLVM intrinsics, which become libm calls too.
 * The integer semantics (wrap-around, x/0 = 0, saturating casts) match ir/eval.c. */
#include "codegen/cg.h"

static LLVMValueRef fconst(cg *c, LLVMTypeRef t, double v) { return LLVMConstReal(t, v); }
static LLVMValueRef fmul(cg *c, LLVMValueRef a, LLVMValueRef b) { return cg_fast(LLVMBuildFMul(c->b, a, b, ""), false); }
static LLVMValueRef fadd(cg *c, LLVMValueRef a, LLVMValueRef b) { return cg_fast(LLVMBuildFAdd(c->b, a, b, ""), false); }
static LLVMValueRef fsub(cg *c, LLVMValueRef a, LLVMValueRef b) { return cg_fast(LLVMBuildFSub(c->b, a, b, ""), false); }
static LLVMValueRef select_(cg *c, LLVMValueRef cond, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildSelect(c->b, cond, a, b, "");
}
static LLVMValueRef fcmp(cg *c, LLVMRealPredicate p, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildFCmp(c->b, p, a, b, "");
}
static LLVMValueRef intr1(cg *c, const char *name, LLVMValueRef x) {
  return cg_call_intrinsic(c, name, LLVMTypeOf(x), &x, 1);
}
static LLVMValueRef intr2(cg *c, const char *name, LLVMValueRef x, LLVMValueRef y) {
  LLVMValueRef a[2] = {x, y};
  return cg_call_intrinsic(c, name, LLVMTypeOf(x), a, 2);
}

/* Horner evaluation of coef[0]*x^(n-1) + ... + coef[n-1]. */
static LLVMValueRef horner(cg *c, LLVMValueRef x, const double *coef, int n) {
  LLVMTypeRef t = LLVMTypeOf(x);
  LLVMValueRef p = fconst(c, t, coef[0]);
  for (int i = 1; i < n; i++) p = fadd(c, fmul(c, p, x), fconst(c, t, coef[i]));
  return p;
}

/* 2^n for an i32 n in [-126, 127], built in the exponent field. */
static LLVMValueRef pow2i(cg *c, LLVMValueRef n) {
  LLVMValueRef bits = LLVMBuildShl(c->b, LLVMBuildAdd(c->b, n, LLVMConstInt(c->i32, 127, 0), ""),
                                   LLVMConstInt(c->i32, 23, 0), "");
  return LLVMBuildBitCast(c->b, bits, c->f32, "");
}

LLVMValueRef cg_exp_f32(cg *c, LLVMValueRef x) {
  static const double P[] = {1.9875691500E-4, 1.3981999507E-3, 8.3334519073E-3,
                             4.1665795894E-2, 1.6666665459E-1, 5.0000001201E-1};
  LLVMTypeRef t = c->f32;
  LLVMValueRef xc = intr2(c, "llvm.minnum", intr2(c, "llvm.maxnum", x, fconst(c, t, -104.0)), fconst(c, t, 88.8));
  LLVMValueRef n = intr1(c, "llvm.rint", fmul(c, xc, fconst(c, t, 1.44269504088896341)));
  /* Cody-Waite: ln2 split so n*C1 is exact. */
  LLVMValueRef r = fsub(c, xc, fmul(c, n, fconst(c, t, 0.693359375)));
  r = fsub(c, r, fmul(c, n, fconst(c, t, -2.12194440e-4)));
  LLVMValueRef p = horner(c, r, P, 6);
  LLVMValueRef y = fadd(c, fadd(c, fmul(c, fmul(c, p, r), r), r), fconst(c, t, 1.0));
  /* Scale by 2^n in two steps so n = 128 or n < -126 stay representable. */
  LLVMValueRef ni = LLVMBuildFPToSI(c->b, n, c->i32, "");
  LLVMValueRef n1 = LLVMBuildAShr(c->b, ni, LLVMConstInt(c->i32, 1, 0), "");
  LLVMValueRef n2 = LLVMBuildSub(c->b, ni, n1, "");
  y = LLVMBuildFMul(c->b, LLVMBuildFMul(c->b, y, pow2i(c, n1), ""), pow2i(c, n2), "");
  return select_(c, fcmp(c, LLVMRealUNO, x, x), x, y);
}

LLVMValueRef cg_log_f32(cg *c, LLVMValueRef x) {
  static const double P[] = {7.0376836292E-2, -1.1514610310E-1, 1.1676998740E-1, -1.2420140846E-1, 1.4249322787E-1,
                             -1.6668057665E-1, 2.0000714765E-1, -2.4999993993E-1, 3.3333331174E-1};
  LLVMTypeRef t = c->f32, i32 = c->i32;
  /* Denormals: scale into the normal range first. */
  LLVMValueRef den = fcmp(c, LLVMRealOLT, x, fconst(c, t, 1.17549435e-38));
  LLVMValueRef xs = select_(c, den, fmul(c, x, fconst(c, t, 8388608.0)), x);
  LLVMValueRef eadj = select_(c, den, LLVMConstInt(i32, (unsigned long long)-23, 1), LLVMConstInt(i32, 0, 0));
  LLVMValueRef bits = LLVMBuildBitCast(c->b, xs, i32, "");
  LLVMValueRef e = LLVMBuildAnd(c->b, LLVMBuildLShr(c->b, bits, LLVMConstInt(i32, 23, 0), ""), LLVMConstInt(i32, 0xff, 0), "");
  e = LLVMBuildAdd(c->b, LLVMBuildSub(c->b, e, LLVMConstInt(i32, 126, 0), ""), eadj, "");
  LLVMValueRef mb = LLVMBuildOr(c->b, LLVMBuildAnd(c->b, bits, LLVMConstInt(i32, 0x007fffff, 0), ""),
                                LLVMConstInt(i32, 0x3f000000, 0), "");
  LLVMValueRef m = LLVMBuildBitCast(c->b, mb, t, ""); /* [0.5, 1) */
  LLVMValueRef small = fcmp(c, LLVMRealOLT, m, fconst(c, t, 0.707106781186547524));
  LLVMValueRef ef = LLVMBuildSIToFP(c->b, e, t, "");
  ef = select_(c, small, fsub(c, ef, fconst(c, t, 1.0)), ef);
  m = select_(c, small, fsub(c, fadd(c, m, m), fconst(c, t, 1.0)), fsub(c, m, fconst(c, t, 1.0)));
  LLVMValueRef z = fmul(c, m, m);
  LLVMValueRef y = fmul(c, fmul(c, horner(c, m, P, 9), m), z);
  y = fadd(c, y, fmul(c, ef, fconst(c, t, -2.12194440e-4)));
  y = fsub(c, y, fmul(c, z, fconst(c, t, 0.5)));
  LLVMValueRef res = fadd(c, fadd(c, m, y), fmul(c, ef, fconst(c, t, 0.693359375)));
  LLVMValueRef inf = fconst(c, t, __builtin_inf());
  res = select_(c, fcmp(c, LLVMRealOEQ, x, inf), inf, res);
  res = select_(c, fcmp(c, LLVMRealOEQ, x, fconst(c, t, 0.0)), fconst(c, t, -__builtin_inf()), res);
  return select_(c, fcmp(c, LLVMRealULT, x, fconst(c, t, 0.0)), fconst(c, t, __builtin_nan("")), res);
}

static LLVMValueRef tanh_f32(cg *c, LLVMValueRef x) {
  static const double P[] = {-5.70498872745E-3, 2.06390887954E-2, -5.37397155531E-2, 1.33314422036E-1,
                             -3.33332819422E-1};
  LLVMTypeRef t = c->f32;
  LLVMValueRef ax = intr1(c, "llvm.fabs", x);
  LLVMValueRef z = fmul(c, x, x);
  LLVMValueRef small = fadd(c, fmul(c, fmul(c, horner(c, z, P, 5), z), x), x);
  LLVMValueRef e = cg_exp_f32(c, fmul(c, ax, fconst(c, t, 2.0)));
  LLVMValueRef big = fsub(c, fconst(c, t, 1.0), LLVMBuildFDiv(c->b, fconst(c, t, 2.0), fadd(c, e, fconst(c, t, 1.0)), ""));
  big = intr2(c, "llvm.copysign", big, x);
  return select_(c, fcmp(c, LLVMRealOLT, ax, fconst(c, t, 0.625)), small, big);
}

static LLVMValueRef exp_any(cg *c, kiln_dtype t, LLVMValueRef x) {
  return t == KILN_F32 ? cg_exp_f32(c, x) : cg_call_libm(c, "exp", c->f64, &x, 1);
}

static LLVMValueRef bool_of(cg *c, LLVMValueRef i1) { return LLVMBuildZExt(c->b, i1, c->i8, ""); }

static LLVMValueRef unary_float(cg *c, kiln_op op, kiln_dtype t, LLVMValueRef x) {
  LLVMTypeRef ty = cg_type(c, t);
  LLVMValueRef zero = fconst(c, ty, 0.0), one = fconst(c, ty, 1.0);
  switch (op) {
  case KILN_OP_NEG: return LLVMBuildFNeg(c->b, x, "");
  case KILN_OP_ABS: return intr1(c, "llvm.fabs", x);
  case KILN_OP_EXP: return exp_any(c, t, x);
  case KILN_OP_LOG: return t == KILN_F32 ? cg_log_f32(c, x) : cg_call_libm(c, "log", ty, &x, 1);
  case KILN_OP_SQRT: return intr1(c, "llvm.sqrt", x);
  case KILN_OP_RSQRT: return LLVMBuildFDiv(c->b, one, intr1(c, "llvm.sqrt", x), "");
  case KILN_OP_TANH: return t == KILN_F32 ? tanh_f32(c, x) : cg_call_libm(c, "tanh", ty, &x, 1);
  case KILN_OP_SIGMOID:
    return LLVMBuildFDiv(c->b, one, fadd(c, one, exp_any(c, t, LLVMBuildFNeg(c->b, x, ""))), "");
  case KILN_OP_RELU: return select_(c, fcmp(c, LLVMRealOGT, x, zero), x, zero);
  case KILN_OP_SIN: return t == KILN_F32 ? intr1(c, "llvm.sin", x) : cg_call_libm(c, "sin", ty, &x, 1);
  case KILN_OP_COS: return t == KILN_F32 ? intr1(c, "llvm.cos", x) : cg_call_libm(c, "cos", ty, &x, 1);
  case KILN_OP_FLOOR: return intr1(c, "llvm.floor", x);
  case KILN_OP_CEIL: return intr1(c, "llvm.ceil", x);
  case KILN_OP_SIGN:
    return select_(c, fcmp(c, LLVMRealOGT, x, zero), one,
                   select_(c, fcmp(c, LLVMRealOLT, x, zero), fconst(c, ty, -1.0), x));
  default: return NULL;
  }
}

static LLVMValueRef unary_int(cg *c, kiln_op op, kiln_dtype t, LLVMValueRef x) {
  LLVMTypeRef ty = cg_type(c, t);
  LLVMValueRef zero = LLVMConstInt(ty, 0, 0);
  switch (op) {
  case KILN_OP_NEG: return LLVMBuildSub(c->b, zero, x, "");
  case KILN_OP_ABS:
    return select_(c, LLVMBuildICmp(c->b, LLVMIntSLT, x, zero, ""), LLVMBuildSub(c->b, zero, x, ""), x);
  case KILN_OP_RELU: return select_(c, LLVMBuildICmp(c->b, LLVMIntSGT, x, zero, ""), x, zero);
  case KILN_OP_SIGN:
    return LLVMBuildSub(c->b, LLVMBuildZExt(c->b, LLVMBuildICmp(c->b, LLVMIntSGT, x, zero, ""), ty, ""),
                        LLVMBuildZExt(c->b, LLVMBuildICmp(c->b, LLVMIntSLT, x, zero, ""), ty, ""), "");
  case KILN_OP_NOT: return bool_of(c, LLVMBuildICmp(c->b, LLVMIntEQ, x, zero, ""));
  default: return NULL;
  }
}

LLVMValueRef cg_unary(cg *c, kiln_op op, kiln_dtype t, LLVMValueRef x) {
  return kiln_dtype_is_float(t) ? unary_float(c, op, t, x) : unary_int(c, op, t, x);
}

LLVMValueRef cg_binary(cg *c, kiln_op op, kiln_dtype t, LLVMValueRef a, LLVMValueRef b) {
  LLVMTypeRef ty = cg_type(c, t);
  if (kiln_dtype_is_float(t)) {
    switch (op) {
    case KILN_OP_ADD: return fadd(c, a, b);
    case KILN_OP_SUB: return fsub(c, a, b);
    case KILN_OP_MUL: return fmul(c, a, b);
    case KILN_OP_DIV: return LLVMBuildFDiv(c->b, a, b, "");
    case KILN_OP_POW: {
      if (t == KILN_F32) return intr2(c, "llvm.pow", a, b);
      LLVMValueRef args[2] = {a, b};
      return cg_call_libm(c, "pow", ty, args, 2);
    }
    case KILN_OP_MAX: return intr2(c, "llvm.maxnum", a, b);
    case KILN_OP_MIN: return intr2(c, "llvm.minnum", a, b);
    case KILN_OP_EQUAL: return bool_of(c, fcmp(c, LLVMRealOEQ, a, b));
    case KILN_OP_LESS: return bool_of(c, fcmp(c, LLVMRealOLT, a, b));
    case KILN_OP_GREATER: return bool_of(c, fcmp(c, LLVMRealOGT, a, b));
    default: return NULL;
    }
  }
  LLVMValueRef zero = LLVMConstInt(ty, 0, 0);
  switch (op) {
  case KILN_OP_ADD: return LLVMBuildAdd(c->b, a, b, "");
  case KILN_OP_SUB: return LLVMBuildSub(c->b, a, b, "");
  case KILN_OP_MUL: return LLVMBuildMul(c->b, a, b, "");
  case KILN_OP_DIV: {
    /* x/0 = 0 and INT_MIN/-1 wraps, so the division never traps. */
    LLVMValueRef is0 = LLVMBuildICmp(c->b, LLVMIntEQ, b, zero, "");
    LLVMValueRef ism1 = LLVMBuildICmp(c->b, LLVMIntEQ, b, LLVMConstAllOnes(ty), "");
    LLVMValueRef safe = select_(c, LLVMBuildOr(c->b, is0, ism1, ""), LLVMConstInt(ty, 1, 0), b);
    LLVMValueRef q = LLVMBuildSDiv(c->b, a, safe, "");
    q = select_(c, ism1, LLVMBuildSub(c->b, zero, a, ""), q);
    return select_(c, is0, zero, q);
  }
  case KILN_OP_MAX: return select_(c, LLVMBuildICmp(c->b, LLVMIntSGT, a, b, ""), a, b);
  case KILN_OP_MIN: return select_(c, LLVMBuildICmp(c->b, LLVMIntSLT, a, b, ""), a, b);
  case KILN_OP_EQUAL: return bool_of(c, LLVMBuildICmp(c->b, LLVMIntEQ, a, b, ""));
  case KILN_OP_LESS: return bool_of(c, LLVMBuildICmp(c->b, LLVMIntSLT, a, b, ""));
  case KILN_OP_GREATER: return bool_of(c, LLVMBuildICmp(c->b, LLVMIntSGT, a, b, ""));
  case KILN_OP_AND: return LLVMBuildAnd(c->b, a, b, "");
  case KILN_OP_OR: return LLVMBuildOr(c->b, a, b, "");
  default: return NULL;
  }
}

LLVMValueRef cg_cast(cg *c, kiln_dtype from, kiln_dtype to, LLVMValueRef x) {
  LLVMTypeRef ty = cg_type(c, to);
  if (from == to) return x;
  if (to == KILN_BOOL) {
    if (kiln_dtype_is_float(from)) return bool_of(c, fcmp(c, LLVMRealUNE, x, fconst(c, LLVMTypeOf(x), 0.0)));
    return bool_of(c, LLVMBuildICmp(c->b, LLVMIntNE, x, LLVMConstInt(LLVMTypeOf(x), 0, 0), ""));
  }
  if (kiln_dtype_is_float(to)) {
    if (kiln_dtype_is_float(from)) return LLVMBuildFPCast(c->b, x, ty, "");
    return from == KILN_BOOL ? LLVMBuildUIToFP(c->b, x, ty, "") : LLVMBuildSIToFP(c->b, x, ty, "");
  }
  if (kiln_dtype_is_float(from)) return cg_call_intrinsic2(c, "llvm.fptosi.sat", ty, LLVMTypeOf(x), &x, 1);
  if (from == KILN_BOOL) return LLVMBuildZExt(c->b, x, ty, "");
  return LLVMBuildIntCast2(c->b, x, ty, 1, "");
}

LLVMValueRef cg_fill_value(cg *c, kiln_dtype t, double v) {
  if (kiln_dtype_is_float(t)) return LLVMConstReal(cg_type(c, t), v);
  if (t == KILN_BOOL) return LLVMConstInt(c->i8, v != 0, 0);
  return LLVMConstInt(cg_type(c, t), (unsigned long long)kiln_float_to_int(v, t), 1);
}

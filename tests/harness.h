/* Shared test helpers: a seeded RNG, random input tensors, tolerant comparison,
 * and "run the graph through the evaluator and the JIT and compare". */
#ifndef KILN_TEST_HARNESS_H
#define KILN_TEST_HARNESS_H
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include "ir/ir.h"
#include "kiln/model.h"

typedef struct trng {
  uint64_t s;
} trng;
uint64_t trng_next(trng *r);
int64_t trng_int(trng *r, int64_t lo, int64_t hi); /* inclusive */
double trng_real(trng *r, double lo, double hi);
/* One of the values in a list. */
int64_t trng_pick(trng *r, const int64_t *vals, int n);

/* A tensor of random values in [lo, hi] (integers: inclusive; bool: 0/1). */
kiln_tensor *random_tensor(trng *r, kiln_dtype t, int rank, const int64_t *dims, double lo, double hi);

/* Returns 0 when equal within |a-b| <= atol + rtol*|b| (NaN==NaN, inf==inf), else
 * prints the first mismatch and returns 1. */
int compare_tensors(const char *what, const kiln_tensor *got, const kiln_tensor *want, double rtol, double atol);

/* The whole file as a NUL-terminated string (caller frees); fails the test if unreadable. */
char *read_text_file(const char *path);

/* kiln_model_summary's table as a string (caller frees); fails the test if it fails. */
char *model_summary_text(kiln_model *m);

/* Evaluates g with the reference and the JIT on inputs and compares every output. */
int check_graph(const char *what, const kiln_graph *g, kiln_tensor **inputs, size_t nin, double rtol, double atol);
#endif

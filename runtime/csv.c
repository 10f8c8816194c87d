/* The CSV loader: numbers only, read in one pass into a growing buffer. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "ir/ir.h"
#include "kiln/data.h"
#include "runtime/tensor_impl.h"

static kiln_status parse_error(const char *path, size_t line, size_t col, const char *what) {
  return kiln_set_error(KILN_ERR_PARSE, "%s:%zu: column %zu: %s", path, line, col + 1, what);
}

kiln_status kiln_csv_load(const char *path, const kiln_csv_options *opts, kiln_tensor **x, kiln_tensor **y) {
  if (!path || !x) return kiln_set_error(KILN_ERR_INVALID, "csv_load: NULL argument");
  *x = NULL;
  if (y) *y = NULL;
  kiln_csv_options o = opts ? *opts : (kiln_csv_options){.label_column = -1};
  char delim = o.delimiter ? o.delimiter : ',';
  if (o.label_column >= 0 && !y) return kiln_set_error(KILN_ERR_INVALID, "csv_load: label_column set but y is NULL");
  unsigned char *text;
  size_t len;
  kiln_status st = kiln_read_file(path, &text, &len);
  if (st != KILN_OK) return st;
  double *vals = NULL;
  size_t n = 0, cap = 0, cols = 0, rows = 0, line = 0;
  char *p = (char *)text, *end = p + len;
  while (st == KILN_OK && p < end) {
    char *eol = memchr(p, '\n', (size_t)(end - p));
    if (!eol) eol = end;
    line++;
    char *stop = eol > p && eol[-1] == '\r' ? eol - 1 : eol;
    bool blank = true;
    for (char *q = p; q < stop; q++) blank &= *q == ' ' || *q == '\t';
    if (line <= (size_t)(o.skip_lines > 0 ? o.skip_lines : 0) + (o.header ? 1 : 0) || blank) {
      p = eol + 1;
      continue;
    }
    size_t col = 0;
    for (char *q = p; st == KILN_OK; col++) {
      char *cell_end = q;
      while (cell_end < stop && *cell_end != delim) cell_end++;
      char buf[64];
      size_t cl = (size_t)(cell_end - q);
      while (cl && (*q == ' ' || *q == '\t')) q++, cl--;
      while (cl && (q[cl - 1] == ' ' || q[cl - 1] == '\t')) cl--;
      if (!cl || cl >= sizeof buf) {
        st = parse_error(path, line, col, cl ? "cell too long" : "empty cell");
        break;
      }
      memcpy(buf, q, cl), buf[cl] = 0;
      char *e;
      errno = 0;
      double v = strtod(buf, &e);
      if (*e || (errno && !isfinite(v))) {
        st = parse_error(path, line, col, "not a number");
        break;
      }
      if (n == cap) {
        cap = cap ? cap * 2 : 1024;
        double *nv = realloc(vals, sizeof *nv * cap);
        if (!nv) {
          st = kiln_set_error(KILN_ERR_NOMEM, "csv_load: out of memory");
          break;
        }
        vals = nv;
      }
      vals[n++] = v;
      if (cell_end >= stop) {
        col++;
        break;
      }
      q = cell_end + 1;
    }
    if (st == KILN_OK && rows && col != cols) {
      char msg[96];
      snprintf(msg, sizeof msg, "row has %zu cells, the first row %zu", col, cols);
      st = parse_error(path, line, col - 1, msg);
    }
    if (st == KILN_OK && !rows && o.label_column >= 0 && (size_t)o.label_column >= col)
      st = kiln_set_error(KILN_ERR_INVALID, "%s: label_column %d but rows have %zu columns", path, o.label_column, col);
    cols = col;
    rows++;
    p = eol + 1;
  }
  free(text);
  if (st == KILN_OK && !rows) st = kiln_set_error(KILN_ERR_PARSE, "%s: no data rows", path);
  size_t fcols = cols - (o.label_column >= 0);
  if (st == KILN_OK) {
    *x = kiln_tensor_new(KILN_F32, 2, (int64_t[]){(int64_t)rows, (int64_t)fcols});
    if (o.label_column >= 0) *y = kiln_tensor_new(o.label_dtype, 1, (int64_t[]){(int64_t)rows});
    if (!*x || (o.label_column >= 0 && !*y)) st = kiln_set_error(KILN_ERR_NOMEM, "csv_load: out of memory");
  }
  for (size_t r = 0; st == KILN_OK && r < rows; r++) {
    size_t k = 0;
    for (size_t c = 0; c < cols; c++) {
      double v = vals[r * cols + c];
      if ((int)c != o.label_column) ((float *)(*x)->data)[r * fcols + k++] = (float)v;
      else if (kiln_dtype_is_float(o.label_dtype)) kiln_tensor_set_f64(*y, (int64_t)r, v);
      else if (v != floor(v))
        st = kiln_set_error(KILN_ERR_PARSE, "%s: data row %zu: label %g is not an integer", path, r + 1, v);
      else kiln_tensor_set_f64(*y, (int64_t)r, v);
    }
  }
  free(vals);
  if (st != KILN_OK) {
    kiln_tensor_free(*x), *x = NULL;
    if (y) kiln_tensor_free(*y), *y = NULL;
  }
  return st;
}

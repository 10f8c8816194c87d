/* The .kir text format: one node per line, printed and parsed exactly.
 *
 *   kiln 1
 *   %0 = param "x" {dtype=f32, shape=[-1,4]} : f32[?,4]
 *   %1 = const {dtype=f32, shape=[2], data=[1, 2.5]} : f32[2]
 *   %2 = matmul %0, %1 {transpose_a=0, transpose_b=0} : f32[?,2]
 *   out "y" = %2
 *   assign "w" = %5      (variable update, applied after the run)
 *
 * Attributes are printed in key order, floats with enough digits to round-trip
 * (%.9g for f32 data, %.17g otherwise), so print(parse(print(g))) == print(g).
 * The ": type" suffix is checked against shape inference when parsing; `#` starts
 * a comment. The parser rebuilds the graph through kiln_node_make, so a parsed
 * graph gets every check a built one does. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include "ir/ir.h"

typedef struct {
  char *buf;
  size_t len, cap;
  bool oom;
} sbuf;

static void sb_printf(sbuf *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *s, const char *fmt, ...) {
  if (s->oom) return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(s->buf ? s->buf + s->len : NULL, s->buf ? s->cap - s->len : 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
      s->oom = true;
      return;
    }
    if (s->buf && s->len + (size_t)n < s->cap) {
      s->len += (size_t)n;
      return;
    }
    size_t cap = s->cap ? s->cap * 2 : 4096;
    while (cap < s->len + (size_t)n + 1) cap *= 2;
    char *b = realloc(s->buf, cap);
    if (!b) {
      s->oom = true;
      return;
    }
    s->buf = b;
    s->cap = cap;
  }
}

static void print_string(sbuf *s, const char *str) {
  sb_printf(s, "\"");
  for (; *str; str++) {
    if (*str == '"' || *str == '\\') sb_printf(s, "\\%c", *str);
    else if (*str == '\n') sb_printf(s, "\\n");
    else sb_printf(s, "%c", *str);
  }
  sb_printf(s, "\"");
}

static void print_data(sbuf *s, const kiln_node *n) {
  int64_t count = (int64_t)(n->nbytes / kiln_dtype_size((kiln_dtype)n->dtype));
  sb_printf(s, "data=[");
  for (int64_t i = 0; i < count; i++) {
    const char *sep = i ? ", " : "";
    switch ((kiln_dtype)n->dtype) {
    case KILN_F32: sb_printf(s, "%s%.9g", sep, (double)((const float *)n->data)[i]); break;
    case KILN_F64: sb_printf(s, "%s%.17g", sep, ((const double *)n->data)[i]); break;
    case KILN_I32: sb_printf(s, "%s%d", sep, ((const int32_t *)n->data)[i]); break;
    case KILN_I64: sb_printf(s, "%s%lld", sep, (long long)((const int64_t *)n->data)[i]); break;
    default: sb_printf(s, "%s%u", sep, ((const uint8_t *)n->data)[i]); break;
    }
  }
  sb_printf(s, "]");
}

kiln_status kiln_graph_to_text(const kiln_graph *g, char **text) {
  *text = NULL;
  if (!g) return kiln_set_error(KILN_ERR_INVALID, "to_text: null graph");
  if (g->status != KILN_OK) return kiln_set_error(g->status, "%s", g->errmsg);
  sbuf s = {0};
  sb_printf(&s, "kiln 1\n");
  for (uint32_t i = 0; i < g->nnodes; i++) {
    const kiln_node *n = &g->nodes[i];
    sb_printf(&s, "%%%u = %s", i, kiln_ops[n->op].name);
    if (n->name) {
      sb_printf(&s, " ");
      print_string(&s, n->name);
    }
    for (uint32_t j = 0; j < n->ninputs; j++) sb_printf(&s, "%s %%%u", j ? "," : "", n->inputs[j]);
    if (n->nattrs || n->data) {
      sb_printf(&s, " {");
      for (uint32_t j = 0; j < n->nattrs; j++) {
        const kiln_attr *a = &n->attrs[j];
        const kiln_attr_info *ai = &kiln_attrs_info[a->key];
        sb_printf(&s, "%s%s=", j ? ", " : "", ai->name);
        switch (ai->kind) {
        case KILN_AK_INT: sb_printf(&s, "%lld", (long long)a->v.i[0]); break;
        case KILN_AK_DTYPE: sb_printf(&s, "%s", kiln_dtype_name((kiln_dtype)a->v.i[0])); break;
        case KILN_AK_FLOAT: sb_printf(&s, "%.17g", a->v.f); break;
        case KILN_AK_INTS:
          sb_printf(&s, "[");
          for (int k = 0; k < a->n; k++) sb_printf(&s, "%s%lld", k ? "," : "", (long long)a->v.i[k]);
          sb_printf(&s, "]");
          break;
        }
      }
      if (n->data) {
        if (n->nattrs) sb_printf(&s, ", ");
        print_data(&s, n);
      }
      sb_printf(&s, "}");
    }
    char sh[128];
    sb_printf(&s, " : %s%s\n", kiln_dtype_name((kiln_dtype)n->dtype), kiln_shape_str(sh, sizeof sh, n->rank, n->dims));
  }
  for (uint32_t i = 0; i < g->noutputs; i++) {
    sb_printf(&s, "out ");
    print_string(&s, g->outputs[i].name);
    sb_printf(&s, " = %%%u\n", g->outputs[i].node);
  }
  for (uint32_t i = 0; i < g->nassigns; i++) {
    sb_printf(&s, "assign ");
    print_string(&s, g->assigns[i].name);
    sb_printf(&s, " = %%%u\n", g->assigns[i].node);
  }
  if (s.oom) {
    free(s.buf);
    return kiln_set_error(KILN_ERR_NOMEM, "to_text: out of memory");
  }
  *text = s.buf;
  return KILN_OK;
}

/* ---- parser ---- */

typedef struct {
  const char *p;
  int line;
  kiln_graph *g;
  uint32_t *ids; /* text id -> node index (KILN_NONE if undefined) */
  size_t nids;
  char err[512];
} parser;

static bool perr(parser *ps, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static bool perr(parser *ps, const char *fmt, ...) {
  if (ps->err[0]) return false;
  char m[400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(m, sizeof m, fmt, ap);
  va_end(ap);
  snprintf(ps->err, sizeof ps->err, "line %d: %s", ps->line, m);
  return false;
}

/* Skips blanks and comments but not newlines (lines are statements). */
static void skip(parser *ps) {
  for (;;) {
    while (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\r') ps->p++;
    if (*ps->p == '#')
      while (*ps->p && *ps->p != '\n') ps->p++;
    else
      return;
  }
}

static bool accept(parser *ps, char c) {
  skip(ps);
  if (*ps->p != c) return false;
  ps->p++;
  return true;
}

static bool expect(parser *ps, char c) {
  if (accept(ps, c)) return true;
  return perr(ps, "expected '%c'", c);
}

static bool ident(parser *ps, char *out, size_t cap) {
  skip(ps);
  size_t n = 0;
  while ((isalnum((unsigned char)*ps->p) || *ps->p == '_') && n + 1 < cap) out[n++] = *ps->p++;
  out[n] = 0;
  return n ? true : perr(ps, "expected a name");
}

static bool integer(parser *ps, int64_t *v) {
  skip(ps);
  char *end;
  errno = 0;
  long long x = strtoll(ps->p, &end, 10);
  if (end == ps->p || errno) return perr(ps, "expected an integer");
  ps->p = end;
  *v = x;
  return true;
}

static bool number(parser *ps, double *v) {
  skip(ps);
  char *end;
  *v = strtod(ps->p, &end);
  if (end == ps->p) return perr(ps, "expected a number");
  ps->p = end;
  return true;
}

static bool string(parser *ps, char *out, size_t cap) {
  skip(ps);
  if (*ps->p != '"') return perr(ps, "expected a quoted string");
  ps->p++;
  size_t n = 0;
  while (*ps->p && *ps->p != '"' && *ps->p != '\n') {
    char c = *ps->p++;
    if (c == '\\') {
      if (!*ps->p) break; /* a backslash at the very end: unterminated, never past the NUL */
      c = *ps->p++;
      if (c == 'n') c = '\n';
      else if (c != '"' && c != '\\') return perr(ps, "bad escape in string");
    }
    if (n + 1 >= cap) return perr(ps, "string too long");
    out[n++] = c;
  }
  if (*ps->p != '"') return perr(ps, "unterminated string");
  ps->p++;
  out[n] = 0;
  return true;
}

static bool value_ref(parser *ps, uint32_t *node) {
  if (!expect(ps, '%')) return false;
  int64_t id;
  if (!integer(ps, &id)) return false;
  if (id < 0 || (size_t)id >= ps->nids || ps->ids[id] == KILN_NONE) return perr(ps, "%%%lld is not defined", (long long)id);
  *node = ps->ids[id];
  return true;
}

/* Parses data=[...] into a malloc'ed buffer of dtype elements. */
static bool parse_data(parser *ps, kiln_dtype t, void **data, size_t *nbytes) {
  if (!expect(ps, '[')) return false;
  size_t es = kiln_dtype_size(t), cap = 64, n = 0;
  unsigned char *buf = malloc(cap * es);
  if (!buf) return perr(ps, "out of memory");
  if (!accept(ps, ']')) {
    do {
      if (n == cap) {
        unsigned char *b = realloc(buf, (cap *= 2) * es);
        if (!b) {
          free(buf);
          return perr(ps, "out of memory");
        }
        buf = b;
      }
      double d = 0;
      int64_t i = 0;
      bool ok = kiln_dtype_is_float(t) ? number(ps, &d) : integer(ps, &i);
      if (!ok) {
        free(buf);
        return false;
      }
      switch (t) {
      case KILN_F32: ((float *)buf)[n] = (float)d; break;
      case KILN_F64: ((double *)buf)[n] = d; break;
      case KILN_I32: ((int32_t *)buf)[n] = (int32_t)i; break;
      case KILN_I64: ((int64_t *)buf)[n] = i; break;
      default: buf[n] = i != 0; break;
      }
      n++;
    } while (accept(ps, ','));
    if (!expect(ps, ']')) {
      free(buf);
      return false;
    }
  }
  *data = buf;
  *nbytes = n * es;
  return true;
}

static bool parse_attrs(parser *ps, kiln_attrs *a, void **data, size_t *nbytes) {
  if (!accept(ps, '{')) return true;
  int dtype = -1;
  do {
    char key[32];
    if (!ident(ps, key, sizeof key) || !expect(ps, '=')) return false;
    if (!strcmp(key, "data")) {
      if (dtype < 0) return perr(ps, "data must follow dtype");
      if (*data) return perr(ps, "data given twice");
      if (!parse_data(ps, (kiln_dtype)dtype, data, nbytes)) return false;
      continue;
    }
    int k = 0;
    while (k < KILN_ATTR_COUNT && strcmp(kiln_attrs_info[k].name, key)) k++;
    if (k == KILN_ATTR_COUNT) return perr(ps, "unknown attribute '%s'", key);
    if (a->n == (int)(sizeof a->a / sizeof a->a[0])) return perr(ps, "too many attributes");
    switch (kiln_attrs_info[k].kind) {
    case KILN_AK_INT: {
      int64_t v;
      if (!integer(ps, &v)) return false;
      kiln_attrs_int(a, (kiln_attr_key)k, v);
      break;
    }
    case KILN_AK_DTYPE: {
      char name[16];
      if (!ident(ps, name, sizeof name)) return false;
      dtype = kiln_dtype_from_name(name);
      if (dtype < 0) return perr(ps, "unknown dtype '%s'", name);
      kiln_attrs_int(a, (kiln_attr_key)k, dtype);
      break;
    }
    case KILN_AK_FLOAT: {
      double v;
      if (!number(ps, &v)) return false;
      kiln_attrs_float(a, (kiln_attr_key)k, v);
      break;
    }
    case KILN_AK_INTS: {
      int64_t v[KILN_MAX_RANK];
      int n = 0;
      if (!expect(ps, '[')) return false;
      if (!accept(ps, ']')) {
        do {
          if (n == KILN_MAX_RANK) return perr(ps, "attribute '%s' has more than %d values", key, KILN_MAX_RANK);
          if (!integer(ps, &v[n++])) return false;
        } while (accept(ps, ','));
        if (!expect(ps, ']')) return false;
      }
      kiln_attrs_ints(a, (kiln_attr_key)k, v, n);
      break;
    }
    }
  } while (accept(ps, ','));
  return expect(ps, '}');
}

/* ": f32[?,4]" — checked against what inference computed. */
static bool parse_type_check(parser *ps, const kiln_node *n) {
  if (!accept(ps, ':')) return true;
  char name[16];
  if (!ident(ps, name, sizeof name)) return false;
  int t = kiln_dtype_from_name(name);
  if (t < 0) return perr(ps, "unknown dtype '%s'", name);
  int64_t dims[KILN_MAX_RANK];
  int r = 0;
  if (!expect(ps, '[')) return false;
  if (!accept(ps, ']')) {
    do {
      if (r == KILN_MAX_RANK) return perr(ps, "rank exceeds %d", KILN_MAX_RANK);
      skip(ps);
      if (*ps->p == '?') {
        ps->p++;
        dims[r++] = -1;
      } else if (!integer(ps, &dims[r++])) {
        return false;
      }
    } while (accept(ps, ','));
    if (!expect(ps, ']')) return false;
  }
  if (t != n->dtype || r != n->rank || (r && memcmp(dims, n->dims, sizeof(int64_t) * (size_t)r))) {
    char a[128], b[128];
    return perr(ps, "declared type %s%s differs from the inferred %s%s", name, kiln_shape_str(a, sizeof a, r, dims),
                kiln_dtype_name((kiln_dtype)n->dtype), kiln_shape_str(b, sizeof b, n->rank, n->dims));
  }
  return true;
}

static bool parse_node(parser *ps) {
  int64_t id;
  if (!integer(ps, &id)) return false;
  /* Ids number the values in order; a gap is allowed, a huge one would size the id table. */
  if (id < 0 || id > (int64_t)ps->g->nnodes + 65536)
    return perr(ps, "value id %%%lld is out of range (ids count the values in order; at most 65536 past the %u so far)",
                (long long)id, ps->g->nnodes);
  if ((size_t)id < ps->nids && ps->ids[id] != KILN_NONE) return perr(ps, "%%%lld is defined twice", (long long)id);
  if (!expect(ps, '=')) return false;
  char opname[32];
  if (!ident(ps, opname, sizeof opname)) return false;
  int op = 0;
  while (op < KILN_OP_COUNT && strcmp(kiln_ops[op].name, opname)) op++;
  if (op == KILN_OP_COUNT) return perr(ps, "unknown op '%s'", opname);
  char name[256] = {0};
  bool has_name = false;
  skip(ps);
  if (*ps->p == '"') {
    if (!string(ps, name, sizeof name)) return false;
    has_name = true;
  }
  uint32_t inputs[64];
  uint32_t nin = 0;
  skip(ps);
  if (*ps->p == '%') {
    do {
      if (nin == 64) return perr(ps, "too many inputs");
      if (!value_ref(ps, &inputs[nin++])) return false;
    } while (accept(ps, ','));
  }
  kiln_attrs a = {0};
  void *data = NULL;
  size_t nbytes = 0;
  if (!parse_attrs(ps, &a, &data, &nbytes)) {
    free(data);
    return false;
  }
  if (op == KILN_OP_PARAM && !has_name) {
    free(data);
    return perr(ps, "param needs a name (param \"x\" {...})");
  }
  kiln_value v = kiln_node_make(ps->g, (kiln_op)op, inputs, nin, &a, has_name ? name : NULL, data, nbytes);
  free(data);
  if (v.id == KILN_NONE) return perr(ps, "%s", ps->g->errmsg);
  if (!parse_type_check(ps, &ps->g->nodes[v.id])) return false;
  if ((size_t)id >= ps->nids) {
    size_t n = (size_t)id * 2 + 16;
    uint32_t *ids = realloc(ps->ids, n * sizeof *ids);
    if (!ids) return perr(ps, "out of memory");
    for (size_t i = ps->nids; i < n; i++) ids[i] = KILN_NONE;
    ps->ids = ids;
    ps->nids = n;
  }
  ps->ids[id] = v.id;
  return true;
}

kiln_status kiln_graph_parse(const char *text, kiln_graph **out) {
  *out = NULL;
  if (!text) return kiln_set_error(KILN_ERR_INVALID, "parse: null text");
  parser ps = {.p = text, .line = 1, .g = kiln_graph_new()};
  if (!ps.g) return KILN_ERR_NOMEM;
  bool header = false, ok = true;
  while (ok && *ps.p) {
    skip(&ps);
    if (*ps.p == '\n') {
      ps.p++;
      ps.line++;
      continue;
    }
    if (!*ps.p) break;
    char word[16];
    if (!header) {
      int64_t ver;
      bool is_header = !strncmp(ps.p, "kiln", 4) && !isalnum((unsigned char)ps.p[4]) && ps.p[4] != '_';
      if (is_header) ps.p += 4;
      ok = (is_header ? true : perr(&ps, "missing 'kiln 1' header")) && integer(&ps, &ver) &&
           (ver == 1 ? true : perr(&ps, "unsupported format version %lld", (long long)ver));
      header = true;
    } else if (*ps.p == '%') {
      ps.p++;
      ok = parse_node(&ps);
    } else {
      char name[256];
      uint32_t node;
      bool assign = false;
      ok = ident(&ps, word, sizeof word) &&
           ((assign = !strcmp(word, "assign")) || !strcmp(word, "out") ? true : perr(&ps, "unexpected '%s'", word)) &&
           string(&ps, name, sizeof name) && expect(&ps, '=') && value_ref(&ps, &node);
      if (ok && (assign ? kiln_graph_add_assign(ps.g, name, node) : kiln_output(ps.g, name, (kiln_value){node})) != KILN_OK)
        ok = perr(&ps, "%s", ps.g->errmsg);
    }
    skip(&ps);
    if (ok && *ps.p && *ps.p != '\n') ok = perr(&ps, "unexpected text '%.20s'", ps.p);
  }
  if (ok && !header) ok = perr(&ps, "empty input: missing 'kiln 1' header");
  free(ps.ids);
  if (!ok) {
    kiln_graph_free(ps.g);
    return kiln_set_error(KILN_ERR_PARSE, "%s", ps.err);
  }
  *out = ps.g;
  return KILN_OK;
}

kiln_status kiln_graph_load(const char *path, kiln_graph **out) {
  *out = NULL;
  unsigned char *buf;
  size_t len;
  kiln_status st = kiln_read_file(path, &buf, &len);
  if (st != KILN_OK) return st;
  if (memchr(buf, 0, len)) {
    free(buf);
    return kiln_set_error(KILN_ERR_PARSE, "%s: not a text file (NUL byte)", path);
  }
  st = kiln_graph_parse((const char *)buf, out);
  free(buf);
  if (st != KILN_OK) {
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", kiln_errmsg());
    return kiln_set_error(st, "%s: %s", path, msg);
  }
  return st;
}

/* AOT: graphs lowered into one object file with C entry points.
 *
 * Each requested function is its graph lowered by cg_lower into an internal
 * entry (args = [params..., outputs..., workspace]) plus a wrapper with the C
 * signature the header documents. The wrapper gathers the caller's pointers,
 * points variables into the parameter / optimizer-state blobs (or the embedded
 * parameters), runs the entry, copies the outputs generated code does not write,
 * and only then commits variable assignments, which were staged in the
 * workspace: every read in a step sees the old values, as in the JIT. */
#include <ctype.h>
#include <string.h>
#include <strings.h>
#include "codegen/aot_impl.h"
#include "passes/passes.h"
#include "runtime/checkpoint_impl.h"

static uint64_t align64(uint64_t x) { return (x + 63) & ~(uint64_t)63; }

static bool is_ident(const char *s) {
  if (!s || !(isalpha((unsigned char)*s) || *s == '_')) return false;
  for (; *s; s++)
    if (!isalnum((unsigned char)*s) && *s != '_') return false;
  return true;
}

static const char *const c_keywords[] = {
    "auto", "bool", "break", "case", "char", "const", "continue", "default", "do", "double", "else", "enum",
    "extern", "false", "float", "for", "goto", "if", "inline", "int", "long", "register", "restrict", "return",
    "short", "signed", "sizeof", "static", "struct", "switch", "true", "typedef", "union", "unsigned", "void",
    "volatile", "while",
    /* C++, so the header also works there */
    "catch", "class", "delete", "friend", "namespace", "new", "operator", "private", "protected", "public",
    "template", "this", "throw", "try", "virtual", NULL};

/* A C identifier for name, distinct (ignoring case: macros are upper case) from the n
 * identifiers already made, which sit `stride` bytes apart from `taken`. */
void kiln_aot_make_field(char *out, size_t cap, const char *name, const char *taken, size_t stride, uint32_t n) {
  size_t k = 0;
  if (!isalpha((unsigned char)*name) && *name != '_') out[k++] = '_';
  for (const char *s = name; *s && k + 12 < cap; s++) out[k++] = isalnum((unsigned char)*s) ? *s : '_';
  out[k] = 0;
  for (int i = 0; c_keywords[i]; i++)
    if (!strcmp(out, c_keywords[i])) out[k++] = '_', out[k] = 0;
  for (uint32_t i = 0; i < n; i++)
    if (!strcasecmp(taken + i * stride, out)) {
      snprintf(out + k, cap - k, "_%u", n);
      break;
    }
}

#define MAKE_FIELD(dst, name, array, n) \
  kiln_aot_make_field((dst)->field, sizeof (dst)->field, name, (array)->field, sizeof *(array), n)

static void port_from_node(aot_port *p, const char *name, const kiln_node *n) {
  p->name = name;
  p->dtype = (kiln_dtype)n->dtype;
  p->rank = n->rank;
  memcpy(p->dims, n->dims, sizeof(int64_t) * n->rank);
}

static void entry_free(aot_entry *e) {
  cg_plan_free(&e->plan);
  kiln_graph_free(e->g);
  free(e->in);
  free(e->out);
  free(e->param_slot);
  free(e->assign_slot);
  free(e->assign_off);
}

static int32_t find_slot(const aot_unit *u, const char *name) {
  for (size_t i = 0; i < u->nslots; i++)
    if (!strcmp(u->slots[i].name, name)) return (int32_t)i;
  return -1;
}

/* Does request r's graph read or assign variable `name`? */
static bool uses_variable(const kiln_graph *g, const char *name) {
  for (uint32_t i = 0; i < g->nnodes; i++)
    if (kiln_node_is_variable(&g->nodes[i]) && !strcmp(g->nodes[i].name, name)) return true;
  for (uint32_t i = 0; i < g->nassigns; i++)
    if (!strcmp(g->assigns[i].name, name)) return true;
  return false;
}

/* Slots for every variable some request uses, in the store's order (deterministic). */
static kiln_status make_slots(aot_unit *u, const aot_request *req, size_t n, kiln_variables *vs) {
  for (size_t r = 0; r < n; r++) {
    const kiln_graph *g = req[r].g;
    for (uint32_t i = 0; i < g->nnodes; i++)
      if (kiln_node_is_variable(&g->nodes[i]) && (!vs || !kiln_variables_find(vs, g->nodes[i].name)))
        return kiln_set_error(KILN_ERR_INVALID, "aot: the graph reads variable '%s', which no variable store holds",
                              g->nodes[i].name);
  }
  size_t nv = vs ? kiln_variables_count(vs) : 0;
  u->slots = calloc(nv + 1, sizeof *u->slots);
  if (!u->slots) return kiln_set_error(KILN_ERR_NOMEM, "aot: out of memory");
  for (size_t i = 0; i < nv; i++) {
    kiln_variable *v = kiln_variables_at(vs, i);
    bool used = false;
    for (size_t r = 0; r < n && !used; r++) used = uses_variable(req[r].g, kiln_variable_name(v));
    if (!used) continue;
    const kiln_tensor *t = kiln_variable_value(v);
    aot_slot *s = &u->slots[u->nslots++];
    s->name = kiln_variable_name(v);
    s->dtype = kiln_tensor_dtype(t);
    s->rank = kiln_tensor_rank(t);
    memcpy(s->dims, kiln_tensor_dims(t), sizeof(int64_t) * s->rank);
    s->blob = kiln_model_is_weight(v, NULL) ? AOT_PARAMS : AOT_OPT;
    s->nbytes = kiln_tensor_nbytes(t);
    s->offset = u->blob_size[s->blob];
    u->blob_size[s->blob] = align64(s->offset + s->nbytes);
    s->init = kiln_tensor_cdata(t);
    MAKE_FIELD(s, s->name, u->slots, (uint32_t)(u->nslots - 1));
  }
  uint64_t h = 0x6b696c6e; /* the parameter layout: a weights file must have been written for it */
  for (size_t i = 0; i < u->nslots; i++) {
    const aot_slot *s = &u->slots[i];
    if (s->blob != AOT_PARAMS) continue;
    h = kiln_hash_bytes(h, s->name, strlen(s->name) + 1);
    h = kiln_hash_bytes(h, &s->dtype, sizeof s->dtype);
    h = kiln_hash_bytes(h, s->dims, sizeof(int64_t) * s->rank);
    h = kiln_hash_bytes(h, &s->offset, sizeof s->offset);
  }
  u->fingerprint = h;
  return KILN_OK;
}

static kiln_status build_entry(aot_unit *u, const aot_request *r, aot_entry *e) {
  e->fn = r->fn;
  e->out_direct_arg = r->out_direct_arg;
  int64_t batch = u->o->batch > 0 ? u->o->batch : 1;
  kiln_pass_switches sw;
  kiln_status st = kiln_passes_disabled(NULL, &sw); /* KILN_DISABLE_PASSES */
  if (st != KILN_OK) return kiln_set_error(st, "aot: %s", kiln_errmsg());
  e->g = kiln_optimize_graph(kiln_graph_for_run(r->g, batch), &sw);
  if (!e->g) return kiln_set_error(KILN_ERR_INVALID, "aot: %s", kiln_errmsg());
  const kiln_graph *g = e->g;
  for (uint32_t i = 0; i < g->nnodes; i++)
    if (kiln_shape_numel(g->nodes[i].rank, g->nodes[i].dims) < 0)
      return kiln_set_error(KILN_ERR_INVALID, "aot: %%%u has a symbolic dim that no input binds", i);
  uint32_t np = kiln_graph_num_params(g);
  e->nin = (uint32_t)kiln_graph_num_inputs(g);
  e->nmain = r->nmain < e->nin ? r->nmain : e->nin;
  e->nout = r->g->noutputs;
  uint32_t nassign = g->noutputs - e->nout;
  e->in = calloc(e->nin + 1, sizeof *e->in);
  e->out = calloc(e->nout + 1, sizeof *e->out);
  e->param_slot = calloc(np + 1, sizeof *e->param_slot);
  e->assign_slot = calloc(nassign + 1, sizeof *e->assign_slot);
  e->assign_off = calloc(nassign + 1, sizeof *e->assign_off);
  if (!e->in || !e->out || !e->param_slot || !e->assign_slot || !e->assign_off)
    return kiln_set_error(KILN_ERR_NOMEM, "aot: out of memory");
  uint32_t k = 0, ui = 0;
  for (uint32_t i = 0; i < g->nnodes; i++) {
    const kiln_node *n = &g->nodes[i];
    if (n->op != KILN_OP_PARAM) continue;
    if (kiln_node_is_variable(n)) {
      int32_t s = find_slot(u, n->name);
      KILN_ASSERT(s >= 0);
      e->param_slot[k++] = s;
      e->reads[u->slots[s].blob] = true;
      continue;
    }
    e->param_slot[k++] = -1 - (int32_t)ui;
    aot_port *p = &e->in[ui];
    port_from_node(p, r->names ? r->names[ui] : n->name, n);
    /* inputs and targets are separate structs: fields need only be unique within one */
    uint32_t first = ui < e->nmain ? 0 : e->nmain;
    MAKE_FIELD(p, p->name, e->in + first, ui - first);
    ui++;
  }
  for (uint32_t j = 0; j < e->nout; j++) {
    port_from_node(&e->out[j], g->outputs[j].name, &g->nodes[g->outputs[j].node]);
    MAKE_FIELD(&e->out[j], e->out[j].name, e->out, j);
  }
  return KILN_OK;
}

/* Lays out the workspace: the entry's own, then a staging buffer per assignment. */
static void finish_entry(aot_entry *e, const aot_unit *u) {
  const kiln_graph *g = e->g;
  uint64_t ws = align64(e->plan.workspace);
  for (uint32_t j = e->nout; j < g->noutputs; j++) {
    int32_t s = find_slot(u, g->outputs[j].name + 1); /* "=name" */
    KILN_ASSERT(s >= 0);
    e->assign_slot[j - e->nout] = s;
    e->assign_off[j - e->nout] = ws;
    e->writes[u->slots[s].blob] = true;
    ws = align64(ws + u->slots[s].nbytes);
  }
  e->workspace = ws;
}

/* ---- wrappers ---- */

typedef struct wrap {
  cg *c;
  const aot_unit *u;
  LLVMValueRef params_global, opt_inits;
  LLVMValueRef malloc_fn, free_fn;
  LLVMTypeRef malloc_ty, free_ty;
} wrap;

static LLVMValueRef gep8(cg *c, LLVMValueRef base, uint64_t off) {
  return LLVMBuildGEP2(c->b, c->i8, base, (LLVMValueRef[]){cg_i64(c, (int64_t)off)}, 1, "");
}
static LLVMValueRef load_ptr(cg *c, LLVMValueRef array, uint32_t k) {
  LLVMValueRef p = LLVMBuildGEP2(c->b, c->ptr, array, (LLVMValueRef[]){cg_i64(c, k)}, 1, "");
  return LLVMBuildLoad2(c->b, c->ptr, p, "");
}
static void store_ptr(cg *c, LLVMValueRef v, LLVMValueRef array, uint32_t k) {
  LLVMBuildStore(c->b, v, LLVMBuildGEP2(c->b, c->ptr, array, (LLVMValueRef[]){cg_i64(c, k)}, 1, ""));
}

static LLVMValueRef add_function(cg *c, const char *name, LLVMTypeRef ret, unsigned nparams, bool exported) {
  LLVMTypeRef ps[8];
  for (unsigned i = 0; i < nparams; i++) ps[i] = c->ptr;
  LLVMValueRef fn = LLVMAddFunction(c->mod, name, LLVMFunctionType(ret, ps, nparams, 0));
  if (!exported) LLVMSetLinkage(fn, LLVMInternalLinkage);
  LLVMPositionBuilderAtEnd(c->b, LLVMAppendBasicBlockInContext(c->ctx, fn, "entry"));
  return fn;
}


/* NAME_<fn>_with([params,] [opt_state,] in, [targets,] out, workspace) -> i32; out is
 * the outputs struct, or the only output's pointer (train_step's loss). */
static kiln_status emit_with(wrap *w, const aot_entry *e, LLVMValueRef entry) {
  cg *c = w->c;
  const aot_unit *u = w->u;
  char name[160];
  snprintf(name, sizeof name, "%s_%s_with", u->o->name, e->fn);
  unsigned na = 0, ip = 0, io = 0, iin, itg = 0, iout, iws;
  if (u->params_arg) ip = na++;
  if (aot_takes_opt(e)) io = na++;
  iin = na++;
  if (aot_has_targets(e)) itg = na++;
  iout = na++;
  iws = na++;
  bool threaded = kiln_aot_threaded(u);
  unsigned ipar = threaded ? na++ : 0;
  LLVMValueRef fn = add_function(c, name, c->i32, na, true);
  LLVMBasicBlockRef start = LLVMGetInsertBlock(c->b);
  uint32_t np = kiln_graph_num_params(e->g), nall = e->g->noutputs;
  /* the entry's args: inputs, outputs, workspace and, threaded, the parallel runner */
  LLVMValueRef args = LLVMBuildArrayAlloca(c->b, c->ptr, cg_i64(c, np + nall + 1 + threaded), "args");
  LLVMValueRef ws_in = LLVMGetParam(fn, iws);
  LLVMValueRef none = LLVMBuildICmp(c->b, LLVMIntEQ, ws_in, LLVMConstPointerNull(c->ptr), "");
  LLVMBasicBlockRef do_alloc = LLVMAppendBasicBlockInContext(c->ctx, fn, "alloc"),
                    no_mem = LLVMAppendBasicBlockInContext(c->ctx, fn, "nomem"),
                    run = LLVMAppendBasicBlockInContext(c->ctx, fn, "run");
  LLVMBuildCondBr(c->b, none, do_alloc, run);
  LLVMPositionBuilderAtEnd(c->b, do_alloc);
  LLVMValueRef mem = LLVMBuildCall2(c->b, w->malloc_ty, w->malloc_fn, (LLVMValueRef[]){cg_i64(c, (int64_t)e->workspace)}, 1, "");
  LLVMBuildCondBr(c->b, LLVMBuildICmp(c->b, LLVMIntEQ, mem, LLVMConstPointerNull(c->ptr), ""), no_mem, run);
  LLVMPositionBuilderAtEnd(c->b, no_mem);
  LLVMBuildRet(c->b, LLVMConstInt(c->i32, (unsigned long long)-1, 1));
  LLVMPositionBuilderAtEnd(c->b, run);
  LLVMValueRef ws = LLVMBuildPhi(c->b, c->ptr, "ws");
  LLVMAddIncoming(ws, (LLVMValueRef[]){ws_in, mem}, (LLVMBasicBlockRef[]){start, do_alloc}, 2);

  LLVMValueRef blob[2] = {u->params_arg ? LLVMGetParam(fn, ip) : w->params_global,
                          aot_takes_opt(e) ? LLVMGetParam(fn, io) : NULL};
  LLVMValueRef *pp = calloc(np + nall + 1, sizeof *pp);
  if (!pp) return kiln_set_error(KILN_ERR_NOMEM, "aot: out of memory"); /* the caller drops the module */
  for (uint32_t k = 0; k < np; k++) {
    int32_t s = e->param_slot[k];
    if (s >= 0) {
      pp[k] = gep8(c, blob[u->slots[s].blob], u->slots[s].offset);
    } else {
      uint32_t ui = (uint32_t)(-1 - s);
      pp[k] = ui < e->nmain ? load_ptr(c, LLVMGetParam(fn, iin), ui) : load_ptr(c, LLVMGetParam(fn, itg), ui - e->nmain);
    }
    store_ptr(c, pp[k], args, k);
  }
  for (uint32_t j = 0; j < nall; j++) {
    if (j >= e->nout) pp[np + j] = gep8(c, ws, e->assign_off[j - e->nout]);
    else pp[np + j] = e->out_direct_arg ? LLVMGetParam(fn, iout) : load_ptr(c, LLVMGetParam(fn, iout), j);
    store_ptr(c, pp[np + j], args, np + j);
  }
  store_ptr(c, ws, args, np + nall);
  if (threaded) store_ptr(c, LLVMGetParam(fn, ipar), args, np + nall + 1);
  LLVMValueRef rc = LLVMBuildCall2(c->b, LLVMFunctionType(c->i32, &c->ptr, 1, 0), entry, &args, 1, "rc");
  LLVMBasicBlockRef commit = LLVMAppendBasicBlockInContext(c->ctx, fn, "commit"),
                    done = LLVMAppendBasicBlockInContext(c->ctx, fn, "done");
  LLVMBuildCondBr(c->b, LLVMBuildICmp(c->b, LLVMIntEQ, rc, LLVMConstInt(c->i32, 0, 0), ""), commit, done);
  LLVMPositionBuilderAtEnd(c->b, commit);
  /* Outputs the generated code does not write (params, constants, repeated values), then assignments. */
  for (uint32_t j = 0; j < nall; j++) {
    if (e->plan.out_direct[j]) continue;
    const kiln_node *n = &e->g->nodes[e->plan.out_node[j]];
    const buf_loc *l = &e->plan.locs[e->plan.out_node[j]];
    LLVMValueRef src = l->kind == BUF_INPUT ? pp[l->index] : l->kind == BUF_CONST ? l->global : pp[np + l->index];
    LLVMBuildMemCpy(c->b, pp[np + j], 1, src, 1, cg_i64(c, (int64_t)(kiln_shape_numel(n->rank, n->dims) * kiln_dtype_size(n->dtype))));
  }
  for (uint32_t j = e->nout; j < nall; j++) {
    const aot_slot *s = &u->slots[e->assign_slot[j - e->nout]];
    LLVMBuildMemCpy(c->b, gep8(c, blob[s->blob], s->offset), 1, pp[np + j], 1, cg_i64(c, (int64_t)s->nbytes));
  }
  LLVMBuildBr(c->b, done);
  LLVMPositionBuilderAtEnd(c->b, done);
  LLVMValueRef owned = LLVMBuildSelect(c->b, none, ws, LLVMConstPointerNull(c->ptr), "");
  LLVMBuildCall2(c->b, w->free_ty, w->free_fn, &owned, 1, "");
  LLVMBuildRet(c->b, rc);
  free(pp);
  return KILN_OK;
}

/* NAME_<fn>([params,] [opt_state,] x, [y,] out): one pointer per port, no workspace. */
static void emit_simple(wrap *w, const aot_entry *e) {
  cg *c = w->c;
  const aot_unit *u = w->u;
  char name[160], with[160];
  snprintf(name, sizeof name, "%s_%s", u->o->name, e->fn);
  snprintf(with, sizeof with, "%s_%s_with", u->o->name, e->fn);
  unsigned nstate = (unsigned)u->params_arg + (unsigned)aot_takes_opt(e);
  unsigned na = nstate + 1 + (unsigned)aot_has_targets(e) + 1; /* state, x, [y], out */
  LLVMValueRef fn = add_function(c, name, c->i32, na, true);
  LLVMValueRef cargs[8];
  unsigned k = 0;
  for (; k < nstate; k++) cargs[k] = LLVMGetParam(fn, k);
  for (unsigned p = nstate; p < na; p++) {
    if (p == na - 1 && e->out_direct_arg) {
      cargs[k++] = LLVMGetParam(fn, p);
      continue;
    }
    LLVMValueRef box = LLVMBuildAlloca(c->b, c->ptr, "");
    LLVMBuildStore(c->b, LLVMGetParam(fn, p), box);
    cargs[k++] = box;
  }
  cargs[k++] = LLVMConstPointerNull(c->ptr); /* workspace: allocated inside */
  if (kiln_aot_threaded(u)) cargs[k++] = LLVMConstPointerNull(c->ptr); /* tasks on the caller */
  LLVMValueRef target = LLVMGetNamedFunction(c->mod, with);
  LLVMTypeRef ps[8];
  for (unsigned i = 0; i < k; i++) ps[i] = c->ptr;
  LLVMBuildRet(c->b, LLVMBuildCall2(c->b, LLVMFunctionType(c->i32, ps, k, 0), target, cargs, k, ""));
}

static LLVMValueRef data_global(cg *c, const void *bytes, uint64_t n) {
  LLVMValueRef gl = LLVMAddGlobal(c->mod, LLVMArrayType(c->i8, (unsigned)n), "");
  LLVMSetInitializer(gl, LLVMConstStringInContext(c->ctx, bytes, (unsigned)n, 1));
  LLVMSetGlobalConstant(gl, 1);
  LLVMSetLinkage(gl, LLVMPrivateLinkage);
  LLVMSetAlignment(gl, 64);
  return gl;
}

static void emit_blob_init(wrap *w, int blob, const char *suffix) {
  cg *c = w->c;
  const aot_unit *u = w->u;
  char name[160];
  snprintf(name, sizeof name, "%s_%s", u->o->name, suffix);
  LLVMValueRef fn = add_function(c, name, c->void_t, 1, true);
  LLVMValueRef dst = LLVMGetParam(fn, 0);
  if (blob == AOT_PARAMS) {
    LLVMBuildMemCpy(c->b, dst, 1, w->params_global, 64, cg_i64(c, (int64_t)u->blob_size[blob]));
  } else {
    /* zeros, then the few slots that start otherwise (learning rate, Adagrad's accumulators) */
    LLVMBuildMemSet(c->b, dst, LLVMConstInt(c->i8, 0, 0), cg_i64(c, (int64_t)u->blob_size[blob]), 1);
    for (size_t i = 0; i < u->nslots; i++) {
      const aot_slot *s = &u->slots[i];
      bool zero = true;
      for (uint64_t b = 0; b < s->nbytes && zero; b++) zero = ((const unsigned char *)s->init)[b] == 0;
      if (s->blob != blob || zero) continue;
      LLVMBuildMemCpy(c->b, gep8(c, dst, s->offset), 1, data_global(c, s->init, s->nbytes), 64, cg_i64(c, (int64_t)s->nbytes));
    }
  }
  LLVMBuildRetVoid(c->b);
}

static void emit_info(wrap *w, uint64_t workspace) {
  cg *c = w->c;
  const aot_unit *u = w->u;
  char name[160];
  snprintf(name, sizeof name, "%s_workspace_size", u->o->name);
  add_function(c, name, c->i64, 0, true);
  LLVMBuildRet(c->b, cg_i64(c, (int64_t)workspace));
  const char *version = "kiln " KILN_VERSION;
  LLVMValueRef str = data_global(c, version, strlen(version) + 1);
  LLVMSetAlignment(str, 1);
  snprintf(name, sizeof name, "%s_version", u->o->name);
  add_function(c, name, c->ptr, 0, true);
  LLVMBuildRet(c->b, str);
}

/* ---- the unit ---- */

static kiln_status emit_object(aot_unit *u) {
  int vec_bytes = 16;
  LLVMTargetMachineRef tm = cg_target_machine(u->o->target, u->o->cpu ? u->o->cpu : "generic", &vec_bytes);
  if (!tm) return KILN_ERR_INVALID;
  char *triple = LLVMGetTargetMachineTriple(tm);
  snprintf(u->triple, sizeof u->triple, "%s", triple);
  LLVMDisposeMessage(triple);
  LLVMContextRef ctx = LLVMContextCreate();
  cg c = {.ctx = ctx, .vec_bytes = vec_bytes, .threads = kiln_aot_threaded(u) ? u->o->threads : 1};
  c.mod = LLVMModuleCreateWithNameInContext(u->o->name, ctx);
  c.b = LLVMCreateBuilderInContext(ctx);
  cg_init_types(&c);
  wrap w = {.c = &c, .u = u};
  w.malloc_ty = LLVMFunctionType(c.ptr, &c.i64, 1, 0);
  w.free_ty = LLVMFunctionType(c.void_t, &c.ptr, 1, 0);
  w.malloc_fn = LLVMAddFunction(c.mod, "malloc", w.malloc_ty);
  w.free_fn = LLVMAddFunction(c.mod, "free", w.free_ty);
  kiln_status st = KILN_OK;
  if (u->o->weights == KILN_AOT_EMBED && u->blob_size[AOT_PARAMS]) {
    unsigned char *bytes = calloc(u->blob_size[AOT_PARAMS], 1);
    if (!bytes) st = kiln_set_error(KILN_ERR_NOMEM, "aot: out of memory");
    for (size_t i = 0; bytes && i < u->nslots; i++)
      if (u->slots[i].blob == AOT_PARAMS) memcpy(bytes + u->slots[i].offset, u->slots[i].init, u->slots[i].nbytes);
    if (bytes) w.params_global = data_global(&c, bytes, u->blob_size[AOT_PARAMS]);
    free(bytes);
  }
  if (!w.params_global) w.params_global = LLVMConstPointerNull(c.ptr);
  bool any_opt = false;
  for (size_t i = 0; i < u->nentries && st == KILN_OK; i++) {
    aot_entry *e = &u->entries[i];
    char entry_name[160];
    snprintf(entry_name, sizeof entry_name, "%s_%s_entry", u->o->name, e->fn);
    c.g = e->g; /* GEMM helpers already emitted serve every entry */
    st = cg_lower(&c, entry_name, &e->plan);
    if (st != KILN_OK) break;
    LLVMValueRef entry = LLVMGetNamedFunction(c.mod, entry_name);
    LLVMSetLinkage(entry, LLVMInternalLinkage);
    finish_entry(e, u);
    if (u->workspace < e->workspace) u->workspace = e->workspace;
    if ((st = emit_with(&w, e, entry)) != KILN_OK) break;
    if (aot_has_simple_form(e)) emit_simple(&w, e);
    any_opt |= aot_takes_opt(e);
  }
  if (st == KILN_OK) {
    if (u->params_arg && u->o->weights == KILN_AOT_EMBED) emit_blob_init(&w, AOT_PARAMS, "params_init");
    if (any_opt) emit_blob_init(&w, AOT_OPT, "optimizer_init");
    emit_info(&w, u->workspace);
    st = cg_finish_module(c.mod, tm);
  }
  LLVMMemoryBufferRef buf = NULL;
  char *err = NULL;
  if (st == KILN_OK && LLVMTargetMachineEmitToMemoryBuffer(tm, c.mod, LLVMObjectFile, &err, &buf)) {
    st = kiln_set_error(KILN_ERR_BACKEND, "aot: LLVM could not emit the object: %s", err);
    LLVMDisposeMessage(err);
  }
  if (st == KILN_OK) {
    const unsigned char *part = (const unsigned char *)LLVMGetBufferStart(buf);
    size_t size = LLVMGetBufferSize(buf);
    st = kiln_write_atomic(u->o->object_path, &part, &size, 1);
  }
  if (buf) LLVMDisposeMemoryBuffer(buf);
  LLVMDisposeBuilder(c.b);
  LLVMDisposeModule(c.mod);
  LLVMContextDispose(ctx);
  LLVMDisposeTargetMachine(tm);
  return st;
}

static kiln_status write_weights(const aot_unit *u) {
  uint64_t n = u->blob_size[AOT_PARAMS];
  unsigned char *payload = calloc(n + 8, 1);
  if (!payload) return kiln_set_error(KILN_ERR_NOMEM, "aot: out of memory");
  for (int b = 0; b < 8; b++) payload[b] = (unsigned char)(u->fingerprint >> (8 * b));
  for (size_t i = 0; i < u->nslots; i++)
    if (u->slots[i].blob == AOT_PARAMS) memcpy(payload + 8 + u->slots[i].offset, u->slots[i].init, u->slots[i].nbytes);
  kiln_status st = kiln_framed_write(u->o->weights_path, KILN_AOT_WEIGHTS_MAGIC, payload, n + 8);
  free(payload);
  return st;
}

static kiln_status check_options(const kiln_aot_options *o) {
  if (!o) return kiln_set_error(KILN_ERR_INVALID, "aot: NULL options");
  if (!is_ident(o->name) || strlen(o->name) > 48)
    return kiln_set_error(KILN_ERR_INVALID, "aot: name '%s' is not a C identifier of at most 48 characters",
                          o->name ? o->name : "(null)");
  if (!o->object_path) return kiln_set_error(KILN_ERR_INVALID, "aot: no object path");
  if (o->weights == KILN_AOT_EXTERNAL && !o->weights_path)
    return kiln_set_error(KILN_ERR_INVALID, "aot: external weights need a weights path");
  if (o->batch < 0) return kiln_set_error(KILN_ERR_INVALID, "aot: batch %lld is negative", (long long)o->batch);
  if (o->threads < 0 || o->threads > KILN_AOT_MAX_THREADS)
    return kiln_set_error(KILN_ERR_INVALID, "aot: threads %d is not in [0, %d]", o->threads, KILN_AOT_MAX_THREADS);
  return KILN_OK;
}

kiln_status kiln_aot_compile_requests(const aot_request *req, size_t n, kiln_variables *vs, const kiln_aot_options *o) {
  kiln_status st = check_options(o);
  if (st != KILN_OK) return st;
  aot_unit u = {.o = o};
  for (size_t i = 0; o->name[i] && i + 1 < sizeof u.upper; i++) u.upper[i] = (char)toupper((unsigned char)o->name[i]);
  u.entries = calloc(n, sizeof *u.entries);
  if (!u.entries) return kiln_set_error(KILN_ERR_NOMEM, "aot: out of memory");
  u.nentries = n;
  st = make_slots(&u, req, n, vs);
  for (size_t i = 0; i < n && st == KILN_OK; i++) st = build_entry(&u, &req[i], &u.entries[i]);
  if (st == KILN_OK) {
    /* Parameters the code changes, or that live in a file, are the caller's memory. */
    u.params_arg = o->weights == KILN_AOT_EXTERNAL;
    for (size_t i = 0; i < n; i++)
      for (uint32_t j = 0; j < u.entries[i].g->nassigns; j++)
        u.params_arg |= u.slots[find_slot(&u, u.entries[i].g->assigns[j].name)].blob == AOT_PARAMS;
    st = emit_object(&u);
  }
  if (st == KILN_OK && o->header_path) st = kiln_aot_write_header(&u, o->header_path);
  if (st == KILN_OK && o->weights == KILN_AOT_EXTERNAL) st = write_weights(&u);
  for (size_t i = 0; i < n; i++) entry_free(&u.entries[i]);
  free(u.entries);
  free(u.slots);
  return st;
}

kiln_status kiln_aot_compile(const kiln_graph *g, const kiln_aot_options *o) {
  if (!g) return kiln_set_error(KILN_ERR_INVALID, "aot: NULL graph");
  if (g->status != KILN_OK) return kiln_set_error(g->status, "%s", g->errmsg);
  if (!g->noutputs) return kiln_set_error(KILN_ERR_INVALID, "aot: the graph has no outputs (use kiln_output)");
  kiln_status st = kiln_graph_verify(g);
  if (st != KILN_OK) return st;
  aot_request r = {.g = g, .fn = "run", .nmain = UINT32_MAX};
  return kiln_aot_compile_requests(&r, 1, g->vars, o);
}

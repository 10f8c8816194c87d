/* Model files: a model's inference graph (kiln's text IR) and its weights in one
 * framed, checksummed protobuf, written atomically like checkpoints. Loading needs
 * no code from the program that built the model: the graph is the model. */
#include <string.h>
#include "runtime/checkpoint_impl.h"

#define MODEL_MAGIC "KILNMODL"

kiln_status kiln_model_save(kiln_model *m, const char *path) {
  if (!m || !path) return kiln_set_error(KILN_ERR_INVALID, "model_save: NULL argument");
  if (!m->built) return kiln_set_error(KILN_ERR_INVALID, "model_save: model '%s' is not built yet", m->name);
  kiln_graph *g = kiln_model_inference_graph(m);
  if (!g) return kiln_set_error(KILN_ERR_INVALID, "model_save: %s", kiln_errmsg());
  char *text = NULL;
  unsigned char *payload = NULL;
  kiln_packed_store p = {0};
  kiln_status st = kiln_graph_to_text(g, &text);
  kiln_graph_free(g);
  /* weights, not optimizer state: a model file is for inference and fine-tuning */
  if (st == KILN_OK) st = kiln_pack_store(m->vars, kiln_model_is_weight, NULL, &p);
  Kiln__ModelFile mf = KILN__MODEL_FILE__INIT;
  mf.name = m->name;
  mf.graph = text;
  mf.weights = &p.ck;
  size_t plen = st == KILN_OK ? kiln__model_file__get_packed_size(&mf) : 0;
  if (st == KILN_OK && !(payload = malloc(plen + 1))) st = kiln_set_error(KILN_ERR_NOMEM, "model_save: out of memory");
  if (st == KILN_OK) {
    kiln__model_file__pack(&mf, payload);
    st = kiln_framed_write(path, MODEL_MAGIC, payload, plen);
  }
  free(payload);
  free(text);
  kiln_packed_store_free(&p);
  return st;
}

kiln_status kiln_model_load(const char *path, kiln_model **out) {
  if (!path || !out) return kiln_set_error(KILN_ERR_INVALID, "model_load: NULL argument");
  *out = NULL;
  unsigned char *buf;
  const unsigned char *payload;
  size_t plen;
  kiln_status st = kiln_framed_read(path, MODEL_MAGIC, "model file", &buf, &payload, &plen);
  if (st != KILN_OK) return st;
  Kiln__ModelFile *mf = kiln__model_file__unpack(NULL, plen, payload);
  kiln_variables *vars = kiln_variables_new(0);
  kiln_graph *g = NULL;
  if (!mf) st = kiln_set_error(KILN_ERR_PARSE, "%s: malformed model file contents", path);
  else if (!vars) st = kiln_set_error(KILN_ERR_NOMEM, "model_load: out of memory");
  if (st == KILN_OK) st = kiln_restore_store(vars, mf->weights, path, false);
  if (st == KILN_OK && kiln_graph_parse(mf->graph, &g) != KILN_OK)
    st = kiln_set_error(KILN_ERR_PARSE, "%s: the model's graph: %s", path, kiln_errmsg());
  if (st == KILN_OK && kiln_graph_bind_variables(g, vars) != KILN_OK)
    st = kiln_set_error(KILN_ERR_PARSE, "%s: %s", path, kiln_errmsg());
  if (st == KILN_OK) {
    st = kiln_model_from_graph(mf->name, g, vars, out);
    if (st != KILN_OK) st = kiln_set_error(st, "%s: %s", path, kiln_errmsg());
    g = NULL, vars = NULL; /* taken over, also on failure */
  }
  kiln_graph_free(g);
  kiln_variables_free(vars);
  if (mf) kiln__model_file__free_unpacked(mf, NULL);
  free(buf);
  return st;
}

/* kiln_aot_compile_model: a model's inference graph, and with `train` its training
 * step, into one object sharing one parameter layout. */
#include <stdio.h>
#include "codegen/aot_impl.h"
#include "frontend/model_impl.h"

kiln_status kiln_aot_compile_model(kiln_model *m, const kiln_aot_options *o) {
  if (!m || !o) return kiln_set_error(KILN_ERR_INVALID, "aot: NULL argument");
  if (!m->built) return kiln_set_error(KILN_ERR_INVALID, "aot: model '%s' is not built yet", m->name);
  aot_request req[2] = {{.fn = "run", .nmain = UINT32_MAX}, {.fn = "train_step", .out_direct_arg = true}};
  kiln_graph *infer = kiln_model_inference_graph(m), *train = NULL;
  if (!infer) return KILN_ERR_INVALID;
  req[0].g = infer;
  const char **names = NULL;
  kiln_status st = KILN_OK;
  if (o->train) {
    train = kiln_model_train_graph(m);
    names = calloc(m->ninputs + m->nheads + 1, sizeof *names);
    if (!train) st = KILN_ERR_INVALID;
    else if (!names) st = kiln_set_error(KILN_ERR_NOMEM, "aot: out of memory");
    /* the targets struct names each target after the output it is for */
    for (size_t i = 0; names && i < m->ninputs; i++) names[i] = m->inputs[i].name;
    for (size_t h = 0; names && h < m->nheads; h++) names[m->ninputs + h] = m->outputs[m->heads[h].output].name;
    req[1].g = train;
    req[1].nmain = (uint32_t)m->ninputs;
    req[1].names = names;
  }
  if (st == KILN_OK) st = kiln_aot_compile_requests(req, o->train ? 2 : 1, m->vars, o);
  kiln_graph_free(infer);
  kiln_graph_free(train);
  free(names);
  return st;
}

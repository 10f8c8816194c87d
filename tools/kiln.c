/* The kiln command-line tool.
 *   kiln dump FILE.kir [--kernels]          verify a text-IR graph and print it (or the
 *                                           kernels it compiles to, fused nodes included)
 *   kiln run FILE.kir|MODEL.onnx --input NAME=FILE.npy|FILE.pb ... [--output-dir DIR]
 *            [--format npy|pb] [--reference] run it through the JIT (or the evaluator)
 *   kiln inspect FILE.ckpt|FILE.kiln        list a checkpoint's variables and progress,
 *                                           or a model file's inputs, outputs and weights
 *   kiln compile MODEL -o NAME.o ...        ahead-of-time: a standalone object and header
 *                                           (MODEL: model file, .kir graph or .onnx)
 *   kiln bench NAME|MODEL [--batch N] [--runs R]  a built-in graph or a model with and without the
 *                                           fusion-related passes (tools/bench.c) */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <kiln/kiln.h>
#include "tools/bench.h"

static int usage(void) {
  fprintf(stderr,
          "usage: kiln dump FILE.kir [--kernels | --format dot] [--disable PASSES]\n"
          "       kiln run FILE.kir|MODEL.onnx --input NAME=FILE.npy|FILE.pb ... [--output-dir DIR]\n"
          "                [--format npy|pb] [--reference]\n"
          "       kiln inspect FILE.ckpt|FILE.kiln\n"
          "       kiln compile MODEL.kiln|GRAPH.kir|MODEL.onnx [-o NAME.o] [--header NAME.h] [--name NAME]\n"
          "                    [--target TRIPLE] [--cpu generic|native|CPU] [--batch N] [--threads N]\n"
          "                    [--weights embed|external] [--weights-file FILE]\n"
          "                    [--train OPTIMIZER [--loss LOSS] [--lr RATE]]\n"
          "       kiln bench NAME|GRAPH.kir|MODEL.onnx [--batch N] [--runs R]\n"
          "                  (NAME: mlp, mlp-train, cnn, cnn-train, cnn-nchw, cnn-nchw-train,\n"
          "                   transformer, transformer-train)\n"
          "Inputs are .npy files or ONNX TensorProto .pb files (f32, f64, i32, i64, bool); outputs\n"
          "are written as DIR/NAME.npy or DIR/output_N.pb (the default for .onnx models), or\n"
          "summarised on stdout without --output-dir.\n");
  return 2;
}

static int fail(const char *what) {
  fprintf(stderr, "kiln: %s: %s\n", what, kiln_errmsg());
  return 1;
}

static int64_t print_variables(kiln_variables *vs) {
  int64_t total = 0;
  for (size_t i = 0; i < kiln_variables_count(vs); i++) {
    kiln_variable *v = kiln_variables_at(vs, i);
    const kiln_tensor *t = kiln_variable_value(v);
    char shape[160] = "[";
    size_t k = 1;
    for (int d = 0; d < kiln_tensor_rank(t); d++)
      k += (size_t)snprintf(shape + k, sizeof shape - k, "%s%lld", d ? "," : "", (long long)kiln_tensor_dims(t)[d]);
    snprintf(shape + k, sizeof shape - k, "]");
    printf("  %-40s %s%-16s %s\n", kiln_variable_name(v), kiln_dtype_name(kiln_tensor_dtype(t)), shape,
           kiln_variable_trainable(v) ? "trainable" : "non-trainable");
    total += kiln_tensor_numel(t);
  }
  return total;
}

/* Restoring into an empty store creates every variable the file holds, after all checks. */
static int cmd_inspect(int argc, char **argv) {
  if (argc != 1) return usage();
  kiln_variables *vs = kiln_variables_new(0);
  kiln_checkpoint_info info;
  if (!vs) return fail("inspect");
  if (kiln_checkpoint_restore(vs, argv[0], false, &info) != KILN_OK) {
    kiln_variables_free(vs);
    if (!strstr(kiln_errmsg(), "not a kiln checkpoint")) return fail("inspect");
    kiln_model *m;
    if (kiln_model_load(argv[0], &m) != KILN_OK) return fail("inspect");
    printf("%s: kiln model file\n", argv[0]);
    kiln_model_summary(m, stdout);
    printf("weights:\n");
    printf("total %lld values\n", (long long)print_variables(kiln_model_variables(m)));
    kiln_model_free(m);
    return 0;
  }
  printf("%s: kiln checkpoint, step %lld, epoch %lld, seed %llu, %zu variables\n", argv[0], (long long)info.step,
         (long long)info.epoch, (unsigned long long)info.seed, kiln_variables_count(vs));
  printf("total %lld values\n", (long long)print_variables(vs));
  kiln_variables_free(vs);
  return 0;
}

static int cmd_dump(int argc, char **argv) {
  const char *path = NULL, *disable = NULL;
  bool kernels = false, dot = false;
  for (int i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "--kernels")) kernels = true;
    else if (!strcmp(argv[i], "--format") && i + 1 < argc && !strcmp(argv[i + 1], "dot")) dot = true, i++;
    else if (!strcmp(argv[i], "--disable") && i + 1 < argc) disable = argv[++i];
    else if (argv[i][0] != '-' && !path) path = argv[i];
    else return usage();
  }
  if (!path) return usage();
  kiln_graph *g;
  if (kiln_graph_load(path, &g) != KILN_OK) return fail("dump");
  char *text;
  /* the graph, or the kernels the compiler would emit for it */
  kiln_status st = kiln_graph_verify(g);
  if (st == KILN_OK)
    st = dot ? kiln_graph_to_dot(g, disable, &text) : kernels ? kiln_schedule_text(g, disable, &text) : kiln_graph_to_text(g, &text);
  if (st != KILN_OK) {
    kiln_graph_free(g);
    return fail("dump");
  }
  fputs(text, stdout);
  free(text);
  kiln_graph_free(g);
  return 0;
}

static void summarise(const char *name, const kiln_tensor *t) {
  printf("%s: %s[", name, kiln_dtype_name(kiln_tensor_dtype(t)));
  for (int i = 0; i < kiln_tensor_rank(t); i++) printf("%s%lld", i ? "," : "", (long long)kiln_tensor_dims(t)[i]);
  printf("]");
  int64_t n = kiln_tensor_numel(t), shown = n < 8 ? n : 8;
  const void *d = kiln_tensor_cdata(t);
  printf(" = [");
  for (int64_t i = 0; i < shown; i++) {
    const char *sep = i ? ", " : "";
    switch (kiln_tensor_dtype(t)) {
    case KILN_F32: printf("%s%g", sep, (double)((const float *)d)[i]); break;
    case KILN_F64: printf("%s%g", sep, ((const double *)d)[i]); break;
    case KILN_I32: printf("%s%d", sep, ((const int32_t *)d)[i]); break;
    case KILN_I64: printf("%s%lld", sep, (long long)((const int64_t *)d)[i]); break;
    default: printf("%s%u", sep, ((const uint8_t *)d)[i]); break;
    }
  }
  printf("%s]\n", n > shown ? ", ..." : "");
}

bool has_ext(const char *path, const char *ext) {
  size_t n = strlen(path), k = strlen(ext);
  return n > k && !strcmp(path + n - k, ext);
}

/* An input file: an ONNX TensorProto (.pb) or NumPy array (.npy). */
static kiln_status load_input(const char *path, kiln_tensor **t) {
  return has_ext(path, ".pb") ? kiln_onnx_load_tensor(path, t, NULL) : kiln_npy_load(path, t);
}

/* DIR/output_J.pb (the ONNX test-data layout, the name inside) or DIR/NAME.npy
 * (characters other than [A-Za-z0-9_.-] in the name become '_'). */
static kiln_status save_output(const char *dir, size_t j, const char *name, const kiln_tensor *t, bool pb) {
  char file[4096];
  if (pb) {
    snprintf(file, sizeof file, "%s/output_%zu.pb", dir, j);
    return kiln_onnx_save_tensor(file, t, name);
  }
  int k = snprintf(file, sizeof file, "%s/", dir);
  for (const char *p = name; *p && k + 5 < (int)sizeof file; p++)
    file[k++] = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || strchr("_.-", *p) ? *p : '_';
  snprintf(file + k, sizeof file - (size_t)k, ".npy");
  return kiln_npy_save(file, t);
}

static int cmd_run(int argc, char **argv) {
  const char *path = NULL, *outdir = NULL, *format = NULL;
  bool reference = false;
  const char *in_names[64];
  const char *in_files[64];
  kiln_tensor *given[64] = {0};
  bool frozen[64] = {0};
  int nin_given = 0;
  for (int i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "--reference")) reference = true;
    else if (!strcmp(argv[i], "--output-dir") && i + 1 < argc) outdir = argv[++i];
    else if (!strcmp(argv[i], "--format") && i + 1 < argc) format = argv[++i];
    else if (!strcmp(argv[i], "--input") && i + 1 < argc) {
      char *eq = strchr(argv[++i], '=');
      if (!eq || nin_given == 64) return usage();
      *eq = 0;
      in_names[nin_given] = argv[i];
      in_files[nin_given++] = eq + 1;
    } else if (argv[i][0] != '-' && !path) path = argv[i];
    else return usage();
  }
  if (!path || (format && strcmp(format, "npy") && strcmp(format, "pb"))) return usage();
  bool onnx = has_ext(path, ".onnx"), pb = format ? !strcmp(format, "pb") : onnx;
  int rc = 0;
  for (int j = 0; j < nin_given && !rc; j++)
    if (load_input(in_files[j], &given[j]) != KILN_OK) rc = fail("input");
  kiln_graph *g = NULL;
  kiln_exec *e = NULL;
  if (!rc) {
    /* an ONNX model may need some inputs as constants (shapes, scales): they are offered */
    kiln_onnx_options oo = {in_names, (const kiln_tensor *const *)given, (size_t)nin_given, frozen};
    kiln_status st = onnx ? kiln_onnx_load_with(path, &oo, &g) : kiln_graph_load(path, &g);
    if (st != KILN_OK) rc = fail("run");
    else if (kiln_compile(g, NULL, &e) != KILN_OK) rc = fail("compile");
  }
  size_t nin = e ? kiln_exec_num_inputs(e) : 0, nout = e ? kiln_exec_num_outputs(e) : 0;
  const kiln_tensor **ins = calloc(nin + 1, sizeof *ins);
  kiln_tensor **outs = calloc(nout + 1, sizeof *outs);
  if (!ins || !outs) rc = rc ? rc : (fprintf(stderr, "kiln: run: out of memory\n"), 1);
  for (int j = 0; j < nin_given && !rc; j++) {
    size_t k = 0;
    while (k < nin && strcmp(kiln_exec_input_name(e, k), in_names[j])) k++;
    if (k < nin) ins[k] = given[j];
    else if (!frozen[j]) fprintf(stderr, "kiln: run: the graph has no input named '%s'\n", in_names[j]), rc = 1;
  }
  for (size_t k = 0; k < nin && !rc; k++)
    if (!ins[k]) fprintf(stderr, "kiln: run: missing --input %s=FILE\n", kiln_exec_input_name(e, k)), rc = 1;
  if (!rc) {
    kiln_status st = reference ? kiln_evaluate(g, ins, nin, outs, nout) : kiln_exec_run(e, ins, nin, outs, nout);
    if (st != KILN_OK) rc = fail("run");
  }
  if (!rc && outdir && mkdir(outdir, 0777) && errno != EEXIST) {
    fprintf(stderr, "kiln: %s: %s\n", outdir, strerror(errno));
    rc = 1;
  }
  for (size_t j = 0; j < nout && !rc; j++) {
    if (!outdir) summarise(kiln_exec_output_name(e, j), outs[j]);
    else if (save_output(outdir, j, kiln_exec_output_name(e, j), outs[j], pb) != KILN_OK) rc = fail("output");
  }
  for (int j = 0; j < nin_given; j++) kiln_tensor_free(given[j]);
  for (size_t j = 0; j < nout; j++) kiln_tensor_free(outs[j]);
  free(ins);
  free(outs);
  kiln_exec_free(e);
  kiln_graph_free(g);
  return rc;
}

/* path with its extension (if any) replaced by ext */
static char *with_ext(const char *path, const char *ext) {
  size_t n = strlen(path);
  const char *dot = strrchr(path, '.'), *slash = strrchr(path, '/');
  if (dot && (!slash || dot > slash)) n = (size_t)(dot - path);
  char *s = malloc(n + strlen(ext) + 1);
  if (s) memcpy(s, path, n), strcpy(s + n, ext);
  return s;
}

static bool is_model_file(const char *path) {
  char magic[8] = {0};
  FILE *f = fopen(path, "rb");
  if (!f) return false;
  size_t n = fread(magic, 1, 8, f);
  fclose(f);
  return n == 8 && !memcmp(magic, "KILNMODL", 8);
}

static int cmd_compile(int argc, char **argv) {
  kiln_aot_options o = {0};
  const char *path = NULL, *train = NULL, *loss = "sparse_categorical_crossentropy";
  double lr = 0;
  char name_buf[64];
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (a[0] != '-' && !path) {
      path = a;
      continue;
    }
    if (!v) return usage();
    i++;
    if (!strcmp(a, "-o")) o.object_path = v;
    else if (!strcmp(a, "--header")) o.header_path = v;
    else if (!strcmp(a, "--name")) o.name = v;
    else if (!strcmp(a, "--target")) o.target = v;
    else if (!strcmp(a, "--cpu")) o.cpu = v;
    else if (!strcmp(a, "--batch")) {
      char *end;
      o.batch = strtoll(v, &end, 10);
      if (*end || o.batch < 1) {
        fprintf(stderr, "kiln: compile: --batch needs a positive integer, got '%s'\n", v);
        return 2;
      }
    }
    else if (!strcmp(a, "--threads")) {
      char *end;
      long t = strtol(v, &end, 10);
      if (*end || t < 1 || t > 256) {
        fprintf(stderr, "kiln: compile: --threads needs an integer in [1, 256], got '%s'\n", v);
        return 2;
      }
      o.threads = (int)t;
    }
    else if (!strcmp(a, "--weights-file")) o.weights_path = v;
    else if (!strcmp(a, "--train")) train = v;
    else if (!strcmp(a, "--loss")) loss = v;
    else if (!strcmp(a, "--lr")) lr = strtod(v, NULL);
    else if (!strcmp(a, "--weights") && (!strcmp(v, "embed") || !strcmp(v, "external")))
      o.weights = strcmp(v, "embed") ? KILN_AOT_EXTERNAL : KILN_AOT_EMBED;
    else return usage();
  }
  if (!path || (!o.name && !o.object_path)) return usage();
  if (!o.name) { /* from the object's file name */
    const char *base = strrchr(o.object_path, '/');
    base = base ? base + 1 : o.object_path;
    size_t k = 0;
    for (; base[k] && base[k] != '.' && k + 1 < sizeof name_buf; k++) name_buf[k] = base[k];
    name_buf[k] = 0;
    o.name = name_buf;
  }
  char *obj = o.object_path ? NULL : with_ext(o.name, ".o");
  if (obj) o.object_path = obj;
  char *header = o.header_path ? NULL : with_ext(o.object_path, ".h");
  if (header) o.header_path = header;
  char *weights = o.weights == KILN_AOT_EXTERNAL && !o.weights_path ? with_ext(o.object_path, ".weights") : NULL;
  if (weights) o.weights_path = weights;
  kiln_status st = KILN_OK;
  int rc = 0;
  if (is_model_file(path)) {
    kiln_model *m = NULL;
    st = kiln_model_load(path, &m);
    if (st == KILN_OK && train) {
      kiln_optimizer_kind kind;
      st = kiln_optimizer_kind_from_name(train, &kind);
      kiln_optimizer_config oc = kiln_optimizer_defaults(kind);
      if (lr > 0) oc.learning_rate = lr;
      kiln_model_compile_options co = {.optimizer_config = &oc, .loss = loss};
      if (st == KILN_OK) st = kiln_model_compile(m, &co);
      o.train = true;
    }
    if (st == KILN_OK) st = kiln_aot_compile_model(m, &o);
    kiln_model_free(m);
  } else if (train) {
    fprintf(stderr, "kiln: compile: %s: --train needs a model file (a graph has no loss or optimizer)\n", path);
    rc = 1;
  } else {
    kiln_graph *g = NULL;
    bool onnx = has_ext(path, ".onnx");
    st = onnx ? kiln_onnx_load(path, &g) : kiln_graph_load(path, &g);
    if (st != KILN_OK && !onnx) {
      fprintf(stderr, "kiln: compile: %s is neither a kiln model file nor a text-IR graph (%s)\n", path, kiln_errmsg());
      rc = 1;
    } else if (st == KILN_OK) {
      st = kiln_aot_compile(g, &o);
    }
    kiln_graph_free(g);
  }
  if (!rc && st != KILN_OK) rc = fail("compile");
  if (!rc) {
    bool external = o.weights == KILN_AOT_EXTERNAL;
    printf("wrote %s and %s%s%s\n", o.object_path, o.header_path, external ? " and " : "", external ? o.weights_path : "");
  }
  free(obj);
  free(header);
  free(weights);
  return rc;
}

int main(int argc, char **argv) {
  if (argc < 2) return usage();
  if (!strcmp(argv[1], "dump")) return cmd_dump(argc - 2, argv + 2);
  if (!strcmp(argv[1], "run")) return cmd_run(argc - 2, argv + 2);
  if (!strcmp(argv[1], "inspect")) return cmd_inspect(argc - 2, argv + 2);
  if (!strcmp(argv[1], "compile")) return cmd_compile(argc - 2, argv + 2);
  if (!strcmp(argv[1], "bench")) return cmd_bench(argc - 2, argv + 2);
  return usage();
}

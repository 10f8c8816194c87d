/* Ahead-of-time objects: compiled, linked by gcc with a plain C main (only libc and
 * libm), run as separate programs, and checked against the JIT: inference of a
 * trained model from its model file, the exported train step against JIT fit,
 * several named inputs/outputs with external weights, a cross-compiled aarch64
 * object under qemu, a threaded object with the header's pool, byte-identical
 * rebuilds, and bad options. */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "harness.h"
#include "kiln/kiln.h"

static char dir[64];

static void make_dir(void) {
  snprintf(dir, sizeof dir, "/tmp/kiln_aot_XXXXXX");
  if (!mkdtemp(dir)) fail_msg("mkdtemp failed");
}

static void remove_dir(void) {
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd)) print_message("could not remove %s\n", dir);
}

/* Runs a shell command in the test directory; returns its exit status. */
__attribute__((format(printf, 1, 2))) static int sh(const char *fmt, ...) {
  char cmd[4096];
  int k = snprintf(cmd, sizeof cmd, "cd %s && ", dir);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd + k, sizeof cmd - (size_t)k, fmt, ap);
  va_end(ap);
  int rc = system(cmd);
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

static const char *in_dir(const char *file) {
  static char paths[4][256];
  static int k;
  char *p = paths[k++ % 4];
  snprintf(p, 256, "%s/%s", dir, file);
  return p;
}

static void write_file(const char *file, const void *data, size_t n) {
  FILE *f = fopen(in_dir(file), "wb");
  if (!f || fwrite(data, 1, n, f) != n || fclose(f)) fail_msg("cannot write %s", file);
}

/* Reads n bytes (exactly) of a file the program wrote. */
static void read_exact(const char *file, void *data, size_t n) {
  FILE *f = fopen(in_dir(file), "rb");
  if (!f) fail_msg("%s was not written", file);
  size_t got = fread(data, 1, n, f);
  int extra = fgetc(f);
  fclose(f);
  if (got != n || extra != EOF) fail_msg("%s: %zu bytes, expected %zu", file, got + (extra != EOF), n);
}

/* Every symbol the object leaves undefined must be one libc or libm exports. */
static void check_only_libc(const char *obj) {
  int rc = sh("for s in $(nm -u %s | awk '{print $NF}'); do "
              "nm -D --defined-only \"$(cc -print-file-name=libc.so.6)\" \"$(cc -print-file-name=libm.so.6)\" "
              "| awk '{print $NF}' | sed 's/@.*//' | grep -qx \"$s\" || { echo \"undefined: $s\"; exit 1; }; done",
              obj);
  assert_int_equal(rc, 0);
}

static void compile_main(const char *main_c, const char *obj, const char *exe) {
  write_file("main.c", main_c, strlen(main_c));
  if (sh("cc -std=c99 -pedantic -Wall -Wextra -Werror -O1 -I. main.c %s -lm -o %s", obj, exe))
    fail_msg("linking main.c with %s failed", obj);
}

static void expect_close(const char *what, const float *got, const float *want, int64_t n, double tol) {
  for (int64_t i = 0; i < n; i++)
    if (!(fabs(got[i] - want[i]) <= tol)) fail_msg("%s[%lld] = %.8g, JIT %.8g", what, (long long)i, got[i], want[i]);
}

/* A small trained CNN (conv, pooling, dense, batch norm, dropout), saved and loaded
 * back: what `kiln compile` sees. */
static kiln_model *trained_cnn(void) {
  kiln_model *m = kiln_sequential_new("cnn", 7);
  kiln_model_add(m, kiln_layer_conv2d(3, 3, 3, KILN_PAD_SAME, KILN_ACT_RELU));
  kiln_model_add(m, kiln_layer_max_pooling2d(2, 2));
  kiln_model_add(m, kiln_layer_flatten());
  kiln_model_add(m, kiln_layer_dense(8, KILN_ACT_RELU));
  kiln_model_add(m, kiln_layer_batch_normalization());
  kiln_model_add(m, kiln_layer_dropout(0.3));
  kiln_model_add(m, kiln_layer_dense(5, KILN_ACT_SOFTMAX));
  kiln_model_compile_options co = {.optimizer = "adam", .loss = "sparse_categorical_crossentropy"};
  assert_int_equal(kiln_model_compile(m, &co), KILN_OK);
  trng r = {11};
  kiln_tensor *x = random_tensor(&r, KILN_F32, 4, (int64_t[]){64, 6, 6, 1}, -1, 1);
  kiln_tensor *y = random_tensor(&r, KILN_I32, 1, (int64_t[]){64}, 0, 4);
  kiln_fit_options fo = kiln_fit_defaults();
  fo.epochs = 2, fo.batch_size = 16, fo.verbose = 0;
  if (kiln_model_fit(m, x, y, &fo, NULL) != KILN_OK) fail_msg("%s", kiln_errmsg());
  kiln_tensor_free(x);
  kiln_tensor_free(y);
  if (kiln_model_save(m, in_dir("cnn.kiln")) != KILN_OK) fail_msg("%s", kiln_errmsg());
  kiln_model_free(m);
  kiln_model *loaded = NULL;
  if (kiln_model_load(in_dir("cnn.kiln"), &loaded) != KILN_OK) fail_msg("%s", kiln_errmsg());
  return loaded;
}

static const char cnn_main[] =
    "#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n#include \"cnn.h\"\n"
    "int main(void) {\n"
    "  static float x[CNN_IN_%s_SIZE], y[CNN_OUT_%s_SIZE], y2[CNN_OUT_%s_SIZE];\n"
    "  FILE *f = fopen(\"x.bin\", \"rb\");\n"
    "  if (!f || fread(x, sizeof x, 1, f) != 1) return 2;\n"
    "  fclose(f);\n"
    "  if (cnn_run(x, y)) return 3;\n"
    "  /* the same through the struct form with the caller's workspace */\n"
    "  void *ws = malloc(cnn_workspace_size());\n"
    "  cnn_inputs in = {x};\n"
    "  cnn_outputs out = {y2};\n"
    "  if (!ws || cnn_workspace_size() != CNN_WORKSPACE_SIZE || cnn_run_with(&in, &out, ws)) return 4;\n"
    "  if (memcmp(y, y2, sizeof y)) return 5;\n"
    "  if (strcmp(cnn_version(), CNN_VERSION)) return 6;\n"
    "  free(ws);\n"
    "  f = fopen(\"y.bin\", \"wb\");\n"
    "  return !f || fwrite(y, sizeof y, 1, f) != 1 || fclose(f);\n"
    "}\n";

static void upper_name(char *out, const char *s) {
  for (; *s; s++) *out++ = (char)(*s >= 'a' && *s <= 'z' ? *s - 32 : *s);
  *out = 0;
}

/* Writes main.c for the CNN (macro names come from the model's input/output names). */
static void cnn_program(kiln_model *m, const char *obj, const char *exe, const char *cc) {
  char in[64], out[64], text[2048];
  upper_name(in, kiln_model_input_name(m, 0));
  upper_name(out, kiln_model_output_name(m, 0));
  snprintf(text, sizeof text, cnn_main, in, out, out);
  write_file("main.c", text, strlen(text));
  if (sh("%s -std=c99 -pedantic -Wall -Wextra -Werror -O1 -I. main.c %s -lm -o %s", cc, obj, exe))
    fail_msg("%s could not link main.c with %s", cc, obj);
}

static kiln_tensor *cnn_input(void) {
  trng r = {5};
  kiln_tensor *x = random_tensor(&r, KILN_F32, 4, (int64_t[]){4, 6, 6, 1}, -1.5, 1.5);
  write_file("x.bin", kiln_tensor_cdata(x), kiln_tensor_nbytes(x));
  return x;
}

/* Compiles m to cnn.o with o, links main.c with `cc`, runs it with `run` and compares
 * its outputs with the JIT's prediction. */
static void check_cnn_object(kiln_model *m, const kiln_aot_options *o, const char *cc, const char *run) {
  if (kiln_aot_compile_model(m, o) != KILN_OK) fail_msg("%s", kiln_errmsg());
  cnn_program(m, "cnn.o", "main", cc);
  kiln_tensor *x = cnn_input(), *want = NULL;
  assert_int_equal(sh("%s", run), 0);
  assert_int_equal(kiln_model_predict(m, x, 4, &want), KILN_OK);
  float got[20];
  read_exact("y.bin", got, sizeof got);
  expect_close(run, got, kiln_tensor_cdata(want), 20, 1e-5);
  kiln_tensor_free(x);
  kiln_tensor_free(want);
}

static void test_inference_object_matches_jit(void **state) {
  make_dir();
  kiln_model *m = trained_cnn();
  kiln_aot_options o = {.name = "cnn", .object_path = in_dir("cnn.o"), .header_path = in_dir("cnn.h"), .batch = 4};
  check_cnn_object(m, &o, "cc", "./main");
  check_only_libc("cnn.o");
  assert_int_equal(sh("nm cnn.o | grep -q ' T cnn_run$' && ! nm cnn.o | grep ' [TDBR] ' | grep -v ' cnn_'"), 0);

  /* the same model again: byte-identical object and header */
  o.object_path = in_dir("again.o"), o.header_path = in_dir("again.h");
  assert_int_equal(kiln_aot_compile_model(m, &o), KILN_OK);
  assert_int_equal(sh("cmp cnn.o again.o && cmp cnn.h again.h"), 0);
  kiln_model_free(m);
  remove_dir();
}

/* A subclassed model (a body layer made of tracked sub-layers, trained) compiles to an
 * object whose outputs equal predict. */
typedef struct body {
  kiln_layer *conv, *pool, *flat, *hidden, *out;
} body;

static kiln_status body_build(kiln_layer *l, const kiln_shape *in, size_t n) {
  body *b = kiln_layer_state(l);
  b->conv = kiln_layer_track(l, kiln_layer_conv2d(3, 3, 3, KILN_PAD_SAME, KILN_ACT_RELU));
  b->pool = kiln_layer_track(l, kiln_layer_max_pooling2d(2, 2));
  b->flat = kiln_layer_track(l, kiln_layer_flatten());
  b->hidden = kiln_layer_track(l, kiln_layer_dense(8, KILN_ACT_RELU));
  b->out = kiln_layer_track(l, kiln_layer_dense(5, KILN_ACT_SOFTMAX));
  return b->conv && b->pool && b->flat && b->hidden && b->out ? KILN_OK : KILN_ERR_NOMEM;
}

static kiln_value body_call(kiln_layer *l, kiln_graph *g, const kiln_value *x, size_t n, bool training) {
  body *b = kiln_layer_state(l);
  kiln_value h = x[0];
  kiln_layer *seq[] = {b->conv, b->pool, b->flat, b->hidden, b->out};
  for (int i = 0; i < 5; i++) h = kiln_layer_call(seq[i], g, &h, 1, training);
  return h;
}

static const kiln_layer_class BODY = {"SmallCnn", 0, body_build, body_call, free};

static void test_subclassed_model_object_matches_predict(void **state) {
  make_dir();
  kiln_input_spec in = {"image", KILN_F32, KILN_SHAPE(6, 6, 1)};
  kiln_model *m = kiln_model_subclassed("cnn", 3, kiln_layer_new(&BODY, NULL, calloc(1, sizeof(body))), &in, 1, "probs");
  if (!m) fail_msg("%s", kiln_errmsg());
  kiln_model_compile_options co = {.optimizer = "adam", .loss = "sparse_categorical_crossentropy"};
  assert_int_equal(kiln_model_compile(m, &co), KILN_OK);
  trng r = {12};
  kiln_tensor *x = random_tensor(&r, KILN_F32, 4, (int64_t[]){32, 6, 6, 1}, -1, 1);
  kiln_tensor *y = random_tensor(&r, KILN_I32, 1, (int64_t[]){32}, 0, 4);
  kiln_fit_options fo = kiln_fit_defaults();
  fo.epochs = 2, fo.batch_size = 8, fo.verbose = 0;
  if (kiln_model_fit(m, x, y, &fo, NULL) != KILN_OK) fail_msg("%s", kiln_errmsg());
  assert_non_null(kiln_variables_find(kiln_model_variables(m), "cnn/conv2d/kernel"));
  kiln_aot_options o = {.name = "cnn", .object_path = in_dir("cnn.o"), .header_path = in_dir("cnn.h"), .batch = 4};
  check_cnn_object(m, &o, "cc", "./main");
  check_only_libc("cnn.o");
  kiln_tensor_free(x);
  kiln_tensor_free(y);
  kiln_model_free(m);
  remove_dir();
}

static void test_cross_compiled_aarch64_matches_jit(void **state) {
  make_dir();
  if (sh("command -v aarch64-linux-gnu-gcc && command -v qemu-aarch64") != 0)
    fail_msg("the cross check needs gcc-aarch64-linux-gnu and qemu-user (tools/dev.sh installs them)");
  kiln_model *m = trained_cnn();
  kiln_aot_options o = {.name = "cnn", .object_path = in_dir("cnn.o"), .header_path = in_dir("cnn.h"), .batch = 4,
                        .target = "aarch64-linux-gnu"};
  check_cnn_object(m, &o, "aarch64-linux-gnu-gcc -static", "qemu-aarch64 ./main");
  assert_int_equal(sh("readelf -h cnn.o | grep -q AArch64"), 0);
  kiln_model_free(m);
  remove_dir();
}

/* ---- the train step ---- */

enum { TB = 8, STEPS = 6, FEAT = 5 };

static kiln_model *train_model(void) {
  kiln_model *m = kiln_sequential_new("tiny", 3);
  kiln_model_add(m, kiln_layer_dense(16, KILN_ACT_RELU));
  kiln_model_add(m, kiln_layer_dropout(0.25));
  kiln_model_add(m, kiln_layer_dense(3, KILN_ACT_SOFTMAX));
  assert_int_equal(kiln_model_build(m, KILN_F32, KILN_SHAPE(FEAT)), KILN_OK);
  kiln_optimizer_config oc = kiln_optimizer_defaults(KILN_OPT_ADAM);
  oc.learning_rate = 0.01;
  kiln_model_compile_options co = {.optimizer_config = &oc, .loss = "sparse_categorical_crossentropy"};
  assert_int_equal(kiln_model_compile(m, &co), KILN_OK);
  return m;
}

static const char train_main[] =
    "#include <stdio.h>\n#include <stdlib.h>\n#include \"tiny.h\"\n"
    "int main(void) {\n"
    "  static float x[%d][TINY_IN_%s_SIZE], losses[%d];\n"
    "  static int32_t y[%d][TINY_TARGET_%s_SIZE];\n"
    "  FILE *f = fopen(\"xy.bin\", \"rb\");\n"
    "  if (!f || fread(x, sizeof x, 1, f) != 1 || fread(y, sizeof y, 1, f) != 1) return 2;\n"
    "  fclose(f);\n"
    "  void *params = malloc(TINY_PARAMS_SIZE), *opt = malloc(TINY_OPTIMIZER_STATE_SIZE);\n"
    "  if (!params || !opt) return 3;\n"
    "  tiny_params_init(params);\n"
    "  tiny_optimizer_init(opt);\n"
    "  for (int s = 0; s < %d; s++)\n"
    "    if (tiny_train_step(params, opt, x[s], y[s], &losses[s])) return 4;\n"
    "  f = fopen(\"out.bin\", \"wb\");\n"
    "  if (!f || fwrite(losses, sizeof losses, 1, f) != 1 || fwrite(params, TINY_PARAMS_SIZE, 1, f) != 1) return 5;\n"
    "  if (fwrite(opt, TINY_OPTIMIZER_STATE_SIZE, 1, f) != 1 || fclose(f)) return 6;\n"
    "  return 0;\n"
    "}\n";

/* The number after `#define NAME_<tag>_... ` on the line documenting variable `var`. */
static long long header_value(const char *header, const char *var, const char *macro_end) {
  char needle[160];
  snprintf(needle, sizeof needle, "/* \"%s\":", var);
  const char *p = strstr(header, needle);
  if (!p) fail_msg("the header does not document %s", var);
  const char *line = p;
  while (line > header && line[-1] != '\n') line--;
  const char *m = strstr(line, macro_end);
  if (!m || m > p) fail_msg("no %s macro for %s", macro_end, var);
  return strtoll(m + strlen(macro_end), NULL, 10);
}

/* Compiles m's train step, runs STEPS steps in a linked program, and compares loss,
 * weights and optimizer state with JIT fit over the same batches; returns how many
 * variables were compared. */
static int check_train_step(kiln_model *m) {
  kiln_aot_options o = {.name = "tiny", .object_path = in_dir("tiny.o"), .header_path = in_dir("tiny.h"),
                        .batch = TB, .train = true};
  if (kiln_aot_compile_model(m, &o) != KILN_OK) fail_msg("%s", kiln_errmsg());
  char in[64], out[64], text[4096];
  upper_name(in, kiln_model_input_name(m, 0));
  upper_name(out, kiln_model_output_name(m, 0));
  snprintf(text, sizeof text, train_main, STEPS, in, STEPS, STEPS, out, STEPS);
  compile_main(text, "tiny.o", "train");
  check_only_libc("tiny.o");

  trng r = {21};
  kiln_tensor *x = random_tensor(&r, KILN_F32, 2, (int64_t[]){TB * STEPS, FEAT}, -2, 2);
  kiln_tensor *y = random_tensor(&r, KILN_I32, 1, (int64_t[]){TB * STEPS}, 0, 2);
  FILE *f = fopen(in_dir("xy.bin"), "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(kiln_tensor_cdata(x), kiln_tensor_nbytes(x), 1, f), 1);
  assert_int_equal(fwrite(kiln_tensor_cdata(y), kiln_tensor_nbytes(y), 1, f), 1);
  fclose(f);
  assert_int_equal(sh("./train"), 0);

  /* the same steps through the JIT: one epoch, batches in order */
  kiln_fit_options fo = kiln_fit_defaults();
  fo.epochs = 1, fo.batch_size = TB, fo.shuffle = false, fo.verbose = 0;
  kiln_history *h = NULL;
  if (kiln_model_fit(m, x, y, &fo, &h) != KILN_OK) fail_msg("%s", kiln_errmsg());

  char *header = read_text_file(in_dir("tiny.h"));
  const char *ps = strstr(header, "#define TINY_PARAMS_SIZE "), *os = strstr(header, "#define TINY_OPTIMIZER_STATE_SIZE ");
  assert_non_null(ps);
  assert_non_null(os);
  size_t params_size = strtoull(ps + strlen("#define TINY_PARAMS_SIZE "), NULL, 10);
  size_t opt_size = strtoull(os + strlen("#define TINY_OPTIMIZER_STATE_SIZE "), NULL, 10);
  size_t total = sizeof(float) * STEPS + params_size + opt_size;
  unsigned char *blob = malloc(total);
  assert_non_null(blob);
  read_exact("out.bin", blob, total);
  float losses[STEPS];
  memcpy(losses, blob, sizeof losses);
  double mean = 0;
  for (int s = 0; s < STEPS; s++) mean += losses[s] / STEPS;
  assert_true(fabs(mean - kiln_history_get(h, "loss")[0]) < 1e-5);

  /* every variable, weights and optimizer state, against the JIT's after the same steps */
  kiln_variables *vs = kiln_model_variables(m);
  int compared = 0;
  for (size_t i = 0; i < kiln_variables_count(vs); i++) {
    kiln_variable *v = kiln_variables_at(vs, i);
    const char *name = kiln_variable_name(v);
    bool opt = !strncmp(name, "optimizer/", 10);
    if (!strstr(header, name)) continue; /* variables the step does not use */
    long long off = header_value(header, name, "_OFFSET ");
    const unsigned char *base = blob + sizeof losses + (opt ? params_size : 0) + off;
    const kiln_tensor *t = kiln_variable_value(v);
    if (kiln_tensor_dtype(t) == KILN_F32) {
      float *got = malloc(kiln_tensor_nbytes(t));
      memcpy(got, base, kiln_tensor_nbytes(t));
      expect_close(name, got, kiln_tensor_cdata(t), kiln_tensor_numel(t), 1e-5);
      free(got);
    } else {
      assert_memory_equal(base, kiln_tensor_cdata(t), kiln_tensor_nbytes(t));
    }
    compared++;
  }
  assert_true(strstr(header, "optimizer/iterations") != NULL);
  free(blob);
  free(header);
  kiln_history_free(h);
  kiln_tensor_free(x);
  kiln_tensor_free(y);
  return compared;
}

static void test_train_step_object_matches_jit_fit(void **state) {
  make_dir();
  kiln_model *m = train_model();
  /* kernels and biases of two layers, dropout's step, Adam's two moments per weight, step, rate */
  assert_true(check_train_step(m) >= 4 + 1 + 8 + 2);
  /* the same for a model loaded from its file, the way `kiln compile --train` sees it */
  assert_int_equal(kiln_model_save(m, in_dir("tiny.kiln")), KILN_OK);
  kiln_model_free(m);
  assert_int_equal(kiln_model_load(in_dir("tiny.kiln"), &m), KILN_OK);
  kiln_optimizer_config oc = kiln_optimizer_defaults(KILN_OPT_ADAM);
  oc.learning_rate = 0.01;
  kiln_model_compile_options co = {.optimizer_config = &oc, .loss = "sparse_categorical_crossentropy"};
  assert_int_equal(kiln_model_compile(m, &co), KILN_OK);
  assert_true(check_train_step(m) >= 4 + 8 + 2);
  kiln_model_free(m);
  remove_dir();
}

/* ---- several named inputs and outputs, external weights ---- */

static const char multi_main[] =
    "#include <stdio.h>\n#include <stdlib.h>\n#include \"qa.h\"\n"
    "int main(int argc, char **argv) {\n"
    "  static int32_t tokens[QA_IN_TOKENS_SIZE];\n"
    "  static float extra[QA_IN_EXTRA_SIZE], score[QA_OUT_SCORE_SIZE], cls[QA_OUT_CLASS__SIZE];\n"
    "  void *params = malloc(QA_PARAMS_SIZE);\n"
    "  if (!params) return 9;\n"
    "  if (qa_load_params(argv[1], params)) return 7; /* a bad weights file */\n"
    "  FILE *f = fopen(\"in.bin\", \"rb\");\n"
    "  if (!f || fread(tokens, sizeof tokens, 1, f) != 1 || fread(extra, sizeof extra, 1, f) != 1) return 2;\n"
    "  fclose(f);\n"
    "  if (argc > 2) tokens[1] = atoi(argv[2]);\n"
    "  qa_inputs in = {.tokens = tokens, .extra = extra};\n"
    "  qa_outputs out = {.score = score, .class_ = cls};\n"
    "  int rc = qa_run_with(params, &in, &out, NULL);\n"
    "  if (rc) return rc > 0 ? 8 : 3; /* 8: an index out of range */\n"
    "  f = fopen(\"out.bin\", \"wb\");\n"
    "  return !f || fwrite(score, sizeof score, 1, f) != 1 || fwrite(cls, sizeof cls, 1, f) != 1 || fclose(f);\n"
    "}\n";

static void test_multi_io_with_external_weights(void **state) {
  make_dir();
  kiln_model *m = kiln_model_new("qa", 9);
  kiln_ktensor tok = kiln_model_input(m, "tokens", KILN_I32, KILN_SHAPE(6));
  kiln_ktensor extra = kiln_model_input(m, "extra", KILN_F32, KILN_SHAPE(3));
  kiln_ktensor e = kiln_model_apply1(m, kiln_layer_flatten(), kiln_model_apply1(m, kiln_layer_embedding(20, 4), tok));
  kiln_ktensor both[2] = {e, extra};
  kiln_ktensor h = kiln_model_apply(m, kiln_layer_concatenate(-1), both, 2);
  kiln_model_output(m, "score", kiln_model_apply1(m, kiln_layer_dense(2, KILN_ACT_LINEAR), h));
  kiln_model_output(m, "class", kiln_model_apply1(m, kiln_layer_dense(3, KILN_ACT_SOFTMAX), h));
  kiln_aot_options o = {.name = "qa", .object_path = in_dir("qa.o"), .header_path = in_dir("qa.h"), .batch = 2,
                        .weights = KILN_AOT_EXTERNAL, .weights_path = in_dir("qa.weights")};
  if (kiln_aot_compile_model(m, &o) != KILN_OK) fail_msg("%s", kiln_errmsg());
  compile_main(multi_main, "qa.o", "qa");
  check_only_libc("qa.o");
  /* the object holds no weights: they are in the file */
  assert_int_equal(sh("test $(stat -c %%s qa.weights) -gt 380"), 0);

  trng r = {4};
  kiln_tensor *t = random_tensor(&r, KILN_I32, 2, (int64_t[]){2, 6}, 0, 19);
  kiln_tensor *x = random_tensor(&r, KILN_F32, 2, (int64_t[]){2, 3}, -1, 1);
  FILE *f = fopen(in_dir("in.bin"), "wb");
  assert_non_null(f);
  fwrite(kiln_tensor_cdata(t), kiln_tensor_nbytes(t), 1, f);
  fwrite(kiln_tensor_cdata(x), kiln_tensor_nbytes(x), 1, f);
  fclose(f);
  assert_int_equal(sh("./qa qa.weights"), 0);
  kiln_tensor *want[2] = {NULL, NULL};
  const kiln_tensor *ins[2] = {t, x};
  if (kiln_model_predict_arrays(m, ins, 2, 2, want, 2) != KILN_OK) fail_msg("%s", kiln_errmsg());
  float got[4 + 6];
  read_exact("out.bin", got, sizeof got);
  expect_close("score", got, kiln_tensor_cdata(want[0]), 4, 1e-5);
  expect_close("class", got + 4, kiln_tensor_cdata(want[1]), 6, 1e-5);

  /* a token id outside the vocabulary is reported, not read out of bounds */
  assert_int_equal(sh("./qa qa.weights 20"), 8);
  assert_int_equal(sh("./qa qa.weights -1"), 8);
  /* flipped byte, truncation, missing file: the loader refuses */
  assert_int_equal(sh("cp qa.weights bad.weights && printf '\\x55' | dd of=bad.weights bs=1 seek=100 conv=notrunc "
                      "2>/dev/null && ./qa bad.weights"), 7);
  assert_int_equal(sh("head -c 200 qa.weights > short.weights && ./qa short.weights"), 7);
  assert_int_equal(sh("./qa missing.weights"), 7);
  kiln_tensor_free(t);
  kiln_tensor_free(x);
  kiln_tensor_free(want[0]);
  kiln_tensor_free(want[1]);
  kiln_model_free(m);
  remove_dir();
}

/* Graph constants that a GEMM reads are embedded packed in its panel layout: a matmul
 * and an im2col convolution with constant weights, against the evaluator. */
static const char const_main[] =
    "#include <stdio.h>\n#include \"cw.h\"\n"
    "static int load(const char *file, void *p, size_t n) {\n"
    "  FILE *f = fopen(file, \"rb\");\n  int ok = f && fread(p, 1, n, f) == n;\n  if (f) fclose(f);\n  return ok;\n}\n"
    "int main(void) {\n"
    "  static float x[CW_IN_X_SIZE], z[CW_IN_Z_SIZE], y[CW_OUT_Y_SIZE], v[CW_OUT_V_SIZE];\n"
    "  if (!load(\"x.bin\", x, sizeof x) || !load(\"z.bin\", z, sizeof z)) return 2;\n"
    "  cw_inputs in = {x, z};\n  cw_outputs out = {y, v};\n"
    "  if (cw_run_with(&in, &out, NULL)) return 3;\n"
    "  FILE *f = fopen(\"out.bin\", \"wb\");\n"
    "  return !f || fwrite(y, sizeof y, 1, f) != 1 || fwrite(v, sizeof v, 1, f) != 1 || fclose(f);\n"
    "}\n";

static void test_constant_weights_object(void **state) {
  (void)state;
  make_dir();
  trng r = {31};
  kiln_tensor *w = random_tensor(&r, KILN_F32, 2, (int64_t[]){301, 70}, -1, 1);
  kiln_tensor *f = random_tensor(&r, KILN_F32, 4, (int64_t[]){3, 3, 16, 40}, -1, 1);
  kiln_graph *g = kiln_graph_new();
  kiln_value x = kiln_placeholder(g, "x", KILN_F32, KILN_SHAPE(40, 301)), z = kiln_placeholder(g, "z", KILN_F32, KILN_SHAPE(2, 9, 9, 16));
  kiln_value wc = kiln_constant(g, KILN_F32, KILN_SHAPE(301, 70), kiln_tensor_cdata(w));
  kiln_value fc = kiln_constant(g, KILN_F32, KILN_SHAPE(3, 3, 16, 40), kiln_tensor_cdata(f));
  kiln_output(g, "y", kiln_relu(g, kiln_matmul(g, x, wc, false, false)));
  kiln_output(g, "v", kiln_conv2d(g, z, fc, &(kiln_conv2d_opts){.padding = KILN_PAD_SAME}));
  kiln_tensor *in[2] = {random_tensor(&r, KILN_F32, 2, (int64_t[]){40, 301}, -1, 1),
                        random_tensor(&r, KILN_F32, 4, (int64_t[]){2, 9, 9, 16}, -1, 1)};
  write_file("x.bin", kiln_tensor_cdata(in[0]), kiln_tensor_nbytes(in[0]));
  write_file("z.bin", kiln_tensor_cdata(in[1]), kiln_tensor_nbytes(in[1]));
  kiln_aot_options o = {.name = "cw", .object_path = in_dir("cw.o"), .header_path = in_dir("cw.h")};
  if (kiln_aot_compile(g, &o) != KILN_OK) fail_msg("%s", kiln_errmsg());
  compile_main(const_main, "cw.o", "cw");
  check_only_libc("cw.o");
  assert_int_equal(sh("./cw"), 0);
  kiln_tensor *want[2] = {NULL, NULL};
  assert_int_equal(kiln_evaluate(g, (const kiln_tensor *const *)in, 2, want, 2), KILN_OK);
  static float got[40 * 70 + 2 * 9 * 9 * 40];
  read_exact("out.bin", got, sizeof got);
  expect_close("matmul, constant w", got, kiln_tensor_cdata(want[0]), 40 * 70, 1e-4);
  expect_close("conv, constant filter", got + 40 * 70, kiln_tensor_cdata(want[1]), 2 * 9 * 9 * 40, 1e-4);
  for (int i = 0; i < 2; i++) kiln_tensor_free(in[i]), kiln_tensor_free(want[i]);
  kiln_tensor_free(w), kiln_tensor_free(f);
  kiln_graph_free(g);
  remove_dir();
}

/* An ONNX model exported from PyTorch, compiled by the CLI, against ONNX's expected output. */
static void test_onnx_model_to_object(void **state) {
  make_dir();
  const char *test = "/usr/share/libonnx-testdata/data/pytorch-converted/test_Conv2d";
  assert_int_equal(sh("%s/kiln compile %s/model.onnx --name conv -o conv.o > /dev/null", KILN_BIN_DIR, test), 0);
  static const char main_c[] =
      "#include <stdio.h>\n#include \"conv.h\"\n"
      "int main(void) {\n"
      "  static float x[CONV_IN__0_SIZE], y[CONV_OUT__3_SIZE];\n"
      "  FILE *f = fopen(\"x.bin\", \"rb\");\n"
      "  if (!f || fread(x, sizeof x, 1, f) != 1 || conv_run(x, y)) return 1;\n"
      "  f = fopen(\"y.bin\", \"wb\");\n"
      "  return !f || fwrite(y, sizeof y, 1, f) != 1 || fclose(f);\n"
      "}\n";
  compile_main(main_c, "conv.o", "conv");
  char path[512];
  kiln_tensor *x = NULL, *want = NULL;
  snprintf(path, sizeof path, "%s/test_data_set_0/input_0.pb", test);
  assert_int_equal(kiln_onnx_load_tensor(path, &x, NULL), KILN_OK);
  snprintf(path, sizeof path, "%s/test_data_set_0/output_0.pb", test);
  assert_int_equal(kiln_onnx_load_tensor(path, &want, NULL), KILN_OK);
  write_file("x.bin", kiln_tensor_cdata(x), kiln_tensor_nbytes(x));
  assert_int_equal(sh("./conv"), 0);
  assert_int_equal(kiln_tensor_numel(want), 160);
  float got[160];
  read_exact("y.bin", got, sizeof got);
  expect_close("ONNX Conv2d", got, kiln_tensor_cdata(want), 160, 1e-4);
  check_only_libc("conv.o");
  kiln_tensor_free(x);
  kiln_tensor_free(want);
  remove_dir();
}

/* A threaded object: its tasks go through the caller's runner (the header's pthread
 * pool here, counted), give the bits of the serial run (NULL runner) every time, and
 * match the reference evaluator; the object itself still needs only libc and libm. */
static const char par_main[] =
    "#define PAR_WITH_POOL\n#include <stdio.h>\n#include \"par.h\"\n"
    "static par_pool pool;\nstatic int calls;\n"
    "static void counted(void *p, void (*task)(void *, int64_t, int32_t), void *ctx, int64_t n) {\n"
    "  calls++;\n  par_pool_parallel(&pool).run(p, task, ctx, n);\n}\n"
    "static int load(const char *file, void *p, size_t n) {\n"
    "  FILE *f = fopen(file, \"rb\");\n  int ok = f && fread(p, 1, n, f) == n;\n  if (f) fclose(f);\n  return ok;\n}\n"
    "int main(void) {\n"
    "  static float x[PAR_IN_X_SIZE], w[PAR_IN_W_SIZE], b[PAR_IN_B_SIZE], y[PAR_OUT_Y_SIZE], s[PAR_OUT_S_SIZE],\n"
    "      y2[PAR_OUT_Y_SIZE], s2[PAR_OUT_S_SIZE];\n"
    "  if (!load(\"x.bin\", x, sizeof x) || !load(\"w.bin\", w, sizeof w) || !load(\"b.bin\", b, sizeof b)) return 2;\n"
    "  par_inputs in = {x, w, b};\n  par_outputs serial = {y, s}, threaded = {y2, s2};\n"
    "  if (par_run_with(&in, &serial, NULL, NULL)) return 3;\n"
    "  if (par_pool_start(&pool)) return 4;\n"
    "  par_parallel run = {counted, &pool};\n"
    "  for (int k = 0; k < 20; k++)\n"
    "    if (par_run_with(&in, &threaded, NULL, &run) || memcmp(y, y2, sizeof y) || memcmp(s, s2, sizeof s)) return 5;\n"
    "  par_pool_stop(&pool);\n"
    "  if (calls < 20) return 6;\n"
    "  FILE *f = fopen(\"y.bin\", \"wb\");\n"
    "  return !f || fwrite(y, sizeof y, 1, f) != 1 || fwrite(s, sizeof s, 1, f) != 1 || fclose(f);\n"
    "}\n";

static void test_threaded_object(void **state) {
  (void)state;
  make_dir();
  kiln_graph *g = kiln_graph_new();
  kiln_value x = kiln_placeholder(g, "x", KILN_F32, KILN_SHAPE(256, 300)), w = kiln_placeholder(g, "w", KILN_F32, KILN_SHAPE(300, 400));
  kiln_value b = kiln_placeholder(g, "b", KILN_F32, KILN_SHAPE(400));
  kiln_value y = kiln_relu(g, kiln_add(g, kiln_matmul(g, x, w, false, false), kiln_broadcast_to(g, b, KILN_SHAPE(256, 400))));
  kiln_output(g, "y", y);
  kiln_output(g, "s", kiln_reduce_sum(g, y, (int64_t[]){1}, 1, false)); /* a threaded reduction */
  trng r = {23};
  kiln_tensor *in[3] = {random_tensor(&r, KILN_F32, 2, (int64_t[]){256, 300}, -1, 1),
                        random_tensor(&r, KILN_F32, 2, (int64_t[]){300, 400}, -1, 1), random_tensor(&r, KILN_F32, 1, (int64_t[]){400}, -1, 1)};
  write_file("x.bin", kiln_tensor_cdata(in[0]), kiln_tensor_nbytes(in[0]));
  write_file("w.bin", kiln_tensor_cdata(in[1]), kiln_tensor_nbytes(in[1]));
  write_file("b.bin", kiln_tensor_cdata(in[2]), kiln_tensor_nbytes(in[2]));
  kiln_aot_options o = {.name = "par", .object_path = in_dir("par.o"), .header_path = in_dir("par.h"), .threads = 3};
  if (kiln_aot_compile(g, &o) != KILN_OK) fail_msg("%s", kiln_errmsg());
  check_only_libc("par.o");
  write_file("main.c", par_main, strlen(par_main));
  if (sh("cc -std=c99 -pedantic -Wall -Wextra -Werror -O1 -I. main.c par.o -lm -pthread -o main"))
    fail_msg("linking main.c with par.o failed");
  assert_int_equal(sh("./main"), 0);
  kiln_tensor *want[2] = {NULL, NULL};
  assert_int_equal(kiln_evaluate(g, (const kiln_tensor *const *)in, 3, want, 2), KILN_OK);
  static float got[256 * 400 + 256];
  read_exact("y.bin", got, sizeof got);
  expect_close("threaded y", got, kiln_tensor_cdata(want[0]), 256 * 400, 1e-4);
  expect_close("threaded s", got + 256 * 400, kiln_tensor_cdata(want[1]), 256, 0.02); /* sums near 1000 */
  o.threads = -1;
  assert_int_equal(kiln_aot_compile(g, &o), KILN_ERR_INVALID);
  assert_non_null(strstr(kiln_errmsg(), "threads -1"));
  for (int i = 0; i < 3; i++) kiln_tensor_free(in[i]);
  kiln_tensor_free(want[0]), kiln_tensor_free(want[1]);
  kiln_graph_free(g);
  remove_dir();
}

static void test_bad_options_are_named(void **state) {
  make_dir();
  kiln_model *m = kiln_sequential_new("m", 1);
  kiln_model_add(m, kiln_layer_dense(2, KILN_ACT_LINEAR));
  kiln_aot_options o = {.name = "m", .object_path = in_dir("m.o")};
  assert_int_equal(kiln_aot_compile_model(m, &o), KILN_ERR_INVALID); /* not built */
  assert_non_null(strstr(kiln_errmsg(), "not built"));
  assert_int_equal(kiln_model_build(m, KILN_F32, KILN_SHAPE(3)), KILN_OK);
  o.name = "2fast";
  assert_int_equal(kiln_aot_compile_model(m, &o), KILN_ERR_INVALID);
  assert_non_null(strstr(kiln_errmsg(), "'2fast' is not a C identifier"));
  o.name = "m", o.target = "nonsense-cpu-none";
  assert_int_equal(kiln_aot_compile_model(m, &o), KILN_ERR_INVALID);
  assert_non_null(strstr(kiln_errmsg(), "nonsense-cpu-none"));
  o.target = "aarch64-linux-gnu", o.cpu = "native";
  assert_int_equal(kiln_aot_compile_model(m, &o), KILN_ERR_INVALID);
  assert_non_null(strstr(kiln_errmsg(), "native"));
  o.target = NULL, o.cpu = NULL, o.train = true;
  assert_int_equal(kiln_aot_compile_model(m, &o), KILN_ERR_INVALID);
  assert_non_null(strstr(kiln_errmsg(), "not compiled"));
  o.train = false, o.weights = KILN_AOT_EXTERNAL;
  assert_int_equal(kiln_aot_compile_model(m, &o), KILN_ERR_INVALID);
  assert_non_null(strstr(kiln_errmsg(), "weights path"));
  assert_int_equal(access(in_dir("m.o"), F_OK), -1); /* nothing written on failure */
  kiln_model_free(m);
  remove_dir();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_constant_weights_object),
      cmocka_unit_test(test_inference_object_matches_jit),
      cmocka_unit_test(test_subclassed_model_object_matches_predict),
      cmocka_unit_test(test_train_step_object_matches_jit_fit),
      cmocka_unit_test(test_multi_io_with_external_weights),
      cmocka_unit_test(test_cross_compiled_aarch64_matches_jit),
      cmocka_unit_test(test_onnx_model_to_object),
      cmocka_unit_test(test_threaded_object),
      cmocka_unit_test(test_bad_options_are_named),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

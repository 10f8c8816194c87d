#!/usr/bin/env bash
# The kiln CLI end to end: dump round-trips a golden graph; run reads .npy inputs and
# writes .npy outputs identical between the JIT and the reference evaluator; bad
# arguments fail with a message, not a crash.
set -euo pipefail
kiln=$1
golden=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

"$kiln" dump "$golden/mlp.kir" > "$tmp/dump.kir"
cmp -s "$tmp/dump.kir" "$golden/mlp.kir" || fail "dump does not round-trip mlp.kir"

out=$("$kiln" run "$golden/mlp.kir" --input "x=$golden/mlp_x.npy")
[ "$out" = $'y: f32[2,2] = [0, 2.75, 0, 2]\ntotal: f32[2] = [2.75, 2]' ] || fail "unexpected run output: $out"

"$kiln" run "$golden/mlp.kir" --input "x=$golden/mlp_x.npy" --output-dir "$tmp/jit"
"$kiln" run "$golden/mlp.kir" --input "x=$golden/mlp_x.npy" --output-dir "$tmp/ref" --reference
for f in y total; do cmp -s "$tmp/jit/$f.npy" "$tmp/ref/$f.npy" || fail "$f.npy differs between JIT and reference"; done

if "$kiln" run "$golden/mlp.kir" --input "nope=$golden/mlp_x.npy" 2> "$tmp/err"; then fail "unknown input accepted"; fi
grep -q "no input named 'nope'" "$tmp/err" || fail "unclear message: $(cat "$tmp/err")"
printf 'kiln 1\n%%0 = frob\n' > "$tmp/bad.kir"
if "$kiln" dump "$tmp/bad.kir" 2> "$tmp/err"; then fail "bad graph accepted"; fi
grep -q "line 2: unknown op 'frob'" "$tmp/err" || fail "unclear message: $(cat "$tmp/err")"

# inspect lists a checkpoint (tests/golden/small.ckpt) and rejects a truncated copy.
out=$("$kiln" inspect "$golden/small.ckpt")
echo "$out" | grep -q "kiln checkpoint, step 7, epoch 2, seed 42, 2 variables" || fail "inspect header: $out"
echo "$out" | grep -q "dense/kernel *f32\[3,2\] *trainable" || fail "inspect listing: $out"
head -c 50 "$golden/small.ckpt" > "$tmp/trunc.ckpt"
if err=$("$kiln" inspect "$tmp/trunc.ckpt" 2>&1); then fail "inspect accepted a truncated checkpoint"; fi
echo "$err" | grep -q "truncated" || fail "inspect error: $err"
# ... and a model file (tests/golden/small.kiln: Dense 2 relu -> Dense 2 softmax on 3 inputs).
out=$("$kiln" inspect "$golden/small.kiln")
echo "$out" | grep -q "input   pixels  *(None, 3)" || fail "inspect model inputs: $out"
echo "$out" | grep -q "Total params: 14" || fail "inspect model params: $out"
echo "$out" | grep -q "dense_1/kernel *f32\[2,2\]" || fail "inspect model weights: $out"

# compile: the golden model file becomes an object and header a plain C program links
# (test_aot compares AOT outputs with the JIT; here the softmax scores must sum to 1).
"$kiln" compile "$golden/small.kiln" -o "$tmp/small.o" > "$tmp/out" || fail "compile: $(cat "$tmp/out")"
grep -q "wrote $tmp/small.o and $tmp/small.h" "$tmp/out" || fail "compile output: $(cat "$tmp/out")"
cat > "$tmp/main.c" <<'EOF_C'
#include <stdio.h>
#include "small.h"
int main(void) {
  const float pixels[SMALL_IN_PIXELS_SIZE] = {0.5f, -1.0f, 2.0f};
  float scores[SMALL_OUT_SCORES_SIZE];
  if (small_run(pixels, scores)) return 1;
  printf("%.6f %.6f\n", scores[0], scores[1]);
  return 0;
}
EOF_C
cc -std=c99 -Wall -Werror -I"$tmp" "$tmp/main.c" "$tmp/small.o" -lm -o "$tmp/small" || fail "main.c did not link"
got=$("$tmp/small")
ref=$(awk -v a="$got" 'BEGIN { split(a, s, " "); printf "%.3f", s[1] + s[2] }')
[ "$ref" = "1.000" ] || fail "AOT scores do not sum to 1: $got"
"$kiln" compile "$golden/mlp.kir" --name mlp -o "$tmp/mlp.o" --batch 2 > /dev/null || fail "compile of a .kir graph"
grep -q "int mlp_run_with(const mlp_inputs \*in, const mlp_outputs \*out, void \*workspace);" "$tmp/mlp.h" ||
  fail "mlp.h lacks mlp_run_with"
"$kiln" compile "$golden/mlp.kir" --name mlpt -o "$tmp/mlpt.o" --threads 2 > /dev/null || fail "compile --threads 2"
grep -q "int mlpt_run_with(const mlpt_inputs \*in, const mlpt_outputs \*out, void \*workspace, const mlpt_parallel \*par);" \
  "$tmp/mlpt.h" || fail "mlpt.h lacks the threaded mlpt_run_with"
if "$kiln" compile "$golden/mlp.kir" -o "$tmp/bad.o" --threads 0 2> "$tmp/err"; then fail "--threads 0 compiled"; fi
grep -q "threads needs an integer" "$tmp/err" || fail "unclear --threads message: $(cat "$tmp/err")"
# --train: the exported train step lowers the loss on a repeated batch
"$kiln" compile "$golden/small.kiln" --train sgd --lr 0.5 -o "$tmp/st.o" > /dev/null || fail "compile --train"
cat > "$tmp/train.c" <<'EOF_C'
#include <stdio.h>
#include <stdlib.h>
#include "st.h"
int main(void) {
  void *params = malloc(ST_PARAMS_SIZE), *opt = malloc(ST_OPTIMIZER_STATE_SIZE);
  const float x[3] = {1.0f, -0.5f, 2.0f};
  const int32_t y[1] = {1};
  float first = 0, loss = 0;
  st_params_init(params);
  st_optimizer_init(opt);
  for (int i = 0; i < 20; i++) {
    if (st_train_step(params, opt, x, y, &loss)) return 1;
    if (i == 0) first = loss;
  }
  printf("%g %g\n", first, loss);
  return !(loss < 0.5f * first);
}
EOF_C
cc -std=c99 -Wall -Werror -I"$tmp" "$tmp/train.c" "$tmp/st.o" -lm -o "$tmp/train" || fail "train.c did not link"
"$tmp/train" > "$tmp/out" || fail "the train step did not lower the loss: $(cat "$tmp/out")"
if "$kiln" compile "$golden/mlp.kir" --train sgd -o "$tmp/x.o" 2> "$tmp/err"; then fail "--train on a graph accepted"; fi
grep -q "needs a model file" "$tmp/err" || fail "unclear message: $(cat "$tmp/err")"
if "$kiln" compile "$golden/small.ckpt" -o "$tmp/x.o" 2> "$tmp/err"; then fail "a checkpoint compiled"; fi
grep -q "small.ckpt" "$tmp/err" || fail "unclear message: $(cat "$tmp/err")"
[ ! -e "$tmp/x.o" ] || fail "a failed compile left an object"
# ONNX: a truncated model and an unsupported op are errors naming the problem
onnx=/usr/share/libonnx-testdata/data
head -c 300 "$onnx/pytorch-converted/test_Conv2d/model.onnx" > "$tmp/bad.onnx"
if "$kiln" compile "$tmp/bad.onnx" -o "$tmp/x.o" 2> "$tmp/err"; then fail "a truncated ONNX model compiled"; fi
grep -q "bad.onnx" "$tmp/err" || fail "unclear message: $(cat "$tmp/err")"
if "$kiln" compile "$onnx/node/test_nonzero_example/model.onnx" -o "$tmp/x.o" 2> "$tmp/err"; then fail "NonZero compiled"; fi
grep -q "(NonZero): op NonZero is not supported" "$tmp/err" || fail "unclear message: $(cat "$tmp/err")"
# kiln run on ONNX: TensorProto inputs (the shape input is frozen as a constant), the
# output written as output_0.pb is byte-identical to the test data's; .npy on request
t="$onnx/node/test_reshape_reordered_all_dims"
"$kiln" run "$t/model.onnx" --input data="$t/test_data_set_0/input_0.pb" --input shape="$t/test_data_set_0/input_1.pb" \
  --output-dir "$tmp/onnx_out" || fail "kiln run on an ONNX model failed"
cmp -s "$tmp/onnx_out/output_0.pb" "$t/test_data_set_0/output_0.pb" || fail "output_0.pb differs from the expected output"
"$kiln" run "$t/model.onnx" --input data="$t/test_data_set_0/input_0.pb" --input shape="$t/test_data_set_0/input_1.pb" \
  --output-dir "$tmp/onnx_npy" --format npy || fail "kiln run --format npy failed"
head -c 6 "$tmp/onnx_npy/reshaped.npy" | grep -q NUMPY || fail "no reshaped.npy"
if "$kiln" run "$t/model.onnx" --input data="$t/test_data_set_0/input_0.pb" 2> "$tmp/err"; then fail "ran without the shape"; fi
grep -q "(Reshape): input 1 must be a constant" "$tmp/err" || fail "unclear message: $(cat "$tmp/err")"
if "$kiln" run "$t/model.onnx" --input data="$t/test_data_set_0/input_0.pb" --input shape="$tmp/bad.onnx" 2> "$tmp/err"; then
  fail "a corrupt input file was read"
fi
grep -q "bad.onnx" "$tmp/err" || fail "unclear message: $(cat "$tmp/err")"
# Golden schedules: the kernels (and fused nodes) each graph compiles to, so a change in
# fusion decisions shows in review (name.no<pass>.kernels: with that pass disabled)
for kir in "$golden"/passes/*.kir; do
  "$kiln" dump "$kir" --kernels > "$tmp/kernels" || fail "dump --kernels $kir"
  diff -u "${kir%.kir}.kernels" "$tmp/kernels" || fail "schedule of $kir differs from ${kir%.kir}.kernels"
  for pass in layout fuse epilogue; do
    [ -e "${kir%.kir}.no$pass.kernels" ] || continue
    "$kiln" dump "$kir" --kernels --disable $pass > "$tmp/kernels" || fail "dump --kernels --disable $pass $kir"
    diff -u "${kir%.kir}.no$pass.kernels" "$tmp/kernels" || fail "schedule of $kir without $pass differs"
  done
done
# Graphviz: every golden graph parses with dot (package graphviz), one cluster per kernel
for kir in "$golden"/passes/*.kir; do
  "$kiln" dump "$kir" --format dot > "$tmp/g.dot" || fail "dump --format dot $kir"
  dot -Tsvg "$tmp/g.dot" > "$tmp/g.svg" || fail "dot rejects the graph of $kir"
  want=$(grep ' kernels, ' "${kir%.kir}.kernels" | cut -d' ' -f1)
  [ "$(grep -c '<g id="clust' "$tmp/g.svg")" = "$want" ] || fail "$kir: not $want kernel clusters"
done
if "$kiln" dump "$golden/passes/mse.kir" --kernels --disable fusion 2> "$tmp/err"; then fail "an unknown pass was accepted"; fi
grep -q "no pass named 'fusion'" "$tmp/err" || fail "unclear message: $(cat "$tmp/err")"
# KILN_DUMP / KILN_PASS_STATS: what the passes decided, on stderr
KILN_PASS_STATS=1 KILN_DUMP=after:fuse,after:memory-plan "$kiln" compile "$golden/passes/softmax.kir" -o "$tmp/sm.o" \
  2> "$tmp/err" > /dev/null || fail "compile with KILN_DUMP failed"
grep -q "^kernel %4 exp fuses %2 broadcast_to, %3 sub; reads %0, %1" "$tmp/err" || fail "no after:fuse dump: $(cat "$tmp/err")"
# the row sums reuse the row maxima's bytes
grep -q "^%5 reduce_sum: offset 0, 16 bytes" "$tmp/err" || fail "no after:memory-plan dump: $(cat "$tmp/err")"
grep -q "^kiln: fuse: 4 kernels, 3 nodes fused" "$tmp/err" || fail "no pass stats: $(cat "$tmp/err")"
# the layout pass keeps conv_nchw.kir NHWC between its convolutions
KILN_PASS_STATS=1 "$kiln" dump "$golden/passes/conv_nchw.kir" --kernels 2> "$tmp/err" > /dev/null || fail "dump conv_nchw.kir"
grep -q "^kiln: layout: 4 transposes moved, 2 pairs cancelled; 8 -> 4 transposes" "$tmp/err" || fail "no layout stats: $(cat "$tmp/err")"
# kiln bench: a table of the four variants; unknown names list the built-ins
"$kiln" bench mlp --batch 4 --runs 2 > "$tmp/bench" || fail "kiln bench mlp failed"
grep -q "^all passes  *[0-9]" "$tmp/bench" && grep -q "^no passes  *[0-9]" "$tmp/bench" || fail "no bench table: $(cat "$tmp/bench")"
# ... and of a graph file: the layout pass saves conv_nchw.kir four transpose kernels
"$kiln" bench "$golden/passes/conv_nchw.kir" --runs 2 > "$tmp/bench" || fail "kiln bench conv_nchw.kir failed"
grep -q "^all passes  *7 " "$tmp/bench" && grep -q "^no layout  *13 " "$tmp/bench" || fail "bench of a .kir: $(cat "$tmp/bench")"
if "$kiln" bench resnet9000 2> "$tmp/err"; then fail "an unknown built-in ran"; fi
# kiln bench --compile: each phase's median for every variant
"$kiln" bench mlp --batch 2 --runs 1 --compile > "$tmp/bench" || fail "kiln bench --compile failed"
grep -q "^all passes  *[0-9.]*  *[0-9.]*  *[0-9.]*  *[0-9.]*" "$tmp/bench" && grep -q "llvm opt" "$tmp/bench" || fail "no compile table: $(cat "$tmp/bench")"
grep -q "transformer-train" "$tmp/err" || fail "unclear message: $(cat "$tmp/err")"
echo "1 passed, 0 failed"

#!/usr/bin/env bash
# The training samples print what the TensorFlow tutorials print: the tutorial's
# linear regression ends at a = 0.97637, b = 0.057565 (also a float64 Python
# re-run of the same SGD loop: 0.976370, 0.0575650), and d(x^2)/dx at 3 is 6.
set -euo pipefail
bin=$1
here=$(cd "$(dirname "$0")" && pwd)
fail() { echo "FAIL: $*"; exit 1; }
out=$("$bin/linear_regression")
[ "$out" = "a = 0.97637, b = 0.057565 (traced 1 time)" ] || fail "linear_regression printed: $out"
out=$("$bin/gradient_tape")
[ "$out" = "y = 9, y_grad = 6" ] || fail "gradient_tape printed: $out"

# The deployment flow (samples/deploy/run.sh) on one epoch: the standalone program's
# accuracy over the 10,000 test images equals the JIT's test accuracy.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
out=$(BUILD="$bin/.." WORK="$work" bash "$here/../samples/deploy/run.sh" --epochs 1 2>/dev/null)
jit=$(echo "$out" | sed -n 's/^test loss .*, test accuracy \([0-9.]*\)$/\1/p')
aot=$(echo "$out" | sed -n 's/^accuracy \([0-9.]*\) on 10000 images.*/\1/p')
[ -n "$jit" ] && [ "$jit" = "$aot" ] || fail "deploy: JIT test accuracy '$jit', compiled classifier '$aot': $out"
echo "$out" | grep -q "^image 0: " || fail "deploy: no single-image line: $out"
# Seed 002's regression samples on the housing table (python3-sklearn's CSV), short runs.
out=$("$bin/regression" --epochs 100)
mlp=$(echo "$out" | sed -n 's/^test MSE: MLP \([0-9.]*\), linear least squares \([0-9.]*\)$/\1/p')
lin=$(echo "$out" | sed -n 's/^test MSE: MLP \([0-9.]*\), linear least squares \([0-9.]*\)$/\2/p')
[ -n "$mlp" ] && awk -v a="$mlp" -v b="$lin" 'BEGIN { exit !(a < b) }' || fail "regression: the MLP does not beat least squares: $out"
out=$("$bin/wide_deep" --epochs 20) || fail "wide_deep: $out"
echo "$out" | grep -q "^functional and subclassed forms agree: yes" || fail "wide_deep: $out"
# The search: the best trial retrains to the same loss (exit status), and 2 worker
# processes find exactly what 1 does.
one=$("$bin/hparam_search" --trials 6 --epochs 20 --jobs 1) || fail "hparam_search: $one"
two=$("$bin/hparam_search" --trials 6 --epochs 20 --jobs 2) || fail "hparam_search --jobs 2: $two"
strip() { sed 's/ (compiled .*//; s/ in [0-9.]* s with .*//'; }
[ "$(strip <<<"$one")" = "$(strip <<<"$two")" ] || fail "hparam_search: --jobs 2 differs from --jobs 1: $one / $two"
# 20 trials from an empty compile cache (its counters count the compiles): each
# architecture's train and evaluation functions compile once (its short last batches
# reuse them), the other trials reuse them.
cache=$(mktemp -d)
out=$(KILN_CACHE=1 KILN_CACHE_DIR="$cache" "$bin/hparam_search" --trials 20 --epochs 3) || fail "hparam_search, 20 trials: $out"
rm -rf "$cache"
archs=$(grep -o '[0-9]* x [0-9]* units' <<<"$out" | sort -u | wc -l)
compiled=$(sed -n 's/.*: \([0-9]*\) functions compiled in all$/\1/p' <<<"$out")
[ -n "$compiled" ] && [ "$compiled" -le $((2 * archs)) ] ||
  fail "hparam_search: $compiled functions compiled for $archs architectures: $out"
echo "hparam_search: 20 trials, $archs architectures, $compiled functions compiled"
echo "samples OK"

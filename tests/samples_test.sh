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
echo "samples OK"

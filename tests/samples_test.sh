#!/usr/bin/env bash
# The training samples print what the TensorFlow tutorials print: the tutorial's
# linear regression ends at a = 0.97637, b = 0.057565 (also a float64 Python
# re-run of the same SGD loop: 0.976370, 0.0575650), and d(x^2)/dx at 3 is 6.
set -euo pipefail
bin=$1
fail() { echo "FAIL: $*"; exit 1; }
out=$("$bin/linear_regression")
[ "$out" = "a = 0.97637, b = 0.057565 (traced 1 time)" ] || fail "linear_regression printed: $out"
out=$("$bin/gradient_tape")
[ "$out" = "y = 9, y_grad = 6" ] || fail "gradient_tape printed: $out"
echo "samples OK"

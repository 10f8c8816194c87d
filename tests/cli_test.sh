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
echo "1 passed, 0 failed"

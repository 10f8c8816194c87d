#!/usr/bin/env bash
# replay.sh BIN_DIR SOURCE_DIR TARGET...: runs every regression input the fuzzers
# found (tests/fuzz/regressions/TARGET/) and the seed files through each reader, then
# KILN_FUZZ_MUTATIONS (default 300) mutants of them, under whatever sanitizers the
# build has. A crash, a leak or a failure without a message fails.
set -euo pipefail
shopt -s nullglob
bin=$1 src=$2
shift 2
export KILN_FUZZ_GEN=${KILN_FUZZ_GEN:-$bin/../fuzzgen}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for t in "$@"; do
  bash "$src/tests/fuzz/seeds.sh" "$src" "$t" "$tmp/$t"
  files=("$tmp/$t"/*)
  [ -d "$src/tests/fuzz/regressions/$t" ] && files+=("$src/tests/fuzz/regressions/$t"/*)
  out=$("$bin/fuzz_replay_$t" --mutations "${KILN_FUZZ_MUTATIONS:-300}" "${files[@]}") || { echo "FAIL: fuzz target $t crashed on a replayed input" >&2; exit 1; }
  echo "$t: $out"
done

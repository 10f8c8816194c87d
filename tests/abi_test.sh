#!/usr/bin/env bash
# The shared library's ABI: soname libkiln.so.MAJOR, and exactly the kiln_ functions
# listed in tests/golden/libkiln.symbols exported (a symbol that appears or
# disappears without the list changing fails, so an ABI change is always deliberate).
# Usage: abi_test.sh LIBKILN.so SYMBOLS_FILE MAJOR
set -euo pipefail
lib=$1 want=$2 major=$3
fail() { echo "FAIL: $*" >&2; exit 1; }
soname=$(objdump -p "$lib" | awk '$1 == "SONAME" {print $2}')
[ "$soname" = "libkiln.so.$major" ] || fail "soname is '$soname', want libkiln.so.$major"
got=$(nm -D --defined-only "$lib" | awk '{print $3}' | sed 's/@.*//' | grep -v '^KILN_[0-9]*$' | sort)
stray=$(grep -v '^kiln_' <<<"$got" || true)
[ -z "$stray" ] || fail "symbols outside the kiln_ API are exported: $stray"
if ! diff <(echo "$got") "$want" > /tmp/kiln_abi_diff.$$; then
  echo "exported symbols (<) differ from $want (>):" >&2
  cat /tmp/kiln_abi_diff.$$ >&2
  rm -f /tmp/kiln_abi_diff.$$
  fail "the ABI changed: update $want if that is intended"
fi
rm -f /tmp/kiln_abi_diff.$$
echo "abi OK: $(wc -l <<<"$got") kiln_ symbols, soname $soname"

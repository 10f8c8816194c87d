#!/usr/bin/env bash
# Disk-full faults: runs io_fault_check inside a 4 MiB tmpfs (as root directly, otherwise
# in a user and mount namespace). Exit 77 (ctest: skipped) where neither can mount one.
# Usage: io_fault_test.sh IO_FAULT_CHECK
set -uo pipefail
bin=$1
dir=$(mktemp -d)
trap 'umount "$dir" 2>/dev/null; rm -rf "$dir"' EXIT
if [ "$(id -u)" -eq 0 ] && mount -t tmpfs -o size=4m kiln-io-fault "$dir" 2>/dev/null; then
  "$bin" "$dir"
elif unshare -Urm true 2>/dev/null; then
  unshare -Urm sh -c 'mount -t tmpfs -o size=4m kiln-io-fault "$1" && exec "$2" "$1"' sh "$dir" "$bin"
else
  echo "SKIP: cannot mount a small tmpfs here (not root, no user namespaces)"
  exit 77
fi

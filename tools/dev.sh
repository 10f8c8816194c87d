#!/usr/bin/env bash
# kiln's two entry points on a fresh Debian 12 machine (see README.md):
#   tools/dev.sh main   install what is missing, build, run the main job
#   tools/dev.sh test   install what is missing, build, run the whole test suite,
#                       then again built with AddressSanitizer + UndefinedBehaviorSanitizer,
#                       then the concurrency test built with ThreadSanitizer
#   tools/dev.sh bench  also install PyTorch, torchvision and onnxruntime-node (npm), build,
#                       run bench/ against oneDNN, OpenBLAS and PyTorch at 1 and 2 threads,
#                       bench/peers (ONNX models: kiln vs onnxruntime vs PyTorch) and
#                       data-parallel scaling over MPI (about 35 minutes)
#   tools/dev.sh fuzz [SECONDS] [TARGET...]
#                       build the libFuzzer targets (libfuzz_TARGET) with clang-19 in build-fuzz/, run each
#                       for SECONDS (default 60) from its seeds; crashes land in
#                       tests/fuzz/regressions/TARGET/, which the test suite replays
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(gcc make cmake pkg-config llvm-19-dev libprotobuf-c-dev protobuf-c-compiler libcmocka-dev zlib1g-dev
          dataset-fashion-mnist libonnx-dev libonnx-testdata gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user graphviz
          libopenblas-dev libdnnl-dev libopenmpi-dev openmpi-bin python3-sklearn)
BENCH_PACKAGES=(python3-torch python3-torchvision) # and node + npm, on every machine here
FUZZ_PACKAGES=(clang-19 libclang-rt-19-dev)
FUZZ_TARGETS=(onnx tensor npy kir checkpoint model idx csv weights)

install_missing() { # [packages...] (default: PACKAGES)
  local missing=() wanted=("$@")
  [ ${#wanted[@]} -eq 0 ] && wanted=("${PACKAGES[@]}")
  for p in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  echo "kiln: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

build() { # build DIR [cmake options...]
  local dir=$1
  shift
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
  cmake --build "$dir" -j"$(nproc)"
}

case "${1:-}" in
main)
  install_missing
  build build
  build/bin/fashion_mnist
  ;;
test)
  install_missing
  build build
  ctest --test-dir build --output-on-failure
  build build-asan -DKILN_SANITIZE=ON
  ctest --test-dir build-asan --output-on-failure
  # ThreadSanitizer: the library and the concurrency test only (8 threads sharing one model)
  cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKILN_TSAN=ON >/dev/null
  cmake --build build-tsan -j"$(nproc)" --target test_concurrency
  ctest --test-dir build-tsan --output-on-failure -R '^test_concurrency$'
  ;;
bench)
  install_missing
  install_missing "${BENCH_PACKAGES[@]}"
  build build
  for t in 1 2; do
    build/bin/bench_sgemm --threads "$t"
    build/bin/bench_conv --threads "$t"
    build/bin/bench_models --threads "$t"
  done
  build/bin/bench_dist
  # onnxruntime's CPU library ships in its npm package; its install script only fetches GPU parts
  [ -d build/node_modules/onnxruntime-node ] ||
    (cd build && npm install --ignore-scripts --no-save --no-package-lock onnxruntime-node@1.30.0 >/dev/null)
  /usr/bin/python3 bench/peers/peers.py build
  ;;
fuzz)
  install_missing
  install_missing "${FUZZ_PACKAGES[@]}"
  seconds=${2:-60}
  targets=("${@:3}")
  [ ${#targets[@]} -eq 0 ] && targets=("${FUZZ_TARGETS[@]}")
  CC=clang-19 build build-fuzz -DKILN_FUZZ=ON
  for t in "${targets[@]}"; do
    corpus=build-fuzz/corpus/$t
    [ -d "$corpus" ] || KILN_FUZZ_GEN=build-fuzz/fuzzgen bash tests/fuzz/seeds.sh "$PWD" "$t" "$corpus"
    mkdir -p "tests/fuzz/regressions/$t"
    echo "== libfuzz_$t for ${seconds}s"
    # -rss_limit_mb: a hostile model may ask for any size; kiln refuses sizes it cannot allocate
    build-fuzz/bin/libfuzz_"$t" "$corpus" -max_total_time="$seconds" -rss_limit_mb=4096 -print_final_stats=1 \
      -artifact_prefix="tests/fuzz/regressions/$t/" 2>&1 | grep -E "^#[0-9]+ *DONE|^stat::number_of_executed_units|ERROR|SUMMARY" || true
  done
  ;;
*)
  echo "usage: tools/dev.sh main|test|bench|fuzz" >&2
  exit 2
  ;;
esac

#!/usr/bin/env bash
# seeds.sh SOURCE_DIR TARGET OUT_DIR: writes the seed inputs of one fuzz target (real
# files of its format) into OUT_DIR. Shared by tests/fuzz/replay.sh and tools/dev.sh fuzz
# (the weights target also needs KILN_FUZZ_GEN, the build's fuzzgen/ directory).
set -euo pipefail
src=$1 t=$2 out=$3
mkdir -p "$out"
onnx=/usr/share/libonnx-testdata/data
fm=/usr/share/datasets/fashion-mnist
case $t in
onnx)
  i=0
  for f in "$onnx"/node/*/model.onnx "$onnx"/pytorch-converted/*/model.onnx; do
    [ -f "$f" ] || continue
    i=$((i + 1)); [ $((i % 8)) -eq 0 ] || continue   # every 8th: about 130 models
    cp "$f" "$out/model_$i.onnx"
  done ;;
tensor)
  i=0
  for f in "$onnx"/node/*/test_data_set_0/input_0.pb; do
    [ -f "$f" ] || continue
    i=$((i + 1)); [ $((i % 8)) -eq 0 ] || continue
    cp "$f" "$out/tensor_$i.pb"
  done ;;
npy) cp "$src"/tests/golden/*.npy "$out/" ;;
kir) cp "$src"/tests/golden/*.kir "$src"/tests/golden/passes/*.kir "$out/" ;;
checkpoint) cp "$src/tests/golden/small.ckpt" "$out/" ;;
model) cp "$src/tests/golden/small.kiln" "$out/" ;;
idx)
  if [ -f "$fm/t10k-labels-idx1-ubyte.gz" ]; then
    cp "$fm/t10k-labels-idx1-ubyte.gz" "$out/labels.gz"
    (gzip -dc "$fm/t10k-labels-idx1-ubyte.gz" || true) | head -c 200 > "$out/labels_prefix"
    (gzip -dc "$fm/t10k-images-idx3-ubyte.gz" || true) | head -c 4000 > "$out/images_prefix"
  fi
  printf '\0\0\x08\x01\0\0\0\x03\x01\x02\x03' > "$out/tiny.idx" ;;
csv)
  printf 'a,b,label\n1,2.5,0\n-3,4e2,1\n' > "$out/header.csv"
  printf '1,2,3\n4,5,6\n7,8,9\n' > "$out/plain.csv"
  printf '1;2\n3;x\n' > "$out/bad.csv" ;;
weights) # KILN_FUZZ_GEN: the build's fuzzgen/ (the generated header's weights file)
  cp "${KILN_FUZZ_GEN:?set KILN_FUZZ_GEN to the fuzzgen directory of the build}/fuzzw.weights" "$out/good.weights"
  head -c 40 "$out/good.weights" > "$out/short.weights" ;;
*) echo "seeds.sh: unknown target $t" >&2; exit 2 ;;
esac

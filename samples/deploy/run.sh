#!/usr/bin/env bash
# Fashion-MNIST from training to a standalone program:
#   1. train and save a model file   (samples/fashion_mnist.c)
#   2. compile it to fmnist.o + fmnist.h   (kiln compile)
#   3. link classify.c with it: libc and libm only, no kiln
#   4. classify a test image, then the whole test set
# Usage: samples/deploy/run.sh [fashion_mnist options, e.g. --cnn or --epochs 3]
# Environment: BUILD (default build/), WORK (default a new temporary directory),
# DATA (default /usr/share/datasets/fashion-mnist), CC (default cc).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${BUILD:-$here/../../build}
data=${DATA:-/usr/share/datasets/fashion-mnist}
work=${WORK:-$(mktemp -d)}
mkdir -p "$work"

"$build/bin/fashion_mnist" --data "$data" --save "$work/fashion_mnist.kiln" "$@" | grep -E "^(trained|test|saved)"
"$build/bin/kiln" compile "$work/fashion_mnist.kiln" --name fmnist -o "$work/fmnist.o"
${CC:-cc} -O2 -std=c99 -Wall -Werror -I"$work" "$here/classify.c" "$work/fmnist.o" -lm -o "$work/classify"
echo "classify links: $(nm -u "$work/fmnist.o" | awk '{print $NF}' | tr '\n' ' ')"

gzip -dc "$data/t10k-images-idx3-ubyte.gz" > "$work/t10k-images"
gzip -dc "$data/t10k-labels-idx1-ubyte.gz" > "$work/t10k-labels"
"$work/classify" "$work/t10k-images" 0
"$work/classify" "$work/t10k-images" "$work/t10k-labels"
echo "files in $work"

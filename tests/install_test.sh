#!/usr/bin/env bash
# kiln as installed: `cmake --install` into a temporary prefix, then the samples built
# out of tree against it — readme_example through find_package(kiln) (shared and
# static) and through pkg-config, and the deploy flow (train with a program built
# against the installed library, `kiln compile` with the installed CLI, link the
# standalone classifier). Nothing here points into the source or build tree except
# the sample sources, which are copied first.
# Usage: install_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1 src=$2
tmp=$(mktemp -d)
trap '[ -n "${KEEP:-}" ] || rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
prefix=$tmp/prefix
cmake --install "$build" --prefix "$prefix" > "$tmp/install.log" || fail "cmake --install: $(tail -5 "$tmp/install.log")"
for f in include/kiln/kiln.h include/kiln/version.h lib/libkiln.a lib/pkgconfig/kiln.pc \
         lib/cmake/kiln/kilnConfig.cmake lib/cmake/kiln/kilnConfigVersion.cmake bin/kiln; do
  [ -e "$prefix/$f" ] || fail "not installed: $f"
done
[ -L "$prefix/lib/libkiln.so" ] && [ -e "$prefix/lib/libkiln.so.0" ] || fail "libkiln.so and its soname link not installed"

# The consumer sees only the prefix.
mkdir -p "$tmp/app"
cp "$src/samples/readme_example.c" "$src/samples/fashion_mnist.c" "$tmp/app/"
cat > "$tmp/app/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.20)
project(kiln_consumer C)
find_package(kiln 0 REQUIRED)
set(CMAKE_RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
add_executable(readme_example readme_example.c)
target_link_libraries(readme_example PRIVATE kiln::kiln)
add_executable(readme_example_static readme_example.c)
target_link_libraries(readme_example_static PRIVATE kiln::kiln_static)
add_executable(fashion_mnist fashion_mnist.c)
target_link_libraries(fashion_mnist PRIVATE kiln::kiln m)
CMAKE
cmake -S "$tmp/app" -B "$tmp/app/build" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release > "$tmp/app.log" 2>&1 ||
  fail "find_package(kiln): $(tail -20 "$tmp/app.log")"
cmake --build "$tmp/app/build" -j2 >> "$tmp/app.log" 2>&1 || fail "building against kiln::kiln: $(tail -20 "$tmp/app.log")"
if grep -E -- "-I$src|$build" "$tmp/app/build/CMakeFiles/readme_example.dir/flags.make" "$tmp/app/build/CMakeFiles/readme_example.dir/link.txt"; then
  fail "the consumer's build points into kiln's source or build tree"
fi
want="0.179 0.021 0.799"
export LD_LIBRARY_PATH=$prefix/lib
ldd "$tmp/app/build/bin/readme_example" > "$tmp/ldd"
grep -q "$prefix/lib/libkiln.so.0" "$tmp/ldd" || fail "readme_example does not load the installed libkiln.so.0"
for exe in readme_example readme_example_static; do
  out=$(KILN_CACHE_DIR=$tmp/cache "$tmp/app/build/bin/$exe") || fail "$exe failed"
  [ "$(head -1 <<<"$out")" = "$want" ] || fail "$exe printed '$out'"
done

# pkg-config: one compiler line.
flags=$(PKG_CONFIG_PATH=$prefix/lib/pkgconfig pkg-config --cflags --libs kiln) || fail "pkg-config kiln"
cc -std=c11 -Wall -Werror "$tmp/app/readme_example.c" $flags -o "$tmp/app/readme_pc" || fail "cc with pkg-config flags: $flags"
out=$(KILN_CACHE_DIR=$tmp/cache "$tmp/app/readme_pc") || fail "the pkg-config build failed to run"
[ "$(head -1 <<<"$out")" = "$want" ] || fail "pkg-config build printed '$out'"
[ "$(PKG_CONFIG_PATH=$prefix/lib/pkgconfig pkg-config --modversion kiln)" = "$(sed -n 's/^#define KILN_VERSION_\(MAJOR\|MINOR\|PATCH\) //p' "$prefix/include/kiln/version.h" | paste -sd.)" ] ||
  fail "pkg-config's version is not version.h's"

# The deploy flow with the installed CLI and a trainer built against the installed
# library, once through find_package and once through pkg-config.
mkdir -p "$tmp/pc/bin"
cc -std=gnu11 -O2 -Wall -Werror "$tmp/app/fashion_mnist.c" $flags -lm -o "$tmp/pc/bin/fashion_mnist" || fail "cc fashion_mnist with pkg-config"
for dir in "$tmp/app/build" "$tmp/pc"; do
  ln -s "$prefix/bin/kiln" "$dir/bin/kiln"
  out=$(BUILD="$dir" WORK="$dir/deploy" KILN_CACHE_DIR=$tmp/cache bash "$src/samples/deploy/run.sh" --epochs 1 2>&1) ||
    fail "deploy flow ($dir): $out"
  grep -q "^accuracy 0\.[89][0-9]* on 10000 images" <<<"$out" || fail "deploy flow ($dir) printed: $out"
done
echo "install OK: $prefix, find_package (shared, static), pkg-config, deploy with both"

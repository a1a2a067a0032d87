#!/usr/bin/env bash
# Builds the static library, compiles tests/c/qemu_convert.c against include/cvmem.h and it,
# and runs it. Used by CI; needs a C compiler (cc).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build -p cvmem-capi
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
out="$target_dir/debug/qemu_convert"
cc -std=c11 -Wall -Wextra -Werror -Iinclude tests/c/qemu_convert.c \
  "$target_dir/debug/libcvmem_capi.a" -lpthread -ldl -lm -o "$out"
"$out"
# The shared library names its ABI version.
soname=$(readelf -d "$target_dir/debug/libcvmem_capi.so" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
[ "$soname" = "libcvmem_capi.so.0" ] || { echo "SONAME is '$soname', not libcvmem_capi.so.0" >&2; exit 1; }
echo "cvmem C API: shared library SONAME $soname"

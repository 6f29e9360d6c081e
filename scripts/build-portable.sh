#!/usr/bin/env bash
# Builds dist/strata-portable.tar.xz: a stripped release `strata` with the Swift runtime and
# Foundation linked in (--static-swift-stdlib), plus every shared library it loads beyond glibc,
# libstdc++ and libgcc (OpenBLAS, COIN-OR CBC and their own needs) in lib/, found through the
# binary's RUNPATH ($ORIGIN/lib). It runs on an x86-64 Linux machine with no Swift (glibc >= 2.35),
# e.g. a GPU machine; CUDA is opened at run time there. The archive must stay under 64 MiB (what
# travels to a lent GPU machine): the binary is ~74 MB stripped, mostly Foundation's ICU data,
# which xz packs well.
#
#   scripts/build-portable.sh          # -> dist/strata-portable.tar.xz and dist/portable/
set -euo pipefail
cd "$(dirname "$0")/.."
limit=$((64 * 1024 * 1024))

swift build -c release --product strata --static-swift-stdlib --scratch-path .build/portable \
  -Xlinker -rpath -Xlinker '$ORIGIN/lib'

out=dist/portable
rm -rf "$out" dist/strata-portable.tar.xz
mkdir -p "$out/lib"
cp .build/portable/release/strata "$out/strata"
strip "$out/strata"

# Everything ldd resolves except the C/C++ runtime every Linux has.
ldd "$out/strata" | awk '/=> \// { print $1, $3 }' | while read -r name path; do
  case "$name" in
    libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|libgcc_s.so*|libstdc++.so*|ld-linux*) ;;
    *) cp -L "$path" "$out/lib/$name" ;;
  esac
done
if ldd "$out/strata" | grep -q '/swift/'; then
  echo "build-portable: the binary still loads Swift runtime libraries:" >&2
  ldd "$out/strata" | grep '/swift/' >&2
  exit 1
fi

# It must start with nothing but its own folder: no toolchain, no system OpenBLAS/CBC path.
env -i LD_LIBRARY_PATH= "$out/strata" --version >/dev/null 2>&1 || env -i "$out/strata" --help >/dev/null
(cd "$out" && ldd ./strata | grep -q "=> $PWD/\(\./\)\?lib/libopenblas" ) || { echo "build-portable: lib/ is not on the binary's RUNPATH" >&2; exit 1; }

XZ_OPT=-6 tar -C "$out" -cJf dist/strata-portable.tar.xz strata lib
size=$(stat -c %s dist/strata-portable.tar.xz)
echo "dist/strata-portable.tar.xz: $((size / 1048576)) MiB (binary $(($(stat -c %s "$out/strata") / 1048576)) MiB, lib/ $(du -sm "$out/lib" | cut -f1) MiB unpacked)"
if [ "$size" -ge "$limit" ]; then
  echo "build-portable: the archive is over 64 MiB" >&2
  exit 1
fi

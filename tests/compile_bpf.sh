#!/bin/sh
# One tc-BPF object the way OpenWrt's include/bpf.mk (CompileBPF) builds it for a target,
# with the host's clang and LLVM tools instead of the SDK's:
#
#   tests/compile_bpf.sh SRC OBJ BPF_ARCH
#
# BPF_ARCH is bpf.mk's: mips$(if CONFIG_ARCH_64BIT,64)$(if CONFIG_BIG_ENDIAN,,el), i.e.
# mips, mipsel, mips64 or mips64el; the byte order (bpfeb or bpfel) follows from it. The
# C front-end parses for that ABI, opt and llc make BPF code (-mcpu=v3), llvm-strip drops
# the DWARF and keeps the BTF the maps need. Headers: linux-libc-dev and libbpf-dev where
# the SDK has its kernel tree (the source reads only fixed-width uapi types).
set -eu
[ $# -eq 3 ] || { echo "usage: $0 SRC OBJ BPF_ARCH" >&2; exit 2; }
src=$1 obj=$2 arch=$3
case $arch in
mipsel | mips64el) target=bpfel endian=little ;;
mips | mips64) target=bpfeb endian=big ;;
*) echo "compile-bpf: BPF_ARCH $arch is not one of bpf.mk's (mips mipsel mips64 mips64el)" >&2; exit 2 ;;
esac
multiarch=$(gcc -print-multiarch 2>/dev/null || true)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
clang -g -target "$arch-linux-gnu" ${multiarch:+-I/usr/include/$multiarch} \
	-D__KERNEL__ -D__BPF_TRACING__ -DCONFIG_GENERIC_CSUM -D__TARGET_ARCH_mips "-m$endian-endian" -fno-stack-protector -Wall \
	-Wno-unused-value -Wno-pointer-sign -Wno-compare-distinct-pointer-types \
	-Wno-gnu-variable-sized-type-not-at-end -Wno-address-of-packed-member \
	-Wno-tautological-compare -Wno-unknown-warning-option -fno-asynchronous-unwind-tables \
	-Wno-uninitialized -Wno-unused-variable -Wno-unused-label \
	-O2 -emit-llvm -Xclang -disable-llvm-passes -c "$src" -o "$tmp/prog.bc"
opt -O2 "-mtriple=$target" <"$tmp/prog.bc" >"$tmp/prog.opt"
llvm-dis <"$tmp/prog.opt" >"$tmp/prog.S"
llc "-march=$target" -mcpu=v3 -filetype=obj -o "$obj" <"$tmp/prog.S"
llvm-strip --strip-debug "$obj"

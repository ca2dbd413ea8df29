#!/usr/bin/env bash
# Builds the table-lookup W2A2 prototype for the three benchmark layers and counts its
# executed instructions under qemu (sliver's counting plugin). Needs tools/setup.sh's
# cross compiler and qemu. Usage: bash benchmarks/lowbit_tbl/run.sh (PYTHON: the Python sliver is
# installed in, default python3)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
"${PYTHON:-python3}" "$here/gen.py" "$build/tbl_asm.S"
for c in "56 64" "28 128" "14 256"; do
  set -- $c
  aarch64-linux-gnu-gcc -O3 -mcpu=cortex-a72 -ffp-contract=off -static -DHW=$1 -DCH=$2 \
    -o "$build/tbl_$1" "$here/tbl.c" "$build/tbl_asm.S"
  echo "== ${1}x${1}x${2}"
  "${PYTHON:-python3}" "$here/run.py" "$build/tbl_$1"
done

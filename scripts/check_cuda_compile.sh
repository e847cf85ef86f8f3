#!/usr/bin/env bash
# Compiles every .cu under csrc/ with nvcc -c for sm_80 and sm_90a (no GPU needed) and fails on any error;
# the standalone benchmarks under scripts/cuda/ for sm_90a.
# -Xptxas -v prints registers and spill bytes per kernel so spills show in the CI log.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
NVCC="${NVCC:-nvcc}"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
status=0
while IFS= read -r -d '' src; do
  for arch in 80 90a; do
    echo "== $src (sm_$arch)"
    if "$NVCC" -c -std=c++17 -O3 -I"$ROOT/csrc" --expt-relaxed-constexpr -DLITE_SRT_WITH_CUDA \
        -gencode="arch=compute_$arch,code=sm_$arch" -Xptxas -v "$src" -o "$OUT/obj.o" >"$OUT/log" 2>&1; then
      grep -E "warning|Compiling entry|spill|registers" "$OUT/log" || true
    else
      cat "$OUT/log"
      echo "FAILED: $src for sm_$arch"
      status=1
    fi
  done
done < <(find "$ROOT/csrc" -name '*.cu' -print0 | sort -z)
# Standalone Hopper benchmarks (scripts/cuda/, own main(), no torch): sm_90a only.
while IFS= read -r -d '' src; do
  echo "== $src (sm_90a)"
  if ! "$NVCC" -c -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a "$src" -o "$OUT/obj.o" >"$OUT/log" 2>&1; then
    cat "$OUT/log"
    echo "FAILED: $src for sm_90a"
    status=1
  fi
done < <(find "$ROOT/scripts/cuda" -name '*.cu' -print0 | sort -z)
exit $status

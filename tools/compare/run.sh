#!/usr/bin/env bash
# One full run of the README's "Every workload" table: every workload at 64 GiB (all designs)
# and at 1 TiB (all but linux, which is over the budget there), one `cvmem compare --json` per
# workload and size, into OUT/W-SIZE.json. checkerboard-all and hostile run at 64 GiB only.
#   tools/compare/run.sh OUT [CVMEM]     (CVMEM: the binary, default target/release/cvmem)
# Then: tools/compare/table.py OUT1 OUT2 OUT3 > table.md
set -euo pipefail
out=${1:?usage: run.sh OUT [CVMEM]}
bin=${2:-target/release/cvmem}
mkdir -p "$out"
all=linux,option-a,option-b,option-c,bitmap,rangemap,roaring,cvmem
for w in boot startup tdx-4g swiotlb-churn snp-psc lazy-accept kexec mmio-storm selftest \
  random-flips checkerboard checkerboard-all hostile; do
  for size in 64G 1T; do
    designs=$all
    case $size/$w in
      1T/checkerboard-all | 1T/hostile) continue ;;
      1T/*) designs=${all#linux,} ;;
    esac
    "$bin" compare --workload "$w" --sizes "$size" --designs "$designs" --budget 10 --repeat 5 \
      --json >"$out/$w-$size.json"
    echo "$(date +%T) $w $size" >&2
  done
done

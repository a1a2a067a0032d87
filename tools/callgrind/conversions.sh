#!/usr/bin/env bash
# Instructions per conversion of the tracker, per workload, under callgrind: the conversion_loop
# example run with 3 passes and with 1, the difference halved (generation and set-up cancel out)
# and divided by the conversions. Instruction counts do not move with the host's noise, so this
# is how a change to the store is judged (issue 21: within 1.10x of before).
#
#   tools/callgrind/conversions.sh [GIB] [WORKLOAD...] > table.tsv
set -euo pipefail
cd "$(dirname "$0")/../.."
gib=${1:-64}; shift || true
workloads=("$@")
if [ ${#workloads[@]} -eq 0 ]; then
  workloads=(startup boot tdx-4g swiotlb-churn snp-psc lazy-accept kexec mmio-storm selftest
             checkerboard checkerboard-all hostile random-flips)
fi
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
cargo build --release -q -p cvmem-designs --example conversion_loop
bin=${CARGO_TARGET_DIR:-target}/release/examples/conversion_loop
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
count() { # workload passes -> instructions
  valgrind --tool=callgrind --callgrind-out-file="$tmp/out" "$bin" "$1" "$gib" "$2" \
    >"$tmp/stdout" 2>"$tmp/stderr"
  grep -o 'Collected : [0-9]*' "$tmp/stderr" | grep -o '[0-9]*$'
}
printf 'workload\tconversions\tinstructions/conversion\n'
for w in "${workloads[@]}"; do
  i1=$(count "$w" 1)
  n=$(grep -o '[0-9]* conversions' "$tmp/stdout" | grep -o '^[0-9]*')
  i3=$(count "$w" 3)
  awk -v w="$w" -v n="$n" -v a="$i1" -v b="$i3" \
    'BEGIN { printf "%s\t%d\t%.1f\n", w, n, (b - a) / 2 / (n > 0 ? n : 1) }'
done

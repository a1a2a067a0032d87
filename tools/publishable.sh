#!/usr/bin/env bash
# Prints `-p NAME` for every workspace crate that is published (no `publish = false`).
set -euo pipefail
cd "$(dirname "$0")/.."
for manifest in crates/*/Cargo.toml; do
  grep -q '^publish = false' "$manifest" && continue
  printf -- '-p %s ' "$(sed -n 's/^name = "\(.*\)"/\1/p' "$manifest" | head -1)"
done
echo

#!/usr/bin/env bash
# Instructions per call of each configuration, from callgrind: each config
# runs 10,000 and 30,000 calls; (Ir(30k) - Ir(10k)) / 20,000 cancels the
# start-up. Then the full stacks' instructions by category
# (callgrind_breakdown.py). Deterministic: the machine's noise does not enter.
# Also the atomic read-modify-writes per call (benches/atomics.py).
#   bash benches/callgrind.sh [config...]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p backstop-benches --bench profile --no-run 2>/dev/null
P=$(ls -t target/release/deps/profile-* | grep -v '\.d$' | head -1)
OUT=${CG_OUT:-target/callgrind}
mkdir -p "$OUT"
ir() {
  valgrind --tool=callgrind --dump-instr=yes --callgrind-out-file="$OUT/$1-$2.out" "$P" "$1" "$2" 2>/dev/null
  callgrind_annotate "$OUT/$1-$2.out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'
}
configs=("$@")
[ ${#configs[@]} -eq 0 ] && configs=(bare sla attempt-timeout shield admission rate-limit \
  concurrency retry full http-bare http-full tower-timeout tower-concurrency tower-buffer-rate-limit tower-retry \
  tower-load-shed tower-full)
for c in "${configs[@]}"; do
  a=$(ir "$c" 10000); b=$(ir "$c" 30000)
  at=$(python3 benches/atomics.py "$P" "$OUT/$c-10000.out" "$OUT/$c-30000.out" 20000)
  echo "$c: $(( (b - a) / 20000 )) instructions/call, $at atomics/call"
done
"$P" sizes
for c in full tower-full; do
  [ -f "$OUT/$c-30000.out" ] && python3 benches/callgrind_breakdown.py "$OUT" "$c" 25
done

#!/usr/bin/env bash
# Fuzzes every target for SECONDS (default 60) each with cargo-fuzz (libFuzzer) on the nightly
# toolchain, then prints one line per target: executions, time, crashes. Installs cargo-fuzz
# when it is missing. The seeds (fuzz/seeds/<target>, kept in the repo) start each run; what
# libFuzzer learns goes to fuzz/corpus/<target> (not committed). A crash leaves its input in
# fuzz/artifacts/<target>/ and makes this script exit 1: turn it into a regression test in the
# normal suite, fix it, and run again.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo +nightly install cargo-fuzz --locked
fi
mkdir -p logs
failed=0
summary=()
for target in $(cargo +nightly fuzz list); do
  mkdir -p "corpus/$target" "seeds/$target"
  log="logs/$target.log"
  started=$(date +%s)
  if cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=2048 >"$log" 2>&1; then
    crashes=0
  else
    crashes=1
    failed=1
  fi
  elapsed=$(( $(date +%s) - started ))
  runs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -1 | awk '{print $2}')
  summary+=("$(printf '%-10s %12s executions  %4ss  crashes: %s' "$target" "${runs:-?}" "$elapsed" "$crashes")")
  if [ "$crashes" -ne 0 ]; then
    grep -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -5 >&2 || true
  fi
done
printf '%s\n' "${summary[@]}"
exit "$failed"

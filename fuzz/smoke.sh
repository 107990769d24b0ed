#!/usr/bin/env bash
# A short run of every fuzz target, for CI: installs cargo-fuzz if it is missing, builds
# all targets once, then runs each for $FUZZ_SMOKE_SECONDS (default 20) from an empty
# corpus. Fails on the first crash, leak or timeout (libFuzzer exits non-zero and leaves
# the input in fuzz/artifacts/<target>/). Long runs: see README.md.
set -euo pipefail
cd "$(dirname "$0")"
export PATH="$HOME/.cargo/bin:$PATH" RUSTC_BOOTSTRAP=1
seconds=${FUZZ_SMOKE_SECONDS:-20}

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
targets=$(cargo fuzz list)
cargo fuzz build -O
for t in $targets; do
  corpus=$(mktemp -d)
  echo "--- $t: ${seconds} s"
  # -timeout: a single input taking over 10 s is a hang, not a slow machine.
  if ! cargo fuzz run -O "$t" "$corpus" -- -max_total_time="$seconds" -timeout=10 \
      -print_final_stats=1 2>"$corpus.log"; then
    tail -n 60 "$corpus.log"
    echo "fuzz target $t failed; the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  grep -E '^(stat::number_of_executed_units|Done )' "$corpus.log" || true
  rm -rf "$corpus" "$corpus.log"
done

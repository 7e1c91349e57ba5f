#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each) with
# cargo-fuzz on nightly, starting from the kept corpus (fuzz/corpus/<target>)
# and adding to it what the run finds; crashes land in fuzz/artifacts/.
# The test suite replays the corpus on stable (tests/fuzz_corpus.rs).
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
# Needs: rustup toolchain nightly, cargo install cargo-fuzz.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(nbd_decode peer_frame witness_frame config claims_file volume_meta conflict_file)
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "needs cargo-fuzz on nightly: rustup toolchain install nightly && cargo install cargo-fuzz" >&2
  exit 2
fi
cd fuzz
for t in "${targets[@]}"; do
  echo "== $t: ${seconds}s"
  # -s none: no sanitizer (the code under test is safe Rust); the corpus
  # directory is read and grown in place.
  cargo +nightly fuzz run -s none "$t" "corpus/$t" -- -max_total_time="$seconds" -print_final_stats=1 2>&1 \
    | grep -E "^(stat::number_of_executed_units|stat::new_units_added|==|SUMMARY|thread .* panicked)" || true
done

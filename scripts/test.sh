#!/usr/bin/env bash
# The test command: installs what the tests need when missing, then runs the
# whole suite (unit, property, simulation and multi-process tests with real
# NBD clients). Usage: ./scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for tool in qemu-io:qemu-utils qemu-img:qemu-utils qemu-nbd:qemu-utils nbdinfo:libnbd-bin nbdcopy:libnbd-bin fio:fio tmux:tmux; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool##*:}")
done
if [ "${#need[@]}" -gt 0 ]; then
  pkgs=$(printf '%s\n' "${need[@]}" | sort -u | tr '\n' ' ')
  echo "installing test tools: $pkgs"
  sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq $pkgs
fi

export RUST_BACKTRACE=1
# Style and lints first: cheap, and a failure here is the easiest to fix.
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Test binaries run one at a time (each spawns node processes); tests inside
# a binary run in parallel on the 2 cores.
cargo test --workspace --locked "$@"

#!/usr/bin/env bash
# Breaks each rule of the protocol engine that enforces an invariant, one at
# a time, and shows the deterministic simulator catching it within the CI
# seed budget. See scripts/mutants.py. Usage: scripts/mutants.sh [--seeds N]
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/mutants.py "$@"

#!/usr/bin/env bash
# One command: install what is missing, build, and run every test (ctest). When clang is
# installed, each libFuzzer target (tests/fuzz) also runs for 30 s first (scripts/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
if command -v clang++ >/dev/null 2>&1 || command -v clang++-14 >/dev/null 2>&1; then
  # A fixed seed: the same inputs every run (a new one is for scripts/fuzz.sh by hand).
  FUZZ_SEED="${FUZZ_SEED:-1}" bash scripts/fuzz.sh "${FUZZ_SECONDS:-30}"
fi
ctest --test-dir build -j2 --output-on-failure --timeout 300 "$@"

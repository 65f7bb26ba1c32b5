#!/usr/bin/env bash
# Sanitizer runs of the tests that touch threads or parsers (not part of the default test
# command: it doubles the build). ASan+UBSan: codec, config, router, ABI, TCP plugin, end to end.
# TSan: router, TCP, MQTT, ZeroMQ and HTTP plugins, end to end (the gateway binary itself runs
# under TSan); Kafka under ASan only (see below).
#   ./scripts/sanitize.sh            both
#   ./scripts/sanitize.sh asan|tsan  one
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
what=${1:-all}
common=(-G Ninja -DCMAKE_BUILD_TYPE=Debug -DFINGATE_BENCH=OFF)
if [[ $what == all || $what == asan ]]; then
  cmake -S . -B build-asan "${common[@]}" -DFINGATE_SANITIZE=ON >/dev/null
  ninja -C build-asan -j2
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    ctest --test-dir build-asan -j2 --output-on-failure --timeout 600 -L 'unit|abi|plugin|integration'
fi
if [[ $what == all || $what == tsan ]]; then
  cmake -S . -B build-tsan "${common[@]}" -DFINGATE_TSAN=ON >/dev/null
  ninja -C build-tsan -j2
  # Not the tests that load librdkafka: its threads crash inside the TSAN runtime (SEGV in the
  # test process and in the mock cluster); the Kafka plugin runs under ASan instead.
  TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:suppressions=$PWD/tests/tsan.supp \
    ctest --test-dir build-tsan -j2 --output-on-failure --timeout 600 -L 'unit|plugin|integration' \
    -E 'Kafka|ABindingLearnedThroughOneInstance'
fi

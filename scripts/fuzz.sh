#!/usr/bin/env bash
# libFuzzer runs of tests/fuzz/*_fuzz.cpp (clang: -fsanitize=fuzzer,address,undefined).
#   scripts/fuzz.sh [SECONDS] [TARGET...]      e.g. scripts/fuzz.sh 30 / scripts/fuzz.sh 300 codec
# Configures build-fuzz with clang (-DFINGATE_FUZZ=ON, its own tree: the sanitizers and the
# fuzzer instrumentation need every object built for them), builds the targets, replays each
# target's fixed-crash inputs (tests/fuzz/crashes/<name>, if any), then fuzzes each for SECONDS
# (default 30) on a fresh copy of its seed corpus (tests/fuzz/corpus/<name>; the seeds in the
# repository are never changed). A crash or a failed check stops the script (exit 1) and names
# the reproducer under build-fuzz/fuzz-run/<name>/. One summary line per target at the end:
# executions, executions/s, coverage (edges), corpus size.
# Environment: FUZZ_JOBS (build jobs, default 2), FUZZ_MAX_LEN (libFuzzer -max_len), FUZZ_SEED
# (libFuzzer -seed: the test command fixes it, so CI explores the same inputs each time), FUZZ_RUNS
# (-runs=N instead of a time limit, for a run of a fixed number of executions).
set -euo pipefail
cd "$(dirname "$0")/.."
# ccache: paths relative to the checkout, so another clone (CI) reuses this machine's cache.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}" CCACHE_NOHASHDIR="${CCACHE_NOHASHDIR:-1}"
secs=${1:-30}
shift || true

cxx=$(command -v clang++ || command -v clang++-14 || true)
cc=$(command -v clang || command -v clang-14 || true)
if [[ -z $cxx || -z $cc ]]; then
  echo "fuzz.sh: clang is not installed (apt-get install clang)" >&2
  exit 2
fi

targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  for f in tests/fuzz/*_fuzz.cpp; do
    n=$(basename "$f" .cpp)
    targets+=("${n%_fuzz}")
  done
fi

off=()
for p in LOOPBACK TCP MQTT ZMQ KAFKA HTTP; do off+=("-DFINGATE_PLUGIN_$p=OFF"); done
cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER="$cc" \
  -DCMAKE_CXX_COMPILER="$cxx" -DFINGATE_FUZZ=ON -DFINGATE_TESTS=OFF -DFINGATE_BENCH=OFF "${off[@]}" >/dev/null
ninja -C build-fuzz -j"${FUZZ_JOBS:-2}" "${targets[@]/%/_fuzz}"

summary=()
for t in "${targets[@]}"; do
  bin=build-fuzz/bin/${t}_fuzz
  run=build-fuzz/fuzz-run/$t
  rm -rf "$run"
  mkdir -p "$run/corpus"
  if [[ -d tests/fuzz/corpus/$t ]]; then cp -r "tests/fuzz/corpus/$t/." "$run/corpus/"; fi
  if [[ -d tests/fuzz/crashes/$t ]]; then
    "$bin" -runs=0 tests/fuzz/crashes/"$t" >"$run/crashes-replay.log" 2>&1 || {
      echo "fuzz.sh: $t: a fixed crash came back (tests/fuzz/crashes/$t):" >&2
      tail -30 "$run/crashes-replay.log" >&2
      exit 1
    }
  fi
  limit=(-max_total_time="$secs")
  [[ -n ${FUZZ_RUNS:-} ]] && limit=(-runs="$FUZZ_RUNS")
  extra=()
  [[ -n ${FUZZ_MAX_LEN:-} ]] && extra+=(-max_len="$FUZZ_MAX_LEN")
  [[ -n ${FUZZ_SEED:-} ]] && extra+=(-seed="$FUZZ_SEED")
  echo "fuzz.sh: $t: ${FUZZ_RUNS:+$FUZZ_RUNS runs}${FUZZ_RUNS:-$secs s} on $(ls "$run/corpus" | wc -l) seed(s)"
  if ! "$bin" "${limit[@]}" "${extra[@]}" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$run/" "$run/corpus" >"$run/fuzz.log" 2>&1; then
    echo "fuzz.sh: $t FAILED; reproducer: $(ls "$run"/crash-* "$run"/leak-* "$run"/timeout-* "$run"/oom-* 2>/dev/null | head -1)" >&2
    grep -E 'ERROR|check failed|SUMMARY|panic' "$run/fuzz.log" | head -20 >&2 || true
    echo "log: $run/fuzz.log" >&2
    exit 1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$run/fuzz.log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$run/fuzz.log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+' "$run/fuzz.log" | tail -1 | cut -d' ' -f2)
  ft=$(grep -oE 'ft: [0-9]+' "$run/fuzz.log" | tail -1 | cut -d' ' -f2)
  corp=$(grep -oE 'corp: [0-9]+' "$run/fuzz.log" | tail -1 | cut -d' ' -f2)
  summary+=("$(printf '%-10s %12s execs %9s exec/s  cov %6s  ft %6s  corpus %5s  crashes 0' "$t" "$execs" "$rate" "$cov" "$ft" "$corp")")
done
printf '%s\n' "${summary[@]}"

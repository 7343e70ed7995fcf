#!/usr/bin/env bash
# Builds the test programs with AddressSanitizer and UndefinedBehaviorSanitizer
# (-DETHEREAL_SANITIZE=ON) in build-asan/ and runs the memory-management areas: manager, memory,
# memory_log, lora, placement, runtime and cli. Any sanitizer report fails the run.
#
# Usage: bash scripts/asan.sh [AREA...]     e.g. bash scripts/asan.sh manager placement
# Environment: BUILD_DIR (default build-asan), JOBS (default 2), CTEST_TIMEOUT seconds per test
# (default 1200: sanitized kernels run several times slower than in a Release build),
# ASAN_EXCLUDE a regular expression of test names to leave out (default ResidentMemory; empty
# runs every test).
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir="${BUILD_DIR:-build-asan}"
jobs="${JOBS:-2}"
areas=("$@")
if [ ${#areas[@]} -eq 0 ]; then
  areas=(manager memory memory_log lora placement runtime cli)
fi

launcher=()
if command -v ccache >/dev/null 2>&1; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
fi
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DETHEREAL_SANITIZE=ON \
  -DETHEREAL_BUILD_BENCH=OFF "${launcher[@]}"

targets=(ethereal_cli)
for area in "${areas[@]}"; do
  targets+=("ethereal_${area}_tests")
done
cmake --build "$build_dir" --parallel "$jobs" --target "${targets[@]}"

# halt_on_error stops at the first report, so a finding cannot scroll by unnoticed. Leak
# detection is on because a leak after an out-of-memory recovery is a bug here.
export ASAN_OPTIONS="${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

# Tests that bound the process's resident memory (RSS) cannot hold under AddressSanitizer: its
# shadow memory and its quarantine of freed heap blocks add tens of MiB. They are left out.
exclude="${ASAN_EXCLUDE-ResidentMemory}"
exclude_args=()
if [ -n "$exclude" ]; then
  exclude_args=(-E "$exclude")
fi

label_regex="^($(IFS='|'; echo "${areas[*]}"))\$"
start=$(date +%s)
ctest --test-dir "$build_dir" -L "$label_regex" "${exclude_args[@]}" -j "$jobs" \
  --output-on-failure --timeout "${CTEST_TIMEOUT:-1200}"
echo "asan: areas ${areas[*]} passed in $(($(date +%s) - start)) s"

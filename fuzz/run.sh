#!/usr/bin/env bash
# Builds the fuzz targets and runs each for a while.
#
#   bash fuzz/run.sh [SECONDS] [TARGET...]
#
# SECONDS per target (default 120); TARGET names (default: all of them, see
# `cargo fuzz list`). Environment: JOBS (parallel fuzzing processes per
# target, default 1), SANITIZER (address, the default, or none to run
# faster). Needs cargo-fuzz (`cargo install cargo-fuzz`) and a C++
# compiler (libFuzzer is built from source).
#
# cargo-fuzz builds with compiler flags that only nightly Rust accepts
# (-Zsanitizer=address and the coverage instrumentation libFuzzer steers
# by). On a stable toolchain, RUSTC_BOOTSTRAP=1 makes the compiler accept
# them anyway; it is set for this script's builds only, which go to
# fuzz/target, apart from the project's own build.
#
# Inputs worth keeping grow in fuzz/corpus/TARGET (starting from the seeds
# in fuzz/seeds/TARGET); a crash is written to fuzz/artifacts/TARGET and
# named at the end. Reproduce one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-…
# then keep it as a regression test in the normal suite (the unit tests
# beside each fuzz_logic module) before fixing it.
set -euo pipefail

cd "$(dirname "$0")"
seconds=${1:-120}
shift || true

if ! command -v cargo-fuzz >/dev/null; then
    echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2
    exit 1
fi
export RUSTC_BOOTSTRAP=1
sanitizer=(--sanitizer "${SANITIZER:-address}")

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

cargo fuzz build "${sanitizer[@]}"

# libFuzzer's -jobs sends each job's output to a log file: only when asked.
parallel=()
if [ "${JOBS:-1}" -gt 1 ]; then
    parallel=(-jobs="$JOBS" -workers="$JOBS")
fi

failed=()
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "seeds/$target"
    echo "== $target: ${seconds}s"
    if ! cargo fuzz run "${sanitizer[@]}" "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 "${parallel[@]}"; then
        failed+=("$target")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "crashes in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
    exit 1
fi
echo "no crashes in ${targets[*]}"

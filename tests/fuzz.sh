#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser of outside input (the targets in fuzz/): builds them
# with cargo-fuzz (libFuzzer) and runs each for a time box, two at a time on a 2-core machine.
# Prints "fuzz: N targets passed, M failed" and exits non-zero when any target found a crash
# or a broken property; the input that did is left in fuzz/artifacts/<target>/.
#
#   FUZZ_SECONDS   seconds per target (default 20)
#   FUZZ_JOBS      targets run at once (default: the number of CPUs)
#   FUZZ_TARGETS   a space-separated subset of targets
#
# Only the stable toolchain is needed: RUSTC_BOOTSTRAP=1 lets it take the -Z flags cargo-fuzz
# passes, and no sanitizer is used (-s none): the code fuzzed is safe Rust, so ASan would
# find nothing that a panic does not already report, and it needs a nightly standard library.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-20}
jobs=${FUZZ_JOBS:-$(nproc)}
export RUSTC_BOOTSTRAP=1
# Its own target directory: the flags differ from the main build's, so sharing would rebuild
# both every time.
target_dir=${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/fuzz}
target_dir=${target_dir:-$PWD/fuzz/target}

# libFuzzer is C++, built by libfuzzer-sys.
if ! command -v c++ >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && apt-get install -y -qq g++ >/dev/null
    else
        echo "fuzz: a C++ compiler is needed (apt-get install g++)" >&2
        exit 2
    fi
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

targets=${FUZZ_TARGETS:-$(cd fuzz && cargo fuzz list)}
echo "fuzz: building the targets"
cargo fuzz build -s none --target-dir "$target_dir" >/dev/null 2>fuzz/build.log || {
    tail -40 fuzz/build.log >&2
    echo "fuzz: build failed" >&2
    exit 1
}
triple=$(rustc -vV | sed -n 's/^host: //p')
bin_dir=$target_dir/$triple/release

run_one() {
    local t=$1
    # New inputs go to fuzz/work (not committed); the seeds in fuzz/corpus are only read.
    mkdir -p "fuzz/work/$t" "fuzz/artifacts/$t"
    "$bin_dir/$t" -artifact_prefix="fuzz/artifacts/$t/" -max_total_time="$seconds" \
        -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        "fuzz/work/$t" "fuzz/corpus/$t" >"fuzz/work/$t.log" 2>&1
}

declare -A pid_of
passed=0
failed=0
failed_names=()
reap() {
    local t=$1
    if wait "${pid_of[$t]}"; then
        passed=$((passed + 1))
        echo "fuzz: $t passed ($(grep -o 'Done [0-9]* runs' "fuzz/work/$t.log" | tail -1))"
    else
        failed=$((failed + 1))
        failed_names+=("$t")
        echo "fuzz: $t FAILED; log fuzz/work/$t.log, input in fuzz/artifacts/$t/" >&2
        grep -E "panicked|assertion|ERROR|Test unit written" "fuzz/work/$t.log" | head -10 >&2 || true
    fi
    unset "pid_of[$t]"
}
running=()
for t in $targets; do
    run_one "$t" &
    pid_of[$t]=$!
    running+=("$t")
    if [ "${#running[@]}" -ge "$jobs" ]; then
        reap "${running[0]}"
        running=("${running[@]:1}")
    fi
done
for t in "${running[@]}"; do
    reap "$t"
done

echo "fuzz: $passed targets passed, $failed failed${failed_names[*]:+ (${failed_names[*]})}"
[ "$failed" -eq 0 ]

#!/usr/bin/env bash
# ci/fuzz-replay.sh: replay the committed fuzz corpora (fuzz/seeds/*, fuzz/regressions/*)
# through every fuzz target, so a regression fails CI. Takes seconds once built.
#
#   ci/fuzz-replay.sh               stable: `cargo test --test integration fuzz_replay::` (same target
#                                   functions, fuzz/src/lib.rs; no nightly, no cargo-fuzz)
#   ci/fuzz-replay.sh --libfuzzer   only the libFuzzer side: installs nightly and cargo-fuzz
#                                   when missing, builds every target (fuzz/target) and runs
#                                   each over its corpora with -runs=0 (.ci/run uses this; its
#                                   test run already includes the stable replay)
#
# Exit status: non-zero when any input panics/crashes or a build fails.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

if [ "${1:-}" != "--libfuzzer" ]; then
    exec cargo test --test integration fuzz_replay:: -- --nocapture
fi

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
cargo +nightly fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
(
    cd fuzz
    cargo +nightly fuzz build -O -a
    bins=target/x86_64-unknown-linux-gnu/release
    for t in $(cargo +nightly fuzz list); do
        dirs=(seeds/"$t")
        [ -d regressions/"$t" ] && dirs+=(regressions/"$t")
        echo "replaying $t: ${dirs[*]}"
        "$bins/$t" -runs=0 -rss_limit_mb=2048 "${dirs[@]}" >"target/replay-$t.log" 2>&1 \
            || { tail -n 40 "target/replay-$t.log" >&2; echo "fuzz target $t crashed on a committed input" >&2; exit 1; }
        tail -n 1 "target/replay-$t.log"
    done
)

#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time: ./scripts/fuzz.sh [seconds per target]
#
# Installs what it needs if missing (a nightly toolchain, minimal profile, and
# cargo-fuzz from crates.io), then runs each target in fuzz/ from its seed corpus in
# fuzz/corpus/<target>/ for FUZZ_SECONDS (default 60) seconds. New inputs go to a
# scratch directory, so the seed corpus stays hand-made. Exits non-zero on the first
# crash, leak or failed check; the input that caused it is under fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-${FUZZ_SECONDS:-60}}"
say() { printf 'fuzz.sh: %s\n' "$*" >&2; }

# The sanitizer flags cargo-fuzz passes need a nightly compiler. Where none can be
# fetched, the stable compiler accepts them with RUSTC_BOOTSTRAP=1 (set for these
# fuzz builds only).
toolchain=nightly
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    say "installing the nightly toolchain (minimal profile)"
    if ! rustup toolchain install nightly --profile minimal; then
        say "no nightly toolchain to be had; building with stable and RUSTC_BOOTSTRAP=1"
        toolchain=stable
        export RUSTC_BOOTSTRAP=1
    fi
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    say "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

targets=$(cargo +"$toolchain" fuzz list)
say "building: $(echo $targets)"
cargo +"$toolchain" fuzz build

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in $targets; do
    mkdir -p "$scratch/$target" "corpus/$target"
    say "$target: ${seconds}s"
    # -timeout: one input taking over 10 s is a hang, reported as a failure.
    status=0
    cargo +"$toolchain" fuzz run "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 >"$scratch/$target.log" 2>&1 || status=$?
    grep -E '^Done [0-9]+ runs' "$scratch/$target.log" >&2 || true
    if [ "$status" -ne 0 ]; then
        tail -n 60 "$scratch/$target.log" >&2
        say "$target FAILED (exit $status); the input is in fuzz/artifacts/$target/"
        exit 1
    fi
done
say "all targets ran ${seconds}s without a failure"

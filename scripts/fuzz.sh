#!/usr/bin/env bash
# Runs each cargo-fuzz target in fuzz/ for a bounded time: the pgoutput decoder, binary values,
# the binary COPY parser and the pipeline file. A crash, a panic, or one allocation over
# 512 MB (-malloc_limit_mb) stops the run and leaves the input in fuzz/artifacts/<target>/;
# each one found is fixed and kept as a unit test in the crate it hit.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]    default 600 s, every target
#
# cargo-fuzz is installed from crates.io when missing. The toolchain here is stable: the
# targets build without a sanitizer (-s none) and RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its
# coverage flags.
set -euo pipefail
cd "$(dirname "$0")/.."

EACH=${1:-600}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(pgoutput datum copy_binary pipeline_file)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

cd fuzz
export RUSTC_BOOTSTRAP=1
for target in "${TARGETS[@]}"; do
    mkdir -p "corpus/$target"
    echo "fuzz: $target for $EACH s"
    cargo fuzz run -s none "$target" "corpus/$target" -- \
        -max_total_time="$EACH" -malloc_limit_mb=512 -rss_limit_mb=2048 -print_final_stats=1
done

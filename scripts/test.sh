#!/usr/bin/env bash
# Runs every check and test on a fresh machine: installs and starts the servers the tests need
# (scripts/services.sh), checks format and lints, runs all tests, stops the servers.
set -euo pipefail
cd "$(dirname "$0")/.."

export CUTOVER_SERVICES_DIR=${CUTOVER_SERVICES_DIR:-/tmp/cutover-test-services}
scripts/services.sh start >/dev/null
trap 'scripts/services.sh stop' EXIT

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --all-targets

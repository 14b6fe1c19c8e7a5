#!/usr/bin/env bash
# The chaos suite (tests/chaos.rs) for a long time, on servers of its own: under pgbench and a
# mixed workload, at random, SIGKILL cutover (during the copy too), restart the source, crash
# the target, cut the target's network, fill the Kafka sink's state disk. At the end every
# target is compared with the source (sorted pg_dump, folded Kafka topics, cutover verify).
#
#   scripts/chaos.sh [MINUTES]      default 30
#
# Settings from the environment: CUTOVER_CHAOS_SEED (replays a run's events),
# CUTOVER_CHAOS_SCALE (pgbench scale, default 1), CUTOVER_CHAOS_TPS (pgbench rate, default 100),
# CUTOVER_CHAOS_REPORT (report file, default target/chaos-report.txt).
# The default test run (scripts/test.sh) runs the same suite for 40 seconds as a smoke.
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES=${1:-30}
export CUTOVER_SERVICES_DIR=${CUTOVER_SERVICES_DIR:-/tmp/cutover-chaos-services}
export CUTOVER_CHAOS_SECONDS=$((MINUTES * 60))
export CUTOVER_CHAOS_REPORT=${CUTOVER_CHAOS_REPORT:-$PWD/target/chaos-report.txt}
mkdir -p "$(dirname "$CUTOVER_CHAOS_REPORT")"

bash scripts/services.sh start >/dev/null
trap 'bash scripts/services.sh stop' EXIT
cargo test --features crash-points --test e2e chaos:: -- --nocapture
echo "report: $CUTOVER_CHAOS_REPORT"

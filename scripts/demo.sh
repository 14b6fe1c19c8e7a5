#!/usr/bin/env bash
# The demo migration, end to end, on servers this script starts itself:
#   1. starts a source and a target PostgreSQL, a Kafka-protocol broker (tansu), NATS with
#      JetStream and a MongoDB-wire server (SecantusDB) (scripts/services.sh), and fills the
#      source with a sample shop (four tables, many types, ~80k rows);
#   2. runs `cutover run pipelines/demo.toml`, one slot fanned out to all four targets, while
#      pgbench keeps writing to the source, so the copy and the stream both see live writes;
#   3. when the writes stop, waits for every target to catch up, shows the lag, compares every
#      PostgreSQL table's full contents directly, then runs `cutover verify`, which compares every
#      row of every table with all four targets (Kafka and NATS folded to the latest row per
#      key); DEMO_READ_BACK=1 adds an independent read-back through the test suite's consumers
#      (a test build: slow the first time);
#   4. switches the application's writes to the target (`cutover switch`): the source is fenced,
#      and a write on the target streams back to it; then stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

export CUTOVER_SERVICES_DIR=${CUTOVER_SERVICES_DIR:-/tmp/cutover-demo-services}
env_file=$(scripts/services.sh start)
# shellcheck disable=SC1090
source "$env_file"
PGBIN=$CUTOVER_PG_BIN
cleanup() {
    [ -n "${cutover_pid:-}" ] && kill "$cutover_pid" 2>/dev/null || true
    [ -n "${writer_pid:-}" ] && kill "$writer_pid" 2>/dev/null || true
    scripts/services.sh stop
}
trap cleanup EXIT

psql_src() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$CUTOVER_SOURCE_PORT" -U postgres "$@"; }
psql_tgt() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$CUTOVER_TARGET_PORT" -U postgres "$@"; }

echo "== building cutover (release)"
cargo build --release --quiet
bin=target/release/cutover

echo "== filling the source with the sample shop"
psql_src -d postgres -c "CREATE DATABASE shop"
psql_tgt -d postgres -c "CREATE DATABASE shop"
psql_src -d shop -f scripts/demo-schema.sql -f scripts/demo-data.sql

export CUTOVER_SOURCE_URL="postgres://postgres@127.0.0.1:$CUTOVER_SOURCE_PORT/shop"
export CUTOVER_TARGET_URL="postgres://postgres@127.0.0.1:$CUTOVER_TARGET_PORT/shop"
export CUTOVER_KAFKA_BROKERS=$CUTOVER_TEST_KAFKA_BROKERS
export CUTOVER_NATS_URL=$CUTOVER_TEST_NATS_URL
export CUTOVER_MONGO_URL=$CUTOVER_TEST_MONGO_URL

echo "== cutover check"
$bin check pipelines/demo.toml

echo "== live writes start (pgbench, 2 clients, 200 transactions/s, 20 s)"
"$PGBIN/pgbench" -n -h 127.0.0.1 -p "$CUTOVER_SOURCE_PORT" -U postgres -c 2 -T 20 -R 200 \
    -f scripts/demo-writes.sql shop > "$CUTOVER_SERVICES_DIR/pgbench.log" 2>&1 &
writer_pid=$!

echo "== cutover run (snapshot under the live writes, then streaming)"
NO_COLOR=1 $bin --log-format text run pipelines/demo.toml 2> "$CUTOVER_SERVICES_DIR/cutover.log" &
cutover_pid=$!

if ! wait "$writer_pid"; then
    echo "   pgbench reported client errors (the run goes on; the comparison below is what counts):"
    grep -E "error|aborted" "$CUTOVER_SERVICES_DIR/pgbench.log" | head -3 | sed 's/^/     /'
fi
writer_pid=
echo "   writes stopped: $(grep -Eo 'number of transactions actually processed: [0-9]+' "$CUTOVER_SERVICES_DIR/pgbench.log" || echo 'see pgbench.log')"

echo "== waiting for every target to catch up"
# First the snapshot into every target, then the stream until the slot's lag is 0.
for _ in $(seq 1 1200); do
    grep -q "streaming changes" "$CUTOVER_SERVICES_DIR/cutover.log" && break
    sleep 0.5
done
for _ in $(seq 1 600); do
    # exit code 3 (not ready to switch) is expected here: no check has been made yet
    status=$($bin status pipelines/demo.toml || true)
    if echo "$status" | grep -q "lag 0 bytes"; then break; fi
    sleep 1
done
echo "$status" | sed 's/^/   /'

echo "== comparing every table, row by row"
same=1
for t in customers orders order_items documents; do
    a=$(psql_src -d shop -At -c "SELECT count(*) || ' rows, md5 ' || md5(coalesce(string_agg(x::text, E'\n' ORDER BY x::text), '')) FROM $t x")
    b=$(psql_tgt -d shop -At -c "SELECT count(*) || ' rows, md5 ' || md5(coalesce(string_agg(x::text, E'\n' ORDER BY x::text), '')) FROM $t x")
    if [ "$a" = "$b" ]; then echo "   $t: equal ($a)"; else echo "   $t: DIFFERENT (source $a, target $b)"; same=0; fi
done

if [ "${DEMO_READ_BACK:-0}" = 1 ]; then
    # An independent read-back through the test suite's own consumers (a test build: slow the
    # first time, so it is left out unless asked for).
    echo "== reading Kafka, NATS and MongoDB back and comparing them with the source, row by row"
    read_back="$CUTOVER_SERVICES_DIR/read-back.log"
    if cargo test --release --quiet --test e2e demo_targets -- --ignored --nocapture > "$read_back" 2>&1; then
        grep -E '^   ' "$read_back"
    else
        grep -E '^   |panicked|differs' "$read_back" | head -5 | cut -c1-300
        same=0
    fi
fi

echo "== cutover verify: every row of every table, source against all four targets"
echo "   (BLAKE3 range digests; Kafka and NATS folded to the latest row per key, MongoDB's documents)"
# A message target may still take the last changes in: up to three looks, 5 s apart.
verified=0
for _ in 1 2 3; do
    if $bin verify pipelines/demo.toml > "$CUTOVER_SERVICES_DIR/verify.log" 2>&1; then
        verified=1; break
    fi
    sleep 5
done
if [ "$verified" = 1 ]; then
    sed 's/^/   /' "$CUTOVER_SERVICES_DIR/verify.log" | cut -c1-200
else
    sed 's/^/   /' "$CUTOVER_SERVICES_DIR/verify.log" | head -30 | cut -c1-200
    same=0
fi

if [ "$same" = 1 ]; then
    echo "== the switch: readiness, then the application's writes move to the target"
    { $bin status pipelines/demo.toml || true; } | sed -n '/readiness/,$p' | sed 's/^/   /'
    if $bin switch pipelines/demo.toml > "$CUTOVER_SERVICES_DIR/switch.log" 2>&1; then
        sed 's/^/   /' "$CUTOVER_SERVICES_DIR/switch.log" | grep -v "^   readiness\|^     *ok\|^   READY" | cut -c1-200
    else
        sed 's/^/   /' "$CUTOVER_SERVICES_DIR/switch.log" | cut -c1-200; same=0
    fi
    echo "   the old primary now refuses application writes:"
    psql_src -d shop -c "UPDATE customers SET name = name WHERE id = 1" 2>&1 | head -1 | sed 's/^/     /' || true
    echo "   a write on the new primary streams back to the old one (the way back stays open):"
    psql_tgt -d shop -c "UPDATE customers SET name = 'written on the new primary' WHERE id = 1"
    for _ in $(seq 1 120); do
        back=$(psql_src -d shop -At -c "SELECT name FROM customers WHERE id = 1")
        [ "$back" = "written on the new primary" ] && break
        sleep 0.5
    done
    if [ "$back" = "written on the new primary" ]; then echo "     old primary: customers 1 is '$back'"
    else echo "     old primary: customers 1 is still '$back'"; same=0; fi
fi

echo "== stopping cutover (SIGTERM: drain, confirm, exit 0)"
kill -TERM "$cutover_pid"; wait "$cutover_pid"; cutover_pid=
grep -E "table copied|streaming changes|stopped" "$CUTOVER_SERVICES_DIR/cutover.log" | sed 's/^/   /' | cut -c1-160

if [ "$same" = 1 ]; then
    echo "== done: every target equals the source"
else
    echo "== FAILED: a target differs from the source"; exit 1
fi

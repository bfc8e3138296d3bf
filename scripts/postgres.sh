#!/usr/bin/env bash
# Owns a private PostgreSQL cluster for tests and CI: created on first use, started on
# a free loopback port and a Unix socket, stopped on request. Everything lives under
# one directory; the system's cluster and /etc/postgresql are never read or written,
# and nothing is installed (the project's setup script installs the postgresql
# package).
#
#   scripts/postgres.sh start DIR
#       Creates the cluster in DIR/data on first use (initdb, superuser `tessera`,
#       trust authentication for local connections only), starts it listening on
#       127.0.0.1 on a free port and on a Unix socket in DIR, with TLS on (see
#       below), creates the database `tessera`, writes DIR/env and prints it. When
#       the cluster already runs, only prints DIR/env, so test binaries may all call
#       `start` on one DIR: they wait for one another on DIR.lock and share the
#       cluster, which is left running (each test makes its own database in it).
#       Different DIRs start at once.
#   scripts/postgres.sh stop DIR
#       Shuts the cluster down (its data stays in DIR/data).
#   scripts/postgres.sh env DIR
#       Prints DIR/env.
#   scripts/postgres.sh start-ha DIR
#       A primary and a streaming-replication standby, made as `start` makes a
#       cluster: the primary in DIR/primary, the standby in DIR/standby, copied from
#       it with pg_basebackup -R through the replication slot `standby1`. The
#       primary runs with synchronous_standby_names=standby1 and
#       synchronous_commit=on, so a commit returns only once the standby has its
#       WAL. Returns when the standby replicates synchronously; writes DIR/env and
#       prints it. Stop them with `stop DIR/primary` and `stop DIR/standby`.
#   scripts/postgres.sh promote DIR
#       Promotes the standby of `start-ha DIR` (pg_ctl promote) and waits until it
#       takes writes.
#
# DIR/env holds `export` lines, for `source` or `eval`:
#   TESSERA_PG_URL  a connection string for the `tessera` database over TCP
#                   (postgres://tessera@127.0.0.1:PORT/tessera?sslmode=disable)
#   TESSERA_PG_SSLROOTCERT  the test CA that signed the server's certificate
#   PGHOST          DIR, where the Unix socket is (for psql and libpq)
#   PGPORT          the port
#   PGUSER, PGDATABASE  tessera
# and, from start-ha (the other lines then are the primary's):
#   TESSERA_PG_PRIMARY_PORT, TESSERA_PG_STANDBY_PORT  the two ports
#   TESSERA_PG_HA   a multi-host connection string for the `tessera` database that
#                   only takes the server that accepts writes (host=127.0.0.1,127.0.0.1
#                   port=PRIMARY,STANDBY ... target_session_attrs=read-write)
#
# TLS: a test CA (DIR/tls/ca.crt, made on first use) signs the server's certificate,
# which is for the name `localhost` only (so 127.0.0.1 is another name, for tests of
# host name checks). The role `tessera_tls` (a superuser) may connect over TLS only:
# a `hostssl` line admits it, a `host` line rejects it otherwise.
#
# When run as root (PostgreSQL refuses to), initdb and the server run as the
# `postgres` system user (created by Debian's package), which then owns DIR.
# POSTGRES_BINDIR, when set, is where initdb and pg_ctl are; otherwise
# `pg_config --bindir`, then the newest /usr/lib/postgresql/*/bin.

set -euo pipefail

# prog, die, note, lock_for
. "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"

usage() {
    sed -n '/^#   scripts/,/^#       takes writes/p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

readonly PG_USER=tessera
readonly PG_DB=tessera
readonly PG_TLS_USER=tessera_tls
readonly SLOT=standby1

find_bindir() {
    local dir
    if [[ -n ${POSTGRES_BINDIR-} ]]; then
        [[ -x $POSTGRES_BINDIR/pg_ctl ]] || die "POSTGRES_BINDIR=$POSTGRES_BINDIR has no pg_ctl"
        printf '%s\n' "$POSTGRES_BINDIR"
        return
    fi
    if command -v pg_config >/dev/null 2>&1; then
        dir=$(pg_config --bindir 2>/dev/null || true)
        if [[ -n $dir && -x $dir/pg_ctl && -x $dir/initdb ]]; then
            printf '%s\n' "$dir"
            return
        fi
    fi
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -n $dir && -x $dir/pg_ctl && -x $dir/initdb ]]; then
        printf '%s\n' "$dir"
        return
    fi
    die "PostgreSQL server programs (initdb, pg_ctl) not found; run scripts/setup.sh --tests (Debian package postgresql)"
}

# Runs a command as the user that owns the cluster. The lock's descriptor is closed
# for it: the server must not inherit it and hold the lock for its whole life.
as_owner() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@" 9>&-
    else
        "$@" 9>&-
    fi
}

# Absolute path of DIR, created if missing and owned by the cluster's user.
prepare_dir() {
    local dir=$1
    [[ -n $dir ]] || die "DIR must not be empty"
    [[ $dir != *"'"* && $dir != *'"'* && $dir != *' '* && $dir != *$'\n'* ]] ||
        die "DIR must not contain quotes, spaces or newlines: $dir"
    if [[ -e $dir && ! -d $dir ]]; then
        die "$dir exists and is not a directory"
    fi
    (umask 077 && mkdir -p -- "$dir") || die "cannot create $dir"
    dir=$(cd -- "$dir" && pwd -P)
    if [[ $(id -u) -eq 0 ]]; then
        getent passwd postgres >/dev/null 2>&1 ||
            die "running as root, but there is no 'postgres' user to run PostgreSQL as (PostgreSQL refuses to run as root); install the postgresql package"
        chown postgres: "$dir" || die "cannot give $dir to the postgres user"
        runuser -u postgres -- test -w "$dir" ||
            die "the postgres user cannot write to $dir (is a parent folder closed to other users?); choose a DIR it can reach"
    fi
    printf '%s\n' "$dir"
}

running() {
    local dir=$1 bindir=$2
    [[ -f $dir/data/PG_VERSION ]] && as_owner "$bindir/pg_ctl" status -D "$dir/data" >/dev/null 2>&1
}

write_env() {
    local dir=$1 port=$2
    local tmp="$dir/env.tmp.$$"
    cat >"$tmp" <<EOF
export TESSERA_PG_URL='postgres://$PG_USER@127.0.0.1:$port/$PG_DB?sslmode=disable'
export TESSERA_PG_SSLROOTCERT='$dir/tls/ca.crt'
export PGHOST='$dir'
export PGPORT='$port'
export PGUSER='$PG_USER'
export PGDATABASE='$PG_DB'
EOF
    mv -f -- "$tmp" "$dir/env"
}

# A port nothing listens on now (the server may still lose a race for it; `start`
# then tries another).
pick_port() {
    local port i
    for i in $(seq 1 50); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            printf '%s\n' "$port"
            return
        fi
    done
    die "no free loopback port found"
}

init_cluster() {
    local dir=$1 bindir=$2
    [[ -f $dir/data/PG_VERSION ]] && return
    note "creating a PostgreSQL cluster in $dir/data"
    rm -rf -- "$dir/data"
    as_owner "$bindir/initdb" -D "$dir/data" -U "$PG_USER" --auth=trust -E UTF8 --locale=C \
        --no-instructions >"$dir/initdb.log" 2>&1 ||
        die "initdb failed; see $dir/initdb.log: $(tail -n 5 "$dir/initdb.log" 2>/dev/null)"
    write_hba "$dir/data"
}

# Local connections only: the Unix socket and the loopback addresses; the TLS test
# role over TLS only; replication, for a standby.
write_hba() {
    cat >"$1/pg_hba.conf" <<EOF
# Written by scripts/postgres.sh: trust on local connections only.
hostssl all         $PG_TLS_USER 127.0.0.1/32 trust
host    all         $PG_TLS_USER 127.0.0.1/32 reject
local   all         all              trust
host    all         all 127.0.0.1/32 trust
host    all         all ::1/128      trust
local   replication all              trust
host    replication all 127.0.0.1/32 trust
EOF
    if [[ $(id -u) -eq 0 ]]; then
        chown postgres: "$1/pg_hba.conf"
    fi
}

# The test CA and the server's certificate (for localhost only), in DIR/tls.
make_tls() {
    local tls=$1/tls
    [[ -f $tls/server.crt && -f $tls/server.key && -f $tls/ca.crt ]] && return
    command -v openssl >/dev/null 2>&1 || die "openssl not found (Debian package openssl)"
    rm -rf -- "$tls"
    (umask 077 && mkdir -p -- "$tls") || die "cannot create $tls"
    {
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
            -subj "/CN=Tessera PostgreSQL test CA" -keyout "$tls/ca.key" -out "$tls/ca.crt" &&
            openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
                -subj "/CN=localhost" -keyout "$tls/server.key" -out "$tls/server.csr" &&
            printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
                >"$tls/server.ext" &&
            openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" \
                -CAcreateserial -days 3650 -extfile "$tls/server.ext" -out "$tls/server.crt"
    } >"$tls/openssl.log" 2>&1 || die "cannot make the test certificates; see $tls/openssl.log"
    chmod 0755 "$tls"
    chmod 0644 "$tls/ca.crt" "$tls/server.crt"
    if [[ $(id -u) -eq 0 ]]; then
        chown -R postgres: "$tls"
    fi
}

# Starts the cluster in DIR (created already) on a free port, with TLS and the extra
# server options OPTS; sets `port`. The caller holds the lock.
start_cluster() {
    local dir=$1 bindir=$2 opts=$3 tries sock
    make_tls "$dir"
    for tries in 1 2 3 4 5; do
        port=$(pick_port)
        sock="$dir/.s.PGSQL.$port"
        ((${#sock} < 108)) || die "the socket path $sock is too long for a Unix socket; choose a shorter DIR"
        if as_owner "$bindir/pg_ctl" start -D "$dir/data" -w -t 60 -l "$dir/server.log" \
            -o "-c port=$port -c listen_addresses=127.0.0.1 -c unix_socket_directories='$dir' -c fsync=off -c max_connections=200 -c ssl=on -c ssl_cert_file='$dir/tls/server.crt' -c ssl_key_file='$dir/tls/server.key' $opts" \
            >/dev/null 2>&1; then
            return
        fi
        if ! grep -q -i "could not bind\|address already in use\|could not create any TCP/IP sockets" "$dir/server.log" 2>/dev/null; then
            die "PostgreSQL did not start; see $dir/server.log: $(tail -n 5 "$dir/server.log" 2>/dev/null)"
        fi
        note "port $port was taken, trying another"
    done
    die "PostgreSQL did not start: no free port after 5 tries; see $dir/server.log"
}

# psql as the superuser on database postgres of the cluster in DIR (port PORT),
# unaligned, quiet, with the extra arguments.
psql_in() {
    local dir=$1 port=$2 bindir=$3
    shift 3
    as_owner "$bindir/psql" -h "$dir" -p "$port" -U "$PG_USER" -d postgres -Atq "$@"
}

# The database `tessera` and the TLS-only role, unless they exist.
create_objects() {
    local dir=$1 port=$2 bindir=$3
    if ! psql_in "$dir" "$port" "$bindir" \
        -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'" | grep -q 1; then
        psql_in "$dir" "$port" "$bindir" -c "CREATE DATABASE $PG_DB" >/dev/null ||
            die "cannot create the database $PG_DB; see $dir/server.log"
    fi
    if ! psql_in "$dir" "$port" "$bindir" \
        -c "SELECT 1 FROM pg_roles WHERE rolname = '$PG_TLS_USER'" | grep -q 1; then
        psql_in "$dir" "$port" "$bindir" -c "CREATE ROLE $PG_TLS_USER LOGIN SUPERUSER" >/dev/null ||
            die "cannot create the role $PG_TLS_USER; see $dir/server.log"
    fi
}

cmd_start() {
    local dir bindir port
    bindir=$(find_bindir)
    mkdir -p -- "$(dirname -- "$1")" || die "cannot create the parent of $1"
    lock_for "${1%/}"
    dir=$(prepare_dir "$1")
    if running "$dir" "$bindir" && [[ -f $dir/env ]]; then
        cat -- "$dir/env"
        return
    fi
    init_cluster "$dir" "$bindir"
    start_cluster "$dir" "$bindir" ""
    create_objects "$dir" "$port" "$bindir"
    write_env "$dir" "$port"
    note "PostgreSQL is running on 127.0.0.1:$port and in $dir (stop it with: $prog stop $dir)"
    cat -- "$dir/env"
}

cmd_start_ha() {
    local dir bindir port primary standby i state=
    bindir=$(find_bindir)
    mkdir -p -- "$(dirname -- "$1")" || die "cannot create the parent of $1"
    lock_for "${1%/}"
    dir=$(prepare_dir "$1")
    [[ ! -e $dir/primary/data && ! -e $dir/standby/data ]] ||
        die "$dir already holds a primary or a standby; start-ha wants a fresh DIR"
    prepare_dir "$dir/primary" >/dev/null
    prepare_dir "$dir/standby" >/dev/null
    init_cluster "$dir/primary" "$bindir"
    start_cluster "$dir/primary" "$bindir" "-c synchronous_commit=on"
    primary=$port
    create_objects "$dir/primary" "$primary" "$bindir"
    psql_in "$dir/primary" "$primary" "$bindir" \
        -c "SELECT pg_create_physical_replication_slot('$SLOT')" >/dev/null ||
        die "cannot create the replication slot $SLOT; see $dir/primary/server.log"
    as_owner "$bindir/pg_basebackup" -h "$dir/primary" -p "$primary" -U "$PG_USER" \
        -D "$dir/standby/data" -R -S "$SLOT" -X stream -c fast >"$dir/standby/basebackup.log" 2>&1 ||
        die "pg_basebackup failed; see $dir/standby/basebackup.log: $(tail -n 5 "$dir/standby/basebackup.log")"
    # The same certificate on both, so that one sslrootcert and one name serve
    # whichever is the primary. The standby's WAL receiver names itself by
    # cluster_name, which synchronous_standby_names lists.
    cp -a -- "$dir/primary/tls" "$dir/standby/tls" || die "cannot copy $dir/primary/tls"
    start_cluster "$dir/standby" "$bindir" "-c cluster_name=$SLOT -c hot_standby=on"
    standby=$port
    # From now on commits wait for the standby. Set only now: before, there was no
    # standby to wait for, and the standby's copy must not have it (once promoted it
    # would wait for a standby it does not have).
    psql_in "$dir/primary" "$primary" "$bindir" \
        -c "ALTER SYSTEM SET synchronous_standby_names = '$SLOT'" -c "SELECT pg_reload_conf()" >/dev/null ||
        die "cannot set synchronous_standby_names; see $dir/primary/server.log"
    for i in $(seq 1 300); do
        state=$(psql_in "$dir/primary" "$primary" "$bindir" \
            -c "SELECT sync_state FROM pg_stat_replication WHERE application_name = '$SLOT'" || true)
        [[ $state == sync ]] && break
        sleep 0.1
    done
    [[ $state == sync ]] ||
        die "the standby does not replicate synchronously (state '${state:-none}'); see $dir/standby/server.log"
    write_env "$dir/primary" "$primary"
    write_env "$dir/standby" "$standby"
    {
        cat -- "$dir/primary/env"
        cat <<EOF
export TESSERA_PG_PRIMARY_PORT='$primary'
export TESSERA_PG_STANDBY_PORT='$standby'
export TESSERA_PG_HA='host=127.0.0.1,127.0.0.1 port=$primary,$standby user=$PG_USER dbname=$PG_DB target_session_attrs=read-write'
EOF
    } >"$dir/env.tmp.$$"
    mv -f -- "$dir/env.tmp.$$" "$dir/env"
    note "PostgreSQL primary on 127.0.0.1:$primary, synchronous standby on 127.0.0.1:$standby (in $dir)"
    cat -- "$dir/env"
}

cmd_promote() {
    local dir bindir port i
    bindir=$(find_bindir)
    [[ -f $1/standby/env ]] || die "$1/standby/env not found; run: $prog start-ha $1"
    dir=$(cd -- "$1" && pwd -P)
    port=$(sed -n "s/^export PGPORT='\(.*\)'\$/\1/p" "$dir/standby/env")
    as_owner "$bindir/pg_ctl" promote -D "$dir/standby/data" -w -t 60 >/dev/null ||
        die "cannot promote the standby in $dir/standby/data; see $dir/standby/server.log"
    for i in $(seq 1 300); do
        if [[ $(psql_in "$dir/standby" "$port" "$bindir" -c "SELECT pg_is_in_recovery()" || true) == f ]]; then
            note "the standby on 127.0.0.1:$port is now the primary"
            return
        fi
        sleep 0.1
    done
    die "the promoted standby still does not take writes; see $dir/standby/server.log"
}

cmd_stop() {
    local dir bindir
    [[ -d $1 ]] || die "$1 is not a directory"
    bindir=$(find_bindir)
    lock_for "${1%/}"
    dir=$(cd -- "$1" && pwd -P)
    if running "$dir" "$bindir"; then
        as_owner "$bindir/pg_ctl" stop -D "$dir/data" -m fast -w >/dev/null ||
            die "cannot stop the PostgreSQL cluster in $dir/data; see $dir/server.log"
        note "stopped the PostgreSQL cluster in $dir/data"
    else
        note "no PostgreSQL cluster runs in $dir/data"
    fi
}

cmd_env() {
    [[ -f $1/env ]] || die "$1/env not found; run: $prog start $1"
    cat -- "$1/env"
}

(($# == 2)) || usage
case $1 in
    start) cmd_start "$2" ;;
    stop) cmd_stop "$2" ;;
    env) cmd_env "$2" ;;
    start-ha) cmd_start_ha "$2" ;;
    promote) cmd_promote "$2" ;;
    *) usage ;;
esac

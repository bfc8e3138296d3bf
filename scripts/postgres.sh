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
#       127.0.0.1 on a free port and on a Unix socket in DIR, creates the database
#       `tessera`, writes DIR/env and prints it. When the cluster already runs, only
#       prints DIR/env, so test binaries may all call `start` on one DIR: they wait
#       for one another on DIR.lock and share the cluster, which is left running
#       (each test makes its own database in it). Different DIRs start at once.
#   scripts/postgres.sh stop DIR
#       Shuts the cluster down (its data stays in DIR/data).
#   scripts/postgres.sh env DIR
#       Prints DIR/env.
#
# DIR/env holds `export` lines, for `source` or `eval`:
#   TESSERA_PG_URL  a connection string for the `tessera` database over TCP
#                   (postgres://tessera@127.0.0.1:PORT/tessera?sslmode=disable)
#   PGHOST          DIR, where the Unix socket is (for psql and libpq)
#   PGPORT          the port
#   PGUSER, PGDATABASE  tessera
#
# When run as root (PostgreSQL refuses to), initdb and the server run as the
# `postgres` system user (created by Debian's package), which then owns DIR.
# POSTGRES_BINDIR, when set, is where initdb and pg_ctl are; otherwise
# `pg_config --bindir`, then the newest /usr/lib/postgresql/*/bin.

set -euo pipefail

# prog, die, note, lock_for
. "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"

usage() {
    sed -n '/^#   scripts/,/^#       Prints DIR\/env/p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

readonly PG_USER=tessera
readonly PG_DB=tessera

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
    # Local connections only: the Unix socket and the loopback addresses.
    cat >"$dir/data/pg_hba.conf" <<'EOF'
# Written by scripts/postgres.sh: trust on local connections only.
local all all              trust
host  all all 127.0.0.1/32 trust
host  all all ::1/128      trust
EOF
    if [[ $(id -u) -eq 0 ]]; then
        chown postgres: "$dir/data/pg_hba.conf"
    fi
}

cmd_start() {
    local dir bindir port tries sock
    bindir=$(find_bindir)
    mkdir -p -- "$(dirname -- "$1")" || die "cannot create the parent of $1"
    lock_for "${1%/}"
    dir=$(prepare_dir "$1")
    if running "$dir" "$bindir" && [[ -f $dir/env ]]; then
        cat -- "$dir/env"
        return
    fi
    init_cluster "$dir" "$bindir"
    for tries in 1 2 3 4 5; do
        port=$(pick_port)
        sock="$dir/.s.PGSQL.$port"
        ((${#sock} < 108)) || die "the socket path $sock is too long for a Unix socket; choose a shorter DIR"
        if as_owner "$bindir/pg_ctl" start -D "$dir/data" -w -t 60 -l "$dir/server.log" \
            -o "-c port=$port -c listen_addresses=127.0.0.1 -c unix_socket_directories='$dir' -c fsync=off -c max_connections=200" \
            >/dev/null 2>&1; then
            break
        fi
        if ! grep -q -i "could not bind\|address already in use\|could not create any TCP/IP sockets" "$dir/server.log" 2>/dev/null; then
            die "PostgreSQL did not start; see $dir/server.log: $(tail -n 5 "$dir/server.log" 2>/dev/null)"
        fi
        note "port $port was taken, trying another"
        port=
    done
    [[ -n $port ]] || die "PostgreSQL did not start: no free port after 5 tries; see $dir/server.log"
    if ! as_owner "$bindir/psql" -h "$dir" -p "$port" -U "$PG_USER" -d postgres -Atq \
        -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'" | grep -q 1; then
        as_owner "$bindir/psql" -h "$dir" -p "$port" -U "$PG_USER" -d postgres -q \
            -c "CREATE DATABASE $PG_DB" >/dev/null ||
            die "cannot create the database $PG_DB; see $dir/server.log"
    fi
    write_env "$dir" "$port"
    note "PostgreSQL is running on 127.0.0.1:$port and in $dir (stop it with: $prog stop $dir)"
    cat -- "$dir/env"
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
    *) usage ;;
esac

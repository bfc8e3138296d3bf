# Sourced by Tessera's scripts: messages on standard error, prefixed with the
# name of the script that sources this file.

prog=${0##*/}

die() {
    printf '%s: error: %s\n' "$prog" "$*" >&2
    exit 1
}

note() {
    printf '%s: %s\n' "$prog" "$*" >&2
}

# Holds an exclusive lock on PATH.lock until the script exits, so that test
# binaries running the same set-up script at once wait for one another.
lock_for() {
    exec 9>"$1.lock" || die "cannot open $1.lock"
    if command -v flock >/dev/null 2>&1; then
        flock 9 || die "cannot lock $1.lock"
    fi
}

# Succeeds when STAMP is missing or older than any of the FILES after it.
stale() {
    local stamp=$1 f
    shift
    [[ -f $stamp ]] || return 0
    for f in "$@"; do
        [[ $f -nt $stamp ]] && return 0
    done
    return 1
}

# Fails unless /usr/include/google/protobuf/struct.proto (which workload.proto
# imports) is there for protoc.
need_struct_proto() {
    [[ -f /usr/include/google/protobuf/struct.proto ]] ||
        die "/usr/include/google/protobuf/struct.proto not found; run scripts/setup.sh --tests (package libprotobuf-dev)"
}

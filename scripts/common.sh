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

# Sets `go` to a Go toolchain of at least version MIN (like 1.25.3): $TESSERA_GO if
# set, else the first new enough of the `go` on PATH, /usr/local/go/bin/go (where
# Go's own installer puts it) and Debian's versioned /usr/lib/go-1.N/bin/go,
# newest first. Dies naming the version needed when none is new enough (Debian
# bookworm's golang-go, 1.19, is too old). The builds use exactly this toolchain:
# GOTOOLCHAIN=local stops a go.mod from fetching another one.
need_go() {
    local min=$1 candidate found best= seen=
    local -a candidates=()
    local -A tried=()
    if [[ -n ${TESSERA_GO-} ]]; then
        [[ -x $TESSERA_GO ]] || die "TESSERA_GO=$TESSERA_GO is not an executable go binary"
        candidates=("$TESSERA_GO")
    else
        candidates=("$(command -v go 2>/dev/null || true)" /usr/local/go/bin/go)
        mapfile -t -O 2 candidates < <(compgen -G '/usr/lib/go-1.*/bin/go' | sort -rV)
    fi
    export GOTOOLCHAIN=local
    for candidate in "${candidates[@]}"; do
        [[ -n $candidate && -x $candidate ]] || continue
        # The go on PATH is often one of the others.
        [[ -n ${tried[$candidate]-} ]] && continue
        tried[$candidate]=1
        found=$("$candidate" env GOVERSION 2>/dev/null) || continue
        seen+="${seen:+, }$candidate is $found"
        if go_at_least "${found#go}" "$min"; then
            best=$candidate
            break
        fi
    done
    [[ -n $best ]] ||
        die "Go $min or later is needed (${seen:-no go on PATH, in /usr/local/go/bin or /usr/lib/go-1.*}); install it (go.dev/dl) or set TESSERA_GO to its go binary"
    go=$best
}

# Succeeds when Go version HAVE (1.26.8) is at least WANT (1.25.3).
go_at_least() {
    [[ $(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1) == "$2" ]]
}

# Builds the Go program in SRC, whose go.mod and go.sum pin everything it uses, into
# BIN with Go MIN or later (see need_go), unless BIN is newer than its sources, this
# file and the calling script; prints BIN. Concurrent callers wait for one build.
build_go_program() {
    local src=$1 bin=$2 min=$3 out
    out=$(dirname -- "$bin")
    need_go "$min"
    mkdir -p -- "$out" || die "cannot create $out"
    lock_for "$out"
    if stale "$bin" "$src"/*.go "$src/go.mod" "$src/go.sum" "$0" "${BASH_SOURCE[0]}"; then
        note "building $src with $("$go" env GOVERSION) into $out"
        # -mod=readonly: the build uses exactly what go.mod and go.sum pin, and
        # fails rather than changing them.
        # CGO_ENABLED=0: a static binary, which also runs in a container image that
        # holds nothing else (the systemd guest's Podman check).
        (cd -- "$src" && CGO_ENABLED=0 GOFLAGS=-buildvcs=false "$go" build -mod=readonly -trimpath -o "$bin.new" .) >&2 ||
            die "go build of $src failed (is the Go module proxy reachable for the first build?)"
        # Replace the old binary only once the new one is complete.
        mv -- "$bin.new" "$bin"
    fi
    printf '%s\n' "$bin"
}

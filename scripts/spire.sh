#!/usr/bin/env bash
# Builds SPIRE's server and agent, at a pinned release, so that Tessera's tests and
# benchmarks can run SPIRE beside Tessera on this machine. SPIRE is a program, not
# a library: its commands are added as tools to a throw-away Go module made under
# the output directory (never part of the repository) and built from the Go module
# proxy with `go install`. Needs Go (see SPIRE_GO below) and the module proxy.
#
#   scripts/spire.sh
#       Builds spire-server and spire-agent unless this version is already built,
#       and prints, on standard output, the directory that holds them; everything
#       else goes to standard error. Running it again changes nothing.
#   scripts/spire.sh --check-go
#       Only checks that a new enough Go is there (see need_go in common.sh).
#
# The binaries are linked like SPIRE's own release builds (symbols and DWARF
# stripped, the version stamped), so their sizes compare with the released ones.
# The first build downloads about 1.4 GB of modules into Go's module cache and
# fills about 2 GB of Go's build cache while it compiles for several minutes
# (about 13 CPU-minutes); later runs find the binaries and return at once. They
# live in the user's cache, not in the work tree, so every clone and work tree
# of the project shares one build; with Go's caches warm but the binaries gone,
# a rebuild only links (about a minute, offline).
#
# TESSERA_SPIRE_DIR   where the build goes (default:
#                     ${XDG_CACHE_HOME:-~/.cache}/tessera/spire-<version>).
# TESSERA_GO          the go binary to use (see need_go in common.sh).
# GOMODCACHE, GOCACHE Go's own download and build caches (Go's defaults otherwise).

set -euo pipefail

# prog, die, note, lock_for, need_go
. "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"

# The pinned release, and the Go it needs (the `go` line of its go.mod).
SPIRE_VERSION=v1.13.3
SPIRE_GO=1.25.3

# Linked like SPIRE's release builds: no symbol table or DWARF, version stamped.
LDFLAGS="-s -w -X github.com/spiffe/spire/pkg/common/version.gittag=${SPIRE_VERSION#v}"

root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
if [[ -n ${TESSERA_SPIRE_DIR-} ]]; then
    out=$TESSERA_SPIRE_DIR
elif [[ -n ${XDG_CACHE_HOME-} || -n ${HOME-} ]]; then
    out=${XDG_CACHE_HOME:-$HOME/.cache}/tessera/spire-$SPIRE_VERSION
else
    out=$root/target/spire
fi
bin=$out/bin
# What a finished build records; a different one means building again.
stamp="$SPIRE_VERSION -trimpath -ldflags=$LDFLAGS"

case ${1-} in
    '') ;;
    --check-go) ;;
    *) die "unknown argument '$1' (usage: $prog [--check-go])" ;;
esac

need_go "$SPIRE_GO"
[[ ${1-} == --check-go ]] && exit 0
mkdir -p -- "$out" || die "cannot create $out"

# Test binaries may run this script concurrently; one builds, the others wait.
lock_for "$out"

built() {
    [[ -x $bin/spire-server && -x $bin/spire-agent && -f $bin/BUILD ]] &&
        [[ $(<"$bin/BUILD") == "$stamp" ]]
}

if ! built; then
    note "building spire-server and spire-agent $SPIRE_VERSION with $("$go" env GOVERSION) into $bin (several minutes the first time)"
    started=$SECONDS
    tools=$out/tools
    rm -rf -- "$tools" "$bin.new"
    mkdir -p -- "$tools" "$bin.new"
    # The tools module: only its go.mod and go.sum, written by go itself.
    (
        cd -- "$tools"
        export GOFLAGS=-buildvcs=false
        "$go" mod init tessera.test/spire-tools >&2 ||
            die "go mod init failed in $tools"
        for cmd in spire-server spire-agent; do
            "$go" get -tool "github.com/spiffe/spire/cmd/$cmd@$SPIRE_VERSION" >&2 ||
                die "go get -tool github.com/spiffe/spire/cmd/$cmd@$SPIRE_VERSION failed (is the Go module proxy reachable?)"
        done
        GOBIN=$bin.new "$go" install -trimpath -ldflags "$LDFLAGS" \
            github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent >&2 ||
            die "go install of spire-server and spire-agent $SPIRE_VERSION failed"
    ) || exit 1
    "$bin.new/spire-server" --version >/dev/null 2>&1 ||
        die "the spire-server just built does not run: $bin.new/spire-server --version failed"
    printf '%s\n' "$stamp" >"$bin.new/BUILD"
    # Replace the old binaries only once the new ones are complete.
    rm -rf -- "$bin"
    mv -- "$bin.new" "$bin"
    note "built in $((SECONDS - started)) s: $(du -h "$bin/spire-server" | cut -f1) spire-server, $(du -h "$bin/spire-agent" | cut -f1) spire-agent"
fi

printf '%s\n' "$bin"

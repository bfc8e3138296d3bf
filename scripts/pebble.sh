#!/usr/bin/env bash
# Builds Pebble, the small ACME server made for testing ACME clients, at a pinned
# release, so that the tests can have the bundle endpoint's `https_web` certificate
# issued over ACME (RFC 8555, tls-alpn-01) by a real ACME server on this machine.
# Like scripts/spire.sh: Pebble is a program, added as a tool to a throw-away Go
# module under the output directory (never part of the repository) and built from
# the Go module proxy with `go install`.
#
#   scripts/pebble.sh
#       Builds pebble unless this version is already built, and prints, on
#       standard output, the directory that holds it; everything else goes to
#       standard error. Running it again changes nothing.
#
# TESSERA_PEBBLE_DIR  where the build goes (default:
#                     ${XDG_CACHE_HOME:-~/.cache}/tessera/pebble-<version>).
# TESSERA_GO          the go binary to use (see need_go in common.sh).

set -euo pipefail

# prog, die, note, lock_for, need_go
. "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"

# The pinned release, and the Go it needs (the `go` line of its go.mod).
PEBBLE_VERSION=v2.10.3
PEBBLE_GO=1.25.0

root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
if [[ -n ${TESSERA_PEBBLE_DIR-} ]]; then
    out=$TESSERA_PEBBLE_DIR
elif [[ -n ${XDG_CACHE_HOME-} || -n ${HOME-} ]]; then
    out=${XDG_CACHE_HOME:-$HOME/.cache}/tessera/pebble-$PEBBLE_VERSION
else
    out=$root/target/pebble
fi
bin=$out/bin
[[ $# -eq 0 ]] || die "no arguments expected (usage: $prog)"

need_go "$PEBBLE_GO"
mkdir -p -- "$out" || die "cannot create $out"
lock_for "$out"

if [[ ! -x $bin/pebble || $(cat "$bin/BUILD" 2>/dev/null) != "$PEBBLE_VERSION" ]]; then
    note "building pebble $PEBBLE_VERSION with $("$go" env GOVERSION) into $bin"
    tools=$out/tools
    rm -rf -- "$tools" "$bin.new"
    mkdir -p -- "$tools" "$bin.new"
    (
        cd -- "$tools"
        export GOFLAGS=-buildvcs=false
        "$go" mod init tessera.test/pebble-tools >&2 || die "go mod init failed in $tools"
        "$go" get -tool "github.com/letsencrypt/pebble/v2/cmd/pebble@$PEBBLE_VERSION" >&2 ||
            die "go get -tool github.com/letsencrypt/pebble/v2/cmd/pebble@$PEBBLE_VERSION failed (is the Go module proxy reachable?)"
        GOBIN=$bin.new "$go" install -trimpath github.com/letsencrypt/pebble/v2/cmd/pebble >&2 ||
            die "go install of pebble $PEBBLE_VERSION failed"
    ) || exit 1
    [[ -x $bin.new/pebble ]] || die "go install left no pebble in $bin.new"
    printf '%s\n' "$PEBBLE_VERSION" >"$bin.new/BUILD"
    rm -rf -- "$bin"
    mv -- "$bin.new" "$bin"
fi

printf '%s\n' "$bin"

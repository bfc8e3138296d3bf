#!/usr/bin/env bash
# Builds the Go workload that Tessera's interoperability tests run against the
# agent: swtpm-tests/go-spiffe/, a small program on go-spiffe v2 (the Workload API
# library Go services use), pinned by its go.mod and go.sum. The modules come from
# the Go module proxy the first time and from Go's module cache after that.
#
#   scripts/go-spiffe-env.sh
#       Builds the program unless it is up to date and prints, on standard output,
#       the path of the binary; everything else goes to standard error. Running it
#       again changes nothing.
#
# TESSERA_GO_SPIFFE_DIR  where the binary goes (default: <repo>/target/go-spiffe).
# TESSERA_GO             the go binary to use (default: go on PATH, then /usr/local/go/bin/go).

set -euo pipefail

# prog, die, note, lock_for, stale, need_go
. "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"

# The `go` line of swtpm-tests/go-spiffe/go.mod (what go-spiffe v2.9.0 needs).
MIN_GO=1.24.0

root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
out=${TESSERA_GO_SPIFFE_DIR:-$root/target/go-spiffe}
src=$root/swtpm-tests/go-spiffe
bin=$out/go-spiffe-workload

need_go "$MIN_GO"
mkdir -p -- "$out" || die "cannot create $out"

# Test binaries may run this script concurrently; one builds, the others wait.
lock_for "$out"

if stale "$bin" "$src"/*.go "$src/go.mod" "$src/go.sum" "$0" "$root/scripts/common.sh"; then
    note "building $src with $("$go" env GOVERSION) into $out"
    # -mod=readonly: the build uses exactly what go.mod and go.sum pin, and fails
    # rather than changing them.
    (cd -- "$src" && GOFLAGS=-buildvcs=false "$go" build -mod=readonly -trimpath -o "$bin.new" .) >&2 ||
        die "go build of $src failed (is the Go module proxy reachable for the first build?)"
    # Replace the old binary only once the new one is complete.
    mv -- "$bin.new" "$bin"
fi

printf '%s\n' "$bin"

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

# prog, die, note, build_go_program
. "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"

# The `go` line of swtpm-tests/go-spiffe/go.mod (what go-spiffe v2.9.0 needs).
MIN_GO=1.24.0

root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
out=${TESSERA_GO_SPIFFE_DIR:-$root/target/go-spiffe}
src=$root/swtpm-tests/go-spiffe
bin=$out/go-spiffe-workload

build_go_program "$src" "$bin" "$MIN_GO"

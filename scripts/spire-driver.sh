#!/usr/bin/env bash
# Builds the benchmark's SPIRE driver: bench/spire-driver/, a small Go program of
# this project that drives a SPIRE server through SPIRE's published API module
# (spire-api-sdk, at the version SPIRE's pinned release uses), pinned by its
# go.mod and go.sum. `tessera-bench --vs-spire` runs it for the issuance and
# sync scenarios and to read a SPIRE agent's cache. The modules come from the Go
# module proxy the first time and from Go's module cache after that.
#
#   scripts/spire-driver.sh
#       Builds the program unless it is up to date and prints, on standard output,
#       the path of the binary; everything else goes to standard error. Running it
#       again changes nothing.
#
# TESSERA_SPIRE_DRIVER_DIR  where the binary goes (default: <repo>/target/spire-driver).
# TESSERA_GO                the go binary to use (see need_go in common.sh).

set -euo pipefail

# prog, die, note, build_go_program
. "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"

# The `go` line of bench/spire-driver/go.mod (what grpc v1.76 needs).
MIN_GO=1.24.0

root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
out=${TESSERA_SPIRE_DRIVER_DIR:-$root/target/spire-driver}
src=$root/bench/spire-driver
bin=$out/spire-driver

build_go_program "$src" "$bin" "$MIN_GO"

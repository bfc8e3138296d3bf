#!/usr/bin/env bash
# Builds the Go workload that Tessera's interoperability tests use to talk to the
# agent the way Go services do: grpc-go, the gRPC stack go-spiffe is built on,
# with the Workload API stubs generated from Tessera's own workload.proto by
# protoc-gen-go and protoc-gen-go-grpc. Everything comes from Debian's packages
# (scripts/setup.sh --tests installs them); the build runs in GOPATH mode against
# /usr/share/gocode with the module proxy off, so nothing is downloaded here.
#
#   scripts/go-env.sh
#       Builds swtpm-tests/go/workloadclient.go unless it is up to date and prints,
#       on standard output, the path of the binary; everything else goes to
#       standard error. Running it again changes nothing.
#
# TESSERA_GO_DIR   where the build goes (default: <repo>/target/go).

set -euo pipefail

# prog, die, note, lock_for, stale, need_struct_proto
. "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"

root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
out=${TESSERA_GO_DIR:-$root/target/go}
proto_dir=$root/proto/proto
source=$root/swtpm-tests/go/workloadclient.go
# The import path the generated package gets (it needs a dot or a slash).
pkg=tessera.test/workloadpb

for tool in go protoc protoc-gen-go protoc-gen-go-grpc; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found; run scripts/setup.sh --tests"
done
need_struct_proto
[[ -d /usr/share/gocode/src/google.golang.org/grpc ]] ||
    die "grpc-go is not in /usr/share/gocode; run scripts/setup.sh --tests (package golang-google-grpc-dev)"

mkdir -p -- "$out" || die "cannot create $out"

# Test binaries may run this script concurrently; one builds, the others wait.
lock_for "$out"

bin=$out/workloadclient
if stale "$bin" "$source" "$proto_dir/workload.proto" "$0"; then
    note "generating the Workload API stubs and building workloadclient into $out"
    rm -rf -- "$out/src"
    mkdir -p -- "$out/src/$pkg"
    protoc -I"$proto_dir" -I/usr/include \
        --go_out="$out/src/$pkg" --go_opt=paths=source_relative --go_opt=Mworkload.proto=$pkg \
        --go-grpc_out="$out/src/$pkg" --go-grpc_opt=paths=source_relative \
        --go-grpc_opt=Mworkload.proto=$pkg \
        "$proto_dir/workload.proto" >&2 || die "protoc could not generate Go from workload.proto"
    # Build beside the old binary and move it into place once complete.
    GO111MODULE=off GOPATH="$out:/usr/share/gocode" GOCACHE="$out/cache" GOPROXY=off GOFLAGS= \
        go build -o "$bin.new" "$source" >&2 || die "go build failed"
    mv -- "$bin.new" "$bin"
fi

printf '%s\n' "$bin"

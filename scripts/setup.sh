#!/usr/bin/env bash
# Prepares a Debian (bookworm or later) machine to build, test and demo Tessera:
# the Debian packages the build and the tests use (SoftHSM2, swtpm, tpm2-tools,
# libtss2, OpenSSL, Python's venv; with --tests also a JDK, Go, grpc-java, grpc-go
# and QEMU), the Rust components, the Python virtualenv with py-spiffe and, with
# --tests, the compiled Java and Go workloads and a Debian kernel for the boot
# test. Safe to run again: it installs only what is missing.
#
#   scripts/setup.sh            # what the build and the demo need
#   scripts/setup.sh --tests    # and what only the tests need (Java, Go, QEMU, cargo-nextest)
#
# Run as root, or as a user with sudo. Only Debian's archive, crates.io and PyPI
# are contacted.

set -euo pipefail

root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
# prog, die, note
. "$root/scripts/common.sh"

packages=(
    build-essential pkg-config clang
    libtss2-dev tpm2-tools swtpm swtpm-tools
    softhsm2 opensc
    openssl ca-certificates
    python3 python3-venv
    protobuf-compiler musl-tools
)
# Only the tests need these: the Java and Go workloads (grpc-java over Netty, built
# by scripts/java-env.sh; grpc-go, built by scripts/go-env.sh) and QEMU.
test_packages=(
    libprotobuf-dev
    default-jdk-headless libgrpc-java libnetty-java libprotobuf-java
    protobuf-compiler-grpc-java-plugin libguava-java libperfmark-java libgoogle-gson-java
    libgeronimo-annotation-1.3-spec-java
    golang-go golang-google-grpc-dev golang-google-protobuf-dev
    golang-github-golang-protobuf-1-5-dev protoc-gen-go protoc-gen-go-grpc
    # The appliance boot test (images/boot-test.sh).
    qemu-system-x86 cpio
    # The PostgreSQL datastore's tests (scripts/postgres.sh).
    postgresql postgresql-client
    # The metrics tests scrape both binaries with a real Prometheus server.
    prometheus
)

tests=false
case ${1-} in
    '') ;;
    --tests) tests=true ;;
    *) die "unknown argument '$1' (usage: $prog [--tests])" ;;
esac
if $tests; then
    packages+=("${test_packages[@]}")
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this script supports Debian and its derivatives"
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "run as root or install sudo (missing packages: ${missing[*]})"
        sudo=(sudo)
    fi
    note "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    note "Debian packages present"
fi

if ! command -v cargo >/dev/null 2>&1; then
    die "cargo not found: install Rust with rustup (https://rustup.rs), then run this again"
fi
if command -v rustup >/dev/null 2>&1; then
    for c in rustfmt clippy; do
        rustup component list --installed 2>/dev/null | grep -q "^$c" || {
            note "adding rustup component $c"
            rustup component add "$c" >/dev/null
        }
    done
fi

# cargo-nextest runs the tests: one summary for the whole workspace, and a test that
# hangs is killed (.config/nextest.toml). Built from crates.io once (a few minutes).
if $tests && ! cargo nextest --version >/dev/null 2>&1; then
    note "installing cargo-nextest from crates.io (once; it takes a few minutes)"
    cargo install --locked --quiet cargo-nextest ||
        note "cargo-nextest could not be installed; the tests will run with cargo test"
fi

# py-spiffe, the Python workload the tests and the demo use.
bash "$root/scripts/python-env.sh" >/dev/null
# The grpc-java and grpc-go workloads the tests use, and the kernel and busybox
# the appliance boot test puts in its image (downloaded from Debian, not installed).
if $tests; then
    bash "$root/scripts/java-env.sh" >/dev/null
    bash "$root/scripts/go-env.sh" >/dev/null
    bash "$root/images/boot-test.sh" fetch
fi
note "ready"

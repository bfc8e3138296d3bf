#!/usr/bin/env bash
# Prepares a Debian (bookworm or later) machine to build, test and demo Tessera:
# the Debian packages the build and the tests use (SoftHSM2, swtpm, tpm2-tools,
# libtss2, OpenSSL, Python's venv; with --tests also a JDK, Maven, QEMU and
# PostgreSQL), the Rust components, the Python virtualenv with py-spiffe and, with
# --tests, the go-spiffe and java-spiffe workloads, SPIRE's server and agent, and
# Debian's x86_64 and arm64 kernels for the boot tests (scripts/static.sh, which
# the tests run, installs what the static builds need). Safe to run again: it
# installs and builds only what is missing.
#
#   scripts/setup.sh            # what the build and the demo need
#   scripts/setup.sh --tests    # and what only the tests need
#
# --tests also needs Go 1.25.3 or later already installed (`go` on PATH, in
# /usr/local/go or a Debian /usr/lib/go-1.N, or TESSERA_GO; Debian bookworm's
# golang-go is too old): it builds the go-spiffe workload and SPIRE with it, and
# says so before installing anything when there is none.
#
# Run as root, or as a user with sudo. Only Debian's archive, crates.io and PyPI
# are contacted; with --tests also the Go module proxy and the Maven repository.

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
    musl-tools
)
# Only the tests need these: the JDK and Maven for the java-spiffe workload
# (scripts/java-spiffe-env.sh); Go comes from outside Debian (see above).
test_packages=(
    default-jdk-headless maven
    # The appliance boot tests (images/boot-test.sh, x86_64 and aarch64) and the
    # systemd guest (images/systemd-guest.sh: debootstrap, and mkfs.ext4 from
    # e2fsprogs).
    qemu-system-x86 qemu-system-arm cpio debootstrap e2fsprogs
    # The PostgreSQL datastore's tests (scripts/postgres.sh).
    postgresql postgresql-client
    # The metrics tests scrape both binaries with a real Prometheus server.
    prometheus
    # The systemd workload attestor's tests talk D-Bus to a real dbus-daemon.
    dbus-daemon
    # The referee for TPM-held workload keys: OpenSSL's tpm2 provider loads the
    # agent's TSS2 key files, through tpm2-abrmd (TLS needs a resource manager;
    # swtpm-tests/tests/tpm_workload_keys.rs).
    tpm2-openssl tpm2-abrmd libtss2-tcti-tabrmd0
)

tests=false
case ${1-} in
    '') ;;
    --tests) tests=true ;;
    *) die "unknown argument '$1' (usage: $prog [--tests])" ;;
esac
if $tests; then
    packages+=("${test_packages[@]}")
    # Stop here, before the installs, when no Go is new enough for SPIRE.
    bash "$root/scripts/spire.sh" --check-go
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
# The go-spiffe and java-spiffe workloads the tests use; SPIRE's server and agent
# (built here, before the tests, because the first build takes several minutes)
# and the benchmark's driver of SPIRE's API;
# and the kernel and busybox the appliance boot test puts in its image
# (downloaded from Debian, not installed).
if $tests; then
    bash "$root/scripts/go-spiffe-env.sh" >/dev/null
    bash "$root/scripts/java-spiffe-env.sh" >/dev/null
    bash "$root/scripts/spire.sh" >/dev/null
    bash "$root/scripts/spire-driver.sh" >/dev/null
    bash "$root/images/boot-test.sh" fetch --arch x86_64
    bash "$root/images/boot-test.sh" fetch --arch aarch64
fi
note "ready"

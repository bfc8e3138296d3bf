#!/usr/bin/env bash
# Prepares a Debian (bookworm or later) machine to build, test and demo Tessera:
# the Debian packages the build and the tests use (SoftHSM2, swtpm, tpm2-tools,
# libtss2, OpenSSL, Python's venv), the Rust components, and the Python virtualenv
# with py-spiffe. Safe to run again: it installs only what is missing.
#
#   scripts/setup.sh
#
# Run as root, or as a user with sudo. Only Debian's archive, crates.io and PyPI
# are contacted.

set -euo pipefail

prog=${0##*/}
root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)

note() { printf '%s: %s\n' "$prog" "$*" >&2; }
die() { printf '%s: error: %s\n' "$prog" "$*" >&2; exit 1; }

packages=(
    build-essential pkg-config clang
    libtss2-dev tpm2-tools swtpm swtpm-tools
    softhsm2 opensc
    openssl ca-certificates
    python3 python3-venv
    protobuf-compiler musl-tools
)

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

# py-spiffe, the Python workload the tests and the demo use.
bash "$root/scripts/python-env.sh" >/dev/null
note "ready"

#!/usr/bin/env bash
# Builds Tessera's static binaries: `tessera-agent` for x86_64 and aarch64 Linux
# with musl, and `tessera-server` for x86_64 with musl, each checked to be static
# (no program interpreter, no NEEDED entry), into target/static/<triple>/.
#
#   scripts/static.sh [--profile NAME] [TRIPLE...]
#       Builds for each TRIPLE (default: x86_64-unknown-linux-musl
#       aarch64-unknown-linux-musl) with cargo profile NAME (default:
#       static-release; CI uses static-ci, see docs/STATIC.md) and prints each
#       binary's path and stripped size. Installs what it needs first: the rustup
#       targets, and from Debian musl-tools, clang, lld, llvm and, for aarch64,
#       musl-dev:arm64 (the arm64 architecture is added to dpkg for it).
#   scripts/static.sh check FILE...
#       Only checks that each FILE is a static ELF executable; says why not.
#
# The agent and the server are built with the pure-Rust TPM backend (their
# `tpm-native` feature) and without tss-esapi, which links libtss2. Neither can use
# PKCS#11: a static binary cannot load a module (docs/STATIC.md).

set -euo pipefail

root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
# prog, die, note
. "$root/scripts/common.sh"

default_triples=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)

usage() {
    sed -n '/^#   scripts/,/^#       Only/p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# Fails unless FILE is an ELF executable with no PT_INTERP program header and no
# DT_NEEDED entry (a static or static-pie binary).
check_static() {
    local file=$1 headers dynamic
    [[ -f $file ]] || die "$file does not exist"
    headers=$(LC_ALL=C readelf -lW -- "$file" 2>&1) || die "$file is not an ELF file: $headers"
    if grep -q '^ *INTERP ' <<<"$headers"; then
        die "$file is not static: it has a program interpreter ($(grep -o 'interpreter: [^]]*' <<<"$headers"))"
    fi
    dynamic=$(LC_ALL=C readelf -dW -- "$file" 2>&1) || die "readelf -d $file failed: $dynamic"
    if grep -q '(NEEDED)' <<<"$dynamic"; then
        die "$file is not static: it needs $(grep '(NEEDED)' <<<"$dynamic" | grep -o '\[.*\]' | tr '\n' ' ')"
    fi
}

# The ELF machine a triple's binaries must have, as readelf -h names it.
elf_machine() {
    case $1 in
    x86_64-*) echo 'Advanced Micro Devices X86-64' ;;
    aarch64-*) echo 'AArch64' ;;
    *) die "no static build is set up for $1 (supported: ${default_triples[*]})" ;;
    esac
}

# Installs the Debian packages named, unless present.
need_packages() {
    local p missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install ${missing[*]} yourself"
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "run as root or install sudo (missing packages: ${missing[*]})"
        sudo=(sudo)
    fi
    if [[ " ${missing[*]}" == *:arm64* ]] && ! dpkg --print-foreign-architectures | grep -qx arm64; then
        note "adding the arm64 architecture to dpkg (for ${missing[*]})"
        "${sudo[@]}" dpkg --add-architecture arm64
    fi
    note "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
        die "apt-get install ${missing[*]} failed"
}

need_target() {
    command -v rustup >/dev/null 2>&1 ||
        die "rustup not found: the musl targets' standard library comes from rustup (https://rustup.rs)"
    rustup target list --installed | grep -qx "$1" || {
        note "adding rustup target $1"
        rustup target add "$1" >/dev/null || die "rustup target add $1 failed"
    }
}

# Sets the environment for building C code (ring, SQLite) and linking for TRIPLE.
toolchain_for() {
    local triple=$1 var
    var=$(tr 'a-z-' 'A-Z_' <<<"$triple")
    case $triple in
    x86_64-unknown-linux-musl)
        # The cc crate finds musl-gcc; rustc links with its own musl crt and libc,
        # and musl's empty libdl.a stands in for -ldl (libloading asks for it).
        need_packages musl-tools
        export "CARGO_TARGET_${var}_RUSTFLAGS=-C link-arg=-L/usr/lib/x86_64-linux-musl"
        ;;
    aarch64-unknown-linux-musl)
        # clang compiles for aarch64 against Debian's arm64 musl headers; lld links
        # with rustc's own aarch64 musl crt objects and libc, and Debian's empty
        # libdl.a for -ldl.
        need_packages clang lld llvm musl-dev:arm64
        local resource
        resource=$(clang -print-resource-dir) || die "clang -print-resource-dir failed"
        [[ -d /usr/include/aarch64-linux-musl ]] ||
            die "/usr/include/aarch64-linux-musl is missing (Debian package musl-dev:arm64)"
        export CC_aarch64_unknown_linux_musl=clang
        export AR_aarch64_unknown_linux_musl=llvm-ar
        export CFLAGS_aarch64_unknown_linux_musl="--target=aarch64-linux-musl -nostdinc -isystem /usr/include/aarch64-linux-musl -isystem $resource/include"
        export "CARGO_TARGET_${var}_LINKER=clang"
        export "CARGO_TARGET_${var}_RUSTFLAGS=-C link-arg=--target=aarch64-linux-musl -C link-arg=-fuse-ld=lld -C link-arg=-L/usr/lib/aarch64-linux-musl"
        ;;
    *) elf_machine "$triple" >/dev/null ;;
    esac
}

build() {
    local profile=static-release triples=() triple
    while (($#)); do
        case $1 in
        --profile)
            [[ $# -ge 2 ]] || usage
            profile=$2
            shift 2
            ;;
        -*) usage ;;
        *)
            triples+=("$1")
            shift
            ;;
        esac
    done
    ((${#triples[@]})) || triples=("${default_triples[@]}")
    for triple in "${triples[@]}"; do elf_machine "$triple" >/dev/null; done
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust with rustup (https://rustup.rs)"
    command -v readelf >/dev/null 2>&1 || need_packages binutils

    cd "$root"
    export CARGO_INCREMENTAL=0
    for triple in "${triples[@]}"; do
        need_target "$triple"
        # The TPM backend a static binary can have: the pure-Rust one.
        local packages=(-p tessera-agent) binaries=(tessera-agent) started
        local features=tessera-agent/tpm-native
        # The static server is for small x86_64 edge servers.
        if [[ $triple == x86_64-* ]]; then
            packages+=(-p tessera-server)
            binaries+=(tessera-server)
            features+=,tessera-server/tpm-native
        fi
        (
            toolchain_for "$triple"
            note "building ${binaries[*]} for $triple (profile $profile)"
            started=$SECONDS
            # --no-default-features: no tss-esapi (it links libtss2 dynamically).
            cargo build --locked --profile "$profile" --target "$triple" "${packages[@]}" \
                --no-default-features --features "$features" ||
                die "cargo build for $triple failed"
            note "built for $triple in $((SECONDS - started)) s"
        ) || exit 1
        local dir=target/$triple/$profile
        [[ $profile == dev ]] && dir=target/$triple/debug
        local out=target/static/$triple b machine strip=strip
        machine=$(elf_machine "$triple")
        # binutils' strip knows only the host's architecture.
        [[ $triple == x86_64-* ]] || strip=llvm-strip
        mkdir -p -- "$out"
        for b in "${binaries[@]}"; do
            check_static "$dir/$b"
            LC_ALL=C readelf -hW -- "$dir/$b" | grep -q "Machine: *$machine" ||
                die "$dir/$b is not an $machine binary"
            # Replace the old binary only once the new one is complete and stripped.
            "$strip" -o "$out/$b.new" "$dir/$b" || die "cannot strip $dir/$b"
            mv -- "$out/$b.new" "$out/$b"
            printf '%s\t%s bytes (stripped, static)\n' "$out/$b" "$(stat -c %s -- "$out/$b")"
        done
    done
}

case ${1-} in
check)
    shift
    [[ $# -ge 1 ]] || usage
    for f in "$@"; do
        check_static "$f"
        printf '%s: static\n' "$f"
    done
    ;;
-h | --help) usage ;;
*) build "$@" ;;
esac

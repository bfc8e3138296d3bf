#!/usr/bin/env bash
# Creates SoftHSM2 tokens under a private configuration, for tests, CI and local
# trials of Tessera's PKCS#11 key manager. It never reads or writes the system's
# /etc/softhsm/softhsm2.conf and installs nothing: the project's setup script
# installs the softhsm2 package.
#
#   scripts/softhsm.sh init DIR LABEL PIN [SO_PIN]
#       Writes DIR/softhsm2.conf (tokens in DIR/tokens), creates the token LABEL
#       there unless it already exists, writes PIN to DIR/pin (mode 0600) and
#       prints shell `export` lines (SOFTHSM2_CONF, PKCS11_MODULE,
#       PKCS11_TOKEN_LABEL, PKCS11_TOKEN_SERIAL, PKCS11_PIN_FILE) for `eval`.
#       Running it again with the same arguments changes nothing.
#   scripts/softhsm.sh module
#       Prints the path of libsofthsm2.so.
#   scripts/softhsm.sh show DIR
#       Lists the slots and tokens of DIR's configuration.
#   scripts/softhsm.sh delete DIR LABEL
#       Deletes the token LABEL (and every key in it) from DIR.
#
# SOFTHSM2_MODULE, when set, is taken as the module path without searching.

set -euo pipefail

# prog, die, note
. "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"

usage() {
    sed -n '/^#   /,/^# SOFTHSM2_MODULE/p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# Prints the path of the SoftHSM2 PKCS#11 module, or fails saying where it looked.
find_module() {
    if [[ -n ${SOFTHSM2_MODULE:-} ]]; then
        [[ -f $SOFTHSM2_MODULE ]] || die "SOFTHSM2_MODULE=$SOFTHSM2_MODULE does not exist"
        printf '%s\n' "$SOFTHSM2_MODULE"
        return
    fi
    local multiarch=""
    if command -v dpkg-architecture >/dev/null 2>&1; then
        multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || true)
    fi
    if [[ -z $multiarch ]] && command -v gcc >/dev/null 2>&1; then
        multiarch=$(gcc -print-multiarch 2>/dev/null || true)
    fi
    local candidates=(/usr/lib/softhsm/libsofthsm2.so)
    if [[ -n $multiarch ]]; then
        candidates+=("/usr/lib/$multiarch/softhsm/libsofthsm2.so")
    fi
    # Any multiarch directory, then the RPM, BSD and Homebrew layouts.
    candidates+=(
        /usr/lib/*-linux-gnu*/softhsm/libsofthsm2.so
        /usr/lib64/softhsm/libsofthsm2.so
        /usr/lib64/pkcs11/libsofthsm2.so
        /usr/lib/pkcs11/libsofthsm2.so
        /usr/local/lib/softhsm/libsofthsm2.so
        /usr/local/lib/pkcs11/libsofthsm2.so
        /opt/homebrew/lib/softhsm/libsofthsm2.so
    )
    local c
    for c in "${candidates[@]}"; do
        if [[ -f $c ]]; then
            printf '%s\n' "$c"
            return
        fi
    done
    # p11-kit's module registry names it on distributions that ship one.
    local reg
    for reg in /usr/share/p11-kit/modules/softhsm2.module /etc/pkcs11/modules/softhsm2.module; do
        if [[ -f $reg ]]; then
            c=$(sed -n 's/^module:[[:space:]]*//p' "$reg" | head -n1)
            if [[ -n $c && -f $c ]]; then
                printf '%s\n' "$c"
                return
            fi
        fi
    done
    die "libsofthsm2.so not found (looked in /usr/lib/softhsm, /usr/lib/<multiarch>/softhsm, /usr/lib64, /usr/local/lib and p11-kit's module files); install the softhsm2 package (Debian/Ubuntu: apt-get install softhsm2) or set SOFTHSM2_MODULE"
}

need_util() {
    command -v softhsm2-util >/dev/null 2>&1 ||
        die "softhsm2-util not found in PATH; install the softhsm2 package (Debian/Ubuntu: apt-get install softhsm2)"
}

# Absolute path of DIR, created (mode 0700) if missing.
prepare_dir() {
    local dir=$1
    [[ -n $dir ]] || die "DIR must not be empty"
    if [[ -e $dir && ! -d $dir ]]; then
        die "$dir exists and is not a directory"
    fi
    (umask 077 && mkdir -p -- "$dir/tokens") || die "cannot create $dir/tokens"
    (cd -- "$dir" && pwd -P)
}

# Writes DIR/softhsm2.conf; the contents depend only on DIR, so rewriting is harmless.
write_conf() {
    local dir=$1 conf="$1/softhsm2.conf" tmp
    tmp=$(mktemp "$dir/.softhsm2.conf.XXXXXX")
    cat >"$tmp" <<EOF
# SoftHSM2 configuration private to this directory (written by $prog).
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
slots.mechanisms = ALL
library.reset_on_fork = false
EOF
    chmod 0600 "$tmp"
    mv -f -- "$tmp" "$conf"
}

# Prints "serial" of the token labelled LABEL in the current SOFTHSM2_CONF, if any.
token_serial() {
    local label=$1
    softhsm2-util --show-slots 2>/dev/null | WANT=$label awk '
        BEGIN { want = ENVIRON["WANT"] }
        /^[[:space:]]*Serial number:/ {
            s = $0; sub(/^[[:space:]]*Serial number:[[:space:]]*/, "", s); sub(/[[:space:]]+$/, "", s)
        }
        /^[[:space:]]*Label:/ {
            l = $0; sub(/^[[:space:]]*Label:[[:space:]]*/, "", l); sub(/[[:space:]]+$/, "", l)
            if (l == want && s != "") { print s; exit }
        }'
}

cmd_init() {
    [[ $# -ge 3 && $# -le 4 ]] || usage
    local dir=$1 label=$2 pin=$3 so_pin=${4:-$3}
    [[ -n $label ]] || die "LABEL must not be empty"
    # PKCS#11 token labels are 32 bytes, blank padded: longer ones would be cut.
    (( $(printf '%s' "$label" | wc -c) <= 32 )) || die "LABEL must be at most 32 bytes (PKCS#11 limit): $label"
    [[ $label != *[[:space:]] && $label != [[:space:]]* ]] ||
        die "LABEL must not start or end with a space (PKCS#11 pads labels with spaces)"
    # SoftHSM2 accepts PINs of 4 to 255 bytes.
    (( ${#pin} >= 4 && ${#pin} <= 255 )) || die "PIN must be 4 to 255 characters long"
    (( ${#so_pin} >= 4 && ${#so_pin} <= 255 )) || die "SO_PIN must be 4 to 255 characters long"
    need_util
    local module
    module=$(find_module)
    dir=$(prepare_dir "$dir")
    write_conf "$dir"
    export SOFTHSM2_CONF="$dir/softhsm2.conf"

    local serial
    serial=$(token_serial "$label")
    if [[ -n $serial ]]; then
        note "token \"$label\" already exists in $dir/tokens (serial $serial); kept as it is"
    else
        local out
        if ! out=$(softhsm2-util --init-token --free --label "$label" --pin "$pin" --so-pin "$so_pin" 2>&1); then
            die "softhsm2-util --init-token failed: $out"
        fi
        serial=$(token_serial "$label")
        [[ -n $serial ]] || die "token \"$label\" was initialised but does not show in softhsm2-util --show-slots"
        note "created token \"$label\" (serial $serial) in $dir/tokens"
    fi

    local pinfile="$dir/pin" tmp
    tmp=$(umask 077 && mktemp "$dir/.pin.XXXXXX")
    printf '%s' "$pin" >"$tmp"
    chmod 0600 "$tmp"
    mv -f -- "$tmp" "$pinfile"

    printf 'export SOFTHSM2_CONF=%q\n' "$SOFTHSM2_CONF"
    printf 'export PKCS11_MODULE=%q\n' "$module"
    printf 'export PKCS11_TOKEN_LABEL=%q\n' "$label"
    printf 'export PKCS11_TOKEN_SERIAL=%q\n' "$serial"
    printf 'export PKCS11_PIN_FILE=%q\n' "$pinfile"
}

cmd_show() {
    [[ $# -eq 1 ]] || usage
    need_util
    [[ -f $1/softhsm2.conf ]] || die "$1/softhsm2.conf does not exist; run: $prog init $1 LABEL PIN"
    SOFTHSM2_CONF="$1/softhsm2.conf" softhsm2-util --show-slots
}

cmd_delete() {
    [[ $# -eq 2 ]] || usage
    need_util
    [[ -f $1/softhsm2.conf ]] || die "$1/softhsm2.conf does not exist"
    export SOFTHSM2_CONF="$1/softhsm2.conf"
    if [[ -z $(token_serial "$2") ]]; then
        note "no token \"$2\" in $1; nothing to delete"
        return
    fi
    softhsm2-util --delete-token --token "$2" >&2
}

[[ $# -ge 1 ]] || usage
cmd=$1
shift
case $cmd in
    init) cmd_init "$@" ;;
    module) [[ $# -eq 0 ]] || usage; find_module ;;
    show) cmd_show "$@" ;;
    delete) cmd_delete "$@" ;;
    -h | --help | help) usage ;;
    *) note "unknown command: $cmd"; usage ;;
esac

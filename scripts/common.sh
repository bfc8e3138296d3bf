# Sourced by Tessera's scripts: messages on standard error, prefixed with the
# name of the script that sources this file.

prog=${0##*/}

die() {
    printf '%s: error: %s\n' "$prog" "$*" >&2
    exit 1
}

note() {
    printf '%s: %s\n' "$prog" "$*" >&2
}

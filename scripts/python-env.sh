#!/usr/bin/env bash
# Prepares the Python environment that Tessera's interoperability tests use to
# talk to the agent the way Python workloads do: a virtualenv holding grpcio
# (gRPC core, the library whose Unix-socket `:authority` the agent must accept)
# and py-spiffe (the `spiffe` package, the Workload API client Python services
# use). Only PyPI is needed.
#
#   scripts/python-env.sh
#       Creates the virtualenv unless it exists, installs the pinned packages
#       unless they are already there, and prints the path of its python on
#       standard output (everything else goes to standard error). Running it
#       again changes nothing.
#
# TESSERA_VENV   where the virtualenv lives (default: <repo>/target/venv).
# PYTHON         the interpreter that creates it (default: python3, >= 3.9).

set -euo pipefail

# prog, die, note
. "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"

# Pins. grpcio >= 1.57 is what sends the socket path as `:authority` over a
# Unix socket; spiffe 0.3.2 requires grpcio >= 1.78.
GRPCIO_VERSION=1.85.1
SPIFFE_VERSION=0.3.2

root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
venv=${TESSERA_VENV:-$root/target/venv}
python=${PYTHON:-python3}

command -v "$python" >/dev/null 2>&1 || die "$python not found in PATH; install Python 3 (>= 3.9) or set PYTHON"
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' ||
    die "$python is older than Python 3.9; py-spiffe $SPIFFE_VERSION needs 3.9 or later"

mkdir -p -- "$(dirname -- "$venv")" || die "cannot create the parent of $venv"

# Test binaries may run this script concurrently; one of them installs, the
# others wait for it rather than racing pip over the same directory.
lock_for "$venv"

installed() {
    [[ -x $venv/bin/python ]] &&
        "$venv/bin/python" - "$GRPCIO_VERSION" "$SPIFFE_VERSION" >/dev/null 2>&1 <<'EOF'
import sys
from importlib.metadata import version
ok = version("grpcio") == sys.argv[1] and version("spiffe") == sys.argv[2]
import grpc, spiffe  # noqa: E401,F401  (the packages must import, not just be listed)
sys.exit(0 if ok else 1)
EOF
}

if ! installed; then
    if [[ ! -x $venv/bin/python ]]; then
        note "creating a virtualenv in $venv"
        "$python" -m venv -- "$venv" ||
            die "$python -m venv failed; on Debian/Ubuntu install python3-venv"
    fi
    note "installing grpcio==$GRPCIO_VERSION spiffe==$SPIFFE_VERSION from PyPI into $venv"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/python" -m pip install --quiet --no-input \
        "grpcio==$GRPCIO_VERSION" "spiffe==$SPIFFE_VERSION" >&2 ||
        die "pip could not install grpcio==$GRPCIO_VERSION and spiffe==$SPIFFE_VERSION (is PyPI reachable?)"
    installed || die "grpcio $GRPCIO_VERSION and spiffe $SPIFFE_VERSION still do not import from $venv after installing"
fi

printf '%s\n' "$venv/bin/python"

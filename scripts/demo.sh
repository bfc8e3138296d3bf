#!/usr/bin/env bash
# The Tessera demo, on embedded defaults: a server whose CA key lives in a (SoftHSM2)
# HSM, an agent that proves its node, an entry for the user running this script,
# and that user's SVID fetched over the SPIFFE Workload API and checked.
#
#   scripts/demo.sh [--keep]
#
# Everything lives in target/demo (made fresh each run) and listens on loopback only.
# --keep leaves the server and agent running at the end (the script prints how to
# reach and stop them).

set -euo pipefail

root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$root"
keep=false
[[ ${1:-} == --keep ]] && keep=true

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

bash scripts/setup.sh

step "Building tessera-server and tessera-agent (release)"
cargo build --release --locked -p tessera-server -p tessera-agent
bin=$root/target/release

demo=$root/target/demo
if [[ -d $demo ]]; then
    # A previous run may have left processes behind with --keep.
    for pidfile in "$demo"/*.pid; do
        [[ -f $pidfile ]] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    [[ -d $demo/swtpm ]] && bash scripts/swtpm.sh stop "$demo/swtpm" >/dev/null 2>&1 || true
    rm -rf "$demo"
fi
mkdir -p "$demo"

cleanup() {
    if ! $keep; then
        for pidfile in "$demo"/*.pid; do
            [[ -f $pidfile ]] && kill "$(cat "$pidfile")" 2>/dev/null || true
        done
        [[ -d $demo/swtpm ]] && bash scripts/swtpm.sh stop "$demo/swtpm" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

step "An HSM token for the CA key (SoftHSM2, private configuration)"
eval "$(bash scripts/softhsm.sh init "$demo/hsm" tessera-demo 4321)"
export SOFTHSM2_CONF

step "The server"
cat >"$demo/server.toml" <<TOML
trust_domain = "example.org"
bind_address = "127.0.0.1:$port"
data_dir = "$demo/server"
admin_socket = "$demo/server/admin.sock"

[key_manager]
type = "pkcs11"
module = "$PKCS11_MODULE"
token_label = "tessera-demo"
pin_file = "$PKCS11_PIN_FILE"
TOML
"$bin/tessera-server" run --config "$demo/server.toml" >"$demo/server.log" 2>&1 &
echo $! >"$demo/server.pid"
srv() { "$bin/tessera-server" --socket-path "$demo/server/admin.sock" "$@"; }
for _ in $(seq 100); do srv healthcheck >/dev/null 2>&1 && break; sleep 0.1; done
srv healthcheck --verbose
srv bundle show >"$demo/bundle.pem"

step "The CA key, as the token itself lists it (never extractable)"
pin=$(cat "$PKCS11_PIN_FILE")
pkcs11-tool --module "$PKCS11_MODULE" --token-label tessera-demo --login --pin "$pin" \
    --list-objects --type privkey 2>/dev/null | grep -E 'label|Access|Usage'

step "An entry for you ($(id -un), uid $(id -u))"
token=$(srv token generate --spiffe-id spiffe://example.org/demo-node | awk '{print $2}')
srv entry create --parent-id spiffe://example.org/demo-node \
    --spiffe-id "spiffe://example.org/demo/$(id -un)" --selector "unix:uid:$(id -u)"

step "The agent (join token attestation)"
cat >"$demo/agent.toml" <<TOML
trust_domain = "example.org"
server_address = "127.0.0.1:$port"
data_dir = "$demo/agent"
socket_path = "$demo/agent/api.sock"
trust_bundle_path = "$demo/bundle.pem"
TOML
"$bin/tessera-agent" run --config "$demo/agent.toml" --join-token "$token" >"$demo/agent.log" 2>&1 &
echo $! >"$demo/agent.pid"
agent() { "$bin/tessera-agent" "$@" --socket-path "$demo/agent/api.sock"; }
for _ in $(seq 100); do agent healthcheck >/dev/null 2>&1 && break; sleep 0.1; done
agent healthcheck --verbose

step "Your X509-SVID over the SPIFFE Workload API"
for _ in $(seq 50); do agent api fetch x509 >/dev/null 2>&1 && break; sleep 0.2; done
agent api fetch x509
agent api fetch x509 --write "$demo/svid" >/dev/null
openssl x509 -in "$demo/svid/svid.0.pem" -noout -subject -ext subjectAltName
openssl verify -CAfile "$demo/svid/bundle.0.pem" "$demo/svid/svid.0.pem"

step "The same through py-spiffe, a stock SPIFFE client"
SPIFFE_ENDPOINT_SOCKET="unix://$demo/agent/api.sock" \
    "$(bash scripts/python-env.sh)" swtpm-tests/py/workload.py x509 "$demo/py"

step "A JWT-SVID, validated by the agent"
jwt=$(agent api fetch jwt --audience demo | sed -n 2p | tr -d '\t')
agent api validate jwt --audience demo --svid "$jwt"

if $keep; then
    step "Still running"
    echo "server: $bin/tessera-server --socket-path $demo/server/admin.sock ...   (log $demo/server.log)"
    echo "agent:  SPIFFE_ENDPOINT_SOCKET=unix://$demo/agent/api.sock             (log $demo/agent.log)"
    echo "stop:   kill \$(cat $demo/*.pid)"
fi

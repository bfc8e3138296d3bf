#!/usr/bin/env bash
# The Tessera demo, on embedded defaults: a server whose CA key lives in a (SoftHSM2)
# HSM, an agent that proves its node with its (swtpm) TPM's DevID and keeps its own
# key in that TPM, an entry for the user running this script, and that user's SVID
# fetched over the SPIFFE Workload API and checked.
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

step "A TPM (swtpm) with EK certificates from its maker, and a DevID from its vendor"
bash scripts/swtpm.sh start "$demo/swtpm" >/dev/null
# shellcheck disable=SC1091
source "$demo/swtpm/env"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=Demo Appliance Vendor CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$demo/vendor-ca.key" -out "$demo/vendor-ca.pem" 2>/dev/null
"$bin/tessera-agent" tpm provision-devid --tcti "$TPM_TCTI" --common-name demo-appliance-0001 \
    --vendor-ca-cert "$demo/vendor-ca.pem" --vendor-ca-key "$demo/vendor-ca.key" --out "$demo/devid"

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

[node_attestors.tpm_devid]
devid_ca_bundle = ["$demo/vendor-ca.pem"]
ek_ca_bundle = ["$TPM_EK_CA_ROOT"]
ek_intermediates = ["$TPM_EK_CA_INTERMEDIATE"]
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

step "Entries: the vendor's appliances (by DevID), and you ($(id -un), uid $(id -u)) on them"
srv entry create --node --spiffe-id spiffe://example.org/appliances \
    --selector "tpm_devid:issuer:cn:Demo Appliance Vendor CA"
srv entry create --parent-id spiffe://example.org/appliances \
    --spiffe-id "spiffe://example.org/demo/$(id -un)" --selector "unix:uid:$(id -u)"

step "The agent (TPM DevID attestation; its own key in the TPM)"
cat >"$demo/agent.toml" <<TOML
trust_domain = "example.org"
server_address = "127.0.0.1:$port"
data_dir = "$demo/agent"
socket_path = "$demo/agent/api.sock"
trust_bundle_path = "$demo/bundle.pem"

[key_manager]
type = "tpm"

[node_attestor.tpm_devid]
tcti = "$TPM_TCTI"
devid_dir = "$demo/devid"
TOML
"$bin/tessera-agent" run --config "$demo/agent.toml" >"$demo/agent.log" 2>&1 &
echo $! >"$demo/agent.pid"
agent() { "$bin/tessera-agent" "$@" --socket-path "$demo/agent/api.sock"; }
for _ in $(seq 100); do agent healthcheck >/dev/null 2>&1 && break; sleep 0.1; done
agent healthcheck --verbose
"$bin/tessera-server" --socket-path "$demo/server/admin.sock" agent list
echo "The agent's key on disk is a TPM blob: $(ls "$demo"/agent/keys/)"

step "Your X509-SVID over the SPIFFE Workload API"
for _ in $(seq 50); do agent api fetch x509 >/dev/null 2>&1 && break; sleep 0.2; done
agent api fetch x509
agent api fetch x509 --write "$demo/svid" >/dev/null
openssl x509 -in "$demo/svid/svid.0.pem" -noout -subject -ext subjectAltName
(cd "$demo" && openssl verify -CAfile svid/bundle.0.pem svid/svid.0.pem)

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

# Sourced by the image tests (boot-test.sh, systemd-guest.sh): a fresh work folder
# with its exit trap, the factory that provisions an appliance's TPM and DevID,
# and the server on the host that the guest's agent attests to. Needs scripts/common.sh sourced first (die, note) and
# `root` (the repository) and `bin` (where tessera-agent and tessera-server are)
# set.

# Makes WORK afresh, marked with the file MARKER, refusing to empty a non-empty
# folder an earlier run of the same script did not make; sets `work` to its
# absolute path and `pids` to an empty array, and installs an exit trap that stops
# every process in `pids` and the simulator in WORK/swtpm.
fresh_work() {
    local dir=$1 marker=$2
    if [[ -e $dir ]]; then
        [[ -f $dir/$marker || -z $(ls -A -- "$dir" 2>/dev/null) ]] ||
            die "$dir exists and is not an earlier run's folder; name a new one"
        rm -rf -- "$dir"
    fi
    mkdir -p -- "$dir"
    : >"$dir/$marker"
    work=$(cd -- "$dir" && pwd -P)
    pids=()
    trap stop_work EXIT
}

stop_work() {
    local p
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    bash "$root/scripts/swtpm.sh" stop "$work/swtpm" >/dev/null 2>&1 || true
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# The factory, in WORK: a swtpm TPM with its maker's EK certificates
# (scripts/swtpm.sh, state in WORK/swtpm), a throw-away vendor CA
# (WORK/vendor-ca.{pem,key}, subject CN=VENDOR_CN) and a DevID for the TPM signed
# by it (`tessera-agent tpm provision-devid`, into WORK/devid: this folder goes
# into the image). The simulator is stopped afterwards; `scripts/swtpm.sh vm
# WORK/swtpm` starts it again as the guest's TPM device. Sets `factory_agent_path`
# (the agent ID path the DevID gives), `factory_ek_root` and `factory_ek_issuer`
# (the TPM maker's CA, for the server).
factory() {
    local work=$1 common_name=$2 vendor_cn=$3 tcti
    note "provisioning the appliance's TPM and DevID"
    bash "$root/scripts/swtpm.sh" start "$work/swtpm" >/dev/null
    tcti=$(sed -n "s/^export TPM_TCTI='\(.*\)'$/\1/p" "$work/swtpm/env")
    factory_ek_root=$(sed -n "s/^export TPM_EK_CA_ROOT='\(.*\)'$/\1/p" "$work/swtpm/env")
    factory_ek_issuer=$(sed -n "s/^export TPM_EK_CA_INTERMEDIATE='\(.*\)'$/\1/p" "$work/swtpm/env")
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj "/CN=$vendor_cn" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$work/vendor-ca.key" -out "$work/vendor-ca.pem" 2>/dev/null ||
        die "openssl could not make the vendor CA"
    "$bin/tessera-agent" tpm provision-devid --tcti "$tcti" --common-name "$common_name" \
        --vendor-ca-cert "$work/vendor-ca.pem" --vendor-ca-key "$work/vendor-ca.key" \
        --out "$work/devid" >"$work/provision.log" 2>&1 ||
        die "provision-devid failed: $(cat "$work/provision.log")"
    factory_agent_path=$(sed -n 's/^Agent ID path *: *//p' "$work/provision.log")
    [[ -n $factory_agent_path ]] ||
        die "provision-devid printed no agent ID path: $(cat "$work/provision.log")"
    bash "$root/scripts/swtpm.sh" stop "$work/swtpm" >/dev/null
}

# A server on the host's loopback, on a free port (the guest reaches it as
# 10.0.2.2 through QEMU's user network), trusting the vendor CA and the TPM maker's
# CA `factory` made, with its state in WORK/server and its log in
# WORK/server.log. Its PID is appended to the array `pids`; sets `host_port` and
# writes the server's bundle to WORK/bundle.pem. `srv ARGS...` runs its admin CLI.
host_server() {
    local work=$1
    host_port=$(free_port)
    cat >"$work/server.toml" <<TOML
trust_domain = "example.org"
bind_address = "127.0.0.1:$host_port"
data_dir = "$work/server"
admin_socket = "$work/server/admin.sock"

[node_attestors.tpm_devid]
devid_ca_bundle = ["$work/vendor-ca.pem"]
ek_ca_bundle = ["$factory_ek_root"]
ek_intermediates = ["$factory_ek_issuer"]
TOML
    "$bin/tessera-server" run --config "$work/server.toml" >"$work/server.log" 2>&1 &
    pids+=($!)
    srv_socket=$work/server/admin.sock
    for _ in $(seq 100); do srv healthcheck >/dev/null 2>&1 && break; sleep 0.1; done
    srv healthcheck >/dev/null || die "the server did not start: $(cat "$work/server.log")"
    srv bundle show >"$work/bundle.pem"
}

srv() { "$bin/tessera-server" --socket-path "$srv_socket" "$@"; }

# Fails unless the host server recorded the agent that FACTORY's DevID names
# (spiffe://example.org<factory_agent_path>); prints that ID.
check_devid_agent() {
    local work=$1 agent_id="spiffe://example.org$factory_agent_path"
    srv agent list --output json >"$work/agents.json"
    grep -q "\"$agent_id\"" "$work/agents.json" ||
        die "the server has no agent $agent_id: $(cat "$work/agents.json")"
    printf '%s\n' "$agent_id"
}

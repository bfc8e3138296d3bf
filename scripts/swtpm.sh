#!/usr/bin/env bash
# Owns the lifecycle of a swtpm TPM 2.0 simulator for tests, CI and the demo:
# provisioning (EK certificates signed by a local CA that stands in for the TPM
# manufacturer), start, stop and restart on the same state. Everything lives under
# one directory; the system's /etc/swtpm_setup.conf and /etc/swtpm-localca.conf are
# never read or written, and nothing is installed (the project's setup script
# installs the swtpm, swtpm-tools and tpm2-tools packages).
#
#   scripts/swtpm.sh start DIR
#       Provisions DIR/state on first use (swtpm_setup with an RSA-2048 and an ECC
#       P-384 EK and their certificates, a platform certificate, and a P-256 EK
#       certificate at NV 0x01c0000a, which swtpm_setup does not write), starts
#       swtpm on a free loopback port pair, writes DIR/env and prints it.
#   scripts/swtpm.sh stop DIR
#       Shuts the simulator down (its state stays in DIR/state).
#   scripts/swtpm.sh restart DIR
#       stop, then start on the same state (keys made before must load again).
#   scripts/swtpm.sh env DIR
#       Prints DIR/env.
#   scripts/swtpm.sh vm DIR
#       Starts the simulator provisioned in DIR (by `start`, then `stop`) as a TPM
#       device for QEMU: its control channel on the Unix socket DIR/vm.sock (for
#       `-chardev socket,path=DIR/vm.sock -tpmdev emulator`), whose path it prints.
#       The simulator exits when QEMU lets go of it; `stop` ends it otherwise.
#
# DIR/env holds `export` lines, for `source` or `eval`:
#   TPM_TCTI             Tessera's TCTI setting: swtpm:host=127.0.0.1,port=P
#   TPM2TOOLS_TCTI       the same simulator for tpm2-tools
#   TPM_SWTPM_PORT, TPM_SWTPM_CTRL_PORT, TPM_SWTPM_PID
#   TPM_STATE_DIR        the simulator's state folder
#   TPM_EK_CA_ROOT       the local CA's root certificate (swtpm-localca-rootca-cert.pem)
#   TPM_EK_CA_INTERMEDIATE  the local CA's issuing certificate (issuercert.pem)
#   TPM_EK_CERT_DIR      the EK certificates as provisioned (DER), for reference
#
# SWTPM_PORT, when set, is the data port to try first (the control port is the next one).

set -euo pipefail

# prog, die, note
. "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"

usage() {
    sed -n '/^#   scripts/,/^# SWTPM_PORT/p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# The NV index where the P-256 EK certificate belongs (TCG EK Credential Profile).
readonly P256_EK_CERT_INDEX=0x01c0000a
# What swtpm_setup itself reports to swtpm_localca, so that the P-256 certificate
# carries the same TPM manufacturer, model and version as the ones it writes.
readonly TPM_SPEC=(--tpm-spec-family 2.0 --tpm-spec-level 0 --tpm-spec-revision 164
    --tpm-manufacturer id:00001014 --tpm-model swtpm --tpm-version id:20191023)

check_tools() {
    local missing=() tool pkg
    for tool in swtpm:swtpm swtpm_setup:swtpm-tools swtpm_localca:swtpm-tools \
        swtpm_ioctl:swtpm-tools tpm2_createek:tpm2-tools tpm2_readpublic:tpm2-tools \
        tpm2_flushcontext:tpm2-tools tpm2_nvdefine:tpm2-tools tpm2_nvwrite:tpm2-tools \
        tpm2_getcap:tpm2-tools; do
        pkg=${tool#*:}
        tool=${tool%%:*}
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool (package $pkg)")
    done
    if ((${#missing[@]})); then
        die "missing tools: ${missing[*]}; install them (Debian/Ubuntu: apt-get install swtpm swtpm-tools tpm2-tools)"
    fi
}

# Absolute path of DIR, created (mode 0700) if missing.
prepare_dir() {
    local dir=$1
    [[ -n $dir ]] || die "DIR must not be empty"
    [[ $dir != *"'"* && $dir != *$'\n'* ]] || die "DIR must not contain a quote or a newline: $dir"
    if [[ -e $dir && ! -d $dir ]]; then
        die "$dir exists and is not a directory"
    fi
    (umask 077 && mkdir -p -- "$dir/state" "$dir/ca" "$dir/certs") || die "cannot create folders in $dir"
    (cd -- "$dir" && pwd -P)
}

# Writes the private swtpm_setup and swtpm-localca configuration. The contents depend
# only on DIR, so a copied directory gets configuration pointing at itself.
write_config() {
    local dir=$1
    cat >"$dir/swtpm_setup.conf" <<EOF
# Written by $prog: private to this directory, never /etc/swtpm_setup.conf.
create_certs_tool = swtpm_localca
create_certs_tool_config = $dir/swtpm-localca.conf
create_certs_tool_options = $dir/swtpm-localca.options
active_pcr_banks = sha256
EOF
    cat >"$dir/swtpm-localca.conf" <<EOF
statedir = $dir/ca
signingkey = $dir/ca/signkey.pem
issuercert = $dir/ca/issuercert.pem
certserial = $dir/ca/certserial
EOF
    cat >"$dir/swtpm-localca.options" <<EOF
--platform-manufacturer Tessera
--platform-version 2.1
--platform-model swtpm
EOF
}

provisioned() {
    [[ -s $1/state/tpm2-00.permall ]]
}

provision() {
    local dir=$1
    note "provisioning a new TPM in $dir/state"
    # swtpm_setup waits for ever on a simulator that could not start (another
    # swtpm_setup holding the state's lock, say): bound it.
    if ! timeout 300 swtpm_setup --tpm2 --tpmstate "$dir/state" --create-ek-cert --create-platform-cert \
        --config "$dir/swtpm_setup.conf" --write-ek-cert-files "$dir/certs" \
        --overwrite --logfile "$dir/swtpm_setup.log" >/dev/null 2>&1; then
        cat "$dir/swtpm_setup.log" >&2 2>/dev/null || true
        rm -f -- "$dir/state/tpm2-00.permall"
        die "swtpm_setup failed or did not finish in 300 s (log above, also in $dir/swtpm_setup.log)"
    fi
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Starts swtpm on the first free even/odd port pair, trying SWTPM_PORT (or the port
# of the previous run) first. Two starts racing for one pair are settled by swtpm's
# own bind failing, which sends the loser on to another pair.
launch() {
    local dir=$1 preferred=$2 port attempt
    rm -f -- "$dir/swtpm.pid"
    : >"$dir/swtpm.log"
    for attempt in $(seq 1 40); do
        if [[ $attempt -eq 1 && -n $preferred ]]; then
            port=$preferred
        else
            port=$((20000 + 2 * (RANDOM % 20000)))
        fi
        if port_in_use "$port" || port_in_use $((port + 1)); then
            continue
        fi
        if swtpm socket --tpm2 \
            --server "type=tcp,port=$port,bindaddr=127.0.0.1" \
            --ctrl "type=tcp,port=$((port + 1)),bindaddr=127.0.0.1" \
            --flags not-need-init,startup-clear \
            --tpmstate "dir=$dir/state" \
            --pid "file=$dir/swtpm.pid" \
            --log "file=$dir/swtpm.log" \
            --daemon 2>>"$dir/swtpm.log"; then
            PORT=$port
            return 0
        fi
        grep -q 'Address already in use' "$dir/swtpm.log" 2>/dev/null ||
            die "swtpm did not start (see $dir/swtpm.log)"
        : >"$dir/swtpm.log"
    done
    die "no free loopback port pair found for swtpm after 40 tries"
}

wait_ready() {
    local tcti=$1 i
    for i in $(seq 1 100); do
        if TPM2TOOLS_TCTI=$tcti tpm2_getcap properties-fixed >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.05
    done
    die "swtpm does not answer on $tcti"
}

# swtpm_setup writes no P-256 EK certificate: make the EK from the standard low-range
# template (L-2), have the same local CA certify its point, and store the certificate
# at the standard NV index with the attributes swtpm_setup gives its own.
add_p256_ek_cert() {
    local dir=$1 work x y size indexes
    # Every tpm2 tool below talks to this simulator.
    local -x TPM2TOOLS_TCTI=$2
    # (tpm2_nvreadpublic of a missing index crashes in tpm2-tools 5.4: list instead.)
    indexes=$(tpm2_getcap handles-nv-index) || die "cannot list NV indexes"
    if grep -qix -- "- ${P256_EK_CERT_INDEX/0x0/0x}" <<<"$indexes"; then
        return 0
    fi
    work=$(mktemp -d "$dir/.p256.XXXXXX")
    tpm2_createek -G ecc -c "$work/ek.ctx" -u "$work/ek.pub" >/dev/null ||
        die "creating the P-256 EK failed"
    tpm2_readpublic -c "$work/ek.ctx" >"$work/ek.yaml" || die "reading the P-256 EK failed"
    # No resource manager sits in front of swtpm: flush the EK ourselves.
    tpm2_flushcontext -t >/dev/null || die "flushing the P-256 EK failed"
    x=$(sed -n 's/^x: //p' "$work/ek.yaml")
    y=$(sed -n 's/^y: //p' "$work/ek.yaml")
    [[ ${#x} -eq 64 && ${#y} -eq 64 ]] || die "cannot read the P-256 EK point from tpm2_readpublic"
    swtpm_localca --type ek --ek "x=$x,y=$y,id=secp256r1" --dir "$work" "${TPM_SPEC[@]}" --tpm2 \
        --configfile "$dir/swtpm-localca.conf" --optsfile "$dir/swtpm-localca.options" \
        >/dev/null 2>"$work/localca.log" ||
        die "swtpm_localca could not certify the P-256 EK: $(cat "$work/localca.log")"
    size=$(stat -c %s "$work/ek.cert")
    tpm2_nvdefine "$P256_EK_CERT_INDEX" -C p -s "$size" \
        -a "ppwrite|writedefine|ppread|ownerread|authread|no_da|platformcreate" >/dev/null ||
        die "defining NV index $P256_EK_CERT_INDEX failed"
    tpm2_nvwrite "$P256_EK_CERT_INDEX" -C p -i "$work/ek.cert" ||
        die "writing the P-256 EK certificate to $P256_EK_CERT_INDEX failed"
    cp -- "$work/ek.cert" "$dir/certs/ek-secp256r1.crt"
    rm -rf -- "$work"
}

write_env() {
    local dir=$1 port=$2 pid tmp
    pid=$(cat "$dir/swtpm.pid" 2>/dev/null || true)
    tmp=$(mktemp "$dir/.env.XXXXXX")
    cat >"$tmp" <<EOF
export TPM_TCTI='swtpm:host=127.0.0.1,port=$port'
export TPM2TOOLS_TCTI='swtpm:host=127.0.0.1,port=$port'
export TPM_SWTPM_PORT='$port'
export TPM_SWTPM_CTRL_PORT='$((port + 1))'
export TPM_SWTPM_PID='$pid'
export TPM_STATE_DIR='$dir/state'
export TPM_EK_CA_ROOT='$dir/ca/swtpm-localca-rootca-cert.pem'
export TPM_EK_CA_INTERMEDIATE='$dir/ca/issuercert.pem'
export TPM_EK_CERT_DIR='$dir/certs'
EOF
    mv -f -- "$tmp" "$dir/env"
}

# The pid of the simulator running on DIR's state, if any.
running_pid() {
    local dir=$1 pid
    pid=$(cat "$dir/swtpm.pid" 2>/dev/null || true)
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    alive "$pid" || return 1
    printf '%s\n' "$pid"
}

# Whether PID is a live swtpm: the pid may have been reused since, and a daemon that
# exited stays a zombie until its adopter reaps it, which kill -0 cannot tell.
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    [[ $stat == *"(swtpm) "[!Z]* ]]
}

env_value() {
    sed -n "s/^export $2='\(.*\)'\$/\1/p" "$1/env" 2>/dev/null || true
}

cmd_start() {
    [[ $# -eq 1 ]] || usage
    check_tools
    local dir pid tcti previous
    dir=$(prepare_dir "$1")
    if pid=$(running_pid "$dir"); then
        note "swtpm already running for $dir (pid $pid)"
        cat "$dir/env"
        return 0
    fi
    write_config "$dir"
    provisioned "$dir" || provision "$dir"
    previous=${SWTPM_PORT:-$(env_value "$dir" TPM_SWTPM_PORT)}
    PORT=
    launch "$dir" "$previous"
    tcti="swtpm:host=127.0.0.1,port=$PORT"
    wait_ready "$tcti"
    add_p256_ek_cert "$dir" "$tcti"
    write_env "$dir" "$PORT"
    cat "$dir/env"
}

cmd_stop() {
    [[ $# -eq 1 ]] || usage
    local dir=$1 pid ctrl i
    [[ -d $dir ]] || die "$dir does not exist"
    if ! pid=$(running_pid "$dir"); then
        note "no swtpm running for $dir"
        rm -f -- "$dir/swtpm.pid"
        return 0
    fi
    ctrl=$(env_value "$dir" TPM_SWTPM_CTRL_PORT)
    # A clean shutdown through the control channel first; signals only if it hangs.
    if [[ -n $ctrl ]]; then
        swtpm_ioctl --tcp "127.0.0.1:$ctrl" -s >/dev/null 2>&1 || true
    fi
    for i in $(seq 1 100); do
        alive "$pid" || break
        if [[ $i -eq 60 ]]; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
        sleep 0.02
    done
    if alive "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true
        note "swtpm (pid $pid) had to be killed"
    fi
    rm -f -- "$dir/swtpm.pid"
}

cmd_restart() {
    [[ $# -eq 1 ]] || usage
    cmd_stop "$1"
    cmd_start "$1"
}

cmd_vm() {
    [[ $# -eq 1 ]] || usage
    check_tools
    local dir pid sock i
    dir=$(prepare_dir "$1")
    provisioned "$dir" || die "no TPM is provisioned in $dir/state; run: $prog start $dir (and stop) first"
    if pid=$(running_pid "$dir"); then
        die "swtpm is already running for $dir (pid $pid); run: $prog stop $dir"
    fi
    sock=$dir/vm.sock
    rm -f -- "$sock" "$dir/swtpm.pid"
    : >"$dir/swtpm.log"
    swtpm socket --tpm2 --ctrl "type=unixio,path=$sock" --terminate \
        --tpmstate "dir=$dir/state" \
        --pid "file=$dir/swtpm.pid" \
        --log "file=$dir/swtpm.log" \
        --daemon 2>>"$dir/swtpm.log" || die "swtpm did not start (see $dir/swtpm.log)"
    for i in $(seq 1 100); do
        [[ -S $sock ]] && break
        sleep 0.02
    done
    [[ -S $sock ]] || die "swtpm made no control socket at $sock (see $dir/swtpm.log)"
    printf '%s\n' "$sock"
}

cmd_env() {
    [[ $# -eq 1 ]] || usage
    [[ -f $1/env ]] || die "$1/env does not exist; run: $prog start $1"
    cat "$1/env"
}

[[ $# -ge 1 ]] || usage
command=$1
shift
case $command in
start) cmd_start "$@" ;;
stop) cmd_stop "$@" ;;
restart) cmd_restart "$@" ;;
env) cmd_env "$@" ;;
vm) cmd_vm "$@" ;;
-h | --help | help) usage ;;
*) usage ;;
esac

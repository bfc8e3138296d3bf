#!/usr/bin/env bash
# Boots Debian with systemd under QEMU, with Tessera installed as the units in
# images/rootfs ship it, and checks inside the guest what only a real systemd can
# tell: that both units are `Type=notify` services that become active when the
# binaries say READY=1 (with a STATUS= line); that the server unit runs as the
# `tessera` user sysusers.d makes, under the unit's sandbox; that the agent unit
# runs as `tessera-agent` (a member of tss, the group the overlay's udev rule gives
# /dev/tpmrm0) with CAP_SYS_PTRACE alone, under a sandbox `systemd-analyze
# security` rates at 2.5 or lower, attests with its TPM's DevID to a server on the
# host and serves SVIDs; and that the watchdog restarts an agent that stops
# answering (SIGSTOP). It also checks the workload attestors that need a real
# systemd and a real container engine: two services of the same user get two
# different SVIDs by their `systemd:` selectors (one also by `unix:path`, which
# the agent reads through /proc of another user's process), and a Podman
# container with a label gets the SVID of that label (through Podman's
# Docker-compatible socket) while one without it gets none. The workload is
# go-spiffe (scripts/go-spiffe-env.sh builds it static), in the services and as
# the whole of the container's image.
#
# The factory and the host's server are images/lib.sh's, as in boot-test.sh: a
# swtpm TPM with EK certificates and a DevID from a throw-away vendor CA, given to
# QEMU as a TIS TPM device; the server listens on the host's loopback, which the
# guest reaches as 10.0.2.2 through QEMU's user network. The kernel fragment
# images/kernel/tpm.cfg is checked against the guest kernel's configuration.
#
# The root filesystem comes from debootstrap (Debian bookworm, minbase, with
# systemd, Debian's kernel and the libraries the agent loads), made once and
# cached; the mirror is the first one this machine's apt sources name. Each run
# copies it, adds the binaries, the overlay and images/systemd-guest/root (the
# test's units and settings), makes an ext4 image of it with mkfs.ext4 -d (no
# loop mount) and boots Debian's kernel and initrd on it. A unit in the guest runs
# images/systemd-guest/boot-check.sh after boot, which prints `boot-check: ...`
# lines on the serial console and powers the guest off.
#
#   images/systemd-guest.sh run WORK
#       Everything under WORK (made fresh); prints the guest's console and, last,
#       `systemd guest: OK ...`. Fails with the reason otherwise.
#   images/systemd-guest.sh rootfs
#       Makes the cached root filesystem unless it is there.
#
# TESSERA_BIN_DIR      where the host's tessera-agent (which provisions the DevID)
#                      and tessera-server are (default: <repo>/target/debug)
# TESSERA_GUEST_BIN_DIR  where the guest's static tessera-agent and tessera-server
#                      are (default: <repo>/target/static/x86_64-unknown-linux-musl,
#                      scripts/static.sh); nothing else is installed with them
# TESSERA_IMAGE_CACHE  where the root filesystem is kept (default:
#                      <repo>/target/images); another package list makes it again
# BOOT_TIMEOUT         seconds the guest may take from power-on to power-off
#                      (default 300; QEMU emulates the CPU: 100 s or so here)

set -euo pipefail

# prog, die, note, lock_for
. "$(dirname -- "${BASH_SOURCE[0]}")/../scripts/common.sh"

root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
bin=${TESSERA_BIN_DIR:-$root/target/debug}
cache=${TESSERA_IMAGE_CACHE:-$root/target/images}
boot_timeout=${BOOT_TIMEOUT:-300}
guest_bin=${TESSERA_GUEST_BIN_DIR:-$root/target/static/x86_64-unknown-linux-musl}
# fresh_work, free_port, factory, host_server, srv, check_devid_agent
. "$root/images/lib.sh"

# What the guest needs besides minbase: systemd as init, the kernel (with the
# initrd that mounts a virtio disk), and Podman (with crun) for the container
# checks. No library for Tessera: both binaries are static.
PACKAGES=systemd,systemd-sysv,udev,dbus,linux-image-amd64,podman,crun,conmon,containernetworking-plugins
SUITE=bookworm
rootfs_dir=$cache/systemd-rootfs

usage() {
    sed -n '/^#   images/,/^# BOOT_TIMEOUT/p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# The first Debian mirror this machine's apt sources name.
mirror() {
    local m
    m=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
        sed -n 's/^URIs: *\([^ ]*\).*/\1/p' | grep -v -- '-security' | head -n 1)
    if [[ -z $m ]]; then
        m=$(sed -n 's/^deb \(\[[^]]*\] \)\{0,1\}\([^ ]*\) .*/\2/p' /etc/apt/sources.list 2>/dev/null |
            grep -v -- '-security' | head -n 1)
    fi
    [[ -n $m ]] || die "no Debian mirror in /etc/apt/sources.list{,.d}: debootstrap needs one"
    printf '%s\n' "$m"
}

# The cached root filesystem. (A subshell: the lock must not pass to QEMU.)
make_rootfs() (
    mkdir -p -- "$cache" || die "cannot create $cache"
    lock_for "$cache/systemd-rootfs"
    local stamp="$SUITE minbase $PACKAGES"
    if [[ -f $rootfs_dir.stamp && $(<"$rootfs_dir.stamp") == "$stamp" ]]; then
        return 0
    fi
    [[ $(id -u) -eq 0 ]] || die "debootstrap needs root"
    command -v debootstrap >/dev/null 2>&1 ||
        die "debootstrap is not installed (scripts/setup.sh installs it)"
    local m
    m=$(mirror)
    note "debootstrap $SUITE from $m into $rootfs_dir (a minute or two, once)"
    rm -rf -- "$rootfs_dir" "$rootfs_dir.new" "$rootfs_dir.stamp"
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs_dir.new" "$m" >&2 ||
        die "debootstrap failed (see above)"
    # Modules the guest never loads (sound, graphics, wireless, ...) only make
    # the image bigger; the initrd keeps what mounting the root needs.
    rm -rf -- "$rootfs_dir.new"/usr/lib/modules/*/kernel/{sound,drivers/gpu,drivers/media,drivers/net/wireless,drivers/infiniband,net/wireless}
    mv -- "$rootfs_dir.new" "$rootfs_dir"
    printf '%s\n' "$stamp" >"$rootfs_dir.stamp"
)

# Writes what the guest runs besides the shipped overlay under the guest root $1
# (images/systemd-guest/root, the binaries, the factory's output); the agent
# attests to the host's server on port $2.
install_test_files() {
    local r=$1 port=$2
    install -m 0755 "$guest_bin/tessera-server" "$r/usr/bin/tessera-server"
    install -m 0755 "$guest_bin/tessera-agent" "$r/usr/bin/tessera-agent"
    install -m 0755 "$client" "$r/usr/local/bin/go-spiffe-workload"
    cp -a -- "$root/images/rootfs/." "$r/"
    # Should Debian's rule for the TPM devices (tpm-udev) come in with a package,
    # it goes, so that the overlay's rule is what gives /dev/tpmrm0 to tss, as on an
    # image with a static agent and no TPM library.
    rm -f -- "$r/usr/lib/udev/rules.d/60-tpm-udev.rules" "$r/lib/udev/rules.d/60-tpm-udev.rules"
    # The factory's output: the server's bundle and the DevID, whose folder the
    # shipped tmpfiles.d gives to the agent's group at boot.
    install -m 0644 "$work/bundle.pem" "$r/etc/tessera/bootstrap-bundle.pem"
    cp -r -- "$work/devid" "$r/etc/tessera/devid"
    # The test's units and settings: two services of one user, the in-guest
    # server's configuration, Podman's socket for a `docker` group, the network.
    cp -a -- "$root/images/systemd-guest/root/." "$r/"
    install -m 0755 "$root/images/systemd-guest/boot-check.sh" "$r/usr/local/bin/boot-check"
    # The workload attestors the checks use, besides unix (with the binary's path).
    printf '%s\n' '' '[workload_attestors.unix]' 'discover_workload_path = true' \
        '' '[workload_attestors.systemd]' '' '[workload_attestors.docker]' \
        'docker_socket_path = "unix:///run/docker.sock"' >>"$r/etc/tessera/agent.toml"
    # The server unit loads the HSM PIN as a credential; this server's keys are on
    # disk, so the PIN is never read, but the credential file must be there.
    install -m 0600 /dev/null "$r/etc/tessera/hsm.pin"
    # This product's agent settings, as a vendor's drop-in would give them: the
    # host's server, the TPM key manager, tpm_devid on the device; and for the test
    # the docker group and a short watchdog.
    mkdir -p -- "$r/etc/systemd/system/tessera-agent.service.d"
    printf '%s\n' '[Service]' \
        "Environment=TESSERA_AGENT_SERVER_ADDRESS=10.0.2.2:$port" \
        'Environment=TESSERA_AGENT_KEY_MANAGER__TYPE=tpm' \
        'Environment=TESSERA_AGENT_NODE_ATTESTOR__TPM_DEVID__TCTI=device:/dev/tpmrm0' \
        'Environment=TESSERA_AGENT_NODE_ATTESTOR__TPM_DEVID__DEVID_DIR=/etc/tessera/devid' \
        'SupplementaryGroups=docker' 'WatchdogSec=6s' \
        >"$r/etc/systemd/system/tessera-agent.service.d/boot-check.conf"
    local wants=$r/etc/systemd/system/multi-user.target.wants
    # The agent is started by the check, once it has looked at the device.
    rm -f -- "$wants/tessera-agent.service"
    ln -sf /usr/lib/systemd/system/tessera-server.service "$wants/tessera-server.service"
    ln -sf /usr/lib/systemd/system/systemd-networkd.service "$wants/systemd-networkd.service"
    ln -sf /etc/systemd/system/boot-check.service "$wants/boot-check.service"
    # No login prompt on the serial console: a getty there would hang up the
    # check's output.
    rm -f -- "$r"/etc/systemd/system/getty.target.wants/*
    ln -sf /dev/null "$r/etc/systemd/system/serial-getty@ttyS0.service"
    ln -sf /dev/null "$r/etc/systemd/system/getty@tty1.service"
}

# Fails unless every option images/kernel/tpm.cfg sets is enabled (y or m) in
# the kernel configuration file $1; says how many.
check_kernel_config() {
    local config=$1 fragment=$root/images/kernel/tpm.cfg opt n=0
    for opt in $(sed -n 's/^\(CONFIG_[A-Z0-9_]*\)=[ym]$/\1/p' "$fragment"); do
        grep -Eq "^$opt=[ym]$" "$config" ||
            die "$opt (images/kernel/tpm.cfg) is not enabled in the guest's kernel ($(basename -- "$config"))"
        n=$((n + 1))
    done
    ((n > 0)) || die "images/kernel/tpm.cfg sets no option"
    echo "kernel config: the $n options of images/kernel/tpm.cfg are enabled in $(basename -- "$config")"
}

run() {
    # Global, for the exit trap and install_test_files.
    work=$1
    [[ -x $bin/tessera-server && -x $bin/tessera-agent ]] ||
        die "tessera-server and tessera-agent are not in $bin (cargo build --bins, or set TESSERA_BIN_DIR)"
    [[ -x $guest_bin/tessera-server && -x $guest_bin/tessera-agent ]] ||
        die "the static tessera-server and tessera-agent are not in $guest_bin (scripts/static.sh, or set TESSERA_GUEST_BIN_DIR)"
    # Static, for x86_64: nothing else goes into the guest with them.
    bash "$root/scripts/static.sh" check "$guest_bin/tessera-server" "$guest_bin/tessera-agent" >/dev/null
    local tool
    for tool in qemu-system-x86_64 mkfs.ext4 openssl python3; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool not found; run scripts/setup.sh --tests"
    done
    make_rootfs
    client=$(bash "$root/scripts/go-spiffe-env.sh") || die "cannot build the go-spiffe workload"
    # WORK is made fresh (a folder of an earlier run is emptied, any other
    # non-empty one refused); the exit trap stops what the run started.
    fresh_work "$work" .systemd-guest

    # The factory, and the server on the host with the workloads' entries: the
    # node entry for the vendor's DevIDs, root (the check's own fetch), two
    # services of `nobody` told apart by systemd (wl-b also by its binary's path),
    # and a Podman container by its label.
    factory "$work" systemd-guest-appliance "Systemd Guest Vendor CA"
    host_server "$work"
    local nobody node=spiffe://example.org/node
    nobody=$(awk -F: '$1 == "nobody" { print $3 }' "$rootfs_dir/etc/passwd")
    [[ -n $nobody ]] || die "the root filesystem has no nobody user"
    srv entry create --node --spiffe-id "$node" \
        --selector "tpm_devid:issuer:cn:Systemd Guest Vendor CA" >/dev/null
    srv entry create --parent-id "$node" --spiffe-id spiffe://example.org/boot-check \
        --selector unix:uid:0 >/dev/null
    srv entry create --parent-id "$node" --spiffe-id spiffe://example.org/svc-a \
        --selector "unix:uid:$nobody" --selector systemd:id:wl-a.service >/dev/null
    srv entry create --parent-id "$node" --spiffe-id spiffe://example.org/svc-b \
        --selector "unix:uid:$nobody" --selector unix:path:/usr/local/bin/go-spiffe-workload \
        --selector systemd:fragment_path:/etc/systemd/system/wl-b.service >/dev/null
    srv entry create --parent-id "$node" --spiffe-id spiffe://example.org/payments \
        --selector unix:uid:1234 --selector docker:label:app:payments \
        --selector docker:image_id:localhost/spiffe-client:latest >/dev/null

    local r=$work/root
    cp -a -- "$rootfs_dir" "$r" || die "cannot copy the root filesystem"
    install_test_files "$r" "$host_port"
    local kernel initrd
    kernel=$(ls "$r"/boot/vmlinuz-* | head -n 1)
    initrd=$(ls "$r"/boot/initrd.img-* | head -n 1)
    check_kernel_config "$(ls "$r"/boot/config-* | head -n 1)"
    cp -- "$kernel" "$work/vmlinuz"
    cp -- "$initrd" "$work/initrd.img"
    mkfs.ext4 -q -F -d "$r" -L root "$work/root.img" 2G || die "mkfs.ext4 -d failed"
    rm -rf -- "$r"
    # The TPM: the provisioned swtpm, attached as a TIS device.
    local sock
    sock=$(bash "$root/scripts/swtpm.sh" vm "$work/swtpm")
    # TCG, not KVM: KVM is often missing on CI machines, or nested and slower.
    note "booting the guest"
    local started=$SECONDS
    timeout "$boot_timeout" qemu-system-x86_64 -m 1024 -smp 2 \
        -nographic -no-reboot \
        -kernel "$work/vmlinuz" -initrd "$work/initrd.img" \
        -append "root=/dev/vda rw console=ttyS0 panic=-1 quiet systemd.show_status=0" \
        -drive "file=$work/root.img,if=virtio,format=raw" \
        -netdev user,id=net0 -device virtio-net-pci,netdev=net0,romfile= \
        -chardev "socket,id=chrtpm,path=$sock" \
        -tpmdev emulator,id=tpm0,chardev=chrtpm -device tpm-tis,tpmdev=tpm0 \
        </dev/null >"$work/console.log" 2>&1 ||
        note "qemu ended with status $? (124: the guest did not power off within ${boot_timeout}s)"
    rm -f -- "$work/root.img"
    # The console without carriage returns and terminal control sequences.
    tr -d '\r' <"$work/console.log" | sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g; s/\x1bc//g' >"$work/console.txt"
    cat -- "$work/console.txt"
    if ! grep -a -q '^boot-check: OK' "$work/console.txt"; then
        die "the guest's checks did not pass (boot-check lines above; the host server's log is $work/server.log)"
    fi
    local agent_id
    agent_id=$(check_devid_agent "$work")
    echo "systemd guest: OK in $((SECONDS - started)) s: $agent_id attested with tpm_devid"
}

case ${1-} in
    run) [[ $# -eq 2 ]] || usage; run "$2" ;;
    rootfs) [[ $# -eq 1 ]] || usage; make_rootfs ;;
    *) usage ;;
esac

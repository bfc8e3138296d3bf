#!/usr/bin/env bash
# Boots Debian with systemd under QEMU, with Tessera installed as the units in
# images/rootfs ship it, and checks inside the guest what only a real systemd can
# tell: that both units are `Type=notify` services that become active when the
# binaries say READY=1 (with a STATUS= line), that the server unit runs as the
# `tessera` user sysusers.d makes, in the directories tmpfiles.d and the unit
# make, under the unit's sandbox (ProtectSystem=strict and the rest), that the
# agent joins with a token given as a systemd credential and serves an SVID on its
# socket, and that the watchdog restarts an agent that stops answering (SIGSTOP).
# It also checks the workload attestors that need a real systemd and a real
# container engine: two services of the same user get two different SVIDs by
# their `systemd:` selectors, and a Podman container with a label gets the SVID of
# that label (through Podman's Docker-compatible socket) while one without it gets
# none. The workload is go-spiffe (scripts/go-spiffe-env.sh builds it static), in
# the services and as the whole of the container's image.
#
# The root filesystem comes from debootstrap (Debian bookworm, minbase, with
# systemd, Debian's kernel and the libraries the agent loads), made once and
# cached; the mirror is the first one this machine's apt sources name. Each run
# copies it, adds the binaries and the overlay, makes an ext4 image of it with
# mkfs.ext4 -d (no loop mount) and boots Debian's kernel and initrd on it, without
# a network. A unit in the guest runs the checks after boot, prints
# `boot-check: ...` lines on the serial console and powers the guest off.
#
#   images/systemd-guest.sh run WORK
#       Everything under WORK (made fresh); prints the guest's console and, last,
#       `systemd guest: OK ...`. Fails with the reason otherwise.
#   images/systemd-guest.sh rootfs
#       Makes the cached root filesystem unless it is there.
#
# TESSERA_BIN_DIR      where tessera-agent and tessera-server are (default:
#                      <repo>/target/debug)
# TESSERA_IMAGE_CACHE  where the root filesystem is kept (default:
#                      <repo>/target/images)
# BOOT_TIMEOUT         seconds the guest may take from power-on to power-off
#                      (default 300; QEMU emulates the CPU, about 40 s here)

set -euo pipefail

# prog, die, note, lock_for
. "$(dirname -- "${BASH_SOURCE[0]}")/../scripts/common.sh"

root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
bin=${TESSERA_BIN_DIR:-$root/target/debug}
cache=${TESSERA_IMAGE_CACHE:-$root/target/images}
boot_timeout=${BOOT_TIMEOUT:-300}

# What the guest needs besides minbase: systemd as init, the kernel (with the
# initrd that mounts a virtio disk), the shared libraries tessera-agent loads, and
# Podman (with crun) for the container checks.
PACKAGES=systemd,systemd-sysv,udev,dbus,linux-image-amd64,libtss2-esys-3.0.2-0,libtss2-tctildr0,libssl3,podman,crun,conmon,containernetworking-plugins
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

# Writes what the guest runs besides the shipped overlay, under the guest root $1.
install_test_files() {
    local r=$1
    install -m 0755 "$bin/tessera-server" "$bin/tessera-agent" "$r/usr/bin/"
    install -m 0755 "$client" "$r/usr/local/bin/go-spiffe-workload"
    cp -a -- "$root/images/rootfs/." "$r/"
    # The workload attestors the checks use, besides unix.
    cat >>"$r/etc/tessera/agent.toml" <<'EOF'

[workload_attestors.systemd]

[workload_attestors.docker]
docker_socket_path = "unix:///run/podman/podman.sock"
EOF
    # Two services of one user, each fetching its SVID once with go-spiffe.
    local svc
    for svc in wl-a wl-b; do
        cat >"$r/etc/systemd/system/$svc.service" <<EOF
[Service]
Type=oneshot
User=nobody
Environment=SPIFFE_ENDPOINT_SOCKET=unix:///run/tessera/agent/public/api.sock
PrivateTmp=yes
ExecStart=/usr/local/bin/go-spiffe-workload x509 /tmp/svid
StandardOutput=truncate:/run/$svc.out
StandardError=inherit
EOF
    done
    cat >"$r/etc/tessera/server.toml" <<'EOF'
trust_domain = "example.org"
bind_address = "127.0.0.1:8081"
data_dir = "/var/lib/tessera/server"
admin_socket = "/run/tessera/server/admin.sock"
EOF
    # The unit loads the HSM PIN as a credential; this server's keys are on disk,
    # so the PIN is never read, but the credential file must be there.
    install -m 0600 /dev/null "$r/etc/tessera/hsm.pin"
    # The agent: the server on this machine, a join token as a credential, and a
    # short watchdog so that the test does not wait long for it.
    mkdir -p "$r/etc/systemd/system/tessera-agent.service.d"
    cat >"$r/etc/systemd/system/tessera-agent.service.d/boot-check.conf" <<'EOF'
[Service]
Environment=TESSERA_AGENT_SERVER_ADDRESS=127.0.0.1:8081
LoadCredential=join-token:/etc/tessera/join-token
Environment=TESSERA_AGENT_NODE_ATTESTOR__JOIN_TOKEN__TOKEN_CREDENTIAL=join-token
WatchdogSec=6s
EOF
    # Started by the check, once it has a token for it.
    rm -f "$r/etc/systemd/system/multi-user.target.wants/tessera-agent.service"
    ln -sf /usr/lib/systemd/system/tessera-server.service \
        "$r/etc/systemd/system/multi-user.target.wants/tessera-server.service"
    cat >"$r/usr/local/bin/boot-check" <<'EOF'
#!/bin/sh
# The checks, run by boot-check.service after boot; results on the console.
# A newline first: the console may be in the middle of a line the firmware or the
# kernel wrote.
say() { printf '\nboot-check: %s\n' "$*"; }
finish() {
    journalctl -b --no-pager -u tessera-server -u tessera-agent | tail -n 40
    systemctl poweroff
    exit 0
}
fail() { say "FAIL $*"; finish; }
show() { systemctl show -p "$2" --value "$1"; }
S="tessera-server --socket-path /run/tessera/server/admin.sock"

[ "$(systemctl is-active tessera-server)" = active ] ||
    fail "tessera-server is $(systemctl is-active tessera-server)"
[ "$(show tessera-server Type)" = notify ] || fail "tessera-server is not Type=notify"
status=$(show tessera-server StatusText)
[ -n "$status" ] || fail "tessera-server sent no STATUS="
say "server active: $status"
pid=$(show tessera-server MainPID)
user=$(ps -o user= -p "$pid" 2>/dev/null || stat -c %U "/proc/$pid")
[ "$user" = tessera ] || fail "tessera-server runs as $user, not tessera"
say "server user: $user"
$S healthcheck >/dev/null || fail "server healthcheck: $($S healthcheck 2>&1)"

$S bundle show >/etc/tessera/bootstrap-bundle.pem || fail "bundle show"
$S entry create --spiffe-id spiffe://example.org/boot-check \
    --parent-id spiffe://example.org/node --selector unix:uid:0 >/dev/null ||
    fail "entry create"
token=$($S token generate --spiffe-id spiffe://example.org/node | sed -n 's/^Token: //p')
[ -n "$token" ] || fail "no join token"
printf '%s\n' "$token" >/etc/tessera/join-token
chmod 0600 /etc/tessera/join-token
systemctl start tessera-agent || fail "tessera-agent did not start"
[ "$(show tessera-agent Type)" = notify ] || fail "tessera-agent is not Type=notify"
say "agent active: $(show tessera-agent StatusText)"
svid=""
for i in $(seq 1 30); do
    svid=$(tessera-agent api fetch x509 --socket-path /run/tessera/agent/public/api.sock 2>&1) &&
        break
    sleep 1
done
echo "$svid" | grep -q "spiffe://example.org/boot-check" || fail "no SVID: $svid"
say "svid: spiffe://example.org/boot-check"

# Two services of one user (nobody): systemd tells them apart.
nobody=$(id -u nobody)
$S entry create --spiffe-id spiffe://example.org/svc-a --parent-id spiffe://example.org/node \
    --selector "unix:uid:$nobody" --selector systemd:id:wl-a.service >/dev/null ||
    fail "entry create svc-a"
$S entry create --spiffe-id spiffe://example.org/svc-b --parent-id spiffe://example.org/node \
    --selector "unix:uid:$nobody" \
    --selector systemd:fragment_path:/etc/systemd/system/wl-b.service >/dev/null ||
    fail "entry create svc-b"
for svc in wl-a wl-b; do
    want=spiffe://example.org/svc-${svc#wl-}
    got=""
    for i in $(seq 1 30); do
        systemctl start "$svc" 2>/dev/null && got=$(sed -n 's/^spiffe_id=//p' "/run/$svc.out") &&
            [ -n "$got" ] && break
        sleep 1
    done
    [ "$got" = "$want" ] ||
        fail "$svc got '$got', not $want: $(cat "/run/$svc.out"; journalctl -b --no-pager -u "$svc" | tail -n 5)"
    say "systemd unit $svc.service: $got"
done

# Podman containers: the label decides. The image is go-spiffe and nothing else.
systemctl start podman.socket || fail "podman.socket did not start"
tar -C /usr/local/bin -cf - go-spiffe-workload | podman import -q - localhost/spiffe-client >/dev/null ||
    fail "podman import"
$S entry create --spiffe-id spiffe://example.org/payments --parent-id spiffe://example.org/node \
    --selector unix:uid:1234 --selector docker:label:app:payments \
    --selector docker:image_id:localhost/spiffe-client:latest >/dev/null ||
    fail "entry create payments"
run_client() {
    podman run --rm --network none --user 1234 --tmpfs /tmp \
        -v /run/tessera/agent/public:/run/spiffe \
        -e SPIFFE_ENDPOINT_SOCKET=unix:///run/spiffe/api.sock "$@"
}
got=""
for i in $(seq 1 20); do
    out=$(run_client --label app=payments localhost/spiffe-client \
        /go-spiffe-workload x509 /tmp/svid 2>&1)
    got=$(echo "$out" | sed -n 's/^spiffe_id=//p')
    [ -n "$got" ] && break
    sleep 1
done
[ "$got" = spiffe://example.org/payments ] ||
    fail "the labelled container got '$got': $out $(journalctl -b --no-pager -u tessera-agent | tail -n 5)"
say "labelled container: $got"
out=$(run_client --label app=other localhost/spiffe-client \
    /go-spiffe-workload expect-denied 2>&1) ||
    fail "a container without the label was not denied: $out"
say "unlabelled container: denied"

# A hung agent: the watchdog (WatchdogSec=6s) must restart it.
before=$(show tessera-agent NRestarts)
kill -STOP "$(show tessera-agent MainPID)"
restarted=no
for i in $(seq 1 40); do
    sleep 1
    if [ "$(show tessera-agent NRestarts)" -gt "$before" ] &&
        [ "$(systemctl is-active tessera-agent)" = active ]; then
        restarted=yes
        break
    fi
done
[ $restarted = yes ] || fail "the watchdog did not restart the stopped agent"
say "watchdog restarted the agent: $(show tessera-agent Result)"
journalctl -b --no-pager -u tessera-agent | grep -q -i watchdog ||
    fail "no watchdog message in the journal"
say OK
finish
EOF
    chmod 0755 "$r/usr/local/bin/boot-check"
    cat >"$r/etc/systemd/system/boot-check.service" <<'EOF'
[Unit]
Description=Tessera systemd checks
After=multi-user.target tessera-server.service
[Service]
Type=oneshot
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
ExecStart=/usr/local/bin/boot-check
[Install]
WantedBy=multi-user.target
EOF
    ln -sf /etc/systemd/system/boot-check.service \
        "$r/etc/systemd/system/multi-user.target.wants/boot-check.service"
    # No login prompt on the serial console: a getty there would hang up the
    # check's output.
    rm -f "$r"/etc/systemd/system/getty.target.wants/*
    ln -sf /dev/null "$r/etc/systemd/system/serial-getty@ttyS0.service"
    ln -sf /dev/null "$r/etc/systemd/system/getty@tty1.service"
}

run() {
    local work=$1
    [[ -x $bin/tessera-server && -x $bin/tessera-agent ]] ||
        die "tessera-server and tessera-agent are not in $bin (cargo build --bins, or set TESSERA_BIN_DIR)"
    command -v qemu-system-x86_64 >/dev/null 2>&1 || die "qemu-system-x86_64 is not installed"
    command -v mkfs.ext4 >/dev/null 2>&1 || die "mkfs.ext4 is not installed (e2fsprogs)"
    make_rootfs
    client=$(bash "$root/scripts/go-spiffe-env.sh") || die "cannot build the go-spiffe workload"
    if [[ -e $work ]]; then
        [[ -z $(ls -A -- "$work") || -f $work/console.log ]] ||
            die "$work is not empty and not an earlier run's folder"
        rm -rf -- "$work"
    fi
    mkdir -p -- "$work"
    local r=$work/root
    cp -a -- "$rootfs_dir" "$r" || die "cannot copy the root filesystem"
    install_test_files "$r"
    local kernel initrd
    kernel=$(ls "$r"/boot/vmlinuz-* | head -n 1)
    initrd=$(ls "$r"/boot/initrd.img-* | head -n 1)
    cp -- "$kernel" "$work/vmlinuz"
    cp -- "$initrd" "$work/initrd.img"
    mkfs.ext4 -q -F -d "$r" -L root "$work/root.img" 2G || die "mkfs.ext4 -d failed"
    rm -rf -- "$r"
    # TCG, not KVM: KVM is often missing on CI machines, or nested and slower.
    note "booting the guest"
    local started=$SECONDS
    timeout "$boot_timeout" qemu-system-x86_64 -m 1024 -smp 2 \
        -nographic -no-reboot -nic none \
        -kernel "$work/vmlinuz" -initrd "$work/initrd.img" \
        -append "root=/dev/vda rw console=ttyS0 panic=-1 quiet systemd.show_status=0" \
        -drive "file=$work/root.img,if=virtio,format=raw" \
        </dev/null >"$work/console.log" 2>&1 ||
        note "qemu ended with status $? (124: the guest did not power off within ${boot_timeout}s)"
    rm -f -- "$work/root.img"
    # The console without carriage returns and terminal control sequences.
    tr -d '\r' <"$work/console.log" | sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g; s/\x1bc//g' >"$work/console.txt"
    cat -- "$work/console.txt"
    if ! grep -a -q '^boot-check: OK' "$work/console.txt"; then
        die "the guest's checks did not pass (boot-check lines above)"
    fi
    echo "systemd guest: OK in $((SECONDS - started)) s"
}

case ${1-} in
    run) [[ $# -eq 2 ]] || usage; run "$2" ;;
    rootfs) [[ $# -eq 1 ]] || usage; make_rootfs ;;
    *) usage ;;
esac

#!/usr/bin/env bash
# Boots an appliance under QEMU with a swtpm-backed TPM device and checks that its
# agent proves the node with its TPM's DevID and serves an SVID.
#
# The appliance is a minimal initramfs around Debian's kernel: busybox, the
# `tessera-agent` binary with the shared libraries it loads (libtss2 and its device
# TCTI, glibc), the rootfs overlay's /etc/tessera/agent.toml unchanged, the
# server's bundle and the DevID (certificate and TPM key blob) provisioned at the
# "factory". Its init brings up the network (QEMU user networking: the host is
# 10.0.2.2) and starts the agent with per-product settings given as `--set`
# overrides: the server address, the `tpm` key manager and `tpm_devid` on
# /dev/tpmrm0. On the host: a server trusting the vendor CA and the TPM maker's
# CA, a node entry for the vendor's DevIDs and an entry for root on those nodes.
# The guest prints the SVID it was served; the script checks it and that the
# server recorded a `tpm_devid` agent for this TPM's DevID.
#
#   images/boot-test.sh run WORK
#       Everything under WORK (made fresh: a folder of an earlier run is emptied,
#       any other non-empty one refused); prints the guest's console and, last,
#       `boot test: OK ...`. Fails with the reason otherwise.
#   images/boot-test.sh fetch
#       Downloads Debian's kernel and busybox-static packages (apt-get download,
#       nothing installed) into the cache, unless they are there.
#
# TESSERA_BIN_DIR      where tessera-agent and tessera-server are (default:
#                      <repo>/target/debug)
# TESSERA_IMAGE_CACHE  where the kernel and busybox are kept (default:
#                      <repo>/target/images)
# BOOT_TIMEOUT         seconds the guest may take from power-on to power-off
#                      (default 300; it runs without KVM)

set -euo pipefail

# prog, die, note, lock_for
. "$(dirname -- "${BASH_SOURCE[0]}")/../scripts/common.sh"

root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
bin=${TESSERA_BIN_DIR:-$root/target/debug}
cache=${TESSERA_IMAGE_CACHE:-$root/target/images}
boot_timeout=${BOOT_TIMEOUT:-300}
# free_port, factory, host_server, srv, check_devid_agent
. "$root/images/lib.sh"

usage() {
    sed -n '/^#   images/,/^# BOOT_TIMEOUT/p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# The kernel image, its e1000 network driver and a static busybox, in the cache.
# (A subshell: the cache lock must not pass to the processes started later.)
fetch() (
    mkdir -p -- "$cache" || die "cannot create $cache"
    lock_for "$cache/fetch"
    if [[ -f $cache/vmlinuz && -f $cache/e1000.ko && -x $cache/busybox ]]; then
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found: the boot test takes Debian's kernel"
    local kernel debs
    kernel=$(apt-cache depends linux-image-amd64 2>/dev/null |
        sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n 1)
    if [[ -z $kernel ]]; then
        note "apt knows no linux-image-amd64; updating its package lists"
        apt-get update -qq >&2 || die "apt-get update failed (run as root, or run scripts/setup.sh --tests)"
        kernel=$(apt-cache depends linux-image-amd64 |
            sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n 1)
    fi
    [[ -n $kernel ]] || die "cannot tell which kernel package linux-image-amd64 stands for"
    debs=$(mktemp -d "$cache/.debs.XXXXXX")
    note "downloading $kernel and busybox-static from Debian into $cache"
    (cd -- "$debs" && apt-get download "$kernel" busybox-static >/dev/null) ||
        die "apt-get download $kernel busybox-static failed"
    dpkg-deb -x "$debs"/linux-image-*.deb "$debs/kernel" || die "cannot unpack the kernel package"
    dpkg-deb -x "$debs"/busybox-static_*.deb "$debs/busybox" || die "cannot unpack busybox-static"
    cp -- "$debs"/kernel/boot/vmlinuz-* "$cache/vmlinuz.new"
    cp -- "$(find "$debs/kernel/lib/modules" -name e1000.ko | head -n 1)" "$cache/e1000.ko" ||
        die "the kernel package has no e1000.ko"
    cp -- "$debs/busybox/bin/busybox" "$cache/busybox"
    mv -- "$cache/vmlinuz.new" "$cache/vmlinuz"
    rm -rf -- "$debs"
)

# Copies FILE and every shared library it needs (per ldd) into the tree ROOT, at
# their own paths.
copy_with_libs() {
    local tree=$1 file=$2 lib
    mkdir -p -- "$tree$(dirname -- "$file")"
    cp -L -- "$file" "$tree$file"
    for lib in $(ldd "$file" | grep -o '/[^ ]*'); do
        mkdir -p -- "$tree$(dirname -- "$lib")"
        cp -L -- "$lib" "$tree$lib"
    done
}

run() {
    [[ $# -eq 1 ]] || usage
    work=$1
    for tool in qemu-system-x86_64 cpio gzip ldd strip openssl python3; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool not found; run scripts/setup.sh --tests"
    done
    for b in tessera-agent tessera-server; do
        [[ -x $bin/$b ]] || die "$bin/$b not found; build it (cargo build --bins) or set TESSERA_BIN_DIR"
    done
    fetch

    # WORK is made fresh; refuse to empty a folder a boot test did not make.
    if [[ -e $work ]]; then
        [[ -f $work/.boot-test || -z $(ls -A -- "$work" 2>/dev/null) ]] ||
            die "$work exists and is not a boot test's folder; name a new one"
        rm -rf -- "$work"
    fi
    mkdir -p -- "$work"
    : >"$work/.boot-test"
    # Global, for the exit trap.
    work=$(cd -- "$work" && pwd -P)
    pids=()
    cleanup() {
        local p
        for p in "${pids[@]}"; do
            kill "$p" 2>/dev/null || true
        done
        bash "$root/scripts/swtpm.sh" stop "$work/swtpm" >/dev/null 2>&1 || true
    }
    trap cleanup EXIT

    # The factory: a TPM with its maker's EK certificates, and a DevID from the
    # vendor's CA. The DevID directory goes into the image.
    factory "$work" boot-test-appliance "Boot Test Vendor CA"
    # The server, on the host's loopback (the guest reaches it as 10.0.2.2).
    host_server "$work"
    local port=$host_port
    srv entry create --node --spiffe-id spiffe://example.org/appliances \
        --selector "tpm_devid:issuer:cn:Boot Test Vendor CA" >/dev/null
    srv entry create --parent-id spiffe://example.org/appliances \
        --spiffe-id spiffe://example.org/appliance/root --selector unix:uid:0 >/dev/null

    # The image.
    note "building the initramfs"
    local tree=$work/initramfs
    mkdir -p -- "$tree"/{bin,sbin,proc,sys,dev,tmp,run,var/lib,etc/tessera,lib/modules}
    cp -- "$cache/busybox" "$tree/bin/busybox"
    local applet
    for applet in sh mount mkdir cat ls ip insmod sleep poweroff echo grep; do
        ln -s busybox "$tree/bin/$applet"
    done
    cp -- "$cache/e1000.ko" "$tree/lib/modules/"
    strip -o "$work/tessera-agent" "$bin/tessera-agent"
    mkdir -p -- "$tree/usr/bin"
    cp -- "$work/tessera-agent" "$tree/usr/bin/tessera-agent"
    local lib
    for lib in $(ldd "$bin/tessera-agent" | grep -o '/[^ ]*'); do
        copy_with_libs "$tree" "$lib"
    done
    # The TCTI loader opens the device TCTI at run time, by its soname.
    local tcti_lib
    tcti_lib=$(ldconfig -p | sed -n 's/^.*libtss2-tcti-device\.so\.0 (.*x86-64.*) => //p' | head -n 1)
    [[ -n $tcti_lib ]] || die "libtss2-tcti-device.so.0 not found; run scripts/setup.sh (package libtss2-dev)"
    copy_with_libs "$tree" "$tcti_lib"
    cp -- "$root/images/rootfs/etc/tessera/agent.toml" "$tree/etc/tessera/agent.toml"
    cp -- "$work/bundle.pem" "$tree/etc/tessera/bootstrap-bundle.pem"
    cp -r -- "$work/devid" "$tree/etc/tessera/devid"
    printf 'root:x:0:0:root:/:/bin/sh\n' >"$tree/etc/passwd"
    printf 'root:x:0:\n' >"$tree/etc/group"
    cat >"$tree/init" <<INIT
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
insmod /lib/modules/e1000.ko
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
echo "boot-test: TPM devices: \$(ls /dev/tpm*)"
/usr/bin/tessera-agent run \\
    --set server_address=10.0.2.2:$port \\
    --set key_manager.type=tpm \\
    --set node_attestor.tpm_devid.tcti=device:/dev/tpmrm0 \\
    --set node_attestor.tpm_devid.devid_dir=/etc/tessera/devid \\
    >/tmp/agent.log 2>&1 &
agent=\$!
i=0
while [ \$i -lt 240 ] && [ -d /proc/\$agent ]; do
    if /usr/bin/tessera-agent api fetch x509 >/tmp/svid.txt 2>&1; then
        echo "boot-test: SVID served"
        cat /tmp/svid.txt
        echo "boot-test: agent key files: \$(ls /var/lib/tessera/agent/keys)"
        poweroff -f
    fi
    sleep 0.5
    i=\$((i + 1))
done
echo "boot-test: no SVID; the agent's log:"
cat /tmp/agent.log
poweroff -f
INIT
    chmod +x "$tree/init"
    (cd -- "$tree" && find . | cpio -o -H newc 2>/dev/null | gzip -1 >"$work/initramfs.gz") ||
        die "cannot pack the initramfs"

    # Power on: the TPM is the provisioned swtpm, attached as a TIS device.
    local sock
    sock=$(bash "$root/scripts/swtpm.sh" vm "$work/swtpm")
    note "booting (no KVM: this takes a while)"
    local status=0
    timeout "$boot_timeout" qemu-system-x86_64 -accel tcg -m 512 -smp 1 \
        -nographic -no-reboot -nodefaults -serial stdio \
        -kernel "$cache/vmlinuz" -initrd "$work/initramfs.gz" \
        -append "console=ttyS0 quiet panic=-1" \
        -netdev user,id=net0 -device e1000,netdev=net0,romfile= \
        -chardev "socket,id=chrtpm,path=$sock" \
        -tpmdev emulator,id=tpm0,chardev=chrtpm -device tpm-tis,tpmdev=tpm0 \
        </dev/null | tr -d '\r' | tee "$work/console.log" || status=$?
    [[ $status -eq 0 ]] || die "QEMU failed or did not power off within $boot_timeout s (exit $status)"

    grep -q '^boot-test: SVID served' "$work/console.log" ||
        die "the appliance was served no SVID (console above; server log in $work/server.log)"
    grep -q 'spiffe://example.org/appliance/root' "$work/console.log" ||
        die "the SVID served is not spiffe://example.org/appliance/root"
    grep -Eq '^boot-test: agent key files: .*\.tpmkey' "$work/console.log" ||
        die "the agent's key on disk is not a TPM blob"
    local agent_id
    agent_id=$(check_devid_agent "$work")
    printf 'boot test: OK: %s attested with tpm_devid and served spiffe://example.org/appliance/root\n' \
        "$agent_id"
}

[[ $# -ge 1 ]] || usage
command=$1
shift
case $command in
run) run "$@" ;;
fetch) [[ $# -eq 0 ]] || usage; fetch ;;
*) usage ;;
esac

#!/usr/bin/env bash
# Boots an appliance under QEMU with swtpm as its TPM and checks that its static
# agent proves the node with its TPM's DevID and serves an SVID.
#
# The appliance is a minimal initramfs around Debian's kernel for the architecture:
# a static busybox, the static `tessera-agent` of scripts/static.sh (no library is
# copied in), the rootfs overlay's /etc/tessera/agent.toml unchanged, the server's
# bundle and the DevID (certificate and TPM key blob) provisioned at the "factory".
# Its init brings up the network (QEMU user networking: the host is 10.0.2.2) and
# starts the agent with per-product settings given as `--set` overrides: the server
# address, the `tpm` key manager and `tpm_devid` on /dev/tpmrm0. On the host: a
# server trusting the vendor CA and the TPM maker's CA, a node entry for the
# vendor's DevIDs and an entry for root on those nodes. The guest prints its TPM
# (sysfs, a PCR the kernel read through it) and the SVID it was served; the script
# checks them and that the server recorded a `tpm_devid` agent for this DevID.
#
# The TPM: on x86_64, QEMU's TIS device backed by swtpm. On aarch64 Debian's kernel
# has no driver for QEMU's `virt` TPM device (CONFIG_TCG_TIS is off), so the guest
# makes its TPM with the kernel's vTPM proxy and images/guest/vtpm-relay.rs carries
# its commands to swtpm on the host over the user network; /dev/tpmrm0 is the
# kernel's own resource-managed device either way.
#
# The static agent reaches the TPM with its pure-Rust backend (`tpm_backend` is
# `native`, the only one a static build has); an agent that cannot use the TPM
# fails the test.
#
#   images/boot-test.sh run [--arch ARCH] WORK
#       Everything under WORK (made fresh: a folder of an earlier run is emptied,
#       any other non-empty one refused); prints the guest's console and, last,
#       `boot test: OK ...`. Fails with the reason otherwise.
#   images/boot-test.sh fetch [--arch ARCH]
#       Downloads Debian's kernel and busybox-static packages for ARCH (apt-get
#       download, nothing installed; for aarch64 the arm64 architecture is added
#       to dpkg) into the cache, unless they are there.
#
# ARCH                 x86_64 (the default) or aarch64
# TESSERA_BIN_DIR      where the host's tessera-server and tessera-agent (which
#                      provisions the DevID) are (default: <repo>/target/debug)
# TESSERA_GUEST_AGENT  the guest's agent, static, for ARCH (default:
#                      <repo>/target/static/<ARCH>-unknown-linux-musl/tessera-agent)
# TESSERA_IMAGE_CACHE  where kernels and busyboxes are kept, per ARCH (default:
#                      <repo>/target/images)
# BOOT_TIMEOUT         seconds the guest may take from power-on to power-off
#                      (default 300; it runs without KVM)

set -euo pipefail

# prog, die, note, lock_for
. "$(dirname -- "${BASH_SOURCE[0]}")/../scripts/common.sh"

root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
bin=${TESSERA_BIN_DIR:-$root/target/debug}
cache_root=${TESSERA_IMAGE_CACHE:-$root/target/images}
boot_timeout=${BOOT_TIMEOUT:-300}
# fresh_work, free_port, factory, host_server, srv, check_devid_agent
. "$root/images/lib.sh"

usage() {
    sed -n '/^#   images/,/^# BOOT_TIMEOUT/p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# What differs between the architectures. Sets arch, triple, deb_arch, cache,
# qemu (the command with its machine arguments), console, modules (kernel modules
# the guest loads, in order) and tpm (tis: QEMU's TIS device; proxy: the kernel's
# vTPM proxy and images/guest/vtpm-relay.rs).
arch_setup() {
    arch=$1
    case $arch in
    x86_64)
        deb_arch=amd64
        qemu=(qemu-system-x86_64 -accel tcg -m 512 -smp 1)
        console=ttyS0
        modules=(e1000)
        tpm=tis
        ;;
    aarch64)
        deb_arch=arm64
        # cortex-a57: an ARMv8.0 CPU, which TCG emulates faster than `max`.
        qemu=(qemu-system-aarch64 -M virt -cpu cortex-a57 -accel tcg -m 512 -smp 1)
        console=ttyAMA0
        modules=(e1000 tpm_vtpm_proxy)
        tpm=proxy
        ;;
    *) die "unknown architecture '$arch' (x86_64 or aarch64)" ;;
    esac
    triple=$arch-unknown-linux-musl
    cache=$cache_root/$arch
}

# apt, able to see packages of deb_arch: for a foreign one, dpkg learns the
# architecture and apt its package lists (once).
need_apt_arch() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found: the boot test takes Debian's kernel"
    if [[ $deb_arch != "$(dpkg --print-architecture)" ]] &&
        ! dpkg --print-foreign-architectures | grep -qx "$deb_arch"; then
        note "adding the $deb_arch architecture to dpkg (for its kernel and busybox)"
        dpkg --add-architecture "$deb_arch" || die "dpkg --add-architecture $deb_arch failed (run as root)"
        apt-get update -qq >&2 || die "apt-get update failed (run as root)"
    fi
}

# The kernel package linux-image-<deb_arch> stands for.
kernel_package() {
    apt-cache depends "linux-image-$deb_arch:$deb_arch" 2>/dev/null |
        sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n 1
}

# The kernel image, the modules the guest loads and a static busybox, in the cache.
# (A subshell: the cache lock must not pass to the processes started later.)
fetch() (
    mkdir -p -- "$cache" || die "cannot create $cache"
    lock_for "$cache/fetch"
    local m have=true
    for m in "${modules[@]}"; do [[ -f $cache/$m.ko ]] || have=false; done
    if $have && [[ -f $cache/vmlinuz && -x $cache/busybox ]]; then
        return 0
    fi
    need_apt_arch
    local kernel debs
    kernel=$(kernel_package)
    if [[ -z $kernel ]]; then
        note "apt knows no linux-image-$deb_arch; updating its package lists"
        apt-get update -qq >&2 || die "apt-get update failed (run as root, or run scripts/setup.sh --tests)"
        kernel=$(kernel_package)
    fi
    [[ -n $kernel ]] || die "cannot tell which kernel package linux-image-$deb_arch stands for"
    debs=$(mktemp -d "$cache/.debs.XXXXXX")
    note "downloading $kernel and busybox-static:$deb_arch from Debian into $cache"
    (cd -- "$debs" && apt-get download "$kernel" "busybox-static:$deb_arch" >/dev/null 2>&1) ||
        die "apt-get download $kernel busybox-static:$deb_arch failed"
    dpkg-deb -x "$debs"/linux-image-*.deb "$debs/kernel" || die "cannot unpack the kernel package"
    dpkg-deb -x "$debs"/busybox-static_*.deb "$debs/busybox" || die "cannot unpack busybox-static"
    for m in "${modules[@]}"; do
        cp -- "$(find "$debs/kernel/lib/modules" "$debs/kernel/usr/lib/modules" -name "$m.ko" 2>/dev/null | head -n 1)" \
            "$cache/$m.ko" || die "the kernel package has no $m.ko"
    done
    cp -- "$debs"/kernel/boot/vmlinuz-* "$cache/vmlinuz.new"
    cp -- "$debs/busybox/bin/busybox" "$cache/busybox"
    mv -- "$cache/vmlinuz.new" "$cache/vmlinuz"
    rm -rf -- "$debs"
)

# Builds images/guest/vtpm-relay.rs, static, for the guest into FILE.
build_relay() {
    local out=$1 flags=()
    if [[ $arch == aarch64 ]]; then
        # The same cross linker as scripts/static.sh's.
        flags=(-C linker=clang -C link-arg=--target=aarch64-linux-musl -C link-arg=-fuse-ld=lld)
    fi
    rustc --edition 2024 -O -C panic=abort -C strip=symbols --target "$triple" "${flags[@]}" \
        -o "$out" "$root/images/guest/vtpm-relay.rs" 2>"$out.log" ||
        die "cannot build the vTPM relay for $triple (scripts/static.sh $triple sets the toolchain up): $(cat "$out.log")"
}

run() {
    local arch_arg=x86_64
    if [[ ${1-} == --arch ]]; then
        [[ $# -ge 2 ]] || usage
        arch_arg=$2
        shift 2
    fi
    [[ $# -eq 1 ]] || usage
    arch_setup "$arch_arg"
    work=$1
    local guest_agent=${TESSERA_GUEST_AGENT:-$root/target/static/$triple/tessera-agent}
    for tool in "${qemu[0]}" cpio gzip openssl python3; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool not found; run scripts/setup.sh --tests"
    done
    for b in tessera-agent tessera-server; do
        [[ -x $bin/$b ]] || die "$bin/$b not found; build it (cargo build --bins) or set TESSERA_BIN_DIR"
    done
    [[ -x $guest_agent ]] ||
        die "$guest_agent not found; build it (scripts/static.sh $triple) or set TESSERA_GUEST_AGENT"
    # Static, and for this architecture: nothing else goes into the image.
    bash "$root/scripts/static.sh" check "$guest_agent" >/dev/null
    fetch

    # WORK is made fresh (a folder of an earlier run is emptied, any other
    # non-empty one refused); the exit trap stops what the run started.
    fresh_work "$work" .boot-test

    # The factory (a TPM with its maker's EK certificates, a DevID from the vendor's
    # CA: the DevID directory goes into the image) and the server on the host.
    factory "$work" boot-test-appliance "Boot Test Vendor CA"
    host_server "$work"
    srv entry create --node --spiffe-id spiffe://example.org/appliances \
        --selector "tpm_devid:issuer:cn:Boot Test Vendor CA" >/dev/null
    srv entry create --parent-id spiffe://example.org/appliances \
        --spiffe-id spiffe://example.org/appliance/root --selector unix:uid:0 >/dev/null

    # The TPM the guest will have: QEMU's device, or swtpm's TCP port for the relay.
    local tpm_qemu=() tpm_setup=
    if [[ $tpm == tis ]]; then
        local sock
        sock=$(bash "$root/scripts/swtpm.sh" vm "$work/swtpm")
        tpm_qemu=(-chardev "socket,id=chrtpm,path=$sock"
            -tpmdev emulator,id=tpm0,chardev=chrtpm -device tpm-tis,tpmdev=tpm0)
    else
        bash "$root/scripts/swtpm.sh" start "$work/swtpm" >/dev/null
        local tpm_port
        tpm_port=$(sed -n "s/^export TPM_SWTPM_PORT='\{0,1\}\([0-9]*\)'\{0,1\}$/\1/p" "$work/swtpm/env")
        [[ -n $tpm_port ]] || die "scripts/swtpm.sh wrote no TPM_SWTPM_PORT: $(cat "$work/swtpm/env")"
        tpm_setup="/usr/bin/vtpm-relay 10.0.2.2:$tpm_port >/tmp/relay.log 2>&1 &
i=0
while [ \$i -lt 100 ] && [ ! -e /dev/tpmrm0 ]; do sleep 0.1; i=\$((i + 1)); done
echo \"boot-test: \$(cat /tmp/relay.log)\""
    fi

    # The image.
    note "building the initramfs"
    local tree=$work/initramfs
    mkdir -p -- "$tree"/{bin,sbin,proc,sys,dev,tmp,run,var/lib,etc/tessera,lib/modules,usr/bin}
    cp -- "$cache/busybox" "$tree/bin/busybox"
    local applet m
    for applet in sh mount mkdir cat ls ip insmod sleep poweroff echo grep; do
        ln -s busybox "$tree/bin/$applet"
    done
    for m in "${modules[@]}"; do cp -- "$cache/$m.ko" "$tree/lib/modules/"; done
    # The static agent alone: no library goes in with it.
    cp -- "$guest_agent" "$tree/usr/bin/tessera-agent"
    [[ $tpm == proxy ]] && build_relay "$tree/usr/bin/vtpm-relay"
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
for m in ${modules[*]}; do
    insmod /lib/modules/\$m.ko || echo "boot-test: cannot load \$m"
done
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
echo "boot-test: architecture: \$(cat /proc/sys/kernel/arch 2>/dev/null)"
$tpm_setup
echo "boot-test: TPM devices:" /dev/tpm*
echo "boot-test: TPM in sysfs: \$(ls -d /sys/class/tpm/tpm0), TPM \$(cat /sys/class/tpm/tpm0/tpm_version_major).0"
echo "boot-test: PCR 0 (SHA-256) the kernel read from the TPM: \$(cat /sys/class/tpm/tpm0/pcr-sha256/0)"
# The static agent talks to the kernel's TPM device itself (the pure-Rust backend).
if ! /usr/bin/tessera-agent tpm info --tcti device:/dev/tpmrm0 --devid-dir /etc/tessera/devid >/tmp/tpm-info.txt 2>&1; then
    echo "boot-test: the agent cannot use the TPM:"
    cat /tmp/tpm-info.txt
    poweroff -f
fi
echo "boot-test: the agent's view of the TPM:"
cat /tmp/tpm-info.txt
echo "boot-test: attesting with tpm_devid"
/usr/bin/tessera-agent run \\
    --set server_address=10.0.2.2:$host_port \\
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

    # Power on.
    note "booting $arch (no KVM: this takes a while)"
    local status=0 started=$SECONDS
    timeout "$boot_timeout" "${qemu[@]}" \
        -nographic -no-reboot -nodefaults -serial stdio \
        -kernel "$cache/vmlinuz" -initrd "$work/initramfs.gz" \
        -append "console=$console quiet panic=-1" \
        -netdev user,id=net0 -device e1000,netdev=net0,romfile= \
        "${tpm_qemu[@]}" \
        </dev/null | tr -d '\r' | tee "$work/console.log" || status=$?
    [[ $status -eq 0 ]] || die "QEMU failed or did not power off within $boot_timeout s (exit $status)"
    local took=$((SECONDS - started))

    grep -q '^boot-test: TPM devices: .*/dev/tpmrm0' "$work/console.log" ||
        die "the guest has no /dev/tpmrm0"
    grep -Eq '^boot-test: PCR 0 \(SHA-256\) the kernel read from the TPM: [0-9A-Fa-f]{64}$' "$work/console.log" ||
        die "the guest's kernel could not read a PCR from its TPM"
    grep -q '^boot-test: SVID served' "$work/console.log" ||
        die "the appliance was served no SVID (console above; server log in $work/server.log)"
    grep -q 'spiffe://example.org/appliance/root' "$work/console.log" ||
        die "the SVID served is not spiffe://example.org/appliance/root"
    grep -Eq '^boot-test: agent key files: .*\.tpmkey' "$work/console.log" ||
        die "the agent's key on disk is not a TPM blob"
    local agent_id
    agent_id=$(check_devid_agent "$work")
    printf 'boot test: OK: %s: %s attested with tpm_devid and served spiffe://example.org/appliance/root (guest ran %s s)\n' \
        "$arch" "$agent_id" "$took"
}

[[ $# -ge 1 ]] || usage
command=$1
shift
case $command in
run) run "$@" ;;
fetch)
    arch_fetch=x86_64
    if [[ ${1-} == --arch ]]; then
        [[ $# -eq 2 ]] || usage
        arch_fetch=$2
    else
        [[ $# -eq 0 ]] || usage
    fi
    arch_setup "$arch_fetch"
    fetch
    ;;
*) usage ;;
esac

#!/bin/sh
# The systemd guest's checks (images/systemd-guest.sh installs this as
# /usr/local/bin/boot-check), run by boot-check.service after boot; results on the
# console as `boot-check: ...` lines. The entries the agent's workloads need were
# made on the host's server before boot; the agent attests to it with its TPM's
# DevID (the settings are in a drop-in the script writes).
#
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
# The highest exposure `systemd-analyze security` may give the agent's unit.
MAX_EXPOSURE=2.5

# The server unit, as the overlay ships it (a server in the guest, unused by the
# agent, which attests to the host's).
[ "$(systemctl is-active tessera-server)" = active ] ||
    fail "tessera-server is $(systemctl is-active tessera-server)"
[ "$(show tessera-server Type)" = notify ] || fail "tessera-server is not Type=notify"
status=$(show tessera-server StatusText)
[ -n "$status" ] || fail "tessera-server sent no STATUS="
say "server active: $status"
pid=$(show tessera-server MainPID)
user=$(stat -c %U "/proc/$pid")
[ "$user" = tessera ] || fail "tessera-server runs as $user, not tessera"
say "server user: $user"
$S healthcheck >/dev/null || fail "server healthcheck: $($S healthcheck 2>&1)"

# The agent unit's sandbox, as systemd rates it.
exposure=$(systemd-analyze security tessera-agent.service 2>&1 |
    sed -n 's/^.*Overall exposure level for tessera-agent.service: \([0-9.]*\).*$/\1/p')
[ -n "$exposure" ] || fail "systemd-analyze security gave no figure: $(systemd-analyze security tessera-agent.service 2>&1 | tail -n 5)"
say "agent unit exposure: $exposure (at most $MAX_EXPOSURE)"
awk -v e="$exposure" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e <= m) }' ||
    fail "the agent unit's exposure $exposure is above $MAX_EXPOSURE: $(systemd-analyze security tessera-agent.service 2>&1 | grep '✗')"

# The TPM: the resource manager device belongs to tss, by the overlay's udev rule
# (Debian's own rule was removed from this image).
tpm=$(stat -c '%G %a' /dev/tpmrm0 2>&1) || fail "no /dev/tpmrm0: $tpm"
[ "$tpm" = "tss 660" ] || fail "/dev/tpmrm0 is '$tpm', not group tss mode 660"
say "tpm device: /dev/tpmrm0 group tss mode 660"
id tessera-agent | grep -q '(tss)' || fail "tessera-agent is not in tss: $(id tessera-agent)"

systemctl start tessera-agent || fail "tessera-agent did not start"
[ "$(show tessera-agent Type)" = notify ] || fail "tessera-agent is not Type=notify"
say "agent active: $(show tessera-agent StatusText)"
pid=$(show tessera-agent MainPID)
say "agent user: $(stat -c %U "/proc/$pid"), groups: $(id -nG tessera-agent)"
[ "$(stat -c %U "/proc/$pid")" = tessera-agent ] || fail "the agent does not run as tessera-agent"
# CAP_SYS_PTRACE (bit 19) and nothing else.
say "agent capabilities: $(sed -n 's/^CapEff:[[:space:]]*//p' "/proc/$pid/status")"
grep -q '^CapEff:[[:space:]]*0000000000080000$' "/proc/$pid/status" ||
    fail "the agent's effective capabilities are not CAP_SYS_PTRACE alone"

svid=""
for i in $(seq 1 60); do
    svid=$(tessera-agent api fetch x509 --socket-path /run/tessera/agent/public/api.sock 2>&1) &&
        break
    sleep 1
done
echo "$svid" | grep -q "spiffe://example.org/boot-check" ||
    fail "no SVID: $svid $(journalctl -b --no-pager -u tessera-agent | tail -n 20)"
say "svid: spiffe://example.org/boot-check"
keys=$(ls /var/lib/tessera/agent/keys 2>&1)
echo "$keys" | grep -q '\.tpmkey$' || fail "the agent's key is not a TPM blob: $keys"
say "agent key files: $keys"

# Two services of one user (nobody): systemd tells them apart; wl-b's entry also
# names its binary (unix:path), which the agent reads through /proc/<pid>/exe of a
# process of another user: the capability at work.
for svc in wl-a wl-b; do
    want=spiffe://example.org/svc-${svc#wl-}
    got=""
    for i in $(seq 1 30); do
        systemctl start "$svc" 2>/dev/null && got=$(sed -n 's/^spiffe_id=//p' "/run/$svc.out") &&
            [ -n "$got" ] && break
        sleep 1
    done
    [ "$got" = "$want" ] ||
        fail "$svc got '$got', not $want: $(cat "/run/$svc.out"; journalctl -b --no-pager -u "$svc" -u tessera-agent | tail -n 10)"
    say "systemd unit $svc.service: $got"
done

# Podman containers: the label decides. The image is go-spiffe and nothing else.
systemctl start podman.socket || fail "podman.socket did not start"
tar -C /usr/local/bin -cf - go-spiffe-workload | podman import -q - localhost/spiffe-client >/dev/null ||
    fail "podman import"
say "podman: image imported"
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
    [ "$i" = 1 ] && say "labelled container, first try: $(echo "$out" | tail -n 2) $(journalctl -b --no-pager -u tessera-agent | tail -n 3)"
    sleep 1
done
[ "$got" = spiffe://example.org/payments ] ||
    fail "the labelled container got '$got': $out $(journalctl -b --no-pager -u tessera-agent | tail -n 5)"
say "labelled container: $got"
out=$(run_client --label app=other localhost/spiffe-client \
    /go-spiffe-workload expect-denied 2>&1) ||
    fail "a container without the label was not denied: $out"
say "unlabelled container: denied"

# A hung agent: the watchdog (WatchdogSec=6s) must restart it, and the new one
# serves again (its key is in the TPM-wrapped blob it left on disk).
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
served=no
for i in $(seq 1 30); do
    tessera-agent api fetch x509 --socket-path /run/tessera/agent/public/api.sock >/dev/null 2>&1 &&
        served=yes && break
    sleep 1
done
[ $served = yes ] ||
    fail "the restarted agent serves no SVID: $(journalctl -b --no-pager -u tessera-agent | tail -n 10)"
say OK
finish

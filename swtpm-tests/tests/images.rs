//! The appliance image: the overlay's default agent configuration must load with the
//! agent's own parser (a typo there would brick every device built from it), and an
//! appliance booted under QEMU with a swtpm TPM device attests with its DevID and
//! serves an SVID (`images/boot-test.sh`); and the shipped systemd units, installed
//! in a Debian guest booted with systemd and a swtpm TPM device, are notify services
//! that become ready, run sandboxed as their users (the agent as `tessera-agent`,
//! reaching the TPM through the tss group, with CAP_SYS_PTRACE alone, under a
//! sandbox `systemd-analyze security` rates 2.5 or lower), attest with the TPM's
//! DevID to a server on the host, and are restarted by the watchdog when hung, and
//! the `systemd` and `docker` workload attestors tell two services of one user and
//! two Podman containers apart (`images/systemd-guest.sh`).

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

#[test]
fn image_default_agent_config_parses() {
    let path = tessera_swtpm_tests::repo_root().join("images/rootfs/etc/tessera/agent.toml");
    let cfg = tessera_agent::config::AgentConfig::load(&path, &[]).unwrap();
    assert_eq!(
        cfg.socket_path,
        std::path::PathBuf::from(tessera_agent::config::DEFAULT_SOCKET)
    );
    assert_eq!(
        cfg.servers(),
        vec!["tessera-server.example.org:8081".to_string()]
    );
}

/// Runs `images/<script> run <work>` on the binaries under test; returns its
/// standard output, or fails with both outputs and what `more` adds.
fn run_image_script(
    script: &str,
    work: &std::path::Path,
    more: impl Fn(&std::path::Path) -> String,
) -> String {
    use tessera_swtpm_tests::{bin, repo_root};
    // Fail early, with the cargo command, if the binaries are missing.
    let agent = bin("tessera-agent");
    let out = std::process::Command::new("bash")
        .arg(repo_root().join("images").join(script))
        .arg("run")
        .arg(work)
        .env("TESSERA_BIN_DIR", agent.parent().unwrap())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "images/{script} failed:\n{stdout}\n{stderr}\n{}",
        more(work)
    );
    stdout
}

#[test]
fn appliance_boots_attests_with_its_tpm_and_serves_an_svid() {
    let dir = tessera_swtpm_tests::test_dir("boot");
    let work = dir.path().join("boot");
    let stdout = run_image_script("boot-test.sh", &work, |work| {
        std::fs::read_to_string(work.join("server.log"))
            .map(|log| format!("server log:\n{log}"))
            .unwrap_or_default()
    });
    // The guest's console: its TPM device, the SVID the agent served it, and the
    // agent's key on disk being a TPM blob.
    assert!(stdout.contains("/dev/tpmrm0"), "{stdout}");
    assert!(
        stdout.contains("SPIFFE ID:\t\tspiffe://example.org/appliance/root"),
        "{stdout}"
    );
    assert!(stdout.contains(".tpmkey"), "{stdout}");
    let ok = stdout
        .lines()
        .find(|l| l.starts_with("boot test: OK: "))
        .unwrap_or_else(|| panic!("no verdict:\n{stdout}"));
    assert!(
        ok.contains("spiffe://example.org/spire/agent/tpm_devid/"),
        "{ok}"
    );
}

#[test]
fn shipped_units_get_ready_tell_units_and_containers_apart_and_restart_a_hung_agent() {
    let dir = tessera_swtpm_tests::test_dir("systemd-guest");
    let stdout = run_image_script("systemd-guest.sh", &dir.path().join("guest"), |_| {
        String::new()
    });
    // What the guest's checks saw, each from systemd itself.
    for line in [
        "boot-check: server active: serving agents on 127.0.0.1:8081",
        "boot-check: server user: tessera",
        "boot-check: tpm device: /dev/tpmrm0 group tss mode 660",
        "boot-check: agent user: tessera-agent, groups: tessera-agent tss",
        // CAP_SYS_PTRACE alone.
        "boot-check: agent capabilities: 0000000000080000",
        "boot-check: svid: spiffe://example.org/boot-check",
        // Two services of one user, by their systemd: selectors.
        "boot-check: systemd unit wl-a.service: spiffe://example.org/svc-a",
        "boot-check: systemd unit wl-b.service: spiffe://example.org/svc-b",
        // Podman containers, by docker: label (through Podman's compatible socket).
        "boot-check: labelled container: spiffe://example.org/payments",
        "boot-check: unlabelled container: denied",
        "boot-check: watchdog restarted the agent",
        "boot-check: OK",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(line)),
            "{line}\n{stdout}"
        );
    }
    // The agent unit's exposure as systemd rates it (the guest fails above 2.5 too).
    let exposure: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("boot-check: agent unit exposure: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no exposure figure:\n{stdout}"))
        .parse()
        .unwrap();
    assert!(exposure <= 2.5, "exposure {exposure}\n{stdout}");
    // The server on the host recorded the agent of this TPM's DevID.
    let ok = stdout
        .lines()
        .find(|l| l.starts_with("systemd guest: OK "))
        .unwrap_or_else(|| panic!("no verdict:\n{stdout}"));
    assert!(
        ok.contains("spiffe://example.org/spire/agent/tpm_devid/")
            && ok.ends_with("attested with tpm_devid"),
        "{ok}"
    );
}

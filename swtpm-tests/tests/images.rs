//! The appliance image: the overlay's default agent configuration must load with the
//! agent's own parser (a typo there would brick every device built from it); an
//! appliance booted under QEMU, x86_64 and aarch64, with swtpm as its TPM and only
//! the static agent of `scripts/static.sh` in it, attests with its DevID and serves
//! an SVID (`images/boot-test.sh`); and the shipped systemd units, installed with
//! the static binaries in a Debian guest booted with systemd and a swtpm TPM device,
//! are notify services that become ready, run sandboxed as their users (the agent
//! as `tessera-agent`, reaching the TPM through the tss group, with CAP_SYS_PTRACE
//! alone, under a sandbox `systemd-analyze security` rates 2.5 or lower), attest
//! with the TPM's DevID to a server on the host, and are restarted by the watchdog
//! when hung, and the `systemd` and `docker` workload attestors tell two services of
//! one user and two Podman containers apart (`images/systemd-guest.sh`).

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
    run_image_script_with(script, &[], work, more)
}

/// [`run_image_script`] with `args` before `<work>`.
fn run_image_script_with(
    script: &str,
    args: &[&str],
    work: &std::path::Path,
    more: impl Fn(&std::path::Path) -> String,
) -> String {
    use tessera_swtpm_tests::{bin_dir, repo_root};
    // The build directory's binaries (not a TESSERA_TEST_AGENT_BIN override: the
    // host's agent provisions the DevID with its own TPM backend). Fail early, with
    // the cargo command, if they are missing.
    let dir = bin_dir();
    for name in ["tessera-agent", "tessera-server"] {
        assert!(
            dir.join(name).is_file(),
            "{} is missing: build the binaries first (cargo build --bins)",
            dir.join(name).display()
        );
    }
    let out = std::process::Command::new("bash")
        .arg(repo_root().join("images").join(script))
        .arg("run")
        .args(args)
        .arg(work)
        .env("TESSERA_BIN_DIR", &dir)
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

/// Boots the appliance for `arch` with its static agent (glibc binaries on the host
/// provision the DevID and serve) and checks what the guest and the server saw.
fn appliance_boots(arch: &str) {
    let triple = format!("{arch}-unknown-linux-musl");
    // Fail early, with the command, if the static agent is missing.
    tessera_swtpm_tests::static_bin(&triple, "tessera-agent");
    let dir = tessera_swtpm_tests::test_dir(&format!("boot-{arch}"));
    let work = dir.path().join("boot");
    let stdout = run_image_script_with("boot-test.sh", &["--arch", arch], &work, |work| {
        std::fs::read_to_string(work.join("server.log"))
            .map(|log| format!("server log:\n{log}"))
            .unwrap_or_default()
    });
    // The guest's console: its TPM, as devices and in sysfs, answering the kernel;
    // the SVID the agent served it.
    assert!(stdout.contains("/dev/tpmrm0"), "{stdout}");
    let pcr = stdout
        .lines()
        .find_map(|l| l.strip_prefix("boot-test: PCR 0 (SHA-256) the kernel read from the TPM: "))
        .unwrap_or_else(|| panic!("no PCR read:\n{stdout}"));
    assert_eq!(pcr.len(), 64, "{pcr}");
    assert!(
        stdout.contains("SPIFFE ID:\t\tspiffe://example.org/appliance/root"),
        "{stdout}"
    );
    let ok = stdout
        .lines()
        .find(|l| l.starts_with(&format!("boot test: OK: {arch}: ")))
        .unwrap_or_else(|| panic!("no verdict:\n{stdout}"));
    // The agent proved the node with the TPM's DevID, and its key is in the TPM.
    assert!(
        ok.contains("spiffe://example.org/spire/agent/tpm_devid/")
            && ok.contains("attested with tpm_devid "),
        "{ok}"
    );
    assert!(stdout.contains(".tpmkey"), "{stdout}");
}

#[test]
fn x86_64_appliance_boots_attests_with_its_tpm_and_serves_an_svid() {
    appliance_boots("x86_64");
}

#[test]
fn aarch64_appliance_boots_attests_with_its_tpm_and_serves_an_svid() {
    appliance_boots("aarch64");
}

#[test]
fn shipped_units_get_ready_tell_units_and_containers_apart_and_restart_a_hung_agent() {
    let dir = tessera_swtpm_tests::test_dir("systemd-guest");
    // Fail early, with the command, if the static binaries are missing.
    for bin in ["tessera-agent", "tessera-server"] {
        tessera_swtpm_tests::static_bin("x86_64-unknown-linux-musl", bin);
    }
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

//! The static musl binaries of `scripts/static.sh` (scripts/test.sh builds them
//! before the tests): each is static, the check refuses a dynamic one with its
//! reason, and a static server configured with PKCS#11 (as its key manager or its
//! upstream authority) refuses to start, saying that PKCS#11 needs the dynamic build.
//! The static agent runs the join-token (and, with its TPM backend, the TPM)
//! end-to-end tests a second time in scripts/test.sh, with `TESSERA_TEST_AGENT_BIN`.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tessera_swtpm_tests::{Server, SoftHsm, bin_dir, repo_root, static_bin, test_dir};

const X86: &str = "x86_64-unknown-linux-musl";
const ARM: &str = "aarch64-unknown-linux-musl";

fn check(file: &Path) -> std::process::Output {
    Command::new("bash")
        .arg(repo_root().join("scripts/static.sh"))
        .arg("check")
        .arg(file)
        .output()
        .unwrap()
}

#[test]
fn static_binaries_have_no_interpreter_and_need_no_library() {
    for (triple, name) in [
        (X86, "tessera-agent"),
        (X86, "tessera-server"),
        (ARM, "tessera-agent"),
    ] {
        let file = static_bin(triple, name);
        let out = check(&file);
        assert!(
            out.status.success(),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The check can fail: the glibc build is refused, with the reason. (From the
    // build directory: TESSERA_TEST_AGENT_BIN may name the static one.)
    let glibc = bin_dir().join("tessera-agent");
    assert!(
        glibc.is_file(),
        "{} is missing: cargo build --bins",
        glibc.display()
    );
    let out = check(&glibc);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("is not static: it has a program interpreter"),
        "{stderr}"
    );
}

/// Runs the static server on `server`'s configuration; it must exit by itself,
/// failing, within 30 s. Returns what it printed.
fn static_server_refuses(server: &Server, env: &[(String, String)]) -> String {
    let out = Command::new("timeout")
        .arg("30")
        .arg(static_bin(X86, "tessera-server"))
        .arg("run")
        .arg("--config")
        .arg(&server.config)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // `timeout` exits 124 when it had to stop the server: that is not a refusal.
    assert!(
        !out.status.success() && out.status.code() != Some(124),
        "{:?}: {said}",
        out.status
    );
    said
}

#[test]
fn a_static_server_with_pkcs11_refuses_to_start_saying_it_needs_the_dynamic_build() {
    let dir = test_dir("static-pkcs11");
    let hsm = SoftHsm::init(&dir.path().join("hsm"), "static", "1234");
    let section = hsm.section();
    // The module exists and the glibc build loads it (hsm.rs): only the static build
    // cannot.
    assert!(hsm.module.is_file(), "{}", hsm.module.display());
    for (name, extra) in [
        (
            "key-manager",
            format!("[key_manager]\ntype = \"pkcs11\"\n{section}"),
        ),
        (
            "upstream",
            format!(
                "[upstream_authority]\ntype = \"pkcs11\"\n[upstream_authority.pkcs11]\n{section}"
            ),
        ),
    ] {
        let server = Server::configure(&dir.path().join(name), &extra);
        let said = static_server_refuses(&server, &hsm.env());
        assert!(
            said.contains(&format!(
                "cannot load PKCS#11 module {}: this is a static build of Tessera",
                hsm.module.display()
            )) && said.contains("PKCS#11 needs the dynamic (glibc) build"),
            "{name}: {said}"
        );
    }
    // And without PKCS#11 the same static server starts and becomes healthy.
    let server = Server::configure(&dir.path().join("disk"), "[key_manager]\ntype = \"disk\"\n");
    let mut child = Command::new(static_bin(X86, "tessera-server"))
        .arg("run")
        .arg("--config")
        .arg(&server.config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let healthy = tessera_swtpm_tests::wait_until(Duration::from_secs(30), || {
        Command::new(static_bin(X86, "tessera-server"))
            .arg("--socket-path")
            .arg(&server.admin)
            .arg("healthcheck")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        healthy,
        "the static server with disk keys never became healthy"
    );
}

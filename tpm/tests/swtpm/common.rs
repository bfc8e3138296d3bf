//! The simulator harness: two provisioned swtpm states ("a" and "b", two different
//! TPMs with two different local CAs) are made once with scripts/swtpm.sh and kept
//! under the target folder; every test starts its own simulator on a fresh copy, so
//! tests run in parallel and never see each other's keys. Copies of one template are
//! the same TPM (same seeds), which is what "a second TPM" must not be: tests that
//! need two TPMs take one copy of each template.
//!
//! The tests need swtpm, swtpm-tools and tpm2-tools. Without them they fail, saying
//! what to install; they never skip.

#![allow(dead_code, reason = "each test module uses a part of these helpers")]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use tessera_tpm::verifier::chain::{CaPool, load_pem_file};
use tessera_tpm::{Backend, Tcti, Tpm};

thread_local! {
    static BACKEND: std::cell::Cell<Option<Backend>> = const { std::cell::Cell::new(None) };
}

/// The backend the running test exercises (set by [`per_backend!`]'s variants).
pub(crate) fn backend() -> Backend {
    BACKEND.with(|b| b.get()).unwrap_or_default()
}

/// Runs `test` with `backend` as the one [`Sim::tpm`] opens.
pub(crate) fn run_with(backend: Backend, test: fn()) {
    BACKEND.with(|b| b.set(Some(backend)));
    test();
}

/// One test function, run once per backend built in: `name::esapi` and
/// `name::native`, so a failure names the backend it failed with.
macro_rules! per_backend {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[cfg(feature = "esapi")]
                #[test]
                fn esapi() {
                    crate::common::run_with(tessera_tpm::Backend::Esapi, super::$name);
                }
                #[cfg(feature = "native")]
                #[test]
                fn native() {
                    crate::common::run_with(tessera_tpm::Backend::Native, super::$name);
                }
            }
        )*
    };
}
pub(crate) use per_backend;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crate folder has a parent")
        .to_owned()
}

fn script() -> PathBuf {
    repo_root().join("scripts/swtpm.sh")
}

fn run_script(args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run bash {}: {e}", script().display()));
    if !out.status.success() {
        panic!(
            "scripts/swtpm.sh {} failed (these tests need swtpm, swtpm-tools and tpm2-tools: apt-get install swtpm swtpm-tools tpm2-tools):\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.strip_prefix("export ").unwrap_or(l).split_once('=')?;
            Some((k.to_owned(), v.trim_matches('\'').to_owned()))
        })
        .collect()
}

/// The stamp a template carries: a template made by another version of the script
/// is made again.
fn script_stamp() -> String {
    let body = std::fs::read(script()).expect("read scripts/swtpm.sh");
    tessera_tpm::wire::hex(&tessera_tpm::wire::HashAlg::Sha256.digest(&[&body]))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Which provisioned TPM to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Which {
    A,
    B,
}

fn template(which: Which) -> &'static Path {
    static A: OnceLock<PathBuf> = OnceLock::new();
    static B: OnceLock<PathBuf> = OnceLock::new();
    let (cell, name) = match which {
        Which::A => (&A, "a"),
        Which::B => (&B, "b"),
    };
    cell.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("swtpm-templates");
        let dir = root.join(name);
        let marker = dir.join("ready");
        let stamp = script_stamp();
        let ready = || std::fs::read_to_string(&marker).ok().as_deref() == Some(stamp.as_str());
        if ready() {
            return dir;
        }
        // The test runner may run every test in its own process: one of them
        // provisions, the others wait on the lock and then find the template ready.
        // Two swtpm_setup runs on one state folder make one of them hang for good.
        std::fs::create_dir_all(&root).unwrap();
        let lock = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join(format!("{name}.lock")))
            .unwrap();
        lock.lock().unwrap();
        if ready() {
            return dir;
        }
        // Made aside and moved into place whole, so that no process ever copies a
        // half-made template.
        let staging = root.join(format!("{name}.staging"));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).unwrap();
        let started = std::time::Instant::now();
        run_script(&["start", staging.to_str().unwrap()]);
        run_script(&["stop", staging.to_str().unwrap()]);
        std::fs::write(staging.join("ready"), &stamp).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&staging, &dir).unwrap();
        eprintln!(
            "provisioned swtpm template {name} in {:?}",
            started.elapsed()
        );
        drop(lock);
        dir
    })
}

/// A private copy of a template's TPM state (its `state` folder inside), for a
/// simulator the test starts itself.
pub(crate) fn state_copy(which: Which) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&template(which).join("state"), &dir.path().join("state"));
    dir
}

/// A running simulator on a private copy of a template; stopped when dropped.
pub(crate) struct Sim {
    dir: tempfile::TempDir,
    pub env: HashMap<String, String>,
    pub which: Which,
    /// The backend [`Sim::tpm`] opens.
    pub backend: Backend,
}

impl Sim {
    pub(crate) fn start(which: Which) -> Sim {
        let src = template(which);
        let dir = tempfile::tempdir().unwrap();
        for sub in ["state", "ca", "certs"] {
            copy_dir(&src.join(sub), &dir.path().join(sub));
        }
        let env = parse_env(&run_script(&["start", dir.path().to_str().unwrap()]));
        Sim {
            dir,
            env,
            which,
            backend: backend(),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn tcti(&self) -> Tcti {
        self.env["TPM_TCTI"].parse().unwrap()
    }

    pub(crate) fn tpm(&self) -> Arc<Tpm> {
        self.tpm_with(self.backend)
    }

    /// A handle on the simulator through `backend`.
    pub(crate) fn tpm_with(&self, backend: Backend) -> Arc<Tpm> {
        Arc::new(
            Tpm::open_with(backend, &self.tcti())
                .unwrap_or_else(|e| panic!("open the simulator with the {backend} backend: {e}")),
        )
    }

    /// Stops and starts the simulator on the same state (a reboot).
    pub(crate) fn restart(&mut self) {
        self.env = parse_env(&run_script(&["restart", self.dir.path().to_str().unwrap()]));
    }

    /// Stops the simulator (its state stays).
    pub(crate) fn stop(&mut self) {
        run_script(&["stop", self.dir.path().to_str().unwrap()]);
    }

    /// Starts the simulator again after [`Sim::stop`], on the same state.
    pub(crate) fn start_again(&mut self) {
        self.env = parse_env(&run_script(&["start", self.dir.path().to_str().unwrap()]));
    }

    /// The local CA's root certificate (DER).
    pub(crate) fn ek_root(&self) -> Vec<u8> {
        load_pem_file(Path::new(&self.env["TPM_EK_CA_ROOT"]))
            .unwrap()
            .remove(0)
    }

    /// The local CA's issuing certificate (DER), which signs the EK certificates.
    pub(crate) fn ek_intermediate(&self) -> Vec<u8> {
        load_pem_file(Path::new(&self.env["TPM_EK_CA_INTERMEDIATE"]))
            .unwrap()
            .remove(0)
    }

    /// Trust for this simulator's EK certificates: its root as the anchor, its
    /// issuing CA as an intermediate.
    pub(crate) fn ek_pool(&self) -> CaPool {
        CaPool::new(vec![self.ek_root()])
            .unwrap()
            .with_intermediates(vec![self.ek_intermediate()])
            .unwrap()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["stop", self.dir.path().to_str().unwrap_or("")])
            .output();
    }
}

/// A vendor CA for DevIDs, written as PEM files the way an operator would hold it.
pub(crate) struct VendorCaFiles {
    pub dir: tempfile::TempDir,
    pub cert_der: Vec<u8>,
}

impl VendorCaFiles {
    pub(crate) fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = p.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("ca.key"), key.serialize_pem()).unwrap();
        VendorCaFiles {
            dir,
            cert_der: cert.der().to_vec(),
        }
    }

    pub(crate) fn ca(&self) -> tessera_tpm::provision::VendorCa {
        tessera_tpm::provision::VendorCa::from_files(
            &self.dir.path().join("ca.crt"),
            &self.dir.path().join("ca.key"),
        )
        .unwrap()
    }

    pub(crate) fn pool(&self) -> CaPool {
        CaPool::new(vec![self.cert_der.clone()]).unwrap()
    }
}

/// Serialises through JSON, as the adapters will.
pub(crate) fn via_json<T: serde::Serialize + serde::de::DeserializeOwned>(value: &T) -> T {
    serde_json::from_str(&serde_json::to_string(value).unwrap()).unwrap()
}

//! Shared set-up for the SoftHSM2 tests: tokens in a temporary directory made by
//! scripts/softhsm.sh, the process pointed at them, and OpenSSL as an independent
//! judge of signatures.
//!
//! SoftHSM2 reads SOFTHSM2_CONF once, in C_Initialize, for the whole process; so
//! each test binary creates every token it needs up front and sets the variable
//! once, before any test touches the module.

#![allow(
    dead_code,
    reason = "each test binary uses its own part of these helpers"
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use tessera_core::key::SignatureScheme;
use tessera_hsm::Pkcs11Config;

pub(crate) const PIN: &str = "4711-tessera";

/// What scripts/softhsm.sh reported for the tokens of this test binary.
pub(crate) struct Env {
    pub dir: PathBuf,
    pub module: PathBuf,
    pub pin_file: PathBuf,
    /// Token label -> serial.
    pub tokens: Vec<(String, String)>,
    _tmp: tempfile::TempDir,
}

impl Env {
    pub(crate) fn serial(&self, label: &str) -> &str {
        &self
            .tokens
            .iter()
            .find(|(l, _)| l == label)
            .expect("token made by setup")
            .1
    }

    pub(crate) fn config(&self, label: &str) -> Pkcs11Config {
        Pkcs11Config {
            module: Some(self.module.clone()),
            token_label: Some(label.to_owned()),
            pin_file: Some(self.pin_file.clone()),
            ..Pkcs11Config::default()
        }
    }

    pub(crate) fn tokens_dir(&self) -> PathBuf {
        self.dir.join("tokens")
    }
}

pub(crate) fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/softhsm.sh")
}

fn exports(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Creates `labels` (all with [`PIN`]) once per process and points SoftHSM2 at them.
pub(crate) fn setup(labels: &[&str]) -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        // The manager's own account of recoveries, shown with a failing test's output.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "tessera_hsm=info".into()),
            )
            .with_test_writer()
            .try_init();
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("softhsm");
        let mut tokens = Vec::new();
        let mut module = PathBuf::new();
        let mut pin_file = PathBuf::new();
        let mut conf = String::new();
        for label in labels {
            let out = Command::new("bash")
                .arg(script())
                .args(["init"])
                .arg(&dir)
                .args([label, PIN])
                .output()
                .expect("run scripts/softhsm.sh");
            assert!(
                out.status.success(),
                "scripts/softhsm.sh init failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let vars = exports(&String::from_utf8_lossy(&out.stdout));
            let get = |k: &str| {
                vars.iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_else(|| panic!("softhsm.sh printed no {k}"))
            };
            conf = get("SOFTHSM2_CONF");
            module = PathBuf::from(get("PKCS11_MODULE"));
            pin_file = PathBuf::from(get("PKCS11_PIN_FILE"));
            tokens.push((label.to_string(), get("PKCS11_TOKEN_SERIAL")));
        }
        set_env(&conf, &dir);
        Env {
            dir,
            module,
            pin_file,
            tokens,
            _tmp: tmp,
        }
    })
}

#[expect(
    unsafe_code,
    reason = "SoftHSM2 only reads its configuration from the environment; this runs once, inside OnceLock, before any test thread uses the module or C code"
)]
fn set_env(conf: &str, dir: &Path) {
    let creds = dir.join("credentials");
    std::fs::create_dir_all(&creds).expect("credentials dir");
    let cred = creds.join("hsm-pin");
    std::fs::write(&cred, PIN).expect("credential");
    std::fs::set_permissions(&cred, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("credential mode");
    // SAFETY: see the reason above; the other test threads are blocked in the
    // OnceLock until this returns.
    unsafe {
        std::env::set_var("SOFTHSM2_CONF", conf);
        std::env::set_var("CREDENTIALS_DIRECTORY", &creds);
        std::env::set_var("TESSERA_TEST_HSM_PIN", PIN);
    }
}

/// Verifies `sig` over `msg` with `openssl dgst`, given the key as SPKI DER.
pub(crate) fn openssl_verify(spki: &[u8], scheme: SignatureScheme, msg: &[u8], sig: &[u8]) -> bool {
    let dir = tempfile::tempdir().expect("tempdir");
    let der = dir.path().join("pub.der");
    let pem = dir.path().join("pub.pem");
    let m = dir.path().join("msg");
    let s = dir.path().join("sig");
    std::fs::write(&der, spki).expect("write the public key");
    std::fs::write(&m, msg).expect("write the message");
    std::fs::write(&s, sig).expect("write the signature");
    let conv = Command::new("openssl")
        .args(["pkey", "-pubin", "-inform", "DER", "-in"])
        .arg(&der)
        .arg("-out")
        .arg(&pem)
        .output()
        .expect("run openssl");
    assert!(
        conv.status.success(),
        "openssl cannot read the public key: {}",
        String::from_utf8_lossy(&conv.stderr)
    );
    let digest = match scheme.hash() {
        tessera_core::key::HashAlgorithm::Sha256 => "-sha256",
        tessera_core::key::HashAlgorithm::Sha384 => "-sha384",
        tessera_core::key::HashAlgorithm::Sha512 => "-sha512",
    };
    let mut cmd = Command::new("openssl");
    cmd.args(["dgst", digest, "-verify"]).arg(&pem);
    if scheme.is_pss() {
        cmd.args([
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:digest",
        ]);
    }
    cmd.arg("-signature").arg(&s).arg(&m);
    let out = cmd.output().expect("run openssl dgst");
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Verified OK")
}

/// Runs pkcs11-tool against the token and returns its standard output.
pub(crate) fn pkcs11_tool(env: &Env, label: &str, args: &[&str]) -> String {
    let out = Command::new("pkcs11-tool")
        .arg("--module")
        .arg(&env.module)
        .args(["--token-label", label, "--login", "--pin", PIN])
        .args(args)
        .output()
        .expect("run pkcs11-tool (apt-get install opensc)");
    assert!(
        out.status.success(),
        "pkcs11-tool {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One object of a `pkcs11-tool --list-objects` listing: its heading line and its
/// `name: value` fields.
#[derive(Debug)]
pub(crate) struct ListedObject {
    pub heading: String,
    pub fields: Vec<(String, String)>,
}

impl ListedObject {
    pub(crate) fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A comma-separated field (`Usage`, `Access`) as a list.
    pub(crate) fn list(&self, name: &str) -> Vec<String> {
        self.field(name)
            .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect())
            .unwrap_or_default()
    }
}

/// The objects labelled `label` in a listing (pkcs11-tool ignores --label when listing).
pub(crate) fn listed_objects(listing: &str, label: &str) -> Vec<ListedObject> {
    let mut objects: Vec<ListedObject> = Vec::new();
    for line in listing.lines() {
        if !line.starts_with(char::is_whitespace) && !line.trim().is_empty() {
            objects.push(ListedObject {
                heading: line.trim().to_owned(),
                fields: Vec::new(),
            });
        } else if let (Some(obj), Some((name, value))) = (objects.last_mut(), line.split_once(':'))
        {
            obj.fields
                .push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    objects.retain(|o| o.field("label") == Some(label));
    objects
}

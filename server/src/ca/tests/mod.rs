//! Unit tests of the CA manager against a real SQLite journal, a key store that can
//! lose keys or stop answering, and a clock that moves only when told.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

mod chains;
mod lost_keys;
mod rotation;
mod servers;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tessera_core::clock::{ManualClock, SharedClock};
use tessera_core::key::{Key, KeyError, KeyManager, KeyType, SignatureScheme, SoftwareKey};
use tessera_core::x509::{self, Issuer};
use tessera_core::{SpiffeId, TrustDomain};

use super::{CaError, CaManager, CaSettings};
use crate::datastore::sqlite::SqliteDatastore;
use crate::datastore::{CaKind, CaRecord, Datastore};

/// The time the tests start at: a fixed instant, so that nothing can read the
/// system clock unnoticed.
pub(super) const T0: u64 = 1_700_000_000;

/// What the test key store does when asked for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// The key objects are gone (deleted from the token).
    Deleted,
    /// The token does not answer.
    Outage,
}

/// A key manager whose keys can be deleted behind the server's back or made
/// unreachable, as a token's can.
#[derive(Debug, Default)]
pub(super) struct FaultyKm {
    keys: Mutex<BTreeMap<String, Arc<SoftwareKey>>>,
    faults: Mutex<BTreeMap<String, Fault>>,
    outage: Mutex<bool>,
    /// Keys made from now on sign wrongly (a token with a broken mechanism).
    broken_new_keys: Mutex<bool>,
    broken: Mutex<BTreeSet<String>>,
}

impl FaultyKm {
    fn fault(&self, id: &str) -> Fault {
        if *self.outage.lock().unwrap() {
            return Fault::Outage;
        }
        *self.faults.lock().unwrap().get(id).unwrap_or(&Fault::None)
    }
    pub(super) fn delete_behind_the_back(&self, id: &str) {
        self.faults
            .lock()
            .unwrap()
            .insert(id.to_owned(), Fault::Deleted);
        self.keys.lock().unwrap().remove(id);
    }
    pub(super) fn set_outage(&self, on: bool) {
        *self.outage.lock().unwrap() = on;
    }
    pub(super) fn holds(&self, id: &str) -> bool {
        self.keys.lock().unwrap().contains_key(id)
    }
    pub(super) fn key_count(&self) -> usize {
        self.keys.lock().unwrap().len()
    }
    pub(super) fn break_new_keys(&self) {
        *self.broken_new_keys.lock().unwrap() = true;
    }
}

#[derive(Debug)]
struct FaultyKey {
    id: String,
    inner: Arc<SoftwareKey>,
    km: Arc<FaultyKm>,
}

impl Key for FaultyKey {
    fn key_type(&self) -> KeyType {
        self.inner.key_type()
    }
    fn public_key_der(&self) -> &[u8] {
        self.inner.public_key_der()
    }
    fn sign(&self, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match self.km.fault(&self.id) {
            Fault::None if self.km.broken.lock().unwrap().contains(&self.id) => {
                // A well-formed signature over other bytes.
                self.inner.sign(scheme, &[message, b"!"].concat())
            }
            Fault::None => self.inner.sign(scheme, message),
            Fault::Deleted => Err(KeyError::NotFound(self.id.clone())),
            Fault::Outage => Err(KeyError::Unavailable("token removed".into())),
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct FaultyKmHandle(pub(super) Arc<FaultyKm>);

impl FaultyKmHandle {
    fn check_outage(&self) -> Result<(), KeyError> {
        if *self.0.outage.lock().unwrap() {
            return Err(KeyError::Unavailable("token removed".into()));
        }
        Ok(())
    }
}

impl KeyManager for FaultyKmHandle {
    fn name(&self) -> &'static str {
        "pkcs11"
    }
    fn generate_key(&self, id: &str, kt: KeyType) -> Result<Arc<dyn Key>, KeyError> {
        self.check_outage()?;
        let k = Arc::new(SoftwareKey::generate(kt)?);
        if *self.0.broken_new_keys.lock().unwrap() {
            self.0.broken.lock().unwrap().insert(id.to_owned());
        }
        self.0.keys.lock().unwrap().insert(id.to_owned(), k.clone());
        self.0.faults.lock().unwrap().remove(id);
        Ok(Arc::new(FaultyKey {
            id: id.to_owned(),
            inner: k,
            km: self.0.clone(),
        }))
    }
    fn get_key(&self, id: &str) -> Result<Option<Arc<dyn Key>>, KeyError> {
        self.check_outage()?;
        Ok(self.0.keys.lock().unwrap().get(id).map(|k| {
            Arc::new(FaultyKey {
                id: id.to_owned(),
                inner: k.clone(),
                km: self.0.clone(),
            }) as Arc<dyn Key>
        }))
    }
    fn list_keys(&self) -> Result<Vec<String>, KeyError> {
        self.check_outage()?;
        Ok(self.0.keys.lock().unwrap().keys().cloned().collect())
    }
    fn delete_key(&self, id: &str) -> Result<(), KeyError> {
        self.check_outage()?;
        self.0.keys.lock().unwrap().remove(id);
        Ok(())
    }
}

pub(super) fn settings(ttl: Duration) -> CaSettings {
    CaSettings {
        trust_domain: TrustDomain::new("example.org").unwrap(),
        ca_ttl: ttl,
        ca_key_type: KeyType::EcP256,
        jwt_key_type: KeyType::EcP256,
        refresh_hint: Duration::from_secs(60),
        upstream: None,
        jwt_issuer: None,
        server_id: "test-server".into(),
        propagation: Duration::from_secs(65),
    }
}

/// A journal, a faulty key store and a manual clock, for one test.
pub(super) struct Setup {
    _dir: tempfile::TempDir,
    pub ds: Arc<dyn Datastore>,
    pub km: Arc<FaultyKm>,
    pub clock: Arc<ManualClock>,
}

impl Setup {
    pub(super) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ds: Arc<dyn Datastore> =
            Arc::new(SqliteDatastore::open(&dir.path().join("ds.sqlite3")).unwrap());
        Self {
            _dir: dir,
            ds,
            km: Arc::new(FaultyKm::default()),
            clock: ManualClock::at_unix(T0),
        }
    }

    pub(super) fn shared_clock(&self) -> SharedClock {
        self.clock.clone()
    }

    /// Starts a CA manager on the faulty key store.
    pub(super) async fn start(&self, s: CaSettings) -> Result<Arc<CaManager>, CaError> {
        self.start_with(s, Arc::new(FaultyKmHandle(self.km.clone())))
            .await
    }

    /// Starts a CA manager on another key manager.
    pub(super) async fn start_with(
        &self,
        s: CaSettings,
        km: Arc<dyn KeyManager>,
    ) -> Result<Arc<CaManager>, CaError> {
        CaManager::start(s, km, self.ds.clone(), self.shared_clock()).await
    }

    /// The time on the manual clock, in seconds after [`T0`].
    pub(super) fn set(&self, secs_after_t0: u64) {
        self.clock
            .set(SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + secs_after_t0));
    }

    pub(super) async fn records(&self, kind: CaKind) -> Vec<CaRecord> {
        records(&self.ds, kind).await
    }
}

pub(super) async fn records(ds: &Arc<dyn Datastore>, kind: CaKind) -> Vec<CaRecord> {
    let mut r: Vec<CaRecord> = ds
        .list_ca_records()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.kind == kind)
        .collect();
    r.sort_by_key(|r| r.created_at);
    r
}

fn workload_id() -> SpiffeId {
    "spiffe://example.org/workload".parse().unwrap()
}

/// Signs an SVID on a blocking thread (as the server does) and checks it against
/// the CA's current bundle at the CA's time; returns the issuer's subject.
pub(super) async fn sign_and_verify(ca: &Arc<CaManager>) -> Result<String, CaError> {
    let key = SoftwareKey::generate(KeyType::EcP256).unwrap();
    let spki = key.public_key_der().to_vec();
    let c = ca.clone();
    let chain = tokio::task::spawn_blocking(move || {
        c.sign_x509_svid(&workload_id(), &spki, &[], Duration::from_secs(60))
    })
    .await
    .unwrap()?;
    let id = x509::verify_svid_chain(&chain, &ca.bundle(), ca.clock.now())
        .expect("an SVID signed after the event verifies against the bundle");
    assert_eq!(id, workload_id());
    Ok(x509::cert_info(&chain[0]).unwrap().issuer)
}

/// Mints a JWT-SVID, checks it against the CA's current bundle at the CA's time, and
/// returns its key ID.
pub(super) async fn jwt_validates(ca: &Arc<CaManager>) -> String {
    let c = ca.clone();
    let svid = tokio::task::spawn_blocking(move || {
        c.sign_jwt_svid(&workload_id(), &["db".to_owned()], Duration::from_secs(60))
    })
    .await
    .unwrap()
    .unwrap();
    let bundle = ca.bundle();
    tessera_core::jwt::validate_jwt_svid(
        &svid.token,
        |_| Some(bundle.clone()),
        &["db".to_owned()],
        ca.clock.unix(),
    )
    .expect("a JWT-SVID minted after the event validates against the bundle");
    svid.token
        .split('.')
        .next()
        .and_then(|h| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h)
                .ok()
        })
        .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h).ok())
        .and_then(|h| h["kid"].as_str().map(str::to_owned))
        .unwrap()
}

/// An upstream root made with rcgen, with a SPIFFE ID and the given constraints.
pub(super) fn upstream_root(path_len: Option<u8>) -> Arc<Issuer> {
    let kp = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(match path_len {
        Some(n) => rcgen::BasicConstraints::Constrained(n),
        None => rcgen::BasicConstraints::Unconstrained,
    });
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    p.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://example.org".try_into().unwrap(),
    )];
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "test upstream root");
    // Valid around T0 (the tests' time) and around now (the probe tests' time).
    p.not_before = time::OffsetDateTime::from_unix_timestamp(T0 as i64 - 86_400).unwrap();
    p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(365);
    let cert = p.self_signed(&kp).unwrap();
    let key = SoftwareKey::from_pkcs8(&kp.serialize_der()).unwrap();
    Arc::new(Issuer::new(cert.der().to_vec(), Arc::new(key)).unwrap())
}

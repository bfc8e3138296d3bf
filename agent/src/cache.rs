//! The agent's cache: the entries it is authorized for, the X509-SVID it holds for each,
//! the bundles, and JWT-SVIDs by audience. Readers (the Workload API streams) get an
//! immutable snapshot and are woken whenever a new one is published.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tessera_core::key::SoftwareKey;
use tessera_core::{Bundle, RegistrationEntry, SelectorSet, TrustDomain};
use tokio::sync::watch;

/// An X509-SVID held for one entry.
#[derive(Debug, Clone)]
pub struct Svid {
    pub entry: Arc<RegistrationEntry>,
    /// DER, leaf first.
    pub chain: Arc<Vec<Vec<u8>>>,
    pub key: Arc<SoftwareKey>,
    pub not_before: i64,
    pub not_after: i64,
    /// When to ask for the next one: half-life with jitter.
    pub rotate_at: i64,
    /// The entry revision this SVID was signed for.
    pub revision: u64,
}

/// Everything a Workload API stream needs, at one instant.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Grows with every publication.
    pub generation: u64,
    /// Whether the entries have been synced with the server at least once: before
    /// that, "no entry matches" means "not known yet", not "no identity".
    pub synced: bool,
    pub bundle: Option<Arc<Bundle>>,
    pub federated: BTreeMap<TrustDomain, Arc<Bundle>>,
    /// Every entry held, sorted by ID.
    pub entries: Vec<Arc<RegistrationEntry>>,
    /// SVIDs by entry ID.
    pub svids: BTreeMap<String, Svid>,
}

impl Snapshot {
    /// The entries whose selectors are all among the workload's.
    pub fn matching_entries<'a>(
        &'a self,
        workload: &'a SelectorSet,
    ) -> impl Iterator<Item = &'a Arc<RegistrationEntry>> + 'a {
        self.entries
            .iter()
            .filter(move |e| tessera_core::selector::matches(&e.selectors, workload))
    }

    /// The SVIDs the workload is entitled to, in a stable order (entry ID).
    pub fn svids_for(&self, workload: &SelectorSet) -> Vec<&Svid> {
        self.matching_entries(workload)
            .filter_map(|e| self.svids.get(&e.id))
            .collect()
    }
}

/// A cached JWT-SVID.
#[derive(Debug, Clone)]
pub struct CachedJwt {
    pub token: String,
    pub issued_at: i64,
    pub expires_at: i64,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Cache {
    tx: watch::Sender<Arc<Snapshot>>,
    jwt: Mutex<HashMap<(String, Vec<String>), CachedJwt>>,
}

impl Default for Cache {
    fn default() -> Self {
        Self::new()
    }
}

impl Cache {
    pub fn new() -> Self {
        Self {
            tx: watch::channel(Arc::new(Snapshot::default())).0,
            jwt: Mutex::new(HashMap::new()),
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// A receiver woken on every publication.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// Publishes a new snapshot built from the previous one.
    pub fn update(&self, f: impl FnOnce(&Snapshot) -> Snapshot) {
        self.tx.send_modify(|cur| {
            let mut next = f(cur);
            next.generation = cur.generation + 1;
            *cur = Arc::new(next);
        });
    }

    /// A JWT-SVID still in the first half of its life.
    pub fn jwt(&self, entry_id: &str, audience: &[String], now: i64) -> Option<CachedJwt> {
        let mut aud = audience.to_vec();
        aud.sort();
        let map = self.jwt.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(entry_id.to_owned(), aud))
            .filter(|j| now < j.issued_at + (j.expires_at - j.issued_at) / 2)
            .cloned()
    }

    pub fn put_jwt(&self, entry_id: &str, audience: &[String], jwt: CachedJwt) {
        let mut aud = audience.to_vec();
        aud.sort();
        let mut map = self.jwt.lock().unwrap_or_else(|p| p.into_inner());
        let now = tessera_core::x509::unix_seconds(std::time::SystemTime::now());
        // Keep the map bounded by dropping what has expired.
        if map.len() > 10_000 {
            map.retain(|_, j| j.expires_at > now);
        }
        map.insert((entry_id.to_owned(), aud), jwt);
    }

    /// Drops JWT-SVIDs of entries that are gone.
    pub fn forget_jwts_except(&self, keep: &std::collections::HashSet<String>) {
        self.jwt
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(id, _), _| keep.contains(id));
    }
}

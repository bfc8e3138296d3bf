//! The agent's cache: the entries it is authorized for, the X509-SVID it holds for each,
//! the bundles, and JWT-SVIDs by audience. Readers (the Workload API streams) get an
//! immutable snapshot and are woken whenever a new one is published.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tessera_core::clock::{SharedClock, SystemClock};
use tessera_core::key::{Key, SoftwareKey};
use tessera_core::{Bundle, RegistrationEntry, SelectorSet, TrustDomain, WorkloadKey};
use tessera_tpm::TpmWorkloadKey;
use tokio::sync::watch;

/// The key of an X509-SVID: where it was born decides how it is served.
#[derive(Debug, Clone)]
pub enum SvidKey {
    /// A software key, served as PKCS#8 by the SPIFFE Workload API.
    Software(Arc<SoftwareKey>),
    /// A key in the agent's TPM (entry `workload_key = tpm`): the blob and its
    /// authorization value (zeroized on drop), served as a TSS2 key file by
    /// `tessera.local.v1.TpmWorkloadKeys` only.
    Tpm(Arc<TpmWorkloadKey>),
}

impl SvidKey {
    /// The key, to sign CSRs with.
    pub fn as_key(&self) -> Arc<dyn Key> {
        match self {
            SvidKey::Software(k) => k.clone(),
            SvidKey::Tpm(k) => k.clone(),
        }
    }

    /// The SubjectPublicKeyInfo, DER.
    pub fn public_key_der(&self) -> &[u8] {
        match self {
            SvidKey::Software(k) => k.public_key_der(),
            SvidKey::Tpm(k) => k.public_key_der(),
        }
    }

    /// Where it lives, as the entry field spells it.
    pub fn kind(&self) -> WorkloadKey {
        match self {
            SvidKey::Software(_) => WorkloadKey::Software,
            SvidKey::Tpm(_) => WorkloadKey::Tpm,
        }
    }
}

/// An X509-SVID held for one entry.
#[derive(Debug, Clone)]
pub struct Svid {
    pub entry: Arc<RegistrationEntry>,
    /// DER, leaf first.
    pub chain: Arc<Vec<Vec<u8>>>,
    pub key: SvidKey,
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

    /// [`Snapshot::svids_for`], of the entries whose key is born as `kind`.
    pub fn svids_of_kind(&self, workload: &SelectorSet, kind: WorkloadKey) -> Vec<&Svid> {
        self.matching_entries(workload)
            .filter(|e| e.workload_key == kind)
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

impl CachedJwt {
    /// Whether it is still in the first half of its life at `now` (after that a
    /// fresh one is minted, as SPIRE does).
    fn fresh(&self, now: i64) -> bool {
        now < self.issued_at + (self.expires_at - self.issued_at) / 2
    }
}

/// At most this many JWT-SVIDs are cached. Each distinct (entry, audience set) that
/// a workload asks for is one; past the limit the least recently used go.
pub const JWT_CACHE_MAX_ENTRIES: usize = 4096;

/// At most this many bytes of cached tokens and their keys. With audiences bounded
/// by [`tessera_core::jwt::MAX_AUDIENCES`] and
/// [`tessera_core::jwt::MAX_AUDIENCE_LEN`] one token is at most about 23 KiB.
pub const JWT_CACHE_MAX_BYTES: usize = 8 << 20;

/// What one cached token is counted as besides its strings (map slot, vectors).
const JWT_ENTRY_OVERHEAD: usize = 128;

type JwtKey = (String, Vec<String>);

#[derive(Debug)]
struct JwtSlot {
    jwt: CachedJwt,
    size: usize,
    /// Last use, from [`JwtCache::tick`].
    used: u64,
}

/// The JWT-SVID cache, bounded by [`JWT_CACHE_MAX_ENTRIES`] and
/// [`JWT_CACHE_MAX_BYTES`].
#[derive(Debug, Default)]
struct JwtCache {
    map: HashMap<JwtKey, JwtSlot>,
    bytes: usize,
    tick: u64,
}

impl JwtCache {
    fn key(entry_id: &str, audience: &[String]) -> JwtKey {
        let mut aud = audience.to_vec();
        aud.sort();
        aud.dedup();
        (entry_id.to_owned(), aud)
    }

    fn size_of(key: &JwtKey, jwt: &CachedJwt) -> usize {
        key.0.len()
            + key.1.iter().map(String::len).sum::<usize>()
            + jwt.token.len()
            + JWT_ENTRY_OVERHEAD
    }

    fn get(&mut self, key: &JwtKey, now: i64) -> Option<CachedJwt> {
        self.tick += 1;
        let tick = self.tick;
        let slot = self.map.get_mut(key)?;
        if !slot.jwt.fresh(now) {
            return None;
        }
        slot.used = tick;
        Some(slot.jwt.clone())
    }

    fn remove(&mut self, key: &JwtKey) {
        if let Some(old) = self.map.remove(key) {
            self.bytes -= old.size;
        }
    }

    fn put(&mut self, key: JwtKey, jwt: CachedJwt, now: i64) {
        self.remove(&key);
        self.tick += 1;
        let size = Self::size_of(&key, &jwt);
        self.bytes += size;
        self.map.insert(
            key,
            JwtSlot {
                jwt,
                size,
                used: self.tick,
            },
        );
        if self.map.len() > JWT_CACHE_MAX_ENTRIES || self.bytes > JWT_CACHE_MAX_BYTES {
            self.shrink(now);
        }
    }

    /// Drops what will not be served again, then the least recently used, down to
    /// seven eighths of the limits (so that the next insertions do not each pay for
    /// a pass over the cache).
    fn shrink(&mut self, now: i64) {
        let bytes = &mut self.bytes;
        self.map.retain(|_, s| {
            let keep = s.jwt.fresh(now);
            if !keep {
                *bytes -= s.size;
            }
            keep
        });
        let max_entries = JWT_CACHE_MAX_ENTRIES / 8 * 7;
        let max_bytes = JWT_CACHE_MAX_BYTES / 8 * 7;
        if self.map.len() <= max_entries && self.bytes <= max_bytes {
            return;
        }
        let mut by_use: Vec<(u64, JwtKey)> =
            self.map.iter().map(|(k, s)| (s.used, k.clone())).collect();
        by_use.sort_unstable_by_key(|(used, _)| *used);
        for (_, key) in by_use {
            if self.map.len() <= max_entries && self.bytes <= max_bytes {
                break;
            }
            self.remove(&key);
        }
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct Cache {
    tx: watch::Sender<Arc<Snapshot>>,
    jwt: Mutex<JwtCache>,
    /// Judges which cached JWT-SVIDs are past use when the cache is full.
    clock: SharedClock,
}

impl Default for Cache {
    fn default() -> Self {
        Self::new()
    }
}

impl Cache {
    /// An empty cache on the system clock.
    pub fn new() -> Self {
        Self::with_clock(SystemClock::shared())
    }

    /// An empty cache on `clock`.
    pub fn with_clock(clock: SharedClock) -> Self {
        Self {
            tx: watch::channel(Arc::new(Snapshot::default())).0,
            jwt: Mutex::new(JwtCache::default()),
            clock,
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

    fn jwts(&self) -> std::sync::MutexGuard<'_, JwtCache> {
        self.jwt.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A JWT-SVID still in the first half of its life.
    pub fn jwt(&self, entry_id: &str, audience: &[String], now: i64) -> Option<CachedJwt> {
        self.jwts().get(&JwtCache::key(entry_id, audience), now)
    }

    /// Caches a JWT-SVID, evicting the least recently used past the limits.
    pub fn put_jwt(&self, entry_id: &str, audience: &[String], jwt: CachedJwt) {
        let now = self.clock.unix();
        self.jwts().put(JwtCache::key(entry_id, audience), jwt, now);
    }

    /// How many JWT-SVIDs are cached, and their size in bytes as counted against
    /// [`JWT_CACHE_MAX_BYTES`].
    pub fn jwt_usage(&self) -> (usize, usize) {
        let c = self.jwts();
        (c.map.len(), c.bytes)
    }

    /// Drops JWT-SVIDs of entries that are gone.
    pub fn forget_jwts_except(&self, keep: &std::collections::HashSet<String>) {
        let mut c = self.jwts();
        let mut freed = 0;
        c.map.retain(|(id, _), s| {
            let k = keep.contains(id);
            if !k {
                freed += s.size;
            }
            k
        });
        c.bytes -= freed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn jwt(token_len: usize) -> CachedJwt {
        CachedJwt {
            token: "t".repeat(token_len),
            issued_at: NOW - 10,
            expires_at: NOW + 290,
        }
    }

    fn aud(a: String) -> Vec<String> {
        vec![a]
    }

    fn recount(c: &JwtCache) -> usize {
        c.map.values().map(|s| s.size).sum()
    }

    #[test]
    fn audiences_are_a_set() {
        let mut c = JwtCache::default();
        let a = vec!["b".to_string(), "a".to_string(), "a".to_string()];
        c.put(JwtCache::key("e1", &a), jwt(10), NOW);
        let b = vec!["a".to_string(), "b".to_string()];
        assert!(c.get(&JwtCache::key("e1", &b), NOW).is_some());
        assert!(c.get(&JwtCache::key("e2", &b), NOW).is_none());
    }

    #[test]
    fn stale_tokens_are_not_served() {
        let mut c = JwtCache::default();
        let k = JwtCache::key("e1", &aud("a".into()));
        c.put(k.clone(), jwt(10), NOW);
        assert!(c.get(&k, NOW + 139).is_some());
        // Past half of its life: minted again.
        assert!(c.get(&k, NOW + 140).is_none());
    }

    #[test]
    fn the_entry_count_is_bounded_and_recent_use_survives() {
        let mut c = JwtCache::default();
        let hot = JwtCache::key("hot", &aud("a".into()));
        c.put(hot.clone(), jwt(10), NOW);
        for i in 0..3 * JWT_CACHE_MAX_ENTRIES {
            c.put(JwtCache::key("e", &aud(format!("aud-{i}"))), jwt(10), NOW);
            assert!(c.get(&hot, NOW).is_some(), "the token in use was evicted");
            assert!(c.map.len() <= JWT_CACHE_MAX_ENTRIES);
        }
        assert_eq!(c.bytes, recount(&c));
        // The newest are there, the oldest went.
        let newest = JwtCache::key("e", &aud(format!("aud-{}", 3 * JWT_CACHE_MAX_ENTRIES - 1)));
        assert!(c.get(&newest, NOW).is_some());
        assert!(
            c.get(&JwtCache::key("e", &aud("aud-0".into())), NOW)
                .is_none()
        );
    }

    #[test]
    fn the_size_is_bounded() {
        let mut c = JwtCache::default();
        // Tokens as large as the audience limits allow.
        let big = tessera_core::jwt::MAX_AUDIENCES * tessera_core::jwt::MAX_AUDIENCE_LEN * 4 / 3;
        for i in 0..2_000 {
            c.put(JwtCache::key("e", &aud(format!("aud-{i}"))), jwt(big), NOW);
            assert!(c.bytes <= JWT_CACHE_MAX_BYTES, "{} bytes", c.bytes);
        }
        assert_eq!(c.bytes, recount(&c));
        assert!(c.map.len() > 100, "the cache still holds a useful number");
    }

    #[test]
    fn replacing_and_forgetting_keep_the_count_exact() {
        let cache = Cache::new();
        let a = aud("a".into());
        cache.put_jwt("e1", &a, jwt(100));
        cache.put_jwt("e1", &a, jwt(200));
        cache.put_jwt("e2", &a, jwt(300));
        let (n, bytes) = cache.jwt_usage();
        assert_eq!(n, 2);
        assert_eq!(
            bytes,
            (2 + 1 + 200) + (2 + 1 + 300) + 2 * JWT_ENTRY_OVERHEAD
        );
        cache.forget_jwts_except(&["e2".to_string()].into_iter().collect());
        assert_eq!(cache.jwt_usage(), (1, 2 + 1 + 300 + JWT_ENTRY_OVERHEAD));
    }

    #[test]
    fn a_full_cache_drops_what_its_clock_says_is_past_use_before_the_least_recent() {
        // 200 s on: tokens issued at NOW - 10 for 300 s are past half of their life.
        let cache = Cache::with_clock(tessera_core::clock::ManualClock::at_unix(NOW as u64 + 200));
        let a = aud("a".into());
        let fresh = CachedJwt {
            token: "fresh".into(),
            issued_at: NOW + 190,
            expires_at: NOW + 490,
        };
        // Used least recently of all, but the only one still worth serving.
        cache.put_jwt("fresh", &a, fresh);
        for i in 0..JWT_CACHE_MAX_ENTRIES {
            cache.put_jwt("stale", &aud(format!("aud-{i}")), jwt(10));
        }
        assert_eq!(cache.jwt_usage().0, 1);
        assert_eq!(cache.jwt("fresh", &a, NOW + 200).unwrap().token, "fresh");
    }
}

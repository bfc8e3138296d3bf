//! Workload X509-SVIDs: the entries the agent is authorized for (kept current by the
//! sync exchange), an SVID for each (a fresh key, a CSR, the server's signature,
//! checked before use), and rotation at half-life with jitter. Everything learnt is
//! published to the cache as one snapshot.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::Rng;
use tessera_core::key::SoftwareKey;
use tessera_core::x509;
use tessera_core::{Bundle, RegistrationEntry, SpiffeId, TrustDomain, WorkloadKey};
use tessera_proto::agent as pb;
use tokio::time::Instant;

use super::{Agent, AgentError, Op};
use crate::cache::{Snapshot, Svid, SvidKey};
use crate::protocol::sync::{Round, SyncHolder};
use crate::retry::Backoff;

/// Most SVIDs asked for in one call (the server's limit).
const BATCH: usize = 500;

/// Half-life with ±10% jitter: the instant to replace a credential valid in
/// `[not_before, not_after]`. NotBefore is backdated for clock skew, so the life is
/// counted from the moment of issue, or short lifetimes would be "due" at once.
pub fn rotation_time(not_before: i64, not_after: i64) -> i64 {
    rotation_time_at(
        not_before,
        not_after,
        rand::thread_rng().gen_range(0.4..=0.6),
    )
}

/// [`rotation_time`] at fraction `frac` of the life.
fn rotation_time_at(not_before: i64, not_after: i64, frac: f64) -> i64 {
    let issued = (not_before + x509::BACKDATE.as_secs() as i64).min(not_after);
    let life = (not_after - issued).max(1) as f64;
    issued + (life * frac) as i64
}

/// The entries held and their SVIDs: the sync's state, written by one task at a time.
#[derive(Debug, Default)]
pub(super) struct SyncState {
    pub(super) revision: u64,
    pub(super) entries: BTreeMap<String, Arc<RegistrationEntry>>,
    pub(super) svids: BTreeMap<String, Svid>,
    pub(super) bundle_sequence: u64,
    pub(super) federated: BTreeMap<TrustDomain, Arc<Bundle>>,
    /// Entries whose last signing failed: their own backoff and next try.
    pub(super) sign_retry: BTreeMap<String, SignRetry>,
}

#[derive(Debug)]
pub(super) struct SignRetry {
    pub(super) backoff: Backoff,
    pub(super) not_before: Instant,
}

impl SyncState {
    /// Drops the SVIDs of entries that are gone, and any SVID whose entry now names
    /// another SPIFFE ID (it is no longer that workload's identity); whether any went.
    pub(super) fn drop_stale(&mut self) -> bool {
        let before = self.svids.len();
        let SyncState {
            entries,
            svids,
            sign_retry,
            ..
        } = self;
        svids.retain(|id, s| {
            entries
                .get(id)
                .is_some_and(|e| e.spiffe_id == s.entry.spiffe_id)
        });
        sign_retry.retain(|id, _| entries.contains_key(id));
        svids.len() != before
    }

    /// When each entry next needs signing: now if it has no SVID or its entry changed
    /// since, its rotation time otherwise; never before its retry time.
    pub(super) fn sign_times(
        &self,
        now: Instant,
        now_unix: i64,
    ) -> impl Iterator<Item = (&Arc<RegistrationEntry>, Instant)> + '_ {
        self.entries.values().map(move |e| {
            let due_unix = match self.svids.get(&e.id) {
                Some(s) if s.revision == e.revision_number => s.rotate_at,
                _ => now_unix,
            };
            let mut at = now + Duration::from_secs((due_unix - now_unix).max(0) as u64);
            if let Some(r) = self.sign_retry.get(&e.id) {
                at = at.max(r.not_before);
            }
            (e, at)
        })
    }
}

/// The agent's side of a sync: what the server sent goes into [`SyncState`] (the
/// bundle also to the state directory), and `changed` says whether to publish.
struct Receiver<'a> {
    agent: &'a Agent,
    st: &'a mut SyncState,
    changed: bool,
}

impl SyncHolder for Receiver<'_> {
    type Error = AgentError;

    fn revision(&self) -> u64 {
        self.st.revision
    }

    fn set_revision(&mut self, revision: u64) {
        self.st.revision = revision;
    }

    fn bundle_sequence(&self) -> u64 {
        self.st.bundle_sequence
    }

    fn held(&self) -> Vec<(&str, u64)> {
        self.st
            .entries
            .values()
            .map(|e| (e.id.as_str(), e.revision_number))
            .collect()
    }

    fn revision_of(&self, id: &str) -> Option<u64> {
        self.st.entries.get(id).map(|e| e.revision_number)
    }

    fn receive(&mut self, round: Round) -> Result<(), AgentError> {
        let td = &self.agent.cfg.trust_domain;
        if let Some(b) = bundle_from_proto(round.bundle, td) {
            self.agent.state_dir.save_bundle(&b)?;
            self.st.bundle_sequence = b.sequence();
            self.agent.bundle.set(b);
            self.changed = true;
            tracing::info!(sequence = self.st.bundle_sequence, "trust bundle updated");
        }
        let fed: BTreeMap<TrustDomain, Arc<Bundle>> = round
            .federated_bundles
            .into_iter()
            .filter_map(|b| tessera_proto::convert::bundle_from_proto(b).ok())
            .map(|b| (b.trust_domain().clone(), Arc::new(b)))
            .collect();
        let st = &mut *self.st;
        if fed.len() != st.federated.len()
            || fed
                .iter()
                .any(|(k, v)| st.federated.get(k).is_none_or(|o| !o.same_authorities(v)))
        {
            st.federated = fed;
            self.changed = true;
        }
        for p in round.entries {
            match tessera_proto::convert::entry_from_proto(p) {
                // Never hold, so never serve, an identity of the server or an agent.
                Ok(e) if e.spiffe_id.is_reserved() => tracing::error!(
                    entry = %e.id,
                    spiffe_id = %e.spiffe_id,
                    "ignoring an entry the server sent: its SPIFFE ID is in the reserved \
                     namespace /spire"
                ),
                Ok(e) => {
                    st.entries.insert(e.id.clone(), Arc::new(e));
                    self.changed = true;
                }
                Err(e) => tracing::warn!(error = %e, "ignoring an entry the server sent"),
            }
        }
        Ok(())
    }

    fn keep_only(&mut self, listed: &BTreeMap<&str, u64>) {
        let before = self.st.entries.len();
        self.st
            .entries
            .retain(|id, _| listed.contains_key(id.as_str()));
        self.changed |= self.st.entries.len() != before;
    }
}

/// What one signing round did.
#[derive(Debug, Default)]
struct MintOutcome {
    signed: Vec<String>,
    failed: Vec<(Arc<RegistrationEntry>, String)>,
}

impl MintOutcome {
    fn fail_all(&mut self, entries: &[Arc<RegistrationEntry>], why: &str) {
        self.failed
            .extend(entries.iter().map(|e| (e.clone(), why.to_owned())));
    }
}

impl Agent {
    /// One sync: entries and bundles from the server, published at once (entries
    /// gone take their SVIDs with them, whatever happens to signing afterwards).
    /// Signing is separate ([`Agent::sign_due`]).
    pub async fn sync_once(&self) -> Result<(), AgentError> {
        let mut st = self.sync.lock().await;
        let mut rx = Receiver {
            agent: self,
            st: &mut st,
            changed: false,
        };
        crate::protocol::sync::sync(self.server.as_ref(), &mut rx).await?;
        let mut changed = rx.changed;
        changed |= st.drop_stale();
        if changed || !self.cache.snapshot().synced {
            let keep: HashSet<String> = st.entries.keys().cloned().collect();
            self.cache.forget_jwts_except(&keep);
            self.publish(&st);
        }
        let mut status = self.status_mut();
        status.last_sync_ok = Some(self.now());
        status.last_error = None;
        Ok(())
    }

    /// When the next SVID needs signing, if any entry is held.
    pub(super) async fn next_signing(&self) -> Option<Instant> {
        let st = self.sync.lock().await;
        st.sign_times(Instant::now(), self.now())
            .map(|(_, at)| at)
            .min()
    }

    /// Signs SVIDs for the entries that are due (no SVID, due for rotation, or the
    /// entry changed since it was signed) and not backing off, and publishes them.
    /// A failure, of one entry or of a whole batch, backs off those entries only.
    pub async fn sign_due(&self) {
        let mut st = self.sync.lock().await;
        let (t, t_unix) = (Instant::now(), self.now());
        let due: Vec<Arc<RegistrationEntry>> = st
            .sign_times(t, t_unix)
            .filter(|(_, at)| *at <= t)
            .map(|(e, _)| e.clone())
            .collect();
        if due.is_empty() {
            return;
        }
        let outcome = self.mint(&mut st, &due).await;
        let interval = self.cfg.sync_interval;
        for id in &outcome.signed {
            st.sign_retry.remove(id);
        }
        for (entry, _) in &outcome.failed {
            let r = st
                .sign_retry
                .entry(entry.id.clone())
                .or_insert_with(|| SignRetry {
                    backoff: Backoff::for_interval(interval),
                    not_before: t,
                });
            r.not_before = Instant::now() + r.backoff.fail();
        }
        if !outcome.signed.is_empty() {
            tracing::debug!(count = outcome.signed.len(), "SVIDs signed");
            self.publish(&st);
        }
        drop(st);
        if outcome.failed.is_empty() {
            self.succeeded(Op::Sign);
            return;
        }
        // One line per cause, reported once and then counted, so that a signing
        // outage logs a line (then a count), not one per entry per try.
        let mut by_cause: BTreeMap<&str, Vec<&Arc<RegistrationEntry>>> = BTreeMap::new();
        for (entry, cause) in &outcome.failed {
            by_cause.entry(cause.as_str()).or_default().push(entry);
        }
        for (cause, entries) in by_cause {
            self.failed(
                Op::Sign,
                tracing::Level::WARN,
                cause,
                &format!(
                    "{} of {} SVIDs due could not be signed (each retries with backoff; e.g. entry {} for {}): {cause}",
                    entries.len(),
                    due.len(),
                    entries[0].id,
                    entries[0].spiffe_id
                ),
            );
        }
    }

    /// Asks the server to sign `due`, batch by batch; a failed batch does not stop
    /// the next one.
    async fn mint(&self, st: &mut SyncState, due: &[Arc<RegistrationEntry>]) -> MintOutcome {
        let mut out = MintOutcome::default();
        for chunk in due.chunks(BATCH) {
            let kt = self.cfg.workload_key_type;
            let tpm = self.workload_tpm();
            let chunk_owned: Vec<Arc<RegistrationEntry>> = chunk.to_vec();
            // Each entry's key on its own: an entry that asks for a TPM key on an
            // agent without a TPM fails alone.
            let prepared = tokio::task::spawn_blocking(move || {
                chunk_owned
                    .into_iter()
                    .map(|e| {
                        let made = make_key(&e, kt, tpm.as_ref());
                        (e, made)
                    })
                    .collect::<Vec<_>>()
            })
            .await;
            let prepared = match prepared {
                Ok(p) => p,
                Err(e) => {
                    out.fail_all(chunk, &format!("cannot make workload keys: {e}"));
                    continue;
                }
            };
            let mut ready = Vec::with_capacity(prepared.len());
            for (entry, made) in prepared {
                match made {
                    Ok((key, csr)) => ready.push((entry, key, csr)),
                    Err(why) => {
                        tracing::debug!(entry = %entry.id, spiffe_id = %entry.spiffe_id, "no workload key: {why}");
                        out.failed.push((entry, why));
                    }
                }
            }
            if ready.is_empty() {
                continue;
            }
            let prepared = ready;
            let requests = prepared
                .iter()
                .map(|(e, _, csr)| pb::SvidRequest {
                    entry_id: e.id.clone(),
                    csr: csr.clone(),
                })
                .collect();
            let results = match self.server.batch_new_x509_svid(requests).await {
                Ok(r) => r,
                Err(e) => {
                    out.fail_all(chunk, &AgentError::from(e).to_string());
                    continue;
                }
            };
            let mut by_id: BTreeMap<String, pb::SvidResult> = results
                .into_iter()
                .map(|r| (r.entry_id.clone(), r))
                .collect();
            for (entry, key, _) in prepared {
                let Some(r) = by_id.remove(&entry.id) else {
                    out.failed
                        .push((entry, "the server did not answer for this entry".into()));
                    continue;
                };
                let code = r.status.as_ref().map_or(0, |s| s.code);
                if code != 0 || r.cert_chain.is_empty() {
                    let why = r.status.map(|s| s.message).unwrap_or_default();
                    tracing::debug!(entry = %entry.id, spiffe_id = %entry.spiffe_id, "the server refused the SVID: {why}");
                    out.failed
                        .push((entry, format!("the server refused: {why}")));
                    continue;
                }
                match check_svid(
                    &r.cert_chain,
                    &entry.spiffe_id,
                    key.public_key_der(),
                    &self.bundle.get(),
                    self.clock.now(),
                ) {
                    Ok((nb, na)) => {
                        st.svids.insert(
                            entry.id.clone(),
                            Svid {
                                entry: entry.clone(),
                                chain: Arc::new(r.cert_chain),
                                key,
                                not_before: nb,
                                not_after: na,
                                rotate_at: rotation_time(nb, na),
                                revision: entry.revision_number,
                            },
                        );
                        out.signed.push(entry.id.clone());
                    }
                    Err(e) => {
                        tracing::error!(entry = %entry.id, error = %e, "the server sent an SVID that does not verify");
                        out.failed.push((
                            entry,
                            format!("the server sent an SVID that does not verify: {e}"),
                        ));
                    }
                }
            }
        }
        out
    }

    pub(super) fn publish(&self, st: &SyncState) {
        let bundle = self.bundle.get();
        let entries: Vec<Arc<RegistrationEntry>> = st.entries.values().cloned().collect();
        let svids = st.svids.clone();
        let federated = st.federated.clone();
        self.cache.update(move |_| Snapshot {
            generation: 0,
            synced: true,
            bundle: Some(bundle),
            federated,
            entries,
            svids,
        });
        self.persist_svids(st);
    }
}

/// A fresh key for `entry` and its CSR: in the TPM when the entry asks for it
/// (`workload_key = tpm`), which needs the agent's TPM.
fn make_key(
    entry: &RegistrationEntry,
    kt: tessera_core::key::KeyType,
    tpm: Option<&Arc<tessera_tpm::Tpm>>,
) -> Result<(SvidKey, Vec<u8>), String> {
    let key = match entry.workload_key {
        WorkloadKey::Software => SvidKey::Software(Arc::new(
            SoftwareKey::generate(kt).map_err(|e| format!("cannot make a workload key: {e}"))?,
        )),
        WorkloadKey::Tpm => {
            let tpm = tpm.ok_or_else(|| {
                "the entry asks for a key in the TPM (workload_key = tpm), but this agent has no TPM configured (a tpm_devid or tpm_ek node attestor, or key_manager tpm)".to_owned()
            })?;
            SvidKey::Tpm(Arc::new(
                tessera_tpm::TpmWorkloadKey::generate(tpm.clone(), kt)
                    .map_err(|e| format!("cannot make a workload key in the TPM: {e}"))?,
            ))
        }
    };
    let csr = x509::build_csr(&key.as_key()).map_err(|e| format!("cannot sign the CSR: {e}"))?;
    Ok((key, csr))
}

/// Checks an SVID the server sent, at `now`: leaf profile, SPIFFE ID, key, chain to
/// the bundle.
pub(super) fn check_svid(
    chain: &[Vec<u8>],
    id: &SpiffeId,
    spki: &[u8],
    bundle: &Bundle,
    now: SystemTime,
) -> Result<(i64, i64), String> {
    let got = x509::verify_svid_chain(chain, bundle, now).map_err(|e| e.to_string())?;
    if &got != id {
        return Err(format!("SVID is for {got}, expected {id}"));
    }
    if got.is_reserved() {
        return Err(format!(
            "SVID is for {got}, in the reserved namespace /spire: not a workload ID"
        ));
    }
    let info = x509::cert_info(&chain[0]).map_err(|e| e.to_string())?;
    if info.public_key_der != spki {
        return Err("SVID is not for the key the agent made".into());
    }
    Ok((info.not_before, info.not_after))
}

/// The bundle in a server message, if present, usable and of our trust domain.
pub(super) fn bundle_from_proto(
    p: Option<tessera_proto::types::Bundle>,
    td: &TrustDomain,
) -> Option<Bundle> {
    match tessera_proto::convert::bundle_from_proto(p?) {
        Ok(b) if b.trust_domain() == td => Some(b),
        Ok(b) => {
            tracing::warn!("ignoring a bundle for {} (expected {td})", b.trust_domain());
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "ignoring an unusable bundle from the server");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_is_at_half_life_of_the_real_lifetime() {
        // Issued at 1000 (NotBefore backdated to 990), valid until 1004.
        for _ in 0..100 {
            let t = rotation_time(990, 1004);
            assert!((1001..=1003).contains(&t), "{t}");
        }
        // One hour: between 40% and 60%.
        for _ in 0..100 {
            let t = rotation_time(990, 1000 + 3600);
            assert!((1000 + 1440..=1000 + 2160).contains(&t), "{t}");
        }
        assert_eq!(rotation_time_at(990, 1000 + 3600, 0.5), 1000 + 1800);
        // A certificate issued already expired is due at once.
        assert_eq!(rotation_time_at(990, 995, 0.5), 995);
    }

    fn entry(id: &str, spiffe_id: &str, revision: u64) -> Arc<RegistrationEntry> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "id": id,
                "spiffe_id": spiffe_id,
                "parent_id": "spiffe://example.org/node",
                "selectors": ["unix:uid:1000"],
                "revision_number": revision,
            }))
            .unwrap(),
        )
    }

    fn svid(e: &Arc<RegistrationEntry>, rotate_at: i64) -> Svid {
        Svid {
            entry: e.clone(),
            chain: Arc::new(vec![vec![0]]),
            key: SvidKey::Software(Arc::new(
                SoftwareKey::generate(tessera_core::key::KeyType::EcP256).unwrap(),
            )),
            not_before: rotate_at - 100,
            not_after: rotate_at + 100,
            rotate_at,
            revision: e.revision_number,
        }
    }

    fn state(entries: &[Arc<RegistrationEntry>]) -> SyncState {
        SyncState {
            entries: entries.iter().map(|e| (e.id.clone(), e.clone())).collect(),
            ..SyncState::default()
        }
    }

    #[test]
    fn entries_are_due_for_signing_when_new_changed_or_rotating_and_not_while_backing_off() {
        let (t, t_unix) = (Instant::now(), 10_000);
        let new = entry("new", "spiffe://example.org/new", 1);
        let fresh = entry("fresh", "spiffe://example.org/fresh", 1);
        let rotating = entry("rotating", "spiffe://example.org/rotating", 1);
        let changed = entry("changed", "spiffe://example.org/changed", 2);
        let failing = entry("failing", "spiffe://example.org/failing", 1);
        let mut st = state(&[
            new.clone(),
            fresh.clone(),
            rotating.clone(),
            changed.clone(),
            failing.clone(),
        ]);
        st.svids.insert("fresh".into(), svid(&fresh, t_unix + 60));
        st.svids
            .insert("rotating".into(), svid(&rotating, t_unix - 1));
        let mut old = svid(&changed, t_unix + 60);
        old.revision = 1;
        st.svids.insert("changed".into(), old);
        st.sign_retry.insert(
            "failing".into(),
            SignRetry {
                backoff: Backoff::for_interval(Duration::from_secs(5)),
                not_before: t + Duration::from_secs(30),
            },
        );
        let times: BTreeMap<String, Instant> = st
            .sign_times(t, t_unix)
            .map(|(e, at)| (e.id.clone(), at))
            .collect();
        assert_eq!(times["new"], t);
        assert_eq!(times["rotating"], t);
        assert_eq!(times["changed"], t);
        assert_eq!(times["fresh"], t + Duration::from_secs(60));
        // Backing off: not before its retry time, whatever else it needs.
        assert_eq!(times["failing"], t + Duration::from_secs(30));
    }

    #[test]
    fn removed_entries_and_changed_identities_lose_their_svids() {
        let kept = entry("kept", "spiffe://example.org/kept", 1);
        let gone = entry("gone", "spiffe://example.org/gone", 1);
        let renamed = entry("renamed", "spiffe://example.org/before", 1);
        let reselected = entry("reselected", "spiffe://example.org/same", 1);
        let mut st = state(&[kept.clone(), renamed.clone(), reselected.clone()]);
        for e in [&kept, &gone, &renamed, &reselected] {
            st.svids.insert(e.id.clone(), svid(e, 0));
        }
        st.sign_retry.insert(
            "gone".into(),
            SignRetry {
                backoff: Backoff::for_interval(Duration::from_secs(5)),
                not_before: Instant::now(),
            },
        );
        // The server renamed one entry and changed another's selectors (new revisions).
        st.entries.insert(
            "renamed".into(),
            entry("renamed", "spiffe://example.org/after", 2),
        );
        st.entries.insert(
            "reselected".into(),
            entry("reselected", "spiffe://example.org/same", 2),
        );
        assert!(st.drop_stale());
        let left: Vec<&str> = st.svids.keys().map(String::as_str).collect();
        // The SVID of a changed entry with the same SPIFFE ID is still valid for it
        // until the new one is signed; the renamed entry's old SVID is not.
        assert_eq!(left, ["kept", "reselected"]);
        assert!(st.sign_retry.is_empty());
        assert!(!st.drop_stale());
    }
}

//! The agent's side of the persisted SVID cache ([`crate::persist`]): every
//! publication of the entries and SVIDs is saved; at start-up, before the agent
//! resumes or waits for its own identity, the SVIDs saved before are restored and
//! published at once, before any sync: those whose certificate has expired, no longer chains to the bundle or
//! is not for its key are dropped. The first sync then corrects the rest: entries
//! deleted on the server meanwhile go with their SVIDs, changed ones are signed
//! again.

use std::sync::Arc;

use tessera_core::key::SoftwareKey;
use tessera_core::{Bundle, TrustDomain};
use tessera_tpm::TpmWorkloadKey;
use zeroize::Zeroizing;

use super::Agent;
use super::svids::{SyncState, check_svid};
use crate::cache::{Svid, SvidKey};
use crate::persist::SvidStore;
use crate::persist::record::{CacheRecord, KeyRecord, SvidRecord, VERSION};

impl Agent {
    /// Turns on the persisted cache (once; later calls are ignored).
    pub fn set_svid_store(&self, store: SvidStore) {
        let _ = self.svid_store.set(store);
    }

    /// Saves what `st` holds.
    pub(super) fn persist_svids(&self, st: &SyncState) {
        let Some(store) = self.svid_store.get() else {
            return;
        };
        let svids = st
            .svids
            .values()
            .map(|s| SvidRecord {
                entry: (*s.entry).clone(),
                chain: (*s.chain).clone(),
                key: match &s.key {
                    SvidKey::Software(k) => KeyRecord::Software {
                        pkcs8: k.pkcs8_der().to_vec(),
                    },
                    SvidKey::Tpm(k) => KeyRecord::Tpm {
                        tss2_pem: k.tss2_pem().into_bytes(),
                        auth: k.auth().to_vec(),
                    },
                },
                not_before: s.not_before,
                not_after: s.not_after,
                rotate_at: s.rotate_at,
                revision: s.revision,
            })
            .collect();
        store.save(&CacheRecord {
            version: VERSION,
            written_at: self.now(),
            bundle: Some(self.bundle.get().to_jwks()),
            federated: st
                .federated
                .iter()
                .map(|(td, b)| (td.to_string(), b.to_jwks()))
                .collect(),
            svids,
        });
    }

    /// Restores the SVIDs saved before, and publishes them.
    pub(super) async fn restore_svids(&self) {
        let Some(store) = self.svid_store.get() else {
            return;
        };
        let Some(record) = store.load() else {
            return;
        };
        let mut st = self.sync.lock().await;
        let bundle = self.bundle.get();
        let now = self.clock.now();
        let (mut restored, mut dropped) = (0usize, Vec::new());
        for r in record.svids {
            let id = r.entry.id.clone();
            match restore_one(r, &bundle, now, self.workload_tpm()) {
                Ok(svid) => {
                    st.entries.insert(id.clone(), svid.entry.clone());
                    st.svids.insert(id, svid);
                    restored += 1;
                }
                Err(why) => dropped.push(format!("{id}: {why}")),
            }
        }
        for (td, jwks) in record.federated {
            if let Ok(td) = TrustDomain::new(&td)
                && let Ok(b) = Bundle::from_jwks(td.clone(), jwks.as_bytes())
            {
                st.federated.entry(td).or_insert_with(|| Arc::new(b));
            }
        }
        if !dropped.is_empty() {
            tracing::info!(
                "the SVID cache: {} not restored ({})",
                dropped.len(),
                dropped.join("; ")
            );
        }
        if restored > 0 {
            tracing::info!(
                restored,
                written_at = record.written_at,
                "restored workload SVIDs from the SVID cache; they are served until the server says otherwise"
            );
            self.publish(&st);
        }
    }
}

fn restore_one(
    r: SvidRecord,
    bundle: &Bundle,
    now: std::time::SystemTime,
    tpm: Option<Arc<tessera_tpm::Tpm>>,
) -> Result<Svid, String> {
    let key = match &r.key {
        KeyRecord::Software { pkcs8 } => SvidKey::Software(Arc::new(
            SoftwareKey::from_pkcs8(pkcs8).map_err(|e| format!("its key is unusable: {e}"))?,
        )),
        KeyRecord::Tpm { tss2_pem, auth } => {
            let tpm = tpm.ok_or("its key is TPM-held and this agent has no TPM configured")?;
            SvidKey::Tpm(Arc::new(
                TpmWorkloadKey::from_tss2_pem(tpm, tss2_pem, Zeroizing::new(auth.clone()))
                    .map_err(|e| format!("its TPM key file is unusable: {e}"))?,
            ))
        }
    };
    let (not_before, not_after) = check_svid(
        &r.chain,
        &r.entry.spiffe_id,
        key.public_key_der(),
        bundle,
        now,
    )
    .map_err(|e| format!("no longer valid ({e})"))?;
    Ok(Svid {
        entry: Arc::new(r.entry),
        chain: Arc::new(r.chain.clone()),
        key,
        not_before,
        not_after,
        rotate_at: r.rotate_at,
        revision: r.revision,
    })
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "test code: a failed unwrap is a failed test"
    )]

    use std::time::{Duration, SystemTime};

    use tessera_core::clock::{ManualClock, SharedClock};
    use tessera_process::DiskKeyManager;

    use super::*;
    use crate::manager::Parts;
    use crate::testing::{self, FakeServer, TestAttestor};

    const START: u64 = 1_800_000_000;

    /// An agent on `dir` whose own key is on disk (so that it resumes), with the
    /// persisted cache.
    fn agent(dir: &std::path::Path, server: &Arc<FakeServer>, clock: &SharedClock) -> Arc<Agent> {
        let km = DiskKeyManager::open(&dir.join("keys")).unwrap();
        let a = Agent::with_parts(
            testing::config(dir, "1s"),
            Parts {
                km: Arc::new(km),
                attestor: Some(Arc::new(TestAttestor { reattest: true })),
                clock: clock.clone(),
                server: Some(server.clone()),
            },
        )
        .unwrap();
        a.set_svid_store(SvidStore::open(dir, None).unwrap());
        a
    }

    #[tokio::test(start_paused = true)]
    async fn svids_come_back_offline_until_they_expire_and_deleted_entries_go() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(START));
        let shared: SharedClock = clock.clone();
        let server = FakeServer::new(shared.clone());
        // The agent's own SVID lives less than the workloads'.
        server.state().agent_ttl = Duration::from_secs(600);
        server.add_entry("e1", "/web", &["unix:uid:1000"]);
        server.add_entry("e2", "/db", &["unix:uid:1001"]);
        let first = agent(dir.path(), &server, &shared);
        first.establish().await.unwrap();
        first.sync_once().await.unwrap();
        first.sign_due().await;
        let held = first.cache.snapshot().svids.clone();
        assert_eq!(held.len(), 2);
        drop(first);

        // Restarted with the server away: both SVIDs at once, the same ones.
        server.state().down = true;
        let second = agent(dir.path(), &server, &shared);
        second.establish().await.unwrap();
        let snap = second.cache.snapshot();
        assert!(snap.synced, "a restored cache is served without a sync");
        assert_eq!(snap.svids.len(), 2);
        assert_eq!(snap.svids["e1"].chain, held["e1"].chain);
        assert_eq!(snap.entries.len(), 2);
        assert_eq!(server.state().signed.len(), 2, "nothing signed again");

        // The server back, e2 deleted meanwhile: gone at the next sync, from the
        // cache and from the file.
        {
            let mut st = server.state();
            st.down = false;
            st.entries.remove("e2");
            st.revision += 1;
        }
        second.sync_once().await.unwrap();
        let snap = second.cache.snapshot();
        assert_eq!(snap.svids.keys().collect::<Vec<_>>(), ["e1"]);
        let stored = SvidStore::open(dir.path(), None).unwrap().load().unwrap();
        assert_eq!(stored.svids.len(), 1);
        assert_eq!(stored.svids[0].entry.id, "e1");
        drop(second);

        // The agent's own SVID expired while the server is away: it cannot get its
        // identity back, and still serves the workload SVID it holds.
        server.state().down = true;
        clock.advance(Duration::from_secs(700));
        let waiting = agent(dir.path(), &server, &shared);
        let task = tokio::spawn({
            let a = waiting.clone();
            async move { a.establish().await }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!task.is_finished(), "start-up did not wait for the server");
        assert_eq!(
            waiting.cache.snapshot().svids.keys().collect::<Vec<_>>(),
            ["e1"]
        );
        task.abort();
        drop(waiting);
        server.state().down = false;

        // Past the SVID's expiry: it is not restored.
        clock.advance(Duration::from_secs(3000));
        let third = agent(dir.path(), &server, &shared);
        third.establish().await.unwrap();
        assert!(third.cache.snapshot().svids.is_empty());
    }
}

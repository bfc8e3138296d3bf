//! The agent's side of the persisted SVID cache ([`crate::persist`]): every
//! publication of the entries and SVIDs is saved; at start-up, once the agent has
//! its identity, the SVIDs saved before are restored and published at once, before
//! any sync: those whose certificate has expired, no longer chains to the bundle or
//! is not for its key are dropped. The first sync then corrects the rest: entries
//! deleted on the server meanwhile go with their SVIDs, changed ones are signed
//! again.

use std::sync::Arc;

use tessera_core::key::{Key as _, SoftwareKey};
use tessera_core::{Bundle, TrustDomain};

use super::Agent;
use super::svids::{SyncState, check_svid};
use crate::cache::Svid;
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
                key: KeyRecord::Software {
                    pkcs8: s.key.pkcs8_der().to_vec(),
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
            match restore_one(r, &bundle, now) {
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

fn restore_one(r: SvidRecord, bundle: &Bundle, now: std::time::SystemTime) -> Result<Svid, String> {
    let key = match &r.key {
        KeyRecord::Software { pkcs8 } => {
            SoftwareKey::from_pkcs8(pkcs8).map_err(|e| format!("its key is unusable: {e}"))?
        }
        KeyRecord::Tpm { .. } => {
            return Err("its key is TPM-held, which this agent does not restore".into());
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
        key: Arc::new(key),
        not_before,
        not_after,
        rotate_at: r.rotate_at,
        revision: r.revision,
    })
}

//! The CA journal: the authorities the datastore records, loaded at start with their
//! keys found again (this server's; the other servers' are only kept to publish),
//! their status changes written through, lost keys retired, and expired authorities
//! pruned (key first, record after).

use std::sync::Arc;

use tessera_core::x509::Issuer;

use super::keys::KeyLookup;
use super::{CaError, CaManager, JwtSlot, State, X509Slot, kind_name};
use crate::datastore::{CaKind, CaRecord, CaStatus, DatastoreError};

impl CaManager {
    /// Loads the journal: expired authorities go to be destroyed, the keys of the
    /// others are found again, and those whose key is gone are retired.
    pub(super) async fn load(&self) -> Result<(), CaError> {
        let records = self.ds.list_ca_records().await?;
        let now = self.clock.unix();
        let mut state = State {
            dirty: true,
            ..State::default()
        };
        let mut lost = Vec::new();
        for mut record in records {
            if record.server_id.is_empty() {
                // Made before servers had IDs, by the one server there was then: this
                // one takes it over.
                record.server_id = self.settings.server_id.clone();
                self.ds.put_ca_record(&record).await?;
                tracing::info!(authority = %record.id, server_id = %record.server_id, "CA record without a server ID taken over by this server");
            }
            if record.server_id != self.settings.server_id {
                state.others.push(record);
                continue;
            }
            if record.not_after <= now {
                // Expired while the server was down: destroy its key and drop it.
                state.to_destroy.push(record);
                continue;
            }
            let key = if record.status == CaStatus::Retired {
                None
            } else if record.key_manager != self.km.name() {
                // Far more often a configuration mistake than a deliberate change, and
                // retiring would be for good: refuse, and let the operator decide.
                if matches!(record.status, CaStatus::Active | CaStatus::Prepared) {
                    return Err(CaError::KeyManagerChanged {
                        kind: kind_name(record.kind),
                        authority: record.id.clone(),
                        was: record.key_manager.clone(),
                        now: self.km.name(),
                    });
                }
                // A replaced authority only needs to stay published.
                None
            } else {
                match self.look_up_key(&record).await? {
                    KeyLookup::Found(k) => Some(k),
                    KeyLookup::Gone(reason) => {
                        lost.push((record.kind, record.id.clone(), reason));
                        None
                    }
                }
            };
            match record.kind {
                CaKind::X509 => {
                    let issuer = key
                        .map(|k| Issuer::new(record.cert_der.clone(), k).map(Arc::new))
                        .transpose()?;
                    state.x509.push(X509Slot { record, issuer });
                }
                CaKind::Jwt => state.jwt.push(JwtSlot { record, key }),
            }
        }
        state.x509.sort_by_key(|s| s.record.not_before);
        state.jwt.sort_by_key(|s| s.record.not_before);
        *self.write_state() = state;
        for (kind, id, reason) in lost {
            self.retire(kind, &id, &reason).await?;
        }
        Ok(())
    }

    /// Reads the other servers' records again (they rotate and prune on their own).
    pub(super) async fn reload_others(&self) -> Result<(), CaError> {
        let me = &self.settings.server_id;
        let others: Vec<CaRecord> = self
            .ds
            .list_ca_records()
            .await?
            .into_iter()
            .filter(|r| &r.server_id != me && !r.server_id.is_empty())
            .collect();
        self.write_state().others = others;
        Ok(())
    }

    /// The journal record of an authority held in memory.
    pub(super) fn record(&self, kind: CaKind, id: &str) -> Result<CaRecord, CaError> {
        let st = self.read_state();
        let found = match kind {
            CaKind::X509 => st
                .x509
                .iter()
                .find(|s| s.record.id == id)
                .map(|s| s.record.clone()),
            CaKind::Jwt => st
                .jwt
                .iter()
                .find(|s| s.record.id == id)
                .map(|s| s.record.clone()),
        };
        found.ok_or_else(|| CaError::Vanished(id.to_owned()))
    }

    /// Writes an authority's new status to the journal, then to memory.
    pub(super) async fn set_status(
        &self,
        kind: CaKind,
        id: &str,
        status: CaStatus,
    ) -> Result<(), CaError> {
        let mut updated = self.record(kind, id)?;
        updated.status = status;
        self.ds.put_ca_record(&updated).await?;
        let mut st = self.write_state();
        st.dirty = true;
        match kind {
            CaKind::X509 => {
                if let Some(s) = st.x509.iter_mut().find(|s| s.record.id == id) {
                    s.record.status = status;
                }
            }
            CaKind::Jwt => {
                if let Some(s) = st.jwt.iter_mut().find(|s| s.record.id == id) {
                    s.record.status = status;
                }
            }
        }
        Ok(())
    }

    /// Marks an authority whose key is gone as retired, in the journal and here, and
    /// says so loudly. It stays in the bundle until it expires.
    pub(super) async fn retire(&self, kind: CaKind, id: &str, reason: &str) -> Result<(), CaError> {
        let record = self.record(kind, id)?;
        if record.status == CaStatus::Retired {
            return Ok(());
        }
        self.set_status(kind, id, CaStatus::Retired).await?;
        {
            let mut st = self.write_state();
            match kind {
                CaKind::X509 => {
                    if let Some(s) = st.x509.iter_mut().find(|s| s.record.id == id) {
                        s.issuer = None;
                    }
                }
                CaKind::Jwt => {
                    if let Some(s) = st.jwt.iter_mut().find(|s| s.record.id == id) {
                        s.key = None;
                    }
                }
            }
        }
        let what = kind_name(kind);
        let expires = record.not_after;
        if record.status == CaStatus::Old {
            tracing::warn!(
                authority = %id,
                key = %record.key_id,
                key_manager = %record.key_manager,
                "the key of the replaced {what} authority {id} is gone ({reason}); it is retired and stays in the trust bundle until it expires at {expires}"
            );
        } else {
            tracing::error!(
                authority = %id,
                key = %record.key_id,
                key_manager = %record.key_manager,
                was = ?record.status,
                "{what} authority {id} LOST ITS KEY {} ({reason}): it is retired and signs nothing more; it stays in the trust bundle until it expires at {expires}, because what it signed stays valid until then; a replacement takes over at once",
                record.key_id
            );
        }
        Ok(())
    }

    /// Checks the authorities a signature reported without a key: retires those the
    /// key manager confirms are gone, takes up again those it still has (a stale
    /// handle), and keeps the rest for the next step (the key store is down).
    pub(super) async fn check_suspects(&self) -> Result<(), CaError> {
        let suspects = std::mem::take(&mut self.write_state().suspect);
        let mut keep = Vec::new();
        for id in suspects {
            let kind = if self.read_state().x509.iter().any(|s| s.record.id == id) {
                CaKind::X509
            } else if self.read_state().jwt.iter().any(|s| s.record.id == id) {
                CaKind::Jwt
            } else {
                continue;
            };
            let record = self.record(kind, &id)?;
            if record.status == CaStatus::Retired {
                continue;
            }
            match self.look_up_key(&record).await {
                Ok(KeyLookup::Gone(reason)) => self.retire(kind, &id, &reason).await?,
                Ok(KeyLookup::Found(key)) => {
                    tracing::warn!(authority = %id, key = %record.key_id, "a signature found the key missing, but the key manager holds it: using it again");
                    let mut st = self.write_state();
                    match kind {
                        CaKind::X509 => {
                            let issuer = Issuer::new(record.cert_der.clone(), key)?;
                            if let Some(s) = st.x509.iter_mut().find(|s| s.record.id == id) {
                                s.issuer = Some(Arc::new(issuer));
                            }
                        }
                        CaKind::Jwt => {
                            if let Some(s) = st.jwt.iter_mut().find(|s| s.record.id == id) {
                                s.key = Some(key);
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(authority = %id, key = %record.key_id, "cannot tell whether the key is gone ({e}); the authority is kept and checked again");
                    keep.push(id);
                }
            }
        }
        self.write_state().suspect.extend(keep);
        Ok(())
    }

    /// Drops the `expired` authorities from memory (and so from the bundle), then
    /// destroys their keys and those still waiting from earlier steps. A record goes
    /// only once its key is destroyed, so a key store outage cannot leak keys: they are
    /// retried on the next step.
    pub(super) async fn prune(&self, expired: impl Iterator<Item = &String>) {
        let gone: Vec<CaRecord> = {
            let mut st = self.write_state();
            let expired: Vec<&String> = expired.collect();
            let is_expired = |r: &CaRecord| expired.contains(&&r.id);
            let mut gone: Vec<CaRecord> = st
                .x509
                .iter()
                .map(|s| &s.record)
                .chain(st.jwt.iter().map(|s| &s.record))
                .filter(|r| is_expired(r))
                .cloned()
                .collect();
            st.x509.retain(|s| !is_expired(&s.record));
            st.jwt.retain(|s| !is_expired(&s.record));
            st.dirty |= !gone.is_empty();
            gone.append(&mut st.to_destroy);
            gone
        };
        let mut retry = Vec::new();
        for r in gone {
            // Everything this key signed has expired with it: destroy it.
            if r.key_manager == self.km.name() {
                if let Err(e) = self.destroy_key(&r.key_id).await {
                    tracing::warn!(ca = %r.id, "cannot destroy expired key {} yet (will retry): {e}", r.key_id);
                    retry.push(r);
                    continue;
                }
                tracing::info!(ca = %r.id, key = %r.key_id, "expired authority removed and its key destroyed");
            }
            if let Err(e) = self.ds.delete_ca_record(&r.id).await
                && !matches!(e, DatastoreError::NotFound(_))
            {
                tracing::warn!(ca = %r.id, error = %e, "cannot delete CA record");
            }
        }
        self.write_state().to_destroy.extend(retry);
    }
}

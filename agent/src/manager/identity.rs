//! The agent's own SVID: node attestation (the first time, and again when the server
//! no longer accepts the agent), renewal at half-life with a fresh key, and what the
//! run loop needs to schedule both.

use std::sync::Arc;
use std::time::Duration;

use tessera_core::SpiffeId;
use tessera_core::key::Key;
use tessera_core::x509;
use tokio::time::Instant;

use super::svids::{bundle_from_proto, rotation_time};
use super::{Agent, AgentError};
use crate::client::Trust;
use crate::state::SavedIdentity;

/// The agent key alternates between two names in the key manager, so that the key
/// in use is never the one being replaced.
const KEY_SLOTS: [&str; 2] = ["agent-svid-a", "agent-svid-b"];

impl Agent {
    fn next_key_slot(&self) -> &'static str {
        let me = self.me.lock().unwrap_or_else(|p| p.into_inner());
        match me.as_ref().map(|m| m.key_id.as_str()) {
            Some(k) if k == KEY_SLOTS[0] => KEY_SLOTS[1],
            _ => KEY_SLOTS[0],
        }
    }

    async fn new_agent_key(&self) -> Result<(&'static str, Arc<dyn Key>), AgentError> {
        let slot = self.next_key_slot();
        let km = self.km.clone();
        let key = tokio::task::spawn_blocking(move || {
            km.generate_key(slot, tessera_core::key::KeyType::EcP256)
        })
        .await
        .map_err(|e| AgentError::Internal(e.to_string()))??;
        Ok((slot, key))
    }

    /// Node attestation: proves the node to the server and installs the agent SVID.
    pub async fn attest(&self) -> Result<(), AgentError> {
        let attestor = self.attestor.clone().ok_or_else(|| {
            AgentError::Config("the agent has no usable identity and no node attestor is configured (give a join token)".into())
        })?;
        let trust = if !self.bundle.get().x509_authorities().is_empty() {
            Trust::Bundle(self.bundle.clone())
        } else {
            tracing::warn!(
                "INSECURE BOOTSTRAP: trusting whatever server answers at {:?}; anyone able to answer first becomes this agent's CA",
                self.cfg.servers()
            );
            Trust::Insecure
        };
        let (slot, key) = self.new_agent_key().await?;
        let csr = x509::build_csr(&key).map_err(|e| AgentError::Internal(format!("CSR: {e}")))?;
        attestor.bind_key(crate::attestor::key_proof::KeyBinding {
            slot: slot.to_owned(),
            csr: csr.clone(),
        });
        let result = self.server.attest(trust, attestor.as_ref(), csr).await?;
        let spiffe_id = SpiffeId::new(&result.spiffe_id)
            .map_err(|e| AgentError::Attestation(format!("server sent a bad agent ID: {e}")))?;
        if !tessera_core::entry::is_agent_id(&spiffe_id, &self.cfg.trust_domain) {
            return Err(AgentError::Attestation(format!(
                "the server gave this agent the ID {spiffe_id}, which is not an agent ID \
                 (spiffe://{}/spire/agent/...)",
                self.cfg.trust_domain
            )));
        }
        let leaf = result
            .svid_chain
            .first()
            .ok_or_else(|| AgentError::Attestation("server sent no SVID".into()))?;
        let leaf_id = x509::validate_leaf(leaf)
            .map_err(|e| AgentError::Attestation(format!("agent SVID: {e}")))?;
        let info = x509::cert_info(leaf).map_err(|e| AgentError::Attestation(e.to_string()))?;
        if leaf_id != spiffe_id || info.public_key_der != key.public_key_der() {
            return Err(AgentError::Attestation(
                "the SVID the server sent is not for this agent's key and ID".into(),
            ));
        }
        let bundle = bundle_from_proto(result.bundle, &self.cfg.trust_domain)
            .ok_or_else(|| AgentError::Attestation("the server sent no usable bundle".into()))?;
        x509::verify_svid_chain(&result.svid_chain, &bundle, self.clock.now()).map_err(|e| {
            AgentError::Attestation(format!(
                "agent SVID does not chain to the server's bundle: {e}"
            ))
        })?;
        self.state_dir.save_bundle(&bundle)?;
        self.bundle.set(bundle.clone());
        let saved = SavedIdentity {
            spiffe_id: spiffe_id.clone(),
            key_id: slot.to_owned(),
            chain: result.svid_chain.clone(),
            attestor: attestor.name().to_owned(),
            can_reattest: result.can_reattest,
        };
        self.state_dir.save_identity(&saved)?;
        self.identity.set(&result.svid_chain, key);
        *self.me.lock().unwrap_or_else(|p| p.into_inner()) = Some(saved);
        self.server.reconnect();
        self.status_mut().spiffe_id = Some(spiffe_id.clone());
        {
            let mut st = self.sync.lock().await;
            st.bundle_sequence = bundle.sequence();
        }
        tracing::info!(spiffe_id = %spiffe_id, attestor = attestor.name(), "node attested");
        Ok(())
    }

    /// Renews the agent's own SVID with a fresh key.
    pub async fn renew(&self) -> Result<(), AgentError> {
        let (slot, key) = self.new_agent_key().await?;
        let csr = x509::build_csr(&key).map_err(|e| AgentError::Internal(format!("CSR: {e}")))?;
        let (key_certify, pcr_quote) = self.renewal_proofs(slot, &csr).await;
        let svid_chain = self
            .server
            .renew_agent_with(tessera_proto::agent::RenewAgentRequest {
                csr,
                key_certify,
                pcr_quote,
            })
            .await?;
        let leaf = svid_chain
            .first()
            .ok_or_else(|| AgentError::Internal("no SVID in the renewal".into()))?;
        let info = x509::cert_info(leaf).map_err(|e| AgentError::Internal(e.to_string()))?;
        if info.public_key_der != key.public_key_der() {
            return Err(AgentError::Internal(
                "the renewed SVID is not for the new key".into(),
            ));
        }
        let old_key = {
            let mut me = self.me.lock().unwrap_or_else(|p| p.into_inner());
            let cur = me
                .as_mut()
                .ok_or_else(|| AgentError::Internal("no identity to renew".into()))?;
            let old = std::mem::replace(&mut cur.key_id, slot.to_owned());
            cur.chain = svid_chain.clone();
            self.state_dir.save_identity(cur)?;
            old
        };
        self.identity.set(&svid_chain, key);
        self.server.reconnect();
        let km = self.km.clone();
        let _ = tokio::task::spawn_blocking(move || km.delete_key(&old_key)).await;
        tracing::info!(expires_at = info.not_after, "agent SVID renewed");
        Ok(())
    }

    /// A TPM-attested agent's proofs for the renewal authenticated with its
    /// current SVID: the certify of its renewal key by its AK and its PCR quote
    /// (each `None`, logged, when it cannot be made).
    async fn renewal_proofs(
        &self,
        slot: &'static str,
        csr: &[u8],
    ) -> (
        Option<tessera_proto::agent::TpmKeyCertify>,
        Option<tessera_proto::agent::PcrQuote>,
    ) {
        let Some(attestor) = self.attestor.clone() else {
            return (None, None);
        };
        let serial = {
            let me = self.me.lock().unwrap_or_else(|p| p.into_inner());
            me.as_ref()
                .and_then(|m| m.chain.first())
                .and_then(|leaf| x509::cert_info(leaf).ok())
                .map(|i| i.serial_hex)
        };
        let Some(serial) = serial else {
            return (None, None);
        };
        let csr = csr.to_vec();
        tokio::task::spawn_blocking(move || attestor.renewal_proof(slot, &serial, &csr))
            .await
            .unwrap_or((None, None))
    }

    /// The agent SVID's NotBefore and NotAfter.
    pub(super) fn agent_svid_times(&self) -> Option<(i64, i64)> {
        let me = self.me.lock().unwrap_or_else(|p| p.into_inner());
        let leaf = me.as_ref()?.chain.first()?;
        let info = x509::cert_info(leaf).ok()?;
        Some((info.not_before, info.not_after))
    }

    /// When the agent SVID expired, if it has: the server refuses it then, in the TLS
    /// handshake, which the agent sees as a broken connection rather than a refusal.
    pub(super) fn agent_svid_expired_at(&self) -> Option<i64> {
        self.agent_svid_times()
            .map(|(_, na)| na)
            .filter(|na| *na <= self.now())
    }

    pub(super) fn can_reattest(&self) -> bool {
        self.attestor.as_ref().is_some_and(|a| a.can_reattest())
    }

    /// When to renew the agent SVID: half-life with jitter.
    pub(super) fn agent_renewal_time(&self) -> Option<Instant> {
        let (nb, na) = self.agent_svid_times()?;
        let at = rotation_time(nb, na);
        Some(Instant::now() + Duration::from_secs((at - self.now()).max(0) as u64))
    }
}

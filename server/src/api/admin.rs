//! The admin API: registration entries, join tokens, agents, bundles, minting and
//! health, for the `tessera-server` CLI over the admin Unix socket.

use std::sync::Arc;
use std::time::Duration;

use tessera_core::selector::Selector;
use tessera_core::{RegistrationEntry, SpiffeId, TrustDomain};
use tessera_proto::admin as pb;
use tessera_proto::admin::admin_server::Admin;
use tessera_proto::types as tpb;
use tonic::{Code, Request, Response, Status};

use super::convert::{
    bundle_from_proto, bundle_to_proto, entry_from_proto, entry_to_proto, status_of,
};
use super::{ServerState, join_error};
use crate::datastore::{EntryFilter, Page};

/// The admin API service.
#[derive(Debug, Clone)]
pub struct AdminApi {
    state: Arc<ServerState>,
}

impl AdminApi {
    pub fn new(state: Arc<ServerState>) -> Self {
        Self { state }
    }

    pub(super) fn state(&self) -> &ServerState {
        &self.state
    }

    fn validate(&self, e: &RegistrationEntry) -> Result<(), Status> {
        e.validate(self.state.trust_domain())
            .map_err(|err| Status::invalid_argument(format!("invalid entry: {err}")))
    }

    /// Makes a local write visible to agent syncs before the call returns.
    async fn refresh_entries(&self) {
        if let Err(e) = self.state.entries.catch_up().await {
            tracing::warn!(error = %e, "entry cache refresh failed (the follower will retry)");
            self.state.entries.changed.notify_one();
        }
    }

    /// A workload ID of this trust domain (for minting): the same rule as an entry's
    /// `spiffe_id`.
    fn workload_id(&self, s: &str) -> Result<SpiffeId, Status> {
        let id =
            SpiffeId::new(s).map_err(|e| Status::invalid_argument(format!("spiffe_id: {e}")))?;
        tessera_core::entry::check_workload_id(&id, self.state.trust_domain())
            .map_err(|e| Status::invalid_argument(format!("spiffe_id: {e}")))?;
        Ok(id)
    }

    fn agent_id(&self, s: &str) -> Result<SpiffeId, Status> {
        let id =
            SpiffeId::new(s).map_err(|e| Status::invalid_argument(format!("spiffe_id: {e}")))?;
        if !tessera_core::entry::is_agent_id(&id, self.state.trust_domain()) {
            return Err(Status::invalid_argument(format!(
                "{id} is not an agent ID of this trust domain"
            )));
        }
        Ok(id)
    }
}

/// The datastore filter for the admin API's entry filters (empty: no filter).
fn entry_filter(
    by_spiffe_id: &str,
    by_parent_id: &str,
    by_selectors: &[String],
) -> Result<EntryFilter, Status> {
    let parse_id = |field: &str, s: &str| -> Result<Option<SpiffeId>, Status> {
        if s.is_empty() {
            Ok(None)
        } else {
            SpiffeId::new(s)
                .map(Some)
                .map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
        }
    };
    Ok(EntryFilter {
        by_spiffe_id: parse_id("by_spiffe_id", by_spiffe_id)?,
        by_parent_id: parse_id("by_parent_id", by_parent_id)?,
        by_selectors: by_selectors
            .iter()
            .map(|s| s.parse::<Selector>())
            .collect::<Result<_, _>>()
            .map_err(|e| Status::invalid_argument(format!("by_selectors: {e}")))?,
    })
}

/// The admin API's answer for a log filter.
fn log_level_to_proto(
    r: Result<(String, String), crate::log_level::LogLevelError>,
) -> Result<Response<pb::LogLevel>, Status> {
    use crate::log_level::LogLevelError;
    match r {
        Ok((current, launch)) => Ok(Response::new(pb::LogLevel { current, launch })),
        Err(e @ LogLevelError::Invalid(_)) => Err(Status::invalid_argument(e.to_string())),
        Err(e @ LogLevelError::NotReloadable) => Err(Status::failed_precondition(e.to_string())),
        Err(e @ LogLevelError::Failed(_)) => Err(Status::internal(e.to_string())),
    }
}

fn agent_to_proto(n: &crate::datastore::AttestedNode) -> pb::Agent {
    pb::Agent {
        spiffe_id: n.spiffe_id.to_string(),
        attestation_type: n.attestation_type.clone(),
        x509_svid_serial: n.cert_serial.clone(),
        x509_svid_expires_at: n.cert_not_after,
        selectors: n.selectors.iter().map(ToString::to_string).collect(),
        banned: n.banned,
        can_reattest: n.can_reattest,
        created_at: n.created_at,
        key_proof: key_proof(n).to_owned(),
        measured_boot: n.measured_boot.clone(),
    }
}

/// The `key_proof` of an agent (see admin.proto).
pub(crate) fn key_proof(n: &crate::datastore::AttestedNode) -> &'static str {
    if n.key_in_tpm {
        "tpm"
    } else if !n.ak_public.is_empty() {
        "unproven"
    } else {
        ""
    }
}

#[tonic::async_trait]
impl Admin for AdminApi {
    async fn create_entry(
        &self,
        req: Request<pb::CreateEntryRequest>,
    ) -> Result<Response<tpb::Entry>, Status> {
        let p = req
            .into_inner()
            .entry
            .ok_or_else(|| Status::invalid_argument("entry is required"))?;
        let mut e = entry_from_proto(p)?;
        e.revision_number = 0;
        e.created_at = 0;
        self.validate(&e)?;
        let created = self.state.ds.create_entry(e).await?;
        self.refresh_entries().await;
        tracing::info!(entry = %created.id, spiffe_id = %created.spiffe_id, "entry created");
        Ok(Response::new(entry_to_proto(&created)))
    }

    async fn batch_create_entries(
        &self,
        req: Request<pb::BatchCreateEntriesRequest>,
    ) -> Result<Response<pb::BatchCreateEntriesResponse>, Status> {
        let entries = req.into_inner().entries;
        let mut results: Vec<Option<pb::batch_create_entries_response::Result>> =
            Vec::with_capacity(entries.len());
        let mut good = Vec::new();
        let mut slots = Vec::new();
        for p in entries {
            match entry_from_proto(p).and_then(|e| self.validate(&e).map(|()| e)) {
                Ok(mut e) => {
                    e.revision_number = 0;
                    e.created_at = 0;
                    slots.push(results.len());
                    results.push(None);
                    good.push(e);
                }
                Err(s) => results.push(Some(pb::batch_create_entries_response::Result {
                    status: Some(status_of(s.code(), s.message())),
                    entry: None,
                })),
            }
        }
        let stored = self.state.ds.create_entries(good).await?;
        for (slot, r) in slots.into_iter().zip(stored) {
            results[slot] = Some(match r {
                Ok(e) => pb::batch_create_entries_response::Result {
                    status: Some(status_of(Code::Ok, "")),
                    entry: Some(entry_to_proto(&e)),
                },
                Err(err) => {
                    let s: Status = err.into();
                    pb::batch_create_entries_response::Result {
                        status: Some(status_of(s.code(), s.message())),
                        entry: None,
                    }
                }
            });
        }
        self.refresh_entries().await;
        Ok(Response::new(pb::BatchCreateEntriesResponse {
            results: results.into_iter().flatten().collect(),
        }))
    }

    async fn get_entry(
        &self,
        req: Request<pb::GetEntryRequest>,
    ) -> Result<Response<tpb::Entry>, Status> {
        let id = req.into_inner().id;
        let e = self
            .state
            .ds
            .get_entry(&id)
            .await?
            .ok_or_else(|| Status::not_found(format!("entry {id} not found")))?;
        Ok(Response::new(entry_to_proto(&e)))
    }

    async fn list_entries(
        &self,
        req: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        let r = req.into_inner();
        let filter = entry_filter(&r.by_spiffe_id, &r.by_parent_id, &r.by_selectors)?;
        let page = Page {
            size: if r.page_size == 0 {
                1000
            } else {
                r.page_size.min(10_000)
            },
            token: r.page_token,
        };
        let (entries, next) = self.state.ds.list_entries(&filter, &page).await?;
        Ok(Response::new(pb::ListEntriesResponse {
            entries: entries.iter().map(entry_to_proto).collect(),
            next_page_token: next,
        }))
    }

    async fn update_entry(
        &self,
        req: Request<pb::UpdateEntryRequest>,
    ) -> Result<Response<tpb::Entry>, Status> {
        let p = req
            .into_inner()
            .entry
            .ok_or_else(|| Status::invalid_argument("entry is required"))?;
        if p.id.is_empty() {
            return Err(Status::invalid_argument(
                "entry id is required to update an entry",
            ));
        }
        let e = entry_from_proto(p)?;
        self.validate(&e)?;
        let updated = self.state.ds.update_entry(e).await?;
        self.refresh_entries().await;
        tracing::info!(entry = %updated.id, "entry updated");
        Ok(Response::new(entry_to_proto(&updated)))
    }

    async fn delete_entry(
        &self,
        req: Request<pb::DeleteEntryRequest>,
    ) -> Result<Response<pb::DeleteEntryResponse>, Status> {
        let id = req.into_inner().id;
        self.state.ds.delete_entry(&id).await?;
        self.refresh_entries().await;
        tracing::info!(entry = %id, "entry deleted");
        Ok(Response::new(pb::DeleteEntryResponse {}))
    }

    async fn count_entries(
        &self,
        req: Request<pb::CountEntriesRequest>,
    ) -> Result<Response<pb::CountResponse>, Status> {
        let r = req.into_inner();
        let filter = entry_filter(&r.by_spiffe_id, &r.by_parent_id, &r.by_selectors)?;
        let mut page = Page {
            size: 10_000,
            token: String::new(),
        };
        let mut count = 0u64;
        loop {
            let (entries, next) = self.state.ds.list_entries(&filter, &page).await?;
            count += entries.len() as u64;
            if next.is_empty() {
                break;
            }
            page.token = next;
        }
        Ok(Response::new(pb::CountResponse { count }))
    }

    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::JoinToken>, Status> {
        let r = req.into_inner();
        let ttl = if r.ttl_seconds == 0 {
            self.state.config.default_join_token_ttl
        } else {
            Duration::from_secs(u64::from(r.ttl_seconds))
        };
        let token = if r.token.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            if !r
                .token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                || r.token.len() > 128
            {
                return Err(Status::invalid_argument(
                    "token may hold only letters, digits, '-', '_' and '.' (at most 128)",
                ));
            }
            r.token
        };
        let agent_id = self
            .state
            .trust_domain()
            .id(&format!("/spire/agent/join_token/{token}"))
            .map_err(|e| Status::invalid_argument(format!("token: {e}")))?;
        // Validate the alias before storing anything, so that a bad ID leaves no token.
        let alias = if r.spiffe_id.is_empty() {
            None
        } else {
            let spiffe_id = self.workload_id(&r.spiffe_id)?;
            let selector = Selector::new("spiffe_id", &agent_id.to_string())
                .map_err(|e| Status::internal(e.to_string()))?;
            let e = RegistrationEntry {
                id: String::new(),
                spiffe_id,
                parent_id: agent_id.clone(),
                selectors: vec![selector],
                x509_svid_ttl: 0,
                jwt_svid_ttl: 0,
                federates_with: vec![],
                admin: false,
                downstream: false,
                dns_names: vec![],
                hint: String::new(),
                expires_at: 0,
                revision_number: 0,
                created_at: 0,
                workload_key: Default::default(),
            };
            self.validate(&e)?;
            Some(e)
        };
        let expires_at = self.state.clock.unix() + ttl.as_secs() as i64;
        self.state.ds.create_join_token(&token, expires_at).await?;
        if let Some(e) = alias {
            if let Err(err) = self.state.ds.create_entry(e).await {
                // Do not leave a token whose promised alias does not exist.
                let _ = self.state.ds.take_join_token(&token).await;
                return Err(err.into());
            }
            self.refresh_entries().await;
        }
        tracing::info!(expires_at, "join token created");
        Ok(Response::new(pb::JoinToken { token, expires_at }))
    }

    async fn list_agents(
        &self,
        _req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let nodes = self.state.ds.list_attested_nodes().await?;
        Ok(Response::new(pb::ListAgentsResponse {
            agents: nodes.iter().map(agent_to_proto).collect(),
        }))
    }

    async fn get_agent(
        &self,
        req: Request<pb::AgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let id = self.agent_id(&req.into_inner().spiffe_id)?;
        let node = self
            .state
            .ds
            .get_attested_node(&id)
            .await?
            .ok_or_else(|| Status::not_found(format!("agent {id} is not attested")))?;
        Ok(Response::new(agent_to_proto(&node)))
    }

    async fn count_agents(
        &self,
        _req: Request<pb::CountAgentsRequest>,
    ) -> Result<Response<pb::CountResponse>, Status> {
        let count = self.state.ds.list_attested_nodes().await?.len() as u64;
        Ok(Response::new(pb::CountResponse { count }))
    }

    async fn evict_agent(
        &self,
        req: Request<pb::AgentRequest>,
    ) -> Result<Response<pb::AgentActionResponse>, Status> {
        let id = self.agent_id(&req.into_inner().spiffe_id)?;
        self.state.ds.delete_attested_node(&id).await?;
        self.state.nodes.put(&id, None);
        self.state.entries.forget_agent(&id);
        tracing::info!(agent = %id, "agent evicted");
        Ok(Response::new(pb::AgentActionResponse {}))
    }

    async fn ban_agent(
        &self,
        req: Request<pb::AgentRequest>,
    ) -> Result<Response<pb::AgentActionResponse>, Status> {
        let id = self.agent_id(&req.into_inner().spiffe_id)?;
        self.state.ds.ban_attested_node(&id).await?;
        let node = self.state.ds.get_attested_node(&id).await?;
        self.state.nodes.put(&id, node);
        self.state.entries.forget_agent(&id);
        tracing::info!(agent = %id, "agent banned");
        Ok(Response::new(pb::AgentActionResponse {}))
    }

    async fn get_bundle(
        &self,
        _req: Request<pb::GetBundleRequest>,
    ) -> Result<Response<tpb::Bundle>, Status> {
        Ok(Response::new(bundle_to_proto(&self.state.ca.bundle())))
    }

    async fn set_federated_bundle(
        &self,
        req: Request<pb::SetFederatedBundleRequest>,
    ) -> Result<Response<tpb::Bundle>, Status> {
        let p = req
            .into_inner()
            .bundle
            .ok_or_else(|| Status::invalid_argument("bundle is required"))?;
        let b = bundle_from_proto(p)?;
        if b.trust_domain() == self.state.trust_domain() {
            return Err(Status::invalid_argument(
                "this is the server's own trust domain; its bundle is managed by the CA",
            ));
        }
        let b = crate::federation::store(self.state.ds.as_ref(), b).await?;
        self.state.federation.bundle_set(b.trust_domain());
        Ok(Response::new(bundle_to_proto(&b)))
    }

    async fn list_federated_bundles(
        &self,
        _req: Request<pb::ListFederatedBundlesRequest>,
    ) -> Result<Response<pb::ListFederatedBundlesResponse>, Status> {
        let own = self.state.trust_domain().clone();
        let bundles = self.state.ds.list_bundles().await?;
        Ok(Response::new(pb::ListFederatedBundlesResponse {
            bundles: bundles
                .iter()
                .filter(|b| b.trust_domain() != &own)
                .map(bundle_to_proto)
                .collect(),
        }))
    }

    async fn delete_federated_bundle(
        &self,
        req: Request<pb::DeleteFederatedBundleRequest>,
    ) -> Result<Response<pb::DeleteFederatedBundleResponse>, Status> {
        let td = TrustDomain::new(&req.into_inner().trust_domain)
            .map_err(|e| Status::invalid_argument(format!("trust_domain: {e}")))?;
        if &td == self.state.trust_domain() {
            return Err(Status::invalid_argument(
                "the server's own bundle cannot be deleted",
            ));
        }
        self.state.ds.delete_bundle(&td).await?;
        Ok(Response::new(pb::DeleteFederatedBundleResponse {}))
    }

    async fn create_federation_relationship(
        &self,
        req: Request<pb::FederationRelationshipRequest>,
    ) -> Result<Response<pb::FederationRelationship>, Status> {
        self.write_relationship(req, false).await
    }

    async fn get_federation_relationship(
        &self,
        req: Request<pb::GetFederationRelationshipRequest>,
    ) -> Result<Response<pb::FederationRelationship>, Status> {
        self.get_relationship(req).await
    }

    async fn list_federation_relationships(
        &self,
        req: Request<pb::ListFederationRelationshipsRequest>,
    ) -> Result<Response<pb::ListFederationRelationshipsResponse>, Status> {
        self.list_relationships(req).await
    }

    async fn update_federation_relationship(
        &self,
        req: Request<pb::FederationRelationshipRequest>,
    ) -> Result<Response<pb::FederationRelationship>, Status> {
        self.write_relationship(req, true).await
    }

    async fn delete_federation_relationship(
        &self,
        req: Request<pb::GetFederationRelationshipRequest>,
    ) -> Result<Response<pb::DeleteFederationRelationshipResponse>, Status> {
        self.delete_relationship(req).await
    }

    async fn refresh_federation_relationship(
        &self,
        req: Request<pb::GetFederationRelationshipRequest>,
    ) -> Result<Response<tpb::Bundle>, Status> {
        self.refresh_relationship(req).await
    }

    async fn count_bundles(
        &self,
        _req: Request<pb::CountBundlesRequest>,
    ) -> Result<Response<pb::CountResponse>, Status> {
        let own = self.state.trust_domain();
        let bundles = self.state.ds.list_bundles().await?;
        // The server's own bundle counts even before the datastore holds it.
        let own_stored = bundles.iter().any(|b| b.trust_domain() == own);
        let count = bundles.len() as u64 + u64::from(!own_stored);
        Ok(Response::new(pb::CountResponse { count }))
    }

    async fn mint_x509_svid(
        &self,
        req: Request<pb::MintX509SvidRequest>,
    ) -> Result<Response<pb::MintX509SvidResponse>, Status> {
        let r = req.into_inner();
        let id = self.workload_id(&r.spiffe_id)?;
        for d in &r.dns_names {
            if !tessera_core::entry::is_dns_name(d) {
                return Err(Status::invalid_argument(format!(
                    "dns name {d:?} is not valid"
                )));
            }
        }
        let pk = tessera_core::x509::csr_public_key(&r.csr, Some(&id))
            .map_err(|e| Status::invalid_argument(format!("csr: {e}")))?;
        let ttl = if r.ttl_seconds == 0 {
            self.state.config.x509_svid_ttl
        } else {
            Duration::from_secs(u64::from(r.ttl_seconds))
        };
        let ca = self.state.ca.clone();
        let chain =
            tokio::task::spawn_blocking(move || ca.sign_x509_svid(&id, &pk, &r.dns_names, ttl))
                .await
                .map_err(join_error)??;
        Ok(Response::new(pb::MintX509SvidResponse {
            cert_chain: chain,
        }))
    }

    async fn mint_jwt_svid(
        &self,
        req: Request<pb::MintJwtSvidRequest>,
    ) -> Result<Response<pb::MintJwtSvidResponse>, Status> {
        let r = req.into_inner();
        let id = self.workload_id(&r.spiffe_id)?;
        tessera_core::jwt::check_audience(&r.audience)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let ttl = if r.ttl_seconds == 0 {
            self.state.config.jwt_svid_ttl
        } else {
            Duration::from_secs(u64::from(r.ttl_seconds))
        };
        let ca = self.state.ca.clone();
        let svid = tokio::task::spawn_blocking(move || ca.sign_jwt_svid(&id, &r.audience, ttl))
            .await
            .map_err(join_error)??;
        Ok(Response::new(pb::MintJwtSvidResponse {
            token: svid.token,
            expires_at: svid.expiry,
        }))
    }

    async fn health(
        &self,
        _req: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        let mut details = Vec::new();
        let mut ready = true;
        match self.state.ds.ping().await {
            Ok(()) => details.push(format!("datastore ({}): ok", self.state.ds.name())),
            Err(e) => {
                ready = false;
                details.push(format!("datastore ({}): {e}", self.state.ds.name()));
            }
        }
        let ca = self.state.ca.clone();
        match tokio::task::spawn_blocking(move || ca.health())
            .await
            .map_err(join_error)?
        {
            Ok(()) => details.push(format!(
                "CA (key manager {}): ok",
                self.state.key_manager.name()
            )),
            Err(e) => {
                ready = false;
                details.push(format!(
                    "CA (key manager {}): {e}",
                    self.state.key_manager.name()
                ));
            }
        }
        details.extend(
            self.state
                .ca
                .notes()
                .into_iter()
                .map(|n| format!("CA: {n}")),
        );
        details.push(format!(
            "entries: {} cached at revision {}",
            self.state.entries.len(),
            self.state.entries.revision()
        ));
        Ok(Response::new(pb::HealthResponse { ready, details }))
    }

    async fn get_log_level(
        &self,
        _req: Request<pb::GetLogLevelRequest>,
    ) -> Result<Response<pb::LogLevel>, Status> {
        log_level_to_proto(crate::log_level::get())
    }

    async fn set_log_level(
        &self,
        req: Request<pb::SetLogLevelRequest>,
    ) -> Result<Response<pb::LogLevel>, Status> {
        let filter = req.into_inner().filter;
        let r = crate::log_level::set((!filter.trim().is_empty()).then_some(filter.as_str()));
        if let Ok((current, _)) = &r {
            tracing::warn!(filter = %current, "log filter changed through the admin API");
        }
        log_level_to_proto(r)
    }
}

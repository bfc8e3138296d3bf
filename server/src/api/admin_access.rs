//! Who may call the admin API, and the audit record every call leaves.
//!
//! The admin API is served twice: on the admin socket, where the socket's mode (0770
//! in a directory only the server's user and group can enter) decides who may call,
//! and on the TLS port, where only an admin may: a caller whose X509-SVID carries the
//! SPIFFE ID of a registration entry with `admin` set (an unexpired one), or an ID
//! listed in `admin_ids`. Agents, other workloads and callers without a client
//! certificate get PermissionDenied saying why (the last ones as soon as their headers
//! arrive: [`super::preauth`]). Refused calls count against their
//! source address like failed attestations do; past the rate they are refused with
//! ResourceExhausted before anything else, and summed up in the log instead of one
//! audit record each.
//!
//! [`GuardedAdmin`] wraps [`AdminApi`]: each method names its arguments for the
//! audit record (never a join token, key, CSR or JWT), checks the caller, runs the
//! call and records how it ended.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::{Value, json};
use tessera_core::SpiffeId;
use tessera_proto::admin as pb;
use tessera_proto::admin::admin_server::Admin;
use tessera_proto::types as tpb;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use super::ServerState;
use super::admin::AdminApi;
use super::ratelimit::AttestationLimit;
use crate::audit::{self, Caller, Outcome};
use crate::datastore::{EntryFilter, Page};
use crate::transport::PeerInfo;

/// The refusal of a TLS caller that presented no client certificate.
pub const NO_CLIENT_CERTIFICATE: &str = "the admin API on this port needs the X509-SVID of an \
     admin (a registration entry with admin set, or an ID in the server's admin_ids) as the \
     client certificate; this connection presented none";

/// Where a [`GuardedAdmin`] is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The admin Unix socket: its permissions decide who may call.
    Socket,
    /// The TLS port: only admin SPIFFE IDs may call.
    Tls,
}

/// The admin API with its access rule and audit records. See the module
/// documentation.
#[derive(Debug, Clone)]
pub struct GuardedAdmin {
    inner: AdminApi,
    state: Arc<ServerState>,
    listener: Listener,
    /// Refused calls per source address (TLS only; `None` when the limit is off).
    refusals: Option<Arc<AttestationLimit>>,
}

impl GuardedAdmin {
    /// The admin API as served on `listener`.
    pub fn new(state: Arc<ServerState>, listener: Listener) -> Self {
        let l = &state.config.limits;
        let refusals = match listener {
            Listener::Socket => None,
            Listener::Tls => AttestationLimit::named(
                l.attestation_rate,
                l.attestation_burst,
                "admin calls on the TLS port refused by the rate limit",
            )
            .map(Arc::new),
        };
        Self {
            inner: AdminApi::new(state.clone()),
            state,
            listener,
            refusals,
        }
    }

    fn caller<T>(&self, req: &Request<T>) -> Caller {
        match self.listener {
            Listener::Socket => {
                let cred = req
                    .extensions()
                    .get::<UdsConnectInfo>()
                    .and_then(|i| i.peer_cred);
                Caller::Unix {
                    uid: cred.map(|c| c.uid()),
                    gid: cred.map(|c| c.gid()),
                    pid: cred.and_then(|c| c.pid()),
                }
            }
            Listener::Tls => {
                let info = req.extensions().get::<PeerInfo>();
                Caller::tls(
                    info.and_then(|i| i.spiffe_id.as_ref()),
                    info.and_then(|i| i.addr),
                )
            }
        }
    }

    /// Whether `id` may administer this server over TLS; the refusal says why not.
    async fn check_admin(&self, id: Option<&SpiffeId>) -> Result<(), Status> {
        let Some(id) = id else {
            return Err(Status::permission_denied(NO_CLIENT_CERTIFICATE));
        };
        let td = self.state.trust_domain();
        if tessera_core::entry::is_agent_id(id, td) {
            return Err(Status::permission_denied(format!(
                "{id} is an agent; agents may not call the admin API"
            )));
        }
        if id.is_reserved() {
            return Err(Status::permission_denied(format!(
                "{id} is reserved for the server and its agents; it may not call the admin API"
            )));
        }
        if self.state.config.admin_ids.contains(id) {
            return Ok(());
        }
        if self.has_admin_entry(id).await? {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "{id} may not call the admin API: no registration entry for it has admin set, \
             and the server's admin_ids does not list it"
        )))
    }

    /// Whether an unexpired entry with `admin` set grants `id`. Read from the
    /// datastore, not the entry cache: an entry deleted on any server sharing it stops
    /// granting at once.
    async fn has_admin_entry(&self, id: &SpiffeId) -> Result<bool, Status> {
        let filter = EntryFilter {
            by_spiffe_id: Some(id.clone()),
            ..EntryFilter::default()
        };
        let now = self.state.clock.unix();
        let mut page = Page {
            size: 1000,
            token: String::new(),
        };
        loop {
            let (entries, next) = self.state.ds.list_entries(&filter, &page).await?;
            if entries.iter().any(|e| e.admin && !e.is_expired(now)) {
                return Ok(true);
            }
            if next.is_empty() {
                return Ok(false);
            }
            page.token = next;
        }
    }

    /// Runs one call: checks the caller (on the TLS port), runs `f`, and records the
    /// call with `args`, its outcome (messages cleaned of `secrets`) and what
    /// `produced` picks from the answer.
    async fn call<Req, Resp, Fut>(
        &self,
        method: &'static str,
        req: Request<Req>,
        args: Value,
        secrets: &[&str],
        f: impl FnOnce(Request<Req>) -> Fut,
        produced: impl FnOnce(&Resp) -> Option<Value>,
    ) -> Result<Response<Resp>, Status>
    where
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let caller = self.caller(&req);
        if self.listener == Listener::Tls {
            let info = req.extensions().get::<PeerInfo>().cloned();
            let addr: Option<SocketAddr> = info.as_ref().and_then(|i| i.addr);
            let admitted = match (&self.refusals, addr) {
                (Some(limit), Some(addr)) => Some(limit.check(addr.ip().into())?),
                _ => None,
            };
            if let Err(status) = self
                .check_admin(info.as_ref().and_then(|i| i.spiffe_id.as_ref()))
                .await
            {
                tracing::warn!(
                    method,
                    caller = ?info.as_ref().and_then(|i| i.spiffe_id.as_ref()).map(ToString::to_string),
                    peer = ?addr,
                    "admin call refused: {}",
                    status.message()
                );
                self.record(
                    caller,
                    method,
                    args,
                    Outcome::of_status(&status, secrets),
                    None,
                );
                return Err(status);
            }
            if let Some(a) = admitted {
                a.succeeded();
            }
        }
        let result = f(req).await;
        let outcome = Outcome::of(&result, secrets);
        let produced = result.as_ref().ok().and_then(|r| produced(r.get_ref()));
        self.record(caller, method, args, outcome, produced);
        result
    }

    fn record(
        &self,
        caller: Caller,
        method: &'static str,
        args: Value,
        outcome: Outcome,
        produced: Option<Value>,
    ) {
        self.state.audit.record(&audit::Admin {
            caller,
            method,
            args,
            outcome,
            produced,
        });
    }
}

/// An entry's fields for the record (all of them: an entry holds no secret).
fn entry_args(e: &tpb::Entry) -> Value {
    json!({
        "id": e.id,
        "spiffe_id": e.spiffe_id,
        "parent_id": e.parent_id,
        "selectors": e.selectors,
        "x509_svid_ttl": e.x509_svid_ttl,
        "jwt_svid_ttl": e.jwt_svid_ttl,
        "federates_with": e.federates_with,
        "admin": e.admin,
        "downstream": e.downstream,
        "dns_names": e.dns_names,
        "hint": e.hint,
        "expires_at": e.expires_at,
    })
}

/// A bundle for the record: what it is, not its certificates or keys.
fn bundle_args(b: &tpb::Bundle) -> Value {
    json!({
        "trust_domain": b.trust_domain,
        "sequence": b.sequence,
        "x509_authorities": b.x509_authorities.len(),
        "jwt_authorities": b.jwt_authorities.len(),
    })
}

/// A relationship's audit arguments: where the bundle comes from, not the roots.
fn relationship_args(r: &pb::FederationRelationshipRequest) -> Value {
    let rel = r.relationship.as_ref();
    json!({
        "trust_domain": rel.map(|r| r.trust_domain.as_str()),
        "bundle_endpoint_url": rel.map(|r| r.bundle_endpoint_url.as_str()),
        "bundle_endpoint_profile": rel.map(|r| r.bundle_endpoint_profile.as_str()),
        "endpoint_spiffe_id": rel.map(|r| r.endpoint_spiffe_id.as_str()),
        "ca_bundle": rel.is_some_and(|r| !r.ca_bundle_pem.is_empty()),
        "trust_domain_bundle": r.trust_domain_bundle.as_ref().map(bundle_args),
    })
}

fn nothing<T>(_: &T) -> Option<Value> {
    None
}

fn count(r: &pb::CountResponse) -> Option<Value> {
    Some(json!({ "count": r.count }))
}

#[tonic::async_trait]
impl Admin for GuardedAdmin {
    async fn create_entry(
        &self,
        req: Request<pb::CreateEntryRequest>,
    ) -> Result<Response<tpb::Entry>, Status> {
        let args = json!({ "entry": req.get_ref().entry.as_ref().map(entry_args) });
        self.call(
            "CreateEntry",
            req,
            args,
            &[],
            |r| self.inner.create_entry(r),
            |e| Some(json!({ "entry_id": e.id })),
        )
        .await
    }

    async fn batch_create_entries(
        &self,
        req: Request<pb::BatchCreateEntriesRequest>,
    ) -> Result<Response<pb::BatchCreateEntriesResponse>, Status> {
        let entries: Vec<Value> = req.get_ref().entries.iter().map(entry_args).collect();
        self.call(
            "BatchCreateEntries",
            req,
            json!({ "entries": entries }),
            &[],
            |r| self.inner.batch_create_entries(r),
            |resp| {
                let results: Vec<Value> = resp
                    .results
                    .iter()
                    .map(|r| {
                        let code = r.status.as_ref().map_or(0, |s| s.code);
                        match &r.entry {
                            Some(e) if code == 0 => json!({ "entry_id": e.id }),
                            _ => json!({
                                "code": format!("{:?}", tonic::Code::from_i32(code)),
                                "reason": r.status.as_ref().map(|s| audit::records::clip(&s.message, audit::records::MAX_REASON)),
                            }),
                        }
                    })
                    .collect();
                Some(json!({ "results": results }))
            },
        )
        .await
    }

    async fn get_entry(
        &self,
        req: Request<pb::GetEntryRequest>,
    ) -> Result<Response<tpb::Entry>, Status> {
        let args = json!({ "id": req.get_ref().id });
        self.call(
            "GetEntry",
            req,
            args,
            &[],
            |r| self.inner.get_entry(r),
            nothing,
        )
        .await
    }

    async fn list_entries(
        &self,
        req: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        let r = req.get_ref();
        let args = json!({
            "by_spiffe_id": r.by_spiffe_id,
            "by_parent_id": r.by_parent_id,
            "by_selectors": r.by_selectors,
            "page_size": r.page_size,
            "page_token": r.page_token,
        });
        self.call(
            "ListEntries",
            req,
            args,
            &[],
            |r| self.inner.list_entries(r),
            |resp| Some(json!({ "entries": resp.entries.len() })),
        )
        .await
    }

    async fn update_entry(
        &self,
        req: Request<pb::UpdateEntryRequest>,
    ) -> Result<Response<tpb::Entry>, Status> {
        let args = json!({ "entry": req.get_ref().entry.as_ref().map(entry_args) });
        self.call(
            "UpdateEntry",
            req,
            args,
            &[],
            |r| self.inner.update_entry(r),
            |e| Some(json!({ "revision_number": e.revision_number })),
        )
        .await
    }

    async fn delete_entry(
        &self,
        req: Request<pb::DeleteEntryRequest>,
    ) -> Result<Response<pb::DeleteEntryResponse>, Status> {
        let args = json!({ "id": req.get_ref().id });
        self.call(
            "DeleteEntry",
            req,
            args,
            &[],
            |r| self.inner.delete_entry(r),
            nothing,
        )
        .await
    }

    async fn count_entries(
        &self,
        req: Request<pb::CountEntriesRequest>,
    ) -> Result<Response<pb::CountResponse>, Status> {
        let r = req.get_ref();
        let args = json!({
            "by_spiffe_id": r.by_spiffe_id,
            "by_parent_id": r.by_parent_id,
            "by_selectors": r.by_selectors,
        });
        self.call(
            "CountEntries",
            req,
            args,
            &[],
            |r| self.inner.count_entries(r),
            count,
        )
        .await
    }

    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::JoinToken>, Status> {
        // The token is a secret until an agent uses it: neither the one asked for nor
        // the one made is recorded, and neither may ride in on an error message.
        let r = req.get_ref();
        let asked = r.token.clone();
        let args = json!({
            "ttl_seconds": r.ttl_seconds,
            "spiffe_id": r.spiffe_id,
            "token_chosen_by_caller": !r.token.is_empty(),
        });
        self.call(
            "CreateJoinToken",
            req,
            args,
            &[asked.as_str()],
            |r| self.inner.create_join_token(r),
            |t| Some(json!({ "expires_at": t.expires_at })),
        )
        .await
    }

    async fn list_agents(
        &self,
        req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        self.call(
            "ListAgents",
            req,
            json!({}),
            &[],
            |r| self.inner.list_agents(r),
            |resp| Some(json!({ "agents": resp.agents.len() })),
        )
        .await
    }

    async fn get_agent(
        &self,
        req: Request<pb::AgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let args = json!({ "spiffe_id": req.get_ref().spiffe_id });
        self.call(
            "GetAgent",
            req,
            args,
            &[],
            |r| self.inner.get_agent(r),
            nothing,
        )
        .await
    }

    async fn count_agents(
        &self,
        req: Request<pb::CountAgentsRequest>,
    ) -> Result<Response<pb::CountResponse>, Status> {
        self.call(
            "CountAgents",
            req,
            json!({}),
            &[],
            |r| self.inner.count_agents(r),
            count,
        )
        .await
    }

    async fn evict_agent(
        &self,
        req: Request<pb::AgentRequest>,
    ) -> Result<Response<pb::AgentActionResponse>, Status> {
        let args = json!({ "spiffe_id": req.get_ref().spiffe_id });
        self.call(
            "EvictAgent",
            req,
            args,
            &[],
            |r| self.inner.evict_agent(r),
            nothing,
        )
        .await
    }

    async fn ban_agent(
        &self,
        req: Request<pb::AgentRequest>,
    ) -> Result<Response<pb::AgentActionResponse>, Status> {
        let args = json!({ "spiffe_id": req.get_ref().spiffe_id });
        self.call(
            "BanAgent",
            req,
            args,
            &[],
            |r| self.inner.ban_agent(r),
            nothing,
        )
        .await
    }

    async fn get_bundle(
        &self,
        req: Request<pb::GetBundleRequest>,
    ) -> Result<Response<tpb::Bundle>, Status> {
        self.call(
            "GetBundle",
            req,
            json!({}),
            &[],
            |r| self.inner.get_bundle(r),
            |b| Some(json!({ "sequence": b.sequence })),
        )
        .await
    }

    async fn set_federated_bundle(
        &self,
        req: Request<pb::SetFederatedBundleRequest>,
    ) -> Result<Response<tpb::Bundle>, Status> {
        let args = json!({ "bundle": req.get_ref().bundle.as_ref().map(bundle_args) });
        self.call(
            "SetFederatedBundle",
            req,
            args,
            &[],
            |r| self.inner.set_federated_bundle(r),
            |b| Some(json!({ "sequence": b.sequence })),
        )
        .await
    }

    async fn list_federated_bundles(
        &self,
        req: Request<pb::ListFederatedBundlesRequest>,
    ) -> Result<Response<pb::ListFederatedBundlesResponse>, Status> {
        self.call(
            "ListFederatedBundles",
            req,
            json!({}),
            &[],
            |r| self.inner.list_federated_bundles(r),
            |resp| Some(json!({ "bundles": resp.bundles.len() })),
        )
        .await
    }

    async fn delete_federated_bundle(
        &self,
        req: Request<pb::DeleteFederatedBundleRequest>,
    ) -> Result<Response<pb::DeleteFederatedBundleResponse>, Status> {
        let args = json!({ "trust_domain": req.get_ref().trust_domain });
        self.call(
            "DeleteFederatedBundle",
            req,
            args,
            &[],
            |r| self.inner.delete_federated_bundle(r),
            nothing,
        )
        .await
    }

    async fn create_federation_relationship(
        &self,
        req: Request<pb::FederationRelationshipRequest>,
    ) -> Result<Response<pb::FederationRelationship>, Status> {
        let args = relationship_args(req.get_ref());
        let f = |r| self.inner.create_federation_relationship(r);
        let m = "CreateFederationRelationship";
        self.call(m, req, args, &[], f, nothing).await
    }

    async fn get_federation_relationship(
        &self,
        req: Request<pb::GetFederationRelationshipRequest>,
    ) -> Result<Response<pb::FederationRelationship>, Status> {
        let args = json!({ "trust_domain": req.get_ref().trust_domain });
        let f = |r| self.inner.get_federation_relationship(r);
        let m = "GetFederationRelationship";
        self.call(m, req, args, &[], f, nothing).await
    }

    async fn list_federation_relationships(
        &self,
        req: Request<pb::ListFederationRelationshipsRequest>,
    ) -> Result<Response<pb::ListFederationRelationshipsResponse>, Status> {
        let f = |r| self.inner.list_federation_relationships(r);
        let produced = |resp: &pb::ListFederationRelationshipsResponse| {
            Some(json!({ "relationships": resp.relationships.len() }))
        };
        let m = "ListFederationRelationships";
        self.call(m, req, json!({}), &[], f, produced).await
    }

    async fn update_federation_relationship(
        &self,
        req: Request<pb::FederationRelationshipRequest>,
    ) -> Result<Response<pb::FederationRelationship>, Status> {
        let args = relationship_args(req.get_ref());
        let f = |r| self.inner.update_federation_relationship(r);
        let m = "UpdateFederationRelationship";
        self.call(m, req, args, &[], f, nothing).await
    }

    async fn delete_federation_relationship(
        &self,
        req: Request<pb::GetFederationRelationshipRequest>,
    ) -> Result<Response<pb::DeleteFederationRelationshipResponse>, Status> {
        let args = json!({ "trust_domain": req.get_ref().trust_domain });
        let f = |r| self.inner.delete_federation_relationship(r);
        let m = "DeleteFederationRelationship";
        self.call(m, req, args, &[], f, nothing).await
    }

    async fn refresh_federation_relationship(
        &self,
        req: Request<pb::GetFederationRelationshipRequest>,
    ) -> Result<Response<tpb::Bundle>, Status> {
        let args = json!({ "trust_domain": req.get_ref().trust_domain });
        let f = |r| self.inner.refresh_federation_relationship(r);
        let produced = |b: &tpb::Bundle| Some(json!({ "sequence": b.sequence }));
        let m = "RefreshFederationRelationship";
        self.call(m, req, args, &[], f, produced).await
    }

    async fn count_bundles(
        &self,
        req: Request<pb::CountBundlesRequest>,
    ) -> Result<Response<pb::CountResponse>, Status> {
        self.call(
            "CountBundles",
            req,
            json!({}),
            &[],
            |r| self.inner.count_bundles(r),
            count,
        )
        .await
    }

    async fn mint_x509_svid(
        &self,
        req: Request<pb::MintX509SvidRequest>,
    ) -> Result<Response<pb::MintX509SvidResponse>, Status> {
        let r = req.get_ref();
        // Not the CSR: only its public key is used, and it is no one's business here.
        let args = json!({
            "spiffe_id": r.spiffe_id,
            "ttl_seconds": r.ttl_seconds,
            "dns_names": r.dns_names,
        });
        self.call(
            "MintX509Svid",
            req,
            args,
            &[],
            |r| self.inner.mint_x509_svid(r),
            |resp| {
                let info = resp
                    .cert_chain
                    .first()
                    .and_then(|c| tessera_core::x509::cert_info(c).ok())?;
                Some(json!({
                    "serial": info.serial_hex,
                    "expires_at": audit::records::unix_rfc3339(info.not_after),
                }))
            },
        )
        .await
    }

    async fn mint_jwt_svid(
        &self,
        req: Request<pb::MintJwtSvidRequest>,
    ) -> Result<Response<pb::MintJwtSvidResponse>, Status> {
        let r = req.get_ref();
        let args = json!({
            "spiffe_id": r.spiffe_id,
            "audience": r.audience,
            "ttl_seconds": r.ttl_seconds,
        });
        self.call(
            "MintJwtSvid",
            req,
            args,
            &[],
            |r| self.inner.mint_jwt_svid(r),
            // Not the token: it is a credential.
            |resp| Some(json!({ "expires_at": audit::records::unix_rfc3339(resp.expires_at) })),
        )
        .await
    }

    async fn health(
        &self,
        req: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        self.call(
            "Health",
            req,
            json!({}),
            &[],
            |r| self.inner.health(r),
            |resp| Some(json!({ "ready": resp.ready })),
        )
        .await
    }

    async fn get_log_level(
        &self,
        req: Request<pb::GetLogLevelRequest>,
    ) -> Result<Response<pb::LogLevel>, Status> {
        self.call(
            "GetLogLevel",
            req,
            json!({}),
            &[],
            |r| self.inner.get_log_level(r),
            nothing,
        )
        .await
    }

    async fn set_log_level(
        &self,
        req: Request<pb::SetLogLevelRequest>,
    ) -> Result<Response<pb::LogLevel>, Status> {
        let args = json!({ "filter": audit::records::clip(&req.get_ref().filter, 256) });
        self.call(
            "SetLogLevel",
            req,
            args,
            &[],
            |r| self.inner.set_log_level(r),
            |l| Some(json!({ "current": l.current })),
        )
        .await
    }
}

//! The SPIFFE Workload API: the caller is identified from the kernel (never by
//! credentials it sends), attested, matched against the cached entries, and served.
//! Streams send the full state at once and again on every change.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use prost::Message;
use tessera_core::{SelectorSet, SpiffeId, TrustDomain};
use tessera_proto::workload as pb;
use tessera_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::peer::{PeerCred, start_time};
use crate::cache::Snapshot;
use crate::manager::Agent;

type Out<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Rejects calls without the `workload.spiffe.io: true` metadata (a browser or a
/// confused proxy cannot add it), as the Workload API standard asks.
pub fn check_security_header(req: Request<()>) -> Result<Request<()>, Status> {
    match req.metadata().get(tessera_proto::WORKLOAD_HEADER) {
        Some(v) if v.as_bytes() == b"true" => Ok(req),
        _ => Err(Status::invalid_argument(
            "security header missing from request: every Workload API call must carry workload.spiffe.io: true",
        )),
    }
}

/// The Workload API service.
#[derive(Debug, Clone)]
pub struct WorkloadApi {
    agent: Arc<Agent>,
}

impl WorkloadApi {
    pub fn new(agent: Arc<Agent>) -> Self {
        Self { agent }
    }

    /// Attests the caller: its selectors, with the PID-reuse guard around the reads.
    async fn attest<T>(&self, req: &Request<T>) -> Result<SelectorSet, Status> {
        let cred: PeerCred = req
            .extensions()
            .get::<Option<PeerCred>>()
            .copied()
            .flatten()
            .ok_or_else(|| Status::internal("the connection carries no peer credentials"))?;
        if cred.pid <= 0 {
            return Err(Status::permission_denied(
                "the caller's PID is not visible from the agent's PID namespace",
            ));
        }
        let cfg = self.agent.config().workload_attestors.unix.clone();
        let pid = cred.pid;
        // Reading /proc/<pid>/status takes microseconds and names come from a cache,
        // so attestation runs in place; hashing the caller's binary reads a file of
        // any size and goes to the blocking pool.
        let selectors = if cfg.discover_workload_path {
            tokio::task::spawn_blocking(move || attest_guarded(pid, &cfg))
                .await
                .map_err(|e| Status::internal(e.to_string()))??
        } else {
            attest_guarded(pid, &cfg)?
        };
        Ok(selectors.into_iter().collect())
    }

    fn no_identity() -> Status {
        Status::permission_denied("no identity issued")
    }

    fn ready(snap: &Snapshot) -> Result<(), Status> {
        if snap.bundle.is_none() || !snap.synced {
            return Err(Status::unavailable(
                "the agent is not ready yet (it has not synced with the server)",
            ));
        }
        Ok(())
    }
}

/// Attests process `pid` between two reads of its start time: if the PID was reused
/// by another process meanwhile, the caller is refused (SPEC.md's PID-reuse guard).
fn attest_guarded(
    pid: i32,
    cfg: &crate::config::UnixAttestorConfig,
) -> Result<Vec<tessera_core::Selector>, Status> {
    let before = start_time(pid)
        .map_err(|e| Status::permission_denied(format!("caller process {pid} is gone: {e}")))?;
    let s = super::unix::attest(pid, cfg)
        .map_err(|e| Status::permission_denied(format!("workload attestation failed: {e}")))?;
    let after = start_time(pid).map_err(|e| {
        Status::permission_denied(format!(
            "caller process {pid} exited during attestation: {e}"
        ))
    })?;
    if before != after {
        return Err(Status::permission_denied(format!(
            "PID {pid} was reused by another process during attestation"
        )));
    }
    Ok(s)
}

/// The trust domains a workload's entries federate with.
fn federated_for<'a>(snap: &'a Snapshot, selectors: &'a SelectorSet) -> BTreeSet<&'a TrustDomain> {
    snap.matching_entries(selectors)
        .flat_map(|e| e.federates_with.iter())
        .collect()
}

fn x509_response(snap: &Snapshot, selectors: &SelectorSet) -> Option<pb::X509svidResponse> {
    let bundle = snap.bundle.as_ref()?;
    let bundle_der = bundle.x509_concatenated();
    let mut hints = HashSet::new();
    let mut svids = Vec::new();
    for s in snap.svids_for(selectors) {
        // Hints must be unique within a response: the first SVID with a hint keeps it.
        if !s.entry.hint.is_empty() && !hints.insert(s.entry.hint.as_str()) {
            continue;
        }
        svids.push(pb::X509svid {
            spiffe_id: s.entry.spiffe_id.to_string(),
            x509_svid: s.chain.concat(),
            x509_svid_key: s.key.pkcs8_der().to_vec(),
            bundle: bundle_der.clone(),
            hint: s.entry.hint.clone(),
        });
    }
    if svids.is_empty() {
        return None;
    }
    let federated_bundles = federated_for(snap, selectors)
        .into_iter()
        .filter_map(|td| {
            snap.federated
                .get(td)
                .map(|b| (td.id_string(), b.x509_concatenated()))
        })
        .collect();
    Some(pb::X509svidResponse {
        svids,
        crl: Vec::new(),
        federated_bundles,
    })
}

fn x509_bundles(snap: &Snapshot, selectors: &SelectorSet) -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    if let Some(b) = &snap.bundle {
        m.insert(b.trust_domain().id_string(), b.x509_concatenated());
    }
    for td in federated_for(snap, selectors) {
        if let Some(b) = snap.federated.get(td) {
            m.insert(td.id_string(), b.x509_concatenated());
        }
    }
    m
}

fn jwt_bundles(snap: &Snapshot, selectors: &SelectorSet) -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    if let Some(b) = &snap.bundle {
        m.insert(b.trust_domain().id_string(), b.to_jwt_jwks().into_bytes());
    }
    for td in federated_for(snap, selectors) {
        if let Some(b) = snap.federated.get(td) {
            m.insert(td.id_string(), b.to_jwt_jwks().into_bytes());
        }
    }
    m
}

impl WorkloadApi {
    /// Streams `build(snapshot)` to the caller at once and after every change that
    /// alters it; ends with PermissionDenied when the caller has no identity left.
    fn stream<T, F>(&self, selectors: SelectorSet, needs_identity: bool, build: F) -> Out<T>
    where
        T: Message + Clone + PartialEq + Send + 'static,
        F: Fn(&Snapshot, &SelectorSet) -> Option<T> + Send + 'static,
    {
        let mut rx = self.agent.cache.subscribe();
        let (tx, out) = mpsc::channel::<Result<T, Status>>(2);
        tokio::spawn(async move {
            // What was last sent: a change of the snapshot that leaves this caller's
            // answer as it was sends nothing.
            let mut last: Option<T> = None;
            loop {
                let snap = rx.borrow_and_update().clone();
                if needs_identity
                    && snap.synced
                    && snap.matching_entries(&selectors).next().is_none()
                {
                    let _ = tx.send(Err(WorkloadApi::no_identity())).await;
                    return;
                }
                if let Some(msg) = build(&snap, &selectors)
                    && last.as_ref() != Some(&msg)
                {
                    if tx.send(Ok(msg.clone())).await.is_err() {
                        return;
                    }
                    last = Some(msg);
                }
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(out))
    }

    fn check_identity(&self, selectors: &SelectorSet) -> Result<(), Status> {
        let snap = self.agent.cache.snapshot();
        Self::ready(&snap)?;
        if !self.agent.config().allow_unauthenticated_verifiers
            && snap.matching_entries(selectors).next().is_none()
        {
            return Err(Self::no_identity());
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = Out<pb::X509svidResponse>;
    type FetchX509BundlesStream = Out<pb::X509BundlesResponse>;
    type FetchJWTBundlesStream = Out<pb::JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        req: Request<pb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let selectors = self.attest(&req).await?;
        let snap = self.agent.cache.snapshot();
        Self::ready(&snap)?;
        if snap.matching_entries(&selectors).next().is_none() {
            tracing::info!(selectors = ?selectors.iter().map(ToString::to_string).collect::<Vec<_>>(), "workload has no identity");
            return Err(Self::no_identity());
        }
        Ok(Response::new(self.stream(selectors, true, x509_response)))
    }

    async fn fetch_x509_bundles(
        &self,
        req: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let selectors = self.attest(&req).await?;
        self.check_identity(&selectors)?;
        let needs = !self.agent.config().allow_unauthenticated_verifiers;
        Ok(Response::new(self.stream(
            selectors,
            needs,
            |snap, sels| {
                snap.bundle.as_ref()?;
                Some(pb::X509BundlesResponse {
                    crl: Vec::new(),
                    bundles: x509_bundles(snap, sels).into_iter().collect(),
                })
            },
        )))
    }

    async fn fetch_jwtsvid(
        &self,
        req: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        let selectors = self.attest(&req).await?;
        let r = req.into_inner();
        if r.audience.is_empty() || r.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        let wanted = if r.spiffe_id.is_empty() {
            None
        } else {
            Some(
                SpiffeId::new(&r.spiffe_id)
                    .map_err(|e| Status::invalid_argument(format!("spiffe_id: {e}")))?,
            )
        };
        let snap = self.agent.cache.snapshot();
        Self::ready(&snap)?;
        let entries: Vec<_> = snap
            .matching_entries(&selectors)
            .filter(|e| wanted.as_ref().is_none_or(|w| &e.spiffe_id == w))
            .cloned()
            .collect();
        if entries.is_empty() {
            return Err(Self::no_identity());
        }
        let mut svids = Vec::new();
        let mut hints = HashSet::new();
        for e in entries {
            if !e.hint.is_empty() && !hints.insert(e.hint.clone()) {
                continue;
            }
            let jwt = self.agent.jwt_svid(&e, &r.audience).await.map_err(|err| {
                tracing::warn!(entry = %e.id, "cannot mint a JWT-SVID: {err}");
                Status::unavailable(format!("cannot mint a JWT-SVID for {}: {err}", e.spiffe_id))
            })?;
            svids.push(pb::Jwtsvid {
                spiffe_id: e.spiffe_id.to_string(),
                svid: jwt.token,
                hint: e.hint.clone(),
            });
        }
        Ok(Response::new(pb::JwtsvidResponse { svids }))
    }

    async fn fetch_jwt_bundles(
        &self,
        req: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let selectors = self.attest(&req).await?;
        self.check_identity(&selectors)?;
        let needs = !self.agent.config().allow_unauthenticated_verifiers;
        Ok(Response::new(self.stream(
            selectors,
            needs,
            |snap, sels| {
                snap.bundle.as_ref()?;
                Some(pb::JwtBundlesResponse {
                    bundles: jwt_bundles(snap, sels).into_iter().collect(),
                })
            },
        )))
    }

    async fn validate_jwtsvid(
        &self,
        req: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        self.attest(&req).await?;
        let r = req.into_inner();
        if r.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if r.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let snap = self.agent.cache.snapshot();
        Self::ready(&snap)?;
        let now = tessera_core::x509::unix_seconds(std::time::SystemTime::now());
        let svid = tessera_core::jwt::validate_jwt_svid(
            &r.svid,
            |td| {
                if snap.bundle.as_ref().is_some_and(|b| b.trust_domain() == td) {
                    snap.bundle.clone()
                } else {
                    snap.federated.get(td).cloned()
                }
            },
            std::slice::from_ref(&r.audience),
            now,
        )
        .map_err(|e| Status::invalid_argument(format!("invalid JWT-SVID: {e}")))?;
        Ok(Response::new(pb::ValidateJwtsvidResponse {
            spiffe_id: svid.spiffe_id.to_string(),
            claims: Some(json_to_struct(svid.claims)),
        }))
    }
}

fn json_to_value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(json_to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// JWT claims as a `google.protobuf.Struct`.
pub fn json_to_struct(m: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: m.into_iter().map(|(k, v)| (k, json_to_value(v))).collect(),
    }
}

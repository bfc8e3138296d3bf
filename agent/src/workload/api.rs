//! The SPIFFE Workload API: the caller is identified from the kernel (never by
//! credentials it sends), attested, matched against the cached entries, and served.
//! Streams send the full state at once and again on every change.
//!
//! The service serves from an [`IdentitySource`] (the agent, in a unit test a fake)
//! and attests callers with the configured [`WorkloadAttestors`].

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use prost::Message;
use tessera_core::clock::SharedClock;
use tessera_core::{SelectorSet, SpiffeId, TrustDomain, WorkloadKey};
use tessera_proto::workload as pb;
use tessera_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::attestor::{AttestationError, Peer, WorkloadAttestors};
use super::peer::{Caller, CallerError};
use super::source::IdentitySource;
use crate::cache::{Snapshot, Svid};
use crate::manager::Agent;

pub(super) type Out<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

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
    source: Arc<dyn IdentitySource>,
    attestors: WorkloadAttestors,
    /// Whether callers without an identity may read bundles and validate JWT-SVIDs.
    allow_unauthenticated_verifiers: bool,
    /// Judges which SVIDs have expired.
    clock: SharedClock,
}

impl WorkloadApi {
    /// The service, serving from `source` to callers attested by `attestors`.
    pub fn new(
        source: Arc<dyn IdentitySource>,
        attestors: WorkloadAttestors,
        allow_unauthenticated_verifiers: bool,
        clock: SharedClock,
    ) -> Self {
        Self {
            source,
            attestors,
            allow_unauthenticated_verifiers,
            clock,
        }
    }

    /// The service the agent's configuration describes, serving from the agent.
    pub fn for_agent(agent: Arc<Agent>) -> Self {
        let cfg = agent.config();
        let attestors = WorkloadAttestors::from_config(&cfg.workload_attestors);
        let allow = cfg.allow_unauthenticated_verifiers;
        let clock = agent.clock().clone();
        Self::new(agent, attestors, allow, clock)
    }

    /// Attests the caller: the process pinned when it connected, checked unchanged
    /// before and after its selectors are read.
    pub(super) async fn attest<T>(
        &self,
        req: &Request<T>,
    ) -> Result<(SelectorSet, Caller), Status> {
        let caller = req
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| Status::internal("the connection carries no caller information"))?;
        let selectors = attest_pinned(&caller, &self.attestors).await?;
        Ok((selectors.into_iter().collect(), caller))
    }

    /// The source's current snapshot.
    pub(super) fn source_snapshot(&self) -> Arc<Snapshot> {
        self.source.snapshot()
    }

    pub(super) fn now(&self) -> i64 {
        self.clock.unix()
    }

    pub(super) fn no_identity() -> Status {
        Status::permission_denied("no identity issued")
    }

    pub(super) fn ready(snap: &Snapshot) -> Result<(), Status> {
        if snap.bundle.is_none() || !snap.synced {
            return Err(Status::unavailable(
                "the agent is not ready yet (it has not synced with the server)",
            ));
        }
        Ok(())
    }
}

/// Refuses a caller whose pinned process is gone or changed (see `peer`); logged
/// once per connection.
fn refuse(caller: &Caller, e: CallerError) -> Status {
    if caller.first_refusal() {
        tracing::warn!(error = %e, "Workload API caller refused");
    }
    Status::permission_denied(e.to_string())
}

/// Whether the caller is still the process that connected, unchanged.
fn check_caller(caller: &Caller) -> Result<(), Status> {
    caller
        .pinned()
        .and_then(|p| p.check().map(drop))
        .map_err(|e| refuse(caller, e))
}

/// The caller's selectors, read between two checks that its process is the one that
/// connected, unchanged: nothing read belongs to another program or user.
async fn attest_pinned(
    caller: &Caller,
    attestors: &WorkloadAttestors,
) -> Result<Vec<tessera_core::Selector>, Status> {
    let pinned = caller.pinned().map_err(|e| refuse(caller, e))?;
    let dir = pinned.check().map_err(|e| refuse(caller, e))?;
    let selectors = attestors
        .attest(&Peer::new(pinned, dir.as_fd()))
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "workload attestation failed");
            match e {
                AttestationError::TimedOut { .. } => Status::unavailable(e.to_string()),
                AttestationError::AllFailed(_) => {
                    Status::permission_denied(format!("workload attestation failed: {e}"))
                }
            }
        })?;
    drop(dir);
    pinned.check().map_err(|e| refuse(caller, e))?;
    Ok(selectors)
}

/// The trust domains a workload's entries federate with.
pub(super) fn federated_for<'a>(
    snap: &'a Snapshot,
    selectors: &'a SelectorSet,
) -> BTreeSet<&'a TrustDomain> {
    snap.matching_entries(selectors)
        .flat_map(|e| e.federates_with.iter())
        .collect()
}

/// The X.509 bundles of the trust domains a workload's entries federate with, by
/// trust domain ID, as both X509-SVID responses carry them.
pub(super) fn federated_x509(
    snap: &Snapshot,
    selectors: &SelectorSet,
) -> std::collections::HashMap<String, Vec<u8>> {
    federated_for(snap, selectors)
        .into_iter()
        .filter_map(|td| {
            snap.federated
                .get(td)
                .map(|b| (td.id_string(), b.x509_concatenated()))
        })
        .collect()
}

/// A Unix time as RFC 3339, for messages.
pub(crate) fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

/// Whether an X509-SVID may be served at Unix time `now`. Its `notAfter` second is
/// already refused: it would expire while on its way.
pub fn servable(s: &Svid, now: i64) -> bool {
    now < s.not_after
}

/// The X509-SVIDs the workload gets at `now`: expired ones are never served. When the
/// workload's entries have SVIDs but every one has expired (the agent could not renew
/// them, e.g. the server is unreachable), the answer is Unavailable naming the expiry:
/// the identity is still there, the agent is not ready to serve it.
fn x509_response(
    snap: &Snapshot,
    selectors: &SelectorSet,
    now: i64,
) -> Result<Option<pb::X509svidResponse>, Status> {
    let Some(bundle) = snap.bundle.as_ref() else {
        return Ok(None);
    };
    if let Some(refusal) = only_tpm_keys(snap, selectors) {
        return Err(refusal);
    }
    let held = snap.svids_of_kind(selectors, WorkloadKey::Software);
    let valid: Vec<&Svid> = held.iter().copied().filter(|s| servable(s, now)).collect();
    if valid.is_empty() {
        return match held.iter().max_by_key(|s| s.not_after) {
            Some(s) => Err(Status::unavailable(format!(
                "the X509-SVID for {} expired at {} and has not been renewed yet (the agent cannot reach the server, or it cannot sign; see the agent's health check); retry later",
                s.entry.spiffe_id,
                rfc3339(s.not_after)
            ))),
            None => Ok(None),
        };
    }
    let bundle_der = bundle.x509_concatenated();
    let mut hints = HashSet::new();
    let mut svids = Vec::new();
    for s in valid {
        // Hints must be unique within a response: the first SVID with a hint keeps it.
        if !s.entry.hint.is_empty() && !hints.insert(s.entry.hint.as_str()) {
            continue;
        }
        svids.push(pb::X509svid {
            spiffe_id: s.entry.spiffe_id.to_string(),
            x509_svid: s.chain.concat(),
            x509_svid_key: match &s.key {
                crate::cache::SvidKey::Software(k) => k.pkcs8_der().to_vec(),
                // Filtered out above: TPM keys are never served here.
                crate::cache::SvidKey::Tpm(_) => continue,
            },
            bundle: bundle_der.clone(),
            hint: s.entry.hint.clone(),
        });
    }
    let federated_bundles = federated_x509(snap, selectors);
    Ok(Some(pb::X509svidResponse {
        svids,
        crl: Vec::new(),
        federated_bundles,
    }))
}

/// The refusal of FetchX509SVID for a workload whose entries all keep their keys
/// in the TPM: a PKCS#8 key cannot carry them, Tessera's own service does.
fn only_tpm_keys(snap: &Snapshot, selectors: &SelectorSet) -> Option<Status> {
    let mut entries = snap.matching_entries(selectors).peekable();
    let first = entries.peek()?.spiffe_id.clone();
    if snap
        .matching_entries(selectors)
        .all(|e| e.workload_key == WorkloadKey::Tpm)
    {
        return Some(Status::failed_precondition(format!(
            "the X509-SVID of {first} has its key in the agent's TPM (entry workload_key = tpm), which the SPIFFE Workload API cannot carry: fetch it from the service {}/FetchTpmX509SVID on this socket (`tessera-agent api fetch x509` does)",
            super::tpm_keys::SERVICE
        )));
    }
    None
}

/// When the next X509-SVID the workload is served stops being servable.
fn next_expiry(snap: &Snapshot, selectors: &SelectorSet, now: i64) -> Option<i64> {
    snap.svids_for(selectors)
        .into_iter()
        .filter(|s| servable(s, now))
        .map(|s| s.not_after)
        .min()
}

/// Sleeps until Unix time `at` by `clock` (forever for `None`).
async fn sleep_until_unix(clock: &SharedClock, at: Option<i64>) {
    match at {
        Some(at) => {
            let wait = u64::try_from(at.saturating_sub(clock.unix())).unwrap_or(0);
            tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
            // Whole seconds: make sure the second `at` has begun.
            while clock.unix() < at {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        None => std::future::pending().await,
    }
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
    /// Streams `build(snapshot, selectors, now)` to the caller at once, after every
    /// change that alters it and when a served X509-SVID expires. Ends with
    /// PermissionDenied when the caller has no identity left or its process is no
    /// longer the one that connected (checked before each message), and with the
    /// error `build` gives (Unavailable when every SVID expired).
    pub(super) fn stream<T, F>(
        &self,
        caller: Caller,
        selectors: SelectorSet,
        needs_identity: bool,
        build: F,
    ) -> Out<T>
    where
        T: Message + Clone + PartialEq + Send + 'static,
        F: Fn(&Snapshot, &SelectorSet, i64) -> Result<Option<T>, Status> + Send + 'static,
    {
        let mut rx = self.source.subscribe();
        let clock = self.clock.clone();
        let (tx, out) = mpsc::channel::<Result<T, Status>>(2);
        // The task logs inside the call's span.
        tokio::spawn(
            async move {
                // What was last sent: a change of the snapshot that leaves this caller's
                // answer as it was sends nothing.
                let mut last: Option<T> = None;
                loop {
                    let snap = rx.borrow_and_update().clone();
                    let now = clock.unix();
                    if needs_identity
                        && snap.synced
                        && snap.matching_entries(&selectors).next().is_none()
                    {
                        let _ = tx.send(Err(WorkloadApi::no_identity())).await;
                        return;
                    }
                    match build(&snap, &selectors, now) {
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                        Ok(Some(msg)) if last.as_ref() != Some(&msg) => {
                            if let Err(status) = check_caller(&caller) {
                                let _ = tx.send(Err(status)).await;
                                return;
                            }
                            if tx.send(Ok(msg.clone())).await.is_err() {
                                return;
                            }
                            last = Some(msg);
                        }
                        Ok(_) => {}
                    }
                    let expiry = next_expiry(&snap, &selectors, now);
                    tokio::select! {
                        r = rx.changed() => if r.is_err() { return },
                        _ = tx.closed() => return,
                        _ = sleep_until_unix(&clock, expiry) => {},
                    }
                }
            }
            .in_current_span(),
        );
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(out))
    }

    /// The rule of the bundle calls and ValidateJWTSVID: unless
    /// `allow_unauthenticated_verifiers` is set, only callers with an identity.
    fn check_identity(&self, selectors: &SelectorSet) -> Result<(), Status> {
        let snap = self.source.snapshot();
        Self::ready(&snap)?;
        if !self.allow_unauthenticated_verifiers
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
        let (selectors, caller) = self.attest(&req).await?;
        let snap = self.source.snapshot();
        Self::ready(&snap)?;
        if snap.matching_entries(&selectors).next().is_none() {
            tracing::info!(selectors = ?selectors.iter().map(ToString::to_string).collect::<Vec<_>>(), "workload has no identity");
            return Err(Self::no_identity());
        }
        // Every SVID expired: say so now rather than open a stream that has
        // nothing to send.
        x509_response(&snap, &selectors, self.now())?;
        Ok(Response::new(self.stream(
            caller,
            selectors,
            true,
            x509_response,
        )))
    }

    async fn fetch_x509_bundles(
        &self,
        req: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let (selectors, caller) = self.attest(&req).await?;
        self.check_identity(&selectors)?;
        let needs = !self.allow_unauthenticated_verifiers;
        Ok(Response::new(self.stream(
            caller,
            selectors,
            needs,
            |snap, sels, _| {
                Ok(snap.bundle.as_ref().map(|_| pb::X509BundlesResponse {
                    crl: Vec::new(),
                    bundles: x509_bundles(snap, sels).into_iter().collect(),
                }))
            },
        )))
    }

    async fn fetch_jwtsvid(
        &self,
        req: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        let (selectors, _) = self.attest(&req).await?;
        let r = req.into_inner();
        tessera_core::jwt::check_audience(&r.audience)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let wanted = if r.spiffe_id.is_empty() {
            None
        } else {
            Some(
                SpiffeId::new(&r.spiffe_id)
                    .map_err(|e| Status::invalid_argument(format!("spiffe_id: {e}")))?,
            )
        };
        let snap = self.source.snapshot();
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
            let jwt = self.source.jwt_svid(&e, &r.audience).await.map_err(|err| {
                tracing::warn!(entry = %e.id, error = %err, "cannot mint a JWT-SVID");
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
        let (selectors, caller) = self.attest(&req).await?;
        self.check_identity(&selectors)?;
        let needs = !self.allow_unauthenticated_verifiers;
        Ok(Response::new(self.stream(
            caller,
            selectors,
            needs,
            |snap, sels, _| {
                Ok(snap.bundle.as_ref().map(|_| pb::JwtBundlesResponse {
                    bundles: jwt_bundles(snap, sels).into_iter().collect(),
                }))
            },
        )))
    }

    async fn validate_jwtsvid(
        &self,
        req: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        let (selectors, _) = self.attest(&req).await?;
        // The bundle calls' rule: a caller without an identity validates nothing
        // unless `allow_unauthenticated_verifiers` says it may.
        self.check_identity(&selectors)?;
        let r = req.into_inner();
        if r.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if r.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let snap = self.source.snapshot();
        let now = self.now();
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

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::key::{KeyType, SoftwareKey};
    use tessera_core::{Bundle, RegistrationEntry, Selector};

    const NOW: i64 = 1_800_000_000;

    fn entry(id: &str, path: &str, selector: &str) -> Arc<RegistrationEntry> {
        Arc::new(RegistrationEntry {
            id: id.into(),
            spiffe_id: SpiffeId::new(&format!("spiffe://example.org/{path}")).unwrap(),
            parent_id: SpiffeId::new("spiffe://example.org/node").unwrap(),
            selectors: vec![Selector::new("unix", selector).unwrap()],
            x509_svid_ttl: 0,
            jwt_svid_ttl: 0,
            federates_with: Vec::new(),
            admin: false,
            downstream: false,
            dns_names: Vec::new(),
            hint: String::new(),
            expires_at: 0,
            revision_number: 1,
            created_at: 0,
            workload_key: Default::default(),
        })
    }

    fn svid(e: &Arc<RegistrationEntry>, not_after: i64) -> Svid {
        Svid {
            entry: e.clone(),
            chain: Arc::new(vec![e.spiffe_id.to_string().into_bytes()]),
            key: crate::cache::SvidKey::Software(Arc::new(
                SoftwareKey::generate(KeyType::EcP256).unwrap(),
            )),
            not_before: not_after - 3600,
            not_after,
            rotate_at: not_after - 1800,
            revision: 1,
        }
    }

    /// A workload with two entries whose SVIDs expire at `a` and `b`.
    fn snapshot(a: i64, b: i64) -> (Snapshot, SelectorSet) {
        let e1 = entry("e1", "one", "uid:1000");
        let e2 = entry("e2", "two", "gid:1000");
        let snap = Snapshot {
            generation: 1,
            synced: true,
            bundle: Some(Arc::new(Bundle::with_x509(
                TrustDomain::new("example.org").unwrap(),
                vec![b"root".to_vec()],
            ))),
            federated: BTreeMap::new(),
            entries: vec![e1.clone(), e2.clone()],
            svids: [
                ("e1".to_string(), svid(&e1, a)),
                ("e2".to_string(), svid(&e2, b)),
            ]
            .into_iter()
            .collect(),
        };
        let selectors = [
            Selector::new("unix", "uid:1000").unwrap(),
            Selector::new("unix", "gid:1000").unwrap(),
        ]
        .into_iter()
        .collect();
        (snap, selectors)
    }

    fn ids(r: &pb::X509svidResponse) -> Vec<&str> {
        r.svids.iter().map(|s| s.spiffe_id.as_str()).collect()
    }

    #[test]
    fn expired_svids_are_never_served() {
        let (snap, sels) = snapshot(NOW + 10, NOW + 20);
        let r = x509_response(&snap, &sels, NOW).unwrap().unwrap();
        assert_eq!(
            ids(&r),
            ["spiffe://example.org/one", "spiffe://example.org/two"]
        );
        assert_eq!(next_expiry(&snap, &sels, NOW), Some(NOW + 10));
        // The first expires: only the second is served, and the next wake-up is
        // its expiry.
        let r = x509_response(&snap, &sels, NOW + 10).unwrap().unwrap();
        assert_eq!(ids(&r), ["spiffe://example.org/two"]);
        assert_eq!(next_expiry(&snap, &sels, NOW + 10), Some(NOW + 20));
        // Both expired: Unavailable, naming the identity and the time.
        let err = x509_response(&snap, &sels, NOW + 20).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(
            err.message().contains("spiffe://example.org/two")
                && err.message().contains(&rfc3339(NOW + 20))
                && err.message().contains("expired"),
            "{}",
            err.message()
        );
        assert_eq!(next_expiry(&snap, &sels, NOW + 20), None);
    }

    #[test]
    fn entries_without_svids_yet_wait_rather_than_fail() {
        let (mut snap, sels) = snapshot(NOW + 10, NOW + 20);
        snap.svids.clear();
        assert!(x509_response(&snap, &sels, NOW).unwrap().is_none());
        assert_eq!(next_expiry(&snap, &sels, NOW), None);
    }

    /// Entries whose key is in the TPM are never served here; a workload that has
    /// only those is told which service serves them.
    #[test]
    fn tpm_key_entries_are_left_to_their_service() {
        let (mut snap, sels) = snapshot(NOW + 10, NOW + 20);
        let mut e2 = (*snap.entries[1]).clone();
        e2.workload_key = WorkloadKey::Tpm;
        let e2 = Arc::new(e2);
        snap.entries[1] = e2.clone();
        snap.svids.insert("e2".into(), svid(&e2, NOW + 20));
        // Both kinds: the software SVID only.
        let r = x509_response(&snap, &sels, NOW).unwrap().unwrap();
        assert_eq!(ids(&r), ["spiffe://example.org/one"]);
        // Only the TPM-held one: refused, naming the service.
        let only_tpm: SelectorSet = [Selector::new("unix", "gid:1000").unwrap()]
            .into_iter()
            .collect();
        let err = x509_response(&snap, &only_tpm, NOW).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(
            err.message()
                .contains("tessera.local.v1.TpmWorkloadKeys/FetchTpmX509SVID")
                && err.message().contains("spiffe://example.org/two"),
            "{}",
            err.message()
        );
        // And the service refuses a workload that has no TPM-held entry.
        let only_software: SelectorSet = [Selector::new("unix", "uid:1000").unwrap()]
            .into_iter()
            .collect();
        let err = super::super::tpm_keys::tpm_response(&snap, &only_software, NOW).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.message().contains("FetchX509SVID"), "{}", err.message());
    }

    #[test]
    fn times_read_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }

    /// The handlers, through the seams: a fake identity source, an attestor that says
    /// who the caller is, this test process pinned as the caller, a fake clock.
    mod handlers {
        use super::*;
        use crate::cache::{Cache, CachedJwt};
        use crate::manager::AgentError;
        use crate::workload::attestor::{Peer, WorkloadAttestError, WorkloadAttestor};
        use crate::workload::peer::tests::pin_self;
        use futures::StreamExt;
        use std::sync::Mutex;
        use tessera_core::clock::ManualClock;
        use tokio::sync::watch;

        #[derive(Debug)]
        struct FakeSource {
            cache: Cache,
            jwt_fails: bool,
            minted: Mutex<Vec<String>>,
        }

        #[tonic::async_trait]
        impl IdentitySource for FakeSource {
            fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
                self.cache.subscribe()
            }
            async fn jwt_svid(
                &self,
                entry: &RegistrationEntry,
                _audience: &[String],
            ) -> Result<CachedJwt, AgentError> {
                if self.jwt_fails {
                    return Err(AgentError::Unavailable("the server is away".into()));
                }
                self.minted.lock().unwrap().push(entry.id.clone());
                Ok(CachedJwt {
                    token: format!("token-{}", entry.id),
                    issued_at: NOW,
                    expires_at: NOW + 300,
                })
            }
        }

        /// The caller is whoever the test says.
        #[derive(Debug)]
        struct Claims(Vec<Selector>);

        #[tonic::async_trait]
        impl WorkloadAttestor for Claims {
            fn name(&self) -> &'static str {
                "unix"
            }
            async fn attest(&self, _: &Peer<'_>) -> Result<Vec<Selector>, WorkloadAttestError> {
                Ok(self.0.clone())
            }
        }

        struct Setup {
            api: WorkloadApi,
            source: Arc<FakeSource>,
            clock: Arc<ManualClock>,
        }

        fn setup(snap: Snapshot, caller: &[&str], allow_unauthenticated: bool) -> Setup {
            setup_with(snap, caller, allow_unauthenticated, false)
        }

        fn setup_with(
            snap: Snapshot,
            caller: &[&str],
            allow_unauthenticated: bool,
            jwt_fails: bool,
        ) -> Setup {
            let source = Arc::new(FakeSource {
                cache: Cache::new(),
                jwt_fails,
                minted: Mutex::new(Vec::new()),
            });
            source.cache.update(move |_| snap);
            let claims = caller
                .iter()
                .map(|s| s.parse::<Selector>().unwrap())
                .collect();
            let clock = ManualClock::at_unix(NOW as u64);
            let api = WorkloadApi::new(
                source.clone(),
                WorkloadAttestors::new(vec![Arc::new(Claims(claims))]),
                allow_unauthenticated,
                clock.clone(),
            );
            Setup { api, source, clock }
        }

        /// A request from this process, pinned as a connection's caller is.
        fn request<T>(msg: T) -> Request<T> {
            let (pinned, sock) = pin_self();
            // The pin outlives the socket it came from, as after a client's close.
            drop(sock);
            let mut req = Request::new(msg);
            req.extensions_mut().insert(Caller::new(Ok(pinned)));
            req
        }

        fn code<T>(r: Result<T, Status>) -> tonic::Code {
            match r {
                Ok(_) => tonic::Code::Ok,
                Err(s) => s.code(),
            }
        }

        async fn x509(api: &WorkloadApi) -> Result<pb::X509svidResponse, Status> {
            let mut stream = api
                .fetch_x509svid(request(pb::X509svidRequest {}))
                .await?
                .into_inner();
            stream.next().await.unwrap()
        }

        async fn x509_bundles(api: &WorkloadApi) -> Result<pb::X509BundlesResponse, Status> {
            let mut stream = api
                .fetch_x509_bundles(request(pb::X509BundlesRequest {}))
                .await?
                .into_inner();
            stream.next().await.unwrap()
        }

        async fn jwt_bundles(api: &WorkloadApi) -> Result<pb::JwtBundlesResponse, Status> {
            let mut stream = api
                .fetch_jwt_bundles(request(pb::JwtBundlesRequest {}))
                .await?
                .into_inner();
            stream.next().await.unwrap()
        }

        async fn jwt(api: &WorkloadApi) -> Result<pb::JwtsvidResponse, Status> {
            api.fetch_jwtsvid(request(pb::JwtsvidRequest {
                audience: vec!["db".into()],
                spiffe_id: String::new(),
            }))
            .await
            .map(Response::into_inner)
        }

        async fn validate(api: &WorkloadApi) -> Result<pb::ValidateJwtsvidResponse, Status> {
            api.validate_jwtsvid(request(pb::ValidateJwtsvidRequest {
                audience: "db".into(),
                svid: "not.a.token".into(),
            }))
            .await
            .map(Response::into_inner)
        }

        #[tokio::test]
        async fn a_caller_without_an_identity_is_denied() {
            let (snap, _) = snapshot(NOW + 100, NOW + 100);
            let s = setup(snap, &["unix:uid:4242"], false);
            use tonic::Code::PermissionDenied as Denied;
            assert_eq!(code(x509(&s.api).await), Denied);
            assert_eq!(code(jwt(&s.api).await), Denied);
            assert_eq!(code(x509_bundles(&s.api).await), Denied);
            assert_eq!(code(jwt_bundles(&s.api).await), Denied);
            assert_eq!(code(validate(&s.api).await), Denied);
            let e = x509(&s.api).await.unwrap_err();
            assert_eq!(e.message(), "no identity issued");
            assert!(s.source.minted.lock().unwrap().is_empty());
        }

        /// Never answers, or always fails.
        #[derive(Debug)]
        struct Broken(bool);

        #[tonic::async_trait]
        impl WorkloadAttestor for Broken {
            fn name(&self) -> &'static str {
                if self.0 { "stuck" } else { "failing" }
            }
            async fn attest(&self, _: &Peer<'_>) -> Result<Vec<Selector>, WorkloadAttestError> {
                if self.0 {
                    std::future::pending().await
                } else {
                    Err(WorkloadAttestError::new(std::io::Error::other(
                        "daemon away",
                    )))
                }
            }
        }

        #[tokio::test]
        async fn attestors_that_fail_deny_and_attestors_that_hang_are_unavailable() {
            let with = |attestors: Vec<Arc<dyn WorkloadAttestor>>| {
                let s = setup(snapshot(NOW + 100, NOW + 100).0, &[], false);
                WorkloadApi::new(
                    s.source,
                    WorkloadAttestors::new(attestors)
                        .with_timeout(std::time::Duration::from_millis(200)),
                    false,
                    s.clock,
                )
            };
            // One fails, the other still counts: the caller gets its SVID.
            let api = with(vec![
                Arc::new(Broken(false)),
                Arc::new(Claims(vec!["unix:uid:1000".parse().unwrap()])),
            ]);
            assert_eq!(code(x509(&api).await), tonic::Code::Ok);
            // All fail: denied, with their reasons.
            let api = with(vec![Arc::new(Broken(false))]);
            let e = x509(&api).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied);
            assert_eq!(
                e.message(),
                "workload attestation failed: every workload attestor failed: failing: daemon away"
            );
            // One hangs: Unavailable at the deadline, for every call.
            let api = with(vec![
                Arc::new(Claims(vec!["unix:uid:1000".parse().unwrap()])),
                Arc::new(Broken(true)),
            ]);
            for r in [
                code(x509(&api).await),
                code(jwt(&api).await),
                code(x509_bundles(&api).await),
                code(validate(&api).await),
            ] {
                assert_eq!(r, tonic::Code::Unavailable);
            }
            let e = jwt_bundles(&api).await.unwrap_err();
            assert_eq!(
                e.message(),
                "workload attestation did not finish within 200ms: stuck did not answer"
            );
        }

        #[tokio::test]
        async fn unauthenticated_verifiers_get_bundles_and_validation_but_no_svids() {
            let (snap, _) = snapshot(NOW + 100, NOW + 100);
            let s = setup(snap, &["unix:uid:4242"], true);
            let b = x509_bundles(&s.api).await.unwrap();
            assert_eq!(
                b.bundles.keys().collect::<Vec<_>>(),
                ["spiffe://example.org"]
            );
            assert_eq!(code(jwt_bundles(&s.api).await), tonic::Code::Ok);
            // The token is checked (and is no token), not refused for the caller.
            assert_eq!(code(validate(&s.api).await), tonic::Code::InvalidArgument);
            assert_eq!(code(x509(&s.api).await), tonic::Code::PermissionDenied);
            assert_eq!(code(jwt(&s.api).await), tonic::Code::PermissionDenied);
        }

        #[tokio::test]
        async fn a_caller_that_could_not_be_pinned_is_denied() {
            let (snap, _) = snapshot(NOW + 100, NOW + 100);
            let s = setup(snap, &["unix:uid:1000"], true);
            let mut req = Request::new(pb::X509svidRequest {});
            req.extensions_mut()
                .insert(Caller::new(Err(CallerError::NotVisible)));
            let e = s.api.fetch_x509svid(req).await.map(drop).unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied);
            assert!(e.message().contains("PID namespace"), "{}", e.message());
            // A request that did not come through the socket's connection at all.
            let e = s
                .api
                .fetch_x509svid(Request::new(pb::X509svidRequest {}))
                .await
                .map(drop)
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::Internal);
        }

        #[tokio::test]
        async fn nothing_is_served_before_the_first_sync() {
            let (mut snap, _) = snapshot(NOW + 100, NOW + 100);
            snap.synced = false;
            let s = setup(snap, &["unix:uid:1000"], true);
            use tonic::Code::Unavailable;
            assert_eq!(code(x509(&s.api).await), Unavailable);
            assert_eq!(code(jwt(&s.api).await), Unavailable);
            assert_eq!(code(x509_bundles(&s.api).await), Unavailable);
            assert_eq!(code(jwt_bundles(&s.api).await), Unavailable);
            assert_eq!(code(validate(&s.api).await), Unavailable);
        }

        #[tokio::test]
        async fn expired_svids_are_never_served_by_the_clock() {
            // Both entries match; one SVID is valid for 100 s, the other for 10 s.
            let (snap, _) = snapshot(NOW + 100, NOW + 10);
            let s = setup(snap, &["unix:uid:1000", "unix:gid:1000"], false);
            let r = x509(&s.api).await.unwrap();
            assert_eq!(
                ids(&r),
                ["spiffe://example.org/one", "spiffe://example.org/two"]
            );
            s.clock.advance(std::time::Duration::from_secs(10));
            let r = x509(&s.api).await.unwrap();
            assert_eq!(ids(&r), ["spiffe://example.org/one"]);
            s.clock.advance(std::time::Duration::from_secs(90));
            let e = x509(&s.api).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unavailable);
            assert!(e.message().contains("expired at"), "{}", e.message());
        }

        #[tokio::test]
        async fn hints_are_unique_within_an_answer() {
            let (mut snap, _) = snapshot(NOW + 100, NOW + 100);
            for e in &mut snap.entries {
                Arc::make_mut(e).hint = "main".into();
            }
            for s in snap.svids.values_mut() {
                s.entry = snap
                    .entries
                    .iter()
                    .find(|e| e.id == s.entry.id)
                    .unwrap()
                    .clone();
            }
            let s = setup(snap, &["unix:uid:1000", "unix:gid:1000"], false);
            let r = x509(&s.api).await.unwrap();
            assert_eq!(ids(&r), ["spiffe://example.org/one"]);
            assert_eq!(r.svids[0].hint, "main");
            let r = jwt(&s.api).await.unwrap();
            assert_eq!(r.svids.len(), 1);
            assert_eq!(
                (r.svids[0].spiffe_id.as_str(), r.svids[0].svid.as_str()),
                ("spiffe://example.org/one", "token-e1")
            );
            // The second was not even minted.
            assert_eq!(*s.source.minted.lock().unwrap(), ["e1"]);
        }

        /// Entry one federates with a.org, entry two with nobody; the agent holds the
        /// bundles of a.org and b.org.
        fn federating() -> Snapshot {
            let (mut snap, _) = snapshot(NOW + 100, NOW + 100);
            for td in ["a.org", "b.org"] {
                let td = TrustDomain::new(td).unwrap();
                snap.federated.insert(
                    td.clone(),
                    Arc::new(Bundle::with_x509(td, vec![b"root".to_vec()])),
                );
            }
            Arc::make_mut(&mut snap.entries[0]).federates_with =
                vec![TrustDomain::new("a.org").unwrap()];
            snap
        }

        fn keys(m: &std::collections::HashMap<String, Vec<u8>>) -> Vec<String> {
            let mut k: Vec<String> = m.keys().cloned().collect();
            k.sort();
            k
        }

        #[tokio::test]
        async fn federated_bundles_go_only_to_entries_that_federate() {
            let one = setup(federating(), &["unix:uid:1000"], false);
            let r = x509(&one.api).await.unwrap();
            assert_eq!(keys(&r.federated_bundles), ["spiffe://a.org"]);
            let b = x509_bundles(&one.api).await.unwrap();
            assert_eq!(keys(&b.bundles), ["spiffe://a.org", "spiffe://example.org"]);
            let b = jwt_bundles(&one.api).await.unwrap();
            assert_eq!(keys(&b.bundles), ["spiffe://a.org", "spiffe://example.org"]);
            let two = setup(federating(), &["unix:gid:1000"], false);
            let r = x509(&two.api).await.unwrap();
            assert!(r.federated_bundles.is_empty());
            let b = x509_bundles(&two.api).await.unwrap();
            assert_eq!(keys(&b.bundles), ["spiffe://example.org"]);
        }

        #[tokio::test]
        async fn a_jwt_the_agent_cannot_mint_is_unavailable() {
            let (snap, _) = snapshot(NOW + 100, NOW + 100);
            let s = setup_with(snap, &["unix:uid:1000"], false, true);
            let e = jwt(&s.api).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unavailable);
            assert!(
                e.message().contains("the server is away"),
                "{}",
                e.message()
            );
        }
    }
}

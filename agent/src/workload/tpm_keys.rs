//! `tessera.local.v1.TpmWorkloadKeys`: the X509-SVIDs of entries with
//! `workload_key = tpm`, whose keys live in the agent's TPM. Served on the Workload
//! API socket with the Workload API's own rules ([`WorkloadApi`]: the caller
//! identified from the kernel and attested, the `workload.spiffe.io: true` header,
//! a stream that sends the state at once and again on every change, rotation
//! included); each SVID carries its chain, the bundles, the key as a TSS2 PRIVATE
//! KEY file and the key's authorization value, given only to a caller whose
//! selectors match the entry.

use std::collections::HashSet;

use tessera_core::{SelectorSet, WorkloadKey};
use tessera_proto::local as lpb;
use tessera_proto::local::tpm_workload_keys_server::TpmWorkloadKeys;
use tonic::{Request, Response, Status};

use super::api::{Out, WorkloadApi, federated_x509, servable};
use crate::cache::{Snapshot, Svid, SvidKey};

/// The service's full name, for messages.
pub const SERVICE: &str = "tessera.local.v1.TpmWorkloadKeys";

/// The service; shares the Workload API's attestation and streaming.
#[derive(Debug, Clone)]
pub struct TpmKeysApi {
    api: WorkloadApi,
}

impl TpmKeysApi {
    /// Serves with `api`'s source, attestors and clock.
    pub fn new(api: WorkloadApi) -> Self {
        Self { api }
    }
}

fn no_tpm_entry() -> Status {
    Status::failed_precondition(
        "no entry of this workload keeps its key in the TPM (workload_key = tpm): its X509-SVIDs come from the SPIFFE Workload API's FetchX509SVID",
    )
}

/// The TPM-held X509-SVIDs the workload gets at `now` (never expired ones).
pub(super) fn tpm_response(
    snap: &Snapshot,
    selectors: &SelectorSet,
    now: i64,
) -> Result<Option<lpb::TpmX509svidResponse>, Status> {
    let Some(bundle) = snap.bundle.as_ref() else {
        return Ok(None);
    };
    if !snap
        .matching_entries(selectors)
        .any(|e| e.workload_key == WorkloadKey::Tpm)
    {
        return Err(no_tpm_entry());
    }
    let held = snap.svids_of_kind(selectors, WorkloadKey::Tpm);
    let valid: Vec<&Svid> = held.iter().copied().filter(|s| servable(s, now)).collect();
    if valid.is_empty() {
        return match held.iter().max_by_key(|s| s.not_after) {
            Some(s) => Err(Status::unavailable(format!(
                "the X509-SVID for {} expired at {} and has not been renewed yet; retry later",
                s.entry.spiffe_id,
                super::api::rfc3339(s.not_after)
            ))),
            None => Ok(None),
        };
    }
    let bundle_der = bundle.x509_concatenated();
    let mut hints = HashSet::new();
    let mut svids = Vec::new();
    for s in valid {
        let SvidKey::Tpm(key) = &s.key else {
            continue;
        };
        if !s.entry.hint.is_empty() && !hints.insert(s.entry.hint.as_str()) {
            continue;
        }
        svids.push(lpb::TpmX509svid {
            spiffe_id: s.entry.spiffe_id.to_string(),
            x509_svid: s.chain.concat(),
            tss2_private_key: key.tss2_pem(),
            key_auth: key.auth().to_vec(),
            bundle: bundle_der.clone(),
            hint: s.entry.hint.clone(),
        });
    }
    let federated_bundles = federated_x509(snap, selectors);
    Ok(Some(lpb::TpmX509svidResponse {
        svids,
        federated_bundles,
    }))
}

#[tonic::async_trait]
impl TpmWorkloadKeys for TpmKeysApi {
    type FetchTpmX509SVIDStream = Out<lpb::TpmX509svidResponse>;

    async fn fetch_tpm_x509svid(
        &self,
        req: Request<lpb::TpmX509svidRequest>,
    ) -> Result<Response<Self::FetchTpmX509SVIDStream>, Status> {
        let (selectors, caller) = self.api.attest(&req).await?;
        let snap = self.api.source_snapshot();
        WorkloadApi::ready(&snap)?;
        if snap.matching_entries(&selectors).next().is_none() {
            return Err(WorkloadApi::no_identity());
        }
        tpm_response(&snap, &selectors, self.api.now())?;
        Ok(Response::new(self.api.stream(
            caller,
            selectors,
            true,
            tpm_response,
        )))
    }
}

//! Measured boot, server side: the agent's TPM2_Quote of its PCRs, sent with its
//! TPM attestation and each renewal, is verified against its attested AK and this
//! request's qualifying data (see `tessera_tpm::verifier::quote`), then held to
//! its attestor's PCR allow-list when one is configured. A verified quote gives the
//! node the selectors `tpm:pcr:<index>:<sha256 hex>`, refreshed at each renewal.

use tessera_core::Selector;
use tessera_tpm::verifier::quote::{PcrQuote, verify_quote};
use tessera_tpm::wire::{PublicArea, hex};
use tonic::Status;

use crate::attestor::pcr_policy::PcrPolicy;

/// The selector type of the PCR selectors (that of `tpm_ek`).
const SELECTOR_TYPE: &str = "tpm";

/// What the check found.
#[derive(Debug)]
pub(super) enum Outcome {
    /// No quote, and none required.
    NotChecked,
    /// The quote holds (and matches the allow-list, if any): the PCR selectors.
    Ok(Vec<Selector>),
    /// Why the agent is refused.
    Refused(String),
}

impl Outcome {
    /// The status recorded on the agent (see `AttestedNode::measured_boot`).
    pub(super) fn status(&self) -> String {
        match self {
            Outcome::NotChecked => String::new(),
            Outcome::Ok(_) => "ok".into(),
            Outcome::Refused(r) => format!("refused: {r}"),
        }
    }
}

/// Checks `quote` (if any) with the agent's AK and `qualifying`, then against
/// `policy` (if any).
pub(super) fn check(
    policy: Option<&PcrPolicy>,
    ak_public: &[u8],
    quote: Option<&PcrQuote>,
    qualifying: &[u8],
) -> Outcome {
    let Some(quote) = quote else {
        return match policy {
            Some(p) => Outcome::Refused(format!(
                "the agent sent no PCR quote, and {} requires one (set [measured_boot] pcrs in its configuration)",
                p.setting()
            )),
            None => Outcome::NotChecked,
        };
    };
    let Ok(ak) = PublicArea::parse(ak_public) else {
        // Attested before the server kept AKs: nothing to check the quote with.
        return match policy {
            Some(_) => Outcome::Refused(
                "the server holds no attested AK for this agent to check its quote with (attest again)"
                    .into(),
            ),
            None => Outcome::NotChecked,
        };
    };
    if let Err(e) = verify_quote(&ak, quote, qualifying) {
        return Outcome::Refused(e.to_string());
    }
    if let Some(p) = policy
        && let Err(e) = p.check(quote)
    {
        return Outcome::Refused(e);
    }
    let mut selectors = Vec::new();
    for (i, v) in quote.pcrs.iter().zip(&quote.values) {
        match Selector::new(SELECTOR_TYPE, &format!("pcr:{i}:{}", hex(v))) {
            Ok(s) => selectors.push(s),
            Err(e) => return Outcome::Refused(format!("PCR {i}: {e}")),
        }
    }
    Outcome::Ok(selectors)
}

/// Whether `s` is a PCR selector.
fn is_pcr(s: &Selector) -> bool {
    s.kind() == SELECTOR_TYPE && s.value().starts_with("pcr:")
}

/// `old` with its PCR selectors replaced by `pcr`.
pub(super) fn with_pcr_selectors(old: &[Selector], pcr: Vec<Selector>) -> Vec<Selector> {
    old.iter()
        .filter(|s| !is_pcr(s))
        .cloned()
        .chain(pcr)
        .collect()
}

/// The refusal of an agent whose measured state does not hold.
pub(super) fn refusal(agent: &str, reason: &str) -> Status {
    Status::permission_denied(format!(
        "agent {agent}: measured boot: {reason}: no SVID issued"
    ))
}

/// The proto form of a renewal's quote.
pub(super) fn from_proto(q: tessera_proto::agent::PcrQuote) -> Result<PcrQuote, String> {
    let pcrs = q
        .pcrs
        .iter()
        .map(|&i| u8::try_from(i).map_err(|_| format!("PCR index {i} out of range")))
        .collect::<Result<Vec<u8>, String>>()?;
    Ok(PcrQuote {
        pcrs,
        values: q.values,
        attest: q.attest,
        signature: q.signature,
    })
}

/// The measured-boot check of a renewal by `node`, authenticated with the SVID
/// of serial `serial`.
pub(super) fn at_renewal(
    state: &super::ServerState,
    node: &crate::datastore::AttestedNode,
    serial: &str,
    csr: &[u8],
    quote: Option<tessera_proto::agent::PcrQuote>,
) -> Outcome {
    if !super::key_proof::is_tpm_attestor(&node.attestation_type) {
        return Outcome::NotChecked;
    }
    let quote = match quote.map(from_proto).transpose() {
        Ok(q) => q,
        Err(e) => return Outcome::Refused(format!("malformed PCR quote: {e}")),
    };
    let policy = state
        .attestors
        .get(node.attestation_type.as_str())
        .and_then(|a| a.pcr_policy());
    check(
        policy.as_deref(),
        &node.ak_public,
        quote.as_ref(),
        &tessera_tpm::verifier::quote::renewal_qualifying_data(serial, csr),
    )
}

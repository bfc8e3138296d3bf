//! The audit record types and the rules for what goes in them. Each field is chosen
//! here; nothing is copied into a record wholesale, so that a secret cannot ride in
//! on a field added later.

use std::net::SocketAddr;

use serde::Serialize;
use tessera_core::SpiffeId;
use tonic::{Code, Status};

use super::Record;

/// How a decision or call ended: `result` is `ok`, `denied` (PermissionDenied,
/// Unauthenticated) or `failed` (anything else), with the gRPC code and the reason.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Outcome {
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What replaces a secret found in a message.
pub const REDACTED: &str = "<redacted>";

impl Outcome {
    /// Success.
    pub fn ok() -> Self {
        Self {
            result: "ok",
            code: None,
            reason: None,
        }
    }

    /// A refusal or failure, its message cleaned of `secrets`.
    pub fn of_status(status: &Status, secrets: &[&str]) -> Self {
        let result = match status.code() {
            Code::Ok => "ok",
            Code::PermissionDenied | Code::Unauthenticated => "denied",
            _ => "failed",
        };
        Self {
            result,
            code: Some(format!("{:?}", status.code())),
            reason: Some(clip(&scrub(status.message(), secrets), MAX_REASON)),
        }
    }

    /// The outcome of a call's result.
    pub fn of<T>(result: &Result<T, Status>, secrets: &[&str]) -> Self {
        match result {
            Ok(_) => Self::ok(),
            Err(s) => Self::of_status(s, secrets),
        }
    }
}

/// The longest reason kept: messages may echo what a caller sent, and a record must
/// not grow with it.
pub const MAX_REASON: usize = 512;

/// `text` cut to at most `max` characters, marked with `…` when cut.
pub fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((at, _)) => format!("{}…", &text[..at]),
    }
}

/// `text` with every occurrence of each (non-empty) secret replaced.
pub fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(s, REDACTED);
    }
    out
}

/// A node attestation's decision.
#[derive(Debug, Clone, Serialize)]
pub struct Attestation {
    /// The attestor the agent asked for (absent when its first message was unusable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attestor: Option<String>,
    /// The agent ID, once the evidence established one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The agent's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl Record for Attestation {
    const TYPE: &'static str = "attestation";
}

/// Who called the admin API.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "transport", rename_all = "lowercase")]
pub enum Caller {
    /// Over the admin socket: the peer's credentials as the kernel recorded them at
    /// `connect()`.
    Unix {
        #[serde(skip_serializing_if = "Option::is_none")]
        uid: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        gid: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pid: Option<i32>,
    },
    /// Over the TLS port: the SPIFFE ID of the X509-SVID presented, if any.
    Tls {
        #[serde(skip_serializing_if = "Option::is_none")]
        spiffe_id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        address: Option<String>,
    },
}

impl Caller {
    /// A TLS caller.
    pub fn tls(spiffe_id: Option<&SpiffeId>, address: Option<SocketAddr>) -> Self {
        Caller::Tls {
            spiffe_id: spiffe_id.map(ToString::to_string),
            address: address.map(|a| a.to_string()),
        }
    }
}

/// One admin API call.
#[derive(Debug, Clone, Serialize)]
pub struct Admin {
    pub caller: Caller,
    /// The RPC's name, e.g. `CreateEntry`.
    pub method: &'static str,
    /// The arguments, field by field, without secrets.
    pub args: serde_json::Value,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// What the call produced that an auditor needs (the ID of a created entry, the
    /// serial of a minted SVID), without secrets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub produced: Option<serde_json::Value>,
}

impl Record for Admin {
    const TYPE: &'static str = "admin";
}

/// An SVID issued to an agent, for itself or for one of its workloads.
#[derive(Debug, Clone, Serialize)]
pub struct Svid {
    /// The agent it was issued to.
    pub agent_id: String,
    /// The SPIFFE ID in the SVID.
    pub spiffe_id: String,
    /// `x509` or `jwt`.
    pub kind: &'static str,
    /// `attestation`, `renewal` (the agent's own SVID) or `workload`.
    pub issued_for: &'static str,
    /// The registration entry a workload SVID was issued under.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry_id: Option<String>,
    /// The X509-SVID's serial number, lower-case hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// A JWT-SVID's audience.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<Vec<String>>,
    /// Expiry, RFC 3339.
    pub expires_at: String,
}

impl Record for Svid {
    const TYPE: &'static str = "svid";
}

/// A Unix time as RFC 3339 (the number itself when out of range).
pub fn unix_rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

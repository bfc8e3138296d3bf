//! What both datastore backends store the same way: the encoding of entries and
//! bundles as text, an entry's identity hash (what makes two entries duplicates),
//! event ID conversions and messages.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use ring::digest;
use tessera_core::bundle::JwtAuthority;
use tessera_core::{Bundle, RegistrationEntry, TrustDomain};

use super::{DatastoreError, Result};

/// Event IDs and revisions are u64 in the API and 64-bit signed integers in SQL.
pub(super) fn to_sql_id(id: u64) -> i64 {
    // Any ID above i64::MAX is beyond every stored one, which is what callers mean.
    i64::try_from(id).unwrap_or(i64::MAX)
}

pub(super) fn from_sql_id(id: i64) -> Result<u64> {
    u64::try_from(id).map_err(|_| DatastoreError::Backend(format!("negative event ID {id}")))
}

pub(super) fn decode_error(what: impl fmt::Display, e: impl fmt::Display) -> DatastoreError {
    DatastoreError::Backend(format!("{what}: stored record cannot be decoded: {e}"))
}

pub(super) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

pub(super) fn encode_entry(entry: &RegistrationEntry) -> Result<String> {
    serde_json::to_string(entry)
        .map_err(|e| DatastoreError::Invalid(format!("entry {} cannot be encoded: {e}", entry.id)))
}

pub(super) fn decode_entry(id: &str, data: &str) -> Result<RegistrationEntry> {
    serde_json::from_str(data).map_err(|e| decode_error(format_args!("entry {id}"), e))
}

pub(super) fn decode_bundle(td: &TrustDomain, jwks: &str, expiries: &[i64]) -> Result<Bundle> {
    let what = format_args!("bundle of {td}");
    let mut bundle =
        Bundle::from_jwks(td.clone(), jwks.as_bytes()).map_err(|e| decode_error(what, e))?;
    if bundle.jwt_authorities().len() != expiries.len() {
        return Err(decode_error(
            what,
            "JWT authority expiry times do not match its keys",
        ));
    }
    let authorities = bundle
        .jwt_authorities()
        .iter()
        .zip(expiries)
        .map(|(a, &expires_at)| JwtAuthority {
            expires_at,
            ..a.clone()
        })
        .collect();
    bundle.set_jwt_authorities(authorities);
    Ok(bundle)
}

/// The bundle as stored: its JWK Set and its JWT authorities' expiry times, in order.
pub(super) fn encode_bundle(bundle: &Bundle) -> Result<(String, String)> {
    let td = bundle.trust_domain();
    let jwks = bundle.to_jwks();
    let expiries: Vec<i64> = bundle
        .jwt_authorities()
        .iter()
        .map(|a| a.expires_at)
        .collect();
    // The JWK Set form silently drops keys it cannot express (an unsupported key type,
    // a certificate that does not parse): check that what would be read back is what
    // was given, rather than lose an authority.
    let faithful = decode_bundle(td, &jwks, &expiries).is_ok_and(|back| back == *bundle);
    if !faithful {
        return Err(DatastoreError::Invalid(format!(
            "bundle of {td} holds an authority that cannot be stored as a JWK \
             (unsupported key type or malformed certificate)"
        )));
    }
    let expiries = serde_json::to_string(&expiries)
        .map_err(|e| DatastoreError::Invalid(format!("bundle of {td} cannot be encoded: {e}")))?;
    Ok((jwks, expiries))
}

/// Join tokens are secrets until used: name one by a prefix only, so that errors and
/// logs do not carry a usable token.
pub(super) fn token_label(token: &str) -> String {
    let prefix: String = token.chars().take(4).collect();
    format!("join token {prefix}…")
}

/// What makes two entries the same registration.
pub(super) struct Identity {
    pub(super) hash: String,
    pub(super) spiffe_id: String,
    pub(super) parent_id: String,
    /// Sorted and deduplicated.
    pub(super) selectors: Vec<String>,
}

impl Identity {
    pub(super) fn of(entry: &RegistrationEntry) -> Self {
        let (spiffe_id, parent_id, mut selectors) = entry.identity_key();
        selectors.dedup();
        // Length-prefixed parts, so that no two different keys hash the same input.
        // Changing this encoding changes every stored hash: it needs a migration.
        let mut ctx = digest::Context::new(&digest::SHA256);
        for part in [&spiffe_id, &parent_id].into_iter().chain(&selectors) {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part.as_bytes());
        }
        let hash = ctx
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Self {
            hash,
            spiffe_id,
            parent_id,
            selectors,
        }
    }

    pub(super) fn duplicate_of(&self, existing_id: &str) -> DatastoreError {
        DatastoreError::AlreadyExists(format!(
            "entry {existing_id} with spiffe_id {}, parent_id {} and selectors [{}]",
            self.spiffe_id,
            self.parent_id,
            self.selectors.join(", ")
        ))
    }
}

/// `NotFound(what)` unless the statement changed a row.
pub(super) fn require_found(found: bool, what: &str) -> Result<()> {
    if found {
        Ok(())
    } else {
        Err(DatastoreError::NotFound(what.to_owned()))
    }
}

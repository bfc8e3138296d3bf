//! What both datastore backends store and read the same way, so that the two hold
//! the same data for the same calls: records as text (entries and CA records as
//! JSON, bundles as a JWK Set with their JWT authorities' expiry times), an attested
//! node from its columns, an entry's identity hash (what makes two entries
//! duplicates), new entries' defaults, selector filters and page tokens, event ID
//! conversions, and the messages for what is missing or undecodable.
//!
//! The SQL text stays with each backend: placeholders, column types and the queries
//! themselves differ (see docs/ARCHITECTURE.md, "Datastore").

use std::collections::BTreeSet;
use std::error::Error as StdError;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use ring::digest;
use tessera_core::bundle::JwtAuthority;
use tessera_core::{Bundle, RegistrationEntry, Selector, SpiffeId, TrustDomain};

use super::{AttestedNode, CaRecord, DatastoreError, EntryFilter, Failure, Relationship, Result};

/// Event IDs and revisions are u64 in the API and 64-bit signed integers in SQL.
pub(super) fn to_sql_id(id: u64) -> i64 {
    // Any ID above i64::MAX is beyond every stored one, which is what callers mean.
    i64::try_from(id).unwrap_or(i64::MAX)
}

pub(super) fn from_sql_id(id: i64) -> Result<u64> {
    u64::try_from(id)
        .map_err(|_| DatastoreError::Backend(Failure::new(format!("negative event ID {id}"))))
}

/// A stored record that does not decode, keeping the decoder's error.
pub(super) fn decode_error(
    what: impl fmt::Display,
    e: impl StdError + Send + Sync + 'static,
) -> DatastoreError {
    DatastoreError::Backend(Failure::caused_by(
        format!("{what}: stored record cannot be decoded: {e}"),
        e,
    ))
}

/// A record that cannot be encoded for storing, keeping the encoder's error.
fn cannot_encode(what: impl fmt::Display, e: serde_json::Error) -> DatastoreError {
    DatastoreError::Invalid(Failure::caused_by(
        format!("{what} cannot be encoded: {e}"),
        e,
    ))
}

/// A stored record that decodes but is inconsistent (`reason` says how).
fn inconsistent(what: impl fmt::Display, reason: &str) -> DatastoreError {
    DatastoreError::Backend(Failure::new(format!(
        "{what}: stored record cannot be decoded: {reason}"
    )))
}

pub(super) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

// ---- entries ----

/// Gives a new entry its defaults: a fresh UUID when it has no ID, and `now` as its
/// creation time when it has none.
pub(super) fn fill_new_entry(entry: &mut RegistrationEntry, now: i64) {
    if entry.id.is_empty() {
        entry.id = uuid::Uuid::new_v4().to_string();
    }
    if entry.created_at == 0 {
        entry.created_at = now;
    }
}

pub(super) fn encode_entry(entry: &RegistrationEntry) -> Result<String> {
    serde_json::to_string(entry).map_err(|e| cannot_encode(format_args!("entry {}", entry.id), e))
}

pub(super) fn decode_entry(id: &str, data: &str) -> Result<RegistrationEntry> {
    serde_json::from_str(data).map_err(|e| decode_error(format_args!("entry {id}"), e))
}

/// The error for an entry ID that is taken.
pub(super) fn entry_id_taken(id: &str) -> DatastoreError {
    DatastoreError::AlreadyExists(format!("entry with id {id}"))
}

/// The error for an entry that is not stored.
pub(super) fn entry_not_found(id: &str) -> DatastoreError {
    DatastoreError::NotFound(format!("entry {id:?}"))
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

/// An entry listing's filter as the backends query it.
pub(super) struct EntryQuery {
    pub(super) spiffe_id: Option<String>,
    pub(super) parent_id: Option<String>,
    /// Sorted and deduplicated.
    pub(super) selectors: Vec<String>,
}

impl EntryQuery {
    pub(super) fn of(filter: &EntryFilter) -> Self {
        Self {
            spiffe_id: filter.by_spiffe_id.as_ref().map(SpiffeId::to_string),
            parent_id: filter.by_parent_id.as_ref().map(SpiffeId::to_string),
            selectors: filter
                .by_selectors
                .iter()
                .map(Selector::to_string)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
        }
    }
}

/// Cuts a page out of what a listing read, given the page size (0: no limit).
/// Backends read one row more than the page: that row tells whether another page
/// follows, so the last page never comes with a token that leads to an empty one.
/// Returns the page and the next page's token (empty after the last).
pub(super) fn finish_page(
    mut entries: Vec<RegistrationEntry>,
    size: u32,
) -> (Vec<RegistrationEntry>, String) {
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    let mut next = String::new();
    if size > 0 && entries.len() > size {
        entries.truncate(size);
        next = entries.last().map(|e| e.id.clone()).unwrap_or_default();
    }
    (entries, next)
}

// ---- attested nodes ----

/// An attested node as its columns hold it, before its ID and selectors are parsed.
pub(super) struct NodeColumns {
    pub(super) id: String,
    pub(super) attestation_type: String,
    pub(super) cert_serial: String,
    pub(super) cert_not_after: i64,
    pub(super) new_cert_serial: String,
    pub(super) new_cert_not_after: i64,
    pub(super) banned: bool,
    pub(super) can_reattest: bool,
    pub(super) key_in_tpm: bool,
    pub(super) ak_public: Vec<u8>,
    pub(super) measured_boot: String,
    pub(super) created_at: i64,
    pub(super) updated_at: i64,
}

impl NodeColumns {
    /// The node, with its selectors in their stored order.
    pub(super) fn into_node(self, selectors: &[String]) -> Result<AttestedNode> {
        let what = format!("attested node {}", self.id);
        let spiffe_id = SpiffeId::new(&self.id).map_err(|e| decode_error(&what, e))?;
        let selectors = selectors
            .iter()
            .map(|s| s.parse::<Selector>())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| decode_error(&what, e))?;
        Ok(AttestedNode {
            spiffe_id,
            attestation_type: self.attestation_type,
            cert_serial: self.cert_serial,
            cert_not_after: self.cert_not_after,
            new_cert_serial: self.new_cert_serial,
            new_cert_not_after: self.new_cert_not_after,
            banned: self.banned,
            can_reattest: self.can_reattest,
            selectors,
            created_at: self.created_at,
            updated_at: self.updated_at,
            key_in_tpm: self.key_in_tpm,
            ak_public: self.ak_public,
            measured_boot: self.measured_boot,
        })
    }
}

// ---- join tokens ----

/// Join tokens are secrets until used: name one by a prefix only, so that errors and
/// logs do not carry a usable token.
pub(super) fn token_label(token: &str) -> String {
    let prefix: String = token.chars().take(4).collect();
    format!("join token {prefix}…")
}

// ---- bundles ----

fn decode_bundle(td: &TrustDomain, jwks: &str, expiries: &[i64]) -> Result<Bundle> {
    let what = format_args!("bundle of {td}");
    let mut bundle =
        Bundle::from_jwks(td.clone(), jwks.as_bytes()).map_err(|e| decode_error(what, e))?;
    if bundle.jwt_authorities().len() != expiries.len() {
        return Err(inconsistent(
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

/// The bundle as stored: its JWK Set and its JWT authorities' expiry times (a JSON
/// array, in order).
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
        return Err(DatastoreError::Invalid(
            format!(
                "bundle of {td} holds an authority that cannot be stored as a JWK \
                 (unsupported key type or malformed certificate)"
            )
            .into(),
        ));
    }
    let expiries = serde_json::to_string(&expiries)
        .map_err(|e| cannot_encode(format_args!("bundle of {td}"), e))?;
    Ok((jwks, expiries))
}

/// The bundle stored for `td` as [`encode_bundle`] wrote it.
pub(super) fn decode_bundle_columns(td: &str, jwks: &str, expiries: &str) -> Result<Bundle> {
    let what = format_args!("bundle of {td}");
    let td = TrustDomain::new(td).map_err(|e| decode_error(what, e))?;
    let expiries: Vec<i64> = serde_json::from_str(expiries).map_err(|e| decode_error(what, e))?;
    decode_bundle(&td, jwks, &expiries)
}

// ---- CA journal ----

pub(super) fn encode_ca_record(record: &CaRecord) -> Result<String> {
    serde_json::to_string(record)
        .map_err(|e| cannot_encode(format_args!("CA record {}", record.id), e))
}

pub(super) fn decode_ca_record(id: &str, data: &str) -> Result<CaRecord> {
    serde_json::from_str(data).map_err(|e| decode_error(format_args!("CA record {id}"), e))
}

// ---- federation relationships ----

pub(super) fn encode_relationship(rel: &Relationship) -> Result<String> {
    serde_json::to_string(rel).map_err(|e| {
        cannot_encode(
            format_args!("federation relationship {}", rel.trust_domain),
            e,
        )
    })
}

pub(super) fn decode_relationship(td: &str, data: &str) -> Result<Relationship> {
    let what = format_args!("federation relationship {td}");
    let rel: Relationship = serde_json::from_str(data).map_err(|e| decode_error(what, e))?;
    if rel.trust_domain.name() != td {
        return Err(inconsistent(what, "it names another trust domain"));
    }
    Ok(rel)
}

// ---- any record ----

/// `NotFound(what)` unless the statement changed a row.
pub(super) fn require_found(found: bool, what: &str) -> Result<()> {
    if found {
        Ok(())
    } else {
        Err(DatastoreError::NotFound(what.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> RegistrationEntry {
        RegistrationEntry {
            id: id.into(),
            spiffe_id: "spiffe://example.org/web".parse().expect("id"),
            parent_id: "spiffe://example.org/agent".parse().expect("id"),
            selectors: vec![
                "unix:uid:1".parse().expect("selector"),
                "unix:gid:2".parse().expect("selector"),
            ],
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
        }
    }

    #[test]
    fn pages_carry_a_token_only_when_more_follows() {
        let read: Vec<_> = ["a", "b", "c"].into_iter().map(entry).collect();
        let (page, next) = finish_page(read.clone(), 2);
        assert_eq!(page.len(), 2);
        assert_eq!(next, "b");
        let (page, next) = finish_page(read[..2].to_vec(), 2);
        assert_eq!(page.len(), 2);
        assert_eq!(next, "", "exactly a page: nothing follows");
        let (page, next) = finish_page(read, 0);
        assert_eq!((page.len(), next.as_str()), (3, ""));
    }

    #[test]
    fn identity_ignores_selector_order_and_repeats() {
        let a = entry("a");
        let mut b = entry("b");
        b.selectors.reverse();
        b.selectors.push(b.selectors[0].clone());
        assert_eq!(Identity::of(&a).hash, Identity::of(&b).hash);
        let mut c = entry("c");
        c.selectors.pop();
        assert_ne!(Identity::of(&a).hash, Identity::of(&c).hash);
    }

    /// Entries are stored as JSON documents in both datastores, so the workload_key
    /// field needs no new column: a record written before it existed reads as a
    /// software key, and a value no server wrote is refused by name.
    #[test]
    fn workload_key_is_stored_in_the_entry_record() {
        let mut e = entry("e1");
        e.workload_key = tessera_core::WorkloadKey::Tpm;
        let data = encode_entry(&e).expect("encode");
        assert!(data.contains(r#""workload_key":"tpm""#), "{data}");
        assert_eq!(decode_entry("e1", &data).expect("decode"), e);
        let old = data.replace(r#","workload_key":"tpm""#, "");
        assert!(!old.contains("workload_key"));
        let read = decode_entry("e1", &old).expect("decode an older record");
        assert_eq!(read.workload_key, tessera_core::WorkloadKey::Software);
        let bad = data.replace(r#""workload_key":"tpm""#, r#""workload_key":"hsm""#);
        let err = decode_entry("e1", &bad).expect_err("unknown kind");
        let text = format!("{err} {:?}", std::error::Error::source(&err));
        assert!(text.contains("entry e1") && text.contains("hsm"), "{text}");
    }

    #[test]
    fn undecodable_records_keep_the_decoder_error() {
        let err = decode_entry("e1", "{not json").expect_err("must not decode");
        assert!(err.to_string().contains("entry e1"), "{err}");
        let cause = std::error::Error::source(&err).and_then(StdError::source);
        assert!(
            cause.is_some_and(|c| c.is::<serde_json::Error>()),
            "{cause:?}"
        );
        let err = decode_bundle_columns("example.org", "{\"keys\": []}", "[1]")
            .expect_err("one expiry too many");
        assert!(matches!(err, DatastoreError::Backend(_)), "{err:?}");
        assert!(err.to_string().contains("do not match its keys"), "{err}");
    }
}

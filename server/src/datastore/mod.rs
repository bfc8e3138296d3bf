//! The datastore seam: everything the server persists (registration entries and their
//! change events, attested nodes, join tokens, bundles, the CA journal) behind one
//! trait, so that SQLite (the embedded default) and PostgreSQL (several servers) are
//! interchangeable and pass the same conformance suite.
//!
//! - `sqlite/` and `postgres/`: one folder per backend, one file per kind of record
//!   (entries, events, nodes, join tokens, bundles, CA journal) plus its connection,
//!   schema and error code. Each backend's `mod.rs` implements [`Datastore`] by
//!   delegating to those files.
//! - `codec` and `serials`: what both backends store and decide the same way (record
//!   encodings, the entry identity hash, the rules for an agent's SVID serials).
//! - `conformance`: the behaviour every backend must show, compiled only for tests
//!   (and, for backends outside this crate, with the `test-support` feature).

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tessera_core::{Bundle, RegistrationEntry, Selector, SpiffeId, TrustDomain};

pub use crate::federation::Relationship;

mod codec;
#[cfg(any(test, feature = "test-support"))]
pub mod conformance;
mod error;
pub mod postgres;
mod serials;
pub mod sqlite;

pub use error::{DatastoreError, Failure, Result};

/// Filters for listing entries; unset fields match everything.
#[derive(Debug, Clone, Default)]
pub struct EntryFilter {
    pub by_spiffe_id: Option<SpiffeId>,
    pub by_parent_id: Option<SpiffeId>,
    /// Entries that hold every one of these selectors (they may hold more).
    pub by_selectors: Vec<Selector>,
}

/// A page request: at most `size` results after the opaque `token` (empty: first page).
/// `size` 0 means no limit: everything after `token` in one page.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub size: u32,
    pub token: String,
}

/// One change to the entries table. Event IDs grow strictly; an entry's
/// `revision_number` is the ID of the event that last changed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryEvent {
    pub event_id: u64,
    pub entry_id: String,
    pub deleted: bool,
}

/// A server that reads the entry change events, as it last said: every event up to
/// `read_up_to` is applied to its entry cache, as of `seen_at` (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventReader {
    pub reader: String,
    pub read_up_to: u64,
    pub seen_at: i64,
}

/// An agent that attested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestedNode {
    pub spiffe_id: SpiffeId,
    pub attestation_type: String,
    /// Serial (lower-case hex) of the SVID the agent last proved it holds (by
    /// authenticating with it, or by receiving it at attestation); empty when banned.
    pub cert_serial: String,
    pub cert_not_after: i64,
    /// Serial of a renewed SVID the server issued but the agent has not used yet;
    /// empty when none. It is accepted beside `cert_serial` and replaces it on its
    /// first use: a renewal whose answer is lost therefore never locks the agent out
    /// (see [`Datastore::renew_node_svid`]).
    pub new_cert_serial: String,
    pub new_cert_not_after: i64,
    pub banned: bool,
    pub can_reattest: bool,
    pub selectors: Vec<Selector>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Whether the agent proved, with a TPM2_Certify by its attested AK, that the
    /// key of its latest SVID lives in its TPM (TPM attestors only).
    #[serde(default)]
    pub key_in_tpm: bool,
    /// The TPMT_PUBLIC of the AK its TPM attestation verified (empty for other
    /// attestors): the key its later proofs are checked with.
    #[serde(default)]
    pub ak_public: Vec<u8>,
    /// Measured boot: empty when no quote was checked, `ok`, or `refused: <reason>`
    /// when the agent's PCRs stopped matching the allow-list.
    #[serde(default)]
    pub measured_boot: String,
}

/// Which kind of signing authority a CA journal record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaKind {
    X509,
    Jwt,
}

/// Where a signing authority is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaStatus {
    /// Created, published in the bundle, not yet signing.
    Prepared,
    /// Signing.
    Active,
    /// Replaced; kept (and published) until it expires.
    Old,
    /// Its key is gone (deleted from the token, lost with a restart of the memory key
    /// manager, unreadable, or replaced by another key under its name): it never
    /// signs again, but stays published until it expires, because what it
    /// signed stays valid until then.
    Retired,
}

/// One signing authority in the CA journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRecord {
    /// Unique, chosen by the CA manager.
    pub id: String,
    pub kind: CaKind,
    /// The key's name in the key manager.
    pub key_id: String,
    /// The key manager that holds the key (`memory`, `disk`, `pkcs11`).
    pub key_manager: String,
    /// X.509: the CA certificate, DER. Empty for JWT.
    pub cert_der: Vec<u8>,
    /// X.509: the chain above the CA certificate up to (excluding) the root in the
    /// bundle, DER, when an upstream authority signed it.
    pub upstream_chain: Vec<Vec<u8>>,
    /// X.509 with an upstream authority: the roots that go into the bundle.
    pub upstream_roots: Vec<Vec<u8>>,
    /// JWT: the public key, SubjectPublicKeyInfo DER. Empty for X.509.
    pub public_key_der: Vec<u8>,
    /// JWT: the `kid`.
    pub jwt_kid: String,
    pub not_before: i64,
    pub not_after: i64,
    pub status: CaStatus,
    pub created_at: i64,
    /// The server that made it and alone signs with it, rotates and prunes it
    /// (`server_id`); other servers sharing the datastore only publish it. Empty in
    /// records written before servers had IDs: the first server to start adopts them.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub server_id: String,
}

/// Makes a trust domain's bundle from the whole CA journal and the bundle stored now
/// (see [`Datastore::compose_bundle`]): `Some` to store a new bundle, `None` to keep
/// the stored one.
pub type BundleComposer =
    std::sync::Arc<dyn Fn(&[CaRecord], Option<&Bundle>) -> Option<Bundle> + Send + Sync>;

/// Everything the server persists.
///
/// Implementations must be safe to share between tasks, keep every operation atomic
/// (nothing half-written on error), and never lose what is already stored.
#[async_trait]
pub trait Datastore: Send + Sync + fmt::Debug {
    /// A short name for logs (`sqlite`, `postgres`).
    fn name(&self) -> &'static str;

    /// Checks the database answers.
    async fn ping(&self) -> Result<()>;

    // ---- registration entries ----

    /// Stores a new entry. An empty `id` gets a fresh UUID; `created_at` is set when 0;
    /// `revision_number` is set from the change event. An entry with the same
    /// SPIFFE ID, parent ID and selectors (in any order) is `AlreadyExists`; so is an
    /// entry whose explicit `id` is taken.
    async fn create_entry(&self, entry: RegistrationEntry) -> Result<RegistrationEntry>;

    /// Stores many entries in one transaction; each gets its own result, in order.
    async fn create_entries(
        &self,
        entries: Vec<RegistrationEntry>,
    ) -> Result<Vec<Result<RegistrationEntry>>>;

    async fn get_entry(&self, id: &str) -> Result<Option<RegistrationEntry>>;

    /// Lists entries matching `filter`, ordered by ID, one page at a time; returns the
    /// token of the next page (empty when this was the last).
    async fn list_entries(
        &self,
        filter: &EntryFilter,
        page: &Page,
    ) -> Result<(Vec<RegistrationEntry>, String)>;

    /// Every entry (to warm the server's cache).
    async fn all_entries(&self) -> Result<Vec<RegistrationEntry>>;

    /// Replaces the entry with the same ID, keeping `created_at`, with a new revision.
    /// `NotFound` if absent; `AlreadyExists` if the change would duplicate another
    /// entry's identity.
    async fn update_entry(&self, entry: RegistrationEntry) -> Result<RegistrationEntry>;

    /// Deletes an entry and returns what it was; `NotFound` if absent.
    async fn delete_entry(&self, id: &str) -> Result<RegistrationEntry>;

    /// Change events with an ID greater than `after`, in order.
    async fn entry_events_since(&self, after: u64) -> Result<Vec<EntryEvent>>;

    /// The highest event ID (0 when none). Pruning never lowers it.
    async fn latest_entry_event(&self) -> Result<u64>;

    /// Deletes events with an ID at or below `up_to` (they are only needed by readers
    /// that are behind).
    async fn prune_entry_events(&self, up_to: u64) -> Result<u64>;

    /// Records that the server `reader` has applied every event up to `read_up_to`,
    /// at `now`; replaces what it said before.
    async fn record_entry_event_reader(
        &self,
        reader: &str,
        read_up_to: u64,
        now: i64,
    ) -> Result<()>;

    /// Every server that said what it read, and when.
    async fn entry_event_readers(&self) -> Result<Vec<EventReader>>;

    /// Forgets the readers last seen before `seen_before`; returns how many.
    async fn forget_entry_event_readers(&self, seen_before: i64) -> Result<u64>;

    // ---- attested nodes ----

    /// Stores a node, replacing any record with the same ID (re-attestation).
    async fn upsert_attested_node(&self, node: AttestedNode) -> Result<()>;

    async fn get_attested_node(&self, id: &SpiffeId) -> Result<Option<AttestedNode>>;

    async fn list_attested_nodes(&self) -> Result<Vec<AttestedNode>>;

    /// Records a renewal, atomically. `presented` is the serial of the SVID the agent
    /// authenticated the renewal with; it must be the node's `cert_serial` or its
    /// `new_cert_serial`. A presented `new_cert_serial` first becomes the
    /// `cert_serial` (the agent has shown it holds it); then `serial` becomes the
    /// pending `new_cert_serial`, replacing any earlier pending one, which the agent
    /// evidently never received. The proven serial is never dropped here, so at most
    /// two serials are accepted at any time: the last one the agent proved it holds
    /// and the one just issued.
    ///
    /// Returns the updated node. `NotFound` if the node is absent; `Invalid` if it is
    /// banned (a renewal racing a ban must not give the node a serial back);
    /// `Conflict` if `presented` is neither serial (a concurrent renewal or
    /// re-attestation replaced it).
    async fn renew_node_svid(
        &self,
        id: &SpiffeId,
        presented: &str,
        serial: &str,
        not_after: i64,
    ) -> Result<AttestedNode>;

    /// Records that the agent authenticated with its pending renewed SVID, atomically:
    /// `serial` becomes `cert_serial` and the pending slot empties, so the SVID it
    /// replaced is no longer accepted. Presenting the current `cert_serial` changes
    /// nothing. Returns the node as stored. `NotFound` if absent; `Conflict` if
    /// `serial` is neither serial (or the node is banned).
    async fn activate_node_svid(&self, id: &SpiffeId, serial: &str) -> Result<AttestedNode>;

    /// Deletes a node (evict: it may attest again). `NotFound` if absent.
    async fn delete_attested_node(&self, id: &SpiffeId) -> Result<()>;

    /// Records whether the agent proved its latest SVID key is in its TPM, and its
    /// measured-boot status. `NotFound` if absent.
    async fn set_node_tpm_state(
        &self,
        id: &SpiffeId,
        key_in_tpm: bool,
        measured_boot: &str,
    ) -> Result<()>;

    /// Bans a node: keeps the record, clears its serials, refuses re-attestation until
    /// it is deleted. `NotFound` if absent.
    async fn ban_attested_node(&self, id: &SpiffeId) -> Result<()>;

    // ---- join tokens ----

    /// Stores a token; `AlreadyExists` if the value is taken.
    async fn create_join_token(&self, token: &str, expires_at: i64) -> Result<()>;

    /// Atomically deletes a token and returns its expiry: of two concurrent callers
    /// with the same token, exactly one gets `Some`.
    async fn take_join_token(&self, token: &str) -> Result<Option<i64>>;

    /// Deletes tokens that expired before `now`; returns how many.
    async fn prune_join_tokens(&self, now: i64) -> Result<u64>;

    // ---- bundles ----

    /// Stores a bundle (the server's own or a federated one), replacing any bundle of
    /// that trust domain.
    async fn set_bundle(&self, bundle: &Bundle) -> Result<()>;

    async fn get_bundle(&self, td: &TrustDomain) -> Result<Option<Bundle>>;

    async fn list_bundles(&self) -> Result<Vec<Bundle>>;

    /// `NotFound` if absent.
    async fn delete_bundle(&self, td: &TrustDomain) -> Result<()>;

    // ---- federation relationships ----

    /// Stores a new relationship and, when given, the bundle to start from (the
    /// bundle of the trust domain the endpoint's SPIFFE ID names), replacing any
    /// bundle of that trust domain, in one transaction. `AlreadyExists` if a
    /// relationship with that trust domain is stored.
    async fn create_federation_relationship(
        &self,
        rel: &Relationship,
        bundle: Option<&Bundle>,
    ) -> Result<()>;

    async fn get_federation_relationship(&self, td: &TrustDomain) -> Result<Option<Relationship>>;

    /// Every stored relationship, ordered by trust domain.
    async fn list_federation_relationships(&self) -> Result<Vec<Relationship>>;

    /// Replaces the relationship with the same trust domain, and stores `bundle` as
    /// [`Datastore::create_federation_relationship`] does, in one transaction.
    /// `NotFound` if absent.
    async fn update_federation_relationship(
        &self,
        rel: &Relationship,
        bundle: Option<&Bundle>,
    ) -> Result<()>;

    /// Deletes a relationship; its trust domain's bundle stays. `NotFound` if absent.
    async fn delete_federation_relationship(&self, td: &TrustDomain) -> Result<()>;

    // ---- CA journal ----

    /// Stores or replaces a record by ID.
    async fn put_ca_record(&self, record: &CaRecord) -> Result<()>;

    async fn list_ca_records(&self) -> Result<Vec<CaRecord>>;

    /// `NotFound` if absent.
    async fn delete_ca_record(&self, id: &str) -> Result<()>;

    /// Reads every CA journal record and the bundle of `td`, asks `compose` what the
    /// bundle should be, stores its answer, and returns the bundle stored afterwards,
    /// all in one transaction that no other composition (from this server or another
    /// sharing the datastore) can interleave with. So a bundle made from the journal
    /// after a record was written always replaces one made before it, never the
    /// other way round: no server's authorities can vanish from the shared bundle
    /// because another server published a view that did not know them yet.
    async fn compose_bundle(
        &self,
        td: &TrustDomain,
        compose: BundleComposer,
    ) -> Result<Option<Bundle>>;
}

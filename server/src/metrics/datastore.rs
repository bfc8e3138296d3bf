//! A datastore that times every call by operation and counts failures by kind.
//! Not-found and already-exists answers are results of the call, not failures.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use tessera_core::{Bundle, RegistrationEntry, SpiffeId, TrustDomain};

use super::{OpErrorLabels, OpLabels, ServerMetrics};
use crate::datastore::{
    AttestedNode, BundleComposer, CaRecord, Datastore, DatastoreError, EntryEvent, EntryFilter,
    EventReader, Page, Relationship, Result,
};

/// Wraps a datastore.
#[derive(Debug)]
pub struct MeteredDatastore {
    inner: Arc<dyn Datastore>,
    metrics: Arc<ServerMetrics>,
}

impl MeteredDatastore {
    /// Wraps `inner`.
    pub fn wrap(inner: Arc<dyn Datastore>, metrics: Arc<ServerMetrics>) -> Arc<dyn Datastore> {
        Arc::new(MeteredDatastore { inner, metrics })
    }

    async fn time<T>(&self, op: &'static str, f: impl Future<Output = Result<T>>) -> Result<T> {
        let start = Instant::now();
        let r = f.await;
        self.metrics
            .ds
            .get_or_create(&OpLabels { op })
            .observe(start.elapsed().as_secs_f64());
        if let Err(e) = &r
            && let Some(kind) = failure_kind(e)
        {
            self.metrics
                .ds_errors
                .get_or_create(&OpErrorLabels { op, kind })
                .inc();
        }
        r
    }
}

/// The `kind` label of a failure; `None` for answers that are results.
fn failure_kind(e: &DatastoreError) -> Option<&'static str> {
    match e {
        DatastoreError::NotFound(_) | DatastoreError::AlreadyExists(_) => None,
        DatastoreError::Invalid(_) => Some("invalid"),
        DatastoreError::Unavailable(_) => Some("unavailable"),
        DatastoreError::Conflict(_) => Some("conflict"),
        DatastoreError::Backend(_) => Some("backend"),
    }
}

#[async_trait]
impl Datastore for MeteredDatastore {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    async fn ping(&self) -> Result<()> {
        self.time("ping", self.inner.ping()).await
    }
    async fn create_entry(&self, entry: RegistrationEntry) -> Result<RegistrationEntry> {
        self.time("create_entry", self.inner.create_entry(entry))
            .await
    }
    async fn create_entries(
        &self,
        entries: Vec<RegistrationEntry>,
    ) -> Result<Vec<Result<RegistrationEntry>>> {
        self.time("create_entries", self.inner.create_entries(entries))
            .await
    }
    async fn get_entry(&self, id: &str) -> Result<Option<RegistrationEntry>> {
        self.time("get_entry", self.inner.get_entry(id)).await
    }
    async fn list_entries(
        &self,
        filter: &EntryFilter,
        page: &Page,
    ) -> Result<(Vec<RegistrationEntry>, String)> {
        self.time("list_entries", self.inner.list_entries(filter, page))
            .await
    }
    async fn all_entries(&self) -> Result<Vec<RegistrationEntry>> {
        self.time("all_entries", self.inner.all_entries()).await
    }
    async fn update_entry(&self, entry: RegistrationEntry) -> Result<RegistrationEntry> {
        self.time("update_entry", self.inner.update_entry(entry))
            .await
    }
    async fn delete_entry(&self, id: &str) -> Result<RegistrationEntry> {
        self.time("delete_entry", self.inner.delete_entry(id)).await
    }
    async fn entry_events_since(&self, after: u64) -> Result<Vec<EntryEvent>> {
        self.time("entry_events_since", self.inner.entry_events_since(after))
            .await
    }
    async fn latest_entry_event(&self) -> Result<u64> {
        self.time("latest_entry_event", self.inner.latest_entry_event())
            .await
    }
    async fn prune_entry_events(&self, up_to: u64) -> Result<u64> {
        self.time("prune_entry_events", self.inner.prune_entry_events(up_to))
            .await
    }
    async fn record_entry_event_reader(
        &self,
        reader: &str,
        read_up_to: u64,
        now: i64,
    ) -> Result<()> {
        self.time(
            "record_entry_event_reader",
            self.inner
                .record_entry_event_reader(reader, read_up_to, now),
        )
        .await
    }
    async fn entry_event_readers(&self) -> Result<Vec<EventReader>> {
        self.time("entry_event_readers", self.inner.entry_event_readers())
            .await
    }
    async fn forget_entry_event_readers(&self, seen_before: i64) -> Result<u64> {
        self.time(
            "forget_entry_event_readers",
            self.inner.forget_entry_event_readers(seen_before),
        )
        .await
    }
    async fn upsert_attested_node(&self, node: AttestedNode) -> Result<()> {
        self.time(
            "upsert_attested_node",
            self.inner.upsert_attested_node(node),
        )
        .await
    }
    async fn get_attested_node(&self, id: &SpiffeId) -> Result<Option<AttestedNode>> {
        self.time("get_attested_node", self.inner.get_attested_node(id))
            .await
    }
    async fn list_attested_nodes(&self) -> Result<Vec<AttestedNode>> {
        self.time("list_attested_nodes", self.inner.list_attested_nodes())
            .await
    }
    async fn renew_node_svid(
        &self,
        id: &SpiffeId,
        presented: &str,
        serial: &str,
        not_after: i64,
    ) -> Result<AttestedNode> {
        self.time(
            "renew_node_svid",
            self.inner.renew_node_svid(id, presented, serial, not_after),
        )
        .await
    }
    async fn activate_node_svid(&self, id: &SpiffeId, serial: &str) -> Result<AttestedNode> {
        self.time(
            "activate_node_svid",
            self.inner.activate_node_svid(id, serial),
        )
        .await
    }
    async fn delete_attested_node(&self, id: &SpiffeId) -> Result<()> {
        self.time("delete_attested_node", self.inner.delete_attested_node(id))
            .await
    }
    async fn ban_attested_node(&self, id: &SpiffeId) -> Result<()> {
        self.time("ban_attested_node", self.inner.ban_attested_node(id))
            .await
    }
    async fn set_node_tpm_state(
        &self,
        id: &SpiffeId,
        key_in_tpm: bool,
        measured_boot: &str,
    ) -> Result<()> {
        self.time(
            "set_node_tpm_state",
            self.inner.set_node_tpm_state(id, key_in_tpm, measured_boot),
        )
        .await
    }
    async fn create_join_token(&self, token: &str, expires_at: i64) -> Result<()> {
        self.time(
            "create_join_token",
            self.inner.create_join_token(token, expires_at),
        )
        .await
    }
    async fn take_join_token(&self, token: &str) -> Result<Option<i64>> {
        self.time("take_join_token", self.inner.take_join_token(token))
            .await
    }
    async fn prune_join_tokens(&self, now: i64) -> Result<u64> {
        self.time("prune_join_tokens", self.inner.prune_join_tokens(now))
            .await
    }
    async fn set_bundle(&self, bundle: &Bundle) -> Result<()> {
        self.time("set_bundle", self.inner.set_bundle(bundle)).await
    }
    async fn get_bundle(&self, td: &TrustDomain) -> Result<Option<Bundle>> {
        self.time("get_bundle", self.inner.get_bundle(td)).await
    }
    async fn list_bundles(&self) -> Result<Vec<Bundle>> {
        self.time("list_bundles", self.inner.list_bundles()).await
    }
    async fn delete_bundle(&self, td: &TrustDomain) -> Result<()> {
        self.time("delete_bundle", self.inner.delete_bundle(td))
            .await
    }
    async fn create_federation_relationship(
        &self,
        rel: &Relationship,
        bundle: Option<&Bundle>,
    ) -> Result<()> {
        self.time(
            "create_federation_relationship",
            self.inner.create_federation_relationship(rel, bundle),
        )
        .await
    }
    async fn get_federation_relationship(&self, td: &TrustDomain) -> Result<Option<Relationship>> {
        self.time(
            "get_federation_relationship",
            self.inner.get_federation_relationship(td),
        )
        .await
    }
    async fn list_federation_relationships(&self) -> Result<Vec<Relationship>> {
        self.time(
            "list_federation_relationships",
            self.inner.list_federation_relationships(),
        )
        .await
    }
    async fn update_federation_relationship(
        &self,
        rel: &Relationship,
        bundle: Option<&Bundle>,
    ) -> Result<()> {
        self.time(
            "update_federation_relationship",
            self.inner.update_federation_relationship(rel, bundle),
        )
        .await
    }
    async fn delete_federation_relationship(&self, td: &TrustDomain) -> Result<()> {
        self.time(
            "delete_federation_relationship",
            self.inner.delete_federation_relationship(td),
        )
        .await
    }
    async fn put_ca_record(&self, record: &CaRecord) -> Result<()> {
        self.time("put_ca_record", self.inner.put_ca_record(record))
            .await
    }
    async fn compose_bundle(
        &self,
        td: &TrustDomain,
        compose: BundleComposer,
    ) -> Result<Option<Bundle>> {
        self.time("compose_bundle", self.inner.compose_bundle(td, compose))
            .await
    }
    async fn list_ca_records(&self) -> Result<Vec<CaRecord>> {
        self.time("list_ca_records", self.inner.list_ca_records())
            .await
    }
    async fn delete_ca_record(&self, id: &str) -> Result<()> {
        self.time("delete_ca_record", self.inner.delete_ca_record(id))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_are_timed_and_failures_counted_by_kind() {
        let dir = tempfile::tempdir().unwrap();
        let inner =
            crate::datastore::sqlite::SqliteDatastore::open(&dir.path().join("db")).unwrap();
        let m = ServerMetrics::new();
        let ds = MeteredDatastore::wrap(Arc::new(inner), m.clone());
        ds.ping().await.unwrap();
        // A missing entry is an answer, not a failure.
        assert!(ds.delete_entry("nope").await.is_err());
        let text = tessera_telemetry::metrics::encode(&m.registry);
        assert!(
            text.contains("tessera_server_datastore_duration_seconds_count{op=\"ping\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tessera_server_datastore_duration_seconds_count{op=\"delete_entry\"} 1"),
            "{text}"
        );
        assert!(
            !text.contains("tessera_server_datastore_errors_total{"),
            "{text}"
        );
        assert_eq!(
            failure_kind(&DatastoreError::Conflict("x".into())),
            Some("conflict")
        );
    }
}

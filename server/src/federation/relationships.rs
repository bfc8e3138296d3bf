//! The relationships the server keeps federated bundles for: those of the
//! configuration file (`[[federation.federates_with]]`, fixed while the server runs)
//! and those created with `tessera-server federation create` (kept in the datastore,
//! so that every server sharing it runs them). One task per relationship fetches its
//! bundle ([`super::client`]); a supervisor starts, restarts and stops those tasks as
//! relationships are created, updated and deleted: at once for a change made through
//! this server, and within [`POLL`] for one made through another server of the same
//! datastore.
//!
//! A configured relationship wins over a stored one for the same trust domain (the
//! CLI refuses to create one, but a configuration can gain it later). Deleting a
//! relationship stops the fetching and keeps the bundle fetched last, as SPIRE does:
//! workloads keep trusting it until `tessera-server bundle delete` removes it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tessera_core::{Bundle, TrustDomain};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::client::Served;
use super::{Relationship, Source};
use crate::datastore::{Datastore, DatastoreError};

/// How often the supervisor reads the stored relationships, to follow changes made
/// through other servers.
pub const POLL: Duration = Duration::from_secs(10);

/// See the module documentation.
#[derive(Debug)]
pub struct Relationships {
    ds: Arc<dyn Datastore>,
    configured: Vec<Relationship>,
    changed: Notify,
    served: Arc<Served>,
}

impl Relationships {
    /// `configured`: the relationships of the configuration file, already checked.
    pub fn new(ds: Arc<dyn Datastore>, configured: Vec<Relationship>) -> Arc<Self> {
        Arc::new(Self {
            ds,
            configured,
            changed: Notify::new(),
            served: Arc::default(),
        })
    }

    /// Fetches the bundle of `rel` now (as its task does), and stores it.
    pub async fn refresh(&self, rel: &Relationship) -> Result<Bundle, String> {
        super::client::refresh(self.ds.as_ref(), rel, &self.served).await
    }

    /// The configured relationship with `td`, if there is one.
    pub fn configured(&self, td: &TrustDomain) -> Option<&Relationship> {
        self.configured.iter().find(|r| &r.trust_domain == td)
    }

    /// Every relationship the server runs, ordered by trust domain, with where each
    /// comes from; a stored relationship that a configured one shadows is left out.
    pub async fn all(&self) -> Result<Vec<(Relationship, Source)>, DatastoreError> {
        let mut all: BTreeMap<TrustDomain, (Relationship, Source)> = self
            .ds
            .list_federation_relationships()
            .await?
            .into_iter()
            .map(|r| (r.trust_domain.clone(), (r, Source::Datastore)))
            .collect();
        for r in &self.configured {
            all.insert(r.trust_domain.clone(), (r.clone(), Source::Config));
        }
        Ok(all.into_values().collect())
    }

    /// The relationship with `td` that the server runs, if any.
    pub async fn get(
        &self,
        td: &TrustDomain,
    ) -> Result<Option<(Relationship, Source)>, DatastoreError> {
        if let Some(r) = self.configured(td) {
            return Ok(Some((r.clone(), Source::Config)));
        }
        Ok(self
            .ds
            .get_federation_relationship(td)
            .await?
            .map(|r| (r, Source::Datastore)))
    }

    /// An operator set `td`'s bundle (or its relationship): the endpoint's next
    /// answer is not compared with what it served before.
    pub fn bundle_set(&self, td: &TrustDomain) {
        self.served.forget(td);
    }

    /// Tells the supervisor that the stored relationships changed.
    pub fn changed(&self) {
        self.changed.notify_one();
    }

    /// Starts the supervisor; it stops every task when `shutdown` turns true.
    pub fn start(self: &Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut running = Running::default();
            loop {
                match this.ds.list_federation_relationships().await {
                    Ok(stored) => running.follow(&this, stored),
                    Err(e) => tracing::warn!(
                        error = %e,
                        "cannot read the federation relationships; the running ones go on"
                    ),
                }
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {}
                    _ = this.changed.notified() => {}
                    _ = shutdown.wait_for(|s| *s) => {
                        running.stop_all();
                        return;
                    }
                }
            }
        });
    }
}

/// The fetching tasks the supervisor runs, by trust domain.
#[derive(Default)]
struct Running {
    tasks: BTreeMap<TrustDomain, (Relationship, JoinHandle<()>)>,
    /// Stored relationships a configured one shadows, already warned about.
    shadowed: BTreeSet<TrustDomain>,
}

impl Running {
    /// Makes the running tasks those of `configured` and `stored`.
    fn follow(&mut self, from: &Relationships, stored: Vec<Relationship>) {
        let configured = &from.configured;
        let mut want: BTreeMap<TrustDomain, Relationship> = BTreeMap::new();
        let mut shadowed = BTreeSet::new();
        for r in stored {
            if configured.iter().any(|c| c.trust_domain == r.trust_domain) {
                if !self.shadowed.contains(&r.trust_domain) {
                    tracing::warn!(
                        trust_domain = %r.trust_domain,
                        "a stored federation relationship has the trust domain of one in \
                         [[federation.federates_with]]; the configured one is used \
                         (tessera-server federation delete removes the stored one)"
                    );
                }
                shadowed.insert(r.trust_domain.clone());
                continue;
            }
            want.insert(r.trust_domain.clone(), r);
        }
        self.shadowed = shadowed;
        for r in configured {
            want.insert(r.trust_domain.clone(), r.clone());
        }
        let gone: Vec<TrustDomain> = self
            .tasks
            .keys()
            .filter(|td| !want.contains_key(*td))
            .cloned()
            .collect();
        for td in gone {
            if let Some((_, task)) = self.tasks.remove(&td) {
                task.abort();
                tracing::info!(
                    trust_domain = %td,
                    "federation relationship deleted: its bundle is no longer fetched \
                     (the last one fetched stays until tessera-server bundle delete)"
                );
            }
        }
        for (td, r) in want {
            let what = match self.tasks.get(&td) {
                Some((running, _)) if running == &r => continue,
                Some(_) => "changed",
                None => "started",
            };
            if let Some((_, old)) = self.tasks.remove(&td) {
                old.abort();
            }
            tracing::info!(
                trust_domain = %td,
                url = %r.bundle_endpoint_url,
                profile = r.bundle_endpoint_profile.name(),
                "federation relationship {what}"
            );
            let task = super::client::spawn(from.ds.clone(), r.clone(), from.served.clone());
            self.tasks.insert(td, (r, task));
        }
    }

    fn stop_all(&mut self) {
        for (_, (_, task)) in std::mem::take(&mut self.tasks) {
            task.abort();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop_all();
    }
}

//! The sync exchange: an agent tells the server what it holds (the last revision it
//! saw, a digest of its entries' IDs and revisions, its bundle's sequence) and gets
//! what changed. When the digest does not match, the server lists every authorized
//! entry with its revision and the agent asks, in a further round, for the ones it
//! lacks. What the agent keeps is its own business ([`SyncHolder`]).

use std::collections::BTreeMap;

use tessera_proto::agent as pb;
use tessera_proto::types;

use super::{ServerApi, ServerError};

/// At most this many rounds per sync: the first, the entries it lacked, and one
/// more for entries that changed in between. What is still missing waits for the
/// next sync.
pub const MAX_ROUNDS: usize = 3;

/// What one round brought besides the entry list.
#[derive(Debug, Default)]
pub struct Round {
    /// The trust domain's bundle, when its sequence is not the one the agent sent.
    pub bundle: Option<types::Bundle>,
    /// The bundles of the trust domains the agent's entries federate with.
    pub federated_bundles: Vec<types::Bundle>,
    /// Entries that are new or changed since what the agent said it holds.
    pub entries: Vec<types::Entry>,
}

/// What an agent holds between syncs, as the exchange sees it.
pub trait SyncHolder {
    /// Why what the server sent could not be kept.
    type Error: From<ServerError>;

    /// The highest revision seen.
    fn revision(&self) -> u64;
    /// Records the highest revision seen.
    fn set_revision(&mut self, revision: u64);
    /// The sequence number of the bundle held.
    fn bundle_sequence(&self) -> u64;
    /// The ID and revision of every entry held.
    fn held(&self) -> Vec<(&str, u64)>;
    /// The revision of one held entry.
    fn revision_of(&self, id: &str) -> Option<u64>;
    /// Takes in one round's bundles and entries (an entry not kept is asked for again
    /// in the next round, and the next sync).
    fn receive(&mut self, round: Round) -> Result<(), Self::Error>;
    /// Keeps only the entries the server listed as authorized.
    fn keep_only(&mut self, listed: &BTreeMap<&str, u64>);
}

/// One sync, in up to [`MAX_ROUNDS`] rounds.
pub async fn sync<H: SyncHolder>(server: &dyn ServerApi, holder: &mut H) -> Result<(), H::Error> {
    let mut want: Vec<String> = Vec::new();
    for _round in 0..MAX_ROUNDS {
        let req = pb::SyncRequest {
            known_revision: holder.revision(),
            known_digest: tessera_core::entry::revision_digest(holder.held().into_iter()),
            bundle_sequence: holder.bundle_sequence(),
            want_ids: std::mem::take(&mut want),
        };
        let resp = server.sync_entries(req).await?;
        holder.receive(Round {
            bundle: resp.bundle,
            federated_bundles: resp.federated_bundles,
            entries: resp.entries,
        })?;
        if resp.full_list {
            let listed: BTreeMap<&str, u64> = resp
                .authorized
                .iter()
                .map(|r| (r.id.as_str(), r.revision_number))
                .collect();
            holder.keep_only(&listed);
            want = listed
                .iter()
                .filter(|(id, rev)| holder.revision_of(id) != Some(**rev))
                .map(|(id, _)| (*id).to_owned())
                .collect();
        }
        holder.set_revision(holder.revision().max(resp.revision));
        if want.is_empty() {
            break;
        }
    }
    Ok(())
}

/// The simplest holder: entry IDs and revisions only (what a simulated agent keeps).
#[derive(Debug, Default, Clone)]
pub struct Revisions {
    pub revision: u64,
    pub entries: BTreeMap<String, u64>,
    pub bundle_sequence: u64,
}

impl SyncHolder for Revisions {
    type Error = ServerError;

    fn revision(&self) -> u64 {
        self.revision
    }

    fn set_revision(&mut self, revision: u64) {
        self.revision = revision;
    }

    fn bundle_sequence(&self) -> u64 {
        self.bundle_sequence
    }

    fn held(&self) -> Vec<(&str, u64)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), *v)).collect()
    }

    fn revision_of(&self, id: &str) -> Option<u64> {
        self.entries.get(id).copied()
    }

    fn receive(&mut self, round: Round) -> Result<(), ServerError> {
        if let Some(b) = round.bundle {
            self.bundle_sequence = b.sequence;
        }
        for e in round.entries {
            self.entries.insert(e.id, e.revision_number);
        }
        Ok(())
    }

    fn keep_only(&mut self, listed: &BTreeMap<&str, u64>) {
        self.entries.retain(|k, _| listed.contains_key(k.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeServer;
    use tessera_core::clock::ManualClock;

    fn revisions(h: &Revisions) -> Vec<(&str, u64)> {
        h.held()
    }

    #[tokio::test]
    async fn rounds_fetch_what_is_missing_and_drop_what_is_gone() {
        let server = FakeServer::new(ManualClock::at_unix(1_800_000_000));
        server.add_entry("a", "/a", &["unix:uid:1"]);
        server.add_entry("b", "/b", &["unix:uid:2"]);
        let mut held = Revisions::default();
        sync(server.as_ref(), &mut held).await.unwrap();
        assert_eq!(revisions(&held), [("a", 1), ("b", 2)]);
        assert_eq!((held.revision, held.bundle_sequence), (2, 1));
        assert_eq!(server.state().syncs, 1);
        // Nothing changed: one round.
        sync(server.as_ref(), &mut held).await.unwrap();
        assert_eq!(server.state().syncs, 2);
        // Deleted on the server: the full list drops it.
        server.state().entries.remove("b");
        sync(server.as_ref(), &mut held).await.unwrap();
        assert_eq!(revisions(&held), [("a", 1)]);
        // An entry the holder lacks at a revision it has seen is asked for by ID in a
        // second round.
        held.entries.clear();
        sync(server.as_ref(), &mut held).await.unwrap();
        assert_eq!(revisions(&held), [("a", 1)]);
        assert_eq!(server.state().syncs, 5);
        // A server that is away is an error of the holder's kind.
        server.state().down = true;
        let e = sync(server.as_ref(), &mut held).await.unwrap_err();
        assert!(e.is_transient(), "{e}");
    }
}

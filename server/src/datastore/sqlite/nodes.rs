//! Attested nodes in SQLite: one column per field in `attested_nodes`, their
//! selectors in `node_selectors` in their order. Every node write is durable
//! (`synchronous=FULL`): a lost renewal, ban or eviction cannot be recovered from.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};
use tessera_core::SpiffeId;

use super::SqliteDatastore;
use super::connection::{Durability, begin};
use super::error::Ctx;
use crate::datastore::codec::{NodeColumns, now_unix, require_found};
use crate::datastore::serials::{plan_activation, plan_renewal};
use crate::datastore::{AttestedNode, DatastoreError, Result};

pub(super) async fn upsert(ds: &SqliteDatastore, node: AttestedNode) -> Result<()> {
    ds.write(Durability::Full, move |conn| {
        let id = node.spiffe_id.to_string();
        let what = format!("attested node {id}");
        let tx = begin(conn)?;
        tx.prepare_cached(&format!(
            "INSERT INTO attested_nodes ({NODE_COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
             ON CONFLICT (spiffe_id) DO UPDATE SET
                attestation_type = excluded.attestation_type,
                cert_serial = excluded.cert_serial,
                cert_not_after = excluded.cert_not_after,
                new_cert_serial = excluded.new_cert_serial,
                new_cert_not_after = excluded.new_cert_not_after,
                banned = excluded.banned,
                can_reattest = excluded.can_reattest,
                created_at = excluded.created_at,
                updated_at = excluded.updated_at,
                key_in_tpm = excluded.key_in_tpm,
                ak_public = excluded.ak_public,
                measured_boot = excluded.measured_boot"
        ))
        .and_then(|mut s| {
            s.execute(params![
                id,
                node.attestation_type,
                node.cert_serial,
                node.cert_not_after,
                node.new_cert_serial,
                node.new_cert_not_after,
                node.banned,
                node.can_reattest,
                node.created_at,
                node.updated_at,
                node.key_in_tpm,
                node.ak_public,
                node.measured_boot
            ])
        })
        .ctx(&what)?;
        tx.prepare_cached("DELETE FROM node_selectors WHERE node_id = ?1")
            .and_then(|mut s| s.execute([&id]))
            .ctx(&what)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO node_selectors (node_id, position, selector)
                     VALUES (?1, ?2, ?3)",
                )
                .ctx(&what)?;
            for (position, s) in node.selectors.iter().enumerate() {
                stmt.execute(params![id, position as i64, s.to_string()])
                    .ctx(&what)?;
            }
        }
        tx.commit().ctx(&what)
    })
    .await
}

pub(super) async fn get(ds: &SqliteDatastore, id: &SpiffeId) -> Result<Option<AttestedNode>> {
    let id = id.to_string();
    ds.read(move |conn| {
        // One transaction: the node and its selectors from the same snapshot.
        let tx = conn.transaction().ctx("read transaction")?;
        load_node(&tx, &id)
    })
    .await
}

pub(super) async fn list(ds: &SqliteDatastore) -> Result<Vec<AttestedNode>> {
    ds.read(|conn| {
        // One transaction: nodes and selectors from the same snapshot.
        let tx = conn.transaction().ctx("read transaction")?;
        let rows: Vec<NodeColumns> = tx
            .prepare_cached(&format!(
                "SELECT {NODE_COLUMNS} FROM attested_nodes ORDER BY spiffe_id"
            ))
            .and_then(|mut s| s.query_map([], node_columns)?.collect())
            .ctx("attested nodes")?;
        let mut selectors: HashMap<String, Vec<String>> = HashMap::new();
        {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT node_id, selector FROM node_selectors ORDER BY node_id, position",
                )
                .ctx("attested node selectors")?;
            let pairs = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .ctx("attested node selectors")?;
            for pair in pairs {
                let (node, selector) = pair.ctx("attested node selectors")?;
                selectors.entry(node).or_default().push(selector);
            }
        }
        rows.into_iter()
            .map(|row| {
                let s = selectors.remove(&row.id).unwrap_or_default();
                row.into_node(&s)
            })
            .collect()
    })
    .await
}

pub(super) async fn set_tpm_state(
    ds: &SqliteDatastore,
    id: &SpiffeId,
    key_in_tpm: bool,
    measured_boot: &str,
) -> Result<()> {
    let id = id.to_string();
    let measured_boot = measured_boot.to_owned();
    ds.write(Durability::Full, move |conn| {
        let what = format!("attested node {id}");
        let n = conn
            .prepare_cached(
                "UPDATE attested_nodes SET key_in_tpm = ?2, measured_boot = ?3
                 WHERE spiffe_id = ?1",
            )
            .and_then(|mut s| s.execute(params![id, key_in_tpm, measured_boot]))
            .ctx(&what)?;
        require_found(n != 0, &what)
    })
    .await
}

pub(super) async fn renew_svid(
    ds: &SqliteDatastore,
    id: &SpiffeId,
    presented: &str,
    serial: &str,
    not_after: i64,
) -> Result<AttestedNode> {
    let id = id.to_string();
    let presented = presented.to_owned();
    let serial = serial.to_owned();
    let now = now_unix();
    ds.write(Durability::Full, move |conn| {
        let what = format!("attested node {id}");
        let tx = begin(conn)?;
        let node = load_node(&tx, &id)?.ok_or_else(|| DatastoreError::NotFound(what.clone()))?;
        let plan = plan_renewal(&node, &presented, &serial, not_after, now)?;
        store_node_svids(&tx, &id, &plan)?;
        tx.commit().ctx(&what)?;
        Ok(plan)
    })
    .await
}

pub(super) async fn activate_svid(
    ds: &SqliteDatastore,
    id: &SpiffeId,
    serial: &str,
) -> Result<AttestedNode> {
    let id = id.to_string();
    let serial = serial.to_owned();
    let now = now_unix();
    ds.write(Durability::Full, move |conn| {
        let what = format!("attested node {id}");
        let tx = begin(conn)?;
        let node = load_node(&tx, &id)?.ok_or_else(|| DatastoreError::NotFound(what.clone()))?;
        let Some(activated) = plan_activation(&node, &serial, now)? else {
            return Ok(node);
        };
        store_node_svids(&tx, &id, &activated)?;
        tx.commit().ctx(&what)?;
        Ok(activated)
    })
    .await
}

pub(super) async fn delete(ds: &SqliteDatastore, id: &SpiffeId) -> Result<()> {
    let id = id.to_string();
    ds.write(Durability::Full, move |conn| {
        let what = format!("attested node {id}");
        let tx = begin(conn)?;
        tx.prepare_cached("DELETE FROM node_selectors WHERE node_id = ?1")
            .and_then(|mut s| s.execute([&id]))
            .ctx(&what)?;
        let n = tx
            .prepare_cached("DELETE FROM attested_nodes WHERE spiffe_id = ?1")
            .and_then(|mut s| s.execute([&id]))
            .ctx(&what)?;
        require_found(n != 0, &what)?;
        tx.commit().ctx(&what)
    })
    .await
}

pub(super) async fn ban(ds: &SqliteDatastore, id: &SpiffeId) -> Result<()> {
    let id = id.to_string();
    let now = now_unix();
    ds.write(Durability::Full, move |conn| {
        let what = format!("attested node {id}");
        let n = conn
            .prepare_cached(
                "UPDATE attested_nodes SET banned = 1,
                    cert_serial = '', cert_not_after = 0,
                    new_cert_serial = '', new_cert_not_after = 0,
                    updated_at = ?2
                 WHERE spiffe_id = ?1",
            )
            .and_then(|mut s| s.execute(params![id, now]))
            .ctx(&what)?;
        require_found(n != 0, &what)
    })
    .await
}

const NODE_COLUMNS: &str = "spiffe_id, attestation_type, cert_serial, cert_not_after, \
     new_cert_serial, new_cert_not_after, banned, can_reattest, created_at, updated_at, \
     key_in_tpm, ak_public, measured_boot";

/// The columns of an attested node row, in the order of [`NODE_COLUMNS`].
fn node_columns(r: &rusqlite::Row<'_>) -> rusqlite::Result<NodeColumns> {
    Ok(NodeColumns {
        id: r.get(0)?,
        attestation_type: r.get(1)?,
        cert_serial: r.get(2)?,
        cert_not_after: r.get(3)?,
        new_cert_serial: r.get(4)?,
        new_cert_not_after: r.get(5)?,
        banned: r.get(6)?,
        can_reattest: r.get(7)?,
        created_at: r.get(8)?,
        updated_at: r.get(9)?,
        key_in_tpm: r.get(10)?,
        ak_public: r.get(11)?,
        measured_boot: r.get(12)?,
    })
}

fn node_selectors(conn: &Connection, id: &str) -> Result<Vec<String>> {
    let mut stmt = conn
        .prepare_cached("SELECT selector FROM node_selectors WHERE node_id = ?1 ORDER BY position")
        .ctx(format_args!("selectors of attested node {id}"))?;
    stmt.query_map([id], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .ctx(format_args!("selectors of attested node {id}"))
}

/// The node `id` with its selectors, read in the caller's transaction.
fn load_node(conn: &Connection, id: &str) -> Result<Option<AttestedNode>> {
    let row = conn
        .prepare_cached(&format!(
            "SELECT {NODE_COLUMNS} FROM attested_nodes WHERE spiffe_id = ?1"
        ))
        .and_then(|mut s| s.query_row([id], node_columns).optional())
        .ctx(format_args!("attested node {id}"))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let selectors = node_selectors(conn, id)?;
    row.into_node(&selectors).map(Some)
}

/// Writes a node's serials (as a renewal or an activation planned them).
fn store_node_svids(conn: &Connection, id: &str, node: &AttestedNode) -> Result<()> {
    conn.prepare_cached(
        "UPDATE attested_nodes SET
            cert_serial = ?2, cert_not_after = ?3,
            new_cert_serial = ?4, new_cert_not_after = ?5, updated_at = ?6
         WHERE spiffe_id = ?1",
    )
    .and_then(|mut s| {
        s.execute(params![
            id,
            node.cert_serial,
            node.cert_not_after,
            node.new_cert_serial,
            node.new_cert_not_after,
            node.updated_at
        ])
    })
    .ctx(format_args!("attested node {id}"))?;
    Ok(())
}

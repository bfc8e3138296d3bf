//! Attested nodes in PostgreSQL: one column per field in `attested_nodes`, their
//! selectors in `node_selectors` in their order, read with the node in one
//! statement. Renewals and activations lock the node's row, so a renewal racing a
//! ban cannot give a banned node a serial back, and two renewals of one node (on two
//! servers) apply one after the other.

use tessera_core::{Selector, SpiffeId};
use tokio_postgres::{Row, Transaction};

use super::PostgresDatastore;
use super::error::Ctx;
use crate::datastore::codec::{NodeColumns, now_unix, require_found};
use crate::datastore::serials::{plan_activation, plan_renewal};
use crate::datastore::{AttestedNode, DatastoreError, Result};

pub(super) async fn upsert(ds: &PostgresDatastore, node: AttestedNode) -> Result<()> {
    let id = node.spiffe_id.to_string();
    let what = format!("attested node {id}");
    let positions: Vec<i32> = (0..node.selectors.len())
        .map(|i| i32::try_from(i).unwrap_or(i32::MAX))
        .collect();
    let selectors: Vec<String> = node.selectors.iter().map(Selector::to_string).collect();
    let mut conn = ds.conn().await?;
    let tx = conn.get()?.transaction().await.ctx("write transaction")?;
    tx.execute(
        "INSERT INTO attested_nodes (spiffe_id, attestation_type, cert_serial,
            cert_not_after, new_cert_serial, new_cert_not_after, banned, can_reattest,
            created_at, updated_at, key_in_tpm, ak_public, measured_boot)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
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
            measured_boot = excluded.measured_boot",
        &[
            &id,
            &node.attestation_type,
            &node.cert_serial,
            &node.cert_not_after,
            &node.new_cert_serial,
            &node.new_cert_not_after,
            &node.banned,
            &node.can_reattest,
            &node.created_at,
            &node.updated_at,
            &node.key_in_tpm,
            &node.ak_public,
            &node.measured_boot,
        ],
    )
    .await
    .ctx(&what)?;
    tx.execute("DELETE FROM node_selectors WHERE node_id = $1", &[&id])
        .await
        .ctx(&what)?;
    if !selectors.is_empty() {
        tx.execute(
            "INSERT INTO node_selectors (node_id, position, selector)
             SELECT $1, p, s FROM unnest($2::INTEGER[], $3::TEXT[]) AS x (p, s)",
            &[&id, &positions, &selectors],
        )
        .await
        .ctx(&what)?;
    }
    tx.commit().await.ctx(&what)
}

pub(super) async fn get(ds: &PostgresDatastore, id: &SpiffeId) -> Result<Option<AttestedNode>> {
    let id = id.to_string();
    let mut conn = ds.conn().await?;
    // One statement: the node and its selectors from the same snapshot.
    let row = conn
        .get()?
        .query_opt(&format!("{NODE_QUERY} WHERE n.spiffe_id = $1"), &[&id])
        .await
        .ctx(format_args!("attested node {id}"))?;
    row.as_ref().map(node_from_row).transpose()
}

pub(super) async fn list(ds: &PostgresDatastore) -> Result<Vec<AttestedNode>> {
    let mut conn = ds.conn().await?;
    let rows = conn
        .get()?
        .query(&format!("{NODE_QUERY} ORDER BY n.spiffe_id"), &[])
        .await
        .ctx("attested nodes")?;
    rows.iter().map(node_from_row).collect()
}

pub(super) async fn set_tpm_state(
    ds: &PostgresDatastore,
    id: &SpiffeId,
    key_in_tpm: bool,
    measured_boot: &str,
) -> Result<()> {
    let id = id.to_string();
    let what = format!("attested node {id}");
    let mut conn = ds.conn().await?;
    let n = conn
        .get()?
        .execute(
            "UPDATE attested_nodes SET key_in_tpm = $2, measured_boot = $3
             WHERE spiffe_id = $1",
            &[&id, &key_in_tpm, &measured_boot],
        )
        .await
        .ctx(&what)?;
    require_found(n != 0, &what)
}

pub(super) async fn renew_svid(
    ds: &PostgresDatastore,
    id: &SpiffeId,
    presented: &str,
    serial: &str,
    not_after: i64,
) -> Result<AttestedNode> {
    let id = id.to_string();
    let what = format!("attested node {id}");
    let now = now_unix();
    let mut conn = ds.conn().await?;
    let tx = conn.get()?.transaction().await.ctx("write transaction")?;
    // The row lock makes a ban or another renewal wait for this one, or this one
    // see theirs: the serials are read and written as one step.
    let node = load_node_for_update(&tx, &id).await?;
    let next = plan_renewal(&node, presented, serial, not_after, now)?;
    store_node_svids(&tx, &id, &next).await?;
    tx.commit().await.ctx(&what)?;
    Ok(next)
}

pub(super) async fn activate_svid(
    ds: &PostgresDatastore,
    id: &SpiffeId,
    serial: &str,
) -> Result<AttestedNode> {
    let id = id.to_string();
    let what = format!("attested node {id}");
    let now = now_unix();
    let mut conn = ds.conn().await?;
    let tx = conn.get()?.transaction().await.ctx("write transaction")?;
    let node = load_node_for_update(&tx, &id).await?;
    let Some(next) = plan_activation(&node, serial, now)? else {
        return Ok(node);
    };
    store_node_svids(&tx, &id, &next).await?;
    tx.commit().await.ctx(&what)?;
    Ok(next)
}

pub(super) async fn delete(ds: &PostgresDatastore, id: &SpiffeId) -> Result<()> {
    let id = id.to_string();
    let what = format!("attested node {id}");
    let mut conn = ds.conn().await?;
    // Its selectors go with it (ON DELETE CASCADE), in the same statement.
    let n = conn
        .get()?
        .execute("DELETE FROM attested_nodes WHERE spiffe_id = $1", &[&id])
        .await
        .ctx(&what)?;
    require_found(n != 0, &what)
}

pub(super) async fn ban(ds: &PostgresDatastore, id: &SpiffeId) -> Result<()> {
    let id = id.to_string();
    let what = format!("attested node {id}");
    let now = now_unix();
    let mut conn = ds.conn().await?;
    let n = conn
        .get()?
        .execute(
            "UPDATE attested_nodes SET banned = TRUE,
                cert_serial = '', cert_not_after = 0,
                new_cert_serial = '', new_cert_not_after = 0,
                updated_at = $2
             WHERE spiffe_id = $1",
            &[&id, &now],
        )
        .await
        .ctx(&what)?;
    require_found(n != 0, &what)
}

const NODE_QUERY: &str = "SELECT n.spiffe_id, n.attestation_type, n.cert_serial, n.cert_not_after,
        n.new_cert_serial, n.new_cert_not_after, n.banned, n.can_reattest, n.created_at,
        n.updated_at, n.key_in_tpm, n.ak_public, n.measured_boot,
        COALESCE((SELECT array_agg(s.selector ORDER BY s.position) FROM node_selectors s
                  WHERE s.node_id = n.spiffe_id), '{}'::TEXT[])
     FROM attested_nodes n";

fn node_from_row(r: &Row) -> Result<AttestedNode> {
    let id: String = r.try_get(0).ctx("attested node")?;
    let what = format!("attested node {id}");
    let selectors: Vec<String> = r.try_get(13).ctx(&what)?;
    let columns = NodeColumns {
        attestation_type: r.try_get(1).ctx(&what)?,
        cert_serial: r.try_get(2).ctx(&what)?,
        cert_not_after: r.try_get(3).ctx(&what)?,
        new_cert_serial: r.try_get(4).ctx(&what)?,
        new_cert_not_after: r.try_get(5).ctx(&what)?,
        banned: r.try_get(6).ctx(&what)?,
        can_reattest: r.try_get(7).ctx(&what)?,
        created_at: r.try_get(8).ctx(&what)?,
        updated_at: r.try_get(9).ctx(&what)?,
        key_in_tpm: r.try_get(10).ctx(&what)?,
        ak_public: r.try_get(11).ctx(&what)?,
        measured_boot: r.try_get(12).ctx(&what)?,
        id,
    };
    columns.into_node(&selectors)
}

/// The node `id`, its row locked until the transaction ends; `NotFound` if absent.
async fn load_node_for_update(tx: &Transaction<'_>, id: &str) -> Result<AttestedNode> {
    let what = format!("attested node {id}");
    tx.execute(
        "SELECT 1 FROM attested_nodes WHERE spiffe_id = $1 FOR UPDATE",
        &[&id],
    )
    .await
    .ctx(&what)?;
    let row = tx
        .query_opt(&format!("{NODE_QUERY} WHERE n.spiffe_id = $1"), &[&id])
        .await
        .ctx(&what)?
        .ok_or_else(|| DatastoreError::NotFound(what.clone()))?;
    node_from_row(&row)
}

/// Writes a node's serials (as a renewal or an activation planned them).
async fn store_node_svids(tx: &Transaction<'_>, id: &str, node: &AttestedNode) -> Result<()> {
    tx.execute(
        "UPDATE attested_nodes SET
            cert_serial = $2, cert_not_after = $3,
            new_cert_serial = $4, new_cert_not_after = $5, updated_at = $6
         WHERE spiffe_id = $1",
        &[
            &id,
            &node.cert_serial,
            &node.cert_not_after,
            &node.new_cert_serial,
            &node.new_cert_not_after,
            &node.updated_at,
        ],
    )
    .await
    .ctx(format_args!("attested node {id}"))?;
    Ok(())
}

//! Conformance: federation relationships.

use tessera_core::TrustDomain;

use super::bundles::sample_bundle;
use super::{Ns, ok};
use crate::datastore::{Datastore, DatastoreError, Relationship};
use crate::federation::Profile;

fn spiffe_rel(td: &TrustDomain) -> Relationship {
    Relationship {
        trust_domain: td.clone(),
        bundle_endpoint_url: format!("https://{td}:8443"),
        bundle_endpoint_profile: Profile::HttpsSpiffe,
        endpoint_spiffe_id: Some(td.id("/spire/server").expect("server ID")),
        ca_bundle_pem: None,
    }
}

fn web_rel(td: &TrustDomain) -> Relationship {
    Relationship {
        trust_domain: td.clone(),
        bundle_endpoint_url: format!("https://bundles.{td}/bundle"),
        bundle_endpoint_profile: Profile::HttpsWeb,
        endpoint_spiffe_id: None,
        ca_bundle_pem: Some(
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        ),
    }
}

fn ours(all: Vec<Relationship>, tds: &[&TrustDomain]) -> Vec<Relationship> {
    all.into_iter()
        .filter(|r| tds.contains(&&r.trust_domain))
        .collect()
}

/// Relationships are stored whole, unique per trust domain, replaced, listed in
/// trust-domain order and deleted; the bundle given with a create or an update is
/// stored in the same transaction, and nothing is stored when the relationship is
/// refused; deleting a relationship keeps its bundle.
pub async fn federation_relationships(ds: &dyn Datastore) {
    let a = Ns::new("fed-a").td;
    let b = Ns::new("fed-b").td;
    assert_eq!(
        ok(ds.get_federation_relationship(&a).await, "get missing"),
        None
    );

    let ra = spiffe_rel(&a);
    ok(ds.create_federation_relationship(&ra, None).await, "create");
    assert_eq!(
        ok(ds.get_federation_relationship(&a).await, "get"),
        Some(ra.clone())
    );
    assert_eq!(ok(ds.get_bundle(&a).await, "no bundle given"), None);

    // A second create of the same trust domain is refused, and its bundle is not
    // stored.
    let refused_bundle = sample_bundle(&a, 7);
    assert_err!(
        ds.create_federation_relationship(&web_rel(&a), Some(&refused_bundle))
            .await,
        DatastoreError::AlreadyExists(_),
        "create twice"
    );
    assert_eq!(
        ok(
            ds.get_federation_relationship(&a).await,
            "get after refusal"
        ),
        Some(ra.clone()),
        "the first relationship stays"
    );
    assert_eq!(
        ok(ds.get_bundle(&a).await, "bundle after refusal"),
        None,
        "a refused create stores no bundle"
    );

    let rb = web_rel(&b);
    let bundle_b = sample_bundle(&b, 2);
    ok(
        ds.create_federation_relationship(&rb, Some(&bundle_b))
            .await,
        "create with bundle",
    );
    assert_eq!(
        ok(ds.get_bundle(&b).await, "bundle"),
        Some(bundle_b),
        "stored with it"
    );
    let listed = ours(
        ok(ds.list_federation_relationships().await, "list"),
        &[&a, &b],
    );
    let mut want = vec![ra.clone(), rb.clone()];
    want.sort_by(|x, y| x.trust_domain.name().cmp(y.trust_domain.name()));
    assert_eq!(listed, want, "listed whole, by trust domain");

    // Update: replaced whole; with a bundle, the bundle is replaced too.
    let ra2 = web_rel(&a);
    let bundle_a = sample_bundle(&a, 3);
    ok(
        ds.update_federation_relationship(&ra2, Some(&bundle_a))
            .await,
        "update",
    );
    assert_eq!(
        ok(ds.get_federation_relationship(&a).await, "get updated"),
        Some(ra2)
    );
    assert_eq!(
        ok(ds.get_bundle(&a).await, "bundle"),
        Some(bundle_a.clone())
    );
    let missing = Ns::new("fed-missing").td;
    let missing_bundle = sample_bundle(&missing, 1);
    assert_err!(
        ds.update_federation_relationship(&spiffe_rel(&missing), Some(&missing_bundle))
            .await,
        DatastoreError::NotFound(_),
        "update missing"
    );
    assert_eq!(
        ok(ds.get_bundle(&missing).await, "bundle of a refused update"),
        None,
        "a refused update stores no bundle"
    );

    // Delete: the relationship goes, its bundle stays.
    ok(ds.delete_federation_relationship(&a).await, "delete");
    assert_eq!(
        ok(ds.get_federation_relationship(&a).await, "get deleted"),
        None
    );
    assert_eq!(
        ok(ds.get_bundle(&a).await, "bundle after delete"),
        Some(bundle_a),
        "deleting a relationship keeps its bundle"
    );
    assert_err!(
        ds.delete_federation_relationship(&a).await,
        DatastoreError::NotFound(_),
        "delete twice"
    );
    assert_eq!(
        ours(
            ok(ds.list_federation_relationships().await, "list"),
            &[&a, &b]
        ),
        vec![rb]
    );
    ok(ds.delete_federation_relationship(&b).await, "delete b");
    for td in [&a, &b] {
        ok(ds.delete_bundle(td).await, "clean up the bundle");
    }
}

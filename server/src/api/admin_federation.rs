//! The admin API's federation relationships: create, show, list, update, delete and
//! refresh, as `tessera-server federation` (and SPIRE's `spire-server federation`)
//! use them. Relationships of the configuration file are shown and listed with
//! source `config`, and refreshed, but changed only in the file.

use tessera_core::{Bundle, SpiffeId, TrustDomain};
use tessera_proto::admin as pb;
use tessera_proto::types as tpb;
use tonic::{Request, Response, Status};

use super::admin::AdminApi;
use super::convert::{bundle_from_proto, bundle_to_proto};
use crate::federation::{Profile, Relationship, Source, check_relationship};

/// The largest `ca_bundle` a relationship may carry (it is stored with it, and read
/// by every server at each fetch): room for a few hundred roots.
const MAX_CA_BUNDLE: usize = 512 * 1024;

/// A relationship as the API sends it.
pub fn relationship_to_proto(r: &Relationship, source: Source) -> pb::FederationRelationship {
    pb::FederationRelationship {
        trust_domain: r.trust_domain.name().to_owned(),
        bundle_endpoint_url: r.bundle_endpoint_url.clone(),
        bundle_endpoint_profile: r.bundle_endpoint_profile.name().to_owned(),
        endpoint_spiffe_id: r
            .endpoint_spiffe_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        ca_bundle_pem: r.ca_bundle_pem.clone().unwrap_or_default(),
        source: source.name().to_owned(),
    }
}

fn trust_domain(s: &str) -> Result<TrustDomain, Status> {
    TrustDomain::new(s).map_err(|e| Status::invalid_argument(format!("trust_domain: {e}")))
}

/// A relationship from the wire, checked as configured ones are.
fn relationship_from_proto(
    own: &TrustDomain,
    p: pb::FederationRelationship,
) -> Result<Relationship, Status> {
    let td = trust_domain(&p.trust_domain)?;
    let invalid =
        |m: String| Status::invalid_argument(format!("federation relationship {td}: {m}"));
    let profile = Profile::from_name(&p.bundle_endpoint_profile).ok_or_else(|| {
        invalid(format!(
            "bundle_endpoint_profile {:?} is neither \"https_spiffe\" nor \"https_web\"",
            p.bundle_endpoint_profile
        ))
    })?;
    let endpoint_spiffe_id = match p.endpoint_spiffe_id.as_str() {
        "" => None,
        s => Some(SpiffeId::new(s).map_err(|e| invalid(format!("endpoint_spiffe_id: {e}")))?),
    };
    if p.ca_bundle_pem.len() > MAX_CA_BUNDLE {
        return Err(invalid(format!(
            "ca_bundle is {} bytes, more than the {MAX_CA_BUNDLE} accepted",
            p.ca_bundle_pem.len()
        )));
    }
    let ca_bundle_pem = (!p.ca_bundle_pem.is_empty()).then_some(p.ca_bundle_pem);
    let rel = Relationship {
        trust_domain: td.clone(),
        bundle_endpoint_url: p.bundle_endpoint_url,
        bundle_endpoint_profile: profile,
        endpoint_spiffe_id,
        ca_bundle_pem,
    };
    check_relationship(own, &rel, rel.ca_bundle_pem.is_some()).map_err(invalid)?;
    if let Some(pem) = &rel.ca_bundle_pem {
        crate::https::tls_roots_pem("ca_bundle", "the PEM given", pem.as_bytes())
            .map_err(invalid)?;
    }
    Ok(rel)
}

impl AdminApi {
    /// Refuses to `verb` a relationship of the configuration file.
    fn not_configured(&self, td: &TrustDomain, verb: &str) -> Result<(), Status> {
        if self.state().federation.configured(td).is_some() {
            return Err(Status::failed_precondition(format!(
                "federation relationship {td} is in the server's configuration \
                 ([[federation.federates_with]]); {verb} it there"
            )));
        }
        Ok(())
    }

    /// The relationship and start bundle of a create or update request, checked.
    async fn relationship_request(
        &self,
        req: pb::FederationRelationshipRequest,
    ) -> Result<(Relationship, Option<Bundle>), Status> {
        let own = self.state().trust_domain();
        let rel = relationship_from_proto(
            own,
            req.relationship
                .ok_or_else(|| Status::invalid_argument("relationship is required"))?,
        )?;
        self.not_configured(&rel.trust_domain, "change")?;
        let Some(p) = req.trust_domain_bundle else {
            return Ok((rel, None));
        };
        let mut bundle = bundle_from_proto(p)?;
        // The bundle that checks the endpoint: of its SPIFFE ID's trust domain for
        // https_spiffe, of the relationship's for https_web.
        let want = rel
            .endpoint_spiffe_id
            .as_ref()
            .map_or(&rel.trust_domain, |id| id.trust_domain());
        if bundle.trust_domain() != want {
            return Err(Status::invalid_argument(format!(
                "trust_domain_bundle is the bundle of {}; this relationship needs the bundle \
                 of {want}",
                bundle.trust_domain()
            )));
        }
        if want == own {
            return Err(Status::invalid_argument(
                "trust_domain_bundle: the server's own bundle is managed by its CA",
            ));
        }
        if bundle.x509_authorities().is_empty() {
            return Err(Status::invalid_argument(
                "trust_domain_bundle holds no X.509 authority",
            ));
        }
        let previous = self.state().ds.get_bundle(want).await?;
        crate::federation::set_sequence(previous.as_ref(), &mut bundle);
        Ok((rel, Some(bundle)))
    }

    /// Creates (`update` false) or replaces (`update` true) a stored relationship.
    pub(super) async fn write_relationship(
        &self,
        req: Request<pb::FederationRelationshipRequest>,
        update: bool,
    ) -> Result<Response<pb::FederationRelationship>, Status> {
        let (rel, bundle) = self.relationship_request(req.into_inner()).await?;
        let ds = &self.state().ds;
        if update {
            ds.update_federation_relationship(&rel, bundle.as_ref())
                .await?;
        } else {
            ds.create_federation_relationship(&rel, bundle.as_ref())
                .await?;
        }
        if let Some(b) = &bundle {
            self.state().federation.bundle_set(b.trust_domain());
        }
        self.state().federation.changed();
        let done = if update { "updated" } else { "created" };
        tracing::info!(trust_domain = %rel.trust_domain, "federation relationship {done}");
        Ok(Response::new(relationship_to_proto(
            &rel,
            Source::Datastore,
        )))
    }

    pub(super) async fn get_relationship(
        &self,
        req: Request<pb::GetFederationRelationshipRequest>,
    ) -> Result<Response<pb::FederationRelationship>, Status> {
        let td = trust_domain(&req.into_inner().trust_domain)?;
        match self.state().federation.get(&td).await? {
            Some((r, source)) => Ok(Response::new(relationship_to_proto(&r, source))),
            None => Err(Status::not_found(format!(
                "no federation relationship with {td}"
            ))),
        }
    }

    pub(super) async fn list_relationships(
        &self,
        _req: Request<pb::ListFederationRelationshipsRequest>,
    ) -> Result<Response<pb::ListFederationRelationshipsResponse>, Status> {
        let all = self.state().federation.all().await?;
        Ok(Response::new(pb::ListFederationRelationshipsResponse {
            relationships: all
                .iter()
                .map(|(r, source)| relationship_to_proto(r, *source))
                .collect(),
        }))
    }

    pub(super) async fn delete_relationship(
        &self,
        req: Request<pb::GetFederationRelationshipRequest>,
    ) -> Result<Response<pb::DeleteFederationRelationshipResponse>, Status> {
        let td = trust_domain(&req.into_inner().trust_domain)?;
        self.not_configured(&td, "delete")?;
        self.state().ds.delete_federation_relationship(&td).await?;
        self.state().federation.changed();
        tracing::info!(trust_domain = %td, "federation relationship deleted");
        Ok(Response::new(pb::DeleteFederationRelationshipResponse {}))
    }

    pub(super) async fn refresh_relationship(
        &self,
        req: Request<pb::GetFederationRelationshipRequest>,
    ) -> Result<Response<tpb::Bundle>, Status> {
        let td = trust_domain(&req.into_inner().trust_domain)?;
        let Some((rel, _)) = self.state().federation.get(&td).await? else {
            return Err(Status::not_found(format!(
                "no federation relationship with {td}"
            )));
        };
        let bundle =
            self.state().federation.refresh(&rel).await.map_err(|e| {
                Status::unavailable(format!("cannot refresh the bundle of {td}: {e}"))
            })?;
        Ok(Response::new(bundle_to_proto(&bundle)))
    }
}

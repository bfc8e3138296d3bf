//! Conversions between wire messages and core types, shared by the server and the
//! agent. Everything that comes in is validated; errors name the field.

use tessera_core::{
    Bundle, JwtAuthority, RegistrationEntry, Selector, SpiffeId, TrustDomain, WorkloadKey,
};

use crate::types as pb;

pub fn entry_to_proto(e: &RegistrationEntry) -> pb::Entry {
    pb::Entry {
        id: e.id.clone(),
        spiffe_id: e.spiffe_id.to_string(),
        parent_id: e.parent_id.to_string(),
        selectors: e.selectors.iter().map(ToString::to_string).collect(),
        x509_svid_ttl: e.x509_svid_ttl,
        jwt_svid_ttl: e.jwt_svid_ttl,
        federates_with: e.federates_with.iter().map(|t| t.id_string()).collect(),
        admin: e.admin,
        downstream: e.downstream,
        dns_names: e.dns_names.clone(),
        hint: e.hint.clone(),
        expires_at: e.expires_at,
        revision_number: e.revision_number,
        created_at: e.created_at,
        workload_key: if e.workload_key.is_software() {
            String::new()
        } else {
            e.workload_key.to_string()
        },
    }
}

/// Parses an entry from the wire (IDs, selectors and trust domains checked).
pub fn entry_from_proto(p: pb::Entry) -> Result<RegistrationEntry, String> {
    let spiffe_id = SpiffeId::new(&p.spiffe_id).map_err(|e| format!("spiffe_id: {e}"))?;
    let parent_id = SpiffeId::new(&p.parent_id).map_err(|e| format!("parent_id: {e}"))?;
    let selectors = p
        .selectors
        .iter()
        .map(|s| s.parse::<Selector>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("selector: {e}"))?;
    let federates_with = p
        .federates_with
        .iter()
        .map(|s| TrustDomain::new(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("federates_with: {e}"))?;
    let workload_key = WorkloadKey::from_wire(&p.workload_key).map_err(|e| e.to_string())?;
    Ok(RegistrationEntry {
        id: p.id,
        spiffe_id,
        parent_id,
        selectors,
        x509_svid_ttl: p.x509_svid_ttl,
        jwt_svid_ttl: p.jwt_svid_ttl,
        federates_with,
        admin: p.admin,
        downstream: p.downstream,
        dns_names: p.dns_names,
        hint: p.hint,
        expires_at: p.expires_at,
        revision_number: p.revision_number,
        created_at: p.created_at,
        workload_key,
    })
}

pub fn bundle_to_proto(b: &Bundle) -> pb::Bundle {
    pb::Bundle {
        trust_domain: b.trust_domain().name().to_owned(),
        x509_authorities: b.x509_authorities().to_vec(),
        jwt_authorities: b
            .jwt_authorities()
            .iter()
            .map(|a| pb::JwtKey {
                key_id: a.key_id.clone(),
                public_key: a.public_key_der.clone(),
                expires_at: a.expires_at,
            })
            .collect(),
        sequence: b.sequence(),
        refresh_hint_seconds: b.refresh_hint(),
    }
}

/// Parses a bundle from the wire: certificates must parse, JWT keys must be usable.
pub fn bundle_from_proto(p: pb::Bundle) -> Result<Bundle, String> {
    let td = TrustDomain::new(&p.trust_domain).map_err(|e| format!("trust_domain: {e}"))?;
    for (i, der) in p.x509_authorities.iter().enumerate() {
        tessera_core::x509::cert_info(der).map_err(|e| format!("x509_authorities[{i}]: {e}"))?;
        tessera_core::bundle::check_x509_authority(der)
            .map_err(|e| format!("x509_authorities[{i}]: {e}"))?;
    }
    let mut jwts = Vec::with_capacity(p.jwt_authorities.len());
    for (i, k) in p.jwt_authorities.into_iter().enumerate() {
        if k.key_id.is_empty() {
            return Err(format!("jwt_authorities[{i}]: key_id is empty"));
        }
        if tessera_core::key::key_type_of_spki(&k.public_key).is_none() {
            return Err(format!(
                "jwt_authorities[{i}]: public_key is not an EC P-256/P-384 or RSA SubjectPublicKeyInfo"
            ));
        }
        jwts.push(JwtAuthority {
            key_id: k.key_id,
            public_key_der: k.public_key,
            expires_at: k.expires_at,
        });
    }
    let mut b = Bundle::with_x509(td, p.x509_authorities);
    b.set_jwt_authorities(jwts);
    b.set_sequence(p.sequence);
    b.set_refresh_hint(p.refresh_hint_seconds);
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trip_and_rejects() {
        let e = RegistrationEntry {
            id: "x".into(),
            spiffe_id: "spiffe://e.org/w".parse().unwrap(),
            parent_id: "spiffe://e.org/spire/agent/a".parse().unwrap(),
            selectors: vec!["unix:uid:1".parse().unwrap()],
            x509_svid_ttl: 60,
            jwt_svid_ttl: 30,
            federates_with: vec![TrustDomain::new("other.org").unwrap()],
            admin: true,
            downstream: false,
            dns_names: vec!["a.e.org".into()],
            hint: "h".into(),
            expires_at: 5,
            revision_number: 9,
            created_at: 1,
            workload_key: WorkloadKey::Tpm,
        };
        assert_eq!(entry_to_proto(&e).workload_key, "tpm");
        assert_eq!(entry_from_proto(entry_to_proto(&e)).unwrap(), e);
        let software = RegistrationEntry {
            workload_key: WorkloadKey::Software,
            ..e.clone()
        };
        // Software is sent as the empty string, what older peers send and read.
        assert_eq!(entry_to_proto(&software).workload_key, "");
        assert_eq!(
            entry_from_proto(entry_to_proto(&software)).unwrap(),
            software
        );
        let mut bad = entry_to_proto(&e);
        bad.workload_key = "hsm".into();
        let err = entry_from_proto(bad).unwrap_err();
        assert!(err.contains("workload_key \"hsm\""), "{err}");
        let mut bad = entry_to_proto(&e);
        bad.selectors = vec!["nocolon".into()];
        assert!(entry_from_proto(bad).unwrap_err().starts_with("selector:"));
        let mut bad = entry_to_proto(&e);
        bad.spiffe_id = "http://x".into();
        assert!(entry_from_proto(bad).unwrap_err().starts_with("spiffe_id:"));
    }

    #[test]
    fn bundle_rejects_garbage() {
        let p = pb::Bundle {
            trust_domain: "e.org".into(),
            x509_authorities: vec![b"junk".to_vec()],
            ..Default::default()
        };
        assert!(
            bundle_from_proto(p)
                .unwrap_err()
                .starts_with("x509_authorities[0]")
        );
        let p = pb::Bundle {
            trust_domain: "e.org".into(),
            jwt_authorities: vec![pb::JwtKey {
                key_id: "k".into(),
                public_key: b"junk".to_vec(),
                expires_at: 0,
            }],
            ..Default::default()
        };
        assert!(
            bundle_from_proto(p)
                .unwrap_err()
                .starts_with("jwt_authorities[0]")
        );
    }

    /// A CA certificate whose key a JWK Set cannot carry is refused: stored
    /// (as a JWK Set) it would have been lost when read back.
    #[test]
    fn bundle_rejects_an_x509_authority_a_jwk_cannot_describe() {
        use tessera_core::key::{KeyType, SoftwareKey};
        let td = TrustDomain::new("e.org").unwrap();
        let key: std::sync::Arc<dyn tessera_core::key::Key> =
            std::sync::Arc::new(SoftwareKey::generate(KeyType::EcP256).unwrap());
        let now = std::time::SystemTime::now();
        let ca = tessera_core::x509::self_signed_ca(
            &td,
            "ca",
            &key,
            now,
            now + std::time::Duration::from_secs(60),
        )
        .unwrap();
        let p = |der: Vec<u8>| pb::Bundle {
            trust_domain: "e.org".into(),
            x509_authorities: vec![der],
            ..Default::default()
        };
        assert!(bundle_from_proto(p(ca.clone())).is_ok());
        // id-ecPublicKey with one byte changed: a key algorithm of another kind.
        let mut other = ca;
        let oid = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
        let at = other.windows(oid.len()).position(|w| w == oid).unwrap();
        other[at + 4] = 0x3c;
        let err = bundle_from_proto(p(other)).unwrap_err();
        assert!(
            err.starts_with("x509_authorities[0]") && err.contains("not EC P-256"),
            "{err}"
        );
    }
}

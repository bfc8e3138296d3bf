//! The checks every new authority passes before it is stored: it signs a throw-away
//! SVID that must verify as relying parties will verify it. These catch an upstream
//! root whose constraints forbid the server's CA, and a key store that signs wrongly.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tessera_core::key::{Key, KeyType};
use tessera_core::x509::{self, Issuer, SvidTemplate};
use tessera_core::{Bundle, JwtAuthority, TrustDomain};

use super::{CaError, ChainProblem};

/// Signs a throw-away X509-SVID with `issuer` at `now` and checks it as relying
/// parties will: through the verifier agents use, against `roots`, and against every
/// CA's path length limit (including the roots', which that verifier does not apply
/// to trust anchors while OpenSSL and Go do).
///
/// A signature that fails is an error of its own (the key store may be down); a chain
/// that does not verify is `Ok(Err(why))`.
pub(super) fn probe_x509(
    td: &TrustDomain,
    issuer: &Issuer,
    chain_tail: &[Vec<u8>],
    roots: &[Vec<u8>],
    now: SystemTime,
) -> Result<Result<(), ChainProblem>, CaError> {
    let id = td.id("/spire/server")?;
    let subject = tessera_core::key::SoftwareKey::generate(KeyType::EcP256)?;
    let leaf = x509::sign_x509_svid(
        &SvidTemplate {
            spiffe_id: &id,
            public_key_der: subject.public_key_der(),
            dns_names: &[],
            ttl: Duration::from_secs(60),
            now,
        },
        issuer,
    )?;
    let mut chain = vec![leaf];
    chain.extend(chain_tail.iter().cloned());
    let bundle = Bundle::with_x509(td.clone(), roots.to_vec());
    if let Err(e) = x509::verify_svid_chain(&chain, &bundle, now) {
        return Ok(Err(ChainProblem::Verify(e)));
    }
    Ok(check_path_lengths(&chain, roots))
}

/// Checks every CA certificate above the leaf, up to the root that issued the top of
/// `chain`, against its basicConstraints path length limit.
pub(super) fn check_path_lengths(chain: &[Vec<u8>], roots: &[Vec<u8>]) -> Result<(), ChainProblem> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let parse = |der: &[u8]| -> Result<(String, Option<u32>, String), ChainProblem> {
        let (_, c) =
            X509Certificate::from_der(der).map_err(|e| ChainProblem::Unreadable(e.to_string()))?;
        let limit = c
            .basic_constraints()
            .ok()
            .flatten()
            .and_then(|b| b.value.path_len_constraint);
        Ok((c.subject().to_string(), limit, c.issuer().to_string()))
    };
    let mut cas = Vec::new();
    for der in chain.iter().skip(1) {
        cas.push(parse(der)?);
    }
    let top_issuer = match (cas.last(), chain.first()) {
        (Some((_, _, issuer)), _) => issuer.clone(),
        (None, Some(leaf)) => parse(leaf)?.2,
        (None, None) => return Ok(()),
    };
    // The root that issued the top of the chain (a self-signed CA is its own root
    // and is already in `cas` only when it is also in the chain).
    for r in roots {
        let root = parse(r)?;
        if root.0 == top_issuer && !cas.iter().any(|c| c.0 == root.0) {
            cas.push(root);
            break;
        }
    }
    for (i, (subject, limit, _)) in cas.iter().enumerate() {
        // CA certificates below this one (the leaf does not count).
        let below = i as u32;
        if let Some(max) = limit
            && below > *max
        {
            return Err(ChainProblem::PathLength {
                subject: subject.clone(),
                max: *max,
                below,
            });
        }
    }
    Ok(())
}

/// Signs a throw-away JWT-SVID with `key` at `now` and validates it against a bundle
/// holding only that key. Errors like [`probe_x509`]'s.
pub(super) fn probe_jwt(
    td: &TrustDomain,
    kid: &str,
    key: &Arc<dyn Key>,
    now: i64,
) -> Result<Result<(), ChainProblem>, CaError> {
    let id = td.id("/spire/server")?;
    let aud = vec!["tessera-probe".to_owned()];
    let svid = tessera_core::jwt::sign_jwt_svid(&id, &aud, now, now + 60, kid, key.as_ref())?;
    let mut bundle = Bundle::new(td.clone());
    bundle.set_jwt_authorities(vec![JwtAuthority {
        key_id: kid.to_owned(),
        public_key_der: key.public_key_der().to_vec(),
        expires_at: now + 60,
    }]);
    Ok(
        tessera_core::jwt::validate_jwt_svid(&svid.token, |_| Some(&bundle), &aud, now)
            .map(|_| ())
            .map_err(ChainProblem::Jwt),
    )
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "test code: a failed unwrap is a failed test"
    )]

    use tessera_core::key::SoftwareKey;

    use super::*;
    use crate::ca::tests::upstream_root;

    #[test]
    fn path_lengths_are_checked_up_to_the_root() {
        let root = upstream_root(Some(0));
        let td = TrustDomain::new("example.org").unwrap();
        let now = SystemTime::now();
        let key: Arc<dyn Key> = Arc::new(SoftwareKey::generate(KeyType::EcP256).unwrap());
        let inter = x509::intermediate_ca(
            &td,
            "inter",
            key.public_key_der(),
            now,
            now + Duration::from_secs(600),
            &root,
        )
        .unwrap();
        let issuer = Issuer::new(inter.clone(), key).unwrap();
        let verdict = probe_x509(&td, &issuer, &[inter], &[root.cert_der().to_vec()], now).unwrap();
        let why = verdict.unwrap_err();
        assert!(
            matches!(
                why,
                ChainProblem::PathLength {
                    max: 0,
                    below: 1,
                    ..
                }
            ),
            "{why:?}"
        );
        assert!(why.to_string().contains("pathLenConstraint 0"), "{why}");
        // A self-signed root with pathLen 0 may sign leaves directly.
        let self_root = upstream_root(Some(0));
        assert!(matches!(
            probe_x509(&td, &self_root, &[], &[self_root.cert_der().to_vec()], now).unwrap(),
            Ok(())
        ));
    }

    #[test]
    fn a_jwt_key_that_signs_wrongly_fails_its_probe() {
        let td = TrustDomain::new("example.org").unwrap();
        let key: Arc<dyn Key> = Arc::new(SoftwareKey::generate(KeyType::EcP256).unwrap());
        assert!(matches!(
            probe_jwt(&td, "kid", &key, 1_700_000_000).unwrap(),
            Ok(())
        ));
        // The bundle publishes another key under the kid: the probe must notice.
        let other: Arc<dyn Key> = Arc::new(SoftwareKey::generate(KeyType::EcP256).unwrap());
        #[derive(Debug)]
        struct Mismatched(Arc<dyn Key>, Arc<dyn Key>);
        impl Key for Mismatched {
            fn key_type(&self) -> KeyType {
                self.0.key_type()
            }
            fn public_key_der(&self) -> &[u8] {
                self.1.public_key_der()
            }
            fn sign(
                &self,
                scheme: tessera_core::key::SignatureScheme,
                message: &[u8],
            ) -> Result<Vec<u8>, tessera_core::key::KeyError> {
                self.0.sign(scheme, message)
            }
        }
        let bad: Arc<dyn Key> = Arc::new(Mismatched(key, other));
        let why = probe_jwt(&td, "kid", &bad, 1_700_000_000)
            .unwrap()
            .unwrap_err();
        assert!(matches!(why, ChainProblem::Jwt(_)), "{why:?}");
    }
}

//! Signing inside the token, and a raw C_Sign throughput probe for benchmarks.
//!
//! Messages are hashed in software with the scheme's hash and only the digest goes
//! to the token: CKM_ECDSA for EC keys, CKM_RSA_PKCS over DigestInfo||digest for
//! PKCS#1 v1.5, and CKM_RSA_PKCS_PSS (salt = hash length) for PSS. One mechanism per
//! key family works on every token, whereas the hash-and-sign mechanisms
//! (CKM_ECDSA_SHA384, ...) are often missing, and hashing a large TBS certificate
//! on a slow token would be the slowest way to do it.
//!
//! CKM_ECDSA returns raw `r||s`; the conversion to DER happens here and only here,
//! through [`tessera_core::der::ecdsa_raw_to_der`].

use std::sync::Barrier;
use std::time::{Duration, Instant};

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::ObjectHandle;
use tessera_core::der;
use tessera_core::key::{HashAlgorithm, KeyType, SignatureScheme};

use crate::error::{HsmError, rv_means_stale_handle};
use crate::keys;
use crate::manager::Pkcs11Key;
use crate::session::Op;

/// The mechanism and the bytes to give C_Sign for `scheme`.
fn prepare(scheme: SignatureScheme, message: &[u8]) -> (Mechanism<'static>, Vec<u8>) {
    let hash = scheme.hash();
    let digest = hash.digest(message);
    if !scheme.is_rsa() {
        return (Mechanism::Ecdsa, digest);
    }
    if scheme.is_pss() {
        let (hash_alg, mgf) = match hash {
            HashAlgorithm::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
            HashAlgorithm::Sha384 => (MechanismType::SHA384, PkcsMgfType::MGF1_SHA384),
            HashAlgorithm::Sha512 => (MechanismType::SHA512, PkcsMgfType::MGF1_SHA512),
        };
        let params = PkcsPssParams {
            hash_alg,
            mgf,
            s_len: (hash.output_len() as u64).into(),
        };
        return (Mechanism::RsaPkcsPss(params), digest);
    }
    let mut input = hash.pkcs1_digest_info_prefix().to_vec();
    input.extend_from_slice(&digest);
    (Mechanism::RsaPkcs, input)
}

/// Turns what C_Sign returned into the form [`tessera_core::key::Key::sign`] promises.
fn finish(key_type: KeyType, raw: Vec<u8>) -> Result<Vec<u8>, HsmError> {
    let width = match key_type {
        KeyType::EcP256 => 32,
        KeyType::EcP384 => 48,
        _ => return Ok(raw),
    };
    if raw.len() != 2 * width {
        return Err(HsmError::Binding(format!(
            "CKM_ECDSA returned {} bytes for a {key_type} key; expected {}",
            raw.len(),
            2 * width
        )));
    }
    der::ecdsa_raw_to_der(&raw).map_err(|e| HsmError::Binding(e.to_string()))
}

fn sign_error(op: &Op<'_>, mechanism: &Mechanism<'_>, e: CkError) -> HsmError {
    match e {
        CkError::Pkcs11(RvError::MechanismInvalid | RvError::MechanismParamInvalid, _) => {
            HsmError::MechanismNotSupported {
                token: op.token.to_owned(),
                mechanism: mechanism.mechanism_type().to_string(),
            }
        }
        other => other.into(),
    }
}

/// Finds the key's private object again by label and id (after a restart, a
/// recovery or a re-initialisation) and remembers its handle for this module
/// generation. Runs exclusively: it searches the token.
fn refresh_handle(key: &Pkcs11Key, op: &Op<'_>) -> Result<ObjectHandle, HsmError> {
    let Some(found) = keys::find_private(op, &key.key_ref)? else {
        // An empty search on a token that no longer answers says nothing about the
        // key: ask the token, so that an outage is reported as one.
        op.ctx.get_token_info(op.slot)?;
        return Err(HsmError::KeyMissing {
            label: key.key_ref.describe(),
            token: op.token.to_owned(),
        });
    };
    // The object under this label may be a newer key (generate_key replaced it):
    // never sign with a key whose public half is not the one we handed out.
    if let Some(current) = keys::load(op, &key.key_ref)?
        && current.spki != key.spki
    {
        return Err(HsmError::KeyMissing {
            label: format!(
                "{} (replaced by a newer key; get it again)",
                key.key_ref.describe()
            ),
            token: op.token.to_owned(),
        });
    }
    *key.handle.lock().map_err(|_| HsmError::Poisoned)? = Some((op.generation, found));
    Ok(found)
}

/// The cached handle, if it belongs to this module generation.
fn cached_handle(key: &Pkcs11Key, op: &Op<'_>) -> Result<Option<ObjectHandle>, HsmError> {
    Ok(key
        .handle
        .lock()
        .map_err(|_| HsmError::Poisoned)?
        .filter(|(generation, _)| *generation == op.generation)
        .map(|(_, h)| h))
}

/// Signs with the cached handle; `None` when the handle must be looked up first.
fn sign_cached(
    key: &Pkcs11Key,
    op: &Op<'_>,
    mechanism: &Mechanism<'_>,
    input: &[u8],
) -> Result<Option<Vec<u8>>, HsmError> {
    let Some(h) = cached_handle(key, op)? else {
        return Ok(None);
    };
    match op.session.sign(mechanism, h, input) {
        Ok(sig) => Ok(Some(sig)),
        Err(CkError::Pkcs11(rv, _)) if rv_means_stale_handle(rv) => {
            *key.handle.lock().map_err(|_| HsmError::Poisoned)? = None;
            Ok(None)
        }
        Err(e) => Err(sign_error(op, mechanism, e)),
    }
}

/// Signs `message` with `key`.
pub(crate) fn sign(
    key: &Pkcs11Key,
    scheme: SignatureScheme,
    message: &[u8],
) -> Result<Vec<u8>, HsmError> {
    if !key.key_type.supports(scheme) {
        return Err(HsmError::KeyInvalid {
            label: key.key_ref.describe(),
            reason: format!("a {} key cannot sign with {scheme:?}", key.key_type),
        });
    }
    let (mechanism, input) = prepare(scheme, message);
    // Looking a handle up again is a search, which takes turns with writers; the
    // signature itself does not. Two rounds cover a handle that went stale once;
    // a third means the module is being re-initialised under us.
    for _ in 0..3 {
        if let Some(raw) = key.hsm.run(|op| sign_cached(key, op, &mechanism, &input))? {
            return finish(key.key_type, raw);
        }
        key.hsm.run_exclusive(|op| refresh_handle(key, op))?;
    }
    Err(HsmError::Unavailable {
        token: key.hsm.token_name(),
        reason: "the key's object handle kept changing while signing".into(),
    })
}

/// Raw C_Sign throughput measured by [`crate::Pkcs11KeyManager::raw_sign_rate`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SignRate {
    /// Signatures made.
    pub signatures: usize,
    /// Threads that signed, each on its own session.
    pub threads: usize,
    /// Wall time from the first signature to the last.
    pub elapsed: Duration,
}

impl SignRate {
    /// Signatures per second.
    pub fn per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.signatures as f64 / secs
        } else {
            0.0
        }
    }
}

/// `threads` threads, each with a session of its own, each making `per_thread`
/// C_Sign calls on the key's default scheme over a fixed digest.
pub(crate) fn raw_sign_rate(
    key: &Pkcs11Key,
    threads: usize,
    per_thread: usize,
) -> Result<SignRate, HsmError> {
    if threads == 0 {
        return Err(HsmError::Config(
            "raw_sign_rate needs at least one thread".into(),
        ));
    }
    let scheme = key.key_type.default_scheme();
    // Resolve the handle through the normal path first, so that it is current.
    let private = key.hsm.run_exclusive(|op| refresh_handle(key, op))?;
    key.hsm.with_context(|ctx, slot, _| {
        let start = Barrier::new(threads + 1);
        let (elapsed, results) = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| -> Result<(), HsmError> {
                        // Mechanisms hold raw pointers and may not be shared.
                        let (mechanism, input) = prepare(scheme, b"tessera raw sign rate");
                        let session = ctx.open_ro_session_no_drop(slot);
                        start.wait();
                        let session = session?;
                        let mut result = Ok(());
                        for _ in 0..per_thread {
                            if let Err(e) = session.sign(&mechanism, private, &input) {
                                result = Err(e.into());
                                break;
                            }
                        }
                        let _ = session.close();
                        result
                    })
                })
                .collect();
            start.wait();
            let begun = Instant::now();
            let results: Vec<Result<(), HsmError>> = workers
                .into_iter()
                .map(|w| {
                    w.join().unwrap_or_else(|_| {
                        Err(HsmError::Binding("a signing thread panicked".into()))
                    })
                })
                .collect();
            (begun.elapsed(), results)
        });
        for r in results {
            r?;
        }
        Ok(SignRate {
            signatures: threads * per_thread,
            threads,
            elapsed,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_per_scheme() {
        let (m, input) = prepare(SignatureScheme::EcdsaP384Sha384, b"m");
        assert_eq!(m.mechanism_type(), MechanismType::ECDSA);
        assert_eq!(input, HashAlgorithm::Sha384.digest(b"m"));

        let (m, input) = prepare(SignatureScheme::RsaPkcs1Sha256, b"m");
        assert_eq!(m.mechanism_type(), MechanismType::RSA_PKCS);
        assert_eq!(input.len(), 19 + 32);
        assert!(input.ends_with(&HashAlgorithm::Sha256.digest(b"m")));

        let (m, input) = prepare(SignatureScheme::RsaPssSha512, b"m");
        assert_eq!(m.mechanism_type(), MechanismType::RSA_PKCS_PSS);
        assert_eq!(input.len(), 64);
    }

    #[test]
    fn raw_ecdsa_becomes_der() {
        let mut raw = vec![0u8; 64];
        raw[0] = 0x80;
        raw[63] = 1;
        let der = finish(KeyType::EcP256, raw).unwrap();
        assert_eq!(der[0], 0x30);
        assert!(finish(KeyType::EcP256, vec![1; 96]).is_err());
        assert_eq!(
            finish(KeyType::Rsa2048, vec![9; 256]).unwrap(),
            vec![9; 256]
        );
    }
}

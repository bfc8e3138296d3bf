//! The salted HMAC session (TPM 2.0 Part 1, 19 and 21): started with a salt only
//! this process and the TPM know (ECDH with the SRK's public key, KDFe), so its
//! session key never crosses the bus. Every command that authorises an object
//! through it carries an HMAC over the command (cpHash) and the two nonces, every
//! response an HMAC the backend checks (rpHash), so neither can be altered on the
//! way; a command's first parameter can be encrypted to the TPM (`decrypt`) and a
//! response's first parameter from it (`encrypt`) with AES-128-CFB under keys
//! derived (KDFa, "CFB") from the session key and the fresh nonces.

use aes::cipher::{AsyncStreamCipher as _, KeyIvInit as _};
use rand::RngCore as _;
use ring::rand::SystemRandom;
use zeroize::Zeroizing;

use crate::verifier::credential::{kdfa, kdfe};
use crate::wire::{EccCurve, HashAlg, PublicArea, PublicParams, put_tpm2b};

/// TPMA_SESSION continueSession: the session outlives the command.
pub(crate) const CONTINUE_SESSION: u8 = 0x01;
/// TPMA_SESSION decrypt: the command's first parameter is encrypted.
pub(crate) const DECRYPT: u8 = 0x20;
/// TPMA_SESSION encrypt: the response's first parameter is encrypted.
pub(crate) const ENCRYPT: u8 = 0x40;

/// The session hash (and so nonce size): SHA-256.
pub(crate) const SESSION_HASH: HashAlg = HashAlg::Sha256;
/// The parameter-encryption cipher: AES-128 in CFB mode.
const AES_KEY_BYTES: usize = 16;

/// A fresh nonce as long as the session hash.
pub(crate) fn nonce() -> Vec<u8> {
    let mut n = vec![0u8; SESSION_HASH.size()];
    rand::rngs::OsRng.fill_bytes(&mut n);
    n
}

/// A salt for a session with `tpm_key` (an ECC decryption key, the SRK): returns the
/// salt and the TPM2B_ENCRYPTED_SECRET contents (the ephemeral point) that lets
/// the TPM compute it with its private key.
pub(crate) fn ecc_salt(tpm_key: &PublicArea) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), String> {
    let PublicParams::Ecc { curve, .. } = &tpm_key.params else {
        return Err("the salt key is not an ECC key".into());
    };
    let ring_alg = match curve {
        EccCurve::P256 => &ring::agreement::ECDH_P256,
        EccCurve::P384 => &ring::agreement::ECDH_P384,
    };
    let point = tpm_key.ec_point().map_err(|e| e.to_string())?;
    let n = curve.field_size();
    let key_x = &point[1..1 + n];
    let rng = SystemRandom::new();
    let ephemeral = ring::agreement::EphemeralPrivateKey::generate(ring_alg, &rng)
        .map_err(|_| "no randomness for an ephemeral key".to_owned())?;
    let eph_public = ephemeral
        .compute_public_key()
        .map_err(|_| "cannot compute the ephemeral public key".to_owned())?;
    let eph = eph_public.as_ref();
    if eph.len() != 1 + 2 * n {
        return Err("ephemeral point size".into());
    }
    let (eph_x, eph_y) = eph[1..].split_at(n);
    let peer = ring::agreement::UnparsedPublicKey::new(ring_alg, &point);
    let name_alg = tpm_key.name_alg;
    // ring checks that the TPM's point is on the curve before agreeing.
    let salt = ring::agreement::agree_ephemeral(ephemeral, &peer, |z| {
        Zeroizing::new(kdfe(
            name_alg,
            z,
            b"SECRET",
            eph_x,
            key_x,
            name_alg.size() * 8,
        ))
    })
    .map_err(|_| "the salt key's point is not on its curve".to_owned())?;
    let mut secret = Vec::with_capacity(4 + 2 * n);
    put_tpm2b(&mut secret, eph_x);
    put_tpm2b(&mut secret, eph_y);
    Ok((salt, secret))
}

/// A running salted HMAC session.
pub(crate) struct Session {
    /// Its handle in the TPM.
    pub(crate) handle: u32,
    key: Zeroizing<Vec<u8>>,
    nonce_tpm: Vec<u8>,
}

/// One command's use of the session: the caller's fresh nonce, the attributes, and
/// the auth value of the entity it authorises (a hierarchy's password, a workload
/// key's value; empty for the agent's own keys).
pub(crate) struct Use {
    pub(crate) nonce_caller: Vec<u8>,
    pub(crate) attributes: u8,
    auth: Zeroizing<Vec<u8>>,
}

fn aes_cfb(key_iv: &[u8], data: &mut [u8], encrypt: bool) {
    let (key, iv) = key_iv.split_at(AES_KEY_BYTES);
    // Lengths are fixed by the KDF call, so these cannot fail.
    if encrypt {
        if let Ok(c) = cfb_mode::Encryptor::<aes::Aes128>::new_from_slices(key, iv) {
            c.encrypt(data);
        }
    } else if let Ok(c) = cfb_mode::Decryptor::<aes::Aes128>::new_from_slices(key, iv) {
        c.decrypt(data);
    }
}

impl Session {
    /// The session that StartAuthSession returned, its key made from the salt.
    pub(crate) fn new(handle: u32, salt: &[u8], nonce_caller: &[u8], nonce_tpm: Vec<u8>) -> Self {
        let key = kdfa(
            SESSION_HASH,
            salt,
            b"ATH",
            &nonce_tpm,
            nonce_caller,
            SESSION_HASH.size() * 8,
        );
        Self {
            handle,
            key,
            nonce_tpm,
        }
    }

    /// Starts one command's use with these attributes (continueSession is added),
    /// authorising an entity whose auth value is `auth` (trailing zeros removed).
    pub(crate) fn begin(&self, attributes: u8, auth: &[u8]) -> Use {
        let end = auth.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        let auth = &auth[..end];
        Use {
            nonce_caller: nonce(),
            attributes: attributes | CONTINUE_SESSION,
            auth: Zeroizing::new(auth.to_vec()),
        }
    }

    /// The session value (Part 1, 19.6): the session key, then the auth value of
    /// the entity authorised (the session is bound to none).
    fn value(&self, u: &Use) -> Zeroizing<Vec<u8>> {
        let mut v = Zeroizing::new(Vec::with_capacity(self.key.len() + u.auth.len()));
        v.extend_from_slice(&self.key);
        v.extend_from_slice(&u.auth);
        v
    }

    fn cfb_key(&self, u: &Use, newer: &[u8], older: &[u8]) -> Zeroizing<Vec<u8>> {
        kdfa(
            SESSION_HASH,
            &self.value(u),
            b"CFB",
            newer,
            older,
            (AES_KEY_BYTES + 16) * 8,
        )
    }

    /// Encrypts the contents of the command's first parameter (a TPM2B) in place.
    pub(crate) fn encrypt_parameter(&self, u: &Use, data: &mut [u8]) {
        aes_cfb(
            &self.cfb_key(u, &u.nonce_caller, &self.nonce_tpm),
            data,
            true,
        );
    }

    /// Decrypts the contents of the response's first parameter in place; `nonce_tpm`
    /// is the TPM's new nonce from the response.
    pub(crate) fn decrypt_parameter(&self, u: &Use, nonce_tpm: &[u8], data: &mut [u8]) {
        aes_cfb(&self.cfb_key(u, nonce_tpm, &u.nonce_caller), data, false);
    }

    /// The command HMAC over `cp_hash`.
    pub(crate) fn command_hmac(&self, u: &Use, cp_hash: &[u8]) -> Vec<u8> {
        SESSION_HASH.hmac(
            &self.value(u),
            &[cp_hash, &u.nonce_caller, &self.nonce_tpm, &[u.attributes]],
        )
    }

    /// Checks the response HMAC over `rp_hash`, and takes the TPM's new nonce.
    pub(crate) fn check_response(
        &mut self,
        u: &Use,
        rp_hash: &[u8],
        nonce_tpm: &[u8],
        attributes: u8,
        hmac: &[u8],
    ) -> Result<(), String> {
        let mut msg = Vec::with_capacity(rp_hash.len() + 2 * nonce_tpm.len() + 1);
        msg.extend_from_slice(rp_hash);
        msg.extend_from_slice(nonce_tpm);
        msg.extend_from_slice(&u.nonce_caller);
        msg.push(attributes);
        let key = ring::hmac::Key::new(SESSION_HASH.ring_hmac(), &self.value(u));
        ring::hmac::verify(&key, &msg, hmac)
            .map_err(|_| "the response HMAC does not verify: the response was altered on its way from the TPM, or is not the TPM's".to_owned())?;
        if nonce_tpm.len() < 16 {
            return Err(format!("the TPM's nonce has {} bytes", nonce_tpm.len()));
        }
        self.nonce_tpm = nonce_tpm.to_vec();
        Ok(())
    }
}

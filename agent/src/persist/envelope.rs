//! The cache file's envelope: `TSVC`, a version octet, the key source's octet (1:
//! a secret sealed to the TPM, 2: the key file), a 12-byte random nonce, then the
//! document encrypted and authenticated with AES-256-GCM under the cache key, the
//! first six octets as associated data. A file that is cut, changed, from another
//! key source or made with another key does not open.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

const MAGIC: &[u8; 4] = b"TSVC";
const VERSION: u8 = 1;
const HEADER: usize = 6;
const NONCE: usize = 12;

/// Where the cache key comes from, as the envelope records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// A secret sealed to the TPM.
    Tpm = 1,
    /// The key file.
    KeyFile = 2,
}

fn cipher(key: &[u8; 32]) -> Result<LessSafeKey, String> {
    UnboundKey::new(&AES_256_GCM, key)
        .map(LessSafeKey::new)
        .map_err(|_| "AES-256-GCM refused the key".to_owned())
}

/// Encrypts `plain` under `key`.
pub fn seal(key: &[u8; 32], source: KeySource, plain: &[u8]) -> Result<Vec<u8>, String> {
    let mut nonce = [0u8; NONCE];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| "no randomness for a nonce".to_owned())?;
    let mut out = Vec::with_capacity(HEADER + NONCE + plain.len() + 16);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(source as u8);
    out.extend_from_slice(&nonce);
    let mut body = plain.to_vec();
    cipher(key)?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&out[..HEADER]),
            &mut body,
        )
        .map_err(|_| "encryption failed".to_owned())?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decrypts what [`seal`] made; the error says what is wrong.
pub fn open(key: &[u8; 32], source: KeySource, data: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
    if data.len() < HEADER + NONCE + 16 {
        return Err(format!("{} bytes: cut short", data.len()));
    }
    if &data[..4] != MAGIC {
        return Err("not an SVID cache file (no TSVC header)".into());
    }
    if data[4] != VERSION {
        return Err(format!("version {} (this agent reads {VERSION})", data[4]));
    }
    if data[5] != source as u8 {
        return Err(format!(
            "encrypted for another key source ({}), this agent uses {source:?}",
            data[5]
        ));
    }
    let nonce: [u8; NONCE] = data[HEADER..HEADER + NONCE]
        .try_into()
        .map_err(|_| "nonce".to_owned())?;
    let mut body = Zeroizing::new(data[HEADER + NONCE..].to_vec());
    let n = cipher(key)?
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&data[..HEADER]),
            &mut body,
        )
        .map_err(|_| {
            "it does not decrypt: damaged, or encrypted with another key (another TPM, or another key file)".to_owned()
        })?
        .len();
    body.truncate(n);
    Ok(body)
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "test code: a failed unwrap is a failed test"
    )]

    use super::*;

    #[test]
    fn sealed_documents_open_with_their_key_only_and_damage_is_refused() {
        let key = [7u8; 32];
        let doc = b"{\"svids\":[]}";
        let sealed = seal(&key, KeySource::Tpm, doc).unwrap();
        assert_eq!(open(&key, KeySource::Tpm, &sealed).unwrap().as_slice(), doc);
        assert!(
            !sealed.windows(doc.len()).any(|w| w == doc),
            "plaintext on disk"
        );
        // Two writes of the same document differ (fresh nonce).
        assert_ne!(seal(&key, KeySource::Tpm, doc).unwrap(), sealed);

        let e = open(&[8u8; 32], KeySource::Tpm, &sealed).unwrap_err();
        assert!(e.contains("another key"), "{e}");
        let e = open(&key, KeySource::KeyFile, &sealed).unwrap_err();
        assert!(e.contains("another key source"), "{e}");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(
                open(&key, KeySource::Tpm, &bad).is_err(),
                "flip at {i} opened"
            );
        }
        for cut in 0..sealed.len() {
            assert!(open(&key, KeySource::Tpm, &sealed[..cut]).is_err());
        }
        let e = open(&key, KeySource::Tpm, &[0u8; 100]).unwrap_err();
        assert!(e.contains("TSVC"), "{e}");
    }
}

//! TPMT_SIGNATURE: an RSASSA, RSAPSS or ECDSA signature as the TPM returns it.

use super::{HashAlg, Reader, Result, StructureError, alg, put_tpm2b, put_u16};

/// A parsed TPMT_SIGNATURE (RSA or ECDSA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// RSASSA-PKCS1-v1_5.
    RsaSsa {
        /// The hash signed.
        hash: HashAlg,
        /// The signature, as long as the modulus.
        sig: Vec<u8>,
    },
    /// RSASSA-PSS.
    RsaPss {
        /// The hash signed.
        hash: HashAlg,
        /// The signature, as long as the modulus.
        sig: Vec<u8>,
    },
    /// ECDSA.
    Ecdsa {
        /// The hash signed.
        hash: HashAlg,
        /// r, big-endian (leading zeros may be missing).
        r: Vec<u8>,
        /// s, big-endian (leading zeros may be missing).
        s: Vec<u8>,
    },
}

impl Signature {
    /// Parses a TPMT_SIGNATURE spanning exactly `data`.
    pub fn parse(data: &[u8]) -> Result<Self> {
        let mut r = Reader::new(data, "TPMT_SIGNATURE");
        let sig_alg = r.u16()?;
        let sig = match sig_alg {
            alg::RSASSA => Signature::RsaSsa {
                hash: HashAlg::from_id(r.u16()?)?,
                sig: r.tpm2b()?.to_vec(),
            },
            alg::RSAPSS => Signature::RsaPss {
                hash: HashAlg::from_id(r.u16()?)?,
                sig: r.tpm2b()?.to_vec(),
            },
            alg::ECDSA => Signature::Ecdsa {
                hash: HashAlg::from_id(r.u16()?)?,
                r: r.tpm2b()?.to_vec(),
                s: r.tpm2b()?.to_vec(),
            },
            other => {
                return Err(StructureError::Unsupported {
                    what: "signature algorithm",
                    value: other.into(),
                });
            }
        };
        r.finish()?;
        Ok(sig)
    }

    /// The TPMT_SIGNATURE encoding.
    pub fn marshal(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Signature::RsaSsa { hash, sig } => {
                put_u16(&mut out, alg::RSASSA);
                put_u16(&mut out, hash.id());
                put_tpm2b(&mut out, sig);
            }
            Signature::RsaPss { hash, sig } => {
                put_u16(&mut out, alg::RSAPSS);
                put_u16(&mut out, hash.id());
                put_tpm2b(&mut out, sig);
            }
            Signature::Ecdsa { hash, r, s } => {
                put_u16(&mut out, alg::ECDSA);
                put_u16(&mut out, hash.id());
                put_tpm2b(&mut out, r);
                put_tpm2b(&mut out, s);
            }
        }
        out
    }

    /// The hash the signature was made over.
    pub fn hash(&self) -> HashAlg {
        match self {
            Signature::RsaSsa { hash, .. }
            | Signature::RsaPss { hash, .. }
            | Signature::Ecdsa { hash, .. } => *hash,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_round_trips_and_rejects_garbage() {
        let sig = Signature::Ecdsa {
            hash: HashAlg::Sha256,
            r: vec![1; 32],
            s: vec![2; 32],
        };
        let b = sig.marshal();
        assert_eq!(Signature::parse(&b).unwrap(), sig);
        for cut in 0..b.len() {
            assert!(Signature::parse(&b[..cut]).is_err());
        }
        assert!(Signature::parse(&[0x00, 0x10]).is_err());
        assert!(Signature::parse(&[]).is_err());
    }
}

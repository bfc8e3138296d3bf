//! TPMS_ATTEST: what the TPM signs when it attests (here, TPM2_Certify).

use super::{Reader, Result, StructureError, st};

/// TPMS_CLOCK_INFO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockInfo {
    /// The TPM's running time in milliseconds.
    pub clock: u64,
    /// TPM resets since the last clear.
    pub reset_count: u32,
    /// TPM restarts since the last reset.
    pub restart_count: u32,
    /// Whether the clock has not gone backwards since it was last saved.
    pub safe: bool,
}

/// What an attestation structure attests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attested {
    /// TPMS_CERTIFY_INFO: the name and qualified name of the certified object.
    Certify {
        /// The certified object's name.
        name: Vec<u8>,
        /// Its qualified name.
        qualified_name: Vec<u8>,
    },
    /// Another kind (quote, time, ...), kept as raw bytes.
    Other(Vec<u8>),
}

/// A parsed TPMS_ATTEST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attest {
    /// `TPM_GENERATED_VALUE` for structures the TPM made.
    pub magic: u32,
    /// The `TPM_ST_ATTEST_*` tag.
    pub attest_type: u16,
    /// The signing key's qualified name.
    pub qualified_signer: Vec<u8>,
    /// The caller's qualifying data.
    pub extra_data: Vec<u8>,
    /// The TPM's clock when it signed.
    pub clock_info: ClockInfo,
    /// The vendor's firmware version.
    pub firmware_version: u64,
    /// What is attested.
    pub attested: Attested,
}

impl Attest {
    /// Parses a TPMS_ATTEST spanning exactly `data` (the bytes the TPM signed).
    pub fn parse(data: &[u8]) -> Result<Self> {
        let mut r = Reader::new(data, "TPMS_ATTEST");
        let magic = r.u32()?;
        let attest_type = r.u16()?;
        let qualified_signer = r.tpm2b()?.to_vec();
        let extra_data = r.tpm2b()?.to_vec();
        let clock_info = ClockInfo {
            clock: r.u64()?,
            reset_count: r.u32()?,
            restart_count: r.u32()?,
            safe: match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(StructureError::Invalid("TPMS_CLOCK_INFO.safe")),
            },
        };
        let firmware_version = r.u64()?;
        let attested = if attest_type == st::ATTEST_CERTIFY {
            let name = r.tpm2b()?.to_vec();
            let qualified_name = r.tpm2b()?.to_vec();
            r.finish()?;
            Attested::Certify {
                name,
                qualified_name,
            }
        } else {
            Attested::Other(r.rest().to_vec())
        };
        Ok(Self {
            magic,
            attest_type,
            qualified_signer,
            extra_data,
            clock_info,
            firmware_version,
            attested,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{TPM_GENERATED_VALUE, put_tpm2b, put_u16, put_u32};

    #[test]
    fn attest_parses_and_rejects_garbage() {
        let mut a = Vec::new();
        put_u32(&mut a, TPM_GENERATED_VALUE);
        put_u16(&mut a, st::ATTEST_CERTIFY);
        put_tpm2b(&mut a, &[1, 2]);
        put_tpm2b(&mut a, b"nonce");
        a.extend_from_slice(&7u64.to_be_bytes());
        put_u32(&mut a, 1);
        put_u32(&mut a, 2);
        a.push(1);
        a.extend_from_slice(&9u64.to_be_bytes());
        put_tpm2b(&mut a, &[0, 0x0b, 5]);
        put_tpm2b(&mut a, &[0, 0x0b, 6]);
        let parsed = Attest::parse(&a).unwrap();
        assert_eq!(parsed.extra_data, b"nonce");
        assert_eq!(
            parsed.attested,
            Attested::Certify {
                name: vec![0, 0x0b, 5],
                qualified_name: vec![0, 0x0b, 6]
            }
        );
        for cut in 0..a.len() {
            assert!(Attest::parse(&a[..cut]).is_err());
        }
        let mut extra = a.clone();
        extra.push(0);
        assert!(Attest::parse(&extra).is_err());
    }
}

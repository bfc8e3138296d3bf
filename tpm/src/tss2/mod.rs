//! The `TSS2 PRIVATE KEY` file: a key under a TPM parent as OpenSSL's tpm2
//! provider (tpm2-openssl) and the tpm2-tss engine load it. The PEM body is
//!
//! ```text
//! TPMKey ::= SEQUENCE {
//!     type        OBJECT IDENTIFIER,          -- 2.23.133.10.1.3: loadable key
//!     emptyAuth   [0] EXPLICIT BOOLEAN OPTIONAL,
//!     policy      [1] EXPLICIT SEQUENCE OF TPMPolicy OPTIONAL,
//!     secret      [2] EXPLICIT OCTET STRING OPTIONAL,
//!     authPolicy  [3] EXPLICIT SEQUENCE OF TPMAuthPolicy OPTIONAL,
//!     parent      INTEGER,                    -- 0x40000001: a primary under owner
//!     pubkey      OCTET STRING,               -- TPM2B_PUBLIC, size prefix included
//!     privkey     OCTET STRING }              -- TPM2B_PRIVATE, size prefix included
//! ```
//!
//! Tessera writes loadable keys only, with `emptyAuth` always present (FALSE when
//! the key has an authorization value: tpm2-openssl before 1.3.0 reads an absent
//! `emptyAuth` as TRUE and never asks for the password) and the parent as a
//! positive INTEGER. The parent `0x40000001` means "the primary key the owner
//! hierarchy makes from the standard ECC P-256 storage template", which is exactly
//! Tessera's SRK ([`crate::device::srk_template`]), so a key the agent creates
//! loads in tpm2-openssl and back.
//!
//! The decoder takes untrusted bytes: every length is checked, nothing it does not
//! understand (importable or sealed keys, policies) is accepted, and each refusal
//! says what was wrong.

use crate::device::KeyBlob;
use crate::wire::{PublicArea, Reader, put_tpm2b};

/// The PEM label.
pub const PEM_LABEL: &str = "TSS2 PRIVATE KEY";
/// The owner hierarchy handle, as `parent`: the SRK made from the standard template.
pub const PARENT_OWNER: u32 = 0x4000_0001;

/// 2.23.133.10.1.3 (id-loadablekey), DER contents.
const OID_LOADABLE: &[u8] = &[0x67, 0x81, 0x05, 0x0a, 0x01, 0x03];
/// 2.23.133.10.1.4 (importable key).
const OID_IMPORTABLE: &[u8] = &[0x67, 0x81, 0x05, 0x0a, 0x01, 0x04];
/// 2.23.133.10.1.5 (sealed data).
const OID_SEALED: &[u8] = &[0x67, 0x81, 0x05, 0x0a, 0x01, 0x05];

const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;
const BOOLEAN: u8 = 0x01;
const INTEGER: u8 = 0x02;
const OCTET_STRING: u8 = 0x04;
const CONTEXT_0: u8 = 0xa0;

/// Why bytes are not a TSS2 key Tessera can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("TSS2 PRIVATE KEY: {0}")]
pub struct Tss2Error(pub String);

fn bad<T>(why: impl Into<String>) -> Result<T, Tss2Error> {
    Err(Tss2Error(why.into()))
}

/// A decoded (or to-be-encoded) loadable TSS2 key.
#[derive(Clone, PartialEq, Eq)]
pub struct Tss2Key {
    /// `emptyAuth`: `Some(true)` no password, `Some(false)` a password is needed,
    /// `None` absent (which the draft reads as "a password is needed").
    pub empty_auth: Option<bool>,
    /// The parent handle.
    pub parent: u32,
    /// The key: public area and the TPM's sealed private part.
    pub blob: KeyBlob,
}

impl std::fmt::Debug for Tss2Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tss2Key")
            .field("empty_auth", &self.empty_auth)
            .field("parent", &format_args!("{:#010x}", self.parent))
            .field("blob", &self.blob)
            .finish()
    }
}

fn write_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(contents.len() + 6);
    out.push(tag);
    write_len(&mut out, contents.len());
    out.extend_from_slice(contents);
    out
}

/// A DER INTEGER for a non-negative value: minimal, with a leading zero when the
/// top bit is set (so 0x40000001 is `02 04 40 00 00 01`, 0x81000001 `02 05 00 81 ..`).
fn positive_integer(v: u32) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count().min(3);
    let mut contents = Vec::with_capacity(5);
    if bytes[skip] & 0x80 != 0 {
        contents.push(0);
    }
    contents.extend_from_slice(&bytes[skip..]);
    tlv(INTEGER, &contents)
}

impl Tss2Key {
    /// A key Tessera made under its SRK: parent `0x40000001`; `has_auth` says
    /// whether it has an authorization value (`emptyAuth` FALSE) or not (TRUE).
    pub fn under_owner(blob: KeyBlob, has_auth: bool) -> Self {
        Self {
            empty_auth: Some(!has_auth),
            parent: PARENT_OWNER,
            blob,
        }
    }

    /// The DER encoding.
    pub fn to_der(&self) -> Vec<u8> {
        let mut body = tlv(OID, OID_LOADABLE);
        if let Some(empty) = self.empty_auth {
            let boolean = tlv(BOOLEAN, &[if empty { 0xff } else { 0x00 }]);
            body.extend(tlv(CONTEXT_0, &boolean));
        }
        body.extend(positive_integer(self.parent));
        body.extend(tlv(OCTET_STRING, &self.blob.public.marshal_tpm2b()));
        let mut private = Vec::with_capacity(self.blob.private.len() + 2);
        put_tpm2b(&mut private, &self.blob.private);
        body.extend(tlv(OCTET_STRING, &private));
        tlv(SEQUENCE, &body)
    }

    /// The PEM file.
    pub fn to_pem(&self) -> String {
        tessera_core::pem::encode(PEM_LABEL, &self.to_der())
    }

    /// Reads a PEM file holding one `TSS2 PRIVATE KEY` block (other blocks are
    /// ignored, two keys are refused).
    pub fn from_pem(text: &[u8]) -> Result<Self, Tss2Error> {
        let blocks = pem::parse_many(text)
            .map_err(|e| Tss2Error(format!("the file is not well-formed PEM: {e}")))?;
        let mut keys = blocks.into_iter().filter(|b| b.tag() == PEM_LABEL);
        let Some(block) = keys.next() else {
            return bad(format!("no -----BEGIN {PEM_LABEL}----- block in the file"));
        };
        if keys.next().is_some() {
            return bad("the file holds more than one key");
        }
        Self::from_der(block.contents())
    }

    /// Reads the DER body.
    pub fn from_der(der: &[u8]) -> Result<Self, Tss2Error> {
        let mut outer = Der::new(der);
        let body = outer.expect(SEQUENCE, "TPMKey SEQUENCE")?;
        outer.finish("after the TPMKey SEQUENCE")?;
        let mut d = Der::new(body);
        let oid = d.expect(OID, "type OBJECT IDENTIFIER")?;
        if oid == OID_IMPORTABLE {
            return bad(
                "an importable key (2.23.133.10.1.4) is not supported: only loadable keys (2.23.133.10.1.3)",
            );
        }
        if oid == OID_SEALED {
            return bad(
                "sealed data (2.23.133.10.1.5) is not a key: only loadable keys (2.23.133.10.1.3)",
            );
        }
        if oid != OID_LOADABLE {
            return bad("the type is not the loadable-key OID 2.23.133.10.1.3");
        }
        let mut empty_auth = None;
        if d.peek() == Some(CONTEXT_0) {
            let mut inner = Der::new(d.expect(CONTEXT_0, "emptyAuth [0]")?);
            let b = inner.expect(BOOLEAN, "emptyAuth BOOLEAN")?;
            inner.finish("after emptyAuth")?;
            empty_auth = Some(match b {
                [0x00] => false,
                [0xff] => true,
                _ => return bad("emptyAuth is not a DER BOOLEAN (one byte, 00 or FF)"),
            });
        }
        match d.peek() {
            Some(0xa1) => return bad("policy [1] is not supported (keys with policies)"),
            Some(0xa2) => return bad("secret [2] is not supported (importable keys)"),
            Some(0xa3) => return bad("authPolicy [3] is not supported (keys with policies)"),
            _ => {}
        }
        let parent = d.expect(INTEGER, "parent INTEGER")?;
        let parent = parse_parent(parent)?;
        let public = d.expect(OCTET_STRING, "pubkey OCTET STRING")?;
        let private = d.expect(OCTET_STRING, "privkey OCTET STRING")?;
        d.finish("after privkey")?;

        let mut r = Reader::new(public, "pubkey");
        let area = r
            .tpm2b()
            .map_err(|e| Tss2Error(format!("pubkey is not a TPM2B_PUBLIC: {e}")))?;
        r.finish()
            .map_err(|_| Tss2Error("pubkey: bytes after the TPM2B_PUBLIC".into()))?;
        let public = PublicArea::parse(area)
            .map_err(|e| Tss2Error(format!("pubkey is not a public area Tessera reads: {e}")))?;
        let mut r = Reader::new(private, "privkey");
        let private = r
            .tpm2b()
            .map_err(|e| Tss2Error(format!("privkey is not a TPM2B_PRIVATE: {e}")))?
            .to_vec();
        r.finish()
            .map_err(|_| Tss2Error("privkey: bytes after the TPM2B_PRIVATE".into()))?;
        if private.is_empty() {
            return bad("privkey is empty");
        }
        Ok(Self {
            empty_auth,
            parent,
            blob: KeyBlob { public, private },
        })
    }

    /// Whether loading the key takes a password.
    pub fn needs_auth(&self) -> bool {
        self.empty_auth != Some(true)
    }
}

fn parse_parent(contents: &[u8]) -> Result<u32, Tss2Error> {
    match contents {
        [] => bad("parent INTEGER is empty"),
        [first, ..] if first & 0x80 != 0 => bad("parent is a negative INTEGER"),
        [0, second, ..] if contents.len() > 1 && second & 0x80 == 0 => {
            bad("parent INTEGER is not minimally encoded")
        }
        _ => {
            let digits = if contents[0] == 0 && contents.len() > 1 {
                &contents[1..]
            } else {
                contents
            };
            if digits.len() > 4 {
                return bad("parent does not fit a 32-bit handle");
            }
            Ok(digits
                .iter()
                .fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
        }
    }
}

/// A strict DER reader over untrusted bytes: definite, minimal lengths only.
struct Der<'a> {
    data: &'a [u8],
}

impl<'a> Der<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    fn peek(&self) -> Option<u8> {
        self.data.first().copied()
    }

    fn expect(&mut self, tag: u8, what: &str) -> Result<&'a [u8], Tss2Error> {
        let Some((&got, rest)) = self.data.split_first() else {
            return bad(format!("{what} is missing (the data ends)"));
        };
        if got != tag {
            return bad(format!(
                "{what} expected (tag {tag:#04x}), found tag {got:#04x}"
            ));
        }
        let Some((&first, rest)) = rest.split_first() else {
            return bad(format!("{what}: the length is missing"));
        };
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 {
                return bad(format!("{what}: indefinite length (not DER)"));
            }
            if n > 3 || rest.len() < n {
                return bad(format!(
                    "{what}: length of {n} bytes is cut short or too large"
                ));
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            if rest[0] == 0 || len < 0x80 {
                return bad(format!("{what}: length is not minimally encoded (not DER)"));
            }
            (len, &rest[n..])
        };
        if rest.len() < len {
            return bad(format!(
                "{what} announces {len} bytes, {} remain",
                rest.len()
            ));
        }
        let (contents, rest) = rest.split_at(len);
        self.data = rest;
        Ok(contents)
    }

    fn finish(&self, where_: &str) -> Result<(), Tss2Error> {
        if self.data.is_empty() {
            Ok(())
        } else {
            bad(format!("{} unexpected bytes {where_}", self.data.len()))
        }
    }
}

#[cfg(test)]
mod tests;

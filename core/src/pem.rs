//! PEM, on the `pem` crate: certificates in (bundles, trust anchors, CA files) and
//! certificates and keys out (what the CLIs write), with Unix line endings.

/// Why PEM text gave no certificates.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PemError {
    /// The text is not well-formed PEM (framing, base64).
    #[error("bad PEM: {0}")]
    Malformed(#[source] pem::PemError),
    /// Well-formed, but no `CERTIFICATE` block in it.
    #[error("no PEM CERTIFICATE block found")]
    NoCertificate,
}

/// The DER of every `CERTIFICATE` block, in order; other blocks (a key kept in the
/// same file) are skipped. At least one must be there.
pub fn certificates(text: &[u8]) -> Result<Vec<Vec<u8>>, PemError> {
    let certs: Vec<Vec<u8>> = pem::parse_many(text)
        .map_err(PemError::Malformed)?
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect();
    if certs.is_empty() {
        return Err(PemError::NoCertificate);
    }
    Ok(certs)
}

/// Encodes DER data as PEM with the given label (`CERTIFICATE`, `PRIVATE KEY`).
pub fn encode(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_unix_lines_of_64() {
        let der: Vec<u8> = (0..=255).collect();
        let text = encode("CERTIFICATE", &der);
        assert!(text.starts_with("-----BEGIN CERTIFICATE-----\n"), "{text}");
        assert!(text.ends_with("-----END CERTIFICATE-----\n"), "{text}");
        assert!(!text.contains('\r'));
        assert!(text.lines().all(|l| l.len() <= 64));
        assert_eq!(certificates(text.as_bytes()).unwrap(), vec![der.clone()]);
        // Two certificates with a key between them: the key is skipped.
        let two = format!(
            "{}{}{}",
            encode("CERTIFICATE", &der[..10]),
            encode("PRIVATE KEY", b"k"),
            encode("CERTIFICATE", &der[10..20])
        );
        assert_eq!(
            certificates(two.as_bytes()).unwrap(),
            vec![der[..10].to_vec(), der[10..20].to_vec()]
        );
    }

    #[test]
    fn no_certificate_and_bad_base64_are_errors() {
        assert!(matches!(
            certificates(b"nothing"),
            Err(PemError::NoCertificate)
        ));
        assert!(matches!(certificates(b""), Err(PemError::NoCertificate)));
        let key_only = encode("PRIVATE KEY", b"k");
        assert!(matches!(
            certificates(key_only.as_bytes()),
            Err(PemError::NoCertificate)
        ));
        let bad = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            certificates(bad.as_bytes()),
            Err(PemError::Malformed(_))
        ));
    }
}

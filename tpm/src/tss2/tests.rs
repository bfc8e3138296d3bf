use super::*;
use crate::device::signing_key_template;
use crate::wire::PublicParams;
use tessera_core::key::KeyType;

fn blob() -> KeyBlob {
    let mut public = signing_key_template(KeyType::EcP256);
    if let PublicParams::Ecc { x, y, .. } = &mut public.params {
        *x = vec![0x11; 32];
        *y = vec![0x22; 32];
    }
    // Long enough that the private OCTET STRING needs a long-form length.
    KeyBlob {
        public,
        private: (0..=199).collect(),
    }
}

#[test]
fn round_trips_with_explicit_empty_auth_and_a_positive_parent() {
    for has_auth in [true, false] {
        let key = Tss2Key::under_owner(blob(), has_auth);
        let der = key.to_der();
        assert_eq!(Tss2Key::from_der(&der).unwrap(), key);
        assert_eq!(key.needs_auth(), has_auth);
        let pem = key.to_pem();
        assert!(
            pem.starts_with("-----BEGIN TSS2 PRIVATE KEY-----\n"),
            "{pem}"
        );
        assert_eq!(Tss2Key::from_pem(pem.as_bytes()).unwrap(), key);
    }
    let der = Tss2Key::under_owner(blob(), true).to_der();
    // type, then [0] EXPLICIT BOOLEAN FALSE, then parent 0x40000001.
    let oid = [0x06, 0x06, 0x67, 0x81, 0x05, 0x0a, 0x01, 0x03];
    let empty_auth_false = [0xa0, 0x03, 0x01, 0x01, 0x00];
    let parent = [0x02, 0x04, 0x40, 0x00, 0x00, 0x01];
    let head: Vec<u8> = [&oid[..], &empty_auth_false, &parent].concat();
    let at = der.windows(head.len()).position(|w| w == head).unwrap();
    assert_eq!(at, 4, "right after the SEQUENCE header (30 82 nn nn)");
    // pubkey: an OCTET STRING whose contents are the whole TPM2B_PUBLIC.
    let public = blob().public.marshal_tpm2b();
    let pk_at = at + head.len();
    assert_eq!(der[pk_at], 0x04);
    assert_eq!(&der[pk_at + 2..pk_at + 2 + public.len()], &public[..]);
    assert_eq!(
        u16::from_be_bytes([public[0], public[1]]) as usize,
        public.len() - 2
    );
    // privkey: 200 bytes with their size prefix, long-form length 0x81 0xca.
    let tail = &der[pk_at + 2 + public.len()..];
    assert_eq!(&tail[..5], &[0x04, 0x81, 202, 0x00, 200]);
}

#[test]
fn a_parent_with_the_top_bit_set_gets_a_leading_zero() {
    let mut key = Tss2Key::under_owner(blob(), true);
    key.parent = 0x8100_0001;
    let der = key.to_der();
    let want = [0x02, 0x05, 0x00, 0x81, 0x00, 0x00, 0x01];
    assert!(der.windows(want.len()).any(|w| w == want));
    assert_eq!(Tss2Key::from_der(&der).unwrap().parent, 0x8100_0001);
}

#[test]
fn an_absent_empty_auth_means_a_password_is_needed() {
    let key = Tss2Key {
        empty_auth: None,
        ..Tss2Key::under_owner(blob(), false)
    };
    let read = Tss2Key::from_der(&key.to_der()).unwrap();
    assert_eq!(read.empty_auth, None);
    assert!(read.needs_auth());
}

fn error(der: &[u8]) -> String {
    Tss2Key::from_der(der).unwrap_err().to_string()
}

/// Rebuilds the DER with the SEQUENCE body changed by `f`.
fn with_body(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let der = Tss2Key::under_owner(blob(), true).to_der();
    let mut d = Der::new(&der);
    let mut body = d.expect(SEQUENCE, "x").unwrap().to_vec();
    f(&mut body);
    tlv(SEQUENCE, &body)
}

#[test]
fn other_key_types_and_policies_are_refused_by_name() {
    let importable = with_body(|b| b[7] = 0x04);
    assert!(
        error(&importable).contains("importable"),
        "{}",
        error(&importable)
    );
    let sealed = with_body(|b| b[7] = 0x05);
    assert!(error(&sealed).contains("sealed"), "{}", error(&sealed));
    let other = with_body(|b| b[7] = 0x09);
    assert!(error(&other).contains("2.23.133.10.1.3"));
    for (tag, word) in [(0xa1, "policy"), (0xa2, "secret"), (0xa3, "authPolicy")] {
        let d = with_body(|b| {
            let extra = tlv(tag, &tlv(SEQUENCE, &[]));
            let at = 8 + 5; // after type and emptyAuth
            b.splice(at..at, extra);
        });
        assert!(error(&d).contains(word), "{}", error(&d));
    }
    let negative = with_body(|b| b[15] = 0x80);
    assert!(
        error(&negative).contains("negative"),
        "{}",
        error(&negative)
    );
    let bad_bool = with_body(|b| b[12] = 0x01);
    assert!(error(&bad_bool).contains("BOOLEAN"), "{}", error(&bad_bool));
}

#[test]
fn every_truncation_and_extension_is_refused() {
    let der = Tss2Key::under_owner(blob(), true).to_der();
    for cut in 0..der.len() {
        assert!(Tss2Key::from_der(&der[..cut]).is_err(), "cut at {cut}");
    }
    let mut long = der.clone();
    long.push(0);
    assert!(error(&long).contains("unexpected bytes"));
    // A pubkey whose TPM2B size disagrees with its OCTET STRING.
    let pk = 4 + 8 + 5 + 6;
    assert_eq!(der[pk], 0x04);
    let mut d = der.clone();
    d[pk + 3] ^= 0x01;
    assert!(error(&d).contains("pubkey"), "{}", error(&d));
}

#[test]
fn garbled_input_is_refused_without_panicking() {
    let der = Tss2Key::under_owner(blob(), true).to_der();
    // Every single-byte change: an error or a key, never a panic.
    for i in 0..der.len() {
        for v in [0x00, 0x7f, 0x80, 0x81, 0x82, 0x84, 0xff] {
            let mut d = der.clone();
            d[i] = v;
            let _ = Tss2Key::from_der(&d);
        }
    }
    // Pseudo-random junk and hostile lengths.
    let mut state = 0x1234_5678u32;
    for _ in 0..2000 {
        let n = (state % 300) as usize;
        let junk: Vec<u8> = (0..n)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 24) as u8
            })
            .collect();
        let _ = Tss2Key::from_der(&junk);
    }
    assert!(error(&[0x30, 0x80]).contains("indefinite"));
    assert!(error(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).contains("too large"));
    assert!(error(&[0x30, 0x81, 0x05, 1, 2, 3, 4, 5]).contains("minimally"));
    assert!(error(&[0x30, 0x05]).contains("announces 5 bytes"));
    assert!(error(&[]).contains("missing"));
}

#[test]
fn pem_framing_errors_are_named() {
    let e = Tss2Key::from_pem(b"not pem").unwrap_err().to_string();
    assert!(e.contains("no -----BEGIN TSS2 PRIVATE KEY-----"), "{e}");
    let cert = tessera_core::pem::encode("CERTIFICATE", b"x");
    let e = Tss2Key::from_pem(cert.as_bytes()).unwrap_err().to_string();
    assert!(e.contains("no -----BEGIN"), "{e}");
    let one = Tss2Key::under_owner(blob(), true).to_pem();
    let two = format!("{one}{one}");
    let e = Tss2Key::from_pem(two.as_bytes()).unwrap_err().to_string();
    assert!(e.contains("more than one"), "{e}");
    let broken = one.replace('A', "*");
    assert!(Tss2Key::from_pem(broken.as_bytes()).is_err());
}

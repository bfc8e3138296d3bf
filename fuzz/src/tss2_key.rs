//! `tss2_key`: the TSS2 PRIVATE KEY file as the agent's workloads, the
//! `tessera-tpm-rustls` crate and tessera-tpm read it (`tessera_tpm::tss2`). The
//! first byte picks DER (even) or PEM (odd), the rest is the file.
//!
//! Checked: nothing panics; a key that decodes is canonical (encoded again it is
//! exactly the input, so no two files mean the same key) and decodes again to the
//! same value.

use tessera_tpm::tss2::Tss2Key;

pub fn run(data: &[u8]) {
    let Some((mode, bytes)) = crate::split_mode(data) else {
        return;
    };
    let key = if mode % 2 == 0 {
        match Tss2Key::from_der(bytes) {
            Ok(k) => {
                assert_eq!(k.to_der(), bytes, "a decoded TSS2 key is not canonical");
                k
            }
            Err(_) => return,
        }
    } else {
        match Tss2Key::from_pem(bytes) {
            Ok(k) => k,
            Err(_) => return,
        }
    };
    let again = Tss2Key::from_der(&key.to_der()).expect("an encoded key decodes");
    assert_eq!(again, key, "TSS2 key round trip");
    let pem = Tss2Key::from_pem(key.to_pem().as_bytes()).expect("its PEM decodes");
    assert_eq!(pem, key, "TSS2 PEM round trip");
}

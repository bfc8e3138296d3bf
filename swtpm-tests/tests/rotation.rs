//! Rotation with short lifetimes: an open FetchX509SVID stream receives each new SVID
//! before the old one expires, and across a CA rotation every SVID the workload holds
//! stays valid against the bundle it was sent with (and against every later bundle
//! until it expires).

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::time::{Duration, Instant, SystemTime};

use tessera_core::{Bundle, TrustDomain};
use tessera_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tessera_swtpm_tests::{Agent, Server, my_uid, test_dir};

fn split(mut der: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !der.is_empty() {
        let (rest, _) = x509_parser_len(der);
        out.push(der[..der.len() - rest.len()].to_vec());
        der = rest;
    }
    out
}

/// Splits one DER SEQUENCE off the front (certificates are concatenated on the wire).
fn x509_parser_len(der: &[u8]) -> (&[u8], ()) {
    assert_eq!(der[0], 0x30, "not a DER sequence");
    let (len, hdr) = if der[1] < 0x80 {
        (der[1] as usize, 2)
    } else {
        let n = (der[1] & 0x7f) as usize;
        (
            der[2..2 + n]
                .iter()
                .fold(0usize, |a, b| (a << 8) | *b as usize),
            2 + n,
        )
    };
    (&der[hdr + len..], ())
}

struct Received {
    at: SystemTime,
    chain: Vec<Vec<u8>>,
    bundle: Bundle,
    serial: String,
    not_after: i64,
    issuer: String,
}

#[test]
fn svids_and_cas_rotate_without_a_gap() {
    let dir = test_dir("rotation");
    let server = Server::start(
        &dir.path().join("server"),
        "ca_ttl = \"24s\"\nx509_svid_ttl = \"4s\"\njwt_svid_ttl = \"4s\"\nbundle_refresh_hint = \"1s\"",
    );
    let token = server.token(Some("spiffe://example.org/node"), None);
    server.entry(
        "spiffe://example.org/workload",
        "spiffe://example.org/node",
        &[&format!("unix:uid:{}", my_uid())],
        &[],
    );
    let agent = Agent::start(
        &dir.path().join("agent"),
        &server,
        Some(&token),
        "sync_interval = \"300ms\"",
    );
    let td = TrustDomain::new("example.org").unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let received: Vec<Received> = rt.block_on(async {
        let ch = tessera_proto::unix_channel(&agent.socket).await.unwrap();
        let mut client =
            SpiffeWorkloadApiClient::with_interceptor(ch, |mut r: tonic::Request<()>| {
                r.metadata_mut().insert(
                    "workload.spiffe.io",
                    tonic::metadata::MetadataValue::from_static("true"),
                );
                Ok(r)
            });
        // Wait for the entry to reach the agent.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut stream = loop {
            match client
                .fetch_x509svid(tessera_proto::workload::X509svidRequest {})
                .await
            {
                Ok(s) => break s.into_inner(),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("no SVID: {e}"),
            }
        };
        let mut out = Vec::new();
        // Long enough for the CA prepared at 12 s to become active at 20 s, and beyond.
        let end = Instant::now() + Duration::from_secs(30);
        while let Ok(Some(msg)) = tokio::time::timeout_at(end.into(), stream.message())
            .await
            .map(|r| r.unwrap())
        {
            let at = SystemTime::now();
            let svid = &msg.svids[0];
            let chain = split(&svid.x509_svid);
            let bundle = Bundle::with_x509(td.clone(), split(&svid.bundle));
            let info = tessera_core::x509::cert_info(&chain[0]).unwrap();
            out.push(Received {
                at,
                chain,
                bundle,
                serial: info.serial_hex,
                not_after: info.not_after,
                issuer: info.issuer,
            });
        }
        out
    });

    let serials: std::collections::BTreeSet<&str> =
        received.iter().map(|r| r.serial.as_str()).collect();
    assert!(
        serials.len() >= 6,
        "only {} SVIDs in 30 s:\n{}",
        serials.len(),
        agent.log()
    );
    assert!(
        received.len() >= 6,
        "only {} updates in 30 s:\n{}",
        received.len(),
        agent.log()
    );
    for (i, r) in received.iter().enumerate() {
        // Each SVID is valid against the bundle it came with, when it came.
        tessera_core::x509::verify_svid_chain(&r.chain, &r.bundle, r.at).unwrap_or_else(|e| {
            panic!("update {i}: SVID does not verify against its own bundle: {e}")
        });
        if i > 0 {
            let prev = &received[i - 1];
            // An update carries a new SVID or a new bundle (full state every time).
            let new_svid = prev.serial != r.serial;
            let new_bundle = prev.bundle.x509_authorities() != r.bundle.x509_authorities();
            assert!(new_svid || new_bundle, "update {i} changes nothing");
            let at = tessera_core::x509::unix_seconds(r.at);
            // A new SVID arrives before the old one expires.
            assert!(
                !new_svid || at < prev.not_after,
                "update {i} arrived at {at}, after the previous SVID expired at {}",
                prev.not_after
            );
            // The SVID held until now is still valid against the new bundle.
            tessera_core::x509::verify_svid_chain(&prev.chain, &r.bundle, r.at)
                .unwrap_or_else(|e| panic!("update {i}: the SVID held before no longer verifies against the new bundle: {e}"));
        }
    }
    let issuers: std::collections::BTreeSet<&str> =
        received.iter().map(|r| r.issuer.as_str()).collect();
    assert!(
        issuers.len() >= 2,
        "the CA did not rotate within the test: {issuers:?}\n{}",
        server.log()
    );
    assert!(
        server.log().contains("X.509 CA rotated"),
        "{}",
        server.log()
    );
}

//! The agent API's authorization, seen from a client holding a real agent's SVID and
//! key: entries of another agent, CSRs naming another SPIFFE ID, evicted and banned
//! agents.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::sync::Arc;
use std::time::Duration;

use tessera_agent::client::{Trust, channel, node_client};
use tessera_core::key::{Key, KeyManager, KeyType, SoftwareKey};
use tessera_core::tls::{SharedBundle, SharedIdentity};
use tessera_core::{Bundle, SpiffeId, TrustDomain};
use tessera_process::DiskKeyManager;
use tessera_proto::agent as pb;
use tessera_swtpm_tests::{Agent, Server, test_dir, wait_until};

/// A node API client that authenticates with the agent's own SVID and key.
fn as_agent(
    agent: &Agent,
    server: &Server,
) -> tessera_proto::agent::node_client::NodeClient<tonic::transport::Channel> {
    let text = std::fs::read_to_string(agent.dir.join("data").join("agent.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    use base64::Engine;
    let chain: Vec<Vec<u8>> = v["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            base64::engine::general_purpose::STANDARD
                .decode(c.as_str().unwrap())
                .unwrap()
        })
        .collect();
    let km = DiskKeyManager::open(&agent.dir.join("data").join("keys")).unwrap();
    let key = km.get_key(v["key_id"].as_str().unwrap()).unwrap().unwrap();
    let identity = SharedIdentity::new();
    identity.set(&chain, key);
    let td = TrustDomain::new("example.org").unwrap();
    let roots =
        tessera_core::x509::pem_certs(server.cli_ok(&["bundle", "show"]).as_bytes()).unwrap();
    let bundle = SharedBundle::new(Bundle::with_x509(td.clone(), roots));
    let server_id = td.id("/spire/server").unwrap();
    node_client(channel(
        vec![server.address()],
        server_id,
        Trust::Bundle(bundle),
        Some(identity),
    ))
}

fn csr(san: Option<&str>) -> Vec<u8> {
    match san {
        None => {
            let k: Arc<dyn Key> = Arc::new(SoftwareKey::generate(KeyType::EcP256).unwrap());
            tessera_core::x509::build_csr(&k).unwrap()
        }
        Some(uri) => {
            let kp = rcgen_key();
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            p.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
            p.serialize_request(&kp).unwrap().der().to_vec()
        }
    }
}

fn rcgen_key() -> rcgen::KeyPair {
    rcgen::KeyPair::generate().unwrap()
}

#[test]
fn agents_get_only_what_they_are_authorized_for() {
    let dir = test_dir("authz");
    let server = Server::start(&dir.path().join("server"), "");
    let ta = server.token(None, None);
    let tb = server.token(None, None);
    let a_id = format!("spiffe://example.org/spire/agent/join_token/{ta}");
    let b_id = format!("spiffe://example.org/spire/agent/join_token/{tb}");
    let ea = server.entry(
        "spiffe://example.org/a-workload",
        &a_id,
        &["unix:uid:1001"],
        &[],
    );
    let eb = server.entry(
        "spiffe://example.org/b-workload",
        &b_id,
        &["unix:uid:1002"],
        &[],
    );
    let mut agent_a = Agent::start(&dir.path().join("a"), &server, Some(&ta), "");
    let agent_b = Agent::start(&dir.path().join("b"), &server, Some(&tb), "");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut a = as_agent(&agent_a, &server);
        let resp = a
            .batch_new_x509_svid(pb::BatchNewX509SvidRequest {
                requests: vec![
                    pb::SvidRequest {
                        entry_id: ea.clone(),
                        csr: csr(None),
                    },
                    pb::SvidRequest {
                        entry_id: eb.clone(),
                        csr: csr(None),
                    },
                    pb::SvidRequest {
                        entry_id: ea.clone(),
                        csr: csr(Some("spiffe://example.org/admin")),
                    },
                    pb::SvidRequest {
                        entry_id: ea.clone(),
                        csr: b"not a csr".to_vec(),
                    },
                ],
            })
            .await
            .unwrap()
            .into_inner();
        let r = &resp.results;
        assert_eq!(r[0].status.as_ref().unwrap().code, 0, "{:?}", r[0].status);
        let id = tessera_core::x509::validate_leaf(&r[0].cert_chain[0]).unwrap();
        assert_eq!(id.to_string(), "spiffe://example.org/a-workload");
        let s1 = r[1].status.as_ref().unwrap();
        assert_eq!(s1.code, tonic::Code::PermissionDenied as i32);
        assert!(s1.message.contains("not authorized"), "{}", s1.message);
        assert!(r[1].cert_chain.is_empty());
        let s2 = r[2].status.as_ref().unwrap();
        assert_eq!(s2.code, tonic::Code::InvalidArgument as i32);
        assert!(
            s2.message.contains("spiffe://example.org/admin"),
            "{}",
            s2.message
        );
        assert!(r[2].cert_chain.is_empty());
        let s3 = r[3].status.as_ref().unwrap();
        assert_eq!(s3.code, tonic::Code::InvalidArgument as i32);

        // JWT-SVIDs follow the same rule.
        let err = a
            .new_jwt_svid(pb::NewJwtSvidRequest {
                entry_id: eb.clone(),
                audience: vec!["x".into()],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);

        // Sync hands out A's entry only.
        let sync = a
            .sync_entries(pb::SyncRequest::default())
            .await
            .unwrap()
            .into_inner();
        let ids: Vec<&str> = sync.authorized.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, vec![ea.as_str()]);
    });
    assert!(server.log().contains("not authorized"), "{}", server.log());

    // Evicted: the agent's calls are refused and it says so in its health.
    server.cli_ok(&["agent", "evict", "--spiffe-id", &a_id]);
    rt.block_on(async {
        let err = as_agent(&agent_a, &server)
            .sync_entries(pb::SyncRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(err.message().contains("not attested"), "{}", err.message());
    });
    assert!(
        wait_until(Duration::from_secs(15), || {
            let h = agent_a.cli(&["healthcheck", "--verbose"]);
            !h.status.success() && String::from_utf8_lossy(&h.stderr).contains("not attested")
        }),
        "agent A stayed healthy after eviction:\n{}",
        agent_a.log()
    );
    agent_a.stop();

    // Banned: refused as well, and listed as banned.
    server.cli_ok(&["agent", "ban", "--spiffe-id", &b_id]);
    rt.block_on(async {
        let err = as_agent(&agent_b, &server)
            .sync_entries(pb::SyncRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(err.message().contains("banned"), "{}", err.message());
    });
    let list: serde_json::Value =
        serde_json::from_str(&server.cli_ok(&["agent", "list", "--output", "json"])).unwrap();
    let agents = list.as_array().unwrap();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0]["spiffe_id"], b_id.as_str());
    assert_eq!(agents[0]["banned"], true);
    // Evicting or banning an unknown agent is a clear NotFound.
    let o = server.cli(&[
        "agent",
        "evict",
        "--spiffe-id",
        "spiffe://example.org/spire/agent/join_token/nope",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not found"));
    let _ = SpiffeId::new(&a_id).unwrap();
}

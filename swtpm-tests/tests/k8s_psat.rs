//! `k8s_psat` end to end: real `tessera-server` and `tessera-agent` processes, and
//! fakes of Kubernetes API servers (TokenReview, Pod, Node, the service account
//! issuer's discovery document and keys, over HTTPS with a test CA) in the shapes of
//! the Kubernetes API reference. One cluster is checked through TokenReview with a
//! bearer token, one offline against its issuer's keys found by discovery, one through
//! TokenReview with a client certificate. Agents get their IDs and selectors, a
//! workload under a node alias entry on a `k8s_psat` selector gets its SVID, and each
//! refusal comes with its reason in the agent's and the server's logs and writes no
//! agent record.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tessera_swtpm_tests::cloud::k8s::{ApiServer, Mint, Node, Pod};
use tessera_swtpm_tests::cloud::{
    agent_count, assert_refused, attest_raw, entries, selectors_of, workload_id,
};
use tessera_swtpm_tests::{Agent, Server, free_port, test_dir, wait_until};

const NODE_A: &str = "0f1e2d3c-4b5a-4697-8877-665544332211";
const NODE_B: &str = "1a2b3c4d-5e6f-4a8b-9c0d-112233445566";

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect()
}

fn node(name: &str, uid: &str, zone: &str) -> Node {
    Node {
        name: name.into(),
        uid: uid.into(),
        labels: labels(&[
            ("topology.kubernetes.io/zone", zone),
            ("kubernetes.io/hostname", name),
        ]),
    }
}

fn pod(ns: &str, name: &str, uid: &str, sa: &str, node: &str) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        uid: uid.into(),
        service_account: sa.into(),
        node: node.into(),
        host_ip: "10.0.0.7".into(),
        labels: labels(&[("app", "spire-agent"), ("pod-template-hash", "6d4b9")]),
    }
}

/// A token file in `dir` holding `token`.
fn token_file(dir: &Path, name: &str, token: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(format!("{name}.token"));
    std::fs::write(&p, token).unwrap();
    p
}

fn agent_config(cluster: &str, token: &Path) -> String {
    format!(
        "[node_attestor.k8s_psat]\ncluster = \"{cluster}\"\ntoken_path = {:?}\n",
        token.display().to_string()
    )
}

fn path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

#[test]
fn k8s_psat_agents_attest_through_token_review_and_offline_and_bad_tokens_are_refused() {
    let dir = test_dir("k8s-psat");
    let d = dir.path();

    // "prod": TokenReview with a bearer token.
    let prod = ApiServer::start(&d.join("prod-api"), false);
    prod.add_node(node("node-a", NODE_A, "z1"));
    prod.add_node(node("node-b", NODE_B, "z2"));
    let agent_pod = pod(
        "spire",
        "spire-agent-7x2kq",
        "5a1c1f0e-3b7d-4c1e-9f00-00000000a001",
        "spire-agent",
        "node-a",
    );
    prod.add_pod(agent_pod.clone());
    let reviewer = token_file(
        &d.join("secrets"),
        "reviewer",
        prod.reviewer_token.as_deref().unwrap(),
    );

    // "edge": offline, the keys found through the issuer's discovery document.
    let edge = ApiServer::start(&d.join("edge-api"), false);
    edge.add_node(node("edge-1", "7e6d5c4b-3a29-4181-8f7e-6d5c4b3a2918", "e1"));
    let edge_pod = pod(
        "spire",
        "spire-agent-q9w8e",
        "9b8a7c6d-5e4f-4031-a2b1-c0d9e8f7a6b5",
        "spire-agent",
        "edge-1",
    );
    edge.add_pod(edge_pod.clone());

    // "lab": TokenReview with a client certificate.
    let lab = ApiServer::start(&d.join("lab-api"), true);
    lab.add_node(node("lab-1", "2c3d4e5f-6a7b-4c8d-9e0f-a1b2c3d4e5f6", "l1"));
    let lab_pod = pod(
        "spire",
        "spire-agent-l4b00",
        "3d4e5f6a-7b8c-4d9e-8f0a-b1c2d3e4f5a6",
        "spire-agent",
        "lab-1",
    );
    lab.add_pod(lab_pod.clone());
    let (client_cert, client_key) = lab.tls.client(&d.join("lab-client"), "tessera-server");

    // "gone": an API server nobody answers for.
    let gone = format!("https://127.0.0.1:{}", free_port());

    let server = Server::start(
        &d.join("server"),
        &format!(
            // Many refusals from one address in a row: no attestation rate limit.
            "[limits]\nattestation_rate = 0\n\
             [node_attestors.k8s_psat.clusters.prod]\n\
             service_account_allow_list = [\"spire:spire-agent\"]\n\
             allowed_node_label_keys = [\"topology.kubernetes.io/zone\"]\n\
             allowed_pod_label_keys = [\"app\"]\n\
             [node_attestors.k8s_psat.clusters.prod.api]\n\
             server = \"{}\"\nca_file = {}\ntoken_file = {}\n\
             [node_attestors.k8s_psat.clusters.edge]\n\
             service_account_allow_list = [\"spire:spire-agent\"]\n\
             [node_attestors.k8s_psat.clusters.edge.offline]\n\
             issuer = \"{}\"\nca_bundle = {}\n\
             [node_attestors.k8s_psat.clusters.lab]\n\
             service_account_allow_list = [\"spire:spire-agent\"]\n\
             [node_attestors.k8s_psat.clusters.lab.api]\n\
             server = \"{}\"\nca_file = {}\nclient_cert_file = {}\nclient_key_file = {}\n\
             [node_attestors.k8s_psat.clusters.gone]\n\
             service_account_allow_list = [\"spire:spire-agent\"]\n\
             [node_attestors.k8s_psat.clusters.gone.api]\n\
             server = \"{gone}\"\nca_file = {}\ntoken_file = {}\ntimeout = \"2s\"\n",
            prod.url,
            path(&prod.tls.ca),
            path(&reviewer),
            edge.url,
            path(&edge.tls.ca),
            lab.url,
            path(&lab.tls.ca),
            path(&client_cert),
            path(&client_key),
            path(&prod.tls.ca),
            path(&reviewer),
        ),
    );
    // The offline cluster's keys were found through discovery at start-up.
    let fetched: Vec<String> = edge
        .requests()
        .iter()
        .map(|r| r.path().to_owned())
        .collect();
    assert_eq!(
        fetched,
        ["/.well-known/openid-configuration", "/openid/v1/jwks"],
        "the server did not load the edge issuer's keys through discovery"
    );

    // A workload on any node of "prod" in zone z1 gets its SVID through a node alias.
    entries(
        &server,
        "spiffe://example.org/nodes/prod-z1",
        "k8s_psat:agent_node_label:topology.kubernetes.io/zone:z1",
    );

    // prod: TokenReview, then the pod and its node.
    let token = token_file(
        &d.join("secrets"),
        "prod",
        &prod.mint(&agent_pod, &Mint::default()),
    );
    let mut agent = Agent::start(
        &d.join("agent-prod"),
        &server,
        None,
        &agent_config("prod", &token),
    );
    let id = format!("spiffe://example.org/spire/agent/k8s_psat/prod/{NODE_A}");
    assert_eq!(agent.spiffe_id(), id);
    assert_eq!(workload_id(&agent, d), "spiffe://example.org/app");
    let mut sel = selectors_of(&server, &id);
    sel.sort();
    let mut want = vec![
        "k8s_psat:cluster:prod".to_owned(),
        "k8s_psat:agent_ns:spire".into(),
        "k8s_psat:agent_sa:spire-agent".into(),
        "k8s_psat:agent_pod_name:spire-agent-7x2kq".into(),
        format!("k8s_psat:agent_pod_uid:{}", agent_pod.uid),
        "k8s_psat:agent_node_ip:10.0.0.7".into(),
        "k8s_psat:agent_node_name:node-a".into(),
        format!("k8s_psat:agent_node_uid:{NODE_A}"),
        "k8s_psat:agent_node_label:topology.kubernetes.io/zone:z1".into(),
        "k8s_psat:agent_pod_label:app:spire-agent".into(),
    ];
    want.sort();
    assert_eq!(sel, want, "labels not allowed must not become selectors");
    let reqs = prod.requests();
    let review = reqs
        .iter()
        .find(|r| r.path() == "/apis/authentication.k8s.io/v1/tokenreviews")
        .expect("a TokenReview");
    assert_eq!(review.method, "POST");
    let body: serde_json::Value = serde_json::from_slice(&review.body).unwrap();
    assert_eq!(
        body["spec"]["audiences"],
        serde_json::json!(["spire-server"])
    );
    assert!(
        reqs.iter()
            .any(|r| r.path() == "/api/v1/namespaces/spire/pods/spire-agent-7x2kq")
    );
    assert!(reqs.iter().any(|r| r.path() == "/api/v1/nodes/node-a"));
    agent.stop();

    // psat agents may attest again: a fresh token from the same pod, the same ID.
    std::fs::write(&token, prod.mint(&agent_pod, &Mint::default())).unwrap();
    let agent2 = Agent::start(
        &d.join("agent-prod-again"),
        &server,
        None,
        &agent_config("prod", &token),
    );
    assert_eq!(agent2.spiffe_id(), id);
    assert_eq!(agent_count(&server), 1);

    let refuse = |name: &str, cluster: &str, token: String, reason: &str| {
        let t = token_file(&d.join("secrets"), name, &token);
        let mut a = Agent::configure(&d.join(name), &server, &agent_config(cluster, &t));
        assert_refused(&[], &server, &mut a, reason);
    };
    refuse(
        "audience",
        "prod",
        prod.mint(
            &agent_pod,
            &Mint {
                audience: vec!["vault".into()],
                ..Mint::default()
            },
        ),
        "the token is for audiences [\"vault\"], none of [\"spire-server\"]",
    );
    refuse(
        "expired",
        "prod",
        prod.mint(
            &agent_pod,
            &Mint {
                expires_in: -600,
                ..Mint::default()
            },
        ),
        "the token has expired",
    );
    refuse(
        "forged",
        "prod",
        prod.forge(&agent_pod),
        "the API server's TokenReview did not authenticate the token",
    );
    refuse(
        "other-node",
        "prod",
        prod.mint(
            &agent_pod,
            &Mint {
                node_override: Some(("node-b".into(), NODE_B.into())),
                ..Mint::default()
            },
        ),
        "the token is bound to node \"node-b\", but pod spire/spire-agent-7x2kq runs on node \"node-a\"",
    );
    let builder = pod(
        "ci",
        "builder-5f7",
        "6f7a8b9c-0d1e-4f2a-8b3c-4d5e6f7a8b9c",
        "builder",
        "node-a",
    );
    prod.add_pod(builder.clone());
    refuse(
        "service-account",
        "prod",
        prod.mint(&builder, &Mint::default()),
        "service account \"ci:builder\" is not in node_attestors.k8s_psat.clusters.prod.service_account_allow_list",
    );
    refuse(
        "unbound",
        "prod",
        prod.mint(
            &agent_pod,
            &Mint {
                pod_binding: false,
                node_binding: false,
                ..Mint::default()
            },
        ),
        "the token is not bound to a pod",
    );
    // The pod was deleted and created again under the same name: a new UID.
    let mut replaced = agent_pod.clone();
    replaced.uid = "5a1c1f0e-3b7d-4c1e-9f00-00000000a002".into();
    let stale = prod.mint(&agent_pod, &Mint::default());
    prod.add_pod(replaced);
    refuse(
        "replaced-pod",
        "prod",
        stale,
        "the pod spire/spire-agent-7x2kq this token is bound to no longer exists",
    );
    prod.add_pod(agent_pod.clone());
    refuse(
        "unknown-cluster",
        "staging",
        prod.mint(&agent_pod, &Mint::default()),
        "cluster \"staging\" is not in node_attestors.k8s_psat.clusters",
    );
    let e = attest_raw(&server, "k8s_psat", b"{\"cluster\": 7}".to_vec(), |_| {
        Vec::new()
    })
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(
        e.message()
            .contains("malformed attestation data: k8s_psat: payload"),
        "{e}"
    );

    // An API server that cannot be reached: Unavailable, and the agent keeps trying.
    let t = token_file(
        &d.join("secrets"),
        "gone",
        &prod.mint(&agent_pod, &Mint::default()),
    );
    let mut waiting = Agent::configure(&d.join("agent-gone"), &server, &agent_config("gone", &t));
    waiting.spawn(None);
    assert!(
        wait_until(Duration::from_secs(30), || {
            let log = waiting.log();
            log.contains("will retry")
                && log.contains("the API server cannot be asked for a TokenReview")
        }),
        "{}",
        waiting.log()
    );
    assert!(waiting.exited().is_none(), "{}", waiting.log());
    waiting.stop();

    // edge: offline, against the issuer's keys.
    let token = token_file(
        &d.join("secrets"),
        "edge",
        &edge.mint(&edge_pod, &Mint::default()),
    );
    let edge_agent = Agent::start(
        &d.join("agent-edge"),
        &server,
        None,
        &agent_config("edge", &token),
    );
    let edge_id =
        "spiffe://example.org/spire/agent/k8s_psat/edge/7e6d5c4b-3a29-4181-8f7e-6d5c4b3a2918";
    assert_eq!(edge_agent.spiffe_id(), edge_id);
    let sel = selectors_of(&server, edge_id);
    assert!(
        sel.contains(&"k8s_psat:agent_node_name:edge-1".to_owned()),
        "{sel:?}"
    );
    assert!(
        !sel.iter()
            .any(|s| s.starts_with("k8s_psat:agent_node_ip:") || s.contains("label")),
        "offline checks read no Pod or Node: {sel:?}"
    );
    assert!(
        !edge.requests().iter().any(|r| r.path().starts_with("/api")),
        "the offline cluster's API was called"
    );
    refuse(
        "edge-audience",
        "edge",
        edge.mint(
            &edge_pod,
            &Mint {
                audience: vec!["vault".into()],
                ..Mint::default()
            },
        ),
        "for audience [\"vault\"], not [\"spire-server\"]",
    );
    refuse(
        "edge-expired",
        "edge",
        edge.mint(
            &edge_pod,
            &Mint {
                expires_in: -600,
                ..Mint::default()
            },
        ),
        "the identity token expired at",
    );
    refuse(
        "edge-forged",
        "edge",
        edge.forge(&edge_pod),
        "signature does not verify",
    );
    refuse(
        "edge-other-issuer",
        "edge",
        prod.mint(&agent_pod, &Mint::default()),
        "signature does not verify",
    );
    refuse(
        "edge-no-node",
        "edge",
        edge.mint(
            &edge_pod,
            &Mint {
                node_binding: false,
                ..Mint::default()
            },
        ),
        "the token names no node",
    );

    // lab: TokenReview with a client certificate.
    let token = token_file(
        &d.join("secrets"),
        "lab",
        &lab.mint(&lab_pod, &Mint::default()),
    );
    let lab_agent = Agent::start(
        &d.join("agent-lab"),
        &server,
        None,
        &agent_config("lab", &token),
    );
    assert_eq!(
        lab_agent.spiffe_id(),
        "spiffe://example.org/spire/agent/k8s_psat/lab/2c3d4e5f-6a7b-4c8d-9e0f-a1b2c3d4e5f6"
    );
    assert!(
        lab.requests()
            .iter()
            .all(|r| r.header("authorization").is_none())
    );
}

#[test]
fn k8s_psat_bad_settings_stop_the_server_with_the_setting_named() {
    let dir = test_dir("k8s-psat-config");
    for (name, extra, want) in [
        (
            "no-mode",
            "[node_attestors.k8s_psat.clusters.prod]\nservice_account_allow_list = [\"spire:spire-agent\"]\n",
            "node_attestors.k8s_psat.clusters.prod: set how tokens are checked",
        ),
        (
            "no-key-file",
            "[node_attestors.k8s_psat.clusters.edge]\nservice_account_allow_list = [\"spire:spire-agent\"]\n\
             [node_attestors.k8s_psat.clusters.edge.offline]\nissuer = \"https://k8s.example\"\n\
             jwks_file = \"/nonexistent/jwks.json\"\n",
            "node_attestors.k8s_psat.clusters.edge.offline.jwks_file /nonexistent/jwks.json",
        ),
    ] {
        let mut s = Server::configure(&dir.path().join(name), extra);
        let status = s.try_start(Duration::from_secs(30));
        assert!(
            status.is_some_and(|st| !st.success()),
            "{name}: {}",
            s.log()
        );
        assert!(
            s.log().contains(want),
            "{name}: want {want:?} in:\n{}",
            s.log()
        );
    }
}

//! Both modes against tokens minted in the projected token's claim layout: offline
//! against a key set file, api against a small plain-HTTP stand-in for the API
//! server (the HTTPS one, with its CA and credentials, is in the end-to-end tests).

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tessera_core::clock::ManualClock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::attestor::jwt::testing::Issuer;
use crate::attestor::{NodeAttestor, Step};

const NOW: u64 = 1_800_000_000;
const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const POD_UID: &str = "5a1c1f0e-3b7d-4c1e-9f00-000000000001";
const NODE_UID: &str = "8d3e2f1a-0000-4000-8000-0000000000aa";

/// The claims of a token projected into pod `spire-agent-x` of `spire` on `node-a`.
fn claims() -> Value {
    json!({
        "aud": ["spire-server"],
        "exp": NOW + 3600, "iat": NOW - 10, "nbf": NOW - 10,
        "iss": ISSUER,
        "jti": "2f1e0c5a-6b3d-4b8e-a1f2-3c4d5e6f7a8b",
        "sub": "system:serviceaccount:spire:spire-agent",
        "kubernetes.io": {
            "namespace": "spire",
            "node": {"name": "node-a", "uid": NODE_UID},
            "pod": {"name": "spire-agent-x", "uid": POD_UID},
            "serviceaccount": {"name": "spire-agent", "uid": "c0ffee00-0000-4000-8000-000000000001"},
        },
    })
}

fn cluster_config() -> ClusterConfig {
    ClusterConfig {
        service_account_allow_list: vec!["spire:spire-agent".into()],
        audience: default_audience(),
        allowed_node_label_keys: vec!["topology.kubernetes.io/zone".into()],
        allowed_pod_label_keys: vec!["app".into()],
        use_pod_uid_for_agent_id: false,
        api: None,
        offline: None,
    }
}

struct Offline {
    _dir: tempfile::TempDir,
    issuer: Issuer,
    attestor: K8sPsat,
}

async fn offline(pod_uid_id: bool) -> Offline {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::new("sa-key-1");
    let path = dir.path().join("jwks.json");
    Issuer::write_jwks(&path, &[&issuer]);
    let mut c = cluster_config();
    c.use_pod_uid_for_agent_id = pod_uid_id;
    c.offline = Some(OfflineConfig {
        issuer: ISSUER.into(),
        jwks_file: Some(path),
        discovery_url: None,
        ca_bundle: None,
        refresh: jwt::DEFAULT_REFRESH,
    });
    let cfg = K8sPsatConfig {
        clusters: [("edge".to_owned(), c)].into(),
    };
    let attestor = K8sPsat::from_config(&cfg, ManualClock::at_unix(NOW)).unwrap();
    attestor.check().load_keys().await.unwrap();
    Offline {
        _dir: dir,
        issuer,
        attestor,
    }
}

async fn attest(a: &K8sPsat, cluster: &str, token: &str) -> Result<Attested, AttestError> {
    let payload = serde_json::to_vec(&Payload {
        cluster: cluster.into(),
        token: token.into(),
    })
    .unwrap();
    match a.session().step(payload).await? {
        Step::Attested(done) => Ok(done),
        Step::Challenge(_) => panic!("no challenge expected"),
    }
}

fn refusal(r: Result<Attested, AttestError>) -> String {
    match r {
        Err(AttestError::Refused(m)) => m,
        other => panic!("not refused: {other:?}"),
    }
}

fn strings(a: &Attested) -> Vec<String> {
    a.selectors.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn offline_a_bound_token_gives_the_node_id_and_selectors() {
    let s = offline(false).await;
    let done = attest(&s.attestor, "edge", &s.issuer.sign(&claims()))
        .await
        .unwrap();
    assert_eq!(done.agent_path, format!("k8s_psat/edge/{NODE_UID}"));
    assert!(done.can_reattest);
    assert_eq!(
        strings(&done),
        [
            "k8s_psat:cluster:edge".to_owned(),
            "k8s_psat:agent_ns:spire".into(),
            "k8s_psat:agent_sa:spire-agent".into(),
            "k8s_psat:agent_pod_name:spire-agent-x".into(),
            format!("k8s_psat:agent_pod_uid:{POD_UID}"),
            "k8s_psat:agent_node_name:node-a".into(),
            format!("k8s_psat:agent_node_uid:{NODE_UID}"),
        ]
    );
    let by_pod = offline(true).await;
    let done = attest(&by_pod.attestor, "edge", &by_pod.issuer.sign(&claims()))
        .await
        .unwrap();
    assert_eq!(done.agent_path, format!("k8s_psat/edge/pod/{POD_UID}"));
}

#[tokio::test]
async fn offline_refusals_name_what_was_wrong() {
    let s = offline(false).await;
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims();
        f(&mut c);
        s.issuer.sign(&c)
    };
    let cases: Vec<(String, &str)> = vec![
        (
            with(&|c| c["aud"] = json!(["vault"])),
            "for audience [\"vault\"], not [\"spire-server\"]",
        ),
        (
            with(&|c| c["exp"] = json!(NOW - 120)),
            "the identity token expired at",
        ),
        (with(&|c| c["nbf"] = json!(NOW + 600)), "not valid before"),
        (
            with(&|c| c["iat"] = json!(NOW + 600)),
            "issued in the future",
        ),
        (
            with(&|c| c["iss"] = json!("https://other-cluster")),
            "issued by \"https://other-cluster\"",
        ),
        (
            Issuer::new("sa-key-1").sign(&claims()),
            "signature does not verify",
        ),
        (
            Issuer::new("sa-key-9").sign(&claims()),
            "\"sa-key-9\", which is not among the keys",
        ),
        (
            with(&|c| {
                c["sub"] = json!("system:serviceaccount:default:builder");
                c["kubernetes.io"]["namespace"] = json!("default");
                c["kubernetes.io"]["serviceaccount"]["name"] = json!("builder");
            }),
            "service account \"default:builder\" is not in \
             node_attestors.k8s_psat.clusters.edge.service_account_allow_list",
        ),
        (
            with(&|c| c["kubernetes.io"]["namespace"] = json!("default")),
            "disagree with its subject",
        ),
        (
            with(&|c| c["sub"] = json!("admin")),
            "subject \"admin\" is not a service account",
        ),
        (
            with(&|c| {
                c["kubernetes.io"].as_object_mut().unwrap().remove("pod");
            }),
            "not bound to a pod",
        ),
        (
            with(&|c| {
                c["kubernetes.io"].as_object_mut().unwrap().remove("node");
            }),
            "the token names no node",
        ),
    ];
    for (token, want) in cases {
        let m = refusal(attest(&s.attestor, "edge", &token).await);
        assert!(m.contains(want), "want {want:?} in {m:?}");
        assert!(m.starts_with("k8s_psat: "), "{m}");
    }
    let m = refusal(attest(&s.attestor, "prod", &s.issuer.sign(&claims())).await);
    assert_eq!(
        m,
        "k8s_psat: cluster \"prod\" is not in node_attestors.k8s_psat.clusters"
    );
    for payload in [
        &b"{}"[..],
        b"not json",
        b"{\"cluster\":\"edge\",\"token\":\"\"}",
    ] {
        let e = s
            .attestor
            .session()
            .step(payload.to_vec())
            .await
            .unwrap_err();
        assert!(matches!(e, AttestError::Malformed(_)), "{e}");
    }
    match attest(&s.attestor, "edge", "not-a-jwt").await {
        Err(AttestError::Malformed(m)) => assert!(m.contains("three base64url parts"), "{m}"),
        other => panic!("{other:?}"),
    }
}

/// A stand-in API server over plain HTTP: answers by method and path from `objects`,
/// and records the requests (head and body).
struct FakeApi {
    base: String,
    requests: Arc<Mutex<Vec<String>>>,
}

type Answer = Arc<dyn Fn(&str, &str, &str) -> (u16, Value) + Send + Sync>;

async fn fake_api(answer: Answer) -> FakeApi {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let log = requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let (head, body) = loop {
                let n = s.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break (String::new(), String::new());
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .to_ascii_lowercase()
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: ").map(str::to_owned))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if body.len() >= len {
                        break (head.to_owned(), body.to_owned());
                    }
                }
            };
            log.lock().unwrap().push(format!("{head}\n\n{body}"));
            let mut first = head.split(' ');
            let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
            let (status, reply) = answer(method, path, &body);
            let reply = reply.to_string();
            let out = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{reply}",
                reply.len()
            );
            let _ = s.write_all(out.as_bytes()).await;
            let _ = s.shutdown().await;
        }
    });
    FakeApi { base, requests }
}

fn pod(uid: &str, node: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "spire-agent-x", "namespace": "spire", "uid": uid,
                     "labels": {"app": "spire-agent", "pod-template-hash": "7d9"}},
        "spec": {"nodeName": node, "serviceAccountName": "spire-agent"},
        "status": {"phase": "Running", "hostIP": "10.0.0.7", "podIP": "10.244.1.5"},
    })
}

fn node(uid: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-a", "uid": uid,
                     "labels": {"topology.kubernetes.io/zone": "z1", "kubernetes.io/os": "linux"}},
    })
}

fn review(authenticated: bool, extra: Value) -> Value {
    json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "spec": {},
        "status": if authenticated { json!({
            "authenticated": true, "audiences": ["spire-server"],
            "user": {"username": "system:serviceaccount:spire:spire-agent",
                     "uid": "c0ffee00", "groups": ["system:serviceaccounts"], "extra": extra},
        }) } else { json!({
            "authenticated": false,
            "error": "[invalid bearer token, the token has expired]",
        }) },
    })
}

fn bound_extra() -> Value {
    json!({
        "authentication.kubernetes.io/pod-name": ["spire-agent-x"],
        "authentication.kubernetes.io/pod-uid": [POD_UID],
        "authentication.kubernetes.io/node-name": ["node-a"],
        "authentication.kubernetes.io/node-uid": [NODE_UID],
    })
}

fn api_attestor(base: &str, token_file: PathBuf) -> K8sPsat {
    let mut c = cluster(
        "node_attestors.k8s_psat.clusters.prod",
        "prod",
        &ClusterConfig {
            offline: Some(OfflineConfig {
                issuer: ISSUER.into(),
                jwks_file: Some("/nonexistent".into()),
                discovery_url: None,
                ca_bundle: None,
                refresh: jwt::DEFAULT_REFRESH,
            }),
            ..cluster_config()
        },
    )
    .unwrap();
    // Plain HTTP, which the settings refuse: set directly.
    c.mode = Mode::Api(api::ApiServer {
        base: base.to_owned(),
        token_file: Some(token_file),
        http: tessera_process::http::Options::default(),
        cluster: "prod".into(),
    });
    OneShot::new(K8sPsatCheck {
        clusters: [("prod".to_owned(), c)].into(),
        clock: ManualClock::at_unix(NOW),
    })
}

/// An API server whose review, pod and node answers are `r`, `p` and `n`.
async fn api_with(
    r: Value,
    p: Option<Value>,
    n: Option<Value>,
) -> (FakeApi, K8sPsat, tempfile::TempDir) {
    let answer: Answer = Arc::new(move |method, path, _body| match (method, path) {
        ("POST", "/apis/authentication.k8s.io/v1/tokenreviews") => (201, r.clone()),
        ("GET", "/api/v1/namespaces/spire/pods/spire-agent-x") => match &p {
            Some(p) => (200, p.clone()),
            None => (
                404,
                json!({"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404}),
            ),
        },
        ("GET", "/api/v1/nodes/node-a") => match &n {
            Some(n) => (200, n.clone()),
            None => (
                404,
                json!({"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404}),
            ),
        },
        _ => (404, json!({"kind": "Status", "code": 404})),
    });
    let api = fake_api(answer).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("reviewer-token");
    std::fs::write(&token, "reviewer-secret\n").unwrap();
    let a = api_attestor(&api.base, token);
    (api, a, dir)
}

#[tokio::test]
async fn api_a_reviewed_token_on_its_node_gives_the_id_labels_and_node_ip() {
    let (api, a, _dir) = api_with(
        review(true, bound_extra()),
        Some(pod(POD_UID, "node-a")),
        Some(node(NODE_UID)),
    )
    .await;
    let done = attest(&a, "prod", "the.agent.token").await.unwrap();
    assert_eq!(done.agent_path, format!("k8s_psat/prod/{NODE_UID}"));
    let sel = strings(&done);
    for want in [
        "k8s_psat:cluster:prod".to_owned(),
        "k8s_psat:agent_ns:spire".into(),
        "k8s_psat:agent_sa:spire-agent".into(),
        format!("k8s_psat:agent_pod_uid:{POD_UID}"),
        "k8s_psat:agent_node_ip:10.0.0.7".into(),
        "k8s_psat:agent_node_name:node-a".into(),
        format!("k8s_psat:agent_node_uid:{NODE_UID}"),
        "k8s_psat:agent_node_label:topology.kubernetes.io/zone:z1".into(),
        "k8s_psat:agent_pod_label:app:spire-agent".into(),
    ] {
        assert!(sel.contains(&want), "{want} not in {sel:?}");
    }
    assert!(
        !sel.iter()
            .any(|s| s.contains("kubernetes.io/os") || s.contains("pod-template-hash")),
        "labels not allowed became selectors: {sel:?}"
    );
    let reqs = api.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    let (head, body) = reqs[0].split_once("\n\n").unwrap();
    assert!(
        head.starts_with("POST /apis/authentication.k8s.io/v1/tokenreviews "),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("authorization: bearer reviewer-secret\r\n"),
        "{head}"
    );
    let sent: Value = serde_json::from_str(body).unwrap();
    assert_eq!(
        sent,
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
               "spec": {"token": "the.agent.token", "audiences": ["spire-server"]}})
    );
}

#[tokio::test]
async fn api_refusals_name_what_was_wrong() {
    let other_node =
        |e: &mut Value| e["authentication.kubernetes.io/node-name"] = json!(["node-b"]);
    let other_node_uid =
        |e: &mut Value| e["authentication.kubernetes.io/node-uid"] = json!(["old-uid"]);
    let no_pod = |e: &mut Value| {
        e.as_object_mut()
            .unwrap()
            .remove("authentication.kubernetes.io/pod-name");
    };
    let cases: Vec<(Value, Option<Value>, &str)> = vec![
        (
            review(false, json!({})),
            Some(pod(POD_UID, "node-a")),
            "TokenReview did not authenticate the token: [invalid bearer token, the token has expired]",
        ),
        (
            {
                let mut e = bound_extra();
                other_node(&mut e);
                review(true, e)
            },
            Some(pod(POD_UID, "node-a")),
            "the token is bound to node \"node-b\", but pod spire/spire-agent-x runs on node \"node-a\"",
        ),
        (
            {
                let mut e = bound_extra();
                other_node_uid(&mut e);
                review(true, e)
            },
            Some(pod(POD_UID, "node-a")),
            "bound to node UID \"old-uid\"",
        ),
        (
            {
                let mut e = bound_extra();
                no_pod(&mut e);
                review(true, e)
            },
            Some(pod(POD_UID, "node-a")),
            "not bound to a pod",
        ),
        (
            review(true, bound_extra()),
            Some(pod("another-uid", "node-a")),
            "but that pod's UID is \"another-uid\"",
        ),
        (
            review(true, bound_extra()),
            None,
            "pod spire/spire-agent-x, which does not exist",
        ),
    ];
    for (r, p, want) in cases {
        let (_api, a, _dir) = api_with(r, p, Some(node(NODE_UID))).await;
        let m = refusal(attest(&a, "prod", "t.t.t").await);
        assert!(m.contains(want), "want {want:?} in {m:?}");
    }
    // A service account not allowed: refused before any pod is read.
    let mut r = review(true, bound_extra());
    r["status"]["user"]["username"] = json!("system:serviceaccount:default:builder");
    let (api, a, _dir) = api_with(r, Some(pod(POD_UID, "node-a")), Some(node(NODE_UID))).await;
    let m = refusal(attest(&a, "prod", "t.t.t").await);
    assert!(m.contains("\"default:builder\" is not in"), "{m}");
    assert_eq!(api.requests.lock().unwrap().len(), 1);
    // Audiences the review did not confirm.
    let mut r = review(true, bound_extra());
    r["status"]["audiences"] = json!(["https://kubernetes.default.svc"]);
    let (_api, a, _dir) = api_with(r, Some(pod(POD_UID, "node-a")), Some(node(NODE_UID))).await;
    let m = refusal(attest(&a, "prod", "t.t.t").await);
    assert!(
        m.contains("for audience [\"https://kubernetes.default.svc\"]"),
        "{m}"
    );
}

#[tokio::test]
async fn api_an_unreachable_or_failing_api_server_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("t");
    std::fs::write(&token, "x").unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let a = api_attestor(&base, token);
    match attest(&a, "prod", "t.t.t").await {
        Err(AttestError::Unavailable(m)) => {
            assert!(
                m.contains("cluster \"prod\": the API server cannot be asked for a TokenReview"),
                "{m}"
            );
        }
        other => panic!("{other:?}"),
    }
    let answer: Answer = Arc::new(|_, _, _| {
        (
            403,
            json!({"kind": "Status", "reason": "Forbidden", "code": 403}),
        )
    });
    let api = fake_api(answer).await;
    let token = dir.path().join("t2");
    std::fs::write(&token, "x").unwrap();
    let a = api_attestor(&api.base, token);
    match attest(&a, "prod", "t.t.t").await {
        Err(AttestError::Unavailable(m)) => assert!(
            m.contains("refused the server's credentials (HTTP 403"),
            "{m}"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn api_oversized_payloads_are_refused_unsent_and_redirects_not_followed() {
    let (api, a, _dir) = api_with(
        review(true, bound_extra()),
        Some(pod(POD_UID, "node-a")),
        Some(node(NODE_UID)),
    )
    .await;
    let huge_token = format!("t.{}.t", "a".repeat(jwt::MAX_TOKEN));
    match attest(&a, "prod", &huge_token).await {
        Err(AttestError::Malformed(m)) => assert!(m.contains("token is longer than"), "{m}"),
        other => panic!("{other:?}"),
    }
    let huge_cluster = "c".repeat(1 << 20);
    match attest(&a, &huge_cluster, "t.t.t").await {
        Err(AttestError::Malformed(m)) => {
            assert!(m.contains("cluster name is longer than"), "{m}");
            assert!(m.len() < 200, "the name is not echoed: {} bytes", m.len());
        }
        other => panic!("{other:?}"),
    }
    assert!(
        api.requests.lock().unwrap().is_empty(),
        "nothing reached the API server"
    );
    // An API server that redirects the review elsewhere is not followed.
    let answer: Answer = Arc::new(|_, _, _| (307, json!({})));
    let api = fake_api(answer).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("t");
    std::fs::write(&token, "x").unwrap();
    let a = api_attestor(&api.base, token);
    match attest(&a, "prod", "t.t.t").await {
        Err(AttestError::Unavailable(m)) => assert!(m.contains("HTTP 307"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(api.requests.lock().unwrap().len(), 1);
}

#[test]
fn bad_settings_are_named() {
    let clock = ManualClock::at_unix(NOW);
    let err = |c: ClusterConfig| {
        K8sPsat::from_config(
            &K8sPsatConfig {
                clusters: [("prod".to_owned(), c)].into(),
            },
            clock.clone(),
        )
        .unwrap_err()
    };
    let e = K8sPsat::from_config(
        &K8sPsatConfig {
            clusters: BTreeMap::new(),
        },
        clock.clone(),
    )
    .unwrap_err();
    assert!(
        e.contains("node_attestors.k8s_psat.clusters is empty"),
        "{e}"
    );
    let e = err(cluster_config());
    assert!(
        e.contains("node_attestors.k8s_psat.clusters.prod: set how tokens are checked"),
        "{e}"
    );
    let offline = OfflineConfig {
        issuer: ISSUER.into(),
        jwks_file: Some("/x".into()),
        discovery_url: None,
        ca_bundle: None,
        refresh: jwt::DEFAULT_REFRESH,
    };
    let api = ApiConfig {
        server: "https://10.0.0.1:6443".into(),
        ca_file: "/nonexistent/ca.pem".into(),
        token_file: None,
        client_cert_file: None,
        client_key_file: None,
        timeout: default_api_timeout(),
    };
    for (c, want) in [
        (
            ClusterConfig {
                api: Some(api.clone()),
                offline: Some(offline.clone()),
                ..cluster_config()
            },
            "set api or offline, not both",
        ),
        (
            ClusterConfig {
                service_account_allow_list: vec![],
                offline: Some(offline.clone()),
                ..cluster_config()
            },
            "service_account_allow_list is empty",
        ),
        (
            ClusterConfig {
                service_account_allow_list: vec!["spire-agent".into()],
                offline: Some(offline.clone()),
                ..cluster_config()
            },
            "\"spire-agent\" is not \"namespace:name\"",
        ),
        (
            ClusterConfig {
                audience: vec![],
                offline: Some(offline.clone()),
                ..cluster_config()
            },
            "prod.audience is empty",
        ),
        (
            ClusterConfig {
                offline: Some(OfflineConfig {
                    issuer: "http://k8s".into(),
                    ..offline.clone()
                }),
                ..cluster_config()
            },
            "prod.offline.issuer",
        ),
        (
            ClusterConfig {
                offline: Some(OfflineConfig {
                    discovery_url: Some("https://k/d".into()),
                    ..offline.clone()
                }),
                ..cluster_config()
            },
            "set jwks_file or discovery_url, not both",
        ),
        (
            ClusterConfig {
                offline: Some(OfflineConfig {
                    refresh: Duration::from_secs(1),
                    ..offline.clone()
                }),
                ..cluster_config()
            },
            "prod.offline.refresh must be at least",
        ),
        (
            ClusterConfig {
                api: Some(api.clone()),
                ..cluster_config()
            },
            "prod.api: set token_file, or client_cert_file and client_key_file",
        ),
        (
            ClusterConfig {
                api: Some(ApiConfig {
                    client_cert_file: Some("/c".into()),
                    ..api.clone()
                }),
                ..cluster_config()
            },
            "client_cert_file and client_key_file go together",
        ),
        (
            ClusterConfig {
                api: Some(ApiConfig {
                    token_file: Some("/nonexistent/token".into()),
                    ..api.clone()
                }),
                ..cluster_config()
            },
            "prod.api.token_file /nonexistent/token: cannot be read",
        ),
        (
            ClusterConfig {
                api: Some(ApiConfig {
                    server: "http://10.0.0.1".into(),
                    ..api.clone()
                }),
                ..cluster_config()
            },
            "prod.api.server",
        ),
    ] {
        let e = err(c);
        assert!(e.contains(want), "want {want:?} in {e:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "x").unwrap();
    let e = err(ClusterConfig {
        api: Some(ApiConfig {
            token_file: Some(token),
            ..api.clone()
        }),
        ..cluster_config()
    });
    assert!(
        e.contains("prod.api.ca_file") && e.contains("/nonexistent/ca.pem"),
        "{e}"
    );
    let e = K8sPsat::from_config(
        &K8sPsatConfig {
            clusters: [(
                "a/b".to_owned(),
                ClusterConfig {
                    offline: Some(offline),
                    ..cluster_config()
                },
            )]
            .into(),
        },
        clock,
    )
    .unwrap_err();
    assert!(e.contains("clusters.a/b: the cluster name"), "{e}");
}

#[tokio::test]
async fn an_unreadable_key_file_stops_the_start() {
    let cfg = K8sPsatConfig {
        clusters: [(
            "edge".to_owned(),
            ClusterConfig {
                offline: Some(OfflineConfig {
                    issuer: ISSUER.into(),
                    jwks_file: Some("/nonexistent/jwks.json".into()),
                    discovery_url: None,
                    ca_bundle: None,
                    refresh: jwt::DEFAULT_REFRESH,
                }),
                ..cluster_config()
            },
        )]
        .into(),
    };
    let a = K8sPsat::from_config(&cfg, ManualClock::at_unix(NOW)).unwrap();
    let e = a.check().load_keys().await.unwrap_err();
    assert!(
        e.starts_with(
            "node_attestors.k8s_psat.clusters.edge.offline.jwks_file /nonexistent/jwks.json"
        ),
        "{e}"
    );
}

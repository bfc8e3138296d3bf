//! The clouds as the cloud attestor tests see them: a network namespace per test
//! ([`netns`]) holding the metadata service at 169.254.169.254 (and
//! `metadata.google.internal`), fakes of AWS's, Google's and Azure's services
//! ([`aws`], [`gcp`], [`azure`]) and of a Kubernetes API server ([`k8s`]) that speak
//! their published formats, the keys they
//! sign with ([`pki`]), a small HTTP(S) server ([`http`]), and the glue: a server
//! reachable from the namespace, agents run inside it, and the checks every refusal
//! must pass.

pub mod aws;
pub mod azure;
pub mod gcp;
pub mod http;
pub mod k8s;
pub mod netns;
pub mod pki;

use std::path::Path;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use tessera_agent::client::{Trust, channel, node_client};
use tessera_core::key::{Key, KeyType, SoftwareKey};
use tessera_core::tls::SharedBundle;
use tessera_core::{Bundle, TrustDomain};
use tessera_proto::agent as pb;

use crate::{Agent, Server, my_uid, py_ok, wait_until};
pub use netns::Netns;

/// A server whose agent API listens on the host end of `ns` (so agents inside can
/// reach it), with `extra` configuration.
pub fn server_for(ns: &Netns, dir: &Path, extra: &str) -> Server {
    let mut server = Server::configure(dir, extra);
    let text = std::fs::read_to_string(&server.config).expect("server config");
    let text = text.replace(
        &format!("bind_address = \"127.0.0.1:{}\"", server.port),
        &format!("bind_address = \"{}:{}\"", ns.host_ip, server.port),
    );
    std::fs::write(&server.config, text).expect("server config");
    server.start_again();
    server
}

/// An agent of `server` to run inside `ns` (configured, not started).
pub fn agent_in(ns: &Netns, dir: &Path, server: &Server, extra: &str) -> Agent {
    let agent = Agent::configure(dir, server, extra);
    let text = std::fs::read_to_string(&agent.config).expect("agent config");
    let text = text.replace(
        &format!("server_address = \"{}\"", server.address()),
        &format!("server_address = \"{}:{}\"", ns.host_ip, server.port),
    );
    std::fs::write(&agent.config, text).expect("agent config");
    agent
}

/// Starts `agent` inside `ns` and waits until it is healthy.
pub fn start_in(ns: &Netns, agent: &mut Agent) {
    agent.spawn_in(None, &ns.wrapper());
    agent.wait_healthy();
}

/// How many agents the server has on record.
pub fn agent_count(server: &Server) -> usize {
    let v: serde_json::Value =
        serde_json::from_str(&server.cli_ok(&["agent", "list", "--output", "json"]))
            .expect("agent list JSON");
    v.as_array().map_or(0, Vec::len)
}

/// The agents on record, as `agent list --output json` prints them.
pub fn agents(server: &Server) -> Vec<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(&server.cli_ok(&["agent", "list", "--output", "json"]))
            .expect("agent list JSON");
    v.as_array().cloned().unwrap_or_default()
}

/// Starts `agent` (through `wrapper`, such as [`Netns::wrapper`]) and checks that
/// the server refuses its evidence: the agent stops with an error naming `reason`,
/// the server logs it, and the number of agents on record stays as it was.
pub fn assert_refused(wrapper: &[String], server: &Server, agent: &mut Agent, reason: &str) {
    let before = agent_count(server);
    agent.spawn_in(None, wrapper);
    let status: Option<ExitStatus> = agent.wait_exit(Duration::from_secs(30));
    let status = status.unwrap_or_else(|| {
        panic!(
            "the agent did not stop (expected a refusal for {reason:?}):\n{}",
            agent.log()
        )
    });
    assert!(!status.success(), "the agent exited 0:\n{}", agent.log());
    assert!(
        agent.log().contains(reason),
        "the agent does not say {reason:?}:\n{}",
        agent.log()
    );
    assert!(
        wait_until(Duration::from_secs(5), || server.log().contains(reason)),
        "the server log does not say {reason:?}:\n{}",
        server.log()
    );
    assert_eq!(
        agent_count(server),
        before,
        "an agent record was written for a refused attestation"
    );
}

/// Runs one attestation from the test process: sends `payload` for `attestor`, then
/// answers the server's challenge with `answer`. The server's verdict: the agent ID,
/// or the refusal.
pub fn attest_raw(
    server: &Server,
    attestor: &str,
    payload: Vec<u8>,
    answer: impl FnOnce(Vec<u8>) -> Vec<u8>,
) -> Result<String, tonic::Status> {
    let td = TrustDomain::new("example.org").expect("trust domain");
    let roots = tessera_core::x509::pem_certs(server.cli_ok(&["bundle", "show"]).as_bytes())
        .expect("bundle");
    let bundle = SharedBundle::new(Bundle::with_x509(td.clone(), roots));
    let key: Arc<dyn Key> = Arc::new(SoftwareKey::generate(KeyType::EcP256).expect("key"));
    let csr = tessera_core::x509::build_csr(&key).expect("CSR");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let mut client = node_client(channel(
            vec![server.address()],
            td.id("/spire/server").expect("server ID"),
            Trust::Bundle(bundle),
            None,
        ));
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let _ = tx
            .send(pb::AttestRequest {
                step: Some(pb::attest_request::Step::Params(pb::AttestationParams {
                    attestor: attestor.into(),
                    payload,
                    csr,
                })),
            })
            .await;
        let mut inbound = client
            .attest(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let mut answer = Some(answer);
        loop {
            match inbound.message().await?.and_then(|m| m.step) {
                Some(pb::attest_response::Step::Challenge(c)) => {
                    let f = answer.take().expect("a single challenge");
                    let _ = tx
                        .send(pb::AttestRequest {
                            step: Some(pb::attest_request::Step::ChallengeResponse(f(c))),
                        })
                        .await;
                }
                Some(pb::attest_response::Step::Result(r)) => return Ok(r.spiffe_id),
                None => return Err(tonic::Status::unknown("no verdict")),
            }
        }
    })
}

fn uid() -> String {
    format!("unix:uid:{}", my_uid())
}

/// A node entry for agents with `selector`, and a workload entry under it for this
/// test's UID.
pub fn entries(server: &Server, node: &str, selector: &str) {
    server.cli_ok(&[
        "entry",
        "create",
        "--node",
        "--spiffe-id",
        node,
        "--selector",
        selector,
    ]);
    server.entry("spiffe://example.org/app", node, &[&uid()], &[]);
}

/// The SPIFFE ID py-spiffe gets from `agent`.
pub fn workload_id(agent: &Agent, dir: &Path) -> String {
    let out = dir.join(format!(
        "py-{}",
        agent
            .dir
            .file_name()
            .expect("agent dir name")
            .to_string_lossy()
    ));
    let facts: serde_json::Value = serde_json::from_str(
        py_ok(
            agent,
            "workload.py",
            &["x509", out.to_str().expect("UTF-8 path")],
        )
        .trim(),
    )
    .expect("py-spiffe's JSON");
    facts["spiffe_id"].as_str().expect("spiffe_id").to_owned()
}

/// The selectors the server holds for agent `id`.
pub fn selectors_of(server: &Server, id: &str) -> Vec<String> {
    let a = agents(server)
        .into_iter()
        .find(|a| a["spiffe_id"] == id)
        .unwrap_or_else(|| panic!("no agent {id}"));
    a["selectors"]
        .as_array()
        .expect("selectors")
        .iter()
        .map(|s| s.as_str().expect("selector").to_owned())
        .collect()
}

//! A fake Compute Engine metadata server: `GET
//! /computeMetadata/v1/instance/service-accounts/<account>/identity?audience=...&format=full`
//! with `Metadata-Flavor: Google` (without it: 403) answers an RS256 identity token
//! with Google's claims (`google.compute_engine` in the `full` format), and every
//! answer carries `Metadata-Flavor: Google`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::http::{HttpServer, Reply, Req};
use super::netns::{METADATA_IP, Netns};
use super::pki::TokenSigner;

/// The facts of one VM.
#[derive(Debug, Clone)]
pub struct Vm {
    pub project_id: String,
    pub project_number: u64,
    pub zone: String,
    pub instance_id: String,
    pub instance_name: String,
    pub email: String,
}

impl Vm {
    pub fn new(project: &str, instance_id: &str) -> Self {
        Self {
            project_id: project.into(),
            project_number: 480_000_123_456,
            zone: "europe-west4-a".into(),
            instance_id: instance_id.into(),
            instance_name: format!("edge-{instance_id}"),
            email: "480000123456-compute@developer.gserviceaccount.com".into(),
        }
    }
}

#[derive(Debug)]
struct State {
    vm: Vm,
    signer: TokenSigner,
    /// Seconds from now to the token's expiry (negative: already expired).
    expires_in: i64,
}

/// The service, answering `metadata.google.internal` (169.254.169.254:80) in a
/// namespace.
#[derive(Debug)]
pub struct Metadata {
    server: HttpServer,
    state: Arc<Mutex<State>>,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn handle(state: &Mutex<State>, r: &Req) -> Reply {
    let google = |reply: Reply| reply.with_header("Metadata-Flavor", "Google");
    if r.header("metadata-flavor") != Some("Google") {
        return google(Reply::text(403, "Missing Metadata-Flavor:Google header."));
    }
    let prefix = "/computeMetadata/v1/instance/service-accounts/";
    let Some(account) = r
        .path()
        .strip_prefix(prefix)
        .and_then(|p| p.strip_suffix("/identity"))
    else {
        return google(Reply::text(404, "Not Found"));
    };
    let Some(audience) = r.query("audience").filter(|a| !a.is_empty()) else {
        return google(Reply::text(400, "non-empty audience parameter required"));
    };
    let st = state.lock().unwrap_or_else(|p| p.into_inner());
    if account != "default" && account != st.vm.email {
        return google(Reply::text(404, "Not Found"));
    }
    let exp = now() + st.expires_in;
    let mut claims = serde_json::json!({
        "aud": audience,
        "azp": "117391720282618354331",
        "email": st.vm.email,
        "email_verified": true,
        "exp": exp,
        "iat": exp - 3600,
        "iss": "https://accounts.google.com",
        "sub": "117391720282618354331",
    });
    if r.query("format").as_deref() == Some("full") {
        claims["google"] = serde_json::json!({"compute_engine": {
            "instance_creation_timestamp": now() - 86_400,
            "instance_id": st.vm.instance_id,
            "instance_name": st.vm.instance_name,
            "project_id": st.vm.project_id,
            "project_number": st.vm.project_number,
            "zone": st.vm.zone,
        }});
    }
    google(Reply::new(
        200,
        "text/html; charset=UTF-8",
        st.signer.sign(&claims),
    ))
}

impl Metadata {
    /// Starts serving `vm`'s tokens, signed by `signer`, in `ns`; points
    /// `metadata.google.internal` at it in the namespace's hosts file.
    pub fn start(ns: &Netns, vm: Vm, signer: TokenSigner) -> Self {
        ns.set_hosts(&format!("{METADATA_IP} metadata.google.internal metadata"));
        let state = Arc::new(Mutex::new(State {
            vm,
            signer,
            expires_in: 3600,
        }));
        let listener = ns.listen(SocketAddr::from((
            METADATA_IP.parse::<std::net::Ipv4Addr>().expect("IP"),
            80,
        )));
        let s = state.clone();
        let server = HttpServer::serve(listener, Arc::new(move |r| handle(&s, r)), None);
        Self { server, state }
    }

    /// Serves tokens for another VM, signed by `signer`, expiring in `expires_in` s.
    pub fn set(&self, vm: Vm, signer: TokenSigner, expires_in: i64) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.vm = vm;
        st.signer = signer;
        st.expires_in = expires_in;
    }

    pub fn requests(&self) -> Vec<Req> {
        self.server.requests()
    }
}

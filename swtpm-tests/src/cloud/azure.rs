//! A fake Azure Instance Metadata Service for managed identities: `GET
//! /metadata/identity/oauth2/token?api-version=...&resource=...` with `Metadata: true`
//! (without it: 400) answers the token JSON (`access_token`, `expires_on`,
//! `resource`, `token_type`, ...) with an RS256 access token carrying Entra ID's
//! claims for a VM's system-assigned identity (`tid`, `oid`, `sub`, `xms_mirid`, ...).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::http::{HttpServer, Reply, Req};
use super::netns::{METADATA_IP, Netns};
use super::pki::TokenSigner;

/// One VM's identity.
#[derive(Debug, Clone)]
pub struct VmIdentity {
    pub tenant: String,
    pub principal: String,
    pub subscription: String,
    pub group: String,
    pub vm: String,
}

impl VmIdentity {
    pub fn new(tenant: &str, principal: &str) -> Self {
        Self {
            tenant: tenant.into(),
            principal: principal.into(),
            subscription: "0b1f6471-1bf0-4dda-aec3-cb9272f09590".into(),
            group: "edge-rg".into(),
            vm: format!("vm-{}", &principal[..8]),
        }
    }
}

#[derive(Debug)]
struct State {
    id: VmIdentity,
    signer: TokenSigner,
    expires_in: i64,
}

/// The service, on 169.254.169.254:80 in a namespace.
#[derive(Debug)]
pub struct Imds {
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
    if r.header("metadata") != Some("true") {
        return Reply::json(
            400,
            &serde_json::json!({"error": "invalid_request", "error_description": "Required metadata header not specified"}),
        );
    }
    if r.path() != "/metadata/identity/oauth2/token" {
        return Reply::text(404, "Not Found");
    }
    if r.query("api-version").is_none() {
        return Reply::json(
            400,
            &serde_json::json!({"error": "Bad request. api-version was not specified in the request"}),
        );
    }
    let Some(resource) = r.query("resource").filter(|x| !x.is_empty()) else {
        return Reply::json(
            400,
            &serde_json::json!({"error": "invalid_request", "error_description": "Required audience parameter not specified"}),
        );
    };
    let st = state.lock().unwrap_or_else(|p| p.into_inner());
    let exp = now() + st.expires_in;
    let issued = exp - 86_400;
    let id = &st.id;
    let claims = serde_json::json!({
        "aud": resource,
        "iss": format!("https://sts.windows.net/{}/", id.tenant),
        "iat": issued, "nbf": issued, "exp": exp,
        "aio": "k2BgYHjMyPz3nqlTm8vEfwA=",
        "appid": "6ea71a9e-1c3f-4e3c-bd5c-9c4c7b2a7d10",
        "appidacr": "2",
        "idp": format!("https://sts.windows.net/{}/", id.tenant),
        "idtyp": "app",
        "oid": id.principal,
        "rh": "0.AXEAv4j5cvGGr0GRqy180BHbR0ZIf3kAutdPukPawfj2MBN0AAA.",
        "sub": id.principal,
        "tid": id.tenant,
        "uti": "ZTN5YnVvQ0dpa3l0dEs5Yw",
        "ver": "1.0",
        "xms_mirid": format!(
            "/subscriptions/{}/resourcegroups/{}/providers/Microsoft.Compute/virtualMachines/{}",
            id.subscription, id.group, id.vm
        ),
    });
    Reply::json(
        200,
        &serde_json::json!({
            "access_token": st.signer.sign(&claims),
            "client_id": "6ea71a9e-1c3f-4e3c-bd5c-9c4c7b2a7d10",
            "expires_in": st.expires_in.max(0).to_string(),
            "expires_on": exp.to_string(),
            "ext_expires_in": st.expires_in.max(0).to_string(),
            "not_before": issued.to_string(),
            "resource": resource,
            "token_type": "Bearer",
        }),
    )
}

impl Imds {
    /// Starts serving `id`'s tokens, signed by `signer`, in `ns`.
    pub fn start(ns: &Netns, id: VmIdentity, signer: TokenSigner) -> Self {
        let state = Arc::new(Mutex::new(State {
            id,
            signer,
            expires_in: 86_399,
        }));
        let listener = ns.listen(SocketAddr::from((
            METADATA_IP.parse::<std::net::Ipv4Addr>().expect("IP"),
            80,
        )));
        let s = state.clone();
        let server = HttpServer::serve(listener, Arc::new(move |r| handle(&s, r)), None);
        Self { server, state }
    }

    /// Serves another identity's tokens, signed by `signer`, expiring in `expires_in` s.
    pub fn set(&self, id: VmIdentity, signer: TokenSigner, expires_in: i64) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.id = id;
        st.signer = signer;
        st.expires_in = expires_in;
    }

    pub fn requests(&self) -> Vec<Req> {
        self.server.requests()
    }
}

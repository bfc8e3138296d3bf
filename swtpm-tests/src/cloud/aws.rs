//! A fake EC2 instance metadata service: IMDSv2 (`PUT /latest/api/token` with
//! `X-aws-ec2-metadata-token-ttl-seconds`, then every read with
//! `X-aws-ec2-metadata-token`; reads without a valid token get 401, as on an instance
//! that requires IMDSv2), or IMDSv1 only (the token request gets 404). It serves the
//! instance identity document in AWS's layout and its signatures.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::http::{HttpServer, Reply, Req};
use super::netns::{METADATA_IP, Netns};
use super::pki::DocumentSigner;

/// The facts of one instance.
#[derive(Debug, Clone)]
pub struct Instance {
    pub account: String,
    pub region: String,
    pub zone: String,
    pub instance_id: String,
    pub image_id: String,
    pub instance_type: String,
    pub pending_time: String,
}

impl Instance {
    /// An instance of `account` in the test region.
    pub fn new(account: &str, instance_id: &str) -> Self {
        Self {
            account: account.into(),
            region: "test-region-1".into(),
            zone: "test-region-1a".into(),
            instance_id: instance_id.into(),
            image_id: "ami-0abcdef1234567890".into(),
            instance_type: "t3.micro".into(),
            pending_time: now_rfc3339(),
        }
    }

    /// The document as the metadata service prints it.
    pub fn document(&self) -> String {
        format!(
            "{{\n  \"accountId\" : \"{}\",\n  \"architecture\" : \"x86_64\",\n  \"availabilityZone\" : \"{}\",\n  \"billingProducts\" : null,\n  \"devpayProductCodes\" : null,\n  \"marketplaceProductCodes\" : null,\n  \"imageId\" : \"{}\",\n  \"instanceId\" : \"{}\",\n  \"instanceType\" : \"{}\",\n  \"kernelId\" : null,\n  \"pendingTime\" : \"{}\",\n  \"privateIp\" : \"10.0.1.17\",\n  \"ramdiskId\" : null,\n  \"region\" : \"{}\",\n  \"version\" : \"2017-09-30\"\n}}",
            self.account,
            self.zone,
            self.image_id,
            self.instance_id,
            self.instance_type,
            self.pending_time,
            self.region
        )
    }
}

/// Now, as AWS writes times (`2026-02-16T00:38:27Z`).
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// What the service serves.
#[derive(Debug, Clone)]
pub struct Evidence {
    pub document: String,
    pub rsa2048: String,
    pub signature: String,
}

impl Evidence {
    /// `instance`'s document signed by `signer`.
    pub fn signed(instance: &Instance, signer: &DocumentSigner) -> Self {
        let document = instance.document();
        let (rsa2048, signature) = signer.sign(&document);
        Self {
            document,
            rsa2048,
            signature,
        }
    }
}

#[derive(Debug)]
struct State {
    evidence: Evidence,
    imdsv2: bool,
    tokens: Vec<String>,
}

/// The service, listening on 169.254.169.254:80 in a namespace.
#[derive(Debug)]
pub struct Imds {
    server: HttpServer,
    state: Arc<Mutex<State>>,
}

fn handle(state: &Mutex<State>, r: &Req) -> Reply {
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    if r.method == "PUT" && r.path() == "/latest/api/token" {
        if !st.imdsv2 {
            return Reply::text(404, "Not Found");
        }
        let ttl = r
            .header("x-aws-ec2-metadata-token-ttl-seconds")
            .and_then(|v| v.parse::<u32>().ok());
        if !matches!(ttl, Some(1..=21600)) {
            return Reply::text(400, "Bad Request");
        }
        let token = format!("AQAEA{}-{}", st.tokens.len(), std::process::id());
        st.tokens.push(token.clone());
        return Reply::text(200, &token).with_header(
            "X-Aws-Ec2-Metadata-Token-Ttl-Seconds",
            &ttl.unwrap_or(0).to_string(),
        );
    }
    if r.method != "GET" {
        return Reply::text(405, "Method Not Allowed");
    }
    if st.imdsv2
        && !r
            .header("x-aws-ec2-metadata-token")
            .is_some_and(|t| st.tokens.iter().any(|k| k == t))
    {
        return Reply::text(401, "Unauthorized");
    }
    let e = &st.evidence;
    match r.path() {
        "/latest/dynamic/instance-identity/document" => Reply::text(200, &e.document),
        "/latest/dynamic/instance-identity/rsa2048" => Reply::text(200, &e.rsa2048),
        "/latest/dynamic/instance-identity/signature" => Reply::text(200, &e.signature),
        _ => Reply::text(404, "Not Found"),
    }
}

impl Imds {
    /// Starts serving `evidence` in `ns`, with IMDSv2 required.
    pub fn start(ns: &Netns, evidence: Evidence) -> Self {
        let state = Arc::new(Mutex::new(State {
            evidence,
            imdsv2: true,
            tokens: Vec::new(),
        }));
        let listener = ns.listen(SocketAddr::from((
            METADATA_IP.parse::<std::net::Ipv4Addr>().expect("IP"),
            80,
        )));
        let s = state.clone();
        let server = HttpServer::serve(listener, Arc::new(move |r| handle(&s, r)), None);
        Self { server, state }
    }

    /// Serves other evidence from now on.
    pub fn set_evidence(&self, evidence: Evidence) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .evidence = evidence;
    }

    /// Turns IMDSv2 off (the token request gets 404, reads need no token) or on.
    pub fn set_imdsv2(&self, on: bool) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).imdsv2 = on;
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Req> {
        self.server.requests()
    }
}

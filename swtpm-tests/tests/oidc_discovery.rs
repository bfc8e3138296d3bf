//! OIDC discovery for JWT-SVIDs: a server with `jwt_issuer` and `[oidc_discovery]`
//! serves the discovery document and its JWT keys over https, and PyJWT, knowing
//! only the issuer URL, verifies a JWT-SVID the server minted; a token changed
//! after signing, or one for another audience, does not verify.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::process::Command;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tessera_swtpm_tests::cloud::pki::TlsIdentity;
use tessera_swtpm_tests::{Server, free_port, python, repo_root, test_dir};

fn verify(ca: &std::path::Path, issuer: &str, audience: &str, token: &str) -> std::process::Output {
    Command::new(python())
        .arg(repo_root().join("swtpm-tests/py/oidc_verify.py"))
        .args([issuer, audience, token])
        .env("TESSERA_OIDC_CA", ca)
        .output()
        .unwrap()
}

#[test]
fn pyjwt_verifies_jwt_svids_from_the_keys_it_discovers() {
    let dir = test_dir("oidc");
    let tls = TlsIdentity::new(&dir.path().join("tls"), "127.0.0.1");
    let port = free_port();
    let issuer = format!("https://127.0.0.1:{port}");
    let server = Server::start(
        &dir.path().join("server"),
        &format!(
            "jwt_issuer = \"{issuer}\"\n[oidc_discovery]\naddress = \"127.0.0.1:{port}\"\n\
             cert_file = \"{}\"\nkey_file = \"{}\"\n",
            tls.cert.display(),
            tls.key.display()
        ),
    );
    let token = server
        .cli_ok(&[
            "jwt",
            "mint",
            "--spiffe-id",
            "spiffe://example.org/backup",
            "--audience",
            "storage.example.net",
        ])
        .trim()
        .to_owned();

    let o = verify(&tls.ca, &issuer, "storage.example.net", &token);
    assert!(
        o.status.success(),
        "PyJWT did not verify the JWT-SVID:\n{}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        server.log()
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["claims"]["iss"], issuer.as_str());
    assert_eq!(v["claims"]["sub"], "spiffe://example.org/backup");
    assert_eq!(v["discovery"]["jwks_uri"], format!("{issuer}/keys"));
    let kid = v["keys"]["keys"][0]["kid"].as_str().unwrap();
    let header: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["kid"], kid);
    // The keys the server serves are the bundle's JWT authorities.
    let bundle: serde_json::Value =
        serde_json::from_str(&server.cli_ok(&["bundle", "show", "--format", "jwks"])).unwrap();
    let bundle_kids: Vec<&str> = bundle["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["use"] == "jwt-svid")
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    let served_kids: Vec<&str> = v["keys"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(served_kids, bundle_kids);

    // Another audience, or a claim changed after signing: refused.
    let o = verify(&tls.ca, &issuer, "other.example.net", &token);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("InvalidAudience"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
    claims["sub"] = "spiffe://example.org/admin".into();
    parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
    let forged = parts.join(".");
    let o = verify(&tls.ca, &issuer, "storage.example.net", &forged);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("InvalidSignature"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_discovery_listener_without_an_issuer_or_a_way_to_serve_is_refused_at_start() {
    let dir = test_dir("oidc-config");
    for (i, (extra, says)) in [
        (
            "[oidc_discovery]\naddress = \"127.0.0.1:0\"\ninsecure = true\n",
            "needs jwt_issuer",
        ),
        (
            "jwt_issuer = \"https://oidc.example.org\"\n[oidc_discovery]\naddress = \"127.0.0.1:0\"\n",
            "or insecure = true",
        ),
        (
            "jwt_issuer = \"http://oidc.example.org\"\n",
            "must be https",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let mut server = Server::configure(&dir.path().join(format!("server{i}")), extra);
        let status = server
            .try_start(Duration::from_secs(20))
            .expect("the server must stop at start");
        assert!(!status.success(), "{extra}");
        assert!(server.log().contains(says), "{extra}: {}", server.log());
    }
}

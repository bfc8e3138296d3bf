//! `tessera-agent api fetch x509` for TPM-held workload keys: the SVIDs of
//! `tessera.local.v1.TpmWorkloadKeys`, printed like the others and written as
//! `svid.N.pem` (chain), `svid.N.tss2.key` (the TSS2 PRIVATE KEY file, 0600),
//! `svid.N.auth` (its authorization value, 0600: OpenSSL's tpm2 provider reads it
//! with `-passin file:svid.N.auth`) and `bundle.N.pem`.

use std::path::Path;

use tessera_proto::local as lpb;
use tessera_proto::local::tpm_workload_keys_client::TpmWorkloadKeysClient;

use super::CliError;
use super::api::{OutFile, add_header, channel};

/// The workload's TPM-held X509-SVIDs; `None` when it has none (the agent says no
/// entry of the workload keeps its key in the TPM, or is too old for the service).
pub(super) async fn fetch(path: &Path) -> Result<Option<lpb::TpmX509svidResponse>, CliError> {
    let f: fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> = add_header;
    let mut c = TpmWorkloadKeysClient::with_interceptor(channel(path).await?, f);
    let stream = c.fetch_tpm_x509svid(lpb::TpmX509svidRequest {}).await;
    match stream {
        Ok(s) => Ok(s.into_inner().message().await?),
        Err(s)
            if matches!(
                s.code(),
                tonic::Code::FailedPrecondition | tonic::Code::Unimplemented
            ) =>
        {
            Ok(None)
        }
        Err(s) => Err(s.into()),
    }
}

/// How `fetch x509` prints them.
pub fn tpm_text(resp: &lpb::TpmX509svidResponse) -> String {
    let mut out = String::new();
    for s in &resp.svids {
        out.push_str(&format!(
            "SPIFFE ID:\t\t{}\nKey:\t\t\tin the agent's TPM (TSS2 key file and its authorization value)\n",
            s.spiffe_id
        ));
        if !s.hint.is_empty() {
            out.push_str(&format!("Hint:\t\t\t{}\n", s.hint));
        }
        out.push('\n');
    }
    out
}

/// The files for `resp`, numbered from `first` (after the software SVIDs).
pub fn tpm_files(resp: &lpb::TpmX509svidResponse, first: usize) -> Vec<OutFile> {
    let mut files = Vec::new();
    let pems = |data: &[u8]| -> Vec<u8> {
        tessera_core::x509::split_concatenated(data)
            .unwrap_or_default()
            .iter()
            .map(|d| tessera_core::x509::to_pem("CERTIFICATE", d))
            .collect::<String>()
            .into_bytes()
    };
    for (k, s) in resp.svids.iter().enumerate() {
        let i = first + k;
        let mut add = |name: String, data: Vec<u8>, mode: u32| {
            files.push(OutFile { name, data, mode });
        };
        add(format!("svid.{i}.pem"), pems(&s.x509_svid), 0o644);
        add(
            format!("svid.{i}.tss2.key"),
            s.tss2_private_key.clone().into_bytes(),
            0o600,
        );
        add(format!("svid.{i}.auth"), s.key_auth.clone(), 0o600);
        add(format!("bundle.{i}.pem"), pems(&s.bundle), 0o644);
        for (j, (_, fed)) in resp.federated_bundles.iter().enumerate() {
            add(format!("federated_bundle.{i}.{j}.pem"), pems(fed), 0o644);
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tpm_svids_are_written_with_their_key_file_and_auth_owner_only() {
        let resp = lpb::TpmX509svidResponse {
            svids: vec![lpb::TpmX509svid {
                spiffe_id: "spiffe://example.org/db".into(),
                x509_svid: vec![],
                tss2_private_key: "-----BEGIN TSS2 PRIVATE KEY-----\n".into(),
                key_auth: b"secret".to_vec(),
                bundle: vec![],
                hint: String::new(),
            }],
            federated_bundles: Default::default(),
        };
        let files = tpm_files(&resp, 1);
        let names: Vec<(&str, u32)> = files.iter().map(|f| (f.name.as_str(), f.mode)).collect();
        assert_eq!(
            names,
            [
                ("svid.1.pem", 0o644),
                ("svid.1.tss2.key", 0o600),
                ("svid.1.auth", 0o600),
                ("bundle.1.pem", 0o644)
            ]
        );
        assert_eq!(files[2].data, b"secret");
        assert!(tpm_text(&resp).contains("spiffe://example.org/db"));
    }
}

//! The evidence node attestors exchange, in one place for both halves: what the agent
//! sends for `aws_iid`, `azure_msi`, `k8s_psat` and `x509pop`, and for `x509pop` the challenge,
//! the answer and exactly which bytes the node key signs. (`gcp_iit` sends the
//! identity token as it is; the TPM attestors' formats live in `tessera-tpm`.) Bytes
//! travel as standard base64 in JSON, through `serde_with`'s `Base64`.

pub mod aws_iid;
pub mod azure_msi;
pub mod gcp_iit;
pub mod k8s_psat;
pub mod x509pop;

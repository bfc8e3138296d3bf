//! TPM 2.0 for Tessera, in two halves.
//!
//! **The device half** (the agent): [`device::TpmDevice`] is the small trait of TPM
//! operations the agent needs (EK public areas and certificates, keys under the SRK,
//! TPM2_Certify, TPM2_ActivateCredential, TPM2_Sign), spoken in TPM wire structures
//! so that the tss-esapi backend ([`device::esapi`], cargo feature `esapi`, on by
//! default) and a later pure-Rust backend fit the same seam. [`device::Tpm`] shares
//! one device behind one mutex. On top: [`keys::TpmKey`] / [`keys::TpmKeyManager`]
//! (the agent's own keys in the TPM), [`provision`] (DevID provisioning, `tpm info`),
//! and the agent side of both attestors.
//!
//! **The verifier half** (the server; pure Rust, no TPM, no libtss2, always
//! compiled): [`structures`] (TPMT_PUBLIC, TPMS_ATTEST, TPMT_SIGNATURE, object names,
//! public area to SubjectPublicKeyInfo), [`ek`] (standard EK templates and the check
//! that a public area is one), [`ak`], [`certify`] (TPM2_Certify signatures),
//! [`credential`] (MakeCredential in software for RSA and ECC EKs), [`chain`] (EK and
//! DevID certificate paths), and the server side of both attestors.
//!
//! **The attestors**: [`devid`] (`tpm_devid`) and [`ek_attest`] (`tpm`). Each has
//! serde payload, challenge and response types (JSON, bytes in base64), an agent
//! function that builds the payload and a state that answers the challenge, and a
//! verifier whose `start` checks the payload and returns the challenge with a
//! single-use pending state whose `finish` checks the answer.
//!
//! ```text
//! agent                                   server
//! devid::build_payload(tpm, id, opts) ->  DevIdVerifier::start(&payload)
//!                                     <-  (challenge, pending)
//! state.answer(tpm, &challenge)       ->  pending.finish(&response) -> NodeAttestation
//! ```
//!
//! # Notes
//!
//! - Tests: `cargo test -p tessera-tpm` runs the unit tests and, with the `esapi`
//!   feature, `tests/swtpm`, which starts real simulators through
//!   `scripts/swtpm.sh` (swtpm, swtpm-tools and tpm2-tools must be installed; the
//!   tests fail, never skip, without them).
//! - swtpm, as provisioned by `swtpm_setup --create-ek-cert`: the RSA EK (L-1) is
//!   persisted at 0x81010001 and the P-384 EK (H-3, userWithAuth set, so its
//!   password, empty, authorises ActivateCredential) at 0x81010016; both
//!   certificates are in NV, signed by `swtpm-localca` through an intermediate
//!   (`issuercert.pem`), with subject `CN=unknown`, a critical SAN directoryName
//!   (manufacturer `id:00001014`, model `swtpm`, version `id:20191023`) and EKU
//!   2.23.133.8.1. The P-256 EK (L-2) is neither persisted nor certified; the
//!   script certifies it and the backend re-creates it from the template.
//! - A TPM without a resource manager holds three transient objects, so the
//!   backend flushes everything but the SRK after each operation.
//! - libtss2 prints `WARNING:esys`/`ERROR:esys` lines to stderr when a TPM command
//!   fails, even one this crate expects to fail (a foreign key blob);
//!   `TSS2_LOG=all+none` silences them.

pub mod ak;
pub mod attest;
pub(crate) mod b64;
pub mod certify;
pub mod chain;
pub mod credential;
pub mod device;
pub mod devid;
pub mod ek;
pub mod ek_attest;
pub mod keys;
pub mod provision;
pub mod structures;
pub mod tcti;
pub mod verify;

pub use attest::{AgentOptions, AttestError, NodeAttestation};
pub use device::{DeviceError, KeyBlob, Tpm, TpmDevice};
pub use keys::{TpmKey, TpmKeyManager};
pub use tcti::Tcti;

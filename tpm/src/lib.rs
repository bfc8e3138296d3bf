//! TPM 2.0 for Tessera, in four parts:
//!
//! - **[`wire`]**: the TPM wire structures, marshalled and unmarshalled in pure
//!   Rust (TPMT_PUBLIC, TPMS_ATTEST, TPMT_SIGNATURE, object names, a public area as
//!   a SubjectPublicKeyInfo).
//! - **[`verifier`]**: what the server checks, with no TPM and no libtss2 (always
//!   compiled): the standard EK and AK templates and the checks that a public
//!   area is one ([`verifier::ek`], [`verifier::ak`]), TPM2_Certify and other TPM
//!   signatures ([`verifier::certify`], [`verifier::signature`]),
//!   MakeCredential in software for RSA and ECC EKs ([`verifier::credential`]),
//!   and EK and DevID certificate paths ([`verifier::chain`]).
//! - **[`device`]**: the agent's TPM. [`device::TpmDevice`] is the small trait of
//!   TPM operations the agent needs (EK public areas and certificates, keys under
//!   the SRK, TPM2_Certify, TPM2_ActivateCredential, TPM2_Sign, TPM2_Quote and
//!   TPM2_PCR_Read, TPM2_Import for tests), spoken in wire
//!   structures, with two backends behind it: tss-esapi (`device::esapi`, cargo
//!   feature `esapi`, on by default) and a pure-Rust one (`device::native`, cargo
//!   feature `native`: its own transports, command framing and an HMAC session
//!   salted to the SRK that encrypts the secret parameters), picked by
//!   [`device::Backend`];
//!   [`device::Tpm`] shares one device behind one mutex; [`device::keys`] holds
//!   the agent's own keys in the TPM ([`TpmKey`], [`TpmKeyManager`]);
//!   [`device::hierarchy`] the owner and endorsement passwords;
//!   [`device::sealing`] a secret only this TPM can recompute (the agent's SVID
//!   cache key);
//!   [`device::tcti`] says where the TPM is.
//! - **[`attestation`]**: the two node attestors, each both halves, named as they
//!   are everywhere: [`attestation::tpm_devid`] and [`attestation::tpm_ek`]. Each
//!   has serde payload, challenge and response types (JSON, bytes in base64), an
//!   agent side ([`attestation::Prover`]) that builds the payload and a state that
//!   answers the challenge, and a server side ([`attestation::Verifier`]) whose
//!   `start` checks the payload and returns the challenge with a single-use
//!   pending state whose `finish` checks the answer.
//!
//! On top, [`provision`] holds the operator's tools (DevID provisioning, `tpm info`),
//! and [`factory`] reads a DevID a vendor left at a persistent handle and in NV.
//!
//! ```text
//! agent                                    server
//! Prover::payload(tpm)                 ->  Verifier::start(&payload)
//!                                      <-  (challenge, pending)
//! AgentState::answer(tpm, &challenge)  ->  Pending::finish(&response) -> NodeAttestation
//! ```
//!
//! # Notes
//!
//! - Tests: `cargo test -p tessera-tpm` runs the unit tests and, with both
//!   backends built in (the default features), `tests/swtpm`, which runs every
//!   test once per backend and starts real simulators through
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

#![warn(missing_docs)]
pub mod attestation;
pub mod device;
pub mod factory;
pub mod provision;
pub mod tss2;
pub mod verifier;
pub mod wire;
pub mod workload;

pub use attestation::{AgentOptions, AttestError, NodeAttestation};
pub use device::keys::{TpmKey, TpmKeyManager};
pub use device::tcti::Tcti;
pub use device::{Backend, DeviceError, KeyBlob, Tpm, TpmDevice};
/// The EK and AK kinds, at the paths the agent's configuration names them by.
pub use verifier::{ak, ek};
pub use workload::TpmWorkloadKey;

//! End-to-end tests of tessera-tpm against real swtpm simulators, started and
//! provisioned by scripts/swtpm.sh: MakeCredential made in software opened by the
//! TPM, Certify checked in software, EK certificates from NV, both attestors' full
//! flows with their refusals, and TPM-held keys. One test binary, so the crate and
//! tss-esapi are linked once.

#![allow(
    clippy::expect_used,
    reason = "test code: a step that cannot be taken ends the test with its message"
)]
#![allow(
    clippy::unwrap_used,
    reason = "the harness helpers fail the test that called them, which is what a test wants"
)]

mod common;

mod certify;
mod credential;
mod devid_flow;
mod ek_certs;
mod ek_flow;
mod faults;
mod key_proof;
mod keys;
mod native;
mod quote;
mod sealing;
mod workload_keys;

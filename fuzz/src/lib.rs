//! Tessera's fuzz targets as plain functions, one per target, so that the
//! libFuzzer binaries (`fuzz_targets/`, built by cargo-fuzz) and the stable
//! replay test (`tests/replay.rs`, run by `cargo test`) run exactly the same
//! code on the same bytes.
//!
//! Each function takes the fuzzer's bytes, feeds them to one of Tessera's
//! parsers, and checks properties that must hold for every input, not only that
//! nothing panics: a parsed value prints back to what parses to the same value,
//! an accepted signature really verifies, the `:authority` adapter changes no
//! header but `:authority`. A property that does not hold panics with what was
//! wrong, which libFuzzer reports as a crash and the replay test as a failure.
//!
//! The targets, what they check and how to run them longer are described in
//! docs/SECURITY.md ("Fuzzing"); `scripts/fuzz.sh` runs them.

#![allow(
    clippy::expect_used,
    reason = "test code: a property that does not hold is a panic, which is how a fuzz target reports it"
)]

pub mod config;
pub mod csr;
pub mod der_pem;
pub mod fixtures;
pub mod h2_authority;
pub mod h2_requests;
pub mod join_token;
pub mod jwks_bundle;
pub mod jwt_svid;
pub mod seeds;
pub mod selector;
pub mod spiffe_id;
pub mod tpm_attestation;
pub mod tpm_wire;
pub mod tss2_key;

mod h2_judge;

/// A target's function: the fuzzer's bytes in, a panic for a broken property.
pub type Target = fn(&[u8]);

/// Every target: its name (the cargo-fuzz binary, and the directory of its
/// seeds and regression inputs) and its function.
pub const TARGETS: &[(&str, Target)] = &[
    ("config", config::run),
    ("csr", csr::run),
    ("der_pem", der_pem::run),
    ("h2_authority", h2_authority::run),
    ("h2_requests", h2_requests::run),
    ("join_token", join_token::run),
    ("jwks_bundle", jwks_bundle::run),
    ("jwt_svid", jwt_svid::run),
    ("selector", selector::run),
    ("spiffe_id", spiffe_id::run),
    ("tpm_attestation", tpm_attestation::run),
    ("tpm_wire", tpm_wire::run),
    ("tss2_key", tss2_key::run),
];

/// Splits fuzzer bytes into a selector byte and the rest, for targets that
/// drive several parsers (the seeds start with the byte of the parser they are
/// for, so the fuzzer keeps each one's inputs apart).
pub(crate) fn split_mode(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(m, rest)| (*m, rest))
}

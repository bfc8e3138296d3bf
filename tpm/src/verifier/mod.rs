//! The verifier half: everything the server checks about a TPM's evidence, in
//! pure Rust, with no TPM and no libtss2 (so the server builds without a TPM
//! software stack). The agent's side uses the same templates and checks, so both
//! agree on what a standard EK or an acceptable AK is.

pub mod ak;
pub mod certify;
pub mod chain;
pub mod credential;
pub mod ek;
pub mod key_proof;
pub mod quote;
pub mod signature;

//! libFuzzer entry point of the `jwks_bundle` target; the target itself is
//! `tessera_fuzz::jwks_bundle::run` (see its documentation for what it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera_fuzz::jwks_bundle::run(data));

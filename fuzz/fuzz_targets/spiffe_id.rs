//! libFuzzer entry point of the `spiffe_id` target; the target itself is
//! `tessera_fuzz::spiffe_id::run` (see its documentation for what it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera_fuzz::spiffe_id::run(data));

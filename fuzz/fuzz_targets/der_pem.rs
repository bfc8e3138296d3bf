//! libFuzzer entry point of the `der_pem` target; the target itself is
//! `tessera_fuzz::der_pem::run` (see its documentation for what it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera_fuzz::der_pem::run(data));

//! libFuzzer entry point of the `csr` target; the target itself is
//! `tessera_fuzz::csr::run` (see its documentation for what it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera_fuzz::csr::run(data));

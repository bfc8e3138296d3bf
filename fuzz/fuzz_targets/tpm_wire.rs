//! libFuzzer entry point of the `tpm_wire` target; the target itself is
//! `tessera_fuzz::tpm_wire::run` (see its documentation for what it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera_fuzz::tpm_wire::run(data));

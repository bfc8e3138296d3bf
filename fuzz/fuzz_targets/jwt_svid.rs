//! libFuzzer entry point of the `jwt_svid` target; the target itself is
//! `tessera_fuzz::jwt_svid::run` (see its documentation for what it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera_fuzz::jwt_svid::run(data));

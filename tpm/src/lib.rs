//! TPM 2.0 support (to be written).

//! PKCS#11 key store (to be written).

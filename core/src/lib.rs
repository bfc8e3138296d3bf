//! Tessera's core: SPIFFE identity types, selectors, registration entries, the
//! X509-SVID and JWT-SVID profiles, trust bundles, and the key seam that software,
//! PKCS#11 and TPM keys all implement.
//!
//! Little here does I/O. The exceptions are [`key::DiskKeyManager`] and [`fsutil`],
//! [`limits`], the connection caps and timeouts that the server's and the agent's
//! listeners share, and [`http`], the one-shot HTTP client their node attestors use.

pub mod attestation;
pub mod bundle;
pub mod clock;
pub mod config;
pub mod config_key;
pub mod der;
pub mod duration;
pub mod entry;
pub mod fsutil;
pub mod http;
pub mod jwt;
pub mod key;
pub mod limits;
pub mod output;
pub mod selector;
pub mod spiffe_id;
pub mod tls;
pub mod x509;

pub use bundle::{Bundle, JwtAuthority};
pub use clock::{Clock, SharedClock, SystemClock};
pub use entry::RegistrationEntry;
pub use selector::{Selector, SelectorSet};
pub use spiffe_id::{SpiffeId, TrustDomain};

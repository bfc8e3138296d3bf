//! Tessera's core: SPIFFE identity types, selectors, registration entries, the
//! X509-SVID and JWT-SVID profiles, trust bundles, and the key seam that software,
//! PKCS#11 and TPM keys all implement.
//!
//! Nothing here talks to the network. The exceptions to "no I/O" are
//! [`key::DiskKeyManager`] and [`fsutil`], and [`limits`], the connection caps and
//! timeouts that the server's and the agent's listeners share.

pub mod bundle;
pub mod clock;
pub mod config;
pub mod config_key;
pub mod der;
pub mod duration;
pub mod entry;
pub mod fsutil;
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

//! Tessera's core: SPIFFE identity types, selectors, registration entries, the
//! X509-SVID and JWT-SVID profiles, trust bundles, and the key seam that software,
//! PKCS#11 and TPM keys all implement.
//!
//! Types and rules only: nothing here reads files, listens or talks to the network.
//! What a running process needs from the operating system (configuration files,
//! secrets, atomic writes, key files, sockets, signals, logging, connection limits,
//! the node attestors' one-shot HTTP client) is in `tessera-process`.

#![warn(missing_docs)]
pub mod attestation;
pub mod bundle;
pub mod clock;
pub mod der;
pub mod duration;
pub mod entry;
pub mod failure;
pub mod jwt;
pub mod key;
pub mod pem;
pub mod selector;
pub mod spiffe_id;
pub mod tls;
pub mod workload_key;
pub mod x509;

pub use bundle::{Bundle, JwtAuthority};
pub use clock::{Clock, SharedClock, SystemClock};
pub use entry::RegistrationEntry;
pub use selector::{Selector, SelectorSet};
pub use spiffe_id::{SpiffeId, TrustDomain};
pub use workload_key::WorkloadKey;

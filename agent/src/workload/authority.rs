//! The `:authority` adapter of the Workload API's connections lives in its own
//! crate, `tessera-h2-authority`; this path re-exports it for code written
//! against the agent.

pub use tessera_h2_authority::{
    AuthorityFix, HEADER_BLOCK_TIMEOUT, HeaderDecoder, HeaderField, MAX_HEADER_BLOCK, fix_authority,
};

//! A transport adapter that lets Python and Java workloads reach the SPIFFE
//! Workload API over its Unix socket.
//!
//! gRPC clients built on grpc-core 1.57 and later (Python's grpcio, which
//! py-spiffe uses) send the percent-encoded socket path as the HTTP/2
//! `:authority` of every request on a Unix socket (`unix:/run/tessera/api.sock`
//! becomes `run%2Ftessera%2Fapi.sock`), and grpc-java sends the raw path. h2,
//! under tonic, parses `:authority` as a URI authority, fails, and resets the
//! stream with PROTOCOL_ERROR, so those workloads could never fetch an SVID.
//! h2 has no option to relax the check (hyperium/h2#487 is still open).
//!
//! [`fix_authority`] wraps the accepted socket. The server-to-client direction
//! passes through untouched. On the client-to-server direction the adapter
//! follows the HTTP/2 framing: every frame except HEADERS and CONTINUATION
//! passes through byte for byte (DATA payloads are read straight into the
//! caller's buffer when nothing is pending), and each header block is decoded
//! with an HPACK decoder that tracks the client's dynamic table, has its
//! `:authority` set to `localhost`, and is re-encoded with static-table
//! references and literals that add nothing to the dynamic table, so h2's
//! decoder needs no state from the adapter and the two tables cannot
//! disagree.
//!
//! Why always `localhost`: over a Unix socket the authority names nothing (the
//! socket path already is the peer, and the caller is identified from the
//! kernel, not from headers), nothing in Tessera reads it, and `localhost` is
//! what grpc-go, grpc-dart and Kubernetes send there. Rewriting every value,
//! valid or not, keeps one rule instead of a copy of h2's URI grammar. A
//! request without `:authority` is left without one.
//!
//! What is kept: header order and bytes, the never-indexed flag of sensitive
//! fields (RFC 7541 §6.2.3 asks intermediaries to keep it), dynamic table size
//! updates (forwarded, so h2 still enforces its SETTINGS_HEADER_TABLE_SIZE),
//! END_STREAM and the PRIORITY fields. Padding is dropped: it hides lengths
//! from observers on the wire, and there are none on a local socket. Blocks
//! are re-framed at 16,384 bytes, the smallest SETTINGS_MAX_FRAME_SIZE a
//! server may announce and the one tonic and hyper use unless configured.
//!
//! Malformed input never panics and never makes the adapter invent an error
//! of its own: at the first thing it cannot follow (a wrong preface, an HPACK
//! error, a header frame above 16,384 bytes, a block above 64 KiB, a broken
//! CONTINUATION sequence, a connection closed mid-frame) it hands on the
//! client's own bytes from that point, unchanged, and stays a plain pipe for
//! the rest of the connection. h2 then judges exactly what the client sent and
//! answers with its own GOAWAY or RST_STREAM, as it would without the adapter.
//! h2's table never saw the entries the adapter consumed, so a later reference
//! to one of them fails with COMPRESSION_ERROR rather than decoding wrongly.
//!
//! What a client can make it hold: a header block is buffered until it is
//! complete, at most [`MAX_HEADER_BLOCK`] bytes (64 KiB), and for at most
//! [`HEADER_BLOCK_TIMEOUT`] (5 s) once the adapter has seen the header of its
//! HEADERS frame: a client that starts a block and does not finish it in time
//! has its connection closed. h2 under tonic accepts header lists up to 16 KiB
//! (hyper's default), and a header list h2 accepts can encode to at most
//! about 60 KiB (a Huffman code is up to 30 bits per byte), so neither limit
//! refuses a request h2 would serve.
//!
//! The HPACK decoder is written here from RFC 7541 rather than taken from a
//! crate: of the published crates, httlib-hpack panics on truncated input,
//! and hpack/fluke-hpack/loona-hpack rebuild a hash map of the whole Huffman
//! code for every string and do not report the never-indexed flag.
//!
//! # Layout
//!
//! - `frame`: HTTP/2 frame headers, HEADERS payloads, and writing a
//!   header block back out as HEADERS and CONTINUATION frames;
//! - `hpack`: the RFC 7541 decoder (dynamic table, Huffman) and the encoder that
//!   writes fields without touching the dynamic table;
//! - `rewrite`: the state machine over the client's bytes, without I/O:
//!   [`Rewriter`] takes bytes as they arrive and gives back what h2 must read, and
//!   [`rewrite`] does it for a whole byte string (what a fuzz target needs);
//! - `conn`: [`AuthorityFix`], the same state machine on a socket, with the
//!   header block timeout.

#![warn(missing_docs)]
mod conn;
mod frame;
mod hpack;
mod rewrite;
#[cfg(test)]
mod testutil;

pub use conn::{AuthorityFix, fix_authority};
pub use hpack::{HeaderDecoder, HeaderField, HpackError};
pub use rewrite::{Malformed, Rewriter, Rewritten, rewrite};

/// The value every `:authority` is rewritten to.
pub const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";

/// Largest header block (HEADERS plus CONTINUATION frames, as received) the
/// adapter buffers. hyper's default header list limit is 16 KiB decoded, which
/// Huffman coding can stretch to at most 30/8 of that on the wire; a bigger
/// block is handed to h2 as it is, and h2 refuses it.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// How long a header block may take from the first byte of its HEADERS frame
/// to the end of its last frame. A client sends a block in one write; one that
/// is still incomplete after this is holding memory, and its connection is
/// closed.
pub const HEADER_BLOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

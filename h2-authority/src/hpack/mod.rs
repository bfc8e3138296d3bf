//! HPACK (RFC 7541): a decoder that follows the client's dynamic table
//! (`decode`), an encoder that writes fields without touching any table
//! (`encode`), the Huffman code (`huffman`) and the static table (`table`).

mod decode;
pub(crate) mod encode;
mod huffman;
pub(crate) mod table;

pub(crate) use decode::Decoder;
pub(crate) use encode::{encode_field, encode_size_update};

use std::fmt;

/// Largest decoded header list (RFC 9113 §6.5.2 accounting: name, value and 32
/// per field). Bounds what a small block can expand to through the dynamic
/// table; four times what h2 accepts behind it.
const MAX_HEADER_LIST: usize = 64 * 1024;

/// Largest dynamic table the adapter keeps for a client. h2 announces the
/// default 4,096 and rejects larger size updates itself.
pub(crate) const MAX_TABLE_SIZE: usize = 1 << 16;

/// The dynamic table size both ends start with (RFC 9113 §6.5.2).
pub(crate) const INITIAL_TABLE_SIZE: usize = 4_096;

/// Why a header block could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HpackError {
    /// The block ends in the middle of a representation.
    #[error("header block ends inside a field")]
    Truncated,
    /// An integer above `u32::MAX`, or encoded in more than five continuation bytes.
    #[error("integer too large")]
    Integer,
    /// An index into neither the static nor the dynamic table.
    #[error("index {0} is in neither table")]
    Index(usize),
    /// A Huffman string that is not a sequence of codes.
    #[error("invalid Huffman code")]
    Huffman,
    /// A Huffman string holding the end-of-string symbol.
    #[error("EOS symbol inside a Huffman string")]
    HuffmanEos,
    /// A Huffman string whose padding is too long or not all ones.
    #[error("Huffman padding longer than 7 bits or not EOS")]
    HuffmanPadding,
    /// A dynamic table size update after the first header field.
    #[error("dynamic table size update after a header field")]
    LateSizeUpdate,
    /// A dynamic table size larger than the adapter keeps.
    #[error("dynamic table size {0} above the adapter's limit")]
    TableSize(usize),
    /// A block that decodes to more than the adapter's header list limit.
    #[error("decoded header list above {MAX_HEADER_LIST} bytes")]
    ListTooLarge,
}

/// One decoded representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Repr<'a> {
    /// A dynamic table size update (§6.3).
    SizeUpdate(usize),
    /// A header field, with whether it must never be indexed (§6.2.3).
    Field {
        name: &'a [u8],
        value: &'a [u8],
        never_indexed: bool,
    },
}

/// A decoded header field: name and value.
pub type HeaderField = (Vec<u8>, Vec<u8>);

/// An HPACK decoder for tools that read HTTP/2 by hand: the end-to-end tests
/// drive Workload API connections byte by byte (to split a request around a
/// fork) and decode the agent's answers with it.
pub struct HeaderDecoder(Decoder);

impl fmt::Debug for HeaderDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeaderDecoder")
            .field("table_entries", &self.0.entries())
            .finish()
    }
}

impl Default for HeaderDecoder {
    fn default() -> Self {
        HeaderDecoder(Decoder::new(INITIAL_TABLE_SIZE))
    }
}

impl HeaderDecoder {
    /// Decodes the next complete header block of a connection into its
    /// (name, value) pairs, following the dynamic table across blocks.
    pub fn decode(&mut self, block: &[u8]) -> Result<Vec<HeaderField>, HpackError> {
        let mut out = Vec::new();
        self.0.decode(block, |repr| {
            if let Repr::Field { name, value, .. } = repr {
                out.push((name.to_vec(), value.to_vec()));
            }
        })?;
        Ok(out)
    }
}

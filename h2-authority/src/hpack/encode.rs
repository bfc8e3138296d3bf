//! The HPACK encoder the adapter re-encodes with: static-table references and
//! literals without indexing, so the output needs no dynamic table state.

use super::table::STATIC_TABLE;

/// A dynamic table size update (§6.3), forwarded as the client sent it.
pub(crate) fn encode_size_update(out: &mut Vec<u8>, size: usize) {
    put_int(out, 0x20, 5, size);
}

/// RFC 7541 §5.1 integer with `flags` in the bits above the prefix.
pub(crate) fn put_int(out: &mut Vec<u8>, flags: u8, prefix: u32, value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        out.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// A raw (not Huffman-coded) string literal.
fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    put_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// Encodes one field without touching the dynamic table: an indexed static
/// entry when name and value match one, else a literal without indexing (or
/// never indexed, as received) with the name from the static table if it is
/// there.
pub(crate) fn encode_field(out: &mut Vec<u8>, name: &[u8], value: &[u8], never_indexed: bool) {
    let mut name_index = 0;
    for (i, &(n, v)) in STATIC_TABLE.iter().enumerate() {
        if n != name {
            continue;
        }
        if v == value && !never_indexed {
            put_int(out, 0x80, 7, i + 1);
            return;
        }
        if name_index == 0 {
            name_index = i + 1;
        }
    }
    let flags = if never_indexed { 0x10 } else { 0x00 };
    put_int(out, flags, 4, name_index);
    if name_index == 0 {
        put_string(out, name);
    }
    put_string(out, value);
}

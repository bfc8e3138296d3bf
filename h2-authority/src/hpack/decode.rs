//! The HPACK decoder: integers and strings (§5), the dynamic table (§4) and the
//! representations (§6), with the adapter's limits on table and list size.

use std::collections::VecDeque;

use super::huffman::huffman_decode;
use super::table::STATIC_TABLE;
use super::{HpackError, MAX_HEADER_LIST, MAX_TABLE_SIZE, Repr};

/// A dynamic table entry: name and value in one allocation.
struct Entry {
    field: Box<[u8]>,
    name_len: usize,
}

impl Entry {
    fn new(name: &[u8], value: &[u8]) -> Entry {
        let mut field = Vec::with_capacity(name.len() + value.len());
        field.extend_from_slice(name);
        field.extend_from_slice(value);
        Entry {
            field: field.into_boxed_slice(),
            name_len: name.len(),
        }
    }

    fn parts(&self) -> (&[u8], &[u8]) {
        self.field.split_at(self.name_len)
    }

    /// RFC 7541 §4.1.
    fn size(&self) -> usize {
        self.field.len() + 32
    }
}

/// A decoder that follows the encoder's dynamic table across header blocks.
pub(crate) struct Decoder {
    /// Newest entry first, so index 62 is `table[0]`.
    table: VecDeque<Entry>,
    size: usize,
    max_size: usize,
    name_buf: Vec<u8>,
    value_buf: Vec<u8>,
}

impl Decoder {
    /// A decoder whose dynamic table may hold `max_size` bytes (RFC 7541 §4.1
    /// sizes) until a size update says otherwise.
    pub(crate) fn new(max_size: usize) -> Decoder {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max_size,
            name_buf: Vec::new(),
            value_buf: Vec::new(),
        }
    }

    /// How many entries the dynamic table holds.
    pub(crate) fn entries(&self) -> usize {
        self.table.len()
    }

    /// The dynamic table's size (§4.1) and its maximum.
    #[cfg(test)]
    pub(crate) fn sizes(&self) -> (usize, usize) {
        (self.size, self.max_size)
    }

    /// Decodes one complete header block, updating the dynamic table, and
    /// hands each representation to `sink` in order.
    pub(crate) fn decode(
        &mut self,
        block: &[u8],
        mut sink: impl FnMut(Repr<'_>),
    ) -> Result<(), HpackError> {
        let mut pos = 0;
        let mut fields_seen = false;
        let mut list_size = 0usize;
        while let Some(&b) = block.get(pos) {
            if b & 0x20 != 0 && b & 0xc0 == 0 {
                // Size updates belong at the start of a block (§4.2); h2 agrees.
                if fields_seen {
                    return Err(HpackError::LateSizeUpdate);
                }
                let size = read_int(block, &mut pos, 5)?;
                if size > MAX_TABLE_SIZE {
                    return Err(HpackError::TableSize(size));
                }
                self.max_size = size;
                self.evict(0);
                sink(Repr::SizeUpdate(size));
                continue;
            }
            fields_seen = true;
            if b & 0x80 != 0 {
                let index = read_int(block, &mut pos, 7)?;
                let (name, value) = lookup(&self.table, index)?;
                account(&mut list_size, name, value)?;
                sink(Repr::Field {
                    name,
                    value,
                    never_indexed: false,
                });
                continue;
            }
            let (prefix, indexing, never_indexed) = if b & 0x40 != 0 {
                (6, true, false)
            } else {
                (4, false, b & 0x10 != 0)
            };
            let index = read_int(block, &mut pos, prefix)?;
            let name = if index == 0 {
                read_string(block, &mut pos, &mut self.name_buf)?
            } else {
                lookup(&self.table, index)?.0
            };
            let value = read_string(block, &mut pos, &mut self.value_buf)?;
            account(&mut list_size, name, value)?;
            sink(Repr::Field {
                name,
                value,
                never_indexed,
            });
            if indexing {
                let entry = Entry::new(name, value);
                self.insert(entry);
            }
        }
        Ok(())
    }

    /// RFC 7541 §4.4: evict to make room; an entry larger than the table
    /// empties it and is not added.
    fn insert(&mut self, entry: Entry) {
        let size = entry.size();
        if size > self.max_size {
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict(size);
        self.size += size;
        self.table.push_front(entry);
    }

    /// Evicts until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            let Some(old) = self.table.pop_back() else {
                self.size = 0;
                return;
            };
            self.size -= old.size();
        }
    }
}

fn account(list_size: &mut usize, name: &[u8], value: &[u8]) -> Result<(), HpackError> {
    *list_size += name.len() + value.len() + 32;
    if *list_size > MAX_HEADER_LIST {
        return Err(HpackError::ListTooLarge);
    }
    Ok(())
}

fn lookup(table: &VecDeque<Entry>, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
    match index {
        0 => Err(HpackError::Index(0)),
        1..=61 => Ok(STATIC_TABLE[index - 1]),
        _ => table
            .get(index - 62)
            .map(Entry::parts)
            .ok_or(HpackError::Index(index)),
    }
}

/// RFC 7541 §5.1. Values above u32::MAX are refused (nothing in HTTP/2 needs
/// them), as are encodings longer than five continuation bytes.
fn read_int(block: &[u8], pos: &mut usize, prefix: u32) -> Result<usize, HpackError> {
    let first = *block.get(*pos).ok_or(HpackError::Truncated)?;
    *pos += 1;
    let max = (1u8 << prefix) - 1;
    let mut value = u64::from(first & max);
    if value < u64::from(max) {
        return Ok(value as usize);
    }
    let mut shift = 0;
    loop {
        let b = *block.get(*pos).ok_or(HpackError::Truncated)?;
        *pos += 1;
        value += u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 28 {
            return Err(HpackError::Integer);
        }
    }
    u32::try_from(value)
        .map(|v| v as usize)
        .map_err(|_| HpackError::Integer)
}

/// RFC 7541 §5.2: a string literal, borrowed from the block when raw, decoded
/// into `buf` when Huffman-coded.
fn read_string<'a>(
    block: &'a [u8],
    pos: &mut usize,
    buf: &'a mut Vec<u8>,
) -> Result<&'a [u8], HpackError> {
    let huffman = block.get(*pos).ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = read_int(block, pos, 7)?;
    let raw = block
        .get(*pos..pos.saturating_add(len))
        .ok_or(HpackError::Truncated)?;
    *pos += len;
    if !huffman {
        return Ok(raw);
    }
    buf.clear();
    huffman_decode(raw, buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hpack::INITIAL_TABLE_SIZE;
    use crate::hpack::encode::put_int;
    use crate::testutil::{decode_list, fields, hex, rfc_requests};

    #[test]
    fn integers_follow_the_rfc() {
        let mut pos = 0;
        assert_eq!(read_int(&[0xea], &mut pos, 5), Ok(10));
        pos = 0;
        assert_eq!(read_int(&[0x1f, 0x9a, 0x0a], &mut pos, 5), Ok(1337));
        assert_eq!(pos, 3);
        for prefix in 4..=7 {
            for value in (0..300).chain([1337, 4096, 65_535, 1 << 20, u32::MAX as usize]) {
                let mut enc = Vec::new();
                put_int(&mut enc, 0, prefix, value);
                let mut pos = 0;
                assert_eq!(read_int(&enc, &mut pos, prefix), Ok(value));
                assert_eq!(pos, enc.len());
            }
        }
        pos = 0;
        assert_eq!(
            read_int(&[0x1f, 0x80], &mut pos, 5),
            Err(HpackError::Truncated)
        );
        pos = 0;
        assert_eq!(
            read_int(&[0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], &mut pos, 5),
            Err(HpackError::Integer)
        );
        pos = 0;
        assert_eq!(
            read_int(&[0x1f, 0xff, 0xff, 0xff, 0xff, 0x0f], &mut pos, 5),
            Err(HpackError::Integer)
        );
    }

    #[test]
    fn decodes_rfc_requests_with_the_dynamic_table() {
        let mut raw_dec = Decoder::new(INITIAL_TABLE_SIZE);
        let mut huff_dec = Decoder::new(INITIAL_TABLE_SIZE);
        for (raw, huffman, list) in rfc_requests() {
            assert_eq!(decode_list(&mut raw_dec, &raw).unwrap(), list);
            assert_eq!(decode_list(&mut huff_dec, &huffman).unwrap(), list);
        }
        assert_eq!(raw_dec.size, 164);
        assert_eq!(huff_dec.size, 164);
        assert_eq!(raw_dec.table.len(), 3);
    }

    #[test]
    fn decodes_rfc_responses_with_eviction() {
        // C.5 (raw) and C.6 (Huffman), with SETTINGS_HEADER_TABLE_SIZE 256.
        let lists = [
            fields(&[
                (":status", "302"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com"),
            ]),
            fields(&[
                (":status", "307"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com"),
            ]),
            fields(&[
                (":status", "200"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
                ("location", "https://www.example.com"),
                ("content-encoding", "gzip"),
                (
                    "set-cookie",
                    "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
                ),
            ]),
        ];
        let raw = [
            "4803333032580770726976617465611d4d6f6e2c203231204f637420323031332032303a31333a32312047\
             4d546e1768747470733a2f2f7777772e6578616d706c652e636f6d",
            "4803333037c1c0bf",
            "88c1611d4d6f6e2c203231204f637420323031332032303a31333a323220474d54c05a04677a6970773866\
             6f6f3d4153444a4b48514b425a584f5157454f50495541585157454f49553b206d61782d6167653d333630\
             303b2076657273696f6e3d31",
        ];
        let huffman = [
            "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863\
             c78f0b97c8e9ae82ae43d3",
            "4883640effc1c0bf",
            "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b3\
             35dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
        ];
        for blocks in [raw, huffman] {
            let mut dec = Decoder::new(256);
            for (block, list) in blocks.iter().zip(&lists) {
                assert_eq!(&decode_list(&mut dec, &hex(block)).unwrap(), list);
            }
            // After C.5.3: set-cookie, content-encoding, date (:22).
            assert_eq!(dec.size, 215);
            assert_eq!(dec.table.len(), 3);
            assert_eq!(lookup(&dec.table, 64).unwrap().0, b"date");
        }
    }

    #[test]
    fn malformed_blocks_are_errors() {
        let cases: [(&str, HpackError); 6] = [
            ("80", HpackError::Index(0)),
            ("be", HpackError::Index(62)),
            ("ff80", HpackError::Truncated),
            ("400a637573", HpackError::Truncated),
            ("4001", HpackError::Truncated),
            ("04 81 00", HpackError::HuffmanPadding),
        ];
        for (block, err) in cases {
            let mut dec = Decoder::new(INITIAL_TABLE_SIZE);
            assert_eq!(decode_list(&mut dec, &hex(block)), Err(err), "{block}");
        }

        // A small block that would expand beyond the list limit through the
        // dynamic table.
        let mut block = vec![0x40, 0x01, b'x'];
        put_int(&mut block, 0, 7, 4000);
        block.extend(std::iter::repeat_n(b'v', 4000));
        block.extend(std::iter::repeat_n(0xbe, 300));
        let mut dec = Decoder::new(INITIAL_TABLE_SIZE);
        assert_eq!(decode_list(&mut dec, &block), Err(HpackError::ListTooLarge));
    }
}

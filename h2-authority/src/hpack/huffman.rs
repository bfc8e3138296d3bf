//! The HPACK Huffman code (RFC 7541 Appendix B) and its decoder.

use super::HpackError;

/// RFC 7541 Appendix B, as the code length of each symbol (0..=255, then EOS).
/// The code is canonical: within one length, codes increase with the symbol,
/// and each length starts where the previous one ended, shifted left. So the
/// lengths alone determine every code (the tests check codes against the
/// RFC's).
const HUFFMAN_CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, // 0x00
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 0x10
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, // 0x20 ' '..'/'
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, // 0x30 '0'..'?'
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, // 0x40 '@'..'O'
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, // 0x50 'P'..'_'
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, // 0x60 '`'..'o'
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, // 0x70 'p'..0x7f
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, // 0x80
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, // 0x90
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, // 0xa0
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, // 0xb0
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, // 0xc0
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, // 0xd0
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, // 0xe0
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, // 0xf0
    30, // EOS
];

const EOS: u16 = 256;
const MAX_CODE_LEN: usize = 30;

/// Canonical-code decoding tables: the codes of length `l` are
/// `first[l] .. first[l] + count[l]`, for the symbols
/// `symbols[offset[l]..][..count[l]]`.
struct HuffmanTables {
    first: [u32; MAX_CODE_LEN + 1],
    count: [u32; MAX_CODE_LEN + 1],
    offset: [u16; MAX_CODE_LEN + 1],
    symbols: [u16; 257],
}

static HUFFMAN: HuffmanTables = huffman_tables();

const fn huffman_tables() -> HuffmanTables {
    let mut count = [0u32; MAX_CODE_LEN + 1];
    let mut s = 0;
    while s < 257 {
        count[HUFFMAN_CODE_LENGTHS[s] as usize] += 1;
        s += 1;
    }
    let mut first = [0u32; MAX_CODE_LEN + 1];
    let mut offset = [0u16; MAX_CODE_LEN + 1];
    let mut symbols = [0u16; 257];
    let mut code = 0u32;
    let mut next = 0usize;
    let mut len = 1;
    while len <= MAX_CODE_LEN {
        first[len] = code;
        offset[len] = next as u16;
        let mut s = 0;
        while s < 257 {
            if HUFFMAN_CODE_LENGTHS[s] as usize == len {
                symbols[next] = s as u16;
                next += 1;
            }
            s += 1;
        }
        code = (code + count[len]) << 1;
        len += 1;
    }
    HuffmanTables {
        first,
        count,
        offset,
        symbols,
    }
}

/// RFC 7541 §5.2: decodes bit by bit against the canonical tables; padding
/// must be at most 7 bits of the EOS prefix (all ones), and EOS itself is an
/// error.
pub(crate) fn huffman_decode(src: &[u8], dst: &mut Vec<u8>) -> Result<(), HpackError> {
    dst.reserve(src.len() + src.len() / 2);
    let mut code = 0u32;
    let mut len = 0usize;
    for &byte in src {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            let i = code.wrapping_sub(HUFFMAN.first[len]);
            if i < HUFFMAN.count[len] {
                let symbol = HUFFMAN.symbols[usize::from(HUFFMAN.offset[len]) + i as usize];
                if symbol == EOS {
                    return Err(HpackError::HuffmanEos);
                }
                dst.push(symbol as u8);
                code = 0;
                len = 0;
            } else if len == MAX_CODE_LEN {
                // The code is complete, so this cannot happen; it keeps `len`
                // inside the tables whatever they hold.
                return Err(HpackError::Huffman);
            }
        }
    }
    if len > 7 || code != (1 << len) - 1 {
        return Err(HpackError::HuffmanPadding);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::hex;

    /// The canonical code of a symbol, from the decoder's tables.
    fn code_of(symbol: u16) -> (u32, usize) {
        let len = usize::from(HUFFMAN_CODE_LENGTHS[usize::from(symbol)]);
        let start = usize::from(HUFFMAN.offset[len]);
        let rank = HUFFMAN.symbols[start..]
            .iter()
            .position(|&s| s == symbol)
            .unwrap();
        (HUFFMAN.first[len] + rank as u32, len)
    }

    /// Test-only Huffman encoder, to feed the decoder strings the RFC has no
    /// example for.
    fn huffman_encode(s: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut acc = 0u64;
        let mut bits = 0;
        for &b in s {
            let (code, len) = code_of(u16::from(b));
            acc = (acc << len) | u64::from(code);
            bits += len;
            while bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        if bits > 0 {
            let pad = 8 - bits;
            out.push(((acc << pad) | ((1 << pad) - 1)) as u8);
        }
        out
    }

    #[test]
    fn huffman_code_is_canonical_and_matches_the_rfc() {
        // Every bit string is covered: the last length ends exactly at 2^30.
        assert_eq!(
            HUFFMAN.first[MAX_CODE_LEN] + HUFFMAN.count[MAX_CODE_LEN],
            1 << 30
        );
        // (symbol, code, length) from RFC 7541 Appendix B, one or more per
        // code length.
        let rfc: [(u16, u32, usize); 27] = [
            (0, 0x1ff8, 13),
            (1, 0x7fffd8, 23),
            (9, 0xffffea, 24),
            (10, 0x3ffffffc, 30),
            (11, 0xfffffe9, 28),
            (22, 0x3ffffffe, 30),
            (b' '.into(), 0x14, 6),
            (b'!'.into(), 0x3f8, 10),
            (b'#'.into(), 0xffa, 12),
            (b'$'.into(), 0x1ff9, 13),
            (b'%'.into(), 0x15, 6),
            (b'&'.into(), 0xf8, 8),
            (b'\''.into(), 0x7fa, 11),
            (b'0'.into(), 0x0, 5),
            (b':'.into(), 0x5c, 7),
            (b'<'.into(), 0x7ffc, 15),
            (b'\\'.into(), 0x7fff0, 19),
            (b'^'.into(), 0x3ffc, 14),
            (b't'.into(), 0x9, 5),
            (128, 0xfffe6, 20),
            (153, 0x1fffdc, 21),
            (129, 0x3fffd2, 22),
            (199, 0x1ffffec, 25),
            (192, 0x3ffffe0, 26),
            (203, 0x7ffffde, 27),
            (254, 0x7fffff0, 27),
            (EOS, 0x3fffffff, 30),
        ];
        for (symbol, code, len) in rfc {
            assert_eq!(code_of(symbol), (code, len), "symbol {symbol}");
        }
    }

    #[test]
    fn huffman_decodes_the_rfc_examples() {
        let cases = [
            ("f1e3c2e5f23a6ba0ab90f4ff", "www.example.com"),
            ("a8eb10649cbf", "no-cache"),
            ("25a849e95ba97d7f", "custom-key"),
            ("25a849e95bb8e8b4bf", "custom-value"),
            ("6402", "302"),
            ("aec3771a4b", "private"),
            (
                "d07abe941054d444a8200595040b8166e082a62d1bff",
                "Mon, 21 Oct 2013 20:13:21 GMT",
            ),
            (
                "9d29ad171863c78f0b97c8e9ae82ae43d3",
                "https://www.example.com",
            ),
        ];
        for (coded, plain) in cases {
            let mut out = Vec::new();
            huffman_decode(&hex(coded), &mut out).unwrap();
            assert_eq!(out, plain.as_bytes());
            assert_eq!(huffman_encode(plain.as_bytes()), hex(coded));
        }
    }

    #[test]
    fn huffman_round_trips_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        for s in [all.clone(), all.iter().rev().copied().collect(), vec![]] {
            let mut out = Vec::new();
            huffman_decode(&huffman_encode(&s), &mut out).unwrap();
            assert_eq!(out, s);
        }
        for b in 0..=255u8 {
            let mut out = Vec::new();
            huffman_decode(&huffman_encode(&[b, b'a', b]), &mut out).unwrap();
            assert_eq!(out, [b, b'a', b]);
        }
    }

    #[test]
    fn huffman_rejects_bad_padding_and_eos() {
        let mut out = Vec::new();
        // '0' is 00000; padding 000 is not a prefix of EOS.
        assert_eq!(
            huffman_decode(&[0x00], &mut out),
            Err(HpackError::HuffmanPadding)
        );
        // 'a' then 11 bits of ones: padding longer than 7 bits.
        assert_eq!(
            huffman_decode(&[0x1f, 0xff], &mut out),
            Err(HpackError::HuffmanPadding)
        );
        // A whole EOS symbol.
        assert_eq!(
            huffman_decode(&[0xff, 0xff, 0xff, 0xff], &mut out),
            Err(HpackError::HuffmanEos)
        );
        // A lone 0xff: 8 bits of padding.
        assert_eq!(
            huffman_decode(&[0xff], &mut out),
            Err(HpackError::HuffmanPadding)
        );
    }
}

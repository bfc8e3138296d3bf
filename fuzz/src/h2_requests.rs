//! `h2_requests`: the fuzzer's bytes as a script of gRPC-like requests (header
//! lists, `:authority` values such as grpcio's percent-encoded socket path or
//! arbitrary bytes, and how each field is encoded: indexed, with or without
//! incremental indexing, never indexed, Huffman or raw, table size updates,
//! CONTINUATION frames, padding, priority, DATA and PING frames in between).
//!
//! An HPACK encoder of this file's own writes the script twice, keeping a
//! dynamic table for each: once with the script's `:authority` values and
//! framing (what a client sends), once with `localhost` in their place and
//! each header block in one HEADERS frame without padding, as the adapter
//! frames blocks (what h2 would read had the client sent that). h2 then judges
//! the first through the adapter and the second directly, and both must come
//! out the same: the same requests accepted, with the same method, path,
//! scheme, authority and headers, and the connection ending the same way. The
//! adapter must also follow every such connection to its end, since the script
//! stays within its limits.
//!
//! Why the second is framed as the adapter frames: h2 (0.4.20) judges a
//! header block differently depending on how it is cut into frames. A field
//! that makes a request malformed (`te` other than `trailers`, or a
//! connection-specific field such as `connection`) is forgotten when the
//! field after it is split across a HEADERS/CONTINUATION boundary, and h2
//! then accepts the request; in one frame it resets the stream, as RFC 9113
//! §8.2.2 asks. The adapter writes blocks whole, so h2 behind it takes the
//! strict path (found by this target).
//!
//! Where [`crate::h2_authority`] finds what raw bytes do to the adapter, this
//! target reaches deep into valid traffic: dynamic table references across
//! blocks and evictions, which a byte-level mutator rarely keeps consistent.

use crate::h2_authority::PREFACE;
use crate::h2_judge::judge;

/// A reader of the script from the fuzzer's bytes; reads past the end give 0.
struct Script<'a>(&'a [u8]);

impl Script<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n.max(1)
    }
    fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1).min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head.to_vec()
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

const AUTHORITIES: &[&str] = &[
    // grpcio (grpc-core 1.57 and later) on unix:/run/tessera/agent/public/api.sock
    "run%2Ftessera%2Fagent%2Fpublic%2Fapi.sock",
    // grpc-java's raw path
    "/run/tessera/agent/public/api.sock",
    "localhost",
    "unix:/tmp/x.sock",
    "example.org:8080",
    "[::1]:443",
    "",
];

const NAMES: &[&str] = &[
    "content-type",
    "te",
    "grpc-timeout",
    "grpc-accept-encoding",
    "user-agent",
    "workload.spiffe.io",
    "x-custom",
    "accept",
    "cache-control",
];

const PATHS: &[&str] = &[
    "/SpiffeWorkloadAPI/FetchX509SVID",
    "/SpiffeWorkloadAPI/FetchJWTSVID",
    "/",
    "/index.html",
];

/// One field of a request, with how it is to be encoded.
struct Field {
    name: Vec<u8>,
    value: Vec<u8>,
    /// 0: indexed when the table has it; 1: incremental indexing; 2: without
    /// indexing; 3: never indexed.
    repr: u8,
    name_indexed: bool,
    huffman_name: bool,
    huffman_value: bool,
}

struct Request {
    fields: Vec<Field>,
    size_update: Option<usize>,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    padding: Option<u8>,
    /// Sizes of the block's frames after the first (at most four of them).
    cuts: Vec<usize>,
    /// A DATA frame after the block (with END_STREAM) when the block does not end the stream.
    data: Option<Vec<u8>>,
    ping_before: bool,
}

fn token(s: &mut Script<'_>, max: usize) -> Vec<u8> {
    // Mostly printable, so that h2 accepts most requests and the comparison
    // has something to compare.
    s.bytes(max)
        .into_iter()
        .map(|b| {
            if b & 0x80 == 0 {
                b"abcdefghijklmnopqrstuvwxyz0123456789-._~/%:"[usize::from(b) % 43]
            } else {
                b & 0x7f
            }
        })
        .collect()
}

fn request(s: &mut Script<'_>) -> Request {
    let mut fields = Vec::new();
    fn push(fields: &mut Vec<Field>, s: &mut Script<'_>, name: Vec<u8>, value: Vec<u8>) {
        let bits = s.byte();
        fields.push(Field {
            name,
            value,
            repr: bits & 3,
            name_indexed: bits & 4 != 0,
            huffman_name: bits & 8 != 0,
            huffman_value: bits & 16 != 0,
        });
    }
    let method: &[u8] = match s.below(4) {
        0 => b"GET",
        1 | 2 => b"POST",
        _ => b"PUT",
    };
    push(&mut fields, s, b":method".to_vec(), method.to_vec());
    let scheme: &[u8] = if s.flag() { b"http" } else { b"https" };
    push(&mut fields, s, b":scheme".to_vec(), scheme.to_vec());
    let path = match s.below(PATHS.len() + 1) {
        i if i < PATHS.len() => PATHS[i].as_bytes().to_vec(),
        _ => {
            let mut p = b"/".to_vec();
            p.extend(token(s, 40));
            p
        }
    };
    push(&mut fields, s, b":path".to_vec(), path);
    if s.below(8) != 0 {
        let authority = match s.below(AUTHORITIES.len() + 2) {
            i if i < AUTHORITIES.len() => AUTHORITIES[i].as_bytes().to_vec(),
            i if i == AUTHORITIES.len() => token(s, 200),
            _ => s.bytes(200),
        };
        push(&mut fields, s, b":authority".to_vec(), authority);
    }
    // Which pseudo-header goes where: h2 wants them first, and the adapter
    // must leave the order as it is whatever it is.
    if s.below(16) == 0 && fields.len() > 1 {
        let i = s.below(fields.len());
        let f = fields.remove(i);
        fields.push(f);
    }
    for _ in 0..s.below(10) {
        let name = match s.below(NAMES.len() + 1) {
            i if i < NAMES.len() => NAMES[i].as_bytes().to_vec(),
            _ => {
                let mut n = b"x-".to_vec();
                n.extend(token(s, 12).into_iter().map(|b| b.to_ascii_lowercase()));
                n
            }
        };
        let value = match s.below(4) {
            0 => b"application/grpc".to_vec(),
            1 => b"trailers".to_vec(),
            2 => b"true".to_vec(),
            _ => token(s, 100),
        };
        push(&mut fields, s, name, value);
    }
    let bits = s.byte();
    let size_update = match bits & 7 {
        0 => Some(0),
        1 => Some(usize::from(s.byte()) * 16),
        2 => Some(4096),
        _ => None,
    };
    let end_stream = bits & 8 != 0;
    let priority = (bits & 16 != 0).then(|| {
        let mut p = [0u8; 5];
        for b in &mut p {
            *b = s.byte();
        }
        // Not on itself (h2 resets such a stream, and the stream ID is only
        // known later); depend on stream 0.
        p[..4].copy_from_slice(&[0, 0, 0, 0]);
        p
    });
    let padding = (bits & 32 != 0).then(|| s.byte() % 32);
    let cuts = (0..s.below(5)).map(|_| s.below(64)).collect();
    let data = (!end_stream && bits & 64 != 0).then(|| s.bytes(32));
    Request {
        fields,
        size_update,
        end_stream,
        priority,
        padding,
        cuts,
        data,
        ping_before: bits & 128 != 0,
    }
}

pub fn run(data: &[u8]) {
    let mut s = Script(data);
    let mut requests = Vec::new();
    while !s.is_empty() && requests.len() < 8 {
        requests.push(request(&mut s));
    }
    let sent = encode(&requests, Variant::Sent);
    let meant = encode(&requests, Variant::Meant);

    let rewritten = tessera_h2_authority::rewrite(&sent.concat());
    assert_eq!(
        rewritten.stopped, None,
        "the adapter stopped following a connection within its limits"
    );

    let sent: Vec<&[u8]> = sent.iter().map(Vec::as_slice).collect();
    let meant: Vec<&[u8]> = meant.iter().map(Vec::as_slice).collect();
    let adapted = judge(&sent, true);
    let direct = judge(&meant, false);
    assert_eq!(
        adapted.accepted, direct.accepted,
        "h2 accepts other requests through the adapter than with localhost sent by the client"
    );
    assert_eq!(
        adapted.error.is_some(),
        direct.error.is_some(),
        "the connection ends otherwise through the adapter ({:?}) than with localhost sent by the client ({:?})",
        adapted.error,
        direct.error
    );
}

/// Which of the two encodings of a script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// What the client sends: its `:authority` values, its framing.
    Sent,
    /// `localhost` in every `:authority`, each block in one HEADERS frame
    /// without padding (as the adapter writes blocks).
    Meant,
}

/// The client's bytes for the script, cut into the pieces h2 is given one at
/// a time.
fn encode(requests: &[Request], variant: Variant) -> Vec<Vec<u8>> {
    let localhost = variant == Variant::Meant;
    let mut pieces = Vec::new();
    let mut start = PREFACE.to_vec();
    frame(&mut start, 0x4, 0, 0, &[]);
    pieces.push(start);
    let mut table = Table::new();
    for (i, r) in requests.iter().enumerate() {
        let stream = 1 + 2 * i as u32;
        if r.ping_before {
            let mut ping = Vec::new();
            frame(&mut ping, 0x6, 0, 0, &[7; 8]);
            pieces.push(ping);
        }
        let mut block = Vec::new();
        if let Some(size) = r.size_update {
            put_int(&mut block, 0x20, 5, size);
            table.resize(size);
        }
        for f in &r.fields {
            let value: &[u8] = if localhost && f.name == b":authority" {
                b"localhost"
            } else {
                &f.value
            };
            table.encode(&mut block, f, value);
        }
        pieces.push(frame_block(stream, r, &block, variant));
        if let Some(body) = &r.data {
            let mut d = Vec::new();
            frame(&mut d, 0x0, 0x1, stream, body);
            pieces.push(d);
        }
    }
    pieces
}

/// HEADERS (with the request's priority, and padding and CONTINUATION frames
/// when sent as the client sends them).
fn frame_block(stream: u32, r: &Request, block: &[u8], variant: Variant) -> Vec<u8> {
    let whole = variant == Variant::Meant;
    let cuts: &[usize] = if whole { &[] } else { &r.cuts };
    let padding = if whole { None } else { r.padding };
    let mut parts = Vec::new();
    let mut rest = block;
    for &cut in cuts {
        let (head, tail) = rest.split_at(cut.min(rest.len()));
        parts.push(head);
        rest = tail;
    }
    parts.push(rest);
    let mut out = Vec::new();
    let mut payload = Vec::new();
    let mut flags = 0;
    if r.end_stream {
        flags |= 0x1;
    }
    if let Some(pad) = padding {
        flags |= 0x8;
        payload.push(pad);
    }
    if let Some(p) = r.priority {
        flags |= 0x20;
        payload.extend_from_slice(&p);
    }
    payload.extend_from_slice(parts[0]);
    if let Some(pad) = padding {
        payload.extend(std::iter::repeat_n(0, usize::from(pad)));
    }
    if parts.len() == 1 {
        flags |= 0x4;
    }
    frame(&mut out, 0x1, flags, stream, &payload);
    for (i, part) in parts.iter().enumerate().skip(1) {
        let flags = if i + 1 == parts.len() { 0x4 } else { 0 };
        frame(&mut out, 0x9, flags, stream, part);
    }
    out
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = (payload.len() as u32).to_be_bytes();
    out.extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// RFC 7541 §5.1.
fn put_int(out: &mut Vec<u8>, flags: u8, prefix: u32, value: usize) {
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

/// RFC 7541 §5.2, Huffman-coded when `huffman`.
fn put_str(out: &mut Vec<u8>, s: &[u8], huffman: bool) {
    if huffman {
        let coded = huffman_encode(s);
        put_int(out, 0x80, 7, coded.len());
        out.extend(coded);
    } else {
        put_int(out, 0, 7, s.len());
        out.extend_from_slice(s);
    }
}

/// RFC 7541 Appendix B as code lengths: the code is canonical, so the codes
/// follow from the lengths (symbols ordered by length, then value).
const CODE_LENGTHS: [u8; 256] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, // 0x00
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 0x10
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, // 0x20
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, // 0x30
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, // 0x40
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, // 0x50
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, // 0x60
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, // 0x70
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, // 0x80
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, // 0x90
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, // 0xa0
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, // 0xb0
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, // 0xc0
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, // 0xd0
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, // 0xe0
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, // 0xf0
];

fn huffman_codes() -> &'static [(u32, u8); 256] {
    static CODES: std::sync::OnceLock<[(u32, u8); 256]> = std::sync::OnceLock::new();
    CODES.get_or_init(|| {
        let mut order: Vec<usize> = (0..256).collect();
        order.sort_by_key(|&s| (CODE_LENGTHS[s], s));
        let mut codes = [(0u32, 0u8); 256];
        let mut code = 0u32;
        let mut len = CODE_LENGTHS[order[0]];
        for s in order {
            code <<= CODE_LENGTHS[s] - len;
            len = CODE_LENGTHS[s];
            codes[s] = (code, len);
            code += 1;
        }
        codes
    })
}

fn huffman_encode(s: &[u8]) -> Vec<u8> {
    let codes = huffman_codes();
    let mut out = Vec::new();
    let mut acc: u64 = 0;
    let mut bits = 0u32;
    for &b in s {
        let (code, len) = codes[usize::from(b)];
        acc = (acc << len) | u64::from(code);
        bits += u32::from(len);
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if bits > 0 {
        // Padding: the most significant bits of EOS, all ones.
        out.push(((acc << (8 - bits)) as u8) | (0xff >> bits));
    }
    out
}

/// RFC 7541 Appendix A.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// The encoder's dynamic table (RFC 7541 §4), newest entry first.
struct Table {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max: usize,
}

impl Table {
    fn new() -> Self {
        Table {
            entries: Vec::new(),
            size: 0,
            max: 4096,
        }
    }

    fn resize(&mut self, max: usize) {
        self.max = max;
        self.evict();
    }

    fn evict(&mut self) {
        while self.size > self.max {
            if let Some((n, v)) = self.entries.pop() {
                self.size -= n.len() + v.len() + 32;
            }
        }
    }

    fn insert(&mut self, name: &[u8], value: &[u8]) {
        self.entries.insert(0, (name.to_vec(), value.to_vec()));
        self.size += name.len() + value.len() + 32;
        self.evict();
    }

    /// The index of an exact match, and of an entry with the name.
    fn find(&self, name: &[u8], value: &[u8]) -> (Option<usize>, Option<usize>) {
        let mut exact = None;
        let mut by_name = None;
        let statics = STATIC
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .chain(self.entries.iter().map(|(n, v)| (&n[..], &v[..])));
        for (i, (n, v)) in statics.enumerate() {
            if n == name {
                by_name.get_or_insert(i + 1);
                if v == value {
                    exact.get_or_insert(i + 1);
                }
            }
        }
        (exact, by_name)
    }

    fn encode(&mut self, out: &mut Vec<u8>, f: &Field, value: &[u8]) {
        let (exact, by_name) = self.find(&f.name, value);
        if f.repr == 0
            && let Some(i) = exact
        {
            put_int(out, 0x80, 7, i);
            return;
        }
        let (flags, prefix) = match f.repr {
            0 | 1 => (0x40, 6),
            2 => (0x00, 4),
            _ => (0x10, 4),
        };
        match by_name.filter(|_| f.name_indexed) {
            Some(i) => put_int(out, flags, prefix, i),
            None => {
                put_int(out, flags, prefix, 0);
                put_str(out, &f.name, f.huffman_name);
            }
        }
        put_str(out, value, f.huffman_value);
        if flags == 0x40 {
            self.insert(&f.name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed scripts make requests h2 accepts (so the comparison compares
    /// something), with table references that differ between the two
    /// encodings.
    #[test]
    fn seed_scripts_make_accepted_requests() {
        let mut accepted = 0;
        for (target, name, data) in crate::seeds::all() {
            if target != "h2_requests" {
                continue;
            }
            let mut s = Script(&data);
            let mut requests = Vec::new();
            while !s.is_empty() && requests.len() < 8 {
                requests.push(request(&mut s));
            }
            let meant = encode(&requests, Variant::Meant);
            let pieces: Vec<&[u8]> = meant.iter().map(Vec::as_slice).collect();
            let n = judge(&pieces, false).accepted.len();
            eprintln!("{name}: {} requests, {n} accepted", requests.len());
            accepted += n;
            run(&data);
        }
        assert!(
            accepted >= 3,
            "the seed scripts make too few valid requests"
        );
    }

    /// Why `Variant::Meant` frames blocks whole: h2 takes a request with
    /// `te: application/grpc` when the field after it is split across a
    /// HEADERS/CONTINUATION boundary, and refuses it when the block comes in
    /// one frame, as through the adapter. (Should h2 become consistent, this
    /// fails, and the special case can go.)
    #[test]
    fn h2_judges_a_malformed_block_by_its_framing() {
        let field = |name: &str, value: &str| Field {
            name: name.into(),
            value: value.into(),
            repr: 2,
            name_indexed: false,
            huffman_name: false,
            huffman_value: false,
        };
        let mut r = Request {
            fields: vec![
                field(":method", "POST"),
                field(":scheme", "http"),
                field(":path", "/SpiffeWorkloadAPI/FetchJWTSVID"),
                field(":authority", "localhost"),
                field("te", "application/grpc"),
                field("x-custom", "value"),
            ],
            size_update: None,
            end_stream: true,
            priority: None,
            padding: None,
            cuts: Vec::new(),
            data: None,
            ping_before: false,
        };
        let whole = encode(std::slice::from_ref(&r), Variant::Sent);
        let len = whole[1][..3]
            .iter()
            .fold(0, |n, b| n << 8 | usize::from(*b));
        // In the middle of the last value.
        r.cuts = vec![len - 3];
        let cut = encode(std::slice::from_ref(&r), Variant::Sent);
        assert_eq!(
            (cut[1][3], cut[1][4] & 0x4),
            (0x1, 0),
            "HEADERS without END_HEADERS"
        );
        fn pieces(p: &[Vec<u8>]) -> Vec<&[u8]> {
            p.iter().map(Vec::as_slice).collect()
        }
        assert_eq!(judge(&pieces(&whole), false).accepted, []);
        assert_eq!(judge(&pieces(&cut), false).accepted.len(), 1);
        assert_eq!(judge(&pieces(&cut), true).accepted, []);
    }

    /// The encoder agrees with RFC 7541 C.4.1 (Huffman) and C.3.2 (indexing).
    #[test]
    fn encoder_matches_rfc_examples() {
        assert_eq!(
            huffman_encode(b"www.example.com"),
            [
                0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff
            ]
        );
        let mut t = Table::new();
        let mut out = Vec::new();
        let f = |name: &str, value: &str, repr| Field {
            name: name.into(),
            value: value.into(),
            repr,
            name_indexed: true,
            huffman_name: false,
            huffman_value: false,
        };
        for (n, v) in [(":method", "GET"), (":scheme", "http"), (":path", "/")] {
            t.encode(&mut out, &f(n, v, 0), v.as_bytes());
        }
        t.encode(
            &mut out,
            &f(":authority", "www.example.com", 1),
            b"www.example.com",
        );
        assert_eq!(out[..4], [0x82, 0x86, 0x84, 0x41]);
        out.clear();
        t.encode(
            &mut out,
            &f(":authority", "www.example.com", 0),
            b"www.example.com",
        );
        assert_eq!(out, [0xbe]);
    }
}

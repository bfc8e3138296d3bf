//! The state machine: header blocks rewritten and re-encoded without table
//! state, every other byte handed on, malformed input passed through.

use super::*;
use crate::frame::{FLAG_PADDED, FLAG_PRIORITY};
use crate::hpack::MAX_TABLE_SIZE;
use crate::hpack::encode::{encode_field, put_int};
use crate::testutil::*;

#[test]
fn rewrite_is_stateless_and_replaces_only_the_authority() {
    let mut raw_dec = Decoder::new(INITIAL_TABLE_SIZE);
    let mut huff_dec = Decoder::new(INITIAL_TABLE_SIZE);
    for (raw, huffman, list) in rfc_requests() {
        for (dec, block) in [(&mut raw_dec, raw), (&mut huff_dec, huffman)] {
            let mut enc = Vec::new();
            transcode(dec, &block, &mut enc).unwrap();
            assert_eq!(decode_stateless(&enc), with_localhost(&list));
        }
    }
    // The client's table is still followed: the third request referred
    // to entries the first two added.
    assert_eq!(raw_dec.sizes().0, 164);

    let mut dec = Decoder::new(INITIAL_TABLE_SIZE);
    let mut enc = Vec::new();
    transcode(&mut dec, &hex(GRPCIO_BLOCK), &mut enc).unwrap();
    assert_eq!(decode_stateless(&enc), grpcio_fields("localhost"));
}

#[test]
fn rewrite_keeps_never_indexed_fields_and_uses_static_entries() {
    // RFC 7541 C.2.3: "password: secret", never indexed.
    let block = hex("100870617373776f726406736563726574");
    let mut enc = Vec::new();
    transcode(&mut Decoder::new(INITIAL_TABLE_SIZE), &block, &mut enc).unwrap();
    assert_eq!(enc, block);
    assert_eq!(
        decode_stateless(&enc),
        vec![(b"password".to_vec(), b"secret".to_vec(), true)]
    );

    // A never-indexed field whose name and value are a static entry
    // stays a never-indexed literal; other static matches become indexed.
    let mut enc = Vec::new();
    encode_field(&mut enc, b":method", b"POST", true);
    assert_eq!(enc, hex("1204 504f5354"));
    enc.clear();
    encode_field(&mut enc, b":method", b"POST", false);
    encode_field(&mut enc, b"accept-encoding", b"gzip, deflate", false);
    encode_field(&mut enc, b"content-type", b"application/grpc", false);
    assert_eq!(enc, hex("83 90 0f10 10 6170706c69636174696f6e2f67727063"));
}

#[test]
fn size_updates_are_followed_and_forwarded() {
    let mut dec = Decoder::new(INITIAL_TABLE_SIZE);
    let (first, _, _) = rfc_requests().remove(0);
    decode_list(&mut dec, &first).unwrap();
    assert_eq!(dec.entries(), 1);

    // Shrinking to 0 empties the table; growing back keeps it empty.
    let mut block = hex("20 3fe11f 82");
    let mut enc = Vec::new();
    transcode(&mut dec, &block, &mut enc).unwrap();
    assert_eq!(enc, block);
    assert_eq!(dec.entries(), 0);
    assert_eq!(dec.sizes().1, 4096);
    assert_eq!(
        decode_list(&mut dec, &hex("be")),
        Err(HpackError::Index(62))
    );

    // Only at the start of a block.
    block = hex("82 20");
    assert_eq!(
        decode_list(&mut dec, &block),
        Err(HpackError::LateSizeUpdate)
    );
    // Not beyond what the adapter keeps.
    let mut too_big = vec![];
    put_int(&mut too_big, 0x20, 5, MAX_TABLE_SIZE + 1);
    assert_eq!(
        decode_list(&mut dec, &too_big),
        Err(HpackError::TableSize(MAX_TABLE_SIZE + 1))
    );
}

#[test]
fn random_blocks_never_panic() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut dec = Decoder::new(INITIAL_TABLE_SIZE);
    for _ in 0..20_000 {
        let len = rng.below(64);
        let block: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        let mut enc = Vec::new();
        if transcode(&mut dec, &block, &mut enc).is_ok() {
            decode_stateless(&enc);
        }
    }
}

#[tokio::test]
async fn grpcio_request_gets_localhost_and_other_frames_are_untouched() {
    let mut input = PREFACE.to_vec();
    input.extend(settings());
    input.extend(frame(0x8, 0, 0, &hex("003f0001")));
    input.extend(frame(0x4, 0x1, 0, &[]));
    let before = input.clone();
    input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &hex(GRPCIO_BLOCK)));
    let headers_end = input.len();
    let mut tail = frame(0x8, 0, 1, &hex("00000005"));
    tail.extend(frame(0x0, FLAG_END_STREAM, 1, &hex("0000000000")));
    input.extend(&tail);

    let out = run(&input).await;
    assert!(out.starts_with(&before));
    assert!(out.ends_with(&tail));
    let frames = split_frames(&out);
    let blocks = header_blocks(&frames);
    assert_eq!(blocks.len(), 1);
    let (h, block) = &blocks[0];
    assert_eq!((h.stream, h.flags), (1, FLAG_END_HEADERS));
    assert_eq!(decode_stateless(block), grpcio_fields("localhost"));
    // The original block, for contrast, really carries the path.
    let mut dec = Decoder::new(INITIAL_TABLE_SIZE);
    assert_eq!(
        decode_list(&mut dec, &input[before.len() + 9..headers_end]).unwrap(),
        grpcio_fields("tmp%2Fcap%2Fsock.sock")
    );
}

#[tokio::test]
async fn follows_the_dynamic_table_across_streams() {
    let mut input = PREFACE.to_vec();
    input.extend(settings());
    let requests = rfc_requests();
    for (i, (_, huffman, _)) in requests.iter().enumerate() {
        let stream = 1 + 2 * i as u32;
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, stream, huffman));
        input.extend(frame(0x0, FLAG_END_STREAM, stream, b"body"));
    }
    let out = run(&input).await;
    let frames = split_frames(&out);
    let blocks = header_blocks(&frames);
    assert_eq!(blocks.len(), 3);
    for ((h, block), (i, (_, _, list))) in blocks.iter().zip(requests.iter().enumerate()) {
        assert_eq!(h.stream, 1 + 2 * i as u32);
        assert_eq!(decode_stateless(block), with_localhost(list));
    }
    let data: Vec<_> = frames.iter().filter(|(h, _)| h.kind == 0).collect();
    assert_eq!(data.len(), 3);
    assert!(data.iter().all(|(_, p)| p == b"body"));
}

#[tokio::test]
async fn padded_priority_headers_keep_priority_and_end_stream() {
    let (first, _, list) = rfc_requests().remove(0);
    let mut payload = vec![7];
    payload.extend(hex("80000003 0f"));
    payload.extend(&first);
    payload.extend([0; 7]);
    let flags = FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM | FLAG_END_HEADERS;
    let mut input = PREFACE.to_vec();
    input.extend(frame(TYPE_HEADERS, flags, 5, &payload));
    let out = run(&input).await;
    let frames = split_frames(&out);
    assert_eq!(frames.len(), 1);
    let (h, p) = &frames[0];
    assert_eq!(
        (h.kind, h.flags, h.stream),
        (
            TYPE_HEADERS,
            FLAG_PRIORITY | FLAG_END_STREAM | FLAG_END_HEADERS,
            5
        )
    );
    assert_eq!(p[..5], hex("80000003 0f"));
    assert_eq!(decode_stateless(&p[5..]), with_localhost(&list));
}

#[tokio::test]
async fn continuation_frames_are_reassembled() {
    let block = hex(GRPCIO_BLOCK);
    // Split inside strings, with an empty CONTINUATION in between.
    let (a, rest) = block.split_at(7);
    let (b, c) = rest.split_at(100);
    let mut input = PREFACE.to_vec();
    input.extend(frame(
        TYPE_HEADERS,
        FLAG_PADDED,
        3,
        &[&[2u8][..], a, &[0, 0]].concat(),
    ));
    input.extend(frame(TYPE_CONTINUATION, 0, 3, b));
    input.extend(frame(TYPE_CONTINUATION, 0, 3, &[]));
    input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, c));
    let out = run(&input).await;
    let frames = split_frames(&out);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].0.flags, FLAG_END_HEADERS);
    assert_eq!(decode_stateless(&frames[0].1), grpcio_fields("localhost"));
}

#[tokio::test]
async fn large_blocks_are_split_at_the_default_frame_size() {
    let big = "x".repeat(40_000);
    let mut block = hex("8386 41 09 6c6f63616c686f7374 84");
    block.extend([0x00, 0x05]);
    block.extend(b"x-big");
    put_int(&mut block, 0, 7, big.len());
    block.extend(big.as_bytes());
    for priority in [false, true] {
        let mut input = PREFACE.to_vec();
        let mut chunks = block.chunks(MAX_FRAME_SIZE - 5).peekable();
        let mut first = true;
        while let Some(chunk) = chunks.next() {
            let mut flags = if chunks.peek().is_none() {
                FLAG_END_HEADERS
            } else {
                0
            };
            let mut payload = Vec::new();
            let kind = if first {
                TYPE_HEADERS
            } else {
                TYPE_CONTINUATION
            };
            if first && priority {
                flags |= FLAG_PRIORITY;
                payload.extend([0, 0, 0, 0, 200]);
            }
            payload.extend(chunk);
            input.extend(frame(kind, flags, 1, &payload));
            first = false;
        }
        let out = run(&input).await;
        let frames = split_frames(&out);
        let kinds: Vec<_> = frames
            .iter()
            .map(|(h, _)| (h.kind, h.len, h.flags))
            .collect();
        let total = block.len() + if priority { 5 } else { 0 };
        let prio_flag = if priority { FLAG_PRIORITY } else { 0 };
        assert_eq!(
            kinds,
            vec![
                (TYPE_HEADERS, MAX_FRAME_SIZE, prio_flag),
                (TYPE_CONTINUATION, MAX_FRAME_SIZE, 0),
                (
                    TYPE_CONTINUATION,
                    total - 2 * MAX_FRAME_SIZE,
                    FLAG_END_HEADERS
                ),
            ]
        );
        let blocks = header_blocks(&frames);
        let list = decode_stateless(&blocks[0].1);
        assert_eq!(list[4], field("x-big", &big));
        assert_eq!(list[2], field(":authority", "localhost"));
    }
}

#[tokio::test]
async fn non_header_frames_pass_through_byte_for_byte() {
    let mut rng = XorShift(42);
    let mut input = PREFACE.to_vec();
    input.extend(settings());
    input.extend(frame(0x6, 0, 0, b"pingping"));
    input.extend(frame(0x8, 0, 0, &hex("7fffffff")));
    input.extend(frame(0x2, 0, 1, &hex("0000000010")));
    let big: Vec<u8> = (0..300_000).map(|_| rng.byte()).collect();
    input.extend(frame(0x0, 0, 1, &big[..100_000]));
    input.extend(frame(
        0x0,
        FLAG_PADDED,
        1,
        &[&[3u8][..], b"data", &[0, 0, 0]].concat(),
    ));
    input.extend(frame(0x0, FLAG_END_STREAM, 1, &big));
    input.extend(frame(0x3, 0, 1, &hex("00000008")));
    input.extend(frame(0xfa, 0xff, 7, b"an extension frame"));
    input.extend(frame(0x7, 0, 0, &hex("00000000 00000000 676f6f64627965")));
    assert_eq!(run(&input).await, input);
}

#[tokio::test]
async fn malformed_input_is_handed_on_unchanged() {
    let good = frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &hex(GRPCIO_BLOCK));
    let with_preface = |frames: &[Vec<u8>]| {
        let mut v = PREFACE.to_vec();
        v.extend(settings());
        for f in frames {
            v.extend(f);
        }
        v
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("HTTP/1.1", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("short preface then EOF", PREFACE[..10].to_vec()),
        (
            "bad HPACK index",
            with_preface(&[frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &hex("82 ff10"))]),
        ),
        (
            "bad Huffman",
            with_preface(&[frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &hex("82 0481 00"))]),
        ),
        ("truncated HEADERS", {
            let mut v = with_preface(std::slice::from_ref(&good));
            v.truncate(v.len() - 20);
            v
        }),
        ("truncated frame header", {
            let mut v = with_preface(&[]);
            v.extend(&good[..5]);
            v
        }),
        (
            "oversized HEADERS",
            with_preface(&[frame(
                TYPE_HEADERS,
                FLAG_END_HEADERS,
                1,
                &vec![0x82; 20_000],
            )]),
        ),
        (
            "stray CONTINUATION",
            with_preface(&[frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &hex("82"))]),
        ),
        (
            "interrupted block",
            with_preface(&[
                frame(TYPE_HEADERS, 0, 1, &hex("82")),
                frame(0x0, 0, 1, b"data"),
                frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &hex("84")),
            ]),
        ),
        (
            "CONTINUATION on another stream",
            with_preface(&[
                frame(TYPE_HEADERS, 0, 1, &hex("82")),
                frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, &hex("84")),
            ]),
        ),
        (
            "padding longer than the frame",
            with_preface(&[frame(
                TYPE_HEADERS,
                FLAG_END_HEADERS | FLAG_PADDED,
                1,
                &hex("09 8286"),
            )]),
        ),
        (
            "priority missing",
            with_preface(&[frame(
                TYPE_HEADERS,
                FLAG_END_HEADERS | FLAG_PRIORITY,
                1,
                &hex("82"),
            )]),
        ),
        (
            "HEADERS on stream 0",
            with_preface(&[frame(TYPE_HEADERS, FLAG_END_HEADERS, 0, &hex("82"))]),
        ),
    ];
    for (name, input) in cases {
        assert_eq!(run(&input).await, input, "{name}");
    }

    // After a good block, a bad one: the good one was rewritten, the
    // rest is handed on as the client sent it.
    let bad = frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &hex("82 ff10"));
    let input = with_preface(&[good.clone(), bad.clone(), frame(0x6, 0, 0, b"pingping")]);
    let out = run(&input).await;
    let tail = [bad, frame(0x6, 0, 0, b"pingping")].concat();
    assert!(out.ends_with(&tail));
    let rewritten = &out[..out.len() - tail.len()];
    let blocks = header_blocks(&split_frames(rewritten));
    assert_eq!(decode_stateless(&blocks[0].1), grpcio_fields("localhost"));
}

#[tokio::test]
async fn random_frames_never_panic() {
    let mut rng = XorShift(7);
    let kinds = [TYPE_HEADERS, TYPE_CONTINUATION, 0x0, 0x4, 0x8, 0x22];
    for _ in 0..300 {
        let mut input = PREFACE.to_vec();
        for _ in 0..rng.below(6) {
            let kind = kinds[rng.below(kinds.len())];
            let payload: Vec<u8> = (0..rng.below(40)).map(|_| rng.byte()).collect();
            let mut f = frame(kind, rng.byte(), rng.below(4) as u32, &payload);
            if rng.below(8) == 0 {
                // A lying length.
                f[2] = rng.byte();
            }
            input.extend(f);
        }
        let out = run_with(&input, 1 + rng.below(20), 1 + rng.below(50)).await;
        assert!(out.starts_with(PREFACE));
        // The socket and the slice drivers share the state machine.
        assert_eq!(rewrite(&input).output, out);
    }
}

#[test]
fn rewrite_says_where_it_stopped_following() {
    let good = frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &hex(GRPCIO_BLOCK));
    let mut input = PREFACE.to_vec();
    input.extend(settings());
    input.extend(&good);
    let done = rewrite(&input);
    assert_eq!(done.stopped, None);
    let blocks = header_blocks(&split_frames(&done.output));
    assert_eq!(decode_stateless(&blocks[0].1), grpcio_fields("localhost"));

    let bad_index = frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &hex("82 ff10"));
    let cases: [(&str, Vec<u8>, Malformed); 6] = [
        (
            "HTTP/1.1",
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            Malformed::Preface,
        ),
        (
            "bad HPACK index",
            [input.clone(), bad_index.clone()].concat(),
            Malformed::Hpack(HpackError::Index(143)),
        ),
        (
            "stray CONTINUATION",
            [
                input.clone(),
                frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &[0x82]),
            ]
            .concat(),
            Malformed::StrayContinuation,
        ),
        (
            "block cut short",
            [input.clone(), frame(TYPE_HEADERS, 0, 3, &[0x82])].concat(),
            Malformed::Truncated,
        ),
        (
            "plain frame cut short",
            {
                let mut v = [input.clone(), frame(0x0, 0, 1, b"data")].concat();
                v.truncate(v.len() - 2);
                v
            },
            Malformed::Truncated,
        ),
        (
            "block above the limit",
            {
                let mut v = input.clone();
                v.extend(frame(TYPE_HEADERS, 0, 3, &vec![0x82; 16_000]));
                for _ in 0..4 {
                    v.extend(frame(TYPE_CONTINUATION, 0, 3, &vec![0x82; 16_000]));
                }
                v
            },
            Malformed::BlockTooLarge,
        ),
    ];
    for (name, bytes, why) in cases {
        let done = rewrite(&bytes);
        assert_eq!(done.stopped, Some(why), "{name}");
        // What the rewriter followed was rewritten; the rest is the client's.
        if name != "HTTP/1.1" {
            assert!(done.output.ends_with(&bytes[input.len()..]), "{name}");
            let blocks = header_blocks(&split_frames(
                &done.output[..done.output.len() - (bytes.len() - input.len())],
            ));
            assert_eq!(
                decode_stateless(&blocks[0].1),
                grpcio_fields("localhost"),
                "{name}"
            );
        } else {
            assert_eq!(done.output, bytes);
        }
    }
}

#[test]
fn a_rewriter_holds_a_block_until_it_is_complete() {
    let block = hex(GRPCIO_BLOCK);
    let mut start = PREFACE.to_vec();
    start.extend(settings());
    let mut rewriter = Rewriter::new();
    let mut out = Vec::new();
    rewriter.feed(&start, &mut out);
    assert_eq!(
        out, start,
        "everything before the block is handed on at once"
    );
    let head = frame(TYPE_HEADERS, 0, 1, &block[..20]);
    rewriter.feed(&head, &mut out);
    rewriter.feed(&head[..0], &mut out);
    assert_eq!(out, start, "half a block is held back");
    let tail = frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &block[20..]);
    let data = frame(0x0, 0, 1, b"data");
    rewriter.feed(&[tail, data.clone()].concat(), &mut out);
    assert!(out.ends_with(&data));
    let rewritten = &out[start.len()..out.len() - data.len()];
    let frames = split_frames_from_server(rewritten);
    assert_eq!(frames.len(), 1);
    assert_eq!(decode_stateless(&frames[0].1), grpcio_fields("localhost"));
    rewriter.finish(&mut out);
    assert_eq!(rewriter.stopped(), None);
}

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fastwebsockets::{Frame, OpCode, Payload};
use proptest::prelude::*;

use super::*;

/// A client frame as a browser sends it, encoded by fastwebsockets (an independent encoder).
fn client_frame(fin: bool, opcode: OpCode, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut frame = Frame::new(fin, opcode, Some(mask), Payload::Owned(payload.to_vec()));
    frame.mask();
    let mut out = Vec::new();
    frame.write(&mut out).to_vec()
}

fn expect_frame(buf: &mut [u8], max: usize) -> Parsed {
    match parse(buf, max) {
        Ok(Progress::Frame(p)) => p,
        other => panic!("expected a frame, got {other:?}"),
    }
}

#[test]
fn a_masked_text_frame_is_unmasked_in_place() {
    let mut buf = client_frame(true, OpCode::Text, b"hello", [1, 2, 3, 4]);
    let p = expect_frame(&mut buf, 1024);
    assert!(p.fin);
    assert_eq!(p.opcode, OpCode::Text);
    assert_eq!(&buf[p.payload.clone()], b"hello");
    assert_eq!(p.consumed, buf.len());
}

#[test]
fn each_length_form_parses() {
    for len in [0usize, 125, 126, 65_535, 65_536, 70_000] {
        let payload = vec![b'x'; len];
        let mut buf = client_frame(true, OpCode::Binary, &payload, [9, 8, 7, 6]);
        let p = expect_frame(&mut buf, 100_000);
        assert_eq!(p.payload.len(), len, "length {len}");
        assert!(buf[p.payload].iter().all(|b| *b == b'x'));
    }
}

#[test]
fn a_short_buffer_says_how_much_it_needs() {
    let full = client_frame(true, OpCode::Text, &[b'a'; 300], [0; 4]);
    let mut one = full[..1].to_vec();
    assert_eq!(parse(&mut one, 1024), Ok(Progress::Need(2)));
    let mut two = full[..2].to_vec();
    assert_eq!(parse(&mut two, 1024), Ok(Progress::Need(8)));
    let mut head = full[..8].to_vec();
    assert_eq!(parse(&mut head, 1024), Ok(Progress::Need(308)));
}

#[test]
fn limits_are_checked_before_the_payload_arrives() {
    let full = client_frame(true, OpCode::Text, &[b'a'; 2000], [0; 4]);
    let mut head = full[..8].to_vec();
    assert_eq!(parse(&mut head, 1000), Err(FrameError::TooBig));
    // A 64-bit length near u64::MAX must not overflow anything.
    let mut huge = vec![
        0x81, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0,
    ];
    assert_eq!(parse(&mut huge, 1000), Err(FrameError::TooBig));
}

#[test]
fn framing_violations_are_refused() {
    let mut unmasked = vec![0x81, 0x01, b'a'];
    assert_eq!(parse(&mut unmasked, 10), Err(FrameError::Unmasked));
    let mut reserved = vec![0xc1, 0x81, 0, 0, 0, 0, b'a'];
    assert_eq!(parse(&mut reserved, 10), Err(FrameError::Reserved));
    let mut opcode = vec![0x83, 0x80, 0, 0, 0, 0];
    assert_eq!(parse(&mut opcode, 10), Err(FrameError::Opcode(3)));
    let mut fragmented_ping = client_frame(false, OpCode::Ping, b"x", [0; 4]);
    assert_eq!(
        parse(&mut fragmented_ping, 10),
        Err(FrameError::ControlFragmented)
    );
    let mut long_ping = client_frame(true, OpCode::Ping, &[0; 126], [0; 4]);
    assert_eq!(parse(&mut long_ping, 1000), Err(FrameError::ControlTooLong));
}

#[test]
fn server_frames_round_trip_through_fastwebsockets_layout() {
    let mut out = Vec::new();
    encode(&mut out, OpCode::Text, b"hi");
    assert_eq!(out, vec![0x81, 0x02, b'h', b'i']);
    let mut close = Vec::new();
    encode_close(&mut close, 4008, b"slow");
    assert_eq!(close, vec![0x88, 0x06, 0x0f, 0xa8, b's', b'l', b'o', b'w']);
    let mut long = Vec::new();
    encode(&mut long, OpCode::Text, &[b'z'; 300]);
    assert_eq!(&long[..4], &[0x81, 126, 0x01, 0x2c]);
    assert_eq!(long.len(), 304);
}

proptest! {
    /// Any sequence of frames, delivered in arbitrary pieces, parses back to the same frames.
    #[test]
    fn frames_split_anywhere_parse_back(
        frames in proptest::collection::vec(
            (any::<bool>(), 0usize..3, proptest::collection::vec(any::<u8>(), 0..400), any::<[u8; 4]>()),
            1..8,
        ),
        cuts in proptest::collection::vec(1usize..64, 1..50),
    ) {
        let opcodes = [OpCode::Text, OpCode::Binary, OpCode::Continuation];
        let mut wire = Vec::new();
        for (fin, op, payload, mask) in &frames {
            wire.extend(client_frame(*fin, opcodes[*op], payload, *mask));
        }
        let mut buf: Vec<u8> = Vec::new();
        let mut got = Vec::new();
        let mut fed = 0;
        let mut cut = cuts.iter().cycle();
        while fed < wire.len() {
            let n = (*cut.next().unwrap()).min(wire.len() - fed);
            buf.extend_from_slice(&wire[fed..fed + n]);
            fed += n;
            loop {
                match parse(&mut buf, 1024).unwrap() {
                    Progress::Frame(p) => {
                        got.push((p.fin, p.opcode, buf[p.payload.clone()].to_vec()));
                        buf.drain(..p.consumed);
                    }
                    Progress::Need(n) => {
                        prop_assert!(n > buf.len());
                        break;
                    }
                }
            }
        }
        prop_assert!(buf.is_empty());
        let want: Vec<_> = frames
            .iter()
            .map(|(fin, op, payload, _)| (*fin, opcodes[*op], payload.clone()))
            .collect();
        prop_assert_eq!(got, want);
    }

    /// Arbitrary bytes never panic the parser.
    #[test]
    fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = parse(&mut bytes, 16);
    }
}

//! WebSocket framing as the gateway reads it, driven byte by byte from a raw TCP client:
//! pings, fragments, frames split across writes or packed into one, and every framing
//! violation with its close code (RFC 6455 §5 and §7.4).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use fastwebsockets::{Frame, OpCode, Payload};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A client that writes frames exactly as given and reads the server's frames itself.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(node: &Node, name: &str) -> Raw {
        Raw::connect_sending(node, name, &[]).await
    }

    /// Connects, writing `early` in the same write as the upgrade request.
    async fn connect_sending(node: &Node, name: &str, early: &[u8]) -> Raw {
        let (token, _) = node.guest(name).await;
        let mut s = TcpStream::connect(node.addr).await.unwrap();
        let req = format!(
            "GET /v1/ws?token={token} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            node.addr
        );
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(early);
        s.write_all(&bytes).await.unwrap();
        let mut buf = Vec::new();
        let end = loop {
            let mut chunk = [0u8; 512];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        buf.drain(..end);
        Raw { s, buf }
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    /// The next server frame: (opcode, payload); None at end of stream.
    async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let b1 = self.buf[1];
                assert_eq!(b1 & 0x80, 0, "server frames are never masked");
                let (ext, len) = match b1 & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (2, u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize)
                    }
                    127 if self.buf.len() >= 10 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&self.buf[2..10]);
                        (8, u64::from_be_bytes(b) as usize)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (0, n as usize),
                };
                if ext != usize::MAX && self.buf.len() >= 2 + ext + len {
                    let op = self.buf[0] & 0x0f;
                    let payload = self.buf[2 + ext..2 + ext + len].to_vec();
                    self.buf.drain(..2 + ext + len);
                    return Some((op, payload));
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), self.s.read(&mut chunk))
                .await
                .expect("a frame within 10 s")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next text frame as JSON, skipping the server's pings.
    async fn json(&mut self) -> Value {
        loop {
            let (op, payload) = self.frame().await.expect("a frame");
            if op == 0x9 {
                continue;
            }
            assert_eq!(op, 0x1, "expected text");
            return serde_json::from_slice(&payload).unwrap();
        }
    }

    /// The close frame's code, then end of stream.
    async fn close_code(&mut self) -> u16 {
        loop {
            match self.frame().await {
                Some((0x8, p)) => {
                    assert!(p.len() >= 2);
                    let code = u16::from_be_bytes([p[0], p[1]]);
                    let mut rest = [0u8; 64];
                    let n = tokio::time::timeout(Duration::from_secs(5), self.s.read(&mut rest))
                        .await
                        .expect("the server closes the socket after its close frame")
                        .unwrap_or(0);
                    assert_eq!(n, 0, "nothing after the close frame");
                    return code;
                }
                Some(_) => continue,
                None => panic!("stream ended without a close frame"),
            }
        }
    }
}

/// A masked client frame, encoded by fastwebsockets.
fn masked(fin: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut frame = Frame::new(
        fin,
        opcode,
        Some([0x12, 0x34, 0x56, 0x78]),
        Payload::Owned(payload.to_vec()),
    );
    frame.mask();
    let mut out = Vec::new();
    frame.write(&mut out).to_vec()
}

fn sync(id: &str) -> String {
    format!(r#"{{"type":"time.sync","id":"{id}","t0":5}}"#)
}

#[tokio::test]
async fn pings_fragments_and_split_or_packed_frames() {
    let (_d, mut node) = node("framing").await;
    let mut c = Raw::connect(&node, "Raw").await;

    // A ping is answered with the same payload.
    c.write(&masked(true, OpCode::Ping, b"are you there")).await;
    assert_eq!(c.frame().await, Some((0xA, b"are you there".to_vec())));

    // A message in three fragments with a ping between them (allowed by §5.4).
    let text = sync("frag");
    let (a, rest) = text.as_bytes().split_at(10);
    let (b, tail) = rest.split_at(10);
    c.write(&masked(false, OpCode::Text, a)).await;
    c.write(&masked(false, OpCode::Continuation, b)).await;
    c.write(&masked(true, OpCode::Ping, b"mid")).await;
    c.write(&masked(true, OpCode::Continuation, tail)).await;
    assert_eq!(c.frame().await, Some((0xA, b"mid".to_vec())));
    let ack = c.json().await;
    assert_eq!(ack["id"], "frag");
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["result"]["t0"].as_f64(), Some(5.0));

    // One frame trickling in a byte at a time.
    let bytes = masked(true, OpCode::Text, sync("slow").as_bytes());
    for b in &bytes {
        c.write(std::slice::from_ref(b)).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(c.json().await["id"], "slow");

    // Three frames in one write, the last over 125 bytes (16-bit length).
    // JSON whitespace makes it long without touching any field.
    let long = format!(
        r#"{{"type":"time.sync","id":"p3",{}"t0":5}}"#,
        " ".repeat(150)
    );
    let mut packed = masked(true, OpCode::Text, sync("p1").as_bytes());
    packed.extend(masked(true, OpCode::Text, sync("p2").as_bytes()));
    packed.extend(masked(true, OpCode::Text, long.as_bytes()));
    c.write(&packed).await;
    assert_eq!(c.json().await["id"], "p1");
    assert_eq!(c.json().await["id"], "p2");
    assert_eq!(c.json().await["id"], "p3");

    // A binary frame gets an error and the connection stays.
    c.write(&masked(true, OpCode::Binary, b"\x00\x01")).await;
    assert_eq!(c.json().await["code"], "bad_request");
    c.write(&masked(true, OpCode::Text, sync("after").as_bytes()))
        .await;
    assert_eq!(c.json().await["id"], "after");

    // The client closes: the server answers 1000 and ends the stream.
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"bye");
    c.write(&masked(true, OpCode::Close, &close)).await;
    assert_eq!(c.close_code().await, 1000);
    node.stop().await;
}

#[tokio::test]
async fn framing_violations_close_with_their_codes() {
    let (_d, mut node) = node("violations").await;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        // Client frames must be masked.
        ("unmasked", vec![0x81, 0x02, b'h', b'i'], 1002),
        // Reserved bits without an extension.
        (
            "rsv",
            {
                let mut f = masked(true, OpCode::Text, b"hi");
                f[0] |= 0x40;
                f
            },
            1002,
        ),
        // A continuation with nothing to continue.
        ("orphan", masked(true, OpCode::Continuation, b"x"), 1002),
        // A new message before the fragmented one ended.
        (
            "interleaved",
            {
                let mut f = masked(false, OpCode::Text, b"{");
                f.extend(masked(true, OpCode::Text, b"{}"));
                f
            },
            1002,
        ),
        // Text that is not UTF-8.
        (
            "utf8",
            masked(true, OpCode::Text, &[0xff, 0xfe, 0x22]),
            1007,
        ),
        // A ping over 125 bytes.
        ("bigping", masked(true, OpCode::Ping, &[0u8; 126]), 1002),
        // Declared length over the limit: refused from the header alone.
        (
            "huge",
            vec![0x81, 0xff, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4],
            1009,
        ),
        // Fragments adding up to more than the limit.
        (
            "fragments",
            {
                let chunk = vec![b'a'; 40 * 1024];
                let mut f = masked(false, OpCode::Text, &chunk);
                f.extend(masked(true, OpCode::Continuation, &chunk));
                f
            },
            1009,
        ),
    ];
    for (name, bytes, code) in cases {
        let mut c = Raw::connect(&node, name).await;
        c.write(&bytes).await;
        assert_eq!(c.close_code().await, code, "case {name}");
    }
    node.stop().await;
}

#[tokio::test]
async fn a_frame_sent_with_the_upgrade_request_is_answered() {
    let (_d, mut node) = node("early").await;
    let early = masked(true, OpCode::Text, sync("early").as_bytes());
    let mut c = Raw::connect_sending(&node, "Early", &early).await;
    assert_eq!(c.json().await["id"], "early");
    node.stop().await;
}

//! The client against an independent implementation (tungstenite, as the server, over real
//! loopback sockets) and its framer byte by byte.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use futures_util::{SinkExt, StreamExt};
use proptest::prelude::*;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame as TFrame};
use tokio_tungstenite::tungstenite::Message;

/// An unmasked server frame, formatted by tungstenite.
fn server_frame(payload: &[u8], opcode: OpCode, fin: bool) -> Vec<u8> {
    let mut out = Vec::new();
    TFrame::message(payload.to_vec(), opcode, fin)
        .format(&mut out)
        .unwrap();
    out
}

fn feed(framer: &mut Framer, bytes: &[u8]) -> Vec<Frame> {
    let mut got = Vec::new();
    for b in bytes {
        framer.buf.extend_from_slice(&[*b]);
        while let Some(f) = framer.take_frame().unwrap() {
            got.push(f);
        }
    }
    got
}

#[test]
fn every_length_form_parses_fed_byte_by_byte() {
    for len in [0usize, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
        let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
        let bytes = server_frame(&payload, OpCode::Data(Data::Text), true);
        let got = feed(&mut Framer::default(), &bytes);
        assert_eq!(got, vec![Frame::Text(Bytes::from(payload))], "length {len}");
    }
}

#[test]
fn fragments_are_assembled_around_control_frames() {
    let mut bytes = server_frame(b"hel", OpCode::Data(Data::Text), false);
    TFrame::ping(b"p1".to_vec()).format(&mut bytes).unwrap();
    bytes.extend(server_frame(b"lo ", OpCode::Data(Data::Continue), false));
    bytes.extend(server_frame(b"there", OpCode::Data(Data::Continue), true));
    let got = feed(&mut Framer::default(), &bytes);
    assert_eq!(
        got,
        vec![
            Frame::Ping(Bytes::from_static(b"p1")),
            Frame::Text(Bytes::from_static(b"hello there"))
        ]
    );
}

#[test]
fn the_accept_value_is_the_rfc_example() {
    let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
    assert!(check_response(head, "dGhlIHNhbXBsZSBub25jZQ==").is_ok());
    assert!(check_response(head, "AQIDBAUGBwgJCgsMDQ4PEC==").is_err());
}

#[test]
fn violations_are_errors() {
    let cases: [(&[u8], &str); 5] = [
        (&[0x81, 0x81, 1, 2, 3, 4, b'x'], "masked"),
        (&[0xC1, 0x01, b'x'], "reserved"),
        (&[0x80, 0x01, b'x'], "continuation"),
        (&[0x09, 0x00], "fragmented ping"),
        (&[0x83, 0x00], "opcode 3"),
    ];
    for (bytes, what) in cases {
        let mut f = Framer::default();
        f.buf.extend_from_slice(bytes);
        assert!(f.take_frame().is_err(), "{what}");
    }
    let mut too_big = Framer::default();
    too_big.buf.extend_from_slice(&[0x81, 127]);
    too_big
        .buf
        .extend_from_slice(&(MAX_MESSAGE as u64 + 1).to_be_bytes());
    assert!(matches!(too_big.take_frame(), Err(WsError::TooBig)));
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut f = Framer::default();
        f.buf.extend_from_slice(&bytes);
        for _ in 0..64 {
            match f.take_frame() {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
}

fn sent(len: usize) -> String {
    (0..len)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect()
}

/// A tungstenite server on a loopback port; `serve` runs with the accepted socket.
async fn server<F, Fut>(serve: F) -> std::net::SocketAddr
where
    F: FnOnce(tokio_tungstenite::WebSocketStream<TcpStream>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        serve(ws).await;
    });
    addr
}

async fn client(addr: std::net::SocketAddr) -> (Reader, Writer) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    connect(Conn::Plain(tcp), &addr.to_string(), "/v1/ws?token=t")
        .await
        .unwrap()
}

#[tokio::test]
async fn talks_to_an_independent_server() {
    let big = "x".repeat(300_000);
    let expected = big.clone();
    let addr = server(move |mut ws| async move {
        // What the client sent, masked, arrives intact, in every length form.
        for len in [5, 300, 70_000] {
            let Some(Ok(Message::Text(t))) = ws.next().await else {
                panic!("no text")
            };
            assert_eq!(t.as_str(), sent(len));
        }
        ws.send(Message::text("world")).await.unwrap();
        ws.send(Message::text(big)).await.unwrap();
        ws.send(Message::Ping(Bytes::from_static(b"pi")))
            .await
            .unwrap();
        // The client answers the ping with a pong.
        let Some(Ok(Message::Pong(p))) = ws.next().await else {
            panic!("no pong")
        };
        assert_eq!(&p[..], b"pi");
        ws.close(Some(CloseFrame {
            code: CloseCode::Again,
            reason: "bye".into(),
        }))
        .await
        .unwrap();
        // Until the client's close arrives.
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    let (mut r, mut w) = client(addr).await;
    for len in [5, 300, 70_000] {
        w.send_text(&sent(len)).await.unwrap();
    }
    assert_eq!(
        r.next().await.unwrap(),
        Frame::Text(Bytes::from_static(b"world"))
    );
    assert_eq!(r.next().await.unwrap(), Frame::Text(Bytes::from(expected)));
    let Frame::Ping(p) = r.next().await.unwrap() else {
        panic!("no ping")
    };
    w.pong(&p).await.unwrap();
    assert_eq!(r.next().await.unwrap(), Frame::Close(Some(1013)));
    w.close(1000).await.unwrap();
    assert!(matches!(
        r.next().await,
        Err(WsError::Eof) | Err(WsError::Io(_))
    ));
    // The 300 KB message's buffer was not kept for the life of the connection.
    assert!(
        r.framer.buf.capacity() <= KEEP_CAPACITY,
        "{}",
        r.framer.buf.capacity()
    );
}

/// A read dropped while half a frame has arrived (as `select!` does) loses nothing.
#[tokio::test]
async fn a_cancelled_read_loses_no_bytes() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let frame = server_frame(b"split in two", OpCode::Data(Data::Text), true);
        let tcp = ws.get_mut();
        tcp.write_all(&frame[..5]).await.unwrap();
        let _ = go_rx.await;
        tcp.write_all(&frame[5..]).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let (mut r, _w) = client(addr).await;
    let early = tokio::time::timeout(Duration::from_millis(200), r.next()).await;
    assert!(early.is_err(), "half a frame is not a frame");
    go_tx.send(()).unwrap();
    assert_eq!(
        r.next().await.unwrap(),
        Frame::Text(Bytes::from_static(b"split in two"))
    );
}

#[tokio::test]
async fn a_refused_upgrade_says_why() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for answer in [
            "HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: bm90IHRoZSByaWdodCBvbmU=\r\n\r\n",
        ] {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = tcp.read(&mut buf).await;
            tcp.write_all(answer.as_bytes()).await.unwrap();
        }
    });
    for expected in ["401 Unauthorized", "Sec-WebSocket-Accept"] {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let err = connect(Conn::Plain(tcp), "h", "/")
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains(expected), "{err}");
    }
}

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// A connected loopback pair: (server side shared like the gateway's, client side).
async fn pair(send_buffer: Option<u32>) -> (Arc<TcpStream>, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let (client, server) = tokio::join!(socket.connect(addr), listener.accept());
    let (server, _) = server.unwrap();
    if let Some(n) = send_buffer {
        socket2::SockRef::from(&server)
            .set_send_buffer_size(n as usize)
            .unwrap();
    }
    (Arc::new(server), client.unwrap())
}

fn event(text: &str) -> OutFrame {
    OutFrame::Event {
        text: Arc::from(text),
        created_ms: now_ms(),
    }
}

/// Reads server frames until `n` text payloads arrived.
async fn read_texts(client: &mut TcpStream, n: usize) -> Vec<String> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    while out.len() < n {
        let mut chunk = vec![0u8; 65536];
        let got = tokio::time::timeout(Duration::from_secs(10), client.read(&mut chunk))
            .await
            .expect("frames within 10 s")
            .unwrap();
        assert!(got > 0, "stream ended after {} frames", out.len());
        buf.extend_from_slice(&chunk[..got]);
        loop {
            if buf.len() < 2 {
                break;
            }
            assert_eq!(buf[0], 0x81, "a final text frame");
            let (ext, len) = match buf[1] {
                126 if buf.len() >= 4 => (2, u16::from_be_bytes([buf[2], buf[3]]) as usize),
                126 => break,
                127 => panic!("no test frame is that long"),
                n => (0, n as usize),
            };
            if buf.len() < 2 + ext + len {
                break;
            }
            out.push(String::from_utf8(buf[2 + ext..2 + ext + len].to_vec()).unwrap());
            buf.drain(..2 + ext + len);
        }
    }
    out
}

/// Plays the socket task: writes whatever it takes, in order, until the outbox is free.
async fn task_drains(outbox: &Outbox, tcp: &TcpStream) -> usize {
    let mut written = 0;
    loop {
        let taken = outbox.take(usize::MAX);
        let mut bytes = taken.spill.clone();
        for item in &taken.frames {
            if let OutFrame::Event { text, .. } = item {
                frame::encode(&mut bytes, OpCode::Text, text.as_bytes());
                written += 1;
            }
        }
        let mut w = crate::wire::SharedTcp(Arc::new(tcp_clone(tcp)));
        w.write_all(&bytes).await.unwrap();
        if outbox.release() {
            return written;
        }
    }
}

/// Another handle on the same socket (a dup'd descriptor), for the playing task.
fn tcp_clone(tcp: &TcpStream) -> TcpStream {
    let std = socket2::SockRef::from(tcp).try_clone().unwrap();
    let std: std::net::TcpStream = std.into();
    std.set_nonblocking(true).unwrap();
    TcpStream::from_std(std).unwrap()
}

#[tokio::test]
async fn an_idle_socket_is_written_by_the_pusher_itself() {
    let (tcp, mut client) = pair(None).await;
    let outbox = Outbox::new(QueueBound::frames(8), Some(tcp.clone()));
    assert_eq!(outbox.push(event("one"), true), Pushed::Written);
    assert_eq!(outbox.push(event("two"), true), Pushed::Written);
    assert_eq!(read_texts(&mut client, 2).await, vec!["one", "two"]);
    // Nothing was queued, so the task has nothing to do.
    let taken = outbox.take(usize::MAX);
    assert!(taken.frames.is_empty() && taken.spill.is_empty());
    assert!(outbox.release());
    // A big room's fan-out asks for the queue even when the socket is free.
    assert_eq!(outbox.push(event("big"), false), Pushed::Queued);
    assert_eq!(outbox.take(usize::MAX).frames.len(), 1);
    assert!(outbox.release());
}

#[tokio::test]
async fn while_the_task_holds_the_socket_frames_queue_up_to_the_bound() {
    let (tcp, mut client) = pair(None).await;
    let outbox = Outbox::new(QueueBound::frames(2), Some(tcp.clone()));
    let taken = outbox.take(usize::MAX);
    assert!(taken.frames.is_empty());
    assert_eq!(outbox.push(event("a"), true), Pushed::Queued);
    assert_eq!(outbox.push(event("b"), true), Pushed::Queued);
    assert_eq!(outbox.push(event("c"), true), Pushed::Full);
    // More arrived while the task held the socket: it must take again before releasing.
    assert!(!outbox.release());
    assert_eq!(task_drains(&outbox, &tcp).await, 2);
    assert_eq!(read_texts(&mut client, 2).await, vec!["a", "b"]);
    // Free again: the next push is direct.
    assert_eq!(outbox.push(event("d"), true), Pushed::Written);
    assert_eq!(read_texts(&mut client, 1).await, vec!["d"]);
}

#[tokio::test]
async fn a_tls_socket_always_goes_through_the_task() {
    let outbox = Outbox::new(QueueBound::frames(4), None);
    assert_eq!(outbox.push(event("x"), true), Pushed::Queued);
    let taken = outbox.take(usize::MAX);
    assert_eq!(taken.frames.len(), 1);
    assert_eq!(taken.depth, 1);
    assert!(outbox.release());
}

#[tokio::test]
async fn the_queue_is_bounded_by_bytes_too_and_one_big_frame_always_fits() {
    let bound = QueueBound {
        frames: 1_000,
        bytes: 10_000,
    };
    let outbox = Outbox::new(bound, None);
    let big = |n: usize| OutFrame::Direct(Arc::from("x".repeat(n)));
    // Larger than the whole bound, into an empty queue: it goes (a join snapshot, a replay).
    assert_eq!(outbox.push(big(25_000), true), Pushed::Queued);
    assert_eq!(outbox.push(big(10), true), Pushed::Full);
    let taken = outbox.take(usize::MAX);
    assert_eq!(taken.frames.len(), 1);
    assert!(outbox.release());
    // Three 3 KB frames fit in 10 KB; a fourth is a client too slow to keep up.
    for _ in 0..3 {
        assert_eq!(outbox.push(big(3_000), true), Pushed::Queued);
    }
    assert_eq!(outbox.push(big(3_000), true), Pushed::Full);
    // Taking part of the queue frees its bytes.
    assert_eq!(outbox.take(2).frames.len(), 2);
    assert_eq!(outbox.push(big(3_000), true), Pushed::Queued);
    assert_eq!(outbox.push(big(3_000), true), Pushed::Queued);
    assert_eq!(outbox.push(big(3_000), true), Pushed::Full);
}

#[tokio::test]
async fn a_partly_written_frame_is_finished_first_and_nothing_interleaves() {
    // Small buffers and a client that does not read yet: direct writes soon fill the socket.
    let (tcp, mut client) = pair(Some(4096)).await;
    let outbox = Outbox::new(QueueBound::frames(10_000), Some(tcp.clone()));
    let texts: Vec<String> = (0..400)
        .map(|i| format!("{i:04} {}", "z".repeat(300 + i % 7)))
        .collect();
    let mut outcomes = Vec::new();
    for t in &texts {
        outcomes.push(outbox.push(event(t), true));
    }
    let written = outcomes.iter().filter(|o| **o == Pushed::Written).count();
    let queued = outcomes.iter().filter(|o| **o == Pushed::Queued).count();
    assert!(written > 0, "the first frames went straight out");
    assert!(queued > 0, "the socket filled, so later frames queued");
    assert_eq!(written + queued, texts.len());
    // Once the socket filled, nothing more was written directly.
    let first_queued = outcomes.iter().position(|o| *o == Pushed::Queued).unwrap();
    assert!(outcomes[first_queued..]
        .iter()
        .all(|o| *o == Pushed::Queued));
    // The client reads while the task drains: every frame arrives whole and in order.
    let reader = tokio::spawn(async move { read_texts(&mut client, 400).await });
    assert_eq!(task_drains(&outbox, &tcp).await, queued);
    let got = reader.await.unwrap();
    assert_eq!(got, texts);
}

#[tokio::test]
async fn a_broken_socket_is_reported() {
    let (tcp, client) = pair(None).await;
    drop(client);
    let outbox = Outbox::new(QueueBound::frames(4), Some(tcp.clone()));
    // The first write may still be taken by the kernel; a reset peer fails the next ones.
    let mut outcome = Pushed::Written;
    for _ in 0..50 {
        outcome = outbox.push(event("into the void"), true);
        if outcome == Pushed::Broken {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(outcome, Pushed::Broken);
}

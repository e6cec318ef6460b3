//! Slow clients, recovery by seq, persistence across restarts, graceful shutdown, TLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::*;
use figment::providers::Serialized;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::MaybeTlsStream;

#[tokio::test]
async fn recovers_missed_events_by_since_seq_after_a_drop() {
    let dir = TempDir::new("recover");
    let mut node = start(&dir.0, |f| {
        f.merge(Serialized::default("room.chat_burst", 100.0))
    })
    .await;
    let (mut owner, _token, room) = node.owner("Owner").await;
    let (bt, _) = node.guest("Bob").await;
    let mut bob = node.connect(&bt).await;
    let ack = bob.join(&room, None).await;
    let last_seen = ack["seq"].as_u64().unwrap();
    drop(bob); // the socket drops without a close handshake
    owner.event("presence.leave").await;
    for i in 0..5 {
        owner
            .ok(json!({"type": "chat.send", "room": room, "text": format!("missed {i}")}))
            .await;
    }
    let mut bob = node.connect(&bt).await;
    let ack = bob.join(&room, Some(last_seen)).await;
    assert_eq!(ack["recovered"], true);
    assert!(ack.get("snapshot").is_none());
    let current = ack["seq"].as_u64().unwrap();
    let mut replayed = Vec::new();
    while replayed.len() < (current - last_seen) as usize {
        replayed.push(bob.recv().await);
    }
    let seqs: Vec<u64> = replayed
        .iter()
        .map(|v| v["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (last_seen + 1..=current).collect::<Vec<_>>());
    let texts: Vec<&str> = replayed.iter().filter_map(|v| v["text"].as_str()).collect();
    assert_eq!(
        texts,
        (0..5).map(|i| format!("missed {i}")).collect::<Vec<_>>()
    );
    // Live events continue right after.
    owner
        .ok(json!({"type": "chat.send", "room": room, "text": "live"}))
        .await;
    assert_eq!(
        bob.event("chat.message").await["seq"].as_u64(),
        Some(current + 1)
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_is_closed_with_4008_while_others_keep_receiving() {
    const MESSAGES: usize = 3_000;
    let dir = TempDir::new("slow");
    let mut node = start(&dir.0, |f| {
        // Small commit batches keep delivery bursts well under a fast reader's queue.
        f.merge(Serialized::default("gateway.outbound_queue", 64))
            .merge(Serialized::default("store.batch_max", 8))
            .merge(Serialized::default("gateway.socket_send_buffer", 8192))
            .merge(Serialized::default("gateway.command_rate", 100_000.0))
            .merge(Serialized::default("gateway.command_burst", 100_000.0))
            .merge(Serialized::default("room.chat_rate", 100_000.0))
            .merge(Serialized::default("room.chat_burst", 100_000.0))
            .merge(Serialized::default("room.history_max", 10_000))
    })
    .await;
    let (mut sender, _token, room) = node.owner("Sender").await;
    let (mut fast, _, _) = node.member("Fast", &room).await;

    // The slow client: a tiny receive buffer, and it does not read for a while.
    let (slow_token, slow_id) = node.guest("Slow").await;
    let mut slow = slow_client(&node, &slow_token).await;
    let slow_ack = slow.join(&room, None).await;
    let slow_seen = slow_ack["seq"].as_u64().unwrap();

    let text = "y".repeat(480);
    // The sender reads its own echoes too (in small batches), so only the slow one lags.
    let sending = tokio::spawn(async move {
        for batch in 0..MESSAGES / 20 {
            let mut last = String::new();
            for i in 0..20 {
                let text = format!("{} {text}", batch * 20 + i);
                last = sender
                    .send(json!({"type": "chat.send", "room": room.clone(), "text": text}))
                    .await;
            }
            sender.reply(&last).await;
            sender.drain_backlog();
        }
        (sender, room)
    });
    // Every message reaches the fast member, in order, while the slow one is stuck.
    let mut got = 0usize;
    let mut last_seq = 0u64;
    let mut saw_slow_leave = false;
    while got < MESSAGES {
        let v = fast.recv().await;
        if v["type"] == "chat.message" {
            let seq = v["seq"].as_u64().unwrap();
            assert!(seq > last_seq);
            last_seq = seq;
            got += 1;
        }
        if v["type"] == "presence.leave" && v["user_id"] == slow_id.as_str() {
            saw_slow_leave = true;
        }
    }
    let (_sender, room) = sending.await.unwrap();
    if !saw_slow_leave {
        fast.recv_until(|v| v["type"] == "presence.leave" && v["user_id"] == slow_id.as_str())
            .await;
    }
    // The slow client now reads: what was buffered, then the 4008 close.
    assert_eq!(slow.closed().await, Ended::Close(4008));
    // It resumes by seq on a new connection and misses nothing still in history.
    let mut again = node.connect(&slow_token).await;
    let ack = again.join(&room, Some(slow_seen)).await;
    assert_eq!(ack["recovered"], true);
    let current = ack["seq"].as_u64().unwrap();
    let mut chats = 0;
    for _ in slow_seen + 1..=current {
        if again.recv().await["type"] == "chat.message" {
            chats += 1;
        }
    }
    assert_eq!(chats, MESSAGES);
    let (_, metrics) = http(node.addr, "GET", "/metrics", None, None).await;
    assert!(metrics["raw"]
        .as_str()
        .unwrap()
        .contains("lockstep_gateway_outbound_overflow_total"));
    node.stop().await;
}

/// A client with a 4 KiB receive buffer, to be left unread.
async fn slow_client(node: &Node, token: &str) -> Client {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(node.addr).await.unwrap();
    let mut req = format!("ws://{}/v1/ws", node.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream))
        .await
        .unwrap();
    Client::from_stream(ws)
}

/// Large frames fill a slow client's queue long before its frame count does: the byte bound
/// closes it (4008) instead of letting it pin megabytes of `queue.update`s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_closed_by_the_bytes_it_holds_not_only_the_frames() {
    let dir = TempDir::new("slow-bytes");
    let mut node = start(&dir.0, |f| {
        f.merge(Serialized::default(
            "gateway.outbound_queue_bytes",
            64 * 1024,
        ))
        .merge(Serialized::default("gateway.socket_send_buffer", 8192))
    })
    .await;
    let (mut owner, _token, room) = node.owner("Owner").await;
    let (mut fast, _, _) = node.member("Fast", &room).await;
    let (slow_token, _) = node.guest("Slow").await;
    let mut slow = slow_client(&node, &slow_token).await;
    slow.join(&room, None).await;
    // 50 entries with 200-character titles: each `queue.update` is ≈ 15 KB. About 90 frames
    // in all, far under the 1,024-frame bound, but over 1 MB.
    const ADDS: u64 = 50;
    const MOVES: u64 = 40;
    // A member reading as it comes keeps every one (the first entry starts playing: no
    // `queue.update` for it).
    let reader = tokio::spawn(async move {
        let mut updates = 0;
        while updates < ADDS - 1 + MOVES {
            if fast.recv().await["type"] == "queue.update" {
                updates += 1;
            }
        }
    });
    for i in 0..ADDS {
        let url = format!("https://youtu.be/{i:0>11}");
        let add = json!({"type": "queue.add", "room": room, "title": "t".repeat(200), "url": url});
        owner.ok(add).await;
        owner.drain_backlog();
    }
    for i in 0..MOVES {
        let entry_id = 5 + i;
        let mv = json!({"type": "queue.move", "room": room, "entry_id": entry_id, "index": 0});
        owner.ok(mv).await;
        owner.drain_backlog();
    }
    reader.await.unwrap();
    assert_eq!(slow.closed().await, Ended::Close(4008));
    node.stop().await;
}

#[tokio::test]
async fn state_survives_a_restart() {
    let dir = TempDir::new("restart");
    let mut node = start(&dir.0, |f| f).await;
    let (token, _) = node.guest("Owner").await;
    let (op_token, op_id) = node.guest("Op").await;
    let room = node.create_room(&token).await;
    let mut owner = node.connect(&token).await;
    owner.join(&room, None).await;
    owner.ok(json!({"type": "room.settings", "room": room, "name": "Persisted", "control_mode": "anyone", "ad_policy": "pause_all", "vote_skip_percent": 40})).await;
    owner
        .ok(json!({"type": "room.role", "room": room, "user_id": op_id, "role": "operator"}))
        .await;
    for v in ["aaaaaaaaaaa", "bbbbbbbbbbb", "ccccccccccc"] {
        owner
            .ok(json!({"type": "queue.add", "room": room, "url": format!("https://youtu.be/{v}")}))
            .await;
    }
    owner.ok(json!({"type": "player.play", "room": room})).await;
    owner
        .ok(json!({"type": "player.seek", "room": room, "position_ms": 60000, "play": false}))
        .await;
    owner.send_raw(&json!({"id": "before-restart", "type": "chat.send", "room": room, "text": "remember me"}).to_string()).await;
    let first_ack = owner.reply("before-restart").await;
    let (_, before) = room_body(node.addr, &token, &room).await;
    drop(owner);
    node.stop().await;

    let mut node = start(&dir.0, |f| f).await;
    let (_, after) = room_body(node.addr, &token, &room).await;
    assert_eq!(
        after["settings"],
        json!({"name": "Persisted", "control_mode": "anyone", "ad_policy": "pause_all", "vote_skip_percent": 40})
    );
    assert_eq!(after["queue"], before["queue"]);
    assert_eq!(after["player"], before["player"]);
    assert_eq!(after["player"]["state"], "paused");
    assert_eq!(after["player"]["position_ms"], 60000);
    // The owner's socket closing was a presence.leave: one more seq than before.
    assert_eq!(after["seq"].as_u64(), before["seq"].as_u64().map(|s| s + 1));
    let (_, chat) = http(
        node.addr,
        "GET",
        &format!("/v1/rooms/{room}/chat"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(chat["messages"][0]["text"], "remember me");
    let (status, _) = http(
        node.addr,
        "GET",
        &format!("/v1/rooms/{room}/audit"),
        Some(&op_token),
        None,
    )
    .await;
    assert_eq!(status, 200, "operator role survived");

    let mut owner = node.connect(&token).await;
    let ack = owner.join(&room, None).await;
    assert_eq!(
        ack["seq"].as_u64(),
        after["seq"].as_u64().map(|s| s + 1),
        "seq continues"
    );
    assert_eq!(ack["snapshot"]["chat"][0]["text"], "remember me");
    // The recovery history was persisted too: a client that saw the pre-restart seq
    // recovers by replay instead of a snapshot.
    let mut again = node.connect(&op_token).await;
    let rec = again.join(&room, before["seq"].as_u64()).await;
    assert_eq!(rec["recovered"], true, "{rec}");
    let replayed = again.recv().await;
    assert_eq!(
        replayed["seq"].as_u64(),
        before["seq"].as_u64().map(|s| s + 1)
    );
    assert_eq!(replayed["type"], "presence.leave");
    owner.send_raw(&json!({"id": "before-restart", "type": "chat.send", "room": room, "text": "remember me"}).to_string()).await;
    assert_eq!(
        owner.reply("before-restart").await,
        first_ack,
        "idempotent across restarts"
    );
    node.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_warns_clients_then_closes() {
    let dir = TempDir::new("drain");
    let mut node = start(&dir.0, |f| f).await;
    let (mut c, _token, _room) = node.owner("Owner").await;
    let stopping = {
        let running = node.running.take().unwrap();
        tokio::spawn(running.shutdown())
    };
    let draining = c.event("server.draining").await;
    assert!(draining["grace_ms"].as_u64().is_some());
    assert_eq!(c.closed().await, Ended::Close(1001));
    stopping.await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(node.addr).await.is_err(),
        "stopped accepting"
    );
}

#[tokio::test]
async fn serves_tls_with_rustls() {
    let dir = TempDir::new("tls");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_path = dir.0.join("cert.pem");
    let key_path = dir.0.join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let mut node = start(&dir.0, |f| {
        f.merge(Serialized::default("tls.cert", &cert_path))
            .merge(Serialized::default("tls.key", &key_path))
    })
    .await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tls.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    // A plain-text client gets nothing useful from a TLS port.
    let (status, _) = http(node.addr, "GET", "/healthz", None, None).await;
    assert_ne!(status, 200);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn departures_reach_a_room_whose_mailbox_is_full() {
    let dir = TempDir::new("departures");
    let node = start(&dir.0, |f| {
        f.merge(Serialized::default("room.mailbox", 2))
            .merge(Serialized::default("gateway.command_rate", 10_000.0))
            .merge(Serialized::default("gateway.command_burst", 10_000.0))
    })
    .await;
    let (mut owner, token, room) = node.owner("owner").await;
    let mut members = Vec::new();
    for i in 0..30 {
        let (t, _) = node.guest(&format!("m{i}")).await;
        let mut c = node.connect(&t).await;
        // A busy room answers `unavailable`: retry like a client would.
        loop {
            let r = c.call(json!({"type": "room.join", "room": room})).await;
            if r["type"] == "ack" {
                break;
            }
            assert_eq!(r["code"], "unavailable", "{r}");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        members.push(c);
    }
    // Everyone leaves at once while the owner keeps the mailbox busy.
    let code = room.clone();
    let chatter = tokio::spawn(async move {
        for i in 0..200 {
            let _ = owner
                .send(json!({"type": "chat.send", "room": code, "text": format!("x{i}")}))
                .await;
        }
        owner
    });
    for c in members {
        drop(c);
    }
    let _owner = chatter.await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, body) = room_body(node.addr, &token, &room).await;
        let n = body["members"].as_array().map(Vec::len).unwrap_or(0);
        if n == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} members linger in presence"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

//! Room features over real WebSockets: presence, sync, control modes, queue and ready gate,
//! chat, idempotency, signals, time sync, bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use figment::providers::Serialized;
use serde_json::{json, Value};

#[tokio::test]
async fn join_ack_snapshot_shape_and_presence() {
    let (_d, mut node) = node("join").await;
    let (owner_token, owner) = node.guest("Owner").await;
    let room = node.create_room(&owner_token).await;
    let mut a = node.connect(&owner_token).await;
    let ack = a.join(&room, None).await;
    let snap = &ack["snapshot"];
    assert_eq!(ack["seq"], 1);
    assert_eq!(snap["room"], room.as_str());
    assert_eq!(
        snap["settings"],
        json!({"name": room, "control_mode": "operators", "ad_policy": "ignore", "vote_skip_percent": 0})
    );
    assert_eq!(
        snap["members"],
        json!([{"user_id": owner, "name": "Owner", "role": "owner", "ready": false}])
    );
    assert_eq!(snap["player"]["state"], "idle");
    assert!(snap["player"]["entry"].is_null());
    assert_eq!(snap["queue"], json!([]));
    assert_eq!(snap["chat"], json!([]));

    let (mut b, bob, back) = node.member("Bob", &room).await;
    let join_ev = a.event("presence.join").await;
    assert_eq!(join_ev["seq"], back["seq"]);
    assert_eq!(join_ev["user"]["user_id"], bob.as_str());
    assert_eq!(join_ev["room"], room.as_str());
    assert!(join_ev["ts"].as_u64().unwrap() > 0);
    // Bob's next event is ack.seq + 1.
    a.ok(json!({"type": "chat.send", "room": room, "text": "hello"}))
        .await;
    let msg = b.event("chat.message").await;
    assert_eq!(msg["seq"].as_u64(), back["seq"].as_u64().map(|s| s + 1));

    // A second connection of Bob joins silently; closing one keeps him present.
    let (bob_token2, _) = (String::new(), ());
    let _ = bob_token2;
    b.close().await;
    let leave = a.event("presence.leave").await;
    assert_eq!(leave["user_id"], bob.as_str());
    node.stop().await;
}

#[tokio::test]
async fn second_connection_of_a_user_is_silent() {
    let (_d, mut node) = node("twoconn").await;
    let (token, _) = node.guest("Owner").await;
    let room = node.create_room(&token).await;
    let (watcher_token, _) = node.guest("W").await;
    let mut w = node.connect(&watcher_token).await;
    w.join(&room, None).await;
    let (bt, bob) = node.guest("Bob").await;
    let mut b1 = node.connect(&bt).await;
    let a1 = b1.join(&room, None).await;
    let mut b2 = node.connect(&bt).await;
    let a2 = b2.join(&room, None).await;
    assert_eq!(
        a1["seq"], a2["seq"],
        "silent join: ack.seq is the current seq"
    );
    assert_eq!(
        w.event("presence.join").await["user"]["user_id"],
        bob.as_str()
    );
    b1.close().await;
    // Still present: the next event W sees is the chat, not a leave.
    b2.ok(json!({"type": "chat.send", "room": room, "text": "still here"}))
        .await;
    let next = w
        .recv_until(|v| v["type"] == "chat.message" || v["type"] == "presence.leave")
        .await;
    assert_eq!(next["type"], "chat.message");
    b2.close().await;
    assert_eq!(w.event("presence.leave").await["user_id"], bob.as_str());
    node.stop().await;
}

#[tokio::test]
async fn three_clients_see_one_identical_seq_stream() {
    let (_d, mut node) = node("sync").await;
    let (mut owner, _token, room) = node.owner("Owner").await;
    let (mut b, _, _) = node.member("B", &room).await;
    let (mut c, _, cack) = node.member("C", &room).await;
    let start = cack["seq"].as_u64().unwrap();
    owner
        .ok(json!({"type": "room.settings", "room": room, "control_mode": "anyone"}))
        .await;
    owner
        .ok(json!({"type": "queue.add", "room": room, "url": "https://youtu.be/dQw4w9WgXcQ"}))
        .await;
    b.ok(json!({"type": "queue.add", "room": room, "url": "https://www.youtube.com/watch?v=aaaaaaaaaaa&t=3"})).await;
    c.ok(json!({"type": "player.play", "room": room})).await;
    b.ok(json!({"type": "player.seek", "room": room, "position_ms": 30000}))
        .await;
    c.ok(json!({"type": "player.pause", "room": room})).await;
    owner
        .ok(json!({"type": "chat.send", "room": room, "text": "done"}))
        .await;
    let mut streams = Vec::new();
    for client in [&mut owner, &mut b, &mut c] {
        let mut seen: Vec<Value> = Vec::new();
        loop {
            let v = client.recv().await;
            if v.get("seq").is_some() && v["type"] != "ack" && v["seq"].as_u64().unwrap() > start {
                seen.push(v.clone());
            }
            if v["type"] == "chat.message" && v["text"] == "done" {
                break;
            }
        }
        streams.push(seen);
    }
    assert_eq!(streams[0], streams[1]);
    assert_eq!(streams[1], streams[2]);
    let seqs: Vec<u64> = streams[0]
        .iter()
        .map(|v| v["seq"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (start + 1..=start + seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "strictly +1");
    let last_state = streams[0]
        .iter()
        .rev()
        .find(|v| v["type"] == "player.state")
        .unwrap();
    assert_eq!(last_state["state"], "paused");
    assert_eq!(last_state["entry"]["video_id"], "dQw4w9WgXcQ");
    node.stop().await;
}

#[tokio::test]
async fn control_modes_and_roles() {
    let (_d, mut node) = node("modes").await;
    let (mut owner, _token, room) = node.owner("Owner").await;
    let (mut op, op_id, _) = node.member("Op", &room).await;
    let (mut pat, _, _) = node.member("Pat", &room).await;
    owner
        .ok(json!({"type": "queue.add", "room": room, "url": "https://youtu.be/dQw4w9WgXcQ"}))
        .await;
    let play = json!({"type": "player.play", "room": room});
    let pause = json!({"type": "player.pause", "room": room});
    // operators mode (default): operator needs the role first.
    assert_eq!(op.call(play.clone()).await["code"], "forbidden");
    owner
        .ok(json!({"type": "room.role", "room": room, "user_id": op_id, "role": "operator"}))
        .await;
    let upd = pat.event("presence.update").await;
    assert_eq!(upd["user"]["role"], "operator");
    op.ok(play.clone()).await;
    assert_eq!(pat.call(pause.clone()).await["code"], "forbidden");
    assert_eq!(
        op.call(
            json!({"type": "room.role", "room": room, "user_id": op_id, "role": "participant"})
        )
        .await["code"],
        "forbidden"
    );
    // owner mode.
    owner
        .ok(json!({"type": "room.settings", "room": room, "control_mode": "owner"}))
        .await;
    assert_eq!(
        pat.event("room.settings").await["settings"]["control_mode"],
        "owner"
    );
    assert_eq!(op.call(pause.clone()).await["code"], "forbidden");
    owner.ok(pause.clone()).await;
    // anyone mode.
    owner.ok(json!({"type": "room.settings", "room": room, "control_mode": "anyone", "name": "Movie night"})).await;
    pat.ok(play.clone()).await;
    assert_eq!(
        pat.event("room.settings").await["settings"]["name"],
        "Movie night"
    );
    assert_eq!(
        pat.call(json!({"type": "room.settings", "room": room, "name": "mine"}))
            .await["code"],
        "forbidden"
    );
    node.stop().await;
}

#[tokio::test]
async fn queue_and_ready_gate() {
    let dir = TempDir::new("gate");
    let mut node = start(&dir.0, |f| {
        f.merge(Serialized::default("room.ready_timeout_ms", 1500))
    })
    .await;
    let (mut owner, _token, room) = node.owner("Owner").await;
    let (mut b, _, _) = node.member("B", &room).await;
    let bad = owner
        .call(json!({"type": "queue.add", "room": room, "url": "https://example.com/video"}))
        .await;
    assert_eq!(bad["code"], "bad_request");
    let r = owner.ok(json!({"type": "queue.add", "room": room, "url": "https://youtu.be/dQw4w9WgXcQ", "title": "Rick"})).await;
    let first = r["entry_id"].as_u64().unwrap();
    let st = b.event("player.state").await;
    assert_eq!(st["state"], "starting");
    assert_eq!(st["entry"]["title"], "Rick");
    for v in ["aaaaaaaaaaa", "bbbbbbbbbbb", "ccccccccccc"] {
        owner
            .ok(json!({"type": "queue.add", "room": room, "url": format!("https://youtu.be/{v}")}))
            .await;
    }
    let q = b
        .recv_until(|v| v["type"] == "queue.update" && v["entries"].as_array().unwrap().len() == 3)
        .await;
    let third = q["entries"][2]["entry_id"].as_u64().unwrap();
    owner
        .ok(json!({"type": "queue.move", "room": room, "entry_id": third, "index": 0}))
        .await;
    let q = b.event("queue.update").await;
    assert_eq!(q["entries"][0]["entry_id"].as_u64(), Some(third));
    owner
        .ok(json!({"type": "queue.remove", "room": room, "entry_id": third}))
        .await;
    assert_eq!(
        b.event("queue.update").await["entries"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // Shuffle keeps the entries (two: the same or swapped), clear empties the queue.
    owner
        .ok(json!({"type": "queue.shuffle", "room": room}))
        .await;
    let q = b.event("queue.update").await;
    assert_eq!(q["entries"].as_array().unwrap().len(), 2);
    let cleared = owner.ok(json!({"type": "queue.clear", "room": room})).await;
    assert_eq!(cleared["removed"], 2);
    assert_eq!(b.event("queue.update").await["entries"], json!([]));
    for v in ["aaaaaaaaaaa", "bbbbbbbbbbb"] {
        owner
            .ok(json!({"type": "queue.add", "room": room, "url": format!("https://youtu.be/{v}")}))
            .await;
    }
    b.recv_until(|v| v["type"] == "queue.update" && v["entries"].as_array().unwrap().len() == 2)
        .await;

    // Ready gate: both ready → playing, scheduled in the future.
    owner
        .ok(json!({"type": "user.ready", "room": room, "ready": true}))
        .await;
    b.ok(json!({"type": "user.ready", "room": room, "ready": true}))
        .await;
    let st = owner
        .recv_until(|v| v["type"] == "player.state" && v["state"] == "playing")
        .await;
    assert!(
        st["at"].as_u64().unwrap() >= st["ts"].as_u64().unwrap() + 250,
        "scheduled start: {st}"
    );
    // Ended advances once even when both report it.
    owner
        .ok(json!({"type": "player.ended", "room": room, "entry_id": first}))
        .await;
    let second = b
        .ok(json!({"type": "player.ended", "room": room, "entry_id": first}))
        .await;
    assert_eq!(second["advanced"], false);
    let st = b
        .recv_until(|v| v["type"] == "player.state" && v["state"] == "starting")
        .await;
    assert_ne!(st["entry_id"].as_u64(), Some(first));
    // Nobody readies: the gate times out and playback starts anyway.
    let st = b
        .recv_until(|v| v["type"] == "player.state" && v["state"] == "playing")
        .await;
    assert!(st["ts"].as_u64().unwrap() >= st["at"].as_u64().unwrap() - 250);
    node.stop().await;
}

#[tokio::test]
async fn chat_rules_and_rate_limit() {
    let dir = TempDir::new("chat");
    let mut node = start(&dir.0, |f| {
        f.merge(Serialized::default("room.chat_rate", 0.5))
            .merge(Serialized::default("room.chat_burst", 3.0))
    })
    .await;
    let (mut a, _token, room) = node.owner("Owner").await;
    let (mut b, _, _) = node.member("B", &room).await;
    let long = a
        .call(json!({"type": "chat.send", "room": room, "text": "x".repeat(501)}))
        .await;
    assert_eq!(long["code"], "bad_request");
    for i in 0..3 {
        a.ok(json!({"type": "chat.send", "room": room, "text": format!("hi {i}")}))
            .await;
    }
    let limited = a
        .call(json!({"type": "chat.send", "room": room, "text": "too fast"}))
        .await;
    assert_eq!(limited["code"], "rate_limited");
    // Another user has their own bucket.
    b.ok(json!({"type": "chat.send", "room": room, "text": "x".repeat(500)}))
        .await;
    let msg = a
        .recv_until(|v| v["type"] == "chat.message" && v["user"]["name"] == "B")
        .await;
    assert_eq!(msg["source"], "room");
    assert_eq!(msg["id"], msg["seq"]);
    node.stop().await;
}

#[tokio::test]
async fn retried_command_id_is_acked_again_with_one_effect() {
    let (_d, mut node) = node("idem").await;
    let (mut a, token, room) = node.owner("Owner").await;
    let cmd =
        json!({"id": "retry-1", "type": "chat.send", "room": room, "text": "once"}).to_string();
    a.send_raw(&cmd).await;
    let first = a.reply("retry-1").await;
    a.send_raw(&cmd).await;
    let second = a.reply("retry-1").await;
    assert_eq!(first, second);
    a.ok(json!({"type": "chat.send", "room": room, "text": "marker"}))
        .await;
    let (_, page) = http(
        node.addr,
        "GET",
        &format!("/v1/rooms/{room}/chat"),
        Some(&token),
        None,
    )
    .await;
    let texts: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, vec!["marker", "once"]);
    node.stop().await;
}

#[tokio::test]
async fn signal_reaches_only_its_target() {
    let (_d, mut node) = node("signal").await;
    let (mut a, _token, room) = node.owner("Owner").await;
    let (mut b, bob, _) = node.member("B", &room).await;
    let (mut c, _, _) = node.member("C", &room).await;
    let payload = json!({"sdp": "v=0 offer", "candidates": [1, 2]});
    a.ok(json!({"type": "signal.send", "room": room, "to": bob, "payload": payload}))
        .await;
    let sig = b.event("signal").await;
    assert_eq!(sig["payload"], payload);
    assert!(sig.get("seq").is_none());
    // C must not get it: the next thing C sees is a chat marker.
    a.ok(json!({"type": "chat.send", "room": room, "text": "marker"}))
        .await;
    let next = c
        .recv_until(|v| v["type"] == "signal" || v["type"] == "chat.message")
        .await;
    assert_eq!(next["type"], "chat.message");
    let missing = a
        .call(json!({"type": "signal.send", "room": room, "to": "nobody", "payload": 1}))
        .await;
    assert_eq!(missing["code"], "not_found");
    let big = a.call(json!({"type": "signal.send", "room": room, "to": bob, "payload": "x".repeat(17 * 1024)})).await;
    assert_eq!(big["code"], "too_large");
    node.stop().await;
}

#[tokio::test]
async fn time_sync_and_malformed_frames_keep_the_connection() {
    let (_d, mut node) = node("bad").await;
    let (token, _) = node.guest("Owner").await;
    let room = node.create_room(&token).await;
    let mut a = node.connect(&token).await;
    let sync = a.ok(json!({"type": "time.sync", "t0": 123.5})).await;
    assert_eq!(sync["t0"], 123.5);
    assert!(sync["server_ts"].as_u64().unwrap() > 1_700_000_000_000);
    for frame in [
        "not json",
        "[1,2,3]",
        "\"str\"",
        r#"{"type":"no.such.command"}"#,
        r#"{"type":"chat.send","room":"x"}"#,
        r#"{"type":"player.seek","room":"x","position_ms":"ten"}"#,
        r#"{"id":7,"type":"player.play","room":"x"}"#,
        // Postgres cannot store U+0000: refused here, on every store alike.
        r#"{"type":"chat.send","room":"x","text":"a\u0000b"}"#,
    ] {
        a.send_raw(frame).await;
        let err = a.recv().await;
        assert_eq!(err["type"], "error", "{frame}");
        assert_eq!(err["code"], "bad_request", "{frame}");
    }
    a.ws.send(tokio_tungstenite::tungstenite::Message::binary(vec![
        1u8, 2, 3,
    ]))
    .await
    .unwrap();
    assert_eq!(a.recv().await["code"], "bad_request");
    // A command for a room not joined.
    let r = a.call(json!({"type": "player.play", "room": room})).await;
    assert_eq!(r["code"], "forbidden");
    let r = a
        .call(json!({"type": "room.join", "room": "missingroom"}))
        .await;
    assert_eq!(r["code"], "not_found");
    // Still usable.
    a.join(&room, None).await;
    // A frame over the limit closes with 1009.
    a.send_raw(&format!(
        r#"{{"type":"chat.send","room":"{room}","text":"{}"}}"#,
        "x".repeat(70 * 1024)
    ))
    .await;
    assert_eq!(a.closed().await, Ended::Close(1009));
    node.stop().await;
}

use futures_util::SinkExt;

#[tokio::test]
async fn per_connection_command_rate_and_room_limit() {
    let dir = TempDir::new("cmdrate");
    let mut node = start(&dir.0, |f| {
        f.merge(Serialized::default("gateway.command_rate", 0.1))
            .merge(Serialized::default("gateway.command_burst", 4.0))
            .merge(Serialized::default("gateway.max_rooms_per_connection", 2))
    })
    .await;
    let (token, _) = node.guest("Owner").await;
    let r1 = node.create_room(&token).await;
    let r2 = node.create_room(&token).await;
    let r3 = node.create_room(&token).await;
    let mut a = node.connect(&token).await;
    a.join(&r1, None).await;
    a.join(&r2, None).await;
    assert_eq!(
        a.call(json!({"type": "room.join", "room": r3})).await["code"],
        "conflict"
    );
    let mut codes = Vec::new();
    for _ in 0..3 {
        let r = a
            .call(json!({"type": "user.ready", "room": r1, "ready": true}))
            .await;
        codes.push(r["code"].as_str().unwrap_or("ack").to_owned());
    }
    assert!(codes.contains(&"rate_limited".to_owned()), "{codes:?}");
    // time.sync counts too: a flood of it is refused like any other command.
    let r = a.call(json!({"type": "time.sync", "t0": 1})).await;
    assert_eq!(r["code"], "rate_limited");
    node.stop().await;
}

#[tokio::test]
async fn missed_pongs_drop_a_member_from_presence() {
    let dir = TempDir::new("pong");
    let mut node = start(&dir.0, |f| {
        f.merge(Serialized::default("gateway.ping_interval_ms", 200))
            .merge(Serialized::default("presence.timeout_ms", 800))
    })
    .await;
    let (mut a, _token, room) = node.owner("Owner").await;
    let (silent, silent_id, _) = node.member("Silent", &room).await;
    // `silent` never reads, so tungstenite never answers the pings.
    let leave = a.event("presence.leave").await;
    assert_eq!(leave["user_id"], silent_id.as_str());
    drop(silent);
    node.stop().await;
}

#[tokio::test]
async fn participants_vote_an_entry_away_once_the_owner_allows_it() {
    let (_d, mut node) = node("voteskip").await;
    let (mut owner, _token, room) = node.owner("Owner").await;
    let (mut a, _, _) = node.member("A", &room).await;
    let (mut b, _, _) = node.member("B", &room).await;
    for v in ["dQw4w9WgXcQ", "9bZkp7q19f0"] {
        owner
            .ok(json!({"type": "queue.add", "room": room, "url": format!("https://youtu.be/{v}")}))
            .await;
    }
    let off = a
        .call(json!({"type": "player.vote_skip", "room": room}))
        .await;
    assert_eq!(off["code"], "conflict", "{off}");
    owner
        .ok(json!({"type": "room.settings", "room": room, "vote_skip_percent": 60}))
        .await;
    // 3 present at 60 %: 2 votes skip.
    let first = a
        .ok(json!({"type": "player.vote_skip", "room": room}))
        .await;
    assert_eq!(first, json!({"votes": 1, "needed": 2, "skipped": false}));
    let tally = owner.event("player.vote_skip").await;
    assert_eq!(tally["votes"], 1);
    let second = b
        .ok(json!({"type": "player.vote_skip", "room": room}))
        .await;
    assert_eq!(second["skipped"], true);
    let state = owner
        .recv_until(|v| v["type"] == "player.state" && v["entry"]["video_id"] == "9bZkp7q19f0")
        .await;
    assert_eq!(state["state"], "starting");
    node.stop().await;
}

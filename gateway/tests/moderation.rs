//! Bans over real WebSockets: the banned user's connections leave the room (and only that
//! room), learn why, and cannot rejoin until unbanned; the others see the user leave.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn a_banned_user_leaves_the_room_keeps_the_socket_and_cannot_rejoin() {
    let (_d, mut node) = node("ban").await;
    let (mut owner, owner_token, room) = node.owner("Owner").await;
    let other_room = node.create_room(&owner_token).await;
    let (token, troll) = node.guest("Troll").await;
    let mut t = node.connect(&token).await;
    t.join(&room, None).await;
    t.join(&other_room, None).await;
    let mut t2 = node.connect(&token).await;
    t2.join(&room, None).await;
    owner.event("presence.join").await;

    let ack = owner
        .ok(json!({"type": "room.ban", "room": room, "user_id": troll, "duration_ms": 600000}))
        .await;
    let until = ack["until"].as_u64().expect("a timed ban says until when");
    // Both of the user's connections are told, with who and until when.
    for c in [&mut t, &mut t2] {
        let removed = c.event("room.removed").await;
        assert_eq!(removed["room"], room.as_str());
        assert_eq!(removed["reason"], "banned");
        assert_eq!(removed["until"].as_u64(), Some(until));
    }
    let left = owner.event("presence.leave").await;
    assert_eq!(left["user_id"], troll.as_str());
    assert_eq!(left["reason"], "banned", "{left}");

    // Out of that room only: commands there are refused, the other room still works.
    let chat = t
        .call(json!({"type": "chat.send", "room": room, "text": "hello?"}))
        .await;
    assert_eq!(chat["code"], "forbidden", "{chat}");
    t.ok(json!({"type": "chat.send", "room": other_room, "text": "still here"}))
        .await;
    let rejoin = t.call(json!({"type": "room.join", "room": room})).await;
    assert_eq!(rejoin["code"], "forbidden", "{rejoin}");
    assert!(
        rejoin["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("you are banned from this room for another"),
        "{rejoin}"
    );

    // Moderators list the bans in force (participants may not).
    let (status, bans) = http(
        node.addr,
        "GET",
        &format!("/v1/rooms/{room}/bans"),
        Some(&owner_token),
        None,
    )
    .await;
    assert_eq!(status, 200, "{bans}");
    assert_eq!(
        bans,
        json!({"bans": [{"user_id": troll, "until": until}], "mutes": []})
    );
    let (status, _) = http(
        node.addr,
        "GET",
        &format!("/v1/rooms/{other_room}/bans"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, 403);

    // Unbanned, the user comes back; the ban and unban are in the audit log.
    owner
        .ok(json!({"type": "room.unban", "room": room, "user_id": troll}))
        .await;
    t.join(&room, None).await;
    let actions = audit_actions(node.addr, &owner_token, &room).await;
    assert!(
        actions.iter().any(|a| a == "room.ban") && actions.iter().any(|a| a == "room.unban"),
        "{actions:?}"
    );
    node.stop().await;
}

#[tokio::test]
async fn participants_cannot_ban() {
    let (_d, mut node) = node("ban-perm").await;
    let (_owner, _token, room) = node.owner("Owner").await;
    let (mut a, _a_id, _) = node.member("A", &room).await;
    let (_b, b_id, _) = node.member("B", &room).await;
    let r = a
        .call(json!({"type": "room.ban", "room": room, "user_id": b_id}))
        .await;
    assert_eq!(r["code"], "forbidden", "{r}");
    node.stop().await;
}

#[tokio::test]
async fn a_deleted_message_leaves_every_view_but_keeps_its_place_in_history() {
    let (_d, mut node) = node("chat-delete").await;
    let (mut owner, owner_token, room) = node.owner("Owner").await;
    let (mut a, _a_id, _) = node.member("A", &room).await;
    let spam = a
        .ok(json!({"type": "chat.send", "room": room, "text": "buy cheap followers"}))
        .await["id"]
        .as_u64()
        .expect("chat ack has the message id");
    a.ok(json!({"type": "chat.send", "room": room, "text": "sorry"}))
        .await;
    owner
        .ok(json!({"type": "chat.delete", "room": room, "message_id": spam}))
        .await;
    for c in [&mut owner, &mut a] {
        let deleted = c.event("chat.delete").await;
        assert_eq!(deleted["ids"], json!([spam]));
    }
    // A joiner's snapshot no longer has it; the history keeps its place without its text.
    let (_late, _, ack) = node.member("Late", &room).await;
    let texts: Vec<&str> = ack["snapshot"]["chat"]
        .as_array()
        .map(|c| c.iter().filter_map(|m| m["text"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(texts, vec!["sorry"]);
    let row = chat_history(node.addr, &owner_token, &room)
        .await
        .into_iter()
        .find(|m| m["id"].as_u64() == Some(spam))
        .unwrap_or_default();
    assert_eq!(row["text"], "", "{row}");
    assert_eq!(row["ext"]["deleted"], true, "{row}");
    node.stop().await;
}

#[tokio::test]
async fn a_muted_user_watches_but_cannot_chat_until_unmuted() {
    let (_d, mut node) = node("mute").await;
    let (mut owner, _token, room) = node.owner("Owner").await;
    let (mut a, a_id, _) = node.member("A", &room).await;
    let ack = owner
        .ok(json!({"type": "room.mute", "room": room, "user_id": a_id}))
        .await;
    assert_eq!(ack["until"], serde_json::Value::Null);
    let refused = a
        .call(json!({"type": "chat.send", "room": room, "text": "hi"}))
        .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    assert_eq!(refused["message"], "you are muted in this room");
    // Still a member: the room's events reach them, and they may ready up.
    owner
        .ok(json!({"type": "chat.send", "room": room, "text": "welcome"}))
        .await;
    let msg = a.event("chat.message").await;
    assert_eq!(msg["text"], "welcome");
    a.ok(json!({"type": "user.ready", "room": room, "ready": true}))
        .await;
    owner
        .ok(json!({"type": "room.unmute", "room": room, "user_id": a_id}))
        .await;
    a.ok(json!({"type": "chat.send", "room": room, "text": "thanks"}))
        .await;
    node.stop().await;
}

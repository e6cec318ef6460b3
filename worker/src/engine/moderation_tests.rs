//! Bans: who may ban whom, what a ban does to presence and to the banned connections, how
//! long it lasts, its bound, and that it is kept with the room.

use lockstep_shared::bus::{ConnId, ToGateway};
use lockstep_shared::config::RoomConfig;
use lockstep_shared::protocol::{ClientCommand, Role};
use serde_json::Value;

use super::durable::Durable;
use super::tests::{caller, cfg, code, Harness, ROOM};

fn ban(user_id: &str, duration_ms: Option<u64>) -> ClientCommand {
    ClientCommand::RoomBan {
        room: ROOM.into(),
        user_id: user_id.into(),
        duration_ms,
    }
}

fn unban(user_id: &str) -> ClientCommand {
    ClientCommand::RoomUnban {
        room: ROOM.into(),
        user_id: user_id.into(),
    }
}

fn make_operator(h: &mut Harness, user_id: &str) {
    let r = h.run(
        "owner",
        1,
        ClientCommand::RoomRole {
            room: ROOM.into(),
            user_id: user_id.into(),
            role: Role::Operator,
        },
    );
    assert_eq!(code(&r), "ack", "{r}");
}

#[test]
fn a_ban_takes_every_connection_of_the_user_out_and_keeps_them_out() {
    let mut h = Harness::with(cfg());
    h.join("troll", 2);
    h.join("troll", 3);
    h.join("amy", 4);
    let (reply, out) = h.send_as(&caller("owner", 1), Some("b1"), ban("troll", None));
    assert_eq!(code(&reply), "ack", "{reply}");
    assert_eq!(reply["result"]["until"], Value::Null);
    // Both connections are told, and only they: the gateway ends their membership.
    let removed: Vec<(Vec<ConnId>, Value)> = out
        .deliveries
        .iter()
        .filter_map(|d| match d {
            ToGateway::Remove { room, conns, frame } if room == ROOM => Some((
                conns.clone(),
                serde_json::from_str(frame).unwrap_or(Value::Null),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(removed.len(), 1, "{:?}", out.deliveries);
    let (mut conns, frame) = removed[0].clone();
    conns.sort_by_key(|c| c.local);
    assert_eq!(
        conns,
        vec![caller("troll", 2).conn, caller("troll", 3).conn]
    );
    assert_eq!(frame["type"], "room.removed");
    assert_eq!(frame["reason"], "banned");
    assert_eq!(frame["by"], "owner");
    // The others see the user leave; the user's commands and joins are refused.
    let left = h.last_event("presence.leave");
    assert_eq!(
        (left["user_id"].as_str(), left["reason"].as_str()),
        (Some("troll"), Some("banned"))
    );
    let chat = h.run(
        "troll",
        2,
        ClientCommand::ChatSend {
            room: ROOM.into(),
            text: "still here?".into(),
        },
    );
    assert_eq!(code(&chat), "forbidden");
    let rejoin = h.join("troll", 5);
    assert_eq!(code(&rejoin), "forbidden", "{rejoin}");
    assert_eq!(rejoin["message"], "you are banned from this room");
    // Unbanned, they may come back; a second unban finds nothing.
    assert_eq!(code(&h.run("owner", 1, unban("troll"))), "ack");
    assert_eq!(code(&h.run("owner", 1, unban("troll"))), "not_found");
    assert_eq!(code(&h.join("troll", 5)), "ack");
}

#[test]
fn a_timed_ban_ends_by_itself() {
    let mut h = Harness::with(cfg());
    let r = h.run("owner", 1, ban("absent", Some(60_000)));
    assert_eq!(r["result"]["until"].as_u64(), Some(h.now + 60_000));
    // Banning someone not present needs no removal; the ban waits for their join.
    h.tick(30_000);
    let early = h.join("absent", 2);
    assert_eq!(
        early["message"],
        "you are banned from this room for another 30 s"
    );
    let until = h.now + 30_000;
    assert_eq!(
        h.room.bans_view(h.now),
        serde_json::json!({"bans": [{"user_id": "absent", "until": until}], "mutes": []})
    );
    h.tick(30_000);
    assert_eq!(
        h.room.bans_view(h.now),
        serde_json::json!({"bans": [], "mutes": []})
    );
    assert_eq!(code(&h.join("absent", 2)), "ack");
    let zero = h.run("owner", 1, ban("x", Some(0)));
    assert_eq!(code(&zero), "bad_request");
}

#[test]
fn only_the_owner_bans_operators_and_nobody_bans_the_owner() {
    let mut h = Harness::with(cfg());
    h.join("op", 2);
    h.join("op2", 3);
    h.join("pat", 4);
    make_operator(&mut h, "op");
    make_operator(&mut h, "op2");
    assert_eq!(code(&h.run("pat", 4, ban("op", None))), "forbidden");
    assert_eq!(code(&h.run("op", 2, ban("owner", None))), "forbidden");
    assert_eq!(code(&h.run("op", 2, ban("op2", None))), "forbidden");
    assert_eq!(code(&h.run("op", 2, ban("op", None))), "bad_request");
    assert_eq!(code(&h.run("op", 2, ban("pat", Some(1_000)))), "ack");
    // The owner bans an operator, who loses the role with it.
    assert_eq!(code(&h.run("owner", 1, ban("op2", None))), "ack");
    assert!(!h.room.durable().operators.contains("op2"));
    let long = h.run("owner", 1, ban(&"u".repeat(65), None));
    assert_eq!(code(&long), "bad_request");
}

#[test]
fn bans_are_bounded_and_expired_ones_make_room() {
    let mut h = Harness::with(RoomConfig {
        bans_max: 2,
        ..cfg()
    });
    assert_eq!(code(&h.run("owner", 1, ban("a", Some(1_000)))), "ack");
    assert_eq!(code(&h.run("owner", 1, ban("b", None))), "ack");
    let full = h.run("owner", 1, ban("c", None));
    assert_eq!(code(&full), "conflict");
    assert_eq!(full["message"], "at most 2 bans per room");
    // Banning a banned user again changes the ban, not the count.
    assert_eq!(code(&h.run("owner", 1, ban("b", Some(5_000)))), "ack");
    h.tick(1_000);
    assert_eq!(code(&h.run("owner", 1, ban("c", None))), "ack");
    assert_eq!(h.room.durable().bans.len(), 2);
}

#[test]
fn bans_are_kept_with_the_room_and_old_rooms_load_without_them() {
    let mut h = Harness::with(cfg());
    h.run("owner", 1, ban("troll", None));
    let stored = serde_json::to_value(h.room.durable()).unwrap_or(Value::Null);
    let back: Result<Durable, _> = serde_json::from_value(stored.clone());
    assert_eq!(back.as_ref().ok(), Some(h.room.durable()));
    // A room stored before bans existed has no `bans` field.
    let mut old = stored;
    if let Some(o) = old.as_object_mut() {
        o.remove("bans");
    }
    let loaded: Result<Durable, _> = serde_json::from_value(old);
    assert_eq!(loaded.map(|d| d.bans.len()).ok(), Some(0));
}

fn send_chat(h: &mut Harness, user: &str, conn: u64, text: &str) -> u64 {
    let r = h.run(
        user,
        conn,
        ClientCommand::ChatSend {
            room: ROOM.into(),
            text: text.into(),
        },
    );
    r["result"]["id"].as_u64().unwrap_or_default()
}

fn delete(message_id: u64) -> ClientCommand {
    ClientCommand::ChatDelete {
        room: ROOM.into(),
        message_id,
    }
}

#[test]
fn authors_delete_their_messages_and_moderators_anyone_s() {
    let mut h = Harness::with(cfg());
    h.join("amy", 2);
    h.join("bob", 3);
    h.join("op", 4);
    make_operator(&mut h, "op");
    let a1 = send_chat(&mut h, "amy", 2, "oops");
    let a2 = send_chat(&mut h, "amy", 2, "spam");
    let b1 = send_chat(&mut h, "bob", 3, "hello");
    // Bob may not delete Amy's message; Amy may delete her own, the operator anyone's.
    assert_eq!(code(&h.run("bob", 3, delete(a1))), "forbidden");
    let (reply, out) = h.send_as(&caller("amy", 2), Some("d1"), delete(a1));
    assert_eq!(code(&reply), "ack", "{reply}");
    let event = h.last_event("chat.delete");
    assert_eq!(event["ids"], serde_json::json!([a1]));
    assert_eq!(event["by"], "amy");
    // The stored row keeps the message's place without its text.
    let rows: Vec<_> = out
        .mutations
        .iter()
        .filter_map(|m| match m {
            lockstep_shared::store::Mutation::Chat { msg, .. } => Some(msg.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].id, rows[0].text.as_str()), (a1, ""));
    assert_eq!(
        rows[0].ext.as_ref().map(|e| e["deleted"].clone()),
        Some(Value::Bool(true))
    );
    assert_eq!(code(&h.run("op", 4, delete(a2))), "ack");
    // Gone from the snapshot a joiner gets; deleting again finds nothing.
    let snap = h.join("zed", 5);
    let ids: Vec<u64> = snap["result"]["snapshot"]["chat"]
        .as_array()
        .map(|c| c.iter().filter_map(|m| m["id"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(ids, vec![b1]);
    // An id no longer in memory: a moderator deletes it by id in the store (blind), a
    // participant finds nothing; an id the room never handed out is nothing for anyone.
    let (blind, out) = h.send_as(&caller("op", 4), Some("d2"), delete(a1));
    assert_eq!(code(&blind), "ack", "{blind}");
    assert!(out.mutations.iter().any(|m| matches!(
        m,
        lockstep_shared::store::Mutation::DeleteChat { id, .. } if *id == a1
    )));
    assert_eq!(code(&h.run("bob", 3, delete(a1))), "not_found");
    assert_eq!(code(&h.run("op", 4, delete(9_999))), "not_found");
}

#[test]
fn a_reloaded_room_can_still_delete_the_chat_it_loaded() {
    let mut h = Harness::with(cfg());
    h.join("amy", 2);
    let (_, out) = h.send_as(
        &caller("amy", 2),
        Some("m1"),
        ClientCommand::ChatSend {
            room: ROOM.into(),
            text: "before the reload".into(),
        },
    );
    let chat: Vec<_> = out
        .mutations
        .into_iter()
        .filter_map(|m| match m {
            lockstep_shared::store::Mutation::Chat { msg, .. } => Some(msg),
            _ => None,
        })
        .collect();
    let id = chat.first().map(|m| m.id).unwrap_or_default();
    h.room = h.reloaded(h.room.seq(), chat);
    h.join("owner", 1);
    assert_eq!(code(&h.run("owner", 1, delete(id))), "ack");
}

#[test]
fn a_mute_stops_chat_only_and_ends_by_itself() {
    let mut h = Harness::with(cfg());
    h.join("amy", 2);
    h.join("op", 3);
    make_operator(&mut h, "op");
    let mute = |user_id: &str, duration_ms| ClientCommand::RoomMute {
        room: ROOM.into(),
        user_id: user_id.into(),
        duration_ms,
    };
    assert_eq!(code(&h.run("amy", 2, mute("op", None))), "forbidden");
    assert_eq!(code(&h.run("op", 3, mute("owner", None))), "forbidden");
    let r = h.run("op", 3, mute("amy", Some(10_000)));
    assert_eq!(code(&r), "ack", "{r}");
    let chat = |h: &mut Harness| {
        h.run(
            "amy",
            2,
            ClientCommand::ChatSend {
                room: ROOM.into(),
                text: "hello".into(),
            },
        )
    };
    let refused = chat(&mut h);
    assert_eq!(code(&refused), "forbidden");
    assert_eq!(
        refused["message"],
        "you are muted in this room for another 10 s"
    );
    // Still present and able to do everything but chat.
    assert!(h.room.member_conns().contains(&caller("amy", 2).conn));
    let ready = h.run(
        "amy",
        2,
        ClientCommand::UserReady {
            room: ROOM.into(),
            ready: true,
        },
    );
    assert_eq!(code(&ready), "ack");
    let view = h.room.bans_view(h.now);
    assert_eq!(view["mutes"][0]["user_id"], "amy");
    h.tick(10_000);
    assert_eq!(code(&chat(&mut h)), "ack");
    let unmute = ClientCommand::RoomUnmute {
        room: ROOM.into(),
        user_id: "amy".into(),
    };
    let r = h.run("owner", 1, unmute);
    assert_eq!(r["message"], "that user is not muted");
}

#[test]
fn a_reloaded_room_shows_no_deleted_message_and_no_moderation_item() {
    let mut h = Harness::with(cfg());
    let row = |id: u64, text: &str, ext: Option<Value>| lockstep_shared::protocol::ChatMessage {
        id,
        ts: id,
        user: lockstep_shared::protocol::ChatUser {
            user_id: "amy".into(),
            name: "Amy".into(),
        },
        text: text.into(),
        source: lockstep_shared::protocol::ChatSource::Room,
        ext,
    };
    // As the store returns them: a kept message, a deleted one, an upstream deletion item.
    let chat = vec![
        row(2, "kept", None),
        row(3, "", Some(serde_json::json!({"deleted": true}))),
        row(
            4,
            "",
            Some(serde_json::json!({"kind": "deletion", "source_id": "s1", "targets": [3]})),
        ),
    ];
    h.room = h.reloaded(4, chat);
    let snap = h.join("owner", 1);
    let texts: Vec<&str> = snap["result"]["snapshot"]["chat"]
        .as_array()
        .map(|c| c.iter().filter_map(|m| m["text"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(texts, vec!["kept"]);
}

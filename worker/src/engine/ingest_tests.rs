//! The ingestion rules of the engine: upstream items become chat, moderation removes from
//! view and from the stored rows, the per-room cap sheds, status changes are de-duplicated,
//! the cursor is persisted with the items.

use lockstep_shared::bus::{Caller, CommandEnvelope, ConnId, ToGateway, ToWorker};
use lockstep_shared::config::RoomConfig;
use lockstep_shared::protocol::ext::{ChatExt, ExtAuthor, ExtKind};
use lockstep_shared::protocol::{ClientCommand, SourceSpec};
use lockstep_shared::store::Mutation;
use serde_json::{json, Value};

use super::{IngestItem, Output, Room, SourceReport};

fn owner() -> Caller {
    Caller {
        user_id: "owner".into(),
        name: "Owner".into(),
        conn: ConnId {
            gateway: 1,
            local: 1,
        },
    }
}

fn room_with_source(cfg: RoomConfig) -> (Room, String) {
    let (mut room, _) = Room::create(cfg, "r1", "owner", 1_000);
    let cmd = |cmd| {
        ToWorker::Command(CommandEnvelope {
            caller: owner(),
            id: Some("a".into()),
            cmd,
        })
    };
    room.handle(
        1_000,
        cmd(ClientCommand::RoomJoin {
            room: "r1".into(),
            since_seq: None,
        }),
    );
    room.handle(
        1_000,
        ToWorker::Command(CommandEnvelope {
            caller: owner(),
            id: Some("b".into()),
            cmd: ClientCommand::RoomSources {
                room: "r1".into(),
                add: Some(SourceSpec::Twitch {
                    channel: "Chan".into(),
                    auth: None,
                }),
                remove: None,
            },
        }),
    );
    let id = room.durable().sources[0].source_id.clone();
    (room, id)
}

fn text(id: &str, author: &str, body: &str) -> IngestItem {
    let mut ext = ChatExt::new(ExtKind::Text, "");
    ext.upstream_id = Some(id.into());
    ext.author = Some(ExtAuthor {
        id: author.into(),
        name: format!("N{author}"),
        login: None,
        colour: None,
        badges: vec![],
    });
    IngestItem {
        text: body.into(),
        ext,
        upstream_targets: vec![],
    }
}

fn events(out: &Output) -> Vec<Value> {
    out.deliveries
        .iter()
        .filter_map(|d| match d {
            ToGateway::RoomEvent { frame, .. } => serde_json::from_str(frame).ok(),
            _ => None,
        })
        .collect()
}

fn stored_chat(out: &Output) -> Vec<Value> {
    out.mutations
        .iter()
        .filter_map(|m| match m {
            Mutation::Chat { msg, .. } => serde_json::to_value(msg).ok(),
            _ => None,
        })
        .collect()
}

fn items(source: &str, items: Vec<IngestItem>) -> SourceReport {
    SourceReport::Items {
        source_id: source.into(),
        items,
        cursor: None,
    }
}

#[test]
fn items_become_chat_messages_with_source_and_ext() {
    let (mut room, s) = room_with_source(RoomConfig::default());
    let out = room.ingest(2_000, items(&s, vec![text("u1", "42", "hello")]));
    let ev = events(&out);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0]["type"], "chat.message");
    assert_eq!(ev[0]["source"], "twitch");
    assert_eq!(
        ev[0]["user"],
        json!({"user_id": "twitch:42", "name": "N42"})
    );
    assert_eq!(ev[0]["ext"]["source_id"], s.as_str());
    assert_eq!(ev[0]["id"], ev[0]["seq"], "chat id is the event seq");
    assert_eq!(stored_chat(&out).len(), 1, "persisted like room chat");
    let snap = room.snapshot(true);
    assert_eq!(snap["chat"][0]["text"], "hello");
}

#[test]
fn deletion_removes_from_snapshot_and_rewrites_the_stored_row() {
    let (mut room, s) = room_with_source(RoomConfig::default());
    let out = room.ingest(
        2_000,
        items(&s, vec![text("u1", "42", "bad"), text("u2", "43", "fine")]),
    );
    let ids: Vec<u64> = events(&out)
        .iter()
        .filter_map(|e| e["id"].as_u64())
        .collect();
    let mut del = IngestItem {
        text: String::new(),
        ext: ChatExt::new(ExtKind::Deletion, ""),
        upstream_targets: vec!["u1".into()],
    };
    del.ext.upstream_id = Some("d1".into());
    let out = room.ingest(3_000, items(&s, vec![del]));
    let ev = events(&out);
    assert_eq!(ev[0]["ext"]["kind"], "deletion");
    assert_eq!(ev[0]["ext"]["targets"], json!([ids[0]]));
    let rows = stored_chat(&out);
    let redacted = rows
        .iter()
        .find(|r| r["id"] == ids[0])
        .cloned()
        .unwrap_or_default();
    assert_eq!(redacted["text"], "");
    assert_eq!(redacted["ext"]["deleted"], true);
    let snap = room.snapshot(true);
    let texts: Vec<&str> = snap["chat"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["text"].as_str())
        .collect();
    assert!(
        !texts.contains(&"bad") && texts.contains(&"fine"),
        "{texts:?}"
    );
}

#[test]
fn ban_and_clear_target_by_author_and_by_source() {
    let (mut room, s) = room_with_source(RoomConfig::default());
    room.ingest(
        2_000,
        items(
            &s,
            vec![
                text("u1", "42", "a"),
                text("u2", "43", "b"),
                text("u3", "42", "c"),
            ],
        ),
    );
    let mut ban = ChatExt::new(ExtKind::Ban, "");
    ban.target_user = Some("42".into());
    let out = room.ingest(
        3_000,
        items(
            &s,
            vec![IngestItem {
                text: String::new(),
                ext: ban,
                upstream_targets: vec![],
            }],
        ),
    );
    assert_eq!(
        events(&out)[0]["ext"]["targets"].as_array().map(Vec::len),
        Some(2)
    );
    let out = room.ingest(
        4_000,
        items(
            &s,
            vec![IngestItem {
                text: String::new(),
                ext: ChatExt::new(ExtKind::Clear, ""),
                upstream_targets: vec![],
            }],
        ),
    );
    assert_eq!(
        events(&out)[0]["ext"]["targets"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(
        room.snapshot(true)["chat"].as_array().map(Vec::len),
        Some(0)
    );
}

#[test]
fn the_per_room_cap_sheds_and_counts() {
    let cfg = RoomConfig {
        ingest_rate: 10.0,
        ingest_burst: 5.0,
        ..RoomConfig::default()
    };
    let (mut room, s) = room_with_source(cfg);
    let flood: Vec<IngestItem> = (0..20).map(|i| text(&format!("f{i}"), "1", "x")).collect();
    let out = room.ingest(2_000, items(&s, flood));
    assert_eq!(events(&out).len(), 5, "burst");
    assert_eq!(out.shed, 15);
    let out = room.ingest(2_500, items(&s, vec![text("g", "1", "y"); 10]));
    assert_eq!(events(&out).len(), 5, "refilled at 10/s for 0.5 s");
    // Moderation is never shed.
    let out = room.ingest(
        2_500,
        items(
            &s,
            vec![IngestItem {
                text: String::new(),
                ext: ChatExt::new(ExtKind::Clear, ""),
                upstream_targets: vec![],
            }],
        ),
    );
    assert_eq!(events(&out).len(), 1);
}

#[test]
fn status_changes_are_emitted_once_and_unknown_sources_ignored() {
    let (mut room, s) = room_with_source(RoomConfig::default());
    let st = |state| SourceReport::Status {
        source_id: s.clone(),
        state,
        error: None,
    };
    assert_eq!(events(&room.ingest(2_000, st("live"))).len(), 1);
    assert!(events(&room.ingest(2_001, st("live"))).is_empty(), "repeat");
    let ev = events(&room.ingest(2_002, st("open")));
    assert_eq!(
        (ev[0]["type"].as_str(), ev[0]["state"].as_str()),
        (Some("source.status"), Some("open"))
    );
    assert_eq!(room.snapshot(false)["sources"][0]["state"], "open");
    assert_eq!(room.snapshot(false)["sources"][0]["channel"], "chan");
    let stray = room.ingest(
        2_003,
        items("s99", vec![text("u", "1", "from a removed source")]),
    );
    assert!(stray.is_empty());
}

#[test]
fn cursor_is_persisted_in_the_same_commit_as_the_items() {
    let (mut room, s) = room_with_source(RoomConfig::default());
    let out = room.ingest(
        2_000,
        SourceReport::Items {
            source_id: s.clone(),
            items: vec![text("u1", "1", "hi")],
            cursor: Some(json!({"continuation": "ct-7"})),
        },
    );
    let state = out.mutations.iter().find_map(|m| match m {
        Mutation::Room { state, .. } => state.clone(),
        _ => None,
    });
    let state = state.unwrap_or_default();
    assert_eq!(state["sources"][0]["cursor"]["continuation"], "ct-7");
    assert!(out
        .mutations
        .iter()
        .any(|m| matches!(m, Mutation::Chat { .. })));
    // An unchanged cursor is not rewritten.
    let out = room.ingest(
        3_000,
        SourceReport::Items {
            source_id: s,
            items: vec![],
            cursor: Some(json!({"continuation": "ct-7"})),
        },
    );
    assert!(out.is_empty());
}

#[test]
fn long_upstream_text_is_cut_to_the_chat_limit() {
    let (mut room, s) = room_with_source(RoomConfig::default());
    let out = room.ingest(2_000, items(&s, vec![text("u", "1", &"é".repeat(900))]));
    assert_eq!(
        events(&out)[0]["text"].as_str().map(|t| t.chars().count()),
        Some(500)
    );
}

//! Engine rules, one test each, plus property tests for the invariants.

use std::sync::Arc;

use lockstep_shared::bus::{Caller, CommandEnvelope, ConnId, Membership, ToGateway, ToWorker};
use lockstep_shared::config::RoomConfig;
use lockstep_shared::protocol::{ClientCommand, PlayState, Role};
use lockstep_shared::store::Mutation;
use proptest::prelude::*;
use serde_json::Value;

use super::{Output, Room};

pub(super) const ROOM: &str = "r1";

pub(super) fn caller(user: &str, conn: u64) -> Caller {
    Caller {
        user_id: user.into(),
        name: format!("name-{user}"),
        conn: ConnId {
            gateway: 1,
            local: conn,
        },
    }
}

pub(super) fn cfg() -> RoomConfig {
    RoomConfig::default()
}

pub(super) struct Harness {
    pub(super) room: Room,
    pub(super) now: u64,
    /// Every event frame seen, in order.
    pub(super) events: Vec<Value>,
    next_id: u64,
}

impl Harness {
    pub(super) fn new() -> Self {
        Self::with(cfg())
    }

    pub(super) fn with(cfg: RoomConfig) -> Self {
        let (room, out) = Room::create(cfg, ROOM, "owner", 1_000);
        assert!(out
            .mutations
            .iter()
            .any(|m| matches!(m, Mutation::Room { state: Some(_), .. })));
        let mut h = Harness {
            room,
            now: 1_000,
            events: Vec::new(),
            next_id: 0,
        };
        h.join("owner", 1);
        h
    }

    pub(super) fn send_as(
        &mut self,
        c: &Caller,
        id: Option<&str>,
        cmd: ClientCommand,
    ) -> (Value, Output) {
        let out = self.room.handle(
            self.now,
            ToWorker::Command(CommandEnvelope {
                caller: c.clone(),
                id: id.map(str::to_owned),
                cmd,
            }),
        );
        let mut reply = Value::Null;
        for d in &out.deliveries {
            match d {
                ToGateway::RoomEvent { frame, seq, .. } => {
                    let v: Value = serde_json::from_str(frame).unwrap_or(Value::Null);
                    assert_eq!(v["seq"].as_u64(), Some(*seq));
                    self.events.push(v);
                }
                ToGateway::Reply { frames, .. } if reply.is_null() => {
                    reply = serde_json::from_str(&frames[0]).unwrap_or(Value::Null);
                }
                _ => {}
            }
        }
        (reply, out)
    }

    fn cmd(&mut self, user: &str, conn: u64, cmd: ClientCommand) -> Value {
        self.send_as(&caller(user, conn), Some("x"), cmd).0
    }

    /// Sends with a fresh id so idempotency never short-circuits.
    pub(super) fn run(&mut self, user: &str, conn: u64, cmd: ClientCommand) -> Value {
        self.next_id += 1;
        let id = format!("c{}", self.next_id);
        self.send_as(&caller(user, conn), Some(&id), cmd).0
    }

    pub(super) fn join(&mut self, user: &str, conn: u64) -> Value {
        self.cmd(
            user,
            conn,
            ClientCommand::RoomJoin {
                room: ROOM.into(),
                since_seq: None,
            },
        )
    }

    /// The room as a new owner loads it: the persisted state at `seq`, with `chat` as the
    /// store's last chat rows.
    pub(super) fn reloaded(
        &self,
        seq: u64,
        chat: Vec<lockstep_shared::protocol::ChatMessage>,
    ) -> Room {
        let loaded = lockstep_shared::store::LoadedRoom {
            record: lockstep_shared::store::RoomRecord {
                code: ROOM.into(),
                seq,
                state: serde_json::to_value(self.room.durable()).unwrap_or(Value::Null),
            },
            chat,
            commands: Vec::new(),
            events: Vec::new(),
        };
        let Ok(room) = Room::restore(cfg(), loaded, self.now + 1) else {
            panic!("restore failed")
        };
        room
    }

    pub(super) fn tick(&mut self, ms: u64) -> Output {
        self.now += ms;
        let out = self.room.tick(self.now);
        for d in &out.deliveries {
            if let ToGateway::RoomEvent { frame, .. } = d {
                self.events
                    .push(serde_json::from_str(frame).unwrap_or(Value::Null));
            }
        }
        out
    }

    pub(super) fn last_event(&self, kind: &str) -> Value {
        self.events
            .iter()
            .rev()
            .find(|e| e["type"] == kind)
            .cloned()
            .unwrap_or(Value::Null)
    }

    pub(super) fn add(&mut self, user: &str, conn: u64, video: &str) -> Value {
        self.run(
            user,
            conn,
            ClientCommand::QueueAdd {
                room: ROOM.into(),
                url: format!("https://youtu.be/{video}"),
                title: None,
            },
        )
    }
}

pub(super) fn code(reply: &Value) -> &str {
    reply["code"].as_str().unwrap_or("ack")
}

fn play() -> ClientCommand {
    ClientCommand::PlayerPlay { room: ROOM.into() }
}

fn pause() -> ClientCommand {
    ClientCommand::PlayerPause { room: ROOM.into() }
}

#[test]
fn join_snapshot_contains_joiner_and_ack_seq_is_the_join_event() {
    let mut h = Harness::new();
    let reply = h.join("bob", 2);
    assert_eq!(reply["type"], "ack");
    let seq = reply["result"]["seq"].as_u64();
    assert_eq!(seq, Some(2));
    let members = reply["result"]["snapshot"]["members"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(members.iter().any(|m| m["user_id"] == "bob"));
    assert_eq!(h.last_event("presence.join")["seq"].as_u64(), seq);
    let snap = &reply["result"]["snapshot"];
    assert_eq!(snap["settings"]["control_mode"], "operators");
    assert_eq!(snap["settings"]["ad_policy"], "ignore");
    assert!(snap["player"]["entry"].is_null());
    assert!(snap["chat"].is_array());
}

#[test]
fn join_ack_snapshot_lists_every_member_with_role_and_ready() {
    let mut h = Harness::new();
    h.join("op", 2);
    h.join("amy", 3);
    let role = h.cmd(
        "owner",
        1,
        ClientCommand::RoomRole {
            room: ROOM.into(),
            user_id: "op".into(),
            role: Role::Operator,
        },
    );
    assert_eq!(role["type"], "ack", "{role}");
    let ready = h.cmd(
        "amy",
        3,
        ClientCommand::UserReady {
            room: ROOM.into(),
            ready: true,
        },
    );
    assert_eq!(ready["type"], "ack", "{ready}");
    let reply = h.join("zed", 4);
    let snap = &reply["result"]["snapshot"];
    let members: Vec<(String, String, bool)> = snap["members"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    (
                        m["user_id"].as_str().unwrap_or("?").to_owned(),
                        m["role"].as_str().unwrap_or("?").to_owned(),
                        m["ready"].as_bool().unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let expect = |u: &str, r: &str, ready| (u.to_owned(), r.to_owned(), ready);
    assert_eq!(
        members,
        vec![
            expect("amy", "participant", true),
            expect("op", "operator", false),
            expect("owner", "owner", false),
            expect("zed", "participant", false),
        ]
    );
    // The ack's snapshot (written from borrowed state) is the snapshot the HTTP API serves.
    assert_eq!(*snap, h.room.snapshot(true));
}

#[test]
fn join_event_reaches_others_before_the_joiner_is_subscribed() {
    let mut h = Harness::new();
    let (_, out) = h.send_as(
        &caller("bob", 2),
        None,
        ClientCommand::RoomJoin {
            room: ROOM.into(),
            since_seq: None,
        },
    );
    let kinds: Vec<&str> = out
        .deliveries
        .iter()
        .map(|d| match d {
            ToGateway::RoomEvent { .. } => "event",
            ToGateway::Reply { membership, .. } => {
                assert_eq!(membership, &Some(Membership::Join(ROOM.into())));
                "reply"
            }
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, vec!["event", "reply"]);
}

#[test]
fn second_connection_joins_silently_and_last_close_leaves() {
    let mut h = Harness::new();
    h.join("bob", 2);
    let before = h.events.len();
    let reply = h.join("bob", 3);
    assert_eq!(h.events.len(), before, "second connection emits nothing");
    assert_eq!(reply["result"]["seq"].as_u64(), Some(h.room.seq()));
    for conn in [2, 3] {
        h.room.handle(
            h.now,
            ToWorker::ConnClosed {
                room: ROOM.into(),
                conn: caller("bob", conn).conn,
                user_id: "bob".into(),
            },
        );
    }
    let leaves = h.room.seq();
    assert!(leaves > before as u64);
    assert!(h.room.snapshot(false)["members"]
        .as_array()
        .is_some_and(|m| m.len() == 1));
}

#[test]
fn a_dead_gateways_members_leave_and_that_gateway_is_told_to_close_them() {
    let mut h = Harness::new();
    // Carol has one connection on gateway 1 and one on gateway 2; Dan only one on gateway 2.
    let on_two = |user: &str, local: u64| Caller {
        conn: ConnId { gateway: 2, local },
        ..caller(user, local)
    };
    let join = ClientCommand::RoomJoin {
        room: ROOM.into(),
        since_seq: None,
    };
    h.join("carol", 5);
    h.send_as(&on_two("carol", 6), Some("j1"), join.clone());
    h.send_as(&on_two("dan", 7), Some("j2"), join);
    let out = h.room.handle(
        h.now,
        ToWorker::GatewayGone {
            room: ROOM.into(),
            gateway: 2,
        },
    );
    let mut left = Vec::new();
    let mut evicted = Vec::new();
    for d in &out.deliveries {
        match d {
            ToGateway::RoomEvent { frame, .. } => {
                let v: Value = serde_json::from_str(frame).unwrap_or(Value::Null);
                assert_eq!(v["type"], "presence.leave");
                left.push(v["user_id"].as_str().unwrap_or_default().to_owned());
            }
            ToGateway::Evict { room, conns } => {
                assert_eq!(room, ROOM);
                evicted.extend(conns.iter().copied());
            }
            other => panic!("unexpected delivery {other:?}"),
        }
    }
    assert_eq!(
        left,
        vec!["dan"],
        "carol stays through her other connection"
    );
    evicted.sort_by_key(|c| c.local);
    assert_eq!(
        evicted,
        vec![on_two("carol", 6).conn, on_two("dan", 7).conn],
        "both of gateway 2's sockets are closed so a merely stalled gateway's clients rejoin"
    );
    // A gateway with no members here: nothing happens, nothing is sent.
    let out = h.room.handle(
        h.now,
        ToWorker::GatewayGone {
            room: ROOM.into(),
            gateway: 3,
        },
    );
    assert!(out.deliveries.is_empty());
}

#[test]
fn commands_from_a_connection_that_did_not_join_are_forbidden() {
    let mut h = Harness::new();
    assert_eq!(code(&h.cmd("eve", 9, play())), "forbidden");
    // The owner on a connection that did not join is refused too.
    assert_eq!(code(&h.cmd("owner", 99, play())), "forbidden");
}

#[test]
fn adding_to_idle_room_loads_entry_in_starting() {
    let mut h = Harness::new();
    let reply = h.add("owner", 1, "dQw4w9WgXcQ");
    assert_eq!(reply["result"]["entry_id"], 1);
    let state = h.last_event("player.state");
    assert_eq!(state["state"], "starting");
    assert_eq!(state["entry"]["video_id"], "dQw4w9WgXcQ");
    assert_eq!(
        state["entry"]["url"],
        "https://www.youtube.com/watch?v=dQw4w9WgXcQ"
    );
    assert!(h.room.snapshot(false)["queue"]
        .as_array()
        .is_some_and(|q| q.is_empty()));
    h.add("owner", 1, "aaaaaaaaaaa");
    assert_eq!(h.last_event("queue.update")["entries"][0]["entry_id"], 2);
}

#[test]
fn bad_urls_are_bad_request() {
    let mut h = Harness::new();
    let reply = h.run(
        "owner",
        1,
        ClientCommand::QueueAdd {
            room: ROOM.into(),
            url: "https://vimeo.com/1".into(),
            title: None,
        },
    );
    assert_eq!(code(&reply), "bad_request");
}

#[test]
fn ready_gate_starts_when_all_ready_with_scheduled_lead() {
    let mut h = Harness::new();
    h.join("bob", 2);
    h.add("owner", 1, "dQw4w9WgXcQ");
    h.run(
        "owner",
        1,
        ClientCommand::UserReady {
            room: ROOM.into(),
            ready: true,
        },
    );
    assert_eq!(h.last_event("player.state")["state"], "starting");
    assert_eq!(h.last_event("presence.update")["user"]["ready"], true);
    h.now += 10;
    h.run(
        "bob",
        2,
        ClientCommand::UserReady {
            room: ROOM.into(),
            ready: true,
        },
    );
    let state = h.last_event("player.state");
    assert_eq!(state["state"], "playing");
    assert_eq!(state["at"].as_u64(), Some(h.now + 250));
    assert_eq!(state["position_ms"], 0);
}

#[test]
fn ready_gate_times_out() {
    let mut h = Harness::new();
    h.join("bob", 2);
    h.add("owner", 1, "dQw4w9WgXcQ");
    assert_eq!(h.room.next_deadline(), Some(h.now + 8_000));
    h.tick(7_999);
    assert_eq!(h.last_event("player.state")["state"], "starting");
    h.tick(1);
    assert_eq!(h.last_event("player.state")["state"], "playing");
    assert_eq!(h.room.next_deadline(), None);
}

#[test]
fn a_history_of_large_queue_updates_is_bounded_by_bytes() {
    let mut h = Harness::with(RoomConfig {
        history_max_bytes: 64 * 1024,
        ..cfg()
    });
    // 100 entries with 200-character titles: each `queue.update` is ≈ 30 KB.
    for i in 0..100 {
        h.run(
            "owner",
            1,
            ClientCommand::QueueAdd {
                room: ROOM.into(),
                url: format!("https://youtu.be/{i:0>11}"),
                title: Some("t".repeat(200)),
            },
        );
    }
    let before_moves = h.room.seq();
    let mut trims = Vec::new();
    for i in 0..20 {
        let mv = ClientCommand::QueueMove {
            room: ROOM.into(),
            entry_id: 10 + i,
            index: 0,
        };
        let (_, out) = h.send_as(&caller("owner", 1), Some(&format!("m{i}")), mv);
        trims.extend(out.mutations.iter().filter_map(|m| match m {
            Mutation::TrimEvents { below_seq, .. } => Some(*below_seq),
            _ => None,
        }));
    }
    // The store is told to drop what the byte bound dropped, every ten events or so (far
    // fewer than `history_max` here, which the store's own trimming would wait for).
    assert!(!trims.is_empty(), "the store hears of the dropped events");
    assert!(trims.windows(2).all(|w| w[1] >= w[0] + 10), "{trims:?}");
    assert!(
        trims.iter().all(|&t| t <= h.room.seq()),
        "never the newest event"
    );
    let update = h.last_event("queue.update").to_string();
    assert!(
        update.len() > 25_000,
        "a queue.update is {} bytes",
        update.len()
    );
    let rejoin = |h: &mut Harness, since: u64| {
        h.send_as(
            &caller("bob", 9),
            Some("j"),
            ClientCommand::RoomJoin {
                room: ROOM.into(),
                since_seq: Some(since),
            },
        )
        .0
    };
    // Twenty of them would be ≈ 600 KB: only the newest two fit in 64 KB.
    let far = rejoin(&mut h, before_moves);
    assert!(
        far["result"]["snapshot"].is_object(),
        "a gap past the bytes gets a snapshot"
    );
    h.run("bob", 9, ClientCommand::RoomLeave { room: ROOM.into() });
    let last_but_one = h.room.seq() - 1;
    let near = rejoin(&mut h, last_but_one);
    assert_eq!(near["result"]["recovered"], true);
}

/// The heads (`RoomHead`) in an output, as (seq, gateways).
fn heads(out: &Output) -> Vec<(u64, Vec<u64>)> {
    out.deliveries
        .iter()
        .filter_map(|d| match d {
            ToGateway::RoomHead { seq, gateways, .. } => Some((*seq, gateways.to_vec())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_quiet_room_announces_its_latest_seq_twice_then_stays_silent() {
    let mut h = Harness::new();
    let chat = |text: &str| ClientCommand::ChatSend {
        room: ROOM.into(),
        text: text.into(),
    };
    h.run("owner", 1, chat("one"));
    let seq = h.room.seq();
    assert_eq!(h.room.next_head(), Some(h.now + 1_000));
    assert!(heads(&h.tick(999)).is_empty());
    assert_eq!(heads(&h.tick(1)), vec![(seq, vec![1])]);
    assert!(heads(&h.tick(1)).is_empty(), "one head per delay");
    // Another event starts the announcements over.
    h.run("owner", 1, chat("two"));
    assert_eq!(h.room.next_head(), Some(h.now + 1_000));
    assert_eq!(heads(&h.tick(1_000)), vec![(seq + 1, vec![1])]);
    assert_eq!(h.room.next_head(), Some(h.now + 9_000));
    assert_eq!(heads(&h.tick(9_000)), vec![(seq + 1, vec![1])]);
    assert_eq!(h.room.next_head(), None);
    assert!(heads(&h.tick(60_000)).is_empty());
    // Heads change nothing: no write, and the room's own timers are unaffected.
    h.run("owner", 1, chat("three"));
    let out = h.tick(1_000);
    assert_eq!(heads(&out).len(), 1);
    assert!(out.mutations.is_empty(), "a head is not stored");
    assert_eq!(h.room.next_deadline(), None);
    // The last member leaving leaves nobody to tell.
    h.run("owner", 1, ClientCommand::RoomLeave { room: ROOM.into() });
    assert_eq!(h.room.next_head(), None);
    assert!(heads(&h.tick(20_000)).is_empty());
}

#[test]
fn new_entry_resets_ready_flags() {
    let mut h = Harness::new();
    h.add("owner", 1, "dQw4w9WgXcQ");
    h.run(
        "owner",
        1,
        ClientCommand::UserReady {
            room: ROOM.into(),
            ready: true,
        },
    );
    assert_eq!(h.last_event("player.state")["state"], "playing");
    h.add("owner", 1, "aaaaaaaaaaa");
    h.run("owner", 1, ClientCommand::PlayerSkip { room: ROOM.into() });
    assert_eq!(h.last_event("player.state")["state"], "starting");
    let members = h.room.snapshot(false)["members"].clone();
    assert_eq!(members[0]["ready"], false);
}

#[test]
fn pause_play_seek_keep_the_clock_continuous() {
    let mut h = Harness::new();
    h.add("owner", 1, "dQw4w9WgXcQ");
    h.run("owner", 1, play());
    let at = h.last_event("player.state")["at"].as_u64().unwrap_or(0);
    h.now = at + 5_000;
    h.run("owner", 1, pause());
    let paused = h.last_event("player.state");
    assert_eq!(paused["state"], "paused");
    assert_eq!(paused["position_ms"], 5_000);
    h.now += 3_000;
    h.run("owner", 1, play());
    let playing = h.last_event("player.state");
    assert_eq!(playing["position_ms"], 5_000);
    assert_eq!(playing["at"].as_u64(), Some(h.now + 250));
    // Seek without `play` keeps playing; with play:false pauses.
    h.run(
        "owner",
        1,
        ClientCommand::PlayerSeek {
            room: ROOM.into(),
            position_ms: 42_000,
            play: None,
        },
    );
    assert_eq!(h.last_event("player.state")["state"], "playing");
    assert_eq!(h.last_event("player.state")["position_ms"], 42_000);
    h.run(
        "owner",
        1,
        ClientCommand::PlayerSeek {
            room: ROOM.into(),
            position_ms: 1_000,
            play: Some(false),
        },
    );
    assert_eq!(h.last_event("player.state")["state"], "paused");
    h.run(
        "owner",
        1,
        ClientCommand::PlayerRestart { room: ROOM.into() },
    );
    assert_eq!(h.last_event("player.state")["position_ms"], 0);
    assert_eq!(h.last_event("player.state")["state"], "paused");
}

#[test]
fn control_modes_are_enforced() {
    let mut h = Harness::new();
    h.join("op", 2);
    h.join("pat", 3);
    h.add("owner", 1, "dQw4w9WgXcQ");
    h.run(
        "owner",
        1,
        ClientCommand::RoomRole {
            room: ROOM.into(),
            user_id: "op".into(),
            role: lockstep_shared::protocol::Role::Operator,
        },
    );
    assert_eq!(h.last_event("presence.update")["user"]["role"], "operator");
    // operators (default): operator yes, participant no.
    assert_eq!(code(&h.run("op", 2, pause())), "ack");
    assert_eq!(code(&h.run("pat", 3, play())), "forbidden");
    // owner: operator refused.
    h.run(
        "owner",
        1,
        ClientCommand::RoomSettings {
            room: ROOM.into(),
            control_mode: Some(lockstep_shared::protocol::ControlMode::Owner),
            ad_policy: None,
            name: None,
            vote_skip_percent: None,
        },
    );
    assert_eq!(
        h.last_event("room.settings")["settings"]["control_mode"],
        "owner"
    );
    assert_eq!(code(&h.run("op", 2, play())), "forbidden");
    assert_eq!(code(&h.run("owner", 1, play())), "ack");
    // anyone: participant allowed.
    h.run(
        "owner",
        1,
        ClientCommand::RoomSettings {
            room: ROOM.into(),
            control_mode: Some(lockstep_shared::protocol::ControlMode::Anyone),
            ad_policy: None,
            name: None,
            vote_skip_percent: None,
        },
    );
    assert_eq!(code(&h.run("pat", 3, pause())), "ack");
    // Only the owner changes settings and roles.
    let r = h.run(
        "op",
        2,
        ClientCommand::RoomSettings {
            room: ROOM.into(),
            control_mode: None,
            ad_policy: None,
            name: Some("x".into()),
            vote_skip_percent: None,
        },
    );
    assert_eq!(code(&r), "forbidden");
    let r = h.run(
        "op",
        2,
        ClientCommand::RoomRole {
            room: ROOM.into(),
            user_id: "pat".into(),
            role: lockstep_shared::protocol::Role::Operator,
        },
    );
    assert_eq!(code(&r), "forbidden");
}

#[test]
fn roles_are_kept_only_for_user_ids_and_only_up_to_the_bound() {
    let mut h = Harness::with(RoomConfig {
        operators_max: 2,
        ..cfg()
    });
    let role = |user_id: &str, role| ClientCommand::RoomRole {
        room: ROOM.into(),
        user_id: user_id.into(),
        role,
    };
    // Roles are kept for absent users too: a long or control-character id is refused.
    let long = h.run("owner", 1, role(&"u".repeat(65), Role::Operator));
    assert_eq!(code(&long), "bad_request", "{long}");
    assert_eq!(
        code(&h.run("owner", 1, role("a\nb", Role::Operator))),
        "bad_request"
    );
    assert_eq!(code(&h.run("owner", 1, role("op1", Role::Operator))), "ack");
    assert_eq!(code(&h.run("owner", 1, role("op2", Role::Operator))), "ack");
    let third = h.run("owner", 1, role("op3", Role::Operator));
    assert_eq!(code(&third), "conflict", "{third}");
    assert_eq!(third["message"], "at most 2 operators per room");
    // Naming an operator again is no change, not a refusal; demoting one makes room.
    assert_eq!(code(&h.run("owner", 1, role("op2", Role::Operator))), "ack");
    assert_eq!(
        code(&h.run("owner", 1, role("op1", Role::Participant))),
        "ack"
    );
    assert_eq!(code(&h.run("owner", 1, role("op3", Role::Operator))), "ack");
}

#[test]
fn queue_remove_move_and_limits() {
    let mut c = cfg();
    c.queue_max = 3;
    let mut h = Harness::with(c);
    h.add("owner", 1, "aaaaaaaaaaa"); // loads as current
    for v in ["bbbbbbbbbbb", "ccccccccccc", "ddddddddddd"] {
        assert_eq!(code(&h.add("owner", 1, v)), "ack");
    }
    assert_eq!(code(&h.add("owner", 1, "eeeeeeeeeee")), "conflict");
    h.run(
        "owner",
        1,
        ClientCommand::QueueMove {
            room: ROOM.into(),
            entry_id: 4,
            index: 0,
        },
    );
    let ids: Vec<u64> = h.last_event("queue.update")["entries"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["entry_id"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(ids, vec![4, 2, 3]);
    h.run(
        "owner",
        1,
        ClientCommand::QueueMove {
            room: ROOM.into(),
            entry_id: 4,
            index: 99,
        },
    );
    assert_eq!(h.last_event("queue.update")["entries"][2]["entry_id"], 4);
    h.run(
        "owner",
        1,
        ClientCommand::QueueRemove {
            room: ROOM.into(),
            entry_id: 2,
        },
    );
    assert_eq!(h.last_event("queue.update")["entries"][0]["entry_id"], 3);
    let r = h.run(
        "owner",
        1,
        ClientCommand::QueueRemove {
            room: ROOM.into(),
            entry_id: 2,
        },
    );
    assert_eq!(code(&r), "not_found");
}

#[test]
fn ended_advances_once_per_entry() {
    let mut h = Harness::new();
    h.join("bob", 2);
    h.add("owner", 1, "aaaaaaaaaaa");
    h.add("owner", 1, "bbbbbbbbbbb");
    let r1 = h.run(
        "bob",
        2,
        ClientCommand::PlayerEnded {
            room: ROOM.into(),
            entry_id: 1,
        },
    );
    let r2 = h.run(
        "owner",
        1,
        ClientCommand::PlayerEnded {
            room: ROOM.into(),
            entry_id: 1,
        },
    );
    assert_eq!(r1["result"]["advanced"], true);
    assert_eq!(r2["result"]["advanced"], false);
    assert_eq!(h.last_event("player.state")["entry_id"], 2);
    h.run(
        "bob",
        2,
        ClientCommand::PlayerEnded {
            room: ROOM.into(),
            entry_id: 2,
        },
    );
    assert_eq!(h.last_event("player.state")["state"], "idle");
    assert!(h.last_event("player.state")["entry"].is_null());
}

#[test]
fn chat_rules_length_and_rate() {
    let mut c = cfg();
    c.chat_rate = 1.0;
    c.chat_burst = 2.0;
    let mut h = Harness::with(c);
    let long = "é".repeat(501);
    let ok = "é".repeat(500);
    assert_eq!(
        code(&h.run(
            "owner",
            1,
            ClientCommand::ChatSend {
                room: ROOM.into(),
                text: long
            }
        )),
        "bad_request"
    );
    assert_eq!(
        code(&h.run(
            "owner",
            1,
            ClientCommand::ChatSend {
                room: ROOM.into(),
                text: "  ".into()
            }
        )),
        "bad_request"
    );
    let r = h.run(
        "owner",
        1,
        ClientCommand::ChatSend {
            room: ROOM.into(),
            text: ok,
        },
    );
    assert_eq!(code(&r), "ack");
    let msg = h.last_event("chat.message");
    assert_eq!(r["result"]["id"], msg["seq"]);
    assert_eq!(msg["id"], msg["seq"]);
    assert_eq!(msg["source"], "room");
    assert_eq!(msg["user"]["user_id"], "owner");
    assert_eq!(
        code(&h.run(
            "owner",
            1,
            ClientCommand::ChatSend {
                room: ROOM.into(),
                text: "2".into()
            }
        )),
        "ack"
    );
    assert_eq!(
        code(&h.run(
            "owner",
            1,
            ClientCommand::ChatSend {
                room: ROOM.into(),
                text: "3".into()
            }
        )),
        "rate_limited"
    );
    h.now += 1_000;
    assert_eq!(
        code(&h.run(
            "owner",
            1,
            ClientCommand::ChatSend {
                room: ROOM.into(),
                text: "4".into()
            }
        )),
        "ack"
    );
    let snap = h.join("bob", 2);
    assert_eq!(
        snap["result"]["snapshot"]["chat"].as_array().map(Vec::len),
        Some(3)
    );
    assert_eq!(
        snap["result"]["snapshot"]["chat"][0]["type"],
        "chat.message"
    );
}

#[test]
fn retried_id_gets_same_ack_and_one_effect() {
    let mut h = Harness::new();
    let c = caller("owner", 1);
    let cmd = ClientCommand::ChatSend {
        room: ROOM.into(),
        text: "once".into(),
    };
    let (a1, o1) = h.send_as(&c, Some("same"), cmd.clone());
    let seq = h.room.seq();
    let (a2, o2) = h.send_as(&c, Some("same"), cmd);
    assert_eq!(a1, a2);
    assert_eq!(h.room.seq(), seq);
    assert!(o1
        .mutations
        .iter()
        .any(|m| matches!(m, Mutation::Command { .. })));
    assert!(o2.mutations.is_empty());
}

#[test]
fn signal_reaches_only_target_connections() {
    let mut h = Harness::new();
    h.join("bob", 2);
    h.join("bob", 3);
    h.join("carl", 4);
    let seq = h.room.seq();
    let payload = serde_json::json!({"sdp": "v=0"});
    let (reply, out) = h.send_as(
        &caller("carl", 4),
        Some("s"),
        ClientCommand::SignalSend {
            room: ROOM.into(),
            to: "bob".into(),
            payload,
        },
    );
    assert_eq!(code(&reply), "ack");
    assert_eq!(h.room.seq(), seq, "signal has no seq");
    let direct: Vec<_> = out
        .deliveries
        .iter()
        .filter_map(|d| match d {
            ToGateway::Direct { conns, frame } => Some((conns.clone(), frame.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(direct.len(), 1);
    assert_eq!(
        direct[0].0,
        vec![caller("bob", 2).conn, caller("bob", 3).conn]
    );
    let v: Value = serde_json::from_str(&direct[0].1).unwrap_or(Value::Null);
    assert_eq!(v["type"], "signal");
    assert_eq!(v["from"], "carl");
    let r = h.run(
        "carl",
        4,
        ClientCommand::SignalSend {
            room: ROOM.into(),
            to: "nobody".into(),
            payload: Value::Null,
        },
    );
    assert_eq!(code(&r), "not_found");
}

#[test]
fn ad_policy_pause_all_pauses_and_resumes() {
    let mut c = cfg();
    c.ad_max_pause_ms = 10_000;
    let mut h = Harness::with(c);
    h.join("bob", 2);
    h.add("owner", 1, "aaaaaaaaaaa");
    h.run("owner", 1, play());
    // Under `ignore` nothing happens.
    let seq = h.room.seq();
    let r = h.run(
        "bob",
        2,
        ClientCommand::PlayerAd {
            room: ROOM.into(),
            active: true,
        },
    );
    assert_eq!(r["result"]["applied"], false);
    assert_eq!(h.room.seq(), seq);
    h.run(
        "owner",
        1,
        ClientCommand::RoomSettings {
            room: ROOM.into(),
            control_mode: None,
            ad_policy: Some(lockstep_shared::protocol::AdPolicy::PauseAll),
            name: None,
            vote_skip_percent: None,
        },
    );
    h.run(
        "bob",
        2,
        ClientCommand::PlayerAd {
            room: ROOM.into(),
            active: true,
        },
    );
    assert_eq!(h.last_event("player.state")["state"], "paused");
    h.run(
        "owner",
        1,
        ClientCommand::PlayerAd {
            room: ROOM.into(),
            active: true,
        },
    );
    h.run(
        "bob",
        2,
        ClientCommand::PlayerAd {
            room: ROOM.into(),
            active: false,
        },
    );
    assert_eq!(
        h.last_event("player.state")["state"],
        "paused",
        "owner still in an ad"
    );
    h.run(
        "owner",
        1,
        ClientCommand::PlayerAd {
            room: ROOM.into(),
            active: false,
        },
    );
    assert_eq!(h.last_event("player.state")["state"], "playing");
    // Maximum pause: resumes anyway.
    h.run(
        "bob",
        2,
        ClientCommand::PlayerAd {
            room: ROOM.into(),
            active: true,
        },
    );
    assert_eq!(h.last_event("player.state")["state"], "paused");
    h.tick(10_000);
    assert_eq!(h.last_event("player.state")["state"], "playing");
    // An ad-reporting member leaving ends the pause.
    h.run(
        "bob",
        2,
        ClientCommand::PlayerAd {
            room: ROOM.into(),
            active: true,
        },
    );
    h.room.handle(
        h.now,
        ToWorker::ConnClosed {
            room: ROOM.into(),
            conn: caller("bob", 2).conn,
            user_id: "bob".into(),
        },
    );
    assert_eq!(h.room.durable().clock.state, PlayState::Playing);
}

#[test]
fn explicit_control_clears_ad_pause() {
    let mut h = Harness::new();
    h.run(
        "owner",
        1,
        ClientCommand::RoomSettings {
            room: ROOM.into(),
            control_mode: None,
            ad_policy: Some(lockstep_shared::protocol::AdPolicy::PauseAll),
            name: None,
            vote_skip_percent: None,
        },
    );
    h.join("bob", 2);
    h.add("owner", 1, "aaaaaaaaaaa");
    h.run("owner", 1, play());
    h.run(
        "bob",
        2,
        ClientCommand::PlayerAd {
            room: ROOM.into(),
            active: true,
        },
    );
    h.run("owner", 1, play());
    assert_eq!(h.last_event("player.state")["state"], "playing");
    assert_eq!(h.room.next_deadline(), None);
}

#[test]
fn since_seq_recovery_replays_missed_events() {
    let mut h = Harness::new();
    h.join("bob", 2);
    let seen = h.room.seq();
    h.room.handle(
        h.now,
        ToWorker::ConnClosed {
            room: ROOM.into(),
            conn: caller("bob", 2).conn,
            user_id: "bob".into(),
        },
    );
    h.run(
        "owner",
        1,
        ClientCommand::ChatSend {
            room: ROOM.into(),
            text: "while away".into(),
        },
    );
    let (reply, out) = h.send_as(
        &caller("bob", 5),
        Some("j"),
        ClientCommand::RoomJoin {
            room: ROOM.into(),
            since_seq: Some(seen),
        },
    );
    assert_eq!(reply["result"]["recovered"], true);
    assert_eq!(reply["result"]["seq"].as_u64(), Some(h.room.seq()));
    let frames = out
        .deliveries
        .iter()
        .find_map(|d| match d {
            ToGateway::Reply { frames, .. } => Some(frames.clone()),
            _ => None,
        })
        .unwrap_or_default();
    let seqs: Vec<u64> = frames[1..]
        .iter()
        .filter_map(|f| serde_json::from_str::<Value>(f).ok()?["seq"].as_u64())
        .collect();
    let expected: Vec<u64> = (seen + 1..=h.room.seq()).collect();
    assert_eq!(seqs, expected);
    // A gap older than the window gets a snapshot.
    let (reply, _) = h.send_as(
        &caller("carl", 6),
        None,
        ClientCommand::RoomJoin {
            room: ROOM.into(),
            since_seq: Some(h.room.seq() + 10),
        },
    );
    assert!(reply["result"]["snapshot"].is_object());
}

#[test]
fn a_resync_replays_to_the_gateway_and_evicts_the_connections_the_room_forgot() {
    let mut h = Harness::new();
    h.join("bob", 2);
    let seen = h.room.seq();
    for text in ["one", "two"] {
        h.run(
            "owner",
            1,
            ClientCommand::ChatSend {
                room: ROOM.into(),
                text: text.into(),
            },
        );
    }
    let resync = |since_seq: u64, locals: &[u64]| ToWorker::Resync {
        room: ROOM.into(),
        gateway: 1,
        req: 9,
        since_seq,
        conns: locals
            .iter()
            .map(|&local| ConnId { gateway: 1, local })
            .collect(),
    };
    // Connection 3 was dropped while the gateway was cut off.
    let out = h.room.handle(h.now, resync(seen, &[1, 2, 3]));
    match out.deliveries.as_slice() {
        [ToGateway::Evict { conns, .. }, ToGateway::Replay {
            gateway: 1,
            req: 9,
            first_seq,
            frames,
            ..
        }] => {
            assert_eq!(
                conns,
                &vec![ConnId {
                    gateway: 1,
                    local: 3
                }]
            );
            assert_eq!(*first_seq, seen + 1);
            let seqs: Vec<u64> = frames
                .iter()
                .filter_map(|f| serde_json::from_str::<Value>(f).ok()?["seq"].as_u64())
                .collect();
            assert_eq!(seqs, (seen + 1..=h.room.seq()).collect::<Vec<_>>());
        }
        other => panic!("expected an eviction and a replay, got {other:?}"),
    }
    assert!(out.mutations.is_empty(), "a resync changes nothing stored");
    // A gap the history no longer covers: an empty replay from the next seq.
    let mut small = Harness::with(RoomConfig {
        history_max: 1,
        ..cfg()
    });
    small.join("bob", 2);
    small.join("carl", 3);
    let out = small.room.handle(small.now, resync(0, &[1]));
    match out.deliveries.as_slice() {
        [ToGateway::Replay {
            first_seq, frames, ..
        }] => {
            assert_eq!(*first_seq, small.room.seq() + 1);
            assert!(frames.is_empty());
        }
        other => panic!("expected an empty replay, got {other:?}"),
    }
}

#[test]
fn restore_keeps_durable_state_seq_and_command_ids() {
    let mut h = Harness::new();
    h.add("owner", 1, "aaaaaaaaaaa");
    h.add("owner", 1, "bbbbbbbbbbb");
    let c = caller("owner", 1);
    let (ack, out) = h.send_as(
        &c,
        Some("chat-1"),
        ClientCommand::ChatSend {
            room: ROOM.into(),
            text: "hi".into(),
        },
    );
    let mut state = None;
    let mut chat = Vec::new();
    let mut commands = Vec::new();
    let mut events = Vec::new();
    for m in out.mutations {
        match m {
            Mutation::Chat { msg, .. } => chat.push(msg),
            Mutation::Command { record, .. } => commands.push(record),
            Mutation::Event { event, .. } => events.push(event),
            _ => {}
        }
    }
    if let Ok(v) = serde_json::to_value(h.room.durable()) {
        state = Some(v);
    }
    let loaded = lockstep_shared::store::LoadedRoom {
        record: lockstep_shared::store::RoomRecord {
            code: ROOM.into(),
            seq: h.room.seq(),
            state: state.unwrap_or(Value::Null),
        },
        chat,
        commands,
        events,
    };
    let restored = Room::restore(cfg(), loaded, h.now + 5);
    let Ok(mut restored) = restored else {
        panic!("restore failed")
    };
    assert_eq!(restored.seq(), h.room.seq());
    assert_eq!(restored.durable(), h.room.durable());
    assert_eq!(restored.next_deadline(), Some(h.now + 5 + 8_000));
    let out = restored.handle(
        h.now + 6,
        ToWorker::Command(CommandEnvelope {
            caller: c.clone(),
            id: Some("chat-1".into()),
            cmd: ClientCommand::ChatSend {
                room: ROOM.into(),
                text: "hi".into(),
            },
        }),
    );
    let frame = out.deliveries.iter().find_map(|d| match d {
        ToGateway::Reply { frames, .. } => Some(frames[0].clone()),
        _ => None,
    });
    let frame: Option<Value> = frame.and_then(|f| serde_json::from_str(&f).ok());
    assert_eq!(frame, Some(ack));
    // The stored history came back: a client that saw seq - 1 recovers the chat event.
    let seq = restored.seq();
    let out = restored.handle(
        h.now + 7,
        ToWorker::Command(CommandEnvelope {
            caller: caller("owner", 9),
            id: None,
            cmd: ClientCommand::RoomJoin {
                room: ROOM.into(),
                since_seq: Some(seq - 1),
            },
        }),
    );
    let recovered = out.deliveries.iter().any(|d| matches!(d, ToGateway::Reply { frames, .. } if frames[0].contains("\"recovered\":true")));
    assert!(recovered, "history restored from the store");
}

#[test]
fn audit_records_every_state_change() {
    let mut h = Harness::new();
    let (_, out) = h.send_as(
        &caller("owner", 1),
        Some("a"),
        ClientCommand::QueueAdd {
            room: ROOM.into(),
            url: "youtu.be/aaaaaaaaaaa".into(),
            title: Some("T".into()),
        },
    );
    assert!(out
        .mutations
        .iter()
        .any(|m| matches!(m, Mutation::Audit { entry, .. } if entry.action == "queue.add")));
    let (_, out) = h.send_as(&caller("owner", 1), Some("b"), pause());
    assert!(out
        .mutations
        .iter()
        .any(|m| matches!(m, Mutation::Audit { entry, .. } if entry.action == "player.pause")));
}

// ---- property tests ----

fn arb_cmd() -> impl Strategy<Value = (u8, ClientCommand)> {
    let room = || Just(ROOM.to_string());
    let c = prop_oneof![
        room().prop_map(|room| ClientCommand::PlayerPlay { room }),
        room().prop_map(|room| ClientCommand::PlayerPause { room }),
        (room(), 0u64..600_000, proptest::option::of(any::<bool>())).prop_map(
            |(room, position_ms, play)| ClientCommand::PlayerSeek {
                room,
                position_ms,
                play
            }
        ),
        room().prop_map(|room| ClientCommand::PlayerRestart { room }),
        room().prop_map(|room| ClientCommand::PlayerSkip { room }),
        (room(), 0u64..8)
            .prop_map(|(room, entry_id)| ClientCommand::PlayerEnded { room, entry_id }),
        (room(), any::<bool>()).prop_map(|(room, active)| ClientCommand::PlayerAd { room, active }),
        (room(), "[a-z]{11}").prop_map(|(room, v)| ClientCommand::QueueAdd {
            room,
            url: format!("https://youtu.be/{v}"),
            title: None
        }),
        (room(), "[a-c]{16}").prop_map(|(room, list)| ClientCommand::QueueAdd {
            room,
            url: format!("https://www.youtube.com/playlist?list=PL{list}"),
            title: None
        }),
        (room(), 0u64..8)
            .prop_map(|(room, entry_id)| ClientCommand::QueueRemove { room, entry_id }),
        room().prop_map(|room| ClientCommand::QueueShuffle { room }),
        room().prop_map(|room| ClientCommand::QueueClear { room }),
        (room(), 0u64..8, 0u64..8).prop_map(|(room, entry_id, index)| ClientCommand::QueueMove {
            room,
            entry_id,
            index
        }),
        (room(), any::<bool>()).prop_map(|(room, ready)| ClientCommand::UserReady { room, ready }),
        (room(), ".{0,20}").prop_map(|(room, text)| ClientCommand::ChatSend { room, text }),
        (room(), proptest::option::of(0u64..5))
            .prop_map(|(room, since_seq)| ClientCommand::RoomJoin { room, since_seq }),
        room().prop_map(|room| ClientCommand::RoomLeave { room }),
        (
            room(),
            prop_oneof![
                Just(lockstep_shared::protocol::ControlMode::Owner),
                Just(lockstep_shared::protocol::ControlMode::Operators),
                Just(lockstep_shared::protocol::ControlMode::Anyone)
            ],
            prop_oneof![
                Just(lockstep_shared::protocol::AdPolicy::Ignore),
                Just(lockstep_shared::protocol::AdPolicy::PauseAll)
            ],
            proptest::option::of(0u8..=100)
        )
            .prop_map(|(room, m, a, v)| ClientCommand::RoomSettings {
                room,
                control_mode: Some(m),
                ad_policy: Some(a),
                name: None,
                vote_skip_percent: v
            }),
        room().prop_map(|room| ClientCommand::PlayerVoteSkip { room }),
        (room(), 0u8..4, any::<bool>()).prop_map(|(room, u, op)| ClientCommand::RoomRole {
            room,
            user_id: format!("u{u}"),
            role: if op {
                lockstep_shared::protocol::Role::Operator
            } else {
                lockstep_shared::protocol::Role::Participant
            }
        }),
        (room(), 0u8..4, proptest::option::of(1u64..5_000)).prop_map(|(room, u, duration_ms)| {
            ClientCommand::RoomBan {
                room,
                user_id: format!("u{u}"),
                duration_ms,
            }
        }),
        (room(), 0u64..40)
            .prop_map(|(room, message_id)| ClientCommand::ChatDelete { room, message_id }),
        (room(), 0u8..4, proptest::option::of(1u64..5_000)).prop_map(|(room, u, duration_ms)| {
            ClientCommand::RoomMute {
                room,
                user_id: format!("u{u}"),
                duration_ms,
            }
        }),
        (room(), 0u8..4).prop_map(|(room, u)| ClientCommand::RoomUnban {
            room,
            user_id: format!("u{u}"),
        }),
    ];
    (0u8..4, c)
}

fn user_of(i: u8) -> Caller {
    if i == 0 {
        caller("owner", 1)
    } else {
        caller(&format!("u{i}"), u64::from(i) + 1)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// seq strictly +1; position never negative and continuous; queue order preserved;
    /// no state change by a role the control mode forbids.
    #[test]
    fn invariants_hold(steps in proptest::collection::vec((arb_cmd(), 0u64..3_000), 1..80)) {
        let (mut room, _) = Room::create(cfg(), ROOM, "owner", 0);
        let mut now = 0u64;
        let mut last_seq = 0u64;
        for i in 0..4u8 {
            room.handle(now, ToWorker::Command(CommandEnvelope { caller: user_of(i), id: None, cmd: ClientCommand::RoomJoin { room: ROOM.into(), since_seq: None } }));
        }
        last_seq = last_seq.max(room.seq());
        for ((who, cmd), dt) in steps {
            now += dt;
            let t = room.tick(now);
            for d in &t.deliveries {
                match d {
                    ToGateway::RoomEvent { seq, .. } => {
                        prop_assert_eq!(*seq, last_seq + 1);
                        last_seq = *seq;
                    }
                    // A head is the seq of the last event made, never ahead of it.
                    ToGateway::RoomHead { seq, .. } => prop_assert_eq!(*seq, last_seq),
                    _ => {}
                }
            }
            // A known duration never runs past its grace on the clock while anyone is there.
            let d = room.durable();
            if let (PlayState::Playing, Some(len), false) = (d.clock.state, d.current.as_ref().and_then(|e| e.duration_ms), room.is_empty()) {
                prop_assert!(d.clock.position_at(now) <= len + cfg().end_grace_ms, "played past the end");
            }
            // Lookups answer: 1-20 s per video, so entries end by the clock now and then, and
            // one video in five cannot be played.
            for v in room.take_wanted_metadata() {
                let b = v.as_bytes()[0];
                let len = 1_000 + u64::from(b % 20) * 1_000;
                let unavailable = (b % 5 == 0).then(|| "Video unavailable".to_owned());
                let meta = super::VideoMeta { title: Some(format!("T {v}")), duration_ms: Some(len), unavailable };
                for d in room.apply_metadata(now, &v, &meta).deliveries {
                    if let ToGateway::RoomEvent { seq, .. } = d {
                        prop_assert_eq!(seq, last_seq + 1);
                        last_seq = seq;
                    }
                }
            }
            // Playlists answer with three videos (one unplayable, one without a length).
            for (list, _) in room.take_wanted_playlists() {
                let items = ["a", "b", "c"].map(|k| super::PlaylistItem {
                    video_id: format!("{k}{}", &list[2..12]),
                    meta: super::VideoMeta {
                        title: None,
                        duration_ms: (k != "c").then_some(4_000),
                        unavailable: (k == "b").then(|| "Video unavailable".to_owned()),
                    },
                });
                for d in room.apply_playlist(now, &list, Ok(items.to_vec())).deliveries {
                    if let ToGateway::RoomEvent { seq, .. } = d {
                        prop_assert_eq!(seq, last_seq + 1);
                        last_seq = seq;
                    }
                }
            }
            let before = room.durable().clone();
            let pos_before = before.clock.position_at(now);
            let c = user_of(who);
            let role = if c.user_id == "owner" { lockstep_shared::protocol::Role::Owner } else if before.operators.contains(&c.user_id) { lockstep_shared::protocol::Role::Operator } else { lockstep_shared::protocol::Role::Participant };
            let is_control = matches!(cmd, ClientCommand::PlayerPlay{..} | ClientCommand::PlayerPause{..} | ClientCommand::PlayerSeek{..} | ClientCommand::PlayerRestart{..} | ClientCommand::PlayerSkip{..} | ClientCommand::QueueAdd{..} | ClientCommand::QueueRemove{..} | ClientCommand::QueueMove{..} | ClientCommand::QueueShuffle{..} | ClientCommand::QueueClear{..});
            let is_pause = matches!(cmd, ClientCommand::PlayerPause{..});
            let muted_chat = matches!(cmd, ClientCommand::ChatSend{..})
                && before.mutes.get(&c.user_id).is_some_and(|u| u.is_none_or(|t| t > now));
            let was_member = room.member_conns().contains(&c.conn);
            let out = room.handle(now, ToWorker::Command(CommandEnvelope { caller: c.clone(), id: None, cmd }));
            for d in &out.deliveries {
                if let ToGateway::RoomEvent { seq, .. } = d {
                    prop_assert_eq!(*seq, last_seq + 1);
                    last_seq = *seq;
                }
            }
            prop_assert_eq!(room.seq(), last_seq);
            // A muted user's chat never reaches the room.
            if muted_chat {
                let stored = out.mutations.iter().any(|m| matches!(m, Mutation::Chat { .. }));
                prop_assert!(!stored, "a muted user's chat was stored");
            }
            let after = room.durable();
            if is_control && (!was_member || !before.settings.control_mode.allows(role)) {
                prop_assert_eq!(&before.queue, &after.queue);
                prop_assert_eq!(&before.clock, &after.clock);
            }
            // Pausing freezes exactly where the clock was.
            if is_pause && before.clock.state == PlayState::Playing && was_member && before.settings.control_mode.allows(role) {
                prop_assert_eq!(after.clock.position_ms, pos_before);
            }
            // Entries keep their relative order unless moved or removed.
            let before_ids: Vec<u64> = before.queue.iter().map(|e| e.entry_id).collect();
            let after_ids: Vec<u64> = after.queue.iter().map(|e| e.entry_id).collect();
            let kept: Vec<u64> = before_ids.iter().copied().filter(|id| after_ids.contains(id)).collect();
            let after_kept: Vec<u64> = after_ids.iter().copied().filter(|id| before_ids.contains(id)).collect();
            let reorders = |a: &str| a == "queue.move" || a == "queue.shuffle";
            if !out.mutations.iter().any(|m| matches!(m, Mutation::Audit { entry, .. } if reorders(&entry.action))) {
                prop_assert_eq!(kept, after_kept);
            }
            prop_assert!(after.queue.len() <= cfg().queue_max);
            // Nobody banned (and not yet due back) is present ("u0" is no caller's id).
            for (user, until) in &after.bans {
                let n: u8 = user.trim_start_matches('u').parse().unwrap_or(0);
                if n > 0 && until.is_none_or(|t| t > now) {
                    prop_assert!(!room.member_conns().contains(&user_of(n).conn), "{} present", user);
                }
            }
            // The played entry is never also queued, and never one known to be unplayable.
            if let Some(cur) = &after.current {
                prop_assert!(!after_ids.contains(&cur.entry_id));
                prop_assert!(cur.unavailable.is_none(), "playing an unavailable entry");
            }
        }
    }

    /// The clock formula is continuous across pause → play: no jump at the resume instant.
    #[test]
    fn clock_continuous_across_pause_play(play_ms in 0u64..100_000, wait in 0u64..50_000) {
        let mut h = Harness::new();
        h.add("owner", 1, "aaaaaaaaaaa");
        h.run("owner", 1, play());
        h.now += play_ms;
        let before = h.room.durable().clock.position_at(h.now);
        h.run("owner", 1, pause());
        h.now += wait;
        h.run("owner", 1, play());
        let clock = h.room.durable().clock.clone();
        prop_assert_eq!(clock.position_at(h.now), before);
        prop_assert_eq!(clock.position_at(clock.at), before);
        prop_assert_eq!(clock.position_at(clock.at + 1_000), before + 1_000);
    }
}

#[test]
fn frames_are_shared_not_copied() {
    let mut h = Harness::new();
    let (_, out) = h.send_as(
        &caller("owner", 1),
        None,
        ClientCommand::ChatSend {
            room: ROOM.into(),
            text: "x".into(),
        },
    );
    let frame = out.deliveries.iter().find_map(|d| match d {
        ToGateway::RoomEvent { frame, .. } => Some(frame.clone()),
        _ => None,
    });
    assert!(
        frame.is_some_and(|f| Arc::strong_count(&f) >= 2),
        "history and delivery share one frame"
    );
}

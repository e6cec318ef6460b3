//! Entry metadata: which videos the room asks about, and what an answer changes.

use lockstep_shared::bus::ToGateway;
use lockstep_shared::protocol::{ClientCommand, PlayState};
use lockstep_shared::store::Mutation;
use serde_json::Value;

use super::tests::{cfg, code, Harness, ROOM};
use super::{Output, VideoMeta};

fn meta(title: &str, duration_ms: Option<u64>) -> VideoMeta {
    VideoMeta {
        title: Some(title.into()),
        duration_ms,
        unavailable: None,
    }
}

fn gone(reason: &str) -> VideoMeta {
    VideoMeta {
        unavailable: Some(reason.into()),
        ..VideoMeta::default()
    }
}

/// Applies a lookup result and returns the event frames it produced.
fn apply(h: &mut Harness, video: &str, m: &VideoMeta) -> (Vec<Value>, Output) {
    let out = h.room.apply_metadata(h.now, video, m);
    let events: Vec<Value> = out
        .deliveries
        .iter()
        .filter_map(|d| match d {
            ToGateway::RoomEvent { frame, .. } => serde_json::from_str(frame).ok(),
            _ => None,
        })
        .collect();
    h.events.extend(events.iter().cloned());
    (events, out)
}

fn persisted(out: &Output) -> bool {
    out.mutations
        .iter()
        .any(|m| matches!(m, Mutation::Room { state: Some(_), .. }))
}

#[test]
fn added_videos_are_wanted_once() {
    let mut h = Harness::new();
    h.add("owner", 1, "aaaaaaaaaaa");
    h.add("owner", 1, "bbbbbbbbbbb");
    h.add("owner", 1, "aaaaaaaaaaa");
    assert_eq!(
        h.room.take_wanted_metadata(),
        vec!["aaaaaaaaaaa".to_owned(), "bbbbbbbbbbb".to_owned()]
    );
    assert!(h.room.take_wanted_metadata().is_empty());
}

#[test]
fn the_playing_entry_gets_title_and_duration_in_player_state() {
    let mut h = Harness::new();
    h.add("owner", 1, "aaaaaaaaaaa");
    let (events, out) = apply(&mut h, "aaaaaaaaaaa", &meta("Song", Some(212_000)));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "player.state");
    assert_eq!(events[0]["entry"]["title"], "Song");
    assert_eq!(events[0]["entry"]["duration_ms"], 212_000);
    // The clock is untouched: still starting at position 0.
    assert_eq!(events[0]["state"], "starting");
    assert_eq!(events[0]["position_ms"], 0);
    assert!(persisted(&out));
    let current = h
        .room
        .durable()
        .current
        .clone()
        .unwrap_or_else(|| panic!("no entry"));
    assert_eq!(
        (current.title.as_str(), current.duration_ms),
        ("Song", Some(212_000))
    );
}

#[test]
fn queued_entries_of_the_video_change_in_one_queue_update() {
    let mut h = Harness::new();
    h.add("owner", 1, "aaaaaaaaaaa");
    h.add("owner", 1, "bbbbbbbbbbb");
    h.add("owner", 1, "ccccccccccc");
    h.add("owner", 1, "bbbbbbbbbbb");
    let (events, _) = apply(&mut h, "bbbbbbbbbbb", &meta("B side", Some(61_000)));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "queue.update");
    let entries = events[0]["entries"].as_array().cloned().unwrap_or_default();
    let titles: Vec<&str> = entries.iter().filter_map(|e| e["title"].as_str()).collect();
    assert_eq!(titles, ["B side", "ccccccccccc", "B side"]);
    assert_eq!(entries[0]["duration_ms"], 61_000);
    assert!(entries[1]["duration_ms"].is_null());
}

#[test]
fn a_typed_title_is_kept_and_only_the_duration_filled() {
    let mut h = Harness::new();
    let reply = h.run(
        "owner",
        1,
        ClientCommand::QueueAdd {
            room: ROOM.into(),
            url: "https://youtu.be/aaaaaaaaaaa".into(),
            title: Some("Our anthem".into()),
        },
    );
    assert_eq!(code(&reply), "ack");
    assert_eq!(
        h.room.take_wanted_metadata(),
        vec!["aaaaaaaaaaa".to_owned()]
    );
    let (events, _) = apply(&mut h, "aaaaaaaaaaa", &meta("Upstream title", Some(5_000)));
    assert_eq!(events[0]["entry"]["title"], "Our anthem");
    assert_eq!(events[0]["entry"]["duration_ms"], 5_000);
}

#[test]
fn a_repeated_or_unrelated_answer_changes_nothing() {
    let mut h = Harness::new();
    h.add("owner", 1, "aaaaaaaaaaa");
    let seq = h.room.seq();
    let (events, out) = apply(&mut h, "zzzzzzzzzzz", &meta("Other", Some(1_000)));
    assert!(events.is_empty() && out.is_empty());
    apply(&mut h, "aaaaaaaaaaa", &meta("Song", Some(1_000)));
    let (events, out) = apply(&mut h, "aaaaaaaaaaa", &meta("Renamed", Some(9_000)));
    assert!(events.is_empty() && out.is_empty(), "{events:?}");
    assert_eq!(h.room.seq(), seq + 1);
}

#[test]
fn a_live_stream_gets_its_title_and_no_duration() {
    let mut h = Harness::new();
    h.add("owner", 1, "aaaaaaaaaaa");
    let (events, _) = apply(&mut h, "aaaaaaaaaaa", &meta("24/7 radio", None));
    assert_eq!(events[0]["entry"]["title"], "24/7 radio");
    assert!(events[0]["entry"]["duration_ms"].is_null());
}

#[test]
fn a_restored_room_asks_again_for_entries_still_without_duration() {
    let mut h = Harness::new();
    h.add("owner", 1, "aaaaaaaaaaa");
    h.add("owner", 1, "bbbbbbbbbbb");
    h.add("owner", 1, "ccccccccccc");
    h.room.take_wanted_metadata();
    apply(&mut h, "bbbbbbbbbbb", &meta("Known", Some(3_000)));
    let mut room = h.reloaded(h.room.seq(), Vec::new());
    assert_eq!(
        room.take_wanted_metadata(),
        vec!["aaaaaaaaaaa".to_owned(), "ccccccccccc".to_owned()]
    );
    let queue: Vec<(String, Option<u64>)> = room
        .durable()
        .queue
        .iter()
        .map(|e| (e.title.clone(), e.duration_ms))
        .collect();
    assert_eq!(
        queue,
        [
            ("Known".to_owned(), Some(3_000)),
            ("ccccccccccc".to_owned(), None)
        ]
    );
}

#[test]
fn wants_are_bounded_by_the_queue() {
    let mut c = cfg();
    c.queue_max = 3;
    let mut h = Harness::with(c);
    for v in ["aaaaaaaaaaa", "bbbbbbbbbbb", "ccccccccccc", "ddddddddddd"] {
        h.add("owner", 1, v);
    }
    // The queue is full: a further add is refused and wants nothing.
    assert_eq!(code(&h.add("owner", 1, "eeeeeeeeeee")), "conflict");
    assert_eq!(h.room.take_wanted_metadata().len(), 4);
}

/// A room playing `aaaaaaaaaaa` (10 s long, known) with `bbbbbbbbbbb` queued.
fn playing_with_duration() -> Harness {
    let mut h = Harness::new();
    h.add("owner", 1, "aaaaaaaaaaa");
    h.add("owner", 1, "bbbbbbbbbbb");
    apply(&mut h, "aaaaaaaaaaa", &meta("Ten seconds", Some(10_000)));
    let r = h.run("owner", 1, ClientCommand::PlayerPlay { room: ROOM.into() });
    assert_eq!(code(&r), "ack");
    assert_eq!(h.room.durable().clock.state, PlayState::Playing);
    h
}

fn current_video(h: &Harness) -> Option<String> {
    h.room
        .durable()
        .current
        .as_ref()
        .map(|e| e.video_id.clone())
}

#[test]
fn a_known_duration_advances_the_room_when_no_client_reports_the_end() {
    let mut h = playing_with_duration();
    let clock = h.room.durable().clock.clone();
    let grace = cfg().end_grace_ms;
    let due = clock.at + 10_000 + grace;
    assert_eq!(h.room.next_deadline(), Some(due));
    h.tick(due - 1 - h.now);
    assert_eq!(current_video(&h).as_deref(), Some("aaaaaaaaaaa"));
    h.tick(1);
    assert_eq!(current_video(&h).as_deref(), Some("bbbbbbbbbbb"));
    let state = h.last_event("player.state");
    assert_eq!(state["entry"]["video_id"], "bbbbbbbbbbb");
    assert_eq!(state["state"], "starting");
}

#[test]
fn a_reported_end_comes_first_and_the_clock_does_not_skip_again() {
    let mut h = playing_with_duration();
    let entry_id = h.room.durable().current.as_ref().map(|e| e.entry_id);
    h.tick(10_250);
    let r = h.run(
        "owner",
        1,
        ClientCommand::PlayerEnded {
            room: ROOM.into(),
            entry_id: entry_id.unwrap_or_default(),
        },
    );
    assert_eq!(code(&r), "ack");
    assert_eq!(current_video(&h).as_deref(), Some("bbbbbbbbbbb"));
    // The next entry's duration is unknown: nothing is due any more but its ready gate.
    h.tick(60_000);
    assert_eq!(current_video(&h).as_deref(), Some("bbbbbbbbbbb"));
    assert!(h.room.next_deadline().is_none());
}

#[test]
fn nothing_is_due_while_paused_seeked_back_or_empty() {
    let mut h = playing_with_duration();
    h.tick(5_000);
    h.run("owner", 1, ClientCommand::PlayerPause { room: ROOM.into() });
    assert!(h.room.next_deadline().is_none());
    h.tick(60_000);
    assert_eq!(current_video(&h).as_deref(), Some("aaaaaaaaaaa"));
    // Seeking back while playing moves the end out.
    h.run(
        "owner",
        1,
        ClientCommand::PlayerSeek {
            room: ROOM.into(),
            position_ms: 2_000,
            play: Some(true),
        },
    );
    let at = h.room.durable().clock.at;
    assert_eq!(
        h.room.next_deadline(),
        Some(at + 8_000 + cfg().end_grace_ms)
    );
    // Nobody present: no deadline (the room may unload); a joiner finds it overdue.
    h.room.handle(
        h.now,
        lockstep_shared::bus::ToWorker::ConnClosed {
            room: ROOM.into(),
            conn: super::tests::caller("owner", 1).conn,
            user_id: "owner".into(),
        },
    );
    assert!(h.room.is_empty());
    assert!(h.room.next_deadline().is_none());
    h.now += 60_000;
    h.join("owner", 1);
    assert_eq!(current_video(&h).as_deref(), Some("bbbbbbbbbbb"));
}

#[test]
fn a_zero_grace_leaves_the_end_to_clients() {
    let mut c = cfg();
    c.end_grace_ms = 0;
    let mut h = Harness::with(c);
    h.add("owner", 1, "aaaaaaaaaaa");
    apply(&mut h, "aaaaaaaaaaa", &meta("Ten seconds", Some(10_000)));
    h.run("owner", 1, ClientCommand::PlayerPlay { room: ROOM.into() });
    h.tick(60_000);
    assert_eq!(current_video(&h).as_deref(), Some("aaaaaaaaaaa"));
}

#[test]
fn an_unavailable_playing_entry_is_skipped_and_queued_ones_are_flagged() {
    let mut h = Harness::new();
    h.add("owner", 1, "aaaaaaaaaaa");
    h.add("owner", 1, "bbbbbbbbbbb");
    h.add("owner", 1, "aaaaaaaaaaa");
    h.add("owner", 1, "ccccccccccc");
    let (events, out) = apply(&mut h, "aaaaaaaaaaa", &gone("Video unavailable"));
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(kinds, ["player.state", "queue.update"]);
    assert_eq!(events[0]["entry"]["video_id"], "bbbbbbbbbbb");
    let queue = events[1]["entries"].as_array().cloned().unwrap_or_default();
    assert_eq!(queue.len(), 2);
    assert_eq!(queue[0]["unavailable"], "Video unavailable");
    assert!(queue[1].get("unavailable").is_none(), "absent unless set");
    assert!(out.mutations.iter().any(
        |m| matches!(m, Mutation::Audit { entry, .. } if entry.action == "player.unavailable")
    ));
    // Its turn comes: it is passed over (and dropped) for the next playable entry.
    let r = h.run("owner", 1, ClientCommand::PlayerSkip { room: ROOM.into() });
    assert_eq!(code(&r), "ack");
    assert_eq!(current_video(&h).as_deref(), Some("ccccccccccc"));
    assert!(h.room.durable().queue.is_empty());
    // Nothing playable left: the room goes idle rather than play it.
    h.add("owner", 1, "ddddddddddd");
    apply(&mut h, "ddddddddddd", &gone("Video unavailable"));
    let r = h.run("owner", 1, ClientCommand::PlayerSkip { room: ROOM.into() });
    assert_eq!(code(&r), "ack");
    assert_eq!(h.room.durable().clock.state, PlayState::Idle);
    assert!(h.room.durable().queue.is_empty());
}

#[test]
fn an_entry_known_unavailable_is_not_asked_for_again() {
    let mut h = Harness::new();
    h.add("owner", 1, "aaaaaaaaaaa");
    h.add("owner", 1, "bbbbbbbbbbb");
    h.room.take_wanted_metadata();
    apply(&mut h, "bbbbbbbbbbb", &gone("Video unavailable"));
    let mut room = h.reloaded(h.room.seq(), Vec::new());
    assert_eq!(room.take_wanted_metadata(), vec!["aaaaaaaaaaa".to_owned()]);
    assert_eq!(
        room.durable().queue[0].unavailable.as_deref(),
        Some("Video unavailable")
    );
}

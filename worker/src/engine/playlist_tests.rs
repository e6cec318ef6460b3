//! Playlists: asked for at once, added when read, bounded by the queue, heard by the
//! requester alone; and what people do with a long queue: shuffle it, clear it.

use lockstep_shared::bus::ToGateway;
use lockstep_shared::protocol::{ClientCommand, ControlMode, PlayState};
use lockstep_shared::store::Mutation;
use serde_json::Value;

use super::tests::{cfg, code, Harness, ROOM};
use super::{Output, PlaylistItem, VideoMeta};

const LIST: &str = "PLFgquLnL59alCl_2TQvOiD5Vgm1hCaGSI";

fn add_list(h: &mut Harness, user: &str, conn: u64, list: &str) -> Value {
    h.run(
        user,
        conn,
        ClientCommand::QueueAdd {
            room: ROOM.into(),
            url: format!("https://www.youtube.com/playlist?list={list}"),
            title: None,
        },
    )
}

fn items(n: usize) -> Vec<PlaylistItem> {
    (0..n)
        .map(|i| PlaylistItem {
            video_id: format!("vid{i:08}"),
            meta: VideoMeta {
                title: Some(format!("Video {i}")),
                duration_ms: Some(60_000 + i as u64),
                unavailable: None,
            },
        })
        .collect()
}

/// (sequenced events, direct frames with their connections) of an output.
fn split(h: &mut Harness, out: &Output) -> (Vec<Value>, Vec<(Vec<u64>, Value)>) {
    let mut events = Vec::new();
    let mut direct = Vec::new();
    for d in &out.deliveries {
        match d {
            ToGateway::RoomEvent { frame, .. } => {
                events.push(serde_json::from_str(frame).unwrap_or(Value::Null))
            }
            ToGateway::Direct { conns, frame } => direct.push((
                conns.iter().map(|c| c.local).collect(),
                serde_json::from_str(frame).unwrap_or(Value::Null),
            )),
            _ => {}
        }
    }
    h.events.extend(events.iter().cloned());
    (events, direct)
}

#[test]
fn a_playlist_is_acked_pending_then_fills_an_idle_room() {
    let mut h = Harness::new();
    h.join("p1", 7);
    let reply = add_list(&mut h, "owner", 1, LIST);
    assert_eq!(reply["result"]["playlist_id"], LIST);
    assert_eq!(reply["result"]["pending"], true);
    // An idle room: the queue (500) plus the entry about to play.
    assert_eq!(h.room.take_wanted_playlists(), vec![(LIST.to_owned(), 501)]);
    assert!(h.room.take_wanted_playlists().is_empty());
    let out = h.room.apply_playlist(h.now, LIST, Ok(items(3)));
    let (events, direct) = split(&mut h, &out);
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(kinds, ["player.state", "queue.update"]);
    assert_eq!(events[0]["entry"]["title"], "Video 0");
    assert_eq!(events[0]["entry"]["added_by"], "owner");
    assert_eq!(events[1]["entries"].as_array().map(Vec::len), Some(2));
    assert_eq!(events[1]["entries"][1]["duration_ms"], 60_002);
    // Only the requester's connection hears the summary.
    assert_eq!(direct.len(), 1);
    assert_eq!(direct[0].0, vec![1]);
    assert_eq!(direct[0].1["type"], "queue.playlist");
    assert_eq!(
        (
            direct[0].1["added"].as_u64(),
            direct[0].1["left_out"].as_u64()
        ),
        (Some(3), Some(0))
    );
    assert!(out.mutations.iter().any(
        |m| matches!(m, Mutation::Audit { entry, .. } if entry.action == "queue.add_playlist")
    ));
    // Lengths came with the playlist: nothing to look up.
    assert!(h.room.take_wanted_metadata().is_empty());
    assert_eq!(h.room.durable().clock.state, PlayState::Starting);
}

#[test]
fn a_playlist_fills_only_the_room_the_queue_has() {
    let mut c = cfg();
    c.queue_max = 4;
    let mut h = Harness::with(c);
    h.add("owner", 1, "aaaaaaaaaaa");
    h.add("owner", 1, "bbbbbbbbbbb");
    add_list(&mut h, "owner", 1, LIST);
    let out = h.room.apply_playlist(h.now, LIST, Ok(items(10)));
    let (_, direct) = split(&mut h, &out);
    assert_eq!(h.room.durable().queue.len(), 4);
    assert_eq!(
        (
            direct[0].1["added"].as_u64(),
            direct[0].1["left_out"].as_u64()
        ),
        (Some(3), Some(7))
    );
    // Full now: a further playlist is refused up front.
    assert_eq!(code(&add_list(&mut h, "owner", 1, LIST)), "conflict");
}

#[test]
fn failures_reach_the_requester_and_requests_are_bounded() {
    let mut h = Harness::new();
    assert_eq!(code(&add_list(&mut h, "owner", 1, LIST)), "ack");
    assert_eq!(
        code(&add_list(&mut h, "owner", 1, LIST)),
        "conflict",
        "already pending"
    );
    assert_eq!(
        code(&add_list(
            &mut h,
            "owner",
            1,
            "PLbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
        )),
        "ack"
    );
    assert_eq!(
        code(&add_list(
            &mut h,
            "owner",
            1,
            "PLcccccccccccccccccccccccccccccccc"
        )),
        "conflict",
        "two at once at most"
    );
    let out = h
        .room
        .apply_playlist(h.now, LIST, Err("The playlist does not exist.".into()));
    let (events, direct) = split(&mut h, &out);
    assert!(events.is_empty());
    assert_eq!(direct[0].1["error"], "The playlist does not exist.");
    assert!(h.room.durable().current.is_none());
    // An answer nobody waits for (a reload forgot it) changes nothing.
    let out = h.room.apply_playlist(h.now, LIST, Ok(items(2)));
    assert!(out.is_empty());
}

#[test]
fn a_playlist_link_follows_the_control_mode() {
    let mut h = Harness::new();
    h.join("p1", 7);
    assert_eq!(code(&add_list(&mut h, "p1", 7, LIST)), "forbidden");
    assert!(h.room.take_wanted_playlists().is_empty());
    h.run(
        "owner",
        1,
        ClientCommand::RoomSettings {
            room: ROOM.into(),
            control_mode: Some(ControlMode::Anyone),
            ad_policy: None,
            name: None,
            vote_skip_percent: None,
        },
    );
    assert_eq!(code(&add_list(&mut h, "p1", 7, LIST)), "ack");
    let out = h.room.apply_playlist(h.now, LIST, Ok(items(1)));
    let (_, direct) = split(&mut h, &out);
    assert_eq!(direct[0].0, vec![7]);
    assert_eq!(
        h.room
            .durable()
            .current
            .as_ref()
            .map(|e| e.added_by.as_str()),
        Some("p1")
    );
}

fn queue_ids(h: &Harness) -> Vec<u64> {
    h.room.durable().queue.iter().map(|e| e.entry_id).collect()
}

#[test]
fn shuffle_reorders_only_the_upcoming_entries_and_clear_empties_them() {
    let mut h = Harness::new();
    add_list(&mut h, "owner", 1, LIST);
    let out = h.room.apply_playlist(h.now, LIST, Ok(items(20)));
    split(&mut h, &out);
    let playing = h.room.durable().current.as_ref().map(|e| e.entry_id);
    let before = queue_ids(&h);
    let r = h.run(
        "owner",
        1,
        ClientCommand::QueueShuffle { room: ROOM.into() },
    );
    assert_eq!(code(&r), "ack");
    let after = queue_ids(&h);
    assert_ne!(
        after, before,
        "19 entries keep their order with odds of 1 in 19!"
    );
    let mut sorted = after.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, before, "the same entries");
    assert_eq!(
        h.room.durable().current.as_ref().map(|e| e.entry_id),
        playing
    );
    let update = h.last_event("queue.update");
    let shown: Vec<u64> = update["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["entry_id"].as_u64())
        .collect();
    assert_eq!(shown, after);
    // Participants cannot under the default control mode.
    h.join("p1", 7);
    assert_eq!(
        code(&h.run("p1", 7, ClientCommand::QueueClear { room: ROOM.into() })),
        "forbidden"
    );
    let r = h.run("owner", 1, ClientCommand::QueueClear { room: ROOM.into() });
    assert_eq!(r["result"]["removed"], 19);
    assert!(h.room.durable().queue.is_empty());
    assert_eq!(
        h.room.durable().current.as_ref().map(|e| e.entry_id),
        playing
    );
    assert_eq!(
        h.last_event("queue.update")["entries"],
        serde_json::json!([])
    );
    // Nothing left to clear or shuffle: acked, no event.
    let seq = h.room.seq();
    let r = h.run("owner", 1, ClientCommand::QueueClear { room: ROOM.into() });
    assert_eq!(r["result"]["removed"], 0);
    h.run(
        "owner",
        1,
        ClientCommand::QueueShuffle { room: ROOM.into() },
    );
    assert_eq!(h.room.seq(), seq);
}

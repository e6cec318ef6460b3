//! Queued videos get their titles and durations from their watch pages: a real embedded
//! node, real WebSocket clients, and a local fake YouTube serving watch pages in the real
//! format, on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use figment::providers::Serialized;
use figment::Figment;
use lockstep_testkit::fake_youtube::{FakeYoutube, Fault};
use serde_json::{json, Value};

const SONG: &str = "dQw4w9WgXcQ";
const SECOND: &str = "kJQP7kiw5Fk";
const GONE: &str = "aaaaaaaaaaa";

fn with_metadata(f: Figment, youtube: &str) -> Figment {
    f.merge(Serialized::default("ingest.youtube.base_url", youtube))
        .merge(Serialized::default("ingest.metadata.enabled", true))
        .merge(Serialized::default(
            "ingest.twitch.url",
            "ws://127.0.0.1:9/",
        ))
        .merge(Serialized::default("ingest.request_timeout_ms", 3_000))
}

async fn add(c: &mut Client, room: &str, video: &str, title: Option<&str>) -> u64 {
    let mut cmd =
        json!({"type": "queue.add", "room": room, "url": format!("https://youtu.be/{video}")});
    if let Some(t) = title {
        cmd["title"] = json!(t);
    }
    c.ok(cmd).await["entry_id"].as_u64().unwrap()
}

/// The next `queue.update` whose entry `entry_id` has a duration.
async fn queue_with_duration(c: &mut Client, entry_id: u64) -> Value {
    c.recv_until(|v| {
        v["type"] == "queue.update"
            && v["entries"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["entry_id"] == entry_id && !e["duration_ms"].is_null())
    })
    .await
}

fn entry(update: &Value, entry_id: u64) -> Value {
    update["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["entry_id"] == entry_id)
        .cloned()
        .unwrap()
}

#[tokio::test]
async fn queued_videos_get_titles_and_durations_that_persist() {
    let yt = FakeYoutube::start("tky5A2gLuZo", "UCdyqAaZDKHXg4Ahi7VENThQ").await;
    yt.add_video(
        SONG,
        "Rick Astley - Never Gonna Give You Up (Official Music Video)",
        212,
    );
    yt.add_video(
        SECOND,
        "Luis Fonsi - Despacito ft. Daddy Yankee & <co>",
        282,
    );
    let dir = TempDir::new("metadata");
    let mut node = start(&dir.0, |f| with_metadata(f, &yt.base_url())).await;
    let (mut owner, token, room) = node.owner("ana").await;
    let (mut member, _, _) = node.member("bo", &room).await;

    // The first entry plays at once: its title and duration come in a player.state.
    let first = add(&mut owner, &room, SONG, None).await;
    let loaded = member.event("player.state").await;
    assert_eq!(
        loaded["entry"]["title"], SONG,
        "the id stands in until the lookup"
    );
    assert!(loaded["entry"]["duration_ms"].is_null());
    let filled = member
        .recv_until(|v| v["type"] == "player.state" && !v["entry"]["duration_ms"].is_null())
        .await;
    assert_eq!(filled["entry"]["entry_id"], first);
    assert_eq!(
        filled["entry"]["title"],
        "Rick Astley - Never Gonna Give You Up (Official Music Video)"
    );
    assert_eq!(filled["entry"]["duration_ms"], 212_000);
    assert_eq!(filled["state"], loaded["state"], "the clock is untouched");
    assert_eq!(filled["position_ms"], loaded["position_ms"]);

    // Queued entries: one by id (title filled), one with a typed title (kept).
    let second = add(&mut owner, &room, SECOND, None).await;
    let update = queue_with_duration(&mut member, second).await;
    let e = entry(&update, second);
    assert_eq!(e["title"], "Luis Fonsi - Despacito ft. Daddy Yankee & <co>");
    assert_eq!(e["duration_ms"], 282_000);
    let typed = add(&mut owner, &room, SONG, Some("Our anthem")).await;
    let update = queue_with_duration(&mut member, typed).await;
    assert_eq!(entry(&update, typed)["title"], "Our anthem");
    assert_eq!(entry(&update, typed)["duration_ms"], 212_000);
    assert_eq!(
        yt.watch_loads(SONG),
        1,
        "the node's cache answered the second add"
    );

    // A video YouTube says is gone keeps its id and null duration and is marked.
    let gone = add(&mut owner, &room, GONE, None).await;
    let update = member
        .recv_until(|v| {
            v["type"] == "queue.update"
                && v["entries"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|e| e["entry_id"] == gone && e["unavailable"].is_string())
        })
        .await;
    let g = entry(&update, gone);
    assert_eq!(g["unavailable"], "Video unavailable");
    assert_eq!(
        (g["title"].as_str(), g["duration_ms"].is_null()),
        (Some(GONE), true)
    );
    assert_eq!(yt.watch_loads(GONE), 1);

    // Everything found survives a restart; nothing found is fetched again.
    owner.close().await;
    member.close().await;
    node.stop().await;
    let node = start(&dir.0, |f| with_metadata(f, &yt.base_url())).await;
    let mut c = node.connect(&token).await.ids_from(1_000);
    let snap = c.join(&room, None).await["snapshot"].clone();
    assert_eq!(snap["player"]["entry"]["duration_ms"], 212_000);
    let durations: Vec<Value> = snap["queue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["duration_ms"].clone())
        .collect();
    assert_eq!(durations, [json!(282_000), json!(212_000), Value::Null]);
    assert_eq!(snap["queue"][2]["unavailable"], "Video unavailable");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Nothing known is fetched again by the restarted node.
    let loads = [SONG, SECOND, GONE].map(|v| yt.watch_loads(v));
    assert_eq!(loads, [1, 1, 1]);

    // Its turn comes: two skips reach the typed entry, the third passes over the gone one.
    c.ok(json!({"type": "player.skip", "room": room})).await;
    c.ok(json!({"type": "player.skip", "room": room})).await;
    let state = c
        .recv_until(|v| v["type"] == "player.state" && v["entry"]["entry_id"] == typed)
        .await;
    assert_eq!(state["state"], "starting");
    c.ok(json!({"type": "player.skip", "room": room})).await;
    let idle = c
        .recv_until(|v| v["type"] == "player.state" && v["state"] == "idle")
        .await;
    assert!(idle["entry"].is_null());
    let audit = audit_actions(node.addr, &token, &room).await;
    assert!(
        audit.contains(&"queue.skip_unavailable".to_owned()),
        "{audit:?}"
    );
}

#[tokio::test]
async fn lookups_stop_while_youtube_fails_and_the_room_works_on() {
    let yt = FakeYoutube::start("tky5A2gLuZo", "UCdyqAaZDKHXg4Ahi7VENThQ").await;
    yt.add_video(SONG, "Song", 212);
    yt.fault([Fault::Malformed]);
    let dir = TempDir::new("metadata-breaker");
    let node = start(&dir.0, |f| {
        with_metadata(f, &yt.base_url())
            .merge(Serialized::default("ingest.breaker.open_base_ms", 60_000))
            .merge(Serialized::default("ingest.breaker.open_max_ms", 60_000))
    })
    .await;
    let (mut owner, _, room) = node.owner("ana").await;
    // A changed page opens the breaker at once: the next videos are not fetched at all.
    add(&mut owner, &room, SONG, None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    add(&mut owner, &room, SECOND, None).await;
    add(&mut owner, &room, GONE, None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        (
            yt.watch_loads(SONG),
            yt.watch_loads(SECOND),
            yt.watch_loads(GONE)
        ),
        (1, 0, 0)
    );
    // The room itself is unaffected.
    let r = owner
        .call(json!({"type": "chat.send", "room": room, "text": "still here"}))
        .await;
    assert_eq!(r["type"], "ack");
    let (_, body) = http(node.addr, "GET", "/metrics", None, None).await;
    let metrics = body["raw"].as_str().unwrap_or_default().to_owned();
    assert!(
        metrics.contains("lockstep_ingest_metadata_lookups_total{outcome=\"failed\"}"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("metadata"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(metrics.contains("lockstep_ingest_breakers_open{scope=\"youtube_metadata\"} 1"));
}

#[tokio::test]
async fn a_room_moves_on_when_a_known_duration_ends_and_nobody_reports_it() {
    let yt = FakeYoutube::start("tky5A2gLuZo", "UCdyqAaZDKHXg4Ahi7VENThQ").await;
    yt.add_video(SONG, "One second", 1);
    yt.add_video(SECOND, "Next", 282);
    let dir = TempDir::new("metadata-end");
    let node = start(&dir.0, |f| {
        with_metadata(f, &yt.base_url()).merge(Serialized::default("room.end_grace_ms", 300))
    })
    .await;
    let (mut owner, token, room) = node.owner("ana").await;
    let first = add(&mut owner, &room, SONG, None).await;
    add(&mut owner, &room, SECOND, None).await;
    owner
        .recv_until(|v| v["type"] == "player.state" && v["entry"]["duration_ms"] == 1_000)
        .await;
    owner.ok(json!({"type": "player.play", "room": room})).await;
    let playing = owner
        .recv_until(|v| v["type"] == "player.state" && v["state"] == "playing")
        .await;
    // Nobody sends player.ended: the room advances once 1 s plus the grace ran out.
    let next = owner
        .recv_until(|v| v["type"] == "player.state" && v["entry"]["entry_id"] != first)
        .await;
    assert_eq!(next["entry"]["video_id"], SECOND);
    assert_eq!(next["state"], "starting");
    let due = playing["at"].as_u64().unwrap() + 1_000 + 300;
    let ts = next["ts"].as_u64().unwrap();
    assert!(ts >= due && ts < due + 1_500, "advanced at {ts}, due {due}");
    let audit = audit_actions(node.addr, &token, &room).await;
    assert!(audit.contains(&"player.ended".to_owned()), "{audit:?}");
}

const LIST: &str = "PLFgquLnL59alCl_2TQvOiD5Vgm1hCaGSI";

fn list_url(list: &str) -> String {
    format!("https://www.youtube.com/playlist?list={list}")
}

#[tokio::test]
async fn a_playlist_link_queues_its_videos_and_tells_only_the_requester() {
    let yt = FakeYoutube::start("tky5A2gLuZo", "UCdyqAaZDKHXg4Ahi7VENThQ").await;
    yt.add_video(SONG, "Never Gonna Give You Up", 212);
    yt.add_video(SECOND, "Despacito", 282);
    yt.add_playlist(LIST, "Party", &[SONG, GONE, SECOND]);
    let dir = TempDir::new("metadata-playlist");
    let node = start(&dir.0, |f| with_metadata(f, &yt.base_url())).await;
    let (mut owner, token, room) = node.owner("ana").await;
    let (mut member, _, _) = node.member("bo", &room).await;

    let ack = owner
        .ok(json!({"type": "queue.add", "room": room, "url": list_url(LIST)}))
        .await;
    assert_eq!(ack, json!({"playlist_id": LIST, "pending": true}));
    let summary = owner.event("queue.playlist").await;
    assert_eq!(summary["room"], room.as_str());
    assert_eq!(
        (summary["added"].as_u64(), summary["left_out"].as_u64()),
        (Some(2), Some(1))
    );
    assert!(
        summary.get("seq").is_none(),
        "a direct event, outside the room's sequence"
    );

    // Everyone sees the videos arrive, with titles and lengths from the playlist page.
    let playing = member.event("player.state").await;
    assert_eq!(playing["entry"]["video_id"], SONG);
    assert_eq!(playing["entry"]["title"], "Never Gonna Give You Up");
    assert_eq!(playing["entry"]["duration_ms"], 212_000);
    let queue = member.event("queue.update").await;
    assert_eq!(queue["entries"][0]["title"], "Despacito");
    assert_eq!(queue["entries"].as_array().map(Vec::len), Some(1));
    // The playlist page was the only read: its videos' metadata came with it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(yt.watch_loads(SONG) + yt.watch_loads(SECOND), 0);
    let audit = audit_actions(node.addr, &token, &room).await;
    assert!(
        audit.contains(&"queue.add_playlist".to_owned()),
        "{audit:?}"
    );

    // A playlist that does not exist: the requester hears YouTube's words; nothing changes.
    let missing = "PLzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz";
    owner
        .ok(json!({"type": "queue.add", "room": room, "url": list_url(missing)}))
        .await;
    let failed = owner.event("queue.playlist").await;
    assert_eq!(failed["playlist_id"], missing);
    assert_eq!(failed["error"], "The playlist does not exist.");
    // The member heard neither summary: its next frame is the chat below.
    owner
        .ok(json!({"type": "chat.send", "room": room, "text": "after"}))
        .await;
    let next = member.recv().await;
    assert_eq!(
        (next["type"].as_str(), next["text"].as_str()),
        (Some("chat.message"), Some("after"))
    );
}

#[tokio::test]
async fn a_playlist_on_a_node_without_lookups_is_refused_with_a_reason() {
    let (_dir, node) = node("playlist-off").await;
    let (mut owner, _, room) = node.owner("ana").await;
    owner
        .ok(json!({"type": "queue.add", "room": room, "url": list_url(LIST)}))
        .await;
    let failed = owner.event("queue.playlist").await;
    assert!(
        failed["error"]
            .as_str()
            .unwrap_or_default()
            .contains("lookups are off"),
        "{failed}"
    );
    // Not a playlist link at all: refused up front.
    let r = owner
        .call(json!({"type": "queue.add", "room": room, "url": "https://www.youtube.com/playlist?list=x"}))
        .await;
    assert_eq!(r["code"], "bad_request");
    assert_eq!(r["message"], "url is not a YouTube video or playlist link");
}

#[tokio::test]
async fn a_lookup_that_failed_is_tried_again_after_its_failure_is_forgotten() {
    let yt = FakeYoutube::start("tky5A2gLuZo", "UCdyqAaZDKHXg4Ahi7VENThQ").await;
    yt.add_video(SONG, "Song", 212);
    yt.fault([Fault::Status(503)]);
    let dir = TempDir::new("metadata-retry");
    let node = start(&dir.0, |f| {
        with_metadata(f, &yt.base_url())
            .merge(Serialized::default("ingest.metadata.failure_ttl_ms", 300))
    })
    .await;
    let (mut owner, _, room) = node.owner("ana").await;
    add(&mut owner, &room, SONG, None).await;
    let filled = owner
        .recv_until(|v| v["type"] == "player.state" && v["entry"]["duration_ms"] == 212_000)
        .await;
    assert_eq!(filled["entry"]["title"], "Song");
    assert_eq!(yt.watch_loads(SONG), 2, "one 503, one retry");
}

#[tokio::test]
async fn a_long_playlist_is_read_page_by_page_until_the_queue_is_full() {
    let yt = FakeYoutube::start("tky5A2gLuZo", "UCdyqAaZDKHXg4Ahi7VENThQ").await;
    let ids: Vec<String> = (0..250).map(|i| format!("pl{i:09}")).collect();
    for (i, id) in ids.iter().enumerate() {
        yt.add_video(id, &format!("Track {i}"), 100 + i as u64);
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    yt.add_playlist(LIST, "Long", &refs);
    let dir = TempDir::new("metadata-long-playlist");
    let node = start(&dir.0, |f| {
        with_metadata(f, &yt.base_url()).merge(Serialized::default("room.queue_max", 150))
    })
    .await;
    let (mut owner, _, room) = node.owner("ana").await;
    owner
        .ok(json!({"type": "queue.add", "room": room, "url": list_url(LIST)}))
        .await;
    let queue = owner.recv_until(|v| v["type"] == "queue.update").await;
    assert_eq!(queue["entries"].as_array().map(Vec::len), Some(150));
    assert_eq!(queue["entries"][0]["title"], "Track 1");
    assert_eq!(queue["entries"][149]["title"], "Track 150");
    assert_eq!(queue["entries"][149]["duration_ms"], 250_000);
    let summary = owner.event("queue.playlist").await;
    // An idle room holds 150 queued plus the one playing.
    assert_eq!(
        (summary["added"].as_u64(), summary["left_out"].as_u64()),
        (Some(151), Some(49)),
        "{summary}"
    );
    // One page and one continuation were enough; the third page was never asked for.
    let browses: Vec<String> = yt
        .seen()
        .into_iter()
        .filter(|s| s.path.starts_with("/youtubei/v1/browse"))
        .filter_map(|s| s.continuation)
        .collect();
    assert_eq!(browses, [format!("plc-100-{LIST}")]);
}

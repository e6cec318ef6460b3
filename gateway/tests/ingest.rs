//! Chat ingestion end to end: a real embedded node, real WebSocket clients, and local fake
//! upstreams that speak the real formats (Twitch IRC over WebSocket, YouTube pages and
//! InnerTube, HTTP CONNECT proxies), all on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use figment::providers::Serialized;
use figment::Figment;
use lockstep_testkit::fake_proxy::FakeProxy;
use lockstep_testkit::fake_twitch::FakeTwitch;
use lockstep_testkit::fake_youtube::{ActionKind, FakeYoutube, Fault};
use lockstep_worker::ingest::profiles::PROFILES;
use serde_json::{json, Value};

const VIDEO: &str = "tky5A2gLuZo";
const CHANNEL: &str = "UCdyqAaZDKHXg4Ahi7VENThQ";

/// Fast timings so breakers, polls and live checks happen within a test.
fn ingest(f: Figment, twitch: &str, youtube: &str) -> Figment {
    f.merge(Serialized::default("ingest.twitch.url", twitch))
        .merge(Serialized::default("ingest.youtube.base_url", youtube))
        .merge(Serialized::default("ingest.youtube.poll_min_ms", 50))
        .merge(Serialized::default("ingest.youtube.poll_max_ms", 200))
        .merge(Serialized::default("ingest.youtube.live_check_ms", 300))
        .merge(Serialized::default(
            "ingest.breaker.consecutive_failures",
            2,
        ))
        .merge(Serialized::default("ingest.breaker.open_base_ms", 400))
        .merge(Serialized::default("ingest.breaker.open_max_ms", 1_000))
        .merge(Serialized::default("ingest.twitch.backoff_base_ms", 50))
        .merge(Serialized::default("ingest.twitch.backoff_max_ms", 200))
        .merge(Serialized::default("ingest.request_timeout_ms", 3_000))
}

/// Waits for `source.status` of `source` reaching `state`; returns the event.
async fn status(c: &mut Client, source: &str, state: &str) -> Value {
    c.recv_until(|v| {
        v["type"] == "source.status" && v["source_id"] == source && v["state"] == state
    })
    .await
}

async fn chat(c: &mut Client) -> Value {
    c.event("chat.message").await
}

async fn add(c: &mut Client, room: &str, spec: Value) -> String {
    let r = c
        .ok(json!({"type": "room.sources", "room": room, "add": spec}))
        .await;
    r["source_id"].as_str().unwrap().to_owned()
}

fn twitch_line(
    channel: &str,
    id: &str,
    user_id: &str,
    name: &str,
    extra: &str,
    text: &str,
) -> String {
    format!(
        "@badge-info=subscriber/12;badges=moderator/1,subscriber/12;color=#FF69B4;display-name={name};{extra}id={id};mod=1;room-id=11148817;subscriber=1;tmi-sent-ts=1594545155039;turbo=0;user-id={user_id};user-type=mod :{l}!{l}@{l}.tmi.twitch.tv PRIVMSG #{channel} :{text}",
        l = name.to_lowercase()
    )
}

#[tokio::test]
async fn twitch_chat_moderation_ping_and_reconnect() {
    let fake = FakeTwitch::start().await;
    let dir = TempDir::new("ingest-twitch");
    let node = start(&dir.0, |f| ingest(f, &fake.url(), "http://127.0.0.1:9")).await;
    let (mut c, token, room) = node.owner("ana").await;
    let source = add(
        &mut c,
        &room,
        json!({"platform": "twitch", "channel": "PaJlada"}),
    )
    .await;
    status(&mut c, &source, "live").await;
    assert!(
        fake.wait_joined("pajlada", 0).await,
        "channel lower-cased and joined"
    );

    // What the connection said and how it looked.
    let sent: Vec<String> = fake.received().into_iter().map(|(_, l)| l).collect();
    assert!(sent.contains(&"CAP REQ :twitch.tv/tags twitch.tv/commands".to_owned()));
    assert!(
        sent.iter().any(|l| l.starts_with("NICK justinfan")),
        "anonymous login: {sent:?}"
    );
    let up = &fake.upgrades()[0];
    let profile = PROFILES
        .iter()
        .find(|p| Some(p.user_agent) == up.get("user-agent").map(String::as_str))
        .expect("a browser user agent");
    assert_eq!(
        up.get("accept-language").map(String::as_str),
        Some(profile.accept_language)
    );

    // A message with emotes after a multi-byte character.
    fake.say(
        "pajlada",
        &twitch_line(
            "pajlada",
            "m-1",
            "29803735",
            "Ünïcödé",
            "emotes=25:2-6/1902:10-14;",
            "👉 Kappa ä Keepo",
        ),
    );
    let m1 = chat(&mut c).await;
    assert_eq!(m1["source"], "twitch");
    assert_eq!(m1["text"], "👉 Kappa ä Keepo");
    assert_eq!(m1["user"]["user_id"], "twitch:29803735");
    assert_eq!(m1["user"]["name"], "Ünïcödé");
    let ext = &m1["ext"];
    assert_eq!(ext["kind"], "text");
    assert_eq!(ext["source_id"], source.as_str());
    assert_eq!(ext["author"]["colour"], "#FF69B4");
    assert_eq!(
        ext["author"]["badges"][0],
        json!({"id": "moderator", "version": "1"})
    );
    assert_eq!(ext["emotes"][0]["name"], "Kappa");
    assert_eq!(
        (
            ext["emotes"][0]["start"].as_u64(),
            ext["emotes"][0]["end"].as_u64()
        ),
        (Some(2), Some(7))
    );
    assert_eq!(ext["emotes"][1]["name"], "Keepo");

    // Bits, a resub, a raid.
    fake.say(
        "pajlada",
        &twitch_line(
            "pajlada",
            "m-2",
            "42",
            "Cheerer",
            "bits=100;",
            "cheer100 nice",
        ),
    );
    let bits = chat(&mut c).await;
    assert_eq!(bits["ext"]["kind"], "paid");
    assert_eq!(
        bits["ext"]["paid"],
        json!({"amount": 100.0, "currency": "BITS", "display": "100 bits"})
    );
    fake.say("pajlada", r"@badge-info=subscriber/6;badges=subscriber/6;color=#008000;display-name=ronni;emotes=;id=m-3;login=ronni;mod=0;msg-id=resub;msg-param-cumulative-months=6;msg-param-sub-plan=Prime;room-id=1;subscriber=1;system-msg=ronni\shas\ssubscribed\sfor\s6\smonths!;tmi-sent-ts=1507246572675;user-id=87654321;user-type= :tmi.twitch.tv USERNOTICE #pajlada :Great stream -- keep it up!");
    let sub = chat(&mut c).await;
    assert_eq!(
        (sub["ext"]["kind"].as_str(), sub["ext"]["count"].as_u64()),
        (Some("membership"), Some(6))
    );
    assert_eq!(
        sub["ext"]["system_text"],
        "ronni has subscribed for 6 months!"
    );

    // A moderator deletes the first message: an event names it, the snapshot and the
    // history no longer show its text.
    fake.say("pajlada", "@login=unicode;room-id=;target-msg-id=m-1;tmi-sent-ts=1642720582342 :tmi.twitch.tv CLEARMSG #pajlada :👉 Kappa ä Keepo");
    let del = chat(&mut c).await;
    assert_eq!(del["ext"]["kind"], "deletion");
    assert_eq!(del["ext"]["targets"], json!([m1["id"]]));
    let (_, page) = http(
        node.addr,
        "GET",
        &format!("/v1/rooms/{room}/chat?limit=50"),
        Some(&token),
        None,
    )
    .await;
    let stored = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == m1["id"])
        .cloned()
        .unwrap();
    assert_eq!(stored["text"], "");
    assert_eq!(stored["ext"]["deleted"], true);
    let (_, _, snap) = node.member("bo", &room).await;
    let ids: Vec<&Value> = snap["snapshot"]["chat"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["id"])
        .collect();
    assert!(
        !ids.contains(&&m1["id"]) && ids.contains(&&bits["id"]),
        "{ids:?}"
    );
    assert_eq!(snap["snapshot"]["sources"][0]["state"], "live");
    assert_eq!(snap["snapshot"]["sources"][0]["channel"], "pajlada");

    // A timeout removes that user's messages.
    fake.say("pajlada", "@ban-duration=350;room-id=1;target-user-id=42;tmi-sent-ts=1642715756806 :tmi.twitch.tv CLEARCHAT #pajlada :cheerer");
    let ban = chat(&mut c).await;
    assert_eq!(ban["ext"]["kind"], "ban");
    assert_eq!(ban["ext"]["duration_s"], 350);
    assert_eq!(ban["ext"]["targets"], json!([bits["id"]]));

    // Twitch pings; we pong.
    fake.broadcast_raw("PING :tmi.twitch.tv");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !fake
        .received()
        .iter()
        .any(|(_, l)| l == "PONG :tmi.twitch.tv")
    {
        assert!(std::time::Instant::now() < deadline, "no PONG");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // RECONNECT: a new connection joins again and chat keeps flowing.
    fake.reconnect_all();
    assert!(
        fake.wait_joined("pajlada", 1).await,
        "rejoined after RECONNECT"
    );
    assert_eq!(fake.connections_total(), 2);
    fake.say(
        "pajlada",
        &twitch_line("pajlada", "m-9", "7", "After", "", "back again"),
    );
    let again = c
        .recv_until(|v| v["type"] == "chat.message" && v["text"] == "back again")
        .await;
    assert_eq!(again["source"], "twitch");

    // Removing the source parts the channel and closes the idle connection.
    c.ok(json!({"type": "room.sources", "room": room, "remove": source}))
        .await;
    status(&mut c, &source, "removed").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !fake.open().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "connection still open: {:?}",
            fake.open()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(fake.received().iter().any(|(_, l)| l == "PART #pajlada"));
}

#[tokio::test]
async fn twitch_format_break_opens_the_breaker_and_recovery_closes_it() {
    let fake = FakeTwitch::start().await;
    fake.set_broken(true);
    let dir = TempDir::new("ingest-twitch-breaker");
    let node = start(&dir.0, |f| ingest(f, &fake.url(), "http://127.0.0.1:9")).await;
    let (mut c, _, room) = node.owner("ana").await;
    let source = add(
        &mut c,
        &room,
        json!({"platform": "twitch", "channel": "flaky"}),
    )
    .await;
    let open = status(&mut c, &source, "open").await;
    assert!(
        open["error"].as_str().unwrap().contains("unparseable"),
        "{open}"
    );
    // Open: no reconnect storm while it is open (one connection per probe).
    let tried = fake.connections_total();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(fake.connections_total(), tried, "reconnected while open");
    fake.set_broken(false);
    status(&mut c, &source, "half_open").await;
    status(&mut c, &source, "closed").await;
    status(&mut c, &source, "live").await;
    fake.say(
        "flaky",
        &twitch_line("flaky", "f1", "1", "F", "", "works again"),
    );
    assert_eq!(chat(&mut c).await["text"], "works again");
}

#[tokio::test]
async fn twitch_channels_share_connections_and_route_by_channel() {
    let fake = FakeTwitch::start().await;
    let dir = TempDir::new("ingest-mux");
    let node = start(&dir.0, |f| {
        ingest(f, &fake.url(), "http://127.0.0.1:9").merge(Serialized::default(
            "ingest.twitch.channels_per_connection",
            2,
        ))
    })
    .await;
    let (mut a, _, room_a) = node.owner("ana").await;
    let (mut b, _, room_b) = node.owner("bo").await;
    let a1 = add(
        &mut a,
        &room_a,
        json!({"platform": "twitch", "channel": "chan_a"}),
    )
    .await;
    status(&mut a, &a1, "live").await;
    let a2 = add(
        &mut a,
        &room_a,
        json!({"platform": "twitch", "channel": "shared"}),
    )
    .await;
    status(&mut a, &a2, "live").await;
    let b1 = add(
        &mut b,
        &room_b,
        json!({"platform": "twitch", "channel": "shared"}),
    )
    .await;
    status(&mut b, &b1, "live").await;
    let b2 = add(
        &mut b,
        &room_b,
        json!({"platform": "twitch", "channel": "chan_b"}),
    )
    .await;
    status(&mut b, &b2, "live").await;
    // Three channels, two per connection: two connections; `shared` joined once.
    assert_eq!(
        fake.open(),
        vec![
            (1, vec!["chan_a".to_owned(), "shared".to_owned()]),
            (2, vec!["chan_b".to_owned()])
        ]
    );
    assert_eq!(
        fake.joins()
            .iter()
            .filter(|(_, _, c)| c == "shared")
            .count(),
        1
    );

    fake.say(
        "chan_b",
        &twitch_line("chan_b", "x1", "1", "B", "", "only for b"),
    );
    fake.say(
        "shared",
        &twitch_line("shared", "x2", "2", "S", "", "for both"),
    );
    // Two connections: no order between them.
    let mut got = vec![
        chat(&mut b).await["text"].clone(),
        chat(&mut b).await["text"].clone(),
    ];
    got.sort_by_key(|v| v.to_string());
    assert_eq!(got, vec![json!("for both"), json!("only for b")]);
    fake.say(
        "chan_a",
        &twitch_line("chan_a", "x3", "3", "A", "", "only for a"),
    );
    assert_eq!(chat(&mut a).await["text"], "for both");
    assert_eq!(
        chat(&mut a).await["text"],
        "only for a",
        "room A never saw chan_b"
    );
}

#[tokio::test]
async fn twitch_joins_are_paced_by_the_limiter_and_linked_accounts_log_in() {
    let fake = FakeTwitch::start().await;
    let dir = TempDir::new("ingest-joins");
    let node = start(&dir.0, |f| {
        ingest(f, &fake.url(), "http://127.0.0.1:9")
            .merge(Serialized::default("ingest.twitch.join_limit", 2))
            .merge(Serialized::default("ingest.twitch.join_window_ms", 1_000))
    })
    .await;
    let (mut c, _, room) = node.owner("ana").await;
    let mut ids = Vec::new();
    for ch in ["j1", "j2", "j3", "j4", "j5"] {
        ids.push(add(&mut c, &room, json!({"platform": "twitch", "channel": ch})).await);
    }
    // Channels are joined in any order; wait until all five are live.
    let mut live = std::collections::HashSet::new();
    while live.len() < ids.len() {
        let ev = c
            .recv_until(|v| v["type"] == "source.status" && v["state"] == "live")
            .await;
        live.insert(ev["source_id"].as_str().unwrap().to_owned());
    }
    let times: Vec<Duration> = fake.joins().iter().map(|(t, _, _)| *t).collect();
    assert_eq!(times.len(), 5);
    for w in times.windows(3) {
        assert!(
            w[2] - w[0] >= Duration::from_millis(950),
            "3 JOINs within one window: {times:?}"
        );
    }

    // A linked account logs in with its token, which is never shown to clients.
    let linked = add(
        &mut c,
        &room,
        json!({"platform": "twitch", "channel": "own_channel",
               "auth": {"login": "MyBot", "token": "oauth:s3cr3tt0k3n"}}),
    )
    .await;
    let live = status(&mut c, &linked, "live").await;
    assert!(!live.to_string().contains("s3cr3t"));
    let sent: Vec<String> = fake.received().into_iter().map(|(_, l)| l).collect();
    assert!(
        sent.contains(&"PASS oauth:s3cr3tt0k3n".to_owned()),
        "{sent:?}"
    );
    assert!(sent.contains(&"NICK mybot".to_owned()));
    let (_, _, snap) = node.member("bo", &room).await;
    assert!(
        !snap.to_string().contains("s3cr3t"),
        "token leaked into the snapshot"
    );
    // A token with a space would inject IRC commands: refused.
    let bad = c
        .call(json!({"type": "room.sources", "room": room,
            "add": {"platform": "twitch", "channel": "x", "auth": {"login": "a", "token": "t\r\nJOIN #y"}}}))
        .await;
    assert_eq!(bad["code"], "bad_request");
}

#[tokio::test]
async fn youtube_live_chat_end_to_end() {
    let yt = FakeYoutube::start(VIDEO, CHANNEL).await;
    let dir = TempDir::new("ingest-yt");
    let node = start(&dir.0, |f| ingest(f, "ws://127.0.0.1:9/", &yt.base_url())).await;
    let (mut c, token, room) = node.owner("ana").await;
    let source = add(
        &mut c,
        &room,
        json!({"platform": "youtube", "channel_id": CHANNEL}),
    )
    .await;
    status(&mut c, &source, "live").await;

    yt.push([
        FakeYoutube::action(ActionKind::Engagement, "e0", "", "", ""),
        FakeYoutube::action(
            ActionKind::TextWithEmoji,
            "y1",
            "Ana Fan",
            "UCaaaaaaaaaaaaaaaaaaaaaa",
            "",
        ),
        FakeYoutube::action(
            ActionKind::SuperChat,
            "y2",
            "けろっちゅ",
            "UCbbbbbbbbbbbbbbbbbbbbbb",
            "￥320",
        ),
        FakeYoutube::action(
            ActionKind::Sticker,
            "y3",
            "Sticky",
            "UCcccccccccccccccccccccc",
            "$5.00",
        ),
        FakeYoutube::action(
            ActionKind::Membership,
            "y4",
            "Member",
            "UCdddddddddddddddddddddd",
            "",
        ),
        FakeYoutube::action(
            ActionKind::Gift,
            "y5",
            "Gifter",
            "UCeeeeeeeeeeeeeeeeeeeeee",
            "",
        ),
    ]);
    let text = chat(&mut c).await;
    assert_eq!(text["source"], "youtube");
    assert_eq!(text["text"], "good morning 😀 hi :yt:");
    assert_eq!(
        text["user"],
        json!({"user_id": "youtube:UCaaaaaaaaaaaaaaaaaaaaaa", "name": "Ana Fan"})
    );
    assert_eq!(text["ext"]["upstream_id"], "y1");
    assert_eq!(text["ext"]["emotes"][0]["name"], ":yt:");
    // "good morning " (13) + "😀" (1) + " hi " (4): the custom emoji spans chars 18..22.
    assert_eq!(
        (
            text["ext"]["emotes"][0]["start"].as_u64(),
            text["ext"]["emotes"][0]["end"].as_u64()
        ),
        (Some(18), Some(22))
    );
    assert_eq!(text["ext"]["author"]["badges"][0]["id"], "moderator");
    let sc = chat(&mut c).await;
    assert_eq!(sc["ext"]["kind"], "paid");
    assert_eq!(
        sc["ext"]["paid"],
        json!({"amount": 320.0, "currency": "JPY", "display": "￥320"})
    );
    assert!(sc["text"].as_str().unwrap().starts_with("ローソンで"));
    assert_eq!(
        sc["ext"]["author"]["badges"][0],
        json!({"id": "member", "version": "メンバー（2 か月）"})
    );
    let sticker = chat(&mut c).await;
    assert_eq!(
        (
            sticker["ext"]["kind"].as_str(),
            sticker["ext"]["paid"]["currency"].as_str()
        ),
        (Some("paid"), Some("USD"))
    );
    let member = chat(&mut c).await;
    assert_eq!(
        (
            member["ext"]["kind"].as_str(),
            member["ext"]["count"].as_u64()
        ),
        (Some("membership"), Some(6))
    );
    assert_eq!(member["text"], "half a year already!");
    let gift = chat(&mut c).await;
    assert_eq!(
        (gift["ext"]["kind"].as_str(), gift["ext"]["count"].as_u64()),
        (Some("gift"), Some(5))
    );
    assert_eq!(gift["user"]["name"], "Gifter");

    // Upstream repeats a batch: delivered once.
    yt.set_repeat(true);
    yt.push([FakeYoutube::action(
        ActionKind::TextWithEmoji,
        "y6",
        "Ana Fan",
        "UCaaaaaaaaaaaaaaaaaaaaaa",
        "",
    )]);
    assert_eq!(chat(&mut c).await["ext"]["upstream_id"], "y6");
    let polls = yt.polls();
    while yt.polls() < polls + 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    yt.set_repeat(false);
    yt.push([FakeYoutube::action(
        ActionKind::TextWithEmoji,
        "y7",
        "Ana Fan",
        "UCaaaaaaaaaaaaaaaaaaaaaa",
        "",
    )]);
    assert_eq!(
        chat(&mut c).await["ext"]["upstream_id"],
        "y7",
        "y6 was not delivered twice"
    );

    // Moderation: one item retracted, then everything by one author.
    yt.push([FakeYoutube::deleted("y1")]);
    let del = chat(&mut c).await;
    assert_eq!(
        (del["ext"]["kind"].as_str(), &del["ext"]["targets"]),
        (Some("deletion"), &json!([text["id"]]))
    );
    yt.push([FakeYoutube::author_deleted("UCbbbbbbbbbbbbbbbbbbbbbb")]);
    let ban = chat(&mut c).await;
    assert_eq!(
        (ban["ext"]["kind"].as_str(), &ban["ext"]["targets"]),
        (Some("ban"), &json!([sc["id"]]))
    );
    let texts = chat_texts(node.addr, &token, &room).await;
    assert!(
        !texts.iter().any(|t| t.starts_with("ローソン")),
        "removed from history"
    );

    // Every request looked like one browser, with InnerTube's client headers on polls.
    let seen = yt.seen();
    let ua = seen[0].headers.get("user-agent").cloned().unwrap();
    let profile = PROFILES
        .iter()
        .find(|p| p.user_agent == ua)
        .expect("a browser profile");
    for s in &seen {
        assert_eq!(
            s.headers.get("user-agent"),
            Some(&ua),
            "one profile per session"
        );
        assert_eq!(
            s.headers.get("accept-language").map(String::as_str),
            Some(profile.accept_language)
        );
        if s.path.contains("get_live_chat") {
            assert_eq!(
                s.headers
                    .get("x-youtube-client-version")
                    .map(String::as_str),
                Some("2.20241120.01.00")
            );
            assert!(s.continuation.as_deref().unwrap_or("").starts_with("ct-"));
        }
    }

    // The stream ends; the channel goes offline; a new stream is found.
    yt.end_stream();
    status(&mut c, &source, "ended").await;
    status(&mut c, &source, "offline").await;
    yt.set_live(true);
    status(&mut c, &source, "live").await;
    yt.push([FakeYoutube::action(
        ActionKind::TextWithEmoji,
        "z1",
        "Ana Fan",
        "UCaaaaaaaaaaaaaaaaaaaaaa",
        "",
    )]);
    assert_eq!(chat(&mut c).await["ext"]["upstream_id"], "z1");
}

#[tokio::test]
async fn youtube_breaker_opens_on_errors_and_format_breaks_and_recovers() {
    let yt = FakeYoutube::start(VIDEO, CHANNEL).await;
    let dir = TempDir::new("ingest-breaker");
    let node = start(&dir.0, |f| ingest(f, "ws://127.0.0.1:9/", &yt.base_url())).await;
    let (mut c, _, room) = node.owner("ana").await;
    let source = add(
        &mut c,
        &room,
        json!({"platform": "youtube", "video_id": VIDEO}),
    )
    .await;
    status(&mut c, &source, "live").await;

    // Two 5xx in a row open the circuit; no request goes out while it is open.
    yt.fault([Fault::Status(500), Fault::Status(503)]);
    let open = status(&mut c, &source, "open").await;
    assert!(open["error"].as_str().unwrap().contains("503"), "{open}");
    let during = yt.seen().len();
    // The shortest open period is 300 ms (400 ms − 25 % jitter).
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(yt.seen().len(), during, "hammered while open");
    status(&mut c, &source, "half_open").await;
    status(&mut c, &source, "closed").await;
    status(&mut c, &source, "live").await;
    yt.push([FakeYoutube::action(
        ActionKind::TextWithEmoji,
        "a1",
        "A",
        "UCaaaaaaaaaaaaaaaaaaaaaa",
        "",
    )]);
    assert_eq!(chat(&mut c).await["ext"]["upstream_id"], "a1");

    // 429 counts too.
    yt.fault([Fault::Status(429), Fault::Status(429)]);
    let open = status(&mut c, &source, "open").await;
    assert!(open["error"].as_str().unwrap().contains("429"));
    status(&mut c, &source, "live").await;

    // A changed format opens it after one response.
    let before = yt.seen().len();
    yt.fault([Fault::Malformed]);
    let open = status(&mut c, &source, "open").await;
    assert!(open["error"].as_str().unwrap().contains("format"), "{open}");
    assert_eq!(yt.seen().len(), before + 1, "opened at once, no retries");
    status(&mut c, &source, "live").await;
    yt.push([FakeYoutube::action(
        ActionKind::TextWithEmoji,
        "a2",
        "A",
        "UCaaaaaaaaaaaaaaaaaaaaaa",
        "",
    )]);
    assert_eq!(chat(&mut c).await["ext"]["upstream_id"], "a2");

    let (_, metrics) = http(node.addr, "GET", "/metrics", None, None).await;
    let text = metrics["raw"].as_str().unwrap();
    assert!(
        text.contains(r#"lockstep_ingest_breaker_transitions_total{scope="youtube",to="open"}"#),
        "{text}"
    );
    assert!(text.contains(
        r#"lockstep_ingest_upstream_errors_total{platform="youtube",reason="status_5xx"}"#
    ));
    assert!(text
        .contains(r#"lockstep_ingest_upstream_errors_total{platform="youtube",reason="parse"}"#));

    // The video ends: `ended`, and nothing more is requested.
    yt.end_stream();
    status(&mut c, &source, "ended").await;
    let after = yt.seen().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(yt.seen().len(), after, "an ended video is not polled");
}

#[tokio::test]
async fn upstream_requests_rotate_through_proxies_and_skip_a_dead_one() {
    let yt = FakeYoutube::start(VIDEO, CHANNEL).await;
    let tw = FakeTwitch::start().await;
    let (p1, p2) = (FakeProxy::start().await, FakeProxy::start().await);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let proxies = format!("{},{dead},{}", p1.url(), p2.url());
    let dir = TempDir::new("ingest-proxy");
    let node = start(&dir.0, |f| {
        ingest(f, &tw.url(), &yt.base_url())
            .merge(Serialized::default("ingest.proxies", proxies.clone()))
            .merge(Serialized::default("ingest.breaker.open_base_ms", 60_000))
            .merge(Serialized::default("ingest.breaker.open_max_ms", 60_000))
    })
    .await;
    let (mut c, _, room) = node.owner("ana").await;
    let yts = add(
        &mut c,
        &room,
        json!({"platform": "youtube", "video_id": VIDEO}),
    )
    .await;
    status(&mut c, &yts, "live").await;
    let tws = add(
        &mut c,
        &room,
        json!({"platform": "twitch", "channel": "proxied"}),
    )
    .await;
    status(&mut c, &tws, "live").await;
    while yt.polls() < 12 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every upstream connection went through a live proxy, both were used.
    let yt_requests = yt.seen().len();
    let via = |p: &FakeProxy, addr: std::net::SocketAddr| {
        p.targets()
            .iter()
            .filter(|t| **t == addr.to_string())
            .count()
    };
    let (y1, y2) = (via(&p1, yt.addr), via(&p2, yt.addr));
    assert!(y1 > 0 && y2 > 0, "rotation: {y1} + {y2}");
    assert!(
        y1 + y2 >= yt_requests,
        "a request bypassed the proxies: {y1}+{y2} < {yt_requests}"
    );
    assert_eq!(
        via(&p1, tw.addr) + via(&p2, tw.addr),
        1,
        "twitch tunnelled too"
    );
    // The dead proxy failed (the request moved on to a live one) and was skipped after.
    let (_, metrics) = http(node.addr, "GET", "/metrics", None, None).await;
    let text = metrics["raw"].as_str().unwrap();
    let failed = text
        .lines()
        .find(|l| {
            l.starts_with(r#"lockstep_ingest_proxy_requests_total{proxy="1",outcome="failed"}"#)
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(
        (1.0..=2.0).contains(&failed),
        "dead proxy tried {failed} times"
    );
    assert!(
        !text.contains(r#"reason="proxy""#),
        "a request failed for a proxy: {text}"
    );
}

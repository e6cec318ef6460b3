//! Ingestion pieces against real servers: the JOIN limiter shared by two workers through a
//! private Redis, and the YouTube parsers on the fixture responses the fake upstream serves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use lockstep_shared::protocol::ext::ExtKind;
use lockstep_testkit::fake_youtube::{ActionKind, FakeYoutube};
use lockstep_testkit::Redis;
use lockstep_worker::cluster::redis_conn::RedisTarget;
use lockstep_worker::ingest::limiter::{acquire, JoinLimiter, RedisJoinLimiter};
use lockstep_worker::ingest::youtube::chat::parse_chat;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_limiter_holds_across_two_workers() {
    let redis = tokio::task::spawn_blocking(Redis::start).await.unwrap();
    let pool = |_: ()| {
        RedisTarget::Single(redis::Client::open(redis.url()).unwrap())
            .pool()
            .unwrap()
    };
    // Two workers: separate pools (connections), separate node names, one key.
    let key = "test:joins";
    let (limit, window) = (3u32, 500u64);
    let a: Arc<dyn JoinLimiter> = Arc::new(RedisJoinLimiter::new(
        pool(()),
        "worker-a",
        limit,
        window,
        Some(key),
    ));
    let b: Arc<dyn JoinLimiter> = Arc::new(RedisJoinLimiter::new(
        pool(()),
        "worker-b",
        limit,
        window,
        Some(key),
    ));
    let started = Instant::now();
    let cancel = CancellationToken::new();
    let run = |l: Arc<dyn JoinLimiter>, cancel: CancellationToken| async move {
        let mut grants = Vec::new();
        for _ in 0..6 {
            assert!(acquire(l.as_ref(), &cancel).await);
            grants.push(Instant::now());
        }
        grants
    };
    let (ga, gb) = tokio::join!(
        tokio::spawn(run(a, cancel.clone())),
        tokio::spawn(run(b, cancel.clone()))
    );
    let mut all: Vec<Instant> = ga.unwrap().into_iter().chain(gb.unwrap()).collect();
    all.sort();
    assert_eq!(all.len(), 12);
    // Any `limit + 1` consecutive grants span at least one window (Redis's clock and ours
    // agree to a few ms on one machine).
    for w in all.windows(limit as usize + 1) {
        let span = w[limit as usize] - w[0];
        assert!(
            span >= Duration::from_millis(window - 20),
            "{span:?} for {} grants",
            limit + 1
        );
    }
    assert!(
        started.elapsed() >= Duration::from_millis(3 * window - 60),
        "12 grants at 3 per window"
    );
}

#[test]
fn fixture_responses_parse_to_every_kind() {
    let actions = vec![
        FakeYoutube::action(ActionKind::Engagement, "e", "", "", ""),
        FakeYoutube::action(ActionKind::TextWithEmoji, "t", "Ana", "UCa", ""),
        FakeYoutube::action(ActionKind::SuperChat, "p", "Bo", "UCb", "CA$10.00"),
        FakeYoutube::action(ActionKind::Sticker, "s", "Cy", "UCc", "€2,00"),
        FakeYoutube::action(ActionKind::Membership, "m", "Di", "UCd", ""),
        FakeYoutube::action(ActionKind::Gift, "g", "Ed", "UCe", ""),
        FakeYoutube::deleted("t"),
        FakeYoutube::author_deleted("UCb"),
    ];
    let body = include_str!("../../shared/testkit/fixtures/youtube/get_live_chat.json")
        .replace("__VIDEO__", "tky5A2gLuZo")
        .replace("__TIMEOUT__", "5321")
        .replace("__CONTINUATION__", "next-token")
        .replace(
            "__ACTIONS__",
            &serde_json::Value::Array(actions).to_string(),
        );
    let page = parse_chat(body.as_bytes()).unwrap();
    assert_eq!(page.next, Some(("next-token".to_owned(), 5321)));
    let kinds: Vec<ExtKind> = page.items.iter().map(|i| i.ext.kind).collect();
    assert_eq!(
        kinds,
        vec![
            ExtKind::Text,
            ExtKind::Paid,
            ExtKind::Paid,
            ExtKind::Membership,
            ExtKind::Gift,
            ExtKind::Deletion,
            ExtKind::Ban
        ],
        "the engagement banner is not chat"
    );
    let paid = page.items[1].ext.paid.clone().unwrap();
    assert_eq!((paid.amount, paid.currency.as_str()), (10.0, "CAD"));
    let sticker = page.items[2].ext.paid.clone().unwrap();
    assert_eq!((sticker.amount, sticker.currency.as_str()), (2.0, "EUR"));
    assert_eq!(page.items[5].upstream_targets, vec!["t"]);
    assert_eq!(page.items[6].ext.target_user.as_deref(), Some("UCb"));
    let ended = include_str!("../../shared/testkit/fixtures/youtube/get_live_chat_ended.json");
    assert_eq!(parse_chat(ended.as_bytes()).unwrap().next, None);
}

/// Postgres can hold no U+0000: an upstream page that carries it (as `\u0000`) must not reach
/// a commit (it would fail the whole group of rooms); it is read as U+FFFD.
#[test]
fn nul_from_youtube_is_scrubbed_where_the_page_is_parsed() {
    let action = FakeYoutube::action(
        ActionKind::TextWithEmoji,
        "t",
        "A\\u0000na",
        "UC\\u0000a",
        "",
    );
    let body = include_str!("../../shared/testkit/fixtures/youtube/get_live_chat.json")
        .replace("__VIDEO__", "tky5A2gLuZo")
        .replace("__TIMEOUT__", "5321")
        .replace("__CONTINUATION__", "next\\u0000token")
        .replace(
            "__ACTIONS__",
            &serde_json::Value::Array(vec![action]).to_string(),
        );
    assert!(body.contains("\\u0000"), "the fixture carries the escape");
    let page = parse_chat(body.as_bytes()).unwrap();
    let author = page.items[0].ext.author.clone().unwrap();
    assert_eq!(
        (author.name.as_str(), author.id.as_str()),
        ("A\u{FFFD}na", "UC\u{FFFD}a")
    );
    assert_eq!(page.next, Some(("next\u{FFFD}token".to_owned(), 5321)));
}

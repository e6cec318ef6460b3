//! Size bounds on command fields, enforced by the gateway before the bus. Its own test
//! binary: it reads the process-wide `/metrics`, which other tests would also count into.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::json;

/// Commands whose fields are over their size bounds are answered by the gateway itself: a
/// frame of up to `gateway.max_frame_bytes` never becomes a 60 KiB command on the bus or in
/// a room's mailbox.
#[tokio::test]
async fn oversized_fields_are_refused_at_the_gateway() {
    let (_d, mut node) = node("bounds").await;
    let (mut a, _token, room) = node.owner("Owner").await;
    let long = "x".repeat(60 * 1024);
    let cases = [
        (
            json!({"type": "chat.send", "room": room, "text": long}),
            "bad_request",
        ),
        (
            json!({"type": "queue.add", "room": room, "url": format!("https://youtu.be/{long}")}),
            "bad_request",
        ),
        (
            json!({"type": "queue.add", "room": room, "url": "https://youtu.be/dQw4w9WgXcQ", "title": long}),
            "bad_request",
        ),
        (
            json!({"type": "room.settings", "room": room, "name": long}),
            "bad_request",
        ),
        (
            json!({"type": "room.role", "room": room, "user_id": long, "role": "operator"}),
            "bad_request",
        ),
        (
            json!({"type": "room.sources", "room": room, "remove": long}),
            "not_found",
        ),
        (
            json!({"type": "signal.send", "room": room, "to": long, "payload": {}}),
            "bad_request",
        ),
    ];
    for (cmd, want) in cases {
        let kind = cmd["type"].as_str().unwrap_or_default().to_owned();
        let reply = a.call(cmd).await;
        assert_eq!(reply["code"], want, "{kind}: {reply}");
    }
    // The gateway counted them as refused, not forwarded; the connection and room carry on.
    let (_, body) = http(node.addr, "GET", "/metrics", None, None).await;
    let metrics = body["raw"].as_str().unwrap_or_default().to_owned();
    for (kind, outcome, n) in [
        ("chat.send", "bad_request", 1.0),
        ("queue.add", "bad_request", 2.0),
        ("room.role", "bad_request", 1.0),
        ("room.sources", "not_found", 1.0),
    ] {
        assert_eq!(
            commands_counted(&metrics, kind, outcome),
            n,
            "{kind} {outcome}"
        );
        assert_eq!(commands_counted(&metrics, kind, "forwarded"), 0.0, "{kind}");
    }
    a.ok(json!({"type": "chat.send", "room": room, "text": "still here"}))
        .await;
    node.stop().await;
}

/// `lockstep_gateway_commands_total` for one command type and outcome (0 when absent).
fn commands_counted(metrics: &str, kind: &str, outcome: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("lockstep_gateway_commands_total{"))
        .filter(|l| l.contains(&format!("type=\"{kind}\"")))
        .filter(|l| l.contains(&format!("outcome=\"{outcome}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

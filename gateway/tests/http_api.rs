//! Auth and the REST API against a real node over real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use figment::providers::Serialized;
use serde_json::json;

#[tokio::test]
async fn websocket_upgrade_is_refused_before_the_handshake() {
    let dir = TempDir::new("auth");
    let mut node = start(&dir.0, |f| {
        f.merge(Serialized::default(
            "gateway.allowed_origins",
            vec!["https://watch.example"],
        ))
    })
    .await;
    let (token, _) = node.guest("Ann").await;
    let bearer = format!("Bearer {token}");
    assert_eq!(
        upgrade_status(node.addr, "/v1/ws", &[]).await,
        401,
        "no token"
    );
    assert_eq!(
        upgrade_status(
            node.addr,
            "/v1/ws",
            &[("Authorization", "Bearer not-a-jwt")]
        )
        .await,
        401
    );
    let wrong = lockstep_gateway::auth::Auth::new(b"some-other-secret-xxxxxxxx")
        .issue(&lockstep_gateway::auth::Claims {
            sub: "u".into(),
            name: "U".into(),
            exp: u64::MAX / 2,
        })
        .unwrap();
    assert_eq!(
        upgrade_status(node.addr, &format!("/v1/ws?token={wrong}"), &[]).await,
        401,
        "wrong secret"
    );
    assert_eq!(
        upgrade_status(
            node.addr,
            "/v1/ws",
            &[
                ("Authorization", &bearer),
                ("Origin", "https://evil.example")
            ]
        )
        .await,
        403
    );
    assert_eq!(
        upgrade_status(
            node.addr,
            "/v1/ws",
            &[
                ("Authorization", &bearer),
                ("Origin", "https://watch.example")
            ]
        )
        .await,
        101
    );
    assert_eq!(
        upgrade_status(node.addr, &format!("/v1/ws?token={token}"), &[]).await,
        101,
        "query token"
    );
    node.stop().await;
}

#[tokio::test]
async fn rest_api_rooms_chat_history_and_audit() {
    let dir = TempDir::new("rest");
    let mut node = start(&dir.0, |f| {
        f.merge(Serialized::default("room.chat_rate", 1000.0))
            .merge(Serialized::default("room.chat_burst", 1000.0))
    })
    .await;
    let (owner_token, owner) = node.guest("Owner").await;
    let (status, body) = http(node.addr, "POST", "/v1/rooms", None, None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let room = node.create_room(&owner_token).await;
    let mut c = node.connect(&owner_token).await;
    c.join(&room, None).await;
    for i in 0..7 {
        c.ok(json!({"type": "chat.send", "room": room, "text": format!("m{i}")}))
            .await;
    }
    c.ok(json!({"type": "queue.add", "room": room, "url": "https://youtu.be/dQw4w9WgXcQ"}))
        .await;

    let (status, snap) = room_body(node.addr, &owner_token, &room).await;
    assert_eq!(status, 200);
    assert!(snap["seq"].as_u64().unwrap() >= 9);
    assert!(snap.get("chat").is_none(), "room body has no chat");
    assert_eq!(snap["members"][0]["user_id"], owner.as_str());
    assert_eq!(snap["player"]["entry"]["video_id"], "dQw4w9WgXcQ");

    let (status, page) = http(
        node.addr,
        "GET",
        &format!("/v1/rooms/{room}/chat?limit=3"),
        Some(&owner_token),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let texts: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, vec!["m6", "m5", "m4"], "newest first");
    let before = page["next_before"].as_u64().unwrap();
    let (_, page2) = http(
        node.addr,
        "GET",
        &format!("/v1/rooms/{room}/chat?limit=3&before={before}"),
        Some(&owner_token),
        None,
    )
    .await;
    assert_eq!(page2["messages"][0]["text"], "m3");
    let (_, all) = http(
        node.addr,
        "GET",
        &format!("/v1/rooms/{room}/chat"),
        Some(&owner_token),
        None,
    )
    .await;
    assert_eq!(all["messages"].as_array().unwrap().len(), 7);
    assert!(all["next_before"].is_null());
    let (status, _) = http(
        node.addr,
        "GET",
        &format!("/v1/rooms/{room}/chat?limit=500"),
        Some(&owner_token),
        None,
    )
    .await;
    assert_eq!(status, 400);

    let actions = audit_actions(node.addr, &owner_token, &room).await;
    assert!(
        actions.iter().any(|a| a == "room.create") && actions.iter().any(|a| a == "queue.add"),
        "{actions:?}"
    );
    let (other_token, _) = node.guest("Other").await;
    let (status, body) = http(
        node.addr,
        "GET",
        &format!("/v1/rooms/{room}/audit"),
        Some(&other_token),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );

    let (status, body) = http(
        node.addr,
        "GET",
        "/v1/rooms/doesnotexist",
        Some(&owner_token),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, _) = http(
        node.addr,
        "GET",
        "/v1/rooms/bad%20code",
        Some(&owner_token),
        None,
    )
    .await;
    assert_eq!(status, 400);
    let (status, body) = http(
        node.addr,
        "POST",
        "/v1/auth/guest",
        None,
        Some(&json!({"name": ""})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    let (status, body) = http(
        node.addr,
        "POST",
        "/v1/auth/guest",
        None,
        Some(&json!({"name": "A\u{0}"})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (400, Some("text must not contain U+0000 (NUL)"))
    );
    let (status, _) = http(node.addr, "GET", "/nope", None, None).await;
    assert_eq!(status, 404);
    node.stop().await;
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let dir = TempDir::new("health");
    let mut node = start(&dir.0, |f| f).await;
    assert_eq!(http(node.addr, "GET", "/healthz", None, None).await.0, 200);
    assert_eq!(http(node.addr, "GET", "/readyz", None, None).await.0, 200);
    let (mut c, _token, room) = node.owner("M").await;
    c.ok(json!({"type": "chat.send", "room": room, "text": "hi"}))
        .await;
    let (_, body) = http(node.addr, "GET", "/metrics", None, None).await;
    let text = body["raw"].as_str().unwrap().to_owned();
    for name in [
        "lockstep_gateway_connections",
        "lockstep_gateway_commands_total",
        "lockstep_gateway_command_latency_seconds_bucket",
        "lockstep_gateway_event_delivery_seconds_bucket",
        "lockstep_gateway_outbound_queue_depth_frames_bucket",
        "lockstep_store_commit_seconds_bucket",
        "lockstep_worker_rooms_active",
    ] {
        assert!(text.contains(name), "missing {name} in /metrics");
    }
    node.stop().await;
}

#[tokio::test]
async fn guest_sign_in_can_be_turned_off() {
    let dir = TempDir::new("noguest");
    let mut node = start(&dir.0, |f| {
        f.merge(Serialized::default("auth.guest_enabled", false))
    })
    .await;
    let (status, body) = http(
        node.addr,
        "POST",
        "/v1/auth/guest",
        None,
        Some(&json!({"name": "A"})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    // A token minted by another service with the shared secret still works.
    let token = lockstep_gateway::auth::Auth::new(SECRET.as_bytes())
        .issue(&lockstep_gateway::auth::Claims {
            sub: "svc-user".into(),
            name: "Svc".into(),
            exp: u64::MAX / 2,
        })
        .unwrap();
    assert_eq!(
        http(node.addr, "POST", "/v1/rooms", Some(&token), None)
            .await
            .0,
        201
    );
    node.stop().await;
}

#[tokio::test]
async fn connection_attempts_per_ip_are_limited() {
    let dir = TempDir::new("iplimit");
    let mut node = start(&dir.0, |f| {
        f.merge(Serialized::default("gateway.connect_burst_per_ip", 5.0))
            .merge(Serialized::default("gateway.connect_rate_per_ip", 0.01))
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(http(node.addr, "GET", "/healthz", None, None).await.0);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    let (status, body) = http(node.addr, "GET", "/healthz", None, None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("rate_limited"))
    );
    node.stop().await;
}

#[tokio::test]
async fn loaded_rooms_are_bounded_and_unload_when_idle() {
    let dir = TempDir::new("maxrooms");
    let mut node = start(&dir.0, |f| {
        f.merge(Serialized::default("room.max_loaded", 2))
            .merge(Serialized::default("room.idle_unload_ms", 300))
    })
    .await;
    let (token, _) = node.guest("Owner").await;
    let first = node.create_room(&token).await;
    node.create_room(&token).await;
    let (status, body) = http(node.addr, "POST", "/v1/rooms", Some(&token), None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("unavailable"))
    );
    // Empty rooms leave memory after idle_unload_ms; then there is room again, and an
    // unloaded room loads back from the store on demand.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, _) = http(node.addr, "POST", "/v1/rooms", Some(&token), None).await;
        if status == 201 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "rooms never unloaded");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, snap) = http(
            node.addr,
            "GET",
            &format!("/v1/rooms/{first}"),
            Some(&token),
            None,
        )
        .await;
        if status == 200 {
            assert_eq!(snap["room"], first.as_str());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "first room never reloaded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    node.stop().await;
}

//! The real `lockstep` binary as an operator runs it: config checking, SIGTERM, `kill -9`,
//! and a restart of the process that keeps every acknowledged change.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

fn spawn(dir: &std::path::Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .current_dir(dir)
        .env("LOCKSTEP_GATEWAY__LISTEN", format!("127.0.0.1:{port}"))
        .env("LOCKSTEP_ROOM__CHAT_BURST", "1000")
        .env("LOCKSTEP_ROOM__CHAT_RATE", "1000")
        .env("LOCKSTEP_INGEST__METADATA__ENABLED", "false")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary starts")
}

async fn ready_at(port: u16) -> std::net::SocketAddr {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    wait_ready(addr, "lockstep").await;
    addr
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

#[test]
fn check_config_reports_every_problem_and_accepts_good_config() {
    let out = Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .arg("--check-config")
        .env("LOCKSTEP_GATEWAY__LISTEN", "not-an-address")
        .env("LOCKSTEP_GATEWAY__OUTBOUND_QUEUE", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gateway.listen") && err.contains("gateway.outbound_queue"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .arg("--check-config")
        .env("LOCKSTEP_ROOM__QUEUE_MAX", "42")
        .output()
        .unwrap();
    assert!(out.status.success());
    let cfg: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cfg["room"]["queue_max"], 42);
}

#[tokio::test]
async fn kill_9_and_restart_lose_no_acknowledged_change() {
    let dir = TempDir::new("proc");
    let port = free_port();
    let mut child = spawn(&dir.0, port);
    let addr = ready_at(port).await;
    let (status, body) = http(
        addr,
        "POST",
        "/v1/auth/guest",
        None,
        Some(&json!({"name": "Ann"})),
    )
    .await;
    assert_eq!(status, 200);
    let token = body["token"].as_str().unwrap().to_owned();
    let (_, body) = http(addr, "POST", "/v1/rooms", Some(&token), None).await;
    let room = body["code"].as_str().unwrap().to_owned();
    let mut c = Client::connect(addr, &token).await;
    c.join(&room, None).await;
    c.ok(json!({"type": "queue.add", "room": room, "url": "https://youtu.be/dQw4w9WgXcQ"}))
        .await;
    for i in 0..50 {
        c.ok(json!({"type": "chat.send", "room": room, "text": format!("acked {i}")}))
            .await;
    }
    // Crash hard: every acked message must still be there.
    signal(&child, "-9");
    child.wait().unwrap();
    drop(c);

    let mut child = spawn(&dir.0, port);
    let addr = ready_at(port).await;
    let (status, page) = http(
        addr,
        "GET",
        &format!("/v1/rooms/{room}/chat?limit=200"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(
        status, 200,
        "the generated secret survived, so the old token still works"
    );
    assert_eq!(page["messages"].as_array().unwrap().len(), 50);
    assert_eq!(page["messages"][0]["text"], "acked 49");
    let (_, snap) = room_body(addr, &token, &room).await;
    assert_eq!(snap["player"]["entry"]["video_id"], "dQw4w9WgXcQ");

    // SIGTERM: connected clients are told, then the process exits cleanly.
    let mut c = Client::connect(addr, &token).await;
    c.join(&room, None).await;
    signal(&child, "-TERM");
    c.event("server.draining").await;
    assert_eq!(c.closed().await, Ended::Close(1001));
    let status = exit_within(&mut child, Duration::from_secs(15))
        .await
        .expect("did not exit within the grace period");
    assert!(status.success(), "clean exit after SIGTERM: {status}");
}

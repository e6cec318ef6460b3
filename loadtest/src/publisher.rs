//! Open-loop publishing: message `k` of a room is due at `start + k / rate`, sent then
//! whatever the server did with earlier ones (late sends go out at once, in order).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::SinkExt;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{histogram, ClientHandle};
use crate::{Clock, Live, Scenario};

/// What the publishers did.
pub struct Published {
    /// Per room: messages whose intended time fell in the window.
    pub measured: Vec<u64>,
    /// Actual − intended send time, µs.
    pub send_lag: Histogram<u64>,
    pub send_failures: u64,
}

impl Published {
    /// Nothing published (the `idle` scenario).
    pub fn none(rooms: usize) -> Published {
        Published {
            measured: vec![0; rooms],
            send_lag: histogram(),
            send_failures: 0,
        }
    }
}

pub async fn run_all(
    scn: &Scenario,
    codes: &[String],
    clients: &[ClientHandle],
    clock: Clock,
    start_us: u64,
    window: (u64, u64),
    live: Arc<Live>,
) -> Published {
    let mut tasks = Vec::new();
    for (room, code) in codes.iter().enumerate().take(scn.rooms) {
        let members: Vec<_> = clients
            .iter()
            .filter(|c| c.room == room)
            .take(scn.publishers)
            .map(|c| c.sink.clone())
            .collect();
        if members.is_empty() {
            continue;
        }
        let (rate, size, live) = (scn.rate, scn.size, live.clone());
        let code = code.clone();
        // Rooms start at different phases so sends do not line up.
        let phase = (room as u64 * 7_919) % (1_000_000.0 / rate).max(1.0) as u64;
        tasks.push(tokio::spawn(async move {
            let mut lag = histogram();
            let (mut measured, mut failures) = (0u64, 0u64);
            for k in 0u64.. {
                let due = start_us + phase + (k as f64 * 1e6 / rate) as u64;
                if due >= window.1 {
                    break;
                }
                tokio::time::sleep_until(clock.at_us(due)).await;
                let now = clock.now_us();
                let _ = lag.record(now.saturating_sub(due).max(1));
                let mut body = json!({"r": room, "k": k, "t": due, "w0": window.0, "w1": window.1, "p": ""});
                let pad = size.saturating_sub(body.to_string().len());
                body["p"] = json!("x".repeat(pad));
                let cmd = json!({"id": format!("{k}-{now}"), "type": "chat.send", "room": code, "text": body.to_string()});
                let sink = &members[k as usize % members.len()];
                let frame = cmd.to_string();
                let ok = sink.lock().await.send(Message::text(frame)).await.is_ok();
                if !ok {
                    failures += 1;
                }
                live.sent.fetch_add(1, Ordering::Relaxed);
                if (window.0..window.1).contains(&due) {
                    measured += 1;
                }
            }
            (room, measured, lag, failures)
        }));
    }
    let mut published = Published {
        measured: vec![0; scn.rooms],
        send_lag: histogram(),
        send_failures: 0,
    };
    for t in tasks {
        if let Ok((room, measured, lag, failures)) = t.await {
            published.measured[room] = measured;
            let _ = published.send_lag.add(&lag);
            published.send_failures += failures;
        }
    }
    published
}

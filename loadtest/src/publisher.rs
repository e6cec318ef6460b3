//! Open-loop publishing: message `k` of a room is due at `start + k / rate`, sent then
//! whatever the server did with earlier ones (late sends go out at once, in order). The mix
//! decides what each send is; chat carries the timing payload, player and queue commands go
//! through the room's owner.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::client::{ClientHandle, Payload, SharedSink};
use crate::figures::histogram;
use crate::mix::Kind;
use crate::{Clock, Live, Scenario};

/// What the publishers did.
pub struct Published {
    /// Per room: chat messages sent whose intended time fell in the window.
    pub measured: Vec<u64>,
    /// Actual − intended send time, µs.
    pub send_lag: Histogram<u64>,
    pub send_failures: u64,
    /// Commands other than chat sent, by kind.
    pub commands: std::collections::BTreeMap<String, u64>,
}

impl Published {
    /// Deliveries due: each room's measured messages times its members.
    pub fn expected(&self, members: &[u64]) -> u64 {
        self.measured.iter().zip(members).map(|(m, n)| m * n).sum()
    }

    /// Nothing published (the `idle` scenario).
    pub fn none(rooms: usize) -> Published {
        Published {
            measured: vec![0; rooms],
            send_lag: histogram(),
            send_failures: 0,
            commands: Default::default(),
        }
    }
}

/// One publishing window: rate, step number (ramp) and times (µs on the run clock).
#[derive(Clone, Copy)]
pub struct Window {
    pub rate: f64,
    pub step: usize,
    pub start_us: u64,
    pub measure: (u64, u64),
}

impl Window {
    /// Publishing from `start_us`: `warmup` seconds, then the `duration`-second measured window.
    pub fn new(scn: &Scenario, rate: f64, step: usize, start_us: u64) -> Window {
        Window {
            rate,
            step,
            start_us,
            measure: (
                start_us + (scn.warmup * 1e6) as u64,
                start_us + ((scn.warmup + scn.duration) * 1e6) as u64,
            ),
        }
    }
}

pub async fn run_all(
    scn: &Scenario,
    codes: &[String],
    clients: &[ClientHandle],
    clock: Clock,
    w: Window,
    live: Arc<Live>,
) -> Published {
    let mut tasks = Vec::new();
    for (room, code) in codes.iter().enumerate().take(scn.rooms) {
        let members: Vec<SharedSink> = clients
            .iter()
            .filter(|c| c.room == room)
            .take(scn.publishers)
            .map(|c| c.sink.clone())
            .collect();
        if members.is_empty() {
            continue;
        }
        let (size, live, mix) = (scn.size, live.clone(), scn.mix.clone());
        let code = code.clone();
        // Rooms start at different phases so sends do not line up.
        let phase = (room as u64 * 7_919) % (1_000_000.0 / w.rate).max(1.0) as u64;
        tasks.push(tokio::spawn(async move {
            let mut lag = histogram();
            let (mut measured, mut failures) = (0u64, 0u64);
            let mut commands = std::collections::BTreeMap::new();
            let mut ready = false;
            for k in 0u64.. {
                let due = w.start_us + phase + (k as f64 * 1e6 / w.rate) as u64;
                if due >= w.measure.1 {
                    break;
                }
                tokio::time::sleep_until(clock.at_us(due)).await;
                let now = clock.now_us();
                let _ = lag.record(now.saturating_sub(due).max(1));
                let kind = mix.pick(k);
                // `kind-<sent µs>-<due µs>-<step>-<k>`: acks give latency and which messages
                // were acknowledged, errors tell which window.
                let id = format!("{}-{now}-{due}-{}-{k}", kind_tag(kind), w.step);
                let (cmd, sink) = match kind {
                    Kind::Chat => {
                        let body = Payload {
                            k,
                            t: due,
                            w0: w.measure.0,
                            w1: w.measure.1,
                            s: w.step,
                        };
                        let cmd = json!({"id": id, "type": "chat.send", "room": code, "text": body.text(size)});
                        (cmd, &members[k as usize % members.len()])
                    }
                    Kind::Ready => {
                        ready = !ready;
                        let cmd = json!({"id": id, "type": "user.ready", "room": code, "ready": ready});
                        (cmd, &members[k as usize % members.len()])
                    }
                    other => (control(other, &id, &code, k), &members[0]),
                };
                if kind != Kind::Chat {
                    *commands.entry(kind_tag(kind).to_owned()).or_insert(0) += 1;
                }
                let ok = match sink.lock().await.as_mut() {
                    Some(s) => s.send_text(&cmd.to_string()).await.is_ok(),
                    None => false,
                };
                if !ok {
                    failures += 1;
                }
                live.sent.fetch_add(1, Ordering::Relaxed);
                // A message that never left (the sender was reconnecting) is a send failure,
                // not a loss: only sent messages are expected at the members.
                if ok && kind == Kind::Chat && (w.measure.0..w.measure.1).contains(&due) {
                    measured += 1;
                }
            }
            (room, measured, lag, failures, commands)
        }));
    }
    let mut published = Published::none(scn.rooms);
    for t in tasks {
        if let Ok((room, measured, lag, failures, commands)) = t.await {
            published.measured[room] = measured;
            let _ = published.send_lag.add(&lag);
            published.send_failures += failures;
            for (k, n) in commands {
                *published.commands.entry(k).or_insert(0) += n;
            }
        }
    }
    published
}

fn kind_tag(kind: Kind) -> &'static str {
    match kind {
        Kind::Chat => "chat",
        Kind::Seek => "seek",
        Kind::Play => "play",
        Kind::Pause => "pause",
        Kind::Queue => "queue",
        Kind::Ready => "ready",
    }
}

/// Player and queue commands (sent by the room's owner, who may control).
fn control(kind: Kind, id: &str, code: &str, k: u64) -> Value {
    match kind {
        Kind::Seek => json!({"id": id, "type": "player.seek", "room": code,
            "position_ms": (k * 7_919) % 600_000}),
        Kind::Play => json!({"id": id, "type": "player.play", "room": code}),
        Kind::Pause => json!({"id": id, "type": "player.pause", "room": code}),
        _ => json!({"id": id, "type": "queue.add", "room": code,
            "url": format!("https://youtu.be/lt{:09}", k % 1_000_000_000)}),
    }
}

//! One client connection: joins its room, then records every chat message (latency from the
//! message's intended send time), acks, `seq` order, and how the socket ended.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::setup::Plan;
use crate::{Clock, Live, Scenario};

type Sink = SplitSink<WebSocketStream<TcpStream>, Message>;

/// A connected client.
pub struct ClientHandle {
    pub room: usize,
    pub sink: Arc<Mutex<Sink>>,
    task: JoinHandle<ClientResult>,
}

/// What one client saw.
pub struct ClientResult {
    pub room: usize,
    /// Intended send → received, µs, for messages in the measured window.
    pub latency: Histogram<u64>,
    /// Actual send → ack, µs (publishers only).
    pub ack: Histogram<u64>,
    pub connect_us: u64,
    /// Message numbers (`k`) received whose intended time fell in the window.
    pub measured: HashSet<u64>,
    pub duplicates: u64,
    pub reordered: u64,
    pub errors: u64,
    pub rate_limited: u64,
    /// The close code if the server closed the socket during the run.
    pub closed_with: Option<u16>,
}

/// A histogram for microsecond latencies up to 60 s, 3 significant figures.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable_hist()))
}

fn unreachable_hist() -> Histogram<u64> {
    // Histogram::new(3) cannot fail for sigfig 3; this keeps the type checker content.
    Histogram::new_with_max(u64::MAX / 2, 2)
        .unwrap_or_else(|_| panic!("hdrhistogram refused sigfig 2"))
}

/// The fields of a server frame the generator reads; everything else is skipped unparsed.
#[derive(serde::Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    seq: Option<u64>,
    #[serde(borrow)]
    text: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<Id<'a>>,
    #[serde(borrow)]
    code: Option<&'a str>,
}

/// Replies carry the command's string id; chat messages a numeric message id.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Id<'a> {
    Text(&'a str),
    Number(#[allow(dead_code)] u64),
}

/// What publishers put in the chat text.
#[derive(serde::Deserialize)]
struct Payload {
    k: u64,
    t: u64,
    w0: u64,
    w1: u64,
}

/// Opens every client at `connect_rate`; failures are counted, not fatal.
pub async fn connect_all(
    scn: &Scenario,
    plan: &Plan,
    clock: Clock,
    live: Arc<Live>,
) -> anyhow::Result<Vec<ClientHandle>> {
    let total = plan.tokens.len();
    let started = tokio::time::Instant::now();
    let mut pending = Vec::with_capacity(total);
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / scn.connect_rate);
        tokio::time::sleep_until(due).await;
        let room = i / scn.clients;
        let addr = plan.addrs[i % plan.addrs.len()];
        let source = IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            1 + (i % scn.source_addrs as usize) as u8,
        ));
        let token = plan.tokens[i].clone();
        let code = plan.rooms[room].clone();
        let live = live.clone();
        pending.push(tokio::spawn(async move {
            connect(addr, source, &token, room, &code, clock, live).await
        }));
    }
    let mut clients = Vec::with_capacity(total);
    let mut failures = 0;
    for p in pending {
        match p.await {
            Ok(Ok(c)) => clients.push(c),
            Ok(Err(e)) => {
                failures += 1;
                if failures <= 3 {
                    eprintln!("connect failed: {e:#}");
                }
            }
            Err(e) => eprintln!("connect task failed: {e}"),
        }
    }
    anyhow::ensure!(!clients.is_empty(), "no client could connect");
    if failures > 0 {
        eprintln!("{failures} of {total} connections failed");
    }
    Ok(clients)
}

async fn connect(
    addr: SocketAddr,
    source: IpAddr,
    token: &str,
    room: usize,
    code: &str,
    clock: Clock,
    live: Arc<Live>,
) -> anyhow::Result<ClientHandle> {
    let t0 = clock.now_us();
    let socket = TcpSocket::new_v4()?;
    socket
        .bind(SocketAddr::new(source, 0))
        .with_context(|| format!("bind {source}"))?;
    let stream = socket
        .connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    let url = format!("ws://{addr}/v1/ws?token={token}");
    let (ws, _) = tokio_tungstenite::client_async(url, stream).await?;
    let (mut sink, mut stream) = ws.split();
    sink.send(Message::text(
        json!({"id": "join", "type": "room.join", "room": code}).to_string(),
    ))
    .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let msg = tokio::time::timeout_at(deadline, stream.next())
            .await
            .context("join timed out")?
            .context("closed before the join ack")??;
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
            if v["id"] == "join" {
                anyhow::ensure!(v["type"] == "ack", "join refused: {v}");
                break;
            }
        }
    }
    let connect_us = clock.now_us() - t0;
    let task = tokio::spawn(read(stream, room, connect_us, clock, live));
    Ok(ClientHandle {
        room,
        sink: Arc::new(Mutex::new(sink)),
        task,
    })
}

async fn read(
    mut stream: futures_util::stream::SplitStream<WebSocketStream<TcpStream>>,
    room: usize,
    connect_us: u64,
    clock: Clock,
    live: Arc<Live>,
) -> ClientResult {
    let mut r = ClientResult {
        room,
        latency: histogram(),
        ack: histogram(),
        connect_us,
        measured: HashSet::new(),
        duplicates: 0,
        reordered: 0,
        errors: 0,
        rate_limited: 0,
        closed_with: None,
    };
    let mut last_seq = 0u64;
    let mut seen: HashSet<u64> = HashSet::new();
    let mut stop_check = tokio::time::interval(Duration::from_millis(100));
    loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            _ = stop_check.tick() => {
                if live.stop.load(Ordering::SeqCst) { break } else { continue }
            }
        };
        let Some(Ok(msg)) = msg else {
            r.closed_with.get_or_insert(1006);
            break;
        };
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(frame) => {
                r.closed_with = Some(frame.map(|f| u16::from(f.code)).unwrap_or(1005));
                break;
            }
            _ => continue,
        };
        let now = clock.now_us();
        let Ok(f) = serde_json::from_str::<Incoming<'_>>(text.as_str()) else {
            continue;
        };
        match f.kind {
            "chat.message" => {
                live.deliveries.fetch_add(1, Ordering::Relaxed);
                let seq = f.seq.unwrap_or(0);
                if seq <= last_seq {
                    r.reordered += 1;
                }
                last_seq = last_seq.max(seq);
                let Some(body) = f
                    .text
                    .and_then(|t| serde_json::from_str::<Payload>(&t).ok())
                else {
                    continue;
                };
                if !seen.insert(body.k) {
                    r.duplicates += 1;
                    continue;
                }
                if (body.w0..body.w1).contains(&body.t) {
                    r.measured.insert(body.k);
                    let _ = r.latency.record(now.saturating_sub(body.t).max(1));
                }
            }
            "ack" => {
                let sent = match f.id {
                    Some(Id::Text(id)) => id.split('-').nth(1).and_then(|s| s.parse::<u64>().ok()),
                    _ => None,
                };
                if let Some(sent) = sent {
                    let _ = r.ack.record(now.saturating_sub(sent).max(1));
                }
            }
            "error" => {
                live.errors.fetch_add(1, Ordering::Relaxed);
                if f.code == Some("rate_limited") {
                    r.rate_limited += 1;
                } else {
                    r.errors += 1;
                }
            }
            _ => {}
        }
    }
    r
}

/// Stops reading and collects every client's result.
pub async fn finish_all(clients: Vec<ClientHandle>) -> Vec<ClientResult> {
    let mut out = Vec::with_capacity(clients.len());
    for c in clients {
        if let Ok(r) = c.task.await {
            out.push(r);
        }
        let mut sink = c.sink.lock().await;
        let _ = sink.close().await;
    }
    out
}

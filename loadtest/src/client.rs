//! One client connection: optional `time.sync`, join, then it records every chat message
//! (latency from the message's intended send time), acks, `seq` order, `player.state`
//! events (for sync error) and how the socket ended. With reconnects on (storm, failover)
//! it rejoins with `since_seq` after a jittered backoff and records whether the server
//! recovered it by replay.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use tokio::net::TcpSocket;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::buckets::LogBuckets;
use crate::seen::{self, Seen};
use crate::setup::Plan;
use crate::sync::{PlayerObs, OBS_MAX};
use crate::ws::{self, Frame, Reader as Stream, Writer as Sink};
use crate::{wall_us, Clock, Live, Phase, Scenario};

/// Clients that keep a per-second latency timeline (for the HTML report).
const TIMELINE_CLIENTS: usize = 256;
/// Longest timeline kept, seconds.
const TIMELINE_MAX: usize = 3_600;
/// Most ramp steps tracked.
pub const STEPS_MAX: usize = 32;
/// Joins tried before giving up when the room answers `unavailable`.
const JOIN_ATTEMPTS: u32 = 30;
/// `time.sync` round trips per client; the one with the smallest RTT wins (NTP-style).
const SYNC_SAMPLES: usize = 5;

/// The socket a publisher writes to; `None` while the client is reconnecting.
pub type SharedSink = Arc<Mutex<Option<Sink>>>;

/// A connected client.
pub struct ClientHandle {
    pub room: usize,
    pub sink: SharedSink,
    pub stats: Arc<std::sync::Mutex<Progress>>,
    task: JoinHandle<ClientResult>,
}

/// Figures read while the run goes on (ramp steps, timeline); one lock per client.
#[derive(Default)]
pub struct Progress {
    /// Per ramp step: measured deliveries and their latency.
    pub steps: Vec<(u64, LogBuckets)>,
    /// Per second of intended send time: latency (sampled clients only).
    pub timeline: Vec<LogBuckets>,
}

/// What one client saw. Its latencies go to the run's shared histograms
/// ([`crate::figures::SharedFigures`]), not here: per-client histograms cost ~400 KiB each.
#[derive(Default)]
pub struct ClientResult {
    pub room: usize,
    pub connect_us: u64,
    /// Distinct messages received whose intended time fell in the window.
    pub measured: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub errors: u64,
    pub rate_limited: u64,
    /// Chat messages this client sent that the server refused (e.g. `unavailable` while a
    /// room has no owner): not delivered, and not lost either.
    pub rejected_chat: u64,
    /// Chat messages (step and number) this client sent that the server acknowledged, with
    /// their intended time in the window: each must reach every member.
    pub acked: Vec<u64>,
    /// Close codes of every socket the server closed (or 1006 when it just dropped).
    pub closes: Vec<u16>,
    /// Rejoins after a drop: recovered by replay, or given a snapshot.
    pub reconnects: u64,
    pub recovered: u64,
    pub snapshots: u64,
    /// Storm: µs after the storm began when this client was back (None: never).
    pub storm_back_us: Option<u64>,
    pub storm_recovered: bool,
    /// Longest time between two measured chat deliveries, µs.
    pub max_gap_us: u64,
    pub player: Vec<PlayerObs>,
    pub offset_ms: f64,
}

/// The fields of a server frame the generator reads; everything else is skipped unparsed.
#[derive(serde::Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    seq: Option<u64>,
    ts: Option<u64>,
    #[serde(borrow)]
    text: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<Id<'a>>,
    #[serde(borrow)]
    code: Option<&'a str>,
    // player.state
    #[serde(borrow)]
    state: Option<&'a str>,
    at: Option<u64>,
    position_ms: Option<f64>,
    rate: Option<f64>,
}

/// Replies carry the command's string id; chat messages a numeric message id (`Other`).
/// Hand-written: serde's untagged enum buffers the value and builds an error per miss, a
/// visible share of the generator's CPU on every delivery.
enum Id<'a> {
    Text(&'a str),
    Other,
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Id<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Id<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Id<'a>, E> {
                Ok(Id::Text(v))
            }
            fn visit_str<E>(self, _: &str) -> Result<Id<'a>, E> {
                Ok(Id::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Id<'a>, E> {
                Ok(Id::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Id<'a>, E> {
                Ok(Id::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Id<'a>, E> {
                Ok(Id::Other)
            }
        }
        d.deserialize_any(Visit(std::marker::PhantomData))
    }
}

/// What publishers put in the chat text: `lt <k> <t> <w0> <w1> <step> <padding>`. Plain
/// words, so the server's frame carries it unescaped and the reader borrows it instead of
/// unescaping and parsing a second JSON document per delivery.
pub struct Payload {
    pub k: u64,
    pub t: u64,
    pub w0: u64,
    pub w1: u64,
    pub s: usize,
}

impl Payload {
    /// The chat text, padded with `x` to `size` bytes.
    pub fn text(&self, size: usize) -> String {
        let mut t = format!(
            "lt {} {} {} {} {} ",
            self.k, self.t, self.w0, self.w1, self.s
        );
        let pad = size.saturating_sub(t.len()).max(1);
        t.extend(std::iter::repeat_n('x', pad));
        t
    }

    pub fn parse(text: &str) -> Option<Payload> {
        let mut w = text.split_ascii_whitespace();
        if w.next()? != "lt" {
            return None;
        }
        let mut n = || w.next().and_then(|v| v.parse::<u64>().ok());
        Some(Payload {
            k: n()?,
            t: n()?,
            w0: n()?,
            w1: n()?,
            s: n()? as usize,
        })
    }
}

/// How clients behave, from the scenario.
#[derive(Clone)]
struct Opts {
    reconnect: bool,
    storm_jitter_ms: u64,
    time_sync: bool,
    setup_player: bool,
}

/// Everything one client needs to (re)connect.
#[derive(Clone)]
struct Ctx {
    index: usize,
    room: usize,
    code: String,
    addrs: Vec<SocketAddr>,
    /// Set for `https://` gateways.
    tls: Option<Arc<crate::tls::Tls>>,
    source: IpAddr,
    token: String,
    clock: Clock,
    live: Arc<Live>,
    opts: Opts,
}

/// Opens every client at `connect_rate` (a ramp of connections); failures are counted.
pub async fn connect_all(
    scn: &Scenario,
    plan: &Plan,
    clock: Clock,
    live: Arc<Live>,
) -> anyhow::Result<Vec<ClientHandle>> {
    let total = plan.tokens.len();
    let started = tokio::time::Instant::now();
    let opts = Opts {
        reconnect: scn.reconnect,
        storm_jitter_ms: scn.storm_jitter_ms,
        time_sync: scn.mix.moves_clock(),
        setup_player: scn.mix.moves_clock(),
    };
    let mut pending = Vec::with_capacity(total);
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / scn.connect_rate);
        tokio::time::sleep_until(due).await;
        let room = i / scn.clients;
        let n = plan.addrs.len();
        let ctx = Ctx {
            index: i,
            room,
            code: plan.rooms[room].clone(),
            // Client i starts on URL i % n and fails over along the list.
            addrs: (0..n).map(|k| plan.addrs[(i + k) % n]).collect(),
            tls: plan.tls.clone(),
            source: IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                0,
                1 + (i % scn.source_addrs as usize) as u8,
            )),
            token: plan.tokens[i].clone(),
            clock,
            live: live.clone(),
            opts: Opts {
                setup_player: opts.setup_player && i % scn.clients == 0,
                ..opts.clone()
            },
        };
        pending.push(tokio::spawn(start(ctx)));
        if i % 1_000 == 999 {
            eprintln!("  connecting: {} of {total}", i + 1);
        }
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

/// A joined connection.
struct Joined {
    sink: Sink,
    stream: Stream,
    ack: ReplyResult,
}

async fn start(ctx: Ctx) -> anyhow::Result<ClientHandle> {
    let t0 = ctx.clock.now_us();
    let (sink, mut stream) = open(&ctx, 0).await?;
    let mut sink = sink;
    let offset_ms = if ctx.opts.time_sync {
        time_sync(&mut sink, &mut stream).await?
    } else {
        0.0
    };
    let joined = join(sink, stream, &ctx.code, None).await?;
    let mut sink = joined.sink;
    if ctx.opts.setup_player {
        // The room's owner loads an entry and starts it, so player commands have a clock.
        for cmd in [
            json!({"id": "setup-q", "type": "queue.add", "room": ctx.code, "url": "https://www.youtube.com/watch?v=dQw4w9WgXcQ"}),
            json!({"id": "setup-p", "type": "player.play", "room": ctx.code}),
        ] {
            sink.send_text(&cmd.to_string()).await?;
        }
    }
    let connect_us = ctx.clock.now_us() - t0;
    let shared: SharedSink = Arc::new(Mutex::new(Some(sink)));
    let stats = Arc::new(std::sync::Mutex::new(Progress::default()));
    let last_seq = joined.ack.seq.unwrap_or(0);
    let task = tokio::spawn(run(
        ctx.clone(),
        shared.clone(),
        stats.clone(),
        joined.stream,
        connect_us,
        offset_ms,
        last_seq,
    ));
    Ok(ClientHandle {
        room: ctx.room,
        sink: shared,
        stats,
        task,
    })
}

/// TCP from the client's source address, then the WebSocket handshake.
async fn open(ctx: &Ctx, attempt: usize) -> anyhow::Result<(Sink, Stream)> {
    let addr = ctx.addrs[attempt % ctx.addrs.len()];
    let socket = TcpSocket::new_v4()?;
    socket
        .bind(SocketAddr::new(ctx.source, 0))
        .with_context(|| format!("bind {}", ctx.source))?;
    let stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(addr))
        .await
        .context("connect timed out")?
        .with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    let target = format!("/v1/ws?token={}", ctx.token);
    let handshake = async {
        let conn = match &ctx.tls {
            Some(tls) => ws::Conn::Tls(Box::new(tls.connect(addr, stream).await?)),
            None => ws::Conn::Plain(stream),
        };
        ws::connect(conn, &addr.to_string(), &target).await
    };
    let (stream, sink) = tokio::time::timeout(Duration::from_secs(10), handshake)
        .await
        .context("handshake timed out")??;
    Ok((sink, stream))
}

/// NTP-style: several `time.sync` round trips; the offset of the fastest one.
async fn time_sync(sink: &mut Sink, stream: &mut Stream) -> anyhow::Result<f64> {
    let mut best: Option<(f64, f64)> = None;
    for i in 0..SYNC_SAMPLES {
        let t0 = wall_us() as f64 / 1000.0;
        let id = format!("sync{i}");
        sink.send_text(&json!({"id": id, "type": "time.sync", "t0": t0 as u64}).to_string())
            .await?;
        let reply = read_reply(stream, sink, &id).await?;
        let t3 = wall_us() as f64 / 1000.0;
        let server = match reply {
            Reply::Ack(r) => r.server_ts.unwrap_or(t0),
            // A refused sample (e.g. `rate_limited`) is skipped, not taken as offset 0.
            Reply::Error { .. } => continue,
        };
        let rtt = t3 - t0;
        let offset = server - (t0 + t3) / 2.0;
        if best.is_none_or(|(r, _)| rtt < r) {
            best = Some((rtt, offset));
        }
    }
    Ok(best.map(|(_, o)| o).unwrap_or(0.0))
}

/// The parts of an ack or error the generator uses. Everything else — a join's snapshot
/// of thousands of members, the events that arrive before the reply — is skipped unparsed:
/// building a `Value` tree of every snapshot was a large part of the generator's CPU while a
/// big room filled.
#[derive(serde::Deserialize)]
struct ReplyFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(borrow)]
    id: Option<Id<'a>>,
    #[serde(borrow)]
    code: Option<&'a str>,
    result: Option<ReplyResult>,
}

/// An ack's `result` fields the generator reads.
#[derive(serde::Deserialize, Default)]
struct ReplyResult {
    seq: Option<u64>,
    recovered: Option<bool>,
    server_ts: Option<f64>,
}

/// A command's answer: `Ack` with the result's fields, or the error's code and frame text.
enum Reply {
    Ack(ReplyResult),
    Error { code: String, frame: String },
}

/// Reads until the reply to `id`, answering pings on the way.
async fn read_reply(stream: &mut Stream, sink: &mut Sink, id: &str) -> anyhow::Result<Reply> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let frame = tokio::time::timeout_at(deadline, stream.next())
            .await
            .context("reply timed out")??;
        let t = match frame {
            Frame::Text(t) => t,
            Frame::Ping(p) => {
                sink.pong(&p).await?;
                continue;
            }
            Frame::Close(code) => anyhow::bail!("closed before the reply (close code {code:?})"),
            Frame::Binary(_) | Frame::Pong => continue,
        };
        let Ok(f) = serde_json::from_slice::<ReplyFrame>(&t) else {
            continue;
        };
        if !matches!(f.id, Some(Id::Text(i)) if i == id) {
            continue;
        }
        return Ok(match f.kind {
            "ack" => Reply::Ack(f.result.unwrap_or_default()),
            _ => Reply::Error {
                code: f.code.unwrap_or_default().to_owned(),
                frame: String::from_utf8_lossy(&t).into_owned(),
            },
        });
    }
}

async fn join(
    mut sink: Sink,
    mut stream: Stream,
    code: &str,
    since_seq: Option<u64>,
) -> anyhow::Result<Joined> {
    let mut cmd = json!({"id": "join", "type": "room.join", "room": code});
    if let Some(s) = since_seq {
        cmd["since_seq"] = json!(s);
    }
    // `unavailable` means retry (a busy room during a join storm): back off with jitter, as
    // a real client does.
    for attempt in 0..JOIN_ATTEMPTS {
        sink.send_text(&cmd.to_string()).await?;
        match read_reply(&mut stream, &mut sink, "join").await? {
            Reply::Ack(ack) => return Ok(Joined { sink, stream, ack }),
            Reply::Error { code, frame } => {
                anyhow::ensure!(code == "unavailable", "join refused: {frame}")
            }
        }
        let cap = (50u64 << attempt.min(5)).min(2_000);
        tokio::time::sleep(Duration::from_millis(rand_below(cap) + 10)).await;
    }
    anyhow::bail!("join still unavailable after {JOIN_ATTEMPTS} attempts")
}

/// Reconnects (next URL each attempt, jittered exponential backoff) and rejoins by seq.
async fn rejoin(ctx: &Ctx, last_seq: u64, first_delay_ms: u64) -> Option<Joined> {
    let mut phase = ctx.live.phase.subscribe();
    let mut delay = first_delay_ms;
    for attempt in 1.. {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(delay)) => {}
            _ = phase.wait_for(|p| *p == Phase::Stop) => return None,
        }
        if let Ok((sink, stream)) = open(ctx, attempt).await {
            if let Ok(j) = join(sink, stream, &ctx.code, Some(last_seq)).await {
                return Some(j);
            }
        }
        let cap = (100u64 << attempt.min(5)).min(2_000);
        delay = rand_below(cap + 1);
    }
    None
}

fn rand_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(wall_us());
    h.finish() % n.max(1)
}

#[allow(clippy::too_many_arguments)]
async fn run(
    ctx: Ctx,
    sink: SharedSink,
    stats: Arc<std::sync::Mutex<Progress>>,
    mut stream: Stream,
    connect_us: u64,
    offset_ms: f64,
    mut last_seq: u64,
) -> ClientResult {
    let mut r = ClientResult {
        room: ctx.room,
        connect_us,
        measured: 0,
        duplicates: 0,
        reordered: 0,
        errors: 0,
        rate_limited: 0,
        rejected_chat: 0,
        acked: Vec::new(),
        closes: Vec::new(),
        reconnects: 0,
        recovered: 0,
        snapshots: 0,
        storm_back_us: None,
        storm_recovered: false,
        max_gap_us: 0,
        player: Vec::new(),
        offset_ms,
    };
    let timeline = ctx.index < TIMELINE_CLIENTS;
    let mut phase = ctx.live.phase.subscribe();
    let mut last_delivery: Option<u64> = None;
    // Messages already received, for duplicates (bounded; see `seen`).
    let mut seen = Seen::default();
    // The measured window, learnt from the payloads of this room's chat.
    let mut window: Option<(u64, u64)> = None;
    let mut stormed = false;
    loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            changed = phase.changed() => {
                let p = *phase.borrow_and_update();
                if changed.is_err() || p == Phase::Stop {
                    break;
                }
                if p == Phase::Storm && !stormed {
                    stormed = true;
                    let storm_at = ctx.clock.now_us();
                    // Drop the connection abruptly, like a network blip.
                    drop(sink.lock().await.take());
                    let jitter = rand_below(ctx.opts.storm_jitter_ms.max(1));
                    match rejoin(&ctx, last_seq, jitter).await {
                        Some(j) => {
                            r.storm_back_us = Some(ctx.clock.now_us() - storm_at);
                            r.storm_recovered = j.ack.recovered == Some(true);
                            let (s, seq) = adopt(&mut r, &sink, j, storm_at, &ctx).await;
                            stream = s;
                            last_seq = last_seq.max(seq);
                        }
                        None => break,
                    }
                }
                continue;
            }
        };
        let closed = match &msg {
            Ok(Frame::Close(code)) => {
                let code = code.unwrap_or(1005);
                // Answer the close, as RFC 6455 §5.5.1 asks, before letting go.
                if let Some(s) = sink.lock().await.as_mut() {
                    let _ = s.close(if code == 1005 { 1000 } else { code }).await;
                }
                Some(code)
            }
            Ok(Frame::Ping(p)) => {
                if let Some(s) = sink.lock().await.as_mut() {
                    let _ = s.pong(p).await;
                }
                None
            }
            Ok(_) => None,
            Err(_) => Some(1006),
        };
        if let Some(code) = closed {
            r.closes.push(code);
            match reconnect(&ctx, &mut r, &sink, last_seq).await {
                Some((s, seq)) => {
                    stream = s;
                    last_seq = last_seq.max(seq);
                    continue;
                }
                None => break,
            }
        }
        let Ok(Frame::Text(text)) = msg else {
            continue;
        };
        let now = ctx.clock.now_us();
        let Ok(f) = serde_json::from_slice::<Incoming<'_>>(&text) else {
            continue;
        };
        if let (Some(seq), false) = (f.seq, matches!(f.kind, "ack" | "error" | "chat.message")) {
            last_seq = last_seq.max(seq);
        }
        match f.kind {
            "chat.message" => {
                ctx.live.deliveries.fetch_add(1, Ordering::Relaxed);
                let seq = f.seq.unwrap_or(0);
                if seq <= last_seq {
                    r.reordered += 1;
                }
                last_seq = last_seq.max(seq);
                let Some(body) = f.text.and_then(|t| Payload::parse(&t)) else {
                    continue;
                };
                // Message numbers restart each ramp step.
                if !seen.insert(body.s, body.k) {
                    r.duplicates += 1;
                    continue;
                }
                window = Some((body.w0, body.w1));
                let lat = now.saturating_sub(body.t).max(1);
                if (body.w0..body.w1).contains(&body.t) {
                    r.measured += 1;
                    ctx.live
                        .delivered
                        .record(ctx.room, seen::key(body.s, body.k));
                    ctx.live.figures.record(ctx.index, |f| {
                        let _ = f.latency.record(lat);
                    });
                    if let Some(prev) = last_delivery {
                        r.max_gap_us = r.max_gap_us.max(now.saturating_sub(prev));
                    }
                    last_delivery = Some(now);
                    if let Ok(mut s) = stats.lock() {
                        if body.s < STEPS_MAX {
                            if s.steps.len() <= body.s {
                                s.steps.resize_with(body.s + 1, Default::default);
                            }
                            s.steps[body.s].0 += 1;
                            s.steps[body.s].1.record(lat);
                        }
                        let second = (body.t / 1_000_000) as usize;
                        if timeline && second < TIMELINE_MAX {
                            if s.timeline.len() <= second {
                                s.timeline.resize_with(second + 1, Default::default);
                            }
                            s.timeline[second].record(lat);
                        }
                    }
                }
            }
            "player.state" if r.player.len() < OBS_MAX => {
                r.player.push(PlayerObs {
                    recv_us: wall_us(),
                    seq: f.seq.unwrap_or(0),
                    ts_ms: f.ts.unwrap_or(0),
                    at_ms: f.at.unwrap_or(0),
                    position_ms: f.position_ms.unwrap_or(0.0),
                    playing: f.state == Some("playing"),
                    rate: f.rate.unwrap_or(1.0),
                });
            }
            "ack" => {
                let Some(Id::Text(id)) = f.id else { continue };
                let mut parts = id.split('-');
                let tag = parts.next();
                let num = |p: Option<&str>| p.and_then(|v| v.parse::<u64>().ok());
                let (sent, due, step, k) = (
                    num(parts.next()),
                    num(parts.next()),
                    num(parts.next()),
                    num(parts.next()),
                );
                if let Some(sent) = sent {
                    let us = now.saturating_sub(sent).max(1);
                    ctx.live.figures.record(ctx.index, |f| {
                        let _ = f.ack.record(us);
                    });
                }
                if let (Some("chat"), Some(due), Some(step), Some(k)) = (tag, due, step, k) {
                    if window.is_some_and(|(a, b)| (a..b).contains(&due)) {
                        r.acked.push(seen::key(step as usize, k));
                    }
                }
            }
            "error" => {
                ctx.live.errors.fetch_add(1, Ordering::Relaxed);
                if let Some(Id::Text(id)) = f.id {
                    let due = id
                        .strip_prefix("chat-")
                        .and_then(|rest| rest.split('-').nth(1));
                    let due = due.and_then(|d| d.parse::<u64>().ok());
                    if due.is_some_and(|d| window.is_some_and(|(a, b)| (a..b).contains(&d))) {
                        r.rejected_chat += 1;
                    }
                }
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

/// After a drop: rejoin if the scenario reconnects, else stop.
async fn reconnect(
    ctx: &Ctx,
    r: &mut ClientResult,
    sink: &SharedSink,
    last_seq: u64,
) -> Option<(Stream, u64)> {
    drop(sink.lock().await.take());
    if !ctx.opts.reconnect || *ctx.live.phase.borrow() == Phase::Stop {
        return None;
    }
    let dropped = ctx.clock.now_us();
    let j = rejoin(ctx, last_seq, rand_below(200)).await?;
    Some(adopt(r, sink, j, dropped, ctx).await)
}

/// Installs a rejoined connection and records how it came back. Returns the stream and
/// the seq to continue from: after a snapshot, the snapshot's; after a replay, the replayed
/// events follow and move it themselves.
async fn adopt(
    r: &mut ClientResult,
    sink: &SharedSink,
    j: Joined,
    since_us: u64,
    ctx: &Ctx,
) -> (Stream, u64) {
    r.reconnects += 1;
    let us = (ctx.clock.now_us() - since_us).max(1);
    ctx.live.figures.record(ctx.index, |f| {
        let _ = f.reconnect.record(us);
    });
    let seq = if j.ack.recovered == Some(true) {
        r.recovered += 1;
        0
    } else {
        r.snapshots += 1;
        j.ack.seq.unwrap_or(0)
    };
    *sink.lock().await = Some(j.sink);
    (j.stream, seq)
}

impl ClientHandle {
    /// Stops reading and collects the result.
    pub async fn finish(self) -> Option<ClientResult> {
        let r = self.task.await.ok();
        if let Some(mut s) = self.sink.lock().await.take() {
            let _ = s.close(1000).await;
        }
        r
    }
}

/// Stops every client (the phase is already `Stop`) and collects their results.
pub async fn finish_all(clients: Vec<ClientHandle>) -> Vec<ClientResult> {
    let mut out = Vec::with_capacity(clients.len());
    for c in clients {
        if let Some(r) = c.finish().await {
            out.push(r);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_at_the_requested_size() {
        let p = Payload {
            k: 42,
            t: 1_234_567,
            w0: 1_000_000,
            w1: 9_000_000,
            s: 3,
        };
        let text = p.text(64);
        assert_eq!(text.len(), 64);
        let q = Payload::parse(&text).unwrap_or_else(|| panic!("{text}"));
        assert_eq!(
            (q.k, q.t, q.w0, q.w1, q.s),
            (42, 1_234_567, 1_000_000, 9_000_000, 3)
        );
        assert!(Payload::parse("hello world").is_none());
        assert!(Payload::parse("lt 1 2").is_none());
    }
}

//! One IRC-over-WebSocket connection to Twitch, multiplexing up to
//! `channels_per_connection` channels for any number of rooms. It connects only while some
//! room wants a channel, logs in (anonymous `justinfan<digits>` or a linked account),
//! requests tags and commands, JOINs through the cluster-wide limiter, answers PING,
//! follows RECONNECT, and reconnects with full-jitter backoff behind a circuit breaker
//! whose state every subscribed room sees as `source.status`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocketError};
use http_body_util::Empty;
use hyper::Request;
use lockstep_shared::config::TwitchConfig;
use lockstep_shared::metrics as names;
use lockstep_shared::protocol::{nul, TwitchAuth};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::irc::{IrcMessage, MAX_LINE};
use super::normalize::normalize;
use super::TwitchUpdate;
use crate::clock::now_ms;
use crate::ingest::breaker::{Breaker, Failure};
use crate::ingest::http::HttpClient;
use crate::ingest::limiter::{self, JoinLimiter};
use crate::ingest::net;
use crate::ingest::{observe_breaker, profiles};

/// What the pool asks of a connection.
pub enum ConnCmd {
    Join {
        channel: String,
        sub: u64,
        tx: mpsc::Sender<TwitchUpdate>,
    },
    Part {
        channel: String,
        sub: u64,
    },
}

/// Lines read but not yet handled, per connection.
const LINES: usize = 1_024;
/// Lines waiting to be written (JOINs from the joiner, PONGs).
const OUT: usize = 256;

/// How a session ended.
enum End {
    Cancelled,
    /// No channel is wanted any more.
    Idle,
    /// Twitch asked us to reconnect (RECONNECT): not a failure.
    Reconnect,
    Failed(Failure, String),
}

/// Everything one connection task owns.
pub struct Conn {
    pub cfg: TwitchConfig,
    pub http: Arc<HttpClient>,
    pub limiter: Arc<dyn JoinLimiter>,
    pub auth: Option<TwitchAuth>,
    pub breaker: Breaker,
    pub cmds: mpsc::Receiver<ConnCmd>,
    pub cancel: CancellationToken,
    subs: HashMap<String, Vec<(u64, mpsc::Sender<TwitchUpdate>)>>,
    /// Channels this session's JOIN was confirmed for.
    joined: std::collections::HashSet<String>,
}

impl Conn {
    pub fn new(
        cfg: TwitchConfig,
        http: Arc<HttpClient>,
        limiter: Arc<dyn JoinLimiter>,
        auth: Option<TwitchAuth>,
        breaker: Breaker,
        cmds: mpsc::Receiver<ConnCmd>,
        cancel: CancellationToken,
    ) -> Conn {
        Conn {
            cfg,
            http,
            limiter,
            auth,
            breaker,
            cmds,
            cancel,
            subs: HashMap::new(),
            joined: Default::default(),
        }
    }

    /// Runs until cancelled or the pool drops its handle.
    pub async fn run(mut self) {
        let mut attempt: u32 = 0;
        loop {
            if self.subs.is_empty() {
                tokio::select! {
                    _ = self.cancel.cancelled() => return,
                    cmd = self.cmds.recv() => match cmd {
                        Some(cmd) => { let _ = self.apply(cmd, None); continue; }
                        None => return,
                    },
                }
            }
            let now = now_ms();
            let before = self.breaker.state();
            if !self.breaker.allow(now) {
                let until = self.breaker.retry_at().unwrap_or(now + 1_000);
                self.broadcast_state("open", Some("upstream failing; circuit open".into()));
                if !self.wait(until.saturating_sub(now)).await {
                    return;
                }
                continue;
            }
            observe_breaker("twitch", before, self.breaker.state());
            let probing = self.breaker.state().as_str() == "half_open";
            self.broadcast_state(if probing { "half_open" } else { "connecting" }, None);
            let end = self.session(probing).await;
            let before = self.breaker.state();
            match end {
                End::Cancelled => return,
                End::Idle => {
                    attempt = 0;
                    continue;
                }
                End::Reconnect => {
                    attempt = 0;
                    let jitter = rand::random_range(0..1_000);
                    if !self.wait(jitter).await {
                        return;
                    }
                    continue;
                }
                End::Failed(kind, why) => {
                    tracing::warn!(cause = %why, "twitch connection failed");
                    self.breaker.on_failure(now_ms(), kind, rand::random());
                    observe_breaker("twitch", before, self.breaker.state());
                    let state = if self.breaker.retry_at().is_some() {
                        "open"
                    } else {
                        "connecting"
                    };
                    self.broadcast_state(state, Some(why));
                    let cap = self
                        .cfg
                        .backoff_base_ms
                        .saturating_mul(1u64 << attempt.min(16))
                        .min(self.cfg.backoff_max_ms);
                    attempt = attempt.saturating_add(1);
                    // Full jitter: anywhere in [0, cap].
                    let delay = rand::random_range(0..=cap);
                    if !self.wait(delay).await {
                        return;
                    }
                }
            }
        }
    }

    /// Sleeps while still taking subscribe/unsubscribe commands; `false` if cancelled.
    async fn wait(&mut self, ms: u64) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return false,
                _ = tokio::time::sleep_until(deadline) => return true,
                cmd = self.cmds.recv() => match cmd {
                    Some(cmd) => { let _ = self.apply(cmd, None); }
                    None => return false,
                },
            }
        }
    }

    /// Records a (un)subscription. With a welcomed session (`joiner`), a first subscriber
    /// queues a JOIN; the last one leaving returns the PART line to write.
    fn apply(&mut self, cmd: ConnCmd, joiner: Option<&mpsc::Sender<String>>) -> Option<String> {
        match cmd {
            ConnCmd::Join { channel, sub, tx } => {
                if self.joined.contains(&channel) {
                    let _ = tx.try_send(TwitchUpdate::State("live", None));
                }
                let entry = self.subs.entry(channel.clone()).or_default();
                let first = entry.is_empty();
                entry.push((sub, tx));
                if let (true, Some(joiner)) = (first, joiner) {
                    let _ = joiner.try_send(channel);
                }
                None
            }
            ConnCmd::Part { channel, sub } => {
                let list = self.subs.get_mut(&channel)?;
                list.retain(|(id, _)| *id != sub);
                if !list.is_empty() {
                    return None;
                }
                self.subs.remove(&channel);
                self.joined
                    .remove(&channel)
                    .then(|| format!("PART #{channel}"))
            }
        }
    }

    fn broadcast_state(&self, state: &'static str, error: Option<String>) {
        for list in self.subs.values() {
            for (_, tx) in list {
                let _ = tx.try_send(TwitchUpdate::State(state, error.clone()));
            }
        }
    }

    fn channel_state(&self, channel: &str, state: &'static str, error: Option<String>) {
        for (_, tx) in self.subs.get(channel).into_iter().flatten() {
            let _ = tx.try_send(TwitchUpdate::State(state, error.clone()));
        }
    }

    async fn session(&mut self, probing: bool) -> End {
        let url = match Url::parse(&self.cfg.url) {
            Ok(u) => u,
            Err(e) => return End::Failed(Failure::Format, format!("bad twitch url: {e}")),
        };
        let route = match self.http.pool.pick(now_ms()) {
            Ok(r) => r,
            Err(e) => return End::Failed(Failure::Transient, e.to_string()),
        };
        let profile = profiles::pick();
        let connect = async {
            let io = net::connect(&url, &route, &self.http.tls, self.http.timeout).await?;
            let host = url.host_str().unwrap_or_default();
            let authority = match url.port() {
                Some(p) => format!("{host}:{p}"),
                None => host.to_owned(),
            };
            let mut req = Request::builder()
                .method("GET")
                .uri(url.path())
                .header("host", authority)
                .header("upgrade", "websocket")
                .header("connection", "upgrade")
                .header(
                    "sec-websocket-key",
                    fastwebsockets::handshake::generate_key(),
                )
                .header("sec-websocket-version", "13")
                .header("origin", "https://www.twitch.tv");
            for (k, v) in profile.headers("*/*") {
                if k != "accept" {
                    req = req.header(k, v);
                }
            }
            let req = req
                .body(Empty::<Bytes>::new())
                .map_err(|e| net::NetError::Http(e.to_string()))?;
            let (ws, _) = fastwebsockets::handshake::client(&SpawnExecutor, req, io)
                .await
                .map_err(|e| match e {
                    WebSocketError::InvalidStatusCode(s) => net::NetError::Status(s),
                    other => net::NetError::Http(other.to_string()),
                })?;
            Ok::<_, net::NetError>(ws)
        };
        let ws = tokio::select! {
            _ = self.cancel.cancelled() => return End::Cancelled,
            r = tokio::time::timeout(self.http.timeout, connect) => match r {
                Ok(Ok(ws)) => ws,
                Ok(Err(e)) => {
                    self.http.pool.report(&route, !e.blames_proxy(), now_ms());
                    metrics::counter!(names::INGEST_UPSTREAM_ERRORS, "platform" => "twitch",
                        "reason" => e.reason()).increment(1);
                    return End::Failed(Failure::Transient, e.to_string());
                }
                Err(_) => return End::Failed(Failure::Transient, "connect timed out".into()),
            },
        };
        self.http.pool.report(&route, true, now_ms());
        metrics::gauge!(names::INGEST_TWITCH_CONNECTIONS).increment(1.0);
        let end = self.serve(ws, probing).await;
        metrics::gauge!(names::INGEST_TWITCH_CONNECTIONS).decrement(1.0);
        if let End::Failed(_, why) = &end {
            let reason = if why.starts_with("unparseable") {
                "parse"
            } else {
                "closed"
            };
            metrics::counter!(names::INGEST_UPSTREAM_ERRORS, "platform" => "twitch",
                "reason" => reason)
            .increment(1);
        }
        end
    }

    async fn serve(
        &mut self,
        ws: fastwebsockets::WebSocket<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>,
        probing: bool,
    ) -> End {
        let (mut read, mut write) = ws.split(tokio::io::split);
        let (lines_tx, mut lines_rx) = mpsc::channel::<Result<String, String>>(LINES);
        let (ctrl_tx, mut ctrl_rx) = mpsc::channel::<(OpCode, Vec<u8>)>(8);
        let session_cancel = self.cancel.child_token();
        let reader_cancel = session_cancel.clone();
        let reader = tokio::spawn(async move {
            read.set_max_message_size(4 * MAX_LINE);
            read.set_auto_pong(true);
            read.set_auto_close(true);
            let mut send_ctrl = |f: Frame<'_>| {
                let _ = ctrl_tx.try_send((f.opcode, f.payload.to_vec()));
                async { Ok::<(), std::io::Error>(()) }
            };
            loop {
                let frame = tokio::select! {
                    _ = reader_cancel.cancelled() => return,
                    f = read.read_frame(&mut send_ctrl) => f,
                };
                let frame = match frame {
                    Ok(f) => f,
                    Err(e) => {
                        let _ = lines_tx.send(Err(format!("socket: {e}"))).await;
                        return;
                    }
                };
                match frame.opcode {
                    OpCode::Close => {
                        let _ = lines_tx.send(Err("closed by twitch".into())).await;
                        return;
                    }
                    OpCode::Text | OpCode::Binary => {
                        let mut text = String::from_utf8_lossy(&frame.payload).into_owned();
                        nul::scrub_str(&mut text);
                        for line in text.split("\r\n").filter(|l| !l.is_empty()) {
                            if lines_tx.send(Ok(line.to_owned())).await.is_err() {
                                return;
                            }
                        }
                    }
                    _ => {}
                }
            }
        });

        let (out_tx, mut out_rx) = mpsc::channel::<String>(OUT);
        let (join_tx, mut join_rx) = mpsc::channel::<String>(4_096);
        let joiner = {
            let (limiter, out_tx, cancel) =
                (self.limiter.clone(), out_tx.clone(), session_cancel.clone());
            tokio::spawn(async move {
                while let Some(channel) = tokio::select! {
                    _ = cancel.cancelled() => None,
                    c = join_rx.recv() => c,
                } {
                    if !limiter::acquire(limiter.as_ref(), &cancel).await {
                        return;
                    }
                    metrics::counter!(names::INGEST_TWITCH_JOINS).increment(1);
                    if out_tx.send(format!("JOIN #{channel}")).await.is_err() {
                        return;
                    }
                }
            })
        };

        let nick = match &self.auth {
            Some(a) => a.login.clone(),
            None => format!("justinfan{}", rand::random_range(10_000..99_999_999u32)),
        };
        let mut hello = vec!["CAP REQ :twitch.tv/tags twitch.tv/commands".to_owned()];
        if let Some(a) = &self.auth {
            let token = a.token.strip_prefix("oauth:").unwrap_or(&a.token);
            hello.push(format!("PASS oauth:{token}"));
        }
        hello.push(format!("NICK {nick}"));

        let idle = Duration::from_millis(self.cfg.idle_timeout_ms.max(3_000));
        let mut keepalive = tokio::time::interval(idle / 3);
        keepalive.tick().await;
        let mut last_line = tokio::time::Instant::now();
        let mut welcomed = false;
        let mut write_err: Option<String> = None;
        for line in hello {
            if let Err(e) = write_line(&mut write, &line).await {
                write_err = Some(e);
                break;
            }
        }
        let end = if let Some(e) = write_err {
            End::Failed(Failure::Transient, e)
        } else {
            loop {
                let line = tokio::select! {
                    _ = self.cancel.cancelled() => break End::Cancelled,
                    l = lines_rx.recv() => l,
                    Some(out) = out_rx.recv() => {
                        if let Err(e) = write_line(&mut write, &out).await {
                            break End::Failed(Failure::Transient, e);
                        }
                        continue;
                    }
                    Some((op, payload)) = ctrl_rx.recv() => {
                        let frame = Frame::new(true, op, None, Payload::Owned(payload));
                        if let Err(e) = write.write_frame(frame).await {
                            break End::Failed(Failure::Transient, e.to_string());
                        }
                        continue;
                    }
                    cmd = self.cmds.recv() => {
                        let Some(cmd) = cmd else { break End::Cancelled };
                        if let Some(part) = self.apply(cmd, welcomed.then_some(&join_tx)) {
                            if let Err(e) = write_line(&mut write, &part).await {
                                break End::Failed(Failure::Transient, e);
                            }
                        }
                        if self.subs.is_empty() {
                            break End::Idle;
                        }
                        continue;
                    }
                    _ = keepalive.tick() => {
                        if last_line.elapsed() >= idle {
                            break End::Failed(Failure::Transient, "connection went silent".into());
                        }
                        if let Err(e) = write_line(&mut write, "PING :tmi.twitch.tv").await {
                            break End::Failed(Failure::Transient, e);
                        }
                        continue;
                    }
                };
                let line = match line {
                    Some(Ok(l)) => l,
                    Some(Err(e)) => break End::Failed(Failure::Transient, e),
                    None => break End::Failed(Failure::Transient, "reader stopped".into()),
                };
                last_line = tokio::time::Instant::now();
                let msg = match IrcMessage::parse(&line) {
                    Ok(m) => m,
                    Err(e) => {
                        break End::Failed(
                            Failure::Format,
                            format!("unparseable line from twitch ({e})"),
                        )
                    }
                };
                match msg.command.as_str() {
                    "PING" => {
                        let arg = msg.params.first().cloned().unwrap_or_default();
                        if let Err(e) = write_line(&mut write, &format!("PONG :{arg}")).await {
                            break End::Failed(Failure::Transient, e);
                        }
                    }
                    "RECONNECT" => break End::Reconnect,
                    "001" => {
                        welcomed = true;
                        let before = self.breaker.state();
                        self.breaker.on_success(now_ms());
                        observe_breaker("twitch", before, self.breaker.state());
                        if probing {
                            self.broadcast_state("closed", None);
                        }
                        for channel in self.subs.keys() {
                            let _ = join_tx.try_send(channel.clone());
                        }
                    }
                    "NOTICE" if !welcomed => {
                        // Before the welcome a NOTICE is a refused login; retrying will not help.
                        let why = msg.text().unwrap_or("login refused").to_owned();
                        break End::Failed(Failure::Format, format!("login refused: {why}"));
                    }
                    "NOTICE" => {
                        if let (Some(ch), Some(id)) = (msg.channel(), msg.tag("msg-id")) {
                            if id.starts_with("msg_channel_suspended") || id == "msg_banned" {
                                let text = msg.text().unwrap_or(id).to_owned();
                                self.channel_state(ch, "offline", Some(text));
                            }
                        }
                    }
                    "JOIN" if msg.nick() == Some(nick.as_str()) => {
                        if let Some(ch) = msg.channel() {
                            self.joined.insert(ch.to_owned());
                            self.channel_state(ch, "live", None);
                        }
                    }
                    _ => {
                        if let Some(item) = normalize(&msg) {
                            self.route(item);
                        }
                    }
                }
            }
        };
        session_cancel.cancel();
        self.joined.clear();
        drop(lines_rx);
        // A stalled peer must not hold the task: the close is best effort.
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            write.write_frame(Frame::close(1000, b"")),
        )
        .await;
        let _ = reader.await;
        let _ = joiner.await;
        end
    }

    fn route(&self, item: super::normalize::ChannelItem) {
        let Some(list) = self.subs.get(&item.channel) else {
            return;
        };
        for (_, tx) in list {
            if tx
                .try_send(TwitchUpdate::Item(Box::new(item.item.clone())))
                .is_err()
            {
                metrics::counter!(names::INGEST_SHED, "platform" => "twitch").increment(1);
            }
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        crate::ingest::forget_breaker("twitch", self.breaker.state());
    }
}

async fn write_line<S>(w: &mut fastwebsockets::WebSocketWrite<S>, line: &str) -> Result<(), String>
where
    S: tokio::io::AsyncWrite + Unpin,
{
    w.write_frame(Frame::text(Payload::Borrowed(line.as_bytes())))
        .await
        .map_err(|e| e.to_string())
}

/// Runs hyper's handshake connection future on tokio.
struct SpawnExecutor;

impl<Fut> hyper::rt::Executor<Fut> for SpawnExecutor
where
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    fn execute(&self, fut: Fut) {
        tokio::spawn(fut);
    }
}

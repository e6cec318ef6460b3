//! One WebSocket connection: a reader that validates frames and forwards commands, and a
//! writer that drains the bounded outbound queue, pings, and enforces the pong timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload, WebSocket, WebSocketError};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use lockstep_shared::bus::{Caller, CommandEnvelope, ConnId, ToWorker};
use lockstep_shared::metrics as names;
use lockstep_shared::protocol::{
    ack_frame, decode_client_frame, error_frame, ClientCommand, ClientFrame, ErrorCode,
};
use lockstep_worker::clock::now_ms;
use lockstep_worker::engine::TokenBucket;
use serde_json::json;
use tokio::io::{AsyncWrite, BufWriter};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::auth::Claims;
use crate::fanout::{close, Closer, ConnEntry, OutFrame};
use crate::state::AppState;

type Io = TokioIo<Upgraded>;

/// Control frames the reader owes the peer (pong, close echo), written by the writer.
struct Ctrl {
    opcode: OpCode,
    payload: Vec<u8>,
}

/// Write buffer per socket, bytes.
const WRITE_BUFFER: usize = 2048;
/// Most frames written before one flush.
const WRITE_BATCH: usize = 128;
/// How long the final close frame may take to write.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves an upgraded socket until it closes.
pub async fn serve(ws: WebSocket<Io>, claims: Claims, state: Arc<AppState>) {
    let local = state.next_conn_id();
    let conn = ConnId {
        gateway: state.fanout.gateway_id(),
        local,
    };
    let span = tracing::info_span!("conn", conn = local, user = %claims.sub);
    async move {
        let cfg = &state.cfg.gateway;
        let (out_tx, out_rx) = mpsc::channel(cfg.outbound_queue);
        let (ctrl_tx, ctrl_rx) = mpsc::channel::<Ctrl>(16);
        let closer = Arc::new(Closer::default());
        let entry = Arc::new(ConnEntry::new(out_tx, closer.clone()));
        state.fanout.register(local, entry.clone());
        metrics::gauge!(names::GATEWAY_CONNECTIONS).increment(1.0);
        metrics::counter!(names::GATEWAY_CONNECTIONS_OPENED).increment(1);
        tracing::debug!("connected");

        let last_seen = Arc::new(AtomicU64::new(now_ms()));
        let (read_half, write_half) = ws.split(|io| {
            let (r, w) = tokio::io::split(io);
            // Small: frames are written in batches and flushed at once; 8 KiB per idle socket
            // was a third of its memory.
            (r, BufWriter::with_capacity(WRITE_BUFFER, w))
        });
        let writer = tokio::spawn(
            write_loop(
                write_half,
                out_rx,
                ctrl_rx,
                closer.clone(),
                last_seen.clone(),
                Duration::from_millis(cfg.ping_interval_ms),
                state.cfg.presence.timeout_ms,
            )
            .in_current_span(),
        );
        let caller = Caller {
            user_id: claims.sub.clone(),
            name: claims.name.clone(),
            conn,
        };
        let mut reader = Reader {
            state: state.clone(),
            entry: entry.clone(),
            caller,
            last_seen,
            commands: TokenBucket::full(cfg.command_burst, now_ms()),
            signals: TokenBucket::full(cfg.signal_rate, now_ms()),
        };
        let code = reader.run(read_half, ctrl_tx).await;
        closer.close(code);

        for room in state.fanout.unregister(local) {
            let msg = ToWorker::ConnClosed {
                room,
                conn,
                user_id: claims.sub.clone(),
            };
            if let Err(e) = state.link.send(msg).await {
                tracing::warn!(cause = %e.message, "could not report closed connection");
            }
        }
        let _ = writer.await;
        let code = closer.code();
        metrics::gauge!(names::GATEWAY_CONNECTIONS).decrement(1.0);
        metrics::counter!(names::GATEWAY_CONNECTIONS_CLOSED, "code" => code.to_string())
            .increment(1);
        tracing::debug!(code, "closed");
    }
    .instrument(span)
    .await
}

struct Reader {
    state: Arc<AppState>,
    entry: Arc<ConnEntry>,
    caller: Caller,
    last_seen: Arc<AtomicU64>,
    commands: TokenBucket,
    signals: TokenBucket,
}

impl Reader {
    /// Reads until the socket ends; returns the close code to record.
    async fn run(
        &mut self,
        read_half: fastwebsockets::WebSocketRead<tokio::io::ReadHalf<Io>>,
        ctrl_tx: mpsc::Sender<Ctrl>,
    ) -> u16 {
        let mut read_half = read_half;
        let max = self.state.cfg.gateway.max_frame_bytes;
        read_half.set_max_message_size(max + 1);
        read_half.set_auto_pong(true);
        read_half.set_auto_close(true);
        let mut send_ctrl = |frame: Frame<'_>| {
            let ctrl = Ctrl {
                opcode: frame.opcode,
                payload: frame.payload.to_vec(),
            };
            let result = ctrl_tx.try_send(ctrl);
            async move {
                // A peer flooding pings past the small control queue just loses pongs.
                let _ = result;
                Ok::<(), std::io::Error>(())
            }
        };
        let token = self.entry.closer.token().clone();
        // One waiter for the whole connection, not one per frame.
        let cancelled = token.cancelled();
        tokio::pin!(cancelled);
        let mut partial: Option<(OpCode, Vec<u8>)> = None;
        loop {
            let frame = tokio::select! {
                _ = &mut cancelled => return self.entry.closer.code(),
                f = read_half.read_frame(&mut send_ctrl) => f,
            };
            let frame = match frame {
                Ok(f) => f,
                Err(WebSocketError::FrameTooLarge) => return close::TOO_BIG,
                Err(WebSocketError::UnexpectedEOF) | Err(WebSocketError::ConnectionClosed) => {
                    return 1006
                }
                Err(WebSocketError::IoError(_)) => return 1006,
                Err(e) => {
                    tracing::debug!(cause = %e, "protocol error");
                    return close::PROTOCOL;
                }
            };
            self.last_seen.store(now_ms(), Ordering::Relaxed);
            let (opcode, payload) = match frame.opcode {
                OpCode::Close => return 1000,
                OpCode::Ping | OpCode::Pong => continue,
                OpCode::Text | OpCode::Binary if frame.fin => {
                    if partial.is_some() {
                        return close::PROTOCOL;
                    }
                    (frame.opcode, frame.payload.to_vec())
                }
                OpCode::Text | OpCode::Binary => {
                    if partial.is_some() {
                        return close::PROTOCOL;
                    }
                    partial = Some((frame.opcode, frame.payload.to_vec()));
                    continue;
                }
                OpCode::Continuation => {
                    let Some((_, buf)) = partial.as_mut() else {
                        return close::PROTOCOL;
                    };
                    if buf.len() + frame.payload.len() > max {
                        return close::TOO_BIG;
                    }
                    buf.extend_from_slice(&frame.payload);
                    if !frame.fin {
                        continue;
                    }
                    match partial.take() {
                        Some(done) => done,
                        None => return close::PROTOCOL,
                    }
                }
            };
            if opcode == OpCode::Binary {
                self.reply_error(
                    None,
                    ErrorCode::BadRequest,
                    "binary frames are not supported; send JSON text",
                );
                continue;
            }
            match std::str::from_utf8(&payload) {
                Ok(text) => self.on_text(text).await,
                Err(_) => return 1007,
            }
        }
    }

    async fn on_text(&mut self, text: &str) {
        let frame = match decode_client_frame(text) {
            Ok(f) => f,
            Err(e) => {
                metrics::counter!(names::GATEWAY_COMMANDS, "type" => "invalid", "outcome" => e.code.as_str()).increment(1);
                self.reply_error(e.id.as_deref(), e.code, &e.message);
                return;
            }
        };
        let kind = frame.cmd.kind();
        let outcome = self.on_command(frame).await;
        let outcome = match outcome {
            Ok(()) => "forwarded",
            Err(code) => code.as_str(),
        };
        metrics::counter!(names::GATEWAY_COMMANDS, "type" => kind, "outcome" => outcome)
            .increment(1);
    }

    async fn on_command(&mut self, frame: ClientFrame) -> Result<(), ErrorCode> {
        let ClientFrame { id, cmd } = frame;
        let cfg = &self.state.cfg.gateway;
        let now = now_ms();
        let allowed = if let ClientCommand::SignalSend { .. } = cmd {
            self.signals.try_take(cfg.signal_rate, cfg.signal_rate, now)
        } else {
            self.commands
                .try_take(cfg.command_rate, cfg.command_burst, now)
        };
        if !allowed {
            self.reply_error(
                id.as_deref(),
                ErrorCode::RateLimited,
                "too many commands; slow down",
            );
            return Err(ErrorCode::RateLimited);
        }
        if let ClientCommand::TimeSync { t0 } = cmd {
            let ack = ack_frame(id.as_deref(), &json!({"t0": t0, "server_ts": now}));
            self.entry.push(OutFrame::Direct(Arc::from(ack)));
            return Ok(());
        }
        let room = cmd.room().unwrap_or_default().to_owned();
        let mut new_join = false;
        if let ClientCommand::RoomJoin { .. } = cmd {
            let Ok(mut rooms) = self.entry.rooms.lock() else {
                return Err(ErrorCode::Internal);
            };
            if !rooms.contains(&room) {
                if rooms.len() >= cfg.max_rooms_per_connection {
                    drop(rooms);
                    let msg = format!(
                        "at most {} rooms per connection",
                        cfg.max_rooms_per_connection
                    );
                    self.reply_error(id.as_deref(), ErrorCode::Conflict, &msg);
                    return Err(ErrorCode::Conflict);
                }
                rooms.insert(room.clone());
                new_join = true;
            }
        }
        if let Some(id) = &id {
            self.entry.track(id, cmd.kind());
        }
        let msg = ToWorker::Command(CommandEnvelope {
            caller: self.caller.clone(),
            id: id.clone(),
            cmd,
        });
        if let Err(refusal) = self.state.link.send(msg).await {
            if new_join {
                if let Ok(mut rooms) = self.entry.rooms.lock() {
                    rooms.remove(&room);
                }
            }
            self.reply_error(id.as_deref(), refusal.code, &refusal.message);
            return Err(refusal.code);
        }
        Ok(())
    }

    fn reply_error(&self, id: Option<&str>, code: ErrorCode, message: &str) {
        self.entry
            .push(OutFrame::Direct(Arc::from(error_frame(id, code, message))));
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut ws: fastwebsockets::WebSocketWrite<W>,
    mut out_rx: mpsc::Receiver<OutFrame>,
    mut ctrl_rx: mpsc::Receiver<Ctrl>,
    closer: Arc<Closer>,
    last_seen: Arc<AtomicU64>,
    ping_every: Duration,
    timeout_ms: u64,
) {
    let mut ping = tokio::time::interval(ping_every);
    ping.tick().await;
    let token = closer.token().clone();
    // One waiter for the whole connection, not one per wake-up.
    let cancelled = token.cancelled();
    tokio::pin!(cancelled);
    let metrics = WriterMetrics::new();
    loop {
        let step = tokio::select! {
            biased;
            _ = &mut cancelled => break,
            ctrl = ctrl_rx.recv() => match ctrl {
                Some(c) => {
                    let is_close = c.opcode == OpCode::Close;
                    let frame = Frame::new(true, c.opcode, None, Payload::Owned(c.payload));
                    let r = write_flush(&mut ws, frame).await;
                    if is_close { return; }
                    r
                }
                None => Ok(()),
            },
            first = out_rx.recv() => match first {
                Some(first) => write_batch(&mut ws, &mut out_rx, first, cancelled.as_mut(), &metrics).await,
                None => break,
            },
            _ = ping.tick() => {
                if now_ms().saturating_sub(last_seen.load(Ordering::Relaxed)) > timeout_ms {
                    closer.close(close::PONG_TIMEOUT);
                    break;
                }
                write_flush(&mut ws, Frame::new(true, OpCode::Ping, None, Payload::Borrowed(b"lockstep"))).await
            }
        };
        if step.is_err() {
            if token.is_cancelled() {
                break;
            }
            closer.close(1006);
            return;
        }
    }
    let code = match closer.code() {
        0 => 1000,
        c => c,
    };
    let reason: &[u8] = match code {
        close::SLOW_CONSUMER => b"slow consumer: resume with since_seq",
        close::TOO_BIG => b"message too big",
        close::PONG_TIMEOUT => b"pong timeout",
        close::GOING_AWAY => b"server shutting down",
        close::RESTART => b"room restarted: rejoin with since_seq",
        _ => b"",
    };
    let _ = tokio::time::timeout(
        CLOSE_WRITE_TIMEOUT,
        write_flush(&mut ws, Frame::close(code, reason)),
    )
    .await;
}

async fn write_text<W: AsyncWrite + Unpin>(
    ws: &mut fastwebsockets::WebSocketWrite<W>,
    text: &str,
) -> Result<(), WebSocketError> {
    ws.write_frame(Frame::text(Payload::Borrowed(text.as_bytes())))
        .await
}

async fn write_flush<W: AsyncWrite + Unpin>(
    ws: &mut fastwebsockets::WebSocketWrite<W>,
    frame: Frame<'_>,
) -> Result<(), WebSocketError> {
    ws.write_frame(frame).await?;
    ws.flush().await
}

/// The writer's metric handles, looked up once per connection instead of per frame.
struct WriterMetrics {
    depth: metrics::Histogram,
    delivery: metrics::Histogram,
    frames: metrics::Counter,
}

impl WriterMetrics {
    fn new() -> WriterMetrics {
        WriterMetrics {
            depth: metrics::histogram!(names::GATEWAY_OUTBOUND_QUEUE_DEPTH),
            delivery: metrics::histogram!(names::GATEWAY_EVENT_DELIVERY_LATENCY),
            frames: metrics::counter!(names::GATEWAY_FRAMES_SENT),
        }
    }
}

/// Writes the first frame and whatever else is already queued, then flushes once. A socket
/// that stops draining is abandoned as soon as the connection is asked to close.
async fn write_batch<W: AsyncWrite + Unpin>(
    ws: &mut fastwebsockets::WebSocketWrite<W>,
    out_rx: &mut mpsc::Receiver<OutFrame>,
    first: OutFrame,
    cancelled: std::pin::Pin<&mut tokio_util::sync::WaitForCancellationFuture<'_>>,
    m: &WriterMetrics,
) -> Result<(), WebSocketError> {
    let work = async {
        // What is queued when the writer wakes up: sampled once per batch, not per push.
        let depth = 1 + out_rx.len();
        m.depth.record(depth as f64);
        let mut next = Some(first);
        let mut n = 0;
        while let Some(item) = next.take() {
            match item {
                OutFrame::Event { text, created_ms } => {
                    write_text(ws, &text).await?;
                    let lag = now_ms().saturating_sub(created_ms) as f64 / 1000.0;
                    m.delivery.record(lag);
                    n += 1;
                }
                OutFrame::Direct(text) => {
                    write_text(ws, &text).await?;
                    n += 1;
                }
                OutFrame::Batch(frames) => {
                    for text in &frames {
                        write_text(ws, text).await?;
                    }
                    n += frames.len();
                }
            }
            if n < WRITE_BATCH {
                next = out_rx.try_recv().ok();
            }
        }
        m.frames.increment(n as u64);
        ws.flush().await
    };
    tokio::select! {
        r = work => r,
        _ = cancelled => Err(WebSocketError::ConnectionClosed),
    }
}

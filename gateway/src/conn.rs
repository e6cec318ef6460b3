//! One WebSocket connection, served by one task: it reads client frames, writes the
//! outbound queue, pings, and enforces the pong timeout.
//!
//! Memory is the design constraint: a gateway holds tens of thousands of mostly idle
//! sockets. While a client is quiet the task holds no read or write buffer: it waits for
//! one byte, then reads into a buffer sized for the frame and frees it once the frames are
//! handled; writes are encoded into a buffer that is freed when the queue is empty.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fastwebsockets::{CloseCode, OpCode, WebSocket};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use lockstep_shared::bus::{Caller, ConnId, ToWorker};
use lockstep_shared::metrics as names;
use lockstep_shared::protocol::ErrorCode;
use lockstep_worker::clock::now_ms;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::WaitForCancellationFuture;
use tracing::Instrument;

use crate::auth::Claims;
use crate::fanout::{close, ConnEntry, OutFrame, QueueBound};
use crate::frame::{self, FrameError, Progress};
use crate::outbox::writer_metrics;
use crate::session::Session;
use crate::state::AppState;
use crate::wire::SharedTcp;

type Io = TokioIo<Upgraded>;
type Cancelled<'a, 'b> = std::pin::Pin<&'a mut WaitForCancellationFuture<'b>>;

/// Most frames written before one flush.
const WRITE_BATCH: usize = 128;
/// Read size when a frame's length is not yet known.
const READ_CHUNK: usize = 4096;
/// How long the final close frame may take to write.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the close frame may hold up reporting the departure.
const CLOSE_PROMPTLY: Duration = Duration::from_millis(100);

/// Sets up an upgraded socket and returns the future that serves it until it closes;
/// spawn it as its own task. Set-up happens here, outside the future, so the future (which
/// every held connection keeps in memory) holds only the connection itself.
pub fn serve(
    ws: WebSocket<Io>,
    claims: Claims,
    state: Arc<AppState>,
) -> impl Future<Output = ()> + Send {
    let local = state.next_conn_id();
    let span = tracing::info_span!("conn", conn = local, user = %claims.sub);
    let caller = Caller {
        user_id: claims.sub,
        name: claims.name,
        conn: ConnId {
            gateway: state.fanout.gateway_id(),
            local,
        },
    };
    metrics::gauge!(names::GATEWAY_CONNECTIONS).increment(1.0);
    metrics::counter!(names::GATEWAY_CONNECTIONS_OPENED).increment(1);
    // fastwebsockets did the handshake; nothing has been read through it yet, so taking the
    // stream back loses no bytes and frees its 8 KiB read buffer. A plain TCP stream is
    // shared with the fan-out so it can write without waking the task; TLS stays with the
    // task.
    let upgraded = ws.into_inner().into_inner();
    let queue = QueueBound {
        frames: state.cfg.gateway.outbound_queue,
        bytes: state.cfg.gateway.outbound_queue_bytes,
    };
    let served: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> =
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let tcp = Arc::new(parts.io.into_inner());
                let entry = Arc::new(ConnEntry::new(queue, Some(tcp.clone())));
                let mut socket = Socket::new(SharedTcp(tcp), &state);
                // Bytes the client sent right behind its upgrade request.
                socket.rbuf.extend_from_slice(&parts.read_buf);
                Box::pin(connection(socket, entry, caller, state))
            }
            Err(upgraded) => {
                let entry = Arc::new(ConnEntry::new(queue, None));
                let socket = Socket::new(TokioIo::new(upgraded), &state);
                Box::pin(connection(socket, entry, caller, state))
            }
        };
    served.instrument(span)
}

/// Registers the connection and serves it.
fn connection<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    socket: Socket<S>,
    entry: Arc<ConnEntry>,
    caller: Caller,
    state: Arc<AppState>,
) -> impl Future<Output = ()> + Send {
    state.fanout.register(caller.conn.local, entry.clone());
    let session = Session::new(state, entry, caller);
    Connection { socket, session }.run()
}

/// A served connection: its socket and its session.
struct Connection<S> {
    socket: Socket<S>,
    session: Session,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    async fn run(mut self) {
        tracing::debug!("connected");
        let entry = self.session.entry.clone();
        let state = self.session.state.clone();
        if let Some(code) = self.socket.run(&mut self.session).await {
            entry.closer.close(code);
        }
        let code = match entry.closer.code() {
            0 => 1000,
            c => c,
        };
        // The close frame goes out at once when the socket takes it (a node shutting down
        // must not exit before its clients hear 1001); a client that stopped reading must
        // not hold its presence seat while we wait, so the rest waits until after that.
        let closing = self.socket.queue_close(&entry, code);
        let sent = !closing || Box::pin(self.socket.write_rest(CLOSE_PROMPTLY)).await;
        let conn = self.session.caller.conn;
        for room in state.fanout.leave_all(conn.local) {
            let msg = ToWorker::ConnClosed {
                room,
                conn,
                user_id: self.session.caller.user_id.clone(),
            };
            if let Err(e) = state.link.send(msg).await {
                tracing::warn!(cause = %e.message, "could not report closed connection");
            }
        }
        state.fanout.forget(conn.local);
        if !sent {
            Box::pin(self.socket.write_rest(CLOSE_WRITE_TIMEOUT)).await;
        }
        metrics::gauge!(names::GATEWAY_CONNECTIONS).decrement(1.0);
        metrics::counter!(names::GATEWAY_CONNECTIONS_CLOSED, "code" => code.to_string())
            .increment(1);
        tracing::debug!(code, "closed");
    }
}

/// The socket side of a connection.
struct Socket<S> {
    io: S,
    /// Bytes read and not yet parsed; empty (no allocation) between messages.
    rbuf: Vec<u8>,
    /// The one byte an idle socket waits for.
    probe: [u8; 1],
    /// Bytes the frame at the head of `rbuf` needs in total.
    want: usize,
    /// A fragmented message being assembled.
    partial: Option<(OpCode, Vec<u8>)>,
    /// Frames the task itself owes the client (pongs, pings), written with the next batch.
    own: Vec<u8>,
    /// Encoded frames about to be written; freed when the queue is drained.
    wbuf: Vec<u8>,
    /// How much of `wbuf` is written. A write interrupted by a close keeps its place, so
    /// the close frame follows whole frames (a slow client reads everything, then 4008).
    wpos: usize,
    last_seen: u64,
    max_frame: usize,
    ping_every: Duration,
    timeout_ms: u64,
}

/// A complete message: still in the read buffer, or assembled from fragments.
enum Message {
    InPlace(OpCode, std::ops::Range<usize>),
    Assembled(OpCode, Vec<u8>),
}

/// What woke the connection.
enum Wake {
    Cancelled,
    Read(std::io::Result<usize>),
    Pushed,
    Ping,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Socket<S> {
    fn new(io: S, state: &AppState) -> Socket<S> {
        Socket {
            io,
            rbuf: Vec::new(),
            probe: [0],
            want: 0,
            partial: None,
            own: Vec::new(),
            wbuf: Vec::new(),
            wpos: 0,
            last_seen: now_ms(),
            max_frame: state.cfg.gateway.max_frame_bytes,
            ping_every: Duration::from_millis(state.cfg.gateway.ping_interval_ms),
            timeout_ms: state.cfg.presence.timeout_ms,
        }
    }

    /// Serves until the socket ends or the connection is asked to close; returns the close
    /// code to record when the socket decided it (`None` when the closer already holds one).
    async fn run(&mut self, session: &mut Session) -> Option<u16> {
        let entry = session.entry.clone();
        let token = entry.closer.token().clone();
        // One waiter for the whole connection, not one per wake-up.
        let cancelled = token.cancelled();
        tokio::pin!(cancelled);
        let mut ping = tokio::time::interval(self.ping_every);
        ping.tick().await;
        // Frames that arrived with the upgrade request are handled before waiting for more.
        if !self.rbuf.is_empty() {
            if let Err(code) = Box::pin(self.on_bytes(session, &entry, cancelled.as_mut())).await {
                return code;
            }
        }
        loop {
            let wake = tokio::select! {
                biased;
                _ = &mut cancelled => Wake::Cancelled,
                // Client input is rate limited, so reading first cannot starve writes.
                r = read_some(&mut self.io, &mut self.rbuf, &mut self.probe, self.want) => Wake::Read(r),
                _ = entry.outbox.pushed() => Wake::Pushed,
                _ = ping.tick() => Wake::Ping,
            };
            let step = match wake {
                Wake::Cancelled => return None,
                // Boxed: the task's own future stays as small as its idle wait, and the
                // larger state of handling a wake-up exists only while it runs.
                Wake::Pushed => Box::pin(self.flush(&entry, cancelled.as_mut())).await,
                Wake::Read(Ok(0)) | Wake::Read(Err(_)) => return Some(1006),
                Wake::Read(Ok(_)) => {
                    self.last_seen = now_ms();
                    Box::pin(self.on_bytes(session, &entry, cancelled.as_mut())).await
                }
                Wake::Ping => {
                    if now_ms().saturating_sub(self.last_seen) > self.timeout_ms {
                        return Some(close::PONG_TIMEOUT);
                    }
                    frame::encode(&mut self.own, OpCode::Ping, b"lockstep");
                    Box::pin(self.flush(&entry, cancelled.as_mut())).await
                }
            };
            if let Err(code) = step {
                return code;
            }
        }
    }

    /// Handles every complete frame in the read buffer.
    async fn on_bytes(
        &mut self,
        session: &mut Session,
        entry: &ConnEntry,
        mut cancelled: Cancelled<'_, '_>,
    ) -> Result<(), Option<u16>> {
        let mut off = 0;
        let result = loop {
            let parsed = match frame::parse(&mut self.rbuf[off..], self.max_frame) {
                Ok(Progress::Frame(p)) => p,
                Ok(Progress::Need(n)) => {
                    self.want = n;
                    break Ok(());
                }
                Err(e) => break Err(Some(frame_error_code(e))),
            };
            let start = off + parsed.payload.start;
            let end = off + parsed.payload.end;
            off += parsed.consumed;
            let message = match parsed.opcode {
                OpCode::Close => break Err(Some(close_code(&self.rbuf[start..end]))),
                OpCode::Pong => continue,
                OpCode::Ping => {
                    // Answered before anything the following frames cause.
                    frame::encode(&mut self.own, OpCode::Pong, &self.rbuf[start..end]);
                    if let Err(e) = self.flush(entry, cancelled.as_mut()).await {
                        break Err(e);
                    }
                    continue;
                }
                OpCode::Text | OpCode::Binary if parsed.fin => {
                    if self.partial.is_some() {
                        break Err(Some(close::PROTOCOL));
                    }
                    Message::InPlace(parsed.opcode, start..end)
                }
                OpCode::Text | OpCode::Binary => {
                    if self.partial.is_some() {
                        break Err(Some(close::PROTOCOL));
                    }
                    self.partial = Some((parsed.opcode, self.rbuf[start..end].to_vec()));
                    continue;
                }
                OpCode::Continuation => {
                    let Some((_, buf)) = self.partial.as_mut() else {
                        break Err(Some(close::PROTOCOL));
                    };
                    if buf.len() + (end - start) > self.max_frame {
                        break Err(Some(close::TOO_BIG));
                    }
                    buf.extend_from_slice(&self.rbuf[start..end]);
                    if !parsed.fin {
                        continue;
                    }
                    match self.partial.take() {
                        Some((opcode, bytes)) => Message::Assembled(opcode, bytes),
                        None => break Err(Some(close::PROTOCOL)),
                    }
                }
            };
            let assembled;
            let (opcode, bytes) = match message {
                Message::InPlace(opcode, range) => (opcode, &self.rbuf[range]),
                Message::Assembled(opcode, bytes) => {
                    assembled = bytes;
                    (opcode, &assembled[..])
                }
            };
            if opcode == OpCode::Binary {
                session.reply_error(
                    None,
                    ErrorCode::BadRequest,
                    "binary frames are not supported; send JSON text",
                );
                continue;
            }
            match std::str::from_utf8(bytes) {
                Ok(text) => session.on_text(text).await,
                Err(_) => break Err(Some(1007)),
            }
        };
        self.rbuf.drain(..off);
        if self.rbuf.is_empty() {
            self.rbuf = Vec::new();
            self.want = 0;
        }

        result
    }

    /// Writes everything queued (and the task's own frames), a batch per write, then gives
    /// the socket back to the fan-out; a connection asked to close stops waiting for a
    /// socket that does not drain.
    async fn flush(
        &mut self,
        entry: &ConnEntry,
        mut cancelled: Cancelled<'_, '_>,
    ) -> Result<(), Option<u16>> {
        loop {
            let taken = entry.outbox.take(WRITE_BATCH);
            let m = writer_metrics();
            // A direct write's unwritten tail goes first: it is the rest of a frame.
            self.wbuf.extend_from_slice(&taken.spill);
            if !taken.frames.is_empty() {
                m.depth.record(taken.depth as f64);
            }
            let now = now_ms();
            let mut n = 0u64;
            for item in &taken.frames {
                match item {
                    OutFrame::Event { text, created_ms } => {
                        frame::encode(&mut self.wbuf, OpCode::Text, text.as_bytes());
                        m.delivered(now, *created_ms);
                        n += 1;
                    }
                    OutFrame::Direct(text) => {
                        frame::encode(&mut self.wbuf, OpCode::Text, text.as_bytes());
                        n += 1;
                    }
                    OutFrame::Batch(frames) => {
                        for text in frames {
                            frame::encode(&mut self.wbuf, OpCode::Text, text.as_bytes());
                        }
                        n += frames.len() as u64;
                    }
                }
            }
            drop(taken);
            m.frames.increment(n);
            if !self.own.is_empty() {
                self.wbuf.append(&mut self.own);
                self.own = Vec::new();
            }
            if self.wbuf.is_empty() {
                if entry.outbox.release() {
                    return Ok(());
                }
                continue;
            }
            match self.write_pending(cancelled.as_mut()).await {
                Ok(true) => {}
                Ok(false) => return Err(None),
                Err(_) => return Err(Some(1006)),
            }
        }
    }

    /// Writes the buffer from where the last write stopped, until all of it is out (true,
    /// and the buffer is freed: an idle socket keeps none) or `stop` resolves first (false).
    /// A stopped write keeps its place, so whatever follows starts on a frame boundary.
    async fn write_pending(&mut self, stop: impl Future<Output = ()>) -> std::io::Result<bool> {
        tokio::pin!(stop);
        while self.wpos < self.wbuf.len() {
            let rest = &self.wbuf[self.wpos..];
            let n = tokio::select! {
                r = self.io.write(rest) => r?,
                _ = &mut stop => return Ok(false),
            };
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.wpos += n;
        }
        tokio::select! {
            r = self.io.flush() => r?,
            _ = &mut stop => return Ok(false),
        }
        self.wbuf = Vec::new();
        self.wpos = 0;
        Ok(true)
    }

    /// Queues the close frame after what is left of the last batch (taking the socket
    /// from the fan-out first); false when the socket is broken and nothing should be
    /// written.
    fn queue_close(&mut self, entry: &ConnEntry, code: u16) -> bool {
        if code == 1006 {
            return false;
        }
        // Frames still queued are dropped, but a direct write's tail must be completed.
        let taken = entry.outbox.take(0);
        self.wbuf.extend_from_slice(&taken.spill);
        let reason: &[u8] = match code {
            close::SLOW_CONSUMER => b"slow consumer: resume with since_seq",
            close::TOO_BIG => b"message too big",
            close::PONG_TIMEOUT => b"pong timeout",
            close::GOING_AWAY => b"server shutting down",
            close::RESTART => b"room restarted: rejoin with since_seq",
            _ => b"",
        };
        frame::encode_close(&mut self.wbuf, code, reason);
        true
    }

    /// Writes what is left in the buffer within `limit`; true when all of it went out (or
    /// the socket broke, so there is nothing more to try).
    async fn write_rest(&mut self, limit: Duration) -> bool {
        !matches!(
            self.write_pending(tokio::time::sleep(limit)).await,
            Ok(false)
        )
    }
}

/// Waits for bytes: one byte while idle (so no buffer is held), otherwise a read sized for
/// the frame in progress. Cancel-safe: a read that did not finish consumed nothing.
async fn read_some<S: AsyncRead + Unpin>(
    io: &mut S,
    rbuf: &mut Vec<u8>,
    probe: &mut [u8; 1],
    want: usize,
) -> std::io::Result<usize> {
    if rbuf.is_empty() {
        let n = io.read(probe).await?;
        if n == 1 {
            rbuf.reserve(READ_CHUNK);
            rbuf.push(probe[0]);
        }
        return Ok(n);
    }
    let target = want.max(READ_CHUNK);
    if rbuf.capacity() < target {
        rbuf.reserve(target - rbuf.len());
    }
    io.read_buf(rbuf).await
}

/// The close code a framing error ends the connection with.
fn frame_error_code(e: FrameError) -> u16 {
    tracing::debug!(cause = %e, "protocol error");
    match e {
        FrameError::TooBig => close::TOO_BIG,
        _ => close::PROTOCOL,
    }
}

/// The code to record for a client's close frame: 1000, or 1002 when the frame is malformed.
fn close_code(payload: &[u8]) -> u16 {
    match payload.len() {
        0 => 1000,
        1 => close::PROTOCOL,
        _ => {
            let code = CloseCode::from(u16::from_be_bytes([payload[0], payload[1]]));
            let valid = code.is_allowed() && std::str::from_utf8(&payload[2..]).is_ok();
            if valid {
                1000
            } else {
                close::PROTOCOL
            }
        }
    }
}

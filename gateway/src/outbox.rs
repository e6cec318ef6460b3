//! A connection's outbound path: a bounded queue its socket task drains, and, for plain
//! TCP sockets, a direct write from the fan-out when nothing is queued.
//!
//! Writing from the fan-out saves a task wake-up per delivery, the largest user-space cost
//! of fan-out after the system call itself. The rule that keeps bytes in order: the
//! fan-out may write only while the socket task is not `busy`, and both sides decide under
//! the same lock. A direct write that the kernel takes only partly leaves its tail as
//! `spill` and hands the socket to the task, which writes the tail before anything else.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex, OnceLock};

use fastwebsockets::OpCode;
use lockstep_shared::metrics as names;
use lockstep_worker::clock::now_ms;
use tokio::net::TcpStream;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use crate::fanout::OutFrame;
use crate::frame;

/// What became of a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Handed to the kernel (perhaps partly, the rest to the task).
    Written,
    /// Queued for the socket task.
    Queued,
    /// The queue is at its bound: the client reads too slowly.
    Full,
    /// The socket failed.
    Broken,
}

/// Metric handles shared by every connection (none of these metrics has labels).
pub struct WriterMetrics {
    pub depth: metrics::Histogram,
    pub delivery: metrics::Histogram,
    pub frames: metrics::Counter,
}

impl WriterMetrics {
    /// Records one event's delivery latency (server clock, from its creation).
    pub fn delivered(&self, now_ms: u64, created_ms: u64) {
        self.delivery
            .record(now_ms.saturating_sub(created_ms) as f64 / 1000.0);
    }
}

/// The process's writer metric handles, looked up once rather than per frame or per socket.
pub fn writer_metrics() -> &'static WriterMetrics {
    static HANDLES: OnceLock<WriterMetrics> = OnceLock::new();
    HANDLES.get_or_init(|| WriterMetrics {
        depth: metrics::histogram!(names::GATEWAY_OUTBOUND_QUEUE_DEPTH),
        delivery: metrics::histogram!(names::GATEWAY_EVENT_DELIVERY_LATENCY),
        frames: metrics::counter!(names::GATEWAY_FRAMES_SENT),
    })
}

/// How much a connection's queue may hold before the client counts as too slow (4008).
/// Bytes as well as frames: frames range from a 100-byte chat to a whole-queue `queue.update`
/// or a join snapshot of hundreds of KB, and a queued frame keeps its text alive.
#[derive(Debug, Clone, Copy)]
pub struct QueueBound {
    /// `gateway.outbound_queue`.
    pub frames: usize,
    /// `gateway.outbound_queue_bytes`; one frame always fits an empty queue, however large.
    pub bytes: usize,
}

impl QueueBound {
    /// A bound by frame count only.
    pub fn frames(frames: usize) -> QueueBound {
        QueueBound {
            frames,
            bytes: usize::MAX,
        }
    }
}

#[derive(Default)]
struct State {
    queue: VecDeque<OutFrame>,
    /// Text bytes in `queue`.
    bytes: usize,
    /// The unwritten tail of a frame the fan-out began writing.
    spill: Vec<u8>,
    /// The socket task has work or is writing: the fan-out must queue.
    busy: bool,
}

/// One connection's outbound frames.
pub struct Outbox {
    state: Mutex<State>,
    bound: QueueBound,
    wake: Notify,
    /// The socket, when it is plain TCP (TLS records must be written by the task).
    direct: Option<Arc<TcpStream>>,
}

/// What the socket task takes in one go.
pub struct Taken {
    /// Bytes that must be written before anything else.
    pub spill: Vec<u8>,
    pub frames: VecDeque<OutFrame>,
    /// Frames that were queued, for the depth histogram.
    pub depth: usize,
}

impl Outbox {
    /// A queue holding at most `bound`.
    pub fn new(bound: QueueBound, direct: Option<Arc<TcpStream>>) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            bound: QueueBound {
                frames: bound.frames.max(1),
                bytes: bound.bytes,
            },
            wake: Notify::new(),
            direct,
        }
    }

    /// Writes the frame now if `direct` is allowed, the socket is free and takes it;
    /// otherwise queues it.
    pub fn push(&self, item: OutFrame, direct: bool) -> Pushed {
        let Ok(mut s) = self.state.lock() else {
            return Pushed::Broken;
        };
        if let (true, false, Some(tcp)) = (direct, s.busy, &self.direct) {
            let (text, created_ms) = match &item {
                OutFrame::Event { text, created_ms } => (Some(text), Some(*created_ms)),
                OutFrame::Direct(text) => (Some(text), None),
                OutFrame::Batch(_) => (None, None),
            };
            if let Some(text) = text {
                match write_direct(tcp, text.as_bytes()) {
                    Ok(Some(rest)) => {
                        let m = writer_metrics();
                        m.frames.increment(1);
                        if let Some(created) = created_ms {
                            m.delivered(now_ms(), created);
                        }
                        if !rest.is_empty() {
                            s.spill = rest;
                            s.busy = true;
                            drop(s);
                            self.wake.notify_one();
                        }
                        return Pushed::Written;
                    }
                    // The socket buffer is full: queue, and let the task wait for room.
                    Ok(None) => {}
                    Err(_) => return Pushed::Broken,
                }
            }
        }
        let size = item.text_bytes();
        let over_bytes = s.bytes.saturating_add(size) > self.bound.bytes;
        if s.queue.len() >= self.bound.frames || (over_bytes && !s.queue.is_empty()) {
            return Pushed::Full;
        }
        s.bytes += size;
        s.queue.push_back(item);
        s.busy = true;
        drop(s);
        self.wake.notify_one();
        Pushed::Queued
    }

    /// Resolves once something was queued since the last call (a push while nobody waits
    /// is remembered), so the socket task never misses a frame.
    pub fn pushed(&self) -> Notified<'_> {
        self.wake.notified()
    }

    /// Takes the spill and up to `max` queued frames, and the socket with them: until
    /// `release`, the fan-out only queues. Taking the whole deque when it fits leaves the
    /// outbox with no allocation at all.
    pub fn take(&self, max: usize) -> Taken {
        let Ok(mut s) = self.state.lock() else {
            return Taken {
                spill: Vec::new(),
                frames: VecDeque::new(),
                depth: 0,
            };
        };
        s.busy = true;
        let depth = s.queue.len();
        let frames: VecDeque<OutFrame> = if depth <= max {
            s.bytes = 0;
            std::mem::take(&mut s.queue)
        } else {
            let taken: VecDeque<OutFrame> = s.queue.drain(..max).collect();
            let size: usize = taken.iter().map(OutFrame::text_bytes).sum();
            s.bytes = s.bytes.saturating_sub(size);
            taken
        };
        Taken {
            spill: std::mem::take(&mut s.spill),
            frames,
            depth,
        }
    }

    /// Gives the socket back to the fan-out if nothing is left to write; false when more
    /// arrived meanwhile (take again).
    pub fn release(&self) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return true;
        };
        if s.queue.is_empty() && s.spill.is_empty() {
            s.busy = false;
            true
        } else {
            false
        }
    }
}

/// One text frame straight into the socket without waiting. `Ok(Some(rest))`: written,
/// `rest` being whatever the kernel did not take (empty when it took it all); `Ok(None)`:
/// nothing written, the socket buffer is full.
fn write_direct(tcp: &TcpStream, payload: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let (head, n) = frame::head(OpCode::Text, payload);
    let head = &head[..n];
    let written = match tcp.try_write_vectored(&[IoSlice::new(head), IoSlice::new(payload)]) {
        Ok(w) => w,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
        Err(e) => return Err(e),
    };
    if written == 0 {
        return Ok(None);
    }
    let mut rest = Vec::new();
    if written < head.len() + payload.len() {
        rest.extend_from_slice(&head[written.min(head.len())..]);
        rest.extend_from_slice(&payload[written.saturating_sub(head.len())..]);
    }
    Ok(Some(rest))
}

#[cfg(test)]
#[path = "outbox_tests.rs"]
mod tests;

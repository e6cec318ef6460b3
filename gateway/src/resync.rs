//! Filling gaps in a room's event stream without closing sockets. Messages published while a
//! gateway's bus subscription is down (Redis restarting, a subscriber Redis dropped for its
//! output buffer) are lost to it. Instead of closing every socket (each client rejoining by
//! `seq`: a reconnect storm), the gateway asks each room's owner for the events after the last
//! one it delivered (`ToWorker::Resync`), holds the room's live events back meanwhile, and
//! hands the members what they missed when the replay comes (`ToGateway::Replay`). Only
//! members it cannot make whole are closed with 1012: those whose reply may have been lost,
//! those the room forgot, those whose gap the room's history no longer covers, and every
//! member of a room whose owner does not answer in time.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use lockstep_shared::bus::{ConnId, ToWorker, WorkerLink};
use lockstep_shared::metrics as names;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::fanout::{close, Fanout, LocalRoom, OutFrame};

/// `LocalRoom::resync` of a room that could not be resynced: its members were closed, its
/// events are dropped until a new member's join starts the stream again.
pub const ABANDONED: u64 = u64::MAX;

/// Rooms waiting to be asked for (and, separately, waiting for their replay); past this a
/// room's members are closed (1012) instead.
pub const QUEUE: usize = 65_536;
/// Resync requests being published at once.
const IN_FLIGHT: usize = 64;
/// How long a room's live events are held back waiting for its replay; then its members are
/// closed (1012) and rejoin by `seq`.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// One room to ask its owner for again.
#[derive(Debug)]
pub struct ResyncRequest {
    pub room: String,
    pub req: u64,
    pub since_seq: u64,
    pub conns: Vec<ConnId>,
}

/// The bounded queue between the fan-out (which notices gaps) and [`run`] (which asks).
pub fn channel() -> (mpsc::Sender<ResyncRequest>, mpsc::Receiver<ResyncRequest>) {
    mpsc::channel(QUEUE)
}

impl Fanout {
    /// The bus subscription was lost and is back: whatever was published meanwhile is gone.
    /// Connections waiting for a reply are closed (the reply may be among the lost; their
    /// clients rejoin and retry by id), and every room is resynced.
    pub fn bus_gap(&self) {
        let Ok(map) = self.rooms.read() else {
            return;
        };
        let entries: Vec<(u64, Arc<crate::fanout::ConnEntry>)> = self
            .conns
            .read()
            .map(|c| c.iter().map(|(k, v)| (*k, v.clone())).collect())
            .unwrap_or_default();
        let mut waiting = 0;
        for (local, entry) in entries {
            let replies_due = entry.inflight.lock().map(|m| !m.is_empty()).unwrap_or(true);
            // A room in `rooms` but without this member: its join is unanswered.
            let joining = entry.rooms.lock().map_or(true, |rooms| {
                rooms.iter().any(|room| {
                    map.get(room)
                        .is_none_or(|r| !r.members.contains_key(&local))
                })
            });
            if replies_due || joining {
                entry.closer.close(close::RESTART);
                waiting += 1;
            }
        }
        tracing::warn!(
            rooms = map.len(),
            closed = waiting,
            "bus reconnected: asking every room for the events missed meanwhile; closing the \
             sockets that were waiting for a reply"
        );
        for (code, room) in map.iter() {
            self.start_resync(code, room);
        }
    }

    /// Holds `room`'s live events back and queues a request for everything after the last
    /// event delivered. Called with the rooms lock held (read or write): atomics only.
    pub(crate) fn start_resync(&self, code: &str, room: &LocalRoom) {
        let conns: Vec<ConnId> = room
            .members
            .iter()
            .filter(|(_, m)| m.entry.closer.code() == 0)
            .map(|(local, _)| ConnId {
                gateway: self.gateway_id(),
                local: *local,
            })
            .collect();
        if conns.is_empty() {
            // Everyone here is closing: nothing to fill.
            room.resync.store(ABANDONED, Ordering::SeqCst);
            return;
        }
        let req = self.next_resync.fetch_add(1, Ordering::SeqCst);
        room.resync.store(req, Ordering::SeqCst);
        let request = ResyncRequest {
            room: code.to_owned(),
            req,
            since_seq: room.last_seq.load(Ordering::SeqCst),
            conns,
        };
        let queued = self
            .resyncer
            .get()
            .is_some_and(|tx| tx.try_send(request).is_ok());
        if !queued {
            give_up(room, "queue_full");
        }
    }

    /// A member's join was answered at `seq` in a room already here.
    pub(crate) fn joined_known_room(&self, code: &str, room: &LocalRoom, seq: u64) {
        match room.resync.load(Ordering::SeqCst) {
            // The stream starts again from this join; the closed members are on their way out.
            ABANDONED => {
                room.last_seq.store(seq, Ordering::SeqCst);
                room.resync.store(0, Ordering::SeqCst);
            }
            // Events up to the join arrive before its reply: if they did not, some were lost.
            0 if seq > room.last_seq.load(Ordering::SeqCst) => self.start_resync(code, room),
            _ => {}
        }
    }

    /// The owner's answer to resync `req`: each member gets the events after the later of
    /// its join and the room's last delivered event; a member whose gap starts before
    /// `first_seq` (no longer in the room's history) is closed to rejoin with a snapshot.
    pub(crate) fn replay(&self, code: &str, req: u64, first_seq: u64, frames: Vec<Arc<str>>) {
        let Ok(map) = self.rooms.read() else {
            return;
        };
        let Some(room) = map.get(code) else {
            return;
        };
        // An earlier resync's answer (a newer one is under way), or one given up on.
        if room.resync.load(Ordering::SeqCst) != req {
            return;
        }
        let from = room.last_seq.load(Ordering::SeqCst);
        for member in room.members.values() {
            let since = member.joined_seq.max(from);
            if first_seq > since + 1 {
                member.entry.closer.close(close::RESTART);
                continue;
            }
            let skip = usize::try_from(since + 1 - first_seq).unwrap_or(usize::MAX);
            let missed: Vec<Arc<str>> = frames.iter().skip(skip).cloned().collect();
            if !missed.is_empty() {
                member.entry.push(OutFrame::Batch(missed));
            }
        }
        let last = (first_seq + frames.len() as u64)
            .saturating_sub(1)
            .max(from);
        room.last_seq.store(last, Ordering::SeqCst);
        room.resync.store(0, Ordering::SeqCst);
        metrics::counter!(names::GATEWAY_ROOM_RESYNCS, "outcome" => "replayed").increment(1);
        metrics::counter!(names::GATEWAY_RESYNC_RECOVERED).increment(last - from);
    }

    /// Resync `req` of `code` failed (`outcome`): its members are closed to rejoin by `seq`.
    /// Whether the room was still waiting for it.
    pub fn abandon_resync(&self, code: &str, req: u64, outcome: &'static str) -> bool {
        let Ok(map) = self.rooms.read() else {
            return false;
        };
        match map.get(code) {
            Some(room) if room.resync.load(Ordering::SeqCst) == req => {
                give_up(room, outcome);
                true
            }
            _ => false,
        }
    }
}

fn give_up(room: &LocalRoom, outcome: &'static str) {
    room.resync.store(ABANDONED, Ordering::SeqCst);
    for member in room.members.values() {
        member.entry.closer.close(close::RESTART);
    }
    metrics::counter!(names::GATEWAY_ROOM_RESYNCS, "outcome" => outcome).increment(1);
}

/// Sends the queued resync requests to the rooms' owners, a few at a time, and gives up on
/// rooms whose replay does not come within [`TIMEOUT`].
pub async fn run(
    mut rx: mpsc::Receiver<ResyncRequest>,
    link: Arc<dyn WorkerLink>,
    fanout: Arc<Fanout>,
    cancel: CancellationToken,
) {
    let gateway = fanout.gateway_id();
    let mut sending = FuturesUnordered::new();
    // The timeout is the same for every request: deadlines come due in the order sent.
    let mut deadlines: VecDeque<(Instant, String, u64)> = VecDeque::new();
    loop {
        let next = deadlines.front().map(|d| d.0);
        tokio::select! {
            _ = cancel.cancelled() => return,
            // Both bounds hold the queue back; when it is full, rooms give up (`queue_full`).
            Some(r) = rx.recv(), if sending.len() < IN_FLIGHT && deadlines.len() < QUEUE => {
                let link = link.clone();
                sending.push(async move {
                    let ResyncRequest { room, req, since_seq, conns } = r;
                    let msg = ToWorker::Resync { room: room.clone(), gateway, req, since_seq, conns };
                    let sent = link.send(msg).await;
                    (room, req, sent)
                });
            }
            Some((room, req, sent)) = sending.next(), if !sending.is_empty() => match sent {
                Ok(()) => deadlines.push_back((Instant::now() + TIMEOUT, room, req)),
                Err(refusal) => {
                    tracing::warn!(room = %room, cause = %refusal.message, "resync refused; closing the room's members");
                    fanout.abandon_resync(&room, req, "refused");
                }
            },
            _ = async { if let Some(at) = next { tokio::time::sleep_until(at).await } }, if next.is_some() => {
                let now = Instant::now();
                while let Some((_, room, req)) = deadlines.front().filter(|d| d.0 <= now).cloned() {
                    deadlines.pop_front();
                    if fanout.abandon_resync(&room, req, "timed_out") {
                        tracing::warn!(room = %room, "no replay in time; closing the room's members");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "resync_tests.rs"]
mod tests;

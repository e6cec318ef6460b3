//! Filling gaps in a room's event stream without closing sockets. Messages published while a
//! gateway's bus subscription is down (Redis restarting, a subscriber Redis dropped for its
//! output buffer) are lost to it. Instead of closing every socket (each client rejoining by
//! `seq`: a reconnect storm), the gateway asks each room's owner for the events after the last
//! one it delivered (`ToWorker::Resync`), holds the room's live events back meanwhile, and
//! hands the members what they missed when the replay comes (`ToGateway::Replay`). Only
//! members it cannot make whole are closed with 1012: those whose reply was lost (still
//! unanswered [`REPLY_GRACE`] after the gap), those the room forgot, those whose gap the room's
//! history no longer covers, and every member of a room whose owner does not answer in time.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use lockstep_shared::bus::{ConnId, ToWorker, WorkerLink};
use lockstep_shared::metrics as names;
use lockstep_shared::protocol::error::Refusal;
use lockstep_shared::protocol::ErrorCode;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;

use crate::fanout::{close, ConnEntry, Fanout, LocalRoom, OutFrame};

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

/// A resync no worker took (none subscribed to the room's shard yet: just after a Redis
/// restart the gateways may be back before the workers) is sent again after this pause,
/// doubling up to [`RETRY_PAUSE_MAX`], until [`TIMEOUT`] after its first attempt.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(1);

/// How long a reply due when the bus came back may still take: most were not lost (commands
/// held while Redis was away are answered once it is back); a socket still waiting after it
/// is closed (1012), and its client rejoins and retries by id.
pub const REPLY_GRACE: Duration = Duration::from_secs(2);

/// Work for [`run`], queued by the fan-out.
#[derive(Debug)]
pub enum Job {
    /// A room to ask its owner for again.
    Room(ResyncRequest),
    /// The sockets that were waiting for replies when the bus came back, to check later.
    Replies(Vec<Waiting>),
}

/// One room to ask its owner for again.
#[derive(Debug, Clone)]
pub struct ResyncRequest {
    pub room: String,
    pub req: u64,
    pub since_seq: u64,
    pub conns: Vec<ConnId>,
}

/// A socket waiting, when the bus came back, for these command replies and these joins.
#[derive(Debug)]
pub struct Waiting {
    pub local: u64,
    pub ids: Vec<String>,
    pub joining: Vec<String>,
}

/// The bounded queue between the fan-out (which notices gaps) and [`run`] (which asks).
pub fn channel() -> (mpsc::Sender<Job>, mpsc::Receiver<Job>) {
    mpsc::channel(QUEUE)
}

impl Fanout {
    /// The bus subscription was lost and is back: whatever was published meanwhile is gone.
    /// Every room is resynced; the sockets waiting for a reply are checked again after
    /// [`REPLY_GRACE`] (the reply may be among the lost).
    pub fn bus_gap(&self) {
        let Ok(map) = self.rooms.read() else {
            return;
        };
        let entries: Vec<(u64, Arc<ConnEntry>)> = self
            .conns
            .read()
            .map(|c| c.iter().map(|(k, v)| (*k, v.clone())).collect())
            .unwrap_or_default();
        let mut waiting = Vec::new();
        for (local, entry) in entries {
            let ids: Vec<String> = entry
                .inflight
                .lock()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            // A room in `rooms` without this member: its join is unanswered.
            let joining: Vec<String> = entry
                .rooms
                .lock()
                .map(|rooms| {
                    rooms
                        .iter()
                        .filter(|room| !is_member(&map, room, local))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            if !ids.is_empty() || !joining.is_empty() {
                waiting.push(Waiting {
                    local,
                    ids,
                    joining,
                });
            }
        }
        tracing::warn!(
            rooms = map.len(),
            waiting = waiting.len(),
            "bus reconnected: asking every room for the events missed meanwhile"
        );
        if !waiting.is_empty() {
            if let Err(e) = self.queue(Job::Replies(waiting)) {
                if let Job::Replies(waiting) = e.into_inner() {
                    self.close_unanswered_in(&map, &waiting);
                }
            }
        }
        for (code, room) in map.iter() {
            self.start_resync(code, room);
        }
    }

    /// Closes the sockets among `waiting` still without a reply or join answer they were
    /// waiting for at the bus gap: it was lost. Returns how many.
    fn close_unanswered(&self, waiting: &[Waiting]) -> usize {
        match self.rooms.read() {
            Ok(map) => self.close_unanswered_in(&map, waiting),
            Err(_) => 0,
        }
    }

    fn close_unanswered_in(&self, map: &HashMap<String, LocalRoom>, waiting: &[Waiting]) -> usize {
        let Ok(conns) = self.conns.read() else {
            return 0;
        };
        let mut closed = 0;
        for w in waiting {
            let Some(entry) = conns.get(&w.local) else {
                continue;
            };
            let replied = entry
                .inflight
                .lock()
                .map(|m| !w.ids.iter().any(|id| m.contains_key(id)))
                .unwrap_or(false);
            let answered = entry.rooms.lock().is_ok_and(|rooms| {
                w.joining
                    .iter()
                    .all(|room| !rooms.contains(room) || is_member(map, room, w.local))
            });
            if !(replied && answered) && entry.closer.code() == 0 {
                entry.closer.close(close::RESTART);
                closed += 1;
            }
        }
        closed
    }

    fn queue(&self, job: Job) -> Result<(), mpsc::error::TrySendError<Job>> {
        match self.resyncer.get() {
            Some(tx) => tx.try_send(job),
            None => Err(mpsc::error::TrySendError::Closed(job)),
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
        if self.queue(Job::Room(request)).is_err() {
            give_up(room, "queue_full");
        }
    }

    /// The room's owner says the room got to `seq` (`ToGateway::RoomHead`, sent once the room
    /// is quiet): behind it, this gateway lost the room's last events on the bus.
    pub(crate) fn room_head(&self, code: &str, seq: u64) {
        let Ok(map) = self.rooms.read() else {
            return;
        };
        let Some(room) = map.get(code) else {
            return;
        };
        let last = room.last_seq.load(Ordering::SeqCst);
        if room.resync.load(Ordering::SeqCst) != 0 || seq <= last {
            return;
        }
        metrics::counter!(names::GATEWAY_ROOM_HEADS_BEHIND).increment(1);
        tracing::warn!(
            room = code,
            head = seq,
            last,
            "room's last events were lost on the bus; resyncing"
        );
        self.start_resync(code, room);
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

    /// Whether `code` still waits for resync `req` (not answered, given up or superseded).
    fn awaits_resync(&self, code: &str, req: u64) -> bool {
        self.rooms.read().is_ok_and(|map| {
            map.get(code)
                .is_some_and(|room| room.resync.load(Ordering::SeqCst) == req)
        })
    }

    /// Resync `req` of `code` failed (`outcome`): its members are closed to rejoin by `seq`.
    /// Whether the room was still waiting for it.
    fn abandon_resync(&self, code: &str, req: u64, outcome: &'static str) -> bool {
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

fn is_member(map: &HashMap<String, LocalRoom>, room: &str, local: u64) -> bool {
    map.get(room)
        .is_some_and(|r| r.members.contains_key(&local))
}

fn give_up(room: &LocalRoom, outcome: &'static str) {
    room.resync.store(ABANDONED, Ordering::SeqCst);
    for member in room.members.values() {
        member.entry.closer.close(close::RESTART);
    }
    metrics::counter!(names::GATEWAY_ROOM_RESYNCS, "outcome" => outcome).increment(1);
}

/// Publishes one resync request; returns it with the outcome, to be tried again if refused.
async fn send(
    link: Arc<dyn WorkerLink>,
    gateway: u64,
    request: ResyncRequest,
    first: Instant,
    pause: Duration,
) -> (ResyncRequest, Instant, Duration, Result<(), Refusal>) {
    let msg = ToWorker::Resync {
        room: request.room.clone(),
        gateway,
        req: request.req,
        since_seq: request.since_seq,
        conns: request.conns.clone(),
    };
    let sent = link.send(msg).await;
    (request, first, pause, sent)
}

/// Sends the queued resync requests to the rooms' owners, a few at a time (again, with backoff,
/// while no worker takes them), gives up on rooms whose replay does not come within
/// [`TIMEOUT`], and closes the sockets still waiting for a reply [`REPLY_GRACE`] after a bus gap.
pub async fn run(
    mut rx: mpsc::Receiver<Job>,
    link: Arc<dyn WorkerLink>,
    fanout: Arc<Fanout>,
    cancel: CancellationToken,
) {
    let gateway = fanout.gateway_id();
    let mut sending = FuturesUnordered::new();
    // Each timeout is the same for every entry: deadlines come due in the order queued.
    let mut rooms_due: VecDeque<(Instant, String, u64)> = VecDeque::new();
    let mut replies_due: VecDeque<(Instant, Vec<Waiting>)> = VecDeque::new();
    // Refused requests waiting to be sent again, with their first attempt and next pause.
    let mut retries: DelayQueue<(ResyncRequest, Instant, Duration)> = DelayQueue::new();
    loop {
        let next = [
            rooms_due.front().map(|d| d.0),
            replies_due.front().map(|d| d.0),
        ]
        .into_iter()
        .flatten()
        .min();
        tokio::select! {
            _ = cancel.cancelled() => return,
            // Both bounds hold the queue back; when it is full, rooms give up (`queue_full`).
            Some(job) = rx.recv(), if sending.len() < IN_FLIGHT && rooms_due.len() < QUEUE && retries.len() < QUEUE => match job {
                Job::Room(r) => sending.push(send(link.clone(), gateway, r, Instant::now(), RETRY_PAUSE)),
                Job::Replies(waiting) => replies_due.push_back((Instant::now() + REPLY_GRACE, waiting)),
            },
            Some((request, first, pause, sent)) = sending.next(), if !sending.is_empty() => match sent {
                Ok(()) => rooms_due.push_back((Instant::now() + TIMEOUT, request.room, request.req)),
                Err(refusal) => {
                    let now = Instant::now();
                    let (room, req) = (request.room.as_str(), request.req);
                    if !fanout.awaits_resync(room, req) {
                        continue;
                    }
                    if refusal.code == ErrorCode::Unavailable && now + pause < first + TIMEOUT {
                        let next_pause = (pause * 2).min(RETRY_PAUSE_MAX);
                        retries.insert((request, first, next_pause), pause);
                    } else {
                        tracing::warn!(room = %room, cause = %refusal.message, "resync refused; closing the room's members");
                        fanout.abandon_resync(room, req, "refused");
                    }
                }
            },
            Some(due) = retries.next(), if !retries.is_empty() => {
                let (request, first, pause) = due.into_inner();
                sending.push(send(link.clone(), gateway, request, first, pause));
            }
            _ = async { if let Some(at) = next { tokio::time::sleep_until(at).await } }, if next.is_some() => {
                let now = Instant::now();
                while let Some((_, room, req)) = pop_due(&mut rooms_due, now, |d| d.0) {
                    if fanout.abandon_resync(&room, req, "timed_out") {
                        tracing::warn!(room = %room, "no replay in time; closing the room's members");
                    }
                }
                while let Some((_, waiting)) = pop_due(&mut replies_due, now, |d| d.0) {
                    let closed = fanout.close_unanswered(&waiting);
                    tracing::info!(waiting = waiting.len(), closed, "replies due at the bus gap: sockets still waiting closed");
                }
            }
        }
    }
}

/// The front of `queue` if it is due by `now`.
fn pop_due<T>(queue: &mut VecDeque<T>, now: Instant, due: impl Fn(&T) -> Instant) -> Option<T> {
    if queue.front().is_some_and(|d| due(d) <= now) {
        queue.pop_front()
    } else {
        None
    }
}

#[cfg(test)]
#[path = "resync_tests.rs"]
mod tests;

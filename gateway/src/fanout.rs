//! Local fan-out: which of this gateway's connections are in which room, and a bounded
//! outbound queue per connection. Delivery never waits: a full queue closes that connection
//! with 4008 (it resumes by `seq`), so one slow client never slows a room (invariant 6).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

use lockstep_shared::bus::{ConnId, GatewaySink, Membership, ToGateway};
use lockstep_shared::metrics as names;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use crate::outbox::QueueBound;
use crate::outbox::{Outbox, Pushed};
use crate::resync::Job;

/// Close codes this gateway uses.
pub mod close {
    /// Server shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol violation.
    pub const PROTOCOL: u16 = 1002;
    /// Message over `gateway.max_frame_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// The room was reloaded; rejoin with `since_seq`.
    pub const RESTART: u16 = 1012;
    /// No pong (or any frame) within `presence.timeout_ms`.
    pub const PONG_TIMEOUT: u16 = 4002;
    /// Outbound queue overflowed: the client read too slowly.
    pub const SLOW_CONSUMER: u16 = 4008;
}

/// Rooms with more local members than this fan out through the socket tasks instead of
/// writing each socket from the fan-out: one system call per member on the delivering
/// thread is cheaper than a wake-up for a room of tens, but for thousands it serializes
/// every write on one thread and loses the batching a woken task does (a join storm in a
/// 5,000-member room sends ~12.5 M presence frames: the tasks write them in batches).
const DIRECT_WRITE_MAX_MEMBERS: usize = 128;

/// Most command ids tracked per connection (for latency and the reply deadline, `deadline`);
/// commands beyond it are neither measured nor answered by the gateway when late.
const MAX_INFLIGHT: usize = 1_024;

/// One item of a socket's outbound queue.
pub enum OutFrame {
    /// A room event; `created_ms` (server ms) feeds the delivery latency histogram.
    Event { text: Arc<str>, created_ms: u64 },
    /// A reply or direct frame.
    Direct(Arc<str>),
    /// A reply followed by replayed events: one queue slot, so a recovery replay (bounded
    /// by the room history) never overflows the queue by itself.
    Batch(Vec<Arc<str>>),
}

impl OutFrame {
    /// Text bytes, for the queue's byte bound.
    pub fn text_bytes(&self) -> usize {
        match self {
            OutFrame::Event { text, .. } | OutFrame::Direct(text) => text.len(),
            OutFrame::Batch(texts) => texts.iter().map(|t| t.len()).sum(),
        }
    }
}

/// Asks a connection to close with a code; the first code wins.
#[derive(Default)]
pub struct Closer {
    code: AtomicU16,
    token: CancellationToken,
}

impl Closer {
    pub fn close(&self, code: u16) {
        let _ = self
            .code
            .compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst);
        self.token.cancel();
    }

    pub fn code(&self) -> u16 {
        self.code.load(Ordering::SeqCst)
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

/// What the fan-out knows about one connection.
pub struct ConnEntry {
    pub outbox: Outbox,
    pub closer: Closer,
    /// Rooms joined or being joined; each gets a `ConnClosed` when the socket goes.
    pub rooms: Mutex<HashSet<String>>,
    /// Command id → (type, received): the ack latency histogram and the reply deadline.
    pub inflight: Mutex<HashMap<String, (&'static str, Instant)>>,
}

impl ConnEntry {
    /// An entry whose queue holds at most `bound`; `direct` is the socket when the fan-out
    /// may write to it itself (plain TCP).
    pub fn new(bound: QueueBound, direct: Option<Arc<TcpStream>>) -> ConnEntry {
        ConnEntry {
            outbox: Outbox::new(bound, direct),
            closer: Closer::default(),
            rooms: Mutex::new(HashSet::new()),
            inflight: Mutex::new(HashMap::new()),
        }
    }

    /// Sends or queues a frame, closing the connection with 4008 when its queue is full.
    pub fn push(&self, item: OutFrame) {
        self.push_with(item, true);
    }

    /// `direct: false` always queues (see `DIRECT_WRITE_MAX_MEMBERS`).
    fn push_with(&self, item: OutFrame, direct: bool) {
        if self.closer.code() != 0 {
            return;
        }
        match self.outbox.push(item, direct) {
            Pushed::Written | Pushed::Queued => {}
            Pushed::Full => {
                metrics::counter!(names::GATEWAY_OUTBOUND_OVERFLOW).increment(1);
                self.closer.close(close::SLOW_CONSUMER);
            }
            Pushed::Broken => self.closer.close(1006),
        }
    }

    /// Remembers when a command was received, for its reply's latency.
    pub fn track(&self, id: &str, kind: &'static str) {
        if let Ok(mut map) = self.inflight.lock() {
            if map.len() < MAX_INFLIGHT {
                map.insert(id.to_owned(), (kind, Instant::now()));
            }
        }
    }

    /// Ends a command's latency measurement (its reply, or a refusal the gateway wrote).
    pub fn observe_reply(&self, id: &str) {
        let found = self.inflight.lock().ok().and_then(|mut m| {
            let found = m.remove(id);
            if m.is_empty() {
                // A map keeps its table when emptied; an idle connection should not.
                *m = HashMap::new();
            }
            found
        });
        if let Some((kind, started)) = found {
            metrics::histogram!(names::GATEWAY_COMMAND_LATENCY, "type" => kind)
                .record(started.elapsed().as_secs_f64());
        }
    }
}

/// One room as this gateway sees it: its local members, and how far its event stream got
/// here, so that a gap (events lost on the bus) is noticed and filled (`resync`).
pub(crate) struct LocalRoom {
    pub(crate) members: HashMap<u64, LocalMember>,
    /// The seq of the last event delivered here, or of the first local member's join.
    pub(crate) last_seq: AtomicU64,
    /// Nonzero while resync number `n` is under way (live events are held back: its replay
    /// carries them), or [`ABANDONED`](crate::resync::ABANDONED).
    pub(crate) resync: AtomicU64,
}

impl LocalRoom {
    fn new(seq: u64) -> LocalRoom {
        LocalRoom {
            members: HashMap::new(),
            last_seq: AtomicU64::new(seq),
            resync: AtomicU64::new(0),
        }
    }
}

/// A local member: its connection, and the seq its join was answered at (its events start
/// after it).
pub(crate) struct LocalMember {
    pub(crate) entry: Arc<ConnEntry>,
    pub(crate) joined_seq: u64,
}

/// This gateway's connections and room memberships.
pub struct Fanout {
    gateway_id: u64,
    pub(crate) conns: RwLock<HashMap<u64, Arc<ConnEntry>>>,
    pub(crate) rooms: RwLock<HashMap<String, LocalRoom>>,
    /// Where rooms that missed events are sent to be asked for again (cluster mode only).
    pub(crate) resyncer: OnceLock<mpsc::Sender<Job>>,
    pub(crate) next_resync: AtomicU64,
}

impl Fanout {
    pub fn new(gateway_id: u64) -> Fanout {
        Fanout {
            gateway_id,
            conns: RwLock::new(HashMap::new()),
            rooms: RwLock::new(HashMap::new()),
            resyncer: OnceLock::new(),
            next_resync: AtomicU64::new(1),
        }
    }

    /// Lets gaps in a room's events be filled by asking its owner again (`resync::run`
    /// drains the other end); without it a gap closes the room's members with 1012.
    pub fn set_resyncer(&self, tx: mpsc::Sender<Job>) {
        let _ = self.resyncer.set(tx);
    }

    pub fn gateway_id(&self) -> u64 {
        self.gateway_id
    }

    pub fn register(&self, local: u64, entry: Arc<ConnEntry>) {
        if let Ok(mut conns) = self.conns.write() {
            conns.insert(local, entry);
        }
    }

    /// Takes a closing connection out of every room; returns the rooms it was in or
    /// joining. It still counts as connected until `forget`, after those rooms were told, so
    /// a shutdown that waits for no connections left knows every `ConnClosed` went out.
    pub fn leave_all(&self, local: u64) -> Vec<String> {
        let entry = self.conns.read().ok().and_then(|c| c.get(&local).cloned());
        match entry {
            Some(entry) => self.leave_rooms(local, &entry),
            None => Vec::new(),
        }
    }

    /// Forgets a connection whose rooms were told it closed. A join acked between
    /// `leave_all` and now put it back into that room's members: it leaves again here (the
    /// room had its `ConnClosed` too, joining rooms are in the list), and after this no
    /// reply finds it.
    pub fn forget(&self, local: u64) {
        let entry = self.conns.write().ok().and_then(|mut c| c.remove(&local));
        if let Some(entry) = entry {
            self.leave_rooms(local, &entry);
        }
    }

    /// Removes `local` from the members of every room it was in or joining; returns those.
    fn leave_rooms(&self, local: u64, entry: &ConnEntry) -> Vec<String> {
        let rooms: Vec<String> = entry
            .rooms
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default();
        if let Ok(mut map) = self.rooms.write() {
            for room in &rooms {
                remove_member(&mut map, room, local);
            }
        }
        rooms
    }

    pub fn connection_count(&self) -> usize {
        self.conns.read().map(|c| c.len()).unwrap_or(0)
    }

    /// Sends one frame to every connection (`server.draining`).
    pub fn broadcast(&self, text: Arc<str>) {
        let entries: Vec<Arc<ConnEntry>> = self
            .conns
            .read()
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default();
        for e in entries {
            e.push(OutFrame::Direct(text.clone()));
        }
    }

    /// Closes every connection with `code`.
    pub fn close_all(&self, code: u16) {
        if let Ok(conns) = self.conns.read() {
            for e in conns.values() {
                e.closer.close(code);
            }
        }
    }

    fn local(&self, conn: ConnId) -> Option<Arc<ConnEntry>> {
        if conn.gateway != self.gateway_id {
            return None;
        }
        self.conns.read().ok()?.get(&conn.local).cloned()
    }

    fn set_membership(&self, local: u64, entry: &Arc<ConnEntry>, membership: Membership, seq: u64) {
        let Ok(mut map) = self.rooms.write() else {
            return;
        };
        match membership {
            Membership::Join(room) => {
                let member = LocalMember {
                    entry: entry.clone(),
                    joined_seq: seq,
                };
                match map.get_mut(&room) {
                    Some(local_room) => {
                        local_room.members.insert(local, member);
                        self.joined_known_room(&room, local_room, seq);
                    }
                    None => {
                        let mut local_room = LocalRoom::new(seq);
                        local_room.members.insert(local, member);
                        map.insert(room, local_room);
                    }
                }
            }
            Membership::Forgotten(room) => {
                let was_joined = remove_member(&mut map, &room, local);
                if let Ok(mut rooms) = entry.rooms.lock() {
                    rooms.remove(&room);
                }
                if was_joined {
                    entry.closer.close(close::RESTART);
                }
            }
            Membership::Leave(room) => {
                remove_member(&mut map, &room, local);
                if let Ok(mut rooms) = entry.rooms.lock() {
                    rooms.remove(&room);
                }
            }
        }
    }

    /// Delivers a live room event, unless a resync holds the room's events back, or the
    /// event shows that some before it were lost (then a resync starts and replays them all).
    fn deliver_event(&self, room: &str, seq: u64, created_ms: u64, frame: Arc<str>) {
        let Ok(map) = self.rooms.read() else {
            return;
        };
        let Some(local_room) = map.get(room) else {
            return;
        };
        if local_room.resync.load(Ordering::SeqCst) != 0 {
            return;
        }
        let last = local_room.last_seq.load(Ordering::SeqCst);
        if seq <= last {
            // Already delivered, or in the members' join snapshots.
            return;
        }
        if seq > last + 1 {
            self.start_resync(room, local_room);
            return;
        }
        local_room.last_seq.store(seq, Ordering::SeqCst);
        let direct = local_room.members.len() <= DIRECT_WRITE_MAX_MEMBERS;
        for member in local_room.members.values() {
            let event = OutFrame::Event {
                text: frame.clone(),
                created_ms,
            };
            member.entry.push_with(event, direct);
        }
    }
}

/// Takes `local` out of `room`'s members (and the room out of the map when it was the last);
/// whether it was a member.
fn remove_member(map: &mut HashMap<String, LocalRoom>, room: &str, local: u64) -> bool {
    let Some(local_room) = map.get_mut(room) else {
        return false;
    };
    let was = local_room.members.remove(&local).is_some();
    if local_room.members.is_empty() {
        map.remove(room);
    }
    was
}

impl GatewaySink for Fanout {
    fn deliver(&self, msg: ToGateway) {
        match msg {
            ToGateway::Reply {
                conn,
                id,
                membership,
                frames,
                seq,
            } => {
                let Some(entry) = self.local(conn) else {
                    return;
                };
                if let Some(m) = membership {
                    self.set_membership(conn.local, &entry, m, seq);
                }
                if let Some(id) = id {
                    entry.observe_reply(&id);
                }
                let item = match frames.len() {
                    1 => frames.into_iter().next().map(OutFrame::Direct),
                    _ => Some(OutFrame::Batch(frames)),
                };
                if let Some(item) = item {
                    entry.push(item);
                }
            }
            ToGateway::RoomEvent {
                room,
                seq,
                created_ms,
                frame,
                ..
            } => self.deliver_event(&room, seq, created_ms, frame),
            ToGateway::RoomHead { room, seq, .. } => self.room_head(&room, seq),
            ToGateway::Direct { conns, frame } => {
                for conn in conns {
                    if let Some(entry) = self.local(conn) {
                        entry.push(OutFrame::Direct(frame.clone()));
                    }
                }
            }
            ToGateway::RoomReset { room } => {
                let members: Vec<(u64, Arc<ConnEntry>)> = self
                    .rooms
                    .read()
                    .ok()
                    .and_then(|m| {
                        m.get(&room).map(|r| {
                            r.members
                                .iter()
                                .map(|(k, v)| (*k, v.entry.clone()))
                                .collect()
                        })
                    })
                    .unwrap_or_default();
                for (local, entry) in members {
                    self.set_membership(local, &entry, Membership::Leave(room.clone()), 0);
                    entry.closer.close(close::RESTART);
                }
            }
            ToGateway::Evict { room, conns } => {
                for conn in conns {
                    if let Some(entry) = self.local(conn) {
                        self.set_membership(conn.local, &entry, Membership::Leave(room.clone()), 0);
                        entry.closer.close(close::RESTART);
                    }
                }
            }
            ToGateway::Remove { room, conns, frame } => {
                for conn in conns {
                    if let Some(entry) = self.local(conn) {
                        self.set_membership(conn.local, &entry, Membership::Leave(room.clone()), 0);
                        entry.push(OutFrame::Direct(frame.clone()));
                    }
                }
            }
            ToGateway::Replay {
                room,
                req,
                first_seq,
                frames,
                ..
            } => self.replay(&room, req, first_seq, frames),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members_of(f: &Fanout, room: &str) -> usize {
        f.rooms
            .read()
            .map(|m| m.get(room).map_or(0, |r| r.members.len()))
            .unwrap_or(0)
    }

    #[test]
    fn a_join_acked_while_a_connection_closes_does_not_leave_it_in_the_room() {
        let f = Fanout::new(7);
        let entry = Arc::new(ConnEntry::new(QueueBound::frames(8), None));
        f.register(1, entry.clone());
        if let Ok(mut rooms) = entry.rooms.lock() {
            rooms.insert("r".into());
        }
        let join = |f: &Fanout| {
            f.deliver(ToGateway::Reply {
                conn: ConnId {
                    gateway: 7,
                    local: 1,
                },
                id: None,
                membership: Some(Membership::Join("r".into())),
                frames: Vec::new(),
                seq: 0,
            })
        };
        join(&f);
        assert_eq!(members_of(&f, "r"), 1);
        // The socket closes: out of its rooms, still counted until its rooms were told.
        assert_eq!(f.leave_all(1), vec!["r".to_owned()]);
        assert_eq!((members_of(&f, "r"), f.connection_count()), (0, 1));
        // A join sent before the close is acked now and puts it back...
        join(&f);
        assert_eq!(members_of(&f, "r"), 1);
        // ...and forgetting it takes it out again; later replies find nothing.
        f.forget(1);
        assert_eq!((members_of(&f, "r"), f.connection_count()), (0, 0));
        join(&f);
        assert_eq!(members_of(&f, "r"), 0);
    }
}

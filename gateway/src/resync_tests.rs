//! The fan-out's side of resyncs, driven by hand: gaps, held-back events, replays, and who
//! is closed when a gap cannot be filled.

use std::sync::Arc;

use lockstep_shared::bus::{ConnId, GatewaySink, Membership, ToGateway};
use lockstep_shared::protocol::error::Refusal;
use lockstep_shared::protocol::ErrorCode;

use super::*;
use crate::fanout::{ConnEntry, Fanout, OutFrame, QueueBound};

const GW: u64 = 7;

struct Conn {
    entry: Arc<ConnEntry>,
    local: u64,
}

impl Conn {
    fn new(fanout: &Fanout, local: u64) -> Conn {
        let entry = Arc::new(ConnEntry::new(QueueBound::frames(64), None));
        fanout.register(local, entry.clone());
        Conn { entry, local }
    }

    /// The room's owner answers this connection's join at `seq`.
    fn joined(&self, fanout: &Fanout, room: &str, seq: u64) {
        if let Ok(mut rooms) = self.entry.rooms.lock() {
            rooms.insert(room.to_owned());
        }
        fanout.deliver(ToGateway::Reply {
            conn: ConnId {
                gateway: GW,
                local: self.local,
            },
            id: None,
            membership: Some(Membership::Join(room.to_owned())),
            frames: Vec::new(),
            seq,
        });
    }

    /// The seqs of the events it was handed since last asked (frames are `e<seq>`).
    fn received(&self) -> Vec<u64> {
        let taken = self.entry.outbox.take(usize::MAX);
        self.entry.outbox.release();
        let texts = taken.frames.into_iter().flat_map(|f| match f {
            OutFrame::Event { text, .. } | OutFrame::Direct(text) => vec![text],
            OutFrame::Batch(texts) => texts,
        });
        texts
            .filter_map(|t| t.strip_prefix('e').and_then(|n| n.parse().ok()))
            .collect()
    }

    fn closed_with(&self) -> u16 {
        self.entry.closer.code()
    }
}

fn event(seq: u64) -> ToGateway {
    ToGateway::RoomEvent {
        room: Arc::from("r"),
        seq,
        created_ms: 0,
        frame: Arc::from(format!("e{seq}")),
        gateways: Arc::from(vec![GW]),
    }
}

fn replay(req: u64, first_seq: u64, last_seq: u64) -> ToGateway {
    ToGateway::Replay {
        room: "r".into(),
        gateway: GW,
        req,
        first_seq,
        frames: (first_seq..=last_seq)
            .map(|s| Arc::from(format!("e{s}")))
            .collect(),
    }
}

fn with_resyncer() -> (Fanout, mpsc::Receiver<Job>) {
    let fanout = Fanout::new(GW);
    let (tx, rx) = channel();
    fanout.set_resyncer(tx);
    (fanout, rx)
}

/// The next room queued to be asked for (reply checks are skipped).
fn next_room(queued: &mut mpsc::Receiver<Job>) -> Option<ResyncRequest> {
    loop {
        match queued.try_recv().ok()? {
            Job::Room(request) => return Some(request),
            Job::Replies(_) => continue,
        }
    }
}

#[test]
fn a_gap_holds_the_room_back_until_the_replay_fills_it() {
    let (fanout, mut asked) = with_resyncer();
    let a = Conn::new(&fanout, 1);
    a.joined(&fanout, "r", 5);
    fanout.deliver(event(6));
    fanout.deliver(event(7));
    assert_eq!(a.received(), vec![6, 7]);
    // 8 was lost on the bus: 9 shows it, and is held back with 10.
    fanout.deliver(event(9));
    fanout.deliver(event(10));
    assert_eq!(a.received(), Vec::<u64>::new());
    let request = next_room(&mut asked).expect("the room is asked for again");
    assert_eq!((request.room.as_str(), request.since_seq), ("r", 7));
    assert_eq!(
        request.conns,
        vec![ConnId {
            gateway: GW,
            local: 1
        }]
    );
    // A member joining meanwhile has everything up to its join in its snapshot.
    let b = Conn::new(&fanout, 2);
    b.joined(&fanout, "r", 10);
    fanout.deliver(replay(request.req, 8, 10));
    assert_eq!(a.received(), vec![8, 9, 10]);
    assert_eq!(b.received(), Vec::<u64>::new());
    fanout.deliver(event(11));
    assert_eq!((a.received(), b.received()), (vec![11], vec![11]));
    assert_eq!((a.closed_with(), b.closed_with()), (0, 0));
    assert!(next_room(&mut asked).is_none(), "one request for one gap");
}

fn head(seq: u64) -> ToGateway {
    ToGateway::RoomHead {
        room: Arc::from("r"),
        seq,
        gateways: Arc::from(vec![GW]),
    }
}

#[test]
fn a_head_past_the_last_event_delivered_fills_the_trailing_gap() {
    let (fanout, mut asked) = with_resyncer();
    let a = Conn::new(&fanout, 1);
    a.joined(&fanout, "r", 5);
    fanout.deliver(event(6));
    fanout.deliver(head(6));
    assert!(
        next_room(&mut asked).is_none(),
        "level with the head: nothing lost"
    );
    assert_eq!(a.received(), vec![6]);
    // 7 and 8 were the room's last events and were lost: no later event shows the gap.
    fanout.deliver(head(8));
    let request = next_room(&mut asked).expect("the head shows the room is behind");
    assert_eq!((request.room.as_str(), request.since_seq), ("r", 6));
    fanout.deliver(head(8));
    assert!(
        next_room(&mut asked).is_none(),
        "one request while one is under way"
    );
    fanout.deliver(replay(request.req, 7, 8));
    assert_eq!(a.received(), vec![7, 8]);
    fanout.deliver(head(8));
    assert!(next_room(&mut asked).is_none(), "made whole");
    assert_eq!(a.closed_with(), 0);
    // A head for a room with no members here concerns nobody.
    let other = ToGateway::RoomHead {
        room: Arc::from("elsewhere"),
        seq: 99,
        gateways: Arc::from(vec![GW]),
    };
    fanout.deliver(other);
    assert!(next_room(&mut asked).is_none());
}

#[test]
fn a_replay_that_no_longer_reaches_back_closes_only_those_who_missed_events() {
    let (fanout, mut asked) = with_resyncer();
    let a = Conn::new(&fanout, 1);
    a.joined(&fanout, "r", 5);
    fanout.deliver(event(9));
    let request = next_room(&mut asked).expect("asked");
    let b = Conn::new(&fanout, 2);
    b.joined(&fanout, "r", 12);
    // The history starts at 11: a (at 5) must rejoin; b (at 12) gets 13.
    fanout.deliver(replay(request.req, 11, 13));
    assert_eq!(a.closed_with(), close::RESTART);
    assert_eq!((b.closed_with(), b.received()), (0, vec![13]));
}

#[test]
fn an_answer_to_an_older_resync_is_ignored() {
    let (fanout, mut asked) = with_resyncer();
    let a = Conn::new(&fanout, 1);
    a.joined(&fanout, "r", 5);
    fanout.bus_gap();
    let first = next_room(&mut asked).expect("asked");
    fanout.bus_gap();
    let second = next_room(&mut asked).expect("asked again");
    assert_eq!(second.since_seq, 5);
    fanout.deliver(replay(first.req, 6, 7));
    assert_eq!(a.received(), Vec::<u64>::new(), "held for the newer answer");
    fanout.deliver(replay(second.req, 6, 8));
    assert_eq!(a.received(), vec![6, 7, 8]);
    fanout.deliver(event(9));
    assert_eq!(a.received(), vec![9]);
}

#[test]
fn a_socket_waiting_for_a_reply_at_a_bus_gap_is_closed_only_if_it_never_comes() {
    let (fanout, mut asked) = with_resyncer();
    let idle = Conn::new(&fanout, 1);
    idle.joined(&fanout, "r", 5);
    let answered = Conn::new(&fanout, 2);
    answered.joined(&fanout, "r", 5);
    answered.entry.track("c1", "chat.send");
    let unanswered = Conn::new(&fanout, 3);
    unanswered.joined(&fanout, "r", 5);
    unanswered.entry.track("c1", "chat.send");
    let joining = Conn::new(&fanout, 4);
    if let Ok(mut rooms) = joining.entry.rooms.lock() {
        rooms.insert("r".into());
    }
    fanout.bus_gap();
    let Ok(Job::Replies(waiting)) = asked.try_recv() else {
        panic!("the sockets waiting for replies are queued first");
    };
    let mut locals: Vec<u64> = waiting.iter().map(|w| w.local).collect();
    locals.sort_unstable();
    assert_eq!(locals, vec![2, 3, 4]);
    let request = next_room(&mut asked).expect("the room is asked for");
    assert_eq!(
        request.conns.len(),
        3,
        "every member: nobody closed at the gap"
    );
    // Within the grace, 2's reply comes (it was not lost); 3's and 4's never do.
    fanout.deliver(ToGateway::Reply {
        conn: ConnId {
            gateway: GW,
            local: 2,
        },
        id: Some("c1".into()),
        membership: None,
        frames: vec![Arc::from("ack")],
        seq: 5,
    });
    assert_eq!(fanout.close_unanswered(&waiting), 2);
    let codes = [&idle, &answered, &unanswered, &joining].map(Conn::closed_with);
    assert_eq!(codes, [0, 0, close::RESTART, close::RESTART]);
}

#[test]
fn without_a_resyncer_a_gap_closes_the_members_and_a_new_join_starts_again() {
    let fanout = Fanout::new(GW);
    let a = Conn::new(&fanout, 1);
    a.joined(&fanout, "r", 5);
    fanout.deliver(event(7));
    assert_eq!(a.closed_with(), close::RESTART);
    fanout.deliver(event(8));
    let b = Conn::new(&fanout, 2);
    b.joined(&fanout, "r", 8);
    fanout.deliver(event(9));
    assert_eq!(b.received(), vec![9]);
    assert_eq!(a.received(), Vec::<u64>::new());
}

#[test]
fn a_join_answered_past_the_last_event_seen_is_a_gap() {
    let (fanout, mut asked) = with_resyncer();
    let a = Conn::new(&fanout, 1);
    a.joined(&fanout, "r", 5);
    // Events 6 and 7 went missing; b's join at 7 shows it.
    let b = Conn::new(&fanout, 2);
    b.joined(&fanout, "r", 7);
    let request = next_room(&mut asked).expect("asked");
    assert_eq!(request.since_seq, 5);
    fanout.deliver(replay(request.req, 6, 7));
    assert_eq!((a.received(), b.received()), (vec![6, 7], vec![]));
}

/// A link to a room whose owner is not subscribed yet for the first `refusals` requests, then
/// answers each resync with the events after `since_seq` up to `last_seq`.
struct LateOwner {
    fanout: Arc<Fanout>,
    refusals: std::sync::atomic::AtomicUsize,
    sent: std::sync::atomic::AtomicUsize,
    last_seq: u64,
}

#[async_trait::async_trait]
impl WorkerLink for LateOwner {
    async fn send(&self, msg: ToWorker) -> Result<(), Refusal> {
        use std::sync::atomic::Ordering::SeqCst;
        self.sent.fetch_add(1, SeqCst);
        let ToWorker::Resync { req, since_seq, .. } = msg else {
            return Ok(());
        };
        let refuse = self
            .refusals
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if refuse {
            return Err(Refusal::new(
                ErrorCode::Unavailable,
                "no worker serves this room right now; retry",
            ));
        }
        self.fanout
            .deliver(replay(req, since_seq + 1, self.last_seq));
        Ok(())
    }

    async fn query(
        &self,
        _: &str,
        _: lockstep_shared::bus::Query,
    ) -> Result<serde_json::Value, Refusal> {
        Err(Refusal::new(ErrorCode::Unavailable, "not in this test"))
    }
}

/// A member of room `r` (joined at seq 1) that then sees event 4: events 2 and 3 are missing,
/// and the resync for them is being sent through `owner` by a running [`run`].
async fn gap_with_owner(refusals: usize) -> (Conn, Arc<LateOwner>, CancellationToken) {
    let (fanout, queued) = with_resyncer();
    let fanout = Arc::new(fanout);
    let a = Conn::new(&fanout, 1);
    a.joined(&fanout, "r", 1);
    let owner = Arc::new(LateOwner {
        fanout: fanout.clone(),
        refusals: refusals.into(),
        sent: 0.into(),
        last_seq: 4,
    });
    let cancel = CancellationToken::new();
    tokio::spawn(run(queued, owner.clone(), fanout.clone(), cancel.clone()));
    fanout.deliver(event(4));
    (a, owner, cancel)
}

#[tokio::test(start_paused = true)]
async fn a_resync_no_worker_takes_yet_is_sent_again_until_one_does() {
    let (a, owner, cancel) = gap_with_owner(3).await;
    // Refused three times (100 + 200 + 400 ms of backoff), answered by the fourth.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(a.received(), vec![2, 3, 4]);
    assert_eq!(a.closed_with(), 0, "the socket stays open");
    assert_eq!(owner.sent.load(std::sync::atomic::Ordering::SeqCst), 4);
    cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_resync_no_worker_takes_in_time_closes_the_members() {
    let (a, owner, cancel) = gap_with_owner(usize::MAX).await;
    tokio::time::sleep(TIMEOUT - Duration::from_secs(1)).await;
    assert_eq!(a.closed_with(), 0, "still trying");
    // The last try is the one whose next would come past the timeout.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(a.closed_with(), close::RESTART, "given up: rejoin by seq");
    assert!(a.received().is_empty());
    let sent = owner.sent.load(std::sync::atomic::Ordering::SeqCst);
    // 100 ms doubling to 1 s within 5 s: a handful of tries, not a flood.
    assert!((4..=8).contains(&sent), "{sent} tries");
    cancel.cancel();
}

//! Releases a room's output in order, each piece only after its writes are durable
//! (DESIGN.md invariant 3). A failed commit turns its acks into `unavailable` errors, drops
//! its events, and marks the room for reload so memory never runs ahead of the store.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lockstep_shared::bus::{GatewaySink, Membership, ToGateway};
use lockstep_shared::protocol::error::Refusal;
use lockstep_shared::protocol::{error_frame, ErrorCode};
use lockstep_shared::store::CommitTicket;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

/// An answer to a [`lockstep_shared::bus::Query`], released like any other output.
pub type QueryReply = (
    oneshot::Sender<Result<Value, Refusal>>,
    Result<Value, Refusal>,
);

/// One step's output waiting for its commit.
pub struct Pending {
    pub ticket: Option<CommitTicket>,
    pub deliveries: Vec<ToGateway>,
    pub query: Option<QueryReply>,
}

/// Runs until every sender is dropped; then everything queued has been released.
pub async fn run(
    mut rx: mpsc::Receiver<Pending>,
    sink: Arc<dyn GatewaySink>,
    poisoned: Arc<AtomicBool>,
) {
    while let Some(p) = rx.recv().await {
        let committed = match p.ticket {
            None => Ok(()),
            Some(ticket) => ticket.await.unwrap_or_else(|_| {
                Err(lockstep_shared::store::StoreError::Unavailable(
                    "store dropped the batch".into(),
                ))
            }),
        };
        match committed {
            Ok(()) => {
                // A replay or a head made after an earlier commit failed may carry or count
                // that commit's events (they are in memory): it is held back, and the reload
                // evicts the members.
                let failed_before = poisoned.load(Ordering::SeqCst);
                for d in p.deliveries {
                    if failed_before
                        && matches!(d, ToGateway::Replay { .. } | ToGateway::RoomHead { .. })
                    {
                        continue;
                    }
                    sink.deliver(d);
                }
                if let Some((tx, answer)) = p.query {
                    let _ = tx.send(answer);
                }
            }
            Err(err) => {
                poisoned.store(true, Ordering::SeqCst);
                tracing::warn!(cause = %err, "commit failed; answering unavailable");
                for d in p.deliveries {
                    if let ToGateway::Reply {
                        conn,
                        id,
                        membership,
                        ..
                    } = d
                    {
                        // A join that did not commit did not happen.
                        let membership = match membership {
                            Some(Membership::Join(room)) => Some(Membership::Leave(room)),
                            other => other,
                        };
                        let frame = error_frame(
                            id.as_deref(),
                            ErrorCode::Unavailable,
                            "could not store the change; retry",
                        );
                        sink.deliver(ToGateway::Reply {
                            conn,
                            id,
                            membership,
                            frames: vec![Arc::from(frame)],
                            seq: 0,
                        });
                    }
                }
                if let Some((tx, _)) = p.query {
                    let _ = tx.send(Err(Refusal::new(
                        ErrorCode::Unavailable,
                        "could not store the change; retry",
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use lockstep_shared::store::StoreError;

    use super::*;

    #[derive(Default)]
    struct Kept(Mutex<Vec<ToGateway>>);

    impl GatewaySink for Kept {
        fn deliver(&self, msg: ToGateway) {
            if let Ok(mut kept) = self.0.lock() {
                kept.push(msg);
            }
        }
    }

    fn replay() -> ToGateway {
        ToGateway::Replay {
            room: "r".into(),
            gateway: 1,
            req: 1,
            first_seq: 1,
            frames: vec![Arc::from("{\"seq\":1}")],
        }
    }

    fn committed(result: Result<(), StoreError>) -> Option<CommitTicket> {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(result);
        Some(rx)
    }

    #[tokio::test]
    async fn a_replay_after_a_failed_commit_is_held_back() {
        let sink = Arc::new(Kept::default());
        let poisoned = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel(4);
        let pending = |ticket, deliveries| Pending {
            ticket,
            deliveries,
            query: None,
        };
        let failed = committed(Err(StoreError::Unavailable("down".into())));
        for p in [
            pending(None, vec![replay()]),
            pending(failed, Vec::new()),
            pending(None, vec![replay()]),
        ] {
            tx.send(p).await.expect("room to releaser");
        }
        drop(tx);
        run(rx, sink.clone(), poisoned.clone()).await;
        let delivered = sink.0.lock().map(|k| k.len()).unwrap_or(0);
        assert_eq!(delivered, 1, "only the replay before the failure");
        assert!(poisoned.load(Ordering::SeqCst));
    }
}

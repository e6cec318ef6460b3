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
                for d in p.deliveries {
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

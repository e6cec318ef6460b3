//! Replies that never come. A command's reply can be lost where no seq shows it: a worker's
//! publish queue full or its Redis connection failing, a room actor wedged. Events lost that
//! way are noticed by the next event's seq (`resync`); a lost reply would leave its client
//! waiting for ever. So every command tracked for its reply gets a deadline
//! (`gateway.reply_timeout_ms`): past it the gateway answers `unavailable` itself, which
//! DESIGN.md makes safe to retry with the same id (one effect, the same ack again).
//!
//! A reply that arrives after that answer is still delivered: the command may have taken
//! effect (a join then makes the socket a member), and the client should learn it did.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lockstep_shared::metrics as names;
use lockstep_shared::protocol::{error_frame, ErrorCode};
use tokio_util::sync::CancellationToken;

use crate::fanout::{ConnEntry, Fanout, OutFrame};

/// A command awaiting its reply: id and type.
type Awaited = (String, &'static str);

/// Longest pause between two sweeps; shorter timeouts are swept four times per timeout.
const SWEEP_MAX: Duration = Duration::from_secs(1);

impl Fanout {
    /// Answers `unavailable` for every command received before `now - timeout` that still has
    /// no reply, and stops waiting for it. Returns how many.
    pub fn expire_replies(&self, now: Instant, timeout: Duration) -> usize {
        let Some(cutoff) = now.checked_sub(timeout) else {
            return 0;
        };
        // Taken out under the locks, answered after: an answer may write to the socket.
        let mut due: Vec<(Arc<ConnEntry>, Vec<Awaited>)> = Vec::new();
        if let Ok(conns) = self.conns.read() {
            for entry in conns.values() {
                let Ok(mut inflight) = entry.inflight.lock() else {
                    continue;
                };
                if inflight.is_empty() {
                    continue;
                }
                let late: Vec<Awaited> = inflight
                    .iter()
                    .filter(|(_, (_, received))| *received <= cutoff)
                    .map(|(id, (kind, _))| (id.clone(), *kind))
                    .collect();
                if late.is_empty() {
                    continue;
                }
                for (id, _) in &late {
                    inflight.remove(id);
                }
                if inflight.is_empty() {
                    // An idle connection keeps no table (see `observe_reply`).
                    *inflight = Default::default();
                }
                due.push((entry.clone(), late));
            }
        }
        let message = format!(
            "no answer from the room's worker within {} ms; retry with the same id",
            timeout.as_millis()
        );
        let mut answered = 0;
        for (entry, late) in due {
            for (id, kind) in late {
                metrics::counter!(names::GATEWAY_REPLY_TIMEOUTS, "type" => kind).increment(1);
                let frame = error_frame(Some(&id), ErrorCode::Unavailable, &message);
                entry.push(OutFrame::Direct(Arc::from(frame)));
                answered += 1;
            }
        }
        answered
    }
}

/// Sweeps for overdue replies until `cancel`.
pub async fn run(fanout: Arc<Fanout>, timeout: Duration, cancel: CancellationToken) {
    let every = (timeout / 4).min(SWEEP_MAX);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let n = fanout.expire_replies(Instant::now(), timeout);
        if n > 0 {
            tracing::warn!(
                commands = n,
                timeout_ms = timeout.as_millis() as u64,
                "commands answered unavailable: no reply in time"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use lockstep_shared::bus::{ConnId, GatewaySink, ToGateway};
    use serde_json::Value;

    use super::*;
    use crate::fanout::QueueBound;

    fn frames(entry: &ConnEntry) -> Vec<Value> {
        let taken = entry.outbox.take(usize::MAX);
        entry.outbox.release();
        taken
            .frames
            .into_iter()
            .flat_map(|f| match f {
                OutFrame::Event { text, .. } | OutFrame::Direct(text) => vec![text],
                OutFrame::Batch(texts) => texts,
            })
            .map(|t| serde_json::from_str(&t).unwrap_or(Value::Null))
            .collect()
    }

    fn reply(id: &str) -> ToGateway {
        ToGateway::Reply {
            conn: ConnId {
                gateway: 7,
                local: 1,
            },
            id: Some(id.to_owned()),
            membership: None,
            frames: vec![Arc::from(format!(
                r#"{{"type":"ack","id":"{id}","result":{{}}}}"#
            ))],
            seq: 0,
        }
    }

    #[test]
    fn a_command_without_a_reply_in_time_is_answered_unavailable_once() {
        let fanout = Fanout::new(7);
        let entry = Arc::new(ConnEntry::new(QueueBound::frames(64), None));
        fanout.register(1, entry.clone());
        let base = Instant::now();
        let timeout = Duration::from_secs(10);
        if let Ok(mut inflight) = entry.inflight.lock() {
            inflight.insert("slow".into(), ("chat.send", base));
            inflight.insert("fresh".into(), ("room.join", base + Duration::from_secs(5)));
        }
        assert_eq!(fanout.expire_replies(base + timeout / 2, timeout), 0);
        assert!(frames(&entry).is_empty());

        // Only the command received before the cutoff is answered; "fresh" waits on.
        let past_slow = base + timeout + Duration::from_millis(1);
        assert_eq!(fanout.expire_replies(past_slow, timeout), 1);
        let got = frames(&entry);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0]["type"], "error");
        assert_eq!(got[0]["id"], "slow");
        assert_eq!(got[0]["code"], "unavailable");
        // Answered once: the next sweep leaves it alone.
        assert_eq!(fanout.expire_replies(past_slow, timeout), 0);

        // Its reply, late, still reaches the client (the command may have taken effect).
        fanout.deliver(reply("slow"));
        let got = frames(&entry);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            (got[0]["type"].as_str(), got[0]["id"].as_str()),
            (Some("ack"), Some("slow"))
        );

        // A reply in time is not answered twice.
        fanout.deliver(reply("fresh"));
        assert_eq!(frames(&entry).len(), 1);
        assert_eq!(fanout.expire_replies(base + 3 * timeout, timeout), 0);
        assert!(frames(&entry).is_empty());
        assert!(entry.inflight.lock().is_ok_and(|m| m.is_empty()));
    }
}

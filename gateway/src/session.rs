//! One connection's session: the commands its client sends, rate limited and forwarded to
//! the room's worker. The socket loop (`conn`) hands it every complete text message.

use std::sync::Arc;

use lockstep_shared::bus::{Caller, CommandEnvelope, ToWorker};
use lockstep_shared::metrics as names;
use lockstep_shared::protocol::bounds;
use lockstep_shared::protocol::{
    ack_frame, decode_client_frame, error_frame, ClientCommand, ClientFrame, ErrorCode,
};
use lockstep_worker::clock::now_ms;
use lockstep_worker::engine::TokenBucket;
use serde_json::json;

use crate::fanout::{ConnEntry, OutFrame};
use crate::state::AppState;

/// Per-connection command state.
pub struct Session {
    pub state: Arc<AppState>,
    pub entry: Arc<ConnEntry>,
    pub caller: Caller,
    commands: TokenBucket,
    signals: TokenBucket,
}

impl Session {
    pub fn new(state: Arc<AppState>, entry: Arc<ConnEntry>, caller: Caller) -> Session {
        let cfg = &state.cfg.gateway;
        let now = now_ms();
        Session {
            commands: TokenBucket::full(cfg.command_burst, now),
            signals: TokenBucket::full(cfg.signal_rate, now),
            state,
            entry,
            caller,
        }
    }

    /// Handles one complete text message.
    pub async fn on_text(&mut self, text: &str) {
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
        // Checked here, not only by the room: what goes to the bus stays a few KiB.
        if let Err(refusal) = bounds::check(&cmd, self.state.cfg.room.chat_max_chars) {
            self.reply_error(id.as_deref(), refusal.code, &refusal.message);
            return Err(refusal.code);
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
            if let Some(id) = &id {
                self.entry.observe_reply(id);
            }
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

    pub fn reply_error(&self, id: Option<&str>, code: ErrorCode, message: &str) {
        self.entry
            .push(OutFrame::Direct(Arc::from(error_frame(id, code, message))));
    }
}

//! Room chat (length and per-user rate rules) and the opaque signal relay.

use std::sync::Arc;

use lockstep_shared::bus::Caller;
use lockstep_shared::protocol::bounds;
use lockstep_shared::protocol::error::Refusal;
use lockstep_shared::protocol::server::signal_frame;
use lockstep_shared::protocol::{ChatMessage, ChatSource, ChatUser, ErrorCode, EventBody, Role};
use lockstep_shared::store::Mutation;
use serde_json::{json, Value};

use super::moderation::Sanction;
use super::{chat_index, Ack, Handled, Room, TokenBucket};

impl Room {
    pub(super) fn chat(&mut self, now: u64, caller: &Caller, text: String) -> Handled {
        bounds::chat_text(&text, self.cfg.chat_max_chars)?;
        if let Some(refusal) = self.sanction_refusal(Sanction::Mute, &caller.user_id, now) {
            return Err(refusal);
        }
        let (rate, burst) = (self.cfg.chat_rate, self.cfg.chat_burst);
        let bucket = self
            .chat_buckets
            .entry(caller.user_id.clone())
            .or_insert_with(|| TokenBucket::full(burst, now));
        if !bucket.try_take(rate, burst, now) {
            return Err(Refusal::new(
                ErrorCode::RateLimited,
                format!("at most {rate} chat messages per second"),
            ));
        }
        let msg = ChatMessage {
            id: self.seq + 1,
            ts: now,
            user: ChatUser {
                user_id: caller.user_id.clone(),
                name: caller.name.clone(),
            },
            text,
            source: ChatSource::Room,
            ext: None,
        };
        let id = self.emit(now, EventBody::ChatMessage(msg.body()));
        self.out.mutations.push(Mutation::Chat {
            room: self.code.to_string(),
            msg: msg.clone(),
        });
        self.chat_index.push_stored(msg);
        Ok(Ack::with(json!({"id": id})))
    }

    /// Takes a message out of view: out of the join snapshot's chat, its stored row without
    /// text (`ext.deleted`), and a `chat.delete` event so clients drop it too. Its author
    /// may delete their own room message; the owner and operators any message, also one
    /// older than the room's memory (the store then marks the row by id, if there is one).
    pub(super) fn delete_chat(&mut self, now: u64, caller: &Caller, message_id: u64) -> Handled {
        let moderator = matches!(self.role_of(&caller.user_id), Role::Owner | Role::Operator);
        let author = match self.chat_index.get(message_id) {
            Some(msg) => {
                let own = msg.source == ChatSource::Room && msg.user.user_id == caller.user_id;
                if !own && !moderator {
                    return Err(Refusal::new(
                        ErrorCode::Forbidden,
                        "only the owner and operators delete others' messages",
                    ));
                }
                Some(msg.user.user_id.clone())
            }
            // Older than memory: no author to check, so moderators only, and only an id the
            // room has handed out.
            None if moderator && (1..=self.seq).contains(&message_id) => None,
            None => {
                return Err(Refusal::new(
                    ErrorCode::NotFound,
                    format!(
                        "no message {message_id} among the room's last {} chat messages",
                        chat_index::INDEX_MAX
                    ),
                ))
            }
        };
        let taken = self.chat_index.take_where(|e| e.msg.id == message_id);
        if taken.is_empty() {
            self.out.mutations.push(Mutation::DeleteChat {
                room: self.code.to_string(),
                id: message_id,
            });
        }
        for msg in taken {
            self.out.mutations.push(Mutation::Chat {
                room: self.code.to_string(),
                msg: chat_index::deleted(msg),
            });
        }
        self.emit(
            now,
            EventBody::ChatDelete {
                ids: vec![message_id],
                by: caller.user_id.clone(),
            },
        );
        self.audit(
            now,
            &caller.user_id,
            "chat.delete",
            json!({"message_id": message_id, "author": author}),
        );
        Ok(Ack::empty())
    }

    /// Relays `payload` to the target's connections in this room only: no seq, no history.
    pub(super) fn signal(&mut self, caller: &Caller, to: &str, payload: &Value) -> Handled {
        bounds::signal_target(to)?;
        if !self.members.contains_key(to) {
            return Err(Refusal::new(
                ErrorCode::NotFound,
                format!("user {to} is not in the room"),
            ));
        }
        let frame = Arc::from(signal_frame(&self.code, &caller.user_id, payload));
        self.direct(to, frame);
        Ok(Ack::empty())
    }
}

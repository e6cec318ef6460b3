//! The room's recent chat — its own and its sources' — as moderation finds it: a message
//! deleted (`chat.delete`, or an upstream deletion, ban or clear) must be in here. Bounded
//! by count; messages are at most `room.chat_max_chars` each, so a few MB at worst.

use std::collections::VecDeque;

use lockstep_shared::protocol::ChatMessage;
use serde_json::{Map, Value};

/// Messages remembered per room for moderation lookups.
pub const INDEX_MAX: usize = 2_000;

/// A delivered message and what moderation matches it by.
#[derive(Debug, Clone)]
pub(super) struct Indexed {
    /// The source that delivered it; empty for the room's own chat.
    pub source_id: String,
    pub upstream_id: Option<String>,
    /// Upstream: the platform's author id; room chat: the user id.
    pub author_id: Option<String>,
    pub msg: ChatMessage,
}

/// Recent messages, oldest first.
#[derive(Debug, Default)]
pub(super) struct ChatIndex {
    entries: VecDeque<Indexed>,
}

impl ChatIndex {
    pub fn push(&mut self, entry: Indexed) {
        self.entries.push_back(entry);
        while self.entries.len() > INDEX_MAX {
            self.entries.pop_front();
        }
    }

    /// A room chat message of the room's own, indexed by its author's user id.
    pub fn push_room(&mut self, msg: &ChatMessage) {
        self.push(Indexed {
            source_id: String::new(),
            upstream_id: None,
            author_id: Some(msg.user.user_id.clone()),
            msg: msg.clone(),
        });
    }

    /// The message with room chat id `id`, if still remembered.
    pub fn get(&self, id: u64) -> Option<&ChatMessage> {
        self.entries.iter().find(|e| e.msg.id == id).map(|e| &e.msg)
    }

    /// Takes out every message `hit` matches, oldest first.
    pub fn take_where(&mut self, hit: impl Fn(&Indexed) -> bool) -> Vec<ChatMessage> {
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(self.entries.len());
        for e in std::mem::take(&mut self.entries) {
            if hit(&e) {
                taken.push(e.msg);
            } else {
                kept.push_back(e);
            }
        }
        self.entries = kept;
        taken
    }
}

/// The stored row of a deleted message: no text, no emotes, `ext.deleted: true`.
pub(super) fn deleted(mut msg: ChatMessage) -> ChatMessage {
    msg.text.clear();
    let mut ext = match msg.ext.take() {
        Some(Value::Object(map)) => map,
        _ => Map::new(),
    };
    ext.insert("deleted".into(), Value::Bool(true));
    ext.remove("emotes");
    msg.ext = Some(Value::Object(ext));
    msg
}

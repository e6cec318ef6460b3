//! The room's recent chat — its own and its sources' — as the join snapshot shows it (its
//! newest `room.chat_snapshot`) and as moderation finds it: a message deleted
//! (`chat.delete`, or an upstream deletion, ban or clear) leaves here, and so leaves the
//! snapshot. Bounded by count; messages are at most `room.chat_max_chars` each, so a few MB
//! at worst.

use std::collections::VecDeque;

use lockstep_shared::protocol::ext::ExtKind;
use lockstep_shared::protocol::{ChatMessage, ChatSource};
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
#[derive(Debug)]
pub(super) struct ChatIndex {
    entries: VecDeque<Indexed>,
    /// `INDEX_MAX`, or the snapshot's length when that is longer.
    cap: usize,
}

impl ChatIndex {
    /// An index that also serves snapshots of `snapshot_len` messages.
    pub fn new(snapshot_len: usize) -> ChatIndex {
        ChatIndex {
            entries: VecDeque::new(),
            cap: INDEX_MAX.max(snapshot_len),
        }
    }

    pub fn push(&mut self, entry: Indexed) {
        self.entries.push_back(entry);
        while self.entries.len() > self.cap {
            self.entries.pop_front();
        }
    }

    /// A message as stored: the room's own are matched by their author's user id, an
    /// upstream one by what its `ext` says (source, upstream id, platform author). A stored
    /// row that is not a message to show — deleted, or an upstream moderation item — is
    /// left out, as it was when it happened.
    pub fn push_stored(&mut self, msg: ChatMessage) {
        let ext = msg.ext.as_ref();
        let deleted = ext.is_some_and(|e| e["deleted"] == true);
        let moderation = ext
            .and_then(|e| serde_json::from_value::<ExtKind>(e["kind"].clone()).ok())
            .is_some_and(ExtKind::is_moderation);
        if deleted || moderation {
            return;
        }
        let text_of = |key: &str| ext.and_then(|e| e[key].as_str()).map(str::to_owned);
        let entry = match msg.source {
            ChatSource::Room => Indexed {
                source_id: String::new(),
                upstream_id: None,
                author_id: Some(msg.user.user_id.clone()),
                msg,
            },
            _ => Indexed {
                source_id: text_of("source_id").unwrap_or_default(),
                upstream_id: text_of("upstream_id"),
                author_id: ext
                    .and_then(|e| e["author"]["id"].as_str())
                    .map(str::to_owned),
                msg,
            },
        };
        self.push(entry);
    }

    /// The newest `n` messages, oldest first.
    pub fn recent(&self, n: usize) -> impl ExactSizeIterator<Item = &ChatMessage> {
        let skip = self.entries.len().saturating_sub(n);
        self.entries.iter().skip(skip).map(|e| &e.msg)
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

//! The join snapshot (DESIGN.md §3), serialized straight from the room's state.
//!
//! Every `room.join` ack carries every present member. Building that list as owned `User`s
//! and a `serde_json::Value` tree first cost a few µs per member per join, so a 5,000-member
//! room spent most of its join storm allocating and freeing trees (a profile showed malloc,
//! `BTreeMap` inserts and `Value` serialization on top). These views borrow the state and
//! write the JSON once.

use serde::ser::{Serialize, SerializeSeq, Serializer};
use serde_json::Value;

use lockstep_shared::protocol::server::PlayerView;
use lockstep_shared::protocol::{Entry, Event, EventBody, Role, Settings};

use super::Room;

/// The snapshot as it goes on the wire; field names match the `Value` form field for field.
#[derive(serde::Serialize)]
pub(super) struct SnapshotView<'a> {
    room: &'a str,
    settings: &'a Settings,
    members: MembersView<'a>,
    player: PlayerView,
    queue: &'a std::collections::VecDeque<Entry>,
    sources: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chat: Option<ChatView<'a>>,
}

/// A `room.join` ack's result: `{"seq", "snapshot"}`.
#[derive(serde::Serialize)]
pub(super) struct JoinResult<'a> {
    pub seq: u64,
    pub snapshot: SnapshotView<'a>,
}

/// Present members as `user` objects, borrowed from the member map.
pub(super) struct MembersView<'a>(&'a Room);

/// One member in the shape of [`lockstep_shared::protocol::User`], without owning its strings.
#[derive(serde::Serialize)]
struct UserRef<'a> {
    user_id: &'a str,
    name: &'a str,
    role: Role,
    ready: bool,
}

impl Serialize for MembersView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let room = self.0;
        let mut seq = s.serialize_seq(Some(room.members.len()))?;
        for (user_id, m) in &room.members {
            seq.serialize_element(&UserRef {
                user_id,
                name: &m.name,
                role: room.role_of(user_id),
                ready: m.ready,
            })?;
        }
        seq.end()
    }
}

/// The last chat messages as `chat.message` events.
pub(super) struct ChatView<'a>(&'a Room);

impl Serialize for ChatView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let room = self.0;
        let recent = room.chat_index.recent(room.cfg.chat_snapshot);
        let mut seq = s.serialize_seq(Some(recent.len()))?;
        for m in recent {
            seq.serialize_element(&Event {
                room: room.code.to_string(),
                seq: m.id,
                ts: m.ts,
                body: EventBody::ChatMessage(m.body()),
            })?;
        }
        seq.end()
    }
}

impl Room {
    /// The snapshot borrowed from the state; `with_chat` false for the HTTP room body.
    pub(super) fn snapshot_view(&self, with_chat: bool) -> SnapshotView<'_> {
        SnapshotView {
            room: &self.code,
            settings: &self.d.settings,
            members: MembersView(self),
            player: self.player_view(),
            queue: &self.d.queue,
            sources: self.sources_view(),
            chat: with_chat.then_some(ChatView(self)),
        }
    }

    /// The join snapshot as a `Value` (DESIGN.md §3); `with_chat` false for the HTTP room body.
    pub fn snapshot(&self, with_chat: bool) -> Value {
        serde_json::to_value(self.snapshot_view(with_chat)).unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use lockstep_shared::protocol::User;

    use super::*;

    #[test]
    fn a_borrowed_member_serializes_like_an_owned_user() {
        for (role, ready) in [(Role::Owner, true), (Role::Participant, false)] {
            let owned = User {
                user_id: "u\"1".into(),
                name: "Ann ✓".into(),
                role,
                ready,
            };
            let borrowed = UserRef {
                user_id: "u\"1",
                name: "Ann ✓",
                role,
                ready,
            };
            assert_eq!(
                serde_json::to_value(&borrowed).ok(),
                serde_json::to_value(&owned).ok()
            );
        }
    }
}

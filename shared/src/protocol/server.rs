//! Server → client frames: sequenced room events, acks and errors.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::ErrorCode;
use super::model::{ChatBody, Clock, Entry, Settings, User};

/// A sequenced room event: `{"type","room","seq","ts",...body}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub room: String,
    pub seq: u64,
    pub ts: u64,
    #[serde(flatten)]
    pub body: EventBody,
}

impl Event {
    /// The frame text sent to clients and kept in the room history.
    pub fn to_frame(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

/// The player as carried by `player.state` and the snapshot: the clock plus the entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlayerView {
    #[serde(flatten)]
    pub clock: Clock,
    pub entry: Option<Entry>,
}

/// The body of each room event type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum EventBody {
    #[serde(rename = "presence.join")]
    PresenceJoin { user: User },
    #[serde(rename = "presence.leave")]
    PresenceLeave {
        user_id: String,
        /// Why, when the user did not leave by themselves (`banned`); absent otherwise.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    #[serde(rename = "presence.update")]
    PresenceUpdate { user: User },
    #[serde(rename = "player.state")]
    PlayerState(PlayerView),
    /// The skip vote on the current entry: `votes` of the present members have voted,
    /// `needed` skip it.
    #[serde(rename = "player.vote_skip")]
    PlayerVoteSkip {
        entry_id: u64,
        votes: usize,
        needed: usize,
    },
    #[serde(rename = "queue.update")]
    QueueUpdate { entries: Vec<Entry> },
    #[serde(rename = "chat.message")]
    ChatMessage(ChatBody),
    /// Chat messages (room chat ids) taken out of view by `by` (`chat.delete`).
    #[serde(rename = "chat.delete")]
    ChatDelete { ids: Vec<u64>, by: String },
    #[serde(rename = "room.settings")]
    RoomSettings { settings: Settings },
    #[serde(rename = "source.status")]
    SourceStatus {
        source_id: String,
        platform: String,
        state: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

impl EventBody {
    /// The wire `type`, also a bounded metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            EventBody::PresenceJoin { .. } => "presence.join",
            EventBody::PresenceLeave { .. } => "presence.leave",
            EventBody::PresenceUpdate { .. } => "presence.update",
            EventBody::PlayerState(_) => "player.state",
            EventBody::PlayerVoteSkip { .. } => "player.vote_skip",
            EventBody::QueueUpdate { .. } => "queue.update",
            EventBody::ChatMessage(_) => "chat.message",
            EventBody::ChatDelete { .. } => "chat.delete",
            EventBody::RoomSettings { .. } => "room.settings",
            EventBody::SourceStatus { .. } => "source.status",
        }
    }
}

/// `{"type":"ack","id":..,"result":..}`, serialized straight from `result` (a join's
/// snapshot of thousands of members is never copied into an intermediate `Value`).
pub fn ack_frame<T: Serialize + ?Sized>(id: Option<&str>, result: &T) -> String {
    #[derive(Serialize)]
    struct AckFrame<'a, T: ?Sized> {
        #[serde(rename = "type")]
        kind: &'static str,
        id: Option<&'a str>,
        result: &'a T,
    }
    let frame = AckFrame {
        kind: "ack",
        id,
        result,
    };
    serde_json::to_string(&frame).unwrap_or_else(|e| {
        error_frame(
            id,
            ErrorCode::Internal,
            &format!("reply not encodable: {e}"),
        )
    })
}

/// `{"type":"error","id":..,"code":..,"message":..}`.
pub fn error_frame(id: Option<&str>, code: ErrorCode, message: &str) -> String {
    serde_json::json!({"type": "error", "id": id, "code": code, "message": message}).to_string()
}

/// The unsequenced direct `signal` event: relayed only to the target's connections.
pub fn signal_frame(room: &str, from: &str, payload: &Value) -> String {
    serde_json::json!({"type": "signal", "room": room, "from": from, "payload": payload})
        .to_string()
}

/// The unsequenced direct `room.removed` event: the room took these connections out of its
/// members (`reason` `banned`: by `by`, until `until` server ms, or for good when null), so
/// the client knows not to rejoin as it would after a dropped socket.
pub fn removed_frame(room: &str, reason: &str, by: &str, until: Option<u64>) -> String {
    serde_json::json!({"type": "room.removed", "room": room, "reason": reason, "by": by, "until": until})
        .to_string()
}

/// Sent to every connection when the node starts draining for shutdown.
pub fn draining_frame(grace_ms: u64) -> String {
    serde_json::json!({"type": "server.draining", "grace_ms": grace_ms}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::model::{PlayState, Role};

    #[test]
    fn event_flattens_body_with_type_tag() {
        let ev = Event {
            room: "abc".into(),
            seq: 3,
            ts: 99,
            body: EventBody::PresenceJoin {
                user: User {
                    user_id: "u1".into(),
                    name: "Ann".into(),
                    role: Role::Owner,
                    ready: false,
                },
            },
        };
        let v: Value = serde_json::from_str(&ev.to_frame()).unwrap_or(Value::Null);
        assert_eq!(v["type"], "presence.join");
        assert_eq!(v["room"], "abc");
        assert_eq!(v["seq"], 3);
        assert_eq!(v["user"]["role"], "owner");
        let back: Result<Event, _> = serde_json::from_value(v);
        assert_eq!(back.ok(), Some(ev));
    }

    #[test]
    fn player_state_carries_clock_fields_and_entry() {
        let ev = Event {
            room: "r".into(),
            seq: 1,
            ts: 5,
            body: EventBody::PlayerState(PlayerView {
                clock: Clock {
                    state: PlayState::Playing,
                    entry_id: Some(4),
                    position_ms: 10,
                    at: 20,
                    rate: 1.0,
                },
                entry: None,
            }),
        };
        let v: Value = serde_json::from_str(&ev.to_frame()).unwrap_or(Value::Null);
        assert_eq!(v["type"], "player.state");
        assert_eq!(v["state"], "playing");
        assert_eq!(v["entry_id"], 4);
        assert_eq!(v["at"], 20);
        assert!(v["entry"].is_null());
    }

    #[test]
    fn chat_event_has_one_ts() {
        use crate::protocol::model::{ChatMessage, ChatSource, ChatUser};
        let msg = ChatMessage {
            id: 9,
            ts: 77,
            user: ChatUser {
                user_id: "u".into(),
                name: "U".into(),
            },
            text: "hi".into(),
            source: ChatSource::Room,
            ext: None,
        };
        let ev = Event {
            room: "r".into(),
            seq: 9,
            ts: 77,
            body: EventBody::ChatMessage(msg.body()),
        };
        let frame = ev.to_frame();
        assert_eq!(frame.matches("\"ts\"").count(), 1, "{frame}");
        let v: Value = serde_json::from_str(&frame).unwrap_or(Value::Null);
        assert_eq!(v["id"], 9);
        assert_eq!(v["source"], "room");
    }

    #[test]
    fn ack_and_error_shapes() {
        let ack: Value = serde_json::from_str(&ack_frame(Some("1"), &serde_json::json!({"x": 1})))
            .unwrap_or(Value::Null);
        assert_eq!(ack["type"], "ack");
        assert_eq!(ack["id"], "1");
        assert_eq!(ack["result"]["x"], 1);
        let err: Value = serde_json::from_str(&error_frame(None, ErrorCode::Forbidden, "no"))
            .unwrap_or(Value::Null);
        assert_eq!(err["code"], "forbidden");
        assert!(err["id"].is_null());
    }
}

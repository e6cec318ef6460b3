//! Client → server frames and their decoder. Decoding never panics: every malformed frame
//! becomes a [`DecodeError`] that carries the frame's `id` when one could be read.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::ErrorCode;
use super::model::{AdPolicy, ControlMode, Role, SourceSpec};

/// Longest accepted command `id`; longer ids would let a client bloat the idempotency window.
pub const MAX_ID_LEN: usize = 64;
/// Largest `signal.send` payload, measured as its JSON bytes (DESIGN.md §3).
pub const MAX_SIGNAL_PAYLOAD_BYTES: usize = 16 * 1024;

/// A decoded frame: the optional correlation id and the command.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientFrame {
    pub id: Option<String>,
    pub cmd: ClientCommand,
}

/// Every command of protocol v1, tagged by its `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ClientCommand {
    #[serde(rename = "time.sync")]
    TimeSync { t0: f64 },
    #[serde(rename = "room.join")]
    RoomJoin {
        room: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since_seq: Option<u64>,
    },
    #[serde(rename = "room.leave")]
    RoomLeave { room: String },
    #[serde(rename = "user.ready")]
    UserReady { room: String, ready: bool },
    #[serde(rename = "player.play")]
    PlayerPlay { room: String },
    #[serde(rename = "player.pause")]
    PlayerPause { room: String },
    #[serde(rename = "player.seek")]
    PlayerSeek {
        room: String,
        position_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        play: Option<bool>,
    },
    #[serde(rename = "player.restart")]
    PlayerRestart { room: String },
    #[serde(rename = "player.skip")]
    PlayerSkip { room: String },
    #[serde(rename = "player.ended")]
    PlayerEnded { room: String, entry_id: u64 },
    /// A vote to skip the current entry (the room's `vote_skip_percent` decides).
    #[serde(rename = "player.vote_skip")]
    PlayerVoteSkip { room: String },
    #[serde(rename = "player.ad")]
    PlayerAd { room: String, active: bool },
    #[serde(rename = "queue.add")]
    QueueAdd {
        room: String,
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<String>,
    },
    #[serde(rename = "queue.remove")]
    QueueRemove { room: String, entry_id: u64 },
    #[serde(rename = "queue.move")]
    QueueMove {
        room: String,
        entry_id: u64,
        index: u64,
    },
    /// Puts the upcoming entries in a random order (the playing one stays).
    #[serde(rename = "queue.shuffle")]
    QueueShuffle { room: String },
    /// Removes every upcoming entry (the playing one stays).
    #[serde(rename = "queue.clear")]
    QueueClear { room: String },
    #[serde(rename = "chat.send")]
    ChatSend { room: String, text: String },
    /// Deletes a chat message from view: its author, the owner or an operator.
    #[serde(rename = "chat.delete")]
    ChatDelete { room: String, message_id: u64 },
    #[serde(rename = "room.settings")]
    RoomSettings {
        room: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        control_mode: Option<ControlMode>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ad_policy: Option<AdPolicy>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vote_skip_percent: Option<u8>,
    },
    #[serde(rename = "room.role")]
    RoomRole {
        room: String,
        user_id: String,
        role: Role,
    },
    #[serde(rename = "room.sources")]
    RoomSources {
        room: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        add: Option<SourceSpec>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        remove: Option<String>,
    },
    /// Removes a user from the room and refuses their joins, for `duration_ms` or for good.
    #[serde(rename = "room.ban")]
    RoomBan {
        room: String,
        user_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_ms: Option<u64>,
    },
    #[serde(rename = "room.unban")]
    RoomUnban { room: String, user_id: String },
    /// Keeps a user from chatting, for `duration_ms` or for good; they stay in the room.
    #[serde(rename = "room.mute")]
    RoomMute {
        room: String,
        user_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_ms: Option<u64>,
    },
    #[serde(rename = "room.unmute")]
    RoomUnmute { room: String, user_id: String },
    #[serde(rename = "signal.send")]
    SignalSend {
        room: String,
        to: String,
        payload: Value,
    },
}

impl ClientCommand {
    /// The room a command addresses; `None` only for `time.sync`.
    pub fn room(&self) -> Option<&str> {
        use ClientCommand::*;
        match self {
            TimeSync { .. } => None,
            RoomJoin { room, .. }
            | RoomLeave { room }
            | UserReady { room, .. }
            | PlayerPlay { room }
            | PlayerPause { room }
            | PlayerSeek { room, .. }
            | PlayerRestart { room }
            | PlayerSkip { room }
            | PlayerEnded { room, .. }
            | PlayerAd { room, .. }
            | PlayerVoteSkip { room }
            | QueueAdd { room, .. }
            | QueueRemove { room, .. }
            | QueueMove { room, .. }
            | QueueShuffle { room }
            | QueueClear { room }
            | ChatSend { room, .. }
            | ChatDelete { room, .. }
            | RoomSettings { room, .. }
            | RoomRole { room, .. }
            | RoomSources { room, .. }
            | RoomBan { room, .. }
            | RoomUnban { room, .. }
            | RoomMute { room, .. }
            | RoomUnmute { room, .. }
            | SignalSend { room, .. } => Some(room),
        }
    }

    /// The wire `type`, also a bounded metric label.
    pub fn kind(&self) -> &'static str {
        use ClientCommand::*;
        match self {
            TimeSync { .. } => "time.sync",
            RoomJoin { .. } => "room.join",
            RoomLeave { .. } => "room.leave",
            UserReady { .. } => "user.ready",
            PlayerPlay { .. } => "player.play",
            PlayerPause { .. } => "player.pause",
            PlayerSeek { .. } => "player.seek",
            PlayerRestart { .. } => "player.restart",
            PlayerSkip { .. } => "player.skip",
            PlayerEnded { .. } => "player.ended",
            PlayerAd { .. } => "player.ad",
            PlayerVoteSkip { .. } => "player.vote_skip",
            QueueAdd { .. } => "queue.add",
            QueueRemove { .. } => "queue.remove",
            QueueMove { .. } => "queue.move",
            QueueShuffle { .. } => "queue.shuffle",
            QueueClear { .. } => "queue.clear",
            ChatSend { .. } => "chat.send",
            ChatDelete { .. } => "chat.delete",
            RoomSettings { .. } => "room.settings",
            RoomRole { .. } => "room.role",
            RoomSources { .. } => "room.sources",
            RoomBan { .. } => "room.ban",
            RoomUnban { .. } => "room.unban",
            RoomMute { .. } => "room.mute",
            RoomUnmute { .. } => "room.unmute",
            SignalSend { .. } => "signal.send",
        }
    }
}

/// A frame that could not be decoded: answered with an `error` reply, the connection stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub id: Option<String>,
    pub code: ErrorCode,
    pub message: String,
}

impl DecodeError {
    fn bad(id: Option<String>, message: impl Into<String>) -> Self {
        DecodeError {
            id,
            code: ErrorCode::BadRequest,
            message: message.into(),
        }
    }
}

/// Decodes one text frame into a command, validating shape and protocol-level bounds.
pub fn decode_client_frame(text: &str) -> Result<ClientFrame, DecodeError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| DecodeError::bad(None, format!("frame is not valid JSON: {e}")))?;
    let Value::Object(mut map) = value else {
        return Err(DecodeError::bad(None, "frame must be a JSON object"));
    };
    let id = take_id(&mut map)?;
    if super::nul::may_hold_nul(text) {
        if id.as_deref().is_some_and(|i| i.contains('\0')) {
            return Err(DecodeError::bad(None, super::nul::NUL_REFUSED));
        }
        if map.values().any(super::nul::has_nul) || map.keys().any(|k| k.contains('\0')) {
            return Err(DecodeError::bad(id, super::nul::NUL_REFUSED));
        }
    }
    match map.get("type") {
        Some(Value::String(_)) => {}
        Some(_) => return Err(DecodeError::bad(id, "field `type` must be a string")),
        None => return Err(DecodeError::bad(id, "missing field `type`")),
    }
    let cmd: ClientCommand = serde_json::from_value(Value::Object(map))
        .map_err(|e| DecodeError::bad(id.clone(), e.to_string()))?;
    if let ClientCommand::SignalSend { payload, .. } = &cmd {
        let size = serde_json::to_vec(payload).map(|v| v.len()).unwrap_or(0);
        if size > MAX_SIGNAL_PAYLOAD_BYTES {
            return Err(DecodeError {
                id,
                code: ErrorCode::TooLarge,
                message: format!(
                    "signal payload is {size} bytes, the limit is {MAX_SIGNAL_PAYLOAD_BYTES}"
                ),
            });
        }
    }
    if let Some(room) = cmd.room() {
        if !crate::ids::is_valid_room_code(room) {
            return Err(DecodeError::bad(
                id,
                "field `room` must be 1-32 characters of A-Z, a-z, 0-9, '-' or '_'",
            ));
        }
    }
    Ok(ClientFrame { id, cmd })
}

fn take_id(map: &mut Map<String, Value>) -> Result<Option<String>, DecodeError> {
    match map.remove("id") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= MAX_ID_LEN => Ok(Some(s)),
        Some(Value::String(_)) => Err(DecodeError::bad(
            None,
            format!("field `id` is longer than {MAX_ID_LEN} bytes"),
        )),
        Some(_) => Err(DecodeError::bad(None, "field `id` must be a string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(text: &str) -> Result<ClientFrame, DecodeError> {
        decode_client_frame(text)
    }

    #[test]
    fn decodes_every_command_shape() {
        let frames = [
            r#"{"type":"time.sync","t0":12.5}"#,
            r#"{"type":"room.join","room":"abc","since_seq":4}"#,
            r#"{"type":"room.leave","room":"abc"}"#,
            r#"{"type":"user.ready","room":"abc","ready":true}"#,
            r#"{"type":"player.play","room":"abc"}"#,
            r#"{"type":"player.pause","room":"abc"}"#,
            r#"{"type":"player.seek","room":"abc","position_ms":1000,"play":true}"#,
            r#"{"type":"player.restart","room":"abc"}"#,
            r#"{"type":"player.skip","room":"abc"}"#,
            r#"{"type":"player.ended","room":"abc","entry_id":3}"#,
            r#"{"type":"player.ad","room":"abc","active":true}"#,
            r#"{"type":"queue.add","room":"abc","url":"https://youtu.be/dQw4w9WgXcQ"}"#,
            r#"{"type":"queue.remove","room":"abc","entry_id":2}"#,
            r#"{"type":"queue.move","room":"abc","entry_id":2,"index":0}"#,
            r#"{"type":"chat.send","room":"abc","text":"hi"}"#,
            r#"{"type":"room.settings","room":"abc","control_mode":"anyone"}"#,
            r#"{"type":"room.role","room":"abc","user_id":"u1","role":"operator"}"#,
            r#"{"type":"room.sources","room":"abc","add":{"platform":"twitch","channel":"x"}}"#,
            r#"{"type":"signal.send","room":"abc","to":"u2","payload":{"sdp":"..."}}"#,
            r#"{"type":"room.ban","room":"abc","user_id":"u2","duration_ms":60000}"#,
            r#"{"type":"room.ban","room":"abc","user_id":"u2"}"#,
            r#"{"type":"room.unban","room":"abc","user_id":"u2"}"#,
            r#"{"type":"room.mute","room":"abc","user_id":"u2","duration_ms":60000}"#,
            r#"{"type":"room.unmute","room":"abc","user_id":"u2"}"#,
            r#"{"type":"player.vote_skip","room":"abc"}"#,
            r#"{"type":"room.settings","room":"abc","vote_skip_percent":50}"#,
            r#"{"id":"d1","type":"chat.delete","room":"abc","message_id":42}"#,
        ];
        for text in frames {
            let frame = decode(text);
            assert!(frame.is_ok(), "{text}: {frame:?}");
            // Round trip: what we decode re-encodes to the same command.
            if let Ok(frame) = frame {
                let back = serde_json::to_string(&frame.cmd).unwrap_or_default();
                assert_eq!(decode(&back).map(|f| f.cmd), Ok(frame.cmd));
            }
        }
    }

    #[test]
    fn refuses_nul_anywhere_in_a_frame() {
        let chat = decode(r#"{"id":"7","type":"chat.send","room":"abc","text":"a\u0000b"}"#);
        let err = chat.err();
        assert_eq!(err.as_ref().and_then(|e| e.id.as_deref()), Some("7"));
        assert_eq!(err.as_ref().map(|e| e.code), Some(ErrorCode::BadRequest));
        assert_eq!(
            err.map(|e| e.message),
            Some(super::super::nul::NUL_REFUSED.into())
        );
        // In the id: refused without echoing the id; in a relayed payload or a key: refused.
        for text in [
            r#"{"id":"x\u0000","type":"player.play","room":"abc"}"#,
            r#"{"type":"signal.send","room":"abc","to":"u2","payload":{"k":["\u0000"]}}"#,
            r#"{"type":"player.play","room":"abc","\u0000":1}"#,
        ] {
            let err = decode(text).err();
            assert_eq!(
                err.as_ref().map(|e| e.code),
                Some(ErrorCode::BadRequest),
                "{text}"
            );
            assert_eq!(err.and_then(|e| e.id), None, "{text}");
        }
        // A backslash followed by "u0000" is ordinary text.
        let ok = decode(r#"{"type":"chat.send","room":"abc","text":"\\u0000"}"#);
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn keeps_the_id_on_errors_once_read() {
        let err = decode(r#"{"id":"7","type":"chat.send","room":"abc"}"#);
        let err = err.err();
        assert_eq!(err.as_ref().and_then(|e| e.id.as_deref()), Some("7"));
        assert_eq!(err.map(|e| e.code), Some(ErrorCode::BadRequest));
    }

    #[test]
    fn rejects_malformed_frames_with_bad_request() {
        for text in [
            "not json",
            "[1,2]",
            "42",
            r#"{"id":5,"type":"player.play","room":"a"}"#,
            r#"{"type":"nope","room":"a"}"#,
            r#"{"type":7}"#,
            r#"{"room":"a"}"#,
            r#"{"type":"player.seek","room":"a","position_ms":-5}"#,
            r#"{"type":"player.play","room":"bad room!"}"#,
            r#"{"type":"player.play","room":""}"#,
        ] {
            let code = decode(text).err().map(|e| e.code);
            assert_eq!(code, Some(ErrorCode::BadRequest), "{text}");
        }
    }

    #[test]
    fn oversized_signal_payload_is_too_large() {
        let big = "x".repeat(MAX_SIGNAL_PAYLOAD_BYTES + 1);
        let text = format!(r#"{{"type":"signal.send","room":"a","to":"u","payload":"{big}"}}"#);
        assert_eq!(
            decode(&text).err().map(|e| e.code),
            Some(ErrorCode::TooLarge)
        );
    }
}

//! Payload shapes shared by events, acks, snapshots and the store. Fields may be added,
//! never renamed (DESIGN.md §3).

use serde::{Deserialize, Serialize};

/// A member's role in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Operator,
    #[default]
    Participant,
}

/// Who may drive the player and the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ControlMode {
    Owner,
    #[default]
    Operators,
    Anyone,
}

impl ControlMode {
    /// Whether a member with `role` may use control commands under this mode.
    pub fn allows(self, role: Role) -> bool {
        match self {
            ControlMode::Owner => role == Role::Owner,
            ControlMode::Operators => matches!(role, Role::Owner | Role::Operator),
            ControlMode::Anyone => true,
        }
    }
}

/// What the room does when members report an ad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AdPolicy {
    #[default]
    Ignore,
    PauseAll,
}

/// Room settings, as in the `room.settings` event and the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub name: String,
    pub control_mode: ControlMode,
    pub ad_policy: AdPolicy,
    /// Share of the present members (percent, 1-100) whose `player.vote_skip` skips the
    /// current entry whatever the control mode; 0 = vote skip off (the default).
    #[serde(default)]
    pub vote_skip_percent: u8,
}

/// A present member, as in presence events and the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub user_id: String,
    pub name: String,
    pub role: Role,
    pub ready: bool,
}

/// One queued or playing video.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub entry_id: u64,
    pub video_id: String,
    pub url: String,
    pub title: String,
    pub duration_ms: Option<u64>,
    pub added_by: String,
    /// Set when YouTube says the video cannot be played (removed, private, not embeddable):
    /// why, in upstream's words. The room skips such an entry instead of playing it; absent
    /// on the wire otherwise (a field added to DESIGN.md's entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

/// The phase of the room's player.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PlayState {
    #[default]
    Idle,
    /// A new entry is loaded and waits for the ready gate.
    Starting,
    Playing,
    Paused,
}

/// The sync clock: a client's position at server time `t` is
/// `position_ms + max(0, t - at) * rate` while playing, else `position_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Clock {
    pub state: PlayState,
    pub entry_id: Option<u64>,
    pub position_ms: u64,
    pub at: u64,
    pub rate: f64,
}

impl Default for Clock {
    fn default() -> Self {
        Clock {
            state: PlayState::Idle,
            entry_id: None,
            position_ms: 0,
            at: 0,
            rate: 1.0,
        }
    }
}

impl Clock {
    /// The position a client shows at server time `now_ms`; never negative, and no time
    /// elapses before `at` (scheduled start).
    pub fn position_at(&self, now_ms: u64) -> u64 {
        match self.state {
            PlayState::Playing => {
                let elapsed = now_ms.saturating_sub(self.at) as f64 * self.rate;
                self.position_ms.saturating_add(elapsed.max(0.0) as u64)
            }
            _ => self.position_ms,
        }
    }
}

/// The author of a chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatUser {
    pub user_id: String,
    pub name: String,
}

/// Where a chat message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatSource {
    Room,
    Twitch,
    Youtube,
}

/// A chat message as carried by the `chat.message` event, the snapshot and the history API.
/// Its `id` is the room seq of the event that carried it, so ids increase with time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub id: u64,
    pub ts: u64,
    pub user: ChatUser,
    pub text: String,
    pub source: ChatSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext: Option<serde_json::Value>,
}

impl ChatMessage {
    /// The `chat.message` event body: the message without `ts`, which the event carries.
    pub fn body(&self) -> ChatBody {
        ChatBody {
            id: self.id,
            user: self.user.clone(),
            text: self.text.clone(),
            source: self.source,
            ext: self.ext.clone(),
        }
    }
}

/// The fields of a `chat.message` event besides the event envelope (`room`, `seq`, `ts`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatBody {
    pub id: u64,
    pub user: ChatUser,
    pub text: String,
    pub source: ChatSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext: Option<serde_json::Value>,
}

/// An external chat source a room asks to follow (`room.sources` `add`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "platform", rename_all = "snake_case")]
pub enum SourceSpec {
    Twitch {
        channel: String,
        /// The room owner's linked account; absent = anonymous read. Never echoed back.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        auth: Option<TwitchAuth>,
    },
    Youtube {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        video_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channel_id: Option<String>,
    },
}

/// A Twitch login and its OAuth token (`oauth:` prefix optional), for reading as that user.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TwitchAuth {
    pub login: String,
    pub token: String,
}

impl std::fmt::Debug for TwitchAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwitchAuth")
            .field("login", &self.login)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl SourceSpec {
    /// The spec as shown to clients: credentials removed.
    pub fn public(&self) -> SourceSpec {
        match self {
            SourceSpec::Twitch { channel, .. } => SourceSpec::Twitch {
                channel: channel.clone(),
                auth: None,
            },
            other => other.clone(),
        }
    }

    /// The platform name as used in `source.status`.
    pub fn platform(&self) -> &'static str {
        match self {
            SourceSpec::Twitch { .. } => "twitch",
            SourceSpec::Youtube { .. } => "youtube",
        }
    }
}

/// An attached external source, as persisted with the room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub source_id: String,
    #[serde(flatten)]
    pub spec: SourceSpec,
    /// Where ingestion stands (YouTube: the live video and continuation), persisted with the
    /// room so a new owner resumes without a gap. Opaque outside ingestion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_does_not_advance_before_at() {
        let clock = Clock {
            state: PlayState::Playing,
            entry_id: Some(1),
            position_ms: 1_000,
            at: 5_000,
            rate: 1.0,
        };
        assert_eq!(clock.position_at(4_000), 1_000);
        assert_eq!(clock.position_at(5_000), 1_000);
        assert_eq!(clock.position_at(6_500), 2_500);
    }

    #[test]
    fn paused_clock_stands_still() {
        let clock = Clock {
            state: PlayState::Paused,
            entry_id: Some(1),
            position_ms: 700,
            at: 0,
            rate: 1.0,
        };
        assert_eq!(clock.position_at(1_000_000), 700);
    }

    #[test]
    fn control_modes_gate_roles() {
        assert!(ControlMode::Owner.allows(Role::Owner));
        assert!(!ControlMode::Owner.allows(Role::Operator));
        assert!(ControlMode::Operators.allows(Role::Operator));
        assert!(!ControlMode::Operators.allows(Role::Participant));
        assert!(ControlMode::Anyone.allows(Role::Participant));
    }

    #[test]
    fn source_spec_round_trips_with_platform_tag() {
        let json = r#"{"platform":"twitch","channel":"somechan"}"#;
        let spec: SourceSpec = serde_json::from_str(json).unwrap_or(SourceSpec::Youtube {
            video_id: None,
            channel_id: None,
        });
        assert_eq!(
            spec,
            SourceSpec::Twitch {
                channel: "somechan".into(),
                auth: None,
            }
        );
        assert_eq!(serde_json::to_string(&spec).unwrap_or_default(), json);
    }
}

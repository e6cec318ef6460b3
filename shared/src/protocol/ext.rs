//! `chat.message.ext`: one normalized schema for what Twitch and YouTube send (text, paid
//! messages, memberships, gifts, raids, deletions, bans), so clients render every platform
//! with one code path. Fields may be added, never renamed.

use serde::{Deserialize, Serialize};

/// What an upstream chat item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtKind {
    /// An ordinary message.
    Text,
    /// Paid: Twitch bits, YouTube Super Chat or Super Sticker.
    Paid,
    /// A new or renewed membership/subscription.
    Membership,
    /// Gifted memberships/subscriptions.
    Gift,
    /// Another channel raided this one.
    Raid,
    /// Moderation removed specific messages (`targets`).
    Deletion,
    /// Moderation removed a user (and their messages, `targets`); `duration_s` for timeouts.
    Ban,
    /// Moderation cleared the whole upstream chat (`targets`: this source's messages).
    Clear,
}

impl ExtKind {
    /// Bounded metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ExtKind::Text => "text",
            ExtKind::Paid => "paid",
            ExtKind::Membership => "membership",
            ExtKind::Gift => "gift",
            ExtKind::Raid => "raid",
            ExtKind::Deletion => "deletion",
            ExtKind::Ban => "ban",
            ExtKind::Clear => "clear",
        }
    }

    /// Moderation kinds remove earlier messages instead of adding one.
    pub fn is_moderation(self) -> bool {
        matches!(self, ExtKind::Deletion | ExtKind::Ban | ExtKind::Clear)
    }
}

/// A badge as the platform names it (`subscriber` / `12`, `moderator` / `1`, YouTube
/// `Member (2 months)`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Badge {
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
}

/// An emote inside `text`: `start`..`end` are Unicode scalar (char) indices, end exclusive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Emote {
    pub id: String,
    pub name: String,
    pub start: usize,
    pub end: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Money or bits attached to a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Paid {
    /// In major units (dollars, yen), or the number of bits.
    pub amount: f64,
    /// ISO 4217 code when known, `BITS` for Twitch bits, else the symbol as shown.
    pub currency: String,
    /// The amount as the platform displayed it (`￥320`, `100 bits`).
    pub display: String,
}

/// The upstream author.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtAuthor {
    /// The platform's user or channel id.
    pub id: String,
    /// Display name.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<String>,
    /// `#RRGGBB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub colour: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub badges: Vec<Badge>,
}

/// The `ext` object of an ingested `chat.message`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatExt {
    pub kind: ExtKind,
    /// The upstream message id, for de-duplication and moderation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_id: Option<String>,
    /// Which attached source it came from.
    pub source_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<ExtAuthor>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub emotes: Vec<Emote>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paid: Option<Paid>,
    /// Gift count, raid viewers or membership months.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// The platform's own summary (`X gifted 5 subs`), when it sends one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_text: Option<String>,
    /// Moderation: the room chat ids (`chat.message.id`) to remove from view.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<u64>,
    /// Ban: the upstream user removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_user: Option<String>,
    /// Ban: a timeout's length; absent = permanent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<u64>,
    /// Set on stored messages that moderation removed (their text is emptied).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

impl ChatExt {
    /// A bare `ext` of `kind` for `source_id`, for builders to fill in.
    pub fn new(kind: ExtKind, source_id: &str) -> ChatExt {
        ChatExt {
            kind,
            upstream_id: None,
            source_id: source_id.to_owned(),
            author: None,
            emotes: Vec::new(),
            paid: None,
            count: None,
            system_text: None,
            targets: Vec::new(),
            target_user: None,
            duration_s: None,
            deleted: false,
        }
    }
}

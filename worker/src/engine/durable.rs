//! The part of a room that survives restarts and owner changes, stored as one JSON value.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use lockstep_shared::protocol::{Clock, Entry, Settings, Source};
use serde::{Deserialize, Serialize};

/// Settings, roles, queue, player and sources. Presence, ready flags and rate-limit state
/// are deliberately not here: they belong to live connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Durable {
    pub settings: Settings,
    pub owner: String,
    pub operators: BTreeSet<String>,
    pub queue: VecDeque<Entry>,
    pub current: Option<Entry>,
    pub clock: Clock,
    pub next_entry_id: u64,
    pub sources: Vec<Source>,
    pub next_source_id: u64,
    pub created_ms: u64,
    /// Banned user → until (server ms), `None` for good. Absent in rooms stored before bans.
    #[serde(default)]
    pub bans: BTreeMap<String, Option<u64>>,
    /// Muted user → until, like `bans`.
    #[serde(default)]
    pub mutes: BTreeMap<String, Option<u64>>,
}

//! Entry metadata: a queued video's title and duration arrive after `queue.add` (the shell
//! looks them up; the engine only says which videos it wants and applies what comes back).
//! A title the adder typed is kept; a defaulted one (the video id) is replaced. The change
//! reaches everyone as `queue.update` (queued entries) or `player.state` (the entry playing),
//! and is persisted with the room. A video upstream says cannot be played is marked
//! `unavailable`; the room skips it now if it is playing, and later when its turn comes.

use std::collections::BTreeSet;

use lockstep_shared::protocol::Entry;
use serde_json::json;

use super::Room;

/// What a lookup found for one video.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VideoMeta {
    /// `None` when upstream gave none.
    pub title: Option<String>,
    /// `None` for live streams.
    pub duration_ms: Option<u64>,
    /// Upstream says it cannot be played (embedded), and why.
    pub unavailable: Option<String>,
}

/// Videos the room wants looked up, not yet handed to the shell.
#[derive(Debug, Default)]
pub(super) struct Wanted {
    ids: BTreeSet<String>,
}

impl Room {
    /// The videos to look up now (each handed out once per want).
    pub fn take_wanted_metadata(&mut self) -> Vec<String> {
        std::mem::take(&mut self.wanted.ids).into_iter().collect()
    }

    /// Asks for `entry`'s metadata if it has none yet; bounded by the queue (one per entry).
    pub(super) fn want_metadata(&mut self, entry: &Entry) {
        if lacks_metadata(entry) && self.wanted.ids.len() <= self.cfg.queue_max {
            self.wanted.ids.insert(entry.video_id.clone());
        }
    }

    /// Every entry of a restored room that still lacks metadata.
    pub(super) fn want_all_metadata(&mut self) {
        let entries: Vec<Entry> = self
            .d
            .current
            .iter()
            .chain(self.d.queue.iter())
            .filter(|e| lacks_metadata(e))
            .cloned()
            .collect();
        for e in &entries {
            self.want_metadata(e);
        }
    }

    /// Applies a lookup's result to every entry of that video (queued or playing).
    pub fn apply_metadata(&mut self, now: u64, video_id: &str, meta: &VideoMeta) -> super::Output {
        let mut queue_changed = false;
        for e in self.d.queue.iter_mut() {
            queue_changed |= fill(e, video_id, meta);
        }
        let current_changed = self
            .d
            .current
            .as_mut()
            .is_some_and(|e| fill(e, video_id, meta));
        if queue_changed || current_changed {
            self.dirty = true;
        }
        let skip = self
            .d
            .current
            .as_ref()
            .filter(|e| current_changed && e.unavailable.is_some())
            .map(|e| (e.entry_id, e.unavailable.clone()));
        if let Some((entry_id, reason)) = skip {
            // `advance` announces the next entry and the queue (flags included).
            self.audit(
                now,
                "system",
                "player.unavailable",
                json!({"entry_id": entry_id, "video_id": video_id, "reason": reason}),
            );
            self.clear_ad_pause();
            self.advance(now, "system");
            return self.finish();
        }
        if queue_changed {
            self.emit_queue(now);
        }
        if current_changed {
            self.emit_player(now);
        }
        self.finish()
    }
}

/// No duration yet and not known to be unplayable. A live stream never gets one: a
/// restored room asks again, which the shell's cache answers.
fn lacks_metadata(e: &Entry) -> bool {
    e.duration_ms.is_none() && e.unavailable.is_none()
}

/// Fills what `e` lacks from `meta`; whether anything changed.
fn fill(e: &mut Entry, video_id: &str, meta: &VideoMeta) -> bool {
    if e.video_id != video_id {
        return false;
    }
    let mut changed = false;
    if e.title == e.video_id {
        if let Some(t) = &meta.title {
            if *t != e.title {
                e.title = t.clone();
                changed = true;
            }
        }
    }
    if e.duration_ms.is_none() && meta.duration_ms.is_some() {
        e.duration_ms = meta.duration_ms;
        changed = true;
    }
    if e.unavailable.is_none() && meta.unavailable.is_some() {
        e.unavailable = meta.unavailable.clone();
        changed = true;
    }
    changed
}

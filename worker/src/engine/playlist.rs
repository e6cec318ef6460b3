//! Adding a whole YouTube playlist: `queue.add` with a playlist link is acked at once
//! (`{"playlist_id","pending":true}`); the shell reads the playlist page and hands back its
//! videos, which join the queue in one `queue.update` (as many as the queue has room for),
//! added by the requester. The requester alone hears how it went, as the unsequenced
//! direct event `queue.playlist {room, playlist_id, added, left_out}` or `{…, error}`.
//! Pending requests are not durable: a room that reloads meanwhile forgets them.

use std::collections::BTreeMap;
use std::sync::Arc;

use lockstep_shared::bus::Caller;
use lockstep_shared::protocol::error::Refusal;
use lockstep_shared::protocol::{Entry, ErrorCode};
use serde_json::json;

use super::youtube::canonical_url;
use super::{Ack, Handled, Room, VideoMeta};

/// Playlists one room may be loading at once.
pub const PENDING_MAX: usize = 2;

/// One video of a playlist page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaylistItem {
    pub video_id: String,
    pub meta: VideoMeta,
}

/// Playlists asked for and not yet loaded.
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// playlist id → who asked.
    by: BTreeMap<String, String>,
    /// Not yet handed to the shell, with how many videos the queue had room for.
    wanted: Vec<(String, usize)>,
}

impl Room {
    /// `queue.add` with a playlist link (the control mode was checked by the caller).
    pub(super) fn playlist_add(&mut self, caller: &Caller, playlist_id: String) -> Handled {
        if self.playlists.by.contains_key(&playlist_id) {
            return Err(Refusal::new(
                ErrorCode::Conflict,
                "that playlist is already being added",
            ));
        }
        if self.playlists.by.len() >= PENDING_MAX {
            return Err(Refusal::new(
                ErrorCode::Conflict,
                format!("{PENDING_MAX} playlists are being added already; try again shortly"),
            ));
        }
        if self.d.queue.len() >= self.cfg.queue_max {
            return Err(Refusal::new(
                ErrorCode::Conflict,
                format!("the queue is full ({} entries)", self.cfg.queue_max),
            ));
        }
        self.playlists
            .by
            .insert(playlist_id.clone(), caller.user_id.clone());
        let room_for =
            self.cfg.queue_max - self.d.queue.len() + usize::from(self.d.current.is_none());
        self.playlists.wanted.push((playlist_id.clone(), room_for));
        Ok(Ack::with(
            json!({"playlist_id": playlist_id, "pending": true}),
        ))
    }

    /// The playlists to read now (each handed out once), with how many videos are wanted.
    pub fn take_wanted_playlists(&mut self) -> Vec<(String, usize)> {
        std::mem::take(&mut self.playlists.wanted)
    }

    /// Applies a playlist read: its videos join the queue, or the requester hears why not.
    pub fn apply_playlist(
        &mut self,
        now: u64,
        playlist_id: &str,
        result: Result<Vec<PlaylistItem>, String>,
    ) -> super::Output {
        let Some(user_id) = self.playlists.by.remove(playlist_id) else {
            return self.finish();
        };
        let items = match result {
            Ok(items) => items,
            Err(why) => {
                let frame = json!({"type": "queue.playlist", "room": &*self.code,
                    "playlist_id": playlist_id, "error": why});
                self.direct(&user_id, Arc::from(frame.to_string()));
                return self.finish();
            }
        };
        let total = items.len();
        let mut room_for = self.cfg.queue_max.saturating_sub(self.d.queue.len());
        if self.d.current.is_none() {
            room_for += 1;
        }
        let mut added = 0usize;
        let playable = items.into_iter().filter(|i| i.meta.unavailable.is_none());
        for item in playable.take(room_for) {
            let entry = Entry {
                entry_id: self.d.next_entry_id,
                url: canonical_url(&item.video_id),
                title: item.meta.title.unwrap_or_else(|| item.video_id.clone()),
                video_id: item.video_id,
                duration_ms: item.meta.duration_ms,
                added_by: user_id.clone(),
                unavailable: None,
            };
            self.d.next_entry_id += 1;
            self.want_metadata(&entry);
            added += 1;
            if self.d.current.is_none() {
                self.load_entry(now, entry, &user_id);
            } else {
                self.d.queue.push_back(entry);
            }
        }
        if added > 0 {
            self.dirty = true;
            self.emit_queue(now);
        }
        self.audit(
            now,
            &user_id,
            "queue.add_playlist",
            json!({"playlist_id": playlist_id, "added": added, "left_out": total - added}),
        );
        let frame = json!({"type": "queue.playlist", "room": &*self.code,
            "playlist_id": playlist_id, "added": added, "left_out": total - added});
        self.direct(&user_id, Arc::from(frame.to_string()));
        self.finish()
    }
}

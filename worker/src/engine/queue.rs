//! Queue commands: add (YouTube video links; playlist links go to `playlist.rs`), remove,
//! move, shuffle, clear.

use lockstep_shared::bus::Caller;
use lockstep_shared::protocol::bounds;
use lockstep_shared::protocol::error::Refusal;
use lockstep_shared::protocol::{Entry, ErrorCode};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::json;

use super::youtube::{canonical_url, parse_playlist_id, parse_video_id};
use super::{Ack, Handled, Room};

impl Room {
    pub(super) fn queue_add(
        &mut self,
        now: u64,
        caller: &Caller,
        url: &str,
        title: Option<String>,
    ) -> Handled {
        let Some(video_id) = parse_video_id(url) else {
            return match parse_playlist_id(url) {
                Some(list) => self.playlist_add(caller, list),
                None => Err(bounds::not_a_video_link()),
            };
        };
        if let Some(t) = &title {
            bounds::entry_title(t)?;
        }
        let title = match title.map(|t| t.trim().to_owned()) {
            Some(t) if !t.is_empty() => t,
            _ => video_id.clone(),
        };
        if self.d.queue.len() >= self.cfg.queue_max {
            return Err(Refusal::new(
                ErrorCode::Conflict,
                format!("the queue is full ({} entries)", self.cfg.queue_max),
            ));
        }
        let entry = Entry {
            entry_id: self.d.next_entry_id,
            url: canonical_url(&video_id),
            video_id,
            title,
            duration_ms: None,
            added_by: caller.user_id.clone(),
            unavailable: None,
        };
        self.d.next_entry_id += 1;
        self.dirty = true;
        self.want_metadata(&entry);
        let entry_id = entry.entry_id;
        self.audit(
            now,
            &caller.user_id,
            "queue.add",
            json!({"entry_id": entry_id, "video_id": entry.video_id}),
        );
        if self.d.current.is_none() {
            self.load_entry(now, entry, &caller.user_id);
        } else {
            self.d.queue.push_back(entry);
            self.emit_queue(now);
        }
        Ok(Ack::with(json!({"entry_id": entry_id})))
    }

    pub(super) fn queue_remove(&mut self, now: u64, caller: &Caller, entry_id: u64) -> Handled {
        let index = self.queued_index(entry_id)?;
        self.d.queue.remove(index);
        self.dirty = true;
        self.emit_queue(now);
        self.audit(
            now,
            &caller.user_id,
            "queue.remove",
            json!({"entry_id": entry_id}),
        );
        Ok(Ack::empty())
    }

    pub(super) fn queue_move(
        &mut self,
        now: u64,
        caller: &Caller,
        entry_id: u64,
        index: u64,
    ) -> Handled {
        let from = self.queued_index(entry_id)?;
        let Some(entry) = self.d.queue.remove(from) else {
            return Err(Refusal::new(ErrorCode::Internal, "queue index vanished"));
        };
        let to = usize::try_from(index)
            .unwrap_or(usize::MAX)
            .min(self.d.queue.len());
        self.d.queue.insert(to, entry);
        self.dirty = true;
        self.emit_queue(now);
        self.audit(
            now,
            &caller.user_id,
            "queue.move",
            json!({"entry_id": entry_id, "index": to}),
        );
        Ok(Ack::empty())
    }

    /// A random order for the upcoming entries. The engine reads no randomness: the order
    /// comes from a generator seeded with the room's seq and the time, so a replay of the
    /// same commands at the same times shuffles the same way.
    pub(super) fn queue_shuffle(&mut self, now: u64, caller: &Caller) -> Handled {
        if self.d.queue.len() < 2 {
            return Ok(Ack::empty());
        }
        let mut rng = StdRng::seed_from_u64(now ^ self.seq.rotate_left(32));
        self.d.queue.make_contiguous().shuffle(&mut rng);
        self.dirty = true;
        self.emit_queue(now);
        self.audit(now, &caller.user_id, "queue.shuffle", json!({}));
        Ok(Ack::empty())
    }

    /// Empties the upcoming entries; the ack says how many went.
    pub(super) fn queue_clear(&mut self, now: u64, caller: &Caller) -> Handled {
        let removed = self.d.queue.len();
        if removed > 0 {
            self.d.queue.clear();
            self.dirty = true;
            self.emit_queue(now);
            self.audit(
                now,
                &caller.user_id,
                "queue.clear",
                json!({"removed": removed}),
            );
        }
        Ok(Ack::with(json!({"removed": removed})))
    }

    fn queued_index(&self, entry_id: u64) -> Result<usize, Refusal> {
        self.d
            .queue
            .iter()
            .position(|e| e.entry_id == entry_id)
            .ok_or_else(|| {
                Refusal::new(
                    ErrorCode::NotFound,
                    format!("entry {entry_id} is not in the queue"),
                )
            })
    }
}

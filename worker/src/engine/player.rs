//! The sync clock: scheduled starts, the ready gate, pauses for ads.

use lockstep_shared::bus::Caller;
use lockstep_shared::protocol::error::Refusal;
use lockstep_shared::protocol::{AdPolicy, Clock, Entry, ErrorCode, PlayState};
use serde_json::json;

use super::{Ack, Handled, Room};

impl Room {
    pub(super) fn play(&mut self, now: u64, caller: &Caller) -> Handled {
        self.clear_ad_pause();
        match self.d.clock.state {
            PlayState::Idle => {
                if self.d.queue.is_empty() {
                    return Err(Refusal::new(ErrorCode::Conflict, "nothing to play"));
                }
                self.advance(now, &caller.user_id);
            }
            PlayState::Starting => self.start_playback(now, &caller.user_id),
            PlayState::Paused => {
                self.set_clock(
                    PlayState::Playing,
                    self.d.clock.position_ms,
                    now + self.lead(),
                );
                self.emit_player(now);
                self.audit(now, &caller.user_id, "player.play", json!({}));
            }
            PlayState::Playing => {}
        }
        Ok(Ack::empty())
    }

    pub(super) fn pause(&mut self, now: u64, caller: &Caller) -> Handled {
        self.clear_ad_pause();
        match self.d.clock.state {
            PlayState::Playing | PlayState::Starting => {
                self.ready_deadline = None;
                let pos = self.d.clock.position_at(now);
                self.set_clock(PlayState::Paused, pos, now);
                self.emit_player(now);
                self.audit(
                    now,
                    &caller.user_id,
                    "player.pause",
                    json!({"position_ms": pos}),
                );
            }
            PlayState::Paused | PlayState::Idle => {}
        }
        Ok(Ack::empty())
    }

    pub(super) fn seek(
        &mut self,
        now: u64,
        caller: &Caller,
        position_ms: u64,
        play: Option<bool>,
    ) -> Handled {
        if self.d.clock.state == PlayState::Idle {
            return Err(Refusal::new(ErrorCode::Conflict, "nothing is playing"));
        }
        let limit = self.d.current.as_ref().and_then(|e| e.duration_ms);
        let pos = limit.map_or(position_ms, |d| position_ms.min(d));
        self.clear_ad_pause();
        let state = match (play, self.d.clock.state) {
            (Some(true), _) => PlayState::Playing,
            (Some(false), _) => PlayState::Paused,
            (None, s) => s,
        };
        if state != PlayState::Starting {
            self.ready_deadline = None;
        }
        let at = if state == PlayState::Playing {
            now + self.lead()
        } else {
            now
        };
        self.set_clock(state, pos, at);
        self.emit_player(now);
        self.audit(
            now,
            &caller.user_id,
            "player.seek",
            json!({"position_ms": pos, "play": play}),
        );
        Ok(Ack::empty())
    }

    pub(super) fn restart(&mut self, now: u64, caller: &Caller) -> Handled {
        if self.d.clock.state == PlayState::Idle {
            return Err(Refusal::new(ErrorCode::Conflict, "nothing is playing"));
        }
        self.seek(now, caller, 0, None)
    }

    pub(super) fn skip(&mut self, now: u64, caller: &Caller) -> Handled {
        if self.d.current.is_none() && self.d.queue.is_empty() {
            return Err(Refusal::new(ErrorCode::Conflict, "nothing to skip"));
        }
        self.clear_ad_pause();
        self.advance(now, &caller.user_id);
        Ok(Ack::empty())
    }

    /// Any member may report the end of the current entry; only the first report for an
    /// entry advances, so every client can report it.
    pub(super) fn ended(&mut self, now: u64, caller: &Caller, entry_id: u64) -> Handled {
        let is_current = self.d.current.as_ref().map(|e| e.entry_id) == Some(entry_id);
        if is_current {
            self.clear_ad_pause();
            self.advance(now, &caller.user_id);
        }
        Ok(Ack::with(json!({"advanced": is_current})))
    }

    pub(super) fn ad(&mut self, now: u64, caller: &Caller, active: bool) -> Handled {
        if self.d.settings.ad_policy == AdPolicy::Ignore {
            return Ok(Ack::with(json!({"applied": false})));
        }
        if let Some(m) = self.members.get_mut(&caller.user_id) {
            m.ad = active;
        }
        if active {
            if self.d.clock.state == PlayState::Playing && self.ad_resume_at.is_none() {
                let pos = self.d.clock.position_at(now);
                self.set_clock(PlayState::Paused, pos, now);
                self.ad_resume_at = Some(now + self.cfg.ad_max_pause_ms);
                self.emit_player(now);
                self.audit(
                    now,
                    "system",
                    "player.ad_pause",
                    json!({"by": caller.user_id}),
                );
            }
        } else {
            self.maybe_end_ad_pause(now);
        }
        Ok(Ack::with(json!({"applied": true})))
    }

    /// Resumes if the room is ad-paused and no member still reports an ad.
    pub(super) fn maybe_end_ad_pause(&mut self, now: u64) {
        if self.ad_resume_at.is_some() && !self.members.values().any(|m| m.ad) {
            self.end_ad_pause(now, false);
        }
    }

    /// Ends an ad pause and resumes playback; `timed_out` when `ad_max_pause` ran out.
    pub(super) fn end_ad_pause(&mut self, now: u64, timed_out: bool) {
        self.clear_ad_pause();
        if self.d.clock.state == PlayState::Paused {
            self.set_clock(
                PlayState::Playing,
                self.d.clock.position_ms,
                now + self.lead(),
            );
            self.emit_player(now);
            self.audit(
                now,
                "system",
                "player.ad_resume",
                json!({"timed_out": timed_out}),
            );
        }
    }

    /// An explicit play/pause/seek (or a new entry) overrides the ad pause.
    pub(super) fn clear_ad_pause(&mut self) {
        if self.ad_resume_at.take().is_some() {
            for m in self.members.values_mut() {
                m.ad = false;
            }
        }
    }

    /// When the room advances by itself: the playing entry's position has passed its known
    /// duration by `room.end_grace_ms` without a client's `player.ended`. Not
    /// while nobody is present (an empty room's deadline would keep it loaded); a joiner
    /// finds it overdue and the room advances at once.
    pub(super) fn end_due(&self) -> Option<u64> {
        let clock = &self.d.clock;
        if self.cfg.end_grace_ms == 0
            || self.members.is_empty()
            || clock.state != PlayState::Playing
            || clock.rate <= 0.0
        {
            return None;
        }
        let duration = self.d.current.as_ref()?.duration_ms?;
        // Measured in playback position, so a pause inside the grace does not restart it.
        let end = duration.saturating_add(self.cfg.end_grace_ms);
        let left = end.saturating_sub(clock.position_ms) as f64 / clock.rate;
        Some(clock.at.saturating_add(left.ceil() as u64))
    }

    /// Advances past an entry whose end no client reported.
    pub(super) fn end_by_clock(&mut self, now: u64) {
        let entry_id = self.d.current.as_ref().map(|e| e.entry_id);
        self.audit(
            now,
            "system",
            "player.ended",
            json!({"entry_id": entry_id, "by": "clock"}),
        );
        self.clear_ad_pause();
        self.advance(now, "system");
    }

    /// Loads the next queued entry that can be played (passing over, and dropping, those
    /// marked unavailable), or goes idle when there is none.
    pub(super) fn advance(&mut self, now: u64, actor: &str) {
        let queue_changed = !self.d.queue.is_empty();
        let mut next = self.d.queue.pop_front();
        while let Some(e) = next.take_if(|e| e.unavailable.is_some()) {
            self.audit(
                now,
                "system",
                "queue.skip_unavailable",
                json!({"entry_id": e.entry_id, "video_id": e.video_id, "reason": e.unavailable}),
            );
            next = self.d.queue.pop_front();
        }
        match next {
            Some(entry) => self.load_entry(now, entry, actor),
            None => {
                self.d.current = None;
                self.ready_deadline = None;
                self.d.clock = Clock::default();
                self.dirty = true;
                self.emit_player(now);
                self.audit(now, actor, "player.idle", json!({}));
            }
        }
        if queue_changed {
            self.emit_queue(now);
        }
    }

    /// A new entry enters `starting`: ready flags reset, the gate opens its timeout.
    pub(super) fn load_entry(&mut self, now: u64, entry: Entry, actor: &str) {
        for m in self.members.values_mut() {
            m.ready = false;
            m.voted_skip = false;
        }
        let entry_id = entry.entry_id;
        self.d.current = Some(entry);
        self.d.clock = Clock {
            state: PlayState::Starting,
            entry_id: Some(entry_id),
            position_ms: 0,
            at: now,
            rate: 1.0,
        };
        self.dirty = true;
        self.ready_deadline = Some(now + self.cfg.ready_timeout_ms);
        self.emit_player(now);
        self.audit(now, actor, "player.load", json!({"entry_id": entry_id}));
    }

    /// Opens the ready gate when every present member is ready.
    pub(super) fn check_ready_gate(&mut self, now: u64) {
        if self.d.clock.state == PlayState::Starting
            && !self.members.is_empty()
            && self.members.values().all(|m| m.ready)
        {
            self.start_playback(now, "system");
        }
    }

    /// `starting` → `playing`, scheduled `start_lead_ms` ahead so every client starts together.
    pub(super) fn start_playback(&mut self, now: u64, actor: &str) {
        self.ready_deadline = None;
        if self.d.clock.state != PlayState::Starting {
            return;
        }
        self.set_clock(
            PlayState::Playing,
            self.d.clock.position_ms,
            now + self.lead(),
        );
        self.emit_player(now);
        self.audit(now, actor, "player.start", json!({}));
    }

    fn set_clock(&mut self, state: PlayState, position_ms: u64, at: u64) {
        self.d.clock.state = state;
        self.d.clock.position_ms = position_ms;
        self.d.clock.at = at;
        self.dirty = true;
    }

    fn lead(&self) -> u64 {
        self.cfg.start_lead_ms
    }
}

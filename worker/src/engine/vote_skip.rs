//! Vote skip: when the room allows it (`vote_skip_percent` > 0), present members vote to
//! skip the current entry, whatever the control mode, and it is skipped once enough of the
//! present members have voted. Votes belong to the entry (a new one starts with none) and
//! to presence (a member who leaves takes their vote along, and may tip the balance).

use lockstep_shared::bus::Caller;
use lockstep_shared::protocol::error::Refusal;
use lockstep_shared::protocol::{ErrorCode, EventBody};
use serde_json::json;

use super::{Ack, Handled, Room};

impl Room {
    pub(super) fn vote_skip(&mut self, now: u64, caller: &Caller) -> Handled {
        let percent = self.d.settings.vote_skip_percent;
        if percent == 0 {
            return Err(Refusal::new(
                ErrorCode::Conflict,
                "vote skip is off in this room (room.settings vote_skip_percent)",
            ));
        }
        let Some(entry_id) = self.d.current.as_ref().map(|e| e.entry_id) else {
            return Err(Refusal::new(ErrorCode::Conflict, "nothing to skip"));
        };
        let changed = match self.members.get_mut(&caller.user_id) {
            Some(m) if !m.voted_skip => {
                m.voted_skip = true;
                true
            }
            _ => false,
        };
        let (votes, needed) = self.skip_tally();
        if changed {
            self.emit(
                now,
                EventBody::PlayerVoteSkip {
                    entry_id,
                    votes,
                    needed,
                },
            );
        }
        let skipped = self.check_vote_skip(now);
        Ok(Ack::with(
            json!({"votes": votes, "needed": needed, "skipped": skipped}),
        ))
    }

    /// (votes of present members, votes needed to skip).
    fn skip_tally(&self) -> (usize, usize) {
        let votes = self.members.values().filter(|m| m.voted_skip).count();
        let percent = usize::from(self.d.settings.vote_skip_percent);
        let needed = (self.members.len() * percent).div_ceil(100).max(1);
        (votes, needed)
    }

    /// Skips the current entry once the votes reach the share the room asks for; whether
    /// it did. Called after a vote, a departure and a settings change.
    pub(super) fn check_vote_skip(&mut self, now: u64) -> bool {
        if self.d.settings.vote_skip_percent == 0 || self.d.current.is_none() {
            return false;
        }
        let (votes, needed) = self.skip_tally();
        if votes == 0 || votes < needed {
            return false;
        }
        let entry_id = self.d.current.as_ref().map(|e| e.entry_id);
        self.audit(
            now,
            "vote",
            "player.vote_skip",
            json!({"entry_id": entry_id, "votes": votes, "needed": needed}),
        );
        self.clear_ad_pause();
        self.advance(now, "vote");
        true
    }
}

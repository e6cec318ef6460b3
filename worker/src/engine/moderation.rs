//! Bans: the owner and operators take a user out of the room and keep them out, for a
//! while (a kick is a short ban) or for good. Kept with the room (`Durable::bans`), bounded
//! by `room.bans_max`; an expired ban is forgotten the next time bans are looked at.

use std::sync::Arc;

use lockstep_shared::bus::{Caller, ToGateway};
use lockstep_shared::protocol::error::Refusal;
use lockstep_shared::protocol::server::removed_frame;
use lockstep_shared::protocol::{bounds, ErrorCode, EventBody, Role};
use serde_json::{json, Value};

use super::{Ack, Handled, Room};

impl Room {
    /// `{"bans": [{"user_id", "until"}]}` in force at `now`, by user id, for moderators
    /// (`GET /v1/rooms/{code}/bans`): the id an unban needs.
    pub fn bans_view(&self, now: u64) -> Value {
        let bans: Vec<Value> = self
            .d
            .bans
            .iter()
            .filter(|(_, until)| until.is_none_or(|t| t > now))
            .map(|(user_id, until)| json!({"user_id": user_id, "until": until}))
            .collect();
        json!({ "bans": bans })
    }

    /// Whether `user_id` may not join at `now`; the refusal says until when.
    pub(super) fn ban_refusal(&self, user_id: &str, now: u64) -> Option<Refusal> {
        let until = *self.d.bans.get(user_id)?;
        let message = match until {
            Some(t) if t <= now => return None,
            Some(t) => format!(
                "you are banned from this room for another {} s",
                (t - now).div_ceil(1000)
            ),
            None => "you are banned from this room".to_owned(),
        };
        Some(Refusal::new(ErrorCode::Forbidden, message))
    }

    pub(super) fn ban(
        &mut self,
        now: u64,
        caller: &Caller,
        target: &str,
        duration_ms: Option<u64>,
    ) -> Handled {
        self.may_moderate(caller, target)?;
        if duration_ms == Some(0) {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                "duration_ms must be at least 1 (omit it for a ban without end)",
            ));
        }
        let until = duration_ms.map(|d| now.saturating_add(d));
        self.d.bans.retain(|_, u| u.is_none_or(|t| t > now));
        if !self.d.bans.contains_key(target) && self.d.bans.len() >= self.cfg.bans_max {
            return Err(Refusal::new(
                ErrorCode::Conflict,
                format!("at most {} bans per room", self.cfg.bans_max),
            ));
        }
        self.d.bans.insert(target.to_owned(), until);
        // A banned operator is an operator no more: the role would outlast the ban.
        self.d.operators.remove(target);
        self.dirty = true;
        if let Some(member) = self.members.remove(target) {
            self.gateway_cache = None;
            let conns: Vec<_> = member.conns.iter().copied().collect();
            let frame = removed_frame(&self.code, "banned", &caller.user_id, until);
            self.out.deliveries.push(ToGateway::Remove {
                room: self.code.to_string(),
                conns,
                frame: Arc::from(frame),
            });
            self.emit(
                now,
                EventBody::PresenceLeave {
                    user_id: target.to_owned(),
                },
            );
            self.maybe_end_ad_pause(now);
            self.check_ready_gate(now);
        }
        self.audit(
            now,
            &caller.user_id,
            "room.ban",
            json!({"user_id": target, "until": until}),
        );
        Ok(Ack::with(json!({"until": until})))
    }

    pub(super) fn unban(&mut self, now: u64, caller: &Caller, target: &str) -> Handled {
        self.may_moderate(caller, target)?;
        match self.d.bans.remove(target) {
            Some(until) if until.is_none_or(|t| t > now) => {
                self.dirty = true;
                self.audit(
                    now,
                    &caller.user_id,
                    "room.unban",
                    json!({"user_id": target}),
                );
                Ok(Ack::empty())
            }
            expired => {
                self.dirty |= expired.is_some();
                Err(Refusal::new(ErrorCode::NotFound, "that user is not banned"))
            }
        }
    }

    /// The owner bans anyone but themselves; operators ban participants.
    fn may_moderate(&self, caller: &Caller, target: &str) -> Result<(), Refusal> {
        bounds::role_target(target)?;
        let by = self.role_of(&caller.user_id);
        if !matches!(by, Role::Owner | Role::Operator) {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "only the owner and operators ban users",
            ));
        }
        if target == caller.user_id {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                "you cannot ban yourself",
            ));
        }
        match (by, self.role_of(target)) {
            (_, Role::Owner) => Err(Refusal::new(
                ErrorCode::Forbidden,
                "the room owner cannot be banned",
            )),
            (Role::Operator, Role::Operator) => Err(Refusal::new(
                ErrorCode::Forbidden,
                "only the owner bans operators",
            )),
            _ => Ok(()),
        }
    }
}

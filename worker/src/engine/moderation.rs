//! Bans and mutes: the owner and operators take a user out of the room and keep them out
//! (a ban; a kick is a short one), or keep them from chatting while they watch (a mute),
//! for a while or for good. Kept with the room (`Durable::bans`, `Durable::mutes`), each
//! bounded by `room.bans_max`; an expired one is forgotten the next time its map is
//! changed, and never counts.

use std::collections::BTreeMap;
use std::sync::Arc;

use lockstep_shared::bus::{Caller, ToGateway};
use lockstep_shared::protocol::error::Refusal;
use lockstep_shared::protocol::server::removed_frame;
use lockstep_shared::protocol::{bounds, ErrorCode, EventBody, Role};
use serde_json::{json, Value};

use super::{Ack, Handled, Room};

/// What a moderator imposes on a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sanction {
    /// Out of the room, no joining.
    Ban,
    /// In the room, no chat.
    Mute,
}

impl Sanction {
    fn verb(self) -> &'static str {
        match self {
            Sanction::Ban => "ban",
            Sanction::Mute => "mute",
        }
    }

    fn participle(self) -> &'static str {
        match self {
            Sanction::Ban => "banned",
            Sanction::Mute => "muted",
        }
    }

    /// "banned from" / "muted in" (this room).
    fn past(self) -> &'static str {
        match self {
            Sanction::Ban => "banned from",
            Sanction::Mute => "muted in",
        }
    }
}

/// User id → until (server ms), `None` for good.
type Until = BTreeMap<String, Option<u64>>;

fn in_force(until: Option<u64>, now: u64) -> bool {
    until.is_none_or(|t| t > now)
}

impl Room {
    fn sanctions(&self, kind: Sanction) -> &Until {
        match kind {
            Sanction::Ban => &self.d.bans,
            Sanction::Mute => &self.d.mutes,
        }
    }

    fn sanctions_mut(&mut self, kind: Sanction) -> &mut Until {
        match kind {
            Sanction::Ban => &mut self.d.bans,
            Sanction::Mute => &mut self.d.mutes,
        }
    }

    /// `{"bans": [{"user_id", "until"}], "mutes": [...]}` in force at `now`, by user id, for
    /// moderators (`GET /v1/rooms/{code}/bans`): the ids an unban or unmute needs.
    pub fn bans_view(&self, now: u64) -> Value {
        let list = |kind| -> Vec<Value> {
            self.sanctions(kind)
                .iter()
                .filter(|(_, until)| in_force(**until, now))
                .map(|(user_id, until)| json!({"user_id": user_id, "until": until}))
                .collect()
        };
        json!({ "bans": list(Sanction::Ban), "mutes": list(Sanction::Mute) })
    }

    /// Whether `kind` keeps `user_id` from joining (a ban) or chatting (a mute) at `now`;
    /// the refusal says until when.
    pub(super) fn sanction_refusal(
        &self,
        kind: Sanction,
        user_id: &str,
        now: u64,
    ) -> Option<Refusal> {
        let until = *self.sanctions(kind).get(user_id)?;
        let past = kind.past();
        let message = match until {
            Some(t) if t <= now => return None,
            Some(t) => format!(
                "you are {past} this room for another {} s",
                (t - now).div_ceil(1000)
            ),
            None => format!("you are {past} this room"),
        };
        Some(Refusal::new(ErrorCode::Forbidden, message))
    }

    pub(super) fn sanction(
        &mut self,
        now: u64,
        caller: &Caller,
        target: &str,
        duration_ms: Option<u64>,
        kind: Sanction,
    ) -> Handled {
        self.may_moderate(caller, target, kind)?;
        if duration_ms == Some(0) {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                format!(
                    "duration_ms must be at least 1 (omit it for a {} without end)",
                    kind.verb()
                ),
            ));
        }
        let until = duration_ms.map(|d| now.saturating_add(d));
        let max = self.cfg.bans_max;
        let map = self.sanctions_mut(kind);
        map.retain(|_, u| in_force(*u, now));
        if !map.contains_key(target) && map.len() >= max {
            return Err(Refusal::new(
                ErrorCode::Conflict,
                format!("at most {max} {}s per room", kind.verb()),
            ));
        }
        map.insert(target.to_owned(), until);
        self.dirty = true;
        if kind == Sanction::Ban {
            self.remove_banned(now, caller, target, until);
        }
        self.audit(
            now,
            &caller.user_id,
            &format!("room.{}", kind.verb()),
            json!({"user_id": target, "until": until}),
        );
        Ok(Ack::with(json!({"until": until})))
    }

    /// A banned operator is an operator no more (the role would outlast the ban), and every
    /// connection of a present user leaves: the gateways are told (`Remove`), the others
    /// see `presence.leave`.
    fn remove_banned(&mut self, now: u64, caller: &Caller, target: &str, until: Option<u64>) {
        self.d.operators.remove(target);
        let Some(member) = self.members.remove(target) else {
            return;
        };
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
                reason: Some("banned".into()),
            },
        );
        self.maybe_end_ad_pause(now);
        self.check_ready_gate(now);
        self.check_vote_skip(now);
    }

    /// Lifts a ban or mute in force; `not_found` when there is none.
    pub(super) fn lift(
        &mut self,
        now: u64,
        caller: &Caller,
        target: &str,
        kind: Sanction,
    ) -> Handled {
        self.may_moderate(caller, target, kind)?;
        match self.sanctions_mut(kind).remove(target) {
            Some(until) if in_force(until, now) => {
                self.dirty = true;
                self.audit(
                    now,
                    &caller.user_id,
                    &format!("room.un{}", kind.verb()),
                    json!({"user_id": target}),
                );
                Ok(Ack::empty())
            }
            expired => {
                self.dirty |= expired.is_some();
                Err(Refusal::new(
                    ErrorCode::NotFound,
                    format!("that user is not {}", kind.participle()),
                ))
            }
        }
    }

    /// The owner sanctions anyone but themselves; operators sanction participants.
    fn may_moderate(&self, caller: &Caller, target: &str, kind: Sanction) -> Result<(), Refusal> {
        bounds::role_target(target)?;
        let verb = kind.verb();
        let by = self.role_of(&caller.user_id);
        if !matches!(by, Role::Owner | Role::Operator) {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                format!("only the owner and operators {verb} users"),
            ));
        }
        if target == caller.user_id {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                format!("you cannot {verb} yourself"),
            ));
        }
        match (by, self.role_of(target)) {
            (_, Role::Owner) => Err(Refusal::new(
                ErrorCode::Forbidden,
                format!("the room owner cannot be {}", kind.participle()),
            )),
            (Role::Operator, Role::Operator) => Err(Refusal::new(
                ErrorCode::Forbidden,
                format!("only the owner {verb}s operators"),
            )),
            _ => Ok(()),
        }
    }
}

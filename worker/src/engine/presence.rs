//! Presence (per user, across connections), ready flags, roles, settings and sources.

use lockstep_shared::bus::{Caller, ConnId, Membership, ToGateway};
use lockstep_shared::protocol::bounds;
use lockstep_shared::protocol::error::Refusal;
use lockstep_shared::protocol::{
    AdPolicy, ControlMode, ErrorCode, EventBody, Role, Source, SourceSpec,
};
use serde_json::json;

use super::moderation::Sanction;
use super::{Ack, AckResult, Handled, Member, Room};

impl Room {
    /// Joining is itself the `presence.join` event; a second connection of a present user
    /// joins silently. With `since_seq` covered by history, the missed events are replayed.
    pub(super) fn join(&mut self, now: u64, caller: &Caller, since_seq: Option<u64>) -> Handled {
        if let Some(refusal) = self.sanction_refusal(Sanction::Ban, &caller.user_id, now) {
            return Err(refusal);
        }
        let code = self.code.to_string();
        self.gateway_cache = None;
        match self.members.get_mut(&caller.user_id) {
            Some(member) => {
                member.conns.insert(caller.conn);
            }
            None => {
                if self.members.len() >= self.cfg.members_max {
                    return Err(Refusal::new(ErrorCode::Conflict, "the room is full"));
                }
                self.members.insert(
                    caller.user_id.clone(),
                    Member {
                        name: caller.name.clone(),
                        conns: super::conns::Conns::one(caller.conn),
                        ready: false,
                        ad: false,
                        voted_skip: false,
                    },
                );
                if let Some(user) = self.user_view(&caller.user_id) {
                    self.emit(now, EventBody::PresenceJoin { user });
                }
            }
        }
        let membership = Some(Membership::Join(code));
        if let Some(replay) = since_seq.and_then(|s| self.history.replay(s, self.seq)) {
            return Ok(Ack {
                result: AckResult::Value(json!({"seq": self.seq, "recovered": true})),
                membership,
                extra: replay,
            });
        }
        Ok(Ack {
            result: AckResult::Join,
            membership,
            extra: Vec::new(),
        })
    }

    /// A connection leaves; the user leaves presence with their last connection.
    pub(super) fn leave_conn(&mut self, now: u64, user_id: &str, conn: ConnId) {
        let Some(member) = self.members.get_mut(user_id) else {
            return;
        };
        if !member.conns.remove(&conn) {
            return;
        }
        self.gateway_cache = None;
        if !member.conns.is_empty() {
            return;
        }
        self.members.remove(user_id);
        self.emit(
            now,
            EventBody::PresenceLeave {
                user_id: user_id.to_owned(),
                reason: None,
            },
        );
        self.maybe_end_ad_pause(now);
        self.check_ready_gate(now);
        self.check_vote_skip(now);
    }

    /// Every connection of a gateway that stopped heartbeating leaves. The gateway is told
    /// too: one that was only stalled (paused, starved, cut off from Redis for a while) still
    /// holds those sockets, and they must close (1012) so their clients rejoin, instead of
    /// staying open outside presence, getting no events and `forbidden` for every command.
    pub(super) fn drop_gateway(&mut self, now: u64, gateway: u64) {
        let gone: Vec<(String, ConnId)> = self
            .members
            .iter()
            .flat_map(|(user, m)| {
                m.conns
                    .iter()
                    .filter(|c| c.gateway == gateway)
                    .map(move |c| (user.clone(), *c))
            })
            .collect();
        if gone.is_empty() {
            return;
        }
        let conns = gone.iter().map(|(_, c)| *c).collect();
        for (user, conn) in gone {
            self.leave_conn(now, &user, conn);
        }
        self.out.deliveries.push(ToGateway::Evict {
            room: self.code.to_string(),
            conns,
        });
    }

    /// A gateway missed some of the room's events on the bus: it gets them again, from its
    /// `since_seq` (or, when the history no longer reaches back that far, an empty replay
    /// from the next seq: the gateway closes the members that missed events, they rejoin).
    /// Its connections the room does not know — dropped while the gateway was cut off — are
    /// evicted first, so their clients rejoin instead of waiting on a room that ignores them.
    pub(super) fn resync(&mut self, gateway: u64, req: u64, since_seq: u64, conns: Vec<ConnId>) {
        let known: std::collections::HashSet<ConnId> = self
            .members
            .values()
            .flat_map(|m| m.conns.iter().copied())
            .filter(|c| c.gateway == gateway)
            .collect();
        let unknown: Vec<ConnId> = conns
            .into_iter()
            .filter(|c| c.gateway == gateway && !known.contains(c))
            .collect();
        if !unknown.is_empty() {
            self.out.deliveries.push(ToGateway::Evict {
                room: self.code.to_string(),
                conns: unknown,
            });
        }
        let (first_seq, frames) = match self.history.replay(since_seq, self.seq) {
            Some(frames) => (since_seq + 1, frames),
            None => (self.seq + 1, Vec::new()),
        };
        self.out.deliveries.push(ToGateway::Replay {
            room: self.code.to_string(),
            gateway,
            req,
            first_seq,
            frames,
        });
    }

    pub(super) fn set_ready(&mut self, now: u64, caller: &Caller, ready: bool) -> Handled {
        let changed = match self.members.get_mut(&caller.user_id) {
            Some(m) if m.ready != ready => {
                m.ready = ready;
                true
            }
            _ => false,
        };
        if changed {
            if let Some(user) = self.user_view(&caller.user_id) {
                self.emit(now, EventBody::PresenceUpdate { user });
            }
            self.check_ready_gate(now);
        }
        Ok(Ack::empty())
    }

    pub(super) fn set_role(
        &mut self,
        now: u64,
        caller: &Caller,
        target: &str,
        role: Role,
    ) -> Handled {
        self.require_owner(caller)?;
        bounds::role_target(target)?;
        if target == self.d.owner {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                "the owner's role cannot change",
            ));
        }
        let changed = match role {
            Role::Owner => {
                return Err(Refusal::new(
                    ErrorCode::BadRequest,
                    "role must be `operator` or `participant`",
                ))
            }
            Role::Operator if self.d.operators.contains(target) => false,
            Role::Operator => {
                if self.d.operators.len() >= self.cfg.operators_max {
                    return Err(Refusal::new(
                        ErrorCode::Conflict,
                        format!("at most {} operators per room", self.cfg.operators_max),
                    ));
                }
                self.d.operators.insert(target.to_owned())
            }
            Role::Participant => self.d.operators.remove(target),
        };
        if changed {
            self.dirty = true;
            if let Some(user) = self.user_view(target) {
                self.emit(now, EventBody::PresenceUpdate { user });
            }
            self.audit(
                now,
                &caller.user_id,
                "room.role",
                json!({"user_id": target, "role": role}),
            );
        }
        Ok(Ack::empty())
    }

    pub(super) fn settings(
        &mut self,
        now: u64,
        caller: &Caller,
        control_mode: Option<ControlMode>,
        ad_policy: Option<AdPolicy>,
        name: Option<String>,
        vote_skip_percent: Option<u8>,
    ) -> Handled {
        self.require_owner(caller)?;
        let mut next = self.d.settings.clone();
        if let Some(percent) = vote_skip_percent {
            if percent > 100 {
                return Err(Refusal::new(
                    ErrorCode::BadRequest,
                    "vote_skip_percent must be 0 (off) to 100",
                ));
            }
            next.vote_skip_percent = percent;
        }
        if let Some(name) = name {
            bounds::room_name(&name)?;
            next.name = name.trim().to_owned();
        }
        if let Some(mode) = control_mode {
            next.control_mode = mode;
        }
        if let Some(policy) = ad_policy {
            next.ad_policy = policy;
        }
        if next != self.d.settings {
            let leaving_pause_all =
                next.ad_policy == AdPolicy::Ignore && self.ad_resume_at.is_some();
            self.d.settings = next.clone();
            self.dirty = true;
            self.emit(
                now,
                EventBody::RoomSettings {
                    settings: next.clone(),
                },
            );
            self.audit(now, &caller.user_id, "room.settings", json!(next));
            if leaving_pause_all {
                self.end_ad_pause(now, false);
            }
            self.check_vote_skip(now);
        }
        Ok(Ack::with(json!({"settings": self.d.settings})))
    }

    /// Records external chat sources; the owner's ingestion runners follow this list.
    pub(super) fn sources(
        &mut self,
        now: u64,
        caller: &Caller,
        add: Option<SourceSpec>,
        remove: Option<String>,
    ) -> Handled {
        if !matches!(self.role_of(&caller.user_id), Role::Owner | Role::Operator) {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "only the owner and operators manage sources",
            ));
        }
        match (add, remove) {
            (Some(spec), None) => {
                let spec = spec.normalized()?;
                if self
                    .d
                    .sources
                    .iter()
                    .any(|s| s.spec.public() == spec.public())
                {
                    return Err(Refusal::new(ErrorCode::Conflict, "source already attached"));
                }
                if self.d.sources.len() >= self.cfg.sources_max {
                    return Err(Refusal::new(
                        ErrorCode::Conflict,
                        format!("at most {} sources per room", self.cfg.sources_max),
                    ));
                }
                let source_id = format!("s{}", self.d.next_source_id);
                self.d.next_source_id += 1;
                let platform = spec.platform().to_owned();
                self.d.sources.push(Source {
                    source_id: source_id.clone(),
                    spec,
                    cursor: None,
                });
                self.dirty = true;
                self.ingest
                    .states
                    .insert(source_id.clone(), ("connecting", None));
                self.emit(
                    now,
                    EventBody::SourceStatus {
                        source_id: source_id.clone(),
                        platform,
                        state: "connecting".into(),
                        error: None,
                    },
                );
                self.audit(
                    now,
                    &caller.user_id,
                    "room.sources.add",
                    json!({"source_id": source_id}),
                );
                Ok(Ack::with(json!({"source_id": source_id})))
            }
            (None, Some(source_id)) => {
                let index = self
                    .d
                    .sources
                    .iter()
                    .position(|s| s.source_id == source_id)
                    .ok_or_else(bounds::no_such_source)?;
                let source = self.d.sources.remove(index);
                self.ingest.states.remove(&source.source_id);
                self.dirty = true;
                self.emit(
                    now,
                    EventBody::SourceStatus {
                        source_id: source.source_id.clone(),
                        platform: source.spec.platform().to_owned(),
                        state: "removed".into(),
                        error: None,
                    },
                );
                self.audit(
                    now,
                    &caller.user_id,
                    "room.sources.remove",
                    json!({"source_id": source.source_id}),
                );
                Ok(Ack::empty())
            }
            _ => Err(Refusal::new(
                ErrorCode::BadRequest,
                "give exactly one of `add` or `remove`",
            )),
        }
    }

    fn require_owner(&self, caller: &Caller) -> Result<(), Refusal> {
        if caller.user_id == self.d.owner {
            Ok(())
        } else {
            Err(Refusal::new(
                ErrorCode::Forbidden,
                "only the room owner may do this",
            ))
        }
    }
}

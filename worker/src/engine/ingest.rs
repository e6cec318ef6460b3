//! Upstream chat entering the room: normalized items from a source runner become
//! `chat.message` events with `source` twitch/youtube, moderation removes earlier messages
//! from view (snapshot and stored history), a per-room cap sheds floods, and status changes
//! become `source.status` events. The runners do the I/O; this is the pure part.

use lockstep_shared::protocol::ext::{ChatExt, ExtKind};
use lockstep_shared::protocol::{ChatMessage, ChatSource, ChatUser, EventBody, SourceSpec};
use lockstep_shared::store::Mutation;
use serde_json::Value;

use super::chat_index::{self, Indexed};
use super::{Room, TokenBucket};

/// One normalized upstream item.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestItem {
    pub text: String,
    pub ext: ChatExt,
    /// Deletion: the upstream ids of the removed messages.
    pub upstream_targets: Vec<String>,
}

/// What a running source tells its room.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceReport {
    /// A `source.status` state (`connecting`, `live`, `offline`, `open`, `half_open`,
    /// `closed`, `ended`); repeated states are not re-emitted.
    Status {
        source_id: String,
        state: &'static str,
        error: Option<String>,
    },
    /// Items in upstream order, and where the source stands after them (persisted in the
    /// same commit, so a new owner resumes exactly after the last delivered item).
    Items {
        source_id: String,
        items: Vec<IngestItem>,
        cursor: Option<Value>,
    },
}

impl SourceReport {
    pub fn source_id(&self) -> &str {
        match self {
            SourceReport::Status { source_id, .. } | SourceReport::Items { source_id, .. } => {
                source_id
            }
        }
    }
}

/// Ingestion state that lives with the room but is not durable.
#[derive(Debug, Default)]
pub(super) struct IngestState {
    pub states: std::collections::BTreeMap<String, (&'static str, Option<String>)>,
    bucket: Option<TokenBucket>,
}

impl Room {
    /// Applies one report from a source runner. Reports for a source no longer attached are
    /// ignored (the runner is being stopped).
    pub fn ingest(&mut self, now: u64, report: SourceReport) -> super::Output {
        let Some(index) = self
            .d
            .sources
            .iter()
            .position(|s| s.source_id == report.source_id())
        else {
            return self.finish();
        };
        let platform = self.d.sources[index].spec.platform();
        match report {
            SourceReport::Status {
                source_id,
                state,
                error,
            } => {
                let now_state = (state, error.clone());
                if self.ingest.states.get(&source_id) != Some(&now_state) {
                    self.ingest.states.insert(source_id.clone(), now_state);
                    self.emit(
                        now,
                        EventBody::SourceStatus {
                            source_id,
                            platform: platform.to_owned(),
                            state: state.to_owned(),
                            error,
                        },
                    );
                }
            }
            SourceReport::Items {
                source_id,
                items,
                cursor,
            } => {
                let source = match platform {
                    "twitch" => ChatSource::Twitch,
                    _ => ChatSource::Youtube,
                };
                for item in items {
                    self.ingest_item(now, &source_id, source, item);
                }
                if let Some(cursor) = cursor {
                    let slot = &mut self.d.sources[index].cursor;
                    if slot.as_ref() != Some(&cursor) {
                        *slot = Some(cursor);
                        self.dirty = true;
                    }
                }
            }
        }
        self.finish()
    }

    /// Current `source.status` of each attached source, for the snapshot.
    pub(super) fn sources_view(&self) -> Vec<Value> {
        self.d
            .sources
            .iter()
            .map(|s| {
                let mut v = serde_json::to_value(SourceSpec::public(&s.spec)).unwrap_or_default();
                let (state, error) = self
                    .ingest
                    .states
                    .get(&s.source_id)
                    .cloned()
                    .unwrap_or(("connecting", None));
                v["source_id"] = Value::from(s.source_id.clone());
                v["state"] = Value::from(state);
                if let Some(e) = error {
                    v["error"] = Value::from(e);
                }
                v
            })
            .collect()
    }

    fn ingest_item(&mut self, now: u64, source_id: &str, source: ChatSource, item: IngestItem) {
        let IngestItem {
            text,
            mut ext,
            upstream_targets,
        } = item;
        ext.source_id = source_id.to_owned();
        if ext.kind.is_moderation() {
            ext.targets = self.remove_from_view(source_id, &ext, &upstream_targets);
        } else {
            let (rate, burst) = (self.cfg.ingest_rate, self.cfg.ingest_burst);
            let bucket = self
                .ingest
                .bucket
                .get_or_insert_with(|| TokenBucket::full(burst, now));
            if !bucket.try_take(rate, burst, now) {
                self.out.shed += 1;
                return;
            }
        }
        let text: String = text.chars().take(self.cfg.chat_max_chars).collect();
        let author = ext.author.as_ref();
        let user = ChatUser {
            user_id: author
                .map(|a| format!("{}:{}", source_label(source), a.id))
                .unwrap_or_else(|| source_label(source).to_owned()),
            name: author
                .map(|a| a.name.clone())
                .unwrap_or_else(|| source_label(source).to_owned()),
        };
        let (kind, upstream_id, author_id) = (
            ext.kind,
            ext.upstream_id.clone(),
            author.map(|a| a.id.clone()),
        );
        let ext_value = serde_json::to_value(&ext).ok();
        let msg = ChatMessage {
            id: self.seq + 1,
            ts: now,
            user,
            text,
            source,
            ext: ext_value,
        };
        self.emit(now, EventBody::ChatMessage(msg.body()));
        self.out.mutations.push(Mutation::Chat {
            room: self.code.to_string(),
            msg: msg.clone(),
        });
        self.out
            .ingested
            .push((source_label(source), kind.as_str()));
        if !kind.is_moderation() {
            self.chat_index.push(Indexed {
                source_id: source_id.to_owned(),
                upstream_id,
                author_id,
                msg,
            });
        }
    }

    /// Removes the messages a moderation item targets from the snapshot chat and rewrites
    /// their stored rows without text. Returns their room chat ids.
    fn remove_from_view(
        &mut self,
        source_id: &str,
        ext: &ChatExt,
        upstream_targets: &[String],
    ) -> Vec<u64> {
        let hit = |e: &Indexed| -> bool {
            e.source_id == source_id
                && match ext.kind {
                    ExtKind::Deletion => e
                        .upstream_id
                        .as_ref()
                        .is_some_and(|id| upstream_targets.contains(id)),
                    ExtKind::Ban => e.author_id.is_some() && e.author_id == ext.target_user,
                    _ => true,
                }
        };
        let removed = self.chat_index.take_where(hit);
        let ids: Vec<u64> = removed.iter().map(|m| m.id).collect();
        for msg in removed {
            self.out.mutations.push(Mutation::Chat {
                room: self.code.to_string(),
                msg: chat_index::deleted(msg),
            });
        }
        ids
    }
}

fn source_label(source: ChatSource) -> &'static str {
    match source {
        ChatSource::Room => "room",
        ChatSource::Twitch => "twitch",
        ChatSource::Youtube => "youtube",
    }
}

//! Group commit as set statements. A group of room batches becomes one transaction of a
//! fixed handful of statements — one per table, its rows passed as arrays and expanded by
//! `unnest` — whatever the group's size, each prepared once per connection. It used to be a
//! savepoint and four freshly parsed statements per batch, and on a busy cluster Postgres
//! then spent more CPU per chat message than the gateways and workers together.
//!
//! Fencing stays per room: the room upsert returns the codes it wrote, and every batch of
//! a room it did not write (a newer owner's row) fails alone with `Fenced`, its other
//! mutations left out. A group in which one room is written under two epochs is split into
//! runs, applied in order in the same transaction, so each run's upsert sees one epoch per
//! room, exactly as batch-by-batch application would.
//!
//! Round trips: a group costs two, `BEGIN` sent with the room upserts and `COMMIT` with the
//! row statements (tokio-postgres pipelines requests issued together, in the order they are
//! first polled). It cost four (`BEGIN`, rooms, rows, `COMMIT`), and on a cluster each one is a
//! wake-up of the worker and of a Postgres backend: the workers' CPU per chat message was mostly
//! the kernel switching tasks. A pipelined `COMMIT` is safe because nothing is sent after a
//! request that failed to encode, and Postgres answers `COMMIT` in a transaction a statement
//! aborted with a rollback; the group then fails as a whole.
//!
//! A group that Postgres refused (a statement rejected for its data, not a lost connection) is
//! then applied batch by batch, so the batch that holds the bad row fails alone and the rooms
//! grouped with it by chance commit as they would have on their own.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use deadpool_postgres::Pool;
use lockstep_shared::store::{Mutation, StoreError};
use serde_json::Value;
use tokio_postgres::{Client, Statement};

use super::unavailable;

const ROOMS_WITH_STATE: &str = "INSERT INTO rooms (code, seq, state, epoch) \
     SELECT * FROM unnest($1::text[], $2::int8[], $3::jsonb[], $4::int8[]) \
     ON CONFLICT (code) DO UPDATE SET seq = EXCLUDED.seq, state = EXCLUDED.state, \
     epoch = EXCLUDED.epoch, updated_at = now() \
     WHERE rooms.epoch <= EXCLUDED.epoch RETURNING code";

/// A seq-only update keeps the stored state; a new row starts with an empty one.
const ROOMS_SEQ_ONLY: &str = "INSERT INTO rooms (code, seq, state, epoch) \
     SELECT code, seq, '{}'::jsonb, epoch FROM unnest($1::text[], $2::int8[], $3::int8[]) \
     AS t(code, seq, epoch) \
     ON CONFLICT (code) DO UPDATE SET seq = EXCLUDED.seq, epoch = EXCLUDED.epoch, updated_at = now() \
     WHERE rooms.epoch <= EXCLUDED.epoch RETURNING code";

const CHAT: &str = "INSERT INTO chat (room, id, ts, msg) \
     SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::jsonb[]) \
     ON CONFLICT (room, id) DO UPDATE SET ts = EXCLUDED.ts, msg = EXCLUDED.msg";

/// Ids follow the rows' order, so the audit log reads in the order things happened.
const AUDIT: &str = "INSERT INTO audit (room, ts, actor, action, detail) \
     SELECT room, ts, actor, action, detail \
     FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::jsonb[]) \
     WITH ORDINALITY AS t(room, ts, actor, action, detail, n) ORDER BY n";

const EVENTS: &str = "INSERT INTO events (room, seq, ts, frame) \
     SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[]) \
     ON CONFLICT (room, seq) DO UPDATE SET ts = EXCLUDED.ts, frame = EXCLUDED.frame";

/// A deleted message's row keeps its place: no text, no emotes, `ext.deleted`.
const CHAT_DELETE: &str = "UPDATE chat c SET msg = jsonb_set(c.msg, '{text}', '\"\"') \
     || jsonb_build_object('ext', (coalesce(c.msg->'ext', '{}'::jsonb) - 'emotes') \
     || '{\"deleted\": true}'::jsonb) \
     FROM unnest($1::text[], $2::int8[]) AS d(room, id) WHERE c.room = d.room AND c.id = d.id";

const EVENTS_TRIM: &str = "DELETE FROM events e \
     USING unnest($1::text[], $2::int8[]) AS d(room, upto) \
     WHERE e.room = d.room AND e.seq <= d.upto";

const COMMANDS: &str = "INSERT INTO commands (room, user_id, id, reply, ts) \
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[]) \
     ON CONFLICT (room, user_id, id) DO UPDATE SET reply = EXCLUDED.reply, ts = EXCLUDED.ts";

/// Commits `batches` in one transaction; one result per batch, in order.
pub(super) async fn commit(
    pool: &Pool,
    batches: &[Vec<Mutation>],
    events_keep: usize,
) -> Vec<Result<(), StoreError>> {
    match commit_group(pool, batches, events_keep).await {
        Ok(results) => results,
        Err(f) if f.refused && batches.len() > 1 => {
            tracing::warn!(cause = %f.error, batches = batches.len(), "group refused; committing its batches one by one");
            let mut results = Vec::with_capacity(batches.len());
            for batch in batches {
                let one = commit_group(pool, std::slice::from_ref(batch), events_keep).await;
                results.push(match one {
                    Ok(r) => r.into_iter().next().unwrap_or(Ok(())),
                    Err(f) => Err(f.error),
                });
            }
            results
        }
        Err(f) => batches.iter().map(|_| Err(f.error.clone())).collect(),
    }
}

/// Why a group failed: the error each of its batches gets, and whether it was the data that
/// Postgres refused (worth retrying batch by batch) rather than the connection or the server.
struct Failed {
    error: StoreError,
    refused: bool,
}

/// A failure of the connection, the pool or the server: every batch gets it, no retry.
fn down(e: impl std::error::Error + 'static) -> Failed {
    Failed {
        error: unavailable(e),
        refused: false,
    }
}

/// The writer holds no connection: every batch gets it, no retry.
fn no_connection() -> Failed {
    Failed {
        error: StoreError::Unavailable("no connection".into()),
        refused: false,
    }
}

/// A failed request: refused when the server answered with an error.
fn db(e: tokio_postgres::Error) -> Failed {
    Failed {
        refused: e.as_db_error().is_some(),
        error: unavailable(e),
    }
}

/// Commits `batches` as one transaction, or reports why nothing of it was committed.
async fn commit_group(
    pool: &Pool,
    batches: &[Vec<Mutation>],
    events_keep: usize,
) -> Result<Vec<Result<(), StoreError>>, Failed> {
    let mut held = Held(Some(pool.get().await.map_err(down)?));
    let Some(client) = held.0.as_ref() else {
        return Err(no_connection());
    };
    let st = Statements::prepare(client).await?;
    let runs = runs(batches);
    let last = runs.len().saturating_sub(1);
    let mut results = Vec::with_capacity(batches.len());
    for (i, run) in runs.into_iter().enumerate() {
        let ends = Ends {
            begin: i == 0,
            commit: i == last,
        };
        match write_run(client, &st, &batches[run], events_keep, ends).await {
            Ok(run_results) => results.extend(run_results),
            Err(f) => {
                // Whatever was sent is void: the transaction is aborted or never committed.
                // A broken connection is found and replaced by the pool's recycling.
                let _ = client.batch_execute("ROLLBACK").await;
                held.release();
                return Err(f);
            }
        }
    }
    held.release();
    Ok(results)
}

/// A connection inside a group's transaction. Dropped before `release` (the commit's future
/// abandoned between `BEGIN` and `COMMIT`), it is closed rather than given back to the pool,
/// so no later group can start on a transaction left open and commit its leftovers.
struct Held(Option<deadpool_postgres::Client>);

impl Held {
    /// The transaction ended (committed or rolled back): the pool may have the connection.
    fn release(&mut self) {
        drop(self.0.take());
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

/// Where a run sits in the group's transaction: the first sends `BEGIN` ahead of its room
/// upserts, the last sends `COMMIT` after its rows.
#[derive(Clone, Copy)]
struct Ends {
    begin: bool,
    commit: bool,
}

/// The group's statements, prepared once per connection (later groups find them cached), so
/// that every request of a pipeline is sent when first polled, with no round trip before it.
struct Statements {
    rooms_with_state: Statement,
    rooms_seq_only: Statement,
    chat: Statement,
    chat_delete: Statement,
    audit: Statement,
    events: Statement,
    events_trim: Statement,
    commands: Statement,
}

impl Statements {
    async fn prepare(c: &deadpool_postgres::Client) -> Result<Statements, Failed> {
        let (rooms_with_state, rooms_seq_only, chat, audit) = futures_util::future::try_join4(
            c.prepare_cached(ROOMS_WITH_STATE),
            c.prepare_cached(ROOMS_SEQ_ONLY),
            c.prepare_cached(CHAT),
            c.prepare_cached(AUDIT),
        )
        .await
        .map_err(db)?;
        let (events, events_trim, commands, chat_delete) = futures_util::future::try_join4(
            c.prepare_cached(EVENTS),
            c.prepare_cached(EVENTS_TRIM),
            c.prepare_cached(COMMANDS),
            c.prepare_cached(CHAT_DELETE),
        )
        .await
        .map_err(db)?;
        Ok(Statements {
            rooms_with_state,
            rooms_seq_only,
            chat,
            chat_delete,
            audit,
            events,
            events_trim,
            commands,
        })
    }
}

/// `BEGIN` or `COMMIT` when `send`, nothing otherwise.
async fn framing(c: &Client, send: bool, sql: &str) -> Result<(), Failed> {
    if send {
        c.batch_execute(sql).await.map_err(db)?;
    }
    Ok(())
}

/// The room writes of a batch: (code, epoch) of each `Room` mutation.
fn room_writes(batch: &[Mutation]) -> impl Iterator<Item = (&str, u64)> {
    batch.iter().filter_map(|m| match m {
        Mutation::Room { code, epoch, .. } => Some((code.as_str(), *epoch)),
        _ => None,
    })
}

/// Splits the group where a room reappears under another epoch (an owner change inside one
/// group); each run then has one epoch per room.
fn runs(batches: &[Vec<Mutation>]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut epochs: HashMap<&str, u64> = HashMap::new();
    for (i, batch) in batches.iter().enumerate() {
        let conflict =
            room_writes(batch).any(|(code, epoch)| epochs.get(code).is_some_and(|&e| e != epoch));
        if conflict {
            out.push(start..i);
            start = i;
            epochs.clear();
        }
        epochs.extend(room_writes(batch));
    }
    out.push(start..batches.len());
    out
}

/// Rows keyed for upserts: a later row with the same key replaces the earlier one in place
/// (one statement may not touch a row twice), so the last write of a key wins, as it would
/// applied one by one.
struct Upserts<K, R> {
    index: HashMap<K, usize>,
    rows: Vec<R>,
}

impl<K: std::hash::Hash + Eq, R> Default for Upserts<K, R> {
    fn default() -> Self {
        Upserts {
            index: HashMap::new(),
            rows: Vec::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq, R> Upserts<K, R> {
    fn put(&mut self, key: K, row: R) {
        match self.index.get(&key) {
            Some(&i) => self.rows[i] = row,
            None => {
                self.index.insert(key, self.rows.len());
                self.rows.push(row);
            }
        }
    }
}

/// A room's merged write within a run: the newest seq, the newest state if any batch
/// carried one.
struct RoomRow<'a> {
    code: &'a str,
    seq: i64,
    state: Option<&'a Value>,
    epoch: i64,
}

/// Applies one run; the per-batch results (`Fenced` for the batches of rooms whose row
/// belongs to a newer owner).
async fn write_run(
    c: &Client,
    st: &Statements,
    batches: &[Vec<Mutation>],
    events_keep: usize,
    ends: Ends,
) -> Result<Vec<Result<(), StoreError>>, Failed> {
    let (_, fenced) = futures_util::future::try_join(
        framing(c, ends.begin, "BEGIN"),
        write_rooms(c, st, batches),
    )
    .await?;
    let mut results = Vec::with_capacity(batches.len());
    let mut live = Vec::with_capacity(batches.len());
    for batch in batches {
        match room_writes(batch).find(|(code, _)| fenced.contains(code)) {
            Some((_, epoch)) => results.push(Err(StoreError::Fenced(epoch))),
            None => {
                results.push(Ok(()));
                live.push(batch);
            }
        }
    }
    futures_util::future::try_join(
        write_rows(c, st, &live, events_keep),
        framing(c, ends.commit, "COMMIT"),
    )
    .await?;
    Ok(results)
}

/// Upserts the run's room rows; returns the codes refused by fencing.
async fn write_rooms<'a>(
    c: &Client,
    st: &Statements,
    batches: &'a [Vec<Mutation>],
) -> Result<HashSet<&'a str>, Failed> {
    let mut rooms: Upserts<&str, RoomRow<'a>> = Upserts::default();
    for m in batches.iter().flatten() {
        if let Mutation::Room {
            code,
            seq,
            state,
            epoch,
        } = m
        {
            let kept = rooms.index.get(code.as_str()).map(|&i| &rooms.rows[i]);
            let state = state.as_ref().or(kept.and_then(|r| r.state));
            let row = RoomRow {
                code,
                seq: *seq as i64,
                state,
                epoch: *epoch as i64,
            };
            rooms.put(code.as_str(), row);
        }
    }
    if rooms.rows.is_empty() {
        return Ok(HashSet::new());
    }
    let (with, without): (Vec<&RoomRow>, Vec<&RoomRow>) =
        rooms.rows.iter().partition(|r| r.state.is_some());
    let with_state = async {
        let (codes, seqs, epochs) = (
            col(&with, |r| r.code),
            col(&with, |r| r.seq),
            col(&with, |r| r.epoch),
        );
        let states: Vec<&Value> = with.iter().filter_map(|r| r.state).collect();
        query(
            c,
            &st.rooms_with_state,
            with.len(),
            &[&codes, &seqs, &states, &epochs],
        )
        .await
    };
    let seq_only = async {
        let (codes, seqs, epochs) = (
            col(&without, |r| r.code),
            col(&without, |r| r.seq),
            col(&without, |r| r.epoch),
        );
        query(
            c,
            &st.rooms_seq_only,
            without.len(),
            &[&codes, &seqs, &epochs],
        )
        .await
    };
    let (a, b) = futures_util::future::try_join(with_state, seq_only).await?;
    let written: HashSet<String> = a
        .iter()
        .chain(b.iter())
        .map(|row| row.get::<_, String>(0))
        .collect();
    Ok(rooms
        .rows
        .iter()
        .map(|r| r.code)
        .filter(|code| !written.contains(*code))
        .collect())
}

struct ChatRow<'a> {
    room: &'a str,
    id: i64,
    ts: i64,
    msg: Value,
}

struct AuditRow<'a> {
    room: &'a str,
    ts: i64,
    actor: &'a str,
    action: &'a str,
    detail: &'a Value,
}

struct EventRow<'a> {
    room: &'a str,
    seq: i64,
    ts: i64,
    frame: &'a str,
}

struct CommandRow<'a> {
    room: &'a str,
    user_id: &'a str,
    id: &'a str,
    reply: &'a str,
    ts: i64,
}

/// One column of `rows`, as the array `unnest` expands.
fn col<'r, R, T>(rows: &'r [R], f: impl Fn(&'r R) -> T) -> Vec<T> {
    rows.iter().map(f).collect()
}

/// Chat, audit, events (and their trimming) and command ids of the batches that were not
/// fenced, one statement per table, pipelined on the connection.
async fn write_rows(
    c: &Client,
    st: &Statements,
    batches: &[&Vec<Mutation>],
    events_keep: usize,
) -> Result<(), Failed> {
    let mut chat: Upserts<(&str, u64), ChatRow> = Upserts::default();
    let mut audit: Vec<AuditRow> = Vec::new();
    let mut events: Upserts<(&str, u64), EventRow> = Upserts::default();
    let mut trims: HashMap<&str, i64> = HashMap::new();
    let mut deletes: Vec<(&str, i64)> = Vec::new();
    let mut commands: Upserts<(&str, &str, &str), CommandRow> = Upserts::default();
    let keep = events_keep as u64;
    for m in batches.iter().copied().flatten() {
        match m {
            Mutation::Room { .. } => {}
            Mutation::Chat { room, msg } => {
                let json = serde_json::to_value(msg).map_err(|e| Failed {
                    error: StoreError::Corrupt(e.to_string()),
                    refused: true,
                })?;
                let row = ChatRow {
                    room,
                    id: msg.id as i64,
                    ts: msg.ts as i64,
                    msg: json,
                };
                chat.put((room, msg.id), row);
            }
            Mutation::Audit { room, entry } => audit.push(AuditRow {
                room,
                ts: entry.ts as i64,
                actor: &entry.actor,
                action: &entry.action,
                detail: &entry.detail,
            }),
            Mutation::Event { room, event } => {
                let row = EventRow {
                    room,
                    seq: event.seq as i64,
                    ts: event.ts as i64,
                    frame: &event.frame,
                };
                events.put((room, event.seq), row);
                // Keep the newest `events_keep`: every tenth of that, drop what fell out.
                if keep > 0 && event.seq % (keep / 10).max(1) == 0 {
                    let upto = event.seq.saturating_sub(keep) as i64;
                    let t = trims.entry(room).or_insert(upto);
                    *t = (*t).max(upto);
                }
            }
            Mutation::DeleteChat { room, id } => deletes.push((room, *id as i64)),
            Mutation::TrimEvents { room, below_seq } => {
                let upto = below_seq.saturating_sub(1) as i64;
                let t = trims.entry(room).or_insert(upto);
                *t = (*t).max(upto);
            }
            Mutation::Command { room, record } => {
                let row = CommandRow {
                    room,
                    user_id: &record.user_id,
                    id: &record.id,
                    reply: &record.reply,
                    ts: record.ts as i64,
                };
                commands.put((room, &record.user_id, &record.id), row);
            }
        }
    }
    // Issued together (and with `COMMIT` by the caller), so tokio-postgres pipelines them.
    let chat = async {
        let rows = &chat.rows;
        let (room, id, ts) = (
            col(rows, |r| r.room),
            col(rows, |r| r.id),
            col(rows, |r| r.ts),
        );
        let msg = col(rows, |r| &r.msg);
        let upserted = execute(c, &st.chat, rows.len(), &[&room, &id, &ts, &msg]).await?;
        // After the upserts (a row written and deleted in one group ends deleted). Only
        // blind deletes come here, rare enough that the extra round trip does not matter.
        let room: Vec<&str> = deletes.iter().map(|d| d.0).collect();
        let id: Vec<i64> = deletes.iter().map(|d| d.1).collect();
        execute(c, &st.chat_delete, room.len(), &[&room, &id]).await?;
        Ok(upserted)
    };
    let audit = async {
        let rows = &audit;
        let (room, ts, actor) = (
            col(rows, |r| r.room),
            col(rows, |r| r.ts),
            col(rows, |r| r.actor),
        );
        let (action, detail) = (col(rows, |r| r.action), col(rows, |r| r.detail));
        execute(
            c,
            &st.audit,
            rows.len(),
            &[&room, &ts, &actor, &action, &detail],
        )
        .await
    };
    let events = async {
        let rows = &events.rows;
        let (room, seq) = (col(rows, |r| r.room), col(rows, |r| r.seq));
        let (ts, frame) = (col(rows, |r| r.ts), col(rows, |r| r.frame));
        execute(c, &st.events, rows.len(), &[&room, &seq, &ts, &frame]).await
    };
    let trims = async {
        let room: Vec<&str> = trims.keys().copied().collect();
        let upto: Vec<i64> = trims.values().copied().collect();
        execute(c, &st.events_trim, room.len(), &[&room, &upto]).await
    };
    let commands = async {
        let rows = &commands.rows;
        let (room, user_id, id) = (
            col(rows, |r| r.room),
            col(rows, |r| r.user_id),
            col(rows, |r| r.id),
        );
        let (reply, ts) = (col(rows, |r| r.reply), col(rows, |r| r.ts));
        execute(
            c,
            &st.commands,
            rows.len(),
            &[&room, &user_id, &id, &reply, &ts],
        )
        .await
    };
    futures_util::future::try_join5(chat, audit, events, trims, commands).await?;
    Ok(())
}

type Param<'a> = &'a (dyn tokio_postgres::types::ToSql + Sync);

/// Runs a statement over `rows` rows (its parameters are their columns); none: nothing sent.
async fn execute(
    c: &Client,
    statement: &Statement,
    rows: usize,
    params: &[Param<'_>],
) -> Result<u64, Failed> {
    if rows == 0 {
        return Ok(0);
    }
    c.execute(statement, params).await.map_err(db)
}

/// Like [`execute`], for a statement that returns rows.
async fn query(
    c: &Client,
    statement: &Statement,
    rows: usize,
    params: &[Param<'_>],
) -> Result<Vec<tokio_postgres::Row>, Failed> {
    if rows == 0 {
        return Ok(Vec::new());
    }
    c.query(statement, params).await.map_err(db)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(code: &str, epoch: u64) -> Vec<Mutation> {
        vec![Mutation::Room {
            code: code.into(),
            seq: 1,
            state: None,
            epoch,
        }]
    }

    #[test]
    fn a_group_splits_only_where_a_room_changes_epoch() {
        let one = [room("a", 1), room("b", 7), room("a", 1), room("b", 7)];
        assert_eq!(runs(&one), vec![0..4]);
        let moved = [
            room("a", 1),
            room("b", 7),
            room("a", 2),
            room("a", 2),
            room("a", 1),
        ];
        assert_eq!(runs(&moved), vec![0..2, 2..4, 4..5]);
        assert_eq!(runs(&[]), vec![0..0]);
    }

    #[test]
    fn upserts_keep_the_last_row_of_a_key_in_first_place() {
        let mut u: Upserts<&str, u32> = Upserts::default();
        u.put("a", 1);
        u.put("b", 2);
        u.put("a", 3);
        assert_eq!(u.rows, vec![3, 2]);
    }
}

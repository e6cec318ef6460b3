//! One set of store behaviours, run against the embedded SQLite store and against a real,
//! private PostgreSQL server (started by the test harness): round trips, paging, ordering of
//! group-committed batches, reads after writes; plus Postgres fencing and outage recovery.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use lockstep_shared::protocol::{ChatMessage, ChatSource, ChatUser};
use lockstep_shared::store::{
    AuditEntry, CommandRecord, EventRecord, LoadLimits, Mutation, Store, StoreError,
};
use lockstep_testkit::Postgres;
use lockstep_worker::store::postgres::{PostgresOptions, PostgresStore};
use lockstep_worker::store::sqlite::{SqliteOptions, SqliteStore};
use serde_json::json;

fn msg(id: u64) -> ChatMessage {
    ChatMessage {
        id,
        ts: 1_000 + id,
        user: ChatUser {
            user_id: "u".into(),
            name: "U".into(),
        },
        text: format!("m{id}"),
        source: ChatSource::Room,
        ext: None,
    }
}

fn limits(chat: usize, commands_since_ms: u64) -> LoadLimits {
    LoadLimits {
        chat,
        commands_since_ms,
        events: 3,
        events_bytes: usize::MAX,
        events_since_ms: 0,
    }
}

fn event(room: &str, seq: u64) -> Mutation {
    Mutation::Event {
        room: room.into(),
        event: EventRecord {
            seq,
            ts: 1_000 + seq,
            frame: format!("{{\"seq\":{seq}}}"),
        },
    }
}

fn room(code: &str, seq: u64, epoch: u64) -> Mutation {
    Mutation::Room {
        code: code.into(),
        seq,
        state: Some(json!({"v": seq})),
        epoch,
    }
}

async fn conformance(store: Arc<dyn Store>) {
    // A room with chat, audit and a command id.
    let mut batch = vec![room("r", 3, 0)];
    for id in 1..=30 {
        batch.push(Mutation::Chat {
            room: "r".into(),
            msg: msg(id),
        });
    }
    batch.push(Mutation::Audit {
        room: "r".into(),
        entry: AuditEntry {
            id: 0,
            ts: 5,
            actor: "u".into(),
            action: "x".into(),
            detail: json!({"a": 1}),
        },
    });
    batch.push(Mutation::Command {
        room: "r".into(),
        record: CommandRecord {
            user_id: "u".into(),
            id: "c1".into(),
            reply: "ack".into(),
            ts: 10,
        },
    });
    for seq in 1..=4 {
        batch.push(event("r", seq));
    }
    assert_eq!(store.submit(batch).await.unwrap(), Ok(()));
    // A seq-only update keeps the state.
    let seq_only = Mutation::Room {
        code: "r".into(),
        seq: 4,
        state: None,
        epoch: 0,
    };
    assert_eq!(store.submit(vec![seq_only]).await.unwrap(), Ok(()));
    let loaded = store
        .load_room("r", limits(5, 0), 0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(loaded.record.seq, 4);
    assert_eq!(loaded.record.state, json!({"v": 3}));
    assert_eq!(
        loaded.chat.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![26, 27, 28, 29, 30]
    );
    assert_eq!(loaded.commands.len(), 1);
    // The newest `events` (3) of the history, oldest first.
    assert_eq!(
        loaded.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    assert_eq!(loaded.events[2].frame, "{\"seq\":4}");
    // The room's history dropped events below 3 by bytes or age: the store drops them too.
    let trim = Mutation::TrimEvents {
        room: "t".into(),
        below_seq: 3,
    };
    let mut events = vec![room("t", 4, 0)];
    events.extend((1..=4).map(|seq| event("t", seq)));
    assert_eq!(store.submit(events).await.unwrap(), Ok(()));
    assert_eq!(
        store.submit(vec![room("t", 4, 0), trim]).await.unwrap(),
        Ok(())
    );
    let trimmed = LoadLimits {
        events: 10,
        ..limits(0, 0)
    };
    let loaded = store.load_room("t", trimmed, 0).await.unwrap().unwrap();
    let seqs: Vec<u64> = loaded.events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![3, 4], "events below the trim are gone");
    // And within `events_bytes` (each frame here is 9 bytes), the newest always.
    for (bytes, newest) in [(27, vec![2, 3, 4]), (26, vec![3, 4]), (5, vec![4])] {
        let bounded = LoadLimits {
            events_bytes: bytes,
            ..limits(0, 0)
        };
        let loaded = store.load_room("r", bounded, 0).await.unwrap().unwrap();
        let seqs: Vec<u64> = loaded.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, newest, "within {bytes} bytes");
    }
    assert!(store
        .load_room("r", limits(5, 11), 0)
        .await
        .unwrap()
        .unwrap()
        .commands
        .is_empty());
    // A message deleted after the room forgot it: the row keeps its place, without text,
    // emotes or anything else but `ext.deleted`; other fields of `ext` stay.
    let mut upstream = msg(41);
    upstream.ext = Some(json!({"kind": "text", "emotes": [{"id": "e"}], "source_id": "s1"}));
    let rows = vec![
        room("d", 42, 0),
        Mutation::Chat {
            room: "d".into(),
            msg: msg(40),
        },
        Mutation::Chat {
            room: "d".into(),
            msg: upstream,
        },
        Mutation::Chat {
            room: "d".into(),
            msg: msg(42),
        },
    ];
    assert_eq!(store.submit(rows).await.unwrap(), Ok(()));
    let deletes = vec![
        room("d", 42, 0),
        Mutation::DeleteChat {
            room: "d".into(),
            id: 40,
        },
        Mutation::DeleteChat {
            room: "d".into(),
            id: 41,
        },
        // No such row: nothing happens.
        Mutation::DeleteChat {
            room: "d".into(),
            id: 39,
        },
    ];
    assert_eq!(store.submit(deletes).await.unwrap(), Ok(()));
    let page = store.chat_page("d", None, 10).await.unwrap();
    assert_eq!(
        page.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![42, 41, 40]
    );
    assert_eq!(page[0], msg(42));
    assert_eq!((page[1].text.as_str(), page[2].text.as_str()), ("", ""));
    assert_eq!(
        page[1].ext,
        Some(json!({"kind": "text", "source_id": "s1", "deleted": true}))
    );
    assert_eq!(page[2].ext, Some(json!({"deleted": true})));
    assert_eq!(
        (page[2].user.clone(), page[2].ts),
        (msg(40).user, msg(40).ts)
    );

    let page = store.chat_page("r", Some(28), 2).await.unwrap();
    assert_eq!(page.iter().map(|m| m.id).collect::<Vec<_>>(), vec![27, 26]);
    assert_eq!(page[0], msg(27));
    let audit = store.audit("r", 10).await.unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].detail, json!({"a": 1}));
    assert!(audit[0].id > 0);
    assert_eq!(
        store.load_room("missing", limits(5, 0), 0).await.unwrap(),
        None
    );

    // Many batches submitted at once all commit, and a read queued after them sees them all.
    let tickets: Vec<_> = (0..200u64)
        .map(|i| {
            store.submit(vec![
                room("g", i + 1, 0),
                Mutation::Chat {
                    room: "g".into(),
                    msg: msg(i + 1),
                },
            ])
        })
        .collect();
    let read = store.load_room("g", limits(500, 0), 0);
    let loaded = read.await.unwrap().unwrap();
    assert_eq!(loaded.record.seq, 200, "read ordered after earlier submits");
    assert_eq!(loaded.chat.len(), 200);
    for t in tickets {
        assert_eq!(t.await.unwrap(), Ok(()));
    }
    store.flush().await.unwrap();
}

#[tokio::test]
async fn sqlite_store_conforms() {
    let dir = std::env::temp_dir().join(format!("lockstep-conf-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = SqliteStore::open(
        &dir.join("t.db"),
        SqliteOptions {
            batch_max: 64,
            chat_keep: 1_000,
            command_ttl_ms: 60_000,
            events_keep: 100,
        },
    )
    .unwrap();
    conformance(Arc::new(store)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

async fn open_pg(url: &str) -> PostgresStore {
    PostgresStore::open(PostgresOptions {
        url: url.to_owned(),
        pool_size: 8,
        batch_max: 64,
        events_keep: 100,
        ca_file: None,
        client_identity: None,
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn postgres_store_conforms() {
    let pg = Postgres::start();
    conformance(Arc::new(open_pg(pg.url()).await)).await;
    // Migrations are idempotent: a second node opens the same database.
    let again = open_pg(pg.url()).await;
    assert_eq!(
        again
            .load_room("r", limits(5, 0), 0)
            .await
            .unwrap()
            .unwrap()
            .record
            .seq,
        4
    );
}

#[tokio::test]
async fn postgres_refuses_writes_from_a_stale_owner() {
    let pg = Postgres::start();
    let store = open_pg(pg.url()).await;
    assert_eq!(store.submit(vec![room("f", 1, 5)]).await.unwrap(), Ok(()));
    // The old owner (epoch 4) is refused, with all of its batch; a batch for another room
    // committed in the same group is not affected.
    let stale = store.submit(vec![
        room("f", 2, 4),
        Mutation::Chat {
            room: "f".into(),
            msg: msg(2),
        },
    ]);
    let other = store.submit(vec![room("o", 1, 1)]);
    assert_eq!(stale.await.unwrap(), Err(StoreError::Fenced(4)));
    assert_eq!(other.await.unwrap(), Ok(()));
    let loaded = store
        .load_room("f", limits(10, 0), 5)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(loaded.record.seq, 1);
    assert!(loaded.chat.is_empty());
    // The current owner and newer ones write.
    assert_eq!(store.submit(vec![room("f", 2, 5)]).await.unwrap(), Ok(()));
    assert_eq!(store.submit(vec![room("f", 3, 6)]).await.unwrap(), Ok(()));
    assert_eq!(
        store.submit(vec![room("f", 4, 5)]).await.unwrap(),
        Err(StoreError::Fenced(5))
    );
}

#[tokio::test]
async fn postgres_outage_fails_writes_then_recovers() {
    let mut pg = Postgres::start();
    let store = open_pg(pg.url()).await;
    assert_eq!(store.submit(vec![room("x", 1, 0)]).await.unwrap(), Ok(()));
    pg.stop();
    let during = tokio::time::timeout(Duration::from_secs(30), store.submit(vec![room("x", 2, 0)]))
        .await
        .expect("an outage answers, it does not hang")
        .unwrap();
    assert!(
        matches!(during, Err(StoreError::Unavailable(_))),
        "{during:?}"
    );
    pg.restart();
    let mut recovered = false;
    for _ in 0..100 {
        if store.submit(vec![room("x", 3, 0)]).await.unwrap().is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "writes resume after Postgres returns");
    assert_eq!(
        store
            .load_room("x", limits(1, 0), 0)
            .await
            .unwrap()
            .unwrap()
            .record
            .seq,
        3
    );
}

fn chat(room: &str, id: u64, text: &str) -> Mutation {
    let mut m = msg(id);
    m.text = text.into();
    Mutation::Chat {
        room: room.into(),
        msg: m,
    }
}

fn audit(room: &str, action: &str) -> Mutation {
    Mutation::Audit {
        room: room.into(),
        entry: AuditEntry {
            id: 0,
            ts: 5,
            actor: "u".into(),
            action: action.into(),
            detail: json!({}),
        },
    }
}

fn command(room: &str, id: &str, reply: &str) -> Mutation {
    Mutation::Command {
        room: room.into(),
        record: CommandRecord {
            user_id: "u".into(),
            id: id.into(),
            reply: reply.into(),
            ts: 10,
        },
    }
}

fn seq_only(code: &str, seq: u64, epoch: u64) -> Mutation {
    Mutation::Room {
        code: code.into(),
        seq,
        state: None,
        epoch,
    }
}

/// Batches queued together are committed as one group of set statements; the outcome must
/// be what applying them one by one gives: the last write of a key wins, a seq-only update
/// keeps the state, audit keeps its order, an owner change inside the group is honoured and
/// only the stale owner's batch is refused.
#[tokio::test]
async fn postgres_group_applies_as_batch_by_batch() {
    let pg = Postgres::start();
    let store = open_pg(pg.url()).await;
    // Submitted without yielding: the writer finds them all queued and takes one group.
    let tickets = vec![
        store.submit(vec![
            room("d", 1, 1),
            chat("d", 1, "first"),
            event("d", 1),
            command("d", "c1", "ack1"),
            audit("d", "a1"),
        ]),
        store.submit(vec![
            seq_only("d", 2, 1),
            chat("d", 1, "edited"),
            chat("d", 2, "second"),
            event("d", 2),
            command("d", "c1", "ack2"),
            audit("d", "a2"),
        ]),
        store.submit(vec![room("e", 1, 1), audit("e", "e1")]),
        // A new owner takes "d" inside the same group...
        store.submit(vec![seq_only("d", 3, 2), chat("d", 3, "new owner")]),
        // ...and a late batch of the old owner is refused, all of it.
        store.submit(vec![
            seq_only("d", 4, 1),
            chat("d", 4, "stale"),
            audit("d", "stale"),
        ]),
        store.submit(vec![seq_only("e", 2, 1), chat("e", 5, "e")]),
    ];
    let mut results = Vec::new();
    for t in tickets {
        results.push(t.await.unwrap());
    }
    assert_eq!(
        results,
        vec![
            Ok(()),
            Ok(()),
            Ok(()),
            Ok(()),
            Err(StoreError::Fenced(1)),
            Ok(())
        ]
    );
    let d = store
        .load_room("d", limits(10, 0), 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.record.seq, 3);
    assert_eq!(d.record.state, json!({"v": 1}), "seq-only updates keep it");
    let texts: Vec<(u64, &str)> = d.chat.iter().map(|m| (m.id, m.text.as_str())).collect();
    assert_eq!(texts, vec![(1, "edited"), (2, "second"), (3, "new owner")]);
    assert_eq!(
        d.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(d.commands.len(), 1);
    assert_eq!(d.commands[0].reply, "ack2");
    let actions: Vec<String> = store
        .audit("d", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.action)
        .collect();
    assert_eq!(
        actions,
        vec!["a2", "a1"],
        "newest first, nothing of the stale batch"
    );
    let e = store
        .load_room("e", limits(10, 0), 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((e.record.seq, e.record.state), (2, json!({"v": 1})));
    assert_eq!(e.chat.len(), 1);
}

/// `BEGIN` and `COMMIT` travel pipelined with the group's statements. When Postgres refuses
/// one statement (here `\u0000`, which `jsonb` cannot hold), the group is applied batch by
/// batch: the batch with the bad row fails alone and nothing of it is committed — not even
/// its room row, sent before the refused statement — while the batch grouped with it commits;
/// and the connections stay usable. (One room: batches are grouped per writer, and a writer
/// is picked by room.)
#[tokio::test]
async fn postgres_refused_batch_fails_alone_and_commits_nothing() {
    let pg = Postgres::start();
    let store = open_pg(pg.url()).await;
    assert_eq!(store.submit(vec![room("p", 1, 1)]).await.unwrap(), Ok(()));
    // Submitted without yielding: the writer takes them as one group.
    let tickets = vec![
        store.submit(vec![seq_only("p", 2, 1), event("p", 2)]),
        store.submit(vec![seq_only("p", 3, 1), chat("p", 1, "nul \u{0} inside")]),
        store.submit(vec![seq_only("p", 4, 1), event("p", 4)]),
    ];
    let mut results = Vec::new();
    for t in tickets {
        results.push(t.await.unwrap());
    }
    assert_eq!(results[0], Ok(()));
    assert!(
        matches!(&results[1], Err(StoreError::Unavailable(m)) if m.contains("Unicode")),
        "{results:?}"
    );
    assert_eq!(results[2], Ok(()));
    let p = store
        .load_room("p", limits(10, 0), 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p.record.seq, 4);
    assert!(p.chat.is_empty(), "nothing of the refused batch");
    assert_eq!(
        p.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![2, 4]
    );
    // Alone, the refused batch's room row (sent before the chat statement) is rolled back.
    let alone = store.submit(vec![seq_only("p", 9, 1), chat("p", 2, "\u{0}")]);
    assert!(alone.await.unwrap().is_err());
    let p = store
        .load_room("p", limits(10, 0), 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        p.record.seq, 4,
        "the room upsert sent before the failure was rolled back"
    );
    // The same connections serve the next groups.
    for seq in 5..=12 {
        assert_eq!(
            store
                .submit(vec![seq_only("p", seq, 1), chat("p", seq, "fine")])
                .await
                .unwrap(),
            Ok(())
        );
    }
    let p = store
        .load_room("p", limits(10, 0), 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((p.record.seq, p.chat.len()), (12, 8));
}

/// The history is trimmed per room to `events_keep` as it grows, also when one group holds
/// many events of several rooms.
#[tokio::test]
async fn postgres_trims_history_within_a_group() {
    let pg = Postgres::start();
    let store = open_pg(pg.url()).await;
    let tickets: Vec<_> = (1..=250u64)
        .flat_map(|seq| {
            ["h1", "h2"].map(|code| store.submit(vec![seq_only(code, seq, 0), event(code, seq)]))
        })
        .collect();
    for t in tickets {
        assert_eq!(t.await.unwrap(), Ok(()));
    }
    for code in ["h1", "h2"] {
        let all = LoadLimits {
            chat: 0,
            commands_since_ms: 0,
            events: 1_000,
            events_bytes: usize::MAX,
            events_since_ms: 0,
        };
        let loaded = store.load_room(code, all, 0).await.unwrap().unwrap();
        let seqs: Vec<u64> = loaded.events.iter().map(|e| e.seq).collect();
        // events_keep is 100, trimmed every 10: the newest 100 to 110 remain.
        assert_eq!(seqs.last(), Some(&250), "{code}");
        assert!((100..=110).contains(&seqs.len()), "{code}: {}", seqs.len());
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{code}");
    }
}

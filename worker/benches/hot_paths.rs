//! Hot paths of a room: decoding a client frame, and the engine applying a command
//! (validation, seq, history, the encoded event frame, store mutations).
//! `cargo bench -p lockstep-worker --bench hot_paths`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lockstep_shared::bus::{Caller, CommandEnvelope, ConnId, ToWorker};
use lockstep_shared::config::RoomConfig;
use lockstep_shared::protocol::{decode_client_frame, ClientCommand};
use lockstep_worker::engine::Room;

const CHAT: &str = r#"{"id":"c123","type":"chat.send","room":"bench","text":"hello everyone, this is a typical chat line"}"#;

fn caller(i: u64) -> Caller {
    Caller {
        user_id: format!("u{i}"),
        name: format!("user {i}"),
        conn: ConnId {
            gateway: 1,
            local: i,
        },
    }
}

fn room_with_members(n: u64) -> Room {
    let cfg = RoomConfig {
        chat_rate: 1e9,
        chat_burst: 1e9,
        ..Default::default()
    };
    let (mut room, _) = Room::create(cfg, "bench", "u0", 0);
    for i in 0..n {
        room.handle(
            1,
            ToWorker::Command(CommandEnvelope {
                caller: caller(i),
                id: None,
                cmd: ClientCommand::RoomJoin {
                    room: "bench".into(),
                    since_seq: None,
                },
            }),
        );
    }
    room
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("frames");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode chat.send", |b| {
        b.iter(|| decode_client_frame(std::hint::black_box(CHAT)).unwrap())
    });
    g.finish();

    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(1));
    let mut room = room_with_members(50);
    let mut now = 10u64;
    let mut i = 0u64;
    g.bench_function("apply chat.send (50 members)", |b| {
        b.iter(|| {
            now += 1;
            i += 1;
            let out = room.handle(
                now,
                ToWorker::Command(CommandEnvelope {
                    caller: caller(i % 50),
                    id: Some(format!("c{i}")),
                    cmd: ClientCommand::ChatSend {
                        room: "bench".into(),
                        text: "hello everyone".into(),
                    },
                }),
            );
            std::hint::black_box(out)
        })
    });
    let mut room = room_with_members(50);
    g.bench_function("decode + apply chat.send", |b| {
        b.iter(|| {
            now += 1;
            i += 1;
            // A fresh id each time, so the idempotency cache never short-circuits.
            let text = CHAT.replace("c123", &format!("c{i}"));
            let frame = decode_client_frame(&text).unwrap();
            let out = room.handle(
                now,
                ToWorker::Command(CommandEnvelope {
                    caller: caller(i % 50),
                    id: frame.id,
                    cmd: frame.cmd,
                }),
            );
            std::hint::black_box(out)
        })
    });
    g.finish();

    // A join's ack carries every present member (DESIGN.md §3): in a big room that snapshot,
    // not the event, is the join's cost, and the room's actor runs joins one at a time.
    let mut g = c.benchmark_group("join");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    let mut room = room_with_members(5_000);
    g.bench_function("join + leave, 5,000-member room", |b| {
        b.iter(|| {
            now += 1;
            let joiner = caller(9_999);
            let out = room.handle(
                now,
                ToWorker::Command(CommandEnvelope {
                    caller: joiner.clone(),
                    id: Some("j".into()),
                    cmd: ClientCommand::RoomJoin {
                        room: "bench".into(),
                        since_seq: None,
                    },
                }),
            );
            std::hint::black_box(out);
            let out = room.handle(
                now,
                ToWorker::Command(CommandEnvelope {
                    caller: joiner,
                    id: Some("l".into()),
                    cmd: ClientCommand::RoomLeave {
                        room: "bench".into(),
                    },
                }),
            );
            std::hint::black_box(out)
        })
    });
    g.finish();
}

criterion_group!(hot, benches);
criterion_main!(hot);

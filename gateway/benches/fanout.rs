//! Fan-out of one encoded room event to N local connections' outbound queues, the gateway's
//! per-event cost. `cargo bench -p lockstep-gateway --bench fanout`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lockstep_gateway::fanout::{ConnEntry, Fanout};
use lockstep_shared::bus::{ConnId, GatewaySink, Membership, ToGateway};

fn setup(n: u64) -> (Fanout, Vec<Arc<ConnEntry>>) {
    let fanout = Fanout::new(7);
    let mut receivers = Vec::new();
    for local in 0..n {
        let entry = Arc::new(ConnEntry::new(1024, None));
        fanout.register(local, entry.clone());
        fanout.deliver(ToGateway::Reply {
            conn: ConnId { gateway: 7, local },
            id: None,
            membership: Some(Membership::Join("bench".into())),
            frames: vec![Arc::from("{}")],
        });
        receivers.push(entry);
    }
    for entry in &receivers {
        let _ = entry.outbox.take(usize::MAX);
    }
    (fanout, receivers)
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    let frame: Arc<str> = Arc::from(
        r#"{"room":"bench","seq":1,"ts":1,"type":"chat.message","id":1,"user":{"user_id":"u","name":"U"},"text":"hello everyone","source":"room"}"#,
    );
    for n in [50u64, 1_000] {
        let (fanout, receivers) = setup(n);
        g.throughput(Throughput::Elements(n));
        g.bench_with_input(BenchmarkId::new("event to N connections", n), &n, |b, _| {
            b.iter(|| {
                fanout.deliver(ToGateway::RoomEvent {
                    room: Arc::from("bench"),
                    seq: 1,
                    created_ms: 1,
                    frame: frame.clone(),
                    gateways: Arc::from(vec![7u64]),
                });
                for entry in &receivers {
                    let _ = entry.outbox.take(usize::MAX);
                }
            })
        });
    }
    g.finish();
}

criterion_group!(fan, benches);
criterion_main!(fan);

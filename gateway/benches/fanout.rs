//! Fan-out of one encoded room event to N local connections, the gateway's per-event cost:
//! into N outbound queues (what big rooms and TLS sockets do), and written straight into N
//! real loopback sockets whose other ends are drained (what a room of up to 128 local
//! members on plain TCP does; the kernel's send path is included).
//! `cargo bench -p lockstep-gateway --bench fanout`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lockstep_gateway::fanout::{ConnEntry, Fanout, QueueBound};
use lockstep_shared::bus::{ConnId, GatewaySink, Membership, ToGateway};

/// N connections in room "bench"; with `sockets`, each gets a real loopback socket whose
/// client end a task on `rt` drains.
fn setup(n: u64, sockets: Option<&tokio::runtime::Runtime>) -> (Fanout, Vec<Arc<ConnEntry>>) {
    let fanout = Fanout::new(7);
    let mut receivers = Vec::new();
    for local in 0..n {
        let direct = sockets.map(|rt| rt.block_on(drained_socket()));
        let entry = Arc::new(ConnEntry::new(QueueBound::frames(1024), direct));
        fanout.register(local, entry.clone());
        fanout.deliver(ToGateway::Reply {
            conn: ConnId { gateway: 7, local },
            id: None,
            membership: Some(Membership::Join("bench".into())),
            frames: vec![Arc::from("{}")],
            seq: 0,
        });
        receivers.push(entry);
    }
    drain(&receivers);
    (fanout, receivers)
}

/// The server end of a loopback connection whose client end is read and discarded.
async fn drained_socket() -> Arc<tokio::net::TcpStream> {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, server) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
    let mut client = client.unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while matches!(client.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    Arc::new(server.unwrap().0)
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    let frame: Arc<str> = Arc::from(
        r#"{"room":"bench","seq":1,"ts":1,"type":"chat.message","id":1,"user":{"user_id":"u","name":"U"},"text":"hello everyone","source":"room"}"#,
    );
    for n in [50u64, 1_000] {
        let (fanout, receivers) = setup(n, None);
        g.throughput(Throughput::Elements(n));
        // Each event follows the last (a gap would hold the room's events back).
        let mut seq = 0;
        g.bench_with_input(BenchmarkId::new("event to N queues", n), &n, |b, _| {
            b.iter(|| {
                seq += 1;
                fanout.deliver(event(&frame, seq));
                drain(&receivers);
            })
        });
    }
    // The runtime drives socket readiness and the draining tasks while the bench writes.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let n = 50u64;
    let (fanout, receivers) = setup(n, Some(&rt));
    g.throughput(Throughput::Elements(n));
    let mut seq = 0;
    g.bench_with_input(BenchmarkId::new("event to N sockets", n), &n, |b, _| {
        b.iter(|| {
            seq += 1;
            fanout.deliver(event(&frame, seq));
            // A socket whose drainer fell behind queues instead; that is dropped here.
            drain(&receivers);
        })
    });
    g.finish();
}

/// Empties every outbox as a socket task would, without writing.
fn drain(receivers: &[Arc<ConnEntry>]) {
    for entry in receivers {
        let _ = entry.outbox.take(usize::MAX);
        entry.outbox.release();
    }
}

fn event(frame: &Arc<str>, seq: u64) -> ToGateway {
    ToGateway::RoomEvent {
        room: Arc::from("bench"),
        seq,
        created_ms: 1,
        frame: frame.clone(),
        gateways: Arc::from(vec![7u64]),
    }
}

criterion_group!(fan, benches);
criterion_main!(fan);

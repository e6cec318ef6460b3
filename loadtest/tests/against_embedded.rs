//! The load generator against a real embedded node on port 0: every scheduled message is
//! delivered to every member, the report adds up, JSON is written, SLOs are judged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use figment::providers::Serialized;
use lockstep_gateway::embedded;
use lockstep_loadtest::{run, Scenario};
use lockstep_shared::config::Config;

async fn node(dir: &std::path::Path) -> embedded::Running {
    node_at(dir, "127.0.0.1:0").await
}

async fn node_at(dir: &std::path::Path, listen: &str) -> embedded::Running {
    node_with(dir, listen, Config::figment()).await
}

/// A node on `listen` with the test's limits layered over `base`.
async fn node_with(
    dir: &std::path::Path,
    listen: &str,
    base: figment::Figment,
) -> embedded::Running {
    let cfg = Config::from_figment(
        base.merge(Serialized::default("gateway.listen", listen))
            .merge(Serialized::default("store.path", dir.join("lockstep.db")))
            .merge(Serialized::default(
                "auth.jwt_secret",
                "loadtest-secret-0123456789",
            ))
            .merge(Serialized::default(
                "gateway.connect_rate_per_ip",
                100_000.0,
            ))
            .merge(Serialized::default(
                "gateway.connect_burst_per_ip",
                100_000.0,
            ))
            .merge(Serialized::default("room.chat_rate", 100_000.0))
            .merge(Serialized::default("room.chat_burst", 100_000.0))
            .merge(Serialized::default("gateway.command_rate", 100_000.0))
            .merge(Serialized::default("gateway.command_burst", 100_000.0))
            // The load's queue.adds use made-up ids: no lookups to youtube.com.
            .merge(Serialized::default("ingest.metadata.enabled", false)),
    )
    .unwrap();
    embedded::start(cfg).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_delivers_everything_and_reports_it() {
    let dir = std::env::temp_dir().join(format!("lockstep-lt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let running = node(&dir).await;
    let mut scn = Scenario::small(&format!("http://{}", running.addr));
    scn.json = Some(dir.join("report.json"));
    // The node runs in this process: its CPU is this process's (generator included).
    scn.pid = vec![std::process::id()];
    scn.slo = Some("loss=0,delivered>=1,p99<5s,cpu_us<1000000".into());
    let report = run(scn.clone()).await.unwrap();
    assert_eq!(report.clients_connected, 10);
    // 2 rooms x 20 msg/s x 2 s window, each to 5 members.
    assert!(
        (76..=84).contains(&report.messages_measured),
        "{}",
        report.messages_measured
    );
    assert_eq!(report.deliveries_expected, report.messages_measured * 5);
    assert_eq!(report.deliveries, report.deliveries_expected);
    assert_eq!(report.lost, 0);
    assert_eq!(report.duplicates, 0);
    assert_eq!(report.reordered, 0);
    assert!(report.latency_ms.count > 0 && report.latency_ms.p99 > 0.0);
    assert!(report.ack_ms.count >= report.messages_measured);
    assert!(report.slo_failures().is_empty(), "{:?}", report.slo);
    // CPU over the window per delivery: servers (here: this process) and the generator.
    let cpu = report.cpu.clone().expect("cpu figures on Linux");
    assert_eq!(cpu.by_pid.len(), 1);
    assert!(cpu.seconds > 1.5 && cpu.seconds < 3.0, "{cpu:?}");
    // A 2 s window of this small run may use only a few 10 ms ticks of CPU: present and sane
    // here; that the figure grows with work is `cpu::tests`' job.
    for v in [cpu.server_us_per_delivery, cpu.generator_us_per_delivery] {
        assert!(v.is_finite() && v >= 0.0, "{cpu:?}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["deliveries"], report.deliveries);
    assert!(json["cpu"]["server_us_per_delivery"].as_f64().is_some());
    // `loadtest compare` reads the file as written: a run against itself has every figure
    // the same, and none regresses even with no slack at all.
    let same = lockstep_loadtest::compare::compare(&json, &json, Some(0.0));
    assert!(
        same.rows.iter().any(|r| r.label == "fan-out p99 ms"),
        "{same:?}"
    );
    assert!(same.rows.iter().any(|r| r.label == "server µs/delivery"));
    assert!(same.regressions().is_empty() && same.layout_differs.is_empty());
    // An impossible objective fails, and says which clause.
    scn.slo = Some("p50<0.001ms".into());
    scn.json = None;
    scn.duration = 1.0;
    let report = run(scn).await.unwrap();
    assert_eq!(report.slo_failures().len(), 1);
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_over_tls_to_a_gateway_terminating_it() {
    let dir = scratch("tls");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let base = Config::figment()
        .merge(Serialized::default("tls.cert", &cert_path))
        .merge(Serialized::default("tls.key", &key_path));
    let running = node_with(&dir, "127.0.0.1:0", base).await;
    let url = format!("https://localhost:{}", running.addr.port());
    let mut scn = Scenario::small(&url);
    scn.ca_file = Some(cert_path.clone());
    let report = run(scn.clone()).await.unwrap();
    assert_eq!(report.clients_connected, 10);
    assert!(report.messages_measured > 0);
    assert_eq!(report.deliveries, report.deliveries_expected);
    assert_eq!(report.lost, 0);
    assert_eq!(report.reordered, 0);
    // Without the gateway's CA the generator refuses it, saying why.
    scn.ca_file = None;
    let err = match run(scn).await {
        Ok(_) => panic!("a run against an untrusted gateway succeeded"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("certificate"), "{err}");
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_scenarios_are_refused() {
    let mut scn = Scenario::small("http://127.0.0.1:1");
    scn.rate = 0.0;
    assert!(scn.validate().is_err());
    let mut scn = Scenario::small("http://127.0.0.1:1");
    scn.slo = Some("p99 around 5".into());
    assert!(scn.validate().is_err());
    let mut scn = Scenario::small("http://127.0.0.1:1");
    scn.slo = Some("cpu_us<20".into());
    let err = scn.validate().map_err(|e| e.to_string());
    assert!(err.is_err_and(|e| e.contains("--pid")));
    scn.pid = vec![1];
    assert!(scn.validate().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_holds_connections_and_samples_rss() {
    let dir = std::env::temp_dir().join(format!("lockstep-lt-idle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let running = node(&dir).await;
    let mut scn = Scenario::small(&format!("http://{}", running.addr));
    scn.name = "idle".into();
    scn.duration = 1.0;
    // The node runs in this process, so this process's RSS is the server's.
    scn.pid = vec![std::process::id()];
    let report = run(scn).await.unwrap();
    assert_eq!(report.clients_connected, 10);
    assert!(
        report.closed_by_code.is_empty(),
        "{:?}",
        report.closed_by_code
    );
    assert!(report.server_rss_mib.is_some_and(|m| m > 1.0));
    assert!(report.rss_kib_per_connection.is_some());
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn scratch(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("lockstep-lt-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn player_commands_measure_sync_error_and_the_html_report_is_written() {
    let dir = scratch("sync");
    let running = node(&dir).await;
    let mut scn = Scenario::small(&format!("http://{}", running.addr));
    scn.mix_text = "chat=80,seek=10,pause=5,play=5".into();
    scn.mix = lockstep_loadtest::parse_file(&format!(
        "scenario = \"fanout\"\nmix = \"{}\"",
        scn.mix_text
    ))
    .unwrap()
    .mix;
    scn.html = Some(dir.join("report.html"));
    scn.slo = Some("sync_p99<50ms,loss=0".into());
    let report = run(scn).await.unwrap();
    let sync = report.sync_error_ms.clone().expect("sync error measured");
    assert!(sync.count > 100, "{sync:?}");
    // Loopback: every state arrives long before its scheduled `at`.
    assert!(sync.p99 < 50.0, "{sync:?}");
    assert!(
        report.commands.get("seek").is_some_and(|n| *n > 0),
        "{:?}",
        report.commands
    );
    assert_eq!(report.lost, 0);
    assert!(report.slo_failures().is_empty(), "{:?}", report.slo);
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("polyline") && html.contains("sync error"));
    assert!(!report.timeline.is_empty() && report.spectrum.len() > 5);
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ramp_steps_until_the_bound_fails() {
    let dir = scratch("ramp");
    let running = node(&dir).await;
    let mut scn = Scenario::small(&format!("http://{}", running.addr));
    scn.name = "ramp".into();
    scn.steps = vec![10.0, 20.0, 40.0];
    scn.duration = 1.0;
    scn.warmup = 0.3;
    // Generous: every step passes.
    scn.ramp_p99_ms = 5_000.0;
    scn.pid = vec![std::process::id()];
    scn.html = Some(dir.join("ramp.html"));
    let report = run(scn.clone()).await.unwrap();
    assert_eq!(report.ramp.len(), 3);
    assert!(
        report.ramp.iter().all(|s| s.pass && s.lost == 0),
        "{:?}",
        report.ramp
    );
    // Each step has its own CPU figures, and the HTML table shows them.
    assert!(
        report.ramp.iter().all(|s| s
            .cpu
            .as_ref()
            .is_some_and(|c| c.by_pid.len() == 1 && c.seconds > 0.5)),
        "{:?}",
        report.ramp
    );
    let html = std::fs::read_to_string(dir.join("ramp.html")).unwrap();
    assert!(html.contains("server µs/delivery"));
    scn.html = None;
    assert_eq!(report.best_rate, Some(40.0));
    // 2 rooms × 40 msg/s × 5 members.
    let best = report.best_deliveries_per_sec.unwrap();
    assert!((300.0..=500.0).contains(&best), "{best}");
    // Impossible: the first step fails and the ramp stops there.
    scn.ramp_p99_ms = 0.000_1;
    let report = run(scn).await.unwrap();
    assert_eq!(report.ramp.len(), 1);
    assert_eq!(report.best_rate, None);
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_clients_all_come_back_recovered() {
    let dir = scratch("storm");
    let running = node(&dir).await;
    let mut scn = Scenario::small(&format!("http://{}", running.addr));
    scn.name = "storm".into();
    scn.reconnect = true;
    scn.storm_at = 0.5;
    scn.storm_jitter_ms = 300;
    scn.slo = Some("recovered<10s,loss=0".into());
    let report = run(scn).await.unwrap();
    let storm = report.storm.clone().expect("storm report");
    assert_eq!(storm.clients, 10);
    assert_eq!(storm.back, 10);
    assert_eq!(storm.recovered, 10, "every client recovered by replay");
    assert!(storm.all_recovered_s.is_some_and(|s| s < 5.0), "{storm:?}");
    // Messages sent while clients were away were replayed: nothing lost.
    assert_eq!(report.lost, 0, "{report:?}");
    assert_eq!(report.duplicates, 0);
    assert!(report.slo_failures().is_empty(), "{:?}", report.slo);
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_reports_reconnects_and_the_gap_across_a_node_restart() {
    let dir = scratch("failover");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let running = node_at(&dir, &listen).await;
    let mut scn = Scenario::small(&format!("http://{listen}"));
    scn.name = "failover".into();
    scn.reconnect = true;
    scn.duration = 4.0;
    let run_task = tokio::spawn(run(scn));
    // Mid-window the node goes away and comes back on the same port and database.
    tokio::time::sleep(std::time::Duration::from_millis(1_800)).await;
    running.shutdown().await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let running = node_at(&dir, &listen).await;
    let report = run_task.await.unwrap().unwrap();
    assert_eq!(
        report.reconnects, 10,
        "every client came back once: {report:?}"
    );
    assert!(report.recovered + report.snapshots == 10);
    assert!(
        report.closed_by_code.contains_key(&1001),
        "{:?}",
        report.closed_by_code
    );
    assert!(
        report.max_gap_ms >= 250.0,
        "the outage shows as a gap: {}",
        report.max_gap_ms
    );
    // Sends during the outage failed (the generator is open loop). Every acknowledged
    // message reached every member, replayed after the restart where needed. A message
    // written in the instant before the server's 1001 arrived was never read, so never
    // acknowledged: at most that one per room's publisher may be missing, and then at every
    // member alike (a message some members got and others not would be a fan-out bug).
    assert!(report.send_failures > 0, "{report:?}");
    assert_eq!(report.lost_acked, 0, "{report:?}");
    let per_room = 5;
    assert_eq!(report.lost % per_room, 0, "whole messages only: {report:?}");
    assert!(
        report.lost <= 2 * per_room,
        "one in flight per room at most: {report:?}"
    );
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two generators started together (`--start-at`) against one node, as two machines would
/// drive one cluster: `loadtest merge` adds their counts and histograms up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generators_started_together_merge_into_one_report() {
    let dir = scratch("merge");
    let running = node(&dir).await;
    let url = format!("http://{}", running.addr);
    let start = (lockstep_loadtest::wall_us() / 1_000_000 + 4) as f64;
    let mut a = Scenario::small(&url);
    a.start_at = Some(start);
    a.json = Some(dir.join("a.json"));
    let mut b = Scenario::small(&url);
    b.rooms = 1;
    b.start_at = Some(start);
    b.json = Some(dir.join("b.json"));
    let (ra, rb) = tokio::join!(run(a.clone()), run(b.clone()));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let (wa, wb) = (ra.raw.clone().unwrap(), rb.raw.clone().unwrap());
    assert!(
        wa.window_ms.0.abs_diff(wb.window_ms.0) < 500,
        "one window: {:?} {:?}",
        wa.window_ms,
        wb.window_ms
    );

    // Through the files, as the command does.
    let inputs = [a.json.clone().unwrap(), b.json.clone().unwrap()];
    let merged_json = dir.join("merged.json");
    let m = lockstep_loadtest::merge::run(
        &inputs,
        Some(&merged_json),
        None,
        Some("loss=0,delivered>=1".into()),
    )
    .unwrap();
    assert_eq!(m.merged_from.len(), 2);
    assert_eq!(m.scenario.rooms, 3);
    assert_eq!(
        m.clients_connected,
        ra.clients_connected + rb.clients_connected
    );
    assert_eq!(m.deliveries, ra.deliveries + rb.deliveries);
    assert_eq!(
        m.deliveries_expected,
        ra.deliveries_expected + rb.deliveries_expected
    );
    assert_eq!((m.lost, m.duplicates, m.reordered), (0, 0, 0));
    assert!((m.deliveries_per_sec - ra.deliveries_per_sec - rb.deliveries_per_sec).abs() < 1e-6);
    // Percentiles come from the added histograms: every sample counted once, and a merged
    // quantile lies between the inputs' quantiles.
    let (la, lb, lm) = (&ra.latency_ms, &rb.latency_ms, &m.latency_ms);
    assert_eq!(lm.count, la.count + lb.count);
    assert_eq!(lm.max, la.max.max(lb.max));
    assert!(
        lm.p99 >= la.p99.min(lb.p99) && lm.p99 <= la.p99.max(lb.p99),
        "{la:?} {lb:?} {lm:?}"
    );
    assert_eq!(m.ack_ms.count, ra.ack_ms.count + rb.ack_ms.count);
    assert_eq!(
        m.timeline.iter().map(|s| s.count).sum::<u64>(),
        ra.timeline.iter().map(|s| s.count).sum::<u64>()
            + rb.timeline.iter().map(|s| s.count).sum::<u64>()
    );
    assert!(
        m.slo_failures().is_empty() && m.slo.len() == 2,
        "{:?}",
        m.slo
    );
    // The merged file is a report again (it merges, and `compare` reads it).
    let again = lockstep_loadtest::merge::run(std::slice::from_ref(&merged_json), None, None, None)
        .unwrap();
    assert_eq!(again.deliveries, m.deliveries);
    assert_eq!(again.latency_ms.p99, m.latency_ms.p99);
    let (_, notes) =
        lockstep_loadtest::merge::merge(vec![("a".into(), ra.clone()), ("b".into(), rb.clone())])
            .unwrap();
    assert!(notes.is_empty(), "{notes:?}");

    // What cannot be merged says why.
    let mut no_raw = rb.clone();
    no_raw.raw = None;
    let err = lockstep_loadtest::merge::merge(vec![("a".into(), ra.clone()), ("r".into(), no_raw)])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("cannot be merged"), "{err}");
    let mut other = rb.clone();
    other.scenario.name = "bigroom".into();
    let err = lockstep_loadtest::merge::merge(vec![("a".into(), ra.clone()), ("o".into(), other)])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("only runs of one scenario merge"), "{err}");
    // Runs that did not share a window are merged, with a warning.
    let mut late = rb;
    if let Some(raw) = &mut late.raw {
        raw.window_ms = (raw.window_ms.0 + 60_000, raw.window_ms.1 + 60_000);
    }
    let (_, notes) =
        lockstep_loadtest::merge::merge(vec![("a".into(), ra), ("late".into(), late)]).unwrap();
    assert!(notes.iter().any(|n| n.contains("--start-at")), "{notes:?}");
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

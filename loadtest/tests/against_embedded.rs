//! The load generator against a real embedded node on port 0: every scheduled message is
//! delivered to every member, the report adds up, JSON is written, SLOs are judged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use figment::providers::Serialized;
use lockstep_gateway::embedded;
use lockstep_loadtest::{run, Scenario};
use lockstep_shared::config::Config;

async fn node(dir: &std::path::Path) -> embedded::Running {
    let cfg = Config::from_figment(
        Config::figment()
            .merge(Serialized::default("gateway.listen", "127.0.0.1:0"))
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
            .merge(Serialized::default("room.chat_burst", 100_000.0)),
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
    scn.slo = Some("loss=0,delivered>=1,p99<5s".into());
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
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["deliveries"], report.deliveries);
    // An impossible objective fails, and says which clause.
    scn.slo = Some("p50<0.001ms".into());
    scn.json = None;
    scn.duration = 1.0;
    let report = run(scn).await.unwrap();
    assert_eq!(report.slo_failures().len(), 1);
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_scenarios_are_refused() {
    let mut scn = Scenario::small("http://127.0.0.1:1");
    scn.rate = 0.0;
    assert!(scn.validate().is_err());
    let mut scn = Scenario::small("http://127.0.0.1:1");
    scn.slo = Some("p99 around 5".into());
    assert!(scn.validate().is_err());
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
    scn.pid = Some(std::process::id());
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

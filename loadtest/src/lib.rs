//! The operators' load generator. Open-loop publishers (sends happen on schedule whatever the
//! server does), real WebSocket clients spread over gateway URLs and source addresses, HDR
//! histograms, latency measured from each message's *intended* send time (coordinated
//! omission corrected), loss and reordering from `seq`, an SLO check for CI.
//!
//! # Layout
//! - `scenario`: flags and presets (`fanout`, `bigroom`).
//! - `setup`: guest tokens and rooms over the REST API.
//! - `client`: one connection: join, read, record.
//! - `publisher`: the open-loop schedule per room.
//! - `report`: merging, the table, JSON, the SLO check.

mod client;
mod publisher;
mod report;
mod scenario;
mod setup;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use report::Report;
pub use scenario::{Cli, Scenario};

/// Microseconds since the run's start: every timestamp in a run uses this clock.
#[derive(Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn now_us(&self) -> u64 {
        self.0.elapsed().as_micros() as u64
    }

    pub fn at_us(&self, us: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.0 + Duration::from_micros(us))
    }
}

/// Counters shared by every task, for the live progress line.
#[derive(Default)]
pub struct Live {
    pub deliveries: AtomicU64,
    pub sent: AtomicU64,
    pub errors: AtomicU64,
    pub stop: AtomicBool,
}

/// Runs a scenario to completion and returns (and prints) its report.
pub async fn run(scn: Scenario) -> anyhow::Result<Report> {
    scn.validate()?;
    let watchdog = Duration::from_secs_f64(scn.max_seconds);
    match tokio::time::timeout(watchdog, run_inner(scn.clone())).await {
        Ok(r) => r,
        Err(_) => anyhow::bail!("watchdog: the run exceeded {} s", scn.max_seconds),
    }
}

async fn run_inner(scn: Scenario) -> anyhow::Result<Report> {
    let clock = Clock(Instant::now());
    let live = Arc::new(Live::default());
    eprintln!(
        "loadtest {}: {} rooms x {} clients, {} msg/s per room, {} publisher(s)/room, {} URL(s)",
        scn.name,
        scn.rooms,
        scn.clients,
        scn.rate,
        scn.publishers,
        scn.urls.len()
    );
    let plan = setup::prepare(&scn).await?;
    let rss_before = scn.pid.and_then(report::rss_kib);
    let connect_started = Instant::now();
    let clients = client::connect_all(&scn, &plan, clock, live.clone()).await?;
    eprintln!(
        "connected {} clients in {:.2} s",
        clients.len(),
        connect_started.elapsed().as_secs_f64()
    );
    if scn.name == "idle" {
        return idle(&scn, clients, rss_before, &live).await;
    }
    let start_us = clock.now_us() + 200_000;
    let window = (
        start_us + (scn.warmup * 1e6) as u64,
        start_us + ((scn.warmup + scn.duration) * 1e6) as u64,
    );
    let progress = tokio::spawn(progress(live.clone(), clock, window.1));
    let published = publisher::run_all(
        &scn,
        &plan.rooms,
        &clients,
        clock,
        start_us,
        window,
        live.clone(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs_f64(scn.drain)).await;
    live.stop.store(true, Ordering::SeqCst);
    progress.abort();
    let results = client::finish_all(clients).await;
    let report = Report::build(&scn, results, published, window);
    report.print();
    if let Some(path) = &scn.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(report)
}

/// Holds the connections for `--duration`, then reports how many survived and what they cost.
async fn idle(
    scn: &Scenario,
    clients: Vec<client::ClientHandle>,
    rss_before: Option<u64>,
    live: &Live,
) -> anyhow::Result<Report> {
    tokio::time::sleep(Duration::from_secs_f64(scn.duration)).await;
    let rss_after = scn.pid.and_then(report::rss_kib);
    live.stop.store(true, Ordering::SeqCst);
    let held = clients.len();
    let results = client::finish_all(clients).await;
    let mut report = Report::build(
        scn,
        results,
        publisher::Published::none(scn.rooms),
        (0, (scn.duration * 1e6) as u64),
    );
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        report.server_rss_mib = Some(after as f64 / 1024.0);
        report.rss_kib_per_connection =
            Some(after.saturating_sub(before) as f64 / held.max(1) as f64);
    }
    report.print();
    if let Some(path) = &scn.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(report)
}

async fn progress(live: Arc<Live>, clock: Clock, end_us: u64) {
    let mut last = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let d = live.deliveries.load(Ordering::Relaxed);
        let left = end_us.saturating_sub(clock.now_us()) / 1_000_000;
        eprintln!(
            "  {:>8} deliveries/s  sent {:>8}  errors {:>5}  {:>3} s left",
            d - last,
            live.sent.load(Ordering::Relaxed),
            live.errors.load(Ordering::Relaxed),
            left
        );
        last = d;
    }
}

//! The operators' load generator. Open-loop publishers (sends happen on schedule whatever the
//! server does), real WebSocket clients spread over gateway URLs and source addresses, HDR
//! histograms, latency measured from each message's *intended* send time (coordinated
//! omission corrected), loss and reordering from `seq`, sync error from `time.sync` and
//! `player.state`, reconnect storms, failovers, rate ramps, an SLO check for CI, and JSON
//! and HTML reports.
//!
//! # Layout
//! - `scenario`: flags, presets and TOML scenario files. `mix`: the command mix.
//! - `setup`: guest tokens and rooms over the REST API.
//! - `client`: one connection: sync, join, read, record, reconnect.
//! - `publisher`: the open-loop schedule per room.
//! - `sync`: sync error from recorded `player.state` events.
//! - `cpu`: server and generator CPU per delivery over the window, from /proc.
//! - `seen`: duplicates and per-message delivery counts in bounded memory.
//! - `figures`: the run's HDR histograms, shared by all clients in a few shards.
//! - `buckets`: compact log buckets for timelines and ramp steps.
//! - `report`: merging, the table, JSON, the SLO check. `html`: the HTML/SVG report.
//! - `compare`: two runs' JSON reports side by side, with a regression bound for CI.
//! - `raw`: the histograms behind a report, kept in its JSON. `merge`: one report from the
//!   reports of several generator machines that ran together.
//! - `ws`: the WebSocket client (handshake, cancel-safe reader, masking writer).

mod buckets;
mod client;
pub mod compare;
mod cpu;
mod figures;
mod html;
pub mod merge;
mod mix;
mod publisher;
pub mod raw;
mod report;
mod scenario;
mod seen;
mod setup;
mod sync;
mod tls;
mod ws;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use report::Report;
pub use scenario::{parse_file, Action, Cli, Scenario};

use buckets::LogBuckets;
use publisher::Window;

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

/// Wall clock µs since the Unix epoch (for `time.sync` and server timestamps).
pub fn wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// What every client is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Run,
    /// Drop the connection now and reconnect (the storm scenario).
    Storm,
    Stop,
}

/// Counters shared by every task, for the live progress line, and the phase.
pub struct Live {
    pub deliveries: AtomicU64,
    pub sent: AtomicU64,
    pub errors: AtomicU64,
    pub phase: tokio::sync::watch::Sender<Phase>,
    /// Every client's latencies, merged into the report at the end.
    pub figures: figures::SharedFigures,
    /// Per room: how many members received each measured message.
    pub delivered: seen::DeliveryCounts,
}

impl Live {
    pub fn new(rooms: usize) -> Self {
        Live {
            deliveries: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            phase: tokio::sync::watch::Sender::new(Phase::Run),
            figures: figures::SharedFigures::default(),
            delivered: seen::DeliveryCounts::new(rooms),
        }
    }
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
    let live = Arc::new(Live::new(scn.rooms));
    eprintln!(
        "loadtest {}: {} rooms x {} clients, {} msg/s per room, mix {}, {} URL(s)",
        scn.name,
        scn.rooms,
        scn.clients,
        scn.rate,
        scn.mix_text,
        scn.urls.len()
    );
    let plan = setup::prepare(&scn).await?;
    let rss_before = report::rss_kib_sum(&scn.pid);
    let connect_started = Instant::now();
    let clients = client::connect_all(&scn, &plan, clock, live.clone()).await?;
    eprintln!(
        "connected {} clients in {:.2} s",
        clients.len(),
        connect_started.elapsed().as_secs_f64()
    );
    let mut report = match scn.name.as_str() {
        "idle" => idle(&scn, clients, rss_before, &live).await?,
        "ramp" => ramp(&scn, &plan.rooms, clients, clock, live.clone()).await,
        _ => steady(&scn, &plan.rooms, clients, clock, live.clone()).await,
    };
    report.judge();
    report.print();
    write_outputs(&report, scn.json.as_deref(), scn.html.as_deref())?;
    Ok(report)
}

/// Writes the JSON and HTML reports where asked.
pub fn write_outputs(
    report: &Report,
    json: Option<&std::path::Path>,
    html: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(report)?)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = html {
        std::fs::write(path, html::render(report))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// One measured window (fanout, bigroom, storm, failover).
async fn steady(
    scn: &Scenario,
    codes: &[String],
    clients: Vec<client::ClientHandle>,
    clock: Clock,
    live: Arc<Live>,
) -> Report {
    let start = match scn.start_at {
        // Several generators: publishing starts at the agreed wall-clock time.
        Some(at) => {
            let wait_us = ((at * 1e6) as u64).saturating_sub(wall_us());
            if wait_us == 0 {
                eprintln!(
                    "  --start-at passed while connecting: starting now (windows will not line up)"
                );
            } else {
                eprintln!("  starting at --start-at, in {:.1} s", wait_us as f64 / 1e6);
            }
            clock.now_us() + wait_us
        }
        None => clock.now_us() + 200_000,
    };
    let window = Window::new(scn, scn.rate, 0, start);
    let measure = window.measure;
    let wall_window = (
        wall_us() + (measure.0 - clock.now_us()),
        wall_us() + (measure.1 - clock.now_us()),
    );
    let progress = tokio::spawn(progress(live.clone(), clock, measure.1));
    let cpu = sample_cpu(scn.pid.clone(), clock, measure);
    let storm = (scn.name == "storm").then(|| {
        let (live, at) = (live.clone(), measure.0 + (scn.storm_at * 1e6) as u64);
        tokio::spawn(async move {
            tokio::time::sleep_until(clock.at_us(at)).await;
            eprintln!("  storm: every client drops now");
            let _ = live.phase.send(Phase::Storm);
        })
    });
    let published = publisher::run_all(scn, codes, &clients, clock, window, live.clone()).await;
    tokio::time::sleep(Duration::from_secs_f64(scn.drain)).await;
    if let Some(s) = storm {
        let _ = s.await;
    }
    let timeline = collect_timeline(&clients);
    let _ = live.phase.send(Phase::Stop);
    let _ = progress.await;
    let results = client::finish_all(clients).await;
    let figures = live.figures.merged();
    let mut report = Report::build(scn, &results, &figures, &live.delivered, published, measure);
    if let Some(raw) = &mut report.raw {
        raw.window_ms = (wall_window.0 / 1000, wall_window.1 / 1000);
    }
    report.cpu = cpu_between(cpu, report.deliveries).await;
    report.add_timeline(&timeline, measure);
    if scn.mix.moves_clock() {
        report.add_sync(&results, scn.rooms, wall_window);
    }
    if scn.name == "storm" {
        report.add_storm(&results);
    }
    report
}

/// Steps the rate up on the same connections until a step fails.
async fn ramp(
    scn: &Scenario,
    codes: &[String],
    clients: Vec<client::ClientHandle>,
    clock: Clock,
    live: Arc<Live>,
) -> Report {
    let mut members = vec![0u64; scn.rooms];
    for c in &clients {
        members[c.room] += 1;
    }
    let mut steps = Vec::new();
    let mut last_published = publisher::Published::none(scn.rooms);
    let mut last_window = (0, 1);
    for (i, &rate) in scn.steps.iter().enumerate() {
        let window = Window::new(scn, rate, i, clock.now_us() + 100_000);
        let measure = window.measure;
        let sent_before = live.errors.load(Ordering::Relaxed);
        let cpu = sample_cpu(scn.pid.clone(), clock, measure);
        let published = publisher::run_all(scn, codes, &clients, clock, window, live.clone()).await;
        tokio::time::sleep(Duration::from_secs_f64(scn.drain.min(3.0))).await;
        let (received, buckets) = step_figures(&clients, i);
        let expected = published.expected(&members);
        let errors = live.errors.load(Ordering::Relaxed) - sent_before;
        let mut step = report::StepReport::new(
            rate,
            scn.duration,
            expected,
            received,
            errors,
            &buckets,
            &published,
            scn.ramp_p99_ms,
        );
        step.cpu = cpu_between(cpu, received).await;
        let server_us = step
            .cpu
            .as_ref()
            .and_then(|c| c.server_us())
            .map(|us| format!("  server {us:.1} µs/delivery"))
            .unwrap_or_default();
        eprintln!(
            "  step {:>2}: {:>8.1} msg/s/room  {:>10.0} deliveries/s  p50 {:>7.2} ms  p99 {:>7.2} ms  lost {:>6}  send lag p99 {:>6.1} ms{server_us}  {}",
            i + 1,
            rate,
            step.deliveries_per_sec,
            step.p50_ms,
            step.p99_ms,
            step.lost,
            step.send_lag_p99_ms,
            if step.pass { "pass" } else { "FAIL" }
        );
        let pass = step.pass;
        steps.push(step);
        last_published = published;
        last_window = measure;
        if !pass {
            break;
        }
        // Let queues empty before the next step.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let timeline = collect_timeline(&clients);
    let _ = live.phase.send(Phase::Stop);
    let results = client::finish_all(clients).await;
    let figures = live.figures.merged();
    let mut report = Report::build(
        scn,
        &results,
        &figures,
        &live.delivered,
        last_published,
        last_window,
    );
    report.add_timeline(&timeline, (0, last_window.1));
    report.add_ramp(steps);
    report
}

/// Samples the servers' (`--pid`) and the generator's CPU at the two ends of a window.
fn sample_cpu(
    pids: Vec<u32>,
    clock: Clock,
    window: (u64, u64),
) -> tokio::task::JoinHandle<(cpu::Sample, cpu::Sample)> {
    tokio::spawn(async move {
        tokio::time::sleep_until(clock.at_us(window.0)).await;
        let start = cpu::Sample::take(&pids);
        tokio::time::sleep_until(clock.at_us(window.1)).await;
        (start, cpu::Sample::take(&pids))
    })
}

/// The window's CPU per delivery of the messages due in it.
async fn cpu_between(
    samples: tokio::task::JoinHandle<(cpu::Sample, cpu::Sample)>,
    deliveries: u64,
) -> Option<cpu::CpuReport> {
    let (start, end) = samples.await.ok()?;
    cpu::CpuReport::between(&start, &end, deliveries)
}

/// Merged per-step figures: measured deliveries and their latency buckets.
fn step_figures(clients: &[client::ClientHandle], step: usize) -> (u64, LogBuckets) {
    let mut total = 0;
    let mut merged = LogBuckets::default();
    for c in clients {
        if let Ok(s) = c.stats.lock() {
            if let Some((n, b)) = s.steps.get(step) {
                total += n;
                merged.merge(b);
            }
        }
    }
    (total, merged)
}

/// Per-second latency buckets merged over the sampled clients.
fn collect_timeline(clients: &[client::ClientHandle]) -> Vec<LogBuckets> {
    let mut out: Vec<LogBuckets> = Vec::new();
    for c in clients {
        if let Ok(s) = c.stats.lock() {
            if out.len() < s.timeline.len() {
                out.resize_with(s.timeline.len(), Default::default);
            }
            for (o, b) in out.iter_mut().zip(&s.timeline) {
                o.merge(b);
            }
        }
    }
    out
}

/// Holds the connections for `--duration`, then reports how many survived and what they cost.
async fn idle(
    scn: &Scenario,
    clients: Vec<client::ClientHandle>,
    rss_before: Option<u64>,
    live: &Live,
) -> anyhow::Result<Report> {
    tokio::time::sleep(Duration::from_secs_f64(scn.duration)).await;
    let rss_after = report::rss_kib_sum(&scn.pid);
    let _ = live.phase.send(Phase::Stop);
    let held = clients.len();
    let results = client::finish_all(clients).await;
    let mut report = Report::build(
        scn,
        &results,
        &live.figures.merged(),
        &live.delivered,
        publisher::Published::none(scn.rooms),
        (0, (scn.duration * 1e6) as u64),
    );
    // Held connections and one server's memory do not add up across generators.
    report.raw = None;
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        report.server_rss_mib = Some(after as f64 / 1024.0);
        report.rss_kib_per_connection =
            Some(after.saturating_sub(before) as f64 / held.max(1) as f64);
    }
    Ok(report)
}

/// The live progress line, once a second until the phase is `Stop`.
async fn progress(live: Arc<Live>, clock: Clock, end_us: u64) {
    let mut last = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut phase = live.phase.subscribe();
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = phase.wait_for(|p| *p == Phase::Stop) => return,
        }
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

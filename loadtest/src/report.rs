//! The result of a run: merged histograms and counters, a table for people, JSON for CI,
//! and the SLO verdict.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::buckets::LogBuckets;
use crate::client::ClientResult;
use crate::cpu::CpuReport;
use crate::figures::{histogram, Figures};
use crate::publisher::Published;
use crate::raw::{self, Raw, RawSecond};
use crate::seen::DeliveryCounts;
use crate::Scenario;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// (percentile, ms) points of a latency histogram, for the percentile plot.
pub fn spectrum(latency: &Histogram<u64>) -> Vec<(f64, f64)> {
    [0.0, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999, 1.0]
        .iter()
        .map(|q| (*q * 100.0, latency.value_at_quantile(*q) as f64 / 1000.0))
        .collect()
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub scenario: Scenario,
    pub clients_connected: usize,
    /// Intended send → received (coordinated omission corrected).
    pub latency_ms: Percentiles,
    /// Actual send → ack.
    pub ack_ms: Percentiles,
    pub connect_ms: Percentiles,
    /// Actual − intended send time: if it grows, the generator is falling behind.
    pub send_lag_ms: Percentiles,
    pub messages_measured: u64,
    pub deliveries_expected: u64,
    pub deliveries: u64,
    pub deliveries_per_sec: f64,
    pub delivered_ratio: f64,
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub errors: u64,
    pub rate_limited: u64,
    /// Chat messages the server refused with an error: excluded from the expected deliveries.
    pub rejected: u64,
    /// Deliveries missing of messages the server had acknowledged: must be 0 (DESIGN.md
    /// invariants 3 and 4). `lost` also counts messages in flight when a node died, which
    /// were never acknowledged.
    pub lost_acked: u64,
    /// Clients the server closed that had not rejoined when the run ended: each acknowledged
    /// message after their close counts in `lost_acked`, so with clients here a nonzero
    /// `lost_acked` may be a client not back rather than a message the server lost.
    #[serde(default)]
    pub clients_not_rejoined: u64,
    pub send_failures: u64,
    /// Sockets the server closed during the run, by close code.
    pub closed_by_code: BTreeMap<u16, u64>,
    /// The measured window's CPU: every `--pid` together and the generator itself.
    pub cpu: Option<CpuReport>,
    /// `idle`: the servers' resident memory after connecting, MiB (with `--pid`).
    pub server_rss_mib: Option<f64>,
    /// `idle`: the server's RSS growth per held connection, KiB (with `--pid`).
    pub rss_kib_per_connection: Option<f64>,
    /// Player commands in the mix: |client position − room clock| at sampled instants.
    pub sync_error_ms: Option<Percentiles>,
    /// Non-chat commands sent, by kind.
    pub commands: BTreeMap<String, u64>,
    /// Rejoins after a dropped socket (storm, failover): by replay or by snapshot.
    pub reconnects: u64,
    pub recovered: u64,
    pub snapshots: u64,
    /// Disconnect → rejoin acked.
    pub reconnect_ms: Percentiles,
    /// Longest gap between two deliveries seen by any client (failover: time to recover).
    pub max_gap_ms: f64,
    pub storm: Option<StormReport>,
    /// Ramp: every step tried, and the best that held.
    pub ramp: Vec<StepReport>,
    pub best_rate: Option<f64>,
    pub best_deliveries_per_sec: Option<f64>,
    /// Latency per second of intended send time (sampled clients), for plots.
    pub timeline: Vec<SecondPoint>,
    /// (percentile, ms) of the whole run's fan-out latency, for the percentile plot.
    pub spectrum: Vec<(f64, f64)>,
    pub slo: Vec<SloResult>,
    /// The histograms and timeline buckets behind the figures, for `loadtest merge`
    /// (steady scenarios only; a ramp's steps and `idle`'s memory do not add up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<Raw>,
    /// The reports this one was merged from (`loadtest merge`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged_from: Vec<String>,
}

/// The storm's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StormReport {
    pub clients: usize,
    /// Back in the room after the storm.
    pub back: usize,
    /// Back by replay (`recovered: true`).
    pub recovered: usize,
    /// Storm start → the last client recovered, seconds (None if some never did).
    pub all_recovered_s: Option<f64>,
    /// Storm start → each client back.
    pub back_ms: Percentiles,
}

/// One ramp step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepReport {
    pub rate: f64,
    pub deliveries_per_sec: f64,
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub send_lag_p99_ms: f64,
    pub pass: bool,
    /// The step's CPU, servers (`--pid`) and generator.
    pub cpu: Option<CpuReport>,
}

impl StepReport {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        rate: f64,
        seconds: f64,
        expected: u64,
        delivered: u64,
        errors: u64,
        latency: &LogBuckets,
        published: &Published,
        p99_bound_ms: f64,
    ) -> StepReport {
        let lost = expected.saturating_sub(delivered);
        let p99_ms = latency.quantile_ms(0.99);
        StepReport {
            rate,
            deliveries_per_sec: delivered as f64 / seconds,
            expected,
            delivered,
            lost,
            errors,
            p50_ms: latency.quantile_ms(0.5),
            p99_ms,
            max_ms: latency.max_ms(),
            send_lag_p99_ms: published.send_lag.value_at_quantile(0.99) as f64 / 1000.0,
            pass: lost == 0 && errors == 0 && expected > 0 && p99_ms <= p99_bound_ms,
            cpu: None,
        }
    }
}

/// One second of the timeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecondPoint {
    /// Seconds since the measured window began.
    pub t: f64,
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// One SLO clause and whether it held.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SloResult {
    pub clause: String,
    pub actual: f64,
    pub pass: bool,
}

impl Report {
    pub fn build(
        scn: &Scenario,
        results: &[ClientResult],
        figures: &Figures,
        delivered: &DeliveryCounts,
        published: Published,
        window: (u64, u64),
    ) -> Report {
        let (latency, ack, reconnect) = (&figures.latency, &figures.ack, &figures.reconnect);
        let mut connect = histogram();
        let mut members = vec![0u64; scn.rooms];
        let mut rejected = vec![0u64; scn.rooms];
        let (mut deliveries, mut duplicates, mut reordered, mut errors, mut rate_limited) =
            (0, 0, 0, 0, 0);
        let mut closed_by_code = BTreeMap::new();
        let (mut reconnects, mut recovered, mut snapshots, mut max_gap) = (0, 0, 0, 0u64);
        for r in results {
            reconnects += r.reconnects;
            recovered += r.recovered;
            snapshots += r.snapshots;
            max_gap = max_gap.max(r.max_gap_us);
            let _ = connect.record(r.connect_us.max(1));
            members[r.room] += 1;
            rejected[r.room] += r.rejected_chat;
            deliveries += r.measured;
            duplicates += r.duplicates;
            reordered += r.reordered;
            errors += r.errors;
            rate_limited += r.rate_limited;
            for code in &r.closes {
                *closed_by_code.entry(*code).or_insert(0) += 1;
            }
        }
        let refused: u64 = rejected.iter().zip(&members).map(|(r, n)| r * n).sum();
        let expected = published.expected(&members).saturating_sub(refused);
        let seconds = (window.1 - window.0) as f64 / 1e6;
        let spectrum = spectrum(latency);
        Report {
            scenario: scn.clone(),
            clients_connected: results.len(),
            latency_ms: Percentiles::of(latency),
            ack_ms: Percentiles::of(ack),
            connect_ms: Percentiles::of(&connect),
            send_lag_ms: Percentiles::of(&published.send_lag),
            messages_measured: published.measured.iter().sum(),
            deliveries_expected: expected,
            deliveries,
            deliveries_per_sec: deliveries as f64 / seconds,
            delivered_ratio: if expected == 0 {
                0.0
            } else {
                deliveries as f64 / expected as f64
            },
            lost: expected.saturating_sub(deliveries),
            duplicates,
            reordered,
            errors,
            rate_limited,
            rejected: rejected.iter().sum(),
            lost_acked: lost_acked(&members, results, delivered),
            clients_not_rejoined: not_rejoined(results),
            send_failures: published.send_failures,
            closed_by_code,
            server_rss_mib: None,
            rss_kib_per_connection: None,
            cpu: None,
            sync_error_ms: None,
            commands: published.commands.clone(),
            reconnects,
            recovered,
            snapshots,
            reconnect_ms: Percentiles::of(reconnect),
            max_gap_ms: max_gap as f64 / 1000.0,
            storm: None,
            ramp: Vec::new(),
            best_rate: None,
            best_deliveries_per_sec: None,
            timeline: Vec::new(),
            spectrum,
            slo: Vec::new(),
            raw: Some(Raw {
                latency: raw::encode(latency),
                ack: raw::encode(ack),
                connect: raw::encode(&connect),
                send_lag: raw::encode(&published.send_lag),
                reconnect: raw::encode(reconnect),
                ..Raw::default()
            }),
            merged_from: Vec::new(),
        }
    }

    /// Checks the SLO clauses against the finished report.
    pub fn judge(&mut self) {
        if let Some(slo) = &self.scenario.slo {
            if let Ok(clauses) = parse_slo(slo) {
                self.slo = clauses.iter().map(|c| c.check(self)).collect();
            }
        }
    }

    /// The per-second timeline, seconds counted from the window's start.
    pub fn add_timeline(&mut self, seconds: &[LogBuckets], window: (u64, u64)) {
        let first = (window.0 / 1_000_000) as usize;
        let seconds: Vec<(f64, &LogBuckets)> = seconds
            .iter()
            .enumerate()
            .skip(first)
            .filter(|(_, b)| b.count() > 0)
            .map(|(i, b)| (i as f64 - window.0 as f64 / 1e6, b))
            .collect();
        self.set_timeline(&seconds);
        if let Some(raw) = &mut self.raw {
            raw.timeline = seconds.iter().map(|(t, b)| RawSecond::of(*t, b)).collect();
        }
    }

    /// The plotted points of per-second buckets.
    pub fn set_timeline(&mut self, seconds: &[(f64, &LogBuckets)]) {
        self.timeline = seconds
            .iter()
            .map(|(t, b)| SecondPoint {
                t: *t,
                count: b.count(),
                p50_ms: b.quantile_ms(0.5),
                p99_ms: b.quantile_ms(0.99),
                max_ms: b.max_ms(),
            })
            .collect();
    }

    /// Sync error over the window (wall clock µs), every 20 ms, per room.
    pub fn add_sync(&mut self, results: &[ClientResult], rooms: usize, wall: (u64, u64)) {
        let views: Vec<crate::sync::ClientSync> = results
            .iter()
            .map(|r| crate::sync::ClientSync {
                obs: r.player.clone(),
                offset_ms: r.offset_ms,
            })
            .collect();
        let mut by_room: Vec<Vec<&crate::sync::ClientSync>> = vec![Vec::new(); rooms];
        for (r, v) in results.iter().zip(&views) {
            by_room[r.room].push(v);
        }
        let h = crate::sync::sync_error(&by_room, wall.0, wall.1, 20_000);
        self.sync_error_ms = Some(Percentiles::of(&h));
        if let Some(raw) = &mut self.raw {
            raw.sync = Some(raw::encode(&h));
        }
    }

    /// Storm figures from each client's return.
    pub fn add_storm(&mut self, results: &[ClientResult]) {
        let mut back = histogram();
        let mut n_back = 0;
        let mut n_recovered = 0;
        for r in results {
            if let Some(us) = r.storm_back_us {
                n_back += 1;
                let _ = back.record(us.max(1));
                if r.storm_recovered {
                    n_recovered += 1;
                }
            }
        }
        self.storm = Some(StormReport {
            clients: results.len(),
            back: n_back,
            recovered: n_recovered,
            all_recovered_s: (n_recovered == results.len() && n_back > 0)
                .then(|| back.max() as f64 / 1e6),
            back_ms: Percentiles::of(&back),
        });
        if let Some(raw) = &mut self.raw {
            raw.storm_back = Some(raw::encode(&back));
        }
    }

    /// Ramp steps and the best one; the totals become the sums over the steps.
    pub fn add_ramp(&mut self, steps: Vec<StepReport>) {
        // Steps at different rates do not add up across generators.
        self.raw = None;
        self.deliveries_expected = steps.iter().map(|s| s.expected).sum();
        self.deliveries = steps.iter().map(|s| s.delivered).sum();
        self.lost = steps.iter().map(|s| s.lost).sum();
        self.delivered_ratio = if self.deliveries_expected == 0 {
            0.0
        } else {
            self.deliveries as f64 / self.deliveries_expected as f64
        };
        self.deliveries_per_sec = steps.last().map(|s| s.deliveries_per_sec).unwrap_or(0.0);
        let best = steps.iter().rev().find(|s| s.pass);
        self.best_rate = best.map(|s| s.rate);
        self.best_deliveries_per_sec = best.map(|s| s.deliveries_per_sec);
        self.ramp = steps;
    }

    /// Clauses that failed, as text.
    pub fn slo_failures(&self) -> Vec<String> {
        self.slo
            .iter()
            .filter(|s| !s.pass)
            .map(|s| format!("{} (actual {:.3})", s.clause, s.actual))
            .collect()
    }

    pub fn print(&self) {
        let l = &self.latency_ms;
        let a = &self.ack_ms;
        println!();
        println!(
            "scenario            {} ({} rooms x {} clients, {} msg/s/room)",
            self.scenario.name, self.scenario.rooms, self.scenario.clients, self.scenario.rate
        );
        if !self.merged_from.is_empty() {
            println!(
                "merged from         {} reports: {}",
                self.merged_from.len(),
                self.merged_from.join(", ")
            );
        }
        println!(
            "clients connected   {}  (connect p50 {:.1} ms, p99 {:.1} ms)",
            self.clients_connected, self.connect_ms.p50, self.connect_ms.p99
        );
        println!(
            "deliveries          {} of {} expected ({:.2} %), {:.0}/s",
            self.deliveries,
            self.deliveries_expected,
            self.delivered_ratio * 100.0,
            self.deliveries_per_sec
        );
        println!(
            "fan-out latency ms  p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            l.p50, l.p90, l.p99, l.p999, l.max
        );
        println!(
            "ack latency ms      p50 {:.2}  p99 {:.2}  max {:.2}",
            a.p50, a.p99, a.max
        );
        println!("send lag ms         p99 {:.2}", self.send_lag_ms.p99);
        let not_back = match self.clients_not_rejoined {
            0 => String::new(),
            n => format!("; {n} clients closed and not rejoined at the end"),
        };
        println!(
            "lost {} (of acknowledged: {}{})  duplicates {}  reordered {}  errors {}  rate_limited {}  rejected {}  send failures {}",
            self.lost,
            self.lost_acked,
            not_back,
            self.duplicates,
            self.reordered,
            self.errors,
            self.rate_limited,
            self.rejected,
            self.send_failures
        );
        if let Some(c) = &self.cpu {
            println!("cpu                 {}", c.line());
        }
        if let (Some(rss), Some(per)) = (self.server_rss_mib, self.rss_kib_per_connection) {
            println!("server RSS          {rss:.1} MiB, {per:.1} KiB per held connection");
        }
        if !self.closed_by_code.is_empty() {
            println!("closed by server    {:?}", self.closed_by_code);
        }
        if !self.commands.is_empty() {
            println!("commands sent       {:?}", self.commands);
        }
        if let Some(s) = &self.sync_error_ms {
            println!(
                "sync error ms       p50 {:.2}  p99 {:.2}  max {:.2}  ({} samples)",
                s.p50, s.p99, s.max, s.count
            );
        }
        if self.reconnects > 0 {
            println!(
                "reconnects          {} ({} recovered by replay, {} by snapshot), rejoin p50 {:.0} ms p99 {:.0} ms, longest delivery gap {:.0} ms",
                self.reconnects,
                self.recovered,
                self.snapshots,
                self.reconnect_ms.p50,
                self.reconnect_ms.p99,
                self.max_gap_ms
            );
        }
        if let Some(st) = &self.storm {
            println!(
                "storm               {} of {} back, {} recovered by replay, all recovered in {}",
                st.back,
                st.clients,
                st.recovered,
                st.all_recovered_s
                    .map(|s| format!("{s:.2} s"))
                    .unwrap_or_else(|| "— (not all)".into())
            );
        }
        if !self.ramp.is_empty() {
            println!(
                "ramp                best {} msg/s/room = {} deliveries/s (p99 ≤ {} ms, no loss)",
                self.best_rate
                    .map(|r| format!("{r}"))
                    .unwrap_or_else(|| "none".into()),
                self.best_deliveries_per_sec
                    .map(|d| format!("{d:.0}"))
                    .unwrap_or_else(|| "—".into()),
                self.scenario.ramp_p99_ms
            );
        }
        for s in &self.slo {
            println!(
                "SLO {:<20} {} (actual {:.3})",
                s.clause,
                if s.pass { "pass" } else { "FAIL" },
                s.actual
            );
        }
    }
}

/// Acknowledged messages some member of their room never received.
fn lost_acked(members: &[u64], results: &[ClientResult], delivered: &DeliveryCounts) -> u64 {
    let mut acked: Vec<std::collections::HashSet<u64>> = vec![Default::default(); members.len()];
    for r in results {
        if let Some(a) = acked.get_mut(r.room) {
            a.extend(r.acked.iter().copied());
        }
    }
    acked
        .iter()
        .enumerate()
        .map(|(room, keys)| {
            let n = members[room];
            keys.iter()
                .map(|&k| n.saturating_sub(u64::from(delivered.count(room, k))))
                .sum::<u64>()
        })
        .sum()
}

/// Clients whose last socket the server closed and that did not come back (each rejoin
/// follows one close).
fn not_rejoined(results: &[ClientResult]) -> u64 {
    results
        .iter()
        .filter(|r| r.closes.len() as u64 > r.reconnects)
        .count() as u64
}

/// Resident set size of every process in `pids` together, KiB; `None` when there are none
/// or one cannot be read.
pub fn rss_kib_sum(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| rss_kib(p)).sum()
}

/// Resident set size of a process in KiB, from /proc/<pid>/status (Linux).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// One parsed SLO clause, e.g. `p99<50ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct Clause {
    text: String,
    metric: String,
    op: String,
    value: f64,
}

impl Clause {
    /// The metric the clause constrains, e.g. `p99`.
    pub fn metric(&self) -> &str {
        &self.metric
    }

    fn check(&self, r: &Report) -> SloResult {
        let actual = match self.metric.as_str() {
            "p50" => r.latency_ms.p50,
            "p90" => r.latency_ms.p90,
            "p99" => r.latency_ms.p99,
            "p999" => r.latency_ms.p999,
            "max" => r.latency_ms.max,
            "ack_p99" => r.ack_ms.p99,
            "loss" => r.lost as f64,
            "acked_loss" => r.lost_acked as f64,
            "delivered" => r.delivered_ratio,
            "errors" => (r.errors + r.rate_limited) as f64,
            "reordered" => r.reordered as f64,
            "sync_p99" => r.sync_error_ms.as_ref().map(|s| s.p99).unwrap_or(f64::NAN),
            "recovered" => r
                .storm
                .as_ref()
                .and_then(|s| s.all_recovered_s)
                .map(|s| s * 1000.0)
                .unwrap_or(f64::INFINITY),
            "gap" => r.max_gap_ms,
            "best_deliveries" => r.best_deliveries_per_sec.unwrap_or(0.0),
            "cpu_us" => r
                .cpu
                .as_ref()
                .and_then(|c| c.server_us())
                .unwrap_or(f64::NAN),
            _ => f64::NAN,
        };
        let pass = match self.op.as_str() {
            "<" => actual < self.value,
            "<=" => actual <= self.value,
            ">" => actual > self.value,
            ">=" => actual >= self.value,
            _ => actual == self.value,
        };
        SloResult {
            clause: self.text.clone(),
            actual,
            pass,
        }
    }
}

/// Parses `p99<50ms,loss=0,delivered>=0.99`. Latencies are in ms (`ms` or `s` suffix).
pub fn parse_slo(text: &str) -> anyhow::Result<Vec<Clause>> {
    const METRICS: &[&str] = &[
        "p50",
        "p90",
        "p99",
        "p999",
        "max",
        "ack_p99",
        "loss",
        "acked_loss",
        "delivered",
        "errors",
        "reordered",
        "sync_p99",
        "recovered",
        "gap",
        "best_deliveries",
        "cpu_us",
    ];
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let op = ["<=", ">=", "<", ">", "="]
            .into_iter()
            .find(|op| part.contains(op))
            .ok_or_else(|| anyhow::anyhow!("SLO clause `{part}` has no <, <=, =, >=, >"))?;
        let (metric, value) = part.split_once(op).unwrap_or((part, ""));
        let metric = metric.trim().to_owned();
        anyhow::ensure!(
            METRICS.contains(&metric.as_str()),
            "unknown SLO metric `{metric}` (one of {METRICS:?})"
        );
        let value = value.trim();
        let value = if let Some(ms) = value.strip_suffix("ms") {
            ms.parse::<f64>()?
        } else if let Some(s) = value.strip_suffix('s') {
            s.parse::<f64>()? * 1000.0
        } else {
            value.parse::<f64>()?
        };
        out.push(Clause {
            text: part.to_owned(),
            metric,
            op: op.to_owned(),
            value,
        });
    }
    anyhow::ensure!(!out.is_empty(), "empty SLO");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acked_loss_counts_each_member_that_missed_an_acknowledged_message() {
        use crate::seen::key;
        // Room 0: three members; the publisher's two acknowledged messages.
        let publisher = ClientResult {
            acked: vec![key(0, 1), key(0, 2)],
            ..ClientResult::default()
        };
        let results = vec![publisher, ClientResult::default(), ClientResult::default()];
        let delivered = DeliveryCounts::new(1);
        for _ in 0..3 {
            delivered.record(0, key(0, 1));
        }
        assert_eq!(
            lost_acked(&[3], &results, &delivered),
            3,
            "message 2 reached nobody"
        );
        for _ in 0..2 {
            delivered.record(0, key(0, 2));
        }
        assert_eq!(
            lost_acked(&[3], &results, &delivered),
            1,
            "one member missed message 2"
        );
        delivered.record(0, key(0, 2));
        assert_eq!(lost_acked(&[3], &results, &delivered), 0);
    }

    #[test]
    fn a_client_closed_and_not_back_is_counted_apart() {
        let back = ClientResult {
            closes: vec![1012, 1012],
            reconnects: 2,
            ..ClientResult::default()
        };
        let gone = ClientResult {
            closes: vec![1012, 1012],
            reconnects: 1,
            ..ClientResult::default()
        };
        let never_closed = ClientResult::default();
        assert_eq!(not_rejoined(&[back, gone, never_closed]), 1);
    }

    #[test]
    fn parses_slo_clauses() {
        let c = parse_slo("p99<50ms, loss=0,delivered>=0.99,max<=1s").unwrap_or_default();
        assert_eq!(c.len(), 4);
        assert_eq!(
            (c[0].metric.as_str(), c[0].op.as_str(), c[0].value),
            ("p99", "<", 50.0)
        );
        assert_eq!((c[2].op.as_str(), c[2].value), (">=", 0.99));
        assert_eq!(c[3].value, 1000.0);
        assert!(parse_slo("p98<3ms").is_err());
        assert!(parse_slo("p99~3").is_err());
        assert!(parse_slo("").is_err());
    }
}

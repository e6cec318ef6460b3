//! The result of a run: merged histograms and counters, a table for people, JSON for CI,
//! and the SLO verdict.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::{histogram, ClientResult};
use crate::publisher::Published;
use crate::Scenario;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize, Default)]
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
    fn of(h: &Histogram<u64>) -> Percentiles {
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

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
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
    pub send_failures: u64,
    /// Sockets the server closed during the run, by close code.
    pub closed_by_code: BTreeMap<u16, u64>,
    /// `idle`: the server's resident memory after connecting, MiB (with `--pid`).
    pub server_rss_mib: Option<f64>,
    /// `idle`: the server's RSS growth per held connection, KiB (with `--pid`).
    pub rss_kib_per_connection: Option<f64>,
    pub slo: Vec<SloResult>,
}

/// One SLO clause and whether it held.
#[derive(Debug, Clone, Serialize)]
pub struct SloResult {
    pub clause: String,
    pub actual: f64,
    pub pass: bool,
}

impl Report {
    pub fn build(
        scn: &Scenario,
        results: Vec<ClientResult>,
        published: Published,
        window: (u64, u64),
    ) -> Report {
        let mut latency = histogram();
        let mut ack = histogram();
        let mut connect = histogram();
        let mut members = vec![0u64; scn.rooms];
        let (mut deliveries, mut duplicates, mut reordered, mut errors, mut rate_limited) =
            (0, 0, 0, 0, 0);
        let mut closed_by_code = BTreeMap::new();
        for r in &results {
            let _ = latency.add(&r.latency);
            let _ = ack.add(&r.ack);
            let _ = connect.record(r.connect_us.max(1));
            members[r.room] += 1;
            deliveries += r.measured.len() as u64;
            duplicates += r.duplicates;
            reordered += r.reordered;
            errors += r.errors;
            rate_limited += r.rate_limited;
            if let Some(code) = r.closed_with {
                *closed_by_code.entry(code).or_insert(0) += 1;
            }
        }
        let expected: u64 = published
            .measured
            .iter()
            .zip(&members)
            .map(|(m, n)| m * n)
            .sum();
        let seconds = (window.1 - window.0) as f64 / 1e6;
        let mut report = Report {
            scenario: scn.clone(),
            clients_connected: results.len(),
            latency_ms: Percentiles::of(&latency),
            ack_ms: Percentiles::of(&ack),
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
            send_failures: published.send_failures,
            closed_by_code,
            server_rss_mib: None,
            rss_kib_per_connection: None,
            slo: Vec::new(),
        };
        if let Some(slo) = &scn.slo {
            if let Ok(clauses) = parse_slo(slo) {
                report.slo = clauses.iter().map(|c| c.check(&report)).collect();
            }
        }
        report
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
        println!(
            "lost {}  duplicates {}  reordered {}  errors {}  rate_limited {}",
            self.lost, self.duplicates, self.reordered, self.errors, self.rate_limited
        );
        if let (Some(rss), Some(per)) = (self.server_rss_mib, self.rss_kib_per_connection) {
            println!("server RSS          {rss:.1} MiB, {per:.1} KiB per held connection");
        }
        if !self.closed_by_code.is_empty() {
            println!("closed by server    {:?}", self.closed_by_code);
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
    fn check(&self, r: &Report) -> SloResult {
        let actual = match self.metric.as_str() {
            "p50" => r.latency_ms.p50,
            "p90" => r.latency_ms.p90,
            "p99" => r.latency_ms.p99,
            "p999" => r.latency_ms.p999,
            "max" => r.latency_ms.max,
            "ack_p99" => r.ack_ms.p99,
            "loss" => r.lost as f64,
            "delivered" => r.delivered_ratio,
            "errors" => (r.errors + r.rate_limited) as f64,
            "reordered" => r.reordered as f64,
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
        "delivered",
        "errors",
        "reordered",
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

//! `loadtest merge A.json B.json …`: one report from generator machines that drove one
//! cluster together. One generator saturates long before a cluster does (two shared cores
//! here top out near 100,000 deliveries/s), so a large test runs the same scenario on several
//! machines with the same `--start-at` and merges their reports: counts add up, HDR
//! histograms are added and percentiles recomputed from them (never averaged), deliveries/s
//! add up over the shared window, and server CPU is counted once per process.
//!
//! Each generator creates its own rooms, so the runs are independent samples of one load.
//! Only steady scenarios merge (fanout, bigroom, storm, failover): a ramp's steps depend on
//! each generator's own verdicts, and `idle` measures one server's memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure};
use hdrhistogram::Histogram;

use crate::buckets::LogBuckets;
use crate::cpu::CpuReport;
use crate::raw::{self, Raw, RawSecond};
use crate::report::{Percentiles, Report, StormReport};

/// Reads the reports, merges them, prints the table and writes the outputs; the merged
/// report has its SLO (`slo`, else the inputs' common one) judged.
pub fn run(
    inputs: &[PathBuf],
    json: Option<&Path>,
    html: Option<&Path>,
    slo: Option<String>,
) -> anyhow::Result<Report> {
    let mut reports = Vec::with_capacity(inputs.len());
    for path in inputs {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
        let report: Report = serde_json::from_str(&text)
            .map_err(|e| anyhow!("{} is not a loadtest report: {e}", path.display()))?;
        reports.push((path.display().to_string(), report));
    }
    let (mut merged, notes) = merge(reports)?;
    if slo.is_some() {
        merged.scenario.slo = slo;
    }
    merged.scenario.json = json.map(Path::to_path_buf);
    merged.scenario.html = html.map(Path::to_path_buf);
    merged.judge();
    merged.print();
    for note in &notes {
        eprintln!("note: {note}");
    }
    crate::write_outputs(&merged, json, html)?;
    Ok(merged)
}

/// Merges `(name, report)` pairs; also returns notes on what the operator should know (the
/// windows did not line up, some figure could not be merged).
pub fn merge(inputs: Vec<(String, Report)>) -> anyhow::Result<(Report, Vec<String>)> {
    let Some((_, first)) = inputs.first() else {
        bail!("nothing to merge");
    };
    let name = first.scenario.name.clone();
    let mut raws: Vec<&Raw> = Vec::with_capacity(inputs.len());
    for (path, r) in &inputs {
        ensure!(
            r.scenario.name == name,
            "{path} is a `{}` run and the first is `{name}`: only runs of one scenario merge",
            r.scenario.name
        );
        let Some(raw) = &r.raw else {
            bail!(
                "{path} holds no raw figures: ramp and idle reports (and those of loadtest \
                 versions before `merge`) cannot be merged"
            );
        };
        raws.push(raw);
    }
    let mut notes = Vec::new();
    let window = shared_window(&raws, &mut notes);
    let reports: Vec<&Report> = inputs.iter().map(|(_, r)| r).collect();

    let latency = add(&raws, |r| &r.latency)?;
    let ack = add(&raws, |r| &r.ack)?;
    let connect = add(&raws, |r| &r.connect)?;
    let send_lag = add(&raws, |r| &r.send_lag)?;
    let reconnect = add(&raws, |r| &r.reconnect)?;
    let sync = add_some(&raws, |r| r.sync.as_deref())?;
    let storm_back = add_some(&raws, |r| r.storm_back.as_deref())?;

    let sum = |f: fn(&Report) -> u64| reports.iter().map(|r| f(r)).sum::<u64>();
    let mut m = first.clone();
    m.scenario = merged_scenario(&reports, &mut notes);
    m.clients_connected = reports.iter().map(|r| r.clients_connected).sum();
    m.latency_ms = Percentiles::of(&latency);
    m.ack_ms = Percentiles::of(&ack);
    m.connect_ms = Percentiles::of(&connect);
    m.send_lag_ms = Percentiles::of(&send_lag);
    m.reconnect_ms = Percentiles::of(&reconnect);
    m.messages_measured = sum(|r| r.messages_measured);
    m.deliveries_expected = sum(|r| r.deliveries_expected);
    m.deliveries = sum(|r| r.deliveries);
    m.deliveries_per_sec = reports.iter().map(|r| r.deliveries_per_sec).sum();
    m.delivered_ratio = if m.deliveries_expected == 0 {
        0.0
    } else {
        m.deliveries as f64 / m.deliveries_expected as f64
    };
    m.lost = sum(|r| r.lost);
    m.duplicates = sum(|r| r.duplicates);
    m.reordered = sum(|r| r.reordered);
    m.errors = sum(|r| r.errors);
    m.rate_limited = sum(|r| r.rate_limited);
    m.rejected = sum(|r| r.rejected);
    m.lost_acked = sum(|r| r.lost_acked);
    m.clients_not_rejoined = sum(|r| r.clients_not_rejoined);
    m.send_failures = sum(|r| r.send_failures);
    m.reconnects = sum(|r| r.reconnects);
    m.recovered = sum(|r| r.recovered);
    m.snapshots = sum(|r| r.snapshots);
    m.closed_by_code = add_maps(reports.iter().map(|r| &r.closed_by_code));
    m.commands = add_maps(reports.iter().map(|r| &r.commands));
    m.cpu = merge_cpu(&reports, m.deliveries_per_sec, &mut notes);
    m.server_rss_mib = None;
    m.rss_kib_per_connection = None;
    m.sync_error_ms = sync.as_ref().map(Percentiles::of);
    m.max_gap_ms = reports.iter().map(|r| r.max_gap_ms).fold(0.0, f64::max);
    m.storm = merge_storm(&reports, storm_back.as_ref());
    m.ramp = Vec::new();
    m.best_rate = None;
    m.best_deliveries_per_sec = None;
    let timeline = merge_timeline(&raws);
    let seconds: Vec<(f64, &LogBuckets)> = timeline.iter().map(|(t, b)| (*t, b)).collect();
    m.set_timeline(&seconds);
    m.spectrum = crate::report::spectrum(&latency);
    m.slo = Vec::new();
    m.raw = Some(Raw {
        window_ms: window,
        latency: raw::encode(&latency),
        ack: raw::encode(&ack),
        connect: raw::encode(&connect),
        send_lag: raw::encode(&send_lag),
        reconnect: raw::encode(&reconnect),
        sync: sync.as_ref().map(raw::encode),
        storm_back: storm_back.as_ref().map(raw::encode),
        timeline: timeline.iter().map(|(t, b)| RawSecond::of(*t, b)).collect(),
    });
    m.merged_from = inputs.iter().map(|(path, _)| path.clone()).collect();
    Ok((m, notes))
}

/// The union of the windows; a note when they overlap by less than 90 % of it (the
/// generators did not run together, so deliveries/s overstates the load).
fn shared_window(raws: &[&Raw], notes: &mut Vec<String>) -> (u64, u64) {
    let start_min = raws.iter().map(|r| r.window_ms.0).min().unwrap_or(0);
    let start_max = raws.iter().map(|r| r.window_ms.0).max().unwrap_or(0);
    let end_min = raws.iter().map(|r| r.window_ms.1).min().unwrap_or(0);
    let end_max = raws.iter().map(|r| r.window_ms.1).max().unwrap_or(0);
    let union = end_max.saturating_sub(start_min);
    let overlap = end_min.saturating_sub(start_max);
    if union > 0 && (overlap as f64) < 0.9 * union as f64 {
        notes.push(format!(
            "the measured windows overlap by {:.0} % only: give every generator the same \
             --start-at, or deliveries/s overstates the load",
            overlap as f64 * 100.0 / union as f64
        ));
    }
    (start_min, end_max)
}

/// One histogram: the sum of every report's.
fn add(raws: &[&Raw], f: fn(&Raw) -> &String) -> anyhow::Result<Histogram<u64>> {
    let mut sum = crate::figures::histogram();
    for r in raws {
        sum.add(raw::decode(f(r))?)
            .map_err(|e| anyhow!("histograms do not add: {e:?}"))?;
    }
    Ok(sum)
}

/// Like `add`, for a figure only some scenarios have; `None` when no report has it.
fn add_some(raws: &[&Raw], f: fn(&Raw) -> Option<&str>) -> anyhow::Result<Option<Histogram<u64>>> {
    let mut sum: Option<Histogram<u64>> = None;
    for text in raws.iter().filter_map(|r| f(r)) {
        let h = raw::decode(text)?;
        match &mut sum {
            Some(s) => s
                .add(h)
                .map_err(|e| anyhow!("histograms do not add: {e:?}"))?,
            None => sum = Some(h),
        }
    }
    Ok(sum)
}

fn add_maps<'a, K: Ord + Clone + 'a>(
    maps: impl Iterator<Item = &'a BTreeMap<K, u64>>,
) -> BTreeMap<K, u64> {
    let mut out = BTreeMap::new();
    for m in maps {
        for (k, v) in m {
            *out.entry(k.clone()).or_insert(0) += v;
        }
    }
    out
}

/// The first report's scenario, with the rooms of all (each generator made its own) and
/// every URL and process involved.
fn merged_scenario(reports: &[&Report], notes: &mut Vec<String>) -> crate::Scenario {
    let mut s = reports[0].scenario.clone();
    s.rooms = reports.iter().map(|r| r.scenario.rooms).sum();
    if reports
        .iter()
        .any(|r| r.scenario.clients != s.clients || r.scenario.rate != s.rate)
    {
        notes.push(
            "the generators ran different clients per room or rates; the header shows the \
             first one's"
                .into(),
        );
    }
    for r in &reports[1..] {
        for url in &r.scenario.urls {
            if !s.urls.contains(url) {
                s.urls.push(url.clone());
            }
        }
        for pid in &r.scenario.pid {
            if !s.pid.contains(pid) {
                s.pid.push(*pid);
            }
        }
    }
    if reports.iter().any(|r| r.scenario.slo != s.slo) {
        s.slo = None;
    }
    s
}

/// Server CPU counts each process once (generators that watched the same process saw the
/// same CPU: its mean is taken), generator CPU adds up, both per delivery of the whole load.
/// `None` unless every generator measured CPU.
fn merge_cpu(
    reports: &[&Report],
    deliveries_per_sec: f64,
    notes: &mut Vec<String>,
) -> Option<CpuReport> {
    let cpus: Vec<&CpuReport> = reports.iter().filter_map(|r| r.cpu.as_ref()).collect();
    if cpus.len() != reports.len() || deliveries_per_sec <= 0.0 {
        if !cpus.is_empty() {
            notes.push("CPU left out: not every generator measured it".into());
        }
        return None;
    }
    let mut by_pid: Vec<(u32, f64, u32)> = Vec::new();
    for c in &cpus {
        for &(pid, cores) in &c.by_pid {
            match by_pid.iter_mut().find(|(p, _, _)| *p == pid) {
                Some(entry) => {
                    entry.1 += cores;
                    entry.2 += 1;
                }
                None => by_pid.push((pid, cores, 1)),
            }
        }
    }
    let by_pid: Vec<(u32, f64)> = by_pid
        .into_iter()
        .map(|(pid, cores, n)| (pid, cores / f64::from(n)))
        .collect();
    let server_cores: f64 = by_pid.iter().map(|(_, c)| c).sum();
    let generator_cores: f64 = cpus.iter().map(|c| c.generator_cores).sum();
    Some(CpuReport {
        seconds: cpus.iter().map(|c| c.seconds).sum::<f64>() / cpus.len() as f64,
        server_cores,
        server_us_per_delivery: server_cores * 1e6 / deliveries_per_sec,
        by_pid,
        generator_cores,
        generator_us_per_delivery: generator_cores * 1e6 / deliveries_per_sec,
    })
}

fn merge_storm(reports: &[&Report], back: Option<&Histogram<u64>>) -> Option<StormReport> {
    let storms: Vec<&StormReport> = reports.iter().filter_map(|r| r.storm.as_ref()).collect();
    let back = back?;
    if storms.is_empty() {
        return None;
    }
    let clients = storms.iter().map(|s| s.clients).sum();
    let n_back = storms.iter().map(|s| s.back).sum();
    let recovered = storms.iter().map(|s| s.recovered).sum();
    Some(StormReport {
        clients,
        back: n_back,
        recovered,
        all_recovered_s: (recovered == clients && n_back > 0).then(|| back.max() as f64 / 1e6),
        back_ms: Percentiles::of(back),
    })
}

/// Per-second buckets added second by second. Each generator counts seconds from its own
/// window's start; with a shared `--start-at` those agree to well under a second, so the
/// seconds are matched by their rounded offset.
fn merge_timeline(raws: &[&Raw]) -> Vec<(f64, LogBuckets)> {
    let mut by_second: BTreeMap<i64, LogBuckets> = BTreeMap::new();
    for r in raws {
        for s in &r.timeline {
            by_second
                .entry(s.t.round() as i64)
                .or_default()
                .merge(&s.buckets());
        }
    }
    by_second.into_iter().map(|(t, b)| (t as f64, b)).collect()
}

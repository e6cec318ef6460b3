//! Scenarios: flags (or a TOML file) over presets. `fanout`: many rooms, steady chat.
//! `bigroom`: one room, thousands of members. `idle`: held connections. `storm`: everyone
//! drops and reconnects. `failover`: steady traffic with reconnects while the operator kills
//! a node. `ramp`: the rate steps up until p99 or loss fails.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};

use crate::mix::Mix;

/// Command line.
#[derive(Parser, Debug)]
#[command(name = "loadtest", about = "Load generator for Lockstep")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Many rooms with steady chat (default 20 rooms x 50 clients, 5 msg/s per room).
    Fanout(Flags),
    /// One room with thousands of members (default 1 x 2000, 2 msg/s).
    Bigroom(Flags),
    /// Idle connections held for `--duration` (default 50 rooms x 100); with `--pid`, the
    /// servers' RSS growth per connection from /proc.
    Idle(Flags),
    /// Every client drops at `--storm-at` seconds into the window and reconnects with
    /// jittered backoff (`--storm-jitter-ms`); reports the time until all are recovered.
    Storm(Flags),
    /// Steady traffic; clients reconnect and resume when their socket dies. Kill a node
    /// during the run: the report shows reconnects, gaps and time to recover.
    Failover(Flags),
    /// Raise the rate per room through `--steps` until p99 passes `--ramp-p99-ms` or a
    /// message is lost; reports the highest rate that held.
    Ramp(Flags),
    /// A scenario from a TOML file (keys as the flags, plus `scenario = "fanout"` etc.).
    Run {
        /// The TOML file.
        file: PathBuf,
    },
    /// Two runs' JSON reports side by side (`--json` of each); with `--max-regression`,
    /// exits 3 when a figure got worse by more than that many percent or a loss appeared.
    Compare {
        /// The reference run.
        base: PathBuf,
        /// The run to judge.
        new: PathBuf,
        /// Allowed worsening in percent (latency, CPU, memory, throughput); losses,
        /// duplicates and reordering may not grow at all.
        #[arg(long)]
        max_regression: Option<f64>,
    },
    /// One report from the JSON reports of generators that ran together (same scenario,
    /// `--start-at` the same time, each against the same cluster): counts added, histograms
    /// merged, percentiles recomputed. Exits 2 when `--slo` fails.
    Merge {
        /// The generators' `--json` reports.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Write the merged report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write the merged HTML report here.
        #[arg(long)]
        html: Option<PathBuf>,
        /// Service-level objective over the merged figures (as for a run).
        #[arg(long)]
        slo: Option<String>,
    },
}

/// What the command line asks for.
pub enum Action {
    Run(Box<Scenario>),
    Compare {
        base: PathBuf,
        new: PathBuf,
        max_regression: Option<f64>,
    },
    Merge {
        inputs: Vec<PathBuf>,
        json: Option<PathBuf>,
        html: Option<PathBuf>,
        slo: Option<String>,
    },
}

impl Cli {
    pub fn action(self) -> anyhow::Result<Action> {
        Ok(match self.command {
            Command::Compare {
                base,
                new,
                max_regression,
            } => Action::Compare {
                base,
                new,
                max_regression,
            },
            Command::Merge {
                inputs,
                json,
                html,
                slo,
            } => Action::Merge {
                inputs,
                json,
                html,
                slo,
            },
            _ => Action::Run(Box::new(self.scenario()?)),
        })
    }

    pub fn scenario(self) -> anyhow::Result<Scenario> {
        Ok(match self.command {
            Command::Fanout(f) => f.into_scenario("fanout"),
            Command::Bigroom(f) => f.into_scenario("bigroom"),
            Command::Idle(f) => f.into_scenario("idle"),
            Command::Storm(f) => f.into_scenario("storm"),
            Command::Failover(f) => f.into_scenario("failover"),
            Command::Ramp(f) => f.into_scenario("ramp"),
            Command::Run { file } => from_file(&file)?,
            Command::Compare { .. } => anyhow::bail!("`compare` is not a scenario"),
            Command::Merge { .. } => anyhow::bail!("`merge` is not a scenario"),
        })
    }
}

/// Flags shared by every scenario; unset ones take the scenario's preset.
#[derive(Args, Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Flags {
    /// The scenario a TOML file runs (`fanout`, `bigroom`, …); not a flag.
    #[arg(skip)]
    pub scenario: Option<String>,
    /// Gateway base URLs, comma-separated; client i uses URL i % n (and fails over along it).
    /// `https://` speaks TLS to gateways that terminate it (all URLs or none).
    #[arg(long, value_delimiter = ',')]
    pub url: Vec<String>,
    /// PEM roots trusted for `https://` gateways (a self-signed or private CA); without it the
    /// Mozilla roots (webpki-roots).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Rooms.
    #[arg(long)]
    pub rooms: Option<usize>,
    /// Clients per room.
    #[arg(long)]
    pub clients: Option<usize>,
    /// Messages per second per room (open loop).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Clients per room that take turns publishing.
    #[arg(long)]
    pub publishers: Option<usize>,
    /// What each send is: `chat=90,seek=4,pause=3,play=3` (also `queue`, `ready`). Player
    /// commands make the run measure sync error.
    #[arg(long)]
    pub mix: Option<String>,
    /// Seconds before the measured window.
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Seconds of the measured window (per step in a ramp).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Seconds to wait for stragglers after the window.
    #[arg(long)]
    pub drain: Option<f64>,
    /// New connections per second (the connection ramp).
    #[arg(long)]
    pub connect_rate: Option<f64>,
    /// Spread client sockets over source addresses 127.0.0.1 .. 127.0.0.N.
    #[arg(long)]
    pub source_addrs: Option<u8>,
    /// Chat text size in bytes (padding included).
    #[arg(long)]
    pub size: Option<usize>,
    /// Service-level objective, e.g. `p99<50ms,loss=0,delivered>=0.99`; exit 2 when it fails.
    #[arg(long)]
    pub slo: Option<String>,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an HTML report with latency-over-time and percentile plots here.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Watchdog: abort after this many seconds.
    #[arg(long)]
    pub max_seconds: Option<f64>,
    /// Server processes, comma-separated (gateways, workers, Redis…): their CPU per delivery
    /// over the measured window, and for `idle` their RSS per held connection (/proc).
    #[arg(long, value_delimiter = ',')]
    #[serde(deserialize_with = "one_or_many")]
    pub pid: Vec<u32>,
    /// Storm: seconds into the measured window when every client drops.
    #[arg(long)]
    pub storm_at: Option<f64>,
    /// Storm: each client reconnects after a random delay up to this (ms).
    #[arg(long)]
    pub storm_jitter_ms: Option<u64>,
    /// Ramp: per-room rates to try in order, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub steps: Vec<f64>,
    /// Ramp: a step fails when its p99 exceeds this (ms) or it loses a message.
    #[arg(long)]
    pub ramp_p99_ms: Option<f64>,
    /// Start publishing at this Unix time (seconds; e.g. `$(( $(date +%s) + 30 ))`), so that
    /// generators on several machines share one measured window; `loadtest merge` then
    /// combines their JSON reports. Fanout, bigroom, storm and failover.
    #[arg(long)]
    pub start_at: Option<f64>,
}

/// `pid = 123` or `pid = [123, 456]` in a scenario file.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(u32),
        Many(Vec<u32>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(p) => vec![p],
        OneOrMany::Many(v) => v,
    })
}

/// Preset per scenario: (rooms, clients, rate).
fn preset(name: &str) -> (usize, usize, f64) {
    match name {
        "bigroom" => (1, 2_000, 2.0),
        "idle" => (50, 100, 1.0),
        "storm" => (50, 200, 2.0),
        "ramp" => (20, 50, 5.0),
        _ => (20, 50, 5.0),
    }
}

impl Flags {
    pub fn into_scenario(self, name: &str) -> Scenario {
        let (rooms, clients, rate) = preset(name);
        let steps = if self.steps.is_empty() && name == "ramp" {
            vec![5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0, 1280.0]
        } else {
            self.steps
        };
        let mix = self.mix.unwrap_or_else(|| "chat=1".into());
        Scenario {
            name: name.to_owned(),
            urls: if self.url.is_empty() {
                vec!["http://127.0.0.1:8080".into()]
            } else {
                self.url
            },
            ca_file: self.ca_file,
            rooms: self.rooms.unwrap_or(rooms),
            clients: self.clients.unwrap_or(clients),
            rate: self.rate.unwrap_or(rate),
            publishers: self.publishers.unwrap_or(1),
            mix: Mix::parse(&mix).unwrap_or_default(),
            mix_text: mix,
            warmup: self.warmup.unwrap_or(2.0),
            duration: self
                .duration
                .unwrap_or(if name == "ramp" { 6.0 } else { 10.0 }),
            drain: self.drain.unwrap_or(3.0),
            connect_rate: self.connect_rate.unwrap_or(500.0),
            source_addrs: self.source_addrs.unwrap_or(1),
            size: self.size.unwrap_or(64),
            slo: self.slo,
            json: self.json,
            html: self.html,
            max_seconds: self.max_seconds.unwrap_or(900.0),
            pid: self.pid,
            reconnect: matches!(name, "storm" | "failover"),
            storm_at: self.storm_at.unwrap_or(2.0),
            storm_jitter_ms: self.storm_jitter_ms.unwrap_or(2_000),
            steps,
            ramp_p99_ms: self.ramp_p99_ms.unwrap_or(50.0),
            start_at: self.start_at,
        }
    }
}

fn from_file(path: &std::path::Path) -> anyhow::Result<Scenario> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    parse_file(&text)
}

/// Parses a scenario file's text: `scenario = "ramp"` plus any flag, snake_case.
pub fn parse_file(text: &str) -> anyhow::Result<Scenario> {
    let flags: Flags = toml::from_str(text)?;
    let name = flags.scenario.clone().unwrap_or_else(|| "fanout".into());
    anyhow::ensure!(
        ["fanout", "bigroom", "idle", "storm", "failover", "ramp"].contains(&name.as_str()),
        "unknown scenario `{name}`"
    );
    if let Some(mix) = &flags.mix {
        Mix::parse(mix)?;
    }
    Ok(flags.into_scenario(&name))
}

/// A resolved scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scenario {
    pub name: String,
    pub urls: Vec<String>,
    /// Roots for `https://` gateways.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    pub rooms: usize,
    pub clients: usize,
    pub rate: f64,
    pub publishers: usize,
    #[serde(skip)]
    pub mix: Mix,
    #[serde(rename = "mix")]
    pub mix_text: String,
    pub warmup: f64,
    pub duration: f64,
    pub drain: f64,
    pub connect_rate: f64,
    pub source_addrs: u8,
    pub size: usize,
    pub slo: Option<String>,
    pub json: Option<PathBuf>,
    pub html: Option<PathBuf>,
    pub max_seconds: f64,
    /// Server processes whose CPU (and, for `idle`, RSS) the report includes.
    pub pid: Vec<u32>,
    /// Clients rejoin by seq when their socket dies.
    pub reconnect: bool,
    pub storm_at: f64,
    pub storm_jitter_ms: u64,
    pub steps: Vec<f64>,
    pub ramp_p99_ms: f64,
    /// Unix seconds when publishing starts (after connecting), so that several generator
    /// machines measure the same window and their reports merge (`loadtest merge`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<f64>,
}

impl Scenario {
    /// A small scenario for tests.
    pub fn small(url: &str) -> Scenario {
        Flags {
            url: vec![url.to_owned()],
            rooms: Some(2),
            clients: Some(5),
            rate: Some(20.0),
            warmup: Some(0.5),
            duration: Some(2.0),
            drain: Some(1.0),
            source_addrs: Some(2),
            max_seconds: Some(60.0),
            ..Flags::default()
        }
        .into_scenario("fanout")
    }

    /// Every bound is finite: counts, rates and durations.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.urls.is_empty(), "--url needs at least one gateway");
        anyhow::ensure!(
            self.rooms >= 1 && self.rooms <= 100_000,
            "--rooms must be 1..100000"
        );
        anyhow::ensure!(
            self.clients >= 1 && self.clients <= 100_000,
            "--clients must be 1..100000"
        );
        anyhow::ensure!(
            self.rooms * self.clients <= 200_000,
            "at most 200000 clients in total"
        );
        for r in std::iter::once(&self.rate).chain(&self.steps) {
            anyhow::ensure!(*r > 0.0 && *r <= 100_000.0, "rates must be in (0, 100000]");
        }
        anyhow::ensure!(
            self.steps.len() <= crate::client::STEPS_MAX,
            "at most {} ramp steps",
            crate::client::STEPS_MAX
        );
        anyhow::ensure!(
            self.publishers >= 1 && self.publishers <= self.clients,
            "--publishers must be 1..clients"
        );
        anyhow::ensure!(
            self.duration > 0.0 && self.duration <= 3_600.0,
            "--duration must be in (0, 3600]"
        );
        anyhow::ensure!(
            self.warmup >= 0.0 && self.drain >= 0.0,
            "--warmup and --drain must be >= 0"
        );
        anyhow::ensure!(
            self.name != "storm" || (self.storm_at >= 0.0 && self.storm_at < self.duration),
            "--storm-at must fall inside the window"
        );
        anyhow::ensure!(self.connect_rate > 0.0, "--connect-rate must be > 0");
        anyhow::ensure!(self.source_addrs >= 1, "--source-addrs must be >= 1");
        anyhow::ensure!(
            (40..=480).contains(&self.size),
            "--size must be 40..480 bytes"
        );
        anyhow::ensure!(self.max_seconds > 0.0, "--max-seconds must be > 0");
        if let Some(at) = self.start_at {
            anyhow::ensure!(
                !matches!(self.name.as_str(), "ramp" | "idle"),
                "--start-at is for fanout, bigroom, storm and failover (their reports merge)"
            );
            let wait = at - crate::wall_us() as f64 / 1e6;
            anyhow::ensure!(
                wait > 0.0 && wait < self.max_seconds,
                "--start-at must be in the future and within --max-seconds ({} s) of now",
                self.max_seconds
            );
        }
        Mix::parse(&self.mix_text)?;
        if let Some(slo) = &self.slo {
            let clauses = crate::report::parse_slo(slo)?;
            anyhow::ensure!(
                !clauses.iter().any(|c| c.metric() == "cpu_us") || !self.pid.is_empty(),
                "the cpu_us objective needs --pid (the server processes to measure)"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_file_sets_scenario_and_flags() {
        let s = parse_file(
            r#"
scenario = "ramp"
url = ["http://127.0.0.1:8081", "http://127.0.0.1:8082"]
rooms = 10
steps = [10.0, 20.0]
mix = "chat=9,seek=1"
ramp_p99_ms = 30.0
pid = 77
"#,
        );
        let s = s.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.name, "ramp");
        assert_eq!(s.urls.len(), 2);
        assert_eq!((s.rooms, s.clients), (10, 50));
        assert_eq!(s.steps, vec![10.0, 20.0]);
        assert_eq!(s.pid, vec![77]);
        let many = parse_file("pid = [1, 2]").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(many.pid, vec![1, 2]);
        assert!(s.mix.moves_clock());
        assert!(
            parse_file("scenario = \"ramp\"\nroomz = 3").is_err(),
            "typos are refused"
        );
        assert!(parse_file("scenario = \"dance\"").is_err());
    }
}

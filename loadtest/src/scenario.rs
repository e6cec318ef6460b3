//! Scenarios: flags with presets. `fanout`: many rooms, steady chat. `bigroom`: one room,
//! thousands of members.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

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
    /// server's RSS growth per connection from /proc.
    Idle(Flags),
}

impl Cli {
    pub fn scenario(self) -> Scenario {
        match self.command {
            Command::Fanout(f) => f.into_scenario("fanout", 20, 50, 5.0),
            Command::Bigroom(f) => f.into_scenario("bigroom", 1, 2000, 2.0),
            Command::Idle(f) => f.into_scenario("idle", 50, 100, 1.0),
        }
    }
}

/// Flags shared by every scenario; unset ones take the scenario's preset.
#[derive(Args, Debug, Clone)]
pub struct Flags {
    /// Gateway base URLs, comma-separated; client i uses URL i % n.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:8080")]
    pub url: Vec<String>,
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
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Seconds before the measured window.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Seconds of the measured window.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds to wait for stragglers after the window.
    #[arg(long, default_value_t = 3.0)]
    pub drain: f64,
    /// New connections per second.
    #[arg(long, default_value_t = 500.0)]
    pub connect_rate: f64,
    /// Spread client sockets over source addresses 127.0.0.1 .. 127.0.0.N.
    #[arg(long, default_value_t = 1)]
    pub source_addrs: u8,
    /// Chat text size in bytes (padding included).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Service-level objective, e.g. `p99<50ms,loss=0,delivered>=0.99`; exit 2 when it fails.
    #[arg(long)]
    pub slo: Option<String>,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Watchdog: abort after this many seconds.
    #[arg(long, default_value_t = 600.0)]
    pub max_seconds: f64,
    /// Server process to sample RSS from (/proc/<pid>/status), for `idle`.
    #[arg(long)]
    pub pid: Option<u32>,
}

impl Flags {
    fn into_scenario(self, name: &str, rooms: usize, clients: usize, rate: f64) -> Scenario {
        Scenario {
            name: name.to_owned(),
            urls: self.url,
            rooms: self.rooms.unwrap_or(rooms),
            clients: self.clients.unwrap_or(clients),
            rate: self.rate.unwrap_or(rate),
            publishers: self.publishers,
            warmup: self.warmup,
            duration: self.duration,
            drain: self.drain,
            connect_rate: self.connect_rate,
            source_addrs: self.source_addrs,
            size: self.size,
            slo: self.slo,
            json: self.json,
            max_seconds: self.max_seconds,
            pid: self.pid,
        }
    }
}

/// A resolved scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub name: String,
    pub urls: Vec<String>,
    pub rooms: usize,
    pub clients: usize,
    pub rate: f64,
    pub publishers: usize,
    pub warmup: f64,
    pub duration: f64,
    pub drain: f64,
    pub connect_rate: f64,
    pub source_addrs: u8,
    pub size: usize,
    pub slo: Option<String>,
    pub json: Option<PathBuf>,
    pub max_seconds: f64,
    pub pid: Option<u32>,
}

impl Scenario {
    /// A small scenario for tests.
    pub fn small(url: &str) -> Scenario {
        Scenario {
            name: "fanout".into(),
            urls: vec![url.to_owned()],
            rooms: 2,
            clients: 5,
            rate: 20.0,
            publishers: 1,
            warmup: 0.5,
            duration: 2.0,
            drain: 1.0,
            connect_rate: 500.0,
            source_addrs: 2,
            size: 64,
            slo: None,
            json: None,
            max_seconds: 60.0,
            pid: None,
        }
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
        anyhow::ensure!(
            self.rate > 0.0 && self.rate <= 100_000.0,
            "--rate must be in (0, 100000]"
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
        anyhow::ensure!(self.connect_rate > 0.0, "--connect-rate must be > 0");
        anyhow::ensure!(self.source_addrs >= 1, "--source-addrs must be >= 1");
        anyhow::ensure!(
            (40..=480).contains(&self.size),
            "--size must be 40..480 bytes"
        );
        if let Some(slo) = &self.slo {
            crate::report::parse_slo(slo)?;
        }
        Ok(())
    }
}

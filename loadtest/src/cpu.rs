//! CPU time of the server processes (`--pid`, comma-separated: gateways, workers, Redis…)
//! and of the generator itself over a measured window, so a run reports what each
//! delivery cost instead of leaving the operator to difference `/proc` by hand.
//!
//! Read from `/proc/<pid>/stat` (user + system time of every thread, dead ones included), in
//! clock ticks of `USER_HZ`, which Linux fixes at 100 for user space on every architecture
//! it supports. Linux only; elsewhere the figures are simply absent.

use serde::{Deserialize, Serialize};

/// Clock ticks per second in `/proc/<pid>/stat` (Linux's `USER_HZ`).
const USER_HZ: f64 = 100.0;

/// CPU seconds a process has used so far, all threads; `None` when it cannot be read.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// utime + stime from a `/proc/<pid>/stat` line. The command name (field 2) is in
/// parentheses and may itself hold spaces or parentheses, so fields are counted from the
/// last `)`: state is the first after it, utime the 12th and stime the 13th.
fn parse_stat(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// CPU seconds of the servers and of the generator at one instant.
#[derive(Debug, Clone)]
pub struct Sample {
    servers: Vec<(u32, Option<f64>)>,
    generator: Option<f64>,
    at: std::time::Instant,
}

impl Sample {
    pub fn take(pids: &[u32]) -> Sample {
        Sample {
            servers: pids.iter().map(|&p| (p, cpu_seconds(p))).collect(),
            generator: cpu_seconds(std::process::id()),
            at: std::time::Instant::now(),
        }
    }
}

/// What the window cost: cores busy on average and µs of CPU per delivery.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CpuReport {
    pub seconds: f64,
    /// Every `--pid` together, in cores (1.0 = one core busy all window).
    pub server_cores: f64,
    /// Server CPU per delivery of the window's messages, µs.
    pub server_us_per_delivery: f64,
    /// Each `--pid` alone, in cores.
    pub by_pid: Vec<(u32, f64)>,
    pub generator_cores: f64,
    pub generator_us_per_delivery: f64,
}

impl CpuReport {
    /// From two samples and the deliveries of the messages due between them. `None` when
    /// nothing was delivered or a process could not be read at both ends (it died: the
    /// figure would be wrong, not just smaller).
    pub fn between(a: &Sample, b: &Sample, deliveries: u64) -> Option<CpuReport> {
        let seconds = b.at.duration_since(a.at).as_secs_f64();
        if deliveries == 0 || seconds <= 0.0 {
            return None;
        }
        let mut by_pid = Vec::with_capacity(a.servers.len());
        for ((pid, before), (_, after)) in a.servers.iter().zip(&b.servers) {
            by_pid.push((*pid, (after.as_ref()? - before.as_ref()?) / seconds));
        }
        let server: f64 = by_pid.iter().map(|(_, c)| c * seconds).sum();
        let generator = b.generator? - a.generator?;
        let per = |cpu: f64| cpu * 1e6 / deliveries as f64;
        Some(CpuReport {
            seconds,
            server_cores: server / seconds,
            server_us_per_delivery: per(server),
            by_pid,
            generator_cores: generator / seconds,
            generator_us_per_delivery: per(generator),
        })
    }
}

impl CpuReport {
    /// The servers' µs per delivery, when any `--pid` was measured (without one the figure
    /// would read 0, as if the servers cost nothing).
    pub fn server_us(&self) -> Option<f64> {
        (!self.by_pid.is_empty()).then_some(self.server_us_per_delivery)
    }

    /// One line for the table: `servers 0.83 cores = 10.4 µs per delivery (pid 1: 0.83); …`.
    pub fn line(&self) -> String {
        let generator = format!(
            "generator {:.2} cores = {:.1} µs per delivery",
            self.generator_cores, self.generator_us_per_delivery
        );
        let Some(server_us) = self.server_us() else {
            return format!("{generator} (add --pid for the servers')");
        };
        let pids: Vec<String> = self
            .by_pid
            .iter()
            .map(|(p, c)| format!("{p}: {c:.2}"))
            .collect();
        format!(
            "servers {:.2} cores = {server_us:.1} µs per delivery (pid {}); {generator}",
            self.server_cores,
            pids.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime …
        let line = "4242 (we ird) (name)) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 9 0";
        assert_eq!(parse_stat(line), Some(3.0));
        assert_eq!(parse_stat("4242 (short) S 1"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn own_cpu_is_readable_and_grows_with_work() {
        let me = std::process::id();
        let a = Sample::take(&[me]);
        let start = cpu_seconds(me).expect("this process's /proc/self/stat");
        // Work until this process has used 50 ms more CPU (however loaded the machine is,
        // so never a timing assumption), bounded at 30 s of wall time.
        let mut x = 0u64;
        let spin = std::time::Instant::now();
        while cpu_seconds(me).is_some_and(|now| now - start < 0.05)
            && spin.elapsed() < std::time::Duration::from_secs(30)
        {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        let b = Sample::take(&[me]);
        let r = CpuReport::between(&a, &b, 1_000).expect("this process's /proc/self/stat");
        assert!(r.server_cores > 0.0, "{r:?}");
        assert!(r.generator_us_per_delivery > 0.0, "{r:?}");
        assert_eq!(r.by_pid.len(), 1);
        assert_eq!(CpuReport::between(&a, &b, 0), None);
        let gone = Sample::take(&[u32::MAX]);
        assert_eq!(CpuReport::between(&gone, &gone, 10), None);
    }
}

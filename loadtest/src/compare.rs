//! `loadtest compare BASE.json NEW.json`: two runs' key figures side by side with the change
//! and a verdict per figure; with `--max-regression PCT` the exit status fails a CI job when
//! a figure got worse by more than that (latency, CPU, memory, throughput) or any loss,
//! duplicate or reordering appeared that the base run did not have.
//!
//! Works on the JSON as written by any version of `loadtest`: a figure missing from either
//! file (older file, or a scenario that does not measure it) is left out, not failed.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

/// Which way is better.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Better {
    Lower,
    Higher,
}

/// How a change is judged: by percent, or (losses) any growth at all.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Judge {
    Percent,
    AnyGrowth,
}

/// One figure of the report: its label and where it sits in the JSON.
struct Figure {
    label: &'static str,
    path: &'static [&'static str],
    better: Better,
    judge: Judge,
}

const fn fig(label: &'static str, path: &'static [&'static str], better: Better) -> Figure {
    Figure {
        label,
        path,
        better,
        judge: Judge::Percent,
    }
}

const fn count(label: &'static str, path: &'static [&'static str]) -> Figure {
    Figure {
        label,
        path,
        better: Better::Lower,
        judge: Judge::AnyGrowth,
    }
}

const FIGURES: &[Figure] = &[
    fig("fan-out p50 ms", &["latency_ms", "p50"], Better::Lower),
    fig("fan-out p99 ms", &["latency_ms", "p99"], Better::Lower),
    fig("fan-out p99.9 ms", &["latency_ms", "p999"], Better::Lower),
    fig("ack p99 ms", &["ack_ms", "p99"], Better::Lower),
    fig("connect p99 ms", &["connect_ms", "p99"], Better::Lower),
    fig("deliveries/s", &["deliveries_per_sec"], Better::Higher),
    fig("delivered ratio", &["delivered_ratio"], Better::Higher),
    count("lost", &["lost"]),
    count("lost, acknowledged", &["lost_acked"]),
    count("clients not rejoined", &["clients_not_rejoined"]),
    count("duplicates", &["duplicates"]),
    count("reordered", &["reordered"]),
    count("errors", &["errors"]),
    fig(
        "server µs/delivery",
        &["cpu", "server_us_per_delivery"],
        Better::Lower,
    ),
    fig(
        "generator µs/delivery",
        &["cpu", "generator_us_per_delivery"],
        Better::Lower,
    ),
    fig(
        "server KiB/connection",
        &["rss_kib_per_connection"],
        Better::Lower,
    ),
    fig(
        "sync error p99 ms",
        &["sync_error_ms", "p99"],
        Better::Lower,
    ),
    fig("reconnect p99 ms", &["reconnect_ms", "p99"], Better::Lower),
    fig("longest gap ms", &["max_gap_ms"], Better::Lower),
    fig(
        "storm: all back s",
        &["storm", "all_recovered_s"],
        Better::Lower,
    ),
    fig(
        "ramp: best deliveries/s",
        &["best_deliveries_per_sec"],
        Better::Higher,
    ),
];

/// Scenario fields that make two runs comparable.
const LAYOUT: &[&str] = &[
    "name",
    "rooms",
    "clients",
    "rate",
    "publishers",
    "mix",
    "duration",
    "size",
    "steps",
];

/// One compared figure.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub label: &'static str,
    pub base: f64,
    pub new: f64,
    /// Percent change, new against base; `None` when the base is 0.
    pub change_pct: Option<f64>,
    pub worse: bool,
    /// Worse beyond the allowed regression.
    pub regression: bool,
}

/// The comparison of two runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub rows: Vec<Row>,
    /// Layout fields that differ (`rate: 20 → 80`): the runs measured different things.
    pub layout_differs: Vec<String>,
}

impl Comparison {
    pub fn regressions(&self) -> Vec<&Row> {
        self.rows.iter().filter(|r| r.regression).collect()
    }
}

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

/// Compares two reports; `max_regression_pct` marks regressions (none without it).
pub fn compare(base: &Value, new: &Value, max_regression_pct: Option<f64>) -> Comparison {
    let mut rows = Vec::new();
    for f in FIGURES {
        let (Some(b), Some(n)) = (
            at(base, f.path).and_then(Value::as_f64),
            at(new, f.path).and_then(Value::as_f64),
        ) else {
            continue;
        };
        if f.judge == Judge::Percent && b == 0.0 && n == 0.0 {
            // Not measured by this scenario (no reconnects, say).
            continue;
        }
        let change_pct = (b != 0.0).then(|| (n - b) / b.abs() * 100.0);
        let worse = match f.better {
            Better::Lower => n > b,
            Better::Higher => n < b,
        };
        let regression = worse
            && match (f.judge, max_regression_pct) {
                (_, None) => false,
                (Judge::AnyGrowth, Some(_)) => true,
                // From 0, any growth is beyond every percentage.
                (Judge::Percent, Some(max)) => change_pct.is_none_or(|c| c.abs() > max),
            };
        rows.push(Row {
            label: f.label,
            base: b,
            new: n,
            change_pct,
            worse,
            regression,
        });
    }
    let layout_differs = LAYOUT
        .iter()
        .filter_map(|k| {
            let (b, n) = (at(base, &["scenario", k]), at(new, &["scenario", k]));
            (b != n).then(|| {
                let show = |v: Option<&Value>| v.map_or("—".to_owned(), Value::to_string);
                format!("{k}: {} → {}", show(b), show(n))
            })
        })
        .collect();
    Comparison {
        rows,
        layout_differs,
    }
}

/// The table an operator reads.
pub fn render(c: &Comparison, base_name: &str, new_name: &str, max: Option<f64>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "compare  {base_name}  →  {new_name}");
    if !c.layout_differs.is_empty() {
        let _ = writeln!(
            out,
            "note: the runs differ in layout ({}): figures measure different loads",
            c.layout_differs.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "{:<26}{:>14}{:>14}{:>11}  verdict",
        "figure", "base", "new", "change"
    );
    for r in &c.rows {
        let change = r
            .change_pct
            .map_or_else(|| "—".to_owned(), |p| format!("{p:+.1} %"));
        let verdict = match (r.regression, r.worse, r.base == r.new) {
            (true, _, _) => "REGRESSION",
            (_, _, true) => "same",
            (_, true, _) => "worse",
            _ => "better",
        };
        let _ = writeln!(
            out,
            "{:<26}{:>14}{:>14}{:>11}  {verdict}",
            r.label,
            number(r.base),
            number(r.new),
            change
        );
    }
    let regressions = c.regressions();
    match (max, regressions.is_empty()) {
        (None, _) => {}
        (Some(m), true) => {
            let _ = writeln!(out, "no regression beyond {m} % (and no new loss)");
        }
        (Some(m), false) => {
            let names: Vec<&str> = regressions.iter().map(|r| r.label).collect();
            let _ = writeln!(
                out,
                "REGRESSION beyond {m} % or new loss: {}",
                names.join(", ")
            );
        }
    }
    out
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// Reads both files, prints the table; `Ok(false)` when a regression was found.
pub fn run(base: &Path, new: &Path, max_regression_pct: Option<f64>) -> anyhow::Result<bool> {
    let read = |p: &Path| -> anyhow::Result<Value> {
        let text = std::fs::read_to_string(p)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is not a loadtest JSON report: {e}", p.display()))
    };
    let (b, n) = (read(base)?, read(new)?);
    anyhow::ensure!(
        b.get("scenario").is_some() && n.get("scenario").is_some(),
        "both files must be loadtest JSON reports (`--json`)"
    );
    let c = compare(&b, &n, max_regression_pct);
    print!(
        "{}",
        render(
            &c,
            &base.display().to_string(),
            &new.display().to_string(),
            max_regression_pct
        )
    );
    Ok(c.regressions().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(p99: f64, lost: u64, us: f64, rate: f64) -> Value {
        json!({
            "scenario": {"name": "fanout", "rooms": 20, "clients": 50, "rate": rate},
            "latency_ms": {"p50": 2.0, "p99": p99, "p999": 30.0},
            "deliveries_per_sec": 20000.0,
            "lost": lost,
            "cpu": {"server_us_per_delivery": us, "generator_us_per_delivery": 11.0},
            "storm": null,
        })
    }

    fn row<'a>(c: &'a Comparison, label: &str) -> &'a Row {
        c.rows
            .iter()
            .find(|r| r.label == label)
            .unwrap_or_else(|| panic!("no row {label}"))
    }

    #[test]
    fn a_slower_p99_beyond_the_bound_is_a_regression_and_within_it_is_not() {
        let base = report(10.0, 0, 14.0, 20.0);
        let c = compare(&base, &report(13.0, 0, 14.5, 20.0), Some(10.0));
        let p99 = row(&c, "fan-out p99 ms");
        assert_eq!(p99.change_pct, Some(30.0));
        assert!(p99.worse && p99.regression);
        let cpu = row(&c, "server µs/delivery");
        assert!(cpu.worse && !cpu.regression, "3.6 % is within 10 %");
        assert_eq!(c.regressions().len(), 1);
        assert!(c.layout_differs.is_empty());
    }

    #[test]
    fn any_new_loss_is_a_regression_and_improvements_never_are() {
        let c = compare(
            &report(10.0, 0, 14.0, 20.0),
            &report(5.0, 1, 10.0, 20.0),
            Some(50.0),
        );
        assert!(row(&c, "lost").regression);
        assert!(!row(&c, "fan-out p99 ms").worse);
        assert!(!row(&c, "server µs/delivery").regression);
        let text = render(&c, "a.json", "b.json", Some(50.0));
        assert!(
            text.contains("REGRESSION beyond 50 % or new loss: lost"),
            "{text}"
        );
    }

    #[test]
    fn without_a_bound_nothing_fails_and_missing_figures_are_left_out() {
        let c = compare(
            &report(10.0, 0, 14.0, 20.0),
            &report(99.0, 7, 50.0, 80.0),
            None,
        );
        assert!(c.regressions().is_empty());
        assert!(c.rows.iter().all(|r| r.label != "storm: all back s"));
        assert!(c.rows.iter().all(|r| r.label != "sync error p99 ms"));
        assert_eq!(c.layout_differs, vec!["rate: 20.0 → 80.0".to_owned()]);
        let text = render(&c, "a.json", "b.json", None);
        assert!(
            text.contains("differ in layout (rate: 20.0 → 80.0)"),
            "{text}"
        );
    }
}

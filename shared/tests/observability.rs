//! Every metric a dashboard panel or an alert rule queries must be one the code exports,
//! so on-call never stares at an empty graph.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use lockstep_shared::metrics::ALL;

fn metric_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("lockstep_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

fn exported(name: &str) -> bool {
    let base = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name);
    ALL.contains(&base) || ALL.contains(&name)
}

fn check_file(path: &Path) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    let names = metric_names(&text);
    for n in &names {
        assert!(
            exported(n),
            "{} queries `{n}`, which the code does not export",
            path.display()
        );
    }
    names.len()
}

#[test]
fn dashboards_and_alerts_use_exported_metrics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut checked = 0;
    for entry in std::fs::read_dir(root.join("dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
                    .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
            assert!(v["panels"].as_array().is_some_and(|p| !p.is_empty()));
            checked += check_file(&path);
        }
    }
    checked += check_file(&root.join("ops/alerts.yml"));
    checked += check_file(&root.join("ops/alerts_test.yml"));
    assert!(checked > 20, "only {checked} metric references found");
}

#[test]
fn metric_names_follow_the_convention() {
    for name in ALL {
        assert!(name.starts_with("lockstep_"), "{name}");
        let area = name.split('_').nth(1).unwrap();
        assert!(
            ["gateway", "worker", "store", "bus", "lease", "ingest"].contains(&area),
            "{name}"
        );
    }
}

/// The alert rules and the scrape config are what Prometheus will load: `promtool` checks
/// them and runs the rules' unit tests (`ops/alerts_test.yml`: each alert fires on what
/// should page or file a ticket, only after its `for`, and stays quiet on the near miss).
/// `ops/test.sh` unpacks promtool from Debian's `prometheus` package and requires this test;
/// a bare `cargo test` without promtool skips it and says so.
#[test]
fn alert_rules_pass_promtool() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let ops = root.join("ops");
    let available = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        assert!(
            std::env::var_os("LOCKSTEP_REQUIRE_PROMTOOL").is_none(),
            "promtool is required here (LOCKSTEP_REQUIRE_PROMTOOL is set) but not found"
        );
        eprintln!(
            "\n*** SKIPPED alert_rules_pass_promtool: promtool not found (ops/test.sh unpacks it \
             from Debian's `prometheus` package) ***\n"
        );
        return;
    }
    for args in [
        vec!["check", "config", "prometheus.yml"],
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts_test.yml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(&args)
            .current_dir(&ops)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

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

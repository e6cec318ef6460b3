//! A self-contained HTML report (inline SVG, no scripts, no network): the summary table,
//! latency over time (p50, p99, max per second), throughput per second, the percentile
//! distribution, and the ramp's rate against p99 when there is one.

use std::fmt::Write;

use crate::report::Report;

const W: f64 = 720.0;
const H: f64 = 240.0;
const PAD: f64 = 48.0;

/// The page.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let title = format!(
        "loadtest {} — {} rooms × {} clients",
        r.scenario.name, r.scenario.rooms, r.scenario.clients
    );
    let _ = write!(
        out,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{}</title><style>\
         body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}\
         th{{text-align:left;background:#f4f4f4}}svg{{background:#fafafa;border:1px solid #ddd;margin:1em 0}}\
         .pass{{color:#070}}.fail{{color:#b00}}</style></head><body><h1>{}</h1>",
        esc(&title),
        esc(&title)
    );
    summary(&mut out, r);
    if !r.timeline.is_empty() {
        let t: Vec<f64> = r.timeline.iter().map(|p| p.t).collect();
        out.push_str("<h2>Fan-out latency over time (ms, by intended send second)</h2>");
        out.push_str(&chart(
            &t,
            &[
                (
                    "p50",
                    "#1f77b4",
                    r.timeline.iter().map(|p| p.p50_ms).collect(),
                ),
                (
                    "p99",
                    "#d62728",
                    r.timeline.iter().map(|p| p.p99_ms).collect(),
                ),
                (
                    "max",
                    "#999999",
                    r.timeline.iter().map(|p| p.max_ms).collect(),
                ),
            ],
            "s",
            "ms",
            false,
        ));
        out.push_str("<h2>Measured deliveries per second (sampled clients)</h2>");
        out.push_str(&chart(
            &t,
            &[(
                "deliveries",
                "#2ca02c",
                r.timeline.iter().map(|p| p.count as f64).collect(),
            )],
            "s",
            "/s",
            false,
        ));
    }
    if r.spectrum.len() > 1 {
        out.push_str("<h2>Latency by percentile (whole window)</h2>");
        // x: −log10(1 − q), so 90, 99, 99.9 are evenly spaced.
        let xs: Vec<f64> = r
            .spectrum
            .iter()
            .map(|(q, _)| -(1.0 - (q / 100.0).min(0.99999)).log10())
            .collect();
        let ys: Vec<f64> = r.spectrum.iter().map(|(_, ms)| *ms).collect();
        out.push_str(&chart(
            &xs,
            &[("latency", "#9467bd", ys)],
            "nines",
            "ms",
            true,
        ));
        out.push_str("<p>x axis: 1 = p90, 2 = p99, 3 = p99.9, 4 = p99.99.</p>");
    }
    if !r.ramp.is_empty() {
        out.push_str("<h2>Ramp: rate per room against p99</h2>");
        let xs: Vec<f64> = r.ramp.iter().map(|s| s.rate).collect();
        out.push_str(&chart(
            &xs,
            &[
                (
                    "p99 ms",
                    "#d62728",
                    r.ramp.iter().map(|s| s.p99_ms).collect(),
                ),
                (
                    "p50 ms",
                    "#1f77b4",
                    r.ramp.iter().map(|s| s.p50_ms).collect(),
                ),
            ],
            "msg/s/room",
            "ms",
            true,
        ));
        out.push_str("<table><tr><th>rate/room</th><th>deliveries/s</th><th>p50 ms</th><th>p99 ms</th><th>lost</th><th>errors</th><th>send lag p99 ms</th><th>server µs/delivery</th><th>verdict</th></tr>");
        for s in &r.ramp {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{:.0}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
                s.rate,
                s.deliveries_per_sec,
                s.p50_ms,
                s.p99_ms,
                s.lost,
                s.errors,
                s.send_lag_p99_ms,
                s.cpu
                    .as_ref()
                    .and_then(|c| c.server_us())
                    .map(|us| format!("{us:.1}"))
                    .unwrap_or_else(|| "—".into()),
                if s.pass { "pass" } else { "fail" },
                if s.pass { "pass" } else { "FAIL" }
            );
        }
        out.push_str("</table>");
    }
    out.push_str("</body></html>\n");
    out
}

fn summary(out: &mut String, r: &Report) {
    let l = &r.latency_ms;
    let mut rows: Vec<(String, String)> = vec![
        ("clients connected".into(), r.clients_connected.to_string()),
        (
            "deliveries".into(),
            format!(
                "{} of {} ({:.2} %), {:.0}/s",
                r.deliveries,
                r.deliveries_expected,
                r.delivered_ratio * 100.0,
                r.deliveries_per_sec
            ),
        ),
        (
            "fan-out latency ms".into(),
            format!(
                "p50 {:.2} · p90 {:.2} · p99 {:.2} · p99.9 {:.2} · max {:.2}",
                l.p50, l.p90, l.p99, l.p999, l.max
            ),
        ),
        (
            "ack latency ms".into(),
            format!("p50 {:.2} · p99 {:.2}", r.ack_ms.p50, r.ack_ms.p99),
        ),
        (
            "lost / duplicates / reordered / errors".into(),
            format!(
                "{} / {} / {} / {}",
                r.lost, r.duplicates, r.reordered, r.errors
            ),
        ),
        (
            "send lag p99 ms".into(),
            format!("{:.2}", r.send_lag_ms.p99),
        ),
    ];
    if let Some(c) = &r.cpu {
        rows.push(("cpu".into(), c.line()));
    }
    if let Some(s) = &r.sync_error_ms {
        rows.push((
            "sync error ms".into(),
            format!("p50 {:.2} · p99 {:.2} · max {:.2}", s.p50, s.p99, s.max),
        ));
    }
    if r.reconnects > 0 {
        rows.push((
            "reconnects".into(),
            format!(
                "{} ({} by replay), longest gap {:.0} ms",
                r.reconnects, r.recovered, r.max_gap_ms
            ),
        ));
    }
    if let Some(st) = &r.storm {
        rows.push((
            "storm".into(),
            format!(
                "{} of {} back, {} recovered, all in {}",
                st.back,
                st.clients,
                st.recovered,
                st.all_recovered_s
                    .map(|s| format!("{s:.2} s"))
                    .unwrap_or_else(|| "—".into())
            ),
        ));
    }
    if let Some(best) = r.best_deliveries_per_sec {
        rows.push(("ramp best".into(), format!("{best:.0} deliveries/s")));
    }
    for s in &r.slo {
        rows.push((
            format!("SLO {}", s.clause),
            format!(
                "{} (actual {:.3})",
                if s.pass { "pass" } else { "FAIL" },
                s.actual
            ),
        ));
    }
    out.push_str("<table>");
    for (k, v) in rows {
        let _ = write!(out, "<tr><th>{}</th><td>{}</td></tr>", esc(&k), esc(&v));
    }
    out.push_str("</table>");
}

/// A line chart; `log_y` for latency spreads.
fn chart(
    xs: &[f64],
    series: &[(&str, &str, Vec<f64>)],
    x_unit: &str,
    y_unit: &str,
    log_y: bool,
) -> String {
    let mut svg = String::new();
    let (x0, x1) = bounds(xs);
    let all: Vec<f64> = series
        .iter()
        .flat_map(|(_, _, v)| v.iter().copied())
        .collect();
    let (mut y0, mut y1) = bounds(&all);
    if log_y {
        y0 = y0.max(0.01).log10().floor();
        y1 = y1.max(0.01).log10().ceil().max(y0 + 1.0);
    } else {
        y0 = 0.0;
        y1 = if y1 <= 0.0 { 1.0 } else { y1 * 1.1 };
    }
    let fy = |v: f64| {
        let v = if log_y { v.max(0.01).log10() } else { v };
        H - PAD - (v - y0) / (y1 - y0) * (H - 2.0 * PAD)
    };
    let fx = |v: f64| PAD + (v - x0) / (x1 - x0).max(1e-9) * (W - 2.0 * PAD);
    let _ = write!(
        svg,
        "<svg width=\"{W}\" height=\"{H}\" xmlns=\"http://www.w3.org/2000/svg\" font-size=\"11\">"
    );
    let _ = write!(
        svg,
        "<line x1=\"{PAD}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#444\"/><line x1=\"{PAD}\" y1=\"{PAD}\" x2=\"{PAD}\" y2=\"{}\" stroke=\"#444\"/>",
        H - PAD,
        W - PAD,
        H - PAD,
        H - PAD
    );
    for i in 0..=4 {
        let v = y0 + (y1 - y0) * i as f64 / 4.0;
        let label = if log_y { 10f64.powf(v) } else { v };
        let y = H - PAD - (v - y0) / (y1 - y0) * (H - 2.0 * PAD);
        let _ = write!(
            svg,
            "<text x=\"4\" y=\"{:.1}\">{}</text><line x1=\"{PAD}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#e4e4e4\"/>",
            y + 4.0,
            fmt_num(label),
            W - PAD
        );
    }
    for i in 0..=4 {
        let v = x0 + (x1 - x0) * i as f64 / 4.0;
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\">{}</text>",
            fx(v) - 10.0,
            H - PAD + 16.0,
            fmt_num(v)
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{}\" y=\"{}\">{}</text><text x=\"4\" y=\"14\">{}</text>",
        W - PAD - 40.0,
        H - 8.0,
        esc(x_unit),
        esc(y_unit)
    );
    for (k, (name, colour, ys)) in series.iter().enumerate() {
        let points: Vec<String> = xs
            .iter()
            .zip(ys)
            .map(|(x, y)| format!("{:.1},{:.1}", fx(*x), fy(*y)))
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>\
             <text x=\"{}\" y=\"{}\" fill=\"{colour}\">{}</text>",
            points.join(" "),
            W - PAD - 100.0,
            PAD + 14.0 * k as f64,
            esc(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn bounds(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if lo.is_finite() && hi.is_finite() {
        (lo, if hi > lo { hi } else { lo + 1.0 })
    } else {
        (0.0, 1.0)
    }
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

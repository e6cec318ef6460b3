//! `loadtest`: drives a Lockstep node or cluster with real WebSocket clients and reports
//! latency, loss and throughput. `loadtest --help` lists scenarios and flags.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let scenario = match lockstep_loadtest::Cli::parse().action()? {
        lockstep_loadtest::Action::Run(s) => *s,
        lockstep_loadtest::Action::Compare {
            base,
            new,
            max_regression,
        } => {
            if !lockstep_loadtest::compare::run(&base, &new, max_regression)? {
                std::process::exit(3);
            }
            return Ok(());
        }
        lockstep_loadtest::Action::Merge {
            inputs,
            json,
            html,
            slo,
        } => {
            let merged =
                lockstep_loadtest::merge::run(&inputs, json.as_deref(), html.as_deref(), slo)?;
            let failed = merged.slo_failures();
            if !failed.is_empty() {
                eprintln!("SLO failed: {}", failed.join("; "));
                std::process::exit(2);
            }
            return Ok(());
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(lockstep_loadtest::run(scenario))?;
    let failed = report.slo_failures();
    if !failed.is_empty() {
        eprintln!("SLO failed: {}", failed.join("; "));
        std::process::exit(2);
    }
    Ok(())
}

//! `loadtest`: drives a Lockstep node or cluster with real WebSocket clients and reports
//! latency, loss and throughput. `loadtest --help` lists scenarios and flags.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = lockstep_loadtest::Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(lockstep_loadtest::run(cli.scenario()?))?;
    let failed = report.slo_failures();
    if !failed.is_empty() {
        eprintln!("SLO failed: {}", failed.join("; "));
        std::process::exit(2);
    }
    Ok(())
}

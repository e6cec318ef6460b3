//! `lockstep`: runs a node in embedded mode (gateway + worker + SQLite in one process).
//! Flags: `--config <file>` (default `lockstep.toml`), `--check-config` (validate, print the
//! effective config, exit).

use lockstep_gateway::{embedded, telemetry};
use lockstep_shared::config::{Cli, Config};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse(std::env::args().skip(1)).map_err(anyhow::Error::msg)?;
    if cli.help {
        println!("usage: lockstep [--config lockstep.toml] [--check-config]");
        return Ok(());
    }
    let cfg = Config::load(&cli.config)?;
    if cli.check_only {
        println!("{}", serde_json::to_string_pretty(&cfg)?);
        eprintln!("configuration is valid");
        return Ok(());
    }
    telemetry::init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let node = embedded::start(cfg).await?;
        telemetry::wait_for_signal().await;
        tracing::info!("shutting down");
        node.shutdown().await;
        Ok(())
    })
}

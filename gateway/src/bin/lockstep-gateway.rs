//! `lockstep-gateway`: a stateless cluster gateway (WebSockets, auth, REST, fan-out); rooms
//! live on `lockstep-worker`s reached through Redis. Flags: `--config`, `--check-config`.

use lockstep_gateway::{embedded, telemetry};
use lockstep_shared::config::{Cli, Config};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse(std::env::args().skip(1)).map_err(anyhow::Error::msg)?;
    if cli.help {
        println!("usage: lockstep-gateway [--config lockstep.toml] [--check-config]");
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
        let node = embedded::start_gateway(cfg).await?;
        telemetry::wait_for_signal().await;
        tracing::info!("shutting down");
        node.shutdown().await;
        Ok(())
    })
}

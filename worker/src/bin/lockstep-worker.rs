//! `lockstep-worker`: a cluster worker. Same flags as `lockstep`: `--config <file>`,
//! `--check-config`. Needs `cluster.redis_url` and `cluster.postgres_url`.

use lockstep_shared::config::{Cli, Config};
use lockstep_worker::{cluster, telemetry};
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse(std::env::args().skip(1)).map_err(anyhow::Error::msg)?;
    if cli.help {
        println!("usage: lockstep-worker [--config lockstep.toml] [--check-config]");
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
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone();
        tokio::spawn(async move {
            telemetry::wait_for_signal().await;
            signal.cancel();
        });
        cluster::node::run(cfg, shutdown).await
    })
}

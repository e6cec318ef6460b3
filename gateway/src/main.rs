//! `lockstep`: runs a node in embedded mode. Flags: `--config <file>` (default
//! `lockstep.toml`), `--check-config` (validate, print the effective config, exit).

use std::path::PathBuf;

use anyhow::Context;
use lockstep_gateway::{embedded, telemetry};
use lockstep_shared::config::Config;

fn main() -> anyhow::Result<()> {
    let mut config_path = PathBuf::from("lockstep.toml");
    let mut check_only = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" => config_path = args.next().context("--config needs a file")?.into(),
            "--check-config" => check_only = true,
            "-h" | "--help" => {
                println!("usage: lockstep [--config lockstep.toml] [--check-config]");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument `{other}` (try --help)"),
        }
    }
    let cfg = Config::load(&config_path)?;
    if check_only {
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
        wait_for_signal().await;
        tracing::info!("shutting down");
        node.shutdown().await;
        Ok(())
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

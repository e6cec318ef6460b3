//! The shared `main` of every Lockstep binary: flags, config loading and validation,
//! `--check-config`, logging, the runtime.

use std::future::Future;

use lockstep_shared::config::{Cli, Config};

/// Parses flags, loads the config and runs `serve` on a multi-threaded runtime.
pub fn main_with<F, Fut>(name: &str, serve: F) -> anyhow::Result<()>
where
    F: FnOnce(Config) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let cli = Cli::parse(std::env::args().skip(1)).map_err(anyhow::Error::msg)?;
    if cli.help {
        println!("usage: {name} [--config lockstep.toml] [--check-config]");
        return Ok(());
    }
    let cfg = Config::load(&cli.config)?;
    if cli.check_only {
        println!("{}", serde_json::to_string_pretty(&cfg)?);
        eprintln!("configuration is valid");
        return Ok(());
    }
    crate::telemetry::init_tracing();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(cfg))
}

//! `lockstep`: runs a node in embedded mode (gateway + worker + SQLite in one process).
//! Flags: `--config <file>` (default `lockstep.toml`), `--check-config` (validate, print the
//! effective config, exit).

use lockstep_gateway::{embedded, telemetry};
use lockstep_worker::cli;

fn main() -> anyhow::Result<()> {
    cli::main_with("lockstep", |cfg| async move {
        let node = embedded::start(cfg).await?;
        telemetry::wait_for_signal().await;
        tracing::info!("shutting down");
        node.shutdown().await;
        Ok(())
    })
}

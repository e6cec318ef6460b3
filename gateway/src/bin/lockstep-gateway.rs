//! `lockstep-gateway`: a stateless cluster gateway (WebSockets, auth, REST, fan-out); rooms
//! live on `lockstep-worker`s reached through Redis. Flags: `--config`, `--check-config`.

use lockstep_gateway::{embedded, telemetry};
use lockstep_worker::cli;

fn main() -> anyhow::Result<()> {
    cli::main_with("lockstep-gateway", |cfg| async move {
        let node = embedded::start_gateway(cfg).await?;
        telemetry::wait_for_signal().await;
        tracing::info!("shutting down");
        node.shutdown().await;
        Ok(())
    })
}

//! `lockstep-worker`: a cluster worker. Same flags as `lockstep`: `--config <file>`,
//! `--check-config`. Needs `cluster.redis_url` and `cluster.postgres_url`.

use lockstep_worker::{cli, cluster, telemetry};
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    cli::main_with("lockstep-worker", |cfg| async move {
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone();
        tokio::spawn(async move {
            telemetry::wait_for_signal().await;
            signal.cancel();
        });
        cluster::node::run(cfg, shutdown).await
    })
}

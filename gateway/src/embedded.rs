//! Embedded mode: gateway and worker in one process, the in-process bus, the SQLite store.
//! The default of `cargo run --release`, and what the integration tests start on port 0.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lockstep_shared::bus::WorkerLink;
use lockstep_shared::config::Config;
use lockstep_shared::protocol::server::draining_frame;
use lockstep_worker::ingest::limiter::LocalJoinLimiter;
use lockstep_worker::ingest::Ingest;
use lockstep_worker::store::sqlite::{SqliteOptions, SqliteStore};
use lockstep_worker::Host;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::fanout::{close, Fanout};
use crate::server::{accept_loop, tls_acceptor};
use crate::state::AppState;
use crate::telemetry::metrics_handle;

/// How long clients get to see `server.draining` before their sockets close.
const DRAIN_NOTICE: Duration = Duration::from_millis(500);

/// What stands behind the gateway.
enum Backend {
    /// Rooms in this process.
    Embedded(Host),
    /// Rooms on workers over Redis; cancelling stops the bus tasks.
    Cluster(CancellationToken),
}

/// A running node (embedded, or a cluster gateway).
pub struct Running {
    pub addr: SocketAddr,
    pub tls: bool,
    state: Arc<AppState>,
    backend: Backend,
    stop_accepting: CancellationToken,
    accept_task: tokio::task::JoinHandle<()>,
    /// Stops the node's own background tasks (the reply deadline sweep).
    background: CancellationToken,
}

/// Binds and starts serving; returns once the port is bound.
pub async fn start(cfg: Config) -> anyhow::Result<Running> {
    cfg.validate()?;
    let cfg = Arc::new(cfg);
    let secret = jwt_secret(&cfg)?;
    let store = SqliteStore::open(
        &cfg.store.path,
        SqliteOptions {
            batch_max: cfg.store.batch_max,
            chat_keep: cfg.store.chat_keep,
            command_ttl_ms: cfg.room.idempotency_ttl_ms,
            events_keep: cfg.room.history_max,
        },
    )
    .with_context(|| format!("open store {}", cfg.store.path.display()))?;
    let fanout = Arc::new(Fanout::new(rand::random::<u64>() >> 1));
    let limiter = Arc::new(LocalJoinLimiter::new(
        cfg.ingest.twitch.join_limit,
        cfg.ingest.twitch.join_window_ms,
    ));
    let ingest = Ingest::new(&cfg.ingest, limiter, CancellationToken::new());
    let host = Host::new(
        cfg.room.clone(),
        Arc::new(store),
        fanout.clone(),
        CancellationToken::new(),
        Some(ingest),
    );
    let state = AppState::new(
        cfg.clone(),
        Auth::new(&secret),
        fanout,
        Arc::new(host.clone()),
        metrics_handle(),
    );
    tracing::info!(store = %cfg.store.path.display(), "embedded mode: gateway and worker in one process");
    serve(state, Backend::Embedded(host)).await
}

/// Starts a cluster gateway: rooms live on workers reached through Redis.
pub async fn start_gateway(cfg: Config) -> anyhow::Result<Running> {
    cfg.validate()?;
    if cfg.auth.jwt_secret.is_empty() {
        anyhow::bail!("auth.jwt_secret must be set in cluster mode (every gateway must share it)");
    }
    let cfg = Arc::new(cfg);
    let fanout = Arc::new(Fanout::new(rand::random::<u64>() >> 1));
    let bus = CancellationToken::new();
    // Installed before the bus starts: a gap noticed from the first message on is filled.
    let (resync_tx, resync_rx) = crate::resync::channel();
    fanout.set_resyncer(resync_tx);
    let link = crate::cluster::RedisLink::start(&cfg.cluster, fanout.clone(), bus.clone()).await?;
    let connected = link.connected.clone();
    let link: Arc<dyn WorkerLink> = Arc::new(link);
    tokio::spawn(crate::resync::run(
        resync_rx,
        link.clone(),
        fanout.clone(),
        bus.clone(),
    ));
    let mut state = AppState::new(
        cfg.clone(),
        Auth::new(cfg.auth.jwt_secret.as_bytes()),
        fanout.clone(),
        link,
        metrics_handle(),
    );
    state.not_ready = Arc::new(move || {
        (!connected.load(Ordering::SeqCst)).then(|| "redis unreachable".to_owned())
    });
    tracing::info!(gateway = fanout.gateway_id(), "cluster gateway");
    serve(state, Backend::Cluster(bus)).await
}

async fn serve(state: AppState, backend: Backend) -> anyhow::Result<Running> {
    let cfg = state.cfg.clone();
    let tls = match (&cfg.tls.cert, &cfg.tls.key) {
        (Some(c), Some(k)) => Some(tls_acceptor(c, k)?),
        _ => None,
    };
    let state = Arc::new(state);
    let listener = TcpListener::bind(cfg.listen_addr()?)
        .await
        .with_context(|| format!("bind {}", cfg.gateway.listen))?;
    let addr = listener.local_addr()?;
    let stop_accepting = CancellationToken::new();
    let is_tls = tls.is_some();
    let accept_task = tokio::spawn(accept_loop(
        listener,
        state.clone(),
        tls,
        stop_accepting.clone(),
    ));
    let background = CancellationToken::new();
    tokio::spawn(crate::deadline::run(
        state.fanout.clone(),
        Duration::from_millis(cfg.gateway.reply_timeout_ms),
        background.clone(),
    ));
    tracing::info!(%addr, tls = is_tls, version = env!("CARGO_PKG_VERSION"), "lockstep listening");
    Ok(Running {
        addr,
        tls: is_tls,
        state,
        backend,
        stop_accepting,
        accept_task,
        background,
    })
}

impl Running {
    /// Graceful shutdown: stop accepting, tell clients `server.draining`, close their
    /// sockets, let every room release its committed output, flush the store. Gives up
    /// (with a warning) after `gateway.shutdown_grace_ms`.
    pub async fn shutdown(self) {
        let grace = Duration::from_millis(self.state.cfg.gateway.shutdown_grace_ms);
        let drain = async {
            self.state.draining.store(true, Ordering::SeqCst);
            self.stop_accepting.cancel();
            let _ = self.accept_task.await;
            let grace_ms = self.state.cfg.gateway.shutdown_grace_ms;
            self.state
                .fanout
                .broadcast(Arc::from(draining_frame(grace_ms)));
            tokio::time::sleep(DRAIN_NOTICE.min(grace / 2)).await;
            // Each socket task writes its 1001 close frame (waiting for it at most
            // `CLOSE_PROMPTLY`), tells its rooms (`ConnClosed`: in a cluster, a gateway that
            // left the heartbeat set is never reaped, so its members must leave this way)
            // and is forgotten. Wait for all of them before the rooms and the bus stop and
            // the process exits under them: a busy machine may not have run those tasks yet.
            // Closing again each round also catches a socket whose upgrade finished late.
            while self.state.fanout.connection_count() > 0 {
                self.state.fanout.close_all(close::GOING_AWAY);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            self.background.cancel();
            match &self.backend {
                Backend::Embedded(host) => host.shutdown().await,
                Backend::Cluster(bus) => bus.cancel(),
            }
        };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "shutdown grace period ran out"
            );
        } else {
            tracing::info!("shutdown complete");
        }
    }
}

/// The configured secret, or one generated once and kept beside the database.
fn jwt_secret(cfg: &Config) -> anyhow::Result<Vec<u8>> {
    if !cfg.auth.jwt_secret.is_empty() {
        return Ok(cfg.auth.jwt_secret.as_bytes().to_vec());
    }
    let path = cfg
        .store
        .path
        .parent()
        .unwrap_or(Path::new("."))
        .join("jwt.secret");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let s = existing.trim();
        if s.len() >= 32 {
            return Ok(s.as_bytes().to_vec());
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let secret: String = lockstep_shared::ids::id_from_random(&rand::random::<[u8; 32]>())
        + &lockstep_shared::ids::id_from_random(&rand::random::<[u8; 32]>());
    write_private(&path, &secret)?;
    tracing::info!(path = %path.display(), "generated a JWT secret for embedded mode");
    Ok(secret.into_bytes())
}

#[cfg(unix)]
fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    f.write_all(content.as_bytes())?;
    Ok(())
}

#[cfg(not(unix))]
fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    std::fs::write(path, content).with_context(|| format!("write {}", path.display()))
}

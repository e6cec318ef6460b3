//! What every request and connection handler shares.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use lockstep_shared::bus::WorkerLink;
use lockstep_shared::config::Config;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::auth::Auth;
use crate::fanout::Fanout;
use crate::limits::IpLimiter;

/// The gateway's shared state.
pub struct AppState {
    pub cfg: Arc<Config>,
    pub auth: Auth,
    pub fanout: Arc<Fanout>,
    pub link: Arc<dyn WorkerLink>,
    pub ip_limiter: IpLimiter,
    pub metrics: PrometheusHandle,
    /// Set once shutdown starts: `/readyz` fails and new sockets are refused.
    pub draining: AtomicBool,
    /// Why the node is not ready (a dependency is down), if it is not.
    pub not_ready: Arc<dyn Fn() -> Option<String> + Send + Sync>,
    next_conn: AtomicU64,
}

impl AppState {
    pub fn new(
        cfg: Arc<Config>,
        auth: Auth,
        fanout: Arc<Fanout>,
        link: Arc<dyn WorkerLink>,
        metrics: PrometheusHandle,
    ) -> AppState {
        let ip_limiter = IpLimiter::new(
            cfg.gateway.connect_rate_per_ip,
            cfg.gateway.connect_burst_per_ip,
        );
        AppState {
            cfg,
            auth,
            fanout,
            link,
            ip_limiter,
            metrics,
            draining: AtomicBool::new(false),
            not_ready: Arc::new(|| None),
            next_conn: AtomicU64::new(1),
        }
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

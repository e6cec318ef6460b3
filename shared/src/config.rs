//! Configuration: defaults < `lockstep.toml` < `LOCKSTEP_*` environment (nested keys joined
//! with `__`, e.g. `LOCKSTEP_GATEWAY__LISTEN`). Validated as a whole before any port is bound,
//! so an operator sees every mistake at once. Passed down as a value, never a global.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

mod backing_tls;
mod ingest;
pub use ingest::{BreakerConfig, IngestConfig, MetadataConfig, TwitchConfig, YoutubeConfig};

/// The whole node configuration. Every limit an operator or a load test may tune is here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Config {
    pub gateway: GatewayConfig,
    pub auth: AuthConfig,
    pub presence: PresenceConfig,
    pub room: RoomConfig,
    pub store: StoreConfig,
    pub tls: TlsConfig,
    pub cluster: ClusterConfig,
    pub ingest: IngestConfig,
}

/// WebSocket and HTTP termination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GatewayConfig {
    /// Address to bind, `host:port`; port 0 picks a free port.
    pub listen: String,
    /// Allowed `Origin` values for WebSocket upgrades; empty allows any.
    pub allowed_origins: Vec<String>,
    /// Largest accepted client message, in bytes; larger closes the socket with 1009.
    pub max_frame_bytes: usize,
    /// Frames buffered per connection before it is closed with 4008 (slow consumer).
    pub outbound_queue: usize,
    /// Bytes of those frames, the same way: frames differ in size by a thousandfold (a chat,
    /// a whole-queue `queue.update`, a join snapshot). One frame always fits an empty queue.
    pub outbound_queue_bytes: usize,
    /// How often the server pings each socket.
    pub ping_interval_ms: u64,
    /// New connections (HTTP or WebSocket) per second allowed from one IP, refilled steadily.
    pub connect_rate_per_ip: f64,
    /// Burst of new connections one IP may open at once.
    pub connect_burst_per_ip: f64,
    /// Commands per second one connection may send (token bucket rate).
    pub command_rate: f64,
    /// Command burst per connection.
    pub command_burst: f64,
    /// `signal.send` per second per connection.
    pub signal_rate: f64,
    /// Rooms one connection may join at once.
    pub max_rooms_per_connection: usize,
    /// Open WebSocket connections the node accepts in total.
    pub max_connections: usize,
    /// Time to drain on SIGTERM/SIGINT before exiting anyway.
    pub shutdown_grace_ms: u64,
    /// A command still without its reply after this long is answered `unavailable` (safe to
    /// retry with the same id): a reply lost on the bus must not leave a client waiting.
    pub reply_timeout_ms: u64,
    /// Kernel send buffer per socket in bytes (SO_SNDBUF); 0 keeps the OS default. Smaller
    /// bounds per-connection memory and detects slow consumers sooner.
    pub socket_send_buffer: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: "127.0.0.1:8080".into(),
            allowed_origins: Vec::new(),
            max_frame_bytes: 64 * 1024,
            outbound_queue: 1024,
            outbound_queue_bytes: 8 * 1024 * 1024,
            ping_interval_ms: 10_000,
            connect_rate_per_ip: 20.0,
            connect_burst_per_ip: 100.0,
            command_rate: 50.0,
            command_burst: 100.0,
            signal_rate: 50.0,
            max_rooms_per_connection: 10,
            max_connections: 50_000,
            shutdown_grace_ms: 10_000,
            reply_timeout_ms: 10_000,
            socket_send_buffer: 0,
        }
    }
}

/// Tokens and guest sign-in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// HS256 secret. Empty: embedded mode generates one and keeps it beside the database.
    pub jwt_secret: String,
    /// Whether `POST /v1/auth/guest` hands out tokens.
    pub guest_enabled: bool,
    /// Lifetime of guest tokens.
    pub guest_ttl_s: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_secret: String::new(),
            guest_enabled: true,
            guest_ttl_s: 24 * 3600,
        }
    }
}

/// Presence liveness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PresenceConfig {
    /// A socket silent (no pong, no frame) this long is dropped from presence.
    pub timeout_ms: u64,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig { timeout_ms: 20_000 }
    }
}

/// Room rules: the engine's knobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoomConfig {
    /// Upcoming entries a queue may hold.
    pub queue_max: usize,
    /// Events kept for `since_seq` recovery (count bound).
    pub history_max: usize,
    /// Events kept for `since_seq` recovery (bytes of their frames; the newest is always
    /// kept): a `queue.update` carries the whole queue, so a count alone bounds little.
    pub history_max_bytes: usize,
    /// Events kept for `since_seq` recovery (age bound).
    pub history_ttl_ms: u64,
    /// How long a new entry waits for every member to be ready.
    pub ready_timeout_ms: u64,
    /// How far in the future a start is scheduled so every client starts together.
    pub start_lead_ms: u64,
    /// Longest pause the `pause_all` ad policy may impose.
    pub ad_max_pause_ms: u64,
    /// After the playing entry's known duration has passed on the room clock, how long the
    /// room waits for a client's `player.ended` before it advances by itself (every tab in
    /// the background, the reporting client gone). 0: only clients advance.
    pub end_grace_ms: u64,
    /// Longest chat message, in characters.
    pub chat_max_chars: usize,
    /// Chat messages per second per user (token bucket rate).
    pub chat_rate: f64,
    /// Chat burst per user.
    pub chat_burst: f64,
    /// Chat messages included in a join snapshot.
    pub chat_snapshot: usize,
    /// Command ids remembered per room for idempotent retries (count bound).
    pub idempotency_max: usize,
    /// Command ids remembered per room (age bound).
    pub idempotency_ttl_ms: u64,
    /// Present members per room.
    pub members_max: usize,
    /// External chat sources per room.
    pub sources_max: usize,
    /// Operators per room: roles are kept with the room (present or not), so they need
    /// a bound of their own.
    pub operators_max: usize,
    /// Users banned from one room at once, and separately users muted (expired ones do not
    /// count).
    pub bans_max: usize,
    /// Upstream (Twitch/YouTube) messages per second one room accepts; the rest are shed
    /// and counted.
    pub ingest_rate: f64,
    /// Upstream message burst one room accepts.
    pub ingest_burst: f64,
    /// Commands waiting in one room's mailbox before callers get `unavailable`.
    pub mailbox: usize,
    /// An empty room is unloaded from memory after this long.
    pub idle_unload_ms: u64,
    /// Rooms a worker keeps loaded at once; beyond it, commands for other rooms get
    /// `unavailable` until some unload.
    pub max_loaded: usize,
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            queue_max: 500,
            history_max: 1_000,
            history_max_bytes: 4 * 1024 * 1024,
            history_ttl_ms: 5 * 60 * 1000,
            ready_timeout_ms: 8_000,
            start_lead_ms: 250,
            ad_max_pause_ms: 120_000,
            end_grace_ms: 5_000,
            chat_max_chars: 500,
            chat_rate: 2.0,
            chat_burst: 5.0,
            chat_snapshot: 50,
            idempotency_max: 1_000,
            idempotency_ttl_ms: 5 * 60 * 1000,
            members_max: 10_000,
            sources_max: 8,
            operators_max: 200,
            bans_max: 1_000,
            ingest_rate: 50.0,
            ingest_burst: 200.0,
            mailbox: 1_024,
            idle_unload_ms: 60_000,
            max_loaded: 100_000,
        }
    }
}

/// The embedded store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreConfig {
    /// SQLite database file (created with its directory).
    pub path: PathBuf,
    /// Most room writes committed in one transaction (group commit).
    pub batch_max: usize,
    /// Chat rows kept per room; older rows are pruned.
    pub chat_keep: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from("./data/lockstep.db"),
            batch_max: 512,
            chat_keep: 10_000,
        }
    }
}

/// Cluster mode: separate gateway and worker processes over Redis, rooms in Postgres.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterConfig {
    /// Redis for the bus, shard leases and liveness (one server, or one with replicas behind
    /// a single address).
    pub redis_url: String,
    /// Seed nodes of a Redis Cluster (`redis://host:port`, comma-separated in the
    /// environment). When set, the bus uses sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`) across
    /// the cluster's nodes and `redis_url` is not used; empty means one server.
    #[serde(deserialize_with = "ingest::comma_list")]
    pub redis_cluster_nodes: Vec<String>,
    /// PEM roots trusted for `rediss://` (a managed Redis signed by a private CA); unset
    /// trusts the Mozilla root program's CAs (webpki-roots).
    pub redis_ca_file: Option<PathBuf>,
    /// PEM client certificate and key for a Redis that asks for one (`tls-auth-clients`);
    /// both or neither.
    pub redis_client_cert: Option<PathBuf>,
    pub redis_client_key: Option<PathBuf>,
    /// Postgres for room state (workers only). `sslmode=require` in it turns TLS on (the
    /// server's certificate and host name are always verified); otherwise plain text.
    pub postgres_url: String,
    /// PEM roots trusted for Postgres over TLS; unset trusts the Mozilla root
    /// program's CAs (webpki-roots).
    pub postgres_ca_file: Option<PathBuf>,
    /// PEM client certificate and key for a Postgres that asks for one (`cert` in
    /// pg_hba.conf, `clientcert=verify-full`); both or neither.
    pub postgres_client_cert: Option<PathBuf>,
    pub postgres_client_key: Option<PathBuf>,
    /// Connections in a worker's Postgres pool.
    pub postgres_pool: usize,
    /// This node's name in logs and liveness keys; empty picks a random one.
    pub node_id: String,
    /// Virtual shards rooms are hashed onto; every node must agree.
    pub shards: u32,
    /// A shard lease expires this long after its owner's last renewal.
    pub lease_ttl_ms: u64,
    /// How often workers renew leases and every node heartbeats.
    pub heartbeat_ms: u64,
    /// A gateway silent this long is dead: its members leave presence.
    pub gateway_timeout_ms: u64,
    /// Where a worker serves /healthz, /readyz and /metrics.
    pub worker_listen: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_cluster_nodes: Vec::new(),
            redis_ca_file: None,
            redis_client_cert: None,
            redis_client_key: None,
            postgres_url: "postgres://postgres@127.0.0.1:5432/lockstep".into(),
            postgres_ca_file: None,
            postgres_client_cert: None,
            postgres_client_key: None,
            postgres_pool: 16,
            node_id: String::new(),
            shards: crate::shard::DEFAULT_SHARDS,
            lease_ttl_ms: 3_000,
            heartbeat_ms: 500,
            gateway_timeout_ms: 5_000,
            worker_listen: "127.0.0.1:9090".into(),
        }
    }
}

/// TLS termination with rustls; both paths set turns it on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct TlsConfig {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Command-line flags every Lockstep binary takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cli {
    /// `--config <file>`; default `lockstep.toml` (optional file).
    pub config: PathBuf,
    /// `--check-config`: validate, print the effective config, exit.
    pub check_only: bool,
    /// `--help`.
    pub help: bool,
}

impl Cli {
    /// Parses the flags (without the program name).
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Cli, String> {
        let mut cli = Cli {
            config: PathBuf::from("lockstep.toml"),
            check_only: false,
            help: false,
        };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--config" => cli.config = args.next().ok_or("--config needs a file")?.into(),
                "--check-config" => cli.check_only = true,
                "-h" | "--help" => cli.help = true,
                other => return Err(format!("unknown argument `{other}` (try --help)")),
            }
        }
        Ok(cli)
    }
}

/// Why a configuration could not be loaded or is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

impl Config {
    /// Layers defaults, the TOML file (if it exists) and the `LOCKSTEP_*` environment.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        Self::from_figment(
            Self::figment()
                .merge(Toml::file(file))
                .merge(Env::prefixed("LOCKSTEP_").split("__")),
        )
    }

    /// The defaults as a figment, for callers (tests) that merge their own values on top.
    pub fn figment() -> Figment {
        Figment::from(Serialized::defaults(Config::default()))
    }

    /// Extracts and validates.
    pub fn from_figment(figment: Figment) -> Result<Config, ConfigError> {
        let config: Config = figment.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// The bound listen address.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.gateway.listen.parse().map_err(|e| {
            ConfigError::Invalid(vec![format!(
                "gateway.listen `{}` is not host:port ({e})",
                self.gateway.listen
            )])
        })
    }

    /// Collects every problem, not just the first.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errs = Vec::new();
        let g = &self.gateway;
        if self.gateway.listen.parse::<SocketAddr>().is_err() {
            errs.push(format!("gateway.listen `{}` is not host:port", g.listen));
        }
        if !(1024..=16 * 1024 * 1024).contains(&g.max_frame_bytes) {
            errs.push("gateway.max_frame_bytes must be between 1024 and 16777216".into());
        }
        if !(1..=1_000_000).contains(&g.outbound_queue) {
            errs.push("gateway.outbound_queue must be between 1 and 1000000".into());
        }
        if g.outbound_queue_bytes < 64 * 1024 {
            errs.push("gateway.outbound_queue_bytes must be at least 65536".into());
        }
        if g.ping_interval_ms < 100 {
            errs.push("gateway.ping_interval_ms must be at least 100".into());
        }
        if g.reply_timeout_ms < 100 {
            errs.push("gateway.reply_timeout_ms must be at least 100".into());
        }
        for (name, v) in [
            ("gateway.connect_rate_per_ip", g.connect_rate_per_ip),
            ("gateway.connect_burst_per_ip", g.connect_burst_per_ip),
            ("gateway.command_rate", g.command_rate),
            ("gateway.command_burst", g.command_burst),
            ("gateway.signal_rate", g.signal_rate),
            ("room.chat_rate", self.room.chat_rate),
            ("room.chat_burst", self.room.chat_burst),
            ("room.ingest_rate", self.room.ingest_rate),
            ("room.ingest_burst", self.room.ingest_burst),
        ] {
            if !(v.is_finite() && v > 0.0) {
                errs.push(format!("{name} must be a positive number"));
            }
        }
        for (name, v) in [
            (
                "gateway.max_rooms_per_connection",
                g.max_rooms_per_connection,
            ),
            ("gateway.max_connections", g.max_connections),
            ("room.queue_max", self.room.queue_max),
            ("room.history_max", self.room.history_max),
            ("room.history_max_bytes", self.room.history_max_bytes),
            ("room.chat_max_chars", self.room.chat_max_chars),
            ("room.idempotency_max", self.room.idempotency_max),
            ("room.members_max", self.room.members_max),
            ("room.operators_max", self.room.operators_max),
            ("room.bans_max", self.room.bans_max),
            ("room.mailbox", self.room.mailbox),
            ("room.max_loaded", self.room.max_loaded),
            ("store.batch_max", self.store.batch_max),
            ("store.chat_keep", self.store.chat_keep),
        ] {
            if v == 0 {
                errs.push(format!("{name} must be at least 1"));
            }
        }
        if self.presence.timeout_ms <= g.ping_interval_ms {
            errs.push("presence.timeout_ms must be longer than gateway.ping_interval_ms".into());
        }
        if !self.auth.jwt_secret.is_empty() && self.auth.jwt_secret.len() < 16 {
            errs.push("auth.jwt_secret must be at least 16 bytes when set".into());
        }
        let c = &self.cluster;
        if c.shards == 0 {
            errs.push("cluster.shards must be at least 1".into());
        }
        if c.heartbeat_ms == 0 || c.lease_ttl_ms < 3 * c.heartbeat_ms {
            errs.push("cluster.lease_ttl_ms must be at least 3 × cluster.heartbeat_ms (and heartbeat > 0)".into());
        }
        if c.gateway_timeout_ms < 2 * c.heartbeat_ms {
            errs.push(
                "cluster.gateway_timeout_ms must be at least 2 × cluster.heartbeat_ms".into(),
            );
        }
        if c.worker_listen.parse::<SocketAddr>().is_err() {
            errs.push(format!(
                "cluster.worker_listen `{}` is not host:port",
                c.worker_listen
            ));
        }
        for node in &c.redis_cluster_nodes {
            if !(node.starts_with("redis://") || node.starts_with("rediss://")) {
                errs.push(format!(
                    "cluster.redis_cluster_nodes: `{node}` is not redis://host:port"
                ));
            }
        }
        errs.extend(backing_tls::problems(c));
        if c.postgres_pool == 0 {
            errs.push("cluster.postgres_pool must be at least 1".into());
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            errs.push("tls.cert and tls.key must be set together".into());
        }
        errs.extend(self.ingest.problems());
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errs))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn env_and_file_layer_over_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("lockstep.toml", "[room]\nqueue_max = 7\nchat_rate = 9.5\n")?;
            jail.set_env("LOCKSTEP_GATEWAY__LISTEN", "127.0.0.1:9999");
            jail.set_env("LOCKSTEP_ROOM__CHAT_RATE", "3");
            let cfg = Config::load(Path::new("lockstep.toml"))
                .map_err(|e| figment::Error::from(e.to_string()))?;
            assert_eq!(cfg.room.queue_max, 7);
            assert_eq!(cfg.room.chat_rate, 3.0);
            assert_eq!(cfg.gateway.listen, "127.0.0.1:9999");
            assert_eq!(cfg.room.history_max, 1_000);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn proxies_come_from_one_comma_separated_variable() {
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "LOCKSTEP_INGEST__PROXIES",
                "http://127.0.0.1:3128, http://127.0.0.2:3128",
            );
            jail.set_env("LOCKSTEP_INGEST__TWITCH__URL", "ws://127.0.0.1:1/");
            jail.set_env("LOCKSTEP_INGEST__YOUTUBE__BASE_URL", "http://127.0.0.1:2");
            let cfg = Config::load(Path::new("none.toml"))
                .map_err(|e| figment::Error::from(e.to_string()))?;
            assert_eq!(
                cfg.ingest.proxies,
                vec!["http://127.0.0.1:3128", "http://127.0.0.2:3128"]
            );
            assert_eq!(cfg.ingest.twitch.url, "ws://127.0.0.1:1/");
            assert_eq!(cfg.ingest.youtube.base_url, "http://127.0.0.1:2");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn redis_cluster_seeds_come_from_one_comma_separated_variable() {
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "LOCKSTEP_CLUSTER__REDIS_CLUSTER_NODES",
                "redis://127.0.0.1:7000,redis://127.0.0.1:7001",
            );
            let cfg = Config::load(Path::new("none.toml"))
                .map_err(|e| figment::Error::from(e.to_string()))?;
            assert_eq!(
                cfg.cluster.redis_cluster_nodes,
                vec!["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]
            );
            Ok(())
        });
        let mut cfg = Config::default();
        cfg.cluster.redis_cluster_nodes = vec!["127.0.0.1:7000".into()];
        assert!(matches!(cfg.validate(), Err(ConfigError::Invalid(e)) if e.len() == 1));
        cfg.cluster.redis_cluster_nodes = vec!["rediss://10.0.0.1:6379".into()];
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn bad_ingest_settings_are_reported() {
        let mut cfg = Config::default();
        cfg.ingest.proxies = vec!["socks5://x:1".into()];
        cfg.ingest.twitch.url = "http://irc".into();
        assert!(matches!(cfg.validate(), Err(ConfigError::Invalid(e)) if e.len() == 2));
    }

    #[test]
    fn validation_reports_every_problem() {
        let mut cfg = Config::default();
        cfg.gateway.listen = "nowhere".into();
        cfg.gateway.outbound_queue = 0;
        cfg.tls.cert = Some("c.pem".into());
        match cfg.validate() {
            Err(ConfigError::Invalid(errs)) => assert_eq!(errs.len(), 3, "{errs:?}"),
            other => panic!("expected invalid config, got {other:?}"),
        }
    }
}

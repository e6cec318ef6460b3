//! How a node reaches Redis: one server, or a Redis Cluster through its seed nodes (DESIGN §1:
//! production scale-out). The difference stays in this file. On a Redis Cluster every
//! channel is sharded (`SPUBLISH`/`SSUBSCRIBE`: a message travels only inside the shard that
//! owns the channel's slot, so pub/sub traffic spreads over the nodes instead of being copied
//! to all of them) and a pipeline may touch one slot only: commands sent together are
//! grouped by slot, one pipeline each, so the order of messages on one channel holds.
//! TLS (`rediss://`) is verified against the Mozilla root program's CAs (webpki-roots) or
//! `cluster.redis_ca_file`.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::join_all;
use lockstep_shared::config::ClusterConfig;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{
    Cmd, FromRedisValue, Pipeline, ProtocolVersion, RedisError, RedisFuture, RedisResult,
    TlsCertificates, Value,
};

/// Both connection enums are used wherever redis-rs takes a connection: each variant answers.
macro_rules! delegate_connection_like {
    ($enum:ident) => {
        impl ConnectionLike for $enum {
            fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
                match self {
                    $enum::Single(c) => c.req_packed_command(cmd),
                    $enum::Cluster(c) => c.req_packed_command(cmd),
                }
            }

            fn req_packed_commands<'a>(
                &'a mut self,
                cmd: &'a Pipeline,
                offset: usize,
                count: usize,
            ) -> RedisFuture<'a, Vec<Value>> {
                match self {
                    $enum::Single(c) => c.req_packed_commands(cmd, offset, count),
                    $enum::Cluster(c) => c.req_packed_commands(cmd, offset, count),
                }
            }

            fn get_db(&self) -> i64 {
                match self {
                    $enum::Single(c) => c.get_db(),
                    $enum::Cluster(c) => c.get_db(),
                }
            }
        }
    };
}

/// Why a Redis pool could not be made or lend a connection.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot create the redis pool: {0}")]
    Create(String),
    #[error("no redis connection from the pool: {0}")]
    Get(String),
}

/// Why the configured Redis cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("cannot read {setting} {path}: {source}")]
    File {
        setting: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Redis(#[from] RedisError),
}

/// Where the cluster's Redis is.
#[derive(Clone)]
pub enum RedisTarget {
    /// One server (`cluster.redis_url`).
    Single(redis::Client),
    /// A Redis Cluster (`cluster.redis_cluster_nodes`).
    Cluster {
        seeds: Vec<String>,
        /// The configured TLS files, for every client made for this cluster.
        tls: Option<Arc<RedisTls>>,
        client: Box<ClusterClient>,
    },
}

/// PEM files for `rediss://` beyond the defaults: roots to trust instead of webpki-roots
/// (`cluster.redis_ca_file`), and a client certificate for servers that ask for one
/// (`cluster.redis_client_cert` / `redis_client_key`).
pub struct RedisTls {
    roots: Option<Vec<u8>>,
    client: Option<(Vec<u8>, Vec<u8>)>,
}

impl RedisTls {
    /// The files the configuration names, read now; `None` when it names none.
    fn from_config(cc: &ClusterConfig) -> Result<Option<RedisTls>, TargetError> {
        let read = |setting: &'static str, path: &std::path::Path| {
            std::fs::read(path).map_err(|source| TargetError::File {
                setting,
                path: path.display().to_string(),
                source,
            })
        };
        let roots = match &cc.redis_ca_file {
            Some(path) => Some(read("cluster.redis_ca_file", path)?),
            None => None,
        };
        let client = match (&cc.redis_client_cert, &cc.redis_client_key) {
            (Some(cert), Some(key)) => Some((
                read("cluster.redis_client_cert", cert)?,
                read("cluster.redis_client_key", key)?,
            )),
            _ => None,
        };
        Ok((roots.is_some() || client.is_some()).then_some(RedisTls { roots, client }))
    }

    /// In the form redis-rs takes them.
    fn certificates(&self) -> TlsCertificates {
        TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.roots.clone(),
        }
    }
}

/// One server, with the configured TLS files when there are any.
fn single_client(url: &str, tls: Option<&RedisTls>) -> RedisResult<redis::Client> {
    match tls {
        Some(tls) => redis::Client::build_with_tls(url, tls.certificates()),
        None => redis::Client::open(url),
    }
}

impl RedisTarget {
    /// Reads `cluster.redis_cluster_nodes`, else `cluster.redis_url`, and the TLS files;
    /// nothing connects yet.
    pub fn from_config(cc: &ClusterConfig) -> Result<RedisTarget, TargetError> {
        let tls = RedisTls::from_config(cc)?.map(Arc::new);
        if cc.redis_cluster_nodes.is_empty() {
            return Ok(RedisTarget::Single(single_client(
                &cc.redis_url,
                tls.as_deref(),
            )?));
        }
        let seeds = cc.redis_cluster_nodes.clone();
        let client = Box::new(cluster_builder(&seeds, tls.as_deref()).build()?);
        Ok(RedisTarget::Cluster { seeds, tls, client })
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisTarget::Cluster { .. })
    }

    /// For logs: the server or the seed nodes.
    pub fn describe(&self) -> String {
        match self {
            RedisTarget::Single(c) => format!("{:?}", c.get_connection_info().addr()),
            RedisTarget::Cluster { seeds, .. } => format!("cluster {}", seeds.join(",")),
        }
    }

    /// `PUBLISH` on one server, `SPUBLISH` on a cluster; both answer how many subscribers
    /// heard it (on a cluster: the subscribers of the channel's shard, which are all of them).
    pub fn publish(&self, channel: &str, payload: &[u8]) -> Cmd {
        let mut cmd = redis::cmd(if self.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        });
        cmd.arg(channel).arg(payload);
        cmd
    }

    /// A multiplexed connection that reconnects by itself.
    ///
    /// On one server it speaks RESP3 when the server does (Redis ≥ 6): the connection manager
    /// then learns of a dropped connection when it drops and reconnects at once. Over RESP2 it
    /// learns only from the next command failing, so after a Redis restart the first batch a
    /// worker publishes fails on the dead connection (the publisher sends it again); a server
    /// or proxy that refuses `HELLO` still gets RESP2, with a warning.
    pub async fn connect(&self) -> RedisResult<RedisConn> {
        Ok(match self {
            RedisTarget::Single(client) => {
                let info = client.get_connection_info().clone();
                let protocol = match hello_refused(client).await {
                    None => ProtocolVersion::RESP3,
                    Some(why) => {
                        tracing::warn!(
                            cause = %why,
                            "Redis refuses HELLO (older than 6, or a proxy): speaking RESP2, so \
                             a dropped connection is noticed only when the next command fails"
                        );
                        ProtocolVersion::RESP2
                    }
                };
                let settings = info.redis_settings().clone().set_protocol(protocol);
                let client = redis::Client::open(info.set_redis_settings(settings))?;
                let config = ConnectionManagerConfig::new()
                    .set_min_delay(RECONNECT_MIN)
                    .set_max_delay(RECONNECT_MAX)
                    .set_number_of_retries(RECONNECT_ATTEMPTS)
                    .set_connection_timeout(Some(CONNECT_TIMEOUT));
                RedisConn::Single(ConnectionManager::new_with_config(client, config).await?)
            }
            RedisTarget::Cluster { client, .. } => {
                RedisConn::Cluster(client.get_async_connection().await?)
            }
        })
    }

    /// A deadpool pool of connections (leases, reaping, the Twitch JOIN limiter).
    pub fn pool(&self) -> Result<RedisPool, PoolError> {
        match self {
            RedisTarget::Single(client) => {
                // Built from the client's own address, which keeps the TLS roots
                // (deadpool-redis' `Config` would drop them).
                let manager = deadpool_redis::Manager::new(client.get_connection_info().clone())
                    .map_err(|e| PoolError::Create(e.to_string()))?;
                deadpool_redis::Pool::builder(manager)
                    .max_size(POOL_SIZE)
                    .runtime(deadpool_redis::Runtime::Tokio1)
                    .build()
                    .map(RedisPool::Single)
                    .map_err(|e| PoolError::Create(e.to_string()))
            }
            RedisTarget::Cluster { client, .. } => {
                // deadpool-redis' own cluster manager cannot be given TLS roots: this one
                // opens its connections through the configured client.
                deadpool::managed::Pool::builder(ClusterManager {
                    client: (**client).clone(),
                })
                .max_size(POOL_SIZE)
                .runtime(deadpool_redis::Runtime::Tokio1)
                .build()
                .map(RedisPool::Cluster)
                .map_err(|e| PoolError::Create(e.to_string()))
            }
        }
    }

    /// One plain client per server we were told about, for per-server settings
    /// (`pubsub_limit`): on a cluster, the seed nodes.
    pub fn servers(&self) -> Vec<redis::Client> {
        match self {
            RedisTarget::Single(c) => vec![c.clone()],
            RedisTarget::Cluster { seeds, tls, .. } => seeds
                .iter()
                .filter_map(|s| single_client(s, tls.as_deref()).ok())
                .collect(),
        }
    }
}

/// A long-lived multiplexed connection (publishing, gateway commands, heartbeats).
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

delegate_connection_like!(RedisConn);

/// Why the server refused `HELLO` (which RESP3 needs), or `None` when it answered it or could
/// not be asked (unreachable: the connection manager will retry, in RESP3).
async fn hello_refused(client: &redis::Client) -> Option<RedisError> {
    let probe = async {
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("HELLO")
            .arg(2)
            .query_async::<Value>(&mut conn)
            .await
            .err()
            .filter(|e| !e.is_io_error() && !e.is_timeout())
    };
    tokio::time::timeout(CONNECT_TIMEOUT * 2, probe)
        .await
        .ok()
        .flatten()
}

/// A Redis Cluster client for these seeds, with the configured TLS files when there are any.
/// The subscriber builds its own (with a push sender) through this too.
pub fn cluster_builder(seeds: &[String], tls: Option<&RedisTls>) -> ClusterClientBuilder {
    // redis-rs waits at least 1.28 s before retrying a request after a connection error and
    // holds every request of the connection back while it recovers: with a master down, that
    // is longer than a lease may go unrenewed. Retry sooner, and give up on a dead node's
    // connection attempt sooner.
    let builder = ClusterClientBuilder::new(seeds.to_vec())
        .min_retry_wait(CLUSTER_RETRY_MIN_MS)
        .max_retry_wait(CLUSTER_RETRY_MAX_MS)
        .connection_timeout(CONNECT_TIMEOUT);
    match tls {
        Some(tls) => builder.certs(tls.certificates()),
        None => builder,
    }
}

/// Shortest wait before the cluster client retries a failed request (ms).
const CLUSTER_RETRY_MIN_MS: u64 = 20;
/// Longest wait between the cluster client's retries of one request (ms).
const CLUSTER_RETRY_MAX_MS: u64 = 500;
/// How long a connection attempt to one Redis node may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// How the single-server connection manager reconnects: first retry soon, then at most this
/// far apart, so that after an outage it is back within a quarter second of Redis (its default
/// doubles from 100 ms and may wait 3 s: publishes wait on the reconnection).
const RECONNECT_MIN: std::time::Duration = std::time::Duration::from_millis(20);
const RECONNECT_MAX: std::time::Duration = std::time::Duration::from_millis(250);
/// Attempts before a reconnection gives up (≈ 5 s); the next command starts another.
const RECONNECT_ATTEMPTS: usize = 24;

/// Connections in a pool (each is multiplexed: a few serve a node's lease, reaping and
/// limiter calls).
const POOL_SIZE: usize = 16;

/// Opens and checks pooled Redis Cluster connections.
pub struct ClusterManager {
    client: ClusterClient,
}

impl deadpool::managed::Manager for ClusterManager {
    type Type = ClusterConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<ClusterConnection, RedisError> {
        self.client.get_async_connection().await
    }

    /// Nothing to check: a cluster connection repairs its node connections by itself, and a
    /// `PING` here would go to some node — a dead master among them would make every
    /// checkout wait for it, the lease round's included. Callers discard a connection whose
    /// command failed ([`PooledConn::discard`]).
    async fn recycle(
        &self,
        _: &mut ClusterConnection,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<RedisError> {
        Ok(())
    }
}

/// A deadpool pool for either kind of Redis.
#[derive(Clone)]
pub enum RedisPool {
    Single(deadpool_redis::Pool),
    Cluster(deadpool::managed::Pool<ClusterManager>),
}

impl RedisPool {
    pub async fn get(&self) -> Result<PooledConn, PoolError> {
        match self {
            RedisPool::Single(p) => p
                .get()
                .await
                .map(PooledConn::Single)
                .map_err(|e| PoolError::Get(e.to_string())),
            RedisPool::Cluster(p) => p
                .get()
                .await
                .map(PooledConn::Cluster)
                .map_err(|e| PoolError::Get(e.to_string())),
        }
    }
}

/// A connection borrowed from a [`RedisPool`].
pub enum PooledConn {
    Single(deadpool_redis::Connection),
    Cluster(deadpool::managed::Object<ClusterManager>),
}

impl PooledConn {
    /// Takes a connection that failed out of the pool instead of returning it: the pool does
    /// not check connections on checkout (see [`ClusterManager`]), so one left broken would
    /// be handed out again and again.
    pub fn discard(self) {
        match self {
            PooledConn::Single(c) => drop(deadpool_redis::Connection::take(c)),
            PooledConn::Cluster(c) => drop(deadpool::managed::Object::take(c)),
        }
    }

    /// Runs `(key, command)` pairs, replies in order: one pipeline on one server; on a cluster
    /// one per slot (see [`slot_groups_on_cluster`]), and a failed slot group fails only its
    /// own commands: their replies are `None`, and the first failure comes beside. Each group
    /// gives up at `deadline` by itself, so one that hangs (a dead master) does not take the
    /// others' replies with it. Lease renewals use it so that one dead master stops only the
    /// shards whose leases it holds.
    pub async fn query_each_by_slot<T: FromRedisValue>(
        &mut self,
        cmds: Vec<(String, Cmd)>,
        deadline: tokio::time::Instant,
    ) -> (Vec<Option<T>>, Option<RedisError>) {
        let n = cmds.len();
        let groups = match self {
            PooledConn::Single(c) => {
                let replies = bounded(deadline, pipeline(cmds).query_async(&mut **c)).await;
                vec![((0..n).collect(), replies)]
            }
            PooledConn::Cluster(c) => slot_groups_on_cluster(c, cmds, deadline).await,
        };
        let mut ordered: Vec<Option<T>> = (0..n).map(|_| None).collect();
        let mut first_error = None;
        for (at, group) in groups {
            match group {
                Ok(replies) => {
                    for (i, reply) in at.into_iter().zip(replies) {
                        ordered[i] = Some(reply);
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        (ordered, first_error)
    }
}

delegate_connection_like!(PooledConn);

/// One pipeline on one server: the keys only matter on a cluster.
fn pipeline(cmds: Vec<(String, Cmd)>) -> Pipeline {
    let mut pipe = redis::pipe();
    for (_, cmd) in cmds {
        pipe.add_command(cmd);
    }
    pipe
}

/// A pipeline may not span slots on a cluster: each slot's commands go as one pipeline (so
/// commands on one key run in the order given), all slots at once, each given up at
/// `deadline`; every group's replies (or its error) with the positions of its commands in
/// `cmds`.
async fn slot_groups_on_cluster<T: FromRedisValue>(
    conn: &ClusterConnection,
    cmds: Vec<(String, Cmd)>,
    deadline: tokio::time::Instant,
) -> Vec<(Vec<usize>, RedisResult<Vec<T>>)> {
    let mut groups: HashMap<Slot, (Vec<usize>, Pipeline)> = HashMap::new();
    for (i, (key, cmd)) in cmds.into_iter().enumerate() {
        let (at, pipe) = groups
            .entry(Slot::for_key(key.as_bytes()))
            .or_insert_with(|| (Vec::new(), redis::pipe()));
        at.push(i);
        pipe.add_command(cmd);
    }
    join_all(groups.into_values().map(|(at, pipe)| {
        let mut conn = conn.clone();
        async move {
            (
                at,
                bounded(deadline, pipe.query_async::<Vec<T>>(&mut conn)).await,
            )
        }
    }))
    .await
}

/// A Redis call that gives up at `deadline` with a timeout error.
async fn bounded<T>(
    deadline: tokio::time::Instant,
    call: impl std::future::Future<Output = RedisResult<T>>,
) -> RedisResult<T> {
    tokio::time::timeout_at(deadline, call)
        .await
        .unwrap_or_else(|_| {
            Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no reply before the deadline",
            )))
        })
}

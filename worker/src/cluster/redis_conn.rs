//! How a node reaches Redis: one server, or a Redis Cluster through its seed nodes (DESIGN §1:
//! production scale-out). The difference stays in this file. On a Redis Cluster every
//! channel is sharded (`SPUBLISH`/`SSUBSCRIBE`: a message travels only inside the shard that
//! owns the channel's slot, so pub/sub traffic spreads over the nodes instead of being copied
//! to all of them) and a pipeline may touch one slot only: commands sent together are
//! grouped by slot, one pipeline each, so the order of messages on one channel holds.

use std::collections::HashMap;

use futures_util::future::join_all;
use lockstep_shared::config::ClusterConfig;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{Cmd, FromRedisValue, Pipeline, RedisError, RedisFuture, RedisResult, Value};

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

/// Where the cluster's Redis is.
#[derive(Clone)]
pub enum RedisTarget {
    /// One server (`cluster.redis_url`).
    Single(redis::Client),
    /// A Redis Cluster (`cluster.redis_cluster_nodes`).
    Cluster {
        seeds: Vec<String>,
        client: Box<ClusterClient>,
    },
}

impl RedisTarget {
    /// Reads `cluster.redis_cluster_nodes`, else `cluster.redis_url`; nothing connects yet.
    pub fn from_config(cc: &ClusterConfig) -> RedisResult<RedisTarget> {
        if cc.redis_cluster_nodes.is_empty() {
            return Ok(RedisTarget::Single(redis::Client::open(
                cc.redis_url.as_str(),
            )?));
        }
        let seeds = cc.redis_cluster_nodes.clone();
        let client = Box::new(ClusterClient::new(seeds.clone())?);
        Ok(RedisTarget::Cluster { seeds, client })
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
    pub async fn connect(&self) -> RedisResult<RedisConn> {
        Ok(match self {
            RedisTarget::Single(client) => {
                RedisConn::Single(ConnectionManager::new(client.clone()).await?)
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
                deadpool_redis::Config::from_connection_info(client.get_connection_info().clone())
                    .create_pool(Some(deadpool_redis::Runtime::Tokio1))
                    .map(RedisPool::Single)
                    .map_err(|e| PoolError::Create(e.to_string()))
            }
            RedisTarget::Cluster { seeds, .. } => {
                deadpool_redis::cluster::Config::from_urls(seeds.clone())
                    .create_pool(Some(deadpool_redis::Runtime::Tokio1))
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
            RedisTarget::Cluster { seeds, .. } => seeds
                .iter()
                .filter_map(|s| redis::Client::open(s.as_str()).ok())
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

impl RedisConn {
    /// Runs `(key, command)` pairs, replies in order (see [`by_slot_on_cluster`]).
    pub async fn query_by_slot<T: FromRedisValue>(
        &mut self,
        cmds: Vec<(String, Cmd)>,
    ) -> RedisResult<Vec<T>> {
        match self {
            RedisConn::Single(c) => pipeline(cmds).query_async(c).await,
            RedisConn::Cluster(c) => by_slot_on_cluster(c, cmds).await,
        }
    }
}

delegate_connection_like!(RedisConn);

/// A deadpool pool for either kind of Redis.
#[derive(Clone)]
pub enum RedisPool {
    Single(deadpool_redis::Pool),
    Cluster(deadpool_redis::cluster::Pool),
}

impl RedisPool {
    pub async fn get(&self) -> Result<PooledConn, PoolError> {
        match self {
            RedisPool::Single(p) => p.get().await.map(PooledConn::Single),
            RedisPool::Cluster(p) => p.get().await.map(PooledConn::Cluster),
        }
        .map_err(|e| PoolError::Get(e.to_string()))
    }
}

/// A connection borrowed from a [`RedisPool`].
pub enum PooledConn {
    Single(deadpool_redis::Connection),
    Cluster(deadpool_redis::cluster::Connection),
}

impl PooledConn {
    /// Runs `(key, command)` pairs, replies in order (see [`by_slot_on_cluster`]).
    pub async fn query_by_slot<T: FromRedisValue>(
        &mut self,
        cmds: Vec<(String, Cmd)>,
    ) -> RedisResult<Vec<T>> {
        match self {
            PooledConn::Single(c) => pipeline(cmds).query_async(&mut **c).await,
            PooledConn::Cluster(c) => by_slot_on_cluster(c, cmds).await,
        }
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

/// A pipeline may not span slots on a cluster: commands are grouped by their key's slot, each
/// group one pipeline (so commands on one key or channel run in the order given), the groups
/// all in flight at once. The first error fails the whole, as a pipeline's would.
async fn by_slot_on_cluster<T: FromRedisValue>(
    conn: &ClusterConnection,
    cmds: Vec<(String, Cmd)>,
) -> RedisResult<Vec<T>> {
    let n = cmds.len();
    let mut groups: HashMap<Slot, (Vec<usize>, Pipeline)> = HashMap::new();
    for (i, (key, cmd)) in cmds.into_iter().enumerate() {
        let (at, pipe) = groups
            .entry(Slot::for_key(key.as_bytes()))
            .or_insert_with(|| (Vec::new(), redis::pipe()));
        at.push(i);
        pipe.add_command(cmd);
    }
    let replies = join_all(groups.into_values().map(|(at, pipe)| {
        let mut conn = conn.clone();
        async move { (at, pipe.query_async::<Vec<T>>(&mut conn).await) }
    }))
    .await;
    let mut ordered: Vec<Option<T>> = (0..n).map(|_| None).collect();
    for (at, group) in replies {
        for (i, reply) in at.into_iter().zip(group?) {
            ordered[i] = Some(reply);
        }
    }
    ordered
        .into_iter()
        .map(|r| r.ok_or_else(|| RedisError::from(std::io::Error::other("a reply is missing"))))
        .collect()
}

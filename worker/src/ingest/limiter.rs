//! The Twitch JOIN rate limiter: at most `join_limit` JOINs per `join_window_ms`, counted
//! across every worker of a cluster (a sliding-window log in one Redis sorted set, updated
//! by a Lua script so check-and-add is atomic and the clock is Redis's), or in-process in
//! embedded mode. A restart of every worker therefore never trips Twitch's own limit.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use lockstep_shared::cluster::TWITCH_JOINS_KEY;
use lockstep_shared::metrics as names;
use tokio_util::sync::CancellationToken;

use crate::cluster::redis_conn::RedisPool;

/// Takes JOIN slots.
#[async_trait]
pub trait JoinLimiter: Send + Sync + 'static {
    /// Takes a slot now (`Ok(0)`) or says how many ms until one frees up.
    async fn try_acquire(&self) -> Result<u64, String>;
}

/// Waits for a slot; `false` if cancelled first. Limiter errors wait and retry: a JOIN
/// never goes out unmetered.
pub async fn acquire(limiter: &dyn JoinLimiter, cancel: &CancellationToken) -> bool {
    let started = Instant::now();
    loop {
        let wait = match limiter.try_acquire().await {
            Ok(0) => {
                metrics::histogram!(names::INGEST_JOIN_WAIT)
                    .record(started.elapsed().as_secs_f64());
                return true;
            }
            Ok(ms) => ms,
            Err(e) => {
                tracing::warn!(cause = %e, "JOIN limiter unavailable; waiting");
                1_000
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return false,
            _ = tokio::time::sleep(Duration::from_millis(wait.min(60_000))) => {}
        }
    }
}

/// Embedded mode: the same sliding window, in memory.
pub struct LocalJoinLimiter {
    limit: usize,
    window_ms: u64,
    log: Mutex<VecDeque<Instant>>,
}

impl LocalJoinLimiter {
    pub fn new(limit: u32, window_ms: u64) -> LocalJoinLimiter {
        LocalJoinLimiter {
            limit: limit.max(1) as usize,
            window_ms,
            log: Mutex::new(VecDeque::new()),
        }
    }
}

#[async_trait]
impl JoinLimiter for LocalJoinLimiter {
    async fn try_acquire(&self) -> Result<u64, String> {
        let now = Instant::now();
        let window = Duration::from_millis(self.window_ms);
        let mut log = self.log.lock().map_err(|_| "limiter poisoned".to_owned())?;
        while log
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            log.pop_front();
        }
        if log.len() < self.limit {
            log.push_back(now);
            return Ok(0);
        }
        let oldest = log.front().copied().unwrap_or(now);
        let free_at = oldest + window;
        Ok((free_at.saturating_duration_since(now).as_millis() as u64).max(1))
    }
}

/// Cluster mode: one sorted set in Redis shared by every worker.
pub struct RedisJoinLimiter {
    pool: RedisPool,
    limit: u32,
    window_ms: u64,
    key: String,
    member_prefix: String,
    counter: AtomicU64,
    script: redis::Script,
}

const SCRIPT: &str = r"
local key, limit, window, member = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
if redis.call('ZCARD', key) < limit then
  redis.call('ZADD', key, now, member)
  redis.call('PEXPIRE', key, window)
  return 0
end
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
local wait = tonumber(oldest[2]) + window - now
if wait < 1 then wait = 1 end
return wait
";

impl RedisJoinLimiter {
    /// `node` makes members unique across workers; `key` defaults to the cluster key.
    pub fn new(
        pool: RedisPool,
        node: &str,
        limit: u32,
        window_ms: u64,
        key: Option<&str>,
    ) -> RedisJoinLimiter {
        RedisJoinLimiter {
            pool,
            limit: limit.max(1),
            window_ms,
            key: key.unwrap_or(TWITCH_JOINS_KEY).to_owned(),
            member_prefix: format!("{node}:{}", rand::random::<u32>()),
            counter: AtomicU64::new(0),
            script: redis::Script::new(SCRIPT),
        }
    }
}

#[async_trait]
impl JoinLimiter for RedisJoinLimiter {
    async fn try_acquire(&self) -> Result<u64, String> {
        let mut conn = self.pool.get().await.map_err(|e| e.to_string())?;
        let member = format!(
            "{}:{}",
            self.member_prefix,
            self.counter.fetch_add(1, Ordering::Relaxed)
        );
        self.script
            .key(&self.key)
            .arg(self.limit)
            .arg(self.window_ms)
            .arg(member)
            .invoke_async::<u64>(&mut conn)
            .await
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_window_admits_limit_then_waits() {
        let l = LocalJoinLimiter::new(3, 200);
        for _ in 0..3 {
            assert_eq!(l.try_acquire().await, Ok(0));
        }
        let wait = l.try_acquire().await.unwrap_or(0);
        assert!((1..=200).contains(&wait), "wait {wait}");
        tokio::time::sleep(Duration::from_millis(wait + 5)).await;
        assert_eq!(
            l.try_acquire().await,
            Ok(0),
            "a slot freed after the window"
        );
    }
}

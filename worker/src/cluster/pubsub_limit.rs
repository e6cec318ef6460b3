//! Redis disconnects a subscriber whose unread messages pass `client-output-buffer-limit
//! pubsub` (default: 32 MB at once, or 8 MB for 60 s). A gateway's channel carries every
//! join's snapshot — up to ≈ 350 KB in a 5,000-member room — so a join storm in a big room
//! passes the default while the gateway is busy: Redis drops the subscription, and the gateway
//! must close every socket with 1012 because what was published meanwhile is lost (measured:
//! 2,036 of 5,000 members closed in one join storm on the local cluster). Nodes read the
//! limit at start, export it, and warn with the fix; they never change a shared server's
//! configuration themselves.

use std::time::Duration;

use lockstep_shared::metrics as names;

use super::redis_conn::RedisTarget;

/// Recommended hard limit (the whole unread backlog).
pub const RECOMMENDED_HARD: u64 = 256 << 20;
/// Recommended soft limit (a backlog held for the soft period).
pub const RECOMMENDED_SOFT: u64 = 64 << 20;
/// What to set, in Redis' own syntax.
pub const RECOMMENDED: &str = "pubsub 256mb 64mb 60";

/// The `pubsub` class of `client-output-buffer-limit`; 0 means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PubsubLimit {
    pub hard: u64,
    pub soft: u64,
    pub soft_seconds: u64,
}

impl PubsubLimit {
    /// From the setting's value, e.g. `normal 0 0 0 slave 268435456 67108864 60 pubsub
    /// 33554432 8388608 60` (sizes may also carry units: `32mb`, `8m`).
    pub fn parse(value: &str) -> Option<PubsubLimit> {
        let words: Vec<&str> = value.split_whitespace().collect();
        let at = words
            .iter()
            .position(|w| w.eq_ignore_ascii_case("pubsub"))?;
        let field = |i: usize| words.get(at + i).and_then(|w| size(w));
        Some(PubsubLimit {
            hard: field(1)?,
            soft: field(2)?,
            soft_seconds: field(3)?,
        })
    }

    /// Whether a big room's join storm can pass it.
    pub fn too_low(&self) -> bool {
        (self.hard != 0 && self.hard < RECOMMENDED_HARD)
            || (self.soft != 0 && self.soft < RECOMMENDED_SOFT)
    }
}

/// A Redis size: bytes, or with `k`/`m`/`g` (×1000) or `kb`/`mb`/`gb` (×1024) as Redis reads them.
fn size(word: &str) -> Option<u64> {
    let lower = word.to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let n: u64 = digits.parse().ok()?;
    let unit: u64 = match &lower[digits.len()..] {
        "" | "b" => 1,
        "k" => 1_000,
        "kb" => 1 << 10,
        "m" => 1_000_000,
        "mb" => 1 << 20,
        "g" => 1_000_000_000,
        "gb" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(unit)
}

/// Reads every server's limit (on a Redis Cluster: each seed node's), exports the tightest
/// as a gauge (0: no limit) and warns once, naming every server where it is too low. A server
/// that refuses `CONFIG` (managed Redis often does) is noted at debug level: the README says
/// what to set.
pub async fn check(target: &RedisTarget, node: &str) -> Option<PubsubLimit> {
    let mut tightest: Option<PubsubLimit> = None;
    let mut too_low = Vec::new();
    let servers = target.servers();
    for server in &servers {
        let Some(limit) = read(server, node).await else {
            continue;
        };
        if limit.too_low() {
            too_low.push(server.get_connection_info().addr().to_string());
        }
        let hard = |l: &PubsubLimit| if l.hard == 0 { u64::MAX } else { l.hard };
        if tightest.is_none_or(|t| hard(&limit) < hard(&t)) {
            tightest = Some(limit);
        }
    }
    if let Some(limit) = tightest {
        metrics::gauge!(names::BUS_PUBSUB_LIMIT).set(limit.hard as f64);
        if !too_low.is_empty() {
            tracing::warn!(
                node,
                servers = %too_low.join(", "),
                hard_bytes = limit.hard,
                soft_bytes = limit.soft,
                "Redis will drop this node's pub/sub subscription when more than {} bytes wait \
                 for it (client-output-buffer-limit pubsub) on {} of {} servers: a join storm in \
                 a big room can pass that, and a gateway then closes every socket with 1012. \
                 Raise it: CONFIG SET client-output-buffer-limit \"{RECOMMENDED}\" (and in \
                 redis.conf)",
                if limit.hard == 0 { limit.soft } else { limit.hard },
                too_low.len(),
                servers.len(),
            );
        }
    }
    tightest
}

/// One server's setting, or `None` if it cannot be read within 2 s.
async fn read(server: &redis::Client, node: &str) -> Option<PubsubLimit> {
    let read = async {
        let mut conn = server.get_multiplexed_async_connection().await.ok()?;
        let reply: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("client-output-buffer-limit")
            .query_async(&mut conn)
            .await
            .ok()?;
        reply.get(1).and_then(|v| PubsubLimit::parse(v))
    };
    match tokio::time::timeout(Duration::from_secs(2), read).await {
        Ok(Some(limit)) => Some(limit),
        _ => {
            tracing::debug!(node, "could not read Redis client-output-buffer-limit");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pubsub_class_is_read_from_the_whole_setting() {
        let default = "normal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60";
        let limit = PubsubLimit::parse(default).unwrap_or_else(|| panic!("{default}"));
        assert_eq!(
            limit,
            PubsubLimit {
                hard: 32 << 20,
                soft: 8 << 20,
                soft_seconds: 60
            }
        );
        assert!(limit.too_low());
        let raised = PubsubLimit::parse("pubsub 256mb 64mb 60").unwrap_or_else(|| panic!());
        assert_eq!(
            (raised.hard, raised.soft),
            (RECOMMENDED_HARD, RECOMMENDED_SOFT)
        );
        assert!(!raised.too_low());
        let unlimited = PubsubLimit::parse("normal 0 0 0 pubsub 0 0 0").unwrap_or_else(|| panic!());
        assert!(!unlimited.too_low());
        assert_eq!(PubsubLimit::parse("normal 0 0 0"), None);
        assert_eq!(PubsubLimit::parse("pubsub 1x 2 3"), None);
        assert_eq!(size("1k"), Some(1_000));
        assert_eq!(size("1KB"), Some(1_024));
        assert_eq!(size("99999999999999999999gb"), None);
    }
}

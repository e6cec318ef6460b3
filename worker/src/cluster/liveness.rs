//! The liveness sets (`ls:workers`, `ls:gateways`) are scored and read by Redis' clock, not the
//! nodes': a node whose clock is off by more than a timeout would otherwise look dead to the
//! others (its heartbeats old on arrival) or see the others as dead, and have its members
//! reaped or its shards contested while it runs fine. Each set lives on one Redis node, so one
//! clock judges all of its entries. [`LiveView`] says what a worker may conclude from the set it
//! reads.

use lockstep_shared::config::ClusterConfig;
use redis::Cmd;

/// Redis' time in ms, for the scripts below.
const NOW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function ms(x) return string.format('%.0f', x) end
";

/// Adds ARGV[1] at Redis' time.
const BEAT: &str = r"
redis.call('ZADD', KEYS[1], ms(now), ARGV[1])
return 1";

/// Adds ARGV[1] at Redis' time, forgets entries older than 10 × ARGV[2] ms, returns whether
/// ARGV[1] was new and the members heard from within ARGV[2] ms.
const BEAT_AND_READ: &str = r"
local within = tonumber(ARGV[2])
local added = redis.call('ZADD', KEYS[1], ms(now), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms(now - 10 * within))
return {added, redis.call('ZRANGEBYSCORE', KEYS[1], ms(now - within), '+inf')}";

/// The members not heard from for ARGV[1] ms.
const SILENT: &str = r"
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ms(now - tonumber(ARGV[1])))";

/// Forgets the members not heard from for ARGV[1] ms.
const FORGET: &str = r"
return redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms(now - tonumber(ARGV[1])))";

fn script(body: &str, key: &str) -> Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(format!("{NOW}{body}")).arg(1).arg(key);
    cmd
}

/// A heartbeat of `member` into `key`.
pub fn beat(key: &str, member: impl redis::ToRedisArgs) -> Cmd {
    let mut cmd = script(BEAT, key);
    cmd.arg(member);
    cmd
}

/// A heartbeat that also reads the set: replies `(added, live)`, `added` 1 when `member` was
/// not in it, `live` the members heard from within `within_ms`.
pub fn beat_and_read(key: &str, member: &str, within_ms: u64) -> Cmd {
    let mut cmd = script(BEAT_AND_READ, key);
    cmd.arg(member).arg(within_ms);
    cmd
}

/// The members of `key` silent for `for_ms`.
pub fn silent(key: &str, for_ms: u64) -> Cmd {
    let mut cmd = script(SILENT, key);
    cmd.arg(for_ms);
    cmd
}

/// Removes the members of `key` silent for `for_ms`.
pub fn forget(key: &str, for_ms: u64) -> Cmd {
    let mut cmd = script(FORGET, key);
    cmd.arg(for_ms);
    cmd
}

/// Whether the live set may be trusted to move shards.
///
/// Redis can lose the set (a restart, a failover to a replica that had not seen the last
/// writes). Each live worker writes itself back on its next heartbeat, but until all have, the
/// set names only some of them: a worker acting on it would take the shards of those not back
/// yet and hand them back a round later, a second interruption for those rooms' clients. So
/// after a loss nothing moves for a grace; what each worker holds stays held (renewals set
/// lost leases again), and a shard nobody holds waits for the grace to end.
#[derive(Debug, Default)]
pub struct LiveView {
    /// A heartbeat was answered before: our entry being new again means the set was lost.
    heard: bool,
    /// Until when (ms) no shard moves.
    settles_at: u64,
}

impl LiveView {
    /// Takes one answered heartbeat (`added`: our entry was not in the set) and says whether
    /// shards must stay where they are this round.
    pub fn settling(&mut self, added: bool, now: u64, grace_ms: u64) -> bool {
        if added && self.heard {
            self.settles_at = now.saturating_add(grace_ms);
            tracing::warn!(
                grace_ms,
                "Redis lost the live worker set; no shard moves until every live worker is back in it"
            );
        }
        self.heard = true;
        now < self.settles_at
    }
}

/// How long after a loss every live worker has surely written itself back: two heartbeats,
/// or half a lease if that is longer (a worker's round can be slow while Redis comes back),
/// never more than a lease (after which a worker not back is dead by definition).
pub fn grace_ms(cfg: &ClusterConfig) -> u64 {
    (cfg.heartbeat_ms * 2)
        .max(cfg.lease_ttl_ms / 2)
        .min(cfg.lease_ttl_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_heartbeat_of_a_worker_is_no_loss() {
        let mut view = LiveView::default();
        assert!(!view.settling(true, 1_000, 500));
        assert!(!view.settling(false, 1_250, 500));
    }

    #[test]
    fn a_lost_set_holds_shards_still_for_the_grace() {
        let mut view = LiveView::default();
        assert!(!view.settling(true, 1_000, 500));
        assert!(view.settling(true, 2_000, 500));
        assert!(view.settling(false, 2_250, 500));
        assert!(!view.settling(false, 2_500, 500));
        // Lost again: a new grace from then.
        assert!(view.settling(true, 9_000, 500));
        assert!(!view.settling(false, 9_500, 500));
    }

    #[test]
    fn the_grace_is_two_beats_or_half_a_lease_within_a_lease() {
        let cfg = |heartbeat_ms, lease_ttl_ms| ClusterConfig {
            heartbeat_ms,
            lease_ttl_ms,
            ..ClusterConfig::default()
        };
        assert_eq!(grace_ms(&cfg(500, 3_000)), 1_500);
        assert_eq!(grace_ms(&cfg(1_000, 3_000)), 2_000);
        assert_eq!(grace_ms(&cfg(250, 1_500)), 750);
        assert_eq!(grace_ms(&cfg(1_000, 1_500)), 1_500);
    }
}

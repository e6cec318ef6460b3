//! How far this node's clock is from Redis' clock, measured with every heartbeat and exported
//! as `lockstep_bus_clock_offset_seconds`. A cluster compares timestamps made on different
//! hosts: a client syncs with its gateway's clock (`time.sync`) while the room's worker
//! schedules playback (`at`) by its own (liveness does not: see `liveness`). Hosts must keep
//! their clocks in sync (NTP, chrony); when they do not, on-call sees it (alert
//! `LockstepClockSkew`: the spread of the nodes' offsets) before users see drift.

use lockstep_shared::metrics as names;

use crate::clock::now_us;

/// This clock minus Redis' in seconds, from a `TIME` answer (seconds, microseconds) read
/// between `sent_us` and `received_us`: Redis read its clock somewhere in that round trip,
/// taken as its middle (the error is at most half the round trip).
pub fn offset_seconds(sent_us: u64, received_us: u64, redis_time: (u64, u64)) -> f64 {
    let redis_us = redis_time.0 as f64 * 1e6 + redis_time.1 as f64;
    let local_us = (sent_us as f64 + received_us as f64) / 2.0;
    (local_us - redis_us) / 1e6
}

/// Records an offset measurement.
pub fn record(sent_us: u64, received_us: u64, redis_time: (u64, u64)) {
    metrics::gauge!(names::BUS_CLOCK_OFFSET).set(offset_seconds(sent_us, received_us, redis_time));
}

/// Reads Redis' clock on `conn` and records the offset; errors are the caller's heartbeat's.
pub async fn measure<C: redis::aio::ConnectionLike>(conn: &mut C) -> redis::RedisResult<()> {
    let sent = now_us();
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await?;
    record(sent, now_us(), (secs, micros));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_is_taken_at_the_middle_of_the_round_trip() {
        // Redis read 1,000.000500 s; we sent at 1,000.000 s and heard back 1 ms later: even.
        let even = offset_seconds(1_000_000_000, 1_000_001_000, (1_000, 500));
        assert!(even.abs() < 1e-9, "{even}");
        // Our clock 250 ms ahead of Redis'.
        let ahead = offset_seconds(1_000_250_000, 1_000_251_000, (1_000, 500));
        assert!((ahead - 0.25).abs() < 1e-9, "{ahead}");
        // And 2 s behind.
        let behind = offset_seconds(998_000_000, 998_001_000, (1_000, 500));
        assert!((behind + 2.0).abs() < 1e-9, "{behind}");
    }
}

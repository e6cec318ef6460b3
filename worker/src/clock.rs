//! The one place the worker reads wall-clock time; the engine only ever receives it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Server time in Unix milliseconds (nodes are assumed NTP-synced).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Server time in Unix microseconds, for measuring against another clock (Redis').
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

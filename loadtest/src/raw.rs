//! A run's raw figures, kept in its JSON report so that the reports of several generator
//! machines driving one cluster together can be merged into one (`loadtest merge`): one
//! machine's generator saturates long before a cluster does. Percentiles cannot be averaged;
//! histograms can be added. The HDR histograms are in the HdrHistogram interchange format
//! (V2, deflate, base64), which other HdrHistogram tools read too.

use std::io::Cursor;

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::buckets::LogBuckets;

/// The mergeable part of a report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Raw {
    /// The measured window, Unix ms: merged runs should share it (`--start-at`).
    pub window_ms: (u64, u64),
    /// Intended send → received, µs.
    pub latency: String,
    pub ack: String,
    pub connect: String,
    pub send_lag: String,
    pub reconnect: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<String>,
    /// Storm: drop → back in the room, µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storm_back: Option<String>,
    /// The timeline's log buckets, per second of the window.
    #[serde(default)]
    pub timeline: Vec<RawSecond>,
}

/// One second of the timeline: its non-empty log buckets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawSecond {
    /// Seconds from the window's start.
    pub t: f64,
    /// (bucket index, count) of the buckets that are not empty.
    pub buckets: Vec<(u16, u32)>,
    pub max_us: u64,
}

impl RawSecond {
    /// The compact form of one second's buckets.
    pub fn of(t: f64, b: &LogBuckets) -> RawSecond {
        RawSecond {
            t,
            buckets: b.nonzero(),
            max_us: b.max_us(),
        }
    }

    /// The buckets back, to merge and to read percentiles from.
    pub fn buckets(&self) -> LogBuckets {
        LogBuckets::from_parts(&self.buckets, self.max_us)
    }
}

/// A histogram as base64 text of its compressed V2 encoding.
pub fn encode(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    match V2DeflateSerializer::new().serialize(h, &mut bytes) {
        Ok(_) => base64::engine::general_purpose::STANDARD.encode(bytes),
        // Only a histogram too large to encode fails; the report then has no raw form of it.
        Err(_) => String::new(),
    }
}

/// The histogram `encode` wrote; an empty text is an empty histogram.
pub fn decode(text: &str) -> anyhow::Result<Histogram<u64>> {
    if text.is_empty() {
        return Ok(crate::figures::histogram());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| anyhow::anyhow!("histogram is not base64: {e}"))?;
    Deserializer::new()
        .deserialize(&mut Cursor::new(bytes))
        .map_err(|e| anyhow::anyhow!("histogram does not decode: {e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_round_trip() {
        let mut h = crate::figures::histogram();
        for us in [1u64, 7, 950, 1_000, 48_000, 3_600_000_000] {
            let _ = h.record(us);
        }
        let back = decode(&encode(&h)).unwrap_or_else(|_| crate::figures::histogram());
        assert_eq!(back.len(), h.len());
        assert_eq!(back.max(), h.max());
        for q in [0.5, 0.9, 0.99] {
            assert_eq!(back.value_at_quantile(q), h.value_at_quantile(q));
        }
        assert_eq!(decode("").map(|h| h.len()).ok(), Some(0));
        assert!(decode("not base64!").is_err());
        assert!(decode("aGVsbG8=").is_err(), "base64 that is no histogram");
    }

    #[test]
    fn timeline_seconds_round_trip() {
        let mut b = LogBuckets::default();
        for us in [3u64, 3, 900, 25_000] {
            b.record(us);
        }
        let s = RawSecond::of(4.0, &b);
        assert_eq!(s.buckets.len(), 3);
        let back = s.buckets();
        assert_eq!(back.count(), 4);
        assert_eq!(back.max_ms(), b.max_ms());
        assert_eq!(back.quantile_ms(0.5), b.quantile_ms(0.5));
    }
}

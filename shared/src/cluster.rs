//! What cluster nodes say to each other over Redis: channel and key names, and the
//! envelopes on the shard and gateway channels. JSON on the wire, so an operator can
//! `redis-cli SUBSCRIBE` and read it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::bus::{Query, ToGateway, ToWorker};
use crate::protocol::error::Refusal;

/// Commands and queries for the rooms of one shard; its owner subscribes.
pub fn shard_channel(shard: u32) -> String {
    format!("ls:shard:{shard}")
}

/// Replies, room events and answers for one gateway.
pub fn gateway_channel(gateway: u64) -> String {
    format!("ls:gw:{gateway}")
}

/// Messages for every gateway (room resets after an owner change).
pub const ALL_GATEWAYS_CHANNEL: &str = "ls:gw:all";
/// Live workers: member = worker id, score = last heartbeat (ms).
pub const WORKERS_KEY: &str = "ls:workers";
/// Live gateways: member = gateway id, score = last heartbeat (ms).
pub const GATEWAYS_KEY: &str = "ls:gateways";
/// Sorted set of recent Twitch JOINs across the cluster (the shared JOIN rate limiter).
pub const TWITCH_JOINS_KEY: &str = "ls:ingest:twitch:joins";

/// The lease on a shard: value `"<worker>:<epoch>"`, set with NX and a TTL. The `{shard:N}`
/// hash tag keeps it in one Redis Cluster slot with [`epoch_key`]: the script that takes a
/// lease touches both.
pub fn lease_key(shard: u32) -> String {
    format!("ls:{{shard:{shard}}}:lease")
}

/// The shard's fencing epoch counter (INCR on every acquisition).
pub fn epoch_key(shard: u32) -> String {
    format!("ls:{{shard:{shard}}}:epoch")
}

/// On a shard channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToShard {
    Gateway(ToWorker),
    Query {
        req: u64,
        gateway: u64,
        room: String,
        query: Query,
    },
}

/// On a gateway channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToGatewayWire {
    Msg(ToGateway),
    Answer {
        req: u64,
        result: Result<Value, Refusal>,
    },
}

/// Rendezvous (highest random weight) score: the live worker with the highest score for a
/// shard owns it, so a joining or leaving worker moves only its share of shards.
pub fn rendezvous_score(worker: &str, shard: u32) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in worker.as_bytes().iter().chain(shard.to_le_bytes().iter()) {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // Finalizer (splitmix64) so nearby shard numbers spread.
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// The worker that should own `shard` among `live` workers.
pub fn owner_of(live: &[String], shard: u32) -> Option<&str> {
    live.iter()
        .max_by_key(|w| (rendezvous_score(w, shard), w.as_str()))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_moves_only_a_share_of_shards() {
        let two: Vec<String> = vec!["w1".into(), "w2".into()];
        let three: Vec<String> = vec!["w1".into(), "w2".into(), "w3".into()];
        let mut moved = 0;
        let mut to_w3 = 0;
        for shard in 0..1024 {
            let a = owner_of(&two, shard);
            let b = owner_of(&three, shard);
            if a != b {
                moved += 1;
                if b == Some("w3") {
                    to_w3 += 1;
                }
            }
        }
        assert_eq!(moved, to_w3, "shards only move to the new worker");
        assert!((250..450).contains(&moved), "about a third moves: {moved}");
    }

    #[test]
    fn a_shards_lease_and_epoch_share_a_cluster_slot() {
        assert_eq!(lease_key(7), "ls:{shard:7}:lease");
        assert_eq!(epoch_key(7), "ls:{shard:7}:epoch");
        let tag = |k: &str| {
            let open = k.find('{').unwrap_or_default();
            let close = k.find('}').unwrap_or_default();
            k[open + 1..close].to_owned()
        };
        assert_eq!(tag(&lease_key(7)), tag(&epoch_key(7)));
        assert_ne!(tag(&lease_key(7)), tag(&lease_key(8)));
    }

    #[test]
    fn envelopes_round_trip() {
        let msg = ToShard::Query {
            req: 7,
            gateway: 9,
            room: "r".into(),
            query: Query::Snapshot,
        };
        let text = serde_json::to_string(&msg).unwrap_or_default();
        let back: Result<ToShard, _> = serde_json::from_str(&text);
        assert!(matches!(
            back,
            Ok(ToShard::Query {
                req: 7,
                gateway: 9,
                ..
            })
        ));
    }
}

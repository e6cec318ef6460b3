//! Room → shard mapping. Stable across versions and nodes: it decides which worker owns a
//! room, so it is FNV-1a (no per-process seed), never `std`'s randomized hasher.

/// Default number of virtual shards.
pub const DEFAULT_SHARDS: u32 = 1024;

/// The shard that owns `room`.
pub fn shard_of(room: &str, shards: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in room.as_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % u64::from(shards.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_in_range() {
        assert_eq!(shard_of("abc", 1024), shard_of("abc", 1024));
        for code in ["a", "room-1", "zzzzzzzz", ""] {
            assert!(shard_of(code, 1024) < 1024);
        }
        assert_eq!(shard_of("anything", 1), 0);
    }

    #[test]
    fn spreads_rooms() {
        let mut used = std::collections::HashSet::new();
        for i in 0..1000 {
            used.insert(shard_of(&format!("room{i}"), 64));
        }
        assert!(used.len() > 56, "only {} of 64 shards used", used.len());
    }
}

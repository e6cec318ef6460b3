//! Room codes and user ids: their shapes are checked once, at the edge.

/// Longest room code accepted on the wire.
pub const MAX_ROOM_CODE_LEN: usize = 32;

/// Room codes are short, URL-safe and case-sensitive.
pub fn is_valid_room_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= MAX_ROOM_CODE_LEN
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Alphabet for generated codes and ids: no look-alikes (0/o, 1/l/i).
const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";

/// Builds an id of `len` characters from caller-provided random bytes, so this crate
/// needs no RNG and tests can be deterministic.
pub fn id_from_random(random: &[u8]) -> String {
    random
        .iter()
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_valid_room_codes() {
        let code = id_from_random(&[0, 17, 255, 128, 3, 99, 200, 7]);
        assert_eq!(code.len(), 8);
        assert!(is_valid_room_code(&code));
    }

    #[test]
    fn room_code_rules() {
        assert!(is_valid_room_code("abc-DEF_123"));
        assert!(!is_valid_room_code(""));
        assert!(!is_valid_room_code("has space"));
        assert!(!is_valid_room_code(&"a".repeat(33)));
    }
}

//! U+0000 (NUL) never enters Lockstep. Postgres stores neither it in `text` nor `\u0000` in
//! `jsonb`, so one chat message carrying it would fail its whole commit group in a cluster
//! (every room batched with it gets `unavailable` and reloads) while the embedded store took
//! it: the same input must mean the same thing on both. Clients get `bad_request`; text from
//! upstream platforms is scrubbed (NUL becomes U+FFFD) where it is parsed.

use serde_json::Value;

/// What a client is told when a frame or body carries NUL.
pub const NUL_REFUSED: &str = "text must not contain U+0000 (NUL)";

/// What replaces NUL in upstream text.
const REPLACEMENT: &str = "\u{FFFD}";

/// Whether the raw JSON text may hold NUL: a cheap test that spares the walk for nearly every
/// frame (a NUL inside a JSON string can only be written as the escape `\u0000`).
pub fn may_hold_nul(json: &str) -> bool {
    json.contains("\\u0000")
}

/// Whether any string or key in `v` contains NUL.
pub fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Replaces NUL with U+FFFD in every string and key of `v`.
pub fn scrub_nul(v: &mut Value) {
    match v {
        Value::String(s) => scrub_str(s),
        Value::Array(items) => items.iter_mut().for_each(scrub_nul),
        Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                let old = std::mem::take(map);
                for (mut k, v) in old {
                    scrub_str(&mut k);
                    map.insert(k, v);
                }
            }
            map.values_mut().for_each(scrub_nul);
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Replaces NUL with U+FFFD in `s` (no allocation when there is none).
pub fn scrub_str(s: &mut String) {
    if s.contains('\0') {
        *s = s.replace('\0', REPLACEMENT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn finds_nul_in_strings_and_keys_only() {
        assert!(has_nul(&json!({"a": ["x", "y\u{0}"]})));
        assert!(has_nul(&json!({"k\u{0}": 1})));
        assert!(!has_nul(
            &json!({"a": ["x", 0, null, true, {"b": "\\u0000"}]})
        ));
    }

    #[test]
    fn scrubs_strings_and_keys() {
        let mut v = json!({"a\u{0}": ["x\u{0}y", {"b": "\u{0}"}], "n": 1});
        scrub_nul(&mut v);
        assert_eq!(
            v,
            json!({"a\u{FFFD}": ["x\u{FFFD}y", {"b": "\u{FFFD}"}], "n": 1})
        );
        assert!(!has_nul(&v));
    }

    #[test]
    fn an_escaped_backslash_before_u0000_is_no_nul() {
        let v: Value = serde_json::from_str(r#"{"t": "\\u0000"}"#).unwrap_or(Value::Null);
        assert!(may_hold_nul(r#"{"t": "\\u0000"}"#));
        assert!(!has_nul(&v), "the text is a backslash and 'u0000'");
    }

    proptest! {
        /// The cheap test never misses: whenever the parsed value holds NUL, the raw text
        /// has the escape.
        #[test]
        fn the_cheap_test_never_misses(s in "[a\\x00\\\\u0]{0,12}", k in "[a\\x00\\\\u0]{0,6}") {
            let v = json!({ k: [s] });
            let text = v.to_string();
            if has_nul(&v) {
                prop_assert!(may_hold_nul(&text));
            }
            let mut scrubbed = v.clone();
            scrub_nul(&mut scrubbed);
            prop_assert!(!has_nul(&scrubbed));
        }
    }
}

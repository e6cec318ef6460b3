//! Tokens: HS256 JWTs carrying the user id and display name. Guests get one from
//! `POST /v1/auth/guest`; any service that shares the secret can mint its own.

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 32;

/// The claims Lockstep reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Display name.
    pub name: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
}

/// Signs and verifies tokens with one shared secret.
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing token: send `Authorization: Bearer <jwt>` or `?token=<jwt>`")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
}

impl Auth {
    pub fn new(secret: &[u8]) -> Auth {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.required_spec_claims = ["exp", "sub"].iter().map(|s| s.to_string()).collect();
        Auth {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Mints a token for `claims`.
    pub fn issue(&self, claims: &Claims) -> Result<String, AuthError> {
        encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| AuthError::Invalid(e.to_string()))
    }

    /// Verifies a token and checks the claims' shapes.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let data = decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let c = data.claims;
        if !lockstep_shared::protocol::bounds::is_valid_user_id(&c.sub) {
            return Err(AuthError::Invalid(
                "`sub` must be 1-64 bytes without control characters".into(),
            ));
        }
        if c.name.chars().count() > MAX_NAME_CHARS {
            return Err(AuthError::Invalid("`name` is too long".into()));
        }
        // Another issuer's token may carry anything; a name is shown to everyone and stored.
        if c.name.chars().any(char::is_control) {
            return Err(AuthError::Invalid(
                "`name` must not contain control characters".into(),
            ));
        }
        Ok(c)
    }
}

/// The token in `Authorization: Bearer` or the `token` query parameter.
pub fn token_from(authorization: Option<&str>, query: Option<&str>) -> Option<String> {
    if let Some(h) = authorization {
        if let Some(t) = h
            .strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
        {
            return Some(t.trim().to_owned());
        }
    }
    query.and_then(|q| {
        q.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == "token").then(|| v.to_owned())
        })
    })
}

/// A display name a person typed: trimmed, 1-32 characters, no control characters.
pub fn clean_name(raw: &str) -> Option<String> {
    let name = raw.trim();
    let n = name.chars().count();
    ((1..=MAX_NAME_CHARS).contains(&n) && !name.chars().any(char::is_control))
        .then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "u1".into(),
            name: "Ann".into(),
            exp,
        }
    }

    #[test]
    fn issues_and_verifies() {
        let auth = Auth::new(b"0123456789abcdef0123");
        let token = auth.issue(&claims(u64::MAX / 2)).unwrap_or_default();
        assert_eq!(auth.verify(&token).ok(), Some(claims(u64::MAX / 2)));
    }

    #[test]
    fn rejects_wrong_secret_expired_and_garbage() {
        let auth = Auth::new(b"0123456789abcdef0123");
        let other = Auth::new(b"another-secret-entirely");
        let token = other.issue(&claims(u64::MAX / 2)).unwrap_or_default();
        assert!(auth.verify(&token).is_err());
        let expired = auth.issue(&claims(1)).unwrap_or_default();
        assert!(auth.verify(&expired).is_err());
        assert!(auth.verify("not.a.jwt").is_err());
    }

    #[test]
    fn rejects_control_characters_in_another_issuers_claims() {
        let auth = Auth::new(b"0123456789abcdef0123");
        for (sub, name) in [("u\u{0}1", "Ann"), ("u1", "A\u{0}nn"), ("u1", "A\nnn")] {
            let c = Claims {
                sub: sub.into(),
                name: name.into(),
                exp: u64::MAX / 2,
            };
            let token = auth.issue(&c).unwrap_or_default();
            assert!(auth.verify(&token).is_err(), "{sub:?} {name:?}");
        }
    }

    #[test]
    fn finds_token_in_header_or_query() {
        assert_eq!(token_from(Some("Bearer abc"), None).as_deref(), Some("abc"));
        assert_eq!(
            token_from(None, Some("x=1&token=t2")).as_deref(),
            Some("t2")
        );
        assert_eq!(token_from(Some("Basic zzz"), None), None);
    }

    #[test]
    fn names_are_cleaned() {
        assert_eq!(clean_name("  Ann ").as_deref(), Some("Ann"));
        assert_eq!(clean_name(""), None);
        assert_eq!(clean_name("a\u{7}b"), None);
        assert_eq!(clean_name(&"x".repeat(33)), None);
    }
}

//! Token secrets: `gw_` followed by 43 URL-safe base64 characters, 256 bits from the OS RNG.
//!
//! The prefix makes a leaked secret greppable (secret scanners, logs, repositories). Only the
//! SHA-256 of a secret is ever stored; the secret itself is shown once, in the answer that
//! created it.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};
use std::fmt;

/// Every secret starts with this.
pub const PREFIX: &str = "gw_";

/// Random bytes in a secret (256 bits).
const SECRET_BYTES: usize = 32;

/// A SHA-256 digest.
pub type Sha256Digest = [u8; 32];

/// A freshly generated secret. Its `Debug` is redacted so it cannot leak through logs by accident.
pub struct Secret(String);

impl Secret {
    /// A new secret from the operating system's RNG (`getrandom(2)`).
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; SECRET_BYTES];
        getrandom::fill(&mut bytes)?;
        Ok(Self(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))))
    }

    /// The secret text, to hand to its owner once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Its SHA-256: what is stored and looked up.
    pub fn digest(&self) -> Sha256Digest {
        digest(self.0.as_bytes())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// SHA-256 of presented credential bytes.
pub fn digest(bytes: &[u8]) -> Sha256Digest {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_and_uniqueness() {
        let a = Secret::generate().expect("rng");
        let b = Secret::generate().expect("rng");
        assert_ne!(a.expose(), b.expose());
        let text = a.expose();
        assert!(text.starts_with(PREFIX));
        assert_eq!(text.len(), PREFIX.len() + 43, "{text}");
        assert!(text[PREFIX.len()..].bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'), "{text}");
        let decoded = URL_SAFE_NO_PAD.decode(&text[PREFIX.len()..]).expect("base64");
        assert_eq!(decoded.len(), SECRET_BYTES);
        assert_eq!(a.digest(), digest(text.as_bytes()));
        assert!(!format!("{a:?}").contains(text));
        assert_eq!(serde_json::to_string(&a).expect("json"), format!("\"{text}\""));
    }

    #[test]
    fn known_digest() {
        assert_eq!(hex::encode(digest(b"abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}

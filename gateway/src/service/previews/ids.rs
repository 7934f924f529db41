//! Preview ids (host labels) and preview-token secrets.
//!
//! - A preview's id is derived, not drawn: the first 80 bits of
//!   `SHA-256(key ‖ "preview-id" ‖ workspace ‖ sandbox ‖ preview)` in lower-case base32
//!   (16 characters of `a-z2-7`), where `key` is a 256-bit secret generated once per state
//!   directory. Without the key the id is as unpredictable as 80 random bits; with it, the same
//!   (workspace, sandbox, preview name) always gets the same URL, across delete and re-create
//!   and across restarts (stable URLs). The key never leaves the state directory.
//! - With `prefixUrl` the id is `{prefix}-{workspace}` instead.
//! - Token secrets are 256 random bits from the OS, `gwpt_` + 52 base32 characters.

use sha2::{Digest, Sha256};

/// Bytes of the derivation key.
pub const KEY_LEN: usize = 32;
/// Name of the derivation key in the store (`state.dir/secrets/preview-id.key`).
pub const KEY_SECRET: &str = "preview-id";
/// Prefix of every preview-token secret (helps secret scanners).
pub const TOKEN_PREFIX: &str = "gwpt_";

/// Why randomness failed.
#[derive(Debug, thiserror::Error)]
#[error("the OS random number generator failed: {0}")]
pub struct RandomError(String);

/// `n` random bytes from the OS.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|e| RandomError(e.to_string()))?;
    Ok(buf)
}

/// Lower-case RFC 4648 base32 without padding.
pub fn base32_lower(bytes: &[u8]) -> String {
    let mut text = data_encoding::BASE32_NOPAD.encode(bytes);
    text.make_ascii_lowercase();
    text
}

/// The derived id of a preview (see the module docs).
///
/// Deliberately not HMAC: ids are recomputed on every PUT and on re-creation, and users hold
/// these URLs, so the construction is frozen. It is a sound PRF as it stands: the key is a fixed
/// 256-bit prefix, every field is length-prefixed (no two inputs share an encoding), and only 80
/// of the 256 output bits are ever shown, so the length extension HMAC guards against is out of
/// reach (it needs the whole digest).
pub fn derived_id(key: &[u8; KEY_LEN], workspace: &str, sandbox: &str, preview: &str) -> String {
    let mut h = Sha256::new();
    h.update(key);
    for part in ["preview-id", workspace, sandbox, preview] {
        h.update((part.len() as u32).to_be_bytes());
        h.update(part.as_bytes());
    }
    let digest = h.finalize();
    base32_lower(&digest[..10])
}

/// The id of a preview with `prefixUrl`.
pub fn prefixed_id(prefix: &str, workspace: &str) -> String {
    format!("{prefix}-{workspace}")
}

/// A new preview-token secret.
pub fn new_token_secret() -> Result<String, RandomError> {
    Ok(format!("{TOKEN_PREFIX}{}", base32_lower(&random_bytes::<32>()?)))
}

/// A new token name: `token-` + 8 random base32 characters.
pub fn new_token_name() -> Result<String, RandomError> {
    Ok(format!("token-{}", base32_lower(&random_bytes::<5>()?)))
}

/// SHA-256 of a secret (compared in constant time).
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_vectors() {
        // RFC 4648 test vectors, lower-cased, no padding.
        assert_eq!(base32_lower(b""), "");
        assert_eq!(base32_lower(b"f"), "my");
        assert_eq!(base32_lower(b"fo"), "mzxq");
        assert_eq!(base32_lower(b"foo"), "mzxw6");
        assert_eq!(base32_lower(b"foobar"), "mzxw6ytboi");
    }

    #[test]
    fn derived_ids_are_stable_distinct_and_dns_safe() {
        let key = [7u8; KEY_LEN];
        let a = derived_id(&key, "acme", "app", "web");
        assert_eq!(a, derived_id(&key, "acme", "app", "web"));
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        assert_ne!(a, derived_id(&key, "acme", "app", "web2"));
        assert_ne!(a, derived_id(&key, "acme", "appw", "eb"));
        assert_ne!(a, derived_id(&[8u8; KEY_LEN], "acme", "app", "web"));
        // Frozen: users hold these URLs (docs/PREVIEWS.md, "stable").
        assert_eq!(a, KNOWN_ID);
    }

    /// `derived_id(&[7; 32], "acme", "app", "web")` as computed before the id code was touched.
    const KNOWN_ID: &str = "y3wqge6nw7p7i3qt";

    #[test]
    fn secrets() {
        let s = new_token_secret().expect("random");
        assert!(s.starts_with(TOKEN_PREFIX));
        assert_eq!(s.len(), TOKEN_PREFIX.len() + 52);
        assert_ne!(s, new_token_secret().expect("random"));
        assert_eq!(new_token_name().expect("random").len(), "token-".len() + 8);
    }
}

//! API keys: generated from the OS's random source, compared by their SHA-256 only.
//!
//! A key is `qm-` followed by 43 base64url characters (256 random bits). Keys are high-entropy, so a fast
//! hash is enough to make the stored value useless to an attacker (no dictionary to try).

use base64::Engine;
use sha2::{Digest, Sha256};

/// Prefix of every key (lets secret scanners and people recognise one).
pub const PREFIX: &str = "qm-";

/// A new random key.
pub fn generate() -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Hex SHA-256 of `key`: what status shows and the gateway compares.
pub fn hash(key: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(key.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_well_formed_and_hashed() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert!(a.starts_with(PREFIX) && a.len() == PREFIX.len() + 43, "{a}");
        assert_eq!(hash(&a), hash(&a));
        assert_ne!(hash(&a), hash(&b));
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(!hash(&a).contains(&a[3..]));
    }
}

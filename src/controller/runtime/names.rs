//! Names derived from object names (Secrets, vendor server names) that must fit Kubernetes and vendor
//! limits. Pure functions.
//!
//! # Guarantees
//! A derived name is deterministic (the same input gives the same name across restarts and versions) and
//! never longer than its limit; shortened names keep a hash of the full input, so two long names that share
//! a prefix still get different derived names.

use sha2::{Digest, Sha256};

/// Longest name of most Kubernetes objects (a DNS subdomain), Secrets included.
pub const MAX_OBJECT_NAME: usize = 253;
/// Longest DNS label: what a server hostname may be at every vendor we support.
pub const MAX_HOSTNAME: usize = 63;

/// `base` followed by `suffix`, at most `max` bytes long: when it does not fit, `base` is cut and an
/// 8-hex-digit hash of the whole `base` is put before the suffix. `suffix` must be shorter than `max - 9`.
pub fn fit(base: &str, suffix: &str, max: usize) -> String {
    let full = format!("{base}{suffix}");
    if full.len() <= max {
        return full;
    }
    let digest = Sha256::digest(base.as_bytes());
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    let keep = max.saturating_sub(suffix.len() + hash.len() + 1);
    let mut end = keep.min(base.len());
    while !base.is_char_boundary(end) {
        end -= 1;
    }
    // A name may not end in '-' or '.' before the hash's separator.
    let head = base[..end].trim_end_matches(['-', '.']);
    format!("{head}-{hash}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_kept_and_long_ones_fit_with_a_hash() {
        assert_eq!(fit("web", "-connection", MAX_OBJECT_NAME), "web-connection");
        let long = "a".repeat(248);
        let n = fit(&long, "-connection", MAX_OBJECT_NAME);
        assert_eq!(n.len(), MAX_OBJECT_NAME, "{n}");
        assert!(n.ends_with("-connection"));
        assert_eq!(
            n,
            fit(&long, "-connection", MAX_OBJECT_NAME),
            "deterministic"
        );
        let other = format!("{}b", "a".repeat(247));
        assert_ne!(
            n,
            fit(&other, "-connection", MAX_OBJECT_NAME),
            "hash keeps them apart"
        );
        let host = fit(&format!("{}-", "x".repeat(60)), "-1a2b3c4d", MAX_HOSTNAME);
        assert!(host.len() <= MAX_HOSTNAME, "{host}");
        assert!(!host.contains("--"), "no dangling separator: {host}");
        assert_eq!(fit("", "-s", 10), "-s");
    }
}

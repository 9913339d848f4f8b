//! Verifying Stripe's webhook signatures (`Stripe-Signature: t=…,v1=…[,v1=…][,v0=…]`): HMAC-SHA256 of
//! `"{t}.{raw body}"` with the endpoint's secret, compared in constant time against every `v1` (any one
//! matching passes, so a secret rotation works; `v0` and unknown keys are ignored), and the timestamp
//! within a tolerance of now (300 s by default) so a captured request cannot be replayed later.
//! Anything malformed is refused without panicking, whatever the bytes.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Stripe's default tolerance, seconds.
pub const DEFAULT_TOLERANCE: i64 = 300;
/// The longest header considered (Stripe's are ~150 bytes; more `v1` during a rotation).
const MAX_HEADER: usize = 4096;
/// The most `v1` signatures considered.
const MAX_SIGNATURES: usize = 16;

/// Why a signature is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `Stripe-Signature` header.
    #[error("no Stripe-Signature header")]
    Missing,
    /// The header is not `t=…,v1=…`.
    #[error("malformed Stripe-Signature header: {0}")]
    Malformed(&'static str),
    /// The timestamp is outside the tolerance.
    #[error("the signature's timestamp is {0} s away from now (tolerance exceeded)")]
    Stale(i64),
    /// No `v1` signature matches.
    #[error("no v1 signature matches the body")]
    NoMatch,
}

/// Verifies `header` over the raw `body` with any of `secrets`; the signed timestamp when valid.
pub fn verify(
    header: Option<&[u8]>,
    body: &[u8],
    secrets: &[&[u8]],
    now: i64,
    tolerance: i64,
) -> Result<i64, SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    if header.len() > MAX_HEADER {
        return Err(SignatureError::Malformed("too long"));
    }
    let header = std::str::from_utf8(header).map_err(|_| SignatureError::Malformed("not UTF-8"))?;
    let mut t = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed("an element is not key=value"))?;
        match k {
            "t" if t.is_some() => return Err(SignatureError::Malformed("two timestamps")),
            "t" => {
                t = Some(
                    v.parse::<i64>()
                        .map_err(|_| SignatureError::Malformed("the timestamp is not a number"))?,
                )
            }
            "v1" if signatures.len() >= MAX_SIGNATURES => {
                return Err(SignatureError::Malformed("too many signatures"));
            }
            "v1" => signatures.push(hex(v).ok_or(SignatureError::Malformed("a v1 is not hex"))?),
            _ => {}
        }
    }
    let t = t.ok_or(SignatureError::Malformed("no timestamp"))?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed("no v1 signature"));
    }
    let age = now.saturating_sub(t);
    if age.saturating_abs() > tolerance {
        return Err(SignatureError::Stale(age));
    }
    let prefix = format!("{t}.");
    for secret in secrets {
        for sig in &signatures {
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
                continue;
            };
            mac.update(prefix.as_bytes());
            mac.update(body);
            // Constant time.
            if mac.verify_slice(sig).is_ok() {
                return Ok(t);
            }
        }
    }
    Err(SignatureError::NoMatch)
}

fn hex(s: &str) -> Option<Vec<u8>> {
    // Digits only: `from_str_radix` alone would take a sign ("+b").
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The `v1` signature of `body` at `t` with `secret` (for tests and the simulator).
pub fn sign(secret: &[u8], t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_test_secret";
    const BODY: &[u8] = br#"{"id":"evt_1","type":"invoice.paid"}"#;
    const NOW: i64 = 1_793_491_200;

    fn header(t: i64, sigs: &[String]) -> String {
        let mut h = format!("t={t}");
        for s in sigs {
            h.push_str(&format!(",v1={s}"));
        }
        h
    }
    fn check(h: &str, body: &[u8]) -> Result<i64, SignatureError> {
        verify(Some(h.as_bytes()), body, &[SECRET], NOW, DEFAULT_TOLERANCE)
    }

    #[test]
    fn signature_vectors() {
        let good = sign(SECRET, NOW, BODY);
        assert_eq!(
            check(&header(NOW, std::slice::from_ref(&good)), BODY),
            Ok(NOW)
        );
        // A wrong secret.
        let wrong = sign(b"whsec_other", NOW, BODY);
        assert_eq!(
            check(&header(NOW, std::slice::from_ref(&wrong)), BODY),
            Err(SignatureError::NoMatch)
        );
        // Several v1, one valid (a rotation); v0 ignored.
        let h = format!(
            "{},v0={}",
            header(NOW, &[wrong, good.clone()]),
            "ab".repeat(32)
        );
        assert_eq!(check(&h, BODY), Ok(NOW));
        // Stale, and too far in the future.
        let old = NOW - 301;
        assert_eq!(
            check(&header(old, &[sign(SECRET, old, BODY)]), BODY),
            Err(SignatureError::Stale(301))
        );
        let ahead = NOW + 301;
        assert!(matches!(
            check(&header(ahead, &[sign(SECRET, ahead, BODY)]), BODY),
            Err(SignatureError::Stale(_))
        ));
        // The body altered by one byte.
        let mut altered = BODY.to_vec();
        altered[5] ^= 1;
        assert_eq!(
            check(&header(NOW, std::slice::from_ref(&good)), &altered),
            Err(SignatureError::NoMatch)
        );
        // The signed timestamp cannot be swapped for a fresh one.
        assert_eq!(
            check(&header(NOW - 10, &[good]), BODY),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn malformed_headers_are_refused() {
        assert_eq!(
            verify(None, BODY, &[SECRET], NOW, 300),
            Err(SignatureError::Missing)
        );
        for h in [
            "",
            "t=",
            "t=abc,v1=00",
            "v1=zz",
            &format!("t={NOW}"),
            &format!("t={NOW},t={NOW},v1={}", "00".repeat(32)),
            &format!("t={NOW},v1={}", "0".repeat(63)),
            &format!("t={NOW},v1={}", "é".repeat(32)),
            &format!("t={NOW},v1=+b{}", "00".repeat(31)),
            "garbage",
        ] {
            assert!(
                matches!(check(h, BODY), Err(SignatureError::Malformed(_))),
                "{h:?} was not refused as malformed"
            );
        }
        let long = format!("t={NOW}{}", ",v1=00".repeat(1000));
        assert!(matches!(
            check(&long, BODY),
            Err(SignatureError::Malformed(_))
        ));
    }

    /// Random bytes and mutations of a valid header never panic and never pass.
    #[test]
    fn fuzzed_headers_never_panic_or_pass() {
        let good = header(NOW, &[sign(SECRET, NOW, BODY)]).into_bytes();
        for i in 0..20_000u32 {
            let mut h: Vec<u8> = if i % 2 == 0 {
                (0..(rand::random::<u8>() as usize))
                    .map(|_| rand::random::<u8>())
                    .collect()
            } else {
                good.clone()
            };
            if i % 2 == 1 {
                let at = rand::random::<u32>() as usize % h.len();
                h[at] = h[at].wrapping_add(1 + rand::random::<u8>() % 255);
            }
            let r = verify(Some(&h), BODY, &[SECRET], NOW, DEFAULT_TOLERANCE);
            // Hex is read in either case: only the same signature passes.
            assert!(
                r.is_err() || h.to_ascii_lowercase() == good,
                "{:?} passed",
                String::from_utf8_lossy(&h)
            );
        }
    }
}

//! The controllers' error type and its policy: which errors are transient (requeue with capped
//! exponential backoff and jitter) and which are permanent (Stalled until the user changes something).

use std::time::Duration;

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes api request failed while {step}: {}", short(source))]
    Kube {
        /// What the controller was doing, e.g. "reading the credentials secret".
        step: &'static str,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// A vendor API call failed.
    #[error("failed to {step}: {source}")]
    Vendor {
        /// What the controller was doing, e.g. "create droplet".
        step: &'static str,
        /// The vendor error (its message reaches the condition).
        #[source]
        source: crate::cloud::CloudError,
    },
    /// The usage ledger refused or could not be reached.
    #[error("{0}")]
    Ledger(#[from] crate::ledger::LedgerError),
    /// The user must change something before the controller can make progress.
    #[error("{message}")]
    Permanent {
        /// PascalCase condition reason.
        reason: &'static str,
        /// Human-readable message (never a secret value).
        message: String,
    },
}

/// The API server's message for API errors (not the whole Status debug dump), the error itself otherwise.
fn short(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => other.to_string(),
    }
}

impl Error {
    /// Wraps a Kubernetes client error with the step that failed.
    pub fn kube(step: &'static str) -> impl FnOnce(kube::Error) -> Self {
        move |source| Self::Kube { step, source }
    }

    /// A bounded label for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Kube { source, .. } => match source {
                kube::Error::Api(s) if s.code == 409 => "kube_conflict",
                kube::Error::Api(s) if s.code == 404 => "kube_not_found",
                kube::Error::Api(s) if s.code >= 500 || s.code == 429 => "kube_unavailable",
                kube::Error::Api(_) => "kube_rejected",
                _ => "kube_transport",
            },
            Self::Vendor { source, .. } if source.is_transient() => "vendor_unavailable",
            Self::Vendor { source, .. } if source.is_auth() => "vendor_auth",
            Self::Vendor { .. } => "vendor_rejected",
            Self::Ledger(_) => "ledger_unavailable",
            Self::Permanent { .. } => "permanent",
        }
    }

    /// Wraps a vendor error with the step that failed.
    pub fn vendor(step: &'static str) -> impl FnOnce(crate::cloud::CloudError) -> Self {
        move |source| Self::Vendor { step, source }
    }

    /// True when retrying without a change from the user cannot help.
    pub fn is_permanent(&self) -> bool {
        self.stall().is_some()
    }

    /// For permanent errors: the Stalled reason and message.
    pub fn stall(&self) -> Option<(&'static str, String)> {
        match self {
            Self::Permanent { reason, message } => Some((reason, message.clone())),
            Self::Vendor { source, .. } if source.is_auth() => {
                Some(("InvalidCredentials", self.to_string()))
            }
            Self::Vendor { source, .. } if !source.is_transient() => {
                Some(("VendorRejected", self.to_string()))
            }
            _ => None,
        }
    }

    /// A permanent error with `reason`.
    pub fn permanent(reason: &'static str, message: impl Into<String>) -> Self {
        Self::Permanent {
            reason,
            message: message.into(),
        }
    }
}

/// Backoff before retry number `attempt` (1-based): `base * 2^(attempt-1)` capped at `cap`, then scaled by
/// a jitter factor in `[0.5, 1.0]` (`jitter` is a uniform sample in `[0, 1)`), so a crowd of failing objects
/// spreads out instead of retrying in lockstep.
pub fn backoff_delay(attempt: u32, base: Duration, cap: Duration, jitter: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(31);
    let raw = base.saturating_mul(1u32 << exp).min(cap);
    raw.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_table() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(300);
        let cases = [
            (1, 0.999_999, 1.0),
            (2, 0.999_999, 2.0),
            (3, 0.999_999, 4.0),
            (9, 0.999_999, 256.0),
            (10, 0.999_999, 300.0),
            (1000, 0.999_999, 300.0),
            (1, 0.0, 0.5),
            (10, 0.0, 150.0),
        ];
        for (attempt, jitter, want) in cases {
            let got = backoff_delay(attempt, base, cap, jitter).as_secs_f64();
            assert!(
                (got - want).abs() < 0.01,
                "attempt {attempt} jitter {jitter}: got {got}, want {want}"
            );
        }
    }

    #[test]
    fn categories_are_bounded() {
        let e = Error::Permanent {
            reason: "X",
            message: "anything at all".into(),
        };
        assert_eq!(e.category(), "permanent");
        assert!(e.is_permanent());
        let api = |code| Error::Kube {
            step: "s",
            source: kube::Error::Api(Box::new(kube::core::Status {
                code,
                ..Default::default()
            })),
        };
        assert_eq!(api(409).category(), "kube_conflict");
        assert_eq!(api(503).category(), "kube_unavailable");
        assert_eq!(api(422).category(), "kube_rejected");
        assert!(!api(503).is_permanent());
    }
}

//! The controllers' error type and its policy: which errors are transient (requeue with capped
//! exponential backoff and jitter) and which are permanent (Stalled until the user changes something).

use crate::crd::conditions::reason;

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
    /// Nothing to do until something outside the object changes (e.g. its ProviderConfig is suspended):
    /// `Ready=False` with this reason, looked at again periodically; not counted as a failure.
    #[error("{message}")]
    Waiting {
        /// PascalCase condition reason.
        reason: &'static str,
        /// Human-readable message.
        message: String,
    },
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
            Self::Waiting { .. } => "waiting",
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
                Some((reason::INVALID_CREDENTIALS, self.to_string()))
            }
            Self::Vendor { source, .. } if !source.is_transient() => {
                Some((reason::VENDOR_REJECTED, self.to_string()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_refusals_stall_and_outages_retry() {
        use crate::cloud::CloudError;
        use crate::http::HttpError;
        let status = |code| Error::Vendor {
            step: "create the server",
            source: CloudError::Http(HttpError::Status {
                vendor: "digitalocean",
                status: code,
                message: "the vendor's words".into(),
                retry_after: None,
            }),
        };
        let cases: [(Error, Option<&str>); 8] = [
            (status(401), Some(reason::INVALID_CREDENTIALS)),
            (status(403), Some(reason::INVALID_CREDENTIALS)),
            (status(400), Some(reason::VENDOR_REJECTED)),
            (status(404), Some(reason::VENDOR_REJECTED)),
            (status(422), Some(reason::VENDOR_REJECTED)),
            (status(429), None),
            (status(503), None),
            (
                Error::Vendor {
                    step: "read the server",
                    source: CloudError::Http(HttpError::Timeout {
                        vendor: "digitalocean",
                        timeout: std::time::Duration::from_secs(1),
                    }),
                },
                None,
            ),
        ];
        for (e, want) in cases {
            let got = e.stall();
            assert_eq!(got.as_ref().map(|(r, _)| *r), want, "{e}");
            if let Some((_, message)) = got {
                assert!(message.contains("the vendor's words"), "{message}");
            }
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

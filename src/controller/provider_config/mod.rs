//! ProviderConfig reconciler: dereference the credentials Secret → validate it → report.
//!
//! - `spec.suspended` → `Ready=False, reason=Suspended` (not stalled: the user chose it).
//! - the referenced Secret or key is missing or empty → `Stalled=True, reason=MissingSecret`; the controller
//!   watches Secrets, so creating or fixing the Secret wakes it without polling.
//! - compute vendors: one cheap authenticated call → Ready (with `lastSuccessfulCallTime`); Stalled
//!   `InvalidCredentials` (401/403) or `VendorRejected` (any other refusal); an outage (connection
//!   refused, 429, 5xx, timeout) is `Ready=False, Reconciling=True, reason=Unreachable`, looked at again
//!   periodically;
//!   the same for 1NCE (an OAuth token and a SIM listing), Stripe (a customer listing) and OpenAI-compatible
//!   upstreams (`GET {endpoint}/models`): every type is checked with its vendor.
//!
//! Secret values are read only to check they are present; they never reach logs, events or status.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;

use super::runtime::framework::{Cleanup, Outcome, Progress, Reconciler, now};
use kube::ResourceExt;

use super::{Context, Error, vendor};

pub mod credentials;
mod wire;

pub use wire::wire;

/// The ProviderConfig kind, as the runtime runs it.
pub const WIRE: crate::controller::runtime::Wire =
    crate::controller::runtime::Wire::of::<ProviderConfig>(wire);

crate::controller::runtime::framework::managed_cluster!(ProviderConfig, ProviderConfigStatus);
use crate::cloud::CloudError;
use crate::crd::conditions::{Health, reason};
use crate::crd::provider_config::SecretKeyReference;
use crate::crd::{ProviderConfig, ProviderConfigStatus, ProviderType};

/// What a ProviderConfig's users depend on: its spec, its deletion, and whether the vendor refuses its
/// credentials.
pub fn provider_config_for_users(pc: &ProviderConfig) -> u64 {
    let refused = pc.status.as_ref().is_some_and(|s| {
        crate::crd::conditions::find(&s.conditions, crate::crd::conditions::STALLED).is_some_and(
            |c| {
                c.status == crate::crd::conditions::ConditionStatus::True
                    && c.reason == reason::INVALID_CREDENTIALS
            },
        )
    });
    crate::controller::runtime::wake::hash_of((
        pc.metadata.generation,
        pc.metadata.deletion_timestamp.is_some(),
        refused,
    ))
}

/// Whether the type is a compute vendor (with a client that can verify credentials).
pub fn is_compute(t: ProviderType) -> bool {
    matches!(
        t,
        ProviderType::Digitalocean
            | ProviderType::Linode
            | ProviderType::Vultr
            | ProviderType::Contabo
    )
}

/// The ProviderConfig reconciler.
pub struct ProviderConfigReconciler;

/// What the credentials Secret check found.
#[derive(Debug, PartialEq, Eq)]
pub enum SecretCheck {
    /// The key exists and is not empty.
    Present,
    /// No such Secret.
    SecretNotFound,
    /// The Secret exists but lacks the key (or its value is empty).
    KeyMissing,
}

/// Checks a Secret (if found) for a non-empty `key`, in `data` or `stringData`.
pub fn check_secret(secret: Option<&Secret>, key: &str) -> SecretCheck {
    let Some(secret) = secret else {
        return SecretCheck::SecretNotFound;
    };
    let in_data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .is_some_and(|v| !v.0.is_empty());
    let in_string_data = secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .is_some_and(|v| !v.is_empty());
    if in_data || in_string_data {
        SecretCheck::Present
    } else {
        SecretCheck::KeyMissing
    }
}

/// The health a credentials check leads to.
pub fn health_for(spec_suspended: bool, r: &SecretKeyReference, check: SecretCheck) -> Health {
    if spec_suspended {
        return Health::not_ready(
            reason::SUSPENDED,
            "suspended by spec.suspended: nothing is created or changed through this account",
        );
    }
    match check {
        SecretCheck::Present => Health::ready(format!(
            "credentials present in secret {}/{} key {:?}",
            r.namespace, r.name, r.key
        )),
        SecretCheck::SecretNotFound => Health::stalled(
            reason::MISSING_SECRET,
            format!("secret {}/{} not found", r.namespace, r.name),
        ),
        SecretCheck::KeyMissing => Health::stalled(
            reason::MISSING_SECRET,
            format!(
                "secret {}/{} has no non-empty key {:?}",
                r.namespace, r.name, r.key
            ),
        ),
    }
}

impl Reconciler<ProviderConfig> for ProviderConfigReconciler {
    async fn apply(
        &self,
        obj: Arc<ProviderConfig>,
        ctx: Arc<Context>,
        progress: &mut Progress<ProviderConfigStatus>,
    ) -> Result<Outcome, Error> {
        let r = &obj.spec.credentials_secret_ref;
        // Read once: the presence check and the vendor check's account both come from this copy.
        let (secret, check) = if obj.spec.suspended {
            (None, SecretCheck::Present)
        } else {
            let secret = vendor::credentials_secret(&ctx, &obj).await?;
            let check = check_secret(secret.as_ref(), &r.key);
            (secret, check)
        };
        let previous = progress.status.clone();
        let status = &mut progress.status;
        *status = ProviderConfigStatus {
            credentials_verified: previous.credentials_verified,
            last_successful_call_time: previous.last_successful_call_time.clone(),
            protected_secret: previous.protected_secret.clone(),
            ..Default::default()
        };
        // The Secret stays while anything may need it to clean up (see `credentials`); a Secret this
        // ProviderConfig no longer names is released.
        let named = format!("{}/{}", r.namespace, r.name);
        if let Some(old) = previous.protected_secret.as_deref().filter(|o| *o != named) {
            credentials::release_named(&ctx, &obj, old).await?;
            status.protected_secret = None;
        }
        let keeping = credentials::protect(&ctx, &obj, secret.as_ref()).await?;
        if secret
            .as_ref()
            .is_some_and(|s| s.metadata.deletion_timestamp.is_none())
        {
            status.protected_secret = Some(named);
        }
        let health = health_for(obj.spec.suspended, r, check);
        if !keeping.is_empty() {
            // Being deleted (with its namespace, say): kept for the VMs that still need it; look again.
            return Ok(Outcome::new(Health::progressing(
                reason::CREDENTIALS_IN_USE,
                format!(
                    "secret {}/{} is being deleted; it is kept until these VirtualMachines no longer need it to clean up: {}",
                    r.namespace,
                    r.name,
                    keeping.join(", ")
                ),
            ))
            .requeue_after(ctx.config.poll_interval));
        }
        if !matches!(health, Health::Ready { .. }) {
            return Ok(Outcome::new(health));
        }
        // The vendor check: one cheap authenticated call (every type has one).
        let Some(resolved) = vendor::account_from((*obj).clone(), secret.as_ref())? else {
            return Ok(Outcome::new(health));
        };
        ctx.providers.remember(&resolved);
        let (vendor, verified) = match obj.spec.type_ {
            ProviderType::Onence => {
                let client = ctx.providers.onence(&ctx, &resolved).await?;
                ("1nce", client.verify().await)
            }
            ProviderType::Stripe => {
                let client = ctx.providers.stripe(&ctx, &resolved).await?;
                ("stripe", client.verify().await)
            }
            ProviderType::Openai => {
                let client = ctx.providers.openai(&ctx, &resolved).await?;
                ("openai", client.verify().await)
            }
            ProviderType::Digitalocean
            | ProviderType::Linode
            | ProviderType::Vultr
            | ProviderType::Contabo => {
                let provider = ctx.providers.compute(&ctx, &resolved).await?;
                (provider.vendor(), provider.verify().await)
            }
        };
        let (health, requeue_after) = vendor_check(&ctx, vendor, verified, &previous, status);
        let mut outcome = Outcome::new(health);
        outcome.requeue_after = requeue_after;
        Ok(outcome)
    }

    /// Nothing was created at the vendor for a ProviderConfig itself, but it stays (with its credentials
    /// Secret) while VirtualMachines need it to clean up their servers.
    async fn cleanup(
        &self,
        obj: Arc<ProviderConfig>,
        ctx: Arc<Context>,
        _progress: &mut Progress<ProviderConfigStatus>,
    ) -> Result<Cleanup, Error> {
        let users = credentials::users(&ctx, &obj.name_any())?;
        if !users.is_empty() {
            return Ok(Cleanup::Wait {
                message: format!(
                    "in use: deletion waits until these objects, which hold vendor state through this account, no longer need it to meter and clean up: {}",
                    users.join(", ")
                ),
                requeue_after: ctx.config.poll_interval,
            });
        }
        credentials::release(&ctx, &obj).await?;
        Ok(Cleanup::Done)
    }
}

/// The health a vendor's answer to the credential check gives, recording it in `status`: verified,
/// refused credentials (Stalled), an outage (Reconciling, looked at again), or another refusal.
fn vendor_check(
    ctx: &Context,
    vendor: &str,
    verified: Result<(), CloudError>,
    previous: &ProviderConfigStatus,
    status: &mut ProviderConfigStatus,
) -> (Health, Option<Duration>) {
    match verified {
        Ok(()) => {
            status.credentials_verified = Some(true);
            // NB: refreshed at most every half resync interval, so events that change nothing (a
            // label, a Secret touch) do not rewrite status just to move this timestamp.
            let fresh = previous
                .last_successful_call_time
                .as_deref()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .is_some_and(|t| {
                    jiff::Timestamp::now().duration_since(t).unsigned_abs()
                        < ctx.config.resync_interval / 2
                });
            if !fresh {
                status.last_successful_call_time = Some(now());
            }
            (
                Health::ready(format!("credentials verified by {vendor}")),
                None,
            )
        }
        Err(e) if e.is_auth() => {
            status.credentials_verified = Some(false);
            (
                Health::stalled(reason::INVALID_CREDENTIALS, e.to_string()),
                None,
            )
        }
        // An outage (connection refused, 5xx, 429, timeout) is not the user's to fix: Reconciling,
        // looked at again periodically, never Stalled (GitOps tools read Stalled as failed for good).
        Err(e) if e.is_transient() => (
            Health::progressing(reason::UNREACHABLE, e.to_string()),
            Some(ctx.config.poll_interval * 6),
        ),
        // Any other refusal (a wrong endpoint's 404, say) is the user's to fix.
        Err(e) => (
            Health::stalled(reason::VENDOR_REJECTED, e.to_string()),
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    fn sref() -> SecretKeyReference {
        SecretKeyReference {
            name: "do".into(),
            namespace: "qm".into(),
            key: "token".into(),
        }
    }

    #[test]
    fn secret_checks() {
        assert_eq!(check_secret(None, "token"), SecretCheck::SecretNotFound);
        let mut s = Secret::default();
        assert_eq!(check_secret(Some(&s), "token"), SecretCheck::KeyMissing);
        s.data = Some(BTreeMap::from([("token".into(), ByteString(vec![]))]));
        assert_eq!(
            check_secret(Some(&s), "token"),
            SecretCheck::KeyMissing,
            "empty value"
        );
        s.data = Some(BTreeMap::from([(
            "token".into(),
            ByteString(b"sekrit".to_vec()),
        )]));
        assert_eq!(check_secret(Some(&s), "token"), SecretCheck::Present);
        assert_eq!(check_secret(Some(&s), "other"), SecretCheck::KeyMissing);
    }

    #[test]
    fn health_never_contains_secret_values_and_suspended_wins() {
        let h = health_for(false, &sref(), SecretCheck::Present);
        assert!(matches!(h, Health::Ready { .. }));
        let h = health_for(false, &sref(), SecretCheck::SecretNotFound);
        assert_eq!(h.reason(), reason::MISSING_SECRET);
        assert!(h.message().contains("qm/do"));
        let h = health_for(true, &sref(), SecretCheck::SecretNotFound);
        assert_eq!(h.reason(), reason::SUSPENDED);
        assert!(matches!(h, Health::NotReady { .. }));
    }
}

//! The entitlement gate: a Project with `spec.subscriptionRef` is entitled while its Subscription is
//! active or trialing, or past due within `pastDueGraceSeconds` (counted from when it was first seen past
//! due). What the Project's members do about it is in [`super::policy`]: nothing new is created without
//! entitlement, and with `onEntitlementLost: Stop` its VMs stop and its SIMs are disabled. The plan's
//! entitlements cap the Project's limits.

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use crate::controller::{Context, Error};
use crate::crd::project::{EntitlementStatus, ProjectLimits};
use crate::crd::{Project, Subscription};

/// Whether `sub` (the Subscription the Project names, if it exists) entitles it at `now`, and until
/// when the answer holds (the end of a grace period).
pub fn evaluate(
    name: &str,
    sub: Option<&Subscription>,
    grace_seconds: u32,
    now: i64,
) -> (EntitlementStatus, Option<i64>) {
    let mut e = EntitlementStatus {
        subscription: name.to_string(),
        ..Default::default()
    };
    let Some(sub) = sub else {
        e.message = format!("Subscription {name:?} not found");
        return (e, None);
    };
    let st = sub.status.as_ref();
    let stripe = st.and_then(|s| s.stripe_status.as_deref());
    let mut until = None;
    (e.entitled, e.message) = match stripe {
        Some(s @ ("active" | "trialing")) => (true, format!("the subscription is {s}")),
        Some("past_due") => {
            let since = st
                .and_then(|s| s.past_due_since.as_deref())
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .map_or(now, |t| t.as_second());
            let end = since + i64::from(grace_seconds);
            let end_text = jiff::Timestamp::from_second(end)
                .map(|t| t.to_string())
                .unwrap_or_default();
            if now < end {
                e.grace_ends_at = Some(end_text.clone());
                until = Some(end);
                (
                    true,
                    format!("the subscription is past due; grace until {end_text}"),
                )
            } else {
                (
                    false,
                    format!(
                        "the subscription is past due and its grace period ended at {end_text}"
                    ),
                )
            }
        }
        Some(s) => (false, format!("the subscription is {s}")),
        None => (false, "the subscription has no Stripe status yet".into()),
    };
    (e, until)
}

/// The plan's limits of a Subscription, from its ProviderConfig's plans (none for a raw price).
fn plan_limits(ctx: &Context, sub: &Subscription) -> Result<Option<ProjectLimits>, Error> {
    let Some(plan) = sub.status.as_ref().and_then(|s| s.plan.as_deref()) else {
        return Ok(None);
    };
    let pc = ctx
        .caches()?
        .store::<crate::crd::ProviderConfig>()?
        .get(&ObjectRef::new(&sub.spec.provider_config_ref.name));
    let entitlements = pc
        .as_deref()
        .and_then(|pc| crate::controller::subscription::plan::find(pc, plan))
        .and_then(|p| p.entitlements.clone());
    Ok(entitlements.map(|e| ProjectLimits {
        max_virtual_machines: e.max_virtual_machines,
        max_sim_cards: e.max_sim_cards,
        max_monthly_spend: e.max_monthly_spend,
    }))
}

/// A Project's entitlement as [`of`] finds it.
pub struct Entitlement {
    /// What status shows.
    pub status: EntitlementStatus,
    /// Until when the answer holds (the end of a grace period).
    pub until: Option<i64>,
    /// The Subscription exists but has no Stripe status yet: the answer is still coming (the Project is
    /// converging, not deliberately refused).
    pub pending: bool,
}

/// The Project's entitlement (`None` without `subscriptionRef`).
pub fn of(ctx: &Context, p: &Project) -> Result<Option<Entitlement>, Error> {
    let Some(r) = &p.spec.subscription_ref else {
        return Ok(None);
    };
    let ns = p.namespace().unwrap_or_default();
    let sub = ctx
        .caches()?
        .store::<crate::crd::Subscription>()?
        .get(&ObjectRef::new(&r.name).within(&ns));
    let now = jiff::Timestamp::now().as_second();
    let (mut e, until) = evaluate(&r.name, sub.as_deref(), p.spec.past_due_grace_seconds, now);
    if let Some(sub) = &sub {
        e.limits = plan_limits(ctx, sub)?;
    }
    let pending = sub.as_ref().is_some_and(|s| {
        s.status
            .as_ref()
            .and_then(|st| st.stripe_status.as_ref())
            .is_none()
    });
    Ok(Some(Entitlement {
        status: e,
        until,
        pending,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(status: Option<&str>, past_due_since: Option<&str>) -> Subscription {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "Subscription",
            "metadata": {"name": "s", "namespace": "n"},
            "spec": {"plan": "basic", "providerConfigRef": {"name": "stripe"}},
            "status": {"stripeStatus": status, "pastDueSince": past_due_since},
        }))
        .unwrap()
    }

    #[test]
    fn active_and_trialing_entitle_past_due_only_within_grace() {
        let t0: i64 = "2026-11-01T00:00:00Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_second();
        for s in ["active", "trialing"] {
            assert!(evaluate("s", Some(&sub(Some(s), None)), 60, t0).0.entitled);
        }
        let due = sub(Some("past_due"), Some("2026-11-01T00:00:00Z"));
        let (e, until) = evaluate("s", Some(&due), 3600, t0 + 10);
        assert!(e.entitled);
        assert_eq!(until, Some(t0 + 3600));
        assert_eq!(e.grace_ends_at.as_deref(), Some("2026-11-01T01:00:00Z"));
        let (e, until) = evaluate("s", Some(&due), 3600, t0 + 3600);
        assert!(!e.entitled, "{}", e.message);
        assert_eq!(until, None);
        for s in [
            "canceled",
            "unpaid",
            "incomplete",
            "incomplete_expired",
            "paused",
        ] {
            assert!(
                !evaluate("s", Some(&sub(Some(s), None)), 3600, t0)
                    .0
                    .entitled
            );
        }
        assert!(!evaluate("s", Some(&sub(None, None)), 3600, t0).0.entitled);
        let (e, _) = evaluate("gone", None, 3600, t0);
        assert!(!e.entitled && e.message.contains("not found"));
    }
}

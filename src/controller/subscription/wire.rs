//! How Subscriptions are woken, beyond their own changes: their ProviderConfig's change (plans,
//! suspension), and the Stripe events that concern them ([`stripe_event`](super::stripe_event), called
//! by the webhook server). Up to 16 reconcile at once by default.

use std::time::Duration;

use kube::ResourceExt;

use super::SubscriptionReconciler;
use crate::controller::runtime::Wiring;
use crate::controller::runtime::wake::referring;
use crate::crd::{ProviderConfig, Subscription};

/// Wires the Subscription controller.
pub fn wire(w: &mut Wiring) {
    let c = w.controller::<Subscription>(16, Duration::ZERO);
    let all = w.store::<Subscription>();
    let c = c.watches_shared_stream(w.changes::<ProviderConfig>(), move |pc| {
        let name = pc.name_any();
        referring(&all, |s| s.spec.provider_config_ref.name == name)
    });
    w.holds_accounts::<crate::crd::Subscription>(
        crate::controller::provider_config::credentials::subscription_needs,
    );
    w.run(c, SubscriptionReconciler);
}

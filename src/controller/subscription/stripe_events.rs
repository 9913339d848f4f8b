//! Stripe's events wake the Subscriptions they concern: by the UID in the Stripe object's metadata,
//! else by the subscription or customer ID they recorded. A Subscription so woken reads Stripe itself
//! at its next reconcile, not its account's listing, and a listing taken before that direct read is
//! never used to write an older state back.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::cloud::stripe_event::StripeHint;
use crate::controller::runtime::Context;
use crate::controller::runtime::state::KindState;
use crate::crd::Subscription;

/// Which Subscriptions (by UID) a Stripe event concerns since their last reconcile, and when each last
/// read Stripe directly (unix seconds, this process's memory).
#[derive(Default)]
pub struct StripeReads {
    fresh: Mutex<HashSet<String>>,
    read: Mutex<HashMap<String, i64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl KindState for StripeReads {
    fn forget(&self, _key: &str, uid: Option<&str>) {
        if let Some(uid) = uid {
            lock(&self.read).remove(uid);
            lock(&self.fresh).remove(uid);
        }
    }
}

impl StripeReads {
    /// A Stripe event concerns the Subscription of `uid`: its next reconcile reads Stripe.
    pub fn event_for(&self, uid: &str) {
        lock(&self.fresh).insert(uid.to_string());
    }

    /// Whether a Stripe event concerned the Subscription of `uid` since its last reconcile (forgotten).
    pub fn take_event(&self, uid: &str) -> bool {
        lock(&self.fresh).remove(uid)
    }

    /// The Subscription of `uid` read Stripe directly at `at` (unix seconds).
    pub fn read_directly(&self, uid: &str, at: i64) {
        lock(&self.read).insert(uid.to_string(), at);
    }

    /// When the Subscription of `uid` last read Stripe directly (since this process started).
    pub fn read_at(&self, uid: &str) -> Option<i64> {
        lock(&self.read).get(uid).copied()
    }
}

/// The Subscriptions a Stripe event concerns: by the UID in the Stripe object's metadata, else by the
/// subscription or customer ID they recorded.
pub fn concerned(all: &Store<Subscription>, h: &StripeHint) -> Vec<Arc<Subscription>> {
    all.state()
        .into_iter()
        .filter(|s| {
            let st = s.status.as_ref();
            (h.uid.is_some() && s.uid() == h.uid)
                || (h.subscription.is_some()
                    && st.and_then(|st| st.subscription_id.as_ref()) == h.subscription.as_ref())
                || (h.customer.is_some()
                    && st.and_then(|st| st.customer_id.as_ref()) == h.customer.as_ref())
        })
        .collect()
}

/// A Stripe event (verified by the webhook server) concerns the Subscriptions `hint` names: wake them
/// (their reconcile reads Stripe). False when no controller acts on it in this process now (a standby,
/// or caches still loading, which would match nothing), so the event is not recorded as handled and
/// Stripe delivers it again. The empty hint asks only that.
pub fn stripe_event(ctx: &Context, hint: StripeHint) -> bool {
    if !ctx.running() {
        return false;
    }
    if hint == StripeHint::default() {
        return true;
    }
    let Some(all) = ctx
        .caches()
        .ok()
        .and_then(|c| c.store::<Subscription>().ok())
    else {
        return false;
    };
    let reads = ctx.state::<StripeReads>();
    for s in concerned(all, &hint) {
        reads.event_for(&s.uid().unwrap_or_default());
        ctx.wake(ObjectRef::from_obj(&*s));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::ControllerConfig;

    /// A standby, or a leader whose caches are still loading, takes no event: the webhook answers 503
    /// and Stripe delivers it again (recording it as handled would lose it for good).
    #[tokio::test]
    async fn no_event_is_taken_while_no_controller_acts_on_it() {
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let ctx = Context::new(
            client,
            crate::metrics::Metrics::new(),
            ControllerConfig::default(),
            None,
        );
        assert!(!stripe_event(&ctx, StripeHint::default()));
        let hint = StripeHint {
            uid: Some("u-1".into()),
            ..Default::default()
        };
        assert!(!stripe_event(&ctx, hint));
    }
}

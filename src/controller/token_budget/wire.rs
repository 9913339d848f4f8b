//! How TokenBudgets are woken, beyond their own changes: their key Secrets (a deleted one is rotated),
//! and the Projects, Subscriptions and ProviderConfigs they name (money stops, periods and plans,
//! upstreams). Up to 8 reconcile at once by default.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use super::TokenBudgetReconciler;
use crate::controller::runtime::Wiring;
use crate::controller::runtime::wake::referring;
use crate::crd::{Project, ProviderConfig, Subscription, TokenBudget};

/// The budgets in the namespace of `named` that `names` says refer to it.
fn naming<K: Resource>(
    store: &Store<TokenBudget>,
    named: &K,
    names: impl Fn(&TokenBudget, &str) -> bool,
) -> Vec<ObjectRef<TokenBudget>> {
    let (ns, name) = (
        named.meta().namespace.as_deref(),
        named.meta().name.as_deref(),
    );
    referring(store, |b| {
        b.namespace().as_deref() == ns && names(b, name.unwrap_or_default())
    })
}

/// Wires the TokenBudget controller.
pub fn wire(w: &mut Wiring) {
    let c = w.controller::<TokenBudget>(8, Duration::ZERO);
    let c = c.watches_shared_stream(w.changes::<Secret>(), |s| {
        let ns = s.namespace().unwrap_or_default();
        s.owner_references()
            .iter()
            .filter(|o| o.kind == "TokenBudget")
            .map(|o| ObjectRef::<TokenBudget>::new(&o.name).within(&ns))
            .collect::<Vec<_>>()
    });
    let store = w.store::<TokenBudget>();
    let c = c.watches_shared_stream(w.changes::<Project>(), move |p| {
        naming(&store, &*p, |b, name| {
            b.spec.project_ref.as_ref().is_some_and(|r| r.name == name)
        })
    });
    let store = w.store::<TokenBudget>();
    let c = c.watches_shared_stream(w.changes::<Subscription>(), move |s| {
        naming(&store, &*s, |b, name| {
            b.spec
                .subscription_ref
                .as_ref()
                .is_some_and(|r| r.name == name)
        })
    });
    let all = w.store::<TokenBudget>();
    let c = c.watches_shared_stream(w.changes::<ProviderConfig>(), move |pc| {
        let name = pc.name_any();
        referring(&all, |b| {
            std::iter::once(&b.spec.provider_config_ref)
                .chain(&b.spec.fallback_provider_config_refs)
                .any(|r| r.name == name)
        })
    });
    w.run(c, TokenBudgetReconciler);
}

//! How ProviderConfigs are woken, beyond their own changes: a change of any Secret one references (not
//! the Secrets Quartermaster writes, nor the credentials Secret's own finalizer write), and at once
//! when any object saw the vendor refuse its credentials ([`Context::account_refused`]). Up to 4
//! reconcile at once by default. Also keeps `quartermaster_provider_configs_unreachable`.
//!
//! [`Context::account_refused`]: crate::controller::runtime::Context::account_refused

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};

use super::ProviderConfigReconciler;
use super::credentials::SecretWrites;
use crate::controller::runtime::cache::NOT_MANAGED_BY;
use crate::controller::runtime::wake::Wakes;
use crate::controller::runtime::{Context, Wiring};
use crate::crd::ProviderConfig;
use crate::crd::conditions::{self, reason};

/// Wires the ProviderConfig controller.
pub fn wire(w: &mut Wiring) {
    let ctx = w.ctx().clone();
    let pc = w.controller::<ProviderConfig>(4, Duration::ZERO);
    // NB: the Secrets Quartermaster writes itself (connection Secrets, one per VM) are never credentials:
    // leaving them out halves the Secret traffic of a large fleet.
    let secrets = watcher(
        Api::<PartialObjectMeta<Secret>>::all(ctx.client.clone()),
        watcher::Config::default().labels(NOT_MANAGED_BY),
    )
    .default_backoff()
    .touched_objects()
    .boxed();
    let (pcs, writes) = (w.store::<ProviderConfig>(), ctx.state::<SecretWrites>());
    let pc = pc.watches_stream(secrets, move |secret| {
        let (ns, name) = (secret.namespace().unwrap_or_default(), secret.name_any());
        // A credentials Secret's finalizer written by the ProviderConfig's own reconcile: nothing new.
        if writes.own(
            &format!("{ns}/{name}"),
            secret.resource_version().as_deref(),
        ) {
            return Vec::new();
        }
        pcs.state()
            .into_iter()
            .filter(|p| {
                let r = &p.spec.credentials_secret_ref;
                r.namespace == ns && r.name == name
            })
            .map(|p| ObjectRef::from_obj(&*p))
            .collect::<Vec<_>>()
    });
    let refused = ctx.state::<Wakes<ProviderConfig>>();
    ctx.on_account_refused(move |name| refused.send(ObjectRef::new(name)));
    w.run(pc, ProviderConfigReconciler);
    let store = w.store::<ProviderConfig>();
    w.task(unreachable_gauge(ctx, store));
}

/// Counts the ProviderConfigs whose vendor is unreachable, every 30 s (for the chart's alert).
async fn unreachable_gauge(
    ctx: Arc<Context>,
    store: kube::runtime::reflector::Store<ProviderConfig>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tick.tick().await;
        let unreachable = store
            .state()
            .iter()
            .filter(|p| {
                p.status.as_ref().is_some_and(|s| {
                    conditions::find(&s.conditions, conditions::READY)
                        .is_some_and(|r| r.reason == reason::UNREACHABLE)
                })
            })
            .count();
        ctx.metrics
            .unreachable
            .set(i64::try_from(unreachable).unwrap_or(i64::MAX));
    }
}

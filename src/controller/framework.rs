//! The reconcile framework every kind uses. A kind supplies a [`Reconciler`] (its `apply` and `cleanup`);
//! the framework does the rest, in this order:
//!
//! 1. **paused** — `quartermaster.dev/paused` set: only a `Paused=True` condition is written; nothing else
//!    happens (deletion included) until the annotation is removed.
//! 2. **finalizer** — added before the first `apply`; on deletion `cleanup` runs and the finalizer is
//!    removed only once cleanup reports done. Other controllers' finalizers are never touched
//!    (optimistic concurrency on `resourceVersion`).
//! 3. **status** — the reconciler's status plus kstatus conditions and `observedGeneration`, written by
//!    server-side apply (field manager `quartermaster`) and skipped when nothing changed.
//! 4. **events** — one Event whenever the overall state (Ready/Reconciling/Stalled and reason) changes.
//! 5. **errors** — permanent errors become `Stalled=True` and wait for a change; transient errors set
//!    `Reconciling=True, reason=Retrying` and requeue with capped exponential backoff plus jitter.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams};
use kube::core::object::HasStatus;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Context, Error};
use crate::crd::conditions::{
    self, ConditionStatus, DesiredCondition, Health, merge_conditions, reason,
};
use crate::crd::{ANNOTATION_PAUSED, FINALIZER, ObjectStatus};

/// The field manager of every write Quartermaster makes.
pub const FIELD_MANAGER: &str = "quartermaster";

/// A Quartermaster kind the framework can reconcile.
pub trait Managed:
    Resource<DynamicType = ()>
    + HasStatus<Status = <Self as Managed>::KindStatus>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// The kind's status type.
    type KindStatus: ObjectStatus + Debug;
    /// The kind's name, used in metrics and logs.
    const KIND: &'static str;
    /// An API handle for objects of this kind in `namespace` (ignored for cluster-scoped kinds).
    fn api(client: kube::Client, namespace: Option<&str>) -> Api<Self>;
}

/// Implements [`Managed`] for a namespaced kind.
macro_rules! managed_namespaced {
    ($k:ty, $s:ty) => {
        impl $crate::controller::framework::Managed for $k {
            type KindStatus = $s;
            const KIND: &'static str = stringify!($k);
            fn api(client: kube::Client, namespace: Option<&str>) -> kube::Api<Self> {
                match namespace {
                    Some(ns) => kube::Api::namespaced(client, ns),
                    None => kube::Api::all(client),
                }
            }
        }
    };
}
/// Implements [`Managed`] for a cluster-scoped kind.
macro_rules! managed_cluster {
    ($k:ty, $s:ty) => {
        impl $crate::controller::framework::Managed for $k {
            type KindStatus = $s;
            const KIND: &'static str = stringify!($k);
            fn api(client: kube::Client, _namespace: Option<&str>) -> kube::Api<Self> {
                kube::Api::all(client)
            }
        }
    };
}

use crate::crd::{
    Project, ProjectStatus, ProviderConfig, ProviderConfigStatus, SimCard, SimCardStatus,
    Subscription, SubscriptionStatus, TokenBudget, TokenBudgetStatus, VirtualMachine,
    VirtualMachineStatus,
};
managed_cluster!(ProviderConfig, ProviderConfigStatus);
managed_namespaced!(Project, ProjectStatus);
managed_namespaced!(VirtualMachine, VirtualMachineStatus);
managed_namespaced!(SimCard, SimCardStatus);
managed_namespaced!(Subscription, SubscriptionStatus);
managed_namespaced!(TokenBudget, TokenBudgetStatus);

/// What `apply` concluded.
#[derive(Debug)]
pub struct Applied<S> {
    /// Overall state, turned into Ready/Reconciling/Stalled.
    pub health: Health,
    /// The kind-specific status fields (conditions and observedGeneration are filled in by the framework).
    pub status: S,
    /// When to look again; `None` means the context's default resync interval.
    pub requeue_after: Option<Duration>,
}

/// What `cleanup` concluded.
#[derive(Debug)]
pub enum Cleanup {
    /// Everything is cleaned up: the finalizer may go.
    Done,
    /// Still waiting (e.g. for the vendor to report the object gone); look again after the delay.
    Wait {
        /// Why we are waiting (becomes the Reconciling condition's message).
        message: String,
        /// When to look again.
        requeue_after: Duration,
    },
}

/// A kind's reconcile logic.
pub trait Reconciler<K: Managed>: Send + Sync + 'static {
    /// Converge the world towards `obj`'s spec and report the observed state. Must be idempotent.
    fn apply(
        &self,
        obj: Arc<K>,
        ctx: Arc<Context>,
    ) -> impl Future<Output = Result<Applied<K::KindStatus>, Error>> + Send;
    /// Undo what `apply` did (or nothing, for Orphan). Must be idempotent and tolerate an `apply` that never ran.
    fn cleanup(
        &self,
        obj: Arc<K>,
        ctx: Arc<Context>,
    ) -> impl Future<Output = Result<Cleanup, Error>> + Send;
}

/// The generic reconcile entry point handed to kube-runtime's `Controller::run`.
pub async fn reconcile<K: Managed, R: Reconciler<K>>(
    obj: Arc<K>,
    ctx: Arc<Context>,
    reconciler: Arc<R>,
) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics.reconciles.with_label_values(&[K::KIND]).inc();
    let result = reconcile_inner(obj.clone(), &ctx, &*reconciler).await;
    ctx.metrics
        .reconcile_duration
        .with_label_values(&[K::KIND])
        .observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.reset_failures(&object_key(&*obj));
    }
    result
}

async fn reconcile_inner<K: Managed, R: Reconciler<K>>(
    obj: Arc<K>,
    ctx: &Arc<Context>,
    reconciler: &R,
) -> Result<Action, Error> {
    let api = K::api(ctx.client.clone(), obj.namespace().as_deref());
    let previous = obj.status().cloned().unwrap_or_default();

    if is_paused(&*obj) {
        let mut status = previous.clone();
        let paused = DesiredCondition::new(
            conditions::PAUSED,
            ConditionStatus::True,
            reason::PAUSED,
            format!("reconciliation is paused by the {ANNOTATION_PAUSED} annotation"),
        );
        *status.conditions_mut() = merge_conditions(
            previous.conditions(),
            &[paused],
            obj.meta().generation,
            &now(),
        );
        write_status(&api, &*obj, &previous, status, ctx).await?;
        return Ok(Action::await_change());
    }
    let not_paused = DesiredCondition::new(
        conditions::PAUSED,
        ConditionStatus::False,
        reason::NOT_PAUSED,
        "",
    );

    if obj.meta().deletion_timestamp.is_some() {
        if !obj.finalizers().iter().any(|f| f == FINALIZER) {
            return Ok(Action::await_change());
        }
        return match reconciler.cleanup(obj.clone(), ctx.clone()).await {
            Ok(Cleanup::Done) => {
                remove_finalizer(&api, &*obj).await?;
                publish(
                    ctx,
                    &*obj,
                    EventType::Normal,
                    "Deleted",
                    "cleanup finished; finalizer removed",
                )
                .await;
                Ok(Action::await_change())
            }
            Ok(Cleanup::Wait {
                message,
                requeue_after,
            }) => {
                let health = Health::progressing(reason::DELETING, message);
                let status =
                    with_conditions(&*obj, &previous, previous.clone(), &health, &not_paused);
                transition(ctx, &*obj, &previous, &health).await;
                write_status(&api, &*obj, &previous, status, ctx).await?;
                Ok(Action::requeue(requeue_after))
            }
            Err(e) => fail(&api, &*obj, &previous, e, ctx, &not_paused).await,
        };
    }

    if !obj.finalizers().iter().any(|f| f == FINALIZER) {
        add_finalizer(&api, &*obj).await?;
        // NB: the finalizer patch is itself a watch event; the next reconcile does the real work.
        return Ok(Action::await_change());
    }

    match reconciler.apply(obj.clone(), ctx.clone()).await {
        Ok(applied) => {
            if let Health::Stalled { .. } = applied.health {
                ctx.metrics
                    .reconcile_errors
                    .with_label_values(&[K::KIND, "permanent"])
                    .inc();
            }
            let status = with_conditions(
                &*obj,
                &previous,
                applied.status,
                &applied.health,
                &not_paused,
            );
            transition(ctx, &*obj, &previous, &applied.health).await;
            write_status(&api, &*obj, &previous, status, ctx).await?;
            Ok(match (applied.health, applied.requeue_after) {
                // Waiting for the user: no polling, a spec (or watched dependency) change wakes us.
                (Health::Stalled { .. }, None) => Action::await_change(),
                (_, after) => Action::requeue(after.unwrap_or(ctx.config.resync_interval)),
            })
        }
        Err(e) => fail(&api, &*obj, &previous, e, ctx, &not_paused).await,
    }
}

/// Records an error in status. Permanent: Stalled and wait for a change. Transient: Reconciling=True
/// (Ready left as it was) and hand the error to the error policy for backoff.
async fn fail<K: Managed>(
    api: &Api<K>,
    obj: &K,
    previous: &K::KindStatus,
    e: Error,
    ctx: &Arc<Context>,
    not_paused: &DesiredCondition,
) -> Result<Action, Error> {
    if let Error::Permanent { reason, message } = &e {
        ctx.metrics
            .reconcile_errors
            .with_label_values(&[K::KIND, e.category()])
            .inc();
        let health = Health::stalled(*reason, message.clone());
        let status = with_conditions(obj, previous, previous.clone(), &health, not_paused);
        transition(ctx, obj, previous, &health).await;
        write_status(api, obj, previous, status, ctx).await?;
        return Ok(Action::await_change());
    }
    let retrying = DesiredCondition::new(
        conditions::RECONCILING,
        ConditionStatus::True,
        reason::RETRYING,
        e.to_string(),
    );
    let mut status = previous.clone();
    *status.conditions_mut() = merge_conditions(
        previous.conditions(),
        &[retrying, not_paused.clone()],
        obj.meta().generation,
        &now(),
    );
    status.set_observed_generation(obj.meta().generation);
    // Best effort: the API server may be the thing that is failing.
    if let Err(write_err) = write_status(api, obj, previous, status, ctx).await {
        tracing::debug!(error = %write_err, "could not record the transient error in status");
    }
    Err(e)
}

fn with_conditions<K: Managed>(
    obj: &K,
    previous: &K::KindStatus,
    mut status: K::KindStatus,
    health: &Health,
    not_paused: &DesiredCondition,
) -> K::KindStatus {
    let mut desired = health.conditions();
    desired.push(not_paused.clone());
    *status.conditions_mut() = merge_conditions(
        previous.conditions(),
        &desired,
        obj.meta().generation,
        &now(),
    );
    status.set_observed_generation(obj.meta().generation);
    status
}

/// Whether the paused annotation is set (to anything but "false").
pub fn is_paused<K: Resource>(obj: &K) -> bool {
    obj.annotations()
        .get(ANNOTATION_PAUSED)
        .is_some_and(|v| v != "false")
}

/// Current time, RFC 3339 with second precision (the precision of metav1.Time).
pub fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// `kind/namespace/name`, the key of per-object backoff state.
pub fn object_key<K: Managed>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::KIND,
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
}

/// Writes the whole `status` now (e.g. to record intent before a vendor call), unless it equals `previous`.
pub async fn persist_status<K: Managed>(
    ctx: &Context,
    obj: &K,
    previous: &K::KindStatus,
    status: K::KindStatus,
) -> Result<(), Error> {
    let api = K::api(ctx.client.clone(), obj.namespace().as_deref());
    write_status(&api, obj, previous, status, ctx).await
}

/// Writes `status` by server-side apply unless it equals `previous`.
async fn write_status<K: Managed>(
    api: &Api<K>,
    obj: &K,
    previous: &K::KindStatus,
    status: K::KindStatus,
    ctx: &Context,
) -> Result<(), Error> {
    if &status == previous {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::kube("writing status"))?;
    ctx.metrics
        .status_writes
        .with_label_values(&[K::KIND])
        .inc();
    Ok(())
}

/// Emits an Event when the overall state (which kstatus condition is true, and its reason) changes.
async fn transition<K: Managed>(ctx: &Context, obj: &K, previous: &K::KindStatus, health: &Health) {
    let old = overall(previous.conditions());
    let new_state = match health {
        Health::Ready { .. } => conditions::READY,
        Health::Progressing { .. } => conditions::RECONCILING,
        Health::Stalled { .. } => conditions::STALLED,
        Health::NotReady { .. } => "NotReady",
    };
    if old
        .as_ref()
        .is_some_and(|(s, r)| *s == new_state && r == health.reason())
    {
        return;
    }
    let type_ = if matches!(health, Health::Stalled { .. }) {
        EventType::Warning
    } else {
        EventType::Normal
    };
    publish(ctx, obj, type_, health.reason(), health.message()).await;
}

fn overall(conds: &[crate::crd::Condition]) -> Option<(&'static str, String)> {
    let is_true = |t| conditions::find(conds, t).filter(|c| c.status == ConditionStatus::True);
    if let Some(c) = is_true(conditions::STALLED) {
        return Some((conditions::STALLED, c.reason.clone()));
    }
    if let Some(c) = is_true(conditions::READY) {
        return Some((conditions::READY, c.reason.clone()));
    }
    if let Some(c) = is_true(conditions::RECONCILING) {
        return Some((conditions::RECONCILING, c.reason.clone()));
    }
    conditions::find(conds, conditions::READY).map(|c| ("NotReady", c.reason.clone()))
}

/// Publishes an Event about `obj`; failures are logged, never fatal.
pub async fn publish<K: Managed>(
    ctx: &Context,
    obj: &K,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let ev = Event {
        type_,
        reason: reason.to_string(),
        note: (!note.is_empty()).then(|| note.chars().take(1024).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    let mut reference = obj.object_ref(&());
    let mut result = ctx.recorder.publish(&ev, &reference).await;
    if reference.namespace.is_none() && matches!(&result, Err(kube::Error::Api(s)) if s.code == 422)
    {
        // NB: kube-apiserver < 1.22 rejects events.k8s.io/v1 Events about cluster-scoped objects unless
        // the reference names the Event's namespace; "default" is where they belong.
        reference.namespace = Some("default".into());
        result = ctx.recorder.publish(&ev, &reference).await;
    }
    if let Err(e) = result {
        tracing::warn!(kind = K::KIND, name = %obj.name_any(), error = %e, "failed to publish event");
    }
}

async fn add_finalizer<K: Managed>(api: &Api<K>, obj: &K) -> Result<(), Error> {
    let mut finalizers = obj.finalizers().to_vec();
    finalizers.push(FINALIZER.to_string());
    patch_finalizers(api, obj, finalizers)
        .await
        .map_err(Error::kube("adding the finalizer"))
}

async fn remove_finalizer<K: Managed>(api: &Api<K>, obj: &K) -> Result<(), Error> {
    let finalizers: Vec<String> = obj
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    match patch_finalizers(api, obj, finalizers).await {
        // Already gone: the object was deleted once our finalizer was the last one.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        r => r.map_err(Error::kube("removing the finalizer")),
    }
}

/// Replaces the finalizer list, guarded by `resourceVersion` so a concurrent change by another
/// controller makes this fail with 409 (and retry) instead of being overwritten.
async fn patch_finalizers<K: Managed>(
    api: &Api<K>,
    obj: &K,
    finalizers: Vec<String>,
) -> Result<(), kube::Error> {
    let patch = serde_json::json!({
        "metadata": { "finalizers": finalizers, "resourceVersion": obj.resource_version() }
    });
    api.patch(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::conditions::merge_conditions;

    #[test]
    fn overall_state_prefers_stalled() {
        let c = merge_conditions(
            &[],
            &Health::stalled("MissingSecret", "").conditions(),
            None,
            "t",
        );
        assert_eq!(
            overall(&c),
            Some((conditions::STALLED, "MissingSecret".into()))
        );
        let c = merge_conditions(&[], &Health::ready("").conditions(), None, "t");
        assert_eq!(
            overall(&c),
            Some((conditions::READY, reason::RECONCILED.into()))
        );
        let c = merge_conditions(
            &[],
            &Health::not_ready("Suspended", "").conditions(),
            None,
            "t",
        );
        assert_eq!(overall(&c), Some(("NotReady", "Suspended".into())));
        assert_eq!(overall(&[]), None);
    }

    #[test]
    fn now_is_rfc3339_seconds() {
        let n = now();
        assert!(n.ends_with('Z') && n.len() == 20, "{n}");
    }
}

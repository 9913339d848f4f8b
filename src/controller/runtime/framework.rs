//! The reconcile framework every kind uses. A kind supplies a [`Reconciler`] (its `apply` and `cleanup`);
//! the framework does the rest, in this order:
//!
//! 1. **paused** — `quartermaster.dev/paused` set: the user's changes are not acted on (deletion
//!    included) until the annotation is removed, and a `Paused=True` condition says so. What costs money
//!    is still looked after: the reconciler's [`Reconciler::observe`] keeps metering what exists at the
//!    vendor and applies the Project's money policy (a credit stop), and what it learns is written.
//! 2. **finalizer** — added before the first `apply` (or, for a reconciler with
//!    [`Reconciler::ADDS_FINALIZER`], by the reconciler itself with [`mark`] before its first side
//!    effect); on deletion `cleanup` runs and the finalizer is removed only once cleanup reports done. Other controllers' finalizers are never touched
//!    (optimistic concurrency on `resourceVersion`).
//! 3. **status** — the reconciler's status plus kstatus conditions and `observedGeneration`, written by
//!    server-side apply (field manager `quartermaster`) and skipped when nothing changed.
//! 4. **events** — one Event whenever the overall state (Ready/Reconciling/Stalled and reason) changes
//!    (except a new object's first Reconciling state: its step's own Event says what happens).
//! 5. **errors** — errors the user must act on (vendor refusals, invalid references) become
//!    `Stalled=True` with the vendor's words and wait for a change; transient errors (429, 5xx, timeouts,
//!    API server trouble) set `Reconciling=True, reason=Retrying` and requeue with capped exponential
//!    backoff plus jitter; a suspended ProviderConfig ([`Error::Waiting`]) is `Ready=False` and polled.
//!    Either way the status written is the working one ([`Progress`]): an error never rolls status back.
//! 6. **panics** — contained to the object (`Stalled`, reason `InternalError`), counted, logged.
//! 7. **resync** — healthy objects are looked at again after `quartermaster.dev/resync-interval` (at least
//!    30 s; an unusable value gives a Warning Event and the default) or the controller default.

use std::fmt::Debug;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use kube::api::{Api, Patch, PatchParams};
use kube::core::object::HasStatus;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::wake::Memo;
use super::{Context, Error};
use crate::crd::conditions::{
    self, ConditionStatus, DesiredCondition, Health, event, merge_conditions, reason,
};
use crate::crd::{ANNOTATION_PAUSED, ANNOTATION_RESYNC_INTERVAL, FINALIZER, ObjectStatus};

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

/// Implements [`Managed`] for a namespaced kind (invoked in the kind's folder).
macro_rules! managed_namespaced {
    ($k:ty, $s:ty) => {
        impl $crate::controller::runtime::framework::Managed for $k {
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
/// Implements [`Managed`] for a cluster-scoped kind (invoked in the kind's folder).
macro_rules! managed_cluster {
    ($k:ty, $s:ty) => {
        impl $crate::controller::runtime::framework::Managed for $k {
            type KindStatus = $s;
            const KIND: &'static str = stringify!($k);
            fn api(client: kube::Client, _namespace: Option<&str>) -> kube::Api<Self> {
                kube::Api::all(client)
            }
        }
    };
}

pub(crate) use {managed_cluster, managed_namespaced};

/// The status of one reconcile: what is already persisted, and the working copy the reconciler adds
/// to as it learns (IDs, addresses, metering windows).
///
/// # Guarantees
/// Whatever ends up in `status` is written, on success and on error alike (the error path only adds its
/// condition to it), and [`persist`] writes it in the middle of a reconcile (e.g. intent before a vendor
/// call). So an error never rolls status back past what was already persisted or learned.
#[derive(Debug)]
pub struct Progress<S> {
    persisted: S,
    /// The working status: starts as the object's status; the reconciler updates it in place.
    pub status: S,
}

impl<S: Clone> Progress<S> {
    /// Starts from the status the object was read with (what the API server holds).
    pub fn new(current: S) -> Self {
        Self {
            persisted: current.clone(),
            status: current,
        }
    }

    /// The status as last written (or as read, before any write).
    pub fn persisted(&self) -> &S {
        &self.persisted
    }
}

/// What `apply` concluded (the status itself is in the [`Progress`]).
#[derive(Debug)]
pub struct Outcome {
    /// Overall state, turned into Ready/Reconciling/Stalled.
    pub health: Health,
    /// When to look again. `None`: Ready and NotReady objects resync periodically (the
    /// `quartermaster.dev/resync-interval` annotation, else the controller default), Progressing ones poll,
    /// Stalled ones wait for a change.
    pub requeue_after: Option<Duration>,
    /// An upper bound on the periodic resync (e.g. an open metering window must be closed hourly).
    pub resync_at_most: Option<Duration>,
    /// The reconciler's own Event already told of this state change (e.g. `Created` saying the new
    /// server is ready): the framework publishes no transition Event of its own.
    pub announced: bool,
}

impl Outcome {
    /// An outcome with the default requeue for its health.
    pub fn new(health: Health) -> Self {
        Self {
            health,
            requeue_after: None,
            resync_at_most: None,
            announced: false,
        }
    }

    /// Look again after `after`.
    pub fn requeue_after(mut self, after: Duration) -> Self {
        self.requeue_after = Some(after);
        self
    }

    /// Resync at least this often.
    pub fn resync_at_most(mut self, at_most: Duration) -> Self {
        self.resync_at_most = Some(at_most);
        self
    }
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

/// What a paused object's [`Reconciler::observe`] concluded.
#[derive(Debug, Default)]
pub struct PausedOutcome {
    /// The overall state to show beside `Paused=True`; `None` leaves the conditions as they were.
    pub health: Option<Health>,
    /// When to look again (e.g. an open metering window closes hourly); `None`: on the next change.
    pub requeue_after: Option<Duration>,
}

/// A kind's reconcile logic.
pub trait Reconciler<K: Managed>: Send + Sync + 'static {
    /// The reconciler adds the finalizer itself, with [`mark`], before its first side effect (and may
    /// record intent in the same write); otherwise the framework adds it before the first `apply`.
    const ADDS_FINALIZER: bool = false;
    /// The ProviderConfig (vendor account) `obj` acts through, if any: a refusal of its credentials
    /// seen by any kind makes that ProviderConfig re-check them.
    fn account(obj: &K) -> Option<String> {
        let _ = obj;
        None
    }
    /// Converge the world towards `obj`'s spec, recording what it learns in `progress.status` as it goes.
    /// Must be idempotent.
    fn apply(
        &self,
        obj: Arc<K>,
        ctx: Arc<Context>,
        progress: &mut Progress<K::KindStatus>,
    ) -> impl Future<Output = Result<Outcome, Error>> + Send;
    /// While the object is paused: observe and meter what costs money, and apply money policy (never
    /// the user's spec), recording what it learns in `progress.status`. `Ok(None)`: nothing to observe.
    fn observe(
        &self,
        obj: Arc<K>,
        ctx: Arc<Context>,
        progress: &mut Progress<K::KindStatus>,
    ) -> impl Future<Output = Result<Option<PausedOutcome>, Error>> + Send {
        let _ = (obj, ctx, progress);
        async { Ok(None) }
    }
    /// Undo what `apply` did (or nothing, for Orphan). Must be idempotent and tolerate an `apply` that never ran.
    fn cleanup(
        &self,
        obj: Arc<K>,
        ctx: Arc<Context>,
        progress: &mut Progress<K::KindStatus>,
    ) -> impl Future<Output = Result<Cleanup, Error>> + Send;
}

/// The generic reconcile entry point handed to kube-runtime's `Controller::run`.
///
/// A panic inside one reconcile is contained here: the object goes `Stalled` (reason `InternalError`),
/// `quartermaster_reconcile_panics_total` counts it, and every other object keeps being reconciled.
pub async fn reconcile<K: Managed, R: Reconciler<K>>(
    obj: Arc<K>,
    ctx: Arc<Context>,
    reconciler: Arc<R>,
) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics.reconciles.with_label_values(&[K::KIND]).inc();
    let obj = catch_up(&ctx, obj);
    let mut progress = Progress::new(obj.status().cloned().unwrap_or_default());
    let outcome = AssertUnwindSafe(reconcile_inner(
        obj.clone(),
        &ctx,
        &*reconciler,
        &mut progress,
    ))
    .catch_unwind()
    .await;
    let result = match outcome {
        Ok(result) => result,
        Err(panic) => {
            let what = panic_message(&*panic);
            drop(panic);
            contain_panic(&*obj, &ctx, &mut progress, &what).await
        }
    };
    ctx.metrics
        .reconcile_duration
        .with_label_values(&[K::KIND])
        .observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.reset_failures(&object_key(&*obj));
    }
    result
}

/// After a panic: log it, count it, and stall the object (best effort) instead of the process.
async fn contain_panic<K: Managed>(
    obj: &K,
    ctx: &Arc<Context>,
    progress: &mut Progress<K::KindStatus>,
    what: &str,
) -> Result<Action, Error> {
    tracing::error!(kind = K::KIND, name = %obj.name_any(), namespace = ?obj.namespace(), panic = %what, "reconcile panicked; object stalled");
    ctx.metrics
        .reconcile_panics
        .with_label_values(&[K::KIND])
        .inc();
    let health = Health::stalled(
        reason::INTERNAL_ERROR,
        "the controller hit an internal error while reconciling this object (details in the controller log); \
         other objects are unaffected; change the object or restart the controller to try again",
    );
    let api = K::api(ctx.client.clone(), obj.namespace().as_deref());
    let status = with_conditions(
        obj,
        progress.persisted(),
        progress.status.clone(),
        &health,
        &not_paused(),
    );
    transition(ctx, obj, progress.persisted(), &health).await;
    if let Err(e) = write_status(&api, obj, progress.persisted(), status, ctx).await {
        tracing::warn!(error = %e, "could not record the internal error in status");
    }
    Ok(Action::await_change())
}

/// The message of a panic payload.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

fn not_paused() -> DesiredCondition {
    DesiredCondition::new(
        conditions::PAUSED,
        ConditionStatus::False,
        reason::NOT_PAUSED,
        "",
    )
}

async fn reconcile_inner<K: Managed, R: Reconciler<K>>(
    obj: Arc<K>,
    ctx: &Arc<Context>,
    reconciler: &R,
    progress: &mut Progress<K::KindStatus>,
) -> Result<Action, Error> {
    let api = K::api(ctx.client.clone(), obj.namespace().as_deref());

    if is_paused(&*obj) {
        return paused(&api, obj, ctx, reconciler, progress).await;
    }

    if obj.meta().deletion_timestamp.is_some() {
        return deleting(&api, obj, ctx, reconciler, progress).await;
    }

    if !R::ADDS_FINALIZER && !obj.finalizers().iter().any(|f| f == FINALIZER) {
        mark(ctx, &*obj, &[], None).await?;
        // NB: the finalizer patch is itself a watch event; the next reconcile does the real work.
        return Ok(Action::await_change());
    }

    match reconciler.apply(obj.clone(), ctx.clone(), progress).await {
        Ok(outcome) => applied(&api, &*obj, ctx, progress, outcome).await,
        Err(Error::Waiting { reason, message }) => {
            let health = Health::not_ready(reason, message);
            finish(&api, &*obj, progress, &health, ctx).await?;
            Ok(Action::requeue(ctx.config.poll_interval * 6))
        }
        Err(e) => {
            credentials_refused::<K, R>(ctx, &obj, &e);
            fail(&api, &*obj, progress, e, ctx).await
        }
    }
}

/// A vendor refused the credentials of the account `obj` acts through: its ProviderConfig re-checks
/// them now (for every kind, not only the one that saw it).
fn credentials_refused<K: Managed, R: Reconciler<K>>(ctx: &Context, obj: &K, e: &Error) {
    if let Error::Vendor { source, .. } = e
        && source.is_auth()
        && let Some(pc) = R::account(obj)
    {
        ctx.account_refused(&pc);
    }
}

/// An object being deleted: clean up, then remove the finalizer (or say what cleanup waits for).
async fn deleting<K: Managed, R: Reconciler<K>>(
    api: &Api<K>,
    obj: Arc<K>,
    ctx: &Arc<Context>,
    reconciler: &R,
    progress: &mut Progress<K::KindStatus>,
) -> Result<Action, Error> {
    if !obj.finalizers().iter().any(|f| f == FINALIZER) {
        // Going without us: nothing to clean up, nothing to remember.
        ctx.forget(&object_key(&*obj), obj.uid().as_deref());
        return Ok(Action::await_change());
    }
    let (health, requeue_after) = match reconciler.cleanup(obj.clone(), ctx.clone(), progress).await
    {
        Ok(Cleanup::Done) => {
            remove_finalizer(api, &*obj).await?;
            ctx.forget(&object_key(&*obj), obj.uid().as_deref());
            publish(
                ctx,
                &*obj,
                EventType::Normal,
                event::DELETED,
                "cleanup finished; finalizer removed",
            )
            .await;
            return Ok(Action::await_change());
        }
        Ok(Cleanup::Wait {
            message,
            requeue_after,
        }) => (
            Health::progressing(reason::DELETING, message),
            requeue_after,
        ),
        Err(Error::Waiting { message, .. }) => (
            Health::progressing(reason::DELETING, message),
            ctx.config.poll_interval * 6,
        ),
        Err(e) => {
            credentials_refused::<K, R>(ctx, &obj, &e);
            return fail(api, &*obj, progress, e, ctx).await;
        }
    };
    finish(api, &*obj, progress, &health, ctx).await?;
    Ok(Action::requeue(requeue_after))
}

/// Writes what an apply decided and picks when to look again.
async fn applied<K: Managed>(
    api: &Api<K>,
    obj: &K,
    ctx: &Arc<Context>,
    progress: &mut Progress<K::KindStatus>,
    outcome: Outcome,
) -> Result<Action, Error> {
    if let Health::Stalled { .. } = outcome.health {
        ctx.metrics
            .reconcile_errors
            .with_label_values(&[K::KIND, "permanent"])
            .inc();
    }
    finish_announced(api, obj, progress, &outcome.health, outcome.announced, ctx).await?;
    Ok(match (&outcome.health, outcome.requeue_after) {
        (_, Some(after)) => Action::requeue(after),
        // Waiting for the user: no polling, a spec (or watched dependency) change wakes us — unless
        // something that costs money must still be observed (an open metering window).
        (Health::Stalled { .. }, None) => outcome
            .resync_at_most
            .map_or_else(Action::await_change, Action::requeue),
        (Health::Progressing { .. }, None) => Action::requeue(ctx.config.poll_interval),
        (Health::Ready { .. } | Health::NotReady { .. }, None) => {
            let resync = resync_interval(ctx, obj).await;
            Action::requeue(outcome.resync_at_most.map_or(resync, |m| resync.min(m)))
        }
    })
}

/// A paused object: observe what costs money ([`Reconciler::observe`]), then write what was learned with
/// `Paused=True` (and the observed health, if any). An error is still returned for backoff, after the
/// status is written: what was learned before it is kept.
async fn paused<K: Managed, R: Reconciler<K>>(
    api: &Api<K>,
    obj: Arc<K>,
    ctx: &Arc<Context>,
    reconciler: &R,
    progress: &mut Progress<K::KindStatus>,
) -> Result<Action, Error> {
    let observed = reconciler.observe(obj.clone(), ctx.clone(), progress).await;
    let (outcome, error) = match observed {
        Ok(o) => (o.unwrap_or_default(), None),
        Err(e) => {
            credentials_refused::<K, R>(ctx, &obj, &e);
            (PausedOutcome::default(), Some(e))
        }
    };
    let mut desired = outcome
        .health
        .as_ref()
        .map(Health::conditions)
        .unwrap_or_default();
    desired.push(DesiredCondition::new(
        conditions::PAUSED,
        ConditionStatus::True,
        reason::PAUSED,
        format!(
            "reconciliation is paused by the {ANNOTATION_PAUSED} annotation; usage is still metered"
        ),
    ));
    let previous = progress.persisted();
    let mut status = progress.status.clone();
    *status.conditions_mut() = merge_conditions(
        previous.conditions(),
        &desired,
        obj.meta().generation,
        &now(),
    );
    write_status(api, &*obj, previous, status.clone(), ctx).await?;
    progress.persisted = status.clone();
    progress.status = status;
    if let Some(e) = error {
        return Err(e);
    }
    Ok(outcome
        .requeue_after
        .map_or_else(Action::await_change, Action::requeue))
}

/// Writes the working status with the conditions of `health` (and an Event when the overall state changes).
async fn finish<K: Managed>(
    api: &Api<K>,
    obj: &K,
    progress: &mut Progress<K::KindStatus>,
    health: &Health,
    ctx: &Arc<Context>,
) -> Result<(), Error> {
    finish_announced(api, obj, progress, health, false, ctx).await
}

/// [`finish`], without the transition Event when the reconciler's own Event `announced` it.
async fn finish_announced<K: Managed>(
    api: &Api<K>,
    obj: &K,
    progress: &mut Progress<K::KindStatus>,
    health: &Health,
    announced: bool,
    ctx: &Arc<Context>,
) -> Result<(), Error> {
    let status = with_conditions(
        obj,
        progress.persisted(),
        progress.status.clone(),
        health,
        &not_paused(),
    );
    if !announced {
        transition(ctx, obj, progress.persisted(), health).await;
    }
    write_status(api, obj, progress.persisted(), status.clone(), ctx).await?;
    progress.persisted = status.clone();
    progress.status = status;
    Ok(())
}

/// Records an error in status, on top of everything the reconcile learned before it failed.
/// Errors the user must act on (see [`Error::stall`]): Stalled, and wait for a change. Transient ones:
/// Reconciling=True and Stalled=False (Ready left True only if it was True at this generation, else
/// False for the same reason), and hand the error to the error policy for backoff.
async fn fail<K: Managed>(
    api: &Api<K>,
    obj: &K,
    progress: &mut Progress<K::KindStatus>,
    e: Error,
    ctx: &Arc<Context>,
) -> Result<Action, Error> {
    if let Some((reason, message)) = e.stall() {
        ctx.metrics
            .reconcile_errors
            .with_label_values(&[K::KIND, e.category()])
            .inc();
        let health = Health::stalled(reason, message);
        finish(api, obj, progress, &health, ctx).await?;
        // A stall waits for the user, but whatever the object holds at a vendor still costs money:
        // it is looked at (and metered) again every resync interval, never left until a change.
        return Ok(Action::requeue(ctx.config.resync_interval));
    }
    let retrying = DesiredCondition::new(
        conditions::RECONCILING,
        ConditionStatus::True,
        reason::RETRYING,
        e.to_string(),
    );
    let previous = progress.persisted();
    let mut status = progress.status.clone();
    // kstatus: retrying is never Stalled; Ready stays True only if it was True at this generation (an
    // outage does not undo what converged), else it is False for the same reason.
    let generation = obj.meta().generation;
    let was_ready = conditions::find(previous.conditions(), conditions::READY)
        .is_some_and(|c| c.status == ConditionStatus::True && c.observed_generation == generation);
    let mut desired = vec![
        retrying,
        DesiredCondition::new(
            conditions::STALLED,
            ConditionStatus::False,
            reason::AS_EXPECTED,
            "",
        ),
        not_paused(),
    ];
    if !was_ready {
        desired.push(DesiredCondition::new(
            conditions::READY,
            ConditionStatus::False,
            reason::RETRYING,
            e.to_string(),
        ));
    }
    *status.conditions_mut() =
        merge_conditions(previous.conditions(), &desired, generation, &now());
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
    // Conditions of the kind's own (e.g. a TokenBudget's `Exhausted`) are kept as the reconciler set
    // them in the working status; the kstatus ones follow `health`.
    let own: Vec<_> = status
        .conditions()
        .iter()
        .filter(|c| !desired.iter().any(|d| d.type_ == c.type_))
        .cloned()
        .collect();
    let mut merged = merge_conditions(
        previous.conditions(),
        &desired,
        obj.meta().generation,
        &now(),
    );
    for c in own {
        match merged.iter_mut().find(|m| m.type_ == c.type_) {
            Some(m) => *m = c,
            None => merged.push(c),
        }
    }
    *status.conditions_mut() = merged;
    status.set_observed_generation(obj.meta().generation);
    status
}

/// Shortest periodic resync an object may ask for with `quartermaster.dev/resync-interval`: one tenant's
/// annotation must not drain a shared vendor account's rate limit.
pub const MIN_RESYNC: Duration = Duration::from_secs(30);

/// Parses a resync interval: `30s`, `5m`, `2h` or plain seconds. `Err` says why it is unusable (overflow
/// and zero included); no value can panic or wrap.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('s') => (&s[..s.len() - 1], 1u64),
        Some('m') => (&s[..s.len() - 1], 60),
        Some('h') => (&s[..s.len() - 1], 3600),
        Some(_) => (s, 1),
        None => return Err("empty".into()),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 30s, 5m or 1h"))?;
    let secs = n
        .checked_mul(mult)
        .filter(|secs| *secs <= 366 * 24 * 3600)
        .ok_or_else(|| format!("{s:?} is longer than a year"))?;
    if secs == 0 {
        return Err("zero is not an interval".into());
    }
    Ok(Duration::from_secs(secs))
}

/// The periodic resync of one object: its `quartermaster.dev/resync-interval` annotation (at least
/// [`MIN_RESYNC`]) or the controller default. An unusable value gives one Warning Event per distinct value.
async fn resync_interval<K: Managed>(ctx: &Context, obj: &K) -> Duration {
    let default = ctx.config.resync_interval;
    let Some(raw) = obj.annotations().get(ANNOTATION_RESYNC_INTERVAL) else {
        return default;
    };
    let (interval, problem) = match parse_interval(raw) {
        Ok(d) if d < MIN_RESYNC => (
            MIN_RESYNC,
            Some(format!(
                "{ANNOTATION_RESYNC_INTERVAL}: {raw:?} is below the minimum of {}s; using {}s",
                MIN_RESYNC.as_secs(),
                MIN_RESYNC.as_secs()
            )),
        ),
        Ok(d) => (d, None),
        Err(why) => (
            default,
            Some(format!(
                "{ANNOTATION_RESYNC_INTERVAL}: {why}; using the default of {}s",
                default.as_secs()
            )),
        ),
    };
    if let Some(note) = problem
        && ctx.first_warning(&object_key(obj), raw)
    {
        publish(
            ctx,
            obj,
            EventType::Warning,
            event::INVALID_ANNOTATION,
            &note,
        )
        .await;
    }
    interval
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

/// Writes the working status now (e.g. to record intent before a vendor call), unless nothing changed
/// since the last write.
pub async fn persist<K: Managed>(
    ctx: &Context,
    obj: &K,
    progress: &mut Progress<K::KindStatus>,
) -> Result<(), Error> {
    let api = K::api(ctx.client.clone(), obj.namespace().as_deref());
    write_status(&api, obj, &progress.persisted, progress.status.clone(), ctx).await?;
    progress.persisted = progress.status.clone();
    Ok(())
}

/// The status this process last wrote to each object (by UID), with the `resourceVersion` that write
/// made: what a reconcile starts from while the watch cache still shows an older version.
///
/// Status is written only by the controller (tenants' roles never grant the `status` subresource), so
/// the last write is the truth until the cache shows a version at least as new. `resourceVersion`s are
/// compared as the API server's etcd revisions (integers); one that is not a number is trusted as it is.
pub struct Written<S> {
    last: std::sync::Mutex<std::collections::HashMap<String, (u64, S)>>,
}

impl<S> Default for Written<S> {
    fn default() -> Self {
        Self {
            last: Default::default(),
        }
    }
}

impl<S: Send + Sync + 'static> super::state::KindState for Written<S> {
    fn forget(&self, _key: &str, uid: Option<&str>) {
        if let Some(uid) = uid {
            self.lock().remove(uid);
        }
    }
}

impl<S> Written<S> {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (u64, S)>> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<S: Clone> Written<S> {
    /// Records that the write of object `uid` made `resource_version` holding `status`.
    pub fn wrote(&self, uid: &str, resource_version: Option<&str>, status: S) {
        let Some(rv) = resource_version.and_then(|v| v.parse::<u64>().ok()) else {
            return;
        };
        let mut last = self.lock();
        match last.get(uid) {
            Some((newer, _)) if *newer > rv => {}
            _ => {
                last.insert(uid.to_string(), (rv, status));
            }
        }
    }

    /// The status last written to `uid` when `cached` (the cache's `resourceVersion`) is older than
    /// that write; once the cache caught up, the write is forgotten.
    pub fn newer_than(&self, uid: &str, cached: Option<&str>) -> Option<S> {
        let cached = cached?.parse::<u64>().ok()?;
        let mut last = self.lock();
        let (rv, status) = last.get(uid)?;
        if cached < *rv {
            return Some(status.clone());
        }
        last.remove(uid);
        None
    }
}

/// `obj` as the controller last wrote it: where the watch cache still shows a version older than this
/// process's own last status write, the reconcile starts from that write's status (so nothing it
/// recorded — an ID, an address, a metering window — is written back out).
fn catch_up<K: Managed>(ctx: &Context, obj: Arc<K>) -> Arc<K> {
    let Some(uid) = obj.uid() else {
        return obj;
    };
    let Some(status) = ctx
        .state::<Written<K::KindStatus>>()
        .newer_than(&uid, obj.resource_version().as_deref())
    else {
        return obj;
    };
    ctx.metrics
        .stale_cache_starts
        .with_label_values(&[K::KIND])
        .inc();
    let mut newer = (*obj).clone();
    *newer.status_mut() = Some(status);
    Arc::new(newer)
}

/// Saves the working status, then publishes `notes` (each a Warning with `reason`): what they announce
/// (a threshold crossed, a quota used) is in status first, so a failed write never repeats an
/// announcement and no announcement goes out for what status does not hold.
pub async fn save_then_warn<K: Managed>(
    ctx: &Context,
    obj: &K,
    progress: &mut Progress<K::KindStatus>,
    reason: &str,
    notes: &[String],
) -> Result<(), Error> {
    if notes.is_empty() {
        return Ok(());
    }
    persist(ctx, obj, progress).await?;
    for note in notes {
        publish(ctx, obj, EventType::Warning, reason, note).await;
    }
    Ok(())
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
    let written = api
        .patch_status(
            &obj.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::kube("writing status"))?;
    if let (Some(uid), Some(status)) = (written.uid(), written.status()) {
        ctx.state::<Written<K::KindStatus>>().wrote(
            &uid,
            written.resource_version().as_deref(),
            status.clone(),
        );
    }
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
    // A new object starting work is not news (and at 10,000 objects it is 10,000 writes): the step's own
    // Event (e.g. Created) says what happens; its first Ready, Stalled or NotReady is published.
    if old.is_none() && matches!(health, Health::Progressing { .. }) {
        return;
    }
    let type_ = if matches!(health, Health::Stalled { .. }) || health.reason() == reason::UNPRICED {
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

/// Adds our finalizer (when missing) and sets `annotations`, in one write guarded by `resourceVersion`:
/// a concurrent change, or a cached copy older than the object, makes it fail with a conflict (retried)
/// instead of acting on stale facts. Writes nothing when both are in place already. `own` (the
/// controller's trigger memo) learns the result before the write, so the write does not wake the object.
pub async fn mark<K: Managed>(
    ctx: &Context,
    obj: &K,
    annotations: &[(&str, String)],
    own: Option<&Memo<K>>,
) -> Result<(), Error> {
    let mut next = obj.clone();
    let meta = next.meta_mut();
    let finalizers = meta.finalizers.get_or_insert_with(Vec::new);
    if !finalizers.iter().any(|f| f == FINALIZER) {
        finalizers.push(FINALIZER.to_string());
    }
    let anns = meta.annotations.get_or_insert_with(Default::default);
    for (k, v) in annotations {
        anns.insert((*k).to_string(), v.clone());
    }
    if next.finalizers() == obj.finalizers() && next.annotations() == obj.annotations() {
        return Ok(());
    }
    if let Some(memo) = own {
        memo.expect(&next);
    }
    let set: serde_json::Map<String, serde_json::Value> = annotations
        .iter()
        .map(|(k, v)| ((*k).to_string(), serde_json::Value::from(v.as_str())))
        .collect();
    let patch = serde_json::json!({
        "metadata": {
            "finalizers": next.finalizers(),
            "annotations": set,
            "resourceVersion": obj.resource_version(),
        }
    });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    K::api(ctx.client.clone(), obj.namespace().as_deref())
        .patch(&obj.name_any(), &params, &Patch::Merge(&patch))
        .await
        .map_err(Error::kube("adding the finalizer"))?;
    Ok(())
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
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    api.patch(&obj.name_any(), &params, &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::conditions::merge_conditions;

    /// A cache older than the last write starts from that write; a cache as new (or newer: another
    /// writer) is trusted and the write forgotten; an unreadable version is trusted as it is.
    #[test]
    fn a_reconcile_starts_from_the_last_write_while_the_cache_lags() {
        let w = Written::<&str>::default();
        w.wrote("u", Some("120"), "with the server ID");
        assert_eq!(w.newer_than("u", Some("119")), Some("with the server ID"));
        assert_eq!(w.newer_than("other", Some("1")), None);
        // An older write's answer arriving late does not replace a newer one.
        w.wrote("u", Some("110"), "older");
        assert_eq!(w.newer_than("u", Some("115")), Some("with the server ID"));
        assert_eq!(w.newer_than("u", Some("120")), None);
        assert_eq!(
            w.newer_than("u", Some("100")),
            None,
            "forgotten once caught up"
        );
        w.wrote("u", Some("130"), "later");
        assert_eq!(w.newer_than("u", Some("x")), None);
        assert_eq!(w.newer_than("u", Some("129")), Some("later"));
        assert_eq!(w.newer_than("u", Some("131")), None);
        w.wrote("v", Some("7"), "gone");
        super::super::state::KindState::forget(&w, "k", Some("v"));
        assert_eq!(w.newer_than("v", Some("1")), None);
    }

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

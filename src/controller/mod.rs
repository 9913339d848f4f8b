//! Controllers: the shared [`Context`], the reconcile [`framework`], leader election ([`leader`]) and one
//! module per kind. [`run`] starts every implemented controller and returns when they have shut down.
//!
//! Each controller watches its kind through a predicate filter (generation, labels, annotations,
//! finalizers, deletion): status-only writes — including our own — do not trigger a reconcile.

pub mod cache;
pub mod error;
pub mod events;
pub mod framework;
pub mod leader;
pub mod listings;
pub mod names;
pub mod project;
pub mod provider_config;
pub mod sim_card;
pub mod sim_message;
pub mod subscription;
pub mod token_budget;
pub mod vendor;
pub mod virtual_machine;
pub mod wake;

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::{FutureExt, StreamExt, future::BoxFuture};
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};

pub use crate::http::backoff_delay;
pub use error::Error;
use framework::{Managed, Reconciler, object_key};

use crate::crd::conditions::reason;
use crate::crd::{
    Project, ProviderConfig, SimCard, SimMessage, Subscription, TokenBudget, VirtualMachine,
};
use crate::metrics::Metrics;
use crate::server::Readiness;

/// Tunables of the controllers.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// Default interval between periodic reconciles of a healthy object.
    pub resync_interval: Duration,
    /// First retry delay after a transient error.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_cap: Duration,
    /// Only objects matching this label selector are reconciled (sharding, tests). Empty: all.
    pub label_selector: Option<String>,
    /// How often an object with vendor work in progress is looked at again.
    pub poll_interval: Duration,
    /// Per-attempt timeout of vendor calls.
    pub vendor_timeout: Duration,
    /// How long a vendor catalog (sizes, images, regions) is cached.
    pub catalog_ttl: Duration,
    /// How long to wait before looking for a tagged server a second time when intent was recorded but
    /// the first look found nothing (vendor listings can lag a create).
    pub listing_lag: Duration,
    /// How often each compute account is listed to see drift (a server gone, powered off or resized at
    /// the vendor) and wake the VMs it concerns.
    pub observe_interval: Duration,
    /// How often a SimCard at rest reads its quotas and usage SIM by SIM (between such reads its
    /// account's SIM listing serves it, unless the listing shows its quota moved).
    pub sim_usage_interval: Duration,
    /// How often a Subscription whose plan bills usage through Stripe reports its Project's new usage.
    pub stripe_usage_interval: Duration,
    /// How often a TokenBudget's status is refreshed from the ledger (consumed, reserved, remaining).
    pub budget_status_interval: Duration,
    /// How many reconciles of each kind run at once.
    pub concurrency: Concurrency,
    /// A Project's reconcile waits this long after the last change of its members (coalescing a burst
    /// of member changes into one recount).
    pub project_debounce: Duration,
}

/// Reconciles that may run at once, per kind (0: unbounded).
#[derive(Clone, Copy, Debug)]
pub struct Concurrency {
    /// ProviderConfigs.
    pub provider_config: u16,
    /// Projects.
    pub project: u16,
    /// VirtualMachines.
    pub virtual_machine: u16,
}

impl Default for Concurrency {
    fn default() -> Self {
        Self {
            provider_config: 4,
            project: 4,
            virtual_machine: 128,
        }
    }
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            resync_interval: Duration::from_secs(600),
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(300),
            label_selector: None,
            poll_interval: Duration::from_secs(5),
            vendor_timeout: Duration::from_secs(30),
            catalog_ttl: Duration::from_secs(3600),
            listing_lag: Duration::from_secs(2),
            observe_interval: Duration::from_secs(55),
            sim_usage_interval: Duration::from_secs(3600),
            stripe_usage_interval: Duration::from_secs(300),
            budget_status_interval: Duration::from_secs(30),
            concurrency: Concurrency::default(),
            project_debounce: Duration::from_millis(500),
        }
    }
}

/// Shared state of every reconcile.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Process metrics.
    pub metrics: Metrics,
    /// Event recorder (reporter `quartermaster`).
    pub recorder: events::EventRecorder,
    /// Tunables.
    pub config: ControllerConfig,
    /// Vendor HTTP metrics (registered in `metrics`).
    pub http_metrics: crate::http::HttpMetrics,
    /// Vendor clients per ProviderConfig.
    pub providers: vendor::Providers,
    /// Vendor catalogs per ProviderConfig.
    pub catalogs: crate::cloud::catalog::CatalogCache,
    /// The usage ledger; `None` disables metering and credits.
    pub ledger: Option<crate::ledger::Ledger>,
    caches: OnceLock<cache::Caches>,
    pending_usage: Mutex<HashMap<String, i64>>,
    failures: Mutex<HashMap<String, u32>>,
    warned: Mutex<HashMap<String, String>>,
    last_seen: Mutex<HashMap<String, i64>>,
    sighted: Mutex<std::collections::HashSet<String>>,
    listings: Mutex<HashMap<String, virtual_machine::observe::Listing>>,
    rejected_tx: tokio::sync::mpsc::UnboundedSender<String>,
    rejected_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<String>>>,
    stripe_tx: tokio::sync::mpsc::UnboundedSender<crate::cloud::stripe_event::StripeHint>,
    stripe_rx:
        Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<crate::cloud::stripe_event::StripeHint>>>,
    /// The credentials Secrets' own finalizer writes: `namespace/name` → the resourceVersion they made.
    secret_writes: Mutex<HashMap<String, String>>,
    /// The latest SIM listing of each 1NCE account.
    pub sim_listings: listings::Listings<crate::cloud::onence::Sim>,
    /// The latest subscription listing of each Stripe account.
    pub stripe_listings: listings::Listings<crate::cloud::stripe::Subscription>,
    stripe_fresh: Mutex<std::collections::HashSet<String>>,
    /// When each Subscription (by UID) last read Stripe directly: an account listing older than that
    /// must not overwrite what the direct read learned.
    stripe_read: Mutex<HashMap<String, i64>>,
    /// Stripe's per-subscription limits (updates an hour, invoices a minute).
    pub stripe_windows: subscription::limits::Windows,
    /// Which TokenBudgets have new usage in the ledger.
    pub budget_activity: token_budget::activity::Activity,
}

impl Context {
    /// A context for the given client; `instance` identifies this replica in Events.
    pub fn new(
        client: Client,
        metrics: Metrics,
        config: ControllerConfig,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: "quartermaster".into(),
            instance,
        };
        let (rejected_tx, rejected_rx) = tokio::sync::mpsc::unbounded_channel();
        let (stripe_tx, stripe_rx) = tokio::sync::mpsc::unbounded_channel();
        Self {
            recorder: events::EventRecorder::new(client.clone(), reporter),
            client,
            http_metrics: crate::http::HttpMetrics::register(metrics.registry()),
            metrics,
            providers: vendor::Providers::default(),
            catalogs: crate::cloud::catalog::CatalogCache::new(config.catalog_ttl),
            ledger: None,
            caches: OnceLock::new(),
            pending_usage: Mutex::default(),
            config,
            failures: Mutex::default(),
            warned: Mutex::default(),
            last_seen: Mutex::default(),
            sighted: Mutex::default(),
            listings: Mutex::default(),
            rejected_tx,
            rejected_rx: Mutex::new(Some(rejected_rx)),
            stripe_tx,
            stripe_rx: Mutex::new(Some(stripe_rx)),
            secret_writes: Mutex::default(),
            sim_listings: Default::default(),
            stripe_listings: Default::default(),
            stripe_windows: Default::default(),
            budget_activity: Default::default(),
            stripe_fresh: Mutex::default(),
            stripe_read: Mutex::default(),
        }
    }

    /// Remembers that this controller's own write made `resource_version` of Secret `key`
    /// (`namespace/name`), so the watch event it causes wakes nothing.
    pub fn wrote_secret(&self, key: String, resource_version: String) {
        self.secret_writes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, resource_version);
    }

    /// Whether this version of Secret `key` is this controller's own write (forgotten once seen).
    fn own_secret_write(&self, key: &str, resource_version: Option<&str>) -> bool {
        let mut writes = self.secret_writes.lock().unwrap_or_else(|p| p.into_inner());
        let own = writes.get(key).map(String::as_str) == resource_version;
        if own || resource_version.is_some() {
            writes.remove(key);
        }
        own
    }

    /// The watch caches (set when [`run`] starts the controllers).
    pub fn caches(&self) -> Result<&cache::Caches, Error> {
        self.caches.get().ok_or_else(|| {
            Error::permanent(
                reason::INTERNAL_ERROR,
                "the controllers' watch caches are not running",
            )
        })
    }

    /// A vendor refused the credentials of ProviderConfig `name` (401/403) on some call: its reconciler
    /// re-checks them now instead of at its next periodic check, so it (and every object using it) says why.
    pub fn credentials_rejected(&self, name: &str) {
        // A closed channel means no ProviderConfig controller runs in this process (e.g. a CLI command).
        let _ = self.rejected_tx.send(name.to_string());
    }

    /// A Stripe event concerns the Subscription `hint` names: wake it (its reconcile reads Stripe). False
    /// when no controller runs in this process (a standby, or the controllers have not started).
    pub fn stripe_event(&self, hint: crate::cloud::stripe_event::StripeHint) -> bool {
        if self.caches.get().is_none() {
            return false;
        }
        hint == crate::cloud::stripe_event::StripeHint::default()
            || self.stripe_tx.send(hint).is_ok()
    }

    /// Records that a Stripe event concerns the Subscription of `uid`: its next reconcile reads Stripe,
    /// not the account's listing.
    pub fn stripe_event_for(&self, uid: &str) {
        self.stripe_fresh
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid.to_string());
    }

    /// The Subscription of `uid` read Stripe directly at `at` (unix seconds).
    pub fn read_stripe_directly(&self, uid: &str, at: i64) {
        self.stripe_read
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid.to_string(), at);
    }

    /// When the Subscription of `uid` last read Stripe directly (since this process started).
    pub fn stripe_read_at(&self, uid: &str) -> Option<i64> {
        self.stripe_read
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
            .copied()
    }

    /// Whether a Stripe event concerned the Subscription of `uid` since its last reconcile (forgotten).
    pub fn take_stripe_event(&self, uid: &str) -> bool {
        self.stripe_fresh
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid)
    }

    /// True the first time `value` is reported for `key` (and again after the value changed): keeps a
    /// Warning Event about a bad annotation from repeating on every reconcile.
    pub fn first_warning(&self, key: &str, value: &str) -> bool {
        let mut m = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        m.insert(key.to_string(), value.to_string()).as_deref() != Some(value)
    }

    /// Records that the vendor server of object `uid` was seen existing at `at` (unix seconds): if it is
    /// later found gone, its metering window closes there, not when the loss is noticed.
    pub fn saw(&self, uid: &str, at: i64) {
        let mut m = self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
        // Never backwards: a listing that started before a VM's own read does not undo that sighting.
        let seen = m.entry(uid.to_string()).or_insert(at);
        *seen = (*seen).max(at);
    }

    /// When the vendor server of object `uid` was last seen existing (since this process started).
    pub fn last_seen(&self, uid: &str) -> Option<i64> {
        let m = self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
        m.get(uid).copied()
    }

    /// Keeps the latest listing of ProviderConfig `pc`'s account (and the oldest one's time as a metric).
    pub fn set_listing(&self, pc: &str, listing: virtual_machine::observe::Listing) {
        let mut m = self.listings.lock().unwrap_or_else(|p| p.into_inner());
        m.insert(pc.to_string(), listing);
        if let Some(oldest) = m.values().map(|l| l.at).min() {
            self.metrics.oldest_listing.set(oldest);
        }
    }

    /// The latest listing of ProviderConfig `pc`'s account, if any.
    pub fn listing(&self, pc: &str) -> Option<virtual_machine::observe::Listing> {
        let m = self.listings.lock().unwrap_or_else(|p| p.into_inner());
        m.get(pc).cloned()
    }

    /// True the first time this process sees `key` (until it is forgotten): for work done once per object
    /// and process, such as a Project claiming the ledger rows recorded before UIDs.
    pub fn first_sighting(&self, key: &str) -> bool {
        let mut m = self.sighted.lock().unwrap_or_else(|p| p.into_inner());
        m.insert(key.to_string())
    }

    /// Releases what this process remembers of an object that is gone (`key` as
    /// [`framework::object_key`], and its UID): warnings, last sightings, backoff.
    pub fn forget(&self, key: &str, uid: Option<&str>) {
        self.warned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        self.sighted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        if let Some(uid) = uid {
            self.stripe_read
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(uid);
            self.last_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(uid);
            self.sighted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(uid);
        }
        self.reset_failures(key);
    }

    /// Adds the usage ledger.
    pub fn with_ledger(mut self, ledger: crate::ledger::Ledger) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// Records usage events; counts, times and (on failure) buffers them in the metrics.
    pub async fn record_usage(
        &self,
        events: &[crate::ledger::UsageEvent],
    ) -> Result<(), crate::ledger::LedgerError> {
        let Some(ledger) = &self.ledger else {
            return Ok(());
        };
        if events.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let result = ledger.record(events).await;
        self.metrics
            .ledger_write_duration
            .observe(started.elapsed().as_secs_f64());
        if result.is_ok() {
            for e in events {
                self.metrics
                    .usage_events
                    .with_label_values(&[e.meter.as_str()])
                    .inc();
                if e.project_uid.is_empty() && e.project.is_empty() {
                    self.metrics
                        .usage_without_project
                        .with_label_values(&[e.meter.as_str()])
                        .inc_by(u64::try_from(e.quantity).unwrap_or(0));
                }
                if e.currency.is_empty() {
                    self.metrics
                        .unpriced_usage
                        .with_label_values(&[e.meter.as_str()])
                        .inc_by(u64::try_from(e.quantity).unwrap_or(0));
                }
            }
        }
        result.map(|_| ())
    }

    /// Records that `n` usage events of object `uid` wait for the ledger (0: none); keeps the buffer gauge.
    pub fn set_pending_usage(&self, uid: &str, n: usize) {
        let mut m = self.pending_usage.lock().unwrap_or_else(|p| p.into_inner());
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let old = if n == 0 {
            m.remove(uid).unwrap_or(0)
        } else {
            m.insert(uid.to_string(), n).unwrap_or(0)
        };
        self.metrics.ledger_buffer_depth.add(n - old);
    }

    fn bump_failures(&self, key: &str) -> u32 {
        let mut m = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    fn reset_failures(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// Transient errors: capped exponential backoff with jitter, per object.
fn error_policy<K: Managed>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .with_label_values(&[K::KIND, err.category()])
        .inc();
    let attempt = ctx.bump_failures(&object_key(&*obj));
    let delay = backoff_delay(
        attempt,
        ctx.config.backoff_base,
        ctx.config.backoff_cap,
        rand::random::<f64>(),
    );
    tracing::warn!(kind = K::KIND, name = %obj.name_any(), namespace = ?obj.namespace(), category = err.category(), error = %err, attempt, ?delay, "reconcile failed; requeueing");
    Action::requeue(delay)
}

/// Drives a built controller to completion with the framework's reconcile and error policy.
fn drive<K: Managed, R: Reconciler<K>>(
    controller: Controller<K>,
    reconciler: R,
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> BoxFuture<'static, ()>
where
    K::DynamicType: Eq + Hash + Clone + Unpin,
{
    let reconciler = Arc::new(reconciler);
    controller
        .graceful_shutdown_on(shutdown)
        .run(
            move |obj, ctx| framework::reconcile(obj, ctx, reconciler.clone()),
            error_policy::<K>,
            ctx,
        )
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .boxed()
}

/// An mpsc receiver as a stream.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Runs every implemented controller until `shutdown` resolves; marks `health` synced once every
/// cache is filled. Reconciles start only then (see [`cache`]).
/// `shutdown` is cloned into every controller (e.g. a `futures::future::Shared`).
pub async fn run(
    ctx: Arc<Context>,
    health: Arc<Readiness>,
    shutdown: impl Future<Output = ()> + Clone + Send + Sync + 'static,
) {
    let mut feeds = cache::Feeds::new(&ctx.client, ctx.config.label_selector.as_deref());
    let vm_deletions = feeds.vm_deletions.take();
    let caches = feeds.caches.clone();
    if ctx.caches.set(caches.clone()).is_err() {
        tracing::warn!("controllers already ran with this context; reusing its caches");
    }
    // Drift seen in an account's listing wakes the VMs it concerns (see `observe`).
    let (drift_tx, drift_rx) = tokio::sync::mpsc::unbounded_channel();
    let pc = provider_config_controller(&ctx, &feeds, &caches);
    let vm = vm_controller(&ctx, &feeds, &caches, drift_rx);
    let proj = project_controller(&ctx, &feeds, &caches, vm_deletions);
    let sims = sim_controller(&ctx, &feeds, &caches);
    let messages = message_controller(&ctx);
    let subscriptions = subscription_controller(&ctx, &feeds, &caches);
    let budgets = budget_controller(&ctx, &feeds);

    let watches = feeds.run();
    let controllers = async {
        if !caches.ready().await {
            return;
        }
        tracing::info!("controller caches synced");
        health.set_synced(true);
        let observer = virtual_machine::observe::run(ctx.clone(), drift_tx).boxed();
        futures::future::join_all([
            observer,
            health_gauges(ctx.clone(), caches.clone()).boxed(),
            drive(
                pc,
                provider_config::ProviderConfigReconciler,
                ctx.clone(),
                shutdown.clone(),
            ),
            drive(
                vm,
                virtual_machine::VirtualMachineReconciler,
                ctx.clone(),
                shutdown.clone(),
            ),
            drive(
                proj,
                project::ProjectReconciler,
                ctx.clone(),
                shutdown.clone(),
            ),
            drive(
                sims,
                sim_card::SimCardReconciler,
                ctx.clone(),
                shutdown.clone(),
            ),
            drive(
                messages,
                sim_message::SimMessageReconciler,
                ctx.clone(),
                shutdown.clone(),
            ),
            drive(
                subscriptions,
                subscription::SubscriptionReconciler,
                ctx.clone(),
                shutdown.clone(),
            ),
            drive(
                budgets,
                token_budget::TokenBudgetReconciler,
                ctx.clone(),
                shutdown.clone(),
            ),
        ])
        .await;
    };
    tokio::select! {
        _ = controllers => {}
        _ = watches => {}
        _ = shutdown.clone() => {}
    }
    health.set_synced(false);
}

/// Counts Stalled objects per kind and unreachable ProviderConfigs from the caches, every 30 s (for
/// the chart's alerts).
async fn health_gauges(ctx: Arc<Context>, caches: cache::Caches) {
    use crate::crd::conditions::{self, ConditionStatus};
    fn stalled<K: kube::Resource<DynamicType = ()> + Clone + 'static>(
        store: &kube::runtime::reflector::Store<K>,
        conds: impl Fn(&K) -> Option<Vec<crate::crd::conditions::Condition>>,
    ) -> i64 {
        store
            .state()
            .iter()
            .filter(|o| {
                conds(o).is_some_and(|c| {
                    conditions::find(&c, conditions::STALLED)
                        .is_some_and(|s| s.status == ConditionStatus::True)
                })
            })
            .count() as i64
    }
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tick.tick().await;
        let g = &ctx.metrics.stalled;
        let c = |s: Option<&Vec<crate::crd::conditions::Condition>>| s.cloned();
        g.with_label_values(&["ProviderConfig"])
            .set(stalled(&caches.provider_configs, |o| {
                c(o.status.as_ref().map(|s| &s.conditions))
            }));
        g.with_label_values(&["Project"])
            .set(stalled(&caches.projects, |o| {
                c(o.status.as_ref().map(|s| &s.conditions))
            }));
        g.with_label_values(&["VirtualMachine"])
            .set(stalled(&caches.vms, |o| {
                c(o.status.as_ref().map(|s| &s.conditions))
            }));
        g.with_label_values(&["SimCard"])
            .set(stalled(&caches.sims, |o| {
                c(o.status.as_ref().map(|s| &s.conditions))
            }));
        g.with_label_values(&["Subscription"])
            .set(stalled(&caches.subscriptions, |o| {
                c(o.status.as_ref().map(|s| &s.conditions))
            }));
        let unreachable = caches
            .provider_configs
            .state()
            .iter()
            .filter(|p| {
                p.status.as_ref().is_some_and(|s| {
                    conditions::find(&s.conditions, conditions::READY)
                        .is_some_and(|r| r.reason == reason::UNREACHABLE)
                })
            })
            .count();
        ctx.metrics.unreachable.set(unreachable as i64);
    }
}

/// Subscription: its own changes, its ProviderConfig's (plans, suspension), and the Stripe events that
/// concern it (see `crate::webhooks`).
fn subscription_controller(
    ctx: &Arc<Context>,
    feeds: &cache::Feeds,
    caches: &cache::Caches,
) -> Controller<Subscription> {
    let c = Controller::for_shared_stream(
        wake::own_changes(
            feeds.subscriptions.subscribe(),
            caches.subscriptions.clone(),
            Arc::default(),
        ),
        caches.subscriptions.clone(),
    )
    .with_config(runtime_config(16, Duration::ZERO));
    let all = caches.subscriptions.clone();
    let c = c.watches_shared_stream(feeds.provider_configs.subscribe(), move |pc| {
        let name = pc.name_any();
        all.state()
            .iter()
            .filter(|s| s.spec.provider_config_ref.name == name)
            .map(|s| ObjectRef::from_obj(&**s))
            .collect::<Vec<_>>()
    });
    let hints = ctx
        .stripe_rx
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let Some(rx) = hints else {
        return c;
    };
    let (all, own) = (caches.subscriptions.clone(), ctx.clone());
    c.reconcile_on(
        tokio_stream_from(rx)
            .flat_map(move |h| futures::stream::iter(subscription::concerned(&all, &own, &h))),
    )
}

/// TokenBudget: its own watch; its key Secrets (a deleted one is rotated); and the Projects,
/// Subscriptions and ProviderConfigs it names (money stops, periods and plans, upstreams).
fn budget_controller(ctx: &Arc<Context>, feeds: &cache::Feeds) -> Controller<TokenBudget> {
    let mut cfg = watcher::Config::default();
    if let Some(sel) = &ctx.config.label_selector {
        cfg = cfg.labels(sel);
    }
    let c = Controller::new(Api::<TokenBudget>::all(ctx.client.clone()), cfg)
        .with_config(runtime_config(8, Duration::ZERO));
    let store = c.store();
    let naming = move |ns: String, pred: Box<dyn Fn(&TokenBudget) -> bool + Send>| {
        store
            .state()
            .iter()
            .filter(|b| b.namespace().as_deref() == Some(ns.as_str()) && pred(b))
            .map(|b| ObjectRef::from_obj(&**b))
            .collect::<Vec<_>>()
    };
    let (by_project, by_sub) = (naming.clone(), naming);
    let all = c.store();
    c.watches_shared_stream(feeds.connection_secrets.subscribe(), |s| {
        let ns = s.namespace().unwrap_or_default();
        s.owner_references()
            .iter()
            .filter(|o| o.kind == "TokenBudget")
            .map(|o| ObjectRef::<TokenBudget>::new(&o.name).within(&ns))
            .collect::<Vec<_>>()
    })
    .watches_shared_stream(feeds.projects.subscribe(), move |p| {
        let name = p.name_any();
        by_project(
            p.namespace().unwrap_or_default(),
            Box::new(move |b| b.spec.project_ref.as_ref().is_some_and(|r| r.name == name)),
        )
    })
    .watches_shared_stream(feeds.subscriptions.subscribe(), move |s| {
        let name = s.name_any();
        by_sub(
            s.namespace().unwrap_or_default(),
            Box::new(move |b| {
                b.spec
                    .subscription_ref
                    .as_ref()
                    .is_some_and(|r| r.name == name)
            }),
        )
    })
    .watches_shared_stream(feeds.provider_configs.subscribe(), move |pc| {
        let name = pc.name_any();
        all.state()
            .iter()
            .filter(|b| {
                std::iter::once(&b.spec.provider_config_ref)
                    .chain(&b.spec.fallback_provider_config_refs)
                    .any(|r| r.name == name)
            })
            .map(|b| ObjectRef::from_obj(&**b))
            .collect::<Vec<_>>()
    })
}

/// SimMessage: its own watch (a message is sent once; a SimCard's change does not concern it once sent,
/// and one waiting for its SimCard looks again every 30 s).
fn message_controller(ctx: &Arc<Context>) -> Controller<SimMessage> {
    let mut cfg = watcher::Config::default();
    if let Some(sel) = &ctx.config.label_selector {
        cfg = cfg.labels(sel);
    }
    Controller::new(Api::<SimMessage>::all(ctx.client.clone()), cfg)
        .with_config(runtime_config(4, Duration::ZERO))
}

/// SimCard: its own changes, and the SimCards of a ProviderConfig when it changes (its `simClaims` or
/// suspension decide what they may do).
fn sim_controller(
    ctx: &Arc<Context>,
    feeds: &cache::Feeds,
    caches: &cache::Caches,
) -> Controller<SimCard> {
    let sims = Controller::for_shared_stream(
        wake::own_changes(feeds.sims.subscribe(), caches.sims.clone(), Arc::default()),
        caches.sims.clone(),
    )
    .with_config(runtime_config(
        ctx.config.concurrency.provider_config.max(16),
        Duration::ZERO,
    ));
    let all = caches.sims.clone();
    let (members, projects) = (caches.sim_members.clone(), caches.projects.clone());
    let memo = wake::Memo::<Project>::default();
    sims.watches_shared_stream(feeds.provider_configs.subscribe(), move |pc| {
        let name = pc.name_any();
        all.state()
            .iter()
            .filter(|s| s.spec.provider_config_ref.name == name)
            .map(|s| ObjectRef::from_obj(&**s))
            .collect::<Vec<_>>()
    })
    // A Project's spec (limits) or credit stop decides what its SimCards may do.
    .watches_shared_stream(feeds.projects.subscribe(), move |p| {
        if memo.changed_in(&*p, wake::project_for_members(&p), &projects) {
            members.members(&p.namespace().unwrap_or_default(), &p.name_any())
        } else {
            Vec::new()
        }
    })
}

/// ProviderConfig: its own changes, any Secret it references, and at once when an object saw the vendor
/// refuse its credentials.
fn provider_config_controller(
    ctx: &Arc<Context>,
    feeds: &cache::Feeds,
    caches: &cache::Caches,
) -> Controller<ProviderConfig> {
    let cfg = &ctx.config;

    let pc = Controller::for_shared_stream(
        wake::own_changes(
            feeds.provider_configs.subscribe(),
            caches.provider_configs.clone(),
            Arc::default(),
        ),
        caches.provider_configs.clone(),
    )
    .with_config(runtime_config(
        cfg.concurrency.provider_config,
        Duration::ZERO,
    ));
    // NB: the Secrets Quartermaster writes itself (connection Secrets, one per VM) are never credentials:
    // leaving them out halves the Secret traffic of a large fleet.
    let secrets = watcher(
        Api::<PartialObjectMeta<Secret>>::all(ctx.client.clone()),
        watcher::Config::default().labels(cache::NOT_MANAGED_BY),
    )
    .default_backoff()
    .touched_objects();
    let pcs = caches.provider_configs.clone();
    let own = ctx.clone();
    let pc = pc.watches_stream(secrets, move |secret| {
        let (ns, name) = (secret.namespace().unwrap_or_default(), secret.name_any());
        // A credentials Secret's finalizer written by the ProviderConfig's own reconcile: nothing new.
        if own.own_secret_write(
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
    let rejected = ctx
        .rejected_rx
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    match rejected {
        Some(rx) => pc.reconcile_on(
            tokio_stream_from(rx).map(|name| ObjectRef::<ProviderConfig>::new(&name)),
        ),
        None => pc,
    }
}

/// VirtualMachine: its own changes, drift seen in its account's listing (`drift`), and its ProviderConfig
/// and Project when what it depends on changed.
fn vm_controller(
    ctx: &Arc<Context>,
    feeds: &cache::Feeds,
    caches: &cache::Caches,
    drift: tokio::sync::mpsc::UnboundedReceiver<ObjectRef<VirtualMachine>>,
) -> Controller<VirtualMachine> {
    let cfg = &ctx.config;
    let vm = Controller::for_shared_stream(
        wake::own_changes(
            feeds.vms.subscribe(),
            caches.vms.clone(),
            caches.vm_triggers.clone(),
        ),
        caches.vms.clone(),
    )
    .with_config(runtime_config(
        cfg.concurrency.virtual_machine,
        Duration::ZERO,
    ));
    let vm = vm.reconcile_on(tokio_stream_from(drift));
    let (vms, pcs, pc_memo) = (
        caches.vms.clone(),
        caches.provider_configs.clone(),
        wake::Memo::<ProviderConfig>::default(),
    );
    let vm = vm.watches_shared_stream(feeds.provider_configs.subscribe(), move |pc| {
        if !pc_memo.changed_in(&*pc, wake::provider_config_for_users(&pc), &pcs) {
            return Vec::new();
        }
        let name = pc.name_any();
        vms.state()
            .into_iter()
            .filter(|v| v.spec.provider_config_ref.name == name)
            .map(|v| ObjectRef::from_obj(&*v))
            .collect::<Vec<_>>()
    });
    let (members, vms, projects) = (
        caches.members.clone(),
        caches.vms.clone(),
        caches.projects.clone(),
    );
    let (spec_memo, count_memo) = (
        wake::Memo::<Project>::default(),
        wake::Memo::<Project>::default(),
    );
    vm.watches_shared_stream(feeds.projects.subscribe(), move |p| {
        let all = spec_memo.changed_in(&*p, wake::project_for_members(&p), &projects);
        let counts = count_memo.changed_in(&*p, wake::project_counts(&p), &projects);
        if !all && !counts {
            return Vec::new();
        }
        let ns = p.namespace().unwrap_or_default();
        members
            .members(&ns, &p.name_any())
            .into_iter()
            .filter(|r| all || vms.get(r).is_some_and(|v| wake::waits_for_slot(&v)))
            .collect::<Vec<_>>()
    })
}

/// Project: its own changes, and its members when what its status shows of them changed (and the
/// Projects of VMs that disappeared, `vm_deletions`).
fn project_controller(
    ctx: &Arc<Context>,
    feeds: &cache::Feeds,
    caches: &cache::Caches,
    vm_deletions: Option<tokio::sync::mpsc::UnboundedReceiver<ObjectRef<Project>>>,
) -> Controller<Project> {
    let cfg = &ctx.config;
    let proj = Controller::for_shared_stream(
        wake::own_changes(
            feeds.projects.subscribe(),
            caches.projects.clone(),
            Arc::default(),
        ),
        caches.projects.clone(),
    )
    .with_config(runtime_config(
        cfg.concurrency.project,
        cfg.project_debounce,
    ));
    let (vm_memo, all_vms) = (wake::Memo::<VirtualMachine>::default(), caches.vms.clone());
    proj.watches_shared_stream(feeds.vms.subscribe(), move |vm| {
        if vm_memo.changed_in(&*vm, wake::vm_for_project(&vm), &all_vms) {
            wake::projects_of(&vm)
        } else {
            Vec::new()
        }
    })
    // A Subscription's Stripe status decides whether the Projects naming it are entitled.
    .watches_shared_stream(feeds.subscriptions.subscribe(), {
        let projects = caches.projects.clone();
        move |sub| {
            let ns = sub.namespace().unwrap_or_default();
            let name = sub.name_any();
            projects
                .state()
                .iter()
                .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
                .filter(|p| {
                    p.spec
                        .subscription_ref
                        .as_ref()
                        .is_some_and(|r| r.name == name)
                })
                .map(|p| ObjectRef::from_obj(&**p))
                .collect::<Vec<_>>()
        }
    })
    .watches_shared_stream(feeds.sims.subscribe(), |sim| {
        let ns = sim.namespace().unwrap_or_default();
        sim.spec
            .project_ref
            .as_ref()
            .map(|r| ObjectRef::<Project>::new(&r.name).within(&ns))
    })
    .reconcile_on(futures::stream::iter(vm_deletions).flat_map(tokio_stream_from))
}

/// kube-runtime's controller settings: at most `concurrency` reconciles at once (0: unbounded), and
/// requests for one object coalesced over `debounce`.
fn runtime_config(concurrency: u16, debounce: Duration) -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default()
        .concurrency(concurrency)
        .debounce(debounce)
}

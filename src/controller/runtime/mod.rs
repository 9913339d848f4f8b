//! The runtime every kind runs on, knowing none of them: the shared [`Context`], the reconcile
//! [`framework`], the watch [`cache`]s, [`wake`] plumbing, [`events`], [`error`]s, leader election
//! ([`leader`]), derived [`names`], account [`listings`] and each kind's process [`state`]. A kind is
//! wired with one [`Wire`] function ([`wiring`]); nothing here imports a kind's module.
//!
//! Each controller watches its kind through a predicate filter (generation, labels, annotations,
//! finalizers, deletion): status-only writes — including our own — do not trigger a reconcile.

pub mod cache;
pub mod error;
pub mod events;
pub mod framework;
pub mod holders;
pub mod leader;
pub mod listings;
pub mod names;
pub mod owned_secret;
pub mod state;
pub mod wake;
pub mod wiring;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use kube::Client;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::ObjectRef;

pub use crate::http::backoff_delay;
pub use error::Error;
pub use wiring::{Wire, Wiring};

use crate::crd::conditions::reason;
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
    /// The shortest interval a snapshot policy's schedule may have (each slot is a billable snapshot).
    pub min_snapshot_interval: Duration,
    /// How often each server's outbound transfer (and opted-in metrics) is read from its vendor, and
    /// the snapshots released to the platform are followed.
    pub traffic_interval: Duration,
    /// How often a Subscription whose plan bills usage through Stripe reports its Project's new usage.
    pub stripe_usage_interval: Duration,
    /// How often a TokenBudget's status is refreshed from the ledger (consumed, reserved, remaining).
    pub budget_status_interval: Duration,
    /// How many reconciles of each kind run at once, where not the kind's own default.
    pub concurrency: Concurrency,
    /// A Project's reconcile waits this long after the last change of its members (coalescing a burst
    /// of member changes into one recount).
    pub project_debounce: Duration,
}

/// Reconciles that may run at once, per kind (`Managed::KIND`), where set; each kind declares its
/// default where it is wired. 0: unbounded.
#[derive(Clone, Debug, Default)]
pub struct Concurrency(BTreeMap<String, u16>);

impl Concurrency {
    /// Sets the concurrency of `kind`.
    pub fn set(mut self, kind: &str, n: u16) -> Self {
        self.0.insert(kind.to_string(), n);
        self
    }

    /// The concurrency of `kind`, or `default` where none was set.
    pub fn of(&self, kind: &str, default: u16) -> u16 {
        self.0.get(kind).copied().unwrap_or(default)
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
            min_snapshot_interval: Duration::from_secs(3600),
            traffic_interval: Duration::from_secs(3600),
            stripe_usage_interval: Duration::from_secs(300),
            budget_status_interval: Duration::from_secs(30),
            concurrency: Concurrency::default(),
            project_debounce: Duration::from_millis(500),
        }
    }
}

/// Called with the name of an account (ProviderConfig) whose credentials a vendor refused.
type AccountHook = Box<dyn Fn(&str) + Send + Sync>;

/// Shared state of every reconcile. What a kind remembers of its own lives in [`Context::state`].
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
    /// Vendor clients per account.
    pub providers: crate::controller::vendor::Providers,
    /// Vendor catalogs per account.
    pub catalogs: crate::cloud::catalog::CatalogCache,
    /// The usage ledger; `None` disables metering and credits.
    pub ledger: Option<crate::ledger::Ledger>,
    caches: OnceLock<cache::Caches>,
    synced: std::sync::atomic::AtomicBool,
    states: state::States,
    account_refused: OnceLock<AccountHook>,
    pending_usage: Mutex<HashMap<String, i64>>,
    failures: Mutex<HashMap<String, u32>>,
    warned: Mutex<HashMap<String, String>>,
    sighted: Mutex<HashSet<String>>,
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
        Self {
            recorder: events::EventRecorder::new(client.clone(), reporter),
            client,
            http_metrics: crate::http::HttpMetrics::register(metrics.registry()),
            metrics,
            providers: Default::default(),
            catalogs: crate::cloud::catalog::CatalogCache::new(config.catalog_ttl),
            ledger: None,
            caches: OnceLock::new(),
            synced: Default::default(),
            states: state::States::default(),
            account_refused: OnceLock::new(),
            pending_usage: Mutex::default(),
            config,
            failures: Mutex::default(),
            warned: Mutex::default(),
            sighted: Mutex::default(),
        }
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

    /// Whether the controllers run in this process with every cache filled (false on a standby, while
    /// the caches load, and once the controllers stopped): what reaches a controller now is acted on.
    pub fn running(&self) -> bool {
        self.synced.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The one value of `T` this process keeps (a kind's memory: listings, sightings, indexes).
    pub fn state<T: state::KindState + Default>(&self) -> Arc<T> {
        self.states.get::<T>()
    }

    /// Wakes object `r` of kind `K` now (its controller reconciles it; nothing if none runs).
    pub fn wake<K: kube::Resource<DynamicType = ()> + 'static>(&self, r: ObjectRef<K>) {
        self.state::<wake::Wakes<K>>().send(r);
    }

    /// Sets what happens when a vendor refuses an account's credentials (the account kind's wiring).
    pub fn on_account_refused(&self, hook: impl Fn(&str) + Send + Sync + 'static) {
        let _ = self.account_refused.set(Box::new(hook));
    }

    /// A vendor refused the credentials of account `name` (401/403) on some call: the account re-checks
    /// them now instead of at its next periodic check, so it (and every object using it) says why.
    pub fn account_refused(&self, name: &str) {
        if let Some(hook) = self.account_refused.get() {
            hook(name);
        }
    }

    /// True the first time `value` is reported for `key` (and again after the value changed): keeps a
    /// Warning Event about a bad annotation from repeating on every reconcile.
    pub fn first_warning(&self, key: &str, value: &str) -> bool {
        let mut m = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        m.insert(key.to_string(), value.to_string()).as_deref() != Some(value)
    }

    /// True the first time this process sees `key` (until it is forgotten): for work done once per object
    /// and process, such as a Project claiming the ledger rows recorded before UIDs.
    pub fn first_sighting(&self, key: &str) -> bool {
        let mut m = self.sighted.lock().unwrap_or_else(|p| p.into_inner());
        m.insert(key.to_string())
    }

    /// Releases what this process remembers of an object that is gone (`key` as
    /// [`framework::object_key`], and its UID): warnings, sightings, backoff, and every kind's state.
    pub fn forget(&self, key: &str, uid: Option<&str>) {
        self.warned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        let mut sighted = self.sighted.lock().unwrap_or_else(|p| p.into_inner());
        sighted.remove(key);
        if let Some(uid) = uid {
            sighted.remove(uid);
        }
        drop(sighted);
        self.states.forget(key, uid);
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
        if result.is_ok() {
            self.recorded_usage(started.elapsed(), events);
        }
        result.map(|_| ())
    }

    /// Counts usage a meter recorded in the ledger itself (a counter meter settling a vendor's
    /// figures) in the same metrics as [`Context::record_usage`]: every metering path is seen alike.
    pub fn recorded_usage(&self, took: Duration, events: &[crate::ledger::UsageEvent]) {
        self.metrics
            .ledger_write_duration
            .observe(took.as_secs_f64());
        for e in events {
            self.count_usage(e);
        }
    }

    fn count_usage(&self, e: &crate::ledger::UsageEvent) {
        let m = &self.metrics;
        m.usage_events.with_label_values(&[e.meter.as_str()]).inc();
        let quantity = u64::try_from(e.quantity).unwrap_or(0);
        // The platform's own vendor cost (an account's pooled overage, released snapshots) is nobody's.
        let platform = e.object_kind == "ProviderConfig";
        if e.project_uid.is_empty() && e.project.is_empty() && !platform {
            m.usage_without_project
                .with_label_values(&[e.meter.as_str()])
                .inc_by(quantity);
        }
        if e.currency.is_empty() {
            m.unpriced_usage
                .with_label_values(&[e.meter.as_str()])
                .inc_by(quantity);
        }
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

/// Runs the controllers of every kind in `kinds` until `shutdown` resolves; marks `health` synced once
/// every cache is filled. Reconciles start only then (see [`cache`]).
pub async fn run(
    ctx: Arc<Context>,
    health: Arc<Readiness>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    kinds: &[Wire],
) {
    let mut w = Wiring::new(ctx.clone(), shutdown);
    for kind in kinds {
        (kind.wire)(&mut w);
    }
    let wiring::Wired {
        caches,
        watches,
        tasks,
        shutdown,
    } = w.finish();
    if ctx.caches.set(caches.clone()).is_err() {
        tracing::warn!("controllers already ran with this context; reusing its caches");
    }
    let controllers = async {
        if !caches.ready().await {
            return;
        }
        tracing::info!("controller caches synced");
        health.set_synced(true);
        ctx.synced.store(true, std::sync::atomic::Ordering::Release);
        futures::future::join_all(tasks).await;
    };
    tokio::select! {
        _ = controllers => {}
        _ = watches => {}
        _ = shutdown => {}
    }
    ctx.synced
        .store(false, std::sync::atomic::Ordering::Release);
    health.set_synced(false);
}

//! Controllers: the shared [`Context`], the reconcile [`framework`], leader election ([`leader`]) and one
//! module per kind. [`run`] starts every implemented controller and returns when they have shut down.
//!
//! Each controller watches its kind through a predicate filter (generation, labels, annotations,
//! finalizers, deletion): status-only writes — including our own — do not trigger a reconcile.

pub mod error;
pub mod framework;
pub mod leader;
pub mod names;
pub mod project;
pub mod provider_config;
pub mod vendor;
pub mod virtual_machine;

use std::collections::HashMap;
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt, future::BoxFuture};
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{PredicateConfig, WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};

pub use crate::http::backoff_delay;
pub use error::Error;
use framework::{Managed, Reconciler, object_key};

use crate::crd::{Project, ProviderConfig, SimCard, VirtualMachine};
use crate::metrics::Metrics;
use crate::server::Health;

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
    pub recorder: Recorder,
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
    pending_usage: Mutex<HashMap<String, i64>>,
    failures: Mutex<HashMap<String, u32>>,
    warned: Mutex<HashMap<String, String>>,
    rejected_tx: tokio::sync::mpsc::UnboundedSender<String>,
    rejected_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<String>>>,
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
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            http_metrics: crate::http::HttpMetrics::register(metrics.registry()),
            metrics,
            providers: vendor::Providers::default(),
            catalogs: crate::cloud::catalog::CatalogCache::new(config.catalog_ttl),
            ledger: None,
            pending_usage: Mutex::default(),
            config,
            failures: Mutex::default(),
            warned: Mutex::default(),
            rejected_tx,
            rejected_rx: Mutex::new(Some(rejected_rx)),
        }
    }

    /// A vendor refused the credentials of ProviderConfig `name` (401/403) on some call: its reconciler
    /// re-checks them now instead of at its next periodic check, so it (and every object using it) says why.
    pub fn credentials_rejected(&self, name: &str) {
        // A closed channel means no ProviderConfig controller runs in this process (e.g. a CLI command).
        let _ = self.rejected_tx.send(name.to_string());
    }

    /// True the first time `value` is reported for `key` (and again after the value changed): keeps a
    /// Warning Event about a bad annotation from repeating on every reconcile.
    pub fn first_warning(&self, key: &str, value: &str) -> bool {
        let mut m = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        m.insert(key.to_string(), value.to_string()).as_deref() != Some(value)
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

/// Hash of what a user (or another controller) changes on an object: a change here triggers a reconcile;
/// status-only changes do not.
fn trigger_hash<K: Resource>(obj: &K) -> Option<u64> {
    let m = obj.meta();
    let mut h = DefaultHasher::new();
    m.generation.hash(&mut h);
    m.labels.hash(&mut h);
    m.annotations.hash(&mut h);
    m.finalizers.hash(&mut h);
    m.deletion_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .hash(&mut h);
    Some(h.finish())
}

/// A controller for kind `K`, fed by a filtered watch; its store is returned for readiness.
fn controller_for<K: Managed>(ctx: &Context) -> Controller<K> {
    let api = K::api(ctx.client.clone(), None);
    let mut wc = watcher::Config::default();
    if let Some(sel) = &ctx.config.label_selector {
        wc = wc.labels(sel);
    }
    let (reader, writer) = reflector::store();
    let stream = watcher(api, wc)
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(trigger_hash::<K>, PredicateConfig::default());
    Controller::for_stream(stream, reader)
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
/// controller's cache is filled.
/// `shutdown` is cloned into every controller (e.g. a `futures::future::Shared`).
pub async fn run(
    ctx: Arc<Context>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Clone + Send + Sync + 'static,
) {
    // ProviderConfig, woken also by changes to any Secret it references.
    let pc = controller_for::<ProviderConfig>(&ctx);
    let pc_store = pc.store();
    let secrets = watcher(
        Api::<PartialObjectMeta<Secret>>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .touched_objects();
    let store_for_map = pc_store.clone();
    let pc = pc.watches_stream(secrets, move |secret| {
        let (ns, name) = (secret.namespace().unwrap_or_default(), secret.name_any());
        store_for_map
            .state()
            .into_iter()
            .filter(|p| {
                let r = &p.spec.credentials_secret_ref;
                r.namespace == ns && r.name == name
            })
            .map(|p| ObjectRef::from_obj(&*p))
            .collect::<Vec<_>>()
    });

    // ... and at once when any object saw the vendor refuse its credentials.
    let rejected = ctx
        .rejected_rx
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let pc = match rejected {
        Some(rx) => pc.reconcile_on(
            tokio_stream_from(rx).map(|name| ObjectRef::<ProviderConfig>::new(&name)),
        ),
        None => pc,
    };

    // VirtualMachine, woken also by its ProviderConfig and Project.
    let vm = controller_for::<VirtualMachine>(&ctx);
    let vm_store = vm.store();
    let by_pc = vm_store.clone();
    let by_project = vm_store.clone();
    let vm = vm
        .watches(
            Api::<ProviderConfig>::all(ctx.client.clone()),
            watcher::Config::default(),
            move |pc| {
                let name = pc.name_any();
                by_pc
                    .state()
                    .into_iter()
                    .filter(|v| v.spec.provider_config_ref.name == name)
                    .map(|v| ObjectRef::from_obj(&*v))
                    .collect::<Vec<_>>()
            },
        )
        .watches(
            Api::<Project>::all(ctx.client.clone()),
            watcher::Config::default(),
            move |p| {
                let (ns, name) = (p.namespace(), p.name_any());
                by_project
                    .state()
                    .into_iter()
                    .filter(|v| {
                        v.namespace() == ns
                            && v.spec.project_ref.as_ref().is_some_and(|r| r.name == name)
                    })
                    .map(|v| ObjectRef::from_obj(&*v))
                    .collect::<Vec<_>>()
            },
        );

    // Project, woken by changes to its members.
    let proj = controller_for::<Project>(&ctx);
    let proj_store = proj.store();
    let proj = proj
        .watches(
            Api::<VirtualMachine>::all(ctx.client.clone()),
            watcher::Config::default(),
            |vm| {
                let ns = vm.namespace().unwrap_or_default();
                vm.spec
                    .project_ref
                    .map(|r| ObjectRef::<Project>::new(&r.name).within(&ns))
            },
        )
        .watches(
            Api::<SimCard>::all(ctx.client.clone()),
            watcher::Config::default(),
            |sim| {
                let ns = sim.namespace().unwrap_or_default();
                sim.spec
                    .project_ref
                    .map(|r| ObjectRef::<Project>::new(&r.name).within(&ns))
            },
        );

    let stores_ready = {
        let health = health.clone();
        async move {
            if pc_store.wait_until_ready().await.is_ok()
                && vm_store.wait_until_ready().await.is_ok()
                && proj_store.wait_until_ready().await.is_ok()
            {
                tracing::info!("controller caches synced");
                health.set_synced(true);
            }
        }
    };
    let controllers = futures::future::join_all([
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
    ]);
    tokio::select! {
        _ = controllers => {}
        _ = async { stores_ready.await; futures::future::pending::<()>().await } => {}
    }
    health.set_synced(false);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ProviderConfig, ProviderConfigSpec};

    fn pc() -> ProviderConfig {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "ProviderConfig",
            "metadata": {"name": "a", "generation": 1},
            "spec": {"type": "digitalocean", "credentialsSecretRef": {"name": "s", "namespace": "n"}}
        }))
        .unwrap()
    }

    #[test]
    fn status_changes_do_not_trigger_but_spec_and_annotations_do() {
        let a = pc();
        let mut b = a.clone();
        b.status = Some(Default::default());
        assert_eq!(trigger_hash(&a), trigger_hash(&b));
        let mut c = a.clone();
        c.metadata.generation = Some(2);
        assert_ne!(trigger_hash(&a), trigger_hash(&c));
        let mut d = a.clone();
        d.metadata.annotations =
            Some([("quartermaster.dev/paused".to_string(), "true".to_string())].into());
        assert_ne!(trigger_hash(&a), trigger_hash(&d));
        let _: &ProviderConfigSpec = &a.spec;
    }
}

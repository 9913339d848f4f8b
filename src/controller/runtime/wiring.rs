//! Wiring a kind: each kind's folder has one [`Wire`] function that asks the runtime for the watches it
//! reads, builds its controller (own changes, wake mappers for related objects, concurrency, debounce)
//! and hands it over with its reconciler, plus any background task it runs while this replica leads.
//! The runtime drives them all once every cache is filled, with the framework's reconcile and error
//! policy, and counts every kind's Stalled objects for the alerts.

use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, StreamExt};
use kube::ResourceExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ReflectHandle, Store};

use super::cache::{Caches, Feeds, Watched};
use super::framework::{self, Managed, Reconciler, object_key};
use super::wake::{Memo, Wakes, own_changes};
use super::{Context, Error, backoff_delay};
use crate::crd::ObjectStatus;
use crate::crd::conditions::{self, ConditionStatus};

/// A kind as the runtime runs it: its name and its wiring (called once per process, before the
/// watches start).
#[derive(Clone, Copy)]
pub struct Wire {
    /// The kind's name (`Managed::KIND`), as flags and metrics name it.
    pub kind: &'static str,
    /// Wires its controller.
    pub wire: fn(&mut Wiring),
}

impl Wire {
    /// The wiring of kind `K`.
    pub const fn of<K: Managed>(wire: fn(&mut Wiring)) -> Self {
        Self {
            kind: K::KIND,
            wire,
        }
    }
}

type Gauge = Box<dyn Fn() -> i64 + Send + Sync>;

/// What the kinds wire, before the runtime starts it.
pub struct Wiring {
    ctx: Arc<Context>,
    feeds: Feeds,
    shutdown: Shared<BoxFuture<'static, ()>>,
    tasks: Vec<BoxFuture<'static, ()>>,
    stalled: Vec<(&'static str, Gauge)>,
}

impl Wiring {
    /// Wiring for `ctx`; every controller stops when `shutdown` resolves.
    pub fn new(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + 'static) -> Self {
        Self {
            feeds: Feeds::new(&ctx.client, ctx.config.label_selector.as_deref()),
            ctx,
            shutdown: shutdown.boxed().shared(),
            tasks: Vec::new(),
            stalled: Vec::new(),
        }
    }

    /// The shared context.
    pub fn ctx(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// The feeds, to register a watch with its own configuration or an observer of its events.
    pub fn feeds(&mut self) -> &mut Feeds {
        &mut self.feeds
    }

    /// The shared store of `K` (its watch is started with the others).
    pub fn store<K: Watched>(&mut self) -> Store<K> {
        self.feeds.feed::<K>().store()
    }

    /// The objects of `K` that change, for a wake mapper.
    pub fn changes<K: Watched>(&mut self) -> ReflectHandle<K> {
        self.feeds.feed::<K>().subscribe()
    }

    /// A controller of `K`: woken by its own changes (not status-only writes, nor its own metadata
    /// writes recorded in the kind's trigger [`Memo`]) and by [`Context::wake`]; at most `concurrency`
    /// reconciles at once unless configured otherwise, requests for one object coalesced over `debounce`.
    pub fn controller<K: Managed>(
        &mut self,
        concurrency: u16,
        debounce: Duration,
    ) -> Controller<K> {
        let feed = self.feeds.feed::<K>();
        let (store, changes) = (feed.store(), feed.subscribe());
        let memo = self.ctx.state::<Memo<K>>();
        let concurrency = self.ctx.config.concurrency.of(K::KIND, concurrency);
        let c = Controller::for_shared_stream(own_changes(changes, store.clone(), memo), store)
            .with_config(
                kube::runtime::controller::Config::default()
                    .concurrency(concurrency)
                    .debounce(debounce),
            );
        match self.ctx.state::<Wakes<K>>().take() {
            Some(wakes) => c.reconcile_on(wakes),
            None => c,
        }
    }

    /// Runs `controller` with `reconciler` once the caches are filled, and counts its Stalled objects.
    pub fn run<K: Managed, R: Reconciler<K>>(&mut self, controller: Controller<K>, reconciler: R) {
        let store = self.store::<K>();
        self.stalled
            .push((K::KIND, Box::new(move || count_stalled(&store))));
        let drive = drive(
            controller,
            reconciler,
            self.ctx.clone(),
            self.shutdown.clone(),
        );
        self.tasks.push(drive);
    }

    /// Declares which objects of `K` hold vendor state through a ProviderConfig (`holds(object, name)`):
    /// the ProviderConfig and its credentials are kept while any does (see [`super::holders`]).
    pub fn holds_accounts<K: Managed + Watched>(&mut self, holds: fn(&K, &str) -> bool) {
        let store = self.store::<K>();
        self.ctx
            .state::<super::holders::Holders>()
            .register(store, holds);
    }

    /// Runs `task` beside the controllers (it starts once the caches are filled).
    pub fn task(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.push(task.boxed());
    }

    /// Everything wired, ready to start.
    pub(super) fn finish(mut self) -> Wired {
        let stalled = std::mem::take(&mut self.stalled);
        self.tasks
            .push(stalled_gauges(self.ctx.clone(), stalled).boxed());
        Wired {
            caches: self.feeds.caches(),
            watches: self.feeds.run(),
            tasks: self.tasks,
            shutdown: self.shutdown,
        }
    }
}

/// What the kinds wired: the caches, the watches feeding them, the tasks to run once they are filled
/// (controllers, gauges, observers) and the shutdown signal they share.
pub(super) struct Wired {
    pub caches: Caches,
    pub watches: BoxFuture<'static, ()>,
    pub tasks: Vec<BoxFuture<'static, ()>>,
    pub shutdown: Shared<BoxFuture<'static, ()>>,
}

/// How many objects in `store` are Stalled.
fn count_stalled<K: Managed>(store: &Store<K>) -> i64 {
    let stalled = store
        .state()
        .iter()
        .filter(|o| {
            o.status().is_some_and(|s| {
                conditions::find(s.conditions(), conditions::STALLED)
                    .is_some_and(|c| c.status == ConditionStatus::True)
            })
        })
        .count();
    i64::try_from(stalled).unwrap_or(i64::MAX)
}

/// Sets `quartermaster_objects_stalled{kind}` for every wired kind, every 30 s.
async fn stalled_gauges(ctx: Arc<Context>, kinds: Vec<(&'static str, Gauge)>) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tick.tick().await;
        for (kind, count) in &kinds {
            ctx.metrics.stalled.with_label_values(&[kind]).set(count());
        }
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
    shutdown: Shared<BoxFuture<'static, ()>>,
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

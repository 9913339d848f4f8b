//! The shared watch caches every reconcile reads related objects from: one watch per kind, feeding one
//! store that the controllers share (and subscribe to, for their triggers), plus the membership indexes.
//!
//! # Guarantees
//! - One watch (one list, one stream) per kind, whatever the number of controllers reading it.
//! - Objects are stripped before they enter a store: `managedFields` and the
//!   `kubectl.kubernetes.io/last-applied-configuration` annotation (often the largest parts of an object)
//!   are dropped; nothing reads them.
//! - Controllers start only once every store holds a complete list ([`Feeds::ready`]), so no reconcile
//!   decides on a partial cache (e.g. a Project limit counted before every VM is known).

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{self, ObjectRef, ReflectHandle, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

use super::project::members::{MemberIndex, SimIndex};
use crate::crd::{Project, ProviderConfig, SimCard, Subscription, VirtualMachine};

/// Label on every Secret Quartermaster writes (the connection Secrets); their cache watches only those.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by=quartermaster";

/// Selects every Secret Quartermaster did not write (credentials Secrets, for the ProviderConfig watch).
pub const NOT_MANAGED_BY: &str = "app.kubernetes.io/managed-by!=quartermaster";

/// How many change notifications a shared store buffers per subscriber before the watch waits.
const SUBSCRIBER_BUFFER: usize = 4096;

/// Annotation `kubectl apply` writes: a copy of the whole object, never read by Quartermaster.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Read-only views of the caches, for reconciles.
#[derive(Clone)]
pub struct Caches {
    /// ProviderConfigs.
    pub provider_configs: Store<ProviderConfig>,
    /// Projects.
    pub projects: Store<Project>,
    /// VirtualMachines.
    pub vms: Store<VirtualMachine>,
    /// SimCards.
    pub sims: Store<SimCard>,
    /// Subscriptions.
    pub subscriptions: Store<Subscription>,
    /// The Secrets Quartermaster writes (label [`MANAGED_BY_LABEL`]).
    pub connection_secrets: Store<Secret>,
    /// Which VMs belong to which Project, with admission totals.
    pub members: Arc<MemberIndex>,
    /// Which SimCards belong to which Project.
    pub sim_members: Arc<SimIndex>,
    /// The VirtualMachine trigger memo: the VM controller's own metadata writes are recorded here so
    /// they do not wake the object they were made for.
    pub vm_triggers: Arc<super::wake::Memo<VirtualMachine>>,
}

/// Drops what no reconcile reads before an object is stored.
pub fn strip<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
}

/// One kind's shared store, before its watch is started.
pub struct Feed<K: Resource<DynamicType = ()> + Clone + 'static> {
    /// The store.
    pub store: Store<K>,
    writer: Writer<K>,
    start: Box<dyn FnOnce(Writer<K>) -> BoxFuture<'static, ()> + Send>,
}

impl<K> Feed<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    /// A feed of `api` (filtered by `wc`); `observe` sees every event before the store does.
    fn new(
        api: Api<K>,
        wc: watcher::Config,
        observe: impl Fn(&watcher::Event<K>) + Send + 'static,
    ) -> Self {
        let (store, writer) = reflector::store_shared(SUBSCRIBER_BUFFER);
        let start = Box::new(move |writer: Writer<K>| {
            watcher(api, wc)
                .default_backoff()
                .modify(strip::<K>)
                .inspect_ok(move |e| observe(e))
                .reflect_shared(writer)
                .for_each(|r| async move {
                    if let Err(e) = r {
                        tracing::warn!(kind = %K::kind(&()), error = %e, "watch error; retrying with backoff");
                    }
                })
                .boxed()
        });
        Self {
            store,
            writer,
            start,
        }
    }

    fn run(self) -> BoxFuture<'static, ()> {
        (self.start)(self.writer)
    }

    /// A stream of the objects that change (for a controller's triggers).
    pub fn subscribe(&self) -> ReflectHandle<K> {
        self.writer
            .subscribe()
            .expect("feeds are built with shared stores")
    }
}

/// Every feed, before the watches start.
pub struct Feeds {
    /// ProviderConfigs.
    pub provider_configs: Feed<ProviderConfig>,
    /// Projects.
    pub projects: Feed<Project>,
    /// VirtualMachines.
    pub vms: Feed<VirtualMachine>,
    /// SimCards.
    pub sims: Feed<SimCard>,
    /// Subscriptions.
    pub subscriptions: Feed<Subscription>,
    /// Quartermaster's Secrets.
    pub connection_secrets: Feed<Secret>,
    /// The views reconciles read.
    pub caches: Caches,
    /// The Projects of every VM that disappeared (shared streams carry no deletions; the Project
    /// reconciler recounts on these).
    pub vm_deletions: Option<tokio::sync::mpsc::UnboundedReceiver<ObjectRef<Project>>>,
}

impl Feeds {
    /// Feeds for a client; `label_selector` limits the kinds Quartermaster reconciles (sharding, tests).
    pub fn new(client: &kube::Client, label_selector: Option<&str>) -> Self {
        let wc = || {
            let wc = watcher::Config::default();
            match label_selector {
                Some(sel) => wc.labels(sel),
                None => wc,
            }
        };
        let members = Arc::new(MemberIndex::default());
        let sim_members = Arc::new(SimIndex::default());
        let (m, s) = (members.clone(), sim_members.clone());
        let (deleted, vm_deletions) = tokio::sync::mpsc::unbounded_channel();
        let provider_configs = Feed::new(Api::all(client.clone()), wc(), |_| {});
        let projects = Feed::new(Api::all(client.clone()), wc(), |_| {});
        let vms = Feed::new(Api::all(client.clone()), wc(), move |e| {
            m.observe(e);
            if let watcher::Event::Delete(vm) = e {
                for p in super::wake::projects_of(vm) {
                    let _ = deleted.send(p);
                }
            }
        });
        let sims = Feed::new(Api::all(client.clone()), wc(), move |e| s.observe(e));
        let subscriptions = Feed::new(Api::all(client.clone()), wc(), |_| {});
        let connection_secrets = Feed::new(
            Api::all(client.clone()),
            watcher::Config::default().labels(MANAGED_BY_LABEL),
            |_| {},
        );
        let caches = Caches {
            provider_configs: provider_configs.store.clone(),
            projects: projects.store.clone(),
            vms: vms.store.clone(),
            sims: sims.store.clone(),
            subscriptions: subscriptions.store.clone(),
            connection_secrets: connection_secrets.store.clone(),
            members,
            sim_members,
            vm_triggers: Arc::default(),
        };
        Self {
            provider_configs,
            projects,
            vms,
            sims,
            subscriptions,
            connection_secrets,
            caches,
            vm_deletions: Some(vm_deletions),
        }
    }

    /// Runs every watch (forever); subscribe (and take `vm_deletions`) before calling this.
    pub fn run(self) -> BoxFuture<'static, ()> {
        futures::future::join_all([
            self.provider_configs.run(),
            self.projects.run(),
            self.vms.run(),
            self.sims.run(),
            self.subscriptions.run(),
            self.connection_secrets.run(),
        ])
        .map(|_| ())
        .boxed()
    }
}

impl Caches {
    /// Resolves once every store holds a complete list.
    pub async fn ready(&self) -> bool {
        self.provider_configs.wait_until_ready().await.is_ok()
            && self.projects.wait_until_ready().await.is_ok()
            && self.vms.wait_until_ready().await.is_ok()
            && self.sims.wait_until_ready().await.is_ok()
            && self.subscriptions.wait_until_ready().await.is_ok()
            && self.connection_secrets.wait_until_ready().await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_drops_managed_fields_and_the_last_applied_copy() {
        let mut s = Secret::default();
        s.metadata.managed_fields = Some(vec![Default::default()]);
        s.metadata.annotations = Some(
            [
                (LAST_APPLIED.to_string(), "{...}".to_string()),
                ("keep".to_string(), "me".to_string()),
            ]
            .into(),
        );
        strip(&mut s);
        assert!(s.metadata.managed_fields.is_none());
        assert_eq!(
            s.metadata.annotations.unwrap().keys().collect::<Vec<_>>(),
            ["keep"]
        );
    }
}

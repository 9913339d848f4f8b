//! The shared watch caches every reconcile reads related objects from: one watch per kind that any
//! controller asked for, feeding one store that the controllers share (and subscribe to, for their
//! triggers). Kinds register what they read while they are wired ([`Feeds::feed`]); the runtime names
//! none of them.
//!
//! # Guarantees
//! - One watch (one list, one stream) per type, whatever the number of controllers reading it.
//! - Objects are stripped before they enter a store: `managedFields` and the
//!   `kubectl.kubernetes.io/last-applied-configuration` annotation (often the largest parts of an object)
//!   are dropped; nothing reads them.
//! - Controllers start only once every store holds a complete list ([`Caches::ready`]), so no reconcile
//!   decides on a partial cache (e.g. a Project limit counted before every VM is known).
//! - An observer registered with [`Feeds::observe`] sees every event of its type before the store does
//!   (so an index built from it is never behind the store it is read beside).

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{self, ReflectHandle, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

use super::Error;
use crate::crd::conditions::reason;

/// Label on every Secret Quartermaster writes (the connection Secrets); their cache watches only those.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by=quartermaster";

/// Selects every Secret Quartermaster did not write (credentials Secrets, for the ProviderConfig watch).
pub const NOT_MANAGED_BY: &str = "app.kubernetes.io/managed-by!=quartermaster";

/// How many change notifications a shared store buffers per subscriber before the watch waits.
const SUBSCRIBER_BUFFER: usize = 4096;

/// Annotation `kubectl apply` writes: a copy of the whole object, never read by Quartermaster.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A type the caches can watch.
pub trait Watched:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static
{
}
impl<K> Watched for K where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// Drops what no reconcile reads before an object is stored.
pub fn strip<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
}

/// Waits until one store holds a complete list.
type ReadyCheck = Arc<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>;

type Observer<K> = Box<dyn Fn(&watcher::Event<K>) + Send + Sync>;

/// One type's shared store, before its watch is started.
pub struct Feed<K: Watched> {
    store: Store<K>,
    writer: Writer<K>,
    api: Api<K>,
    config: watcher::Config,
    observers: Vec<Observer<K>>,
}

impl<K: Watched> Feed<K> {
    fn new(api: Api<K>, config: watcher::Config) -> Self {
        let (store, writer) = reflector::store_shared(SUBSCRIBER_BUFFER);
        Self {
            store,
            writer,
            api,
            config,
            observers: Vec::new(),
        }
    }

    /// The store.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// A stream of the objects that change (for a controller's triggers).
    pub fn subscribe(&self) -> ReflectHandle<K> {
        self.writer
            .subscribe()
            .expect("feeds are built with shared stores")
    }
}

/// A feed of any type, as the runtime holds it.
trait AnyFeed: Send {
    fn as_any(&mut self) -> &mut dyn Any;
    fn store_any(&self) -> Box<dyn Any + Send + Sync>;
    fn ready(&self) -> ReadyCheck;
    fn run(self: Box<Self>) -> BoxFuture<'static, ()>;
}

impl<K: Watched> AnyFeed for Feed<K> {
    fn as_any(&mut self) -> &mut dyn Any {
        self
    }

    fn store_any(&self) -> Box<dyn Any + Send + Sync> {
        Box::new(self.store.clone())
    }

    fn ready(&self) -> ReadyCheck {
        let store = self.store.clone();
        Arc::new(move || {
            let store = store.clone();
            async move { store.wait_until_ready().await.is_ok() }.boxed()
        })
    }

    fn run(self: Box<Self>) -> BoxFuture<'static, ()> {
        let Feed {
            writer,
            api,
            config,
            observers,
            ..
        } = *self;
        watcher(api, config)
            .default_backoff()
            .modify(strip::<K>)
            .inspect_ok(move |e| observers.iter().for_each(|o| o(e)))
            .reflect_shared(writer)
            .for_each(|r| async move {
                if let Err(e) = r {
                    tracing::warn!(kind = %K::kind(&()), error = %e, "watch error; retrying with backoff");
                }
            })
            .boxed()
    }
}

/// Every feed, before the watches start.
pub struct Feeds {
    client: kube::Client,
    label_selector: Option<String>,
    feeds: HashMap<TypeId, Box<dyn AnyFeed>>,
}

impl Feeds {
    /// Feeds for a client; `label_selector` limits the objects Quartermaster reconciles (sharding,
    /// tests). Quartermaster's own Secrets are always fed (label [`MANAGED_BY_LABEL`]).
    pub fn new(client: &kube::Client, label_selector: Option<&str>) -> Self {
        let mut feeds = Self {
            client: client.clone(),
            label_selector: label_selector.map(str::to_string),
            feeds: HashMap::new(),
        };
        feeds.feed_with::<Secret>(watcher::Config::default().labels(MANAGED_BY_LABEL));
        feeds
    }

    /// The feed of `K` (every object of it, within the label selector), made on first use.
    pub fn feed<K: Watched>(&mut self) -> &mut Feed<K> {
        let config = match &self.label_selector {
            Some(sel) => watcher::Config::default().labels(sel),
            None => watcher::Config::default(),
        };
        self.feed_with(config)
    }

    /// The feed of `K` made with `config` on first use (a feed already made keeps its config).
    pub fn feed_with<K: Watched>(&mut self, config: watcher::Config) -> &mut Feed<K> {
        let client = self.client.clone();
        self.feeds
            .entry(TypeId::of::<K>())
            .or_insert_with(|| Box::new(Feed::<K>::new(Api::all(client), config)))
            .as_any()
            .downcast_mut::<Feed<K>>()
            .unwrap_or_else(|| unreachable!("feeds are keyed by their type"))
    }

    /// Calls `f` with every event of `K` before its store sees it.
    pub fn observe<K: Watched>(&mut self, f: impl Fn(&watcher::Event<K>) + Send + Sync + 'static) {
        self.feed::<K>().observers.push(Box::new(f));
    }

    /// The views reconciles read (every feed made so far).
    pub fn caches(&self) -> Caches {
        let stores = self
            .feeds
            .iter()
            .map(|(t, f)| (*t, f.store_any()))
            .collect();
        let ready = self.feeds.values().map(|f| f.ready()).collect();
        Caches {
            stores: Arc::new(stores),
            ready: Arc::new(ready),
        }
    }

    /// Runs every watch (forever); make every feed and subscription before calling this.
    pub fn run(self) -> BoxFuture<'static, ()> {
        futures::future::join_all(self.feeds.into_values().map(|f| f.run()))
            .map(|_| ())
            .boxed()
    }
}

/// Read-only views of the caches, for reconciles.
#[derive(Clone)]
pub struct Caches {
    stores: Arc<HashMap<TypeId, Box<dyn Any + Send + Sync>>>,
    ready: Arc<Vec<ReadyCheck>>,
}

impl Caches {
    /// The store of `K`; an error when no kind asked for it while it was wired.
    pub fn store<K: Watched>(&self) -> Result<&Store<K>, Error> {
        self.stores
            .get(&TypeId::of::<K>())
            .and_then(|s| s.downcast_ref::<Store<K>>())
            .ok_or_else(|| {
                Error::permanent(
                    reason::INTERNAL_ERROR,
                    format!("no watch cache of {} was wired", K::kind(&())),
                )
            })
    }

    /// Resolves once every store holds a complete list (false if a watch ended first).
    pub async fn ready(&self) -> bool {
        futures::future::join_all(self.ready.iter().map(|r| r()))
            .await
            .into_iter()
            .all(|ok| ok)
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

//! Which changes wake which objects, the kind-free part. A controller is woken by its own objects only
//! when something a user (or another controller) changes moved — its generation, labels, annotations,
//! finalizers or deletion ([`trigger_hash`]) — never by status-only writes. A kind wakes on related
//! objects only when the part it depends on changed: it hashes that part and asks a [`Memo`] whether the
//! hash moved (each kind's folder has its own `wake` hashes), so fan-out stays proportional to what
//! changed.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};

/// The last hash seen per object; tells whether the part of an object someone depends on changed.
pub struct Memo<K: Resource<DynamicType = ()>> {
    seen: Mutex<HashMap<ObjectRef<K>, u64>>,
    since_prune: std::sync::atomic::AtomicUsize,
}

impl<K: Resource<DynamicType = ()>> Default for Memo<K> {
    fn default() -> Self {
        Self {
            seen: Mutex::default(),
            since_prune: Default::default(),
        }
    }
}

impl<K: Resource<DynamicType = ()>> Memo<K> {
    /// Records `hash` for `obj`; true when it differs from the last one (or is the first).
    pub fn changed(&self, obj: &K, hash: u64) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.insert(ObjectRef::from_obj(obj), hash) != Some(hash)
    }

    /// Records the trigger hash `obj` will have after our own write, so that write wakes nothing.
    pub fn expect(&self, obj: &K) {
        self.changed(obj, trigger_hash(obj));
    }

    /// [`Memo::changed`], forgetting objects gone from `store` every few thousand calls (and never more
    /// often than the memo has entries), so the memory of objects that went is released.
    pub fn changed_in(&self, obj: &K, hash: u64, store: &Store<K>) -> bool
    where
        K: Clone,
    {
        use std::sync::atomic::Ordering;
        let n = self.since_prune.fetch_add(1, Ordering::Relaxed) + 1;
        if n > 4096 && n > self.len() {
            self.prune(store);
            self.since_prune.store(0, Ordering::Relaxed);
        }
        self.changed(obj, hash)
    }

    /// Forgets objects that are no longer in `store` (bounded memory under churn).
    pub fn prune(&self, store: &Store<K>)
    where
        K: Clone,
    {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|k, _| store.get(k).is_some());
    }

    fn len(&self) -> usize {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A hash of `parts` (for a kind's wake hashes).
pub fn hash_of(parts: impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

/// What a user (or another controller) changes on an object: a change here wakes it; status-only changes
/// do not.
pub fn trigger_hash<K: Resource>(obj: &K) -> u64 {
    let m = obj.meta();
    hash_of((
        m.generation,
        &m.labels,
        &m.annotations,
        &m.finalizers,
        m.deletion_timestamp.as_ref().map(|t| t.0.to_string()),
    ))
}

/// A controller's own triggers: only objects whose [`trigger_hash`] changed. A reconciler that changes
/// an object's metadata itself and goes on in the same reconcile records the result in `memo` first
/// ([`Memo::expect`]), so its own write does not wake the object again.
pub fn own_changes<K>(
    stream: impl Stream<Item = Arc<K>> + Send + 'static,
    store: Store<K>,
    memo: Arc<Memo<K>>,
) -> impl Stream<Item = Arc<K>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    stream.filter(move |o| std::future::ready(memo.changed_in(&**o, trigger_hash(&**o), &store)))
}

impl<K: Resource<DynamicType = ()> + Send + Sync + 'static> super::state::KindState for Memo<K> {}

/// The objects in `store` that `refers` says depend on a changed object (for a wake mapper).
pub fn referring<K>(store: &Store<K>, refers: impl Fn(&K) -> bool) -> Vec<ObjectRef<K>>
where
    K: Resource<DynamicType = ()> + Clone,
{
    store
        .state()
        .iter()
        .filter(|o| refers(o))
        .map(|o| ObjectRef::from_obj(&**o))
        .collect()
}

/// Requests to reconcile objects of `K` now, from outside its watches (drift seen in a listing, a
/// vendor's webhook, a refused credential, a deletion another kind saw). Kept as a [`KindState`]
/// (super::state::KindState): the kind's controller takes the receiving end when it is built.
pub struct Wakes<K: Resource<DynamicType = ()>> {
    tx: tokio::sync::mpsc::UnboundedSender<ObjectRef<K>>,
    rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<ObjectRef<K>>>>,
}

impl<K: Resource<DynamicType = ()>> Default for Wakes<K> {
    fn default() -> Self {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        Self {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }
}

impl<K: Resource<DynamicType = ()> + 'static> super::state::KindState for Wakes<K> {}

impl<K: Resource<DynamicType = ()>> Wakes<K> {
    /// Asks for a reconcile of `r` (dropped when no controller of `K` runs in this process).
    pub fn send(&self, r: ObjectRef<K>) {
        if self.rx.lock().unwrap_or_else(|p| p.into_inner()).is_none() {
            let _ = self.tx.send(r);
        }
    }

    /// The requests, as a stream, for the one controller of `K` (None once taken).
    pub fn take(&self) -> Option<impl Stream<Item = ObjectRef<K>> + Send + 'static>
    where
        K: 'static,
    {
        let mut rx = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take()?;
        Some(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn object(name: &str) -> ConfigMap {
        let mut c = ConfigMap::default();
        c.metadata.name = Some(name.into());
        c.metadata.namespace = Some("ns".into());
        c.metadata.generation = Some(1);
        c
    }

    #[test]
    fn memo_reports_first_sight_and_changes_only() {
        let memo = Memo::<ConfigMap>::default();
        let p = object("p");
        assert!(memo.changed(&p, 1));
        assert!(!memo.changed(&p, 1));
        assert!(memo.changed(&p, 2));
    }

    /// Objects that went are forgotten: the memo does not grow with churn.
    #[test]
    fn memo_releases_objects_gone_from_the_cache() {
        let (store, mut writer) = kube::runtime::reflector::store::<ConfigMap>();
        let kept = object("p");
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(kept.clone()));
        let memo = Memo::<ConfigMap>::default();
        for i in 0..5000 {
            let mut gone = kept.clone();
            gone.metadata.name = Some(format!("gone-{i}"));
            memo.changed_in(&gone, 1, &store);
        }
        memo.changed_in(&kept, 1, &store);
        assert!(memo.len() < 1000, "{} entries kept", memo.len());
        assert!(
            !memo.changed_in(&kept, 1, &store),
            "a live object is still remembered"
        );
    }

    #[test]
    fn status_changes_do_not_trigger_but_spec_and_annotations_do() {
        let a = object("p");
        let mut b = a.clone();
        b.data = Some([("k".to_string(), "v".to_string())].into());
        assert_eq!(trigger_hash(&a), trigger_hash(&b));
        let mut c = a.clone();
        c.metadata.generation = Some(2);
        assert_ne!(trigger_hash(&a), trigger_hash(&c));
        let mut d = a.clone();
        d.metadata.annotations =
            Some([("quartermaster.dev/paused".to_string(), "true".to_string())].into());
        assert_ne!(trigger_hash(&a), trigger_hash(&d));
    }
}

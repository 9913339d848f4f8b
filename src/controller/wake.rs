//! Which changes wake which objects. A controller is woken by its own objects only when something a
//! user (or another controller) changes moved — never by status-only writes — and by related objects
//! only when what it depends on changed, so fan-out stays proportional to what changed.
//!
//! | change | wakes |
//! |---|---|
//! | a VM's or Project's or ProviderConfig's generation, labels, annotations, finalizers, deletion | that object |
//! | a Project's spec, deletion, or credit stop (exhausted with `onCreditExhausted: Stop`) | every member VM |
//! | a Project's member counts (a slot may have freed) | only members Stalled with `LimitExceeded` |
//! | a ProviderConfig's spec, deletion, or whether its credentials are refused | the VMs using it |
//! | a VM's membership, phase, price or existence at the vendor | the Project(s) it belongs to |
//! | a SimCard's `projectRef` | its Project |

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use crate::crd::conditions::{self, ConditionStatus, reason};
use crate::crd::{Project, ProviderConfig, VirtualMachine};

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

fn hash_of(parts: impl Hash) -> u64 {
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

/// What a Project's members depend on: its spec, its deletion, and whether its credit stops them.
pub fn project_for_members(p: &Project) -> u64 {
    hash_of((
        p.metadata.generation,
        p.metadata.deletion_timestamp.is_some(),
        super::project::policy::credit_stop(p).is_some(),
        super::project::policy::new_block(p).is_some(),
        super::project::policy::effective_limits(p),
    ))
}

/// A Project's member counts (a change may free a slot).
pub fn project_counts(p: &Project) -> u64 {
    hash_of(
        p.status
            .as_ref()
            .and_then(|s| s.members.as_ref())
            .map(|m| (m.virtual_machines, &m.by_phase)),
    )
}

/// What a ProviderConfig's users depend on: its spec, its deletion, and whether the vendor refuses its
/// credentials.
pub fn provider_config_for_users(pc: &ProviderConfig) -> u64 {
    let refused = pc.status.as_ref().is_some_and(|s| {
        conditions::find(&s.conditions, conditions::STALLED).is_some_and(|c| {
            c.status == ConditionStatus::True && c.reason == reason::INVALID_CREDENTIALS
        })
    });
    hash_of((
        pc.metadata.generation,
        pc.metadata.deletion_timestamp.is_some(),
        refused,
    ))
}

/// What a Project's status depends on of a VM: membership, phase, price and whether the vendor holds it.
pub fn vm_for_project(vm: &VirtualMachine) -> u64 {
    let st = vm.status.as_ref();
    hash_of((
        vm.spec.project_ref.as_ref().map(|r| &r.name),
        vm.metadata.deletion_timestamp.is_some(),
        super::project::members::admitted_to(vm),
        st.and_then(|s| s.phase).map(|p| format!("{p:?}")),
        st.and_then(|s| s.monthly_price.as_ref()),
        st.and_then(|s| s.currency.as_ref()),
        st.is_some_and(|s| s.external_id.is_some()),
    ))
}

/// Whether a VM waits for a slot in its Project (Stalled `LimitExceeded`).
pub fn waits_for_slot(vm: &VirtualMachine) -> bool {
    vm.status.as_ref().is_some_and(|s| {
        conditions::find(&s.conditions, conditions::STALLED).is_some_and(|c| {
            c.status == ConditionStatus::True && c.reason == reason::LIMIT_EXCEEDED
        })
    })
}

/// The Projects a VM belongs to (where it points and where it is admitted).
pub fn projects_of(vm: &VirtualMachine) -> Vec<ObjectRef<Project>> {
    let ns = vm.namespace().unwrap_or_default();
    let mut names: Vec<&str> = vm
        .spec
        .project_ref
        .as_ref()
        .map(|r| r.name.as_str())
        .into_iter()
        .chain(vm.status.as_ref().and_then(|s| s.project.as_deref()))
        .collect();
    names.dedup();
    names
        .into_iter()
        .map(|n| ObjectRef::new(n).within(&ns))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(balance: Option<&str>, members: u32) -> Project {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "Project",
            "metadata": {"name": "p", "namespace": "ns", "generation": 1},
            "spec": {"currency": "USD", "onCreditExhausted": "Stop"},
            "status": {"creditBalance": balance, "members": {"virtualMachines": members, "simCards": 0, "byPhase": {}},
                       "monthToDateCost": "1.00"}
        }))
        .unwrap()
    }

    #[test]
    fn members_wake_only_when_what_they_depend_on_changes() {
        let a = project(Some("5.00"), 1);
        let mut cost = project(Some("4.00"), 7);
        cost.status.as_mut().unwrap().month_to_date_cost = Some("2.00".into());
        assert_eq!(project_for_members(&a), project_for_members(&cost));
        assert_ne!(project_counts(&a), project_counts(&cost));
        let exhausted = project(Some("0.00"), 1);
        assert_ne!(project_for_members(&a), project_for_members(&exhausted));
        let mut edited = a.clone();
        edited.metadata.generation = Some(2);
        assert_ne!(project_for_members(&a), project_for_members(&edited));
    }

    #[test]
    fn memo_reports_first_sight_and_changes_only() {
        let memo = Memo::<Project>::default();
        let p = project(None, 0);
        assert!(memo.changed(&p, 1));
        assert!(!memo.changed(&p, 1));
        assert!(memo.changed(&p, 2));
    }

    /// Objects that went are forgotten: the memo does not grow with churn.
    #[test]
    fn memo_releases_objects_gone_from_the_cache() {
        let (store, mut writer) = kube::runtime::reflector::store::<Project>();
        let kept = project(None, 0);
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(kept.clone()));
        let memo = Memo::<Project>::default();
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
        let a = project(None, 0);
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
    }
}

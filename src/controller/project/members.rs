//! The membership index: which VirtualMachines belong to which Project, with the running totals Project
//! admission needs (slots held, monthly spend per currency, VMs waiting in admission order). Kept up to
//! date from the VirtualMachine watch, so a reconcile never lists the namespace to check a limit.
//!
//! # Guarantees
//! - Two admissions to the same Project never both pass a limit: [`MemberIndex::reserve`] re-checks the
//!   limit and records the slot in one critical section, *before* `status.project` is written. The slot
//!   is held in memory (a reservation) until the watch shows the written status; after a restart the
//!   index is rebuilt from a consistent list of every VM before any reconcile runs, and that list holds
//!   every admission ever written (admission is written before the vendor is called), so the guard
//!   holds across restarts without listing.
//! - Semantics match [`Occupancy::of`] (the pure reference, with table tests): VMs being deleted free
//!   their slot; amounts in different currencies are never added.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use rust_decimal::Decimal;

use super::policy::{AdmissionOrder, Occupancy, Refusal, order_of};
use crate::crd::virtual_machine::CreationIntent;
use crate::crd::{SimCard, VirtualMachine};

/// A Project's key: namespace and name.
pub type ProjectKey = (String, String);

/// What the index keeps of one VirtualMachine.
#[derive(Clone, Debug, Default, PartialEq)]
struct Facts {
    ns: String,
    uid: String,
    /// `spec.projectRef`.
    points: Option<String>,
    /// Where its status says it is admitted (see [`admitted_to`]).
    admitted: Option<String>,
    /// A slot reserved in this process, not yet seen in the watched status.
    reserved: Option<String>,
    deleting: bool,
    order: AdmissionOrder,
    monthly: Option<(Decimal, String)>,
}

impl Facts {
    fn of(vm: &VirtualMachine) -> Self {
        let st = vm.status.as_ref();
        let points = vm.spec.project_ref.as_ref().map(|r| r.name.clone());
        Self {
            ns: vm.namespace().unwrap_or_default(),
            uid: vm.uid().unwrap_or_default(),
            admitted: admitted_to(vm),
            points,
            reserved: None,
            deleting: vm.meta().deletion_timestamp.is_some(),
            order: order_of(vm),
            monthly: st.and_then(|s| {
                Some((
                    s.monthly_price.as_deref()?.parse().ok()?,
                    s.currency.clone()?,
                ))
            }),
        }
    }

    /// Where this VM holds a slot (a reservation wins over the watched status).
    fn holds(&self) -> Option<&str> {
        if self.deleting {
            return None;
        }
        self.reserved.as_deref().or(self.admitted.as_deref())
    }

    /// The Project it waits to be admitted to.
    fn waits(&self) -> Option<&str> {
        let p = self.points.as_deref()?;
        (!self.deleting && self.holds() != Some(p)).then_some(p)
    }

    /// Every Project it is a member of (for the Project's counts and for waking).
    fn projects(&self) -> impl Iterator<Item = &str> {
        let a = self.admitted.as_deref();
        let p = self.points.as_deref().filter(|p| Some(*p) != a);
        let r = self
            .reserved
            .as_deref()
            .filter(|r| Some(*r) != a && Some(*r) != self.points.as_deref());
        a.into_iter().chain(p).chain(r)
    }
}

/// Where a VM is admitted: `status.project`, else the Project of its creation intent (recorded before
/// the create, so a crash before the status write keeps the slot); a VM created before admission was
/// recorded holds a slot where it points.
pub fn admitted_to(vm: &VirtualMachine) -> Option<String> {
    let st = vm.status.as_ref();
    if let Some(p) = st.and_then(|s| s.project.clone()) {
        return Some(p);
    }
    if let Some(p) = CreationIntent::of(vm).and_then(|i| i.project) {
        return Some(p);
    }
    st.filter(|s| s.external_id.is_some())
        .and_then(|_| vm.spec.project_ref.as_ref().map(|r| r.name.clone()))
}

/// Running totals of one Project.
#[derive(Debug, Default)]
struct Totals {
    members: HashSet<ObjectRef<VirtualMachine>>,
    held: usize,
    spend: HashMap<String, Decimal>,
    waiting: BTreeSet<(AdmissionOrder, String)>,
}

#[derive(Debug, Default)]
struct Inner {
    vms: HashMap<ObjectRef<VirtualMachine>, Facts>,
    projects: HashMap<ProjectKey, Totals>,
    /// Objects seen since a re-list started (`None`: no re-list under way).
    relisting: Option<HashSet<ObjectRef<VirtualMachine>>>,
}

impl Inner {
    fn totals(&mut self, ns: &str, project: &str) -> &mut Totals {
        self.projects
            .entry((ns.to_string(), project.to_string()))
            .or_default()
    }

    /// Adds (`sign > 0`) or removes what `f` contributes to its Projects' totals.
    fn add(&mut self, key: &ObjectRef<VirtualMachine>, f: &Facts, sign: i8) {
        let adding = sign > 0;
        for p in f.projects() {
            let t = self.totals(&f.ns, p);
            if adding {
                t.members.insert(key.clone());
            } else {
                t.members.remove(key);
            }
        }
        if let Some(p) = f.holds() {
            let t = self.totals(&f.ns, p);
            if adding {
                t.held += 1;
            } else {
                t.held = t.held.saturating_sub(1);
            }
            if let Some((price, cur)) = &f.monthly {
                let s = t.spend.entry(cur.clone()).or_default();
                if adding {
                    *s += price;
                } else {
                    *s -= price;
                }
            }
        }
        if let Some(p) = f.waits() {
            let entry = (f.order.clone(), f.uid.clone());
            let t = self.totals(&f.ns, p);
            if adding {
                t.waiting.insert(entry);
            } else {
                t.waiting.remove(&entry);
            }
        }
        if !adding {
            // Forget Projects nothing belongs to any more.
            for p in f.projects().chain(f.holds()).chain(f.waits()) {
                let k = (f.ns.clone(), p.to_string());
                if self
                    .projects
                    .get(&k)
                    .is_some_and(|t| t.members.is_empty() && t.held == 0 && t.waiting.is_empty())
                {
                    self.projects.remove(&k);
                }
            }
        }
    }

    fn set(&mut self, vm: &VirtualMachine) {
        let key = ObjectRef::from_obj(vm);
        let mut f = Facts::of(vm);
        if let Some(old) = self.vms.remove(&key) {
            self.add(&key, &old, -1);
            // A reservation stays until the watched status shows it (or the VM moves elsewhere).
            f.reserved = old.reserved.filter(|r| f.admitted.as_ref() != Some(r));
        }
        self.add(&key, &f, 1);
        if let Some(seen) = &mut self.relisting {
            seen.insert(key.clone());
        }
        self.vms.insert(key, f);
    }

    fn remove(&mut self, key: &ObjectRef<VirtualMachine>) {
        if let Some(old) = self.vms.remove(key) {
            self.add(key, &old, -1);
        }
    }
}

/// The membership index of VirtualMachines (see the module docs).
/// A [`KindState`](crate::controller::runtime::state::KindState): fed by the VirtualMachine watch.
#[derive(Debug, Default)]
pub struct MemberIndex {
    inner: Mutex<Inner>,
}

impl MemberIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one watch event (re-lists included: objects not seen again are dropped at its end).
    pub fn observe(&self, event: &watcher::Event<VirtualMachine>) {
        let mut inner = self.lock();
        match event {
            watcher::Event::Apply(vm) | watcher::Event::InitApply(vm) => inner.set(vm),
            watcher::Event::Delete(vm) => inner.remove(&ObjectRef::from_obj(vm)),
            watcher::Event::Init => inner.relisting = Some(HashSet::new()),
            watcher::Event::InitDone => {
                if let Some(seen) = inner.relisting.take() {
                    let gone: Vec<_> = inner
                        .vms
                        .keys()
                        .filter(|k| !seen.contains(*k))
                        .cloned()
                        .collect();
                    for k in gone {
                        inner.remove(&k);
                    }
                }
            }
        }
    }

    /// The VMs that belong to Project `ns/name` (admitted there, pointing there, or reserved there).
    pub fn members(&self, ns: &str, name: &str) -> Vec<ObjectRef<VirtualMachine>> {
        self.lock()
            .projects
            .get(&(ns.to_string(), name.to_string()))
            .map(|t| t.members.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// How full Project `ns/name` is for the VM `me` (never counted itself) with admission order
    /// `order`, counting spend in `currency` only.
    pub fn occupancy(
        &self,
        ns: &str,
        name: &str,
        me: &ObjectRef<VirtualMachine>,
        order: &AdmissionOrder,
        currency: &str,
    ) -> Occupancy {
        occupancy(&self.lock(), ns, name, me, order, currency)
    }

    /// Reserves a slot in Project `ns/name` for VM `me`, if `check` (run on the current occupancy, in
    /// the same critical section) admits it. The reservation counts at once, for every other admission.
    pub fn reserve(
        &self,
        ns: &str,
        name: &str,
        me: &ObjectRef<VirtualMachine>,
        order: &AdmissionOrder,
        currency: &str,
        check: impl FnOnce(&Occupancy) -> Result<(), Refusal>,
    ) -> Result<(), Refusal> {
        let mut inner = self.lock();
        check(&occupancy(&inner, ns, name, me, order, currency))?;
        if let Some(mut f) = inner.vms.remove(me) {
            inner.add(me, &f, -1);
            f.reserved = Some(name.to_string());
            inner.add(me, &f, 1);
            inner.vms.insert(me.clone(), f);
        }
        Ok(())
    }
}

fn occupancy(
    inner: &Inner,
    ns: &str,
    name: &str,
    me: &ObjectRef<VirtualMachine>,
    order: &AdmissionOrder,
    currency: &str,
) -> Occupancy {
    let Some(t) = inner.projects.get(&(ns.to_string(), name.to_string())) else {
        return Occupancy::default();
    };
    let mine = inner.vms.get(me);
    let mut held = t.held;
    let mut spend = t.spend.get(currency).copied().unwrap_or_default();
    if let Some(f) = mine.filter(|f| f.holds() == Some(name)) {
        held = held.saturating_sub(1);
        if let Some((price, _)) = f.monthly.as_ref().filter(|(_, c)| c == currency) {
            spend -= price;
        }
    }
    let my_uid = mine.map(|f| f.uid.as_str()).unwrap_or_default();
    let ahead = t
        .waiting
        .iter()
        .take_while(|(o, _)| o < order)
        .filter(|(_, uid)| uid != my_uid)
        .count();
    Occupancy { held, ahead, spend }
}

/// SimCard → its Project, and the SimCards seen since a re-list started.
/// The SimCard index's state: each SimCard's Projects, each Project's SimCards (both ways, so a
/// Project's members are found without scanning every SimCard), and the objects seen since a re-list
/// started.
#[derive(Debug, Default)]
struct SimInner {
    of: HashMap<ObjectRef<SimCard>, Vec<ProjectKey>>,
    members: HashMap<ProjectKey, HashSet<ObjectRef<SimCard>>>,
    relisting: Option<HashSet<ObjectRef<SimCard>>>,
}

impl SimInner {
    /// Sets (or, with none, removes) the Projects of `key`.
    fn set(&mut self, key: &ObjectRef<SimCard>, projects: Vec<ProjectKey>) {
        for p in self.of.remove(key).unwrap_or_default() {
            if let Some(m) = self.members.get_mut(&p) {
                m.remove(key);
                if m.is_empty() {
                    self.members.remove(&p);
                }
            }
        }
        for p in &projects {
            self.members
                .entry(p.clone())
                .or_default()
                .insert(key.clone());
        }
        if !projects.is_empty() {
            self.of.insert(key.clone(), projects);
        }
    }
}

/// The Projects a SimCard belongs to: the one `spec.projectRef` names and the one it is billed to
/// (`status.project`), which differ while a move is refused; the billed Project's credit stop must
/// still wake it.
fn sim_projects(s: &SimCard) -> Vec<ProjectKey> {
    let ns = s.namespace().unwrap_or_default();
    let mut out: Vec<ProjectKey> = Vec::new();
    let points = s.spec.project_ref.as_ref().map(|r| r.name.clone());
    let billed = s.status.as_ref().and_then(|st| st.project.clone());
    for p in points.into_iter().chain(billed) {
        if !out.iter().any(|(_, q)| *q == p) {
            out.push((ns.clone(), p));
        }
    }
    out
}

/// Which SimCards belong to which Project (`spec.projectRef`, and `status.project` while a move is
/// refused), from the SimCard watch.
/// A [`KindState`](crate::controller::runtime::state::KindState): fed by the SimCard watch.
#[derive(Debug, Default)]
pub struct SimIndex {
    inner: Mutex<SimInner>,
}

impl SimIndex {
    /// Applies one watch event.
    pub fn observe(&self, event: &watcher::Event<SimCard>) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            watcher::Event::Apply(s) | watcher::Event::InitApply(s) => {
                let key = ObjectRef::from_obj(s);
                if let Some(seen) = g.relisting.as_mut() {
                    seen.insert(key.clone());
                }
                g.set(&key, sim_projects(s));
            }
            watcher::Event::Delete(s) => g.set(&ObjectRef::from_obj(s), Vec::new()),
            watcher::Event::Init => g.relisting = Some(HashSet::new()),
            watcher::Event::InitDone => {
                if let Some(seen) = g.relisting.take() {
                    let gone: Vec<_> =
                        g.of.keys()
                            .filter(|k| !seen.contains(*k))
                            .cloned()
                            .collect();
                    for k in gone {
                        g.set(&k, Vec::new());
                    }
                }
            }
        }
    }

    /// The SimCards of Project `ns/name`.
    pub fn members(&self, ns: &str, name: &str) -> Vec<ObjectRef<SimCard>> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.members
            .get(&(ns.to_string(), name.to_string()))
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl crate::controller::runtime::state::KindState for MemberIndex {}
impl crate::controller::runtime::state::KindState for SimIndex {}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::controller::project::policy::Member;

    /// The members as [`Member`]s, for comparing the index with [`Occupancy::of`].
    fn member_list(
        idx: &MemberIndex,
        ns: &str,
        name: &str,
        except: &ObjectRef<VirtualMachine>,
    ) -> Vec<Member> {
        idx.lock()
            .vms
            .iter()
            .filter(|(k, f)| *k != except && f.ns == ns)
            .filter_map(|(_, f)| {
                let admitted = f.holds() == Some(name);
                (admitted || f.waits() == Some(name)).then(|| Member {
                    order: f.order.clone(),
                    admitted,
                    monthly: f.monthly.clone(),
                })
            })
            .collect()
    }

    fn vm(name: &str, t: i64, points: Option<&str>, status: serde_json::Value) -> VirtualMachine {
        let mut spec = serde_json::json!({
            "providerConfigRef": {"name": "pc"}, "region": "fra1", "size": "s", "image": "i"
        });
        if let Some(p) = points {
            spec["projectRef"] = serde_json::json!({"name": p});
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"),
                         "creationTimestamp": jiff::Timestamp::from_second(t).unwrap().to_string()},
            "spec": spec, "status": status
        }))
        .unwrap()
    }

    fn admitted(p: &str, price: &str, cur: &str) -> serde_json::Value {
        serde_json::json!({"project": p, "monthlyPrice": price, "currency": cur, "externalID": "1"})
    }

    fn index(vms: &[VirtualMachine]) -> MemberIndex {
        let idx = MemberIndex::default();
        for v in vms {
            idx.observe(&watcher::Event::Apply(v.clone()));
        }
        idx
    }

    fn with_intent(mut v: VirtualMachine, creation_key: &str, project: &str) -> VirtualMachine {
        let intent = CreationIntent {
            creation_key: creation_key.into(),
            provider_config: "pc".into(),
            project: Some(project.into()),
        };
        v.metadata.annotations = Some(
            [(
                crate::crd::ANNOTATION_CREATION_INTENT.to_string(),
                intent.to_annotation(),
            )]
            .into(),
        );
        v
    }

    #[test]
    fn a_creation_intent_holds_its_slot_and_a_copied_one_does_not() {
        // Intent written (with the finalizer), the status not yet: the slot is held.
        let ours = with_intent(vm("a", 1, Some("p"), serde_json::json!(null)), "uid-a", "p");
        assert_eq!(admitted_to(&ours).as_deref(), Some("p"));
        // An annotation copied from another object (another UID) counts for nothing.
        let copied = with_intent(vm("b", 2, Some("p"), serde_json::json!(null)), "uid-a", "p");
        assert_eq!(admitted_to(&copied), None);
        // The status, once written, is what counts.
        let moved = with_intent(
            vm("c", 3, Some("q"), admitted("q", "6", "USD")),
            "uid-c",
            "p",
        );
        assert_eq!(admitted_to(&moved).as_deref(), Some("q"));
        let idx = index(&[ours, copied]);
        let b = ObjectRef::new("b").within("ns");
        let occ = idx.occupancy("ns", "p", &b, &(Some(2), "b".into()), "USD");
        assert_eq!((occ.held, occ.ahead), (1, 0));
    }

    #[test]
    fn totals_match_the_reference_counting() {
        let vms = vec![
            vm("a", 1, Some("p"), admitted("p", "6", "USD")),
            vm("b", 2, Some("p"), admitted("p", "9", "EUR")),
            vm("c", 3, Some("p"), serde_json::json!(null)),
            vm("d", 9, Some("p"), serde_json::json!(null)),
            vm("e", 4, Some("q"), admitted("p", "12", "USD")),
            vm("f", 5, None, serde_json::json!(null)),
        ];
        let idx = index(&vms);
        for me in &vms {
            let key = ObjectRef::from_obj(me);
            let order = order_of(me);
            let want = Occupancy::of(&member_list(&idx, "ns", "p", &key), &order, "USD");
            assert_eq!(
                idx.occupancy("ns", "p", &key, &order, "USD"),
                want,
                "{}",
                me.name_any()
            );
        }
        let none = ObjectRef::new("new").within("ns");
        let occ = idx.occupancy("ns", "p", &none, &(Some(5), "new".into()), "USD");
        assert_eq!(occ.held, 3, "a, b and e hold slots");
        assert_eq!(occ.ahead, 1, "c waits ahead, d behind");
        assert_eq!(
            occ.spend,
            "18".parse().unwrap(),
            "EUR is never added to USD"
        );
        assert_eq!(idx.members("ns", "p").len(), 5);
        assert_eq!(idx.members("ns", "q").len(), 1);
    }

    #[test]
    fn a_reservation_counts_at_once_and_until_the_status_shows_it() {
        let c = vm("c", 3, Some("p"), serde_json::json!(null));
        let idx = index(&[vm("a", 1, Some("p"), admitted("p", "6", "USD")), c.clone()]);
        let key = ObjectRef::from_obj(&c);
        let order = (Some(3), "c".to_string());
        let fits = |max: usize| {
            move |o: &Occupancy| {
                if o.held + o.ahead + 1 > max {
                    Err(("LimitExceeded", "full".to_string()))
                } else {
                    Ok(())
                }
            }
        };
        assert!(
            idx.reserve("ns", "p", &key, &order, "USD", fits(1))
                .is_err()
        );
        assert!(idx.reserve("ns", "p", &key, &order, "USD", fits(2)).is_ok());
        let other = ObjectRef::new("z").within("ns");
        let later = (Some(10), "z".to_string());
        assert_eq!(idx.occupancy("ns", "p", &other, &later, "USD").held, 2);
        // A watch event from before the status write keeps the reservation...
        idx.observe(&watcher::Event::Apply(c.clone()));
        assert_eq!(idx.occupancy("ns", "p", &other, &later, "USD").held, 2);
        // ...and the written status replaces it.
        idx.observe(&watcher::Event::Apply(vm(
            "c",
            3,
            Some("p"),
            admitted("p", "6", "USD"),
        )));
        assert_eq!(idx.occupancy("ns", "p", &other, &later, "USD").held, 2);
        // Deleting frees the slot; a re-list drops objects not seen again.
        let mut gone = c.clone();
        gone.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
        idx.observe(&watcher::Event::Apply(gone));
        assert_eq!(idx.occupancy("ns", "p", &other, &later, "USD").held, 1);
        idx.observe(&watcher::Event::Init);
        idx.observe(&watcher::Event::InitDone);
        assert_eq!(
            idx.occupancy("ns", "p", &other, &later, "USD"),
            Occupancy::default()
        );
        assert!(idx.members("ns", "p").is_empty());
    }

    fn sim(name: &str, points: Option<&str>, billed: Option<&str>) -> SimCard {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "SimCard",
            "metadata": {"name": name, "namespace": "n"},
            "spec": {"iccid": "8988280666000000000", "providerConfigRef": {"name": "iot"},
                     "projectRef": points.map(|p| serde_json::json!({"name": p}))},
            "status": {"project": billed}
        }))
        .unwrap()
    }

    fn names(idx: &SimIndex, project: &str) -> Vec<String> {
        let mut v: Vec<String> = idx
            .members("n", project)
            .iter()
            .map(|r| r.name.clone())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn sims_belong_where_they_point_and_where_they_are_billed() {
        let idx = SimIndex::default();
        idx.observe(&watcher::Event::Apply(sim("a", Some("p"), Some("p"))));
        idx.observe(&watcher::Event::Apply(sim("b", Some("q"), Some("p"))));
        idx.observe(&watcher::Event::Apply(sim("c", None, None)));
        assert_eq!(names(&idx, "p"), ["a", "b"]);
        assert_eq!(names(&idx, "q"), ["b"]);
        // The move is admitted: billed where it points now.
        idx.observe(&watcher::Event::Apply(sim("b", Some("q"), Some("q"))));
        assert_eq!(names(&idx, "p"), ["a"]);
        // A re-list that no longer holds `a` forgets it; a delete forgets `b`.
        idx.observe(&watcher::Event::Init);
        idx.observe(&watcher::Event::InitApply(sim("b", Some("q"), Some("q"))));
        idx.observe(&watcher::Event::InitDone);
        assert!(names(&idx, "p").is_empty());
        idx.observe(&watcher::Event::Delete(sim("b", Some("q"), Some("q"))));
        assert!(names(&idx, "q").is_empty());
    }
}

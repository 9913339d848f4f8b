//! Whether the VM's Project admits a new snapshot: storage costs money from its first hour, so it is
//! admitted like any price — nothing new under the Project's credit stop or lost entitlement, its
//! currency, and its `maxMonthlySpend` beside what its VMs and its other snapshots cost a month (from
//! the caches: the membership index for the VMs, the snapshot cache for the snapshots). The storage is
//! estimated before the vendor reports a size at the disk of the server's size (a snapshot is never
//! larger) and recorded in `status.monthlyPrice`.

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use rust_decimal::Decimal;

use super::decide::{self, Source};
use crate::cloud::ComputeProvider;
use crate::controller::project::members::MemberIndex;
use crate::controller::project::policy::{self, project_state};
use crate::controller::runtime::framework::Outcome;
use crate::controller::vendor::Resolved;
use crate::controller::{Context, Error};
use crate::crd::conditions::Health;
use crate::crd::{Project, VirtualMachine, VirtualMachineSnapshot, VirtualMachineSnapshotStatus};

/// `Some(outcome)` when the Project does not admit the snapshot now; records the storage's estimate
/// in `status` when it does.
pub async fn admit(
    ctx: &Context,
    obj: &VirtualMachineSnapshot,
    src: &Source,
    provider: &dyn ComputeProvider,
    resolved: &Resolved,
    status: &mut VirtualMachineSnapshotStatus,
) -> Result<Option<Outcome>, Error> {
    let ns = obj.namespace().unwrap_or_default();
    let caches = ctx.caches()?;
    let vm = caches
        .store::<VirtualMachine>()?
        .get(&ObjectRef::new(&obj.spec.virtual_machine_ref.name).within(&ns));
    let estimate = estimate(ctx, vm.as_deref(), provider, resolved).await;
    status.monthly_price = estimate
        .as_ref()
        .map(|(m, _)| crate::ledger::format_money(*m));
    status.currency = estimate.as_ref().map(|(_, c)| c.to_string());
    let Some((name, _)) = &src.project else {
        return Ok(None);
    };
    let Some(p) = caches
        .store::<Project>()?
        .get(&ObjectRef::new(name).within(&ns))
    else {
        return Ok(None);
    };
    if let Some(stop) = policy::new_block(&p) {
        return Ok(Some(
            Outcome::new(Health::not_ready(
                stop.reason,
                format!("not taken: {}", stop.message),
            ))
            .requeue_after(ctx.config.poll_interval * 6),
        ));
    }
    let limited = policy::effective_limits(&p).max_monthly_spend.is_some();
    let mut spend = Decimal::ZERO;
    if limited && let Some(vm) = &vm {
        // Every member VM counts (a reference to no VM excludes none of them).
        let nobody = ObjectRef::<VirtualMachine>::new("").within(&ns);
        spend = ctx
            .state::<MemberIndex>()
            .occupancy(&ns, name, &nobody, &policy::order_of(vm), &p.spec.currency)
            .spend;
    }
    let state = project_state(&p, Default::default());
    let priced = estimate.as_ref().map(|(m, c)| (*m, c.as_str()));
    let uid = obj.uid().unwrap_or_default();
    let key = (ns.clone(), name.clone());
    // The other snapshots and this one's admission in one critical section: two admitted at once
    // each count the other.
    let admitted = ctx.state::<Admitted>();
    let mut held = admitted.lock();
    if limited {
        spend += cache_spend(ctx, &key, &p.spec.currency, Some(&uid), &held)?;
        spend += held.others(&key, &uid, &p.spec.currency);
    }
    if let Err((r, m)) = decide::admit_storage(&state, spend, priced) {
        return Ok(Some(Outcome::new(Health::stalled(
            r,
            format!("not taken: {m}"),
        ))));
    }
    if let Some((monthly, currency)) = estimate {
        held.keep(key, uid, monthly, currency);
    }
    Ok(None)
}

/// Snapshots admitted by this process whose price the cache may not show yet, by Project: counted
/// beside the cache's figures (in their place for the same snapshot) until they are deleted.
#[derive(Default)]
pub struct Admitted(std::sync::Mutex<AdmittedMap>);

/// Per Project (namespace, name): each admitted snapshot's UID, monthly price and currency.
type AdmittedMap = std::collections::HashMap<
    (String, String),
    std::collections::HashMap<String, (Decimal, String)>,
>;

impl Admitted {
    fn lock(&self) -> std::sync::MutexGuard<'_, AdmittedMap> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

trait Held {
    fn others(&self, key: &(String, String), me: &str, currency: &str) -> Decimal;
    fn keep(&mut self, key: (String, String), uid: String, monthly: Decimal, currency: String);
}

impl Held for AdmittedMap {
    fn others(&self, key: &(String, String), me: &str, currency: &str) -> Decimal {
        self.get(key)
            .map(|m| {
                m.iter()
                    .filter(|(uid, (_, c))| uid.as_str() != me && c == currency)
                    .map(|(_, (monthly, _))| *monthly)
                    .sum()
            })
            .unwrap_or_default()
    }

    fn keep(&mut self, key: (String, String), uid: String, monthly: Decimal, currency: String) {
        self.entry(key)
            .or_default()
            .insert(uid, (monthly, currency));
    }
}

impl crate::controller::runtime::state::KindState for Admitted {
    fn forget(&self, _key: &str, uid: Option<&str>) {
        if let Some(uid) = uid {
            for m in self.lock().values_mut() {
                m.remove(uid);
            }
        }
    }
}

/// The storage's monthly price at the disk of the VM's size, with the markup; `None` when the vendor
/// prices no snapshot storage or the size's disk is not known.
async fn estimate(
    ctx: &Context,
    vm: Option<&VirtualMachine>,
    provider: &dyn ComputeProvider,
    resolved: &Resolved,
) -> Option<(Decimal, String)> {
    let (price, currency) = provider.snapshot_price()?;
    let size = vm?.status.as_ref()?.size.clone()?;
    let catalog = crate::controller::virtual_machine::read::catalog(ctx, resolved, provider)
        .await
        .ok()?;
    let disk = Decimal::from(catalog.size(&size)?.disk_gb);
    let monthly = crate::ledger::metering::marked_up(price, resolved.config.spec.markup()) * disk;
    Some((monthly.normalize(), currency.to_string()))
}

/// What Project `ns/project`'s snapshots cost a month in `currency`: VM admission counts them beside
/// its VMs. From the snapshot cache, and for those this process admitted, from what they were admitted at.
pub fn storage_spend(
    ctx: &Context,
    ns: &str,
    project: &str,
    currency: &str,
) -> Result<Decimal, Error> {
    let admitted = ctx.state::<Admitted>();
    let held = admitted.lock();
    let key = (ns.to_string(), project.to_string());
    Ok(cache_spend(ctx, &key, currency, None, &held)? + held.others(&key, "", currency))
}

/// What the cache shows of the Project's snapshots a month in `currency`, but `except` and those in
/// `held` (counted from there).
fn cache_spend(
    ctx: &Context,
    (ns, project): &(String, String),
    currency: &str,
    except: Option<&str>,
    held: &AdmittedMap,
) -> Result<Decimal, Error> {
    let mine = held.get(&(ns.clone(), project.clone()));
    Ok(ctx
        .caches()?
        .store::<VirtualMachineSnapshot>()?
        .state()
        .iter()
        .filter(|s| s.namespace().as_deref() == Some(ns.as_str()))
        .filter(|s| {
            let uid = s.uid().unwrap_or_default();
            Some(uid.as_str()) != except && mine.is_none_or(|m| !m.contains_key(&uid))
        })
        .filter_map(|s| s.status.as_ref())
        .filter(|st| st.project.as_deref() == Some(project.as_str()))
        .filter(|st| st.currency.as_deref() == Some(currency))
        .filter_map(|st| st.monthly_price.as_deref()?.parse::<Decimal>().ok())
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admitted_snapshots_count_for_the_others_of_their_project_and_currency() {
        let mut m = AdmittedMap::default();
        let acme = ("t".to_string(), "acme".to_string());
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        m.keep(acme.clone(), "a".into(), d("1.5"), "USD".into());
        m.keep(acme.clone(), "b".into(), d("2"), "USD".into());
        m.keep(acme.clone(), "c".into(), d("9"), "EUR".into());
        m.keep(
            ("t".into(), "other".into()),
            "d".into(),
            d("7"),
            "USD".into(),
        );
        // A second snapshot admitted at once sees the first; itself and other currencies are not counted.
        assert_eq!(m.others(&acme, "b", "USD"), d("1.5"));
        assert_eq!(m.others(&acme, "", "USD"), d("3.5"));
        assert_eq!(m.others(&acme, "", "EUR"), d("9"));
        assert_eq!(
            m.others(&("t".into(), "none".into()), "", "USD"),
            Decimal::ZERO
        );
        let admitted = Admitted(std::sync::Mutex::new(m));
        crate::controller::runtime::state::KindState::forget(&admitted, "t/b", Some("a"));
        assert_eq!(admitted.lock().others(&acme, "", "USD"), d("2"));
    }
}

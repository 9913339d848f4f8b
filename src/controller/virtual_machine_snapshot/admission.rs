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
    let mut spend = Decimal::ZERO;
    if policy::effective_limits(&p).max_monthly_spend.is_some()
        && let Some(vm) = &vm
    {
        // Every member VM counts (a reference to no VM excludes none of them).
        let nobody = ObjectRef::<VirtualMachine>::new("").within(&ns);
        spend = ctx
            .state::<MemberIndex>()
            .occupancy(&ns, name, &nobody, &policy::order_of(vm), &p.spec.currency)
            .spend;
        spend += others(ctx, obj, name, &p.spec.currency)?;
    }
    let state = project_state(&p, Default::default());
    let priced = estimate.as_ref().map(|(m, c)| (*m, c.as_str()));
    Ok(decide::admit_storage(&state, spend, priced)
        .err()
        .map(|(r, m)| Outcome::new(Health::stalled(r, format!("not taken: {m}")))))
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

/// What the Project's other snapshots in its namespace cost a month, in `currency`.
fn others(
    ctx: &Context,
    obj: &VirtualMachineSnapshot,
    project: &str,
    currency: &str,
) -> Result<Decimal, Error> {
    let ns = obj.namespace();
    let me = obj.uid();
    Ok(ctx
        .caches()?
        .store::<VirtualMachineSnapshot>()?
        .state()
        .iter()
        .filter(|s| s.namespace() == ns && s.uid() != me)
        .filter_map(|s| s.status.as_ref())
        .filter(|st| st.project.as_deref() == Some(project))
        .filter(|st| st.currency.as_deref() == Some(currency))
        .filter_map(|st| st.monthly_price.as_deref()?.parse::<Decimal>().ok())
        .sum())
}

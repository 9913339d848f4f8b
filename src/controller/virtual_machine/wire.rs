//! How VirtualMachines are woken, beyond their own changes:
//!
//! | change | wakes |
//! |---|---|
//! | drift in its account's listing (server gone, powered differently, resized) | that VM ([`observe`](super::observe)) |
//! | a ProviderConfig's spec, deletion, or whether its credentials are refused | the VMs using it |
//! | a Project's spec, deletion, or credit stop | every member VM |
//! | a Project's member counts (a slot may have freed) | only member VMs Stalled with `LimitExceeded` |
//! | a VirtualMachineSnapshot's ID or state | the VMs without a server that are to be created from it |
//!
//! Up to 128 VMs reconcile at once by default.

use std::time::Duration;

use kube::ResourceExt;

use super::VirtualMachineReconciler;
use crate::controller::project::members::MemberIndex;
use crate::controller::project::wake::{project_counts, project_for_members, waits_for_slot};
use crate::controller::provider_config::provider_config_for_users;
use crate::controller::runtime::Wiring;
use crate::controller::runtime::wake::{Memo, hash_of, referring};
use crate::crd::{Project, ProviderConfig, VirtualMachine, VirtualMachineSnapshot};

/// Wires the VirtualMachine controller and the account observer.
pub fn wire(w: &mut Wiring) {
    let vm = w.controller::<VirtualMachine>(128, Duration::ZERO);
    let (vms, pcs, pc_memo) = (
        w.store::<VirtualMachine>(),
        w.store::<ProviderConfig>(),
        Memo::<ProviderConfig>::default(),
    );
    let vm = vm.watches_shared_stream(w.changes::<ProviderConfig>(), move |pc| {
        if !pc_memo.changed_in(&*pc, provider_config_for_users(&pc), &pcs) {
            return Vec::new();
        }
        let name = pc.name_any();
        referring(&vms, |v| v.spec.provider_config_ref.name == name)
    });
    let (members, vms, projects) = (
        w.ctx().state::<MemberIndex>(),
        w.store::<VirtualMachine>(),
        w.store::<Project>(),
    );
    let (spec_memo, count_memo) = (Memo::<Project>::default(), Memo::<Project>::default());
    let vm = vm.watches_shared_stream(w.changes::<Project>(), move |p| {
        let all = spec_memo.changed_in(&*p, project_for_members(&p), &projects);
        let counts = count_memo.changed_in(&*p, project_counts(&p), &projects);
        if !all && !counts {
            return Vec::new();
        }
        let ns = p.namespace().unwrap_or_default();
        members
            .members(&ns, &p.name_any())
            .into_iter()
            .filter(|r| all || vms.get(r).is_some_and(|v| waits_for_slot(&v)))
            .collect::<Vec<_>>()
    });
    // A snapshot becoming available wakes the VMs waiting to be created from it.
    let (vms, snap_memo, snaps) = (
        w.store::<VirtualMachine>(),
        Memo::<VirtualMachineSnapshot>::default(),
        w.store::<VirtualMachineSnapshot>(),
    );
    let vm = vm.watches_shared_stream(w.changes::<VirtualMachineSnapshot>(), move |snap| {
        let st = snap.status.as_ref();
        let ready = hash_of((
            st.and_then(|s| s.snapshot_id.clone()),
            st.and_then(|s| s.state.clone()),
        ));
        if !snap_memo.changed_in(&*snap, ready, &snaps) {
            return Vec::new();
        }
        let (ns, name) = (snap.namespace(), snap.name_any());
        referring(&vms, |v| {
            v.namespace() == ns
                && v.spec
                    .source
                    .as_ref()
                    .is_some_and(|s| s.snapshot_ref.name == name)
                && v.status.as_ref().is_none_or(|s| s.external_id.is_none())
        })
    });
    w.holds_accounts::<crate::crd::VirtualMachine>(
        crate::controller::provider_config::credentials::needs,
    );
    w.run(vm, VirtualMachineReconciler);
    let ctx = w.ctx().clone();
    w.task(super::observe::run(ctx));
    let ctx = w.ctx().clone();
    let series = super::traffic::Series::new(ctx.state::<super::traffic::Traffic>());
    // Registered once per process (a second runtime on the same Context keeps the first's).
    let _ = ctx.metrics.registry().register(Box::new(series));
    w.task(super::traffic::run(ctx));
}

//! How VirtualMachines are woken, beyond their own changes:
//!
//! | change | wakes |
//! |---|---|
//! | drift in its account's listing (server gone, powered differently, resized) | that VM ([`observe`](super::observe)) |
//! | a ProviderConfig's spec, deletion, or whether its credentials are refused | the VMs using it |
//! | a Project's spec, deletion, or credit stop | every member VM |
//! | a Project's member counts (a slot may have freed) | only member VMs Stalled with `LimitExceeded` |
//!
//! Up to 128 VMs reconcile at once by default.

use std::time::Duration;

use kube::ResourceExt;

use super::VirtualMachineReconciler;
use crate::controller::project::members::MemberIndex;
use crate::controller::project::wake::{project_counts, project_for_members, waits_for_slot};
use crate::controller::provider_config::provider_config_for_users;
use crate::controller::runtime::Wiring;
use crate::controller::runtime::wake::{Memo, referring};
use crate::crd::{Project, ProviderConfig, VirtualMachine};

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
    w.holds_accounts::<crate::crd::VirtualMachine>(
        crate::controller::provider_config::credentials::needs,
    );
    w.run(vm, VirtualMachineReconciler);
    let ctx = w.ctx().clone();
    w.task(super::observe::run(ctx));
}

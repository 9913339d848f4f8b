//! How VirtualMachineSnapshots are woken, beyond their own changes:
//!
//! | change | wakes |
//! |---|---|
//! | a VirtualMachine's server (ID, account, phase), management policy or deletion | its snapshots not yet available |
//! | a ProviderConfig's spec, deletion, or whether its credentials are refused | the snapshots held in its account |
//! | a Project's spec, deletion, or credit stop (a limit raised, credit granted) | the snapshots of its namespace not requested yet |
//!
//! They also hold vendor state (their snapshot) through their account, so the ProviderConfig and its
//! credentials stay while they do. Up to 8 reconcile at once by default. Beside them, the snapshots
//! released to the platform are followed per account ([`released`](super::released)).

use std::time::Duration;

use kube::ResourceExt;

use super::VirtualMachineSnapshotReconciler;
use crate::controller::project::wake::project_for_members;
use crate::controller::provider_config::provider_config_for_users;
use crate::controller::runtime::Wiring;
use crate::controller::runtime::wake::{Memo, hash_of, referring};
use crate::crd::{Project, ProviderConfig, VirtualMachine, VirtualMachineSnapshot};

/// What a snapshot waiting for its VM depends on.
fn server_of(vm: &VirtualMachine) -> u64 {
    let st = vm.status.as_ref();
    hash_of((
        st.and_then(|s| s.external_id.clone()),
        st.and_then(|s| s.provider_config.clone()),
        st.and_then(|s| s.phase).map(|p| format!("{p:?}")),
        format!("{:?}", vm.spec.management_policy),
        vm.metadata.deletion_timestamp.is_some(),
    ))
}

/// Wires the VirtualMachineSnapshot controller.
pub fn wire(w: &mut Wiring) {
    let c = w.controller::<VirtualMachineSnapshot>(8, Duration::ZERO);
    let (snaps, vms, memo) = (
        w.store::<VirtualMachineSnapshot>(),
        w.store::<VirtualMachine>(),
        Memo::<VirtualMachine>::default(),
    );
    let c = c.watches_shared_stream(w.changes::<VirtualMachine>(), move |vm| {
        if !memo.changed_in(&*vm, server_of(&vm), &vms) {
            return Vec::new();
        }
        let (ns, name) = (vm.namespace(), vm.name_any());
        referring(&snaps, |s| {
            s.namespace() == ns
                && s.spec.virtual_machine_ref.name == name
                && s.status
                    .as_ref()
                    .is_none_or(|st| st.state.as_deref() != Some("Available"))
        })
    });
    let (snaps, pcs, pc_memo) = (
        w.store::<VirtualMachineSnapshot>(),
        w.store::<ProviderConfig>(),
        Memo::<ProviderConfig>::default(),
    );
    let c = c.watches_shared_stream(w.changes::<ProviderConfig>(), move |pc| {
        if !pc_memo.changed_in(&*pc, provider_config_for_users(&pc), &pcs) {
            return Vec::new();
        }
        let name = pc.name_any();
        referring(&snaps, |s| {
            s.status
                .as_ref()
                .is_some_and(|st| st.provider_config.as_deref() == Some(name.as_str()))
        })
    });
    let (snaps, projects, p_memo) = (
        w.store::<VirtualMachineSnapshot>(),
        w.store::<Project>(),
        Memo::<Project>::default(),
    );
    let c = c.watches_shared_stream(w.changes::<Project>(), move |p| {
        if !p_memo.changed_in(&*p, project_for_members(&p), &projects) {
            return Vec::new();
        }
        let ns = p.namespace();
        referring(&snaps, |s| {
            s.namespace() == ns
                && s.status
                    .as_ref()
                    .is_none_or(|st| st.mark.is_none() && st.snapshot_id.is_none())
        })
    });
    w.holds_accounts::<VirtualMachineSnapshot>(super::holds);
    w.run(c, VirtualMachineSnapshotReconciler);
    let ctx = w.ctx().clone();
    w.task(super::released::run(ctx));
}

//! What wakes Projects and their members, beyond their own changes:
//!
//! | change | wakes |
//! |---|---|
//! | a Project's spec, deletion, credit stop (exhausted with `onCreditExhausted: Stop`) or VPCs made | every member VM and SimCard |
//! | a Project's member counts (a slot may have freed) | only member VMs Stalled with `LimitExceeded` |
//! | a VM's membership, phase, price or existence at the vendor | the Project(s) it belongs to |
//! | a VM's deletion | the Project(s) it belonged to |
//! | a SimCard's `projectRef` | its Project |
//! | a Subscription's change | the Projects naming it |

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use crate::controller::runtime::wake::hash_of;
use crate::crd::conditions::{self, ConditionStatus, reason};
use crate::crd::{Project, VirtualMachine};

/// What a Project's members depend on: its spec, its deletion, and whether its credit stops them.
pub fn project_for_members(p: &Project) -> u64 {
    hash_of((
        p.metadata.generation,
        p.metadata.deletion_timestamp.is_some(),
        super::policy::credit_stop(p).is_some(),
        super::policy::new_block(p).is_some(),
        super::policy::effective_limits(p),
        // A VPC made: VMs waiting to join it (`spec.projectVPC`) go on.
        p.status.as_ref().map(|s| {
            s.vpcs
                .iter()
                .map(|v| (v.provider_config.clone(), v.region.clone(), v.id.clone()))
                .collect::<Vec<_>>()
        }),
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

/// What a Project's status depends on of a VM: membership, phase, price and whether the vendor holds it.
pub fn vm_for_project(vm: &VirtualMachine) -> u64 {
    let st = vm.status.as_ref();
    hash_of((
        vm.spec.project_ref.as_ref().map(|r| &r.name),
        vm.metadata.deletion_timestamp.is_some(),
        super::members::admitted_to(vm),
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
}

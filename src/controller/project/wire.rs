//! How Projects are woken (see [`wake`](super::wake) for the table), and the membership indexes they
//! and their members read: fed by the VirtualMachine and SimCard watches before their stores see an
//! event. A Project's reconcile waits `project_debounce` after its members' last change; up to 4
//! reconcile at once by default.

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::Event;

use super::ProjectReconciler;
use super::members::{MemberIndex, SimIndex};
use super::wake::{projects_of, vm_for_project};
use crate::controller::runtime::Wiring;
use crate::controller::runtime::wake::{Memo, Wakes, referring};
use crate::crd::{Project, SimCard, Subscription, VirtualMachine};

/// Wires the Project controller and the membership indexes.
pub fn wire(w: &mut Wiring) {
    let ctx = w.ctx().clone();
    let (members, sims, deleted) = (
        ctx.state::<MemberIndex>(),
        ctx.state::<SimIndex>(),
        ctx.state::<Wakes<Project>>(),
    );
    // Shared streams carry no deletions: the Projects of a VM that went are recounted from here.
    w.feeds().observe::<VirtualMachine>(move |e| {
        members.observe(e);
        if let Event::Delete(vm) = e {
            projects_of(vm).into_iter().for_each(|p| deleted.send(p));
        }
    });
    w.feeds().observe::<SimCard>(move |e| sims.observe(e));
    let proj = w.controller::<Project>(4, ctx.config.project_debounce);
    let (vm_memo, all_vms) = (
        Memo::<VirtualMachine>::default(),
        w.store::<VirtualMachine>(),
    );
    let proj = proj.watches_shared_stream(w.changes::<VirtualMachine>(), move |vm| {
        if vm_memo.changed_in(&*vm, vm_for_project(&vm), &all_vms) {
            projects_of(&vm)
        } else {
            Vec::new()
        }
    });
    // A Subscription's Stripe status decides whether the Projects naming it are entitled.
    let projects = w.store::<Project>();
    let proj = proj.watches_shared_stream(w.changes::<Subscription>(), move |sub| {
        let (ns, name) = (sub.namespace(), sub.name_any());
        referring(&projects, |p| {
            p.namespace() == ns
                && p.spec
                    .subscription_ref
                    .as_ref()
                    .is_some_and(|r| r.name == name)
        })
    });
    let proj = proj.watches_shared_stream(w.changes::<SimCard>(), |sim| {
        let ns = sim.namespace().unwrap_or_default();
        sim.spec
            .project_ref
            .as_ref()
            .map(|r| ObjectRef::<Project>::new(&r.name).within(&ns))
    });
    // A Project holds the accounts its VPCs are in.
    w.holds_accounts::<Project>(super::vpcs::holds);
    w.run(proj, ProjectReconciler);
}

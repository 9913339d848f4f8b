//! Scale behaviour of the VirtualMachine slice, end to end on a real kube-apiserver with `quartermaster
//! sim`: a reconcile of an unchanged VM reads nothing from the API server (related objects come from
//! the watch caches), a Project status change wakes its members only when it changes what they depend
//! on, two VMs racing for a Project's last slot get exactly one admission, and a VM on a vendor that
//! answers at once costs five writes.

use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use quartermaster::crd::Project;
use quartermaster::crd::conditions::ConditionStatus;

mod common;

use common::env::{Env, WAIT, env};

/// Requests the controller sent with `verb` for `resource` (from its `quartermaster_kube_requests_total`).
fn kube_requests(e: &Env, verb: &str, resource: &str) -> u64 {
    let text = e.metrics.as_ref().expect("controller runs").render();
    let want =
        format!("quartermaster_kube_requests_total{{resource=\"{resource}\",verb=\"{verb}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&want))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// VirtualMachine reconciles started so far.
fn vm_reconciles(e: &Env) -> u64 {
    e.metrics
        .as_ref()
        .expect("controller runs")
        .reconciles
        .with_label_values(&["VirtualMachine"])
        .get()
}

/// Reads of the objects a VM reconcile depends on.
fn related_reads(e: &Env) -> u64 {
    ["get", "list"]
        .iter()
        .flat_map(|v| {
            ["projects", "providerconfigs", "virtualmachines", "secrets"]
                .map(|r| kube_requests(e, v, r))
        })
        .sum()
}

#[tokio::test]
async fn an_unchanged_vm_is_reconciled_without_reading_the_api_server() {
    let e = env("vmcache", |_| {}, false)
        .await
        .with_controller(None, |_| {});
    e.apply_project(
        "team",
        serde_json::json!({"limits": {"maxVirtualMachines": 5}}),
    )
    .await;
    e.apply_vm(
        "web",
        serde_json::json!({"spec": {"projectRef": {"name": "team"}}}),
    )
    .await;
    e.wait_ready("web").await;
    // Each label change is a reconcile of a VM with nothing to do.
    let (reads, reconciles) = (related_reads(&e), vm_reconciles(&e));
    for i in 0..5 {
        e.patch_vm(
            "web",
            serde_json::json!({"metadata": {"labels": {"touched": i.to_string()}}}),
        )
        .await;
        let want = reconciles + i + 1;
        common::eventually(WAIT, "a reconcile per touch", || async {
            (vm_reconciles(&e) >= want).then_some(())
        })
        .await;
    }
    assert_eq!(
        related_reads(&e),
        reads,
        "reconciles of an unchanged VM read its Project, ProviderConfig, Secret or members from the API server"
    );
}

#[tokio::test]
async fn a_project_status_change_wakes_members_only_when_it_matters_to_them() {
    let e = env("vmwake", |_| {}, false)
        .await
        .with_controller(None, |_| {});
    e.apply_project("team", serde_json::json!({})).await;
    for n in ["a", "b", "c"] {
        e.apply_vm(
            n,
            serde_json::json!({"spec": {"projectRef": {"name": "team"}}}),
        )
        .await;
    }
    for n in ["a", "b", "c"] {
        e.wait_ready(n).await;
    }
    // Let the Project settle (its recount is debounced).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let projects: Api<Project> = Api::namespaced(e.client.clone(), &e.ns);
    let before = vm_reconciles(&e);
    // A cost figure changes: nothing members depend on.
    projects
        .patch_status(
            "team",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {"monthToDateCost": "12.34"}})),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        vm_reconciles(&e),
        before,
        "a cost-only Project status change woke its members"
    );
    // A spec change (limits) is what members depend on: each of them is looked at again.
    e.apply_project(
        "team",
        serde_json::json!({"limits": {"maxVirtualMachines": 10}}),
    )
    .await;
    common::eventually(
        WAIT,
        "members woken by the Project's spec change",
        || async { (vm_reconciles(&e) >= before + 3).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn two_vms_racing_for_the_last_slot_get_one_admission() {
    let e = env("vmrace", |_| {}, false)
        .await
        .with_controller(None, |_| {});
    e.apply_project(
        "team",
        serde_json::json!({"limits": {"maxVirtualMachines": 1}}),
    )
    .await;
    let spec = serde_json::json!({"spec": {"projectRef": {"name": "team"}}});
    futures::future::join_all(["x1", "x2", "x3", "x4"].map(|n| e.apply_vm(n, spec.clone()))).await;
    let stalled = common::eventually(WAIT, "one admitted, three waiting", || async {
        let list = e.vms().list(&Default::default()).await.ok()?;
        let state = |reason: &str| {
            list.items
                .iter()
                .filter(|v| {
                    v.status.as_ref().is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.reason == reason && c.status == ConditionStatus::True)
                    })
                })
                .count()
        };
        (state("LimitExceeded") == 3 && state("Reconciled") == 1).then_some(())
    })
    .await;
    let _: () = stalled;
    assert_eq!(
        e.sim.droplets().await.len(),
        1,
        "more than one VM was admitted to a Project with one slot"
    );
}

#[tokio::test]
async fn a_vm_whose_server_runs_at_once_is_ready_after_four_writes() {
    // The vendor reports a new server running at once (no provisioning delay).
    let e = env("vmfive", |c| c.provision_secs = 0, false)
        .await
        .with_controller(None, |_| {});
    e.apply_vm("web", serde_json::json!({})).await;
    e.wait_ready("web").await;
    // Let anything late arrive (a poll would come after 1 s here).
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The finalizer with the intent before the create (one write), and the status once it runs; the
    // connection Secret (plus, once per ProviderConfig, the finalizer that keeps its credentials Secret
    // while VMs need it); one Event saying it was created and is ready.
    assert_eq!(
        kube_requests(&e, "patch", "virtualmachines"),
        2,
        "VM writes"
    );
    assert_eq!(
        kube_requests(&e, "patch", "secrets"),
        2,
        "Secret writes: the connection Secret and the credentials Secret's finalizer"
    );
    // One reconcile did it all: neither our own finalizer-and-intent write nor the status wakes it again.
    assert_eq!(vm_reconciles(&e), 1, "VM reconciles");
    let events = e.events_of("web").await;
    assert_eq!(events.len(), 1, "{events:?}");
    let (reason, note) = &events[0];
    assert_eq!(reason, "Created");
    assert!(note.contains("ready: running at"), "{note}");
    assert_eq!(e.sim.droplets().await.len(), 1);
    // The status is one atomic field: the API server tracks it as `f:status`, not leaf by leaf.
    let vm = e.vms().get("web").await.unwrap();
    let status_entries: Vec<_> = vm
        .managed_fields()
        .iter()
        .filter(|m| {
            m.manager.as_deref() == Some("quartermaster") && m.operation.as_deref() == Some("Apply")
        })
        .map(|m| m.fields_v1.as_ref().map(|f| f.0.clone()))
        .collect();
    assert_eq!(status_entries, [Some(serde_json::json!({"f:status": {}}))]);
}

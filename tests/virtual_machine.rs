//! VirtualMachine and Project end to end, on a real kube-apiserver with `quartermaster sim` as the
//! DigitalOcean API: create → Running; Halted → Stopped → Always → Running; restart; resize; delete with
//! Delete and Orphan; adoption; ObserveOnly; allowedNamespaces refusal; immutable region; unknown size;
//! Project limits, Block and Cascade deletion; and crash safety (exactly one droplet after the controller is
//! killed between recorded intent and the vendor's answer).

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};
use quartermaster::crd::Project;
use quartermaster::crd::conditions::{self, ConditionStatus};
use quartermaster::crd::virtual_machine::CreationIntent;

mod common;

use common::env::{WAIT, env};

#[tokio::test]
async fn lifecycle_power_restart_resize_delete() {
    let e = env("vm", |_| {}, true).await;
    e.apply_vm(
        "web",
        serde_json::json!({"spec": {"ipv6": true, "tags": ["web"]}}),
    )
    .await;
    let vm = e.wait_ready("web").await;
    let st = vm.status.clone().unwrap();
    assert_eq!(format!("{:?}", st.phase.unwrap()), "Running");
    assert_eq!(
        st.creation_key.as_deref(),
        vm.metadata.uid.as_deref(),
        "intent recorded with the UID as key"
    );
    assert_eq!(st.monthly_price.as_deref(), Some("6.00"));
    assert_eq!(st.monthly_price_rounded.as_deref(), Some("6.00"));
    assert_eq!(st.hourly_price.as_deref(), Some("0.00893"));
    let ext = st.external_id.clone().unwrap();
    let droplet = e.droplet(&ext).await.expect("droplet exists at the vendor");
    let uid = vm.metadata.uid.clone().unwrap();
    assert!(
        droplet["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == &format!("quartermaster-uid-{uid}"))
    );
    assert!(
        droplet["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "web")
    );

    // Connection Secret, owned by the VM.
    let secrets: Api<Secret> = Api::namespaced(e.client.clone(), &e.ns);
    let s = secrets.get("web-connection").await.unwrap();
    let data = s.data.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&data["ipv4"].0),
        st.addresses.unwrap().public_ipv4.unwrap()
    );
    assert_eq!(String::from_utf8_lossy(&data["username"].0), "root");
    assert_eq!(s.metadata.owner_references.unwrap()[0].uid, uid);

    // Halted → Stopped (Ready, reason Stopped); runStrategy is never rewritten.
    e.patch_vm(
        "web",
        serde_json::json!({"spec": {"runStrategy": "Halted"}}),
    )
    .await;
    e.wait_vm("web", conditions::READY, ConditionStatus::True, "Stopped")
        .await;
    assert_eq!(e.droplet(&ext).await.unwrap()["status"], "off");
    // Always → Running.
    e.patch_vm(
        "web",
        serde_json::json!({"spec": {"runStrategy": "Always"}}),
    )
    .await;
    let vm = e.wait_ready("web").await;
    assert_eq!(format!("{:?}", vm.spec.run_strategy), "Always");

    // Restart: one reboot per distinct annotation value.
    e.patch_vm("web", serde_json::json!({"metadata": {"annotations": {"quartermaster.dev/restart-requested-at": "r1"}}}))
        .await;
    let vms = e.vms();
    common::eventually(WAIT, "restart r1 acknowledged", || async {
        let vm = vms.get("web").await.ok()?;
        (vm.status?.last_restart_request.as_deref() == Some("r1")).then_some(())
    })
    .await;
    common::eventually(WAIT, "a Restarting event", || async {
        e.event_reasons("web")
            .await
            .contains(&"Restarting".to_string())
            .then_some(())
    })
    .await;
    e.wait_ready("web").await;

    // Resize: power off, resize, power on; the price follows the size.
    e.patch_vm("web", serde_json::json!({"spec": {"size": "s-2vcpu-2gb"}}))
        .await;
    let vm = common::eventually(WAIT, "resized and running", || async {
        let vm = vms.get("web").await.ok()?;
        let st = vm.status.clone()?;
        let ready =
            conditions::find(&st.conditions, conditions::READY)?.status == ConditionStatus::True;
        (ready
            && st.size.as_deref() == Some("s-2vcpu-2gb")
            && st.observed_generation == vm.metadata.generation)
            .then_some(vm)
    })
    .await;
    assert_eq!(vm.status.unwrap().monthly_price.as_deref(), Some("18.00"));
    assert_eq!(e.droplet(&ext).await.unwrap()["size_slug"], "s-2vcpu-2gb");
    let reasons = e.event_reasons("web").await;
    for r in ["Created", "PoweringOff", "Resizing", "PoweringOn"] {
        assert!(
            reasons.contains(&r.to_string()),
            "no {r} event in {reasons:?}"
        );
    }

    // Region is immutable.
    e.patch_vm("web", serde_json::json!({"spec": {"region": "ams3"}}))
        .await;
    let vm = e
        .wait_vm(
            "web",
            conditions::STALLED,
            ConditionStatus::True,
            "ImmutableFieldChanged",
        )
        .await;
    let msg = conditions::find(&vm.status.unwrap().conditions, conditions::STALLED)
        .unwrap()
        .message
        .clone();
    assert!(msg.contains("fra1") && msg.contains("ams3"), "{msg}");
    e.patch_vm("web", serde_json::json!({"spec": {"region": "fra1"}}))
        .await;
    e.wait_ready("web").await;

    // Delete (policy Delete): the droplet goes, then the object.
    e.vms()
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    e.wait_gone("web").await;
    assert!(
        e.droplet(&ext).await.is_none(),
        "droplet still exists after delete"
    );
}

#[tokio::test]
async fn orphan_adoption_and_observe_only() {
    let e = env("vmo", |_| {}, true).await;
    e.allow_release().await;
    // Orphan (allowed for this namespace): the droplet survives the object.
    e.apply_vm(
        "keep",
        serde_json::json!({"spec": {"deletionPolicy": "Orphan"}}),
    )
    .await;
    let vm = e.wait_ready("keep").await;
    let keep_tag = format!("quartermaster-uid-{}", vm.metadata.uid.clone().unwrap());
    let ext = vm.status.unwrap().external_id.unwrap();
    e.vms()
        .delete("keep", &DeleteParams::default())
        .await
        .unwrap();
    e.wait_gone("keep").await;
    let left = e
        .droplet(&ext)
        .await
        .expect("an orphaned droplet was deleted");
    // Released: the ownership tag of an object that is gone is removed, so the droplet can be adopted
    // again, but only where the ProviderConfig allows adoption.
    let tags: Vec<String> = serde_json::from_value(left["tags"].clone()).unwrap();
    assert!(!tags.contains(&keep_tag), "{tags:?}");
    assert!(
        e.event_reasons("keep")
            .await
            .iter()
            .any(|r| r == "Orphaned")
    );
    e.apply_vm(
        "reuse",
        serde_json::json!({"metadata": {"annotations": {"quartermaster.dev/external-id": ext}}}),
    )
    .await;
    e.wait_vm(
        "reuse",
        conditions::STALLED,
        ConditionStatus::True,
        "AdoptionNotAllowed",
    )
    .await;
    e.vms()
        .delete("reuse", &DeleteParams::default())
        .await
        .unwrap();
    e.wait_gone("reuse").await;
    assert!(
        e.droplet(&ext).await.is_some(),
        "deleted a droplet it never owned"
    );

    // An untagged droplet (made in the vendor's console) is adopted only where the ProviderConfig allows;
    // ObserveOnly with runStrategy Halted: observed, never powered off, never tagged.
    let ext = e.sim.create_droplet("console", &["made-by-hand"]).await;
    e.apply_vm(
        "adopted",
        serde_json::json!({
            "metadata": {"annotations": {"quartermaster.dev/external-id": ext}},
            "spec": {"managementPolicy": "ObserveOnly", "runStrategy": "Halted", "size": "s-4vcpu-8gb"}
        }),
    )
    .await;
    e.wait_vm(
        "adopted",
        conditions::STALLED,
        ConditionStatus::True,
        "AdoptionNotAllowed",
    )
    .await;
    e.allow_adoption().await;
    let vm = e.wait_ready("adopted").await;
    let st = vm.status.unwrap();
    assert_eq!(st.external_id.as_deref(), Some(ext.as_str()));
    assert_eq!(
        st.size.as_deref(),
        Some("s-1vcpu-1gb"),
        "status reports the vendor's truth, not the spec"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let d = e.droplet(&ext).await.unwrap();
    assert_eq!(d["status"], "active", "ObserveOnly powered the droplet off");
    assert_eq!(
        d["size_slug"], "s-1vcpu-1gb",
        "ObserveOnly resized the droplet"
    );
    assert_eq!(
        e.sim.droplets().await.len(),
        2,
        "ObserveOnly created a droplet"
    );
    assert_eq!(
        d["tags"],
        serde_json::json!(["made-by-hand"]),
        "ObserveOnly tagged the droplet"
    );
    e.vms()
        .delete("adopted", &DeleteParams::default())
        .await
        .unwrap();
    e.wait_gone("adopted").await;
    assert!(
        e.droplet(&ext).await.is_some(),
        "ObserveOnly deleted the droplet"
    );

    // Adopting an ID the vendor does not know: Stalled.
    e.apply_vm("ghost", serde_json::json!({"metadata": {"annotations": {"quartermaster.dev/external-id": "424242"}}})).await;
    e.wait_vm(
        "ghost",
        conditions::STALLED,
        ConditionStatus::True,
        "ExternalNotFound",
    )
    .await;
}

#[tokio::test]
async fn refusals_not_allowed_namespace_and_unknown_size() {
    let e = env("vmr", |_| {}, true).await;
    // A ProviderConfig that allows only another namespace.
    let other = format!("{}-other", e.id);
    common::do_provider_config(
        &e.client,
        &e.id,
        &other,
        &e.ns,
        &e.sim.url,
        &["somebody-else"],
    )
    .await;
    e.apply_vm(
        "refused",
        serde_json::json!({"spec": {"providerConfigRef": {"name": other}}}),
    )
    .await;
    let vm = e
        .wait_vm(
            "refused",
            conditions::STALLED,
            ConditionStatus::True,
            "ProviderConfigNotAllowed",
        )
        .await;
    assert!(vm.status.unwrap().external_id.is_none());

    e.apply_vm("typo", serde_json::json!({"spec": {"size": "s-1vcpu-1g"}}))
        .await;
    let vm = e
        .wait_vm(
            "typo",
            conditions::STALLED,
            ConditionStatus::True,
            "InvalidSpec",
        )
        .await;
    let msg = conditions::find(&vm.status.unwrap().conditions, conditions::STALLED)
        .unwrap()
        .message
        .clone();
    assert!(msg.contains("did you mean \"s-1vcpu-1gb\""), "{msg}");

    e.apply_vm(
        "orphan-project",
        serde_json::json!({"spec": {"projectRef": {"name": "nope"}}}),
    )
    .await;
    e.wait_vm(
        "orphan-project",
        conditions::STALLED,
        ConditionStatus::True,
        "ProjectNotFound",
    )
    .await;
    assert!(
        e.sim.droplets().await.is_empty(),
        "a refused VM was created"
    );
}

#[tokio::test]
async fn project_limits_members_block_and_cascade() {
    let e = env("proj", |_| {}, true).await;
    let projects: Api<Project> = Api::namespaced(e.client.clone(), &e.ns);
    e.apply_project(
        "team",
        serde_json::json!({"limits": {"maxVirtualMachines": 1}, "deletionPolicy": "Block"}),
    )
    .await;
    e.apply_vm(
        "first",
        serde_json::json!({"spec": {"projectRef": {"name": "team"}}}),
    )
    .await;
    e.wait_ready("first").await;
    e.apply_vm(
        "second",
        serde_json::json!({"spec": {"projectRef": {"name": "team"}}}),
    )
    .await;
    e.wait_vm(
        "second",
        conditions::STALLED,
        ConditionStatus::True,
        "LimitExceeded",
    )
    .await;
    assert_eq!(
        e.sim.droplets().await.len(),
        1,
        "a VM beyond the limit was created"
    );

    // Status: members by phase and projected monthly cost.
    let p = common::eventually(WAIT, "project status", || async {
        let p = projects.get("team").await.ok()?;
        let m = p.status.as_ref()?.members.clone()?;
        (m.virtual_machines == 2 && m.by_phase.get("Running") == Some(&1)).then_some(p)
    })
    .await;
    assert_eq!(
        p.status.unwrap().projected_monthly_cost.as_deref(),
        Some("6.00")
    );

    // Block: deletion waits and names the members.
    projects
        .delete("team", &DeleteParams::default())
        .await
        .unwrap();
    let p = common::eventually(WAIT, "Block deletion condition", || async {
        let p = projects.get("team").await.ok()?;
        let c = conditions::find(&p.status.as_ref()?.conditions, conditions::RECONCILING)?.clone();
        (c.reason == "Deleting" && c.message.contains("VirtualMachine/first")).then_some(p)
    })
    .await;
    assert!(p.metadata.deletion_timestamp.is_some());
    e.vms()
        .delete("first", &DeleteParams::default())
        .await
        .unwrap();
    e.vms()
        .delete("second", &DeleteParams::default())
        .await
        .unwrap();
    common::eventually(
        WAIT,
        "blocked project deleted after its members",
        || async { projects.get_opt("team").await.ok()?.is_none().then_some(()) },
    )
    .await;

    // Cascade: members are deleted first (their droplets too), then the project.
    e.apply_project("crew", serde_json::json!({"deletionPolicy": "Cascade"}))
        .await;
    e.apply_vm(
        "c1",
        serde_json::json!({"spec": {"projectRef": {"name": "crew"}}}),
    )
    .await;
    e.apply_vm(
        "c2",
        serde_json::json!({"spec": {"projectRef": {"name": "crew"}}}),
    )
    .await;
    e.wait_ready("c1").await;
    e.wait_ready("c2").await;
    projects
        .delete("crew", &DeleteParams::default())
        .await
        .unwrap();
    common::eventually(WAIT, "cascade deletion", || async {
        projects.get_opt("crew").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(e.vms().get_opt("c1").await.unwrap().is_none());
    assert!(
        e.sim.droplets().await.is_empty(),
        "cascade left droplets behind"
    );
}

/// `quartermaster run` as its own process (so it can be killed mid-call), on this test's shard.
fn controller_process(id: &str) -> common::process::Controller {
    common::process::spawn_run(
        id,
        &common::kubeconfig(),
        &[
            "--leader-elect=false",
            "--label-selector",
            &format!("qm-test={id}"),
            "--poll-interval-secs",
            "1",
        ],
    )
}

#[tokio::test]
async fn crash_between_intent_and_vendor_answer_creates_exactly_one_droplet() {
    // The simulator records the droplet, then holds the create response open for 4 s.
    let e = env("crash", |c| c.create_latency_ms = 4000, false).await;
    let first = controller_process(&e.id);
    e.apply_vm("once", serde_json::json!({})).await;
    let vms = e.vms();
    // Intent recorded (with the finalizer, before the create) and the droplet exists at the vendor, but
    // its ID has not come back yet: no status has been written.
    common::eventually(WAIT, "intent recorded and droplet created", || async {
        let vm = vms.get("once").await.ok()?;
        let intent = CreationIntent::of(&vm)?;
        assert_eq!(Some(&intent.creation_key), vm.metadata.uid.as_ref());
        assert_eq!(intent.provider_config, e.pc);
        assert!(
            vm.finalizers()
                .iter()
                .any(|f| f == "quartermaster.dev/finalizer")
        );
        let pending = vm.status.as_ref().is_none_or(|s| s.external_id.is_none());
        (pending && !e.sim.droplets().await.is_empty()).then_some(())
    })
    .await;
    drop(first); // SIGKILL mid-call
    assert!(
        vms.get("once")
            .await
            .unwrap()
            .status
            .is_none_or(|s| s.external_id.is_none())
    );

    let _second = controller_process(&e.id);
    let vm = e.wait_ready("once").await;
    let droplets = e.sim.droplets().await;
    assert_eq!(
        droplets.len(),
        1,
        "expected exactly one droplet, got {droplets:?}"
    );
    assert_eq!(
        droplets[0]["id"].to_string(),
        vm.status.unwrap().external_id.unwrap()
    );
}

#[tokio::test]
async fn project_monthly_spend_limit_refuses_a_vm_that_would_exceed_it() {
    let e = env("spend", |_| {}, true).await;
    e.apply_project(
        "lean",
        serde_json::json!({"limits": {"maxMonthlySpend": "10.00"}}),
    )
    .await;
    e.apply_vm(
        "one",
        serde_json::json!({"spec": {"projectRef": {"name": "lean"}}}),
    )
    .await;
    e.wait_ready("one").await;
    e.apply_vm(
        "two",
        serde_json::json!({"spec": {"projectRef": {"name": "lean"}}}),
    )
    .await;
    let vm = e
        .wait_vm(
            "two",
            conditions::STALLED,
            ConditionStatus::True,
            "LimitExceeded",
        )
        .await;
    let msg = conditions::find(&vm.status.unwrap().conditions, conditions::STALLED)
        .unwrap()
        .message
        .clone();
    assert!(
        msg.contains("limits monthly spend to 10.00") && msg.contains("would add 6"),
        "{msg}"
    );
    assert_eq!(e.sim.droplets().await.len(), 1);
    // Raising the limit lets it through (a Project change wakes its VMs).
    e.apply_project(
        "lean",
        serde_json::json!({"limits": {"maxMonthlySpend": "20.00"}}),
    )
    .await;
    e.wait_ready("two").await;
}

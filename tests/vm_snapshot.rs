//! VirtualMachineSnapshot end to end, on a real kube-apiserver with `quartermaster sim` as the
//! DigitalOcean API: a snapshot waits for its VM, is taken once and deleted with its object (or kept with
//! Retain); a changed source stalls; a plan that cannot snapshot stalls with the vendor's words; and a
//! controller killed between the snapshot call and the status write takes exactly one snapshot.

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use quartermaster::crd::conditions::{self, ConditionStatus};
use quartermaster::crd::{ProviderConfig, VirtualMachineSnapshot, VirtualMachineSnapshotPolicy};

mod common;

use common::env::{Env, WAIT, env};

fn snaps(e: &Env) -> Api<VirtualMachineSnapshot> {
    Api::namespaced(e.client.clone(), &e.ns)
}

async fn apply_snapshot(e: &Env, name: &str, vm: &str, policy: &str) {
    let s = serde_json::json!({
        "apiVersion": "quartermaster.dev/v1alpha1", "kind": "VirtualMachineSnapshot",
        "metadata": {"name": name, "labels": {"qm-test": e.id}},
        "spec": {"virtualMachineRef": {"name": vm}, "deletionPolicy": policy},
    });
    snaps(e)
        .patch(
            name,
            &PatchParams::apply("quartermaster-tests").force(),
            &Patch::Apply(&s),
        )
        .await
        .unwrap();
}

/// Waits until snapshot `name` has condition `type_` True with `reason` for its generation.
async fn wait_snapshot(e: &Env, name: &str, type_: &str, reason: &str) -> VirtualMachineSnapshot {
    wait_for(e, name, type_, ConditionStatus::True, reason).await
}

/// Waits until snapshot `name` has condition `type_` at `status` with `reason` for its generation.
async fn wait_for(
    e: &Env,
    name: &str,
    type_: &str,
    status: ConditionStatus,
    reason: &str,
) -> VirtualMachineSnapshot {
    let api = snaps(e);
    common::eventually(
        WAIT,
        &format!("snapshot {name} {type_} ({reason})"),
        || async {
            let s = api.get(name).await.ok()?;
            let st = s.status.as_ref()?;
            let c = conditions::find(&st.conditions, type_)?;
            (c.status == status
                && c.reason == reason
                && st.observed_generation == s.metadata.generation)
                .then_some(s)
        },
    )
    .await
}

/// Applies VM `name` like `Env::apply_vm` but without an image (`extra`'s spec merged in).
async fn apply_vm_without_image(e: &Env, name: &str, extra: serde_json::Value) {
    let mut spec = serde_json::json!({
        "providerConfigRef": {"name": e.pc}, "region": "fra1", "size": "s-1vcpu-1gb",
    });
    common::env::merge(&mut spec, extra["spec"].clone());
    let vm = serde_json::json!({
        "apiVersion": "quartermaster.dev/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": name, "labels": {"qm-test": e.id}},
        "spec": spec,
    });
    e.vms()
        .patch(
            name,
            &PatchParams::apply("quartermaster-tests").force(),
            &Patch::Apply(&vm),
        )
        .await
        .unwrap();
}

/// Every snapshot the simulator has taken, as JSON.
async fn taken(e: &Env) -> Vec<serde_json::Value> {
    get(e, "/v2/snapshots?per_page=200").await["snapshots"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The snapshot actions of droplet `id` (taken or still running).
async fn snapshot_actions(e: &Env, id: &str) -> Vec<serde_json::Value> {
    get(e, &format!("/v2/droplets/{id}/actions")).await["actions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn get(e: &Env, path: &str) -> serde_json::Value {
    quartermaster::install_crypto_provider();
    reqwest::Client::new()
        .get(format!("{}{path}", e.sim.url))
        .bearer_auth("test")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_snapshot_waits_for_its_vm_is_taken_once_and_goes_with_its_object() {
    let e = env("snap", |_| {}, true).await;
    // Applied before its VM (as a GitOps tool may): it waits, and the VM's server wakes it.
    apply_snapshot(&e, "before", "web", "Delete").await;
    wait_for(
        &e,
        "before",
        conditions::READY,
        ConditionStatus::False,
        "InvalidSpec",
    )
    .await;
    e.apply_vm("web", serde_json::json!({})).await;
    let vm = e.wait_ready("web").await;
    let server = vm.status.unwrap().external_id.unwrap();
    let s = wait_snapshot(&e, "before", conditions::READY, "Reconciled").await;
    let st = s.status.clone().unwrap();
    let mark = format!("qm-snap-{}", s.uid().unwrap());
    assert_eq!(st.state.as_deref(), Some("Available"));
    assert_eq!(st.mark.as_deref(), Some(mark.as_str()));
    assert_eq!(st.server_id.as_deref(), Some(server.as_str()));
    assert_eq!(st.provider_config.as_deref(), Some(e.pc.as_str()));
    assert_eq!(st.size_gigabytes.as_deref(), Some("2.5"));
    assert!(st.created_at.is_some() && st.requested_at.is_some());
    let all = taken(&e).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["name"], mark.as_str());
    assert_eq!(all[0]["id"].as_str(), st.snapshot_id.as_deref());

    // Touched again: no second request, no vendor call needed.
    snaps(&e)
        .patch(
            "before",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"annotations": {"touch": "1"}}})),
        )
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(taken(&e).await.len(), 1);
    assert_eq!(snapshot_actions(&e, &server).await.len(), 1);
    let requested = e
        .event_reasons("before")
        .await
        .iter()
        .filter(|r| *r == "SnapshotRequested")
        .count();
    assert_eq!(requested, 1);

    // Retain: the object goes, the vendor's snapshot stays. Its source cannot change once requested.
    apply_snapshot(&e, "kept", "web", "Retain").await;
    wait_snapshot(&e, "kept", conditions::READY, "Reconciled").await;
    assert_eq!(taken(&e).await.len(), 2);
    snaps(&e)
        .patch(
            "kept",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"virtualMachineRef": {"name": "other"}}})),
        )
        .await
        .unwrap();
    wait_snapshot(&e, "kept", conditions::STALLED, "ImmutableFieldChanged").await;
    assert_eq!(taken(&e).await.len(), 2);

    // The VM and the account's credentials go; the snapshots still hold them (to delete what they hold).
    e.vms()
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    e.wait_gone("web").await;
    let pcs: Api<ProviderConfig> = Api::all(e.client.clone());
    let secrets: Api<Secret> = Api::namespaced(e.client.clone(), &e.ns);
    pcs.delete(&e.pc, &DeleteParams::default()).await.unwrap();
    secrets
        .delete("do-token", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(
        pcs.get(&e.pc)
            .await
            .is_ok_and(|p| p.metadata.deletion_timestamp.is_some()),
        "the ProviderConfig went while snapshots are held through it"
    );
    assert!(
        secrets
            .get("do-token")
            .await
            .is_ok_and(|s| s.metadata.deletion_timestamp.is_some()),
        "the credentials went while snapshots are held through them"
    );

    // Delete: the vendor's snapshot goes with the object; Retain keeps it, released to the platform
    // only where the ProviderConfig lets the namespace release: until then the deletion waits, stalled.
    for name in ["before", "kept"] {
        snaps(&e)
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    wait_snapshot(&e, "kept", conditions::STALLED, "ReleaseNotAllowed").await;
    assert!(
        snaps(&e).get("kept").await.is_ok(),
        "the object stays while its release is not allowed"
    );
    e.allow_release().await;
    let api = snaps(&e);
    common::eventually(WAIT, "both objects gone", || async {
        let left = api.list(&Default::default()).await.ok()?.items.len();
        (left == 0).then_some(())
    })
    .await;
    let left = taken(&e).await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_ne!(left[0]["name"], mark.as_str(), "the Delete one went");
    common::eventually(WAIT, "the ProviderConfig released", || async {
        pcs.get_opt(&e.pc).await.ok()?.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_vm_is_created_from_an_available_snapshot_of_its_own_account_only() {
    let e = env("restore", |_| {}, true).await;
    e.apply_vm("web", serde_json::json!({})).await;
    e.wait_ready("web").await;
    // A VM waits for a snapshot that does not exist yet; the snapshot's arrival wakes it.
    let from =
        |snap: &str| serde_json::json!({"spec": {"source": {"snapshotRef": {"name": snap}}}});
    apply_vm_without_image(&e, "copy", from("nightly")).await;
    e.wait_vm(
        "copy",
        conditions::RECONCILING,
        ConditionStatus::True,
        "Provisioning",
    )
    .await;
    assert_eq!(
        e.sim.droplets().await.len(),
        1,
        "nothing created before the snapshot is"
    );
    apply_snapshot(&e, "nightly", "web", "Delete").await;
    let snap = wait_snapshot(&e, "nightly", conditions::READY, "Reconciled").await;
    let id = snap.status.unwrap().snapshot_id.unwrap();
    let copy = e.wait_ready("copy").await;
    let st = copy.status.unwrap();
    assert_eq!(st.image.as_deref(), Some("snapshot/nightly"));
    let droplet = e.droplet(&st.external_id.unwrap()).await.unwrap();
    assert_eq!(
        droplet["image"]["slug"],
        id.as_str(),
        "made from the snapshot: {droplet}"
    );

    // Another account (same vendor, another ProviderConfig) cannot restore it.
    let other = format!("{}-other", e.id);
    common::do_provider_config(&e.client, &e.id, &other, &e.ns, &e.sim.url, &[]).await;
    let mut elsewhere = from("nightly");
    elsewhere["spec"]["providerConfigRef"] = serde_json::json!({"name": other});
    apply_vm_without_image(&e, "elsewhere", elsewhere).await;
    let vm = e
        .wait_vm(
            "elsewhere",
            conditions::STALLED,
            ConditionStatus::True,
            "InvalidSpec",
        )
        .await;
    let msg = conditions::find(&vm.status.unwrap().conditions, conditions::STALLED)
        .unwrap()
        .message
        .clone();
    assert!(msg.contains("restored only in its own account"), "{msg}");
    // Neither an image nor a source, or both: refused before any create.
    apply_vm_without_image(&e, "neither", serde_json::json!({"spec": {}})).await;
    e.wait_vm(
        "neither",
        conditions::STALLED,
        ConditionStatus::True,
        "InvalidSpec",
    )
    .await;
    let mut both = from("nightly");
    both["spec"]["image"] = "debian-12-x64".into();
    e.apply_vm("both", both).await;
    e.wait_vm(
        "both",
        conditions::STALLED,
        ConditionStatus::True,
        "InvalidSpec",
    )
    .await;
    assert_eq!(e.sim.droplets().await.len(), 2);
}

#[tokio::test]
async fn a_plan_that_cannot_snapshot_stalls_with_the_vendors_words() {
    let e = env("snapno", |c| c.refuse_snapshots = true, true).await;
    e.apply_vm("web", serde_json::json!({})).await;
    e.wait_ready("web").await;
    apply_snapshot(&e, "no", "web", "Delete").await;
    let s = wait_snapshot(&e, "no", conditions::STALLED, "VendorRejected").await;
    let st = s.status.unwrap();
    let msg = &conditions::find(&st.conditions, conditions::STALLED)
        .unwrap()
        .message;
    assert!(msg.contains("Snapshots are not available"), "{msg}");
    assert!(
        st.requested_at.is_none() && st.state.is_none() && st.refused_generation == Some(1),
        "a refusal withdraws the request, for this generation: {st:?}"
    );
    assert!(taken(&e).await.is_empty());
    // Deletion looks the mark up (nothing was made) and goes; with Retain too, where nothing made is
    // nothing to release (no release allowance needed).
    apply_snapshot(&e, "no-kept", "web", "Retain").await;
    wait_snapshot(&e, "no-kept", conditions::STALLED, "VendorRejected").await;
    for name in ["no", "no-kept"] {
        snaps(&e)
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    let api = snaps(&e);
    common::eventually(WAIT, "objects gone", || async {
        let left = api.list(&Default::default()).await.ok()?.items.len();
        (left == 0).then_some(())
    })
    .await;
    assert!(
        !e.event_reasons("no-kept")
            .await
            .iter()
            .any(|r| r == "SnapshotRetained"),
        "nothing was released"
    );
}

/// A server busy with another action (DigitalOcean's 422 "pending event") is no refusal: the snapshot
/// waits, Reconciling, and is taken once the action is done; it never stalls.
#[tokio::test]
async fn a_snapshot_of_a_busy_server_waits_for_it_instead_of_stalling() {
    let e = env("snapbusy", |c| c.power_secs = 6, true).await;
    e.apply_vm("web", serde_json::json!({})).await;
    let id = e
        .wait_ready("web")
        .await
        .status
        .unwrap()
        .external_id
        .unwrap();
    // A reboot the controller did not ask for keeps the droplet busy for a while.
    let busy = reqwest::Client::new()
        .post(format!("{}/v2/droplets/{id}/actions", e.sim.url))
        .bearer_auth("sim-token")
        .json(&serde_json::json!({"type": "reboot"}))
        .send()
        .await
        .unwrap();
    assert!(busy.status().is_success(), "{}", busy.status());
    apply_snapshot(&e, "busy", "web", "Delete").await;
    wait_for(
        &e,
        "busy",
        conditions::RECONCILING,
        ConditionStatus::True,
        "Retrying",
    )
    .await;
    let s = wait_snapshot(&e, "busy", conditions::READY, "Reconciled").await;
    assert!(s.status.unwrap().refused_generation.is_none());
    assert_eq!(taken(&e).await.len(), 1);
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
async fn a_controller_killed_between_the_snapshot_call_and_the_status_write_takes_one_snapshot() {
    // The simulator records the snapshot, then holds its answer open for 4 s; it is taken after 8 s,
    // so the restarted controller finds it still being taken.
    let e = env(
        "snapcrash",
        |c| {
            c.create_latency_ms = 4000;
            c.snapshot_secs = 8;
        },
        false,
    )
    .await;
    let first = controller_process(&e.id);
    e.apply_vm("web", serde_json::json!({})).await;
    let server = e
        .wait_ready("web")
        .await
        .status
        .unwrap()
        .external_id
        .unwrap();
    apply_snapshot(&e, "once", "web", "Delete").await;
    let api = snaps(&e);
    // The request is recorded and the vendor has the snapshot, but its answer has not come back.
    common::eventually(WAIT, "request recorded and snapshot started", || async {
        let s = api.get("once").await.ok()?;
        let st = s.status?;
        let started = !snapshot_actions(&e, &server).await.is_empty();
        (st.requested_at.is_some() && st.snapshot_id.is_none() && started).then_some(())
    })
    .await;
    drop(first); // SIGKILL mid-call
    let st = api.get("once").await.unwrap().status.unwrap();
    assert!(st.snapshot_id.is_none() && st.requested_at.is_some());

    let _second = controller_process(&e.id);
    let s = wait_snapshot(&e, "once", conditions::READY, "Reconciled").await;
    let all = taken(&e).await;
    assert_eq!(all.len(), 1, "exactly one snapshot: {all:?}");
    assert_eq!(
        all[0]["id"].as_str(),
        s.status.unwrap().snapshot_id.as_deref()
    );
    assert_eq!(snapshot_actions(&e, &server).await.len(), 1);
}

/// A policy whose snapshots the vendor refuses keeps only the newest refusal (which says why), not
/// one per slot.
#[tokio::test]
async fn a_policys_refused_snapshots_do_not_pile_up() {
    let e = common::env::env_with("snappolno", |c| c.refuse_snapshots = true)
        .await
        .with_controller(None, |c| {
            c.min_snapshot_interval = std::time::Duration::from_secs(1)
        });
    e.apply_vm("web", serde_json::json!({})).await;
    e.wait_ready("web").await;
    apply_policy(
        &e,
        "failing",
        serde_json::json!({"virtualMachineRef": {"name": "web"}, "schedule": "*/2 * * * * *",
                           "retain": 2, "deletionPolicy": "Delete"}),
    )
    .await;
    let api = snaps(&e);
    // Several slots' snapshots are refused over time; at most the newest refused one (and one just
    // made for the current slot) is ever left.
    let mut refused_seen = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline && refused_seen.len() < 4 {
        let all = api.list(&Default::default()).await.unwrap().items;
        let refused: Vec<String> = all
            .iter()
            .filter(|s| {
                s.metadata.deletion_timestamp.is_none()
                    && s.status
                        .as_ref()
                        .is_some_and(|st| st.refused_generation.is_some())
            })
            .map(|s| s.name_any())
            .collect();
        assert!(refused.len() <= 2, "refused snapshots pile up: {refused:?}");
        refused_seen.extend(refused);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    assert!(
        refused_seen.len() >= 4,
        "several slots were refused: {refused_seen:?}"
    );
    assert!(taken(&e).await.is_empty());
}

async fn apply_policy(e: &Env, name: &str, spec: serde_json::Value) {
    let p = serde_json::json!({
        "apiVersion": "quartermaster.dev/v1alpha1", "kind": "VirtualMachineSnapshotPolicy",
        "metadata": {"name": name, "labels": {"qm-test": e.id}},
        "spec": spec,
    });
    Api::<VirtualMachineSnapshotPolicy>::namespaced(e.client.clone(), &e.ns)
        .patch(
            name,
            &PatchParams::apply("quartermaster-tests").force(),
            &Patch::Apply(&p),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_policy_takes_one_snapshot_per_slot_and_keeps_the_newest_available() {
    let e = common::env::env_with("snappol", |_| {})
        .await
        .with_controller(None, |c| {
            c.min_snapshot_interval = std::time::Duration::from_secs(1)
        });
    e.apply_vm("web", serde_json::json!({})).await;
    e.wait_ready("web").await;
    // Every 4 seconds (six fields: seconds first), keeping one.
    apply_policy(
        &e,
        "often",
        serde_json::json!({"virtualMachineRef": {"name": "web"}, "schedule": "*/4 * * * * *",
                           "retain": 1, "deletionPolicy": "Delete"}),
    )
    .await;
    let api = snaps(&e);
    common::eventually(WAIT, "three slots taken and the older pruned", || async {
        let pruned = e
            .event_reasons("often")
            .await
            .iter()
            .filter(|r| *r == "SnapshotsPruned")
            .count();
        let made = e
            .event_reasons("often")
            .await
            .iter()
            .filter(|r| *r == "SnapshotScheduled")
            .count();
        (made >= 3 && pruned >= 1).then_some(())
    })
    .await;
    apply_policy(
        &e,
        "often",
        serde_json::json!({"virtualMachineRef": {"name": "web"}, "schedule": "*/4 * * * * *",
                           "retain": 1, "deletionPolicy": "Delete", "suspend": true}),
    )
    .await;
    // Settled: one available snapshot kept; every one it made is named after its slot; the vendor holds
    // exactly the snapshots whose objects are left.
    let left = common::eventually(WAIT, "one available snapshot left", || async {
        let items = api.list(&Default::default()).await.ok()?.items;
        let available = items
            .iter()
            .filter(|s| {
                s.status
                    .as_ref()
                    .is_some_and(|st| st.state.as_deref() == Some("Available"))
            })
            .count();
        let settled = items.iter().all(|s| {
            s.status
                .as_ref()
                .is_some_and(|st| st.state.as_deref() == Some("Available"))
        });
        (available == 1 && settled && items.len() == 1).then_some(items)
    })
    .await;
    let s = &left[0];
    let slot: i64 = s
        .name_any()
        .strip_prefix("often-")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(slot % 4, 0, "named after its slot: {}", s.name_any());
    assert_eq!(s.owner_references()[0].name, "often", "owned by its policy");
    common::eventually(
        WAIT,
        "the pruned ones' vendor snapshots deleted",
        || async {
            let at_vendor = taken(&e).await;
            (at_vendor.len() == 1
                && at_vendor[0]["id"].as_str() == s.status.as_ref().unwrap().snapshot_id.as_deref())
            .then_some(())
        },
    )
    .await;

    // A numbered weekday is refused (dialects disagree on it).
    apply_policy(
        &e,
        "numbered",
        serde_json::json!({"virtualMachineRef": {"name": "web"}, "schedule": "0 3 * * 1", "retain": 2}),
    )
    .await;
    let p = common::eventually(WAIT, "numbered weekday stalls", || async {
        let p = Api::<VirtualMachineSnapshotPolicy>::namespaced(e.client.clone(), &e.ns)
            .get("numbered")
            .await
            .ok()?;
        let c = conditions::find(&p.status.as_ref()?.conditions, conditions::STALLED)?.clone();
        (c.status == ConditionStatus::True).then_some(c)
    })
    .await;
    assert_eq!(p.reason, "InvalidSpec");
    assert!(
        p.message.contains("name the days of the week"),
        "{}",
        p.message
    );
}

/// Snapshot storage is billed to the VM's Project through the ledger, at the vendor's price per
/// GB-month, up to the snapshot's deletion; one kept at the vendor (Retain, allowed) is a release row.
#[tokio::test]
async fn snapshot_storage_is_billed_to_the_vms_project_until_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, _) = common::db::fresh_ledger(&dir).await;
    let e = common::env::env_with("snapbill", |_| {})
        .await
        .with_controller(Some(ledger.clone()), |c| {
            c.traffic_interval = std::time::Duration::from_secs(1);
        });
    e.apply_project("acme", serde_json::json!({})).await;
    e.apply_vm(
        "web",
        serde_json::json!({"spec": {"projectRef": {"name": "acme"}}}),
    )
    .await;
    e.wait_ready("web").await;
    e.allow_release().await;
    apply_snapshot(&e, "billed", "web", "Retain").await;
    let s = wait_snapshot(&e, "billed", conditions::READY, "Reconciled").await;
    let st = s.status.unwrap();
    assert_eq!(st.project.as_deref(), Some("acme"));
    assert!(st.billed_until.is_some(), "the meter started: {st:?}");
    assert_eq!(
        st.monthly_price.as_deref(),
        Some("0.15"),
        "priced at the 2.5 GB the vendor reports, not the admission's estimate of the server's disk"
    );
    // An earlier attempt's window, recorded before a crash kept its status write from happening: one
    // second from the start the status still shows. It must stand, and billing go on from its end.
    let start = st
        .billed_until
        .as_deref()
        .unwrap()
        .parse::<jiff::Timestamp>()
        .unwrap()
        .as_second();
    let snap_uid = s.metadata.uid.clone().unwrap();
    let key = |at: i64| format!("virtualmachinesnapshot/{snap_uid}/snapshot_mb_seconds/{at}");
    let earlier = quartermaster::ledger::UsageEvent {
        key: key(start),
        namespace: e.ns.clone(),
        project: "acme".into(),
        project_uid: st.project_uid.clone().unwrap_or_default(),
        object_kind: "VirtualMachineSnapshot".into(),
        object_name: "billed".into(),
        object_uid: snap_uid.clone(),
        meter: quartermaster::ledger::Meter::SnapshotMbSeconds,
        quantity: 2500,
        unit_price: "0.06".parse().unwrap(),
        vendor_unit_price: "0.06".parse().unwrap(),
        price_quantity: quartermaster::ledger::Meter::SnapshotMbSeconds
            .info()
            .priced_per,
        currency: "USD".into(),
        window_start: start,
        window_end: start + 1,
        attributes: serde_json::json!({}),
    };
    assert_eq!(ledger.record(&[earlier]).await.unwrap(), 1);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    snaps(&e)
        .delete("billed", &DeleteParams::default())
        .await
        .unwrap();
    let api = snaps(&e);
    common::eventually(WAIT, "deleted", || async {
        api.get_opt("billed").await.ok()?.is_none().then_some(())
    })
    .await;
    let uid = common::project_uid(&e.client, &e.ns, "acme").await;
    let now = jiff::Timestamp::now().as_second();
    let (from, until) =
        quartermaster::ledger::parse_period(&quartermaster::ledger::period_of(now)).unwrap();
    let project = quartermaster::ledger::store::ProjectRef {
        namespace: &e.ns,
        name: "acme",
        uid: &uid,
    };
    let rows = ledger
        .usage(
            &project,
            from,
            until,
            quartermaster::ledger::store::GroupBy::Meter,
        )
        .await
        .unwrap();
    let row = rows
        .iter()
        .find(|r| r.meter == "snapshot_mb_seconds")
        .unwrap_or_else(|| panic!("no storage billed: {rows:?}"));
    // 2.5 GB for at least the two seconds it was kept, in MB-seconds, in US dollars.
    assert!(
        row.quantity >= 2500 * 2 && row.quantity % 2500 == 0,
        "{row:?}"
    );
    assert_eq!(row.currency, "USD");
    assert!(row.amount_nanos > 0 && row.cost_nanos > 0, "{row:?}");
    // The earlier attempt's window stands; the next one starts at its end: nothing lost, nothing twice.
    assert_eq!(
        ledger.held(&key(start)).await.unwrap(),
        Some((2500, start + 1))
    );
    let (rest, end) = ledger
        .held(&key(start + 1))
        .await
        .unwrap()
        .expect("billed on from the earlier window's end");
    assert_eq!(rest, 2500 * (end - start - 1));
    assert_eq!(row.quantity, 2500 + rest, "{row:?}");
    // Kept at the vendor: released to the platform, one unpriced row.
    let released = rows
        .iter()
        .find(|r| r.meter == "snapshot_releases")
        .unwrap_or_else(|| panic!("no release recorded: {rows:?}"));
    assert_eq!(
        (released.quantity, released.amount_nanos),
        (1, 0),
        "{released:?}"
    );

    // From the release on, the storage is the platform's: followed per account until the vendor no
    // longer holds it, then recorded up to then as vendor cost, once, with no tenant amount.
    let pc_uid = kube::api::Api::<ProviderConfig>::all(e.client.clone())
        .get(&e.pc)
        .await
        .unwrap()
        .uid()
        .unwrap();
    let open = ledger.open_releases(&pc_uid).await.unwrap();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(
        open[0].released_at, end,
        "the platform's cost starts where the tenant's ended"
    );
    assert_eq!(open[0].snapshot_id, st.snapshot_id.clone().unwrap());
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let id = st.snapshot_id.clone().unwrap();
    let gone = reqwest::Client::new()
        .delete(format!("{}/v2/snapshots/{id}", e.sim.url))
        .bearer_auth("test")
        .send()
        .await
        .unwrap();
    assert!(gone.status().is_success(), "{}", gone.status());
    common::eventually(WAIT, "the release closed", || async {
        ledger
            .open_releases(&pc_uid)
            .await
            .ok()?
            .is_empty()
            .then_some(())
    })
    .await;
    let platform_rows = || async {
        let platform = quartermaster::ledger::store::ProjectRef {
            namespace: "",
            name: "",
            uid: "",
        };
        ledger
            .usage(
                &platform,
                now - 40 * 86_400,
                now + 86_400,
                quartermaster::ledger::store::GroupBy::Object,
            )
            .await
            .unwrap()
            .into_iter()
            .filter(|r| {
                r.key == format!("ProviderConfig/{}", e.pc) && r.meter == "snapshot_mb_seconds"
            })
            .collect::<Vec<_>>()
    };
    let cost = platform_rows().await;
    assert_eq!(cost.len(), 1, "{cost:?}");
    let (first, first_end) = ledger
        .held(&format!(
            "providerconfig/{pc_uid}/snapshot_mb_seconds/{snap_uid}/{end}"
        ))
        .await
        .unwrap()
        .expect("the first window starts at the release");
    assert_eq!(first, 2500 * (first_end - end));
    assert!(
        first_end - end >= 2,
        "kept at least two seconds after its release"
    );
    assert_eq!(cost[0].quantity, first, "{cost:?}");
    assert_eq!(cost[0].amount_nanos, 0, "no tenant pays it: {cost:?}");
    assert!(cost[0].cost_nanos > 0, "the platform does: {cost:?}");
    // Closed: later rounds record nothing more.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(platform_rows().await, cost);
}

/// How often the simulator restored a droplet from each snapshot, by snapshot ID.
async fn restores(e: &Env) -> Vec<(String, u64)> {
    quartermaster::install_crypto_provider();
    let v: Vec<serde_json::Value> = reqwest::get(format!("{}/_sim/snapshots", e.sim.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v.iter()
        .map(|s| (s["id"].to_string(), s["restores"].as_u64().unwrap_or(0)))
        .collect()
}

/// A VM is restored in place from a snapshot of its own server once per annotation value; another
/// server's snapshot is refused and nothing is sent.
#[tokio::test]
async fn a_vm_is_restored_in_place_once_per_request_from_its_own_snapshot() {
    let e = env("snaprestore", |_| {}, true).await;
    for vm in ["web", "db"] {
        e.apply_vm(vm, serde_json::json!({})).await;
        e.wait_ready(vm).await;
    }
    apply_snapshot(&e, "nightly", "web", "Delete").await;
    apply_snapshot(&e, "other", "db", "Delete").await;
    let id = wait_snapshot(&e, "nightly", conditions::READY, "Reconciled")
        .await
        .status
        .unwrap()
        .snapshot_id
        .unwrap();
    wait_snapshot(&e, "other", conditions::READY, "Reconciled").await;
    let ask = |value: &'static str| serde_json::json!({"metadata": {"annotations": {"quartermaster.dev/restore-snapshot": value}}});
    let restored = |value: &'static str| {
        let vms = e.vms();
        async move {
            common::eventually(WAIT, &format!("restore {value} answered"), || async {
                let r = vms.get("web").await.ok()?.status?.last_restore?;
                (r.requested == value && (r.accepted_at.is_some() || r.refused.is_some()))
                    .then_some(r)
            })
            .await
        }
    };
    e.patch_vm("web", ask("nightly")).await;
    let r = restored("nightly").await;
    assert_eq!(r.snapshot_id.as_deref(), Some(id.as_str()));
    assert!(r.accepted_at.is_some(), "{r:?}");
    e.wait_ready("web").await;
    // Reconciled again (a label): not sent again.
    e.patch_vm(
        "web",
        serde_json::json!({"metadata": {"labels": {"touched": "yes"}}}),
    )
    .await;
    e.wait_ready("web").await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let count = |all: &[(String, u64)]| all.iter().find(|(i, _)| *i == id).map_or(0, |x| x.1);
    assert_eq!(count(&restores(&e).await), 1);
    // Another server's snapshot: refused, nothing sent.
    e.patch_vm("web", ask("other")).await;
    let r = restored("other").await;
    assert!(
        r.refused
            .as_deref()
            .is_some_and(|m| m.contains("not taken of this VM's server")),
        "{r:?}"
    );
    // The Event follows the status write that records the refusal.
    common::eventually(WAIT, "RestoreFailed published", || async {
        e.event_reasons("web")
            .await
            .contains(&"RestoreFailed".to_string())
            .then_some(())
    })
    .await;
    assert_eq!(restores(&e).await.iter().map(|x| x.1).sum::<u64>(), 1);
    // Asked again with a new value: a second restore.
    e.wait_ready("web").await;
    e.patch_vm("web", ask("nightly@2")).await;
    restored("nightly@2").await;
    assert_eq!(count(&restores(&e).await), 2);
}

/// A snapshot's storage is admitted like any price: beside what the Project's VMs and other snapshots
/// cost a month, estimated at the disk of the server's size, within `maxMonthlySpend`; raising the
/// limit wakes it and it is taken, priced then at the size the vendor reports.
#[tokio::test]
async fn a_snapshot_is_admitted_against_the_projects_monthly_spend() {
    let e = common::env::env("snapspend", |_| {}, true).await;
    let limit =
        |max: &str| serde_json::json!({"currency": "USD", "limits": {"maxMonthlySpend": max}});
    e.apply_project("acme", limit("7")).await;
    e.apply_vm(
        "web",
        serde_json::json!({"spec": {"projectRef": {"name": "acme"}}}),
    )
    .await;
    e.wait_ready("web").await;
    // 6.00 for the VM, and 25 GB of disk at US$0.06 a GB-month: 7.50 is over 7.
    apply_snapshot(&e, "big", "web", "Delete").await;
    let s = wait_snapshot(&e, "big", conditions::STALLED, "LimitExceeded").await;
    let msg = &conditions::find(&s.status.as_ref().unwrap().conditions, conditions::STALLED)
        .unwrap()
        .message;
    assert!(msg.contains("limits monthly spend to 7"), "{msg}");
    assert!(taken(&e).await.is_empty(), "nothing asked of the vendor");
    // Room for it: woken by the Project's change, taken, and priced at its reported size.
    e.apply_project("acme", limit("8")).await;
    let s = wait_snapshot(&e, "big", conditions::READY, "Reconciled").await;
    let st = s.status.unwrap();
    assert_eq!(st.currency.as_deref(), Some("USD"));
    let storage: rust_decimal::Decimal = st.monthly_price.as_deref().unwrap().parse().unwrap();
    assert!(storage > rust_decimal::Decimal::ZERO, "{st:?}");
    assert_eq!(taken(&e).await.len(), 1);
    // A second VM is admitted beside the first and the snapshot's storage: 6 + 6 fits 12, not with it.
    e.apply_project("acme", limit("12")).await;
    e.apply_vm(
        "second",
        serde_json::json!({"spec": {"projectRef": {"name": "acme"}}}),
    )
    .await;
    let vm = e
        .wait_vm(
            "second",
            conditions::STALLED,
            ConditionStatus::True,
            "LimitExceeded",
        )
        .await;
    let st = vm.status.unwrap();
    let msg = &conditions::find(&st.conditions, conditions::STALLED)
        .unwrap()
        .message;
    assert!(msg.contains("VMs and snapshots"), "{msg}");
}

/// A Retain deletion tried again after its release was recorded (an earlier attempt recorded the release
/// and then failed to remove the finalizer) is done at once: the tenant is not billed past the release,
/// from which the platform's cost runs.
#[tokio::test]
async fn a_retried_release_bills_the_tenant_nothing_past_the_release() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, _) = common::db::fresh_ledger(&dir).await;
    let e = common::env::env_with("snaprerelease", |_| {})
        .await
        .with_controller(Some(ledger.clone()), |_| {});
    e.apply_vm("web", serde_json::json!({})).await;
    e.wait_ready("web").await;
    e.allow_release().await;
    apply_snapshot(&e, "kept", "web", "Retain").await;
    let s = wait_snapshot(&e, "kept", conditions::READY, "Reconciled").await;
    let st = s.status.unwrap();
    let uid = s.metadata.uid.unwrap();
    let billed_until = st
        .billed_until
        .as_deref()
        .unwrap()
        .parse::<jiff::Timestamp>()
        .unwrap()
        .as_second();
    let pc_uid = Api::<ProviderConfig>::all(e.client.clone())
        .get(&e.pc)
        .await
        .unwrap()
        .uid()
        .unwrap();
    // What the earlier attempt recorded: the release, from where the tenant's billing ended.
    let release = quartermaster::ledger::released::ReleasedSnapshot {
        object_uid: uid.clone(),
        provider_config_uid: pc_uid.clone(),
        provider_config: e.pc.clone(),
        namespace: e.ns.clone(),
        name: "kept".into(),
        snapshot_id: st.snapshot_id.clone().unwrap(),
        server_id: st.server_id.clone().unwrap(),
        size_mb: 2500,
        released_at: billed_until,
        metered_until: billed_until,
        gone_at: None,
    };
    ledger.open_release(&release).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    snaps(&e)
        .delete("kept", &DeleteParams::default())
        .await
        .unwrap();
    let api = snaps(&e);
    common::eventually(WAIT, "deleted", || async {
        api.get_opt("kept").await.ok()?.is_none().then_some(())
    })
    .await;
    // No tenant window starts at or after the release; the release stands as recorded.
    assert_eq!(
        ledger
            .held(&format!(
                "virtualmachinesnapshot/{uid}/snapshot_mb_seconds/{billed_until}"
            ))
            .await
            .unwrap(),
        None,
        "the tenant was billed past the release"
    );
    assert_eq!(
        ledger
            .release_of(&uid)
            .await
            .unwrap()
            .map(|r| r.released_at),
        Some(billed_until)
    );
    assert_eq!(taken(&e).await.len(), 1, "the vendor's snapshot is kept");
    let events = e.events_of("kept").await;
    assert!(
        events.iter().any(|(r, _)| r == "SnapshotRetained"),
        "the release is announced (again): {events:?}"
    );
}

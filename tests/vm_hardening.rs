//! The VirtualMachine slice's hardening, end to end on a real kube-apiserver with `quartermaster sim`:
//! progress is never rolled back by an error, long names fit, adoption never crosses tenants, vendor
//! refusals stall (and a rejected token marks the ProviderConfig at once), references that must not move do
//! not, a project move bills the old project first, recorded intent is read back (and an intent write that
//! conflicts records none), and one tenant's annotation cannot hurt the controller.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use quartermaster::crd::conditions::{self, ConditionStatus};
use quartermaster::crd::{ProviderConfig, VirtualMachine};

mod common;

use common::env::{Env, WAIT, env, env_with};

async fn delete_vm(e: &Env, name: &str) {
    e.vms()
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
    e.wait_gone(name).await;
}

/// Droplets still at the vendor (not being deleted) that carry `uid`'s tag.
async fn tagged_droplets(e: &Env, uid: &str) -> usize {
    let tag = format!("quartermaster-uid-{uid}");
    e.sim
        .droplets()
        .await
        .iter()
        .filter(|d| {
            d["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|x| x == &tag))
        })
        .count()
}

#[tokio::test]
async fn a_248_character_name_gets_ready_and_deletion_leaves_no_droplet() {
    let e = env("vmlong", |_| {}, true).await;
    let name = format!("a{}", "b".repeat(247));
    e.apply_vm(&name, serde_json::json!({})).await;
    let vm = e.wait_ready(&name).await;
    let st = vm.status.unwrap();
    let secret = st
        .connection_secret_ref
        .expect("connection secret recorded")
        .name;
    assert!(
        secret.len() <= 253 && secret.ends_with("-connection"),
        "{secret}"
    );
    let secrets: Api<Secret> = Api::namespaced(e.client.clone(), &e.ns);
    assert!(secrets.get_opt(&secret).await.unwrap().is_some());
    assert!(st.metering.is_none() || st.creation_key.is_some());
    let uid = vm.metadata.uid.unwrap();
    assert_eq!(tagged_droplets(&e, &uid).await, 1);
    delete_vm(&e, &name).await;
    assert_eq!(
        tagged_droplets(&e, &uid).await,
        0,
        "deletion left the droplet"
    );
}

#[tokio::test]
async fn a_create_that_times_out_keeps_its_intent_and_deletion_finds_the_droplet() {
    // The vendor holds the create answer 3 s; the controller gives up after 1 s (a POST is not retried).
    let e = env_with("vmtimeout", |c| c.create_latency_ms = 3000)
        .await
        .with_controller(None, |c| c.vendor_timeout = Duration::from_secs(1));
    e.apply_vm("slow", serde_json::json!({})).await;
    let vms = e.vms();
    let vm = common::eventually(WAIT, "intent recorded and the droplet made", || async {
        let vm = vms.get("slow").await.ok()?;
        let uid = vm.metadata.uid.clone()?;
        (vm.status.as_ref()?.creation_key.is_some() && tagged_droplets(&e, &uid).await == 1)
            .then_some(vm)
    })
    .await;
    let uid = vm.metadata.uid.unwrap();
    // Delete before the controller learned the ID: cleanup finds the droplet by its tag.
    delete_vm(&e, "slow").await;
    assert_eq!(
        tagged_droplets(&e, &uid).await,
        0,
        "a droplet survived its VM"
    );
}

#[tokio::test]
async fn adoption_never_crosses_tenants_and_is_opt_in() {
    let alice = env("alice", |_| {}, true).await;
    alice
        .apply_vm("web", serde_json::json!({"spec": {"tags": ["alice"]}}))
        .await;
    let vm = alice.wait_ready("web").await;
    let alice_id = vm.status.unwrap().external_id.unwrap();

    // Mallory, in another namespace on the same ProviderConfig, names alice's server — with adoption
    // allowed for her namespace, even.
    let mallory_ns = common::namespace(&alice.client, "mallory").await;
    let pcs: Api<ProviderConfig> = Api::all(alice.client.clone());
    pcs.patch(
        &alice.pc,
        &PatchParams::default(),
        &Patch::Merge(
            &serde_json::json!({"spec": {"adoption": {"allowedNamespaces": [mallory_ns]}}}),
        ),
    )
    .await
    .unwrap();
    let mallory = Env {
        client: alice.client.clone(),
        ns: mallory_ns.clone(),
        id: alice.id.clone(),
        sim: common::start_sim(|_| {}).await,
        pc: alice.pc.clone(),
        _stop: None,
        metrics: None,
    };
    mallory
        .apply_vm(
            "grab",
            serde_json::json!({
                "metadata": {"annotations": {"quartermaster.dev/external-id": alice_id}},
                "spec": {"runStrategy": "Halted"}
            }),
        )
        .await;
    let vm = mallory
        .wait_vm(
            "grab",
            conditions::STALLED,
            ConditionStatus::True,
            "OwnedByAnother",
        )
        .await;
    let st = vm.status.unwrap_or_default();
    assert_eq!(
        st.external_id, None,
        "another tenant's server ID reached status"
    );
    assert_eq!(
        st.addresses, None,
        "another tenant's addresses reached status"
    );
    let secrets: Api<Secret> = Api::namespaced(alice.client.clone(), &mallory_ns);
    assert!(
        secrets.get_opt("grab-connection").await.unwrap().is_none(),
        "another tenant's addresses reached a Secret"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let d = alice.droplet(&alice_id).await.unwrap();
    assert_eq!(d["status"], "active", "mallory powered alice's server off");
    delete_vm(&mallory, "grab").await;
    assert!(
        alice.droplet(&alice_id).await.is_some(),
        "deleting mallory's VM destroyed alice's server"
    );

    // The reserved tag prefix is refused by the schema.
    let bad: VirtualMachine = serde_json::from_value(serde_json::json!({
        "apiVersion": "quartermaster.dev/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": "spoof"},
        "spec": {"providerConfigRef": {"name": alice.pc}, "region": "fra1", "size": "s-1vcpu-1gb",
                 "image": "debian-12-x64", "tags": [format!("quartermaster-uid-{}", vm.metadata.uid.unwrap())]}
    }))
    .unwrap();
    let err = alice
        .vms()
        .create(&Default::default(), &bad)
        .await
        .expect_err("a reserved tag was accepted");
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 422);
            assert!(s.message.contains("spec.tags"), "{}", s.message);
        }
        other => panic!("unexpected error {other}"),
    }

    // An untagged server, adopted where allowed, is tagged as the adopter's.
    let console = alice.sim.create_droplet("console", &[]).await;
    alice
        .apply_vm(
            "adopt",
            serde_json::json!({"metadata": {"annotations": {"quartermaster.dev/external-id": console}}}),
        )
        .await;
    alice
        .wait_vm(
            "adopt",
            conditions::STALLED,
            ConditionStatus::True,
            "AdoptionNotAllowed",
        )
        .await;
    alice.allow_adoption().await;
    let vm = alice.wait_ready("adopt").await;
    let tag = format!("quartermaster-uid-{}", vm.metadata.uid.unwrap());
    let d = alice.droplet(&console).await.unwrap();
    assert!(
        d["tags"].as_array().unwrap().iter().any(|t| t == &tag),
        "adopted server not tagged: {d}"
    );
    assert!(
        alice
            .event_reasons("adopt")
            .await
            .iter()
            .any(|r| r == "Adopted"),
        "no Adopted event"
    );
}

#[tokio::test]
async fn a_revoked_token_stalls_the_vm_and_marks_the_provider_config_at_once() {
    let e = env("vmauth", |_| {}, true).await;
    e.apply_vm("web", serde_json::json!({})).await;
    e.wait_ready("web").await;
    e.sim.revoke_token("sim-token").await;
    // Any reconcile now meets a 401: a restart request makes one happen right away.
    e.patch_vm(
        "web",
        serde_json::json!({"metadata": {"annotations": {"quartermaster.dev/restart-requested-at": "r1"}}}),
    )
    .await;
    let vm = e
        .wait_vm(
            "web",
            conditions::STALLED,
            ConditionStatus::True,
            "InvalidCredentials",
        )
        .await;
    let ready =
        conditions::find(&vm.status.as_ref().unwrap().conditions, conditions::READY).unwrap();
    assert_eq!(
        ready.status,
        ConditionStatus::False,
        "Ready stayed True after a refusal"
    );
    let reconciling = conditions::find(
        &vm.status.as_ref().unwrap().conditions,
        conditions::RECONCILING,
    )
    .unwrap();
    assert_eq!(
        reconciling.status,
        ConditionStatus::False,
        "still 'Retrying' a refusal"
    );
    // The ProviderConfig says so promptly (its own periodic check is 10 minutes away).
    let pcs: Api<ProviderConfig> = Api::all(e.client.clone());
    common::eventually(
        Duration::from_secs(15),
        "ProviderConfig InvalidCredentials",
        || async {
            let pc = pcs.get(&e.pc).await.ok()?;
            let c = conditions::find(&pc.status?.conditions, conditions::STALLED)?.clone();
            (c.status == ConditionStatus::True && c.reason == "InvalidCredentials").then_some(())
        },
    )
    .await;
    // A VM that arrives now says why, naming the ProviderConfig.
    e.apply_vm("late", serde_json::json!({})).await;
    let vm = e
        .wait_vm(
            "late",
            conditions::STALLED,
            ConditionStatus::True,
            "InvalidCredentials",
        )
        .await;
    let stalled = conditions::find(&vm.status.unwrap().conditions, conditions::STALLED)
        .unwrap()
        .clone();
    assert!(stalled.message.contains(&e.pc), "{}", stalled.message);
    assert!(
        !stalled.message.contains("sim-token"),
        "a secret reached status"
    );
}

#[tokio::test]
async fn provider_config_ref_is_fixed_and_deletion_cleans_up_in_the_original_account() {
    let e = env("vmpcref", |_| {}, true).await;
    let other_sim = common::start_sim(|_| {}).await;
    let other = format!("{}-other", e.id);
    common::do_provider_config(&e.client, &e.id, &other, &e.ns, &other_sim.url, &[]).await;
    e.apply_vm("web", serde_json::json!({})).await;
    let vm = e.wait_ready("web").await;
    let uid = vm.metadata.uid.unwrap();
    assert_eq!(
        vm.status.unwrap().provider_config.as_deref(),
        Some(e.pc.as_str())
    );
    e.patch_vm(
        "web",
        serde_json::json!({"spec": {"providerConfigRef": {"name": other}}}),
    )
    .await;
    e.wait_vm(
        "web",
        conditions::STALLED,
        ConditionStatus::True,
        "ImmutableFieldChanged",
    )
    .await;
    assert!(
        other_sim.droplets().await.is_empty(),
        "a server was created in the other account"
    );
    delete_vm(&e, "web").await;
    assert_eq!(
        tagged_droplets(&e, &uid).await,
        0,
        "the server in the first account survived"
    );
}

/// Everything the ledger holds for Project `ns/project` (by its UID) up to a day from now, by meter.
async fn billed(
    ledger: &quartermaster::ledger::Ledger,
    client: &kube::Client,
    ns: &str,
    project: &str,
) -> Vec<quartermaster::ledger::store::UsageRow> {
    let until = jiff::Timestamp::now().as_second() + 86400;
    let uid = common::project_uid(client, ns, project).await;
    let me = quartermaster::ledger::store::ProjectRef {
        namespace: ns,
        name: project,
        uid: &uid,
    };
    ledger
        .usage(&me, 0, until, quartermaster::ledger::store::GroupBy::Meter)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_project_move_bills_the_old_project_first_and_respects_the_new_limits() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = quartermaster::ledger::Ledger::connect(None, &dir.path().join("l.db"))
        .await
        .unwrap();
    ledger.migrate().await.unwrap();
    let e = env_with("vmmove", |_| {})
        .await
        .with_controller(Some(ledger.clone()), |_| {});
    e.apply_project("alpha", serde_json::json!({})).await;
    e.apply_project("beta", serde_json::json!({})).await;
    e.apply_project(
        "full",
        serde_json::json!({"limits": {"maxVirtualMachines": 0}}),
    )
    .await;
    e.apply_vm(
        "web",
        serde_json::json!({"spec": {"projectRef": {"name": "alpha"}}}),
    )
    .await;
    let vm = e.wait_ready("web").await;
    assert_eq!(vm.status.unwrap().project.as_deref(), Some("alpha"));
    // Let alpha accrue billable seconds (windows are exact to the second).
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Into a full project: refused, and the VM stays alpha's.
    e.patch_vm(
        "web",
        serde_json::json!({"spec": {"projectRef": {"name": "full"}}}),
    )
    .await;
    let vm = e
        .wait_vm(
            "web",
            conditions::STALLED,
            ConditionStatus::True,
            "LimitExceeded",
        )
        .await;
    assert_eq!(vm.status.unwrap().project.as_deref(), Some("alpha"));

    // Into beta: alpha's window is closed first; from then on beta is billed.
    e.patch_vm(
        "web",
        serde_json::json!({"spec": {"projectRef": {"name": "beta"}}}),
    )
    .await;
    let vm = e.wait_ready("web").await;
    assert_eq!(vm.status.unwrap().project.as_deref(), Some("beta"));
    // Let beta accrue billable seconds before the VM goes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let alpha = billed(&ledger, &e.client, &e.ns, "alpha").await;
    assert!(
        alpha.iter().map(|r| r.quantity).sum::<i64>() >= 2,
        "alpha's running time was not billed to alpha: {alpha:?}"
    );
    delete_vm(&e, "web").await;
    let beta = billed(&ledger, &e.client, &e.ns, "beta").await;
    let alpha_after = billed(&ledger, &e.client, &e.ns, "alpha").await;
    assert_eq!(alpha, alpha_after, "usage after the move went to alpha");
    assert!(!beta.is_empty(), "beta billed nothing after the move");
}

#[tokio::test]
async fn recorded_intent_is_read_back_before_creating_again() {
    let e = env("vmintent", |_| {}, true).await;
    e.apply_vm(
        "web",
        serde_json::json!({"metadata": {"annotations": {"quartermaster.dev/paused": "true"}}}),
    )
    .await;
    let vms = e.vms();
    let vm = common::eventually(WAIT, "vm web paused", || async {
        let vm = vms.get("web").await.ok()?;
        let c = conditions::find(&vm.status.as_ref()?.conditions, conditions::PAUSED)?;
        (c.status == ConditionStatus::True).then_some(vm)
    })
    .await;
    // Intent recorded by an earlier attempt whose create never reached the vendor.
    let uid = vm.metadata.uid.clone().unwrap();
    e.vms()
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({"status": {"creationKey": uid}})),
        )
        .await
        .unwrap();
    e.patch_vm(
        "web",
        serde_json::json!({"metadata": {"annotations": {"quartermaster.dev/paused": "false"}}}),
    )
    .await;
    e.wait_ready("web").await;
    assert_eq!(tagged_droplets(&e, &uid).await, 1);
    let metrics = e.metrics.as_ref().unwrap().render();
    assert!(
        metrics.contains("quartermaster_vm_recreates_after_intent_total 1"),
        "{metrics}"
    );
    assert!(
        e.event_reasons("web")
            .await
            .iter()
            .any(|r| r == "Recreating")
    );
}

#[tokio::test]
async fn one_tenants_resync_annotation_cannot_hurt_the_controller() {
    // Per-VM resyncs only: the account listing (one per account, not per VM) is kept out of the count.
    let e = env_with("vmresync", |_| {})
        .await
        .with_controller(None, |c| c.observe_interval = Duration::from_secs(3600));
    e.apply_vm(
        "fast",
        serde_json::json!({"metadata": {"annotations": {"quartermaster.dev/resync-interval": "1s"}}}),
    )
    .await;
    e.apply_vm(
        "huge",
        serde_json::json!({"metadata": {"annotations": {"quartermaster.dev/resync-interval": "1152921504606846976h"}}}),
    )
    .await;
    e.wait_ready("fast").await;
    e.wait_ready("huge").await;
    let vendor_calls = |m: &str| -> f64 {
        m.lines()
            .filter(|l| l.starts_with("quartermaster_vendor_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let metrics = e.metrics.clone().unwrap();
    let before = vendor_calls(&metrics.render());
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after = vendor_calls(&metrics.render());
    assert!(
        after - before <= 2.0,
        "two idle VMs made {} vendor calls in 8 s",
        after - before
    );
    // The controller is alive for everyone: a new VM still gets Ready.
    e.apply_vm("other", serde_json::json!({})).await;
    e.wait_ready("other").await;
    let reasons = e.event_reasons("huge").await;
    assert!(
        reasons.iter().any(|r| r == "InvalidAnnotation"),
        "{reasons:?}"
    );
    let reasons = e.event_reasons("fast").await;
    assert!(
        reasons.iter().any(|r| r == "InvalidAnnotation"),
        "{reasons:?}"
    );
    // The finalizer is ours by name in managedFields (not "unknown").
    let vm = e.vms().get("other").await.unwrap();
    let managers: Vec<String> = vm
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(
        managers.iter().any(|m| m == "quartermaster"),
        "{managers:?}"
    );
    assert!(!managers.iter().any(|m| m == "unknown"), "{managers:?}");
}

#[tokio::test]
async fn an_intent_write_that_conflicts_records_no_create_and_no_recreating_warning() {
    // Every vendor call takes 1 s, so the first reconcile reads the catalog and looks the tag up for
    // several seconds before it writes its intent; an edit meanwhile (another region) makes that write
    // conflict (409). Nothing was created, so the new region is no immutable-field change.
    let e = env("vmconflict", |c| c.latency_ms = 1000, true).await;
    e.apply_vm("web", serde_json::json!({})).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    e.patch_vm(
        "web",
        serde_json::json!({"metadata": {"labels": {"team": "blue"}}, "spec": {"region": "ams3"}}),
    )
    .await;
    let vm = e.wait_ready("web").await;
    let uid = vm.metadata.uid.clone().unwrap();
    assert_eq!(tagged_droplets(&e, &uid).await, 1);
    assert_eq!(vm.status.unwrap().region.as_deref(), Some("ams3"));
    let metrics = e.metrics.as_ref().unwrap().render();
    // The label did make the intent write conflict.
    assert!(
        metrics.contains("{category=\"kube_conflict\",kind=\"VirtualMachine\"}"),
        "{metrics}"
    );
    // The failed intent write did not claim a create was under way: no second look, no warning.
    assert!(
        metrics.contains("quartermaster_vm_recreates_after_intent_total 0"),
        "{metrics}"
    );
    let reasons = e.event_reasons("web").await;
    assert!(!reasons.iter().any(|r| r == "Recreating"), "{reasons:?}");
}

#[tokio::test]
async fn user_data_over_the_vendor_limit_is_refused_before_any_create() {
    let e = env("vmuserdata", |_| {}, true).await;
    // DigitalOcean takes at most 64 KiB of user data; 1 MiB is refused before the vendor is called.
    common::secret(
        &e.client,
        &e.ns,
        "big-init",
        "cloud-init",
        &"#".repeat(1 << 20),
    )
    .await;
    e.apply_vm(
        "big",
        serde_json::json!({"spec": {"userDataSecretRef": {"name": "big-init", "key": "cloud-init"}}}),
    )
    .await;
    let vm = e
        .wait_vm(
            "big",
            conditions::STALLED,
            ConditionStatus::True,
            "InvalidSpec",
        )
        .await;
    let st = vm.status.unwrap();
    let msg = &conditions::find(&st.conditions, conditions::STALLED)
        .unwrap()
        .message;
    assert!(msg.contains("at most 65536 bytes"), "{msg}");
    assert!(
        st.creation_key.is_none(),
        "intent recorded for a create that cannot happen"
    );
    let uid = vm.metadata.uid.unwrap();
    assert_eq!(tagged_droplets(&e, &uid).await, 0);
    assert_eq!(e.sim.droplets().await.len(), 0, "a droplet was created");
}

#[tokio::test]
async fn deleting_a_namespace_with_its_token_deletes_every_server_even_across_a_restart() {
    // The token Secret lives in the tenant's namespace, beside the VMs.
    let mut e = env("nsdel", |_| {}, true).await;
    for name in ["a", "b"] {
        e.apply_vm(name, serde_json::json!({})).await;
    }
    for name in ["a", "b"] {
        e.wait_ready(name).await;
    }
    assert_eq!(e.sim.droplets().await.len(), 2);
    // The controller stops (an upgrade, a leader change): no copy of the token is left in memory.
    drop(e._stop.take());
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(e.client.clone());
    namespaces
        .delete(&e.ns, &DeleteParams::default())
        .await
        .unwrap();
    // The namespace's deletion reaches the VMs (and the token Secret) while no controller runs.
    common::eventually(
        Duration::from_secs(30),
        "the VMs marked for deletion",
        || async {
            let vm = e.vms().get_opt("a").await.ok()??;
            vm.metadata.deletion_timestamp.map(|_| ())
        },
    )
    .await;
    let (_metrics, _stop) = common::start_controller_cfg(e.client.clone(), &e.id, None, |_| {});
    common::eventually(Duration::from_secs(90), "every droplet deleted", || async {
        e.sim.droplets().await.is_empty().then_some(())
    })
    .await;
    common::eventually(Duration::from_secs(90), "namespace gone", || async {
        namespaces
            .get_opt(&e.ns)
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_provider_config_in_use_waits_for_its_vms_before_it_goes() {
    let e = env("pcinuse", |_| {}, true).await;
    e.apply_vm("web", serde_json::json!({})).await;
    e.wait_ready("web").await;
    let pcs: Api<ProviderConfig> = Api::all(e.client.clone());
    pcs.delete(&e.pc, &DeleteParams::default()).await.unwrap();
    let pc = common::eventually(WAIT, "ProviderConfig says it is in use", || async {
        let pc = pcs.get(&e.pc).await.ok()?;
        let c = conditions::find(&pc.status.as_ref()?.conditions, conditions::RECONCILING)?;
        (c.status == ConditionStatus::True && c.message.contains("in use")).then_some(pc)
    })
    .await;
    assert!(pc.metadata.deletion_timestamp.is_some());
    // Its Secret is kept too.
    let secrets: Api<Secret> = Api::namespaced(e.client.clone(), &e.ns);
    let token = secrets.get("do-token").await.unwrap();
    assert!(
        token
            .metadata
            .finalizers
            .unwrap_or_default()
            .iter()
            .any(|f| f == "quartermaster.dev/credentials-in-use")
    );
    // The VM can still clean up; then the ProviderConfig goes and releases its Secret.
    delete_vm(&e, "web").await;
    assert!(e.sim.droplets().await.is_empty());
    common::eventually(WAIT, "ProviderConfig gone", || async {
        pcs.get_opt(&e.pc).await.ok()?.is_none().then_some(())
    })
    .await;
    common::eventually(WAIT, "Secret released", || async {
        let s = secrets.get("do-token").await.ok()?;
        (!s.metadata
            .finalizers
            .unwrap_or_default()
            .iter()
            .any(|f| f == "quartermaster.dev/credentials-in-use"))
        .then_some(())
    })
    .await;
}

/// Vendor options: what the vendor honours is sent at create (a VPC and the monitoring agent on
/// DigitalOcean) or right after it (a firewall names the droplet from its side), each only where the
/// ProviderConfig grants it to the namespace; what it cannot honour (a StackScript) is refused before
/// any create, naming the vendor and the field.
#[tokio::test]
async fn vendor_options_are_sent_or_refused_before_any_create() {
    let e = env("vmopts", |_| {}, true).await;
    // A VPC the ProviderConfig does not grant this namespace: refused before any create.
    e.apply_vm(
        "private",
        serde_json::json!({"spec": {"vpcID": "vpc-tenant-a", "monitoring": true}}),
    )
    .await;
    e.wait_vm(
        "private",
        conditions::STALLED,
        ConditionStatus::True,
        "ProviderConfigNotAllowed",
    )
    .await;
    assert!(e.sim.droplets().await.is_empty());
    // Granted: sent with the create.
    let pcs: Api<ProviderConfig> = Api::all(e.client.clone());
    pcs.patch(
        &e.pc,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"vendorResources": [
            {"namespaces": [e.ns], "vpcIDs": ["vpc-tenant-a"]}
        ]}})),
    )
    .await
    .unwrap();
    let vm = e.wait_ready("private").await;
    let droplet = e
        .droplet(&vm.status.unwrap().external_id.unwrap())
        .await
        .unwrap();
    assert_eq!(droplet["vpc_uuid"], "vpc-tenant-a");
    assert_eq!(droplet["features"], serde_json::json!(["monitoring"]));
    // A firewall not granted: refused before any create; granted, the droplet joins it once created.
    e.apply_vm(
        "walled",
        serde_json::json!({"spec": {"firewallID": "fw-tenant-a"}}),
    )
    .await;
    e.wait_vm(
        "walled",
        conditions::STALLED,
        ConditionStatus::True,
        "ProviderConfigNotAllowed",
    )
    .await;
    assert_eq!(e.sim.droplets().await.len(), 1);
    pcs.patch(
        &e.pc,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"vendorResources": [
            {"namespaces": [e.ns], "vpcIDs": ["vpc-tenant-a"], "firewallIDs": ["fw-tenant-a"]}
        ]}})),
    )
    .await
    .unwrap();
    let walled = e.wait_ready("walled").await.status.unwrap();
    assert_eq!(walled.firewall_id.as_deref(), Some("fw-tenant-a"));
    let named: serde_json::Value =
        reqwest::get(format!("{}/_sim/firewalls/fw-tenant-a", e.sim.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let id: u64 = walled.external_id.unwrap().parse().unwrap();
    assert_eq!(named["droplet_ids"], serde_json::json!([id]));
    for (name, spec, field) in [(
        "scripted",
        serde_json::json!({"stackScript": {"id": 10079}}),
        "spec.stackScript",
    )] {
        e.apply_vm(name, serde_json::json!({ "spec": spec })).await;
        let vm = e
            .wait_vm(
                name,
                conditions::STALLED,
                ConditionStatus::True,
                "InvalidSpec",
            )
            .await;
        let st = vm.status.unwrap();
        let msg = &conditions::find(&st.conditions, conditions::STALLED)
            .unwrap()
            .message;
        assert!(msg.contains(field) && msg.contains("digitalocean"), "{msg}");
        assert!(
            st.creation_key.is_none(),
            "no intent recorded for a refused create"
        );
    }
    assert_eq!(
        e.sim.droplets().await.len(),
        2,
        "only the VMs with honoured options"
    );
}

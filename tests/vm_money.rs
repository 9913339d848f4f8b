//! The VirtualMachine slice's money rules, end to end on a real kube-apiserver with `quartermaster sim`:
//! every price change is admitted before any power action (a refused size never powers a server off), and
//! a vendor's refusal of the resize itself stalls with its words and powers the server back on; metering
//! follows the vendor whatever the object does (paused, stalled), a server gone at the vendor is billed
//! until it was last seen, and pause suspends the user's changes, not the Project's money policy.

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use quartermaster::crd::VirtualMachine;
use quartermaster::crd::conditions::{self, ConditionStatus};
use quartermaster::ledger::store::{GroupBy, ProjectRef};
use quartermaster::ledger::{Meter, UsageEvent};

mod common;

use common::env::{Env, WAIT, env, env_with};

/// The VM's Stalled message once it is Stalled for `reason` at its current generation.
async fn stalled(e: &Env, name: &str, reason: &str) -> (VirtualMachine, String) {
    let vm = e
        .wait_vm(name, conditions::STALLED, ConditionStatus::True, reason)
        .await;
    let msg = conditions::find(&vm.status.as_ref().unwrap().conditions, conditions::STALLED)
        .unwrap()
        .message
        .clone();
    (vm, msg)
}

/// The droplet's status and size at the vendor.
async fn droplet_state(e: &Env, vm: &VirtualMachine) -> (String, String) {
    let id = vm.status.as_ref().unwrap().external_id.clone().unwrap();
    let d = e.droplet(&id).await.expect("droplet exists");
    (
        d["status"].as_str().unwrap_or_default().to_string(),
        d["size_slug"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test]
async fn a_refused_size_never_powers_the_server_off() {
    let e = env("vmresize", |_| {}, true).await;
    e.apply_project(
        "acme",
        serde_json::json!({"currency": "USD", "limits": {"maxMonthlySpend": "20"}}),
    )
    .await;
    let spec =
        |size: &str| serde_json::json!({"spec": {"size": size, "projectRef": {"name": "acme"}}});
    e.apply_vm("web", spec("s-1vcpu-2gb")).await;
    e.wait_ready("web").await;

    // Each refused size: Stalled with the reason, and the droplet still active at its size.
    for (size, reason, says) in [
        ("s-9vcpu-nope", "InvalidSpec", "unknown size"),
        ("s-1vcpu-1gb", "InvalidSpec", "disk"),
        ("s-2vcpu-4gb", "LimitExceeded", "maxMonthlySpend"),
    ] {
        e.apply_vm("web", spec(size)).await;
        let (vm, msg) = stalled(&e, "web", reason).await;
        assert!(
            msg.contains(says) || msg.contains("limits monthly spend"),
            "{size}: {msg}"
        );
        let (status, at) = droplet_state(&e, &vm).await;
        assert_eq!(
            (status.as_str(), at.as_str()),
            ("active", "s-1vcpu-2gb"),
            "{size}: the droplet was touched"
        );
        assert!(
            !e.event_reasons("web")
                .await
                .iter()
                .any(|r| r == "PoweringOff"),
            "{size}: powered off before admission"
        );
    }
    // A size that fits: resized, and running again.
    e.apply_vm("web", spec("s-2vcpu-2gb")).await;
    let vm = e.wait_ready("web").await;
    assert_eq!(
        droplet_state(&e, &vm).await,
        ("active".into(), "s-2vcpu-2gb".into())
    );
    e.vms()
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    e.wait_gone("web").await;
}

#[tokio::test]
async fn a_vendor_refusal_of_the_resize_stalls_with_its_words_and_powers_back_on() {
    let e = env(
        "vmrefuse",
        |c| c.refuse_resize_to = vec!["s-2vcpu-2gb".into()],
        true,
    )
    .await;
    e.apply_vm("web", serde_json::json!({})).await;
    e.wait_ready("web").await;
    e.apply_vm("web", serde_json::json!({"spec": {"size": "s-2vcpu-2gb"}}))
        .await;
    let (_, msg) = stalled(&e, "web", "VendorRejected").await;
    assert!(msg.contains("not available for resizing"), "{msg}");
    // Back on (runStrategy Always), at its size, and it stays Stalled: the refusal is not retried.
    let vms: Api<VirtualMachine> = e.vms();
    let vm = common::eventually(WAIT, "droplet powered back on", || async {
        let vm = vms.get("web").await.ok()?;
        (droplet_state(&e, &vm).await.0 == "active").then_some(vm)
    })
    .await;
    assert_eq!(droplet_state(&e, &vm).await.1, "s-1vcpu-1gb");
    let refused = vm.status.as_ref().unwrap().resize_refused.clone().unwrap();
    assert_eq!(refused.size, "s-2vcpu-2gb");
    stalled(&e, "web", "VendorRejected").await;
    assert!(
        e.event_reasons("web")
            .await
            .iter()
            .any(|r| r == "ResizeRefused")
    );
    // Another size goes through.
    e.apply_vm("web", serde_json::json!({"spec": {"size": "s-1vcpu-2gb"}}))
        .await;
    let vm = e.wait_ready("web").await;
    assert_eq!(
        droplet_state(&e, &vm).await,
        ("active".into(), "s-1vcpu-2gb".into())
    );
    assert!(vm.status.unwrap().resize_refused.is_none());
}

/// Deletes droplet `id` at the simulator, as someone using the vendor's console would.
async fn delete_droplet(e: &Env, id: &str) {
    quartermaster::install_crypto_provider();
    let r = reqwest::Client::new()
        .delete(format!("{}/v2/droplets/{id}", e.sim.url))
        .bearer_auth("sim-token")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "delete droplet: {}", r.status());
    common::eventually(WAIT, "droplet gone at the vendor", || async {
        e.droplet(id).await.is_none().then_some(())
    })
    .await;
}

/// Seconds of VM usage recorded for object `name` (no Project) this month and last.
async fn metered_seconds(l: &quartermaster::ledger::Ledger, ns: &str, name: &str) -> i64 {
    let now = jiff::Timestamp::now().as_second();
    let none = ProjectRef {
        namespace: ns,
        name: "",
        uid: "",
    };
    l.usage(&none, now - 40 * 86_400, now + 86_400, GroupBy::Object)
        .await
        .unwrap()
        .iter()
        .filter(|r| r.key == format!("VirtualMachine/{name}") && r.meter == "vm_seconds")
        .map(|r| r.quantity)
        .sum()
}

/// Usage rows of meter `meter` recorded for object `name` (no Project).
async fn rows_of(l: &quartermaster::ledger::Ledger, ns: &str, name: &str, meter: &str) -> i64 {
    let now = jiff::Timestamp::now().as_second();
    let none = ProjectRef {
        namespace: ns,
        name: "",
        uid: "",
    };
    l.usage(&none, now - 40 * 86_400, now + 86_400, GroupBy::Object)
        .await
        .unwrap()
        .iter()
        .filter(|r| r.key == format!("VirtualMachine/{name}") && r.meter == meter)
        .map(|r| r.quantity)
        .sum()
}

/// A VM with an open metering window; returns (droplet ID, window start).
async fn metered_vm(e: &Env, name: &str) -> (String, i64) {
    e.apply_vm(name, serde_json::json!({})).await;
    e.wait_ready(name).await;
    let vms = e.vms();
    common::eventually(WAIT, "VM running with an open metering window", || async {
        let st = vms.get(name).await.ok()?.status?;
        Some((st.external_id?, st.metering?.since))
    })
    .await
}

#[tokio::test]
async fn a_server_gone_at_the_vendor_is_billed_until_last_seen_paused_or_stalled() {
    let dir = tempfile::tempdir().unwrap();
    let (l, _) = common::db::fresh_ledger(&dir).await;
    let e = env_with("vmgone", |_| {})
        .await
        .with_controller(Some(l.clone()), |_| {});
    let vms = e.vms();

    // Paused: the VM is still observed. Its droplet is deleted out of band; the window closes at the
    // last sighting (the observation when it was paused), not days later at the VM's deletion.
    let (paused_id, since) = metered_vm(&e, "paused").await;
    e.patch_vm(
        "paused",
        serde_json::json!({"metadata": {"annotations": {"quartermaster.dev/paused": "true"}}}),
    )
    .await;
    e.wait_vm_status("paused", "Paused", ConditionStatus::True)
        .await;
    delete_droplet(&e, &paused_id).await;
    let gone = jiff::Timestamp::now().as_second();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    // Any change wakes it (a paused VM also resyncs while its window is open).
    e.patch_vm(
        "paused",
        serde_json::json!({"metadata": {"annotations": {"touch": "1"}}}),
    )
    .await;
    common::eventually(WAIT, "paused VM's window closed", || async {
        let st = vms.get("paused").await.ok()?.status?;
        st.metering.is_none().then_some(())
    })
    .await;
    let billed = metered_seconds(&l, &e.ns, "paused").await;
    assert!(
        billed <= gone - since,
        "billed {billed} s: beyond the droplet's deletion ({} s after the window began)",
        gone - since
    );

    // Not paused: the VM stalls ExternalNotFound and its window closes at the last sighting too.
    let (stalled_id, since) = metered_vm(&e, "stalled").await;
    delete_droplet(&e, &stalled_id).await;
    let gone = jiff::Timestamp::now().as_second();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    e.patch_vm(
        "stalled",
        serde_json::json!({"metadata": {"annotations": {"touch": "1"}}}),
    )
    .await;
    let vm = e
        .wait_vm(
            "stalled",
            conditions::STALLED,
            ConditionStatus::True,
            "ExternalNotFound",
        )
        .await;
    assert!(vm.status.unwrap().metering.is_none(), "window left open");
    let billed = metered_seconds(&l, &e.ns, "stalled").await;
    assert!(
        billed <= gone - since,
        "billed {billed} s, gone after {} s",
        gone - since
    );
}

#[tokio::test]
async fn pause_suspends_changes_not_money_policy() {
    let dir = tempfile::tempdir().unwrap();
    let (l, _) = common::db::fresh_ledger(&dir).await;
    let e = env_with("vmpause", |_| {})
        .await
        .with_controller(Some(l.clone()), |_| {});
    e.apply_project("prepaid", serde_json::json!({"onCreditExhausted": "Stop"}))
        .await;
    let prepaid = common::project_uid(&e.client, &e.ns, "prepaid").await;
    let credit = common::grant("g1", &e.ns, "prepaid", &prepaid, 1_000_000_000);
    assert!(l.credit(&credit).await.unwrap());
    e.apply_vm(
        "box",
        serde_json::json!({"spec": {"projectRef": {"name": "prepaid"}}}),
    )
    .await;
    let vm = e.wait_ready("box").await;
    let id = vm.status.unwrap().external_id.unwrap();
    let projects: Api<quartermaster::crd::Project> = Api::namespaced(e.client.clone(), &e.ns);
    common::eventually(WAIT, "project shows its credit", || async {
        let st = projects.get("prepaid").await.ok()?.status?;
        (st.credit_balance.as_deref() == Some("1.00")).then_some(())
    })
    .await;

    // Both paused; a spec change is not acted on.
    let pause =
        serde_json::json!({"metadata": {"annotations": {"quartermaster.dev/paused": "true"}}});
    e.patch_vm("box", pause.clone()).await;
    projects
        .patch(
            "prepaid",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&pause),
        )
        .await
        .unwrap();
    e.wait_vm_status("box", "Paused", ConditionStatus::True)
        .await;
    e.patch_vm(
        "box",
        serde_json::json!({"spec": {"runStrategy": "Halted"}}),
    )
    .await;

    // The credit runs out: the paused Project's balance follows, and the paused VM is stopped.
    let now = jiff::Timestamp::now().as_second();
    l.record(&[UsageEvent {
        key: format!("other/{}", e.id),
        namespace: e.ns.clone(),
        project: "prepaid".into(),
        project_uid: prepaid.clone(),
        object_kind: "VirtualMachine".into(),
        object_name: "other".into(),
        object_uid: "other-uid".into(),
        meter: Meter::VmSeconds,
        quantity: 3600,
        unit_price: "5".parse().unwrap(),
        vendor_unit_price: "5".parse().unwrap(),
        price_quantity: 3600,
        currency: "USD".into(),
        window_start: now - 3600,
        window_end: now,
        attributes: serde_json::json!({}),
    }])
    .await
    .unwrap();
    let p = common::eventually(WAIT, "paused project's balance kept current", || async {
        let p = projects.get("prepaid").await.ok()?;
        (p.status.as_ref()?.credit_balance.as_deref() == Some("-4.00")).then_some(p)
    })
    .await;
    let c = conditions::find(&p.status.unwrap().conditions, conditions::READY)
        .unwrap()
        .clone();
    assert_eq!(
        (c.status, c.reason.as_str()),
        (ConditionStatus::False, "CreditExhausted")
    );
    common::eventually(WAIT, "paused VM stopped by the credit stop", || async {
        (e.droplet(&id).await?["status"] == "off").then_some(())
    })
    .await;
    // Paused all along: the Halted edit was not what stopped it, and it is still not acted on.
    let vm = e.vms().get("box").await.unwrap();
    assert_ne!(
        vm.status.unwrap().observed_generation,
        vm.metadata.generation,
        "a paused VM acted on its spec"
    );
}

#[tokio::test]
async fn a_stopped_server_is_billed_and_the_tenant_pays_the_markup() {
    let dir = tempfile::tempdir().unwrap();
    let (l, _) = common::db::fresh_ledger(&dir).await;
    let e = env_with("vmmarkup", |_| {})
        .await
        .with_controller(Some(l.clone()), |_| {});
    let pcs: Api<quartermaster::crd::ProviderConfig> = Api::all(e.client.clone());
    pcs.patch(
        &e.pc,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({"spec": {"markupPercent": "50"}})),
    )
    .await
    .unwrap();
    e.apply_vm(
        "box",
        serde_json::json!({"spec": {"runStrategy": "Halted"}}),
    )
    .await;
    // Stopped, as declared, and still metered: DigitalOcean bills a powered-off droplet in full.
    let vm = common::eventually(WAIT, "stopped with an open window", || async {
        let vm = e.vms().get("box").await.ok()?;
        let st = vm.status.as_ref()?;
        let ready = conditions::find(&st.conditions, conditions::READY)?;
        (ready.reason == "Stopped" && st.metering.is_some()).then_some(vm)
    })
    .await;
    let st = vm.status.unwrap();
    let w = st.metering.unwrap();
    // The tenant's price is the vendor's with the markup; the vendor's is kept beside it.
    assert_eq!(st.hourly_price.as_deref(), Some("0.013395"));
    assert_eq!(st.monthly_price.as_deref(), Some("9.00"));
    assert_eq!(
        (w.hourly_price.as_str(), w.vendor_hourly_price.as_deref()),
        ("0.013395", Some("0.00893"))
    );
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    e.vms()
        .delete("box", &DeleteParams::default())
        .await
        .unwrap();
    e.wait_gone("box").await;
    let now = jiff::Timestamp::now().as_second();
    let rows = l
        .usage(
            &ProjectRef {
                namespace: &e.ns,
                name: "",
                uid: "",
            },
            now - 40 * 86_400,
            now + 86_400,
            GroupBy::Object,
        )
        .await
        .unwrap();
    let r = rows
        .iter()
        .find(|r| r.key == "VirtualMachine/box")
        .expect("usage recorded");
    assert!(r.quantity >= 2, "{r:?}");
    // amount = 1.5 × cost, to the nano-unit (rounding aside).
    assert!((r.amount_nanos * 2 - r.cost_nanos * 3).abs() <= 3, "{r:?}");
}

#[tokio::test]
async fn a_project_recreated_under_the_same_name_starts_with_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (l, _) = common::db::fresh_ledger(&dir).await;
    let e = env_with("projuid", |_| {})
        .await
        .with_controller(Some(l.clone()), |_| {});
    let projects: Api<quartermaster::crd::Project> = Api::namespaced(e.client.clone(), &e.ns);
    let balance = |want: Option<&'static str>| {
        let projects = projects.clone();
        async move {
            common::eventually(WAIT, &format!("project balance {want:?}"), || async {
                let p = projects.get("acme").await.ok()?;
                let st = p.status.as_ref()?;
                (st.observed_generation.is_some() && st.credit_balance.as_deref() == want)
                    .then_some(p)
            })
            .await
        }
    };
    e.apply_project("acme", serde_json::json!({})).await;
    let first = common::project_uid(&e.client, &e.ns, "acme").await;
    assert!(
        l.credit(&common::grant("g", &e.ns, "acme", &first, 7_000_000_000))
            .await
            .unwrap()
    );
    balance(Some("7.00")).await;
    projects
        .delete("acme", &DeleteParams::default())
        .await
        .unwrap();
    common::eventually(WAIT, "project deleted", || async {
        projects.get_opt("acme").await.ok()?.is_none().then_some(())
    })
    .await;
    // The same name again is another tenant: the old credit is not its.
    e.apply_project("acme", serde_json::json!({})).await;
    let p = balance(None).await;
    assert_ne!(p.metadata.uid.as_deref(), Some(first.as_str()));
}

#[tokio::test]
async fn a_vm_on_a_suspended_account_is_still_observed_and_metered_but_not_changed() {
    let dir = tempfile::tempdir().unwrap();
    let (l, _) = common::db::fresh_ledger(&dir).await;
    let e = env_with("vmsusp", |_| {})
        .await
        .with_controller(Some(l.clone()), |_| {});
    let (id, since) = metered_vm(&e, "web").await;
    let pcs: Api<quartermaster::crd::ProviderConfig> = Api::all(e.client.clone());
    pcs.patch(
        &e.pc,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({"spec": {"suspended": true}})),
    )
    .await
    .unwrap();
    e.patch_vm(
        "web",
        serde_json::json!({"spec": {"runStrategy": "Halted"}}),
    )
    .await;
    e.wait_vm(
        "web",
        conditions::READY,
        ConditionStatus::False,
        "ProviderConfigSuspended",
    )
    .await;
    assert_eq!(
        e.droplet(&id).await.unwrap()["status"],
        "active",
        "a suspended account was changed"
    );
    // Deleted at the vendor meanwhile: seen, and billed only until then.
    delete_droplet(&e, &id).await;
    let gone = jiff::Timestamp::now().as_second();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    e.patch_vm(
        "web",
        serde_json::json!({"metadata": {"annotations": {"touch": "1"}}}),
    )
    .await;
    common::eventually(WAIT, "window closed at the last sighting", || async {
        let st = e.vms().get("web").await.ok()?.status?;
        st.metering.is_none().then_some(())
    })
    .await;
    let billed = metered_seconds(&l, &e.ns, "web").await;
    assert!(
        billed <= gone - since,
        "billed {billed} s, gone after {} s",
        gone - since
    );
}

/// Powers droplet `id` off at the simulator, as someone using the vendor's console would.
async fn power_off_droplet(e: &Env, id: &str) {
    quartermaster::install_crypto_provider();
    let r = reqwest::Client::new()
        .post(format!("{}/v2/droplets/{id}/actions", e.sim.url))
        .bearer_auth("sim-token")
        .json(&serde_json::json!({"type": "power_off"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "power off: {}", r.status());
}

#[tokio::test]
async fn drift_at_the_vendor_is_seen_without_waiting_for_the_vms_own_resync() {
    let dir = tempfile::tempdir().unwrap();
    let (l, _) = common::db::fresh_ledger(&dir).await;
    // Each VM's own resync is 10 minutes away; the account listing runs every second here.
    let e = env_with("vmdrift", |_| {})
        .await
        .with_controller(Some(l.clone()), |_| {});
    let (on_id, _) = metered_vm(&e, "on").await;
    let (gone_id, since) = metered_vm(&e, "gone").await;
    // Powered off behind Quartermaster's back: runStrategy Always powers it on again.
    power_off_droplet(&e, &on_id).await;
    common::eventually(WAIT, "powered back on after drift", || async {
        e.event_reasons("on")
            .await
            .iter()
            .any(|r| r == "PoweringOn")
            .then_some(())
    })
    .await;
    // Deleted behind its back: seen, stalled, and billed no further than the deletion.
    delete_droplet(&e, &gone_id).await;
    let gone = jiff::Timestamp::now().as_second();
    let vm = e
        .wait_vm(
            "gone",
            conditions::STALLED,
            ConditionStatus::True,
            "ExternalNotFound",
        )
        .await;
    assert!(vm.status.unwrap().metering.is_none());
    let billed = metered_seconds(&l, &e.ns, "gone").await;
    assert!(
        billed <= gone + 1 - since,
        "billed {billed} s, gone after {} s",
        gone - since
    );
    let listings = e.metrics.as_ref().unwrap().account_listings.get();
    assert!(listings >= 1, "no account listing");
}

/// ProviderConfigs whose credentials cannot be read are skipped and counted, and every other account is
/// still listed; each listing is a sighting, so a server deleted at the vendor is billed until the last
/// listing that saw it, not until its VM's own last reconcile.
#[tokio::test]
async fn a_broken_account_blinds_no_other_and_listings_are_sightings() {
    let dir = tempfile::tempdir().unwrap();
    let (l, _) = common::db::fresh_ledger(&dir).await;
    let e = env_with("vmsight", |_| {}).await;
    // Broken accounts (a mistyped Secret name), several, so that some come before the healthy one.
    let pcs: Api<quartermaster::crd::ProviderConfig> = Api::all(e.client.clone());
    let mut broken = Vec::new();
    for i in 0..5 {
        let name = format!("{}-broken{i}", e.id);
        let pc = serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "ProviderConfig",
            "metadata": {"name": name, "labels": {"qm-test": e.id}},
            "spec": {"type": "digitalocean", "endpoint": e.sim.url,
                "credentialsSecretRef": {"name": "do-tokn", "namespace": e.ns, "key": "token"}}
        });
        pcs.patch(
            &name,
            &PatchParams::apply("quartermaster-tests").force(),
            &Patch::Apply(&pc),
        )
        .await
        .unwrap();
        broken.push(name);
    }
    let e = e.with_controller(Some(l.clone()), |_| {});
    let (id, since) = metered_vm(&e, "web").await;
    // The VM's own reconciles are over (its resync is 10 minutes away); the listings go on each second.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    delete_droplet(&e, &id).await;
    let gone = jiff::Timestamp::now().as_second();
    let vm = e
        .wait_vm(
            "web",
            conditions::STALLED,
            ConditionStatus::True,
            "ExternalNotFound",
        )
        .await;
    assert!(vm.status.unwrap().metering.is_none());
    let billed = metered_seconds(&l, &e.ns, "web").await;
    assert!(
        billed >= gone - since - 3 && billed <= gone + 1 - since,
        "billed {billed} s; the server existed {} s and was listed each second",
        gone - since
    );
    let m = e.metrics.as_ref().unwrap();
    for name in &broken {
        let failures = m.account_listing_failures.with_label_values(&[name]).get();
        assert!(failures >= 1, "{name}: no listing failure counted");
    }
}

/// Releasing a server is the platform's decision: a VM switched to ObserveOnly still deletes the server
/// it created; `deletionPolicy: Orphan` waits, Stalled and metered, until the ProviderConfig lets the
/// namespace release servers; a release removes the ownership tag and is an Event and a ledger line.
#[tokio::test]
async fn releasing_a_server_is_an_admins_decision() {
    let dir = tempfile::tempdir().unwrap();
    let (l, url) = common::db::fresh_ledger(&dir).await;
    let e = env_with("vmrelease", |_| {})
        .await
        .with_controller(Some(l.clone()), |_| {});
    let (watched_id, _) = metered_vm(&e, "watched").await;
    let (kept_id, _) = metered_vm(&e, "kept").await;
    let uid = e.vms().get("kept").await.unwrap().metadata.uid.unwrap();

    // ObserveOnly does not release what the VM created: its deletion deletes the server.
    e.patch_vm(
        "watched",
        serde_json::json!({"spec": {"managementPolicy": "ObserveOnly"}}),
    )
    .await;
    e.wait_vm_status("watched", "Ready", ConditionStatus::True)
        .await;
    e.vms()
        .delete("watched", &DeleteParams::default())
        .await
        .unwrap();
    e.wait_gone("watched").await;
    common::eventually(WAIT, "the created server deleted", || async {
        e.droplet(&watched_id).await.is_none().then_some(())
    })
    .await;

    // Orphan with nothing left at the vendor: nothing to release, the deletion completes.
    let (gone_id, _) = metered_vm(&e, "gone").await;
    delete_droplet(&e, &gone_id).await;
    e.patch_vm(
        "gone",
        serde_json::json!({"spec": {"deletionPolicy": "Orphan"}}),
    )
    .await;
    e.vms()
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap();
    e.wait_gone("gone").await;

    // Orphan where the ProviderConfig allows no release: the deletion waits, the meter runs.
    e.patch_vm(
        "kept",
        serde_json::json!({"spec": {"deletionPolicy": "Orphan"}}),
    )
    .await;
    e.vms()
        .delete("kept", &DeleteParams::default())
        .await
        .unwrap();
    let (_, msg) = common::eventually(WAIT, "kept Stalled ReleaseNotAllowed", || async {
        let st = e.vms().get("kept").await.ok()?.status?;
        let c = conditions::find(&st.conditions, conditions::STALLED)?;
        (c.reason == "ReleaseNotAllowed").then(|| (st.metering.clone(), c.message.clone()))
    })
    .await;
    assert!(msg.contains("spec.release.allowedNamespaces"), "{msg}");
    let vm = e.vms().get("kept").await.unwrap();
    assert!(vm.status.unwrap().metering.is_some(), "the meter stopped");
    assert!(e.droplet(&kept_id).await.is_some());
    assert_eq!(rows_of(&l, &e.ns, "kept", "vm_releases").await, 0);

    // Allowed: released (untagged, running), an Event and one ledger line.
    e.allow_release().await;
    e.wait_gone("kept").await;
    let d = e
        .droplet(&kept_id)
        .await
        .expect("the released server was deleted");
    let tags: Vec<String> = serde_json::from_value(d["tags"].clone()).unwrap();
    assert!(
        !tags.contains(&format!("quartermaster-uid-{uid}")),
        "{tags:?}"
    );
    assert_eq!(d["status"], "active");
    assert!(
        e.event_reasons("kept")
            .await
            .iter()
            .any(|r| r == "Orphaned")
    );
    assert_eq!(rows_of(&l, &e.ns, "kept", "vm_releases").await, 1);
    assert!(
        metered_seconds(&l, &e.ns, "kept").await >= 1,
        "its running time was billed"
    );
    // These VMs belong to no Project: their usage is counted, and reported by namespace.
    let m = e.metrics.as_ref().unwrap();
    assert!(
        m.usage_without_project
            .with_label_values(&["vm_seconds"])
            .get()
            >= 1
    );
    let out = common::process::quartermaster()
        .args([
            "usage",
            "--namespace",
            &e.ns,
            "--by",
            "object",
            "--output",
            "json",
        ])
        .args(["--database-url", &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let has = |meter: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .any(|r| r["key"] == "VirtualMachine/kept" && r["meter"] == meter)
    };
    assert!(has("vm_seconds") && has("vm_releases"), "{rows}");
}

/// A namespace that loses access to the account its VM's server is in: the server is still observed
/// and metered (Stalled, saying so), and deleting the VM still deletes it.
#[tokio::test]
async fn a_namespace_that_lost_its_account_still_meters_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let (l, _) = common::db::fresh_ledger(&dir).await;
    let e = env_with("vmaccess", |_| {})
        .await
        .with_controller(Some(l.clone()), |_| {});
    let (id, _) = metered_vm(&e, "web").await;
    let pcs: Api<quartermaster::crd::ProviderConfig> = Api::all(e.client.clone());
    let elsewhere = serde_json::json!({"spec": {"allowedNamespaces": ["someone-else"]}});
    pcs.patch(&e.pc, &PatchParams::default(), &Patch::Merge(&elsewhere))
        .await
        .unwrap();
    let vm = e
        .wait_vm(
            "web",
            conditions::STALLED,
            ConditionStatus::True,
            "ProviderConfigNotAllowed",
        )
        .await;
    let c = conditions::find(&vm.status.as_ref().unwrap().conditions, conditions::STALLED).unwrap();
    assert!(
        c.message.contains("still observed and metered"),
        "{}",
        c.message
    );
    assert!(vm.status.unwrap().metering.is_some(), "the meter stopped");
    e.vms()
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    e.wait_gone("web").await;
    assert!(e.droplet(&id).await.is_none(), "the server outlived its VM");
    assert!(metered_seconds(&l, &e.ns, "web").await >= 1);
}

/// `backups: true` costs the vendor's surcharge (DigitalOcean: 20 % of the droplet): in the prices the
/// VM shows (the metering window takes its hourly price, see the decide table) and the spend its
/// Project admits.
#[tokio::test]
async fn backups_are_billed_at_the_vendors_surcharge_and_admitted_with_it() {
    let e = env("vmbackups", |_| {}, true).await;
    e.apply_project(
        "acme",
        serde_json::json!({"currency": "USD", "limits": {"maxMonthlySpend": "13"}}),
    )
    .await;
    let spec = |backups: bool| serde_json::json!({"spec": {"projectRef": {"name": "acme"}, "backups": backups}});
    e.apply_vm("plain", spec(false)).await;
    let vm = e.wait_ready("plain").await;
    assert_eq!(
        vm.status.as_ref().unwrap().monthly_price.as_deref(),
        Some("6.00")
    );
    // 6.00 + 7.20 is over the Project's 13 a month: refused before any create.
    e.apply_vm("saved", spec(true)).await;
    let (_, msg) = stalled(&e, "saved", "LimitExceeded").await;
    assert!(msg.contains("limits monthly spend"), "{msg}");
    // Room for it: created, priced and metered with the surcharge.
    e.apply_project(
        "acme",
        serde_json::json!({"currency": "USD", "limits": {"maxMonthlySpend": "14"}}),
    )
    .await;
    let vm = e.wait_ready("saved").await;
    let st = vm.status.unwrap();
    assert_eq!(st.monthly_price.as_deref(), Some("7.20"));
    assert_eq!(st.hourly_price.as_deref(), Some("0.010716"));
}

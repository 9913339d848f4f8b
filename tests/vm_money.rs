//! The VirtualMachine slice's money rules, end to end on a real kube-apiserver with `quartermaster sim`:
//! every price change is admitted before any power action (a refused size never powers a server off), and
//! a vendor's refusal of the resize itself stalls with its words and powers the server back on.

use kube::api::{Api, DeleteParams};
use quartermaster::crd::VirtualMachine;
use quartermaster::crd::conditions::{self, ConditionStatus};

mod common;

use common::env::{Env, WAIT, env};

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

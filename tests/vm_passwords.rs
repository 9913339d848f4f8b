//! Administrator passwords in the connection Secret, end to end: the controller on a real
//! kube-apiserver against local mocks of Vultr's and Linode's APIs (the simulator speaks only
//! DigitalOcean).
//! - Vultr generates a new server's password and shows it in the create's answer only, so a Windows
//!   VM's goes to its connection Secret at once; a Linux VM's is not kept.
//! - Linode requires one: Quartermaster generates it and writes it to the Secret before the create, so
//!   a create tried again after an outage sends the same password.
//!
//! Either way it never reaches status or Events, and a later reconcile never writes the Secret back
//! without it.

use std::sync::atomic::Ordering;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams};

mod common;

use common::env::{Env, env_with};
use common::vultr::GENERATED_PASSWORD;

/// A ProviderConfig `<id>-<vendor>` of type `vendor` at `endpoint`, with the environment's token Secret.
async fn provider_config(e: &Env, vendor: &str, endpoint: &str) -> String {
    let name = format!("{}-{vendor}", e.id);
    let pc = serde_json::json!({
        "apiVersion": "quartermaster.dev/v1alpha1", "kind": "ProviderConfig",
        "metadata": {"name": name, "labels": {"qm-test": e.id}},
        "spec": {
            "type": vendor, "endpoint": endpoint,
            "credentialsSecretRef": {"name": "do-token", "namespace": e.ns, "key": "token"},
        }
    });
    Api::<quartermaster::crd::ProviderConfig>::all(e.client.clone())
        .patch(
            &name,
            &PatchParams::apply("quartermaster-tests").force(),
            &Patch::Apply(&pc),
        )
        .await
        .unwrap();
    name
}

/// VM `name` on the Vultr account with OS image `image` and `os`.
async fn apply_vultr_vm(e: &Env, pc: &str, name: &str, image: &str, os: &str) {
    e.apply_vm(
        name,
        serde_json::json!({"spec": {
            "providerConfigRef": {"name": pc}, "region": "fra", "size": "vc2-1c-2gb",
            "image": image, "os": os,
        }}),
    )
    .await;
}

/// The connection Secret of VM `name`, as text.
async fn connection(e: &Env, name: &str) -> std::collections::BTreeMap<String, String> {
    let s = Api::<Secret>::namespaced(e.client.clone(), &e.ns)
        .get(&format!("{name}-connection"))
        .await
        .unwrap();
    s.data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect()
}

#[tokio::test]
async fn a_windows_vm_on_vultr_keeps_the_generated_password_in_its_connection_secret_only() {
    let (url, mock) = common::vultr::start().await;
    let e = env_with("vultrpw", |_| {}).await;
    let pc = provider_config(&e, "vultr", &url).await;
    let e = e.with_controller(None, |_| {});
    apply_vultr_vm(&e, &pc, "win", "371", "windows").await;
    apply_vultr_vm(&e, &pc, "lin", "1743", "linux").await;
    e.wait_ready("win").await;
    e.wait_ready("lin").await;
    assert_eq!(
        mock.creates.load(Ordering::SeqCst),
        2,
        "one create each; unrouted: {:?}",
        mock.unrouted.lock().unwrap()
    );

    // The Windows VM's Secret holds Vultr's password beside the RDP file; the Linux VM's holds none.
    let data = connection(&e, "win").await;
    assert_eq!(
        data.get("password").map(String::as_str),
        Some(GENERATED_PASSWORD)
    );
    assert_eq!(data["username"], "Administrator");
    assert!(
        data.get("connection.rdp")
            .is_some_and(|r| r.contains("192.0.2.")),
        "{data:?}"
    );
    let lin = connection(&e, "lin").await;
    assert!(!lin.contains_key("password"), "{lin:?}");
    assert_eq!(lin["username"], "root");

    never_shown(&e, &["win", "lin"], GENERATED_PASSWORD).await;

    // A later reconcile (a spec change) rewrites the Secret with the password kept, and creates nothing.
    e.patch_vm(
        "win",
        serde_json::json!({"metadata": {"labels": {"touched": "yes"}}, "spec": {"tags": ["again"]}}),
    )
    .await;
    e.wait_ready("win").await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(
        connection(&e, "win")
            .await
            .get("password")
            .map(String::as_str),
        Some(GENERATED_PASSWORD)
    );
    assert_eq!(mock.creates.load(Ordering::SeqCst), 2);

    // Deleted with its VM.
    e.vms()
        .delete("win", &DeleteParams::default())
        .await
        .unwrap();
    e.wait_gone("win").await;
    let left = mock.instances.lock().unwrap().len();
    assert_eq!(left, 1, "the Windows server went with its VM");
    assert!(
        mock.unrouted.lock().unwrap().is_empty(),
        "{:?}",
        mock.unrouted.lock().unwrap()
    );
}

/// `password` is in no status and no Event of VMs `names`.
async fn never_shown(e: &Env, names: &[&str], password: &str) {
    for name in names {
        let vm = e.vms().get(name).await.unwrap();
        let status = serde_json::to_string(&vm.status).unwrap();
        assert!(!status.contains(password), "{status}");
        for (reason, note) in e.events_of(name).await {
            assert!(!note.contains(password), "{reason}: {note}");
        }
    }
}

#[tokio::test]
async fn a_vm_on_linode_gets_a_generated_root_password_written_before_its_create() {
    let (url, mock) = common::linode::start().await;
    mock.failing_creates.store(1, Ordering::SeqCst);
    let e = env_with("linodepw", |_| {}).await;
    let pc = provider_config(&e, "linode", &url).await;
    let e = e.with_controller(None, |_| {});
    e.apply_vm(
        "web",
        serde_json::json!({"spec": {
            "providerConfigRef": {"name": pc}, "region": "eu-central", "size": "g6-nanode-1",
            "image": "linode/debian12",
        }}),
    )
    .await;
    e.wait_ready("web").await;
    // The first create met an outage (nothing made); the second sent the same password, read back
    // from the Secret it was written to first.
    let sent = mock.root_passwords.lock().unwrap().clone();
    assert_eq!(
        sent.len(),
        2,
        "unrouted: {:?}",
        mock.unrouted.lock().unwrap()
    );
    assert_eq!(sent[0], sent[1], "one password for both attempts");
    assert!(sent[0].len() >= 20, "a long generated password");
    assert_eq!(mock.instances.lock().unwrap().len(), 1);
    let data = connection(&e, "web").await;
    assert_eq!(data.get("password"), Some(&sent[0]));
    assert_eq!(data["username"], "root");
    assert!(
        data.get("ipv4")
            .is_some_and(|ip| ip.starts_with("192.0.2.")),
        "{data:?}"
    );
    never_shown(&e, &["web"], &sent[0]).await;

    // A later reconcile keeps it and creates nothing; the server goes with its VM.
    e.patch_vm("web", serde_json::json!({"spec": {"tags": ["again"]}}))
        .await;
    e.wait_ready("web").await;
    assert_eq!(connection(&e, "web").await.get("password"), Some(&sent[0]));
    assert_eq!(mock.root_passwords.lock().unwrap().len(), 2);
    e.vms()
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    e.wait_gone("web").await;
    assert!(mock.instances.lock().unwrap().is_empty());
    assert!(
        mock.unrouted.lock().unwrap().is_empty(),
        "{:?}",
        mock.unrouted.lock().unwrap()
    );
}

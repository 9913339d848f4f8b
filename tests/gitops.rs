//! GitOps health across every kind, with the examples as a user applies them: every object becomes
//! `Ready=True` with `observedGeneration` equal to its generation (what `kubectl wait` and kstatus-based
//! tools such as Flux and Argo CD read), the controller never writes a `spec`, and applying the same
//! YAML again changes nothing (no generation bump, no perpetual diff).

mod common;

use std::time::Duration;

use common::examples::{KINDS, api, apply_all, condition, examples, outage, settled};
use kube::api::DynamicObject;
use serde_json::Value;

/// Waits, object by object, until each of `docs` passes `f`; what it was waiting for is `what`.
async fn each_until(
    client: &kube::Client,
    docs: &[&Value],
    secs: u64,
    what: &str,
    f: impl Fn(&DynamicObject) -> bool,
) -> Vec<DynamicObject> {
    let mut out = Vec::new();
    for d in docs {
        let name = d["metadata"]["name"].as_str().unwrap();
        let o = common::eventually(
            Duration::from_secs(secs),
            &format!("{} {name} {what}", d["kind"]),
            || async {
                let o = api(client, d).get(name).await.ok()?;
                f(&o).then_some(o)
            },
        )
        .await;
        out.push(o);
    }
    out
}

/// The kind, name and conditions of `o`, for an assertion's message.
fn about(o: &DynamicObject) -> String {
    format!(
        "{:?} {}: {}",
        o.types.as_ref().map(|t| t.kind.clone()),
        o.metadata.name.as_deref().unwrap_or_default(),
        o.data["status"]["conditions"]
    )
}

#[tokio::test]
async fn every_kind_is_ready_for_kstatus_and_a_reapply_changes_nothing() {
    let client = common::client().await;
    let ns = common::namespace(&client, "gitops").await;
    let id = common::unique("gitops");
    let sim = common::start_sim(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let (ledger, _) = common::db::fresh_ledger(&dir).await;
    let docs = examples(&ns, &id, &sim.url);
    for k in KINDS {
        assert!(
            docs.iter().any(|d| d["kind"] == k),
            "the examples have no {k}"
        );
    }
    apply_all(&client, &docs).await;
    let (_, _stop) = common::start_controller_with(client.clone(), &id, Some(ledger));
    let ours: Vec<&Value> = docs
        .iter()
        .filter(|d| KINDS.contains(&d["kind"].as_str().unwrap()))
        .collect();
    let generations: Vec<_> = each_until(&client, &ours, 120, "Ready at its generation", settled)
        .await
        .into_iter()
        .map(|o| o.metadata.generation)
        .collect();
    // The same YAML again: nothing changes (no generation bump, the objects stay settled).
    apply_all(&client, &docs).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (d, gen_before) in ours.iter().zip(&generations) {
        let name = d["metadata"]["name"].as_str().unwrap();
        let o = api(&client, d).get(name).await.unwrap();
        assert_eq!(
            o.metadata.generation, *gen_before,
            "{} {name}: a re-apply bumped the generation",
            d["kind"]
        );
        assert!(
            settled(&o),
            "{} {name} is no longer settled after a re-apply",
            d["kind"]
        );
        // The controller never writes spec: its managed fields hold status, finalizers and annotations.
        for m in o.metadata.managed_fields.iter().flatten() {
            if m.manager.as_deref() == Some("quartermaster") {
                let fields = serde_json::to_string(&m.fields_v1).unwrap();
                assert!(
                    !fields.contains("\"f:spec\""),
                    "{} {name}: the controller owns spec fields: {fields}",
                    d["kind"]
                );
            }
        }
        let spec_owner = o.metadata.managed_fields.iter().flatten().any(|m| {
            m.manager.as_deref() == Some("gitops-test")
                && serde_json::to_string(&m.fields_v1)
                    .unwrap()
                    .contains("\"f:spec\"")
        });
        assert!(
            spec_owner,
            "{} {name}: the applier lost its spec fields",
            d["kind"]
        );
    }
}

/// A permanent error is `Stalled=True` with a reason (and `Ready=False`), at the object's generation, for
/// every kind that has one: what Flux and Argo CD read as failed. (A Project and a SimMessage have no
/// permanent error of their own: they wait, `Ready=False`, for what they name.)
#[tokio::test]
async fn permanent_errors_stall_with_a_reason_in_every_kind() {
    let client = common::client().await;
    let ns = common::namespace(&client, "stall").await;
    let id = common::unique("stall");
    let (_, _stop) = common::start_controller(client.clone(), &id);
    let missing = format!("{id}-missing");
    let label = serde_json::json!({"qm-test": id});
    let docs = vec![
        (
            serde_json::json!({
                "apiVersion": "quartermaster.dev/v1alpha1", "kind": "ProviderConfig",
                "metadata": {"name": format!("{id}-pc"), "labels": label},
                "spec": {"type": "digitalocean",
                         "credentialsSecretRef": {"name": "absent", "namespace": ns, "key": "token"}}
            }),
            "MissingSecret",
        ),
        (
            serde_json::json!({
                "apiVersion": "quartermaster.dev/v1alpha1", "kind": "VirtualMachine",
                "metadata": {"name": "vm", "namespace": ns, "labels": label},
                "spec": {"providerConfigRef": {"name": missing}, "region": "nyc3",
                         "size": "s-1vcpu-1gb", "image": "ubuntu-24-04-x64"}
            }),
            "ProviderConfigNotFound",
        ),
        (
            serde_json::json!({
                "apiVersion": "quartermaster.dev/v1alpha1", "kind": "SimCard",
                "metadata": {"name": "sim", "namespace": ns, "labels": label},
                "spec": {"providerConfigRef": {"name": missing}, "iccid": "8988280666000000002"}
            }),
            "ProviderConfigNotFound",
        ),
        (
            serde_json::json!({
                "apiVersion": "quartermaster.dev/v1alpha1", "kind": "Subscription",
                "metadata": {"name": "sub", "namespace": ns, "labels": label},
                "spec": {"providerConfigRef": {"name": missing}, "plan": "basic",
                         "customer": {"email": "a@b.example"}}
            }),
            "ProviderConfigNotFound",
        ),
        (
            serde_json::json!({
                "apiVersion": "quartermaster.dev/v1alpha1", "kind": "TokenBudget",
                "metadata": {"name": "tb", "namespace": ns, "labels": label},
                "spec": {"tokens": 1000, "providerConfigRef": {"name": missing}}
            }),
            "ProviderConfigNotFound",
        ),
    ];
    let all: Vec<Value> = docs.iter().map(|d| d.0.clone()).collect();
    apply_all(&client, &all).await;
    for (d, want) in &docs {
        let name = d["metadata"]["name"].as_str().unwrap();
        let o = common::eventually(
            Duration::from_secs(60),
            &format!("{} {name} Stalled", d["kind"]),
            || async {
                let o = api(&client, d).get(name).await.ok()?;
                let stalled = condition(&o, "Stalled")?;
                (stalled["status"] == "True"
                    && o.data["status"]["observedGeneration"].as_i64() == o.metadata.generation)
                    .then_some(o)
            },
        )
        .await;
        let stalled = condition(&o, "Stalled").unwrap();
        assert_eq!(stalled["reason"], *want, "{} {name}: {stalled}", d["kind"]);
        assert!(!stalled["message"].as_str().unwrap_or("").is_empty());
        assert_eq!(
            condition(&o, "Ready").unwrap()["status"],
            "False",
            "{} {name}",
            d["kind"]
        );
        assert_eq!(
            condition(&o, "Reconciling").unwrap()["status"],
            "False",
            "{} {name}",
            d["kind"]
        );
    }
}

fn is(o: &DynamicObject, type_: &str, status: &str) -> bool {
    condition(o, type_).is_some_and(|c| c["status"] == status)
        && o.data["status"]["observedGeneration"].as_i64() == o.metadata.generation
}

/// Converging is `Reconciling=True`, never `Stalled`, in every kind: with every simulated vendor down
/// (503), each example shows `Reconciling=True`, `Stalled=False` and `Ready=False` at its generation
/// (Flux and Argo CD read "still progressing"); when the vendors come back each becomes `Ready=True`
/// with `Reconciling=False` and `Stalled=False`.
#[tokio::test]
async fn every_kind_reconciles_through_an_outage_then_becomes_ready() {
    let client = common::client().await;
    let ns = common::namespace(&client, "walk").await;
    let id = common::unique("walk");
    let sim = common::start_sim(|_| {}).await;
    outage(&sim.url, true).await;
    let dir = tempfile::tempdir().unwrap();
    let (ledger, _) = common::db::fresh_ledger(&dir).await;
    let docs = examples(&ns, &id, &sim.url);
    apply_all(&client, &docs).await;
    let (_, _stop) = common::start_controller_with(client.clone(), &id, Some(ledger));
    let ours: Vec<&Value> = docs
        .iter()
        .filter(|d| KINDS.contains(&d["kind"].as_str().unwrap()))
        .collect();
    let during = each_until(&client, &ours, 60, "Reconciling during the outage", |o| {
        is(o, "Reconciling", "True")
    })
    .await;
    for o in &during {
        assert!(is(o, "Stalled", "False"), "{}", about(o));
        assert!(is(o, "Ready", "False"), "{}", about(o));
    }
    outage(&sim.url, false).await;
    for o in each_until(&client, &ours, 120, "Ready after the outage", settled).await {
        assert!(is(&o, "Reconciling", "False"), "{}", about(&o));
        assert!(is(&o, "Stalled", "False"), "{}", about(&o));
    }
}

//! ProviderConfig reconciler on a real kube-apiserver: Ready when its Secret key exists (and `kubectl wait`
//! sees it), Stalled/MissingSecret when the Secret goes, Ready again when it returns, Suspended,
//! paused, and finalizer removal on delete. Status is not rewritten when nothing changed.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use quartermaster::crd::conditions::{self, ConditionStatus};
use quartermaster::crd::{FINALIZER, ProviderConfig};
use quartermaster::metrics::Metrics;

mod common;

const WAIT: Duration = Duration::from_secs(30);

fn start_controller(client: kube::Client, id: &str) -> (Metrics, tokio::sync::oneshot::Sender<()>) {
    common::start_controller(client, id)
}

fn provider_config(
    name: &str,
    id: &str,
    secret_ns: &str,
    suspended: bool,
    endpoint: &str,
) -> ProviderConfig {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "quartermaster.dev/v1alpha1",
        "kind": "ProviderConfig",
        "metadata": {"name": name, "labels": {"qm-test": id}},
        "spec": {
            "type": "digitalocean",
            "endpoint": endpoint,
            "credentialsSecretRef": {"name": "do-token", "namespace": secret_ns, "key": "token"},
            "suspended": suspended
        }
    }))
    .unwrap()
}

fn secret(value: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some("do-token".into()),
            ..Default::default()
        },
        string_data: Some([("token".to_string(), value.to_string())].into()),
        ..Default::default()
    }
}

async fn wait_condition(
    api: &Api<ProviderConfig>,
    name: &str,
    type_: &str,
    status: ConditionStatus,
    reason: &str,
) -> ProviderConfig {
    common::eventually(
        WAIT,
        &format!("{name} {type_}={status:?} ({reason})"),
        || async {
            let pc = api.get(name).await.ok()?;
            let st = pc.status.as_ref()?;
            let c = conditions::find(&st.conditions, type_)?;
            (c.status == status
                && c.reason == reason
                && st.observed_generation == pc.metadata.generation)
                .then_some(pc)
        },
    )
    .await
}

#[tokio::test]
async fn ready_with_secret_stalled_without_and_back() {
    let client = common::client().await;
    let ns = common::namespace(&client, "pc").await;
    let id = common::unique("pc");
    let (metrics, _stop) = start_controller(client.clone(), &id);
    let pcs: Api<ProviderConfig> = Api::all(client.clone());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let name = id.clone();
    let sim = common::start_sim(|_| {}).await;

    secrets
        .create(&PostParams::default(), &secret("FAKE-TOKEN-VALUE-123"))
        .await
        .unwrap();
    pcs.create(
        &PostParams::default(),
        &provider_config(&name, &id, &ns, false, &sim.url),
    )
    .await
    .unwrap();
    let pc = wait_condition(
        &pcs,
        &name,
        conditions::READY,
        ConditionStatus::True,
        "Reconciled",
    )
    .await;
    assert!(
        pc.metadata
            .finalizers
            .as_ref()
            .unwrap()
            .contains(&FINALIZER.to_string())
    );
    let st = pc.status.unwrap();
    assert_eq!(
        conditions::find(&st.conditions, conditions::STALLED)
            .unwrap()
            .status,
        ConditionStatus::False
    );
    assert_eq!(
        conditions::find(&st.conditions, conditions::RECONCILING)
            .unwrap()
            .status,
        ConditionStatus::False
    );
    let yaml = serde_json::to_string(&st).unwrap();
    assert!(
        !yaml.contains("FAKE-TOKEN-VALUE-123"),
        "secret value leaked into status"
    );

    // kubectl wait works on the Ready condition.
    match common::kubectl() {
        Some(kubectl) => {
            let out = std::process::Command::new(kubectl)
                .env("KUBECONFIG", common::kubeconfig())
                .args([
                    "wait",
                    "--for=condition=Ready",
                    &format!("providerconfigs.quartermaster.dev/{name}"),
                    "--timeout=30s",
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "kubectl wait failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        None => eprintln!(
            "SKIPPED the kubectl wait check: no kubectl on PATH (scripts/test provides one)"
        ),
    }

    // A resync with nothing changed writes no status, and reads the credentials Secret once. First let
    // the reconcile that protecting the credentials Secret (its finalizer patch) triggers settle: it may
    // start from a cache that has not seen the first status write yet.
    let secrets_api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    common::eventually(WAIT, "credentials Secret protected", || async {
        let s = secrets_api.get("do-token").await.ok()?;
        s.metadata
            .finalizers?
            .iter()
            .any(|f| f == "quartermaster.dev/credentials-in-use")
            .then_some(())
    })
    .await;
    let settled = || {
        metrics
            .reconciles
            .with_label_values(&["ProviderConfig"])
            .get()
    };
    let mut last = settled();
    loop {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let now = settled();
        if now == last {
            break;
        }
        last = now;
    }
    let writes = metrics
        .status_writes
        .with_label_values(&["ProviderConfig"])
        .get();
    let reconciles = || {
        metrics
            .reconciles
            .with_label_values(&["ProviderConfig"])
            .get()
    };
    let secret_gets = || {
        metrics
            .render()
            .lines()
            .find_map(|l| {
                l.strip_prefix(
                    r#"quartermaster_kube_requests_total{resource="secrets",verb="get"} "#,
                )
            })
            .map_or(0, |v| v.parse::<u64>().unwrap())
    };
    let (reconciles_before, gets_before) = (reconciles(), secret_gets());
    pcs.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"labels": {"touch": "1"}}})),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        metrics
            .status_writes
            .with_label_values(&["ProviderConfig"])
            .get(),
        writes,
        "unchanged status was rewritten"
    );
    let resyncs = reconciles() - reconciles_before;
    assert!(resyncs >= 1, "the label change woke no reconcile");
    assert_eq!(
        secret_gets() - gets_before,
        resyncs,
        "the credentials Secret is read once per reconcile"
    );

    // Secret deleted → Stalled with reason MissingSecret (the Secret watch wakes the controller).
    secrets
        .delete("do-token", &DeleteParams::default())
        .await
        .unwrap();
    let pc = wait_condition(
        &pcs,
        &name,
        conditions::STALLED,
        ConditionStatus::True,
        "MissingSecret",
    )
    .await;
    let ready = conditions::find(&pc.status.as_ref().unwrap().conditions, conditions::READY)
        .unwrap()
        .clone();
    assert_eq!(ready.status, ConditionStatus::False);
    assert!(
        ready.message.contains(&format!("{ns}/do-token")),
        "{}",
        ready.message
    );

    // The Secret without the key is still MissingSecret; with it, Ready again.
    let mut empty = secret("x");
    empty.string_data = Some([("other".to_string(), "x".to_string())].into());
    secrets
        .create(&PostParams::default(), &empty)
        .await
        .unwrap();
    common::eventually(WAIT, "MissingSecret naming the missing key", || async {
        let pc = pcs.get(&name).await.ok()?;
        let st = pc.status?;
        let stalled = conditions::find(&st.conditions, conditions::STALLED)?;
        (stalled.status == ConditionStatus::True
            && stalled.message.contains("no non-empty key \"token\""))
        .then_some(())
    })
    .await;
    secrets
        .patch(
            "do-token",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"stringData": {"token": "FAKE"}})),
        )
        .await
        .unwrap();
    wait_condition(
        &pcs,
        &name,
        conditions::READY,
        ConditionStatus::True,
        "Reconciled",
    )
    .await;

    // Events were recorded for the transitions.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::all(client.clone());
    let reasons = common::eventually(WAIT, "events for the ProviderConfig", || async {
        let list = events.list(&Default::default()).await.ok()?;
        let r: Vec<String> = list
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name.as_str()))
            .filter_map(|e| e.reason)
            .collect();
        // NB: the recorder folds a repeated Event into a series, so each reason appears once.
        (r.iter().any(|x| x == "MissingSecret") && r.iter().any(|x| x == "Reconciled")).then_some(r)
    })
    .await;
    assert!(reasons.contains(&"MissingSecret".to_string()));

    // Delete: the finalizer is removed and the object goes away.
    pcs.delete(&name, &DeleteParams::default()).await.unwrap();
    common::eventually(WAIT, "ProviderConfig deleted", || async {
        pcs.get_opt(&name).await.ok()?.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn suspended_is_not_ready_and_paused_is_left_alone() {
    let client = common::client().await;
    let ns = common::namespace(&client, "pcs").await;
    let id = common::unique("pcs");
    let (_metrics, _stop) = start_controller(client.clone(), &id);
    let pcs: Api<ProviderConfig> = Api::all(client.clone());
    let name = id.clone();

    // Suspended: Ready=False reason Suspended, not stalled (even without a Secret).
    pcs.create(
        &PostParams::default(),
        &provider_config(&name, &id, &ns, true, "http://127.0.0.1:9"),
    )
    .await
    .unwrap();
    let pc = wait_condition(
        &pcs,
        &name,
        conditions::READY,
        ConditionStatus::False,
        "Suspended",
    )
    .await;
    assert_eq!(
        conditions::find(&pc.status.unwrap().conditions, conditions::STALLED)
            .unwrap()
            .status,
        ConditionStatus::False
    );

    // Paused: a Paused condition, and a spec change is not acted on.
    pcs.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(
            serde_json::json!({"metadata": {"annotations": {"quartermaster.dev/paused": "true"}}}),
        ),
    )
    .await
    .unwrap();
    wait_condition(
        &pcs,
        &name,
        conditions::PAUSED,
        ConditionStatus::True,
        "Paused",
    )
    .await;
    pcs.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"suspended": false}})),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pc = pcs.get(&name).await.unwrap();
    let st = pc.status.unwrap();
    assert_eq!(
        conditions::find(&st.conditions, conditions::READY)
            .unwrap()
            .reason,
        "Suspended",
        "paused object was reconciled"
    );
    assert_ne!(st.observed_generation, pc.metadata.generation);

    // Unpaused: the change is picked up (no Secret → MissingSecret).
    pcs.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(
            serde_json::json!({"metadata": {"annotations": {"quartermaster.dev/paused": null}}}),
        ),
    )
    .await
    .unwrap();
    let pc = wait_condition(
        &pcs,
        &name,
        conditions::STALLED,
        ConditionStatus::True,
        "MissingSecret",
    )
    .await;
    assert_eq!(
        conditions::find(&pc.status.unwrap().conditions, conditions::PAUSED)
            .unwrap()
            .status,
        ConditionStatus::False
    );
}

#[tokio::test]
async fn vendor_check_reports_invalid_credentials_and_unreachable() {
    let client = common::client().await;
    let ns = common::namespace(&client, "pcv").await;
    let id = common::unique("pcv");
    let (_metrics, _stop) = start_controller(client.clone(), &id);
    let pcs: Api<ProviderConfig> = Api::all(client.clone());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let sim = common::start_sim(|c| c.token = Some("the-right-token".into())).await;
    secrets
        .create(&PostParams::default(), &secret("a-wrong-token"))
        .await
        .unwrap();

    let bad = format!("{id}-bad");
    pcs.create(
        &PostParams::default(),
        &provider_config(&bad, &id, &ns, false, &sim.url),
    )
    .await
    .unwrap();
    let pc = wait_condition(
        &pcs,
        &bad,
        conditions::STALLED,
        ConditionStatus::True,
        "InvalidCredentials",
    )
    .await;
    let st = pc.status.unwrap();
    assert_eq!(st.credentials_verified, Some(false));
    let msg = &conditions::find(&st.conditions, conditions::STALLED)
        .unwrap()
        .message;
    assert!(msg.contains("401"), "{msg}");
    assert!(
        !msg.contains("a-wrong-token"),
        "the token leaked into the condition: {msg}"
    );

    // Fixing the Secret wakes the ProviderConfig (Secret watch) and it becomes Ready.
    secrets
        .patch(
            "do-token",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"stringData": {"token": "the-right-token"}})),
        )
        .await
        .unwrap();
    wait_condition(
        &pcs,
        &bad,
        conditions::READY,
        ConditionStatus::True,
        "Reconciled",
    )
    .await;

    // Nothing listens on the endpoint: an outage, not the user's to fix — Reconciling, never Stalled.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gone = format!("{id}-gone");
    pcs.create(
        &PostParams::default(),
        &provider_config(&gone, &id, &ns, false, &format!("http://127.0.0.1:{port}")),
    )
    .await
    .unwrap();
    let pc = wait_condition(
        &pcs,
        &gone,
        conditions::RECONCILING,
        ConditionStatus::True,
        "Unreachable",
    )
    .await;
    let st = pc.status.unwrap();
    for (t, want) in [
        (conditions::READY, ConditionStatus::False),
        (conditions::STALLED, ConditionStatus::False),
    ] {
        let c = conditions::find(&st.conditions, t).unwrap();
        assert_eq!(c.status, want, "{t}: {c:?}");
    }
}

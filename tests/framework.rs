//! The reconcile framework on a real kube-apiserver: a panic inside one object's reconcile is contained to
//! that object (Stalled InternalError, counted), and the controller goes on; a reconcile that starts
//! from a watch cache older than the controller's own last status write never writes that status back
//! without what the write recorded.

use std::sync::Arc;

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use quartermaster::controller::runtime::framework::{self, Cleanup, Outcome, Progress, Reconciler};
use quartermaster::controller::{Context, ControllerConfig, Error};
use quartermaster::crd::conditions::{self, ConditionStatus};
use quartermaster::crd::{ProviderConfig, ProviderConfigStatus};

mod common;

/// A reconciler with a bug.
struct Panicky;

impl Reconciler<ProviderConfig> for Panicky {
    async fn apply(
        &self,
        _obj: Arc<ProviderConfig>,
        _ctx: Arc<Context>,
        _progress: &mut Progress<ProviderConfigStatus>,
    ) -> Result<Outcome, Error> {
        let v: Vec<u32> = Vec::new();
        // An out-of-bounds index: the kind of bug a tenant's odd input could reach.
        let _ = v[usize::from(v.is_empty())];
        unreachable!()
    }

    async fn cleanup(
        &self,
        _obj: Arc<ProviderConfig>,
        _ctx: Arc<Context>,
        _progress: &mut Progress<ProviderConfigStatus>,
    ) -> Result<Cleanup, Error> {
        Ok(Cleanup::Done)
    }
}

/// A reconciler that learns a fact from its vendor once (here: the time of a successful call) and
/// keeps it in status; with `false` it learns nothing new and reports what its status already holds.
struct Learns(bool);

impl Reconciler<ProviderConfig> for Learns {
    async fn apply(
        &self,
        _obj: Arc<ProviderConfig>,
        _ctx: Arc<Context>,
        progress: &mut Progress<ProviderConfigStatus>,
    ) -> Result<Outcome, Error> {
        let st = &mut progress.status;
        if self.0 && st.last_successful_call_time.is_none() {
            st.last_successful_call_time = Some("2026-12-04T10:00:00Z".into());
            st.credentials_verified = Some(true);
        }
        Ok(Outcome::new(quartermaster::crd::conditions::Health::ready(
            "verified",
        )))
    }

    async fn cleanup(
        &self,
        _obj: Arc<ProviderConfig>,
        _ctx: Arc<Context>,
        _progress: &mut Progress<ProviderConfigStatus>,
    ) -> Result<Cleanup, Error> {
        Ok(Cleanup::Done)
    }
}

/// The lagging cache, made exactly: the second reconcile is handed the object as it was before the
/// first one's status write (what a watch cache still shows until the write's event arrives).
#[tokio::test]
async fn a_lagging_cache_never_writes_an_older_status() {
    let client = common::client().await;
    let name = common::unique("lagging");
    let pcs: Api<ProviderConfig> = Api::all(client.clone());
    let pc = serde_json::json!({
        "apiVersion": "quartermaster.dev/v1alpha1", "kind": "ProviderConfig",
        "metadata": {"name": name, "finalizers": ["quartermaster.dev/finalizer"]},
        "spec": {"type": "digitalocean", "credentialsSecretRef": {"name": "x", "namespace": "default"}}
    });
    pcs.patch(
        &name,
        &PatchParams::apply("quartermaster-tests"),
        &Patch::Apply(&pc),
    )
    .await
    .unwrap();
    let before = Arc::new(pcs.get(&name).await.unwrap());
    let metrics = quartermaster::metrics::Metrics::new();
    let ctx = Arc::new(Context::new(
        client.clone(),
        metrics.clone(),
        ControllerConfig::default(),
        None,
    ));
    framework::reconcile(before.clone(), ctx.clone(), Arc::new(Learns(true)))
        .await
        .unwrap();
    let learned = pcs.get(&name).await.unwrap().status.unwrap();
    assert!(learned.last_successful_call_time.is_some());
    // The reconciler's next look at the object, from the cache that has not seen the write yet: it
    // would learn the fact again here; a reconciler that learned it from a vendor could not.
    let stale = {
        let mut o = (*before).clone();
        o.status = Some(ProviderConfigStatus::default());
        Arc::new(o)
    };
    framework::reconcile(stale, ctx.clone(), Arc::new(Learns(false)))
        .await
        .unwrap();
    let after = pcs.get(&name).await.unwrap().status.unwrap();
    assert_eq!(
        after.last_successful_call_time, learned.last_successful_call_time,
        "the status recorded by the first write was written back without it"
    );
    assert_eq!(after.credentials_verified, Some(true));
    assert!(
        metrics
            .render()
            .contains("quartermaster_stale_cache_starts_total{kind=\"ProviderConfig\"} 1"),
        "{}",
        metrics.render()
    );
    // Once the cache shows the write, it is trusted again.
    let fresh = Arc::new(pcs.get(&name).await.unwrap());
    framework::reconcile(fresh, ctx.clone(), Arc::new(Learns(false)))
        .await
        .unwrap();
    assert!(
        metrics
            .render()
            .contains("quartermaster_stale_cache_starts_total{kind=\"ProviderConfig\"} 1"),
    );
    pcs.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(&serde_json::json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    pcs.delete(&name, &DeleteParams::default()).await.unwrap();
}

#[tokio::test]
async fn a_panic_in_one_reconcile_stalls_that_object_only() {
    let client = common::client().await;
    let name = common::unique("panicky");
    let pcs: Api<ProviderConfig> = Api::all(client.clone());
    let pc = serde_json::json!({
        "apiVersion": "quartermaster.dev/v1alpha1", "kind": "ProviderConfig",
        "metadata": {"name": name, "finalizers": ["quartermaster.dev/finalizer"]},
        "spec": {"type": "digitalocean", "credentialsSecretRef": {"name": "x", "namespace": "default"}}
    });
    pcs.patch(
        &name,
        &PatchParams::apply("quartermaster-tests"),
        &Patch::Apply(&pc),
    )
    .await
    .unwrap();
    let obj = Arc::new(pcs.get(&name).await.unwrap());
    let metrics = quartermaster::metrics::Metrics::new();
    let ctx = Arc::new(Context::new(
        client.clone(),
        metrics.clone(),
        ControllerConfig::default(),
        None,
    ));
    let action = framework::reconcile(obj, ctx, Arc::new(Panicky)).await;
    assert!(action.is_ok(), "the panic escaped as an error: {action:?}");
    let pc = pcs.get(&name).await.unwrap();
    let stalled = conditions::find(&pc.status.unwrap().conditions, conditions::STALLED)
        .unwrap()
        .clone();
    assert_eq!(stalled.status, ConditionStatus::True);
    assert_eq!(stalled.reason, "InternalError");
    assert!(
        metrics
            .render()
            .contains("quartermaster_reconcile_panics_total{kind=\"ProviderConfig\"} 1"),
        "{}",
        metrics.render()
    );
    pcs.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(&serde_json::json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    pcs.delete(&name, &DeleteParams::default()).await.unwrap();
}

#[tokio::test]
async fn a_repeated_event_is_one_event_with_a_series_count() {
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::events::v1::Event as K8sEvent;
    use kube::runtime::events::{Event, EventType, Reporter};
    use quartermaster::controller::runtime::events::EventRecorder;

    let client = common::client().await;
    let ns = common::namespace(&client, "events").await;
    let recorder = EventRecorder::new(
        client.clone(),
        Reporter {
            controller: "quartermaster".into(),
            instance: None,
        },
    );
    let regarding = ObjectReference {
        api_version: Some("quartermaster.dev/v1alpha1".into()),
        kind: Some("VirtualMachine".into()),
        namespace: Some(ns.clone()),
        name: Some("web".into()),
        uid: Some("0f6b3a55-1c53-4bd1-9c39-d2e8f8d1b1aa".into()),
        ..Default::default()
    };
    let ev = |note: &str| Event {
        type_: EventType::Warning,
        reason: "VendorRejected".into(),
        note: Some(note.into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    for _ in 0..3 {
        recorder.publish(&ev("no"), &regarding).await.unwrap();
    }
    recorder.publish(&ev("other"), &regarding).await.unwrap();
    assert_eq!(recorder.remembered(), 2);
    let events: Api<K8sEvent> = Api::namespaced(client, &ns);
    let mut list = events.list(&Default::default()).await.unwrap().items;
    list.sort_by_key(|e| e.note.clone());
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[0].note.as_deref(), Some("no"));
    assert_eq!(list[0].series.as_ref().map(|s| s.count), Some(3));
    assert!(list[1].series.is_none());
}

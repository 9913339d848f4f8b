//! The environment most controller tests share: a namespace, `quartermaster sim`, its token Secret, a
//! ProviderConfig pointing at it, and a controller restricted to the test's objects; helpers to apply
//! VirtualMachines and wait for a condition at the current generation.

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use quartermaster::crd::VirtualMachine;
use quartermaster::crd::conditions::{self, ConditionStatus};

use crate::common;

/// How long a test waits for a condition.
pub const WAIT: Duration = Duration::from_secs(60);

/// A test namespace with a simulator, its token Secret, a ProviderConfig and (optionally) a controller.
pub struct Env {
    pub client: kube::Client,
    pub ns: String,
    pub id: String,
    pub sim: common::SimHandle,
    pub pc: String,
    pub _stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The controller's metrics, once one runs.
    pub metrics: Option<quartermaster::metrics::Metrics>,
}

/// Starts an [`Env`]: namespace `qm-<prefix>-…`, a simulator tweaked by `sim_tweak`, the `do-token` Secret,
/// a ProviderConfig `<id>-do`, and a controller for objects labelled `qm-test=<id>` when `controller`.
pub async fn env(
    prefix: &str,
    sim_tweak: impl FnOnce(&mut quartermaster::sim::SimConfig),
    controller: bool,
) -> Env {
    let e = env_with(prefix, sim_tweak).await;
    if controller {
        e.with_controller(None, |_| {})
    } else {
        e
    }
}

/// An [`Env`] without a controller (start one with [`Env::with_controller`]).
pub async fn env_with(
    prefix: &str,
    sim_tweak: impl FnOnce(&mut quartermaster::sim::SimConfig),
) -> Env {
    let client = common::client().await;
    let ns = common::namespace(&client, prefix).await;
    let id = common::unique(prefix);
    let sim = common::start_sim(sim_tweak).await;
    common::secret(&client, &ns, "do-token", "token", "sim-token").await;
    let pc = format!("{id}-do");
    common::do_provider_config(&client, &id, &pc, &ns, &sim.url, &[]).await;
    Env {
        client,
        ns,
        id,
        sim,
        pc,
        _stop: None,
        metrics: None,
    }
}

impl Env {
    /// Starts the controller for this environment's objects, with an optional ledger and `tweak`ed
    /// settings (on top of the tests' short polling and backoff).
    pub fn with_controller(
        mut self,
        ledger: Option<quartermaster::ledger::Ledger>,
        tweak: impl FnOnce(&mut quartermaster::controller::ControllerConfig),
    ) -> Self {
        let (metrics, stop) =
            common::start_controller_cfg(self.client.clone(), &self.id, ledger, tweak);
        self.metrics = Some(metrics);
        self._stop = Some(stop);
        self
    }

    /// Applies a Project `name` with `spec` in this environment's namespace.
    pub async fn apply_project(&self, name: &str, spec: serde_json::Value) {
        let projects: Api<quartermaster::crd::Project> =
            Api::namespaced(self.client.clone(), &self.ns);
        let p = serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "Project",
            "metadata": {"name": name, "labels": {"qm-test": self.id}}, "spec": spec,
        });
        projects
            .patch(
                name,
                &PatchParams::apply("quartermaster-tests").force(),
                &Patch::Apply(&p),
            )
            .await
            .unwrap();
    }

    /// Lets this environment's namespace adopt untagged servers of its ProviderConfig.
    pub async fn allow_adoption(&self) {
        let pcs: Api<quartermaster::crd::ProviderConfig> = Api::all(self.client.clone());
        pcs.patch(
            &self.pc,
            &PatchParams::default(),
            &kube::api::Patch::Merge(&serde_json::json!({
                "spec": {"adoption": {"allowedNamespaces": [self.ns]}}
            })),
        )
        .await
        .unwrap();
    }

    /// Lets this environment's namespace release servers of its ProviderConfig (`deletionPolicy: Orphan`).
    pub async fn allow_release(&self) {
        let pcs: Api<quartermaster::crd::ProviderConfig> = Api::all(self.client.clone());
        pcs.patch(
            &self.pc,
            &PatchParams::default(),
            &kube::api::Patch::Merge(&serde_json::json!({
                "spec": {"release": {"allowedNamespaces": [self.ns]}}
            })),
        )
        .await
        .unwrap();
    }

    /// Waits until the VM's condition `type_` is `status` for any reason, at the current generation.
    pub async fn wait_vm_status(
        &self,
        name: &str,
        type_: &str,
        status: ConditionStatus,
    ) -> VirtualMachine {
        self.wait_condition(name, type_, status, None).await
    }

    /// Waits until VM `name` is `Ready=True` (`Reconciled`) for its current generation.
    pub async fn wait_ready(&self, name: &str) -> VirtualMachine {
        self.wait_vm(name, conditions::READY, ConditionStatus::True, "Reconciled")
            .await
    }

    async fn wait_condition(
        &self,
        name: &str,
        type_: &str,
        status: ConditionStatus,
        reason: Option<&str>,
    ) -> VirtualMachine {
        let vms = self.vms();
        let what = format!(
            "vm {name} {type_}={status:?} ({})",
            reason.unwrap_or("any reason")
        );
        common::eventually(WAIT, &what, || async {
            let vm = vms.get(name).await.ok()?;
            let st = vm.status.as_ref()?;
            let c = conditions::find(&st.conditions, type_)?;
            (c.status == status
                && reason.is_none_or(|r| c.reason == r)
                && st.observed_generation == vm.metadata.generation)
                .then_some(vm)
        })
        .await
    }

    pub fn vms(&self) -> Api<VirtualMachine> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub async fn apply_vm(&self, name: &str, extra: serde_json::Value) {
        let mut spec = serde_json::json!({
            "providerConfigRef": {"name": self.pc},
            "region": "fra1", "size": "s-1vcpu-1gb", "image": "debian-12-x64",
        });
        merge(&mut spec, extra.get("spec").cloned().unwrap_or_default());
        let mut vm = serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": name, "labels": {"qm-test": self.id}},
            "spec": spec,
        });
        if let Some(m) = extra.get("metadata") {
            merge(&mut vm["metadata"], m.clone());
        }
        self.vms()
            .patch(
                name,
                &PatchParams::apply("quartermaster-tests").force(),
                &Patch::Apply(&vm),
            )
            .await
            .unwrap();
    }

    pub async fn patch_vm(&self, name: &str, patch: serde_json::Value) {
        self.vms()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }

    /// Waits until the VM's condition `type_` has `status` and `reason`, for the current generation.
    pub async fn wait_vm(
        &self,
        name: &str,
        type_: &str,
        status: ConditionStatus,
        reason: &str,
    ) -> VirtualMachine {
        self.wait_condition(name, type_, status, Some(reason)).await
    }

    pub async fn wait_gone(&self, name: &str) {
        let vms = self.vms();
        common::eventually(WAIT, &format!("vm {name} deleted"), || async {
            vms.get_opt(name).await.ok()?.is_none().then_some(())
        })
        .await;
    }

    pub async fn droplet(&self, id: &str) -> Option<serde_json::Value> {
        self.sim
            .droplets()
            .await
            .into_iter()
            .find(|d| d["id"].as_u64().map(|n| n.to_string()).as_deref() == Some(id))
    }

    pub async fn event_reasons(&self, name: &str) -> Vec<String> {
        self.events_of(name)
            .await
            .into_iter()
            .map(|e| e.0)
            .collect()
    }

    /// The Events about object `name` in this namespace: (reason, note).
    pub async fn events_of(&self, name: &str) -> Vec<(String, String)> {
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), &self.ns);
        events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }
}

/// Deep-merges JSON `b` into `a` (nulls in `b` are ignored).
pub fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (_, serde_json::Value::Null) => {}
        (a, b) => *a = b,
    }
}

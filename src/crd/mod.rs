//! The nine custom resource types of group `quartermaster.dev`, version `v1alpha1`, and what they share:
//! object references, annotations, the [`ObjectStatus`] trait every status implements, and
//! [`all_crds`], the source of the generated `crds/` folder. Types only: no I/O here.

// NB: clippy reads repeated `printcolumn(type_ = ...)` arguments of `#[kube(...)]` as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

pub mod conditions;
pub mod project;
pub mod provider_config;
pub mod sim_card;
pub mod sim_message;
pub mod subscription;
pub mod token_budget;
pub mod virtual_machine;
pub mod virtual_machine_snapshot;
pub mod virtual_machine_snapshot_policy;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use conditions::{Condition, ConditionStatus};
pub use project::{Project, ProjectSpec, ProjectStatus};
pub use provider_config::{ProviderConfig, ProviderConfigSpec, ProviderConfigStatus, ProviderType};
pub use sim_card::{SimCard, SimCardSpec, SimCardStatus};
pub use sim_message::{SimMessage, SimMessageSpec, SimMessageStatus};
pub use subscription::{
    ProrationBehavior, Subscription, SubscriptionDeletionPolicy, SubscriptionSpec,
    SubscriptionStatus,
};
pub use token_budget::{TokenBudget, TokenBudgetSpec, TokenBudgetStatus};
pub use virtual_machine::{VirtualMachine, VirtualMachineSpec, VirtualMachineStatus};
pub use virtual_machine_snapshot::{
    VirtualMachineSnapshot, VirtualMachineSnapshotSpec, VirtualMachineSnapshotStatus,
};
pub use virtual_machine_snapshot_policy::{
    VirtualMachineSnapshotPolicy, VirtualMachineSnapshotPolicySpec,
    VirtualMachineSnapshotPolicyStatus,
};

/// API group of every Quartermaster kind.
pub const GROUP: &str = "quartermaster.dev";
/// API version of every Quartermaster kind.
pub const VERSION: &str = "v1alpha1";
/// The `kubectl get quartermaster` category.
pub const CATEGORY: &str = "quartermaster";

/// Annotation: stop reconciling this object (any value but `"false"`); a `Paused` condition says so.
pub const ANNOTATION_PAUSED: &str = "quartermaster.dev/paused";
/// Annotation: adopt an existing vendor object by its ID instead of creating one.
pub const ANNOTATION_EXTERNAL_ID: &str = "quartermaster.dev/external-id";
/// Annotation: an imperative restart; each distinct value triggers one restart.
pub const ANNOTATION_RESTART_REQUESTED_AT: &str = "quartermaster.dev/restart-requested-at";

/// Annotation on a VirtualMachine asking to restore its server in place from a VirtualMachineSnapshot
/// of it: `<snapshot name>`, or `<snapshot name>@<anything>` to ask again; one restore per distinct value,
/// acknowledged in `status.lastRestore`.
pub const ANNOTATION_RESTORE_SNAPSHOT: &str = "quartermaster.dev/restore-snapshot";
/// Annotation on a SimCard asking for one connectivity reset of its SIM per distinct value (e.g. a
/// timestamp); acknowledged in `status.connectivityReset`.
pub const ANNOTATION_RESET_CONNECTIVITY: &str = "quartermaster.dev/reset-connectivity";
/// Annotation overriding an object's periodic resync (`30s`, `5m`, `1h`; at least 30 s).
pub const ANNOTATION_RESYNC_INTERVAL: &str = "quartermaster.dev/resync-interval";
/// Annotation the controller writes on a VirtualMachine, in the same write as its finalizer, right before
/// the vendor's create: the creation intent ([`virtual_machine::CreationIntent`], JSON). Not for users.
pub const ANNOTATION_CREATION_INTENT: &str = "quartermaster.dev/creation-intent";
/// The finalizer every Quartermaster controller puts on the objects it manages.
pub const FINALIZER: &str = "quartermaster.dev/finalizer";

/// Every CRD, in a stable order (the order of `quartermaster crds`).
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    vec![
        ProviderConfig::crd(),
        Project::crd(),
        VirtualMachine::crd(),
        SimCard::crd(),
        SimMessage::crd(),
        Subscription::crd(),
        TokenBudget::crd(),
        VirtualMachineSnapshot::crd(),
        VirtualMachineSnapshotPolicy::crd(),
    ]
}

/// Status fields every kind has: the generation last reconciled and kstatus conditions.
pub trait ObjectStatus: Default + Clone + PartialEq + Serialize + Send + Sync + 'static {
    /// Conditions, `Ready`/`Reconciling`/`Stalled` first.
    fn conditions(&self) -> &[Condition];
    /// Mutable conditions.
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
    /// The `metadata.generation` the controller last acted on.
    fn observed_generation(&self) -> Option<i64>;
    /// Sets the observed generation.
    fn set_observed_generation(&mut self, generation: Option<i64>);
}

/// Implements [`ObjectStatus`] for a status struct with `observed_generation` and `conditions` fields.
macro_rules! impl_object_status {
    ($t:ty) => {
        impl $crate::crd::ObjectStatus for $t {
            fn conditions(&self) -> &[$crate::crd::Condition] {
                &self.conditions
            }
            fn conditions_mut(&mut self) -> &mut Vec<$crate::crd::Condition> {
                &mut self.conditions
            }
            fn observed_generation(&self) -> Option<i64> {
                self.observed_generation
            }
            fn set_observed_generation(&mut self, generation: Option<i64>) {
                self.observed_generation = generation;
            }
        }
    };
}
pub(crate) use impl_object_status;

/// A reference to an object of a known kind in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalObjectReference {
    /// Name of the referenced object.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
}

/// A reference to a cluster-scoped ProviderConfig.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderConfigReference {
    /// Name of the ProviderConfig (cluster-scoped) that holds the vendor account to use.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
}

/// A key in a Secret in the same namespace as the referring object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalSecretKeyReference {
    /// Name of the Secret.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_crd_is_namespaced_except_provider_config_and_has_category() {
        for crd in all_crds() {
            let names = &crd.spec.names;
            assert_eq!(crd.spec.group, GROUP);
            assert_eq!(
                names.categories.as_deref(),
                Some(&[CATEGORY.to_string()][..])
            );
            assert_eq!(
                names.short_names.as_ref().map(Vec::len),
                Some(1),
                "{}",
                names.kind
            );
            let v = &crd.spec.versions[0];
            assert_eq!(v.name, VERSION);
            assert!(
                v.subresources
                    .as_ref()
                    .and_then(|s| s.status.as_ref())
                    .is_some()
            );
            assert!(
                v.additional_printer_columns
                    .as_ref()
                    .is_some_and(|c| c.len() >= 3)
            );
            let expected = if names.kind == "ProviderConfig" {
                "Cluster"
            } else {
                "Namespaced"
            };
            assert_eq!(crd.spec.scope, expected);
        }
    }

    #[test]
    fn every_schema_field_is_documented() {
        fn walk(path: &str, v: &serde_json::Value, missing: &mut Vec<String>) {
            if let Some(props) = v.get("properties").and_then(|p| p.as_object()) {
                for (k, child) in props {
                    let p = format!("{path}.{k}");
                    let top = path.matches('.').count() == 0
                        && ["apiVersion", "kind", "metadata"].contains(&k.as_str());
                    if child.get("description").is_none() && !top {
                        missing.push(p.clone());
                    }
                    walk(&p, child, missing);
                }
            }
            if let Some(items) = v.get("items") {
                walk(&format!("{path}[]"), items, missing);
            }
        }
        let mut missing = Vec::new();
        for crd in all_crds() {
            let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
            walk(
                &crd.spec.names.kind,
                &schema["openAPIV3Schema"],
                &mut missing,
            );
        }
        assert!(
            missing.is_empty(),
            "fields without a description: {missing:?}"
        );
    }
}

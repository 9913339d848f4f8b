//! `VirtualMachineSnapshotPolicy`: scheduled VirtualMachineSnapshots of one VirtualMachine, the oldest
//! beyond a count deleted.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::virtual_machine_snapshot::SnapshotDeletionPolicy;
use super::{Condition, LocalObjectReference, impl_object_status};

/// Takes a VirtualMachineSnapshot of a VirtualMachine (same namespace) at every slot of a cron
/// schedule, one per slot whatever the controller's restarts (the slot names the snapshot), and deletes
/// the oldest available ones beyond `retain`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "quartermaster.dev",
    version = "v1alpha1",
    kind = "VirtualMachineSnapshotPolicy",
    namespaced,
    doc = "Scheduled snapshots of a VirtualMachine's server, the oldest beyond a count deleted.",
    status = "VirtualMachineSnapshotPolicyStatus",
    shortname = "vmsnappol",
    category = "quartermaster",
    printcolumn(
        name = "VM",
        type_ = "string",
        json_path = ".spec.virtualMachineRef.name"
    ),
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "Retain", type_ = "integer", json_path = ".spec.retain"),
    printcolumn(name = "Last", type_ = "date", json_path = ".status.lastSlot"),
    printcolumn(name = "Next", type_ = "string", json_path = ".status.nextSlot"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineSnapshotPolicySpec {
    /// The VirtualMachine (same namespace) whose server is snapshotted.
    pub virtual_machine_ref: LocalObjectReference,
    /// When, as a five-field cron expression (minute hour day-of-month month day-of-week, e.g.
    /// `0 3 * * *`), or six with seconds first. Day-of-week takes names (`Mon-Fri`, `Sun`) or `*`, not numbers: cron dialects
    /// number the days differently. Slots before the policy was created are never taken; after a
    /// controller outage only the latest missed slot is.
    #[schemars(length(min = 9, max = 128))]
    pub schedule: String,
    /// The IANA time zone the schedule is read in (e.g. `Europe/Berlin`; default `UTC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: Option<String>,
    /// How many available snapshots to keep; older ones are deleted (with their vendor snapshot, per
    /// `deletionPolicy`). Snapshots the vendor refused are not counted, and all but the newest are
    /// deleted (nothing was made of them).
    #[schemars(range(min = 1, max = 100))]
    pub retain: u32,
    /// The `deletionPolicy` of the snapshots it takes (`Retain` needs the ProviderConfig's release
    /// allowance, else pruned snapshots wait, stalled).
    #[serde(default)]
    pub deletion_policy: SnapshotDeletionPolicy,
    /// Take no new snapshots (retention still applies).
    #[serde(default)]
    pub suspend: bool,
}

/// Observed state of a VirtualMachineSnapshotPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-map-type" = "atomic"))]
pub struct VirtualMachineSnapshotPolicyStatus {
    /// The `metadata.generation` the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// kstatus conditions: Ready, Reconciling, Stalled.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The latest slot a snapshot was made for (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_slot: Option<String>,
    /// The next slot (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_slot: Option<String>,
    /// The snapshots it holds now, available or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<u32>,
}
impl_object_status!(VirtualMachineSnapshotPolicyStatus);

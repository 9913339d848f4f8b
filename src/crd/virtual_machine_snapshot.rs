//! `VirtualMachineSnapshot`: one snapshot of a VirtualMachine's server at its vendor, taken exactly once.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, LocalObjectReference, impl_object_status};

/// A snapshot of the server of a VirtualMachine in the same namespace, taken once, in the account the
/// server is in. The vendor's snapshot carries the mark `qm-snap-<uid>` (its name, label or
/// description), by which it is found again after a crash and by which it is known to be this object's.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "quartermaster.dev",
    version = "v1alpha1",
    kind = "VirtualMachineSnapshot",
    namespaced,
    doc = "A snapshot of a VirtualMachine's server at its vendor, taken exactly once.",
    status = "VirtualMachineSnapshotStatus",
    shortname = "vmsnap",
    category = "quartermaster",
    printcolumn(
        name = "VM",
        type_ = "string",
        json_path = ".spec.virtualMachineRef.name"
    ),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(
        name = "Size-GB",
        type_ = "string",
        json_path = ".status.sizeGigabytes"
    ),
    printcolumn(
        name = "Snapshot-ID",
        type_ = "string",
        json_path = ".status.snapshotID",
        priority = 1
    ),
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
pub struct VirtualMachineSnapshotSpec {
    /// The VirtualMachine (same namespace) whose server is snapshotted. It must hold a server it
    /// created or adopted (not `ObserveOnly`). Changing it once the snapshot was requested stalls the
    /// object (`ImmutableFieldChanged`): create another VirtualMachineSnapshot.
    pub virtual_machine_ref: LocalObjectReference,
    /// What deleting this object does to the vendor's snapshot.
    #[serde(default)]
    pub deletion_policy: SnapshotDeletionPolicy,
}

/// What deleting a VirtualMachineSnapshot does to the vendor's snapshot.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SnapshotDeletionPolicy {
    /// Delete the vendor's snapshot (it stops costing money).
    #[default]
    Delete,
    /// Keep the vendor's snapshot, released to the platform (it goes on costing the account money,
    /// billed to nobody): only where the ProviderConfig's `spec.release.allowedNamespaces` names the
    /// namespace; elsewhere deletion waits, `Stalled` `ReleaseNotAllowed`, still billed.
    Retain,
}

/// Observed state of a VirtualMachineSnapshot.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-map-type" = "atomic"))]
pub struct VirtualMachineSnapshotStatus {
    /// The `metadata.generation` the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// kstatus conditions: Ready, Reconciling, Stalled.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// `Pending` while the vendor takes it, `Available` once it can be restored, `Failed` when the vendor
    /// gave up on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The VirtualMachine it was requested of (recorded with the request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_machine: Option<String>,
    /// The ProviderConfig (account) the snapshot is in: the VirtualMachine's server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_config: Option<String>,
    /// The vendor's ID of the server it was taken of.
    #[serde(default, rename = "serverID", skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    /// The mark the vendor's snapshot carries (`qm-snap-<uid>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mark: Option<String>,
    /// When the snapshot was requested (RFC 3339), recorded before the vendor's call: after a crash or a
    /// lost answer, the vendor is asked for the mark before any new request. Cleared when the vendor
    /// refused the request (nothing was made).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<String>,
    /// The vendor's ID of the snapshot.
    #[serde(
        default,
        rename = "snapshotID",
        skip_serializing_if = "Option::is_none"
    )]
    pub snapshot_id: Option<String>,
    /// Its size in GB, as the vendor reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_gigabytes: Option<String>,
    /// The generation whose request the vendor refused: it is not requested again until the object
    /// changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_generation: Option<i64>,
    /// The vendor's words refusing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    /// The Project its storage is billed to: the VirtualMachine's, when the snapshot was requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// That Project's UID.
    #[serde(
        default,
        rename = "projectUID",
        skip_serializing_if = "Option::is_none"
    )]
    pub project_uid: Option<String>,
    /// Storage is billed up to this time (RFC 3339): hourly while the snapshot is kept, to its deletion
    /// at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billed_until: Option<String>,
    /// When the vendor created it (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// What its storage costs the Project a month (decimal string, the vendor's GB-month price with
    /// the ProviderConfig's markup): of its size once the vendor reports one, before that of the disk
    /// of the server's size (what it was admitted at). It counts toward the Project's
    /// `maxMonthlySpend` when a later snapshot is admitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_price: Option<String>,
    /// The currency of `monthlyPrice` (ISO 4217).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
}
impl_object_status!(VirtualMachineSnapshotStatus);

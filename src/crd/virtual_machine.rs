//! `VirtualMachine`: a VPS at a compute provider, with a declarative power state (`runStrategy`), a size
//! that can change, and region and image fixed at creation.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    Condition, LocalObjectReference, LocalSecretKeyReference, ProviderConfigReference,
    impl_object_status,
};

/// A virtual private server at a compute provider.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "quartermaster.dev",
    version = "v1alpha1",
    kind = "VirtualMachine",
    namespaced,
    doc = "A virtual private server at a compute provider (DigitalOcean, Linode, Vultr, Contabo).",
    status = "VirtualMachineStatus",
    shortname = "vm",
    category = "quartermaster",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Provider",
        type_ = "string",
        json_path = ".spec.providerConfigRef.name"
    ),
    printcolumn(name = "Size", type_ = "string", json_path = ".spec.size"),
    printcolumn(
        name = "IP",
        type_ = "string",
        json_path = ".status.addresses.publicIPv4"
    ),
    printcolumn(
        name = "Monthly",
        type_ = "string",
        json_path = ".status.monthlyPriceRounded"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        priority = "1"
    ),
    printcolumn(
        name = "Transfer%",
        type_ = "integer",
        json_path = ".status.transfer.usedPercent",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineSpec {
    /// The Project (same namespace) this VM belongs to and is billed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_ref: Option<LocalObjectReference>,
    /// The ProviderConfig whose account the VM is created in.
    pub provider_config_ref: ProviderConfigReference,
    /// Vendor region slug (e.g. `fra1`). Immutable after creation.
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[a-zA-Z0-9][-a-zA-Z0-9_.]*$")
    )]
    pub region: String,
    /// Vendor size or plan slug (e.g. `s-1vcpu-1gb`). Changing it resizes the VM.
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[a-zA-Z0-9][-a-zA-Z0-9_.]*$")
    )]
    pub size: String,
    /// Vendor image slug or ID, including marketplace apps (e.g. `debian-12-x64`). Immutable after creation.
    /// Required unless `source.snapshotRef` names a snapshot to create the server from (then leave it out).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[a-zA-Z0-9][-a-zA-Z0-9_.:/]*$")
    )]
    pub image: String,
    /// Where the server's disk comes from instead of `image`. Immutable after creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<VmSource>,
    /// Declared power state: Always (keep running), Halted (keep stopped), Manual (leave as it is).
    #[serde(default)]
    pub run_strategy: RunStrategy,
    /// SSH public keys or vendor key fingerprints/IDs to install for the default user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 16384)))]
    pub ssh_keys: Vec<String>,
    /// A Secret key (same namespace) whose value is passed to the VM as cloud-init user data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data_secret_ref: Option<LocalSecretKeyReference>,
    /// Extra tags set on the vendor object. Quartermaster adds its own ownership tag; the prefixes
    /// `quartermaster-` and `qm-uid-` (any letter case) are reserved for it and refused here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(
            length(min = 1, max = 64),
            regex(pattern = r"^[a-zA-Z0-9][-a-zA-Z0-9_:.]*$")
        ),
        transform = reserved_tag_prefix
    )]
    pub tags: Vec<String>,
    /// Enable the vendor's automatic backups (billed by the vendor).
    #[serde(default)]
    pub backups: bool,
    /// Assign a public IPv6 address.
    #[serde(default)]
    pub ipv6: bool,
    /// A private network (VPC) by the vendor's ID, joined at create (DigitalOcean `vpc_uuid`, Vultr
    /// `attach_vpc`, Linode a `vpc` interface on one of its subnets beside the public one). The
    /// ProviderConfig must grant it to the namespace (`spec.vendorResources`). Contabo refuses it before
    /// any create. Immutable once the server exists.
    #[serde(default, rename = "vpcID", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[-a-zA-Z0-9_]+$"))]
    pub vpc_id: Option<String>,
    /// The subnet of `vpcID` to join (Linode only; needed when the VPC has more than one subnet, and it
    /// must be one of that VPC's). The others refuse it before any create. Immutable once the server
    /// exists.
    #[serde(default, rename = "subnetID", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[-a-zA-Z0-9_]+$"))]
    pub subnet_id: Option<String>,
    /// Join the VPC its Project owns in this VM's account and region (the Project's `spec.vpcs`);
    /// the create waits until the Project has made it. Exclusive with `vpcID`; immutable once the
    /// server exists.
    #[serde(default, rename = "projectVPC")]
    pub project_vpc: bool,
    /// A firewall by the vendor's ID, attached at create (Linode `firewall_id`, a number; Vultr
    /// `firewall_group_id`). DigitalOcean and Contabo refuse it before any create.
    #[serde(
        default,
        rename = "firewallID",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[-a-zA-Z0-9_]+$"))]
    pub firewall_id: Option<String>,
    /// Install the vendor's monitoring agent at create (DigitalOcean `monitoring`). The others refuse it
    /// before any create.
    #[serde(default)]
    pub monitoring: bool,
    /// Export this server's CPU, memory, disk and network figures, read from its vendor's monitoring
    /// API, as Prometheus series labelled by the VM's UID (also on for every VM of a Project whose
    /// `spec.vmMetrics` is true). Off by default, so the series count stays bounded. DigitalOcean needs
    /// `monitoring: true` for memory and disk; Vultr and Contabo report none.
    #[serde(default)]
    pub metrics: bool,
    /// A Linode StackScript run at create, with its user-defined fields (Linode only; the others refuse
    /// it before any create).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_script: Option<StackScript>,
    /// Operating system family of the image; `windows` adds an `.rdp` file to the connection Secret and
    /// its administrator password (generated by Quartermaster on Linode and Contabo, by the vendor on
    /// Vultr) when the server is created.
    #[serde(default)]
    pub os: OperatingSystem,
    /// What deleting this object does to the vendor's VM.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Whether Quartermaster may change the vendor's VM, or only observe it.
    #[serde(default)]
    pub management_policy: ManagementPolicy,
}

/// Tag prefixes reserved for ownership marks, compared without regard to letter case: the ownership
/// tag `quartermaster-uid-<uid>` and its short wire form on Linode, `qm-uid-<uid>` (Linode tags are at
/// most 50 characters). A tenant's tag that any vendor client could read as an ownership mark would let
/// one VM claim another's server.
pub const RESERVED_TAG_PREFIXES: [&str; 2] = ["quartermaster-", "qm-uid-"];

/// The reserved prefix `tag` starts with (any letter case), if any.
pub fn reserved_prefix(tag: &str) -> Option<&'static str> {
    let lower = tag.to_ascii_lowercase();
    RESERVED_TAG_PREFIXES
        .into_iter()
        .find(|p| lower.starts_with(p))
}

/// Schema: no tag may start with a [`RESERVED_TAG_PREFIXES`] entry (a `not` of a pattern: RE2, which the
/// API server uses, has no negative look-ahead, and a 1.20 API server has no CEL).
fn reserved_tag_prefix(schema: &mut schemars::Schema) {
    if let Some(items) = schema.get_mut("items").and_then(|i| i.as_object_mut()) {
        let pattern = format!("(?i)^({})", RESERVED_TAG_PREFIXES.join("|"));
        items.insert("not".into(), serde_json::json!({ "pattern": pattern }));
    }
}

/// Declared power state.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RunStrategy {
    /// Keep the VM running; start it whenever it is found stopped.
    #[default]
    Always,
    /// Keep the VM stopped.
    Halted,
    /// Create it running, then never change its power state.
    Manual,
}

/// Operating system family.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OperatingSystem {
    /// Linux or another Unix: SSH access.
    #[default]
    Linux,
    /// Windows: RDP access.
    Windows,
}

/// A restore in place asked for with the `quartermaster.dev/restore-snapshot` annotation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRestore {
    /// The annotation's value this restore answers, recorded before the call: one value is one restore
    /// at most, whatever crashes in between.
    pub requested: String,
    /// The vendor's ID of the snapshot restored.
    #[serde(
        default,
        rename = "snapshotID",
        skip_serializing_if = "Option::is_none"
    )]
    pub snapshot_id: Option<String>,
    /// When the vendor accepted it (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_at: Option<String>,
    /// The call's answer was lost: it is not sent again (a restore replaces the disk). Set a new value to
    /// ask again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unconfirmed: bool,
    /// Why it was refused (the vendor's words, or why it cannot be done here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// A Linode StackScript and its user-defined fields.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StackScript {
    /// The StackScript's ID.
    #[schemars(range(min = 1))]
    pub id: u64,
    /// A Secret key (same namespace) holding its user-defined fields as a JSON object (they often hold
    /// passwords, so they live in a Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_secret_ref: Option<LocalSecretKeyReference>,
}

/// A VM's disk from something other than an image.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VmSource {
    /// A VirtualMachineSnapshot of this namespace, available, taken in the account this VM names
    /// (`providerConfigRef`): the server is created from it (DigitalOcean, Linode, Vultr; Contabo
    /// restores a snapshot only onto the instance it was taken of, so it is refused there).
    pub snapshot_ref: LocalObjectReference,
}

/// What deletion does to the vendor object.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Destroy the vendor object and wait until the vendor reports it gone.
    #[default]
    Delete,
    /// Leave the vendor object running and release it: its ownership tag is removed, so it can be
    /// adopted again where a ProviderConfig allows adoption.
    Orphan,
}

/// How much control Quartermaster takes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ManagementPolicy {
    /// Create, change and delete the vendor object.
    #[default]
    Full,
    /// Only read the vendor object into status; never mutate it.
    ObserveOnly,
}

/// Lifecycle phase as reported by the vendor.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum VmPhase {
    /// Being created.
    Provisioning,
    /// Powering on.
    Starting,
    /// Running.
    Running,
    /// Powering off.
    Stopping,
    /// Powered off.
    Stopped,
    /// Changing size.
    Resizing,
    /// Being destroyed.
    Terminating,
    /// The vendor reports an error state.
    Failed,
}

/// Network addresses of a VM.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct VmAddresses {
    /// Public IPv4 address.
    #[serde(
        rename = "publicIPv4",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub public_ipv4: Option<String>,
    /// Public IPv6 address.
    #[serde(
        rename = "publicIPv6",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub public_ipv6: Option<String>,
    /// Private (VPC) IPv4 address.
    #[serde(
        rename = "privateIPv4",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub private_ipv4: Option<String>,
}

/// Observed state of a VirtualMachine.
///
/// Written only by Quartermaster, and always as a whole (an atomic field for server-side apply).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
// Atomic: the API server tracks the status as one managed field (`f:status`) instead of one entry per
// leaf, which makes every status write markedly cheaper for it (see BENCHMARKS.md).
#[schemars(extend("x-kubernetes-map-type" = "atomic"))]
pub struct VirtualMachineStatus {
    /// The `metadata.generation` the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// kstatus conditions: Ready, Reconciling, Stalled (and Paused when paused).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Lifecycle phase from the vendor's truth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<VmPhase>,
    /// The vendor's ID of the VM.
    #[serde(
        rename = "externalID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub external_id: Option<String>,
    /// Network addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses: Option<VmAddresses>,
    /// Price per hour of the current size (decimal string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hourly_price: Option<String>,
    /// Price per month of the current size (decimal string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_price: Option<String>,
    /// `monthlyPrice` rounded to the currency's precision (the printer column shows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_price_rounded: Option<String>,
    /// Currency of the prices (ISO 4217).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// Name of the Secret (same namespace) holding addresses, username and credentials for the VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_secret_ref: Option<LocalObjectReference>,
    /// Idempotency key (the object's UID), recorded before the vendor's create is called; the vendor
    /// object is tagged with it, so after a crash it is found instead of created again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_key: Option<String>,
    /// Size as the vendor reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// The ProviderConfig (account) the server was created in or adopted from; `spec.providerConfigRef`
    /// may not move away from it while the server exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_config: Option<String>,
    /// The Project this VM counts towards and is billed to: `spec.projectRef` once that Project admitted
    /// it (limits and currency checked). Usage before a move stays with the earlier Project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// The UID of that Project: usage is billed to it (a Project deleted and recreated under the same
    /// name is another tenant).
    #[serde(
        rename = "projectUID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub project_uid: Option<String>,
    /// Region the VM was created in (region is immutable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Image the VM was created from (image is immutable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The last `quartermaster.dev/restart-requested-at` value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restart_request: Option<String>,
    /// The last restore in place asked for with the `quartermaster.dev/restore-snapshot` annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restore: Option<SnapshotRestore>,
    /// The running time not yet billed: usage from `since` on is recorded to the ledger hour by hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metering: Option<MeteringWindow>,
    /// The vendor refused the resize to this size: it is not tried again until `spec.size` names another
    /// size (the server stays at its size, in the power state `runStrategy` asks for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize_refused: Option<ResizeRefusal>,
    /// This month's outbound transfer as the vendor counts it, the size's allowance, and how far it is
    /// billed (transfer beyond the allowance is billed at the ProviderConfig's transfer price).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<VmTransfer>,
    /// The firewall the server was added to after its create (DigitalOcean, whose firewalls name their
    /// droplets); vendors that take `spec.firewallID` in the create leave it unset.
    #[serde(
        default,
        rename = "firewallID",
        skip_serializing_if = "Option::is_none"
    )]
    pub firewall_id: Option<String>,
    /// The vendor options the server was created with: a later change of them cannot reach it, so it
    /// is refused (`ImmutableFieldChanged`) rather than ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_with: Option<CreatedOptions>,
}

/// The vendor options a server was created with.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedOptions {
    /// `spec.vpcID` at create.
    #[serde(default, rename = "vpcID", skip_serializing_if = "Option::is_none")]
    pub vpc_id: Option<String>,
    /// `spec.subnetID` at create.
    #[serde(default, rename = "subnetID", skip_serializing_if = "Option::is_none")]
    pub subnet_id: Option<String>,
    /// `spec.projectVPC` at create (`vpcID` then holds the Project's VPC the server joined).
    #[serde(default, rename = "projectVPC")]
    pub project_vpc: bool,
    /// `spec.monitoring` at create.
    #[serde(default)]
    pub monitoring: bool,
    /// `spec.stackScript.id` at create.
    #[serde(
        default,
        rename = "stackScriptID",
        skip_serializing_if = "Option::is_none"
    )]
    pub stack_script_id: Option<u64>,
}

/// A server's outbound transfer in one calendar month (UTC) and its metering.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VmTransfer {
    /// The month (UTC, `YYYY-MM`).
    pub month: String,
    /// Outbound public transfer this month as the vendor last reported it, bytes.
    pub outbound_bytes: i64,
    /// Transfer the server's size includes each month, bytes; absent when the vendor states none (all
    /// transfer is then recorded as included, and none is billed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowance_bytes: Option<i64>,
    /// The outbound transfer in percent of the allowance (whole percent, rounded down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_percent: Option<i64>,
    /// When the vendor's figure was read (RFC 3339).
    pub read_at: String,
    /// Transfer within the allowance already recorded to the ledger, bytes.
    pub included_billed: i64,
    /// Transfer beyond the allowance already billed, bytes.
    pub overage_billed: i64,
    /// When the billed figures were read (unix seconds): the start of the next usage window.
    pub billed_at: i64,
    /// The allowance thresholds (80, 100 percent) already announced this month by a Warning Event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warned: Vec<u32>,
}

/// A resize the vendor refused.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResizeRefusal {
    /// The size the vendor refused.
    pub size: String,
    /// The vendor's words.
    pub message: String,
}

/// An open metering window.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeteringWindow {
    /// Start of the time not yet billed (the server exists at the vendor), unix seconds.
    pub since: i64,
    /// Size billed for this window.
    pub size: String,
    /// The tenant's hourly price of that size (decimal string; the vendor's price with the
    /// ProviderConfig's markup). Empty: no price is known, and the seconds are recorded unpriced.
    pub hourly_price: String,
    /// The vendor's hourly price (decimal string). Absent on windows opened before markups existed: the
    /// tenant's price then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_hourly_price: Option<String>,
    /// Currency (ISO 4217); empty when unpriced.
    pub currency: String,
}
impl_object_status!(VirtualMachineStatus);

/// What the controller records before a vendor's create, so that after a crash it looks for the server
/// instead of creating another, in the right account, holding the Project slot it was admitted to.
///
/// Stored in the [`ANNOTATION_CREATION_INTENT`](super::ANNOTATION_CREATION_INTENT) annotation, written
/// together with the finalizer in one write; the status written after the create holds the same facts
/// (`creationKey`, `providerConfig`, `project`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CreationIntent {
    /// The idempotency key: the object's UID (an annotation copied from another object is ignored).
    pub creation_key: String,
    /// The ProviderConfig (vendor account) the server is created in.
    pub provider_config: String,
    /// The Project the VM was admitted to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

impl CreationIntent {
    /// The intent recorded on `vm`, if its annotation parses and belongs to this object (its UID).
    pub fn of(vm: &VirtualMachine) -> Option<Self> {
        let raw = vm
            .metadata
            .annotations
            .as_ref()?
            .get(super::ANNOTATION_CREATION_INTENT)?;
        let intent: Self = serde_json::from_str(raw).ok()?;
        (Some(&intent.creation_key) == vm.metadata.uid.as_ref()).then_some(intent)
    }

    /// The annotation value.
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Fills the creation facts into `status` when only the annotation holds them (a crash came between
    /// the annotation write and the status write). Status already holding intent wins.
    pub fn fill(vm: &VirtualMachine, status: &mut VirtualMachineStatus) {
        if status.creation_key.is_some() {
            return;
        }
        if let Some(i) = Self::of(vm) {
            status.creation_key = Some(i.creation_key);
            status.provider_config.get_or_insert(i.provider_config);
            if status.project.is_none() {
                status.project = i.project;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(uid: &str, annotation: Option<&str>, status: serde_json::Value) -> VirtualMachine {
        let mut meta = serde_json::json!({"name": "v", "namespace": "ns", "uid": uid});
        if let Some(a) = annotation {
            meta["annotations"] =
                serde_json::json!({ super::super::ANNOTATION_CREATION_INTENT: a });
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "VirtualMachine", "metadata": meta,
            "spec": {"providerConfigRef": {"name": "now"}, "region": "fra1", "size": "s", "image": "i"},
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn intent_fills_a_status_that_lacks_it_and_only_for_its_own_object() {
        let intent = CreationIntent {
            creation_key: "u1".into(),
            provider_config: "then".into(),
            project: Some("p".into()),
        };
        let a = intent.to_annotation();
        let v = vm("u1", Some(&a), serde_json::json!(null));
        assert_eq!(CreationIntent::of(&v), Some(intent.clone()));
        let mut st = VirtualMachineStatus::default();
        CreationIntent::fill(&v, &mut st);
        assert_eq!(st.creation_key.as_deref(), Some("u1"));
        // The account it was created in, not the one the spec names now.
        assert_eq!(st.provider_config.as_deref(), Some("then"));
        assert_eq!(st.project.as_deref(), Some("p"));

        // Copied onto another object, or unreadable: ignored.
        for other in [
            vm("u2", Some(&a), serde_json::json!(null)),
            vm("u1", Some("{"), serde_json::json!(null)),
        ] {
            assert_eq!(CreationIntent::of(&other), None);
            let mut st = VirtualMachineStatus::default();
            CreationIntent::fill(&other, &mut st);
            assert_eq!(st, VirtualMachineStatus::default());
        }

        // Intent already in status wins.
        let mut st = VirtualMachineStatus {
            creation_key: Some("u1".into()),
            provider_config: Some("recorded".into()),
            ..Default::default()
        };
        CreationIntent::fill(&v, &mut st);
        assert_eq!(st.provider_config.as_deref(), Some("recorded"));
        assert_eq!(st.project, None);
    }
}

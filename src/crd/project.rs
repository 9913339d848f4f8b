//! `Project`: a tenant. It groups VirtualMachines and SimCards, owns their spend, and decides what happens
//! when credit runs out or the project is deleted.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, LocalObjectReference, impl_object_status};

/// A tenant that groups VirtualMachines and SimCards and owns their spend.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "quartermaster.dev",
    version = "v1alpha1",
    kind = "Project",
    namespaced,
    doc = "A tenant: groups VirtualMachines and SimCards, owns their spend and credit.",
    status = "ProjectStatus",
    shortname = "proj",
    category = "quartermaster",
    printcolumn(
        name = "Display Name",
        type_ = "string",
        json_path = ".spec.displayName"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "VMs",
        type_ = "integer",
        json_path = ".status.members.virtualMachines"
    ),
    printcolumn(
        name = "MTD Cost",
        type_ = "string",
        json_path = ".status.monthToDateCostRounded"
    ),
    printcolumn(
        name = "Balance",
        type_ = "string",
        json_path = ".status.creditBalanceRounded"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ProjectSpec {
    /// Human-friendly name shown in reports and invoices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub display_name: Option<String>,
    /// Who is accountable for the spend (an email address or team name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 254))]
    pub owner: Option<String>,
    /// Currency of the project's limits, credit and reports (ISO 4217).
    #[serde(default = "default_currency")]
    #[schemars(regex(pattern = r"^[A-Z]{3}$"))]
    pub currency: String,
    /// Whether members priced in another currency than `currency` are accepted. Amounts in different
    /// currencies are never added together: such members are billed and reported in their own currency
    /// and do not count towards `limits.maxMonthlySpend` or the credit balance. Default: refused
    /// (`CurrencyMismatch`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_other_currencies: bool,
    /// Limits on what the project may hold and spend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ProjectLimits>,
    /// The Subscription (same namespace) that entitles this project. The project is entitled while it
    /// is active or trialing, or past due within `pastDueGraceSeconds`; otherwise it is
    /// `Ready=False` `SubscriptionInactive`, nothing new is created, and its members follow
    /// `onEntitlementLost`. The plan's entitlements cap its limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_ref: Option<LocalObjectReference>,
    /// What happens to the project's VMs and SIMs when its Subscription stops entitling it.
    #[serde(default)]
    pub on_entitlement_lost: EntitlementLostPolicy,
    /// How long a past-due Subscription still entitles the project, in seconds (default 3 days).
    #[serde(default = "default_grace")]
    #[schemars(range(max = 31536000))]
    pub past_due_grace_seconds: u32,
    /// What happens to the project's VMs when its credit balance reaches zero.
    #[serde(default)]
    pub on_credit_exhausted: CreditExhaustedPolicy,
    /// What deleting the project does while it still has members.
    #[serde(default)]
    pub deletion_policy: ProjectDeletionPolicy,
    /// Export CPU, memory, disk and network figures of every member VM as Prometheus series (as a VM's
    /// own `spec.metrics` does for one VM).
    #[serde(default)]
    pub vm_metrics: bool,
    /// Private networks (VPCs) the project owns, one per account and region: Quartermaster creates each
    /// at the vendor (DigitalOcean, Linode, Vultr; VPCs cost nothing there), records it in
    /// `status.vpcs`, and deletes it when the entry is removed or the project is deleted, once no
    /// VirtualMachine is in it. Member VMs join with `spec.projectVPC: true`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub vpcs: Vec<ProjectVpc>,
}

/// A VPC the project owns in one account and region.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectVpc {
    /// The account: a compute ProviderConfig that allows this namespace.
    pub provider_config_ref: super::ProviderConfigReference,
    /// The vendor's region slug (one VPC per account and region).
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[-a-zA-Z0-9_]+$"))]
    pub region: String,
    /// Its IPv4 range in CIDR form, in private address space (e.g. `10.20.0.0/16`); unset: the
    /// vendor's choice (Linode: `10.0.0.0/24`, its one subnet). Fixed once the VPC exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 9, max = 18))]
    pub ip_range: Option<String>,
}

/// A VPC the project owns, as created at the vendor.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectVpcStatus {
    /// The ProviderConfig (account) it is in.
    pub provider_config: String,
    /// Region slug.
    pub region: String,
    /// The vendor's ID of the VPC.
    #[serde(rename = "id")]
    pub id: String,
    /// Its name at the vendor (`qm-<project uid>-<region>`).
    pub name: String,
    /// The IPv4 range asked for (`spec.vpcs[].ipRange`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_range: Option<String>,
    /// The IPv4 range the vendor reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<String>,
}

fn default_grace() -> u32 {
    3 * 86_400
}

/// Policy when a Project's Subscription stops entitling it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum EntitlementLostPolicy {
    /// Stop the project's VMs and disable its SIMs (their declared runStrategy and `enabled` are left as
    /// written) until the Subscription entitles it again.
    Stop,
    /// Only set a condition and emit an Event (nothing new is created either way).
    #[default]
    Notify,
}

/// Whether a Project's Subscription entitles it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EntitlementStatus {
    /// The Subscription.
    pub subscription: String,
    /// Whether it entitles the project now.
    pub entitled: bool,
    /// Why (its Stripe status, the grace period).
    pub message: String,
    /// RFC 3339 end of the past-due grace period, while in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_ends_at: Option<String>,
    /// The plan's limits (applied on top of `spec.limits`: the lower wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ProjectLimits>,
}

fn default_currency() -> String {
    "USD".into()
}

/// Limits on a project.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectLimits {
    /// Most VirtualMachines the project may have; VMs beyond it are not created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub max_virtual_machines: Option<u32>,
    /// Most SimCards the project may hold; the youngest beyond it are `Stalled` `LimitExceeded` and
    /// touch nothing at the vendor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub max_sim_cards: Option<u32>,
    /// Most the project may spend in a calendar month, as a decimal string (e.g. "500.00").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,12}(\.[0-9]{1,6})?$"))]
    pub max_monthly_spend: Option<String>,
}

/// Policy when credit is exhausted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum CreditExhaustedPolicy {
    /// Stop the project's VMs (their declared runStrategy is left as written) and disable its SIMs (their
    /// declared `enabled` is left as written), and create no new VMs, until credit is granted.
    Stop,
    /// Only set a condition and emit an Event.
    #[default]
    Notify,
}

/// Policy when a project with members is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ProjectDeletionPolicy {
    /// Deletion waits until the project has no members; a condition lists the remaining ones.
    #[default]
    Block,
    /// Members are deleted first, then the project.
    Cascade,
}

/// Member counts of a project.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectMembers {
    /// Number of VirtualMachines in the project.
    #[serde(default)]
    pub virtual_machines: u32,
    /// Number of SimCards in the project.
    #[serde(default)]
    pub sim_cards: u32,
    /// VirtualMachines by phase (e.g. Running: 3).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub by_phase: std::collections::BTreeMap<String, u32>,
}

/// Observed state of a Project.
///
/// Written only by Quartermaster, and always as a whole (an atomic field for server-side apply).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
// Atomic: the API server tracks the status as one managed field (`f:status`) instead of one entry per
// leaf, which makes every status write markedly cheaper for it (see BENCHMARKS.md).
#[schemars(extend("x-kubernetes-map-type" = "atomic"))]
pub struct ProjectStatus {
    /// The `metadata.generation` the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// kstatus conditions: Ready, Reconciling, Stalled (and Paused when paused).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Members of the project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<ProjectMembers>,
    /// Cost recorded in the ledger since the start of the month (decimal string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub month_to_date_cost: Option<String>,
    /// `monthToDateCost` rounded to the currency's precision (the printer column shows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub month_to_date_cost_rounded: Option<String>,
    /// Monthly cost if every member keeps running as now (decimal string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projected_monthly_cost: Option<String>,
    /// Credit granted minus usage (decimal string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credit_balance: Option<String>,
    /// `creditBalance` rounded to the currency's precision (the printer column shows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credit_balance_rounded: Option<String>,
    /// Whether `spec.subscriptionRef` entitles the project (unset without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entitlement: Option<EntitlementStatus>,
    /// This month's outbound transfer of the member VMs and their allowances, summed from their status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<ProjectTransfer>,
    /// The VPCs the project owns at its vendors (`spec.vpcs`), recorded as soon as each is created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vpcs: Vec<ProjectVpcStatus>,
}
impl_object_status!(ProjectStatus);

/// The member VMs' outbound transfer in one calendar month (UTC).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectTransfer {
    /// The month (UTC, `YYYY-MM`).
    pub month: String,
    /// Outbound transfer of the member VMs this month, bytes.
    pub outbound_bytes: i64,
    /// The allowances of those of them whose size states one, bytes.
    pub allowance_bytes: i64,
    /// Transfer beyond each VM's own allowance, billed, bytes.
    pub overage_bytes: i64,
}

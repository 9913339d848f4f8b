//! `ProviderConfig` (cluster-scoped): one account at one vendor — which vendor, where its credentials are,
//! which endpoint to call, how fast, and which namespaces may spend it.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, impl_object_status};

/// One account at one vendor. Cluster-scoped: platform admins create it, tenants refer to it by name.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "quartermaster.dev",
    version = "v1alpha1",
    kind = "ProviderConfig",
    doc = "One account at one vendor (cloud, SIM, billing or LLM upstream) and how to reach it.",
    status = "ProviderConfigStatus",
    shortname = "qpc",
    category = "quartermaster",
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "Suspended", type_ = "boolean", json_path = ".spec.suspended"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ProviderConfigSpec {
    /// Which vendor this account is at.
    #[serde(rename = "type")]
    pub type_: ProviderType,
    /// The Secret key holding the credentials (an API token; for Contabo and 1NCE a JSON document).
    pub credentials_secret_ref: SecretKeyReference,
    /// Base URL override for the vendor API: a regional endpoint, a proxy, or `quartermaster sim`.
    /// Defaults to the vendor's public API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^https?://[^\s]+$"))]
    pub endpoint: Option<String>,
    /// Client-side rate limit for calls to this account. Unset: the vendor's documented per-account
    /// limit when calling its public API (DigitalOcean 1/s with a burst of 180, under its 5,000 an hour
    /// and 250 a minute; Vultr 20/s with a burst of 10, under its 30 a second; Linode and Contabo
    /// document none), and no limit with an `endpoint`
    /// override. A 429 with `Retry-After` is honoured either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// When true, nothing new is created or changed through this account; objects using it wait.
    #[serde(default)]
    pub suspended: bool,
    /// Namespaces whose objects may use this account. Empty means every namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 256),
        inner(
            length(min = 1, max = 63),
            regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
        )
    )]
    pub allowed_namespaces: Vec<String>,
    /// Who may adopt existing vendor objects of this account (`quartermaster.dev/external-id`) that no
    /// Quartermaster object owns yet. Unset: nobody. A vendor object owned by another object (it carries
    /// another object's ownership tag) is never adopted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adoption: Option<AdoptionPolicy>,
    /// Which namespaces may name which of this account's private networks, firewalls and StackScripts
    /// by ID (a VirtualMachine's `vpcID`, `firewallID`, `stackScript`): the platform vouches that they
    /// are that tenant's. Unset: nobody may name any (one tenant must never join another's network).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub vendor_resources: Vec<VendorResourceGrant>,
    /// Who may release servers of this account: delete a VirtualMachine with `deletionPolicy: Orphan`,
    /// leaving its server running (untagged, so it can be adopted again) in the platform's account, where
    /// it is paid for and billed to nobody. Unset: nobody; such a VM's deletion waits, `Stalled`
    /// `ReleaseNotAllowed`, still metered, until its deletionPolicy is `Delete` or its namespace is
    /// allowed here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<ReleasePolicy>,
    /// Every VirtualMachine and SimCard through this account must belong to a Project
    /// (`spec.projectRef`): a VM without one is not created, a SimCard without one is `Stalled`
    /// `ProjectRequired` (its SIM still metered, by namespace), and removing the reference is refused
    /// (still metered and under its Project's credit stop). Default false: VMs may run without a
    /// Project; their usage is recorded by namespace (`quartermaster usage --namespace`) and counted by
    /// `quartermaster_usage_without_project_total`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_project: bool,
    /// Percent added to the vendor's prices for the tenants of this account, as a decimal string (e.g.
    /// "20" or "7.5"). Unset: none, tenants pay the vendor's price. The ledger records the tenant's price
    /// and the vendor's cost of every usage row, so reports show both and the margin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,4}(\.[0-9]{1,4})?$"))]
    pub markup_percent: Option<String>,
    /// 1NCE accounts: which namespaces may claim which SIMs (by ICCID). Unset: a SIM is claimable only
    /// on a single-tenant account, `allowedNamespaces` naming exactly one namespace; otherwise nothing is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub sim_claims: Vec<SimClaimRule>,
    /// 1NCE accounts: what one quota top-up costs at 1NCE (the API does not say), for the ledger; the
    /// tenant pays it plus `markupPercent`. Unset: top-ups are recorded unpriced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_up_price: Option<Money>,
    /// Compute accounts: the price per GB (10^9 bytes) of outbound transfer beyond a server's monthly
    /// allowance that tenants are billed (plus `markupPercent`). Unset: the vendor's published overage
    /// price (DigitalOcean US$0.01/GiB, Linode US$0.005/GB, Vultr US$0.01/GB; Contabo reports no
    /// transfer). The account's actual overage, pooled across its servers, is recorded as vendor cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_price: Option<Money>,
    /// Stripe accounts: the plans tenants subscribe to by name (a Subscription's `plan`), each with its
    /// Stripe price and what it entitles. Kept here because a price belongs to one Stripe account, and
    /// only platform admins may write a cluster-scoped ProviderConfig.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub plans: Vec<Plan>,
    /// OpenAI-compatible upstreams: the models this account serves through the gateway and their prices.
    /// A model not listed here is refused by the gateway (it is never served unpriced).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub models: Vec<ModelPrice>,
}

/// A model an OpenAI-compatible upstream serves, and what it costs there.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelPrice {
    /// The model's name as clients ask for it (and as the upstream knows it, unless `upstreamModel`).
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    )]
    pub name: String,
    /// The name sent to the upstream, when it differs (e.g. `openai/gpt-4o-mini` at OpenRouter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub upstream_model: Option<String>,
    /// The upstream's price of a million input (prompt) tokens, as a decimal string.
    #[schemars(regex(pattern = r"^[0-9]{1,9}(\.[0-9]{1,9})?$"))]
    pub input_per_million: String,
    /// The upstream's price of a million output (completion) tokens, as a decimal string.
    #[schemars(regex(pattern = r"^[0-9]{1,9}(\.[0-9]{1,9})?$"))]
    pub output_per_million: String,
    /// The currency of both prices (ISO 4217).
    #[serde(default = "default_currency")]
    #[schemars(regex(pattern = r"^[A-Z]{3}$"))]
    pub currency: String,
    /// The largest output limit (`max_tokens`, `max_completion_tokens`, `max_output_tokens`) the model
    /// takes: the gateway refuses a request asking for more (400, naming the field) and caps a
    /// TokenBudget's `defaultMaxTokens` to it. Unset: 2147483647.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2147483647))]
    pub max_output_tokens: Option<i64>,
}

fn default_currency() -> String {
    "USD".into()
}

/// A plan: a Stripe price, the usage billed through Stripe, and what a Project on it is entitled to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// The name Subscriptions use (`spec.plan`).
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// The Stripe price of the plan's recurring fee (`price_…`).
    #[serde(rename = "priceID")]
    #[schemars(length(max = 255), regex(pattern = r"^price_[A-Za-z0-9_]+$"))]
    pub price_id: String,
    /// Ledger meters billed through Stripe: the Project's usage of each is reported to Stripe as billing
    /// meter events (the plan's subscription must include the metered price of that meter).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub metered: Vec<MeteredPrice>,
    /// What a Project on this plan may hold and spend (applied on top of its own limits: the lower wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entitlements: Option<PlanEntitlements>,
}

/// A ledger meter billed through a Stripe metered price.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeteredPrice {
    /// The ledger meter: vm_seconds, sim_data_bytes, sim_sms, llm_input_tokens or llm_output_tokens.
    #[schemars(regex(
        pattern = r"^(vm_seconds|sim_data_bytes|sim_sms|llm_input_tokens|llm_output_tokens)$"
    ))]
    pub meter: String,
    /// The Stripe metered price (`price_…`) added to the plan's subscription.
    #[serde(rename = "priceID")]
    #[schemars(length(max = 255), regex(pattern = r"^price_[A-Za-z0-9_]+$"))]
    pub price_id: String,
    /// The `event_name` of the Stripe billing meter behind that price.
    #[schemars(length(min = 1, max = 100), regex(pattern = r"^[A-Za-z0-9_.:-]+$"))]
    pub event_name: String,
    /// Ledger units per reported unit (e.g. 3600 to report VM hours from seconds, 1000000 for MB from
    /// bytes). Default 1.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    #[schemars(range(min = 1))]
    pub divisor: u64,
}

fn one() -> u64 {
    1
}

fn is_one(v: &u64) -> bool {
    *v == 1
}

/// What a plan entitles a Project to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanEntitlements {
    /// LLM tokens per period, for TokenBudgets whose allocation comes from the plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_period: Option<u64>,
    /// Requests a minute each API key of the Project's TokenBudgets may make (the lower of this and
    /// the budget's own `rateLimits` holds), across every gateway replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub requests_per_minute: Option<u32>,
    /// Tokens a minute each API key of the Project's TokenBudgets may use (the lower of this and the
    /// budget's own `rateLimits` holds), across every gateway replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tokens_per_minute: Option<u64>,
    /// Most VirtualMachines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_virtual_machines: Option<u32>,
    /// Most SimCards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sim_cards: Option<u32>,
    /// Most spend in a calendar month, as a decimal string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,12}(\.[0-9]{1,9})?$"))]
    pub max_monthly_spend: Option<String>,
}

/// An amount of money.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Money {
    /// The amount, as a decimal string (e.g. "10.00").
    #[schemars(regex(pattern = r"^[0-9]{1,9}(\.[0-9]{1,9})?$"))]
    pub amount: String,
    /// Its currency (ISO 4217, e.g. EUR).
    #[schemars(regex(pattern = r"^[A-Z]{3}$"))]
    pub currency: String,
}

/// Which namespaces may claim which SIMs of a 1NCE account.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SimClaimRule {
    /// The namespaces this rule lets claim the SIMs below.
    #[schemars(
        length(min = 1, max = 256),
        inner(
            length(min = 1, max = 63),
            regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
        )
    )]
    pub namespaces: Vec<String>,
    /// ICCIDs (19 digits, or 20 with the Luhn check digit).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10000), inner(regex(pattern = r"^[0-9]{19,20}$")))]
    pub iccids: Vec<String>,
    /// Ranges of ICCIDs, both ends included (19-digit ICCIDs, or 20 with the Luhn digit).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub ranges: Vec<IccidRange>,
}

/// A range of ICCIDs, both ends included.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IccidRange {
    /// The first ICCID of the range.
    #[schemars(regex(pattern = r"^[0-9]{19,20}$"))]
    pub first: String,
    /// The last ICCID of the range.
    #[schemars(regex(pattern = r"^[0-9]{19,20}$"))]
    pub last: String,
}

impl ProviderConfigSpec {
    /// The markup in percent (0 when unset or unreadable: the schema admits only decimals).
    pub fn markup(&self) -> rust_decimal::Decimal {
        self.markup_percent
            .as_deref()
            .and_then(|m| m.parse().ok())
            .unwrap_or_default()
    }
}

/// Vendor resources (by the vendor's IDs) the objects of some namespaces may name.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VendorResourceGrant {
    /// The namespaces this grant is for.
    #[schemars(
        length(min = 1, max = 256),
        inner(
            length(min = 1, max = 63),
            regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
        )
    )]
    pub namespaces: Vec<String>,
    /// Private networks (VPCs) they may attach, by ID.
    #[serde(default, rename = "vpcIDs", skip_serializing_if = "Vec::is_empty")]
    pub vpc_ids: Vec<String>,
    /// Firewalls they may attach, by ID.
    #[serde(default, rename = "firewallIDs", skip_serializing_if = "Vec::is_empty")]
    pub firewall_ids: Vec<String>,
    /// StackScripts they may run, by ID.
    #[serde(
        default,
        rename = "stackScriptIDs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub stack_script_ids: Vec<u64>,
}

/// Which namespaces may adopt untagged vendor objects of an account.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdoptionPolicy {
    /// Namespaces whose objects may adopt an untagged vendor object by its ID; the adopted object is then
    /// tagged as theirs. Empty: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 256),
        inner(
            length(min = 1, max = 63),
            regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
        )
    )]
    pub allowed_namespaces: Vec<String>,
}

/// Which namespaces may release servers of an account (`deletionPolicy: Orphan`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReleasePolicy {
    /// Namespaces whose VirtualMachines may be deleted with `deletionPolicy: Orphan` (their servers left
    /// running untagged) and whose VirtualMachineSnapshots with `deletionPolicy: Retain` (the snapshot
    /// left at the vendor); from then on the account pays, billed to nobody. Empty: none (such a
    /// deletion waits, `Stalled` `ReleaseNotAllowed`, still billed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 256),
        inner(
            length(min = 1, max = 63),
            regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
        )
    )]
    pub allowed_namespaces: Vec<String>,
}

/// The vendors Quartermaster talks to.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProviderType {
    /// DigitalOcean droplets (also `quartermaster sim`).
    Digitalocean,
    /// Linode (Akamai) instances.
    Linode,
    /// Vultr instances.
    Vultr,
    /// Contabo VPS.
    Contabo,
    /// 1NCE IoT SIM cards.
    Onence,
    /// Stripe subscriptions.
    Stripe,
    /// An OpenAI-compatible LLM upstream.
    Openai,
}

impl ProviderType {
    /// The value as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Digitalocean => "digitalocean",
            Self::Linode => "linode",
            Self::Vultr => "vultr",
            Self::Contabo => "contabo",
            Self::Onence => "onence",
            Self::Stripe => "stripe",
            Self::Openai => "openai",
        }
    }
}

/// A key in a Secret in a named namespace (a ProviderConfig is cluster-scoped, so the namespace is explicit).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyReference {
    /// Name of the Secret.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Namespace of the Secret.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub namespace: String,
    /// Key within the Secret's data.
    #[serde(default = "default_secret_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

fn default_secret_key() -> String {
    "token".into()
}

/// A token-bucket rate limit.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Sustained requests per second.
    #[schemars(range(min = 1, max = 10000))]
    pub requests_per_second: u32,
    /// Requests that may be sent at once after a quiet period.
    #[serde(default = "default_burst")]
    #[schemars(range(min = 1, max = 10000))]
    pub burst: u32,
}

fn default_burst() -> u32 {
    1
}

/// Observed state of a ProviderConfig.
///
/// Written only by Quartermaster, and always as a whole (an atomic field for server-side apply).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
// Atomic: the API server tracks the status as one managed field (`f:status`) instead of one entry per
// leaf, which makes every status write markedly cheaper for it (see BENCHMARKS.md).
#[schemars(extend("x-kubernetes-map-type" = "atomic"))]
pub struct ProviderConfigStatus {
    /// The `metadata.generation` the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// kstatus conditions: Ready, Reconciling, Stalled (and Paused when paused).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Whether the vendor accepted the credentials on the last check (unset until checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_verified: Option<bool>,
    /// RFC 3339 time of the last successful authenticated call to the vendor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_call_time: Option<String>,
    /// The credentials Secret (`namespace/name`) Quartermaster keeps from deletion while objects need it
    /// (finalizer `quartermaster.dev/credentials-in-use`); released when the ProviderConfig names another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protected_secret: Option<String>,
}
impl_object_status!(ProviderConfigStatus);

//! `TokenBudget`: an LLM token allowance per period, enforced by the gateway, with API keys generated
//! into Secrets.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, LocalObjectReference, ProviderConfigReference, impl_object_status};

/// An allowance of LLM tokens per period, enforced by the Quartermaster gateway.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "quartermaster.dev",
    version = "v1alpha1",
    kind = "TokenBudget",
    namespaced,
    doc = "An LLM token allowance per period, with model allow-list, rate limits and generated API keys.",
    status = "TokenBudgetStatus",
    shortname = "tb",
    category = "quartermaster",
    printcolumn(
        name = "Allocation",
        type_ = "integer",
        json_path = ".status.allocation"
    ),
    printcolumn(name = "Consumed", type_ = "integer", json_path = ".status.consumed"),
    printcolumn(name = "Remaining", type_ = "integer", json_path = ".status.remaining"),
    printcolumn(name = "Cost", type_ = "string", json_path = ".status.costRounded"),
    printcolumn(name = "Resets", type_ = "string", json_path = ".status.periodEnd"),
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
pub struct TokenBudgetSpec {
    /// Tokens (input + output) allowed per period. Omit only with period SubscriptionPeriod, where the
    /// Subscription's plan sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tokens: Option<u64>,
    /// The budget period; it resets at each period start (in `timeZone`).
    #[serde(default)]
    pub period: BudgetPeriod,
    /// The IANA time zone Daily, Weekly and Monthly periods are aligned to (e.g. `Europe/Berlin`).
    /// Default UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9_+/-]+$"))]
    pub time_zone: Option<String>,
    /// The Subscription (same namespace) whose billing period and plan drive a SubscriptionPeriod budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_ref: Option<LocalObjectReference>,
    /// The Project (same namespace) the usage is billed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_ref: Option<LocalObjectReference>,
    /// The ProviderConfig (type `openai`) of the upstream the gateway forwards to.
    pub provider_config_ref: ProviderConfigReference,
    /// Further upstreams (ProviderConfigs of type `openai`), tried in order when the one before fails
    /// (connect error, timeout, 5xx or 429) before any byte reached the client. A request naming
    /// `<ProviderConfig>/<model>` goes to that upstream only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub fallback_provider_config_refs: Vec<ProviderConfigReference>,
    /// Output tokens reserved (and asked of the upstream as `max_tokens`) for a request that sets no
    /// limit of its own. Default 4096.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000000))]
    pub default_max_tokens: Option<u32>,
    /// Models the keys may use. Empty means every model the upstream serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128), inner(length(min = 1, max = 128)))]
    pub models: Vec<String>,
    /// Request and token rate limits of each API key, held across every gateway replica (the Project's
    /// plan may lower them: see `status.rateLimits`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<BudgetRateLimits>,
    /// What the gateway does once the budget is used up.
    #[serde(default)]
    pub on_exhausted: ExhaustedPolicy,
    /// With `onExhausted: Throttle`: requests per minute still served (and billed beyond the
    /// allocation) once the budget is used up. Default 6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub throttle_requests_per_minute: Option<u32>,
    /// Percentages of the budget at which a Warning Event is emitted (e.g. 50, 80, 95).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10), inner(range(min = 1, max = 100)))]
    pub alert_thresholds: Vec<u8>,
    /// API keys to generate; each is written to a Secret named `<budget>-<key name>` (key `apiKey`), owned
    /// by the budget. Deleting that Secret rotates the key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub api_keys: Vec<ApiKeySpec>,
}

/// Budget period.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum BudgetPeriod {
    /// Resets every day at 00:00 (in `timeZone`).
    Daily,
    /// Resets every Monday at 00:00 (in `timeZone`).
    Weekly,
    /// Resets on the first of each month at 00:00 (in `timeZone`).
    #[default]
    Monthly,
    /// Follows the referenced Subscription's billing period.
    SubscriptionPeriod,
}

/// Rate limits for a budget.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BudgetRateLimits {
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub requests_per_minute: Option<u32>,
    /// Tokens per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tokens_per_minute: Option<u64>,
}

/// Policy once a budget is exhausted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ExhaustedPolicy {
    /// Refuse requests with 429 and a JSON error naming the budget.
    #[default]
    Block,
    /// Keep serving at `throttleRequestsPerMinute`, billed beyond the allocation.
    Throttle,
}

/// An API key to generate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeySpec {
    /// Name of the key (a DNS label); the Secret is named `<budget>-<name>`.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
}

/// Observed state of a TokenBudget.
///
/// Written only by Quartermaster, and always as a whole (an atomic field for server-side apply).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
// Atomic: the API server tracks the status as one managed field (`f:status`) instead of one entry per
// leaf, which makes every status write markedly cheaper for it (see BENCHMARKS.md).
#[schemars(extend("x-kubernetes-map-type" = "atomic"))]
pub struct TokenBudgetStatus {
    /// The `metadata.generation` the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The rate limits each key is held to: `spec.rateLimits`, lowered by the Project's plan's
    /// entitlements (`requestsPerMinute`, `tokensPerMinute`). The gateway enforces these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<BudgetRateLimits>,
    /// kstatus conditions: Ready, Reconciling, Stalled (and Paused when paused).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// RFC 3339 start of the current period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_start: Option<String>,
    /// RFC 3339 end of the current period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_end: Option<String>,
    /// Tokens consumed in the current period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumed: Option<u64>,
    /// Tokens reserved by requests in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved: Option<u64>,
    /// Tokens left in the current period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u64>,
    /// Cost of the current period's usage (exact decimal and currency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<String>,
    /// `cost` rounded to the currency's precision (the printer column shows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_rounded: Option<String>,
    /// The current period's allocation, in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<u64>,
    /// The API keys: their Secrets and the SHA-256 of each key (the key itself is only in its Secret).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_keys: Vec<ApiKeyStatus>,
    /// Alert thresholds (percent) already announced in the current period.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerted: Vec<u8>,
    /// The UID of the Project (`spec.projectRef`) the usage is billed to.
    #[serde(
        rename = "projectUID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub project_uid: Option<String>,
    /// The only currency the budget's usage may be priced in (its Project's, unless the Project allows
    /// other currencies); models priced in another are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// Why the gateway refuses every request of this budget (its Project's credit stop or lost
    /// entitlement, an unusable upstream); unset while it serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<String>,
}

/// A generated API key, as status shows it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyStatus {
    /// The key's name (`spec.apiKeys[].name`).
    pub name: String,
    /// The Secret holding it (key `apiKey`).
    pub secret_name: String,
    /// Hex SHA-256 of the key: what the gateway compares.
    pub sha256: String,
}
impl_object_status!(TokenBudgetStatus);

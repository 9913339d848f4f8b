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
    printcolumn(name = "Tokens", type_ = "integer", json_path = ".spec.tokens"),
    printcolumn(name = "Period", type_ = "string", json_path = ".spec.period"),
    printcolumn(name = "Consumed", type_ = "integer", json_path = ".status.consumed"),
    printcolumn(name = "Remaining", type_ = "integer", json_path = ".status.remaining"),
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
    /// The budget period; it resets at each period start (UTC).
    #[serde(default)]
    pub period: BudgetPeriod,
    /// The Subscription (same namespace) whose billing period and plan drive a SubscriptionPeriod budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_ref: Option<LocalObjectReference>,
    /// The Project (same namespace) the usage is billed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_ref: Option<LocalObjectReference>,
    /// The ProviderConfig (type `openai`) of the upstream the gateway forwards to.
    pub provider_config_ref: ProviderConfigReference,
    /// Models the keys may use. Empty means every model the upstream serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128), inner(length(min = 1, max = 128)))]
    pub models: Vec<String>,
    /// Request and token rate limits per budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<BudgetRateLimits>,
    /// What the gateway does once the budget is used up.
    #[serde(default)]
    pub on_exhausted: ExhaustedPolicy,
    /// Percentages of the budget at which a Warning Event is emitted (e.g. 50, 80, 95).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10), inner(range(min = 1, max = 100)))]
    pub alert_thresholds: Vec<u8>,
    /// API keys to generate; each is written to a Secret named `<budget>-<key name>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub api_keys: Vec<ApiKeySpec>,
}

/// Budget period.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum BudgetPeriod {
    /// Resets every day at 00:00 UTC.
    Daily,
    /// Resets every Monday at 00:00 UTC.
    Weekly,
    /// Resets on the first of each month at 00:00 UTC.
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
    /// Keep serving at a reduced rate.
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
    /// Cost of the current period's usage (decimal string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<String>,
    /// Names of the Secrets holding the generated API keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_key_secrets: Vec<String>,
}
impl_object_status!(TokenBudgetStatus);

//! `SimCard`: an IoT SIM at 1NCE — whether it is enabled, its label, IMEI lock and quota top-up policy.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, LocalObjectReference, ProviderConfigReference, impl_object_status};

/// An IoT SIM card at 1NCE, identified by its ICCID.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "quartermaster.dev",
    version = "v1alpha1",
    kind = "SimCard",
    namespaced,
    doc = "An IoT SIM card at 1NCE: state, label, IMEI lock, quotas and usage.",
    status = "SimCardStatus",
    shortname = "sim",
    category = "quartermaster",
    printcolumn(name = "ICCID", type_ = "string", json_path = ".spec.iccid"),
    printcolumn(name = "Enabled", type_ = "boolean", json_path = ".spec.enabled"),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "IP", type_ = "string", json_path = ".status.ipAddress"),
    printcolumn(
        name = "Network",
        type_ = "string",
        json_path = ".status.network.name",
        priority = 1
    ),
    printcolumn(
        name = "Country",
        type_ = "string",
        json_path = ".status.network.country",
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
pub struct SimCardSpec {
    /// The SIM's ICCID: 19 or 20 digits, as printed on the card.
    #[schemars(regex(pattern = r"^[0-9]{19,20}$"))]
    pub iccid: String,
    /// The ProviderConfig (type `onence`) of the 1NCE account that owns the SIM.
    pub provider_config_ref: ProviderConfigReference,
    /// The Project (same namespace) the SIM's usage is billed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_ref: Option<LocalObjectReference>,
    /// Whether the SIM may attach to the network and pass traffic.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Free-text label stored at 1NCE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub label: Option<String>,
    /// Lock the SIM to the IMEI of the device it is used in (1NCE IMEI lock).
    #[serde(default)]
    pub imei_lock: bool,
    /// Automatic top-up policy for the data quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_quota: Option<QuotaPolicy>,
    /// Automatic top-up policy for the SMS quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sms_quota: Option<QuotaPolicy>,
    /// What deletion does at 1NCE: `Disable` (default) disables the SIM, `Orphan` leaves it as it is.
    /// Either way the claim is released.
    #[serde(default)]
    pub deletion_policy: SimDeletionPolicy,
    /// How long 1NCE may take to apply a change before the SimCard stalls `ChangeNotApplied`, in
    /// seconds (1NCE applies changes asynchronously).
    #[serde(default = "default_change_timeout")]
    #[schemars(range(min = 10, max = 86400))]
    pub change_timeout_seconds: u32,
}

fn default_change_timeout() -> u32 {
    600
}

/// What deletion does to the SIM at 1NCE.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SimDeletionPolicy {
    /// Disable the SIM at 1NCE, and wait until 1NCE reports it disabled.
    #[default]
    Disable,
    /// Leave the SIM as it is.
    Orphan,
}

fn default_true() -> bool {
    true
}

/// When to buy more quota.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaPolicy {
    /// Buy a top-up automatically when the remaining quota falls to the threshold.
    #[serde(default)]
    pub auto_top_up: bool,
    /// Remaining quota, in percent of the last top-up, at which to top up.
    #[serde(default = "default_threshold")]
    #[schemars(range(min = 1, max = 99))]
    pub threshold_percent: u8,
    /// Most automatic top-ups per calendar month (a spending guard).
    #[serde(default = "default_max_top_ups")]
    #[schemars(range(min = 0, max = 100))]
    pub max_top_ups_per_month: u32,
}

fn default_threshold() -> u8 {
    10
}
fn default_max_top_ups() -> u32 {
    1
}

/// Observed state of a SimCard.
///
/// Written only by Quartermaster, and always as a whole (an atomic field for server-side apply).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
// Atomic: the API server tracks the status as one managed field (`f:status`) instead of one entry per
// leaf, which makes every status write markedly cheaper for it (see BENCHMARKS.md).
#[schemars(extend("x-kubernetes-map-type" = "atomic"))]
pub struct SimCardStatus {
    /// The `metadata.generation` the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// kstatus conditions: Ready, Reconciling, Stalled (and Paused when paused).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// IMSI reported by 1NCE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imsi: Option<String>,
    /// MSISDN (phone number) reported by 1NCE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msisdn: Option<String>,
    /// The SIM's IP address in the 1NCE network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    /// The SIM's state at 1NCE (e.g. Enabled, Disabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Remaining data quota in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_quota_remaining_bytes: Option<u64>,
    /// RFC 3339 expiry of the current data quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_quota_expiry: Option<String>,
    /// Remaining SMS quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sms_quota_remaining: Option<u64>,
    /// RFC 3339 expiry of the current SMS quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sms_quota_expiry: Option<String>,
    /// Data used since the start of the month, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub month_to_date_data_bytes: Option<u64>,
    /// SMS sent since the start of the month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub month_to_date_sms: Option<u64>,
    /// Network connectivity as 1NCE last reported it (OFFLINE, ONLINE, ATTACHED), read with the quotas and
    /// usage (so at most `--sim-usage-interval-secs` old, or since the account's listing showed a change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connectivity: Option<String>,
    /// The ICCID this object holds its claim on (set once the claim is established; cleanup acts only
    /// on a claimed SIM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_iccid: Option<String>,
    /// The label 1NCE reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Whether 1NCE reports the SIM locked to its device's IMEI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imei_lock: Option<bool>,
    /// When this object last sent a change or saw one applied (RFC 3339): an account listing older than
    /// that does not show the SIM as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_at: Option<String>,
    /// The change sent to 1NCE and not yet seen applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_change: Option<PendingSimChange>,
    /// Total data quota in bytes (over the SIM's lifetime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_quota_total_bytes: Option<u64>,
    /// Total SMS quota (over the SIM's lifetime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sms_quota_total: Option<u64>,
    /// The Project the usage is billed to, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// That Project's UID: the tenant in the ledger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "projectUID")]
    pub project_uid: Option<String>,
    /// How far usage is metered: one cursor per meter (the day read last and the figure billed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usage_cursors: Vec<UsageCursor>,
    /// 1NCE's level of the data quota: 0 more than 20 % left, 1 less, 2 none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_quota_level: Option<i64>,
    /// 1NCE's level of the SMS quota, as for data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sms_quota_level: Option<i64>,
    /// When quotas and usage were last read SIM by SIM (RFC 3339); between such reads, a SimCard at rest
    /// is served by its account's SIM listing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_read_at: Option<String>,
    /// The quota warnings already given (80 % and 100 % used), per quota and quota period: each is
    /// an Event once per period.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quota_warnings: Vec<QuotaWarning>,
    /// Where the SIM was last seen on a network, from 1NCE's network events (read with the quotas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<SimNetwork>,
    /// The latest connectivity reset asked for with the `quartermaster.dev/reset-connectivity`
    /// annotation (one reset per distinct value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connectivity_reset: Option<ConnectivityReset>,
    /// The latest automatic top-up of each quota: recorded before the order is sent, so an order is
    /// never sent twice for one crossing of the threshold, whatever crashes in between.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_ups: Vec<TopUpRecord>,
}

/// An automatic top-up of one quota.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopUpRecord {
    /// Which quota: `data` or `sms`.
    pub quota: String,
    /// The quota's state the order was based on (its last change and total): the crossing it answers.
    pub based_on: String,
    /// When the order was sent (RFC 3339).
    pub requested_at: String,
    /// 1NCE's quota shows the top-up (its state moved on).
    #[serde(default)]
    pub confirmed: bool,
    /// 1NCE refused the order (its words are in the Stalled condition); not sent again for this crossing.
    #[serde(default)]
    pub refused: bool,
    /// The month (YYYY-MM) of `topUpsThisMonth`.
    pub month: String,
    /// Automatic top-ups of this quota ordered in that month.
    pub top_ups_this_month: u32,
}

/// A change sent to 1NCE, applied by it asynchronously.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingSimChange {
    /// When it was sent (RFC 3339).
    pub requested_at: String,
    /// Enabled or not.
    pub enabled: bool,
    /// The label sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The IMEI lock sent.
    pub imei_lock: bool,
}

/// A quota warning given (an Event), once per quota period.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaWarning {
    /// `data` or `sms`.
    pub quota: String,
    /// The share used it warned of, percent (80 or 100).
    pub percent: u8,
    /// The quota period it belongs to: the quota's total and expiry as 1NCE reports them (a top-up
    /// starts a new one).
    pub period: String,
}

/// Where a SIM was last seen, from 1NCE's network events.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SimNetwork {
    /// The newest 1NCE event ID already published as an Event: each event is published once.
    #[serde(
        default,
        rename = "lastEventID",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_event_id: Option<i64>,
    /// The network (operator) last named by an event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The country last named by an event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// When that event happened (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_at: Option<String>,
    /// What that event was (e.g. `Update location`, `Create PDP Context`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
}

/// A connectivity reset asked for with the `quartermaster.dev/reset-connectivity` annotation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectivityReset {
    /// The annotation's value this reset answers: recorded before the call, so one value is one reset
    /// at most, whatever crashes in between.
    pub requested: String,
    /// When 1NCE accepted it (queued the reset; it happens asynchronously), RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_at: Option<String>,
    /// The call's answer was lost (a timeout, a dropped connection): it is not sent again, since 1NCE
    /// keeps no record to look it up by. Set a new annotation value to ask again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unconfirmed: bool,
    /// 1NCE's words when it refused the reset (e.g. an expired SIM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// Where metering of one of the vendor's counters stands.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageCursor {
    /// The meter (`sim_data_bytes`, `sim_sms`).
    pub meter: String,
    /// The counter's epoch: the day (YYYY-MM-DD) the figure belongs to.
    pub epoch: String,
    /// The highest figure of that day already billed.
    pub billed: i64,
    /// When it was read (unix seconds).
    pub at: i64,
    /// Downward corrections of that day's figure so far (recorded as adjustments).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub corrections: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
impl_object_status!(SimCardStatus);

//! `Subscription`: a Stripe subscription for a customer, on a named plan or an explicit Stripe price.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, LocalObjectReference, ProviderConfigReference, impl_object_status};

/// A Stripe subscription.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "quartermaster.dev",
    version = "v1alpha1",
    kind = "Subscription",
    namespaced,
    doc = "A Stripe subscription for a customer, on a plan or a Stripe price.",
    status = "SubscriptionStatus",
    shortname = "qsub",
    category = "quartermaster",
    printcolumn(name = "Plan", type_ = "string", json_path = ".status.plan"),
    printcolumn(
        name = "Stripe Status",
        type_ = "string",
        json_path = ".status.stripeStatus"
    ),
    printcolumn(
        name = "Period End",
        type_ = "string",
        json_path = ".status.currentPeriodEnd"
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
#[schemars(extend("oneOf" = [{"required": ["plan"]}, {"required": ["priceID"]}]))]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionSpec {
    /// The customer's billing details. The Stripe customer belongs to this object: created with its UID
    /// in the metadata and never looked up by e-mail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<Customer>,
    /// An existing Stripe customer (`cus_…`) to subscribe instead of creating one: only where the
    /// ProviderConfig's `adoption.allowedNamespaces` lists this namespace, and only a customer no other
    /// object owns.
    #[serde(
        rename = "customerID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(max = 255), regex(pattern = r"^cus_[A-Za-z0-9]+$"))]
    pub customer_id: Option<String>,
    /// Name of a plan of the ProviderConfig's `plans` (exactly one of `plan` and `priceID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub plan: Option<String>,
    /// A Stripe price ID such as `price_1Nx...` (exactly one of `plan` and `priceID`).
    #[serde(rename = "priceID", default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255), regex(pattern = r"^price_[A-Za-z0-9_]+$"))]
    pub price_id: Option<String>,
    /// Number of units subscribed.
    #[serde(default = "default_quantity")]
    #[schemars(range(min = 1, max = 100000))]
    pub quantity: u32,
    /// Cancel at the end of the current period instead of renewing.
    #[serde(default)]
    pub cancel_at_period_end: bool,
    /// Days of free trial before the first charge (used when the subscription is created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 730))]
    pub trial_days: Option<u32>,
    /// How a change of plan, price or quantity is prorated. Default: `CreateProrations`.
    #[serde(default)]
    pub proration_behavior: ProrationBehavior,
    /// What deleting this object does to the Stripe subscription. Default: `Cancel`.
    #[serde(default)]
    pub deletion_policy: SubscriptionDeletionPolicy,
    /// The Project (same namespace) this subscription entitles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_ref: Option<LocalObjectReference>,
    /// The ProviderConfig (type `stripe`) of the Stripe account.
    pub provider_config_ref: ProviderConfigReference,
}

/// How a change is prorated (Stripe's `proration_behavior`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ProrationBehavior {
    /// Credit and charge the difference on the next invoice.
    #[default]
    CreateProrations,
    /// Invoice the difference now.
    AlwaysInvoice,
    /// No proration: the new price applies from the next period.
    None,
}

impl ProrationBehavior {
    /// Stripe's value.
    pub fn as_stripe(self) -> &'static str {
        match self {
            Self::CreateProrations => "create_prorations",
            Self::AlwaysInvoice => "always_invoice",
            Self::None => "none",
        }
    }
}

/// What deleting a Subscription does at Stripe.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SubscriptionDeletionPolicy {
    /// Cancel the Stripe subscription now.
    #[default]
    Cancel,
    /// Cancel it at the end of the current period; the object stays (Terminating, `status.endsAt`)
    /// until then.
    CancelAtPeriodEnd,
    /// Leave it running at Stripe.
    Orphan,
}

fn default_quantity() -> u32 {
    1
}

/// A customer's billing details.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Customer {
    /// Billing email address.
    #[schemars(
        length(min = 3, max = 254),
        regex(pattern = r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    )]
    pub email: String,
    /// Customer or company name shown on invoices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub name: Option<String>,
}

/// The latest invoice of a subscription.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InvoiceSummary {
    /// Stripe invoice ID.
    #[serde(rename = "id", default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Stripe invoice status (draft, open, paid, uncollectible, void).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Amount due, in the currency's units (decimal string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_due: Option<String>,
    /// Currency (ISO 4217).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// URL of Stripe's hosted invoice page.
    #[serde(
        rename = "hostedInvoiceURL",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub hosted_invoice_url: Option<String>,
}

/// Observed state of a Subscription.
///
/// Written only by Quartermaster, and always as a whole (an atomic field for server-side apply).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
// Atomic: the API server tracks the status as one managed field (`f:status`) instead of one entry per
// leaf, which makes every status write markedly cheaper for it (see BENCHMARKS.md).
#[schemars(extend("x-kubernetes-map-type" = "atomic"))]
pub struct SubscriptionStatus {
    /// The `metadata.generation` the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// kstatus conditions: Ready, Reconciling, Stalled (and Paused when paused).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Stripe customer ID (`cus_...`).
    #[serde(
        rename = "customerID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub customer_id: Option<String>,
    /// Stripe subscription ID (`sub_...`).
    #[serde(
        rename = "subscriptionID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub subscription_id: Option<String>,
    /// Stripe's status of the subscription (trialing, active, past_due, canceled, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stripe_status: Option<String>,
    /// RFC 3339 start of the current billing period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_period_start: Option<String>,
    /// RFC 3339 end of the current billing period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_period_end: Option<String>,
    /// The latest invoice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_invoice: Option<InvoiceSummary>,
    /// The plan (or, for a raw `priceID`, the price) the subscription is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// Whether it ends at the period's end.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel_at_period_end: bool,
    /// RFC 3339 time the subscription ends (canceling at the period's end, or ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<String>,
    /// RFC 3339 time it was first seen `past_due` (cleared once paid): the entitlement's grace period
    /// counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub past_due_since: Option<String>,
}
impl_object_status!(SubscriptionStatus);

//! Metering every kind can use: what a vendor bills, turned into usage events with deterministic keys.
//!
//! Three shapes of usage, one module each:
//! - [`window`]: time a resource exists at the vendor (VM hours), an open window kept in status;
//! - [`counter`]: a cumulative counter the vendor reports (SIM bytes, SMS), metered from a cursor kept in
//!   status, so a replay, a counter reset or a correction is never a second charge;
//! - [`requests`]: per-request events (LLM tokens), summed in memory and written as one event per group
//!   and flush, never one database round trip per request.
//!
//! Meter names, units and price quantities come from [`crate::ledger::METERS`]. The caller records the
//! events before it persists the advanced state (window, cursor, flushed batch): a crash in between
//! replays the same keys, which the ledger ignores.

pub mod counter;
pub mod requests;
pub mod window;

use rust_decimal::Decimal;

use super::{Meter, UsageEvent};

pub use window::{Advance, Observation, OpenWindow, step};

/// A price per the meter's price quantity (an hour of VM seconds, a megabyte of SIM data, a million
/// tokens): what the tenant pays (the vendor's price with the ProviderConfig's markup) and what the
/// vendor charges.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Price {
    /// The tenant's price.
    pub tenant: Decimal,
    /// The vendor's price.
    pub vendor: Decimal,
    /// Currency (ISO 4217).
    pub currency: String,
}

impl Price {
    /// The vendor's `price` with `markup_percent` added for the tenant.
    pub fn with_markup(price: Decimal, currency: &str, markup_percent: Decimal) -> Self {
        Self {
            tenant: marked_up(price, markup_percent),
            vendor: price,
            currency: currency.to_string(),
        }
    }
}

/// `price` with `markup_percent` added (exact decimal arithmetic).
pub fn marked_up(price: Decimal, markup_percent: Decimal) -> Decimal {
    (price * (Decimal::ONE_HUNDRED + markup_percent) / Decimal::ONE_HUNDRED).normalize()
}

/// Who is billed, and for which object.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Subject {
    /// Namespace.
    pub namespace: String,
    /// Project ('' when none).
    pub project: String,
    /// Project UID ('' when none, or not known yet).
    pub project_uid: String,
    /// The object's kind (`VirtualMachine`, `SimCard`, `TokenBudget`).
    pub kind: String,
    /// The object's name.
    pub name: String,
    /// The object's UID.
    pub uid: String,
}

/// One usage event of `subject`: its amount is `quantity` at `price` per the meter's price quantity;
/// without a price the amount is zero, with no currency and the attribute `"unpriced": true`, so the
/// quantity can be priced later.
#[allow(clippy::too_many_arguments)]
fn usage_event(
    subject: &Subject,
    key: String,
    meter: Meter,
    quantity: i64,
    price: Option<&Price>,
    (start, end): (i64, i64),
    mut attributes: serde_json::Value,
) -> UsageEvent {
    let (unit_price, vendor_unit_price, currency) = match price {
        Some(p) => (p.tenant, p.vendor, p.currency.clone()),
        None => {
            attributes["unpriced"] = true.into();
            (Decimal::ZERO, Decimal::ZERO, String::new())
        }
    };
    UsageEvent {
        key,
        namespace: subject.namespace.clone(),
        project: subject.project.clone(),
        project_uid: subject.project_uid.clone(),
        object_kind: subject.kind.clone(),
        object_name: subject.name.clone(),
        object_uid: subject.uid.clone(),
        meter,
        quantity,
        unit_price,
        vendor_unit_price,
        price_quantity: meter.info().priced_per,
        currency,
        window_start: start,
        window_end: end,
        attributes,
    }
}

//! Revenue: each paid Stripe invoice becomes one credit entry of type `payment` in the ledger, for the
//! Project the Subscription entitles, with the invoice as its external reference (so `quartermaster usage`
//! and `invoice` show revenue beside cost). Keyed by the invoice ID: recorded once however often it is
//! seen.

use crate::cloud::stripe::Invoice;
use crate::ledger::{CreditEntry, CreditType, NANOS};

/// Stripe's zero-decimal currencies (amounts are whole units).
const ZERO_DECIMAL: &[&str] = &[
    "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv",
    "xaf", "xof", "xpf",
];
/// Stripe's three-decimal currencies.
const THREE_DECIMAL: &[&str] = &["bhd", "jod", "kwd", "omr", "tnd"];

/// Nano-units of one minor unit of `currency` (Stripe's amounts are in minor units).
pub fn nanos_per_minor_unit(currency: &str) -> i64 {
    let c = currency.to_ascii_lowercase();
    if ZERO_DECIMAL.contains(&c.as_str()) {
        NANOS
    } else if THREE_DECIMAL.contains(&c.as_str()) {
        NANOS / 1000
    } else {
        NANOS / 100
    }
}

/// An amount in minor units as a decimal string of the currency's units, at its precision (`1999` USD →
/// `19.99`, `500` JPY → `500`).
pub fn display_amount(minor: i64, currency: &str) -> String {
    let decimals = match nanos_per_minor_unit(currency) {
        NANOS => 0,
        n if n == NANOS / 1000 => 3,
        _ => 2,
    };
    rust_decimal::Decimal::new(minor, decimals).to_string()
}

/// The Project a payment is credited to.
pub struct Payer<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Project name.
    pub project: &'a str,
    /// Project UID.
    pub project_uid: &'a str,
}

/// The credit entry of a paid invoice (`None` when it is not paid or paid nothing).
pub fn payment(inv: &Invoice, payer: &Payer<'_>) -> Option<CreditEntry> {
    if inv.status.as_deref() != Some("paid") || inv.amount_paid <= 0 {
        return None;
    }
    Some(CreditEntry {
        key: format!("stripe-invoice/{}", inv.id),
        namespace: payer.namespace.to_string(),
        project: payer.project.to_string(),
        project_uid: payer.project_uid.to_string(),
        kind: CreditType::Payment,
        amount_nanos: inv
            .amount_paid
            .checked_mul(nanos_per_minor_unit(&inv.currency))?,
        currency: inv.currency.to_ascii_uppercase(),
        reason: "Stripe invoice paid".into(),
        external_ref: inv.id.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(status: &str, paid: i64, currency: &str) -> Invoice {
        Invoice {
            id: "in_1".into(),
            status: Some(status.into()),
            amount_due: paid,
            amount_paid: paid,
            currency: currency.into(),
            hosted_invoice_url: None,
            created: 0,
            subscription: Some("sub_1".into()),
        }
    }

    #[test]
    fn paid_invoices_become_payments_in_the_currencys_units() {
        let p = Payer {
            namespace: "a",
            project: "p",
            project_uid: "u",
        };
        let c = payment(&inv("paid", 1999, "usd"), &p).unwrap();
        assert_eq!(
            (c.amount_nanos, c.currency.as_str()),
            (19_990_000_000, "USD")
        );
        assert_eq!(c.key, "stripe-invoice/in_1");
        assert_eq!(c.external_ref, "in_1");
        assert_eq!(
            payment(&inv("paid", 500, "jpy"), &p).unwrap().amount_nanos,
            500 * NANOS
        );
        assert_eq!(
            payment(&inv("paid", 1500, "kwd"), &p).unwrap().amount_nanos,
            1_500_000_000
        );
        assert!(payment(&inv("open", 1999, "usd"), &p).is_none());
        assert!(payment(&inv("paid", 0, "usd"), &p).is_none());
        assert_eq!(display_amount(1999, "usd"), "19.99");
        assert_eq!(display_amount(500, "jpy"), "500");
    }
}

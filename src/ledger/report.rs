//! Usage report arithmetic: totals per currency and draft invoices. Showing rows to a person (tables,
//! CSV) is the CLI's job, in [`crate::output`].

use std::collections::BTreeMap;

use super::format_amount;
use super::store::UsageRow;

/// Sum per currency.
pub fn totals(rows: &[UsageRow]) -> BTreeMap<String, i64> {
    let mut t = BTreeMap::new();
    for r in rows {
        *t.entry(r.currency.clone()).or_insert(0) += r.amount_nanos;
    }
    t
}

/// The vendor's cost per currency.
pub fn cost_totals(rows: &[UsageRow]) -> BTreeMap<String, i64> {
    let mut t = BTreeMap::new();
    for r in rows {
        *t.entry(r.currency.clone()).or_insert(0) += r.cost_nanos;
    }
    t
}

/// Revenue (payments received) beside the vendor's cost and the margin, per currency.
pub fn revenue(payments: &[(String, i64)], costs: &BTreeMap<String, i64>) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    let currencies: std::collections::BTreeSet<&String> = payments
        .iter()
        .map(|(c, _)| c)
        .chain(costs.keys())
        .collect();
    for c in currencies {
        let paid: i64 = payments
            .iter()
            .filter(|(pc, _)| pc == c)
            .map(|(_, n)| n)
            .sum();
        let cost = costs.get(c).copied().unwrap_or(0);
        out.insert(
            c.clone(),
            serde_json::json!({"payments": format_amount(paid), "vendorCost": format_amount(cost),
                               "margin": format_amount(paid - cost)}),
        );
    }
    serde_json::Value::Object(out)
}

/// A draft invoice: line items per meter and object, and totals per currency.
pub fn invoice(
    namespace: &str,
    project: &str,
    period: &str,
    by_object: &[UsageRow],
) -> serde_json::Value {
    let lines: Vec<_> = by_object
        .iter()
        .map(|r| serde_json::json!({"object": r.key, "meter": r.meter, "quantity": r.quantity,
                                    "amount": format_amount(r.amount_nanos), "currency": r.currency}))
        .collect();
    let totals: BTreeMap<String, String> = totals(by_object)
        .into_iter()
        .map(|(c, t)| (c, format_amount(t)))
        .collect();
    serde_json::json!({
        "status": "draft",
        "project": format!("{namespace}/{project}"),
        "period": period,
        "lineItems": lines,
        "totals": totals,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str, amount: i64) -> UsageRow {
        UsageRow {
            key: key.into(),
            meter: "vm_seconds".into(),
            quantity: 3600,
            amount_nanos: amount,
            cost_nanos: amount,
            currency: "USD".into(),
        }
    }

    #[test]
    fn invoices_total_per_currency() {
        let mut rows = vec![
            row("VirtualMachine/web", 5_950_000),
            row("VirtualMachine/a,b", 23_800_000),
        ];
        let inv = invoice("demo", "acme", "2026-11", &rows);
        assert_eq!(inv["totals"]["USD"], "0.02975");
        assert_eq!(inv["lineItems"].as_array().unwrap().len(), 2);
        rows[1].currency = "EUR".into();
        let t = totals(&rows);
        assert_eq!((t["USD"], t["EUR"]), (5_950_000, 23_800_000));
        let r = revenue(&[("USD".into(), 10_000_000_000)], &cost_totals(&rows));
        assert_eq!(r["USD"]["margin"], "9.99405");
        assert_eq!(r["EUR"]["payments"], "0.00");
    }
}

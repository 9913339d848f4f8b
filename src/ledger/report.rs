//! Usage reports: totals per currency, invoices (draft, then final once the month is closed) and the
//! month-closing rule. Showing rows to a person (tables, CSV) is [`crate::output`]'s job.

use std::collections::BTreeMap;

use super::store::{GroupBy, ProjectRef, UsageRow};
use super::{Ledger, LedgerError, format_amount};

/// The invoice of Project `me` for `period` (`[from, to)`): line items per meter and object and totals
/// ([`invoice`]), `status` final once the month is closed, revenue beside vendor cost, what was reported
/// to Stripe beside what was recorded (when anything was), and the Project's UID.
pub async fn project_invoice(
    l: &Ledger,
    me: &ProjectRef<'_>,
    period: &str,
    (from, to): (i64, i64),
) -> Result<serde_json::Value, LedgerError> {
    let rows = l.usage(me, from, to, GroupBy::Object).await?;
    let mut inv = invoice(me.namespace, me.name, period, &rows);
    if l.is_closed(me.uid, period).await? {
        inv["status"] = "final".into();
    }
    let payments = l.payments(me, from, to).await?;
    inv["revenue"] = revenue(&payments, &cost_totals(&rows));
    let reported = l.reported_totals(me.uid, from, to).await?;
    if reported.iter().any(|(_, r, _)| *r != 0) {
        inv["reportedToStripe"] = reported
            .iter()
            .map(|(m, r, all)| serde_json::json!({"meter": m, "reported": r, "recorded": all}))
            .collect();
    }
    inv["projectUID"] = me.uid.into();
    Ok(inv)
}

/// Closes month `period` of Project `me`, which ended at `end`: only a past month, and only for a
/// Project the ledger knows by UID. `Ok(true)` when this call closed it (later usage for that month is
/// booked on the next open one).
pub async fn close_month(
    l: &Ledger,
    me: &ProjectRef<'_>,
    period: &str,
    end: i64,
) -> Result<bool, String> {
    let (ns, name) = (me.namespace, me.name);
    if me.uid.is_empty() {
        return Err(format!(
            "project {ns}/{name} has only rows from before the ledger knew Project UIDs: run the controller once so the Project claims them, then finalize"
        ));
    }
    if jiff::Timestamp::now().as_second() < end {
        return Err(format!(
            "{period} has not ended yet: only a past month can be finalized"
        ));
    }
    l.close_period(me.uid, period)
        .await
        .map_err(|e| e.to_string())
}

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

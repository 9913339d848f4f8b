//! Automatic quota top-ups, exactly once per crossing (pure decisions).
//!
//! A top-up is a billable order and 1NCE offers no idempotency key, so:
//! - a crossing is identified by the quota's state (its last change and total): one order per state;
//! - the order's record (that state) is written to status *before* the order is sent;
//! - while a record is unconfirmed, nothing is ordered: the quota is read until its state moves on
//!   (confirmed, the order's cost goes to the ledger), and after `changeTimeoutSeconds` without that the
//!   SimCard stalls `TopUpUnconfirmed` for a human to check 1NCE's orders — never a second order;
//! - a refused order (4xx) is not sent again for the same crossing;
//! - at most `maxTopUpsPerMonth` per quota and calendar month.

use crate::cloud::onence::Quota;
use crate::crd::sim_card::{QuotaPolicy, TopUpRecord};

/// What to do about one quota.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopUp {
    /// Nothing.
    Nothing,
    /// Record this state, then order once.
    Order {
        /// The quota state the order answers.
        based_on: String,
    },
    /// An order was sent and the quota does not show it yet.
    Wait,
    /// The quota shows the order: mark it confirmed and bill it.
    Confirmed,
    /// The order never showed within the timeout.
    Unconfirmed,
    /// Under the threshold, but the monthly limit is reached.
    Capped,
}

/// The identity of a quota's state: a top-up changes it.
pub fn state(q: &Quota) -> String {
    format!("{}|{}", q.last_change.as_deref().unwrap_or(""), q.total)
}

/// Remaining quota in percent of the last top-up (else of the total).
pub fn percent_left(q: &Quota) -> i64 {
    let base = q.last_added.filter(|a| *a > 0).unwrap_or(q.total);
    if base <= 0 {
        return 100;
    }
    q.remaining.saturating_mul(100) / base
}

/// Decides for one quota. `waited`: seconds since an unconfirmed record's order was sent.
pub fn decide(
    policy: Option<&QuotaPolicy>,
    q: &Quota,
    record: Option<&TopUpRecord>,
    month: &str,
    (waited, timeout): (i64, i64),
) -> TopUp {
    let now_state = state(q);
    if let Some(r) = record.filter(|r| !r.confirmed && !r.refused) {
        return if r.based_on != now_state {
            TopUp::Confirmed
        } else if waited > timeout {
            TopUp::Unconfirmed
        } else {
            TopUp::Wait
        };
    }
    let Some(p) = policy.filter(|p| p.auto_top_up) else {
        return TopUp::Nothing;
    };
    if percent_left(q) > i64::from(p.threshold_percent)
        || record.is_some_and(|r| r.based_on == now_state)
    {
        return TopUp::Nothing;
    }
    let this_month = record
        .filter(|r| r.month == month)
        .map_or(0, |r| r.top_ups_this_month);
    if this_month >= p.max_top_ups_per_month {
        return TopUp::Capped;
    }
    TopUp::Order {
        based_on: now_state,
    }
}

/// The record to write before ordering.
pub fn record(
    quota: &str,
    based_on: String,
    previous: Option<&TopUpRecord>,
    month: &str,
    now: String,
) -> TopUpRecord {
    let count = previous
        .filter(|r| r.month == month)
        .map_or(0, |r| r.top_ups_this_month);
    TopUpRecord {
        quota: quota.to_string(),
        based_on,
        requested_at: now,
        confirmed: false,
        refused: false,
        month: month.to_string(),
        top_ups_this_month: count + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(remaining: i64, changed: &str) -> Quota {
        Quota {
            remaining,
            total: 1000,
            last_added: Some(1000),
            expiry: None,
            last_change: Some(changed.into()),
            threshold_percent: None,
        }
    }
    fn policy(max: u32) -> QuotaPolicy {
        QuotaPolicy {
            auto_top_up: true,
            threshold_percent: 10,
            max_top_ups_per_month: max,
        }
    }

    #[test]
    fn one_order_per_crossing() {
        let p = policy(3);
        assert_eq!(
            decide(Some(&p), &quota(500, "a"), None, "2026-11", (0, 600)),
            TopUp::Nothing
        );
        let under = quota(90, "a");
        let TopUp::Order { based_on } = decide(Some(&p), &under, None, "2026-11", (0, 600)) else {
            panic!("no order under the threshold");
        };
        let r = record("data", based_on, None, "2026-11", "t".into());
        // Recorded, the quota unchanged: wait, never order again; then stall, still never order.
        assert_eq!(
            decide(Some(&p), &under, Some(&r), "2026-11", (5, 600)),
            TopUp::Wait
        );
        assert_eq!(
            decide(Some(&p), &under, Some(&r), "2026-11", (601, 600)),
            TopUp::Unconfirmed
        );
        // The quota moved on: confirmed.
        let topped = quota(1090, "b");
        assert_eq!(
            decide(Some(&p), &topped, Some(&r), "2026-11", (5, 600)),
            TopUp::Confirmed
        );
        let done = TopUpRecord {
            confirmed: true,
            ..r.clone()
        };
        assert_eq!(
            decide(Some(&p), &topped, Some(&done), "2026-11", (0, 600)),
            TopUp::Nothing
        );
        // A refused order is not sent again for the same crossing.
        let refused = TopUpRecord { refused: true, ..r };
        assert_eq!(
            decide(Some(&p), &under, Some(&refused), "2026-11", (0, 600)),
            TopUp::Nothing
        );
    }

    #[test]
    fn the_monthly_limit_holds_and_a_new_month_starts_over() {
        let p = policy(1);
        let r = TopUpRecord {
            quota: "data".into(),
            based_on: "a|1000".into(),
            requested_at: "t".into(),
            confirmed: true,
            refused: false,
            month: "2026-11".into(),
            top_ups_this_month: 1,
        };
        let low_again = quota(50, "b");
        assert_eq!(
            decide(Some(&p), &low_again, Some(&r), "2026-11", (0, 600)),
            TopUp::Capped
        );
        assert!(matches!(
            decide(Some(&p), &low_again, Some(&r), "2026-12", (0, 600)),
            TopUp::Order { .. }
        ));
        assert_eq!(
            decide(None, &low_again, Some(&r), "2026-12", (0, 600)),
            TopUp::Nothing
        );
    }
}

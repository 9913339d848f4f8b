//! A Subscription's decide steps, pure: which changes bring Stripe's subscription to the spec (the
//! licensed item's price and quantity, the plan's metered prices, `cancel_at_period_end`), what status
//! records of Stripe's word, and the object's health from Stripe's status. Table-tested below; `apply`
//! reads Stripe, decides, and acts (each change through Stripe's per-subscription limits).

use std::time::Duration;

use super::plan::Wanted;
use crate::cloud::stripe::Subscription as StripeSub;
use crate::crd::SubscriptionStatus;
use crate::crd::conditions::{Health, reason};

/// Stripe statuses a subscription never leaves.
pub const TERMINAL: [&str; 2] = ["canceled", "incomplete_expired"];

/// The changes that bring `sub` to the spec.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// The licensed item (its ID) to move to the wanted price and quantity.
    pub item: Option<String>,
    /// Metered prices to add.
    pub add: Vec<String>,
    /// Metered items (their IDs) to remove.
    pub remove: Vec<String>,
    /// `cancel_at_period_end` to set.
    pub cancel_at_period_end: Option<bool>,
}

/// What differs between `sub` and the spec (`wanted`, `quantity`, `cancel_at_period_end`).
pub fn changes(
    sub: &StripeSub,
    wanted: &Wanted,
    quantity: u32,
    cancel_at_period_end: bool,
) -> Changes {
    // The licensed item: the one with a quantity (metered items have none).
    let item = sub
        .items
        .iter()
        .find(|i| i.quantity.is_some())
        .filter(|i| i.price != wanted.price || i.quantity != Some(i64::from(quantity)))
        .map(|i| i.id.clone());
    Changes {
        item,
        add: wanted
            .metered
            .iter()
            .filter(|p| !sub.items.iter().any(|i| &i.price == *p))
            .cloned()
            .collect(),
        remove: sub
            .items
            .iter()
            .filter(|i| i.quantity.is_none() && !wanted.metered.contains(&i.price))
            .map(|i| i.id.clone())
            .collect(),
        cancel_at_period_end: (sub.cancel_at_period_end != cancel_at_period_end)
            .then_some(cancel_at_period_end),
    }
}

/// `t` (unix seconds) as RFC 3339.
pub fn rfc3339(t: i64) -> Option<String> {
    jiff::Timestamp::from_second(t).ok().map(|t| t.to_string())
}

/// Records what Stripe says of the subscription in status; `now` (RFC 3339) starts a past-due spell.
pub fn observe(st: &mut SubscriptionStatus, sub: &StripeSub, now: &str) {
    st.stripe_status = Some(sub.status.clone());
    st.current_period_start = rfc3339(sub.current_period.0);
    st.current_period_end = rfc3339(sub.current_period.1);
    st.cancel_at_period_end = sub.cancel_at_period_end;
    st.ends_at = match sub.ended_at {
        Some(t) => rfc3339(t),
        None if sub.cancel_at_period_end => rfc3339(sub.current_period.1),
        None => None,
    };
    if sub.status == "past_due" {
        if st.past_due_since.is_none() {
            st.past_due_since = Some(now.to_string());
        }
    } else {
        st.past_due_since = None;
    }
}

/// The object's health from Stripe's status, and how soon to look again at the latest (just after
/// the period's end).
pub fn health(sub: &StripeSub, label: &str, now: i64) -> (Health, Option<Duration>) {
    let end = rfc3339(sub.current_period.1).unwrap_or_default();
    let h = match sub.status.as_str() {
        "active" | "trialing" => Health::ready(format!("{} on {label} until {end}", sub.status)),
        "incomplete" | "past_due" | "unpaid" => Health::not_ready(
            reason::PAYMENT_FAILED,
            format!(
                "Stripe subscription {} is {}: the customer's payment failed or is due",
                sub.id, sub.status
            ),
        ),
        "paused" => Health::not_ready(
            reason::SUBSCRIPTION_PAUSED,
            format!("Stripe subscription {} is paused", sub.id),
        ),
        s if TERMINAL.contains(&s) => Health::stalled(
            reason::SUBSCRIPTION_ENDED,
            format!(
                "Stripe subscription {} is {s} for good; it is not recreated (that would charge again): create a new Subscription to subscribe again",
                sub.id
            ),
        ),
        other => Health::not_ready(reason::PROGRESSING, format!("Stripe status {other:?}")),
    };
    let left = sub.current_period.1 - now;
    (
        h,
        (left > 0).then(|| Duration::from_secs(u64::try_from(left).unwrap_or(0) + 5)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::stripe::Item;

    fn sub(status: &str, items: &[(&str, &str, Option<i64>)], cancel: bool) -> StripeSub {
        StripeSub {
            id: "sub_1".into(),
            status: status.into(),
            customer: "cus_1".into(),
            current_period: (1_000, 2_000),
            cancel_at_period_end: cancel,
            latest_invoice: None,
            items: items
                .iter()
                .map(|(id, price, quantity)| Item {
                    id: (*id).into(),
                    price: (*price).into(),
                    quantity: *quantity,
                })
                .collect(),
            owner: None,
            ended_at: None,
        }
    }

    fn wanted(price: &str, metered: &[&str]) -> Wanted {
        Wanted {
            label: "pro".into(),
            price: price.into(),
            metered: metered.iter().map(|m| (*m).to_string()).collect(),
            entitlements: None,
        }
    }

    #[test]
    fn only_what_differs_from_the_spec_is_changed() {
        let s = sub(
            "active",
            &[
                ("si_l", "price_basic", Some(1)),
                ("si_m", "price_vm_hours", None),
            ],
            false,
        );
        // At the spec: nothing.
        assert_eq!(
            changes(&s, &wanted("price_basic", &["price_vm_hours"]), 1, false),
            Changes::default()
        );
        // (wanted price, metered, quantity, cancel) → changes
        let c = changes(&s, &wanted("price_pro", &["price_vm_hours"]), 1, false);
        assert_eq!(c.item.as_deref(), Some("si_l"));
        let c = changes(&s, &wanted("price_basic", &["price_vm_hours"]), 3, false);
        assert_eq!(c.item.as_deref(), Some("si_l"));
        let c = changes(&s, &wanted("price_basic", &["price_sim_mb"]), 1, false);
        assert_eq!(
            (c.add, c.remove),
            (vec!["price_sim_mb".to_string()], vec!["si_m".to_string()])
        );
        let c = changes(&s, &wanted("price_basic", &["price_vm_hours"]), 1, true);
        assert_eq!(c.cancel_at_period_end, Some(true));
        // A subscription without a licensed item has no item to move.
        let metered_only = sub("active", &[("si_m", "price_vm_hours", None)], false);
        assert_eq!(
            changes(
                &metered_only,
                &wanted("price_pro", &["price_vm_hours"]),
                1,
                false
            )
            .item,
            None
        );
    }

    #[test]
    fn stripes_status_decides_health_and_a_past_due_spell_keeps_its_start() {
        // status → (health kind, reason)
        let rows = [
            ("active", "Ready", ""),
            ("trialing", "Ready", ""),
            ("past_due", "NotReady", reason::PAYMENT_FAILED),
            ("unpaid", "NotReady", reason::PAYMENT_FAILED),
            ("incomplete", "NotReady", reason::PAYMENT_FAILED),
            ("paused", "NotReady", reason::SUBSCRIPTION_PAUSED),
            ("canceled", "Stalled", reason::SUBSCRIPTION_ENDED),
            ("incomplete_expired", "Stalled", reason::SUBSCRIPTION_ENDED),
            ("something_new", "NotReady", reason::PROGRESSING),
        ];
        for (status, kind, why) in rows {
            let (h, resync) = health(&sub(status, &[], false), "pro", 1_500);
            let (got, r) = match &h {
                Health::Ready { .. } => ("Ready", ""),
                Health::NotReady { reason, .. } => ("NotReady", reason.as_str()),
                Health::Stalled { reason, .. } => ("Stalled", reason.as_str()),
                Health::Progressing { reason, .. } => ("Progressing", reason.as_str()),
            };
            assert_eq!((got, r), (kind, why), "{status}");
            assert_eq!(resync, Some(Duration::from_secs(505)));
        }
        assert_eq!(health(&sub("active", &[], false), "pro", 2_500).1, None);
        let mut st = SubscriptionStatus::default();
        observe(&mut st, &sub("past_due", &[], true), "2026-12-01T00:00:00Z");
        observe(&mut st, &sub("past_due", &[], true), "2026-12-02T00:00:00Z");
        assert_eq!(st.past_due_since.as_deref(), Some("2026-12-01T00:00:00Z"));
        assert_eq!(st.ends_at, rfc3339(2_000), "cancels at the period's end");
        observe(&mut st, &sub("active", &[], false), "2026-12-03T00:00:00Z");
        assert_eq!((st.past_due_since, st.ends_at), (None, None));
    }
}

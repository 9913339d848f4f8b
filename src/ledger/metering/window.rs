//! The time-window meter (VM hours): a pure state machine over an open window kept in the object's status.
//!
//! A server the vendor bills has one open window (`since`, size, the tenant's hourly price and the
//! vendor's). Each reconcile closes the whole UTC hours that have passed; the end of billing (the server
//! gone, released or deleted), a resize, or a price becoming known also closes the partial hour at that
//! moment (so a resize mid-hour splits the hour into two prices, exact to the second). Each closed window
//! becomes one usage event keyed `vm/<uid>/<window start>`, with the tenant's amount and the vendor's cost.
//!
//! What the vendors bill: DigitalOcean, Linode and Vultr bill a server from its creation to its deletion,
//! powered off or not (their pricing pages); Contabo bills to the end of the paid period, and keeps a
//! cancelled server until then (it is still observed, so still metered). So a window is open for every
//! second a server exists at the vendor, whatever its power state.
//!
//! A server whose price is unknown (no price on the server object, none in the catalog, none remembered)
//! still gets a window: its seconds are recorded with a zero amount, no currency and the attribute
//! `"unpriced": true`, so they can be priced later; the window closes as soon as a price is known.
//!
//! # Guarantees
//! The caller writes the events first and persists the advanced window only after the ledger accepted
//! them. A crash or ledger outage in between leaves the old window in status: the next reconcile emits the
//! same windows with the same keys (no double count) plus whatever accrued since (nothing lost).

use super::{Price, Subject, usage_event};
use crate::ledger::{Meter, UsageEvent};

/// The open (not yet billed) window of a server the vendor bills.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenWindow {
    /// Start, unix seconds.
    pub since: i64,
    /// Size slug billed for this window.
    pub size: String,
    /// Its price; `None`: unknown (the seconds are recorded unpriced).
    pub price: Option<Price>,
}

/// What the vendor holds now.
#[derive(Clone, Debug)]
pub struct Observation {
    /// The vendor bills the server now (it exists, in any power state).
    pub billed: bool,
    /// Its current size.
    pub size: String,
    /// The current size's price, when known.
    pub price: Option<Price>,
}

/// What one metering step advanced: the windows it closed and the one left open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advance {
    /// Closed windows to record.
    pub events: Vec<UsageEvent>,
    /// The window to persist afterwards.
    pub open: Option<OpenWindow>,
}

const HOUR: i64 = 3600;

/// Advances metering to `now`. `closing` closes the window entirely (deletion).
pub fn step(
    subject: &Subject,
    open: Option<&OpenWindow>,
    obs: &Observation,
    now: i64,
    closing: bool,
) -> Advance {
    let mut events = Vec::new();
    let mut next = open.cloned();
    if let Some(w) = open {
        let size_changed = w.size != obs.size;
        // A price that becomes known, or changes (a vendor's new price, a new markup), starts a window.
        let repriced = obs.price.is_some() && w.price != obs.price;
        let close_all = closing || !obs.billed || size_changed || repriced;
        let mut start = w.since;
        loop {
            let boundary = (start.div_euclid(HOUR) + 1) * HOUR;
            let end = if boundary <= now {
                boundary
            } else if close_all && now > start {
                now
            } else {
                break;
            };
            events.push(event(subject, w, start, end));
            start = end;
            if end == now {
                break;
            }
        }
        next = (!close_all).then(|| OpenWindow {
            since: start,
            ..w.clone()
        });
    }
    if next.is_none() && obs.billed && !closing {
        next = Some(OpenWindow {
            since: now,
            size: obs.size.clone(),
            price: obs.price.clone(),
        });
    }
    Advance { events, open: next }
}

fn event(s: &Subject, w: &OpenWindow, start: i64, end: i64) -> UsageEvent {
    usage_event(
        s,
        format!("vm/{}/{start}", s.uid),
        Meter::VmSeconds,
        end - start,
        w.price.as_ref(),
        (start, end),
        serde_json::json!({ "size": w.size }),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_tenant_pays_the_markup_and_the_vendor_cost_is_kept() {
        let s = subject();
        let price =
            Price::with_markup(Decimal::from_str("0.01").unwrap(), "USD", Decimal::from(20));
        assert_eq!(price.tenant, Decimal::from_str("0.012").unwrap());
        let w = OpenWindow {
            since: 0,
            size: "small".into(),
            price: Some(price.clone()),
        };
        let b = Observation {
            billed: true,
            size: "small".into(),
            price: Some(price),
        };
        let e = &step(&s, Some(&w), &b, 3600, false).events[0];
        assert_eq!(e.amount_nanos(), 12_000_000);
        assert_eq!(e.vendor_amount_nanos(), 10_000_000);
    }

    /// DigitalOcean, Linode and Vultr bill powered-off servers in full: a stop does not close billing.
    #[test]
    fn a_powered_off_server_is_still_billed() {
        let s = subject();
        let w = OpenWindow {
            since: 0,
            size: "small".into(),
            price: Some(usd("0.01")),
        };
        let off = obs(true, "small", "0.01");
        let st = step(&s, Some(&w), &off, 5400, false);
        assert_eq!(st.events.len(), 1);
        assert_eq!(st.open.unwrap().since, 3600);
    }

    use super::*;
    use rust_decimal::Decimal;
    use std::str::FromStr;

    fn subject() -> Subject {
        Subject {
            namespace: "demo".into(),
            project: "acme".into(),
            project_uid: "p-uid".into(),
            kind: "VirtualMachine".into(),
            name: "web".into(),
            uid: "u1".into(),
        }
    }
    fn usd(price: &str) -> Price {
        let p = Decimal::from_str(price).unwrap();
        Price {
            tenant: p,
            vendor: p,
            currency: "USD".into(),
        }
    }
    fn obs(billed: bool, size: &str, price: &str) -> Observation {
        Observation {
            billed,
            size: size.into(),
            price: Some(usd(price)),
        }
    }

    /// The known scenario: 90 minutes, resized after 30 minutes, starting mid-hour; exact sums.
    #[test]
    fn ninety_minutes_with_a_resize_after_thirty() {
        let t0 = 1_793_491_200 + 20 * 60; // 2026-11-01 00:20 UTC
        let s = subject();
        let a = step(&s, None, &obs(true, "small", "0.0119"), t0, false);
        assert!(a.events.is_empty());
        let w = a.open.unwrap();
        assert_eq!(w.since, t0);
        // 30 minutes later it is resized (observed with the new size): [00:20, 00:50) at 0.0119.
        let b = step(
            &s,
            Some(&w),
            &obs(true, "large", "0.0238"),
            t0 + 1800,
            false,
        );
        assert_eq!(b.events.len(), 1);
        assert_eq!(
            (b.events[0].window_start, b.events[0].window_end),
            (t0, t0 + 1800)
        );
        assert_eq!(b.events[0].amount_nanos(), 5_950_000);
        // Reconciles in between close whole hours only: at 01:10 the window [00:50, 01:00) is closed.
        let w = b.open.unwrap();
        assert_eq!((w.since, w.size.as_str()), (t0 + 1800, "large"));
        let c = step(
            &s,
            Some(&w),
            &obs(true, "large", "0.0238"),
            t0 + 3000,
            false,
        );
        assert_eq!(c.events.len(), 1);
        assert_eq!(c.events[0].quantity, 600);
        // Stopped at 01:50 (90 minutes after start): [01:00, 01:50) at 0.0238.
        let d = step(
            &s,
            c.open.as_ref(),
            &obs(false, "large", "0.0238"),
            t0 + 5400,
            false,
        );
        assert_eq!(d.events.len(), 1);
        assert_eq!(d.events[0].quantity, 3000);
        assert!(d.open.is_none());
        let total: i64 = [&b.events, &c.events, &d.events]
            .iter()
            .flat_map(|e| e.iter())
            .map(UsageEvent::amount_nanos)
            .sum();
        // 30 min × 0.0119/h + 60 min × 0.0238/h = 0.00595 + 0.0238 = 0.02975
        assert_eq!(total, 29_750_000);
        let secs: i64 = [&b.events, &c.events, &d.events]
            .iter()
            .flat_map(|e| e.iter())
            .map(|e| e.quantity)
            .sum();
        assert_eq!(secs, 5400);
    }

    #[test]
    fn replay_after_a_crash_yields_the_same_keys() {
        let s = subject();
        let w = OpenWindow {
            since: 7200 + 100,
            size: "small".into(),
            price: Some(usd("0.01")),
        };
        let first = step(
            &s,
            Some(&w),
            &obs(true, "small", "0.01"),
            3 * 3600 + 5,
            false,
        );
        // The status was not advanced: the same window comes back, with the same key, plus what accrued.
        let again = step(
            &s,
            Some(&w),
            &obs(true, "small", "0.01"),
            4 * 3600 + 5,
            false,
        );
        assert_eq!(first.events[0].key, again.events[0].key);
        assert_eq!(first.events[0], again.events[0]);
        assert_eq!(again.events.len(), 2);
        assert_eq!(again.open.unwrap().since, 4 * 3600);
    }

    #[test]
    fn nothing_billed_opens_nothing_and_an_unknown_price_is_metered_unpriced() {
        let s = subject();
        assert_eq!(
            step(&s, None, &obs(false, "small", "0.01"), 100, false),
            Advance {
                events: vec![],
                open: None
            }
        );
        let no_price = Observation {
            billed: true,
            size: "small".into(),
            price: None,
        };
        // The seconds are kept: a window opens without a price, and closes unpriced once one is known.
        let w = step(&s, None, &no_price, 100, false).open.unwrap();
        assert_eq!((w.since, w.price.as_ref()), (100, None));
        let priced = step(&s, Some(&w), &obs(true, "small", "0.01"), 700, false);
        assert_eq!(priced.events.len(), 1);
        let e = &priced.events[0];
        assert_eq!(
            (e.quantity, e.amount_nanos(), e.currency.as_str()),
            (600, 0, "")
        );
        assert_eq!(e.attributes["unpriced"], true);
        let next = priced.open.unwrap();
        assert_eq!((next.since, next.price), (700, Some(usd("0.01"))));
        let w = OpenWindow {
            since: 10,
            size: "small".into(),
            price: Some(usd("1")),
        };
        let closing = step(&s, Some(&w), &obs(true, "small", "1"), 70, true);
        assert_eq!(closing.events.len(), 1);
        assert_eq!(closing.events[0].quantity, 60);
        assert!(closing.open.is_none());
    }
}

//! VM-hour metering, as a pure state machine over an open window kept in the VirtualMachine's status.
//!
//! A running VM has one open window (`since`, size, hourly price). Each reconcile closes the whole UTC
//! hours that have passed; a stop, resize or deletion also closes the partial hour at that moment (so a
//! resize mid-hour splits the hour into two prices, exact to the second). Each closed window becomes one
//! usage event keyed `vm/<uid>/<window start>`.
//!
//! # Guarantees
//! The caller writes the events first and persists the advanced window only after the ledger accepted
//! them. A crash or ledger outage in between leaves the old window in status: the next reconcile emits the
//! same windows with the same keys (no double count) plus whatever accrued since (nothing lost).

use rust_decimal::Decimal;

use super::{Meter, UsageEvent};

/// The open (not yet billed) window of a running VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenWindow {
    /// Start, unix seconds.
    pub since: i64,
    /// Size slug billed for this window.
    pub size: String,
    /// Hourly price of that size.
    pub hourly_price: Decimal,
    /// Currency.
    pub currency: String,
}

/// Who is billed.
#[derive(Clone, Debug)]
pub struct Subject {
    /// Namespace.
    pub namespace: String,
    /// Project ('' when none).
    pub project: String,
    /// VM name.
    pub name: String,
    /// VM UID.
    pub uid: String,
}

/// What the VM is doing now.
#[derive(Clone, Debug)]
pub struct Observation {
    /// The vendor reports it running.
    pub running: bool,
    /// Its current size.
    pub size: String,
    /// The current size's hourly price and currency, when known.
    pub price: Option<(Decimal, String)>,
}

/// Result of one metering step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
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
) -> Step {
    let mut events = Vec::new();
    let mut next = open.cloned();
    if let Some(w) = open {
        let size_changed = w.size != obs.size;
        let close_all = closing || !obs.running || size_changed;
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
    if next.is_none()
        && obs.running
        && !closing
        && let Some((price, currency)) = &obs.price
    {
        next = Some(OpenWindow {
            since: now,
            size: obs.size.clone(),
            hourly_price: *price,
            currency: currency.clone(),
        });
    }
    Step { events, open: next }
}

fn event(s: &Subject, w: &OpenWindow, start: i64, end: i64) -> UsageEvent {
    UsageEvent {
        key: format!("vm/{}/{start}", s.uid),
        namespace: s.namespace.clone(),
        project: s.project.clone(),
        object_kind: "VirtualMachine".into(),
        object_name: s.name.clone(),
        object_uid: s.uid.clone(),
        meter: Meter::VmSeconds,
        quantity: end - start,
        unit_price: w.hourly_price,
        price_quantity: HOUR,
        currency: w.currency.clone(),
        window_start: start,
        window_end: end,
        attributes: serde_json::json!({ "size": w.size }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn subject() -> Subject {
        Subject {
            namespace: "demo".into(),
            project: "acme".into(),
            name: "web".into(),
            uid: "u1".into(),
        }
    }
    fn obs(running: bool, size: &str, price: &str) -> Observation {
        Observation {
            running,
            size: size.into(),
            price: Some((Decimal::from_str(price).unwrap(), "USD".into())),
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
            hourly_price: Decimal::from_str("0.01").unwrap(),
            currency: "USD".into(),
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
    fn stopped_vm_opens_nothing_and_unknown_price_waits() {
        let s = subject();
        assert_eq!(
            step(&s, None, &obs(false, "small", "0.01"), 100, false),
            Step {
                events: vec![],
                open: None
            }
        );
        let no_price = Observation {
            running: true,
            size: "small".into(),
            price: None,
        };
        assert!(step(&s, None, &no_price, 100, false).open.is_none());
        let w = OpenWindow {
            since: 10,
            size: "small".into(),
            hourly_price: Decimal::ONE,
            currency: "USD".into(),
        };
        let closing = step(&s, Some(&w), &obs(true, "small", "1"), 70, true);
        assert_eq!(closing.events.len(), 1);
        assert_eq!(closing.events[0].quantity, 60);
        assert!(closing.open.is_none());
    }
}

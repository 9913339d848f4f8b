//! The cumulative-counter meter (SIM bytes, SMS): a vendor reports a running total, and each reading
//! is billed by how far it passed the last billed reading, the cursor kept in the object's status.
//!
//! - **Epochs.** A counter belongs to an epoch the vendor names (a quota, a contract period): a reading
//!   in a new epoch counts from zero. Usage of the old epoch after its last reading is the caller's to
//!   read before it moves on (the vendor's final figure for that epoch).
//! - **Corrections.** A reading below the cursor in the same epoch (the vendor corrected a figure down)
//!   is an adjustment: a negative event of the difference, keyed by the epoch's correction number, and
//!   the cursor moves down to the reading. Nothing is ever charged twice: what was billed and taken
//!   back is billed again only if the counter passes it again.
//! - **Replays.** An event's key is `<kind>/<uid>/<meter>/<epoch>/<from>` (after the epoch's `n`-th
//!   correction, `<epoch>/<n>:<from>`; a correction's, `<epoch>/c<n>`): the counter's value where the
//!   event starts. After a crash between the ledger write and the status write, the next reading may be
//!   larger than the first attempt's; its event has the same key but a larger quantity, which the ledger
//!   would drop. [`settle`] therefore asks the ledger what the key holds and bills the rest as the next
//!   event (from the held end), so nothing is lost and nothing counted twice.

use super::{Price, Subject, usage_event};
use crate::ledger::{Ledger, LedgerError, Meter, UsageEvent};

/// How far a counter is billed: persisted in the object's status after the ledger accepted the event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// The counter's epoch (the vendor's quota or period identifier).
    pub epoch: String,
    /// The highest value of the counter already billed in that epoch.
    pub billed: i64,
    /// When that value was read (unix seconds): the start of the next event's window.
    pub at: i64,
    /// Downward corrections made in this epoch so far (they number the keys that follow them).
    pub corrections: u32,
}

/// One reading of the vendor's counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reading {
    /// The counter's epoch.
    pub epoch: String,
    /// The counter's value, in the meter's unit.
    pub value: i64,
    /// When it was read (unix seconds).
    pub at: i64,
    /// When the epoch began (unix seconds; 0 when unknown): a new epoch's first event starts no
    /// earlier (a day's usage is booked on that day).
    pub epoch_start: i64,
}

/// What one reading advanced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CounterStep {
    /// The event to record, if the counter passed the cursor.
    pub event: Option<UsageEvent>,
    /// The cursor to persist once the ledger accepted the event.
    pub cursor: Cursor,
    /// How far the reading was below the cursor (a correction, recorded as a negative event), if it was.
    pub below_cursor: Option<i64>,
}

/// Advances `cursor` to `reading`. Without a cursor (the first reading of an object), metering starts
/// at the reading: what the counter held before the object claimed it is not this object's usage.
pub fn step(
    subject: &Subject,
    meter: Meter,
    cursor: Option<&Cursor>,
    reading: &Reading,
    price: Option<&Price>,
) -> CounterStep {
    let start = match cursor {
        None => {
            return CounterStep {
                event: None,
                cursor: Cursor {
                    epoch: reading.epoch.clone(),
                    billed: reading.value,
                    at: reading.at,
                    corrections: 0,
                },
                below_cursor: None,
            };
        }
        // A new epoch's counter starts at zero.
        Some(c) if c.epoch != reading.epoch => Cursor {
            epoch: reading.epoch.clone(),
            billed: 0,
            at: c.at.max(reading.epoch_start).min(reading.at),
            corrections: 0,
        },
        Some(c) => c.clone(),
    };
    let prefix = format!(
        "{}/{}/{}/{}",
        subject.kind.to_ascii_lowercase(),
        subject.uid,
        meter.as_str(),
        start.epoch
    );
    if reading.value == start.billed {
        return CounterStep {
            event: None,
            cursor: start,
            below_cursor: None,
        };
    }
    if reading.value < start.billed {
        let n = start.corrections + 1;
        let event = usage_event(
            subject,
            format!("{prefix}/c{n}"),
            meter,
            reading.value - start.billed,
            price,
            (start.at, reading.at.max(start.at)),
            serde_json::json!({ "epoch": start.epoch, "from": start.billed, "to": reading.value, "correction": true }),
        );
        return CounterStep {
            event: Some(event),
            cursor: Cursor {
                epoch: start.epoch.clone(),
                billed: reading.value,
                at: reading.at.max(start.at),
                corrections: n,
            },
            below_cursor: Some(start.billed - reading.value),
        };
    }
    let from = if start.corrections == 0 {
        start.billed.to_string()
    } else {
        format!("{}:{}", start.corrections, start.billed)
    };
    let event = usage_event(
        subject,
        format!("{prefix}/{from}"),
        meter,
        reading.value - start.billed,
        price,
        (start.at, reading.at.max(start.at)),
        serde_json::json!({ "epoch": start.epoch, "from": start.billed, "to": reading.value }),
    );
    CounterStep {
        event: Some(event),
        cursor: Cursor {
            epoch: reading.epoch.clone(),
            billed: reading.value,
            at: reading.at.max(start.at),
            corrections: start.corrections,
        },
        below_cursor: None,
    }
}

/// What [`settle`] recorded and where the counter stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settled {
    /// The cursor to persist.
    pub cursor: Cursor,
    /// Events this call added to the ledger (an earlier attempt's event is not among them).
    pub recorded: Vec<UsageEvent>,
    /// How far the reading was below the cursor (a correction), if it was.
    pub below_cursor: Option<i64>,
}

/// Records what `reading` adds past `cursor` and returns the cursor to persist. When an event's key
/// already holds a different quantity (an earlier attempt that crashed before its cursor was saved), the
/// cursor moves to the end the ledger holds and the rest is billed as the next event.
pub async fn settle(
    ledger: &Ledger,
    subject: &Subject,
    meter: Meter,
    cursor: Option<&Cursor>,
    reading: &Reading,
    price: Option<&Price>,
) -> Result<Settled, LedgerError> {
    let mut cursor = cursor.cloned();
    let mut recorded = Vec::new();
    let mut below = None;
    // Each pass ends, or moves the cursor past an earlier attempt's event: a few passes at most.
    for _ in 0..4 {
        let st = step(subject, meter, cursor.as_ref(), reading, price);
        let Some(event) = st.event else {
            return Ok(Settled {
                cursor: st.cursor,
                recorded,
                below_cursor: below.or(st.below_cursor),
            });
        };
        let inserted = ledger.record(std::slice::from_ref(&event)).await?;
        match ledger.held(&event.key).await? {
            Some((quantity, end)) if quantity != event.quantity => {
                let from = st.cursor.billed - event.quantity;
                cursor = Some(Cursor {
                    epoch: st.cursor.epoch.clone(),
                    billed: from + quantity,
                    at: end,
                    corrections: st.cursor.corrections,
                });
            }
            _ => {
                below = below.or(st.below_cursor);
                if inserted > 0 {
                    recorded.push(event);
                }
                cursor = Some(st.cursor);
            }
        }
    }
    Err(LedgerError::Conflict(format!(
        "the {} counter of {} {}/{} did not settle",
        meter.as_str(),
        subject.kind,
        subject.namespace,
        subject.name
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;

    fn subject() -> Subject {
        Subject {
            namespace: "demo".into(),
            project: "acme".into(),
            project_uid: "p-uid".into(),
            kind: "SimCard".into(),
            name: "tracker".into(),
            uid: "s1".into(),
        }
    }
    fn reading(epoch: &str, value: i64, at: i64) -> Reading {
        Reading {
            epoch: epoch.into(),
            value,
            at,
            epoch_start: 0,
        }
    }
    fn price() -> Price {
        Price::with_markup(Decimal::new(5, 2), "EUR", Decimal::ZERO)
    }

    #[test]
    fn the_first_reading_starts_the_cursor_and_later_ones_bill_the_difference() {
        let s = subject();
        let first = step(&s, Meter::SimDataBytes, None, &reading("q1", 500, 10), None);
        assert_eq!(first.event, None);
        let second = step(
            &s,
            Meter::SimDataBytes,
            Some(&first.cursor),
            &reading("q1", 2_500_000, 70),
            Some(&price()),
        );
        let e = second.event.unwrap();
        assert_eq!(e.key, "simcard/s1/sim_data_bytes/q1/500");
        assert_eq!(
            (e.quantity, e.window_start, e.window_end),
            (2_499_500, 10, 70)
        );
        // 2.4995 MB at 0.05 per MB.
        assert_eq!(e.amount_nanos(), 124_975_000);
        assert_eq!(second.cursor.billed, 2_500_000);
    }

    #[test]
    fn a_correction_downwards_is_an_adjustment_and_a_new_epoch_counts_from_zero() {
        let s = subject();
        let c = Cursor {
            epoch: "q1".into(),
            billed: 1000,
            at: 0,
            corrections: 0,
        };
        let down = step(
            &s,
            Meter::SimDataBytes,
            Some(&c),
            &reading("q1", 900, 60),
            None,
        );
        let e = down.event.unwrap();
        assert_eq!(
            (e.quantity, e.key.as_str()),
            (-100, "simcard/s1/sim_data_bytes/q1/c1")
        );
        assert_eq!(e.attributes["correction"], true);
        assert_eq!((down.cursor.billed, down.cursor.corrections), (900, 1));
        // Back up to 1100: 200 more, under a key that cannot meet the one billed from 900 before.
        let up = step(
            &s,
            Meter::SimDataBytes,
            Some(&down.cursor),
            &reading("q1", 1100, 120),
            None,
        );
        let e = up.event.unwrap();
        assert_eq!(
            (e.quantity, e.key.as_str()),
            (200, "simcard/s1/sim_data_bytes/q1/1:900")
        );
        assert_eq!(e.attributes["unpriced"], true);
        // A new quota: its counter starts at zero.
        let reset = step(
            &s,
            Meter::SimDataBytes,
            Some(&up.cursor),
            &reading("q2", 40, 180),
            None,
        );
        let e = reset.event.unwrap();
        assert_eq!(
            (e.quantity, e.key.as_str()),
            (40, "simcard/s1/sim_data_bytes/q2/0")
        );
        assert_eq!((reset.cursor.billed, reset.cursor.corrections), (40, 0));
    }

    #[test]
    fn a_replayed_reading_gives_the_same_key() {
        let s = subject();
        let c = Cursor {
            epoch: "q1".into(),
            billed: 0,
            at: 0,
            corrections: 0,
        };
        let a = step(&s, Meter::SimSms, Some(&c), &reading("q1", 3, 60), None);
        let b = step(&s, Meter::SimSms, Some(&c), &reading("q1", 5, 90), None);
        assert_eq!(a.event.unwrap().key, b.event.unwrap().key);
    }
}

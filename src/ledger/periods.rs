//! Closed months: where usage is booked. Usage is booked on the day its window starts, unless that month
//! is closed for its Project: then it is booked on the first day of the next open month, as an adjustment
//! that names the month it belongs to. A closed month's totals never change. Pure; the store applies it
//! under a lock that keeps a month from closing while a batch is being booked.

use std::collections::BTreeSet;

use super::{parse_period, period_of};

/// Where one usage row is booked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Booking {
    /// The day (unix seconds of 00:00 UTC) the row counts on.
    pub day: i64,
    /// `""`, or the closed month (`YYYY-MM`) the usage belongs to.
    pub adjustment_for: String,
}

/// The month after `period` (`YYYY-MM`).
pub fn next_period(period: &str) -> String {
    parse_period(period)
        .map(|(_, end)| period_of(end))
        .unwrap_or_default()
}

/// Where usage whose window starts at `window_start` is booked, given the months closed for its Project.
pub fn booking(window_start: i64, closed: &BTreeSet<String>) -> Booking {
    let own = period_of(window_start);
    if !closed.contains(&own) {
        return Booking {
            day: window_start - window_start.rem_euclid(86_400),
            adjustment_for: String::new(),
        };
    }
    let mut open = next_period(&own);
    while closed.contains(&open) {
        open = next_period(&open);
    }
    Booking {
        day: parse_period(&open)
            .map(|(start, _)| start)
            .unwrap_or(window_start),
        adjustment_for: own,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_of_a_closed_month_is_booked_on_the_next_open_month() {
        let (oct, _) = parse_period("2026-10").unwrap();
        let (nov, _) = parse_period("2026-11").unwrap();
        let (dec, _) = parse_period("2026-12").unwrap();
        let t = oct + 5 * 86_400 + 3600;
        let none = BTreeSet::new();
        assert_eq!(
            booking(t, &none),
            Booking {
                day: oct + 5 * 86_400,
                adjustment_for: String::new()
            }
        );
        let oct_closed: BTreeSet<String> = ["2026-10".to_string()].into();
        assert_eq!(
            booking(t, &oct_closed),
            Booking {
                day: nov,
                adjustment_for: "2026-10".into()
            }
        );
        let both: BTreeSet<String> = ["2026-10".to_string(), "2026-11".to_string()].into();
        assert_eq!(
            booking(t, &both),
            Booking {
                day: dec,
                adjustment_for: "2026-10".into()
            }
        );
        assert_eq!(next_period("2026-12"), "2027-01");
    }
}

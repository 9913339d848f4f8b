//! Budget period windows: calendar-aligned (Daily, Weekly from Monday, Monthly) in an IANA time zone,
//! daylight-saving changes included, or the linked Subscription's billing period.

use jiff::{Timestamp, ToSpan, Zoned, civil::Weekday, tz::TimeZone};

use crate::crd::token_budget::BudgetPeriod;

/// A period: `[start, end)`, unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Window {
    /// First second of the period.
    pub start: i64,
    /// First second after it.
    pub end: i64,
}

impl Window {
    /// Whether `t` falls in the period.
    pub fn contains(&self, t: i64) -> bool {
        self.start <= t && t < self.end
    }
}

/// The time zone a budget names (`None`: UTC).
pub fn zone(name: Option<&str>) -> Result<TimeZone, String> {
    match name {
        None | Some("UTC") => Ok(TimeZone::UTC),
        Some(n) => TimeZone::get(n).map_err(|_| format!("unknown time zone {n:?}")),
    }
}

/// The calendar period of kind `period` in `tz` that holds `now` (unix seconds). SubscriptionPeriod is
/// not a calendar period: see [`subscription`].
pub fn calendar(period: BudgetPeriod, tz: &TimeZone, now: i64) -> Result<Window, String> {
    let t = Timestamp::from_second(now).map_err(|e| e.to_string())?;
    let local = t.to_zoned(tz.clone());
    let err = |e: jiff::Error| e.to_string();
    let (start, end): (Zoned, Zoned) = match period {
        BudgetPeriod::Daily => {
            let s = local.start_of_day().map_err(err)?;
            let e = s.checked_add(1.day()).map_err(err)?;
            (s, e)
        }
        BudgetPeriod::Weekly => {
            let back = i64::from(local.weekday().since(Weekday::Monday));
            let s = local
                .checked_sub(back.days())
                .map_err(err)?
                .start_of_day()
                .map_err(err)?;
            let e = s.checked_add(1.week()).map_err(err)?;
            (s, e)
        }
        BudgetPeriod::Monthly => {
            let s = local
                .first_of_month()
                .map_err(err)?
                .start_of_day()
                .map_err(err)?;
            let e = s.checked_add(1.month()).map_err(err)?;
            (s, e)
        }
        BudgetPeriod::SubscriptionPeriod => {
            return Err("a SubscriptionPeriod follows its Subscription, not the calendar".into());
        }
    };
    Ok(Window {
        start: start.timestamp().as_second(),
        end: end.timestamp().as_second(),
    })
}

/// A period recorded in status as RFC 3339 start and end.
pub fn parse(start: Option<&str>, end: Option<&str>) -> Option<Window> {
    let second = |s: Option<&str>| s?.parse::<Timestamp>().ok().map(|t| t.as_second());
    Some(Window {
        start: second(start)?,
        end: second(end)?,
    })
}

/// A Subscription's current period from its status (RFC 3339 start and end), when it holds `now`.
pub fn subscription(start: Option<&str>, end: Option<&str>, now: i64) -> Option<Window> {
    parse(start, end).filter(|w| w.contains(now))
}

/// `t` as RFC 3339 (UTC).
pub fn rfc3339(t: i64) -> String {
    Timestamp::from_second(t)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_second()
    }

    #[test]
    fn calendar_periods_align_in_their_time_zone() {
        let utc = zone(None).unwrap();
        let now = at("2026-11-30T10:59:57Z");
        assert_eq!(
            calendar(BudgetPeriod::Daily, &utc, now).unwrap(),
            Window {
                start: at("2026-11-30T00:00:00Z"),
                end: at("2026-12-01T00:00:00Z")
            }
        );
        // 2026-11-30 is a Monday; the Sunday before belongs to the previous week.
        assert_eq!(
            calendar(BudgetPeriod::Weekly, &utc, now).unwrap().start,
            at("2026-11-30T00:00:00Z")
        );
        assert_eq!(
            calendar(BudgetPeriod::Weekly, &utc, at("2026-11-29T23:00:00Z")).unwrap(),
            Window {
                start: at("2026-11-23T00:00:00Z"),
                end: at("2026-11-30T00:00:00Z")
            }
        );
        assert_eq!(
            calendar(BudgetPeriod::Monthly, &utc, now).unwrap(),
            Window {
                start: at("2026-11-01T00:00:00Z"),
                end: at("2026-12-01T00:00:00Z")
            }
        );
        let berlin = zone(Some("Europe/Berlin")).unwrap();
        // 00:30 in Berlin on 1 December is still 30 November in UTC.
        assert_eq!(
            calendar(BudgetPeriod::Monthly, &berlin, at("2026-11-30T23:30:00Z")).unwrap(),
            Window {
                start: at("2026-11-30T23:00:00Z"),
                end: at("2026-12-31T23:00:00Z")
            }
        );
        // The day daylight saving ends in Berlin has 25 hours.
        let d = calendar(BudgetPeriod::Daily, &berlin, at("2026-10-25T12:00:00Z")).unwrap();
        assert_eq!(d.end - d.start, 25 * 3600);
        let kolkata = zone(Some("Asia/Kolkata")).unwrap();
        assert_eq!(
            calendar(BudgetPeriod::Daily, &kolkata, now).unwrap().start,
            at("2026-11-29T18:30:00Z")
        );
        assert!(zone(Some("Mars/Olympus")).is_err());
        assert!(calendar(BudgetPeriod::SubscriptionPeriod, &utc, now).is_err());
    }

    #[test]
    fn a_subscription_period_counts_only_while_it_holds_now() {
        let (s, e) = ("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z");
        let w = subscription(Some(s), Some(e), at("2026-11-30T00:00:00Z")).unwrap();
        assert_eq!(w.end - w.start, 30 * 86_400);
        assert!(subscription(Some(s), Some(e), at("2026-12-01T00:00:00Z")).is_none());
        assert!(subscription(None, Some(e), 0).is_none());
        assert_eq!(rfc3339(at(s)), s);
    }
}

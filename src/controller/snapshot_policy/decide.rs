//! The pure rules of a snapshot policy: its schedule (five-field cron in a time zone), the slot due
//! now, the name a slot's snapshot gets, and which snapshots retention deletes.

use std::str::FromStr;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::controller::runtime::names::{self, MAX_OBJECT_NAME};

/// How far back a missed slot is looked for (a controller down longer takes the latest slot of this
/// window only).
pub const LOOKBACK_SECS: i64 = 8 * 86_400;

/// A policy's schedule in its time zone.
pub struct Schedule {
    cron: jiff_cron::Schedule,
    tz: TimeZone,
}

/// Parses a five-field cron expression (or six, seconds first) read in `time_zone` (default UTC);
/// `Err` says what is wrong.
pub fn parse(expr: &str, time_zone: Option<&str>) -> Result<Schedule, String> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let seconds = match fields.len() {
        5 => "0",
        6 => fields[0],
        _ => {
            return Err(format!(
                "spec.schedule {expr:?} must have five fields (minute hour day-of-month month day-of-week), or six with seconds first"
            ));
        }
    };
    let fields = &fields[fields.len() - 5..];
    if fields[4].chars().any(|c| c.is_ascii_digit()) {
        return Err(format!(
            "spec.schedule {expr:?}: name the days of the week (Mon-Fri, Sun) or use *; numbers mean different days in different cron dialects"
        ));
    }
    let cron = jiff_cron::Schedule::from_str(&format!("{seconds} {}", fields.join(" ")))
        .map_err(|e| format!("spec.schedule {expr:?} is not a cron expression: {e}"))?;
    let name = time_zone.unwrap_or("UTC");
    let tz = TimeZone::get(name)
        .map_err(|_| format!("spec.timeZone {name:?} is not an IANA time zone"))?;
    Ok(Schedule { cron, tz })
}

impl Schedule {
    /// The latest slot after `after` and at or before `now` (Unix seconds), looked for within the last
    /// [`LOOKBACK_SECS`].
    pub fn latest(&self, after: i64, now: i64) -> Option<i64> {
        let start = after.max(now - LOOKBACK_SECS);
        let from = Timestamp::from_second(start)
            .ok()?
            .to_zoned(self.tz.clone());
        self.cron
            .after(from)
            .map(|z| z.timestamp().as_second())
            .take_while(|t| *t <= now)
            .last()
    }

    /// The shortest gap between the schedule's slots over the next week (one day's worth of slots at
    /// least), seconds; `None` when it has fewer than two.
    pub fn shortest_gap(&self, now: i64) -> Option<i64> {
        let from = Timestamp::from_second(now).ok()?.to_zoned(self.tz.clone());
        let slots: Vec<i64> = self
            .cron
            .after(from)
            .map(|z| z.timestamp().as_second())
            .take_while(|t| *t <= now + 7 * 86_400)
            .take(10_000)
            .collect();
        slots.windows(2).map(|w| w[1] - w[0]).min()
    }

    /// The first slot after `now`.
    pub fn next(&self, now: i64) -> Option<i64> {
        let from = Timestamp::from_second(now).ok()?.to_zoned(self.tz.clone());
        self.cron
            .after(from)
            .next()
            .map(|z| z.timestamp().as_second())
    }
}

/// The name of the snapshot a policy takes for a slot: `<policy>-<slot, Unix seconds>`, shortened with
/// a hash to fit Kubernetes' 253 characters. The same slot always gets the same name, so it is taken
/// once whatever the controller's restarts.
pub fn snapshot_name(policy: &str, slot: i64) -> String {
    names::fit(policy, &format!("-{slot}"), MAX_OBJECT_NAME)
}

/// One of a policy's snapshots, as retention sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// Its name.
    pub name: String,
    /// Its slot (Unix seconds).
    pub slot: i64,
    /// Whether the vendor has it available.
    pub available: bool,
    /// Whether the vendor refused it (nothing was made; the request was withdrawn).
    pub refused: bool,
}

/// The snapshots retention deletes: the oldest available ones beyond `retain` available ones, and every
/// refused one but the newest (which shows why). Those being taken are never counted nor deleted here,
/// and refused ones are not counted: a policy whose new snapshots fail keeps its good old ones, and its
/// failures do not pile up one per slot.
pub fn beyond_retain(mut held: Vec<Held>, retain: u32) -> Vec<String> {
    held.sort_by_key(|h| std::cmp::Reverse(h.slot));
    let refused = held.iter().filter(|h| h.refused && !h.available).skip(1);
    let available = held.iter().filter(|h| h.available).skip(retain as usize);
    available.chain(refused).map(|h| h.name.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_second()
    }

    #[test]
    fn schedules_are_five_fields_with_named_weekdays_in_a_time_zone() {
        assert!(parse("0 3 * * *", None).is_ok());
        assert!(parse("30 2 * * Mon-Fri", Some("Europe/Berlin")).is_ok());
        assert!(
            parse("*/5 * * * * *", None).is_ok(),
            "six fields: seconds first"
        );
        for bad in [
            "0 3 * *",
            "0 0 3 * * * *",
            "0 3 * * 1",
            "61 3 * * *",
            "x y z a b",
        ] {
            assert!(parse(bad, None).is_err(), "{bad}");
        }
        assert!(parse("0 3 * * *", Some("Mars/Olympus")).is_err());
    }

    #[test]
    fn the_latest_slot_is_in_the_schedules_time_zone_and_never_before_after() {
        let s = parse("0 3 * * *", Some("Europe/Berlin")).unwrap();
        let now = at("2026-12-05T10:00:00Z");
        // 03:00 in Berlin is 02:00 UTC in winter.
        assert_eq!(
            s.latest(at("2026-12-01T00:00:00Z"), now),
            Some(at("2026-12-05T02:00:00Z"))
        );
        assert_eq!(
            s.latest(at("2026-12-05T02:00:00Z"), now),
            None,
            "taken already"
        );
        assert_eq!(s.next(now), Some(at("2026-12-06T02:00:00Z")));
        assert_eq!(s.shortest_gap(now), Some(86_400));
        assert_eq!(
            parse("*/4 * * * * *", None).unwrap().shortest_gap(now),
            Some(4)
        );
        // A long outage: only the latest slot of the look-back window.
        assert_eq!(s.latest(0, now), Some(at("2026-12-05T02:00:00Z")));
        let weekdays = parse("0 9 * * Mon-Fri", None).unwrap();
        // 2026-12-05 is a Saturday: the latest weekday slot is Friday's.
        assert_eq!(
            weekdays.latest(at("2026-11-30T00:00:00Z"), now),
            Some(at("2026-12-04T09:00:00Z"))
        );
    }

    #[test]
    fn a_slot_names_its_snapshot_the_same_way_every_time() {
        assert_eq!(
            snapshot_name("nightly", 1_700_000_000),
            "nightly-1700000000"
        );
        let long = "p".repeat(300);
        let n = snapshot_name(&long, 1_700_000_000);
        assert!(n.len() <= 253 && n.ends_with("-1700000000"), "{n}");
        assert_eq!(n, snapshot_name(&long, 1_700_000_000));
    }

    #[test]
    fn retention_deletes_the_oldest_available_beyond_the_count() {
        let h = |name: &str, slot, available| Held {
            name: name.into(),
            slot,
            available,
            refused: false,
        };
        let held = vec![
            h("a", 1, true),
            h("b", 2, true),
            h("c", 3, false),
            h("d", 4, true),
            h("e", 5, false),
        ];
        assert_eq!(beyond_retain(held.clone(), 2), ["a"]);
        assert_eq!(beyond_retain(held.clone(), 1), ["b", "a"]);
        assert!(
            beyond_retain(held.clone(), 3).is_empty(),
            "ones being taken are neither counted nor deleted"
        );
        // Refused ones are not counted; all but the newest go, so failures do not pile up.
        let refused = |name: &str, slot| Held {
            refused: true,
            ..h(name, slot, false)
        };
        let mut failing = held;
        failing.extend([refused("f", 6), refused("g", 7), refused("h", 8)]);
        assert_eq!(beyond_retain(failing.clone(), 3), ["g", "f"]);
        assert_eq!(beyond_retain(failing, 2), ["a", "g", "f"]);
    }
}

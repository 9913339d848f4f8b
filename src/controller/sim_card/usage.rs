//! A SimCard's usage into the ledger, through the shared counter meter: 1NCE reports a running figure
//! per day (bytes, messages); each day is an epoch of the counter, so a past day is billed once and
//! today's growing figure is billed by increments against the cursor kept in status. A lower figure
//! later (a correction) is recorded as a negative adjustment, never a second charge.
//!
//! The vendor's cost is the day's own cost field per unit; the tenant pays it plus the ProviderConfig's
//! markup. What 1NCE held before the SimCard's first reading is not the SimCard's usage.

use rust_decimal::Decimal;

use crate::cloud::onence::DailyUsage;
use crate::crd::sim_card::UsageCursor;
use crate::ledger::metering::counter::{self, Cursor, Reading};
use crate::ledger::metering::{Price, Subject};
use crate::ledger::{Ledger, LedgerError, Meter};

/// The two meters of a SIM, with the figure and cost each takes from a day's record.
pub const METERS: [Meter; 2] = [Meter::SimDataBytes, Meter::SimSms];

fn figure(meter: Meter, d: &DailyUsage) -> (i64, Decimal) {
    match meter {
        Meter::SimSms => (d.sms, d.sms_cost),
        _ => (d.data_bytes, d.data_cost),
    }
}

/// The vendor's price per priced unit on that day (cost ÷ quantity × the meter's price quantity),
/// marked up for the tenant; `None` without a quantity or a currency.
pub fn price(meter: Meter, d: &DailyUsage, markup: Decimal) -> Option<Price> {
    let (quantity, cost) = figure(meter, d);
    let currency = d.currency.as_deref()?;
    if quantity <= 0 {
        return None;
    }
    let per = cost * Decimal::from(meter.info().priced_per) / Decimal::from(quantity);
    Some(Price::with_markup(per.normalize(), currency, markup))
}

/// Unix seconds of a `YYYY-MM-DD` day's start (UTC).
pub fn day_start(day: &str) -> i64 {
    day.parse::<jiff::civil::Date>()
        .ok()
        .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
        .map_or(0, |z| z.timestamp().as_second())
}

/// The cursor of `meter` in status.
pub fn cursor(cursors: &[UsageCursor], meter: Meter) -> Option<Cursor> {
    cursors
        .iter()
        .find(|c| c.meter == meter.as_str())
        .map(|c| Cursor {
            epoch: c.epoch.clone(),
            billed: c.billed,
            at: c.at,
            corrections: c.corrections,
        })
}

/// Records what `days` (sorted, as 1NCE reports them) add past each meter's cursor and returns the
/// cursors to persist and the events this call added (for the usage metrics). Without a cursor,
/// metering starts at today's figure.
pub async fn settle(
    ledger: &Ledger,
    subject: &Subject,
    cursors: &[UsageCursor],
    days: &[DailyUsage],
    (today, now): (&str, i64),
    markup: Decimal,
) -> Result<(Vec<UsageCursor>, Vec<crate::ledger::UsageEvent>), LedgerError> {
    let mut out = Vec::new();
    let mut recorded = Vec::new();
    for meter in METERS {
        let mut c = cursor(cursors, meter);
        if c.is_none() {
            let value = days
                .iter()
                .find(|d| d.date == today)
                .map_or(0, |d| figure(meter, d).0);
            c = Some(Cursor {
                epoch: today.to_string(),
                billed: value,
                at: now,
                corrections: 0,
            });
        }
        let first = c.as_ref().map(|c| c.epoch.clone()).unwrap_or_default();
        for d in days.iter().filter(|d| d.date >= first) {
            let reading = Reading {
                epoch: d.date.clone(),
                value: figure(meter, d).0,
                at: now.min(day_start(&d.date) + 86_400 - 1),
                epoch_start: day_start(&d.date),
            };
            let price = price(meter, d, markup);
            let settled =
                counter::settle(ledger, subject, meter, c.as_ref(), &reading, price.as_ref())
                    .await?;
            recorded.extend(settled.recorded);
            c = Some(settled.cursor);
        }
        if let Some(c) = c {
            out.push(UsageCursor {
                meter: meter.as_str().to_string(),
                epoch: c.epoch,
                billed: c.billed,
                at: c.at,
                corrections: c.corrections,
            });
        }
    }
    Ok((out, recorded))
}

/// Month-to-date totals (bytes, messages) from the days of the month `month` (`YYYY-MM`).
pub fn month_to_date(days: &[DailyUsage], month: &str) -> (u64, u64) {
    days.iter()
        .filter(|d| d.date.starts_with(month))
        .fold((0, 0), |(b, m), d| {
            (
                b + u64::try_from(d.data_bytes).unwrap_or(0),
                m + u64::try_from(d.sms).unwrap_or(0),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn a_days_price_is_its_cost_per_unit() {
        let d = DailyUsage {
            date: "2026-11-30".into(),
            data_bytes: 2_000_000,
            data_cost: Decimal::from_str("0.10").unwrap(),
            sms: 4,
            sms_cost: Decimal::from_str("0.36").unwrap(),
            currency: Some("EUR".into()),
        };
        let p = price(Meter::SimDataBytes, &d, Decimal::from(10)).unwrap();
        // 0.10 for 2 MB: 0.05 a MB, 0.055 for the tenant.
        assert_eq!(p.vendor, Decimal::from_str("0.05").unwrap());
        assert_eq!(p.tenant, Decimal::from_str("0.055").unwrap());
        let sms = price(Meter::SimSms, &d, Decimal::ZERO).unwrap();
        assert_eq!(sms.vendor, Decimal::from_str("0.09").unwrap());
        assert!(
            price(
                Meter::SimDataBytes,
                &DailyUsage {
                    data_bytes: 0,
                    ..d.clone()
                },
                Decimal::ZERO
            )
            .is_none()
        );
        assert_eq!(day_start("2026-11-01"), 1_793_491_200);
        assert_eq!(month_to_date(&[d], "2026-11"), (2_000_000, 4));
    }
}

/// Whether the stream shows more usage than the cursors billed (so quotas and usage are read now).
pub fn ahead(cursors: &[UsageCursor], streamed: &Streamed) -> bool {
    streamed.iter().any(|(day, meter, sum)| {
        cursors
            .iter()
            .find(|c| &c.meter == meter)
            .is_some_and(|c| day > &c.epoch || (day == &c.epoch && *sum > c.billed))
    })
}

/// Streamed sums per (day, meter), as the ledger gives them.
pub type Streamed = [(String, String, i64)];

/// The polled days merged with the streamed sums: each day and meter at the larger of the two (the
/// same usage seen twice, never added), its cost scaled from the polled cost per unit of that day, else
/// of the latest polled day; a day with no polled cost at all stays unpriced.
pub fn merge(polled: &[DailyUsage], streamed: &Streamed) -> Vec<DailyUsage> {
    let mut days: std::collections::BTreeMap<String, DailyUsage> =
        polled.iter().map(|d| (d.date.clone(), d.clone())).collect();
    let reference = |meter: Meter| {
        polled.iter().rev().find_map(|d| {
            let (q, cost) = figure(meter, d);
            (q > 0).then(|| (cost / Decimal::from(q), d.currency.clone()))
        })
    };
    for (day, meter, sum) in streamed {
        let meter = match meter.as_str() {
            "sim_sms" => Meter::SimSms,
            "sim_data_bytes" => Meter::SimDataBytes,
            _ => continue,
        };
        let d = days.entry(day.clone()).or_insert_with(|| DailyUsage {
            date: day.clone(),
            data_bytes: 0,
            data_cost: Decimal::ZERO,
            sms: 0,
            sms_cost: Decimal::ZERO,
            currency: None,
        });
        let (q, cost) = figure(meter, d);
        if *sum <= q {
            continue;
        }
        let (unit, currency) = if q > 0 {
            (Some(cost / Decimal::from(q)), d.currency.clone())
        } else {
            reference(meter).map_or((None, None), |(u, c)| (Some(u), c))
        };
        let new_cost = unit.map_or(Decimal::ZERO, |u| (u * Decimal::from(*sum)).normalize());
        if d.currency.is_none() {
            d.currency = currency.filter(|_| unit.is_some());
        }
        match meter {
            Meter::SimSms => (d.sms, d.sms_cost) = (*sum, new_cost),
            _ => (d.data_bytes, d.data_cost) = (*sum, new_cost),
        }
    }
    days.into_values().collect()
}

#[cfg(test)]
mod merge_tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn a_day_counts_the_larger_of_polled_and_streamed_never_their_sum() {
        let polled = vec![DailyUsage {
            date: "2026-11-29".into(),
            data_bytes: 2_000_000,
            data_cost: Decimal::from_str("2").unwrap(),
            sms: 3,
            sms_cost: Decimal::from_str("0.3").unwrap(),
            currency: Some("EUR".into()),
        }];
        let streamed = vec![
            (
                "2026-11-29".to_string(),
                "sim_data_bytes".to_string(),
                1_500_000,
            ),
            ("2026-11-29".to_string(), "sim_sms".to_string(), 5),
            (
                "2026-11-30".to_string(),
                "sim_data_bytes".to_string(),
                1_000_000,
            ),
        ];
        let m = merge(&polled, &streamed);
        assert_eq!(m.len(), 2);
        // Data: polled is ahead, kept; SMS: the stream is ahead, priced at the day's 0.10 each.
        assert_eq!((m[0].data_bytes, m[0].sms), (2_000_000, 5));
        assert_eq!(m[0].sms_cost, Decimal::from_str("0.5").unwrap());
        // Today is only streamed so far: priced at the latest polled price per byte.
        assert_eq!(m[1].data_bytes, 1_000_000);
        assert_eq!(m[1].data_cost, Decimal::from(1));
        assert_eq!(m[1].currency.as_deref(), Some("EUR"));
    }
}

//! The usage ledger: every billable unit recorded exactly once, credits as ledger entries, and reports.
//!
//! PostgreSQL in production, SQLite as the embedded default (no `DATABASE_URL`). Money is exact: amounts
//! are integer nano-units (1e-9 of the currency) computed from decimal prices with banker's rounding —
//! never floating point.
//!
//! # Guarantees
//! - An event's idempotency key is deterministic (e.g. `vm/<uid>/<window start>`); inserting it again is a
//!   no-op (`ON CONFLICT DO NOTHING`), so retries and restarts never count twice.
//! - The daily roll-up that reports read is updated in the same statement/transaction as the insert, and
//!   only for rows actually inserted.

pub mod budgets;
pub mod metering;
pub mod periods;
pub mod rate_buckets;
pub mod released;
pub mod report;
pub mod store;
pub mod stripe_usage;

use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};

pub use store::{Ledger, LedgerError};

/// Nano-units per currency unit.
pub const NANOS: i64 = 1_000_000_000;

/// What a credit entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CreditType {
    /// Credit given (a trial, a goodwill gesture): adds to the balance.
    Grant,
    /// A payment received: adds to the balance.
    Payment,
    /// Money paid back to the customer: taken from the balance.
    Refund,
    /// A correction, either way.
    Adjustment,
}

impl CreditType {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grant => "grant",
            Self::Payment => "payment",
            Self::Refund => "refund",
            Self::Adjustment => "adjustment",
        }
    }

    /// The signed amount this entry adds to a balance, from the amount given (positive for every type
    /// but an adjustment); `Err` when the sign cannot be right.
    pub fn signed(self, amount_nanos: i64) -> Result<i64, String> {
        match self {
            Self::Adjustment if amount_nanos != 0 => Ok(amount_nanos),
            Self::Adjustment => Err("an adjustment of zero changes nothing".into()),
            _ if amount_nanos <= 0 => Err(format!(
                "a {} is a positive amount (a refund is taken from the balance by its type)",
                self.as_str()
            )),
            Self::Refund => Ok(-amount_nanos),
            Self::Grant | Self::Payment => Ok(amount_nanos),
        }
    }
}

/// One credit entry of a Project.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreditEntry {
    /// Idempotency key: recording the same key again is a no-op.
    pub key: String,
    /// The Project's namespace and name (for reports).
    pub namespace: String,
    /// Project name.
    pub project: String,
    /// Project UID: the tenant.
    pub project_uid: String,
    /// What it is.
    pub kind: CreditType,
    /// Signed amount added to the balance, nano-units.
    pub amount_nanos: i64,
    /// Currency (ISO 4217).
    pub currency: String,
    /// Why (shown in reports).
    pub reason: String,
    /// A reference outside Quartermaster (a payment ID, an invoice number); may be empty.
    pub external_ref: String,
}

/// What is being metered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Meter {
    /// Seconds a VM ran.
    VmSeconds,
    /// SIM data, bytes.
    SimDataBytes,
    /// SIM text messages.
    SimSms,
    /// SIM quota top-ups ordered.
    SimTopUps,
    /// LLM input tokens.
    LlmInputTokens,
    /// LLM output tokens.
    LlmOutputTokens,
    /// LLM requests that were not charged (refused, or no upstream served them), counted per outcome
    /// in the row's attributes; never priced.
    LlmRequests,
    /// Servers released (a VM deleted with `deletionPolicy: Orphan`): left running in the platform's
    /// account, billed to nobody from then on; one row per server, never priced, so reports show them.
    VmReleases,
    /// Snapshot storage: megabytes held for seconds (priced per GB-month of 730 hours).
    SnapshotMbSeconds,
    /// Snapshots released (a VirtualMachineSnapshot deleted with `deletionPolicy: Retain`): kept at the
    /// vendor, billed to nobody from then on; one row per snapshot, never priced.
    SnapshotReleases,
    /// Outbound server transfer, bytes (priced per GB of 10^9 bytes): within a server's monthly
    /// allowance at no charge, beyond it at the ProviderConfig's transfer price; an account's pooled
    /// overage as the vendor's cost.
    TransferBytes,
}

/// What the ledger knows of a meter: its stored name, the unit of its quantities, and how many units a
/// price is quoted for (a VM's price is hourly, a SIM's per megabyte, an LLM's per million tokens).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeterInfo {
    /// The meter.
    pub meter: Meter,
    /// Its stored name.
    pub name: &'static str,
    /// The unit of its quantities.
    pub unit: &'static str,
    /// How many units a price is for (a usage row's `price_quantity`).
    pub priced_per: i64,
}

/// Every meter, in one table: names, units and price quantities live here and nowhere else.
pub const METERS: [MeterInfo; 11] = [
    MeterInfo {
        meter: Meter::VmSeconds,
        name: "vm_seconds",
        unit: "second",
        priced_per: 3600,
    },
    MeterInfo {
        meter: Meter::SimDataBytes,
        name: "sim_data_bytes",
        unit: "byte",
        priced_per: 1_000_000,
    },
    MeterInfo {
        meter: Meter::SimSms,
        name: "sim_sms",
        unit: "message",
        priced_per: 1,
    },
    MeterInfo {
        meter: Meter::SimTopUps,
        name: "sim_top_ups",
        unit: "order",
        priced_per: 1,
    },
    MeterInfo {
        meter: Meter::LlmInputTokens,
        name: "llm_input_tokens",
        unit: "token",
        priced_per: 1_000_000,
    },
    MeterInfo {
        meter: Meter::LlmOutputTokens,
        name: "llm_output_tokens",
        unit: "token",
        priced_per: 1_000_000,
    },
    MeterInfo {
        meter: Meter::LlmRequests,
        name: "llm_requests",
        unit: "request",
        priced_per: 1,
    },
    MeterInfo {
        meter: Meter::VmReleases,
        name: "vm_releases",
        unit: "server",
        priced_per: 1,
    },
    MeterInfo {
        meter: Meter::SnapshotMbSeconds,
        name: "snapshot_mb_seconds",
        unit: "MB-second",
        // A GB-month: 1,000 MB for 730 hours.
        priced_per: 1000 * 730 * 3600,
    },
    MeterInfo {
        meter: Meter::SnapshotReleases,
        name: "snapshot_releases",
        unit: "snapshot",
        priced_per: 1,
    },
    MeterInfo {
        meter: Meter::TransferBytes,
        name: "transfer_bytes",
        unit: "byte",
        priced_per: 1_000_000_000,
    },
];

impl Meter {
    /// Its row of [`METERS`].
    pub fn info(self) -> &'static MeterInfo {
        METERS
            .iter()
            .find(|m| m.meter == self)
            .unwrap_or(&METERS[0])
    }

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        self.info().name
    }
}

/// One billable window.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct UsageEvent {
    /// Deterministic idempotency key.
    pub key: String,
    /// Namespace of the object.
    pub namespace: String,
    /// Project name ('' when none).
    pub project: String,
    /// Project UID ('' when none): the tenant; balances and closed months are per Project UID.
    pub project_uid: String,
    /// Object kind.
    pub object_kind: String,
    /// Object name.
    pub object_name: String,
    /// Object UID.
    pub object_uid: String,
    /// Meter.
    pub meter: Meter,
    /// Quantity in the meter's unit.
    pub quantity: i64,
    /// The tenant's price per `price_quantity` units (exact decimal).
    pub unit_price: Decimal,
    /// The vendor's price per `price_quantity` units: the cost behind the tenant's price.
    pub vendor_unit_price: Decimal,
    /// How many units `unit_price` is for (3600 for an hourly price of seconds).
    pub price_quantity: i64,
    /// ISO 4217 currency.
    pub currency: String,
    /// Window start, unix seconds.
    pub window_start: i64,
    /// Window end, unix seconds.
    pub window_end: i64,
    /// Free-form attributes (JSON object), e.g. the size slug.
    pub attributes: serde_json::Value,
}

impl UsageEvent {
    /// quantity × unit_price / price_quantity, in nano-units, rounded half-to-even.
    pub fn amount_nanos(&self) -> i64 {
        amount_nanos(self.quantity, self.unit_price, self.price_quantity)
    }

    /// quantity × vendor_unit_price / price_quantity, in nano-units: what the vendor charges.
    pub fn vendor_amount_nanos(&self) -> i64 {
        amount_nanos(self.quantity, self.vendor_unit_price, self.price_quantity)
    }
}

#[cfg(test)]
mod rounding_tests {
    use super::*;

    #[test]
    fn amounts_are_shown_at_their_currencys_precision() {
        assert_eq!(format_rounded(176_119, "USD"), "0.00");
        assert_eq!(format_rounded(5_000_000, "USD"), "0.01");
        assert_eq!(format_rounded(-1_234_567_890, "EUR"), "-1.23");
        assert_eq!(format_rounded(6_000_000_000, "EUR"), "6.00");
        assert_eq!(format_rounded(1_500_000_000, "JPY"), "2");
        assert_eq!(format_rounded(1_234_500_000, "KWD"), "1.235");
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        assert_eq!(format_rounded_decimal(d("12.345678"), "USD"), "12.35");
        assert_eq!(format_rounded_decimal(d("7.2"), "USD"), "7.20");
        assert_eq!(format_rounded_decimal(d("12.345678"), "JPY"), "12");
    }
}

#[cfg(test)]
mod meter_tests {
    use super::*;

    #[test]
    fn every_meter_has_one_row_and_names_match_their_serde_form() {
        let all = [
            Meter::VmSeconds,
            Meter::SimDataBytes,
            Meter::SimSms,
            Meter::SimTopUps,
            Meter::LlmInputTokens,
            Meter::LlmOutputTokens,
            Meter::LlmRequests,
            Meter::VmReleases,
            Meter::SnapshotMbSeconds,
            Meter::SnapshotReleases,
            Meter::TransferBytes,
        ];
        for m in all {
            assert_eq!(METERS.iter().filter(|r| r.meter == m).count(), 1, "{m:?}");
            assert_eq!(
                serde_json::to_value(m).unwrap(),
                serde_json::Value::from(m.as_str())
            );
            assert!(m.info().priced_per > 0);
        }
        assert_eq!(Meter::VmSeconds.info().priced_per, 3600);
    }
}

/// quantity × price / per, in nano-units, rounded half-to-even.
pub fn amount_nanos(quantity: i64, price: Decimal, per: i64) -> i64 {
    if per == 0 {
        return 0;
    }
    let exact = Decimal::from(quantity) * price * Decimal::from(NANOS) / Decimal::from(per);
    exact
        .round_dp_with_strategy(0, RoundingStrategy::MidpointNearestEven)
        .try_into()
        .unwrap_or(i64::MAX)
}

/// A decimal amount (e.g. "50", "12.345") as nano-units; more than 9 decimals is an error.
pub fn parse_amount(s: &str) -> Result<i64, String> {
    let d = Decimal::from_str(s.trim()).map_err(|_| format!("{s:?} is not a decimal amount"))?;
    if d.scale() > 9 {
        return Err(format!("{s:?} has more than 9 decimals"));
    }
    (d * Decimal::from(NANOS))
        .try_into()
        .map_err(|_| format!("{s:?} is too large"))
}

/// Nano-units as a decimal string with at least two decimals ("12.50", "0.00595").
pub fn format_amount(nanos: i64) -> String {
    format_money(Decimal::from(nanos) / Decimal::from(NANOS))
}

/// How many decimals amounts of `currency` (ISO 4217) are shown with: 0 for the currencies without
/// minor units (JPY, KRW, …), 3 for the dinars and rials that have three, else 2.
pub fn currency_digits(currency: &str) -> u32 {
    match currency {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
    }
}

/// `nanos` rounded to `currency`'s precision (half away from zero), for display where exact
/// amounts do not fit (printer columns): `176119` nanos of USD → `0.00`.
pub fn format_rounded(nanos: i64, currency: &str) -> String {
    format_rounded_decimal(Decimal::from(nanos) / Decimal::from(NANOS), currency)
}

/// An amount rounded to `currency`'s precision, as [`format_rounded`] shows it (`12.345678` USD →
/// `12.35`, JPY → `12`).
pub fn format_rounded_decimal(amount: Decimal, currency: &str) -> String {
    let d = amount.round_dp_with_strategy(
        currency_digits(currency),
        RoundingStrategy::MidpointAwayFromZero,
    );
    let mut d = d;
    d.rescale(currency_digits(currency));
    d.to_string()
}

/// Money as a decimal string with at least two decimals and no trailing zeros beyond them
/// (`6` → `6.00`, `0.008930` → `0.00893`).
pub fn format_money(d: Decimal) -> String {
    let mut d = d.normalize();
    if d.scale() < 2 {
        d.rescale(2);
    }
    d.to_string()
}

/// A calendar month `YYYY-MM` as [start, end) unix seconds (UTC).
pub fn parse_period(s: &str) -> Result<(i64, i64), String> {
    let bad = || format!("bad period {s:?}: expected YYYY-MM, e.g. 2026-11");
    let (y, m) = s.trim().split_once('-').ok_or_else(bad)?;
    let (y, m): (i16, i8) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if y.to_string().len() != 4 || !(1..=12).contains(&m) {
        return Err(bad());
    }
    let start = jiff::civil::date(y, m, 1)
        .to_zoned(jiff::tz::TimeZone::UTC)
        .map_err(|_| bad())?;
    let end = start
        .checked_add(jiff::Span::new().months(1))
        .map_err(|_| bad())?;
    Ok((start.timestamp().as_second(), end.timestamp().as_second()))
}

/// The month containing `t` (unix seconds), as `YYYY-MM`.
pub fn period_of(t: i64) -> String {
    jiff::Timestamp::from_second(t)
        .map(|ts| {
            ts.to_zoned(jiff::tz::TimeZone::UTC)
                .strftime("%Y-%m")
                .to_string()
        })
        .unwrap_or_default()
}

/// `NS/NAME` → (namespace, name).
pub fn parse_project(s: &str) -> Result<(String, String), String> {
    let (ns, name) = s
        .split_once('/')
        .ok_or_else(|| format!("bad project {s:?}: expected NAMESPACE/NAME"))?;
    let ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 253
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    };
    if !ok(ns) || !ok(name) {
        return Err(format!(
            "bad project {s:?}: expected NAMESPACE/NAME of lowercase DNS names"
        ));
    }
    Ok((ns.to_string(), name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_exact() {
        // 30 minutes at 0.0119/h = 0.00595 exactly.
        assert_eq!(
            amount_nanos(1800, Decimal::from_str("0.0119").unwrap(), 3600),
            5_950_000
        );
        // One second at 0.00893/h = 0.00000248055…: rounded to the nano, half to even.
        assert_eq!(
            amount_nanos(1, Decimal::from_str("0.00893").unwrap(), 3600),
            2_481
        );
        assert_eq!(format_amount(5_950_000), "0.00595");
        assert_eq!(format_amount(50 * NANOS), "50.00");
        assert_eq!(format_amount(-1_500_000_000), "-1.50");
        assert_eq!(parse_amount("50").unwrap(), 50 * NANOS);
        assert_eq!(parse_amount("0.000000001").unwrap(), 1);
        assert!(parse_amount("0.0000000001").is_err());
        assert!(parse_amount("fifty").is_err());
    }

    #[test]
    fn periods() {
        let (s, e) = parse_period("2026-11").unwrap();
        assert_eq!(s, 1_793_491_200);
        assert_eq!(e - s, 30 * 86400);
        assert_eq!(period_of(s), "2026-11");
        assert_eq!(period_of(e - 1), "2026-11");
        let (s, e) = parse_period("2026-12").unwrap();
        assert_eq!(e - s, 31 * 86400);
        for bad in ["2026", "2026-13", "26-11", "2026-00", "nov"] {
            assert!(parse_period(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn projects() {
        assert_eq!(
            parse_project("demo/acme").unwrap(),
            ("demo".into(), "acme".into())
        );
        for bad in ["demo", "/acme", "demo/", "Demo/acme", "demo/ac me"] {
            assert!(parse_project(bad).is_err(), "{bad}");
        }
    }
}

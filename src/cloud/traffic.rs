//! A server's traffic and load in Quartermaster's own terms: its outbound public transfer in a calendar
//! month (what the vendors bill beyond an allowance) and, for the VMs that opt in, its current CPU,
//! memory, disk and network figures. The methods are on [`ComputeProvider`](super::ComputeProvider);
//! a vendor without such an API answers `None`.
//!
//! | vendor | transfer (one call per server) | metrics |
//! |---|---|---|
//! | DigitalOcean | public outbound Mbps samples of the month (`/v2/monitoring/metrics/droplet/bandwidth`), integrated | CPU, memory, disk, network (seven calls) |
//! | Linode | `bytes_out` of `/linode/instances/{id}/transfer/{year}/{month}` | CPU and network (`/linode/instances/{id}/stats`, one call) |
//! | Vultr | the month's days of `outgoing_bytes` (`/instances/{id}/bandwidth`) | none (its API has daily bandwidth only) |
//! | Contabo | none (its API reports no traffic) | none |

use rust_decimal::Decimal;

/// A calendar month in UTC, the vendors' billing period for transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    /// The year.
    pub year: i16,
    /// The month, 1 to 12.
    pub month: i8,
}

impl Month {
    /// The month holding `unix` (seconds).
    pub fn of(unix: i64) -> Self {
        let d = jiff::Timestamp::from_second(unix)
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
            .to_zoned(jiff::tz::TimeZone::UTC)
            .date();
        Self {
            year: d.year(),
            month: d.month(),
        }
    }

    /// Parses `YYYY-MM`.
    pub fn parse(s: &str) -> Option<Self> {
        let (y, m) = s.split_once('-')?;
        let (year, month) = (y.parse().ok()?, m.parse().ok()?);
        ((1970..=9999).contains(&year) && (1..=12).contains(&month)).then_some(Self { year, month })
    }

    /// Its first second (unix).
    pub fn start(self) -> i64 {
        jiff::civil::date(self.year, self.month, 1)
            .to_zoned(jiff::tz::TimeZone::UTC)
            .map(|z| z.timestamp().as_second())
            .unwrap_or(0)
    }

    /// The month after it.
    pub fn next(self) -> Self {
        if self.month == 12 {
            Self {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Self {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// Its first second after it ends (unix).
    pub fn end(self) -> i64 {
        self.next().start()
    }
}

impl std::fmt::Display for Month {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// A server's current load, as far as its vendor reports it (`None`: not reported).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerMetrics {
    /// CPU used, percent of the server's vCPUs.
    pub cpu_percent: Option<f64>,
    /// Memory in use, bytes.
    pub memory_used_bytes: Option<f64>,
    /// Memory in total, bytes.
    pub memory_total_bytes: Option<f64>,
    /// Root filesystem in use, bytes.
    pub disk_used_bytes: Option<f64>,
    /// Root filesystem size, bytes.
    pub disk_total_bytes: Option<f64>,
    /// Public inbound traffic, bits per second.
    pub network_in_bps: Option<f64>,
    /// Public outbound traffic, bits per second.
    pub network_out_bps: Option<f64>,
}

/// Bytes moved at `rates` (bits per second, sampled as `(unix seconds, rate)` in time order): each
/// sample's rate over the interval since the one before it, but never over more than the series' usual
/// step (its median interval): a gap in the samples (a server off for a day) counts as one step, not as
/// a day at the rate seen after it. What DigitalOcean's bandwidth samples add up to.
pub fn integrate_bits_per_second(rates: &[(i64, f64)]) -> i64 {
    let mut steps: Vec<i64> = rates.windows(2).map(|w| (w[1].0 - w[0].0).max(0)).collect();
    steps.sort_unstable();
    let step = steps.get(steps.len() / 2).copied().unwrap_or(0);
    let bits: f64 = rates
        .windows(2)
        .map(|w| {
            let dt = (w[1].0 - w[0].0).clamp(0, step) as f64;
            w[1].1.max(0.0) * dt
        })
        .sum();
    (bits / 8.0).round() as i64
}

/// `gb` gigabytes (10^9 bytes) in bytes.
pub fn gb(gb: f64) -> i64 {
    (gb * 1e9).round() as i64
}

/// DigitalOcean's transfer "TB" in bytes: its pricing page shows 1 as 1,000 GiB (2^30 bytes each).
pub fn do_terabytes(tb: f64) -> i64 {
    (tb * 1000.0 * (1u64 << 30) as f64).round() as i64
}

/// A price per GiB (2^30 bytes) as a price per GB (10^9 bytes), exactly.
pub fn per_gib_as_per_gb(price: Decimal) -> Decimal {
    (price * Decimal::from(1_000_000_000u64) / Decimal::from(1u64 << 30)).normalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_know_their_bounds_and_names() {
        let m = Month::of(1_764_892_800); // 2025-12-05T00:00:00Z
        assert_eq!(m.to_string(), "2025-12");
        assert_eq!(m.start(), 1_764_547_200);
        assert_eq!(m.next().to_string(), "2026-01");
        assert_eq!(m.end(), m.next().start());
        assert_eq!(Month::parse("2025-12"), Some(m));
        for bad in ["2025-13", "2025", "x-1", "2025-00"] {
            assert_eq!(Month::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn rates_add_up_to_bytes_and_units_convert_exactly() {
        // 8 Mbit/s for 10 s, then 0: 10 MB.
        let rates = [(0, 0.0), (10, 8e6), (20, 0.0)];
        assert_eq!(integrate_bits_per_second(&rates), 10_000_000);
        // A day without samples, then 8 Mbit/s: one 10 s step of it, not a day's.
        let gap = [(0, 0.0), (10, 0.0), (20, 0.0), (86_420, 8e6), (86_430, 0.0)];
        assert_eq!(integrate_bits_per_second(&gap), 10_000_000);
        assert_eq!(integrate_bits_per_second(&[(5, 1e9)]), 0);
        assert_eq!(gb(1.5), 1_500_000_000);
        assert_eq!(do_terabytes(1.0), 1_073_741_824_000);
        assert_eq!(
            per_gib_as_per_gb(Decimal::new(1, 2)).to_string(),
            "0.00931322574615478515625"
        );
    }
}

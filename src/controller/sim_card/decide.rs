//! A SimCard's decide steps, pure: the state the SIM should have (disabled under its Project's credit
//! stop), whether 1NCE shows it, how long a change sent to 1NCE may take, and when quotas and usage are
//! read SIM by SIM rather than from the account's listing. Table-tested below; claims, usage, top-ups
//! and billing have their own pure modules.

use std::time::Duration;

use crate::cloud::onence::Sim;
use crate::crd::sim_card::{PendingSimChange, QuotaWarning};
use crate::crd::{SimCard, SimCardStatus};

/// Whether quotas and usage must be read SIM by SIM now: never read, read longer than `interval` ago
/// or in another month, the listing shows the quotas moved (total or level), a top-up is unconfirmed, or
/// an automatic top-up policy watches a quota that is low (`now`: the time of this reconcile).
pub fn detail_due(
    obj: &SimCard,
    status: &SimCardStatus,
    sim: &Sim,
    interval: Duration,
    now: jiff::Timestamp,
) -> bool {
    let read = status
        .usage_read_at
        .as_deref()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    let Some(read) = read else { return true };
    let month = |t: jiff::Timestamp| {
        t.to_zoned(jiff::tz::TimeZone::UTC)
            .strftime("%Y-%m")
            .to_string()
    };
    let moved = |listed: Option<i64>, known: Option<i64>| listed.is_some() && listed != known;
    let as_i64 = |v: Option<u64>| v.and_then(|v| i64::try_from(v).ok());
    let watching = |p: Option<&crate::crd::sim_card::QuotaPolicy>, level: Option<i64>| {
        p.is_some_and(|p| p.auto_top_up) && level.unwrap_or(0) >= 1
    };
    now.duration_since(read).as_secs() >= i64::try_from(interval.as_secs()).unwrap_or(i64::MAX)
        || month(now) != month(read)
        || status.usage_cursors.is_empty()
        || moved(sim.data_quota_total, as_i64(status.data_quota_total_bytes))
        || moved(sim.sms_quota_total, as_i64(status.sms_quota_total))
        || moved(sim.data_quota_level, status.data_quota_level)
        || moved(sim.sms_quota_level, status.sms_quota_level)
        || status.top_ups.iter().any(|r| !r.confirmed && !r.refused)
        || watching(obj.spec.data_quota.as_ref(), sim.data_quota_level)
        || watching(obj.spec.sms_quota.as_ref(), sim.sms_quota_level)
}

/// The state the SIM should have: the spec's, disabled while the Project's credit stop holds.
pub fn wanted(obj: &SimCard, stopped: bool) -> PendingSimChange {
    PendingSimChange {
        requested_at: String::new(),
        enabled: obj.spec.enabled && !stopped,
        label: obj.spec.label.clone(),
        imei_lock: obj.spec.imei_lock,
    }
}

/// Whether the SIM at 1NCE is in the wanted state (a label the spec leaves unset is not compared).
pub fn matches(sim: &Sim, w: &PendingSimChange) -> bool {
    (sim.status == "Enabled") == w.enabled
        && w.label
            .as_ref()
            .is_none_or(|l| sim.label.as_deref().unwrap_or_default() == l)
        && sim.imei_lock == w.imei_lock
}

/// The wanted state in words, for conditions and Events.
pub fn describe(w: &PendingSimChange) -> String {
    let mut parts = vec![if w.enabled { "enabled" } else { "disabled" }.to_string()];
    if let Some(l) = &w.label {
        parts.push(format!("label {l:?}"));
    }
    parts.push(format!(
        "IMEI lock {}",
        if w.imei_lock { "on" } else { "off" }
    ));
    parts.join(", ")
}

/// How long the pending change `p` has waited at `now` (unix seconds), when that is longer than
/// `timeout` seconds: the change is taken as never applied.
pub fn timed_out(p: &PendingSimChange, now: i64, timeout: u32) -> Option<i64> {
    let sent = p.requested_at.parse::<jiff::Timestamp>().ok();
    let waited = sent.map_or(0, |t| now - t.as_second());
    (waited > i64::from(timeout)).then_some(waited)
}

/// The warning thresholds of a quota, percent used.
pub const QUOTA_THRESHOLDS: [u8; 2] = [80, 100];

/// The quota warnings `status` now calls for that were not given in the same quota period: data and
/// SMS at 80 % and 100 % used (ascending).
pub fn quota_warnings(status: &SimCardStatus) -> Vec<QuotaWarning> {
    let quotas = [
        (
            "data",
            status.data_quota_total_bytes,
            status.data_quota_remaining_bytes,
            &status.data_quota_expiry,
        ),
        (
            "sms",
            status.sms_quota_total,
            status.sms_quota_remaining,
            &status.sms_quota_expiry,
        ),
    ];
    let mut out = Vec::new();
    for (quota, total, remaining, expiry) in quotas {
        let (Some(total), Some(remaining)) = (total, remaining) else {
            continue;
        };
        if total == 0 {
            continue;
        }
        let used = (total - remaining.min(total)).saturating_mul(100) / total;
        let period = format!("{total}/{}", expiry.as_deref().unwrap_or_default());
        for percent in QUOTA_THRESHOLDS {
            let w = QuotaWarning {
                quota: quota.into(),
                percent,
                period: period.clone(),
            };
            if used >= u64::from(percent) && !status.quota_warnings.contains(&w) {
                out.push(w);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(enabled: bool, label: Option<&str>, lock: bool) -> SimCard {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "SimCard",
            "metadata": {"name": "s", "namespace": "ns"},
            "spec": {"iccid": "8988280666000000002", "providerConfigRef": {"name": "pc"},
                     "enabled": enabled, "label": label, "imeiLock": lock,
                     "dataQuota": {"autoTopUp": true}}
        }))
        .unwrap()
    }

    fn sim(status: &str, label: Option<&str>, lock: bool) -> Sim {
        Sim {
            iccid: "8988280666000000002".into(),
            iccid_with_luhn: None,
            imsi: None,
            msisdn: None,
            imei: None,
            imei_lock: lock,
            status: status.into(),
            ip_address: None,
            label: label.map(str::to_string),
            data_quota_total: None,
            sms_quota_total: None,
            data_quota_level: None,
            sms_quota_level: None,
        }
    }

    #[test]
    fn the_wanted_state_is_the_specs_and_the_credit_stop_disables_it() {
        // (spec enabled, label, lock, stopped) against (1NCE status, label, lock) → matches
        let rows = [
            (
                (true, Some("truck"), true, false),
                ("Enabled", Some("truck"), true),
                true,
            ),
            (
                (true, Some("truck"), true, true),
                ("Enabled", Some("truck"), true),
                false,
            ),
            (
                (true, Some("truck"), true, true),
                ("Disabled", Some("truck"), true),
                true,
            ),
            (
                (true, None, false, false),
                ("Enabled", Some("anything"), false),
                true,
            ),
            (
                (true, Some("truck"), false, false),
                ("Enabled", Some("van"), false),
                false,
            ),
            ((true, None, true, false), ("Enabled", None, false), false),
            ((false, None, false, false), ("Enabled", None, false), false),
        ];
        for ((enabled, label, lock, stopped), (status, sl, slock), want) in rows {
            let w = wanted(&card(enabled, label, lock), stopped);
            assert_eq!(
                matches(&sim(status, sl, slock), &w),
                want,
                "{w:?} vs {status} {sl:?} {slock}"
            );
        }
        let w = wanted(&card(true, Some("truck"), true), true);
        assert_eq!(describe(&w), "disabled, label \"truck\", IMEI lock on");
    }

    #[test]
    fn quota_warnings_come_once_per_quota_period() {
        let mut st = SimCardStatus {
            data_quota_total_bytes: Some(1000),
            data_quota_remaining_bytes: Some(1000),
            data_quota_expiry: Some("2027-01-01".into()),
            sms_quota_total: Some(0),
            sms_quota_remaining: Some(0),
            ..Default::default()
        };
        let warned = |st: &SimCardStatus| -> Vec<(String, u8)> {
            quota_warnings(st)
                .into_iter()
                .map(|w| (w.quota, w.percent))
                .collect()
        };
        // (remaining of 1000) → new warnings
        let rows: [(u64, &[(&str, u8)]); 5] = [
            (1000, &[]),
            (201, &[]),
            (200, &[("data", 80)]),
            (0, &[("data", 100)]),
            (0, &[]),
        ];
        for (remaining, want) in rows {
            st.data_quota_remaining_bytes = Some(remaining);
            let got = warned(&st);
            let want: Vec<(String, u8)> = want.iter().map(|(q, p)| ((*q).into(), *p)).collect();
            assert_eq!(got, want, "{remaining} left");
            st.quota_warnings.extend(quota_warnings(&st));
        }
        // A top-up: a new total is a new period, warned again when used.
        st.data_quota_total_bytes = Some(2000);
        st.data_quota_remaining_bytes = Some(1500);
        assert!(warned(&st).is_empty());
        st.data_quota_remaining_bytes = Some(100);
        assert_eq!(warned(&st), [("data".to_string(), 80)]);
        // Both thresholds at once, when the first read already shows the quota used up.
        let fresh = SimCardStatus {
            sms_quota_total: Some(250),
            sms_quota_remaining: Some(0),
            ..Default::default()
        };
        assert_eq!(
            warned(&fresh),
            [("sms".to_string(), 80), ("sms".to_string(), 100)]
        );
    }

    #[test]
    fn a_change_times_out_after_the_specs_seconds() {
        let p = |at: &str| PendingSimChange {
            requested_at: at.into(),
            enabled: true,
            label: None,
            imei_lock: false,
        };
        let sent = "2026-12-04T10:00:00Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_second();
        assert_eq!(timed_out(&p("2026-12-04T10:00:00Z"), sent + 300, 300), None);
        assert_eq!(
            timed_out(&p("2026-12-04T10:00:00Z"), sent + 301, 300),
            Some(301)
        );
        assert_eq!(
            timed_out(&p("not a time"), sent, 0),
            None,
            "an unreadable time waits"
        );
    }

    #[test]
    fn quotas_are_read_sim_by_sim_only_when_something_says_so() {
        let now = "2026-12-04T10:00:00Z".parse::<jiff::Timestamp>().unwrap();
        let hour = Duration::from_secs(3600);
        let c = card(true, None, false);
        let s = sim("Enabled", None, false);
        let mut st = SimCardStatus::default();
        assert!(detail_due(&c, &st, &s, hour, now), "never read");
        st.usage_read_at = Some("2026-12-04T09:30:00Z".into());
        assert!(detail_due(&c, &st, &s, hour, now), "no cursor yet");
        st.usage_cursors = vec![crate::crd::sim_card::UsageCursor {
            meter: "sim_data_bytes".into(),
            epoch: "2026-12-04".into(),
            billed: 0,
            at: 0,
            corrections: 0,
        }];
        assert!(
            !detail_due(&c, &st, &s, hour, now),
            "read 30 min ago, nothing moved"
        );
        assert!(
            detail_due(&c, &st, &s, Duration::from_secs(600), now),
            "read longer ago than the interval"
        );
        st.usage_read_at = Some("2026-11-30T23:59:00Z".into());
        assert!(
            detail_due(&c, &st, &s, Duration::from_secs(86_400 * 7), now),
            "another month"
        );
        st.usage_read_at = Some("2026-12-04T09:30:00Z".into());
        let mut moved = s.clone();
        moved.data_quota_total = Some(5);
        assert!(
            detail_due(&c, &st, &moved, hour, now),
            "the listing shows the quota moved"
        );
        let mut low = s.clone();
        low.data_quota_level = Some(1);
        assert!(
            detail_due(&c, &st, &low, hour, now),
            "auto top-up watches a low quota"
        );
    }
}

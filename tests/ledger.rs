//! The ledger against real PostgreSQL (the test script starts one: `QM_TEST_DATABASE_URL`) and SQLite:
//! the same event twice is one row, parallel writers, restart recovery, exact sums in a known scenario,
//! credits and reports.

use std::str::FromStr;

use quartermaster::ledger::metering::{self, Observation, Price, Subject, counter, requests};
use quartermaster::ledger::store::{GroupBy, ProjectRef};
use quartermaster::ledger::{
    CreditEntry, CreditType, Ledger, Meter, UsageEvent, format_amount, parse_period,
};
use rust_decimal::Decimal;

mod common;
use common::db::{fresh_postgres, sqlite};

fn ev(key: &str, project: &str, start: i64, quantity: i64, price: &str) -> UsageEvent {
    UsageEvent {
        key: key.into(),
        namespace: "demo".into(),
        project: project.into(),
        project_uid: format!("{project}-uid"),
        object_kind: "VirtualMachine".into(),
        object_name: "web".into(),
        object_uid: "uid-1".into(),
        meter: Meter::VmSeconds,
        quantity,
        unit_price: Decimal::from_str(price).unwrap(),
        vendor_unit_price: Decimal::from_str(price).unwrap(),
        price_quantity: 3600,
        currency: "USD".into(),
        window_start: start,
        window_end: start + quantity,
        attributes: serde_json::json!({"size": "s"}),
    }
}

const ACME: ProjectRef = ProjectRef {
    namespace: "demo",
    name: "acme",
    uid: "acme-uid",
};

fn entry(key: &str, p: &ProjectRef, kind: CreditType, amount: i64) -> CreditEntry {
    CreditEntry {
        key: key.into(),
        namespace: p.namespace.into(),
        project: p.name.into(),
        project_uid: p.uid.into(),
        kind,
        amount_nanos: kind.signed(amount).unwrap(),
        currency: "USD".into(),
        reason: "test".into(),
        external_ref: String::new(),
    }
}

async fn each_backend(f: impl AsyncFn(Ledger, String)) {
    let dir = tempfile::tempdir().unwrap();
    let (l, url) = sqlite(&dir).await;
    f(l, url).await;
    if let Some((l, url)) = fresh_postgres().await {
        f(l, url).await;
    }
}

#[tokio::test]
async fn the_same_event_twice_is_one_row() {
    each_backend(async |l: Ledger, _| {
        let (nov, _) = parse_period("2026-11").unwrap();
        let e = ev("vm/uid-1/1", "acme", nov, 1800, "0.0119");
        assert_eq!(l.record(std::slice::from_ref(&e)).await.unwrap(), 1);
        assert_eq!(
            l.record(&[e.clone(), e.clone()]).await.unwrap(),
            0,
            "{}",
            l.kind()
        );
        assert_eq!(l.event_count().await.unwrap(), 1);
        let rows = l
            .usage(&ACME, nov, nov + 30 * 86400, GroupBy::Meter)
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].quantity, format_amount(rows[0].amount_nanos)),
            (1800, "0.00595".to_string())
        );
    })
    .await;
}

#[tokio::test]
async fn parallel_writers_with_overlapping_events_count_each_once() {
    each_backend(async |l: Ledger, _| {
        let (nov, _) = parse_period("2026-11").unwrap();
        // 6 writers, each sending events 0..600 shifted by 100·w: 1100 distinct keys, heavy overlap.
        let mut tasks = Vec::new();
        for w in 0..6i64 {
            let l = l.clone();
            tasks.push(tokio::spawn(async move {
                let events: Vec<_> = (w * 100..w * 100 + 600)
                    .map(|i| {
                        ev(
                            &format!("vm/uid-1/{i}"),
                            "acme",
                            nov + i * 3600,
                            3600,
                            "0.01",
                        )
                    })
                    .collect();
                for chunk in events.chunks(50) {
                    l.record(chunk).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(l.event_count().await.unwrap(), 1100, "{}", l.kind());
        let rows = l.usage(&ACME, 0, i64::MAX, GroupBy::Meter).await.unwrap();
        assert_eq!(rows[0].quantity, 1100 * 3600);
        assert_eq!(
            rows[0].amount_nanos,
            1100 * 10_000_000,
            "roll-up must count each event once"
        );
    })
    .await;
}

#[tokio::test]
async fn data_survives_a_reconnect_and_replays_are_ignored() {
    each_backend(async |l: Ledger, url: String| {
        let events: Vec<_> = (0..10)
            .map(|i| ev(&format!("vm/uid-1/{i}"), "acme", 3600 * i, 3600, "0.02"))
            .collect();
        l.record(&events[..6]).await.unwrap();
        drop(l);
        // A restarted controller replays everything it may not have recorded: only the missing ones count.
        let l = Ledger::connect(Some(&url), std::path::Path::new(""))
            .await
            .unwrap();
        l.migrate().await.unwrap();
        assert_eq!(l.record(&events).await.unwrap(), 4);
        let (_, usage) = l.balance(&ACME, "USD").await.unwrap();
        assert_eq!(usage, 10 * 20_000_000);
    })
    .await;
}

#[tokio::test]
async fn known_scenario_ninety_minutes_with_a_resize_sums_exactly() {
    each_backend(async |l: Ledger, _| {
        let (nov, end) = parse_period("2026-11").unwrap();
        let s = Subject {
            namespace: "demo".into(),
            project: "acme".into(),
            project_uid: "acme-uid".into(),
            kind: "VirtualMachine".into(),
            name: "web".into(),
            uid: "uid-9".into(),
        };
        // The vendor's price with a 20 % markup: the tenant pays 1.2 times what the vendor charges.
        let obs = |billed, size: &str, price: &str| Observation {
            billed,
            size: size.into(),
            price: Some(Price::with_markup(
                Decimal::from_str(price).unwrap(),
                "USD",
                Decimal::from(20),
            )),
        };
        let t0 = nov + 20 * 60;
        let mut open = metering::step(&s, None, &obs(true, "small", "0.0119"), t0, false).open;
        let mut all = Vec::new();
        for (t, o) in [
            (t0 + 1800, obs(true, "large", "0.0238")),
            (t0 + 3000, obs(true, "large", "0.0238")),
            (t0 + 5400, obs(false, "large", "0.0238")),
        ] {
            let st = metering::step(&s, open.as_ref(), &o, t, false);
            l.record(&st.events).await.unwrap();
            // Replaying a step (as after a crash before status was saved) changes nothing.
            l.record(&st.events).await.unwrap();
            all.extend(st.events);
            open = st.open;
        }
        let rows = l.usage(&ACME, nov, end, GroupBy::Meter).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].quantity, 5400);
        assert_eq!(
            (
                format_amount(rows[0].amount_nanos),
                format_amount(rows[0].cost_nanos)
            ),
            ("0.0357".to_string(), "0.02975".to_string()),
            "{}",
            l.kind()
        );
        let by_day = l.usage(&ACME, nov, end, GroupBy::Day).await.unwrap();
        assert_eq!(by_day[0].key, "2026-11-01");
        let by_object = l.usage(&ACME, nov, end, GroupBy::Object).await.unwrap();
        assert_eq!(by_object[0].key, "VirtualMachine/web");
    })
    .await;
}

#[tokio::test]
async fn credits_grants_minus_usage() {
    each_backend(async |l: Ledger, _| {
        assert_eq!(l.project_uid_of("demo", "acme").await.unwrap(), None);
        let grant = entry("grant-1", &ACME, CreditType::Grant, 50_000_000_000);
        assert!(l.credit(&grant).await.unwrap());
        assert!(!l.credit(&grant).await.unwrap(), "same key twice");
        l.record(&[ev("vm/uid-1/0", "acme", 0, 3600, "12.5")])
            .await
            .unwrap();
        let (granted, used) = l.balance(&ACME, "USD").await.unwrap();
        assert_eq!(format_amount(granted - used), "37.50");
        // A payment adds, a refund takes away; every entry keeps its type and external reference.
        let mut paid = entry("pay-1", &ACME, CreditType::Payment, 10_000_000_000);
        paid.external_ref = "in_123".into();
        assert!(l.credit(&paid).await.unwrap());
        assert!(
            l.credit(&entry("refund-1", &ACME, CreditType::Refund, 5_000_000_000))
                .await
                .unwrap()
        );
        let (granted, used) = l.balance(&ACME, "USD").await.unwrap();
        assert_eq!(format_amount(granted - used), "42.50");
        assert!(CreditType::Refund.signed(-1).is_err() && CreditType::Grant.signed(0).is_err());
        assert_eq!(
            l.project_uid_of("demo", "acme").await.unwrap().as_deref(),
            Some("acme-uid")
        );
    })
    .await;
}

/// Tenants are known by UID: a Project recreated under the same name starts empty.
#[tokio::test]
async fn a_recreated_project_starts_empty() {
    each_backend(async |l: Ledger, _| {
        assert!(
            l.credit(&entry("g", &ACME, CreditType::Grant, 5_000_000_000))
                .await
                .unwrap()
        );
        l.record(&[ev("vm/uid-1/0", "acme", 0, 3600, "1")])
            .await
            .unwrap();
        let again = ProjectRef {
            uid: "acme-uid-2",
            ..ACME
        };
        assert_eq!(l.balances(&again).await.unwrap(), vec![]);
        assert!(
            l.usage(&again, 0, i64::MAX, GroupBy::Meter)
                .await
                .unwrap()
                .is_empty()
        );
        let (granted, used) = l.balance(&ACME, "USD").await.unwrap();
        assert_eq!(format_amount(granted - used), "4.00", "{}", l.kind());
    })
    .await;
}

/// A closed month's totals never change: late usage for it is booked on the next open month as an
/// adjustment line that names it.
#[tokio::test]
async fn a_closed_month_never_changes_and_late_usage_is_an_adjustment() {
    each_backend(async |l: Ledger, _| {
        let (oct, oct_end) = parse_period("2026-10").unwrap();
        let (nov, nov_end) = parse_period("2026-11").unwrap();
        l.record(&[ev("vm/uid-1/a", "acme", oct + 3600, 3600, "1")])
            .await
            .unwrap();
        assert!(l.close_period("acme-uid", "2026-10").await.unwrap());
        assert!(
            !l.close_period("acme-uid", "2026-10").await.unwrap(),
            "closed once"
        );
        let before = l.usage(&ACME, oct, oct_end, GroupBy::Object).await.unwrap();
        // Usage of October arrives late (a ledger outage, a restart): October stays as it was.
        l.record(&[ev("vm/uid-1/b", "acme", oct + 7200, 3600, "1")])
            .await
            .unwrap();
        assert_eq!(
            l.usage(&ACME, oct, oct_end, GroupBy::Object).await.unwrap(),
            before
        );
        let nov_rows = l.usage(&ACME, nov, nov_end, GroupBy::Object).await.unwrap();
        assert_eq!(nov_rows.len(), 1, "{nov_rows:?}");
        assert_eq!(
            nov_rows[0].key,
            "VirtualMachine/web (adjustment for 2026-10)"
        );
        assert_eq!(format_amount(nov_rows[0].amount_nanos), "1.00");
        let by_day = l.usage(&ACME, nov, nov_end, GroupBy::Day).await.unwrap();
        assert_eq!(by_day[0].key, "2026-11-01 (adjustment for 2026-10)");
        // Other tenants' months are their own.
        let other = ev("vm/uid-9/a", "other", oct + 3600, 3600, "1");
        l.record(&[other]).await.unwrap();
        let o = ProjectRef {
            name: "other",
            uid: "other-uid",
            ..ACME
        };
        assert_eq!(
            l.usage(&o, oct, oct_end, GroupBy::Meter)
                .await
                .unwrap()
                .len(),
            1
        );
        // Everything is still in the balance, once.
        let (_, used) = l.balance(&ACME, "USD").await.unwrap();
        assert_eq!(format_amount(used), "2.00");
    })
    .await;
}

/// The upgrade path: a ledger written before UIDs and vendor costs migrates in place; its rows cost
/// what they were charged, and the Project of that name claims them.
#[tokio::test]
async fn a_ledger_from_before_uids_upgrades_and_its_project_claims_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("first-migration-only");
    std::fs::create_dir(&old).unwrap();
    let first = "20261121000001_ledger.sql";
    std::fs::copy(
        common::root().join("migrations/sqlite").join(first),
        old.join(first),
    )
    .unwrap();
    let url = format!("sqlite://{}", dir.path().join("old.db").display());
    let l = Ledger::connect(Some(&url), std::path::Path::new(""))
        .await
        .unwrap();
    let Ledger::Sqlite(pool) = &l else {
        unreachable!()
    };
    sqlx::migrate::Migrator::new(old.as_path())
        .await
        .unwrap()
        .run(pool)
        .await
        .unwrap();
    // What the old code wrote: a day of usage and a grant, keyed by name only.
    sqlx::query("INSERT INTO usage_events (idempotency_key, namespace, project, object_kind, object_name, object_uid, meter, quantity, unit_price, price_quantity, currency, amount_nanos, window_start, window_end, recorded_at) VALUES ('vm/u/0', 'demo', 'acme', 'VirtualMachine', 'web', 'u', 'vm_seconds', 3600, '2', 3600, 'USD', 2000000000, 0, 3600, 1)")
        .execute(pool).await.unwrap();
    sqlx::query("INSERT INTO usage_daily (namespace, project, meter, object_uid, currency, day, object_kind, object_name, quantity, amount_nanos, events) VALUES ('demo', 'acme', 'vm_seconds', 'u', 'USD', 0, 'VirtualMachine', 'web', 3600, 2000000000, 1)")
        .execute(pool).await.unwrap();
    sqlx::query("INSERT INTO credits (idempotency_key, namespace, project, amount_nanos, currency, reason, created_at) VALUES ('g', 'demo', 'acme', 5000000000, 'USD', 'old', 1)")
        .execute(pool).await.unwrap();
    l.migrate().await.unwrap();
    let legacy = ProjectRef { uid: "", ..ACME };
    let rows = l.usage(&legacy, 0, 86_400, GroupBy::Meter).await.unwrap();
    assert_eq!(
        (rows[0].amount_nanos, rows[0].cost_nanos),
        (2_000_000_000, 2_000_000_000)
    );
    assert_eq!(
        l.project_uid_of("demo", "acme").await.unwrap().as_deref(),
        Some("")
    );
    // The Project of that name claims them (once: a second claim moves nothing).
    assert_eq!(l.claim_legacy(&ACME).await.unwrap(), 2);
    assert_eq!(l.claim_legacy(&ACME).await.unwrap(), 0);
    let (granted, used) = l.balance(&ACME, "USD").await.unwrap();
    assert_eq!(format_amount(granted - used), "3.00");
    assert!(l.balances(&legacy).await.unwrap().is_empty());
}

fn sim_subject() -> Subject {
    Subject {
        namespace: "demo".into(),
        project: "acme".into(),
        project_uid: "acme-uid".into(),
        kind: "SimCard".into(),
        name: "tracker".into(),
        uid: "sim-uid".into(),
    }
}

/// The counter trap: an attempt recorded 1,500 bytes from 1,000 and crashed before its cursor was saved;
/// the next reading (1,800) has the same key with a larger quantity. Settling bills the held 500 once and
/// the remaining 300 as the next event: 800 in all, never 500 (lost) or 1,300 (twice). A correction
/// downward is an adjustment.
#[tokio::test]
async fn a_counter_replayed_with_a_larger_reading_loses_nothing_and_counts_nothing_twice() {
    each_backend(async |l: Ledger, _| {
        let (nov, end) = parse_period("2026-11").unwrap();
        let s = sim_subject();
        let price = Price::with_markup(Decimal::from_str("0.05").unwrap(), "EUR", Decimal::ZERO);
        let cursor = counter::Cursor {
            epoch: "quota-1".into(),
            billed: 1000,
            at: nov,
            corrections: 0,
        };
        let read = |value, at| counter::Reading {
            epoch: "quota-1".into(),
            value,
            at,
            epoch_start: nov,
        };
        // The first attempt: recorded, then the process died (its cursor never reached status).
        let first = counter::step(
            &s,
            Meter::SimDataBytes,
            Some(&cursor),
            &read(1500, nov + 60),
            Some(&price),
        );
        l.record(&[first.event.unwrap()]).await.unwrap();
        // The retry starts from the old cursor with a newer reading.
        let settled = counter::settle(
            &l,
            &s,
            Meter::SimDataBytes,
            Some(&cursor),
            &read(1800, nov + 120),
            Some(&price),
        )
        .await
        .unwrap();
        assert_eq!(settled.cursor.billed, 1800);
        assert_eq!(settled.recorded.len(), 1);
        assert_eq!(settled.recorded[0].quantity, 300);
        // Settling the same reading again adds nothing.
        let again = counter::settle(
            &l,
            &s,
            Meter::SimDataBytes,
            Some(&settled.cursor),
            &read(1800, nov + 180),
            Some(&price),
        )
        .await
        .unwrap();
        assert!(again.recorded.is_empty());
        // The vendor corrects its figure down to 1,700: an adjustment of -100, never a second charge;
        // replaying the correction changes nothing, and growth past it is billed from 1,700.
        let lower = counter::settle(
            &l,
            &s,
            Meter::SimDataBytes,
            Some(&settled.cursor),
            &read(1700, nov + 240),
            Some(&price),
        )
        .await
        .unwrap();
        assert_eq!((lower.cursor.billed, lower.below_cursor), (1700, Some(100)));
        assert_eq!(lower.recorded[0].quantity, -100);
        let again = counter::settle(
            &l,
            &s,
            Meter::SimDataBytes,
            Some(&settled.cursor),
            &read(1700, nov + 250),
            Some(&price),
        )
        .await
        .unwrap();
        assert!(again.recorded.is_empty(), "{:?}", again.recorded);
        let up = counter::settle(
            &l,
            &s,
            Meter::SimDataBytes,
            Some(&lower.cursor),
            &read(2000, nov + 300),
            Some(&price),
        )
        .await
        .unwrap();
        assert_eq!(up.recorded[0].quantity, 300);
        let rows = l.usage(&ACME, nov, end, GroupBy::Meter).await.unwrap();
        assert_eq!(
            (rows[0].meter.as_str(), rows[0].quantity),
            ("sim_data_bytes", 1000),
            "{}",
            l.kind()
        );
        // 1,000 bytes at 0.05 per MB.
        assert_eq!(rows[0].amount_nanos, 50_000);
    })
    .await;
}

/// Per-request usage reaches the ledger as one row per group, and a batch written twice (the first
/// write's answer lost) counts once.
#[tokio::test]
async fn aggregated_requests_are_recorded_once_per_batch() {
    each_backend(async |l: Ledger, _| {
        let (nov, end) = parse_period("2026-11").unwrap();
        let mut s = sim_subject();
        s.kind = "TokenBudget".into();
        s.uid = "budget-uid".into();
        let price = Price::with_markup(Decimal::from(3), "USD", Decimal::ZERO);
        let mut agg = requests::Aggregator::new("gw-test");
        for i in 0..1000 {
            agg.add(&s, Meter::LlmInputTokens, 100, Some(&price), nov + i);
        }
        let batch = agg.cut().to_vec();
        assert_eq!(batch.len(), 1);
        assert_eq!(l.record(&batch).await.unwrap(), 1);
        assert_eq!(l.record(agg.cut()).await.unwrap(), 0);
        agg.accepted();
        let rows = l.usage(&ACME, nov, end, GroupBy::Meter).await.unwrap();
        assert_eq!(rows[0].quantity, 100_000, "{}", l.kind());
        // 100,000 tokens at 3 per million.
        assert_eq!(format_amount(rows[0].amount_nanos), "0.30");
    })
    .await;
}

/// What the Stripe slice keeps in the ledger database, on both backends: webhook events once by ID,
/// payments per period, credit entries, and usage reports (unreported rows, intent, sent, refused,
/// totals per meter).
#[tokio::test]
async fn stripe_events_payments_and_usage_reports() {
    use quartermaster::ledger::stripe_usage::UsageReport;
    each_backend(async |l: Ledger, _| {
        let k = l.kind();
        assert!(
            l.record_stripe_event("evt_1", "invoice.paid")
                .await
                .unwrap()
        );
        assert!(
            !l.record_stripe_event("evt_1", "invoice.paid")
                .await
                .unwrap(),
            "{k}"
        );
        let mut pay = entry(
            "stripe-invoice/in_1",
            &ACME,
            CreditType::Payment,
            10_000_000_000,
        );
        pay.external_ref = "in_1".into();
        l.credit(&pay).await.unwrap();
        l.credit(&entry("g", &ACME, CreditType::Grant, 5))
            .await
            .unwrap();
        let now = jiff::Timestamp::now().as_second();
        assert_eq!(
            l.payments(&ACME, now - 60, now + 60).await.unwrap(),
            [("USD".to_string(), 10_000_000_000)],
            "{k}"
        );
        assert!(l.payments(&ACME, 0, now - 60).await.unwrap().is_empty());
        let credits = l.credits(&ACME).await.unwrap();
        assert_eq!(credits.len(), 2);
        assert!(
            credits
                .iter()
                .any(|c| c.kind == CreditType::Payment && c.external_ref == "in_1")
        );

        let (nov, _) = parse_period("2026-11").unwrap();
        l.record(&[
            ev("a", "acme", nov, 3600, "0.01"),
            ev("b", "acme", nov + 3600, 1800, "0.01"),
        ])
        .await
        .unwrap();
        let todo = l.unreported("acme-uid", "vm_seconds", 0, 10).await.unwrap();
        assert_eq!(todo.len(), 2, "{k}");
        let report = |key: &str, q: i64| UsageReport {
            usage_key: key.into(),
            project_uid: "acme-uid".into(),
            meter: "vm_seconds".into(),
            quantity: q,
            value: "1".into(),
            customer: "cus_1".into(),
            event_name: "vm_hours".into(),
            identifier: format!("id-{key}"),
            event_time: nov,
            attempted_at: now,
        };
        assert!(l.report_intent(&report("a", 3600)).await.unwrap());
        assert!(!l.report_intent(&report("a", 3600)).await.unwrap());
        assert!(l.report_intent(&report("b", 1800)).await.unwrap());
        assert!(
            l.unreported("acme-uid", "vm_seconds", 0, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(l.reports_in_flight("acme-uid").await.unwrap().len(), 2);
        l.report_sent("a").await.unwrap();
        l.report_refused("b").await.unwrap();
        assert!(l.reports_in_flight("acme-uid").await.unwrap().is_empty());
        assert_eq!(
            l.unreported("acme-uid", "vm_seconds", 0, 10)
                .await
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            l.reported_totals("acme-uid", nov, nov + 30 * 86400)
                .await
                .unwrap(),
            [("vm_seconds".to_string(), 3600, 5400)],
            "{k}"
        );
    })
    .await;
}

/// A released snapshot's record on each backend: opened once (a retry changes nothing), followed
/// per account, its gone time fixed by the first round that saw it gone (a crash cannot move the end
/// of its cost), its cursor never moving back, and closed releases no longer followed.
#[tokio::test]
async fn a_released_snapshot_is_opened_once_and_its_end_is_fixed_once() {
    use quartermaster::ledger::released::ReleasedSnapshot;
    each_backend(async |l: Ledger, _| {
        let r = ReleasedSnapshot {
            object_uid: "snap-1".into(),
            provider_config_uid: "pc-1".into(),
            provider_config: "do".into(),
            namespace: "team-a".into(),
            name: "kept".into(),
            snapshot_id: "77".into(),
            server_id: "9".into(),
            size_mb: 2500,
            released_at: 1000,
            metered_until: 1000,
            gone_at: None,
        };
        l.open_release(&r).await.unwrap();
        let retried = ReleasedSnapshot {
            released_at: 5000,
            metered_until: 5000,
            ..r.clone()
        };
        l.open_release(&retried).await.unwrap();
        assert_eq!(l.open_releases("pc-1").await.unwrap(), vec![r.clone()]);
        assert!(l.open_releases("pc-2").await.unwrap().is_empty());
        l.advance_release("snap-1", 4600, 2600, None).await.unwrap();
        l.advance_release("snap-1", 4000, 2600, None).await.unwrap();
        assert_eq!(l.mark_gone("snap-1", 7000).await.unwrap(), 7000);
        assert_eq!(
            l.mark_gone("snap-1", 9000).await.unwrap(),
            7000,
            "the first time it was seen gone stands ({})",
            l.kind()
        );
        let open = l.open_releases("pc-1").await.unwrap();
        assert_eq!(
            (open[0].metered_until, open[0].size_mb, open[0].gone_at),
            (4600, 2600, Some(7000)),
            "{}",
            l.kind()
        );
        l.advance_release("snap-1", 7000, 2600, Some(9100))
            .await
            .unwrap();
        assert!(l.open_releases("pc-1").await.unwrap().is_empty());
        assert_eq!(
            l.release_of("snap-1")
                .await
                .unwrap()
                .map(|r| r.metered_until),
            Some(7000)
        );
    })
    .await;
}

//! The ledger against real PostgreSQL (the test script starts one: `QM_TEST_DATABASE_URL`) and SQLite:
//! the same event twice is one row, parallel writers, restart recovery, exact sums in a known scenario,
//! credits and reports.

use std::str::FromStr;

use quartermaster::ledger::metering::{self, HourlyPrice, Observation, Subject};
use quartermaster::ledger::store::GroupBy;
use quartermaster::ledger::{Ledger, Meter, UsageEvent, format_amount, parse_period};
use rust_decimal::Decimal;

mod common;
use common::db::{fresh_postgres, sqlite};

fn ev(key: &str, project: &str, start: i64, quantity: i64, price: &str) -> UsageEvent {
    UsageEvent {
        key: key.into(),
        namespace: "demo".into(),
        project: project.into(),
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
            .usage("demo", "acme", nov, nov + 30 * 86400, GroupBy::Meter)
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
        let rows = l
            .usage("demo", "acme", 0, i64::MAX, GroupBy::Meter)
            .await
            .unwrap();
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
        let (_, usage) = l.balance("demo", "acme", "USD").await.unwrap();
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
            name: "web".into(),
            uid: "uid-9".into(),
        };
        // The vendor's price with a 20 % markup: the tenant pays 1.2 times what the vendor charges.
        let obs = |billed, size: &str, price: &str| Observation {
            billed,
            size: size.into(),
            price: Some(HourlyPrice::with_markup(
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
        let rows = l
            .usage("demo", "acme", nov, end, GroupBy::Meter)
            .await
            .unwrap();
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
        let by_day = l
            .usage("demo", "acme", nov, end, GroupBy::Day)
            .await
            .unwrap();
        assert_eq!(by_day[0].key, "2026-11-01");
        let by_object = l
            .usage("demo", "acme", nov, end, GroupBy::Object)
            .await
            .unwrap();
        assert_eq!(by_object[0].key, "VirtualMachine/web");
    })
    .await;
}

#[tokio::test]
async fn credits_grants_minus_usage() {
    each_backend(async |l: Ledger, _| {
        assert!(!l.knows("demo", "acme").await.unwrap());
        assert!(
            l.credit("grant-1", "demo", "acme", 50_000_000_000, "USD", "welcome")
                .await
                .unwrap()
        );
        assert!(
            !l.credit("grant-1", "demo", "acme", 50_000_000_000, "USD", "welcome")
                .await
                .unwrap(),
            "same key twice"
        );
        l.record(&[ev("vm/uid-1/0", "acme", 0, 3600, "12.5")])
            .await
            .unwrap();
        let (granted, used) = l.balance("demo", "acme", "USD").await.unwrap();
        assert_eq!(format_amount(granted - used), "37.50");
        assert!(l.knows("demo", "acme").await.unwrap());
    })
    .await;
}

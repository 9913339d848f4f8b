//! Ledger benchmark (prints figures; asserts nothing about time):
//! 1. idempotent ingest into PostgreSQL from the client (`Ledger::record`: batched UNNEST insert with
//!    `ON CONFLICT DO NOTHING` plus the daily roll-up), events/s;
//! 2. the server-side floor in the same run: `INSERT … SELECT … ON CONFLICT DO NOTHING` of the same rows
//!    from a table already on the server;
//! 3. a project-month report (by meter, object, day) over everything ingested.
//!
//! Run: `scripts/bench` (starts a throwaway PostgreSQL), or `DATABASE_URL=postgres://… cargo bench --bench ledger`.
//! `QM_BENCH_EVENTS` (default 10000000) sets the event count; `QM_BENCH_WRITERS` (default 2) the writers.

use std::str::FromStr;
use std::time::Instant;

use quartermaster::ledger::store::GroupBy;
use quartermaster::ledger::{Ledger, Meter, UsageEvent, parse_period};
use rust_decimal::Decimal;

const OBJECTS: i64 = 1000;

fn event(i: i64, month_start: i64, price: Decimal) -> UsageEvent {
    // Events spread over the month: object i % OBJECTS, one window of 60 s each.
    let object = i % OBJECTS;
    let start = month_start + (i / OBJECTS) * 60 % (30 * 86400);
    UsageEvent {
        key: format!("bench/{object}/{i}"),
        namespace: "bench".into(),
        project: "big".into(),
        project_uid: "big-uid".into(),
        object_kind: "VirtualMachine".into(),
        object_name: format!("vm-{object}"),
        object_uid: format!("00000000-0000-0000-0000-{object:012}"),
        meter: if i % 3 == 0 {
            Meter::LlmInputTokens
        } else {
            Meter::VmSeconds
        },
        quantity: 60,
        unit_price: price,
        vendor_unit_price: price,
        price_quantity: 3600,
        currency: "USD".into(),
        window_start: start,
        window_end: start + 60,
        attributes: serde_json::json!({"size": "s-1vcpu-1gb"}),
    }
}

#[tokio::main]
async fn main() {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        eprintln!("SKIPPED: set DATABASE_URL to a PostgreSQL database (scripts/bench does)");
        return;
    };
    let total: i64 = std::env::var("QM_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let writers: i64 = std::env::var("QM_BENCH_WRITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let ledger = Ledger::connect(Some(&url), std::path::Path::new(""))
        .await
        .expect("connect");
    ledger.migrate().await.expect("migrate");
    let Ledger::Postgres(pool) = &ledger else {
        eprintln!("the benchmark targets PostgreSQL");
        return;
    };
    for t in ["usage_events", "usage_daily", "credits"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("TRUNCATE {t}")))
            .execute(pool)
            .await
            .unwrap();
    }
    let (month, month_end) = parse_period("2026-11").unwrap();
    let price = Decimal::from_str("0.00893").unwrap();
    let batch = quartermaster::ledger::store::BATCH as i64;
    println!("ledger benchmark: {total} events, {writers} writers, batches of {batch}, PostgreSQL");

    // 1. Client-side idempotent ingest.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w * batch;
            while i < total {
                let events: Vec<UsageEvent> = (i..(i + batch).min(total))
                    .map(|n| event(n, month, price))
                    .collect();
                ledger.record(&events).await.expect("record");
                i += writers * batch;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let n = ledger.event_count().await.unwrap();
    assert_eq!(n, total, "every event recorded once");
    println!(
        "ingest (client, new events):        {:>10.0} events/s  ({total} in {secs:.1} s)",
        total as f64 / secs
    );

    // Replaying the first 1M (all duplicates) measures the idempotent no-op path.
    let replay = total.min(1_000_000);
    let started = Instant::now();
    for chunk_start in (0..replay).step_by(batch as usize) {
        let events: Vec<UsageEvent> = (chunk_start..(chunk_start + batch).min(replay))
            .map(|n| event(n, month, price))
            .collect();
        ledger.record(&events).await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "ingest (client, duplicates, 1 writer): {:>7.0} events/s  ({replay} in {secs:.1} s)",
        replay as f64 / secs
    );
    assert_eq!(
        ledger.event_count().await.unwrap(),
        total,
        "duplicates were not counted"
    );

    // 2. Server-side floor: the same rows, INSERT … SELECT … ON CONFLICT DO NOTHING into an empty table.
    let floor_rows = total.min(2_000_000);
    sqlx::query("DROP TABLE IF EXISTS floor_events")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE floor_events (LIKE usage_events INCLUDING ALL)")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("DROP TABLE IF EXISTS floor_source")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE floor_source AS SELECT * FROM usage_events LIMIT {floor_rows}"
    )))
    .execute(pool)
    .await
    .unwrap();
    let started = Instant::now();
    sqlx::query("INSERT INTO floor_events SELECT * FROM floor_source ON CONFLICT (idempotency_key) DO NOTHING")
        .execute(pool)
        .await
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "server-side floor (INSERT…SELECT):    {:>7.0} events/s  ({floor_rows} in {secs:.1} s)",
        floor_rows as f64 / secs
    );
    sqlx::query("DROP TABLE floor_events, floor_source")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("VACUUM ANALYZE usage_daily")
        .execute(pool)
        .await
        .unwrap();

    // 3. Project-month reports over everything ingested.
    for by in [GroupBy::Meter, GroupBy::Object, GroupBy::Day] {
        let mut times = Vec::new();
        let mut rows = 0;
        for _ in 0..21 {
            let t = Instant::now();
            rows = ledger
                .usage(
                    &quartermaster::ledger::store::ProjectRef {
                        namespace: "bench",
                        name: "big",
                        uid: "big-uid",
                    },
                    month,
                    month_end,
                    by,
                )
                .await
                .unwrap()
                .len();
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(|a, b| a.total_cmp(b));
        println!(
            "report by {:<7} over {total} events: p50 {:>7.2} ms, max {:>7.2} ms ({rows} rows)",
            format!("{by:?}").to_lowercase(),
            times[times.len() / 2],
            times[times.len() - 1]
        );
    }
}

//! The 1NCE client against Prism mocks of 1NCE's own OpenAPI documents (authorization, SIM management v1
//! and v2: one Prism each, as 1NCE serves them under one base): every request must validate, and the
//! answers decode into exact figures. A local mock of our own injects what Prism cannot: a token revoked
//! while many calls are in flight, 409 for a pending change, 429 with `Retry-After`.

mod common;
use common::prism::{Prism, specs_dir};

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use quartermaster::cloud::onence::{Change, Endpoints, OneNce, SimChange};
use quartermaster::http::{HttpClient, RetryPolicy};

const CREDENTIALS: &str = r#"{"clientId":"12345-api","clientSecret":"s3cr3t-1nce"}"#;

fn client(endpoints: Endpoints) -> OneNce {
    OneNce::new(
        HttpClient::new("1nce", RetryPolicy::default()),
        endpoints,
        CREDENTIALS,
    )
}

#[tokio::test]
async fn vendor_onence_client_requests_validate_against_the_specs() {
    let Some(specs) = specs_dir() else { return };
    let auth = Prism::start(&specs, "1nce/authorization.openapi.yaml");
    let v1 = Prism::start(&specs, "1nce/sim-management.openapi.yaml");
    let v2 = Prism::start(&specs, "1nce/sim-management-v2.openapi.yaml");
    let c = client(Endpoints {
        auth: auth.url.clone(),
        v1: v1.url.clone(),
        v2: v2.url.clone(),
    });
    c.verify().await.expect("token + GET /v1/sims");
    let sims = c.list_sims().await.expect("GET /v1/sims pages");
    assert!(!sims.is_empty());
    let iccid = sims[0].iccid.clone();
    let sim = c
        .sim(&iccid)
        .await
        .expect("GET /v1/sims/{iccid}")
        .expect("the example SIM");
    assert!(!sim.status.is_empty(), "{sim:?}");
    assert!(sim.imsi.is_some(), "{sim:?}");
    let change = SimChange {
        enabled: false,
        label: Some("tracker-7".into()),
        imei_lock: Some(true),
    };
    assert_eq!(
        c.change(&iccid, &change)
            .await
            .expect("PUT /v2/sims/{iccid}"),
        Change::Queued
    );
    let data = c.quota(&iccid, false).await.expect("GET quota/data");
    // The example's 435.787951 MB remaining, exactly, in bytes.
    assert_eq!(data.remaining, 435_787_951, "{data:?}");
    assert_eq!(data.total, 500_000_000);
    let sms = c.quota(&iccid, true).await.expect("GET quota/sms");
    assert!(sms.total >= sms.remaining, "{sms:?}");
    let usage = c
        .usage(&iccid, "2026-11-01", "2026-11-30")
        .await
        .expect("GET usage");
    assert!(!usage.is_empty());
    assert!(usage.iter().all(|d| d.date.len() == 10), "{usage:?}");
    assert!(
        c.connectivity(&iccid)
            .await
            .expect("GET /v1/sims/{iccid}/status")
            .is_some()
    );
    c.top_up(&iccid).await.expect("POST /v1/sims/{iccid}/topup");
    c.send_sms(&iccid, "hello device")
        .await
        .expect("POST /v1/sims/{iccid}/sms");
    c.reset_connectivity(&iccid)
        .await
        .expect("POST /v1/sims/{iccid}/reset");
    // Network events (v2): the spec's example event decodes with its type, network and country.
    let events = c
        .sim_events(&iccid, 50)
        .await
        .expect("GET /v2/sims/{iccid}/events");
    assert!(!events.is_empty());
    for e in &events {
        assert!(!e.kind.is_empty() && e.country.is_some(), "{e:?}");
    }
    // Every call above shared one token.
    assert_eq!(c.token_requests().await, 1);
}

#[derive(Default)]
struct Counters {
    tokens: AtomicUsize,
    sim_calls: AtomicUsize,
    limited: AtomicUsize,
}

/// A local 1NCE of our own: tokens `t1`, `t2`, …; `t1` is revoked after the first 100 SIM reads (401);
/// the first SIM read answers 429 with `Retry-After: 1`; a change answers 409.
async fn fault_server() -> (String, Arc<Counters>) {
    let counters = Arc::new(Counters::default());
    let (c1, c2, c3) = (counters.clone(), counters.clone(), counters.clone());
    let app = axum::Router::new()
        .route(
            "/oauth/token",
            axum::routing::post(move |headers: HeaderMap| {
                let c = c1.clone();
                async move {
                    let basic = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    if !basic.starts_with("Basic ") {
                        return (StatusCode::BAD_REQUEST, String::new());
                    }
                    let n = c.tokens.fetch_add(1, Ordering::SeqCst) + 1;
                    (
                        StatusCode::OK,
                        format!(
                            r#"{{"status_code":200,"access_token":"t{n}","token_type":"bearer","expires_in":3600}}"#
                        ),
                    )
                }
            }),
        )
        .route(
            "/v1/sims/{iccid}",
            axum::routing::get(move |headers: HeaderMap| {
                let c = c2.clone();
                async move {
                    let bearer = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    let n = c.sim_calls.fetch_add(1, Ordering::SeqCst);
                    if n == 0 {
                        c.limited.fetch_add(1, Ordering::SeqCst);
                        return (
                            StatusCode::TOO_MANY_REQUESTS,
                            [("retry-after", "1")],
                            String::new(),
                        );
                    }
                    if bearer == "Bearer t1" && n > 100 {
                        return (StatusCode::UNAUTHORIZED, [("x-mock", "revoked")], String::new());
                    }
                    (
                        StatusCode::OK,
                        [("x-mock", "ok")],
                        r#"{"iccid":"8988280666000000001","status":"Enabled","imei_lock":false}"#.into(),
                    )
                }
            }),
        )
        .route(
            "/v2/sims/{iccid}",
            axum::routing::put(move || {
                let _c = c3.clone();
                async move { (StatusCode::CONFLICT, r#"{"message":"change pending"}"#) }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}"), counters)
}

/// 1,000 SIM reads, 200 of them in flight when the token is revoked: two token requests in all (the
/// first token and one refresh), a 429 waited out, and a 409 read as "a change is pending".
#[tokio::test]
async fn one_token_refresh_however_many_calls_see_the_401() {
    let (url, counters) = fault_server().await;
    let c = Arc::new(client(Endpoints::at(Some(&url))));
    let started = std::time::Instant::now();
    assert!(c.sim("8988280666000000001").await.unwrap().is_some());
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the 429's Retry-After was not honoured"
    );
    assert_eq!(counters.limited.load(Ordering::SeqCst), 1);
    let reads = (0..999).map(|_| {
        let c = c.clone();
        tokio::spawn(async move { c.sim("8988280666000000001").await })
    });
    for r in futures::future::join_all(reads).await {
        assert!(r.unwrap().unwrap().is_some());
    }
    assert!(
        counters.sim_calls.load(Ordering::SeqCst) > 1000,
        "the token was never revoked: the test proves nothing"
    );
    assert_eq!(counters.tokens.load(Ordering::SeqCst), 2);
    assert_eq!(c.token_requests().await, 2);
    let change = SimChange {
        enabled: true,
        label: None,
        imei_lock: None,
    };
    assert_eq!(
        c.change("8988280666000000001", &change).await.unwrap(),
        Change::Pending
    );
}

/// The client against `quartermaster sim`'s 1NCE subset: a change is queued and shows only after the
/// simulator applies it, a second change meanwhile is "pending" (409), traffic shows as usage, a top-up
/// creates one order, and the 10 requests a second are held by 429 and waited out.
#[tokio::test]
async fn the_simulator_applies_changes_later_and_meters_traffic() {
    let sim = common::start_sim(|c| {
        c.onence_apply_secs = 1;
        c.onence_rate_limit = 10;
    })
    .await;
    let c = client(Endpoints::at(Some(&sim.url)));
    let sims = c.list_sims().await.unwrap();
    assert_eq!(sims.len(), 3);
    let iccid = sims[0].iccid.clone();
    assert_eq!(sims[0].iccid_with_luhn.as_deref().map(str::len), Some(20));
    let off = SimChange {
        enabled: false,
        label: Some("meter-1".into()),
        imei_lock: Some(true),
    };
    assert_eq!(c.change(&iccid, &off).await.unwrap(), Change::Queued);
    assert_eq!(c.change(&iccid, &off).await.unwrap(), Change::Pending);
    assert_eq!(c.sim(&iccid).await.unwrap().unwrap().status, "Enabled");
    common::eventually(Duration::from_secs(10), "the change applied", || async {
        let s = c.sim(&iccid).await.ok()??;
        (s.status == "Disabled" && s.imei_lock && s.label.as_deref() == Some("meter-1"))
            .then_some(())
    })
    .await;
    // Traffic at the simulator shows as the day's usage and consumes the quota.
    let http = reqwest::Client::new();
    http.post(format!("{}/_sim/1nce/sims/{iccid}/traffic", sim.url))
        .json(&serde_json::json!({"bytes": 1_234_567, "sms": 2}))
        .send()
        .await
        .unwrap();
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
        .to_string();
    let usage = c.usage(&iccid, &today, &today).await.unwrap();
    assert_eq!((usage[0].data_bytes, usage[0].sms), (1_234_567, 2));
    let q = c.quota(&iccid, false).await.unwrap();
    assert_eq!(q.remaining, 500_000_000 - 1_234_567);
    assert!(c.top_up(&iccid).await.unwrap().is_some());
    let orders: Vec<serde_json::Value> = http
        .get(format!("{}/_sim/1nce/orders", sim.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(orders.len(), 1);
    // A burst past 10 a second is answered 429 and waited out by the retry policy.
    let gets = async || -> u64 {
        let v: serde_json::Value = http
            .get(format!("{}/_sim/stats", sim.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["get"].as_u64().unwrap()
    };
    let before = gets().await;
    let burst = (0..25).map(|_| c.sim(&iccid));
    for r in futures::future::join_all(burst).await {
        assert!(r.unwrap().is_some());
    }
    assert!(
        gets().await - before > 25,
        "no call of the burst was refused with 429 and retried"
    );
}

/// The simulator pushes what 1NCE pushes: Data Streamer usage records and forwarded device SMS, re-sent
/// until answered 200 — here the receiving server starts only after the first attempts failed.
#[tokio::test]
async fn the_simulator_pushes_usage_and_device_sms_until_they_are_taken() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sim = common::start_sim(|c| {
        c.onence_push_url = Some(format!("http://127.0.0.1:{port}"));
        c.onence_push_auth = Some("push:pw".into());
    })
    .await;
    let iccid = quartermaster::sim::onence::FIRST_ICCID.to_string();
    quartermaster::install_crypto_provider();
    let http = reqwest::Client::new();
    http.post(format!("{}/_sim/1nce/sims/{iccid}/traffic", sim.url))
        .json(&serde_json::json!({"bytes": 1_500_000}))
        .send()
        .await
        .unwrap();
    http.post(format!("{}/_sim/1nce/sims/{iccid}/device-sms", sim.url))
        .json(&serde_json::json!({"payload": "HELLO"}))
        .send()
        .await
        .unwrap();
    // Nothing listens yet: the pushes fail and are sent again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dir = tempfile::tempdir().unwrap();
    let (ledger, _) = common::db::sqlite(&dir).await;
    let hook = quartermaster::webhooks::router(
        Some(Arc::new(quartermaster::webhooks::Streamer::new(
            ledger.clone(),
            "push",
            "pw",
            quartermaster::metrics::Metrics::new(),
        ))),
        None,
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move { axum::serve(listener, hook).await.unwrap() });
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
        .to_string();
    common::eventually(Duration::from_secs(20), "both pushes taken", || async {
        let streamed = ledger.streamed(&iccid, &today).await.ok()?;
        let sms = ledger.inbound_sms(&iccid, 0).await.ok()?;
        let data = streamed
            .iter()
            .find(|(_, m, _)| m == "sim_data_bytes")
            .map(|(_, _, q)| *q);
        (data == Some(1_500_000) && sms.len() == 1 && sms[0].payload == "HELLO").then_some(())
    })
    .await;
}

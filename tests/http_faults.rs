//! Fault injection against the shared HTTP policy, from a local mock: 429 with Retry-After, 5xx, timeouts,
//! non-retryable 4xx, and the rule that a non-idempotent POST is not retried after the vendor may have
//! acted on it. Assertions count requests; none depends on timing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use quartermaster::http::{HttpClient, HttpError, RetryPolicy};
use reqwest::Method;

/// A mock answering from a script: the n-th request gets `script[n]` (the last entry repeats).
#[derive(Clone)]
struct Mock {
    hits: Arc<AtomicUsize>,
    script: Arc<Vec<(u16, Option<&'static str>, u64)>>, // (status, Retry-After, delay ms)
}

async fn handler(State(m): State<Mock>) -> Response {
    let n = m.hits.fetch_add(1, Ordering::SeqCst);
    let (status, retry_after, delay) = m.script[n.min(m.script.len() - 1)];
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut r = (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(
            serde_json::json!({"message": format!("scripted {status}"), "ok": status < 300}),
        ),
    )
        .into_response();
    if let Some(v) = retry_after {
        r.headers_mut().insert("retry-after", v.parse().unwrap());
    }
    r
}

async fn mock(script: Vec<(u16, Option<&'static str>, u64)>) -> (String, Arc<AtomicUsize>) {
    let m = Mock {
        hits: Arc::default(),
        script: Arc::new(script),
    };
    let hits = m.hits.clone();
    let app = axum::Router::new()
        .route("/{*p}", any(handler))
        .with_state(m);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, hits)
}

fn client() -> HttpClient {
    HttpClient::new(
        "test",
        RetryPolicy {
            max_attempts: 4,
            base: Duration::from_millis(20),
            cap: Duration::from_secs(2),
            timeout: Duration::from_millis(300),
        },
    )
}

#[tokio::test]
async fn throttled_then_ok_honours_retry_after_and_succeeds() {
    let (url, hits) = mock(vec![(429, Some("1"), 0), (200, None, 0)]).await;
    let c = client();
    let started = std::time::Instant::now();
    let v: serde_json::Value = c
        .json(
            c.request(Method::POST, &format!("{url}/v2/droplets")),
            false,
        )
        .await
        .unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "429 is retried even for a POST (the vendor did not act)"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "Retry-After: 1 was not honoured"
    );
}

#[tokio::test]
async fn server_errors_are_retried_for_idempotent_calls_only() {
    let (url, hits) = mock(vec![(503, None, 0), (500, None, 0), (200, None, 0)]).await;
    let c = client();
    c.send(c.request(Method::GET, &format!("{url}/v2/account")), true)
        .await
        .unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 3);

    let (url, hits) = mock(vec![(503, None, 0), (200, None, 0)]).await;
    let err = c
        .send(
            c.request(Method::POST, &format!("{url}/v2/droplets")),
            false,
        )
        .await
        .unwrap_err();
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "a POST that may have been acted on must not be repeated"
    );
    assert!(err.is_transient());
    assert_eq!(err.status(), Some(503));
}

#[tokio::test]
async fn client_errors_are_not_retried_and_carry_the_vendor_message() {
    let (url, hits) = mock(vec![(422, None, 0), (200, None, 0)]).await;
    let c = client();
    let err = c
        .send(
            c.request(Method::GET, &format!("{url}/v2/droplets/1")),
            true,
        )
        .await
        .unwrap_err();
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert!(!err.is_transient());
    assert!(err.to_string().contains("scripted 422"), "{err}");
}

#[tokio::test]
async fn timeouts_are_retried_then_reported() {
    let (url, hits) = mock(vec![(200, None, 2000)]).await;
    let c = client();
    let err = c
        .send(c.request(Method::GET, &format!("{url}/v2/account")), true)
        .await
        .unwrap_err();
    assert!(matches!(err, HttpError::Timeout { .. }), "{err:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 4, "every attempt timed out");

    let (url, hits) = mock(vec![(200, None, 2000)]).await;
    let err = c
        .send(
            c.request(Method::POST, &format!("{url}/v2/droplets")),
            false,
        )
        .await
        .unwrap_err();
    assert!(err.is_transient());
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "a timed-out POST must not be repeated"
    );
}

#[tokio::test]
async fn retry_after_beyond_the_cap_gives_up_at_once() {
    let (url, hits) = mock(vec![(429, Some("3600"), 0), (200, None, 0)]).await;
    let c = client();
    let err = c
        .send(c.request(Method::GET, &format!("{url}/v2/account")), true)
        .await
        .unwrap_err();
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(err.status(), Some(429));
}

#[tokio::test]
async fn the_simulator_faults_reach_the_client_and_are_survived() {
    // Every API call of the simulator is throttled half the time: the client's retries absorb it.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = quartermaster::sim::SimConfig::fast(dir.path().join("s.json"));
    cfg.throttle_rate = 0.5;
    cfg.retry_after_secs = 0;
    let sim = quartermaster::sim::Sim::bind(cfg).await.unwrap();
    let url = format!("http://{}", sim.addr().unwrap());
    tokio::spawn(sim.serve(futures::future::pending()));
    let account = quartermaster::cloud::Account {
        provider: quartermaster::crd::ProviderType::Digitalocean,
        endpoint: Some(url),
        credentials: "t".into(),
        rate_limit: None,
    };
    // 40 attempts: a call fails only after 40 throttles in a row (0.5^40, never in practice); with 12
    // this test failed about once in 400 runs (it did, once, in CI).
    let policy = RetryPolicy {
        max_attempts: 40,
        base: Duration::from_millis(5),
        cap: Duration::from_millis(50),
        timeout: Duration::from_secs(5),
    };
    let registry = prometheus::Registry::new();
    let metrics = quartermaster::http::HttpMetrics::register(&registry);
    let p = quartermaster::cloud::connect(&account, policy, Some(metrics)).unwrap();
    let count = |name: &str, label: &str| -> f64 {
        registry
            .gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric())
            .filter(|m| m.get_label().iter().any(|l| l.value() == label))
            .map(|m| m.get_counter().get_value())
            .sum()
    };
    // At least 10 calls, and more until a simulated 429 was seen (at a rate of 0.5, ten calls saw
    // none once in 1,024 runs, and did once in CI; a hundred never in practice): every call retries
    // until it gets through.
    let mut calls = 0;
    while calls < 10 || (count("quartermaster_vendor_requests_total", "429") < 1.0 && calls < 100) {
        p.verify().await.expect("retries absorb simulated 429s");
        calls += 1;
    }
    let throttled = count("quartermaster_vendor_requests_total", "429");
    let retried = count("quartermaster_vendor_retries_total", "throttled");
    assert!(throttled >= 1.0, "no simulated 429 reached the client");
    assert_eq!(
        throttled, retried,
        "every 429 was retried ({throttled} throttled, {retried} retries)"
    );
}

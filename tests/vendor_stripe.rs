//! The Stripe client against a Prism mock of Stripe's own OpenAPI document (flat form bodies: Prism
//! validates them) and, for nested bodies Prism wrongly refuses (`items[0][price]`), a local mock that
//! checks the exact form keys and answers with Stripe's own fixture (fixtures3.json). Idempotency keys
//! are reused across retries of one request and change with its parameters.

mod common;
use common::prism::{Prism, specs_dir};

use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use quartermaster::cloud::stripe::{API_VERSION, Stripe};
use quartermaster::http::{HttpClient, RetryPolicy};

const UID: &str = "0f6b3a55-1c53-4bd1-9c39-d2e8f8d1b1aa";

fn client(url: &str) -> Stripe {
    quartermaster::install_crypto_provider();
    Stripe::new(
        HttpClient::new("stripe", RetryPolicy::default()),
        Some(url),
        "sk_test_FAKE",
    )
}

#[tokio::test]
async fn vendor_stripe_flat_calls_validate_against_the_spec() {
    let Some(specs) = specs_dir() else { return };
    let prism = Prism::start(&specs, "stripe/spec3.prism.yaml");
    let c = client(&prism.url);
    c.verify().await.expect("GET /v1/customers");
    let created = c
        .create_customer(UID, "team-a/acme")
        .await
        .expect("POST /v1/customers");
    assert!(!created.id.is_empty(), "{created:?}");
    c.find_customer(UID)
        .await
        .expect("GET /v1/customers/search");
    c.customer("cus_1").await.expect("GET /v1/customers/{id}");
    c.delete_customer("cus_1")
        .await
        .expect("DELETE /v1/customers/{id}");
    // GET /v1/subscriptions has deepObject query parameters (automatic_tax) Prism wrongly requires:
    // the subscription tests against `quartermaster sim` list them.
    // Prism validates this request but cannot build an invoice list ("schema too complex", 500): a 422
    // would mean the request is wrong.
    match c.invoices("sub_1", 5).await {
        Ok(_) => {}
        Err(e) => assert!(
            e.to_string().contains("too complex"),
            "GET /v1/invoices: {e}"
        ),
    }
    c.find_subscription(UID)
        .await
        .expect("GET /v1/subscriptions/search");
    let s = c
        .subscription("sub_1")
        .await
        .expect("GET /v1/subscriptions/{id}")
        .expect("the example subscription");
    assert!(!s.status.is_empty(), "{s:?}");
    // POST /v1/subscriptions/{id} has deepObject parameters Prism wrongly requires: the local mock below
    // takes it.
}

#[derive(Default)]
struct Seen {
    keys: Vec<String>,
    bodies: Vec<String>,
}

/// `POST /v1/subscriptions`: the first attempt of each key fails with 500 (the retry must reuse the
/// key), then Stripe's fixture subscription is returned.
async fn nested_mock(specs: &std::path::Path) -> (String, Arc<Mutex<Seen>>) {
    let fixtures: serde_json::Value =
        serde_json::from_slice(&std::fs::read(specs.join("stripe/fixtures3.json")).unwrap())
            .unwrap();
    let subscription = fixtures["resources"]["subscription"].clone();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (s2, s3, sub3) = (seen.clone(), seen.clone(), subscription.clone());
    let app = axum::Router::new()
        .route(
            "/v1/subscriptions/{id}",
            axum::routing::post(move |body: String| {
                let (seen, sub) = (s3.clone(), sub3.clone());
                async move {
                    seen.lock().unwrap().bodies.push(body);
                    (StatusCode::OK, sub.to_string())
                }
            }),
        )
        .route(
            "/v1/subscriptions",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let (seen, sub) = (s2.clone(), subscription.clone());
                async move {
                    let h = |k: &str| {
                        headers
                            .get(k)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string()
                    };
                    assert_eq!(h("stripe-version"), API_VERSION);
                    assert_eq!(h("content-type"), "application/x-www-form-urlencoded");
                    let key = h("idempotency-key");
                    let mut s = seen.lock().unwrap();
                    let first = !s.keys.contains(&key);
                    s.keys.push(key);
                    s.bodies.push(body);
                    if first {
                        (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            r#"{"error":{"message":"boom"}}"#.to_string(),
                        )
                    } else {
                        (StatusCode::OK, sub.to_string())
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

#[tokio::test]
async fn nested_creates_are_encoded_and_retried_with_the_same_key() {
    let Some(specs) = specs_dir() else { return };
    let (url, seen) = nested_mock(&specs).await;
    let c = client(&url);
    let s = c
        .create_subscription(UID, "cus_1", &[("price_pro".into(), Some(3))], Some(14))
        .await
        .expect("retried after the 500");
    assert!(!s.id.is_empty());
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.keys.len(), 2, "one retry");
        assert_eq!(
            seen.keys[0], seen.keys[1],
            "the retry reused its idempotency key"
        );
        let body = &seen.bodies[0];
        for pair in [
            "customer=cus_1",
            "items%5B0%5D%5Bprice%5D=price_pro",
            "items%5B0%5D%5Bquantity%5D=3",
            "trial_period_days=14",
            "metadata%5Bquartermaster_uid%5D=0f6b3a55-1c53-4bd1-9c39-d2e8f8d1b1aa",
        ] {
            assert!(
                body.split('&').any(|p| p == pair),
                "{pair} missing from {body}"
            );
        }
    }
    // Another price: another key (not one Stripe would refuse for ever for changed parameters).
    c.create_subscription(UID, "cus_1", &[("price_max".into(), Some(3))], Some(14))
        .await
        .unwrap();
    {
        let seen = seen.lock().unwrap();
        assert_ne!(seen.keys[2], seen.keys[0]);
    }
    c.cancel_at_period_end(UID, 1, "sub_1", true).await.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.bodies.last().unwrap(), "cancel_at_period_end=true");
}

//! The Contabo client against a Prism mock of Contabo's own OpenAPI document: every request it sends must
//! validate (a 4xx from Prism fails the test; the spec requires an `x-request-id` UUID on every call), and
//! the answers decode into our types. The OAuth2 token endpoint is not in Contabo's spec: a tiny local
//! token server stands in for it.

mod common;
use common::prism::{Prism, specs_dir};

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use quartermaster::cloud::{self, Account, CloudError, PowerAction, ServerSpec, ServerState};
use quartermaster::crd::ProviderType;
use quartermaster::http::RetryPolicy;

const SPEC: &str = "contabo/openapi.yaml";
const CLIENT_SECRET: &str = "client-secret-7f3a";
const API_PASSWORD: &str = "api-password-91c2";

/// `POST /token`: checks the password-grant form and answers a fake token. Returns the base URL and the
/// number of token requests so far.
async fn token_server() -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = axum::Router::new().route(
        "/token",
        axum::routing::post(move |body: String| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let ok = body.contains("grant_type=password")
                    && body.contains("client_id=qm-client")
                    && body.contains(&format!("client_secret={CLIENT_SECRET}"))
                    && body.contains("username=api%40example.com")
                    && body.contains(&format!("password={API_PASSWORD}"));
                let (status, json) = if ok {
                    (
                        axum::http::StatusCode::OK,
                        r#"{"access_token":"fake","expires_in":300,"token_type":"Bearer"}"#,
                    )
                } else {
                    (
                        axum::http::StatusCode::UNAUTHORIZED,
                        r#"{"error":"invalid_grant","error_description":"Invalid user credentials"}"#,
                    )
                };
                (
                    status,
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    json,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}"), calls)
}

fn credentials(auth_url: &str) -> String {
    serde_json::json!({
        "clientId": "qm-client",
        "clientSecret": CLIENT_SECRET,
        "apiUser": "api@example.com",
        "apiPassword": API_PASSWORD,
        "authUrl": format!("{auth_url}/token"),
    })
    .to_string()
}

#[tokio::test]
async fn vendor_contabo_client_requests_validate_against_the_spec() {
    let Some(specs) = specs_dir() else { return };
    let prism = Prism::start(&specs, SPEC);
    let (auth, token_calls) = token_server().await;
    let account = Account {
        provider: ProviderType::Contabo,
        endpoint: Some(prism.url.clone()),
        credentials: credentials(&auth),
        rate_limit: None,
    };
    let p = cloud::connect(&account, RetryPolicy::default(), None).unwrap();
    assert_eq!(p.vendor(), "contabo");
    assert!(!p.accepts_root_password());
    assert!(p.resize_needs_power_off());
    p.verify().await.expect("GET /v1/compute/instances?size=1");

    let uid_tag = cloud::uid_tag("0f6b3a55-1c53-4bd1-9c39-d2e8f8d1b1aa");
    let spec = ServerSpec {
        name: "web-1".into(),
        region: "EU".into(),
        size: "V92".into(),
        image: "afecbb85-e2fc-46f0-9684-b46b1faf00bb".into(),
        ssh_keys: vec!["123".into()],
        user_data: Some("#cloud-config\n".into()),
        tags: vec![uid_tag.clone(), "web".into()],
        backups: true,
        ipv6: true,
        root_password: None,
        options: Default::default(),
    };
    let created = p.create(&spec).await.expect("POST /v1/compute/instances");
    // Contabo honours none of the vendor options: refused before any create.
    let vpc = ServerSpec {
        options: cloud::ServerOptions {
            vpc_id: Some("1".into()),
            ..Default::default()
        },
        ..spec.clone()
    };
    assert!(p.refuse_unsupported(&vpc).unwrap_err().contains("contabo"));
    assert!(!created.id.is_empty());
    assert!(created.name.contains(&uid_tag), "{created:?}");
    assert!(created.tags.contains(&uid_tag), "{created:?}");

    // Public keys cannot be sent: Contabo wants secret IDs.
    let with_pubkey = ServerSpec {
        ssh_keys: vec!["ssh-ed25519 AAAAC3Nza me@example".into()],
        ..spec.clone()
    };
    assert!(matches!(
        p.create(&with_pubkey).await,
        Err(CloudError::Unsupported(_))
    ));

    let got = p
        .get(&created.id)
        .await
        .expect("GET /v1/compute/instances/{id}")
        .expect("instance exists");
    assert!(!got.size.is_empty() && !got.region.is_empty(), "{got:?}");
    assert!(got.public_ipv4.is_some(), "{got:?}");
    // The mock's example instance has a cancelDate: it reads as being deleted.
    assert_eq!(got.state, ServerState::Deleting, "{got:?}");
    assert_eq!(p.get("abc").await.unwrap(), None);

    // The mock's instances are named "VPS", so nothing matches; the point is that the calls validate.
    let found = p
        .find_by_tag(&uid_tag)
        .await
        .expect("GET /v1/compute/instances");
    assert!(found.iter().all(|s| s.tags.contains(&uid_tag)));
    // One listing of the whole account (drift observation).
    let listed = p
        .list_servers()
        .await
        .expect("GET /v1/compute/instances")
        .expect("Contabo lists its instances");
    assert!(!listed.is_empty());

    for a in [PowerAction::On, PowerAction::Off, PowerAction::Reboot] {
        p.power(&created.id, a)
            .await
            .unwrap_or_else(|e| panic!("power {a:?}: {e}"));
    }
    // The ownership tag lives in the display name: adding it renames the instance.
    p.add_tag(&created.id, &uid_tag)
        .await
        .expect("GET + PATCH /v1/compute/instances/{id} (adoption)");
    let err = p.add_tag(&created.id, "blue").await.unwrap_err();
    assert!(matches!(err, CloudError::Unsupported(_)), "{err}");
    let err = p.resize(&created.id, "V95").await.unwrap_err();
    assert!(matches!(err, CloudError::Unsupported(_)), "{err}");
    p.delete(&created.id)
        .await
        .expect("POST /v1/compute/instances/{id}/cancel");

    let sizes = p.sizes().await.expect("static product table");
    assert!(sizes.iter().any(|s| s.slug == "V92"));
    for s in &sizes {
        assert!(s.price_monthly > rust_decimal::Decimal::ZERO, "{s:?}");
        assert!(s.price_hourly > rust_decimal::Decimal::ZERO, "{s:?}");
        assert_eq!(s.currency, "EUR");
    }
    let images = p.images().await.expect("GET /v1/compute/images");
    assert!(!images.is_empty());
    let regions = p.regions().await.expect("GET /v1/data-centers");
    assert!(
        regions.iter().any(|r| r.slug == "EU" && r.available),
        "{regions:?}"
    );

    // Snapshots: one of the instance (name cut to Contabo's 30 characters, the mark whole in the
    // description), the instance's snapshots by description, and deletion.
    let mark = cloud::snapshot_mark("0f6b3a55-1c53-4bd1-9c39-d2e8f8d1b1aa");
    let made = p
        .create_snapshot(&created.id, &mark)
        .await
        .expect("POST /v1/compute/instances/{id}/snapshots")
        .expect("Contabo names the snapshot at once");
    assert!(!made.id.is_empty(), "{made:?}");
    let found = p
        .find_snapshot(&created.id, &mark, 0)
        .await
        .expect("GET /v1/compute/instances/{id}/snapshots");
    assert_eq!(
        found,
        cloud::SnapshotLookup::Absent,
        "the mock's are described otherwise"
    );
    p.restore_snapshot(&created.id, &made.id)
        .await
        .expect("POST /v1/compute/instances/{id}/snapshots/{snapshotId}/rollback");
    p.delete_snapshot(&created.id, &made.id)
        .await
        .expect("DELETE /v1/compute/instances/{id}/snapshots/{snapshotId}");

    // One token served every call.
    assert_eq!(token_calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn vendor_contabo_refused_credentials_are_an_auth_error_without_secrets() {
    let Some(specs) = specs_dir() else { return };
    let prism = Prism::start(&specs, SPEC);
    let (auth, _) = token_server().await;
    let creds = credentials(&auth).replace(API_PASSWORD, "wrong-password-55");
    let account = Account {
        provider: ProviderType::Contabo,
        endpoint: Some(prism.url.clone()),
        credentials: creds,
        rate_limit: None,
    };
    let p = cloud::connect(&account, RetryPolicy::default(), None).unwrap();
    let err = p.verify().await.unwrap_err();
    assert!(err.is_auth(), "{err}");
    let text = format!("{err} {err:?}");
    assert!(
        !text.contains("wrong-password-55") && !text.contains(CLIENT_SECRET),
        "{text}"
    );
}

/// Proves the mock validates requests: a create whose `period` is a string and that has no
/// `x-request-id` is refused with a 4xx.
#[tokio::test]
async fn vendor_contabo_mock_rejects_an_invalid_create() {
    let Some(specs) = specs_dir() else { return };
    quartermaster::install_crypto_provider();
    let prism = Prism::start(&specs, SPEC);
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/compute/instances", prism.url))
        .bearer_auth("fake")
        .json(&serde_json::json!({ "period": "one", "productId": "V92", "region": "EU" }))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_client_error(), "{}", resp.status());
}

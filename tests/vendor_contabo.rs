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
    // Linux servers stay key-only; a Windows server's password is kept as a Contabo secret.
    assert!(!p.accepts_root_password(false) && p.accepts_root_password(true));
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
    // A Windows server's administrator password: a password secret made first (the mock's are named
    // otherwise, so none is found), its ID in the create's `rootPassword`.
    let windows = ServerSpec {
        root_password: Some(cloud::generate_password()),
        ..spec.clone()
    };
    p.create(&windows)
        .await
        .expect("GET + POST /v1/secrets, POST /v1/compute/instances with rootPassword");
    // Contabo honours none of the vendor options: refused before any create.
    let vpc = ServerSpec {
        options: cloud::ServerOptions {
            vpc_id: Some("1".into()),
            ..Default::default()
        },
        ..spec.clone()
    };
    assert!(p.refuse_unsupported(&vpc).unwrap_err().contains("contabo"));
    // Nor does it make a Project's VPC.
    let vpc_spec = cloud::VpcSpec {
        name: "qm-x-eu".into(),
        region: "EU".into(),
        ip_range: None,
    };
    assert!(matches!(
        p.create_vpc(&vpc_spec).await,
        Err(CloudError::Unsupported(_))
    ));
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
        .expect("GET /v1/compute/instances/{id}, POST …/cancel, GET /v1/secrets");

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

/// A password secret as the local mock keeps it.
#[derive(Clone)]
struct MockSecret {
    id: i64,
    name: String,
    value: String,
}

/// A local mock of the Contabo calls a Windows create makes: secrets (list by name, create, set,
/// delete) and instances, whose first create answers 500 (the vendor may or may not have acted).
#[derive(Clone, Default)]
struct Mock {
    secrets: Arc<std::sync::Mutex<Vec<MockSecret>>>,
    secret_posts: Arc<AtomicUsize>,
    creates: Arc<AtomicUsize>,
    root_passwords: Arc<std::sync::Mutex<Vec<i64>>>,
}

async fn contabo_mock() -> (String, Mock) {
    use axum::extract::{Path, Query, State};
    use axum::http::StatusCode;
    use axum::routing::{get, patch, post};
    use serde_json::{Value, json};
    type Q = Query<std::collections::HashMap<String, String>>;
    let mock = Mock::default();
    fn row(s: &MockSecret) -> Value {
        json!({"secretId": s.id, "name": s.name, "type": "password", "tenantId": "DE",
               "customerId": "1", "createdAt": "2026-12-05T00:00:00Z", "updatedAt": "2026-12-05T00:00:00Z"})
    }
    let app = axum::Router::new()
        .route(
            "/v1/secrets",
            get(|State(m): State<Mock>, Query(q): Q| async move {
                let name = q.get("name").cloned().unwrap_or_default();
                let rows: Vec<Value> = m.secrets.lock().unwrap().iter()
                    .filter(|s| s.name.contains(&name)).map(row).collect();
                axum::Json(json!({"data": rows, "_pagination": {"totalPages": 1}, "_links": {}}))
            })
            .post(|State(m): State<Mock>, axum::Json(b): axum::Json<Value>| async move {
                m.secret_posts.fetch_add(1, Ordering::SeqCst);
                let mut all = m.secrets.lock().unwrap();
                let s = MockSecret {
                    id: 500 + all.len() as i64,
                    name: b["name"].as_str().unwrap().into(),
                    value: b["value"].as_str().unwrap().into(),
                };
                all.push(s.clone());
                (StatusCode::CREATED, axum::Json(json!({"data": [row(&s)], "_links": {}})))
            }),
        )
        .route(
            "/v1/secrets/{id}",
            patch(|State(m): State<Mock>, Path(id): Path<i64>, axum::Json(b): axum::Json<Value>| async move {
                let mut all = m.secrets.lock().unwrap();
                let s = all.iter_mut().find(|s| s.id == id).unwrap();
                s.value = b["value"].as_str().unwrap().into();
                axum::Json(json!({"data": [row(s)], "_links": {}}))
            })
            .delete(|State(m): State<Mock>, Path(id): Path<i64>| async move {
                m.secrets.lock().unwrap().retain(|s| s.id != id);
                StatusCode::NO_CONTENT
            }),
        )
        .route(
            "/v1/compute/instances",
            post(|State(m): State<Mock>, axum::Json(b): axum::Json<Value>| async move {
                m.root_passwords.lock().unwrap().push(b["rootPassword"].as_i64().unwrap_or(-1));
                if m.creates.fetch_add(1, Ordering::SeqCst) == 0 {
                    return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({})));
                }
                let name = b["displayName"].clone();
                (StatusCode::CREATED, axum::Json(json!({"data": [{"instanceId": 7, "displayName": name}]})))
            }),
        )
        .route(
            "/v1/compute/instances/{id}",
            get(|| async {
                axum::Json(json!({"data": [{"instanceId": 7,
                    "displayName": "win-1 quartermaster-uid-0f6b3a55-1c53-4bd1-9c39-d2e8f8d1b1aa"}]}))
            }),
        )
        .route(
            "/v1/compute/instances/{id}/cancel",
            post(|| async { axum::Json(json!({"data": []})) }),
        )
        .with_state(mock.clone());
    (common::serve(app).await, mock)
}

/// A Windows create whose first answer is lost (a 500) makes one password secret, not two: the
/// second attempt finds it by name and sets its value again; cancelling the server deletes it.
#[tokio::test]
async fn vendor_contabo_a_windows_password_is_one_secret_made_once_and_deleted_with_the_server() {
    quartermaster::install_crypto_provider();
    let (base, mock) = contabo_mock().await;
    let (auth, _) = token_server().await;
    let account = Account {
        provider: ProviderType::Contabo,
        endpoint: Some(base),
        credentials: credentials(&auth),
        rate_limit: None,
    };
    let retry = RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::default()
    };
    let p = cloud::connect(&account, retry, None).unwrap();
    let password = cloud::generate_password();
    let spec = ServerSpec {
        name: "win-1".into(),
        region: "EU".into(),
        size: "V92".into(),
        image: "windows-server-2022".into(),
        ssh_keys: vec![],
        user_data: None,
        tags: vec![cloud::uid_tag("0f6b3a55-1c53-4bd1-9c39-d2e8f8d1b1aa")],
        backups: false,
        ipv6: false,
        root_password: Some(password.clone()),
        options: Default::default(),
    };
    let err = p.create(&spec).await.unwrap_err();
    assert!(!err.is_auth(), "{err}");
    let made = p.create(&spec).await.expect("the second attempt");
    assert_eq!(made.id, "7");
    assert_eq!(mock.secret_posts.load(Ordering::SeqCst), 1, "one secret");
    let secrets = mock.secrets.lock().unwrap().clone();
    assert_eq!(secrets.len(), 1);
    assert_eq!(
        secrets[0].name,
        "quartermaster-uid-0f6b3a55-1c53-4bd1-9c39-d2e8f8d1b1aa-password"
    );
    assert_eq!(secrets[0].value, password);
    assert_eq!(*mock.root_passwords.lock().unwrap(), vec![500, 500]);
    // Neither the password nor the API credentials appear in the error.
    let text = format!("{err} {err:?}");
    assert!(
        !text.contains(&password) && !text.contains(API_PASSWORD),
        "{text}"
    );

    p.delete("7").await.expect("cancel, then the secret");
    assert!(
        mock.secrets.lock().unwrap().is_empty(),
        "the secret is gone"
    );
    p.delete("7")
        .await
        .expect("a second delete finds nothing to do");

    // A create that made the secret but no server: the VM's deletion removes the secret.
    mock.secrets.lock().unwrap().push(MockSecret {
        id: 900,
        name: "quartermaster-uid-0f6b3a55-1c53-4bd1-9c39-d2e8f8d1b1aa-password".into(),
        value: password.clone(),
    });
    p.forget_create(&spec.tags[0]).await.expect("list + delete");
    assert!(mock.secrets.lock().unwrap().is_empty());
}

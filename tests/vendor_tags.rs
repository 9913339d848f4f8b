//! Tagging an existing server on vendors whose API replaces the whole tag list (Linode `PUT`, Vultr
//! `PATCH`): a small local stand-in keeps one instance's tags, so the test sees what the client actually
//! changed, not only that its requests validate (the Prism tests prove that).

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::routing::get;
use quartermaster::cloud::{self, Account, ComputeProvider};
use quartermaster::crd::ProviderType;
use quartermaster::http::RetryPolicy;

/// The tags of the one instance the stand-in knows, and how many writes it received.
#[derive(Default)]
struct Instance {
    tags: Vec<String>,
    writes: usize,
}

type Shared = Arc<Mutex<Instance>>;

async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// Reads `{"tags": [...]}` into the instance.
fn write_tags(s: &Shared, body: &serde_json::Value) {
    let mut i = s.lock().unwrap();
    i.tags = serde_json::from_value(body["tags"].clone()).expect("a tags array");
    i.writes += 1;
}

/// An instance tagged `web` that has received no writes.
fn web_instance() -> Shared {
    Arc::new(Mutex::new(Instance {
        tags: vec!["web".into()],
        writes: 0,
    }))
}

fn connect(provider: ProviderType, url: String) -> Box<dyn ComputeProvider> {
    let account = Account {
        provider,
        endpoint: Some(url),
        credentials: "token".into(),
        rate_limit: None,
    };
    cloud::connect(&account, RetryPolicy::default(), None).unwrap()
}

/// Adds, re-adds, removes and re-removes the ownership tag; other tags survive, and a change already
/// made sends nothing.
async fn exercise(p: &dyn ComputeProvider, id: &str, state: &Shared, wire_tag: &str) {
    let tag = cloud::uid_tag("0f6b3a55-1c53-4bd1-9c39-d2e8f8d1b1aa");
    p.add_tag(id, &tag).await.unwrap();
    assert_eq!(state.lock().unwrap().tags, ["web", wire_tag]);
    p.add_tag(id, &tag).await.unwrap();
    assert_eq!(state.lock().unwrap().writes, 1, "re-adding wrote again");
    let server = p.get(id).await.unwrap().unwrap();
    assert!(server.tags.contains(&tag), "{server:?}");
    p.remove_tag(id, &tag).await.unwrap();
    assert_eq!(state.lock().unwrap().tags, ["web"]);
    p.remove_tag(id, &tag).await.unwrap();
    assert_eq!(state.lock().unwrap().writes, 2, "re-removing wrote again");
    // A server that is gone has nothing to release; one that is gone cannot be adopted.
    p.remove_tag("999", &tag).await.unwrap();
    assert!(p.add_tag("999", &tag).await.is_err());
}

#[tokio::test]
async fn linode_tags_change_by_replacing_the_list() {
    quartermaster::install_crypto_provider();
    let state = web_instance();
    let app = axum::Router::new()
        .route(
            "/v4/linode/instances/7",
            get(|State(s): State<Shared>| async move {
                let tags = s.lock().unwrap().tags.clone();
                Json(
                    serde_json::json!({"id": 7, "label": "web", "status": "running", "tags": tags}),
                )
            })
            .put(
                |State(s): State<Shared>, Json(b): Json<serde_json::Value>| async move {
                    write_tags(&s, &b);
                    Json(serde_json::json!({"id": 7}))
                },
            ),
        )
        .with_state(state.clone());
    let p = connect(ProviderType::Linode, serve(app).await);
    // On the wire the ownership tag is shortened to fit Linode's 50 characters.
    exercise(
        &*p,
        "7",
        &state,
        "qm-uid-0f6b3a55-1c53-4bd1-9c39-d2e8f8d1b1aa",
    )
    .await;
}

#[tokio::test]
async fn vultr_tags_change_by_replacing_the_list() {
    quartermaster::install_crypto_provider();
    let state = web_instance();
    let app = axum::Router::new()
        .route(
            "/instances/7",
            get(|State(s): State<Shared>| async move {
                let tags = s.lock().unwrap().tags.clone();
                Json(serde_json::json!({"instance": {"id": "7", "status": "active", "tags": tags}}))
            })
            .patch(
                |State(s): State<Shared>, Json(b): Json<serde_json::Value>| async move {
                    write_tags(&s, &b);
                    axum::http::StatusCode::ACCEPTED
                },
            ),
        )
        .with_state(state.clone());
    let p = connect(ProviderType::Vultr, serve(app).await);
    exercise(
        &*p,
        "7",
        &state,
        &cloud::uid_tag("0f6b3a55-1c53-4bd1-9c39-d2e8f8d1b1aa"),
    )
    .await;
}

//! A local mock of the Linode calls a VirtualMachine's life makes (the simulator speaks only
//! DigitalOcean): the catalog (types, images, regions), the profile, instances (list, create, get, tag
//! updates, delete, power actions) and their transfer. It keeps the `root_pass` each create was given,
//! as Linode sets it on the new server, and can refuse the first creates with a 500 (nothing made).

use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::{Value, json};

/// The mock's state: its instances (as Linode lists them) and each create's `root_pass`.
#[derive(Clone, Default)]
pub struct LinodeMock {
    pub instances: Arc<Mutex<Vec<Value>>>,
    pub root_passwords: Arc<Mutex<Vec<String>>>,
    /// Creates to refuse with a 500 before any is made (an outage: nothing is created).
    pub failing_creates: Arc<std::sync::atomic::AtomicUsize>,
    /// Requests no route answered (method and path), for a failing test to show.
    pub unrouted: Arc<Mutex<Vec<String>>>,
}

fn page(items: Vec<Value>) -> axum::Json<Value> {
    let n = items.len();
    axum::Json(json!({"data": items, "page": 1, "pages": 1, "results": n}))
}

fn not_found() -> (StatusCode, axum::Json<Value>) {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"errors": [{"reason": "Not found"}]})),
    )
}

/// Starts the mock on 127.0.0.1; its URL is what a ProviderConfig's `endpoint` names.
pub async fn start() -> (String, LinodeMock) {
    let mock = LinodeMock::default();
    let app = axum::Router::new()
        .route(
            "/v4/profile",
            get(|| async { axum::Json(json!({"username": "mock"})) }),
        )
        .route(
            "/v4/linode/types",
            get(|| async {
                page(vec![
                    json!({"id": "g6-nanode-1", "label": "Nanode 1GB", "vcpus": 1,
                    "memory": 1024, "disk": 25600, "transfer": 1000,
                    "price": {"hourly": 0.0075, "monthly": 5.0},
                    "addons": {"backups": {"price": {"hourly": 0.003, "monthly": 2.0}}}}),
                ])
            }),
        )
        .route(
            "/v4/images",
            get(|| async {
                page(vec![
                    json!({"id": "linode/debian12", "label": "Debian 12", "is_public": true}),
                ])
            }),
        )
        .route(
            "/v4/regions",
            get(|| async {
                page(vec![
                    json!({"id": "eu-central", "label": "Frankfurt, DE", "status": "ok",
                    "capabilities": ["Linodes"]}),
                ])
            }),
        )
        .route("/v4/linode/instances", get(list).post(create))
        .route(
            "/v4/linode/instances/{id}",
            get(read).put(update).delete(delete),
        )
        .route(
            "/v4/linode/instances/{id}/{action}",
            post(|| async { axum::Json(json!({})) }),
        )
        .route(
            "/v4/linode/instances/{id}/transfer/{year}/{month}",
            get(|| async { axum::Json(json!({"bytes_in": 0, "bytes_out": 0, "bytes_total": 0})) }),
        )
        .route(
            "/v4/account/transfer",
            get(|| async { axum::Json(json!({"billable": 0, "quota": 1000, "used": 0})) }),
        )
        .with_state(mock.clone());
    let app = crate::common::recording_unrouted(app, mock.unrouted.clone(), not_found().1.0);
    (crate::common::serve(app).await, mock)
}

async fn list(State(m): State<LinodeMock>) -> axum::Json<Value> {
    page(m.instances.lock().unwrap().clone())
}

async fn create(
    State(m): State<LinodeMock>,
    axum::Json(b): axum::Json<Value>,
) -> (StatusCode, axum::Json<Value>) {
    let mut passwords = m.root_passwords.lock().unwrap();
    passwords.push(b["root_pass"].as_str().unwrap_or_default().to_string());
    let failing = &m.failing_creates;
    if failing
        .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"errors": [{"reason": "Please try again"}]})),
        );
    }
    let n = 4000 + passwords.len();
    let instance = json!({
        "id": n, "label": b["label"], "tags": b["tags"], "type": b["type"], "region": b["region"],
        "image": b["image"], "status": "running", "ipv4": [format!("192.0.2.{}", n % 250)],
        "ipv6": format!("2001:db8::{n}/128"), "backups": {"enabled": false},
    });
    m.instances.lock().unwrap().push(instance.clone());
    (StatusCode::OK, axum::Json(instance))
}

fn find(m: &LinodeMock, id: u64) -> Option<Value> {
    m.instances
        .lock()
        .unwrap()
        .iter()
        .find(|i| i["id"] == id)
        .cloned()
}

async fn read(State(m): State<LinodeMock>, Path(id): Path<u64>) -> (StatusCode, axum::Json<Value>) {
    match find(&m, id) {
        Some(i) => (StatusCode::OK, axum::Json(i)),
        None => not_found(),
    }
}

async fn update(
    State(m): State<LinodeMock>,
    Path(id): Path<u64>,
    axum::Json(b): axum::Json<Value>,
) -> (StatusCode, axum::Json<Value>) {
    let mut all = m.instances.lock().unwrap();
    let Some(i) = all.iter_mut().find(|i| i["id"] == id) else {
        return not_found();
    };
    if let Some(tags) = b.get("tags") {
        i["tags"] = tags.clone();
    }
    (StatusCode::OK, axum::Json(i.clone()))
}

async fn delete(State(m): State<LinodeMock>, Path(id): Path<u64>) -> StatusCode {
    let mut all = m.instances.lock().unwrap();
    let before = all.len();
    all.retain(|i| i["id"] != id);
    if all.len() < before {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    }
}

//! A local mock of the Vultr calls a VirtualMachine's life makes (the simulator speaks only
//! DigitalOcean): the catalog (plans, OS images, applications, regions), the account, instances (list by
//! tag, create, get, tag updates, delete) and their bandwidth. A create answers with Vultr's generated
//! `default_password`, which Vultr shows in that answer only; listings and GETs never carry it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};

/// The password the mock generates for every new instance.
pub const GENERATED_PASSWORD: &str = "Vu1tr-Generated#Pw-7q";

/// The mock's state: its instances (as Vultr lists them) and how many creates it took.
#[derive(Clone, Default)]
pub struct VultrMock {
    pub instances: Arc<Mutex<Vec<Value>>>,
    pub creates: Arc<AtomicUsize>,
    /// Requests no route answered (method and path), for a failing test to show.
    pub unrouted: Arc<Mutex<Vec<String>>>,
}

type Q = Query<std::collections::HashMap<String, String>>;

fn page(key: &str, items: Vec<Value>) -> axum::Json<Value> {
    let total = items.len();
    axum::Json(json!({ key: items, "meta": {"total": total, "links": {"next": "", "prev": ""}}}))
}

fn not_found() -> (StatusCode, axum::Json<Value>) {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"error": "Invalid instance-id.", "status": 404})),
    )
}

/// Starts the mock on 127.0.0.1; its URL is what a ProviderConfig's `endpoint` names.
pub async fn start() -> (String, VultrMock) {
    let mock = VultrMock::default();
    let app = axum::Router::new()
        .route(
            "/account",
            get(|| async { axum::Json(json!({"account": {"name": "mock", "balance": 0}})) }),
        )
        .route(
            "/plans",
            get(|| async {
                page("plans", vec![json!({"id": "vc2-1c-2gb", "vcpu_count": 1, "ram": 2048,
                    "disk": 55, "bandwidth": 2000, "monthly_cost": 10, "type": "vc2",
                    "locations": ["fra"]})])
            }),
        )
        .route(
            "/os",
            get(|| async {
                page("os", vec![
                    json!({"id": 371, "name": "Windows 2019 Standard x64", "arch": "x64", "family": "windows"}),
                    json!({"id": 1743, "name": "Ubuntu 22.04 LTS x64", "arch": "x64", "family": "ubuntu"}),
                ])
            }),
        )
        .route("/applications", get(|| async { page("applications", vec![]) }))
        .route(
            "/regions",
            get(|| async {
                page("regions", vec![json!({"id": "fra", "city": "Frankfurt", "country": "DE",
                    "continent": "Europe", "options": []})])
            }),
        )
        .route("/instances", get(list).post(create))
        .route(
            "/instances/{id}",
            get(read).patch(update).delete(delete),
        )
        .route(
            "/instances/{id}/bandwidth",
            get(|| async { axum::Json(json!({"bandwidth": {}})) }),
        )
        .with_state(mock.clone());
    let app = crate::common::recording_unrouted(app, mock.unrouted.clone(), not_found().1.0);
    (crate::common::serve(app).await, mock)
}

async fn list(State(m): State<VultrMock>, Query(q): Q) -> axum::Json<Value> {
    let all = m.instances.lock().unwrap().clone();
    let items = match q.get("tag") {
        Some(tag) => all
            .into_iter()
            .filter(|i| {
                i["tags"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|x| x == tag))
            })
            .collect(),
        None => all,
    };
    page("instances", items)
}

async fn create(
    State(m): State<VultrMock>,
    axum::Json(b): axum::Json<Value>,
) -> (StatusCode, axum::Json<Value>) {
    let n = m.creates.fetch_add(1, Ordering::SeqCst) + 1;
    let instance = json!({
        "id": format!("cb676a46-66fd-4dfb-b839-44314154d{n:03}"),
        "label": b["label"], "tags": b["tags"], "plan": b["plan"], "region": b["region"],
        "os_id": b["os_id"], "os": "mock", "status": "active", "power_status": "running",
        "server_status": "ok", "main_ip": format!("192.0.2.{n}"), "features": [],
    });
    m.instances.lock().unwrap().push(instance.clone());
    let mut answer = instance;
    answer["default_password"] = GENERATED_PASSWORD.into();
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({ "instance": answer })),
    )
}

async fn read(
    State(m): State<VultrMock>,
    Path(id): Path<String>,
) -> (StatusCode, axum::Json<Value>) {
    match m
        .instances
        .lock()
        .unwrap()
        .iter()
        .find(|i| i["id"] == id.as_str())
    {
        Some(i) => (StatusCode::OK, axum::Json(json!({ "instance": i }))),
        None => not_found(),
    }
}

async fn update(
    State(m): State<VultrMock>,
    Path(id): Path<String>,
    axum::Json(b): axum::Json<Value>,
) -> (StatusCode, axum::Json<Value>) {
    let mut all = m.instances.lock().unwrap();
    let Some(i) = all.iter_mut().find(|i| i["id"] == id.as_str()) else {
        return not_found();
    };
    if let Some(tags) = b.get("tags") {
        i["tags"] = tags.clone();
    }
    (StatusCode::OK, axum::Json(json!({ "instance": i })))
}

async fn delete(State(m): State<VultrMock>, Path(id): Path<String>) -> StatusCode {
    let mut all = m.instances.lock().unwrap();
    let before = all.len();
    all.retain(|i| i["id"] != id.as_str());
    if all.len() < before {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

//! DigitalOcean's VPC API as the simulator answers it (`/v2/vpcs`): list, create, read, delete.
//!
//! - Names are unique in the account (a second create of a name is refused, 422, as DigitalOcean
//!   does); a range is picked when none is given (`10.<n>.0.0/20`).
//! - A VPC that droplets are in (their `vpc_uuid`) cannot be deleted (403, DigitalOcean's words).
//! - Kept in memory: a restart of the simulator forgets them.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::Mutex;

use super::digitalocean::{AppState, ListQuery, not_found, paged, unprocessable};

/// The account's VPCs by ID.
#[derive(Clone, Default)]
pub(crate) struct Vpcs(Arc<Mutex<BTreeMap<String, Vpc>>>);

#[derive(Clone)]
pub(crate) struct Vpc {
    id: String,
    name: String,
    region: String,
    ip_range: String,
    created_at: String,
}

fn json(v: &Vpc) -> serde_json::Value {
    serde_json::json!({
        "id": v.id, "urn": format!("do:vpc:{}", v.id), "name": v.name, "region": v.region,
        "ip_range": v.ip_range, "description": "", "default": false, "created_at": v.created_at,
    })
}

#[derive(Deserialize)]
pub(crate) struct CreateVpc {
    name: String,
    region: String,
    #[serde(default)]
    ip_range: Option<String>,
}

/// `GET /v2/vpcs`.
pub(crate) async fn list_vpcs(State(s): State<AppState>, Query(q): Query<ListQuery>) -> Response {
    let all: Vec<Vpc> = s.vpcs.0.lock().await.values().cloned().collect();
    paged(&all, &q, "/v2/vpcs", "vpcs", json)
}

/// `GET /v2/vpcs/{id}`.
pub(crate) async fn get_vpc(State(s): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    match s.vpcs.0.lock().await.get(&id) {
        Some(v) => Json(serde_json::json!({ "vpc": json(v) })).into_response(),
        None => not_found(),
    }
}

/// `POST /v2/vpcs`.
pub(crate) async fn create_vpc(State(s): State<AppState>, Json(b): Json<CreateVpc>) -> Response {
    let mut all = s.vpcs.0.lock().await;
    if all.values().any(|v| v.name == b.name) {
        return unprocessable("A VPC with this name already exists in this account.");
    }
    let n = all.len() + 1;
    let v = Vpc {
        id: uuid::Uuid::new_v4().to_string(),
        name: b.name,
        region: b.region,
        ip_range: b
            .ip_range
            .unwrap_or_else(|| format!("10.{}.0.0/20", 100 + n % 100)),
        created_at: jiff::Timestamp::now().to_string(),
    };
    all.insert(v.id.clone(), v.clone());
    (
        StatusCode::CREATED,
        Json(serde_json::json!({ "vpc": json(&v) })),
    )
        .into_response()
}

/// `DELETE /v2/vpcs/{id}`: refused while droplets are in it.
pub(crate) async fn delete_vpc(
    State(s): State<AppState>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let mut all = s.vpcs.0.lock().await;
    if !all.contains_key(&id) {
        return not_found();
    }
    let members = s
        .store
        .lock()
        .await
        .list(None)
        .iter()
        .filter(|d| d.vpc_uuid.as_deref() == Some(id.as_str()))
        .count();
    if members > 0 {
        return (
            StatusCode::FORBIDDEN,
            Json(serde_json::json!({"id": "forbidden", "message": "Can not delete VPC with members"})),
        )
            .into_response();
    }
    all.remove(&id);
    StatusCode::NO_CONTENT.into_response()
}

//! The simulated DigitalOcean monitoring API (`/v2/monitoring/metrics/droplet/{metric}`): a droplet's
//! public outbound bandwidth adds up to the transfer a test set (`/_sim/droplets/{id}/transfer`) over
//! any window that starts at or before this month's first second; shorter windows (a load reading)
//! show a steady 8 Mbit/s out and 2 Mbit/s in. CPU is 25 % busy (per-mode seconds counters), memory
//! 40 % used and the root filesystem 30 % used, of the droplet's size. Answers are Prometheus matrices
//! as DigitalOcean sends them (`[timestamp, "value"]`).

use axum::Json;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::digitalocean::{AppState, SIZES, not_found};
use super::state::SimDroplet;

/// A metric query's parameters.
#[derive(Deserialize)]
pub(crate) struct MetricQuery {
    host_id: String,
    #[serde(default)]
    direction: Option<String>,
    start: i64,
    end: i64,
}

/// `GET /v2/monitoring/metrics/droplet/{metric}`.
pub(crate) async fn droplet_metric(
    State(s): State<AppState>,
    UrlPath(metric): UrlPath<String>,
    Query(q): Query<MetricQuery>,
) -> Response {
    let mut store = s.store.lock().await;
    store.advance();
    let Some(d) = store.get(&q.host_id) else {
        return not_found();
    };
    if q.end < q.start {
        return super::error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "end must not be before start",
        );
    }
    let result = series(d, &metric, &q);
    Json(serde_json::json!({
        "status": "success",
        "data": {"resultType": "matrix", "result": result}
    }))
    .into_response()
}

fn matrix(labels: serde_json::Value, points: &[(i64, f64)]) -> serde_json::Value {
    let values: Vec<serde_json::Value> = points
        .iter()
        .map(|(t, v)| serde_json::json!([t, v.to_string()]))
        .collect();
    serde_json::json!({"metric": labels, "values": values})
}

fn series(d: &SimDroplet, metric: &str, q: &MetricQuery) -> Vec<serde_json::Value> {
    let size = SIZES.iter().find(|s| s.0 == d.size).unwrap_or(&SIZES[1]);
    let (vcpus, memory, disk) = (
        f64::from(size.1),
        size.2 as f64 * 1_048_576.0,
        size.3 as f64 * 1_073_741_824.0,
    );
    let dt = (q.end - q.start) as f64;
    let steady = |v: f64| vec![(q.start, v), (q.end, v)];
    let host = serde_json::json!({"host_id": q.host_id});
    match metric {
        "bandwidth" => {
            let outbound = q.direction.as_deref() == Some("outbound");
            let month = crate::cloud::Month::of(q.end).start();
            let mbps = if outbound && q.start <= month && dt > 0.0 {
                d.transfer_bytes as f64 * 8.0 / dt / 1e6
            } else if outbound {
                8.0
            } else {
                2.0
            };
            vec![matrix(host, &[(q.start, 0.0), (q.end, mbps)])]
        }
        "cpu" => ["idle", "user"]
            .into_iter()
            .zip([0.75, 0.25])
            .map(|(mode, share)| {
                let labels = serde_json::json!({"host_id": q.host_id, "mode": mode});
                matrix(
                    labels,
                    &[(q.start, 1000.0), (q.end, 1000.0 + share * dt * vcpus)],
                )
            })
            .collect(),
        "memory_total" => vec![matrix(host, &steady(memory))],
        "memory_available" => vec![matrix(host, &steady(memory * 0.6))],
        "filesystem_size" | "filesystem_free" => {
            let v = if metric == "filesystem_size" {
                disk
            } else {
                disk * 0.7
            };
            let labels = serde_json::json!({"host_id": q.host_id, "mountpoint": "/"});
            vec![matrix(labels, &steady(v))]
        }
        _ => Vec::new(),
    }
}

/// The body of `/_sim/droplets/{id}/transfer`.
#[derive(Deserialize)]
pub(crate) struct TransferBody {
    bytes: i64,
}

/// `POST /_sim/droplets/{id}/transfer`: sets the droplet's outbound transfer this month.
pub(crate) async fn set_transfer(
    State(s): State<AppState>,
    UrlPath(id): UrlPath<String>,
    Json(b): Json<TransferBody>,
) -> Response {
    let mut store = s.store.lock().await;
    match store.update(&id, |d| {
        d.transfer_bytes = b.bytes.max(0);
        Ok::<(), ()>(())
    }) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => not_found(),
    }
}

/// `POST /_sim/droplets-transfer`: sets every droplet's outbound transfer this month (benchmarks).
pub(crate) async fn set_every_transfer(
    State(s): State<AppState>,
    Json(b): Json<TransferBody>,
) -> Response {
    let mut store = s.store.lock().await;
    let ids: Vec<String> = store.list(None).iter().map(|d| d.id.to_string()).collect();
    for id in ids {
        store.update(&id, |d| {
            d.transfer_bytes = b.bytes.max(0);
            Ok::<(), ()>(())
        });
    }
    StatusCode::NO_CONTENT.into_response()
}

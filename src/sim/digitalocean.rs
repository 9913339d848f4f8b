//! The simulated DigitalOcean API: account, droplets (create/get/list/list-by-tag/delete), droplet actions
//! (power_on, power_off, reboot, resize, snapshot), droplet snapshots (list, get, delete), sizes,
//! images and regions.
//!
//! State machine (times from [`super::SimConfig`]): create → `new` → `active`; power_off → `off`;
//! power_on → `active`; reboot → `active` (locked meanwhile); resize (only when `off`) → new size, `off`;
//! snapshot → listed in `/v2/snapshots` after `snapshot_secs` (meanwhile an `in-progress` action of the
//! droplet, and a second snapshot of it is refused); delete → gone. A droplet is `locked` while an action runs, and further actions are refused with 422,
//! as DigitalOcean does. Transitions are evaluated lazily against wall-clock time, so they continue across
//! restarts of the simulator.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::Mutex;

pub use super::state::Store;
use super::state::{Pending, SimDroplet, SimSnapshot, now_ms};
use super::{SimConfig, error};

type Shared = Arc<Mutex<Store>>;

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) store: Shared,
    pub(crate) cfg: Arc<SimConfig>,
    /// The account's VPCs (in memory: a restart of the simulator forgets them).
    pub(crate) vpcs: super::vpcs::Vpcs,
}

/// The router for the DigitalOcean API subset.
pub fn router(store: Shared, cfg: Arc<SimConfig>) -> Router {
    let vpcs = super::vpcs::Vpcs::default();
    Router::new()
        .route("/v2/account", get(account))
        .route("/v2/droplets", get(list_droplets).post(create_droplet))
        .route("/v2/droplets/{id}", get(get_droplet).delete(delete_droplet))
        .route(
            "/v2/droplets/{id}/actions",
            get(droplet_actions).post(droplet_action),
        )
        .route("/v2/droplets/{id}/snapshots", get(droplet_snapshots))
        .route("/v2/snapshots", get(list_snapshots))
        .route(
            "/v2/snapshots/{id}",
            get(get_snapshot).delete(delete_snapshot),
        )
        .route("/v2/tags", post(create_tag))
        .route(
            "/v2/tags/{tag}/resources",
            post(tag_resources).delete(untag_resources),
        )
        .route(
            "/v2/monitoring/metrics/droplet/{metric}",
            get(super::monitoring::droplet_metric),
        )
        .route("/v2/firewalls/{id}/droplets", post(firewall_droplets))
        .route(
            "/v2/vpcs",
            get(super::vpcs::list_vpcs).post(super::vpcs::create_vpc),
        )
        .route(
            "/v2/vpcs/{id}",
            get(super::vpcs::get_vpc).delete(super::vpcs::delete_vpc),
        )
        .route("/v2/sizes", get(sizes))
        .route("/v2/images", get(images))
        .route("/v2/regions", get(regions))
        .route_layer(axum::middleware::from_fn_with_state(
            AppState {
                store: store.clone(),
                cfg: cfg.clone(),
                vpcs: vpcs.clone(),
            },
            require_token,
        ))
        // Simulator control (not part of DigitalOcean's API): revoke a token, as a rotation at the
        // vendor does; every later call with it is answered 401.
        .route("/_sim/revoke-token", post(revoke_token))
        // Every snapshot as the simulator keeps it (with how often it was restored from).
        .route("/_sim/snapshots", get(sim_snapshots))
        // The droplets a firewall names.
        .route("/_sim/firewalls/{id}", get(sim_firewall))
        // A droplet's public outbound transfer this month, as its bandwidth samples will add up to.
        .route(
            "/_sim/droplets/{id}/transfer",
            post(super::monitoring::set_transfer),
        )
        .route(
            "/_sim/droplets-transfer",
            post(super::monitoring::set_every_transfer),
        )
        .with_state(AppState { store, cfg, vpcs })
}

/// Every route requires an acceptable bearer token, as DigitalOcean does.
async fn require_token(
    State(s): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(r) = unauthorized(req.headers(), &s.cfg) {
        return r;
    }
    let revoked = {
        let store = s.store.lock().await;
        bearer(req.headers()).is_some_and(|t| store.is_revoked(t))
    };
    if revoked {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unable to authenticate you",
        );
    }
    next.run(req).await
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

#[derive(Deserialize)]
struct RevokeBody {
    token: String,
}

async fn revoke_token(State(s): State<AppState>, Json(b): Json<RevokeBody>) -> Response {
    s.store.lock().await.revoke(b.token);
    StatusCode::NO_CONTENT.into_response()
}

/// The 401 answer, when the request does not carry an acceptable bearer token.
fn unauthorized(headers: &HeaderMap, cfg: &SimConfig) -> Option<Response> {
    let token = bearer(headers).unwrap_or("");
    let ok = !token.is_empty() && cfg.token.as_deref().is_none_or(|t| t == token);
    (!ok).then(|| {
        error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unable to authenticate you",
        )
    })
}

/// (slug, vcpus, memory MiB, disk GiB, monthly USD, hourly USD) — DigitalOcean's published basic droplets.
pub(crate) const SIZES: &[(&str, u32, u64, u64, f64, f64)] = &[
    ("s-1vcpu-512mb-10gb", 1, 512, 10, 4.0, 0.00595),
    ("s-1vcpu-1gb", 1, 1024, 25, 6.0, 0.00893),
    ("s-1vcpu-2gb", 1, 2048, 50, 12.0, 0.01786),
    ("s-2vcpu-2gb", 2, 2048, 60, 18.0, 0.02679),
    ("s-2vcpu-4gb", 2, 4096, 80, 24.0, 0.03571),
    ("s-4vcpu-8gb", 4, 8192, 160, 48.0, 0.07143),
];
/// (slug, name, type, distribution)
const IMAGES: &[(&str, &str, &str, &str)] = &[
    ("debian-12-x64", "12 x64", "base", "Debian"),
    ("ubuntu-24-04-x64", "24.04 (LTS) x64", "base", "Ubuntu"),
    ("ubuntu-22-04-x64", "22.04 (LTS) x64", "base", "Ubuntu"),
    ("fedora-40-x64", "40 x64", "base", "Fedora"),
    (
        "docker-20-04",
        "Docker on Ubuntu 22.04",
        "application",
        "Ubuntu",
    ),
    (
        "wordpress-20-04",
        "WordPress on Ubuntu 22.04",
        "application",
        "Ubuntu",
    ),
];
const REGIONS: &[(&str, &str)] = &[
    ("fra1", "Frankfurt 1"),
    ("ams3", "Amsterdam 3"),
    ("lon1", "London 1"),
    ("nyc3", "New York 3"),
    ("sfo3", "San Francisco 3"),
    ("sgp1", "Singapore 1"),
];

fn size_json(s: &(&str, u32, u64, u64, f64, f64)) -> serde_json::Value {
    serde_json::json!({
        "slug": s.0, "vcpus": s.1, "memory": s.2, "disk": s.3, "transfer": 1.0,
        "price_monthly": s.4, "price_hourly": s.5, "available": true,
        "regions": REGIONS.iter().map(|r| r.0).collect::<Vec<_>>(), "description": "Basic"
    })
}

fn droplet_json(d: &SimDroplet) -> serde_json::Value {
    let size = SIZES.iter().find(|s| s.0 == d.size).unwrap_or(&SIZES[1]);
    let image = IMAGES.iter().find(|i| i.0 == d.image);
    let n = d.id % 250 + 2;
    let features: Vec<&str> = [
        d.backups.then_some("backups"),
        d.monitoring.then_some("monitoring"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut v6 = Vec::new();
    if d.ipv6 {
        v6.push(serde_json::json!({"ip_address": format!("2001:db8::{:x}", d.id), "netmask": 64, "gateway": "2001:db8::1", "type": "public"}));
    }
    serde_json::json!({
        "id": d.id, "name": d.name, "memory": size.2, "vcpus": size.1, "disk": size.3,
        "locked": d.pending.as_ref().is_some_and(|p| !p.status.is_empty() || p.remove),
        "status": d.status, "created_at": d.created_at,
        "features": features,
        "backup_ids": [], "snapshot_ids": [], "volume_ids": [],
        "image": {"id": 1000 + IMAGES.iter().position(|i| i.0 == d.image).unwrap_or(0), "slug": d.image,
                  "name": image.map(|i| i.1).unwrap_or("custom"), "distribution": image.map(|i| i.3).unwrap_or("Unknown"),
                  "public": true, "regions": [d.region], "type": image.map(|i| i.2).unwrap_or("base")},
        "size": size_json(size), "size_slug": d.size,
        "networks": {
            "v4": [
                {"ip_address": format!("203.0.113.{n}"), "netmask": "255.255.255.0", "gateway": "203.0.113.1", "type": "public"},
                {"ip_address": format!("10.110.0.{n}"), "netmask": "255.255.240.0", "gateway": "10.110.0.1", "type": "private"}
            ],
            "v6": v6
        },
        "region": {"slug": d.region, "name": REGIONS.iter().find(|r| r.0 == d.region).map(|r| r.1).unwrap_or(""),
                   "available": true, "features": [], "sizes": []},
        "tags": d.tags,
        "vpc_uuid": d.vpc_uuid.as_deref().unwrap_or("5a4981aa-9653-4bd1-bef5-d6bff52042e4")
    })
}

async fn account() -> Response {
    Json(serde_json::json!({"account": {
        "droplet_limit": 25, "floating_ip_limit": 3, "email": "sim@quartermaster.invalid",
        "uuid": "00000000000000000000000000000000sim", "email_verified": true, "status": "active", "status_message": ""
    }}))
    .into_response()
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    tag_name: Option<String>,
    page: Option<usize>,
    per_page: Option<usize>,
}

async fn list_droplets(State(s): State<AppState>, Query(q): Query<ListQuery>) -> Response {
    let mut store = s.store.lock().await;
    store.advance();
    let all = store.list(q.tag_name.as_deref());
    paged(&all, &q, "/v2/droplets", "droplets", |d| droplet_json(d))
}

/// One page of `all` as DigitalOcean lists it at `path` (`key`: the array's name; 20 a page unless
/// asked, at most 200; a `next` link while more follow).
pub(crate) fn paged<T>(
    all: &[T],
    q: &ListQuery,
    path: &str,
    key: &str,
    json: impl Fn(&T) -> serde_json::Value,
) -> Response {
    let per_page = q.per_page.unwrap_or(20).clamp(1, 200);
    let page = q.page.unwrap_or(1).max(1);
    let items: Vec<_> = all
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(json)
        .collect();
    let mut links = serde_json::json!({});
    if page * per_page < all.len() {
        links = serde_json::json!({"pages": {"next": format!("{path}?page={}&per_page={per_page}", page + 1)}});
    }
    Json(serde_json::json!({key: items, "links": links, "meta": {"total": all.len()}}))
        .into_response()
}

#[derive(Deserialize)]
struct CreateBody {
    name: String,
    region: String,
    size: String,
    image: serde_json::Value,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    ipv6: bool,
    #[serde(default)]
    backups: bool,
    #[serde(default)]
    vpc_uuid: Option<String>,
    #[serde(default)]
    monitoring: bool,
}

async fn create_droplet(State(s): State<AppState>, body: Option<Json<CreateBody>>) -> Response {
    let Some(Json(b)) = body else {
        return unprocessable("invalid request body");
    };
    let image = match &b.image {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    if b.name.is_empty()
        || b.name.len() > 255
        || !b
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
    {
        return unprocessable(
            "Only valid hostname characters are allowed. (a-z, A-Z, 0-9, . and -)",
        );
    }
    if !REGIONS.iter().any(|r| r.0 == b.region) {
        return unprocessable("You specified an invalid region for Droplet creation.");
    }
    if !SIZES.iter().any(|x| x.0 == b.size) {
        return unprocessable("You specified an invalid size for Droplet creation.");
    }
    let json = {
        let mut store = s.store.lock().await;
        store.advance();
        // An image slug, or the ID of a snapshot taken (a droplet made from it).
        let now = now_ms();
        let snapshot = store
            .snapshots()
            .any(|x| x.id.to_string() == image && x.ready_at_ms <= now);
        if !IMAGES.iter().any(|i| i.0 == image) && !snapshot {
            return unprocessable("You specified an invalid image for Droplet creation.");
        }
        let provision = secs_ms(s.cfg.provision_secs);
        droplet_json(store.create(|id| SimDroplet {
            id,
            name: b.name,
            status: "new".into(),
            size: b.size,
            region: b.region,
            image,
            tags: b.tags,
            ipv6: b.ipv6,
            backups: b.backups,
            vpc_uuid: b.vpc_uuid,
            monitoring: b.monitoring,
            transfer_bytes: 0,
            firewalls: Vec::new(),
            created_at: jiff::Timestamp::now().to_string(),
            pending: Some(Pending {
                at_ms: now_ms() + provision,
                status: "active".into(),
                ..Default::default()
            }),
        }))
    };
    // NB: the droplet already exists; a caller that gives up now must find it by tag, not create another.
    if s.cfg.create_latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(s.cfg.create_latency_ms)).await;
    }
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"droplet": json, "links": {"actions": [{"id": 1, "rel": "create", "href": ""}]}})),
    )
        .into_response()
}

#[derive(Deserialize)]
struct TagBody {
    name: String,
}

/// `POST /v2/tags`: tags exist implicitly in the simulator; creating one (again) succeeds, as it does at
/// DigitalOcean.
async fn create_tag(body: Option<Json<TagBody>>) -> Response {
    match body {
        Some(Json(b)) if valid_tag(&b.name) => (
            StatusCode::CREATED,
            Json(serde_json::json!({"tag": {"name": b.name, "resources": {"count": 0}}})),
        )
            .into_response(),
        _ => unprocessable(
            "tag name must be 1-255 characters of letters, numbers, colons, dashes and underscores",
        ),
    }
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 255
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_'))
}

#[derive(Deserialize)]
struct TagResources {
    resources: Vec<TagResource>,
}

#[derive(Deserialize)]
struct TagResource {
    resource_id: String,
    resource_type: String,
}

/// `POST /v2/tags/{tag}/resources`: tags droplets (204), 404 when one does not exist.
async fn tag_resources(
    State(s): State<AppState>,
    UrlPath(tag): UrlPath<String>,
    body: Option<Json<TagResources>>,
) -> Response {
    retag(&s, &tag, body, true).await
}

/// `DELETE /v2/tags/{tag}/resources`: untags droplets (204); droplets that do not exist are skipped.
async fn untag_resources(
    State(s): State<AppState>,
    UrlPath(tag): UrlPath<String>,
    body: Option<Json<TagResources>>,
) -> Response {
    retag(&s, &tag, body, false).await
}

/// Adds (`present`) or removes `tag` on the droplets the body names.
async fn retag(
    s: &AppState,
    tag: &str,
    body: Option<Json<TagResources>>,
    present: bool,
) -> Response {
    let Some(Json(b)) = body else {
        return unprocessable("invalid request body");
    };
    if !valid_tag(tag) {
        return not_found();
    }
    let mut store = s.store.lock().await;
    store.advance();
    let droplets: Vec<&str> = b
        .resources
        .iter()
        .filter(|r| r.resource_type == "droplet")
        .map(|r| r.resource_id.as_str())
        .collect();
    if present
        && (droplets.len() != b.resources.len()
            || droplets.iter().any(|id| store.get(id).is_none()))
    {
        return not_found();
    }
    for id in droplets {
        if store
            .get(id)
            .is_some_and(|d| d.tags.iter().any(|t| t == tag) != present)
        {
            store.update(id, |d| {
                d.tags.retain(|t| t != tag);
                if present {
                    d.tags.push(tag.to_string());
                }
                Ok::<_, ()>(())
            });
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

fn secs_ms(s: u64) -> i64 {
    i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// DigitalOcean's 422 answer.
pub(crate) fn unprocessable(message: &str) -> Response {
    error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "unprocessable_entity",
        message,
    )
}

pub(crate) fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        "The resource you were accessing could not be found.",
    )
}

async fn get_droplet(State(s): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    let mut store = s.store.lock().await;
    store.advance();
    match store.get(&id) {
        Some(d) => Json(serde_json::json!({"droplet": droplet_json(d)})).into_response(),
        None => not_found(),
    }
}

async fn delete_droplet(State(s): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    let mut store = s.store.lock().await;
    store.advance();
    let at = now_ms() + secs_ms(s.cfg.delete_secs);
    let deleting = store
        .get(&id)
        .map(|d| d.pending.as_ref().is_some_and(|p| p.remove));
    match deleting {
        // A repeated delete does not postpone the removal already under way.
        Some(true) => StatusCode::NO_CONTENT.into_response(),
        Some(false) => {
            store.update(&id, |d| {
                d.pending = Some(Pending {
                    at_ms: at,
                    remove: true,
                    ..Default::default()
                });
                Ok::<_, ()>(())
            });
            StatusCode::NO_CONTENT.into_response()
        }
        None => not_found(),
    }
}

#[derive(Deserialize)]
struct ActionBody {
    #[serde(rename = "type")]
    kind: String,
    size: Option<String>,
    name: Option<String>,
    image: Option<serde_json::Value>,
}

/// A `snapshot` action: the snapshot is recorded at once (so a caller that gives up during
/// `create_latency_ms` must find it) and listed once taken; one snapshot at a time per droplet.
async fn snapshot_action(s: &AppState, id: &str, name: Option<String>) -> Response {
    let now = now_ms();
    let taken = {
        let mut store = s.store.lock().await;
        store.advance();
        let Some(d) = store.get(id) else {
            return not_found();
        };
        let (droplet, disk) = (d.id, disk_of(d));
        let refusal = if s.cfg.refuse_snapshots {
            Some("Snapshots are not available for this Droplet's plan.")
        } else if d.status == "new" {
            Some("Droplet is still being created.")
        } else if d.pending.is_some() || snapshot_running(&store, id, now) {
            Some("Droplet already has a pending event.")
        } else {
            None
        };
        if let Some(r) = refusal {
            return unprocessable(r);
        }
        let name = name.unwrap_or_else(|| format!("{} {now}", d.name));
        let ready = now + secs_ms(s.cfg.snapshot_secs);
        // A snapshot holds what the disk holds: a tenth of it, in the simulator.
        store.snapshot(droplet, name, disk as f64 / 10.0, ready)
    };
    if s.cfg.create_latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(s.cfg.create_latency_ms)).await;
    }
    (
        StatusCode::CREATED,
        Json(
            serde_json::json!({"action": {"id": taken, "status": "in-progress", "type": "snapshot",
            "started_at": jiff::Timestamp::from_millisecond(now).unwrap_or_default().to_string(),
            "resource_id": id.parse::<u64>().unwrap_or_default(), "resource_type": "droplet"}}),
        ),
    )
        .into_response()
}

/// Whether a snapshot of droplet `id` (as in a URL) is being taken: the droplet is locked meanwhile.
fn snapshot_running(store: &Store, id: &str, now: i64) -> bool {
    store
        .snapshots()
        .any(|x| x.droplet_id.to_string() == id && x.ready_at_ms > now)
}

/// A `restore` action: the droplet's disk from one of its own snapshots (by numeric ID), locked for
/// `power_secs` meanwhile, as DigitalOcean does.
async fn restore_action(s: &AppState, id: &str, image: Option<serde_json::Value>) -> Response {
    let now = now_ms();
    let mut store = s.store.lock().await;
    store.advance();
    let Some(droplet) = store.get(id).map(|d| d.id) else {
        return not_found();
    };
    let snap = image.and_then(|v| v.as_u64()).filter(|i| {
        store
            .snapshots()
            .any(|x| x.id == *i && x.droplet_id == droplet && x.ready_at_ms <= now)
    });
    let Some(snap) = snap else {
        return unprocessable(
            "You specified an invalid image for the restore: it must be a snapshot or backup of this Droplet.",
        );
    };
    if snapshot_running(&store, id, now) {
        return unprocessable("Droplet already has a pending event.");
    }
    let secs = s.cfg.power_secs;
    let changed = store.update(id, |d| {
        if d.pending.is_some() {
            return Err("Droplet already has a pending event.");
        }
        d.pending = Some(Pending {
            at_ms: now + secs_ms(secs),
            status: d.status.clone(),
            ..Default::default()
        });
        Ok(())
    });
    if let Some(Err(why)) = changed {
        return unprocessable(why);
    }
    store.restored(snap);
    (
        StatusCode::CREATED,
        Json(
            serde_json::json!({"action": {"id": now, "status": "in-progress", "type": "restore",
            "resource_id": droplet, "resource_type": "droplet"}}),
        ),
    )
        .into_response()
}

/// `GET /_sim/snapshots`: every snapshot, taken or not, as the simulator keeps it.
#[derive(Deserialize)]
struct FirewallDroplets {
    droplet_ids: Vec<u64>,
}

/// `POST /v2/firewalls/{id}/droplets`: the firewall names the droplets (204; 404 for an unknown
/// droplet, nothing changed).
async fn firewall_droplets(
    State(s): State<AppState>,
    UrlPath(fw): UrlPath<String>,
    Json(b): Json<FirewallDroplets>,
) -> Response {
    let mut store = s.store.lock().await;
    if b.droplet_ids.is_empty()
        || b.droplet_ids
            .iter()
            .any(|id| store.get(&id.to_string()).is_none())
    {
        return not_found();
    }
    for id in b.droplet_ids {
        store.update(&id.to_string(), |d| {
            if !d.firewalls.contains(&fw) {
                d.firewalls.push(fw.clone());
            }
            Ok::<(), ()>(())
        });
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn sim_firewall(State(s): State<AppState>, UrlPath(fw): UrlPath<String>) -> Response {
    let store = s.store.lock().await;
    let ids: Vec<u64> = store
        .list(None)
        .iter()
        .filter(|d| d.firewalls.contains(&fw))
        .map(|d| d.id)
        .collect();
    Json(serde_json::json!({ "droplet_ids": ids })).into_response()
}

async fn sim_snapshots(State(s): State<AppState>) -> Response {
    let store = s.store.lock().await;
    Json(store.snapshots().cloned().collect::<Vec<_>>()).into_response()
}

/// Actions have IDs of their own (not the snapshot's).
const ACTION_IDS: u64 = 5_000_000_000;

/// The disk of a droplet's size, GB.
fn disk_of(d: &SimDroplet) -> u64 {
    SIZES.iter().find(|x| x.0 == d.size).map_or(25, |x| x.3)
}

fn snapshot_json(x: &SimSnapshot) -> serde_json::Value {
    serde_json::json!({"id": x.id.to_string(), "name": x.name, "created_at": x.created_at,
        "regions": ["fra1"], "resource_id": x.droplet_id.to_string(), "resource_type": "droplet",
        "min_disk_size": 25, "size_gigabytes": x.size_gb, "tags": []})
}

/// `GET /v2/droplets/{id}/actions`: the droplet's snapshot actions, newest first, paged.
async fn droplet_actions(
    State(s): State<AppState>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    let mut store = s.store.lock().await;
    store.advance();
    let Some(droplet) = store.get(&id).map(|d| d.id) else {
        return not_found();
    };
    let now = now_ms();
    let mut actions: Vec<_> = store
        .snapshots()
        .filter(|x| x.droplet_id == droplet)
        .collect();
    actions.reverse();
    paged(
        &actions,
        &q,
        &format!("/v2/droplets/{id}/actions"),
        "actions",
        |x| {
            serde_json::json!({"id": ACTION_IDS + x.id, "type": "snapshot",
                "status": if x.ready_at_ms > now { "in-progress" } else { "completed" },
                "started_at": x.created_at, "resource_id": droplet, "resource_type": "droplet"})
        },
    )
}

/// `GET /v2/droplets/{id}/snapshots`: the droplet's snapshots taken (IDs are numbers here).
async fn droplet_snapshots(
    State(s): State<AppState>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    let store = s.store.lock().await;
    let Some(droplet) = store.get(&id).map(|d| d.id) else {
        return not_found();
    };
    snapshot_page(
        &store,
        Some(droplet),
        &q,
        &format!("/v2/droplets/{id}/snapshots"),
    )
}

/// `GET /v2/snapshots`: the snapshots taken (paged; every one is a droplet snapshot).
async fn list_snapshots(State(s): State<AppState>, Query(q): Query<ListQuery>) -> Response {
    let store = s.store.lock().await;
    snapshot_page(&store, None, &q, "/v2/snapshots")
}

/// One page of the snapshots taken (of `droplet`, or all), as DigitalOcean lists them at `path`.
fn snapshot_page(store: &Store, droplet: Option<u64>, q: &ListQuery, path: &str) -> Response {
    let now = now_ms();
    let all: Vec<_> = store
        .snapshots()
        .filter(|x| x.ready_at_ms <= now && droplet.is_none_or(|d| d == x.droplet_id))
        .collect();
    paged(&all, q, path, "snapshots", |x| {
        let mut v = snapshot_json(x);
        if droplet.is_some() {
            v["id"] = x.id.into();
        }
        v
    })
}

async fn get_snapshot(State(s): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    let store = s.store.lock().await;
    let now = now_ms();
    match store
        .snapshots()
        .find(|x| x.id.to_string() == id && x.ready_at_ms <= now)
    {
        Some(x) => Json(serde_json::json!({"snapshot": snapshot_json(x)})).into_response(),
        None => not_found(),
    }
}

async fn delete_snapshot(State(s): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    let mut store = s.store.lock().await;
    // A snapshot being taken has no ID yet at DigitalOcean: nothing to delete.
    let now = now_ms();
    if store
        .snapshots()
        .any(|x| x.id.to_string() == id && x.ready_at_ms > now)
    {
        return not_found();
    }
    if store.delete_snapshot(&id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        not_found()
    }
}

async fn droplet_action(
    State(s): State<AppState>,
    UrlPath(id): UrlPath<String>,
    body: Option<Json<ActionBody>>,
) -> Response {
    let Some(Json(b)) = body else {
        return unprocessable("invalid request body");
    };
    if b.kind == "snapshot" {
        return snapshot_action(&s, &id, b.name).await;
    }
    if b.kind == "restore" {
        return restore_action(&s, &id, b.image).await;
    }
    let mut store = s.store.lock().await;
    store.advance();
    let cfg = &s.cfg;
    let now = now_ms();
    let snapshotting = snapshot_running(&store, &id, now);
    let changed = store.update(&id, |d| {
        if d.pending.is_some() || snapshotting {
            return Err("Droplet already has a pending event.");
        }
        let pending = |secs, status: &str, size| Pending {
            at_ms: now + secs_ms(secs),
            status: status.into(),
            size,
            remove: false,
        };
        let p = match (b.kind.as_str(), d.status.as_str()) {
            ("power_on", "off") => pending(cfg.power_secs, "active", None),
            ("power_on", "active") => {
                return Err("Droplet is already powered on.");
            }
            ("power_off", "active") => pending(cfg.power_secs, "off", None),
            ("power_off", "off") => {
                return Err("Droplet is already powered off.");
            }
            ("reboot", "active") => pending(cfg.power_secs, "active", None),
            ("resize", "off") => {
                let Some(to) = b
                    .size
                    .as_deref()
                    .and_then(|sz| SIZES.iter().find(|x| x.0 == sz))
                else {
                    return Err("You specified an invalid size for Droplet resize.");
                };
                let from = SIZES.iter().find(|x| x.0 == d.size);
                if from.is_some_and(|f| to.3 < f.3) {
                    return Err("You cannot resize a Droplet to a size with a smaller disk.");
                }
                if cfg.refuse_resize_to.iter().any(|r| r == to.0) {
                    return Err("This size is not available for resizing this Droplet.");
                }
                pending(cfg.resize_secs, "off", Some(to.0.to_string()))
            }
            ("resize", _) => {
                return Err("Droplet must be powered off to resize.");
            }
            ("power_on" | "power_off" | "reboot", "new") => {
                return Err("Droplet is still being created.");
            }
            (other, _) if !["power_on", "power_off", "reboot", "resize"].contains(&other) => {
                return Err("Unsupported action type.");
            }
            _ => {
                return Err("Action not allowed in the droplet's state.");
            }
        };
        d.pending = Some(p);
        Ok(())
    });
    drop(store);
    match changed {
        None => return not_found(),
        Some(Err(refused)) => {
            return unprocessable(refused);
        }
        Some(Ok(())) => {}
    }
    (
        StatusCode::CREATED,
        Json(serde_json::json!({"action": {"id": now, "status": "in-progress", "type": b.kind, "resource_id": id, "resource_type": "droplet"}})),
    )
        .into_response()
}

async fn sizes() -> Response {
    Json(serde_json::json!({"sizes": SIZES.iter().map(size_json).collect::<Vec<_>>(), "links": {}, "meta": {"total": SIZES.len()}}))
        .into_response()
}

#[derive(Deserialize)]
struct ImageQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
}

async fn images(Query(q): Query<ImageQuery>) -> Response {
    let want = q.kind.map(|k| {
        if k == "distribution" {
            "base".to_string()
        } else {
            k
        }
    });
    let list: Vec<_> = IMAGES
        .iter()
        .enumerate()
        .filter(|(_, i)| want.as_deref().is_none_or(|w| w == i.2))
        .map(|(n, i)| serde_json::json!({"id": 1000 + n, "slug": i.0, "name": i.1, "type": i.2, "distribution": i.3, "public": true, "regions": REGIONS.iter().map(|r| r.0).collect::<Vec<_>>()}))
        .collect();
    Json(serde_json::json!({"images": list, "links": {}, "meta": {"total": list.len()}}))
        .into_response()
}

async fn regions() -> Response {
    let list: Vec<_> = REGIONS
        .iter()
        .map(|r| serde_json::json!({"slug": r.0, "name": r.1, "available": true, "features": ["backups", "ipv6"], "sizes": SIZES.iter().map(|s| s.0).collect::<Vec<_>>()}))
        .collect();
    Json(serde_json::json!({"regions": list, "links": {}, "meta": {"total": list.len()}}))
        .into_response()
}

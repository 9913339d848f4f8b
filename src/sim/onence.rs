//! The 1NCE subset of `quartermaster sim`, on the same port as the DigitalOcean one: tokens (a new one
//! per request, 3,600 s), SIM list/read/change, data and SMS quotas, daily usage, top-ups creating
//! orders, SMS to the device, changes applied asynchronously after `--onence-apply-secs` (a change while
//! one is pending answers 409; an expired SIM answers 422), and 1NCE's 10 requests a second on `/sims`
//! answered 429 beyond it. The latency and fault flags apply as to the DigitalOcean subset.
//!
//! State is in memory (the SIMs are seeded at start by `--onence-sims N`). Simulator control, not part
//! of 1NCE's API, lives under `/_sim/1nce/`: traffic on a SIM (`POST …/sims/{iccid}/traffic` with
//! `{"bytes": n, "sms": n}`, consuming its quota), expiry, and the orders and messages made so far.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::Mutex;

use super::SimConfig;

/// Data a top-up adds, bytes (1NCE's 500 MB).
pub const TOP_UP_BYTES: i64 = 500_000_000;
/// SMS a top-up adds (1NCE's 250).
pub const TOP_UP_SMS: i64 = 250;
/// The first seeded ICCID (19 digits, without the Luhn digit).
pub const FIRST_ICCID: u64 = 8_988_280_666_000_000_000;

#[derive(Clone, Debug)]
struct Quota {
    remaining: i64,
    total: i64,
    last_added: i64,
    changed: String,
}

#[derive(Clone, Debug)]
struct SimRec {
    iccid: String,
    luhn: String,
    status: String,
    label: String,
    imei_lock: bool,
    expired: bool,
    pending: Option<(serde_json::Value, Instant)>,
    data: Quota,
    sms: Quota,
    /// Day → (bytes, messages).
    usage: BTreeMap<String, (i64, i64)>,
}

#[derive(Default)]
struct World {
    sims: BTreeMap<String, SimRec>,
    tokens: HashSet<String>,
    issued: u64,
    orders: Vec<serde_json::Value>,
    messages: Vec<serde_json::Value>,
    resets: Vec<serde_json::Value>,
    /// ICCID → its network events, oldest first.
    events: BTreeMap<String, Vec<serde_json::Value>>,
    next_event: i64,
    /// Serve events oldest first (1NCE does not document its order; tests try both).
    events_oldest_first: bool,
    window: (u64, u32),
}

impl World {
    /// Records a network event of SIM `iccid` (19 digits) with the next ID.
    fn event(&mut self, iccid: &str, kind: &str, network: &str, country: &str, alert: bool) {
        self.next_event += 1;
        let e = serde_json::json!({
            "id": 7_000_000 + self.next_event, "timestamp": now_text(), "alert": alert,
            "event_type": {"id": 1, "description": kind},
            "event_source": {"id": 0, "description": "Network"},
            "event_severity": {"id": 0, "description": if alert { "WARN" } else { "INFO" }},
            "description": format!("{kind} on {network}"),
            "sim": {"iccid": iccid},
            "detail": {"name": network, "country": {"name": country}},
        });
        self.events.entry(iccid.to_string()).or_default().push(e);
    }
}

#[derive(Clone)]
struct App {
    world: Arc<Mutex<World>>,
    cfg: Arc<SimConfig>,
}

/// The Luhn check digit of a string of digits.
pub fn luhn_digit(digits: &str) -> u32 {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    (10 - sum % 10) % 10
}

fn today() -> String {
    jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
        .to_string()
}

fn now_text() -> String {
    jiff::Timestamp::now().to_string()
}

fn seed(n: u32) -> BTreeMap<String, SimRec> {
    (0..u64::from(n))
        .map(|i| {
            let iccid = (FIRST_ICCID + i).to_string();
            let luhn = format!("{iccid}{}", luhn_digit(&iccid));
            let quota = |v| Quota {
                remaining: v,
                total: v,
                last_added: v,
                changed: "2026-01-01T00:00:00Z".into(),
            };
            (
                iccid.clone(),
                SimRec {
                    iccid,
                    luhn,
                    status: "Enabled".into(),
                    label: String::new(),
                    imei_lock: false,
                    expired: false,
                    pending: None,
                    data: quota(TOP_UP_BYTES),
                    sms: quota(TOP_UP_SMS),
                    usage: BTreeMap::new(),
                },
            )
        })
        .collect()
}

/// The 1NCE routes.
pub fn router(cfg: Arc<SimConfig>) -> Router {
    let world = World {
        sims: seed(cfg.onence_sims),
        ..Default::default()
    };
    let app = App {
        world: Arc::new(Mutex::new(world)),
        cfg,
    };
    let api = Router::new()
        .route("/v1/sims", get(list))
        .route("/v1/sims/{iccid}", get(read))
        .route("/v2/sims/{iccid}", axum::routing::put(change))
        .route("/v1/sims/{iccid}/quota/{kind}", get(quota))
        .route("/v1/sims/{iccid}/status", get(connectivity))
        .route("/v1/sims/{iccid}/usage", get(usage))
        .route("/v1/sims/{iccid}/topup", post(top_up))
        .route("/v1/sims/{iccid}/sms", post(send_sms).get(list_sms))
        .route("/v1/sims/{iccid}/reset", post(reset))
        .route("/v2/sims/{iccid}/events", get(events))
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), gate));
    Router::new()
        .route("/oauth/token", post(token))
        .merge(api)
        .route("/_sim/1nce/sims/{iccid}/traffic", post(traffic))
        .route("/_sim/1nce/sims/{iccid}/expire", post(expire))
        .route("/_sim/1nce/sims/{iccid}/device-sms", post(device_sms))
        .route("/_sim/1nce/orders", get(orders))
        .route("/_sim/1nce/messages", get(messages))
        .route("/_sim/1nce/resets", get(resets))
        .route("/_sim/1nce/sims/{iccid}/events", post(add_events))
        .route("/_sim/1nce/events-order", post(events_order))
        .with_state(app)
}

fn err(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "statusCode": status.as_u16(), "message": message })),
    )
        .into_response()
}

async fn token(State(app): State<App>, headers: HeaderMap) -> Response {
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .filter(|v| !v.trim().is_empty());
    if basic.is_none() {
        return err(
            StatusCode::BAD_REQUEST,
            "Auth header validation error: Missing attributes 'username', 'password'",
        );
    }
    let mut w = app.world.lock().await;
    w.issued += 1;
    let t = format!("sim-1nce-{}-{}", w.issued, rand::random::<u32>());
    w.tokens.insert(t.clone());
    axum::Json(serde_json::json!({
        "status_code": 200, "access_token": t, "token_type": "bearer", "expires_in": 3600,
        "userId": "sim", "scope": "all"
    }))
    .into_response()
}

/// A token this simulator issued, and 1NCE's 10 requests a second per customer.
async fn gate(
    State(app): State<App>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    {
        let mut w = app.world.lock().await;
        if !bearer.is_some_and(|b| w.tokens.contains(&b)) {
            return err(StatusCode::UNAUTHORIZED, "Unauthorized");
        }
        let limit = app.cfg.onence_rate_limit;
        if limit > 0 {
            let second = jiff::Timestamp::now().as_second() as u64;
            if w.window.0 != second {
                w.window = (second, 0);
            }
            w.window.1 += 1;
            if w.window.1 > limit {
                let mut r = err(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests");
                r.headers_mut()
                    .insert("retry-after", axum::http::HeaderValue::from_static("1"));
                return r;
            }
        }
        apply_due(&mut w);
    }
    next.run(req).await
}

/// Applies the changes whose delay has passed.
fn apply_due(w: &mut World) {
    let now = Instant::now();
    for s in w.sims.values_mut() {
        if let Some((change, at)) = s.pending.clone()
            && at <= now
        {
            if let Some(st) = change["status"].as_str() {
                s.status = st.into();
            }
            if let Some(l) = change["label"].as_str() {
                s.label = l.into();
            }
            if let Some(lock) = change["imei_lock"].as_bool() {
                s.imei_lock = lock;
            }
            s.pending = None;
        }
    }
}

fn find<'a>(w: &'a mut World, iccid: &str) -> Option<&'a mut SimRec> {
    let key = if iccid.len() == 20 {
        &iccid[..19]
    } else {
        iccid
    };
    w.sims.get_mut(key)
}

fn sim_json(s: &SimRec) -> serde_json::Value {
    let n = s.iccid.get(11..).unwrap_or("0");
    serde_json::json!({
        "iccid": s.iccid, "iccid_with_luhn": s.luhn,
        "imsi": format!("90140510{n}"), "msisdn": format!("88228510{n}"),
        "imei": "", "imei_lock": s.imei_lock, "status": s.status,
        "activation_date": "2026-01-01T00:00:00.000Z",
        "ip_address": format!("10.{}.{}.{}", n.len(), n.as_bytes()[n.len() - 2], n.as_bytes()[n.len() - 1]),
        "label": s.label,
        "current_quota": s.data.total / 1_000_000,
        "current_quota_SMS": s.sms.total,
        "quota_status": {"id": level(&s.data)},
        "quota_status_SMS": {"id": level(&s.sms)},
    })
}

/// 1NCE's quota level: 0 more than 20 % left (of the last top-up), 1 less, 2 none.
fn level(q: &Quota) -> i64 {
    if q.remaining <= 0 {
        2
    } else if q.remaining * 5 < q.last_added.max(1) {
        1
    } else {
        0
    }
}

#[derive(serde::Deserialize)]
struct Page {
    page: Option<usize>,
    #[serde(rename = "pageSize")]
    page_size: Option<usize>,
}

async fn list(State(app): State<App>, Query(p): Query<Page>) -> Response {
    let w = app.world.lock().await;
    let size = p.page_size.unwrap_or(10).clamp(1, 100);
    let page = p.page.unwrap_or(1).max(1);
    let total = w.sims.len();
    let pages = total.div_ceil(size).max(1);
    let items: Vec<_> = w
        .sims
        .values()
        .skip((page - 1) * size)
        .take(size)
        .map(sim_json)
        .collect();
    let mut r = axum::Json(items).into_response();
    let h = r.headers_mut();
    for (k, v) in [
        ("x-total-count", total),
        ("x-total-pages", pages),
        ("x-current-page", page),
        ("x-count-per-page", size),
    ] {
        if let Ok(v) = axum::http::HeaderValue::from_str(&v.to_string()) {
            h.insert(k, v);
        }
    }
    r
}

async fn read(State(app): State<App>, Path(iccid): Path<String>) -> Response {
    let mut w = app.world.lock().await;
    match find(&mut w, &iccid) {
        Some(s) => axum::Json(sim_json(s)).into_response(),
        None => err(StatusCode::NOT_FOUND, "SIM not found"),
    }
}

/// SIM `iccid` when it may be changed: 404 when 1NCE does not know it, 422 when it expired (as 1NCE
/// answers a change of an expired SIM).
fn changeable<'a>(
    w: &'a mut World,
    iccid: &str,
) -> Result<&'a mut SimRec, (StatusCode, &'static str)> {
    let s = find(w, iccid).ok_or((StatusCode::NOT_FOUND, "SIM not found"))?;
    if s.expired {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            "The following SIMs are expired and cannot be modified via API.",
        ));
    }
    Ok(s)
}

async fn change(
    State(app): State<App>,
    Path(iccid): Path<String>,
    axum::Json(body): axum::Json<serde_json::Value>,
) -> Response {
    let delay = Duration::from_secs(app.cfg.onence_apply_secs);
    let mut w = app.world.lock().await;
    let s = match changeable(&mut w, &iccid) {
        Ok(s) => s,
        Err((status, why)) => return err(status, why),
    };
    if s.pending.is_some() {
        return err(
            StatusCode::CONFLICT,
            "A change of this SIM is still being processed.",
        );
    }
    s.pending = Some((body, Instant::now() + delay));
    StatusCode::OK.into_response()
}

async fn quota(State(app): State<App>, Path((iccid, kind)): Path<(String, String)>) -> Response {
    let mut w = app.world.lock().await;
    let Some(s) = find(&mut w, &iccid) else {
        return err(StatusCode::NOT_FOUND, "SIM not found");
    };
    let (q, scale) = match kind.as_str() {
        "data" => (&s.data, 1_000_000),
        "sms" => (&s.sms, 1),
        _ => return err(StatusCode::NOT_FOUND, "no such quota"),
    };
    let figure = |v: i64| -> serde_json::Value {
        let d = rust_decimal::Decimal::from(v) / rust_decimal::Decimal::from(scale);
        serde_json::from_str(&d.normalize().to_string()).unwrap_or_default()
    };
    axum::Json(serde_json::json!({
        "volume": figure(q.remaining), "total_volume": figure(q.total),
        "last_volume_added": figure(q.last_added), "expiry_date": "2036-01-01T00:00:00.000Z",
        "last_status_change_date": q.changed, "threshold_percentage": 20,
    }))
    .into_response()
}

/// An enabled SIM is online; a disabled one offline.
async fn connectivity(State(app): State<App>, Path(iccid): Path<String>) -> Response {
    let mut w = app.world.lock().await;
    match find(&mut w, &iccid) {
        Some(s) => axum::Json(serde_json::json!({
            "status": if s.status == "Enabled" { "ONLINE" } else { "OFFLINE" },
            "services": ["GPRS", "SMS"]
        }))
        .into_response(),
        None => err(StatusCode::NOT_FOUND, "SIM not found"),
    }
}

#[derive(serde::Deserialize)]
struct Range {
    start_dt: Option<String>,
    end_dt: Option<String>,
}

async fn usage(
    State(app): State<App>,
    Path(iccid): Path<String>,
    Query(r): Query<Range>,
) -> Response {
    let mut w = app.world.lock().await;
    let Some(s) = find(&mut w, &iccid) else {
        return err(StatusCode::NOT_FOUND, "SIM not found");
    };
    let from = r.start_dt.unwrap_or_default();
    let to = r.end_dt.unwrap_or_else(|| "9999".into());
    let eur = serde_json::json!({"id": 1, "symbol": "€", "code": "EUR"});
    let stats: Vec<_> = s
        .usage
        .iter()
        .filter(|(d, _)| d.as_str() >= from.as_str() && d.as_str() <= to.as_str())
        .map(|(d, (bytes, sms))| {
            let mb = (rust_decimal::Decimal::from(*bytes) / rust_decimal::Decimal::from(1_000_000))
                .normalize()
                .to_string();
            serde_json::json!({
                "date": format!("{d}T00:00:00.000Z"),
                "data": {"volume": mb, "volume_rx": mb, "volume_tx": "0", "cost": mb, "currency": eur},
                "sms": {"volume": sms.to_string(), "volume_rx": "0", "volume_tx": sms.to_string(),
                        "cost": sms.to_string(), "currency": eur},
            })
        })
        .collect();
    axum::Json(serde_json::json!({ "stats": stats })).into_response()
}

async fn top_up(State(app): State<App>, Path(iccid): Path<String>) -> Response {
    let mut w = app.world.lock().await;
    let Some(s) = find(&mut w, &iccid) else {
        return err(StatusCode::NOT_FOUND, "SIM not found");
    };
    let changed = now_text();
    for (q, add) in [(&mut s.data, TOP_UP_BYTES), (&mut s.sms, TOP_UP_SMS)] {
        q.remaining += add;
        q.total += add;
        q.last_added = add;
        q.changed = changed.clone();
    }
    let iccid = s.iccid.clone();
    let id = w.orders.len() + 1;
    w.orders
        .push(serde_json::json!({"id": id, "iccid": iccid, "at": changed}));
    drop(w);
    if app.cfg.onence_top_up_latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(app.cfg.onence_top_up_latency_ms)).await;
    }
    (
        StatusCode::CREATED,
        [(
            "location",
            format!("https://api.1nce.com/management-api/v1/orders/{id}"),
        )],
    )
        .into_response()
}

async fn send_sms(
    State(app): State<App>,
    Path(iccid): Path<String>,
    axum::Json(body): axum::Json<serde_json::Value>,
) -> Response {
    let mut w = app.world.lock().await;
    let Some(s) = find(&mut w, &iccid) else {
        return err(StatusCode::NOT_FOUND, "SIM not found");
    };
    if s.sms.remaining <= 0 {
        return err(
            StatusCode::UNPROCESSABLE_ENTITY,
            "The SMS quota is used up.",
        );
    }
    s.sms.remaining -= 1;
    let iccid = s.iccid.clone();
    *s.usage.entry(today()).or_default() = {
        let (b, m) = s.usage.get(&today()).copied().unwrap_or_default();
        (b, m + 1)
    };
    let id = w.messages.len() + 1;
    w.messages.push(
        serde_json::json!({"id": id, "iccid": iccid, "payload": body["payload"],
        "submit_date": now_text(), "status": "DELIVERED"}),
    );
    drop(w);
    if app.cfg.onence_sms_latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(app.cfg.onence_sms_latency_ms)).await;
    }
    StatusCode::CREATED.into_response()
}

async fn list_sms(State(app): State<App>, Path(iccid): Path<String>) -> Response {
    let w = app.world.lock().await;
    let key = iccid.get(..19).unwrap_or(&iccid);
    let mut list: Vec<_> = w
        .messages
        .iter()
        .filter(|m| m["iccid"] == key)
        .cloned()
        .collect();
    list.reverse();
    axum::Json(list).into_response()
}

#[derive(serde::Deserialize)]
struct Traffic {
    #[serde(default)]
    bytes: i64,
    #[serde(default)]
    sms: i64,
}

async fn traffic(
    State(app): State<App>,
    Path(iccid): Path<String>,
    axum::Json(t): axum::Json<Traffic>,
) -> Response {
    let mut w = app.world.lock().await;
    let Some(s) = find(&mut w, &iccid) else {
        return err(StatusCode::NOT_FOUND, "SIM not found");
    };
    let bytes = t.bytes.min(s.data.remaining).max(0);
    let sms = t.sms.min(s.sms.remaining).max(0);
    s.data.remaining -= bytes;
    s.sms.remaining -= sms;
    let day = s.usage.entry(today()).or_default();
    day.0 += bytes;
    day.1 += sms;
    let iccid = s.iccid.clone();
    if bytes > 0 {
        w.event(&iccid, "Create PDP Context", "Telekom.de", "Germany", false);
    }
    drop(w);
    if bytes > 0 {
        let mb = (rust_decimal::Decimal::from(bytes) / rust_decimal::Decimal::from(1_000_000))
            .normalize()
            .to_string();
        push(
            &app.cfg,
            "usage",
            serde_json::json!([{
                "id": uuid::Uuid::new_v4().to_string(), "start_timestamp": now_text(),
                "sim": {"iccid": iccid}, "traffic_type": {"id": 5, "description": "Data"},
                "volume": {"total": mb}, "currency": {"code": "EUR"}
            }]),
        );
    }
    axum::Json(serde_json::json!({"bytes": bytes, "sms": sms})).into_response()
}

#[derive(serde::Deserialize)]
struct DeviceSms {
    payload: String,
}

/// A device sends an SMS: counted in the day's usage and forwarded (SMS forwarder push).
async fn device_sms(
    State(app): State<App>,
    Path(iccid): Path<String>,
    axum::Json(m): axum::Json<DeviceSms>,
) -> Response {
    let mut w = app.world.lock().await;
    let Some(s) = find(&mut w, &iccid) else {
        return err(StatusCode::NOT_FOUND, "SIM not found");
    };
    s.usage.entry(today()).or_default().1 += 1;
    let iccid = s.iccid.clone();
    drop(w);
    push(
        &app.cfg,
        "sms",
        serde_json::json!({
            "id": uuid::Uuid::new_v4().to_string(), "iccid": iccid,
            "submit_date": now_text(), "payload": m.payload
        }),
    );
    StatusCode::ACCEPTED.into_response()
}

/// Pushes `body` to the configured webhook `kind` in the background, re-sent until answered 200 (for
/// up to 24 hours, as 1NCE does), one second apart at first, at most a minute apart.
fn push(cfg: &SimConfig, kind: &str, body: serde_json::Value) {
    let Some(base) = cfg.onence_push_url.clone() else {
        return;
    };
    let url = format!("{}/webhooks/onence/{kind}", base.trim_end_matches('/'));
    let auth = cfg.onence_push_auth.clone().unwrap_or_default();
    tokio::spawn(async move {
        crate::install_crypto_provider();
        let http = reqwest::Client::new();
        let (user, password) = auth.split_once(':').unwrap_or((auth.as_str(), ""));
        let started = Instant::now();
        let mut wait = Duration::from_secs(1);
        while started.elapsed() < Duration::from_secs(24 * 3600) {
            let sent = http
                .post(&url)
                .basic_auth(user, Some(password))
                .json(&body)
                .send()
                .await;
            if sent.is_ok_and(|r| r.status().as_u16() == 200) {
                return;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(60));
        }
    });
}

async fn expire(State(app): State<App>, Path(iccid): Path<String>) -> Response {
    let mut w = app.world.lock().await;
    match find(&mut w, &iccid) {
        Some(s) => {
            s.expired = true;
            StatusCode::NO_CONTENT.into_response()
        }
        None => err(StatusCode::NOT_FOUND, "SIM not found"),
    }
}

async fn orders(State(app): State<App>) -> Response {
    axum::Json(app.world.lock().await.orders.clone()).into_response()
}

/// `POST /v1/sims/{iccid}/reset`: a connectivity reset queued (201), as 1NCE answers; an expired SIM
/// answers 422.
async fn reset(State(app): State<App>, Path(iccid): Path<String>) -> Response {
    let mut w = app.world.lock().await;
    let iccid = match changeable(&mut w, &iccid) {
        Ok(s) => s.iccid.clone(),
        Err((status, why)) => return err(status, why),
    };
    w.resets
        .push(serde_json::json!({"iccid": iccid, "at": now_text()}));
    StatusCode::CREATED.into_response()
}

#[derive(serde::Deserialize)]
struct PageQuery {
    page: Option<usize>,
    #[serde(rename = "pageSize")]
    page_size: Option<usize>,
}

/// `GET /v2/sims/{iccid}/events`: the SIM's network events, newest first, paged (10 by default, at
/// most 1,000).
async fn events(
    State(app): State<App>,
    Path(iccid): Path<String>,
    axum::extract::Query(q): axum::extract::Query<PageQuery>,
) -> Response {
    let mut w = app.world.lock().await;
    let Some(iccid) = find(&mut w, &iccid).map(|s| s.iccid.clone()) else {
        return err(StatusCode::NOT_FOUND, "SIM not found");
    };
    let size = q.page_size.unwrap_or(10).clamp(1, 1000);
    let page = q.page.unwrap_or(1).max(1);
    let mut all = w.events.get(&iccid).cloned().unwrap_or_default();
    if !w.events_oldest_first {
        all.reverse();
    }
    let items: Vec<_> = all
        .iter()
        .skip((page - 1) * size)
        .take(size)
        .cloned()
        .collect();
    let pages = all.len().div_ceil(size).max(1);
    (
        [
            ("x-total-count", all.len().to_string()),
            ("x-total-pages", pages.to_string()),
        ],
        axum::Json(items),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct EventsOrder {
    #[serde(rename = "oldestFirst")]
    oldest_first: bool,
}

/// Sets the order events are served in (for tests: 1NCE does not document its own).
async fn events_order(State(app): State<App>, axum::Json(o): axum::Json<EventsOrder>) -> Response {
    app.world.lock().await.events_oldest_first = o.oldest_first;
    StatusCode::NO_CONTENT.into_response()
}

#[derive(serde::Deserialize)]
struct NewEvent {
    #[serde(rename = "type")]
    kind: String,
    network: String,
    country: String,
    #[serde(default)]
    alert: bool,
}

/// Adds network events to a SIM (for tests: a device roaming, detaching).
async fn add_events(
    State(app): State<App>,
    Path(iccid): Path<String>,
    axum::Json(new): axum::Json<Vec<NewEvent>>,
) -> Response {
    let mut w = app.world.lock().await;
    let Some(iccid) = find(&mut w, &iccid).map(|s| s.iccid.clone()) else {
        return err(StatusCode::NOT_FOUND, "SIM not found");
    };
    for e in new {
        w.event(&iccid, &e.kind, &e.network, &e.country, e.alert);
    }
    StatusCode::NO_CONTENT.into_response()
}

/// The connectivity resets queued so far (for tests).
async fn resets(State(app): State<App>) -> Response {
    axum::Json(app.world.lock().await.resets.clone()).into_response()
}

async fn messages(State(app): State<App>) -> Response {
    axum::Json(app.world.lock().await.messages.clone()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn() {
        // 7992739871 → 3 (the textbook example).
        assert_eq!(luhn_digit("7992739871"), 3);
    }
}

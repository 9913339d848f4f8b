//! The Stripe subset of `quartermaster sim`, on the same port as the other vendors: customers, prices,
//! subscriptions with items and proration, invoices and payments, billing meter events deduplicated by
//! identifier, search by metadata, and idempotency keys replaying the first answer (a reused key with
//! other parameters is refused, as Stripe does). Form-encoded requests, Stripe's error shape.
//!
//! Time is the simulator's clock: real time plus what `POST /_sim/stripe/advance` (`{"seconds": n}`)
//! added, so a billing period can end in a test. When a period ends a subscription renews (a new
//! invoice: the licensed amount, pending prorations and the period's metered usage), ends
//! (`cancel_at_period_end`), or goes `past_due` when its customer's payments fail
//! (`POST /_sim/stripe/customers/{id}/payments` with `{"fail": true}`; `false` pays what is open).
//! An `incomplete` subscription expires after 23 hours (`incomplete_expired`). An update with
//! `billing_cycle_anchor=now` ends the current period now and starts the next, as Stripe resets a cycle.
//!
//! Webhooks: with `--stripe-webhook-url` every event is POSTed there, signed with
//! `--stripe-webhook-secret` as Stripe signs (`Stripe-Signature: t=…,v1=…`), re-sent until answered 2xx.
//! `POST /_sim/stripe/webhooks` with `{"hold": true}` keeps events back, `{"duplicate": true}` sends each
//! twice; `POST /_sim/stripe/webhooks/flush?reverse=true` delivers what was held, newest first.
//! `GET /_sim/stripe/events`, `/_sim/stripe/meter-events` and `/_sim/stripe/state` show what happened.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use super::SimConfig;

/// The prices the simulated account holds: (ID, unit amount in cents, metered by this meter event name).
pub const PRICES: &[(&str, i64, Option<&str>)] = &[
    ("price_basic", 1000, None),
    ("price_pro", 5000, None),
    ("price_vm_hours", 2, Some("vm_hours")),
    ("price_sim_megabytes", 1, Some("sim_megabytes")),
    ("price_llm_tokens", 1, Some("llm_tokens")),
];
/// How long an `incomplete` subscription waits for its first payment.
const INCOMPLETE_EXPIRES: i64 = 23 * 3600;

#[derive(Default)]
struct World {
    offset: i64,
    next: u64,
    customers: BTreeMap<String, Value>,
    failing: HashSet<String>,
    subs: BTreeMap<String, Value>,
    invoices: BTreeMap<String, Value>,
    meter_events: BTreeMap<String, Value>,
    meter_posts: u64,
    /// Idempotency key → (parameter hash, status, body).
    idem: HashMap<String, (String, u16, String)>,
    events: Vec<Value>,
    held: Vec<Value>,
    hold: bool,
    duplicate: bool,
}

impl World {
    fn now(&self) -> i64 {
        jiff::Timestamp::now().as_second() + self.offset
    }
    fn id(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}_sim{:08}", self.next)
    }
}

#[derive(Clone)]
struct App {
    world: Arc<Mutex<World>>,
    cfg: Arc<SimConfig>,
}

/// The Stripe routes.
pub fn router(cfg: Arc<SimConfig>) -> Router {
    let app = App {
        world: Arc::default(),
        cfg,
    };
    let api = Router::new()
        .route("/v1/customers", get(list_customers).post(create_customer))
        .route("/v1/customers/search", get(search_customers))
        .route(
            "/v1/customers/{id}",
            get(read_customer)
                .post(update_customer)
                .delete(delete_customer),
        )
        .route("/v1/prices/{id}", get(read_price))
        .route(
            "/v1/subscriptions",
            get(list_subscriptions).post(create_subscription),
        )
        .route("/v1/subscriptions/search", get(search_subscriptions))
        .route(
            "/v1/subscriptions/{id}",
            get(read_subscription)
                .post(update_subscription)
                .delete(cancel_subscription),
        )
        .route("/v1/invoices", get(list_invoices))
        .route("/v1/invoices/{id}", get(read_invoice))
        .route("/v1/billing/meter_events", post(meter_event))
        .route_layer(axum::middleware::from_fn(auth));
    Router::new()
        .merge(api)
        .route("/_sim/stripe/advance", post(advance))
        .route("/_sim/stripe/customers/{id}/payments", post(payments))
        .route("/_sim/stripe/webhooks", post(webhook_mode))
        .route("/_sim/stripe/webhooks/flush", post(flush))
        .route("/_sim/stripe/events", get(events))
        .route("/_sim/stripe/meter-events", get(meter_events))
        .route("/_sim/stripe/state", get(state))
        .with_state(app)
}

/// An error in Stripe's shape.
fn err(status: StatusCode, kind: &str, code: Option<&str>, message: &str) -> Response {
    let body = json!({"error": {"type": kind, "code": code, "message": message}});
    (status, axum::Json(body)).into_response()
}

fn missing(what: &str, id: &str) -> Response {
    err(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        Some("resource_missing"),
        &format!("No such {what}: '{id}'"),
    )
}

fn invalid(message: &str) -> Response {
    err(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        None,
        message,
    )
}

async fn auth(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let key = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|k| !k.trim().is_empty());
    if key.is_none() {
        return err(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            None,
            "You did not provide an API key.",
        );
    }
    next.run(req).await
}

/// Form pairs as a map (Stripe's nested keys kept as they are: `items[0][price]`).
fn params(body: &Bytes) -> BTreeMap<String, String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .unwrap_or_default()
        .into_iter()
        .collect()
}

fn metadata(p: &BTreeMap<String, String>) -> Value {
    let m: serde_json::Map<String, Value> = p
        .iter()
        .filter_map(|(k, v)| {
            let inner = k.strip_prefix("metadata[")?.strip_suffix(']')?;
            Some((inner.to_string(), Value::String(v.clone())))
        })
        .collect();
    Value::Object(m)
}

/// Stripe's metadata update: keys set, a key set to "" removed.
fn merge_metadata(have: &mut Value, new: Value) {
    if let (Value::Object(have), Value::Object(new)) = (have, new) {
        for (k, v) in new {
            if v == "" {
                have.remove(&k);
            } else {
                have.insert(k, v);
            }
        }
    }
}

/// A POST's idempotency: the replayed answer when the key was seen with the same parameters, a refusal
/// when it was seen with others, `None` to go ahead.
fn replay(w: &World, headers: &HeaderMap, path: &str, body: &Bytes) -> Option<Response> {
    let key = headers.get("idempotency-key")?.to_str().ok()?;
    let (hash, status, answer) = w.idem.get(key)?;
    if *hash != request_hash(path, body) {
        return Some(err(
            StatusCode::BAD_REQUEST,
            "idempotency_error",
            None,
            &format!(
                "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}' if you meant to execute a different request."
            ),
        ));
    }
    let mut r = (
        StatusCode::from_u16(*status).unwrap_or(StatusCode::OK),
        [("content-type", "application/json")],
        answer.clone(),
    )
        .into_response();
    r.headers_mut().insert(
        "idempotent-replayed",
        axum::http::HeaderValue::from_static("true"),
    );
    Some(r)
}

fn request_hash(path: &str, body: &Bytes) -> String {
    let mut h = Sha256::new();
    h.update(path.as_bytes());
    h.update(b"\n");
    // The parameters, not their order.
    for (k, v) in params(body) {
        h.update(format!("{k}={v}\n").as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Answers `value` and remembers it under the request's idempotency key.
fn answer(
    w: &mut World,
    headers: &HeaderMap,
    path: &str,
    body: &Bytes,
    status: StatusCode,
    value: Value,
) -> Response {
    if let Some(key) = headers.get("idempotency-key").and_then(|k| k.to_str().ok()) {
        w.idem.insert(
            key.to_string(),
            (request_hash(path, body), status.as_u16(), value.to_string()),
        );
    }
    (status, axum::Json(value)).into_response()
}

/// The Stripe API version whose shapes this simulator serves and names in its events. The simulator
/// stands for Stripe: it shares no code or constant with the client it answers.
const API_VERSION: &str = "2023-08-16";

/// The `Stripe-Signature` header Stripe sends with an event, as its documentation describes it:
/// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed by the endpoint's secret>`. Written here
/// from the documentation, not with the verifier's code, so that a defect in one is not mirrored in the
/// other.
fn signature_header(secret: &str, t: i64, body: &str) -> String {
    use hmac::Mac;
    let signed_payload = format!("{t}.{body}");
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(signed_payload.as_bytes());
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = mac.finalize().into_bytes();
    let mut v1 = String::with_capacity(digest.len() * 2);
    for b in digest {
        v1.push(char::from(HEX[usize::from(b >> 4)]));
        v1.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    format!("t={t},v1={v1}")
}

/// Records an event and sends it (unless held).
fn emit(app: &App, w: &mut World, kind: &str, object: &Value) {
    let event = json!({
        "id": w.id("evt"), "object": "event", "type": kind, "created": w.now(),
        "api_version": API_VERSION, "livemode": false,
        "data": {"object": object},
    });
    w.events.push(event.clone());
    if w.hold {
        w.held.push(event);
        return;
    }
    deliver(app, &event, w.duplicate);
}

fn deliver(app: &App, event: &Value, duplicate: bool) {
    let (Some(url), Some(secret)) = (
        app.cfg.stripe_webhook_url.clone(),
        app.cfg.stripe_webhook_secret.clone(),
    ) else {
        return;
    };
    let body = event.to_string();
    let copies = if duplicate { 2 } else { 1 };
    for _ in 0..copies {
        let (url, secret, body) = (url.clone(), secret.clone(), body.clone());
        tokio::spawn(async move {
            crate::install_crypto_provider();
            let http = reqwest::Client::new();
            let mut wait = Duration::from_millis(500);
            for _ in 0..20 {
                let t = jiff::Timestamp::now().as_second();
                let sent = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("stripe-signature", signature_header(&secret, t, &body))
                    .body(body.clone())
                    .send()
                    .await;
                if sent.is_ok_and(|r| r.status().is_success()) {
                    return;
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        });
    }
}

fn price_of(id: &str) -> Option<(i64, Option<&'static str>)> {
    PRICES
        .iter()
        .find(|(p, _, _)| *p == id)
        .map(|(_, a, m)| (*a, *m))
}

fn price_json(id: &str) -> Option<Value> {
    let (amount, meter) = price_of(id)?;
    Some(json!({
        "id": id, "object": "price", "currency": "usd", "unit_amount": amount, "active": true,
        "type": "recurring",
        "recurring": {"interval": "month", "usage_type": if meter.is_some() { "metered" } else { "licensed" }, "meter": meter},
    }))
}

fn list(data: Vec<Value>, url: &str) -> Value {
    json!({"object": "list", "data": data, "has_more": false, "url": url})
}

/// The UID a search query asks for: `metadata['quartermaster_uid']:'UID'`.
fn uid_in(query: &str) -> Option<String> {
    let rest = query.split("metadata['quartermaster_uid']:'").nth(1)?;
    Some(rest.split('\'').next()?.to_string())
}

fn with_uid(objects: &BTreeMap<String, Value>, uid: &str) -> Vec<Value> {
    objects
        .values()
        .filter(|o| o["metadata"]["quartermaster_uid"].as_str() == Some(uid))
        .cloned()
        .collect()
}

#[derive(serde::Deserialize)]
struct Search {
    #[serde(default)]
    query: String,
}

async fn list_customers(State(app): State<App>) -> Response {
    let w = app.world.lock().await;
    axum::Json(list(
        w.customers.values().cloned().collect(),
        "/v1/customers",
    ))
    .into_response()
}

async fn search_customers(State(app): State<App>, Query(q): Query<Search>) -> Response {
    let w = app.world.lock().await;
    let data = uid_in(&q.query)
        .map(|u| with_uid(&w.customers, &u))
        .unwrap_or_default();
    axum::Json(json!({"object": "search_result", "data": data, "has_more": false})).into_response()
}

async fn create_customer(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    let mut w = app.world.lock().await;
    if let Some(r) = replay(&w, &headers, "/v1/customers", &body) {
        return r;
    }
    let p = params(&body);
    let id = w.id("cus");
    let c = json!({
        "id": id, "object": "customer", "email": p.get("email"), "name": p.get("name"),
        "created": w.now(), "metadata": metadata(&p), "livemode": false,
    });
    w.customers.insert(id, c.clone());
    emit(&app, &mut w, "customer.created", &c);
    answer(&mut w, &headers, "/v1/customers", &body, StatusCode::OK, c)
}

async fn read_customer(State(app): State<App>, Path(id): Path<String>) -> Response {
    let w = app.world.lock().await;
    match w.customers.get(&id) {
        Some(c) => axum::Json(c.clone()).into_response(),
        None => missing("customer", &id),
    }
}

/// Deletes a customer (Stripe cancels its open subscriptions with it; here, deleting one that has any is
/// not something the controller does, and the simulator keeps them).
async fn delete_customer(State(app): State<App>, Path(id): Path<String>) -> Response {
    let mut w = app.world.lock().await;
    let Some(c) = w.customers.remove(&id) else {
        return missing("customer", &id);
    };
    emit(&app, &mut w, "customer.deleted", &c);
    axum::Json(json!({"id": id, "object": "customer", "deleted": true})).into_response()
}

async fn update_customer(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut w = app.world.lock().await;
    let path = format!("/v1/customers/{id}");
    if let Some(r) = replay(&w, &headers, &path, &body) {
        return r;
    }
    let p = params(&body);
    let Some(c) = w.customers.get_mut(&id) else {
        return missing("customer", &id);
    };
    for f in ["email", "name"] {
        if let Some(v) = p.get(f) {
            c[f] = json!(v);
        }
    }
    merge_metadata(&mut c["metadata"], metadata(&p));
    let c = c.clone();
    emit(&app, &mut w, "customer.updated", &c);
    answer(&mut w, &headers, &path, &body, StatusCode::OK, c)
}

async fn read_price(Path(id): Path<String>) -> Response {
    match price_json(&id) {
        Some(p) => axum::Json(p).into_response(),
        None => missing("price", &id),
    }
}

#[derive(serde::Deserialize)]
struct SubList {
    customer: Option<String>,
    limit: Option<usize>,
    starting_after: Option<String>,
}

async fn list_subscriptions(State(app): State<App>, Query(q): Query<SubList>) -> Response {
    let w = app.world.lock().await;
    let limit = q.limit.unwrap_or(10).clamp(1, 100);
    // IDs sort in creation order here; Stripe lists newest first, but paging works the same way.
    let start = match &q.starting_after {
        Some(after) => std::ops::Bound::Excluded(after.clone()),
        None => std::ops::Bound::Unbounded,
    };
    let mut data: Vec<Value> = w
        .subs
        .range((start, std::ops::Bound::Unbounded))
        .map(|(_, s)| s)
        .filter(|s| q.customer.as_deref().is_none_or(|c| s["customer"] == c))
        .take(limit + 1)
        .cloned()
        .collect();
    let more = data.len() > limit;
    data.truncate(limit);
    let mut l = list(data, "/v1/subscriptions");
    l["has_more"] = json!(more);
    axum::Json(l).into_response()
}

async fn search_subscriptions(State(app): State<App>, Query(q): Query<Search>) -> Response {
    let w = app.world.lock().await;
    let data = uid_in(&q.query)
        .map(|u| with_uid(&w.subs, &u))
        .unwrap_or_default();
    axum::Json(json!({"object": "search_result", "data": data, "has_more": false})).into_response()
}

async fn read_subscription(State(app): State<App>, Path(id): Path<String>) -> Response {
    let w = app.world.lock().await;
    match w.subs.get(&id) {
        Some(s) => axum::Json(s.clone()).into_response(),
        None => missing("subscription", &id),
    }
}

/// The licensed amount of a subscription's items, cents.
fn licensed(sub: &Value) -> i64 {
    sub["items"]["data"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| {
                    let (amount, meter) = price_of(i["price"]["id"].as_str()?)?;
                    let q = i["quantity"].as_i64().unwrap_or(1);
                    meter.is_none().then_some(amount * q)
                })
                .sum()
        })
        .unwrap_or(0)
}

/// The metered usage of a subscription's customer in `[start, end)`, cents.
fn metered(w: &World, sub: &Value, start: i64, end: i64) -> i64 {
    let customer = sub["customer"].as_str().unwrap_or_default();
    let Some(items) = sub["items"]["data"].as_array() else {
        return 0;
    };
    items
        .iter()
        .filter_map(|i| price_of(i["price"]["id"].as_str()?))
        .filter_map(|(amount, meter)| Some((amount, meter?)))
        .map(|(amount, meter)| {
            let units: f64 = w
                .meter_events
                .values()
                .filter(|e| {
                    e["event_name"] == meter
                        && e["payload"]["stripe_customer_id"] == customer
                        && e["timestamp"]
                            .as_i64()
                            .is_some_and(|t| t >= start && t < end)
                })
                .filter_map(|e| e["payload"]["value"].as_str()?.parse::<f64>().ok())
                .sum();
            (units * amount as f64).round() as i64
        })
        .sum()
}

/// Makes an invoice of `amount` for `sub` and tries to pay it; true when paid.
fn invoice(app: &App, w: &mut World, sub_id: &str, amount: i64, reason: &str) -> bool {
    let Some(sub) = w.subs.get(sub_id).cloned() else {
        return false;
    };
    let customer = sub["customer"].as_str().unwrap_or_default().to_string();
    let id = w.id("in");
    let paid = amount == 0 || !w.failing.contains(&customer);
    let inv = json!({
        "id": id, "object": "invoice", "customer": customer, "subscription": sub_id,
        "status": if paid { "paid" } else { "open" }, "amount_due": amount,
        "amount_paid": if paid { amount } else { 0 }, "currency": "usd",
        "billing_reason": reason, "created": w.now(), "paid": paid,
        "period_start": sub["current_period_start"], "period_end": sub["current_period_end"],
        "hosted_invoice_url": format!("http://stripe.sim/invoices/{id}"),
        "subscription_details": {"metadata": sub["metadata"]},
    });
    w.invoices.insert(id.clone(), inv.clone());
    if let Some(s) = w.subs.get_mut(sub_id) {
        s["latest_invoice"] = json!(id);
    }
    emit(app, w, "invoice.created", &inv);
    emit(
        app,
        w,
        if paid {
            "invoice.paid"
        } else {
            "invoice.payment_failed"
        },
        &inv,
    );
    paid
}

fn set_status(app: &App, w: &mut World, sub_id: &str, status: &str) {
    let now = w.now();
    let Some(s) = w.subs.get_mut(sub_id) else {
        return;
    };
    if s["status"] == status {
        return;
    }
    s["status"] = json!(status);
    let deleted = status == "canceled";
    if deleted {
        s["canceled_at"] = json!(now);
        s["ended_at"] = json!(now);
    }
    let s = s.clone();
    let kind = if deleted {
        "customer.subscription.deleted"
    } else {
        "customer.subscription.updated"
    };
    emit(app, w, kind, &s);
}

fn item_json(w: &mut World, price: &str, quantity: i64) -> Option<Value> {
    let p = price_json(price)?;
    let metered = p["recurring"]["usage_type"] == "metered";
    Some(json!({
        "id": w.id("si"), "object": "subscription_item", "price": p,
        "quantity": if metered { Value::Null } else { json!(quantity) },
    }))
}

async fn create_subscription(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    let mut w = app.world.lock().await;
    if let Some(r) = replay(&w, &headers, "/v1/subscriptions", &body) {
        return r;
    }
    let p = params(&body);
    let customer = p.get("customer").cloned().unwrap_or_default();
    if !w.customers.contains_key(&customer) {
        return invalid(&format!("No such customer: '{customer}'"));
    }
    let mut items = Vec::new();
    for i in 0..20 {
        let Some(price) = p.get(&format!("items[{i}][price]")) else {
            break;
        };
        let q = p
            .get(&format!("items[{i}][quantity]"))
            .and_then(|q| q.parse().ok())
            .unwrap_or(1);
        match item_json(&mut w, price, q) {
            Some(item) => items.push(item),
            None => return invalid(&format!("No such price: '{price}'")),
        }
    }
    if items.is_empty() {
        return invalid("Missing required param: items.");
    }
    let now = w.now();
    let trial: i64 = p
        .get("trial_period_days")
        .and_then(|d| d.parse().ok())
        .unwrap_or(0);
    let end = if trial > 0 {
        now + trial * 86_400
    } else {
        now + app.cfg.stripe_period_secs
    };
    let id = w.id("sub");
    let sub = json!({
        "id": id, "object": "subscription", "customer": customer, "created": now,
        "status": if trial > 0 { "trialing" } else { "incomplete" },
        "current_period_start": now, "current_period_end": end,
        "trial_end": if trial > 0 { json!(end) } else { Value::Null },
        "cancel_at_period_end": p.get("cancel_at_period_end").is_some_and(|v| v == "true"),
        "metadata": metadata(&p), "pending_proration": 0,
        "items": {"object": "list", "data": items},
        "latest_invoice": Value::Null, "canceled_at": Value::Null, "ended_at": Value::Null,
    });
    w.subs.insert(id.clone(), sub.clone());
    emit(&app, &mut w, "customer.subscription.created", &sub);
    let amount = if trial > 0 { 0 } else { licensed(&sub) };
    if invoice(&app, &mut w, &id, amount, "subscription_create") && trial == 0 {
        set_status(&app, &mut w, &id, "active");
    }
    let sub = w.subs[&id].clone();
    answer(
        &mut w,
        &headers,
        "/v1/subscriptions",
        &body,
        StatusCode::OK,
        sub,
    )
}

async fn update_subscription(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut w = app.world.lock().await;
    let path = format!("/v1/subscriptions/{id}");
    if let Some(r) = replay(&w, &headers, &path, &body) {
        return r;
    }
    let p = params(&body);
    let Some(sub) = w.subs.get(&id).cloned() else {
        return missing("subscription", &id);
    };
    if matches!(
        sub["status"].as_str(),
        Some("canceled" | "incomplete_expired")
    ) {
        return invalid(&format!(
            "A canceled subscription can only update its cancellation_details and metadata: {id}"
        ));
    }
    let before = licensed(&sub);
    let mut sub = sub;
    if let Some(v) = p.get("cancel_at_period_end") {
        sub["cancel_at_period_end"] = json!(v == "true");
    }
    merge_metadata(&mut sub["metadata"], metadata(&p));
    // Items added (a price, no ID) or removed (an ID and deleted=true).
    for i in 0..20 {
        let id = p.get(&format!("items[{i}][id]"));
        if let (None, Some(price)) = (id, p.get(&format!("items[{i}][price]"))) {
            let Some(item) = item_json(&mut w, price, 1) else {
                return invalid(&format!("No such price: '{price}'"));
            };
            if let Some(items) = sub["items"]["data"].as_array_mut() {
                items.push(item);
            }
        }
        if let (Some(id), Some(_)) = (id, p.get(&format!("items[{i}][deleted]")))
            && let Some(items) = sub["items"]["data"].as_array_mut()
        {
            items.retain(|x| x["id"] != id.as_str());
        }
    }
    if let Some(item_id) = p
        .get("items[0][id]")
        .filter(|_| !p.contains_key("items[0][deleted]"))
    {
        let price = p.get("items[0][price]").cloned();
        let quantity = p
            .get("items[0][quantity]")
            .and_then(|q| q.parse::<i64>().ok());
        let Some(items) = sub["items"]["data"].as_array_mut() else {
            return invalid("subscription has no items");
        };
        let Some(item) = items.iter_mut().find(|i| i["id"] == item_id.as_str()) else {
            return invalid(&format!("No such subscription item: '{item_id}'"));
        };
        if let Some(price) = price {
            match price_json(&price) {
                Some(pj) => item["price"] = pj,
                None => return invalid(&format!("No such price: '{price}'")),
            }
        }
        if let Some(q) = quantity {
            item["quantity"] = json!(q);
        }
    }
    let delta = licensed(&sub) - before;
    let now = w.now();
    let (start, end) = (
        sub["current_period_start"].as_i64().unwrap_or(now),
        sub["current_period_end"].as_i64().unwrap_or(now),
    );
    let left = if end > start {
        (end - now).max(0) as f64 / (end - start) as f64
    } else {
        0.0
    };
    let proration = (delta as f64 * left).round() as i64;
    let behavior = p
        .get("proration_behavior")
        .map_or("create_prorations", String::as_str);
    let trialing = sub["status"] == "trialing";
    w.subs.insert(id.clone(), sub.clone());
    if proration != 0 && !trialing {
        match behavior {
            "always_invoice" => {
                invoice(&app, &mut w, &id, proration.max(0), "subscription_update");
            }
            "create_prorations" => {
                let s = w.subs.get_mut(&id).expect("present");
                s["pending_proration"] =
                    json!(s["pending_proration"].as_i64().unwrap_or(0) + proration);
            }
            _ => {}
        }
    }
    if p.get("billing_cycle_anchor").map(String::as_str) == Some("now") {
        // Stripe's reset of the billing cycle: the period ends now and the next starts (and is invoiced).
        w.subs.get_mut(&id).expect("present")["current_period_end"] = json!(now);
        tick(&app, &mut w);
    }
    let sub = w.subs[&id].clone();
    emit(&app, &mut w, "customer.subscription.updated", &sub);
    answer(&mut w, &headers, &path, &body, StatusCode::OK, sub)
}

async fn cancel_subscription(State(app): State<App>, Path(id): Path<String>) -> Response {
    let mut w = app.world.lock().await;
    let Some(sub) = w.subs.get(&id) else {
        return missing("subscription", &id);
    };
    if sub["status"] == "canceled" {
        return invalid(&format!(
            "No such subscription: '{id}' (it was already canceled)"
        ));
    }
    set_status(&app, &mut w, &id, "canceled");
    axum::Json(w.subs[&id].clone()).into_response()
}

#[derive(serde::Deserialize)]
struct InvoiceList {
    subscription: Option<String>,
    customer: Option<String>,
    limit: Option<usize>,
}

async fn list_invoices(State(app): State<App>, Query(q): Query<InvoiceList>) -> Response {
    let w = app.world.lock().await;
    let mut data: Vec<Value> = w
        .invoices
        .values()
        .filter(|i| {
            q.subscription
                .as_deref()
                .is_none_or(|s| i["subscription"] == s)
                && q.customer.as_deref().is_none_or(|c| i["customer"] == c)
        })
        .cloned()
        .collect();
    data.reverse(); // newest first, as Stripe lists
    data.truncate(q.limit.unwrap_or(10).min(100));
    axum::Json(list(data, "/v1/invoices")).into_response()
}

async fn read_invoice(State(app): State<App>, Path(id): Path<String>) -> Response {
    let w = app.world.lock().await;
    match w.invoices.get(&id) {
        Some(i) => axum::Json(i.clone()).into_response(),
        None => missing("invoice", &id),
    }
}

async fn meter_event(State(app): State<App>, body: Bytes) -> Response {
    let mut w = app.world.lock().await;
    w.meter_posts += 1;
    let p = params(&body);
    let (Some(name), Some(customer), Some(value)) = (
        p.get("event_name"),
        p.get("payload[stripe_customer_id]"),
        p.get("payload[value]"),
    ) else {
        return invalid(
            "Missing required param: event_name, payload[stripe_customer_id] or payload[value].",
        );
    };
    if value.parse::<f64>().is_err() {
        return invalid(&format!("Invalid payload[value]: {value:?}"));
    }
    if !w.customers.contains_key(customer) {
        return invalid(&format!("No such customer: '{customer}'"));
    }
    let identifier = match p.get("identifier") {
        Some(i) => i.clone(),
        None => w.id("mev"),
    };
    // Stripe deduplicates identifiers: the event is kept once.
    if let Some(e) = w.meter_events.get(&identifier) {
        return axum::Json(e.clone()).into_response();
    }
    let now = w.now();
    let e = json!({
        "object": "billing.meter_event", "event_name": name, "identifier": identifier,
        "payload": {"stripe_customer_id": customer, "value": value},
        "timestamp": p.get("timestamp").and_then(|t| t.parse::<i64>().ok()).unwrap_or(now),
        "created": now, "livemode": false,
    });
    w.meter_events.insert(identifier, e.clone());
    axum::Json(e).into_response()
}

/// Ends the periods that are over: renewal, cancellation, dunning, expiry.
fn tick(app: &App, w: &mut World) {
    let now = w.now();
    let ids: Vec<String> = w.subs.keys().cloned().collect();
    for id in ids {
        for _ in 0..1000 {
            let s = w.subs[&id].clone();
            let status = s["status"].as_str().unwrap_or_default().to_string();
            if status == "incomplete"
                && s["created"].as_i64().unwrap_or(now) + INCOMPLETE_EXPIRES <= now
            {
                set_status(app, w, &id, "incomplete_expired");
            }
            let end = s["current_period_end"].as_i64().unwrap_or(i64::MAX);
            if end > now
                || matches!(
                    status.as_str(),
                    "canceled" | "incomplete" | "incomplete_expired"
                )
            {
                break;
            }
            if s["cancel_at_period_end"] == true {
                set_status(app, w, &id, "canceled");
                break;
            }
            let usage = metered(w, &s, s["current_period_start"].as_i64().unwrap_or(0), end);
            let pending = s["pending_proration"].as_i64().unwrap_or(0);
            {
                let sub = w.subs.get_mut(&id).expect("present");
                sub["current_period_start"] = json!(end);
                sub["current_period_end"] = json!(end + app.cfg.stripe_period_secs);
                sub["pending_proration"] = json!(0);
            }
            let amount = (licensed(&s) + pending + usage).max(0);
            let paid = invoice(app, w, &id, amount, "subscription_cycle");
            set_status(app, w, &id, if paid { "active" } else { "past_due" });
        }
    }
}

#[derive(serde::Deserialize)]
struct Advance {
    seconds: i64,
}

async fn advance(State(app): State<App>, axum::Json(a): axum::Json<Advance>) -> Response {
    let mut w = app.world.lock().await;
    w.offset += a.seconds.max(0);
    tick(&app, &mut w);
    axum::Json(json!({"now": w.now()})).into_response()
}

#[derive(serde::Deserialize)]
struct Payments {
    fail: bool,
}

async fn payments(
    State(app): State<App>,
    Path(id): Path<String>,
    axum::Json(p): axum::Json<Payments>,
) -> Response {
    let mut w = app.world.lock().await;
    if !w.customers.contains_key(&id) {
        return missing("customer", &id);
    }
    if p.fail {
        w.failing.insert(id);
        return StatusCode::NO_CONTENT.into_response();
    }
    w.failing.remove(&id);
    // Stripe's retry of what is open: now paid.
    let open: Vec<String> = w
        .invoices
        .values()
        .filter(|i| i["customer"] == id.as_str() && i["status"] == "open")
        .filter_map(|i| i["id"].as_str().map(str::to_string))
        .collect();
    for inv in open {
        let Some(i) = w.invoices.get_mut(&inv) else {
            continue;
        };
        i["status"] = json!("paid");
        i["paid"] = json!(true);
        i["amount_paid"] = i["amount_due"].clone();
        let i = i.clone();
        emit(&app, &mut w, "invoice.paid", &i);
        if let Some(sub) = i["subscription"].as_str() {
            let live = w.subs.get(sub).is_some_and(|s| {
                matches!(
                    s["status"].as_str(),
                    Some("past_due" | "incomplete" | "unpaid")
                )
            });
            if live {
                set_status(&app, &mut w, sub, "active");
            }
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

#[derive(serde::Deserialize)]
struct Mode {
    #[serde(default)]
    hold: bool,
    #[serde(default)]
    duplicate: bool,
}

async fn webhook_mode(State(app): State<App>, axum::Json(m): axum::Json<Mode>) -> Response {
    let mut w = app.world.lock().await;
    w.hold = m.hold;
    w.duplicate = m.duplicate;
    StatusCode::NO_CONTENT.into_response()
}

#[derive(serde::Deserialize)]
struct Flush {
    #[serde(default)]
    reverse: bool,
}

async fn flush(State(app): State<App>, Query(f): Query<Flush>) -> Response {
    let mut w = app.world.lock().await;
    let mut held = std::mem::take(&mut w.held);
    if f.reverse {
        held.reverse();
    }
    for e in &held {
        deliver(&app, e, w.duplicate);
    }
    axum::Json(json!({"delivered": held.len()})).into_response()
}

async fn events(State(app): State<App>) -> Response {
    let w = app.world.lock().await;
    axum::Json(w.events.clone()).into_response()
}

async fn meter_events(State(app): State<App>) -> Response {
    let w = app.world.lock().await;
    axum::Json(w.meter_events.values().cloned().collect::<Vec<_>>()).into_response()
}

async fn state(State(app): State<App>) -> Response {
    let w = app.world.lock().await;
    axum::Json(json!({
        "now": w.now(),
        "meterEventPosts": w.meter_posts,
        "customers": w.customers.values().collect::<Vec<_>>(),
        "subscriptions": w.subs.values().collect::<Vec<_>>(),
        "invoices": w.invoices.values().collect::<Vec<_>>(),
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header as Stripe documents it, checked against an HMAC computed outside Rust (Python's
    /// `hmac.new(b"whsec_test", b'1700000000.{"a":1}', hashlib.sha256).hexdigest()`).
    #[test]
    fn events_are_signed_as_stripe_documents() {
        assert_eq!(
            signature_header("whsec_test", 1_700_000_000, r#"{"a":1}"#),
            "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
    }

    #[test]
    fn search_queries_name_their_uid() {
        assert_eq!(
            uid_in("metadata['quartermaster_uid']:'abc-1'").as_deref(),
            Some("abc-1")
        );
        assert_eq!(uid_in("email:'x'"), None);
    }

    #[test]
    fn a_request_hash_ignores_parameter_order_only() {
        let a = Bytes::from_static(b"a=1&b=2");
        let b = Bytes::from_static(b"b=2&a=1");
        let c = Bytes::from_static(b"a=1&b=3");
        assert_eq!(request_hash("/x", &a), request_hash("/x", &b));
        assert_ne!(request_hash("/x", &a), request_hash("/x", &c));
        assert_ne!(request_hash("/x", &a), request_hash("/y", &a));
    }
}

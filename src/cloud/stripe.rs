//! The Stripe API client: customers and subscriptions, form-encoded, with a pinned API version and an
//! idempotency key on every POST.
//!
//! - **Encoding**: parameters are built as JSON and flattened to Stripe's form keys (`metadata[k]`,
//!   `items[0][price]`), see [`form`]. A small function over serde_json rather than a crate: the rule is
//!   short and this keeps the exact keys visible in tests.
//! - **Idempotency**: each POST carries `Idempotency-Key: qm-<object UID>-<operation>-<hash of the
//!   parameters>`: the same request retried reuses its key (Stripe replays the first answer), a changed
//!   parameter gets a new key (instead of a request Stripe refuses for ever). Stripe prunes keys after 24
//!   hours, so creates are preceded by a search for what an earlier attempt made: customers and
//!   subscriptions carry the object's UID in `metadata[quartermaster_uid]`.
//! - **Rate**: Stripe's 25 requests a second per endpoint is held client-side by the account's limit
//!   (see [`super::documented_rate_limit`]); 429 goes through the shared retry policy.
//!
//! A create's parameters never change for an object (the customer: its UID and name; details such as
//! the e-mail are set by an update after), so its key is the same on every retry; updates carry the
//! object's generation in their key, so a change made, undone and made again is sent each time.

use reqwest::Method;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::CloudError;
use crate::http::{HttpClient, HttpError};

/// The real API.
pub const DEFAULT_ENDPOINT: &str = "https://api.stripe.com";
/// The API version every request pins (`Stripe-Version`): the version of the OpenAPI document the client
/// is tested against.
pub const API_VERSION: &str = "2023-08-16";
/// Stripe's default limit: requests a second per endpoint.
pub const REQUESTS_PER_SECOND: u32 = 25;
/// The metadata key that names the Quartermaster object a Stripe object belongs to.
pub const UID_KEY: &str = "quartermaster_uid";
const VENDOR: &str = "stripe";

/// JSON parameters as Stripe's form pairs: objects as `key[sub]`, arrays as `key[i]`, scalars as text
/// (`null` is left out).
pub fn form(params: &serde_json::Value) -> Vec<(String, String)> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}[{k}]")
                    };
                    walk(&key, v, out);
                }
            }
            serde_json::Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    walk(&format!("{prefix}[{i}]"), v, out);
                }
            }
            serde_json::Value::Null => {}
            serde_json::Value::String(s) => out.push((prefix.to_string(), s.clone())),
            other => out.push((prefix.to_string(), other.to_string())),
        }
    }
    let mut out = Vec::new();
    walk("", params, &mut out);
    out
}

/// The idempotency key of operation `op` of object `uid` with these parameters.
pub fn idempotency_key(uid: &str, op: &str, params: &serde_json::Value) -> String {
    // serde_json keeps object keys sorted (no `preserve_order`), so equal parameters hash equally.
    let digest = Sha256::digest(params.to_string().as_bytes());
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("qm-{uid}-{op}-{hex}")
}

/// A Stripe customer.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Customer {
    /// `cus_…`.
    pub id: String,
    /// Its e-mail, when set.
    #[serde(default)]
    pub email: Option<String>,
    /// Its name, when set.
    #[serde(default)]
    pub name: Option<String>,
    /// Its metadata.
    #[serde(default)]
    pub metadata: std::collections::BTreeMap<String, String>,
    /// When it was created (Unix seconds).
    #[serde(default)]
    pub created: Option<i64>,
}

impl Customer {
    /// The object that owns it ([`UID_KEY`] in its metadata), if any.
    pub fn owner(&self) -> Option<&str> {
        self.metadata
            .get(UID_KEY)
            .map(String::as_str)
            .filter(|o| !o.is_empty())
    }
}

/// A Stripe invoice.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Invoice {
    /// `in_…`.
    pub id: String,
    /// draft, open, paid, uncollectible, void.
    #[serde(default)]
    pub status: Option<String>,
    /// Amount due, in the currency's minor unit.
    #[serde(default)]
    pub amount_due: i64,
    /// Amount paid, in the currency's minor unit.
    #[serde(default)]
    pub amount_paid: i64,
    /// Lower-case ISO 4217.
    #[serde(default)]
    pub currency: String,
    /// Stripe's hosted page.
    #[serde(default)]
    pub hosted_invoice_url: Option<String>,
    /// Unix seconds.
    #[serde(default)]
    pub created: i64,
    /// The subscription it bills, if any.
    #[serde(default)]
    pub subscription: Option<String>,
}

/// How a price or quantity change is prorated (Stripe's `proration_behavior`).
pub const PRORATIONS: [&str; 3] = ["create_prorations", "always_invoice", "none"];

/// One item of a subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// `si_…`.
    pub id: String,
    /// The price (`price_…`).
    pub price: String,
    /// Its quantity.
    pub quantity: Option<i64>,
}

/// A Stripe subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// `sub_…`.
    pub id: String,
    /// trialing, active, incomplete, incomplete_expired, past_due, canceled, unpaid, paused.
    pub status: String,
    /// The customer.
    pub customer: String,
    /// Current period, unix seconds.
    pub current_period: (i64, i64),
    /// Cancels at the period's end.
    pub cancel_at_period_end: bool,
    /// The latest invoice's ID.
    pub latest_invoice: Option<String>,
    /// Its items.
    pub items: Vec<Item>,
    /// The object that owns it ([`UID_KEY`] in its metadata), if any.
    pub owner: Option<String>,
    /// When it ended (unix seconds), once canceled.
    pub ended_at: Option<i64>,
}

#[derive(Deserialize)]
struct SubscriptionDto {
    id: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    customer: serde_json::Value,
    #[serde(default)]
    current_period_start: i64,
    #[serde(default)]
    current_period_end: i64,
    #[serde(default)]
    cancel_at_period_end: bool,
    #[serde(default)]
    latest_invoice: serde_json::Value,
    #[serde(default)]
    items: ListDto<ItemDto>,
    #[serde(default)]
    metadata: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    ended_at: Option<i64>,
}

#[derive(Deserialize)]
struct ItemDto {
    id: String,
    #[serde(default)]
    price: serde_json::Value,
    #[serde(default)]
    quantity: Option<i64>,
}

#[derive(Deserialize)]
struct ListDto<T> {
    #[serde(default = "Vec::new")]
    data: Vec<T>,
    #[serde(default)]
    has_more: bool,
}

impl<T> Default for ListDto<T> {
    fn default() -> Self {
        Self {
            data: Vec::new(),
            has_more: false,
        }
    }
}

/// An ID, whether Stripe sent the ID or the expanded object.
fn id_of(v: &serde_json::Value) -> Option<String> {
    v.as_str()
        .map(str::to_string)
        .or_else(|| v["id"].as_str().map(str::to_string))
}

impl From<SubscriptionDto> for Subscription {
    fn from(d: SubscriptionDto) -> Self {
        Subscription {
            id: d.id,
            status: d.status,
            customer: id_of(&d.customer).unwrap_or_default(),
            current_period: (d.current_period_start, d.current_period_end),
            cancel_at_period_end: d.cancel_at_period_end,
            latest_invoice: id_of(&d.latest_invoice),
            items: d
                .items
                .data
                .into_iter()
                .map(|i| Item {
                    id: i.id,
                    price: id_of(&i.price).unwrap_or_default(),
                    quantity: i.quantity,
                })
                .collect(),
            owner: d.metadata.get(UID_KEY).cloned(),
            ended_at: d.ended_at,
        }
    }
}

/// A Stripe account.
pub struct Stripe {
    http: HttpClient,
    base: String,
    key: String,
}

impl std::fmt::Debug for Stripe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stripe")
            .field("base", &self.base)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Stripe {
    /// A client of the account whose secret key is `key` at `endpoint` (default: the real API).
    pub fn new(http: HttpClient, endpoint: Option<&str>, key: &str) -> Self {
        Self {
            http,
            base: endpoint
                .unwrap_or(DEFAULT_ENDPOINT)
                .trim_end_matches('/')
                .to_string(),
            key: key.trim().to_string(),
        }
    }

    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, &format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .header("Stripe-Version", API_VERSION)
    }

    async fn decode<T: serde::de::DeserializeOwned>(
        resp: reqwest::Response,
    ) -> Result<T, CloudError> {
        let bytes = resp.bytes().await.map_err(|e| HttpError::Unreachable {
            vendor: VENDOR,
            message: e.without_url().to_string(),
        })?;
        Ok(crate::http::decode_json(VENDOR, &bytes)?)
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, CloudError> {
        Self::decode(self.http.send(self.req(Method::GET, path), true).await?).await
    }

    /// A POST of `params` for object `uid`'s operation `op`, with its idempotency key (so it may be
    /// retried: Stripe replays the first answer).
    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        uid: &str,
        op: &str,
        params: &serde_json::Value,
    ) -> Result<T, CloudError> {
        let req = self
            .req(Method::POST, path)
            .header("Idempotency-Key", idempotency_key(uid, op, params))
            .form(&form(params));
        Self::decode(self.http.send(req, true).await?).await
    }

    /// One cheap authenticated call.
    pub async fn verify(&self) -> Result<(), CloudError> {
        let _: serde_json::Value = self.get("/v1/customers?limit=1").await?;
        Ok(())
    }

    /// The customer object `uid` made, if any (by its metadata; never by e-mail).
    pub async fn find_customer(&self, uid: &str) -> Result<Option<Customer>, CloudError> {
        let q = search_query(uid)?;
        let list: ListDto<Customer> = self.get(&format!("/v1/customers/search?query={q}")).await?;
        Ok(list.data.into_iter().next())
    }

    /// Creates the customer of object `uid`, named `name` (the object's `namespace/name`): parameters that
    /// never change for the object, so every retry carries the same idempotency key.
    pub async fn create_customer(&self, uid: &str, name: &str) -> Result<Customer, CloudError> {
        let params = serde_json::json!({ "name": name, "metadata": { UID_KEY: uid } });
        self.post("/v1/customers", uid, "customer", &params).await
    }

    /// A customer by ID; `None` when Stripe does not know it.
    pub async fn customer(&self, id: &str) -> Result<Option<Customer>, CloudError> {
        if !safe_id(id, "cus_") {
            return Ok(None);
        }
        not_found_is_none(self.get(&format!("/v1/customers/{id}")).await)
    }

    /// Deletes a customer (one the controller created that never held a subscription); a customer Stripe
    /// does not know is already gone.
    pub async fn delete_customer(&self, id: &str) -> Result<(), CloudError> {
        if !safe_id(id, "cus_") {
            return Ok(());
        }
        let req = self.req(Method::DELETE, &format!("/v1/customers/{id}"));
        not_found_is_none(self.http.send(req, true).await.map_err(CloudError::from))?;
        Ok(())
    }

    /// Sets a customer's e-mail and name and tags it as object `uid`'s (at the object's `generation`).
    pub async fn update_customer(
        &self,
        uid: &str,
        generation: i64,
        id: &str,
        email: Option<&str>,
        name: Option<&str>,
    ) -> Result<Customer, CloudError> {
        let params =
            serde_json::json!({ "email": email, "name": name, "metadata": { UID_KEY: uid } });
        self.post(
            &format!("/v1/customers/{id}"),
            uid,
            &format!("customer-g{generation}"),
            &params,
        )
        .await
    }

    /// The subscription object `uid` made, if any (by its metadata).
    pub async fn find_subscription(&self, uid: &str) -> Result<Option<Subscription>, CloudError> {
        let q = search_query(uid)?;
        let list: ListDto<SubscriptionDto> = self
            .get(&format!("/v1/subscriptions/search?query={q}"))
            .await?;
        Ok(list.data.into_iter().next().map(Subscription::from))
    }

    /// A subscription by ID; `None` when Stripe does not know it.
    pub async fn subscription(&self, id: &str) -> Result<Option<Subscription>, CloudError> {
        if !safe_id(id, "sub_") {
            return Ok(None);
        }
        let d: Option<SubscriptionDto> =
            not_found_is_none(self.get(&format!("/v1/subscriptions/{id}")).await)?;
        Ok(d.map(Subscription::from))
    }

    /// Every subscription of a customer, whatever its status (a list, which unlike search is current
    /// the moment a create returns).
    pub async fn subscriptions_of(&self, customer: &str) -> Result<Vec<Subscription>, CloudError> {
        if !safe_id(customer, "cus_") {
            return Ok(Vec::new());
        }
        let list: ListDto<SubscriptionDto> = self
            .get(&format!(
                "/v1/subscriptions?customer={customer}&status=all&limit=100"
            ))
            .await?;
        Ok(list.data.into_iter().map(Subscription::from).collect())
    }

    /// Creates object `uid`'s subscription of `customer` to `items` (price, quantity; metered prices
    /// have none).
    pub async fn create_subscription(
        &self,
        uid: &str,
        customer: &str,
        items: &[(String, Option<u32>)],
        trial_days: Option<u32>,
    ) -> Result<Subscription, CloudError> {
        let items: Vec<serde_json::Value> = items
            .iter()
            .map(|(price, quantity)| serde_json::json!({ "price": price, "quantity": quantity }))
            .collect();
        let params = serde_json::json!({
            "customer": customer,
            "items": items,
            "trial_period_days": trial_days,
            "metadata": { UID_KEY: uid },
        });
        let d: SubscriptionDto = self
            .post("/v1/subscriptions", uid, "subscription", &params)
            .await?;
        Ok(d.into())
    }

    /// Sets or clears `cancel_at_period_end` (at the object's `generation`).
    pub async fn cancel_at_period_end(
        &self,
        uid: &str,
        generation: i64,
        id: &str,
        at_end: bool,
    ) -> Result<Subscription, CloudError> {
        let params = serde_json::json!({ "cancel_at_period_end": at_end });
        let op = format!("cancel-at-period-end-g{generation}");
        let d: SubscriptionDto = self
            .post(&format!("/v1/subscriptions/{id}"), uid, &op, &params)
            .await?;
        Ok(d.into())
    }

    /// Moves a subscription's item to `price` and `quantity`, prorated as `proration` says (one of
    /// [`PRORATIONS`]), at the object's `generation`.
    #[allow(clippy::too_many_arguments)]
    pub async fn update_item(
        &self,
        uid: &str,
        generation: i64,
        id: &str,
        item: &str,
        price: &str,
        quantity: u32,
        proration: &str,
    ) -> Result<Subscription, CloudError> {
        let params = serde_json::json!({
            "items": [{ "id": item, "price": price, "quantity": quantity }],
            "proration_behavior": proration,
        });
        let op = format!("update-g{generation}");
        let d: SubscriptionDto = self
            .post(&format!("/v1/subscriptions/{id}"), uid, &op, &params)
            .await?;
        Ok(d.into())
    }

    /// Adds items of prices `add` and removes items `remove` (metered prices: no quantity, no
    /// proration), at the object's `generation`.
    pub async fn change_items(
        &self,
        uid: &str,
        generation: i64,
        id: &str,
        add: &[String],
        remove: &[String],
    ) -> Result<Subscription, CloudError> {
        let items: Vec<serde_json::Value> = add
            .iter()
            .map(|p| serde_json::json!({ "price": p }))
            .chain(
                remove
                    .iter()
                    .map(|i| serde_json::json!({ "id": i, "deleted": true })),
            )
            .collect();
        let params = serde_json::json!({ "items": items, "proration_behavior": "none" });
        let op = format!("items-g{generation}");
        let d: SubscriptionDto = self
            .post(&format!("/v1/subscriptions/{id}"), uid, &op, &params)
            .await?;
        Ok(d.into())
    }

    /// Cancels a subscription now (`DELETE`; repeating it is harmless: the caller reads it first).
    pub async fn cancel_now(&self, id: &str) -> Result<Subscription, CloudError> {
        if !safe_id(id, "sub_") {
            return Err(CloudError::Unsupported(format!(
                "{id:?} is not a subscription ID"
            )));
        }
        let resp = self
            .http
            .send(
                self.req(Method::DELETE, &format!("/v1/subscriptions/{id}")),
                true,
            )
            .await?;
        let d: SubscriptionDto = Self::decode(resp).await?;
        Ok(d.into())
    }

    /// Every subscription of the account, whatever its status, 100 a page (for one listing that serves
    /// every Subscription of the account at a resync).
    pub async fn all_subscriptions(&self) -> Result<Vec<Subscription>, CloudError> {
        let mut out: Vec<Subscription> = Vec::new();
        loop {
            let after = out
                .last()
                .map(|s| format!("&starting_after={}", s.id))
                .unwrap_or_default();
            let page: ListDto<SubscriptionDto> = self
                .get(&format!("/v1/subscriptions?status=all&limit=100{after}"))
                .await?;
            let more = page.has_more && !page.data.is_empty();
            out.extend(page.data.into_iter().map(Subscription::from));
            if !more || out.last().is_some_and(|s| !safe_id(&s.id, "sub_")) {
                return Ok(out);
            }
        }
    }

    /// The latest `limit` invoices of a subscription, newest first.
    pub async fn invoices(
        &self,
        subscription: &str,
        limit: u32,
    ) -> Result<Vec<Invoice>, CloudError> {
        if !safe_id(subscription, "sub_") {
            return Ok(Vec::new());
        }
        let list: ListDto<Invoice> = self
            .get(&format!(
                "/v1/invoices?subscription={subscription}&limit={}",
                limit.clamp(1, 100)
            ))
            .await?;
        Ok(list.data)
    }

    /// An invoice by ID; `None` when Stripe does not know it.
    pub async fn invoice(&self, id: &str) -> Result<Option<Invoice>, CloudError> {
        if !safe_id(id, "in_") {
            return Ok(None);
        }
        not_found_is_none(self.get(&format!("/v1/invoices/{id}")).await)
    }

    /// Reports `value` units of meter event `event_name` for `customer` at `timestamp`, under
    /// `identifier` (Stripe keeps one event per identifier for at least 24 hours; the caller keeps the
    /// long-term record). The request's idempotency key is the identifier's.
    pub async fn meter_event(
        &self,
        event_name: &str,
        customer: &str,
        value: &str,
        identifier: &str,
        timestamp: i64,
    ) -> Result<(), CloudError> {
        let params = serde_json::json!({
            "event_name": event_name, "identifier": identifier, "timestamp": timestamp,
            "payload": { "stripe_customer_id": customer, "value": value },
        });
        let req = self
            .req(Method::POST, "/v1/billing/meter_events")
            .header("Idempotency-Key", format!("qm-meter-{identifier}"))
            .form(&form(&params));
        let _: serde_json::Value = Self::decode(self.http.send(req, true).await?).await?;
        Ok(())
    }
}

/// Whether `id` is a Stripe ID of this prefix (and nothing that could change the path it goes in).
fn safe_id(id: &str, prefix: &str) -> bool {
    id.starts_with(prefix) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A read's answer, `None` for a 404.
fn not_found_is_none<T>(r: Result<T, CloudError>) -> Result<Option<T>, CloudError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(CloudError::Http(e)) if e.status() == Some(404) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The search query that finds an object's Stripe objects by its UID (URL-encoded); the UID must be a
/// Kubernetes UID (hex and dashes), so nothing can be injected into the query.
fn search_query(uid: &str) -> Result<String, CloudError> {
    if uid.is_empty() || !uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Err(CloudError::Unsupported(format!(
            "{uid:?} is not an object UID"
        )));
    }
    Ok(format!("metadata%5B%27{UID_KEY}%27%5D%3A%27{uid}%27"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_parameters_become_stripes_form_keys() {
        let p = serde_json::json!({"customer": "cus_1", "items": [{"price": "price_1", "quantity": 2}],
            "metadata": {"quartermaster_uid": "u"}, "trial_period_days": null});
        let f = form(&p);
        assert!(f.contains(&("items[0][price]".into(), "price_1".into())));
        assert!(f.contains(&("items[0][quantity]".into(), "2".into())));
        assert!(f.contains(&("metadata[quartermaster_uid]".into(), "u".into())));
        assert!(!f.iter().any(|(k, _)| k == "trial_period_days"));
    }

    #[test]
    fn a_changed_parameter_changes_the_key_and_the_same_one_does_not() {
        let a = serde_json::json!({"items": [{"price": "p1"}], "customer": "c"});
        let b = serde_json::json!({"customer": "c", "items": [{"price": "p1"}]});
        let c = serde_json::json!({"customer": "c", "items": [{"price": "p2"}]});
        assert_eq!(
            idempotency_key("u", "sub", &a),
            idempotency_key("u", "sub", &b)
        );
        assert_ne!(
            idempotency_key("u", "sub", &a),
            idempotency_key("u", "sub", &c)
        );
        assert!(idempotency_key("u", "sub", &a).len() <= 255);
    }

    #[test]
    fn only_uids_reach_a_search_query() {
        assert!(search_query("0f6b3a55-1c53-4bd1-9c39-d2e8f8d1b1aa").is_ok());
        assert!(search_query("x' OR email:'a").is_err());
    }
}

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
//! Not yet used by a reconciler: the Subscription kind is not implemented (see the README).

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
}

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
}

impl<T> Default for ListDto<T> {
    fn default() -> Self {
        Self { data: Vec::new() }
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
        serde_json::from_slice(&bytes).map_err(|e| {
            CloudError::from(HttpError::Decode {
                vendor: VENDOR,
                message: e.to_string(),
            })
        })
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

    /// Creates the customer of object `uid`.
    pub async fn create_customer(
        &self,
        uid: &str,
        email: Option<&str>,
        name: &str,
    ) -> Result<Customer, CloudError> {
        let params = serde_json::json!({
            "email": email, "name": name, "metadata": { UID_KEY: uid },
        });
        self.post("/v1/customers", uid, "customer", &params).await
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
        if !id.starts_with("sub_") || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Ok(None);
        }
        match self
            .get::<SubscriptionDto>(&format!("/v1/subscriptions/{id}"))
            .await
        {
            Ok(d) => Ok(Some(d.into())),
            Err(CloudError::Http(e)) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates object `uid`'s subscription of `customer` to `price`.
    pub async fn create_subscription(
        &self,
        uid: &str,
        customer: &str,
        price: &str,
        quantity: u32,
        trial_days: Option<u32>,
    ) -> Result<Subscription, CloudError> {
        let params = serde_json::json!({
            "customer": customer,
            "items": [{ "price": price, "quantity": quantity }],
            "trial_period_days": trial_days,
            "metadata": { UID_KEY: uid },
        });
        let d: SubscriptionDto = self
            .post("/v1/subscriptions", uid, "subscription", &params)
            .await?;
        Ok(d.into())
    }

    /// Cancels a subscription now (`DELETE`); at the period's end it is `cancel_at_period_end` instead.
    pub async fn cancel_at_period_end(
        &self,
        uid: &str,
        id: &str,
        at_end: bool,
    ) -> Result<Subscription, CloudError> {
        let params = serde_json::json!({ "cancel_at_period_end": at_end });
        let d: SubscriptionDto = self
            .post(
                &format!("/v1/subscriptions/{id}"),
                uid,
                "cancel-at-period-end",
                &params,
            )
            .await?;
        Ok(d.into())
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

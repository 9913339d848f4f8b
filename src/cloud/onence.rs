//! The 1NCE Management API client: SIMs (list, read, change), quotas, daily usage, top-ups and SMS.
//!
//! - **Credentials**: the Secret key holds `{"clientId": …, "clientSecret": …}` (the API user's client ID,
//!   prefixed with the account number, and its secret; a portal login's e-mail and password work too).
//!   `POST /oauth/token` with HTTP Basic auth issues a new token on every request, living 3,600 s: one
//!   token per account is cached ([`super::oauth`]), renewed before it expires, and refreshed once
//!   however many calls see a 401 at the same time.
//! - **Rate**: 1NCE allows 10 requests a second on `/sims` per customer; the account's HTTP client holds
//!   that client-side (shared by every SimCard of the account) and retries 429 after `Retry-After`.
//! - **Asynchronous changes**: a change (`PUT /v2/sims/{iccid}`) answered 200 is queued, not applied; a
//!   409 means a change is already pending ([`Change::Pending`]: wait and observe, never stall); an
//!   expired SIM answers 422 (a refusal the user must act on).
//! - **Exact numbers**: volumes arrive in MB as decimal strings (usage) or JSON numbers (quotas); they are
//!   read as decimals from their text and turned into bytes (1 MB = 1,000,000 bytes) or message counts.
//!   Never floating point.
//!
//! The DTOs below are private: callers see [`Sim`], [`Quota`], [`DailyUsage`].

use std::str::FromStr;
use std::time::Duration;

use reqwest::Method;
use rust_decimal::Decimal;
use serde::Deserialize;

use super::CloudError;
use super::oauth::{Fetched, Issued, TokenCache};
use crate::http::{HttpClient, HttpError};

/// The real Management API.
pub const DEFAULT_ENDPOINT: &str = "https://api.1nce.com/management-api";
/// 1NCE's documented limit on `/sims`: requests per second per customer.
pub const REQUESTS_PER_SECOND: u32 = 10;
/// SIMs per list page (1NCE's maximum).
pub const PAGE_SIZE: usize = 100;
const VENDOR: &str = "1nce";

/// Where the three parts of the API live. In production all three are `spec.endpoint` (or
/// [`DEFAULT_ENDPOINT`]); tests point each at its own mock.
#[derive(Clone, Debug)]
pub struct Endpoints {
    /// `POST /oauth/token`.
    pub auth: String,
    /// `/v1/sims…` (reads, quotas, usage, top-ups, SMS).
    pub v1: String,
    /// `/v2/sims…` (changes).
    pub v2: String,
}

impl Endpoints {
    /// All three at `base` (default: the real API).
    pub fn at(base: Option<&str>) -> Self {
        let base = base.unwrap_or(DEFAULT_ENDPOINT).trim_end_matches('/');
        Self {
            auth: base.into(),
            v1: base.into(),
            v2: base.into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Credentials {
    client_id: String,
    client_secret: String,
}

fn parse_credentials(raw: &str) -> Result<Credentials, String> {
    let c: Credentials = serde_json::from_str(raw.trim()).map_err(|_| {
        "the 1NCE credentials must be a JSON document {\"clientId\": …, \"clientSecret\": …}"
            .to_string()
    })?;
    if c.client_id.is_empty() || c.client_secret.is_empty() {
        return Err("the 1NCE credentials need a non-empty clientId and clientSecret".into());
    }
    Ok(c)
}

/// A SIM's state at 1NCE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sim {
    /// ICCID as 1NCE lists it (19 digits, without the Luhn digit).
    pub iccid: String,
    /// ICCID with its Luhn check digit (20 digits), when given.
    pub iccid_with_luhn: Option<String>,
    /// First IMSI.
    pub imsi: Option<String>,
    /// MSISDN.
    pub msisdn: Option<String>,
    /// The device's IMEI, when known.
    pub imei: Option<String>,
    /// Locked to that IMEI.
    pub imei_lock: bool,
    /// `Enabled`, `Disabled`, or another state 1NCE reports.
    pub status: String,
    /// The SIM's IP address.
    pub ip_address: Option<String>,
    /// The customer's label.
    pub label: Option<String>,
    /// The data quota's total, bytes (`current_quota`), when listed.
    pub data_quota_total: Option<i64>,
    /// The SMS quota's total (`current_quota_SMS`), when listed.
    pub sms_quota_total: Option<i64>,
    /// The data quota's level: 0 more than 20 % left, 1 less, 2 none (`quota_status.id`).
    pub data_quota_level: Option<i64>,
    /// The SMS quota's level, as for data.
    pub sms_quota_level: Option<i64>,
}

impl Sim {
    /// Whether `iccid` (19 or 20 digits) names this SIM.
    pub fn is(&self, iccid: &str) -> bool {
        self.iccid == iccid || self.iccid_with_luhn.as_deref() == Some(iccid)
    }
}

/// A change to a SIM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimChange {
    /// Enable (true) or disable.
    pub enabled: bool,
    /// New label, if it changes.
    pub label: Option<String>,
    /// New IMEI lock, if it changes.
    pub imei_lock: Option<bool>,
}

/// What 1NCE said to a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Queued: it will show once applied.
    Queued,
    /// Another change is still pending (409): observe again later.
    Pending,
}

/// A data or SMS quota.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Remaining (bytes for data, messages for SMS).
    pub remaining: i64,
    /// Total over the SIM's lifetime (same unit).
    pub total: i64,
    /// The last top-up's volume (same unit), when known.
    pub last_added: Option<i64>,
    /// Expiry (RFC 3339), when known.
    pub expiry: Option<String>,
    /// When the quota last changed (a top-up, expiry), when known: identifies the quota.
    pub last_change: Option<String>,
    /// The threshold 1NCE warns at, in percent, when known.
    pub threshold_percent: Option<i64>,
}

/// One day of a SIM's usage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DailyUsage {
    /// The day (`YYYY-MM-DD`).
    pub date: String,
    /// Data used, bytes.
    pub data_bytes: i64,
    /// What 1NCE reports as the data's cost.
    pub data_cost: Decimal,
    /// SMS sent and received.
    pub sms: i64,
    /// What 1NCE reports as the SMS's cost.
    pub sms_cost: Decimal,
    /// Currency of the costs (ISO 4217), when given.
    pub currency: Option<String>,
}

/// `text` (a decimal, as 1NCE writes volumes) times `unit`, exactly; an error when it is not a decimal
/// or not a whole number of units.
pub fn scaled(text: &str, unit: i64) -> Result<i64, String> {
    let d = Decimal::from_str(text.trim()).map_err(|_| format!("{text:?} is not a decimal"))?;
    let v = d * Decimal::from(unit);
    if !v.fract().is_zero() {
        return Err(format!(
            "{text:?} is not a whole number of units of 1/{unit}"
        ));
    }
    i64::try_from(v).map_err(|_| format!("{text:?} is out of range"))
}

/// Megabytes (decimal text) as bytes.
pub fn mb_to_bytes(text: &str) -> Result<i64, String> {
    scaled(text, 1_000_000)
}

/// A JSON number or string as its decimal text (a number's shortest round-trip form, which is the text
/// 1NCE sent for any figure with up to 15 significant digits).
fn number_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

#[derive(Deserialize)]
struct SimDto {
    iccid: String,
    #[serde(default)]
    iccid_with_luhn: Option<String>,
    #[serde(default)]
    imsi: Option<String>,
    #[serde(default)]
    msisdn: Option<String>,
    #[serde(default)]
    imei: Option<serde_json::Value>,
    #[serde(default)]
    imei_lock: Option<bool>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    ip_address: Option<String>,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    current_quota: serde_json::Value,
    #[serde(default, rename = "current_quota_SMS")]
    current_quota_sms: serde_json::Value,
    #[serde(default)]
    quota_status: Option<LevelDto>,
    #[serde(default, rename = "quota_status_SMS")]
    quota_status_sms: Option<LevelDto>,
}

#[derive(Deserialize)]
struct LevelDto {
    #[serde(default)]
    id: serde_json::Value,
}

fn level(l: Option<&LevelDto>) -> Option<i64> {
    let t = number_text(&l?.id)?;
    Decimal::from_str(&t)
        .ok()
        .and_then(|d| i64::try_from(d.trunc()).ok())
}

impl From<SimDto> for Sim {
    fn from(d: SimDto) -> Self {
        Sim {
            iccid: d.iccid,
            iccid_with_luhn: d.iccid_with_luhn,
            imsi: d.imsi,
            msisdn: d.msisdn,
            // The spec's example has a numeric IMEI: take either.
            imei: d.imei.as_ref().and_then(number_text),
            imei_lock: d.imei_lock.unwrap_or(false),
            status: d.status.unwrap_or_default(),
            ip_address: d.ip_address,
            label: d.label,
            data_quota_total: figure(&d.current_quota, 1_000_000, "").ok().flatten(),
            sms_quota_total: figure(&d.current_quota_sms, 1, "").ok().flatten(),
            data_quota_level: level(d.quota_status.as_ref()),
            sms_quota_level: level(d.quota_status_sms.as_ref()),
        }
    }
}

#[derive(Deserialize)]
struct QuotaDto {
    #[serde(default)]
    volume: serde_json::Value,
    #[serde(default)]
    total_volume: serde_json::Value,
    #[serde(default)]
    last_volume_added: serde_json::Value,
    #[serde(default)]
    expiry_date: Option<String>,
    #[serde(default)]
    last_status_change_date: Option<String>,
    #[serde(default)]
    threshold_percentage: serde_json::Value,
}

#[derive(Deserialize)]
struct UsageDto {
    #[serde(default)]
    stats: Vec<DayDto>,
}

#[derive(Deserialize)]
struct DayDto {
    date: String,
    #[serde(default)]
    data: Option<VolumeDto>,
    #[serde(default)]
    sms: Option<VolumeDto>,
}

#[derive(Deserialize)]
struct VolumeDto {
    #[serde(default)]
    volume: Option<serde_json::Value>,
    #[serde(default)]
    cost: Option<serde_json::Value>,
    #[serde(default)]
    currency: Option<CurrencyDto>,
}

#[derive(Deserialize)]
struct CurrencyDto {
    #[serde(default)]
    code: Option<String>,
}

fn decode(message: String) -> CloudError {
    CloudError::Http(HttpError::Decode {
        vendor: VENDOR,
        message,
    })
}

/// A figure of a quota or usage record, scaled to whole units (bytes for data). A message count is
/// whole by nature: a fraction there (which 1NCE's own example shows for an SMS quota) is dropped.
fn figure(v: &serde_json::Value, unit: i64, what: &str) -> Result<Option<i64>, CloudError> {
    let Some(t) = number_text(v) else {
        return Ok(None);
    };
    let text = if unit == 1 {
        Decimal::from_str(t.trim())
            .map(|d| d.trunc().to_string())
            .unwrap_or(t)
    } else {
        t
    };
    scaled(&text, unit)
        .map(Some)
        .map_err(|e| decode(format!("{what}: {e}")))
}

fn cost(v: Option<&VolumeDto>) -> Result<Decimal, CloudError> {
    let Some(t) = v.and_then(|v| v.cost.as_ref()).and_then(number_text) else {
        return Ok(Decimal::ZERO);
    };
    Decimal::from_str(t.trim()).map_err(|_| decode(format!("cost {t:?} is not a decimal")))
}

impl TryFrom<DayDto> for DailyUsage {
    type Error = CloudError;
    fn try_from(d: DayDto) -> Result<Self, CloudError> {
        let volume = |v: &Option<VolumeDto>, unit, what| -> Result<i64, CloudError> {
            let n = v.as_ref().and_then(|v| v.volume.as_ref());
            Ok(n.map(|n| figure(n, unit, what))
                .transpose()?
                .flatten()
                .unwrap_or(0))
        };
        let currency = [&d.data, &d.sms]
            .into_iter()
            .flatten()
            .find_map(|v| v.currency.as_ref()?.code.clone());
        Ok(DailyUsage {
            date: d.date.get(..10).unwrap_or(&d.date).to_string(),
            data_bytes: volume(&d.data, 1_000_000, "data volume")?,
            data_cost: cost(d.data.as_ref())?,
            sms: volume(&d.sms, 1, "SMS volume")?,
            sms_cost: cost(d.sms.as_ref())?,
            currency,
        })
    }
}

/// A 1NCE account.
pub struct OneNce {
    http: HttpClient,
    endpoints: Endpoints,
    credentials: Result<Credentials, String>,
    token: TokenCache,
}

impl std::fmt::Debug for OneNce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OneNce")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl OneNce {
    /// A client of the account whose credentials Secret holds `credentials`; when they are unusable
    /// every call fails with [`CloudError::Credentials`].
    pub fn new(http: HttpClient, endpoints: Endpoints, credentials: &str) -> Self {
        Self {
            http,
            endpoints,
            credentials: parse_credentials(credentials),
            token: TokenCache::new(),
        }
    }

    /// Tokens fetched so far (one per hour, plus one per revocation).
    pub async fn token_requests(&self) -> u64 {
        self.token.fetches().await
    }

    async fn token(&self) -> Result<Issued, CloudError> {
        let creds = self
            .credentials
            .as_ref()
            .map_err(|m| CloudError::Credentials(m.clone()))?;
        self.token.get(|| self.fetch_token(creds)).await
    }

    async fn fetch_token(&self, creds: &Credentials) -> Result<Fetched, CloudError> {
        let req = self
            .http
            .request(
                Method::POST,
                &format!("{}/oauth/token", self.endpoints.auth),
            )
            .basic_auth(&creds.client_id, Some(&creds.client_secret))
            .json(&serde_json::json!({ "grant_type": "client_credentials" }));
        // A token request changes nothing: repeating it is harmless.
        let v: serde_json::Value = self.http.json(req, true).await?;
        let value = v["access_token"]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| decode("the token endpoint answered without an access_token".into()))?;
        Ok(Fetched {
            value: value.to_string(),
            lifetime: Duration::from_secs(v["expires_in"].as_u64().unwrap_or(3600)),
        })
    }

    /// Sends a call with the account's token; a 401 refreshes the token (once for every call that saw
    /// it) and tries once more.
    async fn send<F>(&self, idempotent: bool, build: F) -> Result<reqwest::Response, CloudError>
    where
        F: Fn() -> reqwest::RequestBuilder + Send + Sync,
    {
        let mut retried = false;
        loop {
            let token = self.token().await?;
            match self
                .http
                .send(build().bearer_auth(&token.value), idempotent)
                .await
            {
                Err(e) if e.status() == Some(401) && !retried => {
                    retried = true;
                    self.token.rejected(token.generation).await;
                }
                other => return Ok(other?),
            }
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, CloudError> {
        let resp = self
            .send(true, || self.http.request(Method::GET, url))
            .await?;
        let bytes = resp.bytes().await.map_err(|e| HttpError::Unreachable {
            vendor: VENDOR,
            message: e.without_url().to_string(),
        })?;
        Ok(crate::http::decode_json(VENDOR, &bytes)?)
    }

    fn v1(&self, path: &str) -> String {
        format!("{}/v1{path}", self.endpoints.v1)
    }

    /// One cheap authenticated call: a token and the first SIM of the list.
    pub async fn verify(&self) -> Result<(), CloudError> {
        let _: Vec<serde_json::Value> = self.get_json(&self.v1("/sims?page=1&pageSize=1")).await?;
        Ok(())
    }

    /// Every SIM of the account, `PAGE_SIZE` a page.
    pub async fn list_sims(&self) -> Result<Vec<Sim>, CloudError> {
        let mut all = Vec::new();
        let mut page = 1;
        loop {
            let url = self.v1(&format!("/sims?page={page}&pageSize={PAGE_SIZE}"));
            let resp = self
                .send(true, || self.http.request(Method::GET, &url))
                .await?;
            let pages = resp
                .headers()
                .get("x-total-pages")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u32>().ok());
            let bytes = resp.bytes().await.map_err(|e| HttpError::Unreachable {
                vendor: VENDOR,
                message: e.without_url().to_string(),
            })?;
            let items: Vec<SimDto> = crate::http::decode_json(VENDOR, &bytes)?;
            let n = items.len();
            all.extend(items.into_iter().map(Sim::from));
            // Without the page count header, a short page is the last one.
            let last = match pages {
                Some(p) => page >= p,
                None => n < PAGE_SIZE,
            };
            if last || n == 0 {
                return Ok(all);
            }
            page += 1;
        }
    }

    /// One SIM; `None` when 1NCE does not know it (or it is not this account's).
    pub async fn sim(&self, iccid: &str) -> Result<Option<Sim>, CloudError> {
        let iccid = digits(iccid)?;
        match self
            .get_json::<SimDto>(&self.v1(&format!("/sims/{iccid}")))
            .await
        {
            Ok(d) => Ok(Some(d.into())),
            Err(CloudError::Http(e)) if matches!(e.status(), Some(403 | 404)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Asks 1NCE to change a SIM (applied asynchronously).
    pub async fn change(&self, iccid: &str, c: &SimChange) -> Result<Change, CloudError> {
        let iccid = digits(iccid)?;
        let mut body = serde_json::json!({
            "iccid": iccid,
            "status": if c.enabled { "Enabled" } else { "Disabled" },
        });
        if let Some(l) = &c.label {
            body["label"] = l.clone().into();
        }
        if let Some(lock) = c.imei_lock {
            body["imei_lock"] = lock.into();
        }
        let url = format!("{}/v2/sims/{iccid}", self.endpoints.v2);
        // A PUT states the whole change: repeating it is harmless.
        match self
            .send(true, || self.http.request(Method::PUT, &url).json(&body))
            .await
        {
            Ok(_) => Ok(Change::Queued),
            Err(CloudError::Http(e)) if e.status() == Some(409) => Ok(Change::Pending),
            Err(e) => Err(e),
        }
    }

    /// The SIM's data quota (bytes) or SMS quota (messages).
    pub async fn quota(&self, iccid: &str, sms: bool) -> Result<Quota, CloudError> {
        let iccid = digits(iccid)?;
        let (kind, unit) = if sms { ("sms", 1) } else { ("data", 1_000_000) };
        let q: QuotaDto = self
            .get_json(&self.v1(&format!("/sims/{iccid}/quota/{kind}")))
            .await?;
        Ok(Quota {
            remaining: figure(&q.volume, unit, "remaining volume")?.unwrap_or(0),
            total: figure(&q.total_volume, unit, "total volume")?.unwrap_or(0),
            last_added: figure(&q.last_volume_added, unit, "last volume added")?,
            expiry: q.expiry_date,
            last_change: q.last_status_change_date,
            threshold_percent: number_text(&q.threshold_percentage)
                .and_then(|t| Decimal::from_str(&t).ok())
                .and_then(|d| i64::try_from(d.trunc()).ok()),
        })
    }

    /// Daily usage between two days (`YYYY-MM-DD`, inclusive; 1NCE keeps six months).
    pub async fn usage(
        &self,
        iccid: &str,
        from: &str,
        to: &str,
    ) -> Result<Vec<DailyUsage>, CloudError> {
        let iccid = digits(iccid)?;
        let u: UsageDto = self
            .get_json(&self.v1(&format!("/sims/{iccid}/usage?start_dt={from}&end_dt={to}")))
            .await?;
        u.stats.into_iter().map(DailyUsage::try_from).collect()
    }

    /// Orders a top-up of the SIM's quota: a billable order. Not idempotent at 1NCE (no key exists), so
    /// it is sent once, never retried here: the caller records its intent first and, after any doubt,
    /// reads the quota before ever calling again. Returns the order's location, when given.
    pub async fn top_up(&self, iccid: &str) -> Result<Option<String>, CloudError> {
        let iccid = digits(iccid)?;
        let url = self.v1(&format!("/sims/{iccid}/topup"));
        let resp = self
            .send(false, || self.http.request(Method::POST, &url))
            .await?;
        Ok(resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string))
    }

    /// Sends an SMS to the device. Not idempotent at 1NCE: sent once, never retried here.
    pub async fn send_sms(&self, iccid: &str, payload: &str) -> Result<(), CloudError> {
        let iccid = digits(iccid)?;
        let url = self.v1(&format!("/sims/{iccid}/sms"));
        let body = serde_json::json!({ "source_address": "1234567890", "payload": payload });
        self.send(false, || self.http.request(Method::POST, &url).json(&body))
            .await?;
        Ok(())
    }
}

/// An SMS 1NCE holds for a SIM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sms {
    /// 1NCE's ID.
    pub id: String,
    /// When it was submitted (RFC 3339), when given.
    pub submit_date: Option<String>,
    /// Its text.
    pub payload: String,
}

impl OneNce {
    /// The SIM's connectivity as 1NCE reports it (`OFFLINE`, `ONLINE`, `ATTACHED`), when it does.
    pub async fn connectivity(&self, iccid: &str) -> Result<Option<String>, CloudError> {
        let iccid = digits(iccid)?;
        let v: serde_json::Value = self
            .get_json(&self.v1(&format!("/sims/{iccid}/status")))
            .await?;
        Ok(v["status"].as_str().map(str::to_string))
    }

    /// Queues a connectivity reset of the SIM (`POST /v1/sims/{iccid}/reset`; 1NCE resets it
    /// asynchronously). Not retried: 1NCE keeps no record to look an earlier attempt up by.
    pub async fn reset_connectivity(&self, iccid: &str) -> Result<(), CloudError> {
        let iccid = digits(iccid)?;
        let url = self.v1(&format!("/sims/{iccid}/reset"));
        self.send(false, || self.http.request(Method::POST, &url))
            .await?;
        Ok(())
    }

    /// The SIM's messages as 1NCE lists them (the latest 100).
    pub async fn list_sms(&self, iccid: &str) -> Result<Vec<Sms>, CloudError> {
        let iccid = digits(iccid)?;
        let items: Vec<serde_json::Value> = self
            .get_json(&self.v1(&format!(
                "/sims/{iccid}/sms?page=1&pageSize=100&sort=-submit_date"
            )))
            .await?;
        Ok(items
            .iter()
            .map(|m| Sms {
                id: number_text(&m["id"]).unwrap_or_default(),
                submit_date: m["submit_date"].as_str().map(str::to_string),
                payload: m["payload"].as_str().unwrap_or_default().to_string(),
            })
            .collect())
    }
}

/// A network event of a SIM (1NCE's v2 events: attach, detach, location updates, PDP contexts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimEvent {
    /// 1NCE's ID: increasing, the key events are kept once by.
    pub id: i64,
    /// What happened (`event_type.description`, e.g. `Update location`, `Create PDP Context`).
    pub kind: String,
    /// When (RFC 3339), if given.
    pub at: Option<String>,
    /// Whether 1NCE flags it as an alert.
    pub alert: bool,
    /// 1NCE's text about it.
    pub description: Option<String>,
    /// The network (operator) named in its detail.
    pub network: Option<String>,
    /// The country named in its detail.
    pub country: Option<String>,
}

impl SimEvent {
    fn from_json(v: &serde_json::Value) -> Option<Self> {
        let text = |x: &serde_json::Value| x.as_str().filter(|s| !s.is_empty()).map(str::to_string);
        let detail = &v["detail"];
        Some(Self {
            id: v["id"].as_i64()?,
            kind: text(&v["event_type"]["description"]).unwrap_or_else(|| "Event".into()),
            at: text(&v["timestamp"]),
            alert: v["alert"].as_bool().unwrap_or(false),
            description: text(&v["description"]),
            network: text(&detail["name"]),
            country: text(&detail["country"]["name"]),
        })
    }
}

impl OneNce {
    /// The SIM's latest network events (`GET /v2/sims/{iccid}/events`, pages of `page_size`, at most
    /// 1,000), oldest first. 1NCE does not document the list's order, so the first page and, when there
    /// are more (`X-Total-Pages`), the last one are read: the newest events are on one of them either way.
    pub async fn sim_events(
        &self,
        iccid: &str,
        page_size: usize,
    ) -> Result<Vec<SimEvent>, CloudError> {
        let iccid = digits(iccid)?;
        let page = |n: u32| {
            format!(
                "{}/v2/sims/{iccid}/events?page={n}&pageSize={}",
                self.endpoints.v2,
                page_size.clamp(1, 1000)
            )
        };
        let (mut items, pages) = self.json_page(&page(1)).await?;
        if let Some(last) = pages.filter(|p| *p > 1) {
            items.extend(self.json_page(&page(last)).await?.0);
        }
        let mut events: Vec<SimEvent> = items.iter().filter_map(SimEvent::from_json).collect();
        events.sort_by_key(|e| e.id);
        events.dedup_by_key(|e| e.id);
        Ok(events)
    }

    /// One page of a JSON list and the page count 1NCE sends beside it (`X-Total-Pages`).
    async fn json_page(
        &self,
        url: &str,
    ) -> Result<(Vec<serde_json::Value>, Option<u32>), CloudError> {
        let resp = self
            .send(true, || self.http.request(Method::GET, url))
            .await?;
        let pages = resp
            .headers()
            .get("x-total-pages")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u32>().ok());
        let bytes = resp.bytes().await.map_err(|e| HttpError::Unreachable {
            vendor: VENDOR,
            message: e.without_url().to_string(),
        })?;
        Ok((crate::http::decode_json(VENDOR, &bytes)?, pages))
    }
}

/// An ICCID as it may appear in a URL path: digits only.
fn digits(iccid: &str) -> Result<&str, CloudError> {
    let t = iccid.trim();
    if !t.is_empty() && t.len() <= 22 && t.bytes().all(|b| b.is_ascii_digit()) {
        Ok(t)
    } else {
        Err(CloudError::Unsupported(format!(
            "{iccid:?} is not an ICCID (digits only)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_are_exact() {
        assert_eq!(mb_to_bytes("0.002803").unwrap(), 2803);
        assert_eq!(mb_to_bytes("435.787951").unwrap(), 435_787_951);
        assert_eq!(mb_to_bytes("500").unwrap(), 500_000_000);
        assert!(mb_to_bytes("0.0000001").is_err());
        assert!(mb_to_bytes("lots").is_err());
        assert_eq!(
            number_text(&serde_json::json!(435.787951)).as_deref(),
            Some("435.787951")
        );
    }

    #[test]
    fn credentials_must_be_a_client_id_and_secret() {
        assert!(parse_credentials(r#"{"clientId":"1-api","clientSecret":"s"}"#).is_ok());
        let e = parse_credentials("token").err().unwrap();
        assert!(!e.contains("token"), "{e}");
        assert!(parse_credentials(r#"{"clientId":"","clientSecret":"s"}"#).is_err());
    }

    #[test]
    fn only_digits_reach_a_path() {
        assert!(digits("8988280666000000000").is_ok());
        assert!(digits("../sims").is_err());
        assert!(digits("").is_err());
    }
}

/// Most records 1NCE's Data Streamer sends in one request.
pub const STREAM_BATCH: usize = 3000;

/// What a Data Streamer record counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Traffic {
    /// Data, in bytes.
    Data,
    /// Text messages, a count.
    Sms,
}

/// One usage record of 1NCE's Data Streamer, as 1NCE sent it (what the platform keeps of it is the
/// webhook server's business).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamedUsage {
    /// 1NCE's record ID.
    pub id: String,
    /// The SIM (19 digits).
    pub iccid: String,
    /// The day it started, `YYYY-MM-DD`.
    pub day: String,
    /// What it counts.
    pub traffic: Traffic,
    /// Bytes (data) or messages (SMS).
    pub quantity: i64,
}

/// One SMS 1NCE forwarded from a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardedSms {
    /// 1NCE's message ID.
    pub id: String,
    /// The SIM (19 digits).
    pub iccid: String,
    /// When the device submitted it, as 1NCE wrote it.
    pub submitted: String,
    /// Its text.
    pub payload: String,
}

/// The usage records of one Data Streamer request (a JSON list of up to [`STREAM_BATCH`]): data
/// (traffic type 5, volume in MB) and SMS (type 6, a count). Records of other types are skipped; a
/// record without an ID, an ICCID, a start or a readable volume is an error (1NCE will send it again).
pub fn parse_stream(body: &[u8]) -> Result<Vec<StreamedUsage>, String> {
    let list: Vec<serde_json::Value> = serde_json::from_slice(body)
        .map_err(|e| format!("not a JSON list of usage records: {e}"))?;
    if list.len() > STREAM_BATCH {
        return Err(format!(
            "{} records; at most {STREAM_BATCH} a request",
            list.len()
        ));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, r) in list.iter().enumerate() {
        let bad = |what: &str| format!("record {i}: {what}");
        let text = |v: &serde_json::Value| number_text(v).filter(|t| !t.is_empty());
        let id = text(&r["id"]).ok_or_else(|| bad("no id"))?;
        let iccid = text(&r["sim"]["iccid"])
            .or_else(|| text(&r["iccid"]))
            .ok_or_else(|| bad("no sim.iccid"))?;
        let iccid = match iccid.len() {
            20 => iccid[..19].to_string(),
            _ => iccid,
        };
        digits(&iccid).map_err(|_| bad("the ICCID is not digits"))?;
        let start = r["start_timestamp"]
            .as_str()
            .and_then(|s| s.get(..10))
            .ok_or_else(|| bad("no start_timestamp"))?;
        let kind = text(&r["traffic_type"]["id"]).or_else(|| text(&r["traffic_type_id"]));
        let traffic = match kind.as_deref() {
            Some("5") => Traffic::Data,
            Some("6") => Traffic::Sms,
            _ => continue,
        };
        let volume = text(&r["volume"]["total"])
            .or_else(|| text(&r["volume_total"]))
            .ok_or_else(|| bad("no volume.total"))?;
        let unit = if traffic == Traffic::Sms {
            1
        } else {
            1_000_000
        };
        let quantity = figure(&serde_json::Value::String(volume), unit, "volume")
            .map_err(|e| bad(&e.to_string()))?
            .unwrap_or(0);
        out.push(StreamedUsage {
            id,
            iccid,
            day: start.to_string(),
            traffic,
            quantity,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod stream_tests {
    use super::*;

    #[test]
    fn data_streamer_records_are_read_exactly() {
        let body = serde_json::json!([
            {"id": "r1", "start_timestamp": "2026-11-30T12:59:05Z", "sim": {"iccid": "89882806660000000001"},
             "traffic_type": {"id": 5, "description": "Data"}, "volume": {"rx": "0.2", "tx": "0.05", "total": "0.250001"}},
            {"id": 77, "start_timestamp": "2026-11-30T13:00:00Z", "iccid": "8988280666000000000",
             "traffic_type_id": 6, "volume_total": "1"},
            {"id": "r3", "start_timestamp": "2026-11-30T13:00:00Z", "iccid": "8988280666000000000",
             "traffic_type_id": 9, "volume_total": "1"}
        ]);
        let r = parse_stream(body.to_string().as_bytes()).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].iccid.as_str(), r[0].quantity),
            ("8988280666000000000", 250_001)
        );
        assert_eq!((r[1].id.as_str(), r[1].quantity), ("77", 1));
        assert_eq!((r[0].traffic, r[1].traffic), (Traffic::Data, Traffic::Sms));
        assert!(parse_stream(b"{}").is_err());
        let missing = serde_json::json!([{"id": "x", "traffic_type_id": 5}]);
        assert!(
            parse_stream(missing.to_string().as_bytes())
                .unwrap_err()
                .contains("sim.iccid")
        );
    }
}

/// The SMS of one SMS-forwarder request from 1NCE (one message object, or a list of them): its ID, the
/// SIM (`iccid`, or `sim.iccid`), when it was submitted and its text.
pub fn parse_forwarded_sms(body: &[u8]) -> Result<Vec<ForwardedSms>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not a JSON SMS: {e}"))?;
    let list = match v {
        serde_json::Value::Array(a) => a,
        one => vec![one],
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let text = |v: &serde_json::Value| number_text(v).filter(|t| !t.is_empty());
            let id = text(&m["id"])
                .or_else(|| text(&m["message_id"]))
                .ok_or_else(|| format!("message {i}: no id"))?;
            let iccid = text(&m["iccid"])
                .or_else(|| text(&m["sim"]["iccid"]))
                .ok_or_else(|| format!("message {i}: no iccid"))?;
            let iccid = iccid.get(..19).unwrap_or(&iccid).to_string();
            digits(&iccid).map_err(|_| format!("message {i}: the ICCID is not digits"))?;
            Ok(ForwardedSms {
                id,
                iccid,
                submitted: m["submit_date"].as_str().unwrap_or_default().to_string(),
                payload: m["payload"].as_str().unwrap_or_default().to_string(),
            })
        })
        .collect()
}

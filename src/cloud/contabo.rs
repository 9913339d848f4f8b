//! Contabo VPS (API v1, OAuth2 password grant). Vendor DTOs stay in this file.
//!
//! Notes on the vendor:
//! - Credentials: the Secret holds a JSON document
//!   `{"clientId":…,"clientSecret":…,"apiUser":…,"apiPassword":…,"authUrl":… (optional)}`. A token comes from
//!   the OAuth2 password grant at `authUrl` (default [`DEFAULT_AUTH_URL`]; not part of Contabo's API
//!   document) and is cached until shortly before it expires. Every API call carries a fresh
//!   `x-request-id` (UUID v4), which the API requires.
//! - Contabo instances have no tags the instance list can filter on. The ownership tag
//!   (`quartermaster-uid-<uid>`) therefore lives in the display name: `create` appends every ownership tag
//!   of the spec that the name does not already contain, and `find_by_tag` lists the instances and keeps
//!   those whose display name contains the tag. Other tags are not sent; [`Server::tags`] holds the
//!   ownership tags found in the display name.
//! - `delete` cancels the contract (`POST …/cancel`): the instance keeps running until the end of the
//!   paid period and reads as [`ServerState::Deleting`] until then.
//! - The product of an instance cannot be changed (`resize` is unsupported), root passwords and SSH keys
//!   are IDs of secrets in Contabo's Secrets API (public SSH keys are refused; a Windows server's
//!   administrator password is kept there by [`secrets`] under a name derived from its owner), and
//!   the API has no price list: [`sizes`](ComputeProvider::sizes) is a built-in table.

mod secrets;

use std::time::Duration;

use super::oauth::{Fetched, Issued, TokenCache};
use async_trait::async_trait;
use reqwest::Method;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::rest::{
    done_if_not_found, is_not_found, none_if_not_found, not_an_id, numeric_id, page_items,
    segment_id,
};
use super::{
    CloudError, ComputeProvider, Image, PowerAction, Region, ResizeRule, Server, ServerSpec,
    ServerState, Size, Snapshot, SnapshotLookup, SnapshotState, UID_TAG_PREFIX,
};
use crate::http::{HttpClient, HttpError};

/// The public API (paths start with `/v1`).
pub const DEFAULT_ENDPOINT: &str = "https://api.contabo.com";
/// Contabo's OAuth2 token endpoint.
pub const DEFAULT_AUTH_URL: &str =
    "https://auth.contabo.com/auth/realms/contabo/protocol/openid-connect/token";

/// Longest display name.
const MAX_DISPLAY_NAME: usize = 255;
/// Hours in a billing month, for the hourly price.
const HOURS_PER_MONTH: u32 = 730;
/// Page size of list calls.
const PAGE_SIZE: usize = 100;

/// The parsed credentials Secret. Never printed: `Debug` shows only the non-secret parts.
struct Credentials {
    client_id: String,
    client_secret: String,
    api_user: String,
    api_password: String,
    auth_url: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("api_user", &"<redacted>")
            .field("api_password", &"<redacted>")
            .field("auth_url", &self.auth_url)
            .finish()
    }
}

/// Parses the Secret value. Error messages name fields and JSON positions, never values.
fn parse_credentials(raw: &str) -> Result<Credentials, String> {
    const SHAPE: &str = "the Contabo credentials must be a JSON object with the strings clientId, \
                         clientSecret, apiUser, apiPassword and optionally authUrl";
    let v: serde_json::Value = serde_json::from_str(raw.trim()).map_err(|e| {
        format!(
            "{SHAPE} (not valid JSON: error at line {} column {})",
            e.line(),
            e.column()
        )
    })?;
    let obj = v
        .as_object()
        .ok_or_else(|| format!("{SHAPE} (the value is not a JSON object)"))?;
    let field = |name: &str| -> Result<String, String> {
        match obj.get(name) {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
            Some(_) => Err(format!("{SHAPE} (field {name} is not a non-empty string)")),
            None => Err(format!("{SHAPE} (field {name} is missing)")),
        }
    };
    let auth_url = match obj.get("authUrl") {
        None | Some(serde_json::Value::Null) => DEFAULT_AUTH_URL.to_string(),
        Some(serde_json::Value::String(s))
            if s.starts_with("https://") || s.starts_with("http://") =>
        {
            s.trim().to_string()
        }
        Some(_) => return Err(format!("{SHAPE} (field authUrl is not an http(s) URL)")),
    };
    Ok(Credentials {
        client_id: field("clientId")?,
        client_secret: field("clientSecret")?,
        api_user: field("apiUser")?,
        api_password: field("apiPassword")?,
        auth_url,
    })
}

/// A Contabo account.
pub struct Contabo {
    http: HttpClient,
    base: String,
    credentials: Result<Credentials, String>,
    token: TokenCache,
}

impl std::fmt::Debug for Contabo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contabo")
            .field("base", &self.base)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl Contabo {
    /// A client for `endpoint` (default: the public API). `credentials` is the Secret's JSON document;
    /// when it is unusable every call fails with [`CloudError::Credentials`].
    pub fn new(http: HttpClient, endpoint: Option<String>, credentials: &str) -> Self {
        Self {
            http,
            base: endpoint.unwrap_or_else(|| DEFAULT_ENDPOINT.into()),
            credentials: parse_credentials(credentials),
            token: TokenCache::new(),
        }
    }

    fn credentials(&self) -> Result<&Credentials, CloudError> {
        self.credentials
            .as_ref()
            .map_err(|m| CloudError::Credentials(m.clone()))
    }

    /// A valid access token: the cached one, or a new one from the password grant.
    async fn token(&self) -> Result<Issued, CloudError> {
        let creds = self.credentials()?;
        self.token.get(|| self.fetch_token(creds)).await
    }

    async fn fetch_token(&self, creds: &Credentials) -> Result<Fetched, CloudError> {
        let form = [
            ("grant_type", "password"),
            ("client_id", creds.client_id.as_str()),
            ("client_secret", creds.client_secret.as_str()),
            ("username", creds.api_user.as_str()),
            ("password", creds.api_password.as_str()),
        ];
        // Asking for a token twice is harmless: idempotent.
        let v: serde_json::Value = self
            .http
            .json(
                self.http.request(Method::POST, &creds.auth_url).form(&form),
                true,
            )
            .await?;
        let value = v["access_token"]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| HttpError::Decode {
                vendor: "contabo",
                message: "the token endpoint answered without an access_token".into(),
            })?
            .to_string();
        Ok(Fetched {
            value,
            lifetime: Duration::from_secs(v["expires_in"].as_u64().unwrap_or(300)),
        })
    }

    /// Sends an API call with a token and a fresh `x-request-id`. A 401 drops the token (once, however
    /// many calls saw it) and tries once more with a new one (tokens can be revoked before they expire).
    async fn send<F>(&self, idempotent: bool, build: F) -> Result<reqwest::Response, CloudError>
    where
        F: Fn() -> reqwest::RequestBuilder + Send + Sync,
    {
        let mut retried = false;
        loop {
            let token = self.token().await?;
            let req = build()
                .bearer_auth(&token.value)
                .header("x-request-id", uuid::Uuid::new_v4().to_string());
            match self.http.send(req, idempotent).await {
                Err(e) if e.status() == Some(401) && !retried => {
                    retried = true;
                    self.token.rejected(token.generation).await;
                }
                other => return Ok(other?),
            }
        }
    }

    /// An API call whose JSON answer is decoded.
    async fn call<T, F>(&self, idempotent: bool, build: F) -> Result<T, CloudError>
    where
        T: serde::de::DeserializeOwned,
        F: Fn() -> reqwest::RequestBuilder + Send + Sync,
    {
        let resp = self.send(idempotent, build).await?;
        let bytes = resp.bytes().await.map_err(|e| HttpError::Unreachable {
            vendor: "contabo",
            message: e.without_url().to_string(),
        })?;
        Ok(crate::http::decode_json("contabo", &bytes)?)
    }

    /// An instance as Contabo sends it; `None` when it does not exist.
    async fn instance(&self, id: &str) -> Result<Option<Instance>, CloudError> {
        self.credentials()?;
        let Some(id) = numeric_id(id) else {
            return Ok(None);
        };
        let url = self.url(&format!("/v1/compute/instances/{id}"));
        let found = self
            .call::<DataEnvelope<Instance>, _>(true, || self.http.request(Method::GET, &url))
            .await;
        Ok(none_if_not_found(found)?.and_then(|env| env.data.into_iter().next()))
    }

    /// Adds (`present`) or removes an ownership tag by renaming the instance (the tag lives in its
    /// display name). Removing from an instance that is gone is done; adding to one is a 404.
    async fn set_tag(&self, id: &str, tag: &str, present: bool) -> Result<(), CloudError> {
        if !tag.starts_with(UID_TAG_PREFIX) {
            return Err(CloudError::Unsupported(
                "contabo keeps only ownership tags (in the display name)".into(),
            ));
        }
        let Some(i) = self.instance(id).await? else {
            return if present {
                Err(not_an_id("contabo", id))
            } else {
                Ok(())
            };
        };
        let current = i.display_name.unwrap_or_default();
        if tags_in(&current).iter().any(|t| t == tag) == present {
            return Ok(());
        }
        let renamed = if present {
            name_with_tags(&current, &[tag])
        } else {
            without_tag(&current, tag, i.instance_id)
        };
        let url = self.url(&format!("/v1/compute/instances/{}", i.instance_id));
        // Renaming to the same name twice is harmless: idempotent.
        self.send(true, || {
            self.http
                .request(Method::PATCH, &url)
                .json(&serde_json::json!({ "displayName": renamed }))
        })
        .await?;
        Ok(())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Every page of a list (`data`, `_pagination.totalPages`, `_links.next`).
    async fn list<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<Vec<T>, CloudError> {
        let mut out = Vec::new();
        for page in 1..=100u32 {
            let url = self.url(path);
            let v: serde_json::Value = self
                .call(true, || {
                    self.http
                        .request(Method::GET, &url)
                        .query(&[("page", page.to_string()), ("size", PAGE_SIZE.to_string())])
                })
                .await?;
            let items: Vec<T> = page_items("contabo", &v, "data")?;
            let n = items.len();
            out.extend(items);
            let total_pages = v["_pagination"]["totalPages"].as_f64();
            let has_next = v["_links"]["next"].as_str().is_some_and(|s| !s.is_empty());
            let last = match total_pages {
                Some(total) => f64::from(page) >= total,
                None => !has_next,
            };
            if last || n < PAGE_SIZE {
                break;
            }
        }
        Ok(out)
    }

    async fn action(&self, id: &str, action: &str) -> Result<(), CloudError> {
        let id = numeric_id(id).ok_or_else(|| not_an_id("contabo", id))?;
        let url = self.url(&format!("/v1/compute/instances/{id}/actions/{action}"));
        self.send(false, || self.http.request(Method::POST, &url))
            .await?;
        Ok(())
    }
}

#[derive(Deserialize)]
struct DataEnvelope<T> {
    data: Vec<T>,
}

/// An instance's snapshot (`/v1/compute/instances/{id}/snapshots`). Contabo reports neither a size
/// nor a state: one it lists can be rolled back to.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContaboSnapshot {
    snapshot_id: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    created_date: Option<String>,
}

fn to_snapshot(s: ContaboSnapshot) -> Snapshot {
    Snapshot {
        id: s.snapshot_id,
        name: s.description,
        state: SnapshotState::Available,
        size_gb: None,
        created_at: s.created_date,
    }
}

/// Longest snapshot name Contabo accepts (the mark goes whole into the description).
const MAX_SNAPSHOT_NAME: usize = 30;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Instance {
    instance_id: i64,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    product_id: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    image_id: Option<String>,
    #[serde(default)]
    ip_config: Option<IpConfig>,
    /// Empty or absent unless the instance is cancelled.
    #[serde(default)]
    cancel_date: Option<String>,
}

#[derive(Deserialize)]
struct IpConfig {
    #[serde(default)]
    v4: Option<IpEntry>,
    #[serde(default)]
    v6: Option<IpEntry>,
}

#[derive(Deserialize)]
struct IpEntry {
    /// A string; Contabo's own example has a number for IPv6, so anything is accepted.
    #[serde(default)]
    ip: serde_json::Value,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CreateInstance<'a> {
    image_id: &'a str,
    product_id: &'a str,
    region: &'a str,
    display_name: String,
    /// Contract period in months.
    period: i64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ssh_keys: Vec<i64>,
    /// The `secretId` of the administrator password.
    #[serde(skip_serializing_if = "Option::is_none")]
    root_password: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_data: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    add_ons: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContaboImage {
    image_id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    standard_image: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DataCenter {
    #[serde(default)]
    region_slug: String,
    #[serde(default)]
    region_name: String,
    #[serde(default)]
    capabilities: Vec<String>,
}

/// One row of the built-in product table.
struct Product {
    id: &'static str,
    vcpus: u32,
    memory_gb: u64,
    disk_gb: u64,
    /// EUR per month.
    monthly: &'static str,
}

/// Contabo VPS products: Contabo's API has no price list, so this is a static table.
///
/// - Product IDs and disk sizes: the product table in Contabo's API document (cntb v1.5.5, 2025-05-07).
/// - vCPUs, memory and prices: Contabo's public price list as of 2025-05 (region EU, monthly term, EUR
///   excluding VAT, no setup fee). Other regions and shorter terms cost more. These figures were not
///   re-checked against a live source when the table was written: check contabo.com before billing on
///   them.
/// - Storage variants and the VPS nC / VDS lines are left out. Hourly = monthly / 730.
const PRODUCTS: &[Product] = &[
    Product {
        id: "V91",
        vcpus: 4,
        memory_gb: 8,
        disk_gb: 75,
        monthly: "4.50",
    },
    Product {
        id: "V92",
        vcpus: 4,
        memory_gb: 8,
        disk_gb: 150,
        monthly: "4.50",
    },
    Product {
        id: "V94",
        vcpus: 6,
        memory_gb: 12,
        disk_gb: 100,
        monthly: "7.00",
    },
    Product {
        id: "V95",
        vcpus: 6,
        memory_gb: 12,
        disk_gb: 200,
        monthly: "7.00",
    },
    Product {
        id: "V97",
        vcpus: 8,
        memory_gb: 24,
        disk_gb: 200,
        monthly: "14.00",
    },
    Product {
        id: "V98",
        vcpus: 8,
        memory_gb: 24,
        disk_gb: 400,
        monthly: "14.00",
    },
    Product {
        id: "V100",
        vcpus: 12,
        memory_gb: 48,
        disk_gb: 250,
        monthly: "25.00",
    },
    Product {
        id: "V101",
        vcpus: 12,
        memory_gb: 48,
        disk_gb: 500,
        monthly: "25.00",
    },
    Product {
        id: "V103",
        vcpus: 16,
        memory_gb: 64,
        disk_gb: 300,
        monthly: "37.00",
    },
    Product {
        id: "V104",
        vcpus: 16,
        memory_gb: 64,
        disk_gb: 600,
        monthly: "37.00",
    },
    Product {
        id: "V106",
        vcpus: 18,
        memory_gb: 96,
        disk_gb: 350,
        monthly: "49.00",
    },
    Product {
        id: "V107",
        vcpus: 18,
        memory_gb: 96,
        disk_gb: 700,
        monthly: "49.00",
    },
];

/// Contabo's regions (the values the create call accepts), for when the data-center list is empty.
const REGIONS: &[(&str, &str)] = &[
    ("EU", "European Union"),
    ("US-central", "United States (Central)"),
    ("US-east", "United States (East)"),
    ("US-west", "United States (West)"),
    ("SIN", "Asia (Singapore)"),
    ("UK", "United Kingdom"),
    ("AUS", "Australia (Sydney)"),
    ("JPN", "Asia (Japan)"),
    ("IND", "Asia (India)"),
];

/// The display name for a spec: the name plus every ownership tag it does not contain yet.
fn display_name(spec: &ServerSpec) -> String {
    let tags: Vec<&str> = spec.tags.iter().map(String::as_str).collect();
    name_with_tags(&spec.name, &tags)
}

/// `name` plus every ownership tag among `tags` it does not contain yet, at most 255 characters (the
/// name is shortened, never the tags).
fn name_with_tags(name: &str, tags: &[&str]) -> String {
    let missing: Vec<&str> = tags
        .iter()
        .copied()
        .filter(|t| t.starts_with(UID_TAG_PREFIX) && !name.contains(t))
        .collect();
    if missing.is_empty() {
        return name.chars().take(MAX_DISPLAY_NAME).collect();
    }
    let suffix: String = missing.iter().map(|t| format!(" {t}")).collect();
    let room = MAX_DISPLAY_NAME.saturating_sub(suffix.chars().count());
    let name: String = name.chars().take(room).collect();
    format!("{name}{suffix}")
}

/// `display` without the words that are `tag` (bare or bracketed); `instance-<id>` if nothing is left.
fn without_tag(display: &str, tag: &str, id: i64) -> String {
    let kept: Vec<&str> = display
        .split_whitespace()
        .filter(|w| w.trim_matches(|c| matches!(c, '(' | ')' | '[' | ']' | ',' | ';')) != tag)
        .collect();
    if kept.is_empty() {
        format!("instance-{id}")
    } else {
        kept.join(" ")
    }
}

/// The name of the password secret for `spec`'s server, after its ownership tag.
fn password_secret_name(spec: &ServerSpec) -> Result<String, CloudError> {
    spec.tags
        .iter()
        .find(|t| t.starts_with(UID_TAG_PREFIX))
        .map(|t| secrets::secret_name(t))
        .ok_or_else(|| {
            CloudError::Unsupported(
                "contabo keeps a password as a secret named after the server's ownership tag, and \
                 this create has none"
                    .into(),
            )
        })
}

/// Ownership tags found in a display name.
fn tags_in(display_name: &str) -> Vec<String> {
    display_name
        .split(|c: char| c.is_whitespace() || matches!(c, '(' | ')' | '[' | ']' | ',' | ';'))
        .filter(|w| w.starts_with(UID_TAG_PREFIX))
        .map(str::to_string)
        .collect()
}

fn to_state(status: &str) -> ServerState {
    match status {
        "provisioning"
        | "installing"
        | "manual_provisioning"
        | "pending_payment"
        | "verification_required"
        | "reset_password" => ServerState::Provisioning,
        "running" | "rescue" => ServerState::Running,
        "stopped" | "uninstalled" => ServerState::Off,
        _ => ServerState::Failed,
    }
}

fn ip(entry: Option<&IpEntry>) -> Option<String> {
    entry
        .and_then(|e| e.ip.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn to_server(i: Instance) -> Server {
    let cancelled = i
        .cancel_date
        .as_deref()
        .is_some_and(|d| !d.trim().is_empty());
    let status = i.status.unwrap_or_default();
    let state = if cancelled {
        ServerState::Deleting
    } else {
        to_state(&status)
    };
    let name = i
        .display_name
        .filter(|n| !n.is_empty())
        .or(i.name)
        .unwrap_or_default();
    Server {
        id: i.instance_id.to_string(),
        tags: tags_in(&name),
        name,
        price: None,
        deletion_scheduled: cancelled,
        initial_password: None,
        backups: None,
        busy: matches!(
            status.as_str(),
            "provisioning" | "installing" | "reset_password"
        ),
        state,
        size: i.product_id.unwrap_or_default(),
        region: i.region.unwrap_or_default(),
        image: i.image_id.filter(|s| !s.is_empty()),
        public_ipv4: ip(i.ip_config.as_ref().and_then(|c| c.v4.as_ref())),
        public_ipv6: ip(i.ip_config.as_ref().and_then(|c| c.v6.as_ref())),
        private_ipv4: None,
    }
}

#[async_trait]
impl ComputeProvider for Contabo {
    async fn verify(&self) -> Result<(), CloudError> {
        let url = self.url("/v1/compute/instances");
        let _: serde_json::Value = self
            .call(true, || {
                self.http
                    .request(Method::GET, &url)
                    .query(&[("page", "1"), ("size", "1")])
            })
            .await?;
        Ok(())
    }

    async fn create(&self, spec: &ServerSpec) -> Result<Server, CloudError> {
        self.credentials()?;
        let mut ssh_keys = Vec::new();
        for k in &spec.ssh_keys {
            match k.trim().parse::<i64>() {
                Ok(id) => ssh_keys.push(id),
                Err(_) => {
                    return Err(CloudError::Unsupported(
                        "contabo takes SSH keys as secret IDs (numbers from Contabo's Secrets API), \
                         not public keys: store the key as a Contabo secret and use its ID"
                            .into(),
                    ));
                }
            }
        }
        let root_password = match spec.root_password.as_deref() {
            Some(pw) => Some(
                self.password_secret(&password_secret_name(spec)?, pw)
                    .await?,
            ),
            None => None,
        };
        // defaultUser is left to Contabo (root on Linux/BSD, administrator on Windows): a fixed value
        // would be refused for the other family of images.
        let body = CreateInstance {
            image_id: &spec.image,
            product_id: &spec.size,
            region: &spec.region,
            display_name: display_name(spec),
            period: 1,
            ssh_keys,
            root_password,
            user_data: spec.user_data.as_deref(),
            add_ons: spec.backups.then(|| serde_json::json!({ "backup": {} })),
        };
        let url = self.url("/v1/compute/instances");
        let env: DataEnvelope<Instance> = self
            .call(false, || self.http.request(Method::POST, &url).json(&body))
            .await?;
        let i = env
            .data
            .into_iter()
            .next()
            .ok_or_else(|| HttpError::Decode {
                vendor: "contabo",
                message: "the create answer lists no instance".into(),
            })?;
        let mut s = to_server(i);
        // The create answer has no display name or addresses yet.
        if s.name.is_empty() {
            s.name = body.display_name.clone();
            s.tags = tags_in(&s.name);
        }
        Ok(s)
    }

    async fn get(&self, id: &str) -> Result<Option<Server>, CloudError> {
        Ok(self.instance(id).await?.map(to_server))
    }

    async fn find_by_tag(&self, tag: &str) -> Result<Vec<Server>, CloudError> {
        // Client-side: how the API's own displayName/search filters match is not specified, and a miss
        // here would create a second (paid) instance.
        let all: Vec<Instance> = self.list("/v1/compute/instances").await?;
        Ok(all
            .into_iter()
            .filter(|i| {
                i.display_name
                    .as_deref()
                    .is_some_and(|n| tags_in(n).iter().any(|t| t == tag))
            })
            .map(to_server)
            .collect())
    }

    /// Every instance, paged (ownership tags read from display names).
    async fn list_servers(&self) -> Result<Option<Vec<Server>>, CloudError> {
        let all: Vec<Instance> = self.list("/v1/compute/instances").await?;
        Ok(Some(all.into_iter().map(to_server).collect()))
    }

    async fn delete(&self, id: &str) -> Result<(), CloudError> {
        self.credentials()?;
        let Some(num) = numeric_id(id) else {
            return Ok(());
        };
        // Its ownership tags name its password secret, deleted once the cancel is done.
        let tags = self
            .instance(id)
            .await?
            .map(|i| i.display_name.unwrap_or_default());
        let url = self.url(&format!("/v1/compute/instances/{num}/cancel"));
        // An empty body cancels at the end of the current contract period.
        let result = self
            .send(false, || {
                self.http
                    .request(Method::POST, &url)
                    .json(&serde_json::json!({}))
            })
            .await;
        match result {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            // Already cancelled (Contabo refuses a second cancel): that is success too.
            Err(CloudError::Http(e)) if matches!(e.status(), Some(400 | 409 | 422)) => {
                match self.get(id).await? {
                    None => {}
                    Some(s) if s.state == ServerState::Deleting => {}
                    Some(_) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e),
        }
        match tags {
            Some(name) => self.delete_password_secrets(&tags_in(&name)).await,
            None => Ok(()),
        }
    }

    async fn add_tag(&self, id: &str, tag: &str) -> Result<(), CloudError> {
        self.set_tag(id, tag, true).await
    }

    async fn remove_tag(&self, id: &str, tag: &str) -> Result<(), CloudError> {
        self.set_tag(id, tag, false).await
    }

    async fn power(&self, id: &str, action: PowerAction) -> Result<(), CloudError> {
        self.credentials()?;
        let verb = match action {
            PowerAction::On => "start",
            PowerAction::Off => "stop",
            PowerAction::Reboot => "restart",
        };
        self.action(id, verb).await
    }

    async fn resize(&self, _id: &str, _size: &str) -> Result<(), CloudError> {
        Err(CloudError::Unsupported(
            "contabo cannot change the product of an existing instance; create a new VirtualMachine"
                .into(),
        ))
    }

    async fn sizes(&self) -> Result<Vec<Size>, CloudError> {
        self.credentials()?;
        Ok(PRODUCTS
            .iter()
            .map(|p| {
                let monthly: Decimal = p.monthly.parse().unwrap_or_default();
                Size {
                    slug: p.id.into(),
                    vcpus: p.vcpus,
                    memory_mb: p.memory_gb * 1024,
                    disk_gb: p.disk_gb,
                    price_hourly: (monthly / Decimal::from(HOURS_PER_MONTH)).round_dp(6),
                    price_monthly: monthly,
                    currency: "EUR".into(),
                    regions: Vec::new(),
                    transfer_bytes: None,
                    backup_price: None,
                }
            })
            .collect())
    }

    async fn images(&self) -> Result<Vec<Image>, CloudError> {
        let images: Vec<ContaboImage> = self.list("/v1/compute/images").await?;
        Ok(images
            .into_iter()
            .map(|i| Image {
                name: if i.name.is_empty() {
                    i.image_id.clone()
                } else {
                    i.name
                },
                slug: i.image_id,
                // Custom images are the customer's own uploads.
                kind: if i.standard_image {
                    "distribution".into()
                } else {
                    "snapshot".into()
                },
            })
            .collect())
    }

    async fn regions(&self) -> Result<Vec<Region>, CloudError> {
        let dcs: Vec<DataCenter> = self.list("/v1/data-centers").await?;
        let mut out: Vec<Region> = Vec::new();
        for dc in dcs.into_iter().filter(|d| !d.region_slug.is_empty()) {
            let vps = dc.capabilities.iter().any(|c| c == "VPS");
            match out.iter_mut().find(|r| r.slug == dc.region_slug) {
                Some(r) => r.available |= vps,
                None => out.push(Region {
                    name: if dc.region_name.is_empty() {
                        dc.region_slug.clone()
                    } else {
                        dc.region_name
                    },
                    slug: dc.region_slug,
                    available: vps,
                }),
            }
        }
        if out.is_empty() {
            out = REGIONS
                .iter()
                .map(|(slug, name)| Region {
                    slug: (*slug).into(),
                    name: (*name).into(),
                    available: true,
                })
                .collect();
        }
        Ok(out)
    }

    /// `POST …/snapshots` of the instance: named with the mark's first 30 characters, described by the
    /// whole mark (by which it is found).
    async fn create_snapshot(
        &self,
        server_id: &str,
        mark: &str,
    ) -> Result<Option<Snapshot>, CloudError> {
        let id = numeric_id(server_id).ok_or_else(|| not_an_id("contabo", server_id))?;
        let url = self.url(&format!("/v1/compute/instances/{id}/snapshots"));
        let name: String = mark.chars().take(MAX_SNAPSHOT_NAME).collect();
        let env: DataEnvelope<ContaboSnapshot> = self
            .call(false, || {
                self.http
                    .request(Method::POST, &url)
                    .json(&serde_json::json!({ "name": name, "description": mark }))
            })
            .await?;
        Ok(env.data.into_iter().next().map(to_snapshot))
    }

    /// The instance's snapshots, by description (the mark); none once the instance is gone.
    async fn find_snapshot(
        &self,
        server_id: &str,
        mark: &str,
        _since: i64,
    ) -> Result<SnapshotLookup, CloudError> {
        let Some(id) = numeric_id(server_id) else {
            return Ok(SnapshotLookup::Absent);
        };
        let all: Option<Vec<ContaboSnapshot>> = none_if_not_found(
            self.list(&format!("/v1/compute/instances/{id}/snapshots"))
                .await,
        )?;
        Ok(SnapshotLookup::first(
            all.unwrap_or_default(),
            |s| s.description == mark,
            to_snapshot,
        ))
    }

    /// A rollback deletes the instance's snapshots newer than the one rolled back to.
    fn restore_drops_newer_snapshots(&self) -> bool {
        true
    }

    /// The rollback of the instance to the snapshot (Contabo deletes the instance's newer snapshots).
    async fn restore_snapshot(&self, server_id: &str, snapshot_id: &str) -> Result<(), CloudError> {
        let instance = numeric_id(server_id).ok_or_else(|| not_an_id("contabo", server_id))?;
        let snap = segment_id(snapshot_id).ok_or_else(|| not_an_id("contabo", snapshot_id))?;
        let url = self.url(&format!(
            "/v1/compute/instances/{instance}/snapshots/{snap}/rollback"
        ));
        self.send(false, || {
            self.http
                .request(Method::POST, &url)
                .json(&serde_json::json!({}))
        })
        .await?;
        Ok(())
    }

    async fn delete_snapshot(&self, server_id: &str, id: &str) -> Result<(), CloudError> {
        let (Some(instance), Some(snap)) = (numeric_id(server_id), segment_id(id)) else {
            return Ok(());
        };
        let url = self.url(&format!(
            "/v1/compute/instances/{instance}/snapshots/{snap}"
        ));
        done_if_not_found(
            self.send(true, || self.http.request(Method::DELETE, &url))
                .await,
        )
    }

    /// Contabo restores a snapshot only onto the instance it was taken of (rollback).
    fn snapshot_image(&self, _id: &str) -> Result<String, CloudError> {
        Err(CloudError::Unsupported(
            "contabo restores a snapshot only onto the instance it was taken of (a rollback), not into a new server".into(),
        ))
    }

    fn resize_needs_power_off(&self) -> bool {
        true
    }

    fn resize_rule(&self) -> ResizeRule {
        ResizeRule::Unsupported
    }
    /// A Windows create that made no server may have made its password secret.
    async fn forget_create(&self, owner_tag: &str) -> Result<(), CloudError> {
        self.delete_password_secrets(&[owner_tag.to_string()]).await
    }

    fn accepts_root_password(&self, windows: bool) -> bool {
        // For RDP; kept as a secret whose ID the create takes. Linux servers stay key-only.
        windows
    }

    fn vendor(&self) -> &'static str {
        "contabo"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::RetryPolicy;

    const SECRET: &str = "TOPSECRET-9f8e7d";

    fn client(creds: &str) -> Contabo {
        Contabo::new(
            HttpClient::new("contabo", RetryPolicy::default()),
            Some("http://127.0.0.1:9".into()),
            creds,
        )
    }

    #[tokio::test]
    async fn bad_credentials_fail_every_call_without_leaking() {
        for creds in [
            format!(r#"{{"clientId":"id","clientSecret":"{SECRET}","apiUser":"u"}}"#),
            format!(r#"{{"clientId":"id","clientSecret":"{SECRET}", oops}}"#),
            format!(
                r#"{{"clientId":"id","clientSecret":{{"x":"{SECRET}"}},"apiUser":"u","apiPassword":"p"}}"#
            ),
            format!(r#"["{SECRET}"]"#),
            SECRET.to_string(),
        ] {
            let c = client(&creds);
            assert!(!format!("{c:?}").contains(SECRET));
            let spec = ServerSpec {
                name: "a".into(),
                region: "EU".into(),
                size: "V92".into(),
                image: "x".into(),
                ssh_keys: vec![],
                user_data: None,
                tags: vec![],
                backups: false,
                ipv6: false,
                root_password: None,
                options: Default::default(),
            };
            let errors = [
                c.verify().await.err(),
                c.create(&spec).await.err(),
                c.get("1").await.err(),
                c.find_by_tag("t").await.err(),
                c.delete("1").await.err(),
                c.power("1", PowerAction::On).await.err(),
                c.sizes().await.err(),
                c.images().await.err(),
                c.regions().await.err(),
            ];
            for e in errors {
                let e = e.expect("an error");
                assert!(matches!(e, CloudError::Credentials(_)), "{e:?}");
                assert!(e.is_auth());
                assert!(!e.to_string().contains(SECRET), "{e}");
                assert!(!format!("{e:?}").contains(SECRET), "{e:?}");
            }
        }
    }

    #[test]
    fn good_credentials_parse_and_stay_hidden() {
        let c = parse_credentials(&format!(
            r#"{{"clientId":"id","clientSecret":"{SECRET}","apiUser":"me@example.com","apiPassword":"{SECRET}2"}}"#
        ))
        .unwrap();
        assert_eq!(c.auth_url, DEFAULT_AUTH_URL);
        assert!(!format!("{c:?}").contains(SECRET));
    }

    #[test]
    fn display_names_carry_the_ownership_tag() {
        let tag = crate::cloud::uid_tag("0f6b3a55-1c53-4bd1-9c39-d2e8f8d1b1aa");
        let mut spec = ServerSpec {
            name: "web-1".into(),
            region: "EU".into(),
            size: "V92".into(),
            image: "x".into(),
            ssh_keys: vec![],
            user_data: None,
            tags: vec![tag.clone(), "web".into()],
            backups: false,
            ipv6: false,
            root_password: None,
            options: Default::default(),
        };
        assert_eq!(display_name(&spec), format!("web-1 {tag}"));
        assert_eq!(tags_in(&display_name(&spec)), vec![tag.clone()]);
        spec.name = format!("web-1 ({tag})");
        assert_eq!(display_name(&spec), spec.name);
        assert_eq!(tags_in(&spec.name), vec![tag.clone()]);
        spec.name = "x".repeat(300);
        let d = display_name(&spec);
        assert_eq!(d.chars().count(), MAX_DISPLAY_NAME);
        assert!(d.ends_with(&tag));
    }

    #[test]
    fn tags_are_added_to_and_removed_from_display_names() {
        let tag = crate::cloud::uid_tag("0f6b3a55-1c53-4bd1-9c39-d2e8f8d1b1aa");
        let other = crate::cloud::uid_tag("11111111-1c53-4bd1-9c39-d2e8f8d1b1aa");
        let tagged = name_with_tags("made by hand", &[&tag]);
        assert_eq!(tags_in(&tagged), vec![tag.clone()]);
        assert_eq!(without_tag(&tagged, &tag, 7), "made by hand");
        let both = format!("web ({tag}) {other}");
        assert_eq!(without_tag(&both, &tag, 7), format!("web {other}"));
        assert_eq!(without_tag(&tag, &tag, 7), "instance-7");
        // Only ownership tags live in the name.
        assert_eq!(name_with_tags("web", &["blue"]), "web");
    }

    #[test]
    fn a_cancelled_instance_reads_as_deletion_scheduled() {
        let i = |cancel: serde_json::Value| -> Instance {
            serde_json::from_value(serde_json::json!({
                "instanceId": 7, "displayName": "web", "status": "running", "cancelDate": cancel
            }))
            .unwrap()
        };
        let s = to_server(i(serde_json::json!("2026-12-31")));
        assert_eq!(s.state, ServerState::Deleting);
        assert!(
            s.deletion_scheduled,
            "cleanup would poll every few seconds for a month"
        );
        let s = to_server(i(serde_json::json!("")));
        assert!(!s.deletion_scheduled);
        assert_eq!(s.state, ServerState::Running);
    }

    #[test]
    fn product_table_is_sane() {
        for p in PRODUCTS {
            let m: Decimal = p.monthly.parse().unwrap();
            assert!(
                m > Decimal::ZERO && p.vcpus > 0 && p.disk_gb > 0,
                "{}",
                p.id
            );
        }
    }
}

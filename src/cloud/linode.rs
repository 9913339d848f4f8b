//! Linode (Akamai) instances (API v4, bearer token). Vendor DTOs stay in this file.
//!
//! Notes on the vendor:
//! - Labels must be 3-64 characters of letters, digits, `-`, `_`, `.`, start with a letter and contain no
//!   `--`, `__` or `..`: [`linode_label`] turns any name into such a label.
//! - Tags are 3-50 characters, but our ownership tag (`quartermaster-uid-<uid>`) is 54: on the wire it is
//!   shortened to `qm-uid-<uid>` (see [`to_wire_tag`]) and mapped back when reading, so callers only ever
//!   see the full form.
//! - `find_by_tag` lists every instance and filters client-side: the `X-Filter` header the real API offers
//!   is declared in Linode's OpenAPI document as an object-typed header without a JSON media type, so a
//!   spec-conforming server (and the Prism mock) rejects any JSON value in it.
//! - Resizes migrate the instance (Linode powers it down and up again by itself), so callers need not
//!   power off first.

mod vpc;

use std::net::Ipv4Addr;

use async_trait::async_trait;
use base64::Engine as _;
use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::rest::{
    BearerApi, done_if_not_found, none_if_not_found, not_an_id, numeric_id, tag_list_to_write,
};
use super::{
    CloudError, ComputeProvider, Image, PowerAction, Region, Server, ServerSpec, ServerState, Size,
    Snapshot, SnapshotLookup, SnapshotState, UID_TAG_PREFIX, decimal_from_f64, generate_password,
};
use crate::http::HttpClient;

/// The public API (paths start with `/v4`).
pub const DEFAULT_ENDPOINT: &str = "https://api.linode.com";

/// Longest tag Linode accepts.
const MAX_TAG_LEN: usize = 50;
/// Wire prefix of the ownership tag (the full prefix does not fit Linode's 50 characters).
const WIRE_UID_PREFIX: &str = "qm-uid-";

/// A Linode account.
#[derive(Debug)]
pub struct Linode {
    api: BearerApi,
}

impl Linode {
    /// A client for `endpoint` (default: the public API) with a personal access token.
    pub fn new(http: HttpClient, endpoint: Option<String>, credentials: &str) -> Self {
        Self {
            api: BearerApi::new(http, endpoint, DEFAULT_ENDPOINT, credentials),
        }
    }

    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.api.req(method, path)
    }

    /// A POST action on an instance (boot, shutdown, reboot, resize).
    async fn action(
        &self,
        id: &str,
        action: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(), CloudError> {
        let id = numeric_id(id).ok_or_else(|| not_an_id("linode", id))?;
        let mut r = self.req(Method::POST, &format!("/v4/linode/instances/{id}/{action}"));
        if let Some(b) = body {
            r = r.json(&b);
        }
        self.api.http.send(r, false).await?;
        Ok(())
    }

    /// An instance as Linode sends it; `None` when it does not exist.
    async fn instance(&self, id: &str) -> Result<Option<Instance>, CloudError> {
        let Some(id) = numeric_id(id) else {
            return Ok(None);
        };
        none_if_not_found(
            self.api
                .http
                .json::<Instance>(
                    self.req(Method::GET, &format!("/v4/linode/instances/{id}")),
                    true,
                )
                .await,
        )
    }

    /// Adds (`present`) or removes a tag: Linode replaces the whole tag list on `PUT`, so the current
    /// list is read first. Removing from an instance that is gone is done; adding to one is a 404.
    async fn set_tag(&self, id: &str, tag: &str, present: bool) -> Result<(), CloudError> {
        let found = self.instance(id).await?;
        let current = found.as_ref().map(|i| i.tags.as_slice());
        let (Some(i), Some(tags)) = (
            &found,
            tag_list_to_write("linode", id, current, &to_wire_tag(tag), present)?,
        ) else {
            return Ok(());
        };
        // Setting the same list twice is harmless: idempotent.
        self.api
            .http
            .send(
                self.req(Method::PUT, &format!("/v4/linode/instances/{}", i.id))
                    .json(&serde_json::json!({ "tags": tags })),
                true,
            )
            .await?;
        Ok(())
    }

    /// Every page of a paginated collection (`data`, `page`, `pages`).
    async fn list<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<Vec<T>, CloudError> {
        let mut out = Vec::new();
        let mut page = 1u32;
        loop {
            let p: Page<T> = self
                .api
                .http
                .json(
                    self.req(Method::GET, &format!("{path}?page={page}&page_size=500")),
                    true,
                )
                .await?;
            let n = p.data.len();
            out.extend(p.data);
            // A hard cap as well, so a misbehaving server cannot keep us paging forever.
            if n == 0 || page >= p.pages || page >= 100 {
                break;
            }
            page += 1;
        }
        Ok(out)
    }
}

/// A disk of an instance (`/linode/instances/{id}/disks`): `size` in MB.
#[derive(Deserialize)]
struct Disk {
    id: u64,
    #[serde(default)]
    filesystem: String,
    #[serde(default)]
    size: u64,
}

/// A private image (what Linode makes of a disk): `size` in MB, `status` `creating`,
/// `pending_upload` or `available`, `created` without a time zone (UTC).
#[derive(Deserialize)]
struct PrivateImage {
    id: String,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    status: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    created: Option<String>,
    #[serde(default)]
    is_public: bool,
}

fn to_snapshot(i: PrivateImage) -> Snapshot {
    Snapshot {
        state: match i.status.as_str() {
            "available" => SnapshotState::Available,
            _ => SnapshotState::Pending,
        },
        // MB to GB (10^3), as Linode prices image storage; 0 while it is being made.
        size_gb: i
            .size
            .filter(|mb| *mb > 0)
            .map(|mb| rust_decimal::Decimal::from(mb) / rust_decimal::Decimal::from(1000u64)),
        created_at: i.created.map(|c| {
            if c.ends_with('Z') || c.contains('+') {
                c
            } else {
                format!("{c}Z")
            }
        }),
        id: i.id,
        name: i.label.unwrap_or_default(),
    }
}

/// The path of private image `id` (`private/<n>`, as Linode writes it in its own paths), if it is one.
fn private_image_path(id: &str) -> Option<String> {
    let n = numeric_id(id.strip_prefix("private/")?)?;
    Some(format!("/v4/images/private/{n}"))
}

#[derive(Deserialize)]
#[serde(bound = "T: Deserialize<'de>")]
struct Page<T> {
    #[serde(default = "Vec::new")]
    data: Vec<T>,
    #[serde(default)]
    pages: u32,
}

#[derive(Deserialize)]
struct Instance {
    id: u64,
    #[serde(default)]
    label: String,
    #[serde(default)]
    status: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    ipv4: Vec<String>,
    #[serde(default)]
    ipv6: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    /// Whether the Backup service is on.
    #[serde(default)]
    backups: Option<LinodeBackups>,
}

#[derive(Deserialize)]
struct LinodeBackups {
    #[serde(default)]
    enabled: bool,
}

#[derive(Serialize)]
struct CreateInstance<'a> {
    label: String,
    #[serde(rename = "type")]
    kind: &'a str,
    region: &'a str,
    image: &'a str,
    root_pass: String,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    authorized_keys: &'a [String],
    tags: Vec<String>,
    backups_enabled: bool,
    booted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata>,
    #[serde(skip_serializing_if = "Option::is_none")]
    firewall_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stackscript_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stackscript_data: Option<serde_json::Value>,
    /// Public then VPC, when the server joins a VPC; else Linode's default (public only).
    #[serde(skip_serializing_if = "Option::is_none")]
    interfaces: Option<Vec<vpc::Interface>>,
}

#[derive(Serialize)]
struct Metadata {
    user_data: String,
}

#[derive(Deserialize)]
struct LinodeType {
    id: String,
    #[serde(default)]
    vcpus: u32,
    /// MB.
    #[serde(default)]
    memory: u64,
    /// MB.
    #[serde(default)]
    disk: u64,
    price: Price,
    /// Outbound transfer included each month, GB.
    #[serde(default)]
    transfer: Option<f64>,
    /// Add-ons priced per type (backups).
    #[serde(default)]
    addons: Addons,
}

/// A Linode type's add-ons.
#[derive(Deserialize, Default)]
struct Addons {
    #[serde(default)]
    backups: BackupAddon,
}

/// The backups add-on of a Linode type: its base price.
#[derive(Deserialize, Default)]
struct BackupAddon {
    #[serde(default)]
    price: Option<Price>,
}

/// A Linode's transfer in one month.
#[derive(Deserialize)]
struct MonthTransfer {
    #[serde(default)]
    bytes_out: i64,
}

/// The last sample of a `[[timestamp, reading], ...]` series (a series nested one level deeper, as a
/// mock built from Linode's document sends it, is read the same way).
fn last_sample(series: &serde_json::Value) -> Option<f64> {
    let last = series.as_array()?.last()?;
    match last.get(1).and_then(serde_json::Value::as_f64) {
        Some(v) => Some(v),
        None => last_sample(last),
    }
}

/// The figures of a `/stats` answer (its graphs under `data`, or at the top as Linode's document has
/// them): CPU percent and public IPv4 bits per second.
fn stats_metrics(v: &serde_json::Value) -> super::ServerMetrics {
    let d = if v["data"].is_object() { &v["data"] } else { v };
    super::ServerMetrics {
        cpu_percent: last_sample(&d["cpu"]),
        network_in_bps: last_sample(&d["netv4"]["in"]),
        network_out_bps: last_sample(&d["netv4"]["out"]),
        ..Default::default()
    }
}

#[derive(Deserialize)]
struct Price {
    #[serde(default)]
    hourly: f64,
    #[serde(default)]
    monthly: f64,
}

#[derive(Deserialize)]
struct LinodeImage {
    id: String,
    #[serde(default)]
    label: String,
    #[serde(default)]
    is_public: bool,
}

#[derive(Deserialize)]
struct LinodeRegion {
    id: String,
    #[serde(default)]
    label: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    capabilities: Vec<String>,
}

/// A label Linode accepts, derived from `name`: invalid characters become `-`, runs of `-`, `_` or `.`
/// collapse to one, a non-letter start gets a `qm-` prefix, and the result is 3-64 characters.
pub fn linode_label(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        let c = if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
            c
        } else {
            '-'
        };
        if matches!(c, '-' | '_' | '.') && out.ends_with(c) {
            continue;
        }
        out.push(c);
    }
    if !out.starts_with(|c: char| c.is_ascii_alphabetic()) {
        let rest = out.trim_start_matches(['-', '_', '.']);
        out = format!("qm-{rest}");
    }
    out.truncate(64);
    while out.len() < 3 {
        out.push(if out.ends_with('0') { '1' } else { '0' });
    }
    out
}

/// A tag as sent to Linode (3-50 characters): the ownership tag shortened to `qm-uid-<uid>`, other tags
/// longer than 50 characters truncated.
fn to_wire_tag(tag: &str) -> String {
    let mut t = match tag.strip_prefix(UID_TAG_PREFIX) {
        Some(uid) => format!("{WIRE_UID_PREFIX}{uid}"),
        None => tag.to_string(),
    };
    if t.len() > MAX_TAG_LEN {
        let mut cut = MAX_TAG_LEN;
        while !t.is_char_boundary(cut) {
            cut -= 1;
        }
        t.truncate(cut);
    }
    t
}

/// A tag as read from Linode, the ownership tag restored to its full form.
fn from_wire_tag(tag: String) -> String {
    match tag.strip_prefix(WIRE_UID_PREFIX) {
        Some(uid) => format!("{UID_TAG_PREFIX}{uid}"),
        None => tag,
    }
}

fn to_state(status: &str) -> ServerState {
    match status {
        "provisioning" | "cloning" | "restoring" | "rebuilding" => ServerState::Provisioning,
        "booting" | "rebooting" => ServerState::Starting,
        "running" => ServerState::Running,
        "shutting_down" => ServerState::Stopping,
        "offline" | "stopped" => ServerState::Off,
        "resizing" | "migrating" => ServerState::Resizing,
        "deleting" => ServerState::Deleting,
        _ => ServerState::Failed,
    }
}

fn to_server(i: Instance) -> Server {
    let mut public_ipv4 = None;
    let mut private_ipv4 = None;
    for ip in &i.ipv4 {
        match ip.parse::<Ipv4Addr>() {
            Ok(a) if a.is_private() => {
                private_ipv4.get_or_insert_with(|| ip.clone());
            }
            _ => {
                public_ipv4.get_or_insert_with(|| ip.clone());
            }
        }
    }
    let state = to_state(&i.status);
    Server {
        id: i.id.to_string(),
        name: i.label,
        price: None,
        deletion_scheduled: false,
        initial_password: None,
        backups: i.backups.as_ref().map(|b| b.enabled),
        busy: !matches!(
            state,
            ServerState::Running | ServerState::Off | ServerState::Failed
        ),
        state,
        size: i.kind.unwrap_or_default(),
        region: i.region.unwrap_or_default(),
        image: i.image,
        public_ipv4,
        // Linode reports the SLAAC address with its prefix length (`.../128`).
        public_ipv6: i
            .ipv6
            .map(|v| v.split('/').next().unwrap_or_default().to_string())
            .filter(|v| !v.is_empty()),
        private_ipv4,
        tags: i.tags.into_iter().map(from_wire_tag).collect(),
    }
}

#[async_trait]
impl ComputeProvider for Linode {
    async fn verify(&self) -> Result<(), CloudError> {
        let _: serde_json::Value = self
            .api
            .http
            .json(self.req(Method::GET, "/v4/profile"), true)
            .await?;
        Ok(())
    }

    async fn create(&self, spec: &ServerSpec) -> Result<Server, CloudError> {
        // Linode requires a root password whenever an image is given; without one from the spec a strong
        // random one is used (and never shown: SSH keys are the way in).
        let root_pass = spec.root_password.clone().unwrap_or_else(generate_password);
        let interfaces = self.subnet_for(spec).await?.map(vpc::interfaces);
        let body = CreateInstance {
            label: linode_label(&spec.name),
            kind: &spec.size,
            region: &spec.region,
            image: &spec.image,
            root_pass,
            authorized_keys: &spec.ssh_keys,
            tags: spec.tags.iter().map(|t| to_wire_tag(t)).collect(),
            backups_enabled: spec.backups,
            booted: true,
            metadata: spec.user_data.as_ref().map(|u| Metadata {
                user_data: base64::engine::general_purpose::STANDARD.encode(u),
            }),
            firewall_id: spec
                .options
                .firewall_id
                .as_deref()
                .and_then(|f| f.parse().ok()),
            stackscript_id: spec.options.stack_script.as_ref().map(|s| s.0),
            stackscript_data: spec
                .options
                .stack_script
                .as_ref()
                .map(|s| s.1.clone())
                .filter(|d| d.as_object().is_some_and(|o| !o.is_empty())),
            interfaces,
        };
        // NB: Linode always assigns a public IPv6 (SLAAC); `spec.ipv6` cannot turn it off.
        let i: Instance = self
            .api
            .http
            .json(
                self.req(Method::POST, "/v4/linode/instances").json(&body),
                false,
            )
            .await?;
        Ok(to_server(i))
    }

    async fn get(&self, id: &str) -> Result<Option<Server>, CloudError> {
        let Some(id) = numeric_id(id) else {
            return Ok(None);
        };
        Ok(self.instance(id).await?.map(to_server))
    }

    async fn find_by_tag(&self, tag: &str) -> Result<Vec<Server>, CloudError> {
        let wire = to_wire_tag(tag);
        let all: Vec<Instance> = self.list("/v4/linode/instances").await?;
        Ok(all
            .into_iter()
            .filter(|i| i.tags.contains(&wire))
            .map(to_server)
            .collect())
    }

    /// Every instance, 500 a page.
    async fn list_servers(&self) -> Result<Option<Vec<Server>>, CloudError> {
        let all: Vec<Instance> = self.list("/v4/linode/instances").await?;
        Ok(Some(all.into_iter().map(to_server).collect()))
    }

    async fn delete(&self, id: &str) -> Result<(), CloudError> {
        let Some(id) = numeric_id(id) else {
            return Ok(());
        };
        done_if_not_found(
            self.api
                .http
                .send(
                    self.req(Method::DELETE, &format!("/v4/linode/instances/{id}")),
                    true,
                )
                .await,
        )
    }

    async fn add_tag(&self, id: &str, tag: &str) -> Result<(), CloudError> {
        self.set_tag(id, tag, true).await
    }

    async fn remove_tag(&self, id: &str, tag: &str) -> Result<(), CloudError> {
        self.set_tag(id, tag, false).await
    }

    async fn power(&self, id: &str, action: PowerAction) -> Result<(), CloudError> {
        match action {
            // boot/reboot take an optional config_id; an empty object means "the last booted config".
            PowerAction::On => self.action(id, "boot", Some(serde_json::json!({}))).await,
            PowerAction::Off => self.action(id, "shutdown", None).await,
            PowerAction::Reboot => self.action(id, "reboot", Some(serde_json::json!({}))).await,
        }
    }

    async fn resize(&self, id: &str, size: &str) -> Result<(), CloudError> {
        // Disks grow with the plan (allow_auto_disk_resize defaults to true); a cold migration powers the
        // Linode off and back on by itself.
        self.action(id, "resize", Some(serde_json::json!({ "type": size })))
            .await
    }

    async fn sizes(&self) -> Result<Vec<Size>, CloudError> {
        let types: Vec<LinodeType> = self.list("/v4/linode/types").await?;
        Ok(types
            .into_iter()
            .map(|t| Size {
                slug: t.id,
                vcpus: t.vcpus,
                memory_mb: t.memory,
                disk_gb: t.disk / 1024,
                // Base prices; a few regions (`region_prices`) cost more.
                price_hourly: decimal_from_f64(t.price.hourly),
                price_monthly: decimal_from_f64(t.price.monthly),
                currency: "USD".into(),
                regions: Vec::new(),
                transfer_bytes: t.transfer.map(super::traffic::gb),
                backup_price: t
                    .addons
                    .backups
                    .price
                    .map(|p| (decimal_from_f64(p.hourly), decimal_from_f64(p.monthly))),
            })
            .collect())
    }

    async fn images(&self) -> Result<Vec<Image>, CloudError> {
        let images: Vec<LinodeImage> = self.list("/v4/images").await?;
        Ok(images
            .into_iter()
            .map(|i| Image {
                name: if i.label.is_empty() {
                    i.id.clone()
                } else {
                    i.label
                },
                slug: i.id,
                kind: if i.is_public {
                    "distribution".into()
                } else {
                    "snapshot".into()
                },
            })
            .collect())
    }

    async fn regions(&self) -> Result<Vec<Region>, CloudError> {
        let regions: Vec<LinodeRegion> = self.list("/v4/regions").await?;
        Ok(regions
            .into_iter()
            .map(|r| Region {
                available: r.status == "ok"
                    && (r.capabilities.is_empty() || r.capabilities.iter().any(|c| c == "Linodes")),
                name: if r.label.is_empty() {
                    r.id.clone()
                } else {
                    r.label
                },
                slug: r.id,
            })
            .collect())
    }

    /// An image of the instance's largest disk that is not swap (Linode images a disk, not an
    /// instance), labelled with the mark. Linode names it at once (`creating`).
    async fn create_snapshot(
        &self,
        server_id: &str,
        mark: &str,
    ) -> Result<Option<Snapshot>, CloudError> {
        let id = numeric_id(server_id).ok_or_else(|| not_an_id("linode", server_id))?;
        let disks: Vec<Disk> = self
            .list(&format!("/v4/linode/instances/{id}/disks"))
            .await?;
        let Some(disk) = disks
            .iter()
            .filter(|d| d.filesystem != "swap")
            .max_by_key(|d| d.size)
        else {
            return Err(CloudError::Unsupported(format!(
                "linode instance {id} has no disk to image"
            )));
        };
        let i: PrivateImage = self
            .api
            .http
            .json(
                self.req(Method::POST, "/v4/images")
                    .json(&serde_json::json!({
                        "disk_id": disk.id, "label": mark, "description": mark
                    })),
                false,
            )
            .await?;
        Ok(Some(to_snapshot(i)))
    }

    /// The account's private images by label (the mark).
    async fn find_snapshot(
        &self,
        _server_id: &str,
        mark: &str,
        _since: i64,
    ) -> Result<SnapshotLookup, CloudError> {
        let all: Vec<PrivateImage> = self.list("/v4/images").await?;
        Ok(SnapshotLookup::first(
            all,
            |i| !i.is_public && i.label.as_deref() == Some(mark),
            to_snapshot,
        ))
    }

    /// `GET /v4/images/private/{n}`.
    async fn snapshot(&self, _server_id: &str, id: &str) -> Result<Option<Snapshot>, CloudError> {
        let Some(path) = private_image_path(id) else {
            return Ok(None);
        };
        let found = self
            .api
            .http
            .json::<PrivateImage>(self.req(Method::GET, &path), true)
            .await;
        Ok(none_if_not_found(found)?.map(to_snapshot))
    }

    /// The account's private images carrying a mark (a list of 50,000 or more is not complete: `None`).
    async fn marked_snapshots(&self) -> Result<Option<Vec<Snapshot>>, CloudError> {
        let all: Vec<PrivateImage> = self.list("/v4/images").await?;
        if all.len() >= 100 * 500 {
            return Ok(None);
        }
        Ok(Some(
            all.into_iter()
                .filter(|i| {
                    !i.is_public
                        && i.label
                            .as_deref()
                            .is_some_and(|l| l.starts_with(super::snapshot::SNAPSHOT_MARK_PREFIX))
                })
                .map(to_snapshot)
                .collect(),
        ))
    }

    async fn delete_snapshot(&self, _server_id: &str, id: &str) -> Result<(), CloudError> {
        let Some(path) = private_image_path(id) else {
            return Ok(());
        };
        done_if_not_found(
            self.api
                .http
                .send(self.req(Method::DELETE, &path), true)
                .await,
        )
    }

    /// An instance is created from a private image by its ID (`private/<n>`) as the image.
    fn snapshot_image(&self, id: &str) -> Result<String, CloudError> {
        private_image_path(id).ok_or_else(|| not_an_id("linode", id))?;
        Ok(id.to_string())
    }

    /// `bytes_out` of the Linode's transfer in that month (`/linode/instances/{id}/transfer/{y}/{m}`).
    async fn transfer(
        &self,
        server_id: &str,
        month: super::Month,
        _now: i64,
    ) -> Result<Option<i64>, CloudError> {
        let Some(id) = numeric_id(server_id) else {
            return Ok(None);
        };
        let path = format!(
            "/v4/linode/instances/{id}/transfer/{}/{}",
            month.year, month.month
        );
        let found: Option<MonthTransfer> =
            none_if_not_found(self.api.http.json(self.req(Method::GET, &path), true).await)?;
        Ok(found.map(|t| t.bytes_out))
    }

    /// `billable` of `/account/transfer` (GB beyond the pool this month): the account's own figure.
    async fn account_overage(&self) -> Result<Option<i64>, CloudError> {
        let v: serde_json::Value = self
            .api
            .http
            .json(self.req(Method::GET, "/v4/account/transfer"), true)
            .await?;
        Ok(v["billable"].as_f64().map(super::traffic::gb))
    }

    /// Network transfer overage: US$0.005 per GB (Linode's pricing page).
    fn transfer_price(&self) -> Option<(rust_decimal::Decimal, &'static str)> {
        Some((rust_decimal::Decimal::new(5, 3), "USD"))
    }

    /// CPU and public IPv4 traffic, the latest of the last 24 hours' samples (`/stats`, one call).
    async fn metrics(
        &self,
        server_id: &str,
        _now: i64,
    ) -> Result<Option<super::ServerMetrics>, CloudError> {
        let Some(id) = numeric_id(server_id) else {
            return Ok(None);
        };
        let path = format!("/v4/linode/instances/{id}/stats");
        let found: Option<serde_json::Value> =
            none_if_not_found(self.api.http.json(self.req(Method::GET, &path), true).await)?;
        Ok(found.map(|v| stats_metrics(&v)))
    }

    /// Custom images: US$0.10 per GB-month (Linode's pricing page).
    fn snapshot_price(&self) -> Option<(rust_decimal::Decimal, &'static str)> {
        Some((rust_decimal::Decimal::new(10, 2), "USD"))
    }

    /// `firewall_id` (a number), StackScripts, and a VPC (a `vpc` interface on one of its subnets,
    /// [`vpc`]) at create.
    fn honours(&self) -> super::Honours {
        super::Honours {
            vpc: true,
            subnet: true,
            firewall: true,
            stack_script: true,
            ..Default::default()
        }
    }

    fn refuse_unsupported(&self, spec: &ServerSpec) -> Result<(), String> {
        super::refuse_options("linode", &spec.options, self.honours())?;
        let o = &spec.options;
        [
            ("spec.firewallID", &o.firewall_id),
            ("spec.vpcID", &o.vpc_id),
            ("spec.subnetID", &o.subnet_id),
        ]
        .into_iter()
        .find_map(|(field, v)| {
            let v = v.as_deref()?;
            v.parse::<u64>()
                .is_err()
                .then(|| format!("{field} {v:?}: linode IDs are numbers"))
        })
        .map_or(Ok(()), Err)
    }

    async fn find_vpcs(&self, name: &str) -> Result<Vec<super::Vpc>, CloudError> {
        self.vpcs_named(name).await
    }

    /// The subnet a VPC create names must be one of the VPC's own (or the VPC must have only one).
    async fn check_create(&self, spec: &ServerSpec) -> Result<(), CloudError> {
        self.subnet_for(spec).await.map(|_| ())
    }

    async fn create_vpc(&self, spec: &super::VpcSpec) -> Result<super::Vpc, CloudError> {
        self.make_vpc(spec).await
    }

    async fn delete_vpc(&self, id: &str) -> Result<(), CloudError> {
        self.remove_vpc(id).await
    }

    fn resize_needs_power_off(&self) -> bool {
        false
    }

    /// "Unencoded data must not exceed 65535 bytes" (Linode's API reference, `metadata.user_data`).
    fn user_data_limit(&self) -> Option<usize> {
        Some(65_535)
    }
    fn resize_rule(&self) -> crate::cloud::ResizeRule {
        crate::cloud::ResizeRule::Any
    }
    fn accepts_root_password(&self, _windows: bool) -> bool {
        true
    }

    fn vendor(&self) -> &'static str {
        "linode"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_give_the_latest_cpu_and_traffic_wrapped_or_not() {
        let graphs = serde_json::json!({
            "cpu": [[1, 10.0], [2, 42.5]],
            "netv4": {"in": [[2, 800.0]], "out": [[1, 5.0], [2, 1600.0]]},
        });
        let want = crate::cloud::ServerMetrics {
            cpu_percent: Some(42.5),
            network_in_bps: Some(800.0),
            network_out_bps: Some(1600.0),
            ..Default::default()
        };
        assert_eq!(stats_metrics(&graphs), want);
        assert_eq!(stats_metrics(&serde_json::json!({ "data": graphs })), want);
        assert_eq!(stats_metrics(&serde_json::json!({})), Default::default());
    }

    fn valid(label: &str) -> bool {
        let b = label.as_bytes();
        (3..=64).contains(&b.len())
            && b[0].is_ascii_alphabetic()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            && !label.contains("--")
            && !label.contains("__")
            && !label.contains("..")
    }

    #[test]
    fn labels_are_valid() {
        for name in [
            "web-1",
            "1web",
            "a",
            "",
            "--x--y__z..",
            "my vm (prod)",
            "é",
            &"x".repeat(100),
        ] {
            let l = linode_label(name);
            assert!(valid(&l), "{name:?} -> {l:?}");
        }
        assert_eq!(linode_label("web-1"), "web-1");
        assert_eq!(linode_label("my vm"), "my-vm");
    }

    #[test]
    fn ownership_tag_round_trips_within_50_chars() {
        let full = crate::cloud::uid_tag("0f6b3a55-1c53-4bd1-9c39-d2e8f8d1b1aa");
        let wire = to_wire_tag(&full);
        assert!(wire.len() <= MAX_TAG_LEN, "{wire}");
        assert_eq!(from_wire_tag(wire), full);
        assert_eq!(to_wire_tag("web"), "web");
    }

    #[test]
    fn states() {
        assert_eq!(to_state("running"), ServerState::Running);
        assert_eq!(to_state("offline"), ServerState::Off);
        assert_eq!(to_state("migrating"), ServerState::Resizing);
        assert_eq!(to_state("rebooting"), ServerState::Starting);
        assert_eq!(to_state("weird"), ServerState::Failed);
    }
}

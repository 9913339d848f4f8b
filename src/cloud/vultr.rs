//! Vultr instances (API v2, bearer token). Vendor DTOs stay in this file.
//!
//! Notes on the vendor:
//! - `image` picks the create field: a number → `os_id`, `app:<id>` → `app_id` (one-click/marketplace
//!   apps, listed by [`ComputeProvider::images`] with that slug), `snapshot:<id>` → `snapshot_id`, anything
//!   else → `image_id` (marketplace image slug).
//! - SSH keys are Vultr SSH key IDs (`sshkey_id`); public keys must be registered with Vultr first.
//! - Vultr generates the root password and returns it once in the create answer (`default_password`): it
//!   is not decoded, so it can never reach a log, an error or a status.
//! - Prices: the plan list has `monthly_cost` only (the API document declares no hourly price). When an
//!   answer carries `hourly_cost` it is used; otherwise hourly = monthly / 730, rounded to 6 decimal places.
//! - Lists page with a cursor (`meta.links.next`).
//! - `find_by_tag` uses the `tag` list filter (deprecated in Vultr's API document, no replacement given)
//!   and checks the tags of each answer itself.

use async_trait::async_trait;
use base64::Engine as _;
use reqwest::Method;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::rest::{
    BearerApi, done_if_not_found, none_if_not_found, not_an_id, page_items, segment_id,
    tag_list_to_write,
};
use super::{
    CloudError, ComputeProvider, Image, PowerAction, Region, Server, ServerSpec, ServerState, Size,
    Snapshot, SnapshotLookup, SnapshotState, decimal_from_f64,
};
use crate::http::HttpClient;

/// The public API (paths without the `/v2` prefix are appended to it).
pub const DEFAULT_ENDPOINT: &str = "https://api.vultr.com/v2";

/// Hours in a billing month, for prices given per month only.
const HOURS_PER_MONTH: u32 = 730;

/// A Vultr account.
#[derive(Debug)]
pub struct Vultr {
    api: BearerApi,
}

impl Vultr {
    /// A client for `endpoint` (default: the public API, `https://api.vultr.com/v2`) with an API key.
    pub fn new(http: HttpClient, endpoint: Option<String>, credentials: &str) -> Self {
        Self {
            api: BearerApi::new(http, endpoint, DEFAULT_ENDPOINT, credentials),
        }
    }

    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.api.req(method, path)
    }

    /// An instance as Vultr sends it; `None` when it does not exist.
    async fn instance(&self, id: &str) -> Result<Option<Instance>, CloudError> {
        let Some(id) = segment_id(id) else {
            return Ok(None);
        };
        let found = self
            .api
            .http
            .json::<InstanceEnvelope>(self.req(Method::GET, &format!("/instances/{id}")), true)
            .await;
        Ok(none_if_not_found(found)?.map(|env| env.instance))
    }

    /// Adds (`present`) or removes a tag: `PATCH` replaces the whole `tags` list, so the current list is
    /// read first. Removing from an instance that is gone is done; adding to one is a 404.
    async fn set_tag(&self, id: &str, tag: &str, present: bool) -> Result<(), CloudError> {
        let found = self.instance(id).await?;
        let current = found.as_ref().map(|i| i.tags.as_slice());
        let (Some(i), Some(tags)) = (
            &found,
            tag_list_to_write("vultr", id, current, tag, present)?,
        ) else {
            return Ok(());
        };
        // Setting the same list twice is harmless: idempotent.
        self.api
            .http
            .send(
                self.req(Method::PATCH, &format!("/instances/{}", i.id))
                    .json(&serde_json::json!({ "tags": tags })),
                true,
            )
            .await?;
        Ok(())
    }

    /// Every page of a cursor-paginated list (`key` is the array's name).
    async fn list<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
        key: &str,
    ) -> Result<Vec<T>, CloudError> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..100 {
            let mut q: Vec<(&str, &str)> = query.to_vec();
            q.push(("per_page", "500"));
            if let Some(c) = &cursor {
                q.push(("cursor", c));
            }
            let v: serde_json::Value = self
                .api
                .http
                .json(self.req(Method::GET, path).query(&q), true)
                .await?;
            let items: Vec<T> = page_items("vultr", &v, key)?;
            let n = items.len();
            out.extend(items);
            let next = v["meta"]["links"]["next"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            // Stop on the last page, on an empty page, or when the server repeats a cursor.
            if n == 0 || next.is_none() || next == cursor {
                break;
            }
            cursor = next;
        }
        Ok(out)
    }
}

/// A Vultr snapshot (`/snapshots`): `size` in bytes, `status` `pending`, `complete` or `deleted`.
#[derive(Deserialize)]
struct VultrSnapshot {
    id: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    date_created: Option<String>,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    status: String,
}

#[derive(Deserialize)]
struct SnapshotEnvelope {
    snapshot: VultrSnapshot,
}

fn to_snapshot(s: VultrSnapshot) -> Snapshot {
    Snapshot {
        state: match s.status.as_str() {
            "complete" => SnapshotState::Available,
            "pending" | "" => SnapshotState::Pending,
            other => SnapshotState::Failed(format!("vultr reports the snapshot {other}")),
        },
        // Bytes to GB (10^9), as Vultr prices snapshot storage; 0 while pending.
        size_gb: s.size.filter(|b| *b > 0).map(|b| {
            rust_decimal::Decimal::from(b) / rust_decimal::Decimal::from(1_000_000_000u64)
        }),
        created_at: s.date_created,
        id: s.id,
        name: s.description,
    }
}

#[derive(Deserialize)]
struct InstanceEnvelope {
    instance: Instance,
}

/// An instance. `default_password` is deliberately absent: serde skips it unread.
#[derive(Deserialize)]
struct Instance {
    id: String,
    #[serde(default)]
    label: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    power_status: String,
    #[serde(default)]
    server_status: String,
    #[serde(default)]
    plan: String,
    #[serde(default)]
    region: String,
    #[serde(default)]
    os_id: Option<i64>,
    #[serde(default)]
    app_id: Option<i64>,
    #[serde(default)]
    image_id: Option<String>,
    #[serde(default)]
    main_ip: Option<String>,
    #[serde(default)]
    internal_ip: Option<String>,
    /// Older answers.
    #[serde(default)]
    v6_main_ip: Option<String>,
    /// Newer answers.
    #[serde(default)]
    v6_networks: Vec<V6Network>,
    #[serde(default)]
    tags: Vec<String>,
    /// The older single tag.
    #[serde(default)]
    tag: Option<String>,
    /// `auto_backups`, `ipv6`, `ddos_protection`.
    #[serde(default)]
    features: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct V6Network {
    #[serde(default)]
    main_ip: Option<String>,
}

#[derive(Serialize, Default)]
struct CreateInstance<'a> {
    region: &'a str,
    plan: &'a str,
    label: &'a str,
    hostname: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    os_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    app_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image_id: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    sshkey_id: &'a [String],
    backups: &'static str,
    enable_ipv6: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_data: Option<String>,
    tags: &'a [String],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    attach_vpc: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    firewall_group_id: Option<&'a str>,
}

#[derive(Deserialize)]
struct Plan {
    id: String,
    #[serde(default)]
    vcpu_count: u32,
    /// MB.
    #[serde(default)]
    ram: u64,
    /// GB.
    #[serde(default)]
    disk: u64,
    #[serde(default)]
    monthly_cost: f64,
    /// Newer API versions only; not in the API document this client was tested against.
    #[serde(default)]
    hourly_cost: Option<f64>,
    #[serde(default)]
    locations: Vec<String>,
    /// Outbound transfer included each month, GB.
    #[serde(default)]
    bandwidth: Option<f64>,
}

/// The `outgoing_bytes` of the days of `month` in a `/bandwidth` answer (days keyed `YYYY-MM-DD`).
fn outgoing_in(v: &serde_json::Value, month: super::Month) -> i64 {
    let prefix = format!("{month}-");
    v["bandwidth"]
        .as_object()
        .map(|days| {
            days.iter()
                .filter(|(day, _)| day.starts_with(&prefix))
                .filter_map(|(_, d)| d["outgoing_bytes"].as_i64())
                .sum()
        })
        .unwrap_or(0)
}

#[derive(Deserialize)]
struct Os {
    id: i64,
    #[serde(default)]
    name: String,
    #[serde(default)]
    family: String,
}

#[derive(Deserialize)]
struct App {
    id: i64,
    #[serde(default)]
    name: String,
    #[serde(default)]
    deploy_name: String,
}

#[derive(Deserialize)]
struct VultrRegion {
    id: String,
    #[serde(default)]
    city: String,
    #[serde(default)]
    country: String,
}

/// The image source of a create.
#[derive(Debug, PartialEq, Eq)]
enum ImageRef<'a> {
    Os(i64),
    App(i64),
    Snapshot(&'a str),
    Image(&'a str),
}

fn image_ref(image: &str) -> ImageRef<'_> {
    if let Ok(id) = image.parse::<i64>() {
        return ImageRef::Os(id);
    }
    if let Some(id) = image.strip_prefix("app:").and_then(|i| i.parse().ok()) {
        return ImageRef::App(id);
    }
    if let Some(id) = image.strip_prefix("snapshot:") {
        return ImageRef::Snapshot(id);
    }
    ImageRef::Image(image)
}

/// A hostname from a name: lowercase letters, digits and `-`, at most 63 characters.
fn hostname(name: &str) -> String {
    let mut h = String::new();
    for c in name.chars().map(|c| c.to_ascii_lowercase()) {
        let c = if c.is_ascii_alphanumeric() { c } else { '-' };
        if c == '-' && (h.is_empty() || h.ends_with('-')) {
            continue;
        }
        h.push(c);
    }
    h.truncate(63);
    let h = h.trim_end_matches('-').to_string();
    if h.is_empty() { "vm".into() } else { h }
}

/// Hourly price from a monthly one: monthly / 730, rounded to 6 decimal places.
fn hourly_from_monthly(monthly: Decimal) -> Decimal {
    (monthly / Decimal::from(HOURS_PER_MONTH)).round_dp(6)
}

/// Vultr's three status fields in our terms.
fn to_state(status: &str, power: &str, server: &str) -> ServerState {
    match status {
        "pending" => ServerState::Provisioning,
        "resizing" => ServerState::Resizing,
        "active" => match (power, server) {
            ("stopped", _) => ServerState::Off,
            ("running", "ok") => ServerState::Running,
            ("running", "none" | "installingbooting") => ServerState::Starting,
            // Locked: an action is running; the machine is up.
            ("running", _) => ServerState::Running,
            _ => ServerState::Failed,
        },
        // Suspended (billing/abuse) or anything unknown.
        _ => ServerState::Failed,
    }
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty() && s != "0.0.0.0" && s != "::")
}

fn to_server(i: Instance) -> Server {
    let state = to_state(&i.status, &i.power_status, &i.server_status);
    let image = match (i.os_id, i.app_id, non_empty(i.image_id)) {
        (_, _, Some(img)) => Some(img),
        (_, Some(app), _) if app > 0 => Some(format!("app:{app}")),
        (Some(os), _, _) if os > 0 => Some(os.to_string()),
        _ => None,
    };
    let public_ipv6 = non_empty(i.v6_main_ip)
        .or_else(|| non_empty(i.v6_networks.into_iter().find_map(|n| n.main_ip)));
    Server {
        id: i.id,
        name: i.label,
        price: None,
        deletion_scheduled: false,
        initial_password: None,
        backups: i
            .features
            .as_ref()
            .map(|f| f.iter().any(|x| x == "auto_backups")),
        busy: i.server_status == "locked"
            || matches!(state, ServerState::Provisioning | ServerState::Resizing),
        state,
        size: i.plan,
        region: i.region,
        image,
        public_ipv4: non_empty(i.main_ip),
        public_ipv6,
        private_ipv4: non_empty(i.internal_ip),
        tags: i.tags,
    }
}

/// A VPC as Vultr sends it (the VPC's name is its description).
#[derive(Deserialize)]
struct VultrVpc {
    id: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    region: String,
    #[serde(default)]
    v4_subnet: Option<String>,
    #[serde(default)]
    v4_subnet_mask: Option<u8>,
}

impl VultrVpc {
    fn into_vpc(self) -> super::Vpc {
        let ip_range = match (self.v4_subnet, self.v4_subnet_mask) {
            (Some(a), Some(m)) if !a.is_empty() => Some(format!("{a}/{m}")),
            _ => None,
        };
        super::Vpc {
            id: self.id,
            name: self.description,
            region: self.region,
            ip_range,
        }
    }
}

#[async_trait]
impl ComputeProvider for Vultr {
    async fn verify(&self) -> Result<(), CloudError> {
        let _: serde_json::Value = self
            .api
            .http
            .json(self.req(Method::GET, "/account"), true)
            .await?;
        Ok(())
    }

    async fn create(&self, spec: &ServerSpec) -> Result<Server, CloudError> {
        let mut body = CreateInstance {
            region: &spec.region,
            plan: &spec.size,
            label: &spec.name,
            hostname: hostname(&spec.name),
            sshkey_id: &spec.ssh_keys,
            backups: if spec.backups { "enabled" } else { "disabled" },
            enable_ipv6: spec.ipv6,
            user_data: spec
                .user_data
                .as_ref()
                .map(|u| base64::engine::general_purpose::STANDARD.encode(u)),
            tags: &spec.tags,
            attach_vpc: spec.options.vpc_id.as_deref().into_iter().collect(),
            firewall_group_id: spec.options.firewall_id.as_deref(),
            ..Default::default()
        };
        match image_ref(&spec.image) {
            ImageRef::Os(id) => body.os_id = Some(id),
            ImageRef::App(id) => body.app_id = Some(id),
            ImageRef::Snapshot(id) => body.snapshot_id = Some(id),
            ImageRef::Image(id) => body.image_id = Some(id),
        }
        let mut v: serde_json::Value = self
            .api
            .http
            .json(self.req(Method::POST, "/instances").json(&body), false)
            .await?;
        // The generated password is in this answer only (and never in a listing we keep).
        let password = v["instance"]
            .get_mut("default_password")
            .map(serde_json::Value::take)
            .and_then(|p| p.as_str().map(str::to_string))
            .filter(|p| !p.is_empty());
        let env: InstanceEnvelope =
            serde_json::from_value(v).map_err(|e| crate::http::HttpError::Decode {
                vendor: "vultr",
                message: e.to_string(),
            })?;
        let mut server = to_server(env.instance);
        server.initial_password = password.map(super::InitialPassword);
        Ok(server)
    }

    async fn get(&self, id: &str) -> Result<Option<Server>, CloudError> {
        Ok(self.instance(id).await?.map(to_server))
    }

    async fn find_by_tag(&self, tag: &str) -> Result<Vec<Server>, CloudError> {
        // The `tag` filter is marked deprecated in Vultr's API document (with no replacement): the answer
        // is filtered again here, so a server that stopped honouring it cannot make us adopt strangers.
        let instances: Vec<Instance> = self
            .list("/instances", &[("tag", tag)], "instances")
            .await?;
        Ok(instances
            .into_iter()
            .filter(|i| i.tags.iter().any(|t| t == tag) || i.tag.as_deref() == Some(tag))
            .map(to_server)
            .collect())
    }

    /// Every instance, 500 a page (cursor paging).
    async fn list_servers(&self) -> Result<Option<Vec<Server>>, CloudError> {
        let all: Vec<Instance> = self.list("/instances", &[], "instances").await?;
        Ok(Some(all.into_iter().map(to_server).collect()))
    }

    async fn delete(&self, id: &str) -> Result<(), CloudError> {
        let Some(id) = segment_id(id) else {
            return Ok(());
        };
        done_if_not_found(
            self.api
                .http
                .send(self.req(Method::DELETE, &format!("/instances/{id}")), true)
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
        let id = segment_id(id).ok_or_else(|| not_an_id("vultr", id))?;
        let verb = match action {
            PowerAction::On => "start",
            PowerAction::Off => "halt",
            PowerAction::Reboot => "reboot",
        };
        self.api
            .http
            .send(
                self.req(Method::POST, &format!("/instances/{id}/{verb}")),
                false,
            )
            .await?;
        Ok(())
    }

    async fn resize(&self, id: &str, size: &str) -> Result<(), CloudError> {
        let id = segment_id(id).ok_or_else(|| not_an_id("vultr", id))?;
        // Vultr upgrades in place (it restarts the instance itself); plans can only grow.
        self.api
            .http
            .send(
                self.req(Method::PATCH, &format!("/instances/{id}"))
                    .json(&serde_json::json!({ "plan": size })),
                false,
            )
            .await?;
        Ok(())
    }

    async fn sizes(&self) -> Result<Vec<Size>, CloudError> {
        let plans: Vec<Plan> = self.list("/plans", &[], "plans").await?;
        Ok(plans
            .into_iter()
            .map(|p| {
                let monthly = decimal_from_f64(p.monthly_cost);
                let hourly = p
                    .hourly_cost
                    .map(decimal_from_f64)
                    .unwrap_or_else(|| hourly_from_monthly(monthly));
                Size {
                    slug: p.id,
                    vcpus: p.vcpu_count,
                    memory_mb: p.ram,
                    disk_gb: p.disk,
                    price_hourly: hourly,
                    price_monthly: monthly,
                    currency: "USD".into(),
                    regions: p.locations,
                    transfer_bytes: p.bandwidth.map(super::traffic::gb),
                    backup_price: Some(super::backup_share(hourly, monthly)),
                }
            })
            .collect())
    }

    async fn images(&self) -> Result<Vec<Image>, CloudError> {
        let os: Vec<Os> = self.list("/os", &[], "os").await?;
        let apps: Vec<App> = self.list("/applications", &[], "applications").await?;
        let mut out: Vec<Image> = os
            .into_iter()
            // Placeholders for other create modes (custom ISO, snapshot, backup, application).
            .filter(|o| {
                !matches!(
                    o.family.as_str(),
                    "iso" | "snapshot" | "backup" | "application"
                )
            })
            .map(|o| Image {
                slug: o.id.to_string(),
                name: o.name,
                kind: "distribution".into(),
            })
            .collect();
        out.extend(apps.into_iter().map(|a| Image {
            slug: format!("app:{}", a.id),
            name: if a.deploy_name.is_empty() {
                a.name
            } else {
                a.deploy_name
            },
            kind: "application".into(),
        }));
        Ok(out)
    }

    async fn regions(&self) -> Result<Vec<Region>, CloudError> {
        let regions: Vec<VultrRegion> = self.list("/regions", &[], "regions").await?;
        Ok(regions
            .into_iter()
            .map(|r| Region {
                name: match (r.city.is_empty(), r.country.is_empty()) {
                    (false, false) => format!("{} ({})", r.city, r.country),
                    (false, true) => r.city,
                    _ => r.id.clone(),
                },
                slug: r.id,
                available: true,
            })
            .collect())
    }

    /// `POST /snapshots` of the instance, described by the mark (Vultr names it at once).
    async fn create_snapshot(
        &self,
        server_id: &str,
        mark: &str,
    ) -> Result<Option<Snapshot>, CloudError> {
        let id = segment_id(server_id).ok_or_else(|| not_an_id("vultr", server_id))?;
        let env: SnapshotEnvelope = self
            .api
            .http
            .json(
                self.req(Method::POST, "/snapshots")
                    .json(&serde_json::json!({ "instance_id": id, "description": mark })),
                false,
            )
            .await?;
        Ok(Some(to_snapshot(env.snapshot)))
    }

    /// The account's snapshots filtered by description (the mark), compared exactly; a deleted one is
    /// absent.
    async fn find_snapshot(
        &self,
        _server_id: &str,
        mark: &str,
        _since: i64,
    ) -> Result<SnapshotLookup, CloudError> {
        let all: Vec<VultrSnapshot> = self
            .list("/snapshots", &[("description", mark)], "snapshots")
            .await?;
        Ok(SnapshotLookup::first(
            all,
            |s| s.description == mark && s.status != "deleted",
            to_snapshot,
        ))
    }

    /// `GET /snapshots/{id}`.
    async fn snapshot(&self, _server_id: &str, id: &str) -> Result<Option<Snapshot>, CloudError> {
        let Some(id) = segment_id(id) else {
            return Ok(None);
        };
        let found = self
            .api
            .http
            .json::<SnapshotEnvelope>(self.req(Method::GET, &format!("/snapshots/{id}")), true)
            .await;
        Ok(none_if_not_found(found)?
            .map(|env| env.snapshot)
            .filter(|s| s.status != "deleted")
            .map(to_snapshot))
    }

    /// The account's snapshots carrying a mark (a list of 50,000 or more is not complete: `None`).
    async fn marked_snapshots(&self) -> Result<Option<Vec<Snapshot>>, CloudError> {
        let all: Vec<VultrSnapshot> = self.list("/snapshots", &[], "snapshots").await?;
        if all.len() >= 100 * 500 {
            return Ok(None);
        }
        Ok(Some(
            all.into_iter()
                .filter(|s| {
                    s.description
                        .starts_with(super::snapshot::SNAPSHOT_MARK_PREFIX)
                        && s.status != "deleted"
                })
                .map(to_snapshot)
                .collect(),
        ))
    }

    /// `POST /instances/{id}/restore` with the snapshot's ID (Vultr reinstalls the instance from it).
    async fn restore_snapshot(&self, server_id: &str, snapshot_id: &str) -> Result<(), CloudError> {
        let id = segment_id(server_id).ok_or_else(|| not_an_id("vultr", server_id))?;
        let snap = segment_id(snapshot_id).ok_or_else(|| not_an_id("vultr", snapshot_id))?;
        self.api
            .http
            .send(
                self.req(Method::POST, &format!("/instances/{id}/restore"))
                    .json(&serde_json::json!({ "snapshot_id": snap })),
                false,
            )
            .await?;
        Ok(())
    }

    async fn find_vpcs(&self, name: &str) -> Result<Vec<super::Vpc>, CloudError> {
        let all: Vec<VultrVpc> = self.list("/vpcs", &[], "vpcs").await?;
        Ok(all
            .into_iter()
            .filter(|v| v.description == name)
            .map(VultrVpc::into_vpc)
            .collect())
    }

    async fn create_vpc(&self, spec: &super::VpcSpec) -> Result<super::Vpc, CloudError> {
        let mut body = serde_json::json!({ "region": spec.region, "description": spec.name });
        if let Some(r) = &spec.ip_range {
            let (addr, len) = super::vpc::parse_cidr(r).map_err(CloudError::Unsupported)?;
            body["v4_subnet"] = addr.to_string().into();
            body["v4_subnet_mask"] = len.into();
        }
        // Vultr's document answers `vpc`; its own example says `network`: either is read.
        let v: serde_json::Value = self
            .api
            .http
            .json(self.req(Method::POST, "/vpcs").json(&body), false)
            .await?;
        let made = v.get("vpc").or_else(|| v.get("network")).cloned();
        let vpc: VultrVpc = made
            .and_then(|m| serde_json::from_value(m).ok())
            .ok_or_else(|| crate::http::HttpError::Decode {
                vendor: "vultr",
                message: "the VPC's create answer has no VPC".into(),
            })?;
        Ok(vpc.into_vpc())
    }

    async fn delete_vpc(&self, id: &str) -> Result<(), CloudError> {
        let Some(id) = segment_id(id) else {
            return Ok(());
        };
        done_if_not_found(
            self.api
                .http
                .send(self.req(Method::DELETE, &format!("/vpcs/{id}")), true)
                .await,
        )
    }

    async fn delete_snapshot(&self, _server_id: &str, id: &str) -> Result<(), CloudError> {
        let Some(id) = segment_id(id) else {
            return Ok(());
        };
        done_if_not_found(
            self.api
                .http
                .send(self.req(Method::DELETE, &format!("/snapshots/{id}")), true)
                .await,
        )
    }

    /// An instance is created from a snapshot with `snapshot_id` (the `snapshot:<id>` image form).
    fn snapshot_image(&self, id: &str) -> Result<String, CloudError> {
        Ok(format!(
            "snapshot:{}",
            segment_id(id).ok_or_else(|| not_an_id("vultr", id))?
        ))
    }

    /// The month's days of `outgoing_bytes` (`/instances/{id}/bandwidth`, the last 30-odd days, UTC):
    /// a month whose first days have left that window is read short (the last month is read early
    /// in the next, so this does not happen to a controller that keeps running).
    async fn transfer(
        &self,
        server_id: &str,
        month: super::Month,
        _now: i64,
    ) -> Result<Option<i64>, CloudError> {
        let Some(id) = segment_id(server_id) else {
            return Ok(None);
        };
        let found: Option<serde_json::Value> = none_if_not_found(
            self.api
                .http
                .json(
                    self.req(Method::GET, &format!("/instances/{id}/bandwidth")),
                    true,
                )
                .await,
        )?;
        Ok(found.map(|v| outgoing_in(&v, month)))
    }

    /// Bandwidth overage: US$0.01 per GB (Vultr's pricing page).
    fn transfer_price(&self) -> Option<(rust_decimal::Decimal, &'static str)> {
        Some((rust_decimal::Decimal::new(1, 2), "USD"))
    }

    /// Snapshots: US$0.05 per GB-month (Vultr's pricing page).
    fn snapshot_price(&self) -> Option<(rust_decimal::Decimal, &'static str)> {
        Some((rust_decimal::Decimal::new(5, 2), "USD"))
    }

    /// `attach_vpc` and `firewall_group_id` at create.
    fn honours(&self) -> super::Honours {
        super::Honours {
            vpc: true,
            firewall: true,
            ..Default::default()
        }
    }

    fn resize_needs_power_off(&self) -> bool {
        false
    }

    fn accepts_root_password(&self, _windows: bool) -> bool {
        false
    }

    fn vendor(&self) -> &'static str {
        "vultr"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_months_outgoing_bytes_are_its_days_only() {
        let v = serde_json::json!({"bandwidth": {
            "2026-11-30": {"incoming_bytes": 1, "outgoing_bytes": 100},
            "2026-12-01": {"incoming_bytes": 1, "outgoing_bytes": 20},
            "2026-12-02": {"incoming_bytes": 1, "outgoing_bytes": 3},
        }});
        let dec = crate::cloud::Month {
            year: 2026,
            month: 12,
        };
        assert_eq!(outgoing_in(&v, dec), 23);
        assert_eq!(
            outgoing_in(
                &v,
                crate::cloud::Month {
                    year: 2026,
                    month: 11
                }
            ),
            100
        );
        assert_eq!(outgoing_in(&serde_json::json!({}), dec), 0);
    }

    #[test]
    fn image_refs() {
        assert_eq!(image_ref("1743"), ImageRef::Os(1743));
        assert_eq!(image_ref("app:1028"), ImageRef::App(1028));
        assert_eq!(image_ref("snapshot:abc-1"), ImageRef::Snapshot("abc-1"));
        assert_eq!(
            image_ref("openlitespeed-wordpress"),
            ImageRef::Image("openlitespeed-wordpress")
        );
    }

    #[test]
    fn hourly_is_monthly_over_730() {
        assert_eq!(
            hourly_from_monthly(Decimal::from(5)).to_string(),
            "0.006849"
        );
        assert_eq!(hourly_from_monthly(Decimal::from(730)).to_string(), "1");
    }

    #[test]
    fn hostnames() {
        assert_eq!(hostname("Web Server_1"), "web-server-1");
        assert_eq!(hostname("--"), "vm");
        assert!(hostname(&"a".repeat(100)).len() <= 63);
    }

    #[test]
    fn states() {
        assert_eq!(to_state("active", "running", "ok"), ServerState::Running);
        assert_eq!(to_state("active", "stopped", "ok"), ServerState::Off);
        assert_eq!(
            to_state("pending", "running", "none"),
            ServerState::Provisioning
        );
        assert_eq!(
            to_state("active", "running", "installingbooting"),
            ServerState::Starting
        );
        assert_eq!(
            to_state("resizing", "running", "locked"),
            ServerState::Resizing
        );
        assert_eq!(to_state("suspended", "stopped", "ok"), ServerState::Failed);
    }

    #[test]
    fn default_password_is_never_decoded() {
        let i: Instance = serde_json::from_value(serde_json::json!({
            "id": "x", "default_password": "s3cret!", "status": "pending"
        }))
        .unwrap();
        let s = to_server(i);
        assert!(!format!("{s:?}").contains("s3cret"));
    }
}

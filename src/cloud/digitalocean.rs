//! DigitalOcean droplets (API v2, bearer token). Also what `quartermaster sim` speaks.
//! Vendor DTOs stay in this file.

use async_trait::async_trait;
use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::rest::{
    BearerApi, done_if_not_found, none_if_not_found, not_an_id, numeric_id, page_items,
};
use super::{
    CloudError, ComputeProvider, Image, PowerAction, Region, Server, ServerPrice, ServerSpec,
    ServerState, Size, Snapshot, SnapshotLookup, SnapshotState, decimal_from_f64,
};
use crate::http::HttpClient;

/// The public API.
pub const DEFAULT_ENDPOINT: &str = "https://api.digitalocean.com";

/// A VPC as DigitalOcean sends it.
#[derive(Deserialize)]
struct DoVpc {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    region: String,
    #[serde(default)]
    ip_range: Option<String>,
}

impl DoVpc {
    fn into_vpc(self) -> super::Vpc {
        super::Vpc {
            id: self.id,
            name: self.name,
            region: self.region,
            ip_range: self.ip_range,
        }
    }
}

#[derive(Deserialize)]
struct VpcEnvelope {
    vpc: DoVpc,
}

/// A DigitalOcean account.
#[derive(Debug)]
pub struct DigitalOcean {
    api: BearerApi,
}

impl DigitalOcean {
    /// A client for `endpoint` (default: the public API) with a bearer token.
    pub fn new(http: HttpClient, endpoint: Option<String>, token: &str) -> Self {
        Self {
            api: BearerApi::new(http, endpoint, DEFAULT_ENDPOINT, token),
        }
    }

    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.api.req(method, path)
    }

    async fn action(&self, id: &str, body: serde_json::Value) -> Result<(), CloudError> {
        let id = numeric_id(id).ok_or_else(|| not_an_id("digitalocean", id))?;
        let r = self
            .req(Method::POST, &format!("/v2/droplets/{id}/actions"))
            .json(&body);
        self.api.http.send(r, false).await?;
        Ok(())
    }

    /// `DELETE path`; done when already gone.
    async fn delete_at(&self, path: &str) -> Result<(), CloudError> {
        done_if_not_found(
            self.api
                .http
                .send(self.req(Method::DELETE, path), true)
                .await,
        )
    }

    /// One droplet metric's series over `(start, end)` (unix seconds); `None` when DigitalOcean knows no
    /// such droplet.
    async fn metric(
        &self,
        name: &str,
        id: &str,
        extra: &str,
        (start, end): (i64, i64),
    ) -> Result<Option<Vec<MetricSeries>>, CloudError> {
        let path = format!(
            "/v2/monitoring/metrics/droplet/{name}?host_id={id}{extra}&start={start}&end={end}"
        );
        let v: Option<serde_json::Value> =
            none_if_not_found(self.api.http.json(self.req(Method::GET, &path), true).await)?;
        Ok(v.map(|v| metric_series(&v)))
    }

    /// Every page of a list endpoint (`key` is the array's name).
    async fn list<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        key: &str,
    ) -> Result<Vec<T>, CloudError> {
        self.list_pages(path, key, 50).await
    }

    /// Up to `max_pages` pages of 200.
    async fn list_pages<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        key: &str,
        max_pages: usize,
    ) -> Result<Vec<T>, CloudError> {
        let mut out = Vec::new();
        for page in 1..=max_pages {
            let sep = if path.contains('?') { '&' } else { '?' };
            let v: serde_json::Value = self
                .api
                .http
                .json(
                    self.req(Method::GET, &format!("{path}{sep}page={page}&per_page=200")),
                    true,
                )
                .await?;
            let items: Vec<T> = page_items("digitalocean", &v, key)?;
            let n = items.len();
            out.extend(items);
            let has_next = v["links"]["pages"]["next"].is_string();
            if n == 0 || !has_next {
                break;
            }
        }
        Ok(out)
    }
}

/// A droplet snapshot (`/v2/snapshots`): listed only once it is taken.
#[derive(Deserialize)]
struct DoSnapshot {
    /// A string in `/v2/snapshots`, a number in some older answers.
    id: serde_json::Value,
    name: String,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    size_gigabytes: Option<f64>,
}

#[derive(Deserialize)]
struct DoSnapshotEnvelope {
    snapshot: DoSnapshot,
}

/// One series of a monitoring answer: its labels and its `(unix seconds, value)` samples in time order.
#[derive(Clone, Debug, PartialEq)]
struct MetricSeries {
    labels: serde_json::Value,
    samples: Vec<(i64, f64)>,
}

/// The series of a monitoring answer (`data.result[].values[]` as `[timestamp, "value"]`).
fn metric_series(v: &serde_json::Value) -> Vec<MetricSeries> {
    let sample = |p: &serde_json::Value| {
        let t = p.get(0)?.as_f64()? as i64;
        let v = p.get(1)?;
        let v = v.as_f64().or_else(|| v.as_str()?.parse().ok())?;
        Some((t, v))
    };
    v["data"]["result"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .map(|r| {
                    let mut samples: Vec<(i64, f64)> = r["values"]
                        .as_array()
                        .map(|vs| vs.iter().filter_map(sample).collect())
                        .unwrap_or_default();
                    samples.sort_by_key(|s| s.0);
                    MetricSeries {
                        labels: r["metric"].clone(),
                        samples,
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The last value of the root filesystem's series (`mountpoint` `/`), else of the first series.
fn root_or_first_last(series: &[MetricSeries]) -> Option<f64> {
    let s = series
        .iter()
        .find(|s| s.labels["mountpoint"] == "/")
        .or_else(|| series.first())?;
    s.samples.last().map(|p| p.1)
}

/// CPU busy percent over the window of DigitalOcean's per-mode CPU seconds counters: one minus the
/// idle share of the seconds counted between the first and last samples.
fn cpu_percent(series: &[MetricSeries]) -> Option<f64> {
    let delta = |s: &MetricSeries| Some(s.samples.last()?.1 - s.samples.first()?.1);
    let total: f64 = series.iter().filter_map(delta).sum();
    let idle: f64 = series
        .iter()
        .filter(|s| s.labels["mode"] == "idle")
        .filter_map(delta)
        .sum();
    (total > 0.0).then(|| (100.0 * (1.0 - idle / total)).clamp(0.0, 100.0))
}

/// A droplet action (`/v2/droplets/{id}/actions`).
#[derive(Deserialize)]
struct DoAction {
    #[serde(rename = "type")]
    kind: String,
    status: String,
}

fn to_snapshot(s: DoSnapshot) -> Snapshot {
    Snapshot {
        id: match s.id {
            serde_json::Value::String(id) => id,
            other => other.to_string(),
        },
        name: s.name,
        state: SnapshotState::Available,
        size_gb: s.size_gigabytes.map(decimal_from_f64),
        created_at: s.created_at,
    }
}

/// What the droplet's actions and snapshots say of the snapshot carrying `mark`. The actions are read
/// first: DigitalOcean lists a snapshot once its action completes, so a snapshot not listed after a
/// running action was seen is still being taken. Any running snapshot action of the droplet counts,
/// whatever its start time (no clock is compared): DigitalOcean takes one at a time and refuses a
/// second meanwhile.
fn lookup_from(running: bool, snapshots: Vec<DoSnapshot>, mark: &str) -> SnapshotLookup {
    match SnapshotLookup::first(snapshots, |s| s.name == mark, to_snapshot) {
        SnapshotLookup::Absent if running => SnapshotLookup::InProgress,
        found => found,
    }
}

/// Whether one of `actions` is a snapshot still running.
fn snapshot_running(actions: &[DoAction]) -> bool {
    actions
        .iter()
        .any(|a| a.kind == "snapshot" && a.status == "in-progress")
}

#[derive(Deserialize)]
struct DropletEnvelope {
    droplet: Droplet,
}

#[derive(Deserialize)]
struct Droplet {
    id: u64,
    name: String,
    status: String,
    #[serde(default)]
    locked: bool,
    #[serde(default)]
    size_slug: Option<String>,
    #[serde(default)]
    region: Option<SlugRef>,
    #[serde(default)]
    image: Option<ImageRef>,
    #[serde(default)]
    networks: Networks,
    #[serde(default)]
    tags: Vec<String>,
    /// The droplet's size object, with its prices.
    #[serde(default)]
    size: Option<DropletSize>,
    /// `backups`, `ipv6`, `monitoring`, `private_networking`…
    #[serde(default)]
    features: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct DropletSize {
    #[serde(default)]
    price_hourly: Option<f64>,
    #[serde(default)]
    price_monthly: Option<f64>,
}

#[derive(Deserialize)]
struct SlugRef {
    slug: String,
}

#[derive(Deserialize)]
struct ImageRef {
    #[serde(default)]
    slug: Option<String>,
    #[serde(default)]
    id: Option<u64>,
}

#[derive(Deserialize, Default)]
struct Networks {
    #[serde(default)]
    v4: Vec<Net>,
    #[serde(default)]
    v6: Vec<Net>,
}

#[derive(Deserialize)]
struct Net {
    ip_address: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Serialize)]
struct CreateDroplet<'a> {
    name: &'a str,
    region: &'a str,
    size: &'a str,
    image: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    ssh_keys: &'a [String],
    backups: bool,
    ipv6: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_data: Option<&'a str>,
    tags: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    vpc_uuid: Option<&'a str>,
    monitoring: bool,
}

#[derive(Deserialize)]
struct DoSize {
    slug: String,
    #[serde(default)]
    memory: u64,
    #[serde(default)]
    vcpus: u32,
    #[serde(default)]
    disk: u64,
    price_monthly: f64,
    price_hourly: f64,
    #[serde(default)]
    regions: Vec<String>,
    #[serde(default = "yes")]
    available: bool,
    /// Outbound transfer included each month, DigitalOcean's "TB" (1,000 GiB).
    #[serde(default)]
    transfer: Option<f64>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct DoImage {
    id: u64,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    slug: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct DoRegion {
    slug: String,
    name: String,
    #[serde(default)]
    available: bool,
}

fn to_server(d: Droplet) -> Server {
    let pick = |nets: &[Net], kind: &str| {
        nets.iter()
            .find(|n| n.kind == kind)
            .map(|n| n.ip_address.clone())
    };
    Server {
        id: d.id.to_string(),
        state: match d.status.as_str() {
            "new" => ServerState::Provisioning,
            "active" => ServerState::Running,
            "off" | "archive" => ServerState::Off,
            _ => ServerState::Failed,
        },
        name: d.name,
        size: d.size_slug.unwrap_or_default(),
        region: d.region.map(|r| r.slug).unwrap_or_default(),
        image: d
            .image
            .and_then(|i| i.slug.or(i.id.map(|id| id.to_string()))),
        public_ipv4: pick(&d.networks.v4, "public"),
        public_ipv6: pick(&d.networks.v6, "public"),
        private_ipv4: pick(&d.networks.v4, "private"),
        tags: d.tags,
        busy: d.locked,
        deletion_scheduled: false,
        initial_password: None,
        backups: d
            .features
            .as_ref()
            .map(|f| f.iter().any(|x| x == "backups")),
        // DigitalOcean prices in US dollars.
        price: d.size.and_then(|s| {
            Some(ServerPrice {
                hourly: decimal_from_f64(s.price_hourly?),
                monthly: decimal_from_f64(s.price_monthly?),
                currency: "USD".into(),
            })
        }),
    }
}

#[async_trait]
impl ComputeProvider for DigitalOcean {
    async fn verify(&self) -> Result<(), CloudError> {
        let _: serde_json::Value = self
            .api
            .http
            .json(self.req(Method::GET, "/v2/account"), true)
            .await?;
        Ok(())
    }

    async fn create(&self, spec: &ServerSpec) -> Result<Server, CloudError> {
        let body = CreateDroplet {
            name: &spec.name,
            region: &spec.region,
            size: &spec.size,
            image: &spec.image,
            ssh_keys: &spec.ssh_keys,
            backups: spec.backups,
            ipv6: spec.ipv6,
            user_data: spec.user_data.as_deref(),
            tags: &spec.tags,
            vpc_uuid: spec.options.vpc_id.as_deref(),
            monitoring: spec.options.monitoring,
        };
        let env: DropletEnvelope = self
            .api
            .http
            .json(self.req(Method::POST, "/v2/droplets").json(&body), false)
            .await?;
        Ok(to_server(env.droplet))
    }

    async fn get(&self, id: &str) -> Result<Option<Server>, CloudError> {
        let Some(id) = numeric_id(id) else {
            return Ok(None);
        };
        let found = self
            .api
            .http
            .json::<DropletEnvelope>(self.req(Method::GET, &format!("/v2/droplets/{id}")), true)
            .await;
        Ok(none_if_not_found(found)?.map(|env| to_server(env.droplet)))
    }

    async fn find_by_tag(&self, tag: &str) -> Result<Vec<Server>, CloudError> {
        let droplets: Vec<Droplet> = self
            .list(&format!("/v2/droplets?tag_name={tag}"), "droplets")
            .await?;
        Ok(droplets.into_iter().map(to_server).collect())
    }

    /// Every droplet, 200 a page (10,000 droplets: 50 requests).
    async fn list_servers(&self) -> Result<Option<Vec<Server>>, CloudError> {
        let droplets: Vec<Droplet> = self.list_pages("/v2/droplets", "droplets", 1000).await?;
        Ok(Some(droplets.into_iter().map(to_server).collect()))
    }

    async fn delete(&self, id: &str) -> Result<(), CloudError> {
        let Some(id) = numeric_id(id) else {
            return Ok(());
        };
        self.delete_at(&format!("/v2/droplets/{id}")).await
    }

    async fn add_tag(&self, id: &str, tag: &str) -> Result<(), CloudError> {
        // Creating an existing tag succeeds; tagging is idempotent.
        self.api
            .http
            .send(
                self.req(Method::POST, "/v2/tags")
                    .json(&serde_json::json!({ "name": tag })),
                true,
            )
            .await?;
        self.api
            .http
            .send(
                self.req(Method::POST, &format!("/v2/tags/{tag}/resources"))
                    .json(&serde_json::json!({
                        "resources": [{ "resource_id": id, "resource_type": "droplet" }]
                    })),
                true,
            )
            .await?;
        Ok(())
    }

    async fn remove_tag(&self, id: &str, tag: &str) -> Result<(), CloudError> {
        // A tag that does not exist (404) tags nothing: already done.
        done_if_not_found(
            self.api
                .http
                .send(
                    self.req(Method::DELETE, &format!("/v2/tags/{tag}/resources"))
                        .json(&serde_json::json!({
                            "resources": [{ "resource_id": id, "resource_type": "droplet" }]
                        })),
                    true,
                )
                .await,
        )
    }

    async fn power(&self, id: &str, action: PowerAction) -> Result<(), CloudError> {
        let kind = match action {
            PowerAction::On => "power_on",
            PowerAction::Off => "power_off",
            PowerAction::Reboot => "reboot",
        };
        self.action(id, serde_json::json!({ "type": kind })).await
    }

    async fn resize(&self, id: &str, size: &str) -> Result<(), CloudError> {
        // disk=false keeps the resize reversible (CPU/RAM only).
        self.action(
            id,
            serde_json::json!({ "type": "resize", "size": size, "disk": false }),
        )
        .await
    }

    async fn sizes(&self) -> Result<Vec<Size>, CloudError> {
        let sizes: Vec<DoSize> = self.list("/v2/sizes", "sizes").await?;
        Ok(sizes
            .into_iter()
            .filter(|s| s.available)
            .map(|s| Size {
                slug: s.slug,
                vcpus: s.vcpus,
                memory_mb: s.memory,
                disk_gb: s.disk,
                price_hourly: decimal_from_f64(s.price_hourly),
                price_monthly: decimal_from_f64(s.price_monthly),
                currency: "USD".into(),
                regions: s.regions,
                transfer_bytes: s.transfer.map(super::traffic::do_terabytes),
                backup_price: Some(super::backup_share(
                    decimal_from_f64(s.price_hourly),
                    decimal_from_f64(s.price_monthly),
                )),
            })
            .collect())
    }

    async fn images(&self) -> Result<Vec<Image>, CloudError> {
        let mut out = Vec::new();
        for kind in ["distribution", "application"] {
            let images: Vec<DoImage> = self
                .list(&format!("/v2/images?type={kind}"), "images")
                .await?;
            out.extend(images.into_iter().map(|i| {
                Image {
                    slug: i.slug.unwrap_or_else(|| i.id.to_string()),
                    name: i.name.unwrap_or_default(),
                    kind: i
                        .kind
                        .map(|k| {
                            if k == "base" {
                                "distribution".into()
                            } else {
                                k
                            }
                        })
                        .unwrap_or_else(|| kind.into()),
                }
            }));
        }
        Ok(out)
    }

    async fn regions(&self) -> Result<Vec<Region>, CloudError> {
        let regions: Vec<DoRegion> = self.list("/v2/regions", "regions").await?;
        Ok(regions
            .into_iter()
            .map(|r| Region {
                slug: r.slug,
                name: r.name,
                available: r.available,
            })
            .collect())
    }

    /// A `snapshot` droplet action named `mark`. DigitalOcean answers with the action only; the snapshot
    /// is listed once it is taken.
    async fn create_snapshot(
        &self,
        server_id: &str,
        mark: &str,
    ) -> Result<Option<Snapshot>, CloudError> {
        self.action(
            server_id,
            serde_json::json!({ "type": "snapshot", "name": mark }),
        )
        .await?;
        Ok(None)
    }

    /// The droplet's running snapshot actions, then its snapshots by name (one droplet's, not the
    /// account's); once the droplet is gone, the account's droplet snapshots (they outlive it).
    async fn find_snapshot(
        &self,
        server_id: &str,
        mark: &str,
        _since: i64,
    ) -> Result<SnapshotLookup, CloudError> {
        let Some(id) = numeric_id(server_id) else {
            return Ok(SnapshotLookup::Absent);
        };
        // Actions first (see `lookup_from`); up to 1,000 of them (DigitalOcean lists newest first).
        let actions: Option<Vec<DoAction>> = none_if_not_found(
            self.list_pages(&format!("/v2/droplets/{id}/actions"), "actions", 5)
                .await,
        )?;
        let running = actions.as_deref().is_some_and(snapshot_running);
        let own = match actions {
            Some(_) => none_if_not_found(
                self.list(&format!("/v2/droplets/{id}/snapshots"), "snapshots")
                    .await,
            )?,
            None => None,
        };
        let snapshots = match own {
            Some(s) => s,
            // The droplet is gone: its snapshots outlive it in the account's list.
            None => {
                self.list("/v2/snapshots?resource_type=droplet", "snapshots")
                    .await?
            }
        };
        Ok(lookup_from(running, snapshots, mark))
    }

    /// `GET /v2/snapshots/{id}`.
    async fn snapshot(&self, _server_id: &str, id: &str) -> Result<Option<Snapshot>, CloudError> {
        let Some(id) = numeric_id(id) else {
            return Ok(None);
        };
        let found = self
            .api
            .http
            .json::<DoSnapshotEnvelope>(self.req(Method::GET, &format!("/v2/snapshots/{id}")), true)
            .await;
        Ok(none_if_not_found(found)?.map(|env| to_snapshot(env.snapshot)))
    }

    /// The account's droplet snapshots, up to 500 pages of 200 (a longer list is not complete: `None`).
    async fn marked_snapshots(&self) -> Result<Option<Vec<Snapshot>>, CloudError> {
        const PAGES: usize = 500;
        let all: Vec<DoSnapshot> = self
            .list_pages("/v2/snapshots?resource_type=droplet", "snapshots", PAGES)
            .await?;
        if all.len() >= PAGES * 200 {
            return Ok(None);
        }
        Ok(Some(
            all.into_iter()
                .filter(|s| s.name.starts_with(super::snapshot::SNAPSHOT_MARK_PREFIX))
                .map(to_snapshot)
                .collect(),
        ))
    }

    /// The `restore` droplet action with the snapshot's numeric ID as the image.
    async fn restore_snapshot(&self, server_id: &str, snapshot_id: &str) -> Result<(), CloudError> {
        let image: u64 = numeric_id(snapshot_id)
            .and_then(|i| i.parse().ok())
            .ok_or_else(|| not_an_id("digitalocean", snapshot_id))?;
        self.action(
            server_id,
            serde_json::json!({ "type": "restore", "image": image }),
        )
        .await
    }

    async fn delete_snapshot(&self, _server_id: &str, id: &str) -> Result<(), CloudError> {
        let Some(id) = numeric_id(id) else {
            return Ok(());
        };
        self.delete_at(&format!("/v2/snapshots/{id}")).await
    }

    /// A droplet is created from a snapshot by its numeric ID as the image.
    fn snapshot_image(&self, id: &str) -> Result<String, CloudError> {
        Ok(numeric_id(id)
            .ok_or_else(|| not_an_id("digitalocean", id))?
            .to_string())
    }

    /// The month's public outbound bandwidth samples (Mbps), integrated over time: DigitalOcean counts
    /// public outbound traffic against the allowance and has no byte counter in its API.
    async fn transfer(
        &self,
        server_id: &str,
        month: super::Month,
        now: i64,
    ) -> Result<Option<i64>, CloudError> {
        let Some(id) = numeric_id(server_id) else {
            return Ok(None);
        };
        let end = now.min(month.end());
        let series = self
            .metric(
                "bandwidth",
                id,
                "&interface=public&direction=outbound",
                (month.start(), end),
            )
            .await?;
        Ok(series.map(|s| {
            s.iter()
                .map(|m| {
                    let bps: Vec<(i64, f64)> =
                        m.samples.iter().map(|&(t, v)| (t, v * 1e6)).collect();
                    super::traffic::integrate_bits_per_second(&bps)
                })
                .sum()
        }))
    }

    /// Outbound transfer beyond the pool: US$0.01 per GiB (DigitalOcean's pricing page), per GB here.
    fn transfer_price(&self) -> Option<(rust_decimal::Decimal, &'static str)> {
        Some((
            super::traffic::per_gib_as_per_gb(rust_decimal::Decimal::new(1, 2)),
            "USD",
        ))
    }

    fn metrics_calls(&self) -> u32 {
        7
    }

    /// CPU, memory, root filesystem and public traffic over the last ten minutes (seven calls; they
    /// need the droplet's monitoring agent, `spec.monitoring`).
    async fn metrics(
        &self,
        server_id: &str,
        now: i64,
    ) -> Result<Option<super::ServerMetrics>, CloudError> {
        let Some(id) = numeric_id(server_id) else {
            return Ok(None);
        };
        let window = (now - 600, now);
        let Some(cpu) = self.metric("cpu", id, "", window).await? else {
            return Ok(None);
        };
        let mut m = super::ServerMetrics {
            cpu_percent: cpu_percent(&cpu),
            ..Default::default()
        };
        let last = |s: Option<Vec<MetricSeries>>| s.as_deref().and_then(root_or_first_last);
        let total = last(self.metric("memory_total", id, "", window).await?);
        let available = last(self.metric("memory_available", id, "", window).await?);
        m.memory_total_bytes = total;
        m.memory_used_bytes = total.zip(available).map(|(t, a)| t - a);
        let size = last(self.metric("filesystem_size", id, "", window).await?);
        let free = last(self.metric("filesystem_free", id, "", window).await?);
        m.disk_total_bytes = size;
        m.disk_used_bytes = size.zip(free).map(|(s, f)| s - f);
        for (direction, slot) in [
            ("inbound", &mut m.network_in_bps),
            ("outbound", &mut m.network_out_bps),
        ] {
            let extra = format!("&interface=public&direction={direction}");
            *slot = last(self.metric("bandwidth", id, &extra, window).await?).map(|v| v * 1e6);
        }
        Ok(Some(m))
    }

    /// Droplet snapshots: US$0.06 per GB-month (DigitalOcean's pricing page).
    fn snapshot_price(&self) -> Option<(rust_decimal::Decimal, &'static str)> {
        Some((rust_decimal::Decimal::new(6, 2), "USD"))
    }

    /// "Droplet already has a pending event" (422): another action of the droplet is running.
    fn is_busy(&self, e: &CloudError) -> bool {
        matches!(e, CloudError::Http(crate::http::HttpError::Status { status: 422, message, .. })
            if message.to_ascii_lowercase().contains("pending event"))
    }

    /// `vpc_uuid` and `monitoring` at create; a firewall names its droplets from its own side, after
    /// the create ([`ComputeProvider::attach_firewall`]).
    fn honours(&self) -> super::Honours {
        super::Honours {
            vpc: true,
            monitoring: true,
            firewall: true,
            ..Default::default()
        }
    }

    fn firewall_after_create(&self) -> bool {
        true
    }

    /// `POST /v2/firewalls/{id}/droplets` with the droplet's ID (adding one already there is harmless).
    async fn attach_firewall(&self, server_id: &str, firewall_id: &str) -> Result<(), CloudError> {
        let id: u64 = numeric_id(server_id)
            .and_then(|i| i.parse().ok())
            .ok_or_else(|| not_an_id("digitalocean", server_id))?;
        let fw = super::rest::segment_id(firewall_id)
            .ok_or_else(|| not_an_id("digitalocean", firewall_id))?;
        let r = self
            .req(Method::POST, &format!("/v2/firewalls/{fw}/droplets"))
            .json(&serde_json::json!({ "droplet_ids": [id] }));
        self.api.http.send(r, true).await?;
        Ok(())
    }

    async fn find_vpcs(&self, name: &str) -> Result<Vec<super::Vpc>, CloudError> {
        let all: Vec<DoVpc> = self.list("/v2/vpcs", "vpcs").await?;
        Ok(all
            .into_iter()
            .filter(|v| v.name == name)
            .map(DoVpc::into_vpc)
            .collect())
    }

    async fn create_vpc(&self, spec: &super::VpcSpec) -> Result<super::Vpc, CloudError> {
        let mut body = serde_json::json!({
            "name": spec.name,
            "region": spec.region,
            "description": "made by Quartermaster for a Project",
        });
        if let Some(r) = &spec.ip_range {
            body["ip_range"] = r.as_str().into();
        }
        let made: VpcEnvelope = self
            .api
            .http
            .json(self.req(Method::POST, "/v2/vpcs").json(&body), false)
            .await?;
        Ok(made.vpc.into_vpc())
    }

    async fn delete_vpc(&self, id: &str) -> Result<(), CloudError> {
        let Some(id) = super::rest::segment_id(id) else {
            return Ok(());
        };
        let r = self.req(Method::DELETE, &format!("/v2/vpcs/{id}"));
        // DigitalOcean answers 403 "Can not delete VPC with members": a refusal of this deletion,
        // not of the credentials (which would make the whole account re-check them).
        match done_if_not_found(self.api.http.send(r, true).await) {
            Err(CloudError::Http(crate::http::HttpError::Status {
                status: 403,
                message,
                ..
            })) => Err(CloudError::Unsupported(format!(
                "digitalocean refused to delete VPC {id}: {message}"
            ))),
            other => other,
        }
    }

    fn resize_needs_power_off(&self) -> bool {
        true
    }

    /// "It must be plain text and may not exceed 64 KiB in size" (DigitalOcean's API reference).
    fn user_data_limit(&self) -> Option<usize> {
        Some(64 * 1024)
    }
    fn accepts_root_password(&self, _windows: bool) -> bool {
        false
    }

    fn vendor(&self) -> &'static str {
        "digitalocean"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_event_is_a_busy_droplet_not_a_refusal() {
        let d = DigitalOcean::new(
            HttpClient::new("digitalocean", crate::http::RetryPolicy::default()),
            None,
            "t",
        );
        let status = |s: u16, m: &str| {
            CloudError::Http(crate::http::HttpError::Status {
                vendor: "digitalocean",
                status: s,
                message: m.into(),
                retry_after: None,
            })
        };
        assert!(d.is_busy(&status(422, "Droplet already has a pending event.")));
        assert!(!d.is_busy(&status(422, "Snapshots are not available for this plan.")));
        assert!(!d.is_busy(&status(500, "pending event")));
    }

    #[test]
    fn monitoring_answers_become_cpu_memory_disk_and_bytes() {
        let v = serde_json::json!({"status": "success", "data": {"resultType": "matrix", "result": [
            {"metric": {"mode": "idle"}, "values": [[100, "50"], [160, "80"]]},
            {"metric": {"mode": "user"}, "values": [[160, "40"], [100, "30"]]},
        ]}});
        let series = metric_series(&v);
        assert_eq!(
            series[1].samples,
            vec![(100, 30.0), (160, 40.0)],
            "sorted by time"
        );
        // 30 idle of 40 seconds counted: 25 % busy.
        assert_eq!(cpu_percent(&series), Some(25.0));
        assert_eq!(cpu_percent(&[]), None);
        let fs = serde_json::json!({"data": {"result": [
            {"metric": {"mountpoint": "/boot"}, "values": [[1, "5"]]},
            {"metric": {"mountpoint": "/"}, "values": [[1, "7"], [2, "9"]]},
        ]}});
        assert_eq!(root_or_first_last(&metric_series(&fs)), Some(9.0));
        assert!(metric_series(&serde_json::json!({})).is_empty());
    }

    fn action(status: &str) -> DoAction {
        DoAction {
            kind: "snapshot".into(),
            status: status.into(),
        }
    }

    fn snap(name: &str) -> DoSnapshot {
        DoSnapshot {
            id: serde_json::json!(7),
            name: name.into(),
            created_at: None,
            size_gigabytes: Some(2.5),
        }
    }

    #[test]
    fn a_snapshot_being_taken_is_never_read_as_absent() {
        let ours = "qm-snap-u";
        // Still running, not listed: in progress (whenever it started, whatever our clock says).
        assert!(snapshot_running(&[
            action("completed"),
            action("in-progress")
        ]));
        assert_eq!(lookup_from(true, vec![], ours), SnapshotLookup::InProgress);
        // Completed between the two reads: listed by then, so found.
        assert!(matches!(
            lookup_from(true, vec![snap("other"), snap(ours)], ours),
            SnapshotLookup::Found(s) if s.id == "7"
        ));
        // Another object's snapshot running: ours is not listed, so wait (one at a time).
        assert_eq!(
            lookup_from(true, vec![snap("other")], ours),
            SnapshotLookup::InProgress
        );
        // Nothing running, not listed: absent (completed or errored actions are not ours).
        assert!(!snapshot_running(&[action("completed"), action("errored")]));
        assert_eq!(
            lookup_from(false, vec![snap("other")], ours),
            SnapshotLookup::Absent
        );
    }
}

//! Compute providers in Quartermaster's own terms: the [`ComputeProvider`] trait and the types it speaks
//! (servers, sizes, images, regions, power actions). One implementation per vendor; vendor DTOs never
//! leave their vendor's module. [`connect`] builds the right one from a ProviderConfig.

pub mod catalog;
pub mod contabo;
pub mod digitalocean;
pub mod linode;
pub mod oauth;
pub mod onence;
pub mod openai;
pub mod rest;
pub mod snapshot;
pub mod stripe;
pub mod stripe_event;
pub mod stripe_signature;
pub mod traffic;
pub mod vpc;
pub mod vultr;

use std::str::FromStr;

use async_trait::async_trait;
use rust_decimal::Decimal;

pub use snapshot::{Snapshot, SnapshotLookup, SnapshotState, snapshot_mark};
pub use traffic::{Month, ServerMetrics};
pub use vpc::{Vpc, VpcSpec};

use crate::crd::ProviderType;
use crate::http::{HttpClient, HttpError, HttpMetrics, RetryPolicy};

/// Prefix of the tag that ties a vendor server to the VirtualMachine (`<prefix><uid>`).
pub const UID_TAG_PREFIX: &str = "quartermaster-uid-";

/// The ownership tag for an object UID.
pub fn uid_tag(uid: &str) -> String {
    format!("{UID_TAG_PREFIX}{uid}")
}

/// Coarse server state, mapped from each vendor's own states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerState {
    /// Being created.
    Provisioning,
    /// Powering on.
    Starting,
    /// Running.
    Running,
    /// Powering off.
    Stopping,
    /// Powered off.
    Off,
    /// Changing size.
    Resizing,
    /// Being deleted.
    Deleting,
    /// Vendor reports an error.
    Failed,
}

/// A password a vendor generated for a new server. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct InitialPassword(pub String);

impl std::fmt::Debug for InitialPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A server as the vendor reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    /// The vendor's ID.
    pub id: String,
    /// Name / label.
    pub name: String,
    /// State.
    pub state: ServerState,
    /// Size (plan) slug.
    pub size: String,
    /// Region slug.
    pub region: String,
    /// Image slug or ID, if reported.
    pub image: Option<String>,
    /// Public IPv4.
    pub public_ipv4: Option<String>,
    /// Public IPv6.
    pub public_ipv6: Option<String>,
    /// Private IPv4.
    pub private_ipv4: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// True while the vendor runs an action and refuses others.
    pub busy: bool,
    /// The vendor accepted its deletion but keeps it until a later date (Contabo: the end of the paid
    /// period), so there is no point in asking often whether it is gone.
    pub deletion_scheduled: bool,
    /// The price the vendor reports on the server object itself (DigitalOcean droplets carry their
    /// size's prices), which wins over the catalog's.
    pub price: Option<ServerPrice>,
    /// Whether the vendor says its automatic backups are on (`None`: it does not say; the VM's
    /// `spec.backups` as created stands).
    pub backups: Option<bool>,
    /// The administrator password the vendor generated for a server it just created (Vultr's
    /// `default_password`, in the create's answer only): written to a Windows VM's connection Secret.
    pub initial_password: Option<InitialPassword>,
}

/// A server's price as the vendor reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerPrice {
    /// Per hour.
    pub hourly: Decimal,
    /// Per month.
    pub monthly: Decimal,
    /// Currency (ISO 4217).
    pub currency: String,
}

/// What to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSpec {
    /// Name / label.
    pub name: String,
    /// Region slug.
    pub region: String,
    /// Size slug.
    pub size: String,
    /// Image slug or ID.
    pub image: String,
    /// SSH keys: public keys or vendor key IDs/fingerprints.
    pub ssh_keys: Vec<String>,
    /// cloud-init user data.
    pub user_data: Option<String>,
    /// Tags, the ownership tag included.
    pub tags: Vec<String>,
    /// Vendor backups.
    pub backups: bool,
    /// Public IPv6.
    pub ipv6: bool,
    /// Root/administrator password, for vendors that accept one.
    pub root_password: Option<String>,
    /// What else the vendor is asked to configure at create.
    pub options: ServerOptions,
}

/// Vendor options of a create beyond the basics; each vendor honours some and refuses the rest before
/// any create ([`ComputeProvider::refuse_unsupported`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerOptions {
    /// A private network (VPC) by the vendor's ID.
    pub vpc_id: Option<String>,
    /// One of the VPC's subnets (Linode, whose VPC interfaces take a subnet).
    pub subnet_id: Option<String>,
    /// A firewall (group) by the vendor's ID.
    pub firewall_id: Option<String>,
    /// Install the vendor's monitoring agent.
    pub monitoring: bool,
    /// A StackScript by ID with its user-defined fields (a JSON object).
    pub stack_script: Option<(u64, serde_json::Value)>,
}

/// Which [`ServerOptions`] a vendor honours.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Honours {
    /// `vpc_id`.
    pub vpc: bool,
    /// `subnet_id`.
    pub subnet: bool,
    /// `firewall_id`.
    pub firewall: bool,
    /// `monitoring`.
    pub monitoring: bool,
    /// `stack_script`.
    pub stack_script: bool,
}

/// Refuses the options set in `o` that `h` does not honour, naming `vendor` and the VM's field.
pub fn refuse_options(vendor: &str, o: &ServerOptions, h: Honours) -> Result<(), String> {
    let asked = [
        (
            "spec.vpcID",
            o.vpc_id.is_some(),
            h.vpc,
            "attach a private network (VPC) at create",
        ),
        (
            "spec.subnetID",
            o.subnet_id.is_some(),
            h.subnet,
            "pick a VPC's subnet (its VPC is joined whole)",
        ),
        (
            "spec.firewallID",
            o.firewall_id.is_some(),
            h.firewall,
            "attach a firewall at create",
        ),
        (
            "spec.monitoring",
            o.monitoring,
            h.monitoring,
            "install its monitoring agent at create",
        ),
        (
            "spec.stackScript",
            o.stack_script.is_some(),
            h.stack_script,
            "run a StackScript",
        ),
    ];
    if o.subnet_id.is_some() && o.vpc_id.is_none() {
        return Err("spec.subnetID names a subnet of spec.vpcID, which is not set".into());
    }
    match asked
        .iter()
        .find(|(_, set, honoured, _)| *set && !*honoured)
    {
        Some((field, _, _, what)) => Err(format!(
            "{field}: {vendor} cannot {what} through Quartermaster; remove it"
        )),
        None => Ok(()),
    }
}

/// A size (plan) with its prices.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Size {
    /// Slug.
    pub slug: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mb: u64,
    /// Disk in GiB.
    pub disk_gb: u64,
    /// Price per hour.
    pub price_hourly: Decimal,
    /// Price per month.
    pub price_monthly: Decimal,
    /// Currency (ISO 4217).
    pub currency: String,
    /// Regions where it can be created (empty: unknown / all).
    pub regions: Vec<String>,
    /// Outbound transfer included each month, bytes (`None`: the vendor states none).
    pub transfer_bytes: Option<i64>,
    /// The vendor's surcharge for automatic backups of a server of this size, per hour and per month
    /// (`None`: not known; backups are then billed at the size's price alone).
    pub backup_price: Option<(Decimal, Decimal)>,
}

/// DigitalOcean's weekly and Vultr's automatic backups: 20 % of the server's price (their pricing
/// pages), per hour and per month.
pub fn backup_share(hourly: Decimal, monthly: Decimal) -> (Decimal, Decimal) {
    let share = Decimal::new(20, 2);
    ((hourly * share).normalize(), (monthly * share).normalize())
}

/// An image (OS, marketplace app or snapshot).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Image {
    /// What a VirtualMachine's `image` field names.
    pub slug: String,
    /// Human name.
    pub name: String,
    /// `distribution`, `application` or `snapshot`.
    pub kind: String,
}

/// A region.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Region {
    /// Slug.
    pub slug: String,
    /// Human name.
    pub name: String,
    /// Whether new servers can be created there.
    pub available: bool,
}

/// A power action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerAction {
    /// Power on.
    On,
    /// Power off.
    Off,
    /// Reboot.
    Reboot,
}

/// Why a provider call failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CloudError {
    /// HTTP failure (status, timeout, transport).
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The vendor cannot do this at all (e.g. resize on Contabo).
    #[error("{0}")]
    Unsupported(String),
    /// The credentials Secret content is unusable.
    #[error("invalid credentials: {0}")]
    Credentials(String),
}

/// What the failure of a call that is never retried (a reset, a restore) proves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallFailure {
    /// The vendor answered that it did not act for now (429, 5xx): it may be tried again.
    NotDone,
    /// The vendor refused it (any other answer), or it could not be sent: recorded, not tried again.
    Refused,
    /// No answer (timeout, transport): it may have been done; not sent again.
    Unknown,
}

impl CloudError {
    /// What this failure of a call that is never retried proves.
    pub fn call_failure(&self) -> CallFailure {
        match self {
            Self::Http(h) => match h.status() {
                Some(s) if s == 429 || s >= 500 => CallFailure::NotDone,
                Some(_) => CallFailure::Refused,
                None => CallFailure::Unknown,
            },
            Self::Unsupported(_) | Self::Credentials(_) => CallFailure::Refused,
        }
    }

    /// Trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Http(e) if e.is_transient())
    }
    /// The vendor refused the credentials (401/403).
    pub fn is_auth(&self) -> bool {
        matches!(self, Self::Http(e) if matches!(e.status(), Some(401 | 403)))
            || matches!(self, Self::Credentials(_))
    }
}

/// A compute vendor, in Quartermaster's terms.
#[async_trait]
pub trait ComputeProvider: Send + Sync {
    /// One cheap authenticated call: proves the endpoint and credentials work.
    async fn verify(&self) -> Result<(), CloudError>;
    /// Creates a server. Not idempotent by itself: callers look up by tag first.
    async fn create(&self, spec: &ServerSpec) -> Result<Server, CloudError>;
    /// A server by ID; `None` when the vendor says it does not exist.
    async fn get(&self, id: &str) -> Result<Option<Server>, CloudError>;
    /// Servers carrying `tag`.
    async fn find_by_tag(&self, tag: &str) -> Result<Vec<Server>, CloudError>;
    /// Every server of the account, paged: one listing observes every VM of the account. `None` where
    /// this client cannot list (its VMs are observed one GET each).
    async fn list_servers(&self) -> Result<Option<Vec<Server>>, CloudError> {
        Ok(None)
    }
    /// Deletes a server; succeeds when it is already gone.
    async fn delete(&self, id: &str) -> Result<(), CloudError>;
    /// Adds `tag` to a server (to mark an adopted server as owned). Idempotent. Vendors that cannot tag an
    /// existing server say [`CloudError::Unsupported`].
    async fn add_tag(&self, id: &str, tag: &str) -> Result<(), CloudError> {
        let _ = (id, tag);
        Err(CloudError::Unsupported(format!(
            "{} servers cannot be tagged after creation, so they cannot be adopted",
            self.vendor()
        )))
    }
    /// Removes `tag` from a server (to release an orphaned server). Idempotent; a server that is gone
    /// counts as done. Vendors that cannot untag say [`CloudError::Unsupported`].
    async fn remove_tag(&self, id: &str, tag: &str) -> Result<(), CloudError> {
        let _ = (id, tag);
        Err(CloudError::Unsupported(format!(
            "{} servers cannot be untagged",
            self.vendor()
        )))
    }
    /// Power on/off/reboot.
    async fn power(&self, id: &str, action: PowerAction) -> Result<(), CloudError>;
    /// Changes the size. Callers power off first when [`ComputeProvider::resize_needs_power_off`].
    async fn resize(&self, id: &str, size: &str) -> Result<(), CloudError>;
    /// Sizes with prices.
    async fn sizes(&self) -> Result<Vec<Size>, CloudError>;
    /// Images, marketplace apps included.
    async fn images(&self) -> Result<Vec<Image>, CloudError>;
    /// Regions.
    async fn regions(&self) -> Result<Vec<Region>, CloudError>;
    /// Starts a snapshot of server `server_id` carrying `mark` ([`snapshot_mark`]). Not idempotent by
    /// itself: callers look the mark up first ([`ComputeProvider::find_snapshot`]). Returns the snapshot
    /// where the vendor names it at once, `None` where it only reports an action (DigitalOcean).
    async fn create_snapshot(
        &self,
        server_id: &str,
        mark: &str,
    ) -> Result<Option<Snapshot>, CloudError> {
        let _ = (server_id, mark);
        Err(CloudError::Unsupported(format!(
            "{} servers cannot be snapshotted through Quartermaster",
            self.vendor()
        )))
    }
    /// The snapshot of server `server_id` carrying `mark`; [`SnapshotLookup::InProgress`] while the
    /// vendor runs a snapshot of the server, started at or after `since` (Unix seconds), that it cannot
    /// name yet.
    async fn find_snapshot(
        &self,
        server_id: &str,
        mark: &str,
        since: i64,
    ) -> Result<SnapshotLookup, CloudError> {
        let _ = (server_id, mark, since);
        Err(CloudError::Unsupported(format!(
            "{} snapshots cannot be looked up through Quartermaster",
            self.vendor()
        )))
    }
    /// Snapshot `id` read by its ID (of server `server_id`, for vendors that keep snapshots per server);
    /// `None` when the vendor no longer has it. Unsupported where the vendor has no such read (its
    /// snapshots are then looked up by their mark).
    async fn snapshot(&self, server_id: &str, id: &str) -> Result<Option<Snapshot>, CloudError> {
        let _ = (server_id, id);
        Err(CloudError::Unsupported(format!(
            "{} snapshots cannot be read by ID through Quartermaster",
            self.vendor()
        )))
    }
    /// Every snapshot of the account whose name carries a mark
    /// ([`SNAPSHOT_MARK_PREFIX`](snapshot::SNAPSHOT_MARK_PREFIX)), in one listing: how the snapshots
    /// released to the platform are followed each round. `None` where the vendor keeps snapshots per
    /// server only, or where the listing is too long to be complete (each is then looked up with
    /// [`ComputeProvider::find_snapshot`]).
    async fn marked_snapshots(&self) -> Result<Option<Vec<Snapshot>>, CloudError> {
        Ok(None)
    }
    /// Deletes snapshot `id` (of server `server_id`, for vendors that keep snapshots per server);
    /// succeeds when it is already gone.
    async fn delete_snapshot(&self, server_id: &str, id: &str) -> Result<(), CloudError> {
        let _ = (server_id, id);
        Err(CloudError::Unsupported(format!(
            "{} snapshots cannot be deleted through Quartermaster",
            self.vendor()
        )))
    }
    /// What a create names as its image to make a server from snapshot `id` (this vendor's form).
    fn snapshot_image(&self, id: &str) -> Result<String, CloudError> {
        let _ = id;
        Err(CloudError::Unsupported(format!(
            "{} cannot create a server from a snapshot",
            self.vendor()
        )))
    }
    /// The vendor's price of snapshot storage per GB-month and its currency, where known. Not in any
    /// vendor's OpenAPI document: from their pricing pages, per client.
    fn snapshot_price(&self) -> Option<(Decimal, &'static str)> {
        None
    }
    /// Which vendor options this vendor honours at create (none by default).
    fn honours(&self) -> Honours {
        Honours::default()
    }
    /// `Err` (naming the vendor and the field) when `spec` asks for an option this vendor cannot honour,
    /// or gives one in a form it cannot take: checked before any create.
    fn refuse_unsupported(&self, spec: &ServerSpec) -> Result<(), String> {
        refuse_options(self.vendor(), &spec.options, self.honours())
    }
    /// Whether a restore in place deletes the server's snapshots newer than the one restored (Contabo's
    /// rollback does): then only the newest may be restored through Quartermaster.
    fn restore_drops_newer_snapshots(&self) -> bool {
        false
    }
    /// Restores server `server_id` in place from snapshot `snapshot_id` (one taken of it): its disk is
    /// replaced. Not idempotent: sent once, never retried here.
    async fn restore_snapshot(&self, server_id: &str, snapshot_id: &str) -> Result<(), CloudError> {
        let _ = (server_id, snapshot_id);
        Err(CloudError::Unsupported(format!(
            "{} servers cannot be restored from a snapshot in place through Quartermaster",
            self.vendor()
        )))
    }
    /// The server's outbound public transfer in `month` up to `now` (unix seconds), bytes, as the vendor
    /// counts it for billing; `None` where the vendor reports none or does not know the server.
    async fn transfer(
        &self,
        server_id: &str,
        month: Month,
        now: i64,
    ) -> Result<Option<i64>, CloudError> {
        let _ = (server_id, month, now);
        Ok(None)
    }
    /// The vendor's price of outbound transfer beyond the included allowance, per GB (10^9 bytes), and
    /// its currency. Not in any vendor's OpenAPI document: from their pricing pages, per client.
    fn transfer_price(&self) -> Option<(Decimal, &'static str)> {
        None
    }
    /// The account's own figure of its pooled transfer beyond its allowance this month (what it will be
    /// billed), bytes; `None` where the vendor reports none (the pool is then summed from the servers).
    async fn account_overage(&self) -> Result<Option<i64>, CloudError> {
        Ok(None)
    }
    /// How many calls [`ComputeProvider::metrics`] makes (to pace them).
    fn metrics_calls(&self) -> u32 {
        1
    }
    /// The server's current load as of `now` (unix seconds); `None` where the vendor reports none.
    async fn metrics(
        &self,
        server_id: &str,
        now: i64,
    ) -> Result<Option<ServerMetrics>, CloudError> {
        let _ = (server_id, now);
        Ok(None)
    }
    /// Whether a firewall (`spec.firewallID`) is attached after the create, from the firewall's side
    /// ([`ComputeProvider::attach_firewall`]), instead of in the create itself.
    fn firewall_after_create(&self) -> bool {
        false
    }
    /// Adds server `server_id` to firewall `firewall_id`; idempotent.
    async fn attach_firewall(&self, server_id: &str, firewall_id: &str) -> Result<(), CloudError> {
        let _ = (server_id, firewall_id);
        Err(CloudError::Unsupported(format!(
            "{} firewalls are attached at create, not after",
            self.vendor()
        )))
    }
    /// The account's VPCs named exactly `name` (a Project's, [`vpc::vpc_name`]).
    async fn find_vpcs(&self, name: &str) -> Result<Vec<Vpc>, CloudError> {
        let _ = name;
        Err(self.no_vpcs())
    }
    /// Creates a VPC (not retried by the client: a lost answer is found by [`Self::find_vpcs`]).
    async fn create_vpc(&self, spec: &VpcSpec) -> Result<Vpc, CloudError> {
        let _ = spec;
        Err(self.no_vpcs())
    }
    /// Deletes VPC `id`; one already gone is done. A VPC that still has servers is refused by the
    /// vendor.
    async fn delete_vpc(&self, id: &str) -> Result<(), CloudError> {
        let _ = id;
        Err(self.no_vpcs())
    }
    /// Removes what a create made beside the server (Contabo: its password secret) when no server came
    /// of it (`owner_tag`: the VM's ownership tag); nothing there is done.
    async fn forget_create(&self, owner_tag: &str) -> Result<(), CloudError> {
        let _ = owner_tag;
        Ok(())
    }
    /// Checks at the vendor what a create names and [`Self::refuse_unsupported`] cannot check offline
    /// (Linode: that the subnet is one of the VPC's own), before any intent is recorded. A refusal is
    /// [`CloudError::Unsupported`].
    async fn check_create(&self, spec: &ServerSpec) -> Result<(), CloudError> {
        let _ = spec;
        Ok(())
    }
    /// Whether `e` is the vendor refusing an action only because the server is busy with another one
    /// (DigitalOcean's 422 "pending event"): nothing was done, and the same request later may succeed.
    fn is_busy(&self, e: &CloudError) -> bool {
        let _ = e;
        false
    }
    /// Why this vendor's VPCs are not made by Quartermaster.
    fn no_vpcs(&self) -> CloudError {
        CloudError::Unsupported(format!(
            "{}: Quartermaster does not create VPCs at this vendor",
            self.vendor()
        ))
    }
    /// Whether the server must be off to resize.
    fn resize_needs_power_off(&self) -> bool;
    /// Which sizes the vendor resizes a server to.
    fn resize_rule(&self) -> ResizeRule {
        ResizeRule::NoSmallerDisk
    }
    /// Whether the create takes a password Quartermaster chooses (written to the connection Secret
    /// first) for a server of this family (`windows`): Linode always, Contabo for Windows (RDP).
    fn accepts_root_password(&self, windows: bool) -> bool;
    /// The most user data (bytes, before any encoding) the vendor's API reference accepts at create;
    /// `None` where it documents no limit. Checked before the create is sent.
    fn user_data_limit(&self) -> Option<usize> {
        None
    }
    /// Vendor name.
    fn vendor(&self) -> &'static str;
}

/// Which sizes a vendor resizes a server to; a resize is admitted against it before any power action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeRule {
    /// No resize through the API (Contabo): a size change is refused.
    Unsupported,
    /// Any size it offers in the server's region whose disk is not smaller than the current one
    /// (DigitalOcean, Vultr: a disk is never shrunk).
    NoSmallerDisk,
    /// Any size it offers in the server's region (Linode resizes the disk down when the data fits, and
    /// refuses otherwise).
    Any,
}

/// Everything needed to talk to one vendor account. Its `Debug` never shows the credentials.
#[derive(Clone)]
pub struct Account {
    /// Vendor.
    pub provider: ProviderType,
    /// Base URL override.
    pub endpoint: Option<String>,
    /// The credentials Secret value (a token, or JSON for Contabo).
    pub credentials: String,
    /// Client-side rate limit (requests per second, burst).
    pub rate_limit: Option<(u32, u32)>,
}

/// The client-side rate limit (requests per second, burst) used for an account whose ProviderConfig sets
/// none: the vendor's documented limit, for its public API only. With an `endpoint` override (a proxy, a
/// regional endpoint, `quartermaster sim`) the limit is whatever that endpoint enforces, so none is
/// assumed; 429 with `Retry-After` is honoured either way. The bucket starts full, so it lets at most
/// `burst + rate × T` requests through in any T seconds; it is kept per ProviderConfig (and built anew,
/// full, when its spec or Secret changes).
///
/// - DigitalOcean: 5,000 requests an hour and 250 a minute per token (its API reference). One a second
///   with a burst of 180 stays under both: at most 240 in any minute and 3,780 in any hour.
/// - Vultr: 30 requests a second per client address. 20 a second with a burst of 10 sends at most 30 in
///   any second for one account; several Vultr accounts on one controller are not held to it together.
/// - Linode and Contabo document no number in their API references: none.
pub fn documented_rate_limit(provider: ProviderType, endpoint: Option<&str>) -> Option<(u32, u32)> {
    // 1NCE's 10 requests a second per customer hold at any endpoint (a proxy, the simulator, which
    // enforces it too).
    if provider == ProviderType::Onence {
        return Some((onence::REQUESTS_PER_SECOND, onence::REQUESTS_PER_SECOND));
    }
    if provider == ProviderType::Stripe {
        return Some((stripe::REQUESTS_PER_SECOND, stripe::REQUESTS_PER_SECOND));
    }
    if endpoint.is_some() {
        return None;
    }
    match provider {
        ProviderType::Digitalocean => Some((1, 180)),
        ProviderType::Vultr => Some((20, 10)),
        _ => None,
    }
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("provider", &self.provider)
            .field("endpoint", &self.endpoint)
            .field("credentials", &"<redacted>")
            .field("rate_limit", &self.rate_limit)
            .finish()
    }
}

/// Builds the provider for an account.
pub fn connect(
    account: &Account,
    policy: RetryPolicy,
    metrics: Option<HttpMetrics>,
) -> Result<Box<dyn ComputeProvider>, CloudError> {
    let vendor = account.provider.as_str();
    let mut http = HttpClient::new(vendor, policy);
    if let Some((rps, burst)) = account.rate_limit {
        http = http.with_rate_limit(rps, burst);
    }
    if let Some(m) = metrics {
        http = http.with_metrics(m);
    }
    let endpoint = account
        .endpoint
        .as_deref()
        .map(|e| e.trim_end_matches('/').to_string());
    Ok(match account.provider {
        ProviderType::Digitalocean => Box::new(digitalocean::DigitalOcean::new(
            http,
            endpoint,
            &account.credentials,
        )),
        ProviderType::Linode => Box::new(linode::Linode::new(http, endpoint, &account.credentials)),
        ProviderType::Vultr => Box::new(vultr::Vultr::new(http, endpoint, &account.credentials)),
        ProviderType::Contabo => {
            Box::new(contabo::Contabo::new(http, endpoint, &account.credentials))
        }
        other => {
            return Err(CloudError::Unsupported(format!(
                "ProviderConfig type {} is not a compute provider",
                other.as_str()
            )));
        }
    })
}

/// A vendor's JSON number as an exact decimal: the shortest decimal that round-trips the float the vendor
/// sent (0.00893 stays 0.00893), never float arithmetic.
pub fn decimal_from_f64(v: f64) -> Decimal {
    Decimal::from_str(&format!("{v}")).unwrap_or_default()
}

/// A generated root password: 25 characters, 20 from an unambiguous alphabet plus the character classes
/// vendors demand (Contabo's pattern included).
pub fn generate_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rng();
    let body: String = (0..20)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    // `_` and `@` are among the specials Contabo demands two of (with a digit, upper and lower case).
    format!("{body}_Q7x@")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_passwords_meet_every_vendors_rules() {
        const SPECIALS: &str = "!@#$^&*?_~";
        for _ in 0..200 {
            let pw = generate_password();
            let count = |f: fn(char) -> bool| pw.chars().filter(|c| f(*c)).count();
            assert!(pw.len() >= 8 && pw.len() <= 128, "{pw}");
            assert!(count(|c| c.is_ascii_uppercase()) > 0, "{pw}");
            assert!(count(|c| c.is_ascii_lowercase()) > 0, "{pw}");
            let specials = pw.chars().filter(|c| SPECIALS.contains(*c)).count();
            let digits = count(|c| c.is_ascii_digit());
            // Contabo: one digit and two specials, or three digits and one special.
            assert!(
                (digits >= 1 && specials >= 2) || (digits >= 3 && specials >= 1),
                "{pw}"
            );
        }
    }

    #[test]
    fn an_account_never_prints_its_credentials() {
        let a = Account {
            provider: ProviderType::Digitalocean,
            endpoint: None,
            credentials: "dop_v1_supersecret".into(),
            rate_limit: None,
        };
        let shown = format!("{a:?}");
        assert!(!shown.contains("supersecret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn unset_rate_limits_follow_the_vendors_documents_on_their_public_apis_only() {
        let (rps, burst) = documented_rate_limit(ProviderType::Digitalocean, None).unwrap();
        // A token bucket sends at most burst + rate × window in any window.
        assert!(burst + 60 * rps <= 250, "over DigitalOcean's 250 a minute");
        assert!(
            burst + 3600 * rps <= 5000,
            "over DigitalOcean's 5,000 an hour"
        );
        let (rps, burst) = documented_rate_limit(ProviderType::Vultr, None).unwrap();
        assert!(burst + rps <= 30, "over Vultr's 30 a second");
        assert!(rps > 0 && burst > 0);
        assert_eq!(documented_rate_limit(ProviderType::Linode, None), None);
        assert_eq!(documented_rate_limit(ProviderType::Contabo, None), None);
        for p in [ProviderType::Digitalocean, ProviderType::Vultr] {
            assert_eq!(
                documented_rate_limit(p, Some("http://127.0.0.1:8080")),
                None,
                "an endpoint override sets its own limit"
            );
        }
    }

    #[test]
    fn options_a_vendor_cannot_honour_are_refused_naming_it_and_the_field() {
        let all = Honours {
            vpc: true,
            subnet: true,
            firewall: true,
            monitoring: true,
            stack_script: true,
        };
        let o = ServerOptions {
            vpc_id: Some("v".into()),
            monitoring: true,
            ..Default::default()
        };
        assert!(refuse_options("x", &o, all).is_ok());
        assert!(refuse_options("x", &ServerOptions::default(), Honours::default()).is_ok());
        let why = refuse_options("contabo", &o, Honours::default()).unwrap_err();
        assert!(why.starts_with("spec.vpcID: contabo"), "{why}");
        let why = refuse_options(
            "vultr",
            &o,
            Honours {
                vpc: true,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(why.starts_with("spec.monitoring: vultr"), "{why}");
        // A subnet: only where the vendor picks one (Linode), and only of a VPC that is named.
        let subnet = ServerOptions {
            vpc_id: Some("v".into()),
            subnet_id: Some("s".into()),
            ..Default::default()
        };
        let vpc_only = Honours {
            vpc: true,
            ..Default::default()
        };
        let why = refuse_options("digitalocean", &subnet, vpc_only).unwrap_err();
        assert!(why.starts_with("spec.subnetID: digitalocean"), "{why}");
        let orphan = ServerOptions {
            vpc_id: None,
            ..subnet.clone()
        };
        let why = refuse_options("linode", &orphan, all).unwrap_err();
        assert!(why.contains("spec.vpcID"), "{why}");
    }

    #[test]
    fn only_an_answer_that_proves_nothing_was_queued_allows_another_try() {
        let status = |s: u16| {
            CloudError::Http(HttpError::Status {
                vendor: "1nce",
                status: s,
                message: String::new(),
                retry_after: None,
            })
        };
        assert_eq!(status(503).call_failure(), CallFailure::NotDone);
        assert_eq!(status(429).call_failure(), CallFailure::NotDone);
        assert_eq!(status(422).call_failure(), CallFailure::Refused);
        assert_eq!(status(404).call_failure(), CallFailure::Refused);
        let timeout = CloudError::Http(HttpError::Timeout {
            vendor: "1nce",
            timeout: std::time::Duration::from_secs(30),
        });
        assert_eq!(timeout.call_failure(), CallFailure::Unknown);
        let dropped = CloudError::Http(HttpError::Unreachable {
            vendor: "1nce",
            message: "connection reset".into(),
        });
        assert_eq!(dropped.call_failure(), CallFailure::Unknown);
    }

    #[test]
    fn decimals_are_exact() {
        assert_eq!(decimal_from_f64(0.00893).to_string(), "0.00893");
        assert_eq!(decimal_from_f64(6.0).to_string(), "6");
        assert_eq!(decimal_from_f64(0.0119).to_string(), "0.0119");
    }

    #[test]
    fn passwords_are_strong_and_distinct() {
        let a = generate_password();
        assert_eq!(a.len(), 25);
        assert!(a.chars().any(|c| c.is_ascii_uppercase()));
        assert!(a.chars().any(|c| c.is_ascii_digit()));
        assert_ne!(a, generate_password());
    }
}

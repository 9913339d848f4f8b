//! VirtualMachine reconciler: dereference (ProviderConfig, Project, credentials) → validate (immutable
//! fields, catalog, project limit) → find or create exactly once → converge power and size → status and
//! connection Secret.
//!
//! # Guarantees
//! - **Create exactly once.** Before the vendor's create is called, `status.creationKey` (the object's UID)
//!   is persisted, and the vendor object is tagged `quartermaster-uid-<uid>`. Every reconcile without a
//!   recorded `externalID` first looks the tag up; so a crash anywhere — before the call, during it, after
//!   the vendor created the server but before its ID was recorded — finds the server instead of creating a
//!   second one.
//! - `runStrategy` is only read, never rewritten. `ObserveOnly` never calls a mutating vendor API.
//! - One reboot per distinct `quartermaster.dev/restart-requested-at` value.
//! - Deletion (policy Delete) deletes every vendor server carrying the UID tag and waits until the vendor
//!   reports them gone; Orphan (and ObserveOnly) leave them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};

use super::framework::{Applied, Cleanup, FIELD_MANAGER, Reconciler, persist_status, publish};
use super::vendor::{self, Resolved};
use super::{Context, Error};
use crate::cloud::catalog::Catalog;
use crate::cloud::{self, ComputeProvider, PowerAction, Server, ServerSpec, ServerState};
use crate::crd::conditions::Health;
use crate::crd::project::CreditExhaustedPolicy;
use crate::crd::virtual_machine::MeteringWindow;
use crate::crd::virtual_machine::{
    DeletionPolicy, ManagementPolicy, OperatingSystem, RunStrategy, VirtualMachineStatus,
    VmAddresses, VmPhase,
};
use crate::crd::{
    ANNOTATION_EXTERNAL_ID, ANNOTATION_RESTART_REQUESTED_AT, LocalObjectReference, Project,
    VirtualMachine,
};
use crate::ledger::metering;

/// Condition reasons specific to VirtualMachines.
pub mod reason {
    /// The referenced Project does not exist.
    pub const PROJECT_NOT_FOUND: &str = "ProjectNotFound";
    /// The Project's `limits.maxVirtualMachines` is reached.
    pub const LIMIT_EXCEEDED: &str = "LimitExceeded";
    /// Region or image changed after creation.
    pub const IMMUTABLE_FIELD: &str = "ImmutableFieldChanged";
    /// Size, image or region unknown to the vendor.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The adopted or recorded vendor object does not exist.
    pub const EXTERNAL_NOT_FOUND: &str = "ExternalNotFound";
    /// The vendor cannot do what the spec asks.
    pub const UNSUPPORTED: &str = "Unsupported";
    /// Running as declared.
    pub const RUNNING: &str = "Running";
    /// Stopped as declared.
    pub const STOPPED: &str = "Stopped";
    /// Stopped because the Project has no credit left.
    pub const CREDIT_EXHAUSTED: &str = "CreditExhausted";
}

/// Annotation overriding the periodic resync of one VM (e.g. `30s`, `5m`, `1h`).
pub const ANNOTATION_RESYNC: &str = "quartermaster.dev/resync-interval";

/// The VirtualMachine reconciler.
pub struct VirtualMachineReconciler;

/// The next vendor action, decided from the declared spec and the vendor's truth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The vendor is busy (or the server in transition): look again soon.
    Wait,
    /// Power off (for `Halted`, or before a resize).
    PowerOff,
    /// Power on.
    PowerOn,
    /// Reboot for a restart request.
    Reboot,
    /// Change size.
    Resize(String),
    /// Converged.
    Nothing,
}

/// Decides the next step. Pure: no I/O.
pub fn next_step(
    run_strategy: RunStrategy,
    desired_size: &str,
    server: &Server,
    restart_pending: bool,
    resize_needs_power_off: bool,
) -> Step {
    use ServerState::*;
    if server.busy
        || matches!(
            server.state,
            Provisioning | Starting | Stopping | Resizing | Deleting
        )
    {
        return Step::Wait;
    }
    if server.state == Failed {
        return Step::Nothing;
    }
    if server.size != desired_size {
        return if resize_needs_power_off && server.state == Running {
            Step::PowerOff
        } else {
            Step::Resize(desired_size.to_string())
        };
    }
    if restart_pending && server.state == Running {
        return Step::Reboot;
    }
    match (run_strategy, server.state) {
        (RunStrategy::Always, Off) => Step::PowerOn,
        (RunStrategy::Halted, Running) => Step::PowerOff,
        _ => Step::Nothing,
    }
}

/// The phase shown for a vendor state.
pub fn phase_of(state: ServerState) -> VmPhase {
    match state {
        ServerState::Provisioning => VmPhase::Provisioning,
        ServerState::Starting => VmPhase::Starting,
        ServerState::Running => VmPhase::Running,
        ServerState::Stopping => VmPhase::Stopping,
        ServerState::Off => VmPhase::Stopped,
        ServerState::Resizing => VmPhase::Resizing,
        ServerState::Deleting => VmPhase::Terminating,
        ServerState::Failed => VmPhase::Failed,
    }
}

/// Parses `30s`, `5m`, `2h` (or plain seconds).
pub fn parse_interval(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        's' => (&s[..s.len() - 1], 1),
        'm' => (&s[..s.len() - 1], 60),
        'h' => (&s[..s.len() - 1], 3600),
        _ => (s, 1),
    };
    let n: u64 = num.parse().ok()?;
    (n > 0).then(|| Duration::from_secs(n * mult))
}

/// The `.rdp` file for a Windows VM: full address, username, and sensible display/redirection defaults.
pub fn rdp_file(address: &str, username: &str) -> String {
    [
        format!("full address:s:{address}"),
        format!("username:s:{username}"),
        "prompt for credentials:i:1".into(),
        "administrative session:i:1".into(),
        "screen mode id:i:2".into(),
        "use multimon:i:0".into(),
        "desktopwidth:i:1920".into(),
        "desktopheight:i:1080".into(),
        "session bpp:i:32".into(),
        "smart sizing:i:1".into(),
        "dynamic resolution:i:1".into(),
        "compression:i:1".into(),
        "redirectclipboard:i:1".into(),
        "redirectprinters:i:0".into(),
        "redirectdrives:i:0".into(),
        "redirectsmartcards:i:0".into(),
        "audiomode:i:0".into(),
        "autoreconnection enabled:i:1".into(),
        "authentication level:i:2".into(),
        "negotiate security layer:i:1".into(),
        String::new(),
    ]
    .join("\r\n")
}

/// Name of a VM's connection Secret.
pub fn connection_secret_name(vm: &VirtualMachine) -> String {
    format!("{}-connection", vm.name_any())
}

/// The connection Secret's data for a VM and its server.
pub fn connection_data(
    vm: &VirtualMachine,
    server: Option<&Server>,
    password: Option<&str>,
) -> BTreeMap<String, String> {
    let mut d = BTreeMap::new();
    let windows = vm.spec.os == OperatingSystem::Windows;
    let username = if windows { "Administrator" } else { "root" };
    d.insert("username".into(), username.into());
    if let Some(p) = password {
        d.insert("password".into(), p.into());
    }
    if let Some(s) = server {
        if let Some(ip) = &s.public_ipv4 {
            d.insert("ipv4".into(), ip.clone());
        }
        if let Some(ip) = &s.public_ipv6 {
            d.insert("ipv6".into(), ip.clone());
        }
        if let Some(ip) = &s.private_ipv4 {
            d.insert("privateIPv4".into(), ip.clone());
        }
        let host = s.public_ipv4.clone().or_else(|| s.public_ipv6.clone());
        if windows && let Some(h) = host {
            d.insert("connection.rdp".into(), rdp_file(&h, username));
        }
    }
    d
}

fn subject(vm: &VirtualMachine) -> metering::Subject {
    metering::Subject {
        namespace: vm_ns(vm),
        project: vm
            .spec
            .project_ref
            .as_ref()
            .map(|p| p.name.clone())
            .unwrap_or_default(),
        name: vm.name_any(),
        uid: vm.uid().unwrap_or_default(),
    }
}

fn open_window(w: &MeteringWindow) -> Option<metering::OpenWindow> {
    Some(metering::OpenWindow {
        since: w.since,
        size: w.size.clone(),
        hourly_price: w.hourly_price.parse().ok()?,
        currency: w.currency.clone(),
    })
}

fn stored_window(w: metering::OpenWindow) -> MeteringWindow {
    MeteringWindow {
        since: w.since,
        size: w.size,
        hourly_price: w.hourly_price.to_string(),
        currency: w.currency,
    }
}

/// Advances metering: closed windows go to the ledger first; the window in status moves only once the
/// ledger accepted them (so an outage or crash loses nothing and counts nothing twice).
async fn meter(
    ctx: &Context,
    vm: &VirtualMachine,
    status: &mut VirtualMachineStatus,
    obs: &metering::Observation,
    closing: bool,
) -> Result<(), Error> {
    if ctx.ledger.is_none() {
        return Ok(());
    }
    let open = status.metering.as_ref().and_then(open_window);
    let step = metering::step(
        &subject(vm),
        open.as_ref(),
        obs,
        jiff::Timestamp::now().as_second(),
        closing,
    );
    let uid = vm.uid().unwrap_or_default();
    match ctx.record_usage(&step.events).await {
        Ok(()) => {
            ctx.set_pending_usage(&uid, 0);
            status.metering = step.open.map(stored_window);
            Ok(())
        }
        Err(e) => {
            ctx.set_pending_usage(&uid, step.events.len());
            Err(e.into())
        }
    }
}

/// Whether the VM's Project has run out of credit and says to stop its VMs.
async fn credit_exhausted(ctx: &Context, vm: &VirtualMachine) -> Result<Option<String>, Error> {
    let Some(p) = &vm.spec.project_ref else {
        return Ok(None);
    };
    let projects: Api<Project> = Api::namespaced(ctx.client.clone(), &vm_ns(vm));
    let Some(project) = projects
        .get_opt(&p.name)
        .await
        .map_err(Error::kube("reading the project"))?
    else {
        return Ok(None);
    };
    if project.spec.on_credit_exhausted != CreditExhaustedPolicy::Stop {
        return Ok(None);
    }
    let balance = project
        .status
        .as_ref()
        .and_then(|s| s.credit_balance.as_deref())
        .and_then(|b| b.parse::<rust_decimal::Decimal>().ok());
    Ok(balance.filter(|b| *b <= rust_decimal::Decimal::ZERO).map(|b| {
        format!("stopped: Project {:?} has no credit left (balance {b}, onCreditExhausted: Stop); grant credit to resume", p.name)
    }))
}

fn vm_ns(vm: &VirtualMachine) -> String {
    vm.namespace().unwrap_or_default()
}

async fn read_connection_secret(
    ctx: &Context,
    vm: &VirtualMachine,
) -> Result<Option<Secret>, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &vm_ns(vm));
    api.get_opt(&connection_secret_name(vm))
        .await
        .map_err(Error::kube("reading the connection secret"))
}

fn secret_value(secret: Option<&Secret>, key: &str) -> Option<String> {
    secret?
        .data
        .as_ref()?
        .get(key)
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
}

/// Writes the connection Secret (owner-referenced to the VM) when its data differs.
async fn apply_connection_secret(
    ctx: &Context,
    vm: &VirtualMachine,
    existing: Option<&Secret>,
    data: BTreeMap<String, String>,
) -> Result<(), Error> {
    let bytes: BTreeMap<String, ByteString> = data
        .into_iter()
        .map(|(k, v)| (k, ByteString(v.into_bytes())))
        .collect();
    if existing.and_then(|s| s.data.as_ref()) == Some(&bytes) {
        return Ok(());
    }
    let owner = vm
        .controller_owner_ref(&())
        .ok_or_else(|| Error::permanent("InvalidObject", "object has no uid"))?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(connection_secret_name(vm)),
            namespace: vm.namespace(),
            owner_references: Some(vec![owner]),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_string(),
                    "quartermaster".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(bytes),
        ..Default::default()
    };
    let mut v = serde_json::to_value(&secret)
        .map_err(|e| Error::permanent("InvalidObject", e.to_string()))?;
    v["apiVersion"] = "v1".into();
    v["kind"] = "Secret".into();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &vm_ns(vm));
    api.patch(
        &connection_secret_name(vm),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&v),
    )
    .await
    .map_err(Error::kube("writing the connection secret"))?;
    Ok(())
}

/// Checks the Project reference and, before a create (`new_monthly` = the new VM's monthly price), the
/// Project's limits: `maxVirtualMachines` (VMs are admitted in (creationTimestamp, name) order, so concurrent
/// reconciles agree on which ones fit) and `maxMonthlySpend` (the members' monthly prices plus this one).
async fn check_project(
    ctx: &Context,
    vm: &VirtualMachine,
    new_monthly: Option<rust_decimal::Decimal>,
) -> Result<(), Error> {
    let Some(p) = &vm.spec.project_ref else {
        return Ok(());
    };
    let ns = vm_ns(vm);
    let projects: Api<Project> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(project) = projects
        .get_opt(&p.name)
        .await
        .map_err(Error::kube("reading the project"))?
    else {
        return Err(Error::permanent(
            reason::PROJECT_NOT_FOUND,
            format!("Project {:?} not found in namespace {ns:?}", p.name),
        ));
    };
    let Some(monthly) = new_monthly else {
        return Ok(());
    };
    let limits = project.spec.limits.clone().unwrap_or_default();
    let max_spend = limits
        .max_monthly_spend
        .as_deref()
        .and_then(|m| m.parse::<rust_decimal::Decimal>().ok());
    if limits.max_virtual_machines.is_none() && max_spend.is_none() {
        return Ok(());
    }
    let vms: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &ns);
    let mut members: Vec<VirtualMachine> = vms
        .list(&Default::default())
        .await
        .map_err(Error::kube("listing the project's virtual machines"))?
        .items
        .into_iter()
        .filter(|m| {
            m.spec
                .project_ref
                .as_ref()
                .is_some_and(|r| r.name == p.name)
                && m.meta().deletion_timestamp.is_none()
        })
        .collect();
    if let Some(max) = limits.max_virtual_machines {
        members.sort_by(|a, b| {
            let key = |m: &VirtualMachine| {
                (
                    m.meta().creation_timestamp.as_ref().map(|t| t.0),
                    m.name_any(),
                )
            };
            key(a).cmp(&key(b))
        });
        let position = members
            .iter()
            .position(|m| m.uid() == vm.uid())
            .unwrap_or(members.len());
        if position >= max as usize {
            return Err(Error::permanent(
                reason::LIMIT_EXCEEDED,
                format!(
                    "Project {:?} allows {max} virtual machines (limits.maxVirtualMachines); this one is number {}",
                    p.name,
                    position + 1
                ),
            ));
        }
    }
    if let Some(limit) = max_spend {
        let existing: rust_decimal::Decimal = members
            .iter()
            .filter(|m| m.uid() != vm.uid())
            .filter_map(|m| {
                m.status
                    .as_ref()?
                    .monthly_price
                    .as_deref()?
                    .parse::<rust_decimal::Decimal>()
                    .ok()
            })
            .sum();
        if existing + monthly > limit {
            return Err(Error::permanent(
                reason::LIMIT_EXCEEDED,
                format!(
                    "Project {:?} limits monthly spend to {limit}: its VMs cost {existing} a month and this one would add {monthly}",
                    p.name
                ),
            ));
        }
    }
    Ok(())
}

fn observed(status: &mut VirtualMachineStatus, server: &Server, catalog: Option<&Catalog>) {
    status.phase = Some(phase_of(server.state));
    status.external_id = Some(server.id.clone());
    status.size = Some(server.size.clone());
    status.addresses = Some(VmAddresses {
        public_ipv4: server.public_ipv4.clone(),
        public_ipv6: server.public_ipv6.clone(),
        private_ipv4: server.private_ipv4.clone(),
    });
    if let Some(size) = catalog.and_then(|c| c.size(&server.size)) {
        status.hourly_price = Some(super::project::money(size.price_hourly));
        status.monthly_price = Some(super::project::money(size.price_monthly));
        status.currency = Some(size.currency.clone());
    }
}

fn health_for(vm: &VirtualMachine, server: &Server, step: &Step) -> Health {
    let phase = format!("{:?}", phase_of(server.state));
    match (step, server.state) {
        (Step::Nothing, ServerState::Failed) => Health::stalled(
            "VendorFailed",
            format!("the vendor reports server {} failed", server.id),
        ),
        (Step::Nothing, ServerState::Running) => Health::ready(format!(
            "running at {}",
            server.public_ipv4.as_deref().unwrap_or("(no public IPv4)")
        )),
        (Step::Nothing, ServerState::Off) => Health::Ready {
            reason: reason::STOPPED.into(),
            message: match vm.spec.run_strategy {
                RunStrategy::Halted => "stopped, as runStrategy Halted declares".into(),
                _ => "stopped (runStrategy Manual)".into(),
            },
        },
        (Step::Nothing, _) => Health::progressing(phase, "waiting for the vendor"),
        (Step::Wait, _) => Health::progressing(
            phase.clone(),
            format!("server {} is {}", server.id, phase.to_lowercase()),
        ),
        (Step::PowerOff, _) => Health::progressing("Stopping", "powering off"),
        (Step::PowerOn, _) => Health::progressing("Starting", "powering on"),
        (Step::Reboot, _) => Health::progressing("Restarting", "rebooting"),
        (Step::Resize(s), _) => Health::progressing("Resizing", format!("resizing to {s}")),
    }
}

impl VirtualMachineReconciler {
    async fn catalog(
        ctx: &Context,
        r: &Resolved,
        p: &dyn ComputeProvider,
    ) -> Result<Arc<Catalog>, Error> {
        let key = format!("{}/{}", r.config.name_any(), r.fingerprint);
        ctx.catalogs
            .get(&key, p)
            .await
            .map_err(Error::vendor("read the vendor catalog"))
    }

    /// Finds the vendor server for this VM, creating it (exactly once) when there is none.
    async fn find_or_create(
        vm: &VirtualMachine,
        ctx: &Arc<Context>,
        r: &Resolved,
        p: &dyn ComputeProvider,
        status: &mut VirtualMachineStatus,
        previous: &VirtualMachineStatus,
    ) -> Result<Server, Error> {
        let uid = vm
            .uid()
            .ok_or_else(|| Error::permanent("InvalidObject", "object has no uid"))?;
        // Adoption by annotation, or the ID recorded earlier.
        let known = vm
            .annotations()
            .get(ANNOTATION_EXTERNAL_ID)
            .cloned()
            .or_else(|| status.external_id.clone());
        if let Some(id) = known {
            let server = p.get(&id).await.map_err(Error::vendor("read the server"))?;
            return match server {
                Some(s) => Ok(s),
                None => Err(Error::permanent(
                    reason::EXTERNAL_NOT_FOUND,
                    format!("{} reports no server with ID {id:?}", p.vendor()),
                )),
            };
        }
        // A server created by an earlier attempt (crash before its ID was recorded) carries our tag.
        let mut tagged = p
            .find_by_tag(&cloud::uid_tag(&uid))
            .await
            .map_err(Error::vendor("look up servers by tag"))?;
        if !tagged.is_empty() {
            tagged.sort_by(|a, b| a.id.cmp(&b.id));
            if tagged.len() > 1 {
                publish(
                    ctx,
                    vm,
                    EventType::Warning,
                    "DuplicateFound",
                    &format!(
                        "{} servers carry this object's tag; using {}",
                        tagged.len(),
                        tagged[0].id
                    ),
                )
                .await;
            }
            return Ok(tagged.remove(0));
        }
        if vm.spec.management_policy == ManagementPolicy::ObserveOnly {
            return Err(Error::permanent(
                reason::EXTERNAL_NOT_FOUND,
                format!(
                    "managementPolicy ObserveOnly: no server to observe; set the {ANNOTATION_EXTERNAL_ID} annotation"
                ),
            ));
        }
        let catalog = Self::catalog(ctx, r, p).await?;
        catalog
            .validate(&vm.spec.region, &vm.spec.size, &vm.spec.image)
            .map_err(|m| Error::permanent(reason::INVALID_SPEC, m))?;
        let monthly = catalog
            .size(&vm.spec.size)
            .map(|s| s.price_monthly)
            .unwrap_or_default();
        check_project(ctx, vm, Some(monthly)).await?;

        // Record intent before the vendor call (and the root password, if the vendor takes one).
        let existing = read_connection_secret(ctx, vm).await?;
        let mut password = secret_value(existing.as_ref(), "password");
        if p.accepts_root_password() && password.is_none() {
            let generated = cloud::generate_password();
            apply_connection_secret(
                ctx,
                vm,
                existing.as_ref(),
                connection_data(vm, None, Some(&generated)),
            )
            .await?;
            password = Some(generated);
        }
        status.creation_key = Some(uid.clone());
        status.region = Some(vm.spec.region.clone());
        status.image = Some(vm.spec.image.clone());
        status.phase = Some(VmPhase::Provisioning);
        persist_status(ctx, vm, previous, status.clone()).await?;

        let user_data = match &vm.spec.user_data_secret_ref {
            Some(u) => {
                let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &vm_ns(vm));
                let s = api
                    .get_opt(&u.name)
                    .await
                    .map_err(Error::kube("reading the user data secret"))?;
                Some(secret_value(s.as_ref(), &u.key).ok_or_else(|| {
                    Error::permanent(
                        crate::crd::conditions::reason::MISSING_SECRET,
                        format!("user data secret {:?} has no key {:?}", u.name, u.key),
                    )
                })?)
            }
            None => None,
        };
        let mut tags = vec![cloud::uid_tag(&uid)];
        tags.extend(vm.spec.tags.iter().cloned());
        let spec = ServerSpec {
            name: format!("{}-{}", vm.name_any(), &uid[..8.min(uid.len())]),
            region: vm.spec.region.clone(),
            size: vm.spec.size.clone(),
            image: vm.spec.image.clone(),
            ssh_keys: vm.spec.ssh_keys.clone(),
            user_data,
            tags,
            backups: vm.spec.backups,
            ipv6: vm.spec.ipv6,
            root_password: password.filter(|_| p.accepts_root_password()),
        };
        let server = p
            .create(&spec)
            .await
            .map_err(Error::vendor("create the server"))?;
        status.external_id = Some(server.id.clone());
        publish(
            ctx,
            vm,
            EventType::Normal,
            "Created",
            &format!(
                "created {} server {} ({} in {})",
                p.vendor(),
                server.id,
                spec.size,
                spec.region
            ),
        )
        .await;
        Ok(server)
    }
}

impl Reconciler<VirtualMachine> for VirtualMachineReconciler {
    async fn apply(
        &self,
        vm: Arc<VirtualMachine>,
        ctx: Arc<Context>,
    ) -> Result<Applied<VirtualMachineStatus>, Error> {
        let ns = vm_ns(&vm);
        let previous = vm.status.clone().unwrap_or_default();
        let mut status = previous.clone();

        // Immutable fields (the API server of 1.20 cannot enforce CEL transition rules, so we do).
        for (field, recorded, wanted) in [
            ("region", &previous.region, &vm.spec.region),
            ("image", &previous.image, &vm.spec.image),
        ] {
            if let Some(rec) = recorded
                && rec != wanted
            {
                return Err(Error::permanent(
                    reason::IMMUTABLE_FIELD,
                    format!(
                        "spec.{field} is immutable: the server was created with {rec:?}, spec now says {wanted:?}; restore it, or delete and recreate the VirtualMachine"
                    ),
                ));
            }
        }
        check_project(&ctx, &vm, None).await?;
        let Some(r) = vendor::resolve(&ctx, &vm.spec.provider_config_ref.name, &ns).await? else {
            return Ok(Applied {
                health: Health::not_ready(
                    vendor::reason::SUSPENDED,
                    format!(
                        "ProviderConfig {:?} is suspended",
                        vm.spec.provider_config_ref.name
                    ),
                ),
                status,
                requeue_after: Some(ctx.config.poll_interval * 6),
            });
        };
        let p = ctx.providers.compute(&ctx, &r).await?;
        let server = Self::find_or_create(&vm, &ctx, &r, &*p, &mut status, &previous).await?;
        if status.region.is_none() {
            status.region = Some(server.region.clone())
                .filter(|s| !s.is_empty())
                .or(Some(vm.spec.region.clone()));
            status.image = Some(vm.spec.image.clone());
        }
        let catalog = Self::catalog(&ctx, &r, &*p).await.ok();
        observed(&mut status, &server, catalog.as_deref());
        let obs = metering::Observation {
            running: server.state == ServerState::Running,
            size: server.size.clone(),
            price: catalog
                .as_deref()
                .and_then(|c| c.size(&server.size))
                .map(|s| (s.price_hourly, s.currency.clone())),
        };
        if let Err(e) = meter(&ctx, &vm, &mut status, &obs, false).await {
            // The window stays open in status; the next reconcile records it. Power and size go on.
            tracing::warn!(vm = %vm.name_any(), error = %e, "usage not recorded yet; will retry");
        }
        let exhausted = credit_exhausted(&ctx, &vm).await?;
        let run_strategy = if exhausted.is_some() {
            RunStrategy::Halted
        } else {
            vm.spec.run_strategy
        };

        // Connection details.
        let existing = read_connection_secret(&ctx, &vm).await?;
        let password = secret_value(existing.as_ref(), "password");
        apply_connection_secret(
            &ctx,
            &vm,
            existing.as_ref(),
            connection_data(&vm, Some(&server), password.as_deref()),
        )
        .await?;
        status.connection_secret_ref = Some(LocalObjectReference {
            name: connection_secret_name(&vm),
        });

        let restart = vm
            .annotations()
            .get(ANNOTATION_RESTART_REQUESTED_AT)
            .cloned();
        let restart_pending = restart.is_some() && restart != previous.last_restart_request;
        let observe_only = vm.spec.management_policy == ManagementPolicy::ObserveOnly;
        let step = if observe_only {
            Step::Nothing
        } else {
            next_step(
                run_strategy,
                &vm.spec.size,
                &server,
                restart_pending,
                p.resize_needs_power_off(),
            )
        };
        if restart_pending
            && server.state != ServerState::Running
            && matches!(step, Step::Nothing)
            && !observe_only
        {
            // Nothing to reboot: the request is acknowledged, not queued.
            status.last_restart_request = restart.clone();
            publish(
                &ctx,
                &*vm,
                EventType::Normal,
                "RestartSkipped",
                "restart requested while the VM is not running",
            )
            .await;
        }
        if !observe_only && (step != Step::Nothing && step != Step::Wait) {
            if let Step::Resize(size) = &step
                && let Some(c) = &catalog
                && c.size(size).is_none()
            {
                return Err(Error::permanent(
                    reason::INVALID_SPEC,
                    c.validate(&vm.spec.region, size, &vm.spec.image)
                        .err()
                        .unwrap_or_else(|| format!("unknown size {size:?}")),
                ));
            }
            let (result, event, note) = match &step {
                Step::PowerOn => (
                    p.power(&server.id, PowerAction::On).await,
                    "PoweringOn",
                    "powering on".to_string(),
                ),
                Step::PowerOff => (
                    p.power(&server.id, PowerAction::Off).await,
                    "PoweringOff",
                    "powering off".to_string(),
                ),
                Step::Reboot => (
                    p.power(&server.id, PowerAction::Reboot).await,
                    "Restarting",
                    format!(
                        "rebooting for restart request {}",
                        restart.clone().unwrap_or_default()
                    ),
                ),
                Step::Resize(s) => (
                    p.resize(&server.id, s).await,
                    "Resizing",
                    format!("resizing from {} to {s}", server.size),
                ),
                Step::Nothing | Step::Wait => (Ok(()), "", String::new()),
            };
            match result {
                Ok(()) => publish(&ctx, &*vm, EventType::Normal, event, &note).await,
                Err(crate::cloud::CloudError::Unsupported(m)) => {
                    return Err(Error::permanent(reason::UNSUPPORTED, m));
                }
                // The vendor refuses while a previous action is still running: look again soon.
                Err(e)
                    if e.is_transient()
                        || matches!(&e, crate::cloud::CloudError::Http(h) if h.status() == Some(422)) =>
                {
                    tracing::info!(vm = %vm.name_any(), error = %e, "vendor action not accepted yet; retrying");
                }
                Err(e) => return Err(Error::vendor("change the server's power or size")(e)),
            }
            if step == Step::Reboot {
                status.last_restart_request = restart.clone();
            }
        }
        let mut health = health_for(&vm, &server, &step);
        if let Some(why) = &exhausted {
            // The effective state: stopped for lack of credit (the declared runStrategy is left as written).
            health = match (&step, server.state) {
                (Step::Nothing, ServerState::Off) => {
                    Health::not_ready(reason::CREDIT_EXHAUSTED, why.clone())
                }
                _ => Health::progressing(reason::CREDIT_EXHAUSTED, why.clone()),
            };
        }
        let metering_due = status.metering.is_some();
        let requeue = match health {
            Health::Ready { .. } | Health::NotReady { .. } => vm
                .annotations()
                .get(ANNOTATION_RESYNC)
                .and_then(|v| parse_interval(v))
                .or(Some(ctx.config.resync_interval))
                // An open metering window is closed hour by hour: look at least every 10 minutes.
                .map(|d| {
                    if metering_due {
                        d.min(Duration::from_secs(600))
                    } else {
                        d
                    }
                }),
            _ => Some(ctx.config.poll_interval),
        };
        Ok(Applied {
            health,
            status,
            requeue_after: requeue,
        })
    }

    async fn cleanup(&self, vm: Arc<VirtualMachine>, ctx: Arc<Context>) -> Result<Cleanup, Error> {
        let mut status = vm.status.clone().unwrap_or_default();
        if status.metering.is_some() {
            // Billing ends with the object: record the last partial hour (retried until the ledger takes it).
            let obs = metering::Observation {
                running: false,
                size: status.size.clone().unwrap_or_default(),
                price: None,
            };
            let previous = status.clone();
            meter(&ctx, &vm, &mut status, &obs, true).await?;
            persist_status(&ctx, &*vm, &previous, status.clone()).await?;
        }
        if vm.spec.deletion_policy == DeletionPolicy::Orphan
            || vm.spec.management_policy == ManagementPolicy::ObserveOnly
        {
            publish(
                &ctx,
                &*vm,
                EventType::Normal,
                "Orphaned",
                "the vendor server is left in place",
            )
            .await;
            return Ok(Cleanup::Done);
        }
        // Never created, never tried: nothing at the vendor.
        if status.creation_key.is_none()
            && status.external_id.is_none()
            && !vm.annotations().contains_key(ANNOTATION_EXTERNAL_ID)
        {
            return Ok(Cleanup::Done);
        }
        let ns = vm_ns(&vm);
        let r = match vendor::resolve(&ctx, &vm.spec.provider_config_ref.name, &ns).await? {
            Some(r) => r,
            None => {
                return Ok(Cleanup::Wait {
                    message: format!(
                        "ProviderConfig {:?} is suspended; deletion waits",
                        vm.spec.provider_config_ref.name
                    ),
                    requeue_after: ctx.config.poll_interval * 6,
                });
            }
        };
        let p = ctx.providers.compute(&ctx, &r).await?;
        let uid = vm.uid().unwrap_or_default();
        let mut ids: Vec<String> = p
            .find_by_tag(&cloud::uid_tag(&uid))
            .await
            .map_err(Error::vendor("look up servers by tag"))?
            .into_iter()
            .map(|s| s.id)
            .collect();
        for id in status
            .external_id
            .iter()
            .chain(vm.annotations().get(ANNOTATION_EXTERNAL_ID))
        {
            if !ids.contains(id) {
                ids.push(id.clone());
            }
        }
        let mut remaining = Vec::new();
        for id in &ids {
            if p.get(id)
                .await
                .map_err(Error::vendor("read the server"))?
                .is_some()
            {
                p.delete(id)
                    .await
                    .map_err(Error::vendor("delete the server"))?;
                remaining.push(id.clone());
            }
        }
        if remaining.is_empty() {
            return Ok(Cleanup::Done);
        }
        Ok(Cleanup::Wait {
            message: format!(
                "waiting for {} to delete server(s) {}",
                p.vendor(),
                remaining.join(", ")
            ),
            requeue_after: ctx.config.poll_interval,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(state: ServerState, size: &str) -> Server {
        Server {
            id: "1".into(),
            name: "n".into(),
            state,
            size: size.into(),
            region: "fra1".into(),
            image: None,
            public_ipv4: Some("203.0.113.5".into()),
            public_ipv6: None,
            private_ipv4: None,
            tags: vec![],
            busy: false,
        }
    }

    #[test]
    fn power_and_resize_decisions() {
        use RunStrategy::*;
        use ServerState::*;
        let s = "s-1vcpu-1gb";
        let cases: &[(RunStrategy, &str, ServerState, bool, bool, Step)] = &[
            (Always, s, Running, false, true, Step::Nothing),
            (Always, s, Off, false, true, Step::PowerOn),
            (Halted, s, Running, false, true, Step::PowerOff),
            (Halted, s, Off, false, true, Step::Nothing),
            (Manual, s, Off, false, true, Step::Nothing),
            (Manual, s, Running, false, true, Step::Nothing),
            (Always, s, Provisioning, false, true, Step::Wait),
            (Always, "s-2vcpu-2gb", Running, false, true, Step::PowerOff),
            (
                Always,
                "s-2vcpu-2gb",
                Off,
                false,
                true,
                Step::Resize("s-2vcpu-2gb".into()),
            ),
            (
                Always,
                "s-2vcpu-2gb",
                Running,
                false,
                false,
                Step::Resize("s-2vcpu-2gb".into()),
            ),
            (Always, s, Running, true, true, Step::Reboot),
            (Halted, s, Off, true, true, Step::Nothing),
            (Always, s, Failed, false, true, Step::Nothing),
        ];
        for (rs, want_size, state, restart, needs_off, want) in cases {
            let got = next_step(*rs, want_size, &server(*state, s), *restart, *needs_off);
            assert_eq!(
                &got, want,
                "{rs:?} size={want_size} state={state:?} restart={restart}"
            );
        }
        let mut busy = server(Running, s);
        busy.busy = true;
        assert_eq!(next_step(Halted, s, &busy, false, true), Step::Wait);
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_interval("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_interval("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_interval("45"), Some(Duration::from_secs(45)));
        assert_eq!(parse_interval("0s"), None);
        assert_eq!(parse_interval("soon"), None);
    }

    #[test]
    fn windows_gets_an_rdp_file() {
        let mut vm: VirtualMachine = serde_json::from_value(serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": "w", "namespace": "n"},
            "spec": {"providerConfigRef": {"name": "p"}, "region": "fra1", "size": "s", "image": "win", "os": "windows"}
        }))
        .unwrap();
        let d = connection_data(
            &vm,
            Some(&server(ServerState::Running, "s")),
            Some("S3cret-Pass"),
        );
        assert_eq!(d["username"], "Administrator");
        let rdp = &d["connection.rdp"];
        assert!(rdp.contains("full address:s:203.0.113.5\r\n"), "{rdp}");
        assert!(rdp.contains("username:s:Administrator\r\n"));
        assert!(
            !rdp.contains("S3cret-Pass"),
            "the password never goes into the .rdp file"
        );
        vm.spec.os = OperatingSystem::Linux;
        let d = connection_data(&vm, Some(&server(ServerState::Running, "s")), None);
        assert_eq!(d["username"], "root");
        assert!(!d.contains_key("connection.rdp"));
        assert_eq!(d["ipv4"], "203.0.113.5");
    }
}

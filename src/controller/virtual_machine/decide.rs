//! The pure decide step: from the VM, the status it had, what the vendor holds, the catalog and the
//! Projects' state, decide the next status, the one vendor step to take, the health and when to look again.
//! No I/O: every branch has a table test.
//!
//! # Guarantees
//! - A vendor server is acted on only when it carries this VM's ownership tag, or when it is untagged and
//!   the ProviderConfig lets this namespace adopt (then the first step tags it). A server tagged for
//!   another object is never touched, and nothing about it reaches this VM's status or Secret.
//! - Region, image, `providerConfigRef` and the adopted ID are fixed once a server exists.
//! - A `projectRef` change closes the open metering window to the old Project first, and only once the
//!   new Project admitted the VM (limits, currency); until then usage stays with the old Project.
//! - `ObserveOnly` never yields a mutating step.

use std::time::Duration;

use kube::ResourceExt;
use rust_decimal::Decimal;

use crate::cloud::catalog::Catalog;
use crate::cloud::{self, ResizeRule, Server, ServerState};
use crate::controller::project::policy::{self as limits, Candidate, ProjectState, order_of};
use crate::crd::conditions::{Health, event, reason};
use crate::crd::virtual_machine::{
    ManagementPolicy, MeteringWindow, RunStrategy, VirtualMachineStatus, VmAddresses, VmPhase,
    reserved_prefix,
};
use crate::crd::{ANNOTATION_EXTERNAL_ID, ANNOTATION_RESTART_REQUESTED_AT, VirtualMachine};
use crate::ledger::{UsageEvent, format_money, metering};

/// How often a VM with an open metering window is looked at, at least (windows close hourly).
pub const METERING_RESYNC: Duration = Duration::from_secs(600);

/// What the vendor holds for this VM.
// NB: one value per reconcile, never stored in bulk: boxing the server would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// No known ID, and no server carries the VM's tag.
    Absent {
        /// Intent (`status.creationKey`) was recorded earlier, and a second look found nothing either.
        after_intent: bool,
    },
    /// The known ID (adopted or recorded) does not exist at the vendor.
    Missing(String),
    /// The server.
    Found(Server),
}

/// A Project reference resolved.
// NB: one or two per reconcile, short-lived: boxing the state would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProjectLookup {
    /// No Project referenced.
    Unset,
    /// The referenced Project does not exist.
    Missing(String),
    /// The Project.
    Found(ProjectState),
}

impl ProjectLookup {
    /// The UID of the Project, when it exists.
    fn uid(&self) -> Option<&str> {
        match self {
            Self::Found(p) => Some(&p.uid),
            Self::Unset | Self::Missing(_) => None,
        }
    }

    fn name(&self) -> Option<&str> {
        match self {
            Self::Unset => None,
            Self::Missing(n) => Some(n),
            Self::Found(p) => Some(&p.name),
        }
    }
}

/// Everything decide looks at.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    /// The VM.
    pub vm: &'a VirtualMachine,
    /// Its UID (the idempotency key).
    pub uid: &'a str,
    /// The status it had.
    pub status: &'a VirtualMachineStatus,
    /// What the vendor holds.
    pub lookup: &'a Lookup,
    /// The vendor's catalog, when it could be read.
    pub catalog: Option<&'a Catalog>,
    /// The Project `spec.projectRef` names.
    pub target: &'a ProjectLookup,
    /// The Project the VM is admitted to (`status.project`), when that is another one.
    pub billed: Option<&'a ProjectLookup>,
    /// Whether the ProviderConfig lets this namespace adopt untagged servers.
    pub adoption_allowed: bool,
    /// Whether the vendor needs the server off to resize.
    pub resize_needs_power_off: bool,
    /// Which sizes the vendor resizes to.
    pub resize_rule: ResizeRule,
    /// The vendor's name, for messages.
    pub vendor: &'a str,
    /// Whether usage is metered (a ledger is configured).
    pub metering: bool,
    /// When this VM's server was last seen existing (unix seconds), if this process saw it.
    pub last_seen: Option<i64>,
    /// Percent the ProviderConfig adds to the vendor's prices for the tenant.
    pub markup_percent: Decimal,
    /// The ProviderConfig is suspended: nothing is created or changed through it (the server is still
    /// observed and metered).
    pub suspended: bool,
    /// The ProviderConfig requires every VM through it to belong to a Project.
    pub require_project: bool,
    /// Why the ProviderConfig no longer lets the VM's namespace use the account its server is in.
    pub access_refused: Option<&'a str>,
    /// What `spec.source.snapshotRef` resolves to (read only while the VM has no server).
    pub restore: &'a Restore,
    /// Now, unix seconds.
    pub now: i64,
}

/// What a VM's `spec.source.snapshotRef` resolves to, read from the VirtualMachineSnapshot's cache.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Restore {
    /// Not read (no `source`, or the VM holds a server).
    #[default]
    Unread,
    /// The image a create names to make the server from the snapshot (the vendor's form).
    Image(String),
    /// The snapshot is not there or not available yet.
    Wait(String),
    /// It can never be restored here (another account, a vendor that cannot).
    Refused(String),
}

/// The image status records for `vm`: `spec.image`, or `snapshot/<name>` when it is made from a
/// VirtualMachineSnapshot (either is immutable once the server exists).
pub fn image_of(vm: &VirtualMachine) -> String {
    match &vm.spec.source {
        Some(src) if vm.spec.image.is_empty() => format!("snapshot/{}", src.snapshot_ref.name),
        _ => vm.spec.image.clone(),
    }
}

/// What a create makes the disk from: `Ok(Some(image))` to check in the catalog, `Ok(None)` for a
/// snapshot ready to restore, else what to show (waiting, or stalled for a spec that cannot work).
pub fn disk(vm: &VirtualMachine, restore: &Restore) -> Result<Option<String>, Health> {
    let image = &vm.spec.image;
    match (&vm.spec.source, restore) {
        (None, _) if image.is_empty() => Err(Health::stalled(
            reason::INVALID_SPEC,
            "spec.image or spec.source.snapshotRef is required",
        )),
        (None, _) => Ok(Some(image.clone())),
        (Some(_), _) if !image.is_empty() => Err(Health::stalled(
            reason::INVALID_SPEC,
            "give spec.image or spec.source.snapshotRef, not both",
        )),
        (Some(_), Restore::Image(_)) => Ok(None),
        (Some(_), Restore::Refused(m)) => Err(Health::stalled(reason::INVALID_SPEC, m.clone())),
        (Some(src), Restore::Wait(m)) => Err(Health::progressing(
            reason::PROVISIONING,
            format!(
                "{m}; the server is created from VirtualMachineSnapshot {:?} once it is",
                src.snapshot_ref.name
            ),
        )),
        (Some(src), Restore::Unread) => Err(Health::progressing(
            reason::PROVISIONING,
            format!("reading VirtualMachineSnapshot {:?}", src.snapshot_ref.name),
        )),
    }
}

/// The one vendor step to take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The vendor is busy (or the server in transition): look again soon.
    Wait,
    /// Create the server (intent is persisted first).
    Create,
    /// Tag an untagged server as this VM's (adoption).
    Adopt,
    /// Power off (for `Halted`, credit exhaustion, or before a resize).
    PowerOff,
    /// Power on.
    PowerOn,
    /// Reboot for a restart request.
    Reboot,
    /// Change size.
    Resize(String),
    /// Nothing to do.
    Nothing,
}

/// What decide concluded.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The next status (conditions are the framework's).
    pub status: VirtualMachineStatus,
    /// The vendor step.
    pub step: Step,
    /// The overall state.
    pub health: Health,
    /// Closed metering windows to record before `status.metering` may advance.
    pub usage: Vec<UsageEvent>,
    /// Events to publish once the step is taken (reason, message).
    pub events: Vec<(&'static str, String)>,
    /// Look again after this long (`None`: the framework's default for the health).
    pub requeue_after: Option<Duration>,
    /// Resync at least this often.
    pub resync_at_most: Option<Duration>,
    /// The server is this VM's: its addresses go into the connection Secret.
    pub expose: bool,
    /// The VM is newly admitted to this Project: act reserves the slot (re-checking the limit
    /// atomically) before the status saying so is written.
    pub admission: Option<(String, Candidate)>,
}

impl Decision {
    fn new(status: VirtualMachineStatus, step: Step, health: Health) -> Self {
        Self {
            status,
            step,
            health,
            usage: Vec::new(),
            events: Vec::new(),
            requeue_after: None,
            resync_at_most: None,
            expose: false,
            admission: None,
        }
    }

    fn stall(status: VirtualMachineStatus, reason: &'static str, message: String) -> Self {
        Self::new(status, Step::Nothing, Health::stalled(reason, message))
    }
}

/// Fields that may not change once a server exists; `Some(message)` names the first that did.
pub fn immutable_violation(vm: &VirtualMachine, status: &VirtualMachineStatus) -> Option<String> {
    let adopted = vm.annotations().get(ANNOTATION_EXTERNAL_ID);
    let image = image_of(vm);
    let checks = [
        ("spec.region", status.region.as_ref(), Some(&vm.spec.region)),
        (
            "spec.image (or spec.source.snapshotRef)",
            status.image.as_ref(),
            Some(&image),
        ),
        (
            "spec.providerConfigRef.name",
            status.provider_config.as_ref(),
            Some(&vm.spec.provider_config_ref.name),
        ),
        (
            // Removing the annotation is fine (the ID is recorded); pointing it elsewhere is not.
            ANNOTATION_EXTERNAL_ID,
            status.external_id.as_ref().filter(|_| adopted.is_some()),
            adopted,
        ),
    ];
    checks
        .into_iter()
        .find_map(|(field, recorded, wanted)| {
            let (rec, want) = (recorded?, wanted?);
            (rec != want).then(|| {
                format!(
                    "{field} is immutable once the server exists: it was {rec:?}, now {want:?}; restore it, or delete and recreate the VirtualMachine"
                )
            })
        })
        .or_else(|| {
            // The options the server was created with: a change cannot reach it. Recorded before the
            // create, they count once a server is known (a refused create leaves them to be fixed).
            status.external_id.as_ref()?;
            let o = status.created_with.as_ref()?;
            // With projectVPC, vpcID recorded the Project's VPC, which the spec does not name.
            let now = (
                vm.spec.vpc_id.clone(),
                vm.spec.project_vpc,
                &vm.spec.subnet_id,
                vm.spec.monitoring,
                vm.spec.stack_script.as_ref().map(|s| s.id),
            );
            let was = (
                o.vpc_id.clone().filter(|_| !o.project_vpc),
                o.project_vpc,
                &o.subnet_id,
                o.monitoring,
                o.stack_script_id,
            );
            (now != was).then(|| {
                format!(
                    "spec.vpcID, spec.projectVPC, spec.subnetID, spec.monitoring and spec.stackScript are immutable once the server exists: it was created with {was:?}, now {now:?}; restore them, or delete and recreate the VirtualMachine"
                )
            })
        })
        .or_else(|| {
            // The firewall the server joined: changing or removing it would not take it out.
            let rec = status.firewall_id.as_ref()?;
            (vm.spec.firewall_id.as_ref() != Some(rec)).then(|| {
                format!(
                    "spec.firewallID is immutable once the server joined the firewall: it was {rec:?}, now {:?}; restore it, or delete and recreate the VirtualMachine",
                    vm.spec.firewall_id
                )
            })
        })
}

/// Whose a server is, by its ownership tags and a second fact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// It carries this VM's tag, and its name carries this VM's creation key or its ID is the one this
    /// VM recorded (created or adopted).
    Ours,
    /// It carries this VM's tag but nothing else agrees: not taken as this VM's.
    Unconfirmed,
    /// It carries another object's tag (and not ours).
    Foreign,
    /// It carries no ownership tag.
    Untagged,
}

/// The mark a create leaves in the server's name: `-<first 8 characters of the UID>` (see
/// [`super::build::server_name`]).
pub fn creation_mark(uid: &str) -> String {
    format!("-{}", &uid[..8.min(uid.len())])
}

/// Whose `server` is, for the VM with `uid` that recorded the server IDs `recorded` (its
/// `status.externalID` and an adopted ID).
pub fn ownership(server: &Server, uid: &str, recorded: &[&str]) -> Ownership {
    let ours = cloud::uid_tag(uid);
    if server.tags.contains(&ours) {
        if server.name.contains(&creation_mark(uid)) || recorded.contains(&server.id.as_str()) {
            Ownership::Ours
        } else {
            Ownership::Unconfirmed
        }
    } else if server
        .tags
        .iter()
        .any(|t| t.starts_with(cloud::UID_TAG_PREFIX))
    {
        Ownership::Foreign
    } else {
        Ownership::Untagged
    }
}

/// The server IDs a VM recorded: `status.externalID` and the adopted ID (the second fact of
/// [`ownership`] besides the name).
pub fn recorded_ids<'a>(vm: &'a VirtualMachine, status: &'a VirtualMachineStatus) -> Vec<&'a str> {
    status
        .external_id
        .as_deref()
        .into_iter()
        .chain(
            vm.annotations()
                .get(ANNOTATION_EXTERNAL_ID)
                .map(String::as_str),
        )
        .collect()
}

/// Decides. Pure.
pub fn decide(i: &Inputs) -> Decision {
    let status = i.status.clone();
    if let Some(health) = refusal(i) {
        return held(i, status, health);
    }
    match i.lookup {
        Lookup::Missing(id) => held(
            i,
            status,
            Health::stalled(
                reason::EXTERNAL_NOT_FOUND,
                format!("{} reports no server with ID {id:?}", i.vendor),
            ),
        ),
        Lookup::Absent { .. } => create(i, status),
        Lookup::Found(server) => found(i, status, server),
    }
}

/// Why nothing the user asked for may be done now, whatever the vendor holds: a suspended
/// ProviderConfig, an edit of an immutable field, a reserved tag.
fn refusal(i: &Inputs) -> Option<Health> {
    if let Some(why) = i.access_refused {
        return Some(Health::stalled(
            reason::PROVIDER_CONFIG_NOT_ALLOWED,
            format!(
                "{why}: the server this VM holds there is still observed and metered, nothing else is changed through it"
            ),
        ));
    }
    if i.suspended {
        return Some(Health::not_ready(
            reason::PROVIDER_CONFIG_SUSPENDED,
            format!(
                "ProviderConfig {:?} is suspended (spec.suspended): nothing is created or changed through it; the server is still observed and metered",
                i.status
                    .provider_config
                    .as_deref()
                    .unwrap_or(&i.vm.spec.provider_config_ref.name)
            ),
        ));
    }
    if let Some(m) = immutable_violation(i.vm, i.status) {
        return Some(Health::stalled(reason::IMMUTABLE_FIELD_CHANGED, m));
    }
    let (t, p) =
        i.vm.spec
            .tags
            .iter()
            .find_map(|t| reserved_prefix(t).map(|p| (t, p)))?;
    Some(Health::stalled(
        reason::INVALID_SPEC,
        format!(
            "spec.tags: {t:?} uses the reserved prefix {p:?} (ownership tags are Quartermaster's own)"
        ),
    ))
}

/// A server was found: converge it if it is this VM's, adopt it where allowed, else refuse.
fn found(i: &Inputs, status: VirtualMachineStatus, server: &Server) -> Decision {
    let observe_only = i.vm.spec.management_policy == ManagementPolicy::ObserveOnly;
    match ownership(server, i.uid, &recorded_ids(i.vm, i.status)) {
        Ownership::Unconfirmed => Decision::stall(
            status,
            reason::OWNED_BY_ANOTHER,
            format!(
                "{} server {} carries this VM's ownership tag, but its name does not carry this VM's creation key and its ID is not the one recorded: it is not taken as this VM's",
                i.vendor, server.id
            ),
        ),
        Ownership::Foreign => Decision::stall(
            status,
            reason::OWNED_BY_ANOTHER,
            format!(
                "{} server {} belongs to another Quartermaster object (it carries another ownership tag); it is never adopted",
                i.vendor, server.id
            ),
        ),
        Ownership::Untagged if !i.adoption_allowed => Decision::stall(
            status,
            reason::ADOPTION_NOT_ALLOWED,
            format!(
                "{} server {} is not owned by this VM, and ProviderConfig {:?} does not let namespace {:?} adopt servers (spec.adoption.allowedNamespaces)",
                i.vendor,
                server.id,
                i.vm.spec.provider_config_ref.name,
                i.vm.namespace().unwrap_or_default()
            ),
        ),
        Ownership::Untagged if !observe_only => {
            let mut d = Decision::new(
                status,
                Step::Adopt,
                Health::progressing(
                    reason::PROGRESSING,
                    format!("adopting {} server {}", i.vendor, server.id),
                ),
            );
            d.events.push((
                event::ADOPTED,
                format!(
                    "adopted {} server {} (tagged as this VM's)",
                    i.vendor, server.id
                ),
            ));
            d
        }
        Ownership::Untagged | Ownership::Ours => converge(i, status, server),
    }
}

/// While the object is paused: no action the user asked for, only what money needs — see [`held`].
pub fn observe(i: &Inputs) -> Decision {
    held(
        i,
        i.status.clone(),
        Health::not_ready(reason::PAUSED, "paused"),
    )
}

/// A decision that takes no step the user asked for (stalled, paused) but keeps what costs money in
/// hand: a server that is this VM's is observed and metered, and powered off under its Project's credit
/// stop (unless `ObserveOnly`); a server found gone closes its window at the time it was last seen.
fn held(i: &Inputs, mut status: VirtualMachineStatus, health: Health) -> Decision {
    let server = match i.lookup {
        Lookup::Found(s)
            if ownership(s, i.uid, &recorded_ids(i.vm, i.status)) == Ownership::Ours =>
        {
            s
        }
        Lookup::Missing(_) => {
            let usage = close_gone(i, &mut status);
            let mut d = Decision::new(status, Step::Nothing, health);
            d.usage = usage;
            return d;
        }
        _ => return Decision::new(status, Step::Nothing, health),
    };
    observed(&mut status, server, i);
    know_project_uid(i, &mut status);
    let usage = meter(i, &mut status, &observation(i, server));
    let (step, note) = under_credit_stop(i, i.billed.unwrap_or(i.target), server);
    let resync = status.metering.is_some().then_some(METERING_RESYNC);
    let mut d = Decision::new(status, step, health.noted(note));
    d.usage = usage;
    d.resync_at_most = resync;
    d
}

/// What the credit stop of the Project a VM is `billed` to does to its server while the VM does not
/// converge (stalled, paused, refused a move, suspended): the step it takes, and what the VM's
/// condition says of it. A suspended account is not changed, not even by the credit stop, and
/// `ObserveOnly` never powers off: both say so.
fn under_credit_stop(
    i: &Inputs,
    billed: &ProjectLookup,
    server: &Server,
) -> (Step, Option<String>) {
    let ProjectLookup::Found(p) = billed else {
        return (Step::Nothing, None);
    };
    let Some(stop) = &p.credit_stop else {
        return (Step::Nothing, None);
    };
    let under = format!(
        "under Project {:?}'s credit stop ({})",
        p.name, stop.message
    );
    if i.suspended {
        let pc = i
            .status
            .provider_config
            .as_deref()
            .unwrap_or(&i.vm.spec.provider_config_ref.name);
        let note = format!(
            "{under}, not stopped while ProviderConfig {pc:?} is suspended; its usage is still metered"
        );
        return (Step::Nothing, Some(note));
    }
    if i.vm.spec.management_policy == ManagementPolicy::ObserveOnly {
        let note = format!("{under}; managementPolicy ObserveOnly: not stopped, still metered");
        return (Step::Nothing, Some(note));
    }
    match server.state {
        ServerState::Off => (Step::Nothing, Some(format!("{under}: stopped"))),
        ServerState::Running if !server.busy => {
            (Step::PowerOff, Some(format!("{under}: stopping")))
        }
        _ => (
            Step::Nothing,
            Some(format!("{under}: stopping once the server settles")),
        ),
    }
}

/// A VM admitted before status recorded Project UIDs (or whose intent named only the Project) learns
/// the UID of the Project it is billed to, from that Project while it exists.
fn know_project_uid(i: &Inputs, status: &mut VirtualMachineStatus) {
    if status.project_uid.is_some() {
        return;
    }
    let billed = i.billed.unwrap_or(i.target);
    if billed.name().is_some() && billed.name() == status.project.as_deref() {
        status.project_uid = billed.uid().map(str::to_string);
    }
}

/// The server is gone: the open window closes at the time it was last seen existing (never before the
/// window began, never after now); with no sighting known, at the window's start (nothing unproven is
/// billed).
fn close_gone(i: &Inputs, status: &mut VirtualMachineStatus) -> Vec<UsageEvent> {
    let Some(open) = status.metering.as_ref().and_then(open_window) else {
        return Vec::new();
    };
    if !i.metering {
        return Vec::new();
    }
    let end = i.last_seen.unwrap_or(open.since).clamp(open.since, i.now);
    let gone = metering::Observation {
        billed: false,
        size: open.size.clone(),
        price: None,
    };
    let step = metering::step(&subject(i.vm, i.uid, status), Some(&open), &gone, end, true);
    status.metering = None;
    step.events
}

/// What metering sees of a server: billed while it exists at the vendor, in any power state (the
/// vendors bill powered-off servers; one being deleted is billed until it is gone), its size, and that
/// size's price for the tenant and the vendor.
fn observation(i: &Inputs, server: &Server) -> metering::Observation {
    metering::Observation {
        billed: true,
        size: server.size.clone(),
        price: vendor_price(i, server)
            .map(|p| metering::Price::with_markup(p.hourly, &p.currency, i.markup_percent)),
    }
}

/// No server yet: create one, if the spec, the catalog and the Project allow.
fn create(i: &Inputs, mut status: VirtualMachineStatus) -> Decision {
    if i.vm.spec.management_policy == ManagementPolicy::ObserveOnly {
        return Decision::stall(
            status,
            reason::EXTERNAL_NOT_FOUND,
            format!(
                "managementPolicy ObserveOnly: no server to observe; set the {ANNOTATION_EXTERNAL_ID} annotation"
            ),
        );
    }
    let Some(catalog) = i.catalog else {
        return Decision::new(
            status,
            Step::Wait,
            Health::progressing(
                reason::PROVISIONING,
                format!("waiting for the {} catalog", i.vendor),
            ),
        );
    };
    let spec = &i.vm.spec;
    let image = match disk(i.vm, i.restore) {
        Ok(image) => image,
        Err(h @ Health::Stalled { .. }) => return Decision::new(status, Step::Nothing, h),
        Err(h) => return Decision::new(status, Step::Wait, h),
    };
    if let Err(m) = catalog.validate(&spec.region, &spec.size, image.as_deref()) {
        return Decision::stall(status, reason::INVALID_SPEC, m);
    }
    let mut admission = None;
    if let Some(size) = catalog.size(&spec.size) {
        let me = Candidate {
            order: order_of(i.vm),
            monthly: metering::marked_up(
                size.price_monthly + backup_monthly(size, spec.backups),
                i.markup_percent,
            ),
            currency: size.currency.clone(),
        };
        match i.target {
            ProjectLookup::Unset if i.require_project => {
                let (r, m) = project_required(i);
                return Decision::stall(status, r, m);
            }
            ProjectLookup::Unset => {}
            ProjectLookup::Missing(name) => return project_missing(status, i.vm, name),
            ProjectLookup::Found(p) => {
                // A server costs money from its first hour: none is created while the Project's credit
                // stops its VMs. A grant wakes this VM (it points at the Project) and it is created then.
                if let Some(why) = &p.new_block {
                    return Decision::new(
                        status,
                        Step::Nothing,
                        Health::not_ready(why.reason, format!("not created: {}", why.message)),
                    );
                }
                if let Err((r, m)) = limits::admit(p, &me) {
                    return Decision::stall(status, r, m);
                }
                admission = Some((p.name.clone(), me));
            }
        }
    }
    status.creation_key = Some(i.uid.to_string());
    status.region = Some(spec.region.clone());
    status.image = Some(image_of(i.vm));
    status.provider_config = Some(spec.provider_config_ref.name.clone());
    status.project = i.target.name().map(str::to_string);
    status.project_uid = i.target.uid().map(str::to_string);
    status.phase = Some(VmPhase::Provisioning);
    let mut d = Decision::new(
        status,
        Step::Create,
        Health::progressing(
            reason::PROVISIONING,
            format!("creating the {} server", i.vendor),
        ),
    );
    d.admission = admission;
    d
}

fn project_missing(status: VirtualMachineStatus, vm: &VirtualMachine, name: &str) -> Decision {
    Decision::stall(
        status,
        reason::PROJECT_NOT_FOUND,
        format!(
            "Project {name:?} not found in namespace {:?}",
            vm.namespace().unwrap_or_default()
        ),
    )
}

/// Copies the vendor's truth into status; prices are the tenant's (with the markup).
pub fn observed(status: &mut VirtualMachineStatus, server: &Server, i: &Inputs) {
    status.phase = Some(phase_of(server.state));
    status.external_id = Some(server.id.clone());
    status.size = Some(server.size.clone());
    status.addresses = Some(VmAddresses {
        public_ipv4: server.public_ipv4.clone(),
        public_ipv6: server.public_ipv6.clone(),
        private_ipv4: server.private_ipv4.clone(),
    });
    if let Some(p) = vendor_price(i, server) {
        status.hourly_price = Some(format_money(metering::marked_up(
            p.hourly,
            i.markup_percent,
        )));
        if let Some(monthly) = p.monthly {
            let m = metering::marked_up(monthly, i.markup_percent);
            status.monthly_price = Some(format_money(m));
            status.monthly_price_rounded =
                Some(crate::ledger::format_rounded_decimal(m, &p.currency));
        }
        status.currency = Some(p.currency);
    }
}

/// The monthly backup surcharge of `size` when backups are on (zero where the vendor's is unknown).
fn backup_monthly(size: &crate::cloud::Size, backups: bool) -> Decimal {
    match size.backup_price {
        Some((_, monthly)) if backups => monthly,
        _ => Decimal::ZERO,
    }
}

/// A vendor price and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
struct VendorPrice {
    hourly: Decimal,
    /// Unknown when only the open window remembered the price.
    monthly: Option<Decimal>,
    currency: String,
}

/// The vendor's price of the server's size: from the server object where the vendor reports one, else
/// the catalog, else the price the open window remembers for that size; `None` when none of these knows.
fn vendor_price(i: &Inputs, server: &Server) -> Option<VendorPrice> {
    // Backups on (the vendor's word, else the spec as created): the size's surcharge is added where
    // the catalog knows it.
    let backups_on = server.backups.unwrap_or(i.vm.spec.backups);
    let backups = backups_on
        .then(|| i.catalog?.size(&server.size)?.backup_price)
        .flatten();
    let (extra_hourly, extra_monthly) = backups.unwrap_or_default();
    let from_server = server.price.as_ref().map(|p| VendorPrice {
        hourly: p.hourly + extra_hourly,
        monthly: Some(p.monthly + extra_monthly),
        currency: p.currency.clone(),
    });
    let from_catalog = || {
        let s = i.catalog?.size(&server.size)?;
        Some(VendorPrice {
            hourly: s.price_hourly + extra_hourly,
            monthly: Some(s.price_monthly + extra_monthly),
            currency: s.currency.clone(),
        })
    };
    let remembered = || {
        let w = i
            .status
            .metering
            .as_ref()
            .filter(|w| w.size == server.size)?;
        let p = open_window(w)?.price?;
        Some(VendorPrice {
            hourly: p.vendor,
            monthly: None,
            currency: p.currency,
        })
    };
    // Backups on but their surcharge unknown now (the catalog unread): the open window's price stands,
    // rather than a price without the surcharge for as long as the catalog is away.
    if backups_on
        && backups.is_none()
        && let Some(r) = remembered()
    {
        return Some(r);
    }
    from_server.or_else(from_catalog).or_else(remembered)
}

/// The server exists and is this VM's: observe, move between Projects, meter, converge power and size.
fn converge(i: &Inputs, mut status: VirtualMachineStatus, server: &Server) -> Decision {
    record_facts(i, &mut status, server);
    let obs = observation(i, server);
    let moved = move_project(i, &mut status, &obs);
    let mut usage = moved.usage;
    usage.extend(meter(i, &mut status, &obs));
    let resync_at_most = status.metering.is_some().then_some(METERING_RESYNC);
    let mut d = match moved.refusal {
        // Refused where it points, it stays under the money policy of the Project it is billed to.
        Some((r, m)) => {
            let (step, note) = under_credit_stop(i, moved.billed, server);
            let acting = step != Step::Nothing;
            let mut d = Decision::new(status, step, Health::stalled(r, m).noted(note));
            if acting {
                d.requeue_after = Some(RESIZE_REFUSED_POLL);
            }
            d
        }
        None => power_and_size(i, status, server, moved.billed),
    };
    d.usage = usage;
    d.events.extend(moved.events);
    d.resync_at_most = resync_at_most;
    d.expose = true;
    d.admission = moved.admission;
    d
}

/// What the server says goes into status, and what a server found without a recorded create lacks
/// (account, region, image, the Project it points at).
fn record_facts(i: &Inputs, status: &mut VirtualMachineStatus, server: &Server) {
    let vm = i.vm;
    observed(status, server, i);
    status
        .provider_config
        .get_or_insert_with(|| vm.spec.provider_config_ref.name.clone());
    if status.region.is_none() {
        status.region = Some(server.region.clone())
            .filter(|s| !s.is_empty())
            .or(Some(vm.spec.region.clone()));
    }
    status.image.get_or_insert_with(|| image_of(vm));
    if status.creation_key.is_none() && status.project.is_none() {
        // Adopted (or created before Quartermaster recorded admission): admitted where it points.
        status.project = i.target.name().map(str::to_string);
        status.project_uid = i.target.uid().map(str::to_string);
    }
    know_project_uid(i, status);
}

/// What a `projectRef` change led to.
struct Moved<'a> {
    /// The window closed to the former Project.
    usage: Vec<UsageEvent>,
    events: Vec<(&'static str, String)>,
    /// The new Project's admission, for act to reserve.
    admission: Option<(String, Candidate)>,
    /// Why the new Project refused the VM.
    refusal: Option<limits::Refusal>,
    /// The Project the VM is billed to now.
    billed: &'a ProjectLookup,
}

/// A `projectRef` change: admitted by the new Project first (limits, currency), then the open window
/// closes to the old Project and the VM is billed to the new one.
fn move_project<'a>(
    i: &Inputs<'a>,
    status: &mut VirtualMachineStatus,
    obs: &metering::Observation,
) -> Moved<'a> {
    let mut moved = Moved {
        usage: Vec::new(),
        events: Vec::new(),
        admission: None,
        refusal: None,
        billed: i.billed.unwrap_or(i.target),
    };
    if status.project.as_deref() == i.target.name() {
        return moved;
    }
    let me = Candidate {
        order: order_of(i.vm),
        monthly: status
            .monthly_price
            .as_deref()
            .and_then(|p| p.parse().ok())
            .unwrap_or_default(),
        currency: status.currency.clone().unwrap_or_default(),
    };
    let admitted = match i.target {
        ProjectLookup::Unset => may_leave(i, moved.billed),
        ProjectLookup::Missing(name) => Err((
            reason::PROJECT_NOT_FOUND,
            format!(
                "Project {name:?} not found in namespace {:?}",
                i.vm.namespace().unwrap_or_default()
            ),
        )),
        ProjectLookup::Found(p) => {
            limits::admit(p, &me).inspect(|_| moved.admission = Some((p.name.clone(), me.clone())))
        }
    };
    if let Err(r) = admitted {
        moved.refusal = Some(r);
        return moved;
    }
    if i.metering {
        let open = status.metering.as_ref().and_then(open_window);
        let closed = metering::step(
            &subject(i.vm, i.uid, status),
            open.as_ref(),
            obs,
            i.now,
            true,
        );
        moved.usage = closed.events;
        status.metering = None;
    }
    moved.events.push((
        event::PROJECT_CHANGED,
        format!(
            "moved from Project {:?} to {:?}; usage so far stays with the former",
            status.project.as_deref().unwrap_or(""),
            i.target.name().unwrap_or("")
        ),
    ));
    status.project = i.target.name().map(str::to_string);
    status.project_uid = i.target.uid().map(str::to_string);
    moved.billed = i.target;
    moved
}

/// Whether the VM may leave the Project it is `billed` to for none: not where its ProviderConfig
/// requires a Project, and never out of a credit stop (leaving is a money decision, not a way out).
fn may_leave(i: &Inputs, billed: &ProjectLookup) -> Result<(), limits::Refusal> {
    if i.require_project {
        return Err(project_required(i));
    }
    if let ProjectLookup::Found(p) = billed
        && let Some(stop) = &p.credit_stop
    {
        return Err((
            stop.reason,
            format!(
                "spec.projectRef was removed, but the VM cannot leave Project {:?} while its credit stop holds ({})",
                p.name, stop.message
            ),
        ));
    }
    Ok(())
}

fn project_required(i: &Inputs) -> limits::Refusal {
    (
        reason::PROJECT_REQUIRED,
        format!(
            "ProviderConfig {:?} requires every VM through it to belong to a Project (spec.requireProject): set spec.projectRef",
            i.status
                .provider_config
                .as_deref()
                .unwrap_or(&i.vm.spec.provider_config_ref.name)
        ),
    )
}

/// Advances the open metering window to now; returns the closed windows to record.
fn meter(
    i: &Inputs,
    status: &mut VirtualMachineStatus,
    obs: &metering::Observation,
) -> Vec<UsageEvent> {
    if !i.metering {
        return Vec::new();
    }
    let open = status.metering.as_ref().and_then(open_window);
    let step = metering::step(
        &subject(i.vm, i.uid, status),
        open.as_ref(),
        obs,
        i.now,
        false,
    );
    status.metering = step.open.map(stored_window);
    step.events
}

/// Power and size: the step `runStrategy`, a restart request, a size change (admitted first) and the
/// Project's credit stop ask for, and the health that follows.
fn power_and_size(
    i: &Inputs,
    mut status: VirtualMachineStatus,
    server: &Server,
    billed: &ProjectLookup,
) -> Decision {
    let vm = i.vm;
    let credit_stop = match billed {
        ProjectLookup::Found(p) => p.credit_stop.clone(),
        _ => None,
    };
    let run_strategy = if credit_stop.is_some() {
        RunStrategy::Halted
    } else {
        vm.spec.run_strategy
    };
    let observe_only = vm.spec.management_policy == ManagementPolicy::ObserveOnly;
    let restart = vm.annotations().get(ANNOTATION_RESTART_REQUESTED_AT);
    let restart_pending = restart.is_some() && restart != status.last_restart_request.as_ref();
    if status
        .resize_refused
        .as_ref()
        .is_some_and(|r| r.size != vm.spec.size || server.size == vm.spec.size)
    {
        status.resize_refused = None;
    }
    // A size change is admitted before any power action; until it is, the server keeps its size.
    let resize = if observe_only || server.size == vm.spec.size {
        Ok(())
    } else {
        admit_resize(i, &status, server, billed)
    };
    let desired_size = if resize.is_ok() {
        vm.spec.size.as_str()
    } else {
        server.size.as_str()
    };
    let step = if observe_only {
        Step::Nothing
    } else {
        next_step(
            run_strategy,
            desired_size,
            server,
            restart_pending,
            i.resize_needs_power_off,
        )
    };
    let mut events = Vec::new();
    if restart_pending
        && !observe_only
        && step == Step::Nothing
        && server.state != ServerState::Running
    {
        // Nothing to reboot: the request is acknowledged, not queued.
        status.last_restart_request = restart.cloned();
        events.push((
            event::RESTART_SKIPPED,
            "restart requested while the VM is not running".to_string(),
        ));
    }
    let health = health_of(i, server, &step, resize, credit_stop);
    let acting = step != Step::Nothing;
    let mut d = Decision::new(status, step, health);
    d.events = events;
    if acting && matches!(d.health, Health::Stalled { .. }) {
        // Stalled on a refused resize while powering back to what runStrategy asks: look again soon.
        d.requeue_after = Some(RESIZE_REFUSED_POLL);
    }
    d
}

/// The health of a VM whose server exists: its phase and step, then (in order of precedence) an unknown
/// price, a resize that is not admitted, and the Project's credit stop.
fn health_of(
    i: &Inputs,
    server: &Server,
    step: &Step,
    resize: Result<(), ResizeBlock>,
    credit_stop: Option<crate::controller::project::policy::MoneyStop>,
) -> Health {
    let mut health = health_for(i.vm, server, step);
    if i.metering && matches!(health, Health::Ready { .. }) && vendor_price(i, server).is_none() {
        health = Health::not_ready(
            reason::UNPRICED,
            format!(
                "{}, but no price is known for size {:?} ({} reports none on the server and its catalog does not list it): its time is recorded unpriced, to be priced later",
                health.message(),
                server.size,
                i.vendor
            ),
        );
    }
    match resize {
        Ok(()) => {}
        Err(ResizeBlock::Refused(r, m)) => health = Health::stalled(r, m),
        Err(ResizeBlock::Waiting(m)) => health = Health::progressing(reason::RESIZING, m),
    }
    let Some(stop) = credit_stop else {
        return health;
    };
    let (r, why) = (stop.reason, stop.message);
    let observe_only = i.vm.spec.management_policy == ManagementPolicy::ObserveOnly;
    // The effective state: stopped for lack of credit (the declared runStrategy is left as written).
    match (step, server.state) {
        (Step::Nothing, ServerState::Off) => Health::not_ready(r, format!("stopped: {why}")),
        // Nothing Quartermaster will do: not Reconciling (which would read as "still working" for ever).
        (Step::Nothing, _) if observe_only => Health::not_ready(
            r,
            format!(
                "{why}; managementPolicy ObserveOnly: Quartermaster does not stop this server, and its usage is still metered"
            ),
        ),
        _ => Health::progressing(r, format!("stopping: {why}")),
    }
}

/// How soon a VM stalled on a refused resize looks again while its power step completes.
pub const RESIZE_REFUSED_POLL: Duration = Duration::from_secs(10);

/// Why a size change is not made (yet).
#[derive(Clone, Debug, PartialEq, Eq)]
enum ResizeBlock {
    /// Refused: the Stalled reason and message; the user must change `spec.size` (or the Project).
    Refused(&'static str, String),
    /// Not decidable yet (the catalog could not be read): look again.
    Waiting(String),
}

/// Admits a change to `spec.size` as a create is admitted, before any power action: the vendor can
/// resize at all, the size exists and is offered in the server's region, the vendor's own constraints
/// (no smaller disk), a resize the vendor refused already, and the Project's currency and
/// `maxMonthlySpend` at the new price.
fn admit_resize(
    i: &Inputs,
    status: &VirtualMachineStatus,
    server: &Server,
    billed: &ProjectLookup,
) -> Result<(), ResizeBlock> {
    let want = &i.vm.spec.size;
    fn refused<T>(r: &'static str, m: String) -> Result<T, ResizeBlock> {
        Err(ResizeBlock::Refused(r, m))
    }
    if i.resize_rule == ResizeRule::Unsupported {
        return refused(
            reason::UNSUPPORTED,
            format!(
                "{} cannot resize a server through its API: spec.size must stay {:?} (delete and recreate the VirtualMachine for another size)",
                i.vendor, server.size
            ),
        );
    }
    if let Some(r) = status.resize_refused.as_ref().filter(|r| &r.size == want) {
        return refused(
            reason::VENDOR_REJECTED,
            format!(
                "{} refused resizing to {want:?}: {}; spec.size must name another size",
                i.vendor, r.message
            ),
        );
    }
    let Some(catalog) = i.catalog else {
        return Err(ResizeBlock::Waiting(format!(
            "waiting for the {} catalog to admit the resize to {want:?}",
            i.vendor
        )));
    };
    let region = status.region.as_deref().unwrap_or(&server.region);
    let new = catalog
        .validate_size(region, want)
        .or_else(|m| refused(reason::INVALID_SPEC, m))?;
    if i.resize_rule == ResizeRule::NoSmallerDisk
        && let Some(cur) = catalog.size(&server.size)
        && new.disk_gb < cur.disk_gb
    {
        return refused(
            reason::INVALID_SPEC,
            format!(
                "{} never shrinks a disk: {want:?} has {} GB of disk, the server's {:?} has {} GB",
                i.vendor, new.disk_gb, cur.slug, cur.disk_gb
            ),
        );
    }
    if let ProjectLookup::Found(p) = billed {
        // The VM holds its slot already: only its price (currency, spend) is admitted again.
        let mut p = p.clone();
        p.limits.max_virtual_machines = None;
        let backups = server.backups.unwrap_or(i.vm.spec.backups);
        let me = Candidate {
            order: order_of(i.vm),
            monthly: metering::marked_up(
                new.price_monthly + backup_monthly(new, backups),
                i.markup_percent,
            ),
            currency: new.currency.clone(),
        };
        limits::admit(&p, &me).or_else(|(r, m)| refused(r, format!("resize to {want:?}: {m}")))?;
    }
    Ok(())
}

/// Decides the next power/size step. Pure: no I/O.
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

fn health_for(vm: &VirtualMachine, server: &Server, step: &Step) -> Health {
    let phase = format!("{:?}", phase_of(server.state));
    match (step, server.state) {
        (Step::Nothing, ServerState::Failed) => Health::stalled(
            reason::VENDOR_FAILED,
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
        (Step::Nothing | Step::Create | Step::Adopt, _) => {
            Health::progressing(phase, "waiting for the vendor")
        }
        (Step::Wait, _) => Health::progressing(
            phase.clone(),
            format!("server {} is {}", server.id, phase.to_lowercase()),
        ),
        (Step::PowerOff, _) => Health::progressing(reason::STOPPING, "powering off"),
        (Step::PowerOn, _) => Health::progressing(reason::STARTING, "powering on"),
        (Step::Reboot, _) => Health::progressing(reason::RESTARTING, "rebooting"),
        (Step::Resize(s), _) => Health::progressing(reason::RESIZING, format!("resizing to {s}")),
    }
}

/// Who is billed for this VM's usage: its namespace, the Project it is admitted to (name and UID), its
/// name and UID.
pub fn subject(vm: &VirtualMachine, uid: &str, status: &VirtualMachineStatus) -> metering::Subject {
    metering::Subject {
        namespace: vm.namespace().unwrap_or_default(),
        project: status.project.clone().unwrap_or_default(),
        project_uid: status.project_uid.clone().unwrap_or_default(),
        kind: "VirtualMachine".into(),
        name: vm.name_any(),
        uid: uid.to_string(),
    }
}

/// The open window in status, as the metering state machine's type (`None` when its prices do not
/// parse).
pub fn open_window(w: &MeteringWindow) -> Option<metering::OpenWindow> {
    let price = if w.hourly_price.is_empty() {
        None
    } else {
        let tenant: Decimal = w.hourly_price.parse().ok()?;
        let vendor = match &w.vendor_hourly_price {
            Some(v) => v.parse().ok()?,
            None => tenant,
        };
        Some(metering::Price {
            tenant,
            vendor,
            currency: w.currency.clone(),
        })
    };
    Some(metering::OpenWindow {
        since: w.since,
        size: w.size.clone(),
        price,
    })
}

/// The metering state machine's window, as status stores it.
pub fn stored_window(w: metering::OpenWindow) -> MeteringWindow {
    let (hourly_price, vendor_hourly_price, currency) = match w.price {
        Some(p) => (p.tenant.to_string(), Some(p.vendor.to_string()), p.currency),
        None => (String::new(), None, String::new()),
    };
    MeteringWindow {
        since: w.since,
        size: w.size,
        hourly_price,
        vendor_hourly_price,
        currency,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::{Image, Region, Size};
    use crate::crd::project::ProjectLimits;

    const UID: &str = "0123456789abcdef";
    const NOW: i64 = 1_800_002_000; // 2000 s into an hour

    fn server(state: ServerState, size: &str, tags: &[&str]) -> Server {
        Server {
            id: "42".into(),
            name: "web-01234567".into(),
            state,
            size: size.into(),
            region: "fra1".into(),
            image: None,
            public_ipv4: Some("203.0.113.5".into()),
            public_ipv6: None,
            private_ipv4: None,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            busy: false,
            deletion_scheduled: false,
            initial_password: None,
            backups: None,
            price: None,
        }
    }

    fn ours(state: ServerState) -> Server {
        server(
            state,
            "s-1vcpu-1gb",
            &["quartermaster-uid-0123456789abcdef"],
        )
    }

    fn catalog() -> Catalog {
        let size = |slug: &str, h: &str, m: &str, cur: &str| Size {
            slug: slug.into(),
            vcpus: 1,
            memory_mb: 1024,
            disk_gb: 25,
            price_hourly: h.parse().unwrap(),
            price_monthly: m.parse().unwrap(),
            currency: cur.into(),
            regions: vec![],
            transfer_bytes: None,
            backup_price: None,
        };
        Catalog {
            sizes: vec![
                size("s-1vcpu-1gb", "0.00893", "6", "USD"),
                size("s-2vcpu-2gb", "0.02679", "18", "USD"),
                size("eur-1", "0.01", "7", "EUR"),
            ],
            images: vec![Image {
                slug: "debian-12-x64".into(),
                name: "Debian 12".into(),
                kind: "distribution".into(),
            }],
            regions: vec![Region {
                slug: "fra1".into(),
                name: "Frankfurt".into(),
                available: true,
            }],
        }
    }

    fn vm(extra: serde_json::Value, annotations: serde_json::Value) -> VirtualMachine {
        let mut spec = serde_json::json!({
            "providerConfigRef": {"name": "pc"}, "region": "fra1", "size": "s-1vcpu-1gb",
            "image": "debian-12-x64", "projectRef": {"name": "acme"}
        });
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": "web", "namespace": "alice", "uid": UID, "annotations": annotations,
                         "creationTimestamp": "2026-11-01T00:00:00Z"},
            "spec": spec
        }))
        .unwrap()
    }

    fn project(name: &str, max: Option<u32>, credit_stop: bool) -> ProjectLookup {
        ProjectLookup::Found(ProjectState {
            name: name.into(),
            uid: format!("uid-of-{name}"),
            currency: "USD".into(),
            allow_other_currencies: false,
            limits: ProjectLimits {
                max_virtual_machines: max,
                max_sim_cards: None,
                max_monthly_spend: None,
            },
            credit_stop: credit_stop.then(|| crate::controller::project::policy::MoneyStop {
                reason: reason::CREDIT_EXHAUSTED,
                message: "no credit".into(),
            }),
            new_block: credit_stop.then(|| crate::controller::project::policy::MoneyStop {
                reason: reason::CREDIT_EXHAUSTED,
                message: "no credit".into(),
            }),
            occupancy: limits::Occupancy {
                held: 1,
                ahead: 0,
                spend: "6".parse().unwrap(),
            },
        })
    }

    fn created() -> VirtualMachineStatus {
        VirtualMachineStatus {
            creation_key: Some(UID.into()),
            external_id: Some("42".into()),
            region: Some("fra1".into()),
            image: Some("debian-12-x64".into()),
            provider_config: Some("pc".into()),
            project: Some("acme".into()),
            ..Default::default()
        }
    }

    struct Case {
        name: &'static str,
        vm: VirtualMachine,
        status: VirtualMachineStatus,
        lookup: Lookup,
        target: ProjectLookup,
        adoption_allowed: bool,
        want_step: Step,
        want_reason: &'static str,
        restore: Restore,
    }

    fn case(
        name: &'static str,
        lookup: Lookup,
        want_step: Step,
        want_reason: &'static str,
    ) -> Case {
        Case {
            name,
            vm: vm(serde_json::json!({}), serde_json::json!({})),
            status: created(),
            lookup,
            target: project("acme", None, false),
            adoption_allowed: false,
            want_step,
            want_reason,
            restore: Restore::Unread,
        }
    }

    fn run(c: &Case) -> Decision {
        run_with(c, ResizeRule::NoSmallerDisk, &catalog())
    }

    fn run_with(c: &Case, resize_rule: ResizeRule, cat: &Catalog) -> Decision {
        decide(&inputs_of(c, resize_rule, cat))
    }

    fn inputs_of<'a>(c: &'a Case, resize_rule: ResizeRule, cat: &'a Catalog) -> Inputs<'a> {
        Inputs {
            vm: &c.vm,
            uid: UID,
            status: &c.status,
            lookup: &c.lookup,
            catalog: Some(cat),
            target: &c.target,
            billed: None,
            adoption_allowed: c.adoption_allowed,
            resize_needs_power_off: true,
            resize_rule,
            vendor: "digitalocean",
            metering: true,
            last_seen: None,
            markup_percent: Decimal::ZERO,
            suspended: false,
            require_project: false,
            access_refused: None,
            restore: &c.restore,
            now: NOW,
        }
    }

    #[test]
    fn the_firewall_a_server_joined_cannot_be_changed_or_removed() {
        let joined = VirtualMachineStatus {
            firewall_id: Some("fw-a".into()),
            ..created()
        };
        let with = |fw: Option<&str>| {
            let extra = match fw {
                Some(f) => serde_json::json!({ "firewallID": f }),
                None => serde_json::json!({}),
            };
            vm(extra, serde_json::json!({}))
        };
        assert_eq!(immutable_violation(&with(Some("fw-a")), &joined), None);
        for changed in [Some("fw-b"), None] {
            let m = immutable_violation(&with(changed), &joined).expect("refused");
            assert!(m.contains("spec.firewallID"), "{m}");
        }
        // Not joined yet (or a vendor that takes it at create): nothing recorded, nothing refused.
        assert_eq!(immutable_violation(&with(Some("fw-b")), &created()), None);
        // The options a server was created with: a change cannot reach it, so it is refused.
        let made = VirtualMachineStatus {
            created_with: Some(crate::crd::virtual_machine::CreatedOptions {
                vpc_id: Some("vpc-a".into()),
                subnet_id: None,
                project_vpc: false,
                monitoring: true,
                stack_script_id: None,
            }),
            ..created()
        };
        let opts = |o: serde_json::Value| vm(o, serde_json::json!({}));
        let same = opts(serde_json::json!({"vpcID": "vpc-a", "monitoring": true}));
        assert_eq!(immutable_violation(&same, &made), None);
        for changed in [
            serde_json::json!({"vpcID": "vpc-b", "monitoring": true}),
            serde_json::json!({"monitoring": true}),
            serde_json::json!({"vpcID": "vpc-a"}),
            serde_json::json!({"vpcID": "vpc-a", "subnetID": "7", "monitoring": true}),
        ] {
            let m = immutable_violation(&opts(changed), &made).expect("refused");
            assert!(m.contains("spec.vpcID"), "{m}");
        }
        // Joined its Project's VPC: the recorded ID is the Project's; only the flag is compared.
        let joined_project = VirtualMachineStatus {
            created_with: Some(crate::crd::virtual_machine::CreatedOptions {
                vpc_id: Some("project-vpc".into()),
                project_vpc: true,
                ..Default::default()
            }),
            ..created()
        };
        assert_eq!(
            immutable_violation(
                &opts(serde_json::json!({"projectVPC": true})),
                &joined_project
            ),
            None
        );
        for changed in [
            serde_json::json!({}),
            serde_json::json!({"vpcID": "project-vpc"}),
            serde_json::json!({"projectVPC": true, "vpcID": "other"}),
        ] {
            assert!(immutable_violation(&opts(changed), &joined_project).is_some());
        }
        // Recorded for a create the vendor refused (no server known): the user's fix is not refused.
        let refused = VirtualMachineStatus {
            external_id: None,
            ..made.clone()
        };
        assert_eq!(
            immutable_violation(&opts(serde_json::json!({"vpcID": "vpc-b"})), &refused),
            None
        );
        // A server created before the options were recorded: nothing to compare, nothing refused.
        assert_eq!(
            immutable_violation(&opts(serde_json::json!({"vpcID": "x"})), &created()),
            None
        );
    }

    #[test]
    fn backups_add_the_vendors_surcharge_to_the_price_metered_and_admitted() {
        let mut cat = catalog();
        cat.sizes[0].backup_price = Some(crate::cloud::backup_share(
            "0.00893".parse().unwrap(),
            "6".parse().unwrap(),
        ));
        let running = |backups: Option<bool>, spec_backups: bool| {
            let mut c = case(
                "backups",
                Lookup::Found(Server {
                    backups,
                    ..ours(ServerState::Running)
                }),
                Step::Nothing,
                "",
            );
            c.vm = vm(
                serde_json::json!({"backups": spec_backups}),
                serde_json::json!({}),
            );
            let d = run_with(&c, ResizeRule::NoSmallerDisk, &cat);
            (
                d.status.monthly_price.clone(),
                d.status.metering.map(|w| w.hourly_price),
            )
        };
        let with = (Some("7.20".to_string()), Some("0.010716".to_string()));
        let without = (Some("6.00".to_string()), Some("0.00893".to_string()));
        // The vendor's word first, the spec as created where it says nothing.
        assert_eq!(running(Some(true), false), with);
        assert_eq!(running(Some(false), true), without);
        assert_eq!(running(None, true), with);
        assert_eq!(running(None, false), without);
        // The catalog away (the surcharge unknown): the open window's price stands, not the droplet's
        // own price without it.
        let mut c = case(
            "catalog away",
            Lookup::Found(Server {
                backups: Some(true),
                price: Some(crate::cloud::ServerPrice {
                    hourly: "0.00893".parse().unwrap(),
                    monthly: "6".parse().unwrap(),
                    currency: "USD".into(),
                }),
                ..ours(ServerState::Running)
            }),
            Step::Nothing,
            "",
        );
        c.status = VirtualMachineStatus {
            metering: Some(crate::crd::virtual_machine::MeteringWindow {
                since: NOW - 10,
                size: "s-1vcpu-1gb".into(),
                hourly_price: "0.010716".into(),
                vendor_hourly_price: Some("0.010716".into()),
                currency: "USD".into(),
            }),
            ..created()
        };
        let d = decide(&Inputs {
            catalog: None,
            ..inputs_of(&c, ResizeRule::NoSmallerDisk, &cat)
        });
        let w = d.status.metering.expect("still metered");
        assert_eq!((w.since, w.hourly_price.as_str()), (NOW - 10, "0.010716"));

        // Admitted at create with the surcharge: 7.20 beside a 6 VM passes a 14 limit, not a 13.
        let create = |limit: &str, backups: bool| {
            let mut c = case(
                "create",
                Lookup::Absent {
                    after_intent: false,
                },
                Step::Create,
                "",
            );
            c.vm = vm(
                serde_json::json!({"backups": backups}),
                serde_json::json!({}),
            );
            c.status = VirtualMachineStatus::default();
            let ProjectLookup::Found(mut p) = project("acme", None, false) else {
                unreachable!()
            };
            p.limits.max_monthly_spend = Some(limit.into());
            c.target = ProjectLookup::Found(p);
            let d = run_with(&c, ResizeRule::NoSmallerDisk, &cat);
            (d.step, d.health.reason().to_string())
        };
        assert_eq!(create("14", true).0, Step::Create);
        assert_eq!(create("13", false).0, Step::Create);
        assert_eq!(
            create("13", true),
            (Step::Nothing, reason::LIMIT_EXCEEDED.to_string())
        );
    }

    #[test]
    fn a_server_is_made_from_an_image_or_an_available_snapshot_never_both() {
        let from = |image: Option<&str>| {
            let mut extra = serde_json::json!({"source": {"snapshotRef": {"name": "nightly"}}});
            if let Some(i) = image {
                extra["image"] = i.into();
            }
            let mut v = vm(extra, serde_json::json!({}));
            v.spec.image = image.unwrap_or_default().to_string();
            v
        };
        let plain = vm(serde_json::json!({}), serde_json::json!({}));
        let restored = from(None);
        let stalled = |r: Result<Option<String>, Health>| matches!(r, Err(Health::Stalled { .. }));
        let waits =
            |r: Result<Option<String>, Health>| matches!(r, Err(Health::Progressing { .. }));
        assert_eq!(
            disk(&plain, &Restore::Unread),
            Ok(Some("debian-12-x64".into()))
        );
        assert_eq!(disk(&restored, &Restore::Image("42".into())), Ok(None));
        assert!(waits(disk(&restored, &Restore::Wait("not yet".into()))));
        assert!(waits(disk(&restored, &Restore::Unread)));
        assert!(stalled(disk(
            &restored,
            &Restore::Refused("other account".into())
        )));
        assert!(
            stalled(disk(
                &from(Some("debian-12-x64")),
                &Restore::Image("42".into())
            )),
            "both"
        );
        let mut neither = plain.clone();
        neither.spec.image.clear();
        assert!(stalled(disk(&neither, &Restore::Unread)));
        assert_eq!(image_of(&plain), "debian-12-x64");
        assert_eq!(image_of(&restored), "snapshot/nightly");

        // decide: a restore waits for its snapshot, then creates without the catalog's image check.
        let mut c = case(
            "restore",
            Lookup::Absent {
                after_intent: false,
            },
            Step::Wait,
            reason::PROVISIONING,
        );
        c.vm = restored;
        c.status = VirtualMachineStatus::default();
        c.restore = Restore::Wait("not available yet".into());
        let d = run(&c);
        assert_eq!(
            (d.step, d.health.reason()),
            (Step::Wait, reason::PROVISIONING)
        );
        c.restore = Restore::Image("42".into());
        let d = run(&c);
        assert_eq!(d.step, Step::Create, "{:?}", d.health);
        assert_eq!(d.status.image.as_deref(), Some("snapshot/nightly"));
        // Once created, another snapshot is another disk: immutable.
        let mut changed = c.vm.clone();
        changed.spec.source.as_mut().unwrap().snapshot_ref.name = "weekly".into();
        assert!(immutable_violation(&changed, &d.status).is_some());
        assert!(immutable_violation(&c.vm, &d.status).is_none());
    }

    #[test]
    fn decision_table() {
        use ServerState::*;
        let absent = Lookup::Absent {
            after_intent: false,
        };
        let untagged = Lookup::Found(server(Running, "s-1vcpu-1gb", &["web"]));
        let foreign = Lookup::Found(server(Running, "s-1vcpu-1gb", &["quartermaster-uid-ffff"]));
        let cases = vec![
            Case {
                status: Default::default(),
                ..case(
                    "new VM: create",
                    absent.clone(),
                    Step::Create,
                    reason::PROVISIONING,
                )
            },
            Case {
                status: Default::default(),
                target: project("acme", None, true),
                ..case(
                    "no credit (onCreditExhausted: Stop): no create",
                    absent.clone(),
                    Step::Nothing,
                    reason::CREDIT_EXHAUSTED,
                )
            },
            Case {
                status: Default::default(),
                target: project("acme", Some(1), false),
                ..case(
                    "project full: no create",
                    absent.clone(),
                    Step::Nothing,
                    reason::LIMIT_EXCEEDED,
                )
            },
            Case {
                status: Default::default(),
                target: ProjectLookup::Missing("acme".into()),
                ..case(
                    "project missing",
                    absent.clone(),
                    Step::Nothing,
                    reason::PROJECT_NOT_FOUND,
                )
            },
            Case {
                status: Default::default(),
                vm: vm(serde_json::json!({"size": "nope"}), serde_json::json!({})),
                ..case(
                    "unknown size",
                    absent.clone(),
                    Step::Nothing,
                    reason::INVALID_SPEC,
                )
            },
            Case {
                status: Default::default(),
                vm: vm(serde_json::json!({"size": "eur-1"}), serde_json::json!({})),
                ..case(
                    "other currency",
                    absent.clone(),
                    Step::Nothing,
                    reason::CURRENCY_MISMATCH,
                )
            },
            Case {
                status: Default::default(),
                vm: vm(
                    serde_json::json!({"managementPolicy": "ObserveOnly"}),
                    serde_json::json!({}),
                ),
                ..case(
                    "observe only, nothing there",
                    absent.clone(),
                    Step::Nothing,
                    reason::EXTERNAL_NOT_FOUND,
                )
            },
            case(
                "recorded server gone",
                Lookup::Missing("42".into()),
                Step::Nothing,
                reason::EXTERNAL_NOT_FOUND,
            ),
            case(
                "running as declared",
                Lookup::Found(ours(Running)),
                Step::Nothing,
                reason::RECONCILED,
            ),
            case(
                "found off: power on",
                Lookup::Found(ours(Off)),
                Step::PowerOn,
                reason::STARTING,
            ),
            case(
                "busy: wait",
                Lookup::Found(ours(Provisioning)),
                Step::Wait,
                "Provisioning",
            ),
            case(
                "vendor failed",
                Lookup::Found(ours(Failed)),
                Step::Nothing,
                reason::VENDOR_FAILED,
            ),
            Case {
                target: project("acme", None, true),
                ..case(
                    "credit exhausted: stop",
                    Lookup::Found(ours(Running)),
                    Step::PowerOff,
                    reason::CREDIT_EXHAUSTED,
                )
            },
            Case {
                target: project("acme", None, true),
                ..case(
                    "credit exhausted, stopped",
                    Lookup::Found(ours(Off)),
                    Step::Nothing,
                    reason::CREDIT_EXHAUSTED,
                )
            },
            Case {
                vm: vm(serde_json::json!({"region": "ams3"}), serde_json::json!({})),
                ..case(
                    "region changed",
                    Lookup::Found(ours(Running)),
                    Step::Nothing,
                    reason::IMMUTABLE_FIELD_CHANGED,
                )
            },
            Case {
                vm: vm(
                    serde_json::json!({"providerConfigRef": {"name": "other"}}),
                    serde_json::json!({}),
                ),
                ..case(
                    "account changed",
                    Lookup::Found(ours(Running)),
                    Step::Nothing,
                    reason::IMMUTABLE_FIELD_CHANGED,
                )
            },
            Case {
                vm: vm(
                    serde_json::json!({}),
                    serde_json::json!({ANNOTATION_EXTERNAL_ID: "43"}),
                ),
                ..case(
                    "adopted ID changed",
                    Lookup::Found(ours(Running)),
                    Step::Nothing,
                    reason::IMMUTABLE_FIELD_CHANGED,
                )
            },
            Case {
                vm: vm(
                    serde_json::json!({"tags": ["quartermaster-uid-ffff"]}),
                    serde_json::json!({}),
                ),
                ..case(
                    "reserved tag",
                    Lookup::Found(ours(Running)),
                    Step::Nothing,
                    reason::INVALID_SPEC,
                )
            },
            Case {
                vm: vm(
                    serde_json::json!({"tags": ["qm-uid-ffff"]}),
                    serde_json::json!({}),
                ),
                ..case(
                    "Linode's wire form of an ownership tag",
                    Lookup::Found(ours(Running)),
                    Step::Nothing,
                    reason::INVALID_SPEC,
                )
            },
            Case {
                vm: vm(
                    serde_json::json!({"tags": ["QM-UID-ffff"]}),
                    serde_json::json!({}),
                ),
                ..case(
                    "an ownership tag in another letter case",
                    Lookup::Found(ours(Running)),
                    Step::Nothing,
                    reason::INVALID_SPEC,
                )
            },
            Case {
                status: Default::default(),
                ..case(
                    "another tenant's server",
                    foreign.clone(),
                    Step::Nothing,
                    reason::OWNED_BY_ANOTHER,
                )
            },
            Case {
                status: Default::default(),
                adoption_allowed: true,
                ..case(
                    "another tenant's server, even when adoption is allowed",
                    foreign,
                    Step::Nothing,
                    reason::OWNED_BY_ANOTHER,
                )
            },
            Case {
                status: Default::default(),
                ..case(
                    "untagged, adoption not allowed",
                    untagged.clone(),
                    Step::Nothing,
                    reason::ADOPTION_NOT_ALLOWED,
                )
            },
            Case {
                status: Default::default(),
                adoption_allowed: true,
                ..case(
                    "untagged, adoption allowed: tag it",
                    untagged.clone(),
                    Step::Adopt,
                    reason::PROGRESSING,
                )
            },
            Case {
                status: Default::default(),
                adoption_allowed: true,
                vm: vm(
                    serde_json::json!({"managementPolicy": "ObserveOnly"}),
                    serde_json::json!({}),
                ),
                ..case(
                    "observe only never tags",
                    untagged,
                    Step::Nothing,
                    reason::RECONCILED,
                )
            },
            Case {
                vm: vm(
                    serde_json::json!({"projectRef": {"name": "other"}}),
                    serde_json::json!({}),
                ),
                target: project("other", Some(1), false),
                ..case(
                    "move refused by the new project",
                    Lookup::Found(ours(Running)),
                    Step::Nothing,
                    reason::LIMIT_EXCEEDED,
                )
            },
            Case {
                vm: vm(
                    serde_json::json!({"size": "s-2vcpu-2gb"}),
                    serde_json::json!({}),
                ),
                ..case(
                    "resize: power off first",
                    Lookup::Found(ours(Running)),
                    Step::PowerOff,
                    reason::STOPPING,
                )
            },
            Case {
                vm: vm(
                    serde_json::json!({"size": "s-2vcpu-2gb"}),
                    serde_json::json!({}),
                ),
                ..case(
                    "resize when off",
                    Lookup::Found(ours(Off)),
                    Step::Resize("s-2vcpu-2gb".into()),
                    reason::RESIZING,
                )
            },
            Case {
                vm: vm(
                    serde_json::json!({}),
                    serde_json::json!({ANNOTATION_RESTART_REQUESTED_AT: "t1"}),
                ),
                ..case(
                    "restart",
                    Lookup::Found(ours(Running)),
                    Step::Reboot,
                    reason::RESTARTING,
                )
            },
        ];
        for c in &cases {
            let d = run(c);
            assert_eq!(d.step, c.want_step, "{}: step", c.name);
            assert_eq!(
                d.health.reason(),
                c.want_reason,
                "{}: {:?}",
                c.name,
                d.health
            );
        }
    }

    /// A size change is admitted before any power action: a refused one stalls with the server left in
    /// (or returned to) the power state runStrategy asks for.
    #[test]
    fn resize_is_admitted_before_any_power_action() {
        use ServerState::*;
        let mut cat = catalog();
        let mut small = cat.sizes[0].clone();
        small.slug = "s-small-disk".into();
        small.disk_gb = 10;
        let mut elsewhere = cat.sizes[1].clone();
        elsewhere.slug = "s-nyc-only".into();
        elsewhere.regions = vec!["nyc1".into()];
        cat.sizes.extend([small, elsewhere]);
        let resize_to = |size: &str, state: ServerState| Case {
            vm: vm(serde_json::json!({"size": size}), serde_json::json!({})),
            ..case("", Lookup::Found(ours(state)), Step::Nothing, "")
        };
        let spend_limited = |max: &str| {
            let ProjectLookup::Found(mut p) = project("acme", Some(1), false) else {
                unreachable!()
            };
            p.limits.max_monthly_spend = Some(max.into());
            ProjectLookup::Found(p)
        };
        let refused_before = VirtualMachineStatus {
            resize_refused: Some(crate::crd::virtual_machine::ResizeRefusal {
                size: "s-2vcpu-2gb".into(),
                message: "422: not for this droplet".into(),
            }),
            ..created()
        };
        let cases: Vec<(&str, Case, ResizeRule, Step, &str)> = vec![
            (
                "unknown size",
                resize_to("s-nope", Running),
                ResizeRule::NoSmallerDisk,
                Step::Nothing,
                reason::INVALID_SPEC,
            ),
            (
                "not offered in the region",
                resize_to("s-nyc-only", Running),
                ResizeRule::NoSmallerDisk,
                Step::Nothing,
                reason::INVALID_SPEC,
            ),
            (
                "smaller disk",
                resize_to("s-small-disk", Running),
                ResizeRule::NoSmallerDisk,
                Step::Nothing,
                reason::INVALID_SPEC,
            ),
            (
                "smaller disk where the vendor shrinks disks",
                resize_to("s-small-disk", Running),
                ResizeRule::Any,
                Step::PowerOff,
                reason::STOPPING,
            ),
            (
                "vendor cannot resize",
                resize_to("s-2vcpu-2gb", Running),
                ResizeRule::Unsupported,
                Step::Nothing,
                reason::UNSUPPORTED,
            ),
            (
                "another currency",
                resize_to("eur-1", Running),
                ResizeRule::NoSmallerDisk,
                Step::Nothing,
                reason::CURRENCY_MISMATCH,
            ),
            (
                "over maxMonthlySpend",
                Case {
                    target: spend_limited("10"),
                    ..resize_to("s-2vcpu-2gb", Running)
                },
                ResizeRule::NoSmallerDisk,
                Step::Nothing,
                reason::LIMIT_EXCEEDED,
            ),
            (
                "within maxMonthlySpend (the slot is held already)",
                Case {
                    target: spend_limited("24"),
                    ..resize_to("s-2vcpu-2gb", Running)
                },
                ResizeRule::NoSmallerDisk,
                Step::PowerOff,
                reason::STOPPING,
            ),
            (
                "refused while off: powered back on",
                resize_to("s-nope", Off),
                ResizeRule::NoSmallerDisk,
                Step::PowerOn,
                reason::INVALID_SPEC,
            ),
            (
                "the vendor refused this size before",
                Case {
                    status: refused_before.clone(),
                    ..resize_to("s-2vcpu-2gb", Off)
                },
                ResizeRule::NoSmallerDisk,
                Step::PowerOn,
                reason::VENDOR_REJECTED,
            ),
        ];
        for (name, c, rule, want_step, want_reason) in cases {
            let d = run_with(&c, rule, &cat);
            assert_eq!(d.step, want_step, "{name}: step");
            assert_eq!(d.health.reason(), want_reason, "{name}: {:?}", d.health);
            if want_step != Step::PowerOff {
                assert!(
                    matches!(d.health, Health::Stalled { .. }),
                    "{name}: {:?}",
                    d.health
                );
            }
        }
        // Another size after a refusal: the refusal is forgotten and the new size admitted.
        let c = Case {
            status: refused_before,
            ..resize_to("s-1vcpu-1gb", Off)
        };
        let d = run_with(&c, ResizeRule::NoSmallerDisk, &cat);
        assert_eq!(d.status.resize_refused, None);
        assert_eq!(d.step, Step::PowerOn);
        assert!(
            matches!(d.health, Health::Progressing { .. }),
            "{:?}",
            d.health
        );
    }

    #[test]
    fn observe_only_under_a_credit_stop_says_so_and_is_not_reconciling() {
        let c = Case {
            vm: vm(
                serde_json::json!({"managementPolicy": "ObserveOnly"}),
                serde_json::json!({}),
            ),
            target: project("acme", None, true),
            ..case(
                "observe-only, credit exhausted",
                Lookup::Found(ours(ServerState::Running)),
                Step::Nothing,
                reason::CREDIT_EXHAUSTED,
            )
        };
        let d = run(&c);
        assert_eq!(d.step, Step::Nothing);
        let Health::NotReady { reason: r, message } = &d.health else {
            panic!("not NotReady: {:?}", d.health);
        };
        assert_eq!(r, reason::CREDIT_EXHAUSTED);
        assert!(message.contains("ObserveOnly"), "{message}");
        assert!(!message.contains("stopping"), "{message}");
    }

    #[test]
    fn create_records_intent_and_the_account_and_project() {
        let c = Case {
            status: Default::default(),
            ..case("", Lookup::Absent { after_intent: true }, Step::Create, "")
        };
        let s = run(&c).status;
        assert_eq!(s.creation_key.as_deref(), Some(UID));
        assert_eq!(s.provider_config.as_deref(), Some("pc"));
        assert_eq!(s.project.as_deref(), Some("acme"));
        assert_eq!(
            (s.region.as_deref(), s.image.as_deref()),
            (Some("fra1"), Some("debian-12-x64"))
        );
    }

    #[test]
    fn nothing_of_a_foreign_server_reaches_status() {
        let c = Case {
            status: Default::default(),
            adoption_allowed: true,
            ..case(
                "",
                Lookup::Found(server(
                    ServerState::Running,
                    "s-1vcpu-1gb",
                    &["quartermaster-uid-ffff"],
                )),
                Step::Nothing,
                "",
            )
        };
        let d = run(&c);
        assert_eq!(d.status, VirtualMachineStatus::default());
        assert!(d.usage.is_empty());
    }

    /// Stalled or paused, a server that is this VM's is still metered (whole hours close), looked at
    /// while its window is open, and stopped by its Project's credit stop.
    #[test]
    fn stalled_and_paused_vms_are_metered_and_stopped_by_the_credit_stop() {
        let mut status = created();
        status.metering = Some(MeteringWindow {
            since: NOW - 7200,
            size: "s-1vcpu-1gb".into(),
            hourly_price: "0.00893".into(),
            vendor_hourly_price: None,
            currency: "USD".into(),
        });
        let stalled = Case {
            vm: vm(serde_json::json!({"region": "ams3"}), serde_json::json!({})),
            status: status.clone(),
            ..case(
                "",
                Lookup::Found(ours(ServerState::Running)),
                Step::Nothing,
                "",
            )
        };
        let paused = Case {
            status: status.clone(),
            ..case(
                "",
                Lookup::Found(ours(ServerState::Running)),
                Step::Nothing,
                "",
            )
        };
        for (name, c, d) in [
            ("stalled", &stalled, run(&stalled)),
            ("paused", &paused, observe_case(&paused)),
        ] {
            assert_eq!(d.usage.len(), 2, "{name}: two whole hours close");
            assert_eq!(
                d.status.metering.as_ref().unwrap().since,
                NOW - 2000,
                "{name}"
            );
            assert_eq!(d.resync_at_most, Some(METERING_RESYNC), "{name}");
            assert_eq!(d.step, Step::Nothing, "{name}");
            let broke = Case {
                target: project("acme", None, true),
                status: c.status.clone(),
                vm: c.vm.clone(),
                ..case("", c.lookup.clone(), Step::Nothing, "")
            };
            let d = if name == "paused" {
                observe_case(&broke)
            } else {
                run(&broke)
            };
            assert_eq!(d.step, Step::PowerOff, "{name}: the credit stop applies");
        }
        assert_eq!(
            run(&stalled).health.reason(),
            reason::IMMUTABLE_FIELD_CHANGED
        );
        // ObserveOnly is never powered off, paused or not.
        let watch_only = Case {
            vm: vm(
                serde_json::json!({"managementPolicy": "ObserveOnly"}),
                serde_json::json!({}),
            ),
            target: project("acme", None, true),
            status,
            ..case(
                "",
                Lookup::Found(ours(ServerState::Running)),
                Step::Nothing,
                "",
            )
        };
        assert_eq!(observe_case(&watch_only).step, Step::Nothing);
    }

    /// A server found gone closes the window at its last sighting, never later.
    #[test]
    fn a_server_found_gone_is_billed_until_it_was_last_seen() {
        let mut status = created();
        status.metering = Some(MeteringWindow {
            since: NOW - 1800,
            size: "s-1vcpu-1gb".into(),
            hourly_price: "0.00893".into(),
            vendor_hourly_price: None,
            currency: "USD".into(),
        });
        let c = Case {
            status,
            ..case("", Lookup::Missing("42".into()), Step::Nothing, "")
        };
        let with_sighting = |seen: Option<i64>| {
            let cat = catalog();
            decide(&Inputs {
                last_seen: seen,
                ..inputs_of(&c, ResizeRule::NoSmallerDisk, &cat)
            })
        };
        let d = with_sighting(Some(NOW - 600));
        assert_eq!(d.health.reason(), reason::EXTERNAL_NOT_FOUND);
        assert_eq!(d.status.metering, None);
        assert_eq!(d.usage.len(), 1);
        assert_eq!(
            (d.usage[0].window_start, d.usage[0].window_end),
            (NOW - 1800, NOW - 600)
        );
        // No sighting known (a restart): nothing unproven is billed.
        let d = with_sighting(None);
        assert_eq!(d.status.metering, None);
        assert!(d.usage.is_empty(), "{:?}", d.usage);
    }

    /// The price comes from the server object, else the catalog, else the open window; with none, the
    /// VM says so and its seconds are metered unpriced. The tenant pays the markup; status shows that.
    #[test]
    fn prices_come_from_the_vendor_first_and_unknown_ones_are_said_and_metered() {
        use crate::cloud::ServerPrice;
        let cat = catalog();
        let legacy = |price: Option<ServerPrice>, status: VirtualMachineStatus| Case {
            vm: vm(
                serde_json::json!({"size": "legacy-1"}),
                serde_json::json!({}),
            ),
            status,
            lookup: Lookup::Found(Server {
                price,
                ..server(
                    ServerState::Running,
                    "legacy-1",
                    &["quartermaster-uid-0123456789abcdef"],
                )
            }),
            ..case(
                "",
                Lookup::Absent {
                    after_intent: false,
                },
                Step::Nothing,
                "",
            )
        };
        // Nothing knows the price: Ready=False Unpriced, and a window without a price keeps the seconds.
        let d = run(&legacy(None, created()));
        let Health::NotReady { reason: r, message } = &d.health else {
            panic!("{:?}", d.health)
        };
        assert_eq!(r, reason::UNPRICED);
        assert!(message.contains("legacy-1"), "{message}");
        let w = d.status.metering.clone().expect("the seconds are metered");
        assert_eq!(
            (w.since, w.hourly_price.as_str(), w.currency.as_str()),
            (NOW, "", "")
        );
        // The server object's price (DigitalOcean's droplets carry one), with a 50 % markup.
        let on_server = Some(ServerPrice {
            hourly: "0.02".parse().unwrap(),
            monthly: "14".parse().unwrap(),
            currency: "USD".into(),
        });
        let c = legacy(on_server, created());
        let d = decide(&Inputs {
            markup_percent: Decimal::from(50),
            ..inputs_of(&c, ResizeRule::NoSmallerDisk, &cat)
        });
        assert_eq!(d.health.reason(), reason::RECONCILED);
        assert_eq!(
            (
                d.status.hourly_price.as_deref(),
                d.status.monthly_price.as_deref()
            ),
            (Some("0.03"), Some("21.00"))
        );
        // An unusual markup: status keeps the exact price, the printer column's field is rounded.
        let odd = decide(&Inputs {
            markup_percent: "33.333".parse().unwrap(),
            ..inputs_of(&c, ResizeRule::NoSmallerDisk, &cat)
        });
        assert_eq!(
            (
                odd.status.monthly_price.as_deref(),
                odd.status.monthly_price_rounded.as_deref()
            ),
            (Some("18.66662"), Some("18.67"))
        );
        let w = d.status.metering.unwrap();
        assert_eq!(
            (w.hourly_price.as_str(), w.vendor_hourly_price.as_deref()),
            ("0.03", Some("0.02"))
        );
        // Later the server object has no price and the catalog none either: the window remembers it.
        let c = legacy(
            None,
            VirtualMachineStatus {
                metering: Some(w.clone()),
                ..created()
            },
        );
        let d = decide(&Inputs {
            markup_percent: Decimal::from(50),
            ..inputs_of(&c, ResizeRule::NoSmallerDisk, &cat)
        });
        assert_eq!(d.health.reason(), reason::RECONCILED);
        assert_eq!(d.status.metering, Some(w));
    }

    /// Vendors bill powered-off servers: a stopped VM's window stays open.
    #[test]
    fn a_stopped_server_keeps_its_window_open() {
        let c = Case {
            vm: vm(
                serde_json::json!({"runStrategy": "Halted"}),
                serde_json::json!({}),
            ),
            ..case("", Lookup::Found(ours(ServerState::Off)), Step::Nothing, "")
        };
        let d = run(&c);
        assert_eq!(d.health.reason(), reason::STOPPED);
        assert_eq!(d.status.metering.unwrap().since, NOW);
    }

    /// The ownership tag alone is not enough: the server's name must carry the creation key, or its ID
    /// be the one recorded.
    #[test]
    fn a_forged_ownership_tag_is_not_taken_as_ours() {
        let forged = Server {
            name: "mallorys-box".into(),
            id: "666".into(),
            ..ours(ServerState::Running)
        };
        let c = Case {
            status: VirtualMachineStatus {
                creation_key: Some(UID.into()),
                ..Default::default()
            },
            ..case("", Lookup::Found(forged.clone()), Step::Nothing, "")
        };
        let d = run(&c);
        assert_eq!(d.health.reason(), reason::OWNED_BY_ANOTHER);
        assert!(
            d.status.external_id.is_none() && d.status.addresses.is_none(),
            "{:?}",
            d.status
        );
        assert!(!d.expose);
        assert_eq!(
            ownership(&forged, UID, &["666"]),
            Ownership::Ours,
            "the recorded ID"
        );
        assert_eq!(
            ownership(&ours(ServerState::Running), UID, &[]),
            Ownership::Ours,
            "the name"
        );
    }

    fn observe_case(c: &Case) -> Decision {
        let cat = catalog();
        observe(&inputs_of(c, ResizeRule::NoSmallerDisk, &cat))
    }

    #[test]
    fn project_move_closes_the_window_to_the_old_project_first() {
        let mut status = created();
        status.metering = Some(MeteringWindow {
            since: NOW - 1800,
            size: "s-1vcpu-1gb".into(),
            hourly_price: "0.00893".into(),
            vendor_hourly_price: None,
            currency: "USD".into(),
        });
        let c = Case {
            vm: vm(
                serde_json::json!({"projectRef": {"name": "beta"}}),
                serde_json::json!({}),
            ),
            status: status.clone(),
            target: project("beta", None, false),
            ..case(
                "",
                Lookup::Found(ours(ServerState::Running)),
                Step::Nothing,
                "",
            )
        };
        let d = run(&c);
        assert_eq!(d.status.project.as_deref(), Some("beta"));
        assert!(!d.usage.is_empty());
        assert!(d.usage.iter().all(|e| e.project == "acme"), "{:?}", d.usage);
        assert_eq!(d.usage.last().unwrap().window_end, NOW);
        assert_eq!(
            d.status.metering.as_ref().unwrap().since,
            NOW,
            "new window for beta"
        );
        assert!(d.events.iter().any(|(r, _)| *r == event::PROJECT_CHANGED));

        // Refused: the window stays open for the old project and keeps accruing there.
        let refused = Case {
            target: project("beta", Some(1), false),
            ..c
        };
        let d = run(&refused);
        assert_eq!(d.status.project.as_deref(), Some("acme"));
        assert_eq!(d.status.metering.as_ref().unwrap().since, NOW - 1800);
    }

    /// A row: name, spec, the Project `projectRef` names, whether the billed Project's credit stop
    /// holds, requireProject, the vendor's answer, the step, the Stalled reason, words in its message.
    type StallRow = (
        &'static str,
        serde_json::Value,
        ProjectLookup,
        bool,
        bool,
        Lookup,
        Step,
        &'static str,
        &'static str,
    );

    /// Every stall keeps the money policy of the Project that is billed: a refused move, a removed
    /// `projectRef`, a required Project, a suspended account.
    #[test]
    fn every_stall_keeps_the_billed_projects_credit_stop() {
        use serde_json::json;
        let running = || Lookup::Found(ours(ServerState::Running));
        let table: Vec<StallRow> = vec![
            (
                "a move to a missing Project",
                json!({"projectRef": {"name": "nope"}}),
                ProjectLookup::Missing("nope".into()),
                true,
                false,
                running(),
                Step::PowerOff,
                reason::PROJECT_NOT_FOUND,
                "under Project \"acme\"'s credit stop (no credit): stopping",
            ),
            (
                "a move refused by its limit",
                json!({"projectRef": {"name": "beta"}}),
                project("beta", Some(1), false),
                true,
                false,
                running(),
                Step::PowerOff,
                reason::LIMIT_EXCEEDED,
                "credit stop (no credit): stopping",
            ),
            (
                "already off",
                json!({"projectRef": {"name": "nope"}}),
                ProjectLookup::Missing("nope".into()),
                true,
                false,
                Lookup::Found(ours(ServerState::Off)),
                Step::Nothing,
                reason::PROJECT_NOT_FOUND,
                ": stopped",
            ),
            (
                "a refused move without a stop",
                json!({"projectRef": {"name": "nope"}}),
                ProjectLookup::Missing("nope".into()),
                false,
                false,
                running(),
                Step::Nothing,
                reason::PROJECT_NOT_FOUND,
                "not found",
            ),
            (
                "projectRef removed under a stop",
                json!({}),
                ProjectLookup::Unset,
                true,
                false,
                running(),
                Step::PowerOff,
                reason::CREDIT_EXHAUSTED,
                "cannot leave Project \"acme\"",
            ),
            (
                "projectRef removed where one is required",
                json!({}),
                ProjectLookup::Unset,
                false,
                true,
                running(),
                Step::Nothing,
                reason::PROJECT_REQUIRED,
                "spec.requireProject",
            ),
            (
                "no Project at create where one is required",
                json!({}),
                ProjectLookup::Unset,
                false,
                true,
                Lookup::Absent {
                    after_intent: false,
                },
                Step::Nothing,
                reason::PROJECT_REQUIRED,
                "set spec.projectRef",
            ),
        ];
        for (name, spec, target, stop, require, lookup, step, want_reason, words) in table {
            let mut status = created();
            if matches!(lookup, Lookup::Absent { .. }) {
                status = VirtualMachineStatus::default();
            }
            let c = Case {
                vm: vm(spec, json!({})),
                status,
                target,
                ..case(name, lookup, step.clone(), want_reason)
            };
            let billed = project("acme", None, stop);
            let cat = catalog();
            let mut i = inputs_of(&c, ResizeRule::NoSmallerDisk, &cat);
            if c.status.project.is_some() {
                i.billed = Some(&billed);
            }
            i.require_project = require;
            let d = decide(&i);
            assert_eq!(d.step, step, "{name}");
            assert_eq!(d.health.reason(), want_reason, "{name}");
            assert!(
                matches!(d.health, Health::Stalled { .. }),
                "{name}: {:?}",
                d.health
            );
            assert!(
                d.health.message().contains(words),
                "{name}: {}",
                d.health.message()
            );
            assert_eq!(
                d.status.project.as_deref(),
                c.status.project.as_deref(),
                "{name}: still billed where it was"
            );
        }

        // Suspended: not stopped, and the condition says so.
        let c = case(
            "suspended",
            running(),
            Step::Nothing,
            reason::PROVIDER_CONFIG_SUSPENDED,
        );
        let billed = project("acme", None, true);
        let cat = catalog();
        let mut i = inputs_of(&c, ResizeRule::NoSmallerDisk, &cat);
        i.target = &billed;
        i.suspended = true;
        let d = decide(&i);
        assert_eq!(d.step, Step::Nothing);
        assert!(
            d.health.message().contains(
                "credit stop (no credit), not stopped while ProviderConfig \"pc\" is suspended"
            ),
            "{}",
            d.health.message()
        );
    }

    #[test]
    fn restart_on_a_stopped_vm_is_acknowledged_but_a_reboot_waits_for_the_call() {
        let mut c = case("", Lookup::Found(ours(ServerState::Off)), Step::Nothing, "");
        c.vm = vm(
            serde_json::json!({"runStrategy": "Halted"}),
            serde_json::json!({ANNOTATION_RESTART_REQUESTED_AT: "t1"}),
        );
        let d = run(&c);
        assert_eq!(d.status.last_restart_request.as_deref(), Some("t1"));
        c.lookup = Lookup::Found(ours(ServerState::Running));
        c.vm = vm(
            serde_json::json!({}),
            serde_json::json!({ANNOTATION_RESTART_REQUESTED_AT: "t1"}),
        );
        let d = run(&c);
        assert_eq!(d.step, Step::Reboot);
        assert_eq!(
            d.status.last_restart_request, None,
            "acknowledged by act, after the call succeeded"
        );
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
            let got = next_step(
                *rs,
                want_size,
                &server(*state, s, &[]),
                *restart,
                *needs_off,
            );
            assert_eq!(
                &got, want,
                "{rs:?} size={want_size} state={state:?} restart={restart}"
            );
        }
        let mut busy = server(Running, s, &[]);
        busy.busy = true;
        assert_eq!(next_step(Halted, s, &busy, false, true), Step::Wait);
    }
}

//! The VPCs a Project owns (`spec.vpcs`): made at the vendor, recorded in `status.vpcs`, deleted when
//! their entry goes or the Project is deleted.
//!
//! # Guarantees
//! - **Made once.** The VPC's name is the Project's UID and the region
//!   ([`crate::cloud::vpc::vpc_name`]); the account's VPCs of that exact name are read before any
//!   create, so an earlier attempt's VPC (a crash, a lost answer) is recorded, not made again. Each one
//!   made is recorded in the working status at once, so a failure on the next entry keeps it.
//! - **Ownership.** Only a VPC of the Project's own name is ever recorded, and only recorded VPCs are
//!   deleted. The account must allow the namespace (as for a VM); the VPC then needs no
//!   `vendorResources` grant for the Project's own VMs.
//! - **Nothing cut off.** A VPC is deleted only once no VirtualMachine of the namespace was created in
//!   it (`status.createdWith`) or may be creating in it (`spec.projectVPC` in its account and region
//!   with a creation intent or a server); until then its removal waits (`WaitingForVPC`, the VMs named).
//! - **One entry never holds up another, nor the money.** Each entry is tried on its own; what failed
//!   becomes the Project's health (a refusal — a bad range, a vendor that makes no VPCs, a changed
//!   `ipRange` — `Stalled` with the vendor's words; an outage `Reconciling`), while its counts, costs
//!   and credit stop go on being refreshed on their own schedule.
//! - VPCs are free at these vendors: nothing is metered or admitted.

use kube::ResourceExt;
use kube::runtime::events::EventType;

use crate::cloud::vpc::{parse_cidr, vpc_name};
use crate::cloud::{CloudError, VpcSpec};
use crate::controller::runtime::framework::publish;
use crate::controller::{Context, Error, vendor};
use crate::crd::ANNOTATION_CREATION_INTENT;
use crate::crd::conditions::Health;
use crate::crd::conditions::reason;
use crate::crd::project::{ProjectVpc, ProjectVpcStatus};
use crate::crd::{Project, ProjectStatus, VirtualMachine};
use crate::http::HttpError;

/// Event: a VPC of the Project was made (or an earlier attempt's found) at the vendor.
pub const VPC_CREATED: &str = "VPCCreated";
/// Event: a VPC of the Project was deleted at the vendor.
pub const VPC_DELETED: &str = "VPCDeleted";

/// Makes the declared VPCs that are not recorded yet and deletes the recorded ones no longer declared,
/// each entry on its own. Returns what the Project's health must say beside its money (a wait, a
/// retry or a stall, the worst first), if anything.
pub async fn converge(
    ctx: &Context,
    project: &Project,
    status: &mut ProjectStatus,
) -> Option<Health> {
    let refusals = ctx.state::<Refusals>();
    let uid = project.uid().unwrap_or_default();
    let generation = project.metadata.generation;
    if let Some(h) = refusals.standing(&uid, generation, ctx.config.resync_interval) {
        return Some(h);
    }
    let mut said = Said::default();
    for (i, want) in project.spec.vpcs.iter().enumerate() {
        // One VPC per account and region: a second entry for the same pair is refused, not made.
        if project.spec.vpcs[..i].iter().any(|w| {
            w.provider_config_ref.name == want.provider_config_ref.name && w.region == want.region
        }) {
            said.failed(Error::permanent(
                reason::INVALID_SPEC,
                format!(
                    "spec.vpcs names ProviderConfig {:?}, region {:?} twice: one VPC per account and region",
                    want.provider_config_ref.name, want.region
                ),
            ));
            continue;
        }
        let step = match recorded(status, want) {
            Some(have) => unchanged_range(have, want),
            None => make(ctx, project, want)
                .await
                .map(|made| status.vpcs.push(made)),
        };
        if let Err(e) = step {
            said.failed(e);
        }
    }
    let gone: Vec<ProjectVpcStatus> = status
        .vpcs
        .iter()
        .filter(|v| !project.spec.vpcs.iter().any(|w| same(v, w)))
        .cloned()
        .collect();
    remove(ctx, project, status, gone, &mut said).await;
    let health = said.health();
    refusals.note(&uid, generation, health.as_ref());
    health
}

/// The VPC refusals of each Project (by UID), at the generation they answered: a refusal waits for
/// the user, so its calls are not sent again for that generation until a resync interval has passed
/// (a server outside Quartermaster may have left a VPC meanwhile). Memory only.
#[derive(Default)]
pub struct Refusals(std::sync::Mutex<std::collections::HashMap<String, Refusal>>);

struct Refusal {
    generation: Option<i64>,
    at: std::time::Instant,
    health: Health,
}

impl Refusals {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Refusal>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The refusal that still stands for `uid` at `generation`, if any.
    fn standing(
        &self,
        uid: &str,
        generation: Option<i64>,
        wait: std::time::Duration,
    ) -> Option<Health> {
        let all = self.lock();
        let r = all.get(uid)?;
        (r.generation == generation && r.at.elapsed() < wait).then(|| r.health.clone())
    }

    /// Remembers `health` when it is a refusal; anything else clears what was remembered.
    fn note(&self, uid: &str, generation: Option<i64>, health: Option<&Health>) {
        let mut all = self.lock();
        match health {
            Some(h @ Health::Stalled { .. }) => {
                all.insert(
                    uid.to_string(),
                    Refusal {
                        generation,
                        at: std::time::Instant::now(),
                        health: h.clone(),
                    },
                );
            }
            _ => {
                all.remove(uid);
            }
        }
    }
}

impl crate::controller::runtime::state::KindState for Refusals {
    fn forget(&self, _key: &str, uid: Option<&str>) {
        if let Some(uid) = uid {
            self.lock().remove(uid);
        }
    }
}

/// Deletes every recorded VPC (the Project is being deleted). Returns why that waits, if it does.
pub async fn remove_all(
    ctx: &Context,
    project: &Project,
    status: &mut ProjectStatus,
) -> Result<Option<String>, Error> {
    let all = status.vpcs.clone();
    let mut said = Said::default();
    remove(ctx, project, status, all, &mut said).await;
    if let Some(e) = said.error {
        return Err(e);
    }
    Ok((!said.waiting.is_empty()).then(|| said.waiting.join("; ")))
}

/// What the VPC steps of one reconcile came to: removals that wait, and the worst failure.
#[derive(Default)]
struct Said {
    waiting: Vec<String>,
    error: Option<Error>,
}

impl Said {
    /// Keeps `e` unless a failure the user must act on is kept already.
    fn failed(&mut self, e: Error) {
        let e = retry_unreadable(e);
        if self.error.as_ref().is_none_or(|kept| !kept.is_permanent()) {
            self.error = Some(e);
        }
    }

    fn health(self) -> Option<Health> {
        match (self.error, self.waiting.is_empty()) {
            (Some(e), _) => Some(match e.stall() {
                Some((reason, message)) => Health::stalled(reason, message),
                None => Health::progressing(reason::RETRYING, e.to_string()),
            }),
            (None, false) => Some(Health::progressing(
                reason::WAITING_FOR_VPC,
                self.waiting.join("; "),
            )),
            (None, true) => None,
        }
    }
}

/// An answer that could not be read (after a create, the VPC may exist): tried again, not a stall;
/// the next attempt finds it by name.
fn retry_unreadable(e: Error) -> Error {
    match e {
        Error::Vendor {
            step,
            source: CloudError::Http(HttpError::Decode { message, .. }),
        } => Error::Waiting {
            reason: reason::RETRYING,
            message: format!(
                "{step}: the vendor's answer could not be read ({message}); trying again"
            ),
        },
        e => e,
    }
}

/// Whether ProviderConfig `pc` holds a VPC of `p`.
pub fn holds(p: &Project, pc: &str) -> bool {
    p.status
        .as_ref()
        .is_some_and(|s| s.vpcs.iter().any(|v| v.provider_config == pc))
}

fn same(have: &ProjectVpcStatus, want: &ProjectVpc) -> bool {
    have.provider_config == want.provider_config_ref.name && have.region == want.region
}

fn recorded<'a>(status: &'a ProjectStatus, want: &ProjectVpc) -> Option<&'a ProjectVpcStatus> {
    status.vpcs.iter().find(|v| same(v, want))
}

fn unchanged_range(have: &ProjectVpcStatus, want: &ProjectVpc) -> Result<(), Error> {
    if have.requested_range == want.ip_range {
        return Ok(());
    }
    Err(Error::permanent(
        reason::IMMUTABLE_FIELD_CHANGED,
        format!(
            "spec.vpcs: the VPC in ProviderConfig {:?}, region {:?} was made with ipRange {:?}, now {:?}; \
             restore it, or remove the entry (the VPC is deleted once empty) and add it again",
            have.provider_config, have.region, have.requested_range, want.ip_range
        ),
    ))
}

/// The Project's VPC for `want`: an earlier attempt's, found by name, or a new one.
async fn make(
    ctx: &Context,
    project: &Project,
    want: &ProjectVpc,
) -> Result<ProjectVpcStatus, Error> {
    if let Some(r) = &want.ip_range {
        parse_cidr(r)
            .map_err(|m| Error::permanent(reason::INVALID_SPEC, format!("spec.vpcs: {m}")))?;
    }
    let ns = project.namespace().unwrap_or_default();
    let pc = &want.provider_config_ref.name;
    let resolved = vendor::resolve(ctx, pc, &ns).await?;
    let provider = ctx.providers.compute(ctx, &resolved).await?;
    let uid = project.uid().unwrap_or_default();
    let name = vpc_name(&uid, &want.region);
    let found = provider
        .find_vpcs(&name)
        .await
        .map_err(Error::vendor("look the Project's VPC up"))?
        .into_iter()
        .find(|v| v.region.is_empty() || v.region == want.region);
    let (vpc, note) = match found {
        Some(v) => (v, "found (made by an earlier attempt)"),
        None => {
            let spec = VpcSpec {
                name: name.clone(),
                region: want.region.clone(),
                ip_range: want.ip_range.clone(),
            };
            let v = provider
                .create_vpc(&spec)
                .await
                .map_err(Error::vendor("create the Project's VPC"))?;
            (v, "created")
        }
    };
    let message = format!(
        "VPC {} ({name}) {note} in ProviderConfig {pc:?}, region {:?}",
        vpc.id, want.region
    );
    publish(ctx, project, EventType::Normal, VPC_CREATED, &message).await;
    Ok(ProjectVpcStatus {
        provider_config: pc.clone(),
        region: want.region.clone(),
        id: vpc.id,
        name,
        requested_range: want.ip_range.clone(),
        ip_range: vpc.ip_range.or_else(|| want.ip_range.clone()),
    })
}

/// Deletes `which` (recorded VPCs) once no VM is or may be in them, each on its own; what waits or
/// fails goes into `said`.
async fn remove(
    ctx: &Context,
    project: &Project,
    status: &mut ProjectStatus,
    which: Vec<ProjectVpcStatus>,
    said: &mut Said,
) {
    for v in which {
        match remove_one(ctx, project, &v).await {
            Ok(None) => {
                status.vpcs.retain(|r| r != &v);
                let message = format!("VPC {} ({}) deleted", v.id, v.name);
                publish(ctx, project, EventType::Normal, VPC_DELETED, &message).await;
            }
            Ok(Some(waits)) => said.waiting.push(waits),
            Err(e) => said.failed(e),
        }
    }
}

/// Deletes VPC `v` unless a VM is or may be in it (then: why it waits).
async fn remove_one(
    ctx: &Context,
    project: &Project,
    v: &ProjectVpcStatus,
) -> Result<Option<String>, Error> {
    let ns = project.namespace().unwrap_or_default();
    let users = vms_in(ctx, &ns, &project.name_any(), v)?;
    if !users.is_empty() {
        return Ok(Some(format!(
            "VPC {} waits for VirtualMachine(s) {} to leave it",
            v.id,
            users.join(", ")
        )));
    }
    // A namespace the account no longer allows still deletes what it made there.
    let (resolved, _) = vendor::resolve_holding(ctx, &v.provider_config, &ns).await?;
    if resolved.config.spec.suspended {
        return Ok(Some(format!(
            "VPC {} waits: ProviderConfig {:?} is suspended",
            v.id, v.provider_config
        )));
    }
    let provider = ctx.providers.compute(ctx, &resolved).await?;
    provider
        .delete_vpc(&v.id)
        .await
        .map_err(Error::vendor("delete the Project's VPC"))?;
    Ok(None)
}

/// The VMs of namespace `ns` that are or may be in VPC `v` (from the watch cache): created in it
/// (`status.createdWith`), or joining Project `project`'s VPC in its account and region with a
/// creation intent or a server (a create in flight, or one whose status write a crash lost).
fn vms_in(
    ctx: &Context,
    ns: &str,
    project: &str,
    v: &ProjectVpcStatus,
) -> Result<Vec<String>, Error> {
    let store = ctx.caches()?.store::<VirtualMachine>()?;
    let mut names: Vec<String> = store
        .state()
        .iter()
        .filter(|vm| vm.namespace().as_deref() == Some(ns) && may_be_in(vm, project, v))
        .map(|vm| vm.name_any())
        .collect();
    names.sort();
    Ok(names)
}

fn may_be_in(vm: &VirtualMachine, project: &str, v: &ProjectVpcStatus) -> bool {
    let st = vm.status.as_ref();
    let created_in = st.is_some_and(|s| {
        s.provider_config.as_deref() == Some(v.provider_config.as_str())
            && s.created_with
                .as_ref()
                .is_some_and(|c| c.vpc_id.as_deref() == Some(v.id.as_str()))
    });
    let joining = vm.spec.project_vpc
        && vm
            .spec
            .project_ref
            .as_ref()
            .is_some_and(|r| r.name == project)
        && vm.spec.provider_config_ref.name == v.provider_config
        && vm.spec.region == v.region
        && (vm.annotations().contains_key(ANNOTATION_CREATION_INTENT)
            || st.is_some_and(|s| s.external_id.is_some()));
    created_in || joining
}

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
//!   it (`status.createdWith`); until then its removal waits (`WaitingForVPC`, the VMs named).
//! - Refusals (a bad range, a vendor that makes no VPCs) stall with the vendor's words; outages retry.
//!   A changed `ipRange` of a VPC that exists stalls (`ImmutableFieldChanged`).
//! - VPCs are free at these vendors: nothing is metered or admitted.

use kube::ResourceExt;
use kube::runtime::events::EventType;

use crate::cloud::VpcSpec;
use crate::cloud::vpc::{parse_cidr, vpc_name};
use crate::controller::runtime::framework::publish;
use crate::controller::{Context, Error, vendor};
use crate::crd::conditions::reason;
use crate::crd::project::{ProjectVpc, ProjectVpcStatus};
use crate::crd::{Project, ProjectStatus, VirtualMachine};

/// Event: a VPC of the Project was made (or an earlier attempt's found) at the vendor.
pub const VPC_CREATED: &str = "VPCCreated";
/// Event: a VPC of the Project was deleted at the vendor.
pub const VPC_DELETED: &str = "VPCDeleted";

/// Makes the declared VPCs that are not recorded yet and deletes the recorded ones no longer declared.
/// Returns what a removal waits for, if anything.
pub async fn converge(
    ctx: &Context,
    project: &Project,
    status: &mut ProjectStatus,
) -> Result<Option<String>, Error> {
    for want in &project.spec.vpcs {
        match recorded(status, want) {
            Some(have) => unchanged_range(have, want)?,
            None => {
                let made = make(ctx, project, want).await?;
                status.vpcs.push(made);
            }
        }
    }
    let gone: Vec<ProjectVpcStatus> = status
        .vpcs
        .iter()
        .filter(|v| !project.spec.vpcs.iter().any(|w| same(v, w)))
        .cloned()
        .collect();
    remove(ctx, project, status, gone).await
}

/// Deletes every recorded VPC (the Project is being deleted); returns what that waits for.
pub async fn remove_all(
    ctx: &Context,
    project: &Project,
    status: &mut ProjectStatus,
) -> Result<Option<String>, Error> {
    let all = status.vpcs.clone();
    remove(ctx, project, status, all).await
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

/// Deletes `which` (recorded VPCs) once no VM is in them; returns what waits.
async fn remove(
    ctx: &Context,
    project: &Project,
    status: &mut ProjectStatus,
    which: Vec<ProjectVpcStatus>,
) -> Result<Option<String>, Error> {
    let ns = project.namespace().unwrap_or_default();
    let mut waiting = Vec::new();
    for v in which {
        let users = vms_in(ctx, &ns, &v)?;
        if !users.is_empty() {
            waiting.push(format!(
                "VPC {} waits for VirtualMachine(s) {} to leave it",
                v.id,
                users.join(", ")
            ));
            continue;
        }
        // A namespace the account no longer allows still deletes what it made there.
        let (resolved, _) = vendor::resolve_holding(ctx, &v.provider_config, &ns).await?;
        if resolved.config.spec.suspended {
            waiting.push(format!(
                "VPC {} waits: ProviderConfig {:?} is suspended",
                v.id, v.provider_config
            ));
            continue;
        }
        let provider = ctx.providers.compute(ctx, &resolved).await?;
        provider
            .delete_vpc(&v.id)
            .await
            .map_err(Error::vendor("delete the Project's VPC"))?;
        status.vpcs.retain(|r| r != &v);
        let message = format!("VPC {} ({}) deleted", v.id, v.name);
        publish(ctx, project, EventType::Normal, VPC_DELETED, &message).await;
    }
    Ok((!waiting.is_empty()).then(|| waiting.join("; ")))
}

/// The VMs of namespace `ns` created in VPC `v` (from the watch cache).
fn vms_in(ctx: &Context, ns: &str, v: &ProjectVpcStatus) -> Result<Vec<String>, Error> {
    let store = ctx.caches()?.store::<VirtualMachine>()?;
    let mut names: Vec<String> = store
        .state()
        .iter()
        .filter(|vm| vm.namespace().as_deref() == Some(ns))
        .filter(|vm| {
            vm.status.as_ref().is_some_and(|s| {
                s.provider_config.as_deref() == Some(v.provider_config.as_str())
                    && s.created_with
                        .as_ref()
                        .is_some_and(|c| c.vpc_id.as_deref() == Some(v.id.as_str()))
            })
        })
        .map(|vm| vm.name_any())
        .collect();
    names.sort();
    Ok(names)
}

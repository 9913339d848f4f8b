//! The vendor side of a VirtualMachine's deletion. Releasing a server is a money decision: a server
//! left running in the platform's account is paid for and billed to nobody. So:
//! - **Delete** (the default) deletes every server carrying the VM's tag and waits until they are gone.
//! - **Orphan** releases them (left running, the ownership tag removed so they can be adopted again)
//!   only where the ProviderConfig's `release.allowedNamespaces` names the VM's namespace; elsewhere the
//!   deletion waits, `Stalled` `ReleaseNotAllowed`, metered, until the policy or the allowance changes.
//!   A release is an Event and a `vm_releases` row in the usage ledger (written before the tag is
//!   removed, once per server), so the platform sees what it keeps paying for.
//! - **ObserveOnly** leaves an adopted server untouched; it cannot release a server the VM created
//!   (`status.creationKey`): that one follows `deletionPolicy` like any other.

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::events::EventType;

use super::{SCHEDULED_DELETION_POLL, act, decide};
use crate::cloud;
use crate::controller::runtime::framework::{Cleanup, publish};
use crate::controller::{Context, Error, vendor};
use crate::crd::conditions::{event, reason};
use crate::crd::virtual_machine::{DeletionPolicy, ManagementPolicy, VirtualMachineStatus};
use crate::crd::{ANNOTATION_EXTERNAL_ID, VirtualMachine};
use crate::ledger::{Meter, UsageEvent};

/// The vendor side of deletion: per `managementPolicy` and `deletionPolicy`, leave, release or delete
/// every server carrying this VM's tag, in the account the server was created in.
pub async fn release(
    ctx: &Arc<Context>,
    vm: &VirtualMachine,
    uid: &str,
    status: &VirtualMachineStatus,
) -> Result<Cleanup, Error> {
    let created = status.creation_key.is_some();
    if vm.spec.management_policy == ManagementPolicy::ObserveOnly && !created {
        // An adopted server it only observed: never mutated, not even to release it.
        publish(
            ctx,
            vm,
            EventType::Normal,
            event::ORPHANED,
            "the vendor server is left in place (ObserveOnly)",
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
    // The account the server is in, even if spec.providerConfigRef was edited since.
    let pc = status
        .provider_config
        .clone()
        .unwrap_or_else(|| vm.spec.provider_config_ref.name.clone());
    let ns = vm.namespace().unwrap_or_default();
    // A namespace that lost access to the account still cleans up the server it holds there.
    let (r, _) = vendor::resolve_holding(ctx, &pc, &ns).await?;
    if r.config.spec.suspended {
        return Err(Error::Waiting {
            reason: reason::PROVIDER_CONFIG_SUSPENDED,
            message: format!("ProviderConfig {pc:?} is suspended (spec.suspended); waiting"),
        });
    }
    let p = ctx.providers.compute(ctx, &r).await?;
    let tag = cloud::uid_tag(uid);
    let mut servers = p
        .find_by_tag(&tag)
        .await
        .map_err(Error::vendor("look up servers by tag"))?;
    let recorded = decide::recorded_ids(vm, status);
    for id in &recorded {
        if !servers.iter().any(|s| s.id == *id)
            && let Some(s) = p.get(id).await.map_err(Error::vendor("read the server"))?
        {
            servers.push(s);
        }
    }
    let owned: Vec<&cloud::Server> = act::owned(&servers, uid, &recorded).collect();
    let windows = vm.spec.os == crate::crd::virtual_machine::OperatingSystem::Windows;
    if owned.is_empty() && created && p.accepts_root_password(windows) {
        // No server came of a create that chose a password: what it kept beside one (Contabo's
        // password secret) goes, whatever the deletion policy.
        p.forget_create(&tag).await.map_err(Error::vendor(
            "remove what the create made beside the server",
        ))?;
    }
    if vm.spec.deletion_policy == DeletionPolicy::Orphan {
        if owned.is_empty() {
            // Nothing left at the vendor: nothing to release.
            return Ok(Cleanup::Done);
        }
        if !vendor::release_allowed(&r.config, &ns) {
            let note = stop_while_waiting(ctx, vm, status, &*p, &owned).await?;
            return Err(Error::permanent(
                reason::RELEASE_NOT_ALLOWED,
                format!(
                    "ProviderConfig {pc:?} does not let namespace {ns:?} release servers \
                     (spec.release.allowedNamespaces): the server keeps existing and is billed to this \
                     VM; set deletionPolicy: Delete to delete it, or ask a platform admin{note}"
                ),
            ));
        }
        orphan(ctx, vm, status, &*p, &owned, &tag).await?;
        return Ok(Cleanup::Done);
    }
    let mut waiting = Vec::new();
    let mut scheduled = Vec::new();
    // Only servers carrying this VM's tag: an adopted server was tagged when adopted; another
    // object's server (e.g. named by an annotation) is never deleted.
    for s in owned {
        if s.deletion_scheduled {
            scheduled.push(s.id.clone());
            continue;
        }
        p.delete(&s.id)
            .await
            .map_err(Error::vendor("delete the server"))?;
        waiting.push(s.id.clone());
    }
    Ok(deletion_wait(
        p.vendor(),
        waiting,
        scheduled,
        ctx.config.poll_interval,
    ))
}

/// Releases the VM's servers (deletionPolicy Orphan): left running, without this VM's tag, so they can
/// be adopted again (where a ProviderConfig allows adoption) instead of staying owned by an object that
/// is gone.
async fn orphan(
    ctx: &Context,
    vm: &VirtualMachine,
    status: &VirtualMachineStatus,
    p: &dyn cloud::ComputeProvider,
    owned: &[&cloud::Server],
    tag: &str,
) -> Result<(), Error> {
    let mut released = Vec::new();
    for s in owned {
        let line = release_line(
            vm,
            status,
            p.vendor(),
            s,
            jiff::Timestamp::now().as_second(),
        );
        ctx.record_usage(&[line]).await?;
        p.remove_tag(&s.id, tag).await.map_err(Error::vendor(
            "release the server (remove its ownership tag)",
        ))?;
        released.push(s.id.clone());
    }
    if !released.is_empty() {
        publish(
            ctx,
            vm,
            EventType::Normal,
            event::ORPHANED,
            &format!(
                "server(s) {} left in place and released (ownership tag removed)",
                released.join(", ")
            ),
        )
        .await;
    }
    Ok(())
}

/// A deletion that waits (a release not allowed) is no way out of the credit stop: while the Project
/// the VM is billed to stops its VMs, its running servers are powered off. Returns what the condition
/// adds.
async fn stop_while_waiting(
    ctx: &Context,
    vm: &VirtualMachine,
    status: &VirtualMachineStatus,
    p: &dyn cloud::ComputeProvider,
    owned: &[&cloud::Server],
) -> Result<String, Error> {
    let Some(name) = status.project.as_deref() else {
        return Ok(String::new());
    };
    let ns = vm.namespace().unwrap_or_default();
    let project = ctx
        .caches()?
        .store::<crate::crd::Project>()?
        .get(&kube::runtime::reflector::ObjectRef::new(name).within(&ns))
        .filter(|p| status.project_uid.is_none() || p.uid() == status.project_uid);
    let Some(stop) = project.and_then(|p| crate::controller::project::policy::credit_stop(&p))
    else {
        return Ok(String::new());
    };
    for s in owned
        .iter()
        .filter(|s| s.state == cloud::ServerState::Running && !s.busy)
    {
        p.power(&s.id, cloud::PowerAction::Off)
            .await
            .map_err(Error::vendor("power the server off under the credit stop"))?;
    }
    Ok(format!(
        "; under Project {name:?}'s credit stop: stopped ({})",
        stop.message
    ))
}

/// The usage ledger's line for server `s` released by `vm`: one per server (its key), never priced,
/// billed to the Project the VM was billed to, naming the server and its account.
pub fn release_line(
    vm: &VirtualMachine,
    status: &VirtualMachineStatus,
    vendor: &str,
    s: &cloud::Server,
    now: i64,
) -> UsageEvent {
    let uid = vm.uid().unwrap_or_default();
    UsageEvent {
        key: format!("release-{uid}-{}", s.id),
        namespace: vm.namespace().unwrap_or_default(),
        project: status.project.clone().unwrap_or_default(),
        project_uid: status.project_uid.clone().unwrap_or_default(),
        object_kind: "VirtualMachine".into(),
        object_name: vm.name_any(),
        object_uid: uid,
        meter: Meter::VmReleases,
        quantity: 1,
        unit_price: Default::default(),
        vendor_unit_price: Default::default(),
        price_quantity: 1,
        currency: status.currency.clone().unwrap_or_else(|| "USD".into()),
        window_start: now,
        window_end: now,
        attributes: serde_json::json!({
            "server": s.id, "vendor": vendor, "size": s.size, "region": s.region,
            "providerConfig": status.provider_config,
        }),
    }
}

/// What cleanup waits for: servers whose deletion is under way are polled every `poll`; when every
/// remaining server is only scheduled for deletion at a later date, hourly.
pub fn deletion_wait(
    vendor: &str,
    waiting: Vec<String>,
    scheduled: Vec<String>,
    poll: Duration,
) -> Cleanup {
    match (waiting.is_empty(), scheduled.is_empty()) {
        (true, true) => Cleanup::Done,
        (true, false) => Cleanup::Wait {
            message: format!(
                "{vendor} keeps server(s) {} until their cancellation date; looking again hourly",
                scheduled.join(", ")
            ),
            requeue_after: SCHEDULED_DELETION_POLL,
        },
        (false, _) => Cleanup::Wait {
            message: format!(
                "waiting for {vendor} to delete server(s) {}",
                [waiting, scheduled].concat().join(", ")
            ),
            requeue_after: poll,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletion_waits_hourly_only_for_scheduled_cancellations() {
        let poll = Duration::from_secs(5);
        let after = |c: Cleanup| match c {
            Cleanup::Done => None,
            Cleanup::Wait { requeue_after, .. } => Some(requeue_after),
        };
        assert_eq!(after(deletion_wait("contabo", vec![], vec![], poll)), None);
        assert_eq!(
            after(deletion_wait("contabo", vec![], vec!["7".into()], poll)),
            Some(SCHEDULED_DELETION_POLL)
        );
        assert_eq!(
            after(deletion_wait(
                "digitalocean",
                vec!["1".into()],
                vec![],
                poll
            )),
            Some(poll)
        );
        assert_eq!(
            after(deletion_wait(
                "contabo",
                vec!["1".into()],
                vec!["7".into()],
                poll
            )),
            Some(poll)
        );
    }
}

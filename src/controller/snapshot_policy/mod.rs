//! The VirtualMachineSnapshotPolicy reconciler: a VirtualMachineSnapshot per slot of a cron schedule,
//! the oldest available ones beyond `retain` deleted, and refused ones but the newest.
//!
//! # Guarantees
//! - **One snapshot per slot.** The slot names the VirtualMachineSnapshot it makes
//!   (`<policy>-<slot>`, [`decide::snapshot_name`]), so however often the controller restarts between
//!   making it and recording `status.lastSlot`, a second make of the same slot is refused by the API
//!   server (AlreadyExists) and counted as done; each snapshot then takes its vendor snapshot exactly
//!   once itself. Slots before the policy existed are never taken; after an outage only the latest missed
//!   slot (of the last eight days) is.
//! - **Ownership.** It makes and deletes only VirtualMachineSnapshots it owns (its label and its UID
//!   as their controlling owner), in its own namespace. Deleting the policy deletes them through
//!   Kubernetes' garbage collector, each per its own `deletionPolicy`.
//! - **Retention** counts and deletes only available snapshots: while new ones fail, the old good ones
//!   stay.
//! - It holds nothing at a vendor itself (its snapshots do).

pub mod decide;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use super::runtime::framework::{Cleanup, Outcome, Progress, Reconciler, publish};
use super::{Context, Error};
use crate::crd::conditions::{Health, reason};
use crate::crd::{
    VirtualMachineSnapshot, VirtualMachineSnapshotPolicy, VirtualMachineSnapshotPolicyStatus,
};
use decide::Held;

crate::controller::runtime::framework::managed_namespaced!(
    VirtualMachineSnapshotPolicy,
    VirtualMachineSnapshotPolicyStatus
);

/// The VirtualMachineSnapshotPolicy kind, as the runtime runs it.
pub const WIRE: super::runtime::Wire =
    super::runtime::Wire::of::<VirtualMachineSnapshotPolicy>(wire::wire);

/// Label on the snapshots a policy makes: the policy's name.
pub const LABEL_POLICY: &str = "quartermaster.dev/snapshot-policy";
/// Annotation on the snapshots a policy makes: their slot (RFC 3339).
pub const ANNOTATION_SLOT: &str = "quartermaster.dev/snapshot-slot";
/// Event: a slot's snapshot was made.
pub const SNAPSHOT_SCHEDULED: &str = "SnapshotScheduled";
/// Event: snapshots beyond `retain` were deleted.
pub const SNAPSHOTS_PRUNED: &str = "SnapshotsPruned";

/// Reconciles VirtualMachineSnapshotPolicies.
pub struct SnapshotPolicyReconciler;

fn rfc3339(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn seconds(t: &str) -> Option<i64> {
    t.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
}

/// Whether `s` is one of `policy`'s snapshots: its label, and the policy as its controlling owner.
pub fn owned_by(s: &VirtualMachineSnapshot, policy: &str, uid: &str) -> bool {
    s.labels().get(LABEL_POLICY).map(String::as_str) == Some(policy)
        && s.owner_references()
            .iter()
            .any(|o| o.uid == uid && o.controller == Some(true))
}

/// The policy's snapshots, from the cache.
fn held(ctx: &Context, p: &VirtualMachineSnapshotPolicy, uid: &str) -> Result<Vec<Held>, Error> {
    let (ns, name) = (p.namespace(), p.name_any());
    Ok(ctx
        .caches()?
        .store::<VirtualMachineSnapshot>()?
        .state()
        .iter()
        // Those being deleted are gone as far as retention goes.
        .filter(|s| {
            s.namespace() == ns
                && owned_by(s, &name, uid)
                && s.metadata.deletion_timestamp.is_none()
        })
        .map(|s| Held {
            name: s.name_any(),
            slot: s
                .annotations()
                .get(ANNOTATION_SLOT)
                .and_then(|t| seconds(t))
                .unwrap_or(0),
            available: s
                .status
                .as_ref()
                .is_some_and(|st| st.state.as_deref() == Some("Available")),
            refused: s
                .status
                .as_ref()
                .is_some_and(|st| st.refused_generation.is_some() && st.requested_at.is_none()),
        })
        .collect())
}

/// Makes the snapshot of `slot`; one made already (by an earlier attempt) counts as made.
async fn take(ctx: &Context, p: &VirtualMachineSnapshotPolicy, slot: i64) -> Result<bool, Error> {
    let name = decide::snapshot_name(&p.name_any(), slot);
    let mut labels = p.labels().clone();
    labels.insert(LABEL_POLICY.into(), p.name_any());
    let owner = p.controller_owner_ref(&()).ok_or_else(|| {
        Error::permanent(
            reason::INVALID_OBJECT,
            "the policy has no uid to own its snapshots",
        )
    })?;
    let snap = serde_json::json!({
        "apiVersion": "quartermaster.dev/v1alpha1", "kind": "VirtualMachineSnapshot",
        "metadata": {"name": name, "labels": labels, "annotations": {ANNOTATION_SLOT: rfc3339(slot)},
                     "ownerReferences": [owner]},
        "spec": {"virtualMachineRef": p.spec.virtual_machine_ref, "deletionPolicy": p.spec.deletion_policy},
    });
    let snap: VirtualMachineSnapshot = serde_json::from_value(snap)
        .map_err(|e| Error::permanent(reason::INTERNAL_ERROR, e.to_string()))?;
    let api: Api<VirtualMachineSnapshot> =
        Api::namespaced(ctx.client.clone(), &p.namespace().unwrap_or_default());
    match api.create(&PostParams::default(), &snap).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(Error::kube("making a scheduled snapshot")(e)),
    }
}

/// Deletes the snapshots retention no longer keeps (one already gone counts as deleted).
async fn prune(
    ctx: &Context,
    p: &VirtualMachineSnapshotPolicy,
    names: &[String],
) -> Result<(), Error> {
    let api: Api<VirtualMachineSnapshot> =
        Api::namespaced(ctx.client.clone(), &p.namespace().unwrap_or_default());
    for name in names {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(Error::kube("deleting a snapshot beyond retain")(e)),
        }
    }
    if !names.is_empty() {
        let note = format!(
            "deleted {} beyond retain {}: {}",
            names.len(),
            p.spec.retain,
            names.join(", ")
        );
        publish(ctx, p, EventType::Normal, SNAPSHOTS_PRUNED, &note).await;
    }
    Ok(())
}

impl Reconciler<VirtualMachineSnapshotPolicy> for SnapshotPolicyReconciler {
    async fn apply(
        &self,
        obj: Arc<VirtualMachineSnapshotPolicy>,
        ctx: Arc<Context>,
        progress: &mut Progress<VirtualMachineSnapshotPolicyStatus>,
    ) -> Result<Outcome, Error> {
        let uid = obj
            .uid()
            .ok_or_else(|| Error::permanent(reason::INVALID_OBJECT, "object has no uid"))?;
        let spec = &obj.spec;
        let schedule = match decide::parse(&spec.schedule, spec.time_zone.as_deref()) {
            Ok(s) => s,
            Err(m) => return Ok(Outcome::new(Health::stalled(reason::INVALID_SPEC, m))),
        };
        let now = jiff::Timestamp::now().as_second();
        let min = i64::try_from(ctx.config.min_snapshot_interval.as_secs()).unwrap_or(i64::MAX);
        if let Some(gap) = schedule.shortest_gap(now).filter(|g| *g < min) {
            return Ok(Outcome::new(Health::stalled(
                reason::INVALID_SPEC,
                format!(
                    "spec.schedule {:?} takes a snapshot every {gap} s at times; slots must be at least {min} s apart (the controller's --min-snapshot-interval-secs): each is a billable snapshot",
                    spec.schedule
                ),
            )));
        }
        let held = held(&ctx, &obj, &uid)?;
        let st = &mut progress.status;
        if !spec.suspend {
            let created = obj
                .meta()
                .creation_timestamp
                .as_ref()
                .map_or(now, |t| t.0.as_second());
            let after = st
                .last_slot
                .as_deref()
                .and_then(seconds)
                .unwrap_or(0)
                .max(created);
            if let Some(slot) = schedule.latest(after, now) {
                if take(&ctx, &obj, slot).await? {
                    let note = format!(
                        "snapshot {} for the slot of {}",
                        decide::snapshot_name(&obj.name_any(), slot),
                        rfc3339(slot)
                    );
                    publish(&ctx, &*obj, EventType::Normal, SNAPSHOT_SCHEDULED, &note).await;
                }
                st.last_slot = Some(rfc3339(slot));
            }
        }
        let count = held.len();
        prune(&ctx, &obj, &decide::beyond_retain(held, spec.retain)).await?;
        let st = &mut progress.status;
        st.snapshots = u32::try_from(count).ok();
        let next = schedule.next(now);
        st.next_slot = next.map(rfc3339);
        let (message, wait) = match next {
            _ if spec.suspend => ("suspended: no new snapshots".to_string(), None),
            Some(n) => (
                format!("next snapshot at {}", rfc3339(n)),
                Some(Duration::from_secs(
                    u64::try_from(n - now).unwrap_or(0).clamp(1, 3600),
                )),
            ),
            None => ("the schedule has no further slot".to_string(), None),
        };
        let outcome = Outcome::new(Health::ready(message));
        Ok(match wait {
            Some(w) => outcome.requeue_after(w),
            None => outcome,
        })
    }

    /// Its snapshots are owned by it: Kubernetes' garbage collector deletes them, each per its own
    /// `deletionPolicy`.
    async fn cleanup(
        &self,
        _obj: Arc<VirtualMachineSnapshotPolicy>,
        _ctx: Arc<Context>,
        _progress: &mut Progress<VirtualMachineSnapshotPolicyStatus>,
    ) -> Result<Cleanup, Error> {
        Ok(Cleanup::Done)
    }
}

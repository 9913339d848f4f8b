//! Deletion with `deletionPolicy: Retain`: the vendor's snapshot is left in place and, from then on,
//! costs the platform, not the tenant. That is a money decision like releasing a server, so it is
//! admitted the same way:
//! - only where the account's ProviderConfig lets the namespace release (`spec.release.allowedNamespaces`);
//!   elsewhere the deletion waits, `Stalled` `ReleaseNotAllowed`, its storage still billed to the
//!   Project at every attempt, until the policy or the allowance changes;
//! - a release is a `snapshot_releases` row in the usage ledger (written before the object may go, keyed
//!   by the object's UID so a retry writes it once) and a `SnapshotRetained` Event;
//! - the release is recorded for the account's round ([`released`](super::released)), which records
//!   the snapshot's storage from then on as the platform's vendor cost until the vendor no longer holds
//!   it. A cleanup tried again after the release was recorded is done at once ([`released_before`]),
//!   whatever the policy says by then, so the tenant is not billed past the release and the platform's
//!   snapshot is not deleted.

use kube::ResourceExt;
use kube::runtime::events::EventType;

use super::{SNAPSHOT_RETAINED, vendor};
use crate::controller::runtime::framework::{Cleanup, publish};
use crate::controller::{Context, Error};
use crate::crd::conditions::reason;
use crate::crd::{ProviderConfig, VirtualMachineSnapshot, VirtualMachineSnapshotStatus};
use crate::ledger::released::ReleasedSnapshot;
use crate::ledger::{Meter, UsageEvent};

/// Whether `obj` was released already (a cleanup tried again after its release was recorded, e.g. its
/// finalizer's removal failed), whatever its `deletionPolicy` says now: it is then done (the snapshot
/// is the platform's, and its storage is not billed to the tenant past the release), and the
/// `SnapshotRetained` Event is published again, in case the earlier attempt stopped before it.
pub async fn released_before(ctx: &Context, obj: &VirtualMachineSnapshot) -> Result<bool, Error> {
    let (Some(ledger), Some(uid)) = (&ctx.ledger, obj.uid()) else {
        return Ok(false);
    };
    let Some(release) = ledger.release_of(&uid).await? else {
        return Ok(false);
    };
    publish(
        ctx,
        obj,
        EventType::Normal,
        SNAPSHOT_RETAINED,
        &retained_note(&release.snapshot_id),
    )
    .await;
    Ok(true)
}

/// The `SnapshotRetained` Event's note.
fn retained_note(snapshot_id: &str) -> String {
    format!(
        "the vendor's snapshot {snapshot_id} is kept (deletionPolicy Retain) and released to the \
         platform: it goes on costing money there, billed to nobody (recorded as the platform's vendor \
         cost until it goes)"
    )
}

/// Leaves the snapshot at the vendor where the ProviderConfig allows it (see the module).
pub async fn retain(
    ctx: &Context,
    obj: &VirtualMachineSnapshot,
    status: &VirtualMachineSnapshotStatus,
    config: &ProviderConfig,
) -> Result<Cleanup, Error> {
    let ns = obj.namespace().unwrap_or_default();
    let provider_config = config.name_any();
    if !vendor::release_allowed(config, &ns) {
        return Err(Error::permanent(
            reason::RELEASE_NOT_ALLOWED,
            format!(
                "ProviderConfig {provider_config:?} does not let namespace {ns:?} keep snapshots past \
                 their object (spec.release.allowedNamespaces): the snapshot keeps existing and its \
                 storage is billed to this Project; set deletionPolicy: Delete to delete it, or ask a \
                 platform admin"
            ),
        ));
    }
    let now = jiff::Timestamp::now().as_second();
    ctx.record_usage(&[release_line(obj, status, now)]).await?;
    if let Some(ledger) = &ctx.ledger {
        ledger
            .open_release(&released(obj, status, config, now))
            .await?;
    }
    let note = retained_note(status.snapshot_id.as_deref().unwrap_or_default());
    publish(ctx, obj, EventType::Normal, SNAPSHOT_RETAINED, &note).await;
    Ok(Cleanup::Done)
}

/// The ledger row of a release: one per object, never priced.
fn release_line(
    obj: &VirtualMachineSnapshot,
    status: &VirtualMachineSnapshotStatus,
    now: i64,
) -> UsageEvent {
    UsageEvent {
        quantity: 1,
        currency: status.currency.clone().unwrap_or_else(|| "USD".into()),
        window_start: now,
        window_end: now,
        attributes: serde_json::json!({
            "snapshotID": status.snapshot_id,
            "server": status.server_id,
            "sizeGB": status.size_gigabytes,
        }),
        ..super::usage_event(obj, status, Meter::SnapshotReleases, "")
    }
}

/// What the account's round follows of this release: the platform's cost starts where the tenant's
/// billing ended (`status.billedUntil`, else now).
fn released(
    obj: &VirtualMachineSnapshot,
    status: &VirtualMachineSnapshotStatus,
    config: &ProviderConfig,
    now: i64,
) -> ReleasedSnapshot {
    let from = status
        .billed_until
        .as_deref()
        .and_then(super::seconds)
        .unwrap_or(now);
    ReleasedSnapshot {
        object_uid: obj.uid().unwrap_or_default(),
        provider_config_uid: config.uid().unwrap_or_default(),
        provider_config: config.name_any(),
        namespace: obj.namespace().unwrap_or_default(),
        name: obj.name_any(),
        snapshot_id: status.snapshot_id.clone().unwrap_or_default(),
        server_id: status.server_id.clone().unwrap_or_default(),
        size_mb: status
            .size_gigabytes
            .as_deref()
            .and_then(super::decide::megabytes)
            .unwrap_or(0),
        released_at: from,
        metered_until: from,
        gone_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_is_one_unpriced_row_per_object() {
        let mut obj: VirtualMachineSnapshot = serde_json::from_value(serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "VirtualMachineSnapshot",
            "metadata": {"name": "kept", "namespace": "team-a", "uid": "u-1"},
            "spec": {"virtualMachineRef": {"name": "web"}, "deletionPolicy": "Retain"}
        }))
        .unwrap();
        obj.status = None;
        let st = VirtualMachineSnapshotStatus {
            snapshot_id: Some("s-9".into()),
            project_uid: Some("p-1".into()),
            ..Default::default()
        };
        let a = release_line(&obj, &st, 100);
        let b = release_line(&obj, &st, 200);
        assert_eq!(a.key, b.key, "a retry writes the same row");
        assert_eq!(a.meter, Meter::SnapshotReleases);
        assert_eq!((a.quantity, a.unit_price), (1, Default::default()));
        assert_eq!(a.project_uid, "p-1");
        assert_eq!(a.attributes["snapshotID"], "s-9");
    }
}

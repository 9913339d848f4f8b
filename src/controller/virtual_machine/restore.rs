//! Restores in place on request: the `quartermaster.dev/restore-snapshot` annotation names a
//! VirtualMachineSnapshot of this VM's server (`<name>`, or `<name>@<anything>` to ask again), and the
//! vendor replaces the server's disk with it: DigitalOcean's `restore` droplet action, Vultr's
//! `POST /instances/{id}/restore`, Contabo's rollback. Linode refuses (it rebuilds from an image with a
//! new root password).
//!
//! # Guarantees
//! - **At most once per value.** The value is recorded in `status.lastRestore` before the call; an
//!   answer that was lost, or a 5xx (a gateway may answer one after the vendor acted), is marked
//!   `unconfirmed` and not sent again (a restore replaces the disk); only a 429 proves nothing was done
//!   and lets it be tried again.
//! - **Only its own snapshot.** The snapshot must be of this namespace (a local name), available, in the
//!   server's account and taken of this very server; anything else is refused and recorded, and nothing
//!   is sent.
//! - Only a VM that is settled (Ready), not `ObserveOnly`, on an account that is not suspended, acts on it.

use kube::ResourceExt;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;

use crate::cloud::{CallFailure, CloudError};
use crate::controller::runtime::framework::{Progress, now, persist, publish};
use crate::controller::{Context, Error, vendor};
use crate::crd::virtual_machine::{ManagementPolicy, SnapshotRestore};
use crate::crd::{
    ANNOTATION_RESTORE_SNAPSHOT, VirtualMachine, VirtualMachineSnapshot, VirtualMachineStatus,
};

/// Event: a restore was accepted by the vendor.
pub const RESTORED: &str = "Restoring";
/// Event: a restore was refused or its answer lost.
pub const RESTORE_FAILED: &str = "RestoreFailed";

/// The annotation's value when it asks for a restore not yet answered, and the snapshot it names.
pub fn wanted<'a>(
    vm: &'a VirtualMachine,
    status: &VirtualMachineStatus,
) -> Option<(&'a str, &'a str)> {
    let want = vm
        .annotations()
        .get(ANNOTATION_RESTORE_SNAPSHOT)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())?;
    let done = status
        .last_restore
        .as_ref()
        .is_some_and(|r| r.requested == want);
    let name = want.split('@').next().unwrap_or(want);
    (!done).then_some((want, name))
}

/// Why snapshot `snap` cannot restore the server `server_id` of account `pc`; else its vendor ID.
pub fn usable(
    snap: Option<&VirtualMachineSnapshot>,
    name: &str,
    server_id: &str,
    pc: &str,
) -> Result<String, String> {
    let Some(st) = snap.and_then(|s| s.status.as_ref()) else {
        return Err(format!(
            "VirtualMachineSnapshot {name:?} not found in this namespace"
        ));
    };
    match (st.snapshot_id.as_deref(), st.state.as_deref()) {
        (Some(id), Some("Available"))
            if st.server_id.as_deref() == Some(server_id)
                && st.provider_config.as_deref() == Some(pc) =>
        {
            Ok(id.to_string())
        }
        (Some(_), Some("Available")) => Err(format!(
            "VirtualMachineSnapshot {name:?} was not taken of this VM's server: a restore in place takes only a snapshot of the same server"
        )),
        _ => Err(format!("VirtualMachineSnapshot {name:?} is not available")),
    }
}

/// What a failed restore call proves. A restore replaces the disk: only a 429 proves it was not
/// started (a 5xx may come from a gateway after the vendor acted), so any other failure that is not a
/// refusal is unknown, and not sent again.
pub fn after_failure(e: &CloudError) -> CallFailure {
    match e.call_failure() {
        CallFailure::NotDone if matches!(e, CloudError::Http(h) if h.status() != Some(429)) => {
            CallFailure::Unknown
        }
        other => other,
    }
}

/// The available snapshots of `server_id` in the cache taken after `snap` (by the vendor's creation
/// time), by name.
fn newer_than(
    ctx: &Context,
    snap: Option<&VirtualMachineSnapshot>,
    server_id: &str,
) -> Result<Vec<String>, Error> {
    let Some(at) = snap
        .and_then(|s| s.status.as_ref())
        .and_then(|st| st.created_at.as_deref())
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
    else {
        return Ok(Vec::new());
    };
    let ns = snap.and_then(|s| s.namespace());
    Ok(ctx
        .caches()?
        .store::<VirtualMachineSnapshot>()?
        .state()
        .iter()
        .filter(|s| {
            s.namespace() == ns
                && s.status.as_ref().is_some_and(|st| {
                    st.server_id.as_deref() == Some(server_id)
                        && st.state.as_deref() == Some("Available")
                        && st
                            .created_at
                            .as_deref()
                            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                            .is_some_and(|t| t > at)
                })
        })
        .map(|s| s.name_any())
        .collect())
}

/// Sends the restore the annotation asks for, once (see the module's guarantees). Called once the VM
/// is settled.
pub async fn requested(
    ctx: &Context,
    vm: &VirtualMachine,
    progress: &mut Progress<VirtualMachineStatus>,
) -> Result<(), Error> {
    let Some((want, name)) = wanted(vm, &progress.status) else {
        return Ok(());
    };
    let st = &progress.status;
    let (Some(server_id), Some(pc)) = (st.external_id.clone(), st.provider_config.clone()) else {
        return Ok(());
    };
    if vm.spec.management_policy == ManagementPolicy::ObserveOnly {
        return Ok(());
    }
    let ns = vm.namespace().unwrap_or_default();
    let resolved = vendor::resolve(ctx, &pc, &ns).await?;
    let provider = ctx.providers.compute(ctx, &resolved).await?;
    let snap = ctx
        .caches()?
        .store::<VirtualMachineSnapshot>()?
        .get(&ObjectRef::new(name).within(&ns));
    let mut record = SnapshotRestore {
        requested: want.to_string(),
        snapshot_id: None,
        accepted_at: None,
        unconfirmed: false,
        refused: None,
    };
    let newer = if provider.restore_drops_newer_snapshots() {
        newer_than(ctx, snap.as_deref(), &server_id)?
    } else {
        Vec::new()
    };
    let usable = usable(snap.as_deref(), name, &server_id, &pc).and_then(|id| {
        if newer.is_empty() {
            Ok(id)
        } else {
            Err(format!(
                "{} deletes a server's newer snapshots when it rolls back: restore from the newest, or delete these first: {}",
                provider.vendor(),
                newer.join(", ")
            ))
        }
    });
    let id = match usable {
        Ok(id) => id,
        Err(why) => {
            record.refused = Some(why.clone());
            progress.status.last_restore = Some(record);
            persist(ctx, vm, progress).await?;
            publish(ctx, vm, EventType::Warning, RESTORE_FAILED, &why).await;
            return Ok(());
        }
    };
    record.snapshot_id = Some(id.clone());
    let before = progress.status.last_restore.replace(record);
    persist(ctx, vm, progress).await?;
    let result = provider.restore_snapshot(&server_id, &id).await;
    let r = progress
        .status
        .last_restore
        .as_mut()
        .expect("recorded above");
    let (kind, reason, note) = match result {
        Ok(()) => {
            r.accepted_at = Some(now());
            let note = format!(
                "{} is restoring server {server_id} from snapshot {id} ({name})",
                provider.vendor()
            );
            (EventType::Normal, RESTORED, note)
        }
        Err(e) => match after_failure(&e) {
            CallFailure::NotDone => {
                progress.status.last_restore = before;
                return Err(Error::vendor("restore the server from its snapshot")(e));
            }
            CallFailure::Refused => {
                r.refused = Some(e.to_string());
                (
                    EventType::Warning,
                    RESTORE_FAILED,
                    format!("the restore from {name} was refused: {e}"),
                )
            }
            CallFailure::Unknown => {
                r.unconfirmed = true;
                let note = format!(
                    "the restore from {name} got no answer ({e}); it is not sent again: set a new {ANNOTATION_RESTORE_SNAPSHOT} value to ask again"
                );
                (EventType::Warning, RESTORE_FAILED, note)
            }
        },
    };
    persist(ctx, vm, progress).await?;
    publish(ctx, vm, kind, reason, &note).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(value: Option<&str>) -> VirtualMachine {
        let mut v: VirtualMachine = serde_json::from_value(serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": "web", "namespace": "t"},
            "spec": {"providerConfigRef": {"name": "do"}, "region": "fra1", "size": "s", "image": "i"},
        }))
        .unwrap();
        if let Some(v2) = value {
            v.annotations_mut()
                .insert(ANNOTATION_RESTORE_SNAPSHOT.into(), v2.into());
        }
        v
    }

    fn snap(server: &str, pc: &str, state: &str) -> VirtualMachineSnapshot {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "VirtualMachineSnapshot",
            "metadata": {"name": "nightly", "namespace": "t"},
            "spec": {"virtualMachineRef": {"name": "web"}},
            "status": {"snapshotID": "7", "state": state, "serverID": server, "providerConfig": pc},
        }))
        .unwrap()
    }

    #[test]
    fn one_restore_per_distinct_value_naming_the_snapshot_before_the_at() {
        let mut st = VirtualMachineStatus::default();
        assert_eq!(wanted(&vm(None), &st), None);
        assert_eq!(
            wanted(&vm(Some("nightly")), &st),
            Some(("nightly", "nightly"))
        );
        st.last_restore = Some(SnapshotRestore {
            requested: "nightly".into(),
            snapshot_id: None,
            accepted_at: None,
            unconfirmed: true,
            refused: None,
        });
        assert_eq!(wanted(&vm(Some("nightly")), &st), None, "not sent again");
        assert_eq!(
            wanted(&vm(Some("nightly@2")), &st),
            Some(("nightly@2", "nightly"))
        );
    }

    #[test]
    fn only_a_429_lets_a_restore_be_sent_again() {
        use crate::http::HttpError;
        let status = |s: u16| {
            CloudError::Http(HttpError::Status {
                vendor: "digitalocean",
                status: s,
                message: String::new(),
                retry_after: None,
            })
        };
        assert_eq!(after_failure(&status(429)), CallFailure::NotDone);
        for s in [500, 502, 503, 504] {
            assert_eq!(after_failure(&status(s)), CallFailure::Unknown, "{s}");
        }
        assert_eq!(after_failure(&status(422)), CallFailure::Refused);
        let timeout = CloudError::Http(HttpError::Timeout {
            vendor: "digitalocean",
            timeout: std::time::Duration::from_secs(30),
        });
        assert_eq!(after_failure(&timeout), CallFailure::Unknown);
    }

    #[test]
    fn only_an_available_snapshot_of_this_server_in_its_account_restores_it() {
        let ok = snap("42", "do", "Available");
        assert_eq!(usable(Some(&ok), "nightly", "42", "do"), Ok("7".into()));
        assert!(
            usable(Some(&ok), "nightly", "43", "do").is_err(),
            "another server's"
        );
        assert!(
            usable(Some(&ok), "nightly", "42", "other").is_err(),
            "another account's"
        );
        assert!(usable(Some(&snap("42", "do", "Pending")), "nightly", "42", "do").is_err());
        assert!(usable(None, "nightly", "42", "do").is_err());
    }
}

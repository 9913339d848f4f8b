//! The VirtualMachineSnapshot reconciler: one snapshot of a VirtualMachine's server, exactly once.
//!
//! # Guarantees
//! - **Taken exactly once.** The request is recorded in status before the vendor is called
//!   (`requestedAt`, the server, the account and the mark `qm-snap-<uid>`). Every reconcile asks the
//!   vendor for the mark before any request: a snapshot found is recorded; one the vendor is still taking
//!   (DigitalOcean names a snapshot only once it is taken, so a running snapshot action of the server
//!   counts) is waited for; only when nothing is found a minute after the request ([`decide::SETTLE`])
//!   is it requested again. So a controller killed between the call and the status write, or an answer
//!   lost on the way, finds the snapshot instead of taking a second one.
//! - **Ownership.** A snapshot is taken only of a VirtualMachine of the same namespace that holds a
//!   server it may act on (not `ObserveOnly`), in the account its server is in, and only where that
//!   account's ProviderConfig allows the namespace. Only the snapshot carrying this object's mark is
//!   ever recorded or deleted. The source is fixed once requested: a changed `virtualMachineRef` stalls
//!   (`ImmutableFieldChanged`).
//! - **Refusals stall, outages retry.** A vendor or plan that cannot snapshot stalls with the vendor's
//!   words (the request is withdrawn, since a refusal proves nothing was made, and not sent again until
//!   the object changes); 429, 5xx, timeouts and unreadable answers retry, and every attempt after the
//!   first looks the mark up before any request.
//! - **Deletion** (`deletionPolicy: Delete`) deletes the vendor's snapshot, waiting for one still being
//!   taken; `Retain` leaves it, released to the platform only where the ProviderConfig allows
//!   ([`retain`]), whose storage is then recorded as the platform's vendor cost until the vendor no
//!   longer holds it ([`released`]). The account's ProviderConfig and its credentials are kept while a snapshot is held
//!   through them.
//! - **Metered**: its storage is billed to the VM's Project hourly and, at deletion, to the second
//!   ([`meter`]), whatever its conditions.
//! - An available snapshot is not looked at again: a resync costs no vendor call.

pub mod admission;
pub mod decide;
pub mod released;
mod retain;
mod wire;

use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;

use super::runtime::framework::{
    Cleanup, Outcome, PausedOutcome, Progress, Reconciler, now, persist, publish,
};
use super::{Context, Error, vendor};
use crate::cloud::{ComputeProvider, snapshot_mark};
use crate::crd::conditions::{Health, reason};
use crate::crd::virtual_machine_snapshot::SnapshotDeletionPolicy;
use crate::crd::{VirtualMachine, VirtualMachineSnapshot, VirtualMachineSnapshotStatus};
use decide::{AfterLookup, Source};

crate::controller::runtime::framework::managed_namespaced!(
    VirtualMachineSnapshot,
    VirtualMachineSnapshotStatus
);

/// The VirtualMachineSnapshot kind, as the runtime runs it.
pub const WIRE: super::runtime::Wire =
    super::runtime::Wire::of::<VirtualMachineSnapshot>(wire::wire);

/// Event: the snapshot was requested from the vendor.
pub const SNAPSHOT_REQUESTED: &str = "SnapshotRequested";
/// Event and Stalled reason: the recorded snapshot is gone at the vendor.
pub const SNAPSHOT_GONE: &str = "SnapshotGone";
/// Event: deletion left the vendor's snapshot in place (`Retain`).
pub const SNAPSHOT_RETAINED: &str = "SnapshotRetained";

/// Reconciles VirtualMachineSnapshots.
pub struct VirtualMachineSnapshotReconciler;

/// How often an available snapshot's storage is billed (and so looked at) at least.
const METER_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Starts the storage meter of a snapshot that just became available: from the vendor's creation
/// time (vendors bill from then), else now.
fn start_meter(st: &mut VirtualMachineSnapshotStatus) {
    if st.state.as_deref() == Some("Available") && st.billed_until.is_none() {
        st.billed_until = Some(
            st.created_at
                .clone()
                .filter(|t| seconds(t).is_some())
                .unwrap_or_else(now),
        );
    }
}

fn seconds(t: &str) -> Option<i64> {
    t.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
}

/// Bills the snapshot's storage since `status.billedUntil` to its Project, through the ledger, before
/// status moves on (the key is the window's start; see the loop for a replay): whole hours
/// while it is kept, up to now at the end (`last`). Paused, stalled or deleting: what the vendor holds
/// is billed all the same. A vendor whose price is not known records the usage unpriced.
async fn meter(
    ctx: &Context,
    obj: &VirtualMachineSnapshot,
    status: &mut VirtualMachineSnapshotStatus,
    last: bool,
) -> Result<(), Error> {
    let (Some(mb), Some(pc), Some(ledger)) = (
        status.size_gigabytes.as_deref().and_then(decide::megabytes),
        status.provider_config.clone(),
        ctx.ledger.as_ref(),
    ) else {
        return Ok(());
    };
    let ns = obj.namespace().unwrap_or_default();
    let (resolved, _) = vendor::resolve_holding(ctx, &pc, &ns).await?;
    let provider = ctx.providers.compute(ctx, &resolved).await?;
    let price = provider.snapshot_price().map(|(p, currency)| {
        crate::ledger::metering::Price::with_markup(p, currency, resolved.config.spec.markup())
    });
    // Its monthly price at the size the vendor reports (it was admitted at an estimate).
    if let Some(p) = &price {
        let gb = rust_decimal::Decimal::from(mb) / rust_decimal::Decimal::from(1000);
        status.monthly_price = Some(crate::ledger::format_money((p.tenant * gb).normalize()));
        status.currency = Some(p.currency.clone());
    }
    // A window an earlier attempt recorded (a crash before its status write) stands as recorded: the
    // next one starts where it ended, so nothing is lost and nothing billed twice. A few passes at most.
    for _ in 0..3 {
        let Some(from) = status.billed_until.as_deref().and_then(seconds) else {
            return Ok(());
        };
        let now = jiff::Timestamp::now().as_second();
        let Some((start, end)) = decide::storage_window(from, now, last) else {
            return Ok(());
        };
        let event = storage_event(obj, status, mb, price.as_ref(), (start, end));
        ctx.record_usage(std::slice::from_ref(&event)).await?;
        let recorded_end = match ledger.held(&event.key).await? {
            Some((_, held_end)) => held_end,
            None => end,
        };
        status.billed_until = jiff::Timestamp::from_second(recorded_end)
            .ok()
            .map(|t| t.to_string());
    }
    Ok(())
}

/// A ledger row of `obj` with `meter`, billed to the Project its status names, keyed
/// `virtualmachinesnapshot/<uid>/<meter><suffix>`; quantities, prices and window left for the caller.
fn usage_event(
    obj: &VirtualMachineSnapshot,
    status: &VirtualMachineSnapshotStatus,
    meter: crate::ledger::Meter,
    suffix: &str,
) -> crate::ledger::UsageEvent {
    let uid = obj.uid().unwrap_or_default();
    crate::ledger::UsageEvent {
        key: format!("virtualmachinesnapshot/{uid}/{}{suffix}", meter.as_str()),
        namespace: obj.namespace().unwrap_or_default(),
        project: status.project.clone().unwrap_or_default(),
        project_uid: status.project_uid.clone().unwrap_or_default(),
        object_kind: "VirtualMachineSnapshot".into(),
        object_name: obj.name_any(),
        object_uid: uid,
        meter,
        quantity: 0,
        unit_price: Default::default(),
        vendor_unit_price: Default::default(),
        price_quantity: meter.info().priced_per,
        currency: String::new(),
        window_start: 0,
        window_end: 0,
        attributes: serde_json::json!({}),
    }
}

/// The ledger row of `mb` megabytes kept over `(start, end)`, keyed by the window's start.
fn storage_event(
    obj: &VirtualMachineSnapshot,
    status: &VirtualMachineSnapshotStatus,
    mb: i64,
    price: Option<&crate::ledger::metering::Price>,
    (start, end): (i64, i64),
) -> crate::ledger::UsageEvent {
    let meter = crate::ledger::Meter::SnapshotMbSeconds;
    let mut attributes = serde_json::json!({"sizeMB": mb, "snapshotID": status.snapshot_id});
    if price.is_none() {
        attributes["unpriced"] = true.into();
    }
    crate::ledger::UsageEvent {
        quantity: mb * (end - start),
        unit_price: price.map_or_else(Default::default, |p| p.tenant),
        vendor_unit_price: price.map_or_else(Default::default, |p| p.vendor),
        currency: price.map(|p| p.currency.clone()).unwrap_or_default(),
        window_start: start,
        window_end: end,
        attributes,
        ..usage_event(obj, status, meter, &format!("/{start}"))
    }
}

/// Whether `s` holds (or may hold) a snapshot in ProviderConfig `pc`: it was ever requested there.
pub fn holds(s: &VirtualMachineSnapshot, pc: &str) -> bool {
    s.status
        .as_ref()
        .is_some_and(|st| st.provider_config.as_deref() == Some(pc) && requested(st))
}

/// Whether a request was ever recorded (even one the vendor refused): the mark is looked up before any
/// new request and before deletion concludes there is nothing to delete.
fn requested(st: &VirtualMachineSnapshotStatus) -> bool {
    st.mark.is_some() || st.snapshot_id.is_some()
}

/// Whether the vendor's error proves nothing was made: it refused (4xx but 429), or the request could
/// not be sent at all. A timeout, an outage or an answer that could not be read proves nothing.
fn refused(e: &crate::cloud::CloudError) -> bool {
    use crate::cloud::CloudError;
    match e {
        CloudError::Unsupported(_) | CloudError::Credentials(_) => true,
        CloudError::Http(h) => h
            .status()
            .is_some_and(|s| (400..500).contains(&s) && s != 429),
    }
}

/// The recorded request's time, Unix seconds.
fn requested_at(st: &VirtualMachineSnapshotStatus) -> Option<i64> {
    st.requested_at
        .as_deref()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_second())
}

fn uid_of(obj: &VirtualMachineSnapshot) -> Result<String, Error> {
    obj.uid()
        .ok_or_else(|| Error::permanent(reason::INVALID_OBJECT, "object has no uid"))
}

/// The server the recorded request named, else the one the VirtualMachine holds now.
fn source(
    ctx: &Context,
    obj: &VirtualMachineSnapshot,
    st: &VirtualMachineSnapshotStatus,
) -> Result<Result<Source, Health>, Error> {
    if let (Some(server_id), Some(provider_config)) = (&st.server_id, &st.provider_config)
        && requested(st)
    {
        return Ok(Ok(Source {
            server_id: server_id.clone(),
            provider_config: provider_config.clone(),
            project: st
                .project
                .clone()
                .map(|p| (p, st.project_uid.clone().unwrap_or_default())),
        }));
    }
    let name = &obj.spec.virtual_machine_ref.name;
    let ns = obj.namespace().unwrap_or_default();
    let vm = ctx
        .caches()?
        .store::<VirtualMachine>()?
        .get(&ObjectRef::new(name).within(&ns));
    Ok(decide::source(vm.as_deref(), name))
}

/// Asks the vendor for the mark and records what it says; `None` when it must be requested (again).
async fn look_up(
    provider: &dyn ComputeProvider,
    src: &Source,
    mark: &str,
    status: &mut VirtualMachineSnapshotStatus,
    poll: std::time::Duration,
) -> Result<Option<Outcome>, Error> {
    let since = requested_at(status);
    let lookup = provider
        .find_snapshot(&src.server_id, mark, since.unwrap_or(0))
        .await
        .map_err(Error::vendor("look the snapshot up"))?;
    let now = jiff::Timestamp::now().as_second();
    Ok(
        match decide::after_lookup(lookup, status.snapshot_id.as_deref(), since, now) {
            AfterLookup::Record(s) => {
                let health = decide::record(status, s);
                start_meter(status);
                let waiting = matches!(health, Health::Progressing { .. });
                let o = Outcome::new(health);
                Some(if waiting {
                    o.requeue_after(poll)
                } else {
                    o.resync_at_most(METER_EVERY)
                })
            }
            AfterLookup::Wait => Some(
                Outcome::new(Health::progressing(
                    reason::PROGRESSING,
                    "the vendor is taking the snapshot (or its answer is not visible yet); looking again before any new request",
                ))
                .requeue_after(poll),
            ),
            AfterLookup::Gone => {
                status.state = Some("Missing".into());
                Some(Outcome::new(Health::stalled(
                    SNAPSHOT_GONE,
                    format!(
                        "snapshot {} is gone at the vendor (deleted outside Quartermaster); delete this object",
                        status.snapshot_id.as_deref().unwrap_or_default()
                    ),
                )))
            }
            AfterLookup::Request => None,
        },
    )
}

impl Reconciler<VirtualMachineSnapshot> for VirtualMachineSnapshotReconciler {
    fn account(obj: &VirtualMachineSnapshot) -> Option<String> {
        obj.status.as_ref().and_then(|s| s.provider_config.clone())
    }

    async fn apply(
        &self,
        obj: Arc<VirtualMachineSnapshot>,
        ctx: Arc<Context>,
        progress: &mut Progress<VirtualMachineSnapshotStatus>,
    ) -> Result<Outcome, Error> {
        let uid = uid_of(&obj)?;
        let vm_name = obj.spec.virtual_machine_ref.name.clone();
        // What the vendor holds is billed whatever else this reconcile finds (a stall included).
        start_meter(&mut progress.status);
        meter(&ctx, &obj, &mut progress.status, false).await?;
        let st = &progress.status;
        if !decide::same_source(st, &vm_name) {
            return Ok(Outcome::new(Health::stalled(
                reason::IMMUTABLE_FIELD_CHANGED,
                format!(
                    "spec.virtualMachineRef cannot change once the snapshot was requested (of {:?}); create another VirtualMachineSnapshot",
                    st.virtual_machine.as_deref().unwrap_or_default()
                ),
            ))
            .resync_at_most(METER_EVERY));
        }
        if st.state.as_deref() == Some("Available") && st.snapshot_id.is_some() {
            return Ok(Outcome::new(Health::ready("the snapshot is available"))
                .resync_at_most(METER_EVERY));
        }
        if let Some(refusal) = st
            .refusal
            .as_ref()
            .filter(|_| st.refused_generation == obj.metadata.generation)
        {
            // Refused for this generation: asked again only once the object changes.
            return Ok(Outcome::new(Health::stalled(
                reason::VENDOR_REJECTED,
                refusal.clone(),
            )));
        }
        let src = match source(&ctx, &obj, st)? {
            Ok(src) => src,
            Err(health) => {
                let o = Outcome::new(health);
                return Ok(o.requeue_after(ctx.config.poll_interval * 6));
            }
        };
        let ns = obj.namespace().unwrap_or_default();
        let (resolved, access_refused) = if requested(st) {
            vendor::resolve_holding(&ctx, &src.provider_config, &ns).await?
        } else {
            (
                vendor::resolve(&ctx, &src.provider_config, &ns).await?,
                None,
            )
        };
        let provider = ctx.providers.compute(&ctx, &resolved).await?;
        let mark = snapshot_mark(&uid);
        let poll = ctx.config.poll_interval;
        // The mark is looked up before every request, the first included: a lost answer is found, and
        // a snapshot the vendor is taking of the same server (another object's) is waited for.
        if let Some(outcome) = look_up(&*provider, &src, &mark, &mut progress.status, poll).await? {
            // Found available: its price follows the size the vendor reports from now on (it was
            // admitted at an estimate), in the same write, not at the next resync.
            meter(&ctx, &obj, &mut progress.status, false).await?;
            return Ok(outcome);
        }
        if let Some(why) = access_refused {
            return Err(Error::permanent(reason::PROVIDER_CONFIG_NOT_ALLOWED, why));
        }
        if resolved.config.spec.suspended {
            return Err(Error::Waiting {
                reason: reason::PROVIDER_CONFIG_SUSPENDED,
                message: format!(
                    "ProviderConfig {:?} is suspended; the snapshot is requested once it is not",
                    src.provider_config
                ),
            });
        }
        // Storage costs money from its first hour: admitted like any price first.
        let refused = admission::admit(
            &ctx,
            &obj,
            &src,
            &*provider,
            &resolved,
            &mut progress.status,
        );
        if let Some(outcome) = refused.await? {
            return Ok(outcome);
        }
        request(&ctx, &obj, &*provider, &src, &mark, progress).await
    }

    /// Paused: the storage the vendor holds is still billed, nothing else is done.
    async fn observe(
        &self,
        obj: Arc<VirtualMachineSnapshot>,
        ctx: Arc<Context>,
        progress: &mut Progress<VirtualMachineSnapshotStatus>,
    ) -> Result<Option<PausedOutcome>, Error> {
        start_meter(&mut progress.status);
        if progress.status.billed_until.is_none() {
            return Ok(None);
        }
        meter(&ctx, &obj, &mut progress.status, false).await?;
        Ok(Some(PausedOutcome {
            health: None,
            requeue_after: Some(METER_EVERY),
        }))
    }

    async fn cleanup(
        &self,
        obj: Arc<VirtualMachineSnapshot>,
        ctx: Arc<Context>,
        progress: &mut Progress<VirtualMachineSnapshotStatus>,
    ) -> Result<Cleanup, Error> {
        let st = &progress.status;
        let (Some(server_id), Some(provider_config)) =
            (st.server_id.clone(), st.provider_config.clone())
        else {
            return Ok(Cleanup::Done);
        };
        if !requested(st) {
            return Ok(Cleanup::Done);
        }
        // Released already (whatever the policy says now): the snapshot is the platform's.
        if retain::released_before(&ctx, &obj).await? {
            return Ok(Cleanup::Done);
        }
        let (server_id, provider_config) = (server_id.as_str(), provider_config.as_str());
        // Billed up to now: after this, the snapshot is deleted, or kept by the platform (Retain).
        meter(&ctx, &obj, &mut progress.status, true).await?;
        let st = &progress.status;
        let ns = obj.namespace().unwrap_or_default();
        let (resolved, _) = vendor::resolve_holding(&ctx, provider_config, &ns).await?;
        let provider = ctx.providers.compute(&ctx, &resolved).await?;
        // A request without a recorded ID (refused, or its answer lost) is looked up first: nothing
        // made is nothing to delete or release.
        let id = match &st.snapshot_id {
            Some(id) => id.clone(),
            None => match find_for_deletion(&*provider, &obj, server_id, st, &ctx).await? {
                Ok(id) => id,
                Err(cleanup) => return Ok(cleanup),
            },
        };
        if obj.spec.deletion_policy == SnapshotDeletionPolicy::Retain {
            progress.status.snapshot_id = Some(id);
            return retain::retain(&ctx, &obj, &progress.status, &resolved.config).await;
        }
        provider
            .delete_snapshot(server_id, &id)
            .await
            .map_err(Error::vendor("delete the snapshot"))?;
        Ok(Cleanup::Done)
    }
}

/// The snapshot a request without a recorded ID made, for deletion: its ID, or what cleanup waits for
/// (`Done` when nothing was made).
async fn find_for_deletion(
    provider: &dyn ComputeProvider,
    obj: &VirtualMachineSnapshot,
    server_id: &str,
    st: &VirtualMachineSnapshotStatus,
    ctx: &Context,
) -> Result<Result<String, Cleanup>, Error> {
    let mark = snapshot_mark(&uid_of(obj)?);
    let since = requested_at(st);
    let lookup = provider
        .find_snapshot(server_id, &mark, since.unwrap_or(0))
        .await
        .map_err(Error::vendor("look the snapshot up"))?;
    let now = jiff::Timestamp::now().as_second();
    Ok(match decide::after_lookup(lookup, None, since, now) {
        AfterLookup::Record(s) => Ok(s.id),
        AfterLookup::Request | AfterLookup::Gone => Err(Cleanup::Done),
        AfterLookup::Wait => Err(Cleanup::Wait {
            message: "the vendor is still taking the snapshot (or its answer is not visible yet); it is deleted once it can be".into(),
            requeue_after: ctx.config.poll_interval,
        }),
    })
}

/// Records the request, then asks the vendor for the snapshot (once: the call is never retried by the
/// client).
async fn request(
    ctx: &Context,
    obj: &VirtualMachineSnapshot,
    provider: &dyn ComputeProvider,
    src: &Source,
    mark: &str,
    progress: &mut Progress<VirtualMachineSnapshotStatus>,
) -> Result<Outcome, Error> {
    let st = &mut progress.status;
    st.virtual_machine = Some(obj.spec.virtual_machine_ref.name.clone());
    st.provider_config = Some(src.provider_config.clone());
    st.server_id = Some(src.server_id.clone());
    st.mark = Some(mark.to_string());
    st.project = src.project.as_ref().map(|p| p.0.clone());
    st.project_uid = src.project.as_ref().map(|p| p.1.clone());
    st.requested_at = Some(now());
    st.state = Some("Pending".into());
    st.refused_generation = None;
    st.refusal = None;
    persist(ctx, obj, progress).await?;
    match provider.create_snapshot(&src.server_id, mark).await {
        Ok(made) => {
            let note = format!(
                "snapshot of server {} requested at {}",
                src.server_id,
                provider.vendor()
            );
            publish(ctx, obj, EventType::Normal, SNAPSHOT_REQUESTED, &note).await;
            let health = match made {
                Some(s) => {
                    let h = decide::record(&mut progress.status, s);
                    start_meter(&mut progress.status);
                    // Available at once: priced at the vendor's size in this write (as after a lookup);
                    // a failure only leaves the estimate until the next reconcile.
                    if let Err(e) = meter(ctx, obj, &mut progress.status, false).await {
                        tracing::warn!(error = %e, "cannot price the new snapshot yet");
                    }
                    h
                }
                None => {
                    Health::progressing(reason::PROGRESSING, "the vendor is taking the snapshot")
                }
            };
            let o = Outcome::new(health);
            Ok(if matches!(o.health, Health::Progressing { .. }) {
                o.requeue_after(ctx.config.poll_interval)
            } else {
                o
            })
        }
        // The server is busy with another action (a power change): nothing was made, and nothing is
        // wrong with the request. It is withdrawn and asked again shortly, never a stall.
        Err(e) if provider.is_busy(&e) => {
            let st = &mut progress.status;
            st.requested_at = None;
            st.state = None;
            let message = format!(
                "server {} is busy with another action ({e}); the snapshot is asked again shortly",
                src.server_id
            );
            Ok(Outcome::new(Health::progressing(reason::RETRYING, message))
                .requeue_after(ctx.config.poll_interval * 6))
        }
        // A refusal proves nothing was made: the request is withdrawn (the mark stays recorded, so it is
        // still looked up first) and not sent again for this generation.
        Err(e) if refused(&e) => {
            let e = Error::vendor("take the snapshot")(e);
            let st = &mut progress.status;
            st.requested_at = None;
            st.state = None;
            st.refused_generation = obj.metadata.generation;
            st.refusal = Some(e.to_string());
            Err(e)
        }
        // The answer may be lost (or unreadable): the request stays recorded, and the next attempt
        // looks it up first.
        Err(e) => Err(Error::vendor("take the snapshot")(e)),
    }
}

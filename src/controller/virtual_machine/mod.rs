//! VirtualMachine reconciler, a pipeline: [`read`] (ProviderConfig, vendor server, catalog, Projects) →
//! [`decide`] (pure: next status, one vendor step, health) → [`act`] (usage, the vendor step, the
//! connection Secret). [`build`] is the pure piece decide and act use; what the VM's Project admits
//! and whether its credit stops the VM, the VM asks the Project ([`crate::controller::project::policy`]).
//!
//! # Guarantees
//! - **Create exactly once.** Before the vendor's create is called, the creation intent (key = the
//!   object's UID, account, Project) is persisted — in the `quartermaster.dev/creation-intent` annotation,
//!   in the same write as the finalizer, guarded by `resourceVersion` so a stale cached copy cannot pass —
//!   and the vendor object is tagged `quartermaster-uid-<uid>`. The status written after the create
//!   holds the same facts (`status.creationKey`, `providerConfig`, `project`). Every reconcile without a
//!   recorded `externalID` first looks the tag up (twice, a moment apart, when intent exists); so a crash
//!   anywhere finds the server instead of creating a second one. Status is never rolled back (see the
//!   framework), so recorded intent survives any later error.
//! - **Ownership.** Only servers carrying this VM's tag are acted on, or untagged ones the ProviderConfig
//!   lets this namespace adopt (they are tagged first). Another object's server is never touched.
//! - `runStrategy` is only read, never rewritten. `ObserveOnly` never calls a mutating vendor API.
//! - One reboot per distinct `quartermaster.dev/restart-requested-at` value.
//! - Deletion (policy Delete) deletes every vendor server carrying the UID tag — in the account the
//!   server was created in — and waits until the vendor reports them gone. Orphan leaves them running
//!   and removes the UID tag (so they can be adopted again), only where the ProviderConfig allows
//!   releases; ObserveOnly leaves an adopted server untouched but cannot release one the VM created
//!   ([`release`]). A VM that may ever have reached the create call is always looked up by tag before
//!   cleanup concludes there is nothing to delete.

pub mod act;
pub mod build;
pub mod decide;
pub mod observe;
pub mod project_vpc;
pub mod read;
pub mod release;
pub mod restore;
pub mod traffic;
pub mod transfer;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use super::runtime::framework::{
    Cleanup, Outcome, PausedOutcome, Progress, Reconciler, persist, publish,
};
use super::{Context, Error};
use crate::cloud;
use crate::crd::conditions::{Health, event, reason};
use crate::crd::virtual_machine::{CreationIntent, VirtualMachineStatus};
use crate::crd::{ANNOTATION_EXTERNAL_ID, FINALIZER, VirtualMachine};
use crate::ledger::metering;

pub use build::connection_secret_name;
pub use wire::wire;

/// The VirtualMachine kind, as the runtime runs it.
pub const WIRE: crate::controller::runtime::Wire =
    crate::controller::runtime::Wire::of::<VirtualMachine>(wire);

crate::controller::runtime::framework::managed_namespaced!(VirtualMachine, VirtualMachineStatus);
pub use decide::{Decision, Inputs, Lookup, Step, decide};

/// How often deletion looks again while the vendor keeps a cancelled server until a later date
/// (Contabo: the end of the paid period).
pub const SCHEDULED_DELETION_POLL: Duration = Duration::from_secs(3600);

/// The VirtualMachine reconciler.
pub struct VirtualMachineReconciler;

fn uid_of(vm: &VirtualMachine) -> Result<String, Error> {
    vm.uid()
        .ok_or_else(|| Error::permanent(reason::INVALID_OBJECT, "object has no uid"))
}

/// read → decide → act. After a create, the server is read once more at once: many vendors (and the
/// simulator without delays) report a new server running within the same second, and then the same
/// reconcile goes on to Ready (connection Secret, metering) instead of waiting for the next poll, which
/// saves a status write and a poll per VM.
async fn converge(
    ctx: &Arc<Context>,
    vm: &VirtualMachine,
    uid: &str,
    progress: &mut Progress<VirtualMachineStatus>,
    events: &mut Vec<(&'static str, String)>,
) -> Result<Outcome, Error> {
    let mut obs = read::read(ctx, vm, uid, &progress.status).await?;
    let (outcome, step) = decide_and_act(ctx, vm, uid, &obs, progress, events).await?;
    let Some(id) = progress
        .status
        .external_id
        .clone()
        .filter(|_| step == Step::Create)
    else {
        return Ok(outcome);
    };
    match obs.provider.get(&id).await {
        Ok(Some(s)) if s.state == cloud::ServerState::Running => {
            obs.lookup = Lookup::Found(s);
            // The create wrote our finalizer (with the intent); the cached copy does not show it yet.
            let mut vm = vm.clone();
            let finalizers = vm.meta_mut().finalizers.get_or_insert_with(Vec::new);
            if !finalizers.iter().any(|f| f == FINALIZER) {
                finalizers.push(FINALIZER.to_string());
            }
            Ok(decide_and_act(ctx, &vm, uid, &obs, progress, events)
                .await?
                .0)
        }
        // Not running yet (or not listed yet): the next poll looks again.
        Ok(_) => Ok(outcome),
        Err(e) => {
            tracing::debug!(vm = %vm.name_any(), error = %e, "reading a new server failed; the next poll looks again");
            Ok(outcome)
        }
    }
}

/// One decide → act over what was observed; also says which vendor step was taken.
async fn decide_and_act(
    ctx: &Arc<Context>,
    vm: &VirtualMachine,
    uid: &str,
    obs: &read::Observed,
    progress: &mut Progress<VirtualMachineStatus>,
    events: &mut Vec<(&'static str, String)>,
) -> Result<(Outcome, Step), Error> {
    let d = decide(&inputs(ctx, vm, uid, obs, &progress.status));
    let step = d.step.clone();
    Ok((
        act::act(ctx, vm, uid, obs, d, progress, events).await?,
        step,
    ))
}

/// decide's inputs from what was read; notes a sighting of the server.
fn inputs<'a>(
    ctx: &Context,
    vm: &'a VirtualMachine,
    uid: &'a str,
    obs: &'a read::Observed,
    status: &'a VirtualMachineStatus,
) -> Inputs<'a> {
    let now = jiff::Timestamp::now().as_second();
    let sightings = ctx.state::<observe::Sightings>();
    if let Lookup::Found(_) = obs.lookup {
        sightings.saw(uid, now);
    }
    Inputs {
        vm,
        uid,
        status,
        lookup: &obs.lookup,
        catalog: obs.catalog.as_deref(),
        target: &obs.target,
        billed: obs.billed.as_ref(),
        adoption_allowed: obs.adoption_allowed,
        resize_needs_power_off: obs.provider.resize_needs_power_off(),
        resize_rule: obs.provider.resize_rule(),
        vendor: obs.provider.vendor(),
        metering: ctx.ledger.is_some(),
        last_seen: sightings.last_seen(uid),
        markup_percent: obs.resolved.config.spec.markup(),
        suspended: obs.resolved.config.spec.suspended,
        require_project: obs.resolved.config.spec.require_project,
        access_refused: obs.access_refused.as_deref(),
        restore: &obs.restore,
        now,
    }
}

/// Publishes the Events a reconcile gathered. A server created and already running in the same
/// reconcile gets one Event, not two: `Created` says that it is Ready too, and the framework publishes
/// no separate transition Event (at 10,000 VMs that is 10,000 writes fewer).
async fn announce(
    ctx: &Context,
    vm: &VirtualMachine,
    result: &mut Result<Outcome, Error>,
    events: Vec<(&'static str, String)>,
) {
    for (reason, mut note) in events {
        if reason == event::CREATED
            && let Ok(outcome) = result.as_mut()
            && let Health::Ready { message, .. } = &outcome.health
        {
            note = format!("{note}; ready: {message}");
            outcome.announced = true;
        }
        let type_ = if reason == event::RECREATING {
            EventType::Warning
        } else {
            EventType::Normal
        };
        publish(ctx, vm, type_, reason, &note).await;
    }
}

impl Reconciler<VirtualMachine> for VirtualMachineReconciler {
    /// The account the server is in (`status.providerConfig`), else the one the spec names.
    fn account(vm: &VirtualMachine) -> Option<String> {
        let recorded = vm.status.as_ref().and_then(|s| s.provider_config.clone());
        Some(recorded.unwrap_or_else(|| vm.spec.provider_config_ref.name.clone()))
    }

    /// Added in act, in the same write as the creation intent (or alone before any other side effect):
    /// a new VM costs two writes of its own before the vendor is called, not three.
    const ADDS_FINALIZER: bool = true;

    async fn apply(
        &self,
        vm: Arc<VirtualMachine>,
        ctx: Arc<Context>,
        progress: &mut Progress<VirtualMachineStatus>,
    ) -> Result<Outcome, Error> {
        let uid = uid_of(&vm)?;
        CreationIntent::fill(&vm, &mut progress.status);
        let mut events = Vec::new();
        // A refusal of the credentials reaches the ProviderConfig through the framework (`account`).
        let mut result = converge(&ctx, &vm, &uid, progress, &mut events).await;
        announce(&ctx, &vm, &mut result, events).await;
        // A restore in place is asked of a settled VM only (its server exists and is not busy).
        if matches!(&result, Ok(o) if matches!(o.health, Health::Ready { .. })) {
            restore::requested(&ctx, &vm, progress).await?;
        }
        // Whatever the spec's step came to, the server's transfer is metered.
        let metered = transfer::meter(&ctx, &vm, &uid, progress).await;
        let outcome = result?;
        metered?;
        Ok(outcome)
    }

    /// Paused: the server is still observed and metered, and stopped under a credit stop; nothing the
    /// spec asks for is done.
    async fn observe(
        &self,
        vm: Arc<VirtualMachine>,
        ctx: Arc<Context>,
        progress: &mut Progress<VirtualMachineStatus>,
    ) -> Result<Option<PausedOutcome>, Error> {
        let uid = uid_of(&vm)?;
        CreationIntent::fill(&vm, &mut progress.status);
        let st = &progress.status;
        if st.external_id.is_none()
            && st.creation_key.is_none()
            && !vm.annotations().contains_key(ANNOTATION_EXTERNAL_ID)
        {
            return Ok(None);
        }
        let mut events = Vec::new();
        let obs = read::read(&ctx, &vm, &uid, &progress.status).await?;
        let d = decide::observe(&inputs(&ctx, &vm, &uid, &obs, &progress.status));
        let mut result = act::act(&ctx, &vm, &uid, &obs, d, progress, &mut events).await;
        announce(&ctx, &vm, &mut result, events).await;
        transfer::meter(&ctx, &vm, &uid, progress).await?;
        Ok(Some(PausedOutcome {
            health: None,
            requeue_after: result?.resync_at_most,
        }))
    }

    /// Deletes (or releases) the vendor server, then settles metering: billing runs while a server of
    /// this VM still exists at the vendor (being deleted, or kept until a cancellation date) and ends
    /// with the last of them.
    async fn cleanup(
        &self,
        vm: Arc<VirtualMachine>,
        ctx: Arc<Context>,
        progress: &mut Progress<VirtualMachineStatus>,
    ) -> Result<Cleanup, Error> {
        let uid = uid_of(&vm)?;
        CreationIntent::fill(&vm, &mut progress.status);
        // The server's transfer up to now is read once more and billed before the server goes.
        transfer::read_before_release(&ctx, &vm, &uid, &progress.status).await?;
        transfer::meter(&ctx, &vm, &uid, progress).await?;
        let released = release::release(&ctx, &vm, &uid, &progress.status).await;
        settle(
            &ctx,
            &vm,
            &uid,
            progress,
            matches!(released, Ok(Cleanup::Done)),
        )
        .await?;
        released
    }
}

/// Advances the open metering window of a VM being deleted: whole hours while its server exists
/// (`ended` false), everything up to now once nothing is left to bill. Usage is recorded before the
/// window advances in status (retried until the ledger takes it).
async fn settle(
    ctx: &Arc<Context>,
    vm: &Arc<VirtualMachine>,
    uid: &str,
    progress: &mut Progress<VirtualMachineStatus>,
    ended: bool,
) -> Result<(), Error> {
    let Some(open) = progress
        .status
        .metering
        .as_ref()
        .and_then(decide::open_window)
        .filter(|_| ctx.ledger.is_some())
    else {
        return Ok(());
    };
    let obs = metering::Observation {
        billed: !ended,
        size: open.size.clone(),
        price: open.price.clone(),
    };
    let subject = decide::subject(vm, uid, &progress.status);
    let now = jiff::Timestamp::now().as_second();
    let step = metering::step(&subject, Some(&open), &obs, now, ended);
    if step.events.is_empty() && step.open.as_ref() == Some(&open) {
        return Ok(());
    }
    if let Err(e) = ctx.record_usage(&step.events).await {
        ctx.set_pending_usage(uid, step.events.len());
        return Err(e.into());
    }
    ctx.set_pending_usage(uid, 0);
    progress.status.metering = step.open.map(decide::stored_window);
    persist(ctx, &**vm, progress).await
}

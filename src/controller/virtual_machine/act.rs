//! The act step: carry out a [`Decision`] — record usage, take the one vendor step (create exactly once,
//! adopt, power, resize), write the connection Secret — updating the working status as facts arrive.
//!
//! # Guarantees
//! - Intent (creation key, account, Project: the `quartermaster.dev/creation-intent` annotation, written
//!   with the finalizer) is persisted before the vendor's create is called, and the ID the vendor answers with goes into the working status at once, so an
//!   error in any later step still records it.
//! - `status.metering` advances only once the ledger accepted the closed windows.
//! - A restart request is acknowledged only when the reboot call succeeded.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};

use kube::runtime::reflector::ObjectRef;

use super::build;
use super::decide::{Decision, Lookup, ProjectLookup, Restore, Step};
use super::read::Observed;
use crate::cloud::{self, CloudError, PowerAction, Server};
use crate::controller::project::policy as limits;
use crate::controller::runtime::framework::{FIELD_MANAGER, Outcome, Progress, mark};
use crate::controller::runtime::owned_secret::owned_secret;
use crate::controller::{Context, Error};
use crate::crd::conditions::{Health, event, reason};
use crate::crd::virtual_machine::{CreationIntent, ResizeRefusal, VirtualMachineStatus};
use crate::crd::{
    ANNOTATION_CREATION_INTENT, ANNOTATION_RESTART_REQUESTED_AT, LocalObjectReference,
    VirtualMachine,
};

/// Carries out `d`; the working status in `progress` ends as the decided status plus what the vendor said.
/// The Events to publish are added to `events` as they happen, so an error in a later step loses none
/// (the caller publishes them).
pub async fn act(
    ctx: &Arc<Context>,
    vm: &VirtualMachine,
    uid: &str,
    obs: &Observed,
    d: Decision,
    progress: &mut Progress<VirtualMachineStatus>,
    events: &mut Vec<(&'static str, String)>,
) -> Result<Outcome, Error> {
    if let Some(refused) = reserve(ctx, vm, obs, &d, &progress.status)? {
        return Ok(Outcome::new(refused));
    }
    begin(ctx, vm, uid, obs, &d, progress, events).await?;
    let p = &*obs.provider;
    let mut server = match &obs.lookup {
        Lookup::Found(s) => Some(s.clone()),
        _ => None,
    };
    // A Secret that holds a password is read live when the cache does not have it yet, so an older
    // copy never writes it back without one.
    let windows = vm.spec.os == crate::crd::virtual_machine::OperatingSystem::Windows;
    let existing = if d.expose || d.step == Step::Create {
        connection_secret(ctx, vm, p.accepts_root_password(windows) || windows).await?
    } else {
        None
    };
    let unwritten = ctx.state::<UnwrittenPasswords>();
    let mut password = secret_value(existing.as_deref(), "password").or_else(|| unwritten.get(uid));
    match &d.step {
        Step::Create => {
            if p.accepts_root_password(windows) && password.is_none() {
                password = Some(new_password(ctx, vm, existing.as_deref()).await?);
            }
            let with_password = password
                .clone()
                .filter(|_| p.accepts_root_password(windows));
            let made = create(ctx, vm, uid, obs, &d, with_password, progress, events).await?;
            // A Windows server's administrator password the vendor generated (Vultr): shown in the
            // create's answer only, so it goes to the connection Secret now.
            if password.is_none() && windows {
                password = made.initial_password.as_ref().map(|p| p.0.clone());
                if let Some(pw) = password.as_deref() {
                    // Kept in memory until the Secret holds it: a failed write is tried again.
                    unwritten.keep(uid, pw);
                    apply_connection_secret(
                        ctx,
                        vm,
                        existing.as_deref(),
                        build::connection_data(vm, None, Some(pw)),
                    )
                    .await?;
                    unwritten.forget_password(uid);
                }
            }
            server = Some(made);
        }
        Step::Adopt => {
            let id = server.as_ref().map(|s| s.id.as_str()).unwrap_or_default();
            adopt(p, id, uid).await?;
        }
        Step::PowerOn | Step::PowerOff | Step::Reboot | Step::Resize(_) => {
            let (id, size) = server
                .as_ref()
                .map(|s| (s.id.clone(), s.size.clone()))
                .unwrap_or_default();
            if let Some(health) =
                power_or_resize(vm, p, &d.step, &id, &size, progress, events).await?
            {
                let mut outcome = Outcome::new(health);
                outcome.requeue_after = Some(super::decide::RESIZE_REFUSED_POLL);
                return Ok(outcome);
            }
        }
        Step::Wait | Step::Nothing => {}
    }

    // Only a server decide found to be this VM's, converging (not paused, stalled or refused), in an
    // account that may be changed, under a VM that may act on it.
    let may_act = d.expose
        && vm.spec.management_policy == crate::crd::virtual_machine::ManagementPolicy::Full
        && !obs.resolved.config.spec.suspended;
    if let Some(s) = server.as_ref().filter(|_| may_act) {
        attach_firewall(vm, obs, s, progress).await?;
    }
    // The server's addresses go out once it runs (`expose`); a password chosen for the create was
    // written before it.
    if d.expose
        && let Some(s) = &server
    {
        expose(
            ctx,
            vm,
            s,
            existing.as_deref(),
            password.as_deref(),
            progress,
        )
        .await?;
        // The Secret holds it now.
        unwritten.forget_password(uid);
    }
    let mut outcome = Outcome::new(d.health);
    outcome.requeue_after = d.requeue_after;
    outcome.resync_at_most = d.resync_at_most;
    Ok(outcome)
}

/// Vendor-generated passwords not yet in their VM's connection Secret (a write that failed), by VM UID:
/// the next reconcile writes them (memory only: a crash before then loses one; see the README).
#[derive(Default)]
pub struct UnwrittenPasswords(std::sync::Mutex<std::collections::HashMap<String, String>>);

impl UnwrittenPasswords {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn get(&self, uid: &str) -> Option<String> {
        self.lock().get(uid).cloned()
    }
    fn keep(&self, uid: &str, password: &str) {
        self.lock().insert(uid.to_string(), password.to_string());
    }
    fn forget_password(&self, uid: &str) {
        self.lock().remove(uid);
    }
}

impl crate::controller::runtime::state::KindState for UnwrittenPasswords {
    fn forget(&self, _key: &str, uid: Option<&str>) {
        if let Some(uid) = uid {
            self.forget_password(uid);
        }
    }
}

/// Adds the server to `spec.firewallID` where the vendor attaches firewalls after the create
/// (DigitalOcean), once, as the other vendors take it at create only: recorded in `status.firewallID`.
/// The ProviderConfig must grant it to the namespace (checked again here); a refusal stalls with the
/// vendor's words; an outage is tried again.
async fn attach_firewall(
    vm: &VirtualMachine,
    obs: &Observed,
    server: &Server,
    progress: &mut Progress<VirtualMachineStatus>,
) -> Result<(), Error> {
    let p = &*obs.provider;
    let Some(fw) = vm.spec.firewall_id.as_deref() else {
        return Ok(());
    };
    if !p.firewall_after_create() || progress.status.firewall_id.is_some() {
        return Ok(());
    }
    let asked = cloud::ServerOptions {
        firewall_id: Some(fw.to_string()),
        ..Default::default()
    };
    let ns = vm.namespace().unwrap_or_default();
    crate::controller::vendor::vendor_resources_granted(&obs.resolved.config, &ns, &asked)
        .map_err(|m| Error::permanent(reason::PROVIDER_CONFIG_NOT_ALLOWED, m))?;
    p.attach_firewall(&server.id, fw)
        .await
        .map_err(Error::vendor("add the server to its firewall"))?;
    progress.status.firewall_id = Some(fw.to_string());
    Ok(())
}

/// What every acting reconcile does first: the finalizer when this reconcile may touch the vendor or
/// bill, the decided status as the working one, and the usage the decision closed.
async fn begin(
    ctx: &Arc<Context>,
    vm: &VirtualMachine,
    uid: &str,
    obs: &Observed,
    d: &Decision,
    progress: &mut Progress<VirtualMachineStatus>,
    events: &mut Vec<(&'static str, String)>,
) -> Result<(), Error> {
    let before = progress.status.clone();
    // Cleanup must run for anything this reconcile may do at the vendor or bill: the finalizer first
    // (a create adds it together with its intent).
    let side_effects = matches!(obs.lookup, Lookup::Found(_))
        || !matches!(d.step, Step::Wait | Step::Nothing | Step::Create);
    if side_effects {
        mark(
            ctx,
            vm,
            &[],
            Some(&ctx.state::<crate::controller::runtime::wake::Memo<VirtualMachine>>()),
        )
        .await?;
    }
    // A create's facts (creation key, region, image, account, Project, phase) say a server may exist, so
    // they join the working status only once the intent is recorded (in `create`): an error before that
    // (an intent write that conflicts with a concurrent edit, a failed password Secret, a missing
    // user-data key) records none of them, and the next reconcile neither looks twice nor finds fields
    // "immutable". (A create has no usage to record.)
    if d.step != Step::Create {
        progress.status = d.status.clone();
    }
    events.extend(record_usage(ctx, vm, uid, d, &before, progress).await);
    Ok(())
}

/// A root password for a create, written to the connection Secret before the server exists.
async fn new_password(
    ctx: &Context,
    vm: &VirtualMachine,
    existing: Option<&Secret>,
) -> Result<String, Error> {
    let generated = cloud::generate_password();
    apply_connection_secret(
        ctx,
        vm,
        existing,
        build::connection_data(vm, None, Some(&generated)),
    )
    .await?;
    Ok(generated)
}

/// Tags an adopted server with this VM's ownership tag.
async fn adopt(p: &dyn cloud::ComputeProvider, id: &str, uid: &str) -> Result<(), Error> {
    match p.add_tag(id, &cloud::uid_tag(uid)).await {
        Ok(()) => Ok(()),
        Err(CloudError::Unsupported(m)) => Err(Error::permanent(reason::UNSUPPORTED, m)),
        Err(e) => Err(Error::vendor("tag the adopted server")(e)),
    }
}

/// Writes the connection Secret with the server's addresses (and the password, if one was chosen) and
/// records it in status.
async fn expose(
    ctx: &Context,
    vm: &VirtualMachine,
    server: &Server,
    existing: Option<&Secret>,
    password: Option<&str>,
    progress: &mut Progress<VirtualMachineStatus>,
) -> Result<(), Error> {
    apply_connection_secret(
        ctx,
        vm,
        existing,
        build::connection_data(vm, Some(server), password),
    )
    .await?;
    progress.status.connection_secret_ref = Some(LocalObjectReference {
        name: build::connection_secret_name(vm),
    });
    Ok(())
}

/// Records the closed metering windows; returns the decision's Events to publish. If the ledger does
/// not take them, the window stays open in status (and the VM with its former Project, so its move is not
/// announced yet): the next reconcile records them. Power and size go on either way.
async fn record_usage(
    ctx: &Context,
    vm: &VirtualMachine,
    uid: &str,
    d: &Decision,
    before: &VirtualMachineStatus,
    progress: &mut Progress<VirtualMachineStatus>,
) -> Vec<(&'static str, String)> {
    let mut decided = d.events.clone();
    if d.usage.is_empty() {
        return decided;
    }
    if let Err(e) = ctx.record_usage(&d.usage).await {
        ctx.set_pending_usage(uid, d.usage.len());
        tracing::warn!(vm = %vm.name_any(), error = %e, "usage not recorded yet; will retry");
        progress.status.metering = before.metering.clone();
        progress.status.project = before.project.clone();
        progress.status.project_uid = before.project_uid.clone();
        decided.retain(|(r, _)| *r != event::PROJECT_CHANGED);
    } else {
        ctx.set_pending_usage(uid, 0);
    }
    decided
}

/// Creates the server, exactly once: user data is read (and checked) first, then the intent is
/// recorded with the finalizer, then the vendor's create is called; the ID it answers with goes into the
/// working status at once.
#[allow(clippy::too_many_arguments)]
async fn create(
    ctx: &Arc<Context>,
    vm: &VirtualMachine,
    uid: &str,
    obs: &Observed,
    d: &Decision,
    root_password: Option<String>,
    progress: &mut Progress<VirtualMachineStatus>,
    events: &mut Vec<(&'static str, String)>,
) -> Result<Server, Error> {
    let p = &*obs.provider;
    let user_data = user_data(ctx, vm, p.user_data_limit(), p.vendor()).await?;
    let mut spec = build::server_spec(vm, uid, user_data, root_password);
    if let Some(s) = &vm.spec.stack_script {
        spec.options.stack_script = Some((s.id, stack_script_data(ctx, vm).await?));
    }
    if let Restore::Image(image) = &obs.restore {
        spec.image = image.clone();
    }
    // What the vendor cannot honour is refused before any create (and before intent is recorded).
    let refuse = |spec: &cloud::ServerSpec| {
        p.refuse_unsupported(spec)
            .map_err(|m| Error::permanent(reason::INVALID_SPEC, m))
    };
    refuse(&spec)?;
    // The named VPC, firewall and StackScript must be granted; the Project's own VPC needs no grant.
    let ns = vm.namespace().unwrap_or_default();
    crate::controller::vendor::vendor_resources_granted(&obs.resolved.config, &ns, &spec.options)
        .map_err(|m| Error::permanent(reason::PROVIDER_CONFIG_NOT_ALLOWED, m))?;
    if let Some(id) = super::project_vpc::vpc_id(ctx, vm, &obs.resolved.config.name_any())? {
        spec.options.vpc_id = Some(id);
        refuse(&spec)?;
    }
    // What only the vendor can check (a Linode subnet of the VPC), still before the intent.
    p.check_create(&spec).await.map_err(|e| match e {
        CloudError::Unsupported(m) => Error::permanent(reason::INVALID_SPEC, m),
        e => Error::vendor("check the create's options")(e),
    })?;
    record_intent(ctx, vm, uid, &d.status).await?;
    progress.status = d.status.clone();
    progress.status.created_with = Some(crate::crd::virtual_machine::CreatedOptions {
        vpc_id: spec.options.vpc_id.clone(),
        subnet_id: vm.spec.subnet_id.clone(),
        project_vpc: vm.spec.project_vpc,
        monitoring: vm.spec.monitoring,
        stack_script_id: vm.spec.stack_script.as_ref().map(|s| s.id),
    });
    if matches!(obs.lookup, Lookup::Absent { after_intent: true }) {
        ctx.metrics.recreates_after_intent.inc();
        events.push((
            event::RECREATING,
            "intent was recorded but no server carries this VM's tag (looked twice): the earlier create did not reach the vendor; creating".into(),
        ));
    }
    let created = p
        .create(&spec)
        .await
        .map_err(Error::vendor("create the server"))?;
    progress.status.external_id = Some(created.id.clone());
    events.push((
        event::CREATED,
        format!(
            "created {} server {} ({} in {})",
            p.vendor(),
            created.id,
            spec.size,
            spec.region
        ),
    ));
    Ok(created)
}

/// The VM's user data, refused (Stalled `InvalidSpec`, before any vendor call) when it is larger than
/// the vendor accepts.
async fn user_data(
    ctx: &Context,
    vm: &VirtualMachine,
    limit: Option<usize>,
    vendor: &str,
) -> Result<Option<String>, Error> {
    let Some(u) = &vm.spec.user_data_secret_ref else {
        return Ok(None);
    };
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &vm.namespace().unwrap_or_default());
    let s = api
        .get_opt(&u.name)
        .await
        .map_err(Error::kube("reading the user data secret"))?;
    let data = secret_value(s.as_ref(), &u.key).ok_or_else(|| {
        Error::permanent(reason::MISSING_SECRET, missing_user_data(s.is_some(), u))
    })?;
    build::check_user_data(&data, limit, vendor).map_err(|m| {
        Error::permanent(
            reason::INVALID_SPEC,
            format!("user data secret {:?} key {:?}: {m}", u.name, u.key),
        )
    })?;
    Ok(Some(data))
}

/// The StackScript's user-defined fields from the Secret `spec.stackScript.dataSecretRef` names: a JSON
/// object (none: no fields).
async fn stack_script_data(ctx: &Context, vm: &VirtualMachine) -> Result<serde_json::Value, Error> {
    let Some(r) = vm
        .spec
        .stack_script
        .as_ref()
        .and_then(|s| s.data_secret_ref.as_ref())
    else {
        return Ok(serde_json::json!({}));
    };
    let ns = vm.namespace().unwrap_or_default();
    let s = Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&r.name)
        .await
        .map_err(Error::kube("reading the StackScript data secret"))?;
    let raw = secret_value(s.as_ref(), &r.key).ok_or_else(|| {
        Error::permanent(
            reason::MISSING_SECRET,
            format!(
                "StackScript data secret {:?} key {:?} not found",
                r.name, r.key
            ),
        )
    })?;
    match serde_json::from_str::<serde_json::Value>(&raw) {
        Ok(v @ serde_json::Value::Object(_)) => Ok(v),
        // NB: the value may hold passwords: never quoted.
        _ => Err(Error::permanent(
            reason::INVALID_SPEC,
            format!(
                "StackScript data secret {:?} key {:?} must hold a JSON object of the StackScript's fields",
                r.name, r.key
            ),
        )),
    }
}

/// Why the user data cannot be read: the Secret is missing, or it lacks the key.
fn missing_user_data(secret_exists: bool, u: &crate::crd::LocalSecretKeyReference) -> String {
    if secret_exists {
        format!("user data secret {:?} has no key {:?}", u.name, u.key)
    } else {
        format!("user data secret {:?} does not exist", u.name)
    }
}

/// Reserves the VM's slot in the Project decide admitted it to (re-checking the limit atomically with
/// every other admission, see [`crate::controller::project::members`]), before the status naming that Project is
/// written. `Some(health)` when the slot went to another VM meanwhile.
fn reserve(
    ctx: &Context,
    vm: &VirtualMachine,
    obs: &Observed,
    d: &Decision,
    before: &VirtualMachineStatus,
) -> Result<Option<Health>, Error> {
    let (Some((project, me)), ProjectLookup::Found(p)) = (&d.admission, &obs.target) else {
        return Ok(None);
    };
    if before.project.as_deref() == Some(project.as_str()) {
        return Ok(None);
    }
    let ns = vm.namespace().unwrap_or_default();
    let result = ctx
        .state::<crate::controller::project::members::MemberIndex>()
        .reserve(
            &ns,
            project,
            &ObjectRef::from_obj(vm),
            &me.order,
            &p.currency,
            |occupancy| {
                let mut now = p.clone();
                now.occupancy = occupancy.clone();
                limits::admit(&now, me)
            },
        );
    Ok(result.err().map(|(r, m)| Health::stalled(r, m)))
}

/// Records the creation intent (and the finalizer) in one write before the vendor's create; nothing is
/// written when the same intent is already recorded (a retry after the lookup found nothing, twice).
async fn record_intent(
    ctx: &Context,
    vm: &VirtualMachine,
    uid: &str,
    status: &VirtualMachineStatus,
) -> Result<(), Error> {
    let intent = CreationIntent {
        creation_key: uid.to_string(),
        provider_config: status
            .provider_config
            .clone()
            .unwrap_or_else(|| vm.spec.provider_config_ref.name.clone()),
        project: status.project.clone(),
    };
    mark(
        ctx,
        vm,
        &[(ANNOTATION_CREATION_INTENT, intent.to_annotation())],
        Some(&ctx.state::<crate::controller::runtime::wake::Memo<VirtualMachine>>()),
    )
    .await
}

/// The connection Secret, from the watch cache. When the vendor takes a root password (which lives only
/// in that Secret) and the cache has not seen it, the API server is asked, so a cache that lags our own
/// write can never make a later write drop the password.
async fn connection_secret(
    ctx: &Context,
    vm: &VirtualMachine,
    holds_password: bool,
) -> Result<Option<Arc<Secret>>, Error> {
    let ns = vm.namespace().unwrap_or_default();
    let name = build::connection_secret_name(vm);
    if let Some(s) = ctx
        .caches()?
        .store::<k8s_openapi::api::core::v1::Secret>()?
        .get(&ObjectRef::new(&name).within(&ns))
    {
        return Ok(Some(s));
    }
    if !holds_password {
        return Ok(None);
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    Ok(api
        .get_opt(&name)
        .await
        .map_err(Error::kube("reading the connection secret"))?
        .map(Arc::new))
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
    let name = build::connection_secret_name(vm);
    let secret = owned_secret(vm, &name, bytes)?;
    let mut v = serde_json::to_value(&secret)
        .map_err(|e| Error::permanent(reason::INVALID_OBJECT, e.to_string()))?;
    v["apiVersion"] = "v1".into();
    v["kind"] = "Secret".into();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &vm.namespace().unwrap_or_default());
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&v),
    )
    .await
    .map_err(Error::kube("writing the connection secret"))?;
    Ok(())
}

/// The servers that are this VM's among `servers` (its tag and a second fact agree: see
/// [`super::decide::ownership`]); cleanup deletes or releases only those.
pub fn owned<'a>(
    servers: &'a [Server],
    uid: &'a str,
    recorded: &'a [&'a str],
) -> impl Iterator<Item = &'a Server> {
    servers.iter().filter(move |s| {
        super::decide::ownership(s, uid, recorded) == super::decide::Ownership::Ours
    })
}

/// Takes a power or resize step on server `id` (now of `size`). `Some(health)` when the vendor refused
/// the resize itself: the refusal is recorded in status (so it is not tried again for that size) and the
/// VM stalls with the vendor's words; the next reconcile powers the server back to what `runStrategy`
/// asks for.
async fn power_or_resize(
    vm: &VirtualMachine,
    p: &dyn cloud::ComputeProvider,
    step: &Step,
    id: &str,
    size: &str,
    progress: &mut Progress<VirtualMachineStatus>,
    events: &mut Vec<(&'static str, String)>,
) -> Result<Option<Health>, Error> {
    let restart = vm.annotations().get(ANNOTATION_RESTART_REQUESTED_AT);
    let (result, reason, note) = match step {
        Step::PowerOn => (
            p.power(id, PowerAction::On).await,
            event::POWERING_ON,
            "powering on".to_string(),
        ),
        Step::PowerOff => (
            p.power(id, PowerAction::Off).await,
            event::POWERING_OFF,
            "powering off".to_string(),
        ),
        Step::Reboot => (
            p.power(id, PowerAction::Reboot).await,
            event::RESTARTING,
            format!(
                "rebooting for restart request {}",
                restart.cloned().unwrap_or_default()
            ),
        ),
        Step::Resize(s) => (
            p.resize(id, s).await,
            event::RESIZING,
            format!("resizing from {size} to {s}"),
        ),
        Step::Create | Step::Adopt | Step::Wait | Step::Nothing => return Ok(None),
    };
    match result {
        Ok(()) => {
            events.push((reason, note));
            if *step == Step::Reboot {
                progress.status.last_restart_request = restart.cloned();
            }
            Ok(None)
        }
        Err(CloudError::Unsupported(m)) => Err(Error::permanent(reason::UNSUPPORTED, m)),
        // The vendor is out, or busy (a previous action still runs, or the state changed under us: a
        // power step's 422): look again soon.
        Err(e) if e.is_transient() || is_busy(&e, step) => {
            tracing::info!(vm = %vm.name_any(), error = %e, "vendor action not accepted yet; retrying");
            Ok(None)
        }
        // Any other refusal of a resize is the vendor's word on that size.
        Err(CloudError::Http(h))
            if matches!(step, Step::Resize(_))
                && matches!(h.status(), Some(s) if s != 401 && s != 403) =>
        {
            let Step::Resize(to) = step else {
                unreachable!("matched above")
            };
            let message = h.to_string();
            progress.status.resize_refused = Some(ResizeRefusal {
                size: to.clone(),
                message: message.clone(),
            });
            events.push((
                event::RESIZE_REFUSED,
                format!("{} refused resizing to {to}: {message}", p.vendor()),
            ));
            Ok(Some(Health::stalled(
                reason::VENDOR_REJECTED,
                format!(
                    "{} refused resizing to {to:?}: {message}; spec.size must name another size",
                    p.vendor()
                ),
            )))
        }
        Err(e) => Err(Error::vendor("change the server's power or size")(e)),
    }
}

/// A 422 that means "not now" rather than "never": any 422 to a power step (the server is already in
/// that state, or an action is pending), and to a resize only when another action is pending.
fn is_busy(e: &CloudError, step: &Step) -> bool {
    let CloudError::Http(h) = e else {
        return false;
    };
    h.status() == Some(422)
        && (!matches!(step, Step::Resize(_))
            || h.to_string().to_ascii_lowercase().contains("pending"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_user_data_secret_says_it_is_missing_and_a_missing_key_names_the_key() {
        let u = crate::crd::LocalSecretKeyReference {
            name: "cloud-init".into(),
            key: "user-data".into(),
        };
        assert_eq!(
            missing_user_data(false, &u),
            "user data secret \"cloud-init\" does not exist"
        );
        assert_eq!(
            missing_user_data(true, &u),
            "user data secret \"cloud-init\" has no key \"user-data\""
        );
    }
}

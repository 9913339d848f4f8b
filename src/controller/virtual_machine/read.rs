//! The read step: everything decide looks at — the ProviderConfig and its client, what the vendor holds
//! for this VM, the catalog, and the Projects involved.

use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;

use super::decide::{Lookup, ProjectLookup, Restore};
use super::observe::Listing;
use crate::cloud::catalog::Catalog;
use crate::cloud::{self, ComputeProvider};
use crate::controller::project::policy::{self, Occupancy, project_state};
use crate::controller::runtime::framework::publish;
use crate::controller::vendor::{self, Resolved};
use crate::controller::{Context, Error};
use crate::crd::conditions::{self, ConditionStatus, event};
use crate::crd::virtual_machine::{ManagementPolicy, VirtualMachineStatus};
use crate::crd::{
    ANNOTATION_EXTERNAL_ID, ANNOTATION_RESTART_REQUESTED_AT, VirtualMachine, VirtualMachineSnapshot,
};

/// What the read step found.
pub struct Observed {
    /// The ProviderConfig.
    pub resolved: Resolved,
    /// Why the ProviderConfig no longer lets this namespace use the account the VM's server is in:
    /// the server is observed and metered, nothing is changed through it.
    pub access_refused: Option<String>,
    /// Its vendor client.
    pub provider: Arc<dyn ComputeProvider>,
    /// What the vendor holds for this VM.
    pub lookup: Lookup,
    /// The vendor's catalog (required before a create; best effort otherwise).
    pub catalog: Option<Arc<Catalog>>,
    /// The Project `spec.projectRef` names.
    pub target: ProjectLookup,
    /// The Project the VM is admitted to, when that is another one.
    pub billed: Option<ProjectLookup>,
    /// Whether this namespace may adopt untagged servers of the account.
    pub adoption_allowed: bool,
    /// The snapshot `spec.source.snapshotRef` names, while the VM has no server.
    pub restore: Restore,
}

/// Whether the VM holds (or may hold) a server: one was created or adopted.
pub fn holds_server(vm: &VirtualMachine, status: &VirtualMachineStatus) -> bool {
    status.creation_key.is_some()
        || status.external_id.is_some()
        || vm
            .annotations()
            .contains_key(crate::crd::ANNOTATION_CREATION_INTENT)
}

/// Reads what decide needs.
pub async fn read(
    ctx: &Arc<Context>,
    vm: &VirtualMachine,
    uid: &str,
    status: &VirtualMachineStatus,
) -> Result<Observed, Error> {
    let ns = vm.namespace().unwrap_or_default();
    // The account the server is in: once recorded, an edited spec.providerConfigRef never reaches
    // another account (decide stalls it as immutable, and still meters the server here).
    let account = status
        .provider_config
        .as_deref()
        .unwrap_or(&vm.spec.provider_config_ref.name);
    // Also when suspended, or when the namespace lost access to an account it holds a server in: the
    // server is still observed and metered (decide changes nothing then).
    let (resolved, access_refused) = if holds_server(vm, status) {
        vendor::resolve_holding(ctx, account, &ns).await?
    } else {
        (vendor::resolve_any(ctx, account, &ns).await?, None)
    };
    let provider = ctx.providers.compute(ctx, &resolved).await?;
    let adoption_allowed = vendor::adoption_allowed(&resolved.config, &ns);
    let lookup = match from_listing(ctx, vm, status, account) {
        Some(server) => Lookup::Found(server),
        None => lookup(ctx, vm, uid, status, &*provider).await?,
    };
    let absent = matches!(lookup, Lookup::Absent { .. });
    let catalog = match catalog(ctx, &resolved, &*provider).await {
        Ok(c) => Some(c),
        // Needed to validate a create; otherwise prices wait for the next reconcile.
        Err(e) if absent => return Err(e),
        Err(_) => None,
    };
    let target_name = vm.spec.project_ref.as_ref().map(|p| p.name.as_str());
    let creating = absent && vm.spec.management_policy == ManagementPolicy::Full;
    let moving = !absent && status.project.is_some() && status.project.as_deref() != target_name;
    let target = project(ctx, vm, target_name, creating || moving)?;
    let billed = match status.project.as_deref() {
        Some(b) if Some(b) != target_name => Some(project(ctx, vm, Some(b), false)?),
        _ => None,
    };
    let restore = match &vm.spec.source {
        Some(src) if absent => restore(ctx, vm, &src.snapshot_ref.name, &*provider)?,
        _ => Restore::Unread,
    };
    Ok(Observed {
        resolved,
        access_refused,
        provider,
        lookup,
        catalog,
        target,
        billed,
        adoption_allowed,
        restore,
    })
}

/// The VirtualMachineSnapshot `name` of the VM's namespace, from the cache, as a create can use it:
/// available, in the account this VM creates its server in, at a vendor that creates servers from
/// snapshots. Another namespace's snapshot cannot be named at all.
fn restore(
    ctx: &Context,
    vm: &VirtualMachine,
    name: &str,
    provider: &dyn ComputeProvider,
) -> Result<Restore, Error> {
    let ns = vm.namespace().unwrap_or_default();
    let Some(snap) = ctx
        .caches()?
        .store::<VirtualMachineSnapshot>()?
        .get(&ObjectRef::new(name).within(&ns))
    else {
        return Ok(Restore::Wait(format!(
            "VirtualMachineSnapshot {name:?} not found in this namespace"
        )));
    };
    let st = snap.status.clone().unwrap_or_default();
    let account = &vm.spec.provider_config_ref.name;
    if let Some(pc) = st.provider_config.as_deref().filter(|pc| *pc != account) {
        return Ok(Restore::Refused(format!(
            "VirtualMachineSnapshot {name:?} is in ProviderConfig {pc:?}, this VM's server would be in {account:?}: a snapshot is restored only in its own account"
        )));
    }
    let (Some(id), Some("Available")) = (st.snapshot_id.as_deref(), st.state.as_deref()) else {
        return Ok(Restore::Wait(format!(
            "VirtualMachineSnapshot {name:?} is not available yet"
        )));
    };
    Ok(match provider.snapshot_image(id) {
        Ok(image) => Restore::Image(image),
        Err(e) => Restore::Refused(e.to_string()),
    })
}

/// The vendor catalog of a ProviderConfig (cached per ProviderConfig and credentials).
pub async fn catalog(
    ctx: &Context,
    r: &Resolved,
    p: &dyn ComputeProvider,
) -> Result<Arc<Catalog>, Error> {
    let key = format!("{}/{}", r.config.name_any(), r.fingerprint);
    ctx.catalogs
        .get(&key, p)
        .await
        .map_err(Error::vendor("read the vendor catalog"))
}

/// A VM at rest takes its server from the account's latest listing instead of a GET of its own (one
/// listing serves every VM of the account): only when the listing is fresh (within two observe
/// intervals), was taken after the VM last became Ready, the VM has nothing new to act on (its spec is
/// the one last acted on, no restart pending), and the listing holds its recorded server. Anything else
/// (a VM just acted on, a server missing from the listing) reads the server itself.
fn from_listing(
    ctx: &Context,
    vm: &VirtualMachine,
    status: &VirtualMachineStatus,
    account: &str,
) -> Option<cloud::Server> {
    let listing = ctx.state::<super::observe::Sightings>().listing(account)?;
    let now = jiff::Timestamp::now().as_second();
    listing_serves(vm, status, &listing, now, ctx.config.observe_interval)
}

/// The rule of [`from_listing`], pure.
pub fn listing_serves(
    vm: &VirtualMachine,
    status: &VirtualMachineStatus,
    listing: &Listing,
    now: i64,
    interval: std::time::Duration,
) -> Option<cloud::Server> {
    let id = status.external_id.as_deref()?;
    if vm
        .annotations()
        .get(ANNOTATION_EXTERNAL_ID)
        .is_some_and(|a| a != id)
        || vm.metadata.generation != status.observed_generation
        || vm.annotations().get(ANNOTATION_RESTART_REQUESTED_AT)
            != status.last_restart_request.as_ref()
    {
        return None;
    }
    let ready = conditions::find(&status.conditions, conditions::READY)
        .filter(|c| c.status == ConditionStatus::True)?;
    let ready_since = ready
        .last_transition_time
        .parse::<jiff::Timestamp>()
        .ok()?
        .as_second();
    let fresh = now - listing.at <= 2 * i64::try_from(interval.as_secs()).unwrap_or(i64::MAX / 2);
    (fresh && listing.at > ready_since)
        .then(|| listing.servers.get(id).cloned())
        .flatten()
}

/// Finds the server: by the adopted or recorded ID, else by the ownership tag. When intent was recorded
/// but the tag finds nothing, looks again after `listing_lag` (vendor listings can lag a create).
async fn lookup(
    ctx: &Context,
    vm: &VirtualMachine,
    uid: &str,
    status: &VirtualMachineStatus,
    p: &dyn ComputeProvider,
) -> Result<Lookup, Error> {
    let known = vm
        .annotations()
        .get(ANNOTATION_EXTERNAL_ID)
        .cloned()
        .or_else(|| status.external_id.clone());
    if let Some(id) = known {
        return Ok(
            match p.get(&id).await.map_err(Error::vendor("read the server"))? {
                Some(s) => Lookup::Found(s),
                None => Lookup::Missing(id),
            },
        );
    }
    let tag = cloud::uid_tag(uid);
    let find = || async {
        p.find_by_tag(&tag)
            .await
            .map_err(Error::vendor("look up servers by tag"))
    };
    let mut tagged = find().await?;
    let mut after_intent = false;
    if tagged.is_empty() && status.creation_key.is_some() {
        tokio::time::sleep(ctx.config.listing_lag).await;
        tagged = find().await?;
        after_intent = true;
    }
    if tagged.is_empty() {
        return Ok(Lookup::Absent { after_intent });
    }
    tagged.sort_by(|a, b| a.id.cmp(&b.id));
    if tagged.len() > 1 {
        publish(
            ctx,
            vm,
            EventType::Warning,
            event::DUPLICATE_FOUND,
            &format!(
                "{} servers carry this object's tag; using {}",
                tagged.len(),
                tagged[0].id
            ),
        )
        .await;
    }
    Ok(Lookup::Found(tagged.remove(0)))
}

/// Looks Project `name` (in the VM's namespace) up in the watch cache and, when `with_members`, how full
/// it is for this VM (from the membership index).
fn project(
    ctx: &Context,
    vm: &VirtualMachine,
    name: Option<&str>,
    with_members: bool,
) -> Result<ProjectLookup, Error> {
    let Some(name) = name else {
        return Ok(ProjectLookup::Unset);
    };
    let ns = vm.namespace().unwrap_or_default();
    let caches = ctx.caches()?;
    let Some(p) = caches
        .store::<crate::crd::Project>()?
        .get(&ObjectRef::new(name).within(&ns))
    else {
        return Ok(ProjectLookup::Missing(name.to_string()));
    };
    let limited = p.spec.limits.is_some()
        || p.status
            .as_ref()
            .and_then(|s| s.entitlement.as_ref())
            .is_some_and(|e| e.limits.is_some());
    let occupancy = if with_members && limited {
        let mut o = ctx
            .state::<crate::controller::project::members::MemberIndex>()
            .occupancy(
                &ns,
                name,
                &ObjectRef::from_obj(vm),
                &policy::order_of(vm),
                &p.spec.currency,
            );
        // The Project's snapshots' storage counts toward its monthly spend too.
        o.spend += crate::controller::virtual_machine_snapshot::admission::storage_spend(
            ctx,
            &ns,
            name,
            &p.spec.currency,
        )?;
        o
    } else {
        Occupancy::default()
    };
    Ok(ProjectLookup::Found(project_state(&p, occupancy)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::time::Duration;

    fn vm(status: serde_json::Value, annotations: serde_json::Value) -> VirtualMachine {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": "web", "namespace": "a", "generation": 2, "annotations": annotations},
            "spec": {"providerConfigRef": {"name": "pc"}, "region": "r", "size": "s", "image": "i"},
            "status": status
        }))
        .unwrap()
    }

    fn at_rest(generation: i64, ready_since: &str) -> serde_json::Value {
        serde_json::json!({
            "externalID": "42", "observedGeneration": generation,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Reconciled", "message": "",
                            "lastTransitionTime": ready_since, "observedGeneration": generation}]
        })
    }

    #[test]
    fn only_a_vm_at_rest_takes_a_fresh_listing_taken_after_it_got_ready() {
        let server = cloud::Server {
            id: "42".into(),
            name: "web-1".into(),
            state: cloud::ServerState::Running,
            size: "s".into(),
            region: "r".into(),
            image: None,
            public_ipv4: None,
            public_ipv6: None,
            private_ipv4: None,
            tags: vec![],
            busy: false,
            deletion_scheduled: false,
            initial_password: None,
            backups: None,
            price: None,
        };
        let ready = "2026-11-30T00:00:00Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_second();
        let listing = Listing {
            at: ready + 10,
            servers: std::sync::Arc::new(HashMap::from([("42".to_string(), server)])),
        };
        let minute = Duration::from_secs(60);
        let serves = |v: &VirtualMachine, now: i64, l: &Listing| {
            listing_serves(v, v.status.as_ref().unwrap(), l, now, minute).is_some()
        };
        let rest = vm(at_rest(2, "2026-11-30T00:00:00Z"), serde_json::json!({}));
        assert!(serves(&rest, ready + 30, &listing));
        // Too old a listing, or one taken before the VM got Ready (it may predate the VM's own step).
        assert!(!serves(&rest, ready + 200, &listing));
        let older = Listing {
            at: ready - 1,
            ..listing.clone()
        };
        assert!(!serves(&rest, ready + 30, &older));
        // A spec not acted on yet, or a restart pending: the VM reads the server itself.
        let edited = vm(at_rest(1, "2026-11-30T00:00:00Z"), serde_json::json!({}));
        assert!(!serves(&edited, ready + 30, &listing));
        let restart = vm(
            at_rest(2, "2026-11-30T00:00:00Z"),
            serde_json::json!({"quartermaster.dev/restart-requested-at": "now"}),
        );
        assert!(!serves(&restart, ready + 30, &listing));
        // Not in the listing: read (and confirm it is gone) with a GET.
        let empty = Listing {
            servers: std::sync::Arc::new(HashMap::new()),
            ..listing
        };
        assert!(!serves(&rest, ready + 30, &empty));
    }
}

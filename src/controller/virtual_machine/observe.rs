//! Observation at the vendor's rate: every `observe_interval`, each compute account is listed once
//! (paged, [`ComputeProvider::list_servers`](crate::cloud::ComputeProvider::list_servers)), and the
//! settled VMs (status phase Running or Stopped) whose server changed at the vendor since the last
//! listing — gone, powered on or off, resized — are woken, so drift is seen (and metered) within the
//! interval instead of at each VM's own periodic resync. VMs in transition are polled by their own
//! reconciles and are not woken. One listing serves every VM of the account: 10,000 droplets are 50
//! requests on DigitalOcean.
//!
//! Runs only while this replica leads (beside the controllers). Every compute client lists (DigitalOcean
//! 200 a page, Linode and Vultr 500, Contabo its page size); a client that could not would be left to the
//! per-VM resync.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use crate::cloud::{Server, UID_TAG_PREFIX};
use crate::controller::Context;
use crate::controller::provider_config::is_compute;
use crate::crd::{ProviderConfig, VirtualMachine};

/// What a VM's reconcile depends on of its server: its state and size.
type Digest = (String, String);

/// One listing of an account: when it was taken (unix seconds) and its servers by ID.
#[derive(Clone, Debug)]
pub struct Listing {
    /// When the listing was taken, unix seconds.
    pub at: i64,
    /// The servers, by vendor ID.
    pub servers: Arc<HashMap<String, Server>>,
}

/// What this process saw of servers: each VM's last sighting of its server and each account's latest
/// listing (a [`KindState`](crate::controller::runtime::state::KindState) of the VM kind).
#[derive(Default)]
pub struct Sightings {
    last_seen: Mutex<HashMap<String, i64>>,
    listings: Mutex<HashMap<String, Listing>>,
}

impl crate::controller::runtime::state::KindState for Sightings {
    fn forget(&self, _key: &str, uid: Option<&str>) {
        if let Some(uid) = uid {
            lock(&self.last_seen).remove(uid);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sightings {
    /// Records that the vendor server of VM `uid` was seen existing at `at` (unix seconds): if it is
    /// later found gone, its metering window closes there, not when the loss is noticed.
    pub fn saw(&self, uid: &str, at: i64) {
        let mut m = lock(&self.last_seen);
        // Never backwards: a listing that started before a VM's own read does not undo that sighting.
        let seen = m.entry(uid.to_string()).or_insert(at);
        *seen = (*seen).max(at);
    }

    /// When the vendor server of VM `uid` was last seen existing (since this process started).
    pub fn last_seen(&self, uid: &str) -> Option<i64> {
        lock(&self.last_seen).get(uid).copied()
    }

    /// Keeps the latest listing of account `pc`; returns the oldest listing's time (for the metric).
    pub fn set_listing(&self, pc: &str, listing: Listing) -> Option<i64> {
        let mut m = lock(&self.listings);
        m.insert(pc.to_string(), listing);
        m.values().map(|l| l.at).min()
    }

    /// The latest listing of account `pc`, if any.
    pub fn listing(&self, pc: &str) -> Option<Listing> {
        lock(&self.listings).get(pc).cloned()
    }
}

/// The servers of one listing by the UID in their ownership tag.
pub fn by_owner(servers: &[Server]) -> HashMap<String, Digest> {
    let mut m = HashMap::new();
    for s in servers {
        for t in &s.tags {
            if let Some(uid) = t.strip_prefix(UID_TAG_PREFIX) {
                m.insert(uid.to_string(), (format!("{:?}", s.state), s.size.clone()));
            }
        }
    }
    m
}

/// The owners (VM UIDs) whose server changed or went between two listings. Servers that appeared are
/// not news: their VMs created or adopted them and look at them themselves.
pub fn changed(before: &HashMap<String, Digest>, now: &HashMap<String, Digest>) -> Vec<String> {
    let mut uids: Vec<String> = before
        .iter()
        .filter(|(uid, d)| now.get(*uid) != Some(*d))
        .map(|(uid, _)| uid.clone())
        .collect();
    uids.sort();
    uids
}

/// Lists every compute account every `observe_interval` and wakes the VMs whose server changed. Never
/// returns (it ends with the controllers).
pub async fn run(ctx: Arc<Context>) {
    let mut last: HashMap<String, HashMap<String, Digest>> = HashMap::new();
    // Start to start: the listing's own duration does not stretch the interval (a late tick is delayed,
    // never bunched).
    let period = ctx.config.observe_interval;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(e) = observe_all(&ctx, &mut last).await {
            tracing::warn!(error = %e, "observing accounts failed; trying again next interval");
        }
    }
}

/// A VM at rest (Running or Stopped): a change at the vendor is drift, not its own step completing.
fn is_settled(vm: &VirtualMachine) -> bool {
    use crate::crd::virtual_machine::VmPhase;
    matches!(
        vm.status.as_ref().and_then(|s| s.phase),
        Some(VmPhase::Running | VmPhase::Stopped)
    )
}

/// Lists every compute account once. An account that cannot be listed (its credentials unreadable or
/// refused, its vendor down) is skipped and reported; every other account is still listed.
async fn observe_all(
    ctx: &Arc<Context>,
    last: &mut HashMap<String, HashMap<String, Digest>>,
) -> Result<(), super::Error> {
    let caches = ctx.caches()?;
    let sightings = ctx.state::<Sightings>();
    let mut settled: Option<HashMap<String, Arc<VirtualMachine>>> = None;
    for pc in caches.store::<ProviderConfig>()?.state() {
        if !is_compute(pc.spec.type_) || pc.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = pc.name_any();
        let (started, listed) = match list_account(ctx, &pc).await {
            Ok(Some(listing)) => listing,
            Ok(None) => continue,
            Err(e) => {
                listing_failed(ctx, &name, &e);
                continue;
            }
        };
        ctx.metrics.account_listings.inc();
        // A later failure of this account is news again.
        ctx.first_warning(&format!("listing/{name}"), "");
        let now = by_owner(&listed);
        // Every server seen is a sighting: one found gone later is billed until this listing.
        for uid in now.keys() {
            sightings.saw(uid, started);
        }
        let servers: HashMap<String, Server> =
            listed.into_iter().map(|s| (s.id.clone(), s)).collect();
        let all = caches.store::<VirtualMachine>()?;
        let vms = settled.get_or_insert_with(|| {
            all.state()
                .into_iter()
                .filter(|vm| is_settled(vm))
                .filter_map(|vm| Some((vm.uid()?, vm)))
                .collect()
        });
        let uids = match last.insert(name.clone(), now.clone()) {
            Some(before) => changed(&before, &now),
            // The account's first listing: compared with what its VMs recorded.
            None => vms
                .iter()
                .filter(|(_, vm)| disagrees(vm, &name, &servers))
                .map(|(uid, _)| uid.clone())
                .collect(),
        };
        let listing = Listing {
            at: started,
            servers: Arc::new(servers),
        };
        if let Some(oldest) = sightings.set_listing(&name, listing) {
            ctx.metrics.oldest_listing.set(oldest);
        }
        for uid in uids {
            if let Some(vm) = vms.get(&uid) {
                ctx.wake(ObjectRef::from_obj(&**vm));
            }
        }
    }
    Ok(())
}

/// One listing of `pc`'s account: when it started and its servers; `None` when the client cannot list.
async fn list_account(
    ctx: &Arc<Context>,
    pc: &ProviderConfig,
) -> Result<Option<(i64, Vec<Server>)>, super::Error> {
    // Reading is not changing: a suspended account is observed too.
    let account = ctx.providers.account_for_reading(ctx, pc).await?;
    let provider = ctx.providers.compute(ctx, &account).await?;
    let started = jiff::Timestamp::now().as_second();
    let listed = provider
        .list_servers()
        .await
        .map_err(super::Error::vendor("list the account's servers"))?;
    Ok(listed.map(|servers| (started, servers)))
}

/// An account that could not be listed: counted per ProviderConfig, logged as a warning (once per
/// distinct error), and a refusal of its credentials makes the ProviderConfig re-check them.
fn listing_failed(ctx: &Context, pc: &str, e: &super::Error) {
    ctx.metrics
        .account_listing_failures
        .with_label_values(&[pc])
        .inc();
    if let super::Error::Vendor { source, .. } = e
        && source.is_auth()
    {
        ctx.account_refused(pc);
    }
    let message = e.to_string();
    if ctx.first_warning(&format!("listing/{pc}"), &message) {
        tracing::warn!(provider_config = %pc, error = %message, "cannot list the account's servers; its VMs' drift is seen only at their own resync until it can");
    }
}

/// Whether settled `vm` of account `pc` recorded something this listing contradicts: its server gone,
/// powered differently, or of another size.
pub fn disagrees(vm: &VirtualMachine, pc: &str, servers: &HashMap<String, Server>) -> bool {
    use crate::cloud::ServerState;
    use crate::crd::virtual_machine::VmPhase;
    let Some(st) = vm.status.as_ref() else {
        return false;
    };
    let (Some(id), Some(phase)) = (st.external_id.as_deref(), st.phase) else {
        return false;
    };
    if st.provider_config.as_deref() != Some(pc) {
        return false;
    }
    let Some(server) = servers.get(id) else {
        return true;
    };
    let running = server.state == ServerState::Running;
    (phase == VmPhase::Running) != running
        || st.size.as_deref().is_some_and(|size| size != server.size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::ServerState;

    fn server(uid: &str, state: ServerState, size: &str) -> Server {
        Server {
            id: uid.into(),
            name: "n".into(),
            state,
            size: size.into(),
            region: "r".into(),
            image: None,
            public_ipv4: None,
            public_ipv6: None,
            private_ipv4: None,
            tags: vec![format!("{UID_TAG_PREFIX}{uid}"), "team-a".into()],
            busy: false,
            deletion_scheduled: false,
            initial_password: None,
            backups: None,
            price: None,
        }
    }

    #[test]
    fn gone_powered_off_and_resized_servers_wake_their_vms_new_ones_do_not() {
        use ServerState::*;
        let before = by_owner(&[
            server("a", Running, "s"),
            server("b", Running, "s"),
            server("c", Running, "s"),
            server("d", Running, "s"),
        ]);
        let now = by_owner(&[
            server("b", Off, "s"),
            server("c", Running, "m"),
            server("d", Running, "s"),
            server("e", Running, "s"),
        ]);
        assert_eq!(changed(&before, &now), vec!["a", "b", "c"]);
        let untagged = Server {
            tags: vec!["other".into()],
            ..server("x", Running, "s")
        };
        assert!(by_owner(&[untagged]).is_empty());
    }

    #[test]
    fn a_first_listing_finds_what_contradicts_the_vms_records() {
        use crate::crd::virtual_machine::VmPhase;
        let vm = |phase: VmPhase, id: &str, size: &str, pc: &str| -> VirtualMachine {
            let mut vm: VirtualMachine = serde_json::from_value(serde_json::json!({
                "apiVersion": "quartermaster.dev/v1alpha1", "kind": "VirtualMachine",
                "metadata": {"name": "web", "namespace": "a", "uid": "u"},
                "spec": {"providerConfigRef": {"name": pc}, "region": "r", "size": size, "image": "i"}
            }))
            .unwrap();
            let st = vm.status.get_or_insert_with(Default::default);
            st.phase = Some(phase);
            st.external_id = Some(id.into());
            st.size = Some(size.into());
            st.provider_config = Some(pc.into());
            vm
        };
        let servers: HashMap<String, Server> = [
            server("1", ServerState::Running, "s"),
            server("2", ServerState::Off, "s"),
        ]
        .into_iter()
        .map(|s| (s.id.clone(), s))
        .collect();
        use VmPhase::*;
        for (vm, want) in [
            (vm(Running, "1", "s", "do"), false),
            (vm(Stopped, "2", "s", "do"), false),
            (vm(Running, "3", "s", "do"), true),     // gone
            (vm(Running, "2", "s", "do"), true),     // powered off
            (vm(Stopped, "1", "s", "do"), true),     // powered on
            (vm(Running, "1", "m", "do"), true),     // resized
            (vm(Running, "3", "s", "other"), false), // another account's listing
        ] {
            assert_eq!(disagrees(&vm, "do", &servers), want, "{:?}", vm.status);
        }
    }
}

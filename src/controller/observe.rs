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
use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc::UnboundedSender;

use super::Context;
use super::provider_config::is_compute;
use crate::cloud::{Server, UID_TAG_PREFIX};
use crate::crd::VirtualMachine;

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

/// Lists every compute account every `observe_interval` and sends the VMs whose server changed to
/// `wake`. Never returns (it ends with the controllers).
pub async fn run(ctx: Arc<Context>, wake: UnboundedSender<ObjectRef<VirtualMachine>>) {
    let mut last: HashMap<String, HashMap<String, Digest>> = HashMap::new();
    // Start to start: the listing's own duration does not stretch the interval (a late tick is delayed,
    // never bunched).
    let period = ctx.config.observe_interval;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(e) = observe_all(&ctx, &wake, &mut last).await {
            tracing::debug!(error = %e, "observing accounts failed; trying again next interval");
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

async fn observe_all(
    ctx: &Arc<Context>,
    wake: &UnboundedSender<ObjectRef<VirtualMachine>>,
    last: &mut HashMap<String, HashMap<String, Digest>>,
) -> Result<(), super::Error> {
    let caches = ctx.caches()?;
    let mut settled: Option<HashMap<String, ObjectRef<VirtualMachine>>> = None;
    for pc in caches.provider_configs.state() {
        if !is_compute(pc.spec.type_) || pc.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = pc.name_any();
        // Reading is not changing: a suspended account is observed too.
        let account = ctx.providers.account_for_reading(ctx, &pc).await?;
        let provider = ctx.providers.compute(ctx, &account).await?;
        let started = jiff::Timestamp::now().as_second();
        let listed = match provider.list_servers().await {
            Ok(Some(servers)) => servers,
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!(provider_config = %name, error = %e, "listing servers failed");
                continue;
            }
        };
        ctx.metrics.account_listings.inc();
        let now = by_owner(&listed);
        ctx.set_listing(
            &name,
            Listing {
                at: started,
                servers: Arc::new(listed.into_iter().map(|s| (s.id.clone(), s)).collect()),
            },
        );
        if let Some(before) = last.insert(name, now.clone()) {
            let uids = changed(&before, &now);
            if uids.is_empty() {
                continue;
            }
            let index = settled.get_or_insert_with(|| {
                caches
                    .vms
                    .state()
                    .iter()
                    .filter(|vm| is_settled(vm))
                    .filter_map(|vm| Some((vm.uid()?, ObjectRef::from_obj(&**vm))))
                    .collect()
            });
            for uid in uids {
                if let Some(r) = index.get(&uid) {
                    let _ = wake.send(r.clone());
                }
            }
        }
    }
    Ok(())
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
}

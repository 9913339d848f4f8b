//! Project reconciler: count members (VirtualMachines and SimCards whose `spec.projectRef` names the
//! project) by phase, project the monthly cost from the members' size prices, and on deletion either wait
//! for the members to go (`Block`, the condition lists them) or delete them first (`Cascade`).
//!
//! The per-project VM limit is enforced where VMs are created (the VirtualMachine reconciler), so a VM
//! beyond the limit is never created. The Project's own VPCs are made and deleted by [`vpcs`].

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use kube::api::DeleteParams;
use kube::{Api, Resource, ResourceExt};
use rust_decimal::Decimal;

pub mod decide;
pub mod entitlement;
pub mod members;
pub mod policy;
pub mod vpcs;
pub mod wake;
mod wire;

pub use wire::wire;

/// The Project kind, as the runtime runs it.
pub const WIRE: crate::controller::runtime::Wire =
    crate::controller::runtime::Wire::of::<Project>(wire);

crate::controller::runtime::framework::managed_namespaced!(Project, ProjectStatus);

use super::runtime::framework::{Cleanup, Outcome, PausedOutcome, Progress, Reconciler};
use super::{Context, Error};
use crate::crd::conditions::Health;
use crate::crd::conditions::reason;
use crate::crd::project::{ProjectDeletionPolicy, ProjectMembers};
use crate::ledger::store::{GroupBy, ProjectRef};

use crate::crd::virtual_machine::VmPhase;
use crate::crd::{Project, ProjectStatus, SimCard, VirtualMachine};

/// The Project reconciler.
pub struct ProjectReconciler;

/// Members of a project.
pub struct Members {
    /// Its VirtualMachines.
    pub vms: Vec<Arc<VirtualMachine>>,
    /// Its SimCards.
    pub sims: Vec<Arc<SimCard>>,
}

/// The members of `project`, from the watch caches and membership indexes (no API call).
pub fn members(ctx: &Context, project: &Project) -> Result<Members, Error> {
    let ns = project.namespace().unwrap_or_default();
    let name = project.name_any();
    let caches = ctx.caches()?;
    let (vms, sims) = (
        caches.store::<VirtualMachine>()?,
        caches.store::<SimCard>()?,
    );
    Ok(Members {
        vms: ctx
            .state::<members::MemberIndex>()
            .members(&ns, &name)
            .iter()
            .filter_map(|r| vms.get(r))
            .collect(),
        sims: ctx
            .state::<members::SimIndex>()
            .members(&ns, &name)
            .iter()
            .filter_map(|r| sims.get(r))
            .collect(),
    })
}

/// Member counts and the projected monthly cost in the project's `currency`. Every VM the vendor holds
/// and that is billed to this project counts (vendors bill stopped servers too); VMs not yet created, or
/// priced in another currency, do not.
pub fn summarize(m: &Members, project: &str, currency: &str) -> (ProjectMembers, Decimal) {
    let mut by_phase: BTreeMap<String, u32> = BTreeMap::new();
    let mut projected = Decimal::ZERO;
    for vm in &m.vms {
        let st = vm.status.as_ref();
        let phase = st
            .and_then(|s| s.phase)
            .map(|p| format!("{p:?}"))
            .unwrap_or_else(|| "Pending".into());
        *by_phase.entry(phase).or_default() += 1;
        let billed_here = st
            .and_then(|s| s.project.as_deref())
            .is_none_or(|p| p == project);
        let billed = billed_here
            && st.is_some_and(|s| {
                s.external_id.is_some()
                    && s.phase != Some(VmPhase::Terminating)
                    && s.currency.as_deref().is_none_or(|c| c == currency)
            });
        if billed
            && let Some(price) = st
                .and_then(|s| s.monthly_price.as_deref())
                .and_then(|p| Decimal::from_str(p).ok())
        {
            projected += price;
        }
    }
    (
        ProjectMembers {
            virtual_machines: u32::try_from(m.vms.len()).unwrap_or(u32::MAX),
            sim_cards: u32::try_from(m.sims.len()).unwrap_or(u32::MAX),
            by_phase,
        },
        projected,
    )
}

/// What a stop has actually stopped among the VMs billed to `project` that hold a server: "2 of 3
/// virtual machines stopped (1 still running: ObserveOnly, a suspended account, or stopping now)".
pub fn stopped(m: &Members, project: &str) -> String {
    // (phase, being deleted) of each VM billed here that holds a server.
    let held: Vec<(Option<VmPhase>, bool)> = m
        .vms
        .iter()
        .filter_map(|vm| Some((vm.status.as_ref()?, vm.meta().deletion_timestamp.is_some())))
        .filter(|(s, _)| {
            s.external_id.is_some() && s.project.as_deref().is_none_or(|p| p == project)
        })
        .map(|(s, deleting)| (s.phase, deleting))
        .collect();
    let deleting = held.iter().filter(|(_, d)| *d).count();
    let off = held
        .iter()
        .filter(|(p, d)| !d && *p == Some(VmPhase::Stopped))
        .count();
    let on = held.len() - off - deleting;
    let mut out = format!("{off} of {} virtual machines stopped", held.len());
    if on > 0 {
        out.push_str(&format!(
            " ({on} still running: ObserveOnly, a suspended account, or stopping now)"
        ));
    }
    if deleting > 0 {
        out.push_str(&format!(" ({deleting} being deleted)"));
    }
    out
}

/// The read step's ledger part: this month's cost and the credit, in the Project's currency only
/// (amounts in different currencies are never added together); `None` without a ledger.
async fn money(ctx: &Context, project: &Project) -> Result<Option<decide::Money>, Error> {
    let Some(ledger) = &ctx.ledger else {
        return Ok(None);
    };
    let (ns, name, uid) = (
        project.namespace().unwrap_or_default(),
        project.name_any(),
        project.uid().unwrap_or_default(),
    );
    let me = ProjectRef {
        namespace: &ns,
        name: &name,
        uid: &uid,
    };
    // The Project of this name at the upgrade takes the rows recorded before UIDs (once per process
    // and Project).
    if ctx.first_sighting(&uid) {
        ledger
            .claim_legacy(&me)
            .await
            .inspect_err(|_| ctx.forget(&uid, None))?;
    }
    let now = jiff::Timestamp::now().as_second();
    let (from, to) =
        crate::ledger::parse_period(&crate::ledger::period_of(now)).unwrap_or((0, now));
    let currency = &project.spec.currency;
    let month_to_date = ledger
        .usage(&me, from, to, GroupBy::Meter)
        .await?
        .iter()
        .filter(|r| &r.currency == currency)
        .map(|r| r.amount_nanos)
        .sum();
    let (granted, used) = ledger.balance(&me, currency).await?;
    Ok(Some(decide::Money {
        month_to_date,
        granted,
        used,
    }))
}

impl ProjectReconciler {
    /// Counts, costs, balance and the conditions they lead to (no vendor call).
    async fn refresh(
        &self,
        project: Arc<Project>,
        ctx: Arc<Context>,
        progress: &mut Progress<ProjectStatus>,
    ) -> Result<Outcome, Error> {
        let m = members(&ctx, &project)?;
        let money = money(&ctx, &project).await?;
        let d = decide::decide(decide::Inputs {
            name: &project.name_any(),
            spec: &project.spec,
            previous: &progress.status,
            members: &m,
            money,
            entitlement: entitlement::of(&ctx, &project)?,
            now: jiff::Timestamp::now().as_second(),
            ledger_poll: ctx.config.poll_interval * 6,
        });
        progress.status = d.status;
        let mut outcome = Outcome::new(d.health);
        outcome.requeue_after = d.requeue_after;
        outcome.resync_at_most = d.resync_at_most;
        Ok(outcome)
    }
}

impl Reconciler<Project> for ProjectReconciler {
    async fn apply(
        &self,
        project: Arc<Project>,
        ctx: Arc<Context>,
        progress: &mut Progress<ProjectStatus>,
    ) -> Result<Outcome, Error> {
        // The money and the VPCs are independent: neither holds the other up.
        let refreshed = self.refresh(project.clone(), ctx.clone(), progress).await;
        let vpcs = vpcs::converge(&ctx, &project, &mut progress.status).await;
        let mut outcome = refreshed?;
        if let Some(h) = vpcs {
            // A stall outranks what the money says; a wait or a retry only a Ready.
            let replaces = matches!(h, Health::Stalled { .. })
                || matches!(outcome.health, Health::Ready { .. });
            if replaces {
                outcome.health = h;
            }
            // A waiting removal is woken by its VMs' deletion; a retry is looked at again soon.
            let soon = ctx.config.poll_interval * 6;
            outcome.requeue_after = Some(outcome.requeue_after.map_or(soon, |r| r.min(soon)));
        }
        Ok(outcome)
    }

    /// Paused: pause suspends the user's changes, not the Project's money policy. Its counts, costs and
    /// credit balance stay current (its VMs read the credit stop from them), with the conditions they
    /// lead to. Nothing else is acted on (no VPC made or deleted; deletion waits).
    async fn observe(
        &self,
        project: Arc<Project>,
        ctx: Arc<Context>,
        progress: &mut Progress<ProjectStatus>,
    ) -> Result<Option<PausedOutcome>, Error> {
        let outcome = self.refresh(project, ctx, progress).await?;
        Ok(Some(PausedOutcome {
            health: Some(outcome.health),
            requeue_after: outcome.requeue_after,
        }))
    }

    /// While members remain, the Project keeps its counts, costs, balance and credit stop current (its
    /// members still run and read their stop from it), and says what deletion waits for.
    async fn cleanup(
        &self,
        project: Arc<Project>,
        ctx: Arc<Context>,
        progress: &mut Progress<ProjectStatus>,
    ) -> Result<Cleanup, Error> {
        let m = members(&ctx, &project)?;
        if m.vms.is_empty() && m.sims.is_empty() {
            // Its VPCs go last, once no VM is in them.
            return Ok(
                match vpcs::remove_all(&ctx, &project, &mut progress.status).await? {
                    Some(message) => Cleanup::Wait {
                        message,
                        requeue_after: ctx.config.poll_interval,
                    },
                    None => Cleanup::Done,
                },
            );
        }
        let waiting = waiting_for_members(&project, &ctx, &m).await?;
        // The money refresh never holds the deletion up: a ledger outage is said, not waited on.
        let money = match self.refresh(project.clone(), ctx.clone(), progress).await {
            Ok(o) => (o.health, o.requeue_after),
            Err(e) => (
                Health::progressing(reason::RETRYING, format!("balance not refreshed: {e}")),
                Some(ctx.config.poll_interval),
            ),
        };
        Ok(match waiting {
            Cleanup::Wait {
                message,
                requeue_after,
            } => Cleanup::Wait {
                message: match money.0 {
                    Health::Ready { .. } => message,
                    h => format!("{message}; {}", h.message()),
                },
                requeue_after: money.1.map_or(requeue_after, |r| r.min(requeue_after)),
            },
            done => done,
        })
    }
}

/// Deletion of a Project with members: wait for them (`Block`) or delete them first (`Cascade`).
async fn waiting_for_members(
    project: &Project,
    ctx: &Context,
    m: &Members,
) -> Result<Cleanup, Error> {
    let mut names: Vec<String> = m
        .vms
        .iter()
        .map(|v| format!("VirtualMachine/{}", v.name_any()))
        .collect();
    names.extend(m.sims.iter().map(|s| format!("SimCard/{}", s.name_any())));
    names.sort();
    if names.is_empty() {
        return Ok(Cleanup::Done);
    }
    let ns = project.namespace().unwrap_or_default();
    match project.spec.deletion_policy {
        ProjectDeletionPolicy::Block => Ok(Cleanup::Wait {
            message: format!(
                "deletionPolicy Block: waiting until these members are deleted: {}",
                names.join(", ")
            ),
            requeue_after: ctx.config.resync_interval,
        }),
        ProjectDeletionPolicy::Cascade => {
            let vms: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &ns);
            for vm in m
                .vms
                .iter()
                .filter(|v| v.meta().deletion_timestamp.is_none())
            {
                vms.delete(&vm.name_any(), &DeleteParams::default())
                    .await
                    .map_err(Error::kube("deleting a member VM"))?;
            }
            let sims: Api<SimCard> = Api::namespaced(ctx.client.clone(), &ns);
            for sim in m
                .sims
                .iter()
                .filter(|s| s.meta().deletion_timestamp.is_none())
            {
                sims.delete(&sim.name_any(), &DeleteParams::default())
                    .await
                    .map_err(Error::kube("deleting a member SIM"))?;
            }
            Ok(Cleanup::Wait {
                message: format!(
                    "deletionPolicy Cascade: deleting members: {}",
                    names.join(", ")
                ),
                requeue_after: ctx.config.poll_interval,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::format_money;

    fn vm(
        name: &str,
        phase: Option<&str>,
        price: Option<&str>,
        created: bool,
    ) -> Arc<VirtualMachine> {
        Arc::new(serde_json::from_value(serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": "n"},
            "spec": {"providerConfigRef": {"name": "p"}, "region": "fra1", "size": "s", "image": "i", "projectRef": {"name": "proj"}},
            "status": {"phase": phase, "monthlyPrice": price, "externalID": if created { Some("1") } else { None }}
        }))
        .unwrap())
    }

    #[test]
    fn counts_and_exact_projection() {
        let m = Members {
            vms: vec![
                vm("a", Some("Running"), Some("6"), true),
                vm("b", Some("Stopped"), Some("12.5"), true),
                vm("c", None, None, false),
                vm("d", Some("Running"), Some("0.1"), true),
            ],
            sims: vec![],
        };
        let (c, projected) = summarize(&m, "proj", "USD");
        assert_eq!(c.virtual_machines, 4);
        assert_eq!(c.by_phase["Running"], 2);
        assert_eq!(c.by_phase["Pending"], 1);
        assert_eq!(format_money(projected), "18.60");
        assert_eq!(format_money(Decimal::new(6, 0)), "6.00");
        assert_eq!(format_money(Decimal::new(893, 5)), "0.00893");
        // Billed elsewhere (moved out) or priced in another currency: not in this project's projection.
        let mut moved = vm("e", Some("Running"), Some("100"), true);
        Arc::make_mut(&mut moved).status.as_mut().unwrap().project = Some("other".into());
        let mut euro = vm("f", Some("Running"), Some("100"), true);
        Arc::make_mut(&mut euro).status.as_mut().unwrap().currency = Some("EUR".into());
        let m = Members {
            vms: vec![vm("a", Some("Running"), Some("6"), true), moved, euro],
            sims: vec![],
        };
        assert_eq!(format_money(summarize(&m, "proj", "USD").1), "6.00");
    }

    #[test]
    fn a_stop_counts_what_it_actually_stopped() {
        let m = Members {
            vms: vec![
                vm("a", Some("Stopped"), Some("6"), true),
                vm("b", Some("Running"), Some("6"), true),
                vm("c", None, None, false),
            ],
            sims: vec![],
        };
        assert_eq!(
            stopped(&m, "proj"),
            "1 of 2 virtual machines stopped (1 still running: ObserveOnly, a suspended account, or stopping now)"
        );
        let m = Members {
            vms: vec![vm("a", Some("Stopped"), Some("6"), true)],
            sims: vec![],
        };
        assert_eq!(stopped(&m, "proj"), "1 of 1 virtual machines stopped");
    }
}

//! A Project's decide step, pure: from its members, what the ledger says of its money and what its
//! Subscription entitles it to, to its status, its health and when to look again. Table-tested below;
//! `apply` reads (caches, ledger), calls [`decide`], and the framework writes the result.

use std::time::Duration;

use super::entitlement::Entitlement;
use super::{Members, stopped, summarize};
use crate::crd::conditions::{Health, reason};
use crate::crd::project::ProjectTransfer;
use crate::crd::project::{CreditExhaustedPolicy, EntitlementLostPolicy, ProjectSpec};
use crate::crd::{ProjectStatus, project::ProjectMembers};
use crate::ledger::{format_amount, format_money, format_rounded};

/// What the ledger says of a Project's money, in its currency (nanos).
#[derive(Clone, Copy, Debug, Default)]
pub struct Money {
    /// Cost this month so far.
    pub month_to_date: i64,
    /// Credit ever granted.
    pub granted: i64,
    /// Credit used.
    pub used: i64,
}

/// What decide reads.
pub struct Inputs<'a> {
    /// The Project's name.
    pub name: &'a str,
    /// Its spec.
    pub spec: &'a ProjectSpec,
    /// Its status before this reconcile (costs are kept while the ledger is not read).
    pub previous: &'a ProjectStatus,
    /// Its members.
    pub members: &'a Members,
    /// The ledger's word, when there is a ledger.
    pub money: Option<Money>,
    /// Its entitlement, when it names a Subscription.
    pub entitlement: Option<Entitlement>,
    /// Now, unix seconds.
    pub now: i64,
    /// How often credit is looked at again (grants arrive through the ledger).
    pub ledger_poll: Duration,
}

/// What decide concluded.
#[derive(Debug)]
pub struct Decision {
    /// The status to write.
    pub status: ProjectStatus,
    /// The Project's health.
    pub health: Health,
    /// Look again this soon (the ledger is polled).
    pub requeue_after: Option<Duration>,
    /// Look again at the latest then (a grace period ends).
    pub resync_at_most: Option<Duration>,
}

/// The decide step.
pub fn decide(i: Inputs) -> Decision {
    let (counts, projected) = summarize(i.members, i.name, &i.spec.currency);
    let mut health = Health::ready(count_message(&counts, i.spec));
    let mut status = ProjectStatus {
        members: Some(counts),
        projected_monthly_cost: Some(format_money(projected)),
        month_to_date_cost: i.previous.month_to_date_cost.clone(),
        month_to_date_cost_rounded: i.previous.month_to_date_cost_rounded.clone(),
        credit_balance: i.previous.credit_balance.clone(),
        credit_balance_rounded: i.previous.credit_balance_rounded.clone(),
        transfer: transfer_of(i.members, i.now),
        vpcs: i.previous.vpcs.clone(),
        ..Default::default()
    };
    if let Some(m) = i.money {
        let cur = &i.spec.currency;
        let balance = m.granted - m.used;
        status.month_to_date_cost = Some(format_amount(m.month_to_date));
        status.month_to_date_cost_rounded = Some(format_rounded(m.month_to_date, cur));
        // Credit applies to prepaid projects: those that were ever granted credit.
        status.credit_balance = (m.granted > 0).then(|| format_amount(balance));
        status.credit_balance_rounded = (m.granted > 0).then(|| format_rounded(balance, cur));
        if m.granted > 0 && balance <= 0 {
            let what = match i.spec.on_credit_exhausted {
                CreditExhaustedPolicy::Stop => format!(
                    "onCreditExhausted Stop: {}; no new ones are created until credit is granted",
                    stopped(i.members, i.name)
                ),
                CreditExhaustedPolicy::Notify => {
                    "onCreditExhausted is Notify: nothing is stopped".to_string()
                }
            };
            health = Health::not_ready(
                reason::CREDIT_EXHAUSTED,
                format!(
                    "credit exhausted (balance {}); {what}",
                    format_amount(balance)
                ),
            );
        }
    }
    let mut resync_at_most = None;
    if let Some(Entitlement {
        status: e,
        until,
        pending,
    }) = i.entitlement
    {
        if !e.entitled {
            health = not_entitled(i.spec, &e.subscription, &e.message, pending);
        }
        resync_at_most =
            until.map(|t| Duration::from_secs(u64::try_from(t - i.now).unwrap_or(0) + 1));
        status.entitlement = Some(e);
    }
    Decision {
        status,
        health,
        requeue_after: i.money.map(|_| i.ledger_poll),
        resync_at_most,
    }
}

/// The member VMs' outbound transfer this month (UTC), summed from their status; `None` when none of
/// them has a figure for this month.
pub fn transfer_of(members: &Members, now: i64) -> Option<ProjectTransfer> {
    let month = crate::cloud::Month::of(now).to_string();
    let mut sum: Option<ProjectTransfer> = None;
    for t in members
        .vms
        .iter()
        .filter_map(|vm| vm.status.as_ref()?.transfer.as_ref())
        .filter(|t| t.month == month)
    {
        let s = sum.get_or_insert_with(|| ProjectTransfer {
            month: month.clone(),
            ..Default::default()
        });
        s.outbound_bytes += t.outbound_bytes;
        s.allowance_bytes += t.allowance_bytes.unwrap_or(0);
        s.overage_bytes += t.overage_billed;
    }
    sum
}

fn count_message(counts: &ProjectMembers, spec: &ProjectSpec) -> String {
    let mut message = format!(
        "{} virtual machines, {} SIM cards",
        counts.virtual_machines, counts.sim_cards
    );
    if let Some(max) = spec.limits.as_ref().and_then(|l| l.max_virtual_machines) {
        message.push_str(&format!(" (limit {max} virtual machines)"));
    }
    message
}

/// Not entitled by its Subscription: converging while the Subscription has no answer from Stripe yet
/// (`Reconciling`, so kstatus reads it as in progress); a known refusal is a steady `Ready=False`.
fn not_entitled(spec: &ProjectSpec, subscription: &str, why: &str, pending: bool) -> Health {
    let what = match spec.on_entitlement_lost {
        EntitlementLostPolicy::Stop => {
            "its virtual machines are stopped and its SIMs disabled, and nothing new is created, until it is entitled again"
        }
        EntitlementLostPolicy::Notify => {
            "onEntitlementLost is Notify: nothing is stopped, but nothing new is created"
        }
    };
    let message = format!("not entitled by Subscription {subscription:?}: {why}; {what}");
    if pending {
        Health::progressing(reason::SUBSCRIPTION_INACTIVE, message)
    } else {
        Health::not_ready(reason::SUBSCRIPTION_INACTIVE, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::project::EntitlementStatus;

    #[test]
    fn the_projects_transfer_sums_its_vms_this_month_only() {
        use crate::crd::virtual_machine::VmTransfer;
        let vm = |month: &str, out: i64, allowance: Option<i64>, over: i64| {
            let mut vm: crate::crd::VirtualMachine = serde_json::from_value(serde_json::json!({
                "apiVersion": "quartermaster.dev/v1alpha1", "kind": "VirtualMachine",
                "metadata": {"name": "web", "namespace": "a"},
                "spec": {"providerConfigRef": {"name": "do"}, "region": "r", "size": "s", "image": "i"}
            }))
            .unwrap();
            vm.status.get_or_insert_with(Default::default).transfer = Some(VmTransfer {
                month: month.into(),
                outbound_bytes: out,
                allowance_bytes: allowance,
                overage_billed: over,
                ..Default::default()
            });
            std::sync::Arc::new(vm)
        };
        let now = 1_764_892_800; // 2025-12-05
        let members = Members {
            vms: vec![
                vm("2025-12", 700, Some(1000), 0),
                vm("2025-12", 1500, Some(1000), 500),
                vm("2025-12", 30, None, 0),
                vm("2025-11", 9999, Some(1), 9998),
            ],
            sims: Vec::new(),
        };
        let t = transfer_of(&members, now).unwrap();
        assert_eq!(
            (
                t.month.as_str(),
                t.outbound_bytes,
                t.allowance_bytes,
                t.overage_bytes
            ),
            ("2025-12", 2230, 2000, 500)
        );
        let none = Members {
            vms: Vec::new(),
            sims: Vec::new(),
        };
        assert_eq!(transfer_of(&none, now), None);
    }

    fn spec(policy: &str) -> ProjectSpec {
        serde_json::from_value(serde_json::json!({
            "currency": "USD", "onCreditExhausted": policy, "limits": {"maxVirtualMachines": 3}
        }))
        .unwrap()
    }

    fn run(spec: &ProjectSpec, money: Option<Money>, entitlement: Option<Entitlement>) -> Decision {
        let previous = ProjectStatus {
            month_to_date_cost: Some("9.00".into()),
            ..Default::default()
        };
        decide(Inputs {
            name: "p",
            spec,
            previous: &previous,
            members: &Members {
                vms: Vec::new(),
                sims: Vec::new(),
            },
            money,
            entitlement,
            now: 1_000,
            ledger_poll: Duration::from_secs(30),
        })
    }

    const USD: i64 = 1_000_000_000;

    #[test]
    fn money_decides_the_balance_and_the_credit_stop() {
        let (stop, notify) = (spec("Stop"), spec("Notify"));
        // No ledger: costs kept as they were, no polling.
        let d = run(&stop, None, None);
        assert_eq!(d.status.month_to_date_cost.as_deref(), Some("9.00"));
        assert_eq!(d.requeue_after, None);
        let Health::Ready { message, .. } = &d.health else {
            panic!("{:?}", d.health)
        };
        assert_eq!(
            message,
            "0 virtual machines, 0 SIM cards (limit 3 virtual machines)"
        );
        // (granted, used) → (balance shown, credit stop)
        let rows = [
            (0, 5 * USD, None, false),
            (10 * USD, 4 * USD, Some("6.00"), false),
            (10 * USD, 10 * USD, Some("0.00"), true),
            (10 * USD, 12 * USD, Some("-2.00"), true),
        ];
        for (granted, used, balance, exhausted) in rows {
            let money = Money {
                month_to_date: 2 * USD,
                granted,
                used,
            };
            for s in [&stop, &notify] {
                let d = run(s, Some(money), None);
                assert_eq!(
                    d.status.credit_balance.as_deref(),
                    balance,
                    "{granted} {used}"
                );
                assert_eq!(d.status.month_to_date_cost.as_deref(), Some("2.00"));
                assert_eq!(d.requeue_after, Some(Duration::from_secs(30)));
                match &d.health {
                    Health::NotReady { reason, message } => {
                        assert!(exhausted, "{granted} {used}: {message}");
                        assert_eq!(reason, reason::CREDIT_EXHAUSTED);
                        let stops = s.on_credit_exhausted == CreditExhaustedPolicy::Stop;
                        assert_eq!(message.contains("nothing is stopped"), !stops, "{message}");
                    }
                    h => assert!(!exhausted, "{granted} {used}: {h:?}"),
                }
            }
        }
    }

    #[test]
    fn an_entitlement_lost_is_reconciling_while_pending_and_bounds_the_resync() {
        let entitlement = |entitled: bool, pending: bool| Entitlement {
            status: EntitlementStatus {
                entitled,
                subscription: "pro".into(),
                message: "past due".into(),
                ..Default::default()
            },
            until: Some(1_100),
            pending,
        };
        let s = spec("Stop");
        let d = run(&s, None, Some(entitlement(true, false)));
        assert!(matches!(d.health, Health::Ready { .. }));
        assert_eq!(d.resync_at_most, Some(Duration::from_secs(101)));
        assert!(d.status.entitlement.is_some());
        let d = run(&s, None, Some(entitlement(false, true)));
        assert!(
            matches!(d.health, Health::Progressing { .. }),
            "{:?}",
            d.health
        );
        let d = run(&s, None, Some(entitlement(false, false)));
        let Health::NotReady { reason, message } = &d.health else {
            panic!("{:?}", d.health)
        };
        assert_eq!(reason, reason::SUBSCRIPTION_INACTIVE);
        assert!(message.contains("\"pro\": past due"), "{message}");
        // An entitlement lost outranks a credit stop.
        let money = Money {
            month_to_date: 0,
            granted: USD,
            used: USD,
        };
        let d = run(&s, Some(money), Some(entitlement(false, false)));
        assert!(
            matches!(&d.health, Health::NotReady { reason, .. } if reason == reason::SUBSCRIPTION_INACTIVE)
        );
    }
}

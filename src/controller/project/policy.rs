//! A Project's money policy, pure, as its members ask it: may this VM count towards (and be billed to)
//! this Project (its currency, `limits.maxVirtualMachines`, `limits.maxMonthlySpend`), in which order are
//! waiting members admitted, and does its credit stop its members. The VM reconciler (and the kinds after
//! it) ask here; the Project owns the answers.
//!
//! # Guarantees
//! - A VM is *admitted* to a Project once its `status.project` names it; it holds a slot until it leaves.
//! - Pending VMs (whose `spec.projectRef` names the Project but that are not admitted yet) are admitted
//!   in (creationTimestamp, name) order, so two reconciles running at once agree on which ones fit.
//! - Amounts in different currencies are never added: only members priced in the Project's currency count
//!   towards `maxMonthlySpend`.

use kube::ResourceExt;
use rust_decimal::Decimal;

use crate::crd::project::{CreditExhaustedPolicy, EntitlementLostPolicy};
use crate::crd::{Project, VirtualMachine};

use crate::crd::conditions::reason;
use crate::crd::project::ProjectLimits;

/// Order of admission: creation time (unix seconds), then name.
pub type AdmissionOrder = (Option<i64>, String);

/// Another VM of the Project (never the one being admitted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its admission order.
    pub order: AdmissionOrder,
    /// Whether it already holds a slot (its `status.project` names the Project).
    pub admitted: bool,
    /// Its monthly price and currency, when known.
    pub monthly: Option<(Decimal, String)>,
}

/// What admission needs to know about a Project.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectState {
    /// The Project's name.
    pub name: String,
    /// Its UID.
    pub uid: String,
    /// Its currency.
    pub currency: String,
    /// Whether members priced in other currencies are accepted.
    pub allow_other_currencies: bool,
    /// Its limits.
    pub limits: ProjectLimits,
    /// Why its VMs must stop (credit exhausted with `onCreditExhausted: Stop`, or its Subscription no
    /// longer entitles it with `onEntitlementLost: Stop`), if they must.
    pub credit_stop: Option<MoneyStop>,
    /// Why nothing new may be created (a stop, or a lost entitlement whatever the policy), if so.
    pub new_block: Option<MoneyStop>,
    /// How full it is, for the VM being admitted.
    pub occupancy: Occupancy,
}

/// How full a Project is, as seen by one VM asking to be admitted (never counting that VM itself).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Occupancy {
    /// VMs holding a slot.
    pub held: usize,
    /// VMs waiting for admission that come before the candidate.
    pub ahead: usize,
    /// Monthly price of the VMs holding a slot (and, when a VM is admitted, of the Project's snapshots'
    /// storage), in the Project's currency only.
    pub spend: Decimal,
}

impl Occupancy {
    /// The reference definition, from the other members: the membership index keeps the same figures
    /// as running totals.
    pub fn of(members: &[Member], order: &AdmissionOrder, currency: &str) -> Self {
        Self {
            held: members.iter().filter(|m| m.admitted).count(),
            ahead: members
                .iter()
                .filter(|m| !m.admitted && m.order < *order)
                .count(),
            spend: members
                .iter()
                .filter(|m| m.admitted)
                .filter_map(|m| m.monthly.as_ref())
                .filter(|(_, cur)| cur == currency)
                .map(|(price, _)| *price)
                .sum(),
        }
    }
}

/// The VM asking to be admitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Its admission order.
    pub order: AdmissionOrder,
    /// Its monthly price.
    pub monthly: Decimal,
    /// The currency of that price.
    pub currency: String,
}

/// A refusal: the Stalled reason and message.
pub type Refusal = (&'static str, String);

/// Whether `p` admits `c` (`p.occupancy` as seen by `c`).
pub fn admit(p: &ProjectState, c: &Candidate) -> Result<(), Refusal> {
    if c.currency != p.currency && !p.allow_other_currencies {
        return Err((
            reason::CURRENCY_MISMATCH,
            format!(
                "this VM is priced in {} but Project {:?} bills in {}; amounts in different currencies are never added together (set the Project's spec.allowOtherCurrencies to accept it)",
                c.currency, p.name, p.currency
            ),
        ));
    }
    if let Some(max) = p.limits.max_virtual_machines {
        let (held, ahead) = (p.occupancy.held, p.occupancy.ahead);
        if held + ahead + 1 > max as usize {
            return Err((
                reason::LIMIT_EXCEEDED,
                format!(
                    "Project {:?} allows {max} virtual machines (limits.maxVirtualMachines): {held} exist and {ahead} earlier one(s) wait, so this one does not fit",
                    p.name
                ),
            ));
        }
    }
    let limit = p
        .limits
        .max_monthly_spend
        .as_deref()
        .and_then(|m| m.parse::<Decimal>().ok());
    if let Some(limit) = limit
        && c.currency == p.currency
    {
        let existing = p.occupancy.spend;
        if existing + c.monthly > limit {
            return Err((
                reason::LIMIT_EXCEEDED,
                format!(
                    "Project {:?} limits monthly spend to {limit} {}: its VMs and snapshots cost {existing} a month and this one would add {}",
                    p.name, p.currency, c.monthly
                ),
            ));
        }
    }
    Ok(())
}

/// Why a Project's members stop or wait: the condition reason and message they show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoneyStop {
    /// `CreditExhausted`, `SubscriptionInactive` or `SpendLimitReached`.
    pub reason: &'static str,
    /// Why, for the member's condition.
    pub message: String,
}

/// What admission needs of a Project.
pub fn project_state(p: &Project, occupancy: Occupancy) -> ProjectState {
    ProjectState {
        name: p.name_any(),
        uid: p.uid().unwrap_or_default(),
        currency: p.spec.currency.clone(),
        allow_other_currencies: p.spec.allow_other_currencies,
        limits: effective_limits(p),
        credit_stop: credit_stop(p),
        new_block: new_block(p),
        occupancy,
    }
}

/// The lower of two limits, either of which may be unset.
pub fn lower<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The Project's limits: its own, capped by its plan's (the lower of each wins).
pub fn effective_limits(p: &Project) -> ProjectLimits {
    let own = p.spec.limits.clone().unwrap_or_default();
    let plan = p
        .status
        .as_ref()
        .and_then(|s| s.entitlement.as_ref())
        .and_then(|e| e.limits.clone());
    let Some(plan) = plan else {
        return own;
    };
    let spend = |s: &Option<String>| s.as_deref().and_then(|m| m.parse::<Decimal>().ok());
    ProjectLimits {
        max_virtual_machines: lower(own.max_virtual_machines, plan.max_virtual_machines),
        max_sim_cards: lower(own.max_sim_cards, plan.max_sim_cards),
        max_monthly_spend: lower(
            spend(&own.max_monthly_spend),
            spend(&plan.max_monthly_spend),
        )
        .map(|d| d.to_string()),
    }
}

/// Why a Project's TokenBudgets serve nothing more this month: its month-to-date cost (every meter in
/// its currency, LLM tokens included) reached its effective `limits.maxMonthlySpend`. Token spend has
/// no monthly price to admit in advance as a VM's has, so it counts as it is spent.
pub fn spend_limit_reached(p: &Project) -> Option<MoneyStop> {
    let limit = effective_limits(p)
        .max_monthly_spend?
        .parse::<Decimal>()
        .ok()?;
    let spent = p
        .status
        .as_ref()?
        .month_to_date_cost
        .as_deref()?
        .parse::<Decimal>()
        .ok()?;
    (spent >= limit).then(|| MoneyStop {
        reason: reason::SPEND_LIMIT_REACHED,
        message: format!(
            "Project {:?} has spent {spent} {} this month, its limit (limits.maxMonthlySpend) is {limit}; \
             its TokenBudgets serve again next month, or when the limit is raised",
            p.name_any(),
            p.spec.currency
        ),
    })
}

/// Why a Project's Subscription does not entitle it, if it does not.
fn entitlement_lost(p: &Project) -> Option<MoneyStop> {
    let e = p.status.as_ref()?.entitlement.as_ref()?;
    (!e.entitled).then(|| MoneyStop {
        reason: reason::SUBSCRIPTION_INACTIVE,
        message: format!(
            "Project {:?} is not entitled by Subscription {:?}: {}",
            p.name_any(),
            e.subscription,
            e.message
        ),
    })
}

/// Why nothing new may be created for a Project's members: its money stop, or a lost entitlement
/// (`onEntitlementLost: Notify` keeps what runs, but adds nothing).
pub fn new_block(p: &Project) -> Option<MoneyStop> {
    credit_stop(p).or_else(|| entitlement_lost(p))
}

/// Why a Project's members must stop (and new ones wait): its credit is exhausted and
/// `onCreditExhausted` is `Stop`, or its Subscription does not entitle it and `onEntitlementLost` is
/// `Stop`.
pub fn credit_stop(p: &Project) -> Option<MoneyStop> {
    credit_exhausted(p).or_else(|| {
        (p.spec.on_entitlement_lost == EntitlementLostPolicy::Stop)
            .then(|| entitlement_lost(p))
            .flatten()
    })
}

fn credit_exhausted(p: &Project) -> Option<MoneyStop> {
    if p.spec.on_credit_exhausted != CreditExhaustedPolicy::Stop {
        return None;
    }
    let balance = p
        .status
        .as_ref()?
        .credit_balance
        .as_deref()?
        .parse::<Decimal>()
        .ok()?;
    (balance <= Decimal::ZERO).then(|| MoneyStop {
        reason: reason::CREDIT_EXHAUSTED,
        message: format!(
            "Project {:?} has no credit left (balance {balance} {}, onCreditExhausted: Stop); grant credit to resume",
            p.name_any(),
            p.spec.currency
        ),
    })
}

/// The admission order of a VM: (creation time, name).
pub fn order_of(vm: &VirtualMachine) -> AdmissionOrder {
    (
        vm.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second()),
        vm.name_any(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(t: i64, admitted: bool, price: Option<(&str, &str)>) -> Member {
        Member {
            order: (Some(t), format!("m{t}")),
            admitted,
            monthly: price.map(|(p, c)| (p.parse().unwrap(), c.to_string())),
        }
    }

    /// A Project with `members`, as seen by a candidate created at time 5.
    fn project(max: Option<u32>, spend: Option<&str>, members: Vec<Member>) -> ProjectState {
        ProjectState {
            occupancy: Occupancy::of(&members, &(Some(5), "me".into()), "USD"),
            name: "acme".into(),
            uid: "uid-acme".into(),
            currency: "USD".into(),
            allow_other_currencies: false,
            limits: ProjectLimits {
                max_virtual_machines: max,
                max_sim_cards: None,
                max_monthly_spend: spend.map(str::to_string),
            },
            credit_stop: None,
            new_block: None,
        }
    }

    fn candidate(t: i64, price: &str, currency: &str) -> Candidate {
        Candidate {
            order: (Some(t), "me".into()),
            monthly: price.parse().unwrap(),
            currency: currency.into(),
        }
    }

    fn crd(spec: serde_json::Value, status: serde_json::Value) -> Project {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "Project",
            "metadata": {"name": "acme", "namespace": "n"}, "spec": spec, "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn the_plan_caps_limits_and_a_lost_entitlement_blocks_or_stops() {
        let spec = serde_json::json!({"limits": {"maxVirtualMachines": 5, "maxMonthlySpend": "100"},
                                      "subscriptionRef": {"name": "s"}});
        let entitled = |ok: bool| {
            serde_json::json!({"entitlement": {"subscription": "s", "entitled": ok, "message": "m",
                "limits": {"maxVirtualMachines": 2, "maxSimCards": 3, "maxMonthlySpend": "250.5"}}})
        };
        let p = crd(spec.clone(), entitled(true));
        let l = effective_limits(&p);
        assert_eq!(
            (
                l.max_virtual_machines,
                l.max_sim_cards,
                l.max_monthly_spend.as_deref()
            ),
            (Some(2), Some(3), Some("100"))
        );
        assert!(new_block(&p).is_none() && credit_stop(&p).is_none());
        // Notify: nothing stops, nothing new.
        let p = crd(spec.clone(), entitled(false));
        assert_eq!(new_block(&p).unwrap().reason, reason::SUBSCRIPTION_INACTIVE);
        assert!(credit_stop(&p).is_none());
        let mut stop = spec;
        stop["onEntitlementLost"] = "Stop".into();
        let p = crd(stop, entitled(false));
        assert_eq!(
            credit_stop(&p).unwrap().reason,
            reason::SUBSCRIPTION_INACTIVE
        );
        // Without a Subscription, the Project's own limits.
        let p = crd(
            serde_json::json!({"limits": {"maxVirtualMachines": 5}}),
            serde_json::json!({}),
        );
        assert_eq!(effective_limits(&p).max_virtual_machines, Some(5));
    }

    #[test]
    fn admission_table() {
        let usd = |p| Some((p, "USD"));
        let cases: Vec<(&str, ProjectState, Candidate, Option<&str>)> = vec![
            (
                "no limits",
                project(None, None, vec![]),
                candidate(5, "6", "USD"),
                None,
            ),
            (
                "room for one more",
                project(Some(2), None, vec![member(1, true, usd("6"))]),
                candidate(5, "6", "USD"),
                None,
            ),
            (
                "full",
                project(Some(1), None, vec![member(1, true, usd("6"))]),
                candidate(5, "6", "USD"),
                Some(reason::LIMIT_EXCEEDED),
            ),
            (
                "an earlier pending VM takes the last slot",
                project(
                    Some(2),
                    None,
                    vec![member(1, true, None), member(3, false, None)],
                ),
                candidate(5, "6", "USD"),
                Some(reason::LIMIT_EXCEEDED),
            ),
            (
                "a later pending VM does not",
                project(
                    Some(2),
                    None,
                    vec![member(1, true, None), member(9, false, None)],
                ),
                candidate(5, "6", "USD"),
                None,
            ),
            (
                "an old VM moving in still needs a free slot",
                project(Some(1), None, vec![member(9, true, usd("6"))]),
                candidate(0, "6", "USD"),
                Some(reason::LIMIT_EXCEEDED),
            ),
            (
                "spend within the limit",
                project(None, Some("12"), vec![member(1, true, usd("6"))]),
                candidate(5, "6", "USD"),
                None,
            ),
            (
                "spend over the limit",
                project(None, Some("11.99"), vec![member(1, true, usd("6"))]),
                candidate(5, "6", "USD"),
                Some(reason::LIMIT_EXCEEDED),
            ),
            (
                "pending members' prices do not count",
                project(
                    None,
                    Some("12"),
                    vec![member(1, true, usd("6")), member(2, false, usd("6"))],
                ),
                candidate(5, "6", "USD"),
                None,
            ),
            (
                "another currency is refused by default",
                project(None, None, vec![]),
                candidate(5, "6", "EUR"),
                Some(reason::CURRENCY_MISMATCH),
            ),
        ];
        for (name, p, c, want) in cases {
            let got = admit(&p, &c).err().map(|(r, _)| r);
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn token_budgets_stop_when_the_month_to_date_cost_reaches_the_spend_limit() {
        let with = |limit: Option<&str>, mtd: Option<&str>| {
            let mut p: Project = serde_json::from_value(serde_json::json!({
                "apiVersion": "quartermaster.dev/v1alpha1", "kind": "Project",
                "metadata": {"name": "acme", "namespace": "demo"},
                "spec": {"currency": "EUR", "limits": {"maxMonthlySpend": limit}},
                "status": {"monthToDateCost": mtd}
            }))
            .unwrap();
            if limit.is_none() {
                p.spec.limits = None;
            }
            spend_limit_reached(&p)
        };
        assert_eq!(with(Some("10"), Some("9.999999")), None);
        let stop = with(Some("10"), Some("10.000000")).expect("at the limit");
        assert_eq!(stop.reason, reason::SPEND_LIMIT_REACHED);
        assert!(
            stop.message.contains("spent 10.000000 EUR"),
            "{}",
            stop.message
        );
        assert!(with(Some("10"), Some("12.5")).is_some());
        assert_eq!(with(None, Some("1000")), None, "no limit");
        assert_eq!(with(Some("10"), None), None, "nothing read yet");
    }

    #[test]
    fn other_currencies_never_add_to_the_spend_limit() {
        let mut p = project(
            None,
            Some("10"),
            vec![
                member(1, true, Some(("9", "EUR"))),
                member(2, true, Some(("4", "USD"))),
            ],
        );
        p.allow_other_currencies = true;
        // 4 USD + 6 USD = 10 USD: fits; the 9 EUR member is not added in.
        assert_eq!(admit(&p, &candidate(5, "6", "USD")), Ok(()));
        // An allowed EUR VM does not count towards a USD limit.
        assert_eq!(admit(&p, &candidate(5, "100", "EUR")), Ok(()));
        let (_, msg) = admit(&p, &candidate(5, "6.01", "USD")).unwrap_err();
        assert!(msg.contains("cost 4 a month"), "{msg}");
    }
}

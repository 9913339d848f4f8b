//! The TokenBudget reconciler: generates the API keys into Secrets ([`keys`]), works out the current
//! period and its allocation (`spec.tokens`, or the Subscription's plan), tells the gateway whether the
//! budget's Project blocks it, and shows in status what the ledger holds: consumed (the budget's usage
//! rows, so it equals the ledger's), reserved (slices gateway replicas hold), remaining and cost; the
//! `Exhausted` condition, and an Event per alert threshold crossed, once per period.
//!
//! Enforcement is the gateway's and never waits for this reconciler (see `crate::gateway::enforce`):
//! status is a view, refreshed every `budget_status_interval` and at each period's end.

pub mod activity;
pub mod decide;
pub mod keys;
mod wire;

pub use wire::wire;

/// The TokenBudget kind, as the runtime runs it.
pub const WIRE: crate::controller::runtime::Wire =
    crate::controller::runtime::Wire::of::<TokenBudget>(wire);

crate::controller::runtime::framework::managed_namespaced!(TokenBudget, TokenBudgetStatus);

use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use super::project::policy;
use decide::Block;

use super::runtime::framework::{Cleanup, Outcome, Progress, Reconciler, save_then_warn};
use super::vendor::namespace_allowed;
use super::{Context, Error};
use crate::budget::period::{self, Window};
use crate::crd::conditions::{Condition, ConditionStatus, reason};
use crate::crd::provider_config::ProviderType;
use crate::crd::token_budget::BudgetPeriod;
use crate::crd::token_budget::BudgetRateLimits;
use crate::crd::{TokenBudget, TokenBudgetStatus};
use crate::ledger::format_amount;

/// Condition type: the current period's allocation is used up.
pub const EXHAUSTED: &str = "Exhausted";
/// Event reason: an alert threshold was crossed.
pub const THRESHOLD_CROSSED: &str = "BudgetThresholdCrossed";

/// Reconciles TokenBudgets.
pub struct TokenBudgetReconciler;

/// The period and allocation of a budget now, or why there is none.
fn period_and_allocation(ctx: &Context, b: &TokenBudget, now: i64) -> Result<(Window, u64), Error> {
    let ns = b.namespace().unwrap_or_default();
    if b.spec.period != BudgetPeriod::SubscriptionPeriod {
        let tz = period::zone(b.spec.time_zone.as_deref())
            .map_err(|e| Error::permanent(reason::INVALID_SPEC, e))?;
        let w = period::calendar(b.spec.period, &tz, now)
            .map_err(|e| Error::permanent(reason::INVALID_SPEC, e))?;
        let tokens = b.spec.tokens.ok_or_else(|| {
            Error::permanent(
                reason::INVALID_SPEC,
                "spec.tokens is required unless period is SubscriptionPeriod",
            )
        })?;
        return Ok((w, tokens));
    }
    let Some(r) = &b.spec.subscription_ref else {
        return Err(Error::permanent(
            reason::INVALID_SPEC,
            "period SubscriptionPeriod needs spec.subscriptionRef",
        ));
    };
    let caches = ctx.caches()?;
    let Some(sub) = caches
        .store::<crate::crd::Subscription>()?
        .get(&ObjectRef::new(&r.name).within(&ns))
    else {
        return Err(Error::Waiting {
            reason: reason::INVALID_SPEC,
            message: format!("Subscription {:?} not found; waiting for it", r.name),
        });
    };
    let st = sub.status.clone().unwrap_or_default();
    let Some(w) = period::subscription(
        st.current_period_start.as_deref(),
        st.current_period_end.as_deref(),
        now,
    ) else {
        return Err(Error::Waiting {
            reason: reason::PROGRESSING,
            message: format!(
                "Subscription {:?} has no current billing period yet",
                r.name
            ),
        });
    };
    if let Some(t) = b.spec.tokens {
        return Ok((w, t));
    }
    let plan = st.plan.as_deref().unwrap_or_default();
    let tokens = caches
        .store::<crate::crd::ProviderConfig>()?
        .get(&ObjectRef::new(&sub.spec.provider_config_ref.name))
        .and_then(|pc| pc.spec.plans.iter().find(|p| p.name == plan).cloned())
        .and_then(|p| p.entitlements)
        .and_then(|e| e.tokens_per_period);
    tokens.map(|t| (w, t)).ok_or_else(|| {
        Error::permanent(
            reason::INVALID_SPEC,
            format!(
                "spec.tokens is unset and Subscription {:?}'s plan {plan:?} sets no entitlements.tokensPerPeriod",
                r.name
            ),
        )
    })
}

/// Every upstream the budget names must be an `openai` ProviderConfig its namespace may use.
fn check_upstreams(ctx: &Context, b: &TokenBudget) -> Result<(), Error> {
    let ns = b.namespace().unwrap_or_default();
    let caches = ctx.caches()?;
    let names = std::iter::once(&b.spec.provider_config_ref)
        .chain(&b.spec.fallback_provider_config_refs)
        .map(|r| r.name.as_str());
    for name in names {
        let Some(pc) = caches
            .store::<crate::crd::ProviderConfig>()?
            .get(&ObjectRef::new(name))
        else {
            return Err(Error::permanent(
                reason::PROVIDER_CONFIG_NOT_FOUND,
                format!("ProviderConfig {name:?} not found"),
            ));
        };
        if pc.spec.type_ != ProviderType::Openai {
            return Err(Error::permanent(
                reason::PROVIDER_CONFIG_WRONG_TYPE,
                format!(
                    "ProviderConfig {name:?} is of type {}, not openai",
                    pc.spec.type_.as_str()
                ),
            ));
        }
        if !namespace_allowed(&pc.spec.allowed_namespaces, &ns) {
            return Err(Error::permanent(
                reason::PROVIDER_CONFIG_NOT_ALLOWED,
                format!(
                    "ProviderConfig {name:?} does not allow namespace {ns:?} (spec.allowedNamespaces)"
                ),
            ));
        }
    }
    Ok(())
}

/// The Project's side: its UID, the currency usage must be priced in, and why it blocks the budget.
fn project_terms(
    ctx: &Context,
    b: &TokenBudget,
    st: &mut TokenBudgetStatus,
) -> Result<Option<Block>, Error> {
    let Some(r) = &b.spec.project_ref else {
        st.project_uid = None;
        st.currency = None;
        st.blocked = None;
        st.rate_limits = b.spec.rate_limits.clone();
        return Ok(None);
    };
    let ns = b.namespace().unwrap_or_default();
    let Some(p) = ctx
        .caches()?
        .store::<crate::crd::Project>()?
        .get(&ObjectRef::new(&r.name).within(&ns))
    else {
        return Err(Error::permanent(
            reason::PROJECT_NOT_FOUND,
            format!("Project {:?} not found in namespace {ns:?}", r.name),
        ));
    };
    st.project_uid = p.uid();
    st.currency = (!p.spec.allow_other_currencies).then(|| p.spec.currency.clone());
    st.rate_limits = rate_limits(b, plan_entitlements(ctx, &p)?.as_ref());
    let block = policy::new_block(&p).or_else(|| policy::spend_limit_reached(&p));
    st.blocked = block.as_ref().map(|s| s.message.clone());
    let converging = p.status.as_ref().is_some_and(|s| {
        s.observed_generation == p.metadata.generation
            && crate::crd::conditions::find(&s.conditions, crate::crd::conditions::RECONCILING)
                .is_some_and(|c| c.status == ConditionStatus::True)
    });
    Ok(block.map(|s| Block {
        reason: s.reason,
        converging,
    }))
}

/// The entitlements of the plan the Project's Subscription is on, if it has one.
fn plan_entitlements(
    ctx: &Context,
    p: &crate::crd::Project,
) -> Result<Option<crate::crd::provider_config::PlanEntitlements>, Error> {
    let Some(r) = &p.spec.subscription_ref else {
        return Ok(None);
    };
    let caches = ctx.caches()?;
    let ns = p.namespace().unwrap_or_default();
    let Some(sub) = caches
        .store::<crate::crd::Subscription>()?
        .get(&ObjectRef::new(&r.name).within(&ns))
    else {
        return Ok(None);
    };
    let Some(plan) = sub.status.as_ref().and_then(|s| s.plan.clone()) else {
        return Ok(None);
    };
    Ok(caches
        .store::<crate::crd::ProviderConfig>()?
        .get(&ObjectRef::new(&sub.spec.provider_config_ref.name))
        .and_then(|pc| pc.spec.plans.iter().find(|x| x.name == plan).cloned())
        .and_then(|x| x.entitlements))
}

/// The rate limits each of `b`'s keys is held to: its own, lowered by its plan's (the lower wins).
fn rate_limits(
    b: &TokenBudget,
    plan: Option<&crate::crd::provider_config::PlanEntitlements>,
) -> Option<BudgetRateLimits> {
    use policy::lower;
    let own = b.spec.rate_limits.clone().unwrap_or(BudgetRateLimits {
        requests_per_minute: None,
        tokens_per_minute: None,
    });
    let limits = BudgetRateLimits {
        requests_per_minute: lower(
            own.requests_per_minute,
            plan.and_then(|e| e.requests_per_minute),
        ),
        tokens_per_minute: lower(
            own.tokens_per_minute,
            plan.and_then(|e| e.tokens_per_minute),
        ),
    };
    (limits.requests_per_minute.is_some() || limits.tokens_per_minute.is_some()).then_some(limits)
}

/// Sets condition `type_` in `conds`, keeping its transition time when its status did not change.
fn set_condition(
    conds: &mut Vec<Condition>,
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: String,
    generation: Option<i64>,
) {
    let now = super::runtime::framework::now();
    let old = conds.iter().position(|c| c.type_ == type_);
    let last = old
        .map(|i| &conds[i])
        .filter(|c| c.status == status)
        .map_or(now, |c| c.last_transition_time.clone());
    let c = Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message,
        last_transition_time: last,
        observed_generation: generation,
    };
    match old {
        Some(i) => conds[i] = c,
        None => conds.push(c),
    }
}

/// Fills consumed, reserved, remaining and cost from the ledger; returns the share used (percent).
async fn usage(
    ctx: &Context,
    b: &TokenBudget,
    w: Window,
    allocation: u64,
    st: &mut TokenBudgetStatus,
) -> Result<Option<u64>, Error> {
    let Some(ledger) = &ctx.ledger else {
        return Ok(None);
    };
    let uid = b.uid().unwrap_or_default();
    let consumed = ledger.consumed(&uid, w.start, w.end).await?;
    let period = ledger
        .budget_period(&uid, w.start)
        .await?
        .unwrap_or_default();
    let used = u64::try_from(consumed.tokens).unwrap_or(0);
    let granted = u64::try_from(period.granted).unwrap_or(0).max(used);
    st.consumed = Some(used);
    st.reserved = Some(granted - used);
    st.remaining = Some(allocation.saturating_sub(granted));
    st.cost = consumed
        .amounts
        .first()
        .map(|(cur, nanos)| format!("{} {cur}", format_amount(*nanos)));
    st.cost_rounded = consumed
        .amounts
        .first()
        .map(|(cur, nanos)| format!("{} {cur}", crate::ledger::format_rounded(*nanos, cur)));
    Ok(Some(
        used.saturating_mul(100)
            .checked_div(allocation)
            .unwrap_or(100),
    ))
}

/// The act step: the `Exhausted` condition and the thresholds crossed into status, saved before each
/// crossing is announced (no Event for a crossing the status does not hold, and a failed write never
/// repeats an alert).
async fn act(
    ctx: &Arc<Context>,
    obj: &Arc<TokenBudget>,
    progress: &mut Progress<TokenBudgetStatus>,
    d: &decide::Decision,
) -> Result<(), Error> {
    let st = &mut progress.status;
    let (exhausted, message) = &d.exhausted;
    let (status, reason) = if *exhausted {
        (ConditionStatus::True, "AllocationUsed")
    } else {
        (ConditionStatus::False, "WithinAllocation")
    };
    set_condition(
        &mut st.conditions,
        EXHAUSTED,
        status,
        reason,
        message.clone(),
        obj.metadata.generation,
    );
    if d.crossed.is_empty() {
        return Ok(());
    }
    st.alerted.extend(&d.crossed);
    st.alerted.sort_unstable();
    let (consumed, allocation) = (st.consumed.unwrap_or(0), st.allocation.unwrap_or(0));
    let id = format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any());
    let notes: Vec<String> = d
        .crossed
        .iter()
        .map(|t| format!("TokenBudget {id} crossed {t}% of its allocation ({consumed} of {allocation} tokens this period)"))
        .collect();
    save_then_warn(ctx, &**obj, progress, THRESHOLD_CROSSED, &notes).await
}

impl Reconciler<TokenBudget> for TokenBudgetReconciler {
    async fn apply(
        &self,
        obj: Arc<TokenBudget>,
        ctx: Arc<Context>,
        progress: &mut Progress<TokenBudgetStatus>,
    ) -> Result<Outcome, Error> {
        let now = jiff::Timestamp::now().as_second();
        check_upstreams(&ctx, &obj)?;
        let block = project_terms(&ctx, &obj, &mut progress.status)?;
        let previous = progress.status.api_keys.clone();
        progress.status.api_keys = keys::ensure(&ctx, &obj, &previous).await?;
        let (w, allocation) = period_and_allocation(&ctx, &obj, now)?;
        let start = period::rfc3339(w.start);
        // A budget at rest (same spec, period and allocation as its last status) reads the ledger only
        // when the gateway recorded activity since its last refresh: one query serves all budgets.
        let settled = progress.status.consumed.is_some()
            && progress.status.allocation == Some(allocation)
            && progress.status.period_start.as_deref() == Some(start.as_str())
            && progress.persisted().observed_generation == obj.metadata.generation;
        let uid = obj.uid().unwrap_or_default();
        let every = i64::try_from(ctx.config.budget_status_interval.as_secs()).unwrap_or(30);
        let read = match &ctx.ledger {
            Some(l) => {
                !settled
                    || ctx
                        .state::<activity::Activity>()
                        .needs_refresh(l, &uid, now, every)
                        .await?
            }
            None => false,
        };
        let st = &mut progress.status;
        if st.period_start.as_deref() != Some(start.as_str()) {
            st.alerted.clear();
        }
        st.period_start = Some(start);
        st.period_end = Some(period::rfc3339(w.end));
        st.allocation = Some(allocation);
        let share = if read {
            let share = usage(&ctx, &obj, w, allocation, st).await?;
            ctx.metrics.budget_ledger_reads.inc();
            ctx.state::<activity::Activity>().refreshed(&uid, now);
            share
        } else {
            st.consumed
                .map(|c| c.saturating_mul(100).checked_div(allocation).unwrap_or(100))
        };
        let d = decide::decide(&decide::Inputs {
            allocation,
            remaining: st.remaining,
            share,
            thresholds: &obj.spec.alert_thresholds,
            alerted: &st.alerted,
            block: block.zip(st.blocked.as_deref()),
            keys: obj.spec.api_keys.len(),
            period_end: w.end,
            now,
            refresh: ctx.config.budget_status_interval,
        });
        act(&ctx, &obj, progress, &d).await?;
        Ok(Outcome::new(d.health).requeue_after(d.requeue_after))
    }

    async fn cleanup(
        &self,
        obj: Arc<TokenBudget>,
        ctx: Arc<Context>,
        _progress: &mut Progress<TokenBudgetStatus>,
    ) -> Result<Cleanup, Error> {
        ctx.state::<activity::Activity>()
            .forget(&obj.uid().unwrap_or_default());
        // The key Secrets are owned by the budget (garbage-collected with it); the gateway forgets its
        // keys when it is deleted; its usage stays in the ledger.
        Ok(Cleanup::Done)
    }
}

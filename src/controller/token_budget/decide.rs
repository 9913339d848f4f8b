//! A TokenBudget's decide step, pure: from what was read (the period, the allocation, the share used,
//! the thresholds already announced, whether its Project blocks it) to what the status and Events say.
//! Table-tested below; `apply` reads, calls [`decide`], then acts (status, Events).

use std::time::Duration;

use crate::budget::period;
use crate::crd::conditions::Health;

/// Why a Project blocks its budgets.
#[derive(Clone, Copy, Debug)]
pub struct Block {
    /// The condition reason: `CreditExhausted`, `SubscriptionInactive` or `SpendLimitReached`.
    pub reason: &'static str,
    /// The Project is itself still converging (`Reconciling=True`): so is the budget.
    pub converging: bool,
}

/// What decide reads.
#[derive(Debug)]
pub struct Inputs<'a> {
    /// The period's allocation, tokens.
    pub allocation: u64,
    /// Tokens not yet granted this period (from the ledger), if read.
    pub remaining: Option<u64>,
    /// Percent of the allocation used, if known.
    pub share: Option<u64>,
    /// `spec.alertThresholds`, percent.
    pub thresholds: &'a [u8],
    /// Thresholds already announced this period (`status.alerted`).
    pub alerted: &'a [u8],
    /// The Project's block, with the message status gives it.
    pub block: Option<(Block, &'a str)>,
    /// How many API keys the budget has.
    pub keys: usize,
    /// The period's end and now, unix seconds.
    pub period_end: i64,
    /// Now, unix seconds.
    pub now: i64,
    /// How often the status is refreshed.
    pub refresh: Duration,
}

/// What decide concluded.
#[derive(Debug, PartialEq)]
pub struct Decision {
    /// Whether the period's allocation is used up (the `Exhausted` condition), and its message.
    pub exhausted: (bool, String),
    /// Thresholds crossed now, never announced this period (ascending, once each).
    pub crossed: Vec<u8>,
    /// The budget's health.
    pub health: Health,
    /// When to look again: the refresh interval, or the period's end if sooner.
    pub requeue_after: Duration,
}

/// The decide step.
pub fn decide(i: &Inputs) -> Decision {
    let (allocation, end) = (i.allocation, period::rfc3339(i.period_end));
    let exhausted = i.remaining == Some(0) || i.share.is_some_and(|s| s >= 100);
    let message = if exhausted {
        format!("the period's {allocation} tokens are used; they reset at {end}")
    } else {
        format!(
            "{} of {allocation} tokens left this period",
            i.remaining.unwrap_or(allocation)
        )
    };
    let mut crossed: Vec<u8> = i
        .thresholds
        .iter()
        .copied()
        .filter(|t| i.share.is_some_and(|s| s >= u64::from(*t)) && !i.alerted.contains(t))
        .collect();
    crossed.sort_unstable();
    crossed.dedup();
    let health = match i.block {
        Some((b, why)) if b.converging => {
            Health::progressing(b.reason, format!("the gateway refuses its keys: {why}"))
        }
        Some((b, why)) => {
            Health::not_ready(b.reason, format!("the gateway refuses its keys: {why}"))
        }
        None => Health::ready(format!("{} API key(s); period ends {end}", i.keys)),
    };
    let until_end = Duration::from_secs(u64::try_from((i.period_end - i.now).max(1)).unwrap_or(1));
    Decision {
        exhausted: (exhausted, message),
        crossed,
        health,
        requeue_after: i.refresh.min(until_end),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs<'a>(share: Option<u64>, remaining: Option<u64>, alerted: &'a [u8]) -> Inputs<'a> {
        Inputs {
            allocation: 1000,
            remaining,
            share,
            thresholds: &[80, 50, 80],
            alerted,
            block: None,
            keys: 2,
            period_end: 1_800_000_000,
            now: 1_799_999_000,
            refresh: Duration::from_secs(30),
        }
    }

    #[test]
    fn thresholds_are_announced_once_each_and_exhaustion_follows_the_ledger() {
        /// (share, remaining, already announced) → (crossed now, exhausted)
        type Row = (Option<u64>, Option<u64>, &'static [u8], &'static [u8], bool);
        let rows: [Row; 7] = [
            (None, None, &[], &[], false),
            (Some(49), Some(510), &[], &[], false),
            (Some(50), Some(500), &[], &[50], false),
            (Some(85), Some(150), &[], &[50, 80], false),
            (Some(85), Some(150), &[50], &[80], false),
            (Some(85), Some(150), &[50, 80], &[], false),
            // Granted in full (reserved, not yet used): exhausted before the share says so.
            (Some(90), Some(0), &[50, 80], &[], true),
        ];
        for (share, remaining, alerted, crossed, exhausted) in rows {
            let d = decide(&inputs(share, remaining, alerted));
            assert_eq!(d.crossed, crossed, "{share:?} after {alerted:?}");
            assert_eq!(d.exhausted.0, exhausted, "{share:?} {remaining:?}");
        }
        let d = decide(&inputs(Some(100), Some(3), &[50, 80]));
        assert!(d.exhausted.0);
        assert!(
            d.exhausted.1.contains("1000 tokens are used"),
            "{}",
            d.exhausted.1
        );
        let d = decide(&inputs(Some(10), Some(900), &[]));
        assert_eq!(d.exhausted.1, "900 of 1000 tokens left this period");
    }

    #[test]
    fn a_projects_block_decides_health_and_the_period_end_bounds_the_requeue() {
        let block = |converging| Block {
            reason: "CreditExhausted",
            converging,
        };
        let mut i = inputs(Some(10), Some(900), &[]);
        assert!(matches!(decide(&i).health, Health::Ready { .. }));
        assert_eq!(decide(&i).requeue_after, Duration::from_secs(30));
        i.block = Some((block(true), "the Project's credit is used"));
        assert!(matches!(decide(&i).health, Health::Progressing { .. }));
        i.block = Some((block(false), "the Project's credit is used"));
        let Health::NotReady { reason, message } = decide(&i).health else {
            panic!("{:?}", decide(&i).health)
        };
        assert_eq!(reason, "CreditExhausted");
        assert!(
            message.contains("the gateway refuses its keys"),
            "{message}"
        );
        i.now = i.period_end - 5;
        assert_eq!(decide(&i).requeue_after, Duration::from_secs(5));
        i.now = i.period_end + 5;
        assert_eq!(decide(&i).requeue_after, Duration::from_secs(1));
    }
}

//! TokenBudget logic shared by the controller and the gateway: period windows ([`period`]), API keys and
//! their hashes ([`keys`]), and one replica's share of a budget period ([`slice`]). Pure: no I/O.

pub mod keys;
pub mod period;
pub mod slice;

use crate::crd::TokenBudget;
use crate::crd::token_budget::ExhaustedPolicy;

/// Output tokens reserved for a request that sets no limit, unless the budget says otherwise.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;
/// Requests a minute a throttled, exhausted budget still serves, unless it says otherwise.
pub const DEFAULT_THROTTLE_RPM: u32 = 6;

/// The allocation of a budget's current period: `spec.tokens`, else what its status learned from the
/// Subscription's plan.
pub fn allocation(b: &TokenBudget) -> Option<u64> {
    b.spec
        .tokens
        .or_else(|| b.status.as_ref().and_then(|s| s.allocation))
}

/// Whether an exhausted budget keeps serving (slowly, billed beyond the allocation).
pub fn throttles(b: &TokenBudget) -> bool {
    b.spec.on_exhausted == ExhaustedPolicy::Throttle
}

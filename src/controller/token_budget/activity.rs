//! Which budgets have new usage: one ledger query per refresh interval for all of them (the gateway
//! records when it wrote a budget's usage, and every slice it takes or gives back is timed), so a
//! budget at rest costs no ledger read at its periodic reconcile.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::ledger::{Ledger, LedgerError};

/// Seconds of tolerance for clock differences between gateway and controller (and whole seconds).
const MARGIN: i64 = 5;

#[derive(Debug, Default)]
struct State {
    checked_at: Option<i64>,
    latest: HashMap<String, i64>,
    refreshed: HashMap<String, i64>,
}

/// The activity seen and each budget's last refresh (this process's memory: after a restart every
/// budget refreshes once).
#[derive(Debug, Default)]
pub struct Activity {
    state: Mutex<State>,
    querying: tokio::sync::Mutex<()>,
}

impl crate::controller::runtime::state::KindState for Activity {}

impl Activity {
    /// Whether budget `uid` must read the ledger at `now`: never refreshed by this process, or active
    /// since its last refresh. The activity is read at most every `every` seconds, for all budgets.
    pub async fn needs_refresh(
        &self,
        ledger: &Ledger,
        uid: &str,
        now: i64,
        every: i64,
    ) -> Result<bool, LedgerError> {
        if !self.lock().refreshed.contains_key(uid) {
            return Ok(true);
        }
        let _one = self.querying.lock().await;
        let since = {
            let s = self.lock();
            match s.checked_at {
                Some(t) if now - t < every => None,
                Some(t) => Some(t - MARGIN),
                None => Some(0),
            }
        };
        if let Some(since) = since {
            let rows = ledger.budgets_active_since(since).await?;
            let mut s = self.lock();
            for (b, at) in rows {
                let e = s.latest.entry(b).or_insert(at);
                *e = (*e).max(at);
            }
            s.checked_at = Some(now);
        }
        let s = self.lock();
        let refreshed = s.refreshed.get(uid).copied().unwrap_or(i64::MIN);
        Ok(s.latest.get(uid).is_some_and(|a| *a >= refreshed - MARGIN))
    }

    /// Budget `uid` read the ledger at `now`.
    pub fn refreshed(&self, uid: &str, now: i64) {
        let mut s = self.lock();
        s.refreshed.insert(uid.to_string(), now);
        // Activity long before every refresh since is no longer needed.
        if s.latest.get(uid).is_some_and(|a| *a < now - 10 * MARGIN) {
            s.latest.remove(uid);
        }
    }

    /// Forgets a deleted budget.
    pub fn forget(&self, uid: &str) {
        let mut s = self.lock();
        s.refreshed.remove(uid);
        s.latest.remove(uid);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

//! Stripe's per-subscription limits, held client-side: at most 200 quantity updates an hour and 10 new
//! invoices a minute per subscription. A change that would exceed them waits (`Ready=False`
//! `RateLimited`, looked at again) instead of being refused by Stripe.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Updates of one subscription per hour.
pub const UPDATES_PER_HOUR: usize = 200;
/// New invoices of one subscription per minute.
pub const INVOICES_PER_MINUTE: usize = 10;

/// What a change costs against the limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// An item update (price or quantity).
    Update,
    /// An item update that invoices now (`AlwaysInvoice`).
    UpdateAndInvoice,
}

/// Recent changes per subscription (unix seconds), this process's own.
#[derive(Debug, Default)]
pub struct Windows {
    updates: Mutex<HashMap<String, VecDeque<i64>>>,
    invoices: Mutex<HashMap<String, VecDeque<i64>>>,
}

impl crate::controller::runtime::state::KindState for Windows {}

fn admit(
    m: &Mutex<HashMap<String, VecDeque<i64>>>,
    key: &str,
    now: i64,
    span: i64,
    max: usize,
) -> Result<(), i64> {
    let mut m = m.lock().unwrap_or_else(|p| p.into_inner());
    let q = m.entry(key.to_string()).or_default();
    while q.front().is_some_and(|t| *t <= now - span) {
        q.pop_front();
    }
    if q.len() >= max {
        return Err(q.front().map_or(now, |t| t + span));
    }
    Ok(())
}

fn note(m: &Mutex<HashMap<String, VecDeque<i64>>>, key: &str, now: i64) {
    let mut m = m.lock().unwrap_or_else(|p| p.into_inner());
    m.entry(key.to_string()).or_default().push_back(now);
}

impl Windows {
    /// Whether subscription `id` may make `change` at `now`; `Err` says when it may.
    pub fn admit(&self, id: &str, change: Change, now: i64) -> Result<(), i64> {
        admit(&self.updates, id, now, 3600, UPDATES_PER_HOUR)?;
        if change == Change::UpdateAndInvoice {
            admit(&self.invoices, id, now, 60, INVOICES_PER_MINUTE)?;
        }
        Ok(())
    }

    /// Records that `change` was sent for subscription `id` at `now`.
    pub fn note(&self, id: &str, change: Change, now: i64) {
        note(&self.updates, id, now);
        if change == Change::UpdateAndInvoice {
            note(&self.invoices, id, now);
        }
    }

    /// Forgets a subscription (its object is gone).
    pub fn forget(&self, id: &str) {
        for m in [&self.updates, &self.invoices] {
            m.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_invoices_a_minute_and_two_hundred_updates_an_hour() {
        let w = Windows::default();
        for i in 0..10 {
            w.admit("s", Change::UpdateAndInvoice, 1000 + i).unwrap();
            w.note("s", Change::UpdateAndInvoice, 1000 + i);
        }
        assert_eq!(w.admit("s", Change::UpdateAndInvoice, 1010), Err(1060));
        assert!(
            w.admit("s", Change::Update, 1010).is_ok(),
            "plain updates still fit"
        );
        assert!(w.admit("s", Change::UpdateAndInvoice, 1060).is_ok());
        assert!(w.admit("other", Change::UpdateAndInvoice, 1010).is_ok());
        for i in 0..190 {
            w.note("s", Change::Update, 2000 + i);
        }
        assert_eq!(w.admit("s", Change::Update, 3000), Err(4600));
        assert!(w.admit("s", Change::Update, 4600).is_ok());
        w.forget("s");
        assert!(w.admit("s", Change::Update, 3000).is_ok());
    }
}

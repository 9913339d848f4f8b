//! One listing of a vendor account serves every object of that account: at 10,000 objects a resync costs
//! ~100 list calls (100 a page) instead of a GET per object. The listing is made by one reconcile at a
//! time per account (the others wait for it and use it), and kept for `max_age`; a client change (new
//! credentials or endpoint) starts afresh. Used for 1NCE's SIMs and Stripe's subscriptions.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::cloud::CloudError;

/// One listing: when it started (unix seconds) and the objects by ID.
pub struct Listing<T> {
    /// When the listing started (unix seconds): it shows nothing changed after.
    pub at: i64,
    /// The objects by their vendor ID.
    pub items: Arc<HashMap<String, T>>,
}

impl<T> Clone for Listing<T> {
    fn clone(&self) -> Self {
        Self {
            at: self.at,
            items: self.items.clone(),
        }
    }
}

struct Slot<T> {
    listed: Option<(Instant, u64, Listing<T>)>,
}

/// The latest listing of each account.
pub struct Listings<T> {
    slots: std::sync::Mutex<HashMap<String, Arc<Mutex<Slot<T>>>>>,
}

impl<T> Default for Listings<T> {
    fn default() -> Self {
        Self {
            slots: std::sync::Mutex::default(),
        }
    }
}

impl<T: Send + Sync + 'static> super::state::KindState for Listings<T> {}

impl<T> Listings<T> {
    /// The objects of account `pc` (client fingerprint `fingerprint`), listed at most `max_age` ago, or
    /// listed now with `list`.
    pub async fn get<F, Fut>(
        &self,
        pc: &str,
        fingerprint: u64,
        max_age: Duration,
        list: F,
    ) -> Result<Listing<T>, CloudError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<HashMap<String, T>, CloudError>>,
    {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(pc.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(Slot { listed: None })))
            .clone();
        let mut slot = slot.lock().await;
        if let Some((at, fp, listing)) = &slot.listed
            && *fp == fingerprint
            && at.elapsed() < max_age
        {
            return Ok(listing.clone());
        }
        let started = Instant::now();
        let at = jiff::Timestamp::now().as_second();
        let listing = Listing {
            at,
            items: Arc::new(list().await?),
        };
        slot.listed = Some((started, fingerprint, listing.clone()));
        Ok(listing)
    }

    /// Forgets the listing of `pc` (its ProviderConfig is gone).
    pub fn forget(&self, pc: &str) {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(pc);
    }
}

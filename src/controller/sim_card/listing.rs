//! One listing of a 1NCE account's SIMs serves every SimCard of that account: at 10,000 SIMs a resync
//! costs ~100 list calls (100 SIMs a page, ~10 s at 1NCE's 10 requests a second) instead of a GET per
//! SIM. The listing is made by one reconcile at a time per account (the others wait for it and use it),
//! and kept for `max_age`; a client change (new credentials or endpoint) starts afresh.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::cloud::CloudError;
use crate::cloud::onence::{OneNce, Sim};

/// The SIMs of one account by 19-digit ICCID.
pub type SimsByIccid = Arc<HashMap<String, Sim>>;

#[derive(Default)]
struct Slot {
    listed: Option<(Instant, u64, Listing)>,
}

/// One listing: when it started (unix seconds) and the SIMs.
#[derive(Clone)]
pub struct Listing {
    /// When the listing started (unix seconds): it shows nothing changed after.
    pub at: i64,
    /// The SIMs.
    pub sims: SimsByIccid,
}

/// The latest SIM listing of each account.
#[derive(Default)]
pub struct SimListings {
    slots: std::sync::Mutex<HashMap<String, Arc<Mutex<Slot>>>>,
}

impl SimListings {
    /// The SIMs of account `pc` (client fingerprint `fingerprint`), listed at most `max_age` ago.
    pub async fn get(
        &self,
        pc: &str,
        fingerprint: u64,
        max_age: Duration,
        client: &OneNce,
    ) -> Result<Listing, CloudError> {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(pc.to_string())
            .or_default()
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
        let sims: SimsByIccid = Arc::new(
            client
                .list_sims()
                .await?
                .into_iter()
                .map(|s| (s.iccid.clone(), s))
                .collect(),
        );
        let listing = Listing { at, sims };
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

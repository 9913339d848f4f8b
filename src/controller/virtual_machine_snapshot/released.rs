//! Snapshots released to the platform (`deletionPolicy: Retain`, admitted by [`retain`](super::retain))
//! go on costing the account after their object is gone. Every `traffic_interval`, each compute
//! account whose ledger holds open releases ([`Ledger::open_releases`](crate::ledger::Ledger)) lists
//! its marked snapshots once ([`ComputeProvider::marked_snapshots`], its pages at the account's rate
//! limit). A release the listing lacks (or every release, where a vendor cannot list them all) is read
//! by its ID, one call apart at half the account's rate limit, and counts as gone only when that read
//! finds nothing or another's snapshot (where a vendor cannot read by ID: by its mark). For each
//! release:
//! - **still held** (or not known to be gone): its storage since the last window is recorded as the
//!   platform's vendor cost, in whole hours — a usage row of the ProviderConfig, tenant amount zero, no
//!   Project, keyed `providerconfig/<uid>/snapshot_mb_seconds/<object uid>/<window start>`, at the
//!   vendor's snapshot price (unpriced where it is not known) and the size the vendor reports now;
//! - **gone**: the time it was found gone is recorded first (the end of its cost: the vendor charged it
//!   until it went, somewhere since the last round), then its storage up to then, then the release is
//!   closed.
//!
//! The rows are written before the release's cursor moves and keyed by their start, and the end of
//! the last one is fixed before it is written, so a crash or a repeated round records nothing twice. A
//! vendor that reports no size records nothing (the release is still followed and closed). Runs only
//! while this replica leads, for ProviderConfigs being deleted too; a deleted ProviderConfig's releases
//! are no longer followed (the platform gave up the account).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;

use super::decide;
use crate::cloud::{CloudError, ComputeProvider, Snapshot, SnapshotLookup, snapshot_mark};
use crate::controller::provider_config::is_compute;
use crate::controller::{Context, Error};
use crate::crd::ProviderConfig;
use crate::ledger::metering::Price;
use crate::ledger::released::ReleasedSnapshot;
use crate::ledger::{Meter, UsageEvent};

/// Follows every account's released snapshots every `traffic_interval`. Never returns.
pub async fn run(ctx: Arc<Context>) {
    let mut ticks = tokio::time::interval(ctx.config.traffic_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let started = std::time::Instant::now();
        match meter_all(&ctx).await {
            Ok(followed) => {
                let m = &ctx.metrics;
                m.released_followed.set(followed as i64);
                m.released_round_seconds
                    .set(started.elapsed().as_secs_f64());
                m.released_rounds.inc();
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot follow released snapshots; trying again next interval")
            }
        }
    }
}

/// One round over every compute account, side by side; how many releases it followed.
pub async fn meter_all(ctx: &Arc<Context>) -> Result<usize, Error> {
    if ctx.ledger.is_none() {
        return Ok(0);
    }
    let pcs = ctx.caches()?.store::<ProviderConfig>()?.state();
    let rounds = pcs
        .into_iter()
        .filter(|pc| is_compute(pc.spec.type_))
        .map(|pc| async move {
            let key = format!("released-snapshots/{}", pc.name_any());
            match meter_account(ctx, &pc).await {
                Ok(followed) => {
                    ctx.first_warning(&key, "");
                    followed
                }
                Err((followed, e)) => {
                    let message = e.to_string();
                    if ctx.first_warning(&key, &message) {
                        tracing::warn!(provider_config = %pc.name_any(), error = %message, "cannot follow the account's released snapshots; their vendor cost is recorded from the next round that can");
                    }
                    followed
                }
            }
        });
    Ok(futures::future::join_all(rounds).await.into_iter().sum())
}

/// How one account's round learns whether the vendor still holds a release.
struct Vendor<'a> {
    provider: &'a dyn ComputeProvider,
    /// The account's marked snapshots by mark, where the vendor lists them all.
    listing: Option<HashMap<String, Snapshot>>,
    /// The pause before each call: half the account's rate limit.
    gap: Duration,
}

impl Vendor<'_> {
    /// What the vendor holds of release `r`. Not in the listing (or no listing) counts as gone only once
    /// a read by its ID confirms it: a listing paged by offset can skip an item while others are deleted.
    async fn lookup(&self, r: &ReleasedSnapshot) -> Result<SnapshotLookup, Error> {
        let mark = snapshot_mark(&r.object_uid);
        if let Some(s) = self.listing.as_ref().and_then(|l| l.get(&mark)) {
            return Ok(SnapshotLookup::Found(s.clone()));
        }
        tokio::time::sleep(self.gap).await;
        match self.provider.snapshot(&r.server_id, &r.snapshot_id).await {
            // Only the snapshot carrying this object's mark is its own.
            Ok(Some(s)) if s.name == mark => Ok(SnapshotLookup::Found(s)),
            Ok(_) => Ok(SnapshotLookup::Absent),
            Err(CloudError::Unsupported(_)) => {
                // By its mark instead (Contabo: the server's snapshots); a lookup makes up to three calls.
                tokio::time::sleep(self.gap * 2).await;
                self.provider
                    .find_snapshot(&r.server_id, &mark, 0)
                    .await
                    .map_err(Error::vendor("look a released snapshot up"))
            }
            Err(e) => Err(Error::vendor("read a released snapshot")(e)),
        }
    }
}

/// One account's round (see the module): nothing is asked of a vendor when nothing is released there.
/// How many releases it followed, also on failure.
async fn meter_account(ctx: &Context, pc: &ProviderConfig) -> Result<usize, (usize, Error)> {
    let (Some(ledger), Some(pc_uid)) = (&ctx.ledger, pc.uid()) else {
        return Ok(0);
    };
    let open = ledger
        .open_releases(&pc_uid)
        .await
        .map_err(|e| (0, e.into()))?;
    let n = open.len();
    if n == 0 {
        return Ok(0);
    }
    follow_all(ctx, pc, open)
        .await
        .map(|()| n)
        .map_err(|e| (n, e))
}

/// Follows the account's `open` releases (see the module).
async fn follow_all(
    ctx: &Context,
    pc: &ProviderConfig,
    open: Vec<ReleasedSnapshot>,
) -> Result<(), Error> {
    let resolved = ctx.providers.account_for_reading(ctx, pc).await?;
    let provider = ctx.providers.compute(ctx, &resolved).await?;
    let rate = resolved
        .account
        .rate_limit
        .map_or(40, |(rps, _)| rps.max(1));
    let gap = Duration::from_secs_f64(2.0 / f64::from(rate));
    // Only releases not known to be gone need the vendor.
    let listing = if open.iter().any(|r| r.gone_at.is_none()) {
        provider
            .marked_snapshots()
            .await
            .map_err(Error::vendor("list the account's snapshots"))?
            .map(|all| all.into_iter().map(|s| (s.name.clone(), s)).collect())
    } else {
        None
    };
    let vendor = Vendor {
        provider: &*provider,
        listing,
        gap,
    };
    let price = provider.snapshot_price().map(|(vendor, currency)| Price {
        tenant: rust_decimal::Decimal::ZERO,
        vendor,
        currency: currency.to_string(),
    });
    // Each release on its own: one that cannot be read does not hold up the others.
    let mut first_error = None;
    for r in open {
        if let Err(e) = follow(ctx, pc, &vendor, price.as_ref(), &r).await {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Learns whether the vendor still holds released snapshot `r` and records its storage since the last
/// window (see the module).
async fn follow(
    ctx: &Context,
    pc: &ProviderConfig,
    vendor: &Vendor<'_>,
    price: Option<&Price>,
    r: &ReleasedSnapshot,
) -> Result<(), Error> {
    let ledger = ctx.ledger.as_ref().expect("checked by the round");
    let now = jiff::Timestamp::now().as_second();
    let (gone_at, size_mb) = match r.gone_at {
        Some(at) => (Some(at), r.size_mb),
        None => match vendor.lookup(r).await? {
            SnapshotLookup::Found(s) => (None, size_of(&s).unwrap_or(r.size_mb)),
            // Not known to be gone.
            SnapshotLookup::InProgress => (None, r.size_mb),
            SnapshotLookup::Absent => {
                tracing::info!(provider_config = %pc.name_any(), snapshot = %r.snapshot_id, "a released snapshot is gone at the vendor; its vendor cost is recorded up to now");
                (Some(ledger.mark_gone(&r.object_uid, now).await?), r.size_mb)
            }
        },
    };
    let end = gone_at.unwrap_or(now);
    // A window an earlier round recorded (a crash before the cursor moved) stands as recorded: the next
    // starts at its end. A few passes at most.
    let mut until = r.metered_until;
    for _ in 0..3 {
        let Some(window) =
            decide::storage_window(until, end, gone_at.is_some()).filter(|_| size_mb > 0)
        else {
            break;
        };
        let event = vendor_cost(pc, r, size_mb, price, window);
        ctx.record_usage(std::slice::from_ref(&event)).await?;
        until = ledger
            .held(&event.key)
            .await?
            .map_or(window.1, |(_, held_end)| held_end);
    }
    let closed = gone_at
        .filter(|at| until >= *at || size_mb == 0)
        .map(|_| now);
    // A round that learned nothing new (within the hour, same size) writes nothing.
    if closed.is_some() || until != r.metered_until || size_mb != r.size_mb {
        ledger
            .advance_release(&r.object_uid, until, size_mb, closed)
            .await?;
    }
    Ok(())
}

/// The size a vendor reports of `s`, in megabytes.
fn size_of(s: &Snapshot) -> Option<i64> {
    decide::megabytes(&s.size_gb?.to_string())
}

/// The platform's vendor cost of released snapshot `r` over `(start, end)` (see the module).
fn vendor_cost(
    pc: &ProviderConfig,
    r: &ReleasedSnapshot,
    size_mb: i64,
    price: Option<&Price>,
    (start, end): (i64, i64),
) -> UsageEvent {
    let meter = Meter::SnapshotMbSeconds;
    let pc_uid = pc.uid().unwrap_or_default();
    let mut attributes = serde_json::json!({
        "released": true,
        "sizeMB": size_mb,
        "snapshotID": r.snapshot_id,
        "object": {"namespace": r.namespace, "name": r.name, "uid": r.object_uid},
    });
    if price.is_none() {
        attributes["unpriced"] = true.into();
    }
    UsageEvent {
        key: format!(
            "providerconfig/{pc_uid}/{}/{}/{start}",
            meter.as_str(),
            r.object_uid
        ),
        namespace: String::new(),
        project: String::new(),
        project_uid: String::new(),
        object_kind: "ProviderConfig".into(),
        object_name: pc.name_any(),
        object_uid: pc_uid,
        meter,
        quantity: size_mb * (end - start),
        unit_price: Default::default(),
        vendor_unit_price: price.map_or_else(Default::default, |p| p.vendor),
        price_quantity: meter.info().priced_per,
        currency: price.map(|p| p.currency.clone()).unwrap_or_default(),
        window_start: start,
        window_end: end,
        attributes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_released_snapshots_window_is_the_platforms_cost_keyed_by_its_start() {
        let pc: ProviderConfig = serde_json::from_value(serde_json::json!({
            "apiVersion": "quartermaster.dev/v1alpha1", "kind": "ProviderConfig",
            "metadata": {"name": "do", "uid": "pc-1"},
            "spec": {"type": "digitalocean", "credentialsSecretRef": {"name": "t", "namespace": "n", "key": "token"}}
        }))
        .unwrap();
        let r = ReleasedSnapshot {
            object_uid: "s-1".into(),
            provider_config_uid: "pc-1".into(),
            provider_config: "do".into(),
            namespace: "team-a".into(),
            name: "kept".into(),
            snapshot_id: "77".into(),
            server_id: "9".into(),
            size_mb: 2000,
            released_at: 1000,
            metered_until: 1000,
            gone_at: None,
        };
        let price = Price {
            tenant: rust_decimal::Decimal::ZERO,
            vendor: "0.06".parse().unwrap(),
            currency: "USD".into(),
        };
        let e = vendor_cost(&pc, &r, 2000, Some(&price), (1000, 4600));
        assert_eq!(e.key, "providerconfig/pc-1/snapshot_mb_seconds/s-1/1000");
        assert_eq!(e.quantity, 2000 * 3600);
        assert_eq!(e.amount_nanos(), 0, "no tenant pays it");
        assert!(e.vendor_amount_nanos() > 0, "the platform does");
        assert_eq!((e.project_uid.as_str(), e.namespace.as_str()), ("", ""));
        let unpriced = vendor_cost(&pc, &r, 2000, None, (1000, 4600));
        assert_eq!(unpriced.attributes["unpriced"], true);
        assert_eq!(unpriced.vendor_amount_nanos(), 0);
    }
}

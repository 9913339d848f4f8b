//! Snapshots released to the platform (`deletionPolicy: Retain`, admitted by [`retain`](super::retain))
//! go on costing the account after their object is gone. Every `traffic_interval`, each compute
//! account whose ledger holds open releases ([`Ledger::open_releases`]) is asked, per release, for the
//! snapshot by its mark (the same lookup that proves ownership before a deletion), paced to half the
//! account's rate limit like the server figures:
//! - **still held** (or being taken): its storage since the last window is recorded as the platform's
//!   vendor cost, in whole hours — a usage row of the ProviderConfig, tenant amount zero, no Project,
//!   keyed `providerconfig/<uid>/snapshot_mb_seconds/<object uid>/<window start>`, at the vendor's
//!   snapshot price (unpriced where it is not known) and the size the vendor reports now;
//! - **gone**: its storage up to now is recorded (the vendor charged it until it went, somewhere since
//!   the last round), and the release is closed.
//!
//! The rows are written before the release's cursor moves, and a window is keyed by its start, so a
//! crash or a repeated round records nothing twice. A vendor that reports no size records nothing (the
//! release is still followed and closed). Runs only while this replica leads; a deleted ProviderConfig's
//! releases are no longer followed (the platform gave up the account).

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;

use super::decide;
use crate::cloud::{ComputeProvider, SnapshotLookup, snapshot_mark};
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
        if let Err(e) = meter_all(&ctx).await {
            tracing::warn!(error = %e, "cannot follow released snapshots; trying again next interval");
        }
    }
}

/// One round over every compute account, side by side.
pub async fn meter_all(ctx: &Arc<Context>) -> Result<(), Error> {
    if ctx.ledger.is_none() {
        return Ok(());
    }
    let pcs = ctx.caches()?.store::<ProviderConfig>()?.state();
    let rounds = pcs
        .into_iter()
        .filter(|pc| is_compute(pc.spec.type_) && pc.metadata.deletion_timestamp.is_none())
        .map(|pc| async move {
            let key = format!("released-snapshots/{}", pc.name_any());
            match meter_account(ctx, &pc).await {
                Ok(()) => {
                    ctx.first_warning(&key, "");
                }
                Err(e) => {
                    let message = e.to_string();
                    if ctx.first_warning(&key, &message) {
                        tracing::warn!(provider_config = %pc.name_any(), error = %message, "cannot follow the account's released snapshots; their vendor cost is recorded from the next round that can");
                    }
                }
            }
        });
    futures::future::join_all(rounds).await;
    Ok(())
}

/// One account's round (see the module): nothing is asked of a vendor when nothing is released there.
async fn meter_account(ctx: &Context, pc: &ProviderConfig) -> Result<(), Error> {
    let (Some(ledger), Some(pc_uid)) = (&ctx.ledger, pc.uid()) else {
        return Ok(());
    };
    let open = ledger.open_releases(&pc_uid).await?;
    if open.is_empty() {
        return Ok(());
    }
    let resolved = ctx.providers.account_for_reading(ctx, pc).await?;
    let provider = ctx.providers.compute(ctx, &resolved).await?;
    let rate = resolved
        .account
        .rate_limit
        .map_or(40, |(rps, _)| rps.max(1));
    let gap = Duration::from_secs_f64(2.0 / f64::from(rate));
    let price = provider.snapshot_price().map(|(vendor, currency)| Price {
        tenant: rust_decimal::Decimal::ZERO,
        vendor,
        currency: currency.to_string(),
    });
    for r in open {
        tokio::time::sleep(gap).await;
        follow(ctx, pc, &*provider, price.as_ref(), &r).await?;
    }
    Ok(())
}

/// Asks the vendor for released snapshot `r` and records its storage since the last window.
async fn follow(
    ctx: &Context,
    pc: &ProviderConfig,
    provider: &dyn ComputeProvider,
    price: Option<&Price>,
    r: &ReleasedSnapshot,
) -> Result<(), Error> {
    let lookup = provider
        .find_snapshot(&r.server_id, &snapshot_mark(&r.object_uid), r.released_at)
        .await
        .map_err(Error::vendor("look a released snapshot up"))?;
    let (held, size_mb) = match &lookup {
        SnapshotLookup::Found(s) => (true, size_of(s).unwrap_or(r.size_mb)),
        SnapshotLookup::InProgress => (true, r.size_mb),
        SnapshotLookup::Absent => (false, r.size_mb),
    };
    let ledger = ctx.ledger.as_ref().expect("checked by the round");
    let now = jiff::Timestamp::now().as_second();
    // A window an earlier round recorded (a crash before the cursor moved) stands as recorded: the next
    // starts at its end. A few passes at most.
    let mut until = r.metered_until;
    for _ in 0..3 {
        let Some(window) = decide::storage_window(until, now, !held).filter(|_| size_mb > 0) else {
            break;
        };
        let event = vendor_cost(pc, r, size_mb, price, window);
        ctx.record_usage(std::slice::from_ref(&event)).await?;
        until = ledger
            .held(&event.key)
            .await?
            .map_or(window.1, |(_, end)| end);
    }
    ledger
        .advance_release(&r.object_uid, until, size_mb, (!held).then_some(now))
        .await?;
    if !held {
        tracing::info!(provider_config = %pc.name_any(), snapshot = %r.snapshot_id, "a released snapshot is gone at the vendor; its vendor cost is recorded up to now");
    }
    Ok(())
}

/// The size a vendor reports of `s`, in megabytes.
fn size_of(s: &crate::cloud::snapshot::Snapshot) -> Option<i64> {
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
